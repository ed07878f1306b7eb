//! [`LifelongLearner`]: Perennial's learner as a library type.
//!
//! A meta-learned encoder, one prototype per class under the encoder's distance, an
//! *unknown* flag, and meta-consolidation of the encoder on the classes it has met,
//! scheduled by a policy the learner owns. It learns a new or a known class from one
//! or many examples at any time, predicts at once, and saves and loads atomically.
//!
//! ```no_run
//! use perennial::lifelong::{LearnerConfig, LifelongLearner};
//!
//! fn main() -> perennial::Result<()> {
//!     // The embedding of a trained encoder run (`perennial train protonet --splits lake ...`).
//!     let mut learner =
//!         LifelongLearner::from_run("runs/lake-60w5s-3k".as_ref(), LearnerConfig::default())?;
//!     // Teach a class from one image or many, at any time (PNG, JPEG, ...; any size).
//!     let alpha = learner.read_images(&["me/alpha-1.png".as_ref(), "me/alpha-2.png".as_ref()])?;
//!     learner.learn("alpha", &alpha)?;
//!     let beta = learner.read_images(&["me/beta-1.png".as_ref()])?;
//!     learner.learn("beta", &beta)?;
//!     // Predict: label, probability, top classes, and whether the input is unknown.
//!     for p in learner.predict(&learner.read_images(&["me/query.png".as_ref()])?)? {
//!         println!("{} ({:.2}) unknown: {} {:?}", p.label, p.probability, p.unknown, p.top);
//!     }
//!     // The learner's own policy says when to consolidate its representation.
//!     learner.maybe_consolidate()?;
//!     learner.save("my-learner".as_ref())?; // atomic; LifelongLearner::load resumes it
//!     Ok(())
//! }
//! ```
//!
//! Consolidation can also run away from the learner (the service does it on a worker
//! thread): [`LifelongLearner::consolidation_job`] takes a copy of what it needs,
//! [`ConsolidationJob::run`] trains the copy, and [`LifelongLearner::install`] swaps
//! the result in as the next representation version, relearning every class's
//! prototype, those taught in the meantime included.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Kind, Tensor};

use super::consolidate::{consolidate_near, nearest_classes, ConsolidationConfig};
use super::encoder::{self, Encoder, EncoderSpec, Encoding};
use super::examples::{ClassRows, Classify, ExampleIndex, ExampleStore};
use super::policy::{ConsolidationPolicy, Due, PolicyState};
use super::prototypes::{indexed, PrototypeMemory};
use super::run::{Learner, View};
use super::strategy::StrategyState;
use crate::data::rng::streams;
use crate::data::stream::Part;
use crate::data::Rng;
use crate::error::{Error, Result};
use crate::nn::params::{load_named, save_named};
use crate::nn::Distance;

/// The settings of a [`LifelongLearner`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LearnerConfig {
    /// Features are averaged over translations of up to this many pixels (0: none).
    pub shift_radius: usize,
    /// The unknown threshold is this quantile of out-of-sample distances, in `(0, 1]`.
    pub unknown_quantile: f64,
    /// Classes listed in each prediction's `top`.
    pub top: usize,
    /// The seed of consolidation's episodes.
    pub seed: u64,
    /// The episodes of a consolidation.
    pub consolidation: ConsolidationConfig,
    /// Adam's learning rate in consolidation.
    pub consolidation_lr: f64,
    /// When to consolidate.
    pub policy: ConsolidationPolicy,
    /// How predictions are made: by prototypes (the default) or by the k nearest
    /// taught examples (the example-level memory, [`super::examples`]).
    #[serde(default)]
    pub classify: Classify,
}

impl Default for LearnerConfig {
    /// The settings of Perennial's Omniglot results: 1-pixel shift averaging, the 0.95
    /// quantile, consolidation every 50 new classes with 120 episodes at lr 1e-4.
    fn default() -> Self {
        LearnerConfig {
            shift_radius: 1,
            unknown_quantile: 0.95,
            top: 5,
            seed: 0,
            consolidation: ConsolidationConfig::default(),
            consolidation_lr: 1e-4,
            policy: ConsolidationPolicy::default(),
            classify: Classify::Prototypes,
        }
    }
}

impl LearnerConfig {
    /// The same settings with another consolidation policy.
    pub fn with_policy(mut self, policy: ConsolidationPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same settings with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The same settings with another shift radius.
    pub fn with_shift_radius(mut self, radius: usize) -> Self {
        self.shift_radius = radius;
        self
    }

    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        if self.top == 0 {
            return Err(Error::config("top", 0, "must be at least 1"));
        }
        if !(self.consolidation_lr > 0.0 && self.consolidation_lr.is_finite()) {
            return Err(Error::config(
                "--consolidate-lr",
                self.consolidation_lr,
                "must be positive",
            ));
        }
        self.policy.validate()?;
        self.classify.validate()?;
        if self.policy.is_on() {
            self.consolidation.validate(None)?;
        }
        Ok(())
    }
}

/// One class among a prediction's best.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ranked {
    /// The class.
    pub label: String,
    /// Its probability (softmax of the distance's logits).
    pub probability: f64,
}

/// The learner's answer for one input.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    /// The nearest class.
    pub label: String,
    /// Its probability.
    pub probability: f64,
    /// The best classes, most probable first (at most [`LearnerConfig::top`]).
    pub top: Vec<Ranked>,
    /// Whether the input lies farther from every class than the learner has seen its
    /// own classes' new examples lie: probably something it has not been taught.
    pub unknown: bool,
    /// The nearest corrected distance over the unknown threshold (above 1: unknown;
    /// 0 while the threshold is not calibrated).
    pub unknown_score: f64,
}

/// A class the learner knows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassInfo {
    /// Its label.
    pub label: String,
    /// The examples it was taught.
    pub examples: usize,
}

/// What [`LifelongLearner::learn`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Learnt {
    /// The class.
    pub label: String,
    /// Whether it was new.
    pub new_class: bool,
    /// Examples added.
    pub added: usize,
    /// Examples of the class now.
    pub examples: usize,
}

/// One consolidation, as the learner's log keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsolidationRecord {
    /// The representation version it produced.
    pub version: u64,
    /// The classes known when it started.
    pub classes: usize,
    /// Why it ran.
    pub reason: Due,
    /// The mean query loss of its episodes.
    pub loss: f64,
    /// The mean query accuracy of its episodes.
    pub accuracy: Option<f64>,
    /// Seconds it trained.
    pub seconds: f64,
}

/// The format of a saved learner this version writes and reads.
pub const FORMAT: u64 = 1;

/// What a saved learner's `learner.json` holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    format: u64,
    perennial: String,
    encoder: EncoderSpec,
    config: LearnerConfig,
    labels: Vec<String>,
    memory: serde_json::Value,
    rng: Rng,
    policy: PolicyState,
    consolidations: Vec<ConsolidationRecord>,
    version: u64,
    /// Each class's stable id (the example store's value); absent in older saves.
    #[serde(default)]
    class_ids: Vec<i64>,
    /// The id the next new class gets.
    #[serde(default)]
    next_class_id: i64,
    /// The root of the attached example store, if any.
    #[serde(default)]
    example_store: Option<PathBuf>,
}

