//! Origin connections kept between client connections. A worker lives for one
//! client connection, so on its own it would open (and the origin accept) a fresh
//! connection for every client that does not use keep-alive. The pool is a
//! companion process holding idle origin connections: a worker that finishes with
//! a reusable one hands its descriptor over (SCM_RIGHTS), and a worker that needs
//! one for the same `host:port` asks for it first.
//!
//! One exchange per Unix-socket connection: `T host:port\n` (take) is answered
//! `1` with a descriptor or `0`; `P host:port\n` (put) carries the descriptor.
//! Idle connections are dropped after [`IDLE`] (origins close theirs after a few
//! seconds) or when the origin has closed them or sent something unasked. The
//! socket is mode 0600 and only peers of the server's own uid are answered: a
//! connection handed in by someone else could carry a request of theirs.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::sys;

/// How long an idle origin connection is kept.
pub const IDLE: Duration = Duration::from_secs(4);
/// Most idle connections kept in all.
const MAX_IDLE: usize = 256;
/// How long a worker waits for the pool before doing without it.
const ASK_TIMEOUT: Duration = Duration::from_millis(200);

/// The workers' side: where the pool listens.
#[derive(Debug, Clone)]
pub struct Pool {
    pub path: PathBuf,
}

impl Pool {
    fn ask(&self, line: &str, fd: Option<&OwnedFd>) -> io::Result<UnixStream> {
        let s = UnixStream::connect(&self.path)?;
        s.set_read_timeout(Some(ASK_TIMEOUT))?;
        s.set_write_timeout(Some(ASK_TIMEOUT))?;
        let raw = fd.map(|f| [f.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage<'_>> =
            raw.iter().map(|r| ControlMessage::ScmRights(r)).collect();
        sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(line.as_bytes())],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )?;
        Ok(s)
    }

    /// An idle connection to `authority`, if the pool has one.
    pub fn take(&self, authority: &str) -> Option<TcpStream> {
        let s = self.ask(&format!("T {authority}\n"), None).ok()?;
        let (answer, fd) = receive(&s).ok()?;
        (answer.first() == Some(&b'1')).then_some(())?;
        fd.map(TcpStream::from)
    }

    /// Hands a reusable connection to `authority` over to the pool.
    pub fn put(&self, authority: &str, conn: TcpStream) {
        let fd = OwnedFd::from(conn);
        if let Err(e) = self.ask(&format!("P {authority}\n"), Some(&fd)) {
            log::debug!("proxy: pool {}: {e}", self.path.display());
        }
    }
}

/// Reads one message (a request line or a one-byte answer, sent whole by one
/// sendmsg) and a descriptor passed with it.
fn receive(s: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = [0u8; 300];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // A descriptor received over SCM_RIGHTS is this process's own.
                let owned = sys::adopt_fd(raw);
                if fd.is_none() {
                    fd = owned;
                }
            }
        }
    }
    Ok((buf[..n].to_vec(), fd))
}

/// `T host:port` or `P host:port`: the verb and the authority.
fn request_line(msg: &[u8]) -> Option<(u8, String)> {
    let text = std::str::from_utf8(msg).ok()?;
    let (verb, authority) = text.trim_end().split_once(' ')?;
    Some((verb.bytes().next()?, authority.to_string()))
}

/// Binds the pool's socket in the runtime directory (a name with this
/// process's id; ones left by dead processes are removed).
pub fn bind(rt: &Path) -> io::Result<(PathBuf, UnixListener)> {
    for e in std::fs::read_dir(rt).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("proxy-pool.")
            .and_then(|n| n.strip_suffix(".sock"))
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let path = rt.join(format!("proxy-pool.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Only this server's own processes may hand connections in or take them.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((path, listener))
}

/// The companion's body: answers takes and puts until it is stopped.
pub fn run(listener: &UnixListener) -> i32 {
    crate::proctitle::set_fmt(
        format_args!("forkserve: proxy pool"),
        format_args!("proxy pool"),
    );
    let mut idle: HashMap<String, Vec<(TcpStream, Instant)>> = HashMap::new();
    loop {
        let mut fds = [sys::pollfd(listener.as_fd().as_raw_fd(), sys::POLLIN)];
        match sys::poll(&mut fds, Some(IDLE)) {
            Ok(0) => {}
            Ok(_) => {
                if let Ok((s, _)) = listener.accept() {
                    serve(&s, &mut idle);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("proxy pool: poll: {e}");
                return 1;
            }
        }
        let now = Instant::now();
        for list in idle.values_mut() {
            list.retain(|(_, since)| now.duration_since(*since) < IDLE);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

fn serve(s: &UnixStream, idle: &mut HashMap<String, Vec<(TcpStream, Instant)>>) {
    // The socket file is 0600; a peer of another uid still has no business here.
    if sys::peer_cred(s.as_fd()).map_or(true, |c| c.uid != sys::getuid()) {
        return;
    }
    let _ = s.set_read_timeout(Some(ASK_TIMEOUT));
    let _ = s.set_write_timeout(Some(ASK_TIMEOUT));
    let Ok((msg, fd)) = receive(s) else { return };
    let Some((verb, authority)) = request_line(&msg) else {
        return;
    };
    match (verb, fd) {
        (b'P', Some(fd)) if idle.values().map(Vec::len).sum::<usize>() < MAX_IDLE => {
            idle.entry(authority)
                .or_default()
                .push((TcpStream::from(fd), Instant::now()));
        }
        (b'T', _) => {
            let conn = idle.get_mut(&authority).and_then(|list| {
                while let Some((c, since)) = list.pop() {
                    if since.elapsed() < IDLE && still_idle(&c) {
                        return Some(c);
                    }
                }
                None
            });
            let _ = match conn {
                Some(c) => {
                    let raw = [c.as_raw_fd()];
                    sendmsg::<()>(
                        s.as_raw_fd(),
                        &[IoSlice::new(b"1")],
                        &[ControlMessage::ScmRights(&raw)],
                        MsgFlags::empty(),
                        None,
                    )
                    .map(drop)
                    .map_err(io::Error::from)
                }
                None => (&*s).write_all(b"0"),
            };
        }
        _ => {}
    }
}

/// True when the origin has neither closed the connection nor sent anything.
fn still_idle(c: &TcpStream) -> bool {
    let mut fds = [sys::pollfd(c.as_raw_fd(), sys::POLLIN)];
    matches!(sys::poll(&mut fds, Some(Duration::ZERO)), Ok(0))
}
