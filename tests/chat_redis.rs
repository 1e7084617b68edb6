//! Chat across hosts (`--backend redis://…`): a real `redis-server` on a free
//! loopback port with its files in a temp dir, and two forkserve masters standing
//! in for two hosts. Messages, whispers, kicks, lists, names and history cross
//! hosts; Redis restarts and host crashes are survived. `redis-server` missing is
//! a failure, not a skip (CI installs Debian's `redis-server`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chat_client::*;
use common::*;

/// How long a crashed host's names live (`CLAIM_TTL` in the broker).
const CLAIM_TTL: Duration = Duration::from_secs(5);

/// A `redis-server` of this test: no persistence, files in a temp dir, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Redis {
    fn start() -> Redis {
        let mut last = String::new();
        // A free port can be taken between our probe and redis-server's bind: retry.
        for _ in 0..5 {
            match Redis::start_on(free_port()) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn start_on(port: u16) -> Result<Redis, String> {
        let dir = TempDir::new("redis");
        let child = wait_redis(port, spawn_redis(&dir, port))?;
        Ok(Redis { child, port, dir })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same port (after [`Redis::kill`]).
    fn restart(&mut self) {
        let child = spawn_redis(&self.dir, self.port);
        self.child = wait_redis(self.port, child).expect("redis-server restarts on its port");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn_redis(dir: &TempDir, port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir.0)
        .arg("--logfile")
        .arg(dir.path("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-server: {e} (these tests need it: apt-get install redis-server)")
        })
}

/// Waits until redis-server answers PING on `port`; Err if it exited first.
fn wait_redis(port: u16, mut child: Child) -> Result<Child, String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Err(format!("redis-server on port {port} exited: {st}"));
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut b).is_ok()
                && &b == b"+PONG\r\n"
            {
                return Ok(child);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("redis-server on port {port} did not answer"))
}

/// One forkserve host of the chat, relaying through `url`.
struct Host {
    fs: Forkserve,
    _dir: TempDir,
}

