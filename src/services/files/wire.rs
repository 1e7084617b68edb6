//! The file service's wire format, shared by the server and `files-get`: parsing and
//! writing requests, reply headers and error lines (the format itself is described in
//! the module docs of [`super`]).

use std::fmt::Write as _;

/// Bytes every reply datagram keeps for its header line; the rest carries payload.
/// `DATA <index> <total> <size> <version> <chunk>\n` is at most 63 bytes.
pub const HEADER_MAX: usize = 64;
/// Smallest `--max-datagram`: a LIST page must hold one line for a 255-byte name.
pub const MIN_DATAGRAM: usize = 512;
/// Largest `--max-datagram`: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65507;
/// Longest file name the protocol carries (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Most ranges one request may list.
pub const MAX_RANGES: usize = 256;
/// Length of a cookie: 32 lowercase hex digits (128 bits of HMAC-SHA256).
pub const COOKIE_LEN: usize = 32;
/// Largest pacing gap a GET may ask for, in microseconds.
pub const MAX_GAP_US: u32 = 1_000_000;
/// Before its sender is validated, a request's replies may total at most this many
/// times its own size (QUIC's anti-amplification limit, RFC 9000 §8.1).
pub const AMPLIFICATION: usize = 3;
/// The smallest HELLO whose COOKIE reply fits [`AMPLIFICATION`] times its size.
pub const MIN_HELLO: usize = (COOKIE_REPLY_LEN).div_ceil(AMPLIFICATION);
/// `COOKIE <32 hex>\n`.
const COOKIE_REPLY_LEN: usize = 7 + COOKIE_LEN + 1;

/// An inclusive range of chunk (or LIST page) numbers, counted from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub from: u32,
    pub to: u32,
}

impl Range {
    /// How many numbers the range holds.
    pub fn len(&self) -> u64 {
        u64::from(self.to - self.from) + 1
    }

    /// Never empty (from <= to); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Sorts ranges and merges the ones that overlap or touch, so every number is
/// selected once however often a request repeats it.
pub fn merge_ranges(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u64::from(r.from) <= u64::from(last.to) + 1 => {
                last.to = last.to.max(r.to)
            }
            _ => out.push(r),
        }
    }
    out
}

/// The first `cap` numbers that merged `ranges` select, as ranges.
pub fn take_first(ranges: &[Range], cap: u64) -> Vec<Range> {
    let mut left = cap;
    let mut out = Vec::new();
    for r in ranges {
        if left == 0 {
            break;
        }
        let n = r.len().min(left);
        out.push(Range {
            from: r.from,
            to: r.from + (n - 1) as u32,
        });
        left -= n;
    }
    out
}

/// A cookie: the proof, echoed by the client, that it receives at its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie(pub [u8; COOKIE_LEN]);

impl Cookie {
    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &[u8]) -> Option<Cookie> {
        let ok = s.len() == COOKIE_LEN && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Cookie(s.try_into().unwrap()))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The reply to HELLO: `COOKIE <cookie>\n`.
    pub fn reply(&self) -> Vec<u8> {
        format!("COOKIE {}\n", self.as_str()).into_bytes()
    }
}

/// One request, as parsed from a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `HELLO [PADDING]`: asks for a cookie.
    Hello,
    /// `LIST COOKIE` (the first pages) or `LIST COOKIE RANGES` (those pages).
    List(Cookie, Option<Vec<Range>>),
    /// `STAT COOKIE NAME`.
    Stat(Cookie, &'a [u8]),
    /// `GET COOKIE NAME RANGES [GAP]`: those chunks (merged), GAP µs apart.
    Get(Get<'a>),
}

/// A parsed GET.
#[derive(Debug, PartialEq, Eq)]
pub struct Get<'a> {
    pub cookie: Cookie,
    pub name: &'a [u8],
    /// Merged: sorted, no overlaps, nothing selected twice.
    pub ranges: Vec<Range>,
    /// Microseconds between two chunks of the reply (0: back to back).
    pub gap_us: u32,
}

impl Request<'_> {
    /// The cookie the request carries (None for HELLO).
    pub fn cookie(&self) -> Option<&Cookie> {
        match self {
            Request::Hello => None,
            Request::List(c, _) | Request::Stat(c, _) => Some(c),
            Request::Get(g) => Some(&g.cookie),
        }
    }
}

/// The error replies, one datagram each: `ERR <text>\n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    NotFound,
    NotRegular,
    BadRequest,
    TooLarge,
    /// The server could not read a file it found (an I/O error); logged there.
    Server,
    /// The cookie is not valid for the sender (forged, for another address, or
    /// expired): ask for a new one with HELLO.
    BadCookie,
}

