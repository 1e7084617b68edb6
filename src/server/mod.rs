//! The server: services (a handler, its listen addresses, its model and limits), the
//! [`Server`] that binds them all before the first fork, and the master that runs
//! them (see `master.rs`).
//!
//! ```no_run
//! use std::io::{self, Write};
//! use forkserve::{Connection, Server, Service, StreamHandler};
//!
//! struct Hello;
//! impl StreamHandler for Hello {
//!     fn handle(&self, conn: &mut Connection) -> io::Result<()> {
//!         let greeting = format!("hello, {}\n", conn.peer());
//!         conn.write_all(greeting.as_bytes())
//!     }
//! }
//!
//! Server::new()
//!     .service(Service::stream("hello", Hello).listen("tcp:127.0.0.1:7000".parse().unwrap()))
//!     .run()
//!     .unwrap();
//! ```

mod accept;
mod children;
mod fork;
mod master;
mod pending;
mod pool;
mod process;
mod reload;
pub(crate) mod scoreboard;
mod signals;
mod spare;
mod spawn;
mod worker;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::addr::ListenAddr;
use crate::handler::{DatagramHandler, Model, StreamHandler};
use crate::listener::Listener;

pub use crate::logging::RateLimitedLog;
pub use children::PerSource;
pub use spawn::Spawner;

/// The handler a service runs, by socket type.
#[derive(Clone)]
pub enum Handler {
    Stream(Arc<dyn StreamHandler>),
    Datagram(Arc<dyn DatagramHandler>),
}

/// A long-lived helper process a service needs beside its workers (the chat broker).
/// The master forks it before accepting and restarts it, with back-off, if it dies.
#[derive(Clone)]
pub struct Companion {
    pub(crate) name: String,
    pub(crate) run: Arc<dyn Fn() -> i32 + Send + Sync>,
    pub(crate) fds: Vec<RawFd>,
}

impl Companion {
    /// `run` is the process's body; its return value is the exit status.
    pub fn new(name: &str, run: impl Fn() -> i32 + Send + Sync + 'static) -> Companion {
        Companion {
            name: name.to_string(),
            run: Arc::new(run),
            fds: Vec::new(),
        }
    }

    /// Names a descriptor that belongs to this companion alone: workers close it.
    pub fn owns_fd(mut self, fd: RawFd) -> Companion {
        self.fds.push(fd);
        self
    }
}

/// One service: a handler, the addresses it listens on, its model and its limits.
#[derive(Clone)]
pub struct Service {
    pub(crate) name: String,
    pub(crate) addrs: Vec<ListenAddr>,
    pub(crate) handler: Handler,
    pub(crate) model: Model,
    pub(crate) max_children: usize,
    pub(crate) per_source: PerSource,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) workers: usize,
    pub(crate) max_requests: Option<u64>,
    pub(crate) spare: usize,
    pub(crate) max_workers: Option<usize>,
    pub(crate) companions: Vec<Companion>,
    pub(crate) spawner: Option<Arc<dyn Spawner>>,
    pub(crate) reloads: Vec<Arc<dyn Fn() + Send + Sync>>,
}

impl Service {
    fn new(name: &str, handler: Handler) -> Service {
        Service {
            name: name.to_string(),
            addrs: Vec::new(),
            handler,
            model: Model::Fork,
            max_children: 40,
            per_source: PerSource::FairShare,
            idle_timeout: None,
            workers: 4,
            max_requests: None,
            spare: 0,
            max_workers: None,
            companions: Vec::new(),
            spawner: None,
            reloads: Vec::new(),
        }
    }

    /// A service on stream sockets (TCP, Unix stream).
    pub fn stream(name: &str, handler: impl StreamHandler) -> Service {
        Service::new(name, Handler::Stream(Arc::new(handler)))
    }

    /// A service on datagram sockets (UDP, Unix datagram).
    pub fn datagram(name: &str, handler: impl DatagramHandler) -> Service {
        Service::new(name, Handler::Datagram(Arc::new(handler)))
    }

    /// Adds a listen address.
    pub fn listen(mut self, addr: ListenAddr) -> Service {
        self.addrs.push(addr);
        self
    }

    /// Replaces the listen addresses.
    pub fn listen_on(mut self, addrs: Vec<ListenAddr>) -> Service {
        self.addrs = addrs;
        self
    }

    /// Sets the model (default fork).
    pub fn model(mut self, model: Model) -> Service {
        self.model = model;
        self
    }

    /// At most this many connections (or datagrams) served at once (default 40).
    pub fn max_children(mut self, n: usize) -> Service {
        self.max_children = n.max(1);
        self
    }

