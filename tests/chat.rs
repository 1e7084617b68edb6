//! The chat service through the real binary: several clients over TCP and Unix at
//! once, the broker and worker processes in /proc, broker restarts, and load.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::chat_client::*;
use common::*;

/// A chat server on a TCP port and a Unix socket, with its IPC directory in `dir`.
struct Chat {
    fs: Forkserve,
    dir: TempDir,
}

impl Chat {
    fn start(args: &[&str]) -> Chat {
        let dir = TempDir::new("chat");
        let fs = forkserve()
            .env("RUNTIME_DIRECTORY", &dir.0)
            .args(["chat", "-l", "tcp:127.0.0.1:0", "-l"])
            .arg(format!("unix:{}", dir.path("chat.sock").display()))
            .args(args)
            .listeners(2)
            .start();
        Chat { fs, dir }
    }
    fn tcp(&self) -> String {
        self.fs.addr_of("chat", "tcp")
    }
    fn unix(&self) -> String {
        self.fs.addr_of("chat", "unix")
    }
    /// The broker: the master's child titled as one.
    fn broker(&self) -> i32 {
        self.fs.wait_children("chat broker", 1)[0]
    }
    fn wait_broker_title(&self, title: &str) {
        wait_until(&format!("broker title {title:?}"), || {
            self.fs
                .children()
                .into_iter()
                .find(|&p| cmdline(p) == title)
        });
    }
}

/// Inodes of the sockets a process holds.
fn socket_inodes(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                out.push(inode.to_string());
            }
        }
    }
    out
}

/// Inodes of every TCP socket on the machine.
fn tcp_inodes() -> Vec<String> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            if let Some(inode) = line.split_whitespace().nth(9) {
                out.push(inode.to_string());
            }
        }
    }
    out
}

/// The worker serving the client whose local port or pid is unknown: the master's
/// chat workers, by title.
fn workers(chat: &Chat, n: usize) -> Vec<i32> {
    chat.fs.wait_children("forkserve: chat worker", n)
}

