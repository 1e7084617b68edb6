//! The proxy service with real clients (curl -x, Python urllib with a
//! ProxyHandler, raw sockets) against origins the tests start: the counting test
//! origin (tests/proxy_origin.py), forkserve http, `python3 -m http.server`, and
//! `openssl s_server` behind a CONNECT tunnel.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use common::{Forkserve, TempDir, fails_with, forkserve, wait_until};

/// A child process killed (by PID) when the guard drops.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The counting origin; its port.
fn origin() -> (Proc, u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proxy_origin.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok());
    let port = port.unwrap_or_else(|| panic!("origin said {line:?}"));
    (Proc(child), port)
}

fn stats(port: u16) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            &format!("http://127.0.0.1:{port}/stats"),
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn count(port: u16, path: &str) -> u64 {
    stats(port)[path].as_u64().unwrap_or(0)
}

/// A proxy on a free loopback port with its cache in `dir`.
fn proxy(dir: &TempDir, args: &[&str]) -> Forkserve {
    forkserve()
        .args(["proxy", "--listen", "tcp:127.0.0.1:0", "--cache-dir"])
        .arg(dir.path("cache"))
        .args(args)
        .start()
}

fn proxy_url(fs: &Forkserve) -> String {
    format!(
        "http://{}",
        fs.addr_of("proxy", "tcp").trim_start_matches("tcp:")
    )
}

/// A response as curl -i shows it: status, head (lower-cased names), body.
struct Got {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn curl(fs: &Forkserve, args: &[&str]) -> Got {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30", "-x", &proxy_url(fs)])
        .args(args)
        .output()
        .expect("curl");
    let mut raw = out.stdout.as_slice();
    loop {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "curl {args:?}: no head in {:?} ({})",
                    String::from_utf8_lossy(raw),
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        raw = &raw[end + 4..];
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        // Interim responses and the tunnel's own 200 come before the real one.
        if status < 200 || (head.contains("Connection established") && !raw.is_empty()) {
            continue;
        }
        return Got {
            status,
            head,
            body: raw.to_vec(),
        };
    }
}

#[test]
fn get_head_post_chunked_and_hop_by_hop_with_curl_and_urllib() {
    let dir = TempDir::new("proxy-basic");
    let (_o, port) = origin();
    let fs = proxy(&dir, &["--allow", "127.0.0.0/8"]);
    let base = format!("http://127.0.0.1:{port}");

    let got = curl(
        &fs,
        &[
            "-H",
            "Connection: X-Secret",
            "-H",
            "X-Secret: 1",
            "-H",
            "Proxy-Connection: keep-alive",
            "-H",
            "TE: trailers",
            &format!("{base}/echo"),
        ],
    );
    assert_eq!(got.status, 200, "{}", got.head);
    let echoed = got.text().to_ascii_lowercase();
    assert!(echoed.starts_with("get /echo\n"), "{echoed}");
    assert!(echoed.contains("via: 1.1 forkserve"), "{echoed}");
    assert!(echoed.contains("x-forwarded-for: 127.0.0.1"), "{echoed}");
    for gone in ["x-secret", "proxy-connection", "te:", "connection:"] {
        assert!(
            !echoed.contains(gone),
            "{gone} reached the origin: {echoed}"
        );
    }
    assert_eq!(got.header("via").as_deref(), Some("1.1 forkserve"));
    assert_eq!(got.header("x-cache").as_deref(), Some("MISS"));

    let head = curl(&fs, &["-I", &format!("{base}/c/h?cc=no-store")]);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(
        head.header("content-length").as_deref(),
        Some("4"),
        "{}",
        head.head
    );

    // A 2 MiB POST body (curl sends Expect: 100-continue for it).
    let body = dir.path("body");
    std::fs::write(&body, vec![b'p'; 2 << 20]).unwrap();
    let post = curl(
        &fs,
        &[
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{base}/echo"),
        ],
    );
    assert!(post.text().starts_with("POST /echo\n"), "{}", post.text());
    assert!(
        post.text().contains(&format!("body {} ", 2 << 20)),
        "{}",
        post.text()
    );
    // Chunked upload, re-chunked to the origin.
    let chunked_up = curl(
        &fs,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "abc",
            &format!("{base}/echo"),
        ],
    );
    assert!(
        chunked_up.text().contains("body 3 "),
        "{}",
        chunked_up.text()
    );

