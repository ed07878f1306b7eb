//! Class-incremental learning one class at a time: the Omniglot protocol of OML and
//! ANML ([`crate::data::classinc`]). A learner meets class after class, sees each
//! class's training images once, one image at a time, and is tested on the held-out
//! images of every class seen so far.
//!
//! The learners here work on a fixed, meta-learned representation (the encoder of a
//! meta-trained Prototypical Network or OML network, frozen at meta-test time as OML
//! freezes its representation network), so [`run_class_stream`] encodes every image of the stream
//! once and hands the learners feature vectors:
//!
//! * [`PrototypeMemory`], Perennial's learner: one prototype per class (the running mean
//!   of its examples' features), nearest-prototype prediction, and an *unknown* flag for
//!   inputs farther from every prototype than the learner has seen its own classes'
//!   examples lie (a quantile of out-of-sample distances, calibrated on the stream itself
//!   as it learns, with no outside data).
//! * [`OnlineHead`]: a linear softmax head trained online by SGD on the same features,
//!   one example at a time: OML's meta-test learner. On an OML representation
//!   ([`crate::lifelong::oml`], meta-trained for exactly this head) it is *OML*; on a
//!   ProtoNet representation it is the *naive* baseline of this stream.
//! * [`LaMamlHead`]: La-MAML's look-ahead update with learned per-weight rates and a
//!   replay buffer ([`crate::lifelong::lamaml`]) on the same linear head.
//!
//! The record holds the accuracy matrix `R[i][j]` (accuracy on class `j`'s test images,
//! among all classes known, after learning classes `0..=i`; zero above the diagonal,
//! where a class is not known yet), the mean accuracy on all seen classes at the
//! protocol's points (10, 50, 100, 200, 600 classes), learning speed (a class's accuracy
//! after 0, 1, 5 and all of its images), and the unknown flag's rates.

use tch::{Kind, Tensor};

use super::lamaml::{LaMamlConfig, LookAhead};
use super::learner::{SpeedPoint, StrategyState};
use super::metrics::AccuracyMatrix;
use super::{Checkpoints, Reservoir};
use crate::error::{Error, Result};
use crate::nn::ParamSet;

/// A learner of classes arriving one at a time, on feature vectors.
pub trait ClassLearner {
    /// The learner's name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Learns one example (features `[d]`) of class `label`. Classes arrive in order:
    /// a new class has label equal to the number of classes known.
    fn learn(&mut self, features: &Tensor, label: usize) -> Result<()>;

    /// Scores `[n, known]` of features `[n, d]` (the highest is the prediction).
    fn scores(&self, features: &Tensor) -> Tensor;

    /// Whether each input `[n, d]` is far from everything the learner knows (`[n]`
    /// booleans). The default flags nothing.
    fn unknown(&self, features: &Tensor) -> Tensor {
        Tensor::zeros([features.size()[0]], (Kind::Bool, features.device()))
    }

    /// The number of classes known.
    fn known(&self) -> usize;

    /// One prototype per known class (`[known, d]`), for learners that keep them:
    /// what near-neighbour meta-consolidation groups classes by. The default has none.
    fn prototypes(&self) -> Option<&Tensor> {
        None
    }

    /// Everything the learner holds, for a checkpoint.
    fn state(&self) -> StrategyState;

    /// Restores a state [`ClassLearner::state`] returned.
    fn restore(&mut self, state: StrategyState) -> Result<()>;

    /// Forgets everything and learns classes `0..train.len()` again from `train[c]`
    /// (`[n_c, d]`, in order): what a learner does when its representation changed.
    /// The default refuses.
    fn relearn(&mut self, _train: &[Tensor]) -> Result<()> {
        Err(Error::config(
            "learner",
            self.name(),
            "cannot relearn on a new representation",
        ))
    }
}

/// Perennial's class-incremental learner: a prototype per class in a fixed
/// meta-learned embedding, nearest-prototype prediction (squared Euclidean, as the
/// embedding was trained), and an unknown flag.
///
/// Learning a class never changes another class's prototype, so what is learnt is
/// never overwritten; accuracy on an old class can fall only because newer classes
/// come to compete with it.
///
/// The unknown threshold: when the `n`-th example of a class arrives (`n ≥ 2`), its
/// squared distance `d` to the class's prototype *before* it is added is an
/// out-of-sample distance of a known-class input. A prototype of `m` examples lies off
/// the class's true mean, which adds about `1/m` of the spread to such distances, so
/// each is recorded as `d · (n−1)/n` (a distance to the class mean), and an input whose
/// nearest prototype, of `m` examples, is at `d` counts as `d · m/(m+1)`. An input is
/// flagged unknown when that exceeds the `quantile` of the recorded distances.
#[derive(Debug)]
pub struct PrototypeMemory {
    sums: Vec<Tensor>,
    counts: Vec<usize>,
    protos: Option<Tensor>,
    held_out: Vec<f64>,
    quantile: f64,
}

impl PrototypeMemory {
    /// An empty memory whose unknown threshold is the `quantile` (in `(0, 1]`) of
    /// out-of-sample distances.
    pub fn new(quantile: f64) -> Result<Self> {
        if !(quantile > 0.0 && quantile <= 1.0) {
            return Err(Error::config(
                "--unknown-quantile",
                quantile,
                "must be in (0, 1]",
            ));
        }
        Ok(PrototypeMemory {
            sums: Vec::new(),
            counts: Vec::new(),
            protos: None,
            held_out: Vec::new(),
            quantile,
        })
    }

