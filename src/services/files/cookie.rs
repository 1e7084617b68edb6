//! Stateless address-validation cookies for the file service, as QUIC's Retry tokens
//! and DTLS's HelloVerifyRequest cookies work: the cookie is a keyed MAC over the
//! client's address (IP and port, or Unix socket path) and a coarse time slot, so
//! the server keeps no state per client, yet a client can only echo a cookie that was
//! sent to the address it claims. A spoofed source never sees its cookie.
//!
//! The MAC is HMAC-SHA256 (RFC 2104, the `hmac` and `sha2` crates), truncated to 128
//! bits and written as 32 hex digits. Its key is 32 random bytes drawn with
//! `getrandom` when the service is built, in the master before it forks, so every
//! forked worker and server process checks cookies with the same key and a restart
//! invalidates all of them (clients ask again). A cookie minted in time slot `t`
//! (of [`SLOT_SECS`]) is accepted in slots `t` and `t + 1`: it lives 60 to 120 s.

use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::wire::{COOKIE_LEN, Cookie};
use crate::peer::Peer;

/// Length of one time slot in seconds.
pub const SLOT_SECS: i64 = 60;

/// The server's cookie key (random per start).
pub struct CookieKey([u8; 32]);

impl CookieKey {
    /// A fresh random key.
    pub fn random() -> std::io::Result<CookieKey> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| std::io::Error::other(format!("cookie key from getrandom: {e}")))?;
        Ok(CookieKey(key))
    }

    /// The cookie for `peer` at Unix time `now` (seconds); None for a peer without
    /// an address (an unbound Unix-datagram sender, who cannot be answered anyway).
    pub fn make(&self, peer: &Peer, now: i64) -> Option<Cookie> {
        Some(self.mac(&address(peer)?, now.div_euclid(SLOT_SECS)))
    }

    /// True when `cookie` was made for `peer` in this time slot or the one before.
    pub fn check(&self, peer: &Peer, cookie: &Cookie, now: i64) -> bool {
        let Some(addr) = address(peer) else {
            return false;
        };
        let slot = now.div_euclid(SLOT_SECS);
        // Both slots are always computed, so the time taken says nothing about which
        // (if either) matched.
        let a = equal(&self.mac(&addr, slot).0, &cookie.0);
        let b = equal(&self.mac(&addr, slot - 1).0, &cookie.0);
        a | b
    }

    fn mac(&self, addr: &[u8], slot: i64) -> Cookie {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(&slot.to_be_bytes());
        mac.update(addr);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; COOKIE_LEN];
        for (pair, byte) in out.chunks_mut(2).zip(tag.iter()) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 15)];
        }
        Cookie(out)
    }
}

/// The bytes the MAC covers for a peer: family, address and port, or the Unix path.
fn address(peer: &Peer) -> Option<Vec<u8>> {
    match peer {
        Peer::Ip(SocketAddr::V4(a)) => {
            let mut v = b"4".to_vec();
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_be_bytes());
            Some(v)
        }
        Peer::Ip(SocketAddr::V6(a)) => {
            let mut v = b"6".to_vec();
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_be_bytes());
            Some(v)
        }
        Peer::Unix { addr: Some(a), .. } => Some([b"u", a.as_bytes()].concat()),
        Peer::Unix { addr: None, .. } => None,
    }
}

/// Compares without stopping at the first difference.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Peer {
        Peer::Ip(s.parse().unwrap())
    }

    #[test]
    fn a_cookie_holds_for_its_address_and_two_slots_only() {
        let key = CookieKey::random().unwrap();
        let me = ip("192.0.2.1:5000");
        let t = 1_000_020;
        let c = key.make(&me, t).unwrap();
        assert!(key.check(&me, &c, t));
        assert!(key.check(&me, &c, t + SLOT_SECS));
        assert!(!key.check(&me, &c, t + 2 * SLOT_SECS));
        assert!(!key.check(&me, &c, t - SLOT_SECS));
        assert!(!key.check(&ip("192.0.2.1:5001"), &c, t));
        assert!(!key.check(&ip("192.0.2.2:5000"), &c, t));
        assert!(!key.check(&ip("[2001:db8::1]:5000"), &c, t));
        let other = CookieKey::random().unwrap();
        assert!(!other.check(&me, &c, t));
        let unix = Peer::Unix {
            uid: Some(1),
            gid: None,
            pid: None,
            addr: Some("/tmp/c.sock".into()),
        };
        let cu = key.make(&unix, t).unwrap();
        assert!(key.check(&unix, &cu, t));
        assert!(!key.check(&me, &cu, t));
        let unbound = Peer::Unix {
            uid: Some(1),
            gid: None,
            pid: None,
            addr: None,
        };
        assert!(key.make(&unbound, t).is_none());
        assert!(!key.check(&unbound, &cu, t));
    }
}
