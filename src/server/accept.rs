//! The master's way in: accept a connection (or receive a datagram), check the
//! per-source share, fork its worker. When accept(2) fails for want of a resource
//! the listeners are paused (see [`AcceptErrors`](crate::listener::AcceptErrors));
//! when fork(2) fails an accepted connection waits in the
//! [`Pending`](super::pending::Pending) queue and is forked again after a back-off;
//! a connection over its source's fair share waits in the
//! [`Held`](super::pending::Held) queue until its source may take a slot.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use super::children::{PerSource, Role, log_refusal};
use super::master::Master;
use super::pending::{self, Waiting};
use super::{Handler, fork, worker};
use crate::logging::RateLimitedLog;
use crate::peer::Peer;
use crate::sys::{self, Forked};

/// How many connections (or datagrams) one wake-up may take from one listener
/// before the loop looks at signals and the other listeners again.
const ACCEPT_BATCH: usize = 64;

impl Master {
    /// A listener is readable: take what it has.
    pub(super) fn serve_ready(&mut self, s: usize, l: usize) {
        if self.svcs[s].conf.model == crate::handler::Model::Prefork {
            // The workers accept; the master only watches for clients that wait.
            return self.pool_clients_seen(s);
        }
        match self.svcs[s].conf.handler {
            Handler::Stream(_) => self.accept_connections(s, l),
            Handler::Datagram(_) => self.receive_datagrams(s, l),
        }
    }

    /// Counts `peer` in its source; false when its source may take no more now.
    fn try_admit(&mut self, s: usize, peer: &Peer) -> bool {
        let svc = &mut self.svcs[s];
        let (policy, max) = (svc.conf.per_source, svc.conf.max_children);
        svc.sources
            .try_add(peer.source_key(), policy, svc.active, max)
    }

    /// Logs (at most once a second) that `peer` was refused.
    fn log_refused(&mut self, s: usize, peer: &Peer) {
        let svc = &mut self.svcs[s];
        let held = svc.sources.get(peer.source_key());
        let (policy, max) = (svc.conf.per_source, svc.conf.max_children);
        svc.counters.refuse("per_source");
        log_refusal(&mut svc.refusals, &svc.conf.name, peer, held, policy, max);
    }

    /// Counts `peer` in its source, or logs why not.
    fn admit(&mut self, s: usize, peer: &Peer) -> bool {
        self.try_admit(s, peer) || {
            self.log_refused(s, peer);
            false
        }
    }

    /// A connection whose source has its share: under the fair share it waits for
    /// a slot its source may take (see [`pending::hold_limit`]);
    /// under `--max-per-source N`, or when too many wait, it is closed.
    fn hold_or_refuse(&mut self, w: Waiting) {
        let s = w.service;
        let (policy, max) = (self.svcs[s].conf.per_source, self.svcs[s].conf.max_children);
        let w = if policy == PerSource::FairShare {
            let (peer, key) = (w.peer.clone(), w.peer.source_key());
            match self.held.hold(w, pending::hold_limit(max)) {
                Ok(()) => {
                    let svc = &mut self.svcs[s];
                    let open = svc.sources.get(key);
                    let name = &svc.conf.name;
                    svc.refusals.log(|n| {
                        log::info!(
                            "{name}: {peer} waits: {open} already open from {key} ({}){}",
                            policy.describe(max),
                            RateLimitedLog::more(n)
                        )
                    });
                    return;
                }
                Err(w) => w,
            }
        } else {
            w
        };
        self.log_refused(s, &w.peer);
    }

    /// Starts the held connections whose sources may now take a slot, oldest
    /// first; closes those that waited [`pending::HOLD_MAX_WAIT`].
    pub(super) fn serve_held(&mut self, now: Instant) {
        for w in self.held.take_expired(now) {
            log::warn!(
                "{}: closing {}: no slot for its source within {}s",
                self.svcs[w.service].conf.name,
                w.peer,
                pending::HOLD_MAX_WAIT.as_secs()
            );
            self.svcs[w.service].counters.refuse("hold_timeout");
        }
        // While forks fail, the connections already waiting for one go first.
        while self.pending.is_empty() {
            let svcs = &self.svcs;
            let Some(w) = self.held.take_first(|w| {
                let svc = &svcs[w.service];
                let max = svc.conf.max_children;
                let open = svc.sources.get(w.peer.source_key());
                svc.active < max && svc.conf.per_source.allows(open, svc.active, max)
            }) else {
                return;
            };
            let admitted = self.try_admit(w.service, &w.peer);
            debug_assert!(admitted, "checked above");
            self.fork_or_keep(w, false);
        }
    }

