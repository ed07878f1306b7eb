//! A learned key-value memory (Kaiser, Nachum, Roy & Bengio, ICLR 2017, "Learning to
//! Remember Rare Events").
//!
//! The memory holds keys (unit-length embeddings), values (labels) and ages. A query
//! `q` (a unit-length embedding) reads it by cosine similarity: its `k` nearest keys
//! `n_1..n_k`, and its prediction is the value of the nearest. Training pulls `q`
//! towards the nearest key holding its label (`n_p`) and away from the nearest holding
//! another (`n_b`) with the memory loss `max(0, q·K[n_b] − q·K[n_p] + α)`; the keys
//! themselves take no gradient. Writing follows the paper's rule: every age grows by
//! one; when the nearest key's value is the query's label the key becomes the
//! normalised sum `(K[n_1] + q) / ‖K[n_1] + q‖` and its age 0; otherwise `q` and its
//! label go to the oldest slot (age 0).
//!
//! Here the network is a Conv4 embedding and a linear map to the key width, trained on
//! N-way K-shot episodes: a fresh memory per episode, the support set written by the
//! rule, then every query's memory loss; at test time a new class is learnt by writing
//! its support examples and a query is classified by its nearest key.
//!
//! Batched writes (a set of queries at once) are defined as: all nearest keys are
//! looked up first; ages grow by one; each slot that was the right nearest key of one
//! or more queries becomes the normalised sum of itself and all of them; the wrong ones
//! go, in order, to the oldest slots (ties to the lowest index), which never include a
//! slot just refreshed unless every slot is.
//!
//! A large memory (an adapted model of many classes and examples) can live in a
//! persistent [`Store`]: [`write_memory_to_store`] puts its occupied slots there and
//! [`KvMemory::adapted_in_store`] classifies by the store's HNSW index instead of a
//! product with every key.

use perennial_store::{Metric, NewEntry, Store};
use tch::{Device, Kind, Tensor};

use super::super::metric::losses::normalize;
use crate::error::{Error, Result};
use crate::meta::{
    adapted_tensor, mean_task_loss, Adapted, MetaLearner, Parts, PartsMut, StepReport,
};
use crate::nn::{uniform, Backbone, BackboneConfig, ParamSet};
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{accuracy, Batch, Task};

/// The key-value memory learner's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KvMemoryConfig {
    /// The embedding network.
    pub backbone: BackboneConfig,
    /// Width of a key (the embedding is mapped to it by a linear layer). The reference
    /// code's note: 20-way needs 256 (128 gives about 40%).
    pub key_dim: usize,
    /// Slots of the memory an episode is written into.
    pub memory_size: usize,
    /// Nearest keys a query's loss looks at.
    pub k: usize,
    /// The margin α of the memory loss.
    pub margin: f64,
    /// The optimiser.
    pub optimizer: AdamConfig,
}

impl Default for KvMemoryConfig {
    fn default() -> Self {
        KvMemoryConfig {
            backbone: BackboneConfig::default(),
            key_dim: 256,
            memory_size: 8192,
            k: 256,
            margin: 0.1,
            optimizer: AdamConfig::default(),
        }
    }
}

impl KvMemoryConfig {
    /// Refuses sizes the memory cannot have and a bad optimiser.
    pub fn validate(&self) -> Result<()> {
        if self.key_dim == 0 {
            return Err(Error::config("--key-dim", self.key_dim, "must be positive"));
        }
        if self.k == 0 || self.k > self.memory_size {
            return Err(Error::config(
                "--knn",
                self.k,
                format!("must lie in 1..=--memory-size ({})", self.memory_size),
            ));
        }
        if !(self.margin > 0.0 && self.margin.is_finite()) {
            return Err(Error::config("--margin", self.margin, "must be positive"));
        }
        self.optimizer.validate()
    }
}

