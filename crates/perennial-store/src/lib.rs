//! A persistent, indexed store of embeddings.
//!
//! A [`Store`] is a directory holding entries of (key vector, `i64` value, `u64` age,
//! optional metadata string), each with a `u64` id the store assigns in increasing order.
//! It inserts, deletes, updates ages, and answers k-nearest-neighbour queries with an
//! optional filter, exactly (brute force over a contiguous matrix) or through an HNSW
//! index ([USearch](https://github.com/unum-cloud/USearch); docs/store.md says why that
//! crate).
//!
//! ```no_run
//! use perennial_store::{Store, StoreConfig, EntryView};
//! let mut store = Store::open("memory.store", StoreConfig::new(64))?;
//! let key = vec![0.5f32; 64];
//! let id = store.insert(&key, 7, 0, Some("{\"task\": 3}"))?; // durable once Ok
//! let hits = store.search(&key, 10, Some(&|e: &EntryView<'_>| e.value == 7))?;
//! assert_eq!(hits[0].id, id);
//! store.close()?;
//! # Ok::<(), perennial_store::Error>(())
//! ```
//!
//! # Files and invariants
//!
//! The directory holds `LOCK` (an advisory lock: one `Store` at a time), `snapshot.bin`
//! (every entry as of the start of a log generation; absent before the first
//! compaction), `wal-<generation>.log` (the write-ahead log of the changes since that
//! snapshot), and `index.usearch` + `index.meta` (the saved HNSW graph and what it
//! reflects). Byte layouts are in the `format` module's source and in docs/store.md.
//!
//! 1. **Acknowledged means durable.** A write returns `Ok` only after its log records
//!    are written and, with [`SyncPolicy::EveryWrite`] (the default), `fdatasync`ed. So
//!    an acknowledged write survives `kill -9` and power loss. With
//!    [`SyncPolicy::Manual`] it survives a killed process (the bytes are in the kernel)
//!    but only [`Store::sync`] makes it survive a power loss.
//! 2. **Records are framed and checksummed** (`len | crc32 | payload`). On open the log
//!    is replayed in order. A damaged *last* record, a record running past the end of
//!    the file, a partial frame header or a zero-filled tail is a torn write of a record
//!    that was never acknowledged: it is cut off (logged with `tracing::warn!`). Damage
//!    followed by more records, a bad header, magic, version or checksum anywhere else,
//!    an impossible record (duplicate id, delete of an absent id) is
//!    [`Error::Corrupt`]; another dimension or metric is [`Error::Mismatch`]. Bad bytes
//!    never cause a panic.
//! 3. **`insert_many` writes one record per entry and syncs once.** If the process dies
//!    before it returns, a prefix of the batch may be present after restart (never a
//!    part of an entry).
//! 4. **Compaction is atomic.** [`Store::compact`] (also run automatically when the log
//!    outgrows both [`StoreConfig::auto_compact_bytes`] and the snapshot) writes the
//!    next generation's empty log, then the snapshot to a temporary file, `fsync`s it
//!    and renames it over `snapshot.bin` (the commit point), `fsync`s the directory and
//!    deletes the old log. The snapshot names its generation; a log of any other
//!    generation is a leftover and is deleted on open.
//! 5. **The index is derived data.** It is saved at compaction and [`Store::close`],
//!    with the log generation and offset it reflects and the checksum of its file. On
//!    open it is reloaded if all of that matches and the log records after that offset
//!    are applied to it; it must then hold exactly the live entries. Otherwise (stale,
//!    damaged, other parameters) it is rebuilt from the entries. Deletes remove the entry
//!    from the graph; the graph is rebuilt at compaction when removed slots exceed a
//!    quarter of it.
//! 6. **Searches answer from live entries only**, distances recomputed from the stored
//!    keys so exact and approximate search agree on them. An approximate search that
//!    finds fewer than `min(k, len)` entries (a selective filter) is answered by exact
//!    search instead.

mod entries;
mod error;
mod exact;
mod format;
mod hnsw;
pub mod pages;

pub mod bench;

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use format::MAX_METADATA_BYTES;

use entries::Entries;
use format::{SnapHeader, WalHeader, WAL_HEADER_LEN};
use hnsw::Hnsw;

const SNAPSHOT_FILE: &str = "snapshot.bin";
const LOCK_FILE: &str = "LOCK";

