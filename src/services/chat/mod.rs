//! Chat (reference example 4.3 and its exercise: rooms, history, kick, room limits,
//! authentication), with every client in its own forked worker and the shared state
//! (who is online, rooms, history) in one broker process.
//!
//! # Processes
//!
//! ```text
//! forkserve master ── chat worker (one per client: client socket + IPC socket, poll)
//!        │         ── chat worker …
//!        └──────── chat broker  (companion: users, rooms, history; one poll loop)
//! ```
//!
//! When the service is built, still in the master and before anything forks, the
//! IPC listener is bound at `RUNDIR/chat-ipc.MASTERPID/broker.sock`, in a directory of
//! mode 0700 (directories of masters that no longer exist are removed then). The
//! master holds the listener and hands it to the broker, a
//! [`Companion`] that it forks before accepting and respawns
//! (100 ms back-off, doubling) if it dies; workers close their copy. The broker
//! accepts only peers whose `SO_PEERCRED` uid is its own. Because the listener
//! outlives any one broker, a worker can connect while the broker is being respawned:
//! the connection waits in the backlog until the new broker accepts it. When the
//! broker stops on SIGTERM/SIGINT (the master shutting down, or the master gone) it
//! removes the socket and its directory; a broker that finds the socket file gone
//! binds a fresh one at the same path.
//!
//! The broker is single-threaded and never blocks on one worker: every connection is
//! non-blocking with a bounded outbound queue ([`MAX_QUEUED`] bytes). A
//! worker whose queue overflows (it stopped reading) is dropped: its queue is
//! replaced by a `Close` event telling the client why, its room is told, and the
//! connection ends once that event is written. The broker holds no client socket.
//! Its title is `forkserve: chat broker [N users, M rooms]`.
//!
//! A worker polls its client and its IPC connection. It enforces the input rules
//! (line length, UTF-8, control characters, rate), runs the login (name rules,
//! password against the `--users` file), answers `/help` and usage errors itself,
//! and turns every other command into one request. Once logged in, its own
//! answers go out as `Echo` requests that the broker sends straight back, so a
//! client sees the answers to its lines in the order it sent them. The broker
//! formats everything else the users see.
//!
//! # IPC protocol (version 1)
//!
//! A stream of frames over the Unix socket: `u32 length` (big-endian, counting the
//! bytes after it, at most 64 KiB), `u8 version` (1), `u8 type`, fields. A string
//! is `u16 length` + UTF-8; a flag is one byte. A frame with another version, an
//! unknown type or a bad length ends the connection.
//!
//! | type | direction | name | fields | meaning |
//! |---|---|---|---|---|
//! | 0x01 | worker → broker | Register | name, room, admin, restore | join as NAME; restore: rejoin ROOM quietly after a broker restart |
//! | 0x02 | worker → broker | Say | text | a line for my room |
//! | 0x03 | worker → broker | Whisper | to, text | a private line |
//! | 0x04 | worker → broker | Join | room | move to ROOM (created if needed) |
//! | 0x05 | worker → broker | Leave | | back to #lobby |
//! | 0x06 | worker → broker | List | all | users in my room, or everyone |
//! | 0x07 | worker → broker | Rooms | | rooms with counts |
//! | 0x08 | worker → broker | Kick | user, reason | disconnect USER (admins) |
//! | 0x09 | worker → broker | Quit | | the client leaves; answered by Close |
//! | 0x0a | worker → broker | Echo | text | send TEXT back to me as Text |
//! | 0x0b | worker → broker | Ping | | are you there? (heartbeat) |
//! | 0x81 | broker → worker | Accepted | room | registered, in ROOM |
//! | 0x82 | broker → worker | Refused | reason | not registered (name taken) |
//! | 0x83 | broker → worker | Text | text | complete lines for the client |
//! | 0x84 | broker → worker | Moved | room | the user's room is now ROOM |
//! | 0x85 | broker → worker | Close | text | show TEXT, then disconnect |
//! | 0x86 | broker → worker | Pong | | the answer to Ping |
//!
//! # Broker restarts
//!
//! When its IPC connection ends without a `Close`, a worker tells its client
//! `* chat service restarting`, connects again (the listener is still there), and
//! sends `Register` with `restore` set and the room it was in. The client does
//! nothing. **History does not survive a broker restart** without `--backend`: it
//! lives only in the broker's memory, so rooms start empty again; so do lines that
//! were in flight.
//!
//! # Across hosts (`--backend redis://HOST:PORT/DB`)
//!
//! The broker alone talks to Redis (`backend.rs`); workers and this protocol do not
//! change. Room notices, whispers and kicks for users of other hosts go out on a
//! Redis channel and come back in through a subscription socket in the broker's
//! poll set; names are claimed in Redis (refreshed every second, gone 5 s after
//! a host stops refreshing); `/list`, `/rooms` and room limits read every host's
//! presence hash; history is a capped Redis list per room. When Redis goes away the
//! broker tells its members `* chat is local-only until the backend is back`, goes on
//! delivering locally, and reconnects with back-off (200 ms doubling to 5 s); then
//! it claims its users' names again (a user whose name another host took meanwhile
//! is disconnected and told why), publishes their rooms and says `* chat is across
//! hosts again`. The broker never forks and starts no thread.
//!
//! # A broker that stops answering
//!
//! A broker can be alive and still not answer (stopped with SIGSTOP, stuck). A
//! worker that has heard nothing from it for 2 s sends `Ping`; when 3 s more pass
//! without a frame, it logs a warning and tells a logged-in client `* chat service
//! is not answering; your lines wait until it does`. Meanwhile its queue towards
//! the broker is bounded (64 KiB beyond the socket buffer): further lines get
//! `error: the chat service is not answering; line not sent`. The first frame from
//! the broker ends the stall: `* chat service is answering again`, and the lines
//! that waited are delivered.
//!
//! # Client protocol
//!
//! Line-based UTF-8 (socat, nc, telnet): `Username: `, then with `--users` a
//! `Password: ` (three failures close the connection), then `Welcome, NAME! …`,
//! the history of #lobby, and `* NAME joined #lobby` for the others. Commands:
//! see [`HELP`]; they ignore case (`QUIT`, `/JOIN`). `--room-limit` applies to rooms
//! joined with `/join`, not to #lobby.
//!
//! A line ends at a newline, or when a partial line has had no more input for
//! `PARTIAL_LINE_PAUSE` (200 ms, in `worker.rs`): clients that send a message without
//! a newline (the reference's, nc fed by a program) work too. User names are
//! Unicode, NFC, compared without case (`names.rs`); room names are ASCII. Every
//! text users read is in `texts.rs`, in English and (`--lang es`) Spanish.
//! Admins are the users marked `admin` in the users file and those named by
//! `--admins` (without a users file, by name only: anyone may claim a name).
//!
//! The chat needs its broker, so it does not run in `--inetd` mode or under
//! systemd `Accept=yes` (one process per connection, no companion).

