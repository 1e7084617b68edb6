//! The HTTP service through the real binary: routes, HEAD, errors, keep-alive and
//! pipelining, idle timeouts, the access log; with raw sockets and with curl.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Instant;

use common::*;

/// Splits a byte stream into responses (bodies by Content-Length; none for HEAD).
fn parse_all(raw: &[u8], heads: &[bool]) -> Vec<Resp> {
    let mut out = Vec::new();
    let mut rest = raw;
    let mut i = 0;
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(rest)));
        let head = std::str::from_utf8(&rest[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        let mut r = Resp {
            status,
            headers,
            body: String::new(),
        };
        let len: usize = r
            .header("content-length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        let body_len = if heads.get(i).copied().unwrap_or(false) {
            0
        } else {
            len
        };
        let body = &rest[end + 4..end + 4 + body_len];
        r.body = String::from_utf8(body.to_vec()).unwrap();
        rest = &rest[end + 4 + body_len..];
        out.push(r);
        i += 1;
    }
    out
}

/// Sends `req`, half-closes, and reads every response until the server closes.
fn exchange(addr: &str, req: &[u8]) -> Vec<Resp> {
    exchange_heads(addr, req, &[])
}

fn exchange_heads(addr: &str, req: &[u8], heads: &[bool]) -> Vec<Resp> {
    let mut c = Conn::connect(addr);
    c.write_all(req).unwrap();
    c.shutdown_write();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    parse_all(&raw, heads)
}

fn one(addr: &str, req: &str) -> Resp {
    let mut r = exchange(addr, req.as_bytes());
    assert_eq!(r.len(), 1, "{r:?}");
    r.pop().unwrap()
}

fn get(addr: &str, path: &str) -> Resp {
    one(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}

fn start(extra: &[&str]) -> Forkserve {
    forkserve()
        .args(["http", "-l", "tcp:127.0.0.1:0"])
        .args(extra)
        .start()
}

/// Every response carries Date (IMF-fixdate), Server, Content-Length, Content-Type.
fn assert_standard_headers(r: &Resp) {
    let date = r.header("date").expect("Date");
    assert!(
        date.ends_with(" GMT") && date.len() == 29 && &date[3..5] == ", ",
        "{date}"
    );
    assert!(r.header("server").unwrap().starts_with("forkserve/"));
    assert!(r.header("content-length").is_some());
    assert!(
        r.header("content-type").unwrap().contains("charset=utf-8"),
        "{r:?}"
    );
}

fn assert_error_page(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert_standard_headers(r);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains(&format!("<title>{status} ")), "{}", r.body);
}