    /// The current unknown threshold (a squared distance; ∞ until calibrated): the
    /// `quantile` of the recorded distances, computed when asked rather than on every
    /// example learnt.
    pub fn threshold(&self) -> f64 {
        if self.held_out.is_empty() {
            return f64::INFINITY;
        }
        let mut v = self.held_out.clone();
        let k = ((self.quantile * v.len() as f64).ceil() as usize).clamp(1, v.len());
        *v.select_nth_unstable_by(k - 1, f64::total_cmp).1
    }

    fn distances(&self, features: &Tensor) -> Option<Tensor> {
        let p = self.protos.as_ref()?;
        // ‖x − p‖² = ‖x‖² − 2 x·p + ‖p‖², for all pairs at once.
        let x2 = features.square().sum_dim_intlist(1, true, Kind::Float);
        let p2 = p
            .square()
            .sum_dim_intlist(1, true, Kind::Float)
            .transpose(0, 1);
        Some((x2 - features.matmul(&p.transpose(0, 1)) * 2.0 + p2).clamp_min(0.0))
    }
}

impl ClassLearner for PrototypeMemory {
    fn name(&self) -> &'static str {
        "perennial"
    }

    fn prototypes(&self) -> Option<&Tensor> {
        self.protos.as_ref()
    }

    fn learn(&mut self, features: &Tensor, label: usize) -> Result<()> {
        let f = features.reshape([-1]).to_kind(Kind::Float);
        match label.cmp(&self.sums.len()) {
            std::cmp::Ordering::Less => {
                let m = self.counts[label] as f64;
                let mean = &self.sums[label] / m;
                let d = (&f - &mean).square().sum(Kind::Float).double_value(&[]);
                self.held_out.push(d * m / (m + 1.0));
                self.sums[label] = &self.sums[label] + &f;
                self.counts[label] += 1;
            }
            std::cmp::Ordering::Equal => {
                self.sums.push(f.copy());
                self.counts.push(1);
            }
            std::cmp::Ordering::Greater => {
                return Err(Error::config(
                    "class label",
                    label,
                    format!("classes must arrive in order; {} known", self.sums.len()),
                ))
            }
        }
        let row = &self.sums[label] / self.counts[label] as f64;
        self.protos = Some(match self.protos.take() {
            Some(p) if (label as i64) < p.size()[0] => {
                p.narrow(0, label as i64, 1).copy_(&row.unsqueeze(0));
                p
            }
            Some(p) => Tensor::cat(&[p, row.unsqueeze(0)], 0),
            None => row.unsqueeze(0),
        });
        Ok(())
    }

    /// Rebuilds every prototype and the unknown threshold's distances from the
    /// classes' training features in the new representation, as if learnt again.
    fn relearn(&mut self, train: &[Tensor]) -> Result<()> {
        self.sums.clear();
        self.counts.clear();
        self.protos = None;
        self.held_out.clear();
        for (c, x) in train.iter().enumerate() {
            for i in 0..x.size()[0] {
                self.learn(&x.get(i), c)?;
            }
        }
        Ok(())
    }

    fn state(&self) -> StrategyState {
        StrategyState {
            tensors: self
                .sums
                .iter()
                .enumerate()
                .map(|(c, t)| (format!("sum.{c}"), t.shallow_clone()))
                .collect(),
            meta: serde_json::json!({ "counts": self.counts, "held_out": self.held_out }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        let counts: Vec<usize> = state.field("perennial", "counts")?;
        let held_out: Vec<f64> = state.field("perennial", "held_out")?;
        let sums = indexed(&state.tensors, "sum.", counts.len())?;
        self.protos = if sums.is_empty() {
            None
        } else {
            let rows: Vec<Tensor> = sums
                .iter()
                .zip(&counts)
                .map(|(s, &m)| s / m as f64)
                .collect();
            Some(Tensor::stack(&rows, 0))
        };
        self.sums = sums;
        self.counts = counts;
        self.held_out = held_out;
        Ok(())
    }

    fn scores(&self, features: &Tensor) -> Tensor {
        match self.distances(features) {
            Some(d) => -d,
            None => Tensor::zeros([features.size()[0], 0], (Kind::Float, features.device())),
        }
    }

    fn unknown(&self, features: &Tensor) -> Tensor {
        match self.distances(features) {
            Some(d) => {
                let (nearest, which) = d.min_dim(1, false);
                let m: Vec<f32> = self.counts.iter().map(|&m| m as f32).collect();
                let m = Tensor::from_slice(&m).index_select(0, &which);
                (nearest * &m / (m + 1.0)).gt(self.threshold())
            }
            None => Tensor::ones([features.size()[0]], (Kind::Bool, features.device())),
        }
    }

    fn known(&self) -> usize {
        self.sums.len()
    }
}

/// La-MAML ([`crate::lifelong::lamaml`]) on a linear softmax head over the features:
/// each arriving example is the incoming batch (one inner step per glance), its
/// meta-loss adds a draw from a reservoir buffer of earlier examples' features, and the
/// head's learned per-weight rates gate its updates. Cross-entropy is over the classes
/// known so far.
#[derive(Debug)]
pub struct LaMamlHead {
    params: ParamSet,
    look: LookAhead,
    config: LaMamlConfig,
    buffer: Reservoir<(usize, Vec<f32>)>,
    known: usize,
}

impl LaMamlHead {
    /// A zero-initialised head for up to `max_classes` classes on `dim`-dimensional
    /// features, its buffer's draws seeded by `seed`.
    pub fn new(dim: usize, max_classes: usize, config: LaMamlConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let opts = (Kind::Float, tch::Device::Cpu);
        let mut params = ParamSet::new();
        params.push(
            "weight",
            Tensor::zeros([dim as i64, max_classes as i64], opts).set_requires_grad(true),
        );
        params.push(
            "bias",
            Tensor::zeros([max_classes as i64], opts).set_requires_grad(true),
        );
        let look = LookAhead::new(&params, &config);
        Ok(LaMamlHead {
            params,
            look,
            config,
            buffer: Reservoir::new(config.capacity, seed),
            known: 0,
        })
    }
}

/// The classes known once an example of `label` is learnt by a head with `cap`
/// outputs that knows `known`: classes must arrive in order and fit the head.
fn next_known(label: usize, known: usize, cap: usize) -> Result<usize> {
    if label > known || label >= cap {
        return Err(Error::config(
            "class label",
            label,
            format!("classes must arrive in order, at most {cap}; {known} known"),
        ));
    }
    Ok(known.max(label + 1))
}

/// Tensors `PREFIX0..PREFIX{n-1}` of a saved state, in order.
fn indexed(tensors: &[(String, Tensor)], prefix: &str, n: usize) -> Result<Vec<Tensor>> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            tensors
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, t)| t.detach().copy())
                .ok_or_else(|| Error::config("learner state", name, "missing from the checkpoint"))
        })
        .collect()
}