mod backend;
mod broker;
mod heartbeat;
pub mod lines;
mod names;
pub mod protocol;
mod texts;
mod users;
mod worker;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::handler::{Connection, StreamHandler};
use crate::sandbox::Sandbox;
use crate::server::{Companion, Error, Service};

pub use broker::MAX_QUEUED;
pub use names::{NameError, name_key, user_name, valid_user_name};
pub use texts::Texts;
pub use users::{Users, hash_password};

/// The room every user starts in.
pub const LOBBY: &str = "#lobby";

/// Longest accepted input line, in bytes (without the newline).
pub const MAX_LINE: usize = 4096;

/// What `/help` shows.
pub const HELP: &str = "\
commands:
  TEXT                  say TEXT to your room
  /list                 users in your room (/list all: everyone online and their room)
  /whisper USER TEXT    private message (also /w)
  /join ROOM            go to ROOM (created if needed)
  /leave                back to #lobby
  /rooms                rooms and how many are in each
  /kick USER [REASON]   disconnect USER (admins only)
  /help                 this text
  quit, /quit           leave
";

/// Options of the chat service.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ChatOpts {
    /// Chat: users file (lines NAME:HASH or NAME:HASH:admin, from `forkserve chat-passwd`); a password is then required
    #[arg(long, value_name = "FILE", global = true)]
    pub users: Option<PathBuf>,
    /// Chat: admins (who may /kick), besides those marked in the users file
    #[arg(long, value_name = "A,B", value_delimiter = ',', global = true)]
    pub admins: Vec<String>,
    /// Chat: at most N users in a room joined with /join
    #[arg(long, value_name = "N", global = true)]
    pub room_limit: Option<usize>,
    /// Chat: messages of history kept per room
    #[arg(long, value_name = "N", default_value_t = 10, global = true)]
    pub history: usize,
    /// Chat: more than N lines a second from a client gets a warning, then a disconnect
    #[arg(long, value_name = "N", default_value_t = 20, global = true)]
    pub rate: u32,
    /// Chat: relay through Redis so several forkserve hosts serve one chat (redis://HOST:PORT/DB)
    #[arg(long, value_name = "URL", global = true)]
    pub backend: Option<String>,
    /// Chat: start local-only (with a warning) when the --backend is unreachable
    #[arg(long, global = true, requires = "backend")]
    pub backend_optional: bool,
}

