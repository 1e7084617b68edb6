//! The worker sandbox (src/sandbox.rs): a probe server (examples/sandbox_probe.rs)
//! shows a worker cannot read outside its paths or reach a TCP address (Landlock),
//! or, with `--seccomp`, open a socket its service does not need at all, and can do
//! all of it with `--no-sandbox`; the built-in services' workers, server processes
//! and the chat broker run with no_new_privs (and, with `--seccomp`, a filter).

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;

use common::*;

fn start_probe(dir: &TempDir, extra: &[&str]) -> Forkserve {
    let mut b = forkserve();
    *b.command() = Command::new(example("sandbox_probe"));
    b.arg("tcp:127.0.0.1:0")
        .arg(dir.0.as_os_str())
        .args(extra)
        .start()
}

fn ask(fs: &Forkserve, probe: &str) -> Option<String> {
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(format!("{probe}\n").as_bytes()).unwrap();
    c.read_line()
}

/// A TCP and a Unix listener the probe is asked to reach, to tell whether it did.
struct Targets {
    tcp: TcpListener,
    unix: UnixListener,
    unix_path: PathBuf,
}

impl Targets {
    fn new(dir: &TempDir) -> Targets {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let unix_path = dir.path("target.sock");
        let unix = UnixListener::bind(&unix_path).unwrap();
        tcp.set_nonblocking(true).unwrap();
        unix.set_nonblocking(true).unwrap();
        Targets {
            tcp,
            unix,
            unix_path,
        }
    }
    fn tcp_addr(&self) -> String {
        self.tcp.local_addr().unwrap().to_string()
    }
    fn reached(&self) -> (bool, bool) {
        (self.tcp.accept().is_ok(), self.unix.accept().is_ok())
    }
}

/// True when the `--seccomp` tests can run here; otherwise prints why they are
/// skipped (never a silent pass).
fn seccomp_or_skip(test: &str) -> bool {
    let ok = seccomp_installs();
    if !ok {
        println!(
            "SKIPPED {test}: this kernel does not install a seccomp filter within 3 s \
             (its BPF JIT is stuck or seccomp is missing)"
        );
    }
    ok
}

/// The probe reads its directory but not /etc/passwd (Landlock: EACCES); returns
/// the allowed file's path.
fn reads_only_its_paths(fs: &Forkserve, dir: &TempDir) -> PathBuf {
    let allowed = dir.path("allowed.txt");
    let line = ask(fs, &format!("open {}", allowed.display())).unwrap();
    assert!(line.ends_with(": ok, 5 bytes"), "{line}");
    let line = ask(fs, "open /etc/passwd").unwrap();
    assert!(
        line.starts_with("open /etc/passwd: denied") && line.contains("Permission denied"),
        "{line}"
    );
    allowed
}

#[test]
fn a_worker_reads_only_its_paths_and_reaches_no_tcp_address() {
    let dir = TempDir::new("sandbox-ll");
    std::fs::write(dir.path("allowed.txt"), "12345").unwrap();
    let targets = Targets::new(&dir);
    let fs = start_probe(&dir, &[]);
    reads_only_its_paths(&fs, &dir);
    // Landlock's network rules: no TCP connect.
    let line = ask(&fs, &format!("tcp {}", targets.tcp_addr())).unwrap();
    assert!(line.contains(": denied"), "{line}");
    assert!(targets.tcp.accept().is_err());
}

#[test]
fn with_seccomp_a_worker_opens_no_socket() {
    if !seccomp_or_skip("with_seccomp_a_worker_opens_no_socket") {
        return;
    }
    let dir = TempDir::new("sandbox");
    std::fs::write(dir.path("allowed.txt"), "12345").unwrap();
    let targets = Targets::new(&dir);
    let fs = start_probe(&dir, &["--seccomp"]);

    let allowed = reads_only_its_paths(&fs, &dir);

    // seccomp: socket(2) is not in the policy; the worker dies of SIGSYS.
    assert_eq!(ask(&fs, &format!("tcp {}", targets.tcp_addr())), None);
    fs.wait_log("killed by SIGSYS");
    assert_eq!(
        ask(&fs, &format!("unix {}", targets.unix_path.display())),
        None
    );
    assert_eq!(targets.reached(), (false, false));
    // The server goes on serving.
    let line = ask(&fs, &format!("open {}", allowed.display())).unwrap();
    assert!(line.ends_with(": ok, 5 bytes"), "{line}");
}

#[test]
fn without_the_sandbox_the_same_probes_succeed() {
    let dir = TempDir::new("nosandbox");
    let targets = Targets::new(&dir);
    let fs = start_probe(&dir, &["--no-sandbox"]);
    let line = ask(&fs, "open /etc/passwd").unwrap();
    assert!(line.starts_with("open /etc/passwd: ok"), "{line}");
    let line = ask(&fs, &format!("tcp {}", targets.tcp_addr())).unwrap();
    assert!(line.ends_with(": ok, connected"), "{line}");
    let line = ask(&fs, &format!("unix {}", targets.unix_path.display())).unwrap();
    assert!(line.ends_with(": ok, connected"), "{line}");
    assert_eq!(
        wait_until("the probe's connections", || {
            let r = targets.reached();
            (r == (true, true)).then_some(r)
        }),
        (true, true)
    );
}

