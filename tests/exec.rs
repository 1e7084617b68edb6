//! `forkserve exec` with the real binary and real programs (sh scripts, cat, seq,
//! tr, date): the UCSPI environment over TCP v4, v6 and Unix sockets under both
//! start modes, access rules and their reload, limits and drain with programs
//! that hold the connection, programs that never read, exit at once or write
//! megabytes, stderr in the log, datagram mode over UDP and unixgram, systemd
//! socket activation, and start-up and exec failures.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Writes an executable sh script.
fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A script that prints its environment, sorted, then `pid=$$`.
fn env_script(dir: &TempDir) -> PathBuf {
    script(dir, "env.sh", "env | sort\necho pid=$$")
}

/// `forkserve exec ARGS -l ADDR… -- PROGRAM…`, started and listening.
fn exec(opts: &[&str], addrs: &[String], program: &[&str]) -> Forkserve {
    let mut b = forkserve().arg("exec").args(opts);
    for a in addrs {
        b = b.arg("-l").arg(a);
    }
    b.arg("--").args(program).listeners(addrs.len()).start()
}

/// The variables a UCSPI server (or systemd) sets, from `env` output.
fn ucspi_vars(out: &str) -> BTreeMap<String, String> {
    let ours = |k: &str| {
        k == "PROTO"
            || k == "NOTIFY_SOCKET"
            || ["TCP", "UNIX", "IPC", "UDP", "LISTEN_", "WATCHDOG_"]
                .iter()
                .any(|p| k.starts_with(p))
    };
    out.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| ours(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expect(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn port_of(addr: &str) -> String {
    addr.rsplit(':').next().unwrap().to_string()
}

/// Connects, sends nothing, half-closes, and reads everything.
fn fetch(addr: &str) -> String {
    let mut c = Conn::connect(addr);
    c.shutdown_write();
    c.read_to_end_string()
}

/// Connects over TCP and returns the output and the client's own port.
fn fetch_tcp(addr: &str) -> (String, u16) {
    let mut s = std::net::TcpStream::connect(addr.strip_prefix("tcp:").unwrap()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let port = s.local_addr().unwrap().port();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out, port)
}

/// Asserts the exact UCSPI variables a TCP client of `fs` on `ip` sees.
fn assert_tcp_env(fs: &Forkserve, ip: &str, mode: &str) {
    let addr = fs.addr(0).to_string();
    let (out, client_port) = fetch_tcp(&addr);
    assert_eq!(
        ucspi_vars(&out),
        expect(&[
            ("PROTO", "TCP".into()),
            ("TCPLOCALIP", ip.into()),
            ("TCPLOCALPORT", port_of(&addr)),
            ("TCPREMOTEIP", ip.into()),
            ("TCPREMOTEPORT", client_port.to_string()),
        ]),
        "--start {mode}:\n{out}"
    );
}

/// Starts `forkserve exec OPTS -l unix:DIR/NAME -- cat`; returns it and the address.
fn cat_on_unix(dir: &TempDir, name: &str, opts: &[&str]) -> (Forkserve, String) {
    let addr = format!("unix:{}", dir.path(name).display());
    let fs = exec(opts, std::slice::from_ref(&addr), &["cat"]);
    (fs, addr)
}

/// Connects, sends `line` and checks that `cat` sends it back; returns the connection.
fn talk(addr: &str, line: &str) -> Conn {
    let mut c = Conn::connect(addr);
    writeln!(c, "{line}").unwrap();
    assert_eq!(c.read_line().unwrap(), line);
    c
}

/// How many `cat` programs the master has.
fn cats(fs: &Forkserve) -> usize {
    fs.children()
        .into_iter()
        .filter(|&p| comm(p) == "cat")
        .count()
}

const MODES: [&str; 2] = ["spawn", "fork"];

#[test]
fn tcp_v4_environment_is_exactly_ucspi_tcp() {
    let dir = TempDir::new("exec-env4");
    let prog = env_script(&dir);
    for mode in MODES {
        // Stale UCSPI variables and systemd's must not reach the program.
        let fs = forkserve()
            .env("PROTO", "stale")
            .env("TCPREMOTEHOST", "stale.example")
            .env("WATCHDOG_USEC", "1")
            .args(["exec", "--start", mode, "-l", "tcp:127.0.0.1:0", "--"])
            .arg(&prog)
            .start();
        assert_tcp_env(&fs, "127.0.0.1", mode);
    }
}

#[test]
fn resolve_names_hosts_from_etc_hosts() {
    // The name glibc's files source gives 127.0.0.1: the first on its first line.
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let Some(name) = hosts.lines().find_map(|l| {
        let mut w = l.split('#').next().unwrap().split_whitespace();
        (w.next() == Some("127.0.0.1")).then(|| w.next()).flatten()
    }) else {
        eprintln!("skipped: /etc/hosts does not name 127.0.0.1");
        return;
    };
    let dir = TempDir::new("exec-resolve");
    let prog = env_script(&dir);
    let fs = exec(
        &["--resolve"],
        &["tcp:127.0.0.1:0".into()],
        &[prog.to_str().unwrap()],
    );
    let (out, _) = fetch_tcp(fs.addr(0));
    let vars = ucspi_vars(&out);
    assert_eq!(
        vars.get("TCPREMOTEHOST").map(String::as_str),
        Some(name),
        "{out}"
    );
    assert_eq!(
        vars.get("TCPLOCALHOST").map(String::as_str),
        Some(name),
        "{out}"
    );
}

#[test]
fn tcp_v6_environment() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let dir = TempDir::new("exec-env6");
    let prog = env_script(&dir);
    let fs = exec(&[], &["tcp:[::1]:0".into()], &[prog.to_str().unwrap()]);
    assert_tcp_env(&fs, "::1", "spawn");
}

#[test]
fn unix_environment_is_ucspi_unix_and_s6() {
    let dir = TempDir::new("exec-envunix");
    let prog = env_script(&dir);
    // SAFETY: plain id getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    for mode in MODES {
        let sock = dir.path(&format!("{mode}.sock"));
        let fs = exec(
            &["--start", mode],
            &[format!("unix:{}", sock.display())],
            &[prog.to_str().unwrap()],
        );
        let out = fetch(fs.addr(0));
        let path = sock.display().to_string();
        assert_eq!(
            ucspi_vars(&out),
            expect(&[
                ("PROTO", "UNIX".into()),
                ("UNIXLOCALPATH", path.clone()),
                ("IPCLOCALPATH", path),
                ("UNIXREMOTEEUID", uid.to_string()),
                ("UNIXREMOTEEGID", gid.to_string()),
                ("UNIXREMOTEPID", std::process::id().to_string()),
                ("IPCREMOTEEUID", uid.to_string()),
                ("IPCREMOTEEGID", gid.to_string()),
            ]),
            "--start {mode}:\n{out}"
        );
    }
}

#[test]
fn rules_allow_deny_add_env_and_reload_on_sighup() {
    let dir = TempDir::new("exec-rules");
    let prog = env_script(&dir);
    let rules = dir.path("rules");
    std::fs::write(
        &rules,
        "# local clients get a greeting\n127.0.0.0/8 allow GREETING=hello ROLE=local\n* deny\n",
    )
    .unwrap();
    let sock = dir.path("r.sock");
    let fs = exec(
        &["--rules", rules.to_str().unwrap()],
        &["tcp:127.0.0.1:0".into(), format!("unix:{}", sock.display())],
        &[prog.to_str().unwrap()],
    );
    let tcp = fs.addr(0).to_string();
    let unix = format!("unix:{}", sock.display());
    let (out, _) = fetch_tcp(&tcp);
    assert!(out.contains("\nGREETING=hello\n"), "{out}");
    assert!(out.contains("\nROLE=local\n"), "{out}");
    // The Unix client matches no CIDR rule: `*` denies it, closed with no byte.
    assert_eq!(fetch(&unix), "");
    fs.wait_log("exec: denied uid=");

    // SAFETY: plain id getter.
    let uid = unsafe { libc::geteuid() };
    std::fs::write(
        &rules,
        format!("127.0.0.1 deny\nuid={uid} allow ROLE=owner\n"),
    )
    .unwrap();
    fs.signal(libc::SIGHUP);
    fs.wait_log("rules reloaded from");
    assert_eq!(fetch_tcp(&tcp).0, "");
    assert!(fetch(&unix).contains("\nROLE=owner\n"));

    // A bad file keeps the rules in force.
    std::fs::write(&rules, "127.0.0.1 perhaps\n").unwrap();
    fs.signal(libc::SIGHUP);
    fs.wait_log("keeping the previous rules");
    assert!(fs.has_log("line 1: expected allow or deny"));
    assert!(fetch(&unix).contains("\nROLE=owner\n"));
    assert_eq!(fetch_tcp(&tcp).0, "");
}

#[test]
fn bad_rules_file_is_a_config_error_before_binding() {
    let dir = TempDir::new("exec-badrules");
    let rules = dir.path("rules");
    std::fs::write(&rules, "10.0.0.0/40 allow\n").unwrap();
    let sock = dir.path("never.sock");
    let mut fs = forkserve()
        .args(["exec", "--rules", rules.to_str().unwrap(), "-l"])
        .arg(format!("unix:{}", sock.display()))
        .args(["--", "cat"])
        .spawn();
    assert_eq!(fs.wait_exit().code(), Some(78));
    assert!(fs.has_log("line 1: bad prefix length"));
    assert!(!sock.exists());
}

#[test]
fn max_children_holds_back_the_next_client_until_a_program_exits() {
    let dir = TempDir::new("exec-limit");
    let (fs, addr) = cat_on_unix(&dir, "l.sock", &["--max-children", "2"]);
    let mut held: Vec<Conn> = (0..2).map(|i| talk(&addr, &format!("held {i}"))).collect();
    let mut third = Conn::connect(&addr);
    writeln!(third, "third").unwrap();
    third.set_timeout(Some(Duration::from_millis(300)));
    let mut b = [0u8; 1];
    let e = third.read(&mut b).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert_eq!(cats(&fs), 2);
    // One program ends: the third client is served.
    held.remove(0).shutdown_write();
    third.set_timeout(Some(WAIT));
    assert_eq!(third.read_line().unwrap(), "third");
    drop(held);
}

#[test]
fn max_per_source_refuses_the_extra_client_before_any_program_starts() {
    let dir = TempDir::new("exec-persource");
    let (fs, addr) = cat_on_unix(&dir, "p.sock", &["--max-per-source", "1"]);
    let _first = talk(&addr, "first");
    // Same uid: refused, closed with nothing read.
    let mut second = Conn::connect(&addr);
    assert_eq!(second.read_to_end_string(), "");
    fs.wait_log("refused uid=");
    assert_eq!(cats(&fs), 1);
}

#[test]
fn drain_lets_programs_finish_then_ends_those_that_outstay() {
    let dir = TempDir::new("exec-drain");
    let sock = dir.path("d.sock");
    let (mut fs, addr) = cat_on_unix(&dir, "d.sock", &["--drain-timeout", "30"]);
    let mut c = talk(&addr, "before");
    fs.signal(libc::SIGTERM);
    fs.wait_log("draining 1 worker(s)");
    // The program keeps serving during the drain.
    writeln!(c, "during").unwrap();
    assert_eq!(c.read_line().unwrap(), "during");
    c.shutdown_write();
    assert_eq!(c.read_line(), None);
    assert_eq!(fs.wait_exit().code(), Some(0));
    assert!(!sock.exists());

    // A program that outstays the drain gets SIGTERM.
    let sock = dir.path("d2.sock");
    let addr = format!("unix:{}", sock.display());
    let mut fs = exec(
        &["--drain-timeout", "0.2"],
        std::slice::from_ref(&addr),
        &["sleep", "600"],
    );
    let _c = Conn::connect(&addr);
    wait_until("sleep to start", || {
        fs.children().into_iter().find(|&p| comm(p) == "sleep")
    });
    fs.signal(libc::SIGTERM);
    assert_eq!(fs.wait_exit().code(), Some(0));
    assert!(fs.has_log("drain timeout: sending SIGTERM to 1 child(ren)"));
}

#[test]
fn programs_that_never_read_or_exit_at_once() {
    let dir = TempDir::new("exec-quick");
    let never_reads = script(&dir, "hello.sh", "echo hello-from-program");
    let sock = dir.path("n.sock");
    let fs = exec(
        &[],
        &[format!("unix:{}", sock.display())],
        &[never_reads.to_str().unwrap()],
    );
    // The client sends data the program never reads: it still gets its output.
    // The client sends data the program never reads: it still gets the output,
    // then a reset instead of end-of-file (the kernel's answer to unread data).
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(&[b'x'; 4096]).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    assert_eq!(got, b"hello-from-program\n");
    drop(fs);

    for (prog, logged) in [
        ("true", None),
        ("false", Some("exit status 1")),
        ("kill -9 $$", Some("killed by SIGKILL")),
    ] {
        let p = script(&dir, "quick.sh", prog);
        let fs = exec(&[], &["tcp:127.0.0.1:0".into()], &[p.to_str().unwrap()]);
        assert_eq!(fetch_tcp(fs.addr(0)).0, "");
        if let Some(what) = logged {
            let line = fs.wait_log(what);
            assert!(
                line.contains("exec worker") && line.contains("(peer 127.0.0.1:"),
                "{line}"
            );
        }
        // The master is still serving.
        assert_eq!(fetch_tcp(fs.addr(0)).0, "");
    }
}

#[test]
fn a_program_writing_megabytes_loses_nothing() {
    for addr in ["tcp:127.0.0.1:0".to_string(), "unix".to_string()] {
        let dir = TempDir::new("exec-big");
        let addr = if addr == "unix" {
            format!("unix:{}", dir.path("big.sock").display())
        } else {
            addr
        };
        let fs = exec(&[], &[addr], &["seq", "1", "1000000"]);
        let out = fetch(fs.addr(0));
        assert_eq!(out.len(), 6_888_896);
        assert!(out.starts_with("1\n2\n3\n"));
        assert!(out.ends_with("\n999999\n1000000\n"));
    }
}

#[test]
fn stderr_lines_are_logged_with_the_pid_or_inherited() {
    let dir = TempDir::new("exec-stderr");
    let prog = script(
        &dir,
        "err.sh",
        "echo pid=$$\nprintf 'first line\\nsecond ' >&2\nprintf 'part\\n' >&2\nprintf 'no newline' >&2",
    );
    let fs = exec(&[], &["tcp:127.0.0.1:0".into()], &[prog.to_str().unwrap()]);
    let (out, _) = fetch_tcp(fs.addr(0));
    let pid = out.trim().strip_prefix("pid=").unwrap().to_string();
    fs.wait_log(&format!("exec worker {pid}: first line"));
    fs.wait_log(&format!("exec worker {pid}: second part"));
    fs.wait_log(&format!("exec worker {pid}: no newline"));
    drop(fs);

    let fs = exec(
        &["--stderr", "inherit"],
        &["tcp:127.0.0.1:0".into()],
        &[prog.to_str().unwrap()],
    );
    fetch_tcp(fs.addr(0));
    let line = fs.wait_log("first line");
    assert_eq!(line, "first line");
}

#[test]
fn idle_timeout_applies_to_the_programs_reads() {
    let dir = TempDir::new("exec-idle");
    let (_fs, addr) = cat_on_unix(&dir, "i.sock", &["--idle-timeout", "0.3"]);
    let mut c = talk(&addr, "talk");
    // Silent: cat's read times out, it exits, the client reads end-of-file.
    assert_eq!(c.read_line(), None);
}

#[test]
fn datagrams_over_udp_and_unixgram() {
    let dir = TempDir::new("exec-dgram");
    // inetd's time service in one line.
    let fs = exec(&[], &["udp:127.0.0.1:0".into()], &["date", "+%Y-%m-%d"]);
    let reply = datagram_roundtrip(fs.addr(0), b"time?", &dir.0);
    let reply = String::from_utf8(reply).unwrap();
    assert_eq!(reply.len(), 11, "{reply:?}");
    assert!(reply.ends_with('\n') && reply.as_bytes()[4] == b'-');
    drop(fs);

    // The datagram is stdin; stdout is the reply; the environment says who sent it.
    let prog = script(
        &dir,
        "dg.sh",
        "tr a-z A-Z\nenv | grep -E '^(PROTO|UDP|UNIX|IPC)' | sort",
    );
    let gram = dir.path("dg.sock");
    let fs = exec(
        &[],
        &[
            "udp:127.0.0.1:0".into(),
            format!("unixgram:{}", gram.display()),
        ],
        &[prog.to_str().unwrap()],
    );
    let udp = fs.addr(0).to_string();
    let reply = String::from_utf8(datagram_roundtrip(&udp, b"hello\n", &dir.0)).unwrap();
    let mut lines = reply.lines();
    assert_eq!(lines.next(), Some("HELLO"));
    let vars: Vec<&str> = lines.collect();
    assert_eq!(vars[0], "PROTO=UDP");
    assert!(vars.contains(&"UDPREMOTEIP=127.0.0.1"), "{reply}");
    assert!(
        vars.contains(&format!("UDPLOCALPORT={}", port_of(&udp)).as_str()),
        "{reply}"
    );
    let reply = String::from_utf8(datagram_roundtrip(
        &format!("unixgram:{}", gram.display()),
        b"over unix\n",
        &dir.0,
    ))
    .unwrap();
    assert!(reply.starts_with("OVER UNIX\nIPCLOCALPATH="), "{reply}");
    assert!(reply.contains("\nIPCREMOTEPATH="));
    assert!(reply.contains("\nPROTO=UNIX\n"));
    // SAFETY: plain id getter.
    let uid = unsafe { libc::geteuid() };
    assert!(reply.contains(&format!("\nUNIXREMOTEEUID={uid}\n")));
}

#[test]
fn datagram_reply_is_cut_to_the_largest_datagram() {
    let dir = TempDir::new("exec-dgbig");
    let gram = dir.path("big.sock");
    let fs = exec(
        &[],
        &[format!("unixgram:{}", gram.display())],
        &["head", "-c", "100000", "/dev/zero"],
    );
    let reply = datagram_roundtrip(&format!("unixgram:{}", gram.display()), b"x", &dir.0);
    assert_eq!(reply.len(), 65507);
    fs.wait_log("wrote 100000 bytes; the reply to");
}

/// True when systemd-socket-activate is installed; otherwise says the test is skipped.
fn have_socket_activate() -> bool {
    let found = Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: systemd-socket-activate is not installed");
    }
    found
}

