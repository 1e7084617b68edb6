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
mod control;
pub(crate) mod counters;
mod fairq;
mod fork;
mod lifecycle;
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

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::ListenAddr;
use crate::handler::{DatagramHandler, Model, StreamHandler};
use crate::listener::Listener;
use crate::sandbox::Sandbox;

pub use crate::logging::RateLimitedLog;
pub use children::PerSource;
pub use counters::quantile_text;
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
    pub(crate) drain_signal: Option<i32>,
    pub(crate) sandbox: Option<Sandbox>,
}

impl Companion {
    /// `run` is the process's body; its return value is the exit status.
    pub fn new(name: &str, run: impl Fn() -> i32 + Send + Sync + 'static) -> Companion {
        Companion {
            name: name.to_string(),
            run: Arc::new(run),
            fds: Vec::new(),
            drain_signal: None,
            sandbox: None,
        }
    }

    /// Sends `signal` to this companion when the master starts draining (SIGTERM
    /// comes only once the workers are gone), so it can tell the clients it
    /// serves. Pick a signal whose default action is to ignore it (SIGWINCH, as
    /// nginx uses it for a graceful stop, or SIGURG): one that arrives before the
    /// companion set up its handling is then lost, not fatal.
    pub fn drain_signal(mut self, signal: i32) -> Companion {
        self.drain_signal = Some(signal);
        self
    }

    /// Names a descriptor that belongs to this companion alone: workers close it.
    pub fn owns_fd(mut self, fd: RawFd) -> Companion {
        self.fds.push(fd);
        self
    }

    /// Runs the process inside `policy` (see [`Sandbox`]).
    pub fn sandbox(mut self, policy: Sandbox) -> Companion {
        self.sandbox = Some(policy);
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
    pub(crate) recv_buffer: Option<usize>,
    pub(crate) sandbox: Option<Sandbox>,
    pub(crate) fingerprint: Option<String>,
}

/// One service of a configuration as a reload sees it: what it depends on (its
/// fingerprint), its limits, and how to build it. Only services that are new or
/// whose fingerprint changed are built; a change of limits alone is applied in
/// place.
pub struct Planned {
    pub name: String,
    pub fingerprint: String,
    pub max_children: usize,
    pub max_per_source: Option<usize>,
    pub build: Box<dyn FnOnce() -> Result<Service, Error>>,
}

/// Re-reads the configuration for a reload (SIGHUP, `forkserve ctl reload`).
pub type Reloader = Box<dyn Fn() -> Result<Vec<Planned>, Error>>;

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
            recv_buffer: None,
            sandbox: None,
            fingerprint: None,
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

