//! Process titles for `ps`: the argv block is rewritten in place (what `ps -ef`,
//! `ps -ef --forest` and `pgrep -f` show) and PR_SET_NAME sets the short name that
//! `ps -e`, `top` and `pgrep` show.
//!
//! The argv and environment strings sit back to back in the stack area the kernel
//! reports in /proc/self/stat (arg_start … env_end). [`init`] moves the environment
//! to the heap, so the whole area can hold a title; the old environment block is
//! overwritten, which also keeps `/proc/PID/environ` free of what systemd passed
//! (LISTEN_*, NOTIFY_SOCKET).

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sys;

static AREA_START: AtomicUsize = AtomicUsize::new(0);
static AREA_LEN: AtomicUsize = AtomicUsize::new(0);
/// Length of the title now in the area; bytes past it are already zero.
static TITLE_LEN: AtomicUsize = AtomicUsize::new(usize::MAX);

unsafe extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

fn stat_area() -> Option<(usize, usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; arg_start is field 48, env_end field 51.
    let get = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    let (arg_start, env_start, env_end) = (get(48)?, get(50)?, get(51)?);
    if arg_start == 0 || env_end <= arg_start || env_start < arg_start {
        return None;
    }
    Some((arg_start, env_start, env_end))
}

static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The server's name: the first word of every title (`NAME: master …`) and the
/// log identity (syslog tag, journal SYSLOG_IDENTIFIER). `forkserve` unless
/// [`Server::name`](crate::Server::name) set another.
pub fn name() -> &'static str {
    NAME.get().map_or("forkserve", String::as_str)
}

/// Sets the name, once per process (later calls are ignored).
pub fn set_name(name: &str) {
    let _ = NAME.set(name.to_string());
}

/// Prepares the title area (once; later calls do nothing). Call early, while the
/// process has one thread and after the command line has been parsed (the argv
/// strings are overwritten later).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(init_area);
}

fn init_area() {
    let Some((start, env_start, end)) = stat_area() else {
        return;
    };
    // SAFETY: single-threaded at this point. Each environment string is copied to
    // the heap (leaked: the environment lives as long as the process) and `environ`
    // is pointed at the copies, so nothing refers into [env_start, end) any more.
    unsafe {
        let mut copies: Vec<*mut libc::c_char> = Vec::new();
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let s = CStr::from_ptr(*p).to_owned();
            copies.push(s.into_raw());
            p = p.add(1);
        }
        copies.push(std::ptr::null_mut());
        let leaked = Box::leak(copies.into_boxed_slice());
        environ = leaked.as_mut_ptr();
    }
    let _ = env_start;
    AREA_START.store(start, Ordering::SeqCst);
    AREA_LEN.store(end - start, Ordering::SeqCst);
}

/// Sets the title `ps -ef` shows (cut to the space there is) and the short name
/// (`comm`, 15 bytes) that `ps -e` shows.
pub fn set(title: &str, comm: &str) {
    set_title(title);
    sys::set_comm(comm);
}

/// Sets only the long title.
pub fn set_title(title: &str) {
    let start = AREA_START.load(Ordering::SeqCst);
    let len = AREA_LEN.load(Ordering::SeqCst);
    if start == 0 || len < 2 {
        return;
    }
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // Only the bytes the old title used need clearing (all of them the first
    // time): a forked worker then dirties one page, not the whole area.
    let old = TITLE_LEN.swap(n, Ordering::SeqCst).min(len);
    // SAFETY: [start, start+len) is this process's argv+environ area, which `init`
    // detached from every other reference; it is writable stack memory.
    unsafe {
        let dst = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
        if old > n {
            std::ptr::write_bytes(dst.add(n), 0, old - n);
        }
    }
}

/// Sets the title and the short name from format arguments without allocating
/// (a worker formats both on the stack). The short name is cut to 15 bytes.
pub fn set_fmt(title: std::fmt::Arguments<'_>, comm: std::fmt::Arguments<'_>) {
    Prepared::new(title, comm).apply();
}

/// A title and short name formatted ahead, on the stack, to be set later in one
/// step: the master formats a worker's before the fork, so the worker runs none
/// of the formatting code (every page of it the worker runs is one more page
/// fault per connection: about 5, and 10% of a connection's CPU time).
pub struct Prepared {
    title: StackBuf,
    comm: StackBuf,
}

impl Prepared {
    pub fn new(title: std::fmt::Arguments<'_>, comm: std::fmt::Arguments<'_>) -> Prepared {
        let mut p = Prepared {
            title: StackBuf {
                bytes: [0; 256],
                len: 0,
            },
            comm: StackBuf {
                bytes: [0; 256],
                len: 0,
            },
        };
        let _ = std::fmt::write(&mut p.title, title);
        let _ = std::fmt::write(&mut p.comm, comm);
        p
    }

    /// Sets them in this process.
    pub fn apply(&self) {
        set_title(self.title.as_str(self.title.len));
        sys::set_comm(self.comm.as_str(self.comm.len.min(15)));
    }
}

struct StackBuf {
    bytes: [u8; 256],
    len: usize,
}

impl StackBuf {
    /// The first `end` bytes, cut back to a character boundary.
    fn as_str(&self, mut end: usize) -> &str {
        loop {
            match std::str::from_utf8(&self.bytes[..end]) {
                Ok(s) => return s,
                Err(e) => end = e.valid_up_to(),
            }
        }
    }
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Sets an environment variable in a freshly forked, single-threaded child.
pub fn child_setenv(key: &str, value: &str) {
    if let (Ok(k), Ok(v)) = (CString::new(key), CString::new(value)) {
        // SAFETY: called only in a single-threaded child process.
        unsafe {
            libc::setenv(k.as_ptr(), v.as_ptr(), 1);
        }
    }
}

/// Removes an environment variable in the (single-threaded) master or a child.
pub fn unsetenv(key: &str) {
    if let Ok(k) = CString::new(key) {
        // SAFETY: called only while the process has one thread.
        unsafe {
            libc::unsetenv(k.as_ptr());
        }
    }
}
