//! A file server over datagrams (exercise 1 of the reference material, done
//! properly): it lists and serves the regular files of one directory over UDP and
//! Unix datagram sockets, in chunks that each fit one datagram, and `forkserve
//! files-get` fetches a file with retries of lost chunks and a checksum check.
//!
//! Under the fork model every request datagram is served by its own child, as
//! Python's `ForkingUDPServer` does; `--model sequential` serves them one at a time
//! in one server process.
//!
//! # Wire format (version 2: cookies and windows)
//!
//! One request per datagram, ASCII, fields separated by single spaces, an optional
//! trailing `\n` or `\r\n`. Every request but HELLO carries a cookie:
//!
//! | request | reply |
//! |---|---|
//! | `HELLO [PADDING]` | `COOKIE <cookie>\n`, if that fits 3× the request |
//! | `LIST COOKIE [RANGES]` | the LIST pages RANGES selects (the first window of pages without) |
//! | `STAT COOKIE NAME` | `STAT NAME <total> <size> <version> <chunk> <crc32> <window>\n` |
//! | `GET COOKIE NAME RANGES [GAP]` | at most one window of the chunks RANGES selects, GAP µs apart |
//!
//! **Address validation** (as QUIC's Retry and DTLS's HelloVerifyRequest): a client
//! first sends `HELLO` padded to at least 14 bytes (`files-get` sends 64) and gets a
//! cookie, 32 hex digits of HMAC-SHA256 over its address (IP and port, or Unix
//! socket path) and a 60-second time slot, keyed by 32 random bytes drawn in the
//! master when the service starts (see [`cookie`]). A cookie is accepted in its slot
//! and the next, for that address only; anything else is `ERR bad cookie`, and the
//! client asks for a new one. **Until a request carries a valid cookie, everything
//! the server sends in reply to it totals at most 3× the request's size** (QUIC's
//! limit, RFC 9000 §8.1): a reply that would exceed it is not sent. So a spoofed
//! source, which never sees its cookie, can draw at most 3× what it sends, towards
//! the address it spoofed.
//!
//! **Windows.** After validation the client drives the transfer: each GET names
//! the chunks it wants (`RANGES`: `FROM-TO` inclusive from 0, or a comma-separated
//! list like `0-9,17,40-41`, at most 256 items); overlapping, touching and repeated
//! ranges are merged, so no chunk is sent twice for one request; and only the first
//! `--max-window` chunks selected (default 64, some 71 KiB) are sent, the window the
//! STAT reply announces. One request therefore causes at most one window of bytes.
//! `GAP` (0 to 1,000,000 µs, default 0) asks the server to space the chunks, the
//! client's pacing; the server shortens it so the whole reply fits its one-second
//! deadline per request. Congestion control, RTT estimation and loss recovery are
//! the client's ([`cc`]): the server keeps no state between requests.
//!
//! `NAME` is one file name: 1 to 255 bytes, not `.` or `..`, without `/`, NUL,
//! spaces or control characters.
//!
//! Every reply datagram starts with a header line ended by `\n` and fits
//! `--max-datagram` bytes (default 1200, under the common 1280-byte IPv6 minimum MTU
//! once IP and UDP headers are added):
//!
//! - `DATA <index> <total> <size> <version> <chunk>\n<payload>`: chunk `index` (from
//!   0) of `total`; `size` is the file's size in bytes, `version` 8 hex digits that
//!   change when the file is rewritten or replaced (a hash of its inode number, size
//!   and modification and change times: cheap, so a GET never reads the whole
//!   file), `chunk` the payload length of every chunk but the last (`--max-datagram`
//!   − 64). The payload is the file's bytes from `index × chunk`. An empty file is
//!   one chunk with an empty payload. Every chunk names its index and the file's
//!   version, so a client detects loss, duplicates, reordering and a file that
//!   changed between two requests.
//! - `STAT NAME <total> <size> <version> <chunk> <crc32> <window>\n`: what every chunk
//!   of NAME will say, the CRC-32 of the whole file (8 hex digits), and the most
//!   chunks one GET draws.
//! - `COOKIE <cookie>\n`: the reply to HELLO.
//! - `LIST <page> <pages>\n` then one `<size> <name>\n` line per regular file,
//!   sorted by name, as many as fit; pages are counted from 0. An empty directory is
//!   one page with no lines. Symlinks, directories, devices and names the protocol
//!   cannot carry are not listed.
//! - `ERR <reason>\n`, one datagram: `ERR not found`, `ERR not a regular file`,
//!   `ERR bad request` (anything unparsable, a bad name, a range past the end),
//!   `ERR too large` (over `--max-file`, default 64 MiB), `ERR server error` when
//!   a file that was found could not be read (logged on the server), and `ERR bad
//!   cookie`.
//!
//! The checksum is CRC-32 (IEEE 802.3, as in gzip, zip and PNG; computed with
//! `crc32fast`): it catches reassembly mistakes (a chunk at the wrong offset, chunks
//! of two versions of a file) and any burst error up to 32 bits; it is fast (GB/s)
//! and every language has it (`zlib.crc32`, `cksum -a crc32b`). It is not a
//! cryptographic hash: it guards against accidents, not against a forger. Single
//! datagrams are already guarded by the UDP checksum (Unix datagrams are not
//! corrupted at all).
//!
//! # Path safety
//!
//! The served directory is opened once, when the service is built (in the master,
//! before it forks): workers inherit the descriptor, a missing or unreadable
//! directory is a start-up error, and the service keeps serving the directory it
//! started with even after `--user` drops privileges or the path is renamed. Names
//! are checked against the rules above (so `/`, `..` and absolute paths never reach
//! the kernel) and then looked up relative to that descriptor with `fstatat`
//! (`AT_SYMLINK_NOFOLLOW`: only regular files, so no FIFO or device is ever opened)
//! and `openat` (`O_NOFOLLOW | O_NONBLOCK`): a symlink is never followed, whether it
//! points inside the directory or out of it, and the opened file is checked again
//! with `fstat` (still a regular file, the same inode) before anything is read. A
//! file that cannot be opened for lack of permission reads as `ERR not found`.
//!
//! # No lock-out
//!
//! Every request has a deadline of one second in every model ([`server::REQUEST_DEADLINE`]):
//! pacing is shortened to fit it, and a Unix-datagram peer that does not take its
//! replies by then ends the reply. A forked worker also has a watchdog (SIGALRM
//! after 10 s) for a STAT checksumming a file on a stalled disk. Sources are limited
//! by default to [`DEFAULT_PER_SOURCE`] (4) requests served at once per IP address
//! (or uid on Unix sockets; `--max-per-source` changes it), so one source cannot
//! hold every worker; under `--model sequential` the server process reads what is
//! queued into per-source queues of that size and serves them in turn, so a second
//! source's request waits behind at most one request of each other source, not
//! behind everything a first source sent.