fn activate(sd_args: &[&str], sock: &Path, exec_args: &[&str]) -> Forkserve {
    let mut b = forkserve();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(sd_args)
        .arg("-l")
        .arg(sock)
        .arg(bin())
        .arg("exec")
        .args(exec_args);
    cmd.env_remove("LISTEN_FDS").env_remove("NOTIFY_SOCKET");
    *b.command() = cmd;
    b.spawn()
}

#[test]
fn systemd_socket_activation_accept_no_and_yes() {
    if !have_socket_activate() {
        return;
    }
    let dir = TempDir::new("exec-sd");
    let prog = env_script(&dir);
    for accept in [false, true] {
        let sock = dir.path(&format!("sd-{accept}.sock"));
        let sd_args: &[&str] = if accept { &["--accept"] } else { &[] };
        let fs = activate(sd_args, &sock, &["--", prog.to_str().unwrap()]);
        fs.wait_log("as 3");
        for _ in 0..2 {
            let out = fetch(&format!("unix:{}", sock.display()));
            let vars = ucspi_vars(&out);
            assert_eq!(vars.get("PROTO").map(String::as_str), Some("UNIX"), "{out}");
            assert!(
                !vars.keys().any(|k| k.starts_with("LISTEN_")),
                "accept={accept}: {out}"
            );
        }
        if !accept {
            fs.wait_log("exec: listening on unix:");
        }
    }
}

