//! The routes of `metrics-http`, answered inside the http service's connection
//! loop (keep-alive, error pages, access log):
//!
//! - `GET /`: the dashboard, a static page (cacheable, with an ETag) whose script
//!   reads the JSON API;
//! - `GET /api/metrics`: every metric with its kind, last value, last time and
//!   point count, and the collector's counters;
//! - `GET /api/metrics/NAME?from=&to=&step=`: buckets `{t, avg, min, max, count}`
//!   and a summary over the range, from raw points or per-minute rollups;
//! - `GET /metrics`: the Prometheus text exposition.
//!
//! Data responses carry `Cache-Control: no-cache`. Each request opens its own
//! read-only connection to the database (the worker is a fresh process).

use std::fmt::Write as _;

use rusqlite::Connection;
use serde_json::{Value, json};

use super::Settings;
use super::line::{self, Kind};
use super::store::{self, Bucket, Source};
use crate::services::http::percent_decode;
use crate::services::http::request::Request;
use crate::services::http::response::Response;

/// The dashboard page: HTML, CSS and script in one file, nothing fetched from
/// elsewhere.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Most buckets one range query may return.
const MAX_BUCKETS: i64 = 10_000;

/// Ranges longer than this (with whole-minute steps) read the rollups.
const RAW_RANGE_MS: i64 = 3 * 3600 * 1000;

const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The response to one request.
pub fn respond(settings: &Settings, req: &Request) -> Response {
    let path = req.path.as_str();
    let known = path == "/" || path == "/metrics" || path.starts_with("/api/metrics");
    if !known {
        return Response::error(404, &format!("Nothing is at {path}."));
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Response::error(
            405,
            &format!("{} is not allowed here; use GET or HEAD.", req.method),
        )
        .header("Allow", "GET, HEAD");
    }
    if path == "/" {
        return dashboard(req);
    }
    let conn = match store::open_for_reading(&settings.db) {
        Ok(c) => c,
        Err(e) => {
            log::error!("metrics-http: {e}");
            return Response::error(503, "The metrics database cannot be read now.");
        }
    };
    let resp = match path {
        "/metrics" => prometheus(&conn),
        "/api/metrics" | "/api/metrics/" => list(&conn),
        p => match p.strip_prefix("/api/metrics/") {
            Some(name) => range(settings, &conn, name, query(&req.target)),
            None => Err(Response::error(404, &format!("Nothing is at {p}."))),
        },
    };
    resp.unwrap_or_else(|r| r)
        .header("Cache-Control", "no-cache")
}

/// A strong validator for the page: a hash of its bytes (FNV-1a, 64 bits).
fn etag() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in DASHBOARD.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn dashboard(req: &Request) -> Response {
    let tag = etag();
    let matches = req.header("if-none-match").is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == tag || t == "*")
    });
    let resp = if matches {
        Response::new(304, "", Vec::new())
    } else {
        Response::html(DASHBOARD)
    };
    resp.header("ETag", tag)
        .header("Cache-Control", "max-age=60")
}

/// The query string's pairs, percent-decoded (`+` is a space).
fn query(target: &str) -> Vec<(String, String)> {
    let Some((_, q)) = target.split_once('?') else {
        return Vec::new();
    };
    let decode = |s: &str| {
        percent_decode(&s.replace('+', " "))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|| s.to_string())
    };
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn db_error(e: rusqlite::Error) -> Response {
    log::error!("metrics-http: reading the database: {e}");
    Response::error(500, "Reading the metrics database failed.")
}

fn bad_request(why: String) -> Response {
    Response::error(400, &why)
}

fn list(conn: &Connection) -> Result<Response, Response> {
    let metrics = store::list(conn).map_err(db_error)?;
    let counters = store::counters(conn).map_err(db_error)?;
    let metrics: Vec<Value> = metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "kind": m.kind.as_str(),
                "last": m.last_v,
                "last_t": m.last_t_ms as f64 / 1000.0,
                "count": m.count,
                "total": m.total,
            })
        })
        .collect();
    let collector: serde_json::Map<String, Value> =
        counters.into_iter().map(|(k, v)| (k, json!(v))).collect();
    Ok(Response::json(&json!({
        "now": crate::unix_now(),
        "metrics": metrics,
        "collector": collector,
    })))
}

