//! `forkserve impair` (hidden): a link emulator for tests and benchmarks, in user
//! space because this kind of machine's kernel has no `sch_netem`. It relays UDP
//! datagrams between one client and one upstream server and imposes, in each
//! direction, what a real bottleneck does: a rate limit (serialisation at
//! `--bitrate` bits/s), a bounded drop-tail queue of `--queue` datagrams waiting for
//! the link, a one-way `--delay`, and random loss (`--loss` percent, seeded). Named
//! datagrams can be dropped once (`--drop-once PREFIX`) to test recovery from one
//! particular loss.
//!
//! With `--tun CLIENT SERVER` it relays IP packets instead, between two TUN devices
//! it creates (which a script then moves into two network namespaces): a whole
//! emulated link for TCP and UDP alike, as `tc netem` would make one.
//!
//! It prints `listening on udp:ADDR` (or `tun CLIENT SERVER`) on stdout, relays until
//! its standard input closes, then prints one line of counters per direction:
//! `up|down: passed N queue-drops N random-losses N dropped-once N`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::sys;

/// Arguments of `forkserve impair`.
#[derive(clap::Args, Debug)]
pub struct ImpairArgs {
    /// Where clients send: IP:PORT (port 0 picks one)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub local: SocketAddr,
    /// The server datagrams are relayed to: IP:PORT
    #[arg(long, required_unless_present = "tun")]
    pub upstream: Option<SocketAddr>,
    /// Relay IP packets between two new TUN devices (client side, server side)
    #[arg(long, num_args = 2, value_names = ["CLIENT", "SERVER"], conflicts_with = "upstream")]
    pub tun: Option<Vec<String>>,
    /// Source IP of the relayed datagrams (another loopback address is another source)
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Link rate in bits/s, each direction (K, M, G suffixes; 0: unlimited)
    #[arg(long, value_name = "BITS", default_value = "0", value_parser = parse_rate)]
    pub bitrate: u64,
    /// One-way delay in milliseconds, each direction
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub delay: f64,
    /// Datagrams that may wait for the link, each direction (drop-tail beyond)
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// Random loss in percent, each direction
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub loss: f64,
    /// Seed of the loss pattern
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Drop the first datagram (either direction) that starts with PREFIX (repeatable)
    #[arg(long = "drop-once", value_name = "PREFIX")]
    pub drop_once: Vec<String>,
}

/// Parses `10M`, `500K`, `1G` or a plain number of bits/s.
fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1e3),
        Some((i, 'M' | 'm')) => (&s[..i], 1e6),
        Some((i, 'G' | 'g')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * mult) as u64)
        .ok_or_else(|| format!("expected a rate like 10M, 500K or 1000000, got '{s}'"))
}

/// What one direction of the link did.
#[derive(Default, Debug, Clone, Copy)]
pub struct Counters {
    pub passed: u64,
    pub queue_drops: u64,
    pub random_losses: u64,
    pub dropped_once: u64,
}

/// One direction of an emulated link: loss, then a drop-tail queue in front of a
/// serialiser of `rate` bits/s, then a fixed delay.
pub struct Link {
    rate: u64,
    delay: Duration,
    queue: usize,
    loss: f64,
    rng: u64,
    /// When the serialiser is next free.
    busy_until: Instant,
    /// In order: (leaves the queue, arrives, datagram).
    line: VecDeque<(Instant, Instant, Vec<u8>)>,
    pub counters: Counters,
}