#[test]
fn broadcast_whisper_lists_and_processes_over_tcp_and_unix() {
    let chat = Chat::start(&[]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    let mut bob = Client::login(&chat.unix(), "bob");
    assert_eq!(ann.line(), "* bob joined #lobby");
    let mut cat = Client::login(&chat.tcp(), "cat");
    assert_eq!(ann.line(), "* cat joined #lobby");
    assert_eq!(bob.line(), "* cat joined #lobby");

    // Processes: the master's children are three workers and one broker.
    let ws = workers(&chat, 3);
    let broker = chat.broker();
    let mut all = ws.clone();
    all.push(broker);
    all.sort();
    assert_eq!(chat.fs.children(), all);
    for w in &ws {
        assert_eq!(parent_of(*w), Some(chat.fs.pid));
        assert_eq!(comm(*w), "chat worker");
    }
    assert_eq!(parent_of(broker), Some(chat.fs.pid));
    assert_eq!(comm(broker), "chat broker");
    chat.wait_broker_title("forkserve: chat broker [3 users, 1 rooms]");
    // The broker holds its IPC listener and one IPC connection per worker: no
    // client socket (none of its sockets is TCP).
    let socks = socket_inodes(broker);
    assert_eq!(socks.len(), 1 + 3, "{socks:?}");
    let tcp = tcp_inodes();
    assert!(
        socks.iter().all(|s| !tcp.contains(s)),
        "the broker holds a TCP socket"
    );
    // Each worker's peer is in its title: two TCP clients, one Unix client.
    let titles: Vec<String> = ws.iter().map(|&w| cmdline(w)).collect();
    assert_eq!(
        titles.iter().filter(|t| t.contains("127.0.0.1:")).count(),
        2,
        "{titles:?}"
    );

    // Broadcast: everyone in the room, the sender too.
    ann.send("hello everyone");
    for c in [&mut ann, &mut bob, &mut cat] {
        assert_eq!(c.line(), "[ann]: hello everyone");
    }

    // Whisper: target and sender see it, the third user does not.
    ann.send("/whisper bob meet at 5");
    assert_eq!(bob.line(), "[private from ann]: meet at 5");
    assert_eq!(ann.line(), "[private to bob]: meet at 5");
    bob.send("/w ann ok");
    assert_eq!(ann.line(), "[private from bob]: ok");
    assert_eq!(bob.line(), "[private to ann]: ok");
    ann.send("/w nobody hi");
    assert_eq!(ann.line(), "error: no user nobody");
    ann.send("marker");
    assert_eq!(cat.line(), "[ann]: marker", "cat saw something else first");
    assert_eq!(ann.line(), "[ann]: marker");
    assert_eq!(bob.line(), "[ann]: marker");

    cat.send("/list");
    assert_eq!(cat.line(), "* users in #lobby (3): ann, bob, cat");
    cat.send("/list all");
    assert_eq!(
        cat.line(),
        "* online (3): ann (#lobby), bob (#lobby), cat (#lobby)"
    );
    cat.send("/rooms");
    assert_eq!(cat.line(), "* rooms (1): #lobby (3)");
    cat.send("/help");
    let help = cat.expect("quit, /quit");
    for cmd in [
        "/list", "/whisper", "/join", "/leave", "/rooms", "/kick", "/help",
    ] {
        assert!(help.contains(cmd), "{help}");
    }
    cat.line();

    // quit: the others are told, the worker goes away.
    cat.send("quit");
    assert_eq!(cat.line(), "Bye.");
    assert_eq!(cat.rest(), "");
    assert_eq!(ann.line(), "* cat left the chat");
    assert_eq!(bob.line(), "* cat left the chat");
    workers(&chat, 2);
    chat.wait_broker_title("forkserve: chat broker [2 users, 1 rooms]");
    bob.send("/quit");
    assert_eq!(bob.line(), "Bye.");
    assert_eq!(ann.line(), "* bob left the chat");
}

#[test]
fn chat_works_under_the_thread_and_prefork_models_too() {
    for model in ["thread", "prefork"] {
        let chat = Chat::start(&["--model", model]);
        let mut ann = Client::login(&chat.tcp(), "ann");
        let mut bob = Client::login(&chat.unix(), "bob");
        assert_eq!(ann.line(), "* bob joined #lobby", "{model}");
        bob.send("hi");
        assert_eq!(ann.line(), "[bob]: hi", "{model}");
        assert_eq!(bob.line(), "[bob]: hi", "{model}");
        chat.broker();
    }
}

#[test]
fn a_silent_client_is_closed_after_the_idle_timeout() {
    let chat = Chat::start(&["--idle-timeout", "0.3"]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    assert_eq!(ann.rest(), "error: idle timeout, disconnecting\n");
}

#[test]
fn socat_as_a_client() {
    // No history, so the second login does not replay the first one's line.
    let chat = Chat::start(&["--history", "0"]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    for target in [
        format!("TCP:{}", chat.tcp().strip_prefix("tcp:").unwrap()),
        format!(
            "UNIX-CONNECT:{}",
            chat.unix().strip_prefix("unix:").unwrap()
        ),
    ] {
        let mut child = std::process::Command::new("socat")
            .args(["-t", "10", "-", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("socat (apt install socat)");
        // Everything at once, then end of input: the worker still answers it all.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"zed\r\nhi from socat\r\n/list\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Username: Welcome, zed! Type /help for commands, quit to leave.\n\
             [zed]: hi from socat\n\
             * users in #lobby (2): ann, zed\n"
        );
        assert_eq!(ann.line(), "* zed joined #lobby");
        assert_eq!(ann.line(), "[zed]: hi from socat");
        assert_eq!(ann.line(), "* zed left the chat");
    }
}

#[test]
fn rooms_are_isolated_keep_history_and_have_limits() {
    let chat = Chat::start(&["--room-limit", "2", "--history", "3"]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    ann.send("lobby one");
    ann.line();
    ann.send("lobby two");
    ann.line();
    // A newcomer gets the lobby's history after the welcome.
    let mut bob = Client::login(&chat.unix(), "bob");
    assert_eq!(bob.line(), "[ann]: lobby one");
    assert_eq!(bob.line(), "[ann]: lobby two");
    assert_eq!(ann.line(), "* bob joined #lobby");
    let mut cat = Client::login(&chat.tcp(), "cat");
    cat.expect("[ann]: lobby two\n");
    ann.line();
    bob.line();

    ann.send("/join dev");
    assert_eq!(ann.line(), "* you are now in #dev");
    assert_eq!(bob.line(), "* ann left #lobby");
    assert_eq!(cat.line(), "* ann left #lobby");
    bob.send("/join #dev");
    assert_eq!(bob.line(), "* you are now in #dev");
    assert_eq!(ann.line(), "* bob joined #dev");
    assert_eq!(cat.line(), "* bob left #lobby");
    chat.wait_broker_title("forkserve: chat broker [3 users, 2 rooms]");
    cat.send("/rooms");
    assert_eq!(cat.line(), "* rooms (2): #dev (2), #lobby (1)");

    // Room limit: #dev holds two.
    cat.send("/join dev");
    assert_eq!(cat.line(), "error: room #dev is full (2)");

    for i in 1..=4 {
        bob.send(&format!("dev {i}"));
        assert_eq!(ann.line(), format!("[bob]: dev {i}"));
        assert_eq!(bob.line(), format!("[bob]: dev {i}"));
    }
    // Rooms are isolated: cat in #lobby saw none of it.
    cat.send("still here");
    assert_eq!(cat.line(), "[cat]: still here");

    bob.send("/leave");
    assert_eq!(bob.line(), "* you are now in #lobby");
    assert_eq!(ann.line(), "* bob left #dev");
    assert_eq!(cat.line(), "* bob joined #lobby");
    // History on join: the last 3 messages of #dev.
    cat.send("/join dev");
    assert_eq!(cat.line(), "* you are now in #dev");
    assert_eq!(cat.line(), "[bob]: dev 2");
    assert_eq!(cat.line(), "[bob]: dev 3");
    assert_eq!(cat.line(), "[bob]: dev 4");
    assert_eq!(ann.line(), "* cat joined #dev");
    cat.send("/join dev");
    assert_eq!(cat.line(), "error: you are already in #dev");
    cat.send("/join bad!name");
    assert_eq!(
        cat.line(),
        "error: invalid room name bad!name (1-32 letters, digits, _ or -)"
    );
    cat.send("/list");
    assert_eq!(cat.line(), "* users in #dev (2): ann, cat");
    cat.send("/list all");
    assert_eq!(
        cat.line(),
        "* online (3): ann (#dev), bob (#lobby), cat (#dev)"
    );
}

#[test]
fn kick_by_an_admin_and_refusal_for_others() {
    let chat = Chat::start(&["--admins", "ann,root"]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    let mut bob = Client::login(&chat.unix(), "bob");
    ann.line();
    let mut cat = Client::login(&chat.tcp(), "cat");
    ann.line();
    bob.line();

    bob.send("/kick cat");
    assert_eq!(bob.line(), "error: not allowed");
    ann.send("/kick nobody");
    assert_eq!(ann.line(), "error: no user nobody");
    ann.send("/kick cat flooding");
    assert_eq!(cat.line(), "* you were kicked by ann: flooding");
    assert_eq!(cat.rest(), "", "the kicked client is disconnected");
    assert_eq!(ann.line(), "* cat was kicked by ann: flooding");
    assert_eq!(bob.line(), "* cat was kicked by ann: flooding");
    workers(&chat, 2);
    bob.send("/list all");
    assert_eq!(bob.line(), "* online (2): ann (#lobby), bob (#lobby)");
}

#[test]
fn passwords_from_a_users_file_and_lock_out() {
    let hash = chat_passwd(&[], "open sesame");
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let bob_line = chat_passwd(&["bob"], "hunter2");
    assert!(bob_line.starts_with("bob:$argon2id$"), "{bob_line}");
    let dir = TempDir::new("chat-users");
    let users = dir.path("users");
    std::fs::write(
        &users,
        format!("# chat users\nann:{hash}:admin\n{bob_line}\n"),
    )
    .unwrap();
    let chat = Chat::start(&["--users", users.to_str().unwrap()]);

    let mut ann = Client::connect(&chat.tcp());
    ann.expect("Username: ");
    ann.send("ann");
    ann.expect("Password: ");
    ann.send("open sesame");
    ann.expect("Welcome, ann!");
    ann.line();

    // Wrong password, unknown user, wrong again: locked out after three.
    let mut eve = Client::connect(&chat.unix());
    eve.expect("Username: ");
    eve.send("bob");
    eve.expect("Password: ");
    eve.send("guess");
    assert_eq!(eve.line(), "error: login incorrect");
    eve.expect("Username: ");
    eve.send("mallory");
    eve.expect("Password: ");
    eve.send("hunter2");
    assert_eq!(eve.line(), "error: login incorrect");
    eve.expect("Username: ");
    eve.send("bob");
    eve.expect("Password: ");
    eve.send("hunter3");
    assert_eq!(
        eve.line(),
        "error: login incorrect; too many failures, disconnecting"
    );
    assert_eq!(eve.rest(), "");

    // The right password works; admin rights come from the file.
    let mut bob = Client::connect(&chat.unix());
    bob.expect("Username: ");
    bob.send("bob");
    bob.expect("Password: ");
    bob.send("hunter2");
    bob.expect("Welcome, bob!");
    bob.line();
    assert_eq!(ann.line(), "* bob joined #lobby");
    bob.send("/kick ann");
    assert_eq!(bob.line(), "error: not allowed");
    ann.send("/kick bob");
    assert_eq!(bob.line(), "* you were kicked by ann");
}

#[test]
fn a_bad_users_file_stops_start_up_naming_the_line() {
    let dir = TempDir::new("chat-badusers");
    let users = dir.path("users");
    std::fs::write(&users, "ann:not-a-hash\n").unwrap();
    let mut fs = forkserve()
        .env("RUNTIME_DIRECTORY", &dir.0)
        .args(["chat", "-l", "tcp:127.0.0.1:0", "--users"])
        .arg(&users)
        .spawn();
    let st = fs.wait_exit();
    assert_eq!(st.code(), Some(78), "{}", fs.log_text());
    assert!(fs.log_text().contains("line 1"), "{}", fs.log_text());
}

#[test]
fn duplicate_and_invalid_names_get_the_prompt_again() {
    let chat = Chat::start(&[]);
    let _ann = Client::login(&chat.tcp(), "ann");
    let mut c = Client::connect(&chat.unix());
    c.expect("Username: ");
    c.send("ann");
    assert_eq!(c.line(), "error: name ann is taken");
    c.expect("Username: ");
    let too_long = "n".repeat(33);
    for (bad, why) in [
        ("x!", "'!' not allowed (1-32 letters, digits, _ - or .)"),
        (&too_long, "longer than 32 characters"),
        ("-ann", "must start with a letter or a digit"),
    ] {
        c.send(bad);
        assert_eq!(c.line(), format!("error: invalid name: {why}"), "{bad}");
        c.expect("Username: ");
    }
    let longest = "N".repeat(32);
    c.send(&longest);
    c.expect(&format!("Welcome, {longest}!"));
}

#[test]
fn bad_input_is_refused_and_the_connection_stays() {
    let chat = Chat::start(&[]);
    let mut ann = Client::login(&chat.tcp(), "ann");

    // Over 4 KiB: refused, connection stays. Exactly 4 KiB is fine.
    let mut long = vec![b'x'; 5000];
    long.push(b'\n');
    ann.send_raw(&long);
    assert_eq!(ann.line(), "error: line too long (max 4096 bytes), ignored");
    let max = "y".repeat(4096);
    ann.send(&max);
    assert_eq!(ann.line(), format!("[ann]: {max}"));

    // Invalid UTF-8.
    ann.send_raw(b"caf\xe9\n");
    assert_eq!(ann.line(), "error: invalid UTF-8, line ignored");

    // Control characters other than tab are stripped (CRLF too).
    ann.send_raw(b"a\x07b\tc\x1b[31md\r\n");
    assert_eq!(ann.line(), "[ann]: ab\tc[31md");

    // Unknown commands.
    ann.send("/dance now");
    assert_eq!(ann.line(), "error: unknown command /dance (try /help)");
    ann.send("/whisper bob");
    assert_eq!(ann.line(), "error: usage: /whisper USER TEXT");
}

#[test]
fn too_many_lines_a_second_get_a_warning_then_a_disconnect() {
    let chat = Chat::start(&["--rate", "5"]);
    let mut ann = Client::login(&chat.unix(), "ann");
    let mut burst = String::new();
    for i in 0..12 {
        burst.push_str(&format!("flood {i}\n"));
    }
    ann.send_raw(burst.as_bytes());
    let rest = ann.rest();
    // The user name counts too, unless the one-second window turned meanwhile: the
    // first 4 or 5 lines go through, the next is refused with a warning, and the one
    // after that ends the connection.
    let passed: Vec<&str> = rest
        .lines()
        .filter(|l| l.starts_with("[ann]: flood"))
        .collect();
    assert!(passed.len() == 4 || passed.len() == 5, "{rest}");
    let expected: String = (0..passed.len())
        .map(|i| format!("[ann]: flood {i}\n"))
        .collect();
    let warning = "warning: more than 5 lines a second; slow down or you will be disconnected\n";
    assert_eq!(
        rest,
        format!("{expected}{warning}error: more than 5 lines a second, disconnecting\n")
    );
}

#[test]
fn sigkill_on_the_broker_brings_a_new_one_and_chat_resumes() {
    let chat = Chat::start(&[]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    let mut bob = Client::login(&chat.unix(), "bob");
    ann.line();
    bob.send("/join dev");
    bob.line();
    ann.line();
    let old = chat.broker();
    chat.wait_broker_title("forkserve: chat broker [2 users, 2 rooms]");

    let killed = Instant::now();
    // SAFETY: kill(2) on the broker this test's server started.
    unsafe {
        libc::kill(old, libc::SIGKILL);
    }
    let new = wait_until("a new broker", || {
        chat.fs
            .children()
            .into_iter()
            .find(|&p| p != old && cmdline(p).starts_with("forkserve: chat broker"))
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2), "new broker after {took:?}");
    assert_eq!(parent_of(new), Some(chat.fs.pid));

    for c in [&mut ann, &mut bob] {
        assert_eq!(c.line(), "* chat service restarting");
    }
    assert_eq!(ann.line(), "* chat service is back; you are in #lobby");
    assert_eq!(bob.line(), "* chat service is back; you are in #dev");
    // Users and rooms were registered again without the clients doing anything.
    chat.wait_broker_title("forkserve: chat broker [2 users, 2 rooms]");
    ann.send("/list all");
    assert_eq!(ann.line(), "* online (2): ann (#lobby), bob (#dev)");
    ann.send("/join dev");
    assert_eq!(ann.line(), "* you are now in #dev");
    assert_eq!(bob.line(), "* ann joined #dev");
    ann.send("back again");
    assert_eq!(ann.line(), "[ann]: back again");
    assert_eq!(bob.line(), "[ann]: back again");
    // The same clients, the same workers.
    workers(&chat, 2);
}

#[test]
fn sigterm_on_the_broker_alone_also_recovers() {
    // SIGTERM makes the broker remove its socket file; the next one binds it again.
    let chat = Chat::start(&[]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    let mut bob = Client::login(&chat.unix(), "bob");
    ann.line();
    let old = chat.broker();
    // SAFETY: kill(2) on the broker this test's server started.
    unsafe {
        libc::kill(old, libc::SIGTERM);
    }
    for c in [&mut ann, &mut bob] {
        assert_eq!(c.line(), "* chat service restarting");
        assert_eq!(c.line(), "* chat service is back; you are in #lobby");
    }
    assert_ne!(chat.broker(), old);
    bob.send("still there?");
    assert_eq!(ann.line(), "[bob]: still there?");
    assert_eq!(bob.line(), "[bob]: still there?");
    chat.fs.wait_log("socket file was gone; bound");
}

#[test]
fn a_worker_killed_mid_chat_leaves_the_list_and_its_room_is_told() {
    let chat = Chat::start(&[]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    let before = workers(&chat, 1);
    let _bob = Client::login(&chat.unix(), "bob");
    ann.line();
    let bob_worker = wait_until("bob's worker", || {
        workers(&chat, 2).into_iter().find(|w| !before.contains(w))
    });
    ann.send("/list");
    assert_eq!(ann.line(), "* users in #lobby (2): ann, bob");
    // SAFETY: kill(2) on a worker this test's server started.
    unsafe {
        libc::kill(bob_worker, libc::SIGKILL);
    }
    assert_eq!(ann.line(), "* bob left the chat");
    ann.send("/list");
    assert_eq!(ann.line(), "* users in #lobby (1): ann");
    workers(&chat, 1);
}

#[test]
fn a_stopped_worker_is_dropped_and_told_why() {
    let chat = Chat::start(&["--rate", "100000"]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    let before = workers(&chat, 1);
    let mut bob = Client::login(&chat.unix(), "bob");
    ann.line();
    let bob_worker = wait_until("bob's worker", || {
        workers(&chat, 2).into_iter().find(|w| !before.contains(w))
    });
    // SAFETY: kill(2) on a worker this test's server started.
    unsafe {
        libc::kill(bob_worker, libc::SIGSTOP);
    }
    // ann floods the room; the broker queues for bob until the bound, then drops him.
    let big = "z".repeat(4000);
    let mut sent = 0;
    while !chat
        .fs
        .children()
        .iter()
        .any(|&p| cmdline(p) == "forkserve: chat broker [1 users, 1 rooms]")
    {
        assert!(sent < 2000, "bob was never dropped");
        ann.send(&big);
        ann.line();
        sent += 1;
    }
    assert_eq!(ann.line(), "* bob was dropped (too far behind)");
    unsafe {
        libc::kill(bob_worker, libc::SIGCONT);
    }
    let got = bob.rest();
    assert!(
        got.ends_with(
            "error: disconnected: you fell too far behind (more than 256 KiB of chat unread)\n"
        ),
        "{}",
        &got[got.len().saturating_sub(300)..]
    );
}

#[test]
fn the_ipc_socket_is_private_and_removed_on_shutdown() {
    use std::os::unix::fs::PermissionsExt;
    let mut chat = Chat::start(&[]);
    let ipc = chat.dir.path(&format!("chat-ipc.{}", chat.fs.pid));
    let mode = std::fs::metadata(&ipc).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(ipc.join("broker.sock").exists());
    let _ann = Client::login(&chat.tcp(), "ann");
    chat.fs.signal(libc::SIGTERM);
    // The client is still connected: the master drains, then ends the worker.
    drop(_ann);
    let st = chat.fs.wait_exit();
    assert!(st.success(), "{st:?}\n{}", chat.fs.log_text());
    assert!(!ipc.exists(), "{} left behind", ipc.display());
}

#[test]
fn two_hundred_clients_in_one_room_get_every_message_in_order() {
    const CLIENTS: usize = 200;
    const EACH: usize = 3;
    let chat = Chat::start(&["--max-children", "300"]);
    let (tcp, unix) = (chat.tcp(), chat.unix());
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::login(if i % 2 == 0 { &tcp } else { &unix }, &format!("c{i}")))
        .collect();
    chat.wait_broker_title(&format!(
        "forkserve: chat broker [{CLIENTS} users, 1 rooms]"
    ));
    let handles: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                for k in 0..EACH {
                    c.send(&format!("m {k}"));
                }
                // Every client's messages, each sender's in order.
                let mut next: HashMap<String, usize> = HashMap::new();
                let mut got = 0;
                while got < CLIENTS * EACH {
                    let l = c.line();
                    let Some(rest) = l.strip_prefix("[c") else {
                        continue;
                    };
                    let (who, msg) = rest.split_once("]: m ").expect("a chat line");
                    let k: usize = msg.parse().unwrap();
                    let n = next.entry(who.to_string()).or_insert(0);
                    assert_eq!(k, *n, "client c{i}: from c{who} got m {k}, expected m {n}");
                    *n += 1;
                    got += 1;
                }
                assert_eq!(next.len(), CLIENTS);
                c
            })
        })
        .collect();
    let clients: Vec<Client> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(clients.len(), CLIENTS);
    assert_eq!(workers(&chat, CLIENTS).len(), CLIENTS);
}

/// Fan-out latency and broker memory, for the report: not a pass/fail test.
/// `cargo test --release --test chat -- --ignored --nocapture fanout_figures`
#[test]
#[ignore]
fn fanout_figures() {
    const RECEIVERS: usize = 100;
    const ROUNDS: usize = 50;
    let chat = Chat::start(&["--max-children", "300", "--rate", "1000"]);
    let tcp = chat.tcp();
    let mut sender = Client::login(&tcp, "sender");
    let receivers: Vec<Client> = (0..RECEIVERS)
        .map(|i| Client::login(&tcp, &format!("r{i}")))
        .collect();
    let (lat, mut clients) = fanout_latencies(&mut sender, receivers, ROUNDS);
    let p = |q: f64| quantile(&lat, q);
    println!(
        "fan-out of one line to {RECEIVERS} clients: {} samples, p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
    let broker = chat.broker();
    let rss101 = status(broker).get("VmRSS").cloned().unwrap_or_default();
    clients.extend((RECEIVERS + 1..200).map(|i| Client::login(&tcp, &format!("r{i}"))));
    chat.wait_broker_title("forkserve: chat broker [200 users, 1 rooms]");
    // Some traffic, so the queues have been used.
    sender.send("to all 200");
    for c in clients.iter_mut() {
        c.expect("[sender]: to all 200\n");
    }
    let rss = status(broker).get("VmRSS").cloned().unwrap_or_default();
    println!("broker VmRSS: {rss101} with 101 clients, {rss} with 200 clients");
}

#[test]
fn nc_clients_without_newlines_chat_beside_line_clients() {
    let chat = Chat::start(&[]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    // nc sends each piece as typed, without a newline (like the reference's
    // clients, whose every send() is one message): a pause ends the line.
    let mut bob = Nc::connect(&chat.tcp());
    bob.expect("Username: ");
    bob.send(b"bob");
    bob.expect("Welcome, bob! Type /help for commands, quit to leave.\n");
    assert_eq!(ann.line(), "* bob joined #lobby");
    bob.send(b"hola");
    assert_eq!(ann.line(), "[bob]: hola");
    bob.expect("[bob]: hola\n");
    let mut cat = Nc::connect(&chat.unix());
    cat.expect("Username: ");
    cat.send("Ñandú".as_bytes());
    cat.expect("Welcome, Ñandú!");
    assert_eq!(ann.line(), "* Ñandú joined #lobby");
    bob.send(b"/whisper \xc3\xb1and\xc3\xba psst");
    cat.expect("[private from bob]: psst\n");
    // Several lines in one packet stay several messages.
    ann.send_raw(b"uno\ndos\ntres\n");
    for word in ["uno", "dos", "tres"] {
        assert_eq!(ann.line(), format!("[ann]: {word}"));
        bob.expect(&format!("[ann]: {word}\n"));
    }
    // A command without a newline, too.
    cat.send(b"quit");
    cat.expect("Bye.\n");
    assert_eq!(ann.line(), "* Ñandú left the chat");
}

#[test]
fn unicode_names_whisper_kick_and_compare_without_case() {
    let chat = Chat::start(&["--admins", "ÑANDÚ"]);
    let mut jose = Client::login(&chat.tcp(), "José");
    let mut nandu = Client::login(&chat.unix(), "Ñandú");
    assert_eq!(jose.line(), "* Ñandú joined #lobby");
    // A space becomes `_`: names stay one word for /whisper and /kick.
    let mut juan = Client::connect(&chat.tcp());
    juan.expect("Username: ");
    juan.send("Juan Pérez");
    juan.expect("Welcome, Juan_Pérez! Type /help for commands, quit to leave.\n");
    assert_eq!(jose.line(), "* Juan_Pérez joined #lobby");
    assert_eq!(nandu.line(), "* Juan_Pérez joined #lobby");

    jose.send("/whisper ñandú hola");
    assert_eq!(nandu.line(), "[private from José]: hola");
    assert_eq!(jose.line(), "[private to Ñandú]: hola");
    // NFD spelling and another case reach the same user.
    nandu.send("/w JOSE\u{301} qué tal");
    assert_eq!(jose.line(), "[private from Ñandú]: qué tal");
    assert_eq!(nandu.line(), "[private to José]: qué tal");

    // One name, two spellings: the second is taken.
    let mut other = Client::connect(&chat.tcp());
    other.expect("Username: ");
    other.send("jose\u{301}");
    assert_eq!(other.line(), "error: name josé is taken");
    other.expect("Username: ");
    // A name spoofed with a right-to-left override, a Cyrillic lookalike, a
    // fullwidth one: refused, each saying why.
    other.send("ann\u{202E}nimda");
    assert_eq!(
        other.line(),
        "error: invalid name: invisible, control, format or bidirectional character U+202E not allowed"
    );
    other.expect("Username: ");
    other.send("p\u{430}co");
    assert_eq!(
        other.line(),
        "error: invalid name: mixes letters of different scripts"
    );
    other.expect("Username: ");
    other.send("ｊｏｓé");
    assert!(other.line().contains("styled or fullwidth"));
    other.expect("Username: ");

    // --admins ÑANDÚ names Ñandú: /kick works with an accented, lower-cased name.
    nandu.send("/kick juan_pérez bye");
    assert_eq!(juan.line(), "* you were kicked by Ñandú: bye");
    assert_eq!(juan.rest(), "");
    assert_eq!(jose.line(), "* Juan_Pérez was kicked by Ñandú: bye");
    jose.send("/list all");
    assert_eq!(jose.line(), "* online (2): José (#lobby), Ñandú (#lobby)");
}

#[test]
fn commands_ignore_case_like_the_reference() {
    let chat = Chat::start(&[]);
    let mut ann = Client::login(&chat.tcp(), "ann");
    ann.send("/LIST");
    assert_eq!(ann.line(), "* users in #lobby (1): ann");
    ann.send("/List ALL");
    assert_eq!(ann.line(), "* online (1): ann (#lobby)");
    ann.send("/JOIN dev");
    assert_eq!(ann.line(), "* you are now in #dev");
    ann.send("/Leave");
    assert_eq!(ann.line(), "* you are now in #lobby");
    let mut bob = Client::login(&chat.unix(), "bob");
    assert_eq!(ann.line(), "* bob joined #lobby");
    bob.send("QUIT");
    assert_eq!(bob.line(), "Bye.");
    assert_eq!(bob.rest(), "");
    assert_eq!(ann.line(), "* bob left the chat", "QUIT is not broadcast");
    let mut cat = Client::connect(&chat.tcp());
    cat.expect("Username: ");
    cat.send("Quit");
    assert_eq!(cat.line(), "Bye.");
    assert_eq!(cat.rest(), "");
}

#[test]
fn lang_es_speaks_the_reference_spanish() {
    let chat = Chat::start(&["--lang", "es"]);
    let login = |addr: &str, name: &str| {
        let mut c = Client::connect(addr);
        c.expect("Ingresa tu nombre de usuario: ");
        c.send(name);
        c.expect(&format!(
            "Bienvenido al chat, {name}! Escribe 'quit' para salir, /help para ver los comandos.\n"
        ));
        c
    };
    let mut jose = login(&chat.tcp(), "José");
    let mut nandu = login(&chat.unix(), "Ñandú");
    assert_eq!(jose.line(), "* Ñandú se unió al chat (#lobby)");
    jose.send("/whisper ñandú hola");
    assert_eq!(nandu.line(), "[PRIVADO de José]: hola");
    assert_eq!(jose.line(), "[PRIVADO para Ñandú]: hola");
    jose.send("/whisper nadie hola");
    assert_eq!(jose.line(), "Usuario 'nadie' no encontrado.");
    jose.send("/whisper");
    assert_eq!(jose.line(), "Uso: /whisper <usuario> <mensaje>");
    jose.send("/list all");
    assert_eq!(
        jose.line(),
        "Usuarios conectados (2): José (#lobby), Ñandú (#lobby)"
    );
    jose.send("/help");
    assert_eq!(jose.line(), "comandos:");
    jose.expect("  quit, /quit              salir\n");
    let mut spoof = Client::connect(&chat.tcp());
    spoof.expect("Ingresa tu nombre de usuario: ");
    spoof.send("ann\u{202E}nimda");
    assert_eq!(
        spoof.line(),
        "error: nombre no válido: carácter invisible, de control, de formato o bidireccional U+202E no permitido"
    );
    spoof.expect("Ingresa tu nombre de usuario: ");
    nandu.send("QUIT");
    assert_eq!(nandu.line(), "¡Adiós!");
    assert_eq!(jose.line(), "* Ñandú abandonó el chat");
}

#[test]
fn clients_are_told_when_the_server_starts_draining() {
    for (model, lang, notice) in [
        ("fork", "en", "* server shutting down\n"),
        ("thread", "es", "* el servidor se está apagando\n"),
    ] {
        let mut chat = Chat::start(&["--model", model, "--lang", lang, "--drain-timeout", "30"]);
        let mut ann = Client::connect(&chat.tcp());
        ann.expect(": ");
        ann.send("ann");
        ann.expect("\n");
        chat.broker();
        chat.fs.signal(libc::SIGTERM);
        ann.expect(notice);
        // Draining: the connection is still served until the client leaves.
        ann.send("quit");
        ann.rest();
        assert_eq!(chat.fs.wait_exit().code(), Some(0), "{model}");
    }
}
