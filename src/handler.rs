//! The two handler traits a program implements (the `BaseRequestHandler` of Python's
//! socketserver, split by socket type) and what a handler is given: a [`Connection`]
//! for streams, a datagram and a [`Reply`] handle for datagram sockets.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::peer::Peer;
use crate::sys;

/// How a service runs its handlers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Model {
    /// One forked child per connection or datagram (ForkingMixIn).
    #[default]
    Fork,
    /// One server process, one thread per connection or datagram (ThreadingMixIn).
    Thread,
    /// One server process handling one connection or datagram at a time.
    Sequential,
    /// N long-lived children that each accept and serve one connection at a time.
    Prefork,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::Fork => "fork",
            Model::Thread => "thread",
            Model::Sequential => "sequential",
            Model::Prefork => "prefork",
        }
    }
}

impl std::str::FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Model, String> {
        match s {
            "fork" => Ok(Model::Fork),
            "thread" => Ok(Model::Thread),
            "sequential" => Ok(Model::Sequential),
            "prefork" => Ok(Model::Prefork),
            _ => Err(format!(
                "unknown model '{s}' (expected fork, thread, sequential or prefork)"
            )),
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Facts about the service a handler runs in.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The service's name (`echo`, `http`, …).
    pub service: String,
    /// The model the service runs under.
    pub model: Model,
    /// The idle timeout set on the connection, if any.
    pub idle_timeout: Option<Duration>,
    /// The local address the connection or datagram arrived on, as text (`tcp:…`).
    pub local: String,
    /// How many reload requests (SIGHUP) the master had received when this
    /// connection was handed out. A handler that loaded configuration at start-up
    /// re-reads it when this is not 0 (the master itself never runs handler code,
    /// so the copy it forks from keeps the start-up state).
    pub reloads: u64,
    /// The listening socket the connection came from, when it is still open in
    /// this process and readable only while clients wait for a process (the fork,
    /// prefork and sequential models): see [`Connection::clients_waiting`].
    pub(crate) listener: Option<RawFd>,
    /// How busy the service is, shared with the master (see `scoreboard.rs`).
    pub(crate) load: Option<crate::server::scoreboard::Load>,
}

/// How [`Connection::wait_for_input`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The client sent something (or closed): read it.
    Input,
    /// Other clients wait for this service while this connection sits idle.
    ClientsWaiting,
    /// Nothing within the timeout.
    TimedOut,
}

/// How long a listener must stay readable before clients count as waiting: long
/// enough for an idle worker (prefork) or the master (fork) to take a connection
/// that had just arrived.
const WAITING_CONFIRM: Duration = Duration::from_millis(2);

/// The connected socket a stream handler reads and writes.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Wraps a connected stream socket, choosing the type from its family.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Stream> {
        match sys::socket_family(fd.as_fd())? {
            libc::AF_UNIX => Ok(Stream::Unix(UnixStream::from(fd))),
            libc::AF_INET | libc::AF_INET6 => Ok(Stream::Tcp(TcpStream::from(fd))),
            f => Err(io::Error::other(format!("unsupported socket family {f}"))),
        }
    }

    /// Half-closes the socket: the peer reads end-of-file.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// A second handle to the same socket (for a reader and a writer).
    pub fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    /// Puts the socket in or out of non-blocking mode (a handler that polls).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Turns off Nagle's algorithm on TCP (replies go out at once); nothing to do on
    /// Unix sockets.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// Sets the read timeout (`None`: block for ever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

/// Runs one read or write again while a signal interrupts it (EINTR): a stopped and
/// continued worker, or a signal with a handler, is not a handler error.
fn retry_interrupted(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry_interrupted(|| match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        })
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        retry_interrupted(|| match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// One accepted connection, as a stream handler sees it.
///
/// Reads time out after the service's idle timeout with an error of kind
/// `WouldBlock`/`TimedOut`, which the server treats as a clean close.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    peer: Peer,
    context: Context,
}

impl Connection {
    pub(crate) fn new(stream: Stream, peer: Peer, context: Context) -> Connection {
        Connection {
            stream,
            peer,
            context,
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The service, model and local address.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The UCSPI environment for a program run for this connection (see
    /// [`Peer::ucspi_env`]).
    pub fn ucspi_env(&self) -> Vec<(&'static str, String)> {
        let local = sys::local_addr(self.stream.as_fd())
            .ok()
            .and_then(|a| a.to_inet());
        self.peer.ucspi_env(local)
    }

    /// The socket itself, e.g. to clone it for a separate reader.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Half-closes the connection: the client reads end-of-file.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown_write()
    }

    /// True when clients wait for this service right now: the listener this
    /// connection came from holds connections no process has taken (every prefork
    /// worker busy, or the master at `--max-children`). A handler that would keep
    /// an idle connection open (HTTP keep-alive) should close it instead, so the
    /// slot goes to a waiting client. Always false where the server cannot tell
    /// (the thread model, inetd). A read of shared memory, and while the service
    /// is at its limit one poll(2) with a zero timeout.
    pub fn clients_waiting(&self) -> bool {
        self.context.load.is_none_or(|l| l.at_limit())
            && self
                .context
                .listener
                .is_some_and(|l| readable(l, Some(Duration::ZERO)))
    }

    /// Waits up to `timeout` (`None`: for ever) for the client to send, and returns
    /// early with [`Wait::ClientsWaiting`] when other clients wait for this
    /// service meanwhile (see [`clients_waiting`](Connection::clients_waiting)).
    /// Input already there always wins.
    pub fn wait_for_input(&self, timeout: Option<Duration>) -> io::Result<Wait> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let me = self.stream.as_fd().as_raw_fd();
        loop {
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return Ok(Wait::TimedOut),
                },
            };
            // No allocation: a keep-alive connection comes here for every request.
            let mut fds = [sys::pollfd(me, sys::POLLIN), sys::pollfd(-1, sys::POLLIN)];
            let n = match self.context.listener {
                Some(l) => {
                    fds[1] = sys::pollfd(l, sys::POLLIN);
                    2
                }
                None => 1,
            };
            match sys::poll(&mut fds[..n], left) {
                Ok(0) => return Ok(Wait::TimedOut),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if fds[0].revents != 0 {
                return Ok(Wait::Input);
            }
            // The listener is readable: give whoever accepts a moment to take the
            // new connection; still there, and no input from our client, it waits.
            if readable(me, Some(WAITING_CONFIRM)) {
                return Ok(Wait::Input);
            }
            if self.clients_waiting() {
                return Ok(Wait::ClientsWaiting);
            }
        }
    }
}

