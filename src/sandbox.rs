//! The sandbox a worker enters after fork and before its handler runs: a [`Sandbox`]
//! policy, declared by each service, says which paths it may read or write, whether it
//! may open Unix sockets, and which system calls it makes beyond the ones every worker
//! makes. Entering it sets `no_new_privs` and restricts the file system with a
//! Landlock ruleset (and forbids TCP bind/connect and signals outside the worker);
//! with `--seccomp` it then installs a seccomp filter that kills the process on any
//! other system call (the master logs such a death as SIGSYS).
//!
//! Why seccomp is not on by default: every filter is a BPF program the kernel
//! JIT-compiles on install and frees through its `events` workqueue on exit. At
//! fork-per-connection rates (thousands a second) Linux 6.18 deadlocked there: the
//! worker freeing a JIT pack held its mutex while `vfree` waited for work queued
//! behind a thousand other frees blocked on that mutex. From then on every
//! seccomp(2) on the machine blocked for ever (seen under `bench/compare.sh`). A
//! security layer that can wedge the host under load is not a default; Landlock
//! uses no BPF. `--seccomp` turns the filters on, after a start-up check that a
//! filter installs at all ([`check_support`]).
//!
//! On a kernel without Landlock the file-system part is skipped (one log line at
//! start-up, [`check_support`]); the seccomp filter still applies. Long-lived server
//! processes (thread, sequential, prefork models) enter the same policy plus what
//! accepting (and, under the thread model, spawning threads) needs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};
use seccompiler::{BpfProgram, sock_filter};

/// The Landlock ABI the rules are written for (Linux 6.12: file system, TCP,
/// signal scoping). Older kernels enforce what they know.
const LANDLOCK_ABI: ABI = ABI::V6;

/// System calls every worker makes: I/O on the sockets it was given, memory, time,
/// signals, its title, and exiting. Found with `strace -f` on every service under
/// its tests (see README, Sandbox), plus what the runtime needs on rarer paths
/// (realloc: mremap; a lock under contention: futex; a sleep; randomness; abort:
/// tgkill, which Landlock's signal scope keeps inside the sandbox).
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_close,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_fcntl,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_alarm,
    libc::SYS_setitimer,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_getrandom,
    libc::SYS_tgkill,
    libc::SYS_sched_yield,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Opening and reading files (under the paths Landlock allows).
const FILES: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_getdents64,
];

/// Changing files (under the read-write paths).
const WRITE_FILES: &[i64] = &[
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// Connecting to (or, with listening, serving) Unix sockets.
const UNIX_CONNECT: &[i64] = &[libc::SYS_connect];
const UNIX_LISTEN: &[i64] = &[
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
];

/// Accepting on the inherited listeners (server processes).
const ACCEPT: &[i64] = &[libc::SYS_accept, libc::SYS_accept4, libc::SYS_socketpair];

/// Spawning and running threads (thread-model server processes).
const THREADS: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_sched_getaffinity,
    libc::SYS_prlimit64,
    libc::SYS_gettid,
];

/// What a service's workers may do. Built with the methods below; a service
/// without one runs unsandboxed (see [`crate::Service::sandbox`]).
#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    unix_connect: bool,
    unix_listen: bool,
    syscalls: Vec<i64>,
    /// The seccomp programs, compiled once in the master (workers only install).
    compiled: Arc<OnceLock<Compiled>>,
}

/// Seccomp programs of one policy: for a worker, and for a server process of each
/// kind. `None` off x86_64 (the system call lists are x86_64's).
#[derive(Debug)]
struct Compiled {
    worker: Option<BpfProgram>,
    server: Option<BpfProgram>,
    threaded: Option<BpfProgram>,
}

/// Where the sandbox is entered, which adds what that process needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A forked worker, one connection or datagram.
    Worker,
    /// A server process that accepts and serves in turn (sequential, prefork).
    Server,
    /// A server process that serves on threads.
    ThreadedServer,
}

impl Sandbox {
    /// Nothing but I/O on the worker's own sockets: no file, no new socket.
    pub fn new() -> Sandbox {
        Sandbox::default()
    }

    /// May open files and directories under `path` for reading.
    pub fn read_only(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read.push(path.into());
        self
    }

    /// May create, change and remove files under `path`.
    pub fn read_write(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.write.push(path.into());
        self
    }

