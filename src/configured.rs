//! Services from a configuration file (`--config FILE`, `forkserve check-config`):
//! each `[[service]]` table names a kind, which is a built-in of `main.rs`
//! ([`BUILTINS`](super::BUILTINS); `models` is `models-fork` under the table's name),
//! and its keys are the long options that built-in already reads. The top-level
//! keys come first, the table's next, the command line's last, so the command line
//! overrides the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;
use forkserve::config::{ConfigError, ConfigFile, ServiceTable};
use forkserve::server::{Planned, Reloader};
use forkserve::{Error, Server, Service};

use super::{BUILTINS, Builtin, Cli, ServeOpts, addresses, configure, server_settings};
use forkserve::services::exec;

/// Keys a reload applies in place, without rebuilding the service.
const LIMITS: [&str; 2] = ["max_children", "max_per_source"];

/// The options of one service: the file's and then the command line's.
#[derive(Parser)]
#[command(
    name = "forkserve",
    args_override_self = true,
    disable_version_flag = true
)]
struct OptsOnly {
    #[command(flatten)]
    opts: ServeOpts,
}

fn config_error(e: ConfigError) -> Error {
    Error::new(Error::CONFIG, e.to_string())
}

/// The kind that runs a program (`program = [...]`): not a built-in, since its
/// handler (stream or datagram) follows from its addresses.
const EXEC: &str = "exec";

/// The built-in a kind names.
fn builtin(kind: &str) -> Option<&'static Builtin> {
    let name = if kind == "models" {
        "models-fork"
    } else {
        kind
    };
    BUILTINS.iter().find(|b| b.name == name)
}

/// The kinds a configuration may name.
fn kinds() -> String {
    let mut k: Vec<&str> = BUILTINS
        .iter()
        .map(|b| b.name)
        .filter(|n| !n.starts_with("models-"))
        .collect();
    k.push("models");
    k.push(EXEC);
    k.join(", ")
}

/// The command line without `--config FILE` (it overrides the file).
pub fn overrides(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--config" {
            it.next();
        } else if !a.to_string_lossy().starts_with("--config=") {
            out.push(a.clone());
        }
    }
    out
}

/// Parses the options `args` spell; on error, finds which key of `table` is at
/// fault (each is tried alone after the others that parse).
fn parse_opts(
    file: &ConfigFile,
    s: Option<&ServiceTable>,
    args: &[OsString],
) -> Result<ServeOpts, Error> {
    match OptsOnly::try_parse_from(
        std::iter::once(OsString::from("forkserve")).chain(args.iter().cloned()),
    ) {
        Ok(o) => Ok(o.opts),
        Err(e) => {
            let msg = e.to_string();
            let msg = msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_string();
            let tables = [(None, &file.global)]
                .into_iter()
                .chain(s.map(|s| (Some(s.index), &s.options)));
            for (index, table) in tables {
                for (key, value) in table {
                    let one: toml::Table = [(key.clone(), value.clone())].into_iter().collect();
                    let argv = file.options_as_args(index, &one).map_err(config_error)?;
                    if OptsOnly::try_parse_from(
                        std::iter::once("forkserve".to_string()).chain(argv),
                    )
                    .is_err()
                    {
                        return Err(config_error(file.error(index, key, msg)));
                    }
                }
            }
            Err(Error::new(Error::USAGE, msg))
        }
    }
}

/// The long options of the file's `tables` (top level: `None`), in order, then
/// the command line's.
fn args_of(
    file: &ConfigFile,
    tables: &[(Option<usize>, &toml::Table)],
    cli: &[OsString],
) -> Result<Vec<OsString>, Error> {
    let mut args = Vec::new();
    for (index, table) in tables {
        let spelled = file.options_as_args(*index, table).map_err(config_error)?;
        args.extend(spelled.into_iter().map(OsString::from));
    }
    args.extend(cli.iter().cloned());
    Ok(args)
}

/// The whole argument list of service `s`: file globals, its table, overrides.
fn service_args(
    file: &ConfigFile,
    s: &ServiceTable,
    cli: &[OsString],
) -> Result<Vec<OsString>, Error> {
    args_of(
        file,
        &[(None, &file.global), (Some(s.index), &s.options)],
        cli,
    )
}

/// The server-wide options: the file's top level, then the command line.
pub fn global_opts(file: &ConfigFile, cli: &[OsString]) -> Result<ServeOpts, Error> {
    parse_opts(file, None, &args_of(file, &[(None, &file.global)], cli)?)
}

