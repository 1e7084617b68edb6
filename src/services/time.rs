//! Time over datagrams (reference example 4.2): every datagram is answered with
//! `Server time: YYYY-MM-DD HH:MM:SS` (local time), whatever it held; with
//! `--lang es`, the reference's `Hora del servidor: YYYY-MM-DD HH:MM:SS`.

use std::io;

use super::Lang;
use crate::handler::{DatagramHandler, Reply};

/// The time handler.
#[derive(Default)]
pub struct Time {
    lang: Lang,
}

impl Time {
    /// A time handler answering in `lang`.
    pub fn new(lang: Lang) -> Time {
        Time { lang }
    }
}

/// The reply to every datagram.
fn reply_text(lang: Lang, now: &str) -> String {
    lang_text!(lang, "Server time: {now}", "Hora del servidor: {now}")
}

impl DatagramHandler for Time {
    fn handle(&self, _datagram: &[u8], reply: &Reply<'_>) -> io::Result<()> {
        reply.send(reply_text(self.lang, &crate::local_datetime()).as_bytes())
    }
}
