//! The file service's wire format, shared by the server and `files-get`: parsing and
//! writing requests, reply headers and error lines (the format itself is described in
//! the module docs of [`super`]).

use std::fmt::Write as _;

/// Bytes every reply datagram keeps for its header line; the rest carries payload.
/// `DATA <index> <total> <size> <crc32> <chunk>\n` is at most 63 bytes.
pub const HEADER_MAX: usize = 64;
/// Smallest `--max-datagram`: a LIST page must hold one line for a 255-byte name.
pub const MIN_DATAGRAM: usize = 512;
/// Largest `--max-datagram`: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65507;
/// Longest file name the protocol carries (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Most ranges one request may list.
pub const MAX_RANGES: usize = 256;

/// An inclusive range of chunk (or LIST page) numbers, counted from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// One request, as parsed from a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `LIST` (every page) or `LIST RANGES` (those pages again).
    List(Option<Vec<Range>>),
    /// `STAT NAME`.
    Stat(&'a [u8]),
    /// `GET NAME` (every chunk) or `GET NAME RANGES` (those chunks again).
    Get(&'a [u8], Option<Vec<Range>>),
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
}

impl Failure {
    pub fn text(self) -> &'static str {
        match self {
            Failure::NotFound => "not found",
            Failure::NotRegular => "not a regular file",
            Failure::BadRequest => "bad request",
            Failure::TooLarge => "too large",
            Failure::Server => "server error",
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

/// Parses one request datagram. A trailing `\n` or `\r\n` is allowed (so
/// `echo LIST | socat - udp:…` works); fields are separated by single spaces.
pub fn parse_request(datagram: &[u8]) -> Option<Request<'_>> {
    let line = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|&b| b == b' ');
    let verb = fields.next()?;
    let args: Vec<&[u8]> = fields.collect();
    match (verb, args.as_slice()) {
        (b"LIST", []) => Some(Request::List(None)),
        (b"LIST", [r]) => Some(Request::List(Some(parse_ranges(r)?))),
        (b"STAT", [name]) if valid_name(name) => Some(Request::Stat(name)),
        (b"GET", [name]) if valid_name(name) => Some(Request::Get(name, None)),
        (b"GET", [name, r]) if valid_name(name) => Some(Request::Get(name, Some(parse_ranges(r)?))),
        _ => None,
    }
}

/// What every chunk of one file says about the whole file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Number of chunks (at least 1: an empty file is one empty chunk).
    pub total: u32,
    /// File size in bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc: u32,
    /// Payload bytes in every chunk but the last.
    pub chunk: u32,
}

impl FileMeta {
    pub fn new(size: u64, crc: u32, chunk: u32) -> FileMeta {
        let total = size.div_ceil(u64::from(chunk)).max(1);
        FileMeta {
            total: u32::try_from(total).unwrap_or(u32::MAX),
            size,
            crc,
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

    /// The header line of chunk `index`.
    pub fn data_header(&self, index: u32) -> String {
        format!(
            "DATA {index} {} {} {:08x} {}\n",
            self.total, self.size, self.crc, self.chunk
        )
    }

    /// The reply to `STAT NAME`.
    pub fn stat_reply(&self, name: &[u8]) -> Vec<u8> {
        let mut out = b"STAT ".to_vec();
        out.extend_from_slice(name);
        out.extend_from_slice(
            format!(
                " {} {} {:08x} {}\n",
                self.total, self.size, self.crc, self.chunk
            )
            .as_bytes(),
        );
        out
    }

    fn parse(fields: &[&[u8]]) -> Option<FileMeta> {
        let [total, size, crc, chunk] = fields else {
            return None;
        };
        let total = parse_u32(total)?;
        let size: u64 = std::str::from_utf8(size).ok()?.parse().ok()?;
        if crc.len() != 8 {
            return None;
        }
        let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
        let chunk = parse_u32(chunk)?;
        if chunk == 0 {
            return None;
        }
        let meta = FileMeta::new(size, crc, chunk);
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
    Data {
        index: u32,
        meta: FileMeta,
        payload: &'a [u8],
    },
    Stat {
        name: &'a [u8],
        meta: FileMeta,
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
        [b"STAT", name, meta @ ..] if rest.is_empty() => Some(Reply::Stat {
            name,
            meta: FileMeta::parse(meta)?,
        }),
        [b"LIST", page, pages] => {
            let (page, pages) = (parse_u32(page)?, parse_u32(pages)?);
            (page < pages).then_some(Reply::List {
                page,
                pages,
                body: rest,
            })
        }
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

    #[test]
    fn parses_requests() {
        assert_eq!(parse_request(b"LIST"), Some(Request::List(None)));
        assert_eq!(parse_request(b"LIST\r\n"), Some(Request::List(None)));
        assert_eq!(
            parse_request(b"STAT a.txt\n"),
            Some(Request::Stat(b"a.txt"))
        );
        assert_eq!(parse_request(b"GET a"), Some(Request::Get(b"a", None)));
        assert_eq!(
            parse_request(b"GET a 3-5,9"),
            Some(Request::Get(
                b"a",
                Some(vec![Range { from: 3, to: 5 }, Range { from: 9, to: 9 }])
            ))
        );
        for bad in [
            &b""[..],
            b"get a",
            b"GET",
            b"GET  a",
            b"GET ../x",
            b"GET a/b",
            b"GET /etc/passwd",
            b"GET ..",
            b"GET .",
            b"GET a\0b",
            b"GET a 5-3",
            b"GET a 1-",
            b"GET a -1",
            b"GET a +1",
            b"GET a 99999999999",
            b"GET a 1 2",
            b"STAT",
            b"LIST x",
        ] {
            assert_eq!(
                parse_request(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = format!("GET a {}", vec!["1"; MAX_RANGES + 1].join(","));
        assert_eq!(parse_request(many.as_bytes()), None);
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
            parse_reply(&meta.stat_reply(b"x")),
            Some(Reply::Stat { name: b"x", meta })
        );
        assert_eq!(
            parse_reply(&Failure::TooLarge.datagram()),
            Some(Reply::Err(Failure::TooLarge))
        );
        let r = [Range { from: 0, to: 4 }, Range { from: 7, to: 7 }];
        assert_eq!(parse_ranges(format_ranges(&r).as_bytes()).unwrap(), r);
    }
}
