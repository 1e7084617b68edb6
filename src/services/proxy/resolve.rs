//! Name resolution for the proxy, without glibc's `getaddrinfo`: the binary is
//! linked statically, and a static glibc loads its NSS modules from the installed
//! (possibly different) glibc at run time, which is not safe. This is a small stub
//! resolver in the classic order: the hosts file, then the nameservers of
//! resolv.conf over UDP (TCP when the answer is truncated), A and AAAA, with
//! `search`, `ndots`, `timeout` and `attempts` honoured.
//!
//! Why not a crate: the standard Rust resolver (hickory-resolver) is asynchronous
//! and brings a Tokio runtime into every forked worker; a worker resolves one name
//! per request and blocks anyway.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// Where names are looked up.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub hosts_file: PathBuf,
    pub resolv_conf: PathBuf,
}

/// The parts of resolv.conf a stub resolver uses.
#[derive(Debug, Clone, PartialEq)]
struct Conf {
    nameservers: Vec<SocketAddr>,
    search: Vec<String>,
    ndots: usize,
    timeout: Duration,
    attempts: usize,
}

impl Default for Conf {
    fn default() -> Conf {
        Conf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Why a name did not resolve.
#[derive(Debug)]
pub enum ResolveError {
    /// The name does not exist (NXDOMAIN everywhere, or no address records).
    NotFound,
    /// No nameserver answered in time.
    TimedOut,
    /// Nameservers failed or could not be reached.
    Failed(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::NotFound => f.write_str("no such host"),
            ResolveError::TimedOut => f.write_str("no nameserver answered in time"),
            ResolveError::Failed(e) => f.write_str(e),
        }
    }
}

impl Resolver {
    /// The addresses of `host`: an address literal as is; else the hosts file's
    /// entries, else DNS (IPv4 first, then IPv6).
    pub fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = host.to_ascii_lowercase();
        if !valid_name(&name) {
            return Err(ResolveError::NotFound);
        }
        let from_hosts = hosts_lookup(&self.hosts_file, &name);
        if !from_hosts.is_empty() {
            return Ok(from_hosts);
        }
        // RFC 6761: localhost names never go to the network.
        if name == "localhost" || name.ends_with(".localhost") {
            return Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]);
        }
        let conf = read_conf(&self.resolv_conf);
        let mut last = ResolveError::NotFound;
        for candidate in candidates(&name, &conf) {
            match dns_lookup(&candidate, &conf) {
                Ok(addrs) if !addrs.is_empty() => return Ok(addrs),
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// A host name of letters, digits, hyphens, underscores and dots, labels of 1-63.
fn valid_name(name: &str) -> bool {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Every address the hosts file gives `name` (canonical name or alias).
fn hosts_lookup(path: &Path, name: &str) -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields
            .next()
            .map(|a| a.split('%').next().unwrap_or(a).parse())
        else {
            continue;
        };
        if fields.any(|n| n.eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // IPv4 first: it is what most local services listen on.
    out.sort_by_key(|ip: &IpAddr| ip.is_ipv6());
    out
}

fn read_conf(path: &Path) -> Conf {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut conf = parse_conf(&text);
    if conf.nameservers.is_empty() {
        // resolv.conf(5): without a nameserver line, the local machine.
        conf.nameservers
            .push(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)));
    }
    conf
}

fn parse_conf(text: &str) -> Conf {
    let mut conf = Conf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => {
                if let Some(Ok(ip)) = f
                    .next()
                    .map(|a| a.split('%').next().unwrap_or(a).parse::<IpAddr>())
                    && conf.nameservers.len() < 3
                {
                    conf.nameservers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") => {
                conf.search = f.map(|d| d.trim_end_matches('.').to_string()).collect()
            }
            Some("domain") => {
                conf.search = f
                    .next()
                    .map(|d| vec![d.trim_end_matches('.').to_string()])
                    .unwrap_or_default();
            }
            Some("options") => {
                for opt in f {
                    let (k, v) = opt.split_once(':').unwrap_or((opt, ""));
                    let n = v.parse::<u64>().ok();
                    match (k, n) {
                        ("ndots", Some(n)) => conf.ndots = n.min(15) as usize,
                        ("timeout", Some(n)) => conf.timeout = Duration::from_secs(n.clamp(1, 30)),
                        ("attempts", Some(n)) => conf.attempts = n.clamp(1, 5) as usize,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

/// The names to query, in order: as given first when it has at least `ndots`
/// dots, then with each search domain, then as given otherwise. A name ending in
/// a dot is absolute and queried alone.
fn candidates(name: &str, conf: &Conf) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_string()];
    }
    let searched = conf.search.iter().map(|d| format!("{name}.{d}"));
    if name.matches('.').count() >= conf.ndots {
        std::iter::once(name.to_string()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.to_string())).collect()
    }
}

/// A and AAAA for one name, from the first nameserver that answers.
fn dns_lookup(name: &str, conf: &Conf) -> Result<Vec<IpAddr>, ResolveError> {
    let mut out = Vec::new();
    let mut missing = 0;
    for qtype in [TYPE_A, TYPE_AAAA] {
        match query(name, qtype, conf) {
            Ok(addrs) => out.extend(addrs),
            Err(ResolveError::NotFound) => missing += 1,
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => {}
        }
    }
    if out.is_empty() && missing > 0 {
        return Err(ResolveError::NotFound);
    }
    Ok(out)
}

fn query(name: &str, qtype: u16, conf: &Conf) -> Result<Vec<IpAddr>, ResolveError> {
    let mut last = ResolveError::TimedOut;
    for _ in 0..conf.attempts {
        for ns in &conf.nameservers {
            let id = query_id();
            let packet = encode_query(id, name, qtype);
            let answer = match ask_udp(*ns, &packet, conf.timeout) {
                Ok(a) if a.len() > 2 && a[2] & 0x02 != 0 => ask_tcp(*ns, &packet, conf.timeout),
                other => other,
            };
            match answer {
                Ok(a) if !same_question(&a, &packet) => {
                    last =
                        ResolveError::Failed(format!("nameserver {ns} answered another question"));
                }
                Ok(a) => match parse_answer(&a, id, qtype) {
                    Ok(addrs) => return Ok(addrs),
                    Err(ResolveError::NotFound) => return Err(ResolveError::NotFound),
                    Err(e) => last = e,
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    last = ResolveError::TimedOut;
                }
                Err(e) => last = ResolveError::Failed(format!("nameserver {ns}: {e}")),
            }
        }
    }
    Err(last)
}

/// A random query id (std's hasher keys come from the OS's random source).
fn query_id() -> u16 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::collections::hash_map::RandomState::new().hash_one(nanos) as u16
}

fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(32 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes()); // class IN
    p
}

