//! The UDP / Unix-datagram file server through the real binary: LIST, GET through
//! `files-get` and through raw datagrams, a lossy relay, path traversal, a flood of
//! garbage, and the client's exit codes.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const BIG: usize = 5 * 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A served directory: an empty file, a one-chunk file, a 5 MiB file, and things
/// that must not be served.
fn fixture(dir: &TempDir) -> PathBuf {
    let root = dir.path("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("one.txt"), b"just one chunk\n").unwrap();
    std::fs::write(root.join("big.bin"), Rng(7).bytes(BIG)).unwrap();
    std::fs::write(root.join("with space"), b"unlisted").unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/inner"), b"inner").unwrap();
    std::fs::write(dir.path("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("../secret", root.join("up-link")).unwrap();
    std::os::unix::fs::symlink("one.txt", root.join("inside-link")).unwrap();
    std::os::unix::fs::symlink("/", root.join("slash-link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    root
}

fn server(root: &Path, dir: &TempDir, model: &str, extra: &[&str]) -> Forkserve {
    forkserve()
        .args(["files", "--model", model, "--root"])
        .arg(root)
        .args(["-l", "udp:127.0.0.1:0", "-l"])
        .arg(format!("unixgram:{}", dir.path("files.sock").display()))
        .args(extra)
        .listeners(2)
        .start()
}

/// A client datagram socket talking to one server address.
enum Client {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

impl Client {
    fn new(addr: &str, dir: &Path) -> Client {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let c = if let Some(a) = addr.strip_prefix("udp:") {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(a).unwrap();
            Client::Udp(s)
        } else {
            let p = addr.strip_prefix("unixgram:").unwrap();
            let me = dir.join(format!("raw-{}.sock", N.fetch_add(1, Ordering::SeqCst)));
            let s = UnixDatagram::bind(me).unwrap();
            s.connect(p).unwrap();
            Client::Unix(s)
        };
        c.set_timeout(WAIT);
        c
    }
    fn set_timeout(&self, t: Duration) {
        match self {
            Client::Udp(s) => s.set_read_timeout(Some(t)).unwrap(),
            Client::Unix(s) => s.set_read_timeout(Some(t)).unwrap(),
        }
    }
    fn send(&self, m: &[u8]) {
        match self {
            Client::Udp(s) => s.send(m).unwrap(),
            Client::Unix(s) => s.send(m).unwrap(),
        };
    }
    /// One datagram, or None on timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        let n = match self {
            Client::Udp(s) => s.recv(&mut buf),
            Client::Unix(s) => s.recv(&mut buf),
        };
        match n {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(_) => None,
        }
    }
    fn ask(&self, m: &[u8]) -> String {
        self.send(m);
        String::from_utf8_lossy(&self.recv().expect("a reply")).into_owned()
    }
}

/// A parsed `DATA` datagram: (index, total, size, crc, chunk, payload).
fn parse_data(d: &[u8]) -> (u32, u32, u64, u32, u32, Vec<u8>) {
    let nl = d.iter().position(|&b| b == b'\n').expect("header line");
    let head = std::str::from_utf8(&d[..nl]).unwrap();
    let f: Vec<&str> = head.split(' ').collect();
    assert_eq!(f.len(), 6, "{head}");
    assert_eq!(f[0], "DATA", "{head}");
    (
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
        u32::from_str_radix(f[4], 16).unwrap(),
        f[5].parse().unwrap(),
        d[nl + 1..].to_vec(),
    )
}

/// Fetches a file with raw GET datagrams, asking again for missing chunks with
/// ranged GETs; checks every header against the first and the size and CRC.
fn raw_get(c: &Client, name: &str, max_datagram: usize) -> Vec<u8> {
    let mut chunks: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut first: Option<(u32, u64, u32, u32)> = None;
    let mut request = format!("GET {name}");
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "raw GET {name} did not complete");
        c.send(request.as_bytes());
        c.set_timeout(if first.is_none() {
            WAIT
        } else {
            Duration::from_millis(300)
        });
        while let Some(d) = c.recv() {
            assert!(d.len() <= max_datagram, "datagram of {} bytes", d.len());
            let (i, total, size, crc, chunk, payload) = parse_data(&d);
            let meta = (total, size, crc, chunk);
            assert_eq!(*first.get_or_insert(meta), meta);
            assert!(i < total);
            chunks.insert(i, payload);
            c.set_timeout(Duration::from_millis(300));
            if chunks.len() == total as usize {
                break;
            }
        }
        let (total, size, crc, _) = first.expect("no DATA reply at all");
        if chunks.len() == total as usize {
            let data: Vec<u8> = chunks.into_values().flatten().collect();
            assert_eq!(data.len() as u64, size);
            assert_eq!(crc32fast::hash(&data), crc);
            return data;
        }
        let missing: Vec<String> = (0..total)
            .filter(|i| !chunks.contains_key(i))
            .take(50)
            .map(|i| i.to_string())
            .collect();
        request = format!("GET {name} {}", missing.join(","));
    }
}

fn files_get(addr: &str, name: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .args(["files-get", addr, name, "-o"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn assert_fetched(addr: &str, root: &Path, name: &str, dir: &TempDir) {
    let out = dir.path(&format!("got-{name}"));
    let _ = std::fs::remove_file(&out);
    let o = files_get(addr, name, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "files-get {addr} {name}: {:?} {err}",
        o.status
    );
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(root.join(name)).unwrap(),
        "{name} via {addr} differs"
    );
    // No temporary file is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn list_shows_regular_files_with_sizes_over_udp_and_unixgram() {
    let dir = TempDir::new("files-list");
    let root = fixture(&dir);
    let fs = server(&root, &dir, "fork", &[]);
    for i in 0..2 {
        let c = Client::new(fs.addr(i), &dir.0);
        let reply = c.ask(b"LIST\n");
        assert_eq!(
            reply,
            format!("LIST 0 1\n{BIG} big.bin\n0 empty\n15 one.txt\n"),
            "{}",
            fs.addr(i)
        );
    }
}

#[test]
fn list_is_paginated_when_long() {
    let dir = TempDir::new("files-pages");
    let root = dir.path("root");
    std::fs::create_dir(&root).unwrap();
    let names: Vec<String> = (0..200)
        .map(|i| format!("file-{i:03}-{}", "x".repeat(40)))
        .collect();
    for n in &names {
        std::fs::write(root.join(n), n.as_bytes()).unwrap();
    }
    let fs = server(&root, &dir, "sequential", &["--max-datagram", "600"]);
    for i in 0..2 {
        let c = Client::new(fs.addr(i), &dir.0);
        c.send(b"LIST");
        let mut pages = BTreeMap::new();
        let mut count = None;
        while count != Some(pages.len()) {
            let d = c.recv().expect("a LIST page");
            assert!(d.len() <= 600);
            let text = String::from_utf8(d).unwrap();
            let (head, body) = text.split_once('\n').unwrap();
            let f: Vec<&str> = head.split(' ').collect();
            assert_eq!(f[0], "LIST");
            count = Some(f[2].parse::<usize>().unwrap());
            pages.insert(f[1].parse::<usize>().unwrap(), body.to_string());
        }
        assert!(pages.len() > 5, "{} pages", pages.len());
        let listed: Vec<String> = pages
            .values()
            .flat_map(|b| b.lines().map(String::from))
            .collect();
        let want: Vec<String> = names.iter().map(|n| format!("{} {n}", n.len())).collect();
        assert_eq!(listed, want);
        // A single page again, by number.
        let again = c.ask(b"LIST 2");
        assert_eq!(again.split_once('\n').unwrap().1, pages[&2]);
    }
}

#[test]
fn files_get_fetches_empty_small_and_5mib_files_byte_exact() {
    for model in ["fork", "sequential"] {
        let dir = TempDir::new("files-get");
        let root = fixture(&dir);
        let fs = server(&root, &dir, model, &[]);
        for i in 0..2 {
            for name in ["empty", "one.txt", "big.bin"] {
                assert_fetched(fs.addr(i), &root, name, &dir);
            }
        }
    }
}

#[test]
fn raw_datagrams_carry_numbered_chunks_with_size_and_checksum() {
    let dir = TempDir::new("files-raw");
    let root = fixture(&dir);
    let fs = server(&root, &dir, "fork", &["--max-datagram", "1000"]);
    let big = std::fs::read(root.join("big.bin")).unwrap();
    for i in 0..2 {
        let c = Client::new(fs.addr(i), &dir.0);
        // Empty: one chunk with no payload.
        c.send(b"GET empty");
        let (idx, total, size, crc, _, payload) = parse_data(&c.recv().unwrap());
        assert_eq!((idx, total, size, crc, payload.len()), (0, 1, 0, 0, 0));
        // One chunk.
        c.send(b"GET one.txt\n");
        let (idx, total, size, crc, chunk, payload) = parse_data(&c.recv().unwrap());
        assert_eq!((idx, total, size, chunk), (0, 1, 15, 1000 - 64));
        assert_eq!(payload, b"just one chunk\n");
        assert_eq!(crc, crc32fast::hash(b"just one chunk\n"));
        // STAT says the same.
        assert_eq!(
            c.ask(b"STAT big.bin"),
            format!(
                "STAT big.bin {} {BIG} {:08x} 936\n",
                BIG.div_ceil(936),
                crc32fast::hash(&big)
            )
        );
        // 5 MiB, reassembled by chunk number.
        assert!(
            raw_get(&c, "big.bin", 1000) == big,
            "big.bin via {}",
            fs.addr(i)
        );
        // Ranged re-send: exactly the chunks asked for, in order.
        c.set_timeout(WAIT);
        c.send(b"GET big.bin 3-5,100");
        let got: Vec<u32> = (0..4).map(|_| parse_data(&c.recv().unwrap()).0).collect();
        assert_eq!(got, [3, 4, 5, 100]);
        // The last, partial chunk; one past it is a bad request.
        let last = BIG.div_ceil(936) - 1;
        c.send(format!("GET big.bin {last}-{last}").as_bytes());
        let d = parse_data(&c.recv().unwrap());
        assert_eq!(d.0 as usize, last);
        assert!(d.5 == big[last * 936..]);
        assert_eq!(
            c.ask(format!("GET big.bin {}", last + 1).as_bytes()),
            "ERR bad request\n"
        );
    }
}

/// Forwards datagrams between one client and the server, and on the way back drops
/// 20% of the chunks, holds back another 15% (released a few datagrams later, i.e.
/// reordered) and duplicates 5%. With `corrupt`, flips a payload byte of chunk 1.
struct Relay {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

enum RelaySock {
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

impl Relay {
    fn start(server: &str, dir: &Path, corrupt: bool) -> Relay {
        let (sock, addr) = if let Some(a) = server.strip_prefix("udp:") {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = format!("udp:{}", s.local_addr().unwrap());
            (RelaySock::Udp(s, a.parse().unwrap()), addr)
        } else {
            let p = dir.join("relay.sock");
            let s = UnixDatagram::bind(&p).unwrap();
            let server = PathBuf::from(server.strip_prefix("unixgram:").unwrap());
            (
                RelaySock::Unix(s, server),
                format!("unixgram:{}", p.display()),
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || relay_loop(sock, &stop2, corrupt));
        Relay {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Returns how many chunks it dropped.
fn relay_loop(sock: RelaySock, stop: &AtomicBool, corrupt: bool) -> u64 {
    let mut rng = Rng(0x5eed);
    let mut buf = vec![0u8; 65536];
    let mut held: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
    let mut dropped = 0;
    let mut corrupted = false;
    let tick = Some(Duration::from_millis(20));
    match &sock {
        RelaySock::Udp(s, _) => s.set_read_timeout(tick).unwrap(),
        RelaySock::Unix(s, _) => s.set_read_timeout(tick).unwrap(),
    }
    let mut client_udp: Option<SocketAddr> = None;
    let mut client_unix: Option<PathBuf> = None;
    let to_client = |d: &[u8], cu: &Option<SocketAddr>, cx: &Option<PathBuf>| match &sock {
        RelaySock::Udp(s, _) => drop(s.send_to(d, cu.unwrap())),
        RelaySock::Unix(s, _) => drop(s.send_to(d, cx.as_ref().unwrap())),
    };
    while !stop.load(Ordering::SeqCst) {
        let (n, from_server) = match &sock {
            RelaySock::Udp(s, server) => match s.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from != *server {
                        client_udp = Some(from);
                    }
                    (Some(n), from == *server)
                }
                Err(_) => (None, false),
            },
            RelaySock::Unix(s, server) => match s.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let from = from.as_pathname().map(Path::to_path_buf);
                    let is_server = from.as_deref() == Some(server.as_path());
                    if !is_server {
                        client_unix = from;
                    }
                    (Some(n), is_server)
                }
                Err(_) => (None, false),
            },
        };
        let Some(n) = n else {
            // Quiet: let the held-back datagrams go.
            while let Some((_, d)) = held.pop_front() {
                to_client(&d, &client_udp, &client_unix);
            }
            continue;
        };
        let mut d = buf[..n].to_vec();
        if !from_server {
            match &sock {
                RelaySock::Udp(s, server) => drop(s.send_to(&d, server)),
                RelaySock::Unix(s, server) => drop(s.send_to(&d, server)),
            }
            continue;
        }
        if d.starts_with(b"DATA ") {
            if corrupt && !corrupted && d.starts_with(b"DATA 1 ") {
                *d.last_mut().unwrap() ^= 0xff;
                corrupted = true;
            } else if !corrupt {
                if rng.chance(20) {
                    dropped += 1;
                    continue;
                }
                if rng.chance(19) {
                    held.push_back((1 + (rng.next() % 5) as u32, d));
                    continue;
                }
                if rng.chance(5) {
                    to_client(&d, &client_udp, &client_unix);
                }
            }
        }
        to_client(&d, &client_udp, &client_unix);
        for h in held.iter_mut() {
            h.0 = h.0.saturating_sub(1);
        }
        while held.front().is_some_and(|h| h.0 == 0) {
            let (_, h) = held.pop_front().unwrap();
            to_client(&h, &client_udp, &client_unix);
        }
    }
    dropped
}

#[test]
fn files_get_completes_through_a_lossy_reordering_relay() {
    let dir = TempDir::new("files-lossy");
    let root = fixture(&dir);
    let fs = server(&root, &dir, "fork", &[]);
    for i in 0..2 {
        let mut relay = Relay::start(fs.addr(i), &dir.0, false);
        let out = dir.path("lossy.bin");
        let o = files_get(&relay.addr, "big.bin", &out, &[]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{}: {:?} {err}", relay.addr, o.status);
        eprintln!("{err}");
        assert!(std::fs::read(&out).unwrap() == std::fs::read(root.join("big.bin")).unwrap());
        relay.stop.store(true, Ordering::SeqCst);
        let dropped = relay.thread.take().unwrap().join().unwrap();
        assert!(dropped > 500, "the relay dropped only {dropped} chunks");
        assert!(
            err.contains("re-requested") && err.contains("reordered"),
            "{err}"
        );
        drop(relay);
        let _ = std::fs::remove_file(dir.path("relay.sock"));
    }
}

#[test]
fn files_get_reports_checksum_mismatch_and_keeps_no_file() {
    let dir = TempDir::new("files-crc");
    let root = fixture(&dir);
    let fs = server(&root, &dir, "fork", &[]);
    let relay = Relay::start(fs.addr(0), &dir.0, true);
    let out = dir.path("bad.bin");
    let o = files_get(&relay.addr, "big.bin", &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .count(),
        0
    );
}

#[test]
fn every_traversal_trick_is_refused() {
    let dir = TempDir::new("files-trav");
    let root = fixture(&dir);
    let fs = server(&root, &dir, "fork", &["--max-file", "1M"]);
    let cases: &[(&[u8], &str)] = &[
        (b"../secret", "bad request"),
        (b"..", "bad request"),
        (b".", "bad request"),
        (b"/etc/passwd", "bad request"),
        (b"sub/inner", "bad request"),
        (b"sub/../one.txt", "bad request"),
        (b"./one.txt", "bad request"),
        (b"one.txt\0x", "bad request"),
        (b"", "bad request"),
        (b"with space", "bad request"),
        (b"passwd-link", "not a regular file"),
        (b"up-link", "not a regular file"),
        (b"inside-link", "not a regular file"),
        (b"slash-link", "not a regular file"),
        (b"sub", "not a regular file"),
        (b"fifo", "not a regular file"),
        (b"nonexistent", "not found"),
        (b"big.bin", "too large"),
    ];
    for i in 0..2 {
        let c = Client::new(fs.addr(i), &dir.0);
        for (name, want) in cases {
            for verb in ["STAT", "GET"] {
                let mut req = format!("{verb} ").into_bytes();
                req.extend_from_slice(name);
                let reply = c.ask(&req);
                assert_eq!(
                    reply,
                    format!("ERR {want}\n"),
                    "{verb} {:?} via {}",
                    String::from_utf8_lossy(name),
                    fs.addr(i)
                );
            }
        }
    }
    // The client refuses such names itself (usage error), or passes on the server's word.
    for (name, code) in [
        ("../secret", 64),
        ("sub/inner", 64),
        ("up-link", 66),
        ("nonexistent", 66),
    ] {
        let o = files_get(fs.addr(0), name, &dir.path("x"), &[]);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(!dir.path("x").exists());
}

fn garbage(rng: &mut Rng, i: usize) -> Vec<u8> {
    let len = rng.next() as usize;
    match i % 5 {
        0 => rng.bytes(len % 1500),
        1 => format!("GET {}", String::from_utf8_lossy(&rng.bytes(20))).into_bytes(),
        2 => format!("GET big.bin {}-{}", rng.next() % 10000, rng.next() % 10000).into_bytes(),
        3 => Vec::new(),
        _ => {
            let mut v = b"LIST ".to_vec();
            v.extend(rng.bytes(len % 40));
            v
        }
    }
}

/// Asks LIST until the server answers (a flood may have filled its queue).
fn answers_list(addr: &str, dir: &Path) -> String {
    let c = Client::new(addr, dir);
    c.set_timeout(Duration::from_millis(500));
    wait_until("a LIST reply after the flood", || {
        c.send(b"LIST");
        c.recv().map(|d| String::from_utf8_lossy(&d).into_owned())
    })
}

#[test]
fn ten_thousand_garbage_datagrams_leave_the_server_answering() {
    // UDP under the fork model: what the queue cannot hold the kernel drops.
    let dir = TempDir::new("files-flood");
    let root = fixture(&dir);
    let fs = server(&root, &dir, "fork", &["--max-file", "1M"]);
    let mut rng = Rng(99);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = fs.addr(0).strip_prefix("udp:").unwrap().to_string();
    for i in 0..10_000 {
        let _ = udp.send_to(&garbage(&mut rng, i), &target);
    }
    assert!(answers_list(fs.addr(0), &dir.0).starts_with("LIST 0 1\n"));
    // Unix datagrams are never dropped: all 10,000 are served (sequential model),
    // from an unbound sender, which gets no replies.
    let seq_dir = TempDir::new("files-flood-seq");
    let fs2 = server(&root, &seq_dir, "sequential", &["--max-file", "1M"]);
    let unbound = UnixDatagram::unbound().unwrap();
    let path = fs2.addr(1).strip_prefix("unixgram:").unwrap().to_string();
    for i in 0..10_000 {
        unbound.send_to(&garbage(&mut rng, i), &path).unwrap();
    }
    // And from a bound sender that reads its replies.
    let c = Client::new(fs2.addr(1), &seq_dir.0);
    for i in 0..200 {
        let reply = c.ask(&garbage(&mut rng, i * 5));
        assert!(
            reply.starts_with("ERR ") || reply.starts_with("DATA "),
            "{reply:?}"
        );
    }
    assert!(answers_list(fs2.addr(1), &seq_dir.0).starts_with("LIST 0 1\n"));
    assert!(answers_list(fs.addr(1), &dir.0).starts_with("LIST 0 1\n"));
}

#[test]
fn files_get_exit_codes() {
    let dir = TempDir::new("files-codes");
    let root = fixture(&dir);
    // Nobody listening: UDP port unreachable -> 69 at once.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = format!("udp:{}", closed.local_addr().unwrap());
    drop(closed);
    let o = files_get(
        &addr,
        "one.txt",
        &dir.path("x"),
        &["--timeout", "0.2", "--retries", "2"],
    );
    assert_eq!(
        o.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Something listening that never answers: timeout -> 69.
    let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = format!("udp:{}", mute.local_addr().unwrap());
    let o = files_get(
        &addr,
        "one.txt",
        &dir.path("x"),
        &["--timeout", "0.2", "--retries", "2"],
    );
    assert_eq!(o.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"));
    // No unixgram socket there -> 69.
    let o = files_get(
        &format!("unixgram:{}", dir.path("none.sock").display()),
        "one.txt",
        &dir.path("x"),
        &[],
    );
    assert_eq!(o.status.code(), Some(69));
    // Output directory that does not exist -> 73; bad address -> 64.
    let fs = server(&root, &dir, "fork", &[]);
    let o = files_get(fs.addr(0), "one.txt", &dir.path("no/such/dir/x"), &[]);
    assert_eq!(
        o.status.code(),
        Some(73),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = files_get("tcp:127.0.0.1:1", "one.txt", &dir.path("x"), &[]);
    assert_eq!(o.status.code(), Some(64));
    // -o DIR puts the file in DIR under its own name.
    let o = files_get(fs.addr(1), "one.txt", &dir.0, &[]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(dir.path("one.txt")).unwrap(),
        b"just one chunk\n"
    );
}

#[test]
fn a_unixgram_client_that_leaves_mid_transfer_is_a_clean_end() {
    let dir = TempDir::new("files-gone");
    let root = fixture(&dir);
    let fs = server(&root, &dir, "fork", &[]);
    let me = dir.path("leaver.sock");
    let s = UnixDatagram::bind(&me).unwrap();
    s.send_to(
        b"GET big.bin",
        fs.addr(1).strip_prefix("unixgram:").unwrap(),
    )
    .unwrap();
    // Read one chunk so the transfer is under way, then go.
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 2048];
    let n = s.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"DATA 0 "));
    drop(s);
    std::fs::remove_file(&me).unwrap();
    fs.wait_children("files", 0);
    assert!(!fs.has_log("handler failed"), "{}", fs.log_text());
    assert!(!fs.has_log("exit status"), "{}", fs.log_text());
    assert!(answers_list(fs.addr(1), &dir.0).starts_with("LIST 0 1\n"));
}