impl Failure {
    pub fn text(self) -> &'static str {
        match self {
            Failure::NotFound => "not found",
            Failure::NotRegular => "not a regular file",
            Failure::BadRequest => "bad request",
            Failure::TooLarge => "too large",
            Failure::Server => "server error",
            Failure::BadCookie => "bad cookie",
        }
    }

    /// The whole reply datagram.
    pub fn datagram(self) -> Vec<u8> {
        format!("ERR {}\n", self.text()).into_bytes()
    }

    fn from_text(s: &str) -> Option<Failure> {
        [
            Failure::NotFound,
            Failure::NotRegular,
            Failure::BadRequest,
            Failure::TooLarge,
            Failure::Server,
            Failure::BadCookie,
        ]
        .into_iter()
        .find(|f| f.text() == s)
    }
}

/// True for a name the service will look up: one path component of 1 to 255 bytes,
/// not `.` or `..`, without `/`, NUL, spaces or other control characters (the
/// protocol separates fields with spaces and lines with newlines).
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && name != b".."
        && name.iter().all(|&b| b > b' ' && b != b'/' && b != 0x7f)
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn parse_hex32(s: &[u8]) -> Option<u32> {
    if s.len() != 8 {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// Parses `A-B,C,D-E` (inclusive, A <= B); None when malformed or too many ranges.
pub fn parse_ranges(s: &[u8]) -> Option<Vec<Range>> {
    let mut out = Vec::new();
    for part in s.split(|&b| b == b',') {
        if out.len() == MAX_RANGES {
            return None;
        }
        let r = match part.iter().position(|&b| b == b'-') {
            Some(i) => Range {
                from: parse_u32(&part[..i])?,
                to: parse_u32(&part[i + 1..])?,
            },
            None => {
                let n = parse_u32(part)?;
                Range { from: n, to: n }
            }
        };
        if r.from > r.to {
            return None;
        }
        out.push(r);
    }
    Some(out)
}

/// Writes ranges as `A-B,C,…`.
pub fn format_ranges(ranges: &[Range]) -> String {
    let mut s = String::new();
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        if r.from == r.to {
            let _ = write!(s, "{}", r.from);
        } else {
            let _ = write!(s, "{}-{}", r.from, r.to);
        }
    }
    s
}

/// True for `HELLO`, alone or followed by a space (or line end) and any padding.
fn is_hello(datagram: &[u8]) -> bool {
    datagram.starts_with(b"HELLO")
        && datagram
            .get(5)
            .is_none_or(|b| matches!(b, b' ' | b'\n' | b'\r'))
}

/// Parses one request datagram. A trailing `\n` or `\r\n` is allowed (so
/// `socat` users can type requests); fields are separated by single spaces.
pub fn parse_request(datagram: &[u8]) -> Option<Request<'_>> {
    if is_hello(datagram) {
        return Some(Request::Hello);
    }
    let line = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|&b| b == b' ');
    let verb = fields.next()?;
    let cookie = Cookie::parse(fields.next()?)?;
    let args: Vec<&[u8]> = fields.collect();
    let ranges = |r: &[u8]| parse_ranges(r).map(merge_ranges);
    match (verb, args.as_slice()) {
        (b"LIST", []) => Some(Request::List(cookie, None)),
        (b"LIST", [r]) => Some(Request::List(cookie, Some(ranges(r)?))),
        (b"STAT", [name]) if valid_name(name) => Some(Request::Stat(cookie, name)),
        (b"GET", [name, r, gap @ ..]) if valid_name(name) && gap.len() <= 1 => {
            let gap_us = match gap {
                [g] => parse_u32(g).filter(|&g| g <= MAX_GAP_US)?,
                _ => 0,
            };
            Some(Request::Get(Get {
                cookie,
                name,
                ranges: ranges(r)?,
                gap_us,
            }))
        }
        _ => None,
    }
}

/// Writes `GET COOKIE NAME RANGES GAP`.
pub fn get_request(cookie: &Cookie, name: &str, ranges: &[Range], gap_us: u32) -> String {
    format!(
        "GET {} {name} {} {gap_us}",
        cookie.as_str(),
        format_ranges(ranges)
    )
}

/// What every chunk of one file says about the whole file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Number of chunks (at least 1: an empty file is one empty chunk).
    pub total: u32,
    /// File size in bytes.
    pub size: u64,
    /// The file's version: a hash of its inode number, size and change times, so a
    /// file replaced or rewritten between two requests is noticed without reading it.
    pub version: u32,
    /// Payload bytes in every chunk but the last.
    pub chunk: u32,
}

