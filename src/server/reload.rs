//! SIGHUP: the master runs every service's reload hooks (re-reading a rules file,
//! say). A hook runs in the master between two polls, so it must be quick; it
//! keeps its previous state and logs why when the new one is bad. Workers forked
//! afterwards inherit the result; long-lived server processes keep what they had
//! when they started.

use super::master::Master;

impl Master {
    /// Runs the reload hooks of every service (on SIGHUP).
    pub(super) fn reload(&mut self) {
        let hooks: usize = self.svcs.iter().map(|s| s.conf.reloads.len()).sum();
        if hooks == 0 {
            log::info!("SIGHUP received: nothing to reload");
            return;
        }
        log::info!("SIGHUP received: reloading");
        for svc in &self.svcs {
            for hook in &svc.conf.reloads {
                hook();
            }
        }
    }
}
