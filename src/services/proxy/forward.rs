//! HTTP message mechanics of the proxy: the absolute-form URL, the connection to
//! an origin, the request head sent there (hop-by-hop fields removed, Host from
//! the URL, Via and X-Forwarded-For added), the response head read back with
//! httparse, the body streamed on in bounded pieces, and the head sent to the
//! client.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::services::http::request::{Body, Failure, Input, Request, Source};

/// This proxy's name in `Via` (and what loop detection looks for).
pub const VIA_NAME: &str = "forkserve";
/// The largest response head accepted from an origin.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

/// Header fields that belong to one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Source for TcpStream {
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// A proxy-level failure, answered with an error page.
#[derive(Debug)]
pub struct ProxyError {
    pub status: u16,
    pub detail: String,
}

impl ProxyError {
    pub fn new(status: u16, detail: impl Into<String>) -> ProxyError {
        ProxyError {
            status,
            detail: detail.into(),
        }
    }
}

/// An `http://` request target, split.
#[derive(Debug, Clone, PartialEq)]
pub struct Url {
    /// Lower case; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(target: &str) -> Result<Url, String> {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err("https:// URLs go through a CONNECT tunnel, not as a plain request".into());
        }
        let rest = target
            .get(7..)
            .filter(|_| lower.starts_with("http://"))
            .ok_or("this is a proxy: the request target must be an absolute http:// URL")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = path.split('#').next().unwrap_or("");
        let path = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            _ => path.to_string(),
        };
        let (host, port) = split_authority(authority, 80)?;
        Ok(Url { host, port, path })
    }

    /// The cache key and log form: `http://host[:port]/path?query` (no port when 80).
    pub fn key(&self) -> String {
        format!("http://{}{}", self.host_header(), self.path)
    }

    /// `host:port` (brackets around an IPv6 literal); the port left out when 80.
    pub fn host_header(&self) -> String {
        let host = bracket(&self.host);
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn authority(&self) -> String {
        format!("{}:{}", bracket(&self.host), self.port)
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `host[:port]` into a lower-case host and a port.
pub fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("'{authority}' is not a host[:port]"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{p}' is not a port"))?,
    };
    if host.is_empty() {
        return Err(format!("'{authority}' has no host"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// The names a message's Connection header lists (lower case).
fn connection_options<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// True when a header named `name` must not cross the proxy.
fn is_hop(name: &str, listed: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    HOP_BY_HOP.contains(&lower.as_str()) || listed.contains(&lower)
}

/// True when the request's Via names this proxy: it came round in a loop.
pub fn is_loop(req: &Request) -> bool {
    req.all("via").any(|v| {
        String::from_utf8_lossy(v).split(',').any(|hop| {
            hop.split_whitespace()
                .nth(1)
                .is_some_and(|by| by.eq_ignore_ascii_case(VIA_NAME))
        })
    })
}

/// Validators of a stored response sent when revalidating it.
pub struct Conditional {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The request head for the origin. `client` goes into X-Forwarded-For.
pub fn request_head(req: &Request, url: &Url, client: &str, cond: Option<&Conditional>) -> Vec<u8> {
    let listed = connection_options(req.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let mut out = Vec::with_capacity(512);
    let _ = write!(
        out,
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method,
        url.path,
        url.host_header()
    );
    let mut via = Vec::new();
    let mut xff = Vec::new();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if is_hop(name, &listed) || matches!(lower.as_str(), "host" | "content-length" | "expect") {
            continue;
        }
        if cond.is_some() && matches!(lower.as_str(), "if-none-match" | "if-modified-since") {
            continue;
        }
        match lower.as_str() {
            "via" => via.push(String::from_utf8_lossy(value).into_owned()),
            "x-forwarded-for" => xff.push(String::from_utf8_lossy(value).into_owned()),
            _ => {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    via.push(format!("1.{} {VIA_NAME}", req.minor));
    xff.push(client.to_string());
    let _ = write!(
        out,
        "Via: {}\r\nX-Forwarded-For: {}\r\n",
        via.join(", "),
        xff.join(", ")
    );
    if let Some(c) = cond {
        if let Some(e) = &c.etag {
            let _ = write!(out, "If-None-Match: {e}\r\n");
        }
        if let Some(lm) = &c.last_modified {
            let _ = write!(out, "If-Modified-Since: {lm}\r\n");
        }
    }
    match req.body {
        Body::None => {}
        Body::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        Body::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the origin closes.
    Close,
}

/// A response head from an origin.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// End-to-end fields only (hop-by-hop and framing fields removed).
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    /// The origin lets the connection be reused.
    pub reusable: bool,
    /// Content-Length as the origin sent it (kept for HEAD and 304 answers).
    pub declared_length: Option<u64>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// The first value of field `name` (case-insensitive) in a list of fields.
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A connection to an origin, reusable between requests of one client connection.
pub struct Upstream {
    /// `host:port` it was opened for.
    pub authority: String,
    pub addr: SocketAddr,
    pub stream: TcpStream,
    pub input: Input,
    /// Requests already sent on it (here or, pooled, by other workers).
    pub used: u32,
    /// The last response was read whole and the origin lets the connection be
    /// reused: it may serve another request, here or from the pool.
    pub idle_ok: bool,
}

impl Upstream {
    /// A pooled connection, if it goes to one of `addrs` on `port`.
    pub fn adopt(
        authority: &str,
        stream: TcpStream,
        addrs: &[IpAddr],
        port: u16,
    ) -> Option<Upstream> {
        let addr = stream.peer_addr().ok()?;
        (addr.port() == port && addrs.contains(&addr.ip())).then(|| Upstream {
            authority: authority.to_string(),
            addr,
            stream,
            input: Input::default(),
            used: 1,
            idle_ok: false,
        })
    }
}

/// Connects to the first of `addrs` that answers within `timeout` each.
pub fn connect(
    authority: &str,
    addrs: &[IpAddr],
    port: u16,
    timeout: Duration,
    io_timeout: Duration,
) -> Result<Upstream, ProxyError> {
    let mut last = ProxyError::new(502, format!("{authority} has no address to connect to"));
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_write_timeout(Some(io_timeout));
                return Ok(Upstream {
                    authority: authority.to_string(),
                    addr,
                    stream,
                    input: Input::default(),
                    used: 0,
                    idle_ok: false,
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                last = ProxyError::new(
                    504,
                    format!(
                        "Connecting to {authority} ({addr}) took longer than {}s.",
                        timeout.as_secs_f64()
                    ),
                );
            }
            Err(e) => {
                last = ProxyError::new(
                    502,
                    format!("Could not connect to {authority} ({addr}): {e}."),
                )
            }
        }
    }
    Err(last)
}

/// Reads a final response head (1xx interim responses are skipped).
pub fn read_response(
    up: &mut Upstream,
    head_request: bool,
    timeout: Duration,
) -> Result<ResponseHead, ProxyError> {
    loop {
        let head = read_one_head(up, head_request, timeout)?;
        if head.status >= 200 {
            return Ok(head);
        }
        if head.status == 101 {
            return Err(ProxyError::new(
                502,
                "The origin switched protocols, which this proxy does not relay.",
            ));
        }
    }
}

fn read_one_head(
    up: &mut Upstream,
    head_request: bool,
    timeout: Duration,
) -> Result<ResponseHead, ProxyError> {
    let who = up.authority.clone();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(up.input.buffered()) {
            Ok(httparse::Status::Complete(n)) => {
                let head = interpret(&parsed, head_request).map_err(|e| {
                    ProxyError::new(502, format!("{who} sent a malformed response: {e}."))
                })?;
                up.input.consume(n);
                return Ok(head);
            }
            Ok(httparse::Status::Partial) if up.input.buffered().len() > MAX_RESPONSE_HEAD => {
                return Err(ProxyError::new(
                    502,
                    format!("{who} sent a response head larger than 64 KiB."),
                ));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                return Err(ProxyError::new(
                    502,
                    format!("{who} sent a malformed response: {e}."),
                ));
            }
        }
        match up.input.fill(&mut up.stream, Some(timeout)) {
            Ok(0) => {
                return Err(ProxyError::new(
                    502,
                    format!("{who} closed the connection without a response."),
                ));
            }
            Ok(_) => {}
            Err(Failure::TimedOut) => {
                return Err(ProxyError::new(
                    504,
                    format!("{who} did not respond within {}s.", timeout.as_secs_f64()),
                ));
            }
            Err(e) => return Err(ProxyError::new(502, format!("Reading from {who}: {e:?}."))),
        }
    }
}

fn interpret(
    parsed: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<ResponseHead, String> {
    let status = parsed.code.ok_or("no status")?;
    let minor = parsed.version.unwrap_or(1);
    let listed = connection_options(parsed.headers.iter().map(|h| (h.name, h.value)));
    let mut chunked = false;
    let mut coded = false;
    let mut length: Option<u64> = None;
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if lower == "transfer-encoding" {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            chunked = v.rsplit(',').next().is_some_and(|t| t.trim() == "chunked");
            coded = true;
            continue;
        }
        if lower == "content-length" {
            let v = std::str::from_utf8(h.value).map_err(|_| "Content-Length is not text")?;
            let first = v.split(',').next().unwrap_or("").trim();
            let n: u64 = first
                .parse()
                .map_err(|_| "Content-Length is not a number")?;
            if v.split(',').any(|o| o.trim() != first) || length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values".into());
            }
            length = Some(n);
            continue;
        }
        if is_hop(h.name, &listed) {
            continue;
        }
        headers.push((
            h.name.to_string(),
            String::from_utf8_lossy(h.value).into_owned(),
        ));
    }
    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length; a final coding
    // other than chunked runs to the close.
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if coded {
        Framing::Close
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let close = listed.iter().any(|t| t == "close");
    // Both framings at once: answer this one, then do not trust the connection.
    let reusable = framing != Framing::Close
        && !(coded && length.is_some())
        && !close
        && (minor >= 1 || listed.iter().any(|t| t == "keep-alive"));
    Ok(ResponseHead {
        status,
        reason: parsed.reason.unwrap_or("").to_string(),
        headers,
        framing,
        reusable,
        declared_length: if coded { None } else { length },
    })
}

/// Why a body stopped short.
#[derive(Debug)]
pub enum RelayError {
    /// The origin failed, timed out or closed early.
    Upstream(String),
    /// The client went away.
    Client(io::Error),
}

/// Streams a response body from the origin to `out`, a piece at a time, calling
/// `tee` with each piece too (the cache writer). Returns the body bytes.
pub fn relay_body(
    up: &mut Upstream,
    framing: Framing,
    timeout: Duration,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<u64, RelayError> {
    let mut client_err: Option<io::Error> = None;
    let mut sink = |piece: &[u8]| -> io::Result<()> {
        out(piece).inspect_err(|e| client_err = Some(io::Error::new(e.kind(), e.to_string())))
    };
    let result = match framing {
        Framing::Empty => Ok(0),
        Framing::Length(n) => {
            up.input
                .copy_body(&mut up.stream, Body::Length(n), Some(timeout), &mut sink)
        }
        Framing::Chunked => {
            up.input
                .copy_body(&mut up.stream, Body::Chunked, Some(timeout), &mut sink)
        }
        Framing::Close => copy_to_close(up, timeout, &mut sink),
    };
    result.map_err(|f| match client_err.take() {
        Some(e) => RelayError::Client(e),
        None => RelayError::Upstream(match f {
            Failure::Closed => "the origin closed the connection mid-body".into(),
            Failure::TimedOut => format!(
                "the origin went silent for {}s mid-body",
                timeout.as_secs_f64()
            ),
            Failure::Http(e) => e.detail,
            Failure::Io(e) => e.to_string(),
        }),
    })
}

fn copy_to_close(
    up: &mut Upstream,
    timeout: Duration,
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<u64, Failure> {
    let mut total = 0u64;
    loop {
        let n = up.input.buffered().len();
        if n > 0 {
            sink(up.input.buffered()).map_err(Failure::Io)?;
            up.input.consume(n);
            total += n as u64;
        }
        if up.input.fill(&mut up.stream, Some(timeout))? == 0 {
            return Ok(total);
        }
    }
}

/// How the body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// HEAD, 204, 304: a head only (Content-Length as the origin declared it).
    None(Option<u64>),
    Length(u64),
    /// Re-chunked for an HTTP/1.1 client whose body length is unknown.
    Chunked,
    /// An HTTP/1.0 client: the body ends when the proxy closes.
    Close,
}

/// The response head sent to the client.
pub fn client_head(
    status: u16,
    reason: &str,
    headers: &[(String, String)],
    framing: ClientFraming,
    keep_alive: bool,
    x_cache: &str,
    age: Option<i64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let reason = if reason.is_empty() {
        crate::services::http::response::reason(status)
    } else {
        reason
    };
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    let mut via = Vec::new();
    for (n, v) in headers {
        // A stored response's age replaces the one it came with.
        let own_age = age.is_some() && n.eq_ignore_ascii_case("age");
        if n.eq_ignore_ascii_case("via") {
            via.push(v.as_str());
        } else if !own_age && !n.eq_ignore_ascii_case("x-cache") {
            let _ = write!(out, "{n}: {v}\r\n");
        }
    }
    let own = format!("1.1 {VIA_NAME}");
    via.push(&own);
    let _ = write!(out, "Via: {}\r\nX-Cache: {x_cache}\r\n", via.join(", "));
    if let Some(a) = age {
        let _ = write!(out, "Age: {a}\r\n");
    }
    match framing {
        ClientFraming::None(Some(n)) | ClientFraming::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::None(None) | ClientFraming::Close => {}
    }
    out.extend_from_slice(if keep_alive && framing != ClientFraming::Close {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    out
}

/// Writes one body piece in `framing`, after whatever `pending` holds (the head,
/// so a small response leaves in one segment); `pending` is empty afterwards.
pub fn write_piece(
    w: &mut impl Write,
    framing: ClientFraming,
    pending: &mut Vec<u8>,
    piece: &[u8],
) -> io::Result<()> {
    if piece.is_empty() {
        return Ok(());
    }
    let chunked = framing == ClientFraming::Chunked;
    if !chunked && pending.is_empty() {
        return w.write_all(piece);
    }
    if chunked {
        let _ = write!(pending, "{:x}\r\n", piece.len());
    }
    pending.extend_from_slice(piece);
    if chunked {
        pending.extend_from_slice(b"\r\n");
    }
    let done = w.write_all(pending);
    pending.clear();
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://Example.COM:8080?q=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.com", 8080, "/?q=1")
        );
        assert_eq!(u.key(), "http://example.com:8080/?q=1");
        assert_eq!(Url::parse("http://h:80").unwrap().key(), "http://h/");
        let u = Url::parse("http://[::1]/a").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.host_header()),
            ("::1", 80, "[::1]".to_string())
        );
        assert!(Url::parse("/relative").is_err());
        assert!(Url::parse("https://h/").is_err());
        assert!(Url::parse("http://user@h/").is_err());
        assert!(Url::parse("http://h:99999/").is_err());
    }

    fn head_of(raw: &[u8], head_request: bool) -> ResponseHead {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        r.parse(raw).unwrap();
        interpret(&r, head_request).unwrap()
    }

    #[test]
    fn response_framing_per_rfc_9112() {
        let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, X-A\r\nX-A: 1\r\nX-B: 2\r\n\r\n", false);
        assert_eq!((h.framing, h.reusable), (Framing::Length(5), false));
        assert_eq!(h.headers, vec![("X-B".to_string(), "2".to_string())]);
        let h = head_of(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        let h = head_of(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Close);
        let h = head_of(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", false);
        assert_eq!((h.framing, h.reusable), (Framing::Length(5), false));
        let h = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(
            (h.framing, h.declared_length, h.reusable),
            (Framing::Empty, Some(5), true)
        );
        let h = head_of(b"HTTP/1.1 304 Not Modified\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn hop_by_hop_fields_stay_behind() {
        let mut input = Input::for_proxy();
        let raw = b"POST http://o.test/x HTTP/1.1\r\nHost: o.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic x\r\nTE: trailers\r\nKeep-Alive: 5\r\nVia: 1.0 other\r\nContent-Length: 3\r\nAccept: */*\r\n\r\nabc";
        struct S(io::Cursor<Vec<u8>>);
        impl io::Read for S {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Source for S {
            fn set_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
                Ok(())
            }
        }
        let req = input
            .read_head(&mut S(io::Cursor::new(raw.to_vec())), None)
            .unwrap();
        let url = Url::parse(&req.target).unwrap();
        let head = String::from_utf8(request_head(&req, &url, "127.0.0.1", None)).unwrap();
        assert!(
            head.starts_with("POST /x HTTP/1.1\r\nHost: o.test\r\n"),
            "{head}"
        );
        for gone in [
            "Connection",
            "X-Secret",
            "Proxy-Authorization",
            "TE:",
            "Keep-Alive",
        ] {
            assert!(!head.contains(gone), "{gone} in {head}");
        }
        assert!(head.contains("Via: 1.0 other, 1.1 forkserve\r\n"), "{head}");
        assert!(
            head.contains("X-Forwarded-For: 127.0.0.1\r\nContent-Length: 3\r\n\r\n"),
            "{head}"
        );
        assert!(!is_loop(&req));
    }
}
