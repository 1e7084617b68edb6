//! forkserve: a process-per-connection Unix server, the model of Python's
//! `socketserver` (TCP/UDP/Unix stream/Unix datagram servers, ForkingMixIn,
//! ThreadingMixIn, BaseRequestHandler) built as a daemon: pre-bound listeners, one
//! forked child per connection, a SIGCHLD reaper, systemd socket activation,
//! process titles for `ps`, and built-in services.
//!
//! A program serves its own handler with [`Server`] and [`Service`]:
//!
//! ```no_run
//! use std::io::{self, BufRead, BufReader, Write};
//! use forkserve::{Connection, Server, Service, StreamHandler};
//!
//! struct Shout;
//! impl StreamHandler for Shout {
//!     fn handle(&self, conn: &mut Connection) -> io::Result<()> {
//!         let mut reader = BufReader::new(conn.stream().try_clone()?);
//!         let mut line = String::new();
//!         while reader.read_line(&mut line)? > 0 {
//!             conn.write_all(line.to_uppercase().as_bytes())?;
//!             line.clear();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! Server::new()
//!     .service(Service::stream("shout", Shout).listen("tcp:127.0.0.1:7000".parse().unwrap()))
//!     .run()
//!     .unwrap();
//! ```

pub mod addr;
pub mod handler;
pub mod impair;
pub mod listener;
pub mod logging;
pub mod peer;
pub mod proctitle;
pub mod server;
pub mod services;
mod sys;
pub mod systemd;
pub mod users;

pub use addr::ListenAddr;
pub use handler::{Connection, Context, DatagramHandler, Model, Reply, Stream, StreamHandler};
pub use peer::{Peer, SourceKey};
pub use server::{Companion, Error, Server, Service};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Local date and time as `YYYY-MM-DD HH:MM:SS` (the reference services' format).
pub fn local_datetime() -> String {
    let t = sys::local_time(unix_now());
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// An HTTP date (IMF-fixdate, RFC 9110): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let t = sys::utc_time(secs);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday as usize % 7],
        t.day,
        MONTHS[(t.month as usize + 11) % 12],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}

/// A Common Log Format date in UTC: `06/Nov/1994:08:49:37 +0000`.
pub fn clf_date(secs: i64) -> String {
    let t = sys::utc_time(secs);
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        t.day,
        MONTHS[(t.month as usize + 11) % 12],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}
