//! The master: binds everything, then one thread and one poll(2) loop over the
//! listeners of fork-model services and the signal self-pipe. It accepts, forks,
//! reaps, restarts server processes and companions, keeps its title current, and
//! drains on SIGTERM. It never runs handler code.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::children::{Backoff, Children, Reaped, Role, SourceCounts};
use super::control::{self, ControlServer};
use super::counters::{Counters, LatencyBoard};
use super::lifecycle::{self, Handover};
use super::pending::{Held, Pending};
use super::pool::{self, Growth};
use super::scoreboard;
use super::signals::Signals;
use super::spare::{self, Spares};
use super::{Error, Reloader, Server, Service, fork};
use crate::addr::ListenAddr;
use crate::handler::{Context, Model};
use crate::listener::AcceptErrors;
use crate::listener::Listener;
use crate::logging::RateLimitedLog;
use crate::proctitle;
use crate::sys::{self, ExitStatus, Forked};
use crate::systemd::{self, Notifier, PassedFd};

/// Poll slots before the control sockets: the signal pipe and the SIGCHLD signalfd.
const FIRST_CONTROL: usize = 2;

/// The title's counts are rewritten at most this often: the rewrite dirties a
/// page that every fork then has to copy.
const TITLE_INTERVAL: Duration = Duration::from_millis(100);

/// A service as the master runs it.
pub(crate) struct Svc {
    pub conf: Service,
    pub listeners: Vec<Listener>,
    pub contexts: Vec<Context>,
    pub active: usize,
    pub sources: SourceCounts,
    pub slots: Vec<(Option<i32>, Backoff)>,
    pub companions: Vec<(Option<i32>, Backoff)>,
    pub refusals: RateLimitedLog,
    pub served: u64,
    pub title_prefix: String,
    pub counters: Counters,
    /// `ctl drain`: not accepting until `ctl resume`.
    pub draining: bool,
    /// Removed or replaced by a reload: its workers finish, nothing new starts.
    pub retired: bool,
}

impl Svc {
    /// True when the master itself accepts for this service (fork model).
    fn master_accepts(&self) -> bool {
        self.conf.model == Model::Fork && !self.draining && !self.retired
    }

    /// The unchanging part of this service's piece of the master's title.
    pub fn title_prefix(&self) -> String {
        let model = match self.conf.model {
            Model::Fork => String::new(),
            Model::Prefork => format!(" [prefork {}]", self.conf.workers),
            m => format!(" [{m}]"),
        };
        format!(
            "{} {}{model}",
            self.conf.name,
            crate::listener::addrs_text(&self.listeners)
        )
    }
}

struct Shutdown {
    /// When to SIGTERM remaining workers (end of the drain).
    deadline: Instant,
    /// When SIGTERM went to the workers; SIGKILL follows 2 s later.
    term_sent: Option<Instant>,
    killed: bool,
    /// When companions were told to stop.
    companions_stopping: Option<Instant>,
}

pub(crate) struct Master {
    pub svcs: Vec<Svc>,
    pub children: Children,
    pub signals: Signals,
    pub notifier: Notifier,
    drain_timeout: Duration,
    shutdown: Option<Shutdown>,
    pub title_dirty: bool,
    title: String,
    last_title: Instant,
    pollfds: Vec<sys::PollFd>,
    pollmap: Vec<(usize, usize)>,
    pub dgram_buf: Vec<u8>,
    pub accept_paused_until: Option<Instant>,
    pub accept_errors: AcceptErrors,
    pub pending: Pending,
    pub held: Held,
    pub fork_failures: RateLimitedLog,
    last_status: Option<Instant>,
    last_watchdog: Instant,
    pub served_total: u64,
    /// Where the control sockets start in `pollfds`, and how many there are.
    control_polled: usize,
    pub control: ControlServer,
    pub board: LatencyBoard,
    pub reloader: Option<Reloader>,
    pub socket_mode: u32,
    pub argv: Vec<std::ffi::OsString>,
    pub upgrade_check: Vec<std::ffi::OsString>,
    /// The binary to re-execute: the path this one was started from.
    pub exe: std::path::PathBuf,
    pub upgrades: u64,
    pub upgrade_requested: bool,
    pub last_upgrade_error: Option<String>,
    pub started: Instant,
    pub spares: Spares,
    pub growth: Growth,
}

