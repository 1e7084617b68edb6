//! CONNECT tunnels: after `200 Connection established`, bytes flow both ways
//! between the client and the origin until both sides have closed (a half-close
//! is passed on), or neither sends anything for the upstream timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use super::forward::{self, ProxyError};
use super::log::CacheResult;
use super::{Client, Job, Next, Proxy};
use crate::handler::Connection;
use crate::services::http::request::Request;
use crate::sys;

impl Proxy {
    /// CONNECT host:port: allowed ports and access lists, then a tunnel.
    pub(super) fn connect_tunnel(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        job: &mut Job<'_>,
    ) -> io::Result<Next> {
        let (host, port) = match forward::split_authority(&req.target, 0) {
            Ok((h, p)) if p != 0 => (h, p),
            _ => {
                let e = ProxyError::new(400, "CONNECT needs a host:port target.");
                return self.fail(c, req, job, e, CacheResult::Error);
            }
        };
        job.url = format!("{host}:{port}");
        if !self.connect_ports.contains(&port) {
            let e = ProxyError::new(
                403,
                format!("CONNECT to port {port} is not allowed (see --connect-ports)."),
            );
            return self.fail(c, req, job, e, CacheResult::Denied);
        }
        let url = format!(
            "https://{}:{port}/",
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            }
        );
        let addrs = match self.admit(c, &host, &url) {
            Ok(a) => a,
            Err((e, r)) => return self.fail(c, req, job, e, r),
        };
        let started = Instant::now();
        let mut up = match forward::connect(
            &job.url,
            &addrs,
            port,
            self.connect_timeout,
            self.upstream_timeout,
        ) {
            Ok(u) => u,
            Err(e) => return self.fail(c, req, job, e, CacheResult::Error),
        };
        job.upstream = Some(started.elapsed());
        job.server = Some(up.addr.ip());
        job.result = CacheResult::Tunnel;
        job.status = 200;
        c.conn
            .write_all(b"HTTP/1.1 200 Connection established\r\nVia: 1.1 forkserve\r\n\r\n")?;
        let early = c.input.buffered().to_vec();
        c.input.consume(early.len());
        let moved = relay(c.conn, &mut up.stream, &early, self.upstream_timeout)?;
        job.bytes = moved.down + moved.up;
        Ok(Next::Close)
    }
}

/// Bytes relayed each way.
pub struct Relayed {
    pub up: u64,
    pub down: u64,
}

/// Relays until both directions are done. `early` are client bytes that arrived
/// with the CONNECT head (already read off the socket).
pub fn relay(
    conn: &mut Connection,
    origin: &mut TcpStream,
    early: &[u8],
    idle: Duration,
) -> io::Result<Relayed> {
    let mut done = Relayed { up: 0, down: 0 };
    if !early.is_empty() {
        origin.write_all(early)?;
        done.up += early.len() as u64;
    }
    conn.stream().set_read_timeout(None)?;
    origin.set_read_timeout(None)?;
    let mut buf = vec![0u8; 32 * 1024];
    let (mut client_open, mut origin_open) = (true, true);
    while client_open || origin_open {
        let mut fds = Vec::with_capacity(2);
        if client_open {
            fds.push(sys::pollfd(conn.as_fd().as_raw_fd(), sys::POLLIN));
        }
        if origin_open {
            fds.push(sys::pollfd(origin.as_fd().as_raw_fd(), sys::POLLIN));
        }
        if sys::poll(&mut fds, Some(idle))? == 0 {
            log::info!("proxy: tunnel idle for {}s; closing", idle.as_secs_f64());
            return Ok(done);
        }
        let ready = |i: usize| fds[i].revents != 0;
        let mut i = 0;
        if client_open {
            if ready(i) {
                let n = read_some(conn, &mut buf)?;
                if n == 0 {
                    client_open = false;
                    let _ = origin.shutdown(Shutdown::Write);
                } else {
                    origin.write_all(&buf[..n])?;
                    done.up += n as u64;
                }
            }
            i += 1;
        }
        if origin_open && ready(i) {
            let n = read_some(origin, &mut buf)?;
            if n == 0 {
                origin_open = false;
                let _ = conn.shutdown_write();
            } else {
                conn.write_all(&buf[..n])?;
                done.down += n as u64;
            }
        }
    }
    Ok(done)
}

/// One read; a reset counts as the end of that direction.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}