impl Link {
    pub fn new(rate: u64, delay: Duration, queue: usize, loss_pct: f64, seed: u64) -> Link {
        Link {
            rate,
            delay,
            queue: queue.max(1),
            loss: loss_pct / 100.0,
            rng: seed.max(1),
            busy_until: Instant::now(),
            line: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// xorshift64*: a uniform number in [0, 1).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Datagrams waiting for the serialiser at `now`.
    fn backlog(&self, now: Instant) -> usize {
        self.line
            .iter()
            .rev()
            .take_while(|(out, _, _)| *out > now)
            .count()
    }

    /// A datagram enters the link at `now`.
    pub fn push(&mut self, now: Instant, datagram: Vec<u8>) {
        if self.loss > 0.0 && self.random() < self.loss {
            self.counters.random_losses += 1;
            return;
        }
        if self.rate > 0 && self.backlog(now) >= self.queue {
            self.counters.queue_drops += 1;
            return;
        }
        let start = self.busy_until.max(now);
        let bits = datagram.len() as f64 * 8.0;
        let out = if self.rate > 0 {
            start + Duration::from_secs_f64(bits / self.rate as f64)
        } else {
            now
        };
        self.busy_until = out;
        self.line.push_back((out, out + self.delay, datagram));
    }

    /// The next datagram that has arrived by `now`.
    pub fn pop(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.line.front().is_some_and(|(_, at, _)| *at <= now) {
            self.counters.passed += 1;
            return self.line.pop_front().map(|(_, _, d)| d);
        }
        None
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.line.front().map(|(_, at, _)| *at)
    }
}

/// Runs the relay; exits 0 when stdin closes.
pub fn run(args: &ImpairArgs) -> ExitCode {
    match relay(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forkserve impair: {e}");
            ExitCode::from(71)
        }
    }
}

/// One end of the relay: where datagrams (or packets) come from and go to.
enum End {
    /// Faces the client; replies go to whoever sent last.
    Front(UdpSocket, Option<SocketAddr>),
    /// Faces the server (connected).
    Back(UdpSocket),
    Tun(std::fs::File),
}

impl End {
    fn fd(&self) -> i32 {
        match self {
            End::Front(s, _) | End::Back(s) => s.as_raw_fd(),
            End::Tun(f) => f.as_raw_fd(),
        }
    }

    /// One datagram or packet, or None when nothing waits.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self {
            End::Front(s, client) => {
                let (n, from) = s.recv_from(buf).ok()?;
                *client = Some(from);
                Some(n)
            }
            End::Back(s) => s.recv(buf).ok(),
            End::Tun(f) => io::Read::read(f, buf).ok(),
        }
    }

    /// Sends, or drops what the other side cannot take (as a link would).
    fn send(&mut self, d: &[u8]) {
        let _ = match self {
            End::Front(s, Some(c)) => s.send_to(d, *c),
            End::Front(_, None) => Ok(0),
            End::Back(s) => s.send(d),
            End::Tun(f) => io::Write::write(f, d),
        };
    }
}

/// The two ends: client side, server side.
fn open_ends(args: &ImpairArgs) -> io::Result<(End, End, String)> {
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    if let Some(names) = &args.tun {
        let open = |name: &String| -> io::Result<End> {
            let fd = sys::tun_open(name).map_err(|e| ctx(&format!("TUN device {name}"), e))?;
            let f = std::fs::File::from(fd);
            set_nonblocking(&f)?;
            Ok(End::Tun(f))
        };
        return Ok((
            open(&names[0])?,
            open(&names[1])?,
            format!("tun {} {}", names[0], names[1]),
        ));
    }
    let upstream = args
        .upstream
        .ok_or_else(|| io::Error::other("--upstream or --tun is needed"))?;
    let front = UdpSocket::bind(args.local).map_err(|e| ctx("binding --local", e))?;
    let bind_ip = args.source_ip.unwrap_or(if upstream.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    });
    let back = UdpSocket::bind((bind_ip, 0)).map_err(|e| ctx("binding --source-ip", e))?;
    back.connect(upstream)
        .map_err(|e| ctx("connecting --upstream", e))?;
    front.set_nonblocking(true)?;
    back.set_nonblocking(true)?;
    let shown = format!("listening on udp:{}", front.local_addr()?);
    Ok((End::Front(front, None), End::Back(back), shown))
}