/// Perennial's lifelong learner: see the [module documentation](self).
#[derive(Debug)]
pub struct LifelongLearner {
    config: LearnerConfig,
    encoding: Encoding,
    trainable: bool,
    labels: Vec<String>,
    index: HashMap<String, usize>,
    memory: PrototypeMemory,
    /// Every class's examples as taught, `[n_c, ...]`.
    examples: Vec<Tensor>,
    rng: Rng,
    policy: PolicyState,
    log: Vec<ConsolidationRecord>,
    version: u64,
    /// Each class's stable id (a forgotten class's id is never reused).
    class_ids: Vec<i64>,
    next_class_id: i64,
    /// The example-level memory: present under kNN classification or with a store.
    example_index: Option<ExampleIndex>,
}

impl LifelongLearner {
    /// A learner that knows no class yet, on `encoder`. A consolidation policy that
    /// can fire needs an encoder that trains further (a ProtoNet's).
    pub fn new(mut encoder: Box<dyn Encoder>, config: LearnerConfig) -> Result<Self> {
        config.validate()?;
        let trainable = encoder.trainable().is_some();
        if config.policy.is_on() && !trainable {
            return Err(Error::config(
                "consolidation policy",
                encoder.algorithm().to_string(),
                "meta-consolidation trains the encoder, and this one stays frozen (only a \
                 ProtoNet's embedding trains further); use a policy that never \
                 consolidates (--consolidate-every 0)",
            ));
        }
        let memory = PrototypeMemory::new(encoder.distance(), config.unknown_quantile)?;
        let encoding = Encoding::new(encoder, config.shift_radius)?;
        if let (true, Some(side)) = (config.policy.is_on(), encoding.encoder().image_side()) {
            let jitter = config.consolidation.jitter;
            encoder::at_most_a_quarter("--consolidate-jitter", jitter, side)?;
        }
        let config_classify = config.classify;
        Ok(LifelongLearner {
            rng: Rng::for_item(config.seed, streams::CONSOLIDATION, 0),
            config,
            encoding,
            trainable,
            labels: Vec::new(),
            index: HashMap::new(),
            memory,
            examples: Vec::new(),
            policy: PolicyState::default(),
            log: Vec::new(),
            version: 0,
            class_ids: Vec::new(),
            next_class_id: 0,
            example_index: match config_classify {
                Classify::Knn { .. } => Some(ExampleIndex::Tensors(Vec::new())),
                Classify::Prototypes => None,
            },
        })
    }

    /// A learner on the embedding of the trained run in `dir` (any run whose learner
    /// has an embedding: [`super::encoder::open_run`]).
    pub fn from_run(dir: &Path, config: LearnerConfig) -> Result<Self> {
        let encoder = encoder::open_run(dir, config.consolidation_lr)?;
        Self::new(encoder, config)
    }

    /// The settings.
    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    /// The encoder.
    pub fn encoder(&self) -> &dyn Encoder {
        self.encoding.encoder()
    }

    /// The distance prototypes are compared under: the encoder's.
    pub fn distance(&self) -> Distance {
        self.memory.distance()
    }

    /// The side of the square images the learner takes (`None`: an encoder of
    /// features, which takes any `[n, ...]`).
    pub fn image_side(&self) -> Option<usize> {
        self.encoder().image_side()
    }

    /// The number of classes known.
    pub fn known(&self) -> usize {
        self.labels.len()
    }

    /// The classes known, in the order they were first taught.
    pub fn classes(&self) -> Vec<ClassInfo> {
        self.labels
            .iter()
            .zip(self.memory.counts())
            .map(|(l, &n)| ClassInfo {
                label: l.clone(),
                examples: n,
            })
            .collect()
    }

    /// The representation's version: 0 for the encoder as loaded, one more after each
    /// consolidation. Features computed under one version are stale under the next.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the representation version, for a learner built anew on a later version's
    /// encoder (the service rebuilds its learner on each version). Set it before
    /// attaching an example store: the store of version `v` is `ROOT/v{v}`.
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// The consolidations so far.
    pub fn consolidations(&self) -> &[ConsolidationRecord] {
        &self.log
    }

    /// The prototype memory.
    pub fn memory(&self) -> &PrototypeMemory {
        &self.memory
    }

    /// The image side, or an error for an encoder of features.
    fn side(&self) -> Result<usize> {
        self.image_side().ok_or_else(|| {
            Error::config(
                "encoder",
                self.encoder().algorithm(),
                "does not take images",
            )
        })
    }

    /// Reads image files (PNG, JPEG, ...; any size, converted as Omniglot's are: grey
    /// levels to ink, resized to the learner's side) into a batch `[n, 1, side, side]`.
    pub fn read_images(&self, paths: &[&Path]) -> Result<Tensor> {
        let side = self.side()?;
        let mut pixels = Vec::with_capacity(paths.len() * side * side);
        for p in paths {
            pixels.extend(crate::data::folder::load_image(p, side)?);
        }
        self.images(&pixels)
    }

    /// A batch `[n, 1, side, side]` of images given as their pixels, image after image
    /// (ink 1, paper 0).
    pub fn images(&self, pixels: &[f32]) -> Result<Tensor> {
        let side = self.side()?;
        let per = side * side;
        if pixels.is_empty() || !pixels.len().is_multiple_of(per) {
            return Err(Error::config(
                "images",
                format!("{} pixels", pixels.len()),
                format!("must be a positive multiple of {side}x{side}"),
            ));
        }
        let n = (pixels.len() / per) as i64;
        self.checked(&Tensor::from_slice(pixels).view([n, 1, side as i64, side as i64]))
    }

    /// Inputs checked and shaped: `[n, 1, side, side]` (or `[n, side, side]`) floats
    /// for an image encoder, at least one, all finite.
    fn checked(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let bad = |why: String| Error::config("examples", format!("{size:?}"), why);
        let x = match self.image_side() {
            Some(s) => {
                let s = s as i64;
                match size.as_slice() {
                    [_, 1, h, w] if (*h, *w) == (s, s) => x.shallow_clone(),
                    [n, h, w] if (*h, *w) == (s, s) => x.view([*n, 1, s, s]),
                    _ => return Err(bad(format!("images must be [n, 1, {s}, {s}]"))),
                }
            }
            None if size.len() >= 2 => x.shallow_clone(),
            None => return Err(bad("inputs must be [n, ...]".into())),
        };
        if x.size()[0] == 0 {
            return Err(bad("at least one example is needed".into()));
        }
        let x = x.to_kind(Kind::Float);
        if !bool::try_from(x.isfinite().all()).unwrap_or(false) {
            return Err(bad("holds values that are not finite".into()));
        }
        Ok(x)
    }

