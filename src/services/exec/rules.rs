//! Access rules (`--rules FILE`), the job of tcprules and s6-tcpserver-access. One
//! rule a line, the first that matches the client decides:
//!
//! ```text
//! # who              what   environment for the program (allow only)
//! 127.0.0.0/8        allow  RELAYCLIENT= GREETING=local
//! 2001:db8::/32      deny
//! uid=1000           allow  ROLE=owner
//! gid=100            allow
//! *                  deny
//! ```
//!
//! Who: an IPv4 or IPv6 network in CIDR form (a bare address is one host; an IPv4
//! rule also matches IPv4 clients of a dual-stack socket), `uid=N` or `gid=N` (a
//! Unix-socket client's effective ids from SO_PEERCRED; the gid is the primary
//! group only), or `*`. A client no rule matches is denied.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::peer::Peer;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Net(IpAddr, u8),
    Uid(u32),
    Gid(u32),
    Any,
}

#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    who: Who,
    allow: bool,
    env: Vec<(String, String)>,
}

/// What the rules say about one client.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Allowed by the rule on `line`, with these variables for the program.
    Allow {
        line: usize,
        env: &'a [(String, String)],
    },
    /// Denied by the rule on `line`, or by no rule matching (`None`).
    Deny { line: Option<usize> },
}

/// A parsed rules file.
#[derive(Debug)]
pub struct Rules {
    path: PathBuf,
    rules: Vec<Rule>,
}

fn parse_who(w: &str) -> Result<Who, String> {
    if w == "*" {
        return Ok(Who::Any);
    }
    if let Some(n) = w.strip_prefix("uid=") {
        return n
            .parse()
            .map(Who::Uid)
            .map_err(|_| format!("bad uid in '{w}'"));
    }
    if let Some(n) = w.strip_prefix("gid=") {
        return n
            .parse()
            .map(Who::Gid)
            .map_err(|_| format!("bad gid in '{w}'"));
    }
    let (addr, len) = match w.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (w, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{w}' is not a network (CIDR), uid=N, gid=N or *"))?;
    let ip = ip.to_canonical();
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("bad prefix length in '{w}' (0-{max})"))?,
    };
    Ok(Who::Net(ip, len))
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_line(line: usize, text: &str) -> Result<Option<Rule>, String> {
    let text = text.split('#').next().unwrap_or("");
    let mut words = text.split_whitespace();
    let Some(who) = words.next() else {
        return Ok(None);
    };
    let who = parse_who(who)?;
    let allow = match words.next() {
        Some("allow") => true,
        Some("deny") => false,
        Some(other) => return Err(format!("expected allow or deny, got '{other}'")),
        None => return Err("expected allow or deny after the client".to_string()),
    };
    let mut env = Vec::new();
    for w in words {
        if !allow {
            return Err(format!("'{w}': a deny rule takes no variables"));
        }
        match w.split_once('=') {
            Some((name, value)) if valid_name(name) => {
                env.push((name.to_string(), value.to_string()))
            }
            _ => return Err(format!("'{w}' is not NAME=VALUE")),
        }
    }
    Ok(Some(Rule {
        line,
        who,
        allow,
        env,
    }))
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Rule {
    fn matches(&self, peer: &Peer) -> bool {
        match (&self.who, peer) {
            (Who::Any, _) => true,
            (Who::Net(net, len), Peer::Ip(a)) => in_net(a.ip(), *net, *len),
            (Who::Uid(u), Peer::Unix { uid: Some(p), .. }) => u == p,
            (Who::Gid(g), Peer::Unix { gid: Some(p), .. }) => g == p,
            _ => false,
        }
    }
}

impl Rules {
    /// Parses rules text; errors name the line.
    pub fn parse(path: &Path, text: &str) -> Result<Rules, String> {
        let mut rules = Vec::new();
        for (i, l) in text.lines().enumerate() {
            match parse_line(i + 1, l) {
                Ok(Some(r)) => rules.push(r),
                Ok(None) => {}
                Err(e) => return Err(format!("{} line {}: {e}", path.display(), i + 1)),
            }
        }
        Ok(Rules {
            path: path.to_path_buf(),
            rules,
        })
    }

    /// Reads and parses a rules file.
    pub fn load(path: &Path) -> Result<Rules, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading rules {}: {e}", path.display()))?;
        Rules::parse(path, &text)
    }

    /// The verdict of the first rule that matches `peer`.
    pub fn check(&self, peer: &Peer) -> Verdict<'_> {
        match self.rules.iter().find(|r| r.matches(peer)) {
            Some(r) if r.allow => Verdict::Allow {
                line: r.line,
                env: &r.env,
            },
            Some(r) => Verdict::Deny { line: Some(r.line) },
            None => Verdict::Deny { line: None },
        }
    }

    /// The file the rules came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many rules there are.
    pub fn count(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Peer {
        Peer::Ip(s.parse().unwrap())
    }

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::Unix {
            uid: Some(uid),
            gid: Some(gid),
            pid: Some(1),
            addr: None,
        }
    }

    #[test]
    fn first_match_decides() {
        let r = Rules::parse(
            Path::new("r"),
            "10.1.0.0/16 deny\n10.0.0.0/8 allow A=1 B=x=y\n::1 allow\nuid=7 deny\ngid=5 allow G=1\n",
        )
        .unwrap();
        assert_eq!(r.check(&ip("10.1.2.3:5")), Verdict::Deny { line: Some(1) });
        let env = [("A".into(), "1".into()), ("B".into(), "x=y".into())];
        assert_eq!(
            r.check(&ip("10.2.2.3:5")),
            Verdict::Allow { line: 2, env: &env }
        );
        assert_eq!(
            r.check(&ip("[::ffff:10.2.0.1]:5")),
            Verdict::Allow { line: 2, env: &env }
        );
        assert!(matches!(
            r.check(&ip("[::1]:5")),
            Verdict::Allow { line: 3, .. }
        ));
        assert_eq!(r.check(&ip("192.168.0.1:5")), Verdict::Deny { line: None });
        assert_eq!(r.check(&unix(7, 5)), Verdict::Deny { line: Some(4) });
        assert!(matches!(
            r.check(&unix(8, 5)),
            Verdict::Allow { line: 5, .. }
        ));
        assert_eq!(r.check(&unix(8, 6)), Verdict::Deny { line: None });
    }

    #[test]
    fn zero_prefix_and_star_match_all() {
        let r = Rules::parse(Path::new("r"), "0.0.0.0/0 allow\n* deny\n").unwrap();
        assert!(matches!(r.check(&ip("1.2.3.4:1")), Verdict::Allow { .. }));
        assert_eq!(
            r.check(&ip("[2001:db8::1]:1")),
            Verdict::Deny { line: Some(2) }
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, needle) in [
            ("* maybe\n", "line 1: expected allow or deny"),
            ("\n10.0.0.0/33 allow\n", "line 2: bad prefix length"),
            ("host.example allow\n", "not a network"),
            ("* deny X=1\n", "takes no variables"),
            ("* allow 1X=2\n", "not NAME=VALUE"),
            ("uid=x allow\n", "bad uid"),
        ] {
            let e = Rules::parse(Path::new("f"), text).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
