//! One chat client, in its own forked worker: a poll loop over the client socket and
//! the IPC connection to the broker. The worker applies the input rules, runs the
//! login, answers `/help`, turns commands into requests, and writes what the broker
//! sends. When the broker dies it tells the client, reconnects and re-registers.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::heartbeat::{self, Beat, Heartbeat};
use super::lines::{self, Input, Lines};
use super::protocol::{Event, InBuf, Request};
use super::{Config, LOBBY, name_key, room_name, user_name};
use crate::handler::{Connection, Model};
use crate::proctitle;

/// How long a worker keeps trying to reach the broker before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Output a client may leave unread before it is disconnected.
const MAX_CLIENT_BACKLOG: usize = 1024 * 1024;

/// How long the last words (kick notice, `Bye.`) may take to reach the client.
const LINGER: Duration = Duration::from_secs(5);

/// How long a worker waits for the broker to answer a registration.
const REGISTER_PATIENCE: Duration = Duration::from_secs(30);

/// A partial line (no newline yet) the client leaves alone this long is taken as a
/// line: nc-style clients and the reference material's send each message without one.
pub const PARTIAL_LINE_PAUSE: Duration = Duration::from_millis(200);

/// Failed logins before the connection is closed.
const MAX_LOGIN_FAILURES: u32 = 3;

