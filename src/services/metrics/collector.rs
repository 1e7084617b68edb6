//! The collector: the `metrics` service's datagram handler. It runs in one
//! long-lived server process (the sequential model): every datagram's lines are
//! parsed and buffered, and the buffer goes to SQLite in one transaction at least
//! every `--flush-interval` and whenever it holds `--flush-points` points. A bad
//! line is counted by reason and logged (at most one line a second); the good lines
//! of the same datagram are kept. Old data is expired in small batches between
//! flushes. The process owns the only writing connection; it opens it in `start`,
//! after the fork, so the master never touches the database.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::line::{self, Kind, Reason};
use super::store::{Pending, Writer};
use super::{Settings, now_ms};
use crate::Reply;
use crate::server::RateLimitedLog;

/// How often old data is expired and the kernel's drop counters read.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// Rows one expiry pass may delete (in transactions of 1000).
const EXPIRE_BUDGET: usize = 20_000;

/// Points kept in memory while the database refuses writes; beyond this the
/// oldest are dropped (and counted).
const MAX_BACKLOG: usize = 1_000_000;

/// Past this size of the write-ahead log the collector checkpoints itself (the
/// checkpointer companion normally keeps it far smaller).
const WAL_BACKSTOP: u64 = 256 << 20;

/// The size of the database's write-ahead log (0 when there is none).
fn wal_bytes(db: &std::path::Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// The collector's own counters, as `/metrics` and `/api/metrics` show them.
#[derive(Debug, Default, Clone)]
struct Counters {
    datagrams: i64,
    points: i64,
    bad: [i64; Reason::ALL.len()],
    kernel_drops: i64,
    flushes: i64,
    flush_errors: i64,
    backlog_dropped: i64,
}

impl Counters {
    fn load(stored: &HashMap<String, i64>) -> Counters {
        let get = |k: &str| stored.get(k).copied().unwrap_or(0);
        let mut c = Counters {
            datagrams: get("datagrams"),
            points: get("points"),
            kernel_drops: get("kernel_drops"),
            flushes: get("flushes"),
            flush_errors: get("flush_errors"),
            backlog_dropped: get("backlog_dropped"),
            ..Counters::default()
        };
        for (i, r) in Reason::ALL.iter().enumerate() {
            c.bad[i] = get(&format!("bad_lines.{}", r.as_str()));
        }
        c
    }

    fn rows(&self) -> Vec<(String, i64)> {
        let mut rows = vec![
            ("datagrams".to_string(), self.datagrams),
            ("points".to_string(), self.points),
            ("kernel_drops".to_string(), self.kernel_drops),
            ("flushes".to_string(), self.flushes),
            ("flush_errors".to_string(), self.flush_errors),
            ("backlog_dropped".to_string(), self.backlog_dropped),
        ];
        for (i, r) in Reason::ALL.iter().enumerate() {
            rows.push((format!("bad_lines.{}", r.as_str()), self.bad[i]));
        }
        rows
    }
}

struct State {
    writer: Option<Writer>,
    pending: Vec<Pending>,
    /// Every name stored or buffered, for `--max-metrics`.
    names: std::collections::HashSet<String>,
    /// The newest buffered value of each gauge, for signed statsd gauges (a
    /// look-up, not a scan of the buffer: no sender can make it quadratic).
    gauges: HashMap<String, f64>,
    /// When the oldest unflushed point arrived.
    oldest: Option<Instant>,
    counters: Counters,
    /// Drops the kernel counted on our sockets before this process started.
    drops_base: Option<i64>,
    last_housekeeping: Instant,
    bad_log: RateLimitedLog,
    error_log: RateLimitedLog,
}

/// The `metrics` service's handler.
pub struct Collector {
    settings: Settings,
    state: Mutex<State>,
}

impl Collector {
    pub fn new(settings: Settings) -> Collector {
        Collector {
            settings,
            state: Mutex::new(State {
                writer: None,
                pending: Vec::new(),
                names: std::collections::HashSet::new(),
                gauges: HashMap::new(),
                oldest: None,
                counters: Counters::default(),
                drops_base: None,
                last_housekeeping: Instant::now(),
                bad_log: RateLimitedLog::default(),
                error_log: RateLimitedLog::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush_due(&self, st: &State) -> bool {
        st.pending.len() >= self.settings.flush_points
            || st
                .oldest
                .is_some_and(|t| t.elapsed() >= self.settings.flush_interval)
    }

    /// Writes the buffer (and the counters) in one transaction; on failure the
    /// points stay buffered for the next attempt.
    fn flush(&self, st: &mut State) {
        let Some(writer) = st.writer.as_mut() else {
            return;
        };
        st.counters.flushes += 1;
        let rows = st.counters.rows();
        let started = Instant::now();
        match writer.write(&st.pending, &rows) {
            Ok(()) => {
                log::debug!(
                    "metrics: flushed {} points in {:.1} ms",
                    st.pending.len(),
                    started.elapsed().as_secs_f64() * 1000.0
                );
                st.pending.clear();
                st.gauges.clear();
                st.oldest = None;
            }
            Err(e) => {
                st.counters.flushes -= 1;
                st.counters.flush_errors += 1;
                let n = st.pending.len();
                st.error_log.log(|_| {
                    log::error!("metrics: writing {n} points: {e} (kept for the next flush)")
                });
                if n > MAX_BACKLOG {
                    let excess = n - MAX_BACKLOG;
                    st.pending.drain(..excess);
                    st.counters.backlog_dropped += excess as i64;
                }
            }
        }
    }

    fn housekeeping(&self, st: &mut State) {
        st.last_housekeeping = Instant::now();
        if let Some(now) = kernel_drops() {
            let base = *st.drops_base.get_or_insert(now - st.counters.kernel_drops);
            if now - base != st.counters.kernel_drops {
                st.counters.kernel_drops = now - base;
                // New drops are news even when nothing else arrives: flush them.
                st.oldest.get_or_insert_with(Instant::now);
            }
        }
        let Some(writer) = st.writer.as_mut() else {
            return;
        };
        if wal_bytes(&self.settings.db) > WAL_BACKSTOP {
            log::warn!(
                "metrics: the write-ahead log passed {WAL_BACKSTOP} bytes (is the checkpointer running?); checkpointing here"
            );
            if let Err(e) = writer.checkpoint_passive() {
                log::warn!("metrics: checkpoint: {e}");
            }
        }
        let now = now_ms();
        let raw_before = now - self.settings.raw_retention.as_millis() as i64;
        let rollup_before = now - self.settings.retention.as_millis() as i64;
        match writer.expire(raw_before, rollup_before, EXPIRE_BUDGET) {
            Ok(0) => {}
            Ok(n) => log::debug!("metrics: expired {n} old rows"),
            Err(e) => st
                .error_log
                .log(|_| log::warn!("metrics: expiring old data: {e}")),
        }
    }

    /// The value a signed statsd gauge changes: the newest buffered point of the
    /// name, else the stored last value, else 0.
    fn gauge_base(st: &State, name: &str) -> f64 {
        if let Some(&v) = st.gauges.get(name) {
            return v;
        }
        st.writer
            .as_ref()
            .and_then(|w| w.last_value(name).ok().flatten())
            .unwrap_or(0.0)
    }

    fn take_line(&self, st: &mut State, raw: &[u8], now_ms: i64) -> Result<(), Reason> {
        let text = std::str::from_utf8(raw).map_err(|_| Reason::Syntax)?;
        let max_skew = self.settings.max_skew.as_millis() as i64;
        let p = line::parse(text, now_ms, max_skew)?;
        if !st.names.contains(p.name) {
            if st.names.len() >= self.settings.max_metrics {
                return Err(Reason::Limit);
            }
            st.names.insert(p.name.to_string());
        }
        let value = if p.delta {
            Self::gauge_base(st, p.name) + p.value
        } else {
            p.value
        };
        if p.kind == Kind::Gauge {
            match st.gauges.get_mut(p.name) {
                Some(v) => *v = value,
                None => {
                    st.gauges.insert(p.name.to_string(), value);
                }
            }
        }
        st.pending.push(Pending {
            name: p.name.to_string(),
            kind: p.kind,
            t_ms: p.t_ms,
            value,
        });
        st.counters.points += 1;
        Ok(())
    }
}

impl crate::DatagramHandler for Collector {
    fn handle(&self, datagram: &[u8], reply: &Reply<'_>) -> io::Result<()> {
        let mut st = self.state();
        let st = &mut *st;
        st.counters.datagrams += 1;
        let now = now_ms();
        if st.oldest.is_none() {
            st.oldest = Some(Instant::now());
        }
        for raw in datagram.split(|&b| b == b'\n') {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Err(reason) = self.take_line(st, raw, now) {
                st.counters.bad[reason as usize] += 1;
                let shown = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
                let peer = reply.peer();
                st.bad_log.log(|more| {
                    let more = if more > 0 {
                        format!(" ({more} more since the last one logged)")
                    } else {
                        String::new()
                    };
                    log::warn!(
                        "metrics: {peer}: bad line ({}): {shown:?}{more}",
                        reason.as_str()
                    )
                });
            }
        }
        if st.pending.len() >= self.settings.flush_points {
            self.flush(st);
        }
        Ok(())
    }

    fn start(&self) -> io::Result<()> {
        let writer = Writer::open(&self.settings.db).map_err(io::Error::other)?;
        let stored = writer.counters().map_err(io::Error::other)?;
        let names = writer.names().map_err(io::Error::other)?;
        let mut st = self.state();
        st.counters = Counters::load(&stored);
        st.names = names.into_iter().collect();
        st.writer = Some(writer);
        log::info!(
            "metrics: collector storing in {} (flush every {:?} or {} points)",
            self.settings.db.display(),
            self.settings.flush_interval,
            self.settings.flush_points
        );
        self.housekeeping(&mut st);
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        let st = self.state();
        let housekeeping = HOUSEKEEPING.saturating_sub(st.last_housekeeping.elapsed());
        let flush = st
            .oldest
            .map(|t| self.settings.flush_interval.saturating_sub(t.elapsed()));
        Some(flush.map_or(housekeeping, |f| f.min(housekeeping)))
    }

    fn tick(&self) {
        let mut st = self.state();
        let st = &mut *st;
        if self.flush_due(st) {
            self.flush(st);
        }
        if st.last_housekeeping.elapsed() >= HOUSEKEEPING {
            self.housekeeping(st);
        }
    }

    fn stop(&self) {
        let mut st = self.state();
        let n = st.pending.len();
        self.flush(&mut st);
        if let Some(Err(e)) = st.writer.as_ref().map(Writer::checkpoint) {
            log::warn!("metrics: checkpoint on stop: {e}");
        }
        log::info!("metrics: collector stopping; flushed the last {n} points");
    }
}

/// Sum of the kernel's drop counters (/proc/net/udp and udp6) over the UDP
/// sockets this process holds; None when /proc cannot tell.
fn kernel_drops() -> Option<i64> {
    let inodes = own_socket_inodes()?;
    let mut total = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if let (Some(inode), Some(drops)) = (cols.get(9), cols.last())
                && inodes.iter().any(|i| i == inode)
            {
                total += drops.parse::<i64>().unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// The inode numbers of this process's sockets, from /proc/self/fd.
fn own_socket_inodes() -> Option<Vec<String>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|t| {
                let t = t.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')
                    .map(String::from)
            })
            .collect(),
    )
}
