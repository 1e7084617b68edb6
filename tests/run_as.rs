//! `--user` when started as root outside systemd: every service must work after the
//! privilege drop (its processes all run as the user), and leave no socket file or
//! directory behind at exit. The runtime directory that root made (0700) is handed
//! over to the user before anything is bound in it. Needs root (CI runs as root);
//! without it each test says it is skipped.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use common::*;

/// A test's directories: `top` (open to everyone, like /run) and `rt` inside it,
/// made by root with mode 0700 as a runtime directory would be.
struct Dirs {
    top: TempDir,
    rt: PathBuf,
}

fn dirs(tag: &str) -> Dirs {
    let top = TempDir::new(tag);
    std::fs::set_permissions(&top.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rt = top.path("rt");
    std::fs::create_dir(&rt).unwrap();
    std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o700)).unwrap();
    Dirs { top, rt }
}

fn uid_of(pid: i32) -> Option<u32> {
    status(pid)
        .get("Uid")
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
}

/// Starts `args` as root with `--user`, `RUNTIME_DIRECTORY=rt`.
fn start_as(user: &TestUser, rt: &Path, args: &[&str], listeners: usize) -> Forkserve {
    forkserve()
        .env("RUNTIME_DIRECTORY", rt)
        .args(args)
        .args(["--user", &user.name])
        .listeners(listeners)
        .start()
}

/// Every process of the server runs as the user, and so do `n` children at least.
fn all_run_as(fs: &Forkserve, user: &TestUser, n: usize) {
    assert_eq!(uid_of(fs.pid), Some(user.uid), "the master");
    let kids = wait_until(&format!("{n} children"), || {
        let k = fs.children();
        (k.len() >= n).then_some(k)
    });
    for k in kids {
        if let Some(uid) = uid_of(k) {
            assert_eq!(uid, user.uid, "child {k} ({})", cmdline(k));
        }
    }
}

/// SIGTERM: exit 0, and the runtime directory is empty again.
fn stops_clean(mut fs: Forkserve, rt: &Path) {
    fs.signal(libc::SIGTERM);
    let st = fs.wait_exit();
    assert_eq!(st.code(), Some(0), "log:\n{}", fs.log_text());
    let left: Vec<_> = std::fs::read_dir(rt)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "left behind: {left:?}\nlog:\n{}",
        fs.log_text()
    );
    assert!(!fs.log_text().contains("ERROR"), "{}", fs.log_text());
}

/// A fresh user and directories, when running as root (else None, said why).
fn as_root(test: &str) -> Option<(TestUser, Dirs)> {
    root_or_skip(test).then(|| (TestUser::create(), dirs(test)))
}

/// `service` as the user, on `NET:127.0.0.1:0` and `LOCAL:RT/SERVICE.sock`.
fn serve(user: &TestUser, d: &Dirs, service: &str, net: &str, local: &str) -> Forkserve {
    serve_with(user, d, &[service], service, net, local)
}

fn serve_with(
    user: &TestUser,
    d: &Dirs,
    args: &[&str],
    service: &str,
    net: &str,
    local: &str,
) -> Forkserve {
    let net = format!("{net}:127.0.0.1:0");
    let local = format!("{local}:{}/{service}.sock", d.rt.display());
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-l", &net, "-l", &local]);
    start_as(user, &d.rt, &all, 2)
}

fn line_roundtrip(addr: &str, send: &str) -> String {
    let mut c = Conn::connect(addr);
    c.write_all(send.as_bytes()).unwrap();
    c.shutdown_write();
    c.read_to_end_string()
}

#[test]
fn echo_runs_as_the_user() {
    let Some((user, d)) = as_root("echo_runs_as_the_user") else {
        return;
    };
    let fs = serve(&user, &d, "echo", "tcp", "unix");
    // The runtime directory is the user's now; so is the socket file.
    fs.wait_log("running as");
    assert_eq!(std::fs::metadata(&d.rt).unwrap().uid(), user.uid);
    assert_eq!(
        std::fs::metadata(d.rt.join("echo.sock")).unwrap().uid(),
        user.uid
    );
    for a in [fs.addr(0).to_string(), fs.addr(1).to_string()] {
        assert_eq!(line_roundtrip(&a, "hi\n"), "HI\n");
    }
    let mut held = Conn::connect(fs.addr(0));
    held.write_all(b"x\n").unwrap();
    assert_eq!(held.read_line().as_deref(), Some("X"));
    all_run_as(&fs, &user, 1);
    drop(held);
    stops_clean(fs, &d.rt);
    drop(d.top);
}

#[test]
fn time_runs_as_the_user() {
    let Some((user, d)) = as_root("time_runs_as_the_user") else {
        return;
    };
    let fs = serve(&user, &d, "time", "udp", "unixgram");
    let udp = datagram_roundtrip(fs.addr(0), b"", &d.top.0);
    assert!(!udp.is_empty());
    // A Unix-datagram client must let the server's user write to its socket.
    let me = d.top.path("client.sock");
    let sock = UnixDatagram::bind(&me).unwrap();
    std::fs::set_permissions(&me, std::fs::Permissions::from_mode(0o777)).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.send_to(b"", d.rt.join("time.sock")).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(n > 0);
    assert_eq!(uid_of(fs.pid), Some(user.uid));
    stops_clean(fs, &d.rt);
}

