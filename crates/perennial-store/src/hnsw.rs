//! The approximate index: a USearch HNSW graph keyed by entry id, and its files.
//!
//! The index is derived data. It is saved as `index.usearch` (USearch's own format)
//! with a sidecar `index.meta` naming the log generation and byte offset it reflects,
//! its parameters, and the length and CRC-32 of `index.usearch`. On open it is loaded
//! only when the sidecar is intact, matches the store, and the blob's checksum matches;
//! otherwise it is rebuilt from the entries. USearch never reads a file whose checksum
//! we have not verified.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::entries::Entries;
use crate::error::{Error, Result};
use crate::format::{self, IndexMeta};
use crate::{EntryView, Filter, HnswParams, Metric, Quantization};

pub(crate) const INDEX_FILE: &str = "index.usearch";
pub(crate) const INDEX_META_FILE: &str = "index.meta";

pub(crate) struct Hnsw {
    index: Index,
    pub params: HnswParams,
    metric: Metric,
    dim: usize,
    /// Graph slots used since the last build (removed entries keep theirs).
    pub slots: usize,
    /// Threads USearch keeps contexts for.
    threads: usize,
}

fn options(dim: usize, metric: Metric, p: &HnswParams) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: match metric {
            Metric::Cosine => MetricKind::IP,
            Metric::L2 => MetricKind::L2sq,
        },
        quantization: match p.quantization {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        },
        connectivity: p.m,
        expansion_add: p.ef_construction,
        expansion_search: p.ef_search,
        multi: false,
    }
}

fn index_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("HNSW index: {what}: {e}")
}

