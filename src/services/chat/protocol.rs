//! The IPC messages between chat workers and the broker: length-prefixed,
//! versioned frames over a Unix stream socket (see the module docs of `chat` for
//! the table of messages).
//!
//! A frame is `u32 length` (big-endian, counting what follows), `u8 version`,
//! `u8 type`, then the fields of that type in order: a string is `u16 length` +
//! UTF-8 bytes, a flag is one byte (0 or 1).

use std::io;

/// The protocol version every frame carries.
pub const VERSION: u8 = 1;

/// Largest frame accepted (length field), far above any real message.
pub const MAX_FRAME: usize = 64 * 1024;

/// What a worker asks of the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Join the chat as `name` in `room`. `restore`: the worker was registered with a
    /// broker that died; rejoin quietly (no announcement, no history, no room limit).
    Register {
        name: String,
        room: String,
        admin: bool,
        restore: bool,
    },
    /// A plain line for the sender's room.
    Say { text: String },
    /// A private line for one user.
    Whisper { to: String, text: String },
    /// Move to a room (created if needed).
    Join { room: String },
    /// Back to #lobby.
    Leave,
    /// Users in my room, or everyone online.
    List { all: bool },
    /// Rooms and their counts.
    Rooms,
    /// Disconnect a user (admins only).
    Kick { user: String, reason: String },
    /// The client is leaving; the broker answers with `Close`.
    Quit,
    /// Send `text` back to me: the worker's own answers (errors, /help) pass through
    /// the broker so they reach the client in order with the broker's.
    Echo { text: String },
    /// Are you there? The broker answers `Pong` (the worker's heartbeat).
    Ping,
}

/// What the broker tells a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Registration accepted; the user is in `room`.
    Accepted { room: String },
    /// Registration refused (e.g. the name is taken); `reason` is shown after `error: `.
    Refused { reason: String },
    /// Text for the client, one or more complete lines.
    Text { text: String },
    /// The user's room is now `room`.
    Moved { room: String },
    /// Show `text` to the client, then close the connection (kicked, dropped).
    Close { text: String },
    /// The answer to `Ping`.
    Pong,
}

mod tag {
    pub const REGISTER: u8 = 0x01;
    pub const SAY: u8 = 0x02;
    pub const WHISPER: u8 = 0x03;
    pub const JOIN: u8 = 0x04;
    pub const LEAVE: u8 = 0x05;
    pub const LIST: u8 = 0x06;
    pub const ROOMS: u8 = 0x07;
    pub const KICK: u8 = 0x08;
    pub const QUIT: u8 = 0x09;
    pub const ECHO: u8 = 0x0a;
    pub const PING: u8 = 0x0b;
    pub const ACCEPTED: u8 = 0x81;
    pub const REFUSED: u8 = 0x82;
    pub const TEXT: u8 = 0x83;
    pub const MOVED: u8 = 0x84;
    pub const CLOSE: u8 = 0x85;
    pub const PONG: u8 = 0x86;
}

/// Writes one frame into `out`.
struct FrameWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> FrameWriter<'a> {
    fn new(out: &'a mut Vec<u8>, ty: u8) -> FrameWriter<'a> {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, VERSION, ty]);
        FrameWriter { out, start }
    }

    fn str(self, s: &str) -> Self {
        // Strings are cut (at a char boundary) to what a u16 length can say.
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.out.extend_from_slice(&(end as u16).to_be_bytes());
        self.out.extend_from_slice(&s.as_bytes()[..end]);
        self
    }

    fn flag(self, b: bool) -> Self {
        self.out.push(u8::from(b));
        self
    }

    fn finish(self) {
        let len = (self.out.len() - self.start - 4) as u32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Reads the fields of one frame body.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn str(&mut self) -> io::Result<String> {
        if self.0.len() < 2 {
            return Err(bad("truncated string"));
        }
        let n = u16::from_be_bytes([self.0[0], self.0[1]]) as usize;
        if self.0.len() < 2 + n {
            return Err(bad("truncated string"));
        }
        let s = std::str::from_utf8(&self.0[2..2 + n])
            .map_err(|_| bad("string is not UTF-8"))?
            .to_string();
        self.0 = &self.0[2 + n..];
        Ok(s)
    }

    fn flag(&mut self) -> io::Result<bool> {
        let (&b, rest) = self.0.split_first().ok_or_else(|| bad("truncated flag"))?;
        self.0 = rest;
        Ok(b != 0)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chat IPC: {what}"))
}

impl Request {
    /// Appends this request as one frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use tag::*;
        match self {
            Request::Register {
                name,
                room,
                admin,
                restore,
            } => FrameWriter::new(out, REGISTER)
                .str(name)
                .str(room)
                .flag(*admin)
                .flag(*restore)
                .finish(),
            Request::Say { text } => FrameWriter::new(out, SAY).str(text).finish(),
            Request::Whisper { to, text } => {
                FrameWriter::new(out, WHISPER).str(to).str(text).finish()
            }
            Request::Join { room } => FrameWriter::new(out, JOIN).str(room).finish(),
            Request::Leave => FrameWriter::new(out, LEAVE).finish(),
            Request::List { all } => FrameWriter::new(out, LIST).flag(*all).finish(),
            Request::Rooms => FrameWriter::new(out, ROOMS).finish(),
            Request::Kick { user, reason } => {
                FrameWriter::new(out, KICK).str(user).str(reason).finish()
            }
            Request::Quit => FrameWriter::new(out, QUIT).finish(),
            Request::Echo { text } => FrameWriter::new(out, ECHO).str(text).finish(),
            Request::Ping => FrameWriter::new(out, PING).finish(),
        }
    }

    fn decode(ty: u8, body: &[u8]) -> io::Result<Request> {
        use tag::*;
        let mut f = Fields(body);
        Ok(match ty {
            REGISTER => Request::Register {
                name: f.str()?,
                room: f.str()?,
                admin: f.flag()?,
                restore: f.flag()?,
            },
            SAY => Request::Say { text: f.str()? },
            WHISPER => Request::Whisper {
                to: f.str()?,
                text: f.str()?,
            },
            JOIN => Request::Join { room: f.str()? },
            LEAVE => Request::Leave,
            LIST => Request::List { all: f.flag()? },
            ROOMS => Request::Rooms,
            KICK => Request::Kick {
                user: f.str()?,
                reason: f.str()?,
            },
            QUIT => Request::Quit,
            ECHO => Request::Echo { text: f.str()? },
            PING => Request::Ping,
            t => return Err(bad(&format!("unknown request type {t:#04x}"))),
        })
    }
}

