//! The environment of a program started for a connection or a datagram:
//! forkserve's own environment, minus what belongs to forkserve (LISTEN_*,
//! NOTIFY_SOCKET, WATCHDOG_*) or to an outer UCSPI server (a stale PROTO,
//! TCPREMOTEIP…), plus the UCSPI variables of this peer, as ucspi-tcp's
//! tcpserver, ucspi-unix's unixserver and s6-ipcserver set them:
//!
//! - TCP: `PROTO=TCP`, `TCPLOCALIP`, `TCPLOCALPORT`, `TCPREMOTEIP`,
//!   `TCPREMOTEPORT`, and with `--resolve` `TCPLOCALHOST`/`TCPREMOTEHOST` when
//!   /etc/hosts names the address. IPv6 addresses go in the same variables, in
//!   their canonical text (as s6-tcpserver6 does); an IPv4 client on a dual-stack
//!   socket appears as plain IPv4, not `::ffff:a.b.c.d`.
//! - Unix: `PROTO=UNIX`, `UNIXLOCALPATH`, `UNIXREMOTEEUID`, `UNIXREMOTEEGID`,
//!   `UNIXREMOTEPID` (ucspi-unix), and s6's `IPCREMOTEEUID`, `IPCREMOTEEGID`,
//!   `IPCLOCALPATH`, `IPCREMOTEPATH` (the client's bound path, when it has one).
//!   `PROTO` is `UNIX`, not s6's `IPC`: the UCSPI rule is that a program finds
//!   `${PROTO}REMOTEEUID`, and only the UNIX set is complete (it has the pid), so
//!   `UNIX` keeps that rule true; programs that read IPC* by name find them too.
//! - Datagrams: `PROTO=UDP` with `UDPLOCALIP`, `UDPLOCALPORT`, `UDPREMOTEIP`,
//!   `UDPREMOTEPORT` (the same naming rule; inetd sets nothing), or for unixgram
//!   the Unix set from the sender's credentials.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::peer::Peer;
use crate::sys;

use super::hosts::Hosts;

/// Variables that never pass from forkserve's environment to a program.
const DROPPED: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "PROTO",
    "TCPCONNNUM",
    "IPCCONNNUM",
];

/// Prefixes of UCSPI variables an outer server may have left: never passed on,
/// so a program sees only this connection's facts.
const DROPPED_PREFIXES: &[&str] = &[
    "TCPLOCAL",
    "TCPREMOTE",
    "TCP6LOCAL",
    "TCP6REMOTE",
    "UNIXLOCAL",
    "UNIXREMOTE",
    "IPCLOCAL",
    "IPCREMOTE",
    "UDPLOCAL",
    "UDPREMOTE",
];

fn dropped(name: &[u8]) -> bool {
    DROPPED.iter().any(|d| d.as_bytes() == name)
        || DROPPED_PREFIXES
            .iter()
            .any(|p| name.starts_with(p.as_bytes()))
}

/// `NAME=VALUE` as a C string (a NUL in the value is cut there).
pub fn var(name: &str, value: impl AsRef<OsStr>) -> CString {
    let mut bytes = Vec::with_capacity(name.len() + 1 + value.as_ref().len());
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(b'=');
    bytes.extend(value.as_ref().as_bytes().iter().take_while(|&&b| b != 0));
    CString::new(bytes).expect("NULs were cut")
}

/// The inherited part of every program's environment, built once.
pub struct BaseEnv {
    vars: Vec<CString>,
}

impl BaseEnv {
    /// forkserve's environment now, without the dropped variables.
    pub fn from_process() -> BaseEnv {
        let vars = std::env::vars_os()
            .filter(|(k, _)| !dropped(k.as_bytes()))
            .filter_map(|(k, v)| {
                let mut b = k.into_vec();
                b.push(b'=');
                b.extend(v.into_vec());
                CString::new(b).ok()
            })
            .collect();
        BaseEnv { vars }
    }

    /// The whole environment: the base, then `extra` (which wins: a later
    /// `NAME=` replaces an inherited one).
    pub fn with<'a>(&'a self, extra: &'a [CString]) -> Vec<&'a CStr> {
        let overridden = |v: &CString| {
            let name = v.as_bytes().split(|&b| b == b'=').next().unwrap_or(&[]);
            extra.iter().any(|e| {
                e.as_bytes().starts_with(name) && e.as_bytes().get(name.len()) == Some(&b'=')
            })
        };
        self.vars
            .iter()
            .filter(|v| extra.is_empty() || !overridden(v))
            .chain(extra.iter())
            .map(CString::as_c_str)
            .collect()
    }
}

