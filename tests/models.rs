//! `forkserve models`: the reference handler under sequential, thread and fork at
//! once; each answers with its own model, and only the fork one forks per connection.

mod common;

use std::io::Write;

use common::*;

const SERVICES: [&str; 3] = ["models-sequential", "models-thread", "models-fork"];

fn start() -> Forkserve {
    let mut b = forkserve().arg("models");
    for s in SERVICES {
        b = b.args(["-l", &format!("{s}=tcp:127.0.0.1:0")]);
    }
    // --model is ignored by the models services: each keeps its own.
    b.args(["--model", "thread"]).listeners(3).start()
}

/// `key=value` fields of a reply line.
fn field<'a>(reply: &'a str, key: &str) -> &'a str {
    reply
        .split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {reply:?}"))
}

/// Connects, takes the report sent on connect, asks once more with a line, and
/// returns the answer to the line.
fn ask(addr: &str) -> String {
    let mut c = Conn::connect(addr);
    let greeting = c.read_line().expect("a report on connect");
    assert!(greeting.starts_with("model="), "{greeting}");
    c.write_all(b"go\n").unwrap();
    let line = c.read_line().expect("a reply");
    c.shutdown_write();
    assert_eq!(c.read_line(), None);
    line
}

#[test]
fn the_report_comes_on_connect_like_telnet_shows_it_in_the_reference() {
    let fs = start();
    for (svc, model) in SERVICES.iter().zip(["sequential", "thread", "fork"]) {
        // A client that only reads (telnet localhost 9001) gets the report at once.
        let mut c = Conn::connect(&fs.addr_of(svc, "tcp"));
        let first = c.read_line().expect("a report on connect");
        assert_eq!(field(&first, "model"), model, "{first}");
        assert_eq!(field(&first, "result"), "333283335000", "{first}");
        // Lines sent later are answered as before, one line each.
        c.write_all(b"again\nand again\n").unwrap();
        for _ in 0..2 {
            let r = c.read_line().expect("a reply per line");
            assert_eq!(field(&r, "model"), model, "{r}");
        }
        c.shutdown_write();
        assert_eq!(
            c.read_line(),
            None,
            "{svc}: nothing more after the end of input"
        );
    }
}

#[test]
fn forkserve_bench_still_measures_each_model() {
    let fs = start();
    for svc in SERVICES {
        let out = std::process::Command::new(bin())
            .args(["bench", "--connect", &fs.addr_of(svc, "tcp")])
            .args(["-n", "12", "-c", "3", "--expect", "any", "--json"])
            .output()
            .unwrap();
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{svc}: {json}");
        assert!(json.contains("\"requests\":12,"), "{svc}: {json}");
        assert!(json.contains("\"connections\":12,"), "{svc}: {json}");
        assert!(json.contains("\"total\":0"), "{svc}: {json}");
    }
}

#[test]
fn three_models_answer_each_with_its_own_model() {
    let fs = start();
    for (svc, model) in SERVICES.iter().zip(["sequential", "thread", "fork"]) {
        let addr = fs.addr_of(svc, "tcp");
        let a = ask(&addr);
        let b = ask(&addr);
        for r in [&a, &b] {
            assert_eq!(field(r, "model"), model, "{r}");
            assert_eq!(field(r, "result"), "333283335000", "{r}");
            assert!(field(r, "client").starts_with("127.0.0.1:"), "{r}");
            assert!(field(r, "time").ends_with("us"), "{r}");
        }
        let (pa, pb): (i32, i32) = (
            field(&a, "pid").parse().unwrap(),
            field(&b, "pid").parse().unwrap(),
        );
        assert_ne!(pa, fs.pid, "handlers never run in the master");
        match model {
            "fork" => {
                assert_ne!(pa, pb, "fork: a new process per connection");
                assert_eq!(field(&a, "thread"), "main");
                assert!(field(&a, "workers").parse::<usize>().unwrap() >= 1);
            }
            "thread" => {
                assert_eq!(pa, pb, "thread: one server process");
                assert_ne!(
                    field(&a, "thread"),
                    field(&b, "thread"),
                    "a thread per connection"
                );
                assert!(field(&a, "thread").starts_with("models-thread-"));
                assert!(field(&a, "threads").parse::<usize>().unwrap() >= 2);
                assert_eq!(parent_of(pa), Some(fs.pid));
            }
            _ => {
                assert_eq!(pa, pb, "sequential: one server process");
                assert_eq!(field(&a, "workers"), "1");
                assert_eq!(parent_of(pa), Some(fs.pid));
            }
        }
    }
}