/// How closeness is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity: keys and queries are L2-normalised on the way in (the stored
    /// key is the unit vector) and the distance is `1 - dot`, in `[0, 2]`.
    Cosine,
    /// Squared Euclidean distance; keys are stored as given.
    L2,
}

/// Parameters of the HNSW graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node (`M`; the base layer keeps `2·M`). 16 by default.
    pub m: usize,
    /// Candidate list size while inserting (`efConstruction`). 128 by default.
    pub ef_construction: usize,
    /// Candidate list size while searching (`efSearch`); raise it for recall. 64 by
    /// default. Can be changed on an open store ([`Store::set_ef_search`]).
    pub ef_search: usize,
    /// How the graph holds its copies of the keys. The store's own `f32` keys stay
    /// exact: with a narrower copy the index finds [`RERANK`] times `k` candidates
    /// and the exact distances pick the `k` nearest. `F32` by default;
    /// [`StoreConfig::new`] (cosine) takes `I8`, the fastest at recall 0.99 on the
    /// benchmark (docs/store.md).
    pub quantization: Quantization,
}

/// Candidates per wanted result that a quantised index reranks exactly.
pub const RERANK: usize = 3;

/// The scalar type of the HNSW graph's copies of the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// Full precision (4 bytes a number).
    #[default]
    F32,
    /// Half precision (2 bytes): half the memory traffic of a search.
    F16,
    /// 8-bit integers (1 byte; cosine only, keys being unit vectors): a 64-wide key
    /// fits one cache line.
    I8,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 128,
            ef_search: 64,
            quantization: Quantization::F32,
        }
    }
}

/// Which index answers [`Store::search`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// Brute force only (small stores; exact by construction).
    Exact,
    /// An HNSW graph, persisted beside the data.
    Hnsw(HnswParams),
}

/// When writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` the log before every write call returns (one per `insert_many`).
    EveryWrite,
    /// Only on [`Store::sync`], compaction and [`Store::close`]: writes survive a killed
    /// process, not a power loss.
    Manual,
}

/// How to open a store. `StoreConfig::new(dim)` gives the defaults; change fields with
/// struct update syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Length of every key.
    pub dim: usize,
    /// Distance (fixed at creation).
    pub metric: Metric,
    /// Exact or HNSW (may differ between opens; the index is rebuilt as needed).
    pub index: IndexKind,
    /// When writes are synced.
    pub sync: SyncPolicy,
    /// Compact automatically once the log holds more than this many bytes and more than
    /// the snapshot; `None` never compacts automatically. 64 MiB by default.
    pub auto_compact_bytes: Option<u64>,
    /// Threads for exact search, index builds and batch inserts; 0 = all cores.
    pub threads: usize,
    /// Back the index and the keys with transparent huge pages once the store holds
    /// [`HUGE_PAGES_MIN_ENTRIES`] entries: at open and after each compaction, the
    /// process's resident anonymous memory is collapsed into 2 MiB pages
    /// ([`pages::collapse_dense_anonymous`]; Linux 6.1 or later, a no-op elsewhere).
    /// A search hops across the whole graph, and with 4 KiB pages every hop is a TLB
    /// miss: on the 1M benchmark, one graph timed before and after, 2% more queries a
    /// second on a quiet machine and 16% with the other core busy (docs/store.md). On
    /// by default; it costs about a second per 300 MB at those moments and at most 10%
    /// more resident memory.
    pub huge_pages: bool,
}

/// Entries from which [`StoreConfig::huge_pages`] takes effect (below it the index fits
/// the TLB's reach well enough, and opening a small store should not scan the process).
pub const HUGE_PAGES_MIN_ENTRIES: usize = 100_000;

impl StoreConfig {
    /// Cosine metric, HNSW with default parameters over `i8` copies of the keys
    /// (reranked exactly), sync on every write, automatic compaction at 64 MiB, all
    /// cores.
    pub fn new(dim: usize) -> Self {
        StoreConfig {
            dim,
            metric: Metric::Cosine,
            index: IndexKind::Hnsw(HnswParams {
                quantization: Quantization::I8,
                ..HnswParams::default()
            }),
            sync: SyncPolicy::EveryWrite,
            auto_compact_bytes: Some(64 << 20),
            threads: 0,
            huge_pages: true,
        }
    }
}

