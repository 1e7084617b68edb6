//! Metrics (exercise 4 of the reference material): a UDP and Unix-datagram
//! collector for `name:value:timestamp` and statsd lines (`metrics`, one
//! long-lived sequential process that batches points into SQLite), and an HTTP
//! API, a dashboard and a Prometheus exposition over the same database
//! (`metrics-http`, the http service's connection loop with its own routes, one
//! forked worker per connection). `forkserve metrics-agent` sends a host's CPU,
//! memory, TCP connection and load figures to a collector.
//!
//! The database lives with the processes that use it, never in the master: the
//! collector opens the only writing connection after it is forked, a companion
//! (`metrics checkpointer`) moves the write-ahead log into the file (every second once caught up) so
//! the checkpoint's fsync never stalls ingestion, every HTTP worker opens its own
//! read-only connection, and the start-up check that reports a corrupt or
//! unwritable file runs in a throwaway child.

pub mod agent;
pub mod api;
pub mod collector;
pub mod line;
pub mod store;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::services::http;
use crate::{Error, Model, Service};

/// Options of the metrics services (flattened into the server's options).
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsOpts {
    /// metrics: the SQLite database (default $STATE_DIRECTORY/metrics.db, else
    /// $XDG_STATE_HOME/forkserve/metrics.db, else ~/.local/state/forkserve/metrics.db)
    #[arg(long, value_name = "PATH", global = true)]
    pub db: Option<PathBuf>,
    /// metrics: refuse points whose timestamp is further than this from now
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = parse_duration, global = true)]
    pub max_skew: Duration,
    /// metrics: keep raw points this long
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration, global = true)]
    pub raw_retention: Duration,
    /// metrics: keep per-minute rollups this long
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration, global = true)]
    pub retention: Duration,
    /// metrics: write buffered points at least this often
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, global = true)]
    pub flush_interval: Duration,
    /// metrics: write as soon as this many points are buffered
    #[arg(long, value_name = "N", default_value_t = 100_000, global = true)]
    pub flush_points: usize,
    /// metrics: refuse points of new names once this many names are known
    #[arg(long, value_name = "N", default_value_t = 100_000, global = true)]
    pub max_metrics: usize,
    /// metrics: receive buffer of the collector's sockets, in bytes (K and M suffixes allowed)
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_bytes, global = true)]
    pub recv_buffer: usize,
}

/// How often the checkpointer companion moves the write-ahead log into the file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// What the collector and the API need to know, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub db: PathBuf,
    pub max_skew: Duration,
    pub raw_retention: Duration,
    pub retention: Duration,
    pub flush_interval: Duration,
    pub flush_points: usize,
    pub max_metrics: usize,
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `250ms`, `5s`, `15m`, `1h`, `30d`, or plain seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => f64::NAN,
    };
    num.parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs < 1e12)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("expected a duration like 500ms, 5s, 15m, 1h or 30d, got '{s}'"))
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let (num, mult) = match s.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1 << 10),
        None => match s.strip_suffix(['M', 'm']) {
            Some(n) => (n, 1 << 20),
            None => (s, 1),
        },
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n <= i32::MAX as usize)
        .ok_or_else(|| format!("expected a size like 262144, 256K or 8M, got '{s}'"))
}

/// The default database path, from the environment systemd or XDG give.
fn default_db() -> Result<PathBuf, Error> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dirs) = env("STATE_DIRECTORY") {
        // systemd lists several directories separated by colons: take the first.
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        return Ok(PathBuf::from(first).join("metrics.db"));
    }
    if let Some(state) = env("XDG_STATE_HOME") {
        return Ok(PathBuf::from(state).join("forkserve/metrics.db"));
    }
    if let Some(home) = env("HOME") {
        return Ok(PathBuf::from(home).join(".local/state/forkserve/metrics.db"));
    }
    Err(Error::new(
        Error::CONFIG,
        "metrics: no --db PATH given and neither STATE_DIRECTORY, XDG_STATE_HOME nor HOME is set",
    ))
}

