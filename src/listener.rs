//! Binding listeners before the first fork: socket options, the listen backlog, stale
//! Unix socket files, socket file modes, and sockets inherited from systemd. Also
//! [`AcceptErrors`], what every accept loop does when accept(2) fails.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::addr::{ListenAddr, UnixPath};
use crate::logging::RateLimitedLog;
use crate::sys;

/// A bound socket, ready to accept connections or receive datagrams.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    addr: ListenAddr,
    stream: bool,
    created: Option<PathBuf>,
    inherited: bool,
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The backlog every stream listener gets: large, so bursts of clients wait in the
/// kernel rather than in SYN retransmits, capped by net.core.somaxconn.
fn backlog() -> i32 {
    sys::somaxconn().clamp(128, 4096)
}

fn unix_raw(path: &UnixPath) -> io::Result<sys::RawAddr> {
    match path {
        UnixPath::File(p) => sys::RawAddr::from_unix(p.as_os_str().as_bytes(), false),
        UnixPath::Abstract(n) => sys::RawAddr::from_unix(n.as_bytes(), true),
    }
}

/// Makes way for a new socket file at `path`: removes a stale socket (one nothing
/// accepts on); refuses a live socket or any other kind of file.
fn clear_stale_socket(path: &Path, sock_type: i32) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "file exists and is not a socket; refusing to replace it",
        ));
    }
    let raw = unix_raw(&UnixPath::File(path.to_path_buf()))?;
    match sys::connect(libc::AF_UNIX, sock_type, &raw) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a live server is listening on this socket",
        )),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            log::info!("removing stale socket file {}", path.display());
            fs::remove_file(path)
        }
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a live socket of another type is bound to this path",
        )),
        Err(e) => Err(e),
    }
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => "address already in use".to_string(),
        Some(libc::EACCES) => "permission denied".to_string(),
        Some(libc::EADDRNOTAVAIL) => "address not available on this host".to_string(),
        _ => {
            let s = e.to_string();
            // "Address already in use (os error 98)" -> "address already in use"
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => s,
            }
        }
    }
}

impl Listener {
    /// Binds `addr`. Unix socket files get `mode`; the error names the address.
    pub fn bind(addr: &ListenAddr, mode: u32) -> Result<Listener, String> {
        Listener::bind_inner(addr, mode).map_err(|e| format!("{addr}: {}", describe(&e)))
    }

