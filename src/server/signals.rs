//! Signals as events in the poll loop: each handled signal sets a flag and writes a
//! byte to a self-pipe (through signal-hook's registry), so the loop wakes and reads
//! the flags at a safe point.
//!
//! Meanings in the master: SIGTERM/SIGINT drain and exit (a second one: stop now),
//! SIGQUIT stop now, SIGHUP reload (the configuration file is read again, the
//! services' reload hooks run, connections learn of it through
//! `Context::reloads`, server processes are replaced), SIGUSR1 log the counters,
//! SIGUSR2 upgrade the binary (re-execute in place), SIGCHLD reap.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use signal_hook::SigId;

use crate::sys;

/// The signals forkserve handles, in flag order.
const HANDLED: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

static FLAGS: [AtomicBool; 7] = [
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
];

/// The write end of the current self-pipe; swapped when a server process makes its own.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// Set in long-lived server processes: a SIGTERM that finds the previous one still
/// pending (the master's drain deadline passed) ends the process at once.
static EXIT_ON_SECOND_TERM: AtomicBool = AtomicBool::new(false);

fn on_signal(index: usize) {
    let was = FLAGS[index].swap(true, Ordering::SeqCst);
    if index == 0 && was && EXIT_ON_SECOND_TERM.load(Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) and errno access are async-signal-safe; errno is restored so
        // the interrupted code never sees ours.
        unsafe {
            let errno = *libc::__errno_location();
            libc::send(
                fd,
                b"s".as_ptr() as *const libc::c_void,
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
            *libc::__errno_location() = errno;
        }
    }
}

/// Clears a flag if it is set. Reads first: a write to the flags' page after
/// every fork would cost the master a copy-on-write fault per connection.
fn take_flag(flag: &AtomicBool) -> bool {
    flag.load(Ordering::SeqCst) && flag.swap(false, Ordering::SeqCst)
}

/// The installed handlers and the self-pipe the poll loop watches.
pub struct Signals {
    read: UnixStream,
    write: OwnedFd,
    ids: Vec<(i32, SigId)>,
    /// SIGCHLD as a descriptor (the master only): it stays blocked and is read
    /// from here, so a child's exit costs no signal frame and no pipe write.
    chld: Option<OwnedFd>,
}

fn index_of(sig: i32) -> usize {
    HANDLED
        .iter()
        .position(|&s| s == sig)
        .expect("signal not handled by forkserve")
}

fn new_pipe() -> io::Result<(UnixStream, OwnedFd)> {
    let (r, w) = UnixStream::pair()?;
    r.set_nonblocking(true)?;
    w.set_nonblocking(true)?;
    Ok((r, OwnedFd::from(w)))
}

impl Signals {
    /// Installs the handlers. Call once, in the master, before any fork.
    pub fn install() -> io::Result<Signals> {
        let (read, write) = new_pipe()?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        sys::block_signals(&[libc::SIGCHLD]);
        let chld = Some(sys::signalfd(&[libc::SIGCHLD])?);
        let mut ids = Vec::new();
        for (i, &sig) in HANDLED.iter().enumerate() {
            if sig == libc::SIGCHLD {
                continue;
            }
            // SAFETY: the action only touches atomics and calls send(2), which are
            // async-signal-safe.
            let id = unsafe { signal_hook::low_level::register(sig, move || on_signal(i)) }?;
            ids.push((sig, id));
        }
        // A master re-executed by an upgrade starts with the old image's mask (the
        // handled signals blocked): now that they have handlers, let them in.
        let with_handlers: Vec<i32> = ids.iter().map(|(sig, _)| *sig).collect();
        sys::unblock_signals(&with_handlers);
        Ok(Signals {
            read,
            write,
            ids,
            chld,
        })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The SIGCHLD descriptor to poll (the master's).
    pub fn chld_fd(&self) -> Option<RawFd> {
        self.chld.as_ref().map(|f| f.as_raw_fd())
    }

    /// True if SIGCHLD arrived (read from the signalfd, or flagged by a handler).
    pub fn take_chld(&self) -> bool {
        let flagged = take_flag(&FLAGS[index_of(libc::SIGCHLD)]);
        let read = self
            .chld
            .as_ref()
            .is_some_and(|f| sys::read_signalfd(f.as_fd()));
        flagged || read
    }

    /// Empties the pipe after a wake.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.read).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// Blocks the handled signals outside of `sys::ppoll` (the master): they are
    /// then delivered only while it waits, so a fork is never interrupted and
    /// restarted by a SIGCHLD. Returns the mask to wait with.
    pub fn block(&self) -> sys::SigMask {
        sys::block_signals(&HANDLED)
    }

    /// True (once) if `sig` arrived since the last call.
    pub fn take(&self, sig: i32) -> bool {
        take_flag(&FLAGS[index_of(sig)])
    }

    /// True if `sig` arrived, leaving the flag set (so a second one can be told).
    pub fn peek(&self, sig: i32) -> bool {
        FLAGS[index_of(sig)].load(Ordering::SeqCst)
    }

    /// In a forked worker: every handler off (ours and the runtime's), default
    /// dispositions back, the pipe closed, all signals unblocked.
    pub fn reset_in_child(&self) {
        WAKE_FD.store(-1, Ordering::SeqCst);
        // SIG_DFL in the kernel is all it takes: the registry's entries stay in
        // this process's memory unused (unregistering would clone the registry, an
        // allocation and copy-on-write faults on every connection).
        // (SIGCHLD has no handler: the master reads it from a signalfd.)
        for &(sig, _) in &self.ids {
            sys::default_signal(sig);
        }
        for sig in sys::RUNTIME_SIGNALS {
            sys::default_signal(sig);
        }
        sys::unblock_all_signals();
    }

    /// In a long-lived server process: a pipe of its own (the master's is closed),
    /// handlers kept for TERM/INT/QUIT/HUP, SIGCHLD and the runtime's SIGSEGV/SIGBUS
    /// back to default.
    pub fn renew_in_child(&self) -> io::Result<Signals> {
        let (read, write) = new_pipe()?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        let mut ids = Vec::new();
        for &(sig, id) in &self.ids {
            if sig == libc::SIGCHLD {
                signal_hook::low_level::unregister(id);
                sys::default_signal(sig);
            } else {
                ids.push((sig, id));
            }
        }
        for sig in sys::RUNTIME_SIGNALS {
            sys::default_signal(sig);
        }
        for flag in &FLAGS {
            flag.store(false, Ordering::SeqCst);
        }
        sys::unblock_all_signals();
        EXIT_ON_SECOND_TERM.store(true, Ordering::SeqCst);
        Ok(Signals {
            read,
            write,
            ids,
            chld: None,
        })
    }

    /// The raw descriptors of the pipe and signalfd (for children to close).
    pub fn raw_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        [self.read.as_raw_fd(), self.write.as_fd().as_raw_fd()]
            .into_iter()
            .chain(self.chld_fd())
    }
}
