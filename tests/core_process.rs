//! The process model seen from outside: workers as children of the master with
//! titles, the reaper, limits, signals, socket files, start-up errors.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

fn tcp_echo() -> Forkserve {
    forkserve().args(["echo", "-l", "tcp:127.0.0.1:0"]).start()
}

/// Sends a line and waits for its echo: after this the connection has a worker.
fn hello(c: &mut Conn) {
    c.write_all(b"ping\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "PING");
}

#[test]
fn concurrent_clients_get_distinct_titled_workers() {
    let dir = TempDir::new("titles");
    let sock = dir.path("e.sock");
    let fs = forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0", "-l"])
        .arg(format!("unix:{}", sock.display()))
        .listeners(2)
        .start();
    let mut a = Conn::connect(fs.addr(0));
    let mut b = Conn::connect(fs.addr(0));
    let mut u = Conn::connect(fs.addr(1));
    hello(&mut a);
    hello(&mut b);
    hello(&mut u);
    let workers = fs.wait_children("echo worker", 3);
    for &w in &workers {
        assert_eq!(parent_of(w), Some(fs.pid));
        assert_eq!(comm(w), "echo worker");
    }
    let titles: Vec<String> = workers.iter().map(|&w| cmdline(w)).collect();
    let tcp = titles
        .iter()
        .filter(|t| t.starts_with("forkserve: echo worker 127.0.0.1:"))
        .count();
    assert_eq!(tcp, 2, "{titles:?}");
    let me = format!(
        "forkserve: echo worker uid={} pid={}",
        unsafe { libc::getuid() },
        std::process::id()
    );
    assert!(titles.contains(&me), "{titles:?} lacks {me}");
    // The master's title names the service, its addresses and the live count.
    let want = format!(
        "forkserve: master echo {} {} [3/40]",
        fs.addr(0),
        fs.addr(1)
    );
    wait_until("master title with 3 workers", || {
        (cmdline(fs.pid) == want).then_some(())
    });
    assert_eq!(comm(fs.pid), "forkserve");
    drop((a, b));
    let want = format!(
        "forkserve: master echo {} {} [1/40]",
        fs.addr(0),
        fs.addr(1)
    );
    wait_until("master title with 1 worker", || {
        (cmdline(fs.pid) == want).then_some(())
    });
}

#[test]
fn no_zombie_after_500_connections() {
    let fs = tcp_echo();
    for i in 0..500 {
        let mut c = Conn::connect(fs.addr(0));
        c.write_all(format!("n{i}\n").as_bytes()).unwrap();
        assert_eq!(c.read_line().unwrap(), format!("N{i}"));
    }
    wait_until("every worker reaped", || {
        fs.children().is_empty().then_some(())
    });
    assert!(fs.children().iter().all(|&p| state(p) != Some('Z')));
}

#[test]
fn max_children_holds_clients_in_backlog_until_a_worker_exits() {
    let fs = forkserve()
        .args(["echo", "--max-children", "3", "-l", "tcp:127.0.0.1:0"])
        .start();
    let mut first: Vec<Conn> = (0..3).map(|_| Conn::connect(fs.addr(0))).collect();
    for c in &mut first {
        hello(c);
    }
    let mut waiting: Vec<Conn> = (0..2).map(|_| Conn::connect(fs.addr(0))).collect();
    for c in &mut waiting {
        c.write_all(b"later\n").unwrap();
    }
    fs.wait_children("echo worker", 3);
    // Not served while the limit holds (a short look, not a synchronisation).
    waiting[0].set_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 16];
    let e = waiting[0].read(&mut buf).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert_eq!(fs.children().len(), 3);
    waiting[0].set_timeout(Some(WAIT));
    // One leaves: one waiting client is served; another leaves: the last one is.
    first.pop();
    let mut got = 0;
    for c in &mut waiting {
        drop(first.pop());
        assert_eq!(c.read_line().unwrap(), "LATER");
        got += 1;
    }
    assert_eq!(got, 2);
}

#[test]
fn killed_worker_is_reaped_and_logged_while_serving_continues() {
    let fs = tcp_echo();
    let mut c = Conn::connect(fs.addr(0));
    hello(&mut c);
    let w = fs.wait_children("echo worker", 1)[0];
    unsafe { libc::kill(w, libc::SIGKILL) };
    let line = fs.wait_log(&format!("echo worker {w} "));
    assert!(line.contains("killed by SIGKILL"), "{line}");
    assert!(line.contains("peer 127.0.0.1:"), "{line}");
    wait_until("killed worker reaped", || {
        (!fs.children().contains(&w)).then_some(())
    });
    let mut d = Conn::connect(fs.addr(0));
    hello(&mut d);
}

