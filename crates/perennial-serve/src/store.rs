//! The store: one directory with an SQLite database (WAL, synchronous commits) and the
//! encoder weights of each representation version as safetensors files.
//!
//! ```text
//! STORE/perennial.db              examples, versions, the unknown queue, settings
//! STORE/tokens.db                 tokens (argon2 hashes), written by `perennial serve token`
//! STORE/versions/v000000.safetensors   the encoder as first loaded
//! STORE/versions/v000001.safetensors   after the first consolidation, ...
//! STORE/lock                      held by the running server
//! STORE/examples/v000001/          with --example-index: the examples' features in the
//!                                  current version, HNSW-indexed (perennial_store)
//! ```
//!
//! The database is the one source of truth: the server rebuilds its learner from it on
//! start by replaying the examples in the order they were written. A weights file is
//! written and synced under a temporary name, then renamed, before the row that names
//! it commits; a file without a row is an interrupted consolidation and is removed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use perennial::lifelong::{encoder, Encoder, EncoderSpec, LearnerConfig};
use perennial::nn::params::{load_named, save_named};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tch::Tensor;

/// The store format this version writes and reads.
pub const FORMAT: i64 = 1;
/// The database file inside a store.
pub const DB: &str = "perennial.db";
/// The lock file a running server holds.
pub const LOCK: &str = "lock";
/// The folder of the example index inside a store.
pub const EXAMPLES: &str = "examples";

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May predict and read.
    Reader,
    /// May also teach, forget, correct and consolidate.
    Writer,
}

impl Role {
    /// The role's name as the store and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
        }
    }

    /// The role a name spells.
    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            _ => bail!("role {s:?}: must be reader or writer"),
        }
    }
}

/// One stored example.
#[derive(Debug, Clone)]
pub struct Example {
    /// Its id: examples are replayed in id order.
    pub id: i64,
    /// Its class.
    pub label: String,
    /// Its pixels, `side x side`, ink 1.
    pub pixels: Vec<f32>,
}

/// One representation version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Version {
    /// Its number: 0 for the encoder as first loaded.
    pub version: u64,
    /// When it was made (RFC 3339, UTC).
    pub at: String,
    /// Why (`created`, or the consolidation's reason).
    pub reason: String,
    /// The consolidation's mean query loss.
    pub loss: Option<f64>,
    /// The consolidation's mean query accuracy.
    pub accuracy: Option<f64>,
    /// Seconds the consolidation trained.
    pub seconds: Option<f64>,
    /// Classes it trained on.
    pub classes: Option<u64>,
    /// The last example id it saw: classes first taught after it count as new.
    pub upto: i64,
    /// The SHA-256 of its weights file, checked when it is loaded.
    pub sha256: String,
    /// Whether its weights are still on disk (a rollback target).
    pub kept: bool,
}

