//! Reading requests off a connection: the head parsed with `httparse` (request line
//! and headers, at most 8 KiB), checked against RFC 9112 (version, Host, message
//! framing), and the body read and discarded (Content-Length or chunked, at most
//! 1 MiB). Bytes past one request stay buffered for the next (pipelining).

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// The largest request head (request line and header fields) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest request body accepted (and discarded).
pub const MAX_BODY: u64 = 1024 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// A socket the reader can set a read timeout on.
pub trait Source: Read {
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
}

impl Source for crate::handler::Connection {
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.stream().set_read_timeout(t)
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent (`/echo/a%20b?x=1`, or absolute-form).
    pub target: String,
    /// The path of the target, still percent-encoded, without the query.
    pub path: String,
    /// The minor version: HTTP/1.0 or HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Body,
    /// The framing was ambiguous enough (Transfer-Encoding with Content-Length)
    /// that the connection must close after the response.
    pub must_close: bool,
}

impl Request {
    /// The values of every header field named `name` (case-insensitive).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name`, if it is text.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.all(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// True when `token` is one of the comma-separated Connection options.
    fn connection_has(&self, token: &str) -> bool {
        self.all("connection").any(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }

    /// Whether the client lets the connection stay open after this request
    /// (HTTP/1.1: unless `close`; HTTP/1.0: only with `keep-alive`).
    pub fn keep_alive(&self) -> bool {
        if self.must_close || self.connection_has("close") {
            return false;
        }
        self.minor >= 1 || self.connection_has("keep-alive")
    }

    /// True when an HTTP/1.1 client waits for `100 Continue` before sending its body.
    pub fn expects_continue(&self) -> bool {
        self.minor >= 1
            && self.body != Body::None
            && self
                .header("expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }

    /// The request line as the access log shows it.
    pub fn line(&self) -> String {
        format!("{} {} HTTP/1.{}", self.method, self.target, self.minor)
    }
}

/// A request that cannot be served: answered with `status` and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub detail: String,
    /// The request line, as far as it could be read, for the access log.
    pub line: String,
}

impl HttpError {
    fn new(status: u16, detail: impl Into<String>) -> HttpError {
        HttpError {
            status,
            detail: detail.into(),
            line: String::new(),
        }
    }
}

/// Why no (further) request could be read.
#[derive(Debug)]
pub enum Failure {
    /// The client closed the connection, or went quiet between requests.
    Closed,
    /// The client stopped in the middle of a request for the idle timeout.
    TimedOut,
    /// A malformed or refused request.
    Http(HttpError),
    /// The socket failed.
    Io(io::Error),
}

fn bad(detail: impl Into<String>) -> Failure {
    Failure::Http(HttpError::new(400, detail))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The bytes received and not yet consumed.
#[derive(Default)]
pub struct Input {
    buf: Vec<u8>,
    /// Proxy mode: CONNECT's authority-form target is accepted and bodies have no
    /// size limit (they are streamed on, not discarded).
    proxy: bool,
}

impl Input {
    /// An input for a forward proxy: accepts `CONNECT host:port` and bodies of any
    /// length (the caller streams them with [`Input::copy_body`]).
    pub fn for_proxy() -> Input {
        Input {
            buf: Vec::new(),
            proxy: true,
        }
    }

    /// The bytes received and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` buffered bytes (at most all of them).
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }

    /// Streams a body framed as `body` to `sink`, a piece at a time (memory stays
    /// bounded by the read size); a chunked body is decoded and its trailer
    /// fields dropped. Returns the body bytes passed on. An error from `sink` ends
    /// the copy as `Failure::Io` with that error.
    pub fn copy_body(
        &mut self,
        src: &mut impl Source,
        body: Body,
        idle: Option<Duration>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u64, Failure> {
        match body {
            Body::None => Ok(0),
            Body::Length(n) => self.copy_exact(src, n, idle, sink).map(|()| n),
            Body::Chunked => self.copy_chunked(src, idle, u64::MAX, sink),
        }
    }

    fn copy_exact(
        &mut self,
        src: &mut impl Source,
        mut n: u64,
        idle: Option<Duration>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), Failure> {
        loop {
            let take = (self.buf.len() as u64).min(n) as usize;
            if take > 0 {
                sink(&self.buf[..take]).map_err(Failure::Io)?;
                self.buf.drain(..take);
                n -= take as u64;
            }
            if n == 0 {
                return Ok(());
            }
            if self.fill(src, idle)? == 0 {
                return Err(Failure::Closed);
            }
        }
    }

    /// True when no byte of a next request is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads more bytes into the buffer, waiting at most `timeout`; 0 at end of file.
    pub fn fill(
        &mut self,
        src: &mut impl Source,
        timeout: Option<Duration>,
    ) -> Result<usize, Failure> {
        src.set_timeout(timeout).map_err(Failure::Io)?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match src.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(Failure::TimedOut),
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Reads the next request head. The wait for its first byte may last `idle`;
    /// once it has begun, the whole head must arrive within `idle` of that byte
    /// (so a client trickling bytes cannot hold the worker for ever).
    pub fn read_head(
        &mut self,
        src: &mut impl Source,
        idle: Option<Duration>,
    ) -> Result<Request, Failure> {
        let mut started: Option<Instant> = None;
        loop {
            // RFC 9112 2.2: ignore empty lines received before a request line.
            let blank = self
                .buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.buf.drain(..blank);
            if !self.buf.is_empty() {
                started.get_or_insert_with(Instant::now);
                if let Some(req) = self.parse_head()? {
                    return Ok(req);
                }
            }
            let timeout = match (idle, started) {
                (None, _) => None,
                (Some(t), None) => Some(t),
                (Some(t), Some(s)) => match t.checked_sub(s.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(Failure::TimedOut),
                },
            };
            match self.fill(src, timeout) {
                Ok(0) if started.is_none() => return Err(Failure::Closed),
                Ok(0) => {
                    return Err(bad(
                        "the connection closed in the middle of the request head",
                    ));
                }
                Ok(_) => {}
                Err(Failure::TimedOut) if started.is_none() => return Err(Failure::Closed),
                Err(e) => return Err(e),
            }
        }
    }

    /// Parses a complete head off the front of the buffer; None if more is needed.
    fn parse_head(&mut self) -> Result<Option<Request>, Failure> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let status = parsed.parse(&self.buf);
        let line = first_line(&self.buf);
        let with_line = |mut e: HttpError| {
            e.line = line.clone();
            Failure::Http(e)
        };
        let n = match status {
            Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
            Ok(httparse::Status::Complete(_)) => {
                return Err(with_line(HttpError::new(
                    431,
                    "The request header section is larger than 8 KiB.",
                )));
            }
            Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                return Err(with_line(HttpError::new(
                    431,
                    "The request header section is larger than 8 KiB.",
                )));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(with_line(HttpError::new(
                    431,
                    format!("More than {MAX_HEADERS} header fields."),
                )));
            }
            // httparse refuses a version as soon as its first bytes are wrong; judge
            // it on the whole request line, so the answer does not depend on how
            // the client's bytes were cut into segments.
            Err(httparse::Error::Version)
                if !self.buf.contains(&b'\n') && self.buf.len() <= MAX_HEAD =>
            {
                return Ok(None);
            }
            Err(httparse::Error::Version) => return Err(with_line(version_error(&line))),
            Err(e) => {
                return Err(with_line(HttpError::new(
                    400,
                    format!("Malformed request: {e}."),
                )));
            }
        };
        let method = parsed.method.unwrap_or_default().to_string();
        let target = parsed.path.unwrap_or_default().to_string();
        let minor = parsed.version.unwrap_or(1);
        let headers: Vec<(String, Vec<u8>)> = parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect();
        self.buf.drain(..n);
        let mut req = Request {
            method,
            path: String::new(),
            target,
            minor,
            headers,
            body: Body::None,
            must_close: false,
        };
        check(&mut req, self.proxy).map_err(|mut e| {
            e.line = req.line();
            Failure::Http(e)
        })?;
        Ok(Some(req))
    }

    /// Reads and discards the body of `req`.
    pub fn discard_body(
        &mut self,
        src: &mut impl Source,
        body: Body,
        idle: Option<Duration>,
    ) -> Result<(), Failure> {
        match body {
            Body::None => Ok(()),
            Body::Length(n) => self.skip(src, n, idle),
            Body::Chunked => self.skip_chunked(src, idle),
        }
    }

    fn skip(
        &mut self,
        src: &mut impl Source,
        n: u64,
        idle: Option<Duration>,
    ) -> Result<(), Failure> {
        self.copy_exact(src, n, idle, &mut |_| Ok(()))
    }

    /// Takes one line (up to LF) off the buffer, without its CRLF.
    fn line(
        &mut self,
        src: &mut impl Source,
        limit: usize,
        idle: Option<Duration>,
    ) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > limit {
                return Err(bad("A line of the chunked body is too long."));
            }
            if self.fill(src, idle)? == 0 {
                return Err(Failure::Closed);
            }
        }
    }