/// Keys, values and ages: the memory of one task (no gradient flows into it).
#[derive(Debug)]
pub struct KeyValueMemory {
    /// Unit-length keys `[size, d]` (zero in empty slots).
    pub keys: Tensor,
    /// Labels `[size]` (`-1` in empty slots).
    pub values: Tensor,
    /// Ages `[size]`, in writes since the slot was last written.
    pub ages: Tensor,
}

impl KeyValueMemory {
    /// An empty memory of `size` slots of width `dim`.
    pub fn new(size: usize, dim: usize, device: Device) -> Self {
        KeyValueMemory {
            keys: Tensor::zeros([size as i64, dim as i64], (Kind::Float, device)),
            values: Tensor::full([size as i64], -1, (Kind::Int64, device)),
            ages: Tensor::zeros([size as i64], (Kind::Int64, device)),
        }
    }

    /// Slots.
    pub fn size(&self) -> usize {
        self.values.size()[0] as usize
    }

    /// Cosine similarities `[n, k]` and slots `[n, k]` of the `k` nearest keys of
    /// unit-length queries `q` `[n, d]`, nearest first (differentiable in `q`).
    pub fn nearest(&self, q: &Tensor, k: usize) -> (Tensor, Tensor) {
        q.matmul(&self.keys.transpose(0, 1))
            .topk(k as i64, 1, true, true)
    }

    /// The memory loss of queries `q` `[n, d]` with labels `y` `[n]` over their `k`
    /// nearest keys, and their nearest slots `[n]`: the mean over queries of
    /// `max(0, s_b − s_p + margin)`, with `s_p` the similarity of the nearest key
    /// holding the query's label (0 when none of the `k` does) and `s_b` that of the
    /// nearest holding another (a query with none has no loss).
    pub fn loss(&self, q: &Tensor, y: &Tensor, k: usize, margin: f64) -> (Tensor, Tensor) {
        let (sims, idx) = self.nearest(q, k);
        let right = self
            .values
            .index_select(0, &idx.reshape([-1]))
            .reshape(idx.size())
            .eq_tensor(&y.unsqueeze(1));
        let low = Tensor::full_like(&sims, -4.0);
        let pos = sims.where_self(&right, &low).amax([1].as_slice(), false);
        let pos = pos.where_self(&right.any_dim(1, false), &pos.zeros_like());
        let wrong = right.logical_not();
        let neg = sims.where_self(&wrong, &low).amax([1].as_slice(), false);
        let per = (neg - pos + margin).relu() * wrong.any_dim(1, false).to_kind(sims.kind());
        (per.mean(sims.kind()), idx.select(1, 0))
    }

    /// Writes unit-length queries `q` `[n, d]` with labels `y` `[n]` whose nearest
    /// slots are `nearest` `[n]` by the update rule (batched as in the module
    /// documentation).
    pub fn write(&mut self, q: &Tensor, y: &Tensor, nearest: &Tensor) {
        tch::no_grad(|| {
            let q = q.detach();
            let size = self.size() as i64;
            let _ = self.ages.g_add_scalar_(1);
            let hit = self.values.index_select(0, nearest).eq_tensor(y);
            let hit_idx = hit.nonzero().squeeze_dim(1);
            if hit_idx.size()[0] > 0 {
                let slots = nearest.index_select(0, &hit_idx);
                let sums = self.keys.index_add(0, &slots, &q.index_select(0, &hit_idx));
                let fresh = normalize(&sums.index_select(0, &slots));
                let _ = self.keys.index_copy_(0, &slots, &fresh);
                let _ = self.ages.index_fill_(0, &slots, 0);
            }
            let miss_idx = hit.logical_not().nonzero().squeeze_dim(1);
            let m = miss_idx.size()[0];
            if m > 0 {
                // Oldest first, ties to the lowest index.
                let order = &self.ages * size + (size - 1)
                    - Tensor::arange(size, (Kind::Int64, self.ages.device()));
                let m_slots = m.min(size);
                let oldest = order.topk(m_slots, 0, true, true).1;
                // More misses than slots: the first ones are written.
                let miss_idx = miss_idx.narrow(0, 0, m_slots);
                let _ = self
                    .keys
                    .index_copy_(0, &oldest, &q.index_select(0, &miss_idx));
                let _ = self
                    .values
                    .index_copy_(0, &oldest, &y.index_select(0, &miss_idx));
                let _ = self.ages.index_fill_(0, &oldest, 0);
            }
        })
    }

