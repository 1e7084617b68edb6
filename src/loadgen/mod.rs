//! `forkserve bench`: a load generator for stream and datagram servers. Each of
//! `-c` clients is an OS thread that connects, sends a line, checks the reply
//! (the upper-cased line by default), closes (`--close`: at once, by default;
//! half-close and wait; or wait for the server's close) and starts again, for `-d`
//! seconds or `-n` requests in all. It reports connections/s, requests/s, latency
//! percentiles, errors by kind and its own CPU time (a generator that saturates its
//! CPU measures itself), as text or one JSON object; the exit status is 1 when any
//! request failed.

mod client;
mod histogram;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use forkserve::ListenAddr;
use forkserve::addr::UnixPath;

use client::{Close, Errors, Expect, Plan, Stop, Tally, Target};
use histogram::Histogram;

/// Options of `forkserve bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server to load: tcp:HOST:PORT, unix:/PATH, unix:@NAME, udp:HOST:PORT, unixgram:/PATH
    #[arg(long, value_name = "ADDR")]
    connect: String,
    /// Clients running at once (one thread each)
    #[arg(short = 'c', long, value_name = "N", default_value_t = 8)]
    concurrency: usize,
    /// Run for SECS seconds (default 5 unless -n is given)
    #[arg(short = 'd', long, value_name = "SECS", conflicts_with = "count")]
    duration: Option<f64>,
    /// Send exactly N requests in all, then stop
    #[arg(short = 'n', long, value_name = "N")]
    count: Option<u64>,
    /// What each request sends; a stream request gets a newline added if it has none
    #[arg(long, value_name = "TEXT", default_value = "hello")]
    message: String,
    /// Requests (lines) sent on each connection before closing it
    #[arg(long, value_name = "K", default_value_t = 1)]
    requests_per_connection: u64,
    /// Which replies count as right: the upper-cased message, or any non-empty reply
    #[arg(long, value_name = "WHAT", default_value = "upper")]
    expect: ExpectArg,
    /// Seconds to wait for a connection or a reply before counting a timeout
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    timeout: f64,
    /// How a connection ends after its last reply: the client closes at once;
    /// half-closes and reads until the server closes; or reads until the server
    /// closes without half-closing
    #[arg(long, value_name = "HOW", default_value = "client")]
    close: Close,
    /// Datagrams: times to resend a request whose reply did not come in time
    #[arg(long, value_name = "N", default_value_t = 1)]
    retries: u32,
    /// Print the results as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExpectArg {
    /// The reply must equal the upper-cased message
    Upper,
    /// Any non-empty reply is right
    Any,
}

const USAGE: u8 = 64;

fn usage(msg: String) -> ExitCode {
    eprintln!("forkserve bench: {msg}");
    ExitCode::from(USAGE)
}

fn target_of(s: &str) -> Result<Target, String> {
    let unix = |p: &UnixPath| -> Result<std::os::unix::net::SocketAddr, String> {
        match p {
            UnixPath::File(f) => std::os::unix::net::SocketAddr::from_pathname(f),
            UnixPath::Abstract(n) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(n.as_bytes())
            }
        }
        .map_err(|e| format!("--connect {s}: {e}"))
    };
    match s
        .parse::<ListenAddr>()
        .map_err(|e| format!("--connect: {e}"))?
    {
        ListenAddr::Tcp(a) => Ok(Target::Tcp(a)),
        ListenAddr::Udp(a) => Ok(Target::Udp(a)),
        ListenAddr::Unix(p) => Ok(Target::Unix(unix(&p)?)),
        ListenAddr::UnixGram(p) => Ok(Target::UnixGram(unix(&p)?)),
        ListenAddr::Systemd(_) => Err(format!(
            "--connect {s}: systemd: names a listener, not a server to connect to"
        )),
    }
}

fn seconds(what: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "{what}: expected a positive number of seconds, got {v}"
        ))
    }
}

