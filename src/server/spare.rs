//! Fork-ahead (`--model fork --spare N`): the master keeps N freshly forked
//! one-shot workers waiting on a socketpair of their own. An accepted connection
//! goes to one of them (its descriptor passed with SCM_RIGHTS), which serves it
//! exactly as a forked worker would and exits; the master forks its replacement
//! at its next idle moment. Isolation is the fork model's (a fresh process per
//! connection, nothing shared between connections); the fork is simply done before
//! the connection arrives instead of after. The master still accepts, so limits,
//! the fair share and the held queue apply unchanged; a spare counts against
//! `--max-children` only once it has a connection. Replacements are forked when
//! a poll finds nothing to accept, one at a time.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::children::Role;
use super::fork;
use super::master::Master;
use super::pending::Waiting;
use super::{Error, Handler, Service};
use crate::handler::Model;
use crate::proctitle;
use crate::sys::{self, ExitStatus, Forked};

/// After a failed fork or a spare that died on its own, wait this long before
/// forking spares again (no fork storm when processes run out).
const RETRY: Duration = Duration::from_secs(1);

/// A waiting one-shot worker: its pid and the master's end of its socketpair.
struct Spare {
    pid: i32,
    sock: UnixStream,
}

/// The spares of every service, and when to fork more after a failure.
#[derive(Default)]
pub(crate) struct Spares {
    pools: Vec<Vec<Spare>>,
    retry_at: Option<Instant>,
    closed: bool,
    /// A spare was taken (or died): fork its replacement when the master is idle.
    missing: bool,
}

impl Spares {
    /// The master's ends of every socketpair: a child of the master closes them.
    pub fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.pools.iter().flatten().map(|sp| sp.sock.as_raw_fd())
    }

    /// When the spares are to be topped up again after a failure.
    pub fn due(&self) -> Option<Instant> {
        self.retry_at
    }

    /// True when a replacement is to be forked as soon as the master is idle.
    pub fn refill_wanted(&self) -> bool {
        self.missing && !self.closed && self.retry_at.is_none()
    }

    /// Stops for good (shutdown): every spare reads end of file and exits 0.
    pub fn close_all(&mut self) {
        self.pools.clear();
        self.closed = true;
    }

    fn pool(&mut self, s: usize) -> &mut Vec<Spare> {
        if self.pools.len() <= s {
            self.pools.resize_with(s + 1, Vec::new);
        }
        &mut self.pools[s]
    }
}

/// Refuses `--spare` where it means nothing: fork-ahead is for stream services
/// under the fork model whose workers run the handler (not a spawned program).
pub(crate) fn check(services: &[Service]) -> Result<(), Error> {
    for svc in services.iter().filter(|s| s.spare > 0) {
        let why = if svc.model != Model::Fork {
            Some(format!("the {} model", svc.model))
        } else if !matches!(svc.handler, Handler::Stream(_)) {
            Some("a datagram service".to_string())
        } else if svc.spawner.is_some() {
            Some("a service that spawns a program per connection".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::new(
                Error::USAGE,
                format!(
                    "{}: --spare needs the fork model and a stream service; not {why}",
                    svc.name
                ),
            ));
        }
    }
    Ok(())
}

impl Master {
    /// Forks spares until every fork-ahead service has its `--spare` waiting
    /// (unless stopping, or a failure asked to wait).
    pub(super) fn fill_spares(&mut self) {
        while self.fork_one_spare() {}
    }

    /// Forks one missing spare; false when none is missing (or forking must wait).
    /// The master calls it when a poll finds nothing to accept, so a replacement
    /// never stands between a waiting connection and its process: under a load
    /// that leaves the master no idle moment the spares run out and it forks on
    /// accept, as the fork model does.
    pub(super) fn fork_one_spare(&mut self) -> bool {
        if self.spares.closed || self.spares.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        self.spares.retry_at = None;
        let Some(s) =
            (0..self.svcs.len()).find(|&s| self.spares.pool(s).len() < self.svcs[s].conf.spare)
        else {
            self.spares.missing = false;
            return false;
        };
        if let Err(e) = self.fork_spare(s) {
            log::error!(
                "{}: forking a spare worker: {e}; trying again in {}s",
                self.svcs[s].conf.name,
                RETRY.as_secs()
            );
            self.spares.retry_at = Some(Instant::now() + RETRY);
            return false;
        }
        true
    }

    fn fork_spare(&mut self, s: usize) -> std::io::Result<()> {
        let (mine, theirs) = UnixStream::pair()?;
        match sys::fork()? {
            Forked::Child => run_spare(self, s, mine, theirs),
            Forked::Parent(pid) => {
                drop(theirs);
                self.children.insert(pid, Role::Spare { service: s });
                self.spares.pool(s).push(Spare { pid, sock: mine });
                Ok(())
            }
        }
    }

    /// Hands an accepted connection to a spare of its service (its replacement
    /// is forked when the master is next idle); gives the connection back when no
    /// spare could take it.
    pub(super) fn hand_to_spare(&mut self, w: Waiting) -> Result<(), Waiting> {
        let s = w.service;
        while let Some(sp) = self.spares.pool(s).pop() {
            match sys::send_fd(sp.sock.as_fd(), w.fd.as_fd(), w.listener as u8) {
                Ok(()) => {
                    drop(w.fd);
                    // The spare is a worker now: counted, and its exit reaped as one.
                    self.started(s, sp.pid, w.peer, None);
                    self.spares.missing = true;
                    return Ok(());
                }
                // It died meanwhile (its exit is on its way to the reaper).
                Err(e) => log::debug!(
                    "{}: spare {} cannot take a connection: {e}",
                    self.svcs[s].conf.name,
                    sp.pid
                ),
            }
        }
        self.spares.missing = true;
        Err(w)
    }

    /// A spare exited before it was given a connection: forget it; fork another
    /// (after a pause when it did not exit cleanly).
    pub(super) fn spare_exited(&mut self, s: usize, pid: i32, status: ExitStatus) {
        self.spares.pool(s).retain(|sp| sp.pid != pid);
        if self.spares.closed {
            return;
        }
        if !status.success() {
            log::warn!(
                "{}: spare worker {pid} {status} before it got a connection",
                self.svcs[s].conf.name
            );
            self.spares.retry_at = Some(Instant::now() + RETRY);
        }
        self.spares.missing = true;
    }
}

/// The spare's side: wait for one connection, serve it, exit. End of file on the
/// socketpair (the master stops, or died) ends it with status 0.
fn run_spare(master: &mut Master, s: usize, mine: UnixStream, theirs: UnixStream) -> ! {
    drop(mine);
    master.signals.reset_in_child();
    // Only the master holds the other end (every child it forks closes it): when
    // the master dies, recv_fd reads end of file. No PR_SET_PDEATHSIG needed.
    master.close_inherited(Some(s), None);
    let name = &master.svcs[s].conf.name;
    proctitle::set_fmt(
        format_args!("forkserve: {name} spare"),
        format_args!("{name} spare"),
    );
    let (fd, l): (OwnedFd, u8) = loop {
        match sys::recv_fd(theirs.as_fd()) {
            Ok(Some(got)) => break got,
            Ok(None) => sys::exit_now(0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("{name} spare: receiving a connection: {e}");
                sys::exit_now(71)
            }
        }
    };
    drop(theirs);
    fork::serve_handed_connection(master, s, usize::from(l), fd)
}
