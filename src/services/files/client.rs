//! `forkserve files-get ADDR NAME [-o OUT]`: fetches one file from the file service
//! (HELLO for a cookie, STAT, then GETs of windows of chunks sized and paced by the
//! congestion control of [`super::cc`], asking again for what was lost), checks its
//! size and CRC-32, and writes it atomically (a temporary file in the target directory,
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

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::cc::{RttEstimator, Window};
use super::wire::{self, Cookie, Failure, FileMeta, Range, Reply};

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
    /// Seconds to wait for the first reply before asking again (later waits follow the measured round-trip time)
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub timeout: f64,
    /// Timeouts in a row (each twice as long as the last) before giving up
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

    /// The receive buffer's size in bytes, as the kernel reports it.
    fn recv_buffer(&self) -> usize {
        let got = match &self.kind {
            Kind::Udp(s) => getsockopt(s, sockopt::RcvBuf),
            Kind::Unix(s, _) => getsockopt(s, sockopt::RcvBuf),
        };
        got.unwrap_or(212_992)
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
        Failure::BadCookie => EX_PROTOCOL,
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
    spurious: u64,
    requests: u64,
    rerequested: u64,
    timeouts: u64,
}

/// Smallest reordering window: requests are served by separate workers whose start
/// varies by about a fork's time, so their chunks interleave by that much.
const REORDER_FLOOR: Duration = Duration::from_millis(2);

/// Bytes of a HELLO: padded so its COOKIE reply is well within the amplification
/// limit (as QUIC pads its first datagram).
const HELLO_SIZE: usize = 64;
/// Longest request datagram: under every common MTU.
const MAX_REQUEST: usize = 1200;
/// A request asks for at least this much time's worth of chunks (at the pacing
/// rate), so a fast transfer does not cost a request, and a fork, per chunk.
const REQUEST_SPAN: Duration = Duration::from_millis(4);

/// The cookie and the round-trip estimate shared by every step of one fetch.
struct Session<'a> {
    sock: &'a Sock,
    args: &'a GetArgs,
    cookie: Cookie,
    rtt: RttEstimator,
}

impl<'a> Session<'a> {
    /// HELLO until a COOKIE comes; its round trip is the first RTT sample (Karn:
    /// only when the first HELLO was answered).
    fn start(sock: &'a Sock, args: &'a GetArgs) -> Result<Session<'a>, Fail> {
        let mut rtt = RttEstimator::new(Duration::from_secs_f64(args.timeout));
        let cookie = hello(sock, args, &mut rtt)?;
        Ok(Session {
            sock,
            args,
            cookie,
            rtt,
        })
    }

    /// A new cookie (the old one expired, or the server restarted).
    fn renew(&mut self) -> Result<(), Fail> {
        self.cookie = hello(self.sock, self.args, &mut self.rtt)?;
        Ok(())
    }

    /// Sends `request(cookie)` until `accept` takes a reply; a bad-cookie error
    /// renews the cookie once and asks again.
    fn ask<T>(
        &mut self,
        request: impl Fn(&Cookie) -> String,
        buf: &mut [u8],
        mut accept: impl FnMut(Reply<'_>) -> Option<Result<T, Fail>>,
    ) -> Result<T, Fail> {
        for renewed in [false, true] {
            let text = request(&self.cookie);
            let got = exchange(
                self.sock,
                self.args,
                &mut self.rtt,
                text.as_bytes(),
                buf,
                |r| match r {
                    Reply::Err(Failure::BadCookie) => Some(Ok(None)),
                    r => accept(r).map(|x| x.map(Some)),
                },
            )?;
            match got {
                Some(x) => return Ok(x),
                None if !renewed => self.renew()?,
                None => break,
            }
        }
        Err(fail(
            EX_PROTOCOL,
            format!(
                "{}: the server refuses every cookie it gives",
                self.args.addr
            ),
        ))
    }
}

/// Asks for a cookie with a padded HELLO.
fn hello(sock: &Sock, args: &GetArgs, rtt: &mut RttEstimator) -> Result<Cookie, Fail> {
    let mut hello = b"HELLO ".to_vec();
    hello.resize(HELLO_SIZE.max(wire::MIN_HELLO), b'.');
    let mut buf = [0u8; 2048];
    exchange(sock, args, rtt, &hello, &mut buf, |r| match r {
        Reply::Cookie(c) => Some(Ok(c)),
        Reply::Err(f) => Some(Err(server_failure(&args.name, f))),
        _ => None,
    })
}