#[test]
fn only_the_fork_service_forks_a_process_per_connection() {
    let fs = start();
    // The sequential and thread services run in long-lived server processes.
    let seq = fs.wait_children("forkserve: models-sequential server", 1);
    let thr = fs.wait_children("forkserve: models-thread server", 1);
    let before = fs.children();
    assert!(before.contains(&seq[0]) && before.contains(&thr[0]));
    // A silent connection to each: the fork service gets a worker process for it.
    let held: Vec<Conn> = SERVICES
        .iter()
        .map(|s| Conn::connect(&fs.addr_of(s, "tcp")))
        .collect();
    fs.wait_children("forkserve: models-fork worker 127.0.0.1:", 1);
    let after = fs.children();
    let new: Vec<i32> = after
        .iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(
        new.len(),
        1,
        "only one new process: {new:?} ({:?})",
        new.iter().map(|&p| cmdline(p)).collect::<Vec<_>>()
    );
    assert!(cmdline(new[0]).starts_with("forkserve: models-fork worker"));
    // Two fork connections at once: the reply counts both workers.
    let second = ask(&fs.addr_of("models-fork", "tcp"));
    assert_eq!(field(&second, "workers"), "2", "{second}");
    drop(held);
    fs.wait_children("forkserve: models-fork worker", 0);
}

#[test]
fn a_bare_listen_address_is_refused_for_the_three_services() {
    let out = std::process::Command::new(bin())
        .args(["models", "-l", "tcp:127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SERVICE=ADDR"), "{err}");
}

#[test]
fn lang_es_reports_in_the_reference_words_and_bench_still_measures() {
    let mut b = forkserve().args(["models", "--lang", "es"]);
    for s in SERVICES {
        b = b.args(["-l", &format!("{s}=tcp:127.0.0.1:0")]);
    }
    let fs = b.listeners(3).start();
    for (svc, model) in SERVICES.iter().zip(["sequential", "thread", "fork"]) {
        let addr = fs.addr_of(svc, "tcp");
        let mut c = Conn::connect(&addr);
        let mut lines = Vec::new();
        let last = if model == "fork" {
            "Procesos activos: "
        } else {
            "Hilos activos: "
        };
        loop {
            let l = c.read_line().expect("the report on connect");
            let done = l.starts_with(last);
            lines.push(l);
            if done {
                break;
            }
        }
        assert_eq!(
            lines[0],
            format!("Servidor: {svc} (modelo {model})"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("Hilo/Proceso: ") && lines[1].contains("(PID: "),
            "{lines:?}"
        );
        assert!(lines[2].starts_with("Cliente: 127.0.0.1:"), "{lines:?}");
        assert!(lines[3].starts_with("Tiempo de procesamiento: ") && lines[3].ends_with('s'));
        assert_eq!(lines[4], "Resultado: 333283335000");
        assert!(lines[5].starts_with("Hilos activos: "), "{lines:?}");
        drop(c);
        let out = std::process::Command::new(bin())
            .args([
                "bench",
                "--connect",
                &addr,
                "-n",
                "6",
                "-c",
                "2",
                "--expect",
                "any",
                "--json",
            ])
            .output()
            .unwrap();
        let json = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{svc}: {json}");
        assert!(json.contains("\"requests\":6,"), "{svc}: {json}");
    }
}

#[test]
fn a_unix_peer_prints_as_everywhere_else() {
    let dir = TempDir::new("models-unix");
    let sock = dir.path("fork.sock");
    let fs = forkserve()
        .args(["models", "-l"])
        .arg(format!("models-fork=unix:{}", sock.display()))
        .args(["-l", "models-sequential=tcp:127.0.0.1:0"])
        .args(["-l", "models-thread=tcp:127.0.0.1:0"])
        .listeners(3)
        .start();
    let mut c = Conn::connect(&fs.addr_of("models-fork", "unix"));
    let report = c.read_line().expect("a report on connect");
    let me = format!(
        "client=\"uid={} pid={}\" ",
        unsafe { libc::getuid() },
        std::process::id()
    );
    assert!(report.contains(&me), "{report}");
    // The worker's title names the peer the same way.
    let w = fs.wait_children("models-fork worker", 1)[0];
    let title = cmdline(w);
    assert!(
        title.ends_with(&format!(
            "uid={} pid={}",
            unsafe { libc::getuid() },
            std::process::id()
        )),
        "{title}"
    );
}