/// The reply the uppercase echo gives to `message` (Unicode upper case for UTF-8).
fn upper_cased(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    forkserve::services::echo::uppercase_bytes(message, &mut out);
    out
}

/// Runs `forkserve bench`.
pub fn run(args: &BenchArgs) -> ExitCode {
    let target = match target_of(&args.connect) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    if args.concurrency == 0 {
        return usage("-c: at least one client is needed".into());
    }
    if args.requests_per_connection == 0 {
        return usage("--requests-per-connection: at least 1".into());
    }
    let timeout = match seconds("--timeout", args.timeout) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let stop = match (args.count, args.duration) {
        (Some(0), _) => return usage("-n: at least one request".into()),
        (Some(n), _) => Stop::Count(n),
        (None, d) => match seconds("-d", d.unwrap_or(5.0)) {
            Ok(d) => Stop::After(d),
            Err(e) => return usage(e),
        },
    };
    let mut message = args.message.clone().into_bytes();
    if !target.is_datagram() && message.last() != Some(&b'\n') {
        message.push(b'\n');
    }
    let plan = Plan {
        expected: upper_cased(&message),
        message,
        expect: match args.expect {
            ExpectArg::Upper => Expect::Exact,
            ExpectArg::Any => Expect::Any,
        },
        per_connection: args.requests_per_connection,
        timeout,
        retries: args.retries,
        close: args.close,
        target,
    };
    // With -n, each client gets its share; the first ones one more when it does
    // not divide evenly. Clients with nothing to do are not started.
    let clients: Vec<Stop> = match stop {
        Stop::Count(n) => {
            let c = args.concurrency as u64;
            (0..c.min(n))
                .map(|i| Stop::Count(n / c + u64::from(i < n % c)))
                .collect()
        }
        s => vec![s; args.concurrency],
    };
    let cpu0 = own_cpu_time();
    let (tallies, elapsed) = run_clients(&plan, &clients);
    let mut report = Report::merge(args, &plan, clients.len(), tallies, elapsed);
    report.cpu = own_cpu_time().saturating_sub(cpu0);
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.errors.total() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Starts one thread per client, lines them up, and collects their tallies and the
/// time from the start to the last client's end.
fn run_clients(plan: &Plan, clients: &[Stop]) -> (Vec<Tally>, Duration) {
    let barrier = Barrier::new(clients.len() + 1);
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(clients.len());
        for (i, &stop) in clients.iter().enumerate() {
            let barrier = &barrier;
            let h = std::thread::Builder::new()
                .name(format!("client-{i}"))
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || client::run(plan, stop, barrier));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // The started ones wait at the barrier for a start that
                    // cannot come: give up at once.
                    eprintln!("forkserve bench: starting client thread {i}: {e}");
                    std::process::exit(71);
                }
            }
        }
        barrier.wait();
        let begin = Instant::now();
        let tallies: Vec<Tally> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        let end = tallies
            .iter()
            .filter_map(|t| t.finished)
            .max()
            .unwrap_or(begin);
        (tallies, end.saturating_duration_since(begin))
    })
}

/// User plus system CPU time this process has used so far.
fn own_cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
        };
        tv(u.user_time()) + tv(u.system_time())
    })
}

