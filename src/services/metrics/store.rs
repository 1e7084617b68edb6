//! The metrics store: one SQLite file in WAL mode. The collector is its only
//! writer (one transaction per flush); forked HTTP workers read it concurrently,
//! each with its own read-only connection, and never block the writer.
//!
//! Tables: `metric` (one row per name: kind, last value and time, points received,
//! counter total), `point` (raw points, `t` in Unix milliseconds, clustered by
//! metric and time: one B-tree, no separate index; `n` tells apart points of the
//! same metric and millisecond), `rollup` (per metric and minute: count, sum, min,
//! max), `counter` (the collector's own) and `meta` (the batch sequence).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::line::Kind;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS metric(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    last_t INTEGER NOT NULL DEFAULT 0,
    last_v REAL NOT NULL DEFAULT 0,
    total REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS point(
    metric INTEGER NOT NULL,
    t INTEGER NOT NULL,
    n INTEGER NOT NULL,
    v REAL NOT NULL,
    PRIMARY KEY(metric, t, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup(
    metric INTEGER NOT NULL,
    minute INTEGER NOT NULL,
    count INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY(metric, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counter(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
";

/// How long a reader waits for a lock before giving up (WAL readers rarely wait).
const READ_BUSY: Duration = Duration::from_secs(2);

fn context(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("metrics database {}: {what}: {e}", path.display())
}

/// Opens (creating it and its directory if needed) the database for writing:
/// WAL mode, the schema in place.
pub fn open_for_writing(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| context(path, "creating its directory", e))?;
    }
    let conn = Connection::open(path).map_err(|e| context(path, "opening", e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| context(path, "busy timeout", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| context(path, "switching to WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(context(path, "switching to WAL", format!("got {mode}")));
    }
    // WAL + NORMAL: a commit survives the process being killed; only a power
    // failure can lose the last transactions.
    // A page cache large enough for the hot index pages of every metric: with
    // SQLite's default 2 MB the writer rereads pages from the kernel each flush.
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA cache_size=-32768;")
        .and_then(|()| conn.execute_batch(SCHEMA))
        .map_err(|e| context(path, "creating the schema", e))?;
    Ok(conn)
}

/// EX_DATAERR: the file is not a sound SQLite database.
const CORRUPT: i32 = 65;
/// EX_CANTCREAT: the database cannot be created or written.
const CANT_WRITE: i32 = 73;

/// Opens the database and checks it whole (its header, the schema, `PRAGMA
/// quick_check`), as the start-up check does; the connection is closed again. The
/// error carries a sysexits code: 65 for a corrupt file, 73 for one that cannot
/// be created or written.
pub fn check(path: &Path) -> Result<(), (i32, String)> {
    if !looks_like_sqlite(path) {
        return Err((
            CORRUPT,
            context(path, "corrupt", "not an SQLite 3 database (bad header)"),
        ));
    }
    let conn = open_for_writing(path).map_err(|m| (CANT_WRITE, m))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| (CORRUPT, context(path, "checking", e)))?;
    if verdict != "ok" {
        return Err((CORRUPT, context(path, "corrupt", verdict)));
    }
    // A database that was only read so far must also take a write (opening
    // falls back to read-only on a write-protected file).
    conn.execute_batch("PRAGMA user_version = 1")
        .map_err(|e| (CANT_WRITE, context(path, "writing", e)))?;
    Ok(())
}

/// False when the file exists, has content, and does not start with SQLite's
/// magic string (an absent, empty or unreadable file is for `open` to judge).
fn looks_like_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
        Ok(0) | Err(_) => true,
        Ok(n) => head[..n] == b"SQLite format 3\0"[..n] && n == 16,
    }
}

/// Opens the database for reading (an HTTP worker's connection).
pub fn open_for_reading(path: &Path) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| context(path, "opening", e))?;
    conn.busy_timeout(READ_BUSY)
        .map_err(|e| context(path, "busy timeout", e))?;
    // Read the file through a mapping rather than copies into a private cache.
    conn.execute_batch("PRAGMA mmap_size=268435456;")
        .map_err(|e| context(path, "mapping", e))?;
    Ok(conn)
}

/// A point waiting to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub name: String,
    pub kind: Kind,
    pub t_ms: i64,
    pub value: f64,
}

