//! systemd integration: sockets passed by socket activation (LISTEN_FDS, with
//! LISTEN_FDNAMES), connections passed inetd-style, and sd_notify messages
//! (READY=1, STATUS=, STOPPING=1, RELOADING=1, EXTEND_TIMEOUT_USEC=, WATCHDOG=1).

use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::Duration;

use crate::proctitle;
use crate::sys;

/// One descriptor systemd passed, with its FileDescriptorName= (or `unknown`).
#[derive(Debug)]
pub struct PassedFd {
    pub name: String,
    pub fd: OwnedFd,
}

impl PassedFd {
    /// True when this is a connected socket (Accept=yes) rather than a listener.
    pub fn is_connection(&self) -> bool {
        match sys::socket_kind(self.fd.as_fd()) {
            Ok(k) => k.sock_type == libc::SOCK_STREAM && !k.listening,
            Err(_) => false,
        }
    }
}

/// Set by a master that re-executes itself (binary upgrade) holding sockets systemd
/// passed: the new image gets them through the upgrade's hand-over, not LISTEN_FDS.
pub const ACTIVATED_ENV: &str = "FORKSERVE_SOCKET_ACTIVATED";

/// True when this process was started by socket activation (LISTEN_FDS), or is
/// the re-executed image of such a master. Read it before [`take_listen_fds`].
pub fn socket_activated() -> bool {
    std::env::var_os("LISTEN_FDS").is_some() || std::env::var_os(ACTIVATED_ENV).is_some()
}

/// Takes the sockets systemd passed to this process (fds 3 …), if LISTEN_PID names
/// us, and removes LISTEN_* from the environment so no child sees them.
pub fn take_listen_fds() -> Vec<PassedFd> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|p| p == sys::getpid());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        proctitle::unsetenv(key);
    }
    if !pid_ok || count <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for i in 0..count {
        let Some(fd) = sys::adopt_fd(3 + i) else {
            log::warn!("systemd: LISTEN_FDS names fd {} but it is not open", 3 + i);
            continue;
        };
        let _ = sys::set_cloexec(fd.as_fd(), true);
        let name = names
            .get(i as usize)
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string());
        out.push(PassedFd { name, fd });
    }
    out
}

/// The service manager's notification socket (NOTIFY_SOCKET), taken out of the
/// environment so children never notify.
pub struct Notifier {
    socket: Option<(UnixDatagram, UnixAddr)>,
    watchdog: Option<Duration>,
    /// NOTIFY_SOCKET and WATCHDOG_USEC as received, for a re-executed image.
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Notifier {
    /// Reads and unsets NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID.
    pub fn from_env() -> Notifier {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let wd_pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
            .is_none_or(|p| p == sys::getpid());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && wd_pid_ok)
            .map(Duration::from_micros);
        let mut env = Vec::new();
        if let Some(p) = &path {
            env.push(("NOTIFY_SOCKET".into(), p.clone()));
        }
        if let Some(w) = watchdog {
            env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string().into()));
            env.push(("WATCHDOG_PID".into(), sys::getpid().to_string().into()));
        }
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            proctitle::unsetenv(key);
        }
        let socket = path.and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            let addr = if let Some(name) = s.strip_prefix('@') {
                UnixAddr::from_abstract_name(name.as_bytes())
            } else {
                UnixAddr::from_pathname(&s)
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(sock), Ok(addr)) => {
                    let _ = sock.set_nonblocking(true);
                    Some((sock, addr))
                }
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("NOTIFY_SOCKET={s}: {e}");
                    None
                }
            }
        });
        Notifier {
            socket,
            watchdog,
            env,
        }
    }

    /// The environment that lets a re-executed image of this process notify.
    pub fn env_for_exec(&self) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        self.env.clone()
    }

    /// A notifier that sends nothing (children, tests).
    pub fn none() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
            env: Vec::new(),
        }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send WATCHDOG=1 (half of WATCHDOG_USEC), when asked for.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Sends one notification (`READY=1`, `STATUS=…`; several lines allowed).
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            log::debug!("sd_notify {state:?}: {e}");
        }
    }

    /// The raw descriptor, for children to close.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.socket.as_ref().map(|(s, _)| s.as_raw_fd())
    }
}