/// Sends `request` and waits for the first reply that `accept` takes, asking again
/// after each retransmission timeout (doubled each time), `retries` times in all.
/// A reply to the first try is an RTT sample.
fn exchange<T>(
    sock: &Sock,
    args: &GetArgs,
    rtt: &mut RttEstimator,
    request: &[u8],
    buf: &mut [u8],
    mut accept: impl FnMut(Reply<'_>) -> Option<Result<T, Fail>>,
) -> Result<T, Fail> {
    for attempt in 0..args.retries.max(1) {
        let sent = Instant::now();
        sock.send(request).map_err(|e| refused(&args.addr, e))?;
        let deadline = sent + rtt.rto();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(n) = sock.recv(buf, left).map_err(|e| refused(&args.addr, e))? else {
                break;
            };
            if let Some(r) = wire::parse_reply(&buf[..n]).and_then(&mut accept) {
                if attempt == 0 {
                    rtt.sample(sent.elapsed());
                }
                return r;
            }
        }
        rtt.back_off();
    }
    Err(fail(
        EX_UNAVAILABLE,
        format!(
            "{}: no reply after {} tries (timed out)",
            args.addr,
            args.retries.max(1),
        ),
    ))
}

/// A chunk asked for and not yet arrived.
#[derive(Clone, Copy)]
struct InFlight {
    index: u32,
    /// When the server should send it: the request's time plus its place × the gap.
    due: Instant,
    /// Asked for the first time (Karn's rule: only those give RTT samples).
    fresh: bool,
    /// The first chunk of a fresh request: its arrival is a sample for the smoothed
    /// RTT (the others feed only HyStart++, which needs many per round).
    probe: bool,
}

/// The state of one windowed transfer.
struct Transfer<'f> {
    meta: FileMeta,
    out: &'f File,
    out_path: &'f Path,
    name: &'f str,
    /// The server's window: most chunks one GET draws.
    window: u32,
    have: Vec<bool>,
    missing: usize,
    /// Chunks to ask for (not arrived, not in flight), lowest first.
    want: BTreeSet<u32>,
    /// In flight by sequence number (the order they were asked for).
    flight: BTreeMap<u64, InFlight>,
    seq_of: HashMap<u32, u64>,
    asked: Vec<bool>,
    next_seq: u64,
    /// The highest sequence number that arrived (RACK's reference point).
    rack_seq: u64,
    /// RACK's reordering window: how much later than expected a chunk may arrive
    /// before a later one's arrival makes it lost; grows when a loss was spurious.
    reorder: Duration,
    win: Window,
    next_send: Instant,
    rto_at: Option<Instant>,
    timeouts_in_a_row: u32,
    stats: Stats,
}

