//! HTTP requests as the http service reads them off a connection (heads with
//! httparse and the RFC 9112 checks, bodies by Content-Length or chunked, with
//! pipelining): never a panic; every request accepted has a path that starts with
//! `/` (or is `*`), HTTP/1.0 or 1.1, a body within MAX_BODY; every refusal is a 4xx
//! or 5xx; and the same requests come out however the bytes were cut into reads.
#![no_main]

use std::io::{self, Read};
use std::time::Duration;

use forkserve::services::http::request::{Body, Failure, Input, MAX_BODY, Source};
use libfuzzer_sys::fuzz_target;

/// The client's bytes, delivered `step` at a time.
struct Client<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Source for Client<'_> {
    fn set_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// What a connection's requests came to: each request's line, then how it ended.
fn serve(data: &[u8], step: usize) -> (Vec<String>, String) {
    let mut client = Client { data, step };
    let mut input = Input::default();
    let mut seen = Vec::new();
    loop {
        let req = match input.read_head(&mut client, None) {
            Ok(req) => req,
            Err(f) => return (seen, ending(f)),
        };
        assert!(
            req.path.starts_with('/') || req.path == "*",
            "path {:?}",
            req.path
        );
        assert!(req.minor <= 1, "HTTP/1.{}", req.minor);
        if let Body::Length(n) = req.body {
            assert!(n > 0 && n <= MAX_BODY, "body of {n} bytes accepted");
        }
        if req.must_close {
            assert_eq!(req.body, Body::Chunked);
        }
        seen.push(req.line());
        assert!(seen.len() <= data.len(), "more requests than bytes");
        if let Err(f) = input.discard_body(&mut client, req.body, None) {
            return (seen, ending(f));
        }
    }
}

fn ending(f: Failure) -> String {
    match f {
        Failure::Http(e) => {
            assert!(
                (400..=599).contains(&e.status),
                "refused with status {}",
                e.status
            );
            format!("{} {}", e.status, e.detail)
        }
        Failure::Closed => "closed".to_string(),
        Failure::TimedOut => panic!("timed out without a timeout"),
        Failure::Io(e) => panic!("I/O error from a byte slice: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = serve(stream, usize::MAX);
    let pieces = serve(stream, usize::from(step) + 1);
    assert_eq!(
        whole, pieces,
        "the requests depend on how the bytes were read"
    );
});
