//! The thin OS layer: every `unsafe` call forkserve makes on its own lives here,
//! each wrapped once in a safe function or type that the rest of the crate uses.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_ssize(ret: libc::ssize_t) -> io::Result<usize> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// What `fork` returned, seen from the side that called it.
pub enum Forked {
    Parent(libc::pid_t),
    Child,
}

/// Forks the process. The master is single-threaded, so the child is a faithful copy
/// that may run any code (allocation, logging) before it exits.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no preconditions in a single-threaded process; callers are the
    // master and the long-lived server processes before they start any thread.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Ends the process at once, without unwinding or running atexit handlers: a forked
/// child must never return into (or tear down) the master's state.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by {}", signal_name(s)),
        }
    }
}

/// The conventional name of a signal number (`SIGKILL`), or `signal N`.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// Reaps one exited child without blocking: `Ok(None)` when no child has exited yet,
/// `Err(ECHILD)` when there are no children at all.
pub fn reap_one() -> io::Result<Option<(libc::pid_t, ExitStatus)>> {
    let mut status = 0;
    // SAFETY: waitpid writes only to the status integer we pass.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => {
            let st = if libc::WIFSIGNALED(status) {
                ExitStatus::Signal(libc::WTERMSIG(status))
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            };
            Ok(Some((pid, st)))
        }
    }
}

/// Waits (blocking) for the child `pid` to end.
fn wait_child(pid: libc::pid_t) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only to the status integer we pass.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    })
}

/// Waits up to `limit` for the child `pid` to end; its exit code (128 + signal
/// for a signal death), or None when it is still running then.
pub fn wait_for(pid: libc::pid_t, limit: std::time::Duration) -> Option<i32> {
    let until = std::time::Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to the status integer we pass.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            });
        }
        if r == -1 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Some(-1);
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Points stdin, stdout and stderr at /dev/null and closes every other
/// descriptor (a throwaway child that may never exit).
pub fn detach_from_descriptors() {
    // SAFETY: open, dup2 and close_range on descriptor numbers only.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

/// Sets `no_new_privs`: nothing this process executes may gain privileges
/// (setuid bits, file capabilities).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// Runs `f` in a throwaway child and waits for it, for work whose memory and
/// descriptors must never live in the calling process (the master opening a
/// database to check it before it forks workers). Returns `f`'s verdict: `Ok`,
/// or its exit code and message (or how the child died, with code 70).
pub fn run_in_child(
    f: impl FnOnce() -> Result<(), (i32, String)>,
) -> io::Result<Result<(), (i32, String)>> {
    use std::io::{Read, Write};
    let (mut reader, mut writer) = io::pipe()?;
    match fork()? {
        Forked::Child => {
            drop(reader);
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err((70, "the check panicked".to_string())));
            let code = match verdict {
                Ok(()) => 0,
                Err((code, msg)) => {
                    let _ = writer.write_all(msg.as_bytes());
                    code.max(1)
                }
            };
            exit_now(code)
        }
        Forked::Parent(pid) => {
            drop(writer);
            let mut msg = String::new();
            let _ = reader.read_to_string(&mut msg);
            Ok(match wait_child(pid)? {
                ExitStatus::Code(0) => Ok(()),
                ExitStatus::Code(code) if !msg.is_empty() => Err((code, msg)),
                other => Err((70, format!("the check process ended with {other}"))),
            })
        }
    }
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn kill(pid: libc::pid_t, sig: i32) {
    // SAFETY: kill has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// The device and inode of an open descriptor (fstat), as `JOURNAL_STREAM` names them.
pub fn fd_dev_ino(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat writes into a zeroed stat buffer owned here; a bad fd is EBADF.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstat(fd, &mut st))?;
        Ok((st.st_dev, st.st_ino))
    }
}