fn set_nonblocking(f: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsFd;
    let flags = nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

fn relay(args: &ImpairArgs) -> io::Result<()> {
    let (mut client, mut server, shown) = open_ends(args)?;
    let delay = Duration::from_secs_f64(args.delay.max(0.0) / 1000.0);
    let mut up = Link::new(args.bitrate, delay, args.queue, args.loss, args.seed);
    let mut down = Link::new(
        args.bitrate,
        delay,
        args.queue,
        args.loss,
        args.seed ^ 0x9e37_79b9,
    );
    let mut once: Vec<Option<Vec<u8>>> = args
        .drop_once
        .iter()
        .map(|p| Some(p.as_bytes().to_vec()))
        .collect();
    println!("{shown}");
    io::stdout().flush()?;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        while let Some(d) = up.pop(now) {
            server.send(&d);
        }
        while let Some(d) = down.pop(now) {
            client.send(&d);
        }
        let next = [up.next_arrival(), down.next_arrival()]
            .into_iter()
            .flatten()
            .min();
        let wait = next.map(|t| t.saturating_duration_since(Instant::now()));
        let mut fds = [
            sys::pollfd(0, sys::POLLIN),
            sys::pollfd(client.fd(), sys::POLLIN),
            sys::pollfd(server.fd(), sys::POLLIN),
        ];
        sys::poll(&mut fds, wait)?;
        if fds[0].revents != 0 {
            break;
        }
        let now = Instant::now();
        while let Some(n) = client.recv(&mut buf) {
            if !drop_once(&mut once, &buf[..n], &mut up.counters) {
                up.push(now, buf[..n].to_vec());
            }
        }
        while let Some(n) = server.recv(&mut buf) {
            if !drop_once(&mut once, &buf[..n], &mut down.counters) {
                down.push(now, buf[..n].to_vec());
            }
        }
    }
    for (name, link) in [("up", &up), ("down", &down)] {
        let c = link.counters;
        println!(
            "{name}: passed {} queue-drops {} random-losses {} dropped-once {}",
            c.passed, c.queue_drops, c.random_losses, c.dropped_once
        );
    }
    Ok(())
}

/// Drops `d` if it starts with a prefix not yet used (which is then used up).
fn drop_once(prefixes: &mut [Option<Vec<u8>>], d: &[u8], c: &mut Counters) -> bool {
    for p in prefixes.iter_mut() {
        if p.as_ref().is_some_and(|p| d.starts_with(p)) {
            *p = None;
            c.dropped_once += 1;
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_serialises_queues_and_delays() {
        // 1200-byte datagrams at 9.6 Mbit/s: one per ms.
        let mut l = Link::new(9_600_000, Duration::from_millis(10), 4, 0.0, 1);
        let t0 = Instant::now();
        for _ in 0..6 {
            l.push(t0, vec![0; 1200]);
        }
        // The queue counts those not yet serialised, the one on the wire included.
        assert_eq!(l.counters.queue_drops, 2);
        assert!(l.pop(t0 + Duration::from_millis(10)).is_none());
        assert!(l.pop(t0 + Duration::from_millis(11)).is_some());
        assert!(l.pop(t0 + Duration::from_millis(11)).is_none());
        assert!(l.pop(t0 + Duration::from_millis(12)).is_some());
        assert_eq!(l.next_arrival(), Some(t0 + Duration::from_millis(13)));
    }

    #[test]
    fn random_loss_is_about_the_rate_asked() {
        let t0 = Instant::now();
        let mut l = Link::new(0, Duration::ZERO, 64, 5.0, 42);
        for _ in 0..20_000 {
            l.push(t0, vec![1]);
        }
        let lost = l.counters.random_losses;
        assert!((800..1200).contains(&lost), "{lost}");
        assert_eq!(parse_rate("10M"), Ok(10_000_000));
        assert!(parse_rate("fast").is_err());
    }
}
