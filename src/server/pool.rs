//! The prefork pool's size: between `--workers` and `--max-workers`, by load (as
//! Apache's spare-server settings do, without a scoreboard). While the pool may
//! grow, the master watches the service's listeners; when one is readable it looks
//! again [`GROW_CHECK`] later, and a connection still waiting then (no idle worker
//! took it) costs one more worker. A worker beyond `--workers` leaves after
//! [`RETIRE_IDLE`] without a connection and is not replaced.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::Service;
use super::master::Master;
use crate::handler::Model;
use crate::sys;

/// How long a connection must wait in the backlog before the pool grows.
const GROW_CHECK: Duration = Duration::from_millis(10);

/// An extra worker idle this long exits (and the pool shrinks back).
pub(crate) const RETIRE_IDLE: Duration = Duration::from_secs(10);

/// The number of worker slots of a prefork service: room for the largest pool.
pub(crate) fn slots(conf: &Service) -> usize {
    conf.max_workers.unwrap_or(conf.workers).max(conf.workers)
}

/// True for a slot beyond `--workers`: started under load, retired when idle.
pub(crate) fn is_extra(conf: &Service, slot: usize) -> bool {
    conf.model == Model::Prefork && slot >= conf.workers
}

/// When each service's pool is to be looked at again (a listener was readable).
#[derive(Default)]
pub(crate) struct Growth {
    check_at: Vec<Option<Instant>>,
}

impl Growth {
    pub fn due(&self) -> Option<Instant> {
        self.check_at.iter().flatten().min().copied()
    }

    fn at(&mut self, s: usize) -> &mut Option<Instant> {
        if self.check_at.len() <= s {
            self.check_at.resize(s + 1, None);
        }
        &mut self.check_at[s]
    }
}

impl Master {
    /// True when the master should watch service `s`'s listeners: a prefork pool
    /// with room to grow and no look pending.
    pub(super) fn pool_may_grow(&self, s: usize) -> bool {
        let svc = &self.svcs[s];
        svc.conf.model == Model::Prefork
            && svc.slots.iter().any(|(pid, _)| pid.is_none())
            && self.growth.check_at.get(s).is_none_or(|t| t.is_none())
    }

    /// A listener of prefork service `s` is readable: look again shortly.
    pub(super) fn pool_clients_seen(&mut self, s: usize) {
        *self.growth.at(s) = Some(Instant::now() + GROW_CHECK);
    }

    /// The looks that are due: a connection still waiting starts one more worker.
    pub(super) fn pool_check(&mut self, now: Instant) {
        for s in 0..self.svcs.len() {
            match self.growth.check_at.get(s) {
                Some(Some(t)) if *t <= now => {}
                _ => continue,
            }
            self.growth.check_at[s] = None;
            let svc = &self.svcs[s];
            let waiting = svc.listeners.iter().any(|l| {
                let mut fds = [sys::pollfd(l.as_raw_fd(), sys::POLLIN)];
                sys::poll(&mut fds, Some(Duration::ZERO)).is_ok_and(|n| n > 0)
            });
            let free = svc
                .slots
                .iter()
                .position(|(pid, b)| pid.is_none() && b.due.is_none());
            if let (true, Some(slot)) = (waiting, free) {
                let busy = svc.slots.iter().filter(|(pid, _)| pid.is_some()).count();
                log::info!(
                    "{}: clients wait with all {busy} workers busy; starting worker #{}",
                    svc.conf.name,
                    slot + 1
                );
                self.spawn_server(s, slot);
            }
        }
    }
}