pub fn getuid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Puts `sig` back to its default disposition (used by a freshly forked child).
pub fn default_signal(sig: i32) {
    // SAFETY: resetting a disposition to SIG_DFL has no memory effects.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// The signals Rust's runtime catches in every process (its stack-overflow guard).
/// A forked child puts them back to the default: a SIGSEGV sent to a worker then
/// ends it as SIGSEGV, instead of being swallowed by a handler that only knows
/// about guard pages (and that interrupts the system call it lands in). SIGPIPE,
/// which the runtime ignores rather than catches, stays ignored: writes to a gone
/// peer return EPIPE, which the handlers expect.
pub const RUNTIME_SIGNALS: [i32; 2] = [libc::SIGSEGV, libc::SIGBUS];

/// A set of blocked signals (a signal mask).
#[derive(Clone, Copy)]
pub struct SigMask(libc::sigset_t);

/// Blocks `sigs` in the calling thread; returns the mask that was in force.
pub fn block_signals(sigs: &[i32]) -> SigMask {
    // SAFETY: both sets are initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        let mut old: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        libc::sigemptyset(&mut old);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        SigMask(old)
    }
}

/// Like [`poll`], with `mask` in force while waiting (ppoll): signals blocked
/// elsewhere are delivered only here, never in the middle of a fork.
pub fn ppoll(fds: &mut [PollFd], timeout: Option<Duration>, mask: &SigMask) -> io::Result<usize> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: fds is a valid slice; tsp is null or points to a live timespec; the
    // mask was filled by pthread_sigmask.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tsp, &mask.0) };
    poll_result(n)
}

/// A signalfd(2) for `sigs` (which the caller keeps blocked): non-blocking,
/// close-on-exec.
pub fn signalfd(sigs: &[i32]) -> io::Result<OwnedFd> {
    // SAFETY: the set is initialised by sigemptyset; the new fd is ours.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads the pending signals from a signalfd (one read takes them all: a
/// standard signal is pending at most once); true if there was any.
pub fn read_signalfd(fd: BorrowedFd<'_>) -> bool {
    let mut info = [0u8; 128 * 4];
    // SAFETY: info is a writable buffer of the size given.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            info.as_mut_ptr() as *mut libc::c_void,
            info.len(),
        )
    };
    n > 0
}

/// Stops a listening socket for every process that holds it (shutdown SHUT_RD):
/// a connection made during a drain is refused instead of waiting unserved.
pub fn shutdown_read(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown has no memory effects.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD);
    }
}

/// Unblocks every signal in the calling thread.
pub fn unblock_all_signals() {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Unblocks `sigs` in this thread's signal mask.
pub fn unblock_signals(sigs: &[i32]) {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Closes a raw descriptor this process owns through some other handle that will never
/// be dropped (a forked child closing the master's listeners before `_exit`).
pub fn close_fd(fd: RawFd) {
    // SAFETY: closing an fd has no memory effects; callers never use `fd` again.
    unsafe {
        libc::close(fd);
    }
}

/// Sets or clears FD_CLOEXEC on a descriptor.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a borrowed, valid fd.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFD))?;
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags))?;
    }
    Ok(())
}

/// Takes ownership of an inherited descriptor number (systemd's fds from 3 on, stdin).
///
/// Returns `None` when the number is not an open descriptor.
pub fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only checks that the number is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the fd is open and was handed to this process to own (by systemd, inetd
    // or the shell); nothing else in the process holds it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------
// Sockets

/// The kind of socket a descriptor is, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketKind {
    pub family: i32,
    pub sock_type: i32,
    pub listening: bool,
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    let mut val: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val and len are valid for writes of the sizes given.
    unsafe {
        cvt(libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &mut val as *mut _ as *mut libc::c_void,
            &mut len,
        ))?
    };
    Ok(val)
}

fn setsockopt<T>(fd: BorrowedFd<'_>, level: i32, opt: i32, val: &T) -> io::Result<()> {
    // SAFETY: val points to a live T of the size given.
    unsafe {
        cvt(libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        ))?
    };
    Ok(())
}

pub fn get_int_opt(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    getsockopt_int(fd, level, opt)
}

pub fn set_int_opt(fd: BorrowedFd<'_>, level: i32, opt: i32, val: i32) -> io::Result<()> {
    setsockopt(fd, level, opt, &(val as libc::c_int))
}

/// The address family of a socket (AF_UNIX, AF_INET, AF_INET6).
pub fn socket_family(fd: BorrowedFd<'_>) -> io::Result<i32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

/// Family, type and listening state of a socket descriptor (`Err` if it is no socket).
pub fn socket_kind(fd: BorrowedFd<'_>) -> io::Result<SocketKind> {
    let sock_type = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let family = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let listening = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    Ok(SocketKind {
        family,
        sock_type,
        listening,
    })
}

/// Credentials of the process at the other end of a Unix socket (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ucred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<Ucred> {
    // SAFETY: ucred is plain data; getsockopt writes at most len bytes.
    unsafe {
        let mut cred: libc::ucred = zeroed();
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        cvt(libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        ))?;
        Ok(Ucred {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }
}

/// Sets SO_RCVTIMEO and SO_SNDTIMEO (a worker's idle timeout).
pub fn set_io_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)
}

