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

/// Echo on a TCP port and a Unix socket in `dir`, with `extra` options.
fn echo_on_tcp_and_unix(dir: &TempDir, extra: &[&str]) -> Forkserve {
    forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0", "-l"])
        .arg(format!("unix:{}", dir.path("e.sock").display()))
        .args(extra)
        .listeners(2)
        .start()
}

#[test]
fn echo_under_every_model() {
    for model in ["fork", "thread", "sequential", "prefork"] {
        let dir = TempDir::new("echo-model");
        let fs = echo_on_tcp_and_unix(&dir, &["--model", model]);
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

/// Reads exactly `n` bytes.
fn read_n(c: &mut Conn, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    std::io::Read::read_exact(c, &mut b).unwrap();
    b
}

#[test]
fn echo_answers_each_chunk_without_waiting_for_a_newline() {
    let fs = forkserve().args(["echo", "-l", "tcp:127.0.0.1:0"]).start();
    let mut c = Conn::connect(fs.addr(0));
    // The reference material's first client: send() without a newline, then recv().
    c.write_all(b"hola").unwrap();
    assert_eq!(read_n(&mut c, 4), b"HOLA");
    c.write_all("señor ".as_bytes()).unwrap();
    assert_eq!(read_n(&mut c, 7), "SEÑOR ".as_bytes());
    // A character cut between two sends is held back, never split: `é` (C3 A9)
    // comes back as `É` (C3 89), not as `é` in two halves.
    c.write_all(b"ab\xC3").unwrap();
    assert_eq!(read_n(&mut c, 2), b"AB");
    c.write_all(b"\xA9").unwrap();
    assert_eq!(read_n(&mut c, 2), "É".as_bytes());
    // Line clients see what they always saw.
    c.write_all(b"a line\n").unwrap();
    assert_eq!(c.read_line().unwrap(), "A LINE");
    // A cut-off sequence at the end of input goes back as it is.
    c.write_all(b"x\xE2\x82").unwrap();
    c.shutdown_write();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut rest).unwrap();
    assert_eq!(rest, b"X\xE2\x82");
}

#[test]
fn nc_without_a_newline_gets_its_echo_at_once() {
    let dir = TempDir::new("echo-nc");
    let fs = echo_on_tcp_and_unix(&dir, &[]);
    for addr in [fs.addr(0), fs.addr(1)] {
        let mut nc = Nc::connect(addr);
        nc.send(b"hola");
        assert_eq!(nc.expect("HOLA"), "HOLA");
        nc.send("qué tal\n".as_bytes());
        assert_eq!(nc.expect("\n"), "QUÉ TAL\n");
    }
}

#[test]
fn time_in_spanish_with_lang_es() {
    let dir = TempDir::new("time-es");
    let fs = forkserve()
        .args(["time", "--lang", "es", "-l", "udp:127.0.0.1:0"])
        .start();
    let text = String::from_utf8(datagram_roundtrip(fs.addr(0), b"hora", &dir.0)).unwrap();
    let stamp = text
        .strip_prefix("Hora del servidor: ")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(stamp.len(), 19, "{text}");
}

#[test]
fn a_cut_off_character_goes_back_as_it_is_when_the_client_goes_silent() {
    let fs = forkserve()
        .args(["echo", "--idle-timeout", "0.3", "-l", "tcp:127.0.0.1:0"])
        .start();
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"caf\xC3").unwrap();
    assert_eq!(read_n(&mut c, 3), b"CAF");
    // No more bytes: at the idle timeout the held byte comes back, then the close.
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut rest).unwrap();
    assert_eq!(rest, b"\xC3");
}
