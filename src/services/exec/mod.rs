//! `forkserve exec`: run a program per connection, the super-server of tcpserver,
//! s6-ipcserver, socat's `fork` and inetd, on forkserve's master (limits, drain,
//! systemd activation, titles, reaper).
//!
//! - Stream connections: the program gets the socket as stdin and stdout and the
//!   UCSPI environment (`env.rs`). Under the fork model the master starts it
//!   itself with posix_spawn ([`Spawner`]; `--start fork` forks a worker that
//!   execs instead); under the other models a server process starts it and waits.
//! - Datagrams (inetd's `dgram nowait`): a worker per datagram starts the program
//!   with the datagram as stdin and sends what it writes to stdout back as one
//!   reply.
//! - stderr goes to forkserve's log through a relay companion (`relay.rs`), or is
//!   inherited (`--stderr inherit`).
//! - `--rules FILE` admits or refuses clients (`rules.rs`); `--resolve` names
//!   hosts from /etc/hosts (`hosts.rs`); both are re-read on SIGHUP.

mod env;
mod hosts;
mod relay;
mod rules;

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};

use crate::addr::ListenAddr;
use crate::handler::{Connection, Context, DatagramHandler, Model, Reply, StreamHandler};
use crate::peer::Peer;
use crate::server::{Companion, Error, RateLimitedLog, Service, Spawner};
use crate::sys;

use env::BaseEnv;
use hosts::Hosts;
use rules::{Rules, Verdict};

/// The largest reply a datagram program's output makes (a UDP datagram's
/// payload limit over IPv4); more is cut and logged.
pub const MAX_REPLY: usize = 65507;

/// Where programs' stderr goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StderrMode {
    /// forkserve's log, one line per line written, tagged with the service and pid
    Log,
    /// forkserve's own stderr, as tcpserver and s6-ipcserver do
    Inherit,
}

/// How the program starts for a stream connection under the fork model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StartMode {
    /// posix_spawn (clone with CLONE_VM|CLONE_VFORK) from the master
    Spawn,
    /// fork a worker that execs the program
    Fork,
}

/// The `exec` service's options (also keys of an `exec` table in `--config`).
#[derive(Args, Debug, Clone)]
pub struct ExecOpts {
    /// exec: access rules, lines `CIDR|uid=N|gid=N|* allow [VAR=VALUE…]` or `… deny`; the first match decides, no match denies; re-read on SIGHUP
    #[arg(long, value_name = "FILE", global = true)]
    pub rules: Option<PathBuf>,
    /// exec: set TCPREMOTEHOST and TCPLOCALHOST from /etc/hosts (never DNS); re-read on SIGHUP
    #[arg(long, global = true)]
    pub resolve: bool,
    /// exec: where the program's stderr goes
    #[arg(long, value_name = "WHERE", default_value = "log", global = true)]
    pub stderr: StderrMode,
    /// exec: how a stream connection's program starts under the fork model
    #[arg(long, value_name = "HOW", default_value = "spawn", global = true)]
    pub start: StartMode,
    /// exec: the program and its arguments, one --program each (the `program`
    /// array of a config file; on the command line, `forkserve exec -- PROGRAM ARGS`)
    #[arg(long = "program", value_name = "ARG", hide = true, global = true)]
    pub program: Vec<String>,
}

/// The `exec` subcommand's own arguments: the program to run.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The program to run and its arguments (after `--` when they start with `-`)
    #[arg(value_name = "PROGRAM", required = true, trailing_var_arg = true, num_args = 1..)]
    pub program: Vec<String>,
}

/// A program resolved at start-up: its path and its argv.
struct Program {
    path: CString,
    argv: Vec<CString>,
    shown: String,
}

impl Program {
    fn argv(&self) -> Vec<&CStr> {
        self.argv.iter().map(CString::as_c_str).collect()
    }
}

fn usage(msg: String) -> Error {
    Error::new(Error::USAGE, msg)
}

/// Finds `name` as execvp would (on PATH unless it has a slash) and checks that
/// it is an executable regular file: a usage error now beats one per connection.
fn resolve(name: &str) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path).map(|d| d.join(name)).collect()
    };
    let mut found_unusable = None;
    for c in &candidates {
        let Ok(meta) = std::fs::metadata(c) else {
            continue;
        };
        let cpath =
            CString::new(c.as_os_str().as_bytes()).map_err(|_| format!("{name}: NUL in path"))?;
        if !meta.is_file() {
            found_unusable.get_or_insert(format!("{}: not a regular file", c.display()));
        } else if !sys::executable(&cpath) {
            found_unusable.get_or_insert(format!("{}: not executable", c.display()));
        } else {
            return Ok(c.clone());
        }
    }
    Err(found_unusable.unwrap_or_else(|| {
        if name.contains('/') {
            format!("{name}: no such file")
        } else {
            format!("{name}: not found on PATH")
        }
    }))
}

