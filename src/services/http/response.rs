//! HTTP responses: status, headers and body, written whole in one buffer; the small
//! HTML error pages; HTML escaping.

use std::fmt::Write as _;

/// The server's name and version, for the `Server` header and the pages.
pub const SERVER: &str = concat!("forkserve/", env!("CARGO_PKG_VERSION"));

pub const HTML: &str = "text/html; charset=utf-8";
pub const JSON: &str = "application/json; charset=utf-8";

/// A response about to be sent.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers beyond Date, Server, Content-Length, Content-Type and Connection.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn html(body: impl Into<String>) -> Response {
        Response::new(200, HTML, body.into())
    }

    pub fn json(value: &serde_json::Value) -> Response {
        let mut body = value.to_string();
        body.push('\n');
        Response::new(200, JSON, body)
    }

    /// A small HTML page for an error status, with `detail` (escaped) as its text.
    pub fn error(status: u16, detail: &str) -> Response {
        let title = format!("{status} {}", reason(status));
        let body = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
             <body><h1>{title}</h1>\n<p>{}</p>\n<hr><address>{SERVER}</address></body></html>\n",
            escape_html(detail)
        );
        // An error page describes one request: no cache may keep it.
        Response::new(status, HTML, body).header("Cache-Control", "no-store")
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of header `name` among the extra headers (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The bytes on the wire: status line, headers, and the body unless `head_only`.
    /// `keep_alive` chooses the Connection header. A 304 has neither body nor
    /// Content-Type/Content-Length (RFC 9110 §15.4.5: its headers describe the
    /// representation the client already has).
    pub fn to_bytes(&self, date: &str, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nDate: {date}\r\nServer: {SERVER}\r\n",
            self.status,
            reason(self.status),
        );
        // A 304 has no body and no type or length of its own (RFC 9110 15.4.5).
        if self.status != 304 {
            let _ = write!(
                head,
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                self.body.len()
            );
        }
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The reason phrase of the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn head_keeps_length_and_drops_body() {
        let r = Response::html("hello");
        let full = String::from_utf8(r.to_bytes("D", true, false)).unwrap();
        let head = String::from_utf8(r.to_bytes("D", true, true)).unwrap();
        assert!(full.ends_with("\r\n\r\nhello"));
        assert!(head.contains("Content-Length: 5\r\n") && head.ends_with("\r\n\r\n"));
    }
}