    /// May read the local time zone (`/etc/localtime` and the zone files).
    pub fn local_time(self) -> Sandbox {
        let mut s = self
            .read_only("/etc/localtime")
            .read_only("/usr/share/zoneinfo");
        if let Some(tz) = std::env::var_os("TZ").map(PathBuf::from)
            && tz.is_absolute()
        {
            s = s.read_only(tz);
        }
        s
    }

    /// May create Unix sockets and connect them (no other socket family).
    pub fn unix_connect(mut self) -> Sandbox {
        self.unix_connect = true;
        self
    }

    /// May also bind, listen on and accept Unix sockets (a companion's own socket).
    pub fn unix_listen(mut self) -> Sandbox {
        self.unix_connect = true;
        self.unix_listen = true;
        self
    }

    /// May also make these system calls (`libc::SYS_*` numbers).
    pub fn syscalls(mut self, calls: &[i64]) -> Sandbox {
        self.syscalls.extend_from_slice(calls);
        self
    }

    /// What the policy allows, for the start-up log (`-v`).
    pub fn describe(&self) -> String {
        let list = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "read [{}], read-write [{}], unix sockets: {}",
            list(&self.read),
            list(&self.write),
            match (self.unix_connect, self.unix_listen) {
                (_, true) => "connect and listen",
                (true, false) => "connect",
                _ => "none",
            }
        )
    }

    /// Compiles the seccomp programs now (in the master, before any fork).
    pub fn prepare(&self) -> Result<(), String> {
        if self.compiled.get().is_some() {
            return Ok(());
        }
        let compiled = Compiled {
            worker: self.program(Role::Worker)?,
            server: self.program(Role::Server)?,
            threaded: self.program(Role::ThreadedServer)?,
        };
        let _ = self.compiled.set(compiled);
        Ok(())
    }

    /// The system calls allowed to `role`: those allowed whatever their arguments,
    /// and those allowed only with one argument equal to one of some values.
    fn rules(&self, role: Role) -> (Vec<i64>, Vec<ArgRule>) {
        let mut plain: Vec<i64> = BASE.to_vec();
        let files = !self.read.is_empty() || !self.write.is_empty();
        if files {
            plain.extend_from_slice(FILES);
        }
        if !self.write.is_empty() {
            plain.extend_from_slice(WRITE_FILES);
        }
        if self.unix_connect {
            plain.extend_from_slice(UNIX_CONNECT);
        }
        if self.unix_listen {
            plain.extend_from_slice(UNIX_LISTEN);
        }
        match role {
            Role::Worker => {}
            Role::Server => plain.extend_from_slice(ACCEPT),
            Role::ThreadedServer => {
                plain.extend_from_slice(ACCEPT);
                plain.extend_from_slice(THREADS);
            }
        }
        plain.extend_from_slice(&self.syscalls);
        plain.sort_unstable();
        plain.dedup();
        let mut with_args = vec![
            // The short name for ps, and nothing else prctl can do.
            ArgRule {
                nr: libc::SYS_prctl,
                arg: 0,
                values: vec![libc::PR_SET_NAME as u32, libc::PR_GET_NAME as u32],
            },
            // Non-blocking mode and close-on-exec by ioctl (std's set_nonblocking).
            ArgRule {
                nr: libc::SYS_ioctl,
                arg: 1,
                values: vec![libc::FIONBIO as u32, libc::FIOCLEX as u32],
            },
        ];
        if self.unix_connect {
            // socket(AF_UNIX, …) only.
            with_args.push(ArgRule {
                nr: libc::SYS_socket,
                arg: 0,
                values: vec![libc::AF_UNIX as u32],
            });
        }
        with_args.retain(|r| !plain.contains(&r.nr));
        (plain, with_args)
    }

    fn program(&self, role: Role) -> Result<Option<BpfProgram>, String> {
        let Some(arch) = audit_arch() else {
            return Ok(None);
        };
        let (plain, with_args) = self.rules(role);
        allow_list(arch, &plain, &with_args).map(Some)
    }

    /// Enters the sandbox in this process for `role`: Landlock, then seccomp (which
    /// sets `no_new_privs`). Errors name what failed; the caller must not serve then.
    pub fn enter(&self, role: Role) -> Result<(), String> {
        if !NO_LANDLOCK.load(Ordering::Relaxed) {
            self.landlock()?;
        }
        self.prepare()?;
        let compiled = self.compiled.get().expect("prepared above");
        let prog = match role {
            Role::Worker => &compiled.worker,
            Role::Server => &compiled.server,
            Role::ThreadedServer => {
                // Before the filter: glibc would size its arena limit from a file
                // in /sys when the ninth thread or so needs an arena.
                crate::sys::limit_malloc_arenas(8);
                &compiled.threaded
            }
        };
        crate::sys::set_no_new_privs().map_err(|e| format!("sandbox: no_new_privs: {e}"))?;
        if let Some(prog) = prog.as_ref().filter(|_| SECCOMP.load(Ordering::Relaxed)) {
            seccompiler::apply_filter(prog).map_err(|e| format!("sandbox: seccomp: {e}"))?;
        }
        Ok(())
    }

    /// Restricts the file system to the policy's paths; TCP bind/connect and signals
    /// to processes outside the sandbox are refused. A no-op (but `no_new_privs`)
    /// where the kernel has no Landlock.
    fn landlock(&self) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("sandbox: landlock: {e}");
        let fs_all = AccessFs::from_all(LANDLOCK_ABI);
        let ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(fs_all)
            .and_then(|r| r.handle_access(AccessNet::from_all(LANDLOCK_ABI)))
            .and_then(|r| r.scope(self.scopes()))
            .map_err(|e| fail(&e))?;
        let mut created = ruleset.create().map_err(|e| fail(&e))?;
        let rules = self
            .read
            .iter()
            .map(|p| (p, AccessFs::from_read(LANDLOCK_ABI)))
            .chain(self.write.iter().map(|p| (p, fs_all)));
        for (path, access) in rules {
            let Some(fd) = open_path(path) else { continue };
            // A file (not a directory) takes only the rights that apply to files.
            let access = if Path::new(path).is_dir() {
                access
            } else {
                access & AccessFs::from_file(LANDLOCK_ABI)
            };
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| fail(&format!("{}: {e}", path.display())))?;
        }
        created.restrict_self().map_err(|e| fail(&e))?;
        Ok(())
    }
}

