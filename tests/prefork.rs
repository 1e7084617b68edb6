//! The prefork model: N long-lived workers, children of the master, titled idle or
//! busy; recycled after --max-requests; a killed one replaced; SIGTERM lets an open
//! connection finish and the master exit 0.

mod common;

use std::collections::BTreeSet;
use std::io::Write;

use common::*;

fn prefork(workers: usize, extra: &[&str]) -> Forkserve {
    forkserve()
        .args([
            "echo",
            "--model",
            "prefork",
            "--workers",
            &workers.to_string(),
            "-l",
            "tcp:127.0.0.1:0",
        ])
        .args(extra)
        .start()
}

/// One whole connection: a line there and back, then close.
fn echo_once(addr: &str) {
    let mut c = Conn::connect(addr);
    c.write_all(b"ping\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("PING"));
    c.shutdown_write();
    assert_eq!(c.read_line(), None);
}

fn idle_workers(fs: &Forkserve, n: usize) -> BTreeSet<i32> {
    fs.wait_children(" idle ", n).into_iter().collect()
}

#[test]
fn n_workers_are_children_of_the_master_and_show_idle_or_busy() {
    let fs = prefork(3, &[]);
    let workers = idle_workers(&fs, 3);
    for &w in &workers {
        assert_eq!(parent_of(w), Some(fs.pid));
        let title = cmdline(w);
        assert!(title.starts_with("forkserve: echo worker #"), "{title}");
        assert!(title.contains(" idle [0 served]"), "{title}");
    }
    let numbers: BTreeSet<String> = workers
        .iter()
        .map(|&w| cmdline(w).split_whitespace().nth(3).unwrap().to_string())
        .collect();
    assert_eq!(numbers, ["#1", "#2", "#3"].map(String::from).into());

    // A connection held open makes one worker busy, naming the peer.
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"hold\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("HOLD"));
    let local = match &c {
        Conn::Tcp(s) => s.local_addr().unwrap().to_string(),
        Conn::Unix(_) => unreachable!(),
    };
    let busy = fs.wait_children(" busy ", 1)[0];
    assert!(workers.contains(&busy));
    assert!(
        cmdline(busy).contains(&local),
        "{} lacks {local}",
        cmdline(busy)
    );
    assert_eq!(idle_workers(&fs, 2).len(), 2);

    c.shutdown_write();
    assert_eq!(c.read_line(), None);
    drop(c);
    // Back to idle, same processes, one connection served between them.
    assert_eq!(idle_workers(&fs, 3), workers);
    let served: Vec<String> = workers.iter().map(|&w| cmdline(w)).collect();
    assert_eq!(
        served.iter().filter(|t| t.ends_with("[1 served]")).count(),
        1,
        "{served:?}"
    );
}

#[test]
fn workers_are_recycled_after_max_requests() {
    let fs = prefork(2, &["--max-requests", "3"]);
    let first = idle_workers(&fs, 2);
    // Two workers serve at most 6 connections before they must be replaced.
    for _ in 0..10 {
        echo_once(fs.addr(0));
    }
    let now = wait_until("2 idle workers, not both the first ones", || {
        let w: BTreeSet<i32> = fs
            .children()
            .into_iter()
            .filter(|&p| cmdline(p).contains(" idle "))
            .collect();
        (w.len() == 2 && w != first).then_some(w)
    });
    for &w in &now {
        assert_eq!(parent_of(w), Some(fs.pid));
        let title = cmdline(w);
        let served: u64 = title
            .rsplit('[')
            .next()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(served <= 3, "{title}");
    }
    fs.wait_log("(max-requests); exiting to be replaced");
    echo_once(fs.addr(0));
}

#[test]
fn a_killed_worker_is_replaced() {
    let fs = prefork(2, &[]);
    let first = idle_workers(&fs, 2);
    let victim = *first.iter().next().unwrap();
    // SAFETY: kill(2) on a worker of the server this test started.
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let now = wait_until("a replacement worker", || {
        let w: BTreeSet<i32> = fs
            .children()
            .into_iter()
            .filter(|&p| cmdline(p).contains(" idle "))
            .collect();
        (w.len() == 2 && !w.contains(&victim)).then_some(w)
    });
    assert!(now.iter().all(|&w| parent_of(w) == Some(fs.pid)));
    assert_eq!(now.intersection(&first).count(), 1);
    echo_once(fs.addr(0));
    echo_once(fs.addr(0));
}

#[test]
fn sigterm_lets_an_open_connection_finish_then_exits_0() {
    let mut fs = prefork(2, &[]);
    idle_workers(&fs, 2);
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"before\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("BEFORE"));
    let busy = fs.wait_children(" busy ", 1)[0];

    fs.signal(libc::SIGTERM);
    fs.wait_log("SIGTERM: shutting down");
    // The idle worker leaves; the busy one keeps serving its connection.
    wait_until("the idle worker to leave", || {
        (fs.children()
            .into_iter()
            .filter(|&p| !cmdline(p).is_empty())
            .count()
            == 1)
            .then_some(())
    });
    assert_eq!(parent_of(busy), Some(fs.pid));
    c.write_all(b"during\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("DURING"));
    c.shutdown_write();
    assert_eq!(c.read_line(), None);

    let status = fs.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", fs.log_text());
    assert_eq!(cmdline(busy), "", "the worker outlived the master");
}

#[test]
fn planned_recycles_do_not_grow_the_restart_back_off() {
    let fs = prefork(1, &["--max-requests", "1"]);
    // Eight planned recycles in a row, each well under the 10 s that would reset a
    // failure count: were they counted as failures, the next restart would wait 10 s.
    for n in 1..=8 {
        idle_workers(&fs, 1);
        echo_once(fs.addr(0));
        wait_until(&format!("recycle {n} to be logged"), || {
            (fs.log_text().matches("; replacing it").count() >= n).then_some(())
        });
    }
    let victim = idle_workers(&fs, 1).into_iter().next().unwrap();
    // SAFETY: kill(2) on a worker of the server this test started.
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let line = fs.wait_log("killed by SIGKILL after");
    assert!(
        line.contains("restarting in 0.1s"),
        "a first failure after planned recycles must restart at once: {line}"
    );
    let replacement = idle_workers(&fs, 1).into_iter().next().unwrap();
    assert_ne!(replacement, victim);
    echo_once(fs.addr(0));
}
