//! A probe for the worker sandbox: a server whose handler tries what a client asks
//! and says what happened, under the policy a service with no file access but one
//! readable directory would declare. The sandbox tests use it; by hand:
//!
//! cargo run --example sandbox_probe -- tcp:127.0.0.1:7000 /tmp [--unix] [--no-sandbox] [--seccomp]
//! then `nc 127.0.0.1 7000` and type `open /etc/passwd`, `open /tmp/x`,
//! `tcp 127.0.0.1:22`, `unix /run/x.sock`, `abstract NAME`. A forbidden file or TCP
//! connection is refused by Landlock (the reply says so); with `--seccomp` a
//! forbidden socket kills the worker (SIGSYS, logged by the master). With `--unix`
//! the policy also allows
//! Unix sockets, as the chat worker's does: pathname ones connect, abstract ones
//! outside the sandbox are refused (Landlock scope).

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};

use forkserve::{Connection, Sandbox, Server, Service, StreamHandler};

struct Probe;

fn attempt(what: &str, arg: &str) -> String {
    let res = match what {
        "open" => std::fs::read(arg).map(|b| format!("{} bytes", b.len())),
        "tcp" => TcpStream::connect(arg).map(|_| "connected".to_string()),
        "unix" => UnixStream::connect(arg).map(|_| "connected".to_string()),
        "abstract" => SocketAddr::from_abstract_name(arg)
            .and_then(|a| UnixStream::connect_addr(&a))
            .map(|_| "connected".to_string()),
        _ => return format!("unknown probe '{what}' (open, tcp, unix, abstract)"),
    };
    match res {
        Ok(r) => format!("{what} {arg}: ok, {r}"),
        Err(e) => format!("{what} {arg}: denied, {e}"),
    }
}

impl StreamHandler for Probe {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        let reader = BufReader::new(conn.stream().try_clone()?);
        for line in reader.lines() {
            let line = line?;
            let (what, arg) = line.split_once(' ').unwrap_or((&line, ""));
            writeln!(conn, "{}", attempt(what, arg))?;
        }
        Ok(())
    }
}

fn main() {
    forkserve::logging::init(0, false).expect("logging");
    forkserve::proctitle::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().map_or("tcp:127.0.0.1:7000", String::as_str);
    let readable = args.get(1).map_or("/tmp", String::as_str);
    let on = !args.iter().any(|a| a == "--no-sandbox");
    let mut policy = Sandbox::new().read_only(readable);
    if args.iter().any(|a| a == "--unix") {
        policy = policy.unix_connect();
    }
    let service = Service::stream("probe", Probe)
        .listen(addr.parse().expect("address"))
        .sandbox(policy);
    let seccomp = args.iter().any(|a| a == "--seccomp");
    if let Err(e) = Server::new()
        .service(service)
        .sandbox(on)
        .seccomp(seccomp)
        .run()
    {
        eprintln!("sandbox_probe: {e}");
        std::process::exit(e.code);
    }
}
