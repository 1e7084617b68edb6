//! The chat broker: one process, one thread, one poll loop over the IPC listener
//! and every worker's IPC connection. It keeps who is online, the rooms and their
//! history, formats every line users see, and never blocks on a worker: output
//! goes to bounded per-worker queues, and a worker whose queue overflows is dropped
//! and told why. With `--backend` it also relays through Redis (`backend.rs`): its
//! subscription socket joins the poll set, and every room notice, whisper and kick
//! for a user it does not hold goes to the other hosts.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::backend::{self, Notice, Relay, Wire};
use super::protocol::{Event, InBuf, Request};
use super::{Config, LOBBY, name_key, room_name, valid_user_name};
use crate::listener::AcceptErrors;
use crate::logging::RateLimitedLog;
use crate::proctitle;

/// Bytes of unsent events a worker may have queued before it is dropped.
pub const MAX_QUEUED: usize = 256 * 1024;

/// Rooms kept at most (occupied ones, and empty ones that still have history).
const MAX_ROOMS: usize = 1024;

/// Bytes read from one worker per loop turn, so one busy worker cannot starve others.
const READ_BUDGET: usize = 64 * 1024;

/// One worker's IPC connection.
struct Conn {
    stream: UnixStream,
    input: InBuf,
    out: Vec<u8>,
    /// How much of `out` has been written.
    sent: usize,
    /// The user registered on this connection.
    user: Option<String>,
    /// A `Close` is queued: read nothing more, end the connection once it is out.
    closing: bool,
}

impl Conn {
    fn queued(&self) -> usize {
        self.out.len() - self.sent
    }
}

struct User {
    /// The name as the user spelled it (NFC).
    name: String,
    conn: usize,
    room: String,
    admin: bool,
}

/// Who is online, looked up by name case-insensitively (by [`name_key`]).
#[derive(Default)]
struct Online(HashMap<String, User>);

impl Online {
    fn get(&self, name: &str) -> Option<&User> {
        self.0.get(&name_key(name))
    }
    fn get_mut(&mut self, name: &str) -> Option<&mut User> {
        self.0.get_mut(&name_key(name))
    }
    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    fn insert(&mut self, user: User) {
        self.0.insert(name_key(&user.name), user);
    }
    fn remove(&mut self, name: &str) -> Option<User> {
        self.0.remove(&name_key(name))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    /// Everyone, sorted by name.
    fn sorted(&self) -> Vec<&User> {
        let mut all: Vec<&User> = self.0.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

impl<Q: AsRef<str> + ?Sized> std::ops::Index<&Q> for Online {
    type Output = User;
    fn index(&self, name: &Q) -> &User {
        self.get(name.as_ref()).expect("user is online")
    }
}

#[derive(Default)]
struct Room {
    members: BTreeSet<String>,
    history: VecDeque<String>,
}

struct Broker<'a> {
    config: &'a Config,
    listener: &'a UnixListener,
    /// Bound by this broker when it found the socket file gone.
    own_listener: Option<UnixListener>,
    conns: Vec<Option<Conn>>,
    users: Online,
    rooms: BTreeMap<String, Room>,
    uid: u32,
    /// Connections whose queue overflowed while handling the current request.
    overflowed: Vec<usize>,
    title: String,
    /// Out of descriptors (or memory): the listeners are left alone until then.
    accept_paused_until: Option<Instant>,
    accept_errors: AcceptErrors,
    refusals: RateLimitedLog,
    /// The Redis relay while it is up (`--backend`).
    relay: Option<Relay>,
    /// The relay is down: when to try again, and the wait after that.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When the claims are refreshed next.
    next_refresh: Instant,
}

/// The broker's body (the companion's `run`): serves until SIGTERM or SIGINT, then
/// removes the IPC socket and returns the exit status.
pub fn run(listener: &UnixListener, config: &Config) -> i32 {
    let signals = match signal_pipe() {
        Ok(s) => s,
        Err(e) => {
            log::error!("chat broker: signal pipe: {e}");
            return 71;
        }
    };
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("chat broker: {e}");
        return 71;
    }
    let mut b = Broker {
        config,
        listener,
        own_listener: None,
        conns: Vec::new(),
        users: Online::default(),
        rooms: BTreeMap::new(),
        uid: nix::unistd::getuid().as_raw(),
        overflowed: Vec::new(),
        title: String::new(),
        accept_paused_until: None,
        accept_errors: AcceptErrors::default(),
        refusals: RateLimitedLog::default(),
        relay: None,
        retry_at: None,
        backoff: backend::FIRST_BACKOFF,
        next_refresh: Instant::now(),
    };
    b.rooms.insert(LOBBY.to_string(), Room::default());
    if !config.ipc_path.exists() {
        match bind_again(&config.ipc_path) {
            Ok(l) => b.own_listener = Some(l),
            Err(e) => {
                log::error!("chat broker: binding {}: {e}", config.ipc_path.display());
                return 71;
            }
        }
    }
    b.update_title();
    log::debug!(
        "chat broker {} serving {}",
        std::process::id(),
        config.ipc_path.display()
    );
    if config.backend.is_some() {
        b.retry_at = Some(Instant::now());
        b.backend_timers();
    }
    let code = b.serve(&signals);
    b.leave_backend();
    remove_socket(&config.ipc_path);
    code
}

/// A descriptor that becomes readable on SIGTERM or SIGINT, and on SIGWINCH (the
/// master started draining: tell everyone), all blocked and taken through a
/// signalfd: no handler, so nothing the fork left behind matters.
fn signal_pipe() -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGWINCH);
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Binds a new listener at `path` (its 0700 directory made again if needed).
fn bind_again(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    log::info!(
        "chat broker: socket file was gone; bound {} again",
        path.display()
    );
    Ok(l)
}

fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

fn text(s: String) -> Event {
    Event::Text { text: s }
}

impl Broker<'_> {
    fn serve(&mut self, signals: &SignalFd) -> i32 {
        let mut buf = vec![0u8; READ_BUDGET];
        loop {
            // Poll: signals, listeners, then every connection.
            let mut ids = Vec::with_capacity(self.conns.len());
            let ready: Vec<PollFlags> = {
                let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                let accepting = self.accepting();
                if accepting {
                    fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
                    if let Some(l) = &self.own_listener {
                        fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                    }
                }
                let relay_at = fds.len();
                if let Some(r) = &self.relay {
                    fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
                }
                let base = fds.len();
                for (i, c) in self.conns.iter().enumerate() {
                    let Some(c) = c else { continue };
                    let mut ev = PollFlags::empty();
                    if !c.closing {
                        ev |= PollFlags::POLLIN;
                    }
                    if c.queued() > 0 {
                        ev |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(c.stream.as_fd(), ev));
                    ids.push(i);
                }
                match poll(&mut fds, self.poll_timeout()) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log::error!("chat broker: poll: {e}");
                        return 71;
                    }
                }
                let r: Vec<PollFlags> = fds
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect();
                if !r[0].is_empty() && self.take_signals(signals) {
                    log::debug!("chat broker: stopping");
                    return 0;
                }
                if r[1..relay_at].iter().any(|f| !f.is_empty()) {
                    self.accept_all();
                }
                if r[relay_at..base].iter().any(|f| !f.is_empty()) {
                    self.relay_events();
                }
                r[base..].to_vec()
            };
            for (k, flags) in ready.into_iter().enumerate() {
                let i = ids[k];
                if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_from(i, &mut buf);
                }
            }
            self.backend_timers();
            // What this turn queued for the other hosts: one round trip.
            self.redis(|_| Ok(()));
            // Departures noticed while reading or writing may have overflowed queues.
            self.drop_overflowed();
            self.flush_all();
            self.drop_overflowed();
            self.update_title();
        }
    }

    /// False while accepting is paused after accept(2) failed for want of a
    /// descriptor: the pending connection keeps the listener readable, and polling
    /// it would spin.
    /// Reads the pending signals: true on SIGTERM/SIGINT (stop); SIGWINCH tells
    /// everyone online that the server is shutting down.
    fn take_signals(&mut self, signals: &SignalFd) -> bool {
        let mut stop = false;
        while let Ok(Some(info)) = signals.read_signal() {
            if info.ssi_signo == libc::SIGWINCH as u32 {
                self.tell_everyone(self.config.texts.shutting_down());
            } else {
                stop = true;
            }
        }
        stop
    }

    /// Sends `line` to every user online.
    fn tell_everyone(&mut self, line: &str) {
        let mut frame = Vec::new();
        text(line.to_string()).encode(&mut frame);
        let conns: Vec<usize> = self.users.0.values().map(|u| u.conn).collect();
        for i in conns {
            self.push_frame(i, &frame);
        }
    }

    fn accepting(&mut self) -> bool {
        match self.accept_paused_until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                self.accept_paused_until = None;
                true
            }
            None => true,
        }
    }

    /// Until the accept pause ends or the relay's next refresh or reconnection
    /// is due, or for ever.
    fn poll_timeout(&self) -> PollTimeout {
        let refresh = self.relay.as_ref().map(|_| self.next_refresh);
        let next = [self.accept_paused_until, self.retry_at, refresh]
            .into_iter()
            .flatten()
            .min();
        match next {
            None => PollTimeout::NONE,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    fn accept_all(&mut self) {
        let listeners: Vec<&UnixListener> = std::iter::once(self.listener)
            .chain(self.own_listener.as_ref())
            .collect();
        let mut accepted = Vec::new();
        for l in listeners {
            for _ in 0..64 {
                match l.accept() {
                    Ok((s, _)) => {
                        self.accept_errors.on_success();
                        accepted.push(s)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let path = self.config.ipc_path.display();
                        if let Some(pause) = self.accept_errors.on_error("chat broker", &path, &e) {
                            self.accept_paused_until = Some(Instant::now() + pause);
                        }
                        break;
                    }
                }
            }
        }
        for s in accepted {
            match getsockopt(&s, PeerCredentials) {
                Ok(c) if c.uid() == self.uid => {}
                Ok(c) => {
                    self.refusals.log(|n| {
                        log::warn!(
                            "chat broker: refused IPC connection from uid {} (pid {}){}",
                            c.uid(),
                            c.pid(),
                            RateLimitedLog::more(n)
                        )
                    });
                    continue;
                }
                Err(e) => {
                    self.refusals.log(|n| {
                        log::warn!("chat broker: SO_PEERCRED: {e}{}", RateLimitedLog::more(n))
                    });
                    continue;
                }
            }
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let conn = Conn {
                stream: s,
                input: InBuf::default(),
                out: Vec::new(),
                sent: 0,
                user: None,
                closing: false,
            };
            match self.conns.iter().position(Option::is_none) {
                Some(i) => self.conns[i] = Some(conn),
                None => self.conns.push(Some(conn)),
            }
        }
    }

    /// Reads what a worker sent (up to the budget) and handles its requests.
    fn read_from(&mut self, i: usize, buf: &mut [u8]) {
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        if c.closing {
            // Only hang-ups are polled for: the worker is gone.
            self.end_conn(i);
            return;
        }
        let mut gone = false;
        match c.stream.read(buf) {
            Ok(0) => gone = true,
            Ok(n) => c.input.extend(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => gone = true,
        }
        loop {
            let Some(c) = self.conns[i].as_mut() else {
                return;
            };
            if c.closing {
                break;
            }
            match c.input.next_request() {
                Ok(Some(req)) => {
                    self.handle(i, req);
                    self.drop_overflowed();
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("chat broker: {e}; closing that worker's connection");
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            self.end_conn(i);
        }
    }

    /// Ends a connection; its user (if any) leaves, and the room is told.
    fn end_conn(&mut self, i: usize) {
        let Some(c) = self.conns[i].take() else {
            return;
        };
        if let Some(name) = c.user {
            self.remove_user(&name, Some(Notice::LeftChat { name: name.clone() }));
        }
    }

    /// Writes queued output to every connection that has some, without blocking.
    fn flush_all(&mut self) {
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let mut failed = false;
            while c.queued() > 0 {
                match c.stream.write(&c.out[c.sent..]) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if c.queued() == 0 {
                c.out.clear();
                c.sent = 0;
            } else if c.sent >= 64 * 1024 {
                // Drop what is written, keeping `out` starting at a frame boundary.
                let cut = frame_bounds(&c.out, c.sent).0;
                c.out.drain(..cut);
                c.sent -= cut;
            }
            if failed || (c.closing && c.queued() == 0) {
                self.end_conn(i);
            }
        }
    }

    /// Queues an encoded frame for connection `i`.
    fn push_frame(&mut self, i: usize, frame: &[u8]) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if c.closing {
            return;
        }
        c.out.extend_from_slice(frame);
        if c.queued() > MAX_QUEUED && !self.overflowed.contains(&i) {
            self.overflowed.push(i);
        }
    }

    fn send(&mut self, i: usize, ev: &Event) {
        let mut frame = Vec::new();
        ev.encode(&mut frame);
        self.push_frame(i, &frame);
    }

    fn send_user(&mut self, name: &str, ev: &Event) {
        if let Some(u) = self.users.get(name) {
            let i = u.conn;
            self.send(i, ev);
        }
    }

    /// Sends `line` to everyone in `room` (but `except`).
    fn tell_room(&mut self, room: &str, line: &str, except: Option<&str>) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let targets: Vec<usize> = r
            .members
            .iter()
            .filter(|m| Some(m.as_str()) != except)
            .filter_map(|m| self.users.get(m).map(|u| u.conn))
            .collect();
        let mut frame = Vec::new();
        text(line.to_string()).encode(&mut frame);
        for i in targets {
            self.push_frame(i, &frame);
        }
    }

    /// Drops the workers that fell too far behind: their queue becomes one `Close`.
    fn drop_overflowed(&mut self) {
        while let Some(i) = self.overflowed.pop() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if c.closing {
                continue;
            }
            // Keep the rest of a frame that is partly written, so framing holds.
            let keep = frame_bounds(&c.out, c.sent).1;
            c.out.truncate(keep);
            let why = self.config.texts.fell_behind(MAX_QUEUED / 1024);
            Event::Close { text: why }.encode(&mut c.out);
            c.closing = true;
            if let Some(name) = c.user.take() {
                log::warn!("chat broker: dropped {name}: more than {MAX_QUEUED} bytes queued");
                self.remove_user(&name, Some(Notice::Dropped { name: name.clone() }));
            }
        }
    }

    /// The user registered on connection `i`, or an error line to that connection.
    fn user_of(&mut self, i: usize) -> Option<String> {
        let name = self.conns[i].as_ref().and_then(|c| c.user.clone());
        if name.is_none() {
            self.send(i, &text(self.config.texts.not_logged_in().into()));
        }
        name
    }

    fn handle(&mut self, i: usize, req: Request) {
        match req {
            Request::Ping => self.send(i, &Event::Pong),
            Request::Register {
                name,
                room,
                admin,
                restore,
            } => self.register(i, name, room, admin, restore),
            Request::Say { text: t } => {
                let Some(me) = self.user_of(i) else { return };
                let room = self.users[&me].room.clone();
                let line = self.config.texts.said(&me, &t);
                self.remember(&room, &line);
                self.announce(&room, Notice::Said { name: me, text: t }, None);
            }
            Request::Whisper { to, text: t } => {
                let Some(me) = self.user_of(i) else { return };
                if let Some(to) = self.users.get(&to).map(|u| u.name.clone()) {
                    self.send_user(&to, &text(self.config.texts.private_from(&me, &t)));
                    self.send(i, &text(self.config.texts.private_to(&to, &t)));
                } else if let Some((_, spelled, _)) = self.redis(|r| r.find(&to)).flatten() {
                    let wire = Wire::Whisper {
                        to: spelled.clone(),
                        from: me,
                        text: t.clone(),
                    };
                    self.queue(&wire, None);
                    self.send(i, &text(self.config.texts.private_to(&spelled, &t)));
                } else {
                    self.send(i, &text(self.config.texts.no_user(&to)));
                }
            }
            Request::Join { room } => {
                let Some(me) = self.user_of(i) else { return };
                match room_name(&room) {
                    Some(r) => self.join(i, &me, r),
                    None => self.send(i, &text(self.config.texts.invalid_room(&room, false))),
                }
            }
            Request::Leave => {
                let Some(me) = self.user_of(i) else { return };
                self.join(i, &me, LOBBY.to_string());
            }
            Request::List { all } => {
                let Some(me) = self.user_of(i) else { return };
                let mut everyone = self.everyone();
                everyone.sort();
                let line = if all {
                    let list: Vec<String> = everyone
                        .iter()
                        .map(|(name, room)| format!("{name} ({room})"))
                        .collect();
                    self.config.texts.online(list.len(), &list.join(", "))
                } else {
                    let room = &self.users[&me].room;
                    let members: Vec<&str> = everyone
                        .iter()
                        .filter(|(_, r)| r == room)
                        .map(|(n, _)| n.as_str())
                        .collect();
                    self.config
                        .texts
                        .users_in(room, members.len(), &members.join(", "))
                };
                self.send(i, &text(line));
            }
            Request::Rooms => {
                if self.user_of(i).is_none() {
                    return;
                }
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                counts.insert(LOBBY.to_string(), 0);
                for (_, room) in self.everyone() {
                    *counts.entry(room).or_default() += 1;
                }
                let list: Vec<String> = counts
                    .iter()
                    .map(|(name, n)| format!("{name} ({n})"))
                    .collect();
                self.send(
                    i,
                    &text(self.config.texts.rooms(list.len(), &list.join(", "))),
                );
            }
            Request::Kick { user, reason } => self.kick(i, &user, &reason),
            Request::Echo { text: t } => self.send(i, &text(t)),
            Request::Quit => {
                // The Close tells the worker that everything before it has been sent.
                self.send(
                    i,
                    &Event::Close {
                        text: String::new(),
                    },
                );
                let Some(c) = self.conns[i].as_mut() else {
                    return;
                };
                c.closing = true;
                if let Some(me) = c.user.take() {
                    self.remove_user(&me, Some(Notice::LeftChat { name: me.clone() }));
                }
            }
        }
    }

    /// `/kick USER [REASON]` from the user on connection `i`.
    fn kick(&mut self, i: usize, user: &str, reason: &str) {
        let Some(me) = self.user_of(i) else { return };
        if !self.users[&me].admin {
            self.send(i, &text(self.config.texts.not_allowed().into()));
            return;
        }
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let (target, troom) = if let Some(t) = self.users.get(user) {
            let (name, room) = (t.name.clone(), t.room.clone());
            self.kick_here(&name, &me, &why);
            (name, room)
        } else if let Some((_, name, room)) = self.redis(|r| r.find(user)).flatten() {
            let wire = Wire::Kick {
                to: name.clone(),
                by: me.clone(),
                why: why.clone(),
            };
            self.queue(&wire, None);
            (name, room)
        } else {
            self.send(i, &text(self.config.texts.no_user(user)));
            return;
        };
        if self.users.get(&me).is_some_and(|u| u.room != troom) {
            let notice = self.config.texts.was_kicked(&target, &me, &why);
            self.send(i, &text(notice));
        }
        log::info!("chat broker: {me} kicked {target}{why}");
    }

    /// Disconnects `name`, a user of this host, kicked by `by`.
    fn kick_here(&mut self, name: &str, by: &str, why: &str) {
        let Some(tconn) = self.users.get(name).map(|u| u.conn) else {
            return;
        };
        self.send(
            tconn,
            &Event::Close {
                text: self.config.texts.you_were_kicked(by, why),
            },
        );
        if let Some(c) = self.conns[tconn].as_mut() {
            c.closing = true;
            c.user = None;
        }
        let notice = Notice::Kicked {
            name: name.to_string(),
            by: by.to_string(),
            why: why.to_string(),
        };
        self.remove_user(name, Some(notice));
    }

    fn register(&mut self, i: usize, name: String, room: String, admin: bool, restore: bool) {
        if self.conns[i].as_ref().is_some_and(|c| c.user.is_some()) {
            self.send(i, &text(self.config.texts.already_logged_in().into()));
            return;
        }
        if !valid_user_name(&name) {
            self.send(
                i,
                &Event::Refused {
                    reason: self.config.texts.invalid_name_short(),
                },
            );
            return;
        }
        if self.users.contains_key(&name)
            || self
                .redis(|r| r.claim(&[&name]))
                .is_some_and(|ours| !ours[0])
        {
            self.send(
                i,
                &Event::Refused {
                    reason: self.config.texts.name_taken(&name),
                },
            );
            return;
        }
        let room = match room_name(&room) {
            Some(r) if restore && self.make_room(&r) => r,
            _ => LOBBY.to_string(),
        };
        let history = if restore {
            Vec::new()
        } else {
            self.history_for_newcomer(&room)
        };
        self.users.insert(User {
            name: name.clone(),
            conn: i,
            room: room.clone(),
            admin,
        });
        self.rooms
            .get_mut(&room)
            .expect("room exists")
            .members
            .insert(name.clone());
        if let Some(c) = self.conns[i].as_mut() {
            c.user = Some(name.clone());
        }
        self.redis(|r| r.set_presence(&name, &room));
        self.send(i, &Event::Accepted { room: room.clone() });
        if self.relay.is_none() && self.config.backend.is_some() {
            self.send(i, &text(self.config.texts.local_only().into()));
        }
        if restore {
            log::debug!("chat broker: {name} restored in {room}");
            return;
        }
        self.send_lines(i, history);
        self.announce(
            &room,
            Notice::JoinedChat { name: name.clone() },
            Some(&name),
        );
    }

    /// The history of `room` for a user about to enter it: from Redis when
    /// relaying, else from memory. With Redis, the events that reached this host
    /// before the history did are handled first (to the members already there), so
    /// that no line reaches the newcomer both in the history and live.
    fn history_for_newcomer(&mut self, room: &str) -> Vec<String> {
        let cap = self.config.history;
        match self.redis(|r| r.history(room, cap)) {
            Some(lines) => {
                self.relay_events();
                lines
            }
            None => self
                .rooms
                .get(room)
                .map(|r| r.history.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    fn send_lines(&mut self, i: usize, lines: Vec<String>) {
        for l in lines {
            self.send(i, &text(l));
        }
    }

    /// Keeps `line` in the memory history of `room` (the one used without Redis).
    fn remember(&mut self, room: &str, line: &str) {
        if self.config.history > 0
            && let Some(r) = self.rooms.get_mut(room)
        {
            r.history.push_back(line.to_string());
            while r.history.len() > self.config.history {
                r.history.pop_front();
            }
        }
    }

    /// Makes sure `room` exists; false when there are too many rooms already.
    fn make_room(&mut self, room: &str) -> bool {
        if self.rooms.contains_key(room) {
            return true;
        }
        if self.rooms.len() >= MAX_ROOMS {
            // Forget an empty room (and its history) to make space.
            let victim = self
                .rooms
                .iter()
                .find(|(n, r)| r.members.is_empty() && n.as_str() != LOBBY)
                .map(|(n, _)| n.clone());
            match victim {
                Some(v) => {
                    self.rooms.remove(&v);
                }
                None => return false,
            }
        }
        self.rooms.insert(room.to_string(), Room::default());
        true
    }

    fn join(&mut self, i: usize, me: &str, room: String) {
        let old = self.users[me].room.clone();
        if old == room {
            self.send(i, &text(self.config.texts.already_in(&room)));
            return;
        }
        if room != LOBBY
            && let Some(limit) = self.config.room_limit
            && self.everyone().iter().filter(|(_, r)| *r == room).count() >= limit
        {
            self.send(i, &text(self.config.texts.room_full(&room, limit)));
            return;
        }
        if !self.make_room(&room) {
            self.send(i, &text(self.config.texts.too_many_rooms().into()));
            return;
        }
        let history = self.history_for_newcomer(&room);
        if !self.users.contains_key(me) {
            // Kicked by an event handled just now.
            return;
        }
        self.leave_room(me, &old);
        let name = me.to_string();
        self.announce(&old, Notice::LeftRoom { name: name.clone() }, None);
        self.rooms
            .get_mut(&room)
            .expect("room exists")
            .members
            .insert(name.clone());
        if let Some(u) = self.users.get_mut(me) {
            u.room = room.clone();
        }
        self.redis(|r| r.set_presence(me, &room));
        self.send(i, &Event::Moved { room: room.clone() });
        self.send(i, &text(self.config.texts.now_in(&room)));
        self.send_lines(i, history);
        self.announce(&room, Notice::JoinedRoom { name }, Some(me));
    }

    /// Takes `name` out of `room`, forgetting the room if nothing is left of it.
    fn leave_room(&mut self, name: &str, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.remove(name);
            if r.members.is_empty() && r.history.is_empty() && room != LOBBY {
                self.rooms.remove(room);
            }
        }
    }

    /// Logs a user out; `notice` goes to the room they were in, on every host.
    fn remove_user(&mut self, name: &str, notice: Option<Notice>) {
        let Some(u) = self.users.remove(name) else {
            return;
        };
        self.leave_room(&u.name, &u.room);
        self.redis(|r| r.release(&u.name));
        if let Some(n) = notice {
            self.announce(&u.room, n, None);
        }
    }

    /// Tells `notice` to the members of `room` here (but `except`) and on the other hosts.
    fn announce(&mut self, room: &str, notice: Notice, except: Option<&str>) {
        let line = notice.render(&self.config.texts, room);
        self.tell_room(room, &line, except);
        let said = matches!(notice, Notice::Said { .. }).then_some(line);
        let wire = Wire::Room {
            room: room.to_string(),
            notice,
        };
        self.queue(&wire, said.as_deref());
    }

    /// Queues `wire` for the other hosts (sent at the end of this loop turn).
    fn queue(&mut self, wire: &Wire, said: Option<&str>) {
        let cap = self.config.history;
        if let Some(r) = self.relay.as_mut() {
            r.publish(wire, said, cap);
        }
    }

    /// Everyone online, here and (when relaying) on the other hosts: (NAME, ROOM).
    fn everyone(&mut self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .users
            .sorted()
            .iter()
            .map(|u| (u.name.clone(), u.room.clone()))
            .collect();
        if let Some(others) = self.redis(Relay::others) {
            all.extend(others);
        }
        all
    }

    // The relay.

    /// Runs `f` on the relay when it is up, after what was queued. An error takes
    /// the relay down: members are told the chat is local-only, and reconnection
    /// is scheduled.
    fn redis<T>(&mut self, f: impl FnOnce(&mut Relay) -> redis::RedisResult<T>) -> Option<T> {
        let relay = self.relay.as_mut()?;
        match relay.flush().and_then(|()| f(relay)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.relay_lost(&e);
                None
            }
        }
    }

    fn relay_lost(&mut self, e: &redis::RedisError) {
        self.relay = None;
        let shown = self
            .config
            .backend
            .as_ref()
            .map_or("", |b| b.shown.as_str());
        log::warn!("chat broker: backend {shown}: {e}; chat is local-only until it is back");
        self.backoff = backend::FIRST_BACKOFF;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.tell_everyone(self.config.texts.local_only());
    }

    /// Reconnects when it is time, and refreshes the claims when that is due.
    fn backend_timers(&mut self) {
        let now = Instant::now();
        if self.relay.is_some() && now >= self.next_refresh {
            self.publish_presence(false);
        }
        let (Some(at), Some(conf)) = (self.retry_at, self.config.backend.as_ref()) else {
            return;
        };
        if now < at {
            return;
        }
        match Relay::connect(conf) {
            Ok(r) => {
                log::info!("chat broker: relaying through {}", conf.shown);
                self.relay = Some(r);
                self.retry_at = None;
                self.backoff = backend::FIRST_BACKOFF;
                self.publish_presence(true);
                if self.relay.is_some() && self.users.len() > 0 {
                    self.tell_everyone(self.config.texts.across_hosts_again());
                }
            }
            Err(e) => {
                if self.backoff == backend::FIRST_BACKOFF {
                    log::warn!(
                        "chat broker: backend {}: {e}; retrying with back-off",
                        conf.shown
                    );
                } else {
                    log::debug!("chat broker: backend {}: {e}", conf.shown);
                }
                self.backoff = (self.backoff * 2).min(backend::MAX_BACKOFF);
                self.retry_at = Some(Instant::now() + self.backoff);
            }
        }
    }

    /// Claims every local user's name again and publishes where they are (`reset`:
    /// from scratch, after a (re)connection). A user whose name another host took
    /// meanwhile is disconnected and told why.
    fn publish_presence(&mut self, reset: bool) {
        self.next_refresh = Instant::now() + backend::REFRESH;
        let users: Vec<(String, String)> = self
            .users
            .0
            .values()
            .map(|u| (u.name.clone(), u.room.clone()))
            .collect();
        let refs: Vec<(&str, &str)> = users
            .iter()
            .map(|(n, r)| (n.as_str(), r.as_str()))
            .collect();
        let Some(ours) = self.redis(|r| r.refresh(&refs, reset)) else {
            return;
        };
        for ((name, _), ours) in users.iter().zip(ours) {
            if !ours {
                log::warn!("chat broker: {name} was claimed by another host; disconnecting");
                self.lose_name(name);
            }
        }
    }

    /// Disconnects a local user whose name another host holds now.
    fn lose_name(&mut self, name: &str) {
        let Some(i) = self.users.get(name).map(|u| u.conn) else {
            return;
        };
        let why = self.config.texts.name_lost(name);
        self.send(i, &Event::Close { text: why });
        if let Some(c) = self.conns[i].as_mut() {
            c.closing = true;
            c.user = None;
        }
        if let Some(u) = self.users.remove(name) {
            self.leave_room(&u.name, &u.room);
            let line = self.config.texts.left_chat(&u.name);
            self.tell_room(&u.room, &line, None);
        }
    }

    /// Handles what the other hosts published.
    fn relay_events(&mut self) {
        let Some(events) = self.redis(Relay::events) else {
            return;
        };
        for w in events {
            match w {
                Wire::Room { room, notice } => {
                    let line = notice.render(&self.config.texts, &room);
                    if let Notice::Said { .. } = notice {
                        self.remember(&room, &line);
                    }
                    self.tell_room(&room, &line, None);
                }
                Wire::Whisper { to, from, text: t } => {
                    self.send_user(&to, &text(self.config.texts.private_from(&from, &t)));
                }
                Wire::Kick { to, by, why } => {
                    if self.users.contains_key(&to) {
                        log::info!("chat broker: {by} (another host) kicked {to}{why}");
                        self.kick_here(&to, &by, &why);
                    }
                }
            }
            self.drop_overflowed();
        }
    }

    /// On a clean stop: gives up this host's names and presence in Redis.
    fn leave_backend(&mut self) {
        let names: Vec<String> = self.users.0.values().map(|u| u.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.redis(|r| r.leave(&refs));
    }

    fn update_title(&mut self) {
        let rooms = self
            .rooms
            .iter()
            .filter(|(n, r)| !r.members.is_empty() || n.as_str() == LOBBY)
            .count();
        // The format is fixed (`[1 users, 1 rooms]` too), for whoever parses it.
        let title = format!(
            "{}: chat broker [{} users, {rooms} rooms]",
            proctitle::name(),
            self.users.len()
        );
        if title != self.title {
            proctitle::set(&title, "chat broker");
            self.title = title;
        }
    }
}

/// For `out` (which starts at a frame boundary) and a position in it: the last frame
/// boundary at or before `pos`, and the first at or after it.
fn frame_bounds(out: &[u8], pos: usize) -> (usize, usize) {
    let mut at = 0;
    while at + 4 <= out.len() {
        let len = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        let next = at + 4 + len;
        if next > pos {
            return if at == pos {
                (at, at)
            } else {
                (at, next.min(out.len()))
            };
        }
        at = next;
    }
    (at.min(pos), at.max(pos).min(out.len()))
}

#[cfg(test)]
mod tests {
    use super::frame_bounds;
    use crate::services::chat::protocol::Event;

    #[test]
    fn frame_bounds_find_the_frame_around_a_position() {
        let mut out = Vec::new();
        Event::Text { text: "abc".into() }.encode(&mut out); // 4 + 2 + 2 + 3 = 11 bytes
        Event::Text { text: "de".into() }.encode(&mut out); // 10 bytes
        assert_eq!(frame_bounds(&out, 0), (0, 0));
        assert_eq!(frame_bounds(&out, 5), (0, 11));
        assert_eq!(frame_bounds(&out, 11), (11, 11));
        assert_eq!(frame_bounds(&out, 12), (11, 21));
        assert_eq!(frame_bounds(&out, 21), (21, 21));
    }
}
