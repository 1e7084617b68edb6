//! HTTP/1.1 (reference example 4.4, done properly): routes `/`, `/time`, `/info` and
//! `/echo/<text>`; GET and HEAD; requests parsed with `httparse` and checked per
//! RFC 9112 (400, 405, 404, 413, 431, 505, 500, each a small HTML page);
//! keep-alive with pipelined requests answered in order, until `Connection: close`,
//! HTTP/1.0 without keep-alive, the idle timeout, or `--max-requests-per-connection`;
//! and at once (after the response in hand) when other clients wait for a process
//! of this service, so an idle keep-alive connection never holds a slot from them.
//! Every response carries Date, Server, Content-Length and Content-Type (with a
//! charset); every request gets one Common Log Format line at info level.

pub mod access;
pub mod conditional;
pub mod request;
pub mod response;
pub mod routes;
pub mod texts;

use std::io::{self, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::handler::{Connection, StreamHandler, Wait};
use request::{Failure, HttpError, Input, Request};
use response::Response;
use texts::Texts;

pub use response::escape_html;
pub use routes::percent_decode;

/// The idle timeout of the http service when `--idle-timeout` is not given.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of the http service.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpOpts {
    /// http: close a keep-alive connection after it served N requests
    #[arg(long, value_name = "N", default_value_t = 1000, global = true)]
    pub max_requests_per_connection: u64,
}

