//! systemd integration through the real tools: socket activation with
//! systemd-socket-activate (named fds, Accept=yes on fd 3, inetd on stdin/stdout),
//! sd_notify to a test NOTIFY_SOCKET, clean worker environments, privilege drop,
//! and `systemd-analyze verify` on the shipped units.

mod common;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// True when `tool` is installed; otherwise says the test is skipped.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

/// A TCP port free right now on 127.0.0.1 (systemd-socket-activate cannot bind 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free right now on 127.0.0.1.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `systemd-socket-activate ARGS -- forkserve FS_ARGS`, its stderr in the harness.
fn activate(args: &[String], fs_args: &[&str]) -> Forkserve {
    let mut b = forkserve();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(args).arg(bin()).args(fs_args);
    cmd.env_remove("LISTEN_FDS").env_remove("NOTIFY_SOCKET");
    *b.command() = cmd;
    b.spawn()
}

fn roundtrip(addr: &str) {
    let mut c = Conn::connect(addr);
    c.write_all(b"activated\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "ACTIVATED");
}

#[test]
fn named_stream_fds_go_to_their_service() {
    if !have("systemd-socket-activate") {
        return;
    }
    let dir = TempDir::new("sd-stream");
    let sock = dir.path("echo.sock");
    let port = free_port();
    let mut fs = activate(
        &[
            "-l".into(),
            format!("127.0.0.1:{port}"),
            "-l".into(),
            sock.display().to_string(),
            "--fdname=echo:echo".into(),
        ],
        &[],
    );
    fs.wait_log(&format!("{} as 4", sock.display()));
    // The first connection makes systemd-socket-activate exec forkserve, which
    // takes both fds for echo (plain forkserve: every service by its fd name).
    let mut first = Conn::connect(&format!("tcp:127.0.0.1:{port}"));
    fs.wait_listening(2);
    assert!(fs.has_log("time: systemd passed no socket named 'time'; service not started"));
    first.write_all(b"first\n").unwrap();
    assert_eq!(first.read_line().unwrap(), "FIRST");
    roundtrip(&format!("unix:{}", sock.display()));
    let w = fs.wait_children("echo worker", 1)[0];
    let env = std::fs::read(format!("/proc/{w}/environ")).unwrap();
    let env = String::from_utf8_lossy(&env);
    assert!(
        !env.contains("LISTEN_") && !env.contains("NOTIFY_SOCKET"),
        "{env}"
    );
    drop(first);
    // The socket file is systemd's: forkserve never removes it.
    fs.signal(libc::SIGTERM);
    assert_eq!(fs.wait_exit().code(), Some(0));
    assert!(sock.exists());
}

#[test]
fn named_datagram_fd_goes_to_time() {
    if !have("systemd-socket-activate") {
        return;
    }
    let port = free_udp_port();
    let dir = TempDir::new("sd-dgram");
    let fs = activate(
        &[
            "-d".into(),
            "-l".into(),
            format!("127.0.0.1:{port}"),
            "--fdname=time".into(),
        ],
        &["time"],
    );
    fs.wait_log("as 3");
    let reply = datagram_roundtrip(&format!("udp:127.0.0.1:{port}"), b"now?", &dir.0);
    assert!(reply.starts_with(b"Server time: "));
}

#[test]
fn unmatched_fd_names_are_an_error() {
    if !have("systemd-socket-activate") {
        return;
    }
    let dir = TempDir::new("sd-bad");
    let sock = dir.path("x.sock");
    let mut fs = activate(
        &[
            "-l".into(),
            sock.display().to_string(),
            "--fdname=nosuch".into(),
        ],
        &["echo"],
    );
    fs.wait_log("as 3");
    let _c = Conn::connect(&format!("unix:{}", sock.display()));
    let st = fs.wait_exit();
    assert_eq!(st.code(), Some(69));
    assert!(fs.has_log("named 'nosuch'"), "{}", fs.log_text());
}

#[test]
fn accept_yes_serves_one_connection_on_fd3_and_inetd_on_stdin() {
    if !have("systemd-socket-activate") {
        return;
    }
    for inetd in [false, true] {
        let dir = TempDir::new("sd-accept");
        let sock = dir.path("a.sock");
        let mut args = vec![
            "--accept".to_string(),
            "-l".into(),
            sock.display().to_string(),
        ];
        let mut fs_args = vec!["echo"];
        if inetd {
            args.push("--inetd".into());
            fs_args.push("--inetd");
        }
        let fs = activate(&args, &fs_args);
        fs.wait_log("as 3");
        for _ in 0..2 {
            let mut c = Conn::connect(&format!("unix:{}", sock.display()));
            c.write_all(b"one\ntwo\n").unwrap();
            assert_eq!(c.read_line().unwrap(), "ONE");
            assert_eq!(c.read_line().unwrap(), "TWO");
            c.shutdown_write();
            assert_eq!(c.read_line(), None);
        }
        fs.wait_log("serving one connection from uid=");
    }
}

/// Reads notifications until one contains `needle`; returns everything read.
fn read_until(sock: &UnixDatagram, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|m| m.contains(needle)) {
        assert!(Instant::now() < deadline, "no {needle:?} in {seen:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn sd_notify_ready_status_stopping() {
    let dir = TempDir::new("sd-notify");
    let path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut fs = forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .start();
    let mut seen = Vec::new();
    read_until(&sock, "READY=1", &mut seen);
    read_until(&sock, "WATCHDOG=1", &mut seen);
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"x\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "X");
    read_until(&sock, "1 connection(s) live", &mut seen);
    let w = fs.wait_children("echo worker", 1)[0];
    let env =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{w}/environ")).unwrap()).into_owned();
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
    // Draining with a connection open: STOPPING=1, then extensions of the timeout.
    fs.signal(libc::SIGTERM);
    read_until(&sock, "STOPPING=1", &mut seen);
    read_until(&sock, "EXTEND_TIMEOUT_USEC=", &mut seen);
    drop(c);
    assert_eq!(fs.wait_exit().code(), Some(0));
    assert!(seen.iter().any(|m| m.starts_with("STATUS=")), "{seen:?}");
}

#[test]
fn user_option_drops_privileges_in_workers() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: privilege drop needs root (CI runs as root)");
        return;
    }
    let fs = forkserve()
        .args(["echo", "--user", "nobody", "-l", "tcp:127.0.0.1:0"])
        .start();
    fs.wait_log("running as nobody");
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"who\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "WHO");
    let w = fs.wait_children("echo worker", 1)[0];
    let st = status(w);
    let uid = st["Uid"].split_whitespace().collect::<Vec<_>>();
    assert!(uid.iter().all(|u| *u == "65534"), "worker Uid: {uid:?}");
    let master = status(fs.pid);
    assert!(master["Uid"].split_whitespace().all(|u| u == "65534"));
    assert_eq!(master["Groups"], "65534", "supplementary groups dropped");
}

