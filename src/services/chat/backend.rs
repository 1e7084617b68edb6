//! The chat broker's Redis relay (`--backend redis://HOST:PORT/DB`), so that several
//! forkserve hosts serve one chat. Workers never see it: only the broker talks to
//! Redis, over two connections.
//!
//! - **Commands** go over the `redis` crate's synchronous [`redis::Connection`], with
//!   a [`IO_TIMEOUT`] read/write timeout: a round trip on a LAN is well under a
//!   millisecond, and a Redis that stops answering costs the broker one timeout
//!   before the relay is marked down (no further command is tried until a
//!   reconnection succeeds; each attempt, with back-off, may cost up to two: the
//!   connection and the subscription). Events are queued and sent as one pipeline
//!   per broker loop turn (and before any other command, to keep the order).
//! - **The subscription** is a socket of our own in the broker's poll set. The
//!   crate's blocking `PubSub` hides its socket and buffers replies inside its
//!   parser, so polling its descriptor could not be trusted; instead the broker
//!   sends the crate's packed `SUBSCRIBE` on a non-blocking [`TcpStream`] and
//!   feeds that stream to a long-lived [`redis::Parser`], whose decoder keeps a
//!   partial reply across `WouldBlock` and is drained until it asks for more bytes
//!   (so nothing waits in a buffer that poll cannot see). No thread, no reader
//!   process, no async runtime.
//!
//! The broker itself never forks (the master forks it as a companion), so a
//! thread would have been possible; none is needed, and a reader process would
//! only add a hop and a process to supervise.
//!
//! # What lives in Redis
//!
//! | key / channel | type | holds |
//! |---|---|---|
//! | `forkserve:chat:name:KEY` | string, `PX` [`CLAIM_TTL`] | `HOST\nNAME`: the host that holds the name (KEY is the case-folded name) |
//! | `forkserve:chat:host:HOST` | hash, `PX` [`CLAIM_TTL`] | NAME → ROOM for each user on HOST (`/list`, `/rooms`, room limits) |
//! | `forkserve:chat:hosts` | set | the HOSTs that have users (one whose hash is gone is removed by the next reader; a host with users adds itself again at its next refresh) |
//! | `forkserve:chat:history:ROOM` | list, newest first | the last `--history` lines said in ROOM (`LPUSH` + `LTRIM`) |
//! | `forkserve:chat:DB:events` | channel | JSON events: room notices, whispers, kicks (every host hears all) |
//!
//! Keys live in the URL's database; the channel names the database too, because
//! Redis pub/sub ignores database numbers. Claims and the host hash are refreshed
//! every [`REFRESH`] by the host that owns them, so a crashed host's users vanish
//! within [`CLAIM_TTL`]. HOST is fixed when the master builds the service
//! (hostname, master pid, start time), so a respawned broker owns the claims of
//! the one before it and its workers re-register under the same names.

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use redis::{ConnectionAddr, Value};
use serde_json::json;

use super::texts::Texts;
use crate::logging::RateLimitedLog;

/// How long a name claim (and a host's presence hash) lives without a refresh.
pub const CLAIM_TTL: Duration = Duration::from_secs(5);

/// How often the owning host refreshes its claims.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Connect, read and write timeout of every Redis call.
pub const IO_TIMEOUT: Duration = Duration::from_millis(800);

/// First wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

const PREFIX: &str = "forkserve:chat";

/// Claims KEYS[1] for ARGV[1] (`HOST\nNAME`) if it is free or already this host's
/// (ARGV[2] is `HOST\n`), for ARGV[3] ms: the atomic `SET NX PX` that also lets the
/// owning host refresh it. 1 when the name is ours.
const CLAIM: &str = "local v = redis.call('GET', KEYS[1])
if v == false or string.sub(v, 1, #ARGV[2]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0";

/// Deletes KEYS[1] if this host (ARGV[1], `HOST\n`) holds it.
const RELEASE: &str = "local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Settings of the relay, built in the master.
pub struct BackendConfig {
    pub client: redis::Client,
    /// The URL without its password, for messages.
    pub shown: String,
    /// This host's identity in claims and events.
    pub host: String,
}

/// Shows the URL without its password.
impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("url", &self.shown)
            .field("host", &self.host)
            .finish()
    }
}