impl FileMeta {
    pub fn new(size: u64, version: u32, chunk: u32) -> FileMeta {
        let total = size.div_ceil(u64::from(chunk)).max(1);
        FileMeta {
            total: u32::try_from(total).unwrap_or(u32::MAX),
            size,
            version,
            chunk,
        }
    }

    /// Byte offset of chunk `index`.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk)
    }

    /// Payload length of chunk `index`.
    pub fn len_of(&self, index: u32) -> usize {
        let left = self.size.saturating_sub(self.offset(index));
        left.min(u64::from(self.chunk)) as usize
    }

    fn fields(&self) -> String {
        format!(
            "{} {} {:08x} {}",
            self.total, self.size, self.version, self.chunk
        )
    }

    /// The header line of chunk `index`.
    pub fn data_header(&self, index: u32) -> String {
        format!("DATA {index} {}\n", self.fields())
    }

    /// The reply to `STAT COOKIE NAME`: the file's facts, its CRC-32 and the most
    /// chunks one GET draws.
    pub fn stat_reply(&self, name: &[u8], crc: u32, window: u32) -> Vec<u8> {
        let mut out = b"STAT ".to_vec();
        out.extend_from_slice(name);
        out.extend_from_slice(format!(" {} {crc:08x} {window}\n", self.fields()).as_bytes());
        out
    }

    fn parse(fields: &[&[u8]]) -> Option<FileMeta> {
        let [total, size, version, chunk] = fields else {
            return None;
        };
        let total = parse_u32(total)?;
        let size: u64 = std::str::from_utf8(size).ok()?.parse().ok()?;
        let version = parse_hex32(version)?;
        let chunk = parse_u32(chunk)?;
        if chunk == 0 {
            return None;
        }
        let meta = FileMeta::new(size, version, chunk);
        (meta.total == total).then_some(meta)
    }
}

/// The header line of LIST page `page` of `pages`.
pub fn list_header(page: u32, pages: u32) -> String {
    format!("LIST {page} {pages}\n")
}

/// A reply datagram, as parsed by a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Cookie(Cookie),
    Data {
        index: u32,
        meta: FileMeta,
        payload: &'a [u8],
    },
    Stat {
        name: &'a [u8],
        meta: FileMeta,
        crc: u32,
        window: u32,
    },
    /// One LIST page: lines of `<size> <name>\n`.
    List {
        page: u32,
        pages: u32,
        body: &'a [u8],
    },
    Err(Failure),
}