#[test]
fn sigterm_lets_open_connection_finish_then_exits_0_and_removes_sockets() {
    let dir = TempDir::new("term");
    let sock = dir.path("e.sock");
    let mut fs = forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0", "-l"])
        .arg(format!("unix:{}", sock.display()))
        .listeners(2)
        .start();
    let mut c = Conn::connect(fs.addr(1));
    hello(&mut c);
    fs.signal(libc::SIGTERM);
    fs.wait_log("SIGTERM: shutting down");
    // New clients are refused; the socket file is gone at once.
    wait_until("socket file removed", || (!sock.exists()).then_some(()));
    // The open connection still works until its client is done.
    c.write_all(b"still here\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "STILL HERE");
    drop(c);
    let st = fs.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", fs.log_text());
}

#[test]
fn drain_timeout_ends_lingering_connections() {
    let mut fs = forkserve()
        .args(["echo", "--drain-timeout", "0.2", "-l", "tcp:127.0.0.1:0"])
        .start();
    let mut c = Conn::connect(fs.addr(0));
    hello(&mut c);
    fs.signal(libc::SIGTERM);
    fs.wait_log("drain timeout: sending SIGTERM");
    assert_eq!(c.read_line(), None);
    assert_eq!(fs.wait_exit().code(), Some(0));
}

#[test]
fn second_sigterm_and_sigquit_stop_now() {
    for sigs in [vec![libc::SIGTERM, libc::SIGTERM], vec![libc::SIGQUIT]] {
        let mut fs = tcp_echo();
        let mut c = Conn::connect(fs.addr(0));
        hello(&mut c);
        for (i, &s) in sigs.iter().enumerate() {
            fs.signal(s);
            if i == 0 && sigs.len() > 1 {
                fs.wait_log("shutting down");
            }
        }
        assert_eq!(fs.wait_exit().code(), Some(0));
        assert_eq!(c.read_line(), None);
        assert!(fs.has_log("stopping now"), "{}", fs.log_text());
    }
}

#[test]
fn sighup_is_logged_and_harmless() {
    let fs = tcp_echo();
    fs.signal(libc::SIGHUP);
    fs.wait_log("SIGHUP received");
    let mut c = Conn::connect(fs.addr(0));
    hello(&mut c);
}

#[test]
fn stale_socket_replaced_live_one_and_plain_file_refused() {
    let dir = TempDir::new("stale");
    let sock = dir.path("s.sock");
    // A stale socket: bound, then its owner went away.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let addr = format!("unix:{}", sock.display());
    let fs = forkserve().args(["echo", "-l", &addr]).start();
    assert!(fs.has_log("removing stale socket file"));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A second server on the same live socket is refused, and leaves it alone.
    fails_with(
        &["echo", "-l", &addr],
        69,
        &format!("{addr}: a live server is listening"),
    );
    let mut c = Conn::connect(fs.addr(0));
    hello(&mut c);
    // A regular file is never replaced.
    let file = dir.path("plain");
    std::fs::write(&file, b"data").unwrap();
    fails_with(
        &["echo", "-l", &format!("unix:{}", file.display())],
        69,
        "not a socket",
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
}

#[test]
fn socket_mode_is_applied() {
    let dir = TempDir::new("mode");
    let sock = dir.path("m.sock");
    let _fs = forkserve()
        .args(["echo", "--socket-mode", "0600", "-l"])
        .arg(format!("unix:{}", sock.display()))
        .start();
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn bad_addresses_and_ports_in_use_fail_fast() {
    for (addr, needle) in [
        ("tcp:127.0.0.1", "missing ':PORT'"),
        ("tcp:127.0.0.1:70000", "not a number from 0 to 65535"),
        ("ftp:127.0.0.1:21", "unknown scheme 'ftp'"),
        ("localhost:80", "unknown scheme"),
        ("tcp:[::1:80", "missing ']'"),
    ] {
        fails_with(&["echo", "-l", addr], 64, needle);
        fails_with(&["echo", "-l", addr], 64, "expected tcp:HOST:PORT");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp:{}", taken.local_addr().unwrap());
    fails_with(
        &["echo", "-l", &addr],
        69,
        &format!("{addr}: address already in use"),
    );
    // A stream address for a datagram service is a clear error too.
    fails_with(
        &["time", "-l", "tcp:127.0.0.1:0"],
        69,
        "needs datagram sockets",
    );
}

#[test]
fn max_per_source_refuses_extra_connections_from_one_ip() {
    let fs = forkserve()
        .args(["echo", "--max-per-source", "1", "-l", "tcp:127.0.0.1:0"])
        .start();
    let mut a = Conn::connect(fs.addr(0));
    hello(&mut a);
    let mut b = Conn::connect(fs.addr(0));
    let _ = b.write_all(b"x\n");
    // Closed at once: end-of-file, or a reset since the line went unread.
    let mut buf = [0u8; 16];
    match b.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("second connection must be closed at once, got {other:?}"),
    }
    fs.wait_log("refused 127.0.0.1:");
    drop(a);
    wait_until("worker gone", || fs.children().is_empty().then_some(()));
    let mut c = Conn::connect(fs.addr(0));
    hello(&mut c);
}

#[test]
fn idle_timeout_closes_silent_clients() {
    let fs = forkserve()
        .args(["echo", "--idle-timeout", "0.3", "-l", "tcp:127.0.0.1:0"])
        .start();
    let mut c = Conn::connect(fs.addr(0));
    hello(&mut c);
    assert_eq!(c.read_line(), None);
    fs.wait_log("idle timeout, closing");
}

#[test]
fn ready_fd_gets_a_newline_once_listening() {
    let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::os::fd::AsRawFd;
    let wfd = w.as_raw_fd();
    let mut b = forkserve().args(["echo", "-l", "tcp:127.0.0.1:0", "--ready-fd", "5"]);
    // SAFETY: dup2 in the child between fork and exec, on fds this test owns.
    unsafe {
        use std::os::unix::process::CommandExt;
        b.command().pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it by hand then.
            let rc = if wfd == 5 {
                libc::fcntl(5, libc::F_SETFD, 0)
            } else {
                libc::dup2(wfd, 5)
            };
            if rc == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let fs = b.spawn();
    drop(w);
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"\n");
    fs.wait_log("listening on tcp:127.0.0.1:");
}

#[test]
fn handler_panic_exits_1_and_is_logged() {
    let example = example("shout");
    let mut b = forkserve();
    *b.command() = Command::new(&example);
    let fs = b.arg("tcp:127.0.0.1:0").start();
    // Server::name("shout"): the titles and the log identity are the program's.
    wait_until("the master's title", || {
        cmdline(fs.pid)
            .starts_with("shout: master shout tcp:")
            .then_some(())
    });
    assert!(fs.has_log(&format!(" shout[{}]: INFO  shout: listening on", fs.pid)));
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"hi\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "HI!");
    c.write_all(b"panic\n").unwrap();
    assert_eq!(c.read_line(), None);
    let line = fs.wait_log("exit status 1");
    assert!(line.contains("shout worker"), "{line}");
    fs.wait_log("asked to panic by 127.0.0.1:");
    let mut d = Conn::connect(fs.addr(0));
    d.write_all(b"still up\n").unwrap();
    assert_eq!(d.read_line().unwrap(), "STILL UP!");
}

#[test]
fn socat_talks_to_unix_stream_and_datagram_sockets() {
    let dir = TempDir::new("socat");
    let es = dir.path("echo.sock");
    let ts = dir.path("time.sock");
    let fs = forkserve()
        .args(["-l"])
        .arg(format!("echo=unix:{}", es.display()))
        .arg("-l")
        .arg(format!("time=unixgram:{}", ts.display()))
        .listeners(2)
        .start();
    let _ = &fs;
    let out = Command::new("socat")
        .args(["-", &format!("UNIX-CONNECT:{}", es.display())])
        .stdin_bytes(b"via socat\n")
        .unwrap();
    assert_eq!(out, "VIA SOCAT\n");
    let me = dir.path("client.sock");
    let out = Command::new("socat")
        .args([
            "-t",
            "5",
            "-",
            &format!("UNIX-SENDTO:{},bind={}", ts.display(), me.display()),
        ])
        .stdin_bytes(b"time?\n")
        .unwrap();
    assert!(out.starts_with("Server time: "), "{out}");
}

trait StdinBytes {
    fn stdin_bytes(&mut self, input: &[u8]) -> std::io::Result<String>;
}

impl StdinBytes for Command {
    /// Runs the command with `input` on stdin; returns its stdout.
    fn stdin_bytes(&mut self, input: &[u8]) -> std::io::Result<String> {
        use std::process::Stdio;
        let mut child = self
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        child.stdin.take().unwrap().write_all(input)?;
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[test]
fn unbound_unixgram_sender_is_logged_and_skipped() {
    let dir = TempDir::new("unbound");
    let ts = dir.path("t.sock");
    let fs = forkserve()
        .args(["time", "-l"])
        .arg(format!("unixgram:{}", ts.display()))
        .start();
    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
    s.send_to(b"hi", &ts).unwrap();
    fs.wait_log("has no return address");
    // A bound sender still gets its answer.
    let reply = datagram_roundtrip(fs.addr(0), b"hi", &dir.0);
    assert!(reply.starts_with(b"Server time: "));
}

#[test]
fn killed_server_process_is_restarted() {
    for model in ["thread", "sequential"] {
        let fs = forkserve()
            .args(["echo", "--model", model, "-l", "tcp:127.0.0.1:0"])
            .start();
        let title = format!("echo server ({model})");
        let old = fs.wait_children(&title, 1)[0];
        unsafe { libc::kill(old, libc::SIGKILL) };
        fs.wait_log(&format!(
            "echo server process {old} ({model}) killed by SIGKILL"
        ));
        let new = wait_until("a new server process", || {
            let c: Vec<i32> = fs
                .children()
                .into_iter()
                .filter(|&p| p != old && cmdline(p).contains(&title))
                .collect();
            c.first().copied()
        });
        assert_ne!(new, old);
        let mut c = Conn::connect(fs.addr(0));
        hello(&mut c);
    }
}
