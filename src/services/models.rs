//! The concurrency-model demonstration (reference example 5.1): one handler served
//! three ways at once, `models-sequential` (127.0.0.1:9001), `models-thread` (9002)
//! and `models-fork` (9003), so the difference shows with a few `nc` or
//! `forkserve bench`. For each line a client sends (or once, if it sends none before
//! closing its side) the handler computes the sum of i*i for i in 0..10000 and
//! answers one line:
//!
//! ```text
//! model=fork pid=4242 thread=main client=127.0.0.1:50312 time=41.2us result=333283335000 workers=3
//! ```
//!
//! The last field is what runs beside this request: `workers=N` under fork, the
//! worker processes of the service alive now (the master's children titled
//! `forkserve: models-fork worker …`, read from /proc); `threads=N` under thread,
//! the server process's thread count (from /proc/self/status, the accept thread
//! included); `workers=1` under sequential.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::handler::{Connection, Model, StreamHandler};
use crate::server::Service;

/// The three services: name, model, default TCP port.
pub const SERVICES: [(&str, Model, u16); 3] = [
    ("models-sequential", Model::Sequential, 9001),
    ("models-thread", Model::Thread, 9002),
    ("models-fork", Model::Fork, 9003),
];

/// A client that sends nothing is dropped after this long (default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request line read; the rest of a longer line counts as further lines.
const MAX_LINE: u64 = 1024;

/// The model a models service always runs under (None: not a models service).
pub fn fixed_model(service: &str) -> Option<Model> {
    SERVICES.iter().find(|s| s.0 == service).map(|s| s.1)
}

/// The default addresses of a models service: its port on 127.0.0.1 and
/// `unix:RUNDIR/NAME.sock`.
pub fn defaults(service: &str, runtime_dir: &Path) -> Vec<String> {
    let port = SERVICES.iter().find(|s| s.0 == service).map_or(0, |s| s.2);
    vec![
        format!("tcp:127.0.0.1:{port}"),
        format!("unix:{}/{service}.sock", runtime_dir.display()),
    ]
}

/// The service `name` (one of [`SERVICES`]) with its model and idle timeout set.
pub fn service(name: &str) -> Service {
    // The reply counts live workers and threads from /proc.
    Service::stream(name, Reference)
        .sandbox(crate::Sandbox::new().read_only("/proc"))
        .model(fixed_model(name).unwrap_or(Model::Fork))
        .idle_timeout(Some(DEFAULT_IDLE_TIMEOUT))
}

/// The reference handler.
pub struct Reference;

/// The reference workload: sum of i*i for i in 0..10000.
pub fn workload() -> u64 {
    (0..10_000u64).map(|i| std::hint::black_box(i) * i).sum()
}

impl StreamHandler for Reference {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        let mut reader = BufReader::new(conn.stream().try_clone()?);
        let mut line = Vec::with_capacity(128);
        let mut answered = false;
        loop {
            line.clear();
            let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
            if n == 0 && answered {
                return Ok(());
            }
            let reply = answer(conn);
            conn.write_all(reply.as_bytes())?;
            answered = true;
            if n == 0 {
                return Ok(());
            }
        }
    }
}

/// Computes the workload and describes who computed it.
fn answer(conn: &Connection) -> String {
    let started = Instant::now();
    let result = workload();
    let took = started.elapsed();
    let ctx = conn.context();
    let thread = std::thread::current();
    let client = conn.peer().to_string().replace(' ', ",");
    let live = match ctx.model {
        Model::Thread => format!(
            "threads={}",
            own_threads().map_or("?".into(), |n| n.to_string())
        ),
        Model::Sequential => "workers=1".to_string(),
        Model::Fork | Model::Prefork => format!(
            "workers={}",
            sibling_workers(&ctx.service).map_or("?".into(), |n| n.to_string())
        ),
    };
    format!(
        "model={} pid={} thread={} client={client} time={:.1}us result={result} {live}\n",
        ctx.model,
        std::process::id(),
        thread.name().unwrap_or("unnamed"),
        took.as_secs_f64() * 1e6,
    )
}

/// Threads of this process, from /proc/self/status.
fn own_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Worker processes of `service` alive now: the parent's children whose title is
/// `forkserve: SERVICE worker …` (this one included).
fn sibling_workers(service: &str) -> Option<usize> {
    let parent = nix::unistd::getppid().as_raw();
    let prefix = format!("forkserve: {service} worker");
    let pids = children_of(parent)?;
    Some(
        pids.into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .starts_with(&prefix)
                })
            })
            .count(),
    )
}

/// The children of `parent`: from /proc/PID/task/PID/children where the kernel has
/// it, else by scanning every process's parent.
fn children_of(parent: i32) -> Option<Vec<i32>> {
    if let Ok(list) = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        return Some(
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
        );
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised comm: state, ppid, …
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn workload_is_the_sum_of_squares() {
        let n: u64 = 10_000;
        assert_eq!(super::workload(), (n - 1) * n * (2 * n - 1) / 6);
    }
}