impl<'f> Transfer<'f> {
    fn new(
        meta: FileMeta,
        window: u32,
        max_cwnd: f64,
        out: &'f File,
        out_path: &'f Path,
        name: &'f str,
    ) -> Transfer<'f> {
        Transfer {
            meta,
            out,
            out_path,
            name,
            window: window.max(1),
            have: vec![false; meta.total as usize],
            missing: meta.total as usize,
            want: (0..meta.total).collect(),
            flight: BTreeMap::new(),
            seq_of: HashMap::new(),
            asked: vec![false; meta.total as usize],
            next_seq: 1,
            rack_seq: 0,
            reorder: Duration::ZERO,
            win: Window::new(max_cwnd),
            next_send: Instant::now(),
            rto_at: None,
            timeouts_in_a_row: 0,
            stats: Stats::default(),
        }
    }

    /// Chunks one request should ask for: enough for [`REQUEST_SPAN`] at the pacing
    /// rate, within the server's window, at least 1.
    fn request_size(&self, gap: Duration) -> usize {
        let span = if gap.is_zero() {
            self.window as usize
        } else {
            (REQUEST_SPAN.as_secs_f64() / gap.as_secs_f64()).ceil() as usize
        };
        let half = (self.win.cwnd() / 2.0).max(1.0) as usize;
        span.clamp(1, self.window as usize).min(half)
    }

    /// Sends the requests the window and the pacing allow now.
    fn send_requests(&mut self, s: &mut Session<'_>) -> Result<(), Fail> {
        let now = Instant::now();
        while !self.want.is_empty() && now >= self.next_send {
            let room = self.win.cwnd().floor() as usize;
            let room = room.saturating_sub(self.flight.len());
            let gap = self.win.gap(s.rtt.srtt());
            let size = self.request_size(gap).min(self.want.len());
            if room < size.max(1) {
                break;
            }
            let (ranges, picked) = self.pick(&s.cookie, size);
            let gap_us = u32::try_from(gap.as_micros())
                .unwrap_or(u32::MAX)
                .min(wire::MAX_GAP_US);
            let text = wire::get_request(&s.cookie, self.name, &ranges, gap_us);
            s.sock
                .send(text.as_bytes())
                .map_err(|e| refused(&s.args.addr, e))?;
            self.stats.requests += 1;
            let all_fresh = picked.iter().all(|&i| !self.asked[i as usize]);
            for (k, &index) in picked.iter().enumerate() {
                let fresh = !self.asked[index as usize];
                if !fresh {
                    self.stats.rerequested += 1;
                }
                self.asked[index as usize] = true;
                let due = now + gap * k as u32;
                let probe = all_fresh && k == 0;
                self.flight.insert(
                    self.next_seq,
                    InFlight {
                        index,
                        due,
                        fresh,
                        probe,
                    },
                );
                self.seq_of.insert(index, self.next_seq);
                self.next_seq += 1;
            }
            // Requests follow a schedule; one that is late (a busy machine) is made
            // up by sending the next at once, within one request span.
            let floor = now.checked_sub(REQUEST_SPAN).unwrap_or(now);
            self.next_send = self.next_send.max(floor) + gap * picked.len() as u32;
            if self.rto_at.is_none() {
                self.rto_at = Some(now + s.rtt.rto());
            }
        }
        Ok(())
    }

    /// Takes up to `size` wanted chunks, lowest first, as ranges that fit one request.
    fn pick(&mut self, cookie: &Cookie, size: usize) -> (Vec<Range>, Vec<u32>) {
        let fixed = wire::get_request(cookie, self.name, &[], wire::MAX_GAP_US).len();
        let mut ranges: Vec<Range> = Vec::new();
        let mut picked = Vec::new();
        let mut len = fixed;
        for &i in self.want.iter().take(size) {
            match ranges.last_mut() {
                Some(r) if r.to + 1 == i => r.to = i,
                _ => {
                    // The longest a new range can make the request: ",A-B".
                    if ranges.len() == wire::MAX_RANGES || len + 22 > MAX_REQUEST {
                        break;
                    }
                    len += 1 + i.to_string().len();
                    ranges.push(Range { from: i, to: i });
                }
            }
            picked.push(i);
        }
        for r in &ranges {
            len += r.to.to_string().len() + 1;
        }
        debug_assert!(len <= MAX_REQUEST + 22 * 2);
        for i in &picked {
            self.want.remove(i);
        }
        (ranges, picked)
    }

    /// One DATA datagram arrived.
    fn on_data(
        &mut self,
        s: &mut Session<'_>,
        index: u32,
        meta: FileMeta,
        payload: &[u8],
    ) -> Result<(), Fail> {
        if meta != self.meta {
            return Err(changed(self.name, &self.meta, &meta));
        }
        let now = Instant::now();
        self.stats.datagrams += 1;
        match self.seq_of.remove(&index) {
            Some(seq) => {
                let f = self.flight.remove(&seq).expect("in flight");
                if !f.fresh && now < f.due + s.rtt.min_rtt() / 2 {
                    // Too soon to answer the request that asked again: the answer
                    // to the first one, late.
                    self.on_spurious(s);
                }
                if seq < self.rack_seq {
                    self.stats.reordered += 1;
                }
                self.rack_seq = self.rack_seq.max(seq);
                let sample = f.fresh.then(|| now.saturating_duration_since(f.due));
                if let Some(r) = sample.filter(|_| f.probe) {
                    s.rtt.sample(r);
                }
                s.rtt.progress();
                self.win.on_ack(seq, sample, self.next_seq);
                self.timeouts_in_a_row = 0;
                self.rto_at = (!self.flight.is_empty()).then(|| now + s.rtt.rto());
            }
            None if !self.have[index as usize] => {
                self.want.remove(&index);
                self.on_spurious(s);
            }
            None => {}
        }
        if self.have[index as usize] {
            self.stats.duplicates += 1;
            return Ok(());
        }
        self.out
            .write_all_at(payload, self.meta.offset(index))
            .map_err(|e| fail(EX_CANTCREAT, format!("{}: {e}", self.out_path.display())))?;
        self.have[index as usize] = true;
        self.missing -= 1;
        Ok(())
    }

    /// A chunk declared lost arrived late: the reordering window was too small, and
    /// the window the loss cost may come back.
    fn on_spurious(&mut self, s: &Session<'_>) {
        self.stats.spurious += 1;
        let step = (s.rtt.min_rtt() / 4).max(REORDER_FLOOR);
        self.reorder = (self.reorder + step).min(s.rtt.srtt().max(REORDER_FLOOR));
        self.win.on_spurious();
    }

    /// RACK (RFC 8985): a chunk asked for before the latest one that arrived is lost
    /// once it is later than expected by more than the reordering window. Returns when
    /// the next such check is due.
    fn detect_losses(&mut self, s: &Session<'_>) -> Option<Instant> {
        let now = Instant::now();
        let wait = s.rtt.srtt() + self.reorder.max(s.rtt.min_rtt() / 4).max(REORDER_FLOOR);
        let mut lost = Vec::new();
        let mut next = None;
        for (&seq, f) in self.flight.range(..self.rack_seq) {
            if now >= f.due + wait {
                lost.push((seq, f.index));
            } else {
                next = Some(f.due + wait);
                break;
            }
        }
        for (seq, index) in lost {
            self.lose(seq, index);
        }
        next
    }

    fn lose(&mut self, seq: u64, index: u32) {
        self.flight.remove(&seq);
        self.seq_of.remove(&index);
        self.want.insert(index);
        self.stats.lost += 1;
        self.win.on_loss(seq, self.next_seq);
    }

    /// The retransmission timer fired: everything in flight is lost.
    fn on_timeout(&mut self, s: &mut Session<'_>) -> Result<(), Fail> {
        self.timeouts_in_a_row += 1;
        self.stats.timeouts += 1;
        if self.timeouts_in_a_row > s.args.retries.max(1) {
            return Err(fail(
                EX_UNAVAILABLE,
                format!(
                    "{}: timed out: {} of {} chunks still missing after {} timeouts in a row",
                    self.name,
                    self.missing,
                    self.meta.total,
                    self.timeouts_in_a_row - 1
                ),
            ));
        }
        for (_, f) in std::mem::take(&mut self.flight) {
            self.want.insert(f.index);
            self.stats.lost += 1;
        }
        self.seq_of.clear();
        self.win.on_timeout(self.next_seq);
        s.rtt.back_off();
        self.rto_at = None;
        self.next_send = Instant::now();
        Ok(())
    }

    /// The cookie was refused (expired, or the server restarted): renew it and ask
    /// again for what was in flight, without blaming the network.
    fn on_bad_cookie(&mut self, s: &mut Session<'_>) -> Result<(), Fail> {
        s.renew()?;
        for (_, f) in std::mem::take(&mut self.flight) {
            self.want.insert(f.index);
        }
        self.seq_of.clear();
        self.rto_at = None;
        self.next_send = Instant::now();
        Ok(())
    }

    /// Runs the transfer to its end.
    fn run(&mut self, s: &mut Session<'_>, buf: &mut [u8]) -> Result<(), Fail> {
        while self.missing > 0 {
            let rack_due = self.detect_losses(s);
            if self.rto_at.is_some_and(|t| Instant::now() >= t) {
                self.on_timeout(s)?;
            }
            self.send_requests(s)?;
            let mut wake = [self.rto_at, rack_due].into_iter().flatten().min();
            if !self.want.is_empty() {
                wake = Some(wake.map_or(self.next_send, |w| w.min(self.next_send)));
            }
            let wait = wake.map_or(s.rtt.rto(), |w| w.saturating_duration_since(Instant::now()));
            let Some(n) = s
                .sock
                .recv(buf, wait)
                .map_err(|e| refused(&s.args.addr, e))?
            else {
                continue;
            };
            match wire::parse_reply(&buf[..n]) {
                Some(Reply::Data {
                    index,
                    meta,
                    payload,
                }) => self.on_data(s, index, meta, payload)?,
                Some(Reply::Err(Failure::BadCookie)) => self.on_bad_cookie(s)?,
                Some(Reply::Err(f)) => return Err(server_failure(self.name, f)),
                Some(Reply::Stat { .. } | Reply::List { .. } | Reply::Cookie(_)) => {}
                None => {
                    return Err(fail(
                        EX_PROTOCOL,
                        format!(
                            "{}: a reply this protocol does not send ({n} bytes)",
                            s.args.addr
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
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
    let mut session = Session::start(&sock, args)?;
    let (meta, crc, window) = session.ask(
        |c| format!("STAT {} {name}", c.as_str()),
        &mut buf,
        |r| match r {
            Reply::Stat {
                name: n,
                meta,
                crc,
                window,
            } if n == name.as_bytes() => Some(Ok((meta, crc, window))),
            Reply::Err(f) => Some(Err(server_failure(name, f))),
            _ => None,
        },
    )?;

    let out = TempOut::create(&target)?;
    out.file
        .set_len(meta.size)
        .map_err(|e| fail(EX_CANTCREAT, format!("{}: {e}", out.path.display())))?;
    // The window never outgrows what the receive buffer holds (each datagram costs
    // about twice its size there).
    let max_cwnd = sock.recv_buffer() as f64 / (2.0 * (f64::from(meta.chunk) + 64.0));
    let mut t = Transfer::new(meta, window, max_cwnd, &out.file, &out.path, name);
    t.run(&mut session, &mut buf)?;
    let (stats, cwnd, random) = (t.stats, t.win.cwnd(), t.win.random_losses());

    let received = started.elapsed().as_secs_f64();
    verify(&out.file, meta.size, crc, name)?;
    out.persist(&target)?;
    let secs = started.elapsed().as_secs_f64();
    let st = &stats;
    Ok(format!(
        "{name}: {} bytes in {} chunks to {} in {secs:.3} s ({:.1} MiB/s; received in {received:.3} s, then checked and synced); {} datagrams in {} requests, {} lost and re-requested ({} chunks asked again, {} timeouts, {} spurious, {} taken as the path's), {} duplicates, {} reordered; srtt {:.1} ms, window {:.0}",
        meta.size,
        meta.total,
        target.display(),
        meta.size as f64 / (1 << 20) as f64 / secs.max(1e-9),
        st.datagrams,
        st.requests,
        st.lost,
        st.rerequested,
        st.timeouts,
        st.spurious,
        random,
        st.duplicates,
        st.reordered,
        session.rtt.srtt().as_secs_f64() * 1e3,
        cwnd,
    ))
}

fn changed(name: &str, was: &FileMeta, now: &FileMeta) -> Fail {
    fail(
        EX_DATAERR,
        format!(
            "{name}: changed on the server during the transfer (size {} version {:08x}, now size {} version {:08x}); try again",
            was.size, was.version, now.size, now.version
        ),
    )
}

/// Reads the written file back and checks its size and CRC-32 against the server's.
fn verify(file: &File, want_size: u64, want_crc: u32, name: &str) -> Result<(), Fail> {
    let err = |e: io::Error| fail(EX_CANTCREAT, format!("reading back {name}: {e}"));
    let size = file.metadata().map_err(err)?.len();
    if size != want_size {
        return Err(fail(
            EX_DATAERR,
            format!("{name}: size mismatch: got {size} bytes, server said {want_size}"),
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
    if got != want_crc {
        return Err(fail(
            EX_DATAERR,
            format!("{name}: checksum mismatch: got crc32 {got:08x}, server said {want_crc:08x}"),
        ));
    }
    let _ = io::stderr().flush();
    Ok(())
}