impl BackendConfig {
    /// Parses `url` (`redis://[:PASSWORD@]HOST:PORT/DB`).
    pub fn new(url: &str) -> Result<BackendConfig, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--backend {url}: {e}"))?;
        let shown = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => format!(
                "redis://{host}:{port}/{}",
                client.get_connection_info().redis_settings().db()
            ),
            _ => {
                return Err(format!(
                    "--backend {url}: only redis://HOST:PORT/DB is supported"
                ));
            }
        };
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        Ok(BackendConfig {
            client,
            shown,
            host: format!("{host_name}:{}:{since}", std::process::id()),
        })
    }

    /// Connects once and pings: the start-up check.
    pub fn check(&self) -> Result<(), String> {
        let mut con = self
            .client
            .get_connection_with_timeout(IO_TIMEOUT)
            .map_err(|e| format!("{}: {e}", self.shown))?;
        con.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| redis::cmd("PING").query::<String>(&mut con))
            .map(drop)
            .map_err(|e| format!("{}: {e}", self.shown))
    }

    fn db(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }
    fn channel(&self) -> String {
        format!("{PREFIX}:{}:events", self.db())
    }
    /// `HOST\n`: how this host's claims begin.
    fn owner(&self) -> String {
        format!("{}\n", self.host)
    }
}

fn name_key(name: &str) -> String {
    format!("{PREFIX}:name:{}", super::name_key(name))
}
fn host_key(host: &str) -> String {
    format!("{PREFIX}:host:{host}")
}
const HOSTS_KEY: &str = "forkserve:chat:hosts";
fn history_key(room: &str) -> String {
    format!("{PREFIX}:history:{room}")
}

/// Something a room's members read, told on every host.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Said {
        name: String,
        text: String,
    },
    JoinedChat {
        name: String,
    },
    JoinedRoom {
        name: String,
    },
    LeftRoom {
        name: String,
    },
    LeftChat {
        name: String,
    },
    Dropped {
        name: String,
    },
    Kicked {
        name: String,
        by: String,
        why: String,
    },
}

impl Notice {
    /// The line as the members of `room` read it, in this host's language.
    pub fn render(&self, t: &Texts, room: &str) -> String {
        match self {
            Notice::Said { name, text } => t.said(name, text),
            Notice::JoinedChat { name } => t.joined_chat(name, room),
            Notice::JoinedRoom { name } => t.joined_room(name, room),
            Notice::LeftRoom { name } => t.left_room(name, room),
            Notice::LeftChat { name } => t.left_chat(name),
            Notice::Dropped { name } => t.was_dropped(name),
            Notice::Kicked { name, by, why } => t.was_kicked(name, by, why),
        }
    }
}

/// An event on the channel.
#[derive(Clone, Debug, PartialEq)]
pub enum Wire {
    /// A notice for the members of `room`.
    Room { room: String, notice: Notice },
    /// A private line for the user `to`, wherever they are.
    Whisper {
        to: String,
        from: String,
        text: String,
    },
    /// The host of `to` disconnects them: `by` kicked them.
    Kick { to: String, by: String, why: String },
}

impl Wire {
    fn encode(&self, host: &str) -> String {
        let v = match self {
            Wire::Room { room, notice } => {
                let (t, name, a, b) = match notice {
                    Notice::Said { name, text } => ("said", name, text.as_str(), ""),
                    Notice::JoinedChat { name } => ("joined_chat", name, "", ""),
                    Notice::JoinedRoom { name } => ("joined_room", name, "", ""),
                    Notice::LeftRoom { name } => ("left_room", name, "", ""),
                    Notice::LeftChat { name } => ("left_chat", name, "", ""),
                    Notice::Dropped { name } => ("dropped", name, "", ""),
                    Notice::Kicked { name, by, why } => ("kicked", name, by.as_str(), why.as_str()),
                };
                json!({"h": host, "t": t, "room": room, "name": name, "a": a, "b": b})
            }
            Wire::Whisper { to, from, text } => {
                json!({"h": host, "t": "whisper", "to": to, "a": from, "b": text})
            }
            Wire::Kick { to, by, why } => {
                json!({"h": host, "t": "kick", "to": to, "a": by, "b": why})
            }
        };
        v.to_string()
    }