    /// Class scores `[n, ways]` of unit-length queries: for each class the largest
    /// cosine similarity of a key holding it (−2, below any cosine, for a class with
    /// none), so the argmax is the value of the nearest key.
    pub fn classify(&self, q: &Tensor, ways: usize) -> Tensor {
        tch::no_grad(|| {
            let n = q.size()[0];
            let held = self
                .values
                .ge(0)
                .logical_and(&self.values.lt(ways as i64))
                .nonzero()
                .squeeze_dim(1);
            let out = Tensor::full([n, ways as i64], -2.0, (q.kind(), q.device()));
            if held.size()[0] == 0 {
                return out;
            }
            let sims = q.matmul(&self.keys.index_select(0, &held).transpose(0, 1));
            let labels = self
                .values
                .index_select(0, &held)
                .unsqueeze(0)
                .expand([n, -1], false);
            out.internal_scatter_reduce(1, &labels, &sims, "amax", true)
        })
    }
}

/// A Conv4 embedding with a key-value memory (Kaiser et al. 2017).
#[derive(Debug)]
pub struct KvMemory {
    config: KvMemoryConfig,
    backbone: Box<dyn Backbone>,
    params: ParamSet,
    buffers: ParamSet,
    adam: Adam,
}

impl KvMemory {
    /// A freshly initialised network (deterministic for `seed`).
    pub fn new(config: KvMemoryConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let backbone = config.backbone.build();
        let (mut params, buffers) = backbone.init(seed, device);
        let mut rng = perennial_data::Rng::new(seed ^ 0x6b76_6d65_6d6f_7279);
        let (fan_in, out) = (backbone.out_dim() as i64, config.key_dim as i64);
        let b = 1.0 / (fan_in as f64).sqrt();
        params.push(
            "key.weight",
            uniform(&mut rng, &[out, fan_in], b, device).set_requires_grad(true),
        );
        params.push(
            "key.bias",
            uniform(&mut rng, &[out], b, device).set_requires_grad(true),
        );
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(KvMemory {
            config,
            backbone,
            params,
            buffers,
            adam,
        })
    }

    /// The settings.
    pub fn config(&self) -> &KvMemoryConfig {
        &self.config
    }

    /// Unit-length keys `[n, key_dim]` of images.
    fn keys(&self, x: &Tensor, train: bool) -> Tensor {
        let e = self
            .backbone
            .forward(&self.params, Some(&self.buffers), x, train);
        normalize(&e.linear(
            self.params.get("key.weight"),
            Some(self.params.get("key.bias")),
        ))
    }

    /// Unit-length keys of images in evaluation mode, without gradients (what the
    /// lifelong learner and the store hold).
    pub fn embed_eval(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.keys(x, false))
    }

    /// A fresh memory of the configured size with `support` written into it.
    fn memory_of(&self, keys: &Tensor, labels: &Tensor) -> KeyValueMemory {
        let mut m = KeyValueMemory::new(
            self.config.memory_size.max(labels.size()[0] as usize),
            self.config.key_dim,
            keys.device(),
        );
        let k = keys.detach();
        let nearest = m.nearest(&k, 1).1.select(1, 0);
        m.write(&k, labels, &nearest);
        m
    }
}

/// A key-value memory holding one task's support set.
struct KvAdapted<'a> {
    net: &'a KvMemory,
    memory: KeyValueMemory,
    ways: usize,
}

impl Adapted for KvAdapted<'_> {
    fn predict(&self, x: &Tensor) -> Tensor {
        let q = self.net.embed_eval(x);
        self.memory.classify(&q, self.ways)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        vec![
            ("keys".into(), cpu(&self.memory.keys)),
            ("values".into(), cpu(&self.memory.values)),
            ("ages".into(), cpu(&self.memory.ages)),
        ]
    }
}

