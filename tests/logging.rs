//! Logging as a user sees it: the journal's native protocol when stderr is the
//! journal's stream (a Unix datagram socket of the test stands in for the journal:
//! FORKSERVE_JOURNAL_SOCKET), each record with its sender's pid, priority,
//! identifier, SERVICE= and PEER=; the fallbacks to stderr; `--log-format json`;
//! `--syslog` without a syslog socket.

mod common;

use std::collections::HashMap;
use std::io::{IoSliceMut, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt};

use common::*;

/// forkserve ARGS started through `sh` so that JOURNAL_STREAM names the harness's
/// stderr pipe (device:inode, as systemd sets it), with the journal socket at
/// `journal`.
fn under_journal(journal: &std::path::Path, args: &[&str]) -> Forkserve {
    let mut b = forkserve();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" "$@""#)
        .arg(bin())
        .args(args)
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .env("FORKSERVE_JOURNAL_SOCKET", journal);
    *b.command() = cmd;
    b.spawn()
}

/// The client side's `IP:PORT` of a TCP connection: the server's PEER.
fn local_of(c: &Conn) -> String {
    match c {
        Conn::Tcp(s) => s.local_addr().unwrap().to_string(),
        Conn::Unix(_) => panic!("not TCP"),
    }
}

/// One journal record: its fields and the pid the kernel attached to it.
struct Entry {
    pid: i32,
    fields: HashMap<String, String>,
}

/// Parses the native protocol: `KEY=VALUE\n`, or `KEY\n` + 64-bit LE length + value + `\n`.
fn parse_record(mut data: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !data.is_empty() {
        let nl = data.iter().position(|&b| b == b'\n').expect("field ends");
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = String::from_utf8(line[..eq].to_vec()).unwrap();
            fields.insert(key, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
            data = &data[nl + 1..];
        } else {
            let key = String::from_utf8(line.to_vec()).unwrap();
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
            assert_eq!(rest[8 + len], b'\n');
            fields.insert(key, value);
            data = &rest[9 + len..];
        }
    }
    fields
}

/// The test's stand-in for /run/systemd/journal/socket, with SO_PASSCRED on.
struct Journal {
    sock: UnixDatagram,
    seen: Vec<Entry>,
}

impl Journal {
    fn bind(path: &std::path::Path) -> Journal {
        let sock = UnixDatagram::bind(path).unwrap();
        setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Journal {
            sock,
            seen: Vec::new(),
        }
    }

    /// Receives records until one's MESSAGE contains `needle`; returns its index.
    fn wait(&mut self, needle: &str) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self
                .seen
                .iter()
                .position(|e| e.fields.get("MESSAGE").is_some_and(|m| m.contains(needle)))
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no record with {needle:?}; got {:?}",
                self.seen.iter().map(|e| &e.fields).collect::<Vec<_>>()
            );
            let mut buf = vec![0u8; 65536];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(UnixCredentials);
            let Ok(msg) = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            ) else {
                continue;
            };
            let pid = msg
                .cmsgs()
                .unwrap()
                .find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(c) => Some(c.pid()),
                    _ => None,
                })
                .expect("credentials");
            let n = msg.bytes;
            self.seen.push(Entry {
                pid,
                fields: parse_record(&buf[..n]),
            });
        }
    }
}

#[test]
fn journal_records_carry_the_sender_pid_priority_service_and_peer() {
    let dir = TempDir::new("journal");
    let path = dir.path("journal.sock");
    let mut journal = Journal::bind(&path);
    let mut fs = under_journal(&path, &["echo", "-v", "-l", "tcp:127.0.0.1:0"]);
    let i = journal.wait("listening on tcp:");
    let master = &journal.seen[i];
    assert_eq!(master.pid, fs.pid);
    assert_eq!(master.fields["PRIORITY"], "6");
    assert_eq!(master.fields["SYSLOG_IDENTIFIER"], "forkserve");
    assert_eq!(master.fields["SYSLOG_PID"], fs.pid.to_string());
    let addr = master.fields["MESSAGE"]
        .split("listening on ")
        .nth(1)
        .unwrap()
        .to_string();
    let mut c = Conn::connect(&addr);
    c.write_all(b"journal\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "JOURNAL");
    let local = local_of(&c);
    let i = journal.wait("connection from");
    let w = &journal.seen[i];
    assert_ne!(w.pid, fs.pid, "a worker's record is its own");
    assert_eq!(w.fields["SYSLOG_PID"], w.pid.to_string());
    assert_eq!(parent_of(w.pid), Some(fs.pid));
    assert_eq!(w.fields["PRIORITY"], "7");
    assert_eq!(w.fields["SERVICE"], "echo");
    assert_eq!(w.fields["PEER"], local);
    // Nothing went to stderr: no second copy through the stream.
    fs.signal(libc::SIGTERM);
    drop(c);
    assert_eq!(fs.wait_exit().code(), Some(0));
    assert!(!fs.log_text().contains("listening on"), "{}", fs.log_text());
}

#[test]
fn journal_stream_without_the_journal_socket_gives_priority_prefixes() {
    let dir = TempDir::new("journal-gone");
    let fs = under_journal(
        &dir.path("no-such.sock"),
        &["echo", "-l", "tcp:127.0.0.1:0"],
    );
    let line = fs.wait_log("listening on");
    assert!(
        line.starts_with(&format!("<6>[{}] echo: listening on", fs.pid)),
        "{line}"
    );
}

#[test]
fn journal_stream_naming_another_file_is_ignored() {
    let fs = forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0"])
        .env("JOURNAL_STREAM", "8:1234")
        .start();
    let line = fs.wait_log("listening on");
    assert!(
        line.contains(&format!(" forkserve[{}]: INFO  echo: listening", fs.pid)),
        "{line}"
    );
}

#[test]
fn json_log_format_is_one_object_a_line() {
    let mut fs = forkserve()
        .args([
            "echo",
            "-v",
            "--log-format",
            "json",
            "-l",
            "tcp:127.0.0.1:0",
        ])
        .spawn();
    let first = fs.wait_log("listening on");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["level"], "info");
    assert_eq!(v["ident"], "forkserve");
    assert_eq!(v["pid"], fs.pid);
    let addr = v["message"]
        .as_str()
        .unwrap()
        .split("listening on ")
        .nth(1)
        .unwrap()
        .to_string();
    let mut c = Conn::connect(&addr);
    c.write_all(b"x\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "X");
    let line = fs.wait_log("connection from");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "debug");
    assert_eq!(v["service"], "echo");
    assert_eq!(v["peer"], local_of(&c));
    assert_ne!(v["pid"], fs.pid);
    fs.signal(libc::SIGTERM);
    drop(c);
    assert_eq!(fs.wait_exit().code(), Some(0));
    for l in fs.log_text().lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
}

#[test]
fn syslog_without_a_socket_says_where_it_looked() {
    if std::path::Path::new("/dev/log").exists() {
        eprintln!("skipped: this machine has a syslog socket at /dev/log");
        return;
    }
    let out = Command::new(bin())
        .args(["echo", "--syslog", "-l", "tcp:127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no syslog socket at /dev/log"), "{err}");
}
