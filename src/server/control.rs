//! The control socket (`forkserve ctl`) and the `--metrics-listen` endpoint, served
//! by the master's own poll loop without ever blocking it: every socket is
//! non-blocking, a request is one short line (control) or one small HTTP request
//! (metrics) of bounded size, each connection gets one answer and is closed, a
//! client that stalls is dropped after [`CONN_DEADLINE`], and at most [`MAX_CONNS`]
//! are open at once. The answers are built from the master's tables in
//! microseconds, so a companion process (which would need the state sent to it)
//! buys nothing here.
//!
//! Who may talk: the socket file is mode 0600, and SO_PEERCRED must name root or
//! the server's own uid.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::addr::{ListenAddr, UnixPath};
use crate::listener::Listener;
use crate::logging::RateLimitedLog;
use crate::sys;

use super::lifecycle::Handover;

/// The handed-over names of the control and metrics listeners.
const CONTROL: &str = "(control)";
const METRICS: &str = "(metrics)";

/// A request larger than this is refused.
const MAX_REQUEST: usize = 4096;
/// Connections open at once; more wait in the backlog.
const MAX_CONNS: usize = 16;
/// A client has this long to send its request and read the answer.
const CONN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Control,
    Metrics,
}

enum Io {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Unix(s) => s.read(buf),
            Io::Tcp(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Unix(s) => s.write(buf),
            Io::Tcp(s) => s.write(buf),
        }
    }
    fn raw_fd(&self) -> RawFd {
        match self {
            Io::Unix(s) => s.as_raw_fd(),
            Io::Tcp(s) => s.as_raw_fd(),
        }
    }
}

struct Conn {
    io: Io,
    kind: Kind,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    written: usize,
    deadline: Instant,
    /// Answered or gone: dropped when the poll list is next built (so indexes
    /// stay valid while requests are answered).
    done: bool,
}

/// What a connection wants from the master: the text of a complete request.
pub(crate) struct Request {
    pub kind: Kind,
    pub text: String,
    conn: usize,
}

/// The control and metrics listeners and their open connections.
#[derive(Default)]
pub(crate) struct ControlServer {
    control: Option<Listener>,
    metrics: Option<Listener>,
    /// The addresses as configured (a port 0 stays 0), for a binary upgrade.
    configured: Vec<(&'static str, ListenAddr)>,
    conns: Vec<Conn>,
    errors: RateLimitedLog,
}

/// The default control socket: RUNDIR/control.sock.
pub(crate) fn default_path() -> Option<PathBuf> {
    crate::listener::runtime_dir()
        .ok()
        .map(|d| d.join("control.sock"))
}

impl ControlServer {
    /// Binds the control socket at `path` (mode 0600) and the metrics address.
    /// `path_given`: the path was asked for, so failing to bind it is an error;
    /// otherwise (the default path, perhaps held by another forkserve) a warning.
    /// `handover`: the listeners a previous image of this master left.
    pub fn bind(
        path: Option<&Path>,
        path_given: bool,
        metrics: Option<&ListenAddr>,
        mut handover: Option<&mut Handover>,
    ) -> Result<ControlServer, String> {
        let mut me = ControlServer::default();
        let mut bind = |role: &'static str, addr: &ListenAddr, mode: u32| {
            me.configured.push((role, addr.clone()));
            match handover
                .as_deref_mut()
                .and_then(|h| h.take_listener(role, addr))
            {
                Some(l) => Ok(l),
                None => Listener::bind(addr, mode),
            }
        };
        // The default path may belong to another forkserve of the same user.
        let path = path.filter(|p| {
            let taken = !path_given && UnixStream::connect(p).is_ok();
            if taken {
                log::warn!(
                    "no control socket: another server answers on {}; give --control PATH",
                    p.display()
                );
            }
            !taken
        });
        let control = path.map(|p| {
            bind(
                CONTROL,
                &ListenAddr::Unix(UnixPath::File(p.to_path_buf())),
                0o600,
            )
        });
        let metrics_l = metrics.map(|a| bind(METRICS, a, 0o600));
        if let Some(p) = path {
            match control.expect("bound above") {
                Ok(l) => {
                    log::info!("control socket at {}", p.display());
                    me.control = Some(l);
                }
                Err(e) if path_given => return Err(format!("--control {e}")),
                Err(e) => log::warn!("no control socket: {e}"),
            }
        }
        if let (Some(a), Some(l)) = (metrics, metrics_l) {
            let l = l.map_err(|e| format!("--metrics-listen {e}"))?;
            if !l.is_stream() {
                return Err(format!(
                    "--metrics-listen {a}: needs a stream socket (tcp: or unix:)"
                ));
            }
            log::info!("metrics: serving GET /metrics on {}", l.addr());
            me.metrics = Some(l);
        }
        Ok(me)
    }

