//! Where log lines go: the systemd journal through its native protocol when stderr
//! is the journal's stream (`JOURNAL_STREAM` names stderr's device and inode), else
//! stderr (text with a timestamp, or one JSON object a line with `--log-format
//! json`), or the local syslog socket (facility daemon). Every record carries the
//! pid of the process that wrote it and the service and peer the process (or
//! thread) is serving, where known ([`context`]); each is written with one system
//! call so workers' lines never interleave. A line that can repeat without bound (an
//! accept error, a refusal under a flood) goes through a [`RateLimitedLog`].
//!
//! The journal protocol (systemd's "Native Journal Protocol": `KEY=VALUE` lines
//! in one datagram to `/run/systemd/journal/socket`) is written here by hand rather
//! than with the `systemd-journal-logger` crate: every record needs SERVICE= and
//! PEER= from the thread's [`context`], which the core sets once per connection,
//! while the crate takes extra fields only globally or as key-values at each call
//! site; and a test needs to stand a socket of its own in for the journal's. The
//! one socket is made at start and inherited by every child: the kernel attaches
//! the credentials of the process that sends, so the journal's `_PID` is the
//! worker's own. `FORKSERVE_JOURNAL_SOCKET` replaces the socket's path (meant for
//! tests).

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::{proctitle, sys};

/// The journal's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// The local syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// How stderr lines look: `text` (timestamp, name\[pid\], level, message) or `json`
/// (one object a line: time, level, ident, pid, service, peer, message).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("unknown log format '{s}' (text or json)")),
        }
    }
}

/// What [`init_with`] sets up.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// 0 info, 1 debug, 2+ trace; -1 warnings only, -2 errors only.
    pub verbosity: i32,
    /// Log to the local syslog socket instead.
    pub syslog: bool,
    /// The stderr format (not used for the journal or syslog).
    pub format: Format,
}

enum Sink {
    Stderr { format: Format, journal: bool },
    Journal { path: PathBuf, socket: UnixDatagram },
    Syslog(Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>),
}

struct Logger {
    sink: Sink,
    level: LevelFilter,
}

/// The service and peer the current thread is serving (a forked worker's only
/// thread, a thread-model connection thread, a prefork worker while busy).
#[derive(Default)]
struct Scope {
    service: Option<String>,
    peer: Option<String>,
}

thread_local! {
    static SCOPE: RefCell<Scope> = RefCell::new(Scope::default());
}

/// Restores the previous service and peer of this thread's records when dropped.
pub struct ContextGuard {
    previous: Option<Scope>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(p) = self.previous.take() {
            SCOPE.with(|s| *s.borrow_mut() = p);
        }
    }
}

/// Tags this thread's records with SERVICE= and PEER= (journal, JSON) until the
/// guard is dropped.
pub fn context(service: &str, peer: Option<String>) -> ContextGuard {
    let new = Scope {
        service: Some(service.to_string()),
        peer,
    };
    let previous = SCOPE.with(|s| std::mem::replace(&mut *s.borrow_mut(), new));
    ContextGuard {
        previous: Some(previous),
    }
}

/// The syslog/journal priority of a log level (`<3>` error … `<7>` debug).
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let t = sys::local_time(now.as_secs() as i64);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        now.subsec_millis()
    )
}

/// Appends one field of the journal's native protocol: `KEY=VALUE\n`, or for a
/// value with a newline `KEY\n`, its length as 64-bit little endian, the value, `\n`.
fn journal_field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// A record in the journal's native protocol.
fn journal_record(record: &Record<'_>, pid: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    journal_field(&mut out, "MESSAGE", &record.args().to_string());
    journal_field(&mut out, "PRIORITY", &priority(record.level()).to_string());
    journal_field(&mut out, "SYSLOG_IDENTIFIER", proctitle::name());
    journal_field(&mut out, "SYSLOG_PID", &pid.to_string());
    SCOPE.with(|s| {
        let s = s.borrow();
        if let Some(v) = &s.service {
            journal_field(&mut out, "SERVICE", v);
        }
        if let Some(v) = &s.peer {
            journal_field(&mut out, "PEER", v);
        }
    });
    if let Some(f) = record.file() {
        journal_field(&mut out, "CODE_FILE", f);
    }
    if let Some(l) = record.line() {
        journal_field(&mut out, "CODE_LINE", &l.to_string());
    }
    journal_field(&mut out, "CODE_MODULE", record.target());
    out
}

/// One JSON object for a stderr line.
fn json_line(record: &Record<'_>, pid: i32) -> String {
    let mut obj = serde_json::json!({
        "time": timestamp(),
        "level": record.level().as_str().to_ascii_lowercase(),
        "ident": proctitle::name(),
        "pid": pid,
        "message": record.args().to_string(),
    });
    SCOPE.with(|s| {
        let s = s.borrow();
        if let Some(v) = &s.service {
            obj["service"] = v.as_str().into();
        }
        if let Some(v) = &s.peer {
            obj["peer"] = v.as_str().into();
        }
    });
    format!("{obj}\n")
}