fn program(args: &[String]) -> Result<Program, Error> {
    let name = args
        .first()
        .ok_or_else(|| usage("exec: no program given".into()))?;
    let path = resolve(name).map_err(|e| usage(format!("exec: {e}")))?;
    let c = |s: &str| CString::new(s).map_err(|_| usage(format!("exec: NUL in argument {s:?}")));
    Ok(Program {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| usage("exec: NUL in path".into()))?,
        argv: args.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
        shown: args.join(" "),
    })
}

/// A value re-read on SIGHUP: readers take the current one.
struct Reloadable<T>(Mutex<Arc<T>>);

impl<T> Reloadable<T> {
    fn new(v: T) -> Reloadable<T> {
        Reloadable(Mutex::new(Arc::new(v)))
    }
    fn get(&self) -> Arc<T> {
        Arc::clone(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn set(&self, v: T) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
    }
}

/// What every path that starts the program shares.
struct Exec {
    name: String,
    program: Program,
    env: BaseEnv,
    rules: Option<(PathBuf, Reloadable<Rules>)>,
    hosts: Option<Reloadable<Hosts>>,
    /// The relay's socket for the programs' stderr; None: inherit forkserve's.
    stderr: Option<UnixDatagram>,
    refusals: Mutex<RateLimitedLog>,
}

impl Exec {
    /// The rules' verdict on `peer`: the variables an allow rule adds, or None
    /// when the client is refused (logged, at most a line a second).
    fn admit(&self, peer: &Peer) -> Option<Vec<CString>> {
        let Some((_, rules)) = &self.rules else {
            return Some(Vec::new());
        };
        let rules = rules.get();
        match rules.check(peer) {
            Verdict::Allow { env, .. } => Some(env.iter().map(|(k, v)| env::var(k, v)).collect()),
            Verdict::Deny { line } => {
                let why = match line {
                    Some(l) => format!("{} line {l}", rules.path().display()),
                    None => format!("no rule in {} matches", rules.path().display()),
                };
                let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
                log.log(|more| {
                    let more = if more > 0 {
                        format!(" ({more} more denied since the last report)")
                    } else {
                        String::new()
                    };
                    log::info!("{}: denied {peer}: {why}{more}", self.name);
                });
                None
            }
        }
    }

    /// The variables for a stream connection (UCSPI, then the rule's), or None.
    fn stream_vars(&self, conn: BorrowedFd<'_>, peer: &Peer) -> Option<Vec<CString>> {
        let extra = self.admit(peer)?;
        let hosts = self.hosts.as_ref().map(Reloadable::get);
        let mut vars = env::for_stream(conn, peer, hosts.as_deref());
        vars.extend(extra);
        Some(vars)
    }

    /// The program's stderr: the relay's socket, or forkserve's stderr.
    fn with_stderr<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> R {
        match &self.stderr {
            Some(s) => f(s.as_fd()),
            None => f(io::stderr().as_fd()),
        }
    }

    fn stderr_stdio(&self) -> io::Result<Stdio> {
        Ok(match &self.stderr {
            Some(s) => Stdio::from(OwnedFd::from(s.try_clone()?)),
            None => Stdio::inherit(),
        })
    }

    /// A Command for the program (from a worker or a server process, which wait
    /// for it): exactly this environment, and SIGTERM if the starter dies.
    fn command(&self, vars: &[CString], stdin: Stdio, stdout: Stdio) -> io::Result<Command> {
        let mut cmd = Command::new(std::ffi::OsStr::from_bytes(self.program.path.as_bytes()));
        cmd.arg0(std::ffi::OsStr::from_bytes(self.program.argv[0].as_bytes()))
            .args(
                self.program.argv[1..]
                    .iter()
                    .map(|a| std::ffi::OsStr::from_bytes(a.as_bytes())),
            )
            .env_clear()
            .envs(self.env.with(vars).into_iter().map(env::split))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(self.stderr_stdio()?);
        sys::die_with_spawner(&mut cmd);
        Ok(cmd)
    }

    fn started(&self, what: io::Result<std::process::Child>) -> io::Result<std::process::Child> {
        what.map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", self.program.shown)))
    }

