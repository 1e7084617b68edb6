//! Keep-alive at the limit: when every process of a service is busy and clients
//! wait, an HTTP keep-alive connection is closed after its response (or at once,
//! if it sits idle) instead of holding its slot for the idle timeout. Behaviour
//! with generous bounds, not speed: the idle timeout is 60 s, and every client must
//! be done far sooner.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

const IDLE: &str = "60";
/// Far below the idle timeout, far above what serving takes on a loaded machine.
const BOUND: Duration = Duration::from_secs(25);

/// Reads one response; returns its head (lower-cased) and whether the server
/// announced it closes the connection. `None`: the server closed the connection
/// before the first byte (an idle keep-alive connection closed as the request
/// crossed it).
fn try_read_response(c: &mut Conn) -> Option<(String, bool)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(0) if head.is_empty() => return None,
            other => panic!("response head cut short: {other:?} after {head:?}"),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    let closes = head.contains("connection: close");
    Some((head, closes))
}

fn read_response(c: &mut Conn) -> (String, bool) {
    try_read_response(c).expect("a response, not end of file")
}

/// One client: `n` requests for /time over keep-alive, opening a new connection
/// whenever the server said it closes. Returns how long it all took, and the
/// connection, still open (a browser keeps it for its next page).
fn keep_alive_client(addr: &str, n: usize) -> (Duration, Option<Conn>) {
    let t0 = Instant::now();
    let mut conn: Option<Conn> = None;
    let request = b"GET /time HTTP/1.1\r\nHost: test\r\n\r\n";
    for _ in 0..n {
        let reused = conn.is_some();
        let c = conn.get_or_insert_with(|| Conn::connect(addr));
        // A reused connection may be closed as the request goes out; like every
        // HTTP client, retry a GET that got no byte on a new one (RFC 9112 9.3.1).
        let sent = c.write_all(request).is_ok();
        let (head, closes) = match sent.then(|| try_read_response(c)).flatten() {
            Some(r) => r,
            None if reused => {
                let c = conn.insert(Conn::connect(addr));
                c.write_all(request).unwrap();
                read_response(c)
            }
            None => panic!("a new connection closed before its first response"),
        };
        assert!(head.starts_with("http/1.1 200"), "{head}");
        if closes {
            conn = None;
        }
    }
    (t0.elapsed(), conn)
}

fn many_clients(addr: &str, clients: usize, requests: usize) -> Vec<Duration> {
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || keep_alive_client(&addr, requests))
        })
        .collect();
    // Every client keeps its connection open until all are done: without the
    // fix, the first ones served hold the workers for the whole idle timeout.
    let (times, open): (Vec<Duration>, Vec<Option<Conn>>) =
        handles.into_iter().map(|h| h.join().unwrap()).unzip();
    drop(open);
    times
}

fn assert_none_waited(times: &[Duration]) {
    let worst = times.iter().max().unwrap();
    assert!(
        *worst < BOUND,
        "a client waited {worst:?} (idle timeout {IDLE}s): an idle connection held a slot"
    );
}

#[test]
fn sixty_four_keep_alive_clients_against_four_prefork_workers_never_wait_a_timeout() {
    let fs = forkserve()
        .args(["http", "-l", "tcp:127.0.0.1:0", "--model", "prefork"])
        .args(["--workers", "4", "--idle-timeout", IDLE])
        .start();
    let times = many_clients(fs.addr(0), 64, 5);
    assert_eq!(times.len(), 64);
    assert_none_waited(&times);
}

#[test]
fn keep_alive_clients_beyond_max_children_never_wait_a_timeout() {
    let fs = forkserve()
        .args(["http", "-l", "tcp:127.0.0.1:0", "--max-children", "4"])
        .args(["--max-per-source", "0", "--idle-timeout", IDLE])
        .start();
    let times = many_clients(fs.addr(0), 16, 5);
    assert_none_waited(&times);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_when_a_client_waits() {
    let fs = forkserve()
        .args(["http", "-l", "tcp:127.0.0.1:0", "--model", "prefork"])
        .args(["--workers", "1", "--idle-timeout", IDLE])
        .start();
    let addr = fs.addr(0);
    // The only worker serves this connection, which then sits idle.
    let mut idle = Conn::connect(addr);
    idle.write_all(b"GET /time HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let (_, closes) = read_response(&mut idle);
    assert!(!closes, "nobody waited yet: the connection stays open");

    let t0 = Instant::now();
    let (took, _conn) = keep_alive_client(addr, 1);
    assert!(took < BOUND, "the second client waited {took:?}");
    // The idle one was closed for it, without a byte.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(t0.elapsed() < BOUND);
}
