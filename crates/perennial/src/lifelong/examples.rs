//! Example-level memory of the [`super::LifelongLearner`]: every example it was
//! taught, as a feature under the current representation, searchable by nearness.
//!
//! Prototypes summarise a class by its mean; this memory keeps the examples
//! themselves, for two uses:
//!
//! - **k-nearest-neighbour classification** ([`Classify::Knn`]): a query's `k` nearest
//!   examples vote, each with the weight `exp(logit)` of its logit under the encoder's
//!   distance (as prototypes are scored): a class scores the log-sum-exp of its
//!   examples' logits, so its probability is its share of the k neighbours' weight;
//!   classes without an example among the `k` score nothing.
//! - **consolidation's neighbour classes**: a class's hard neighbours are the classes
//!   of the examples nearest its prototype, found by example search rather than by the
//!   distance between means.
//!
//! The memory lives in tensors, or, once [`super::LifelongLearner::attach_example_store`]
//! is called, in a persistent [`Store`] with an HNSW index (`ROOT/v{version}/`; value:
//! the class's id, metadata: `{"label": ...}`). The store is derived from the learner's
//! examples: a consolidation writes the next version's store from the re-encoded
//! examples and removes the old one, and an index found inconsistent with the learner
//! at attach (a crash between a teaching and its index write) is rewritten. Damaged
//! store files are refused with an error, never silently replaced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::Distance;
use perennial_store::{HnswParams, IndexKind, Metric, NewEntry, Store, StoreConfig, SyncPolicy};

/// How the learner classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "by")]
pub enum Classify {
    /// By the nearest class prototype (the mean of its examples).
    #[default]
    Prototypes,
    /// By the `k` nearest taught examples.
    Knn {
        /// Examples consulted per query (at least 1).
        k: usize,
    },
}

impl Classify {
    /// Parses `prototypes`, `knn` (k = 10) or `knn:K`.
    pub fn parse(s: &str) -> Result<Classify> {
        let bad = |why: &str| Error::config("--classify", s, why.to_string());
        match s {
            "prototypes" => Ok(Classify::Prototypes),
            "knn" => Ok(Classify::Knn { k: 10 }),
            _ => {
                let k = s
                    .strip_prefix("knn:")
                    .ok_or_else(|| bad("must be prototypes, knn or knn:K"))?;
                let k: usize = k
                    .parse()
                    .map_err(|_| bad("K of knn:K must be a whole number"))?;
                let c = Classify::Knn { k };
                c.validate()?;
                Ok(c)
            }
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        match self {
            Classify::Knn { k: 0 } => Err(Error::config("--classify", "knn:0", "k must be ≥ 1")),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Classify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Classify::Prototypes => write!(f, "prototypes"),
            Classify::Knn { k } => write!(f, "knn:{k}"),
        }
    }
}

/// Below this many examples the store is searched exactly (brute force over a few
/// thousand keys costs less than a millisecond, and is exact); from it on, through
/// the HNSW index.
pub const EXACT_BELOW: usize = 4096;

/// The name of version `v`'s store under an example-store root.
fn version_dir(root: &Path, version: u64) -> PathBuf {
    root.join(format!("v{version:06}"))
}

/// Removes every version's store under `root` except `keep`'s (stores of other
/// versions are left by consolidations and rollbacks of a service).
pub fn prune_example_stores(root: &Path, keep: u64) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    let keep = version_dir(root, keep);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let versioned = name
            .strip_prefix('v')
            .is_some_and(|d| d.len() == 6 && d.bytes().all(|b| b.is_ascii_digit()));
        if versioned && e.path() != keep {
            std::fs::remove_dir_all(e.path())
                .map_err(|err| Error::run(e.path(), err.to_string()))?;
        }
    }
    Ok(())
}

/// What one class holds, for writing a store.
pub(crate) struct ClassRows {
    /// The class's stable id (the store's value).
    pub id: i64,
    /// Its label.
    pub label: String,
    /// Its examples' features `[n, d]`.
    pub features: Tensor,
}

/// The examples' features, in tensors or in a store.
#[derive(Debug)]
pub(crate) enum ExampleIndex {
    /// One `[n_c, d]` tensor per class, in class order.
    Tensors(Vec<Tensor>),
    /// A store on disk.
    Store(Box<ExampleStore>),
}

