//! The HTTP forward proxy (exercise 3 of the reference): absolute-form requests of
//! every method forwarded to the origin with bodies streamed both ways, GET and
//! HEAD answered from a disk cache shared by the forked workers, CONNECT tunnels to
//! allowed ports, access lists with a default denial of internal destinations, and
//! one log line per request (Squid native or combined format).
//!
//! One forked worker serves one client connection: keep-alive and pipelined
//! requests in order, the origin connection kept for the next request to the same
//! host.

pub mod acl;
pub mod cache;
mod cached;
pub mod forward;
pub mod log;
pub mod pool;
pub mod resolve;
pub mod tunnel;

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::handler::{Connection, Stream, StreamHandler};
use crate::peer::Peer;
use crate::server::{Companion, Error, Service};
use crate::services::http::request::{Body, Failure, Input, Request};
use crate::services::http::response::Response;
use acl::{Acl, AclSource, Cidr, Target};
use cache::Cache;
use forward::{ClientFraming, Framing, ProxyError, RelayError, ResponseHead, Upstream, Url};
use log::{CacheResult, LogFormat, Record};
use std::os::fd::AsRawFd;

/// How long a client may take between requests on a kept-alive connection when
/// `--idle-timeout` is not given.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of the proxy service.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyOpts {
    /// Proxy: also serve clients from CIDR (repeatable). By default only loopback
    /// and Unix-socket clients may use it. An open proxy is found and abused within
    /// hours: never open it to the Internet
    #[arg(long = "allow-clients", value_name = "CIDR", global = true)]
    pub allow_clients: Vec<String>,
    /// Proxy: seconds to wait for an origin to accept a connection (then 504)
    #[arg(long, value_name = "SECS", default_value_t = 5.0, global = true)]
    pub connect_timeout: f64,
    /// Proxy: seconds an origin may stay silent (then 504, or the end of a body)
    #[arg(long, value_name = "SECS", default_value_t = 30.0, global = true)]
    pub upstream_timeout: f64,
    /// Proxy: ports CONNECT may open tunnels to (comma-separated)
    #[arg(
        long,
        value_name = "PORTS",
        value_delimiter = ',',
        default_value = "443",
        global = true
    )]
    pub connect_ports: Vec<u16>,
    /// Proxy: cache directory (default $CACHE_DIRECTORY, else RUNDIR/proxy-cache)
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Proxy: cache size cap, least recently used entries evicted (K, M, G; 0: no cache)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = crate::services::files::parse_size, global = true)]
    pub cache_size: u64,
    /// Proxy: access-list file, re-read on SIGHUP (format in the README)
    #[arg(long, value_name = "FILE", global = true)]
    pub acl: Option<PathBuf>,
    /// Proxy: allow RULE (a destination CIDR, host glob, URL prefix or `client:CIDR`); before --deny and the file
    #[arg(long, value_name = "RULE", global = true)]
    pub allow: Vec<String>,
    /// Proxy: deny RULE; after --allow, before the file
    #[arg(long, value_name = "RULE", global = true)]
    pub deny: Vec<String>,
    /// Proxy: request log format
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        default_value = "squid",
        global = true
    )]
    pub access_log_format: LogFormat,
    /// Proxy: hosts file consulted before DNS
    #[arg(long, value_name = "FILE", default_value = "/etc/hosts", global = true)]
    pub hosts_file: PathBuf,
    /// Proxy: resolver configuration (nameservers, search, ndots)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/resolv.conf",
        global = true
    )]
    pub resolv_conf: PathBuf,
}

/// The proxy handler.
pub struct Proxy {
    clients: Vec<Cidr>,
    connect_timeout: Duration,
    upstream_timeout: Duration,
    connect_ports: Vec<u16>,
    cache: Option<Cache>,
    acl: AclSource,
    log_format: LogFormat,
    resolver: resolve::Resolver,
    pool: Option<pool::Pool>,
}

fn config(msg: String) -> Error {
    Error::new(Error::CONFIG, msg)
}

