//! The datagrams a sequential server process has read but not yet served, queued per
//! source (peer IP, or peer uid on Unix sockets) and served round robin: one source
//! that sends many requests waits behind its own requests, not in front of everyone
//! else's. Each source may queue at most a bounded number; more are dropped (and
//! logged), as the kernel drops what a full socket buffer cannot hold.

use std::collections::VecDeque;

use crate::peer::{Peer, SourceKey};
use crate::sys::RawAddr;

/// Queued datagrams per source when the service sets no `--max-per-source`.
pub const DEFAULT_PER_SOURCE: usize = 16;
/// Queued datagrams in all.
pub const MAX_QUEUED: usize = 1024;

/// One datagram waiting to be served.
pub struct Queued {
    pub listener: usize,
    pub data: Vec<u8>,
    pub reply_to: Option<RawAddr>,
    pub peer: Peer,
}

/// Per-source FIFO queues, served in turn.
pub struct FairQueue {
    sources: VecDeque<(SourceKey, VecDeque<Queued>)>,
    per_source: usize,
    len: usize,
}

impl FairQueue {
    pub fn new(per_source: Option<usize>) -> FairQueue {
        FairQueue {
            sources: VecDeque::new(),
            per_source: per_source.unwrap_or(DEFAULT_PER_SOURCE).max(1),
            len: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each source's share of the queue.
    pub fn per_source(&self) -> usize {
        self.per_source
    }

    /// Queues a datagram; gives it back when its source or the whole queue is full.
    pub fn push(&mut self, item: Queued) -> Result<(), Box<Queued>> {
        if self.len >= MAX_QUEUED {
            return Err(Box::new(item));
        }
        let key = item.peer.source_key();
        match self.sources.iter_mut().find(|(k, _)| *k == key) {
            Some((_, q)) if q.len() >= self.per_source => return Err(Box::new(item)),
            Some((_, q)) => q.push_back(item),
            None => self.sources.push_back((key, VecDeque::from([item]))),
        }
        self.len += 1;
        Ok(())
    }

    /// The next datagram: the oldest of the source whose turn it is; that source then
    /// goes to the back of the line.
    pub fn pop(&mut self) -> Option<Queued> {
        let (key, mut q) = self.sources.pop_front()?;
        let item = q.pop_front();
        if !q.is_empty() {
            self.sources.push_back((key, q));
        }
        self.len -= usize::from(item.is_some());
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(ip: &str, n: u8) -> Queued {
        Queued {
            listener: 0,
            data: vec![n],
            reply_to: None,
            peer: Peer::Ip(ip.parse().unwrap()),
        }
    }

    #[test]
    fn sources_take_turns_and_each_is_bounded() {
        let mut q = FairQueue::new(Some(3));
        for n in 0..5 {
            let queued = q.push(dgram("10.0.0.1:1", n)).is_ok();
            assert_eq!(queued, n < 3);
        }
        assert!(q.push(dgram("10.0.0.2:9", 100)).is_ok());
        assert!(q.push(dgram("10.0.0.2:9", 101)).is_ok());
        let order: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|d| d.data[0]).collect();
        assert_eq!(order, [0, 100, 1, 101, 2]);
        assert!(q.is_empty());
    }
}
