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
        self.logits_with(&self.params, x, mask)
    }

    /// [`Classifier::logits`] under other parameters of the same shapes (fast weights).
    pub fn logits_with(&self, params: &ParamSet, x: &Tensor, mask: Option<&[u8]>) -> Tensor {
        let z = self.net.forward(params, None, x, true);
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
        self.loss_sum_with(&self.params, x, y, mask)
    }

    /// [`Classifier::loss_sum`] under other parameters of the same shapes.
    pub fn loss_sum_with(
        &self,
        params: &ParamSet,
        x: &Tensor,
        y: &Tensor,
        mask: Option<&[u8]>,
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
    (!items.is_empty()).then(|| Groups::new(stream, items).mean_loss(model, &model.params))
}

/// Training examples `(task, position)` gathered once as per-task groups of tensors
/// (with each task's mask), for losses under any parameters (fast weights).
pub struct Groups(Vec<(Tensor, Tensor, Option<Vec<u8>>)>, usize);

impl Groups {
    /// The examples `items`, grouped by task.
    pub fn new(stream: &Stream, items: &[(usize, usize)]) -> Self {
        let mut items = items.to_vec();
        items.sort_unstable();
        let groups = items
            .chunk_by(|a, b| a.0 == b.0)
            .map(|group| {
                let t = group[0].0;
                let idx: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
                let (x, y) = stream.gather(t, Part::Train, &idx);
                let (x, y) = tensors(&x, &y);
                (x, y, stream.mask(t).map(<[u8]>::to_vec))
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

    fn ensure_order(&mut self, stream: &Stream) {
        if self.order.is_empty() {
            self.order = (0..stream.len())
                .flat_map(|t| (0..stream.examples(t, Part::Train)).map(move |i| (t, i)))
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
        stream: &Stream,
        _task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        self.ensure_order(stream);
        let end = (self.position + range.len()).min(self.order.len());
        let items = &self.order[self.position..end];
        self.position = end;
        match memory_loss(model, stream, items) {
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

/// Settings of a run over a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSettings {
    /// Training batch size (GEM: 10).
    pub batch: usize,
    /// Test examples per task used for the accuracy matrix (`None`: all).
    pub test_examples: Option<usize>,
}

/// The numbers of training examples after which [`run_stream`] measures each task's
/// accuracy while learning it (learning speed); the last point is the whole task.
pub const SPEED_POINTS: [usize; 3] = [0, 1, 5];

/// One learning-speed measurement: the accuracy on a task's test examples after
/// `seen` of its training examples, the first batch boundary at or past `asked`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpeedPoint {
    /// The number of examples asked for (0, 1, 5, or the task's size).
    pub asked: usize,
    /// The number of examples actually seen (a whole number of batches).
    pub seen: usize,
    /// Accuracy on the task's test examples, in `[0, 1]`.
    pub accuracy: f64,
}

/// Everything a run over a stream has measured so far; the state [`run_stream`]
/// resumes from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The untrained model's accuracy on every task (for forward transfer).
    pub baseline: Vec<f64>,
    /// Row `i`: accuracy on every task after training on tasks `0..=i`.
    pub rows: Vec<Vec<f64>>,
    /// For every task learnt, its accuracy after 0, 1, 5 and all of its examples.
    pub speed: Vec<Vec<SpeedPoint>>,
    /// Seconds spent in training and testing, over all sessions of the run.
    pub wall_s: f64,
}

impl RunRecord {
    /// The tasks learnt so far.
    pub fn tasks_done(&self) -> usize {
        self.rows.len()
    }

    /// The accuracy matrix of a finished run, with its baseline.
    pub fn matrix(&self) -> Result<AccuracyMatrix> {
        AccuracyMatrix::new(self.rows.clone(), Some(self.baseline.clone()))
    }

    /// The mean learning-speed accuracy at each point (0, 1, 5, all examples) over
    /// the tasks learnt.
    pub fn mean_speed(&self) -> Vec<f64> {
        mean_speed(&self.speed)
    }
}

/// The mean accuracy at each learning-speed point (0, 1, 5, all examples) over tasks.
pub fn mean_speed(speed: &[Vec<SpeedPoint>]) -> Vec<f64> {
    let n = speed.len().max(1) as f64;
    (0..SPEED_POINTS.len() + 1)
        .map(|k| {
            speed
                .iter()
                .filter_map(|s| s.get(k))
                .map(|p| p.accuracy)
                .sum::<f64>()
                / n
        })
        .collect()
}

/// Runs `strategy` over `stream` with `model`, from the start (`record` empty) or
/// from where a checkpointed run stopped (`record`, with the model and the strategy
/// restored to their state after its last task), and returns the finished record.
///
/// After the untrained baseline and after every task, `task_done` gets the record,
/// the model and the strategy (to write a checkpoint); `progress` is called after every
/// batch with (task, batches done in it, batches in it).
pub fn run_stream(
    strategy: &mut dyn Strategy,
    model: &mut Classifier,
    stream: &Stream,
    settings: &RunSettings,
    mut record: RunRecord,
    task_done: &mut dyn FnMut(&RunRecord, &Classifier, &dyn Strategy) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<RunRecord> {
    if settings.batch == 0 {
        return Err(Error::config("--batch", 0, "must be at least 1"));
    }
    let tasks = stream.len();
    if record.rows.len() > tasks
        || record.speed.len() != record.rows.len()
        || (!record.rows.is_empty() && record.baseline.len() != tasks)
    {
        return Err(Error::config(
            "run record",
            format!("{} rows", record.rows.len()),
            format!("does not fit a stream of {tasks} tasks"),
        ));
    }
    let test_one = |model: &Classifier, j: usize| -> f64 {
        let n = stream.examples(j, Part::Test);
        let n = settings.test_examples.map_or(n, |k| k.min(n));
        let (x, y) = stream.batch(j, Part::Test, 0..n);
        let (x, y) = tensors(&x, &y);
        model.accuracy(&x, &y, stream.mask(j))
    };
    let test_all =
        |model: &Classifier| -> Vec<f64> { (0..tasks).map(|j| test_one(model, j)).collect() };
    let mut clock = std::time::Instant::now();
    let mut tick = |record: &mut RunRecord| {
        record.wall_s += clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
    };
    if record.rows.is_empty() {
        record.baseline = test_all(model);
        tick(&mut record);
        task_done(&record, model, strategy)?;
    }
    for t in record.rows.len()..tasks {
        strategy.before_task(model, stream, t)?;
        let n = stream.examples(t, Part::Train);
        let batches = n.div_ceil(settings.batch);
        let before = match t {
            0 => record.baseline[t],
            _ => record.rows[t - 1][t],
        };
        let mut speed = vec![SpeedPoint {
            asked: 0,
            seen: 0,
            accuracy: before,
        }];
        for b in 0..batches {
            let range = b * settings.batch..((b + 1) * settings.batch).min(n);
            let seen = range.end;
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
            // Learning speed: the first batch boundary at or past each point.
            let due: Vec<usize> = SPEED_POINTS[1..]
                .iter()
                .copied()
                .chain([n])
                .filter(|&k| seen >= k.min(n) && !speed.iter().any(|p| p.asked == k))
                .collect();
            if !due.is_empty() {
                let accuracy = test_one(model, t);
                speed.extend(due.into_iter().map(|asked| SpeedPoint {
                    asked,
                    seen,
                    accuracy,
                }));
            }
            progress(t, b + 1, batches);
        }
        strategy.after_task(model, stream, t)?;
        record.rows.push(test_all(model));
        record.speed.push(speed);
        tick(&mut record);
        task_done(&record, model, strategy)?;
    }
    Ok(record)
}