    /// Features `[n, d]` of inputs `[n, ...]` under the current representation.
    pub fn encode(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.encoding.features(x))
    }

    /// Learns `examples` (`[n, 1, side, side]`, one or many) of class `label`, a new
    /// class or a known one. What is learnt is kept (for consolidation) and never
    /// changes another class.
    pub fn learn(&mut self, label: &str, examples: &Tensor) -> Result<Learnt> {
        check_label(label)?;
        let x = self.checked(examples)?;
        let f = self.encode(&x);
        self.learn_encoded(label, &f, &x)
    }

    /// [`LifelongLearner::learn`] for examples already encoded: `features` must be
    /// `self.encode(examples)` under the current [`LifelongLearner::version`] (a stream
    /// that encodes a class's images once and teaches them one at a time).
    pub fn learn_encoded(
        &mut self,
        label: &str,
        features: &Tensor,
        examples: &Tensor,
    ) -> Result<Learnt> {
        check_label(label)?;
        let n = features.size()[0];
        if examples.size()[0] != n || n == 0 {
            return Err(Error::config(
                "examples",
                format!("{} features, {} examples", n, examples.size()[0]),
                "need one feature row per example, at least one",
            ));
        }
        let (class, new_class) = match self.index.get(label) {
            Some(&c) => (c, false),
            None => (self.labels.len(), true),
        };
        let id = match new_class {
            true => self.next_class_id,
            false => self.class_ids[class],
        };
        // The index first: a failed write leaves the learner as it was.
        if let Some(ix) = &mut self.example_index {
            ix.add(class, id, label, features)?;
        }
        let watch = !new_class && self.config.policy.watches_rates();
        for i in 0..n {
            let f = features.get(i);
            if watch {
                let a = self.memory.assess(&f.view([1, -1]))[0];
                self.policy
                    .example(&self.config.policy, a.unknown, a.nearest != Some(class));
            }
            self.memory.learn(&f, class)?;
        }
        let x = examples.detach().to_kind(Kind::Float);
        if new_class {
            self.labels.push(label.to_string());
            self.index.insert(label.to_string(), class);
            self.examples.push(x.copy());
            self.class_ids.push(id);
            self.next_class_id += 1;
            self.policy.new_class();
        } else {
            self.examples[class] = Tensor::cat(&[&self.examples[class], &x], 0);
        }
        Ok(Learnt {
            label: label.to_string(),
            new_class,
            added: n as usize,
            examples: self.memory.counts()[class],
        })
    }

    /// Forgets class `label` and its examples; `false` if it was not known.
    pub fn forget(&mut self, label: &str) -> Result<bool> {
        let Some(class) = self.index.get(label).copied() else {
            return Ok(false);
        };
        if let Some(ix) = &mut self.example_index {
            ix.forget(class, self.class_ids[class])?;
        }
        self.memory.forget(class)?;
        self.class_ids.remove(class);
        self.labels.remove(class);
        let _ = self.examples.remove(class);
        self.index = index_of(&self.labels);
        Ok(true)
    }

    /// Predictions for `examples` (`[n, 1, side, side]`), one per example, in order.
    pub fn predict(&self, examples: &Tensor) -> Result<Vec<Prediction>> {
        let x = self.checked(examples)?;
        self.predict_encoded(&self.encode(&x))
    }

    /// [`LifelongLearner::predict`] for features from [`LifelongLearner::encode`].
    pub fn predict_encoded(&self, features: &Tensor) -> Result<Vec<Prediction>> {
        if self.known() == 0 {
            return Err(Error::config(
                "learner",
                "no classes",
                "it knows no class yet: teach one first",
            ));
        }
        let probs = self
            .scores(features)
            .to_kind(Kind::Double)
            .softmax(1, Kind::Double);
        let k = self.config.top.min(self.known()) as i64;
        let (p, idx) = probs.topk(k, 1, true, true);
        let p: Vec<f64> = Vec::try_from(p.reshape([-1])).map_err(Error::Torch)?;
        let idx: Vec<i64> = Vec::try_from(idx.reshape([-1])).map_err(Error::Torch)?;
        let assessed = self.memory.assess(features);
        Ok((0..features.size()[0] as usize)
            .map(|i| {
                let top: Vec<Ranked> = (0..k as usize)
                    .map(|j| Ranked {
                        label: self.labels[idx[i * k as usize + j] as usize].clone(),
                        probability: p[i * k as usize + j],
                    })
                    .collect();
                Prediction {
                    label: top[0].label.clone(),
                    probability: top[0].probability,
                    top,
                    unknown: assessed[i].unknown,
                    unknown_score: assessed[i].score,
                }
            })
            .collect())
    }

    /// Scores `[n, known]` of features (the highest is the prediction), class `c` in
    /// column `c` (the order of [`LifelongLearner::classes`]): the prototypes' logits,
    /// or under [`Classify::Knn`] the soft vote of the `k` nearest examples (each
    /// class the log-sum-exp of its examples' logits among them, `-inf` for a class
    /// with none).
    pub fn scores(&self, features: &Tensor) -> Tensor {
        match (self.config.classify, &self.example_index) {
            (Classify::Knn { k }, Some(ix)) => {
                ix.knn_scores(features, k, self.distance(), &self.class_ids)
            }
            _ => self.memory.scores(features),
        }
    }

    /// Whether each of features `[n, d]` is unknown (`[n]` booleans).
    pub fn unknown(&self, features: &Tensor) -> Tensor {
        self.memory.unknown(features)
    }

    /// The classes that can enter a consolidation episode (enough examples).
    fn eligible(&self) -> Vec<usize> {
        let need = self.config.consolidation.examples_per_class();
        (0..self.known())
            .filter(|&c| self.memory.counts()[c] >= need)
            .collect()
    }

    /// Why a consolidation is due now by the learner's policy, if it is (never on a
    /// frozen encoder, nor before two classes have enough examples for an episode).
    pub fn due(&self) -> Option<Due> {
        if !self.trainable || !self.config.policy.is_on() {
            return None;
        }
        let due = self.config.policy.due(&self.policy)?;
        (self.eligible().len() >= 2).then_some(due)
    }

    /// Sets the count of classes learnt since the last consolidation (a learner
    /// rebuilt by replaying its examples counts every class as new otherwise).
    pub fn set_new_classes(&mut self, n: usize) {
        self.policy.new_classes = n;
    }

    /// The recent unknown and confusion rates the policy watches.
    pub fn recent_rates(&self) -> (f64, f64) {
        self.policy.rates()
    }

    /// Consolidates if the policy says so; the record of what ran.
    pub fn maybe_consolidate(&mut self) -> Result<Option<ConsolidationRecord>> {
        match self.due() {
            Some(reason) => {
                let done = self.consolidation_job(reason)?.run()?;
                self.install(done).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Consolidates now, whatever the policy says.
    pub fn consolidate(&mut self) -> Result<ConsolidationRecord> {
        let done = self.consolidation_job(Due::Asked)?.run()?;
        self.install(done)
    }

    /// A copy of what a consolidation needs (the encoder, the eligible classes'
    /// examples and prototypes, the generator), to run anywhere.
    pub fn consolidation_job(&self, reason: Due) -> Result<ConsolidationJob> {
        if !self.trainable {
            return Err(Error::config(
                "consolidation",
                self.encoder().algorithm().to_string(),
                "this encoder stays frozen: only a ProtoNet's embedding trains further",
            ));
        }
        let side = self
            .image_side()
            .ok_or_else(|| Error::config("consolidation", "encoder", "needs images"))?;
        let eligible = self.eligible();
        if eligible.len() < 2 {
            return Err(Error::config(
                "consolidation",
                format!("{} classes", eligible.len()),
                format!(
                    "an episode needs at least 2 classes of {} examples or more",
                    self.config.consolidation.examples_per_class()
                ),
            ));
        }
        let images = eligible
            .iter()
            .map(|&c| Vec::<f32>::try_from(self.examples[c].reshape([-1])).map_err(Error::Torch))
            .collect::<Result<Vec<_>>>()?;
        let near = match (
            self.config.consolidation.neighbours > 1,
            self.memory.prototypes(),
        ) {
            (true, Some(p)) => {
                let rows =
                    Tensor::from_slice(&eligible.iter().map(|&c| c as i64).collect::<Vec<_>>());
                let m = p.index_select(0, &rows);
                let ways = self.config.consolidation.ways.min(eligible.len());
                Some(match &self.example_index {
                    // Neighbours by example search: the classes whose examples lie
                    // nearest each prototype.
                    Some(ix) => {
                        // Enough examples to meet `ways` other classes even when each
                        // shows many, past the class's own.
                        let per = self.config.consolidation.examples_per_class().max(1);
                        let own = eligible.iter().map(|&c| self.memory.counts()[c]).max();
                        let search = (ways * per * 2).max(ways) + own.unwrap_or(0);
                        ix.neighbour_classes(
                            &m,
                            &eligible,
                            ways,
                            self.distance(),
                            &self.class_ids,
                            search,
                        )
                    }
                    // By the encoder's distance between prototypes: cosine ranks as
                    // the squared distance between unit vectors does.
                    None => nearest_classes(
                        &match self.distance() {
                            Distance::SquaredEuclidean => m,
                            Distance::Cosine { .. } => {
                                &m / (m.norm_scalaropt_dim(2, [1], true) + 1e-8)
                            }
                        },
                        ways,
                    ),
                })
            }
            _ => None,
        };
        Ok(ConsolidationJob {
            encoder: encoder::copy(self.encoder())?,
            config: self.config.consolidation,
            side,
            images,
            near,
            rng: self.rng.clone(),
            base_version: self.version,
            classes: self.known(),
            reason,
        })
    }

    /// Swaps a finished consolidation in as the next representation version: every
    /// class's examples are encoded again and its prototype rebuilt. Refused if another
    /// consolidation was installed since the job was made.
    pub fn install(&mut self, done: Consolidated) -> Result<ConsolidationRecord> {
        if done.base_version != self.version {
            return Err(Error::config(
                "consolidation",
                format!("version {}", done.base_version),
                format!("is stale: the learner is at version {}", self.version),
            ));
        }
        let record = done.record(self.version + 1);
        let classes = done.classes;
        self.encoding.replace(done.encoder);
        self.rng = done.rng;
        self.version += 1;
        self.relearn()?;
        self.policy.reset();
        self.policy.new_classes = self.known().saturating_sub(classes);
        self.log.push(record.clone());
        Ok(record)
    }

    /// Rebuilds every prototype and the unknown threshold from the examples in the
    /// current representation, as if learnt again in the same order.
    fn relearn(&mut self) -> Result<()> {
        self.memory.clear();
        let mut features = Vec::with_capacity(self.examples.len());
        for c in 0..self.examples.len() {
            let f = self.encode(&self.examples[c]);
            for i in 0..f.size()[0] {
                self.memory.learn(&f.get(i), c)?;
            }
            features.push(f);
        }
        self.reindex(features);
        Ok(())
    }

    /// Rebuilds the example index from `features` (every class's, in the current
    /// representation): a store is written anew as this version's and the previous
    /// version's removed. A store that cannot be written is detached with a warning
    /// (the learner's examples are the record; the next attach writes it).
    fn reindex(&mut self, features: Vec<Tensor>) {
        self.example_index = match self.example_index.take() {
            None => None,
            Some(ExampleIndex::Tensors(_)) => Some(ExampleIndex::Tensors(features)),
            Some(ExampleIndex::Store(old)) => {
                let root = old.root().to_path_buf();
                let rows = self.rows_of(features);
                if old.version() == self.version {
                    drop(old);
                } else if let Err(e) = (*old).remove() {
                    tracing::warn!("the previous example store was not removed: {e}");
                }
                let width = rows.first().map_or(0, |r| r.features.size()[1] as usize);
                match ExampleStore::write(&root, self.version, width, self.distance(), &rows) {
                    Ok(s) => Some(ExampleIndex::Store(Box::new(s))),
                    Err(e) => {
                        tracing::warn!("the example store is detached: {e}");
                        let per = rows.into_iter().map(|r| r.features).collect();
                        matches!(self.config.classify, Classify::Knn { .. })
                            .then_some(ExampleIndex::Tensors(per))
                    }
                }
            }
        };
    }

    /// Every class's id, label and `features[c]`, for a store.
    fn rows_of(&self, features: Vec<Tensor>) -> Vec<ClassRows> {
        features
            .into_iter()
            .enumerate()
            .map(|(c, f)| ClassRows {
                id: self.class_ids[c],
                label: self.labels[c].clone(),
                features: f,
            })
            .collect()
    }

    /// Every class's examples encoded in the current representation.
    fn encoded_examples(&self) -> Vec<Tensor> {
        self.examples.iter().map(|x| self.encode(x)).collect()
    }

    /// Keeps the example-level memory in a persistent store under `root` (a folder;
    /// this version's store is `root/v{version}`), searched through its HNSW index:
    /// kNN classification and consolidation's neighbour classes read it, teaching and
    /// forgetting write it, and a consolidation writes the next version's. A store
    /// found there that holds exactly the learner's examples is reloaded as it is;
    /// one that does not (left by a crash, or another learner's) is rewritten. Damaged
    /// store files are refused with an error. Returns how the store was obtained:
    /// `"loaded"`, `"rebuilt"` (its index rebuilt) or `"written"`.
    pub fn attach_example_store(&mut self, root: &Path) -> Result<&'static str> {
        // Absolute, so that a saved learner finds it again from anywhere.
        std::fs::create_dir_all(root).map_err(|e| Error::run(root, e.to_string()))?;
        let root = &root
            .canonicalize()
            .map_err(|e| Error::run(root, e.to_string()))?;
        let width = match self.examples.first() {
            Some(x) => self.encode(&x.narrow(0, 0, 1)).size()[1] as usize,
            None => {
                let side = self.side().map_err(|_| {
                    Error::config(
                        "example store",
                        root.display(),
                        "an encoder of features needs a class taught before its store is attached",
                    )
                })? as i64;
                let x = Tensor::zeros([1, 1, side, side], (Kind::Float, tch::Device::Cpu));
                self.encode(&x).size()[1] as usize
            }
        };
        // Release a store already attached here before opening it again.
        if let Some(ExampleIndex::Store(_)) = &self.example_index {
            self.example_index = None;
        }
        let distance = self.distance();
        let mut rows = || Ok::<_, Error>(self.rows_of(self.encoded_examples()));
        let classes: Vec<(&str, usize)> = self
            .labels
            .iter()
            .map(String::as_str)
            .zip(self.memory.counts().iter().copied())
            .collect();
        let (store, ids) =
            ExampleStore::open(root, self.version, width, distance, &classes, &mut rows)?;
        if let Some(ids) = ids {
            // A learner rebuilt by replay numbers its classes afresh: it takes the
            // store's ids, and new classes come after them.
            self.next_class_id = self
                .next_class_id
                .max(ids.iter().max().map_or(0, |m| m + 1));
            self.class_ids = ids;
        }
        let origin = store.origin();
        self.example_index = Some(ExampleIndex::Store(Box::new(store)));
        Ok(origin)
    }

    /// Closes the attached example store (its files stay) and returns its root; under
    /// kNN classification the memory goes back to tensors.
    pub fn detach_example_store(&mut self) -> Option<PathBuf> {
        let Some(ExampleIndex::Store(s)) = &self.example_index else {
            return None;
        };
        let root = s.root().to_path_buf();
        self.example_index = None;
        if let Classify::Knn { .. } = self.config.classify {
            self.example_index = Some(ExampleIndex::Tensors(self.encoded_examples()));
        }
        Some(root)
    }

    /// The attached example store, if any.
    pub fn example_store(&self) -> Option<&perennial_store::Store> {
        self.example_index
            .as_ref()?
            .store()
            .map(ExampleStore::store)
    }

    /// How the attached example store was obtained (see
    /// [`LifelongLearner::attach_example_store`]), if one is attached.
    pub fn example_store_origin(&self) -> Option<&'static str> {
        self.example_index
            .as_ref()?
            .store()
            .map(ExampleStore::origin)
    }

    /// Everything the learner holds: named tensors (the encoder's `encoder.*`, the
    /// prototype sums `memory.*` and the examples `example.{c}`) and the rest as JSON.
    pub fn state(&self) -> (Vec<(String, Tensor)>, serde_json::Value) {
        let mut tensors: Vec<(String, Tensor)> = self
            .encoder()
            .state()
            .into_iter()
            .map(|(n, t)| (format!("encoder.{n}"), t))
            .collect();
        let (sums, memory) = self.memory.state();
        tensors.extend(sums.into_iter().map(|(n, t)| (format!("memory.{n}"), t)));
        tensors.extend(
            self.examples
                .iter()
                .enumerate()
                .map(|(c, t)| (format!("example.{c}"), t.shallow_clone())),
        );
        let saved = Saved {
            format: FORMAT,
            perennial: env!("CARGO_PKG_VERSION").to_string(),
            encoder: self.encoder().spec(),
            config: self.config.clone(),
            labels: self.labels.clone(),
            memory,
            rng: self.rng.clone(),
            policy: self.policy.clone(),
            consolidations: self.log.clone(),
            version: self.version,
            class_ids: self.class_ids.clone(),
            next_class_id: self.next_class_id,
            example_store: self
                .example_index
                .as_ref()
                .and_then(ExampleIndex::store)
                .map(|s| s.root().to_path_buf()),
        };
        let meta = serde_json::to_value(saved).expect("the learner's state serialises");
        (tensors, meta)
    }

    /// The learner a [`LifelongLearner::state`] describes.
    pub fn from_state(tensors: &[(String, Tensor)], meta: &serde_json::Value) -> Result<Self> {
        let format = meta.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(FORMAT) {
            let written = meta
                .get("perennial")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("an unknown version");
            return Err(Error::config(
                "saved learner",
                format!("format {}", format.map_or("?".into(), |f| f.to_string())),
                format!(
                    "written by Perennial {written}; this is Perennial {} (format {FORMAT})",
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        let saved: Saved = serde_json::from_value(meta.clone())
            .map_err(|e| Error::config("saved learner", "learner.json", e.to_string()))?;
        let prefixed = |prefix: &str| -> Vec<(String, Tensor)> {
            tensors
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix(prefix)
                        .map(|n| (n.to_string(), t.shallow_clone()))
                })
                .collect()
        };
        let mut encoder = encoder::build(&saved.encoder)?;
        encoder.load_state(&prefixed("encoder."))?;
        let mut learner = LifelongLearner::new(encoder, saved.config)?;
        learner
            .memory
            .restore(&prefixed("memory."), &saved.memory)?;
        if learner.memory.known() != saved.labels.len() {
            return Err(Error::config(
                "saved learner",
                format!("{} labels", saved.labels.len()),
                format!("but {} prototypes", learner.memory.known()),
            ));
        }
        learner.examples = indexed(tensors, "example.", saved.labels.len())?;
        for (c, x) in learner.examples.iter().enumerate() {
            if x.size()[0] as usize != learner.memory.counts()[c] {
                return Err(Error::config(
                    "saved learner",
                    format!("class {}", saved.labels[c]),
                    "its examples do not match its count",
                ));
            }
        }
        learner.index = index_of(&saved.labels);
        if learner.index.len() != saved.labels.len() {
            return Err(Error::config("saved learner", "labels", "repeat a label"));
        }
        learner.labels = saved.labels;
        learner.rng = saved.rng;
        learner.policy = saved.policy;
        learner.log = saved.consolidations;
        learner.version = saved.version;
        // Older saves have no ids: classes in order.
        learner.class_ids = match saved.class_ids.len() {
            0 => (0..learner.labels.len() as i64).collect(),
            n if n == learner.labels.len() => saved.class_ids,
            n => {
                return Err(Error::config(
                    "saved learner",
                    format!("{n} class ids"),
                    format!("but {} labels", learner.labels.len()),
                ))
            }
        };
        learner.next_class_id = saved
            .next_class_id
            .max(learner.class_ids.iter().max().map_or(0, |m| m + 1));
        // The example memory: its store when one was attached (reloaded or rewritten),
        // else, under kNN, the examples encoded into tensors.
        match saved.example_store {
            Some(root) => {
                learner.attach_example_store(&root)?;
            }
            None if learner.example_index.is_some() => {
                learner.example_index = Some(ExampleIndex::Tensors(learner.encoded_examples()));
            }
            None => {}
        }
        Ok(learner)
    }

    /// Saves the learner into `dir` atomically: a new version folder is written and
    /// synced beside the current one, then `dir/CURRENT` is replaced by a rename to
    /// name it. A crash at any moment leaves the previous save or the new one, whole.
    /// The previous save is kept (one step back); older ones are removed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::run(dir, format!("cannot create: {e}")))?;
        let previous = current_save(dir)?;
        let n = previous.as_ref().map_or(1, |(n, _)| n + 1);
        let name = format!("v{n:06}");
        let tmp = dir.join(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::run(&tmp, e.to_string()))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::run(&tmp, e.to_string()))?;
        let (tensors, meta) = self.state();
        let weights = tmp.join("tensors.safetensors");
        save_named(&tensors, &weights)?;
        sync_file(&weights)?;
        let json = tmp.join("learner.json");
        write_synced(
            &json,
            serde_json::to_string_pretty(&meta)
                .expect("JSON")
                .as_bytes(),
        )?;
        sync_dir(&tmp)?;
        let target = dir.join(&name);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| Error::run(&target, e.to_string()))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| Error::run(&target, e.to_string()))?;
        let pointer = dir.join(".CURRENT.partial");
        write_synced(&pointer, format!("{name}\n").as_bytes())?;
        std::fs::rename(&pointer, dir.join("CURRENT"))
            .map_err(|e| Error::run(dir.join("CURRENT"), e.to_string()))?;
        sync_dir(dir)?;
        // Keep this save and the one before it.
        let keep = [Some(name), previous.map(|(_, p)| file_name(&p))];
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let f = e.file_name().to_string_lossy().to_string();
                if parse_version(&f).is_some() && !keep.contains(&Some(f.clone())) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Loads the learner saved in `dir` by [`LifelongLearner::save`]: it predicts as
    /// the saved one did.
    pub fn load(dir: &Path) -> Result<Self> {
        let Some((_, folder)) = current_save(dir)? else {
            return Err(Error::run(
                dir,
                "not a saved lifelong learner (no CURRENT file)",
            ));
        };
        let json = folder.join("learner.json");
        let text = std::fs::read_to_string(&json).map_err(|e| Error::run(&json, e.to_string()))?;
        let meta: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::run(&json, format!("corrupt saved learner: {e}")))?;
        let tensors = load_named(&folder.join("tensors.safetensors"))?;
        Self::from_state(&tensors, &meta).map_err(|e| Error::run(&folder, e.to_string()))
    }
}

