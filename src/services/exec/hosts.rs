//! `--resolve`: host names for TCPREMOTEHOST and TCPLOCALHOST from /etc/hosts
//! alone. forkserve links glibc statically, and a static glibc cannot load the NSS
//! modules getnameinfo() would need; a DNS query per connection would also block
//! the master (tcpserver's stalls on a dead resolver are its best-known pain). The
//! file is read at start-up and on SIGHUP into a table, so a look-up is a hash
//! probe. As glibc's `files` source does, the first name of the first line that
//! lists an address is its name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

pub const HOSTS_FILE: &str = "/etc/hosts";

/// Address to name, from a hosts file.
#[derive(Debug, Default)]
pub struct Hosts {
    names: HashMap<IpAddr, String>,
}

impl Hosts {
    /// Parses hosts-file text: `ADDRESS NAME [ALIAS…]`, `#` comments.
    pub fn parse(text: &str) -> Hosts {
        let mut names = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (Some(addr), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            if let Ok(ip) = addr.parse::<IpAddr>() {
                names
                    .entry(ip.to_canonical())
                    .or_insert_with(|| name.to_string());
            }
        }
        Hosts { names }
    }

    /// Reads a hosts file.
    pub fn load(path: &Path) -> Result<Hosts, String> {
        std::fs::read_to_string(path)
            .map(|t| Hosts::parse(&t))
            .map_err(|e| format!("reading {}: {e}", path.display()))
    }

    /// The name of `ip`, if the file gives one.
    pub fn name_of(&self, ip: IpAddr) -> Option<&str> {
        self.names.get(&ip.to_canonical()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_name_of_first_line_wins() {
        let h = Hosts::parse("# c\n127.0.0.1 localhost lh\n127.0.0.1 other\n::1 ip6-localhost\n");
        assert_eq!(h.name_of("127.0.0.1".parse().unwrap()), Some("localhost"));
        assert_eq!(
            h.name_of("::ffff:127.0.0.1".parse().unwrap()),
            Some("localhost")
        );
        assert_eq!(h.name_of("::1".parse().unwrap()), Some("ip6-localhost"));
        assert_eq!(h.name_of("10.0.0.1".parse().unwrap()), None);
    }
}
