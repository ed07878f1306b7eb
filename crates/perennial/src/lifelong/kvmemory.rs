//! The key-value memory of Kaiser et al. 2017 as a lifelong learner: a frozen
//! kv-memory encoder ([`crate::meta::memory::KvMemory`]) and one memory that every
//! example of the stream is written into, by the paper's update rule, as it arrives.
//!
//! Where Perennial's [`super::LifelongLearner`] keeps one prototype per class, this
//! learner keeps examples: a slot per example whose nearest key held another label,
//! and keys averaged with the examples that found their own label nearest. A query is
//! classified by its nearest key. The memory's size bounds what it holds: once full,
//! the oldest slots (those not refreshed for the longest) are overwritten, which is how
//! this learner forgets.
//!
//! The memory lives in tensors, or, with [`KvMemoryLearner::with_store`], in a
//! persistent [`Store`] on disk: every write is durable once made, the nearest keys
//! come from the store's HNSW index (exact below a few thousand entries is as fast),
//! and an entry's age is the logical time of its last write (the oldest entry is the
//! one with the smallest). A refreshed key is a new entry replacing the old one.

use std::ops::Range;

use tch::{Kind, Tensor};

use super::encoder::Encoding;
use super::run::{Learner, View};
use super::strategy::StrategyState;
use crate::data::stream::Part;
use crate::error::{Error, Result};
use crate::meta::memory::kv::{memory_of_store, store_scores};
use crate::meta::memory::KeyValueMemory;
use crate::meta::metric::losses::normalize;
use perennial_store::{Metric, Store};

/// Where the keys live.
enum Backend {
    /// In tensors.
    Tensors(KeyValueMemory),
    /// In a store on disk; `clock` counts writes (the age of a write is its time).
    Store {
        store: Box<Store>,
        size: usize,
        clock: u64,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Tensors(m) => f.debug_tuple("Tensors").field(m).finish(),
            Backend::Store { store, size, clock } => f
                .debug_struct("Store")
                .field("dir", &store.dir())
                .field("entries", &store.len())
                .field("size", size)
                .field("clock", clock)
                .finish(),
        }
    }
}

/// A key-value memory over a frozen encoder's unit-length features.
#[derive(Debug)]
pub struct KvMemoryLearner {
    encoding: Encoding,
    backend: Backend,
    classes: usize,
    dim: usize,
}

fn store_err(e: perennial_store::Error) -> Error {
    Error::config("--store", "", e.to_string())
}

impl KvMemoryLearner {
    /// An empty memory of `size` slots for features of width `dim`, over `classes`
    /// classes.
    pub fn new(encoding: Encoding, size: usize, dim: usize, classes: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::config("--memory-size", size, "must be positive"));
        }
        Ok(KvMemoryLearner {
            encoding,
            backend: Backend::Tensors(KeyValueMemory::new(size, dim, tch::Device::Cpu)),
            classes,
            dim,
        })
    }

    /// The same learner with its memory in `store` (cosine metric, width `dim`), which
    /// holds at most `size` entries. Entries already in the store are the memory's
    /// start (their values must be classes of the stream).
    pub fn with_store(
        encoding: Encoding,
        store: Store,
        size: usize,
        dim: usize,
        classes: usize,
    ) -> Result<Self> {
        if size == 0 {
            return Err(Error::config("--memory-size", size, "must be positive"));
        }
        if store.dim() != dim || store.config().metric != Metric::Cosine {
            return Err(Error::config(
                "--store",
                store.dir().display(),
                format!(
                    "holds keys of width {}, the encoder gives {dim}",
                    store.dim()
                ),
            ));
        }
        let clock = store.iter().map(|e| e.age).max().unwrap_or(0);
        Ok(KvMemoryLearner {
            encoding,
            backend: Backend::Store {
                store: Box::new(store),
                size,
                clock,
            },
            classes,
            dim,
        })
    }

    /// The tensor memory (`None` when the memory is in a store).
    pub fn memory(&self) -> Option<&KeyValueMemory> {
        match &self.backend {
            Backend::Tensors(m) => Some(m),
            Backend::Store { .. } => None,
        }
    }

    /// The store (`None` when the memory is in tensors).
    pub fn store(&self) -> Option<&Store> {
        match &self.backend {
            Backend::Store { store, .. } => Some(store),
            Backend::Tensors(_) => None,
        }
    }

    /// The memory as tensors (keys, values, ages as writes since the last write of
    /// each slot), whichever the backend.
    fn snapshot(&self) -> (Tensor, Tensor, Tensor) {
        match &self.backend {
            Backend::Tensors(m) => (m.keys.copy(), m.values.copy(), m.ages.copy()),
            Backend::Store { store, clock, .. } => {
                // Stored ages are write times: the memory's are writes since then.
                let m = memory_of_store(store);
                (m.keys, m.values, (*clock as i64) - m.ages)
            }
        }
    }
}