/// A store of one representation version's example features.
pub(crate) struct ExampleStore {
    root: PathBuf,
    version: u64,
    store: Store,
    origin: &'static str,
    /// Set by [`ExampleStore::remove`]: nothing to save on drop.
    removed: bool,
    /// Exact search below this many entries ([`EXACT_BELOW`]).
    exact_below: usize,
}

impl Drop for ExampleStore {
    /// Saves the index, so that the next attach loads it instead of rebuilding it.
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.store.persist() {
                tracing::warn!("the example store's index was not saved: {e}");
            }
        }
    }
}

impl std::fmt::Debug for ExampleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExampleStore")
            .field("dir", &self.store.dir())
            .field("entries", &self.store.len())
            .field("origin", &self.origin)
            .finish()
    }
}

fn store_error(dir: &Path, e: perennial_store::Error) -> Error {
    let hint = match e.is_refusal() {
        true => {
            " (it is derived from the learner's examples: remove the folder to have it rewritten)"
        }
        false => "",
    };
    Error::run(dir, format!("example store: {e}{hint}"))
}

/// The store settings for features compared under `distance`.
fn store_config(dim: usize, distance: Distance) -> StoreConfig {
    let base = StoreConfig::new(dim);
    let index = match distance {
        Distance::Cosine { .. } => base.index,
        // Quantised copies need unit keys; squared distances keep f32.
        Distance::SquaredEuclidean => IndexKind::Hnsw(HnswParams::default()),
    };
    StoreConfig {
        metric: match distance {
            Distance::Cosine { .. } => Metric::Cosine,
            Distance::SquaredEuclidean => Metric::L2,
        },
        index,
        // Derived data: the learner's own save (or the service's database) is the
        // record, and an index behind it is rewritten at attach.
        sync: SyncPolicy::Manual,
        ..base
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1])).unwrap_or_default()
}

fn label_json(label: &str) -> String {
    serde_json::json!({ "label": label }).to_string()
}

impl ExampleStore {
    /// Opens version `version`'s store under `root` for features of width `dim`. When
    /// it holds exactly `classes` (label and example count, in class order) it is kept
    /// and the ids it files them under are returned, one per class (a learner rebuilt
    /// by replay numbers its classes afresh, and adopts these); otherwise it is
    /// rewritten from `rows()` and `None` is returned.
    pub(crate) fn open(
        root: &Path,
        version: u64,
        dim: usize,
        distance: Distance,
        classes: &[(&str, usize)],
        rows: &mut dyn FnMut() -> Result<Vec<ClassRows>>,
    ) -> Result<(ExampleStore, Option<Vec<i64>>)> {
        let dir = version_dir(root, version);
        let config = store_config(dim, distance);
        let store = Store::open(&dir, config.clone()).map_err(|e| store_error(&dir, e))?;
        let total: usize = classes.iter().map(|c| c.1).sum();
        if let Some(ids) = matching_ids(&store, classes) {
            let origin = store.stats().index_origin;
            let s = ExampleStore {
                root: root.to_path_buf(),
                version,
                store,
                origin: if origin == "rebuilt" {
                    "rebuilt"
                } else {
                    "loaded"
                },
                removed: false,
                exact_below: EXACT_BELOW,
            };
            return Ok((s, Some(ids)));
        }
        if !store.is_empty() {
            tracing::warn!(
                dir = %dir.display(),
                entries = store.len(),
                examples = total,
                "the example store does not match the learner's examples: rewriting it"
            );
        }
        drop(store);
        let s = Self::write(root, version, dim, distance, &rows()?)?;
        Ok((s, None))
    }

    /// Writes version `version`'s store anew from `classes`.
    pub(crate) fn write(
        root: &Path,
        version: u64,
        dim: usize,
        distance: Distance,
        classes: &[ClassRows],
    ) -> Result<ExampleStore> {
        let dir = version_dir(root, version);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::run(&dir, e.to_string()))?;
        }
        let mut store =
            Store::open(&dir, store_config(dim, distance)).map_err(|e| store_error(&dir, e))?;
        for c in classes {
            insert(&mut store, c.id, &c.label, &c.features)?;
        }
        store.sync().map_err(|e| store_error(&dir, e))?;
        Ok(ExampleStore {
            root: root.to_path_buf(),
            version,
            store,
            origin: "written",
            removed: false,
            exact_below: EXACT_BELOW,
        })
    }

    /// The root the version stores live under.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The version it holds.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// How it was obtained at attach: "loaded" (files as found), "rebuilt" (the data
    /// as found, the index rebuilt) or "written" (from the learner's examples).
    pub(crate) fn origin(&self) -> &'static str {
        self.origin
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Closes the store and removes its files.
    pub(crate) fn remove(mut self) -> Result<()> {
        let dir = self.store.dir().to_path_buf();
        self.removed = true;
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::run(&dir, e.to_string()))
    }

    /// Syncs the log.
    pub(crate) fn sync(&mut self) -> Result<()> {
        let dir = self.store.dir().to_path_buf();
        self.store.sync().map_err(|e| store_error(&dir, e))
    }
}

