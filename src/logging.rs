//! Where log lines go: stderr (with a timestamp, or with `<N>` priority prefixes when
//! the journal reads it), or the local syslog socket (facility daemon, ident
//! forkserve). Every line carries the pid of the process that wrote it, and each line
//! is written with one system call so workers' lines never interleave. A line that
//! can repeat without bound (an accept error, a refusal under a flood) goes through
//! a [`RateLimitedLog`].

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::sys;

enum Sink {
    Stderr { journal: bool },
    Syslog(Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>),
}

struct Logger {
    sink: Sink,
    level: LevelFilter,
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

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let pid = sys::getpid();
        match &self.sink {
            Sink::Stderr { journal } => {
                let line = if *journal {
                    format!(
                        "<{}>forkserve[{pid}]: {}\n",
                        priority(record.level()),
                        record.args()
                    )
                } else {
                    format!(
                        "{} forkserve[{pid}]: {:<5} {}\n",
                        timestamp(),
                        record.level(),
                        record.args()
                    )
                };
                // One write per line: lines from many processes stay whole.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog(logger) => {
                let mut logger = match logger.lock() {
                    Ok(l) => l,
                    Err(p) => p.into_inner(),
                };
                logger.formatter.pid = pid as u32;
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

/// Sets up logging for the whole process tree. `verbosity`: 0 info, 1 debug, 2+
/// trace; negative: warnings only (-1) or errors only (-2).
pub fn init(verbosity: i32, use_syslog: bool) -> Result<(), String> {
    let level = match verbosity {
        i32::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let sink = if use_syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "forkserve".into(),
            pid: sys::getpid() as u32,
        };
        let logger = syslog::unix(formatter)
            .map_err(|e| format!("--syslog: cannot reach the local syslog socket: {e}"))?;
        Sink::Syslog(Mutex::new(logger))
    } else {
        Sink::Stderr {
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        }
    };
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