/// Writes one line to stderr with one system call.
fn write_stderr(line: &str) {
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let pid = sys::getpid();
        let name = proctitle::name();
        match &self.sink {
            Sink::Journal { path, socket } => {
                let sent = socket.send_to(&journal_record(record, pid), path);
                if sent.is_err() {
                    // The journal's socket is gone or the record too large: the
                    // stream still reaches the journal, with the priority.
                    write_stderr(&format!(
                        "<{}>[{pid}] {}\n",
                        priority(record.level()),
                        record.args()
                    ));
                }
            }
            Sink::Stderr { journal: true, .. } => write_stderr(&format!(
                "<{}>[{pid}] {}\n",
                priority(record.level()),
                record.args()
            )),
            Sink::Stderr {
                format: Format::Json,
                ..
            } => write_stderr(&json_line(record, pid)),
            Sink::Stderr {
                format: Format::Text,
                ..
            } => write_stderr(&format!(
                "{} {name}[{pid}]: {:<5} {}\n",
                timestamp(),
                record.level(),
                record.args()
            )),
            Sink::Syslog(logger) => {
                let mut logger = logger.lock().unwrap_or_else(|p| p.into_inner());
                logger.formatter.pid = pid as u32;
                if logger.formatter.process != name {
                    logger.formatter.process = name.to_string();
                }
                let msg = record.args().to_string();
                let _ = match record.level() {
                    Level::Error => logger.err(msg),
                    Level::Warn => logger.warning(msg),
                    Level::Info => logger.info(msg),
                    Level::Debug | Level::Trace => logger.debug(msg),
                };
            }
        }
    }

    fn flush(&self) {}
}

/// True when `JOURNAL_STREAM` (`DEVICE:INODE`) names stderr: systemd connected
/// stderr to the journal, and it was not redirected since.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    sys::fd_dev_ino(2).is_ok_and(|(d, i)| d == dev && i == ino)
}

fn choose_sink(config: &Config) -> Result<Sink, String> {
    if config.syslog {
        if !std::path::Path::new(SYSLOG_SOCKET).exists() {
            return Err(format!("--syslog: no syslog socket at {SYSLOG_SOCKET}"));
        }
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: proctitle::name().into(),
            pid: sys::getpid() as u32,
        };
        let logger = syslog::unix(formatter)
            .map_err(|e| format!("--syslog: cannot reach {SYSLOG_SOCKET}: {e}"))?;
        return Ok(Sink::Syslog(Mutex::new(logger)));
    }
    if stderr_is_journal() {
        let path = std::env::var_os("FORKSERVE_JOURNAL_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(JOURNAL_SOCKET));
        if path.exists()
            && let Ok(socket) = UnixDatagram::unbound()
        {
            return Ok(Sink::Journal { path, socket });
        }
        return Ok(Sink::Stderr {
            format: Format::Text,
            journal: true,
        });
    }
    Ok(Sink::Stderr {
        format: config.format,
        journal: false,
    })
}

/// Sets up logging for the whole process tree. `verbosity`: 0 info, 1 debug, 2+
/// trace; negative: warnings only (-1) or errors only (-2).
pub fn init(verbosity: i32, use_syslog: bool) -> Result<(), String> {
    init_with(&Config {
        verbosity,
        syslog: use_syslog,
        format: Format::Text,
    })
}

/// Sets up logging for the whole process tree as `config` says.
pub fn init_with(config: &Config) -> Result<(), String> {
    let level = match config.verbosity {
        i32::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let sink = choose_sink(config)?;
    log::set_boxed_logger(Box::new(Logger { sink, level }))
        .map_err(|e| format!("logger already set: {e}"))?;
    log::set_max_level(level);
    Ok(())
}

/// Logs at most one line per second for a repeated event, with a count of the ones
/// left out: every loop that can meet the same error again and again (accept under
/// EMFILE, refusals under a flood, failing forks) logs through one of these.
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// Calls `emit(suppressed_count)` when a line may be written now.
    pub fn log(&mut self, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => self.suppressed += 1,
            _ => {
                emit(self.suppressed);
                self.suppressed = 0;
                self.last = Some(now);
            }
        }
    }

    /// ` (N more since the last report)`, or nothing: the tail of a limited line.
    pub fn more(suppressed: u64) -> String {
        if suppressed > 0 {
            format!(" ({suppressed} more since the last report)")
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_fields_with_newlines_are_length_prefixed() {
        let mut out = Vec::new();
        journal_field(&mut out, "A", "one");
        journal_field(&mut out, "B", "x\ny");
        let mut want = b"A=one\nB\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"x\ny\n");
        assert_eq!(out, want);
    }
}