impl MetaLearner for KvMemory {
    fn name(&self) -> &'static str {
        "kv-memory"
    }

    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        let keys = self.embed_eval(&support.x);
        Box::new(KvAdapted {
            net: self,
            memory: self.memory_of(&keys, &support.y),
            ways: support.ways,
        })
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        let device = self.params.tensors()[0].device();
        let keys = adapted_tensor(named, "keys", device)?;
        let values = adapted_tensor(named, "values", device)?;
        let ages = adapted_tensor(named, "ages", device)?;
        let n = values.size()[0];
        if keys.size() != [n, self.config.key_dim as i64] || ages.size() != [n] {
            return Err(Error::Parameters {
                name: "keys".into(),
                reason: format!(
                    "keys {:?}, values {:?}, ages {:?}: expected [n, {}], [n], [n]",
                    keys.size(),
                    values.size(),
                    ages.size(),
                    self.config.key_dim
                ),
            });
        }
        let ways = values.max().int64_value(&[]).max(1) as usize + 1;
        Ok(Box::new(KvAdapted {
            net: self,
            memory: KeyValueMemory { keys, values, ages },
            ways,
        }))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let (k, margin) = (self.config.k, self.config.margin);
        let (total, report) = mean_task_loss(tasks, |task| {
            let ns = task.support.len() as i64;
            let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
            let e = self.keys(&x, true);
            let (s, q) = (e.narrow(0, 0, ns), e.narrow(0, ns, e.size()[0] - ns));
            let memory = self.memory_of(&s, &task.support.y);
            let (loss, _) = memory.loss(&q, &task.query.y, k.min(memory.size()), margin);
            let logits = memory.classify(&q.detach(), task.support.ways);
            (loss, accuracy(&logits, &task.query.y))
        });
        self.adam.minimise(&self.params, total);
        report
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            params: &self.params,
            buffers: Some(&self.buffers),
            adam: Some(&self.adam),
        }
    }

    fn parts_mut(&mut self) -> PartsMut<'_> {
        PartsMut {
            params: &mut self.params,
            buffers: Some(&mut self.buffers),
            adam: Some(&mut self.adam),
        }
    }
}

/// Nearest entries a store-backed memory reads per query to score the classes.
pub const STORE_NEIGHBOURS: usize = 32;

/// Class scores `[n, classes]` of unit-length features from a store: for each class
/// the largest cosine similarity among the query's [`STORE_NEIGHBOURS`] nearest entries
/// holding it (−2 for classes not among them), so the argmax is the nearest entry's
/// value; only entries of `mask`'s classes when given. An unreadable store answers
/// nothing (every class −2).
pub fn store_scores(
    store: &Store,
    features: &Tensor,
    classes: usize,
    mask: Option<&[usize]>,
) -> Tensor {
    let n = features.size()[0];
    let d = features.size()[1] as usize;
    let flat: Vec<f32> = features
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .reshape([-1])
        .try_into()
        .unwrap_or_default();
    let mut allowed = vec![mask.is_none(); classes];
    for &c in mask.unwrap_or(&[]).iter().filter(|&&c| c < classes) {
        allowed[c] = true;
    }
    let keep = |e: &perennial_store::EntryView<'_>| {
        usize::try_from(e.value).is_ok_and(|v| v < classes && allowed[v])
    };
    let mut out = vec![-2f32; n as usize * classes];
    for (i, row) in flat.chunks(d).enumerate() {
        let hits = store
            .search(row, STORE_NEIGHBOURS.min(store.len().max(1)), Some(&keep))
            .unwrap_or_default();
        for h in hits {
            let s = &mut out[i * classes + h.value as usize];
            *s = s.max(1.0 - h.distance);
        }
    }
    Tensor::from_slice(&out)
        .view([n, classes as i64])
        .to_device(features.device())
}

