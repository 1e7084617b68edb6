//! Listen addresses (`--listen`, `SERVICE=ADDR`): parsing never panics, and what
//! parses prints back to text that parses to the same address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use forkserve::ListenAddr;
use libfuzzer_sys::fuzz_target;

/// A resolver without the network: plain host names map to 127.0.0.1, anything
/// else fails as an unknown host would.
fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    assert!(
        !host.is_empty(),
        "the parser passed an empty host to the resolver"
    );
    let plain = host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if plain {
        Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)])
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "unknown host",
        ))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(addr) = ListenAddr::parse_with(text, &resolve) else {
        return;
    };
    if let Some(path) = addr.socket_file() {
        assert!(
            path.as_os_str().len() <= 107,
            "socket path over sun_path: {path:?}"
        );
    }
    let shown = addr.to_string();
    let again = ListenAddr::parse_with(&shown, &resolve)
        .unwrap_or_else(|e| panic!("{text:?} parsed, but its text {shown:?} does not: {e}"));
    assert_eq!(
        addr, again,
        "{text:?} → {shown:?} changed on the round trip"
    );
});