/// The logits of a linear head `{weight [d, C], bias [C]}` over its first `known` classes.
fn head_logits(params: &ParamSet, x: &Tensor, known: usize) -> Tensor {
    let k = known as i64;
    x.matmul(&params.get("weight").narrow(1, 0, k)) + params.get("bias").narrow(0, 0, k)
}

impl ClassLearner for LaMamlHead {
    fn name(&self) -> &'static str {
        "lamaml"
    }

    fn learn(&mut self, features: &Tensor, label: usize) -> Result<()> {
        self.known = next_known(
            label,
            self.known,
            self.params.get("bias").size()[0] as usize,
        )?;
        let x = features.reshape([1, -1]).to_kind(Kind::Float);
        let y = Tensor::from_slice(&[label as i64]);
        let ce = |z: Tensor, y: &Tensor| {
            z.cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)
        };
        for _ in 0..self.config.glances {
            let drawn = self.buffer.sample(self.config.replay);
            let mut xs = vec![x.shallow_clone()];
            let mut ys = vec![label as i64];
            for (c, f) in drawn {
                xs.push(Tensor::from_slice(f).view([1, -1]));
                ys.push(*c as i64);
            }
            let mx = Tensor::cat(&xs, 0);
            let my = Tensor::from_slice(&ys);
            let k = self.known;
            self.look.update(
                &self.params,
                1,
                &mut |fast, _| ce(head_logits(fast, &x, k), &y),
                &mut |fast| ce(head_logits(fast, &mx, k), &my),
            )?;
        }
        let v = Vec::<f32>::try_from(x.view([-1]))
            .map_err(|e: tch::TchError| Error::config("features", "tensor", e.to_string()))?;
        self.buffer.offer((label, v));
        Ok(())
    }

    fn state(&self) -> StrategyState {
        let mut tensors = self.params.named("head.");
        tensors.extend(
            self.look
                .alphas()
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("alpha.{i}"), a.detach())),
        );
        StrategyState {
            tensors,
            meta: serde_json::json!({ "known": self.known, "buffer": self.buffer }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.known = state.field("lamaml", "known")?;
        self.buffer = state.field("lamaml", "buffer")?;
        let mut params = self.params.detached_copy();
        params.load_named(&state.tensors, "head.")?;
        self.params = params.requires_grad();
        let alphas = indexed(&state.tensors, "alpha.", self.params.len())?;
        self.look = LookAhead::from_alphas(&self.params, alphas, &self.config)?;
        Ok(())
    }

    fn scores(&self, features: &Tensor) -> Tensor {
        tch::no_grad(|| head_logits(&self.params, &features.to_kind(Kind::Float), self.known))
    }

    fn known(&self) -> usize {
        self.known
    }
}

/// A linear softmax head over the features, trained online by SGD on each example as it
/// arrives (cross-entropy over the classes known so far).
#[derive(Debug)]
pub struct OnlineHead {
    weight: Tensor,
    bias: Tensor,
    known: usize,
    lr: f64,
    name: &'static str,
}

impl OnlineHead {
    /// A zero-initialised head for up to `max_classes` classes on `dim`-dimensional
    /// features, with SGD learning rate `lr`.
    pub fn new(dim: usize, max_classes: usize, lr: f64) -> Result<Self> {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::config("--lr", lr, "must be positive"));
        }
        Ok(OnlineHead {
            weight: Tensor::zeros(
                [dim as i64, max_classes as i64],
                (Kind::Float, tch::Device::Cpu),
            ),
            bias: Tensor::zeros([max_classes as i64], (Kind::Float, tch::Device::Cpu)),
            known: 0,
            lr,
            name: "naive",
        })
    }

    /// The same head under another name (`oml`: OML's meta-test learner on an OML
    /// representation).
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }
}