    /// At most this many at once from one peer IP, or one peer uid on Unix sockets;
    /// `Some(0)`: no limit; `None` (the default): the fair share (see [`PerSource`]).
    pub fn max_per_source(mut self, n: Option<usize>) -> Service {
        self.per_source = PerSource::from_option(n);
        self
    }

    /// Closes a connection whose client has been silent this long.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Service {
        self.idle_timeout = t;
        self
    }

    /// Number of long-lived workers under the prefork model (default 4).
    pub fn workers(mut self, n: usize) -> Service {
        self.workers = n.max(1);
        self
    }

    /// Under prefork, the pool grows up to `n` workers while all are busy and
    /// clients wait, and shrinks back to [`workers`](Service::workers) when idle
    /// (`None`, the default: a fixed pool).
    pub fn max_workers(mut self, n: Option<usize>) -> Service {
        self.max_workers = n;
        self
    }

    /// Under prefork, a worker exits (and is replaced) after serving this many.
    pub fn max_requests(mut self, n: Option<u64>) -> Service {
        self.max_requests = n;
        self
    }

    /// Under the fork model, keeps `n` one-shot workers forked ahead of the
    /// connections they will serve (fork-ahead; 0, the default: fork on accept).
    /// Each serves exactly one connection and exits, as a forked worker does.
    pub fn spare(mut self, n: usize) -> Service {
        self.spare = n;
        self
    }

    /// Adds a helper process (see [`Companion`]).
    pub fn companion(mut self, c: Companion) -> Service {
        self.companions.push(c);
        self
    }

    /// Under the fork model, the master starts a process for each connection with
    /// `spawner` instead of forking a worker that runs the handler (see
    /// [`Spawner`]). The handler still serves under the other models and inetd.
    pub fn spawner(mut self, spawner: impl Spawner) -> Service {
        self.spawner = Some(Arc::new(spawner));
        self
    }

    /// Runs `hook` in the master on SIGHUP (re-read a file; keep the old state
    /// and log why when the new one is bad).
    pub fn on_reload(mut self, hook: impl Fn() + Send + Sync + 'static) -> Service {
        self.reloads.push(Arc::new(hook));
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The addresses configured so far.
    pub fn addrs(&self) -> &[ListenAddr] {
        &self.addrs
    }

    /// True for a stream service.
    pub fn is_stream(&self) -> bool {
        matches!(self.handler, Handler::Stream(_))
    }

    /// The model.
    pub fn get_model(&self) -> Model {
        self.model
    }
}

/// A failure to start or run, with the sysexits code to exit with.
#[derive(Debug)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl Error {
    pub const USAGE: i32 = 64;
    pub const UNAVAILABLE: i32 = 69;
    pub const OSERR: i32 = 71;
    pub const CONFIG: i32 = 78;

    pub fn new(code: i32, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The whole daemon: services, shared settings, and the master that runs them.
pub struct Server {
    pub(crate) services: Vec<Service>,
    pub(crate) drain_timeout: Duration,
    pub(crate) socket_mode: u32,
    pub(crate) ready_fd: Option<RawFd>,
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) inetd: bool,
}

impl Default for Server {
    fn default() -> Server {
        Server::new()
    }
}

impl Server {
    pub fn new() -> Server {
        Server {
            services: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            socket_mode: 0o660,
            ready_fd: None,
            user: None,
            group: None,
            inetd: false,
        }
    }

    /// Adds a service.
    pub fn service(mut self, s: Service) -> Server {
        self.services.push(s);
        self
    }

    /// How long SIGTERM waits for connections to finish (default 10 s).
    pub fn drain_timeout(mut self, t: Duration) -> Server {
        self.drain_timeout = t;
        self
    }

    /// The mode of Unix socket files (default 0660).
    pub fn socket_mode(mut self, mode: u32) -> Server {
        self.socket_mode = mode;
        self
    }

    /// Writes a newline to this fd (and closes it) once every listener is bound.
    pub fn ready_fd(mut self, fd: Option<RawFd>) -> Server {
        self.ready_fd = fd;
        self
    }

    /// Runs as this user (and group) after binding, before the first fork.
    pub fn user(mut self, user: Option<String>, group: Option<String>) -> Server {
        self.user = user;
        self.group = group;
        self
    }

    /// Serves one connection on stdin/stdout (inetd, systemd StandardInput=socket).
    pub fn inetd(mut self, on: bool) -> Server {
        self.inetd = on;
        self
    }

    /// Binds every listener (or takes them from systemd), then runs the master until
    /// SIGTERM/SIGINT/SIGQUIT. Returns after a clean shutdown.
    pub fn run(self) -> Result<(), Error> {
        master::run(self)
    }
}

/// Raw descriptors of all listeners, for children to close.
pub(crate) fn raw_fds(listeners: &[Listener]) -> impl Iterator<Item = RawFd> + '_ {
    listeners.iter().map(|l| l.as_raw_fd())
}
