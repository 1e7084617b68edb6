//! How busy each service is, in a page of memory shared by the master and every
//! process it forks (Apache's scoreboard, reduced to counters): for a fork-model
//! service the master's count of live workers; for a prefork service one flag per
//! worker slot, set by the worker while it serves. A handler asks through
//! [`Connection::clients_waiting`](crate::Connection::clients_waiting): clients
//! wait when the service is at its limit *and* its listener holds connections.
//! A readable listener alone is no proof: the master or an idle worker may simply
//! not have run yet (on one CPU, a worker finishing a response runs before them).

use std::sync::atomic::{AtomicU32, Ordering};

use super::master::Svc;
use super::pool;
use super::{Error, Service};
use crate::handler::Context;
use crate::handler::Model;
use crate::sys;

/// One service's counters and its limit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    cells: &'static [AtomicU32],
    limit: u32,
}

impl Load {
    /// True when the service is at its limit.
    pub fn at_limit(&self) -> bool {
        let busy: u32 = self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        busy >= self.limit
    }

    /// Fork model: the master's count of live workers.
    pub fn set_active(&self, n: usize) {
        self.cells[0].store(n as u32, Ordering::Relaxed);
    }

    /// Prefork: worker `slot` serves (true) or waits (false).
    pub fn set_busy(&self, slot: usize, busy: bool) {
        if let Some(c) = self.cells.get(slot) {
            c.store(u32::from(busy), Ordering::Relaxed);
        }
    }
}

/// Maps the counters of every service (before the first fork): `None` for a
/// service whose processes take connections without a limit to reach (thread,
/// sequential: its one process is the limit, the listener alone tells).
pub(crate) fn map(services: &[Service]) -> std::io::Result<Vec<Option<Load>>> {
    let widths: Vec<usize> = services
        .iter()
        .map(|s| match s.model {
            Model::Fork => 1,
            Model::Prefork => pool::slots(s),
            Model::Thread | Model::Sequential => 0,
        })
        .collect();
    let all = sys::shared_counters32(widths.iter().sum())?;
    let mut at = 0;
    Ok(services
        .iter()
        .zip(widths)
        .map(|(s, w)| {
            let cells = &all[at..at + w];
            at += w;
            let limit = match s.model {
                Model::Fork => s.max_children,
                _ => w,
            };
            (w > 0).then_some(Load {
                cells,
                limit: limit as u32,
            })
        })
        .collect())
}

/// Gives every context of every service its counters (before the first fork).
pub(crate) fn share(svcs: &mut [Svc], services: &[Service]) -> Result<(), Error> {
    let loads = map(services)
        .map_err(|e| Error::new(Error::OSERR, format!("mapping the shared counters: {e}")))?;
    for (svc, load) in svcs.iter_mut().zip(loads) {
        for c in &mut svc.contexts {
            c.load = load;
        }
    }
    Ok(())
}

/// Fork model: the master's count of live workers changed.
pub(crate) fn note_active(contexts: &[Context], active: usize) {
    if let Some(l) = contexts.first().and_then(|c| c.load) {
        l.set_active(active);
    }
}

/// Prefork: the worker of `slot` is gone; it serves nothing now.
pub(crate) fn note_slot_free(contexts: &[Context], slot: usize) {
    if let Some(l) = contexts.first().and_then(|c| c.load) {
        l.set_busy(slot, false);
    }
}