/// The id each of `classes` (label, count) is filed under in `store`, when the store
/// holds exactly those classes with those counts, one id per label.
fn matching_ids(store: &Store, classes: &[(&str, usize)]) -> Option<Vec<i64>> {
    let mut held: HashMap<String, (i64, usize)> = HashMap::new();
    for e in store.iter() {
        let meta: serde_json::Value = serde_json::from_str(e.metadata?).ok()?;
        let label = meta.get("label")?.as_str()?;
        let slot = held.entry(label.to_string()).or_insert((e.value, 0));
        if slot.0 != e.value {
            return None;
        }
        slot.1 += 1;
    }
    if held.len() != classes.len() {
        return None;
    }
    classes
        .iter()
        .map(|&(label, n)| held.get(label).filter(|h| h.1 == n).map(|h| h.0))
        .collect()
}

fn insert(store: &mut Store, id: i64, label: &str, features: &Tensor) -> Result<()> {
    let d = store.dim();
    if features.size().get(1).copied() != Some(d as i64) {
        return Err(Error::config(
            "features",
            format!("{:?}", features.size()),
            format!("the example store holds {d}-wide features"),
        ));
    }
    let flat = floats(features);
    let meta = label_json(label);
    store
        .insert_many(flat.chunks(d).map(|key| NewEntry {
            key,
            value: id,
            age: 0,
            metadata: Some(&meta),
        }))
        .map_err(|e| store_error(store.dir(), e))?;
    Ok(())
}

/// The soft vote of the hits: `(class, logit)`s to a `[known]` row whose entry `c` is
/// `log Σ exp(logit)` over class `c`'s hits (`-inf` for a class with none), so that
/// its softmax is each class's share of the k neighbours' kernel weight `exp(logit)`.
/// With k = 1 it is the nearest example's class; with more, a class with several near
/// examples outvotes one with a single nearest outlier.
fn row_of(hits: impl Iterator<Item = (usize, f64)>, known: usize) -> Vec<f64> {
    let mut row = vec![f64::NEG_INFINITY; known];
    for (c, l) in hits {
        if c < known {
            let (hi, lo) = if row[c] > l { (row[c], l) } else { (l, row[c]) };
            row[c] = hi + (lo - hi).exp().ln_1p();
        }
    }
    row
}

impl ExampleIndex {
    /// Adds class `class`'s (id `id`) examples' features `[n, d]`.
    pub(crate) fn add(
        &mut self,
        class: usize,
        id: i64,
        label: &str,
        features: &Tensor,
    ) -> Result<()> {
        let f = features.detach().to_kind(Kind::Float);
        match self {
            ExampleIndex::Tensors(per) => {
                if class == per.len() {
                    per.push(f.copy());
                } else {
                    per[class] = Tensor::cat(&[&per[class], &f], 0);
                }
                Ok(())
            }
            ExampleIndex::Store(s) => insert(&mut s.store, id, label, &f),
        }
    }

    /// Removes class `class`'s (id `id`) examples.
    pub(crate) fn forget(&mut self, class: usize, id: i64) -> Result<()> {
        match self {
            ExampleIndex::Tensors(per) => {
                if class < per.len() {
                    let _ = per.remove(class);
                }
                Ok(())
            }
            ExampleIndex::Store(s) => {
                let gone: Vec<u64> = s
                    .store
                    .iter()
                    .filter(|e| e.value == id)
                    .map(|e| e.id)
                    .collect();
                for e in gone {
                    s.store
                        .delete(e)
                        .map_err(|err| store_error(s.store.dir(), err))?;
                }
                s.sync()
            }
        }
    }

    /// The store, when the memory is in one.
    pub(crate) fn store(&self) -> Option<&ExampleStore> {
        match self {
            ExampleIndex::Store(s) => Some(s),
            ExampleIndex::Tensors(_) => None,
        }
    }