/// A socket address in the kernel's format, for the Unix and IP families.
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            storage: unsafe { zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    pub fn from_inet(addr: &SocketAddr) -> RawAddr {
        let mut raw = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(&mut raw.storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                raw.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut raw.storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                raw.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        raw
    }

    /// A Unix address: a path, or an abstract name when `abstract_name` is set.
    pub fn from_unix(name: &[u8], abstract_name: bool) -> io::Result<RawAddr> {
        let mut raw = RawAddr::empty();
        // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_un.
        let sun = unsafe { &mut *(&mut raw.storage as *mut _ as *mut libc::sockaddr_un) };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let offset = abstract_name as usize;
        if name.len() + offset >= sun.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket path too long (at most 107 bytes)",
            ));
        }
        for (i, b) in name.iter().enumerate() {
            sun.sun_path[i + offset] = *b as libc::c_char;
        }
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        raw.len = if abstract_name {
            (base + 1 + name.len()) as libc::socklen_t
        } else {
            (base + name.len() + 1) as libc::socklen_t
        };
        Ok(raw)
    }

    pub fn family(&self) -> i32 {
        self.storage.ss_family as i32
    }

    /// The IP address and port, when this is an AF_INET/AF_INET6 address.
    pub fn to_inet(&self) -> Option<SocketAddr> {
        match self.family() {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// The Unix address: `Some((bytes, is_abstract))`; empty bytes for an unbound peer.
    pub fn to_unix(&self) -> Option<(Vec<u8>, bool)> {
        if self.family() != libc::AF_UNIX {
            return None;
        }
        // SAFETY: the family says the storage holds a sockaddr_un.
        let sun = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_un) };
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        let n = (self.len as usize).saturating_sub(base);
        let bytes: Vec<u8> = sun.sun_path[..n.min(sun.sun_path.len())]
            .iter()
            .map(|&c| c as u8)
            .collect();
        if bytes.is_empty() {
            return Some((Vec::new(), false));
        }
        if bytes[0] == 0 {
            return Some((bytes[1..].to_vec(), true));
        }
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some((bytes[..end].to_vec(), false))
    }
}

/// Creates a socket with close-on-exec set.
pub fn socket(family: i32, sock_type: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket returns a new fd we take ownership of.
    let fd = unsafe { cvt(libc::socket(family, sock_type | libc::SOCK_CLOEXEC, 0))? };
    // SAFETY: fd is new and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn bind(fd: BorrowedFd<'_>, addr: &RawAddr) -> io::Result<()> {
    // SAFETY: addr holds a valid sockaddr of the given length.
    unsafe {
        cvt(libc::bind(
            fd.as_raw_fd(),
            &addr.storage as *const _ as *const libc::sockaddr,
            addr.len,
        ))?
    };
    Ok(())
}

pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen has no memory effects.
    unsafe { cvt(libc::listen(fd.as_raw_fd(), backlog))? };
    Ok(())
}

/// The local address a socket is bound to.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<RawAddr> {
    let mut raw = RawAddr::empty();
    // SAFETY: storage and len describe a writable buffer.
    unsafe {
        cvt(libc::getsockname(
            fd.as_raw_fd(),
            &mut raw.storage as *mut _ as *mut libc::sockaddr,
            &mut raw.len,
        ))?
    };
    Ok(raw)
}

/// The address of the connected peer.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<RawAddr> {
    let mut raw = RawAddr::empty();
    // SAFETY: storage and len describe a writable buffer.
    unsafe {
        cvt(libc::getpeername(
            fd.as_raw_fd(),
            &mut raw.storage as *mut _ as *mut libc::sockaddr,
            &mut raw.len,
        ))?
    };
    Ok(raw)
}

