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
use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::master::Master;
use super::pending::Waiting;
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
    /// Starts the program for the accepted connection `w` through its service's
    /// spawner. The connection is done with (started, declined by the rules, or
    /// failed and logged) unless the system is out of processes or memory: then
    /// it comes back, to wait for another attempt like a connection whose fork
    /// failed.
    pub(super) fn spawn_for(&mut self, w: Waiting) -> Result<(), (Waiting, io::Error)> {
        let s = w.service;
        let Some(spawner) = self.svcs[s].conf.spawner.clone() else {
            return Ok(());
        };
        let ctx = &self.svcs[s].contexts[w.listener];
        // A panicking spawner must not take the master down: it costs this
        // connection only (the panic hook has logged it).
        let result = catch_unwind(AssertUnwindSafe(|| {
            spawner.spawn(w.fd.as_fd(), &w.peer, ctx)
        }))
        .unwrap_or_else(|_| Err(io::Error::other("the spawner panicked")));
        match result {
            Ok(Some(pid)) => {
                drop(w.fd);
                self.started(s, pid, w.peer, None);
                Ok(())
            }
            Ok(None) => {
                self.forget(w);
                Ok(())
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOMEM)) => {
                Err((w, e))
            }
            Err(e) => {
                log::error!(
                    "{}: cannot start a process for {}: {e}",
                    self.svcs[s].conf.name,
                    w.peer
                );
                self.forget(w);
                Ok(())
            }
        }
    }
}