fn ask_udp(ns: SocketAddr, packet: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if ns.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local)?;
    // connect(2): only datagrams from the nameserver are received.
    sock.connect(ns)?;
    sock.send(packet)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        sock.set_read_timeout(Some(left))?;
        let n = sock.recv(&mut buf)?;
        // A reply to another query (a late answer) is skipped.
        if n >= 12 && buf[..2] == packet[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

fn ask_tcp(ns: SocketAddr, packet: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&ns, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut msg = (packet.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(packet);
    s.write_all(&msg)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// True when the answer repeats the query's question (name, type, class).
fn same_question(answer: &[u8], query: &[u8]) -> bool {
    let q = &query[12..];
    answer.len() >= 12 + q.len()
        && answer[4..6] == [0, 1]
        && answer[12..12 + q.len()].eq_ignore_ascii_case(q)
}

/// The addresses of type `qtype` in the answer section (CNAME chains are
/// followed by the server; their targets' records are in the same section).
fn parse_answer(msg: &[u8], id: u16, qtype: u16) -> Result<Vec<IpAddr>, ResolveError> {
    let bad = || ResolveError::Failed("malformed DNS answer".to_string());
    if msg.len() < 12 || msg[..2] != id.to_be_bytes() || msg[2] & 0x80 == 0 {
        return Err(bad());
    }
    match msg[3] & 0x0f {
        0 => {}
        3 => return Err(ResolveError::NotFound),
        rcode => {
            return Err(ResolveError::Failed(format!(
                "nameserver answered rcode {rcode}"
            )));
        }
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos).ok_or_else(bad)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = skip_name(msg, pos).ok_or_else(bad)?;
        let rr = msg.get(pos..pos + 10).ok_or_else(bad)?;
        let rtype = u16::from_be_bytes([rr[0], rr[1]]);
        let len = u16::from_be_bytes([rr[8], rr[9]]) as usize;
        let data = msg.get(pos + 10..pos + 10 + len).ok_or_else(bad)?;
        pos += 10 + len;
        match (rtype, len) {
            (TYPE_A, 4) if qtype == TYPE_A => {
                out.push(IpAddr::from(<[u8; 4]>::try_from(data).map_err(|_| bad())?));
            }
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                out.push(IpAddr::from(<[u8; 16]>::try_from(data).map_err(|_| bad())?));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The offset just past a (possibly compressed) name at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)? as usize;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return msg.get(pos + 1).map(|_| pos + 2),
            l if l < 64 => pos += 1 + l,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_and_ndots_order() {
        let conf =
            parse_conf("search a.test b.test\noptions ndots:2 timeout:1\nnameserver 10.0.0.1\n");
        assert_eq!(conf.ndots, 2);
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.nameservers, vec!["10.0.0.1:53".parse().unwrap()]);
        assert_eq!(
            candidates("www", &conf),
            ["www.a.test", "www.b.test", "www"]
        );
        assert_eq!(
            candidates("x.y.z", &conf),
            ["x.y.z", "x.y.z.a.test", "x.y.z.b.test"]
        );
        assert_eq!(candidates("abs.", &conf), ["abs"]);
    }

    #[test]
    fn answers_with_compression_are_read() {
        let q = encode_query(0x1234, "ex.test", TYPE_A);
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 2; // two answers: a CNAME, then an A record
        a.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        let addrs = parse_answer(&a, 0x1234, TYPE_A).unwrap();
        assert_eq!(addrs, vec![IpAddr::from([192, 0, 2, 7])]);
        a[3] = 0x83;
        assert!(matches!(
            parse_answer(&a, 0x1234, TYPE_A),
            Err(ResolveError::NotFound)
        ));
    }

    #[test]
    fn answers_from_a_local_nameserver_over_udp() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                let mut a = buf[..n].to_vec();
                a[2] |= 0x80;
                let qtype = u16::from_be_bytes([a[n - 4], a[n - 3]]);
                if qtype == TYPE_A {
                    a[7] = 1;
                    a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 9]);
                }
                server.send_to(&a, from).unwrap();
            }
        });
        let conf = Conf {
            nameservers: vec![addr],
            ..Conf::default()
        };
        let got = dns_lookup("svc.test", &conf).unwrap();
        assert_eq!(got, vec![IpAddr::from([127, 0, 0, 9])]);
        t.join().unwrap();
    }

    #[test]
    fn hosts_file_aliases() {
        let dir = std::env::temp_dir().join(format!("fs-hosts-{}", std::process::id()));
        std::fs::write(
            &dir,
            "127.0.0.1 localhost\n10.1.2.3 origin.test alias # c\n::1 origin.test\n",
        )
        .unwrap();
        let got = hosts_lookup(&dir, "ALIAS".to_ascii_lowercase().as_str());
        assert_eq!(got, vec![IpAddr::from([10, 1, 2, 3])]);
        assert_eq!(hosts_lookup(&dir, "origin.test").len(), 2);
        let _ = std::fs::remove_file(&dir);
    }
}
