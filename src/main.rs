//! The `forkserve` command: parses arguments, builds the built-in services, runs
//! them. With no subcommand every built-in service runs on its default addresses.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod loadgen;

use forkserve::listener::runtime_dir_as;
use forkserve::services::{Lang, chat, echo, exec, files, http, models, time};
use forkserve::{Error, ListenAddr, Model, Server, Service};

#[derive(Parser)]
#[command(
    name = "forkserve",
    version,
    about = "A process-per-connection Unix server: one forked child per connection, built-in services, systemd socket activation",
    after_help = "Addresses: tcp:HOST:PORT  tcp:[::1]:PORT  udp:HOST:PORT  unix:/PATH  unix:@NAME  unixgram:/PATH  systemd:NAME\n\
                  With no subcommand every built-in service runs; --listen then takes SERVICE=ADDR."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: ServeOpts,
}

#[derive(Subcommand)]
enum Command {
    /// Uppercase echo over stream sockets (default tcp:127.0.0.1:9999, unix:RUNDIR/echo.sock)
    Echo,
    /// Server time over datagram sockets (default udp:127.0.0.1:8888, unixgram:RUNDIR/time.sock)
    Time,
    /// Load generator: connections/s, requests/s, latency and errors of a server
    Bench(loadgen::BenchArgs),
    /// Files of one directory over datagram sockets (default udp:127.0.0.1:6969, unixgram:RUNDIR/files.sock)
    Files {
        /// The directory whose regular files are served
        #[arg(long, value_name = "DIR")]
        root: std::path::PathBuf,
    },
    /// Fetch a file from the file service: files-get ADDR NAME [-o OUT]
    FilesGet(files::client::GetArgs),
    /// Chat with rooms, history and a broker process (default tcp:127.0.0.1:7777, unix:RUNDIR/chat.sock)
    Chat,
    /// Read a password on stdin and print its Argon2 hash for a chat --users file
    ChatPasswd {
        /// Print a whole users-file line NAME:HASH
        name: Option<String>,
        /// With NAME: mark the user as an admin (NAME:HASH:admin)
        #[arg(long, requires = "name")]
        admin: bool,
    },
    /// HTTP/1.1: /, /time, /info, /echo/TEXT (default tcp:127.0.0.1:8080, unix:RUNDIR/http.sock)
    Http,
    /// Run PROGRAM for each connection or datagram, with the UCSPI environment:
    /// exec -l ADDR [-l ADDR…] [--rules FILE] -- PROGRAM [ARGS…]
    Exec(exec::ExecArgs),
    /// The reference handler under sequential, thread and fork at once (tcp:127.0.0.1:9001-9003;
    /// --listen models-sequential=ADDR, models-thread=ADDR, models-fork=ADDR)
    Models,
}

impl Command {
    /// The built-in service this subcommand runs (None: a tool, not a service).
    fn service(&self) -> Option<&'static str> {
        match self {
            Command::Echo => Some("echo"),
            Command::Time => Some("time"),
            Command::Bench(_) => None,
            Command::Files { .. } => Some("files"),
            Command::FilesGet(_) => None,
            Command::Chat => Some("chat"),
            Command::ChatPasswd { .. } => None,
            Command::Http => Some("http"),
            Command::Models => Some("models"),
            Command::Exec(_) => None,
        }
    }
}

/// Runs the subcommands that are tools rather than services; None for services.
fn run_tool(command: &Command) -> Option<ExitCode> {
    match command {
        Command::Bench(args) => Some(loadgen::run(args)),
        Command::FilesGet(args) => Some(files::client::run(args)),
        Command::Files { root } => {
            files::use_root(root.clone());
            None
        }
        Command::ChatPasswd { name, admin } => {
            Some(match chat::chat_passwd(name.as_deref(), *admin) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("forkserve chat-passwd: {e}");
                    ExitCode::from(Error::USAGE as u8)
                }
            })
        }
        _ => None,
    }
}

