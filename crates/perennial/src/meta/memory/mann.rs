//! Memory-augmented neural networks (Santoro, Bartunov, Botvinick, Wierstra &
//! Lillicrap, ICML 2016): an LSTM controller with an external memory read by content
//! and written by least-recently-used access (LRUA).
//!
//! A task is read as one labelled sequence: the images of its support and query sets in
//! a shuffled order, down-sampled to 20×20, each step showing the image together with
//! the one-hot label of the *previous* step, so the label of an image arrives one step
//! after the image and the network must bind the two in memory to classify the next
//! image of the same class. The loss is the cross-entropy of every step.
//!
//! At step `t` the controller's state `h_t` gives one key `k_t = tanh(W_k h_t)` and one
//! write gate `σ(α_t)` per read head. Writing (LRUA): the write weights are
//! `w^w_t = σ(α_t) w^r_{t-1} + (1 − σ(α_t)) w^lu_{t-1}`, where `w^lu_{t-1}` is one on
//! the `heads` least-used slots (the paper's n smallest usages, n the number of reads)
//! and the least-used slot of all is erased first: `M_t = M_{t-1} · (1 − e_lu) + w^wᵀ k_t`. Reading: the
//! read weights are the softmax of the cosine similarities of `k_t` to the rows of
//! `M_t`, the read vector `r_t = w^r_t M_t`, and usage decays by `γ`:
//! `w^u_t = γ w^u_{t-1} + w^r_t + w^w_t`. The output is `W_o [h_t; r_t]`, and `r_t`
//! joins the next step's controller input. With no memory (`memory_slots = 0`) the same
//! network is the LSTM baseline of the paper's Table 1.
//!
//! The sequence order of a task is a pure function of its pixels and the run's seed, so
//! training, evaluation and resumption see the same sequences.

use perennial_data::Rng;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::meta::{adapted_tensor, Adapted, MetaLearner, Parts, PartsMut, StepReport};
use crate::nn::{lstm_params, lstm_step, uniform, ParamSet};
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{Batch, Task};

/// A memory-augmented network's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MannConfig {
    /// Classes of an episode (the width of the label input and of the output).
    pub classes: usize,
    /// Side of the square images the network is given (they are resized to
    /// `image_size` inside).
    pub input_size: usize,
    /// Side the images are down-sampled to (bilinear with antialiasing), 20 in the paper.
    pub image_size: usize,
    /// LSTM controller units.
    pub hidden: usize,
    /// Memory slots (0: no memory, the LSTM baseline).
    pub memory_slots: usize,
    /// Width of a memory slot.
    pub memory_width: usize,
    /// Read heads (each with its own key and write gate).
    pub read_heads: usize,
    /// Usage decay γ.
    pub gamma: f64,
    /// Clip the gradient's global norm to this before each update (0 = no clipping).
    pub clip_norm: f64,
    /// The optimiser.
    pub optimizer: AdamConfig,
}

impl Default for MannConfig {
    fn default() -> Self {
        MannConfig {
            classes: 5,
            input_size: 28,
            image_size: 20,
            hidden: 200,
            memory_slots: 128,
            memory_width: 40,
            read_heads: 4,
            gamma: 0.95,
            clip_norm: 10.0,
            optimizer: AdamConfig {
                step_every: 0,
                ..AdamConfig::default()
            },
        }
    }
}

impl MannConfig {
    /// Whether the network has an external memory (else it is the LSTM baseline).
    pub fn has_memory(&self) -> bool {
        self.memory_slots > 0
    }

