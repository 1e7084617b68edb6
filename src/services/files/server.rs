//! The file service's datagram handler: answers LIST, STAT and GET for the regular
//! files of one directory, opened relative to a directory descriptor, never by path.

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

use super::wire::{self, Failure, FileMeta, HEADER_MAX, Range, Request};
use crate::handler::{DatagramHandler, Model, Reply};

/// Pause between two batches of `max_inflight` datagrams of one reply.
pub const PACE: Duration = Duration::from_millis(1);

/// Longest a forked worker may take over one request. A Unix-datagram client that
/// stops reading leaves `Reply::send` waiting for queue room for ever (the kernel
/// cannot poll an unconnected Unix socket for its peer's room); SIGALRM ends such a
/// worker. A 64 MiB reply normally takes about a second.
pub const WORKER_DEADLINE_SECS: u32 = 120;

/// The limits of one file service.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest reply datagram, header included.
    pub max_datagram: usize,
    /// Largest file served.
    pub max_file: u64,
    /// Datagrams sent back to back before a pause of [`PACE`].
    pub max_inflight: usize,
}

/// The file service handler.
pub struct Files {
    /// The served directory, opened once (in the master, before any fork).
    root: OwnedFd,
    shown: PathBuf,
    limits: Limits,
}

/// Sends the datagrams of one reply in batches of `max_inflight`, one batch per
/// [`PACE`], so a client's receive buffer can drain between them. Batch k is due at
/// `start + k × PACE`; a sleep that overshoots (a busy machine) is made up by sending
/// the next batch at once, but never more than one batch ahead, so bursts stay at
/// most two batches long.
struct Pacer<'a, 'r> {
    reply: &'a Reply<'r>,
    burst: usize,
    sent: usize,
    start: Instant,
}

impl<'a, 'r> Pacer<'a, 'r> {
    fn new(reply: &'a Reply<'r>, burst: usize) -> Pacer<'a, 'r> {
        Pacer {
            reply,
            burst: burst.max(1),
            sent: 0,
            start: Instant::now(),
        }
    }

    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        if self.sent > 0 && self.sent.is_multiple_of(self.burst) {
            let batches = u32::try_from(self.sent / self.burst).unwrap_or(u32::MAX);
            let due = self.start + PACE * batches;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else if now - due > PACE {
                // Late by more than a batch: keep one batch of catch-up (the next is
                // due now), forget the rest.
                self.start = now.checked_sub(PACE * (batches + 1)).unwrap_or(self.start);
            }
        }
        self.sent += 1;
        self.reply.send(datagram)
    }
}

/// A regular file opened for serving.
struct Opened {
    file: File,
    size: u64,
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

    fn stat(&self, name: &[u8]) -> Result<(Opened, FileMeta), Failure> {
        let f = self.open_file(name)?;
        let crc = self.checksum(name, &f)?;
        let meta = FileMeta::new(f.size, crc, self.chunk());
        Ok((f, meta))
    }

    /// Sends the chunks of `name` that `ranges` select (all of them for None).
    fn get(&self, name: &[u8], ranges: Option<Vec<Range>>, out: &mut Pacer) -> io::Result<()> {
        let (f, meta) = match self.stat(name) {
            Ok(x) => x,
            Err(fail) => return out.send(&fail.datagram()),
        };
        let ranges = ranges.unwrap_or(vec![Range {
            from: 0,
            to: meta.total - 1,
        }]);
        if ranges.iter().any(|r| r.to >= meta.total) {
            return out.send(&Failure::BadRequest.datagram());
        }
        let mut datagram = Vec::with_capacity(self.limits.max_datagram);
        for r in ranges {
            for index in r.from..=r.to {
                datagram.clear();
                datagram.extend_from_slice(meta.data_header(index).as_bytes());
                let head = datagram.len();
                datagram.resize(head + meta.len_of(index), 0);
                if let Err(e) = f
                    .file
                    .read_exact_at(&mut datagram[head..], meta.offset(index))
                {
                    self.io_failure(name, &e);
                    return out.send(&Failure::Server.datagram());
                }
                out.send(&datagram)?;
            }
        }
        Ok(())
    }

    fn list_reply(&self, ranges: Option<Vec<Range>>, out: &mut Pacer) -> io::Result<()> {
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
        for r in ranges {
            for page in r.from..=r.to {
                out.send(&pages[page as usize])?;
            }
        }
        Ok(())
    }
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
        // A client that leaves mid-reply (ECONNREFUSED, or its socket file gone) is
        // a clean end: the core judges that for every datagram service.
        let mut out = Pacer::new(reply, self.limits.max_inflight);
        self.answer(datagram, &mut out)
    }
}

impl Files {
    fn answer(&self, datagram: &[u8], out: &mut Pacer) -> io::Result<()> {
        let reply = out.reply;
        match wire::parse_request(datagram) {
            None => {
                log::debug!(
                    "files: bad request of {} bytes from {}",
                    datagram.len(),
                    reply.peer()
                );
                out.send(&Failure::BadRequest.datagram())
            }
            Some(Request::List(ranges)) => self.list_reply(ranges, out),
            Some(Request::Stat(name)) => match self.stat(name) {
                Ok((_, meta)) => out.send(&meta.stat_reply(name)),
                Err(fail) => out.send(&fail.datagram()),
            },
            Some(Request::Get(name, ranges)) => {
                log::debug!(
                    "files: GET {} for {}",
                    std::ffi::OsStr::from_bytes(name).to_string_lossy(),
                    reply.peer()
                );
                self.get(name, ranges, out)
            }
        }
    }
}
