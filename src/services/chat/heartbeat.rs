//! How a chat worker notices a broker that is there but does not answer (stopped
//! with SIGSTOP, stuck, swapped out): a dead broker closes the IPC connection, a
//! stalled one just goes quiet. After [`QUIET`] without a frame from the broker the
//! worker sends `Ping`; a broker that has not answered within [`PATIENCE`] is
//! stalled, and the client is told. Any frame from the broker ends the stall.
//! While stalled, the worker's queue towards the broker is bounded
//! ([`MAX_QUEUED`]): lines past it are refused with an error, not stored.

use std::time::{Duration, Instant};

/// Silence from the broker before the worker asks whether it is there.
pub const QUIET: Duration = Duration::from_secs(2);

/// How long a `Ping` may go unanswered before the broker counts as stalled.
pub const PATIENCE: Duration = Duration::from_secs(3);

/// Bytes of requests a worker keeps for the broker beyond what the socket holds.
pub const MAX_QUEUED: usize = 64 * 1024;

/// What the worker must do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Nothing.
    Idle,
    /// Send a `Ping`.
    Ping,
    /// The broker just became unresponsive: tell the client.
    Stalled,
}

/// The heartbeat's state, one per worker.
#[derive(Debug)]
pub struct Heartbeat {
    last_heard: Instant,
    ping_sent: Option<Instant>,
    stalled: bool,
}

impl Heartbeat {
    pub fn new(now: Instant) -> Heartbeat {
        Heartbeat {
            last_heard: now,
            ping_sent: None,
            stalled: false,
        }
    }

    /// A frame came from the broker. True if it was stalled until now.
    pub fn heard(&mut self, now: Instant) -> bool {
        self.last_heard = now;
        self.ping_sent = None;
        std::mem::replace(&mut self.stalled, false)
    }

    /// When [`Heartbeat::check`] has something to do next.
    pub fn due(&self) -> Instant {
        match self.ping_sent {
            None => self.last_heard + QUIET,
            Some(_) if self.stalled => Instant::now() + QUIET,
            Some(t) => t + PATIENCE,
        }
    }

    /// What to do at `now`.
    pub fn check(&mut self, now: Instant) -> Beat {
        match self.ping_sent {
            None if now >= self.last_heard + QUIET => {
                self.ping_sent = Some(now);
                Beat::Ping
            }
            Some(t) if !self.stalled && now >= t + PATIENCE => {
                self.stalled = true;
                Beat::Stalled
            }
            _ => Beat::Idle,
        }
    }

    /// A new connection to a (restarted) broker: start afresh.
    pub fn reset(&mut self, now: Instant) {
        *self = Heartbeat::new(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_then_ping_then_stall_then_recovery() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(t0);
        assert_eq!(h.check(t0 + Duration::from_secs(1)), Beat::Idle);
        assert_eq!(h.check(t0 + QUIET), Beat::Ping);
        assert_eq!(h.check(t0 + QUIET + Duration::from_secs(1)), Beat::Idle);
        assert_eq!(h.check(t0 + QUIET + PATIENCE), Beat::Stalled);
        // Told once.
        assert_eq!(h.check(t0 + QUIET + PATIENCE * 2), Beat::Idle);
        assert!(h.heard(t0 + QUIET * 5), "the end of a stall is told");
        assert!(!h.heard(t0 + QUIET * 5));
        assert_eq!(h.check(t0 + QUIET * 5 + Duration::from_secs(1)), Beat::Idle);
    }
}