impl Sandbox {
    /// What Landlock keeps inside the sandbox: signals always; abstract Unix sockets
    /// when the policy may open Unix sockets (it then reaches only pathname ones).
    /// Not otherwise: a datagram worker replies on its inherited socket to clients
    /// that may be bound to abstract names, which the scope would refuse.
    fn scopes(&self) -> BitFlags<Scope> {
        if self.unix_connect {
            Scope::Signal | Scope::AbstractUnixSocket
        } else {
            Scope::Signal.into()
        }
    }
}

impl Role {
    /// The role of a long-lived server process under `model`.
    pub fn server(model: crate::Model) -> Role {
        if model == crate::Model::Thread {
            Role::ThreadedServer
        } else {
            Role::Server
        }
    }
}

/// Enters `policy` (if any) in a freshly forked process, or exits it with status 71
/// (logged, naming `who`): a process whose sandbox failed must not serve.
pub(crate) fn enter_or_exit(policy: Option<&Sandbox>, role: Role, who: &str) {
    if let Some(p) = policy
        && let Err(e) = p.enter(role)
    {
        log::error!("{who}: {e}");
        crate::sys::exit_now(71);
    }
}

/// A system call allowed only when argument `arg` (its low 32 bits) is one of
/// `values`.
#[derive(Clone, Debug)]
struct ArgRule {
    nr: i64,
    arg: u32,
    values: Vec<u32>,
}

/// The audit architecture of this build, which the filter checks first (a system
/// call made through another ABI is refused). The system call lists above are
/// x86_64's; elsewhere there is no filter (Landlock still applies).
fn audit_arch() -> Option<u32> {
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    (std::env::consts::ARCH == "x86_64").then_some(AUDIT_ARCH_X86_64)
}

