//! Faults and abuse the core must hold under: signals sent to workers, slow clients
//! from one source, fork failures, descriptor exhaustion. Each test would have
//! caught the failure it is named after (issue 12).

mod common;

use std::io::Write;

use common::*;

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process the test's own server started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Starts echo on TCP port 0 with `extra` options.
fn echo(extra: &[&str]) -> Forkserve {
    forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0"])
        .args(extra)
        .start()
}

/// A connection that has had one line echoed: its worker is up and reading.
fn live_connection(fs: &Forkserve) -> (Conn, i32) {
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"hello\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("HELLO"));
    let worker = fs.wait_children("echo worker", 1)[0];
    (c, worker)
}

#[test]
fn a_sigsegv_sent_to_a_worker_is_logged_as_sigsegv() {
    let fs = echo(&[]);
    let (mut c, worker) = live_connection(&fs);
    kill(worker, libc::SIGSEGV);
    let line = fs.wait_log(&format!("worker {worker} "));
    assert!(line.contains("killed by SIGSEGV"), "{line}");
    assert_eq!(c.read_line(), None, "the client sees the connection end");
    assert!(!fs.log_text().contains("Interrupted system call"));
}

#[test]
fn a_read_interrupted_by_stop_and_continue_is_retried() {
    // With a receive timeout (--idle-timeout), Linux ends a read stopped by SIGSTOP
    // with EINTR when SIGCONT arrives: the worker must read again, not fail.
    let fs = echo(&["--idle-timeout", "60"]);
    let (mut c, worker) = live_connection(&fs);
    wait_until("the worker to sleep in read", || {
        (state(worker) == Some('S')).then_some(())
    });
    kill(worker, libc::SIGSTOP);
    wait_until("the worker to stop", || {
        (state(worker) == Some('T')).then_some(())
    });
    kill(worker, libc::SIGCONT);
    wait_until("the worker to run again", || {
        (state(worker) != Some('T')).then_some(())
    });
    c.write_all(b"again\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("AGAIN"));
    c.shutdown_write();
    assert_eq!(c.read_line(), None);
    assert!(!fs.log_text().contains("failed"), "{}", fs.log_text());
}
