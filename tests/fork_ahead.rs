//! Fork-ahead (`--spare N`) and the growing prefork pool (`--max-workers`), seen
//! from outside: process titles and parents in /proc, bytes on the wire, exit
//! statuses.

mod common;

use std::collections::BTreeSet;
use std::io::Write;

use common::*;

fn spares(fs: &Forkserve, n: usize) -> BTreeSet<i32> {
    fs.wait_children("forkserve: echo spare", n)
        .into_iter()
        .collect()
}

/// Sends a line and reads its reply, keeping the connection open.
fn held(addr: &str) -> Conn {
    let mut c = Conn::connect(addr);
    c.write_all(b"hold\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("HOLD"));
    c
}

#[test]
fn spares_wait_ahead_serve_one_connection_each_and_are_replaced() {
    let fs = forkserve()
        .args(["echo", "--spare", "3", "-l", "tcp:127.0.0.1:0"])
        .start();
    let before = spares(&fs, 3);
    for &p in &before {
        assert_eq!(parent_of(p), Some(fs.pid));
    }
    // One connection, held open: a spare serves it, titled as a worker, and a
    // fresh spare takes its place.
    let c = held(fs.addr(0));
    let worker = wait_until("a spare to become the worker", || {
        before
            .iter()
            .copied()
            .find(|&p| cmdline(p).contains("forkserve: echo worker 127.0.0.1:"))
    });
    let after = spares(&fs, 3);
    assert!(!after.contains(&worker));
    assert_eq!(
        after.intersection(&before).count(),
        2,
        "{before:?} {after:?}"
    );
    // One connection only: the worker exits when its client leaves.
    drop(c);
    wait_until("the worker to exit", || {
        (parent_of(worker) != Some(fs.pid)).then_some(())
    });
    assert_eq!(spares(&fs, 3).len(), 3);
    // Many in a row, each by a fresh process, all answered.
    for _ in 0..20 {
        let mut c = held(fs.addr(0));
        c.shutdown_write();
        assert_eq!(c.read_line(), None);
    }
}

#[test]
fn sigterm_ends_the_spares_and_the_master_exits_zero() {
    let mut fs = forkserve()
        .args(["echo", "--spare", "2", "-l", "tcp:127.0.0.1:0"])
        .start();
    let s = spares(&fs, 2);
    fs.signal(libc::SIGTERM);
    assert!(fs.wait_exit().success(), "{}", fs.log_text());
    for p in s {
        assert_ne!(parent_of(p), Some(fs.pid));
    }
}

#[test]
fn spare_outside_the_fork_model_is_a_usage_error() {
    let out = std::process::Command::new(bin())
        .args([
            "echo",
            "--model",
            "prefork",
            "--spare",
            "2",
            "-l",
            "tcp:127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--spare needs the fork model"), "{err}");
}

#[test]
fn the_prefork_pool_grows_to_max_workers_while_clients_wait() {
    let fs = forkserve()
        .args(["echo", "--model", "prefork", "--workers", "1"])
        .args(["--max-workers", "3", "-l", "tcp:127.0.0.1:0"])
        .start();
    fs.wait_children(" idle ", 1);
    // Three connections held open: one worker could serve only the first.
    let conns: Vec<Conn> = (0..3).map(|_| held(fs.addr(0))).collect();
    let busy = fs.wait_children(" busy ", 3);
    for p in busy {
        assert_eq!(parent_of(p), Some(fs.pid));
    }
    assert!(fs.has_log("starting worker #3"), "{}", fs.log_text());
    drop(conns);
    // Idle again: the two extra workers leave after their idle time, worker #1
    // stays.
    let left = fs.wait_children("forkserve: echo worker #", 1);
    assert!(
        cmdline(left[0]).contains("worker #1 "),
        "{}",
        cmdline(left[0])
    );
}