/// An input the learner flagged as unknown, kept for a person to label.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unknown {
    /// Its id in the queue.
    pub id: i64,
    /// The prediction's id.
    pub prediction: String,
    /// The nearest class.
    pub label: String,
    /// That class's probability.
    pub probability: f64,
    /// The unknown score (above 1: unknown).
    pub unknown_score: f64,
    /// When it was flagged.
    pub at: String,
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    conn: Connection,
    side: usize,
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A connection in WAL mode with synchronous commits.
pub fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| corrupt(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "{}: the file system does not take SQLite's WAL mode ({mode})",
            path.display()
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// The error for a store that cannot be trusted.
pub fn corrupt(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{} is not a Perennial store or is corrupt ({e}); it was not loaded. Restore it from a \
         backup, or start a new store elsewhere",
        path.display()
    )
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

impl Store {
    /// Whether `dir` holds a store.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB).is_file()
    }

    /// Creates a store in `dir` (new or empty) for `encoder` with the learner
    /// settings `config`. Interrupted, it leaves a store that refuses to open and says so.
    pub fn create(dir: &Path, encoder: &dyn Encoder, config: &LearnerConfig) -> Result<Store> {
        let side = encoder
            .image_side()
            .ok_or_else(|| anyhow!("the encoder takes features, not images: it cannot serve"))?;
        // A new store's folder may hold its tokens already (`perennial serve token`).
        // (A `versions/` left by an interrupted creation is written over.)
        let foreign =
            |name: &str| !(name.starts_with(crate::auth::DB) || name == LOCK || name == "versions");
        if dir.exists()
            && std::fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .flatten()
                .any(|e| foreign(&e.file_name().to_string_lossy()))
        {
            bail!(
                "{} exists and is not empty, and holds no store: give a new or empty folder",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir.join("versions"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let sha256 = write_weights(dir, 0, &encoder.state())?;
        let path = dir.join(DB);
        let mut conn = connect(&path)?;
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE examples(id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT NOT NULL,
                                   pixels BLOB NOT NULL, created TEXT NOT NULL);
             CREATE INDEX examples_label ON examples(label);
             CREATE TABLE versions(version INTEGER PRIMARY KEY, created TEXT NOT NULL,
                                   reason TEXT NOT NULL, loss REAL, accuracy REAL, seconds REAL,
                                   classes INTEGER, upto INTEGER NOT NULL,
                                   sha256 TEXT NOT NULL, kept INTEGER NOT NULL DEFAULT 1);
             CREATE TABLE unknown(id INTEGER PRIMARY KEY AUTOINCREMENT, prediction TEXT NOT NULL,
                                  pixels BLOB NOT NULL, label TEXT NOT NULL,
                                  probability REAL NOT NULL, score REAL NOT NULL,
                                  created TEXT NOT NULL);",
        )?;
        let spec = serde_json::to_string(&encoder.spec())?;
        let config = serde_json::to_string(config)?;
        for (k, v) in [
            ("side", side.to_string()),
            ("encoder", spec),
            ("config", config),
            ("current", "0".to_string()),
            ("perennial", env!("CARGO_PKG_VERSION").to_string()),
            // Written last: a store without it is one whose creation was interrupted.
            ("format", FORMAT.to_string()),
        ] {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        tx.execute(
            "INSERT INTO versions(version, created, reason, upto, sha256)
             VALUES (0, ?1, 'created', 0, ?2)",
            params![now(), sha256],
        )?;
        tx.commit()?;
        drop(conn);
        sync_dir(dir)?;
        Store::open(dir)
    }

    /// Opens the store in `dir`, checking it whole: the database's integrity, its
    /// format, and the current version's weights. A store that fails is refused.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.join(DB);
        if !path.is_file() {
            bail!("{} holds no store ({} is missing)", dir.display(), DB);
        }
        let conn = connect(&path)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| corrupt(&path, e))?;
        if check != "ok" {
            return Err(corrupt(&path, check));
        }
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| corrupt(&path, e))?;
        if tables == 0 {
            bail!(
                "{} is an incomplete store (its creation was interrupted): remove the folder \
                 and start again",
                dir.display()
            );
        }
        let meta = |k: &str| -> Result<Option<String>> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .optional()
                .map_err(|e| corrupt(&path, e))
        };
        match meta("format")? {
            None => bail!(
                "{} is an incomplete store (its creation was interrupted): remove the folder \
                 and start again",
                dir.display()
            ),
            Some(f) if f != FORMAT.to_string() => bail!(
                "{} is a store of format {f}, written by Perennial {}; this is Perennial {} \
                 (format {FORMAT})",
                dir.display(),
                meta("perennial")?.unwrap_or_else(|| "?".into()),
                env!("CARGO_PKG_VERSION")
            ),
            Some(_) => {}
        }
        let side: usize = meta("side")?
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(&path, "no image side"))?;
        let store = Store {
            dir: dir.to_path_buf(),
            conn,
            side,
        };
        store.config()?;
        store.spec()?;
        let current = store.current()?;
        if !store
            .versions()?
            .iter()
            .any(|v| v.version == current && v.kept)
        {
            return Err(corrupt(
                &path,
                format!("current version {current} is not kept"),
            ));
        }
        store.remove_orphans()?;
        Ok(store)
    }

    /// Another connection to a store this process has opened with [`Store::open`]
    /// (checked then): for a consolidation's thread, which reads examples while the
    /// learner task writes.
    pub fn attach(dir: &Path) -> Result<Store> {
        let conn = connect(&dir.join(DB))?;
        let side = conn
            .query_row("SELECT value FROM meta WHERE key = 'side'", [], |r| {
                r.get::<_, String>(0)
            })?
            .parse()
            .map_err(|e| corrupt(&dir.join(DB), e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            conn,
            side,
        })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The side of the images the store holds.
    pub fn side(&self) -> usize {
        self.side
    }

    fn meta(&self, key: &str) -> Result<String> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .map_err(|e| corrupt(&self.dir.join(DB), format!("{key}: {e}")))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Whether the learner keeps its examples in an indexed store (`STORE/examples`).
    pub fn example_index(&self) -> Result<bool> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'example_index'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| corrupt(&self.dir.join(DB), format!("example_index: {e}")))?;
        Ok(v.as_deref() == Some("1"))
    }

    /// Turns the example index on or off (it takes effect at the next start).
    pub fn set_example_index(&self, on: bool) -> Result<()> {
        self.set_meta("example_index", if on { "1" } else { "0" })
    }

    /// The folder of the example index.
    pub fn examples_dir(&self) -> PathBuf {
        self.dir.join(EXAMPLES)
    }

    /// The learner settings.
    pub fn config(&self) -> Result<LearnerConfig> {
        serde_json::from_str(&self.meta("config")?)
            .map_err(|e| corrupt(&self.dir.join(DB), format!("settings: {e}")))
    }

    /// Replaces the learner settings (they take effect at the next rebuild).
    pub fn set_config(&self, config: &LearnerConfig) -> Result<()> {
        config.validate()?;
        self.set_meta("config", &serde_json::to_string(config)?)
    }

    /// The encoder's description.
    pub fn spec(&self) -> Result<EncoderSpec> {
        serde_json::from_str(&self.meta("encoder")?)
            .map_err(|e| corrupt(&self.dir.join(DB), format!("encoder: {e}")))
    }

    /// The current representation version.
    pub fn current(&self) -> Result<u64> {
        self.meta("current")?
            .parse()
            .map_err(|e| corrupt(&self.dir.join(DB), format!("current version: {e}")))
    }

    /// The encoder of version `version`, loaded from its weights.
    pub fn encoder(&self, version: u64) -> Result<Box<dyn Encoder>> {
        let path = weights_path(&self.dir, version);
        let want = self
            .versions()?
            .into_iter()
            .find(|v| v.version == version)
            .map(|v| v.sha256)
            .ok_or_else(|| anyhow!("no version {version}"))?;
        let bytes = std::fs::read(&path).map_err(|e| corrupt(&path, e))?;
        if sha256_hex(&bytes) != want {
            return Err(corrupt(
                &path,
                "its weights do not match their recorded SHA-256",
            ));
        }
        let mut enc = encoder::build(&self.spec()?)?;
        let named = load_named(&path).map_err(|e| corrupt(&path, e))?;
        enc.load_state(&named).map_err(|e| corrupt(&path, e))?;
        Ok(enc)
    }

    /// Stores examples, class by class, in one transaction; returns each class's
    /// example count after it. Nothing is stored if anything fails. `unqueued`, an
    /// input of the unknown queue being labelled, leaves the queue in the same
    /// transaction (a retried label is not learnt twice).
    pub fn add_examples(
        &mut self,
        batch: &[(&str, &[Vec<f32>])],
        unqueued: Option<i64>,
    ) -> Result<Vec<usize>> {
        let per = self.side * self.side;
        let at = now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut counts = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO examples(label, pixels, created) VALUES (?1, ?2, ?3)",
            )?;
            let mut count = tx.prepare_cached("SELECT COUNT(*) FROM examples WHERE label = ?1")?;
            for (label, images) in batch {
                for px in images.iter() {
                    if px.len() != per {
                        bail!("an example of {} pixels, not {per}", px.len());
                    }
                    insert.execute(params![label, to_bytes(px), at])?;
                }
                let n: i64 = count.query_row([label], |r| r.get(0))?;
                counts.push(n as usize);
            }
        }
        if let Some(id) = unqueued {
            tx.execute("DELETE FROM unknown WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(counts)
    }

    /// Forgets a class's examples; how many there were.
    pub fn forget(&mut self, label: &str) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM examples WHERE label = ?1", [label])?)
    }

    /// The examples with ids in `(after, upto]`, in id order.
    pub fn examples(&self, after: i64, upto: i64) -> Result<Vec<Example>> {
        let per = self.side * self.side;
        let mut q = self.conn.prepare_cached(
            "SELECT id, label, pixels FROM examples WHERE id > ?1 AND id <= ?2 ORDER BY id",
        )?;
        let rows = q.query_map(params![after, upto], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, label, bytes) = row?;
            if bytes.len() != per * 4 {
                return Err(corrupt(
                    &self.dir.join(DB),
                    format!("example {id} holds {} bytes, not {}", bytes.len(), per * 4),
                ));
            }
            out.push(Example {
                id,
                label,
                pixels: from_bytes(&bytes),
            });
        }
        Ok(out)
    }

    /// The largest example id (0: none yet).
    pub fn last_example(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM examples", [], |r| {
                r.get(0)
            })?)
    }

    /// Each class with its example count and its first example's id, in the order
    /// classes were first taught.
    pub fn classes(&self) -> Result<Vec<(String, usize, i64)>> {
        let mut q = self.conn.prepare_cached(
            "SELECT label, COUNT(*), MIN(id) FROM examples GROUP BY label ORDER BY MIN(id)",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as usize,
                r.get::<_, i64>(2)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> Result<Vec<Version>> {
        let mut q = self.conn.prepare_cached(
            "SELECT version, created, reason, loss, accuracy, seconds, classes, upto, kept, sha256
             FROM versions ORDER BY version",
        )?;
        let rows = q.query_map([], |r| {
            Ok(Version {
                version: r.get::<_, i64>(0)? as u64,
                at: r.get(1)?,
                reason: r.get(2)?,
                loss: r.get(3)?,
                accuracy: r.get(4)?,
                seconds: r.get(5)?,
                classes: r.get::<_, Option<i64>>(6)?.map(|c| c as u64),
                upto: r.get(7)?,
                kept: r.get::<_, i64>(8)? != 0,
                sha256: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The next version number.
    pub fn next_version(&self) -> Result<u64> {
        Ok(self.versions()?.last().map_or(0, |v| v.version) + 1)
    }

    /// Records a consolidated version whose weights [`write_weights`] wrote, and makes
    /// it current, in one transaction.
    pub fn add_version(&mut self, v: &Version) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO versions(version, created, reason, loss, accuracy, seconds, classes,
                                  upto, sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                v.version as i64,
                v.at,
                v.reason,
                v.loss,
                v.accuracy,
                v.seconds,
                v.classes.map(|c| c as i64),
                v.upto,
                v.sha256
            ],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'current'",
            [v.version.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Keeps the weights of the last `keep` versions (at least one), of version 0 and
    /// of the current one; removes the others'.
    pub fn prune(&mut self, keep: usize) -> Result<()> {
        let current = self.current()?;
        let kept: Vec<u64> = self
            .versions()?
            .into_iter()
            .filter(|v| v.kept && v.version > 0)
            .map(|v| v.version)
            .collect();
        let keep = keep.max(1);
        if kept.len() > keep {
            for &old in kept[..kept.len() - keep].iter().filter(|&&v| v != current) {
                self.conn.execute(
                    "UPDATE versions SET kept = 0 WHERE version = ?1",
                    [old as i64],
                )?;
                let _ = std::fs::remove_file(weights_path(&self.dir, old));
            }
        }
        Ok(())
    }

    /// The newest kept version before the current one (a rollback's default target).
    pub fn previous_kept(&self) -> Result<u64> {
        let current = self.current()?;
        self.versions()?
            .iter()
            .filter(|v| v.kept && v.version < current)
            .map(|v| v.version)
            .max()
            .ok_or_else(|| anyhow!("no earlier version is kept"))
    }

    /// How many classes were first taught after example `upto` (new to the policy
    /// since the consolidation that saw up to it).
    pub fn classes_after(&self, upto: i64) -> Result<usize> {
        Ok(self
            .classes()?
            .iter()
            .filter(|(_, _, first)| *first > upto)
            .count())
    }

    /// Refuses a version that is not kept, naming those that are.
    pub fn check_kept(&self, version: u64) -> Result<()> {
        let versions = self.versions()?;
        if !versions.iter().any(|v| v.version == version && v.kept) {
            bail!(
                "version {version} is not kept (kept: {})",
                versions
                    .iter()
                    .filter(|v| v.kept)
                    .map(|v| v.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    /// Makes a kept version current again.
    pub fn set_current(&self, version: u64) -> Result<()> {
        self.check_kept(version)?;
        self.set_meta("current", &version.to_string())
    }

    /// Queues inputs flagged unknown, keeping the newest `bound`. The queue is a
    /// convenience, not an acknowledged write: it commits without waiting for the disk
    /// (a crash may lose the last few), so predictions never wait on an fsync.
    pub fn add_unknown(&mut self, items: &[(Unknown, Vec<f32>)], bound: usize) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let r = self.queue_unknown(items, bound);
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        r
    }

    fn queue_unknown(&mut self, items: &[(Unknown, Vec<f32>)], bound: usize) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO unknown(prediction, pixels, label, probability, score, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (u, px) in items {
                insert.execute(params![
                    u.prediction,
                    to_bytes(px),
                    u.label,
                    u.probability,
                    u.unknown_score,
                    u.at
                ])?;
            }
        }
        tx.execute(
            "DELETE FROM unknown WHERE id <= (SELECT MAX(id) FROM unknown) - ?1",
            [bound as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The unknown queue, oldest first (at most `limit`).
    pub fn unknown(&self, limit: usize) -> Result<Vec<Unknown>> {
        let mut q = self.conn.prepare_cached(
            "SELECT id, prediction, label, probability, score, created FROM unknown
             ORDER BY id LIMIT ?1",
        )?;
        let rows = q.query_map([limit as i64], |r| {
            Ok(Unknown {
                id: r.get(0)?,
                prediction: r.get(1)?,
                label: r.get(2)?,
                probability: r.get(3)?,
                unknown_score: r.get(4)?,
                at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// An unknown input's pixels.
    pub fn unknown_pixels(&self, id: i64) -> Result<Option<Vec<f32>>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT pixels FROM unknown WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(bytes.map(|b| from_bytes(&b)))
    }

    /// Removes weights files that no kept version names (an interrupted
    /// consolidation's), and partial files.
    fn remove_orphans(&self) -> Result<()> {
        let kept: Vec<String> = self
            .versions()?
            .iter()
            .filter(|v| v.kept)
            .map(|v| file_name(v.version))
            .collect();
        let dir = self.dir.join("versions");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !kept.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

fn file_name(version: u64) -> String {
    format!("v{version:06}.safetensors")
}

/// Where version `version`'s weights live.
pub fn weights_path(dir: &Path, version: u64) -> PathBuf {
    dir.join("versions").join(file_name(version))
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes version `version`'s weights durably: under a temporary name, synced, renamed;
/// returns their SHA-256.
pub fn write_weights(dir: &Path, version: u64, named: &[(String, Tensor)]) -> Result<String> {
    let target = weights_path(dir, version);
    let partial = dir
        .join("versions")
        .join(format!(".v{version:06}.partial.safetensors"));
    save_named(named, &partial)?;
    File::open(&partial)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    let sha256 = sha256_hex(
        &std::fs::read(&partial).with_context(|| format!("cannot read {}", partial.display()))?,
    );
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    sync_dir(&dir.join("versions"))?;
    Ok(sha256)
}

fn to_bytes(px: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(px.len() * 4);
    for p in px {
        out.write_all(&p.to_le_bytes()).expect("writing to a Vec");
    }
    out
}

fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_now_has_its_shape() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn pixels_round_trip_through_bytes() {
        let px = vec![0.0, 1.0, 0.25, -3.5e-7];
        assert_eq!(from_bytes(&to_bytes(&px)), px);
    }
}
