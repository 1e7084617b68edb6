//! The file service's datagram handler: answers HELLO, LIST, STAT and GET for the
//! regular files of one directory, opened relative to a directory descriptor, never
//! by path. It keeps no state between requests: a cookie proves the sender's address
//! (see [`super::cookie`]), and each GET draws at most one window of chunks, paced
//! as the client asks and finished within [`REQUEST_DEADLINE`].

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use sha2::{Digest, Sha256};

use super::cookie::CookieKey;
use super::wire::{self, AMPLIFICATION, Failure, FileMeta, Get, HEADER_MAX, Range, Request};
use crate::handler::{DatagramHandler, Model, Reply};

/// Longest the server spends on one request datagram, in every model: pacing is
/// shortened to fit (see `Files::get`) and a peer that does not take a reply by
/// then ends it. Under `--model sequential` this bounds what one request can make
/// everyone else wait.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(1);

/// A forked worker's watchdog: SIGALRM ends it after this many seconds, whatever it
/// is doing (a STAT checksumming a file on a stalled disk).
pub const WORKER_DEADLINE_SECS: u32 = 10;

/// How many chunks a late paced reply may send back to back to catch up.
const MAX_CATCH_UP: u32 = 3;

/// The limits of one file service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest reply datagram, header included.
    pub max_datagram: usize,
    /// Largest file served.
    pub max_file: u64,
    /// Most chunks (or LIST pages) one request draws: the window.
    pub max_window: usize,
}

/// The file service handler.
pub struct Files {
    /// The served directory, opened once (in the master, before any fork).
    root: OwnedFd,
    shown: PathBuf,
    limits: Limits,
    /// The cookie key, drawn in the master before any fork (shared by all workers).
    key: CookieKey,
}

/// Sends the datagrams of one reply: at most `budget` bytes in all before the
/// sender is validated, one every `gap`, none after the deadline.
struct Out<'a, 'r> {
    reply: &'a Reply<'r>,
    /// Bytes still allowed (None once the sender is validated).
    budget: Option<usize>,
    gap: Duration,
    due: Instant,
    deadline: Instant,
}

impl<'a, 'r> Out<'a, 'r> {
    fn new(reply: &'a Reply<'r>, budget: Option<usize>) -> Out<'a, 'r> {
        let now = Instant::now();
        Out {
            reply,
            budget,
            gap: Duration::ZERO,
            due: now,
            deadline: now + REQUEST_DEADLINE,
        }
    }

    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        if let Some(left) = self.budget {
            if datagram.len() > left {
                log::debug!(
                    "files: {} is not validated: a reply of {} bytes exceeds {AMPLIFICATION}x its request; not sent",
                    self.reply.peer(),
                    datagram.len()
                );
                self.budget = Some(0);
                return Ok(());
            }
            self.budget = Some(left - datagram.len());
        }
        let now = Instant::now();
        if self.due > now {
            std::thread::sleep(self.due - now);
        }
        // A sleep that overshoots (a busy machine) is made up by sending the next
        // few at once, but never more than MAX_CATCH_UP chunks' worth: pacing keeps
        // its rate without turning into bursts.
        self.due = self
            .due
            .max(now.checked_sub(self.gap * MAX_CATCH_UP).unwrap_or(now))
            + self.gap;
        self.reply.send_until(datagram, self.deadline)
    }

    /// False once the deadline has passed (logged once by the caller).
    fn in_time(&self) -> bool {
        Instant::now() < self.deadline
    }
}

/// A regular file opened for serving.
struct Opened {
    file: File,
    size: u64,
    version: u32,
}