/// The merged results.
struct Report {
    target: String,
    datagram: bool,
    close: Close,
    /// The generator's own CPU time over the run.
    cpu: Duration,
    clients: usize,
    per_connection: u64,
    elapsed: Duration,
    connections: u64,
    requests: u64,
    resent: u64,
    errors: Errors,
    latency: Histogram,
    first_error: Option<String>,
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Report {
    fn merge(
        args: &BenchArgs,
        plan: &Plan,
        clients: usize,
        tallies: Vec<Tally>,
        elapsed: Duration,
    ) -> Report {
        let mut r = Report {
            target: args.connect.clone(),
            datagram: plan.target.is_datagram(),
            close: plan.close,
            cpu: Duration::ZERO,
            clients,
            per_connection: plan.per_connection,
            elapsed,
            connections: 0,
            requests: 0,
            resent: 0,
            errors: Errors::default(),
            latency: Histogram::new(),
            first_error: None,
        };
        for t in tallies {
            r.connections += t.connections;
            r.requests += t.requests;
            r.resent += t.resent;
            r.errors.add(&t.errors);
            r.latency.merge(&t.latency);
            if r.first_error.is_none() {
                r.first_error = t.first_error;
            }
        }
        r
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64();
        if self.datagram {
            let _ = writeln!(
                s,
                "target       {} (datagrams, {} clients)",
                self.target, self.clients
            );
            let _ = writeln!(s, "duration     {secs:.2} s");
            let _ = writeln!(
                s,
                "datagrams    {} answered ({:.1}/s), {} resent",
                self.requests,
                per_sec(self.requests, self.elapsed),
                self.resent
            );
        } else {
            let _ = writeln!(
                s,
                "target       {} (stream, {} clients, {} request(s) per connection, close: {})",
                self.target,
                self.clients,
                self.per_connection,
                self.close_name()
            );
            let _ = writeln!(s, "duration     {secs:.2} s");
            let _ = writeln!(
                s,
                "connections  {} ({:.1}/s)",
                self.connections,
                per_sec(self.connections, self.elapsed)
            );
            let _ = writeln!(
                s,
                "requests     {} ({:.1}/s)",
                self.requests,
                per_sec(self.requests, self.elapsed)
            );
        }
        let _ = writeln!(
            s,
            "generator    {:.2} s CPU ({:.0}% of one CPU)",
            self.cpu.as_secs_f64(),
            self.cpu_share() * 100.0
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            ms(l.quantile(0.50)),
            ms(l.quantile(0.90)),
            ms(l.quantile(0.99)),
            ms(l.max())
        );
        let e = &self.errors;
        let _ = writeln!(
            s,
            "errors       {} (connect {}, io {}, wrong reply {}, timeout {})",
            e.total(),
            e.connect,
            e.io,
            e.wrong,
            e.timeout
        );
        if let Some(first) = &self.first_error {
            let _ = writeln!(s, "first error  {first}");
        }
        s
    }

    fn close_name(&self) -> &'static str {
        match self.close {
            Close::Client => "client",
            Close::Half => "half",
            Close::Server => "server",
        }
    }

    /// The generator's CPU time as a share of the run's wall time (1.0: one CPU).
    fn cpu_share(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.cpu.as_secs_f64() / self.elapsed.as_secs_f64()
        }
    }

    fn json(&self) -> String {
        let l = &self.latency;
        let e = &self.errors;
        let us = |d: Duration| (d.as_secs_f64() * 1e7).round() / 10.0;
        format!(
            concat!(
                "{{\"target\":{},\"mode\":\"{}\",\"close\":\"{}\",\"clients\":{},\"requests_per_connection\":{},",
                "\"generator_cpu_s\":{:.3},",
                "\"duration_s\":{:.3},\"connections\":{},\"connections_per_s\":{:.1},",
                "\"requests\":{},\"requests_per_s\":{:.1},\"resent\":{},",
                "\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}},",
                "\"errors\":{{\"total\":{},\"connect\":{},\"io\":{},\"wrong\":{},\"timeout\":{}}},",
                "\"first_error\":{}}}"
            ),
            json_str(&self.target),
            if self.datagram { "datagram" } else { "stream" },
            self.close_name(),
            self.clients,
            self.per_connection,
            self.cpu.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.connections,
            per_sec(self.connections, self.elapsed),
            self.requests,
            per_sec(self.requests, self.elapsed),
            self.resent,
            us(l.quantile(0.50)),
            us(l.quantile(0.90)),
            us(l.quantile(0.99)),
            us(l.max()),
            e.total(),
            e.connect,
            e.io,
            e.wrong,
            e.timeout,
            self.first_error
                .as_deref()
                .map_or("null".to_string(), json_str),
        )
    }
}
