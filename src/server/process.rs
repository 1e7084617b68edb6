//! A long-lived server process, forked by the master for the models that do not
//! fork per connection: `sequential` (one connection or datagram at a time),
//! `thread` (a thread each; this process never forks) and `prefork` (one of N
//! processes that each accept and serve one connection at a time, recycled after
//! `--max-requests`; those beyond `--workers`, started under load, leave when
//! idle: see `pool.rs`). On SIGTERM it stops accepting and finishes what it has; a
//! second SIGTERM ends it at once.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::children::{PerSource, SourceCounts, log_refusal};
use super::fairq::{FairQueue, Queued};
use super::signals::Signals;
use super::{Handler, Service, worker};
use crate::handler::{Context, Model};
use crate::listener::AcceptErrors;
use crate::listener::Listener;
use crate::logging::RateLimitedLog;
use crate::peer::Peer;
use crate::proctitle;
use crate::sys;

/// Live threads of a thread-model process, and who they serve.
struct ThreadState {
    active: AtomicUsize,
    sources: Mutex<SourceCounts>,
    /// Written by each finishing thread, so the accept loop wakes.
    done_tx: UnixStream,
}

struct Proc<'a> {
    conf: &'a Service,
    listeners: &'a [Listener],
    contexts: &'a [Context],
    signals: Signals,
    slot: usize,
    served: u64,
    accept_errors: AcceptErrors,
    refusals: RateLimitedLog,
    spawn_failures: RateLimitedLog,
    threads: Option<Arc<ThreadState>>,
    done_rx: Option<UnixStream>,
    /// Shared copies of the datagram sockets for threads to reply on.
    shared_socks: Vec<Arc<OwnedFd>>,
    buf: Vec<u8>,
    /// The listeners' addresses for the title, formatted once.
    addrs: String,
    /// Sequential datagram services with a per-source limit (the file service):
    /// what was read and waits, per source, round robin.
    fair: Option<FairQueue>,
}

/// Runs the server process; returns its exit status.
pub(crate) fn serve(
    conf: &Service,
    listeners: &[Listener],
    contexts: &[Context],
    signals: Signals,
    slot: usize,
) -> i32 {
    let mut p = Proc {
        conf,
        listeners,
        contexts,
        signals,
        slot,
        served: 0,
        accept_errors: AcceptErrors::default(),
        refusals: RateLimitedLog::default(),
        spawn_failures: RateLimitedLog::default(),
        threads: None,
        done_rx: None,
        shared_socks: Vec::new(),
        buf: vec![0u8; 65536],
        addrs: crate::listener::addrs_text(listeners),
        fair: fair_queue(conf),
    };
    if conf.model == Model::Thread {
        let (rx, tx) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                log::error!("{}: socketpair: {e}", conf.name);
                return 71;
            }
        };
        let _ = rx.set_nonblocking(true);
        let _ = tx.set_nonblocking(true);
        p.threads = Some(Arc::new(ThreadState {
            active: AtomicUsize::new(0),
            sources: Mutex::new(SourceCounts::default()),
            done_tx: tx,
        }));
        p.done_rx = Some(rx);
        for l in listeners {
            match l.as_fd().try_clone_to_owned() {
                Ok(fd) => p.shared_socks.push(Arc::new(fd)),
                Err(e) => {
                    log::error!("{}: dup: {e}", conf.name);
                    return 71;
                }
            }
        }
    }
    if let Some(h) = p.datagram_handler()
        && let Err(e) = h.start()
    {
        log::error!("{}: cannot start: {e}", conf.name);
        return 71;
    }
    p.set_title(None);
    p.run()
}

/// How many datagrams one wake-up of a sequential or prefork process takes from
/// one socket before it looks at signals and the other sockets again.
const DATAGRAM_BATCH: usize = 64;

