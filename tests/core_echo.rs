//! Echo and time through the real binary, over every socket family and model.

mod common;

use std::io::Write;

use common::*;

fn echo_roundtrip(addr: &str) {
    let mut c = Conn::connect(addr);
    c.write_all("hello straße\nsecond line\n".as_bytes())
        .unwrap();
    assert_eq!(c.read_line().unwrap(), "HELLO STRASSE");
    assert_eq!(c.read_line().unwrap(), "SECOND LINE");
    c.shutdown_write();
    assert_eq!(c.read_line(), None);
}

#[test]
fn echo_over_tcp_v4_v6_unix_path_and_abstract() {
    let dir = TempDir::new("echo-fam");
    let sock = dir.path("echo.sock");
    let abs = format!("unix:@fs-test-{}", std::process::id());
    let fs = forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0", "-l", "tcp:[::1]:0", "-l"])
        .arg(format!("unix:{}", sock.display()))
        .args(["-l", &abs])
        .listeners(4)
        .start();
    for i in 0..4 {
        echo_roundtrip(fs.addr(i));
    }
    assert!(fs.addr(0).starts_with("tcp:127.0.0.1:") && !fs.addr(0).ends_with(":0"));
    assert!(fs.addr(1).starts_with("tcp:[::1]:"));
}

#[test]
fn echo_under_every_model() {
    for model in ["fork", "thread", "sequential", "prefork"] {
        let dir = TempDir::new("echo-model");
        let fs = forkserve()
            .args(["echo", "--model", model, "-l", "tcp:127.0.0.1:0", "-l"])
            .arg(format!("unix:{}", dir.path("e.sock").display()))
            .listeners(2)
            .start();
        echo_roundtrip(fs.addr(0));
        echo_roundtrip(fs.addr(1));
    }
}

#[test]
fn time_over_udp_and_unixgram_under_every_model() {
    for model in ["fork", "thread", "sequential"] {
        let dir = TempDir::new("time");
        let fs = forkserve()
            .args(["time", "--model", model, "-l", "udp:127.0.0.1:0", "-l"])
            .arg(format!("unixgram:{}", dir.path("t.sock").display()))
            .listeners(2)
            .start();
        for i in 0..2 {
            let reply = datagram_roundtrip(fs.addr(i), b"what time is it", &dir.0);
            let text = String::from_utf8(reply).unwrap();
            assert!(text.starts_with("Server time: "), "{model}: {text}");
            let stamp = &text["Server time: ".len()..];
            assert_eq!(stamp.len(), 19, "{text}");
            assert_eq!(&stamp[4..5], "-");
            assert_eq!(&stamp[13..14], ":");
        }
    }
}

#[test]
fn echo_long_lines_and_bytes_that_are_not_utf8() {
    let fs = forkserve().args(["echo", "-l", "tcp:127.0.0.1:0"]).start();
    let mut c = Conn::connect(fs.addr(0));
    // Longer than any read buffer, with multi-byte characters across every edge.
    let line = "é€😀x".repeat(3000);
    c.write_all(format!("{line}\n").as_bytes()).unwrap();
    assert_eq!(c.read_line().unwrap(), line.to_uppercase());
    c.write_all(b"abc\xff\xfedef\n").unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        std::io::Read::read_exact(&mut c, &mut b).unwrap();
        got.push(b[0]);
    }
    assert_eq!(got, b"ABC\xff\xfeDEF\n");
    // A last line without a newline still comes back when the client half-closes.
    c.write_all(b"tail").unwrap();
    c.shutdown_write();
    assert_eq!(c.read_line().unwrap(), "TAIL");
}