/// A time in the query: Unix seconds (`1700000000.5`), `now`, or relative to now
/// (`-1h`, `-15m`, `-30s`).
fn parse_time(what: &str, s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(ago) = s.strip_prefix('-') {
        let d = super::parse_duration(ago).map_err(|e| format!("{what}: {e}"))?;
        return Ok(now_ms - d.as_millis() as i64);
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e12)
        .map(|v| (v * 1000.0).round() as i64)
        .ok_or_else(|| {
            format!("{what}: expected Unix seconds, 'now' or a relative time like -1h, got '{s}'")
        })
}

/// The parsed range of a query.
struct Range {
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    source: Source,
}

fn parse_range(settings: &Settings, q: &[(String, String)], now_ms: i64) -> Result<Range, String> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some((k, _)) = q
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "from" | "to" | "step"))
    {
        return Err(format!("unknown parameter '{k}' (expected from, to, step)"));
    }
    let from_ms = parse_time("from", get("from").unwrap_or("-1h"), now_ms)?;
    let to_ms = parse_time("to", get("to").unwrap_or("now"), now_ms)?;
    if from_ms >= to_ms {
        return Err(format!(
            "from ({from_ms} ms) must be before to ({to_ms} ms)"
        ));
    }
    let span = to_ms - from_ms;
    let step_ms = match get("step") {
        Some(s) => super::parse_duration(s)
            .map_err(|e| format!("step: {e}"))?
            .as_millis() as i64,
        // About 300 buckets; whole minutes once they are a minute or more.
        None => match (span / 300).max(1000) {
            s if s >= 60_000 => (s + 59_999) / 60_000 * 60_000,
            s => (s + 999) / 1000 * 1000,
        },
    };
    if step_ms < 1 {
        return Err("step: expected at least 1ms".into());
    }
    if span / step_ms > MAX_BUCKETS {
        return Err(format!(
            "step: {step_ms} ms gives more than {MAX_BUCKETS} buckets over {span} ms; use a larger step"
        ));
    }
    let raw_from = now_ms - settings.raw_retention.as_millis() as i64;
    let source = if step_ms % 60_000 == 0 && (span > RAW_RANGE_MS || from_ms < raw_from) {
        Source::Rollup
    } else {
        Source::Raw
    };
    Ok(Range {
        from_ms,
        to_ms,
        step_ms,
        source,
    })
}

fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn secs(ms: i64) -> Value {
    num(ms as f64 / 1000.0)
}

fn bucket_json(b: &Bucket) -> Value {
    json!({
        "t": secs(b.t_ms),
        "avg": num(b.sum / b.count as f64),
        "min": num(b.min),
        "max": num(b.max),
        "count": b.count,
    })
}

fn range(
    settings: &Settings,
    conn: &Connection,
    raw_name: &str,
    q: Vec<(String, String)>,
) -> Result<Response, Response> {
    let name = percent_decode(raw_name)
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|n| line::valid_name(n))
        .ok_or_else(|| {
            bad_request(format!(
                "'{raw_name}' is not a metric name ([A-Za-z0-9_.-], 1-200 bytes)"
            ))
        })?;
    let now_ms = super::now_ms();
    let r = parse_range(settings, &q, now_ms).map_err(bad_request)?;
    let id = store::metric_id(conn, &name)
        .map_err(db_error)?
        .ok_or_else(|| Response::error(404, &format!("No metric named '{name}'.")))?;
    let buckets =
        store::buckets(conn, id, r.from_ms, r.to_ms, r.step_ms, r.source).map_err(db_error)?;
    let count: i64 = buckets.iter().map(|b| b.count).sum();
    let sum: f64 = buckets.iter().map(|b| b.sum).sum();
    let summary = if count == 0 {
        json!({ "count": 0, "avg": null, "min": null, "max": null })
    } else {
        json!({
            "count": count,
            "avg": num(sum / count as f64),
            "min": num(buckets.iter().map(|b| b.min).fold(f64::INFINITY, f64::min)),
            "max": num(buckets.iter().map(|b| b.max).fold(f64::NEG_INFINITY, f64::max)),
        })
    };
    Ok(Response::json(&json!({
        "name": name,
        "from": secs(r.from_ms),
        "to": secs(r.to_ms),
        "step": secs(r.step_ms),
        "source": match r.source { Source::Raw => "raw", Source::Rollup => "rollup" },
        "buckets": buckets.iter().map(bucket_json).collect::<Vec<_>>(),
        "summary": summary,
    })))
}