/// A consolidation to run: a copy of the encoder and of what it trains on.
#[derive(Debug)]
pub struct ConsolidationJob {
    encoder: Box<dyn Encoder>,
    config: ConsolidationConfig,
    side: usize,
    images: Vec<Vec<f32>>,
    /// Each eligible class's nearest others (positions among them).
    near: Option<Vec<Vec<usize>>>,
    rng: Rng,
    base_version: u64,
    classes: usize,
    reason: Due,
}

/// A finished consolidation, for [`LifelongLearner::install`].
#[derive(Debug)]
pub struct Consolidated {
    encoder: Box<dyn Encoder>,
    rng: Rng,
    report: crate::meta::StepReport,
    base_version: u64,
    classes: usize,
    reason: Due,
    seconds: f64,
}

impl Consolidated {
    /// The record [`LifelongLearner::install`] would log, at version `version`.
    pub fn record(&self, version: u64) -> ConsolidationRecord {
        ConsolidationRecord {
            version,
            classes: self.classes,
            reason: self.reason,
            loss: self.report.loss,
            accuracy: self.report.accuracy,
            seconds: self.seconds,
        }
    }

    /// The consolidated encoder, for a caller that builds its learner anew rather than
    /// installing it (the service, which replays its store onto the new encoder).
    pub fn into_encoder(self) -> Box<dyn Encoder> {
        self.encoder
    }
}

