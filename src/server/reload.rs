//! SIGHUP: the master runs every service's reload hooks (re-reading a rules file,
//! say). A hook runs in the master between two polls, so it must be quick; it
//! keeps its previous state and logs why when the new one is bad. Workers forked
//! afterwards inherit the result. Every connection's [`Context::reloads`]
//! (crate::Context) counts the reloads, so a worker can re-read what it reads
//! itself (the proxy's access list); long-lived server processes are replaced, so
//! they start again with the new state.

use super::children::Role;
use super::master::Master;

impl Master {
    /// On SIGHUP: runs the reload hooks of every service, counts the reload in
    /// every context, and replaces the server processes.
    pub(super) fn reload_services(&mut self) {
        for svc in &self.svcs {
            for hook in &svc.conf.reloads {
                hook();
            }
        }
        let mut n = 0;
        for ctx in self.svcs.iter_mut().flat_map(|s| s.contexts.iter_mut()) {
            ctx.reloads += 1;
            n = ctx.reloads;
        }
        let servers = self
            .children
            .count_where(|r| matches!(r, Role::Server { .. }));
        log::info!(
            "SIGHUP received (reload {n}): services re-read their configuration; replacing {servers} server process(es)"
        );
        self.children
            .signal_where(libc::SIGTERM, |r| matches!(r, Role::Server { .. }));
    }
}