    /// The event and the host that sent it; None for anything else.
    fn decode(payload: &[u8]) -> Option<(String, Wire)> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let (host, t, a, b) = (s("h")?, s("t")?, s("a")?, s("b")?);
        let wire = match t.as_str() {
            "whisper" => Wire::Whisper {
                to: s("to")?,
                from: a,
                text: b,
            },
            "kick" => Wire::Kick {
                to: s("to")?,
                by: a,
                why: b,
            },
            _ => {
                let name = s("name")?;
                let notice = match t.as_str() {
                    "said" => Notice::Said { name, text: a },
                    "joined_chat" => Notice::JoinedChat { name },
                    "joined_room" => Notice::JoinedRoom { name },
                    "left_room" => Notice::LeftRoom { name },
                    "left_chat" => Notice::LeftChat { name },
                    "dropped" => Notice::Dropped { name },
                    "kicked" => Notice::Kicked {
                        name,
                        by: a,
                        why: b,
                    },
                    _ => return None,
                };
                Wire::Room {
                    room: s("room")?,
                    notice,
                }
            }
        };
        Some((host, wire))
    }
}

/// A live relay: both connections up.
pub struct Relay {
    cmd: redis::Connection,
    sub: TcpStream,
    parser: redis::Parser,
    channel: String,
    host: String,
    owner: String,
    /// Events (and history lines) queued this loop turn, sent as one pipeline.
    pending: redis::Pipeline,
    queued: usize,
    /// Payloads on the channel that are not our events (another program's).
    malformed: RateLimitedLog,
}

impl AsFd for Relay {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sub.as_fd()
    }
}

impl Relay {
    /// Opens both connections and subscribes (waiting for the confirmation, so
    /// that nothing published after this returns is missed).
    pub fn connect(conf: &BackendConfig) -> redis::RedisResult<Relay> {
        let cmd = conf.client.get_connection_with_timeout(IO_TIMEOUT)?;
        cmd.set_read_timeout(Some(IO_TIMEOUT))?;
        cmd.set_write_timeout(Some(IO_TIMEOUT))?;
        let channel = conf.channel();
        let (sub, parser) = subscribe(conf, &channel)?;
        Ok(Relay {
            cmd,
            sub,
            parser,
            channel,
            host: conf.host.clone(),
            owner: conf.owner(),
            pending: redis::pipe(),
            queued: 0,
            malformed: RateLimitedLog::default(),
        })
    }

    /// Queues `wire` for publication; a line said also goes into the room's
    /// history, capped at `history` lines. Nothing is sent before [`Relay::flush`]:
    /// the broker flushes once per loop turn and before any other command, so a
    /// burst of lines costs one round trip and the order is kept.
    pub fn publish(&mut self, wire: &Wire, said: Option<&str>, history: usize) {
        let p = &mut self.pending;
        if let (Some(line), Wire::Room { room, .. }) = (said, wire)
            && history > 0
        {
            let key = history_key(room);
            p.cmd("LPUSH").arg(&key).arg(line).ignore();
            p.cmd("LTRIM").arg(&key).arg(0).arg(history - 1).ignore();
        }
        p.cmd("PUBLISH")
            .arg(&self.channel)
            .arg(wire.encode(&self.host))
            .ignore();
        self.queued += 1;
    }

    /// Sends what [`Relay::publish`] queued.
    pub fn flush(&mut self) -> redis::RedisResult<()> {
        if self.queued == 0 {
            return Ok(());
        }
        let p = std::mem::replace(&mut self.pending, redis::pipe());
        self.queued = 0;
        p.exec(&mut self.cmd)
    }