/// Accepts one connection (blocking socket, close-on-exec) and returns the peer address.
pub fn accept(fd: BorrowedFd<'_>) -> io::Result<(OwnedFd, RawAddr)> {
    let mut raw = RawAddr::empty();
    // SAFETY: storage and len describe a writable buffer; the new fd is ours.
    unsafe {
        let conn = cvt(libc::accept4(
            fd.as_raw_fd(),
            &mut raw.storage as *mut _ as *mut libc::sockaddr,
            &mut raw.len,
            libc::SOCK_CLOEXEC,
        ))?;
        Ok((OwnedFd::from_raw_fd(conn), raw))
    }
}

/// Receives one datagram without blocking (MSG_DONTWAIT, so the shared socket's file
/// flags are never touched), with the sender's address and, on Unix sockets with
/// SO_PASSCRED, the sender's credentials.
pub fn recv_from(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, RawAddr, Option<Ucred>)> {
    recv_raw(fd, buf.as_mut_ptr(), buf.len())
}

/// Like [`recv_from`], into the spare capacity of `buf` (cleared first): the
/// buffer is never zeroed, so its pages stay untouched until data lands in them
/// (the master's 64 KiB datagram buffer costs a fork nothing).
pub fn recv_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<(RawAddr, Option<Ucred>)> {
    buf.clear();
    let (n, raw, cred) = recv_raw(fd, buf.as_mut_ptr(), buf.capacity())?;
    // SAFETY: the kernel initialised the first n bytes (n <= capacity).
    unsafe { buf.set_len(n) };
    Ok((raw, cred))
}

fn recv_raw(
    fd: BorrowedFd<'_>,
    ptr: *mut u8,
    len: usize,
) -> io::Result<(usize, RawAddr, Option<Ucred>)> {
    let mut raw = RawAddr::empty();
    let mut iov = libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    };
    // Room for one SCM_CREDENTIALS message, 8-byte aligned.
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer in it refers to a live buffer above.
    unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut raw.storage as *mut _ as *mut libc::c_void;
        msg.msg_namelen = raw.len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        let n = cvt_ssize(libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        ))?;
        raw.len = msg.msg_namelen;
        let mut cred = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
            {
                let uc = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::ucred);
                cred = Some(Ucred {
                    pid: uc.pid,
                    uid: uc.uid,
                    gid: uc.gid,
                });
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n, raw, cred))
    }
}

/// Copies up to `count` bytes of `file` from `*offset` to the socket `out` in the
/// kernel (sendfile(2)), advancing `*offset`; 0 at the end of the file.
pub fn sendfile(
    out: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: &mut i64,
    count: usize,
) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the borrow; offset points to a live i64.
    cvt_ssize(unsafe { libc::sendfile(out.as_raw_fd(), file.as_raw_fd(), offset, count) })
}

/// Sends one datagram to `addr` without blocking.
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], addr: &RawAddr) -> io::Result<usize> {
    // SAFETY: data and addr are live buffers of the lengths given.
    unsafe {
        cvt_ssize(libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            &addr.storage as *const _ as *const libc::sockaddr,
            addr.len,
        ))
    }
}

impl Clone for RawAddr {
    fn clone(&self) -> RawAddr {
        RawAddr {
            storage: self.storage,
            len: self.len,
        }
    }
}

/// Connects a new blocking stream socket to `addr` (used to probe stale socket files).
pub fn connect(family: i32, sock_type: i32, addr: &RawAddr) -> io::Result<OwnedFd> {
    let fd = socket(family, sock_type)?;
    // SAFETY: addr holds a valid sockaddr of the given length.
    unsafe {
        cvt(libc::connect(
            fd.as_raw_fd(),
            &addr.storage as *const _ as *const libc::sockaddr,
            addr.len,
        ))?
    };
    Ok(fd)
}

/// The largest listen backlog the kernel allows (net.core.somaxconn).
pub fn somaxconn() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Gives the heap's free pages back to the kernel (malloc_trim). Pages the master
/// no longer uses are then not in its page tables, which every fork copies and
/// every worker's exit tears down.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only changes allocator state; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes how many malloc arenas threads may use (M_ARENA_MAX). glibc otherwise
/// sizes that limit the first time a thread needs a new arena by opening
/// /sys/devices/system/cpu/online, which a sandboxed server process may not do.
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt only changes allocator settings; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
}

/// Sets the process umask, returning the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

// ---------------------------------------------------------------------------
// poll

