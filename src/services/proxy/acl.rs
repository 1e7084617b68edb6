//! Access lists: `allow` and `deny` rules on destination host globs, URL
//! prefixes, destination CIDRs and client CIDRs, first match wins; with no match a
//! destination on loopback, private, link-local, unspecified or the proxy's own
//! addresses is denied (server-side request forgery), anything else allowed.
//!
//! File format (`--acl FILE`), one rule a line, `#` starts a comment:
//!
//! ```text
//! allow 127.0.0.0/8            # destination CIDR (or a bare address)
//! deny  *.ads.example          # host glob: * matches any run of characters
//! allow http://intranet.test/public/   # URL prefix
//! deny  client 192.168.7.0/24  # client CIDR
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Which part of a request a rule looks at.
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Dest(Cidr),
    Client(Cidr),
    Host(String),
    UrlPrefix(String),
}

/// One rule and where it came from (for the 403 page and the log).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    allow: bool,
    matcher: Matcher,
    /// `--deny *.example.com`, `/etc/forkserve/proxy.acl:3: deny …`.
    pub origin: String,
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("'{s}' is not an address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0-{max}"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What is being asked for.
pub struct Target<'a> {
    pub client: Option<IpAddr>,
    /// Lower-case host name or address literal, without brackets.
    pub host: &'a str,
    /// The whole URL (`https://host:port/` for CONNECT).
    pub url: &'a str,
}

/// The outcome, with the rule that decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub allow: bool,
    pub why: String,
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<Rule>,
    /// Addresses of this host's interfaces (denied by default).
    own: Vec<IpAddr>,
}

/// Parses one RULE (`client CIDR`, `client:CIDR`, a CIDR, a URL prefix, a glob).
fn matcher(rule: &str) -> Result<Matcher, String> {
    let rule = rule.trim();
    if let Some(c) = rule
        .strip_prefix("client:")
        .or_else(|| rule.strip_prefix("client "))
    {
        return Cidr::parse(c.trim()).map(Matcher::Client);
    }
    let lower = rule.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Matcher::UrlPrefix(rule.to_string()));
    }
    if let Ok(c) = Cidr::parse(rule) {
        return Ok(Matcher::Dest(c));
    }
    if rule.is_empty()
        || !rule
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b))
    {
        return Err(format!(
            "'{rule}' is neither a CIDR, a URL prefix, 'client CIDR' nor a host glob"
        ));
    }
    Ok(Matcher::Host(lower))
}

impl Acl {
    /// Rules from the command line (`--allow`, `--deny`, in that order), then the
    /// file's. Errors name the rule or the file line at fault.
    pub fn load(allow: &[String], deny: &[String], file: Option<&Path>) -> Result<Acl, String> {
        let mut rules = Vec::new();
        for (list, ok, flag) in [(allow, true, "--allow"), (deny, false, "--deny")] {
            for r in list {
                rules.push(Rule {
                    allow: ok,
                    matcher: matcher(r).map_err(|e| format!("{flag} {r}: {e}"))?,
                    origin: format!("{flag} {r}"),
                });
            }
        }
        if let Some(path) = file {
            rules.extend(read_file(path)?);
        }
        Ok(Acl {
            rules,
            own: own_addresses(),
        })
    }

    /// The verdict for `t` connecting to `addr` (None: before name resolution,
    /// when only client, host and URL rules can decide).
    pub fn check(&self, t: &Target<'_>, addr: Option<IpAddr>) -> Option<Verdict> {
        for r in &self.rules {
            let hit = match &r.matcher {
                Matcher::Client(c) => t.client.is_some_and(|ip| c.contains(ip)),
                Matcher::Host(glob) => glob_match(glob.as_bytes(), t.host.as_bytes()),
                Matcher::UrlPrefix(p) => url_has_prefix(t.url, p),
                Matcher::Dest(c) => match addr {
                    Some(a) => c.contains(a),
                    None => return None,
                },
            };
            if hit {
                return Some(Verdict {
                    allow: r.allow,
                    why: r.origin.clone(),
                });
            }
        }
        let addr = addr?;
        Some(match self.forbidden_kind(addr) {
            Some(kind) => Verdict {
                allow: false,
                why: format!("default rule: {addr} is {kind} (no rule allows it)"),
            },
            None => Verdict {
                allow: true,
                why: "default rule".into(),
            },
        })
    }

