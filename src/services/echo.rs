//! Uppercase echo (reference example 4.1): every line a client sends comes back
//! upper-cased until the client closes. Valid UTF-8 is upper-cased the Unicode way
//! (`straße` → `STRASSE`); bytes that are not UTF-8 come back unchanged.

use std::io::{self, BufRead, BufReader, Read, Write};

use crate::handler::{Connection, StreamHandler};

/// Longest piece handled at once; a longer line is echoed in pieces of this size.
const MAX_PIECE: u64 = 64 * 1024;

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

impl StreamHandler for Echo {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(4096, conn.stream().try_clone()?);
        let mut line = Vec::with_capacity(256);
        let mut out = Vec::with_capacity(256);
        loop {
            line.clear();
            let n = (&mut reader).take(MAX_PIECE).read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(());
            }
            out.clear();
            uppercase_bytes(&line, &mut out);
            conn.write_all(&out)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::uppercase_bytes;

    #[test]
    fn uppercases_unicode_and_keeps_other_bytes() {
        let mut out = Vec::new();
        uppercase_bytes("hello straße ".as_bytes(), &mut out);
        uppercase_bytes(b"\xff\xfe ok\n", &mut out);
        assert_eq!(out, b"HELLO STRASSE \xff\xfe OK\n");
    }
}
