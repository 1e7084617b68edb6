//! The cached path of GET and HEAD: a fresh stored response answers at once;
//! otherwise one worker per URL fetches (revalidating a stale entry that has
//! validators) while the others wait on the miss lock, and the response is stored
//! when RFC 9111 allows (see [`super::cache`]).

use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use super::cache::{self, Cache, Meta, policy};
use super::forward::{self, ClientFraming, Conditional, ResponseHead, Url};
use super::log::CacheResult;
use super::{Client, Job, Next, Outcome, Proxy, client_text};
use crate::handler::Connection;
use crate::services::http::request::Request;

impl Proxy {
    /// GET and HEAD: a fresh stored response, else one fetch per URL at a time
    /// (revalidating a stale entry when it has validators), stored when allowed.
    pub(super) fn serve_cacheable(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        job: &mut Job<'_>,
        url: &Url,
        addrs: &[IpAddr],
    ) -> Result<Next, Outcome> {
        let cache = self.cache.as_ref().expect("cacheable only with a cache");
        let key = url.key();
        let asks = Asks::of(req);
        if let Some(e) = cache.lookup(&key).filter(|e| asks.usable(e, req)) {
            return self.serve_entry(c, req, job, cache, e, CacheResult::Hit);
        }
        if req.method == "HEAD" {
            return self.pass(c, req, job, url, addrs);
        }
        let lock = self.miss_lock(cache, &key);
        // Whoever held the lock may just have stored it.
        let entry = match cache.lookup(&key).filter(|e| vary_matches(&e.meta, req)) {
            Some(e) if asks.usable(&e, req) => {
                return self.serve_entry(c, req, job, cache, e, CacheResult::Hit);
            }
            other => other,
        };
        let cond = entry.as_ref().and_then(|e| validators(&e.meta));
        let now = crate::unix_now();
        let head = forward::request_head(req, url, &client_text(c.conn.peer()), cond.as_ref());
        let resp = self.exchange(c, req, url, addrs, &head, job)?;
        if let (Some(e), Some(_), 304) = (entry, cond.as_ref(), resp.status) {
            return self.revalidated(c, req, job, cache, e, &resp);
        }
        job.result = CacheResult::Miss;
        let mut meta = stored_meta(&key, &resp, req, job, now);
        let mut writer = storage(cache, &meta, &asks, req, lock.is_some());
        let next = self.relay(c, req, job, &resp, writer.as_mut())?;
        if let Some(w) = writer.filter(cache::Writer::is_live) {
            meta.body_len = job.bytes;
            // A cookie set for this client is never replayed to others.
            meta.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("set-cookie"));
            if let Err(e) = cache.commit(w, &meta) {
                ::log::warn!("proxy: cache {}: storing {key}: {e}", cache.dir.display());
            }
        }
        drop(lock);
        Ok(next)
    }

    /// One fetch per URL at a time, unless the URL recently answered with
    /// something not storable (then there is nothing to wait for).
    fn miss_lock(&self, cache: &Cache, key: &str) -> Option<cache::MissLock> {
        if cache.is_pass(key) {
            return None;
        }
        cache
            .lock(key, self.upstream_timeout)
            .filter(|_| !cache.is_pass(key))
    }

    /// The origin said 304 to a revalidation: refresh the entry, answer from it.
    fn revalidated(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        job: &mut Job<'_>,
        cache: &Cache,
        e: cache::Entry,
        resp: &ResponseHead,
    ) -> Result<Next, Outcome> {
        let meta = refreshed(&e.meta, resp, job, crate::unix_now());
        if let Err(err) = cache.refresh(&e, &meta) {
            ::log::warn!(
                "proxy: cache {}: refreshing the entry: {err}",
                cache.dir.display()
            );
        }
        c.response_read(resp);
        let e = cache::Entry { meta, file: e.file };
        self.serve_entry(c, req, job, cache, e, CacheResult::Revalidated)
    }

    /// Answers from a stored entry (body read from the file; HEAD gets the head).
    fn serve_entry(
        &self,
        c: &mut Client<'_>,
        req: &Request,
        job: &mut Job<'_>,
        cache: &Cache,
        e: cache::Entry,
        result: CacheResult,
    ) -> Result<Next, Outcome> {
        cache.touch(&e);
        job.result = result;
        job.status = e.meta.status;
        job.content_type = e.meta.header("content-type").map(str::to_string);
        let keep = req.keep_alive();
        let age = e.meta.age(crate::unix_now());
        let head_only = req.method == "HEAD" || matches!(e.meta.status, 204 | 304);
        let framing = if head_only && e.meta.status == 204 {
            ClientFraming::None(None)
        } else {
            ClientFraming::Length(e.meta.body_len)
        };
        let head = forward::client_head(
            e.meta.status,
            &e.meta.reason,
            &e.meta.headers,
            framing,
            keep,
            result.x_cache(),
            Some(age),
        );
        let broken = |err: io::Error| Outcome::Broken(format!("client gone: {err}"));
        let len = if head_only { 0 } else { e.meta.body_len };
        if len <= SMALL_BODY {
            // Head and body in one write.
            let mut out = head;
            let start = out.len();
            out.resize(start + len as usize, 0);
            e.file.read_exact_at(&mut out[start..], 0).map_err(short)?;
            c.conn.write_all(&out).map_err(broken)?;
        } else {
            c.conn.write_all(&head).map_err(broken)?;
            send_file(c.conn, &e.file, len).map_err(broken)?;
        }
        job.bytes = len;
        Ok(if keep { Next::KeepAlive } else { Next::Close })
    }
}