const BPF_LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`: nr, arch, then the 64-bit args from 16 (their
/// low halves first on these little-endian architectures).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A compact allow-list program: one comparison per allowed system call, all
/// jumping to one ALLOW, and a short block per argument rule. (A worker installs
/// it on every fork, and the kernel's cost of that grows with its length: this is
/// about a quarter of the size of a generic rule compiler's output.)
///
/// ```text
///     ld arch; jeq ARCH, +1; ret KILL; ld nr
///     jeq NR1, ALLOW; jeq NR2, ALLOW; …
///     jeq NRa, 0, +skip; ld arg; jeq V1, ALLOW; jeq V2, ALLOW; ret KILL; …
///     ret KILL
/// ALLOW: ret ALLOW
/// ```
fn allow_list(arch: u32, plain: &[i64], with_args: &[ArgRule]) -> Result<BpfProgram, String> {
    let mut prog = vec![
        stmt(BPF_LD_ABS, DATA_ARCH),
        sock_filter {
            code: BPF_JEQ_K,
            jt: 1,
            jf: 0,
            k: arch,
        },
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_ABS, DATA_NR),
    ];
    // Jumps to ALLOW are patched once its place is known.
    let mut to_allow: Vec<usize> = Vec::new();
    for &nr in plain {
        to_allow.push(prog.len());
        prog.push(stmt(BPF_JEQ_K, nr as u32));
    }
    for rule in with_args {
        let block = rule.values.len() + 2;
        prog.push(sock_filter {
            code: BPF_JEQ_K,
            jt: 0,
            jf: u8::try_from(block).map_err(|_| "sandbox: argument rule too long")?,
            k: rule.nr as u32,
        });
        prog.push(stmt(BPF_LD_ABS, DATA_ARGS + 8 * rule.arg));
        for &v in &rule.values {
            to_allow.push(prog.len());
            prog.push(stmt(BPF_JEQ_K, v));
        }
        prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS));
    }
    prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS));
    let allow = prog.len();
    prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    for at in to_allow {
        prog[at].jt = u8::try_from(allow - at - 1).map_err(|_| {
            format!(
                "sandbox: {} system calls are too many for one filter",
                plain.len()
            )
        })?;
    }
    Ok(prog)
}

/// A path to allow, opened O_PATH; None (logged at debug) when it does not exist.
fn open_path(path: &Path) -> Option<PathFd> {
    match PathFd::new(path) {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::debug!("sandbox: {} not allowed: {e}", path.display());
            None
        }
    }
}

/// Whether this kernel has Landlock, as found at start-up by [`check_support`]
/// (forked processes inherit the answer; unchecked counts as yes).
static NO_LANDLOCK: AtomicBool = AtomicBool::new(false);

/// Whether entering a sandbox installs its seccomp filter (`--seccomp`).
static SECCOMP: AtomicBool = AtomicBool::new(false);

/// How long the start-up check waits for a trivial filter to install.
const SECCOMP_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks, once in the master before any fork, what this kernel enforces: an error
/// without seccomp filters (the sandbox cannot be entered; `--no-sandbox` runs
/// without it), one warning without Landlock (workers then get seccomp only).
pub fn check_support(seccomp: bool) -> Result<(), String> {
    if seccomp {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if !status.lines().any(|l| l.starts_with("Seccomp:")) {
            return Err(
                "sandbox: --seccomp: this kernel has no seccomp filters; run without --seccomp"
                    .into(),
            );
        }
        probe_seccomp()?;
        SECCOMP.store(true, Ordering::Relaxed);
    }
    match crate::sys::landlock_abi() {
        v if v < 1 => {
            NO_LANDLOCK.store(true, Ordering::Relaxed);
            log::warn!(
                "sandbox: this kernel has no Landlock; workers run without file-system restrictions{}",
                if seccomp {
                    " (seccomp only)"
                } else {
                    " (no_new_privs only)"
                }
            );
        }
        v => log::debug!("sandbox: Landlock ABI {v}"),
    }
    Ok(())
}