#[test]
fn http_runs_as_the_user() {
    let Some((user, d)) = as_root("http_runs_as_the_user") else {
        return;
    };
    let fs = serve(&user, &d, "http", "tcp", "unix");
    for a in [fs.addr(0).to_string(), fs.addr(1).to_string()] {
        let got = line_roundtrip(
            &a,
            "GET /time HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert_eq!(uid_of(fs.pid), Some(user.uid));
    stops_clean(fs, &d.rt);
}

#[test]
fn files_runs_as_the_user() {
    let Some((user, d)) = as_root("files_runs_as_the_user") else {
        return;
    };
    let root = d.top.path("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("a.txt"), "the file's bytes\n").unwrap();
    let root_s = root.display().to_string();
    let fs = serve_with(
        &user,
        &d,
        &["files", "--root", &root_s],
        "files",
        "udp",
        "unixgram",
    );
    let out = d.top.path("out.txt");
    let o = std::process::Command::new(bin())
        .args(["files-get", fs.addr(0), "a.txt", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "the file's bytes\n");
    assert_eq!(uid_of(fs.pid), Some(user.uid));
    stops_clean(fs, &d.rt);
}

#[test]
fn models_run_as_the_user() {
    let Some((user, d)) = as_root("models_run_as_the_user") else {
        return;
    };
    let mut args: Vec<String> = vec!["models".into()];
    for m in ["sequential", "thread", "fork"] {
        args.push("-l".into());
        args.push(format!("models-{m}=tcp:127.0.0.1:0"));
        args.push("-l".into());
        args.push(format!("models-{m}=unix:{}/{m}.sock", d.rt.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fs = start_as(&user, &d.rt, &args, 6);
    for (_, a) in fs.addrs.clone() {
        let got = line_roundtrip(&a, "go\n");
        assert!(got.contains("result=333283335000"), "{a}: {got}");
    }
    // The sequential and thread server processes run as the user too.
    all_run_as(&fs, &user, 2);
    stops_clean(fs, &d.rt);
}

/// Reads what the chat sends up to and including `until`.
fn expect(c: &mut Conn, until: &str) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.push(b[0]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn chat_login(addr: &str, name: &str) -> Conn {
    let mut c = Conn::connect(addr);
    expect(&mut c, "Username: ");
    c.write_all(format!("{name}\n").as_bytes()).unwrap();
    expect(&mut c, &format!("Welcome, {name}!"));
    c
}

/// Two users talk through the broker, over TCP and the Unix socket; they stay.
fn chat_works(fs: &Forkserve, unix: &str) -> (Conn, Conn) {
    let mut ann = chat_login(fs.addr(0), "ann");
    let mut bob = chat_login(unix, "bob");
    expect(&mut ann, "* bob joined");
    bob.write_all(b"hello ann\n").unwrap();
    expect(&mut ann, "[bob]: hello ann");
    (ann, bob)
}

#[test]
fn chat_runs_as_the_user_with_its_broker() {
    let Some((user, d)) = as_root("chat_runs_as_the_user_with_its_broker") else {
        return;
    };
    let fs = serve(&user, &d, "chat", "tcp", "unix");
    let users = chat_works(&fs, fs.addr(1));
    let broker = fs.wait_children("chat broker", 1)[0];
    assert_eq!(uid_of(broker), Some(user.uid));
    all_run_as(&fs, &user, 3);
    drop(users);
    assert!(
        !fs.log_text().contains("restarting in"),
        "{}",
        fs.log_text()
    );
    stops_clean(fs, &d.rt);
}

#[test]
fn chat_as_the_user_in_the_default_runtime_directory() {
    if !root_or_skip("chat_as_the_user_in_the_default_runtime_directory") {
        return;
    }
    // No RUNTIME_DIRECTORY, and root's XDG_RUNTIME_DIR is not the user's: the
    // broker's socket goes to /tmp/forkserve-UID, made for the user.
    let user = TestUser::create();
    let rt = PathBuf::from(format!("/tmp/forkserve-{}", user.uid));
    let _ = std::fs::remove_dir_all(&rt);
    let mut b = forkserve()
        .env("XDG_RUNTIME_DIR", "/root/not-for-the-user")
        .args(["chat", "-l", "tcp:127.0.0.1:0", "--user", &user.name]);
    b.command().env_remove("RUNTIME_DIRECTORY");
    let fs = b.start();
    let meta = std::fs::symlink_metadata(&rt).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (user.uid, 0o700));
    let mut ann = chat_login(fs.addr(0), "ann");
    ann.write_all(b"/rooms\n").unwrap();
    expect(&mut ann, "#lobby");
    drop(ann);
    stops_clean(fs, &rt);
    let _ = std::fs::remove_dir(&rt);
}

#[test]
fn a_socket_file_the_user_cannot_remove_is_reported_at_start() {
    let Some((user, d)) = as_root("a_socket_file_the_user_cannot_remove_is_reported_at_start")
    else {
        return;
    };
    // A directory only root may write to: the dropped master cannot unlink there.
    let fixed = d.top.path("root-only");
    std::fs::create_dir(&fixed).unwrap();
    std::fs::set_permissions(&fixed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let unix = format!("unix:{}", fixed.join("echo.sock").display());
    let fs = start_as(&user, &d.rt, &["echo", "-l", &unix], 1);
    let line = fs.wait_log("socket file stays behind at exit");
    assert!(line.contains(&unix), "{line}");
    assert_eq!(line_roundtrip(fs.addr(0), "ok\n"), "OK\n");
}