    /// Asks for a socket receive buffer of this many bytes on the service's datagram
    /// sockets (SO_RCVBUFFORCE when privileged, else SO_RCVBUF, which the kernel
    /// caps at net.core.rmem_max), so a burst waits in the kernel, not dropped.
    pub fn recv_buffer(mut self, bytes: Option<usize>) -> Service {
        self.recv_buffer = bytes;
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

    /// Runs every worker (and server process) of this service inside `policy`,
    /// entered after fork and before the handler (see [`Sandbox`]). Without one the
    /// workers run unsandboxed.
    pub fn sandbox(mut self, policy: Sandbox) -> Service {
        self.sandbox = Some(policy);
        self
    }

    /// Gives the service another name.
    pub fn rename(mut self, name: &str) -> Service {
        self.name = name.to_string();
        self
    }

    /// What the service was built from (see [`Planned`]): a reload rebuilds it
    /// only when this changes.
    pub fn fingerprint(mut self, f: String) -> Service {
        self.fingerprint = Some(f);
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

    /// The per-source limit set so far, as `--max-per-source` spells it (a
    /// service's own default, if it has one): None for the fair share, 0 for none.
    pub fn get_max_per_source(&self) -> Option<usize> {
        match self.per_source {
            PerSource::FairShare => None,
            PerSource::Unlimited => Some(0),
            PerSource::Max(n) => Some(n),
        }
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
    pub(crate) name: Option<String>,
    pub(crate) setup_logging: bool,
    pub(crate) process_titles: bool,
    pub(crate) sandbox: bool,
    pub(crate) seccomp: bool,
    pub(crate) reloader: Option<Reloader>,
    pub(crate) control: Option<PathBuf>,
    pub(crate) metrics_listen: Option<ListenAddr>,
    pub(crate) argv: Vec<OsString>,
    pub(crate) upgrade_check: Vec<OsString>,
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
            name: None,
            setup_logging: true,
            process_titles: true,
            sandbox: true,
            seccomp: false,
            reloader: None,
            control: None,
            metrics_listen: None,
            argv: Vec::new(),
            upgrade_check: vec!["--version".into()],
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

    /// The server's name (default `forkserve`): the first word of every process
    /// title (`shout: master …`, `shout: shout worker …`), the short name of the
    /// master in `ps -e`, and the log identity (syslog tag, journal
    /// SYSLOG_IDENTIFIER, `NAME[PID]` on stderr). Set once per process.
    pub fn name(mut self, name: &str) -> Server {
        self.name = Some(name.to_string());
        self
    }

    /// Whether [`run`](Server::run) sets up logging (default yes): stderr at info
    /// level, or the journal under systemd, unless a logger is already installed
    /// (then that one is kept). `false`: the program installs its own.
    pub fn setup_logging(mut self, on: bool) -> Server {
        self.setup_logging = on;
        self
    }

    /// Whether [`run`](Server::run) prepares process titles (default yes; see
    /// [`proctitle::init`](crate::proctitle::init), which must run while the process
    /// has one thread). `false`: `ps` shows the command line as started.
    pub fn process_titles(mut self, on: bool) -> Server {
        self.process_titles = on;
        self
    }

    /// Whether services' sandboxes are entered (default on; `--no-sandbox`).
    pub fn sandbox(mut self, on: bool) -> Server {
        self.sandbox = on;
        self
    }

    /// Whether a sandbox also installs its seccomp filter (default off; `--seccomp`;
    /// see [`crate::sandbox`] for why).
    pub fn seccomp(mut self, on: bool) -> Server {
        self.seccomp = on;
        self
    }

    /// How SIGHUP re-reads the configuration (none: SIGHUP logs that there is
    /// nothing to reload).
    pub fn reloader(mut self, r: Option<Reloader>) -> Server {
        self.reloader = r;
        self
    }

    /// The control socket's path (`forkserve ctl`); None: no control socket.
    pub fn control(mut self, path: Option<PathBuf>) -> Server {
        self.control = path;
        self
    }

    /// Serves Prometheus text at `GET /metrics` on this address.
    pub fn metrics_listen(mut self, addr: Option<ListenAddr>) -> Server {
        self.metrics_listen = addr;
        self
    }

    /// The command line to re-execute on a binary upgrade (SIGUSR2), captured
    /// before the process title overwrote it, and the arguments the new binary is
    /// first run with to check that it starts (default `--version`).
    pub fn upgrade_argv(mut self, argv: Vec<OsString>, check: Vec<OsString>) -> Server {
        self.argv = argv;
        self.upgrade_check = check;
        self
    }

    /// Binds every listener (or takes them from systemd), then runs the master until
    /// SIGTERM/SIGINT/SIGQUIT. Returns after a clean shutdown.
    pub fn run(mut self) -> Result<(), Error> {
        if let Some(name) = &self.name {
            crate::proctitle::set_name(name);
        }
        if self.process_titles {
            crate::proctitle::init();
        }
        if self.setup_logging {
            // Err only when a logger is installed already: the program's own.
            let _ = crate::logging::init(0, false);
        }
        self.prepare_sandboxes()?;
        master::run(self)
    }

    /// Compiles every sandbox policy before the first fork, or drops them all under
    /// `--no-sandbox`.
    fn prepare_sandboxes(&mut self) -> Result<(), Error> {
        let on = self.sandbox;
        let mut any = false;
        for svc in &mut self.services {
            let companions = svc.companions.iter_mut().map(|c| (&c.name, &mut c.sandbox));
            for (name, policy) in std::iter::once((&svc.name, &mut svc.sandbox)).chain(companions) {
                if !on {
                    *policy = None;
                } else if let Some(p) = policy {
                    p.prepare().map_err(|e| Error::new(Error::OSERR, e))?;
                    log::debug!("{name}: sandbox: {}", p.describe());
                    any = true;
                }
            }
        }
        if any {
            crate::sandbox::check_support(self.seccomp)
                .map_err(|e| Error::new(Error::UNAVAILABLE, e))?;
        } else if !on {
            log::info!("sandbox: off (--no-sandbox)");
        }
        Ok(())
    }
}

/// The control socket's default path: RUNDIR/control.sock.
pub fn default_control_path() -> Option<PathBuf> {
    control::default_path()
}

/// Raw descriptors of all listeners, for children to close.
pub(crate) fn raw_fds(listeners: &[Listener]) -> impl Iterator<Item = RawFd> + '_ {
    listeners.iter().map(|l| l.as_raw_fd())
}
