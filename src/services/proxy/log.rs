//! The proxy's request log: one line per request at info level, in Squid's native
//! format or the combined format, each followed by the upstream time.
//!
//! ```text
//! squid:    1733000000.123     45 127.0.0.1 TCP_MISS/200 1234 GET http://h/ - HIER_DIRECT/127.0.0.1 text/html upstream_ms=40
//! combined: 127.0.0.1 - - [01/Dec/2026:05:00:00 +0000] "GET http://h/ HTTP/1.1" 200 1234 "-" "curl/8" MISS upstream_ms=40 total_ms=45
//! ```

use std::net::IpAddr;
use std::time::Duration;

use crate::peer::Peer;

/// `--access-log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Squid,
    Combined,
}

/// How the cache took part in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Revalidated,
    /// Not a cacheable request (other methods, uncacheable responses).
    Pass,
    Denied,
    Tunnel,
    /// The proxy answered with an error of its own.
    Error,
}

impl CacheResult {
    /// The `X-Cache` value.
    pub fn x_cache(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Revalidated => "REVALIDATED",
            _ => "MISS",
        }
    }

    fn squid_code(self) -> &'static str {
        match self {
            CacheResult::Hit => "TCP_HIT",
            CacheResult::Miss | CacheResult::Pass | CacheResult::Error => "TCP_MISS",
            CacheResult::Revalidated => "TCP_REFRESH_UNMODIFIED",
            CacheResult::Denied => "TCP_DENIED",
            CacheResult::Tunnel => "TCP_TUNNEL",
        }
    }
}

/// What one log line says.
pub struct Record<'a> {
    pub peer: &'a Peer,
    pub method: &'a str,
    pub url: &'a str,
    pub minor: u8,
    pub status: u16,
    pub bytes: u64,
    pub result: CacheResult,
    pub server: Option<IpAddr>,
    pub content_type: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub upstream: Option<Duration>,
    pub total: Duration,
}

fn client(peer: &Peer) -> String {
    match peer {
        Peer::Ip(a) => a.ip().to_string(),
        Peer::Unix { .. } => "unix".to_string(),
    }
}

/// Printable text with spaces and quotes escaped, so fields stay fields.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' => "%20".to_string(),
            '"' => "%22".to_string(),
            c if c.is_control() => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

impl Record<'_> {
    pub fn format(&self, fmt: LogFormat, now_ms: i64) -> String {
        let up = self.upstream.map_or(0, |d| d.as_millis());
        let total = self.total.as_millis();
        match fmt {
            LogFormat::Squid => format!(
                "{}.{:03} {total:>6} {} {}/{:03} {} {} {} - {} {} upstream_ms={up}",
                now_ms / 1000,
                now_ms % 1000,
                client(self.peer),
                self.result.squid_code(),
                self.status,
                self.bytes,
                field(self.method),
                field(self.url),
                self.server
                    .map_or("HIER_NONE/-".to_string(), |s| format!("HIER_DIRECT/{s}")),
                self.content_type.map_or("-".to_string(), field),
            ),
            LogFormat::Combined => format!(
                "{} - - [{}] \"{} {} HTTP/1.{}\" {} {} \"{}\" \"{}\" {} upstream_ms={up} total_ms={total}",
                client(self.peer),
                crate::clf_date(now_ms / 1000),
                field(self.method),
                field(self.url),
                self.minor,
                self.status,
                if self.bytes == 0 {
                    "-".to_string()
                } else {
                    self.bytes.to_string()
                },
                self.referer
                    .map_or("-".to_string(), |r| r.replace('"', "%22")),
                self.user_agent
                    .map_or("-".to_string(), |u| u.replace('"', "%22")),
                self.result.x_cache(),
            ),
        }
    }

    pub fn log(&self, fmt: LogFormat) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        log::info!("proxy: {}", self.format(fmt, now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let peer = Peer::Ip("127.0.0.1:4000".parse().unwrap());
        let r = Record {
            peer: &peer,
            method: "GET",
            url: "http://h:80/a b",
            minor: 1,
            status: 200,
            bytes: 12,
            result: CacheResult::Hit,
            server: None,
            content_type: Some("text/plain"),
            referer: None,
            user_agent: Some("curl/8"),
            upstream: None,
            total: Duration::from_millis(3),
        };
        assert_eq!(
            r.format(LogFormat::Squid, 784_111_777_123),
            "784111777.123      3 127.0.0.1 TCP_HIT/200 12 GET http://h:80/a%20b - HIER_NONE/- text/plain upstream_ms=0"
        );
        assert_eq!(
            r.format(LogFormat::Combined, 784_111_777_123),
            "127.0.0.1 - - [06/Nov/1994:08:49:37 +0000] \"GET http://h:80/a%20b HTTP/1.1\" 200 12 \"-\" \"curl/8\" HIT upstream_ms=0 total_ms=3"
        );
    }
}
