//! `--stderr log`: programs' stderr lines in forkserve's log, each tagged with the
//! service and the pid that wrote it. Every program's fd 2 is one end of a Unix
//! datagram socket pair made at start-up; the other end belongs to a companion
//! process, the relay, which receives each write as one datagram with the
//! writer's pid attached by the kernel (SO_PASSCRED), joins pieces into lines per
//! pid and logs them. The master does nothing per connection for this (no pipe,
//! no descriptor passing, no reading): the spawn just names the socket as fd 2.
//! A relay that dies is restarted by the master with the same socket, so nothing
//! queued is lost; a full queue makes a chatty program wait on its own writes.
//! On SIGTERM (sent once the workers are gone) the relay logs what is queued and
//! exits.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::sys;

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;

/// A piece of a line with no newline yet is logged after this long.
const PARTIAL_AFTER: Duration = Duration::from_millis(500);

/// The two ends: programs write to `writer`, the relay reads `reader`.
pub struct Pair {
    pub writer: UnixDatagram,
    pub reader: UnixDatagram,
}

/// Makes the socket pair; the reader gets the writers' credentials.
pub fn pair() -> io::Result<Pair> {
    let (writer, reader) = UnixDatagram::pair()?;
    sys::set_int_opt(reader.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    // Room for bursts; the kernel caps these at its maxima.
    let _ = sys::set_int_opt(reader.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
    let _ = sys::set_int_opt(writer.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20);
    Ok(Pair { writer, reader })
}

/// Lines in the making, per writer pid.
struct Pending {
    service: String,
    by_pid: HashMap<i32, (Vec<u8>, Instant)>,
}

impl Pending {
    fn emit(&self, pid: i32, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        log::info!(
            "{} worker {pid}: {}",
            self.service,
            String::from_utf8_lossy(line)
        );
    }

    /// Adds what `pid` wrote; logs every line it completes.
    fn add(&mut self, pid: i32, data: &[u8]) {
        let (mut buf, since) = self
            .by_pid
            .remove(&pid)
            .unwrap_or_else(|| (Vec::new(), Instant::now()));
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            self.emit(pid, &buf[start..start + nl]);
            start += nl + 1;
        }
        while buf.len() - start > MAX_LINE {
            self.emit(pid, &buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        buf.drain(..start);
        if !buf.is_empty() {
            let since = if start > 0 { Instant::now() } else { since };
            self.by_pid.insert(pid, (buf, since));
        }
    }

    /// Logs pieces that waited long enough (or all of them).
    fn flush(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<i32> = self
            .by_pid
            .iter()
            .filter(|(_, (_, t))| all || now.duration_since(*t) >= PARTIAL_AFTER)
            .map(|(&p, _)| p)
            .collect();
        for pid in due {
            if let Some((buf, _)) = self.by_pid.remove(&pid) {
                self.emit(pid, &buf);
            }
        }
    }
}

/// Receives whatever is queued now; false when the socket failed.
fn receive_all(reader: &UnixDatagram, pending: &mut Pending, buf: &mut [u8]) -> bool {
    loop {
        match sys::recv_from(reader.as_fd(), buf) {
            Ok((n, _, cred)) => pending.add(cred.map_or(0, |c| c.pid), &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("{} stderr relay: {e}", pending.service);
                return false;
            }
        }
    }
}

/// The relay's body (a companion process): returns its exit status.
pub fn run(reader: &UnixDatagram, service: &str) -> i32 {
    sys::set_comm("forkserve-log");
    // SIGINT and SIGHUP reach the whole process group; the relay outlives them
    // until the master, after its workers, sends SIGTERM.
    sys::block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
    let term = match sys::signalfd(&[libc::SIGTERM]) {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("{service} stderr relay: signalfd: {e}");
            return 71;
        }
    };
    let mut pending = Pending {
        service: service.to_string(),
        by_pid: HashMap::new(),
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut fds = [
            sys::pollfd(std::os::fd::AsRawFd::as_raw_fd(reader), sys::POLLIN),
            sys::pollfd(std::os::fd::AsRawFd::as_raw_fd(&term), sys::POLLIN),
        ];
        let wait = if pending.by_pid.is_empty() {
            None
        } else {
            Some(PARTIAL_AFTER)
        };
        if let Err(e) = sys::poll(&mut fds, wait) {
            log::error!("{service} stderr relay: poll: {e}");
            return 71;
        }
        let ok = receive_all(reader, &mut pending, &mut buf);
        let stop = fds[1].revents != 0 && sys::read_signalfd(term.as_fd());
        pending.flush(stop || !ok);
        if stop {
            return 0;
        }
        if !ok {
            return 71;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_into_lines_per_pid() {
        let mut p = Pending {
            service: "t".into(),
            by_pid: HashMap::new(),
        };
        p.add(1, b"hel");
        p.add(2, b"other\n");
        assert!(!p.by_pid.contains_key(&2));
        p.add(1, b"lo\nwor");
        assert_eq!(p.by_pid[&1].0, b"wor");
        p.add(1, &vec![b'x'; MAX_LINE * 2 + 1]);
        assert_eq!(p.by_pid[&1].0.len(), 4);
        p.flush(true);
        assert!(p.by_pid.is_empty());
    }
}
