//! The master's table of live children (workers, server processes, companions), the
//! per-source counters behind `--max-per-source`, and the reaper that empties both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::peer::{Peer, SourceKey};
use crate::sys::{self, ExitStatus};

/// What a child is for.
#[derive(Debug)]
pub enum Role {
    /// Serves one connection or datagram of a fork-model service.
    Worker { service: usize, peer: Peer },
    /// A long-lived server process (thread, sequential or prefork model).
    Server { service: usize, slot: usize },
    /// A helper process a service asked for (the chat broker).
    Companion { service: usize, index: usize },
}

#[derive(Debug)]
pub struct Child {
    pub role: Role,
    pub started: Instant,
}

/// A reaped child: its pid, what it was, how it ended and how long it lived.
pub struct Reaped {
    pub pid: i32,
    pub role: Role,
    pub status: ExitStatus,
    pub lifetime: Duration,
}

/// Live children by pid.
#[derive(Default)]
pub struct Children {
    map: HashMap<i32, Child>,
}

impl Children {
    /// A table sized so that it never grows while serving `n` at once.
    pub fn with_capacity(n: usize) -> Children {
        Children {
            map: HashMap::with_capacity(n.min(65536) + 16),
        }
    }

    pub fn insert(&mut self, pid: i32, role: Role) {
        self.map.insert(
            pid,
            Child {
                role,
                started: Instant::now(),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Counts children matching `pred`.
    pub fn count_where(&self, pred: impl Fn(&Role) -> bool) -> usize {
        self.map.values().filter(|c| pred(&c.role)).count()
    }

    /// Sends `sig` to every child matching `pred`.
    pub fn signal_where(&self, sig: i32, pred: impl Fn(&Role) -> bool) {
        for (&pid, c) in &self.map {
            if pred(&c.role) {
                sys::kill(pid, sig);
            }
        }
    }

    /// Reaps one child that has exited, without blocking; `None` when none has.
    /// Children this table does not know (none should exist) are reaped too and
    /// skipped, so no zombie ever stays.
    pub fn reap_one(&mut self) -> Option<Reaped> {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, status))) => match self.map.remove(&pid) {
                    Some(child) => {
                        return Some(Reaped {
                            pid,
                            role: child.role,
                            status,
                            lifetime: child.started.elapsed(),
                        });
                    }
                    None => log::debug!("reaped unknown child {pid} ({status})"),
                },
                Ok(None) => return None,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("waitpid: {e}");
                    return None;
                }
            }
        }
    }
}

/// Live connections per source (peer IP, or peer uid on Unix sockets).
#[derive(Default, Debug)]
pub struct SourceCounts {
    map: HashMap<SourceKey, usize>,
}

impl SourceCounts {
    /// Counts one more from `key` unless that would pass `limit`; false when refused.
    pub fn try_add(&mut self, key: SourceKey, limit: Option<usize>) -> bool {
        let Some(limit) = limit else {
            return true;
        };
        let n = self.map.entry(key).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// One fewer from `key`.
    pub fn remove(&mut self, key: SourceKey, limit: Option<usize>) {
        if limit.is_none() {
            return;
        }
        if let Some(n) = self.map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.map.remove(&key);
            }
        }
    }

    pub fn get(&self, key: SourceKey) -> usize {
        self.map.get(&key).copied().unwrap_or(0)
    }
}

/// When to restart a process that keeps dying: 100 ms, doubling to 10 s; reset once
/// a process has lived 10 s.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    failures: u32,
    pub due: Option<Instant>,
}

impl Backoff {
    /// Schedules a restart after a process that lived `lifetime` ended.
    pub fn schedule(&mut self, lifetime: Duration) -> Duration {
        if lifetime > Duration::from_secs(10) {
            self.failures = 0;
        }
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << self.failures.min(7))
            .min(Duration::from_secs(10));
        self.failures += 1;
        self.due = Some(Instant::now() + delay);
        delay
    }
}

/// Logs at most one line per second for a repeated event, with a count of the ones
/// left out (refusals under a flood).
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
}
