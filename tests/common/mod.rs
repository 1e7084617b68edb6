//! Shared helpers for the integration tests: start the real binary, wait for its
//! readiness lines, read its log, look at its processes in /proc, and stop it by PID
//! when the guard drops.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod chat_client;

/// Generous bound for anything a test waits for: it exists to fail instead of hang.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_forkserve")
}

/// The path of example program `name`, built now (`cargo test --test X` does not
/// build examples, so one left from an older build could be stale).
pub fn example(name: &str) -> PathBuf {
    let path = Path::new(bin())
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    let st = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name])
        .status()
        .unwrap();
    assert!(st.success(), "cargo build --example {name}: {st:?}");
    path
}

/// A fresh private directory for one test's sockets and files.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("fs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running forkserve; killed (with its process group's children it started) on drop.
pub struct Forkserve {
    pub child: Option<Child>,
    pub pid: i32,
    /// `service -> addresses` from the `listening on` lines, in order.
    pub addrs: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
    log_closed: Arc<std::sync::atomic::AtomicBool>,
}

pub struct Builder {
    cmd: Command,
    listeners: usize,
}

impl Builder {
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Builder {
        self.cmd.arg(a);
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, a: I) -> Builder {
        self.cmd.args(a);
        self
    }
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Builder {
        self.cmd.env(k, v);
        self
    }
    /// How many `listening on` lines to wait for (default 1).
    pub fn listeners(mut self, n: usize) -> Builder {
        self.listeners = n;
        self
    }
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }
    /// Starts and waits until the expected listeners are reported.
    pub fn start(self) -> Forkserve {
        let n = self.listeners;
        let mut fs = self.spawn();
        fs.wait_listening(n);
        fs
    }
    /// Starts without waiting.
    pub fn spawn(mut self) -> Forkserve {
        self.cmd
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = self.cmd.spawn().expect("start forkserve");
        let pid = child.id() as i32;
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let log2 = Arc::clone(&log);
        let log_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed2 = Arc::clone(&log_closed);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("FS_TEST_LOG").is_some() {
                    eprintln!("[fs {pid}] {line}");
                }
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
            closed2.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Forkserve {
            child: Some(child),
            pid,
            addrs: Vec::new(),
            log,
            lines: rx,
            log_closed,
        }
    }
}

pub fn forkserve() -> Builder {
    let mut cmd = Command::new(bin());
    // Nothing of a systemd or journal environment leaks in from the caller.
    cmd.env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM");
    Builder { cmd, listeners: 1 }
}