    /// Claims (or refreshes) each name for this host; true where it is ours.
    pub fn claim(&mut self, names: &[&str]) -> redis::RedisResult<Vec<bool>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for n in names {
            p.cmd("EVAL")
                .arg(CLAIM)
                .arg(1)
                .arg(name_key(n))
                .arg(format!("{}{n}", self.owner))
                .arg(&self.owner)
                .arg(CLAIM_TTL.as_millis() as u64);
        }
        let got: Vec<i64> = p.query(&mut self.cmd)?;
        Ok(got.into_iter().map(|r| r == 1).collect())
    }

    /// Gives up `name` (if this host holds it) and its presence.
    pub fn release(&mut self, name: &str) -> redis::RedisResult<()> {
        redis::pipe()
            .cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(name_key(name))
            .arg(&self.owner)
            .ignore()
            .cmd("HDEL")
            .arg(host_key(&self.host))
            .arg(name)
            .ignore()
            .exec(&mut self.cmd)
    }

    /// Records that `name` is in `room`.
    pub fn set_presence(&mut self, name: &str, room: &str) -> redis::RedisResult<()> {
        let key = host_key(&self.host);
        redis::pipe()
            .cmd("SADD")
            .arg(HOSTS_KEY)
            .arg(&self.host)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg(name)
            .arg(room)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(CLAIM_TTL.as_millis() as u64)
            .ignore()
            .exec(&mut self.cmd)
    }

    /// Refreshes the claims of `users` (NAME, ROOM) and writes this host's presence
    /// hash from scratch when `reset` (after a reconnection), else adds to it.
    /// Returns, for each user, whether the name is still ours.
    pub fn refresh(
        &mut self,
        users: &[(&str, &str)],
        reset: bool,
    ) -> redis::RedisResult<Vec<bool>> {
        let names: Vec<&str> = users.iter().map(|(n, _)| *n).collect();
        let ours = self.claim(&names)?;
        let key = host_key(&self.host);
        let mut p = redis::pipe();
        if reset {
            p.cmd("DEL").arg(&key).ignore();
        }
        let kept: Vec<(&str, &str)> = users
            .iter()
            .zip(&ours)
            .filter(|(_, ok)| **ok)
            .map(|(u, _)| *u)
            .collect();
        if !kept.is_empty() {
            p.cmd("SADD").arg(HOSTS_KEY).arg(&self.host).ignore();
            p.cmd("HSET").arg(&key);
            for (n, r) in &kept {
                p.arg(*n).arg(*r);
            }
            p.ignore();
            p.cmd("PEXPIRE")
                .arg(&key)
                .arg(CLAIM_TTL.as_millis() as u64)
                .ignore();
        }
        p.exec(&mut self.cmd)?;
        Ok(ours)
    }

    /// Removes this host's claims and presence (a clean stop).
    pub fn leave(&mut self, names: &[&str]) -> redis::RedisResult<()> {
        for n in names {
            self.release(n)?;
        }
        redis::pipe()
            .cmd("DEL")
            .arg(host_key(&self.host))
            .ignore()
            .cmd("SREM")
            .arg(HOSTS_KEY)
            .arg(&self.host)
            .ignore()
            .exec(&mut self.cmd)
    }

    /// Everyone on the other hosts: (NAME, ROOM). Hosts whose presence expired
    /// (crashed) are dropped from the set of hosts.
    pub fn others(&mut self) -> redis::RedisResult<Vec<(String, String)>> {
        let mut hosts: Vec<String> = redis::cmd("SMEMBERS").arg(HOSTS_KEY).query(&mut self.cmd)?;
        hosts.retain(|h| *h != self.host);
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for h in &hosts {
            p.cmd("HGETALL").arg(host_key(h));
        }
        let maps: Vec<Vec<(String, String)>> = p.query(&mut self.cmd)?;
        let gone: Vec<&String> = hosts
            .iter()
            .zip(&maps)
            .filter(|(_, m)| m.is_empty())
            .map(|(h, _)| h)
            .collect();
        if !gone.is_empty() {
            redis::cmd("SREM")
                .arg(HOSTS_KEY)
                .arg(gone)
                .exec(&mut self.cmd)?;
        }
        Ok(maps.into_iter().flatten().collect())
    }

    /// Who holds `name` on another host: (HOST, NAME as spelled, ROOM).
    pub fn find(&mut self, name: &str) -> redis::RedisResult<Option<(String, String, String)>> {
        let v: Option<String> = redis::cmd("GET").arg(name_key(name)).query(&mut self.cmd)?;
        let Some((host, spelled)) = v.as_deref().and_then(|v| v.split_once('\n')) else {
            return Ok(None);
        };
        if host == self.host {
            return Ok(None);
        }
        let room: Option<String> = redis::cmd("HGET")
            .arg(host_key(host))
            .arg(spelled)
            .query(&mut self.cmd)?;
        Ok(room.map(|r| (host.to_string(), spelled.to_string(), r)))
    }

    /// The last `n` lines said in `room`, oldest first.
    pub fn history(&mut self, room: &str, n: usize) -> redis::RedisResult<Vec<String>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut lines: Vec<String> = redis::cmd("LRANGE")
            .arg(history_key(room))
            .arg(0)
            .arg(n - 1)
            .query(&mut self.cmd)?;
        lines.reverse();
        Ok(lines)
    }

    /// The events that arrived from other hosts, without blocking. An error
    /// means the subscription is lost.
    pub fn events(&mut self) -> redis::RedisResult<Vec<Wire>> {
        let mut out = Vec::new();
        loop {
            match self.parser.parse_value(&mut self.sub) {
                Ok(v) => {
                    let Some(msg) = redis::Msg::from_owned_value(v) else {
                        continue;
                    };
                    match Wire::decode(msg.get_payload_bytes()) {
                        Some((host, _)) if host == self.host => {}
                        Some((_, w)) => out.push(w),
                        None => self.malformed.log(|n| {
                            log::warn!(
                                "chat broker: ignored a malformed event on {}{}",
                                msg.get_channel_name(),
                                RateLimitedLog::more(n)
                            )
                        }),
                    }
                }
                Err(e) if is_would_block(&e) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }
}

/// True when the non-blocking subscription has nothing more to read (the crate
/// reports `WouldBlock` as a timeout).
fn is_would_block(e: &redis::RedisError) -> bool {
    e.is_timeout()
}

/// The subscriber connection: AUTH as the URL says, SUBSCRIBE, the confirmation
/// read, then non-blocking.
fn subscribe(
    conf: &BackendConfig,
    channel: &str,
) -> redis::RedisResult<(TcpStream, redis::Parser)> {
    let info = conf.client.get_connection_info();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(io::Error::other("only TCP backends are supported").into());
    };
    let addr = (host.as_str(), *port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{host}: no address")))?;
    let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)?;
    let mut parser = redis::Parser::new();
    let settings = info.redis_settings();
    if let Some(pw) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(u) = settings.username() {
            auth.arg(u);
        }
        auth.arg(pw);
        sock.write_all(&auth.get_packed_command())?;
        expect_ok(parser.parse_value(&mut sock)?)?;
    }
    sock.write_all(&redis::cmd("SUBSCRIBE").arg(channel).get_packed_command())?;
    expect_ok(parser.parse_value(&mut sock)?)?;
    sock.set_nonblocking(true)?;
    Ok((sock, parser))
}

