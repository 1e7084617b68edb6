//! `forkserve metrics-agent`: samples this host every `--interval` and sends the
//! exercise's "CPU usage, memory, network connections" (and the load average) to
//! a collector as `name:value:timestamp` lines, one datagram per sample:
//!
//! - `cpu.usage`, `cpu.user`, `cpu.system`, `cpu.iowait`: percent of all CPUs'
//!   time over the interval, from /proc/stat deltas;
//! - `mem.total`, `mem.available`, `mem.used`: bytes, from /proc/meminfo;
//! - `tcp.established`, `tcp.listen`, `tcp.time_wait`, … : sockets by state, from
//!   /proc/net/tcp and tcp6;
//! - `load.1`, `load.5`, `load.15`: from /proc/loadavg.

use std::io;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::addr::{ListenAddr, UnixPath};

/// Arguments of `forkserve metrics-agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// The collector: udp:HOST:PORT or unixgram:/PATH
    #[arg(long, value_name = "ADDR", default_value = "udp:127.0.0.1:8125")]
    pub to: String,
    /// Time between samples
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Put PREFIX before every name (e.g. `web1.`), to tell hosts apart
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub prefix: String,
    /// Send N samples, then exit (default: until killed)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Where the samples go.
enum Target {
    Udp(UdpSocket, std::net::SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

impl Target {
    fn open(to: &str) -> Result<Target, String> {
        let addr: ListenAddr = to.parse().map_err(|e| format!("--to {to}: {e}"))?;
        match addr {
            ListenAddr::Udp(a) => {
                let local = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = UdpSocket::bind(local).map_err(|e| format!("udp socket: {e}"))?;
                Ok(Target::Udp(s, a))
            }
            ListenAddr::UnixGram(UnixPath::File(p)) => {
                let s = UnixDatagram::unbound().map_err(|e| format!("unixgram socket: {e}"))?;
                Ok(Target::Unix(s, p))
            }
            other => Err(format!(
                "--to {other}: expected udp:HOST:PORT or unixgram:/PATH"
            )),
        }
    }

    fn send(&self, data: &[u8]) -> io::Result<()> {
        match self {
            Target::Udp(s, a) => s.send_to(data, a).map(drop),
            Target::Unix(s, p) => s.send_to(data, p).map(drop),
        }
    }
}

/// Jiffies from the first line of /proc/stat: (busy, user, system, iowait, total).
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    user: u64,
    system: u64,
    iowait: u64,
    idle: u64,
    total: u64,
}

fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(CpuTimes {
        user: get(0) + get(1),
        system: get(2) + get(5) + get(6),
        iowait: get(4),
        idle: get(3) + get(4),
        total: (0..8).map(get).sum(),
    })
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn cpu_lines(prev: CpuTimes, now: CpuTimes, out: &mut Vec<(String, f64)>) {
    let total = now.total.saturating_sub(prev.total);
    let idle = now.idle.saturating_sub(prev.idle);
    out.push((
        "cpu.usage".into(),
        percent(total.saturating_sub(idle), total),
    ));
    out.push((
        "cpu.user".into(),
        percent(now.user.saturating_sub(prev.user), total),
    ));
    out.push((
        "cpu.system".into(),
        percent(now.system.saturating_sub(prev.system), total),
    ));
    out.push((
        "cpu.iowait".into(),
        percent(now.iowait.saturating_sub(prev.iowait), total),
    ));
}

fn mem_lines(meminfo: &str, out: &mut Vec<(String, f64)>) {
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    if let (Some(total), Some(avail)) = (kib("MemTotal"), kib("MemAvailable")) {
        out.push(("mem.total".into(), total * 1024.0));
        out.push(("mem.available".into(), avail * 1024.0));
        out.push(("mem.used".into(), (total - avail) * 1024.0));
    }
}

/// TCP states as /proc/net/tcp numbers them (include/net/tcp_states.h).
const TCP_STATES: [&str; 11] = [
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

fn tcp_lines(tables: &[String], out: &mut Vec<(String, f64)>) {
    let mut counts = [0u64; TCP_STATES.len()];
    for table in tables {
        for row in table.lines().skip(1) {
            let st = row.split_whitespace().nth(3);
            if let Some(i) = st.and_then(|s| usize::from_str_radix(s, 16).ok())
                && (1..=TCP_STATES.len()).contains(&i)
            {
                counts[i - 1] += 1;
            }
        }
    }
    for (state, n) in TCP_STATES.iter().zip(counts) {
        out.push((format!("tcp.{state}"), n as f64));
    }
}

fn load_lines(loadavg: &str, out: &mut Vec<(String, f64)>) {
    for (name, v) in ["load.1", "load.5", "load.15"]
        .iter()
        .zip(loadavg.split_whitespace())
    {
        if let Ok(v) = v.parse() {
            out.push((name.to_string(), v));
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// One sample as a datagram of `prefix+name:value:timestamp` lines.
fn sample(prefix: &str, prev_cpu: &mut Option<CpuTimes>) -> String {
    let mut values = Vec::new();
    let now_cpu = cpu_times(&read("/proc/stat"));
    if let (Some(p), Some(n)) = (*prev_cpu, now_cpu) {
        cpu_lines(p, n, &mut values);
    }
    *prev_cpu = now_cpu;
    mem_lines(&read("/proc/meminfo"), &mut values);
    tcp_lines(
        &[read("/proc/net/tcp"), read("/proc/net/tcp6")],
        &mut values,
    );
    load_lines(&read("/proc/loadavg"), &mut values);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    values
        .iter()
        .map(|(name, v)| format!("{prefix}{name}:{v}:{ts:.3}\n"))
        .collect()
}

/// Runs the agent until killed (or `--count` samples were sent).
pub fn run(args: &AgentArgs) -> ExitCode {
    let target = match Target::open(&args.to) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("forkserve metrics-agent: {e}");
            return ExitCode::from(crate::Error::USAGE as u8);
        }
    };
    if args.interval.is_zero() {
        eprintln!("forkserve metrics-agent: --interval: expected more than 0");
        return ExitCode::from(crate::Error::USAGE as u8);
    }
    let mut prev_cpu = cpu_times(&read("/proc/stat"));
    let mut sent = 0u64;
    while args.count.is_none_or(|n| sent < n) {
        std::thread::sleep(args.interval);
        let datagram = sample(&args.prefix, &mut prev_cpu);
        if let Err(e) = target.send(datagram.as_bytes()) {
            // The collector may be restarting: try again next interval.
            eprintln!("forkserve metrics-agent: sending to {}: {e}", args.to);
        }
        sent += 1;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        let a = cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\n").unwrap();
        let b = cpu_times("cpu  200 0 100 1600 100 0 0 0 0 0\n").unwrap();
        let mut out = Vec::new();
        cpu_lines(a, b, &mut out);
        assert_eq!(out[0], ("cpu.usage".to_string(), 15.0));
        let mut out = Vec::new();
        mem_lines(
            "MemTotal:  1000 kB\nMemFree: 1 kB\nMemAvailable:   400 kB\n",
            &mut out,
        );
        assert_eq!(out[2], ("mem.used".to_string(), 600.0 * 1024.0));
        let tcp = "  sl local rem st\n   0: 0100007F:1F90 00000000:0000 0A 0\n   1: x y 01 0\n"
            .to_string();
        let mut out = Vec::new();
        tcp_lines(&[tcp], &mut out);
        assert!(out.contains(&("tcp.listen".to_string(), 1.0)));
        assert!(out.contains(&("tcp.established".to_string(), 1.0)));
    }
}