/// A metric name as Prometheus accepts it and its linter likes it: lower case,
/// `[a-z0-9_]`, not starting with a digit.
fn prometheus_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A sample value in the exposition format.
fn prom_value(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

/// Collector counters in the exposition: (stored name, help); each is exposed as
/// `forkserve_metrics_NAME_total`.
const OWN: &[(&str, &str)] = &[
    ("datagrams", "Datagrams the collector received."),
    ("points", "Points the collector accepted."),
    ("flushes", "Transactions the collector committed."),
    (
        "flush_errors",
        "Flushes that failed (their points were kept for the next).",
    ),
    (
        "kernel_drops",
        "Datagrams the kernel dropped on the collector's UDP sockets (full receive buffer).",
    ),
    (
        "backlog_dropped",
        "Points dropped because the database refused writes for too long.",
    ),
];

fn prometheus(conn: &Connection) -> Result<Response, Response> {
    let counters = store::counters(conn).map_err(db_error)?;
    let metrics = store::list(conn).map_err(db_error)?;
    let get = |k: &str| counters.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    let mut out = String::new();
    let mut taken = std::collections::HashSet::new();
    for (stored, help) in OWN {
        let name = format!("forkserve_metrics_{stored}_total");
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            get(stored)
        );
        taken.insert(name);
    }
    let bad = "forkserve_metrics_bad_lines_total";
    let _ = write!(
        out,
        "# HELP {bad} Lines the collector refused, by reason.\n# TYPE {bad} counter\n"
    );
    for r in line::Reason::ALL {
        let v = get(&format!("bad_lines.{}", r.as_str()));
        let _ = writeln!(out, "{bad}{{reason=\"{}\"}} {v}", r.as_str());
    }
    taken.insert(bad.to_string());
    for m in &metrics {
        let base = prometheus_name(&m.name);
        let (name, ty, value, what) = match m.kind {
            Kind::Gauge => (base, "gauge", m.last_v, "Last value of"),
            Kind::Counter => (
                format!("{base}_total"),
                "counter",
                m.total,
                "Sum of the increments of",
            ),
            Kind::Timer => (
                format!("{base}_seconds"),
                "gauge",
                m.last_v / 1000.0,
                "Last duration (seconds) of",
            ),
        };
        if !taken.insert(name.clone()) || name.starts_with("forkserve_metrics_") {
            // Two names that differ only in characters Prometheus cannot carry.
            let _ = writeln!(out, "# {} skipped: its name {name} is taken", m.name);
            continue;
        }
        let _ = write!(
            out,
            "# HELP {name} {what} {} sent to the forkserve collector.\n# TYPE {name} {ty}\n{name} {}\n",
            m.name,
            prom_value(value)
        );
    }
    Ok(Response::new(200, PROMETHEUS, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_prometheus_names() {
        assert_eq!(prometheus_name("cpu.user"), "cpu_user");
        assert_eq!(prometheus_name("9lives-Left"), "_9lives_left");
    }

    #[test]
    fn parses_query_times() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("from", "-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_time("from", "1700000000.5", now).unwrap(), now + 500);
        assert!(parse_time("from", "yesterday", now).is_err());
    }
}