impl Event {
    /// Appends this event as one frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use tag::*;
        match self {
            Event::Accepted { room } => FrameWriter::new(out, ACCEPTED).str(room).finish(),
            Event::Refused { reason } => FrameWriter::new(out, REFUSED).str(reason).finish(),
            Event::Text { text } => FrameWriter::new(out, TEXT).str(text).finish(),
            Event::Moved { room } => FrameWriter::new(out, MOVED).str(room).finish(),
            Event::Close { text } => FrameWriter::new(out, CLOSE).str(text).finish(),
            Event::Pong => FrameWriter::new(out, PONG).finish(),
        }
    }

    fn decode(ty: u8, body: &[u8]) -> io::Result<Event> {
        use tag::*;
        let mut f = Fields(body);
        Ok(match ty {
            ACCEPTED => Event::Accepted { room: f.str()? },
            REFUSED => Event::Refused { reason: f.str()? },
            TEXT => Event::Text { text: f.str()? },
            MOVED => Event::Moved { room: f.str()? },
            CLOSE => Event::Close { text: f.str()? },
            PONG => Event::Pong,
            t => return Err(bad(&format!("unknown event type {t:#04x}"))),
        })
    }
}

/// Bytes received on an IPC connection, and the frames taken from them so far.
#[derive(Debug, Default)]
pub struct InBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl InBuf {
    /// Appends received bytes (frames already taken are dropped first).
    pub fn extend(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete frame. `Ok(None)`: not complete yet. Errors:
    /// oversized frame, wrong version, malformed body; the connection is unusable
    /// after one.
    fn next<T>(&mut self, decode: fn(u8, &[u8]) -> io::Result<T>) -> io::Result<Option<T>> {
        let buf = &self.buf[self.pos..];
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if !(2..=MAX_FRAME).contains(&len) {
            return Err(bad(&format!("bad frame length {len}")));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let version = buf[4];
        if version != VERSION {
            return Err(bad(&format!(
                "protocol version {version}, expected {VERSION}"
            )));
        }
        let msg = decode(buf[5], &buf[6..4 + len])?;
        self.pos += 4 + len;
        Ok(Some(msg))
    }

    /// The next request, if a whole frame has arrived.
    pub fn next_request(&mut self) -> io::Result<Option<Request>> {
        self.next(Request::decode)
    }

    /// The next event, if a whole frame has arrived.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        self.next(Event::decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_events_round_trip_in_pieces() {
        let reqs = vec![
            Request::Register {
                name: "ann".into(),
                room: "#lobby".into(),
                admin: true,
                restore: false,
            },
            Request::Say {
                text: "héllo".into(),
            },
            Request::Whisper {
                to: "bob".into(),
                text: "psst".into(),
            },
            Request::Join {
                room: "#dev".into(),
            },
            Request::Leave,
            Request::List { all: true },
            Request::Rooms,
            Request::Kick {
                user: "bob".into(),
                reason: "".into(),
            },
            Request::Quit,
            Request::Echo {
                text: "error: x\n".into(),
            },
            Request::Ping,
        ];
        let mut wire = Vec::new();
        for r in &reqs {
            r.encode(&mut wire);
        }
        // Feed one byte at a time: frames come out whole and in order.
        let mut buf = InBuf::default();
        let mut got = Vec::new();
        for b in wire {
            buf.extend(&[b]);
            while let Some(r) = buf.next_request().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, reqs);

        let evs = vec![
            Event::Accepted {
                room: "#lobby".into(),
            },
            Event::Refused {
                reason: "taken".into(),
            },
            Event::Text {
                text: "a\nb\n".into(),
            },
            Event::Moved { room: "#x".into() },
            Event::Close {
                text: "bye\n".into(),
            },
            Event::Pong,
        ];
        let mut wire = Vec::new();
        for e in &evs {
            e.encode(&mut wire);
        }
        let mut buf = InBuf::default();
        buf.extend(&wire);
        let mut got = Vec::new();
        while let Some(e) = buf.next_event().unwrap() {
            got.push(e);
        }
        assert_eq!(got, evs);
        assert!(buf.next_event().unwrap().is_none());
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut wire = Vec::new();
        Request::Leave.encode(&mut wire);
        wire[4] = 9;
        for bytes in [
            wire,
            vec![0xff, 0xff, 0xff, 0xff, 1, 1],
            vec![0, 0, 0, 2, VERSION, 0x7f],
        ] {
            let mut buf = InBuf::default();
            buf.extend(&bytes);
            assert!(buf.next_request().is_err(), "{bytes:?}");
        }
    }
}