/// Settings the workers and the broker share (built in the master).
#[derive(Debug)]
pub struct Config {
    pub users: Option<Users>,
    /// The admins named by `--admins`, as [`name_key`]s.
    pub admins: Vec<String>,
    pub room_limit: Option<usize>,
    pub history: usize,
    pub rate: u32,
    /// The broker's IPC socket.
    pub ipc_path: PathBuf,
    /// What users read, in the language of `--lang`.
    pub texts: Texts,
    /// The Redis relay (`--backend`).
    pub backend: Option<backend::BackendConfig>,
}

/// True for a valid room name (without its `#`): 1-32 ASCII letters, digits, `_`,
/// `-`. User names are wider: see [`user_name`].
pub fn valid_room(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `dev` or `#dev` → `#dev`; None for an invalid room name.
pub fn room_name(arg: &str) -> Option<String> {
    let bare = arg.strip_prefix('#').unwrap_or(arg);
    valid_room(bare).then(|| format!("#{bare}"))
}

/// The chat handler: each connection is served by the worker loop (`worker.rs`).
pub struct Chat {
    config: Arc<Config>,
}

impl StreamHandler for Chat {
    fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        worker::serve(&self.config, conn)
    }
}

/// Builds the chat service: loads the users file, binds the broker's IPC socket and
/// attaches the broker. Call in the master, before [`Server::run`](crate::Server::run).
/// `run_as`: the user the server will drop privileges to (`--user`), who must own
/// the IPC directory; `lang`: the language of the texts users read.
pub fn service(
    opts: &ChatOpts,
    run_as: Option<&str>,
    lang: crate::services::Lang,
) -> Result<Service, Error> {
    let users = match &opts.users {
        Some(p) => {
            let u = Users::load(p).map_err(|e| Error::new(Error::CONFIG, e))?;
            if u.is_empty() {
                log::warn!(
                    "chat: --users {} lists nobody; no one can log in",
                    p.display()
                );
            }
            Some(u)
        }
        None => None,
    };
    let mut admins = Vec::new();
    for a in &opts.admins {
        let name = user_name(a)
            .map_err(|e| Error::new(Error::USAGE, format!("--admins: invalid name '{a}': {e}")))?;
        admins.push(name_key(&name));
    }
    if opts.rate == 0 {
        return Err(Error::new(
            Error::USAGE,
            "--rate: expected at least 1 line a second",
        ));
    }
    let relays = opts.backend.is_some();
    let backend = match &opts.backend {
        Some(url) => Some(check_backend(url, opts.backend_optional)?),
        None => None,
    };
    let rt = crate::listener::runtime_dir_as(run_as).map_err(|e| Error::new(Error::OSERR, e))?;
    let (ipc_path, listener) = bind_ipc(&rt)?;
    if let Some(name) = run_as {
        hand_ipc_to(&ipc_path, name)?;
    }
    let config = Arc::new(Config {
        users,
        admins,
        room_limit: opts.room_limit,
        history: opts.history,
        rate: opts.rate,
        ipc_path,
        texts: Texts { lang },
        backend,
    });
    let fd = listener.as_raw_fd();
    let bconf = Arc::clone(&config);
    // The broker serves its IPC socket, and binds it again in the runtime directory
    // if its file is removed; a worker only connects to it. With a Redis backend
    // the broker also opens TCP connections, which its sandbox does not allow:
    // it then runs without one (the workers keep theirs).
    let mut broker = Companion::new("broker", move || broker::run(&listener, &bconf))
        .owns_fd(fd)
        .drain_signal(libc::SIGWINCH);
    if !relays {
        broker = broker.sandbox(
            Sandbox::new()
                .unix_listen()
                .read_write(&rt)
                .syscalls(&[libc::SYS_signalfd4]),
        );
    }
    Ok(Service::stream("chat", Chat { config })
        .companion(broker)
        .sandbox(Sandbox::new().unix_connect()))
}