/// Installs a filter that allows everything in a child and waits for it to exit:
/// on a kernel whose BPF JIT is stuck (see the module docs) that child never
/// returns, and no worker must be started into the same wait.
fn probe_seccomp() -> Result<(), String> {
    use crate::sys::Forked;
    let allow = vec![sock_filter {
        code: 0x06, // BPF_RET | BPF_K
        jt: 0,
        jf: 0,
        k: 0x7fff_0000, // SECCOMP_RET_ALLOW
    }];
    match crate::sys::fork().map_err(|e| format!("sandbox: --seccomp check: fork: {e}"))? {
        Forked::Child => {
            // A child that never returns must hold none of the master's
            // descriptors (its log pipe, listeners).
            crate::sys::detach_from_descriptors();
            let ok =
                crate::sys::set_no_new_privs().is_ok() && seccompiler::apply_filter(&allow).is_ok();
            crate::sys::exit_now(if ok { 0 } else { 1 })
        }
        Forked::Parent(pid) => match crate::sys::wait_for(pid, SECCOMP_PROBE) {
            Some(0) => Ok(()),
            Some(_) => Err("sandbox: --seccomp: the kernel refused a seccomp filter".into()),
            None => {
                crate::sys::kill(pid, libc::SIGKILL);
                Err(format!(
                    "sandbox: --seccomp: installing a seccomp filter did not finish within {}s \
                     (the kernel's BPF JIT is stuck; see README, Sandbox); run without --seccomp",
                    SECCOMP_PROBE.as_secs()
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a filter as the kernel would for system call `nr` with `args`.
    fn verdict(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                DATA_NR => nr as u32,
                DATA_ARCH => arch,
                o => {
                    let a = args[((o - DATA_ARGS) / 8) as usize];
                    if (o - DATA_ARGS).is_multiple_of(8) {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            match i.code {
                BPF_LD_ABS => acc = word(i.k),
                BPF_JEQ_K => {
                    pc += usize::from(if acc == i.k { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
            pc += 1;
        }
    }

    fn worker_program(s: &Sandbox) -> BpfProgram {
        s.prepare().unwrap();
        s.compiled.get().unwrap().worker.clone().unwrap()
    }

    const ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    #[test]
    fn the_filter_allows_exactly_the_policy() {
        let echo = worker_program(&Sandbox::new());
        let run = |nr, args| verdict(&echo, ARCH, nr, args);
        for &nr in BASE {
            assert_eq!(run(nr, [0; 6]), ALLOW, "base call {nr}");
        }
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_clone,
            libc::SYS_fork,
            libc::SYS_read | 0x4000_0000,
        ] {
            assert_eq!(run(nr, [0; 6]), KILL, "call {nr}");
        }
        // Another ABI with an allowed number is refused.
        assert_eq!(verdict(&echo, 0x4000_0003, libc::SYS_read, [0; 6]), KILL);
        // Argument rules: prctl(PR_SET_NAME) yes, prctl(PR_SET_DUMPABLE) no.
        let name = libc::PR_SET_NAME as u64;
        assert_eq!(run(libc::SYS_prctl, [name, 0, 0, 0, 0, 0]), ALLOW);
        let dumpable = libc::PR_SET_DUMPABLE as u64;
        assert_eq!(run(libc::SYS_prctl, [dumpable, 0, 0, 0, 0, 0]), KILL);
        let fionbio = libc::FIONBIO;
        assert_eq!(run(libc::SYS_ioctl, [3, fionbio, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(libc::SYS_ioctl, [3, libc::TIOCSTI, 0, 0, 0, 0]), KILL);

        let chat = worker_program(&Sandbox::new().unix_connect());
        let unix = libc::AF_UNIX as u64;
        let inet = libc::AF_INET as u64;
        assert_eq!(
            verdict(&chat, ARCH, libc::SYS_socket, [unix, 1, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(&chat, ARCH, libc::SYS_socket, [inet, 1, 0, 0, 0, 0]),
            KILL
        );
        assert_eq!(verdict(&chat, ARCH, libc::SYS_connect, [0; 6]), ALLOW);
        assert_eq!(verdict(&chat, ARCH, libc::SYS_openat, [0; 6]), KILL);

        let files = worker_program(&Sandbox::new().read_only("/tmp"));
        assert_eq!(verdict(&files, ARCH, libc::SYS_openat, [0; 6]), ALLOW);
        assert_eq!(verdict(&files, ARCH, libc::SYS_unlinkat, [0; 6]), KILL);
    }

    #[test]
    fn server_processes_add_accept_and_threads() {
        let s = Sandbox::new();
        s.prepare().unwrap();
        let c = s.compiled.get().unwrap();
        let (server, threaded) = (c.server.as_ref().unwrap(), c.threaded.as_ref().unwrap());
        assert_eq!(verdict(server, ARCH, libc::SYS_accept4, [0; 6]), ALLOW);
        assert_eq!(verdict(server, ARCH, libc::SYS_clone3, [0; 6]), KILL);
        assert_eq!(verdict(threaded, ARCH, libc::SYS_clone3, [0; 6]), ALLOW);
        assert!(s.describe().contains("unix sockets: none"));
    }
}