/// Every service of `path`, ready to be built (checked: kinds, options).
/// `systemd`: socket-activated, so a service without `listen` takes the sockets
/// named after it.
pub fn plan(path: &Path, cli: &[OsString], systemd: bool) -> Result<Vec<Planned>, Error> {
    let file = ConfigFile::load(path).map_err(config_error)?;
    let mut planned = Vec::new();
    for s in &file.services {
        let b = builtin(&s.kind);
        if b.is_none() && s.kind != EXEC {
            return Err(config_error(file.error(
                Some(s.index),
                "kind",
                format!("unknown kind '{}' (kinds: {})", s.kind, kinds()),
            )));
        }
        let args = service_args(&file, s, cli)?;
        let opts = parse_opts(&file, Some(s), &args)?;
        let fingerprint = format!(
            "{}|{}",
            file.fingerprint(s, &LIMITS),
            cli.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let (name, listen, user) = (s.name.clone(), s.listen.clone(), opts.user.clone());
        let where_ = file.error(Some(s.index), "kind", "");
        planned.push(Planned {
            name: s.name.clone(),
            fingerprint: fingerprint.clone(),
            max_children: opts.max_children,
            max_per_source: opts.max_per_source,
            build: Box::new(move || {
                let opts = OptsOnly::try_parse_from(
                    std::iter::once(OsString::from("forkserve")).chain(args),
                )
                .map_err(|e| Error::new(Error::CONFIG, e.to_string()))?
                .opts;
                let at = |e: Error| {
                    let place = where_.to_string();
                    let place = place.trim_end_matches(": ");
                    Error::new(e.code, format!("{place}: {}", e.message))
                };
                let Some(b) = b else {
                    // exec: its addresses decide its handler; with none it takes
                    // the sockets systemd passed.
                    let addrs = listen.clone();
                    let svc = exec::service(&opts.exec, &opts.exec.program, addrs, opts.inetd)
                        .map_err(at)?;
                    return Ok(configure(svc.rename(&name), &opts)
                        .map_err(at)?
                        .fingerprint(fingerprint));
                };
                let svc: Service = (b.make)(&opts).map_err(at)?.ok_or_else(|| {
                    at(Error::new(
                        Error::CONFIG,
                        format!(
                            "the {} kind needs more options (see forkserve --help)",
                            b.name
                        ),
                    ))
                })?;
                let addrs = addresses(b, &listen, systemd, user.as_deref()).map_err(at)?;
                let svc = svc.rename(&name).listen_on(addrs);
                Ok(configure(svc, &opts).map_err(at)?.fingerprint(fingerprint))
            }),
        });
    }
    Ok(planned)
}

/// `--config FILE`: the services of the file, reloaded on SIGHUP.
pub fn server(cli: &Cli, path: &Path, argv: &[OsString]) -> Result<Server, Error> {
    if cli.command.is_some() || !cli.opts.listen.is_empty() {
        return Err(Error::new(
            Error::USAGE,
            "--config: services and their addresses come from the file (no subcommand, no --listen)",
        ));
    }
    let overrides = overrides(argv);
    let file = ConfigFile::load(path).map_err(config_error)?;
    let mut server = server_settings(&global_opts(&file, &overrides)?)?;
    let activated = forkserve::systemd::socket_activated();
    for p in plan(path, &overrides, activated)? {
        server = server.service((p.build)()?);
    }
    let check = vec!["check-config".into(), path.as_os_str().to_owned()];
    Ok(server
        .reloader(Some(reloader(path.to_path_buf(), overrides, activated)))
        .upgrade_argv(argv.to_vec(), check))
}

/// The reloader a `--config` server re-reads its file with (`systemd` as at the
/// start: the environment that told it is gone by then).
pub fn reloader(path: PathBuf, cli: Vec<OsString>, systemd: bool) -> Reloader {
    Box::new(move || plan(&path, &cli, systemd))
}

/// `forkserve check-config FILE`: validates it and prints the effective
/// configuration; 78 with the file, line and key of the first error.
pub fn check(path: &Path) -> Result<String, Error> {
    let cli: Vec<OsString> = Vec::new();
    let file = ConfigFile::load(path).map_err(config_error)?;
    let g = global_opts(&file, &cli)?;
    let mut out = format!(
        "# {}: {} service(s)\ndrain_timeout = {}\nsocket_mode = \"{}\"\n",
        path.display(),
        file.services.len(),
        g.drain_timeout,
        g.socket_mode
    );
    if let Some(u) = &g.user {
        out.push_str(&format!("user = \"{u}\"\n"));
    }
    if let Some(m) = &g.metrics_listen {
        out.push_str(&format!("metrics_listen = \"{m}\"\n"));
    }
    let systemd = forkserve::systemd::socket_activated();
    for (p, s) in plan(path, &cli, systemd)?.into_iter().zip(&file.services) {
        let svc = (p.build)()?;
        let addrs: Vec<String> = svc.addrs().iter().map(|a| format!("\"{a}\"")).collect();
        let extra: Vec<String> = s
            .options
            .iter()
            .filter(|(k, _)| !["model", "max_children", "max_per_source"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        out.push_str(&format!(
            "\n[[service]]\nname = \"{}\"\nkind = \"{}\"\nlisten = [{}]\nmodel = \"{}\"\nmax_children = {}\n{}\n{}",
            svc.name(),
            s.kind,
            addrs.join(", "),
            svc.get_model(),
            p.max_children,
            p.max_per_source.map_or(
                "# max_per_source not set: the fair share".to_string(),
                |n| format!("max_per_source = {n}")
            ),
            extra.concat()
        ));
    }
    Ok(out)
}
