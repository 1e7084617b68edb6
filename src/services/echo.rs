//! Uppercase echo (reference example 4.1): whatever a client sends comes back
//! upper-cased as soon as it arrives (like the reference, which answers every
//! `recv()`: `hola` without a newline gets `HOLA` at once), until the client closes.
//! Valid UTF-8 is upper-cased the Unicode way (`straße` → `STRASSE`); bytes that are
//! not UTF-8 come back unchanged. A character is never split: a UTF-8 sequence cut
//! off at the end of a read waits for its remaining bytes, and goes back as it is if
//! the client closes or goes silent for the idle timeout instead. Upper-casing is per character, so a line client gets
//! the same bytes whether its line arrives whole or in pieces.

use std::io::{self, Read, Write};

use crate::handler::{Connection, StreamHandler};

/// Read buffer: what a read returns goes back at once (cut between characters).
const BUF: usize = 4096;

/// The uppercase echo handler.
pub struct Echo;

/// Upper-cases the valid UTF-8 runs of `input` and copies every other byte as is.
pub fn uppercase_bytes(input: &[u8], out: &mut Vec<u8>) {
    for chunk in input.utf8_chunks() {
        let valid = chunk.valid();
        if valid.is_ascii() {
            out.extend(valid.bytes().map(|b| b.to_ascii_uppercase()));
        } else {
            out.extend_from_slice(valid.to_uppercase().as_bytes());
        }
        out.extend_from_slice(chunk.invalid());
    }
}

/// How much of `b` ends on a character boundary: a UTF-8 sequence cut off at
/// the end waits for the rest.
fn complete_prefix(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue;
        }
        let need = match c {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if need > back { b.len() - back } else { b.len() };
    }
    b.len()
}

impl StreamHandler for Echo {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        // One buffer on the stack and, for ASCII (the usual case), no allocation:
        // a forked worker touches few pages.
        let mut buf = [0u8; BUF];
        let mut out = Vec::new();
        let mut filled = 0;
        loop {
            let n = match conn.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) => {
                    // The client stopped (idle timeout) inside a character: its
                    // bytes go back as they are, like at the end of input.
                    let _ = conn.write_all(&buf[..filled]);
                    return Err(e);
                }
            };
            let eof = n == 0;
            filled += n;
            let ready = if eof {
                filled
            } else {
                complete_prefix(&buf[..filled])
            };
            let region = &mut buf[..ready];
            if region.is_ascii() {
                region.make_ascii_uppercase();
                conn.write_all(region)?;
            } else {
                out.clear();
                uppercase_bytes(region, &mut out);
                conn.write_all(&out)?;
            }
            if eof {
                return Ok(());
            }
            buf.copy_within(ready..filled, 0);
            filled -= ready;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{complete_prefix, uppercase_bytes};

    #[test]
    fn pieces_end_between_characters() {
        let s = "aé€😀".as_bytes();
        assert_eq!(complete_prefix(s), s.len());
        assert_eq!(complete_prefix(&s[..2]), 1);
        assert_eq!(complete_prefix(&s[..5]), 3);
        assert_eq!(complete_prefix(&s[..8]), 6);
        assert_eq!(complete_prefix(b"ab\x80\x80\x80"), 5);
    }

    #[test]
    fn uppercases_unicode_and_keeps_other_bytes() {
        let mut out = Vec::new();
        uppercase_bytes("hello straße ".as_bytes(), &mut out);
        uppercase_bytes(b"\xff\xfe ok\n", &mut out);
        assert_eq!(out, b"HELLO STRASSE \xff\xfe OK\n");
    }
}