    /// For each of `queries` (`[n, d]`), its `k` nearest examples among the classes
    /// `allowed` (class indices; all when `None`), as `(class, logit)` nearest first,
    /// the logit being the encoder's (higher is nearer).
    fn nearest(
        &self,
        queries: &Tensor,
        k: usize,
        distance: Distance,
        ids: &[i64],
        allowed: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<Vec<(usize, f64)>> {
        let n = queries.size()[0] as usize;
        match self {
            ExampleIndex::Tensors(per) => {
                let mut keys = Vec::new();
                let mut class_of = Vec::new();
                for (c, f) in per.iter().enumerate() {
                    if allowed.is_none_or(|a| a(c)) && f.size()[0] > 0 {
                        class_of.extend(std::iter::repeat_n(c, f.size()[0] as usize));
                        keys.push(f.shallow_clone());
                    }
                }
                if keys.is_empty() {
                    return vec![Vec::new(); n];
                }
                let keys = Tensor::cat(&keys, 0);
                let take = k.min(class_of.len()) as i64;
                let logits = tch::no_grad(|| {
                    let q = queries.to_kind(Kind::Float);
                    let keys = keys.to_device(queries.device());
                    match distance {
                        // |q|² + |k|² − 2 q·k: one product, not an [n, N, d] difference.
                        Distance::SquaredEuclidean => {
                            let qq = q.square().sum_dim_intlist(1, true, Kind::Float);
                            let kk = keys.square().sum_dim_intlist(1, false, Kind::Float);
                            -((qq + kk.unsqueeze(0) - q.matmul(&keys.tr()) * 2.0).clamp_min(0.0))
                        }
                        cosine => cosine.logits(&q, &keys),
                    }
                });
                let (l, i) = logits.topk(take, 1, true, true);
                let l: Vec<f64> =
                    Vec::try_from(l.to_kind(Kind::Double).reshape([-1])).unwrap_or_default();
                let i: Vec<i64> = Vec::try_from(i.reshape([-1])).unwrap_or_default();
                (0..n)
                    .map(|q| {
                        (0..take as usize)
                            .map(|j| {
                                let at = q * take as usize + j;
                                (class_of[i[at] as usize], l[at])
                            })
                            .collect()
                    })
                    .collect()
            }
            ExampleIndex::Store(s) => {
                let class_of: HashMap<i64, usize> =
                    ids.iter().enumerate().map(|(c, &id)| (id, c)).collect();
                let keep = |e: &perennial_store::EntryView<'_>| {
                    class_of
                        .get(&e.value)
                        .is_some_and(|&c| allowed.is_none_or(|a| a(c)))
                };
                let d = s.store.dim();
                let flat = floats(queries);
                let exact = s.store.len() < s.exact_below;
                flat.chunks(d)
                    .map(|q| {
                        match exact {
                            true => s.store.search_exact(q, k, Some(&keep)),
                            false => s.store.search(q, k, Some(&keep)),
                        }
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|h| {
                            let c = *class_of.get(&h.value)?;
                            let l = match distance {
                                Distance::SquaredEuclidean => -(h.distance as f64),
                                Distance::Cosine { scale } => scale * (1.0 - h.distance as f64),
                            };
                            Some((c, l))
                        })
                        .collect()
                    })
                    .collect()
            }
        }
    }

    /// Scores `[n, known]` by the `k` nearest examples: each class the log-sum-exp of
    /// its examples' logits among them (a soft vote), `-inf` for a class with none.
    pub(crate) fn knn_scores(
        &self,
        features: &Tensor,
        k: usize,
        distance: Distance,
        ids: &[i64],
    ) -> Tensor {
        let known = ids.len();
        let n = features.size()[0];
        let rows: Vec<f64> = self
            .nearest(features, k, distance, ids, None)
            .into_iter()
            .flat_map(|hits| row_of(hits.into_iter(), known))
            .collect();
        Tensor::from_slice(&rows)
            .view([n, known as i64])
            .to_kind(Kind::Float)
            .to_device(features.device())
    }

    /// For each of `classes` (class indices; `means` `[classes.len(), d]` their
    /// prototypes), the other classes among `classes` whose examples lie nearest its
    /// prototype, nearest first, at most `want`, as positions in `classes`, from its
    /// `search` nearest examples (its own class's among them).
    pub(crate) fn neighbour_classes(
        &self,
        means: &Tensor,
        classes: &[usize],
        want: usize,
        distance: Distance,
        ids: &[i64],
        search: usize,
    ) -> Vec<Vec<usize>> {
        let position: HashMap<usize, usize> =
            classes.iter().enumerate().map(|(p, &c)| (c, p)).collect();
        let allowed = |o: usize| position.contains_key(&o);
        // Every prototype in one query; a class's own examples are skipped below.
        let hits = self.nearest(means, search, distance, ids, Some(&allowed));
        hits.into_iter()
            .enumerate()
            .map(|(p, hits)| {
                let mut near = Vec::with_capacity(want);
                for (o, _) in hits {
                    let q = position[&o];
                    if q != p && !near.contains(&q) {
                        near.push(q);
                        if near.len() == want {
                            break;
                        }
                    }
                }
                near
            })
            .collect()
    }
}