/// Splits `NAME=VALUE` for std's Command.
pub fn split(v: &CStr) -> (OsString, OsString) {
    let b = v.to_bytes();
    let eq = b.iter().position(|&c| c == b'=').unwrap_or(b.len());
    let value = b.get(eq + 1..).unwrap_or(&[]);
    (
        OsStr::from_bytes(&b[..eq]).to_os_string(),
        OsStr::from_bytes(value).to_os_string(),
    )
}

/// An IP as UCSPI servers print it: IPv4-mapped IPv6 addresses as IPv4.
fn ip_text(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

fn inet_vars(
    proto: &str,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    hosts: Option<&Hosts>,
) -> Vec<CString> {
    let mut out = vec![var("PROTO", proto)];
    let name = |side: &str| format!("{proto}{side}");
    if let Some(l) = local {
        out.push(var(&name("LOCALIP"), ip_text(l.ip())));
        out.push(var(&name("LOCALPORT"), l.port().to_string()));
        if let Some(h) = hosts.and_then(|h| h.name_of(l.ip())) {
            out.push(var(&name("LOCALHOST"), h));
        }
    }
    out.push(var(&name("REMOTEIP"), ip_text(remote.ip())));
    out.push(var(&name("REMOTEPORT"), remote.port().to_string()));
    if let Some(h) = hosts.and_then(|h| h.name_of(remote.ip())) {
        out.push(var(&name("REMOTEHOST"), h));
    }
    out
}

/// The text of a Unix address (`@name` for an abstract one); None when unbound.
fn unix_path(addr: Option<(Vec<u8>, bool)>) -> Option<OsString> {
    let (name, is_abstract) = addr?;
    if name.is_empty() {
        return None;
    }
    let mut b = Vec::with_capacity(name.len() + 1);
    if is_abstract {
        b.push(b'@');
    }
    b.extend(name);
    Some(OsString::from_vec(b))
}

fn unix_vars(
    peer: &Peer,
    local_path: Option<OsString>,
    remote_path: Option<OsString>,
) -> Vec<CString> {
    let mut out = vec![var("PROTO", "UNIX")];
    if let Some(p) = &local_path {
        out.push(var("UNIXLOCALPATH", p));
        out.push(var("IPCLOCALPATH", p));
    }
    if let Peer::Unix { uid, gid, pid, .. } = peer {
        if let Some(u) = uid {
            out.push(var("UNIXREMOTEEUID", u.to_string()));
            out.push(var("IPCREMOTEEUID", u.to_string()));
        }
        if let Some(g) = gid {
            out.push(var("UNIXREMOTEEGID", g.to_string()));
            out.push(var("IPCREMOTEEGID", g.to_string()));
        }
        if let Some(p) = pid {
            out.push(var("UNIXREMOTEPID", p.to_string()));
        }
    }
    if let Some(p) = &remote_path {
        out.push(var("IPCREMOTEPATH", p));
    }
    out
}

/// The UCSPI variables of an accepted stream connection.
pub fn for_stream(conn: BorrowedFd<'_>, peer: &Peer, hosts: Option<&Hosts>) -> Vec<CString> {
    let local = sys::local_addr(conn).ok();
    match peer {
        Peer::Ip(remote) => inet_vars("TCP", local.and_then(|a| a.to_inet()), *remote, hosts),
        Peer::Unix { .. } => {
            let remote = sys::peer_addr(conn).ok().and_then(|a| a.to_unix());
            unix_vars(
                peer,
                unix_path(local.and_then(|a| a.to_unix())),
                unix_path(remote),
            )
        }
    }
}

/// The variables of a datagram's sender; `local` is the listener's address text
/// (`udp:127.0.0.1:8888`, `unixgram:/run/x.sock`).
pub fn for_datagram(peer: &Peer, local: &str, hosts: Option<&Hosts>) -> Vec<CString> {
    match peer {
        Peer::Ip(remote) => {
            let l = local
                .strip_prefix("udp:")
                .and_then(|a| a.parse::<SocketAddr>().ok());
            inet_vars("UDP", l, *remote, hosts)
        }
        Peer::Unix { addr, .. } => {
            let l = local.strip_prefix("unixgram:").map(OsString::from);
            unix_vars(peer, l, addr.as_ref().map(OsString::from))
        }
    }
}
