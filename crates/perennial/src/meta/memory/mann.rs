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
//! network is the LSTM baseline of the paper's Table 1. Two options go beyond the
//! paper: a learned key strength `β_t` multiplying the cosines
//! ([`MannConfig::key_strength`]), and a separate add vector `a_t = tanh(W_a h_t + b)`
//! written in place of `k_t` ([`MannConfig::add_vector`]), both from the Neural Turing
//! Machine.
//!
//! Labels are one-hot by default. With `label_chars = n` they are the paper's
//! *string labels* (its Table 2): each class of a sequence is given a random string of
//! `n` characters over an alphabet of [`STRING_ALPHABET`] letters (distinct per class,
//! drawn anew for every sequence), the label input is the characters' one-hot rows side
//! by side, the output one softmax per character, the loss the cross-entropy of every
//! character, and a step is right when every character is. So the label of a class is
//! not tied to an output unit, and one network reads sequences of any number of classes
//! up to `classes` (15 in the paper).
//!
//! The sequence order of a task is a pure function of its pixels (not the run's seed), so
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
    /// A learned key strength per read head, as in the Neural Turing Machine:
    /// `β = 1 + softplus(W h + b)` multiplies the cosines before the read softmax, so a
    /// head can read one slot sharply. Santoro et al.'s reads have none (`false`, the
    /// default): a softmax of bare cosines, which weighs a perfect match at most e² ≈ 7.4
    /// times the worst slot.
    pub key_strength: bool,
    /// A separate add vector per head, as in the Neural Turing Machine:
    /// `a_t = tanh(W_a h_t + b)` is what the head writes, so its key only addresses
    /// the read. Santoro et al. write the key itself (`false`, the default), and one
    /// key then has to carry both the binding just learnt (the previous image with the
    /// label that arrives now) and the query for the image shown now.
    pub add_vector: bool,
    /// Clip the gradient's global norm to this before each update (0 = no clipping).
    pub clip_norm: f64,
    /// Characters of a string label (0: one-hot labels; the paper's string labels: 5).
    pub label_chars: usize,
    /// The optimiser.
    pub optimizer: AdamConfig,
}