    /// The listeners with their role and configured address (a binary upgrade
    /// hands them over).
    pub fn listeners(&self) -> impl Iterator<Item = (&'static str, &ListenAddr, &Listener)> + '_ {
        [(CONTROL, &self.control), (METRICS, &self.metrics)]
            .into_iter()
            .filter_map(|(role, l)| {
                let l = l.as_ref()?;
                let conf = self.configured.iter().find(|(r, _)| *r == role)?;
                Some((role, &conf.1, l))
            })
    }

    /// Pushes the descriptors to poll; returns how many.
    pub fn pollfds(&mut self, out: &mut Vec<sys::PollFd>) -> usize {
        let now = Instant::now();
        self.conns.retain(|c| !c.done && c.deadline > now);
        let before = out.len();
        let room = self.conns.len() < MAX_CONNS;
        for l in [&self.control, &self.metrics].into_iter().flatten() {
            out.push(sys::pollfd(
                if room { l.as_raw_fd() } else { -1 },
                sys::POLLIN,
            ));
        }
        for c in &self.conns {
            let ev = if c.output.is_some() {
                sys::POLLOUT
            } else {
                sys::POLLIN
            };
            out.push(sys::pollfd(c.io.raw_fd(), ev));
        }
        out.len() - before
    }

    /// The earliest deadline of an open connection.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|c| c.deadline).min()
    }

    /// Serves what poll reported in `revents` (in the order of [`pollfds`]);
    /// returns the complete requests, to be answered with [`answer`].
    pub fn serve(&mut self, revents: &[i16]) -> Vec<Request> {
        let nl = [&self.control, &self.metrics].into_iter().flatten().count();
        let mut requests = Vec::new();
        // Connections first (their indexes are those of the poll list).
        for i in 0..self.conns.len() {
            if revents.get(nl + i).copied().unwrap_or(0) != 0 {
                self.conns[i].done = self.progress(i, &mut requests);
            }
        }
        let mut k = 0;
        let listeners = [
            (self.control.as_ref().map(|l| l.as_raw_fd()), Kind::Control),
            (self.metrics.as_ref().map(|l| l.as_raw_fd()), Kind::Metrics),
        ];
        for (fd, kind) in listeners {
            let Some(fd) = fd else { continue };
            if revents.get(k).copied().unwrap_or(0) != 0 {
                self.accept(fd, kind);
            }
            k += 1;
        }
        requests
    }

