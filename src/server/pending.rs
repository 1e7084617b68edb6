//! Accepted connections waiting for a process, for one of two reasons:
//!
//! - [`Pending`]: fork(2) failed (a pids limit, RLIMIT_NPROC, memory). The master
//!   keeps a few of them and forks again after a back-off, instead of closing
//!   connections it already accepted. The queue is small and bounded; what does not
//!   fit, or waits longer than [`MAX_WAIT`], is closed and logged.
//! - [`Held`]: the connection's source already holds its fair share of the
//!   service's slots. It waits, in order, until its source may take a slot again
//!   (one of its connections ends), for at most [`HOLD_MAX_WAIT`]; at most
//!   [`hold_limit`] wait per service, and what does not fit is refused. A client
//!   that opens many connections from one address (a load generator, a reverse
//!   proxy) is slowed to its share, not reset, while the reserved slots stay
//!   free for other sources.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::peer::{Peer, SourceKey};

/// Connections kept while forks fail, over all services.
pub const CAPACITY: usize = 16;

/// How long a kept connection may wait for its process.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// First wait before forking again; it doubles while forks keep failing.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// One accepted connection with no process yet.
pub struct Waiting {
    pub service: usize,
    pub listener: usize,
    pub fd: OwnedFd,
    pub peer: Peer,
    pub since: Instant,
}

/// The queue, and when to try forking again.
pub struct Pending {
    queue: VecDeque<Waiting>,
    retry: Duration,
    due: Option<Instant>,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            queue: VecDeque::new(),
            retry: FIRST_RETRY,
            due: None,
        }
    }
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// After a failed fork: keeps `w` (at the front when `first`, a connection that
    /// was already waiting) and schedules the next attempt, the wait doubling.
    /// Gives `w` back when the queue is full.
    pub fn keep(&mut self, w: Waiting, first: bool) -> Result<Duration, Waiting> {
        if self.queue.len() >= CAPACITY {
            return Err(w);
        }
        if first {
            self.queue.push_front(w);
        } else {
            self.queue.push_back(w);
        }
        let wait = self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
        self.due = Some(Instant::now() + wait);
        Ok(wait)
    }

    /// A fork worked: the next failure waits briefly again.
    pub fn fork_worked(&mut self) {
        if self.retry != FIRST_RETRY {
            self.retry = FIRST_RETRY;
        }
    }

    /// When the next attempt is due (None: nothing waits).
    pub fn due(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            None
        } else {
            self.due
        }
    }

    /// The oldest connection, if an attempt is due now.
    pub fn take_due(&mut self, now: Instant) -> Option<Waiting> {
        if self.due.is_some_and(|d| d <= now) {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// Puts back a connection taken with [`Pending::take_due`] that cannot be
    /// served yet (its service is full), keeping its place.
    pub fn put_back(&mut self, w: Waiting) {
        self.queue.push_front(w);
    }

    /// Removes the connections that waited longer than [`MAX_WAIT`].
    pub fn take_expired(&mut self, now: Instant) -> Vec<Waiting> {
        let (old, kept): (Vec<Waiting>, Vec<Waiting>) = self
            .queue
            .drain(..)
            .partition(|w| now.duration_since(w.since) > MAX_WAIT);
        self.queue.extend(kept);
        old
    }

    /// The waiting connections' descriptors, for a forked child to close: no
    /// worker may hold another client's connection open.
    pub fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.queue.iter().map(|w| w.fd.as_raw_fd())
    }

    /// Empties the queue (a stop).
    pub fn take_all(&mut self) -> Vec<Waiting> {
        self.queue.drain(..).collect()
    }
}

/// Connections held over all services: each holds a descriptor of the master's.
pub const HOLD_CAPACITY: usize = 512;

/// How many connections of a service with `max_children` slots may be held:
/// four per slot. A client sees its connection done when its worker shuts the
/// socket down, before the worker has exited and been reaped, so a source that
/// reconnects at once has more connections open at the server than it has
/// clients; this leaves room for that.
pub fn hold_limit(max_children: usize) -> usize {
    max_children.saturating_mul(4).clamp(4, HOLD_CAPACITY)
}

/// How long a connection over its source's share may wait for a slot.
pub const HOLD_MAX_WAIT: Duration = Duration::from_secs(30);

/// Connections over their source's fair share, oldest first.
#[derive(Default)]
pub struct Held {
    queue: VecDeque<Waiting>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many connections of service `s` wait.
    pub fn count(&self, s: usize) -> usize {
        self.queue.iter().filter(|w| w.service == s).count()
    }

