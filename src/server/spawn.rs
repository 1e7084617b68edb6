//! Starting a program for a connection straight from the master, instead of forking
//! a worker that would run a handler: the super-server path (tcpserver,
//! s6-ipcserver, inetd). A service that sets a [`Spawner`] has the master call it
//! for every accepted stream connection; the spawner decides (access rules), and
//! starts the program with a vfork-style spawn. The master runs no handler code:
//! what it runs is the spawner's small, non-blocking decision and the spawn
//! itself, which costs less than the fork of a worker that would exec anyway.
//! The started program is a worker like any other: counted against the limits,
//! reaped, logged and drained.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use super::children::Role;
use super::master::Master;
use crate::handler::Context;
use crate::peer::Peer;

/// Starts a process for one accepted connection, from the master.
///
/// It runs in the master's single thread between two polls: it must not block
/// (no network, no disk beyond what is cached in memory) and must not keep the
/// connection (the master closes its copy once the call returns).
pub trait Spawner: Send + Sync + 'static {
    /// Starts the process serving `conn`: `Ok(Some(pid))` once started (the
    /// master reaps and counts it as a worker), `Ok(None)` when the spawner
    /// refused the client (it has logged why; the connection is closed), `Err`
    /// when the process could not be started.
    fn spawn(&self, conn: BorrowedFd<'_>, peer: &Peer, ctx: &Context) -> io::Result<Option<i32>>;
}

impl Master {
    /// Serves an accepted connection of service `s` with its spawner. The per-source
    /// count was taken by the caller; it is given back unless a process started.
    pub(super) fn spawn_for(&mut self, s: usize, l: usize, fd: OwnedFd, peer: Peer) {
        let Some(spawner) = self.svcs[s].conf.spawner.clone() else {
            return;
        };
        let ctx = &self.svcs[s].contexts[l];
        // A panicking spawner must not take the master down: it costs this
        // connection only (the panic hook has logged it).
        let result = catch_unwind(AssertUnwindSafe(|| spawner.spawn(fd.as_fd(), &peer, ctx)))
            .unwrap_or_else(|_| Err(io::Error::other("the spawner panicked")));
        drop(fd);
        let key = peer.source_key();
        let svc = &mut self.svcs[s];
        match result {
            Ok(Some(pid)) => {
                svc.active += 1;
                svc.served += 1;
                self.served_total += 1;
                self.children.insert(pid, Role::Worker { service: s, peer });
                self.title_dirty = true;
            }
            Ok(None) => svc.sources.remove(key, svc.conf.max_per_source),
            Err(e) => {
                svc.sources.remove(key, svc.conf.max_per_source);
                log::error!("{}: cannot start a process for {peer}: {e}", svc.conf.name);
                // Out of processes or memory: give the system a moment, as after a
                // failed fork.
                if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOMEM)) {
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                }
            }
        }
    }
}
