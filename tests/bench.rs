//! `forkserve bench`, the load generator: exact counts with -n, wrong replies and
//! datagram timeouts detected and reported with a non-zero exit, usage errors.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// Runs `forkserve bench ARGS` to completion.
fn bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("bench").args(args);
    run_bounded(cmd)
}

/// Runs a command, killing it (by PID) if it outlives [`WAIT`].
fn run_bounded(mut cmd: Command) -> Output {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("start forkserve bench");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("wait for forkserve bench"),
        Err(_) => {
            // SAFETY: kill(2) on the pid this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("forkserve bench did not finish");
        }
    }
}

/// The number after `"key":` in the one-line JSON report.
fn field(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let num: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dash_n_sends_exactly_n_requests_over_tcp_and_unix() {
    let dir = TempDir::new("bench-count");
    let fs = forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0", "-l"])
        .arg(format!("unix:{}", dir.path("e.sock").display()))
        .listeners(2)
        .start();
    for addr in [fs.addr(0), fs.addr(1)] {
        let out = bench(&["--connect", addr, "-n", "37", "-c", "4", "--json"]);
        let json = stdout(&out);
        assert!(
            out.status.success(),
            "{addr}: {json} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(field(&json, "requests"), 37.0, "{json}");
        assert_eq!(field(&json, "connections"), 37.0, "{json}");
        assert_eq!(field(&json, "clients"), 4.0, "{json}");
        assert_eq!(field(&json, "total"), 0.0, "{json}");
        assert!(field(&json, "connections_per_s") > 0.0, "{json}");
        assert!(field(&json, "p99") >= field(&json, "p50"), "{json}");
        assert!(field(&json, "max") >= field(&json, "p99"), "{json}");
    }
    // 37 requests, 5 per connection, over 4 clients (10, 9, 9, 9): 2 connections each.
    let out = bench(&[
        "--connect",
        fs.addr(0),
        "-n",
        "37",
        "-c",
        "4",
        "--requests-per-connection",
        "5",
        "--json",
    ]);
    let json = stdout(&out);
    assert!(out.status.success(), "{json}");
    assert_eq!(field(&json, "requests"), 37.0, "{json}");
    assert_eq!(field(&json, "connections"), 8.0, "{json}");
}

#[test]
fn text_report_names_rates_latencies_and_errors() {
    let fs = forkserve().args(["echo", "-l", "tcp:127.0.0.1:0"]).start();
    let out = bench(&[
        "--connect",
        fs.addr(0),
        "-n",
        "20",
        "-c",
        "2",
        "--message",
        "straße",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    for part in [
        "connections  20 (",
        "requests     20 (",
        "latency ms   p50 ",
        " p99 ",
        " max ",
        "errors       0 (",
    ] {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
}

/// A stream server that answers every line in lower case, then closes.
fn lower_case_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp:{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = conn.write_all(line.to_lowercase().as_bytes());
        }
    });
    addr
}

#[test]
fn wrong_replies_are_counted_and_exit_non_zero() {
    let addr = lower_case_server();
    let out = bench(&["--connect", &addr, "-n", "5", "-c", "1", "--json"]);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(field(&json, "wrong"), 5.0, "{json}");
    assert_eq!(field(&json, "requests"), 0.0, "{json}");
    assert!(json.contains("\"first_error\":\"wrong reply"), "{json}");

    let out = bench(&["--connect", &addr, "-n", "5", "-c", "1"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("wrong reply 5"), "{text}");

    // Any non-empty reply will do with --expect any.
    let out = bench(&[
        "--connect",
        &addr,
        "-n",
        "5",
        "-c",
        "1",
        "--expect",
        "any",
        "--json",
    ]);
    let json = stdout(&out);
    assert!(out.status.success(), "{json}");
    assert_eq!(field(&json, "requests"), 5.0, "{json}");
}

#[test]
fn datagrams_to_the_time_service_need_expect_any() {
    let dir = TempDir::new("bench-time");
    let fs = forkserve()
        .args(["time", "-l", "udp:127.0.0.1:0", "-l"])
        .arg(format!("unixgram:{}", dir.path("t.sock").display()))
        .listeners(2)
        .start();
    for addr in [fs.addr(0), fs.addr(1)] {
        let out = bench(&[
            "--connect",
            addr,
            "-n",
            "12",
            "-c",
            "3",
            "--expect",
            "any",
            "--json",
        ]);
        let json = stdout(&out);
        assert!(out.status.success(), "{addr}: {json}");
        assert!(json.contains("\"mode\":\"datagram\""), "{json}");
        assert_eq!(field(&json, "requests"), 12.0, "{json}");
        assert_eq!(field(&json, "total"), 0.0, "{json}");

        // "Server time: ..." is not "WHAT TIME": a wrong reply each.
        let out = bench(&[
            "--connect",
            addr,
            "-n",
            "4",
            "-c",
            "1",
            "--message",
            "what time",
            "--json",
        ]);
        let json = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{json}");
        assert_eq!(field(&json, "wrong"), 4.0, "{json}");
    }
}

#[test]
fn datagram_timeouts_are_counted_after_retries() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = format!("udp:{}", silent.local_addr().unwrap());
    let out = bench(&[
        "--connect",
        &addr,
        "-n",
        "3",
        "-c",
        "1",
        "--timeout",
        "0.2",
        "--retries",
        "1",
        "--json",
    ]);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(field(&json, "timeout"), 3.0, "{json}");
    assert_eq!(field(&json, "resent"), 3.0, "{json}");
    assert_eq!(field(&json, "requests"), 0.0, "{json}");
    // Each request went out twice: once, and once more on the retry.
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    let mut seen = 0;
    while let Ok((n, _)) = silent.recv_from(&mut buf) {
        assert_eq!(&buf[..n], b"hello");
        seen += 1;
    }
    assert_eq!(seen, 6);
}

#[test]
fn connect_errors_are_counted() {
    let dir = TempDir::new("bench-refused");
    let addr = format!("unix:{}", dir.path("nobody.sock").display());
    let out = bench(&["--connect", &addr, "-n", "7", "-c", "2", "--json"]);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(field(&json, "connect"), 7.0, "{json}");
    assert!(json.contains("\"first_error\":\"connect: "), "{json}");
}

#[test]
fn bad_usage_exits_64() {
    for args in [
        &["--connect", "systemd:echo", "-n", "1"][..],
        &["--connect", "tcp:127.0.0.1", "-n", "1"],
        &["--connect", "tcp:127.0.0.1:1", "-c", "0"],
        &["--connect", "tcp:127.0.0.1:1", "-n", "1", "-d", "1"],
    ] {
        let out = bench(args);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn close_patterns_end_connections_as_asked_and_the_report_names_them() {
    let fs = forkserve().args(["echo", "-l", "tcp:127.0.0.1:0"]).start();
    let addr = fs.addr(0);
    // The echo server closes only after the client's end of file: closing at once
    // and half-closing both finish every connection.
    for how in ["client", "half"] {
        let out = bench(&[
            "--connect",
            addr,
            "-n",
            "20",
            "-c",
            "2",
            "--close",
            how,
            "--json",
        ]);
        let json = stdout(&out);
        assert!(out.status.success(), "{how}: {json}");
        assert!(json.contains(&format!("\"close\":\"{how}\"")), "{json}");
        assert_eq!(field(&json, "connections"), 20.0, "{json}");
        assert!(field(&json, "generator_cpu_s") >= 0.0, "{json}");
    }
    // Waiting for the server's close without half-closing: the echo server never
    // closes, so every connection times out.
    let out = bench(&[
        "--connect",
        addr,
        "-n",
        "2",
        "-c",
        "1",
        "--close",
        "server",
        "--timeout",
        "0.3",
        "--json",
    ]);
    let json = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(field(&json, "timeout"), 2.0, "{json}");
    assert_eq!(field(&json, "connections"), 0.0, "{json}");
}