impl ClassLearner for OnlineHead {
    fn name(&self) -> &'static str {
        self.name
    }

    fn learn(&mut self, features: &Tensor, label: usize) -> Result<()> {
        self.known = next_known(label, self.known, self.bias.size()[0] as usize)?;
        let k = self.known as i64;
        let x = features.reshape([1, -1]).to_kind(Kind::Float);
        let w = self.weight.narrow(1, 0, k);
        let b = self.bias.narrow(0, 0, k);
        // Softmax cross-entropy's gradient: (softmax(z) − onehot) for the logits z.
        let z = x.matmul(&w) + &b;
        let g = z.softmax(1, Kind::Float);
        let _ = g.narrow(1, label as i64, 1).g_sub_scalar_(1.0);
        let _ = self
            .weight
            .narrow(1, 0, k)
            .g_sub_(&(x.transpose(0, 1).matmul(&g) * self.lr));
        let _ = self
            .bias
            .narrow(0, 0, k)
            .g_sub_(&(g.squeeze_dim(0) * self.lr));
        Ok(())
    }

    fn state(&self) -> StrategyState {
        StrategyState {
            tensors: vec![
                ("weight".into(), self.weight.shallow_clone()),
                ("bias".into(), self.bias.shallow_clone()),
            ],
            meta: serde_json::json!({ "known": self.known }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.known = state.field(self.name, "known")?;
        for (name, t) in &state.tensors {
            let target = match name.as_str() {
                "weight" => &mut self.weight,
                "bias" => &mut self.bias,
                _ => continue,
            };
            if target.size() != t.size() {
                return Err(Error::config("learner state", name, "has another shape"));
            }
            *target = t.detach().copy();
        }
        Ok(())
    }

    fn scores(&self, features: &Tensor) -> Tensor {
        let k = self.known as i64;
        features
            .to_kind(Kind::Float)
            .matmul(&self.weight.narrow(1, 0, k))
            + self.bias.narrow(0, 0, k)
    }

    fn known(&self) -> usize {
        self.known
    }
}

/// The rates of the unknown flag at one point of the stream.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnknownRates {
    /// Classes known when measured.
    pub classes: usize,
    /// Fraction of the known classes' test images flagged unknown (false alarms).
    pub known_flagged: f64,
    /// Fraction of the next (not yet learnt) classes' test images flagged unknown
    /// (detections); `None` at the end of the stream.
    pub novel_flagged: Option<f64>,
}

/// Everything measured over a class-incremental stream.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassRunRecord {
    /// `R[i][j]`: accuracy on class `j`'s test images after learning classes `0..=i`.
    pub rows: Vec<Vec<f64>>,
    /// The points (numbers of classes learnt) where accuracy on all seen classes is
    /// reported.
    pub points: Vec<usize>,
    /// Accuracy on the test images of all classes seen, at each point (images
    /// weighted equally).
    pub accuracy_at: Vec<f64>,
    /// For every class, its accuracy after 0, 1, 5 and all of its training images.
    pub speed: Vec<Vec<SpeedPoint>>,
    /// The unknown flag's rates at each point.
    pub unknown: Vec<UnknownRates>,
    /// Seconds spent encoding, learning and testing.
    pub wall_s: f64,
    /// At the end of the stream, each class's accuracy when it is told apart only
    /// from the classes known when it was learnt (the learner's scores cut to classes
    /// `0..=j`): what [`ClassRunRecord::own_label_bwt`] compares with `R[j][j]`.
    #[serde(default)]
    pub final_own_labels: Vec<f64>,
}

impl ClassRunRecord {
    /// The accuracy matrix (no baseline: an unknown class's accuracy is zero by
    /// construction, so forward transfer is not defined here).
    pub fn matrix(&self) -> Result<AccuracyMatrix> {
        AccuracyMatrix::new(self.rows.clone(), None)
    }

    /// Backward transfer within each class's own label set: the mean over classes
    /// `j < T−1` of `final_own_labels[j] − R[j][j]`, where the final accuracy on class
    /// `j` is measured among the classes known when `j` was learnt, as `R[j][j]` was.
    /// GEM's BWT also counts the drop that comes from meeting the later classes'
    /// labels; this one counts only what the learner lost (or gained) on the task it
    /// was given. `None` before the stream ends or with a single class.
    pub fn own_label_bwt(&self) -> Option<f64> {
        let t = self.rows.len();
        if t < 2 || self.final_own_labels.len() != t {
            return None;
        }
        let sum: f64 = (0..t - 1)
            .map(|j| self.final_own_labels[j] - self.rows[j][j])
            .sum();
        Some(sum / (t - 1) as f64)
    }
}

/// The points of the OML / ANML protocol, cut to a stream of `classes` classes (whose
/// length is always a point).
pub fn protocol_points(classes: usize) -> Vec<usize> {
    let mut p: Vec<usize> = [10, 50, 100, 200, 600]
        .into_iter()
        .filter(|&k| k < classes)
        .collect();
    p.push(classes);
    p
}

/// How many of the next classes' test images measure the unknown flag's detections.
const NOVEL_CLASSES: usize = 50;