impl Forkserve {
    /// Waits for `n` `listening on` lines and records the addresses.
    pub fn wait_listening(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.addrs.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(idx) = line.find(": listening on ") {
                        let addr = line[idx + ": listening on ".len()..].trim().to_string();
                        let before = &line[..idx];
                        let service = before.rsplit(' ').next().unwrap_or("").to_string();
                        self.addrs.push((service, addr));
                    }
                }
                Err(_) => panic!(
                    "forkserve did not report {n} listeners; log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// The address of the i-th listener (`tcp:127.0.0.1:PORT` …).
    pub fn addr(&self, i: usize) -> &str {
        &self.addrs[i].1
    }

    /// The first address of `service` that starts with `scheme:`.
    pub fn addr_of(&self, service: &str, scheme: &str) -> String {
        self.addrs
            .iter()
            .find(|(s, a)| s == service && a.starts_with(&format!("{scheme}:")))
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {scheme} address for {service} in {:?}", self.addrs))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!("no log line with {needle:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn has_log(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on the pid this test started.
        unsafe {
            libc::kill(self.pid, sig);
        }
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                // The log is complete once stderr is closed (by the master and
                // every child it had).
                let closed = &self.log_closed;
                wait_until("the server's stderr to close", || {
                    closed
                        .load(std::sync::atomic::Ordering::SeqCst)
                        .then_some(())
                });
                return st;
            }
            if Instant::now() > deadline {
                panic!("forkserve did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Children of the master, by pid.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid)
    }

    /// Waits until the master has exactly `n` children matching `title_part`.
    pub fn wait_children(&self, title_part: &str, n: usize) -> Vec<i32> {
        wait_until(&format!("{n} children titled {title_part:?}"), || {
            let c: Vec<i32> = self
                .children()
                .into_iter()
                .filter(|&p| cmdline(p).contains(title_part))
                .collect();
            (c.len() == n).then_some(c)
        })
    }
}

impl Drop for Forkserve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            {
                let kids = children_of(self.pid);
                // SAFETY: kill(2) on pids this test started (the master and its children).
                unsafe {
                    libc::kill(self.pid, libc::SIGQUIT);
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    for k in kids {
                        if parent_of(k) == Some(self.pid) {
                            libc::kill(k, libc::SIGKILL);
                        }
                    }
                }
                let _ = child.wait();
            }
        }
    }
}

/// Runs forkserve with `args`, expecting it to exit at once with `code` and a
/// message containing `needle` on stderr.
pub fn fails_with(args: &[&str], code: i32, needle: &str) {
    let out = Command::new(bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: no {needle:?} in {err}");
}

/// Polls `f` until it returns Some, or panics after [`WAIT`].
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process's command line as `ps -ef` shows it (NULs as spaces, trimmed).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The short name (`comm`) `ps -e` shows.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Fields of /proc/PID/status.
pub fn status(pid: i32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

pub fn parent_of(pid: i32) -> Option<i32> {
    status(pid).get("PPid").and_then(|p| p.parse().ok())
}

/// The state letter (R, S, Z …) of a process.
pub fn state(pid: i32) -> Option<char> {
    status(pid).get("State").and_then(|s| s.chars().next())
}

pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(p) = e.file_name().to_string_lossy().parse::<i32>()
                && parent_of(p) == Some(pid)
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Connects to `tcp:HOST:PORT` or `unix:PATH` / `unix:@NAME`.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    pub fn connect(addr: &str) -> Conn {
        let c = if let Some(a) = addr.strip_prefix("tcp:") {
            Conn::Tcp(TcpStream::connect(a).unwrap_or_else(|e| panic!("connect {addr}: {e}")))
        } else if let Some(p) = addr.strip_prefix("unix:") {
            if let Some(name) = p.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let sa = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
                Conn::Unix(UnixStream::connect_addr(&sa).unwrap())
            } else {
                Conn::Unix(UnixStream::connect(p).unwrap_or_else(|e| panic!("connect {addr}: {e}")))
            }
        } else {
            panic!("not a stream address: {addr}")
        };
        c.set_timeout(Some(WAIT));
        c
    }
    pub fn set_timeout(&self, t: Option<Duration>) {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
            Conn::Unix(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
        }
    }
    pub fn shutdown_write(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
    /// Reads one line (without the newline); None at EOF.
    pub fn read_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match self.read(&mut b) {
                Ok(0) => {
                    return if buf.is_empty() {
                        None
                    } else {
                        Some(String::from_utf8_lossy(&buf).into_owned())
                    };
                }
                Ok(_) => {
                    if b[0] == b'\n' {
                        return Some(String::from_utf8_lossy(&buf).into_owned());
                    }
                    buf.push(b[0]);
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    pub fn read_to_end_string(&mut self) -> String {
        let mut s = Vec::new();
        self.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends one datagram to `udp:H:P` or `unixgram:PATH` (from a bound socket in `dir`
/// for unixgram) and returns the reply.
pub fn datagram_roundtrip(addr: &str, msg: &[u8], dir: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    if let Some(a) = addr.strip_prefix("udp:") {
        let sock = UdpSocket::bind(if a.starts_with('[') {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })
        .unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.send_to(msg, a).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        buf.truncate(n);
    } else if let Some(p) = addr.strip_prefix("unixgram:") {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let me = dir.join(format!(
            "client-{}.sock",
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&me);
        let sock = UnixDatagram::bind(&me).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.send_to(msg, p).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        buf.truncate(n);
        let _ = std::fs::remove_file(&me);
    } else {
        panic!("not a datagram address: {addr}");
    }
    buf
}

/// `nc` (netcat-openbsd) as an interactive client: what the test writes to its stdin
/// goes out as it is (no newline added: `nc` sends whatever it reads), and its
/// stdout is collected by a thread. Killed by PID when dropped.
pub struct Nc {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    /// How much of `out` the test has consumed with [`Nc::expect`].
    seen: usize,
}

impl Nc {
    /// Connects to `tcp:HOST:PORT` or `unix:PATH`.
    pub fn connect(addr: &str) -> Nc {
        let mut cmd = Command::new("nc");
        if let Some(a) = addr.strip_prefix("tcp:") {
            let (host, port) = a.rsplit_once(':').expect("tcp:HOST:PORT");
            cmd.args([host.trim_matches(['[', ']']), port]);
        } else if let Some(p) = addr.strip_prefix("unix:") {
            cmd.args(["-U", p]);
        } else {
            panic!("nc: not a stream address: {addr}");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nc (netcat-openbsd)");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("nc stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut b) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
        Nc {
            child,
            stdin,
            out,
            seen: 0,
        }
    }

    /// Writes `bytes` to nc's stdin, which sends them in one go.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("nc stdin open");
        stdin.write_all(bytes).expect("write to nc");
        stdin.flush().expect("flush nc stdin");
    }

    /// Waits until `needle` arrives after what was already expected; returns the
    /// output up to and including it.
    pub fn expect(&mut self, needle: &str) -> String {
        let start = self.seen;
        let end = wait_until(&format!("nc output {needle:?}"), || {
            let out = self.out.lock().unwrap();
            out[start..]
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| start + p + needle.len())
        });
        self.seen = end;
        String::from_utf8_lossy(&self.out.lock().unwrap()[start..end]).into_owned()
    }

    /// Everything nc has printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }
}

impl Drop for Nc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // SAFETY: kill(2) on the pid of the nc this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// True when the tests run as root. Otherwise prints that `test` is skipped and
/// why: a test that needs root never passes silently without it.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    println!("SKIPPED {test}: needs root (it starts the server as root with --user)");
    false
}

/// A system user made for one test with useradd, removed (userdel) on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
}

impl TestUser {
    pub fn create() -> TestUser {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("fst{}x{n}", std::process::id());
        // useradd takes a lock on /etc/passwd: parallel tests may find it busy.
        wait_until(&format!("useradd {name}"), || {
            Command::new("useradd")
                .args(["--system", "--no-create-home", "--user-group"])
                .args(["--shell", "/usr/sbin/nologin", &name])
                .status()
                .ok()
                .filter(|s| s.success())
        });
        let out = Command::new("id").args(["-u", &name]).output().unwrap();
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        TestUser { name, uid }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..100 {
            let ok = Command::new("userdel")
                .args(["-f", &self.name])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Whether this kernel installs a seccomp filter at all, checked in a child with a
/// deadline: a kernel whose BPF JIT is stuck (see src/sandbox.rs) blocks the
/// installing process for ever, and a test must say so rather than hang.
pub fn seccomp_installs() -> bool {
    // SAFETY: the child only makes raw system calls (prctl, seccomp, _exit), which
    // are safe after fork in a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let allow = [libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: allow.as_ptr() as *mut _,
        };
        // SAFETY: as above; `prog` lives until the call returns. A child that never
        // returns must not hold the test's output pipes or any other descriptor:
        // stdio goes to /dev/null, everything else is closed first.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let r = libc::syscall(libc::SYS_seccomp, 1, 0, &prog as *const _);
            libc::_exit(if r == 0 { 0 } else { 1 });
        }
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let mut st = 0;
        // SAFETY: waitpid on our own child, writing only `st`.
        if unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == pid {
            return libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Runs `promtool check metrics` (Debian package prometheus; `.ci/run` installs
/// it) on a Prometheus exposition; panics with promtool's complaint if it fails.
pub fn promtool_check(exposition: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}