    fn accept(&mut self, fd: RawFd, kind: Kind) {
        while self.conns.len() < MAX_CONNS {
            let l = match kind {
                Kind::Control => self.control.as_ref(),
                Kind::Metrics => self.metrics.as_ref(),
            };
            let Some(l) = l.filter(|l| l.as_raw_fd() == fd) else {
                return;
            };
            let conn = match sys::accept(l.as_fd()) {
                Ok((c, _)) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.errors
                        .log(|n| log::warn!("control: accept: {e}{}", RateLimitedLog::more(n)));
                    return;
                }
            };
            let conn = match kind {
                Kind::Control => match ControlServer::allowed(conn) {
                    Some(c) => c,
                    None => continue,
                },
                Kind::Metrics => conn,
            };
            let io = if kind == Kind::Control
                || sys::socket_family(conn.as_fd()).ok() == Some(libc::AF_UNIX)
            {
                Io::Unix(UnixStream::from(conn))
            } else {
                Io::Tcp(TcpStream::from(conn))
            };
            let ok = match &io {
                Io::Unix(s) => s.set_nonblocking(true),
                Io::Tcp(s) => s.set_nonblocking(true),
            };
            if ok.is_err() {
                continue;
            }
            self.conns.push(Conn {
                io,
                kind,
                input: Vec::new(),
                output: None,
                written: 0,
                deadline: Instant::now() + CONN_DEADLINE,
                done: false,
            });
        }
    }

    /// Root or our own uid; anyone else is told no, closed and logged.
    fn allowed(conn: OwnedFd) -> Option<OwnedFd> {
        let me = sys::geteuid();
        match sys::peer_cred(conn.as_fd()) {
            Ok(c) if c.uid == 0 || c.uid == me => Some(conn),
            Ok(c) => {
                log::warn!(
                    "control: refused a client with uid {} (pid {}): only root and uid {me} may control this server",
                    c.uid,
                    c.pid
                );
                let mut s = UnixStream::from(conn);
                let _ = s.set_nonblocking(true);
                let _ = s.write(
                    b"{\"ok\":false,\"error\":\"permission denied: only root and the server's own user may use this socket\"}\n",
                );
                None
            }
            Err(e) => {
                log::warn!("control: SO_PEERCRED: {e}");
                None
            }
        }
    }

    /// Reads or writes what connection `i` has ready. True when it is finished
    /// (answered, closed by the client, failed).
    fn progress(&mut self, i: usize, requests: &mut Vec<Request>) -> bool {
        let c = &mut self.conns[i];
        if let Some(out) = &c.output {
            match c.io.write(&out[c.written..]) {
                Ok(n) => {
                    c.written += n;
                    return c.written >= out.len();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        let mut buf = [0u8; 1024];
        match c.io.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                c.input.extend_from_slice(&buf[..n]);
                let complete = match c.kind {
                    Kind::Control => c.input.contains(&b'\n'),
                    Kind::Metrics => c.input.windows(4).any(|w| w == b"\r\n\r\n"),
                };
                if c.input.len() > MAX_REQUEST {
                    let msg: &[u8] = match c.kind {
                        Kind::Control => b"{\"ok\":false,\"error\":\"request too long\"}\n",
                        Kind::Metrics => b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n",
                    };
                    c.output = Some(msg.to_vec());
                    return false;
                }
                if complete {
                    let text = String::from_utf8_lossy(&c.input).into_owned();
                    requests.push(Request {
                        kind: c.kind,
                        text,
                        conn: i,
                    });
                }
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }

    /// Sets the answer of a request and tries to send it at once.
    pub fn answer(&mut self, r: &Request, body: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(r.conn) {
            c.output = Some(body);
            c.written = 0;
            let mut ignore = Vec::new();
            let done = self.progress(r.conn, &mut ignore);
            self.conns[r.conn].done = done;
        }
    }

    /// Every descriptor, for children (and the next image) to close.
    pub fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        [&self.control, &self.metrics]
            .into_iter()
            .flatten()
            .map(|l| l.as_raw_fd())
            .chain(self.conns.iter().map(|c| c.io.raw_fd()))
    }

    /// Removes the control socket file (at exit).
    pub fn close(&mut self) {
        self.conns.clear();
        if let Some(l) = &mut self.control {
            l.remove_file();
        }
        if let Some(l) = &mut self.metrics {
            l.remove_file();
        }
        self.control = None;
        self.metrics = None;
    }
}

/// The HTTP answer of the metrics endpoint to `request`.
pub(crate) fn metrics_response(request: &str, body: impl FnOnce() -> String) -> Vec<u8> {
    let first = request.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, target) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body()),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics only\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}
