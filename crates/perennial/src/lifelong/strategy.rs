//! Strategies that train a classifier: the [`Strategy`] interface, its [`Classifier`],
//! and [`ModelLearner`], which makes any strategy a [`Learner`] of the one continual
//! loop ([`super::run()`]), on a stream's inputs (an MLP over MNIST pixels) or on the
//! features of a frozen meta-learned encoder (a linear head over the Omniglot class
//! stream's embeddings).
//!
//! The strategies here (naive fine-tuning, joint training, experience replay) and in
//! [`super::strategies`] (EWC, A-GEM, MER) and [`super::lamaml`] (La-MAML) are each
//! written once and run on every stream.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::encoder::Encoding;
use super::run::{Learner, View};
use crate::data::stream::Part;
use crate::error::{Error, Result};
use crate::nn::{Backbone, Mlp, ParamSet};

/// An MLP classifier trained with plain SGD; GEM's network for MNIST streams is
/// `Classifier::new(&[784, 100, 100, 10], ..)`.
#[derive(Debug)]
pub struct Classifier {
    /// The network's shape.
    pub net: Mlp,
    /// Its parameters (leaf tensors that require gradients).
    pub params: ParamSet,
    /// The SGD learning rate.
    pub lr: f64,
}

impl Classifier {
    /// A fresh classifier with layer widths `sizes` (input first), initialised from
    /// `seed`.
    pub fn new(sizes: &[usize], lr: f64, seed: u64) -> Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(Error::config(
                "network",
                format!("{sizes:?}"),
                "needs at least an input and an output width, none zero",
            ));
        }
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::config("lr", lr, "must be positive"));
        }
        let net = Mlp {
            sizes: sizes.to_vec(),
            relu_last: false,
        };
        let (params, _) = net.init(seed, Device::Cpu);
        Ok(Classifier { net, params, lr })
    }

    /// A linear classifier `[dim] → [classes]` whose weights start at zero, as OML's
    /// online head does at meta-test time.
    pub fn linear_zero(dim: usize, classes: usize, lr: f64) -> Result<Self> {
        let mut c = Classifier::new(&[dim, classes], lr, 0)?;
        c.params = c.params.map(|_, t| t.zeros_like().set_requires_grad(true));
        Ok(c)
    }

    /// The logits of `x` (`[n, d]`); classes outside `mask` (when given) get −∞, so
    /// the model chooses among the task's classes (or the classes known) only.
    pub fn logits(&self, x: &Tensor, mask: Option<&[usize]>) -> Tensor {
        self.logits_with(&self.params, x, mask)
    }

    /// [`Classifier::logits`] under other parameters of the same shapes (fast weights).
    pub fn logits_with(&self, params: &ParamSet, x: &Tensor, mask: Option<&[usize]>) -> Tensor {
        let z = self.net.forward(params, None, x, true);
        match mask {
            None => z,
            Some(classes) => {
                let outputs = z.size()[1];
                let mut keep = vec![f32::NEG_INFINITY; outputs as usize];
                for &c in classes {
                    keep[c] = 0.0;
                }
                z + Tensor::from_slice(&keep)
            }
        }
    }

    /// Mean cross-entropy of a batch.
    pub fn loss(&self, x: &Tensor, y: &Tensor, mask: Option<&[usize]>) -> Tensor {
        self.loss_sum(x, y, mask) / y.size()[0] as f64
    }

    /// Summed cross-entropy of a batch.
    pub fn loss_sum(&self, x: &Tensor, y: &Tensor, mask: Option<&[usize]>) -> Tensor {
        self.loss_sum_with(&self.params, x, y, mask)
    }

    /// [`Classifier::loss_sum`] under other parameters of the same shapes.
    pub fn loss_sum_with(
        &self,
        params: &ParamSet,
        x: &Tensor,
        y: &Tensor,
        mask: Option<&[usize]>,
    ) -> Tensor {
        self.logits_with(params, x, mask)
            .cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Sum, -100, 0.0)
    }

    /// One SGD step on `loss`: `θ ← θ − lr ∇θ loss`. Returns the loss value.
    pub fn sgd_step(&mut self, loss: &Tensor) -> f64 {
        let value = loss.double_value(&[]);
        let grads = self.gradients(loss);
        self.apply(&grads);
        value
    }

    /// `∇θ loss`, one tensor per parameter, without touching `.grad`.
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        Tensor::run_backward(&[loss], &self.params.tensors(), false, false)
    }

    /// `θ ← θ − lr g`.
    pub fn apply(&mut self, grads: &[Tensor]) {
        tch::no_grad(|| {
            for (p, g) in self.params.tensors().iter().zip(grads) {
                let mut p = (*p).shallow_clone();
                let _ = p.g_sub_(&(g * self.lr));
            }
        });
    }

    /// Accuracy on a batch.
    pub fn accuracy(&self, x: &Tensor, y: &Tensor, mask: Option<&[usize]>) -> f64 {
        tch::no_grad(|| {
            self.logits(x, mask)
                .argmax(-1, false)
                .eq_tensor(y)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        })
    }
}