/// Writes the occupied slots of `memory` (value ≥ 0) into `store`, key, value and
/// age each, in one durable batch; the number written.
pub fn write_memory_to_store(
    memory: &KeyValueMemory,
    store: &mut Store,
) -> perennial_store::Result<usize> {
    let d = memory.keys.size()[1];
    let held = memory.values.ge(0).nonzero().squeeze_dim(1);
    let cpu = |t: &Tensor| t.index_select(0, &held).to_device(Device::Cpu);
    let keys: Vec<f32> = cpu(&memory.keys)
        .to_kind(Kind::Float)
        .reshape([-1])
        .try_into()
        .unwrap_or_default();
    let values: Vec<i64> = cpu(&memory.values).try_into().unwrap_or_default();
    let ages: Vec<i64> = cpu(&memory.ages).try_into().unwrap_or_default();
    store.insert_many(keys.chunks(d as usize).zip(values.iter().zip(&ages)).map(
        |(key, (&value, &age))| NewEntry {
            key,
            value,
            age: age.max(0) as u64,
            metadata: None,
        },
    ))?;
    Ok(values.len())
}

/// A key-value memory in a store, read through its index.
struct StoreAdapted<'a> {
    net: &'a KvMemory,
    store: Store,
    ways: usize,
}

impl Adapted for StoreAdapted<'_> {
    fn predict(&self, x: &Tensor) -> Tensor {
        store_scores(&self.store, &self.net.embed_eval(x), self.ways, None)
    }

    /// The store's entries as the tensors of an in-RAM memory (in id order).
    fn state(&self) -> Vec<(String, Tensor)> {
        let m = memory_of_store(&self.store);
        vec![
            ("keys".into(), m.keys),
            ("values".into(), m.values),
            ("ages".into(), m.ages),
        ]
    }
}

/// A store's entries as a memory's tensors, in id order: keys, values, and the stored
/// ages as they are.
pub fn memory_of_store(store: &Store) -> KeyValueMemory {
    let mut rows: Vec<_> = store.iter().collect();
    rows.sort_by_key(|e| e.id);
    let keys: Vec<f32> = rows.iter().flat_map(|e| e.key.iter().copied()).collect();
    let values: Vec<i64> = rows.iter().map(|e| e.value).collect();
    let ages: Vec<i64> = rows.iter().map(|e| e.age as i64).collect();
    KeyValueMemory {
        keys: Tensor::from_slice(&keys).view([rows.len() as i64, store.dim() as i64]),
        values: Tensor::from_slice(&values),
        ages: Tensor::from_slice(&ages),
    }
}