    /// Closes every held connection (a stop, or the drain deadline).
    pub(super) fn drop_held(&mut self) {
        for w in self.held.take_all() {
            log::warn!(
                "{}: closing {}: its source never got a slot",
                self.svcs[w.service].conf.name,
                w.peer
            );
        }
    }

    /// Records a forked worker (or a spawned program; `latency`: its first-byte
    /// slot).
    pub(super) fn started(&mut self, s: usize, pid: i32, peer: Peer, latency: Option<u32>) {
        let svc = &mut self.svcs[s];
        svc.active += 1;
        super::scoreboard::note_active(&svc.contexts, svc.active);
        svc.served += 1;
        svc.counters.started(svc.active, svc.conf.max_children);
        self.served_total += 1;
        self.children.insert(
            pid,
            Role::Worker {
                service: s,
                peer,
                latency,
            },
        );
        self.title_dirty = true;
        self.pending.fork_worked();
    }

    /// accept(2) or recvfrom(2) on listener `l` of service `s` failed: pause the
    /// listeners if it would fail again at once.
    fn accept_failed(&mut self, s: usize, l: usize, e: &std::io::Error) {
        let svc = &self.svcs[s];
        if let Some(pause) = self
            .accept_errors
            .on_error(&svc.conf.name, svc.listeners[l].addr(), e)
        {
            self.accept_paused_until = Some(Instant::now() + pause);
        }
    }

    fn accept_connections(&mut self, s: usize, l: usize) {
        if !self.held.is_empty() {
            self.serve_held(Instant::now());
        }
        for _ in 0..ACCEPT_BATCH {
            if self.svcs[s].active >= self.svcs[s].conf.max_children || !self.pending.is_empty() {
                return;
            }
            let (fd, addr) = match sys::accept(self.svcs[s].listeners[l].as_fd()) {
                Ok(x) => x,
                Err(e) => return self.accept_failed(s, l, &e),
            };
            self.accept_errors.on_success();
            let peer = worker::stream_peer(fd.as_fd(), &addr);
            let w = Waiting {
                service: s,
                listener: l,
                fd,
                since: Instant::now(),
                peer,
            };
            // Behind its own source's held connections, never ahead of them.
            let queued = self.held.has(s, w.peer.source_key());
            if !queued && self.try_admit(s, &w.peer) {
                self.fork_or_keep(w, false);
            } else {
                self.hold_or_refuse(w);
            }
        }
    }