/// Runs `learner` over a class-incremental stream given as encoded features:
/// `train[c]` `[n_c, d]` and `test[c]` `[m_c, d]` for the class at position `c`.
/// `progress` is called after each class with (classes done, classes).
pub fn run_class_stream(
    learner: &mut dyn ClassLearner,
    train: &[Tensor],
    test: &[Tensor],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ClassRunRecord> {
    let copy = |v: &[Tensor]| v.iter().map(Tensor::shallow_clone).collect();
    run_class_stream_refreshing(
        learner,
        Features {
            train: copy(train),
            test: copy(test),
        },
        ClassRunRecord::default(),
        &mut |_, _| Ok(None),
        &mut |_, _| Ok(()),
        progress,
    )
}

/// The encoded features of a class stream: `train[c]` `[n_c, d]`, `test[c]` `[m_c, d]`.
#[derive(Debug)]
pub struct Features {
    /// Each class's training images' features.
    pub train: Vec<Tensor>,
    /// Each class's test images' features.
    pub test: Vec<Tensor>,
}

/// The test features, concatenated, with each class's offset and size.
struct TestSet {
    all: Tensor,
    labels: Tensor,
    sizes: Vec<i64>,
    offsets: Vec<i64>,
}

impl TestSet {
    fn new(test: &[Tensor]) -> Self {
        let sizes: Vec<i64> = test.iter().map(|x| x.size()[0]).collect();
        let offsets: Vec<i64> = sizes
            .iter()
            .scan(0, |acc, &n| {
                let o = *acc;
                *acc += n;
                Some(o)
            })
            .collect();
        let labels: Vec<i64> = sizes
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as i64, n as usize))
            .collect();
        TestSet {
            all: Tensor::cat(test, 0),
            labels: Tensor::from_slice(&labels),
            sizes,
            offsets,
        }
    }

    /// Per-class accuracy on the test images of classes `0..known`, padded with zeros
    /// to `len` classes.
    fn row(&self, learner: &dyn ClassLearner, known: usize, len: usize) -> Vec<f64> {
        tch::no_grad(|| {
            let n = self.offsets[known - 1] + self.sizes[known - 1];
            let hit = learner
                .scores(&self.all.narrow(0, 0, n))
                .argmax(1, false)
                .eq_tensor(&self.labels.narrow(0, 0, n))
                .to_kind(Kind::Double);
            let mut r: Vec<f64> = (0..known)
                .map(|j| {
                    hit.narrow(0, self.offsets[j], self.sizes[j])
                        .mean(Kind::Double)
                        .double_value(&[])
                })
                .collect();
            r.resize(len, 0.0);
            r
        })
    }

    /// Each class `j`'s accuracy when the learner's scores are cut to classes
    /// `0..=j` (all `known` classes learnt).
    fn own_label_row(&self, learner: &dyn ClassLearner, known: usize) -> Vec<f64> {
        tch::no_grad(|| {
            let n = self.offsets[known - 1] + self.sizes[known - 1];
            let scores = learner.scores(&self.all.narrow(0, 0, n));
            (0..known)
                .map(|j| {
                    let (o, m) = (self.offsets[j], self.sizes[j]);
                    scores
                        .narrow(0, o, m)
                        .narrow(1, 0, j as i64 + 1)
                        .argmax(1, false)
                        .eq(j as i64)
                        .to_kind(Kind::Double)
                        .mean(Kind::Double)
                        .double_value(&[])
                })
                .collect()
        })
    }

    /// Accuracy on class `c`'s test images.
    fn class_accuracy(&self, learner: &dyn ClassLearner, c: usize) -> f64 {
        tch::no_grad(|| {
            learner
                .scores(&self.all.narrow(0, self.offsets[c], self.sizes[c]))
                .argmax(1, false)
                .eq_tensor(&self.labels.narrow(0, self.offsets[c], self.sizes[c]))
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        })
    }

    /// The test features of classes `from..to`.
    fn classes(&self, from: usize, to: usize) -> Tensor {
        let end = self.offsets[to - 1] + self.sizes[to - 1];
        self.all
            .narrow(0, self.offsets[from], end - self.offsets[from])
    }
}

fn flagged(learner: &dyn ClassLearner, x: &Tensor) -> f64 {
    tch::no_grad(|| {
        learner
            .unknown(x)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    })
}

/// The hook of [`run_class_stream_refreshing`]: `(classes learnt, learner)` → new
/// features for the whole stream, or `None` to keep them.
pub type Refresh<'a> = dyn FnMut(usize, &dyn ClassLearner) -> Result<Option<Features>> + 'a;

/// [`run_class_stream`] with a representation that may change along the stream: after
/// class `c` is learnt (and its learning speed measured), `refresh(c + 1, learner)`
/// may return new features for the whole stream (the representation was
/// consolidated); the learner then relearns classes `0..=c` from their new training
/// features ([`ClassLearner::relearn`]) before the stream's row `c` is measured.
/// `class_done(record, learner)` follows each class (checkpoints). The run starts
/// after the classes `start` holds (a resumed run: `learner` and `features` restored
/// to that point), or from the beginning with `ClassRunRecord::default()`.
pub fn run_class_stream_refreshing(
    learner: &mut dyn ClassLearner,
    mut features: Features,
    start: ClassRunRecord,
    refresh: &mut Refresh<'_>,
    class_done: &mut dyn FnMut(&ClassRunRecord, &dyn ClassLearner) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ClassRunRecord> {
    let t = features.train.len();
    if t == 0 || features.test.len() != t {
        return Err(Error::config(
            "class stream",
            format!("{t} training and {} test classes", features.test.len()),
            "needs the same number of classes, at least one",
        ));
    }
    let clock = std::time::Instant::now();
    let points = protocol_points(t);
    let first = start.rows.len();
    if first > t || start.speed.len() != first || learner.known() != first {
        return Err(Error::config(
            "resumed record",
            format!("{first} classes, the learner {}", learner.known()),
            format!("must agree, and the stream has {t}"),
        ));
    }
    let mut test = TestSet::new(&features.test);
    let mut record = ClassRunRecord {
        points: points.clone(),
        ..start
    };
    let wall_before = record.wall_s;
    for c in first..t {
        let train_c = &features.train[c];
        let n = train_c.size()[0] as usize;
        let mut s = vec![SpeedPoint {
            asked: 0,
            seen: 0,
            accuracy: 0.0,
        }];
        for i in 0..n {
            learner.learn(&train_c.get(i as i64), c)?;
            let seen = i + 1;
            let due: Vec<usize> = [1, 5, n]
                .into_iter()
                .filter(|&k| seen == k.min(n) && !s.iter().any(|p| p.asked == k))
                .collect();
            if !due.is_empty() {
                let accuracy = test.class_accuracy(learner, c);
                s.extend(due.into_iter().map(|asked| SpeedPoint {
                    asked,
                    seen,
                    accuracy,
                }));
            }
        }
        record.speed.push(s);
        if let Some(new) = refresh(c + 1, learner)? {
            if new.train.len() != t || new.test.len() != t {
                return Err(Error::config(
                    "refreshed features",
                    format!("{} and {} classes", new.train.len(), new.test.len()),
                    format!("the stream has {t}"),
                ));
            }
            features = new;
            test = TestSet::new(&features.test);
            learner.relearn(&features.train[..=c])?;
        }
        let r = test.row(learner, c + 1, t);
        if points.contains(&(c + 1)) {
            let known_n = test.offsets[c] + test.sizes[c];
            let total: f64 = (0..=c).map(|j| r[j] * test.sizes[j] as f64).sum();
            record.accuracy_at.push(total / known_n as f64);
            let novel = (c + 1 < t).then(|| {
                let end = (c + 1 + NOVEL_CLASSES).min(t);
                flagged(learner, &test.classes(c + 1, end))
            });
            record.unknown.push(UnknownRates {
                classes: c + 1,
                known_flagged: flagged(learner, &test.classes(0, c + 1)),
                novel_flagged: novel,
            });
        }
        record.rows.push(r);
        if c + 1 == t {
            record.final_own_labels = test.own_label_row(learner, t);
        }
        record.wall_s = wall_before + clock.elapsed().as_secs_f64();
        class_done(&record, learner)?;
        progress(c + 1, t);
    }
    Ok(record)
}

/// What the `state.json` of a class-stream checkpoint holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassSaved {
    /// The run's configuration; a resume must match it.
    pub config: serde_json::Value,
    /// Everything measured so far.
    pub record: ClassRunRecord,
    /// The JSON part of the learner's state.
    pub learner: serde_json::Value,
    /// The caller's own JSON state (generator, consolidation log).
    pub extra: serde_json::Value,
}