impl Files {
    /// Opens `root` (which must be a directory) for serving.
    pub fn open(root: &Path, limits: Limits) -> io::Result<Files> {
        let fd = open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Files {
            root: fd,
            shown: root.to_path_buf(),
            limits,
            key: CookieKey::random()?,
        })
    }

    /// Payload bytes per chunk.
    fn chunk(&self) -> u32 {
        (self.limits.max_datagram - HEADER_MAX) as u32
    }

    /// The regular files of the root with their sizes, sorted by name. Names the
    /// protocol cannot carry (spaces, control characters) are left out; symlinks are
    /// not regular files and are left out too.
    fn list(&self) -> io::Result<Vec<(Vec<u8>, u64)>> {
        // A fresh open file description: the shared root fd's position is never moved,
        // so concurrent children listing at once do not disturb each other.
        let mut dir = Dir::openat(
            self.root.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if !wire::valid_name(name) {
                continue;
            }
            let Ok(st) = fstatat(self.root.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG {
                out.push((name.to_vec(), st.st_size as u64));
            }
        }
        out.sort();
        Ok(out)
    }

    /// LIST pages: `LIST <page> <pages>\n` then `<size> <name>\n` lines.
    fn list_pages(&self) -> io::Result<Vec<Vec<u8>>> {
        // Room for the page header, whose numbers are not known yet.
        let room = self.limits.max_datagram - 32;
        let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
        for (name, size) in self.list()? {
            let mut line = format!("{size} ").into_bytes();
            line.extend_from_slice(&name);
            line.push(b'\n');
            if bodies.last().unwrap().len() + line.len() > room {
                bodies.push(Vec::new());
            }
            bodies.last_mut().unwrap().extend_from_slice(&line);
        }
        let pages = bodies.len() as u32;
        Ok(bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let mut d = wire::list_header(i as u32, pages).into_bytes();
                d.extend_from_slice(&body);
                d
            })
            .collect())
    }

    /// Opens `name` in the root: no symlinks (O_NOFOLLOW), nothing but regular
    /// files (checked before opening, so a FIFO or device is never opened, and again
    /// on the open descriptor), at most `max_file` bytes.
    fn open_file(&self, name: &[u8]) -> Result<Opened, Failure> {
        let before = fstatat(self.root.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.failure(name, "stat", e))?;
        if SFlag::from_bits_truncate(before.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(Failure::NotRegular);
        }
        let fd = openat(
            self.root.as_fd(),
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| self.failure(name, "open", e))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| self.io_failure(name, &e))?;
        if !meta.is_file() || meta.ino() != before.st_ino {
            return Err(Failure::NotRegular);
        }
        if meta.len() > self.limits.max_file {
            return Err(Failure::TooLarge);
        }
        Ok(Opened {
            file,
            size: meta.len(),
            version: version(&meta),
        })
    }

    fn failure(&self, name: &[u8], what: &str, e: Errno) -> Failure {
        match e {
            Errno::ENOENT | Errno::ENOTDIR | Errno::EACCES | Errno::EPERM => Failure::NotFound,
            Errno::ELOOP | Errno::ENXIO | Errno::ENODEV => Failure::NotRegular,
            e => {
                log::warn!(
                    "files: {what} {}/{}: {e}",
                    self.shown.display(),
                    String::from_utf8_lossy(name)
                );
                Failure::Server
            }
        }
    }

    fn io_failure(&self, name: &[u8], e: &io::Error) -> Failure {
        log::warn!(
            "files: reading {}/{}: {e}",
            self.shown.display(),
            String::from_utf8_lossy(name)
        );
        Failure::Server
    }

    /// The CRC-32 of the whole file.
    fn checksum(&self, name: &[u8], f: &Opened) -> Result<u32, Failure> {
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut off = 0u64;
        while off < f.size {
            let want = buf.len().min((f.size - off) as usize);
            match f.file.read_at(&mut buf[..want], off) {
                Ok(0) => break,
                Ok(n) => {
                    crc.update(&buf[..n]);
                    off += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_failure(name, &e)),
            }
        }
        if off != f.size {
            return Err(self.io_failure(name, &io::Error::other("file shrank while being read")));
        }
        Ok(crc.finalize())
    }

    /// Opens `name` and says what its chunks will say (without reading it).
    fn meta(&self, name: &[u8]) -> Result<(Opened, FileMeta), Failure> {
        let f = self.open_file(name)?;
        let meta = FileMeta::new(f.size, f.version, self.chunk());
        Ok((f, meta))
    }

    /// Sends the chunks of the file that the GET selects, at most one window of them
    /// (the first `max_window` selected), `gap` apart, all within the deadline.
    fn get(&self, get: &Get<'_>, out: &mut Out) -> io::Result<()> {
        let (f, meta) = match self.meta(get.name) {
            Ok(x) => x,
            Err(fail) => return out.send(&fail.datagram()),
        };
        if get.ranges.iter().any(|r| r.to >= meta.total) {
            return out.send(&Failure::BadRequest.datagram());
        }
        let window = wire::take_first(&get.ranges, self.limits.max_window as u64);
        let count: u64 = window.iter().map(Range::len).sum();
        // Leave a tenth of the deadline for reading and sending the last chunk.
        let room = REQUEST_DEADLINE * 9 / 10 / count.max(1) as u32;
        out.gap = Duration::from_micros(u64::from(get.gap_us)).min(room);
        let mut datagram = Vec::with_capacity(self.limits.max_datagram);
        for index in window.iter().flat_map(|r| r.from..=r.to) {
            if !out.in_time() {
                log::info!(
                    "files: GET from {} cut at chunk {index}: over the {} s deadline",
                    out.reply.peer(),
                    REQUEST_DEADLINE.as_secs_f64()
                );
                break;
            }
            datagram.clear();
            datagram.extend_from_slice(meta.data_header(index).as_bytes());
            let head = datagram.len();
            datagram.resize(head + meta.len_of(index), 0);
            if let Err(e) = f
                .file
                .read_exact_at(&mut datagram[head..], meta.offset(index))
            {
                self.io_failure(get.name, &e);
                return out.send(&Failure::Server.datagram());
            }
            out.send(&datagram)?;
        }
        Ok(())
    }

    /// Sends the LIST pages asked for (the first window of them without ranges).
    fn list_reply(&self, ranges: Option<Vec<Range>>, out: &mut Out) -> io::Result<()> {
        let pages = match self.list_pages() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("files: listing {}: {e}", self.shown.display());
                return out.send(&Failure::Server.datagram());
            }
        };
        let ranges = ranges.unwrap_or(vec![Range {
            from: 0,
            to: pages.len() as u32 - 1,
        }]);
        if ranges.iter().any(|r| r.to as usize >= pages.len()) {
            return out.send(&Failure::BadRequest.datagram());
        }
        for r in wire::take_first(&ranges, self.limits.max_window as u64) {
            for page in r.from..=r.to {
                out.send(&pages[page as usize])?;
            }
        }
        Ok(())
    }
}