/// The mean cross-entropy of the training examples `range` of task `task`, under
/// that task's mask.
pub fn task_loss(model: &Classifier, data: &View<'_>, task: usize, range: Range<usize>) -> Tensor {
    let (x, y) = data.batch(task, Part::Train, range);
    model.loss(&x, &y, data.mask(task).as_deref())
}

/// The mean cross-entropy of stored training examples `(task, position)`, each under
/// its own task's mask (one forward pass per task); `None` for no example.
pub fn memory_loss(
    model: &Classifier,
    data: &View<'_>,
    items: &[(usize, usize)],
) -> Option<Tensor> {
    (!items.is_empty()).then(|| Groups::new(data, items).mean_loss(model, &model.params))
}

/// Training examples `(task, position)` gathered once as per-task groups of tensors
/// (with each task's mask), for losses under any parameters (fast weights).
pub struct Groups(Vec<(Tensor, Tensor, Option<Vec<usize>>)>, usize);

impl Groups {
    /// The examples `items`, grouped by task.
    pub fn new(data: &View<'_>, items: &[(usize, usize)]) -> Self {
        let mut items = items.to_vec();
        items.sort_unstable();
        let groups = items
            .chunk_by(|a, b| a.0 == b.0)
            .map(|group| {
                let t = group[0].0;
                let idx: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
                let (x, y) = data.gather(t, Part::Train, &idx);
                (x, y, data.mask(t))
            })
            .collect();
        Groups(groups, items.len())
    }

    /// The mean cross-entropy of the examples under `params` (at least one example).
    pub fn mean_loss(&self, model: &Classifier, params: &ParamSet) -> Tensor {
        let sums: Vec<Tensor> = self
            .0
            .iter()
            .map(|(x, y, mask)| model.loss_sum_with(params, x, y, mask.as_deref()))
            .collect();
        Tensor::stack(&sums, 0).sum(Kind::Float) / self.1 as f64
    }
}

/// A continual-learning strategy: how a model learns from a batch of the current task,
/// and what it does between tasks. The hooks have no-op defaults.
pub trait Strategy: std::fmt::Debug {
    /// The strategy's name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Called before the first batch of task `task`.
    fn before_task(
        &mut self,
        _model: &mut Classifier,
        _data: &View<'_>,
        _task: usize,
    ) -> Result<()> {
        Ok(())
    }

    /// Learns from one batch (`x`, `y`, the examples `range` of task `task`'s training
    /// part). Returns the training loss.
    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64>;

    /// Called after the last batch of task `task`, before the model is tested.
    fn after_task(
        &mut self,
        _model: &mut Classifier,
        _data: &View<'_>,
        _task: usize,
    ) -> Result<()> {
        Ok(())
    }

    /// What the strategy carries from one task to the next (buffers, penalties,
    /// generator states), for a checkpoint between tasks. Stateless strategies keep
    /// the default, an empty state.
    fn state(&self) -> StrategyState {
        StrategyState::default()
    }

