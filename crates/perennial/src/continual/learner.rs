//! The network a continual strategy trains, the strategy interface, and the loop that
//! runs a strategy over a stream and fills the accuracy matrix.
//!
//! The loop follows GEM's protocol: tasks arrive in order, each task's training
//! examples are seen once, in mini-batches, and after each task the model is tested on
//! every task of the stream (seen or not), which gives row `i` of the accuracy matrix.
//! The untrained model's accuracies are the baseline for forward transfer.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::metrics::AccuracyMatrix;
use crate::data::stream::{Part, Stream};
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

    /// The logits of `x` (`[n, 784]`); classes outside `mask` (when given) get −∞, so
    /// the model chooses among the task's classes only.
    pub fn logits(&self, x: &Tensor, mask: Option<&[u8]>) -> Tensor {
        let z = self.net.forward(&self.params, None, x, true);
        match mask {
            None => z,
            Some(classes) => {
                let outputs = z.size()[1];
                let mut keep = vec![f32::NEG_INFINITY; outputs as usize];
                for &c in classes {
                    keep[c as usize] = 0.0;
                }
                z + Tensor::from_slice(&keep)
            }
        }
    }

    /// Mean cross-entropy of a batch.
    pub fn loss(&self, x: &Tensor, y: &Tensor, mask: Option<&[u8]>) -> Tensor {
        self.loss_sum(x, y, mask) / y.size()[0] as f64
    }

    /// Summed cross-entropy of a batch.
    pub fn loss_sum(&self, x: &Tensor, y: &Tensor, mask: Option<&[u8]>) -> Tensor {
        self.logits(x, mask)
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
    pub fn accuracy(&self, x: &Tensor, y: &Tensor, mask: Option<&[u8]>) -> f64 {
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

/// A batch as tensors: `x` `[n, 784]` f32 and `y` `[n]` i64.
pub fn tensors(x: &[f32], y: &[i64]) -> (Tensor, Tensor) {
    let n = y.len() as i64;
    (Tensor::from_slice(x).view([n, -1]), Tensor::from_slice(y))
}

/// The mean cross-entropy of the training examples `range` of task `task`, under
/// that task's mask.
pub fn task_loss(model: &Classifier, stream: &Stream, task: usize, range: Range<usize>) -> Tensor {
    let (x, y) = stream.batch(task, Part::Train, range);
    let (x, y) = tensors(&x, &y);
    model.loss(&x, &y, stream.mask(task))
}

/// The mean cross-entropy of stored training examples `(task, position)`, each under
/// its own task's mask (one forward pass per task); `None` for no example.
pub fn memory_loss(
    model: &Classifier,
    stream: &Stream,
    items: &[(usize, usize)],
) -> Option<Tensor> {
    if items.is_empty() {
        return None;
    }
    let mut items = items.to_vec();
    items.sort_unstable();
    let mut sums = Vec::new();
    for group in items.chunk_by(|a, b| a.0 == b.0) {
        let t = group[0].0;
        let idx: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
        let (x, y) = stream.gather(t, Part::Train, &idx);
        let (x, y) = tensors(&x, &y);
        sums.push(model.loss_sum(&x, &y, stream.mask(t)));
    }
    Some(Tensor::stack(&sums, 0).sum(Kind::Float) / items.len() as f64)
}

/// A continual-learning strategy: how a model learns from a batch of the current task,
/// and what it does between tasks. The hooks have no-op defaults.
pub trait Strategy {
    /// The strategy's name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Called before the first batch of task `task`.
    fn before_task(
        &mut self,
        _model: &mut Classifier,
        _stream: &Stream,
        _task: usize,
    ) -> Result<()> {
        Ok(())
    }

    /// Learns from one batch (`x`, `y`, the examples `range` of task `task`'s training
    /// part). Returns the training loss.
    fn observe(
        &mut self,
        model: &mut Classifier,
        stream: &Stream,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64>;

    /// Called after the last batch of task `task`, before the model is tested.
    fn after_task(
        &mut self,
        _model: &mut Classifier,
        _stream: &Stream,
        _task: usize,
    ) -> Result<()> {
        Ok(())
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
        stream: &Stream,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        Ok(model.sgd_step(&task_loss(model, stream, task, range)))
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
        stream: &Stream,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        let n = range.len();
        let mut loss = task_loss(model, stream, task, range.clone());
        // Replayed examples keep their own task's mask.
        let replay: Vec<(usize, usize)> = self.buffer.sample(n).into_iter().copied().collect();
        if let Some(r) = memory_loss(model, stream, &replay) {
            loss = (loss + r) * 0.5;
        }
        let value = model.sgd_step(&loss);
        for i in range {
            self.buffer.offer((task, i));
        }
        Ok(value)
    }
}

/// Settings of a run over a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSettings {
    /// Training batch size (GEM: 10).
    pub batch: usize,
    /// Test examples per task used for the accuracy matrix (`None`: all).
    pub test_examples: Option<usize>,
}

/// Runs `strategy` over `stream` with `model` and returns the accuracy matrix, with
/// the untrained model's accuracies as its baseline. `progress` is called after every
/// batch with (task, batches done in it, batches in it).
pub fn run_stream(
    strategy: &mut dyn Strategy,
    model: &mut Classifier,
    stream: &Stream,
    settings: &RunSettings,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<AccuracyMatrix> {
    if settings.batch == 0 {
        return Err(Error::config("--batch", 0, "must be at least 1"));
    }
    let test_all = |model: &Classifier| -> Vec<f64> {
        (0..stream.len())
            .map(|j| {
                let n = stream.examples(j, Part::Test);
                let n = settings.test_examples.map_or(n, |k| k.min(n));
                let (x, y) = stream.batch(j, Part::Test, 0..n);
                let (x, y) = tensors(&x, &y);
                model.accuracy(&x, &y, stream.mask(j))
            })
            .collect()
    };
    let baseline = test_all(model);
    let mut rows = Vec::with_capacity(stream.len());
    for t in 0..stream.len() {
        strategy.before_task(model, stream, t)?;
        let n = stream.examples(t, Part::Train);
        let batches = n.div_ceil(settings.batch);
        for b in 0..batches {
            let range = b * settings.batch..((b + 1) * settings.batch).min(n);
            let loss = strategy.observe(model, stream, t, range)?;
            if !loss.is_finite() {
                return Err(Error::config(
                    "training",
                    loss,
                    format!(
                        "the loss diverged on task {t}, batch {b}; lower --lr \
                         (or the strategy's strength, e.g. --ewc-lambda)"
                    ),
                ));
            }
            progress(t, b + 1, batches);
        }
        strategy.after_task(model, stream, t)?;
        rows.push(test_all(model));
    }
    AccuracyMatrix::new(rows, Some(baseline))
}