/// A restored class-stream checkpoint: the record to resume from, and the caller's
/// tensors (the encoder) and JSON.
#[derive(Debug)]
pub struct ClassRestored {
    /// The record to resume from.
    pub record: ClassRunRecord,
    /// The caller's tensors.
    pub tensors: Vec<(String, Tensor)>,
    /// The caller's JSON state.
    pub extra: serde_json::Value,
}

/// Writes a checkpoint of a class stream after `record.rows.len()` classes: the
/// learner's state, and the caller's `tensors` (e.g. a consolidated encoder) and
/// `extra` JSON.
pub fn save_class_checkpoint(
    ck: &Checkpoints,
    config: &serde_json::Value,
    record: &ClassRunRecord,
    learner: &dyn ClassLearner,
    tensors: Vec<(String, Tensor)>,
    extra: serde_json::Value,
) -> Result<()> {
    let state = learner.state();
    let saved = ClassSaved {
        config: config.clone(),
        record: record.clone(),
        learner: state.meta,
        extra,
    };
    ck.write_step(
        record.rows.len(),
        &[("learner", state.tensors), ("caller", tensors)],
        &saved,
    )
}

/// Reads a class-stream checkpoint written for `config` and restores `learner` to it.
pub fn restore_class_checkpoint(
    ck: &Checkpoints,
    config: &serde_json::Value,
    learner: &mut dyn ClassLearner,
) -> Result<ClassRestored> {
    let saved: ClassSaved = ck.read_state()?;
    ck.check_config(&saved.config, config)?;
    let k = saved.record.rows.len();
    learner.restore(StrategyState {
        tensors: ck.read_group("learner", k)?,
        meta: saved.learner,
    })?;
    Ok(ClassRestored {
        record: saved.record,
        tensors: ck.read_group("caller", k)?,
        extra: saved.extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn prototypes_are_running_means_and_never_move_for_other_classes() {
        let mut m = PrototypeMemory::new(1.0).unwrap();
        m.learn(&t(&[0.0, 0.0]), 0).unwrap();
        m.learn(&t(&[2.0, 0.0]), 0).unwrap();
        m.learn(&t(&[10.0, 10.0]), 1).unwrap();
        let p: Vec<f32> = m.prototypes().unwrap().reshape([-1]).try_into().unwrap();
        assert_eq!(p, [1.0, 0.0, 10.0, 10.0]);
        // Out-of-sample distance of the second example of class 0: ‖(2,0) − (0,0)‖² = 4,
        // from a prototype of one example: recorded as 4 · 1/2.
        assert_eq!(m.threshold(), 2.0);
        let x = Tensor::from_slice(&[1.5f32, 0.0, 9.0, 9.0, 50.0, 50.0]).view([3, 2]);
        let pred: Vec<i64> = m.scores(&x).argmax(1, false).try_into().unwrap();
        assert_eq!(pred, [0, 1, 1]);
        let unk: Vec<bool> = m.unknown(&x).try_into().unwrap();
        assert_eq!(unk, [false, false, true]);
        assert!(m.learn(&t(&[0.0, 0.0]), 5).is_err());
        assert!(PrototypeMemory::new(0.0).is_err());
    }

    #[test]
    fn the_online_head_learns_and_the_record_is_consistent() {
        // Three well-separated classes in 2-D, 4 training and 2 test points each.
        let centre = |c: usize| [(c as f32) * 5.0, 5.0 - c as f32 * 2.0];
        let pts = |c: usize, n: usize, off: f32| {
            let [a, b] = centre(c);
            let v: Vec<f32> = (0..n)
                .flat_map(|i| [a + off * i as f32, b - off * i as f32])
                .collect();
            Tensor::from_slice(&v).view([n as i64, 2])
        };
        let train: Vec<Tensor> = (0..3).map(|c| pts(c, 4, 0.1)).collect();
        let test: Vec<Tensor> = (0..3).map(|c| pts(c, 2, 0.05)).collect();
        for learner in [
            Box::new(PrototypeMemory::new(0.95).unwrap()) as Box<dyn ClassLearner>,
            Box::new(OnlineHead::new(2, 3, 0.5).unwrap()),
        ] {
            let mut learner = learner;
            let r = run_class_stream(learner.as_mut(), &train, &test, &mut |_, _| {}).unwrap();
            assert_eq!(r.points, [3]);
            assert_eq!(r.rows.len(), 3);
            assert_eq!(r.rows[0][1], 0.0, "unknown classes score zero");
            assert_eq!(
                r.speed[2].iter().map(|p| p.asked).collect::<Vec<_>>(),
                [0, 1, 5, 4]
            );
            let m = r.matrix().unwrap().metrics();
            // The newest class is always learnt; the prototypes keep the old ones too.
            assert_eq!(r.rows[2][2], 1.0, "{} {:?}", learner.name(), r.rows);
            if learner.name() == "perennial" {
                assert_eq!(m.acc, 1.0, "{:?}", r.rows);
                assert_eq!(m.bwt, Some(0.0));
            }
            assert_eq!(r.accuracy_at.len(), 1);
            assert!((r.accuracy_at[0] - m.acc).abs() < 1e-12);
        }
        assert_eq!(protocol_points(600), [10, 50, 100, 200, 600]);
        assert_eq!(protocol_points(120), [10, 50, 100, 120]);
        assert_eq!(protocol_points(5), [5]);
    }

    /// An old class that a newer one crowds out loses GEM backward transfer but not
    /// backward transfer within its own label set: its prototype never moved.
    #[test]
    fn own_label_bwt_counts_only_what_was_lost() {
        let t = |v: &[f32]| Tensor::from_slice(v).view([-1, 1]);
        let train = vec![t(&[0.0, 0.0]), t(&[1.0, 1.0])];
        // Class 0's test point at 0.6 is nearer class 1's prototype.
        let test = vec![t(&[0.4, 0.6]), t(&[1.0, 1.1])];
        let mut m = PrototypeMemory::new(0.95).unwrap();
        let r = run_class_stream(&mut m, &train, &test, &mut |_, _| {}).unwrap();
        assert_eq!(r.rows, [[1.0, 0.0], [0.5, 1.0]]);
        assert_eq!(r.matrix().unwrap().metrics().bwt, Some(-0.5));
        assert_eq!(r.final_own_labels, [1.0, 1.0]);
        assert_eq!(r.own_label_bwt(), Some(0.0));
        let cut = ClassRunRecord {
            final_own_labels: Vec::new(),
            ..r.clone()
        };
        assert_eq!(
            cut.own_label_bwt(),
            None,
            "not measured: the stream is unfinished"
        );
        // Three classes: class 1's test point at 1.55 is lost to class 2 (at 2) within
        // the full label set and kept among classes 0..=1.
        let train = vec![t(&[0.0]), t(&[1.0]), t(&[2.0])];
        let test = vec![t(&[0.0]), t(&[1.55]), t(&[2.0])];
        let mut m = PrototypeMemory::new(0.95).unwrap();
        let r = run_class_stream(&mut m, &train, &test, &mut |_, _| {}).unwrap();
        assert_eq!(r.rows[2], [1.0, 0.0, 1.0]);
        assert_eq!(r.final_own_labels, [1.0, 1.0, 1.0]);
        assert_eq!(r.matrix().unwrap().metrics().bwt, Some(-0.5));
        assert_eq!(r.own_label_bwt(), Some(0.0));
    }

    /// Twenty Gaussian classes in 16-D, 15 training and 10 test points each, learnt
    /// one class at a time: the plain online head ends up predicting its newest
    /// classes, La-MAML's replayed meta-loss keeps the old ones (higher accuracy and
    /// backward transfer), and a La-MAML learner is deterministic per seed.
    /// `classes` Gaussian classes in 16-D (means N(0, 4I), spread 0.5), 15 training
    /// and 10 test points each.
    fn gaussian_classes(classes: usize, seed: u64) -> (Vec<Tensor>, Vec<Tensor>) {
        let mut rng = crate::data::Rng::new(seed);
        // Box–Muller from the uniform generator.
        let mut normal = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let (u, v) = (rng.uniform().max(1e-12), rng.uniform());
                    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                })
                .collect()
        };
        let dim = 16;
        let means: Vec<Vec<f32>> = (0..classes).map(|_| normal(dim)).collect();
        let mut points = |c: usize, n: usize| {
            let noise = normal(n * dim);
            let v: Vec<f32> = (0..n * dim)
                .map(|i| 2.0 * means[c][i % dim] + 0.5 * noise[i])
                .collect();
            Tensor::from_slice(&v).view([n as i64, dim as i64])
        };
        let train: Vec<Tensor> = (0..classes).map(|c| points(c, 15)).collect();
        let test: Vec<Tensor> = (0..classes).map(|c| points(c, 10)).collect();
        (train, test)
    }

    /// Twenty Gaussian classes in 16-D, learnt one class at a time: the plain online
    /// head ends up predicting its newest classes, La-MAML's replayed meta-loss keeps
    /// the old ones (higher accuracy and backward transfer), and a La-MAML learner is
    /// deterministic per seed.
    #[test]
    fn lamaml_head_forgets_less_than_the_online_head() {
        let dim = 16;
        let (train, test) = gaussian_classes(20, 11);
        let mut head = OnlineHead::new(dim, 20, 0.15).unwrap();
        let h = run_class_stream(&mut head, &train, &test, &mut |_, _| {}).unwrap();
        let run = || {
            let mut l = LaMamlHead::new(dim, 20, LaMamlConfig::default(), 3).unwrap();
            run_class_stream(&mut l, &train, &test, &mut |_, _| {}).unwrap()
        };
        let l = run();
        let (hm, lm) = (h.matrix().unwrap().metrics(), l.matrix().unwrap().metrics());
        assert!(lm.acc > hm.acc + 0.2, "lamaml {lm:?} head {hm:?}");
        assert!(
            lm.bwt.unwrap() > hm.bwt.unwrap(),
            "lamaml {lm:?} head {hm:?}"
        );
        assert_eq!(run().rows, l.rows);
        let bad = LaMamlConfig {
            glances: 0,
            ..LaMamlConfig::default()
        };
        assert!(LaMamlHead::new(dim, 20, bad, 3).is_err());
    }

    /// A refreshed representation: after the refresh, the memory's prototypes are the
    /// means of the new features, and later classes are learnt on them.
    #[test]
    fn a_refreshed_representation_is_relearnt() {
        let class = |c: f32| Tensor::from_slice(&[c, 0.0, c + 1.0, 0.0]).view([2, 2]);
        let train: Vec<Tensor> = (0..3).map(|c| class(10.0 * c as f32)).collect();
        let test: Vec<Tensor> = (0..3).map(|c| class(10.0 * c as f32)).collect();
        let scaled = |v: &[Tensor]| v.iter().map(|x| x * 2.0).collect::<Vec<_>>();
        let mut calls = Vec::new();
        let mut m = PrototypeMemory::new(1.0).unwrap();
        let features = Features {
            train: train.iter().map(Tensor::shallow_clone).collect(),
            test: test.iter().map(Tensor::shallow_clone).collect(),
        };
        let r = run_class_stream_refreshing(
            &mut m,
            features,
            ClassRunRecord::default(),
            &mut |known, l| {
                calls.push((known, l.known()));
                Ok((known == 2).then(|| Features {
                    train: scaled(&train),
                    test: scaled(&test),
                }))
            },
            &mut |_, _| Ok(()),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(calls, [(1, 1), (2, 2), (3, 3)]);
        let p: Vec<f32> = m.prototypes().unwrap().reshape([-1]).try_into().unwrap();
        assert_eq!(p, [1.0, 0.0, 21.0, 0.0, 41.0, 0.0]);
        assert_eq!(r.rows[2], [1.0, 1.0, 1.0]);
        // A learner that cannot relearn says so.
        let mut head = OnlineHead::new(2, 3, 0.1).unwrap();
        let features = Features {
            train: train.iter().map(Tensor::shallow_clone).collect(),
            test: test.iter().map(Tensor::shallow_clone).collect(),
        };
        let err = run_class_stream_refreshing(
            &mut head,
            features,
            ClassRunRecord::default(),
            &mut |_, _| {
                Ok(Some(Features {
                    train: scaled(&train),
                    test: scaled(&test),
                }))
            },
            &mut |_, _| Ok(()),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("relearn"), "{err}");
    }

    /// A run killed after a checkpoint and resumed from it ends with the record of an
    /// uninterrupted run, for every learner.
    #[test]
    fn a_class_stream_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one() {
        let (train, test) = gaussian_classes(12, 7);
        type Make = fn() -> Box<dyn ClassLearner>;
        let makers: [Make; 3] = [
            || Box::new(PrototypeMemory::new(0.9).unwrap()),
            || Box::new(OnlineHead::new(16, 12, 0.1).unwrap()),
            || Box::new(LaMamlHead::new(16, 12, LaMamlConfig::default(), 2).unwrap()),
        ];
        let features = || Features {
            train: train.iter().map(Tensor::shallow_clone).collect(),
            test: test.iter().map(Tensor::shallow_clone).collect(),
        };
        let config = serde_json::json!({"test": "resume"});
        for make in makers {
            let mut straight = make();
            let s = run_class_stream(straight.as_mut(), &train, &test, &mut |_, _| {}).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let ck = Checkpoints::new(dir.path());
            let mut learner = make();
            let killed = run_class_stream_refreshing(
                learner.as_mut(),
                features(),
                ClassRunRecord::default(),
                &mut |_, _| Ok(None),
                &mut |r, l| {
                    if r.rows.len() % 4 == 0 {
                        let extra = serde_json::json!({"classes": r.rows.len()});
                        save_class_checkpoint(&ck, &config, r, l, Vec::new(), extra)?;
                    }
                    if r.rows.len() == 10 {
                        return Err(Error::config("kill", 10, "simulated"));
                    }
                    Ok(())
                },
                &mut |_, _| {},
            );
            assert!(killed.is_err());
            let mut learner = make();
            let restored = restore_class_checkpoint(&ck, &config, learner.as_mut()).unwrap();
            assert_eq!(restored.record.rows.len(), 8, "{}", learner.name());
            assert_eq!(restored.extra["classes"], 8);
            let mut r = run_class_stream_refreshing(
                learner.as_mut(),
                features(),
                restored.record,
                &mut |_, _| Ok(None),
                &mut |_, _| Ok(()),
                &mut |_, _| {},
            )
            .unwrap();
            r.wall_s = s.wall_s;
            assert_eq!(r, s, "{}", learner.name());
            let other = serde_json::json!({"test": "other"});
            let err = restore_class_checkpoint(&ck, &other, make().as_mut()).unwrap_err();
            assert!(err.to_string().contains("test"), "{err}");
        }
    }
}