    let chunked = curl(&fs, &[&format!("{base}/chunked")]);
    assert_eq!(chunked.text(), "hello chunked world");
    assert_eq!(
        chunked.header("transfer-encoding").as_deref(),
        Some("chunked")
    );

    let py = format!(
        "import urllib.request as u\n\
         o = u.build_opener(u.ProxyHandler({{'http': '{}'}}))\n\
         r = o.open('{base}/c/py?cc=max-age%3D60')\n\
         print(r.status, r.headers['X-Cache'], r.read().decode())",
        proxy_url(&fs)
    );
    let out = Command::new("python3").args(["-c", &py]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200 MISS py #1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = fs.wait_log("TCP_MISS/200");
    assert!(line.contains("GET http://127.0.0.1:"), "{line}");
}

#[test]
fn keep_alive_pipelining_and_the_unix_socket() {
    let dir = TempDir::new("proxy-pipe");
    let (_o, port) = origin();
    let sock = dir.path("proxy.sock");
    let fs = forkserve()
        .args(["proxy", "--listen", "tcp:127.0.0.1:0", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .arg("--cache-dir")
        .arg(dir.path("cache"))
        .args(["--allow", "127.0.0.0/8"])
        .listeners(2)
        .start();
    let req = |path: &str| {
        format!("GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    };
    for addr in [fs.addr_of("proxy", "tcp"), fs.addr_of("proxy", "unix")] {
        let mut c = common::Conn::connect(&addr);
        c.write_all(format!("{}{}", req("/c/a?cc=no-store"), req("/c/b?cc=no-store")).as_bytes())
            .unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !(seen.contains("a #") && seen.contains("b #")) {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(
            seen.find("a #").unwrap() < seen.find("b #").unwrap(),
            "{seen}"
        );
        assert_eq!(seen.matches("HTTP/1.1 200 OK").count(), 2, "{seen}");
    }
    // An HTTP/1.0 client gets a chunked origin response delimited by the close.
    let mut c = common::Conn::connect(&fs.addr_of("proxy", "tcp"));
    write!(c, "GET http://127.0.0.1:{port}/chunked HTTP/1.0\r\n\r\n").unwrap();
    let all = c.read_to_end_string();
    assert!(all.contains("Connection: close\r\n"), "{all}");
    assert!(
        !all.to_ascii_lowercase().contains("transfer-encoding"),
        "{all}"
    );
    assert!(all.ends_with("\r\n\r\nhello chunked world"), "{all}");
}

#[test]
fn other_origins_localhost_and_a_hosts_file_name() {
    let dir = TempDir::new("proxy-origins");
    let http = forkserve()
        .args(["http", "--listen", "tcp:127.0.0.1:0"])
        .start();
    let http_port = http.addr(0).rsplit(':').next().unwrap().to_string();
    let root = dir.path("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("file.txt"), "served by python\n").unwrap();
    // Modified ten days ago: heuristic freshness (a tenth of that, at most a day).
    let ten_days = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86400);
    std::fs::File::options()
        .write(true)
        .open(root.join("file.txt"))
        .unwrap()
        .set_modified(ten_days)
        .unwrap();
    let py_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _py = Proc(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &py_port.to_string(),
            ])
            .current_dir(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("python http.server", || {
        TcpStream::connect(("127.0.0.1", py_port)).ok()
    });
    let hosts = dir.path("hosts");
    std::fs::write(&hosts, "127.0.0.1 origin.test other-name\n").unwrap();
    let fs = proxy(
        &dir,
        &[
            "--allow",
            "127.0.0.0/8",
            "--allow",
            "::1",
            "--hosts-file",
            hosts.to_str().unwrap(),
        ],
    );

    let got = curl(&fs, &[&format!("http://origin.test:{http_port}/echo/hi")]);
    assert_eq!(got.status, 200, "{}", got.head);
    assert!(got.text().contains("<strong>hi</strong>"), "{}", got.text());
    let got = curl(&fs, &[&format!("http://localhost:{http_port}/time")]);
    assert_eq!(got.status, 200);
    let got = curl(&fs, &[&format!("http://other-name:{py_port}/file.txt")]);
    assert_eq!(got.text(), "served by python\n");
    // python's Last-Modified makes it heuristically cacheable: the second is a hit.
    let again = curl(&fs, &[&format!("http://other-name:{py_port}/file.txt")]);
    assert_eq!(
        again.header("x-cache").as_deref(),
        Some("HIT"),
        "{}",
        again.head
    );
}

#[test]
fn cache_hit_no_store_revalidation_vary_and_restart() {
    let dir = TempDir::new("proxy-cache");
    let (_o, port) = origin();
    let base = format!("http://127.0.0.1:{port}");
    {
        let fs = proxy(
            &dir,
            &["--allow", "127.0.0.0/8", "--access-log-format", "combined"],
        );
        let first = curl(&fs, &[&format!("{base}/c/hit?cc=max-age%3D600")]);
        let second = curl(&fs, &[&format!("{base}/c/hit?cc=max-age%3D600")]);
        assert_eq!(first.header("x-cache").as_deref(), Some("MISS"));
        assert_eq!(
            second.header("x-cache").as_deref(),
            Some("HIT"),
            "{}",
            second.head
        );
        assert_eq!(second.text(), "hit #1");
        assert!(
            second
                .header("age")
                .is_some_and(|a| a.parse::<u64>().is_ok()),
            "{}",
            second.head
        );
        assert_eq!(count(port, "/c/hit"), 1);
        let line = fs.wait_log(" HIT upstream_ms=");
        assert!(
            line.contains("\"GET http://127.0.0.1:")
                && line.contains("/c/hit?cc=max-age%3D600 HTTP/1.1\" 200 6 \"-\" \"curl/"),
            "{line}"
        );

        for _ in 0..2 {
            let got = curl(&fs, &[&format!("{base}/c/never?cc=no-store")]);
            assert_eq!(got.header("x-cache").as_deref(), Some("MISS"));
        }
        assert_eq!(count(port, "/c/never"), 2);

        // no-cache with an ETag: stored, but revalidated every time (304).
        curl(&fs, &[&format!("{base}/c/reval?cc=no-cache")]);
        let again = curl(&fs, &[&format!("{base}/c/reval?cc=no-cache")]);
        assert_eq!(
            again.header("x-cache").as_deref(),
            Some("REVALIDATED"),
            "{}",
            again.head
        );
        assert_eq!(again.text(), "reval #1");
        assert_eq!(
            (count(port, "/c/reval"), count(port, "304 /c/reval")),
            (1, 1)
        );

        let en = curl(
            &fs,
            &["-H", "Accept-Language: en", &format!("{base}/vary/v")],
        );
        let fr = curl(
            &fs,
            &["-H", "Accept-Language: fr", &format!("{base}/vary/v")],
        );
        let fr2 = curl(
            &fs,
            &["-H", "Accept-Language: fr", &format!("{base}/vary/v")],
        );
        assert_eq!((en.text().as_str(), fr.text().as_str()), ("en #1", "fr #2"));
        assert_eq!(
            (fr2.text().as_str(), fr2.header("x-cache").as_deref()),
            ("fr #2", Some("HIT"))
        );

        // A hit over 64 KiB goes out with sendfile.
        let url = format!("{base}/sized/large?n=200000");
        curl(&fs, &[&url]);
        let large = curl(&fs, &[&url]);
        assert_eq!(large.header("x-cache").as_deref(), Some("HIT"));
        assert_eq!(large.body, vec![b's'; 200000]);

        // Set-Cookie: not stored; with public, stored without the cookie.
        for _ in 0..2 {
            curl(&fs, &[&format!("{base}/cookie/mine")]);
        }
        assert_eq!(count(port, "/cookie/mine"), 2);
        let first = curl(&fs, &[&format!("{base}/cookie/shared?public=1")]);
        let hit = curl(&fs, &[&format!("{base}/cookie/shared?public=1")]);
        assert_eq!(first.header("set-cookie").as_deref(), Some("id=1"));
        assert_eq!(
            (hit.header("x-cache").as_deref(), hit.header("set-cookie")),
            (Some("HIT"), None)
        );

        // Authorization without public: not stored.
        curl(
            &fs,
            &[
                "-H",
                "Authorization: Basic eDp5",
                &format!("{base}/c/auth?cc=max-age%3D600"),
            ],
        );
        curl(
            &fs,
            &[
                "-H",
                "Authorization: Basic eDp5",
                &format!("{base}/c/auth?cc=max-age%3D600"),
            ],
        );
        assert_eq!(count(port, "/c/auth"), 2);
    }
    // A new proxy on the same cache directory still has the entry.
    let fs = proxy(&dir, &["--allow", "127.0.0.0/8"]);
    let after = curl(&fs, &[&format!("{base}/c/hit?cc=max-age%3D600")]);
    assert_eq!(
        (after.header("x-cache").as_deref(), after.text().as_str()),
        (Some("HIT"), "hit #1")
    );
    assert_eq!(count(port, "/c/hit"), 1);
}

#[test]
fn concurrent_misses_make_one_upstream_request() {
    let dir = TempDir::new("proxy-collapse");
    let (_o, port) = origin();
    let fs = proxy(&dir, &["--allow", "127.0.0.0/8"]);
    let url = format!("http://127.0.0.1:{port}/slow?secs=1&cc=max-age%3D600");
    let clients: Vec<_> = (0..5)
        .map(|_| {
            Command::new("curl")
                .args(["-sS", "--max-time", "30", "-x", &proxy_url(&fs), &url])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "slow");
    }
    assert_eq!(count(port, "/slow"), 1);
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        // An entry may be renamed or evicted between the listing and the look.
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn eviction_at_the_size_cap_and_stale_temp_files() {
    let dir = TempDir::new("proxy-evict");
    let (_o, port) = origin();
    std::fs::create_dir_all(dir.path("cache")).unwrap();
    // A temporary file left by a killed worker of an earlier run.
    std::fs::write(dir.path("cache").join("tmp.999999.0"), b"partial").unwrap();
    let fs = proxy(&dir, &["--allow", "127.0.0.0/8", "--cache-size", "300K"]);
    assert!(!dir.path("cache").join("tmp.999999.0").exists());
    // One left by a worker that died while this proxy runs: the next store's
    // eviction pass removes it.
    let dead = dir.path("cache").join("tmp.999998.3");
    assert!(!std::path::Path::new("/proc/999998").exists());
    std::fs::write(&dead, b"partial").unwrap();
    for i in 0..6 {
        let got = curl(
            &fs,
            &[&format!("http://127.0.0.1:{port}/sized/{i}?n=60000")],
        );
        assert_eq!(got.body.len(), 60000);
    }
    // The last worker evicts after its client has the body: wait for it.
    wait_until("the cache to fit its cap", || {
        (dir_size(&dir.path("cache")) <= 300 * 1024).then_some(())
    });
    wait_until("the dead worker's temporary file to go", || {
        (!dead.exists()).then_some(())
    });
    let last = curl(&fs, &[&format!("http://127.0.0.1:{port}/sized/5?n=60000")]);
    assert_eq!(last.header("x-cache").as_deref(), Some("HIT"));
    let first = curl(&fs, &[&format!("http://127.0.0.1:{port}/sized/0?n=60000")]);
    assert_eq!(
        first.header("x-cache").as_deref(),
        Some("MISS"),
        "the oldest entry was evicted"
    );
    assert_eq!(count(port, "/sized/0"), 2);
}

#[test]
fn access_lists_ssrf_default_and_reload_on_sighup() {
    let dir = TempDir::new("proxy-acl");
    let (_o, port) = origin();
    let base = format!("http://127.0.0.1:{port}");
    {
        let fs = proxy(&dir, &[]);
        let got = curl(&fs, &[&format!("{base}/c/x")]);
        assert_eq!(got.status, 403);
        assert!(
            got.text().contains("127.0.0.1 is a loopback address"),
            "{}",
            got.text()
        );
        assert!(
            fs.wait_log("TCP_DENIED/403")
                .contains(&format!("{base}/c/x"))
        );
    }
    let acl = dir.path("acl");
    std::fs::write(
        &acl,
        format!("# test list\ndeny {base}/c/secret\nallow 127.0.0.0/8\n"),
    )
    .unwrap();
    let fs = proxy(
        &dir,
        &["--deny", "*.blocked.test", "--acl", acl.to_str().unwrap()],
    );
    let open = curl(&fs, &[&format!("{base}/c/open?cc=no-store")]);
    assert_eq!(open.status, 200);
    let secret = curl(&fs, &[&format!("{base}/c/secret")]);
    assert_eq!(secret.status, 403);
    assert!(secret.text().contains(":2: deny"), "{}", secret.text());
    let glob = curl(&fs, &["http://www.blocked.test/"]);
    assert!(
        glob.status == 403 && glob.text().contains("--deny *.blocked.test"),
        "{}",
        glob.text()
    );
    assert_eq!(count(port, "/c/secret"), 0);

    std::fs::write(&acl, "deny client 127.0.0.0/8\n").unwrap();
    fs.signal(libc::SIGHUP);
    fs.wait_log("SIGHUP received");
    let now = curl(&fs, &[&format!("{base}/c/open?cc=no-store")]);
    assert_eq!(now.status, 403, "{}", now.text());
    assert!(
        now.text().contains("deny client 127.0.0.0/8"),
        "{}",
        now.text()
    );
}

#[test]
fn errors_502_504_508() {
    let dir = TempDir::new("proxy-errors");
    let (_o, port) = origin();
    let resolv = dir.path("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let hosts = dir.path("hosts");
    std::fs::write(&hosts, "").unwrap();
    let fs = proxy(
        &dir,
        &[
            "--allow",
            "127.0.0.0/8",
            "--upstream-timeout",
            "1",
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--hosts-file",
            hosts.to_str().unwrap(),
        ],
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = curl(&fs, &[&format!("http://127.0.0.1:{closed}/")]);
    assert_eq!(refused.status, 502);
    assert!(
        refused.text().contains("Could not connect"),
        "{}",
        refused.text()
    );
    let unknown = curl(&fs, &["http://no-such-host.invalid/"]);
    assert_eq!(unknown.status, 502);
    assert!(
        unknown.text().contains("could not be resolved"),
        "{}",
        unknown.text()
    );
    let slow = curl(&fs, &[&format!("http://127.0.0.1:{port}/slow?secs=3")]);
    assert_eq!(slow.status, 504);
    // Not a proxy request, and not HTTP at all: 400, and the proxy lives on.
    for (raw, needle) in [
        (
            "GET /local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "absolute http:// URL",
        ),
        ("NONSENSE\r\n\r\n", "Malformed"),
    ] {
        let mut c = common::Conn::connect(&fs.addr_of("proxy", "tcp"));
        c.write_all(raw.as_bytes()).unwrap();
        let answer = c.read_to_end_string();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains(needle), "{answer}");
    }
    let looped = curl(
        &fs,
        &[
            "-H",
            "Via: 1.1 forkserve",
            &format!("http://127.0.0.1:{port}/c/l"),
        ],
    );
    assert_eq!(looped.status, 508);
    assert_eq!(count(port, "/c/l"), 0);
}

/// The peak RSS (VmHWM, KiB) of a process.
fn hwm_kib(pid: i32) -> u64 {
    status_kib(pid, "VmHWM")
}

fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS")
}

fn status_kib(pid: i32, field: &str) -> u64 {
    let st = common::status(pid);
    st.get(field)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_100_mib_response_streams_with_bounded_worker_memory() {
    let dir = TempDir::new("proxy-big");
    let (_o, port) = origin();
    let fs = proxy(&dir, &["--allow", "127.0.0.0/8"]);
    let total: u64 = 100 << 20;
    for chunked in ["0", "1"] {
        let mut c = common::Conn::connect(&fs.addr_of("proxy", "tcp"));
        let path = format!(
            "/big?n={total}{}",
            if chunked == "1" { "&chunked=1" } else { "" }
        );
        write!(
            c,
            "GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::with_capacity(1 << 16, c);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let worker = wait_until("the proxy worker", || {
            fs.children()
                .into_iter()
                .find(|p| common::cmdline(*p).contains("proxy worker"))
        });
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            let mut n = 0u64;
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let s = u64::from_str_radix(size.trim(), 16).unwrap();
                let mut rest = (&mut r).take(s + 2);
                n += std::io::copy(&mut rest, &mut std::io::sink()).unwrap();
                if s == 0 {
                    break n;
                }
                n -= 2;
            }
        } else {
            std::io::copy(&mut (&mut r).take(total), &mut std::io::sink()).unwrap()
        } - if chunked == "1" { 2 } else { 0 };
        assert_eq!(body, total, "{head}");
        // The connection is kept alive: the worker is still there to look at. Its
        // resident pages start as the master's (shared after fork): what the
        // transfer may add is the growth over the master's size.
        let peak = hwm_kib(worker);
        let base = rss_kib(fs.pid);
        eprintln!(
            "worker peak RSS for 100 MiB ({}): {peak} KiB (master {base} KiB)",
            if chunked == "1" { "chunked" } else { "length" }
        );
        assert!(
            peak > 0 && peak.saturating_sub(base) < 4 * 1024,
            "worker VmHWM {peak} KiB, master VmRSS {base} KiB"
        );
    }
    let left: Vec<String> = std::fs::read_dir(dir.path("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock") && !n.ends_with(".pass"))
        .collect();
    assert!(
        left.is_empty(),
        "too big to store, nothing left behind: {left:?}"
    );
}

#[test]
fn connect_tunnel_to_openssl_s_server() {
    let dir = TempDir::new("proxy-tls");
    let (key, cert) = (dir.path("key.pem"), dir.path("cert.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _tls = Proc(
        Command::new("openssl")
            .args([
                "s_server",
                "-www",
                "-accept",
                &format!("127.0.0.1:{tls_port}"),
                "-key",
            ])
            .arg(&key)
            .arg("-cert")
            .arg(&cert)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("openssl s_server", || {
        TcpStream::connect(("127.0.0.1", tls_port)).ok()
    });
    let fs = proxy(
        &dir,
        &[
            "--allow",
            "127.0.0.0/8",
            "--connect-ports",
            &format!("443,{tls_port}"),
        ],
    );
    let got = curl(&fs, &["-k", &format!("https://127.0.0.1:{tls_port}/")]);
    assert_eq!(got.status, 200, "{}", got.head);
    assert!(got.text().contains("s_server"), "{}", got.text());
    assert!(
        fs.wait_log("TCP_TUNNEL/200")
            .contains(&format!("127.0.0.1:{tls_port}"))
    );

    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let mut c = common::Conn::connect(&fs.addr_of("proxy", "tcp"));
    write!(
        c,
        "CONNECT 127.0.0.1:{other_port} HTTP/1.1\r\nHost: 127.0.0.1:{other_port}\r\n\r\n"
    )
    .unwrap();
    let reply = c.read_line().unwrap();
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
}

#[test]
fn start_up_errors_name_the_option_or_file_line() {
    let dir = TempDir::new("proxy-startup");
    let acl = dir.path("acl");
    std::fs::write(&acl, "allow 127.0.0.0/8\npermit everything\n").unwrap();
    let cache = dir.path("cache");
    let cache = cache.to_str().unwrap();
    let base = ["proxy", "-l", "tcp:127.0.0.1:0", "--cache-dir", cache];
    fails_with(
        &[&base[..], &["--acl", acl.to_str().unwrap()]].concat(),
        78,
        "acl:2: 'permit': expected allow or deny",
    );
    fails_with(
        &[&base[..], &["--allow", "10.0.0.0/40"]].concat(),
        78,
        "--allow 10.0.0.0/40",
    );
    fails_with(
        &[&base[..], &["--allow-clients", "nonsense"]].concat(),
        64,
        "--allow-clients nonsense",
    );
    fails_with(
        &[&base[..], &["--connect-timeout", "0"]].concat(),
        64,
        "--connect-timeout",
    );
    std::fs::write(dir.path("file"), "").unwrap();
    let not_dir = dir.path("file");
    fails_with(
        &[
            "proxy",
            "-l",
            "tcp:127.0.0.1:0",
            "--cache-dir",
            not_dir.to_str().unwrap(),
        ],
        71,
        "cache directory",
    );
}

#[test]
fn workers_under_user_store_in_a_cache_handed_to_that_user() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    let dir = TempDir::new("proxy-user");
    let (_o, port) = origin();
    let fs = proxy(&dir, &["--allow", "127.0.0.0/8", "--user", "nobody"]);
    let url = format!("http://127.0.0.1:{port}/c/owned?cc=max-age%3D600");
    curl(&fs, &[&url]);
    let again = curl(&fs, &[&url]);
    assert_eq!(
        again.header("x-cache").as_deref(),
        Some("HIT"),
        "{}",
        fs.log_text()
    );
    use std::os::unix::fs::MetadataExt;
    let nobody = std::fs::metadata(dir.path("cache")).unwrap().uid();
    assert_ne!(nobody, 0, "the cache directory was handed over");
    let owners: Vec<u32> = std::fs::read_dir(dir.path("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().uid())
        .collect();
    assert!(
        !owners.is_empty() && owners.iter().all(|&u| u == nobody),
        "{owners:?}"
    );
}

#[test]
fn sighup_reaches_prefork_workers_too() {
    let dir = TempDir::new("proxy-prefork");
    let (_o, port) = origin();
    let acl = dir.path("acl");
    std::fs::write(&acl, "allow 127.0.0.0/8\n").unwrap();
    let fs = proxy(
        &dir,
        &[
            "--model",
            "prefork",
            "--workers",
            "2",
            "--acl",
            acl.to_str().unwrap(),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/c/pf?cc=no-store");
    assert_eq!(curl(&fs, &[&url]).status, 200);
    std::fs::write(&acl, "deny 127.0.0.0/8\n").unwrap();
    fs.signal(libc::SIGHUP);
    fs.wait_log("replacing 2 server process(es)");
    // Workers finish what they serve before they are replaced: poll until the
    // new rules answer.
    let denied = wait_until("the reloaded rules", || {
        let got = curl(&fs, &[&url]);
        (got.status == 403).then_some(got)
    });
    assert!(
        denied.text().contains("acl:1: deny 127.0.0.0/8"),
        "{}",
        denied.text()
    );
}

#[test]
fn origin_connections_outlive_client_connections_through_the_pool() {
    let dir = TempDir::new("proxy-pool");
    let (_o, port) = origin();
    let fs = proxy(&dir, &["--allow", "127.0.0.0/8"]);
    let before = count(port, "connections");
    for i in 0..5 {
        // Each curl is a new client connection, so a new worker.
        let got = curl(
            &fs,
            &[&format!("http://127.0.0.1:{port}/c/pooled?cc=no-store")],
        );
        assert_eq!(got.text(), format!("pooled #{}", i + 1));
    }
    // This stats request is one more connection of its own.
    let opened = count(port, "connections") - before - 1;
    assert_eq!(opened, 1, "the workers shared one origin connection");
    assert!(
        fs.children()
            .iter()
            .any(|p| common::cmdline(*p).contains("proxy pool"))
    );
}