/// Letters of a string label's alphabet (the paper's a–e).
pub const STRING_ALPHABET: usize = 5;

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
            key_strength: false,
            add_vector: false,
            clip_norm: 10.0,
            label_chars: 0,
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
        if self.key_strength && !self.has_memory() {
            return Err(Error::config(
                "--key-strength",
                "with --no-memory",
                "a key strength sharpens the memory's reads: the LSTM baseline has none",
            ));
        }
        if self.add_vector && !self.has_memory() {
            return Err(Error::config(
                "--add-vector",
                "with --no-memory",
                "an add vector is what a head writes to memory: the LSTM baseline has none",
            ));
        }
        if self.label_chars > 0 {
            let strings = (STRING_ALPHABET as f64).powi(self.label_chars.min(64) as i32);
            if self.label_chars > 12 || strings < self.classes as f64 {
                return Err(Error::config(
                    "--label-chars",
                    self.label_chars,
                    format!(
                        "1 to 12 characters, enough for {} distinct strings of {STRING_ALPHABET} letters",
                        self.classes
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

    /// Groups of the label code (characters; 1 for one-hot labels).
    fn groups(&self) -> i64 {
        if self.label_chars > 0 {
            self.label_chars as i64
        } else {
            1
        }
    }

    /// Letters of one group (the string alphabet, or the classes for one-hot labels).
    fn alphabet(&self) -> i64 {
        if self.label_chars > 0 {
            STRING_ALPHABET as i64
        } else {
            self.classes as i64
        }
    }

    /// Width of the label input and of the output.
    fn label_width(&self) -> i64 {
        self.groups() * self.alphabet()
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

/// One LRUA step of a batch: write `adds` `[b, heads, width]` (the keys themselves
/// when `None`, as in the paper) with write gates `gates` (σ(α), `[b, heads, 1]`),
/// then read with `keys` `[b, heads, width]`, the cosines times
/// `strength` (`[b, heads, 1]`) when given; usage decays by `gamma`. The paper's
/// equations, as in the module documentation.
pub(crate) fn lrua_step(
    s: &MemoryState,
    keys: &Tensor,
    adds: Option<&Tensor>,
    gates: &Tensor,
    strength: Option<&Tensor>,
    gamma: f64,
) -> MemoryState {
    let (b, heads) = (keys.size()[0], keys.size()[1]);
    let slots = s.mem.size()[1];
    let opts = (s.mem.kind(), s.mem.device());
    // The `heads` least-used slots of the previous usage, the least used first.
    let least = s.usage.topk(heads, 1, false, true).1;
    let lu = Tensor::zeros([b, slots], opts).scatter_value(1, &least, 1.0);
    let write: Tensor = gates * &s.read_weights + (1.0 - gates) * lu.unsqueeze(1);
    let erase = Tensor::zeros([b, slots], opts).scatter_value(1, &least.narrow(1, 0, 1), 1.0);
    let keep: Tensor = 1.0 - &erase;
    let mem = &s.mem * keep.unsqueeze(2) + write.transpose(1, 2).matmul(adds.unwrap_or(keys));
    let unit = |t: &Tensor| {
        let n = t
            .norm_scalaropt_dim(2.0, [-1].as_slice(), true)
            .clamp_min(1e-8);
        t / n
    };
    let mut sim = unit(keys).matmul(&unit(&mem).transpose(1, 2));
    if let Some(beta) = strength {
        sim *= beta;
    }
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
        let input = config.pixels() + config.label_width() + config.read_width();
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
        linear("out", h + config.read_width(), config.label_width());
        // Drawn after the others, so a run with a key strength starts from the same
        // controller, keys, gates and output as one without.
        if config.key_strength {
            linear("strength", h, config.read_heads as i64);
        }
        // Likewise last: a run with an add vector starts from the same network as one
        // without.
        if config.add_vector {
            linear("add", h, config.read_width());
        }
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
    /// one-hot codes `[b, label_width]`; the logits `[b, label_width]` and the next
    /// state.
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
                let strength = self
                    .config
                    .key_strength
                    .then(|| self.linear("strength", &h).softplus().unsqueeze(2) + 1.0);
                let adds = self
                    .config
                    .add_vector
                    .then(|| self.linear("add", &h).tanh().reshape([b, heads, -1]));
                let next = lrua_step(
                    m,
                    &keys,
                    adds.as_ref(),
                    &gates,
                    strength.as_ref(),
                    self.config.gamma,
                );
                let logits = self.linear("out", &Tensor::cat(&[&h, &next.read], 1));
                (logits, Some(next))
            }
            None => (self.linear("out", &h), None),
        };
        (logits, SeqState { h, c, memory })
    }

    /// Images `x` with labels `y` of `ways` classes in the order they are shown (a
    /// permutation that is a pure function of the pixels, not of the run's seed, so a
    /// learner loaded from a checkpoint reads a task alike): the permutation `[t]`, the labels `[t]` in it, the classes' codes `[ways, groups]`
    /// and the labels' codes `[t, groups]`; order and codes come from one hash.
    fn arrange(&self, x: &Tensor, y: &Tensor, ways: usize) -> (Tensor, Tensor, Tensor, Tensor) {
        let hash = pixel_hash(x);
        let order = Tensor::from_slice(&order_of(hash, x.size()[0])).to_device(x.device());
        let y = y.index_select(0, &order);
        let codes = self.codes(ways as i64, hash, x.device());
        let targets = codes.index_select(0, &y);
        (order, y, codes, targets)
    }

    /// The label codes of a sequence of `ways` classes `[ways, groups]`: one-hot
    /// labels are their own code; string labels are `ways` distinct strings drawn by
    /// `hash` (a function of the sequence's pixels, like its order).
    fn codes(&self, ways: i64, hash: u64, device: Device) -> Tensor {
        if self.config.label_chars == 0 {
            return Tensor::arange(ways, (Kind::Int64, device)).unsqueeze(1);
        }
        let chars = self.config.label_chars;
        let total = (STRING_ALPHABET as u64).pow(chars as u32);
        let mut rng = Rng::new(hash ^ 0x5374_7269_6e67_5321);
        let mut drawn: Vec<u64> = Vec::with_capacity(ways as usize);
        while drawn.len() < ways as usize {
            let v = rng.below(total);
            if !drawn.contains(&v) {
                drawn.push(v);
            }
        }
        let mut flat = Vec::with_capacity(drawn.len() * chars);
        for mut v in drawn {
            for _ in 0..chars {
                flat.push((v % STRING_ALPHABET as u64) as i64);
                v /= STRING_ALPHABET as u64;
            }
        }
        Tensor::from_slice(&flat)
            .view([ways, chars as i64])
            .to_device(device)
    }

    /// A task as one sequence: pixels `[t, p]`, labels `[t]` and their codes
    /// `[t, groups]`, in [`Mann::arrange`]'s order.
    fn sequence(&self, task: &Task) -> (Tensor, Tensor, Tensor) {
        let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
        let y = Tensor::cat(&[&task.support.y, &task.query.y], 0);
        let (order, y, _, targets) = self.arrange(&x, &y, task.support.ways);
        (self.pixels(&x.index_select(0, &order)), y, targets)
    }

    /// Runs sequences of pixels `[b, t, p]` and label codes `[b, t, groups]`: the
    /// logits of every step `[b, t, label_width]` and the final state.
    fn run(&self, x: &Tensor, targets: &Tensor) -> (Tensor, SeqState) {
        let (b, t) = (targets.size()[0], targets.size()[1]);
        let width = self.config.label_width();
        let onehot = self.encode_labels(targets).to_kind(x.kind());
        let mut prev = Tensor::zeros([b, width], (x.kind(), x.device()));
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

    /// Codes `[.., groups]` as the network's label input `[.., label_width]`.
    fn encode_labels(&self, codes: &Tensor) -> Tensor {
        let mut shape = codes.size();
        let last = shape.len() - 1;
        shape[last] = self.config.label_width();
        codes
            .one_hot(self.config.alphabet())
            .to_kind(Kind::Float)
            .reshape(shape.as_slice())
    }

    /// Whether each step's output `[.., label_width]` gives its code `[.., groups]`
    /// (every character, for string labels).
    fn correct(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let mut shape = targets.size();
        shape.push(self.config.alphabet());
        logits
            .reshape(shape.as_slice())
            .argmax(-1, false)
            .eq_tensor(targets)
            .all_dim(-1, false)
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

    /// Class scores `[n, ways]` of outputs `[n, label_width]` for classes with codes
    /// `[ways, groups]`: the logits themselves for one-hot labels, else the log-
    /// likelihood of each class's string (the sum of its characters' log-softmax).
    fn class_scores(&self, logits: &Tensor, codes: &Tensor) -> Tensor {
        if self.config.label_chars == 0 {
            return logits.shallow_clone();
        }
        let n = logits.size()[0];
        let (g, a) = (self.config.groups(), self.config.alphabet());
        let logp = logits.reshape([n, g, a]).log_softmax(-1, Kind::Float);
        // [n, g, a] gathered at [n, g, ways] → summed over the characters.
        let ways = codes.size()[0];
        let index = codes
            .transpose(0, 1)
            .unsqueeze(0)
            .expand([n, g, ways], false);
        logp.gather(2, &index, false)
            .sum_dim_intlist(1, false, None)
    }
}

/// The permutation of `n` items drawn by `hash`.
fn order_of(hash: u64, n: i64) -> Vec<i64> {
    let mut idx: Vec<i64> = (0..n).collect();
    Rng::new(hash).shuffle(&mut idx);
    idx
}

/// FNV-1a over every seventh pixel's bits: the seed of a sequence's order and labels.
fn pixel_hash(x: &Tensor) -> u64 {
    let flat: Vec<f32> = x
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .reshape([-1])
        .try_into()
        .unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for v in flat.iter().step_by(7) {
        hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
    }
    hash
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
    /// The label input after the support sequence's last step `[1, label_width]`.
    last: Tensor,
    /// The codes of the support's classes `[ways, groups]`.
    codes: Tensor,
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
            let logits = self
                .net
                .step(&s, &self.net.pixels(x), &expand(&self.last))
                .0;
            self.net.class_scores(&logits, &self.codes)
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        let mut out = vec![
            ("h".into(), cpu(&self.state.h)),
            ("c".into(), cpu(&self.state.c)),
            ("last".into(), cpu(&self.last)),
        ];
        if self.net.config.label_chars > 0 {
            out.push(("codes".into(), cpu(&self.codes)));
        }
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

    /// Reads the support set as a sequence, shuffled by a permutation that is a pure
    /// function of its pixels (so a learner loaded from a checkpoint reads a task alike).
    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        self.check(support);
        let (order, y, codes, targets) = self.arrange(&support.x, &support.y, support.ways);
        let x = self.pixels(&support.x.index_select(0, &order)).unsqueeze(0);
        let state = tch::no_grad(|| self.run(&x, &targets.unsqueeze(0)).1);
        let last = self
            .encode_labels(&targets.narrow(0, y.size()[0] - 1, 1))
            .to_kind(x.kind());
        Box::new(MannAdapted {
            net: self,
            state,
            last,
            codes,
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
        let codes = if self.config.label_chars > 0 {
            let codes = get("codes")?;
            if codes.dim() != 2 || codes.size()[1] != self.config.groups() {
                return Err(Error::Parameters {
                    name: "codes".into(),
                    reason: format!(
                        "{:?}: expected [ways, {}]",
                        codes.size(),
                        self.config.groups()
                    ),
                });
            }
            codes.to_kind(Kind::Int64)
        } else {
            Tensor::arange(self.config.classes as i64, (Kind::Int64, device)).unsqueeze(1)
        };
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
            codes,
        }))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        if tasks.is_empty() {
            return StepReport::default();
        }
        for t in tasks {
            self.check(&t.support);
        }
        let mut xs = Vec::with_capacity(tasks.len());
        let mut ts = Vec::with_capacity(tasks.len());
        for t in tasks {
            let (x, _, targets) = self.sequence(t);
            xs.push(x);
            ts.push(targets);
        }
        let (x, targets) = (Tensor::stack(&xs, 0), Tensor::stack(&ts, 0));
        let logits = self.run(&x, &targets).0;
        let loss = logits
            .reshape([-1, self.config.alphabet()])
            .cross_entropy_for_logits(&targets.reshape([-1]));
        let accuracy = self
            .correct(&logits, &targets)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        let report = StepReport {
            loss: loss.double_value(&[]),
            accuracy: Some(accuracy),
        };
        loss.backward();
        let clip = Some(self.config.clip_norm).filter(|&c| c > 0.0);
        self.adam.step_clipped(&self.params, clip);
        report
    }

    fn sequence_record(&self, task: &Task) -> Option<Vec<(usize, bool)>> {
        let (x, y, targets) = self.sequence(task);
        let targets = targets.unsqueeze(0);
        let logits = tch::no_grad(|| self.run(&x.unsqueeze(0), &targets).0);
        let right: Vec<bool> = self
            .correct(&logits, &targets)
            .reshape([-1])
            .try_into()
            .ok()?;
        let labels: Vec<i64> = y.try_into().ok()?;
        Some(instance_numbers(&labels).into_iter().zip(right).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn vec(t: &Tensor) -> Vec<f64> {
        t.to_kind(Kind::Double).reshape([-1]).try_into().unwrap()
    }

    /// The hand-computed example's memory before its step.
    fn hand_example() -> MemoryState {
        MemoryState {
            mem: t(&[1., 0., 0., 1., 1., 1.], &[1, 3, 2]),
            usage: t(&[0.5, 0.2, 0.9], &[1, 3]),
            read_weights: t(&[0.6, 0.3, 0.1], &[1, 1, 3]),
            read: Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)),
        }
    }

    /// One LRUA step of one head on a 3 × 2 memory, by hand. Usage (0.5, 0.2, 0.9):
    /// slot 1 is least used, so w^lu = (0, 1, 0) and slot 1 is erased; with σ(α) = 0.25
    /// and previous reads (0.6, 0.3, 0.1) the write weights are (0.15, 0.825, 0.025);
    /// key (1, 0) is added to each slot in that measure; the reads are the softmax of
    /// the cosines (1, 1, 1.025/√(1.025² + 1)).
    #[test]
    fn lrua_step_matches_a_hand_computed_example() {
        let s = hand_example();
        let next = lrua_step(
            &s,
            &t(&[1., 0.], &[1, 1, 2]),
            None,
            &t(&[0.25], &[1, 1, 1]),
            None,
            0.5,
        );
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
            None,
            &Tensor::zeros([1, 2, 1], (Kind::Float, Device::Cpu)),
            None,
            1.0,
        );
        // Slot 1 (least used) erased, then both heads' w^lu cover slots 1 and 3:
        // each gets 2 + 3.
        assert_eq!(vec(&next.mem), vec![1.0, 5.0, 1.0, 6.0]);
    }

    /// A key strength multiplies the cosines before the softmax: the hand-computed
    /// example's reads with β = 3 are the softmax of three times its cosines, and the
    /// write is unchanged.
    #[test]
    fn key_strength_sharpens_the_reads_only() {
        let s = hand_example();
        let (key, gate) = (t(&[1., 0.], &[1, 1, 2]), t(&[0.25], &[1, 1, 1]));
        let plain = lrua_step(&s, &key, None, &gate, None, 0.5);
        let sharp = lrua_step(&s, &key, None, &gate, Some(&t(&[3.0], &[1, 1, 1])), 0.5);
        assert_eq!(vec(&plain.mem), vec(&sharp.mem));
        let c2 = 1.025 / (1.025f64 * 1.025 + 1.0).sqrt();
        let z = 2.0 * 3f64.exp() + (3.0 * c2).exp();
        let w = [3f64.exp() / z, 3f64.exp() / z, (3.0 * c2).exp() / z];
        for (a, b) in vec(&sharp.read_weights).iter().zip(w) {
            assert!((a - b).abs() < 1e-6, "reads {:?}", vec(&sharp.read_weights));
        }
        assert!(vec(&sharp.read_weights)[2] < vec(&plain.read_weights)[2]);
    }

    /// With an add vector a head writes it, not its key, and still reads by its key:
    /// the hand-computed example with key (1, 0) and add vector (0, 2). Slot 1 is
    /// erased, the write weights (0.15, 0.825, 0.025) add (0, 0.3), (0, 1.65) and
    /// (0, 0.05), and the reads are the softmax of the key's cosines to the new rows.
    #[test]
    fn an_add_vector_is_written_and_the_key_reads() {
        let s = hand_example();
        let (key, gate) = (t(&[1., 0.], &[1, 1, 2]), t(&[0.25], &[1, 1, 1]));
        let add = t(&[0., 2.], &[1, 1, 2]);
        let next = lrua_step(&s, &key, Some(&add), &gate, None, 0.5);
        let want_mem = [1.0, 0.3, 0.0, 1.65, 1.0, 1.05];
        for (a, b) in vec(&next.mem).iter().zip(want_mem) {
            assert!((a - b).abs() < 1e-6, "memory {:?}", vec(&next.mem));
        }
        let cos = [
            1.0 / 1.09f64.sqrt(),
            0.0,
            1.0 / (1.0 + 1.05f64 * 1.05).sqrt(),
        ];
        let z: f64 = cos.iter().map(|c| c.exp()).sum();
        for (a, c) in vec(&next.read_weights).iter().zip(cos) {
            let want = c.exp() / z;
            assert!(
                (a - want).abs() < 1e-6,
                "reads {:?}",
                vec(&next.read_weights)
            );
        }
        // The paper's step is the one whose add vector is its key.
        let paper = lrua_step(&s, &key, None, &gate, None, 0.5);
        let same = lrua_step(&s, &key, Some(&key), &gate, None, 0.5);
        assert_eq!(vec(&paper.mem), vec(&same.mem));
        assert_eq!(vec(&paper.read), vec(&same.read));
    }

    /// The parameters `with` adds, in order, to a network of `config` of the same seed,
    /// after asserting that they come after all of `config`'s and leave those as they
    /// were.
    fn layers_added(config: &MannConfig, with: MannConfig) -> Vec<String> {
        let plain = Mann::new(config.clone(), 7, Device::Cpu).unwrap();
        let added = Mann::new(with, 7, Device::Cpu).unwrap();
        let names = |m: &Mann| {
            m.params
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
        };
        let (base, all) = (names(&plain), names(&added));
        assert_eq!(all[..base.len()], base[..]);
        for n in &base {
            assert!(plain.params.get(n).equal(added.params.get(n)), "{n}");
        }
        all[base.len()..].to_vec()
    }

    /// An add vector is one more layer, drawn after all others (the key strength's
    /// too): the rest starts as without it; the LSTM baseline refuses one.
    #[test]
    fn an_add_vector_is_a_layer_after_the_others() {
        let config = MannConfig {
            hidden: 8,
            memory_slots: 4,
            memory_width: 3,
            read_heads: 2,
            key_strength: true,
            ..MannConfig::default()
        };
        let with_add = MannConfig {
            add_vector: true,
            ..config.clone()
        };
        assert_eq!(
            layers_added(&config, with_add.clone()),
            ["add.weight", "add.bias"]
        );
        let added = Mann::new(with_add, 7, Device::Cpu).unwrap();
        assert_eq!(added.params.get("add.weight").size(), [6, 8]);
        let baseline = MannConfig {
            memory_slots: 0,
            key_strength: false,
            add_vector: true,
            ..config
        };
        assert!(baseline.validate().is_err());
    }

    /// A network with a key strength has one more layer, drawn after the others: the
    /// rest starts as without it; the LSTM baseline refuses one.
    #[test]
    fn key_strength_adds_a_layer_after_the_others() {
        let config = MannConfig {
            hidden: 8,
            memory_slots: 4,
            memory_width: 3,
            read_heads: 2,
            ..MannConfig::default()
        };
        let sharp = MannConfig {
            key_strength: true,
            ..config.clone()
        };
        assert_eq!(
            layers_added(&config, sharp),
            ["strength.weight", "strength.bias"]
        );
        let baseline = MannConfig {
            memory_slots: 0,
            key_strength: true,
            ..config
        };
        assert!(baseline.validate().is_err());
    }

    fn strings(classes: usize) -> Mann {
        let config = MannConfig {
            classes,
            label_chars: 5,
            hidden: 8,
            memory_slots: 4,
            memory_width: 3,
            read_heads: 1,
            ..MannConfig::default()
        };
        Mann::new(config, 1, Device::Cpu).unwrap()
    }

    /// String labels: distinct strings of 5 letters, fixed by the hash, another set for
    /// another hash; one-hot labels are their own codes.
    #[test]
    fn string_labels_are_distinct_and_fixed_by_the_pixels() {
        let m = strings(15);
        let codes = m.codes(15, 42, Device::Cpu);
        assert_eq!(codes.size(), [15, 5]);
        let rows: Vec<Vec<i64>> = (0..15)
            .map(|i| Vec::<i64>::try_from(codes.get(i)).unwrap())
            .collect();
        for (i, r) in rows.iter().enumerate() {
            assert!(r.iter().all(|&c| (0..5).contains(&c)), "{r:?}");
            assert!(!rows[..i].contains(r), "duplicate string {r:?}");
        }
        assert!(codes.equal(&m.codes(15, 42, Device::Cpu)));
        assert!(!codes.equal(&m.codes(15, 43, Device::Cpu)));
        let onehot = Mann::new(MannConfig::default(), 1, Device::Cpu).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(onehot.codes(5, 42, Device::Cpu).reshape([-1])).unwrap(),
            vec![0, 1, 2, 3, 4]
        );
    }

    /// A class's score is the log-likelihood of its string: the sum over characters of
    /// the log-softmax at its letter; a step is right only when every letter is.
    #[test]
    fn string_scores_sum_the_letters_log_likelihoods() {
        let m = strings(2);
        let logits = Tensor::randn([3, 25], (Kind::Float, Device::Cpu));
        let codes = t(&[0., 1., 2., 3., 4., 4., 4., 4., 4., 4.], &[2, 5]).to_kind(Kind::Int64);
        let scores = m.class_scores(&logits, &codes);
        assert_eq!(scores.size(), [3, 2]);
        let logp = logits.reshape([3, 5, 5]).log_softmax(-1, Kind::Float);
        for n in 0..3 {
            for c in 0..2 {
                let want: f64 = (0..5)
                    .map(|g| logp.double_value(&[n, g, codes.int64_value(&[c, g])]))
                    .sum();
                assert!((scores.double_value(&[n, c]) - want).abs() < 1e-5);
            }
        }
        // Logits that put every character of class 1's string first are right for it,
        // and wrong once a single character differs.
        let targets = codes.get(1).unsqueeze(0);
        let exact = m.encode_labels(&targets) * 10.0;
        assert!(bool::try_from(m.correct(&exact, &targets).get(0)).unwrap());
        let _ = exact.narrow(1, 20, 5).fill_(0.0);
        let _ = exact.narrow(1, 20, 1).fill_(10.0);
        assert!(!bool::try_from(m.correct(&exact, &targets).get(0)).unwrap());
    }

    #[test]
    fn string_labels_need_enough_strings() {
        let c = MannConfig {
            classes: 30,
            label_chars: 2,
            ..MannConfig::default()
        };
        assert!(c.validate().is_err());
        assert!(MannConfig {
            label_chars: 3,
            ..c
        }
        .validate()
        .is_ok());
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
        let y = Tensor::zeros([20], (Kind::Int64, Device::Cpu));
        let order = |m: &Mann, x: &Tensor| Vec::<i64>::try_from(m.arrange(x, &y, 1).0).unwrap();
        let a = order(&m, &x);
        assert_eq!(a, order(&m, &x.copy()));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<i64>>());
        assert_ne!(a, (0..20).collect::<Vec<i64>>());
        let other = Mann::new(MannConfig::default(), 2, Device::Cpu).unwrap();
        assert_eq!(a, order(&other, &x));
        assert_ne!(a, order(&m, &(x + 0.5)));
    }
}
