//! The chat broker: one process, one thread, one poll loop over the IPC listener
//! and every worker's IPC connection. It keeps who is online, the rooms and their
//! history, formats every line users see, and never blocks on a worker: output
//! goes to bounded per-worker queues, and a worker whose queue overflows is dropped
//! and told why.

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
    let code = b.serve(&signals);
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
                if r[1..base].iter().any(|f| !f.is_empty()) {
                    self.accept_all();
                }
                r[base..].to_vec()
            };
            for (k, flags) in ready.into_iter().enumerate() {
                let i = ids[k];
                if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_from(i, &mut buf);
                }
            }
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

    /// Until the accept pause ends, or for ever.
    fn poll_timeout(&self) -> PollTimeout {
        match self.accept_paused_until {
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
            self.end_conn(i, None);
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
            self.end_conn(i, None);
        }
    }

    /// Ends a connection; its user (if any) leaves, and the room is told.
    fn end_conn(&mut self, i: usize, notice: Option<String>) {
        let Some(c) = self.conns[i].take() else {
            return;
        };
        if let Some(name) = c.user {
            let notice = notice.unwrap_or_else(|| self.config.texts.left_chat(&name));
            self.remove_user(&name, Some(notice));
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
                self.end_conn(i, None);
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
                self.remove_user(&name, Some(self.config.texts.was_dropped(&name)));
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
                if self.config.history > 0
                    && let Some(r) = self.rooms.get_mut(&room)
                {
                    r.history.push_back(line.clone());
                    while r.history.len() > self.config.history {
                        r.history.pop_front();
                    }
                }
                self.tell_room(&room, &line, None);
            }
            Request::Whisper { to, text: t } => {
                let Some(me) = self.user_of(i) else { return };
                if let Some(to) = self.users.get(&to).map(|u| u.name.clone()) {
                    self.send_user(&to, &text(self.config.texts.private_from(&me, &t)));
                    self.send(i, &text(self.config.texts.private_to(&to, &t)));
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
                let line = if all {
                    let list: Vec<String> = self
                        .users
                        .sorted()
                        .iter()
                        .map(|u| format!("{} ({})", u.name, u.room))
                        .collect();
                    self.config.texts.online(list.len(), &list.join(", "))
                } else {
                    let room = &self.users[&me].room;
                    let members: Vec<&str> = self.rooms[room]
                        .members
                        .iter()
                        .map(String::as_str)
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
                let list: Vec<String> = self
                    .rooms
                    .iter()
                    .filter(|(name, r)| !r.members.is_empty() || name.as_str() == LOBBY)
                    .map(|(name, r)| format!("{name} ({})", r.members.len()))
                    .collect();
                self.send(
                    i,
                    &text(self.config.texts.rooms(list.len(), &list.join(", "))),
                );
            }
            Request::Kick { user, reason } => {
                let Some(me) = self.user_of(i) else { return };
                if !self.users[&me].admin {
                    self.send(i, &text(self.config.texts.not_allowed().into()));
                    return;
                }
                let Some(target) = self.users.get(&user) else {
                    self.send(i, &text(self.config.texts.no_user(&user)));
                    return;
                };
                let (tconn, troom, user) = (target.conn, target.room.clone(), target.name.clone());
                let why = if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                };
                self.send(
                    tconn,
                    &Event::Close {
                        text: self.config.texts.you_were_kicked(&me, &why),
                    },
                );
                if let Some(c) = self.conns[tconn].as_mut() {
                    c.closing = true;
                    c.user = None;
                }
                let notice = self.config.texts.was_kicked(&user, &me, &why);
                self.remove_user(&user, Some(notice.clone()));
                if self.users.get(&me).is_some_and(|u| u.room != troom) {
                    self.send(i, &text(notice));
                }
                log::info!("chat broker: {me} kicked {user}{why}");
            }
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
                    let notice = self.config.texts.left_chat(&me);
                    self.remove_user(&me, Some(notice));
                }
            }
        }
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
        if self.users.contains_key(&name) {
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
        self.send(i, &Event::Accepted { room: room.clone() });
        if restore {
            log::debug!("chat broker: {name} restored in {room}");
            return;
        }
        self.send_history(i, &room);
        let notice = self.config.texts.joined_chat(&name, &room);
        self.tell_room(&room, &notice, Some(&name));
    }

    fn send_history(&mut self, i: usize, room: &str) {
        let lines: Vec<String> = self
            .rooms
            .get(room)
            .map(|r| r.history.iter().cloned().collect())
            .unwrap_or_default();
        for l in lines {
            self.send(i, &text(l));
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
            && self
                .rooms
                .get(&room)
                .is_some_and(|r| r.members.len() >= limit)
        {
            self.send(i, &text(self.config.texts.room_full(&room, limit)));
            return;
        }
        if !self.make_room(&room) {
            self.send(i, &text(self.config.texts.too_many_rooms().into()));
            return;
        }
        self.leave_room(me, &old);
        self.tell_room(&old, &self.config.texts.left_room(me, &old), None);
        self.rooms
            .get_mut(&room)
            .expect("room exists")
            .members
            .insert(me.to_string());
        if let Some(u) = self.users.get_mut(me) {
            u.room = room.clone();
        }
        self.send(i, &Event::Moved { room: room.clone() });
        self.send(i, &text(self.config.texts.now_in(&room)));
        self.send_history(i, &room);
        self.tell_room(&room, &self.config.texts.joined_room(me, &room), Some(me));
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

    /// Logs a user out; `notice` goes to the room they were in.
    fn remove_user(&mut self, name: &str, notice: Option<String>) {
        let Some(u) = self.users.remove(name) else {
            return;
        };
        self.leave_room(&u.name, &u.room);
        if let Some(n) = notice {
            self.tell_room(&u.room, &n, None);
        }
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