/// Overwrites the log of the store in `dir` with bytes that are not a log.
#[cfg(test)]
pub(crate) fn damage(dir: &Path) {
    let wal = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .unwrap()
        .path();
    std::fs::write(wal, b"not a log at all, not a log at all").unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_parses_and_refuses() {
        assert_eq!(Classify::parse("prototypes").unwrap(), Classify::Prototypes);
        assert_eq!(Classify::parse("knn").unwrap(), Classify::Knn { k: 10 });
        assert_eq!(Classify::parse("knn:3").unwrap(), Classify::Knn { k: 3 });
        for bad in ["knn:0", "knn:x", "nearest", ""] {
            assert!(Classify::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Classify::Knn { k: 7 }.to_string(), "knn:7");
        let json = serde_json::to_string(&Classify::Knn { k: 4 }).unwrap();
        assert_eq!(
            serde_json::from_str::<Classify>(&json).unwrap(),
            Classify::Knn { k: 4 }
        );
    }

    /// Three classes on a line; a query's k nearest by hand.
    fn line() -> (ExampleIndex, Vec<i64>) {
        let f = |v: &[f32]| Tensor::from_slice(v).view([-1, 1]);
        let mut ix = ExampleIndex::Tensors(Vec::new());
        ix.add(0, 10, "a", &f(&[0.0, 1.0])).unwrap();
        ix.add(1, 11, "b", &f(&[5.0])).unwrap();
        ix.add(2, 12, "c", &f(&[9.0, 10.0])).unwrap();
        (ix, vec![10, 11, 12])
    }

    #[test]
    fn knn_scores_each_class_by_the_soft_vote_of_its_examples_among_the_k() {
        let (ix, ids) = line();
        let q = Tensor::from_slice(&[2.0f32, 8.0]).view([2, 1]);
        let s = ix.knn_scores(&q, 2, Distance::SquaredEuclidean, &ids);
        let s: Vec<f32> = Vec::try_from(s.reshape([-1])).unwrap();
        // 2.0: nearest 1.0 (a, d 1) then 0.0 (a, d 4): only a, log(e⁻¹ + e⁻⁴);
        // 8.0: 9.0 (c, 1), 10.0 (c, 4): only c, the same.
        let inf = f32::NEG_INFINITY;
        let two = ((-1f64).exp() + (-4f64).exp()).ln() as f32;
        let close =
            |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x == y || (x - y).abs() < 1e-6);
        assert!(close(&s, &[two, inf, inf, inf, inf, two]), "{s:?}");
        let s = ix.knn_scores(&q, 3, Distance::SquaredEuclidean, &ids);
        let s: Vec<f32> = Vec::try_from(s.reshape([-1])).unwrap();
        // 2.0: third nearest is b at 5.0 (9); 8.0: third is b (9).
        assert!(close(&s, &[two, -9.0, inf, inf, -9.0, two]), "{s:?}");
        // One example: the nearest one's logit.
        let s = ix.knn_scores(&q, 1, Distance::SquaredEuclidean, &ids);
        let s: Vec<f32> = Vec::try_from(s.reshape([-1])).unwrap();
        assert_eq!(s, vec![-1.0, inf, inf, inf, inf, -1.0]);
    }

    #[test]
    fn a_forgotten_class_leaves_the_index_and_neighbours_skip_the_class_itself() {
        let (mut ix, ids) = line();
        let means = Tensor::from_slice(&[0.5f32, 5.0, 9.5]).view([3, 1]);
        let near =
            ix.neighbour_classes(&means, &[0, 1, 2], 2, Distance::SquaredEuclidean, &ids, 10);
        assert_eq!(near, vec![vec![1, 2], vec![0, 2], vec![1, 0]]);
        // Only classes 0 and 2 eligible: positions in [0, 2].
        let m = Tensor::from_slice(&[0.5f32, 9.5]).view([2, 1]);
        let near = ix.neighbour_classes(&m, &[0, 2], 2, Distance::SquaredEuclidean, &ids, 10);
        assert_eq!(near, vec![vec![1], vec![0]]);
        ix.forget(1, 11).unwrap();
        let ids = vec![10, 12];
        let q = Tensor::from_slice(&[5.0f32]).view([1, 1]);
        let s = ix.knn_scores(&q, 1, Distance::SquaredEuclidean, &ids);
        let s: Vec<f32> = Vec::try_from(s.reshape([-1])).unwrap();
        assert_eq!(s, vec![-16.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn the_store_answers_as_the_tensors_do_and_reopens_or_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("examples");
        let mut g = crate::data::Rng::new(3);
        let mut feats = Vec::new();
        for _ in 0..4 {
            let v: Vec<f32> = (0..6 * 8)
                .map(|_| (g.uniform() * 2.0 - 1.0) as f32)
                .collect();
            feats.push(Tensor::from_slice(&v).view([6, 8]));
        }
        let ids: Vec<i64> = vec![3, 5, 8, 13];
        let labels = ["a", "b", "c", "d"];
        let distance = Distance::Cosine { scale: 10.0 };
        let mut tensors = ExampleIndex::Tensors(Vec::new());
        for c in 0..4 {
            tensors.add(c, ids[c], labels[c], &feats[c]).unwrap();
        }
        let rows = || -> Result<Vec<ClassRows>> {
            Ok((0..4)
                .map(|c| ClassRows {
                    id: ids[c],
                    label: labels[c].to_string(),
                    features: feats[c].shallow_clone(),
                })
                .collect())
        };
        let classes: Vec<(&str, usize)> = labels.iter().map(|&l| (l, 6)).collect();
        let (mut s, ids_back) =
            ExampleStore::open(&root, 0, 8, distance, &classes, &mut || rows()).unwrap();
        assert_eq!((s.origin(), ids_back), ("written", None));
        // Through the HNSW index, not the exact search of small stores.
        s.exact_below = 0;
        assert_eq!(s.store().len(), 24);
        let e = s.store().iter().next().unwrap();
        assert_eq!(e.metadata, Some(r#"{"label":"a"}"#));
        let stored = ExampleIndex::Store(Box::new(s));
        let q: Vec<f32> = (0..5 * 8)
            .map(|_| (g.uniform() * 2.0 - 1.0) as f32)
            .collect();
        let q = Tensor::from_slice(&q).view([5, 8]);
        let a = tensors.knn_scores(&q, 5, distance, &ids);
        let b = stored.knn_scores(&q, 5, distance, &ids);
        let finite = a.isfinite();
        assert!(finite.eq_tensor(&b.isfinite()).all().int64_value(&[]) == 1);
        let diff = (a.masked_select(&finite) - b.masked_select(&finite))
            .abs()
            .max();
        assert!(diff.double_value(&[]) < 1e-4, "{diff}");
        drop(stored);
        // Reopened as it was: loaded, with the ids it files the classes under (in the
        // order asked); with other counts, or another class: rewritten.
        let mut reordered = classes.clone();
        reordered.swap(0, 3);
        let (s, back) =
            ExampleStore::open(&root, 0, 8, distance, &reordered, &mut || rows()).unwrap();
        assert_eq!((s.origin(), back), ("loaded", Some(vec![13, 5, 8, 3])));
        drop(s);
        for other in [
            vec![("a", 6), ("b", 6), ("c", 6), ("d", 5)],
            vec![("a", 6), ("b", 6), ("c", 6), ("e", 6)],
        ] {
            let (s, back) =
                ExampleStore::open(&root, 0, 8, distance, &other, &mut || rows()).unwrap();
            assert_eq!((s.origin(), back), ("written", None));
        }
        // Damaged files are refused.
        damage(&version_dir(&root, 0));
        let err = ExampleStore::open(&root, 0, 8, distance, &classes, &mut || rows()).unwrap_err();
        assert!(err.to_string().contains("example store"), "{err}");
        // Pruning keeps only the named version.
        std::fs::create_dir_all(version_dir(&root, 1)).unwrap();
        prune_example_stores(&root, 1).unwrap();
        assert!(!version_dir(&root, 0).exists() && version_dir(&root, 1).exists());
    }
}
