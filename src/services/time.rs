//! Time over datagrams (reference example 4.2): every datagram is answered with
//! `Server time: YYYY-MM-DD HH:MM:SS` (local time), whatever it held.

use std::io;

use crate::handler::{DatagramHandler, Reply};

/// The time handler.
pub struct Time;

impl DatagramHandler for Time {
    fn handle(&self, _datagram: &[u8], reply: &Reply<'_>) -> io::Result<()> {
        reply.send(format!("Server time: {}", crate::local_datetime()).as_bytes())
    }
}