/// One descriptor to watch in `poll`.
pub type PollFd = libc::pollfd;
pub const POLLIN: i16 = libc::POLLIN;
pub const POLLOUT: i16 = libc::POLLOUT;

pub fn pollfd(fd: RawFd, events: i16) -> PollFd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits for events; `None` waits forever. EINTR counts as a wake with nothing ready.
pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        Some(d) => {
            d.as_millis().min(i32::MAX as u128) as i32 + i32::from(d.subsec_micros() % 1000 != 0)
        }
    };
    // SAFETY: fds is a valid slice of pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    poll_result(n)
}

/// What poll/ppoll returned: the number of ready fds; EINTR is a wake with none.
fn poll_result(n: libc::c_int) -> io::Result<usize> {
    if n == -1 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

// ---------------------------------------------------------------------------
// users, names, limits

/// The Landlock ABI version this kernel offers; 0 or less without Landlock.
pub fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with a null attribute pointer and size 0 this call only returns the
    // ABI version (or an error); it touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
}

/// Sets the name `ps -e`, `top` and `pgrep` show (PR_SET_NAME, at most 15 bytes).
pub fn set_comm(name: &str) {
    let mut bytes = [0u8; 16];
    for (dst, b) in bytes
        .iter_mut()
        .zip(name.bytes().filter(|&b| b != 0).take(15))
    {
        *dst = b;
    }
    // SAFETY: bytes is NUL-terminated and outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Asks the kernel to send `sig` to this process when its parent dies.
pub fn die_with_parent(sig: i32) {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
    }
}

/// Drops root: the supplementary `groups`, then the gid, then the uid; then
/// checks that neither can be regained.
pub fn drop_privileges(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let groups: Vec<libc::gid_t> = groups.iter().map(|&g| g as libc::gid_t).collect();
    // SAFETY: plain system calls; `groups` outlives setgroups.
    unsafe {
        cvt(libc::setgroups(groups.len(), groups.as_ptr()))?;
        cvt(libc::setgid(gid))?;
        cvt(libc::setuid(uid))?;
        if libc::getuid() != uid || libc::geteuid() != uid || libc::getegid() != gid {
            return Err(io::Error::other("ids did not change"));
        }
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(io::Error::other("root could be regained after setuid"));
        }
    }
    Ok(())
}

/// Changes the owner of a path (socket files created before a privilege drop).
pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid C string.
    unsafe { cvt(libc::chown(c.as_ptr(), uid, gid))? };
    Ok(())
}

/// The local time broken down (for `YYYY-MM-DD HH:MM:SS` and log stamps).
pub struct LocalTime {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub weekday: u32,
}

fn broken_down(secs: i64, local: bool) -> LocalTime {
    let t = secs as libc::time_t;
    // SAFETY: tm is plain data; the _r variants write only into it.
    let tm = unsafe {
        let mut tm: libc::tm = zeroed();
        if local {
            libc::localtime_r(&t, &mut tm);
        } else {
            libc::gmtime_r(&t, &mut tm);
        }
        tm
    };
    LocalTime {
        year: tm.tm_year + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
        weekday: tm.tm_wday as u32,
    }
}

/// Local time of a Unix timestamp (honours TZ and /etc/localtime).
pub fn local_time(secs: i64) -> LocalTime {
    broken_down(secs, true)
}

/// UTC time of a Unix timestamp.
pub fn utc_time(secs: i64) -> LocalTime {
    broken_down(secs, false)
}

// ---------------------------------------------------------------------------
// running programs

/// The descriptors a started program gets as its stdin, stdout and stderr.
#[derive(Clone, Copy)]
pub struct ProgramFds<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// A NULL-terminated array of pointers to C strings, for argv and envp.
fn c_array(items: &[&std::ffi::CStr]) -> Vec<*const libc::c_char> {
    let mut v: Vec<*const libc::c_char> = Vec::with_capacity(items.len() + 1);
    v.extend(items.iter().map(|s| s.as_ptr()));
    v.push(std::ptr::null());
    v
}

