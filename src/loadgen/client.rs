//! One simulated client: an OS thread that opens connections (or sends datagrams)
//! back to back, checks each reply, and records latencies and errors into its own
//! tally. Every buffer is allocated before the clock starts; the request loop does
//! not allocate (an error message is formatted only for the first error).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixStream};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, connect, setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::histogram::Histogram;

/// Where the load goes.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(UnixAddr),
    Udp(SocketAddr),
    UnixGram(UnixAddr),
}

impl Target {
    pub fn is_datagram(&self) -> bool {
        matches!(self, Target::Udp(_) | Target::UnixGram(_))
    }
}

/// What counts as a right reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly the expected bytes (the upper-cased message).
    Exact,
    /// Any non-empty reply (for a stream: up to a newline or the end).
    Any,
}

/// How a client ends a connection after its last reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Close {
    /// Close at once (nc, curl, most client libraries).
    Client,
    /// Half-close, then read until the server closes (checks nothing more comes).
    Half,
    /// Read until the server closes, without half-closing (for a server that
    /// closes after its reply: time, HTTP with `Connection: close`).
    Server,
}

/// When a client stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Start no new connection or datagram after this long.
    After(Duration),
    /// Attempt exactly this many requests.
    Count(u64),
}

/// How many requests one client may still make, and until when.
struct Budget {
    left: u64,
    until: Option<Instant>,
}

impl Budget {
    fn start(stop: Stop) -> Budget {
        match stop {
            Stop::Count(n) => Budget {
                left: n,
                until: None,
            },
            Stop::After(d) => Budget {
                left: u64::MAX,
                until: Some(Instant::now() + d),
            },
        }
    }

    /// True while another request may start.
    fn more(&self) -> bool {
        self.left > 0 && self.until.is_none_or(|t| Instant::now() < t)
    }
}

/// What every client does; shared read-only between the threads.
pub struct Plan {
    pub target: Target,
    pub message: Vec<u8>,
    pub expected: Vec<u8>,
    pub expect: Expect,
    pub per_connection: u64,
    pub timeout: Duration,
    pub retries: u32,
    pub close: Close,
}

/// Error counts by kind.
#[derive(Default, Clone, Copy, Debug)]
pub struct Errors {
    /// Connecting failed (refused, reset during the handshake, no such socket).
    pub connect: u64,
    /// A read or write failed, or the server closed before a whole reply.
    pub io: u64,
    /// A reply arrived but was not the expected one.
    pub wrong: u64,
    /// No reply within --timeout (after every retry, for datagrams).
    pub timeout: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.wrong + self.timeout
    }
    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.io += o.io;
        self.wrong += o.wrong;
        self.timeout += o.timeout;
    }
}

/// What one client did.
#[derive(Default)]
pub struct Tally {
    /// Connections on which every request succeeded.
    pub connections: u64,
    /// Requests answered rightly.
    pub requests: u64,
    /// Datagrams sent again after a timeout.
    pub resent: u64,
    pub errors: Errors,
    pub latency: Histogram,
    /// The first error this client saw, for the report.
    pub first_error: Option<String>,
    /// When this client finished (the run ends with the last one).
    pub finished: Option<Instant>,
}

/// How one request ended.
enum Fail {
    Connect(io::Error),
    Io(io::Error),
    Closed,
    Wrong,
    Timeout,
}