#[test]
fn with_unix_sockets_allowed_only_pathname_ones_are_reachable() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("sbx-unix");
    let targets = Targets::new(&dir);
    let name = format!("fs-probe-{}", std::process::id());
    let abs = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let abstract_listener = UnixListener::bind_addr(&abs).unwrap();
    abstract_listener.set_nonblocking(true).unwrap();
    let fs = start_probe(&dir, &["--unix"]);
    let line = ask(&fs, &format!("unix {}", targets.unix_path.display())).unwrap();
    assert!(line.ends_with(": ok, connected"), "{line}");
    // Landlock's abstract-socket scope: a name bound outside the sandbox.
    let line = ask(&fs, &format!("abstract {name}")).unwrap();
    assert!(
        line.starts_with(&format!("abstract {name}: denied"))
            && line.contains("Operation not permitted"),
        "{line}"
    );
    assert!(abstract_listener.accept().is_err());
    // Other families stay closed (Landlock refuses TCP).
    let tcp = ask(&fs, &format!("tcp {}", targets.tcp_addr()));
    assert!(
        tcp.as_deref().is_none_or(|l| l.contains(": denied")),
        "{tcp:?}"
    );
    assert!(targets.tcp.accept().is_err());
}

/// `Seccomp:` (2: a filter) and `NoNewPrivs:` (1) of a process, from /proc.
fn sandboxed(pid: i32) -> (String, String) {
    let st = status(pid);
    (st["Seccomp"].clone(), st["NoNewPrivs"].clone())
}

#[test]
fn built_in_workers_server_processes_and_the_broker_are_sandboxed() {
    built_ins_sandboxed(&[], ("0", "1"));
}

#[test]
fn with_seccomp_built_ins_run_under_their_filters() {
    if !seccomp_or_skip("with_seccomp_built_ins_run_under_their_filters") {
        return;
    }
    built_ins_sandboxed(&["--seccomp"], ("2", "1"));
}

/// Every built-in's workers, server processes and the broker show `expect`
/// (Seccomp, NoNewPrivs) and still answer.
fn built_ins_sandboxed(extra: &[&str], expect: (&str, &str)) {
    let on = || (expect.0.to_string(), expect.1.to_string());
    let dir = TempDir::new("sbx-builtins");
    // Fork-model workers of echo and http, a chat worker and the broker.
    let fs = forkserve()
        .env("XDG_RUNTIME_DIR", dir.0.as_os_str())
        .args(extra)
        .args(["-l", "echo=tcp:127.0.0.1:0", "-l", "http=tcp:127.0.0.1:0"])
        .args(["-l", "chat=tcp:127.0.0.1:0", "-l", "time=udp:127.0.0.1:0"])
        .args(["-l", "models-sequential=tcp:127.0.0.1:0"])
        .args(["-l", "models-thread=tcp:127.0.0.1:0"])
        .args(["-l", "models-fork=tcp:127.0.0.1:0"])
        .listeners(7)
        .start();
    let mut echo = Conn::connect(&fs.addr_of("echo", "tcp"));
    echo.write_all(b"hi\n").unwrap();
    assert_eq!(echo.read_line().unwrap(), "HI");
    let mut http = Conn::connect(&fs.addr_of("http", "tcp"));
    http.write_all(b"GET /time HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(http.read_line().unwrap().trim_end(), "HTTP/1.1 200 OK");
    let mut chat = Conn::connect(&fs.addr_of("chat", "tcp"));
    chat.write_all(b"ann\n").unwrap();
    for title in ["echo worker", "http worker", "chat worker", "chat broker"] {
        let pid = fs.wait_children(title, 1)[0];
        assert_eq!(sandboxed(pid), on(), "{title} (pid {pid})");
    }
    for title in ["models-sequential", "models-thread"] {
        let pid = fs.wait_children(title, 1)[0];
        assert_eq!(sandboxed(pid), on(), "{title} server (pid {pid})");
    }
    // Every service still answers inside its sandbox (time reads the time zone).
    let reply = datagram_roundtrip(&fs.addr_of("time", "udp"), b"t", &dir.0);
    assert!(reply.starts_with(b"Server time: "), "{reply:?}");
    assert!(!fs.has_log("SIGSYS"), "{}", fs.log_text());
}

#[test]
fn no_sandbox_turns_it_off() {
    let fs = forkserve()
        .args(["echo", "--no-sandbox", "-l", "tcp:127.0.0.1:0"])
        .start();
    let mut echo = Conn::connect(fs.addr(0));
    echo.write_all(b"hi\n").unwrap();
    assert_eq!(echo.read_line().unwrap(), "HI");
    let pid = fs.wait_children("echo worker", 1)[0];
    assert_eq!(sandboxed(pid).0, "0");
    fs.wait_log("sandbox: off (--no-sandbox)");
}