/// A file's version: the first 32 bits of SHA-256 over its device, inode, size and
/// modification and change times. A rewrite changes ctime, a replacement the inode.
fn version(m: &std::fs::Metadata) -> u32 {
    let mut h = Sha256::new();
    for v in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
    ] {
        h.update(v.to_be_bytes());
    }
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl DatagramHandler for Files {
    fn handle(&self, datagram: &[u8], reply: &Reply<'_>) -> io::Result<()> {
        if !reply.can_reply() {
            log::debug!(
                "files: request from {} has no return address; ignored",
                reply.peer()
            );
            return Ok(());
        }
        if reply.context().model == Model::Fork {
            // The worker is this request's own process: a watchdog bounds its life.
            nix::unistd::alarm::set(WORKER_DEADLINE_SECS);
        }
        let request = wire::parse_request(datagram);
        let now = crate::unix_now();
        let validated = request
            .as_ref()
            .and_then(Request::cookie)
            .is_some_and(|c| self.key.check(reply.peer(), c, now));
        // Until the sender has shown it receives at its address, its request may draw
        // at most AMPLIFICATION times its own size.
        let budget = (!validated).then_some(AMPLIFICATION * datagram.len());
        let mut out = Out::new(reply, budget);
        // A client that leaves mid-reply (ECONNREFUSED, or its socket file gone) is
        // a clean end: the core judges that for every datagram service.
        match request {
            None => {
                log::debug!(
                    "files: bad request of {} bytes from {}",
                    datagram.len(),
                    reply.peer()
                );
                out.send(&Failure::BadRequest.datagram())
            }
            Some(Request::Hello) => match self.key.make(reply.peer(), now) {
                Some(c) => out.send(&c.reply()),
                None => Ok(()),
            },
            Some(_) if !validated => out.send(&Failure::BadCookie.datagram()),
            Some(Request::List(_, ranges)) => self.list_reply(ranges, &mut out),
            Some(Request::Stat(_, name)) => match self.meta(name) {
                Ok((f, meta)) => match self.checksum(name, &f) {
                    Ok(crc) => {
                        let window = self.limits.max_window as u32;
                        out.send(&meta.stat_reply(name, crc, window))
                    }
                    Err(fail) => out.send(&fail.datagram()),
                },
                Err(fail) => out.send(&fail.datagram()),
            },
            Some(Request::Get(get)) => {
                log::debug!(
                    "files: GET {} ({} ranges) for {}",
                    std::ffi::OsStr::from_bytes(get.name).to_string_lossy(),
                    get.ranges.len(),
                    reply.peer()
                );
                self.get(&get, &mut out)
            }
        }
    }
}