impl Tally {
    fn fail(&mut self, plan: &Plan, f: Fail) {
        match &f {
            Fail::Connect(_) => self.errors.connect += 1,
            Fail::Io(_) | Fail::Closed => self.errors.io += 1,
            Fail::Wrong => self.errors.wrong += 1,
            Fail::Timeout => self.errors.timeout += 1,
        }
        if self.first_error.is_none() {
            self.first_error = Some(match f {
                Fail::Connect(e) => format!("connect: {e}"),
                Fail::Io(e) => format!("i/o: {e}"),
                Fail::Closed => "server closed the connection before a whole reply".to_string(),
                Fail::Wrong => format!(
                    "wrong reply (expected {:?})",
                    String::from_utf8_lossy(&plan.expected)
                ),
                Fail::Timeout => format!("no reply within {:?}", plan.timeout),
            });
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Runs one client to completion; `start` lines all clients up on the first request.
pub fn run(plan: &Plan, stop: Stop, start: &Barrier) -> Tally {
    let mut tally = Tally::default();
    if plan.target.is_datagram() {
        run_datagrams(plan, stop, start, &mut tally);
    } else {
        run_streams(plan, stop, start, &mut tally);
    }
    tally.finished = Some(Instant::now());
    tally
}

/// A connected stream socket of either family (the server's own type).
type Conn = forkserve::Stream;

/// A stream target in the form connect(2) takes, built once per client.
pub enum StreamAddr {
    Inet(SockaddrStorage, AddressFamily),
    Unix(nix::sys::socket::UnixAddr),
}

impl StreamAddr {
    fn of(target: &Target) -> io::Result<StreamAddr> {
        use std::os::linux::net::SocketAddrExt;
        match target {
            Target::Tcp(a) => {
                let family = if a.is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                };
                Ok(StreamAddr::Inet(SockaddrStorage::from(*a), family))
            }
            Target::Unix(a) => {
                let u = match (a.as_pathname(), a.as_abstract_name()) {
                    (Some(p), _) => nix::sys::socket::UnixAddr::new(p)?,
                    (None, Some(n)) => nix::sys::socket::UnixAddr::new_abstract(n)?,
                    _ => {
                        return Err(io::Error::new(
                            ErrorKind::InvalidInput,
                            "unnamed Unix socket address",
                        ));
                    }
                };
                Ok(StreamAddr::Unix(u))
            }
            _ => Err(io::Error::new(
                ErrorKind::InvalidInput,
                "datagram target in stream mode",
            )),
        }
    }
}

/// Opens a connection whose connect, reads and writes time out after `timeout`
/// (SO_SNDTIMEO bounds a blocking connect on Linux): four system calls.
fn open_conn(addr: &StreamAddr, timeout: &TimeVal) -> io::Result<Conn> {
    let family = match addr {
        StreamAddr::Inet(_, f) => *f,
        StreamAddr::Unix(_) => AddressFamily::Unix,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReceiveTimeout, timeout)?;
    setsockopt(&fd, sockopt::SendTimeout, timeout)?;
    let res = match addr {
        StreamAddr::Inet(sa, _) => connect(fd.as_raw_fd(), sa),
        StreamAddr::Unix(ua) => connect(fd.as_raw_fd(), ua),
    };
    match res {
        Ok(()) => {}
        // A blocking connect cut short by SO_SNDTIMEO.
        Err(Errno::EINPROGRESS) | Err(Errno::EAGAIN) => {
            return Err(io::Error::from(ErrorKind::TimedOut));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(match addr {
        StreamAddr::Inet(..) => forkserve::Stream::Tcp(TcpStream::from(fd)),
        StreamAddr::Unix(_) => forkserve::Stream::Unix(UnixStream::from(fd)),
    })
}

fn read_reply(conn: &mut Conn, plan: &Plan, buf: &mut [u8]) -> Result<usize, Fail> {
    let want = match plan.expect {
        Expect::Exact => plan.expected.len(),
        Expect::Any => buf.len(),
    };
    let mut got = 0;
    while got < want {
        match conn.read(&mut buf[got..want]) {
            Ok(0) => break,
            Ok(n) => {
                let new = &buf[got..got + n];
                got += n;
                if plan.expect == Expect::Any && new.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Fail::Timeout),
            Err(e) => return Err(Fail::Io(e)),
        }
    }
    match plan.expect {
        Expect::Exact if got < want => {
            if got > 0 && !plan.expected.starts_with(&buf[..got]) {
                Err(Fail::Wrong)
            } else {
                Err(Fail::Closed)
            }
        }
        Expect::Exact if buf[..got] != plan.expected[..] => Err(Fail::Wrong),
        Expect::Any if got == 0 => Err(Fail::Closed),
        _ => Ok(got),
    }
}

/// After the last request, as `plan.close` says: close at once; or (half-closing
/// first or not) wait for the server to close. With Exact, any further byte is a
/// wrong reply. A reset here is not an error (the replies were all right); a
/// server that never closes is a timeout.
fn finish_connection(conn: &mut Conn, plan: &Plan, buf: &mut [u8]) -> Result<(), Fail> {
    match plan.close {
        Close::Client => return Ok(()),
        Close::Half => {
            let _ = conn.shutdown_write();
        }
        Close::Server => {}
    }
    loop {
        match conn.read(buf) {
            Ok(0) => return Ok(()),
            Ok(_) if plan.expect == Expect::Exact => return Err(Fail::Wrong),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Fail::Timeout),
            Err(_) => return Ok(()),
        }
    }
}

fn run_streams(plan: &Plan, stop: Stop, start: &Barrier, tally: &mut Tally) {
    let mut buf = vec![0u8; plan.expected.len().max(64 * 1024)];
    let per_conn = plan.per_connection.max(1);
    let timeout = TimeVal::microseconds(plan.timeout.as_micros().clamp(1, i64::MAX as u128) as i64);
    let addr = StreamAddr::of(&plan.target);
    start.wait();
    let addr = match addr {
        Ok(a) => a,
        Err(e) => {
            tally.errors.connect += 1;
            tally.first_error = Some(format!("address: {e}"));
            return;
        }
    };
    let mut budget = Budget::start(stop);
    while budget.more() {
        let t0 = Instant::now();
        let mut conn = match open_conn(&addr, &timeout) {
            Ok(c) => c,
            Err(e) => {
                budget.left -= 1;
                let f = if is_timeout(&e) {
                    Fail::Timeout
                } else {
                    Fail::Connect(e)
                };
                tally.fail(plan, f);
                continue;
            }
        };
        let mut all_ok = true;
        let mut t_req = t0;
        for _ in 0..per_conn.min(budget.left) {
            budget.left -= 1;
            if let Err(e) = conn.write_all(&plan.message) {
                tally.fail(
                    plan,
                    if is_timeout(&e) {
                        Fail::Timeout
                    } else {
                        Fail::Io(e)
                    },
                );
                all_ok = false;
                break;
            }
            match read_reply(&mut conn, plan, &mut buf) {
                Ok(_) => {
                    let now = Instant::now();
                    tally.latency.record(now - t_req);
                    tally.requests += 1;
                    t_req = now;
                }
                Err(f) => {
                    tally.fail(plan, f);
                    all_ok = false;
                    break;
                }
            }
        }
        if all_ok {
            match finish_connection(&mut conn, plan, &mut buf) {
                Ok(()) => tally.connections += 1,
                Err(f) => tally.fail(plan, f),
            }
        }
    }
}

/// A connected datagram socket of either family.
enum Dgram {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

impl Dgram {
    fn open(target: &Target, timeout: Duration, client: usize) -> io::Result<Dgram> {
        let d = match target {
            Target::Udp(a) => {
                let local: SocketAddr = if a.is_ipv4() {
                    ([127, 0, 0, 1], 0).into()
                } else {
                    (std::net::Ipv6Addr::LOCALHOST, 0).into()
                };
                let s = UdpSocket::bind(local)?;
                s.connect(a)?;
                s.set_read_timeout(Some(timeout))?;
                Dgram::Udp(s)
            }
            Target::UnixGram(a) => {
                // A reply needs an address to go to: an abstract name, which needs
                // no file and vanishes with the socket.
                use std::os::linux::net::SocketAddrExt;
                let name = format!("forkserve-bench-{}-{client}", std::process::id());
                let s = UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name)?)?;
                s.connect_addr(a)?;
                s.set_read_timeout(Some(timeout))?;
                Dgram::Unix(s)
            }
            _ => unreachable!("stream target in datagram mode"),
        };
        Ok(d)
    }
    fn send(&self, b: &[u8]) -> io::Result<usize> {
        match self {
            Dgram::Udp(s) => s.send(b),
            Dgram::Unix(s) => s.send(b),
        }
    }
    fn recv(&self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Dgram::Udp(s) => s.recv(b),
            Dgram::Unix(s) => s.recv(b),
        }
    }
    /// Discards replies that arrived late for an earlier, timed-out request.
    fn discard_late(&self, b: &mut [u8]) {
        let _ = self.set_nonblocking(true);
        while self.recv(b).is_ok() {}
        let _ = self.set_nonblocking(false);
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Dgram::Udp(s) => s.set_nonblocking(on),
            Dgram::Unix(s) => s.set_nonblocking(on),
        }
    }
}