/// Starts `path` with `argv` and exactly the environment `env`, its stdin, stdout
/// and stderr from `stdio`, every other descriptor closed, every signal at its
/// default disposition and none blocked (SIGPIPE is ignored in a Rust process and
/// an ignored signal would survive exec). glibc's posix_spawn runs the child on
/// the caller's memory (clone with CLONE_VM|CLONE_VFORK): nothing of the caller is
/// copied, and an exec failure comes back as the error, not as an exit status
/// (glibc reaps such a child itself). Returns the child's pid.
pub fn spawn(
    path: &std::ffi::CStr,
    argv: &[&std::ffi::CStr],
    env: &[&std::ffi::CStr],
    stdio: ProgramFds<'_>,
) -> io::Result<libc::pid_t> {
    let argv = c_array(argv);
    let envp = c_array(env);
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: the attribute and file-action objects are initialised before use and
    // destroyed on every path; argv and envp are NULL-terminated arrays of pointers
    // to C strings that outlive the call; the pid is written by posix_spawn only.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = zeroed();
        let mut attr: libc::posix_spawnattr_t = zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let result = (|| {
            // A source among 0..=2 could be overwritten by an earlier dup2: copy
            // such sources above 2 first (in the child, by a dup2 of its own).
            let mut src = fds;
            for (i, fd) in src.iter_mut().enumerate() {
                if *fd <= 2 && *fd != i as RawFd {
                    let high = 10 + i as RawFd;
                    check(libc::posix_spawn_file_actions_adddup2(
                        &mut actions,
                        *fd,
                        high,
                    ))?;
                    *fd = high;
                }
            }
            for (i, fd) in src.iter().enumerate() {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut actions,
                    *fd,
                    i as RawFd,
                ))?;
            }
            check(libc::posix_spawn_file_actions_addclosefrom_np(
                &mut actions,
                3,
            ))?;
            let mut all: libc::sigset_t = zeroed();
            let mut none: libc::sigset_t = zeroed();
            libc::sigfillset(&mut all);
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
            check(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr() as *const *mut libc::c_char,
                envp.as_ptr() as *const *mut libc::c_char,
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}

/// Replaces the calling process with `path` (a forked worker that becomes the
/// program): stdin, stdout and stderr from `stdio`, every other descriptor marked
/// close-on-exec, signals at their defaults and unblocked. Returns only on failure.
pub fn exec(
    path: &std::ffi::CStr,
    argv: &[&std::ffi::CStr],
    env: &[&std::ffi::CStr],
    stdio: ProgramFds<'_>,
) -> io::Error {
    let argv = c_array(argv);
    let envp = c_array(env);
    // SAFETY: fcntl, dup2, close_range, signal and execve on descriptors and
    // NULL-terminated arrays that stay alive until execve replaces the process.
    unsafe {
        let mut high = [0; 3];
        for (i, fd) in [stdio.stdin, stdio.stdout, stdio.stderr].iter().enumerate() {
            match cvt(libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3)) {
                Ok(h) => high[i] = h,
                Err(e) => return e,
            }
        }
        for (i, h) in high.iter().enumerate() {
            if let Err(e) = cvt(libc::dup2(*h, i as RawFd)) {
                return e;
            }
        }
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        unblock_all_signals();
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    io::Error::last_os_error()
}

/// An anonymous in-memory file holding `data`, positioned at its start (a
/// datagram handed to a program as its stdin).
pub fn memfd_with(name: &std::ffi::CStr, data: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    // SAFETY: memfd_create returns a new descriptor we take ownership of.
    let fd = unsafe { cvt(libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC))? };
    // SAFETY: fd is new and owned by nobody else.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(data)?;
    f.rewind()?;
    Ok(f)
}

/// True when the calling process may execute `path` (access X_OK).
pub fn executable(path: &std::ffi::CStr) -> bool {
    // SAFETY: path is a valid C string.
    unsafe { libc::access(path.as_ptr(), libc::X_OK) == 0 }
}

/// Makes `cmd` start its program with a parent-death signal: if the calling
/// process dies (a worker killed at the end of a drain), the program gets SIGTERM
/// instead of living on as an orphan. std's Command builds everything before it
/// forks and resets SIGPIPE and the signal mask in the child.
pub fn die_with_spawner(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = getpid();
    // SAFETY: the closure runs between fork and exec and calls only prctl and
    // getppid, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != parent {
                return Err(io::Error::other("the starting process has already exited"));
            }
            Ok(())
        })
    }
}

