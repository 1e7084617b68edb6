//! `forkserve ctl`: the client of the control socket. Sends one request line,
//! reads the JSON answer, prints it as tables (or as it is with `--json`).
//! `ctl upgrade` waits until the new image answers (or the old one reports why
//! the upgrade failed).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct CtlArgs {
    /// The control socket (default RUNDIR/control.sock)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the server's JSON answer instead of tables
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    request: CtlRequest,
}

#[derive(Subcommand)]
enum CtlRequest {
    /// The server and every service, with counters
    Status,
    /// The services: model, addresses, limit, state
    Services,
    /// Live children: pid, service, role, peer, age
    Children,
    /// Re-read the configuration file (as SIGHUP)
    Reload,
    /// Re-execute the binary in place (as SIGUSR2), and wait until it serves
    Upgrade,
    /// Stop accepting for SERVICE (clients wait in the backlog); running connections finish
    Drain { service: String },
    /// Accept again for SERVICE
    Resume { service: String },
    /// Change a limit: set SERVICE max-children=N (or max-per-source=N)
    Set { service: String, setting: String },
}

const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_NOPERM: u8 = 77;

fn request_line(r: &CtlRequest) -> String {
    match r {
        CtlRequest::Status => "status".into(),
        CtlRequest::Services => "services".into(),
        CtlRequest::Children => "children".into(),
        CtlRequest::Reload => "reload".into(),
        CtlRequest::Upgrade => "upgrade".into(),
        CtlRequest::Drain { service } => format!("drain {service}"),
        CtlRequest::Resume { service } => format!("resume {service}"),
        CtlRequest::Set { service, setting } => format!("set {service} {setting}"),
    }
}

fn ask(socket: &PathBuf, line: &str) -> Result<Value, (u8, String)> {
    let unavailable = |e: std::io::Error| {
        let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
            EX_NOPERM
        } else {
            EX_UNAVAILABLE
        };
        (code, format!("{}: {e}", socket.display()))
    };
    let mut s = UnixStream::connect(socket).map_err(unavailable)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unavailable)?;
    // A refused client may find the socket closed before it writes: the answer
    // may still be there to read.
    let wrote = s.write_all(format!("{line}\n").as_bytes());
    // A refusal is written and the socket closed before our request is read: the
    // answer comes, then a reset. Keep what came.
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if !bytes.is_empty() => break,
            Err(e) => return Err(unavailable(wrote.err().unwrap_or(e))),
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    if text.is_empty()
        && let Err(e) = wrote
    {
        return Err(unavailable(e));
    }
    if text.is_empty() {
        return Err((
            EX_UNAVAILABLE,
            format!("{}: closed without an answer", socket.display()),
        ));
    }
    serde_json::from_str(&text).map_err(|e| (EX_UNAVAILABLE, format!("bad answer: {e}")))
}

pub fn run(args: &CtlArgs) -> ExitCode {
    let Some(socket) = args
        .socket
        .clone()
        .or_else(forkserve::server::default_control_path)
    else {
        eprintln!("forkserve ctl: no runtime directory; give --socket PATH");
        return ExitCode::from(EX_USAGE);
    };
    let answer = ask(&socket, &request_line(&args.request)).and_then(|v| {
        if matches!(args.request, CtlRequest::Upgrade) && v["ok"] == true {
            wait_upgrade(&socket, v["upgrades"].as_u64().unwrap_or(0))
        } else {
            Ok(v)
        }
    });
    let v = match answer {
        Ok(v) => v,
        Err((code, msg)) => {
            eprintln!("forkserve ctl: {msg}");
            return ExitCode::from(code);
        }
    };
    if v["ok"] != true {
        let err = v["error"].as_str().unwrap_or("failed");
        eprintln!("forkserve ctl: {err}");
        let code = if err.starts_with("permission denied") {
            EX_NOPERM
        } else {
            EX_USAGE
        };
        return ExitCode::from(code);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", render(&args.request, &v));
    }
    ExitCode::SUCCESS
}

/// After `upgrade`: asks for the status until the upgrade count moved (the new
/// image answers) or the old image reports a failure.
fn wait_upgrade(socket: &PathBuf, before: u64) -> Result<Value, (u8, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        // While the image changes, the socket may be missing or refuse a moment.
        if let Ok(v) = ask(socket, "status") {
            if v["upgrades"].as_u64().unwrap_or(0) > before {
                return Ok(
                    serde_json::json!({"ok": true, "message": format!("upgraded: pid {} serves with the new binary", v["pid"])}),
                );
            }
            if let Some(e) = v["last_upgrade_error"].as_str() {
                return Err((
                    EX_UNAVAILABLE,
                    format!("upgrade failed, the old binary keeps serving: {e}"),
                ));
            }
        }
        if Instant::now() > deadline {
            return Err((
                EX_UNAVAILABLE,
                "no answer from the upgraded server within 30 s".into(),
            ));
        }
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn us(v: &Value) -> String {
    forkserve::server::quantile_text(v.as_u64())
}

fn render(r: &CtlRequest, v: &Value) -> String {
    let services = v["services"].as_array().cloned().unwrap_or_default();
    match r {
        CtlRequest::Status => {
            let mut out = format!(
                "forkserve pid {}, up {}s, {} upgrade(s), {} children, {} served\n\n",
                v["pid"], v["uptime_s"], v["upgrades"], v["children"], v["served"]
            );
            let rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    let c = &s["counters"];
                    let refused: u64 = c["refused"]
                        .as_object()
                        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
                    vec![
                        text(&s["name"]),
                        text(&s["state"]),
                        format!("{}/{}", s["active"], s["max_children"]),
                        text(&c["peak"]),
                        text(&c["accepted"]),
                        refused.to_string(),
                        text(&c["forks_failed"]),
                        us(&c["first_byte_p50_us"]),
                        us(&c["first_byte_p99_us"]),
                    ]
                })
                .collect();
            out += &table(
                &[
                    "SERVICE",
                    "STATE",
                    "ACTIVE",
                    "PEAK",
                    "ACCEPTED",
                    "REFUSED",
                    "FORKFAIL",
                    "1ST-BYTE-P50",
                    "P99",
                ],
                &rows,
            );
            if let Some(e) = v["last_upgrade_error"].as_str() {
                out += &format!("\nlast upgrade failed: {e}\n");
            }
            out
        }
        CtlRequest::Services => {
            let rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    let listen: Vec<String> = s["listen"]
                        .as_array()
                        .map(|a| a.iter().map(text).collect())
                        .unwrap_or_default();
                    vec![
                        text(&s["name"]),
                        text(&s["model"]),
                        text(&s["state"]),
                        format!("{}/{}", s["active"], s["max_children"]),
                        listen.join(" "),
                    ]
                })
                .collect();
            table(&["SERVICE", "MODEL", "STATE", "ACTIVE", "LISTEN"], &rows)
        }
        CtlRequest::Children => {
            let rows: Vec<Vec<String>> = v["children"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    vec![
                        text(&c["pid"]),
                        text(&c["service"]),
                        text(&c["role"]),
                        text(&c["peer"]),
                        format!("{}s", text(&c["age_s"])),
                    ]
                })
                .collect();
            table(&["PID", "SERVICE", "ROLE", "PEER", "AGE"], &rows)
        }
        _ => format!("{}\n", text(&v["message"])),
    }
}