    /// Restores a state [`Strategy::state`] returned, so that the rest of the stream
    /// runs exactly as it would have without the interruption.
    fn restore(&mut self, _state: StrategyState) -> Result<()> {
        Ok(())
    }
}

/// A strategy's state between tasks: named tensors and everything else as JSON.
#[derive(Debug, Default)]
pub struct StrategyState {
    /// Named tensors (EWC's anchors and Fisher diagonals).
    pub tensors: Vec<(String, Tensor)>,
    /// Everything else: buffers, counters, generator states.
    pub meta: serde_json::Value,
}

impl StrategyState {
    /// A state with JSON only.
    pub fn meta(meta: serde_json::Value) -> Self {
        StrategyState {
            tensors: Vec::new(),
            meta,
        }
    }

    /// Deserialises field `key` of the JSON part, with an error naming it.
    pub fn field<T: serde::de::DeserializeOwned>(&self, strategy: &str, key: &str) -> Result<T> {
        let v = self.meta.get(key).cloned().ok_or_else(|| {
            Error::config(
                "strategy state",
                format!("{strategy}.{key}"),
                "missing from the checkpoint",
            )
        })?;
        serde_json::from_value(v).map_err(|e| {
            Error::config(
                "strategy state",
                format!("{strategy}.{key}"),
                format!("unreadable in the checkpoint: {e}"),
            )
        })
    }
}

/// Naive fine-tuning: SGD on the current batch only (the lower bound).
#[derive(Debug, Default)]
pub struct Naive;

impl Strategy for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }

    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        Ok(model.sgd_step(&task_loss(model, data, task, range)))
    }
}

/// Experience replay (Chaudhry et al. 2019, "On tiny episodic memories"): every
/// training example offered to a reservoir buffer; each step learns from the current
/// batch together with an equal-sized batch drawn from the buffer.
#[derive(Debug)]
pub struct Replay {
    buffer: super::Reservoir<(usize, usize)>,
}

impl Replay {
    /// Replay with a buffer of `capacity` examples, its draws seeded by `seed`.
    pub fn new(capacity: usize, seed: u64) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::config(
                "--buffer",
                0,
                "experience replay needs a buffer of at least one example",
            ));
        }
        Ok(Replay {
            buffer: super::Reservoir::new(capacity, seed),
        })
    }

    /// The buffer.
    pub fn buffer(&self) -> &super::Reservoir<(usize, usize)> {
        &self.buffer
    }
}

impl Strategy for Replay {
    fn name(&self) -> &'static str {
        "er"
    }

    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        let n = range.len();
        let mut loss = task_loss(model, data, task, range.clone());
        // Replayed examples keep their own task's mask.
        let replay: Vec<(usize, usize)> = self.buffer.sample(n).into_iter().copied().collect();
        if let Some(r) = memory_loss(model, data, &replay) {
            loss = (loss + r) * 0.5;
        }
        let value = model.sgd_step(&loss);
        for i in range {
            self.buffer.offer((task, i));
        }
        Ok(value)
    }

    fn state(&self) -> StrategyState {
        StrategyState::meta(serde_json::json!({ "buffer": self.buffer }))
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        let buffer: super::Reservoir<(usize, usize)> = state.field("er", "buffer")?;
        if buffer.capacity() != self.buffer.capacity() {
            return Err(Error::config(
                "--buffer",
                self.buffer.capacity(),
                format!("the checkpoint's buffer holds {}", buffer.capacity()),
            ));
        }
        self.buffer = buffer;
        Ok(())
    }
}

/// Joint training, the upper bound of a one-pass stream: the same examples and the same
/// number of SGD steps as the other strategies, but drawn in one i.i.d. order over the
/// whole stream instead of task after task. Row `i` of its accuracy matrix is the model
/// after as many examples as the tasks `0..=i` hold, taken from every task at once, so
/// its last row is a model trained jointly on everything.
#[derive(Debug)]
pub struct Joint {
    seed: u64,
    order: Vec<(usize, usize)>,
    position: usize,
}

