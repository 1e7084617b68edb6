//! Operating forkserve: the configuration file and check-config, live reload,
//! the binary upgrade (re-exec in place), the control socket and `forkserve ctl`,
//! and the counters (ctl status, SIGUSR1, Prometheus text under promtool).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// Writes `text` to `path` atomically (rename), as an operator's editor would.
fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `forkserve ctl --socket SOCK ARGS…` run by `bin`.
fn ctl_with(bin: &str, sock: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run forkserve ctl")
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    ctl_with(bin(), sock, args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ctl --json ARGS` parsed.
fn ctl_json(sock: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = ctl(sock, &a);
    assert!(out.status.success(), "ctl {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {status}"))
}

/// Sends a line, reads the upper-cased answer.
fn roundtrip(c: &mut Conn, line: &str) {
    writeln!(c, "{line}").unwrap();
    assert_eq!(c.read_line().unwrap(), line.to_uppercase());
}

fn echo_once(addr: &str) {
    let mut c = Conn::connect(addr);
    roundtrip(&mut c, "ping");
}

/// A server started with `--config` from `dir`, its control socket in `dir`.
fn start(bin: &str, dir: &TempDir, config: &str, listeners: usize, extra: &[&str]) -> Forkserve {
    let file = dir.path("forkserve.toml");
    write_file(&file, config);
    let mut builder = forkserve_at(bin)
        .arg("--config")
        .arg(&file)
        .arg("--control")
        .arg(dir.path("control.sock"))
        .args(extra)
        .listeners(listeners);
    builder.command().current_dir(&dir.0);
    builder.start()
}

/// Like `forkserve()`, but running the binary at `bin` (a copy an upgrade replaces).
fn forkserve_at(bin: &str) -> Builder {
    let mut b = forkserve();
    let cmd = b.command();
    let mut fresh = Command::new(bin);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => fresh.env(k, v),
            None => fresh.env_remove(k),
        };
    }
    *cmd = fresh;
    b
}

#[test]
fn check_config_prints_the_effective_configuration_and_names_line_and_key() {
    let out = Command::new(bin())
        .args(["check-config", "examples/forkserve.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("name = \"echo\"") && t.contains("max_per_source = 8"),
        "{t}"
    );
    assert!(t.contains("model = \"prefork\""), "{t}");

    let dir = TempDir::new("ops-check");
    let bad = [
        (
            "[[service]]\nname = \"a\"\nkind = \"nope\"\n",
            ":3: service 1 key 'kind': unknown kind 'nope'",
        ),
        (
            "[[service]]\nname = \"a\"\nkind = \"echo\"\n\nmax_children = \"x\"\n",
            ":5: service 1 key 'max_children'",
        ),
        (
            "[[service]]\nname = \"a\"\nkind = \"echo\"\nlisten = [\"tcp:nowhere\"]\n",
            ":4: service 1 key 'listen'",
        ),
        ("drain_timeout = [\n", ":2"),
        (
            "[[service]]\nname = \"a\"\nkind = \"echo\"\nno_such_option = 1\n",
            ":4: service 1 key 'no_such_option'",
        ),
    ];
    for (i, (toml, want)) in bad.iter().enumerate() {
        let f = dir.path(&format!("bad{i}.toml"));
        std::fs::write(&f, toml).unwrap();
        let out = Command::new(bin())
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{toml}: {}", text(&out));
        let err = text(&out);
        assert!(
            err.contains(&format!("{}{want}", f.display())),
            "{toml}: {err}"
        );
    }
}

const RELOAD_V1: &str = r#"
[[service]]
name = "keep"
kind = "echo"
listen = ["tcp:127.0.0.1:0"]
max_children = 10

[[service]]
name = "change"
kind = "echo"
listen = ["unix:DIR/change.sock"]
idle_timeout = 30

[[service]]
name = "gone"
kind = "http"
listen = ["tcp:127.0.0.1:0"]
"#;

const RELOAD_V2: &str = r#"
[[service]]
name = "keep"
kind = "echo"
listen = ["tcp:127.0.0.1:0"]
max_children = 7

[[service]]
name = "change"
kind = "echo"
listen = ["unix:DIR/change.sock", "unix:DIR/change2.sock"]
idle_timeout = 31

[[service]]
name = "added"
kind = "echo"
listen = ["unix:DIR/added.sock"]
"#;

#[test]
fn reload_adds_removes_and_changes_services_while_connections_stay_open() {
    let dir = TempDir::new("ops-reload");
    let d = dir.0.display().to_string();
    let fs = start(bin(), &dir, &RELOAD_V1.replace("DIR", &d), 3, &[]);
    let sock = dir.path("control.sock");
    let keep = fs.addr_of("keep", "tcp");
    let gone = fs.addr_of("gone", "tcp");
    let change = format!("unix:{d}/change.sock");
    let inode = std::fs::metadata(dir.path("change.sock")).unwrap().ino();

    // Connections open across the reload, on an unchanged and on a changed service.
    let mut on_keep = Conn::connect(&keep);
    roundtrip(&mut on_keep, "before");
    let mut on_change = Conn::connect(&change);
    roundtrip(&mut on_change, "before");

    write_file(&dir.path("forkserve.toml"), &RELOAD_V2.replace("DIR", &d));
    let out = ctl(&sock, &["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 added, 1 changed, 1 removed, 1 with new limits"),
        "{}",
        text(&out)
    );

    // Running connections carry on.
    roundtrip(&mut on_keep, "after");
    roundtrip(&mut on_change, "after");
    // The unchanged listener is the same socket (same port), the changed service kept
    // its socket file (same inode: not rebound) and got the new one.
    echo_once(&keep);
    echo_once(&change);
    assert_eq!(
        std::fs::metadata(dir.path("change.sock")).unwrap().ino(),
        inode
    );
    echo_once(&format!("unix:{d}/change2.sock"));
    echo_once(&format!("unix:{d}/added.sock"));
    // The removed service is closed.
    assert!(std::net::TcpStream::connect(gone.trim_start_matches("tcp:")).is_err());
    let status = ctl_json(&sock, &["services"]);
    assert_eq!(service(&status, "keep")["max_children"], 7);
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep", "change", "added"]);
    // The old connections end normally.
    on_keep.shutdown_write();
    assert_eq!(on_keep.read_line(), None);
    on_change.shutdown_write();
    assert_eq!(on_change.read_line(), None);
}

#[test]
fn a_broken_file_keeps_the_running_configuration() {
    let dir = TempDir::new("ops-broken");
    let config = "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\n";
    let fs = start(bin(), &dir, config, 1, &[]);
    let addr = fs.addr(0).to_string();
    let mut open = Conn::connect(&addr);
    roundtrip(&mut open, "one");

    write_file(
        &dir.path("forkserve.toml"),
        "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"\n",
    );
    fs.signal(libc::SIGHUP);
    let line = fs.wait_log("reload failed, the running configuration stays");
    assert!(line.contains("forkserve.toml:"), "{line}");
    // Through ctl: the same, with the reason and a usage exit status.
    let out = ctl(&dir.path("control.sock"), &["reload"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("forkserve.toml:"), "{}", text(&out));
    // An address already taken fails the reload as a whole, too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap();
    write_file(
        &dir.path("forkserve.toml"),
        &format!(
            "{config}\n[[service]]\nname = \"x\"\nkind = \"echo\"\nlisten = [\"tcp:{taken}\"]\n"
        ),
    );
    let out = ctl(&dir.path("control.sock"), &["reload"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("address already in use"),
        "{}",
        text(&out)
    );

    roundtrip(&mut open, "two");
    echo_once(&addr);
    let status = ctl_json(&dir.path("control.sock"), &["services"]);
    assert_eq!(status["services"].as_array().unwrap().len(), 1);
}

/// A directory beside the binary under test (same filesystem, so the binary can
/// be hard-linked into it).
fn dir_beside_binary(tag: &str) -> TempDir {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let p =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// The binary under test, linked into `dir` (an upgrade then replaces the link).
/// Links, not copies: a file this process writes could be held open by a child
/// another test is forking, and executing it would fail with ETXTBSY.
fn copy_binary(dir: &TempDir) -> PathBuf {
    let p = dir.path("forkserve");
    std::fs::hard_link(bin(), &p).unwrap();
    p
}

/// Replaces the file at `p` (as a package upgrade does): by another link to the
/// binary under test, or by `script`, written by a shell (see [`copy_binary`]).
fn replace_binary(p: &Path, script: Option<&str>, mode: &str) {
    let tmp = p.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    match script {
        None => std::fs::hard_link(bin(), &tmp).unwrap(),
        Some(text) => {
            let st = Command::new("sh")
                .args([
                    "-c",
                    "printf '%s' \"$1\" > \"$2\" && chmod \"$3\" \"$2\"",
                    "sh",
                    text,
                ])
                .arg(&tmp)
                .arg(mode)
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    std::fs::rename(&tmp, p).unwrap();
}

#[test]
fn upgrade_under_load_keeps_the_pid_and_every_connection() {
    let dir = dir_beside_binary("ops-upgrade");
    let exe = copy_binary(&dir);
    let exe_s = exe.to_str().unwrap().to_string();
    // No per-source limit: a debug-build master reaps late under load, and the
    // fair share would refuse some of the bench's connections (counted apart).
    let config = "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\nmax_children = 64\nmax_per_source = 0\n";
    let mut fs = start(&exe_s, &dir, config, 1, &[]);
    let sock = dir.path("control.sock");
    let addr = fs.addr(0).to_string();
    let mut old = Conn::connect(&addr);
    roundtrip(&mut old, "old code");
    let old_worker = wait_until("the old worker", || {
        fs.children()
            .into_iter()
            .find(|&p| cmdline(p).contains("worker"))
    });

    let mut bench = Command::new(bin())
        .args(["bench", "--connect", &addr, "-c", "8", "-d", "3", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the bench to be under way", || {
        let s = ctl_json(&sock, &["status"]);
        (service(&s, "e")["counters"]["accepted"].as_u64().unwrap() > 100).then_some(())
    });
    replace_binary(&exe, None, "755");
    let out = ctl(&sock, &["upgrade"]);
    assert!(out.status.success(), "{}\n{}", text(&out), fs.log_text());
    let status = ctl_json(&sock, &["status"]);
    assert_eq!(status["pid"], fs.pid, "the master keeps its pid");
    assert_eq!(status["upgrades"], 1);
    assert!(fs.has_log("upgrade: re-executing"));
    // The counters carry on from where the old image left them.
    assert!(
        service(&status, "e")["counters"]["accepted"]
            .as_u64()
            .unwrap()
            > 100
    );
    // The old connection is still served by its worker (the old code), a child of
    // the same master.
    assert_eq!(parent_of(old_worker), Some(fs.pid));
    roundtrip(&mut old, "still here");
    old.shutdown_write();
    assert_eq!(old.read_line(), None);

    let mut json = String::new();
    bench
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut json)
        .unwrap();
    let st = bench.wait().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(st.success(), "{json}");
    println!("bench across the upgrade: {json}");
    assert_eq!(v["errors"]["total"], 0, "{json}");
    assert!(v["requests"].as_u64().unwrap() > 100, "{json}");
    echo_once(&addr);
    // The new image still answers its signals: SIGUSR1, and SIGTERM ends it cleanly.
    fs.signal(libc::SIGUSR1);
    fs.wait_log("status: ");
    fs.signal(libc::SIGTERM);
    assert!(fs.wait_exit().success(), "{}", fs.log_text());
}

#[test]
fn a_failing_new_binary_leaves_the_old_master_serving() {
    let dir = dir_beside_binary("ops-upgrade-fail");
    let exe = copy_binary(&dir);
    let config = "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\n";
    let fs = start(exe.to_str().unwrap(), &dir, config, 1, &[]);
    let sock = dir.path("control.sock");
    let addr = fs.addr(0).to_string();

    // A binary that does not start.
    replace_binary(&exe, Some("#!/bin/sh\necho broken >&2\nexit 3\n"), "755");
    fs.signal(libc::SIGUSR2);
    let line = fs.wait_log("upgrade failed, the running binary keeps serving");
    assert!(
        line.contains("broken") && line.contains("exit status: 3"),
        "{line}"
    );
    echo_once(&addr);
    // A file that is not executable, through ctl.
    replace_binary(&exe, Some("not a program"), "644");
    let out = ctl(&sock, &["upgrade"]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(text(&out).contains("upgrade failed"), "{}", text(&out));
    echo_once(&addr);
    let status = ctl_json(&sock, &["status"]);
    assert_eq!(status["pid"], fs.pid);
    assert_eq!(status["upgrades"], 0);
}

#[test]
fn ctl_shows_children_drains_resumes_and_sets_limits() {
    let dir = TempDir::new("ops-ctl");
    let config = "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\n";
    let fs = start(bin(), &dir, config, 1, &[]);
    let sock = dir.path("control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let addr = fs.addr(0).to_string();
    let mut held = Conn::connect(&addr);
    roundtrip(&mut held, "hold");

    let out = ctl(&sock, &["children"]);
    let t = text(&out);
    assert!(
        t.starts_with("PID") && t.contains(" e ") && t.contains("worker"),
        "{t}"
    );
    assert!(t.contains("127.0.0.1:"), "{t}");

    let out = ctl(&sock, &["set", "e", "max-children=3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        service(&ctl_json(&sock, &["services"]), "e")["max_children"],
        3
    );
    let out = ctl(&sock, &["set", "nope", "max-children=3"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out).contains("no service named 'nope'"));

    let out = ctl(&sock, &["drain", "e"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        service(&ctl_json(&sock, &["services"]), "e")["state"],
        "draining"
    );
    // While draining, a new client waits in the backlog; the held one carries on.
    let mut waiting = Conn::connect(&addr);
    writeln!(waiting, "queued").unwrap();
    roundtrip(&mut held, "still");
    assert!(wait_for_title(&fs, "[draining]"));
    let out = ctl(&sock, &["resume", "e"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(waiting.read_line().unwrap(), "QUEUED");

    let table = text(&ctl(&sock, &["status"]));
    assert!(
        table.contains("SERVICE") && table.contains("ACCEPTED"),
        "{table}"
    );
}

fn wait_for_title(fs: &Forkserve, part: &str) -> bool {
    wait_until(&format!("title with {part}"), || {
        cmdline(fs.pid).contains(part).then_some(true)
    })
}

#[test]
fn ctl_is_refused_to_another_uid() {
    if !root_or_skip("ctl_is_refused_to_another_uid") {
        return;
    }
    let dir = TempDir::new("ops-peercred");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\n";
    let fs = start(bin(), &dir, config, 1, &[]);
    let sock = dir.path("control.sock");
    let user = TestUser::create();
    let as_user = |sock: &Path| {
        Command::new("setpriv")
            .args([
                "--reuid",
                &user.uid.to_string(),
                "--regid",
                &user.uid.to_string(),
            ])
            .args(["--clear-groups", "--"])
            .arg(bin())
            .args(["ctl", "--socket"])
            .arg(sock)
            .arg("status")
            .output()
            .unwrap()
    };
    // The socket file's mode keeps the user out…
    let out = as_user(&sock);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    // …and with the mode opened up, SO_PEERCRED still does.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user(&sock);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    let line = fs.wait_log("control: refused a client with uid");
    assert!(line.contains(&user.uid.to_string()), "{line}");
    // Root still gets in.
    assert!(ctl(&sock, &["status"]).status.success());
}

#[test]
fn counters_reach_status_sigusr1_and_promtool() {
    let dir = TempDir::new("ops-metrics");
    let config = "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\nmax_per_source = 1\n";
    let fs = start(
        bin(),
        &dir,
        config,
        1,
        &["--metrics-listen", "tcp:127.0.0.1:0"],
    );
    let line = fs.wait_log("metrics: serving GET /metrics on tcp:");
    let metrics = line.rsplit("on tcp:").next().unwrap().trim().to_string();
    let addr = fs.addr(0).to_string();
    let sock = dir.path("control.sock");
    let idle = || {
        wait_until("the worker to be reaped", || {
            (service(&ctl_json(&sock, &["status"]), "e")["active"] == 0).then_some(())
        })
    };
    for _ in 0..3 {
        echo_once(&addr);
        idle();
    }
    // A second connection from the same IP while one is open: refused (per source).
    let mut held = Conn::connect(&addr);
    roundtrip(&mut held, "held");
    let mut refused = Conn::connect(&addr);
    assert_eq!(refused.read_line(), None);
    drop(held);
    idle();

    let body = wait_until("the counters", || {
        let b = scrape(&metrics);
        b.contains("forkserve_first_byte_seconds_count{service=\"e\"} 4")
            .then_some(b)
    });
    assert!(
        body.contains("forkserve_accepted_total{service=\"e\"} 4"),
        "{body}"
    );
    assert!(
        body.contains("forkserve_refused_total{service=\"e\",reason=\"per_source\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("forkserve_worker_exits_total{service=\"e\",status=\"0\",signal=\"\"} 4"),
        "{body}"
    );
    promtool_check(&body);

    let s = ctl_json(&sock, &["status"]);
    let c = &service(&s, "e")["counters"];
    assert_eq!(c["accepted"], 4);
    assert_eq!(c["refused"]["per_source"], 1);
    assert!(c["first_byte_p99_us"].as_u64().unwrap() >= c["first_byte_p50_us"].as_u64().unwrap());
    fs.signal(libc::SIGUSR1);
    let line = fs.wait_log("status: ");
    assert!(
        line.contains("e: 0 active (peak 1), 4 accepted, 1 refused"),
        "{line}"
    );
    // Anything but GET /metrics is answered, not served.
    let mut c = std::net::TcpStream::connect(&metrics).unwrap();
    c.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.0 404"), "{r}");
}

fn scrape(addr: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.0 200 OK"), "{r}");
    r.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Reads datagrams from `sock` into `seen` until one contains `needle`.
fn notified(
    sock: &std::os::unix::net::UnixDatagram,
    needle: &str,
    seen: &mut Vec<String>,
) -> String {
    wait_until(&format!("sd_notify {needle:?} (seen {seen:?})"), || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg.clone());
        msg.contains(needle).then_some(msg)
    })
}

#[test]
fn systemd_hears_reloading_ready_and_the_counters() {
    let dir = dir_beside_binary("ops-notify");
    let exe = copy_binary(&dir);
    let path = dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let file = dir.path("forkserve.toml");
    write_file(
        &file,
        "[[service]]\nname = \"e\"\nkind = \"echo\"\nlisten = [\"tcp:127.0.0.1:0\"]\n",
    );
    let fs = forkserve_at(exe.to_str().unwrap())
        .arg("--config")
        .arg(&file)
        .arg("--control")
        .arg(dir.path("control.sock"))
        .env("NOTIFY_SOCKET", &path)
        .start();
    let mut seen = Vec::new();
    notified(&sock, "READY=1", &mut seen);
    echo_once(fs.addr(0));
    notified(&sock, "e: 0 active (peak 1), 1 accepted", &mut seen);
    fs.signal(libc::SIGHUP);
    let msg = notified(&sock, "RELOADING=1", &mut seen);
    assert!(msg.contains("MONOTONIC_USEC="), "{msg}");
    notified(&sock, "READY=1", &mut seen);
    // The upgraded image still notifies (NOTIFY_SOCKET is handed on), as the same pid.
    replace_binary(&exe, None, "755");
    let out = ctl(&dir.path("control.sock"), &["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    notified(&sock, "READY=1", &mut seen);
    assert_eq!(
        ctl_json(&dir.path("control.sock"), &["status"])["pid"],
        fs.pid
    );
}

#[test]
fn socket_activated_services_keep_their_sockets_across_reload_and_upgrade() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        println!("SKIPPED: no systemd-socket-activate");
        return;
    }
    let dir = dir_beside_binary("ops-activated");
    let exe = copy_binary(&dir);
    let file = dir.path("forkserve.toml");
    let config = "[[service]]\nname = \"e\"\nkind = \"echo\"\n";
    write_file(&file, config);
    let sock = dir.path("e.sock");
    let control = dir.path("control.sock");
    let mut b = forkserve();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&sock)
        .arg("--fdname=e")
        .arg(&exe)
        .arg("--config")
        .arg(&file)
        .arg("--control")
        .arg(&control);
    cmd.env_remove("LISTEN_FDS").env_remove("NOTIFY_SOCKET");
    *b.command() = cmd;
    let fs = b.spawn();
    fs.wait_log(&format!("{} as 3", sock.display()));
    let addr = format!("unix:{}", sock.display());
    // The first connection makes systemd-socket-activate exec forkserve.
    echo_once(&addr);
    fs.wait_log("master");
    // A changed service keeps the socket systemd passed.
    write_file(&file, &format!("{config}idle_timeout = 5\n"));
    let out = ctl(&control, &["reload"]);
    assert!(out.status.success(), "{}\n{}", text(&out), fs.log_text());
    assert!(text(&out).contains("1 changed"), "{}", text(&out));
    echo_once(&addr);
    // So does the upgraded image, as the same pid.
    let mut open = Conn::connect(&addr);
    roundtrip(&mut open, "across");
    replace_binary(&exe, None, "755");
    let out = ctl(&control, &["upgrade"]);
    assert!(out.status.success(), "{}\n{}", text(&out), fs.log_text());
    echo_once(&addr);
    roundtrip(&mut open, "still");
    let status = ctl_json(&control, &["services"]);
    assert_eq!(status["pid"], fs.pid);
    assert_eq!(service(&status, "e")["listen"][0], addr);
    assert!(fs.has_log("upgrade: re-executing"), "{}", fs.log_text());
    assert_eq!(ctl_json(&control, &["status"])["upgrades"], 1);
}

/// Every kind of the issue's shape, the program-running one included: an `exec`
/// table's `program` runs per connection (stream) and per datagram, with its own
/// options (`stderr`), and a reload that drops it stops it.
#[test]
fn exec_kind_runs_its_program_from_the_config() {
    let dir = TempDir::new("ops-exec");
    let config = r#"
[[service]]
name = "hello"
kind = "exec"
listen = ["tcp:127.0.0.1:0"]
program = ["/usr/bin/printf", "hello\n"]
stderr = "inherit"

[[service]]
name = "when"
kind = "exec"
listen = ["udp:127.0.0.1:0"]
program = ["/bin/echo", "datagram answered"]
"#;
    let fs = start(bin(), &dir, config, 2, &[]);
    let mut c = Conn::connect(&fs.addr_of("hello", "tcp"));
    assert_eq!(c.read_line().unwrap(), "hello");
    let reply = datagram_roundtrip(&fs.addr_of("when", "udp"), b"?", &dir.0);
    assert_eq!(String::from_utf8_lossy(&reply), "datagram answered\n");
    let checked = Command::new(bin())
        .args(["check-config"])
        .arg(dir.path("forkserve.toml"))
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let shown = String::from_utf8_lossy(&checked.stdout);
    assert!(shown.contains("kind = \"exec\""), "{shown}");
    // A table without a program is refused, naming it.
    write_file(
        &dir.path("bad.toml"),
        "[[service]]\nname = \"x\"\nkind = \"exec\"\nlisten = [\"tcp:127.0.0.1:0\"]\n",
    );
    let bad = Command::new(bin())
        .args(["check-config"])
        .arg(dir.path("bad.toml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no program"),
        "{bad:?}"
    );
}
