//! Per-service counters the master keeps for its fork-model services: accepted,
//! refused (by reason), active, peak, failed forks, worker exits by status and by
//! signal, and the first-byte latency.
//!
//! First byte, defined honestly: the time from the master's accept(2) to the
//! worker's first successful write on the connection. The master cannot see the
//! worker's writes, so each worker gets a slot in a page shared across fork
//! ([`LatencyBoard`]); the worker stores the elapsed nanoseconds there on its first
//! write (one atomic store), and the master reads and frees the slot when it reaps
//! the worker. Workers that never write add nothing; a service with more live
//! workers than slots leaves the surplus unmeasured.
//!
//! Shown by `forkserve ctl status`, the SIGUSR1 log line, sd_notify STATUS= and the
//! Prometheus text of `--metrics-listen`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::sys::{self, ExitStatus};

/// Upper bounds of the latency buckets, in microseconds (the last is +Inf).
pub const BUCKETS_US: [u64; 14] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000,
];

/// A fixed-bucket latency histogram (Prometheus style).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Counts per bucket; the last is above every bound.
    counts: [u64; BUCKETS_US.len() + 1],
    sum_us: u64,
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The bucket bound under which fraction `q` of the samples lie (None: no
    /// samples; `u64::MAX`: above the last bound).
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        None
    }
}

/// How a quantile reads: `≤2ms`, `>1s`, `-`.
pub fn quantile_text(q: Option<u64>) -> String {
    match q {
        None => "-".into(),
        Some(u64::MAX) => ">1s".into(),
        Some(us) if us >= 1_000_000 => format!("≤{}s", us / 1_000_000),
        Some(us) if us >= 1_000 => format!("≤{}ms", us / 1_000),
        Some(us) => format!("≤{us}µs"),
    }
}

/// One service's counters.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub accepted: u64,
    /// Refusals by reason (`per_source`, `fork_queue_full`, `fork_timeout`).
    pub refused: BTreeMap<&'static str, u64>,
    /// Times the service reached max-children, so the master stopped accepting for
    /// it and new clients waited in the kernel's backlog.
    pub full: u64,
    pub peak: usize,
    pub forks_failed: u64,
    pub exits_status: BTreeMap<i32, u64>,
    pub exits_signal: BTreeMap<i32, u64>,
    pub first_byte: Histogram,
}

