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
pub mod config;
pub mod handler;
pub mod impair;
pub mod listener;
pub mod logging;
pub mod peer;
pub mod proctitle;
pub mod sandbox;
pub mod server;
pub mod services;
mod sys;
pub mod systemd;
pub mod users;

pub use addr::ListenAddr;
pub use handler::{
    Connection, Context, DatagramHandler, Model, Reply, Stream, StreamHandler, Wait,
};
pub use peer::{Peer, SourceKey};
pub use sandbox::Sandbox;
pub use server::{Companion, Error, Server, Service, Spawner};

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

/// Parses an HTTP date (RFC 9110 §5.6.7) into Unix seconds: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) and, as recipients must, the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`)
/// forms. None for anything else (a caller then ignores the header).
pub fn parse_http_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let (_, rest) = s.split_once([',', ' '])?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (day, month, year, clock) = match fields.as_slice() {
        // IMF-fixdate: 06 Nov 1994 08:49:37 GMT
        [d, m, y, t, "GMT"] if s.contains(',') => (*d, *m, y.parse::<i64>().ok()?, *t),
        // RFC 850: 06-Nov-94 08:49:37 GMT (two-digit years: RFC 9110 §5.6.7's rule,
        // simplified to 1970-2069)
        [dmy, t, "GMT"] if s.contains(',') => {
            let mut p = dmy.split('-');
            let (d, m, y) = (p.next()?, p.next()?, p.next()?);
            let y: i64 = y.parse().ok()?;
            (d, m, if y < 70 { 2000 + y } else { 1900 + y }, *t)
        }
        // asctime: Nov  6 08:49:37 1994
        [m, d, t, y] if !s.contains(',') => (*d, *m, y.parse::<i64>().ok()?, *t),
        _ => return None,
    };
    let day: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let mut hms = clock.split(':').map(|v| v.parse::<i64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || mi > 59 || se > 60 || !(1..=9999).contains(&year) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_http_date_forms() {
        let t = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_http_date(&http_date(t)), Some(t));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        for now in [0, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_http_date(&http_date(now)), Some(now));
        }
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }
}