/// Parses a reply datagram; None when it is not one this protocol sends.
pub fn parse_reply(datagram: &[u8]) -> Option<Reply<'_>> {
    let nl = datagram.iter().position(|&b| b == b'\n')?;
    let (line, rest) = (&datagram[..nl], &datagram[nl + 1..]);
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match fields.as_slice() {
        [b"DATA", index, meta @ ..] => {
            let index = parse_u32(index)?;
            let meta = FileMeta::parse(meta)?;
            if index >= meta.total || rest.len() != meta.len_of(index) {
                return None;
            }
            Some(Reply::Data {
                index,
                meta,
                payload: rest,
            })
        }
        [b"STAT", name, meta @ .., crc, window] if rest.is_empty() => Some(Reply::Stat {
            name,
            meta: FileMeta::parse(meta)?,
            crc: parse_hex32(crc)?,
            window: parse_u32(window).filter(|&w| w > 0)?,
        }),
        [b"LIST", page, pages] => {
            let (page, pages) = (parse_u32(page)?, parse_u32(pages)?);
            (page < pages).then_some(Reply::List {
                page,
                pages,
                body: rest,
            })
        }
        [b"COOKIE", c] if rest.is_empty() => Cookie::parse(c).map(Reply::Cookie),
        [b"ERR", ..] if rest.is_empty() => {
            // `ERR` alone (no text) is no reply of this protocol: no panic on it.
            let text = std::str::from_utf8(line.get(4..)?).ok()?;
            Failure::from_text(text).map(Reply::Err)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `files_reply` fuzz target: a 4-byte `ERR\n` datagram made
    /// `files-get` panic (slice out of range).
    #[test]
    fn a_bare_err_reply_is_not_a_reply() {
        assert_eq!(parse_reply(b"ERR\n"), None);
        assert_eq!(parse_reply(b"ERR \n"), None);
    }

    const C: &str = "0123456789abcdef0123456789abcdef";

    fn req(s: &str) -> Option<Request<'_>> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn parses_requests() {
        let c = Cookie::parse(C.as_bytes()).unwrap();
        assert_eq!(parse_request(b"HELLO"), Some(Request::Hello));
        assert_eq!(parse_request(b"HELLO \0\xff padding"), Some(Request::Hello));
        assert_eq!(req(&format!("LIST {C}")), Some(Request::List(c, None)));
        assert_eq!(req(&format!("LIST {C}\r\n")), Some(Request::List(c, None)));
        assert_eq!(
            req(&format!("STAT {C} a.txt\n")),
            Some(Request::Stat(c, b"a.txt"))
        );
        let text = format!("GET {C} a 9,3-5,4,0-1,2 250");
        let Some(Request::Get(g)) = req(&text) else {
            panic!("GET not parsed");
        };
        assert_eq!((g.name, g.gap_us), (&b"a"[..], 250));
        // Overlapping, touching and repeated ranges are merged.
        assert_eq!(
            g.ranges,
            [Range { from: 0, to: 5 }, Range { from: 9, to: 9 }]
        );
        let text = format!("GET {C} a 7");
        let g0 = req(&text);
        assert!(matches!(g0, Some(Request::Get(Get { gap_us: 0, .. }))));
        for bad in [
            "".to_string(),
            "HELLOX".into(),
            "LIST".into(),
            "GET a 1".into(),
            format!("get {C} a 1"),
            format!("GET {C} a"),
            format!("GET {C}  a 1"),
            format!("GET {} a 1", C.to_uppercase()),
            format!("GET {} a 1", &C[1..]),
            format!("GET {C} ../x 1"),
            format!("GET {C} a/b 1"),
            format!("GET {C} .. 1"),
            format!("GET {C} a\0b 1"),
            format!("GET {C} a 5-3"),
            format!("GET {C} a 1-"),
            format!("GET {C} a -1"),
            format!("GET {C} a 99999999999"),
            format!("GET {C} a 1 2 3"),
            format!("GET {C} a 1 1000001"),
            format!("STAT {C}"),
            format!("LIST {C} x"),
        ] {
            assert_eq!(req(&bad), None, "{bad:?}");
        }
        let many = format!("GET {C} a {}", vec!["1"; MAX_RANGES + 1].join(","));
        assert_eq!(req(&many), None);
    }

    #[test]
    fn take_first_caps_the_selection() {
        let r = [Range { from: 0, to: 2 }, Range { from: 10, to: 19 }];
        assert_eq!(
            take_first(&r, 5),
            [Range { from: 0, to: 2 }, Range { from: 10, to: 11 }]
        );
        assert_eq!(take_first(&r, 100), r);
        assert_eq!(
            merge_ranges(vec![
                Range {
                    from: 0,
                    to: u32::MAX
                };
                3
            ]),
            [Range {
                from: 0,
                to: u32::MAX
            }]
        );
    }

    #[test]
    fn headers_round_trip() {
        let meta = FileMeta::new(2500, 0xdeadbeef, 1136);
        assert_eq!(meta.total, 3);
        assert_eq!(meta.len_of(2), 2500 - 2 * 1136);
        let mut d = meta.data_header(2).into_bytes();
        d.extend(vec![7u8; meta.len_of(2)]);
        match parse_reply(&d) {
            Some(Reply::Data {
                index: 2,
                meta: m,
                payload,
            }) => {
                assert_eq!(m, meta);
                assert_eq!(payload.len(), 228);
            }
            other => panic!("{other:?}"),
        }
        let max = FileMeta::new(u64::MAX, u32::MAX, 65507 - 64);
        assert!(max.data_header(u32::MAX).len() <= HEADER_MAX);
        assert_eq!(FileMeta::new(0, 0, 100).total, 1);
        assert_eq!(
            parse_reply(&meta.stat_reply(b"x", 0x1234, 64)),
            Some(Reply::Stat {
                name: b"x",
                meta,
                crc: 0x1234,
                window: 64
            })
        );
        assert_eq!(
            parse_reply(&Failure::BadCookie.datagram()),
            Some(Reply::Err(Failure::BadCookie))
        );
        let c = Cookie::parse(C.as_bytes()).unwrap();
        assert_eq!(parse_reply(&c.reply()), Some(Reply::Cookie(c)));
        assert!(c.reply().len() <= MIN_HELLO * AMPLIFICATION);
        let r = [Range { from: 0, to: 4 }, Range { from: 7, to: 7 }];
        assert_eq!(parse_ranges(format_ranges(&r).as_bytes()).unwrap(), r);
        let get = get_request(&c, "f", &r, 40);
        assert!(
            matches!(parse_request(get.as_bytes()), Some(Request::Get(g)) if g.ranges == r && g.gap_us == 40)
        );
    }
}
