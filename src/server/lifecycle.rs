//! Changing a running master: live reload (SIGHUP, `ctl reload`), drain, resume
//! and limits per service, the binary upgrade by re-executing in place (SIGUSR2,
//! `ctl upgrade`), and the answers to the control socket's requests.
//!
//! Reload: the [`Reloader`](super::Reloader) re-reads the configuration; services
//! whose fingerprint is unchanged keep everything (a change of limits is applied
//! in place); a changed service is rebuilt and takes over the listeners whose
//! address it keeps; a removed one stops accepting, and its workers finish. All
//! building and binding happens before anything changes, so a broken file or an
//! address in use leaves the running configuration as it was.
//!
//! Upgrade: the new binary is first run with a check (`check-config FILE`, or
//! `--version`); then the master writes its listeners and live children to a memfd,
//! clears close-on-exec on the listeners and re-executes itself. Same pid: the
//! children stay its children and systemd's MAINPID holds. The new image takes the
//! listeners back instead of binding, and counts the old workers until they exit.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Service;
use super::children::{Backoff, Role, SourceCounts};
use super::control::{Kind, Request, metrics_response};
use super::counters::{self, Counters};
use super::master::{Master, Svc};
use crate::addr::ListenAddr;
use crate::handler::{Context, Model};
use crate::listener::Listener;
use crate::logging::RateLimitedLog;
use crate::sys;

/// The environment variable naming the memfd with the previous image's state.
const HANDOVER_ENV: &str = "FORKSERVE_UPGRADE_FD";

/// What the previous image handed over.
#[derive(Default)]
pub(crate) struct Handover {
    pub upgrades: u64,
    /// (service, configured address, fd, socket file it created)
    pub listeners: Vec<(String, String, OwnedFd, Option<PathBuf>)>,
    /// (pid, service, role, peer, age)
    pub children: Vec<(i32, String, String, String, Duration)>,
    /// Sockets systemd passed to the first image, with the names they go by.
    pub passed: Vec<crate::systemd::PassedFd>,
    /// Counters by service name, connections served, and the master's age.
    pub counters: serde_json::Map<String, Value>,
    pub served: u64,
    pub age: Duration,
}

/// Reads (and forgets) the state a previous image left, if this image was
/// re-executed by an upgrade.
pub(crate) fn take_handover() -> Option<Handover> {
    let fd: RawFd = std::env::var(HANDOVER_ENV).ok()?.parse().ok()?;
    crate::proctitle::unsetenv(HANDOVER_ENV);
    let owned = sys::adopt_fd(fd)?;
    let mut f = std::fs::File::from(owned);
    let mut text = String::new();
    if let Err(e) = f.rewind().and_then(|_| f.read_to_string(&mut text)) {
        log::error!("upgrade: reading the handed-over state: {e}");
        return None;
    }
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            log::error!("upgrade: the handed-over state is not valid: {e}");
            return None;
        }
    };
    let mut h = Handover {
        upgrades: v["upgrades"].as_u64().unwrap_or(0),
        counters: v["counters"].as_object().cloned().unwrap_or_default(),
        served: v["served"].as_u64().unwrap_or(0),
        age: Duration::from_millis(v["age_ms"].as_u64().unwrap_or(0)),
        ..Handover::default()
    };
    for l in v["listeners"].as_array().into_iter().flatten() {
        let Some(fd) = l["fd"].as_i64().and_then(|f| sys::adopt_fd(f as RawFd)) else {
            continue;
        };
        let _ = sys::set_cloexec(fd.as_fd(), true);
        if let Some(name) = l["systemd_name"].as_str() {
            h.passed.push(crate::systemd::PassedFd {
                name: name.to_string(),
                fd,
            });
            continue;
        }
        h.listeners.push((
            l["service"].as_str().unwrap_or("").to_string(),
            l["addr"].as_str().unwrap_or("").to_string(),
            fd,
            l["created"].as_str().map(PathBuf::from),
        ));
    }
    for c in v["children"].as_array().into_iter().flatten() {
        h.children.push((
            c["pid"].as_i64().unwrap_or(0) as i32,
            c["service"].as_str().unwrap_or("").to_string(),
            c["role"].as_str().unwrap_or("").to_string(),
            c["peer"].as_str().unwrap_or("").to_string(),
            Duration::from_millis(c["age_ms"].as_u64().unwrap_or(0)),
        ));
    }
    Some(h)
}

