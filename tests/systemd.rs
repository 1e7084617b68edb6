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
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));
}

#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return;
    }
    // Verify copies whose ExecStart names the binary under test (verify needs it
    // to exist); nothing else is changed.
    let dir = TempDir::new("units");
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&units).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/local/bin/forkserve", bin());
        std::fs::write(dir.path(&name), text).unwrap();
        names.push(name);
    }
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(names.iter().map(|n| dir.path(n)))
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