    /// Whether a connection of service `s` from `source` waits.
    pub fn has(&self, s: usize, source: SourceKey) -> bool {
        self.queue
            .iter()
            .any(|w| w.service == s && w.peer.source_key() == source)
    }

    /// Keeps `w` unless `limit` connections of its service, or
    /// [`HOLD_CAPACITY`] in all, already wait.
    pub fn hold(&mut self, w: Waiting, limit: usize) -> Result<(), Waiting> {
        if self.queue.len() >= HOLD_CAPACITY || self.count(w.service) >= limit {
            return Err(w);
        }
        self.queue.push_back(w);
        Ok(())
    }

    /// When the oldest connection's wait runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.queue.iter().map(|w| w.since + HOLD_MAX_WAIT).min()
    }

    /// Removes the connections that waited longer than [`HOLD_MAX_WAIT`].
    pub fn take_expired(&mut self, now: Instant) -> Vec<Waiting> {
        let (old, kept): (Vec<Waiting>, Vec<Waiting>) = self
            .queue
            .drain(..)
            .partition(|w| now.duration_since(w.since) >= HOLD_MAX_WAIT);
        self.queue.extend(kept);
        old
    }

    /// The oldest connection for which `may_start` holds, taken out of the queue.
    pub fn take_first(&mut self, mut may_start: impl FnMut(&Waiting) -> bool) -> Option<Waiting> {
        let i = self.queue.iter().position(&mut may_start)?;
        self.queue.remove(i)
    }

    /// The waiting connections' descriptors, for a forked child to close.
    pub fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.queue.iter().map(|w| w.fd.as_raw_fd())
    }

    /// Empties the queue (a stop).
    pub fn take_all(&mut self) -> Vec<Waiting> {
        self.queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize) -> Waiting {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Waiting {
            service: 0,
            listener: 0,
            fd: OwnedFd::from(a),
            peer: Peer::Ip(format!("127.0.0.1:{}", 1000 + n).parse().unwrap()),
            since: Instant::now(),
        }
    }

    #[test]
    fn a_bounded_queue_with_a_growing_retry() {
        let mut p = Pending::default();
        assert_eq!(p.keep(waiting(0), false).ok(), Some(FIRST_RETRY));
        assert_eq!(p.keep(waiting(1), false).ok(), Some(FIRST_RETRY * 2));
        for n in 2..CAPACITY {
            assert!(p.keep(waiting(n), false).is_ok());
        }
        assert!(p.keep(waiting(99), false).is_err(), "full");
        assert_eq!(p.raw_fds().count(), CAPACITY);
        // Not due yet; then due, oldest first.
        let now = Instant::now();
        assert!(p.take_due(now).is_none());
        let later = now + MAX_RETRY * 2;
        let first = p.take_due(later).unwrap();
        assert_eq!(first.peer.to_string(), "127.0.0.1:1000");
        p.put_back(first);
        p.fork_worked();
        assert_eq!(p.take_all().len(), CAPACITY);
        assert!(p.is_empty() && p.due().is_none());
        assert_eq!(p.keep(waiting(0), false).ok(), Some(FIRST_RETRY));
        assert_eq!(p.take_expired(Instant::now() + MAX_WAIT * 2).len(), 1);
    }

    #[test]
    fn held_connections_wait_in_order_per_service_up_to_a_limit() {
        let mut h = Held::default();
        for n in 0..3 {
            assert!(h.hold(waiting(n), 3).is_ok());
        }
        assert!(h.hold(waiting(3), 3).is_err(), "service 0 is full");
        let mut other = waiting(4);
        other.service = 1;
        assert!(h.hold(other, 3).is_ok(), "each service has its own limit");
        assert_eq!((h.count(0), h.count(1)), (3, 1));
        // The oldest that may start, not merely the oldest.
        let w = h
            .take_first(|w| w.peer.to_string().ends_with(":1001"))
            .unwrap();
        assert_eq!(w.peer.to_string(), "127.0.0.1:1001");
        assert_eq!(
            h.take_first(|_| true).unwrap().peer.to_string(),
            "127.0.0.1:1000"
        );
        assert!(h.next_expiry().is_some());
        assert_eq!(h.take_expired(Instant::now() + HOLD_MAX_WAIT).len(), 2);
        assert!(h.is_empty());
    }
}