/// One example `q` (unit length) with label `y` written into a store by the update
/// rule: the nearest entry refreshed when it holds `y`, else `q` added (the oldest
/// entry dropped first when the store is full).
fn store_write(store: &mut Store, size: usize, clock: &mut u64, q: &[f32], y: i64) -> Result<()> {
    *clock += 1;
    let nearest = store.search(q, 1, None).map_err(store_err)?;
    match nearest.first() {
        Some(hit) if hit.value == y => {
            let key = store
                .get(hit.id)
                .map(|e| e.key.to_vec())
                .unwrap_or_default();
            let sum: Vec<f32> = key.iter().zip(q).map(|(a, b)| a + b).collect();
            // The store normalises cosine keys on the way in.
            store.delete(hit.id).map_err(store_err)?;
            store.insert(&sum, y, *clock, None).map_err(store_err)?;
        }
        _ => {
            if store.len() >= size {
                let oldest = store.iter().min_by_key(|e| (e.age, e.id)).map(|e| e.id);
                if let Some(id) = oldest {
                    store.delete(id).map_err(store_err)?;
                }
            }
            store.insert(q, y, *clock, None).map_err(store_err)?;
        }
    }
    Ok(())
}

impl Learner for KvMemoryLearner {
    fn name(&self) -> &'static str {
        "kv-memory"
    }

    fn encodes(&self) -> bool {
        true
    }

    /// Unit-length features (the mean over shifts, when averaging, made unit length
    /// again).
    fn encode(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| normalize(&self.encoding.features(x)))
    }

    fn observe(&mut self, data: &View<'_>, task: usize, range: Range<usize>) -> Result<f64> {
        let (q, y) = data.batch(task, Part::Train, range);
        // One example at a time, as the stream delivers them: each sees the memory
        // the previous ones left.
        for i in 0..q.size()[0] {
            let (qi, yi) = (q.narrow(0, i, 1), y.narrow(0, i, 1));
            match &mut self.backend {
                Backend::Tensors(m) => {
                    let nearest = tch::no_grad(|| m.nearest(&qi, 1).1.select(1, 0));
                    m.write(&qi, &yi, &nearest);
                }
                Backend::Store { store, size, clock } => {
                    let key: Vec<f32> = qi
                        .reshape([-1])
                        .try_into()
                        .map_err(|e| Error::config("features", "", format!("{e}")))?;
                    store_write(store, *size, clock, &key, yi.int64_value(&[0]))?;
                }
            }
        }
        Ok(0.0)
    }

    fn scores(&self, features: &Tensor, mask: Option<&[usize]>) -> Tensor {
        let s = match &self.backend {
            Backend::Tensors(m) => m.classify(features, self.classes),
            Backend::Store { store, .. } => store_scores(store, features, self.classes, mask),
        };
        match mask {
            None => s,
            Some(keep) => {
                let mut allowed = vec![false; self.classes];
                for &c in keep.iter().filter(|&&c| c < self.classes) {
                    allowed[c] = true;
                }
                let allowed = Tensor::from_slice(&allowed).to_device(s.device());
                s.where_self(
                    &allowed.unsqueeze(0),
                    &Tensor::full_like(&s, f64::NEG_INFINITY),
                )
            }
        }
    }

    /// The memory's entries (for a store: as of this moment; a restore rewrites the
    /// store to them, so a resumed run continues from the checkpoint, not from writes
    /// made after it).
    fn state(&self) -> StrategyState {
        let (keys, values, ages) = self.snapshot();
        StrategyState {
            tensors: vec![
                ("memory.keys".into(), keys),
                ("memory.values".into(), values),
                ("memory.ages".into(), ages),
            ],
            meta: serde_json::json!({ "classes": self.classes }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        let get = |name: &str| {
            state
                .tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.copy())
                .ok_or_else(|| Error::Parameters {
                    name: name.into(),
                    reason: "missing from the checkpoint".into(),
                })
        };
        let (keys, values, ages) = (
            get("memory.keys")?,
            get("memory.values")?,
            get("memory.ages")?,
        );
        let n = values.size()[0];
        let fits = match &self.backend {
            Backend::Tensors(m) => keys.size() == m.keys.size(),
            Backend::Store { size, .. } => {
                keys.size() == [n, self.dim as i64] && n as usize <= *size
            }
        };
        if !fits || ages.size() != [n] || values.kind() != Kind::Int64 {
            return Err(Error::Parameters {
                name: "memory.keys".into(),
                reason: format!(
                    "a memory of {:?} in the checkpoint does not fit the configured one",
                    keys.size()
                ),
            });
        }
        match &mut self.backend {
            Backend::Tensors(m) => *m = KeyValueMemory { keys, values, ages },
            Backend::Store { store, clock, .. } => {
                let ids: Vec<u64> = store.iter().map(|e| e.id).collect();
                for id in ids {
                    store.delete(id).map_err(store_err)?;
                }
                let k: Vec<f32> = keys.reshape([-1]).try_into().unwrap_or_default();
                let v: Vec<i64> = values.try_into().unwrap_or_default();
                let a: Vec<i64> = ages.try_into().unwrap_or_default();
                let newest = a.iter().copied().max().unwrap_or(0).max(0) as u64;
                *clock = newest;
                let d = self.dim;
                let entries =
                    (0..v.len())
                        .filter(|&i| v[i] >= 0)
                        .map(|i| perennial_store::NewEntry {
                            key: &k[i * d..(i + 1) * d],
                            value: v[i],
                            age: newest - a[i].max(0) as u64,
                            metadata: None,
                        });
                store.insert_many(entries).map_err(store_err)?;
            }
        }
        Ok(())
    }
}