    fn skip_chunked(
        &mut self,
        src: &mut impl Source,
        idle: Option<Duration>,
    ) -> Result<(), Failure> {
        self.copy_chunked(src, idle, MAX_BODY, &mut |_| Ok(()))
            .map(drop)
    }

    /// Decodes a chunked body into `sink` (at most `limit` bytes, else 413) and
    /// drops its trailer fields (at most 8 KiB, else 431).
    fn copy_chunked(
        &mut self,
        src: &mut impl Source,
        idle: Option<Duration>,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u64, Failure> {
        let mut total: u64 = 0;
        loop {
            let line = self.line(src, MAX_CHUNK_LINE, idle)?;
            let size = chunk_size(&line)
                .ok_or_else(|| bad("Malformed chunk size in the chunked body."))?;
            total = total.saturating_add(size);
            if total > limit {
                return Err(Failure::Http(HttpError::new(
                    413,
                    "The request body is larger than 1 MiB.",
                )));
            }
            if size == 0 {
                break;
            }
            self.copy_exact(src, size, idle, sink)?;
            if !self.line(src, MAX_CHUNK_LINE, idle)?.is_empty() {
                return Err(bad("A chunk of the chunked body is longer than its size."));
            }
        }
        // Trailer fields, up to the empty line.
        let mut trailers = 0;
        loop {
            let line = self.line(src, MAX_HEAD, idle)?;
            if line.is_empty() {
                return Ok(total);
            }
            trailers += line.len() + 2;
            if trailers > MAX_HEAD {
                return Err(Failure::Http(HttpError::new(
                    431,
                    "The trailer section is larger than 8 KiB.",
                )));
            }
        }
    }
}

/// The hex size at the start of a chunk-size line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let hex = text.split(';').next()?.trim_matches([' ', '\t']);
    if hex.is_empty() || hex.len() > 15 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The first line of what was received, for logs (printable ASCII, at most 200 bytes).
fn first_line(buf: &[u8]) -> String {
    let end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    buf[..end.min(200)]
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// A request line httparse refused for its version: 505 when it names an HTTP
/// version this server does not speak (HTTP/2 preface, HTTP/3, HTTP/1.2), else 400.
fn version_error(line: &str) -> HttpError {
    let version = line.rsplit(' ').next().unwrap_or("");
    let named = version
        .strip_prefix("HTTP/")
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if named && line.split(' ').count() == 3 {
        HttpError::new(
            505,
            format!("{version} is not supported; this server speaks HTTP/1.1 and HTTP/1.0."),
        )
    } else {
        HttpError::new(400, "Malformed request line.")
    }
}

/// Checks a parsed head against RFC 9112 and fills in its path and body framing.
fn check(req: &mut Request, proxy: bool) -> Result<(), HttpError> {
    // The asterisk-form (`OPTIONS * HTTP/1.1`) names the server itself; a proxy
    // also takes CONNECT's authority-form (`host:port`), kept whole as the path.
    let asterisk = req.target == "*" && req.method == "OPTIONS";
    let authority = proxy && req.method == "CONNECT" && !req.target.contains('/');
    req.path = (if authority {
        Some(req.target.as_str())
    } else if asterisk {
        Some("*")
    } else {
        target_path(&req.target)
    })
    .ok_or_else(|| {
        HttpError::new(
            400,
            "The request target must be an absolute path or an absolute URI.",
        )
    })?
    .to_string();
    let hosts = req.all("host").count();
    if req.minor >= 1 && hosts == 0 {
        return Err(HttpError::new(
            400,
            "An HTTP/1.1 request must have a Host header.",
        ));
    }
    if hosts > 1 {
        return Err(HttpError::new(400, "More than one Host header."));
    }
    let te: Vec<String> = req
        .all("transfer-encoding")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let lengths: Vec<Vec<u8>> = req.all("content-length").map(<[u8]>::to_vec).collect();
    if !te.is_empty() {
        if req.minor == 0 {
            return Err(HttpError::new(
                400,
                "Transfer-Encoding in an HTTP/1.0 request.",
            ));
        }
        let last = te
            .join(",")
            .rsplit(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if last != "chunked" {
            return Err(HttpError::new(
                400,
                "The final transfer coding of a request must be chunked.",
            ));
        }
        req.body = Body::Chunked;
        // RFC 9112 6.3: with both Transfer-Encoding and Content-Length, close after.
        req.must_close = !lengths.is_empty();
        return Ok(());
    }
    if let Some(first) = lengths.first() {
        let mut values = lengths
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|v| v.trim_ascii());
        let value = values.next().unwrap_or(first.as_slice());
        if values.any(|v| v != value) {
            return Err(HttpError::new(400, "Conflicting Content-Length values."));
        }
        if value.is_empty() || value.len() > 19 || !value.iter().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::new(400, "Content-Length is not a number."));
        }
        let n: u64 = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if n > MAX_BODY && !proxy {
            return Err(HttpError::new(
                413,
                "The request body is larger than 1 MiB.",
            ));
        }
        req.body = if n == 0 { Body::None } else { Body::Length(n) };
    }
    Ok(())
}