#[derive(Args)]
struct ServeOpts {
    /// Listen on ADDR (repeatable); without a subcommand: SERVICE=ADDR
    #[arg(short, long = "listen", value_name = "ADDR", global = true)]
    listen: Vec<String>,
    /// fork (one child per connection), thread, sequential or prefork
    #[arg(long, value_name = "MODEL", default_value = "fork", global = true)]
    model: Model,
    /// Connections (or datagrams) served at once per service
    #[arg(long, value_name = "N", default_value_t = 40, global = true)]
    max_children: usize,
    /// At most N at once per peer IP (TCP/UDP) or peer uid (Unix sockets); 0: no limit.
    /// Default: the last quarter of --max-children is kept for sources holding fewer
    #[arg(long, value_name = "N", global = true)]
    max_per_source: Option<usize>,
    /// Close a connection whose client has been silent SECS seconds
    #[arg(long, value_name = "SECS", global = true)]
    idle_timeout: Option<f64>,
    /// On SIGTERM, let connections finish for SECS seconds before ending them
    #[arg(long, value_name = "SECS", default_value_t = 10.0, global = true)]
    drain_timeout: f64,
    /// Mode of Unix socket files, in octal
    #[arg(long, value_name = "MODE", default_value = "0660", global = true)]
    socket_mode: String,
    /// Write a newline to fd N once every listener is bound (s6 readiness)
    #[arg(long, value_name = "N", global = true)]
    ready_fd: Option<i32>,
    /// Prefork model: number of long-lived workers
    #[arg(long, value_name = "N", default_value_t = 4, global = true)]
    workers: usize,
    /// Prefork model: replace a worker after it served N connections
    #[arg(long, value_name = "N", global = true)]
    max_requests: Option<u64>,
    /// Prefork model: grow the pool up to N workers while every worker is busy
    /// and clients wait (default: --workers, a fixed pool)
    #[arg(long, value_name = "N", global = true)]
    max_workers: Option<usize>,
    /// Fork model: keep N one-shot workers forked ahead of their connections
    #[arg(long, value_name = "N", default_value_t = 0, global = true)]
    spare: usize,
    /// Serve one connection on stdin/stdout (inetd, systemd StandardInput=socket)
    #[arg(long, global = true)]
    inetd: bool,
    /// Run as USER after binding the sockets
    #[arg(long, value_name = "USER", global = true)]
    user: Option<String>,
    /// Run as GROUP (default: the user's group)
    #[arg(long, value_name = "GROUP", global = true)]
    group: Option<String>,
    /// Log to the local syslog socket (facility daemon) instead of stderr
    #[arg(long, global = true)]
    syslog: bool,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings, -qq errors)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    /// Language of the texts users read (time, chat, http, models): en, or es (the reference's Spanish)
    #[arg(long, value_name = "LANG", default_value = "en", global = true)]
    lang: Lang,
    #[command(flatten)]
    files: files::FilesOpts,
    #[command(flatten)]
    chat: chat::ChatOpts,
    #[command(flatten)]
    http: http::HttpOpts,
}

/// A built-in service: its name, default addresses, and how to make it (`None`:
/// skipped in plain `forkserve`, with a log line saying why).
struct Builtin {
    name: &'static str,
    defaults: fn(&Path) -> Vec<String>,
    make: fn(&ServeOpts) -> Result<Option<Service>, Error>,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "echo",
        defaults: |rt| {
            vec![
                "tcp:127.0.0.1:9999".into(),
                format!("unix:{}/echo.sock", rt.display()),
            ]
        },
        make: |_| Ok(Some(Service::stream("echo", echo::Echo))),
    },
    Builtin {
        name: "time",
        defaults: |rt| {
            vec![
                "udp:127.0.0.1:8888".into(),
                format!("unixgram:{}/time.sock", rt.display()),
            ]
        },
        make: |o| Ok(Some(Service::datagram("time", time::Time::new(o.lang)))),
    },
    Builtin {
        name: "files",
        defaults: |rt| {
            vec![
                "udp:127.0.0.1:6969".into(),
                format!("unixgram:{}/files.sock", rt.display()),
            ]
        },
        make: |o| files::make(&o.files),
    },
    Builtin {
        name: "chat",
        defaults: |rt| {
            vec![
                "tcp:127.0.0.1:7777".into(),
                format!("unix:{}/chat.sock", rt.display()),
            ]
        },
        make: |o| chat::service(&o.chat, o.user.as_deref(), o.lang).map(Some),
    },
    Builtin {
        name: "http",
        defaults: |rt| {
            vec![
                "tcp:127.0.0.1:8080".into(),
                format!("unix:{}/http.sock", rt.display()),
            ]
        },
        make: |o| {
            let h = http::Http::new(o.http.max_requests_per_connection).lang(o.lang);
            Ok(Some(
                Service::stream("http", h).idle_timeout(Some(http::DEFAULT_IDLE_TIMEOUT)),
            ))
        },
    },
    Builtin {
        name: "models-sequential",
        defaults: |rt| models::defaults("models-sequential", rt),
        make: |o| Ok(Some(models::service("models-sequential", o.lang))),
    },
    Builtin {
        name: "models-thread",
        defaults: |rt| models::defaults("models-thread", rt),
        make: |o| Ok(Some(models::service("models-thread", o.lang))),
    },
    Builtin {
        name: "models-fork",
        defaults: |rt| models::defaults("models-fork", rt),
        make: |o| Ok(Some(models::service("models-fork", o.lang))),
    },
];

fn usage(msg: impl Into<String>) -> Error {
    Error::new(Error::USAGE, msg)
}

fn parse_addr(s: &str) -> Result<ListenAddr, Error> {
    s.parse()
        .map_err(|e: forkserve::addr::AddrError| usage(e.to_string()))
}

