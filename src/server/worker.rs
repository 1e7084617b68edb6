//! Running a handler on one connection or one datagram, the same way under every
//! model: setup/handle/finish, panics caught, errors sorted into "the client went
//! away" (normal) and "the handler failed" (logged, exit status 1 in a worker).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::handler::{Connection, Context, DatagramHandler, Reply, Stream, StreamHandler};
use crate::peer::Peer;
use crate::sys;

/// How serving one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::Failed => 1,
        }
    }
}

/// True for errors that mean the client left or went quiet, not a handler fault.
fn is_client_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
            | io::ErrorKind::ConnectionRefused
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn judge(ctx: &Context, peer: &Peer, what: &str, res: io::Result<()>) -> Outcome {
    match res {
        Ok(()) => Outcome::Ok,
        Err(e) if is_timeout(&e) => {
            log::info!("{}: {peer}: idle timeout, closing", ctx.service);
            Outcome::Ok
        }
        Err(e) if is_client_gone(&e) => {
            log::debug!("{}: {peer}: client went away ({e})", ctx.service);
            Outcome::Ok
        }
        Err(e) => {
            log::error!("{}: {peer}: {what} failed: {e}", ctx.service);
            Outcome::Failed
        }
    }
}

/// The error a panicking handler stands for (the panic hook has logged the
/// message and location).
fn panicked(ctx: &Context, peer: &Peer) -> io::Error {
    io::Error::other(format!(
        "handler panicked (peer {peer}, service {})",
        ctx.service
    ))
}

/// Serves one accepted connection with `handler`, then half-closes it.
pub fn serve_connection(
    handler: &dyn StreamHandler,
    fd: OwnedFd,
    peer: Peer,
    ctx: Context,
) -> Outcome {
    if let Some(t) = ctx.idle_timeout {
        let _ = sys::set_io_timeout(fd.as_fd(), t);
    }
    // The peer says the family: no getsockopt(SO_DOMAIN) on the worker's path.
    let stream = match peer {
        Peer::Ip(_) => Stream::Tcp(std::net::TcpStream::from(fd)),
        Peer::Unix { .. } => Stream::Unix(std::os::unix::net::UnixStream::from(fd)),
    };
    let _scope = crate::logging::context(&ctx.service, Some(peer.to_string()));
    log::debug!("{}: connection from {peer}", ctx.service);
    let mut conn = Connection::new(stream, peer, ctx);
    let res = catch_unwind(AssertUnwindSafe(|| {
        handler.setup(&mut conn)?;
        let handled = handler.handle(&mut conn);
        let finished = handler.finish(&mut conn);
        handled.and(finished)
    }));
    let res = res.unwrap_or_else(|_| Err(panicked(conn.context(), conn.peer())));
    let outcome = judge(conn.context(), conn.peer(), "handler", res);
    let _ = conn.shutdown_write();
    outcome
}

/// Serves one datagram with `handler`; replies go out on `socket` to `reply_to`.
pub fn serve_datagram(
    handler: &dyn DatagramHandler,
    socket: BorrowedFd<'_>,
    data: &[u8],
    reply_to: Option<sys::RawAddr>,
    peer: Peer,
    ctx: &Context,
) -> Outcome {
    let _scope = crate::logging::context(&ctx.service, Some(peer.to_string()));
    let reply = Reply::new(socket, reply_to, peer.clone(), ctx);
    log::debug!(
        "{}: datagram of {} bytes from {peer}",
        ctx.service,
        data.len()
    );
    let res = catch_unwind(AssertUnwindSafe(|| handler.handle(data, &reply)))
        .unwrap_or_else(|_| Err(panicked(ctx, &peer)));
    // A Unix-datagram sender whose socket file is gone has left: not a fault.
    let res = match res {
        Err(e) if e.kind() == io::ErrorKind::NotFound && reply.can_reply() => {
            log::debug!("{}: {peer}: reply address gone ({e})", ctx.service);
            Ok(())
        }
        other => other,
    };
    judge(ctx, &peer, "handler", res)
}

/// The peer of an accepted connection: the address accept returned, or SO_PEERCRED.
pub fn stream_peer(fd: BorrowedFd<'_>, addr: &sys::RawAddr) -> Peer {
    if let Some(a) = addr.to_inet() {
        return Peer::Ip(a);
    }
    match sys::peer_cred(fd) {
        Ok(c) => Peer::Unix {
            uid: Some(c.uid),
            gid: Some(c.gid),
            pid: Some(c.pid),
            addr: None,
        },
        Err(_) => Peer::Unix {
            uid: None,
            gid: None,
            pid: None,
            addr: None,
        },
    }
}

/// The sender of a datagram and the address to reply to (`None` for an unbound
/// Unix-datagram sender).
pub fn datagram_peer(addr: sys::RawAddr, cred: Option<sys::Ucred>) -> (Peer, Option<sys::RawAddr>) {
    if let Some(a) = addr.to_inet() {
        return (Peer::Ip(a), Some(addr));
    }
    let (name, is_abstract) = addr.to_unix().unwrap_or_default();
    let shown = if name.is_empty() {
        None
    } else if is_abstract {
        Some(format!("@{}", String::from_utf8_lossy(&name)))
    } else {
        Some(String::from_utf8_lossy(&name).into_owned())
    };
    let peer = Peer::Unix {
        uid: cred.map(|c| c.uid),
        gid: cred.map(|c| c.gid),
        pid: cred.map(|c| c.pid),
        addr: shown.clone(),
    };
    (peer, shown.map(|_| addr))
}