/// Per-minute aggregate of a batch.
#[derive(Clone, Copy)]
struct Agg {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Agg {
    fn of(v: f64) -> Agg {
        Agg {
            count: 1,
            sum: v,
            min: v,
            max: v,
        }
    }
    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// What a batch changes in one `metric` row.
struct Latest {
    kind: Kind,
    count: i64,
    last_t: i64,
    last_v: f64,
    increments: f64,
}

/// How many metrics one expiry pass looks at.
const METRICS_PER_PASS: i64 = 500;

/// A point's `n` is its batch number shifted by this, plus its place in the batch.
const BATCH_SHIFT: u32 = 24;

/// The collector's connection: writes batches, expires old data.
pub struct Writer {
    conn: Connection,
    ids: HashMap<String, i64>,
    /// The number of the last batch committed.
    batch: i64,
    /// The metric id the next expiry pass starts from.
    expire_from: i64,
}

impl Writer {
    /// Opens the writing connection. It never checkpoints on its own: the
    /// checkpointer companion does, so the checkpoint's fsync never stalls
    /// ingestion (see [`run_checkpointer`]).
    pub fn open(path: &Path) -> Result<Writer, String> {
        let conn = open_for_writing(path)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;")
            .map_err(|e| context(path, "turning off automatic checkpoints", e))?;
        let batch = conn
            .query_row("SELECT value FROM meta WHERE key = 'batch'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| context(path, "reading the batch number", e))?
            .unwrap_or(0);
        Ok(Writer {
            conn,
            ids: HashMap::new(),
            batch,
            expire_from: 0,
        })
    }

    /// The collector's counters as last flushed.
    pub fn counters(&self) -> rusqlite::Result<HashMap<String, i64>> {
        let mut stmt = self.conn.prepare("SELECT name, value FROM counter")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Every metric name in the database.
    pub fn names(&self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM metric")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    /// The last stored value of `name`, if it has one.
    pub fn last_value(&self, name: &str) -> rusqlite::Result<Option<f64>> {
        self.conn
            .query_row(
                "SELECT last_v FROM metric WHERE name = ?1 AND count > 0",
                [name],
                |r| r.get(0),
            )
            .optional()
    }

    fn id_of(&mut self, name: &str, kind: Kind) -> rusqlite::Result<i64> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO metric(name, kind) VALUES (?1, ?2)")?
            .execute(params![name, kind.as_str()])?;
        let id = self
            .conn
            .prepare_cached("SELECT id FROM metric WHERE name = ?1")?
            .query_row([name], |r| r.get(0))?;
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    /// Writes `points` and the collector's `counters` in one transaction.
    pub fn write(
        &mut self,
        points: &[Pending],
        counters: &[(String, i64)],
    ) -> rusqlite::Result<()> {
        assert!(points.len() < 1 << BATCH_SHIFT, "batch too large");
        self.conn.execute_batch("BEGIN")?;
        match self.write_batch(points, counters) {
            Ok(()) => {
                self.conn.execute_batch("COMMIT")?;
                self.batch += 1;
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                // Names created in the rolled-back transaction are gone again.
                self.ids.clear();
                Err(e)
            }
        }
    }

    fn write_batch(
        &mut self,
        points: &[Pending],
        counters: &[(String, i64)],
    ) -> rusqlite::Result<()> {
        let mut rollups: HashMap<(i64, i64), Agg> = HashMap::new();
        let mut latest: HashMap<i64, Latest> = HashMap::new();
        let ids = points
            .iter()
            .map(|p| self.id_of(&p.name, p.kind))
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        let batch = self.batch + 1;
        // In key order: consecutive inserts land on the same leaf pages.
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_unstable_by_key(|&i| (ids[i], points[i].t_ms, i));
        let mut insert = self
            .conn
            .prepare_cached("INSERT INTO point(metric, t, n, v) VALUES (?1, ?2, ?3, ?4)")?;
        for i in order {
            let (p, id) = (&points[i], ids[i]);
            let n = (batch << BATCH_SHIFT) + i as i64;
            insert.execute(params![id, p.t_ms, n, p.value])?;
            let minute = p.t_ms.div_euclid(60_000) * 60;
            rollups
                .entry((id, minute))
                .and_modify(|a| a.add(p.value))
                .or_insert_with(|| Agg::of(p.value));
            let inc = if p.kind == Kind::Counter {
                p.value
            } else {
                0.0
            };
            let l = latest.entry(id).or_insert(Latest {
                kind: p.kind,
                count: 0,
                last_t: p.t_ms,
                last_v: p.value,
                increments: 0.0,
            });
            l.count += 1;
            l.increments += inc;
            l.kind = p.kind;
            if p.t_ms >= l.last_t {
                (l.last_t, l.last_v) = (p.t_ms, p.value);
            }
        }
        drop(insert);
        for ((id, minute), a) in &rollups {
            self.conn
                .prepare_cached(
                    "INSERT INTO rollup(metric, minute, count, sum, min, max) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(metric, minute) DO UPDATE SET count = count + excluded.count,
                       sum = sum + excluded.sum, min = min(min, excluded.min), max = max(max, excluded.max)",
                )?
                .execute(params![id, minute, a.count, a.sum, a.min, a.max])?;
        }
        for (id, l) in &latest {
            // Every right-hand side sees the row as it was before this update.
            self.conn
                .prepare_cached(
                    "UPDATE metric SET kind = ?2, count = count + ?3, total = total + ?4,
                       last_v = CASE WHEN count = 0 OR ?5 >= last_t THEN ?6 ELSE last_v END,
                       last_t = CASE WHEN count = 0 OR ?5 >= last_t THEN ?5 ELSE last_t END
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    l.kind.as_str(),
                    l.count,
                    l.increments,
                    l.last_t,
                    l.last_v
                ])?;
        }
        self.conn
            .prepare_cached(
                "INSERT INTO meta(key, value) VALUES ('batch', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute([batch])?;
        for (name, value) in counters {
            self.conn
                .prepare_cached(
                    "INSERT INTO counter(name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![name, value])?;
        }
        Ok(())
    }

    /// Moves the write-ahead log into the database file and empties it (on a
    /// clean stop, so the file alone holds everything).
    pub fn checkpoint(&self) -> rusqlite::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }

    /// A checkpoint that never waits for readers or blocks writers, for when the
    /// log has grown past what the checkpointer should have let it.
    pub fn checkpoint_passive(&self) -> rusqlite::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    }

    /// Deletes raw points older than `raw_before_ms` and rollups older than
    /// `rollup_before_ms` for the next [`METRICS_PER_PASS`] metrics (a pass
    /// continues where the last one stopped, and wraps around), at most `budget`
    /// rows in all, in short transactions of at most 1000 rows each, so that
    /// neither many metrics nor much old data makes ingestion wait long. Returns
    /// the rows deleted.
    pub fn expire(
        &mut self,
        raw_before_ms: i64,
        rollup_before_ms: i64,
        budget: usize,
    ) -> rusqlite::Result<usize> {
        const CHUNK: i64 = 1000;
        let ids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id FROM metric WHERE id >= ?1 ORDER BY id LIMIT ?2")?;
            stmt.query_map(params![self.expire_from, METRICS_PER_PASS], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        self.expire_from = match ids.last() {
            Some(last) if ids.len() as i64 == METRICS_PER_PASS => last + 1,
            _ => 0,
        };
        let minute_before = rollup_before_ms.div_euclid(60_000) * 60;
        let statements = [
            (
                "DELETE FROM point WHERE metric = ?1 AND (t, n) IN
                   (SELECT t, n FROM point WHERE metric = ?1 AND t < ?2 LIMIT ?3)",
                raw_before_ms,
            ),
            (
                "DELETE FROM rollup WHERE metric = ?1 AND minute IN
                   (SELECT minute FROM rollup WHERE metric = ?1 AND minute < ?2 LIMIT ?3)",
                minute_before,
            ),
        ];
        let mut deleted = 0;
        for id in ids {
            for (sql, before) in statements {
                loop {
                    if deleted >= budget {
                        // More to do here: the next pass starts with this metric.
                        self.expire_from = id;
                        return Ok(deleted);
                    }
                    let n = self
                        .conn
                        .prepare_cached(sql)?
                        .execute(params![id, before, CHUNK])?;
                    deleted += n;
                    if (n as i64) < CHUNK {
                        break;
                    }
                }
            }
        }
        Ok(deleted)
    }
}

/// The body of the `metrics checkpointer` companion: copies what the write-ahead
/// log holds into the database file (PASSIVE checkpoints: they neither wait for
/// readers nor block the collector), so the fsync that a checkpoint costs happens
/// here and not in the process that receives points. While the collector writes
/// faster than a pass copies, passes follow each other at once, so that one
/// finishes between two commits and the collector's next transaction starts the
/// log afresh; once caught up it waits `every`. Runs until the master stops it.
pub fn run_checkpointer(path: &Path, every: Duration) -> i32 {
    let conn = match open_for_writing(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("metrics checkpointer: {e}");
            return 73;
        }
    };
    let mut failing = false;
    loop {
        // (busy, frames in the log, frames checkpointed)
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        let pause = match pass {
            Ok((_, log, done)) => {
                failing = false;
                if done < log {
                    Duration::from_millis(5)
                } else {
                    every
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!("metrics checkpointer: {}: {e}", path.display());
                }
                failing = true;
                every
            }
        };
        std::thread::sleep(pause);
    }
}

/// One metric as `GET /api/metrics` lists it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub kind: Kind,
    pub count: i64,
    pub last_t_ms: i64,
    pub last_v: f64,
    pub total: f64,
}

/// Every metric with at least one point, by name.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Summary>> {
    let mut stmt = conn.prepare(
        "SELECT name, kind, count, last_t, last_v, total FROM metric WHERE count > 0 ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        let kind: String = r.get(1)?;
        Ok(Summary {
            name: r.get(0)?,
            kind: Kind::parse(&kind).unwrap_or(Kind::Gauge),
            count: r.get(2)?,
            last_t_ms: r.get(3)?,
            last_v: r.get(4)?,
            total: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// The collector's counters, by name.
pub fn counters(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare("SELECT name, value FROM counter ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The id of metric `name`, if it exists.
pub fn metric_id(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT id FROM metric WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
}

/// One bucket of a range query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, Unix milliseconds.
    pub t_ms: i64,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// Where a range query reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Raw points: exact to the millisecond.
    Raw,
    /// Per-minute rollups: the range widened to whole minutes.
    Rollup,
}

/// Buckets of `step_ms` (aligned to multiples of it since the epoch) over
/// `from_ms..=to_ms` for metric `id`.
pub fn buckets(
    conn: &Connection,
    id: i64,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    source: Source,
) -> rusqlite::Result<Vec<Bucket>> {
    let (sql, from, to) = match source {
        Source::Raw => (
            "SELECT (t / ?2) * ?2 AS b, count(*), sum(v), min(v), max(v) FROM point
             WHERE metric = ?1 AND t >= ?3 AND t <= ?4 GROUP BY b ORDER BY b",
            from_ms,
            to_ms,
        ),
        Source::Rollup => (
            "SELECT (minute * 1000 / ?2) * ?2 AS b, sum(count), sum(sum), min(min), max(max)
             FROM rollup WHERE metric = ?1 AND minute >= ?3 AND minute <= ?4 GROUP BY b ORDER BY b",
            from_ms.div_euclid(60_000) * 60,
            to_ms.div_euclid(60_000) * 60,
        ),
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![id, step_ms, from, to], |r| {
        Ok(Bucket {
            t_ms: r.get(0)?,
            count: r.get(1)?,
            sum: r.get(2)?,
            min: r.get(3)?,
            max: r.get(4)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fs-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("m.db")
    }

    fn pt(name: &str, t_ms: i64, value: f64) -> Pending {
        Pending {
            name: name.into(),
            kind: Kind::Gauge,
            t_ms,
            value,
        }
    }

    #[test]
    fn raw_and_rollup_buckets_agree() {
        let path = temp_db("agree");
        let mut w = Writer::open(&path).unwrap();
        let pts: Vec<Pending> = (0..600)
            .map(|i| pt("x", 1_700_000_000_000 + i * 1000, (i % 7) as f64))
            .collect();
        w.write(&pts[..300], &[]).unwrap();
        w.write(&pts[300..], &[("c".into(), 3)]).unwrap();
        let r = open_for_reading(&path).unwrap();
        let id = metric_id(&r, "x").unwrap().unwrap();
        let (from, to) = (1_700_000_000_000 - 60_000, 1_700_000_000_000 + 700_000);
        let raw = buckets(&r, id, from, to, 60_000, Source::Raw).unwrap();
        let roll = buckets(&r, id, from, to, 60_000, Source::Rollup).unwrap();
        assert_eq!(raw, roll);
        assert_eq!(raw.iter().map(|b| b.count).sum::<i64>(), 600);
        let s = list(&r).unwrap();
        assert_eq!((s[0].count, s[0].last_v), (600, (599 % 7) as f64));
        assert_eq!(counters(&r).unwrap(), vec![("c".to_string(), 3)]);
        w.expire(1_700_000_000_000 + 100_000, 0, 1_000_000).unwrap();
        let left: i64 = r
            .query_row("SELECT count(*) FROM point", [], |row| row.get(0))
            .unwrap();
        assert_eq!(left, 500);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
