//! A line-based chat client for the tests of the chat service (`chat.rs`, `chat_redis.rs`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::Conn;

/// One chat client.
pub struct Client {
    pub conn: Conn,
    pub buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        Client {
            conn: Conn::connect(addr),
            buf: Vec::new(),
        }
    }

    /// Connects and logs in as `name` (no password).
    pub fn login(addr: &str, name: &str) -> Client {
        let mut c = Client::connect(addr);
        c.expect("Username: ");
        c.send(name);
        c.expect(&format!(
            "Welcome, {name}! Type /help for commands, quit to leave.\n"
        ));
        c
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).expect("send to chat");
    }

    pub fn fill(&mut self) -> bool {
        let mut b = [0u8; 65536];
        match self.conn.read(&mut b) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e) => panic!(
                "read: {e}; got so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads until `needle` arrives; returns everything up to and including it.
    pub fn expect(&mut self, needle: &str) -> String {
        loop {
            if let Some(p) = find(&self.buf, needle.as_bytes()) {
                let out: Vec<u8> = self.buf.drain(..p + needle.len()).collect();
                return String::from_utf8_lossy(&out).into_owned();
            }
            if !self.fill() {
                panic!(
                    "EOF before {needle:?}; got: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// The next line, without its newline.
    pub fn line(&mut self) -> String {
        let l = self.expect("\n");
        l[..l.len() - 1].to_string()
    }

    /// Reads to end of file; returns what came.
    pub fn rest(&mut self) -> String {
        while self.fill() {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}

/// Where `needle` starts in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Fan-out latencies: for each of `rounds`, `sender` says `round N` and every
/// receiver (each read by its own thread) reports when the line arrived. Returns
/// the sorted latencies (sender's write to each receiver's read) and the clients.
pub fn fanout_latencies(
    sender: &mut Client,
    receivers: Vec<Client>,
    rounds: usize,
) -> (Vec<Duration>, Vec<Client>) {
    let n = receivers.len();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Instant)>();
    let handles: Vec<_> = receivers
        .into_iter()
        .map(|mut c| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for round in 0..rounds {
                    c.expect(&format!("[sender]: round {round}\n"));
                    tx.send((round, Instant::now())).unwrap();
                }
                c
            })
        })
        .collect();
    let mut lat = Vec::new();
    for round in 0..rounds {
        let t0 = Instant::now();
        sender.send(&format!("round {round}"));
        for _ in 0..n {
            let (r, at) = rx.recv().unwrap();
            assert_eq!(r, round);
            lat.push(at - t0);
        }
        sender.expect(&format!("[sender]: round {round}\n"));
    }
    let clients = handles.into_iter().map(|h| h.join().unwrap()).collect();
    lat.sort();
    (lat, clients)
}

/// The `q` quantile (0.5, 0.99) of sorted latencies.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Runs `forkserve chat-passwd [args]` with `password` on stdin.
pub fn chat_passwd(args: &[&str], password: &str) -> String {
    let mut child = std::process::Command::new(super::bin())
        .arg("chat-passwd")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