/// True when `fd` is readable (or at end of file, or in error) within `timeout`.
fn readable(fd: RawFd, timeout: Option<Duration>) -> bool {
    let mut fds = [sys::pollfd(fd, sys::POLLIN)];
    sys::poll(&mut fds, timeout).is_ok_and(|n| n > 0)
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        if n > 0 {
            crate::server::counters::first_write();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_fd().as_raw_fd()
    }
}

/// Serves connections on stream sockets (TCP, Unix stream).
///
/// The server calls `setup`, then `handle`, then `finish` (even when `handle` failed),
/// in the process or thread the model gives the connection. An `Err` or a panic makes
/// a forked worker exit with status 1; the master logs it.
pub trait StreamHandler: Send + Sync + 'static {
    /// Runs before `handle` (e.g. to send a banner).
    fn setup(&self, _conn: &mut Connection) -> io::Result<()> {
        Ok(())
    }

    /// Serves the connection until the client is done.
    fn handle(&self, conn: &mut Connection) -> io::Result<()>;

    /// Runs after `handle`, whatever it returned.
    fn finish(&self, _conn: &mut Connection) -> io::Result<()> {
        Ok(())
    }
}

/// How long [`Reply::send`] waits for a peer that does not take its replies.
const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Sends replies to the sender of one datagram, on the socket it arrived on.
pub struct Reply<'a> {
    socket: BorrowedFd<'a>,
    to: Option<sys::RawAddr>,
    peer: Peer,
    context: &'a Context,
}

impl<'a> Reply<'a> {
    pub(crate) fn new(
        socket: BorrowedFd<'a>,
        to: Option<sys::RawAddr>,
        peer: Peer,
        context: &'a Context,
    ) -> Reply<'a> {
        Reply {
            socket,
            to,
            peer,
            context,
        }
    }

    /// Who sent the datagram.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The service, model and local address.
    pub fn context(&self) -> &Context {
        self.context
    }

    /// True when the sender has an address replies can go to (a Unix-datagram client
    /// that did not bind one has none).
    pub fn can_reply(&self) -> bool {
        self.to.is_some()
    }

    /// Sends one datagram back to the sender. An unbound Unix-datagram sender cannot
    /// be answered: the reply is skipped and logged.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        self.send_until(data, std::time::Instant::now() + REPLY_DEADLINE)
    }

    /// [`Reply::send`] with a deadline of the handler's own: a peer that does not
    /// take the datagram by then is an error of kind `TimedOut`.
    pub fn send_until(&self, data: &[u8], deadline: std::time::Instant) -> io::Result<()> {
        let Some(to) = &self.to else {
            log::info!(
                "{}: datagram from {} has no return address (unbound unixgram sender); reply skipped",
                self.context.service,
                self.peer
            );
            return Ok(());
        };
        // The shared socket stays non-blocking (its flags are the master's); wait for
        // room instead of failing on a full buffer. For a Unix-datagram peer the
        // room is in the receiver's queue, which poll(2) does not report: back off
        // by sleeping, and give up at the deadline on a peer that never reads.
        let mut pause = Duration::from_micros(100);
        loop {
            match sys::send_to(self.socket, data, to) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("reply to {} not taken in time", self.peer),
                        ));
                    }
                    let mut fds = [sys::pollfd(self.socket.as_raw_fd(), sys::POLLOUT)];
                    sys::poll(&mut fds, Some(pause))?;
                    if fds[0].revents & sys::POLLOUT != 0 {
                        // poll said there is room (UDP) but send did not: a Unix
                        // peer's queue is full. Sleep instead of spinning.
                        std::thread::sleep(pause);
                    }
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Serves datagram sockets (UDP, Unix datagram): one call per datagram received.
///
/// In a long-lived server process (the sequential, thread and prefork models) the
/// handler also has a life of its own: `start` once before the first datagram,
/// `tick` after every wake-up of the process (at the latest `tick_interval` after
/// the last one), `stop` once on SIGTERM after the last datagram. A collector
/// that batches its input uses them to flush on time and on shutdown. Under the
/// fork model only `handle` is called.
pub trait DatagramHandler: Send + Sync + 'static {
    /// Handles one datagram; answer through `reply`.
    fn handle(&self, datagram: &[u8], reply: &Reply<'_>) -> io::Result<()>;

    /// Runs once in a server process before it serves; an error ends the process
    /// (status 71), and the master starts another with back-off.
    fn start(&self) -> io::Result<()> {
        Ok(())
    }

    /// The longest the server process may wait for a datagram before calling
    /// `tick` (None, the default: until one arrives).
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Called after every wake-up of the server process, datagram or not.
    fn tick(&self) {}

    /// Runs once when the server process stops.
    fn stop(&self) {}
}