/// What answers one complete request (its body already read and discarded).
pub type Router = dyn Fn(&Request, &routes::Env<'_>) -> Response + Send + Sync;

/// The HTTP handler: the connection loop (keep-alive, pipelining, errors, access
/// log) around a router, by default the http service's own routes.
pub struct Http {
    max_requests: u64,
    router: Box<Router>,
    texts: Texts,
}

impl Http {
    /// A handler that closes a connection after `max_requests_per_connection`.
    pub fn new(max_requests_per_connection: u64) -> Http {
        routes::note_binary_mtime();
        Http {
            max_requests: max_requests_per_connection.max(1),
            router: Box::new(routes::respond),
            texts: Texts::default(),
        }
    }

    /// Pages and error pages in `lang` (`--lang`).
    pub fn lang(mut self, lang: crate::services::Lang) -> Http {
        self.texts = Texts { lang };
        self
    }

    /// The same connection loop answering with `router` instead of the http
    /// service's routes (the metrics API uses this).
    pub fn with_router(
        mut self,
        router: impl Fn(&Request, &routes::Env<'_>) -> Response + Send + Sync + 'static,
    ) -> Http {
        self.router = Box::new(router);
        self
    }
}

impl Default for Http {
    fn default() -> Http {
        Http::new(1000)
    }
}

/// Writes `resp` whole and logs the request.
fn send(
    conn: &mut Connection,
    line: &str,
    resp: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let bytes = resp.to_bytes(&crate::http_date(crate::unix_now()), keep_alive, head_only);
    conn.write_all(&bytes)?;
    let sent = if head_only { 0 } else { resp.body.len() };
    access::log_request(
        &conn.context().service,
        conn.peer(),
        line,
        resp.status,
        sent,
    );
    Ok(())
}

/// Answers a request that cannot be served with its error page, then closes the
/// connection gently: half-close, and read what the client still sends for a
/// moment, so the kernel does not reset the connection (and lose the page) over
/// unread request bytes.
fn refuse(conn: &mut Connection, e: &HttpError, texts: Texts) -> io::Result<()> {
    let resp = texts.protocol_error(e.status, &e.detail);
    send(conn, &e.line, &resp, false, false)?;
    linger(conn, LINGER);
    Ok(())
}

/// How long a closing connection reads what its client still sends.
pub const LINGER: Duration = Duration::from_secs(2);

/// Closing an idle keep-alive connection: a request that crossed the close gets
/// end of file (a client retries that) rather than a reset, within this long.
const IDLE_CLOSE_LINGER: Duration = Duration::from_millis(200);

/// Half-closes and reads what the client still sends for at most `max` (and
/// 4 MiB), so unread request bytes do not make the kernel reset the connection
/// and lose the answer just written.
pub fn linger(conn: &mut Connection, max: Duration) {
    let _ = conn.shutdown_write();
    let until = Instant::now() + max;
    let mut scratch = [0u8; 16 * 1024];
    let mut total = 0usize;
    while total < 4 << 20 {
        let Some(left) = until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return;
        };
        if conn.stream().set_read_timeout(Some(left)).is_err() {
            return;
        }
        match conn.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

fn timed_out(
    conn: &mut Connection,
    idle: Option<Duration>,
    line: &str,
    texts: Texts,
) -> io::Result<()> {
    let secs = idle.map_or(0.0, |d| d.as_secs_f64());
    log::info!(
        "{}: {}: request not complete within the idle timeout ({secs}s); closing",
        conn.context().service,
        conn.peer()
    );
    let resp = texts.error(408, &texts.timed_out(secs));
    // Everything the client sent has been read: nothing to linger for.
    send(conn, line, &resp, false, false)
}

/// Between keep-alive requests: false when the connection should close now,
/// because other clients wait for this service (its processes are all busy) or
/// the idle timeout passed with nothing sent.
fn wait_for_next_request(conn: &mut Connection, idle: Option<Duration>) -> io::Result<bool> {
    match conn.wait_for_input(idle)? {
        Wait::Input => Ok(true),
        Wait::TimedOut => Ok(false),
        Wait::ClientsWaiting => {
            log::debug!(
                "{}: {}: closing an idle keep-alive connection: clients wait",
                conn.context().service,
                conn.peer()
            );
            linger(conn, IDLE_CLOSE_LINGER);
            Ok(false)
        }
    }
}

impl StreamHandler for Http {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        // Responses go out whole; pipelined ones must not wait for an ACK.
        let _ = conn.stream().set_nodelay();
        let idle = conn.context().idle_timeout.filter(|t| !t.is_zero());
        let mut input = Input::default();
        let mut served: u64 = 0;
        loop {
            if served > 0 && input.is_empty() && !wait_for_next_request(conn, idle)? {
                return Ok(());
            }
            let req = match input.read_head(conn, idle) {
                Ok(r) => r,
                Err(Failure::Closed) => return Ok(()),
                Err(Failure::TimedOut) => return timed_out(conn, idle, "", self.texts),
                Err(Failure::Http(e)) => return refuse(conn, &e, self.texts),
                Err(Failure::Io(e)) => return Err(e),
            };
            served += 1;
            let line = req.line();
            if req.expects_continue() {
                conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            match input.discard_body(conn, req.body, idle) {
                Ok(()) => {}
                Err(Failure::Closed) => return Ok(()),
                Err(Failure::TimedOut) => return timed_out(conn, idle, &line, self.texts),
                Err(Failure::Http(mut e)) => {
                    e.line = line;
                    return refuse(conn, &e, self.texts);
                }
                Err(Failure::Io(e)) => return Err(e),
            }
            let env = routes::Env {
                context: conn.context(),
                peer: conn.peer(),
                texts: self.texts,
            };
            let (resp, failed) = match catch_unwind(AssertUnwindSafe(|| (self.router)(&req, &env)))
            {
                Ok(resp) => (resp, false),
                Err(_) => (self.texts.error(500, &self.texts.failed()), true),
            };
            // Clients wait for a process: this one answers and closes rather than
            // keep its slot for a connection that may sit idle.
            let keep = req.keep_alive()
                && served < self.max_requests
                && !failed
                && !conn.clients_waiting();
            send(conn, &line, &resp, keep, req.method == "HEAD")?;
            if !keep {
                if failed || req.must_close {
                    linger(conn, LINGER);
                }
                return Ok(());
            }
        }
    }
}