#[test]
fn routes_over_tcp_and_unix() {
    let dir = TempDir::new("http-routes");
    let fs = forkserve()
        .args(["http", "-l", "tcp:127.0.0.1:0", "-l"])
        .arg(format!("unix:{}", dir.path("http.sock").display()))
        .listeners(2)
        .start();
    for addr in [fs.addr(0), fs.addr(1)] {
        let home = get(addr, "/");
        assert_eq!(home.status, 200);
        assert_standard_headers(&home);
        for link in ["href=\"/time\"", "href=\"/info\"", "href=\"/echo/"] {
            assert!(home.body.contains(link), "{}", home.body);
        }

        let time = get(addr, "/time");
        assert_eq!(
            time.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        let v: serde_json::Value = serde_json::from_str(&time.body).unwrap();
        let stamp = v["timestamp"].as_str().unwrap();
        assert_eq!(
            (stamp.len(), &stamp[4..5], &stamp[10..11], &stamp[13..14]),
            (19, "-", " ", ":")
        );

        let info = get(addr, "/info");
        assert!(
            info.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            info.body.contains("forkserve/") && info.body.contains("fork"),
            "{}",
            info.body
        );

        let json = one(
            addr,
            "GET /info HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\n\r\n",
        );
        let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
        assert_eq!(v["server"], "forkserve");
        assert_eq!(v["model"], "fork");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        let pid = v["pid"].as_i64().unwrap() as i32;
        assert_ne!(pid, fs.pid, "a worker, not the master, answers");
        if addr.starts_with("tcp:") {
            assert!(
                v["client"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{v}"
            );
        } else {
            assert!(v["client"].as_str().unwrap().contains("uid="), "{v}");
        }

        let echo = get(
            addr,
            "/echo/%3Cscript%3Ealert(1)%3C%2Fscript%3E%20%C3%A9t%C3%A9",
        );
        assert_eq!(echo.status, 200);
        assert!(!echo.body.contains("<script>"), "{}", echo.body);
        assert!(
            echo.body
                .contains("&lt;script&gt;alert(1)&lt;/script&gt; été"),
            "{}",
            echo.body
        );
        assert!(echo.body.contains("Length: 29 characters"), "{}", echo.body);
    }
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    let fs = start(&[]);
    let addr = fs.addr(0);
    let got = get(addr, "/");
    let head = exchange_heads(
        addr,
        b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /time HTTP/1.1\r\nHost: t\r\n\r\n",
        &[true, false],
    );
    assert_eq!(head.len(), 2, "{head:?}");
    assert_eq!(head[0].status, 200);
    assert_eq!(head[0].body, "");
    assert_eq!(
        head[0].header("content-length"),
        got.header("content-length")
    );
    assert_eq!(head[0].header("content-type"), got.header("content-type"));
    // The next response starts right after the head: no body was sent.
    assert!(head[1].body.contains("timestamp"));
}

#[test]
fn errors_are_html_pages_with_the_right_status() {
    let fs = start(&[]);
    let addr = fs.addr(0);
    assert_error_page(&get(addr, "/nothing/here"), 404);

    let r = one(
        addr,
        "POST /time HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_error_page(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_error_page(&one(addr, "DELETE / HTTP/1.1\r\nHost: t\r\n\r\n"), 405);
    let r = one(addr, "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_error_page(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    for bad in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n", // HTTP/1.1 without Host
        "GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", // malformed field
        "GET /\r\n\r\n",          // no version
        "GET /echo/%zz HTTP/1.1\r\nHost: a\r\n\r\n", // bad percent-encoding
        "GET /echo/%C3 HTTP/1.1\r\nHost: a\r\n\r\n", // not UTF-8
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    ] {
        assert_error_page(&one(addr, bad), 400);
    }

    let mut big = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        big.push_str(&format!("X-Filler-{i}: {}\r\n", "a".repeat(80)));
    }
    big.push_str("\r\n");
    assert_error_page(&one(addr, &big), 431);

    assert_error_page(&one(addr, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
    assert_error_page(&one(addr, "GET / HTTP/3.0\r\nHost: a\r\n\r\n"), 505);

    assert_error_page(
        &one(
            addr,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n",
        ),
        413,
    );
    // A chunked body that grows past 1 MiB is refused as it arrives.
    let mut chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"80000\r\n");
        chunked.extend(std::iter::repeat_n(b'x', 0x80000));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(addr, &chunked);
    assert_error_page(&r[0], 413);
}

#[test]
fn bodies_are_read_and_discarded_between_requests() {
    let fs = start(&[]);
    let req = b"POST /time HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello worldPOST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /echo/ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let r = exchange(fs.addr(0), req);
    assert_eq!(
        r.iter().map(|r| r.status).collect::<Vec<_>>(),
        [405, 405, 200]
    );
    assert!(r[2].body.contains("You said: <strong>ok</strong>"));
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let fs = start(&[]);
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(
        b"POST /time HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.read_line().unwrap(), "HTTP/1.1 100 Continue\r");
    assert_eq!(c.read_line().unwrap(), "\r");
    c.write_all(b"hello").unwrap();
    c.shutdown_write();
    let r = parse_all(c.read_to_end_string().as_bytes(), &[]);
    assert_error_page(&r[0], 405);
}

#[test]
fn keep_alive_pipelining_and_connection_close() {
    let fs = start(&[]);
    let addr = fs.addr(0);
    let mut c = Conn::connect(addr);
    // Two pipelined requests in one write: answered in order, connection kept.
    c.write_all(
        b"GET /echo/first HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/second HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while parse_complete(&raw) < 2 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    let r = parse_all(&raw, &[]);
    assert!(
        r[0].body.contains("first") && r[1].body.contains("second"),
        "{r:?}"
    );
    assert_eq!(r[0].header("connection"), Some("keep-alive"));
    // A third request on the same connection, with Connection: close.
    c.write_all(
        b"GET /info HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let rest = c.read_to_end_string();
    let r3 = parse_all(rest.as_bytes(), &[]);
    assert_eq!(r3.len(), 1);
    assert_eq!(r3[0].header("connection"), Some("close"));

    // HTTP/1.0: closes after one response unless keep-alive is asked for.
    let mut c = Conn::connect(addr);
    c.write_all(b"GET /time HTTP/1.0\r\n\r\nGET /time HTTP/1.0\r\n\r\n")
        .unwrap();
    let r = parse_all(c.read_to_end_string().as_bytes(), &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].header("connection"), Some("close"));
    let r = exchange(
        addr,
        b"GET /time HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /time HTTP/1.0\r\n\r\nGET /time HTTP/1.0\r\n\r\n",
    );
    assert_eq!(
        r.len(),
        2,
        "keep-alive, then a plain 1.0 request that closes"
    );
    assert_eq!(r[0].header("connection"), Some("keep-alive"));
}

/// How many complete responses (with Content-Length bodies) `raw` holds.
fn parse_complete(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = raw;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if rest.len() < end + 4 + len {
            break;
        }
        rest = &rest[end + 4 + len..];
        n += 1;
    }
    n
}

#[test]
fn max_requests_per_connection_closes_after_n() {
    let fs = start(&["--max-requests-per-connection", "2"]);
    let req = "GET /time HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3);
    let r = exchange(fs.addr(0), req.as_bytes());
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].header("connection"), Some("keep-alive"));
    assert_eq!(r[1].header("connection"), Some("close"));
}

#[test]
fn stalled_half_request_is_cut_at_idle_timeout_while_others_are_served() {
    let fs = start(&["--idle-timeout", "1"]);
    let addr = fs.addr(0);
    let mut stalled = Conn::connect(addr);
    stalled.write_all(b"GET /time HTTP/1.1\r\nHo").unwrap();
    // Its worker is up and waiting for the rest.
    fs.wait_children("http worker", 1);
    // Meanwhile another client is served.
    let r = get(addr, "/time");
    assert_eq!(r.status, 200);
    // The stalled one gets a 408 page and the connection ends.
    let rest = stalled.read_to_end_string();
    let r = parse_all(rest.as_bytes(), &[]);
    assert_error_page(&r[0], 408);
    fs.wait_log("request not complete within the idle timeout");
    fs.wait_children("http worker", 0);
}

#[test]
fn idle_keep_alive_connection_closes_after_the_default_5s() {
    let fs = start(&[]);
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"GET /time HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let rest = c.read_to_end_string();
    assert_eq!(parse_all(rest.as_bytes(), &[]).len(), 1);
    let waited = started.elapsed().as_secs_f64();
    assert!(
        waited > 4.0,
        "closed after {waited}s, before the 5 s default"
    );
}

#[test]
fn access_log_has_one_common_log_format_line_per_request() {
    let fs = start(&[]);
    let addr = fs.addr(0);
    let req = b"GET /time HTTP/1.1\r\nHost: t\r\n\r\nHEAD /missing HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(exchange_heads(addr, req, &[false, true]).len(), 2);
    let line = fs.wait_log("\"GET /time HTTP/1.1\" 200 ");
    assert!(line.contains("http: 127.0.0.1 - - ["), "{line}");
    assert!(line.contains(" +0000] "), "{line}");
    fs.wait_log("\"HEAD /missing HTTP/1.1\" 404 -");
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn curl_sees_every_route_head_errors_and_reuse() {
    let fs = start(&[]);
    let base = format!("http://{}", fs.addr(0).strip_prefix("tcp:").unwrap());
    let home = curl(&[&format!("{base}/")]);
    assert!(home.contains("<h1>forkserve</h1>"), "{home}");

    let time: serde_json::Value = serde_json::from_str(&curl(&[&format!("{base}/time")])).unwrap();
    assert!(time["timestamp"].is_string());

    let info = curl(&["-H", "Accept: application/json", &format!("{base}/info")]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["model"], "fork");

    let echo = curl(&[&format!("{base}/echo/%3Cscript%3Ex%3C%2Fscript%3E")]);
    assert!(
        echo.contains("&lt;script&gt;x&lt;/script&gt;") && !echo.contains("<script>"),
        "{echo}"
    );

    let head = curl(&["-I", &format!("{base}/info")]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );

    let codes = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        &format!("{base}/nope"),
        "-X",
        "PUT",
        "-o",
        "/dev/null",
        &format!("{base}/time"),
    ]);
    assert_eq!(codes.lines().collect::<Vec<_>>(), ["404", "405"]);

    let dir = TempDir::new("http-curl");
    let big = dir.path("big");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("{base}/"),
    ]);
    assert_eq!(code, "413");

    let ten = curl(&["--http1.0", "-i", &format!("{base}/time")]);
    assert!(ten.contains("Connection: close"), "{ten}");

    // Two URLs in one curl: the second reuses the connection.
    let verbose = curl(&[
        "-v",
        "-o",
        "/dev/null",
        &format!("{base}/time"),
        "-o",
        "/dev/null",
        &format!("{base}/"),
    ]);
    assert!(
        verbose.contains("Re-using existing connection"),
        "{verbose}"
    );
}