impl Host {
    fn start(url: &str, args: &[&str]) -> Host {
        let dir = TempDir::new("chat-host");
        let fs = forkserve()
            .env("RUNTIME_DIRECTORY", &dir.0)
            .args(["chat", "-l", "tcp:127.0.0.1:0", "--backend", url])
            .args(args)
            .start();
        Host { fs, _dir: dir }
    }
    fn addr(&self) -> String {
        self.fs.addr_of("chat", "tcp")
    }
    fn login(&self, name: &str) -> Client {
        Client::login(&self.addr(), name)
    }
    fn broker(&self) -> i32 {
        self.fs.wait_children("chat broker", 1)[0]
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Asks `c` for `/list all` until the answer is `want` (presence is refreshed in
/// the background, so a list may lag a moment behind).
fn wait_list(c: &mut Client, want: &str) {
    wait_until(&format!("/list all to show {want:?}"), || {
        c.send("/list all");
        let got = c.line();
        if got == want {
            Some(())
        } else {
            std::thread::sleep(Duration::from_millis(50));
            None
        }
    });
}

#[test]
fn messages_whispers_kicks_and_lists_cross_hosts() {
    let redis = Redis::start();
    let args = ["--admins", "ann", "--room-limit", "1"];
    let a = Host::start(&redis.url(), &args);
    let b = Host::start(&redis.url(), &args);
    // Pub/sub orders events per host, not across hosts: each login waits until
    // the host it happens on has heard of the one before.
    let mut bob = b.login("bob");
    let mut ann = a.login("ann");
    assert_eq!(bob.line(), "* ann joined #lobby");
    let mut cat = b.login("cat");
    assert_eq!(ann.line(), "* cat joined #lobby");
    assert_eq!(bob.line(), "* cat joined #lobby");

    ann.send("hello from a");
    for c in [&mut ann, &mut bob, &mut cat] {
        assert_eq!(c.line(), "[ann]: hello from a");
    }
    bob.send("/w ann psst");
    assert_eq!(bob.line(), "[private to ann]: psst");
    assert_eq!(ann.line(), "[private from bob]: psst");
    ann.send("/whisper BOB back");
    assert_eq!(ann.line(), "[private to bob]: back");
    assert_eq!(bob.line(), "[private from ann]: back");
    ann.send("/whisper nobody x");
    assert_eq!(ann.line(), "error: no user nobody");

    ann.send("/list all");
    assert_eq!(
        ann.line(),
        "* online (3): ann (#lobby), bob (#lobby), cat (#lobby)"
    );
    cat.send("/join dev");
    assert_eq!(cat.line(), "* you are now in #dev");
    assert_eq!(ann.line(), "* cat left #lobby");
    assert_eq!(bob.line(), "* cat left #lobby");
    ann.send("/rooms");
    assert_eq!(ann.line(), "* rooms (2): #dev (1), #lobby (2)");
    // The room limit counts the members on every host.
    ann.send("/join dev");
    assert_eq!(ann.line(), "error: room #dev is full (1)");
    bob.send("/list");
    assert_eq!(bob.line(), "* users in #lobby (2): ann, bob");

    // Only admins kick, on every host; a kick reaches the other host.
    bob.send("/kick cat");
    assert_eq!(bob.line(), "error: not allowed");
    ann.send("/kick cat spamming");
    assert_eq!(cat.line(), "* you were kicked by ann: spamming");
    assert_eq!(cat.rest(), "", "the kicked client is disconnected");
    // ann is not in #dev: she is told by her own host.
    assert_eq!(ann.line(), "* cat was kicked by ann: spamming");
    wait_list(&mut bob, "* online (2): ann (#lobby), bob (#lobby)");
    // The name is free again, on either host.
    let _cat = a.login("cat");
    assert_eq!(bob.line(), "* cat joined #lobby");
    // The relay runs in the broker's one thread.
    for host in [&a, &b] {
        let threads = status(host.broker()).get("Threads").cloned();
        assert_eq!(threads.as_deref(), Some("1"));
    }
}

#[test]
fn one_users_file_on_every_host_makes_the_same_admins() {
    let redis = Redis::start();
    let dir = TempDir::new("chat-users");
    let users = dir.path("users");
    let lines = [
        chat_passwd(&["ann", "--admin"], "secret-a"),
        chat_passwd(&["bob"], "secret-b"),
    ];
    std::fs::write(&users, lines.join("\n") + "\n").unwrap();
    let args = ["--users", users.to_str().unwrap()];
    let a = Host::start(&redis.url(), &args);
    let b = Host::start(&redis.url(), &args);
    let login = |host: &Host, name: &str, password: &str| {
        let mut c = Client::connect(&host.addr());
        c.expect("Username: ");
        c.send(name);
        c.expect("Password: ");
        c.send(password);
        c.expect(&format!("Welcome, {name}!"));
        c.line();
        c
    };
    let mut ann = login(&b, "ann", "secret-a");
    let mut bob = login(&a, "bob", "secret-b");
    assert_eq!(ann.line(), "* bob joined #lobby");
    bob.send("/kick ann");
    assert_eq!(bob.line(), "error: not allowed");
    ann.send("/kick bob bye");
    assert_eq!(bob.line(), "* you were kicked by ann: bye");
    assert_eq!(bob.rest(), "");
    assert_eq!(ann.line(), "* bob was kicked by ann: bye");
}

#[test]
fn a_name_is_unique_across_hosts() {
    let redis = Redis::start();
    let a = Host::start(&redis.url(), &[]);
    let b = Host::start(&redis.url(), &[]);
    let mut zoe = a.login("Zoë");
    let mut c = Client::connect(&b.addr());
    c.expect("Username: ");
    c.send("ZOË");
    assert_eq!(c.line(), "error: name ZOË is taken");
    c.expect("Username: ");
    zoe.send("quit");
    zoe.rest();
    // Released on quit: the other host may have it now.
    c.send("ZOË");
    c.expect("Welcome, ZOË!");
}

#[test]
fn history_is_shared_between_hosts_and_survives_a_broker_kill() {
    let redis = Redis::start();
    let a = Host::start(&redis.url(), &["--history", "3"]);
    let b = Host::start(&redis.url(), &["--history", "3"]);
    let mut bob = b.login("bob");
    let mut ann = a.login("ann");
    assert_eq!(bob.line(), "* ann joined #lobby");
    for n in 1..=4 {
        ann.send(&format!("line {n}"));
        assert_eq!(ann.line(), format!("[ann]: line {n}"));
        assert_eq!(bob.line(), format!("[ann]: line {n}"));
    }
    let mut cat = b.login("cat");
    for n in 2..=4 {
        assert_eq!(cat.line(), format!("[ann]: line {n}"));
    }
    assert_eq!(ann.line(), "* cat joined #lobby");
    assert_eq!(bob.line(), "* cat joined #lobby");
    bob.send("from b");
    assert_eq!(bob.line(), "[bob]: from b");
    assert_eq!(ann.line(), "[bob]: from b");

    // A broker killed with SIGKILL: its successor reads the history from Redis.
    let old = a.broker();
    kill(old, libc::SIGKILL);
    assert_eq!(ann.line(), "* chat service restarting");
    assert_eq!(ann.line(), "* chat service is back; you are in #lobby");
    let mut dan = a.login("dan");
    for want in ["[ann]: line 3", "[ann]: line 4", "[bob]: from b"] {
        assert_eq!(dan.line(), want);
    }
    // ann kept her name across the restart, and both hosts still see her.
    wait_list(
        &mut bob,
        "* online (4): ann (#lobby), bob (#lobby), cat (#lobby), dan (#lobby)",
    );
}

/// ann and amy on host A, bob on host B, each having heard of the others.
struct Trio {
    a: Host,
    _b: Host,
    ann: Client,
    amy: Client,
    bob: Client,
}

impl Trio {
    fn start(url: &str) -> Trio {
        let a = Host::start(url, &[]);
        let b = Host::start(url, &[]);
        let mut bob = b.login("bob");
        let mut ann = a.login("ann");
        assert_eq!(bob.line(), "* ann joined #lobby");
        let amy = a.login("amy");
        assert_eq!(ann.line(), "* amy joined #lobby");
        assert_eq!(bob.line(), "* amy joined #lobby");
        Trio {
            a,
            _b: b,
            ann,
            amy,
            bob,
        }
    }

    /// All three read `line` next.
    fn all_read(&mut self, line: &str) {
        for c in [&mut self.ann, &mut self.amy, &mut self.bob] {
            assert_eq!(c.line(), line);
        }
    }

    /// With Redis away: everyone is told, and ann and amy still chat on host A.
    fn local_only(&mut self, said: &str) {
        self.all_read("* chat is local-only until the backend is back");
        self.ann.send(said);
        assert_eq!(self.ann.line(), format!("[ann]: {said}"));
        assert_eq!(self.amy.line(), format!("[ann]: {said}"));
        self.ann.send("/list all");
        assert_eq!(self.ann.line(), "* online (2): amy (#lobby), ann (#lobby)");
    }

    /// With Redis back: everyone is told, lines cross hosts again (bob never saw
    /// the local-only one), and both hosts list everyone.
    fn across_again(&mut self) {
        self.all_read("* chat is across hosts again");
        self.bob.send("and back");
        self.all_read("[bob]: and back");
        wait_list(
            &mut self.bob,
            "* online (3): amy (#lobby), ann (#lobby), bob (#lobby)",
        );
    }
}

#[test]
fn redis_killed_and_restarted_mid_chat() {
    let mut redis = Redis::start();
    let mut t = Trio::start(&redis.url());
    redis.kill();
    t.local_only("only here");
    redis.restart();
    t.across_again();
    assert!(t.a.fs.has_log("local-only"), "{}", t.a.fs.log_text());
}

#[test]
fn a_redis_that_stops_answering_is_timed_out_and_local_chat_goes_on() {
    let redis = Redis::start();
    let mut t = Trio::start(&redis.url());
    // Stopped, not gone: every host notices at its next refresh, by timeout.
    let pid = redis.child.id() as i32;
    kill(pid, libc::SIGSTOP);
    t.local_only("while stopped");
    kill(pid, libc::SIGCONT);
    t.across_again();
}

#[test]
fn a_crashed_hosts_users_vanish_within_the_expiry() {
    let redis = Redis::start();
    let a = Host::start(&redis.url(), &[]);
    let b = Host::start(&redis.url(), &[]);
    let mut bob = b.login("bob");
    let _ann = a.login("ann");
    assert_eq!(bob.line(), "* ann joined #lobby");
    bob.send("/list all");
    assert_eq!(bob.line(), "* online (2): ann (#lobby), bob (#lobby)");

    // The whole host dies at once: the broker is stopped first so that it cannot
    // clean up on the master's death, then everything is SIGKILLed.
    let broker = a.broker();
    let workers = a.fs.wait_children("chat worker", 1);
    kill(broker, libc::SIGSTOP);
    let crashed = Instant::now();
    kill(a.fs.pid, libc::SIGKILL);
    kill(broker, libc::SIGKILL);
    for w in workers {
        kill(w, libc::SIGKILL);
    }
    wait_list(&mut bob, "* online (1): bob (#lobby)");
    let took = crashed.elapsed();
    assert!(
        took < CLAIM_TTL + Duration::from_secs(3),
        "ann still listed {took:?} after her host crashed"
    );
    // The name is free again.
    let _ann = b.login("ann");
}

#[test]
fn an_unreachable_backend_stops_start_up_unless_optional() {
    let dir = TempDir::new("chat-noredis");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut fs = forkserve()
        .env("RUNTIME_DIRECTORY", &dir.0)
        .args(["chat", "-l", "tcp:127.0.0.1:0", "--backend", &url])
        .spawn();
    let st = fs.wait_exit();
    assert_eq!(st.code(), Some(69), "{}", fs.log_text());
    assert!(
        fs.log_text()
            .contains(&format!("chat: backend redis://127.0.0.1:{port}/0")),
        "{}",
        fs.log_text()
    );

    let mut bad = forkserve()
        .env("RUNTIME_DIRECTORY", &dir.0)
        .args(["chat", "-l", "tcp:127.0.0.1:0", "--backend", "http://x/"])
        .spawn();
    assert_eq!(bad.wait_exit().code(), Some(64), "{}", bad.log_text());

    // Optional: local-only with a warning, then across hosts once Redis is there.
    let a = Host::start(&url, &["--backend-optional"]);
    assert!(a.fs.has_log("starting local-only"), "{}", a.fs.log_text());
    let mut ann = a.login("ann");
    assert_eq!(ann.line(), "* chat is local-only until the backend is back");
    let mut amy = a.login("amy");
    assert_eq!(amy.line(), "* chat is local-only until the backend is back");
    assert_eq!(ann.line(), "* amy joined #lobby");
    ann.send("still works");
    assert_eq!(ann.line(), "[ann]: still works");
    assert_eq!(amy.line(), "[ann]: still works");

    let redis = Redis::start_on(port).expect("redis-server on the backend's port");
    assert_eq!(ann.line(), "* chat is across hosts again");
    let b = Host::start(&redis.url(), &[]);
    let mut bob = b.login("bob");
    assert_eq!(ann.line(), "* bob joined #lobby");
    bob.send("/list all");
    assert_eq!(
        bob.line(),
        "* online (3): amy (#lobby), ann (#lobby), bob (#lobby)"
    );
}

/// Fan-out figures for `bench/chat_redis.sh` (ignored: a benchmark, not a test):
/// one sender, `per_host` receivers on each host, p50/p99 of the time from the
/// sender's write to each receiver's read, then lines/s sustained.
fn fanout(hosts: &[&Host], per_host: usize, label: &str) {
    const ROUNDS: usize = 50;
    const BURST: usize = 2000;
    let mut sender = hosts[0].login("sender");
    let mut receivers = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        for i in 0..per_host {
            receivers.push(host.login(&format!("r{h}x{i}")));
        }
    }
    let n = receivers.len();
    // Everyone is in: the last receiver's arrival was announced to the sender.
    sender.expect(&format!(
        "* r{}x{} joined #lobby\n",
        hosts.len() - 1,
        per_host - 1
    ));
    let (lat, receivers) = fanout_latencies(&mut sender, receivers, ROUNDS);
    let p = |q: f64| quantile(&lat, q);
    // Sustained: a burst of lines written as fast as the sender can, until every
    // receiver has read the last one.
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let handles: Vec<_> = receivers
        .into_iter()
        .map(|mut c| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                c.expect(&format!("[sender]: burst {}\n", BURST - 1));
                tx.send(Instant::now()).unwrap();
            })
        })
        .collect();
    let t0 = Instant::now();
    let Conn::Tcp(s) = &sender.conn else {
        panic!("the sender is on TCP")
    };
    let mut out = s
        .try_clone()
        .expect("a second handle on the sender's socket");
    let writer = std::thread::spawn(move || {
        for i in 0..BURST {
            out.write_all(format!("burst {i}\n").as_bytes()).unwrap();
        }
    });
    sender.expect(&format!("[sender]: burst {}\n", BURST - 1));
    writer.join().unwrap();
    let last = (0..n).map(|_| rx.recv().unwrap()).max().expect("receivers");
    let took = last - t0;
    for h in handles {
        h.join().unwrap();
    }
    println!(
        "{label}: fan-out of one line to {n} clients: {} samples, p50 {:?}, p99 {:?}, max {:?}; \
         {BURST} lines to {n} clients in {took:?}: {:.0} lines/s ({:.0} deliveries/s)",
        lat.len(),
        p(0.5),
        p(0.99),
        lat[lat.len() - 1],
        BURST as f64 / took.as_secs_f64(),
        (BURST * n) as f64 / took.as_secs_f64(),
    );
}

#[test]
#[ignore]
fn fanout_figures_through_redis_and_local() {
    let args = [
        "--max-children",
        "300",
        "--rate",
        "100000",
        "--history",
        "10",
    ];
    let redis = Redis::start();
    {
        let a = Host::start(&redis.url(), &args);
        let b = Host::start(&redis.url(), &args);
        fanout(&[&a, &b], 100, "redis, 2 hosts");
    }
    let dir = TempDir::new("chat-local");
    let local = Host {
        fs: forkserve()
            .env("RUNTIME_DIRECTORY", &dir.0)
            .args(["chat", "-l", "tcp:127.0.0.1:0"])
            .args(args)
            .start(),
        _dir: dir,
    };
    fanout(&[&local], 200, "local broker, 1 host");
}
