//! Faults and abuse the core must hold under: signals sent to workers, slow clients
//! from one source, fork failures, descriptor exhaustion. Each test would have
//! caught the failure it is named after (issue 12).

mod common;

use std::io::{Read, Write};

use common::*;

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process the test's own server started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Starts echo on TCP port 0 with `extra` options.
fn echo(extra: &[&str]) -> Forkserve {
    forkserve()
        .args(["echo", "-l", "tcp:127.0.0.1:0"])
        .args(extra)
        .start()
}

/// A connection that has had one line echoed: its worker is up and reading.
fn live_connection(fs: &Forkserve) -> (Conn, i32) {
    let mut c = Conn::connect(fs.addr(0));
    c.write_all(b"hello\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("HELLO"));
    let worker = fs.wait_children("echo worker", 1)[0];
    (c, worker)
}

#[test]
fn a_sigsegv_sent_to_a_worker_is_logged_as_sigsegv() {
    let fs = echo(&[]);
    let (mut c, worker) = live_connection(&fs);
    kill(worker, libc::SIGSEGV);
    let line = fs.wait_log(&format!("worker {worker} "));
    assert!(line.contains("killed by SIGSEGV"), "{line}");
    assert_eq!(c.read_line(), None, "the client sees the connection end");
    assert!(!fs.log_text().contains("Interrupted system call"));
}

#[test]
fn a_read_interrupted_by_stop_and_continue_is_retried() {
    // With a receive timeout (--idle-timeout), Linux ends a read stopped by SIGSTOP
    // with EINTR when SIGCONT arrives: the worker must read again, not fail.
    let fs = echo(&["--idle-timeout", "60"]);
    let (mut c, worker) = live_connection(&fs);
    wait_until("the worker to sleep in read", || {
        (state(worker) == Some('S')).then_some(())
    });
    kill(worker, libc::SIGSTOP);
    wait_until("the worker to stop", || {
        (state(worker) == Some('T')).then_some(())
    });
    kill(worker, libc::SIGCONT);
    wait_until("the worker to run again", || {
        (state(worker) != Some('T')).then_some(())
    });
    c.write_all(b"again\n").unwrap();
    assert_eq!(c.read_line().as_deref(), Some("AGAIN"));
    c.shutdown_write();
    assert_eq!(c.read_line(), None);
    assert!(!fs.log_text().contains("failed"), "{}", fs.log_text());
}

/// Sets a resource limit in the server before it runs (as `prlimit` would).
fn limit(b: &mut Builder, resource: libc::__rlimit_resource_t, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit(2) is async-signal-safe; the closure touches nothing else.
    unsafe {
        b.command().pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the 12th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn the_chat_broker_out_of_descriptors_backs_off_instead_of_spinning() {
    let dir = TempDir::new("emfile");
    let mut b = forkserve().env("RUNTIME_DIRECTORY", &dir.0).args([
        "chat",
        "-l",
        "tcp:127.0.0.1:0",
        "--max-children",
        "100",
    ]);
    limit(&mut b, libc::RLIMIT_NOFILE, 32);
    let fs = b.start();
    let broker = fs.wait_children("chat broker", 1)[0];
    // Each client's worker connects to the broker: 40 of them are more than 32
    // descriptors, so the broker's accept fails with EMFILE while more wait.
    let mut clients: Vec<Conn> = Vec::new();
    for _ in 0..40 {
        clients.push(Conn::connect(fs.addr(0)));
    }
    fs.wait_log("Too many open files");
    let (t0, c0) = (std::time::Instant::now(), cpu_ticks(broker));
    // A measuring window, not a synchronisation.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (ticks, secs) = (cpu_ticks(broker) - c0, t0.elapsed().as_secs_f64());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = ticks as f64 / hz / secs;
    println!("broker CPU under EMFILE: {:.1}% of one core", share * 100.0);
    assert!(share < 0.2, "the broker spins: {:.0}% CPU", share * 100.0);
    let lines = fs.log_text().matches("Too many open files").count();
    assert!(lines <= 5, "{lines} accept error lines in about 2 s");
    // Descriptors come back as clients leave: a new client then logs in.
    drop(clients);
    let mut c = Conn::connect(fs.addr(0));
    let mut prompt = [0u8; 10];
    c.read_exact(&mut prompt).unwrap();
    assert_eq!(&prompt, b"Username: ");
    c.write_all(b"zed\n").unwrap();
    let welcome = c.read_line().unwrap();
    assert!(welcome.starts_with("Welcome, zed!"), "{welcome}");
}

#[test]
fn a_connection_accepted_while_fork_fails_waits_and_is_served() {
    if !root_or_skip("a_connection_accepted_while_fork_fails_waits_and_is_served") {
        return;
    }
    // RLIMIT_NPROC counts the processes of the server's user (root is exempt): a
    // fresh user, the master and two workers, so a third fork fails with EAGAIN.
    let user = TestUser::create();
    let mut b = forkserve().args(["echo", "-l", "tcp:127.0.0.1:0", "--user", &user.name]);
    limit(&mut b, libc::RLIMIT_NPROC, 3);
    let fs = b.start();
    let mut held: Vec<Conn> = (0..2).map(|_| Conn::connect(fs.addr(0))).collect();
    for c in &mut held {
        c.write_all(b"hold\n").unwrap();
        assert_eq!(c.read_line().as_deref(), Some("HOLD"));
    }
    let mut third = Conn::connect(fs.addr(0));
    third.write_all(b"third\n").unwrap();
    fs.wait_log("fork failed");
    // A process ends: the waiting connection gets one and is served.
    held.pop();
    assert_eq!(third.read_line().as_deref(), Some("THIRD"));
    third.shutdown_write();
    assert_eq!(third.read_line(), None);
    assert!(!fs.log_text().contains("closing"), "{}", fs.log_text());
    drop(fs);
    drop(user);
}

/// A TCP connection to `addr` from the local address `from` (bound before connect).
fn connect_from(from: &str, addr: &str) -> std::net::TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let target: std::net::SocketAddrV4 = addr.trim_start_matches("tcp:").parse().unwrap();
    let local: std::net::SocketAddrV4 = format!("{from}:0").parse().unwrap();
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(local),
    )
    .unwrap();
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(target),
    )
    .unwrap();
    let s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

#[test]
fn slow_clients_from_one_source_leave_room_for_another_source() {
    let fs = echo(&[]);
    let mut slow = slow_source_then_another(&fs, || fs.wait_children("echo worker", 30).len());
    // The source's connections past its share were held, not reset: once ten of
    // its served connections end, the ten held ones are served, in full.
    fs.wait_log(" waits: 30 already open from 127.0.0.1");
    assert!(!fs.has_log("refused"), "{}", fs.log_text());
    let held = slow.split_off(30);
    drop(slow);
    for mut c in held {
        c.write_all(b"z\n").unwrap();
        let mut r = [0u8; 3];
        c.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"XZ\n");
    }
}