impl Counters {
    pub fn refuse(&mut self, reason: &'static str) {
        *self.refused.entry(reason).or_insert(0) += 1;
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// A worker started; `active` now run.
    pub fn started(&mut self, active: usize, max_children: usize) {
        self.accepted += 1;
        self.peak = self.peak.max(active);
        if active >= max_children {
            self.full += 1;
        }
    }

    pub fn exited(&mut self, status: ExitStatus) {
        match status {
            ExitStatus::Code(c) => *self.exits_status.entry(c).or_insert(0) += 1,
            ExitStatus::Signal(s) => *self.exits_signal.entry(s).or_insert(0) += 1,
        }
    }

    /// The counters in one short phrase (status lines).
    pub fn summary(&self, active: usize) -> String {
        let failed: u64 = self
            .exits_status
            .iter()
            .filter(|(c, _)| **c != 0)
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.exits_signal.values().sum::<u64>();
        format!(
            "{active} active (peak {}), {} accepted, {} refused, {} failed forks, {failed} failed exits, first byte p50 {} p99 {}",
            self.peak,
            self.accepted,
            self.refused_total(),
            self.forks_failed,
            quantile_text(self.first_byte.quantile_us(0.5)),
            quantile_text(self.first_byte.quantile_us(0.99)),
        )
    }

    /// The counters as a JSON object.
    pub fn json(&self, active: usize) -> serde_json::Value {
        let by = |m: &BTreeMap<i32, u64>, name: fn(i32) -> String| {
            m.iter()
                .map(|(k, v)| (name(*k), serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>()
        };
        serde_json::json!({
            "accepted": self.accepted,
            "refused": self.refused,
            "full": self.full,
            "active": active,
            "peak": self.peak,
            "forks_failed": self.forks_failed,
            "exits_by_status": by(&self.exits_status, |c| c.to_string()),
            "exits_by_signal": by(&self.exits_signal, sys::signal_name),
            "first_byte_p50_us": self.first_byte.quantile_us(0.5),
            "first_byte_p99_us": self.first_byte.quantile_us(0.99),
            "first_byte_samples": self.first_byte.count(),
        })
    }
}

impl Counters {
    /// Everything, for the next image of a binary upgrade.
    pub fn handover(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.accepted,
            "refused": self.refused,
            "full": self.full,
            "peak": self.peak,
            "forks_failed": self.forks_failed,
            "exits_status": self.exits_status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "exits_signal": self.exits_signal.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "first_byte": self.first_byte.counts.to_vec(),
            "first_byte_sum_us": self.first_byte.sum_us,
        })
    }

    /// The counters a previous image handed over (what it lacks stays 0).
    pub fn taken_over(v: &serde_json::Value) -> Counters {
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        let by_code = |k: &str| {
            v[k].as_object()
                .into_iter()
                .flatten()
                .filter_map(|(c, n)| Some((c.parse().ok()?, n.as_u64()?)))
                .collect()
        };
        let mut c = Counters {
            accepted: u("accepted"),
            full: u("full"),
            peak: u("peak") as usize,
            forks_failed: u("forks_failed"),
            exits_status: by_code("exits_status"),
            exits_signal: by_code("exits_signal"),
            ..Counters::default()
        };
        for reason in REASONS {
            if let Some(n) = v["refused"][reason].as_u64() {
                c.refused.insert(reason, n);
            }
        }
        for (slot, n) in c
            .first_byte
            .counts
            .iter_mut()
            .zip(v["first_byte"].as_array().into_iter().flatten())
        {
            *slot = n.as_u64().unwrap_or(0);
        }
        c.first_byte.sum_us = u("first_byte_sum_us");
        c
    }
}

/// Why a connection is closed without a worker.
pub const REASONS: [&str; 3] = ["per_source", "fork_queue_full", "fork_timeout"];

/// The families with one value per service: name, type, help, value (from the
/// counters and the number of active workers).
type Simple = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Counters, usize) -> u64,
);
const SIMPLE: [Simple; 5] = [
    (
        "accepted_total",
        "counter",
        "Connections (or datagrams) given a worker.",
        |c, _| c.accepted,
    ),
    (
        "full_total",
        "counter",
        "Times a service reached max-children (new clients then wait in the backlog).",
        |c, _| c.full,
    ),
    ("active", "gauge", "Workers running now.", |_, a| a as u64),
    ("peak", "gauge", "Most workers running at once.", |c, _| {
        c.peak as u64
    }),
    (
        "forks_failed_total",
        "counter",
        "fork(2) calls that failed.",
        |c, _| c.forks_failed,
    ),
];

/// Prometheus text exposition of every service's counters.
pub fn prometheus<'a>(services: impl Iterator<Item = (&'a str, &'a Counters, usize)>) -> String {
    let services: Vec<_> = services.collect();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, body: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP forkserve_{name} {help}");
        let _ = writeln!(out, "# TYPE forkserve_{name} {kind}");
        body(&mut out);
    };
    let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    for (name, kind, help, value) in SIMPLE {
        family(name, kind, help, &mut |o| {
            for (n, c, a) in &services {
                let _ = writeln!(
                    o,
                    "forkserve_{name}{{service=\"{}\"}} {}",
                    label(n),
                    value(c, *a)
                );
            }
        });
    }
    family(
        "refused_total",
        "counter",
        "Connections closed without a worker, by reason.",
        &mut |o| {
            for (n, c, _) in &services {
                for reason in REASONS {
                    let v = c.refused.get(reason).copied().unwrap_or(0);
                    let _ = writeln!(
                        o,
                        "forkserve_refused_total{{service=\"{}\",reason=\"{reason}\"}} {v}",
                        label(n)
                    );
                }
            }
        },
    );
    family(
        "worker_exits_total",
        "counter",
        "Worker exits by exit status or by signal.",
        &mut |o| {
            for (n, c, _) in &services {
                for (code, v) in &c.exits_status {
                    let _ = writeln!(
                        o,
                        "forkserve_worker_exits_total{{service=\"{}\",status=\"{code}\",signal=\"\"}} {v}",
                        label(n)
                    );
                }
                for (sig, v) in &c.exits_signal {
                    let _ = writeln!(
                        o,
                        "forkserve_worker_exits_total{{service=\"{}\",status=\"\",signal=\"{}\"}} {v}",
                        label(n),
                        sys::signal_name(*sig)
                    );
                }
            }
        },
    );
    family(
        "first_byte_seconds",
        "histogram",
        "From accept(2) in the master to the worker's first write on the connection.",
        &mut |o| {
            for (n, c, _) in &services {
                let h = &c.first_byte;
                let mut cum = 0;
                for (i, b) in BUCKETS_US.iter().enumerate() {
                    cum += h.counts[i];
                    let _ = writeln!(
                        o,
                        "forkserve_first_byte_seconds_bucket{{service=\"{}\",le=\"{}\"}} {cum}",
                        label(n),
                        *b as f64 / 1e6
                    );
                }
                let _ = writeln!(
                    o,
                    "forkserve_first_byte_seconds_bucket{{service=\"{}\",le=\"+Inf\"}} {}",
                    label(n),
                    h.count()
                );
                let _ = writeln!(
                    o,
                    "forkserve_first_byte_seconds_sum{{service=\"{}\"}} {}",
                    label(n),
                    h.sum_us as f64 / 1e6
                );
                let _ = writeln!(
                    o,
                    "forkserve_first_byte_seconds_count{{service=\"{}\"}} {}",
                    label(n),
                    h.count()
                );
            }
        },
    );
    out
}

