//! `forkserve files-get ADDR NAME [-o OUT]`: fetches one file from the file service
//! (STAT, then GET, then ranged GETs for whatever was lost), checks its size and
//! CRC-32, and writes it atomically (a temporary file in the target directory,
//! renamed into place). Exit codes follow sysexits: 64 usage, 65 data error (checksum
//! or size mismatch, file changed during the transfer), 66 not found / not a regular
//! file, 69 unavailable (no server, timeout, file too large), 73 cannot create the
//! output, 76 protocol error (a reply this protocol does not send).

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{ToSocketAddrs, UdpSocket};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};

use super::wire::{self, Failure, FileMeta, Range, Reply};

/// Arguments of `forkserve files-get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The file service: udp:HOST:PORT, unixgram:/PATH or unixgram:@NAME
    pub addr: String,
    /// The file to fetch, as LIST shows it
    pub name: String,
    /// Where to write it (default: NAME in the current directory; a directory: NAME in it)
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Seconds to wait for a reply before asking again
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub timeout: f64,
    /// Requests in a row that may go unanswered before giving up
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub retries: u32,
}

const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_CANTCREAT: u8 = 73;
const EX_PROTOCOL: u8 = 76;

/// A failure, with the exit code it ends the program with.
#[derive(Debug)]
struct Fail {
    code: u8,
    msg: String,
}

fn fail(code: u8, msg: impl Into<String>) -> Fail {
    Fail {
        code,
        msg: msg.into(),
    }
}

