//! The `forkserve` command: parses arguments, builds the built-in services, runs
//! them. With no subcommand every built-in service runs on its default addresses.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

mod configured;
mod ctl;
mod docs;
mod loadgen;

use forkserve::listener::runtime_dir_as;
use forkserve::services::{Lang, chat, echo, exec, files, http, metrics, models, proxy, time};
use forkserve::{Error, ListenAddr, Model, Sandbox, Server, Service};

#[derive(Parser)]
#[command(
    name = "forkserve",
    version = env!("FORKSERVE_VERSION"),
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
    /// A UDP relay that emulates a slow, lossy link (for tests and bench/)
    #[command(hide = true)]
    Impair(forkserve::impair::ImpairArgs),
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
    /// Print the man page (roff), or write every page into --dir DIR
    Manpage(docs::ManpageArgs),
    /// Print a completion script: bash, zsh or fish
    Completions {
        #[arg(value_enum)]
        shell: docs::Shell,
    },
    /// The reference handler under sequential, thread and fork at once (tcp:127.0.0.1:9001-9003;
    /// --listen models-sequential=ADDR, models-thread=ADDR, models-fork=ADDR)
    Models,
    /// Metrics collector and its HTTP API/dashboard (metrics=udp:127.0.0.1:8125,
    /// unixgram:RUNDIR/metrics.sock; metrics-http=tcp:127.0.0.1:8081, unix:RUNDIR/metrics-http.sock)
    Metrics,
    /// Send this host's CPU, memory, TCP connections and load to a metrics collector
    MetricsAgent(metrics::agent::AgentArgs),
    /// HTTP forward proxy with a disk cache, access lists and CONNECT (default
    /// tcp:127.0.0.1:3128, unix:RUNDIR/proxy.sock; loopback clients only unless --allow-clients)
    Proxy,
    /// Check a configuration file and print the effective configuration (78 on error)
    CheckConfig { file: std::path::PathBuf },
    /// Talk to a running server's control socket: status, services, children, reload, upgrade, drain, resume, set
    Ctl(ctl::CtlArgs),
}

impl Command {
    /// The built-in service this subcommand runs (None: a tool, not a service).
    fn service(&self) -> Option<&'static str> {
        match self {
            Command::Echo => Some("echo"),
            Command::Time => Some("time"),
            Command::Bench(_) => None,
            Command::Files { .. } => Some("files"),
            Command::FilesGet(_) | Command::Impair(_) => None,
            Command::Chat => Some("chat"),
            Command::ChatPasswd { .. } => None,
            Command::Http => Some("http"),
            Command::Models => Some("models"),
            Command::Exec(_) => None,
            Command::Metrics => Some("metrics"),
            Command::MetricsAgent(_) => None,
            Command::Manpage(_) | Command::Completions { .. } => None,
            Command::Proxy => Some("proxy"),
            Command::CheckConfig { .. } | Command::Ctl(_) => None,
        }
    }
}