    /// Forks the worker of an accepted connection (or has its service's spawner
    /// start its program); when that fails for want of processes the connection
    /// waits for the next attempt (or is closed when too many already wait).
    /// `was_waiting`: it comes from the queue, and goes back to its front.
    fn fork_or_keep(&mut self, w: Waiting, was_waiting: bool) {
        let (s, l) = (w.service, w.listener);
        let w = if self.svcs[s].conf.spare > 0 {
            match self.hand_to_spare(w) {
                Ok(()) => return,
                Err(w) => w,
            }
        } else {
            w
        };
        let (w, e) = if self.svcs[s].conf.spawner.is_some() {
            match self.spawn_for(w) {
                Ok(()) => return,
                Err(failed) => failed,
            }
        } else {
            let slot = self.board.take();
            // Formatted here, where the code is mapped: the worker only copies it.
            let title = fork::prepared_title(&self.svcs[s].conf.name, &w.peer);
            match sys::fork() {
                Ok(Forked::Child) => {
                    self.board.arm_in_child(slot, w.since);
                    fork::run_stream_worker(self, s, l, w.fd, w.peer, &title)
                }
                Ok(Forked::Parent(pid)) => {
                    drop(w.fd);
                    self.started(s, pid, w.peer, slot);
                    return;
                }
                Err(e) => {
                    if let Some(slot) = slot {
                        self.board.release(slot);
                    }
                    (w, e)
                }
            }
        };
        self.svcs[s].counters.forks_failed += 1;
        let name = self.svcs[s].conf.name.clone();
        match self.pending.keep(w, was_waiting) {
            Ok(wait) => self.fork_failures.log(|n| {
                log::error!(
                    "{name}: fork failed: {e}; the connection waits, trying again in {} ms{}",
                    wait.as_millis(),
                    RateLimitedLog::more(n)
                )
            }),
            Err(w) => {
                self.fork_failures.log(|n| {
                    log::error!(
                        "{name}: fork failed: {e}; {} connections already wait, closing {}{}",
                        pending::CAPACITY,
                        w.peer,
                        RateLimitedLog::more(n)
                    )
                });
                self.svcs[w.service].counters.refuse("fork_queue_full");
                self.forget(w);
            }
        }
    }

    /// Closes a connection that never got a process, uncounting its source.
    pub(super) fn forget(&mut self, w: Waiting) {
        let svc = &mut self.svcs[w.service];
        svc.sources.remove(w.peer.source_key(), svc.conf.per_source);
        drop::<OwnedFd>(w.fd);
    }

    /// Forks again for the connections that wait, while forks work and their
    /// services have room; closes those that waited too long.
    pub(super) fn retry_pending(&mut self, now: Instant) {
        for w in self.pending.take_expired(now) {
            log::error!(
                "{}: no process for {} after {}s; closing it",
                self.svcs[w.service].conf.name,
                w.peer,
                pending::MAX_WAIT.as_secs()
            );
            self.svcs[w.service].counters.refuse("fork_timeout");
            self.forget(w);
        }
        while let Some(w) = self.pending.take_due(now) {
            let svc = &self.svcs[w.service];
            if svc.active >= svc.conf.max_children {
                // A worker's exit frees the slot; the reaper calls us again.
                self.pending.put_back(w);
                return;
            }
            self.fork_or_keep(w, true);
            if self.pending.due().is_some_and(|d| d > now) {
                return;
            }
        }
    }

    /// Closes every waiting connection (a stop, or the drain deadline).
    pub(super) fn drop_pending(&mut self) {
        for w in self.pending.take_all() {
            log::warn!(
                "{}: closing {}: it never got a process",
                self.svcs[w.service].conf.name,
                w.peer
            );
            self.forget(w);
        }
    }

    fn receive_datagrams(&mut self, s: usize, l: usize) {
        for _ in 0..ACCEPT_BATCH {
            if self.svcs[s].active >= self.svcs[s].conf.max_children {
                return;
            }
            let got = sys::recv_into(self.svcs[s].listeners[l].as_fd(), &mut self.dgram_buf);
            let n = self.dgram_buf.len();
            let (addr, cred) = match got {
                Ok(x) => x,
                Err(e) => return self.accept_failed(s, l, &e),
            };
            let (peer, reply_to) = worker::datagram_peer(addr, cred);
            if !self.admit(s, &peer) {
                continue;
            }
            match sys::fork() {
                Ok(Forked::Child) => fork::run_datagram_worker(self, s, l, n, reply_to, peer),
                Ok(Forked::Parent(pid)) => self.started(s, pid, peer, None),
                Err(e) => {
                    self.svcs[s].counters.forks_failed += 1;
                    let name = self.svcs[s].conf.name.clone();
                    self.fork_failures.log(|k| {
                        log::error!(
                            "{name}: fork failed: {e}; dropping a datagram from {peer}{}",
                            RateLimitedLog::more(k)
                        )
                    });
                    let svc = &mut self.svcs[s];
                    svc.sources.remove(peer.source_key(), svc.conf.per_source);
                    self.accept_paused_until = Some(Instant::now() + pending::FIRST_RETRY);
                    return;
                }
            }
        }
    }
}