impl KvMemory {
    /// A model adapted to the memory in `store` (written by [`write_memory_to_store`]
    /// from a support set of `ways` classes): queries read the store's index. Refused
    /// when the store's keys are not this network's (width, cosine) or its values not
    /// classes `0..ways`.
    pub fn adapted_in_store<'a>(
        &'a self,
        store: Store,
        ways: usize,
    ) -> Result<Box<dyn Adapted + 'a>> {
        if store.dim() != self.config.key_dim || store.config().metric != Metric::Cosine {
            return Err(Error::config(
                "store",
                store.dir().display(),
                format!(
                    "holds keys of width {} ({:?}); this network's are cosine keys of width {}",
                    store.dim(),
                    store.config().metric,
                    self.config.key_dim
                ),
            ));
        }
        if let Some(e) = store.iter().find(|e| !(0..ways as i64).contains(&e.value)) {
            return Err(Error::config(
                "store",
                store.dir().display(),
                format!(
                    "entry {} has value {}, not a class of 0..{ways}",
                    e.id, e.value
                ),
            ));
        }
        Ok(Box::new(StoreAdapted {
            net: self,
            store,
            ways,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perennial_data::Rng;

    fn rows(t: &Tensor) -> Vec<Vec<f64>> {
        let n = t.size()[0];
        (0..n)
            .map(|i| {
                t.get(i)
                    .to_kind(Kind::Double)
                    .reshape([-1])
                    .try_into()
                    .unwrap()
            })
            .collect()
    }

    fn unit_rows(rng: &mut Rng, n: usize, d: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                let v: Vec<f64> = (0..d).map(|_| rng.uniform() * 2.0 - 1.0).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn tensor(v: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = v.iter().flatten().map(|x| *x as f32).collect();
        Tensor::from_slice(&flat).view([v.len() as i64, v[0].len() as i64])
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// The brute-force reference of the batched rule: one loop per step of the
    /// module documentation's definition.
    #[allow(clippy::type_complexity)]
    fn reference_write(
        keys: &mut [Vec<f64>],
        values: &mut [i64],
        ages: &mut [i64],
        q: &[Vec<f64>],
        y: &[i64],
    ) {
        let nearest: Vec<usize> = q
            .iter()
            .map(|qi| {
                let mut best = 0;
                for j in 0..keys.len() {
                    if dot(qi, &keys[j]) > dot(qi, &keys[best]) {
                        best = j;
                    }
                }
                best
            })
            .collect();
        for a in ages.iter_mut() {
            *a += 1;
        }
        let mut sums: Vec<Option<Vec<f64>>> = vec![None; keys.len()];
        let mut misses = Vec::new();
        for (i, &n) in nearest.iter().enumerate() {
            if values[n] == y[i] {
                let s = sums[n].get_or_insert_with(|| keys[n].clone());
                for (a, b) in s.iter_mut().zip(&q[i]) {
                    *a += b;
                }
            } else {
                misses.push(i);
            }
        }
        for (j, s) in sums.into_iter().enumerate() {
            if let Some(s) = s {
                let norm = s.iter().map(|x| x * x).sum::<f64>().sqrt();
                keys[j] = s.into_iter().map(|x| x / norm).collect();
                ages[j] = 0;
            }
        }
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&j| (std::cmp::Reverse(ages[j]), j));
        for (slot, i) in order.into_iter().zip(misses) {
            keys[slot] = q[i].clone();
            values[slot] = y[i];
            ages[slot] = 0;
        }
    }

    /// A memory written into a store answers as the memory does: every occupied slot
    /// is an entry (key, value, age), empty slots are not, and the store's class scores
    /// pick the nearest key's value for every query.
    #[test]
    fn a_memory_in_a_store_classifies_as_in_tensors() {
        let mut rng = Rng::new(9);
        let (size, d, ways) = (300, 16, 7);
        let keys = unit_rows(&mut rng, size, d);
        let mut values: Vec<i64> = (0..size as i64).map(|i| i % ways).collect();
        values[size - 1] = -1; // one empty slot
        let ages: Vec<i64> = (0..size as i64).collect();
        let m = KeyValueMemory {
            keys: tensor(&keys),
            values: Tensor::from_slice(&values),
            ages: Tensor::from_slice(&ages),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), perennial_store::StoreConfig::new(d)).unwrap();
        assert_eq!(write_memory_to_store(&m, &mut store).unwrap(), size - 1);
        assert_eq!(store.len(), size - 1);
        let mut rows: Vec<_> = store.iter().collect();
        rows.sort_by_key(|e| e.id);
        for (i, e) in rows.iter().enumerate() {
            assert_eq!((e.value, e.age), (values[i], ages[i] as u64));
            for (a, b) in e.key.iter().zip(&keys[i]) {
                assert!((f64::from(*a) - b).abs() < 1e-5);
            }
        }
        let q = tensor(&unit_rows(&mut rng, 50, d));
        let want = m.classify(&q, ways as usize).argmax(1, false);
        let got = store_scores(&store, &q, ways as usize, None).argmax(1, false);
        assert!(got.equal(&want));
        let only: Vec<i64> = store_scores(&store, &q, ways as usize, Some(&[2, 5]))
            .argmax(1, false)
            .try_into()
            .unwrap();
        assert!(only.iter().all(|c| *c == 2 || *c == 5), "{only:?}");
    }

    #[test]
    fn write_matches_the_brute_force_rule() {
        let mut rng = Rng::new(5);
        let (size, d) = (12, 4);
        let mut keys = unit_rows(&mut rng, size, d);
        let mut values: Vec<i64> = (0..size as i64).map(|i| i % 3).collect();
        let mut ages: Vec<i64> = (0..size).map(|_| rng.below(4) as i64).collect();
        let mut m = KeyValueMemory {
            keys: tensor(&keys),
            values: Tensor::from_slice(&values),
            ages: Tensor::from_slice(&ages),
        };
        for round in 0..6 {
            let q = unit_rows(&mut rng, 5, d);
            let y: Vec<i64> = (0..5).map(|_| rng.below(3) as i64).collect();
            let qt = tensor(&q);
            let nearest = m.nearest(&qt, 1).1.select(1, 0);
            m.write(&qt, &Tensor::from_slice(&y), &nearest);
            reference_write(&mut keys, &mut values, &mut ages, &q, &y);
            let got: Vec<i64> = m.values.shallow_clone().try_into().unwrap();
            assert_eq!(got, values, "values, round {round}");
            let got: Vec<i64> = m.ages.shallow_clone().try_into().unwrap();
            assert_eq!(got, ages, "ages, round {round}");
            for (a, b) in rows(&m.keys).iter().zip(&keys) {
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() < 1e-5, "keys, round {round}");
                }
            }
        }
    }

    #[test]
    fn loss_matches_the_brute_force_definition() {
        let mut rng = Rng::new(9);
        let (size, d, k, margin) = (10, 5, 4, 0.1);
        let keys = unit_rows(&mut rng, size, d);
        let values: Vec<i64> = (0..size as i64).map(|i| i % 4).collect();
        let q = unit_rows(&mut rng, 8, d);
        let y: Vec<i64> = (0..8).map(|i| i % 5).collect(); // label 4 is in no slot
        let m = KeyValueMemory {
            keys: tensor(&keys),
            values: Tensor::from_slice(&values),
            ages: Tensor::zeros([size as i64], (Kind::Int64, Device::Cpu)),
        };
        let qt = tensor(&q).set_requires_grad(true);
        let (loss, nearest) = m.loss(&qt, &Tensor::from_slice(&y), k, margin);
        let mut want = 0.0;
        let mut want_nearest = Vec::new();
        for (qi, yi) in q.iter().zip(&y) {
            let mut sims: Vec<(f64, usize)> = keys
                .iter()
                .enumerate()
                .map(|(j, kj)| (dot(qi, kj), j))
                .collect();
            sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
            let top = &sims[..k];
            want_nearest.push(top[0].1 as i64);
            let pos = top
                .iter()
                .find(|(_, j)| values[*j] == *yi)
                .map_or(0.0, |s| s.0);
            if let Some((neg, _)) = top.iter().find(|(_, j)| values[*j] != *yi) {
                want += (neg - pos + margin).max(0.0);
            }
        }
        want /= q.len() as f64;
        assert!(
            (loss.double_value(&[]) - want).abs() < 1e-5,
            "{} vs {want}",
            loss.double_value(&[])
        );
        let got: Vec<i64> = nearest.try_into().unwrap();
        assert_eq!(got, want_nearest);
        loss.backward();
        assert!(qt.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn classify_returns_the_nearest_keys_value() {
        let mut rng = Rng::new(2);
        let keys = unit_rows(&mut rng, 6, 3);
        let values = [0i64, 1, 2, 0, 1, -1];
        let m = KeyValueMemory {
            keys: tensor(&keys),
            values: Tensor::from_slice(&values),
            ages: Tensor::zeros([6], (Kind::Int64, Device::Cpu)),
        };
        let q = unit_rows(&mut rng, 20, 3);
        let pred: Vec<i64> = m
            .classify(&tensor(&q), 4)
            .argmax(1, false)
            .try_into()
            .unwrap();
        for (qi, p) in q.iter().zip(pred) {
            let best = (0..5)
                .max_by(|&a, &b| dot(qi, &keys[a]).partial_cmp(&dot(qi, &keys[b])).unwrap())
                .unwrap();
            assert_eq!(p, values[best]);
        }
    }
}