impl Proc<'_> {
    fn stopping(&self) -> bool {
        self.signals.peek(libc::SIGTERM)
            || self.signals.peek(libc::SIGINT)
            || self.signals.peek(libc::SIGQUIT)
    }

    fn datagram_handler(&self) -> Option<&dyn crate::handler::DatagramHandler> {
        match &self.conf.handler {
            Handler::Datagram(h) => Some(h.as_ref()),
            Handler::Stream(_) => None,
        }
    }

    fn active(&self) -> usize {
        self.threads
            .as_ref()
            .map_or(0, |t| t.active.load(Ordering::SeqCst))
    }

    /// Sets the title (the addresses were formatted once, at start) and the short
    /// name: `echo worker` under prefork, `echo server` otherwise.
    fn set_title(&self, busy: Option<&Peer>) {
        let name = &self.conf.name;
        let (slot, served, addrs) = (self.slot + 1, self.served, &self.addrs);
        let ident = proctitle::name();
        match (self.conf.model, busy) {
            (Model::Prefork, Some(peer)) => proctitle::set_fmt(
                format_args!("{ident}: {name} worker #{slot} busy {peer} [{served} served]"),
                format_args!("{name} worker"),
            ),
            (Model::Prefork, None) => proctitle::set_fmt(
                format_args!("{ident}: {name} worker #{slot} idle [{served} served]"),
                format_args!("{name} worker"),
            ),
            (Model::Thread, _) => proctitle::set_fmt(
                format_args!(
                    "{ident}: {name} server (thread) {addrs} [{}/{}]",
                    self.active(),
                    self.conf.max_children
                ),
                format_args!("{name} server"),
            ),
            (model, _) => proctitle::set_fmt(
                format_args!("{ident}: {name} server ({model}) {addrs} [{served} served]"),
                format_args!("{name} server"),
            ),
        }
    }

    fn run(&mut self) -> i32 {
        let mut fds = Vec::new();
        loop {
            if self.stopping() {
                return self.drain();
            }
            if let Some(max) = self.conf.max_requests
                && self.conf.model == Model::Prefork
                && self.served >= max
            {
                log::info!(
                    "{} worker #{}: served {} (max-requests); exiting to be replaced",
                    self.conf.name,
                    self.slot + 1,
                    self.served
                );
                return 0;
            }
            fds.clear();
            fds.push(sys::pollfd(self.signals.fd(), sys::POLLIN));
            if let Some(rx) = &self.done_rx {
                fds.push(sys::pollfd(rx.as_raw_fd(), sys::POLLIN));
            }
            let base = fds.len();
            if self.active() < self.conf.max_children {
                for l in self.listeners {
                    fds.push(sys::pollfd(l.as_raw_fd(), sys::POLLIN));
                }
            }
            let waiting = self.fair.as_ref().is_some_and(|f| !f.is_empty());
            let tick = self.datagram_handler().and_then(|h| h.tick_interval());
            // A worker the pool grew by leaves once the load that called it is gone.
            let retire = super::pool::is_extra(self.conf, self.slot) && tick.is_none();
            let timeout = if waiting {
                Some(Duration::ZERO)
            } else if retire {
                Some(super::pool::RETIRE_IDLE)
            } else {
                tick
            };
            match sys::poll(&mut fds, timeout) {
                Ok(0) if retire && !waiting => {
                    log::info!(
                        "{} worker #{}: idle for {}s beyond --workers; exiting",
                        self.conf.name,
                        self.slot + 1,
                        super::pool::RETIRE_IDLE.as_secs()
                    );
                    return 0;
                }
                Ok(_) => {}
                Err(e) => {
                    log::error!("{}: poll: {e}", self.conf.name);
                    return 71;
                }
            }
            if fds[0].revents != 0 {
                self.signals.drain();
            }
            if base == 2 && fds[1].revents != 0 {
                self.drain_done_pipe();
                self.set_title(None);
            }
            let ready: Vec<usize> = (base..fds.len())
                .filter(|&k| fds[k].revents != 0)
                .map(|k| k - base)
                .collect();
            for l in ready {
                if !self.stopping() {
                    self.serve_one(l);
                }
            }
            if !self.stopping() {
                self.serve_queued();
            }
            if let Some(h) = self.datagram_handler() {
                h.tick();
            }
        }
    }

    /// Sleeps up to `t`, waking early for a signal (a stop request).
    fn wait_for_signal(&self, t: Duration) {
        let mut fds = [sys::pollfd(self.signals.fd(), sys::POLLIN)];
        let _ = sys::poll(&mut fds, Some(t));
    }

    /// Reads every datagram waiting on listener `l` into the fair queue (sequential
    /// model); those over their source's share are dropped.
    fn enqueue_datagrams(&mut self, l: usize) {
        let mut dropped = 0;
        let mut last = None;
        for _ in 0..super::fairq::MAX_QUEUED {
            let (n, addr, cred) = match sys::recv_from(self.listeners[l].as_fd(), &mut self.buf) {
                Ok(x) => x,
                Err(_) => break,
            };
            let (peer, reply_to) = worker::datagram_peer(addr, cred);
            let item = Queued {
                listener: l,
                data: self.buf[..n].to_vec(),
                reply_to,
                peer,
            };
            let Some(fair) = self.fair.as_mut() else {
                return;
            };
            if let Err(item) = fair.push(item) {
                dropped += 1;
                last = Some(item.peer);
            }
        }
        if let (Some(peer), Some(fair)) = (last, &self.fair) {
            // One line per batch read, not one per datagram of a flood.
            log::info!(
                "{}: dropped {dropped} datagram(s), the last from {peer}: over the {} a source may have waiting",
                self.conf.name,
                fair.per_source()
            );
        }
    }

    /// Serves the next queued datagram, if any (one per turn of the loop, so new
    /// arrivals are queued between two).
    fn serve_queued(&mut self) {
        let Some(item) = self.fair.as_mut().and_then(FairQueue::pop) else {
            return;
        };
        let Handler::Datagram(h) = &self.conf.handler else {
            return;
        };
        self.served += 1;
        worker::serve_datagram(
            h.as_ref(),
            self.listeners[item.listener].as_fd(),
            &item.data,
            item.reply_to,
            item.peer,
            &self.contexts[item.listener],
        );
    }

    fn drain_done_pipe(&self) {
        if let Some(rx) = &self.done_rx {
            let mut buf = [0u8; 256];
            while let Ok(n) = std::io::Read::read(&mut &*rx, &mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    }

    /// Waits for running threads to finish, then exits 0.
    fn drain(&mut self) -> i32 {
        let n = self.active();
        if n > 0 {
            log::info!(
                "{}: stopping; waiting for {n} connection(s)",
                self.conf.name
            );
        }
        while self.active() > 0 {
            let mut fds = vec![sys::pollfd(self.signals.fd(), sys::POLLIN)];
            if let Some(rx) = &self.done_rx {
                fds.push(sys::pollfd(rx.as_raw_fd(), sys::POLLIN));
            }
            let _ = sys::poll(&mut fds, Some(Duration::from_millis(500)));
            self.signals.drain();
            self.drain_done_pipe();
        }
        if let Some(h) = self.datagram_handler() {
            h.stop();
        }
        0
    }

    fn serve_one(&mut self, l: usize) {
        match &self.conf.handler {
            Handler::Stream(h) => {
                let h = Arc::clone(h);
                let (fd, addr) = match sys::accept(self.listeners[l].as_fd()) {
                    Ok(x) => x,
                    Err(e) => {
                        if e.raw_os_error() == Some(libc::EINVAL) {
                            // The master shut the listener down: a drain has begun
                            // and SIGTERM is on its way. Wait for it, not spin.
                            self.wait_for_signal(Duration::from_secs(1));
                        } else if let Some(pause) = self.accept_errors.on_error(
                            &self.conf.name,
                            self.listeners[l].addr(),
                            &e,
                        ) {
                            self.wait_for_signal(pause);
                        }
                        return;
                    }
                };
                self.accept_errors.on_success();
                let peer = worker::stream_peer(fd.as_fd(), &addr);
                let mut ctx = self.contexts[l].clone();
                if self.threads.is_none() {
                    // One connection at a time here: a readable listener means
                    // clients wait for this process or its siblings.
                    ctx.listener = Some(self.listeners[l].as_raw_fd());
                }
                self.served += 1;
                match &self.threads {
                    None => {
                        if self.conf.model == Model::Prefork {
                            self.set_title(Some(&peer));
                        }
                        let load = ctx.load;
                        load.inspect(|l| l.set_busy(self.slot, true));
                        worker::serve_connection(h.as_ref(), fd, peer, ctx);
                        load.inspect(|l| l.set_busy(self.slot, false));
                        self.set_title(None);
                    }
                    Some(ts) => {
                        let ts = Arc::clone(ts);
                        let key = peer.source_key();
                        if !self.admit(&ts, &peer) {
                            return;
                        }
                        self.spawn(ts, key, move || {
                            worker::serve_connection(h.as_ref(), fd, peer, ctx);
                        });
                    }
                }
            }
            Handler::Datagram(_) if self.fair.is_some() => self.enqueue_datagrams(l),
            Handler::Datagram(_) if self.threads.is_none() => {
                for _ in 0..DATAGRAM_BATCH {
                    if !self.serve_datagram(l) {
                        return;
                    }
                }
            }
            Handler::Datagram(_) => {
                self.serve_datagram(l);
            }
        }
    }

    /// Counts `peer` in its source unless the per-source limit refuses it (logged,
    /// at most once a second).
    fn admit(&mut self, ts: &ThreadState, peer: &Peer) -> bool {
        let key = peer.source_key();
        let (policy, max) = (self.conf.per_source, self.conf.max_children);
        let active = ts.active.load(Ordering::SeqCst);
        let mut sources = ts.sources.lock().unwrap_or_else(|p| p.into_inner());
        if sources.try_add(key, policy, active, max) {
            return true;
        }
        let held = sources.get(key);
        log_refusal(&mut self.refusals, &self.conf.name, peer, held, policy, max);
        false
    }

    /// Receives one datagram from listener `l` and serves it (or hands it to a
    /// thread); false when there was none to receive (or receiving failed: a
    /// resource error pauses, as accept errors do).
    fn serve_datagram(&mut self, l: usize) -> bool {
        let Handler::Datagram(h) = &self.conf.handler else {
            return false;
        };
        let h = Arc::clone(h);
        let (n, addr, cred) = match sys::recv_from(self.listeners[l].as_fd(), &mut self.buf) {
            Ok(x) => x,
            Err(e) => {
                if let Some(pause) =
                    self.accept_errors
                        .on_error(&self.conf.name, self.listeners[l].addr(), &e)
                {
                    self.wait_for_signal(pause);
                }
                return false;
            }
        };
        let (peer, reply_to) = worker::datagram_peer(addr, cred);
        self.served += 1;
        let Some(ts) = &self.threads else {
            if self.conf.model == Model::Prefork {
                self.set_title(Some(&peer));
            }
            let sock = self.listeners[l].as_fd();
            let data = &self.buf[..n];
            worker::serve_datagram(h.as_ref(), sock, data, reply_to, peer, &self.contexts[l]);
            if self.conf.model == Model::Prefork {
                self.set_title(None);
            }
            return true;
        };
        let ts = Arc::clone(ts);
        let key = peer.source_key();
        if !self.admit(&ts, &peer) {
            return true;
        }
        let data = self.buf[..n].to_vec();
        let sock = Arc::clone(&self.shared_socks[l]);
        let ctx = self.contexts[l].clone();
        self.spawn(ts, key, move || {
            worker::serve_datagram(h.as_ref(), sock.as_fd(), &data, reply_to, peer, &ctx);
        });
        true
    }

    fn spawn(
        &mut self,
        ts: Arc<ThreadState>,
        key: crate::peer::SourceKey,
        f: impl FnOnce() + Send + 'static,
    ) {
        ts.active.fetch_add(1, Ordering::SeqCst);
        let limit = self.conf.per_source;
        let ts2 = Arc::clone(&ts);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{}", self.conf.name, self.served))
            .spawn(move || {
                f();
                ts2.sources.lock().unwrap().remove(key, limit);
                ts2.active.fetch_sub(1, Ordering::SeqCst);
                // Wake the accept loop: a slot is free again.
                let _ = std::io::Write::write(&mut &ts2.done_tx, b"d");
            });
        if let Err(e) = spawned {
            let name = &self.conf.name;
            self.spawn_failures.log(|n| {
                log::error!(
                    "{name}: spawning a thread: {e}; not served{}",
                    RateLimitedLog::more(n)
                )
            });
            ts.sources.lock().unwrap().remove(key, limit);
            ts.active.fetch_sub(1, Ordering::SeqCst);
        }
        self.set_title(None);
    }
}

/// The fair queue of a sequential datagram service with a per-source limit
/// (`--max-per-source N`, or a service's own default such as the file
/// service's): each source's requests wait behind its own, served round robin.
/// Services without one (a high-rate collector) read and serve straight away.
fn fair_queue(conf: &Service) -> Option<FairQueue> {
    let sequential_datagrams =
        conf.model == Model::Sequential && matches!(conf.handler, Handler::Datagram(_));
    match conf.per_source {
        PerSource::Max(n) if sequential_datagrams => Some(FairQueue::new(Some(n))),
        _ => None,
    }
}