#[test]
fn slow_clients_under_the_thread_model_leave_room_too() {
    let fs = echo(&["--model", "thread"]);
    let server = fs.wait_children("echo server", 1)[0];
    // The server process's threads: the main one and one per connection.
    let threads = || {
        status(server)["Threads"]
            .parse::<usize>()
            .unwrap()
            .saturating_sub(1)
    };
    slow_source_then_another(&fs, || {
        wait_until("30 connection threads", || (threads() == 30).then_some(30))
    });
    fs.wait_log("refused 127.0.0.1");
}

/// Default settings: 40 slots. One source opens 40 connections and trickles a
/// byte into each, never a whole line (a slowloris): its silence never lasts long
/// enough for any idle timeout. The last quarter of the slots is kept for other
/// sources, so 30 are served (`served` waits for them) and the rest wait (fork
/// model) or are refused (thread model). Another source is then served at once.
/// Returns the slow source's connections, in the order they were opened.
fn slow_source_then_another(
    fs: &Forkserve,
    served: impl Fn() -> usize,
) -> Vec<std::net::TcpStream> {
    let mut slow: Vec<std::net::TcpStream> = (0..40)
        .map(|_| connect_from("127.0.0.1", fs.addr(0)))
        .collect();
    for s in &mut slow {
        s.write_all(b"x").unwrap();
    }
    assert_eq!(served(), 30);
    fs.wait_log("fair share: the last 10 of 40 slots are kept for other sources");
    let mut other = connect_from("127.0.0.2", fs.addr(0));
    other.write_all(b"served\n").unwrap();
    let mut reply = [0u8; 7];
    other.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"SERVED\n");
    // The slow source's own connections still work.
    slow[0].write_all(b"y\n").unwrap();
    let mut r = [0u8; 3];
    slow[0].read_exact(&mut r).unwrap();
    assert_eq!(&r, b"XY\n");
    slow
}

/// Reads from a chat connection until `until` has arrived; returns all of it.
fn chat_expect(c: &mut impl Read, until: &str) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_stopped_broker_is_noticed_told_bounded_and_recovered_from() {
    let dir = TempDir::new("stall");
    let fs = forkserve()
        .env("RUNTIME_DIRECTORY", &dir.0)
        .args(["chat", "-l", "tcp:127.0.0.1:0", "--rate", "100000"])
        .start();
    let mut ann = connect_from("127.0.0.1", fs.addr(0));
    chat_expect(&mut ann, "Username: ");
    ann.write_all(b"ann\n").unwrap();
    chat_expect(&mut ann, "Welcome, ann!");
    let broker = fs.wait_children("chat broker", 1)[0];
    kill(broker, libc::SIGSTOP);
    wait_until("the broker to stop", || {
        (state(broker) == Some('T')).then_some(())
    });
    let stopped = std::time::Instant::now();
    ann.write_all(b"while it sleeps\n").unwrap();
    chat_expect(&mut ann, "* chat service is not answering");
    println!(
        "stall noticed after {:.1}s",
        stopped.elapsed().as_secs_f64()
    );
    // The worker's queue towards the broker is bounded: a flood of lines is
    // refused once it is full, instead of growing without end. (Whispers to no
    // one: once the broker wakes, its answers to them are short.)
    let line = format!("/w nobody {}\n", "z".repeat(4000));
    let writer = {
        let mut w = ann.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..300 {
                if w.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        })
    };
    chat_expect(
        &mut ann,
        "error: the chat service is not answering; line not sent",
    );
    writer.join().unwrap();
    kill(broker, libc::SIGCONT);
    chat_expect(&mut ann, "* chat service is answering again");
    // The chat goes on.
    let mut bob = Conn::connect(fs.addr(0));
    chat_expect(&mut bob, "Username: ");
    bob.write_all(b"bob\n").unwrap();
    chat_expect(&mut bob, "Welcome, bob!");
    bob.write_all(b"hi ann\n").unwrap();
    chat_expect(&mut ann, "[bob]: hi ann");
    fs.wait_log("the broker answers again");
}