    fn bind_inner(addr: &ListenAddr, mode: u32) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) | ListenAddr::Udp(a) => {
                let stream = matches!(addr, ListenAddr::Tcp(_));
                let family = if a.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                let ty = if stream {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_DGRAM
                };
                let fd = sys::socket(family, ty | libc::SOCK_NONBLOCK)?;
                if stream {
                    sys::set_int_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
                }
                if a.is_ipv6() {
                    sys::set_int_opt(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
                }
                sys::bind(fd.as_fd(), &sys::RawAddr::from_inet(a))?;
                if stream {
                    sys::listen(fd.as_fd(), backlog())?;
                }
                let real = sys::local_addr(fd.as_fd())?
                    .to_inet()
                    .ok_or_else(|| io::Error::other("bound address is not IP"))?;
                let addr = if stream {
                    ListenAddr::Tcp(real)
                } else {
                    ListenAddr::Udp(real)
                };
                Ok(Listener {
                    fd,
                    addr,
                    stream,
                    created: None,
                    inherited: false,
                })
            }
            ListenAddr::Unix(p) | ListenAddr::UnixGram(p) => {
                let stream = matches!(addr, ListenAddr::Unix(_));
                let ty = if stream {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_DGRAM
                };
                let fd = sys::socket(libc::AF_UNIX, ty | libc::SOCK_NONBLOCK)?;
                if !stream {
                    // Ask for each sender's credentials (per-source limits, logs).
                    sys::set_int_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
                }
                let mut created = None;
                if let UnixPath::File(path) = p {
                    clear_stale_socket(path, ty)?;
                    // Created with no access for anyone, then opened up to `mode`:
                    // no window in which the socket is more open than asked.
                    let old = sys::umask(0o177);
                    let res = sys::bind(fd.as_fd(), &unix_raw(p)?);
                    sys::umask(old);
                    res?;
                    created = Some(path.clone());
                    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
                        let _ = fs::remove_file(path);
                        return Err(e);
                    }
                } else {
                    sys::bind(fd.as_fd(), &unix_raw(p)?)?;
                }
                if stream {
                    sys::listen(fd.as_fd(), backlog())?;
                }
                Ok(Listener {
                    fd,
                    addr: addr.clone(),
                    stream,
                    created,
                    inherited: false,
                })
            }
            ListenAddr::Systemd(name) => Err(io::Error::other(format!(
                "no socket named '{name}' was passed by systemd (LISTEN_FDS)"
            ))),
        }
    }

    /// Wraps a socket this process inherited (from systemd). It is made non-blocking
    /// and never unlinked by forkserve.
    pub fn from_inherited(fd: OwnedFd) -> io::Result<Listener> {
        let kind = sys::socket_kind(fd.as_fd())?;
        let stream = kind.sock_type == libc::SOCK_STREAM;
        if stream && !kind.listening {
            return Err(io::Error::other("stream socket is not listening"));
        }
        set_nonblocking(fd.as_fd())?;
        sys::set_cloexec(fd.as_fd(), true)?;
        let local = sys::local_addr(fd.as_fd())?;
        let addr = if let Some(a) = local.to_inet() {
            if stream {
                ListenAddr::Tcp(a)
            } else {
                ListenAddr::Udp(a)
            }
        } else if let Some((name, is_abstract)) = local.to_unix() {
            if !stream {
                sys::set_int_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
            }
            let p = if is_abstract {
                UnixPath::Abstract(String::from_utf8_lossy(&name).into_owned())
            } else {
                UnixPath::File(PathBuf::from(std::ffi::OsStr::from_bytes(&name)))
            };
            if stream {
                ListenAddr::Unix(p)
            } else {
                ListenAddr::UnixGram(p)
            }
        } else {
            return Err(io::Error::other(format!(
                "unsupported socket family {}",
                local.family()
            )));
        };
        Ok(Listener {
            fd,
            addr,
            stream,
            created: None,
            inherited: true,
        })
    }

    /// Wraps a listener a previous image of this master bound and handed over
    /// across a binary upgrade: it stays ours (its socket file is removed at exit).
    pub fn handed_over(fd: OwnedFd, created: Option<PathBuf>) -> io::Result<Listener> {
        let mut l = Listener::from_inherited(fd)?;
        l.inherited = false;
        l.created = created;
        Ok(l)
    }

    /// True for a socket inherited from systemd (never shut down or unlinked).
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// Sets the socket's receive buffer to `bytes` (SO_RCVBUFFORCE when the process
    /// may, else SO_RCVBUF, capped by net.core.rmem_max); returns what the kernel
    /// granted (it reports double the asked size, its bookkeeping included). A
    /// buffer already as large (systemd's ReceiveBuffer=) is left alone.
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<usize> {
        let want = i32::try_from(bytes).unwrap_or(i32::MAX);
        let fd = self.as_fd();
        let current = sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        if current / 2 >= want {
            return Ok(current.max(0) as usize);
        }
        if sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_err() {
            sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, want)?;
        }
        sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).map(|n| n.max(0) as usize)
    }

    /// True for stream (connection) sockets, false for datagram sockets.
    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// The socket file this listener created, if any.
    pub fn created_file(&self) -> Option<&Path> {
        self.created.as_deref()
    }

    /// Gives the socket file to `uid:gid` (before a privilege drop).
    pub fn chown_file(&self, uid: u32, gid: u32) -> io::Result<()> {
        match &self.created {
            Some(p) => sys::chown(p, uid, gid),
            None => Ok(()),
        }
    }

    /// True if `uid` (with group `gid`) will be able to remove the socket file this
    /// listener created: it can write and search its directory, and the sticky bit
    /// does not stand in the way (the file is handed to it before the drop).
    pub fn removable_by(&self, uid: u32, gid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(dir) = self.created.as_deref().and_then(Path::parent) else {
            return true;
        };
        let Ok(meta) = fs::metadata(dir) else {
            return false;
        };
        let mode = meta.mode();
        let bits = if meta.uid() == uid {
            mode >> 6
        } else if meta.gid() == gid {
            mode >> 3
        } else {
            mode
        };
        bits & 0o3 == 0o3
    }

    /// Removes the socket file this listener created (the master, at exit). Files
    /// systemd created are never touched.
    pub fn remove_file(&mut self) {
        if let Some(p) = self.created.take() {
            match fs::remove_file(&p) {
                Ok(()) => log::debug!("removed {}", p.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("removing {}: {e}", p.display()),
            }
        }
    }
}

/// The listeners' addresses as titles show them: `tcp:127.0.0.1:9999 unix:/x.sock`.
pub fn addrs_text(listeners: &[Listener]) -> String {
    let addrs: Vec<String> = listeners.iter().map(|l| l.addr().to_string()).collect();
    addrs.join(" ")
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // Only ever called on the master's own copy before any fork.
    let sock = std::net::UdpSocket::from(fd.try_clone_to_owned()?);
    sock.set_nonblocking(true)
}