/// Runs `files-get`; prints a summary (or the error) on stderr.
pub fn run(args: &GetArgs) -> ExitCode {
    match fetch(args) {
        Ok(summary) => {
            eprintln!("files-get: {summary}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("files-get: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

/// A private directory holding the client's own Unix socket; removed on drop.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The client's socket, connected to the server (so it receives only the server's
/// datagrams, and a UDP "port unreachable" shows up as ECONNREFUSED).
struct Sock {
    kind: Kind,
    /// The read timeout last set (set again only when it changes).
    wait: Cell<Duration>,
}

enum Kind {
    Udp(UdpSocket),
    Unix(UnixDatagram, #[allow(dead_code)] PrivateDir),
}

impl Sock {
    fn new(kind: Kind) -> Sock {
        Sock {
            kind,
            wait: Cell::new(Duration::ZERO),
        }
    }

    fn connect(addr: &str) -> Result<Sock, Fail> {
        let unavailable = |e: io::Error| fail(EX_UNAVAILABLE, format!("{addr}: {e}"));
        if let Some(hp) = addr.strip_prefix("udp:") {
            let hp = hp.replace(['[', ']'], "");
            let target = hp
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .and_then(|hp| hp.to_socket_addrs().ok()?.next())
                .ok_or_else(|| {
                    fail(
                        EX_USAGE,
                        format!("bad address '{addr}' (expected udp:HOST:PORT)"),
                    )
                })?;
            let local = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(local).map_err(unavailable)?;
            s.connect(target).map_err(unavailable)?;
            let _ = setsockopt(&s, sockopt::RcvBuf, &(8 << 20));
            return Ok(Sock::new(Kind::Udp(s)));
        }
        if let Some(path) = addr.strip_prefix("unixgram:") {
            if path.is_empty() {
                return Err(fail(EX_USAGE, format!("bad address '{addr}': empty path")));
            }
            // Replies need an address to go to: bind one in a directory only we can enter.
            let dir = private_dir()?;
            let dir = PrivateDir(dir);
            let s = UnixDatagram::bind(dir.0.join("c.sock")).map_err(unavailable)?;
            if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let sa = std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .map_err(unavailable)?;
                s.connect_addr(&sa).map_err(unavailable)?;
            } else {
                s.connect(path).map_err(unavailable)?;
            }
            return Ok(Sock::new(Kind::Unix(s, dir)));
        }
        Err(fail(
            EX_USAGE,
            format!("bad address '{addr}' (expected udp:HOST:PORT or unixgram:/PATH)"),
        ))
    }

    fn send(&self, data: &[u8]) -> io::Result<()> {
        match &self.kind {
            Kind::Udp(s) => s.send(data).map(drop),
            Kind::Unix(s, _) => s.send(data).map(drop),
        }
    }

    /// Receives one datagram, or None when nothing came within `wait`.
    fn recv(&self, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let wait = wait.max(Duration::from_millis(1));
        if wait != self.wait.get() {
            match &self.kind {
                Kind::Udp(s) => s.set_read_timeout(Some(wait))?,
                Kind::Unix(s, _) => s.set_read_timeout(Some(wait))?,
            }
            self.wait.set(wait);
        }
        let got = match &self.kind {
            Kind::Udp(s) => s.recv(buf),
            Kind::Unix(s, _) => s.recv(buf),
        };
        match got {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Creates a fresh directory (mode 0700) under the temp dir for the client's socket.
fn private_dir() -> Result<PathBuf, Fail> {
    let mut last = None;
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "forkserve-get-{}-{nanos:x}{attempt}",
            std::process::id()
        ));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(fail(EX_CANTCREAT, format!("{}: {e}", dir.display()))),
        }
    }
    Err(fail(
        EX_CANTCREAT,
        format!(
            "no private socket directory in {}: {:?}",
            std::env::temp_dir().display(),
            last
        ),
    ))
}

fn refused(addr: &str, e: io::Error) -> Fail {
    let why = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => {
            "connection refused (is the file service running there?)".to_string()
        }
        _ => e.to_string(),
    };
    fail(EX_UNAVAILABLE, format!("{addr}: {why}"))
}

fn server_failure(name: &str, f: Failure) -> Fail {
    let code = match f {
        Failure::NotFound | Failure::NotRegular => EX_NOINPUT,
        Failure::BadRequest => EX_USAGE,
        Failure::TooLarge | Failure::Server => EX_UNAVAILABLE,
    };
    fail(
        code,
        format!("{name}: {} (server said ERR {})", f.text(), f.text()),
    )
}

/// The temporary output file; removed on drop unless renamed into place.
struct TempOut {
    path: PathBuf,
    file: File,
    kept: bool,
}

impl TempOut {
    fn create(target: &Path) -> Result<TempOut, Fail> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(".{base}.{}.part", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| fail(EX_CANTCREAT, format!("{}: {e}", path.display())))?;
        Ok(TempOut {
            path,
            file,
            kept: false,
        })
    }

    fn persist(mut self, target: &Path) -> Result<(), Fail> {
        let cant = |e: io::Error| fail(EX_CANTCREAT, format!("{}: {e}", target.display()));
        self.file.sync_all().map_err(cant)?;
        fs::rename(&self.path, target).map_err(cant)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What the transfer saw, for the summary line.
#[derive(Default)]
struct Stats {
    datagrams: u64,
    duplicates: u64,
    reordered: u64,
    lost: u64,
    rerequests: u64,
}

/// Sends `request` and waits for the first reply that `accept` takes, asking again
/// after each `timeout`, `retries` times in all.
fn ask<T>(
    sock: &Sock,
    args: &GetArgs,
    request: &[u8],
    buf: &mut [u8],
    mut accept: impl FnMut(Reply<'_>) -> Option<Result<T, Fail>>,
) -> Result<T, Fail> {
    let timeout = Duration::from_secs_f64(args.timeout);
    for _ in 0..args.retries.max(1) {
        sock.send(request).map_err(|e| refused(&args.addr, e))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(n) = sock.recv(buf, left).map_err(|e| refused(&args.addr, e))? else {
                break;
            };
            if let Some(r) = wire::parse_reply(&buf[..n]).and_then(&mut accept) {
                return r;
            }
        }
    }
    Err(fail(
        EX_UNAVAILABLE,
        format!(
            "{}: no reply after {} tries of {:.1} s (timed out)",
            args.addr,
            args.retries.max(1),
            args.timeout
        ),
    ))
}

/// Most re-requests sent in one round (each is served at once by its own worker
/// under the fork model, so more would overrun the client's receive buffer).
const REQUESTS_PER_ROUND: usize = 4;
/// Longest request datagram: under every common MTU.
const MAX_REQUEST: usize = 1200;

/// One request of a round and the last chunk it asks for (when that arrives, the
/// server has finished sending it).
struct Ask {
    text: String,
    last: u32,
}

/// `GET NAME RANGES` requests for the missing chunks, each fitting one datagram, at
/// most [`REQUESTS_PER_ROUND`].
fn missing_requests(have: &[bool], name: &str) -> (Vec<Ask>, u64) {
    let mut ranges: Vec<Range> = Vec::new();
    for (i, _) in have.iter().enumerate().filter(|(_, h)| !**h) {
        let i = i as u32;
        match ranges.last_mut() {
            Some(r) if r.to + 1 == i => r.to = i,
            _ => ranges.push(Range { from: i, to: i }),
        }
    }
    let mut asks = Vec::new();
    let mut chunks = 0;
    let mut batch: Vec<Range> = Vec::new();
    let prefix = format!("GET {name} ");
    let mut len = prefix.len();
    for r in ranges {
        let item = wire::format_ranges(&[r]).len() + 1;
        if !batch.is_empty() && (len + item > MAX_REQUEST || batch.len() == wire::MAX_RANGES) {
            asks.push(Ask {
                text: prefix.clone() + &wire::format_ranges(&batch),
                last: batch.last().unwrap().to,
            });
            batch.clear();
            len = prefix.len();
            if asks.len() == REQUESTS_PER_ROUND {
                return (asks, chunks);
            }
        }
        chunks += r.len();
        len += item;
        batch.push(r);
    }
    if !batch.is_empty() {
        asks.push(Ask {
            text: prefix + &wire::format_ranges(&batch),
            last: batch.last().unwrap().to,
        });
    }
    (asks, chunks)
}

fn fetch(args: &GetArgs) -> Result<String, Fail> {
    if !args.timeout.is_finite() || args.timeout <= 0.0 {
        return Err(fail(
            EX_USAGE,
            "--timeout: expected a positive number of seconds",
        ));
    }
    let name = args.name.as_str();
    if !wire::valid_name(name.as_bytes()) {
        return Err(fail(
            EX_USAGE,
            format!(
                "'{name}': not a file name the service serves (one name, no '/', spaces or control characters)"
            ),
        ));
    }
    let target = match &args.output {
        Some(p) if p.is_dir() => p.join(name),
        Some(p) => p.clone(),
        None => PathBuf::from(name),
    };
    let sock = Sock::connect(&args.addr)?;
    let mut buf = vec![0u8; 65536];
    let started = Instant::now();

    let stat = format!("STAT {name}");
    let meta = ask(&sock, args, stat.as_bytes(), &mut buf, |r| match r {
        Reply::Stat { name: n, meta } if n == name.as_bytes() => Some(Ok(meta)),
        Reply::Err(f) => Some(Err(server_failure(name, f))),
        _ => None,
    })?;

    let out = TempOut::create(&target)?;
    out.file
        .set_len(meta.size)
        .map_err(|e| fail(EX_CANTCREAT, format!("{}: {e}", out.path.display())))?;
    let mut have = vec![false; meta.total as usize];
    let mut missing = meta.total as usize;
    let mut stats = Stats::default();
    let timeout = Duration::from_secs_f64(args.timeout);
    // After the first chunk of a round, a gap this long ends the round.
    let gap = (timeout / 4).max(Duration::from_millis(20));
    // Once every request of a round has sent its last chunk, stragglers (reordered
    // datagrams) get this long before the round ends.
    let grace = gap.min(Duration::from_millis(30));
    let mut asks = vec![Ask {
        text: format!("GET {name}"),
        last: meta.total - 1,
    }];
    let mut silent_rounds = 0;

    while missing > 0 {
        for ask in &asks {
            sock.send(ask.text.as_bytes())
                .map_err(|e| refused(&args.addr, e))?;
        }
        let mut pending: Vec<u32> = asks.iter().map(|a| a.last).collect();
        let mut last_index: Option<u32> = None;
        let mut got_any = false;
        let mut wait = timeout;
        while missing > 0 {
            let Some(n) = sock
                .recv(&mut buf, wait)
                .map_err(|e| refused(&args.addr, e))?
            else {
                break;
            };
            match wire::parse_reply(&buf[..n]) {
                Some(Reply::Data {
                    index,
                    meta: m,
                    payload,
                }) => {
                    if m != meta {
                        return Err(changed(name, &meta, &m));
                    }
                    got_any = true;
                    if let Some(p) = pending.iter().position(|&l| l == index) {
                        pending.swap_remove(p);
                    }
                    wait = if pending.is_empty() { grace } else { gap };
                    stats.datagrams += 1;
                    if last_index.is_some_and(|l| index < l) {
                        stats.reordered += 1;
                    }
                    last_index = Some(index);
                    if have[index as usize] {
                        stats.duplicates += 1;
                        continue;
                    }
                    out.file
                        .write_all_at(payload, meta.offset(index))
                        .map_err(|e| fail(EX_CANTCREAT, format!("{}: {e}", out.path.display())))?;
                    have[index as usize] = true;
                    missing -= 1;
                }
                Some(Reply::Err(f)) => return Err(server_failure(name, f)),
                Some(Reply::Stat { .. } | Reply::List { .. }) => {}
                None => {
                    return Err(fail(
                        EX_PROTOCOL,
                        format!(
                            "{}: a reply this protocol does not send ({n} bytes)",
                            args.addr
                        ),
                    ));
                }
            }
        }
        if missing == 0 {
            break;
        }
        silent_rounds = if got_any { 0 } else { silent_rounds + 1 };
        if silent_rounds >= args.retries.max(1) {
            return Err(fail(
                EX_UNAVAILABLE,
                format!(
                    "{name}: timed out: {missing} of {} chunks still missing after {} unanswered requests",
                    meta.total, silent_rounds
                ),
            ));
        }
        let (next, chunks) = missing_requests(&have, name);
        stats.lost += chunks;
        stats.rerequests += next.len() as u64;
        asks = next;
    }

    let received = started.elapsed().as_secs_f64();
    verify(&out.file, &meta, name)?;
    out.persist(&target)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "{name}: {} bytes in {} chunks to {} in {secs:.3} s ({:.1} MiB/s; received in {received:.3} s, then checked and synced); {} datagrams, {} re-requested in {} requests, {} duplicates, {} reordered",
        meta.size,
        meta.total,
        target.display(),
        meta.size as f64 / (1 << 20) as f64 / secs.max(1e-9),
        stats.datagrams,
        stats.lost,
        stats.rerequests,
        stats.duplicates,
        stats.reordered
    ))
}

fn changed(name: &str, was: &FileMeta, now: &FileMeta) -> Fail {
    fail(
        EX_DATAERR,
        format!(
            "{name}: changed on the server during the transfer (size {} crc {:08x}, now size {} crc {:08x}); try again",
            was.size, was.crc, now.size, now.crc
        ),
    )
}

/// Reads the written file back and checks its size and CRC-32 against the server's.
fn verify(file: &File, meta: &FileMeta, name: &str) -> Result<(), Fail> {
    let err = |e: io::Error| fail(EX_CANTCREAT, format!("reading back {name}: {e}"));
    let size = file.metadata().map_err(err)?.len();
    if size != meta.size {
        return Err(fail(
            EX_DATAERR,
            format!(
                "{name}: size mismatch: got {size} bytes, server said {}",
                meta.size
            ),
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < size {
        let want = buf.len().min((size - off) as usize);
        file.read_exact_at(&mut buf[..want], off).map_err(err)?;
        crc.update(&buf[..want]);
        off += want as u64;
    }
    let got = crc.finalize();
    if got != meta.crc {
        return Err(fail(
            EX_DATAERR,
            format!(
                "{name}: checksum mismatch: got crc32 {got:08x}, server said {:08x}",
                meta.crc
            ),
        ));
    }
    let _ = io::stderr().flush();
    Ok(())
}
