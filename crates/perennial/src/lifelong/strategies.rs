//! Regularisation-, projection- and meta-learning-based strategies: EWC, A-GEM and MER.

use std::ops::Range;

use tch::{Kind, Tensor};

use super::run::View;
use super::strategy::{memory_loss, task_loss, Classifier, Strategy, StrategyState};
use crate::data::stream::Part;
use crate::data::Rng;
use crate::error::{Error, Result};

/// Elastic weight consolidation (Kirkpatrick et al. 2017), one penalty per past task
/// (Avalanche's `mode="separate"`): the loss on a batch is
/// `CE + λ Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²`, where `θ*_t` are the parameters after task
/// `t` and `F_t` the diagonal empirical Fisher information on task `t`'s training data:
/// the mean, over its mini-batches of `fisher_batch` examples, of the squared gradient
/// of the batch's mean cross-entropy (as Avalanche computes it).
#[derive(Debug)]
pub struct Ewc {
    lambda: f64,
    fisher_batch: usize,
    anchors: Vec<(Vec<Tensor>, Vec<Tensor>)>,
}

impl Ewc {
    /// EWC with strength `lambda` and Fisher mini-batches of `fisher_batch` examples.
    pub fn new(lambda: f64, fisher_batch: usize) -> Result<Self> {
        if !(lambda >= 0.0 && lambda.is_finite()) {
            return Err(Error::config("--ewc-lambda", lambda, "must be ≥ 0"));
        }
        if fisher_batch == 0 {
            return Err(Error::config("--batch", 0, "must be at least 1"));
        }
        Ok(Ewc {
            lambda,
            fisher_batch,
            anchors: Vec::new(),
        })
    }

    /// The penalty `Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²` at the model's parameters.
    pub fn penalty(&self, model: &Classifier) -> Option<Tensor> {
        let params = model.params.tensors();
        let mut terms = Vec::new();
        for (anchor, fisher) in &self.anchors {
            for ((p, a), f) in params.iter().zip(anchor).zip(fisher) {
                terms.push((f * (*p - a).square()).sum(Kind::Float));
            }
        }
        (!terms.is_empty()).then(|| Tensor::stack(&terms, 0).sum(Kind::Float))
    }
}

impl Strategy for Ewc {
    fn name(&self) -> &'static str {
        "ewc"
    }

    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        let loss = task_loss(model, data, task, range);
        let value = loss.double_value(&[]);
        let total = match self.penalty(model) {
            Some(p) => loss + p * self.lambda,
            None => loss,
        };
        model.sgd_step(&total);
        Ok(value)
    }

    fn after_task(&mut self, model: &mut Classifier, data: &View<'_>, task: usize) -> Result<()> {
        let n = data.examples(task, Part::Train);
        let mut fisher: Vec<Tensor> = model
            .params
            .tensors()
            .iter()
            .map(|p| p.zeros_like())
            .collect();
        let batches = n.div_ceil(self.fisher_batch);
        for b in 0..batches {
            let range = b * self.fisher_batch..((b + 1) * self.fisher_batch).min(n);
            let grads = model.gradients(&task_loss(model, data, task, range));
            for (f, g) in fisher.iter_mut().zip(&grads) {
                *f += g.square();
            }
        }
        let fisher = fisher.into_iter().map(|f| f / batches as f64).collect();
        let anchor = model
            .params
            .tensors()
            .iter()
            .map(|p| p.detach().copy())
            .collect();
        self.anchors.push((anchor, fisher));
        Ok(())
    }

    fn state(&self) -> StrategyState {
        let mut tensors = Vec::new();
        for (t, (anchor, fisher)) in self.anchors.iter().enumerate() {
            for (i, (a, f)) in anchor.iter().zip(fisher).enumerate() {
                tensors.push((format!("anchor.{t}.{i}"), a.shallow_clone()));
                tensors.push((format!("fisher.{t}.{i}"), f.shallow_clone()));
            }
        }
        StrategyState {
            tensors,
            meta: serde_json::json!({ "tasks": self.anchors.len() }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        let tasks: usize = state.field("ewc", "tasks")?;
        let find = |name: String| -> Result<Tensor> {
            state
                .tensors
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| Error::config("strategy state", name, "missing from the checkpoint"))
        };
        let per_task = state
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with("anchor.0."))
            .count();
        let mut anchors = Vec::with_capacity(tasks);
        for t in 0..tasks {
            let mut anchor = Vec::with_capacity(per_task);
            let mut fisher = Vec::with_capacity(per_task);
            for i in 0..per_task {
                anchor.push(find(format!("anchor.{t}.{i}"))?);
                fisher.push(find(format!("fisher.{t}.{i}"))?);
            }
            anchors.push((anchor, fisher));
        }
        self.anchors = anchors;
        Ok(())
    }
}

