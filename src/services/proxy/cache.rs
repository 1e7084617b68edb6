//! The proxy's disk cache, shared by every forked worker and kept across restarts.
//!
//! One file per URL, named by a 128-bit FNV-1a hash of the URL: the body first,
//! then the metadata as JSON (URL, status, headers, the request-header values the
//! response varies on, request and response times), then its length and a magic
//! trailer. A writer fills `tmp.PID.N` and renames it into place, so a reader sees
//! a whole entry or none; a worker killed mid-write leaves a temporary file that
//! the next eviction pass (or the next start) removes. `NAME.lock` serialises the
//! misses for one URL (flock): one worker fetches, the others wait and then read
//! what it stored. Recency is the file's mtime, set on store and on every hit;
//! stores add to a running total (`state.size`), and when it passes
//! `--cache-size` a pass removes the oldest entries down to 90% of it.
//!
//! Freshness and storage follow RFC 9111 for a shared cache (see [`policy`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};

const MAGIC: &[u8; 8] = b"FSPXC001";
/// The running total of entry bytes, shared by the workers.
const STATE_SIZE: &str = "state.size";
/// How long a URL whose response could not be stored skips the miss lock.
const PASS_TTL: Duration = Duration::from_secs(120);

/// Where the cache lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
    pub max_size: u64,
    /// Responses larger than this are passed on but not stored.
    pub max_object: u64,
}

/// A stored response's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub url: String,
    pub status: u16,
    pub reason: String,
    /// End-to-end response headers (no framing, hop-by-hop or Age fields).
    pub headers: Vec<(String, String)>,
    /// The request header values (lower-case name, normalised value) it varies on.
    pub vary: Vec<(String, String)>,
    pub request_time: i64,
    pub response_time: i64,
    /// The corrected initial age (RFC 9111 4.2.3).
    pub initial_age: i64,
    pub body_len: u64,
}

impl Meta {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::forward::header_in(&self.headers, name)
    }

    /// The current age in seconds (RFC 9111 4.2.3).
    pub fn age(&self, now: i64) -> i64 {
        self.initial_age + (now - self.response_time).max(0)
    }

    fn to_json(&self) -> Value {
        json!({
            "url": self.url, "status": self.status, "reason": self.reason,
            "headers": self.headers, "vary": self.vary,
            "request_time": self.request_time, "response_time": self.response_time,
            "initial_age": self.initial_age, "body_len": self.body_len,
        })
    }

    fn from_json(v: &Value) -> Option<Meta> {
        let pairs = |v: &Value| -> Option<Vec<(String, String)>> {
            v.as_array()?
                .iter()
                .map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect()
        };
        Some(Meta {
            url: v["url"].as_str()?.to_string(),
            status: u16::try_from(v["status"].as_u64()?).ok()?,
            reason: v["reason"].as_str()?.to_string(),
            headers: pairs(&v["headers"])?,
            vary: pairs(&v["vary"])?,
            request_time: v["request_time"].as_i64()?,
            response_time: v["response_time"].as_i64()?,
            initial_age: v["initial_age"].as_i64()?,
            body_len: v["body_len"].as_u64()?,
        })
    }
}

/// An entry opened for reading: its metadata and the file its body is in
/// (at offset 0, `meta.body_len` bytes).
pub struct Entry {
    pub meta: Meta,
    pub file: File,
}