fn secs(what: &str, v: f64) -> Result<Duration, Error> {
    if !v.is_finite() || v < 0.0 {
        return Err(usage(format!(
            "{what}: expected a number of seconds, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Applies the shared options to a service. A service's own idle timeout stays
/// unless --idle-timeout is given; the models services keep their fixed model.
fn configure(svc: Service, opts: &ServeOpts) -> Result<Service, Error> {
    let idle = opts
        .idle_timeout
        .map(|t| secs("--idle-timeout", t))
        .transpose()?;
    let model = models::fixed_model(svc.name()).unwrap_or(opts.model);
    let svc = if idle.is_some() {
        svc.idle_timeout(idle)
    } else {
        svc
    };
    Ok(svc
        .model(model)
        .max_children(opts.max_children)
        .max_per_source(opts.max_per_source)
        .workers(opts.workers)
        .max_workers(opts.max_workers)
        .max_requests(opts.max_requests)
        .spare(opts.spare))
}

/// The addresses of one service: those given with --listen, else its defaults.
/// Under systemd activation with no --listen, none (it takes its named fds).
fn addresses(
    b: &Builtin,
    given: &[ListenAddr],
    systemd: bool,
    run_as: Option<&str>,
) -> Result<Vec<ListenAddr>, Error> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    if systemd {
        return Ok(Vec::new());
    }
    let rt = runtime_dir_as(run_as).map_err(|e| Error::new(Error::OSERR, e))?;
    (b.defaults)(&rt).iter().map(|a| parse_addr(a)).collect()
}

fn build(cli: &Cli) -> Result<Server, Error> {
    let opts = &cli.opts;
    let mode = u32::from_str_radix(opts.socket_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            usage(format!(
                "--socket-mode {}: expected an octal mode like 0660",
                opts.socket_mode
            ))
        })?;
    let systemd = std::env::var_os("LISTEN_FDS").is_some() || opts.inetd;
    if opts.user.is_some() && !systemd && std::env::var_os("RUNTIME_DIRECTORY").is_some() {
        // Run as root with --user: a given runtime directory becomes the user's
        // before anything is bound in it (the master, as the user, removes the
        // files). The default one is made for the user where it is used.
        runtime_dir_as(opts.user.as_deref()).map_err(|e| Error::new(Error::OSERR, e))?;
    }
    let mut server = Server::new()
        .drain_timeout(secs("--drain-timeout", opts.drain_timeout)?)
        .socket_mode(mode)
        .ready_fd(opts.ready_fd)
        .user(opts.user.clone(), opts.group.clone())
        .inetd(opts.inetd);
    if let Some(Command::Exec(args)) = &cli.command {
        let addrs = opts
            .listen
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<_, _>>()?;
        if opts.listen.is_empty() && !systemd {
            return Err(usage(
                "exec: give at least one -l ADDR (or run under systemd socket activation)",
            ));
        }
        return Ok(server.service(configure(exec::service(args, addrs, opts.inetd)?, opts)?));
    }
    let chosen: Vec<&Builtin> = match cli.command.as_ref().and_then(Command::service) {
        // A subcommand runs the built-in of its name, or its group NAME-* (models).
        Some(name) => BUILTINS
            .iter()
            .filter(|b| {
                b.name == name
                    || b.name
                        .strip_prefix(name)
                        .is_some_and(|r| r.starts_with('-'))
            })
            .collect(),
        None => BUILTINS.iter().collect(),
    };
    // --listen: ADDR for a single service; SERVICE=ADDR in any case.
    let mut given: Vec<(Option<String>, ListenAddr)> = Vec::new();
    for l in &opts.listen {
        match l.split_once('=') {
            Some((name, addr)) if !name.contains(':') => {
                if !BUILTINS.iter().any(|b| b.name == name) {
                    return Err(usage(format!("--listen {l}: no service named '{name}'")));
                }
                given.push((Some(name.to_string()), parse_addr(addr)?));
            }
            _ if chosen.len() == 1 => given.push((None, parse_addr(l)?)),
            _ => {
                return Err(usage(format!(
                    "--listen {l}: with several services, write SERVICE=ADDR (e.g. echo=tcp:127.0.0.1:9999)"
                )));
            }
        }
    }
    for b in chosen {
        let mine: Vec<ListenAddr> = given
            .iter()
            .filter(|(n, _)| n.as_deref().is_none_or(|n| n == b.name))
            .map(|(_, a)| a.clone())
            .collect();
        let Some(svc) = (b.make)(opts)? else {
            continue;
        };
        let svc = svc.listen_on(addresses(b, &mine, systemd, opts.user.as_deref())?);
        server = server.service(configure(svc, opts)?);
    }
    Ok(server)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                Error::USAGE as u8
            } else {
                0
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Some(code) = cli.command.as_ref().and_then(run_tool) {
        return code;
    }
    let verbosity = i32::from(cli.opts.verbose) - i32::from(cli.opts.quiet);
    if let Err(e) = forkserve::logging::init(verbosity, cli.opts.syslog) {
        eprintln!("forkserve: {e}");
        return ExitCode::from(Error::UNAVAILABLE as u8);
    }
    forkserve::proctitle::init();
    let result = build(&cli).and_then(Server::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in e.message.lines() {
                log::error!("{line}");
            }
            ExitCode::from(e.code as u8)
        }
    }
}