/// The kind of an inherited descriptor, without taking it (is fd 3 a connection
/// systemd passed?); `Err` when it is no socket or not open.
pub fn socket_kind_of(fd: RawFd) -> io::Result<SocketKind> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only checks that the number is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open and is only borrowed for this call.
    socket_kind(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// An anonymous MAP_SHARED mapping of `bytes` zeroed bytes (rounded up to whole
/// pages): the process and every child it forks afterwards see the same memory.
/// It is never unmapped.
fn shared_zeroed(bytes: usize) -> io::Result<*mut libc::c_void> {
    let len = bytes.max(1).next_multiple_of(4096);
    // SAFETY: a fresh anonymous mapping with no address hint; nothing else is
    // touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p)
}

/// Counters shared between the master and its children across fork: `len` zeroed
/// `u64` slots (a child's store is seen by the master; no copy-on-write), kept for
/// the life of the process. Pages are touched only where slots are used.
pub fn shared_counters(len: usize) -> io::Result<&'static [std::sync::atomic::AtomicU64]> {
    let p = shared_zeroed(len.max(1) * size_of::<u64>())?;
    // SAFETY: zero-filled, page-aligned memory of at least `len` u64s that is
    // never unmapped; AtomicU64 has u64's layout and all-zero is a valid value.
    Ok(unsafe { std::slice::from_raw_parts(p.cast(), len.max(1)) })
}

/// The same with `u32` slots (the scoreboard's per-worker flags).
pub fn shared_counters32(n: usize) -> io::Result<&'static [std::sync::atomic::AtomicU32]> {
    let p = shared_zeroed(n.max(1) * size_of::<u32>())?;
    // SAFETY: as in shared_counters, for AtomicU32.
    Ok(unsafe { std::slice::from_raw_parts(p.cast(), n.max(1)) })
}

/// Sends one byte and a descriptor (SCM_RIGHTS) over a Unix socket; the receiver
/// gets its own copy of the descriptor.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    let mut data = [byte];
    // SAFETY: the iovec points at `data`; the control buffer is sized with
    // CMSG_SPACE for one int and the header written through CMSG_FIRSTHDR lies
    // inside it; sendmsg only reads them.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let mut control = [0u64; 4];
        debug_assert!(space <= size_of::<[u64; 4]>());
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        loop {
            match cvt_ssize(libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(()),
            }
        }
    }
}

/// Receives what [`send_fd`] sent, blocking: `None` at end of file (the sender
/// closed its end). The descriptor comes close-on-exec.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, u8)>> {
    let mut data = [0u8; 1];
    // SAFETY: as in send_fd, with recvmsg writing into `data` and `control`; a
    // descriptor the kernel passed is owned by this process from then on.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 4];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
        let n = cvt_ssize(libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC,
        ))?;
        if n == 0 {
            return Ok(None);
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::other("a message without a descriptor"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(Some((OwnedFd::from_raw_fd(fd), data[0])))
    }
}

/// An anonymous in-memory file (memfd), open for read and write, not close-on-exec:
/// how the master hands its state to the image it re-executes.
pub fn memfd(name: &str) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::other("memfd name has a NUL byte"))?;
    // SAFETY: c is a valid C string; the returned fd is new and owned here.
    unsafe {
        let fd = libc::memfd_create(c.as_ptr(), 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Replaces the process image (same pid). Returns only on failure.
pub fn execve(
    path: &Path,
    args: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> io::Error {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL byte in an argument"));
    let build = || -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let p = cstr(path.as_os_str().as_bytes())?;
        let a = args
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let e = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstr(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok((p, a, e))
    };
    let (p, a, e) = match build() {
        Ok(x) => x,
        Err(err) => return err,
    };
    let mut argv: Vec<*const libc::c_char> = a.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = e.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: every pointer is a NUL-terminated string kept alive above; both
    // arrays end with a null pointer.
    unsafe {
        libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    io::Error::last_os_error()
}

/// CLOCK_MONOTONIC in microseconds (sd_notify MONOTONIC_USEC=).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

// ---------------------------------------------------------------------------
// TUN devices (the link emulator of `forkserve impair --tun`)

/// Creates (or attaches to) the TUN device `name`: an IP-level interface whose
/// packets this descriptor reads and writes, without a packet-information header.
pub fn tun_open(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TUN name '{name}': 1 to {} bytes", libc::IFNAMSIZ - 1),
        ));
    }
    let path = c"/dev/net/tun";
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: open just returned this descriptor, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives through the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    Ok(fd)
}
