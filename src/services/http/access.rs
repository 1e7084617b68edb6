//! The access log: one line per request in the Common Log Format
//! (`host ident authuser [date] "request line" status bytes`), at info level.
//! Unix-socket clients show as host `unix` with their uid in the ident field.

use crate::peer::Peer;

/// Logs one request. `line` is the request line (empty when none could be read),
/// `bytes` the body bytes sent.
pub fn log_request(service: &str, peer: &Peer, line: &str, status: u16, bytes: usize) {
    log::info!(
        "{service}: {}",
        format_line(
            peer,
            line,
            status,
            bytes,
            &crate::clf_date(crate::unix_now())
        )
    );
}

fn format_line(peer: &Peer, line: &str, status: u16, bytes: usize, date: &str) -> String {
    let (host, ident) = match peer {
        Peer::Ip(a) => (a.ip().to_string(), "-".to_string()),
        Peer::Unix { uid, .. } => (
            "unix".to_string(),
            uid.map_or("-".to_string(), |u| u.to_string()),
        ),
    };
    let request = if line.is_empty() {
        "-".to_string()
    } else {
        quote(line)
    };
    let size = if bytes == 0 {
        "-".to_string()
    } else {
        bytes.to_string()
    };
    format!("{host} {ident} - [{date}] \"{request}\" {status} {size}")
}

/// The request line with quotes, backslashes and control bytes escaped.
fn quote(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_log_format() {
        let peer = Peer::Ip("127.0.0.1:5000".parse().unwrap());
        // Sun, 06 Nov 1994 08:49:37 GMT
        let date = crate::clf_date(784111777);
        assert_eq!(
            format_line(&peer, "GET /a\"b HTTP/1.1", 200, 12, &date),
            "127.0.0.1 - - [06/Nov/1994:08:49:37 +0000] \"GET /a\\\"b HTTP/1.1\" 200 12"
        );
        let unix = Peer::Unix {
            uid: Some(1000),
            gid: None,
            pid: None,
            addr: None,
        };
        assert_eq!(
            format_line(&unix, "", 400, 0, "D"),
            "unix 1000 - [D] \"-\" 400 -"
        );
    }
}