/// A live entry, borrowed from the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryView<'a> {
    /// Its id.
    pub id: u64,
    /// Its key (unit length under [`Metric::Cosine`]).
    pub key: &'a [f32],
    /// Its value (a label, for a key-value memory).
    pub value: i64,
    /// Its age or logical timestamp, as last set.
    pub age: u64,
    /// Its metadata, if any (the store does not interpret it; JSON is a good choice).
    pub metadata: Option<&'a str>,
}

/// An entry to insert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewEntry<'a> {
    /// The key, `dim` finite numbers (not all zero under cosine).
    pub key: &'a [f32],
    /// The value.
    pub value: i64,
    /// The initial age.
    pub age: u64,
    /// Optional metadata, at most [`MAX_METADATA_BYTES`] bytes.
    pub metadata: Option<&'a str>,
}

/// A search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The entry's id.
    pub id: u64,
    /// Its distance to the query (lower is closer; see [`Metric`]).
    pub distance: f32,
    /// The entry's value.
    pub value: i64,
}

/// A search filter: only entries for which it returns true are results. It must be
/// `Sync` because exact search scans rows on several threads.
pub type Filter<'a> = dyn Fn(&EntryView<'_>) -> bool + Sync + 'a;

/// Counters describing an open store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    /// Live entries.
    pub entries: usize,
    /// The id the next insert gets.
    pub next_id: u64,
    /// Current log generation (compactions so far).
    pub generation: u64,
    /// Bytes in the current log, header included.
    pub wal_bytes: u64,
    /// Bytes in the snapshot (0 before the first compaction).
    pub snapshot_bytes: u64,
    /// Entries in the HNSW index, if there is one.
    pub index_entries: Option<usize>,
    /// How the index was obtained at open: "loaded", "rebuilt" or "none".
    pub index_origin: &'static str,
    /// Bytes of torn tail cut off the log at open.
    pub torn_bytes_dropped: u64,
    /// Bytes the last huge-page collapse put into 2 MiB pages (`None` if none ran:
    /// [`StoreConfig::huge_pages`] off or fewer than [`HUGE_PAGES_MIN_ENTRIES`] entries).
    pub huge_page_bytes: Option<usize>,
}

/// The store. See the crate documentation for its files and guarantees.
///
/// Writes take `&mut self`, searches `&self`; it is `Send + Sync`, so a server can keep
/// it behind an `RwLock`.
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    entries: Entries,
    next_id: u64,
    generation: u64,
    wal: File,
    wal_path: PathBuf,
    wal_len: u64,
    snapshot_len: u64,
    index: Option<Hnsw>,
    index_origin: &'static str,
    /// (generation, log offset) the saved index files reflect.
    index_saved_at: Option<(u64, u64)>,
    torn_bytes_dropped: u64,
    poisoned: Option<String>,
    unsynced: bool,
    /// Bytes the last huge-page collapse put into huge pages, if one ran.
    huge_page_bytes: Option<usize>,
    _lock: File,
}

fn wal_name(generation: u64) -> String {
    format!("wal-{generation:016x}.log")
}

fn describe(dim: usize, metric: Metric) -> String {
    format!("{dim}-dimensional keys, {metric:?} metric")
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes `bytes` to `path` through `path.tmp`: write, `fsync`, rename, `fsync` the
/// directory.
pub(crate) fn write_file_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(dir)
}