/// An exclusive hold on one URL's misses; released when dropped. The lock file
/// is removed first: a worker still waiting on it then finds the new entry (or
/// the not-storable mark) when it gets the lock, and files do not pile up.
pub struct MissLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl Drop for MissLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// 128-bit FNV-1a of the URL, as 32 hex digits.
fn file_name(url: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in url.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{h:032x}")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Cache {
    /// Creates the directory if needed and removes temporary files left by a
    /// previous run (no worker of this one exists yet).
    pub fn open(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cache directory {}: {e}", self.dir.display()))?;
        let probe = self.dir.join(format!("tmp.{}.probe", std::process::id()));
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| {
                format!(
                    "cache directory {} is not writable: {e}",
                    self.dir.display()
                )
            })?;
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("tmp.")
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            log::info!(
                "proxy: removed {removed} unfinished cache file(s) from {}",
                self.dir.display()
            );
        }
        Ok(())
    }

    fn path(&self, url: &str) -> PathBuf {
        self.dir.join(file_name(url))
    }

    /// The entry stored for `url`, if any and whole (stale or not).
    pub fn lookup(&self, url: &str) -> Option<Entry> {
        let mut file = File::open(self.path(url)).ok()?;
        let meta = read_meta(&mut file).ok()?;
        (meta.url == url).then_some(Entry { meta, file })
    }

    /// Marks an entry as just used (the eviction order).
    pub fn touch(&self, entry: &Entry) {
        let _ = entry.file.set_modified(SystemTime::now());
    }

    /// Takes the miss lock of `url`, waiting up to `wait` for the worker that holds
    /// it. None when it could not be had (the caller fetches without storing).
    pub fn lock(&self, url: &str, wait: Duration) -> Option<MissLock> {
        let path = self.dir.join(format!("{}.lock", file_name(url)));
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ok()?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Some(MissLock { _lock: lock, path }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    // Another worker is fetching this URL: wait for it to finish.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(_) => return None,
            }
        }
    }

    /// Remembers that `url` answered with something not storable: for a while its
    /// misses go upstream at once instead of queueing behind one another on the
    /// miss lock (Varnish's hit-for-miss).
    pub fn mark_pass(&self, url: &str) {
        let _ = File::create(self.dir.join(format!("{}.pass", file_name(url))));
    }

    /// True when `url` was marked with [`Cache::mark_pass`] within the last 120 s.
    pub fn is_pass(&self, url: &str) -> bool {
        std::fs::metadata(self.dir.join(format!("{}.pass", file_name(url))))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < PASS_TTL))
    }

    pub fn clear_pass(&self, url: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{}.pass", file_name(url))));
    }

    /// Starts a new entry: body bytes go to a temporary file.
    pub fn writer(&self) -> io::Result<Writer> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("tmp.{}.{n}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(Writer {
            file: Some(io::BufWriter::with_capacity(64 * 1024, file)),
            tmp,
            written: 0,
            limit: self.max_object,
        })
    }

    /// Puts a finished entry in place of whatever `meta.url` had, then evicts.
    pub fn commit(&self, mut w: Writer, meta: &Meta) -> io::Result<()> {
        let Some(buf) = w.file.take() else {
            return Err(io::Error::other("the entry was abandoned"));
        };
        let file = buf.into_inner().map_err(|e| e.into_error());
        self.finish(&w.tmp, file, meta)?;
        let size = std::fs::metadata(self.path(&meta.url)).map_or(w.written, |m| m.len());
        self.account(size);
        Ok(())
    }

    /// Rewrites an entry's metadata (after a 304), keeping its body.
    pub fn refresh(&self, entry: &Entry, meta: &Meta) -> io::Result<()> {
        let mut w = self.writer()?;
        let buf = w
            .file
            .take()
            .ok_or_else(|| io::Error::other("no temporary file"))?;
        let file = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|mut f| {
                io::copy(&mut (&entry.file).take(meta.body_len), &mut f)?;
                Ok(f)
            });
        self.finish(&w.tmp, file, meta)
    }

    /// Appends the metadata to a temporary file and renames it into place; the
    /// temporary file goes on any error.
    fn finish(&self, tmp: &Path, file: io::Result<File>, meta: &Meta) -> io::Result<()> {
        let done = file
            .and_then(|mut f| write_meta(&mut f, meta))
            .and_then(|()| std::fs::rename(tmp, self.path(&meta.url)));
        if done.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        done
    }

    /// Adds a new entry's size to the running total in `state.size` (under its
    /// flock); past the cap, an eviction pass recounts the directory and brings
    /// it down. The total only grows between passes (a replaced entry is counted
    /// again), so it errs towards evicting early, and each pass corrects it.
    fn account(&self, added: u64) {
        let path = self.dir.join(STATE_SIZE);
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
        else {
            self.evict();
            return;
        };
        let Ok(mut held) = Flock::lock(file, FlockArg::LockExclusive) else {
            self.evict();
            return;
        };
        let mut text = String::new();
        let _ = held.read_to_string(&mut text);
        let mut total = text.trim().parse::<u64>().unwrap_or(u64::MAX / 2) + added;
        if total > self.max_size {
            total = self.evict();
        }
        let _ = held.set_len(0);
        let _ = held.write_all_at(total.to_string().as_bytes(), 0);
    }

    /// Removes the oldest entries until the total is under 90% of the cap (so the
    /// next passes are not one store away), temporary files of workers that no
    /// longer exist, lapsed not-storable marks, and lock files of entries that are
    /// gone. Returns the bytes left.
    pub fn evict(&self) -> u64 {
        let low = self.max_size / 10 * 9;
        let mut entries = Vec::new();
        let mut total: u64 = 0;
        let mut locks = Vec::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(md) = e.metadata() else { continue };
            if let Some(rest) = name.strip_prefix("tmp.") {
                let pid = rest.split('.').next().unwrap_or("");
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            if name.ends_with(".pass") {
                if md
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|a| a >= PASS_TTL)
                {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            if name.ends_with(".lock") {
                locks.push((e.path(), md.modified().ok()));
                continue;
            }
            if name == STATE_SIZE {
                continue;
            }
            total += md.len();
            entries.push((
                md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                md.len(),
                e.path(),
            ));
        }
        if total > self.max_size {
            entries.sort();
            for (_, len, path) in &entries {
                if total <= low {
                    break;
                }
                if std::fs::remove_file(path).is_ok() {
                    log::debug!("proxy: cache evicted {} ({len} bytes)", path.display());
                    total -= len;
                }
            }
        }
        self.remove_idle_locks(&locks);
        total
    }

    fn remove_idle_locks(&self, locks: &[(PathBuf, Option<SystemTime>)]) {
        let old = SystemTime::now() - Duration::from_secs(60);
        for (path, modified) in locks {
            if modified.is_some_and(|m| m > old)
                || path.with_extension("").exists()
                || path.with_extension("pass").exists()
            {
                continue;
            }
            if let Ok(f) = File::open(path)
                && let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A body being written to a temporary file; removed unless committed.
pub struct Writer {
    file: Option<io::BufWriter<File>>,
    tmp: PathBuf,
    written: u64,
    limit: u64,
}

impl Writer {
    /// Appends body bytes. Past the object size limit, or on a write error, the
    /// entry is abandoned (the response still reaches the client).
    pub fn write(&mut self, data: &[u8]) {
        let Some(f) = self.file.as_mut() else { return };
        self.written += data.len() as u64;
        if self.written > self.limit || f.write_all(data).is_err() {
            self.abandon();
        }
    }

    pub fn abandon(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.tmp);
    }

    pub fn is_live(&self) -> bool {
        self.file.is_some()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.file.is_some() && !self.tmp.as_os_str().is_empty() {
            self.abandon();
        }
    }
}

fn write_meta(file: &mut File, meta: &Meta) -> io::Result<()> {
    let json = meta.to_json().to_string();
    file.write_all(json.as_bytes())?;
    file.write_all(&(json.len() as u64).to_le_bytes())?;
    file.write_all(MAGIC)?;
    file.sync_data()
}

fn read_meta(file: &mut File) -> io::Result<Meta> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a cache entry");
    let size = file.metadata()?.len();
    let mut tail = [0u8; 16];
    if size < 16 {
        return Err(bad());
    }
    file.read_exact_at(&mut tail, size - 16)?;
    if &tail[8..] != MAGIC {
        return Err(bad());
    }
    let len = u64::from_le_bytes(tail[..8].try_into().map_err(|_| bad())?);
    let start = size.checked_sub(16 + len).ok_or_else(bad)?;
    let mut json = vec![0u8; usize::try_from(len).map_err(|_| bad())?];
    file.read_exact_at(&mut json, start)?;
    let value: Value = serde_json::from_slice(&json).map_err(|_| bad())?;
    let meta = Meta::from_json(&value).ok_or_else(bad)?;
    if meta.body_len != start {
        return Err(bad());
    }
    Ok(meta)
}

/// RFC 9111 for a shared cache: what may be stored, for how long it is fresh.
pub mod policy {
    use super::Meta;

    /// Statuses a cache may store with heuristic freshness (RFC 9110 15.1).
    const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
    /// The most heuristic freshness given from Last-Modified.
    const MAX_HEURISTIC: i64 = 24 * 3600;

    /// The Cache-Control directives in `values`: lower-case names, optional values.
    pub fn directives<'a>(values: impl Iterator<Item = &'a str>) -> Vec<(String, Option<String>)> {
        values
            .flat_map(|v| v.split(','))
            .filter_map(|d| {
                let d = d.trim();
                if d.is_empty() {
                    return None;
                }
                let (n, v) = match d.split_once('=') {
                    Some((n, v)) => (n, Some(v.trim().trim_matches('"').to_string())),
                    None => (d, None),
                };
                Some((n.trim().to_ascii_lowercase(), v))
            })
            .collect()
    }

    /// The Cache-Control directives of a stored response.
    fn response_directives(meta: &Meta) -> Vec<(String, Option<String>)> {
        directives(
            meta.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
                .map(|(_, v)| v.as_str()),
        )
    }

    pub fn has(cc: &[(String, Option<String>)], name: &str) -> bool {
        cc.iter().any(|(n, _)| n == name)
    }

    pub fn seconds(cc: &[(String, Option<String>)], name: &str) -> Option<i64> {
        cc.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref()?.parse::<i64>().ok())
            .map(|s| s.max(0))
    }

    /// The freshness lifetime in seconds (RFC 9111 4.2.1), 0 when none applies.
    pub fn lifetime(meta: &Meta) -> i64 {
        let cc = response_directives(meta);
        if let Some(s) = seconds(&cc, "s-maxage").or_else(|| seconds(&cc, "max-age")) {
            return s;
        }
        let date = meta
            .header("date")
            .and_then(super::parse_http_date)
            .unwrap_or(meta.response_time);
        if let Some(expires) = meta.header("expires") {
            // An invalid Expires (e.g. "0") means already expired.
            return super::parse_http_date(expires).map_or(0, |e| (e - date).max(0));
        }
        if HEURISTIC.contains(&meta.status)
            && let Some(lm) = meta
                .header("last-modified")
                .and_then(super::parse_http_date)
        {
            return ((date - lm).max(0) / 10).min(MAX_HEURISTIC);
        }
        0
    }

    /// Why a response to a GET may not be stored, or None when it may.
    pub fn refuse_store(
        meta: &Meta,
        request_cc: &[(String, Option<String>)],
        authorized: bool,
    ) -> Option<&'static str> {
        let cc = response_directives(meta);
        let explicit = has(&cc, "max-age")
            || has(&cc, "s-maxage")
            || meta.header("expires").is_some()
            || has(&cc, "public");
        if has(&cc, "no-store") || has(request_cc, "no-store") {
            return Some("no-store");
        }
        if has(&cc, "private") {
            return Some("private");
        }
        if meta
            .header("vary")
            .is_some_and(|v| v.split(',').any(|t| t.trim() == "*"))
        {
            return Some("Vary: *");
        }
        if authorized
            && !(has(&cc, "public") || has(&cc, "s-maxage") || has(&cc, "must-revalidate"))
        {
            return Some("the request carried Authorization");
        }
        if meta.header("set-cookie").is_some() && !has(&cc, "public") {
            return Some("Set-Cookie");
        }
        if matches!(meta.status, 206 | 304)
            || meta.status < 200
            || (!HEURISTIC.contains(&meta.status) && !explicit)
        {
            return Some("status not cacheable");
        }
        let validator = meta.header("etag").is_some() || meta.header("last-modified").is_some();
        if lifetime(meta) == 0 && !validator {
            return Some("neither fresh nor validatable");
        }
        None
    }

    /// True when a stored response may answer the request without asking the
    /// origin: fresh, no `no-cache` in it, and the request's own limits allow.
    pub fn usable_without_validation(
        meta: &Meta,
        request_cc: &[(String, Option<String>)],
        pragma_no_cache: bool,
        now: i64,
    ) -> bool {
        let cc = response_directives(meta);
        if has(&cc, "no-cache")
            || has(request_cc, "no-cache")
            || (pragma_no_cache && request_cc.is_empty())
        {
            return false;
        }
        let age = meta.age(now);
        if seconds(request_cc, "max-age").is_some_and(|m| age > m) {
            return false;
        }
        let fresh_for = lifetime(meta) - age;
        if seconds(request_cc, "min-fresh").is_some_and(|m| fresh_for < m) {
            return false;
        }
        fresh_for > 0
    }
}