pub mod cc;
pub mod client;
pub mod cookie;
pub mod server;
pub mod wire;

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::{Error, Sandbox, Service};

pub use server::{Files, Limits};

/// Options of the file service (flattened into the server's options).
#[derive(clap::Args, Debug, Clone)]
pub struct FilesOpts {
    /// File service: serve the regular files of DIR (without it, plain `forkserve` skips the file service)
    #[arg(long = "files-root", value_name = "DIR", global = true)]
    pub root: Option<PathBuf>,
    /// File service: largest reply datagram in bytes, header included (512-65507)
    #[arg(long, value_name = "BYTES", default_value_t = 1200, global = true)]
    pub max_datagram: usize,
    /// File service: largest file served, in bytes (a K, M or G suffix is allowed)
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size, global = true)]
    pub max_file: u64,
    /// File service: most chunks one request draws (the window cap)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WINDOW, global = true)]
    pub max_window: usize,
}

/// Default `--max-window`: 64 chunks of 1136 bytes, some 71 KiB per request.
pub const DEFAULT_WINDOW: usize = 64;
/// Largest `--max-window`.
pub const MAX_WINDOW: usize = 1024;
/// Requests served at once from one source (IP address, or uid on Unix sockets)
/// unless `--max-per-source` says otherwise: a client drives its transfer with a
/// few requests in flight, and one source cannot take every worker slot.
pub const DEFAULT_PER_SOURCE: usize = 4;

/// Parses `123`, `64K`, `64M`, `1G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("expected a size like 1048576, 64K, 64M or 1G, got '{s}'"))
}

/// The directory `forkserve files --root DIR` names (set before the service is built).
static SUBCOMMAND_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Records the `--root` of the `files` subcommand.
pub fn use_root(dir: PathBuf) {
    let _ = SUBCOMMAND_ROOT.set(dir);
}

/// Builds the file service, or None (logged) when no directory was given.
pub fn make(opts: &FilesOpts) -> Result<Option<Service>, Error> {
    let Some(root) = SUBCOMMAND_ROOT.get().or(opts.root.as_ref()) else {
        log::info!("files: skipped: no --files-root DIR given");
        return Ok(None);
    };
    let usage = |m: String| Error::new(Error::USAGE, m);
    if !(wire::MIN_DATAGRAM..=wire::MAX_DATAGRAM).contains(&opts.max_datagram) {
        return Err(usage(format!(
            "--max-datagram {}: expected {} to {} bytes",
            opts.max_datagram,
            wire::MIN_DATAGRAM,
            wire::MAX_DATAGRAM
        )));
    }
    let chunk = (opts.max_datagram - wire::HEADER_MAX) as u64;
    if opts.max_file.div_ceil(chunk) > u64::from(u32::MAX) {
        return Err(usage(format!(
            "--max-file {}: more than 2^32 chunks of {chunk} bytes",
            opts.max_file
        )));
    }
    if !(1..=MAX_WINDOW).contains(&opts.max_window) {
        return Err(usage(format!(
            "--max-window {}: expected 1 to {MAX_WINDOW} chunks",
            opts.max_window
        )));
    }
    let limits = Limits {
        max_datagram: opts.max_datagram,
        max_file: opts.max_file,
        max_window: opts.max_window,
    };
    let files = Files::open(root, limits).map_err(|e| {
        let why = e.to_string();
        let why = why
            .split(" (os error")
            .next()
            .unwrap_or(&why)
            .to_lowercase();
        // EX_NOINPUT: the directory to serve is missing or unreadable.
        Error::new(66, format!("files: cannot serve {}: {why}", root.display()))
    })?;
    log::info!("files: serving {}", root.display());
    // A worker reads the served directory, nothing else.
    let policy = Sandbox::new().read_only(root);
    Ok(Some(
        Service::datagram("files", files)
            .max_per_source(Some(DEFAULT_PER_SOURCE))
            .sandbox(policy),
    ))
}
