//! Listen addresses as users write them: `tcp:HOST:PORT`, `udp:HOST:PORT`,
//! `unix:/path`, `unix:@abstract`, `unixgram:/path`, `unixgram:@abstract`,
//! `systemd:NAME`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// Where a Unix socket lives: a file in the file system, or a name in the abstract
/// namespace (Linux; no file, gone when the socket closes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnixPath {
    File(PathBuf),
    Abstract(String),
}

impl fmt::Display for UnixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixPath::File(p) => write!(f, "{}", p.display()),
            UnixPath::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

/// One address a service listens on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// TCP stream, IPv4 or IPv6.
    Tcp(SocketAddr),
    /// UDP datagrams, IPv4 or IPv6.
    Udp(SocketAddr),
    /// Unix stream socket.
    Unix(UnixPath),
    /// Unix datagram socket.
    UnixGram(UnixPath),
    /// The sockets systemd passed under this FileDescriptorName=.
    Systemd(String),
}

/// What is wrong with an address string; the message includes the accepted syntax.
#[derive(Debug)]
pub struct AddrError(pub String);

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddrError {}

/// The accepted forms, for error messages and `--help`.
pub const SYNTAX: &str = "tcp:HOST:PORT, tcp:[IPV6]:PORT, udp:HOST:PORT, unix:/PATH, unix:@NAME, unixgram:/PATH, unixgram:@NAME or systemd:NAME";

impl ListenAddr {
    /// True for stream sockets (TCP, Unix stream).
    pub fn is_stream(&self) -> bool {
        matches!(self, ListenAddr::Tcp(_) | ListenAddr::Unix(_))
    }

    /// The socket file this address names, if any.
    pub fn socket_file(&self) -> Option<&PathBuf> {
        match self {
            ListenAddr::Unix(UnixPath::File(p)) | ListenAddr::UnixGram(UnixPath::File(p)) => {
                Some(p)
            }
            _ => None,
        }
    }
}

/// Looks a host name up (the system resolver for [`FromStr`]; a fixed table in
/// tests and fuzzing, which must not touch the network).
pub type Resolver<'a> = &'a dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

fn system_resolver(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

fn parse_host_port(input: &str, rest: &str, resolve: Resolver) -> Result<SocketAddr, AddrError> {
    let bad = |why: &str| AddrError(format!("bad address '{input}': {why} (expected {SYNTAX})"));
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        let end = stripped
            .find(']')
            .ok_or_else(|| bad("missing ']' after IPv6 address"))?;
        let host = &stripped[..end];
        let port = stripped[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| bad("missing ':PORT'"))?;
        (host, port)
    } else {
        let idx = rest.rfind(':').ok_or_else(|| bad("missing ':PORT'"))?;
        (&rest[..idx], &rest[idx + 1..])
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad(&format!("port '{port}' is not a number from 0 to 65535")))?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs =
        resolve(host, port).map_err(|e| bad(&format!("cannot resolve host '{host}': {e}")))?;
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| bad(&format!("host '{host}' has no address")))
}

fn parse_unix(input: &str, rest: &str) -> Result<UnixPath, AddrError> {
    if let Some(name) = rest.strip_prefix('@') {
        if name.is_empty() {
            return Err(AddrError(format!(
                "bad address '{input}': empty abstract name (expected {SYNTAX})"
            )));
        }
        return Ok(UnixPath::Abstract(name.to_string()));
    }
    if rest.is_empty() {
        return Err(AddrError(format!(
            "bad address '{input}': empty path (expected {SYNTAX})"
        )));
    }
    if rest.len() > 107 {
        return Err(AddrError(format!(
            "bad address '{input}': socket path longer than 107 bytes"
        )));
    }
    Ok(UnixPath::File(PathBuf::from(rest)))
}

impl FromStr for ListenAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<ListenAddr, AddrError> {
        ListenAddr::parse_with(s, &system_resolver)
    }
}

impl ListenAddr {
    /// Parses an address, looking host names up with `resolve`.
    pub fn parse_with(s: &str, resolve: Resolver) -> Result<ListenAddr, AddrError> {
        let (scheme, rest) = s.split_once(':').ok_or_else(|| {
            AddrError(format!(
                "bad address '{s}': missing scheme (expected {SYNTAX})"
            ))
        })?;
        match scheme {
            "tcp" => Ok(ListenAddr::Tcp(parse_host_port(s, rest, resolve)?)),
            "udp" => Ok(ListenAddr::Udp(parse_host_port(s, rest, resolve)?)),
            "unix" => Ok(ListenAddr::Unix(parse_unix(s, rest)?)),
            "unixgram" => Ok(ListenAddr::UnixGram(parse_unix(s, rest)?)),
            "systemd" if !rest.is_empty() => Ok(ListenAddr::Systemd(rest.to_string())),
            "systemd" => Err(AddrError(format!(
                "bad address '{s}': systemd: needs the socket's FileDescriptorName"
            ))),
            other => Err(AddrError(format!(
                "bad address '{s}': unknown scheme '{other}' (expected {SYNTAX})"
            ))),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Udp(a) => write!(f, "udp:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{p}"),
            ListenAddr::UnixGram(p) => write!(f, "unixgram:{p}"),
            ListenAddr::Systemd(n) => write!(f, "systemd:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for s in [
            "tcp:127.0.0.1:9999",
            "tcp:[::1]:0",
            "udp:127.0.0.1:8888",
            "unix:/tmp/x.sock",
            "unix:@forkserve-echo",
            "unixgram:/tmp/t.sock",
            "systemd:echo",
        ] {
            let a: ListenAddr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "tcp:localhost:80"
                .parse::<ListenAddr>()
                .unwrap()
                .to_string(),
            "tcp:127.0.0.1:80"
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "tcp",
            "tcp:1.2.3.4",
            "tcp:1.2.3.4:99999",
            "tcp:[::1:80",
            "ftp:x:1",
            "unix:",
            "unix:@",
        ] {
            let e = s.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(e.contains("bad address"), "{s}: {e}");
        }
    }
}