#[test]
fn unknown_user_is_refused_before_serving() {
    let out = Command::new(bin())
        .args([
            "echo",
            "--user",
            "no-such-user-xyz",
            "-l",
            "tcp:127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such user"), "{err}");
    assert!(
        !err.contains("listening on"),
        "refused before binding: {err}"
    );
}

/// The shipped unit files, as (file name, text).
fn shipped_units() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut units: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), text)
        })
        .collect();
    units.sort();
    assert!(units.len() >= 5, "{units:?}");
    units
}

/// Copies of the shipped units in a temporary directory whose ExecStart names the
/// binary under test (systemd-analyze needs it to exist); nothing else changes.
fn units_for_analysis() -> (TempDir, Vec<String>) {
    let dir = TempDir::new("units");
    let mut names = Vec::new();
    for (name, text) in shipped_units() {
        let text = text
            .replace("ExecStart=forkserve ", &format!("ExecStart={} ", bin()))
            .replace("/usr/local/bin/forkserve", bin())
            .replace("/usr/bin/forkserve", bin());
        std::fs::write(dir.path(&name), text).unwrap();
        names.push(name);
    }
    (dir, names)
}

/// The values of `key=` in a unit file's text, in order.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn analyze(args: &[&str], dir: &TempDir) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return;
    }
    let (dir, names) = units_for_analysis();
    // The man page is checked where it is installed (.ci/run, after dpkg -i).
    let mut args = vec!["verify".to_string(), "--man=no".to_string()];
    args.extend(names.iter().map(|n| dir.path(n).display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = analyze(&args, &dir);
    assert!(ok && text.trim().is_empty(), "{text}");
}

#[test]
fn shipped_services_score_at_most_2_in_systemd_analyze_security() {
    if !have("systemd-analyze") {
        return;
    }
    let (dir, names) = units_for_analysis();
    let services: Vec<&String> = names.iter().filter(|n| n.ends_with(".service")).collect();
    assert!(services.len() >= 2, "{names:?}");
    for name in services {
        // A template is analysed as one of its instances.
        let unit = name.replace("@.", "@test.");
        let path = dir.path(name).display().to_string();
        let (_, text) = analyze(&["security", "--offline=true", &path], &dir);
        if text.contains("nrecognized option") || text.contains("unknown option") {
            eprintln!("skipped: this systemd-analyze has no --offline ({text})");
            return;
        }
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}: {text}"));
        assert!(score <= 2.0, "{name}: exposure {score}\n{text}");
    }
}