/// After a rate warning, going over the limit again within this time disconnects.
const RATE_MEMORY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Username: ` was shown.
    Name,
    /// `Password: ` was shown (with a users file).
    Password,
    /// Register sent; waiting for Accepted or Refused.
    Registering,
    /// Logged in.
    Chatting,
    /// The broker restarted; Register (restore) sent, waiting for Accepted.
    Restoring,
    /// Quit sent; waiting for the broker's Close.
    Leaving,
}

impl State {
    /// States in which client lines are read and handled.
    fn takes_input(self) -> bool {
        matches!(self, State::Name | State::Password | State::Chatting)
    }
}

/// Lines per second, with one warning before a disconnect.
struct Rate {
    limit: u32,
    window: Instant,
    count: u32,
    warned: Option<Instant>,
}

enum Verdict {
    Ok,
    Warn,
    Disconnect,
}

impl Rate {
    fn check(&mut self, now: Instant) -> Verdict {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count <= self.limit {
            return Verdict::Ok;
        }
        match self.warned {
            Some(t) if now.duration_since(t) < RATE_MEMORY => Verdict::Disconnect,
            _ => {
                self.warned = Some(now);
                Verdict::Warn
            }
        }
    }
}

struct Worker<'a> {
    config: &'a Config,
    client: &'a mut Connection,
    /// Received client bytes as lines (complete ones not yet handled, and the
    /// unfinished last one).
    lines: Lines,
    client_out: Vec<u8>,
    client_eof: bool,
    ipc: Option<UnixStream>,
    ipc_in: InBuf,
    ipc_out: Vec<u8>,
    state: State,
    name: String,
    admin: bool,
    room: String,
    failures: u32,
    rate: Rate,
    /// Close once the client has its output (or after LINGER).
    done: Option<Instant>,
    /// When the pending registration was sent.
    registering_since: Option<Instant>,
    last_input: Instant,
    /// Whether the broker answers (see `heartbeat.rs`).
    heartbeat: Heartbeat,
}

/// Serves one chat client until it leaves, is kicked or dropped, or goes silent for
/// the service's idle timeout.
pub fn serve(config: &Config, client: &mut Connection) -> io::Result<()> {
    client.stream().set_nonblocking(true)?;
    let _ = client.stream().set_nodelay();
    let now = Instant::now();
    let mut w = Worker {
        config,
        client,
        lines: Lines::default(),
        client_out: Vec::new(),
        client_eof: false,
        ipc: None,
        ipc_in: InBuf::default(),
        ipc_out: Vec::new(),
        state: State::Name,
        name: String::new(),
        admin: false,
        room: LOBBY.to_string(),
        failures: 0,
        rate: Rate {
            limit: config.rate,
            window: now,
            count: 0,
            warned: None,
        },
        done: None,
        registering_since: None,
        last_input: now,
        heartbeat: Heartbeat::new(now),
    };
    match connect_broker(config) {
        Ok(s) => w.ipc = Some(s),
        Err(e) => {
            log::error!(
                "chat: cannot reach the broker at {}: {e}",
                config.ipc_path.display()
            );
            w.say(config.texts.unavailable_try_later());
            w.finish();
        }
    }
    if w.done.is_none() {
        w.say(config.texts.username_prompt());
    }
    w.run()
}

/// Connects to the broker's socket, retrying while it is being (re)bound.
fn connect_broker(config: &Config) -> io::Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        match UnixStream::connect(&config.ipc_path) {
            Ok(s) => {
                s.set_nonblocking(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            // Back-off between attempts while a new broker binds the socket again.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Worker<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.flush_client();
            self.flush_ipc();
            if let Some(t) = self.done
                && (self.client_out.is_empty() || Instant::now() >= t + LINGER)
            {
                return Ok(());
            }
            let (client_ev, ipc_ev) = {
                let mut cev = PollFlags::empty();
                if self.state.takes_input() && self.done.is_none() && !self.client_eof {
                    cev |= PollFlags::POLLIN;
                }
                if !self.client_out.is_empty() {
                    cev |= PollFlags::POLLOUT;
                }
                let mut fds = Vec::with_capacity(2);
                // A client that has ended its input and has nothing to be sent is left
                // out: poll would report its hang-up again and again.
                let watch_client = !(self.client_eof && self.client_out.is_empty());
                if watch_client {
                    fds.push(PollFd::new(self.client.as_fd(), cev));
                }
                if let Some(ipc) = &self.ipc {
                    let mut iev = PollFlags::POLLIN;
                    if !self.ipc_out.is_empty() {
                        iev |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(ipc.as_fd(), iev));
                }
                let timeout = self.timeout();
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let mut rev = fds
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()));
                let client_ev = if watch_client {
                    rev.next().unwrap_or(PollFlags::empty())
                } else {
                    PollFlags::empty()
                };
                let ipc_ev = if self.ipc.is_some() {
                    rev.next().unwrap_or(PollFlags::empty())
                } else {
                    PollFlags::empty()
                };
                (client_ev, ipc_ev)
            };
            if self
                .registering_since
                .is_some_and(|t| t.elapsed() >= REGISTER_PATIENCE)
            {
                log::error!(
                    "chat: {}: the broker did not answer a registration",
                    self.who()
                );
                self.registering_since = None;
                self.say(self.config.texts.not_answering());
                self.finish();
                continue;
            }
            if self.idle_expired() {
                self.say(self.config.texts.idle_timeout());
                self.finish();
                continue;
            }
            if client_ev.contains(PollFlags::POLLERR) {
                // Reset: nothing more can reach the client; the broker sees us go.
                return Ok(());
            }
            if client_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) && !self.client_eof {
                self.read_client(&mut buf)?;
            }
            if ipc_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_ipc(&mut buf);
            }
            self.take_paused_line();
            self.handle_input();
            self.beat();
        }
    }

    fn timeout(&self) -> PollTimeout {
        let now = Instant::now();
        let until = if let Some(t) = self.done {
            Some(t + LINGER)
        } else if let Some(t) = self.registering_since {
            Some(t + REGISTER_PATIENCE)
        } else {
            self.config_idle().map(|idle| self.last_input + idle)
        };
        let until = earliest(until, self.partial_line_due());
        let until = earliest(until, self.heartbeat_due());
        match until {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t
                    .saturating_duration_since(now)
                    .as_millis()
                    .min(i32::MAX as u128 - 1) as i32
                    + 1;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    fn config_idle(&self) -> Option<Duration> {
        self.client.context().idle_timeout
    }

    fn idle_expired(&self) -> bool {
        self.done.is_none()
            && self.state.takes_input()
            && self
                .config_idle()
                .is_some_and(|idle| self.last_input.elapsed() >= idle)
    }

    /// Queues text for the client (written at the top of the loop, in one go with
    /// whatever else arrived).
    fn say(&mut self, s: &str) {
        self.client_out.extend_from_slice(s.as_bytes());
        if self.client_out.len() > MAX_CLIENT_BACKLOG && self.done.is_none() {
            log::info!(
                "chat: {}: client is not reading ({} bytes unread); disconnecting",
                self.who(),
                self.client_out.len()
            );
            self.client_out.clear();
            self.done = Some(Instant::now());
        }
    }

    fn who(&self) -> String {
        if self.name.is_empty() {
            self.client.peer().to_string()
        } else {
            self.name.clone()
        }
    }

    /// Closes the connection once what is queued has been written.
    fn finish(&mut self) {
        if self.done.is_none() {
            self.done = Some(Instant::now());
        }
    }

    fn flush_client(&mut self) {
        let mut written = 0;
        while written < self.client_out.len() {
            match self.client.write(&self.client_out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The client is gone: nothing more to deliver.
                    written = self.client_out.len();
                    self.client_eof = true;
                    self.finish();
                }
            }
        }
        self.client_out.drain(..written);
    }

    fn send(&mut self, req: Request) {
        if !self.queue_for_broker(&req) {
            return;
        }
        self.flush_ipc();
    }

    fn flush_ipc(&mut self) {
        let Some(ipc) = &mut self.ipc else { return };
        let mut written = 0;
        while written < self.ipc_out.len() {
            match ipc.write(&self.ipc_out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The broker is gone; reading will notice and reconnect.
                Err(_) => break,
            }
        }
        self.ipc_out.drain(..written);
    }

    fn read_client(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self.client.read(buf) {
            Ok(0) => self.client_eof = true,
            Ok(n) => {
                self.last_input = Instant::now();
                self.lines.push(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                self.client_eof = true;
                self.client_out.clear();
                self.finish();
            }
        }
        Ok(())
    }

    /// When a partial line will have waited [`PARTIAL_LINE_PAUSE`] since the last input.
    fn partial_line_due(&self) -> Option<Instant> {
        (self.lines.has_partial() && !self.client_eof).then(|| self.last_input + PARTIAL_LINE_PAUSE)
    }

    /// Takes a partial line the client has paused after as a whole line.
    fn take_paused_line(&mut self) {
        if self.partial_line_due().is_some_and(|t| Instant::now() >= t) {
            self.lines.close_partial();
        }
    }

    /// Handles complete client lines while the state allows, and the end of input.
    fn handle_input(&mut self) {
        while self.state.takes_input() && self.done.is_none() {
            let Some(input) = self.lines.next_line() else {
                break;
            };
            self.handle_line(input);
        }
        if self.client_eof
            && self.lines.is_empty()
            && self.state.takes_input()
            && self.done.is_none()
        {
            if let Some(line) = self.lines.take_last() {
                self.handle_line(line);
                if !(self.state.takes_input() && self.done.is_none()) {
                    return;
                }
            }
            self.leave();
        }
    }

    /// Leaves: logged in, the broker acknowledges (so pending lines are delivered).
    fn leave(&mut self) {
        if self.state == State::Chatting && self.ipc.is_some() {
            self.send(Request::Quit);
            self.state = State::Leaving;
        } else {
            self.finish();
        }
    }

    fn handle_line(&mut self, input: Input) {
        let Input::Line(raw) = input else {
            self.reply(&self.config.texts.line_too_long());
            self.reprompt();
            return;
        };
        match self.rate.check(Instant::now()) {
            Verdict::Ok => {}
            Verdict::Warn => {
                self.reply(&self.config.texts.rate_warning(self.config.rate));
                return;
            }
            Verdict::Disconnect => {
                log::info!(
                    "chat: {}: over --rate {} again; disconnecting",
                    self.who(),
                    self.config.rate
                );
                self.reply(&self.config.texts.rate_disconnect(self.config.rate));
                self.leave();
                return;
            }
        }
        let Some(clean) = lines::clean(&raw) else {
            self.reply(self.config.texts.invalid_utf8());
            self.reprompt();
            return;
        };
        match self.state {
            State::Name => self.take_name(clean.trim()),
            State::Password => self.take_password(&clean),
            State::Chatting => self.command(&clean),
            _ => {}
        }
    }

    /// Shows the prompt again after an error at a prompt.
    fn reprompt(&mut self) {
        match self.state {
            State::Name => self.say(self.config.texts.username_prompt()),
            State::Password => self.say(self.config.texts.password_prompt()),
            _ => {}
        }
    }

    fn take_name(&mut self, name: &str) {
        let t = self.config.texts;
        if name.is_empty() {
            self.say(t.username_prompt());
            return;
        }
        if is_quit(name) {
            self.say(t.bye());
            self.finish();
            return;
        }
        let name = match user_name(name) {
            Ok(n) => n,
            Err(e) => {
                log::info!("chat: {}: name refused: {e}", self.client.peer());
                self.say(&t.invalid_name(&e));
                self.say(t.username_prompt());
                return;
            }
        };
        self.name = name;
        if self.config.users.is_some() {
            self.state = State::Password;
            self.say(t.password_prompt());
        } else {
            self.admin = self.config.admins.contains(&name_key(&self.name));
            self.register(false);
        }
    }

    fn take_password(&mut self, password: &str) {
        let Some(users) = &self.config.users else {
            return;
        };
        match users.check(&self.name, password) {
            Some(admin) => {
                self.admin = admin || self.config.admins.contains(&name_key(&self.name));
                self.register(false);
            }
            None => {
                self.failures += 1;
                log::info!(
                    "chat: {}: failed login as '{}' ({}/{MAX_LOGIN_FAILURES})",
                    self.client.peer(),
                    self.name,
                    self.failures
                );
                self.name.clear();
                if self.failures >= MAX_LOGIN_FAILURES {
                    self.say(self.config.texts.too_many_failures());
                    self.finish();
                } else {
                    self.state = State::Name;
                    self.say(self.config.texts.login_incorrect());
                    self.say(self.config.texts.username_prompt());
                }
            }
        }
    }

    fn register(&mut self, restore: bool) {
        self.state = if restore {
            State::Restoring
        } else {
            State::Registering
        };
        let req = Request::Register {
            name: self.name.clone(),
            room: self.room.clone(),
            admin: self.admin,
            restore,
        };
        self.send(req);
    }

    fn command(&mut self, line: &str) {
        let tx = self.config.texts;
        let t = line.trim();
        if t.is_empty() {
            return;
        }
        if is_quit(t) {
            self.quit();
            return;
        }
        if !t.starts_with('/') {
            self.send(Request::Say {
                text: line.to_string(),
            });
            return;
        }
        let (cmd, rest) = t.split_once([' ', '\t']).unwrap_or((t, ""));
        let rest = rest.trim();
        match cmd.to_lowercase().as_str() {
            "/quit" => self.quit(),
            "/help" => self.reply(tx.help()),
            "/list" => match rest.to_lowercase().as_str() {
                "" => self.send(Request::List { all: false }),
                "all" => self.send(Request::List { all: true }),
                _ => self.reply(tx.usage_list()),
            },
            "/whisper" | "/w" => match rest.split_once([' ', '\t']) {
                Some((to, msg)) if !msg.trim().is_empty() => self.send(Request::Whisper {
                    to: to.to_string(),
                    text: msg.trim().to_string(),
                }),
                _ => self.reply(tx.usage_whisper()),
            },
            "/join" => {
                if rest.is_empty() || rest.contains([' ', '\t']) {
                    self.reply(tx.usage_join());
                } else if room_name(rest).is_none() {
                    self.reply(&tx.invalid_room(rest, true));
                } else {
                    self.send(Request::Join {
                        room: rest.to_string(),
                    });
                }
            }
            "/leave" => self.send(Request::Leave),
            "/rooms" => self.send(Request::Rooms),
            "/kick" => {
                let (user, reason) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
                if user.is_empty() {
                    self.reply(tx.usage_kick());
                } else {
                    self.send(Request::Kick {
                        user: user.to_string(),
                        reason: reason.trim().to_string(),
                    });
                }
            }
            _ => self.reply(&tx.unknown_command(cmd)),
        }
    }

    fn quit(&mut self) {
        self.reply(self.config.texts.bye());
        self.leave();
    }

    /// Answers a line of a logged-in client in order with the broker's output (see
    /// `Request::Echo`); before login, directly.
    fn reply(&mut self, s: &str) {
        if self.state == State::Chatting && self.ipc.is_some() {
            self.send(Request::Echo {
                text: s.to_string(),
            });
        } else {
            self.say(s);
        }
    }

    fn read_ipc(&mut self, buf: &mut [u8]) {
        let Some(ipc) = &mut self.ipc else { return };
        let gone = match ipc.read(buf) {
            Ok(0) => true,
            Ok(n) => {
                self.ipc_in.extend(&buf[..n]);
                self.broker_heard();
                false
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                false
            }
            Err(_) => true,
        };
        loop {
            match self.ipc_in.next_event() {
                Ok(Some(ev)) => self.on_event(ev),
                Ok(None) => break,
                Err(e) => {
                    log::error!("chat: {}: from the broker: {e}", self.who());
                    self.say(self.config.texts.internal_error());
                    self.finish();
                    return;
                }
            }
        }
        if gone && self.ipc.is_some() {
            self.broker_gone();
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Accepted { room } => {
                self.registering_since = None;
                self.room = room;
                let was = self.state;
                self.state = State::Chatting;
                self.set_title();
                if was == State::Restoring {
                    self.say(&self.config.texts.back(&self.room));
                } else {
                    log::debug!("chat: {} logged in from {}", self.name, self.client.peer());
                    self.say(&self.config.texts.welcome(&self.name));
                }
            }
            Event::Refused { reason } => {
                self.registering_since = None;
                if self.state == State::Restoring {
                    self.say(&self.config.texts.could_not_rejoin(&reason));
                    self.finish();
                } else {
                    self.name.clear();
                    self.state = State::Name;
                    self.say(&format!("error: {reason}\n"));
                    self.say(self.config.texts.username_prompt());
                }
            }
            Event::Text { text } => self.say(&text),
            Event::Moved { room } => {
                self.room = room;
                self.set_title();
            }
            Event::Close { text } => {
                self.say(&text);
                self.ipc = None;
                self.finish();
            }
            Event::Pong => {}
        }
    }

    /// `forkserve: chat worker PEER [NAME in ROOM]` for ps, in a forked worker (under
    /// the thread model the title belongs to the whole server process).
    fn set_title(&self) {
        let ctx = self.client.context();
        if ctx.model == Model::Fork {
            proctitle::set_title(&format!(
                "{}: {} worker {} [{} in {}]",
                proctitle::name(),
                ctx.service,
                self.client.peer(),
                self.name,
                self.room
            ));
        }
    }

    /// The broker's connection ended without a Close: it died. Reconnect, and put
    /// the user back where they were.
    fn broker_gone(&mut self) {
        self.ipc = None;
        self.ipc_in = InBuf::default();
        self.ipc_out.clear();
        if self.done.is_some() || self.state == State::Leaving {
            self.finish();
            return;
        }
        let restoring = matches!(self.state, State::Chatting | State::Restoring);
        if restoring {
            self.say(self.config.texts.restarting());
        }
        log::debug!("chat: {}: broker connection lost; reconnecting", self.who());
        match connect_broker(self.config) {
            Ok(s) => {
                self.ipc = Some(s);
                self.heartbeat.reset(Instant::now());
            }
            Err(e) => {
                log::error!(
                    "chat: {}: broker unreachable after a restart: {e}",
                    self.who()
                );
                self.say(self.config.texts.unavailable());
                self.finish();
                return;
            }
        }
        match self.state {
            State::Chatting | State::Restoring => self.register(true),
            State::Registering => self.register(false),
            _ => {}
        }
    }
}

/// `quit` or `/quit`, in any case (the reference compares `message.lower()`).
fn is_quit(line: &str) -> bool {
    line.eq_ignore_ascii_case("quit") || line.eq_ignore_ascii_case("/quit")
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The broker-connection side of the heartbeat (`heartbeat.rs`): ping a quiet
/// broker, tell the client when it stalls and when it answers again, and bound the
/// queue of requests meanwhile.
impl Worker<'_> {
    /// When the heartbeat needs the loop again (None: no broker connection).
    fn heartbeat_due(&self) -> Option<Instant> {
        (self.ipc.is_some() && self.done.is_none()).then(|| self.heartbeat.due())
    }

    fn beat(&mut self) {
        if self.heartbeat_due().is_none() {
            return;
        }
        match self.heartbeat.check(Instant::now()) {
            Beat::Idle => {}
            Beat::Ping => self.send(Request::Ping),
            Beat::Stalled => {
                log::warn!(
                    "chat: {}: the broker has not answered for {}s",
                    self.who(),
                    (heartbeat::QUIET + heartbeat::PATIENCE).as_secs()
                );
                if self.state == State::Chatting {
                    self.say(self.config.texts.stalled());
                }
            }
        }
    }

    fn broker_heard(&mut self) {
        if self.heartbeat.heard(Instant::now()) {
            log::info!("chat: {}: the broker answers again", self.who());
            if self.state == State::Chatting {
                self.say(self.config.texts.answering_again());
            }
        }
    }

    /// Appends `req` to the queue for the broker, unless the queue is over its bound
    /// (a stalled broker): then the client is told its line was not sent. `Quit`
    /// and `Ping` always go.
    fn queue_for_broker(&mut self, req: &Request) -> bool {
        let small = matches!(req, Request::Quit | Request::Ping);
        if !small && self.ipc_out.len() >= heartbeat::MAX_QUEUED {
            self.say(self.config.texts.line_not_sent());
            return false;
        }
        req.encode(&mut self.ipc_out);
        true
    }
}