/// The default directory for Unix sockets: `$RUNTIME_DIRECTORY` (systemd's
/// RuntimeDirectory=), else `$XDG_RUNTIME_DIR/forkserve`, else `/tmp/forkserve-$UID`.
/// The directory is created mode 0700 when missing; an existing one in /tmp must be
/// ours and not a symlink.
pub fn runtime_dir() -> Result<PathBuf, String> {
    if let Some(d) = first_runtime_directory() {
        return Ok(d);
    }
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("forkserve"),
        _ => PathBuf::from(format!("/tmp/forkserve-{}", sys::getuid())),
    };
    ensure_private_dir(&dir).map_err(|e| format!("runtime directory {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The default directory for Unix sockets when the server will drop privileges to
/// `run_as` (`--user`): the same as [`runtime_dir`] without `--user`, or when not
/// running as root. Run as root with `--user`, the processes that must reach and
/// bind sockets there (the chat broker and its workers) and the master that removes
/// the socket files at exit all run as that user, so the directory is theirs:
/// `$RUNTIME_DIRECTORY` (handed over to the user if root owns it), else
/// `/tmp/forkserve-UID` with the user's uid, made (mode 0700) and handed over
/// before anything is bound in it. `$XDG_RUNTIME_DIR` is left out: it belongs to
/// the session that started the server, and the user cannot enter it.
pub fn runtime_dir_as(run_as: Option<&str>) -> Result<PathBuf, String> {
    let Some(name) = run_as else {
        return runtime_dir();
    };
    if sys::geteuid() != 0 {
        return runtime_dir();
    }
    // An unknown user is refused (exit 78) where privileges are dropped.
    let Ok(Some(user)) = crate::users::lookup_user(name) else {
        return runtime_dir();
    };
    if user.uid == 0 {
        return runtime_dir();
    }
    let dir = match first_runtime_directory() {
        Some(d) => d,
        None => PathBuf::from(format!("/tmp/forkserve-{}", user.uid)),
    };
    hand_over_dir(&dir, user.uid, user.gid)
        .map_err(|e| format!("runtime directory {} for --user {name}: {e}", dir.display()))?;
    Ok(dir)
}

/// `$RUNTIME_DIRECTORY`'s first entry (systemd may pass several, ':'-separated).
fn first_runtime_directory() -> Option<PathBuf> {
    let d = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = d.to_string_lossy().split(':').next()?.to_string();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// Makes `dir` a private directory of `uid`: created 0700 if missing; an existing
/// one must be a real directory owned by that user or by us (root), and is then
/// given to the user.
fn hand_over_dir(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("exists and is not a directory"));
    }
    if meta.uid() != uid && meta.uid() != sys::geteuid() {
        return Err(io::Error::other(format!(
            "owned by uid {}, neither by the user (uid {uid}) nor by us",
            meta.uid()
        )));
    }
    if meta.uid() != uid || meta.gid() != gid {
        sys::chown(dir, uid, gid)?;
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("exists and is not a directory"));
    }
    if meta.uid() != sys::getuid() {
        return Err(io::Error::other(format!(
            "owned by uid {}, not by us (uid {})",
            meta.uid(),
            sys::getuid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The first pause after accept(2) fails for want of a resource.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between attempts while accept(2) keeps failing.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// What an accept loop (the master's, a server process's, the chat broker's) does
/// when accept(2) fails. A failure that will repeat at once (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM, or anything unexpected) must not be retried at once: the
/// listener stays readable, so the loop would spin and log without end. It pauses
/// accepting instead (100 ms, doubling to 1 s while failures go on) and logs at
/// most one line a second. A connection that went away before it was accepted
/// (ECONNABORTED, EPROTO and the other network errors accept(2) passes on), an ICMP
/// error on a datagram socket, or an interrupted call is no reason to pause.
#[derive(Debug)]
pub struct AcceptErrors {
    pause: Duration,
    log: RateLimitedLog,
}

impl Default for AcceptErrors {
    fn default() -> AcceptErrors {
        AcceptErrors {
            pause: FIRST_ACCEPT_PAUSE,
            log: RateLimitedLog::default(),
        }
    }
}

impl AcceptErrors {
    /// After an accept of `what` (a service name) on `addr` failed with `e`: how
    /// long to stop accepting, or `None` to go on. Logs (rate-limited) when it
    /// pauses.
    pub fn on_error(
        &mut self,
        what: &str,
        addr: &dyn std::fmt::Display,
        e: &io::Error,
    ) -> Option<Duration> {
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => None,
            // accept(2) passes on network errors of the pending connection (the
            // man page's list), recvfrom(2) ICMP errors: that one is lost, not the
            // listener. Go on.
            Some(
                libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ECONNREFUSED
                | libc::ECONNRESET,
            ) => {
                log::debug!("{what}: accept on {addr}: {e}");
                None
            }
            _ => {
                let pause = self.pause;
                self.pause = (self.pause * 2).min(MAX_ACCEPT_PAUSE);
                self.log.log(|n| {
                    log::error!(
                        "{what}: accept on {addr}: {e}; pausing accepts for {} ms{}",
                        pause.as_millis(),
                        RateLimitedLog::more(n)
                    )
                });
                Some(pause)
            }
        }
    }

    /// After an accept succeeded: the next failure pauses briefly again.
    pub fn on_success(&mut self) {
        if self.pause != FIRST_ACCEPT_PAUSE {
            self.pause = FIRST_ACCEPT_PAUSE;
        }
    }
}