    /// Why `addr` is off limits by default, if it is.
    fn forbidden_kind(&self, addr: IpAddr) -> Option<&'static str> {
        let a = canonical(addr);
        let private = match a {
            IpAddr::V4(v4) => {
                v4.is_private() || Cidr::parse("100.64.0.0/10").is_ok_and(|c| c.contains(a))
            }
            IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
        };
        let link_local = match a {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if a.is_loopback() {
            Some("a loopback address")
        } else if a.is_unspecified() {
            Some("the unspecified address")
        } else if private {
            Some("a private address")
        } else if link_local {
            Some("a link-local address")
        } else if a.is_multicast() {
            Some("a multicast address")
        } else if self.own.contains(&a) {
            Some("an address of this host")
        } else {
            None
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("access list {}: {e}", path.display()))?;
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let (action, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{at}: expected 'allow RULE' or 'deny RULE'"))?;
        let allow = match action {
            "allow" => true,
            "deny" => false,
            other => return Err(format!("{at}: '{other}': expected allow or deny")),
        };
        rules.push(Rule {
            allow,
            matcher: matcher(rest).map_err(|e| format!("{at}: {e}"))?,
            origin: format!("{at}: {line}"),
        });
    }
    Ok(rules)
}

/// `*` matches any run of characters (including dots); everything else literally.
fn glob_match(glob: &[u8], s: &[u8]) -> bool {
    match glob.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob_match(rest, &s[i..])),
        Some((&c, rest)) => s.first() == Some(&c) && glob_match(rest, &s[1..]),
    }
}

/// Case-insensitive in the scheme and host, the default port implied, exact
/// in the path (compared as sent, percent-encoding included).
fn url_has_prefix(url: &str, prefix: &str) -> bool {
    let split = |u: &str| -> (String, String) {
        let after = u.find("://").map_or(0, |i| i + 3);
        let path_at = u[after..].find(['/', '?']).map_or(u.len(), |i| after + i);
        let origin = u[..path_at].to_ascii_lowercase();
        let origin = match origin.strip_prefix("https://") {
            Some(_) => origin.strip_suffix(":443").unwrap_or(&origin).to_string(),
            None => origin.strip_suffix(":80").unwrap_or(&origin).to_string(),
        };
        (origin, u[path_at..].to_string())
    };
    let (ua, up) = split(url);
    let (pa, pp) = split(prefix);
    if pp.is_empty() {
        ua == pa
    } else {
        ua == pa && up.starts_with(&pp)
    }
}

/// The addresses of this host's interfaces.
fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// The access list of a running proxy: loaded at start-up, and re-read from the
/// file when the master has been asked to reload since.
pub struct AclSource {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub file: Option<PathBuf>,
    pub loaded: Acl,
}

impl AclSource {
    /// The rules for a connection handed out after `reloads` SIGHUPs. A file that
    /// no longer reads or parses keeps the start-up rules (and says so).
    pub fn current(&self, reloads: u64) -> Acl {
        if reloads == 0 || self.file.is_none() {
            return self.loaded.clone();
        }
        match Acl::load(&self.allow, &self.deny, self.file.as_deref()) {
            Ok(acl) => acl,
            Err(e) => {
                log::error!(
                    "proxy: reloading the access list: {e}; keeping the rules loaded at start-up"
                );
                self.loaded.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(host: &'a str, url: &'a str) -> Target<'a> {
        Target {
            client: Some("127.0.0.1".parse().unwrap()),
            host,
            url,
        }
    }

    #[test]
    fn first_match_wins_and_ssrf_default() {
        let acl = Acl::load(
            &["http://a.test/open/".into(), "127.0.0.0/8".into()],
            &["*.a.test".into(), "a.test".into()],
            None,
        )
        .unwrap();
        let lo = Some("127.0.0.1".parse().unwrap());
        let v = acl
            .check(&target("a.test", "http://a.test/open/x"), lo)
            .unwrap();
        assert!(v.allow);
        let v = acl
            .check(&target("a.test", "http://a.test/closed"), lo)
            .unwrap();
        assert_eq!((v.allow, v.why.as_str()), (true, "--allow 127.0.0.0/8"));
        let v = acl.check(
            &target("x.a.test", "http://x.a.test/"),
            Some("8.8.8.8".parse().unwrap()),
        );
        assert_eq!(v.unwrap().why, "--deny *.a.test");
        let none = Acl::default();
        let v = none
            .check(&target("h", "http://h/"), Some("10.1.1.1".parse().unwrap()))
            .unwrap();
        assert!(!v.allow && v.why.contains("private"));
        let v = none
            .check(
                &target("h", "http://h/"),
                Some("::ffff:127.0.0.1".parse().unwrap()),
            )
            .unwrap();
        assert!(!v.allow && v.why.contains("loopback"));
        assert!(
            none.check(
                &target("h", "http://h/"),
                Some("93.184.216.34".parse().unwrap())
            )
            .unwrap()
            .allow
        );
    }

    #[test]
    fn cidrs_and_bad_rules() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Acl::load(&["a b".into()], &[], None).is_err());
        assert!(glob_match(b"*.example.com", b"www.example.com"));
        assert!(!glob_match(b"*.example.com", b"example.com"));
    }
}