/// Parses `--backend` and checks, once, that Redis answers: an unreachable backend
/// stops start-up (69) unless `optional`, when the chat starts local-only.
fn check_backend(url: &str, optional: bool) -> Result<backend::BackendConfig, Error> {
    let conf = backend::BackendConfig::new(url).map_err(|e| Error::new(Error::USAGE, e))?;
    match conf.check() {
        Ok(()) => log::info!("chat: relaying through {}", conf.shown),
        Err(e) if optional => log::warn!(
            "chat: backend {e}; starting local-only (--backend-optional), reconnecting in the background"
        ),
        Err(e) => {
            return Err(Error::new(
                Error::UNAVAILABLE,
                format!("chat: backend {e} (--backend-optional starts without it)"),
            ));
        }
    }
    Ok(conf)
}

/// Binds the IPC listener in a fresh 0700 directory named for this process.
fn bind_ipc(rt: &Path) -> Result<(PathBuf, UnixListener), Error> {
    remove_stale_ipc_dirs(rt);
    let dir = rt.join(format!("chat-ipc.{}", std::process::id()));
    let oserr = |what: &str, e: io::Error| {
        Error::new(Error::OSERR, format!("chat: {what} {}: {e}", dir.display()))
    };
    // Left by an earlier process that had our pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| oserr("creating", e))?;
    let path = dir.join("broker.sock");
    let listener =
        UnixListener::bind(&path).map_err(|e| oserr("binding the broker socket in", e))?;
    Ok((path, listener))
}

/// Makes the IPC directory and socket belong to `user`, whom the server will run as.
fn hand_ipc_to(path: &Path, user: &str) -> Result<(), Error> {
    crate::users::give_to("chat", user, &[path, path.parent().unwrap_or(path)])
}

/// Removes `chat-ipc.PID` directories whose process is gone.
fn remove_stale_ipc_dirs(rt: &Path) {
    let Ok(entries) = std::fs::read_dir(rt) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("chat-ipc."))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            log::debug!("chat: removing stale {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `forkserve chat-passwd [NAME]`: reads a password from stdin (echo off on a
/// terminal) and prints its Argon2id PHC hash, or a users-file line `NAME:HASH`.
pub fn chat_passwd(name: Option<&str>, admin: bool) -> Result<String, String> {
    let name = match name {
        Some(n) => Some(user_name(n).map_err(|e| format!("invalid name '{n}': {e}"))?),
        None => None,
    };
    let password = read_password()?;
    if password.is_empty() {
        return Err("empty password".into());
    }
    let hash = hash_password(&password)?;
    Ok(match name.as_deref() {
        Some(n) if admin => format!("{n}:{hash}:admin"),
        Some(n) => format!("{n}:{hash}"),
        None => hash,
    })
}

fn read_password() -> Result<String, String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        eprint!("Password: ");
        let _ = io::stderr().flush();
    }
    let mut line = String::new();
    let res = stdin.read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
        eprintln!();
    }
    res.map_err(|e| format!("reading the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_rooms() {
        assert!(valid_room("ann_B-3"));
        assert!(valid_room(&"x".repeat(32)));
        assert!(!valid_room(&"x".repeat(33)));
        assert!(!valid_room(""));
        assert!(!valid_room("a b"));
        assert!(!valid_room("ännchen"));
        assert_eq!(room_name("dev").as_deref(), Some("#dev"));
        assert_eq!(room_name("#dev").as_deref(), Some("#dev"));
        assert_eq!(room_name("#"), None);
        assert_eq!(room_name("##x"), None);
    }
}