/// Averaged gradient episodic memory (A-GEM, Chaudhry et al. 2019): after each task,
/// `per_task` of its training examples (drawn at random) join an episodic memory; each
/// step computes the batch gradient `g` and the gradient `g_ref` of `sample` examples
/// drawn from the memory, and when `g · g_ref < 0` (the step would raise the memory's
/// loss) it steps along `g − (g·g_ref / g_ref·g_ref) g_ref` instead.
#[derive(Debug)]
pub struct Agem {
    per_task: usize,
    sample: usize,
    memory: Vec<(usize, usize)>,
    rng: Rng,
}

impl Agem {
    /// A-GEM keeping `per_task` examples of each task and drawing `sample` of them for
    /// every reference gradient; draws seeded by `seed`.
    pub fn new(per_task: usize, sample: usize, seed: u64) -> Result<Self> {
        if per_task == 0 {
            return Err(Error::config(
                "--memory-per-task",
                0,
                "A-GEM needs a memory of at least one example per task",
            ));
        }
        if sample == 0 {
            return Err(Error::config(
                "--agem-sample",
                0,
                "A-GEM needs a reference sample of at least one example",
            ));
        }
        Ok(Agem {
            per_task,
            sample,
            memory: Vec::new(),
            rng: Rng::new(seed),
        })
    }

    /// The memory: (task, position) of every stored example.
    pub fn memory(&self) -> &[(usize, usize)] {
        &self.memory
    }
}

fn dot(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x * y).sum(Kind::Double).double_value(&[]))
        .sum()
}

impl Strategy for Agem {
    fn name(&self) -> &'static str {
        "agem"
    }

    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        let loss = task_loss(model, data, task, range);
        let value = loss.double_value(&[]);
        let mut g = model.gradients(&loss);
        let k = self.sample.min(self.memory.len());
        let picked: Vec<(usize, usize)> = self
            .rng
            .choose_distinct(self.memory.len(), k)
            .into_iter()
            .map(|i| self.memory[i])
            .collect();
        if let Some(ref_loss) = memory_loss(model, data, &picked) {
            let g_ref = model.gradients(&ref_loss);
            let (gr, rr) = (dot(&g, &g_ref), dot(&g_ref, &g_ref));
            if gr < 0.0 && rr > 0.0 {
                let c = gr / rr;
                g = g.iter().zip(&g_ref).map(|(a, b)| a - b * c).collect();
            }
        }
        model.apply(&g);
        Ok(value)
    }

    fn after_task(&mut self, _model: &mut Classifier, data: &View<'_>, task: usize) -> Result<()> {
        let n = data.examples(task, Part::Train);
        let k = self.per_task.min(n);
        let mut picked = self.rng.choose_distinct(n, k);
        picked.sort_unstable();
        self.memory.extend(picked.into_iter().map(|i| (task, i)));
        Ok(())
    }

    fn state(&self) -> StrategyState {
        StrategyState::meta(serde_json::json!({ "memory": self.memory, "rng": self.rng }))
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.memory = state.field("agem", "memory")?;
        self.rng = state.field("agem", "rng")?;
        Ok(())
    }
}