/// Fails on an error reply.
fn expect_ok(v: Value) -> redis::RedisResult<()> {
    match v {
        Value::ServerError(e) => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Notice, Wire};

    #[test]
    fn events_survive_the_wire() {
        let all = [
            Wire::Room {
                room: "#dev".into(),
                notice: Notice::Said {
                    name: "Zoë".into(),
                    text: "hi \"there\"\n".into(),
                },
            },
            Wire::Room {
                room: "#lobby".into(),
                notice: Notice::Kicked {
                    name: "bob".into(),
                    by: "ann".into(),
                    why: ": spam".into(),
                },
            },
            Wire::Room {
                room: "#lobby".into(),
                notice: Notice::LeftChat { name: "x".into() },
            },
            Wire::Whisper {
                to: "bob".into(),
                from: "ann".into(),
                text: "psst".into(),
            },
            Wire::Kick {
                to: "bob".into(),
                by: "ann".into(),
                why: String::new(),
            },
        ];
        for w in all {
            let s = w.encode("h1");
            assert_eq!(Wire::decode(s.as_bytes()), Some(("h1".to_string(), w)));
        }
        assert_eq!(
            Wire::decode(
                b"{\"h\":\"x\",\"t\":\"nope\",\"a\":\"\",\"b\":\"\",\"name\":\"n\",\"room\":\"r\"}"
            ),
            None
        );
        assert_eq!(Wire::decode(b"not json"), None);
    }
}