/// The shared slots where workers leave their first-byte latency.
pub struct LatencyBoard {
    slots: &'static [AtomicU64],
    free: Vec<u32>,
}

/// Slots in the board: workers beyond this many at once go unmeasured.
const BOARD_SLOTS: usize = 4096;

/// In a worker: its slot, and when the master accepted its connection.
static MY_SLOT: OnceLock<(&'static AtomicU64, Instant)> = OnceLock::new();

impl LatencyBoard {
    pub fn new() -> LatencyBoard {
        let slots = sys::shared_counters(BOARD_SLOTS).unwrap_or_else(|e| {
            log::warn!("first-byte latency not measured: shared mapping: {e}");
            &[]
        });
        LatencyBoard {
            slots,
            free: (0..slots.len() as u32).rev().collect(),
        }
    }

    /// A slot for a worker about to be forked (None: none free).
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// The worker's latency in µs (if it wrote), freeing its slot.
    pub fn release(&mut self, slot: u32) -> Option<u64> {
        let ns = self.slots.get(slot as usize)?.swap(0, Ordering::Relaxed);
        self.free.push(slot);
        (ns > 0).then_some(ns / 1000)
    }

    /// In the forked worker: remember where to report its first write.
    pub fn arm_in_child(&self, slot: Option<u32>, accepted: Instant) {
        if let Some(s) = slot.and_then(|i| self.slots.get(i as usize)) {
            let _ = MY_SLOT.set((s, accepted));
        }
    }
}

impl Default for LatencyBoard {
    fn default() -> LatencyBoard {
        LatencyBoard::new()
    }
}

/// Called on every successful write of a connection: the first one reports the
/// first-byte latency; the rest cost two loads.
pub fn first_write() {
    if let Some((slot, start)) = MY_SLOT.get()
        && slot.load(Ordering::Relaxed) == 0
    {
        slot.store(
            (start.elapsed().as_nanos() as u64).max(1),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for _ in 0..98 {
            h.record(80);
        }
        h.record(3_000);
        h.record(2_000_000);
        assert_eq!(h.quantile_us(0.5), Some(100));
        assert_eq!(h.quantile_us(0.99), Some(5_000));
        assert_eq!(h.quantile_us(1.0), Some(u64::MAX));
        assert_eq!(quantile_text(Some(5_000)), "≤5ms");
    }

    #[test]
    fn counters_survive_a_handover() {
        let mut c = Counters::default();
        c.started(3, 4);
        c.refuse("fork_timeout");
        c.exited(ExitStatus::Code(1));
        c.exited(ExitStatus::Signal(libc::SIGTERM));
        c.first_byte.record(700);
        let back = Counters::taken_over(&c.handover());
        assert_eq!(back.json(0), c.json(0));
        assert_eq!(back.first_byte.sum_us, 700);
    }

    #[test]
    fn exposition_has_every_family() {
        let mut c = Counters::default();
        c.started(1, 40);
        c.refuse("per_source");
        c.exited(ExitStatus::Signal(libc::SIGKILL));
        c.first_byte.record(150);
        let text = prometheus([("echo", &c, 1usize)].into_iter());
        assert!(text.contains("forkserve_accepted_total{service=\"echo\"} 1"));
        assert!(text.contains("reason=\"per_source\"} 1"));
        assert!(text.contains("signal=\"SIGKILL\"} 1"));
        assert!(
            text.contains("forkserve_first_byte_seconds_bucket{service=\"echo\",le=\"0.0002\"} 1")
        );
    }
}