    fn judge(&self, status: std::process::ExitStatus) -> io::Result<()> {
        if status.success() {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "{}: {status}",
            self.program.shown
        )))
    }

    fn reload(&self) {
        if let Some((path, current)) = &self.rules {
            match Rules::load(path) {
                Ok(r) => {
                    log::info!(
                        "{}: rules reloaded from {}: {} rule(s)",
                        self.name,
                        path.display(),
                        r.count()
                    );
                    current.set(r);
                }
                Err(e) => log::error!("{}: {e}; keeping the previous rules", self.name),
            }
        }
        if let Some(current) = &self.hosts {
            match Hosts::load(Path::new(hosts::HOSTS_FILE)) {
                Ok(h) => current.set(h),
                Err(e) => log::error!("{}: {e}; keeping the previous host names", self.name),
            }
        }
    }
}

/// The stream handler: under the fork model (and inetd) the worker becomes the
/// program; under the others the server process starts it and waits.
struct ExecStream(Arc<Exec>);

impl StreamHandler for ExecStream {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        let exec = &self.0;
        let fd = conn.as_fd();
        let Some(vars) = exec.stream_vars(fd, conn.peer()) else {
            return Ok(());
        };
        if conn.context().model == Model::Fork {
            let env = exec.env.with(&vars);
            let err = exec.with_stderr(|stderr| {
                let fds = sys::ProgramFds {
                    stdin: fd,
                    stdout: fd,
                    stderr,
                };
                sys::exec(&exec.program.path, &exec.program.argv(), &env, fds)
            });
            return Err(io::Error::new(
                err.kind(),
                format!("exec {}: {err}", exec.program.shown),
            ));
        }
        let stdin = Stdio::from(fd.try_clone_to_owned()?);
        let stdout = Stdio::from(fd.try_clone_to_owned()?);
        let mut child = exec.started(exec.command(&vars, stdin, stdout)?.spawn())?;
        exec.judge(child.wait()?)
    }
}

/// The fork model's fast path: the master starts the program with posix_spawn.
struct ExecSpawn(Arc<Exec>);

impl Spawner for ExecSpawn {
    fn spawn(&self, conn: BorrowedFd<'_>, peer: &Peer, ctx: &Context) -> io::Result<Option<i32>> {
        let exec = &self.0;
        let Some(vars) = exec.stream_vars(conn, peer) else {
            return Ok(None);
        };
        if let Some(t) = ctx.idle_timeout {
            sys::set_io_timeout(conn, t)?;
        }
        let env = exec.env.with(&vars);
        exec.with_stderr(|stderr| {
            let fds = sys::ProgramFds {
                stdin: conn,
                stdout: conn,
                stderr,
            };
            sys::spawn(&exec.program.path, &exec.program.argv(), &env, fds)
        })
        .map(Some)
        .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", exec.program.shown)))
    }
}

/// inetd's `dgram nowait`: the datagram is the program's stdin; its stdout, up
/// to [`MAX_REPLY`] bytes, is the reply.
struct ExecDatagram(Arc<Exec>);

impl DatagramHandler for ExecDatagram {
    fn handle(&self, datagram: &[u8], reply: &Reply<'_>) -> io::Result<()> {
        let exec = &self.0;
        let Some(mut vars) = exec.admit(reply.peer()) else {
            return Ok(());
        };
        let hosts = exec.hosts.as_ref().map(Reloadable::get);
        let mut all = env::for_datagram(reply.peer(), &reply.context().local, hosts.as_deref());
        all.append(&mut vars);
        let stdin = sys::memfd_with(c"datagram", datagram)?;
        let mut child = exec.started(
            exec.command(&all, Stdio::from(stdin), Stdio::piped())?
                .spawn(),
        )?;
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut answer = Vec::new();
        (&mut out)
            .take(MAX_REPLY as u64 + 1)
            .read_to_end(&mut answer)?;
        let extra = io::copy(&mut out, &mut io::sink())?;
        drop(out);
        let status = child.wait()?;
        if answer.len() > MAX_REPLY {
            log::warn!(
                "{}: {} wrote {} bytes; the reply to {} is cut to {MAX_REPLY}",
                exec.name,
                exec.program.shown,
                answer.len() as u64 + extra,
                reply.peer()
            );
            answer.truncate(MAX_REPLY);
        }
        if !answer.is_empty() {
            reply.send(&answer)?;
        }
        exec.judge(status)
    }
}

/// True when this process was handed a single connection (`--inetd`, or systemd
/// Accept=yes): then no relay runs, and stderr is inherited.
fn one_connection(inetd: bool) -> bool {
    let passed_one = std::env::var("LISTEN_FDS").as_deref() == Ok("1")
        && std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
            == Some(sys::getpid());
    inetd
        || (passed_one
            && sys::socket_kind_of(3)
                .is_ok_and(|k| k.sock_type == libc::SOCK_STREAM && !k.listening))
}