/// Entry point of [`Server::run`].
pub(crate) fn run(server: Server) -> Result<(), Error> {
    install_panic_hook();
    if server.services.is_empty() {
        return Err(Error::new(Error::USAGE, "no service to run"));
    }
    spare::check(&server.services)?;
    let notifier = Notifier::from_env();
    let mut passed = systemd::take_listen_fds();
    let mut handover = lifecycle::take_handover();
    if let Some(h) = &mut handover {
        passed.append(&mut h.passed);
    }
    crate::proctitle::unsetenv(systemd::ACTIVATED_ENV);
    let signals =
        Signals::install().map_err(|e| Error::new(Error::OSERR, format!("signals: {e}")))?;

    if server.inetd {
        return fork::serve_inetd(&server, None);
    }
    if passed.len() == 1 && passed[0].is_connection() {
        let pf = passed.into_iter().next().unwrap();
        return fork::serve_inetd(&server, Some(pf));
    }

    // An unknown --user or --group is refused before anything is bound.
    let run_as = resolve_user(&server)?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(Error::OSERR, format!("the path of this binary: {e}")))?;
    let mut svcs = bind_all(&server, passed, handover.as_mut())?;
    let control_path = server.control.clone().or_else(control::default_path);
    let control = ControlServer::bind(
        control_path.as_deref(),
        server.control.is_some(),
        server.metrics_listen.as_ref(),
        handover.as_mut(),
    )
    .map_err(|e| Error::new(Error::UNAVAILABLE, e))?;
    if let Some(h) = &mut handover {
        for (service, addr, _, created) in h.listeners.drain(..) {
            log::warn!("upgrade: {service} {addr} is no longer configured; closing it");
            if let Some(p) = created {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    scoreboard::share(&mut svcs, &server.services)?;
    for svc in &svcs {
        for l in &svc.listeners {
            log::info!("{}: listening on {}", svc.conf.name, l.addr());
        }
    }
    if let Some((user, gid)) = run_as {
        drop_privileges(&user, gid, &svcs)?;
    }

    let mut master = Master {
        svcs,
        children: Children::with_capacity(server.services.iter().map(|s| s.max_children).sum()),
        signals,
        notifier,
        drain_timeout: server.drain_timeout,
        shutdown: None,
        title_dirty: true,
        title: String::with_capacity(512),
        last_title: Instant::now(),
        pollfds: Vec::new(),
        pollmap: Vec::new(),
        dgram_buf: Vec::with_capacity(65536),
        accept_paused_until: None,
        accept_errors: AcceptErrors::default(),
        pending: Pending::default(),
        held: Held::default(),
        fork_failures: RateLimitedLog::default(),
        last_status: None,
        last_watchdog: Instant::now(),
        served_total: 0,
        control_polled: 0,
        control,
        board: LatencyBoard::new(),
        reloader: server.reloader,
        socket_mode: server.socket_mode,
        argv: server.argv,
        upgrade_check: server.upgrade_check,
        exe,
        upgrades: handover.as_ref().map_or(0, |h| h.upgrades),
        upgrade_requested: false,
        last_upgrade_error: None,
        started: Instant::now(),
        spares: Spares::default(),
        growth: Growth::default(),
    };
    if let Some(h) = &handover {
        master.adopt_children(h);
    }
    for svc in &mut master.svcs {
        svc.title_prefix = svc.title_prefix();
    }
    sys::set_comm(proctitle::name());
    master.update_title();
    for i in 0..master.svcs.len() {
        for c in 0..master.svcs[i].companions.len() {
            master.spawn_companion(i, c);
        }
        // Prefork slots beyond --workers start only under load (pool.rs).
        let first = master.svcs[i].slots.len().min(master.svcs[i].conf.workers);
        for s in 0..first {
            master.spawn_server(i, s);
        }
    }
    master.fill_spares();
    if let Some(fd) = server.ready_fd.filter(|_| handover.is_none()) {
        signal_ready_fd(fd);
    }
    master.notifier.notify("READY=1\nSTATUS=serving");
    log::info!(
        "master {} started: {} service(s)",
        sys::getpid(),
        master.svcs.len()
    );
    master.run_loop();
    master.cleanup_files();
    log::info!("master {} exiting", sys::getpid());
    Ok(())
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        log::error!("panic in thread '{name}': {info}");
    }));
}

fn signal_ready_fd(fd: RawFd) {
    let Some(owned) = sys::adopt_fd(fd) else {
        log::warn!("--ready-fd {fd}: not an open descriptor");
        return;
    };
    let mut f = std::fs::File::from(owned);
    if let Err(e) = std::io::Write::write_all(&mut f, b"\n") {
        log::warn!("--ready-fd {fd}: {e}");
    }
}