/// Stored bodies up to this size leave in the same write as the head.
const SMALL_BODY: u64 = 64 * 1024;

/// Sends the first `len` bytes of `file` to the client, in the kernel.
fn send_file(conn: &Connection, file: &std::fs::File, len: u64) -> io::Result<()> {
    let mut offset: i64 = 0;
    while (offset as u64) < len {
        let left = usize::try_from(len - offset as u64)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match crate::sys::sendfile(conn.as_fd(), file.as_fd(), &mut offset, left) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the cache entry is shorter than recorded",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A cache entry that could not be read whole.
fn short(e: io::Error) -> Outcome {
    Outcome::Broken(format!("the cache entry could not be read whole: {e}"))
}

/// What the request says about using stored responses (RFC 9111 5.2.1).
struct Asks {
    cache_control: Vec<(String, Option<String>)>,
    pragma_no_cache: bool,
}

impl Asks {
    fn of(req: &Request) -> Asks {
        Asks {
            cache_control: policy::directives(
                req.all("cache-control")
                    .filter_map(|v| std::str::from_utf8(v).ok()),
            ),
            pragma_no_cache: req.all("pragma").any(|v| {
                String::from_utf8_lossy(v)
                    .to_ascii_lowercase()
                    .contains("no-cache")
            }),
        }
    }

    /// The entry answers this request without asking the origin.
    fn usable(&self, e: &cache::Entry, req: &Request) -> bool {
        vary_matches(&e.meta, req)
            && policy::usable_without_validation(
                &e.meta,
                &self.cache_control,
                self.pragma_no_cache,
                crate::unix_now(),
            )
    }
}

/// The validators of a stored response, if it has any.
fn validators(meta: &Meta) -> Option<Conditional> {
    let etag = meta.header("etag").map(str::to_string);
    let last_modified = meta.header("last-modified").map(str::to_string);
    (etag.is_some() || last_modified.is_some()).then_some(Conditional {
        etag,
        last_modified,
    })
}

/// Where a response goes besides the client: a new entry when RFC 9111 lets
/// it be stored and this worker holds the miss lock, or the URL is marked as
/// not storable and now is (the rename makes a concurrent store safe).
/// Otherwise nowhere, and the URL is marked not storable for a while.
fn storage(
    cache: &Cache,
    meta: &Meta,
    asks: &Asks,
    req: &Request,
    locked: bool,
) -> Option<cache::Writer> {
    let authorized = req.header("authorization").is_some();
    match policy::refuse_store(meta, &asks.cache_control, authorized) {
        None if locked || cache.is_pass(&meta.url) => {
            cache.clear_pass(&meta.url);
            cache.writer().ok()
        }
        None => None,
        Some(why) => {
            ::log::debug!("proxy: not storing {}: {why}", meta.url);
            if !cache.is_pass(&meta.url) {
                cache.mark_pass(&meta.url);
            }
            None
        }
    }
}

/// A request header's values, joined and with runs of whitespace collapsed.
fn normalised(req: &Request, name: &str) -> String {
    let joined: Vec<String> = req
        .all(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    joined
        .join(",")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when the request selects the same variant the entry was stored for.
fn vary_matches(meta: &Meta, req: &Request) -> bool {
    meta.vary
        .iter()
        .all(|(name, value)| normalised(req, name) == *value)
}

/// The metadata a response would be stored with.
fn stored_meta(key: &str, resp: &ResponseHead, req: &Request, job: &Job<'_>, now: i64) -> Meta {
    let vary = resp
        .header("vary")
        .map(|v| {
            v.split(',')
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty() && n != "*")
                .map(|n| {
                    let value = normalised(req, &n);
                    (n, value)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut meta = Meta {
        url: key.to_string(),
        status: resp.status,
        reason: resp.reason.clone(),
        headers: resp
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("age"))
            .cloned()
            .collect(),
        vary,
        request_time: now - job.upstream.map_or(0, |d| d.as_secs() as i64),
        response_time: now,
        initial_age: 0,
        body_len: 0,
    };
    meta.initial_age = initial_age(&meta, resp.header("age"));
    meta
}

/// RFC 9111 4.2.3: the corrected initial age.
fn initial_age(meta: &Meta, age_header: Option<&str>) -> i64 {
    let age_value = age_header
        .and_then(|a| a.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    let date = meta
        .header("date")
        .and_then(cache::parse_http_date)
        .unwrap_or(meta.response_time);
    let apparent = (meta.response_time - date).max(0);
    let delay = meta.response_time - meta.request_time;
    apparent.max(age_value + delay)
}

/// A stored entry's metadata after a 304: its fields updated from the 304's.
fn refreshed(old: &Meta, resp: &ResponseHead, job: &Job<'_>, now: i64) -> Meta {
    let mut meta = old.clone();
    for (n, _) in &resp.headers {
        meta.headers.retain(|(m, _)| !m.eq_ignore_ascii_case(n));
    }
    for (n, v) in &resp.headers {
        if !n.eq_ignore_ascii_case("age") && !n.eq_ignore_ascii_case("content-length") {
            meta.headers.push((n.clone(), v.clone()));
        }
    }
    meta.request_time = now - job.upstream.map_or(0, |d| d.as_secs() as i64);
    meta.response_time = now;
    meta.initial_age = initial_age(&meta, resp.header("age"));
    meta
}