impl Store {
    /// Opens the store in `dir`, creating the directory and an empty store if there is
    /// none. Replays the log (cutting off a torn tail), then loads or rebuilds the index.
    ///
    /// Errors: [`Error::Corrupt`] for damaged files, [`Error::Mismatch`] when the store
    /// has another dimension or metric, [`Error::Locked`] when it is open elsewhere,
    /// [`Error::Invalid`] for a bad configuration.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        validate_config(&config)?;
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }

        let (dim, metric) = (config.dim, config.metric);
        let mismatch = |stored_dim: u32, stored_metric: Metric| -> Result<()> {
            if stored_dim as usize != dim || stored_metric != metric {
                return Err(Error::Mismatch {
                    path: dir.clone(),
                    stored: describe(stored_dim as usize, stored_metric),
                    requested: describe(dim, metric),
                });
            }
            Ok(())
        };

        let mut entries = Entries::new(dim);
        let snap_path = dir.join(SNAPSHOT_FILE);
        let snap_exists = snap_path.exists();
        let (generation, mut next_id, snapshot_len) = if snap_exists {
            let h = format::read_snapshot(&snap_path, |h| mismatch(h.dim, h.metric), &mut entries)?;
            let len = fs::metadata(&snap_path)
                .map_err(|e| Error::io(&snap_path, e))?
                .len();
            (h.generation, h.next_id, len)
        } else {
            (0, 0, 0)
        };

        let wal_path = dir.join(wal_name(generation));
        let stray_logs = list_logs(&dir)?;
        if !wal_path.exists() {
            if snap_exists {
                return Err(Error::corrupt(
                    &wal_path,
                    0,
                    format!("the log of generation {generation}, which snapshot.bin refers to, is missing"),
                ));
            }
            if let Some(other) = stray_logs.iter().find(|p| **p != wal_path) {
                return Err(Error::corrupt(
                    other,
                    0,
                    "a log of a later generation exists but snapshot.bin is missing",
                ));
            }
            let header = WalHeader {
                dim: dim as u32,
                metric,
                generation,
            };
            write_file_atomic(&dir, &wal_path, &format::encode_wal_header(&header))?;
        }

        // Replay the log; remember where each insert and delete is for the index.
        let keep_ops = matches!(config.index, IndexKind::Hnsw(_));
        let mut ops: Vec<(u64, bool, u64)> = Vec::new();
        let scan = format::scan_wal(
            &wal_path,
            |h| {
                if h.generation != generation {
                    return Err(Error::corrupt(
                        &wal_path,
                        20,
                        format!(
                            "log says generation {}, its name and the snapshot say {generation}",
                            h.generation
                        ),
                    ));
                }
                mismatch(h.dim, h.metric)
            },
            |off, rec| {
                match rec {
                    format::Record::Insert {
                        id,
                        value,
                        age,
                        meta,
                        key,
                    } => {
                        if id < next_id {
                            return Err(format!(
                                "insert of id {id}, but ids below {next_id} were already used"
                            ));
                        }
                        entries.push_le(id, key, value, age, meta.map(str::to_string));
                        next_id = id + 1;
                        if keep_ops {
                            ops.push((off, true, id));
                        }
                    }
                    format::Record::Delete { id } => {
                        if !entries.remove(id) {
                            return Err(format!("delete of id {id}, which is not present"));
                        }
                        if keep_ops {
                            ops.push((off, false, id));
                        }
                    }
                    format::Record::SetAge { id, age } => {
                        let row = entries.row(id).ok_or_else(|| {
                            format!("age update of id {id}, which is not present")
                        })?;
                        entries.ages[row] = age;
                    }
                }
                Ok(())
            },
        )?;
        let mut torn_bytes_dropped = 0;
        if let Some(why) = &scan.torn {
            torn_bytes_dropped = scan.file_len - scan.valid_len;
            tracing::warn!(
                "{}: cutting off a torn tail of {torn_bytes_dropped} bytes at byte {} ({why}); it was never acknowledged",
                wal_path.display(),
                scan.valid_len
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&wal_path)
                .map_err(|e| Error::io(&wal_path, e))?;
            f.set_len(scan.valid_len)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(&wal_path, e))?;
        }
        let wal = OpenOptions::new()
            .append(true)
            .open(&wal_path)
            .map_err(|e| Error::io(&wal_path, e))?;

        // Leftovers of an interrupted compaction or save.
        let mut removed = false;
        for p in stray_logs.iter().filter(|p| **p != wal_path) {
            tracing::info!("removing stale log {}", p.display());
            hnsw::remove_if_exists(p)?;
            removed = true;
        }
        for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let p = e.map_err(|e| Error::io(&dir, e))?.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                hnsw::remove_if_exists(&p)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&dir)?;
        }

        let mut store = Store {
            dir,
            config,
            entries,
            next_id,
            generation,
            wal,
            wal_path,
            wal_len: scan.valid_len,
            snapshot_len,
            index: None,
            index_origin: "none",
            index_saved_at: None,
            torn_bytes_dropped,
            poisoned: None,
            unsynced: false,
            huge_page_bytes: None,
            _lock: lock,
        };
        if let IndexKind::Hnsw(p) = store.config.index {
            store.open_index(p, &ops)?;
        }
        store.collapse_huge_pages();
        Ok(store)
    }

    fn threads(&self) -> usize {
        match self.config.threads {
            0 => all_cores(),
            t => t,
        }
    }

    /// Thread contexts the HNSW index keeps: concurrent searches beyond this many fall
    /// back to exact search.
    fn index_threads(&self) -> usize {
        (self.threads().max(all_cores()) * 2).max(8)
    }

    fn open_index(&mut self, p: HnswParams, ops: &[(u64, bool, u64)]) -> Result<()> {
        let (dim, metric) = (self.config.dim, self.config.metric);
        let loaded = Hnsw::load(
            &self.dir,
            dim,
            metric,
            p,
            self.generation,
            self.wal_len,
            self.index_threads(),
        );
        if let Some((mut h, offset)) = loaded {
            let suffix = ops.partition_point(|(off, _, _)| *off < offset);
            let mut rows = Vec::new();
            let mut ok = true;
            for &(_, insert, id) in &ops[suffix..] {
                if insert {
                    if let Some(r) = self.entries.row(id) {
                        rows.push(r);
                    }
                } else if h.contains(id) {
                    ok &= h.remove(id).is_ok();
                }
            }
            ok = ok && h.add_rows(&self.entries, &rows, self.threads()).is_ok();
            ok = ok
                && h.len() == self.entries.len()
                && self.entries.ids.iter().all(|&id| h.contains(id));
            if ok {
                self.index = Some(h);
                self.index_origin = "loaded";
                if suffix == ops.len() {
                    self.index_saved_at = Some((self.generation, offset));
                }
                return Ok(());
            }
            tracing::warn!("saved HNSW index disagrees with the log; rebuilding it");
        }
        self.index = Some(Hnsw::build(
            &self.entries,
            metric,
            p,
            self.index_threads(),
            self.threads(),
        )?);
        self.index_origin = "rebuilt";
        Ok(())
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Key length.
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// The live entry with this id.
    pub fn get(&self, id: u64) -> Option<EntryView<'_>> {
        self.entries.row(id).map(|r| self.entries.view(r))
    }

    /// True when an entry with this id is live.
    pub fn contains(&self, id: u64) -> bool {
        self.entries.row(id).is_some()
    }

    /// Every live entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = EntryView<'_>> + '_ {
        (0..self.entries.len()).map(|r| self.entries.view(r))
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.entries.len(),
            next_id: self.next_id,
            generation: self.generation,
            wal_bytes: self.wal_len,
            snapshot_bytes: self.snapshot_len,
            index_entries: self.index.as_ref().map(Hnsw::len),
            index_origin: self.index_origin,
            torn_bytes_dropped: self.torn_bytes_dropped,
            huge_page_bytes: self.huge_page_bytes,
        }
    }

    /// Changes the HNSW search width for this session (not persisted).
    pub fn set_ef_search(&mut self, ef: usize) {
        let ef = ef.max(1);
        if let IndexKind::Hnsw(p) = &mut self.config.index {
            p.ef_search = ef;
        }
        if let Some(h) = &mut self.index {
            h.set_ef_search(ef);
        }
    }

    fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Checks a key or query and returns it as stored (unit length under cosine).
    fn prepare<'a>(&self, key: &'a [f32], what: &str) -> Result<Cow<'a, [f32]>> {
        if key.len() != self.config.dim {
            return Err(Error::Invalid(format!(
                "{what} has {} numbers, the store's keys have {}",
                key.len(),
                self.config.dim
            )));
        }
        if key.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "{what} has a NaN or infinite number"
            )));
        }
        match self.config.metric {
            Metric::L2 => Ok(Cow::Borrowed(key)),
            Metric::Cosine => {
                let n = key.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                if n == 0.0 || !n.is_finite() {
                    return Err(Error::Invalid(format!(
                        "{what} has zero length, which has no direction for cosine"
                    )));
                }
                Ok(Cow::Owned(
                    key.iter().map(|&x| (x as f64 / n) as f32).collect(),
                ))
            }
        }
    }

    /// Appends framed records to the log and syncs per the policy. On failure the log is
    /// cut back to its previous length, or the store is poisoned if that fails too.
    fn append(&mut self, buf: &[u8]) -> Result<()> {
        self.check_writable()?;
        if let Err(e) = self.wal.write_all(buf) {
            if let Err(e2) = self.wal.set_len(self.wal_len) {
                self.poisoned = Some(format!("write failed ({e}) and undoing it failed ({e2})"));
            }
            return Err(Error::io(&self.wal_path, e));
        }
        self.wal_len += buf.len() as u64;
        if self.config.sync == SyncPolicy::EveryWrite {
            if let Err(e) = self.wal.sync_data() {
                self.poisoned = Some(format!("fdatasync failed: {e}"));
                return Err(Error::io(&self.wal_path, e));
            }
        } else {
            self.unsynced = true;
        }
        Ok(())
    }

    fn index_failed(&mut self, why: String) {
        tracing::error!(
            "{why}; searching exactly until the index is rebuilt (compaction or reopen)"
        );
        self.index = None;
        self.index_saved_at = None;
    }

    /// Inserts one entry; returns its id once it is durable (see [`SyncPolicy`]).
    pub fn insert(
        &mut self,
        key: &[f32],
        value: i64,
        age: u64,
        metadata: Option<&str>,
    ) -> Result<u64> {
        let ids = self.insert_many([NewEntry {
            key,
            value,
            age,
            metadata,
        }])?;
        Ok(ids.start)
    }

    /// Inserts entries with one log write and one sync; returns their ids, consecutive
    /// and in order. Nothing is inserted when any entry is invalid.
    pub fn insert_many<'a>(
        &mut self,
        new: impl IntoIterator<Item = NewEntry<'a>>,
    ) -> Result<Range<u64>> {
        self.check_writable()?;
        let first = self.next_id;
        let mut id = first;
        let mut buf = Vec::new();
        let mut keys: Vec<f32> = Vec::new();
        let mut rest: Vec<(i64, u64, Option<String>)> = Vec::new();
        for e in new {
            let key = self.prepare(e.key, "key")?;
            if let Some(m) = e.metadata {
                if m.len() > MAX_METADATA_BYTES {
                    return Err(Error::Invalid(format!(
                        "metadata of {} bytes, at most {MAX_METADATA_BYTES} allowed",
                        m.len()
                    )));
                }
            }
            format::encode_insert(&mut buf, id, e.value, e.age, e.metadata, &key);
            keys.extend_from_slice(&key);
            rest.push((e.value, e.age, e.metadata.map(str::to_string)));
            id += 1;
        }
        if rest.is_empty() {
            return Ok(first..first);
        }
        self.append(&buf)?;
        let row0 = self.entries.len();
        self.entries.reserve(rest.len());
        for (i, (value, age, meta)) in rest.into_iter().enumerate() {
            let d = self.config.dim;
            self.entries.push(
                first + i as u64,
                &keys[i * d..(i + 1) * d],
                value,
                age,
                meta,
            );
        }
        self.next_id = id;
        let threads = self.threads();
        if let Some(h) = &mut self.index {
            let rows: Vec<usize> = (row0..self.entries.len()).collect();
            if let Err(e) = h.add_rows(&self.entries, &rows, threads) {
                self.index_failed(e);
            }
        }
        self.maybe_compact();
        Ok(first..id)
    }

    /// Deletes an entry; `Ok(false)` (and nothing written) when it is not live.
    pub fn delete(&mut self, id: u64) -> Result<bool> {
        self.check_writable()?;
        if !self.contains(id) {
            return Ok(false);
        }
        let mut buf = Vec::with_capacity(17);
        format::encode_delete(&mut buf, id);
        self.append(&buf)?;
        self.entries.remove(id);
        if let Some(h) = &mut self.index {
            if let Err(e) = h.remove(id) {
                self.index_failed(e);
            }
        }
        self.maybe_compact();
        Ok(true)
    }

    /// Sets an entry's age; `Ok(false)` when it is not live.
    pub fn set_age(&mut self, id: u64, age: u64) -> Result<bool> {
        self.check_writable()?;
        let Some(row) = self.entries.row(id) else {
            return Ok(false);
        };
        let mut buf = Vec::with_capacity(25);
        format::encode_set_age(&mut buf, id, age);
        self.append(&buf)?;
        self.entries.ages[row] = age;
        self.maybe_compact();
        Ok(true)
    }

    /// The `k` nearest live entries to `query` that pass `filter`, nearest first, through
    /// the HNSW index when there is one (exact search otherwise, or when the index finds
    /// fewer than `min(k, len)` entries).
    pub fn search(&self, query: &[f32], k: usize, filter: Option<&Filter<'_>>) -> Result<Vec<Hit>> {
        let q = self.prepare(query, "query")?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(h) = &self.index {
            let wanted = match h.params.quantization {
                Quantization::F32 => k,
                _ => k * RERANK,
            };
            match h.search(&self.entries, &q, wanted, filter) {
                Ok(ids) => {
                    let mut c: Vec<exact::Cand> = ids
                        .into_iter()
                        .filter_map(|id| self.entries.row(id).map(|row| (id, row)))
                        .map(|(id, row)| exact::Cand {
                            dist: exact::distance(self.config.metric, &q, self.entries.key(row)),
                            id,
                            row,
                        })
                        .collect();
                    if c.len() >= k.min(self.len()) {
                        c.sort_unstable();
                        c.truncate(k);
                        return Ok(self.hits(c));
                    }
                }
                Err(e) => tracing::warn!("{e}; answering with exact search"),
            }
        }
        Ok(self.search_exact_prepared(&q, k, filter))
    }

    /// The exact `k` nearest live entries passing `filter` (brute force), nearest first,
    /// ties broken by id.
    pub fn search_exact(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter<'_>>,
    ) -> Result<Vec<Hit>> {
        let q = self.prepare(query, "query")?;
        Ok(self.search_exact_prepared(&q, k, filter))
    }

    fn search_exact_prepared(&self, q: &[f32], k: usize, filter: Option<&Filter<'_>>) -> Vec<Hit> {
        let c = exact::top_k(
            &self.entries,
            self.config.metric,
            q,
            k,
            filter,
            self.threads(),
        );
        self.hits(c)
    }

    fn hits(&self, c: Vec<exact::Cand>) -> Vec<Hit> {
        c.into_iter()
            .map(|c| Hit {
                id: c.id,
                distance: c.dist,
                value: self.entries.values[c.row],
            })
            .collect()
    }

    /// Makes every write so far durable (`fdatasync`); a no-op under
    /// [`SyncPolicy::EveryWrite`].
    pub fn sync(&mut self) -> Result<()> {
        self.check_writable()?;
        if self.unsynced {
            if let Err(e) = self.wal.sync_data() {
                self.poisoned = Some(format!("fdatasync failed: {e}"));
                return Err(Error::io(&self.wal_path, e));
            }
            self.unsynced = false;
        }
        Ok(())
    }

    fn maybe_compact(&mut self) {
        let Some(limit) = self.config.auto_compact_bytes else {
            return;
        };
        let log = self.wal_len - WAL_HEADER_LEN;
        if log > limit && log > self.snapshot_len {
            if let Err(e) = self.compact() {
                tracing::error!("automatic compaction of {} failed: {e}", self.dir.display());
            }
        }
    }

    /// Writes a snapshot of every live entry and starts a new, empty log (see the crate
    /// documentation for the steps); then saves the HNSW index, rebuilding it first when
    /// deletes have left more than a quarter of its slots dead or it was dropped.
    pub fn compact(&mut self) -> Result<()> {
        self.sync()?;
        let dir = self.dir.clone();
        let new_gen = self.generation + 1;
        let new_wal_path = dir.join(wal_name(new_gen));
        let header = WalHeader {
            dim: self.config.dim as u32,
            metric: self.config.metric,
            generation: new_gen,
        };
        write_file_atomic(&dir, &new_wal_path, &format::encode_wal_header(&header))?;

        let snap_path = dir.join(SNAPSHOT_FILE);
        let tmp = dir.join("snapshot.bin.tmp");
        let sh = SnapHeader {
            dim: self.config.dim as u32,
            metric: self.config.metric,
            generation: new_gen,
            next_id: self.next_id,
            count: self.entries.len() as u64,
        };
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        format::write_snapshot(BufWriter::with_capacity(1 << 20, &f), &sh, &self.entries)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        let snapshot_len = f.metadata().map_err(|e| Error::io(&tmp, e))?.len();
        drop(f);
        fs::rename(&tmp, &snap_path).map_err(|e| Error::io(&snap_path, e))?;
        // Committed (once the directory is synced): from here on the new log is the log.
        let new_wal = OpenOptions::new().append(true).open(&new_wal_path);
        let synced = sync_dir(&dir);
        let new_wal = match new_wal {
            Ok(w) => w,
            Err(e) => {
                self.poisoned = Some(format!("cannot open the new log after compaction: {e}"));
                return Err(Error::io(&new_wal_path, e));
            }
        };
        let old = std::mem::replace(&mut self.wal_path, new_wal_path);
        self.wal = new_wal;
        self.wal_len = WAL_HEADER_LEN;
        self.generation = new_gen;
        self.snapshot_len = snapshot_len;
        if let Err(e) = synced {
            self.poisoned = Some(format!(
                "syncing the directory after compaction failed: {e}"
            ));
            return Err(e);
        }
        if let Err(e) = fs::remove_file(&old) {
            tracing::warn!("cannot remove old log {}: {e}", old.display());
        }

        if let IndexKind::Hnsw(p) = self.config.index {
            let stale = match &self.index {
                None => true,
                Some(h) => h.slots > self.entries.len() + self.entries.len() / 4 + 1024,
            };
            if stale {
                match Hnsw::build(
                    &self.entries,
                    self.config.metric,
                    p,
                    self.index_threads(),
                    self.threads(),
                ) {
                    Ok(h) => self.index = Some(h),
                    Err(e) => tracing::error!("rebuilding the HNSW index failed: {e}"),
                }
            }
            self.save_index();
        }
        self.collapse_huge_pages();
        Ok(())
    }

    /// With [`StoreConfig::huge_pages`] and at least [`HUGE_PAGES_MIN_ENTRIES`] entries,
    /// collapses the process's resident anonymous memory into huge pages.
    fn collapse_huge_pages(&mut self) {
        if !self.config.huge_pages || self.entries.len() < HUGE_PAGES_MIN_ENTRIES {
            return;
        }
        let t = std::time::Instant::now();
        let r = pages::collapse_dense_anonymous(pages::MIN_MAPPING_BYTES);
        tracing::debug!(
            "huge pages: {} MiB of {} MiB collapsed in {:.2} s",
            r.collapsed_bytes >> 20,
            r.advised_bytes >> 20,
            t.elapsed().as_secs_f64()
        );
        self.huge_page_bytes = Some(r.collapsed_bytes);
    }

    fn save_index(&mut self) {
        let at = (self.generation, self.wal_len);
        if self.index_saved_at == Some(at) {
            return;
        }
        if let Some(h) = &self.index {
            match h.save(&self.dir, at.0, at.1) {
                Ok(()) => self.index_saved_at = Some(at),
                Err(e) => {
                    tracing::warn!("saving the HNSW index failed ({e}); it will be rebuilt on open")
                }
            }
        }
    }

    /// Syncs the log and saves the HNSW index, so that the next open loads it instead
    /// of rebuilding it (an owner that closes by dropping calls this first).
    pub fn persist(&mut self) -> Result<()> {
        self.sync()?;
        self.save_index();
        Ok(())
    }

    /// Syncs the log, saves the HNSW index (so the next open loads it instead of
    /// rebuilding) and closes the store. Dropping a store without `close` is safe: it
    /// only means the index may be rebuilt or caught up from the log on the next open.
    pub fn close(mut self) -> Result<()> {
        self.sync()?;
        self.save_index();
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.unsynced && self.poisoned.is_none() {
            let _ = self.wal.sync_data();
        }
    }
}

fn validate_config(c: &StoreConfig) -> Result<()> {
    if c.dim == 0 || c.dim > 1 << 16 {
        return Err(Error::Invalid(format!("dim {} (must be 1..=65536)", c.dim)));
    }
    if let IndexKind::Hnsw(p) = c.index {
        if !(2..=255).contains(&p.m) || p.ef_construction == 0 || p.ef_search == 0 {
            return Err(Error::Invalid(format!(
                "HNSW parameters {p:?} (m must be 2..=255, ef values at least 1)"
            )));
        }
        if p.quantization == Quantization::I8 && c.metric != Metric::Cosine {
            return Err(Error::Invalid(
                "an i8 graph holds unit vectors: it needs the cosine metric (use f32 or f16 for L2)"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn list_logs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("wal-") && name.ends_with(".log") {
            out.push(e.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