#[test]
fn socket_units_choose_the_services_and_the_runtime_directory_survives_restarts() {
    let units = shipped_units();
    let service = &units
        .iter()
        .find(|(n, _)| n == "forkserve.service")
        .unwrap()
        .1;
    // Socket files live in /run/forkserve, which the service must not own: systemd
    // removes a RuntimeDirectory= at stop (the socket units would then listen on
    // deleted files), and with RuntimeDirectoryPreserve= and DynamicUser= moves it
    // under the root-only /run/private.
    assert!(
        values(service, "RuntimeDirectory")
            .iter()
            .all(|d| d.split_whitespace().all(|d| d != "forkserve")),
        "forkserve.service owns /run/forkserve"
    );
    // The service pulls in no socket unit: enabling one is how a service is chosen.
    for key in ["Wants", "Requires", "BindsTo", "Sockets", "Also"] {
        assert!(
            values(service, key).iter().all(|v| !v.contains(".socket")),
            "forkserve.service {key}= names socket units"
        );
    }
    // With no socket unit active it exits 69, which is not restarted.
    let exec = values(service, "ExecStart");
    assert!(
        exec.iter().all(|e| e.contains("--socket-activated")),
        "{exec:?}"
    );
    assert!(values(service, "RestartPreventExitStatus").contains(&"69"));
    let mut sockets = 0;
    for (name, text) in units.iter().filter(|(n, _)| n.ends_with(".socket")) {
        if values(text, "Accept") == ["yes"] {
            continue;
        }
        sockets += 1;
        assert_eq!(values(text, "Service"), ["forkserve.service"], "{name}");
        assert_eq!(values(text, "FileDescriptorName").len(), 1, "{name}");
        assert_eq!(values(text, "WantedBy"), ["sockets.target"], "{name}");
        for path in values(text, "ListenStream")
            .into_iter()
            .chain(values(text, "ListenDatagram"))
            .filter(|p| p.starts_with('/'))
        {
            assert!(path.starts_with("/run/forkserve/"), "{name}: {path}");
        }
    }
    assert!(sockets >= 4);
}

#[test]
fn socket_activated_without_sockets_exits_69_with_a_clear_line() {
    let out = Command::new(bin())
        .arg("--socket-activated")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no sockets passed by systemd"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn socket_activated_serves_what_systemd_passed() {
    if !have("systemd-socket-activate") {
        return;
    }
    let port = free_port();
    let mut fs = activate(
        &[
            "-l".into(),
            format!("127.0.0.1:{port}"),
            "--fdname=echo".into(),
        ],
        &["--socket-activated"],
    );
    fs.wait_log("as 3");
    roundtrip(&format!("tcp:127.0.0.1:{port}"));
    fs.wait_listening(1);
    assert!(fs.has_log("http: systemd passed no socket named 'http'; service not started"));
}