impl ConsolidationJob {
    /// Meta-trains the copied encoder ([`crate::lifelong::consolidate::consolidate`]).
    pub fn run(mut self) -> Result<Consolidated> {
        let clock = Instant::now();
        let net = self
            .encoder
            .trainable()
            .ok_or_else(|| Error::config("consolidation", "encoder", "is frozen"))?;
        let images = &self.images;
        let report = consolidate_near(
            net,
            &self.config,
            images.len(),
            self.side,
            self.near.as_deref(),
            &mut |c| images[c].clone(),
            &mut self.rng,
        )?;
        Ok(Consolidated {
            encoder: self.encoder,
            rng: self.rng,
            report,
            base_version: self.base_version,
            classes: self.classes,
            reason: self.reason,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }
}

/// Labels are what people type: not empty, at most 200 characters, no control
/// characters.
pub fn check_label(label: &str) -> Result<()> {
    if label.is_empty() || label.chars().count() > 200 || label.chars().any(char::is_control) {
        return Err(Error::config(
            "label",
            format!("{label:?}"),
            "must be 1 to 200 characters, none of them control characters",
        ));
    }
    Ok(())
}

fn index_of(labels: &[String]) -> HashMap<String, usize> {
    labels
        .iter()
        .enumerate()
        .map(|(c, l)| (l.clone(), c))
        .collect()
}

fn parse_version(name: &str) -> Option<u64> {
    name.strip_prefix('v')
        .filter(|d| d.len() == 6)
        .and_then(|d| d.parse().ok())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The save `dir/CURRENT` names: its number and folder.
fn current_save(dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    let pointer = dir.join("CURRENT");
    if !pointer.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&pointer).map_err(|e| Error::run(&pointer, e.to_string()))?;
    let name = text.trim();
    let n = parse_version(name)
        .ok_or_else(|| Error::run(&pointer, format!("corrupt: names {name:?}, not a save")))?;
    let folder = dir.join(name);
    if !folder.is_dir() {
        return Err(Error::run(
            &pointer,
            format!("names {name}, which is missing"),
        ));
    }
    Ok(Some((n, folder)))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::run(path, e.to_string()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::run(path, e.to_string()))
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::run(path, e.to_string()))
}

fn sync_dir(path: &Path) -> Result<()> {
    // A directory's entries are durable once the directory itself is synced.
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::run(path, e.to_string()))
}