#[test]
fn serves_under_every_model() {
    for model in ["fork", "thread", "sequential", "prefork"] {
        let fs = start(&["--model", model]);
        let r = exchange(
            fs.addr(0),
            b"GET /info HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\n\r\nGET /echo/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.len(), 2, "{model}");
        let v: serde_json::Value = serde_json::from_str(&r[0].body).unwrap();
        assert_eq!(v["model"], model);
        assert!(r[1].body.contains("<strong>x</strong>"), "{model}");
    }
}

#[test]
fn a_request_trickled_byte_by_byte_is_cut_at_the_idle_timeout() {
    let fs = start(&["--idle-timeout", "1"]);
    let c = Conn::connect(fs.addr(0));
    let Conn::Tcp(stream) = c else { unreachable!() };
    let mut writer = stream.try_clone().unwrap();
    // One byte every 200 ms: each read succeeds well within the idle timeout, but
    // the request as a whole never completes.
    let trickle = std::thread::spawn(move || {
        for b in b"GET /time HTTP/1.1\r\nHost: t\r\nX-Slow: "
            .iter()
            .chain([b'a'; 100].iter())
        {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let mut reader = Conn::Tcp(stream);
    let r = parse_all(reader.read_to_end_string().as_bytes(), &[]);
    assert_error_page(&r[0], 408);
    drop(reader);
    trickle.join().unwrap();
}

/// Asserts that the body of `r` holds every one of `parts`.
fn assert_body_has(r: &Resp, parts: &[&str]) {
    for part in parts {
        assert!(r.body.contains(part), "{part} in {}", r.body);
    }
}

#[test]
fn lang_es_shows_the_reference_pages_in_spanish() {
    let fs = start(&["--lang", "es"]);
    let addr = fs.addr(0);
    let home = get(addr, "/");
    assert_eq!(home.status, 200);
    assert_body_has(
        &home,
        &[
            "<title>Servidor Simple</title>",
            "<h1>Bienvenido al Servidor Simple</h1>",
            ">Hora del servidor</a>",
            ">Información del servidor</a>",
            "<a href=\"/echo/Hola%20Mundo\">Echo: Hola Mundo</a>",
        ],
    );
    assert_body_has(
        &get(addr, "/echo/Hola%20Mundo"),
        &[
            "<p>Tu mensaje: <strong>Hola Mundo</strong></p>",
            "<p>Longitud: 10 caracteres</p>",
        ],
    );
    assert_body_has(
        &get(addr, "/info"),
        &["<h1>Información del Servidor</h1>", "<th>Cliente</th>"],
    );
    let missing = get(addr, "/nada");
    assert_error_page(&missing, 404);
    assert_body_has(
        &missing,
        &[
            "<title>404 - No Encontrado</title>",
            "<h1>404 - Página No Encontrada</h1>",
            "La página solicitada no existe.",
        ],
    );
    let post = one(
        addr,
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_error_page(&post, 405);
    assert_body_has(&post, &["Método no permitido"]);
    // The parser's refusals get the status's Spanish sentence.
    let bad = one(addr, "GET / HTTP/1.1\r\n\r\n");
    assert_error_page(&bad, 400);
    assert_body_has(&bad, &["La petición está mal formada."]);
    // The wire stays HTTP: reason phrases and JSON keys do not change.
    assert_eq!(bad.header("connection"), Some("close"));
    let time = get(addr, "/time");
    assert!(time.body.starts_with("{\"timestamp\":\""), "{}", time.body);
}

#[test]
fn an_unknown_lang_is_a_usage_error() {
    let out = Command::new(bin())
        .args(["http", "--lang", "fr", "-l", "tcp:127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--lang") && err.contains("es"), "{err}");
}
