//! The concurrency-model demonstration (reference example 5.1): one handler served
//! three ways at once, `models-sequential` (127.0.0.1:9001), `models-thread` (9002)
//! and `models-fork` (9003), so the difference shows with a few `nc` or
//! `forkserve bench`. As soon as a client connects (as the reference does: `telnet
//! localhost 9001` shows the report at once), and again for each line it sends, the
//! handler computes the sum of i*i for i in 0..10000 and answers one line:
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
//!
//! With `--lang es` the report is the reference's, in its words, one field a line
//! (`Hilos activos` is this process's thread count; under fork a last line
//! `Procesos activos: N` counts the worker processes):
//!
//! ```text
//! Servidor: models-fork (modelo fork)
//! Hilo/Proceso: main (PID: 4242)
//! Cliente: 127.0.0.1:50312
//! Tiempo de procesamiento: 0.0000s
//! Resultado: 333283335000
//! Hilos activos: 1
//! Procesos activos: 3
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::Lang;
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

/// The service `name` (one of [`SERVICES`]) with its model and idle timeout set,
/// reporting in `lang`.
pub fn service(name: &str, lang: Lang) -> Service {
    // The reply counts live workers and threads from /proc.
    Service::stream(name, Reference { lang })
        .sandbox(crate::Sandbox::new().read_only("/proc"))
        .model(fixed_model(name).unwrap_or(Model::Fork))
        .idle_timeout(Some(DEFAULT_IDLE_TIMEOUT))
}

/// The reference handler.
#[derive(Default)]
pub struct Reference {
    pub lang: Lang,
}

/// The reference workload: sum of i*i for i in 0..10000.
pub fn workload() -> u64 {
    (0..10_000u64).map(|i| std::hint::black_box(i) * i).sum()
}

impl StreamHandler for Reference {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        let mut reader = BufReader::new(conn.stream().try_clone()?);
        let mut line = Vec::with_capacity(128);
        loop {
            let reply = answer(conn, self.lang);
            conn.write_all(reply.as_bytes())?;
            line.clear();
            if (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
        }
    }
}

/// What one report says.
struct Report {
    model: Model,
    service: String,
    thread: String,
    client: String,
    took: Duration,
    result: u64,
}

/// Computes the workload and describes who computed it, in `lang`.
fn answer(conn: &Connection, lang: Lang) -> String {
    let started = Instant::now();
    let result = workload();
    let took = started.elapsed();
    let ctx = conn.context();
    let report = Report {
        model: ctx.model,
        service: ctx.service.clone(),
        thread: std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string(),
        client: conn.peer().to_string(),
        took,
        result,
    };
    match lang {
        Lang::En => report.line(),
        Lang::Es => report.reference_block(),
    }
}

/// A count for a report: `?` when /proc could not tell.
fn count(n: Option<usize>) -> String {
    n.map_or("?".into(), |n| n.to_string())
}

impl Report {
    /// `model=… pid=… thread=… client=… time=…us result=… workers=N|threads=N`; a
    /// Unix peer's `uid=0 pid=N` is quoted (`client="uid=0 pid=N"`, as logfmt does),
    /// printed as everywhere else.
    fn line(&self) -> String {
        let client = if self.client.contains(' ') {
            format!("\"{}\"", self.client)
        } else {
            self.client.clone()
        };
        let live = match self.model {
            Model::Thread => format!("threads={}", count(own_threads())),
            Model::Sequential => "workers=1".to_string(),
            Model::Fork | Model::Prefork => {
                format!("workers={}", count(sibling_workers(&self.service)))
            }
        };
        format!(
            "model={} pid={} thread={} client={} time={:.1}us result={} {live}\n",
            self.model,
            std::process::id(),
            self.thread,
            client,
            self.took.as_secs_f64() * 1e6,
            self.result,
        )
    }

    /// The reference's report (example 5.1), in its Spanish, one field a line.
    fn reference_block(&self) -> String {
        let mut out = format!(
            "Servidor: {} (modelo {})\nHilo/Proceso: {} (PID: {})\nCliente: {}\n\
             Tiempo de procesamiento: {:.4}s\nResultado: {}\nHilos activos: {}\n",
            self.service,
            self.model,
            self.thread,
            std::process::id(),
            self.client,
            self.took.as_secs_f64(),
            self.result,
            count(own_threads()),
        );
        if matches!(self.model, Model::Fork | Model::Prefork) {
            out.push_str(&format!(
                "Procesos activos: {}\n",
                count(sibling_workers(&self.service))
            ));
        }
        out
    }
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
    let prefix = format!("{}: {service} worker", crate::proctitle::name());
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
