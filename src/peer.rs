//! Who is on the other end of a connection or datagram: an IP address and port, or,
//! for Unix sockets, the peer process's credentials (SO_PEERCRED / SCM_CREDENTIALS).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The other end of a connection or the sender of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP or UDP peer.
    Ip(SocketAddr),
    /// A Unix-socket peer; the ids are absent when the kernel did not say them (a
    /// datagram sent without credentials).
    Unix {
        uid: Option<u32>,
        gid: Option<u32>,
        pid: Option<i32>,
        /// The sender's bound address, for datagrams (`None` when it bound none).
        addr: Option<String>,
    },
}

/// What per-source limits count by: the peer IP, or the peer uid for Unix sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    Ip(IpAddr),
    Uid(u32),
    Unknown,
}

impl Peer {
    /// The key that `--max-per-source` counts by.
    pub fn source_key(&self) -> SourceKey {
        match self {
            Peer::Ip(a) => SourceKey::Ip(a.ip()),
            Peer::Unix { uid: Some(u), .. } => SourceKey::Uid(*u),
            Peer::Unix { .. } => SourceKey::Unknown,
        }
    }

    /// The UCSPI environment (tcpserver, s6-ipcserver) describing this peer, for a
    /// handler that runs a program for the connection: `PROTO`, `TCPREMOTEIP`,
    /// `TCPREMOTEPORT`, `TCPLOCALIP`, `TCPLOCALPORT`, or for Unix peers
    /// `UNIXREMOTEEUID`, `UNIXREMOTEEGID`, `UNIXREMOTEPID`. (Workers do not put it
    /// in their own environment: setting it costs every connection and only a
    /// program started with `Command::envs(conn.ucspi_env())` reads it.)
    pub fn ucspi_env(&self, local: Option<SocketAddr>) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        match self {
            Peer::Ip(a) => {
                env.push(("PROTO", "TCP".to_string()));
                env.push(("TCPREMOTEIP", a.ip().to_string()));
                env.push(("TCPREMOTEPORT", a.port().to_string()));
                if let Some(l) = local {
                    env.push(("TCPLOCALIP", l.ip().to_string()));
                    env.push(("TCPLOCALPORT", l.port().to_string()));
                }
            }
            Peer::Unix { uid, gid, pid, .. } => {
                env.push(("PROTO", "UNIX".to_string()));
                if let Some(u) = uid {
                    env.push(("UNIXREMOTEEUID", u.to_string()));
                }
                if let Some(g) = gid {
                    env.push(("UNIXREMOTEEGID", g.to_string()));
                }
                if let Some(p) = pid {
                    env.push(("UNIXREMOTEPID", p.to_string()));
                }
            }
        }
        env
    }

    /// The peer's IP address and port, for TCP and UDP peers.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            Peer::Ip(a) => Some(*a),
            Peer::Unix { .. } => None,
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::Ip(ip) => write!(f, "{ip}"),
            SourceKey::Uid(u) => write!(f, "uid={u}"),
            SourceKey::Unknown => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(a) => write!(f, "{a}"),
            Peer::Unix { uid, pid, addr, .. } => {
                let mut sep = "";
                if let Some(u) = uid {
                    write!(f, "uid={u}")?;
                    sep = " ";
                }
                if let Some(p) = pid {
                    write!(f, "{sep}pid={p}")?;
                    sep = " ";
                }
                if let Some(a) = addr {
                    write!(f, "{sep}{a}")?;
                    sep = " ";
                }
                if sep.is_empty() {
                    f.write_str("unix peer")?;
                }
                Ok(())
            }
        }
    }
}