/// Meta-experience replay (MER, Riemer et al. 2019, their Algorithm 1 with the stream's
/// mini-batches as the incoming examples): for each incoming batch, `batches` times,
/// draw `replay` examples from a reservoir buffer, take one SGD step on each example of
/// (incoming batch ∪ draw) in random order, then pull the parameters back towards where
/// that inner batch started by the within-batch Reptile factor `beta`; after all of
/// them, interpolate from where the incoming batch started by the across-batch factor
/// `gamma`. The sequential single-example steps are what make Reptile's update favour
/// directions on which the examples' gradients agree (less interference). The incoming
/// batch then joins the buffer.
#[derive(Debug)]
pub struct Mer {
    buffer: super::Reservoir<(usize, usize)>,
    replay: usize,
    batches: usize,
    beta: f64,
    gamma: f64,
    rng: Rng,
}

/// The settings of [`Mer`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MerConfig {
    /// Reservoir buffer capacity (examples).
    pub capacity: usize,
    /// Examples drawn from the buffer for each inner batch.
    pub replay: usize,
    /// Inner batches per incoming batch (`s`).
    pub batches: usize,
    /// Within-batch Reptile factor (`β`).
    pub beta: f64,
    /// Across-batch Reptile factor (`γ`).
    pub gamma: f64,
}

impl Mer {
    /// MER with `config`, its draws seeded by `seed`.
    pub fn new(config: MerConfig, seed: u64) -> Result<Self> {
        if config.capacity == 0 {
            return Err(Error::config(
                "--buffer",
                0,
                "MER needs a buffer of at least one example",
            ));
        }
        if config.batches == 0 {
            return Err(Error::config("--mer-batches", 0, "must be at least 1"));
        }
        for (name, v) in [("--mer-beta", config.beta), ("--mer-gamma", config.gamma)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::config(name, v, "must be in (0, 1]"));
            }
        }
        Ok(Mer {
            buffer: super::Reservoir::new(config.capacity, seed),
            replay: config.replay,
            batches: config.batches,
            beta: config.beta,
            gamma: config.gamma,
            rng: Rng::for_item(seed, crate::data::rng::streams::MER_BUFFER, 0),
        })
    }
}

fn snapshot(model: &Classifier) -> Vec<Tensor> {
    model
        .params
        .tensors()
        .iter()
        .map(|p| p.detach().copy())
        .collect()
}

/// `θ ← anchor + factor (θ − anchor)`.
fn interpolate(model: &mut Classifier, anchor: &[Tensor], factor: f64) {
    tch::no_grad(|| {
        for (p, a) in model.params.tensors().iter().zip(anchor) {
            let mut p = (*p).shallow_clone();
            let moved = a + (&p - a) * factor;
            p.copy_(&moved);
        }
    });
}

impl Strategy for Mer {
    fn name(&self) -> &'static str {
        "mer"
    }

    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        let value = tch::no_grad(|| task_loss(model, data, task, range.clone())).double_value(&[]);
        let start = snapshot(model);
        for _ in 0..self.batches {
            let within = snapshot(model);
            let mut items: Vec<(usize, usize)> = range.clone().map(|i| (task, i)).collect();
            items.extend(self.buffer.sample(self.replay).into_iter().copied());
            self.rng.shuffle(&mut items);
            for item in &items {
                if let Some(loss) = memory_loss(model, data, std::slice::from_ref(item)) {
                    let v = model.sgd_step(&loss);
                    if !v.is_finite() {
                        return Ok(v);
                    }
                }
            }
            interpolate(model, &within, self.beta);
        }
        interpolate(model, &start, self.gamma);
        for i in range {
            self.buffer.offer((task, i));
        }
        Ok(value)
    }

    fn state(&self) -> StrategyState {
        StrategyState::meta(serde_json::json!({ "buffer": self.buffer, "rng": self.rng }))
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.buffer = state.field("mer", "buffer")?;
        self.rng = state.field("mer", "rng")?;
        Ok(())
    }
}