/// The lifelong learner in the continual loop: class `c` of a class stream is
/// labelled `"c"`, and its policy is asked after every task whether to consolidate.
impl Learner for LifelongLearner {
    fn name(&self) -> &'static str {
        "perennial"
    }

    fn encodes(&self) -> bool {
        true
    }

    fn encode(&self, x: &Tensor) -> Tensor {
        LifelongLearner::encode(self, x)
    }

    fn version(&self) -> u64 {
        LifelongLearner::version(self)
    }

    fn observe(&mut self, data: &View<'_>, task: usize, range: Range<usize>) -> Result<f64> {
        let (features, labels) = data.batch(task, Part::Train, range.clone());
        let inputs = data.inputs(task, Part::Train, range);
        let labels: Vec<i64> = Vec::try_from(labels).map_err(Error::Torch)?;
        for (i, &label) in labels.iter().enumerate() {
            let i = i as i64;
            self.learn_encoded(
                &label.to_string(),
                &features.narrow(0, i, 1),
                &inputs.narrow(0, i, 1),
            )?;
        }
        Ok(0.0)
    }

    fn after_task(&mut self, _data: &View<'_>, _task: usize) -> Result<()> {
        self.maybe_consolidate()?;
        Ok(())
    }

    /// Scores of the classes known, in the order they were first taught (the mask is
    /// the classes known already).
    fn scores(&self, features: &Tensor, _mask: Option<&[usize]>) -> Tensor {
        LifelongLearner::scores(self, features)
    }

    fn unknown(&self, features: &Tensor) -> Option<Tensor> {
        Some(LifelongLearner::unknown(self, features))
    }

    fn consolidations(&self) -> Vec<ConsolidationRecord> {
        self.log.clone()
    }

    fn state(&self) -> StrategyState {
        let (tensors, meta) = LifelongLearner::state(self);
        StrategyState { tensors, meta }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        *self = LifelongLearner::from_state(&state.tensors, &state.meta)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifelong::encoder::Identity;
    use crate::lifelong::policy::RateTrigger;
    use crate::lifelong::run::tests::{consolidating, image_classes};

    /// A learner on a random ProtoNet, consolidating every 2 new classes, taught the
    /// first `classes` classes of a synthetic image stream.
    fn taught(classes: usize) -> (LifelongLearner, crate::lifelong::run::ClassImages) {
        let images = image_classes(4, 9);
        let mut l = consolidating(2, Distance::SquaredEuclidean);
        for c in 0..classes {
            l.learn(&format!("class {c}"), &images.train[c]).unwrap();
        }
        (l, images)
    }

    #[test]
    fn learns_at_any_time_and_predicts_label_probability_top_and_unknown() {
        let (mut l, images) = taught(3);
        assert_eq!(l.known(), 3);
        assert_eq!(l.image_side(), Some(28));
        let p = l.predict(&images.test[1]).unwrap();
        assert_eq!(p.len(), 5);
        let right = p.iter().filter(|p| p.label == "class 1").count();
        assert!(right >= 4, "{p:?}");
        for p in &p {
            assert_eq!(p.top.len(), 3, "at most the classes known");
            assert_eq!(p.top[0].label, p.label);
            assert!(p
                .top
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability));
            let sum: f64 = p.top.iter().map(|r| r.probability).sum();
            assert!((sum - 1.0).abs() < 1e-9, "{sum}");
            assert_eq!(p.unknown, p.unknown_score > 1.0, "{p:?}");
        }
        // A class not taught is flagged unknown more often than the known ones.
        let unknown = |x: &Tensor| {
            let p = l.predict(x).unwrap();
            p.iter().filter(|p| p.unknown).count() as f64 / p.len() as f64
        };
        let novel = unknown(&images.test[3]);
        let known = (0..3).map(|c| unknown(&images.test[c])).sum::<f64>() / 3.0;
        assert!(novel > known, "novel {novel} known {known}");
        // More examples of a known class; one image as [n, side, side]; a new class.
        let more = l.learn("class 0", &images.test[0].narrow(0, 0, 2)).unwrap();
        assert_eq!((more.new_class, more.added, more.examples), (false, 2, 17));
        let one = images.train[3].narrow(0, 0, 1).view([1, 28, 28]);
        let new = l.learn("class 3", &one).unwrap();
        assert_eq!((new.new_class, new.examples), (true, 1));
        assert_eq!(
            l.classes().iter().map(|c| c.examples).collect::<Vec<_>>(),
            [17, 15, 15, 1]
        );
        // Forgetting a class removes it from predictions.
        assert!(l.forget("class 1").unwrap());
        assert!(!l.forget("class 1").unwrap());
        assert_eq!(l.known(), 3);
        let p = l.predict(&images.test[1]).unwrap();
        assert!(p.iter().all(|p| p.label != "class 1"));
        assert!(l
            .predict(&images.test[2])
            .unwrap()
            .iter()
            .any(|p| p.label == "class 2"));
    }

    /// A learner on `consolidating`'s encoder classifying by its 5 nearest examples.
    fn knn(distance: Distance) -> LifelongLearner {
        let l = consolidating(0, distance);
        let config = LearnerConfig {
            classify: Classify::Knn { k: 5 },
            ..l.config().clone()
        };
        LifelongLearner::new(encoder::copy(l.encoder()).unwrap(), config).unwrap()
    }

    /// kNN scores by brute force: each class's log-sum-exp of its logits among the `k`
    /// nearest rows of `keys` (class `of[i]`), `-inf` otherwise.
    fn brute_knn(f: &Tensor, keys: &Tensor, of: &[usize], known: usize, d: Distance) -> Vec<f32> {
        let logits: Vec<f32> = Vec::try_from(d.logits(f, keys).reshape([-1])).unwrap();
        let n = of.len();
        let mut out = Vec::new();
        for row in logits.chunks(n) {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let mut sum = vec![0f64; known];
            for &i in &order[..5.min(n)] {
                sum[of[i]] += (row[i] as f64).exp();
            }
            out.extend(sum.iter().map(|&s| {
                if s > 0.0 {
                    s.ln() as f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
        out
    }

    fn close(a: &Tensor, b: &Tensor) -> bool {
        let fa = a.isfinite();
        fa.equal(&b.isfinite())
            && (a.masked_select(&fa) - b.masked_select(&fa))
                .abs()
                .max()
                .double_value(&[])
                < 1e-3
    }

    #[test]
    fn knn_classifies_by_its_examples_in_tensors_or_in_a_store_alike() {
        let images = image_classes(4, 9);
        let d = Distance::Cosine { scale: 10.0 };
        let (mut l, mut twin) = (knn(d), knn(d));
        for c in 0..3 {
            l.learn(&format!("class {c}"), &images.train[c]).unwrap();
            twin.learn(&format!("class {c}"), &images.train[c]).unwrap();
        }
        // Against brute force over every taught example.
        let f = l.encode(&images.test[1]);
        let keys = Tensor::cat(
            &(0..3)
                .map(|c| l.encode(&images.train[c]))
                .collect::<Vec<_>>(),
            0,
        );
        let of: Vec<usize> = (0..3).flat_map(|c| std::iter::repeat_n(c, 15)).collect();
        let want = Tensor::from_slice(&brute_knn(&f, &keys, &of, 3, d)).view([-1, 3]);
        assert!(close(&l.scores(&f), &want), "{} {}", l.scores(&f), want);
        let p = l.predict(&images.test[1]).unwrap();
        assert!(
            p.iter().filter(|p| p.label == "class 1").count() >= 4,
            "{p:?}"
        );
        for p in &p {
            let sum: f64 = p.top.iter().map(|r| r.probability).sum();
            assert!((sum - 1.0).abs() < 1e-9, "{sum}");
        }
        // The same memory in a store: the same answers, through teaching and forgetting.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("examples");
        assert_eq!(l.attach_example_store(&root).unwrap(), "written");
        assert_eq!(l.example_store().unwrap().len(), 45);
        let same = |l: &LifelongLearner, twin: &LifelongLearner| {
            for c in 0..4 {
                let f = l.encode(&images.test[c]);
                let (x, y) = (l.scores(&f), twin.scores(&f));
                assert!(close(&x, &y), "class {c}: {x} {y}");
                let (a, b) = (
                    l.predict(&images.test[c]).unwrap(),
                    twin.predict(&images.test[c]).unwrap(),
                );
                assert_eq!(
                    a.iter().map(|p| &p.label).collect::<Vec<_>>(),
                    b.iter().map(|p| &p.label).collect::<Vec<_>>()
                );
            }
        };
        same(&l, &twin);
        for m in [&mut l, &mut twin] {
            m.learn("class 3", &images.train[3]).unwrap();
            m.learn("class 0", &images.test[0].narrow(0, 0, 2)).unwrap();
            assert!(m.forget("class 1").unwrap());
        }
        assert_eq!(l.example_store().unwrap().len(), 15 + 2 + 15 + 15);
        same(&l, &twin);
        // Saved and loaded: the store is found and reloaded as it is.
        let saved = dir.path().join("learner");
        l.save(&saved).unwrap();
        drop(l);
        // A learner taught the same examples afresh (as the service rebuilds one) numbers
        // its classes 0, 1, 2; it adopts the store's ids (0, 2, 3) and reloads it.
        let mut replayed = knn(d);
        let more = Tensor::cat(&[&images.train[0], &images.test[0].narrow(0, 0, 2)], 0);
        replayed.learn("class 0", &more).unwrap();
        replayed.learn("class 2", &images.train[2]).unwrap();
        replayed.learn("class 3", &images.train[3]).unwrap();
        assert_eq!(replayed.attach_example_store(&root).unwrap(), "loaded");
        assert_eq!(replayed.class_ids, [0, 2, 3]);
        same(&replayed, &twin);
        replayed.learn("class 4", &images.test[3]).unwrap();
        assert_eq!(replayed.class_ids, [0, 2, 3, 4]);
        drop(replayed);
        let mut l = LifelongLearner::load(&saved).unwrap();
        assert_eq!(
            l.example_store_origin(),
            Some("written"),
            "class 4 is not the learner's"
        );
        same(&l, &twin);
        // Consolidation's neighbours come from example search; it writes the next
        // version's store and removes the previous one.
        let job = l.consolidation_job(Due::Asked).unwrap();
        let near = job.near.as_ref().unwrap();
        assert_eq!(near.len(), 3);
        for (p, n) in near.iter().enumerate() {
            assert_eq!(n.len(), 2);
            assert!(!n.contains(&p));
        }
        l.consolidate().unwrap();
        twin.consolidate().unwrap();
        assert_eq!(l.example_store_origin(), Some("written"));
        assert!(root.join("v000001").exists() && !root.join("v000000").exists());
        same(&l, &twin);
        // Damaged store files are refused at load.
        l.save(&saved).unwrap();
        drop(l);
        crate::lifelong::examples::damage(&root.join("v000001"));
        let err = LifelongLearner::load(&saved).unwrap_err().to_string();
        assert!(err.contains("example store"), "{err}");
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let (mut l, images) = taught(1);
        let fresh = consolidating(2, Distance::SquaredEuclidean);
        let err = fresh.predict(&images.test[0]).unwrap_err().to_string();
        assert!(err.contains("knows no class"), "{err}");
        let bad = |e: Result<Learnt>, want: &str| {
            let e = e.unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        bad(l.learn("", &images.train[0]), "label");
        bad(l.learn("a\nb", &images.train[0]), "control");
        bad(
            l.learn(
                "x",
                &Tensor::zeros([2, 1, 20, 20], (Kind::Float, tch::Device::Cpu)),
            ),
            "[n, 1, 28, 28]",
        );
        bad(
            l.learn(
                "x",
                &Tensor::zeros([0, 1, 28, 28], (Kind::Float, tch::Device::Cpu)),
            ),
            "at least one",
        );
        let nan = Tensor::full([1, 1, 28, 28], f64::NAN, (Kind::Float, tch::Device::Cpu));
        bad(l.learn("x", &nan), "not finite");
        assert!(l.images(&[0.0; 100]).is_err());
        assert_eq!(
            l.images(&vec![0.5; 2 * 784]).unwrap().size(),
            [2, 1, 28, 28]
        );
        assert_eq!(l.known(), 1, "nothing refused was learnt");
        // A frozen encoder cannot take a policy that consolidates.
        let err = LifelongLearner::new(Box::new(Identity), LearnerConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--consolidate-every 0"), "{err}");
        let err = LearnerConfig {
            top: 0,
            ..LearnerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("top"), "{err}");
    }

    /// Regression test (issue 18): a learner on an encoder trained with the cosine
    /// distance compares its prototypes under that distance.
    #[test]
    fn the_learner_uses_its_encoders_distance() {
        let images = image_classes(3, 4);
        let mut l = consolidating(0, Distance::Cosine { scale: 10.0 });
        assert_eq!(l.distance(), Distance::Cosine { scale: 10.0 });
        for c in 0..3 {
            l.learn(&c.to_string(), &images.train[c]).unwrap();
        }
        let f = l.encode(&images.test[0]);
        let protos = l.memory().prototypes().unwrap();
        let want = Distance::Cosine { scale: 10.0 }.logits(&f, protos);
        assert!(l.scores(&f).allclose(&want, 1e-5, 1e-5, false));
        let p = l.predict(&images.test[0]).unwrap();
        let argmax: Vec<i64> = Vec::try_from(want.argmax(1, false)).unwrap();
        for (p, a) in p.iter().zip(argmax) {
            assert_eq!(p.label, a.to_string());
        }
    }

    #[test]
    fn a_saved_learner_loads_to_the_same_predictions_and_saves_atomically() {
        let (mut l, images) = taught(3);
        l.consolidate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learner");
        l.save(&path).unwrap();
        let back = LifelongLearner::load(&path).unwrap();
        for c in 0..4 {
            assert_eq!(
                back.predict(&images.test[c]).unwrap(),
                l.predict(&images.test[c]).unwrap()
            );
        }
        assert_eq!(back.classes(), l.classes());
        assert_eq!(back.version(), 1);
        assert_eq!(back.consolidations(), l.consolidations());
        // Both go on alike: the same consolidation from the same generator.
        let (mut a, mut b) = (l, back);
        a.learn("class 3", &images.train[3]).unwrap();
        b.learn("class 3", &images.train[3]).unwrap();
        a.consolidate().unwrap();
        b.consolidate().unwrap();
        assert_eq!(
            a.predict(&images.test[3]).unwrap(),
            b.predict(&images.test[3]).unwrap()
        );
        // A second save names a new folder; the first stays as the step back.
        a.save(&path).unwrap();
        let current = std::fs::read_to_string(path.join("CURRENT")).unwrap();
        assert_eq!(current.trim(), "v000002");
        assert!(path.join("v000001").is_dir());
        a.save(&path).unwrap();
        assert!(!path.join("v000001").exists(), "older saves are removed");
        // A save interrupted before CURRENT moved leaves the last one in force.
        std::fs::create_dir(path.join(".v000004.partial")).unwrap();
        std::fs::write(path.join(".v000004.partial/learner.json"), "{").unwrap();
        assert_eq!(LifelongLearner::load(&path).unwrap().version(), 2);
        a.save(&path).unwrap();
        assert_eq!(LifelongLearner::load(&path).unwrap().known(), 4);
        // Refusals: no save, a corrupt pointer, a newer format.
        let err = LifelongLearner::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a saved lifelong learner"), "{err}");
        let v = std::fs::read_to_string(path.join("CURRENT")).unwrap();
        let json = path.join(v.trim()).join("learner.json");
        let text = std::fs::read_to_string(&json).unwrap();
        std::fs::write(&json, text.replace("\"format\": 1", "\"format\": 9")).unwrap();
        let err = LifelongLearner::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("format 9") && err.contains("format 1"),
            "{err}"
        );
        std::fs::write(path.join("CURRENT"), "elsewhere\n").unwrap();
        let err = LifelongLearner::load(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    /// A consolidation run as a job, away from the learner, gives the learner that
    /// consolidating in place gives; classes taught while it ran are relearnt in the
    /// new representation; a second job from the same version is refused as stale.
    #[test]
    fn a_background_consolidation_installs_as_the_next_version() {
        let (mut a, images) = taught(3);
        let (mut b, _) = taught(3);
        a.consolidate().unwrap();
        let job = b.consolidation_job(Due::Asked).unwrap();
        let stale = b.consolidation_job(Due::Asked).unwrap();
        // Predictions go on from the current version while the job runs.
        let done = std::thread::spawn(move || job.run().unwrap())
            .join()
            .unwrap();
        b.learn("class 3", &images.train[3]).unwrap();
        let record = b.install(done).unwrap();
        assert_eq!((record.version, record.classes), (1, 3));
        assert_eq!(b.version(), 1);
        a.learn("class 3", &images.train[3]).unwrap();
        for c in 0..4 {
            assert_eq!(
                a.predict(&images.test[c]).unwrap(),
                b.predict(&images.test[c]).unwrap()
            );
        }
        let err = b.install(stale.run().unwrap()).unwrap_err().to_string();
        assert!(err.contains("stale"), "{err}");
        // The class taught during the job counts towards the next consolidation.
        assert_eq!(b.policy.new_classes, 1);
    }

    #[test]
    fn the_policy_schedules_consolidation() {
        let images = image_classes(4, 9);
        let mut l = consolidating(2, Distance::SquaredEuclidean);
        l.learn("a", &images.train[0]).unwrap();
        assert_eq!(l.due(), None);
        assert_eq!(l.maybe_consolidate().unwrap(), None);
        l.learn("b", &images.train[1]).unwrap();
        assert_eq!(l.due(), Some(Due::NewClasses(2)));
        let r = l.maybe_consolidate().unwrap().unwrap();
        assert_eq!(r.reason, Due::NewClasses(2));
        assert_eq!(l.due(), None);
        // Classes with too few examples for an episode never make one due.
        let mut few = consolidating(2, Distance::SquaredEuclidean);
        few.learn("a", &images.train[0].narrow(0, 0, 2)).unwrap();
        few.learn("b", &images.train[1].narrow(0, 0, 2)).unwrap();
        assert_eq!(few.due(), None);
        assert!(few.consolidate().is_err());
        // The confusion signal: examples of a known class taught after a lookalike
        // class were nearer the lookalike's prototype.
        let mut watch = consolidating(0, Distance::SquaredEuclidean);
        watch.config.policy.confusion = Some(RateTrigger {
            window: 4,
            above: 0.4,
        });
        watch.learn("a", &images.train[0].narrow(0, 0, 1)).unwrap();
        watch.learn("b", &images.train[0].narrow(0, 1, 5)).unwrap();
        assert_eq!(
            watch.due(),
            None,
            "a new class's own examples are not watched"
        );
        watch.learn("a", &images.train[0].narrow(0, 6, 4)).unwrap();
        let (_, confusion) = watch.recent_rates();
        assert!(confusion > 0.4, "{confusion}");
        assert!(matches!(watch.due(), Some(Due::Confusion(_))));
    }
}