#[test]
fn missing_or_non_executable_program_is_a_usage_error_before_binding() {
    let dir = TempDir::new("exec-usage");
    let plain = dir.path("plain.txt");
    std::fs::write(&plain, "not a program").unwrap();
    for (program, message) in [
        (dir.path("absent").display().to_string(), "no such file"),
        (plain.display().to_string(), "not executable"),
        ("no-such-program-anywhere".to_string(), "not found on PATH"),
        (dir.0.display().to_string(), "not a regular file"),
    ] {
        let sock = dir.path("never.sock");
        let mut fs = forkserve()
            .args(["exec", "-l"])
            .arg(format!("unix:{}", sock.display()))
            .args(["--", &program])
            .spawn();
        assert_eq!(fs.wait_exit().code(), Some(64), "{program}");
        assert!(fs.has_log(message), "{program}: {}", fs.log_text());
        assert!(!sock.exists());
    }
}

#[test]
fn exec_failure_in_a_child_is_logged_with_the_reason() {
    let dir = TempDir::new("exec-fail");
    for mode in MODES {
        let prog = script(&dir, &format!("gone-{mode}.sh"), "echo hi");
        let fs = exec(
            &["--start", mode],
            &["tcp:127.0.0.1:0".into()],
            &[prog.to_str().unwrap()],
        );
        assert_eq!(fetch_tcp(fs.addr(0)).0, "hi\n");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(fetch_tcp(fs.addr(0)).0, "");
        let line = fs.wait_log("Permission denied");
        assert!(line.contains(prog.to_str().unwrap()), "{mode}: {line}");
        // Still serving once the program is back.
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(fetch_tcp(fs.addr(0)).0, "hi\n");
    }
}