impl Hnsw {
    pub fn new(dim: usize, metric: Metric, params: HnswParams, threads: usize) -> Result<Self> {
        let index = Index::new(&options(dim, metric, &params))
            .map_err(|e| Error::Invalid(index_err("create", e)))?;
        Ok(Hnsw {
            index,
            params,
            metric,
            dim,
            slots: 0,
            threads: threads.max(1),
        })
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.index.contains(id)
    }

    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef;
        self.index.change_expansion_search(ef);
    }

    fn ensure_capacity(&mut self, more: usize) -> std::result::Result<(), String> {
        let need = self.slots + more;
        let cap = self.index.capacity();
        if need > cap {
            let new_cap = need.max(cap * 2).max(1024);
            self.index
                .reserve_capacity_and_threads(new_cap, self.threads)
                .map_err(|e| index_err("reserve", e))?;
        }
        Ok(())
    }

    /// Adds the given rows, in parallel over `workers` threads when there are many.
    pub fn add_rows(
        &mut self,
        e: &Entries,
        rows: &[usize],
        workers: usize,
    ) -> std::result::Result<(), String> {
        let n = rows.len();
        if n == 0 {
            return Ok(());
        }
        self.ensure_capacity(n)?;
        let workers = workers.clamp(1, self.threads).min(n.div_ceil(256));
        let index = &self.index;
        let add = |rs: &[usize]| -> std::result::Result<(), String> {
            for &row in rs {
                index
                    .add(e.ids[row], e.key(row))
                    .map_err(|err| index_err("add", err))?;
            }
            Ok(())
        };
        if workers <= 1 {
            add(rows)?;
        } else {
            // Interleaved blocks of 256 rows, so that every worker sees all of the range.
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..workers)
                    .map(|w| {
                        s.spawn(move || {
                            for b in rows.chunks(256).skip(w).step_by(workers) {
                                add(b)?;
                            }
                            Ok::<(), String>(())
                        })
                    })
                    .collect();
                hs.into_iter().try_for_each(|h| match h.join() {
                    Ok(r) => r,
                    Err(p) => std::panic::resume_unwind(p),
                })
            })?;
        }
        self.slots += n;
        Ok(())
    }

    /// Builds a fresh index of every entry, with `contexts` thread contexts and
    /// `workers` threads adding.
    pub fn build(
        e: &Entries,
        metric: Metric,
        params: HnswParams,
        contexts: usize,
        workers: usize,
    ) -> Result<Self> {
        let mut h = Hnsw::new(e.dim, metric, params, contexts)?;
        let rows: Vec<usize> = (0..e.len()).collect();
        h.add_rows(e, &rows, workers).map_err(Error::Invalid)?;
        Ok(h)
    }

    pub fn remove(&mut self, id: u64) -> std::result::Result<(), String> {
        self.index.remove(id).map_err(|e| index_err("remove", e))?;
        Ok(())
    }

    /// Up to `k` ids nearest `q`, among entries passing `filter`.
    pub fn search(
        &self,
        e: &Entries,
        q: &[f32],
        k: usize,
        filter: Option<&Filter<'_>>,
    ) -> std::result::Result<Vec<u64>, String> {
        let m = match filter {
            None => self.index.search(q, k),
            Some(f) => {
                // A panic must not unwind through USearch's C++ frames: catch it, answer
                // false, and resume it once the search has returned.
                let panicked = RefCell::new(None);
                let pred = |id: u64| -> bool {
                    if panicked.borrow().is_some() {
                        return false;
                    }
                    let Some(row) = e.row(id) else { return false };
                    let view: EntryView<'_> = e.view(row);
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&view))) {
                        Ok(b) => b,
                        Err(p) => {
                            *panicked.borrow_mut() = Some(p);
                            false
                        }
                    }
                };
                let r = self.index.filtered_search(q, k, pred);
                if let Some(p) = panicked.into_inner() {
                    std::panic::resume_unwind(p);
                }
                r
            }
        }
        .map_err(|err| index_err("search", err))?;
        Ok(m.keys)
    }

    /// Saves `index.usearch` and `index.meta` into `dir` (each through a temporary file,
    /// synced and renamed) as the state after `wal_offset` bytes of log `generation`.
    pub fn save(&self, dir: &Path, generation: u64, wal_offset: u64) -> Result<()> {
        let blob = dir.join(INDEX_FILE);
        let meta = dir.join(INDEX_META_FILE);
        let tmp = dir.join(format!("{INDEX_FILE}.tmp"));
        let Some(tmp_str) = tmp.to_str() else {
            tracing::warn!(
                "store directory {} is not UTF-8: the HNSW index is not saved and will be rebuilt on open",
                dir.display()
            );
            return Ok(());
        };
        // Remove the sidecar first: a crash between the steps leaves no sidecar, or one
        // whose checksum does not match the blob; either way the index is rebuilt.
        remove_if_exists(&meta)?;
        self.index
            .save(tmp_str)
            .map_err(|e| Error::io(&tmp, std::io::Error::other(e.to_string())))?;
        sync_file(&tmp)?;
        let (blob_len, blob_crc) = format::file_crc(&tmp).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &blob).map_err(|e| Error::io(&blob, e))?;
        let m = IndexMeta {
            dim: self.dim as u32,
            metric: self.metric,
            m: self.params.m as u32,
            ef_construction: self.params.ef_construction as u32,
            quantization: self.params.quantization,
            generation,
            wal_offset,
            count: self.len() as u64,
            slots: self.slots as u64,
            blob_len,
            blob_crc,
        };
        crate::write_file_atomic(dir, &meta, &format::encode_index_meta(&m))
    }

    /// Loads the saved index if it describes log `generation` at an offset at most
    /// `wal_len`, with these parameters; `Ok(None)` (after a log line) otherwise.
    pub fn load(
        dir: &Path,
        dim: usize,
        metric: Metric,
        params: HnswParams,
        generation: u64,
        wal_len: u64,
        threads: usize,
    ) -> Option<(Self, u64)> {
        let meta_path = dir.join(INDEX_META_FILE);
        let blob = dir.join(INDEX_FILE);
        let bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("{}: {e}; rebuilding the HNSW index", meta_path.display());
                return None;
            }
        };
        let why = |w: String| {
            tracing::warn!("{}: {w}; rebuilding the HNSW index", meta_path.display());
        };
        let m = match format::decode_index_meta(&bytes) {
            Ok(m) => m,
            Err(w) => {
                why(w);
                return None;
            }
        };
        if m.dim as usize != dim
            || m.metric != metric
            || m.m as usize != params.m
            || m.ef_construction as usize != params.ef_construction
            || m.quantization != params.quantization
        {
            tracing::info!("saved HNSW index has other parameters; rebuilding it");
            return None;
        }
        if m.generation != generation || m.wal_offset > wal_len {
            tracing::info!(
                "saved HNSW index is of log generation {} offset {}, the log is generation {generation} of {wal_len} bytes; rebuilding it",
                m.generation,
                m.wal_offset
            );
            return None;
        }
        match format::file_crc(&blob) {
            Ok((len, crc)) if len == m.blob_len && crc == m.blob_crc => {}
            Ok(_) => {
                why("index.usearch does not match its checksum".into());
                return None;
            }
            Err(e) => {
                why(format!("{}: {e}", blob.display()));
                return None;
            }
        }
        let mut h = match Hnsw::new(dim, metric, params, threads) {
            Ok(h) => h,
            Err(e) => {
                why(e.to_string());
                return None;
            }
        };
        let loaded = blob
            .to_str()
            .ok_or_else(|| "path is not UTF-8".to_string())
            .and_then(|p| h.index.load(p).map_err(|e| e.to_string()));
        if let Err(w) = loaded {
            why(w);
            return None;
        }
        h.index.change_expansion_add(params.ef_construction);
        h.index.change_expansion_search(params.ef_search);
        h.slots = m.slots as usize;
        if h.len() as u64 != m.count || h.index.dimensions() != dim {
            why("index.usearch holds another number of vectors than recorded".into());
            return None;
        }
        // Make room for the threads and the entries to come.
        let cap = h.index.capacity().max(h.slots);
        if let Err(e) = h.index.reserve_capacity_and_threads(cap, h.threads) {
            why(e.to_string());
            return None;
        }
        Some((h, m.wal_offset))
    }
}

pub(crate) fn remove_if_exists(p: &PathBuf) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

fn sync_file(p: &Path) -> Result<()> {
    fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(p, e))
}