/// True for datagram listeners; None when the address does not say (systemd:NAME).
fn is_datagram(a: &ListenAddr) -> Option<bool> {
    match a {
        ListenAddr::Udp(_) | ListenAddr::UnixGram(_) => Some(true),
        ListenAddr::Systemd(_) => None,
        _ => Some(false),
    }
}

/// Whether the service is a datagram one: from its addresses, else from the
/// sockets systemd passed.
fn datagram_service(addrs: &[ListenAddr]) -> Result<bool, Error> {
    let mut kinds: Vec<bool> = addrs.iter().filter_map(is_datagram).collect();
    if kinds.len() < addrs.len() || addrs.is_empty() {
        let n = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
            .unwrap_or(0);
        kinds.extend(
            (3..3 + n)
                .filter_map(|fd| sys::socket_kind_of(fd).ok())
                .map(|k| k.sock_type == libc::SOCK_DGRAM),
        );
    }
    match (kinds.iter().any(|&d| d), kinds.iter().any(|&d| !d)) {
        (true, true) => Err(usage(
            "exec: stream and datagram listeners cannot be mixed (run two forkserve exec)".into(),
        )),
        (d, _) => Ok(d),
    }
}

/// Under socket activation with no `-l`, every socket systemd passed, by name
/// (`unknown` for unnamed ones, as systemd-socket-activate passes them): the one
/// service takes them all.
fn passed_sockets() -> Vec<ListenAddr> {
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names: Vec<&str> = names
        .split(':')
        .chain(std::iter::repeat(""))
        .take(n)
        .collect();
    for name in names.iter_mut().filter(|n| n.is_empty()) {
        *name = "unknown";
    }
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| ListenAddr::Systemd(n.to_string()))
        .collect()
}

/// Builds the `exec` service from its options and listen addresses. Usage errors
/// (no program, not executable, mixed socket types) and a bad rules file come
/// back before anything is bound.
pub fn service(
    args: &ExecOpts,
    program_argv: &[String],
    addrs: Vec<ListenAddr>,
    inetd: bool,
) -> Result<Service, Error> {
    let name = "exec";
    let program = program(program_argv)?;
    let addrs = if addrs.is_empty() {
        passed_sockets()
    } else {
        addrs
    };
    let datagram = datagram_service(&addrs)?;
    let rules = match &args.rules {
        Some(path) => {
            let r = Rules::load(path).map_err(|e| Error::new(Error::CONFIG, e))?;
            log::info!("{name}: {} rule(s) from {}", r.count(), path.display());
            Some((path.clone(), Reloadable::new(r)))
        }
        None => None,
    };
    let hosts = args.resolve.then(|| {
        Reloadable::new(
            Hosts::load(Path::new(hosts::HOSTS_FILE)).unwrap_or_else(|e| {
                log::warn!("{name}: --resolve: {e}; no host names until SIGHUP");
                Hosts::default()
            }),
        )
    });
    let relay =
        if args.stderr == StderrMode::Log && !one_connection(inetd) {
            Some(relay::pair().map_err(|e| {
                Error::new(Error::OSERR, format!("{name}: stderr relay socket: {e}"))
            })?)
        } else {
            None
        };
    let exec = Arc::new(Exec {
        name: name.to_string(),
        program,
        env: BaseEnv::from_process(),
        rules,
        hosts,
        stderr: relay
            .as_ref()
            .map(|p| p.writer.try_clone())
            .transpose()
            .map_err(|e| Error::new(Error::OSERR, format!("{name}: stderr relay socket: {e}")))?,
        refusals: Mutex::new(RateLimitedLog::default()),
    });
    let mut svc = if datagram {
        Service::datagram(name, ExecDatagram(Arc::clone(&exec)))
    } else {
        let svc = Service::stream(name, ExecStream(Arc::clone(&exec)));
        match args.start {
            StartMode::Spawn => svc.spawner(ExecSpawn(Arc::clone(&exec))),
            StartMode::Fork => svc,
        }
    };
    if let Some(pair) = relay {
        let reader = Arc::new(pair.reader);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*reader);
        let service = name.to_string();
        svc = svc.companion(
            Companion::new("stderr relay", move || relay::run(&reader, &service)).owns_fd(fd),
        );
    }
    if exec.rules.is_some() || exec.hosts.is_some() {
        let e = Arc::clone(&exec);
        svc = svc.on_reload(move || e.reload());
    }
    Ok(svc.listen_on(addrs))
}
