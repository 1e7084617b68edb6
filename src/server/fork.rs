//! What a freshly forked child does before it serves: close the master's
//! descriptors, reset signals, take its title and its UCSPI environment; then serve
//! and `_exit`. A child never returns into master code. Also the inetd path, where
//! the one connection was handed to this process.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::master::Master;
use super::{Error, Handler, Server, process, worker};
use crate::handler::Context;
use crate::peer::Peer;
use crate::proctitle;
use crate::sandbox::{self, Role};
use crate::sys;
use crate::systemd::PassedFd;

fn worker_title(ctx: &Context, peer: &Peer) {
    prepared_title(&ctx.service, peer).apply();
}

/// A worker's title, formatted ahead (in the master, before the fork).
pub(crate) fn prepared_title(service: &str, peer: &Peer) -> proctitle::Prepared {
    proctitle::Prepared::new(
        format_args!("{}: {service} worker {peer}", proctitle::name()),
        format_args!("{service} worker"),
    )
}

/// Closes, in a worker, the listeners of service `s` other than `l`.
fn close_other_listeners(master: &Master, s: usize, l: usize) {
    for (j, other) in master.svcs[s].listeners.iter().enumerate() {
        if j != l {
            sys::close_fd(std::os::fd::AsRawFd::as_raw_fd(other));
        }
    }
}

/// Child side of a fork-model connection.
pub(crate) fn run_stream_worker(
    master: &mut Master,
    s: usize,
    l: usize,
    fd: OwnedFd,
    peer: Peer,
    title: &proctitle::Prepared,
) -> ! {
    master.signals.reset_in_child();
    // Keep the listener the connection came from: readable, it tells the handler
    // that clients wait (the master is at --max-children).
    master.close_inherited(Some(s), None);
    close_other_listeners(master, s, l);
    title.apply();
    serve_and_exit(master, s, l, fd, peer)
}

/// A spare's connection, handed over by the master (see `spare.rs`): the
/// process is ready, only the peer is to be learnt.
pub(crate) fn serve_handed_connection(master: &mut Master, s: usize, l: usize, fd: OwnedFd) -> ! {
    let peer = match sys::peer_addr(fd.as_fd()) {
        Ok(addr) => worker::stream_peer(fd.as_fd(), &addr),
        // The client has already gone: nothing to serve.
        Err(_) => sys::exit_now(0),
    };
    let l = l.min(master.svcs[s].listeners.len().saturating_sub(1));
    prepared_title(&master.svcs[s].conf.name, &peer).apply();
    serve_and_exit(master, s, l, fd, peer)
}

/// Serves connection `fd` of listener `l` of service `s` in this worker (its
/// title set), then exits.
fn serve_and_exit(master: &mut Master, s: usize, l: usize, fd: OwnedFd, peer: Peer) -> ! {
    // This child's own copy of the master: take the context instead of cloning it.
    let mut ctx = std::mem::take(&mut master.svcs[s].contexts[l]);
    let svc = &master.svcs[s];
    ctx.listener = Some(std::os::fd::AsRawFd::as_raw_fd(&svc.listeners[l]));
    let Handler::Stream(handler) = &svc.conf.handler else {
        sys::exit_now(1)
    };
    sandbox::enter_or_exit(svc.conf.sandbox.as_ref(), Role::Worker, &ctx.service);
    let outcome = worker::serve_connection(handler.as_ref(), fd, peer, ctx);
    sys::exit_now(outcome.exit_code())
}

/// Child side of a fork-model datagram: handle it, reply on the shared socket.
pub(crate) fn run_datagram_worker(
    master: &mut Master,
    s: usize,
    l: usize,
    len: usize,
    reply_to: Option<sys::RawAddr>,
    peer: Peer,
) -> ! {
    master.signals.reset_in_child();
    // Keep this service's sockets: the reply goes out on the one that received.
    master.close_inherited(Some(s), None);
    close_other_listeners(master, s, l);
    let svc = &master.svcs[s];
    let keep = svc.listeners[l].as_fd();
    let ctx = &svc.contexts[l];
    let Handler::Datagram(handler) = &svc.conf.handler else {
        sys::exit_now(1)
    };
    worker_title(ctx, &peer);
    sandbox::enter_or_exit(svc.conf.sandbox.as_ref(), Role::Worker, &ctx.service);
    let data = &master.dgram_buf[..len.min(master.dgram_buf.len())];
    let outcome = worker::serve_datagram(handler.as_ref(), keep, data, reply_to, peer, ctx);
    sys::exit_now(outcome.exit_code())
}

