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

use std::ops::Range;

use tch::{Kind, Tensor};

use super::encoder::Encoding;
use super::run::{Learner, View};
use super::strategy::StrategyState;
use crate::data::stream::Part;
use crate::error::{Error, Result};
use crate::meta::memory::KeyValueMemory;
use crate::meta::metric::losses::normalize;

/// A key-value memory over a frozen encoder's unit-length features.
#[derive(Debug)]
pub struct KvMemoryLearner {
    encoding: Encoding,
    memory: KeyValueMemory,
    classes: usize,
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
            memory: KeyValueMemory::new(size, dim, tch::Device::Cpu),
            classes,
        })
    }

    /// The memory.
    pub fn memory(&self) -> &KeyValueMemory {
        &self.memory
    }
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
            let nearest = tch::no_grad(|| self.memory.nearest(&qi, 1).1.select(1, 0));
            self.memory.write(&qi, &yi, &nearest);
        }
        Ok(0.0)
    }

    fn scores(&self, features: &Tensor, mask: Option<&[usize]>) -> Tensor {
        let s = self.memory.classify(features, self.classes);
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

    fn state(&self) -> StrategyState {
        StrategyState {
            tensors: vec![
                ("memory.keys".into(), self.memory.keys.copy()),
                ("memory.values".into(), self.memory.values.copy()),
                ("memory.ages".into(), self.memory.ages.copy()),
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
        if keys.size() != self.memory.keys.size()
            || values.size() != self.memory.values.size()
            || ages.size() != self.memory.ages.size()
            || values.kind() != Kind::Int64
        {
            return Err(Error::Parameters {
                name: "memory.keys".into(),
                reason: format!(
                    "a memory of {:?} in the checkpoint, {:?} configured",
                    keys.size(),
                    self.memory.keys.size()
                ),
            });
        }
        self.memory = KeyValueMemory { keys, values, ages };
        Ok(())
    }
}