/// The path part of an origin-form (`/a?b`) or absolute-form (`http://h/a?b`) target.
fn target_path(target: &str) -> Option<&str> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let after = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return None;
        };
        match after.find(['/', '?']) {
            Some(i) if after.as_bytes()[i] == b'/' => &after[i..],
            _ => "/",
        }
    };
    Some(rest.split(['?', '#']).next().unwrap_or("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    struct Fake(Cursor<Vec<u8>>);
    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Source for Fake {
        fn set_timeout(&mut self, _t: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    fn fake(s: &[u8]) -> Fake {
        Fake(Cursor::new(s.to_vec()))
    }

    fn status_of(raw: &[u8]) -> u16 {
        match Input::default().read_head(&mut fake(raw), None) {
            Ok(_) => 200,
            Err(Failure::Http(e)) => e.status,
            Err(e) => panic!("{e:?}"),
        }
    }

    /// Delivers its bytes `step` at a time, as a client's segments arrive.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }
    impl Source for Trickle {
        fn set_timeout(&mut self, _t: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    /// Found by the `http_request` fuzz target: a bad version was judged on the
    /// part of the request line received so far (`HTTP/0` of `HTTP/0x`: 505 in
    /// pieces, 400 whole).
    #[test]
    fn a_version_is_judged_on_the_whole_request_line() {
        for raw in [
            &b"GET / HTTP/0x\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/0.1\r\n\r\n",
        ] {
            let whole = status_of(raw);
            for step in 1..raw.len() {
                let got = match Input::default().read_head(&mut Trickle(raw.to_vec(), step), None) {
                    Ok(_) => 200,
                    Err(Failure::Http(e)) => e.status,
                    Err(e) => panic!("{e:?}"),
                };
                assert_eq!(got, whole, "{raw:?} read {step} bytes at a time");
            }
        }
        assert_eq!(status_of(b"GET / HTTP/0x\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET / HTTP/0.1\r\n\r\n"), 505);
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut src = fake(b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?q HTTP/1.0\r\n\r\n");
        let mut input = Input::default();
        let a = input.read_head(&mut src, None).unwrap();
        let b = input.read_head(&mut src, None).unwrap();
        assert_eq!((a.path.as_str(), a.keep_alive()), ("/a", true));
        assert_eq!((b.path.as_str(), b.keep_alive(), b.minor), ("/b", false, 0));
        assert!(matches!(
            input.read_head(&mut src, None),
            Err(Failure::Closed)
        ));
    }

    #[test]
    fn refuses_what_rfc_9112_refuses() {
        assert_eq!(status_of(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            status_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400
        );
        assert_eq!(status_of(b"GET /\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET nopath HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status_of(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / HTTP/3\r\n\r\n"), 505);
        assert_eq!(
            status_of(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n"),
            413
        );
        assert_eq!(
            status_of(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n"),
            400
        );
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&big), 431);
        assert_eq!(
            status_of(b"GET http://h:1/x?y HTTP/1.1\r\nHost: h\r\n\r\n"),
            200
        );
    }

    #[test]
    fn chunked_bodies_are_read_and_discarded() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut src = fake(raw);
        let mut input = Input::default();
        let req = input.read_head(&mut src, None).unwrap();
        assert_eq!(req.body, Body::Chunked);
        input.discard_body(&mut src, req.body, None).unwrap();
        assert_eq!(input.read_head(&mut src, None).unwrap().path, "/next");
    }

    #[test]
    fn target_paths() {
        assert_eq!(target_path("/echo/a%20b?x=1"), Some("/echo/a%20b"));
        assert_eq!(target_path("HTTP://host"), Some("/"));
        assert_eq!(target_path("http://host/p/q"), Some("/p/q"));
        assert_eq!(target_path("*"), None);
    }
}