/// Runs the subcommands that are tools rather than services; None for services.
fn run_tool(command: &Command) -> Option<ExitCode> {
    match command {
        Command::Bench(args) => Some(loadgen::run(args)),
        Command::FilesGet(args) => Some(files::client::run(args)),
        Command::MetricsAgent(args) => Some(metrics::agent::run(args)),
        Command::Manpage(args) => Some(docs::manpage(Cli::command(), args)),
        Command::Completions { shell } => Some(docs::completions(Cli::command(), *shell)),
        Command::Ctl(args) => Some(ctl::run(args)),
        Command::CheckConfig { file } => Some(match configured::check(file) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("forkserve check-config: {e}");
                ExitCode::from(e.code as u8)
            }
        }),
        Command::Impair(args) => Some(forkserve::impair::run(args)),
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
    /// Serve only sockets passed by systemd: with none, exit 69 instead of binding defaults
    #[arg(long, global = true)]
    socket_activated: bool,
    /// Run workers without their sandbox (Landlock, seccomp; see README, Sandbox)
    #[arg(long, global = true)]
    no_sandbox: bool,
    /// Also confine workers with a seccomp filter (off by default: at high fork
    /// rates it can wedge the kernel's BPF JIT; see README, Sandbox)
    #[arg(long, global = true, conflicts_with = "no_sandbox")]
    seccomp: bool,
    /// Log to the local syslog socket (facility daemon) instead of stderr
    #[arg(long, global = true)]
    syslog: bool,
    /// Format of log lines on stderr: text or json (one object a line). Under systemd the
    /// journal's native protocol is used instead, when stderr is the journal's stream
    #[arg(long, value_name = "FORMAT", default_value = "text", global = true)]
    log_format: forkserve::logging::Format,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings, -qq errors)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    /// Language of the texts users read (time, chat, http, models): en, or es (the reference's Spanish)
    #[arg(long, value_name = "LANG", default_value = "en", global = true)]
    lang: Lang,
    /// Read services and settings from a TOML file (the command line overrides it);
    /// SIGHUP re-reads it
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<std::path::PathBuf>,
    /// The control socket for `forkserve ctl` (default RUNDIR/control.sock)
    #[arg(long, value_name = "PATH", global = true)]
    control: Option<std::path::PathBuf>,
    /// Serve Prometheus text at GET /metrics on ADDR (tcp:HOST:PORT or unix:/PATH)
    #[arg(long, value_name = "ADDR", global = true)]
    metrics_listen: Option<String>,
    #[command(flatten)]
    files: files::FilesOpts,
    #[command(flatten)]
    chat: chat::ChatOpts,
    #[command(flatten)]
    http: http::HttpOpts,
    #[command(flatten)]
    metrics: metrics::MetricsOpts,
    #[command(flatten)]
    proxy: proxy::ProxyOpts,
    #[command(flatten)]
    exec: exec::ExecOpts,
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
        make: |_| {
            Ok(Some(
                Service::stream("echo", echo::Echo).sandbox(Sandbox::new()),
            ))
        },
    },
    Builtin {
        name: "time",
        defaults: |rt| {
            vec![
                "udp:127.0.0.1:8888".into(),
                format!("unixgram:{}/time.sock", rt.display()),
            ]
        },
        make: |o| {
            let policy = Sandbox::new().local_time();
            Ok(Some(
                Service::datagram("time", time::Time::new(o.lang)).sandbox(policy),
            ))
        },
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
                Service::stream("http", h)
                    .idle_timeout(Some(http::DEFAULT_IDLE_TIMEOUT))
                    .sandbox(Sandbox::new().local_time()),
            ))
        },
    },
    Builtin {
        name: "metrics",
        defaults: |rt| {
            vec![
                "udp:127.0.0.1:8125".into(),
                format!("unixgram:{}/metrics.sock", rt.display()),
            ]
        },
        make: |o| metrics::make("metrics", &o.metrics, &o.http, &o.listen, o.user.as_deref()),
    },
    Builtin {
        name: "metrics-http",
        defaults: |rt| {
            vec![
                "tcp:127.0.0.1:8081".into(),
                format!("unix:{}/metrics-http.sock", rt.display()),
            ]
        },
        make: |o| {
            metrics::make(
                "metrics-http",
                &o.metrics,
                &o.http,
                &o.listen,
                o.user.as_deref(),
            )
        },
    },
    Builtin {
        name: "proxy",
        defaults: |rt| {
            vec![
                "tcp:127.0.0.1:3128".into(),
                format!("unix:{}/proxy.sock", rt.display()),
            ]
        },
        make: |o| {
            let rt = runtime_dir_as(o.user.as_deref()).map_err(|e| Error::new(Error::OSERR, e))?;
            proxy::service(&o.proxy, &rt, o.user.as_deref()).map(Some)
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

/// Parses an address; `unix:RUNDIR/…` and `unixgram:RUNDIR/…` name a file in the
/// runtime directory (the one the default sockets use, also under --user).
fn parse_addr(s: &str, run_as: Option<&str>) -> Result<ListenAddr, Error> {
    let expanded = match s.split_once(":RUNDIR/") {
        Some((scheme, file)) if scheme == "unix" || scheme == "unixgram" => {
            let rt = runtime_dir_as(run_as).map_err(|e| Error::new(Error::OSERR, e))?;
            format!("{scheme}:{}/{file}", rt.display())
        }
        _ => s.to_string(),
    };
    expanded
        .parse()
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
    let model = models::fixed_model(svc.name())
        .or_else(|| metrics::fixed_model(svc.name()))
        .unwrap_or(opts.model);
    let per_source = opts.max_per_source.or(svc.get_max_per_source());
    let svc = if idle.is_some() {
        svc.idle_timeout(idle)
    } else {
        svc
    };
    Ok(svc
        .model(model)
        .max_children(opts.max_children)
        .max_per_source(per_source)
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
    (b.defaults)(&rt)
        .iter()
        .map(|a| parse_addr(a, None))
        .collect()
}

/// The server-wide settings of `opts` (both the command line and `--config`).
fn server_settings(opts: &ServeOpts) -> Result<Server, Error> {
    let mode = u32::from_str_radix(opts.socket_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            usage(format!(
                "--socket-mode {}: expected an octal mode like 0660",
                opts.socket_mode
            ))
        })?;
    let systemd = forkserve::systemd::socket_activated() || opts.inetd;
    if opts.socket_activated && !systemd {
        return Err(Error::new(
            Error::UNAVAILABLE,
            "--socket-activated: no sockets passed by systemd (no socket unit of this \
             service is active); enable one to choose a service, e.g. \
             systemctl enable --now forkserve-echo.socket",
        ));
    }
    if opts.user.is_some() && !systemd && std::env::var_os("RUNTIME_DIRECTORY").is_some() {
        // Run as root with --user: a given runtime directory becomes the user's
        // before anything is bound in it (the master, as the user, removes the
        // files). The default one is made for the user where it is used.
        runtime_dir_as(opts.user.as_deref()).map_err(|e| Error::new(Error::OSERR, e))?;
    }
    let metrics = opts
        .metrics_listen
        .as_deref()
        .map(|a| parse_addr(a, opts.user.as_deref()))
        .transpose()?;
    Ok(Server::new()
        .drain_timeout(secs("--drain-timeout", opts.drain_timeout)?)
        .socket_mode(mode)
        .ready_fd(opts.ready_fd)
        .user(opts.user.clone(), opts.group.clone())
        .inetd(opts.inetd)
        .sandbox(!opts.no_sandbox)
        .seccomp(opts.seccomp)
        .control(opts.control.clone())
        .metrics_listen(metrics))
}

fn build(cli: &Cli, argv: &[OsString]) -> Result<Server, Error> {
    let opts = &cli.opts;
    if let Some(path) = &opts.config {
        return configured::server(cli, path, argv);
    }
    let systemd = forkserve::systemd::socket_activated() || opts.inetd;
    let mut server = server_settings(opts)?.upgrade_argv(argv.to_vec(), vec!["--version".into()]);
    if let Some(Command::Exec(args)) = &cli.command {
        let addrs = opts
            .listen
            .iter()
            .map(|a| parse_addr(a, opts.user.as_deref()))
            .collect::<Result<_, _>>()?;
        if opts.listen.is_empty() && !systemd {
            return Err(usage(
                "exec: give at least one -l ADDR (or run under systemd socket activation)",
            ));
        }
        let svc = exec::service(&opts.exec, &args.program, addrs, opts.inetd)?;
        return Ok(server.service(configure(svc, opts)?));
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
    let run_as = opts.user.as_deref();
    let mut given: Vec<(Option<String>, ListenAddr)> = Vec::new();
    for l in &opts.listen {
        match l.split_once('=') {
            Some((name, addr)) if !name.contains(':') => {
                if !BUILTINS.iter().any(|b| b.name == name) {
                    let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
                    return Err(usage(format!(
                        "--listen {l}: no service named '{name}' (services: {})",
                        names.join(", ")
                    )));
                }
                given.push((Some(name.to_string()), parse_addr(addr, run_as)?));
            }
            _ if chosen.len() == 1 => given.push((None, parse_addr(l, run_as)?)),
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
    // Kept for a binary upgrade: the process title overwrites argv later.
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&argv) {
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
    let log = forkserve::logging::Config {
        verbosity,
        syslog: cli.opts.syslog,
        format: cli.opts.log_format,
    };
    if let Err(e) = forkserve::logging::init_with(&log) {
        eprintln!("forkserve: {e}");
        return ExitCode::from(Error::UNAVAILABLE as u8);
    }
    forkserve::proctitle::init();
    let result = build(&cli, &argv).and_then(Server::run);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks over every subcommand and option: two
    /// options with one name (services add global options) fail here, not at run
    /// time.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