    /// Refuses sizes the network cannot have and a bad optimiser.
    pub fn validate(&self) -> Result<()> {
        if self.classes < 2 {
            return Err(Error::config("--ways", self.classes, "at least 2 classes"));
        }
        if self.input_size == 0 || self.image_size == 0 || self.hidden == 0 {
            return Err(Error::config(
                "mann",
                format!("{}/{}/{}", self.input_size, self.image_size, self.hidden),
                "image sizes and controller units must be positive",
            ));
        }
        if self.has_memory() {
            if self.memory_width == 0 || self.read_heads == 0 {
                return Err(Error::config(
                    "--memory-width/--read-heads",
                    format!("{}/{}", self.memory_width, self.read_heads),
                    "must be positive",
                ));
            }
            if self.read_heads > self.memory_slots {
                return Err(Error::config(
                    "--read-heads",
                    self.read_heads,
                    format!(
                        "each head writes to its own least-used slot: at most --memory-slots ({})",
                        self.memory_slots
                    ),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.gamma) {
            return Err(Error::config("--gamma", self.gamma, "must lie in [0, 1]"));
        }
        if !(self.clip_norm >= 0.0 && self.clip_norm.is_finite()) {
            return Err(Error::config(
                "--clip-norm",
                self.clip_norm,
                "must be 0 (off) or positive",
            ));
        }
        self.optimizer.validate()
    }

    fn pixels(&self) -> i64 {
        (self.image_size * self.image_size) as i64
    }

    /// Width of the read vector joining the controller input and the output.
    fn read_width(&self) -> i64 {
        if self.has_memory() {
            (self.read_heads * self.memory_width) as i64
        } else {
            0
        }
    }
}

/// The memory of a batch of sequences between two steps.
#[derive(Debug)]
pub(crate) struct MemoryState {
    /// Memory `[b, slots, width]`.
    pub mem: Tensor,
    /// Usage `[b, slots]`.
    pub usage: Tensor,
    /// The last read weights `[b, heads, slots]`.
    pub read_weights: Tensor,
    /// The last read vectors, flattened `[b, heads · width]`.
    pub read: Tensor,
}

/// One LRUA step of a batch: write `keys` `[b, heads, width]` with write gates
/// `gates` (σ(α), `[b, heads, 1]`), then read with the same keys; usage decays by
/// `gamma`. The paper's equations, as in the module documentation.
pub(crate) fn lrua_step(s: &MemoryState, keys: &Tensor, gates: &Tensor, gamma: f64) -> MemoryState {
    let (b, heads) = (keys.size()[0], keys.size()[1]);
    let slots = s.mem.size()[1];
    let opts = (s.mem.kind(), s.mem.device());
    // The `heads` least-used slots of the previous usage, the least used first.
    let least = s.usage.topk(heads, 1, false, true).1;
    let lu = Tensor::zeros([b, slots], opts).scatter_value(1, &least, 1.0);
    let write: Tensor = gates * &s.read_weights + (1.0 - gates) * lu.unsqueeze(1);
    let erase = Tensor::zeros([b, slots], opts).scatter_value(1, &least.narrow(1, 0, 1), 1.0);
    let keep: Tensor = 1.0 - &erase;
    let mem = &s.mem * keep.unsqueeze(2) + write.transpose(1, 2).matmul(keys);
    let unit = |t: &Tensor| {
        let n = t
            .norm_scalaropt_dim(2.0, [-1].as_slice(), true)
            .clamp_min(1e-8);
        t / n
    };
    let sim = unit(keys).matmul(&unit(&mem).transpose(1, 2));
    let read_weights = sim.softmax(2, sim.kind());
    let usage = &s.usage * gamma
        + read_weights.sum_dim_intlist(1, false, None)
        + write.sum_dim_intlist(1, false, None);
    let read = read_weights.matmul(&mem).reshape([b, -1]);
    MemoryState {
        mem,
        usage,
        read_weights,
        read,
    }
}

/// A memory-augmented network (or, with no memory, its LSTM baseline) and Adam.
#[derive(Debug)]
pub struct Mann {
    config: MannConfig,
    params: ParamSet,
    adam: Adam,
}

/// The controller's state, the memory's, and the label of the last step.
#[derive(Debug)]
struct SeqState {
    h: Tensor,
    c: Tensor,
    memory: Option<MemoryState>,
}

impl Mann {
    /// A freshly initialised network (deterministic for `seed`; PyTorch's
    /// initialisation of `LSTMCell` and `Linear`).
    pub fn new(config: MannConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut p = ParamSet::new();
        let h = config.hidden as i64;
        let input = config.pixels() + config.classes as i64 + config.read_width();
        lstm_params(&mut p, &mut rng, "ctrl", input, h, device);
        let mut linear = |name: &str, fan_in: i64, out: i64| {
            let b = 1.0 / (fan_in as f64).sqrt();
            p.push(
                format!("{name}.weight"),
                uniform(&mut rng, &[out, fan_in], b, device),
            );
            p.push(format!("{name}.bias"), uniform(&mut rng, &[out], b, device));
        };
        if config.has_memory() {
            linear("key", h, config.read_width());
            linear("gate", h, config.read_heads as i64);
        }
        linear("out", h + config.read_width(), config.classes as i64);
        let params = p.requires_grad();
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(Mann {
            config,
            params,
            adam,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MannConfig {
        &self.config
    }

    fn linear(&self, name: &str, x: &Tensor) -> Tensor {
        x.linear(
            self.params.get(&format!("{name}.weight")),
            Some(self.params.get(&format!("{name}.bias"))),
        )
    }

    /// Images `[n, 1, s, s]` as the network's input rows `[n, image_size²]`.
    fn pixels(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let side = self.config.image_size as i64;
        let x = if x.size()[2..] == [side, side] {
            x.shallow_clone()
        } else {
            x.internal_upsample_bilinear2d_aa([side, side], false, None, None)
        };
        x.reshape([n, side * side])
    }

    /// The empty state of `b` sequences.
    fn start(&self, b: i64, device: Device) -> SeqState {
        let h = self.config.hidden as i64;
        let opts = (Kind::Float, device);
        let memory = self.config.has_memory().then(|| {
            let (slots, width) = (
                self.config.memory_slots as i64,
                self.config.memory_width as i64,
            );
            let heads = self.config.read_heads as i64;
            MemoryState {
                // Santoro et al. start from a small constant memory: every slot is read
                // alike until something is written.
                mem: Tensor::full([b, slots, width], 1e-6, opts),
                usage: Tensor::zeros([b, slots], opts),
                read_weights: Tensor::zeros([b, heads, slots], opts),
                read: Tensor::zeros([b, heads * width], opts),
            }
        });
        SeqState {
            h: Tensor::zeros([b, h], opts),
            c: Tensor::zeros([b, h], opts),
            memory,
        }
    }

    /// One step of `b` sequences from `s`: pixels `[b, p]` and the previous labels'
    /// one-hot rows `[b, classes]`; the logits `[b, classes]` and the next state.
    fn step(&self, s: &SeqState, pixels: &Tensor, prev: &Tensor) -> (Tensor, SeqState) {
        let p = &self.params;
        let input = match &s.memory {
            Some(m) => Tensor::cat(&[pixels, prev, &m.read], 1),
            None => Tensor::cat(&[pixels, prev], 1),
        };
        let (h, c) = lstm_step(p, "ctrl", &input, &s.h, &s.c);
        let (logits, memory) = match &s.memory {
            Some(m) => {
                let b = h.size()[0];
                let heads = self.config.read_heads as i64;
                let keys = self.linear("key", &h).tanh().reshape([b, heads, -1]);
                let gates = self.linear("gate", &h).sigmoid().unsqueeze(2);
                let next = lrua_step(m, &keys, &gates, self.config.gamma);
                let logits = self.linear("out", &Tensor::cat(&[&h, &next.read], 1));
                (logits, Some(next))
            }
            None => (self.linear("out", &h), None),
        };
        (logits, SeqState { h, c, memory })
    }

    /// The order in which a task's images (support then query) are shown: a
    /// permutation that is a pure function of the images' pixels (not of the run's
    /// seed, so that a learner loaded from a checkpoint reads a task alike).
    fn order(&self, x: &Tensor) -> Vec<i64> {
        let n = x.size()[0];
        let flat: Vec<f32> = x
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .reshape([-1])
            .try_into()
            .unwrap_or_default();
        // FNV-1a over the pixel bits.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for v in flat.iter().step_by(7) {
            hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
        let mut idx: Vec<i64> = (0..n).collect();
        Rng::new(hash).shuffle(&mut idx);
        idx
    }

    /// A task as one sequence: pixels `[t, p]` and labels `[t]`, in [`Mann::order`].
    fn sequence(&self, task: &Task) -> (Tensor, Tensor) {
        let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
        let y = Tensor::cat(&[&task.support.y, &task.query.y], 0);
        let order = Tensor::from_slice(&self.order(&x)).to_device(x.device());
        (
            self.pixels(&x.index_select(0, &order)),
            y.index_select(0, &order),
        )
    }

    /// Runs sequences of pixels `[b, t, p]` and labels `[b, t]`: the logits of every
    /// step `[b, t, classes]` and the final state.
    fn run(&self, x: &Tensor, y: &Tensor) -> (Tensor, SeqState) {
        let (b, t) = (y.size()[0], y.size()[1]);
        let classes = self.config.classes as i64;
        let onehot = y.one_hot(classes).to_kind(x.kind());
        let mut prev = Tensor::zeros([b, classes], (x.kind(), x.device()));
        let mut s = self.start(b, x.device());
        let mut out = Vec::with_capacity(t as usize);
        for i in 0..t {
            let (logits, next) = self.step(&s, &x.select(1, i), &prev);
            out.push(logits);
            s = next;
            prev = onehot.select(1, i);
        }
        (Tensor::stack(&out, 1), s)
    }

    /// Refuses tasks whose labels the network cannot take.
    fn check(&self, batch: &Batch) {
        assert!(
            batch.ways <= self.config.classes,
            "a {}-way task for a {}-class memory-augmented network",
            batch.ways,
            self.config.classes
        );
    }
}

/// Which presentation of its class each label of a sequence is (0 for the first).
pub fn instance_numbers(labels: &[i64]) -> Vec<usize> {
    let mut seen = std::collections::HashMap::new();
    labels
        .iter()
        .map(|l| {
            let n = seen.entry(*l).or_insert(0usize);
            *n += 1;
            *n - 1
        })
        .collect()
}

/// A memory-augmented network after reading a support sequence.
struct MannAdapted<'a> {
    net: &'a Mann,
    state: SeqState,
    /// The one-hot label of the support sequence's last step `[1, classes]`.
    last: Tensor,
}

impl Adapted for MannAdapted<'_> {
    /// Every input is read as the step after the support sequence (the label input is
    /// the support's last label), independently of the others.
    fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let n = x.size()[0];
            let expand = |t: &Tensor| t.expand([n, -1], false).contiguous();
            let expand3 = |t: &Tensor| t.expand([n, -1, -1], false).contiguous();
            let s = SeqState {
                h: expand(&self.state.h),
                c: expand(&self.state.c),
                memory: self.state.memory.as_ref().map(|m| MemoryState {
                    mem: expand3(&m.mem),
                    usage: expand(&m.usage),
                    read_weights: expand3(&m.read_weights),
                    read: expand(&m.read),
                }),
            };
            self.net
                .step(&s, &self.net.pixels(x), &expand(&self.last))
                .0
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        let mut out = vec![
            ("h".into(), cpu(&self.state.h)),
            ("c".into(), cpu(&self.state.c)),
            ("last".into(), cpu(&self.last)),
        ];
        if let Some(m) = &self.state.memory {
            out.push(("memory".into(), cpu(&m.mem)));
            out.push(("usage".into(), cpu(&m.usage)));
            out.push(("read_weights".into(), cpu(&m.read_weights)));
            out.push(("read".into(), cpu(&m.read)));
        }
        out
    }
}

impl MetaLearner for Mann {
    fn name(&self) -> &'static str {
        "mann"
    }

    /// Reads the support set as a sequence (in its [`Mann::order`]).
    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        self.check(support);
        let order = Tensor::from_slice(&self.order(&support.x)).to_device(support.x.device());
        let x = self.pixels(&support.x.index_select(0, &order)).unsqueeze(0);
        let y = support.y.index_select(0, &order);
        let state = tch::no_grad(|| self.run(&x, &y.unsqueeze(0)).1);
        let last = y
            .narrow(0, y.size()[0] - 1, 1)
            .one_hot(self.config.classes as i64)
            .to_kind(x.kind());
        Box::new(MannAdapted {
            net: self,
            state,
            last,
        })
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        let device = self.params.tensors()[0].device();
        let get = |name| adapted_tensor(named, name, device);
        let memory = if self.config.has_memory() {
            Some(MemoryState {
                mem: get("memory")?,
                usage: get("usage")?,
                read_weights: get("read_weights")?,
                read: get("read")?,
            })
        } else {
            None
        };
        let (h, c, last) = (get("h")?, get("c")?, get("last")?);
        let hidden = self.config.hidden as i64;
        if h.size() != [1, hidden] || c.size() != [1, hidden] {
            return Err(Error::Parameters {
                name: "h".into(),
                reason: format!("{:?}: expected [1, {hidden}]", h.size()),
            });
        }
        Ok(Box::new(MannAdapted {
            net: self,
            state: SeqState { h, c, memory },
            last,
        }))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        if tasks.is_empty() {
            return StepReport::default();
        }
        for t in tasks {
            self.check(&t.support);
        }
        let (xs, ys): (Vec<Tensor>, Vec<Tensor>) = tasks.iter().map(|t| self.sequence(t)).unzip();
        let (x, y) = (Tensor::stack(&xs, 0), Tensor::stack(&ys, 0));
        let logits = self.run(&x, &y).0;
        let classes = self.config.classes as i64;
        let loss = logits
            .reshape([-1, classes])
            .cross_entropy_for_logits(&y.reshape([-1]));
        let report = StepReport {
            loss: loss.double_value(&[]),
            accuracy: Some(crate::tensors::accuracy(&logits, &y)),
        };
        loss.backward();
        if self.config.clip_norm > 0.0 {
            clip_grad_norm(&self.params, self.config.clip_norm);
        }
        self.adam.step(&self.params);
        report
    }

    fn sequence_record(&self, task: &Task) -> Option<Vec<(usize, bool)>> {
        let (x, y) = self.sequence(task);
        let logits = tch::no_grad(|| self.run(&x.unsqueeze(0), &y.unsqueeze(0)).0);
        let pred: Vec<i64> = logits.argmax(-1, false).reshape([-1]).try_into().ok()?;
        let labels: Vec<i64> = y.try_into().ok()?;
        let inst = instance_numbers(&labels);
        Some(
            inst.into_iter()
                .zip(pred.iter().zip(&labels))
                .map(|(i, (p, l))| (i, p == l))
                .collect(),
        )
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            params: &self.params,
            buffers: None,
            adam: Some(&self.adam),
        }
    }

