//! The master's table of live children (workers, server processes, companions), the
//! per-source counters behind `--max-per-source`, and the reaper that empties both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::logging::RateLimitedLog;
use crate::peer::{Peer, SourceKey};
use crate::sys::{self, ExitStatus};

/// What a child is for.
#[derive(Debug)]
pub enum Role {
    /// Serves one connection or datagram of a fork-model service.
    /// `latency`: its slot on the first-byte board, if it got one.
    Worker {
        service: usize,
        peer: Peer,
        latency: Option<u32>,
    },
    /// A long-lived server process (thread, sequential or prefork model).
    Server { service: usize, slot: usize },
    /// A fork-ahead worker waiting for the connection the master will hand it.
    Spare { service: usize },
    /// A helper process a service asked for (the chat broker).
    Companion { service: usize, index: usize },
    /// A child of the previous image of this master (before a binary upgrade):
    /// `role` is what it was (worker, server, companion), `service` the service of
    /// that name now running, if any.
    Inherited {
        service: Option<usize>,
        role: String,
        peer: String,
    },
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

    /// Records a child that has been running for `age` already.
    pub fn insert_aged(&mut self, pid: i32, role: Role, age: Duration) {
        let started = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.map.insert(pid, Child { role, started });
    }

    /// Every live child.
    pub fn iter(&self) -> impl Iterator<Item = (&i32, &Child)> {
        self.map.iter()
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

/// How many connections (or datagrams) one source may hold at once. A source is a
/// peer IP on TCP/UDP, a peer uid on Unix sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PerSource {
    /// The default: the last quarter of the slots (`max_children / 4`, rounded
    /// down) is kept for sources that hold fewer than that many. A lone source can
    /// still use three quarters of the service; one that holds its slots open
    /// (slow clients) cannot lock out everyone else.
    #[default]
    FairShare,
    /// At most this many (`--max-per-source N`).
    Max(usize),
    /// No limit (`--max-per-source 0`).
    Unlimited,
}

impl PerSource {
    /// `--max-per-source`: none given is the fair share, 0 is no limit.
    pub fn from_option(n: Option<usize>) -> PerSource {
        match n {
            None => PerSource::FairShare,
            Some(0) => PerSource::Unlimited,
            Some(n) => PerSource::Max(n),
        }
    }

    /// The slots kept for other sources under the fair share.
    pub fn reserve(max_children: usize) -> usize {
        max_children / 4
    }

    /// True if a source that holds `held` may take one more while `active` of
    /// `max_children` are in use.
    pub fn allows(self, held: usize, active: usize, max_children: usize) -> bool {
        match self {
            PerSource::Unlimited => true,
            PerSource::Max(n) => held < n,
            PerSource::FairShare => {
                let reserve = PerSource::reserve(max_children);
                held < reserve || active + reserve < max_children
            }
        }
    }

    /// How the limit reads in a refusal's log line.
    pub fn describe(self, max_children: usize) -> String {
        match self {
            PerSource::Unlimited => "no limit".to_string(),
            PerSource::Max(n) => format!("max-per-source {n}"),
            PerSource::FairShare => format!(
                "fair share: the last {} of {max_children} slots are kept for other sources",
                PerSource::reserve(max_children)
            ),
        }
    }
}

/// Logs, at most once a second through `limiter`, that service `name` refused
/// `peer`, whose source holds `held` already.
pub fn log_refusal(
    limiter: &mut RateLimitedLog,
    name: &str,
    peer: &Peer,
    held: usize,
    policy: PerSource,
    max_children: usize,
) {
    limiter.log(|n| {
        log::info!(
            "{name}: refused {peer}: {held} already open from {} ({}){}",
            peer.source_key(),
            policy.describe(max_children),
            RateLimitedLog::more(n)
        )
    });
}

/// Live connections per source (peer IP, or peer uid on Unix sockets).
#[derive(Default, Debug)]
pub struct SourceCounts {
    map: HashMap<SourceKey, usize>,
}

impl SourceCounts {
    /// Counts one more from `key` unless `policy` refuses it while `active` of
    /// `max_children` are in use; false when refused.
    pub fn try_add(
        &mut self,
        key: SourceKey,
        policy: PerSource,
        active: usize,
        max_children: usize,
    ) -> bool {
        if policy == PerSource::Unlimited {
            return true;
        }
        let n = self.map.entry(key).or_insert(0);
        if !policy.allows(*n, active, max_children) {
            if *n == 0 {
                self.map.remove(&key);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// One fewer from `key`.
    pub fn remove(&mut self, key: SourceKey, policy: PerSource) {
        if policy == PerSource::Unlimited {
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

#[cfg(test)]
mod tests {
    use super::PerSource;

    #[test]
    fn the_fair_share_keeps_a_quarter_for_other_sources() {
        let fair = PerSource::FairShare;
        // 40 slots: a lone source gets 30; the last 10 go to sources below 10.
        assert!(fair.allows(29, 29, 40));
        assert!(!fair.allows(30, 30, 40));
        assert!(fair.allows(0, 30, 40));
        assert!(fair.allows(9, 39, 40));
        assert!(!fair.allows(10, 39, 40));
        // Fewer than 4 slots: no reserve, the plain limit holds.
        assert!(fair.allows(2, 2, 3));
        assert_eq!(PerSource::from_option(Some(0)), PerSource::Unlimited);
        assert!(!PerSource::Max(2).allows(2, 2, 40));
    }
}