/// Binds (or takes from systemd) every listener of every service, checking that
/// each service got sockets of its kind. Nothing has forked yet.
fn bind_all(
    server: &Server,
    passed: Vec<PassedFd>,
    mut handover: Option<&mut Handover>,
) -> Result<Vec<Svc>, Error> {
    let activated = !passed.is_empty();
    let mut passed: Vec<Option<PassedFd>> = passed.into_iter().map(Some).collect();
    let mut svcs = Vec::new();
    let mut errors = Vec::new();
    for conf in &server.services {
        let mut listeners = Vec::new();
        let mut wanted_names: Vec<&str> = conf
            .addrs
            .iter()
            .filter_map(|a| match a {
                ListenAddr::Systemd(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        // A service with no address of its own takes the fds named after it.
        let by_own_name = conf.addrs.is_empty()
            || (passed.iter().flatten().any(|p| p.name == conf.name) && wanted_names.is_empty());
        if by_own_name {
            wanted_names.push(&conf.name);
        }
        for name in &wanted_names {
            let mut found = false;
            for slot in passed.iter_mut() {
                if slot.as_ref().is_some_and(|p| p.name == *name) {
                    let p = slot.take().unwrap();
                    found = true;
                    match Listener::from_inherited(p.fd) {
                        Ok(l) => listeners.push(l),
                        Err(e) => errors.push(format!("systemd:{name}: {e}")),
                    }
                }
            }
            if !found
                && conf
                    .addrs
                    .iter()
                    .any(|a| a == &ListenAddr::Systemd(name.to_string()))
            {
                errors.push(format!(
                    "systemd:{name}: no socket named '{name}' was passed by systemd"
                ));
            }
        }
        let take_defaults = listeners.is_empty() || !by_own_name;
        if take_defaults {
            for addr in &conf.addrs {
                if matches!(addr, ListenAddr::Systemd(_)) {
                    continue;
                }
                if let Some(l) = handover
                    .as_deref_mut()
                    .and_then(|h| h.take_listener(&conf.name, addr))
                {
                    listeners.push(l);
                    continue;
                }
                match Listener::bind(addr, server.socket_mode) {
                    Ok(l) => listeners.push(l),
                    Err(e) => errors.push(e),
                }
            }
        }
        for l in &listeners {
            if l.is_stream() != conf.is_stream() {
                errors.push(format!(
                    "{}: {} is a {} socket but the {} service needs {} sockets",
                    conf.name,
                    l.addr(),
                    if l.is_stream() { "stream" } else { "datagram" },
                    conf.name,
                    if conf.is_stream() {
                        "stream"
                    } else {
                        "datagram"
                    }
                ));
            }
        }
        if let Some(bytes) = conf.recv_buffer {
            for l in listeners.iter().filter(|l| !l.is_stream()) {
                match l.set_recv_buffer(bytes) {
                    Ok(got) => {
                        log::debug!("{}: {}: receive buffer {got} bytes", conf.name, l.addr())
                    }
                    Err(e) => log::warn!(
                        "{}: {}: setting the receive buffer: {e}",
                        conf.name,
                        l.addr()
                    ),
                }
            }
        }
        if listeners.is_empty() && conf.addrs.is_empty() && activated {
            log::info!(
                "{}: systemd passed no socket named '{}'; service not started",
                conf.name,
                conf.name
            );
            continue;
        }
        if listeners.is_empty() && errors.is_empty() {
            errors.push(format!("{}: no address to listen on", conf.name));
        }
        svcs.push(lifecycle::new_svc(conf.clone(), listeners));
    }
    let unmatched: Vec<String> = passed
        .iter()
        .flatten()
        .map(|p| format!("fd {} named '{}'", p.fd.as_raw_fd(), p.name))
        .collect();
    if !unmatched.is_empty() {
        errors.push(format!(
            "systemd passed sockets no service takes: {} (name them after a service with FileDescriptorName=, or use --listen systemd:NAME)",
            unmatched.join(", ")
        ));
    }
    if svcs.is_empty() && errors.is_empty() {
        errors.push("no service has a socket to listen on".to_string());
    }
    if !errors.is_empty() {
        // Remove whatever was created before failing.
        for svc in &mut svcs {
            for l in &mut svc.listeners {
                l.remove_file();
            }
        }
        return Err(Error::new(Error::UNAVAILABLE, errors.join("\n")));
    }
    Ok(svcs)
}

/// The user (and group id) of `--user`/`--group`, looked up; None without `--user`.
fn resolve_user(server: &Server) -> Result<Option<(crate::users::User, u32)>, Error> {
    let Some(name) = &server.user else {
        if server.group.is_some() {
            return Err(Error::new(Error::USAGE, "--group needs --user"));
        }
        return Ok(None);
    };
    let user = crate::users::lookup_user(name)
        .map_err(|e| Error::new(Error::OSERR, format!("--user {name}: {e}")))?
        .ok_or_else(|| Error::new(Error::CONFIG, format!("--user {name}: no such user")))?;
    let gid = match &server.group {
        Some(g) => crate::users::lookup_group(g)
            .map_err(|e| Error::new(Error::OSERR, format!("--group {g}: {e}")))?
            .ok_or_else(|| Error::new(Error::CONFIG, format!("--group {g}: no such group")))?,
        None => user.gid,
    };
    Ok(Some((user, gid)))
}

fn drop_privileges(user: &crate::users::User, gid: u32, svcs: &[Svc]) -> Result<(), Error> {
    let name = &user.name;
    for svc in svcs {
        for l in &svc.listeners {
            if let Err(e) = l.chown_file(user.uid, gid) {
                log::warn!("chown {}: {e}", l.addr());
            }
            if !l.removable_by(user.uid, gid) {
                log::warn!(
                    "{}: {name} cannot write to its directory, so the socket file stays behind at exit (it is replaced at the next start); put it in a directory {name} owns, such as the default runtime directory",
                    l.addr()
                );
            }
        }
    }
    if sys::geteuid() == user.uid && sys::geteuid() != 0 {
        // Already the user: a master re-executed by an upgrade after dropping them.
        log::info!("running as {name} (uid {}, gid {gid})", user.uid);
        return Ok(());
    }
    let groups = crate::users::supplementary_groups(&user.name, gid)
        .map_err(|e| Error::new(Error::OSERR, format!("reading /etc/group: {e}")))?;
    sys::drop_privileges(user.uid, gid, &groups).map_err(|e| {
        Error::new(
            Error::OSERR,
            format!(
                "dropping privileges to {name} (uid {}, gid {gid}): {e}; refusing to serve",
                user.uid
            ),
        )
    })?;
    log::info!("running as {name} (uid {}, gid {gid})", user.uid);
    Ok(())
}

impl Master {
    /// Rewrites the title with the current counts. The per-service text is built
    /// once; a connection costs a few digits formatted into a reused buffer.
    fn update_title(&mut self) {
        use std::fmt::Write as _;
        self.title.clear();
        self.title.push_str(proctitle::name());
        self.title.push_str(": master ");
        for (i, svc) in self.svcs.iter().filter(|s| !s.retired).enumerate() {
            if i > 0 {
                self.title.push_str("; ");
            }
            self.title.push_str(&svc.title_prefix);
            if svc.conf.model == Model::Fork {
                let _ = write!(self.title, " [{}/{}]", svc.active, svc.conf.max_children);
            }
            if svc.draining {
                self.title.push_str(" [draining]");
            }
        }
        proctitle::set_title(&self.title);
        self.title_dirty = false;
        self.last_title = Instant::now();
    }

    /// Closes, in a child, every descriptor of the master it must not keep: every
    /// listener (except those of `keep_service`), the signal pipe, the notify
    /// socket, connections waiting for a fork, and companion fds (except those of
    /// companion `keep_companion`).
    /// Allocates nothing: a worker should touch as few pages as it can.
    pub fn close_inherited(
        &self,
        keep_service: Option<usize>,
        keep_companion: Option<(usize, usize)>,
    ) {
        for fd in self.signals.raw_fds() {
            sys::close_fd(fd);
        }
        if let Some(fd) = self.notifier.raw_fd() {
            sys::close_fd(fd);
        }
        let waiting = self.pending.raw_fds().chain(self.held.raw_fds());
        for fd in waiting.chain(self.spares.raw_fds()) {
            sys::close_fd(fd);
        }
        for fd in self.control.raw_fds() {
            sys::close_fd(fd);
        }
        for (i, svc) in self.svcs.iter().enumerate() {
            if Some(i) != keep_service {
                for fd in super::raw_fds(&svc.listeners) {
                    sys::close_fd(fd);
                }
            }
            for (c, comp) in svc.conf.companions.iter().enumerate() {
                if keep_companion != Some((i, c)) {
                    for &fd in &comp.fds {
                        sys::close_fd(fd);
                    }
                }
            }
        }
    }

    fn run_loop(&mut self) {
        let wait_mask = self.signals.block();
        // Start-up (argument parsing, binding) leaves freed heap pages behind.
        sys::release_free_memory();
        let mut poll_errors = RateLimitedLog::default();
        loop {
            if self.title_dirty && self.last_title.elapsed() >= TITLE_INTERVAL {
                self.update_title();
            }
            self.build_pollfds();
            let timeout = self.next_timeout();
            if let Err(e) = sys::ppoll(&mut self.pollfds, timeout, &wait_mask) {
                poll_errors.log(|n| log::error!("poll: {e}{}", RateLimitedLog::more(n)));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            if self.pollfds[0].revents != 0 {
                self.signals.drain();
            }
            if self.pollfds[1].revents != 0 {
                self.reap();
            }
            self.handle_signals();
            let first_listener = FIRST_CONTROL + self.control_polled;
            if self.control_polled > 0 {
                let revents: Vec<i16> = self.pollfds[FIRST_CONTROL..first_listener]
                    .iter()
                    .map(|p| p.revents)
                    .collect();
                if revents.iter().any(|&r| r != 0) {
                    let requests = self.control.serve(&revents);
                    self.answer_requests(requests);
                }
            }
            for k in first_listener..self.pollfds.len() {
                if self.pollfds[k].revents != 0 {
                    let (s, l) = self.pollmap[k - first_listener];
                    self.serve_ready(s, l);
                }
            }
            if std::mem::take(&mut self.upgrade_requested) {
                self.upgrade();
            }
            self.run_timers();
            if self.shutdown.is_some()
                && self.children.is_empty()
                && self.pending.is_empty()
                && self.held.is_empty()
            {
                return;
            }
        }
    }

    fn build_pollfds(&mut self) {
        self.pollfds.clear();
        self.pollmap.clear();
        self.pollfds
            .push(sys::pollfd(self.signals.fd(), sys::POLLIN));
        self.pollfds.push(sys::pollfd(
            self.signals.chld_fd().unwrap_or(-1),
            sys::POLLIN,
        ));
        self.control_polled = self.control.pollfds(&mut self.pollfds);
        // While forks fail, accepted connections wait: accept no more.
        if self.shutdown.is_some() || !self.pending.is_empty() {
            return;
        }
        if let Some(t) = self.accept_paused_until {
            if Instant::now() < t {
                return;
            }
            self.accept_paused_until = None;
        }
        for (i, svc) in self.svcs.iter().enumerate() {
            let watch = svc.master_accepts() && svc.active < svc.conf.max_children;
            if !watch && !self.pool_may_grow(i) {
                continue;
            }
            for (j, l) in svc.listeners.iter().enumerate() {
                self.pollfds.push(sys::pollfd(l.as_raw_fd(), sys::POLLIN));
                self.pollmap.push((i, j));
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        for svc in &self.svcs {
            for (pid, b) in svc.slots.iter().chain(svc.companions.iter()) {
                if pid.is_none()
                    && let Some(d) = b.due
                {
                    consider(d);
                }
            }
        }
        if let Some(t) = self.accept_paused_until {
            consider(t);
        }
        if let Some(t) = self.control.next_deadline() {
            consider(t);
        }
        if let Some(t) = self.pending.due() {
            consider(t);
        }
        if let Some(t) = self.held.next_expiry() {
            consider(t);
        }
        if let Some(t) = self.spares.due() {
            consider(t);
        }
        if self.spares.refill_wanted() {
            // Look for connections without waiting; fork a spare if there are none.
            consider(now);
        }
        if let Some(t) = self.growth.due() {
            consider(t);
        }
        if self.title_dirty {
            consider(self.last_title + TITLE_INTERVAL);
        }
        if let Some(sd) = &self.shutdown {
            if sd.term_sent.is_none() {
                consider(sd.deadline);
            }
            if let Some(t) = sd.term_sent
                && !sd.killed
            {
                consider(t + Duration::from_secs(2));
            }
            if let Some(t) = sd.companions_stopping {
                consider(t + Duration::from_secs(2));
            }
            // While draining, tell systemd we are still at it.
            consider(now + Duration::from_secs(1));
        }
        if self.notifier.enabled() {
            consider(now + Duration::from_secs(1));
            if let Some(w) = self.notifier.watchdog_interval() {
                consider(self.last_watchdog + w);
            }
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    fn handle_signals(&mut self) {
        let term = self.signals.take(libc::SIGTERM);
        let int = self.signals.take(libc::SIGINT);
        let quit = self.signals.take(libc::SIGQUIT);
        if self.signals.take(libc::SIGHUP) {
            log::info!("SIGHUP received: reloading the configuration");
            let _ = self.reload();
            self.reload_services();
        }
        if self.signals.take(libc::SIGUSR1) {
            log::info!(
                "status: {} children, {} served; {}",
                self.children.len(),
                self.served_total,
                self.counters_line()
            );
        }
        if self.signals.take(libc::SIGUSR2) {
            log::info!("SIGUSR2 received: upgrading the binary");
            self.upgrade_requested = true;
        }
        if quit || ((term || int) && self.shutdown.is_some()) {
            let why = if quit {
                "SIGQUIT"
            } else {
                "second stop signal"
            };
            self.stop_now(why);
        } else if term || int {
            self.begin_shutdown(if term { "SIGTERM" } else { "SIGINT" });
        }
    }

    /// SIGHUP: every context handed to a later connection carries one more reload,
    /// so services that keep configuration files re-read them there. Long-lived
    /// server processes (thread, sequential, prefork) were forked with the old
    /// count: they are asked to finish what they serve and exit, and are replaced.
    fn begin_shutdown(&mut self, why: &str) {
        log::info!(
            "{why}: shutting down; draining {} worker(s) and {} server process(es) for up to {}s",
            self.children
                .count_where(|r| matches!(r, Role::Worker { .. })),
            self.children
                .count_where(|r| matches!(r, Role::Server { .. })),
            self.drain_timeout.as_secs_f64()
        );
        self.notifier.notify("STOPPING=1\nSTATUS=draining");
        self.shutdown = Some(Shutdown {
            deadline: Instant::now() + self.drain_timeout,
            term_sent: None,
            killed: false,
            companions_stopping: None,
        });
        self.close_listeners();
        self.tell_companions_draining();
        // Server processes drain their own connections on SIGTERM.
        self.children
            .signal_where(libc::SIGTERM, |r| matches!(r, Role::Server { .. }));
    }

    /// Signals the companions that asked for it ([`Companion::drain_signal`](super::Companion::drain_signal)).
    fn tell_companions_draining(&self) {
        for svc in &self.svcs {
            for (conf, (pid, _)) in svc.conf.companions.iter().zip(&svc.companions) {
                if let (Some(sig), Some(pid)) = (conf.drain_signal, pid) {
                    sys::kill(*pid, sig);
                }
            }
        }
    }

    fn stop_now(&mut self, why: &str) {
        log::info!("{why}: stopping now");
        self.drop_pending();
        self.drop_held();
        if self.shutdown.is_none() {
            self.notifier.notify("STOPPING=1");
            self.close_listeners();
        }
        let now = Instant::now();
        self.shutdown = Some(Shutdown {
            deadline: now,
            term_sent: Some(now),
            killed: false,
            companions_stopping: Some(now),
        });
        self.children.signal_where(libc::SIGTERM, |_| true);
    }

    fn close_listeners(&mut self) {
        for svc in &mut self.svcs {
            for l in &mut svc.listeners {
                // Server processes hold copies of the listener: shut it down for
                // all of them, unless systemd owns it (it keeps it to restart us).
                if l.is_stream() && !l.is_inherited() {
                    sys::shutdown_read(l.as_fd());
                }
                l.remove_file();
            }
            svc.listeners.clear();
        }
        // Spares read end of file and exit.
        self.spares.close_all();
        self.title_dirty = true;
    }

    fn cleanup_files(&mut self) {
        self.close_listeners();
        self.control.close();
    }

    /// True once SIGTERM/SIGINT/SIGQUIT started the end.
    pub fn shutdown_started(&self) -> bool {
        self.shutdown.is_some()
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        if !self.pending.is_empty() {
            self.retry_pending(now);
        }
        if !self.held.is_empty() {
            self.serve_held(now);
        }
        if self.spares.due().is_some_and(|t| t <= now) {
            self.fill_spares();
        }
        let first_listener = (FIRST_CONTROL + self.control_polled).min(self.pollfds.len());
        let idle = self.pollfds[first_listener..]
            .iter()
            .all(|p| p.revents == 0);
        if idle && self.spares.refill_wanted() {
            self.fork_one_spare();
        }
        if self.growth.due().is_some_and(|t| t <= now) && self.shutdown.is_none() {
            self.pool_check(now);
        }
        if self.shutdown.is_none() {
            for i in 0..self.svcs.len() {
                if self.svcs[i].retired {
                    continue;
                }
                for c in 0..self.svcs[i].companions.len() {
                    let (pid, b) = &self.svcs[i].companions[c];
                    if pid.is_none() && b.due.is_some_and(|d| d <= now) {
                        self.spawn_companion(i, c);
                    }
                }
                for s in 0..self.svcs[i].slots.len() {
                    let (pid, b) = &self.svcs[i].slots[s];
                    if pid.is_none() && b.due.is_some_and(|d| d <= now) && !self.svcs[i].draining {
                        self.spawn_server(i, s);
                    }
                }
            }
        }
        if self.notifier.enabled() {
            if self
                .last_status
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.last_status = Some(now);
                let live = self
                    .children
                    .count_where(|r| matches!(r, Role::Worker { .. }));
                let mut msg = format!(
                    "STATUS={} {live} connection(s) live, {} served; {}",
                    if self.shutdown.is_some() {
                        "draining:"
                    } else {
                        "serving:"
                    },
                    self.served_total,
                    self.counters_line()
                );
                if self.shutdown.is_some() {
                    msg.push_str("\nEXTEND_TIMEOUT_USEC=3000000");
                }
                self.notifier.notify(&msg);
            }
            if let Some(w) = self.notifier.watchdog_interval()
                && now.duration_since(self.last_watchdog) >= w
            {
                self.last_watchdog = now;
                self.notifier.notify("WATCHDOG=1");
            }
        }
        self.advance_shutdown(now);
    }

    fn advance_shutdown(&mut self, now: Instant) {
        let Some(deadline) = self.shutdown.as_ref().map(|sd| sd.deadline) else {
            return;
        };
        if now >= deadline && !(self.pending.is_empty() && self.held.is_empty()) {
            // Still no process for them at the end of the drain.
            self.drop_pending();
            self.drop_held();
        }
        let Some(sd) = &mut self.shutdown else {
            return;
        };
        let not_companion = |r: &Role| !matches!(r, Role::Companion { .. });
        let serving = self.children.count_where(not_companion);
        if serving > 0 {
            match sd.term_sent {
                None if now >= sd.deadline => {
                    log::info!("drain timeout: sending SIGTERM to {serving} child(ren)");
                    sd.term_sent = Some(now);
                    self.children.signal_where(libc::SIGTERM, not_companion);
                }
                Some(t) if !sd.killed && now >= t + Duration::from_secs(2) => {
                    log::warn!("sending SIGKILL to {serving} child(ren) still running");
                    sd.killed = true;
                    self.children.signal_where(libc::SIGKILL, not_companion);
                }
                _ => {}
            }
            return;
        }
        // Workers are gone: now the companions (they served the workers).
        match sd.companions_stopping {
            None => {
                sd.companions_stopping = Some(now);
                self.children.signal_where(libc::SIGTERM, |_| true);
            }
            Some(t) if now >= t + Duration::from_secs(2) => {
                self.children.signal_where(libc::SIGKILL, |_| true);
            }
            _ => {}
        }
    }

    fn reap(&mut self) {
        self.signals.take_chld();
        while let Some(r) = self.children.reap_one() {
            self.on_child_exit(r);
        }
    }

    fn on_child_exit(&mut self, r: Reaped) {
        let stopping = self.shutdown.is_some();
        let expected_stop = stopping && matches!(r.status, ExitStatus::Signal(libc::SIGTERM));
        let abnormal = !(r.status.success() || expected_stop);
        let life = r.lifetime.as_secs_f64();
        match r.role {
            Role::Worker {
                service,
                peer,
                latency,
            } => {
                let first_byte = latency.and_then(|slot| self.board.release(slot));
                let svc = &mut self.svcs[service];
                svc.active -= 1;
                scoreboard::note_active(&svc.contexts, svc.active);
                svc.sources.remove(peer.source_key(), svc.conf.per_source);
                svc.counters.exited(r.status);
                if let Some(us) = first_byte {
                    svc.counters.first_byte.record(us);
                }
                self.title_dirty = true;
                if svc.retired {
                    self.stop_companions_if_idle(service);
                }
                let svc = &self.svcs[service];
                if abnormal {
                    log::warn!(
                        "{} worker {} (peer {peer}) {} after {life:.3}s",
                        svc.conf.name,
                        r.pid,
                        r.status
                    );
                } else {
                    log::debug!("{} worker {} done after {life:.3}s", svc.conf.name, r.pid);
                }
            }
            Role::Server { service, slot } => {
                let svc = &mut self.svcs[service];
                svc.slots[slot].0 = None;
                scoreboard::note_slot_free(&svc.contexts, slot);
                let what = format!(
                    "{} server process {} ({})",
                    svc.conf.name, r.pid, svc.conf.model
                );
                if svc.retired || svc.draining {
                    log::info!("{what} {} after {life:.1}s", r.status);
                    if svc.retired {
                        self.stop_companions_if_idle(service);
                    }
                } else if stopping {
                    log::info!("{what} {} after {life:.1}s", r.status);
                } else if pool::is_extra(&svc.conf, slot) {
                    // Started under load: started again only under load.
                    log::info!("{what} {} after {life:.1}s; not replaced", r.status);
                } else if r.status.success() {
                    // A planned exit (a prefork worker recycled after
                    // --max-requests) is no failure: replaced at once, and the
                    // back-off is left as it was.
                    log::info!("{what} exited after {life:.1}s; replacing it");
                    svc.slots[slot].1.due = Some(Instant::now());
                } else {
                    let delay = svc.slots[slot].1.schedule(r.lifetime);
                    log::warn!(
                        "{what} {} after {life:.1}s; restarting in {:.1}s",
                        r.status,
                        delay.as_secs_f64()
                    );
                }
            }
            Role::Spare { service } => self.spare_exited(service, r.pid, r.status),
            Role::Companion { service, index } => {
                let svc = &mut self.svcs[service];
                svc.companions[index].0 = None;
                let name = &svc.conf.companions[index].name;
                if stopping || svc.retired {
                    log::info!(
                        "{} {name} {} {} after {life:.1}s",
                        svc.conf.name,
                        r.pid,
                        r.status
                    );
                } else {
                    let delay = svc.companions[index].1.schedule(r.lifetime);
                    log::warn!(
                        "{} {name} {} {} after {life:.1}s; restarting in {:.1}s",
                        svc.conf.name,
                        r.pid,
                        r.status,
                        delay.as_secs_f64()
                    );
                }
            }
            Role::Inherited {
                service,
                role,
                peer,
            } => {
                if role == "worker"
                    && let Some(s) = service
                {
                    self.svcs[s].active -= 1;
                    self.svcs[s].counters.exited(r.status);
                    self.title_dirty = true;
                }
                log::debug!(
                    "{role} {} of the previous image ({peer}) {} after {life:.1}s",
                    r.pid,
                    r.status
                );
                if let Some(s) = service {
                    self.stop_companions_if_idle(s);
                }
            }
        }
    }

    pub(super) fn spawn_server(&mut self, s: usize, slot: usize) {
        self.svcs[s].slots[slot].1.due = None;
        match sys::fork() {
            Ok(Forked::Child) => fork::run_server_process(self, s, slot),
            Ok(Forked::Parent(pid)) => {
                self.svcs[s].slots[slot].0 = Some(pid);
                self.children.insert(pid, Role::Server { service: s, slot });
                log::debug!(
                    "{}: server process {pid} started ({})",
                    self.svcs[s].conf.name,
                    self.svcs[s].conf.model
                );
            }
            Err(e) => {
                let d = self.svcs[s].slots[slot].1.schedule(Duration::ZERO);
                log::error!(
                    "{}: fork of server process failed: {e}; retrying in {:.1}s",
                    self.svcs[s].conf.name,
                    d.as_secs_f64()
                );
            }
        }
    }

    pub(super) fn spawn_companion(&mut self, s: usize, c: usize) {
        self.svcs[s].companions[c].1.due = None;
        let run = Arc::clone(&self.svcs[s].conf.companions[c].run);
        match sys::fork() {
            Ok(Forked::Child) => fork::run_companion(self, s, c, run),
            Ok(Forked::Parent(pid)) => {
                self.svcs[s].companions[c].0 = Some(pid);
                self.children.insert(
                    pid,
                    Role::Companion {
                        service: s,
                        index: c,
                    },
                );
                log::info!(
                    "{}: {} started as pid {pid}",
                    self.svcs[s].conf.name,
                    self.svcs[s].conf.companions[c].name
                );
            }
            Err(e) => {
                let d = self.svcs[s].companions[c].1.schedule(Duration::ZERO);
                log::error!(
                    "{}: fork of companion failed: {e}; retrying in {:.1}s",
                    self.svcs[s].conf.name,
                    d.as_secs_f64()
                );
            }
        }
    }
}