    fn parts_mut(&mut self) -> PartsMut<'_> {
        PartsMut {
            params: &mut self.params,
            buffers: None,
            adam: Some(&mut self.adam),
        }
    }
}

/// Scales the gradients accumulated in `params` so that their global norm is at most
/// `max`.
pub(crate) fn clip_grad_norm(params: &ParamSet, max: f64) {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .tensors()
            .iter()
            .map(|p| p.grad())
            .filter(Tensor::defined)
            .collect();
        let total: f64 = grads
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        if total > max {
            for mut g in grads {
                let _ = g.g_mul_scalar_(max / (total + 1e-6));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn vec(t: &Tensor) -> Vec<f64> {
        t.to_kind(Kind::Double).reshape([-1]).try_into().unwrap()
    }

    /// One LRUA step of one head on a 3 × 2 memory, by hand. Usage (0.5, 0.2, 0.9):
    /// slot 1 is least used, so w^lu = (0, 1, 0) and slot 1 is erased; with σ(α) = 0.25
    /// and previous reads (0.6, 0.3, 0.1) the write weights are (0.15, 0.825, 0.025);
    /// key (1, 0) is added to each slot in that measure; the reads are the softmax of
    /// the cosines (1, 1, 1.025/√(1.025² + 1)).
    #[test]
    fn lrua_step_matches_a_hand_computed_example() {
        let s = MemoryState {
            mem: t(&[1., 0., 0., 1., 1., 1.], &[1, 3, 2]),
            usage: t(&[0.5, 0.2, 0.9], &[1, 3]),
            read_weights: t(&[0.6, 0.3, 0.1], &[1, 1, 3]),
            read: Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)),
        };
        let next = lrua_step(&s, &t(&[1., 0.], &[1, 1, 2]), &t(&[0.25], &[1, 1, 1]), 0.5);
        let want_mem = [1.15, 0.0, 0.825, 0.0, 1.025, 1.0];
        for (a, b) in vec(&next.mem).iter().zip(want_mem) {
            assert!((a - b).abs() < 1e-6, "memory {:?}", vec(&next.mem));
        }
        let c2 = 1.025 / (1.025f64 * 1.025 + 1.0).sqrt();
        let z = 2.0 * 1f64.exp() + c2.exp();
        let w = [1f64.exp() / z, 1f64.exp() / z, c2.exp() / z];
        for (a, b) in vec(&next.read_weights).iter().zip(w) {
            assert!((a - b).abs() < 1e-6, "reads {:?}", vec(&next.read_weights));
        }
        let write = [0.15, 0.825, 0.025];
        let usage = [
            0.25 + w[0] + write[0],
            0.1 + w[1] + write[1],
            0.45 + w[2] + write[2],
        ];
        for (a, b) in vec(&next.usage).iter().zip(usage) {
            assert!((a - b).abs() < 1e-6, "usage {:?}", vec(&next.usage));
        }
        let read = [w[0] * 1.15 + w[1] * 0.825 + w[2] * 1.025, w[2] * 1.0];
        for (a, b) in vec(&next.read).iter().zip(read) {
            assert!((a - b).abs() < 1e-6, "read {:?}", vec(&next.read));
        }
    }

    /// Two heads write to the two least-used slots, and only the least used is erased.
    #[test]
    fn two_heads_write_to_the_two_least_used_slots() {
        let s = MemoryState {
            mem: Tensor::ones([1, 4, 1], (Kind::Float, Device::Cpu)),
            usage: t(&[0.9, 0.1, 0.5, 0.2], &[1, 4]),
            read_weights: Tensor::zeros([1, 2, 4], (Kind::Float, Device::Cpu)),
            read: Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)),
        };
        // Gates 0: all of each head's write goes to its least-used slot.
        let next = lrua_step(
            &s,
            &t(&[2., 3.], &[1, 2, 1]),
            &Tensor::zeros([1, 2, 1], (Kind::Float, Device::Cpu)),
            1.0,
        );
        // Slot 1 (least used) erased, then both heads' w^lu cover slots 1 and 3:
        // each gets 2 + 3.
        assert_eq!(vec(&next.mem), vec![1.0, 5.0, 1.0, 6.0]);
    }

    #[test]
    fn instances_count_presentations_per_class() {
        assert_eq!(
            instance_numbers(&[2, 0, 2, 2, 0, 1]),
            vec![0, 0, 1, 2, 1, 0]
        );
    }

    #[test]
    fn sequence_order_is_a_permutation_fixed_by_the_pixels() {
        let m = Mann::new(MannConfig::default(), 1, Device::Cpu).unwrap();
        let x = Tensor::rand([20, 1, 28, 28], (Kind::Float, Device::Cpu));
        let a = m.order(&x);
        assert_eq!(a, m.order(&x.copy()));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<i64>>());
        assert_ne!(a, (0..20).collect::<Vec<i64>>());
        let other = Mann::new(MannConfig::default(), 2, Device::Cpu).unwrap();
        assert_eq!(a, other.order(&x));
        assert_ne!(a, m.order(&(x + 0.5)));
    }
}