/// Child side of a long-lived server process (thread, sequential, prefork).
pub(crate) fn run_server_process(master: &mut Master, s: usize, slot: usize) -> ! {
    let signals = match master.signals.renew_in_child() {
        Ok(sig) => sig,
        Err(e) => {
            log::error!("server process: signals: {e}");
            sys::exit_now(71)
        }
    };
    master.close_inherited(Some(s), None);
    sys::die_with_parent(libc::SIGTERM);
    let svc = &master.svcs[s];
    sandbox::enter_or_exit(
        svc.conf.sandbox.as_ref(),
        Role::server(svc.conf.model),
        &svc.conf.name,
    );
    let code = process::serve(&svc.conf, &svc.listeners, &svc.contexts, signals, slot);
    sys::exit_now(code)
}

/// Child side of a companion process (the chat broker).
pub(crate) fn run_companion(
    master: &mut Master,
    s: usize,
    c: usize,
    run: Arc<dyn Fn() -> i32 + Send + Sync>,
) -> ! {
    master.signals.reset_in_child();
    master.close_inherited(None, Some((s, c)));
    sys::die_with_parent(libc::SIGTERM);
    let name = master.svcs[s].conf.companions[c].name.clone();
    proctitle::set(&format!("{}: {name}", proctitle::name()), &name);
    let policy = master.svcs[s].conf.companions[c].sandbox.as_ref();
    sandbox::enter_or_exit(policy, Role::Server, &name);
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run())).unwrap_or(1);
    sys::exit_now(code)
}

/// Serves the one connection this process was handed: on fd 3 by systemd
/// (Accept=yes), or on stdin/stdout (`--inetd`), in-process, then returns.
pub(crate) fn serve_inetd(server: &Server, passed: Option<PassedFd>) -> Result<(), Error> {
    let svc = match server.services.as_slice() {
        [one] => one,
        many => {
            let name = passed.as_ref().map(|p| p.name.as_str()).unwrap_or("");
            many.iter().find(|s| s.name == name).ok_or_else(|| {
                Error::new(
                    Error::USAGE,
                    "a single connection was passed (inetd / Accept=yes): name one service to serve it",
                )
            })?
        }
    };
    let Handler::Stream(handler) = &svc.handler else {
        return Err(Error::new(
            Error::USAGE,
            format!("{}: inetd mode serves stream services only", svc.name),
        ));
    };
    let fd = match passed {
        Some(p) => p.fd,
        None => {
            let fd = sys::adopt_fd(0)
                .ok_or_else(|| Error::new(Error::USAGE, "--inetd: stdin is not open"))?;
            sys::socket_kind(fd.as_fd())
                .map_err(|_| Error::new(Error::USAGE, "--inetd: stdin is not a socket"))?;
            // stdout is the same socket; the handler writes through fd 0's copy.
            fd
        }
    };
    let addr = sys::peer_addr(fd.as_fd())
        .map_err(|e| Error::new(Error::OSERR, format!("getpeername: {e}")))?;
    let peer = worker::stream_peer(fd.as_fd(), &addr);
    let local = sys::local_addr(fd.as_fd()).ok();
    let local_text = local
        .as_ref()
        .and_then(|a| a.to_inet())
        .map(|a| format!("tcp:{a}"))
        .unwrap_or_else(|| "unix".to_string());
    let ctx = Context {
        service: svc.name.clone(),
        model: svc.model,
        idle_timeout: svc.idle_timeout,
        local: local_text,
        reloads: 0,
        listener: None,
        load: None,
    };
    worker_title(&ctx, &peer);
    log::info!("{}: serving one connection from {peer} (inetd)", svc.name);
    sandbox::enter_or_exit(svc.sandbox.as_ref(), Role::Worker, &svc.name);
    match worker::serve_connection(handler.as_ref(), fd, peer, ctx) {
        worker::Outcome::Ok => Ok(()),
        worker::Outcome::Failed => Err(Error::new(1, format!("{}: handler failed", svc.name))),
    }
}