/// Seconds since the epoch of an HTTP date (the crate's parser: IMF-fixdate, RFC
/// 850 or asctime).
pub use crate::parse_http_date;

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(headers: &[(&str, &str)]) -> Meta {
        Meta {
            url: "http://h/".into(),
            status: 200,
            reason: "OK".into(),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            vary: Vec::new(),
            request_time: 1000,
            response_time: 1000,
            initial_age: 0,
            body_len: 0,
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(784111777));
        assert_eq!(parse_http_date("0"), None);
        assert_eq!(
            parse_http_date(&crate::http_date(1_700_000_000)),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn freshness_and_storability() {
        use policy::*;
        assert_eq!(
            lifetime(&meta(&[("Cache-Control", "max-age=60, s-maxage=5")])),
            5
        );
        let date = crate::http_date(1000);
        let lm = crate::http_date(0);
        assert_eq!(
            lifetime(&meta(&[("Date", &date), ("Last-Modified", &lm)])),
            100
        );
        assert_eq!(lifetime(&meta(&[("Expires", "0")])), 0);
        assert_eq!(
            refuse_store(&meta(&[("Cache-Control", "no-store")]), &[], false),
            Some("no-store")
        );
        assert_eq!(
            refuse_store(&meta(&[("Cache-Control", "max-age=9")]), &[], true),
            Some("the request carried Authorization")
        );
        assert_eq!(
            refuse_store(
                &meta(&[("Cache-Control", "max-age=9"), ("Vary", "*")]),
                &[],
                false
            ),
            Some("Vary: *")
        );
        assert_eq!(
            refuse_store(&meta(&[("Cache-Control", "max-age=9")]), &[], false),
            None
        );
        assert_eq!(
            refuse_store(&meta(&[]), &[], false),
            Some("neither fresh nor validatable")
        );
        let m = meta(&[("Cache-Control", "max-age=60")]);
        assert!(usable_without_validation(&m, &[], false, 1030));
        assert!(!usable_without_validation(&m, &[], false, 1061));
        assert!(!usable_without_validation(
            &m,
            &directives(["max-age=0"].into_iter()),
            false,
            1001
        ));
        assert!(!usable_without_validation(&m, &[], true, 1001));
    }

    #[test]
    fn entries_round_trip_and_evict_oldest() {
        let dir = std::env::temp_dir().join(format!("fs-cache-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache {
            dir: dir.clone(),
            max_size: 2500,
            max_object: 10_000,
        };
        cache.open().unwrap();
        for (i, url) in ["http://a/", "http://b/", "http://c/"].iter().enumerate() {
            let mut w = cache.writer().unwrap();
            w.write(&vec![b'x'; 1000]);
            let mut m = meta(&[("ETag", "\"1\"")]);
            m.url = url.to_string();
            m.body_len = 1000;
            let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i as u64);
            cache.commit(w, &m).unwrap();
            if let Some(e) = cache.lookup(url) {
                e.file.set_modified(old).unwrap();
            }
        }
        assert!(cache.lookup("http://a/").is_none(), "the oldest went");
        let e = cache.lookup("http://c/").unwrap();
        assert_eq!(
            (e.meta.body_len, e.meta.header("etag")),
            (1000, Some("\"1\""))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