impl Joint {
    /// Joint training in an order drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Joint {
            seed,
            order: Vec::new(),
            position: 0,
        }
    }

    fn ensure_order(&mut self, data: &View<'_>) {
        if self.order.is_empty() {
            self.order = (0..data.len())
                .flat_map(|t| (0..data.examples(t, Part::Train)).map(move |i| (t, i)))
                .collect();
            crate::data::Rng::for_item(self.seed, crate::data::rng::streams::JOINT_ORDER, 0)
                .shuffle(&mut self.order);
        }
    }
}

impl Strategy for Joint {
    fn name(&self) -> &'static str {
        "joint"
    }

    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        _task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        self.ensure_order(data);
        let end = (self.position + range.len()).min(self.order.len());
        let items = &self.order[self.position..end];
        self.position = end;
        match memory_loss(model, data, items) {
            Some(loss) => Ok(model.sgd_step(&loss)),
            None => Ok(0.0),
        }
    }

    fn state(&self) -> StrategyState {
        StrategyState::meta(serde_json::json!({ "position": self.position }))
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.position = state.field("joint", "position")?;
        Ok(())
    }
}

/// Any [`Strategy`] as a [`Learner`] of the continual loop: the classifier it trains,
/// on the stream's inputs or on the features of a frozen encoder.
#[derive(Debug)]
pub struct ModelLearner {
    name: &'static str,
    encoding: Option<Encoding>,
    model: Classifier,
    strategy: Box<dyn Strategy>,
}

impl ModelLearner {
    /// `strategy` training `model` on the stream's inputs.
    pub fn new(model: Classifier, strategy: Box<dyn Strategy>) -> Self {
        ModelLearner {
            name: strategy.name(),
            encoding: None,
            model,
            strategy,
        }
    }

    /// `strategy` training `model` on the features of `encoding` (which stays frozen).
    pub fn on_features(encoding: Encoding, model: Classifier, strategy: Box<dyn Strategy>) -> Self {
        ModelLearner {
            encoding: Some(encoding),
            ..ModelLearner::new(model, strategy)
        }
    }

    /// The same learner under another name (`oml`: naive SGD on an OML
    /// representation, OML's meta-test learner).
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The classifier.
    pub fn model(&self) -> &Classifier {
        &self.model
    }
}

impl Learner for ModelLearner {
    fn name(&self) -> &'static str {
        self.name
    }

    fn encodes(&self) -> bool {
        self.encoding.is_some()
    }

    fn encode(&self, x: &Tensor) -> Tensor {
        match &self.encoding {
            Some(e) => tch::no_grad(|| e.features(x)),
            None => x.shallow_clone(),
        }
    }

    fn before_task(&mut self, data: &View<'_>, task: usize) -> Result<()> {
        self.strategy.before_task(&mut self.model, data, task)
    }

    fn observe(&mut self, data: &View<'_>, task: usize, range: Range<usize>) -> Result<f64> {
        self.strategy.observe(&mut self.model, data, task, range)
    }

    fn after_task(&mut self, data: &View<'_>, task: usize) -> Result<()> {
        self.strategy.after_task(&mut self.model, data, task)
    }

    fn scores(&self, features: &Tensor, mask: Option<&[usize]>) -> Tensor {
        tch::no_grad(|| self.model.logits(features, mask))
    }

    fn state(&self) -> StrategyState {
        let mut state = self.strategy.state();
        let mut tensors: Vec<(String, Tensor)> = self.model.params.named("model.");
        tensors.extend(
            state
                .tensors
                .drain(..)
                .map(|(n, t)| (format!("strategy.{n}"), t)),
        );
        StrategyState {
            tensors,
            meta: state.meta,
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.model.params.load_named(&state.tensors, "model.")?;
        let tensors = state
            .tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix("strategy.")
                    .map(|n| (n.to_string(), t.shallow_clone()))
            })
            .collect();
        self.strategy.restore(StrategyState {
            tensors,
            meta: state.meta,
        })
    }
}
