//! A custom handler served by forkserve in about twenty lines: every line comes back
//! shouted, one forked worker per connection. Send `panic` to watch a worker crash
//! (exit status 1, logged by the master) while the server keeps serving.
//!
//! cargo run --example shout -- tcp:127.0.0.1:7000   then   nc 127.0.0.1 7000

use std::io::{self, BufRead, BufReader, Write};

use forkserve::{Connection, Server, Service, StreamHandler};

struct Shout;

impl StreamHandler for Shout {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        for line in BufReader::new(conn.stream().try_clone()?).lines() {
            let line = line?;
            assert!(line != "panic", "asked to panic by {}", conn.peer());
            writeln!(conn, "{}!", line.to_uppercase())?;
        }
        Ok(())
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or("tcp:127.0.0.1:7000".into());
    let service = Service::stream("shout", Shout).listen(addr.parse().expect("address"));
    // The name gives the process titles (`shout: master …`) and the log identity;
    // run() sets up logging (stderr, or the journal under systemd) and titles.
    if let Err(e) = Server::new().name("shout").service(service).run() {
        eprintln!("shout: {e}");
        std::process::exit(e.code);
    }
}