impl Handover {
    /// The handed-over listener for `addr` of `service`, if any.
    pub fn take_listener(&mut self, service: &str, addr: &ListenAddr) -> Option<Listener> {
        let want = addr.to_string();
        let i = self
            .listeners
            .iter()
            .position(|(s, a, _, _)| s == service && *a == want)?;
        let (_, _, fd, created) = self.listeners.swap_remove(i);
        match Listener::handed_over(fd, created) {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!("{service}: the handed-over socket for {addr}: {e}; binding anew");
                None
            }
        }
    }
}

/// Makes the master's record of a service (before its processes start).
pub(crate) fn new_svc(conf: Service, listeners: Vec<Listener>) -> Svc {
    let contexts = listeners
        .iter()
        .map(|l| Context {
            service: conf.name.clone(),
            model: conf.model,
            idle_timeout: conf.idle_timeout,
            local: l.addr().to_string(),
            reloads: 0,
            listener: None,
            load: None,
        })
        .collect();
    let nslots = match conf.model {
        Model::Fork => 0,
        Model::Prefork => super::pool::slots(&conf),
        Model::Thread | Model::Sequential => 1,
    };
    Svc {
        listeners,
        contexts,
        active: 0,
        sources: SourceCounts::default(),
        slots: vec![(None, Backoff::default()); nslots],
        companions: vec![(None, Backoff::default()); conf.companions.len()],
        refusals: RateLimitedLog::default(),
        served: 0,
        title_prefix: String::new(),
        counters: Counters::default(),
        draining: false,
        retired: false,
        conf,
    }
}

/// A service a reload will add or replace, built and bound but not yet running.
struct Prepared {
    old: Option<usize>,
    conf: Service,
    /// Per address: a new listener, or the index of the old service's listener.
    listeners: Vec<Result<Listener, usize>>,
}