fn run_datagrams(plan: &Plan, stop: Stop, start: &Barrier, tally: &mut Tally) {
    let mut buf = vec![0u8; 65536];
    let sock = Dgram::open(&plan.target, plan.timeout, tally_id());
    start.wait();
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            // Nothing can be sent: every request of this client fails to connect.
            let n = match stop {
                Stop::Count(n) => n,
                Stop::After(_) => 1,
            };
            tally.errors.connect += n;
            tally.first_error = Some(format!("opening a datagram socket: {e}"));
            return;
        }
    };
    let mut budget = Budget::start(stop);
    let mut late_possible = false;
    while budget.more() {
        budget.left -= 1;
        if late_possible {
            sock.discard_late(&mut buf);
            late_possible = false;
        }
        let t0 = Instant::now();
        let mut attempt = 0;
        let result = loop {
            if let Err(e) = sock.send(&plan.message) {
                break Err(if e.kind() == ErrorKind::ConnectionRefused {
                    Fail::Connect(e)
                } else {
                    Fail::Io(e)
                });
            }
            match sock.recv(&mut buf) {
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    late_possible = true;
                    if attempt >= plan.retries {
                        break Err(Fail::Timeout);
                    }
                    attempt += 1;
                    tally.resent += 1;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break Err(Fail::Connect(e)),
                Err(e) => break Err(Fail::Io(e)),
            }
        };
        let verdict = result.and_then(|n| match plan.expect {
            Expect::Exact if buf[..n] != plan.expected[..] => Err(Fail::Wrong),
            Expect::Any if n == 0 => Err(Fail::Wrong),
            _ => Ok(()),
        });
        match verdict {
            Ok(()) => {
                tally.latency.record(t0.elapsed());
                tally.requests += 1;
            }
            Err(f) => tally.fail(plan, f),
        }
    }
}

/// A number unique to this client thread within the process (for socket names).
fn tally_id() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