/// Resolves the options and checks the database once, in a throwaway child (so
/// SQLite never runs in the master) running as `user` (the `--user` the
/// collector will run as): a corrupt or unwritable file stops start-up with a
/// sysexits code.
fn settings(opts: &MetricsOpts, user: Option<&str>) -> Result<Settings, Error> {
    static CHECKED: OnceLock<Result<Settings, (i32, String)>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let db = opts
            .db
            .clone()
            .map_or_else(default_db, Ok)
            .map_err(|e| (e.code, e.message))?;
        if !(1..=1_000_000).contains(&opts.flush_points) {
            return Err((Error::USAGE, "--flush-points: expected 1 to 1000000".into()));
        }
        if opts.flush_interval.is_zero() {
            return Err((
                Error::USAGE,
                "--flush-interval: expected more than 0".into(),
            ));
        }
        let user = match user {
            None => None,
            Some(name) => Some(
                crate::users::lookup_user(name)
                    .map_err(|e| (Error::OSERR, format!("--user {name}: {e}")))?
                    .ok_or_else(|| (Error::CONFIG, format!("--user {name}: no such user")))?,
            ),
        };
        let check = || {
            if let Some(u) = &user {
                crate::sys::drop_privileges(u.uid, u.gid, &[]).map_err(|e| {
                    (
                        Error::OSERR,
                        format!("metrics: checking the database as {}: {e}", u.name),
                    )
                })?;
            }
            store::check(&db)
        };
        crate::sys::run_in_child(check).map_err(|e| {
            (
                Error::OSERR,
                format!("metrics: checking {}: {e}", db.display()),
            )
        })??;
        Ok(Settings {
            db,
            max_skew: opts.max_skew,
            raw_retention: opts.raw_retention,
            retention: opts.retention.max(opts.raw_retention),
            flush_interval: opts.flush_interval,
            flush_points: opts.flush_points,
            max_metrics: opts.max_metrics,
        })
    });
    checked
        .clone()
        .map_err(|(code, message)| Error::new(code, message))
}

/// The model a metrics service always runs under, whatever `--model` says: the
/// collector is one sequential process (one writer, batched transactions).
pub fn fixed_model(service: &str) -> Option<Model> {
    (service == "metrics").then_some(Model::Sequential)
}

/// True under socket activation when systemd passed named sockets, none named
/// `name`, and no `--listen` was given: the service would not run, so neither
/// it nor its database check is set up.
fn not_passed(name: &str, listen: &[String]) -> bool {
    if !listen.is_empty() || std::env::var_os("LISTEN_FDS").is_none() {
        return false;
    }
    std::env::var("LISTEN_FDNAMES").is_ok_and(|names| !names.split(':').any(|n| n == name))
}

/// Builds `metrics` (the collector) or `metrics-http` (API and dashboard);
/// `listen` is every `--listen` given, `user` the `--user` to run as.
pub fn make(
    name: &str,
    opts: &MetricsOpts,
    http_opts: &http::HttpOpts,
    listen: &[String],
    user: Option<&str>,
) -> Result<Option<Service>, Error> {
    if not_passed(name, listen) {
        log::info!("{name}: systemd passed no socket named '{name}'; service not started");
        return Ok(None);
    }
    let settings = settings(opts, user)?;
    if name == "metrics" {
        let db = settings.db.clone();
        let checkpointer = crate::Companion::new("metrics checkpointer", move || {
            store::run_checkpointer(&db, CHECKPOINT_EVERY)
        });
        let c = collector::Collector::new(settings);
        return Ok(Some(
            Service::datagram("metrics", c)
                .recv_buffer(Some(opts.recv_buffer))
                .companion(checkpointer),
        ));
    }
    let h = http::Http::new(http_opts.max_requests_per_connection)
        .with_router(move |req, _env| api::respond(&settings, req));
    Ok(Some(
        Service::stream(name, h).idle_timeout(Some(http::DEFAULT_IDLE_TIMEOUT)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("5x").is_err() && parse_duration("-1s").is_err());
        assert_eq!(parse_bytes("8M").unwrap(), 8 << 20);
        assert!(parse_bytes("9G").is_err());
    }
}