impl Master {
    /// Reloads the configuration; the message says what happened.
    pub(super) fn reload(&mut self) -> Result<String, String> {
        let started = Instant::now();
        self.notifier.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            sys::monotonic_usec()
        ));
        let result = self.try_reload();
        self.notifier.notify("READY=1\nSTATUS=serving");
        match &result {
            Ok(msg) => log::info!(
                "reload: {msg} ({:.1} ms)",
                started.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => log::error!("reload failed, the running configuration stays: {e}"),
        }
        result
    }

    fn try_reload(&mut self) -> Result<String, String> {
        if self.shutdown_started() {
            return Err("shutting down".into());
        }
        let Some(reloader) = &self.reloader else {
            return Err("no --config: nothing to reload".into());
        };
        let plan = reloader().map_err(|e| e.message)?;
        let live: HashMap<String, usize> = self
            .svcs
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.retired)
            .map(|(i, s)| (s.conf.name.clone(), i))
            .collect();
        // Phase 1: build and bind everything new; nothing running changes yet.
        let mut prepared = Vec::new();
        let mut limits = Vec::new();
        for p in plan {
            let old = live.get(&p.name).copied();
            if let Some(i) = old
                && self.svcs[i].conf.fingerprint.as_deref() == Some(p.fingerprint.as_str())
            {
                limits.push((i, p.max_children, p.max_per_source));
                continue;
            }
            let built = (p.build)().map_err(|e| e.message).and_then(|conf| {
                let conf = conf.fingerprint(p.fingerprint);
                self.bind_for(old, &conf).map(|l| (conf, l))
            });
            match built {
                Ok((conf, listeners)) => prepared.push(Prepared {
                    old,
                    conf,
                    listeners,
                }),
                Err(e) => {
                    for p in &mut prepared {
                        release(&mut p.listeners);
                    }
                    return Err(e);
                }
            }
        }
        // Phase 2: apply.
        let kept: Vec<usize> = limits.iter().map(|l| l.0).collect();
        let replaced: Vec<usize> = prepared.iter().filter_map(|p| p.old).collect();
        let removed: Vec<usize> = live
            .values()
            .copied()
            .filter(|i| !kept.contains(i) && !replaced.contains(i))
            .collect();
        let mut changed_limits = 0;
        for (i, max, per) in limits {
            let svc = &mut self.svcs[i];
            let per = super::PerSource::from_option(per);
            if svc.conf.max_children != max || svc.conf.per_source != per {
                svc.conf.max_children = max.max(1);
                svc.conf.per_source = per;
                changed_limits += 1;
            }
        }
        let (added, changed) = (
            prepared.iter().filter(|p| p.old.is_none()).count(),
            prepared.len() - prepared.iter().filter(|p| p.old.is_none()).count(),
        );
        for p in prepared {
            self.start_prepared(p);
        }
        for &i in &removed {
            log::info!(
                "{}: removed from the configuration; its workers finish",
                self.svcs[i].conf.name
            );
            self.retire(i);
        }
        self.title_dirty = true;
        Ok(format!(
            "{added} added, {changed} changed, {} removed, {changed_limits} with new limits, {} unchanged",
            removed.len(),
            kept.len() - changed_limits
        ))
    }

    /// Binds the addresses of `conf`, reusing the listeners of the old service
    /// `old` whose configured address is the same.
    fn bind_for(
        &self,
        old: Option<usize>,
        conf: &Service,
    ) -> Result<Vec<Result<Listener, usize>>, String> {
        let mut out: Vec<Result<Listener, usize>> = Vec::new();
        if conf.addrs.is_empty()
            && let Some(i) = old
        {
            // Socket-activated: the service keeps the sockets systemd passed.
            return Ok((0..self.svcs[i].listeners.len()).map(Err).collect());
        }
        for addr in &conf.addrs {
            let reuse = old.and_then(|i| {
                let o = &self.svcs[i];
                (o.listeners.len() == o.conf.addrs.len())
                    .then(|| o.conf.addrs.iter().position(|a| a == addr))
                    .flatten()
            });
            if let Some(j) = reuse {
                out.push(Err(j));
                continue;
            }
            let bound = Listener::bind(addr, self.socket_mode)
                .map_err(|e| format!("{}: {e}", conf.name))
                .and_then(|mut l| {
                    if l.is_stream() == conf.is_stream() {
                        return Ok(l);
                    }
                    l.remove_file();
                    Err(format!("{}: {addr} is the wrong kind of socket", conf.name))
                });
            match bound {
                Ok(l) => {
                    log::info!("{}: listening on {}", conf.name, l.addr());
                    out.push(Ok(l));
                }
                Err(e) => {
                    release(&mut out);
                    return Err(e);
                }
            }
        }
        if out.is_empty() {
            return Err(format!("{}: no address to listen on", conf.name));
        }
        Ok(out)
    }

    fn start_prepared(&mut self, p: Prepared) {
        // The old service's listeners: those the new one keeps move over, the
        // rest are closed when it retires.
        let mut old_listeners: Vec<Option<Listener>> = match p.old {
            Some(i) => std::mem::take(&mut self.svcs[i].listeners)
                .into_iter()
                .map(Some)
                .collect(),
            None => Vec::new(),
        };
        let listeners: Vec<Listener> = p
            .listeners
            .into_iter()
            .map(|l| l.unwrap_or_else(|j| old_listeners[j].take().expect("a kept listener")))
            .collect();
        if let Some(i) = p.old {
            self.svcs[i].listeners = old_listeners.into_iter().flatten().collect();
            log::info!(
                "{}: changed; new connections get the new settings, running ones finish",
                p.conf.name
            );
            self.retire(i);
        } else {
            log::info!("{}: added", p.conf.name);
        }
        let mut svc = new_svc(p.conf, listeners);
        svc.title_prefix = svc.title_prefix();
        self.svcs.push(svc);
        let s = self.svcs.len() - 1;
        for c in 0..self.svcs[s].companions.len() {
            self.spawn_companion(s, c);
        }
        for slot in 0..self.svcs[s].slots.len() {
            self.spawn_server(s, slot);
        }
    }

    /// Stops service `i` from accepting; its workers finish, its server processes
    /// drain, its companions stop once no worker of it is left.
    fn retire(&mut self, i: usize) {
        let svc = &mut self.svcs[i];
        svc.retired = true;
        for mut l in svc.listeners.drain(..) {
            if l.is_stream() && !l.is_inherited() {
                sys::shutdown_read(l.as_fd());
            }
            l.remove_file();
        }
        svc.contexts.clear();
        self.children.signal_where(
            libc::SIGTERM,
            |r| matches!(r, Role::Server { service, .. } if *service == i),
        );
        self.stop_companions_if_idle(i);
    }

    /// Companions of a retired service (or of the previous image) stop once no
    /// worker of theirs is left.
    pub(super) fn stop_companions_if_idle(&mut self, i: usize) {
        let busy = self.children.count_where(|r| match r {
            Role::Worker { service, .. } | Role::Server { service, .. } => {
                *service == i && self.svcs[i].retired
            }
            Role::Inherited { service, role, .. } => *service == Some(i) && role != "companion",
            // A spare serves nobody yet; it ends when its socket closes.
            Role::Companion { .. } | Role::Spare { .. } => false,
        });
        if busy > 0 {
            return;
        }
        let retired = self.svcs[i].retired;
        self.children.signal_where(libc::SIGTERM, |r| match r {
            Role::Companion { service, .. } => retired && *service == i,
            Role::Inherited { service, role, .. } => *service == Some(i) && role == "companion",
            _ => false,
        });
    }

    /// `ctl drain SERVICE`: stop accepting (listeners stay open; clients wait in
    /// the backlog), server processes drain and are not replaced.
    fn drain(&mut self, i: usize, on: bool) {
        self.svcs[i].draining = on;
        if on {
            self.children.signal_where(
                libc::SIGTERM,
                |r| matches!(r, Role::Server { service, .. } if *service == i),
            );
        } else {
            for slot in &mut self.svcs[i].slots {
                if slot.0.is_none() {
                    slot.1.due = Some(Instant::now());
                }
            }
        }
        self.title_dirty = true;
    }

    // ---- upgrade -------------------------------------------------------------

    /// Re-executes the binary in place. Returns only when it could not (the old
    /// image keeps serving).
    pub(super) fn upgrade(&mut self) -> String {
        let err = self.try_upgrade();
        log::error!("upgrade failed, the running binary keeps serving: {err}");
        self.last_upgrade_error = Some(err.clone());
        err
    }

    fn try_upgrade(&mut self) -> String {
        self.last_upgrade_error = None;
        if self.shutdown_started() {
            return "shutting down".into();
        }
        if !self.pending.is_empty() {
            return "connections are waiting for a fork; try again".into();
        }
        if self.argv.is_empty() {
            return "no command line to re-execute (Server::upgrade_argv was not given one)".into();
        }
        let exe = self.exe.clone();
        log::info!("upgrade: checking {}", exe.display());
        if let Err(e) = check_binary(&exe, &self.upgrade_check) {
            return format!("{}: {e}", exe.display());
        }
        let state = self.handover_state();
        let memfd = match sys::memfd("forkserve-upgrade").and_then(|fd| {
            let mut f = std::fs::File::from(fd);
            f.write_all(state.to_string().as_bytes())?;
            Ok(OwnedFd::from(f))
        }) {
            Ok(fd) => fd,
            Err(e) => return format!("memfd: {e}"),
        };
        let nfds = self.listeners_cloexec(false);
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| k != HANDOVER_ENV && k != crate::systemd::ACTIVATED_ENV)
            .collect();
        env.extend(self.notifier.env_for_exec());
        if self
            .svcs
            .iter()
            .any(|s| s.listeners.iter().any(|l| l.is_inherited()))
        {
            env.push((crate::systemd::ACTIVATED_ENV.into(), "1".into()));
        }
        env.push((HANDOVER_ENV.into(), memfd.as_raw_fd().to_string().into()));
        log::info!(
            "upgrade: re-executing {} as pid {} ({} listener(s), {} child(ren) handed over)",
            exe.display(),
            sys::getpid(),
            nfds,
            self.children.len()
        );
        let e = sys::execve(&exe, &self.argv, &env);
        self.listeners_cloexec(true);
        format!("exec {}: {e}", exe.display())
    }

    /// Sets or clears close-on-exec on every listener; returns how many.
    fn listeners_cloexec(&self, on: bool) -> usize {
        let mut n = 0;
        let control = self.control.listeners().map(|(_, _, l)| l);
        for l in self
            .svcs
            .iter()
            .flat_map(|s| s.listeners.iter())
            .chain(control)
        {
            if let Err(e) = sys::set_cloexec(l.as_fd(), on) {
                log::warn!("upgrade: close-on-exec of {}: {e}", l.addr());
            }
            n += 1;
        }
        n
    }

    fn handover_state(&self) -> Value {
        let mut listeners = Vec::new();
        for svc in self.svcs.iter().filter(|s| !s.retired) {
            let by_index = svc.listeners.len() == svc.conf.addrs.len();
            for (j, l) in svc.listeners.iter().enumerate() {
                // A socket from systemd goes by the name bind_all matches it with.
                let systemd_name = l.is_inherited().then(|| {
                    svc.conf
                        .addrs
                        .iter()
                        .find_map(|a| match a {
                            ListenAddr::Systemd(n) => Some(n.clone()),
                            _ => None,
                        })
                        .unwrap_or_else(|| svc.conf.name.clone())
                });
                let addr = if by_index && !l.is_inherited() {
                    svc.conf.addrs[j].to_string()
                } else {
                    l.addr().to_string()
                };
                listeners.push(json!({
                    "service": svc.conf.name,
                    "addr": addr,
                    "fd": l.as_raw_fd(),
                    "created": l.created_file().map(|p| p.to_string_lossy().into_owned()),
                    "systemd_name": systemd_name,
                }));
            }
        }
        for (role, addr, l) in self.control.listeners() {
            listeners.push(json!({
                "service": role,
                "addr": addr.to_string(),
                "fd": l.as_raw_fd(),
                "created": l.created_file().map(|p| p.to_string_lossy().into_owned()),
            }));
        }
        let children: Vec<Value> = self
            .children
            .iter()
            .map(|(pid, c)| {
                let (service, role, peer) = self.describe_role(&c.role);
                json!({"pid": pid, "service": service, "role": role, "peer": peer,
                       "age_ms": c.started.elapsed().as_millis() as u64})
            })
            .collect();
        let counters: serde_json::Map<String, Value> = self
            .svcs
            .iter()
            .filter(|s| !s.retired)
            .map(|s| (s.conf.name.clone(), s.counters.handover()))
            .collect();
        json!({"upgrades": self.upgrades + 1, "listeners": listeners, "children": children,
               "counters": counters, "served": self.served_total,
               "age_ms": self.started.elapsed().as_millis() as u64})
    }

    /// (service, role, peer) of a child, as text.
    fn describe_role(&self, role: &Role) -> (String, String, String) {
        let name = |i: usize| self.svcs[i].conf.name.clone();
        match role {
            Role::Worker { service, peer, .. } => {
                (name(*service), "worker".into(), peer.to_string())
            }
            Role::Server { service, .. } => (name(*service), "server".into(), String::new()),
            Role::Spare { service } => (name(*service), "spare".into(), String::new()),
            Role::Companion { service, index } => (
                name(*service),
                "companion".into(),
                self.svcs[*service].conf.companions[*index].name.clone(),
            ),
            Role::Inherited {
                service,
                role,
                peer,
            } => (
                service.map(name).unwrap_or_default(),
                role.clone(),
                peer.clone(),
            ),
        }
    }

    /// Takes over the children, counters and age the previous image left.
    pub(super) fn adopt_children(&mut self, h: &Handover) {
        for svc in &mut self.svcs {
            if let Some(v) = h.counters.get(&svc.conf.name) {
                svc.counters = counters::Counters::taken_over(v);
            }
        }
        self.served_total = h.served;
        self.started = Instant::now().checked_sub(h.age).unwrap_or(self.started);
        for (pid, service, role, peer, age) in &h.children {
            let s = self
                .svcs
                .iter()
                .position(|v| !v.retired && v.conf.name == *service);
            if role == "worker"
                && let Some(s) = s
            {
                self.svcs[s].active += 1;
            }
            self.children.insert_aged(
                *pid,
                Role::Inherited {
                    service: s,
                    role: role.clone(),
                    peer: peer.clone(),
                },
                *age,
            );
            if role == "server" {
                // It runs the old code: it drains and the new image starts its own.
                sys::kill(*pid, libc::SIGTERM);
            }
        }
        for s in 0..self.svcs.len() {
            self.stop_companions_if_idle(s);
        }
        if !h.children.is_empty() {
            log::info!(
                "upgrade: {} child(ren) of the previous image adopted",
                h.children.len()
            );
        }
    }

    // ---- control requests ------------------------------------------------------

    /// Answers the control and metrics requests poll delivered.
    pub(super) fn answer_requests(&mut self, requests: Vec<Request>) {
        for r in requests {
            let body = match r.kind {
                Kind::Metrics => metrics_response(&r.text, || self.prometheus()),
                Kind::Control => {
                    let mut v = self.control_command(r.text.trim());
                    if v.get("ok").is_none() {
                        v["ok"] = json!(true);
                    }
                    let mut b = v.to_string().into_bytes();
                    b.push(b'\n');
                    b
                }
            };
            self.control.answer(&r, body);
        }
    }

    fn control_command(&mut self, line: &str) -> Value {
        let words: Vec<&str> = line.split_whitespace().collect();
        let fail = |msg: String| json!({"ok": false, "error": msg});
        let service = |m: &Master, name: &str| {
            m.svcs
                .iter()
                .position(|s| !s.retired && s.conf.name == name)
                .ok_or_else(|| format!("no service named '{name}'"))
        };
        match words.as_slice() {
            ["status"] => self.status_json(true),
            ["services"] => self.status_json(false),
            ["children"] => self.children_json(),
            ["reload"] => match self.reload() {
                Ok(m) => json!({"message": m}),
                Err(e) => fail(e),
            },
            ["upgrade"] => {
                self.upgrade_requested = true;
                json!({"message": "upgrading", "upgrades": self.upgrades})
            }
            ["drain", name] | ["resume", name] => match service(self, name) {
                Ok(i) => {
                    let on = words[0] == "drain";
                    self.drain(i, on);
                    log::info!("{name}: {} (ctl)", if on { "draining" } else { "resumed" });
                    json!({"message": format!("{name}: {}", if on { "draining" } else { "accepting" })})
                }
                Err(e) => fail(e),
            },
            ["set", name, setting] => match service(self, name) {
                Ok(i) => match self.set(i, setting) {
                    Ok(m) => json!({"message": m}),
                    Err(e) => fail(e),
                },
                Err(e) => fail(e),
            },
            _ => fail(format!(
                "unknown request '{line}': status, services, children, reload, upgrade, drain SERVICE, resume SERVICE, set SERVICE max-children=N|max-per-source=N"
            )),
        }
    }

    fn set(&mut self, i: usize, setting: &str) -> Result<String, String> {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("'{setting}': expected KEY=N"))?;
        let n: usize = value
            .parse()
            .map_err(|_| format!("{key}: '{value}' is not a number"))?;
        let svc = &mut self.svcs[i];
        match key {
            "max-children" | "max_children" if n > 0 => svc.conf.max_children = n,
            "max-per-source" | "max_per_source" => {
                svc.conf.per_source = super::PerSource::from_option(Some(n))
            }
            "max-children" | "max_children" => return Err("max-children: at least 1".into()),
            _ => return Err(format!("{key}: can set max-children or max-per-source")),
        }
        self.title_dirty = true;
        log::info!("{}: {key} set to {n} (ctl)", svc.conf.name);
        Ok(format!("{}: {key}={n}", svc.conf.name))
    }

    fn status_json(&self, counters: bool) -> Value {
        let services: Vec<Value> = self
            .svcs
            .iter()
            .filter(|s| !s.retired)
            .map(|s| {
                let mut v = json!({
                    "name": s.conf.name,
                    "model": s.conf.model.to_string(),
                    "listen": s.listeners.iter().map(|l| l.addr().to_string()).collect::<Vec<_>>(),
                    "max_children": s.conf.max_children,
                    "active": s.active,
                    "state": if s.draining { "draining" } else { "accepting" },
                });
                if counters {
                    v["counters"] = s.counters.json(s.active);
                }
                v
            })
            .collect();
        json!({
            "pid": sys::getpid(),
            "uptime_s": self.started.elapsed().as_secs(),
            "upgrades": self.upgrades,
            "last_upgrade_error": self.last_upgrade_error,
            "children": self.children.len(),
            "served": self.served_total,
            "services": services,
        })
    }

    fn children_json(&self) -> Value {
        let mut list: Vec<(i32, Value)> = self
            .children
            .iter()
            .map(|(pid, c)| {
                let (service, role, peer) = self.describe_role(&c.role);
                (
                    *pid,
                    json!({"pid": pid, "service": service, "role": role, "peer": peer,
                           "age_s": (c.started.elapsed().as_secs_f64() * 10.0).round() / 10.0}),
                )
            })
            .collect();
        list.sort_by_key(|(p, _)| *p);
        json!({"children": list.into_iter().map(|(_, v)| v).collect::<Vec<_>>()})
    }

    /// The Prometheus text of every running service.
    pub(super) fn prometheus(&self) -> String {
        counters::prometheus(
            self.svcs
                .iter()
                .filter(|s| !s.retired)
                .map(|s| (s.conf.name.as_str(), &s.counters, s.active)),
        )
    }

    /// One line per service (SIGUSR1, sd_notify STATUS=).
    pub(super) fn counters_line(&self) -> String {
        self.svcs
            .iter()
            .filter(|s| !s.retired && s.conf.model == Model::Fork)
            .map(|s| format!("{}: {}", s.conf.name, s.counters.summary(s.active)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Frees what a failed reload had bound (the kept listeners stay where they are).
fn release(listeners: &mut Vec<Result<Listener, usize>>) {
    for l in listeners.iter_mut().flatten() {
        l.remove_file();
    }
    listeners.clear();
}

/// Runs `exe` with `args` and waits (at most 10 s) for it to succeed.
fn check_binary(exe: &std::path::Path, args: &[OsString]) -> Result<(), String> {
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let first = err.lines().last().unwrap_or("").trim().to_string();
                return Err(format!(
                    "its check ({}) failed with {st}: {first}",
                    args_text(args)
                ));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("its check did not finish within 10 s".into());
            }
            Err(e) => return Err(format!("waiting for its check: {e}")),
        }
    }
}

fn args_text(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