fn secs(flag: &str, v: f64) -> Result<Duration, Error> {
    if !v.is_finite() || v <= 0.0 {
        return Err(Error::new(
            Error::USAGE,
            format!("{flag}: expected a positive number of seconds, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Builds the proxy service from its options: loads the access list and opens the
/// cache directory, handed to `run_as` (`--user`) when given, since the workers
/// write it after the privilege drop. Errors name the option or file at fault.
pub fn service(
    opts: &ProxyOpts,
    runtime_dir: &Path,
    run_as: Option<&str>,
) -> Result<Service, Error> {
    let clients = opts
        .allow_clients
        .iter()
        .map(|c| {
            Cidr::parse(c)
                .map_err(|e| Error::new(Error::USAGE, format!("--allow-clients {c}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let loaded = Acl::load(&opts.allow, &opts.deny, opts.acl.as_deref()).map_err(config)?;
    let cache = if opts.cache_size == 0 {
        None
    } else {
        let dir = opts.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("CACHE_DIRECTORY")
                .and_then(|d| std::env::split_paths(&d).next())
                .unwrap_or_else(|| runtime_dir.join("proxy-cache"))
        });
        let c = Cache {
            dir,
            max_size: opts.cache_size,
            max_object: (opts.cache_size / 4).max(1),
        };
        c.open().map_err(|e| Error::new(Error::OSERR, e))?;
        if let Some(user) = run_as {
            give_cache_to(&c.dir, user)?;
        }
        Some(c)
    };
    if opts.connect_ports.contains(&0) {
        return Err(Error::new(Error::USAGE, "--connect-ports: 0 is not a port"));
    }
    let (pool_path, pool_listener) = pool::bind(runtime_dir).map_err(|e| {
        Error::new(
            Error::OSERR,
            format!(
                "proxy: binding the pool socket in {}: {e}",
                runtime_dir.display()
            ),
        )
    })?;
    if let Some(user) = run_as {
        crate::users::give_to("proxy: pool", user, &[&pool_path])?;
    }
    let proxy = Proxy {
        clients,
        connect_timeout: secs("--connect-timeout", opts.connect_timeout)?,
        upstream_timeout: secs("--upstream-timeout", opts.upstream_timeout)?,
        connect_ports: opts.connect_ports.clone(),
        cache,
        acl: AclSource {
            allow: opts.allow.clone(),
            deny: opts.deny.clone(),
            file: opts.acl.clone(),
            loaded,
        },
        log_format: opts.access_log_format,
        resolver: resolve::Resolver {
            hosts_file: opts.hosts_file.clone(),
            resolv_conf: opts.resolv_conf.clone(),
        },
        pool: Some(pool::Pool { path: pool_path }),
    };
    let fd = pool_listener.as_raw_fd();
    let companion = Companion::new("pool", move || pool::run(&pool_listener)).owns_fd(fd);
    Ok(Service::stream("proxy", proxy)
        .idle_timeout(Some(DEFAULT_IDLE_TIMEOUT))
        .companion(companion))
}

/// Chowns the cache directory and what is in it to `user`.
fn give_cache_to(dir: &Path, user: &str) -> Result<(), Error> {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    crate::users::give_to("proxy: cache", user, &refs)
}

/// One request as it goes through the proxy: what the log line needs.
struct Job<'a> {
    req: &'a Request,
    url: String,
    result: CacheResult,
    status: u16,
    bytes: u64,
    server: Option<IpAddr>,
    content_type: Option<String>,
    upstream: Option<Duration>,
    started: Instant,
}

impl<'a> Job<'a> {
    fn new(req: &'a Request) -> Job<'a> {
        Job {
            req,
            url: req.target.clone(),
            result: CacheResult::Pass,
            status: 0,
            bytes: 0,
            server: None,
            content_type: None,
            upstream: None,
            started: Instant::now(),
        }
    }

    fn log(&self, peer: &Peer, fmt: LogFormat) {
        Record {
            peer,
            method: &self.req.method,
            url: &self.url,
            minor: self.req.minor,
            status: self.status,
            bytes: self.bytes,
            result: self.result,
            server: self.server,
            content_type: self.content_type.as_deref(),
            referer: self.req.header("referer"),
            user_agent: self.req.header("user-agent"),
            upstream: self.upstream,
            total: self.started.elapsed(),
        }
        .log(fmt);
    }
}

/// The state of one client connection.
struct Client<'c> {
    conn: &'c mut Connection,
    input: Input,
    idle: Option<Duration>,
    acl: Acl,
    upstream: Option<Upstream>,
}

impl Client<'_> {
    /// A response has been read whole: its origin connection may serve again,
    /// unless the origin said otherwise.
    fn response_read(&mut self, resp: &ResponseHead) {
        match self.upstream.as_mut() {
            Some(up) if resp.reusable => up.idle_ok = true,
            _ => self.upstream = None,
        }
    }
}

/// What to do with the client connection after a request.
#[derive(PartialEq)]
enum Next {
    KeepAlive,
    Close,
}

impl StreamHandler for Proxy {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        let _ = conn.stream().set_nodelay();
        let idle = conn.context().idle_timeout.filter(|t| !t.is_zero());
        if let Stream::Tcp(s) = conn.stream() {
            let _ = s.set_write_timeout(Some(self.upstream_timeout));
        }
        let acl = self.acl.current(conn.context().reloads);
        let mut client = Client {
            conn,
            input: Input::for_proxy(),
            idle,
            acl,
            upstream: None,
        };
        if let Some(why) = self.refuse_client(client.conn.peer()) {
            ::log::info!("proxy: {}: {why}", client.conn.peer());
            return last_word(client.conn, 403, &why);
        }
        let served = self.serve_client(&mut client);
        self.give_back(client.upstream.take());
        served
    }
}

impl Proxy {
    /// Serves requests in order until the client or an answer ends the connection.
    fn serve_client(&self, client: &mut Client<'_>) -> io::Result<()> {
        let idle = client.idle;
        loop {
            let req = match client.input.read_head(client.conn, idle) {
                Ok(r) => r,
                Err(Failure::Closed) => return Ok(()),
                Err(Failure::TimedOut) => {
                    return last_word(client.conn, 408, "The request did not arrive in time.");
                }
                Err(Failure::Http(e)) => {
                    let peer = client.conn.peer();
                    ::log::info!(
                        "proxy: {peer}: refused \"{}\": {} {}",
                        e.line,
                        e.status,
                        e.detail
                    );
                    let _ = last_word(client.conn, e.status, &e.detail);
                    crate::services::http::linger(client.conn, crate::services::http::LINGER);
                    return Ok(());
                }
                Err(Failure::Io(e)) => return Err(e),
            };
            let mut job = Job::new(&req);
            let next = self.serve(client, &req, &mut job);
            job.log(client.conn.peer(), self.log_format);
            match next {
                Ok(Next::KeepAlive) if req.keep_alive() => {}
                Ok(_) => return Ok(()),
                Err(e) => {
                    ::log::debug!("proxy: {}: connection ended: {e}", client.conn.peer());
                    return Ok(());
                }
            }
        }
    }

    /// Why this client may not use the proxy, if it may not.
    fn refuse_client(&self, peer: &Peer) -> Option<String> {
        let Peer::Ip(addr) = peer else { return None };
        let ip = addr.ip();
        let v4 = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if v4.is_loopback() || self.clients.iter().any(|c| c.contains(ip)) {
            return None;
        }
        Some(format!(
            "Client {ip} may not use this proxy (see --allow-clients)."
        ))
    }

    /// Serves one request; says whether the connection may carry another.
    fn serve(&self, c: &mut Client<'_>, req: &Request, job: &mut Job<'_>) -> io::Result<Next> {
        if req.method == "CONNECT" {
            return self.connect_tunnel(c, req, job);
        }
        let url = match Url::parse(&req.target) {
            Ok(u) => u,
            Err(e) => return self.fail(c, req, job, ProxyError::new(400, e), CacheResult::Error),
        };
        job.url = url.key();
        if forward::is_loop(req) {
            let e = ProxyError::new(
                508,
                format!(
                    "The request already went through {} (Via): a forwarding loop.",
                    forward::VIA_NAME
                ),
            );
            return self.fail(c, req, job, e, CacheResult::Error);
        }
        let addrs = match self.admit(c, &url.host, &job.url) {
            Ok(a) => a,
            Err((e, result)) => return self.fail(c, req, job, e, result),
        };
        if req.expects_continue() {
            c.conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let cacheable = self.cache.is_some() && matches!(req.method.as_str(), "GET" | "HEAD");
        let outcome = if cacheable {
            self.serve_cacheable(c, req, job, &url, &addrs)
        } else {
            self.pass(c, req, job, &url, &addrs)
        };
        match outcome {
            Ok(next) => Ok(next),
            Err(Outcome::Answer(e)) => {
                let result = if job.result == CacheResult::Pass {
                    CacheResult::Error
                } else {
                    job.result
                };
                self.fail(c, req, job, e, result)
            }
            Err(Outcome::Broken(e)) => {
                ::log::info!("proxy: {} {}: {e}", req.method, job.url);
                Ok(Next::Close)
            }
        }
    }

    /// Access lists, name resolution and the SSRF default: the addresses this
    /// request may go to, or the answer refusing it.
    fn admit(
        &self,
        c: &Client<'_>,
        host: &str,
        url: &str,
    ) -> Result<Vec<IpAddr>, (ProxyError, CacheResult)> {
        let target = Target {
            client: c.conn.peer().ip().map(|a| a.ip()),
            host,
            url,
        };
        let deny = |why: &str| {
            (
                ProxyError::new(
                    403,
                    format!("Access to {url} is denied by the access list ({why})."),
                ),
                CacheResult::Denied,
            )
        };
        if let Some(v) = c.acl.check(&target, None)
            && !v.allow
        {
            return Err(deny(&v.why));
        }
        let addrs = self.resolver.resolve(host).map_err(|e| {
            (
                ProxyError::new(502, format!("The name {host} could not be resolved: {e}.")),
                CacheResult::Error,
            )
        })?;
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for a in addrs {
            match c.acl.check(&target, Some(a)) {
                Some(v) if v.allow => allowed.push(a),
                Some(v) => {
                    first_refusal.get_or_insert(v.why);
                }
                None => {}
            }
        }
        if allowed.is_empty() {
            return Err(deny(
                first_refusal.as_deref().unwrap_or("no address allowed"),
            ));
        }
        Ok(allowed)
    }

    /// Answers with an error page; the connection stays open only when nothing of
    /// the request is left unread.
    fn fail(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        job: &mut Job<'_>,
        e: ProxyError,
        result: CacheResult,
    ) -> io::Result<Next> {
        job.status = e.status;
        job.result = result;
        let keep = req.body == Body::None && req.keep_alive();
        let page = Response::error(e.status, &e.detail)
            .header("Via", format!("1.1 {}", forward::VIA_NAME));
        let bytes = page.to_bytes(
            &crate::http_date(crate::unix_now()),
            keep,
            req.method == "HEAD",
        );
        job.bytes = page.body.len() as u64;
        c.conn.write_all(&bytes)?;
        if keep {
            return Ok(Next::KeepAlive);
        }
        if req.body != Body::None {
            crate::services::http::linger(c.conn, crate::services::http::LINGER);
        }
        Ok(Next::Close)
    }

    /// An origin connection for `url`: the kept one when it goes to the same
    /// place, else one from the pool (`from_pool`: for requests that may be
    /// retried, since an idle connection may have been closed meanwhile), else a
    /// new one.
    fn upstream<'u>(
        &self,
        c: &'u mut Client<'_>,
        url: &Url,
        addrs: &[IpAddr],
        from_pool: bool,
    ) -> Result<&'u mut Upstream, ProxyError> {
        let authority = url.authority();
        if c.upstream
            .as_ref()
            .is_some_and(|u| u.authority != authority || !addrs.contains(&u.addr.ip()))
        {
            self.give_back(c.upstream.take());
        }
        if c.upstream.is_none() && from_pool {
            c.upstream = self
                .pool
                .as_ref()
                .and_then(|p| p.take(&authority))
                .and_then(|s| Upstream::adopt(&authority, s, addrs, url.port));
        }
        if c.upstream.is_none() {
            c.upstream = Some(forward::connect(
                &authority,
                addrs,
                url.port,
                self.connect_timeout,
                self.upstream_timeout,
            )?);
        }
        Ok(c.upstream.as_mut().expect("just connected"))
    }

    /// Hands a reusable origin connection to the pool (else it just closes).
    fn give_back(&self, up: Option<Upstream>) {
        if let (Some(pool), Some(up)) = (&self.pool, up)
            && up.idle_ok
            && up.input.buffered().is_empty()
        {
            pool.put(&up.authority, up.stream);
        }
    }

    /// Sends the request (and its body) and reads the response head. A kept
    /// connection the origin closed meanwhile is replaced once, for requests
    /// without a body.
    fn exchange(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        url: &Url,
        addrs: &[IpAddr],
        head: &[u8],
        job: &mut Job<'_>,
    ) -> Result<ResponseHead, Outcome> {
        for attempt in 0..2 {
            let reused = c
                .upstream
                .as_ref()
                .is_some_and(|u| u.authority == url.authority() && u.used > 0);
            let sent = Instant::now();
            let up = self
                .upstream(c, url, addrs, retryable(req))
                .map_err(Outcome::Answer)?;
            job.server = Some(up.addr.ip());
            up.used += 1;
            up.idle_ok = false;
            let wrote = up.stream.write_all(head);
            let result = match wrote {
                Ok(()) if req.body != Body::None => {
                    self.send_body(c, req).map_err(Outcome::from)?;
                    let up = c.upstream.as_mut().expect("connected");
                    forward::read_response(up, req.method == "HEAD", self.upstream_timeout)
                        .map_err(Outcome::Answer)
                }
                Ok(()) => forward::read_response(up, req.method == "HEAD", self.upstream_timeout)
                    .map_err(Outcome::Answer),
                Err(e) => Err(Outcome::Answer(ProxyError::new(
                    502,
                    format!("Writing to {}: {e}.", url.authority()),
                ))),
            };
            job.upstream = Some(sent.elapsed());
            match result {
                Err(Outcome::Answer(e))
                    if reused && attempt == 0 && retryable(req) && e.status == 502 =>
                {
                    c.upstream = None;
                }
                Err(e) => {
                    c.upstream = None;
                    return Err(e);
                }
                Ok(h) => return Ok(h),
            }
        }
        Err(Outcome::Answer(ProxyError::new(
            502,
            "The origin closed the connection twice.",
        )))
    }

    /// Streams the client's request body to the origin (re-chunked if chunked).
    fn send_body(&self, c: &mut Client<'_>, req: &Request) -> Result<(), BodyError> {
        let up = c.upstream.as_mut().expect("connected");
        let chunked = req.body == Body::Chunked;
        let mut origin_err: Option<io::Error> = None;
        let stream = &mut up.stream;
        let mut sink = |piece: &[u8]| -> io::Result<()> {
            let r = if chunked {
                forward::write_piece(stream, ClientFraming::Chunked, &mut Vec::new(), piece)
            } else {
                stream.write_all(piece)
            };
            r.inspect_err(|e| origin_err = Some(io::Error::new(e.kind(), e.to_string())))
        };
        let r = c.input.copy_body(c.conn, req.body, c.idle, &mut sink);
        if let Some(e) = origin_err {
            return Err(BodyError::Origin(e));
        }
        r.map_err(BodyError::Client)?;
        if chunked {
            up.stream
                .write_all(b"0\r\n\r\n")
                .map_err(BodyError::Origin)?;
        }
        Ok(())
    }

    /// Forwards the request and its response, storing nothing.
    fn pass(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        job: &mut Job<'_>,
        url: &Url,
        addrs: &[IpAddr],
    ) -> Result<Next, Outcome> {
        let client = client_text(c.conn.peer());
        let head = forward::request_head(req, url, &client, None);
        let resp = self.exchange(c, req, url, addrs, &head, job)?;
        if job.result == CacheResult::Pass
            && matches!(req.method.as_str(), "GET" | "HEAD")
            && self.cache.is_some()
        {
            job.result = CacheResult::Miss;
        }
        self.relay(c, req, job, &resp, None)
    }

    /// Sends the origin's response to the client, teeing the body into `store`.
    fn relay(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        job: &mut Job<'_>,
        resp: &ResponseHead,
        mut store: Option<&mut cache::Writer>,
    ) -> Result<Next, Outcome> {
        job.status = resp.status;
        job.content_type = resp.header("content-type").map(str::to_string);
        let framing = match resp.framing {
            Framing::Empty => ClientFraming::None(resp.declared_length),
            Framing::Length(n) => ClientFraming::Length(n),
            _ if req.minor >= 1 => ClientFraming::Chunked,
            _ => ClientFraming::Close,
        };
        let keep = req.keep_alive() && framing != ClientFraming::Close;
        let head = forward::client_head(
            resp.status,
            &resp.reason,
            &resp.headers,
            framing,
            keep,
            job.result.x_cache(),
            None,
        );
        // The head goes out with the first piece of the body.
        let mut pending = head;
        let conn = &mut *c.conn;
        let up = c.upstream.as_mut().expect("connected");
        let mut out = |piece: &[u8]| -> io::Result<()> {
            if let Some(w) = store.as_deref_mut() {
                w.write(piece);
            }
            forward::write_piece(conn, framing, &mut pending, piece)
        };
        let sent = forward::relay_body(up, resp.framing, self.upstream_timeout, &mut out);
        match sent {
            Ok(n) => {
                job.bytes = n;
                if framing == ClientFraming::Chunked {
                    pending.extend_from_slice(b"0\r\n\r\n");
                }
                if !pending.is_empty() {
                    c.conn
                        .write_all(&pending)
                        .map_err(|e| Outcome::Broken(format!("client gone: {e}")))?;
                }
                c.response_read(resp);
                Ok(if keep { Next::KeepAlive } else { Next::Close })
            }
            Err(RelayError::Client(e)) => {
                c.upstream = None;
                Err(Outcome::Broken(format!("client gone mid-body: {e}")))
            }
            Err(RelayError::Upstream(e)) => {
                c.upstream = None;
                if let Some(w) = store {
                    w.abandon();
                }
                if !pending.is_empty() {
                    // Nothing reached the client yet: it can still get an answer.
                    let detail = format!("The origin failed before sending its body: {e}.");
                    return Err(Outcome::Answer(ProxyError::new(502, detail)));
                }
                Err(Outcome::Broken(format!("response cut short: {e}")))
            }
        }
    }
}

/// What stops a request short.
enum Outcome {
    /// Nothing was sent to the client yet: answer with this error page.
    Answer(ProxyError),
    /// The client or the origin went away mid-response: close.
    Broken(String),
}

enum BodyError {
    Client(Failure),
    Origin(io::Error),
}

impl From<BodyError> for Outcome {
    fn from(e: BodyError) -> Outcome {
        match e {
            BodyError::Origin(e) => Outcome::Answer(ProxyError::new(
                502,
                format!("The origin stopped taking the request body: {e}."),
            )),
            BodyError::Client(Failure::Http(h)) => {
                Outcome::Answer(ProxyError::new(h.status, h.detail))
            }
            BodyError::Client(f) => {
                Outcome::Broken(format!("the client's request body stopped: {f:?}"))
            }
        }
    }
}

/// An error page before the connection closes (a client that is gone anyway
/// is not an error).
fn last_word(conn: &mut Connection, status: u16, detail: &str) -> io::Result<()> {
    let page = Response::error(status, detail);
    let _ = conn.write_all(&page.to_bytes(&crate::http_date(crate::unix_now()), false, false));
    Ok(())
}

/// A request that may be sent again on a fresh connection when a kept one turned
/// out closed: idempotent (RFC 9110 9.2.2) and without a body (already consumed).
fn retryable(req: &Request) -> bool {
    req.body == Body::None
        && matches!(
            req.method.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
}

/// The client's address for X-Forwarded-For.
fn client_text(peer: &Peer) -> String {
    match peer {
        Peer::Ip(a) => a.ip().to_string(),
        Peer::Unix { .. } => "unknown".to_string(),
    }
}
