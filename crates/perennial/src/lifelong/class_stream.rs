//! Class-incremental learning one class at a time: the Omniglot protocol of OML and
//! ANML ([`crate::data::classinc`]). A learner meets class after class, sees each
//! class's training images once, one image at a time, and is tested on the held-out
//! images of every class seen so far.
//!
//! Every learner of this stream is a [`ClassLearner`]: it encodes images with a
//! meta-learned representation ([`super::encoder`]) and learns on the features.
//! [`run_class_stream`] encodes each class's images once per representation version,
//! so a learner that consolidates its representation (Perennial's
//! [`LifelongLearner`]) is measured on features of its current encoder:
//!
//! * [`LifelongLearner`], Perennial's learner: prototypes, the unknown flag and
//!   scheduled meta-consolidation;
//! * [`super::heads::OnlineHead`] (naive, and OML on an OML representation) and
//!   [`super::heads::LaMamlHead`].
//!
//! The record holds the accuracy matrix `R[i][j]` (accuracy on class `j`'s test images,
//! among all classes known, after learning classes `0..=i`; zero above the diagonal,
//! where a class is not known yet), the mean accuracy on all seen classes at the
//! protocol's points (10, 50, 100, 200, 600 classes), learning speed (a class's accuracy
//! after 0, 1, 5 and all of its images), and the unknown flag's rates.

use std::time::Instant;

use tch::{Kind, Tensor};

use super::learner::{ConsolidationRecord, LifelongLearner};
use super::metrics::AccuracyMatrix;
use super::strategy::{SpeedPoint, StrategyState};
use super::Checkpoints;
use crate::error::{Error, Result};

/// A learner of classes arriving one at a time.
pub trait ClassLearner {
    /// The learner's name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Features `[n, d]` of inputs `[n, ...]` in the learner's current representation.
    fn encode(&self, x: &Tensor) -> Tensor;

    /// The representation's version: features from [`ClassLearner::encode`] are stale
    /// once it changes. The default never changes.
    fn version(&self) -> u64 {
        0
    }

    /// Learns one example of class `class`: its features `[d]` (from
    /// [`ClassLearner::encode`]) and the input itself (`[1, ...]`). Classes arrive in
    /// order: a new class is the number of classes known.
    fn learn(&mut self, class: usize, features: &Tensor, input: &Tensor) -> Result<()>;

    /// Called once every example of a class is learnt, with the number of classes
    /// known: a learner may improve itself here (consolidate its representation).
    fn after_class(&mut self, _known: usize) -> Result<()> {
        Ok(())
    }

    /// Scores `[n, known]` of features `[n, d]` (the highest is the prediction).
    fn scores(&self, features: &Tensor) -> Tensor;

    /// Whether each input `[n, d]` is far from everything the learner knows (`[n]`
    /// booleans). The default flags nothing.
    fn unknown(&self, features: &Tensor) -> Tensor {
        Tensor::zeros([features.size()[0]], (Kind::Bool, features.device()))
    }

    /// The number of classes known.
    fn known(&self) -> usize;

    /// The consolidations of the learner's representation so far.
    fn consolidations(&self) -> Vec<ConsolidationRecord> {
        Vec::new()
    }

    /// Everything the learner holds, for a checkpoint.
    fn state(&self) -> StrategyState;

    /// Restores a state [`ClassLearner::state`] returned.
    fn restore(&mut self, state: StrategyState) -> Result<()>;
}

/// The lifelong learner on the class stream: class `c` is labelled `"c"`, and its
/// policy is asked after every class whether to consolidate.
impl ClassLearner for LifelongLearner {
    fn name(&self) -> &'static str {
        "perennial"
    }

    fn encode(&self, x: &Tensor) -> Tensor {
        LifelongLearner::encode(self, x)
    }

    fn version(&self) -> u64 {
        LifelongLearner::version(self)
    }

    fn learn(&mut self, class: usize, features: &Tensor, input: &Tensor) -> Result<()> {
        if class > self.known() {
            return Err(Error::config(
                "class label",
                class,
                format!("classes must arrive in order; {} known", self.known()),
            ));
        }
        self.learn_encoded(&class.to_string(), &features.view([1, -1]), input)?;
        Ok(())
    }

    fn after_class(&mut self, _known: usize) -> Result<()> {
        self.maybe_consolidate()?;
        Ok(())
    }

    fn scores(&self, features: &Tensor) -> Tensor {
        LifelongLearner::scores(self, features)
    }

    fn unknown(&self, features: &Tensor) -> Tensor {
        LifelongLearner::unknown(self, features)
    }

    fn known(&self) -> usize {
        LifelongLearner::known(self)
    }

    fn consolidations(&self) -> Vec<ConsolidationRecord> {
        LifelongLearner::consolidations(self).to_vec()
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
    /// Seconds spent encoding, learning, consolidating and testing.
    pub wall_s: f64,
    /// The part of `wall_s` spent encoding images.
    #[serde(default)]
    pub encode_s: f64,
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

/// A class stream's inputs: `train[c]` `[n_c, ...]` and `test[c]` `[m_c, ...]` for
/// the class at position `c` (images `[n, 1, side, side]`).
#[derive(Debug)]
pub struct ClassImages {
    /// Each class's training inputs, in the order they are taught.
    pub train: Vec<Tensor>,
    /// Each class's test inputs.
    pub test: Vec<Tensor>,
}

/// Runs `learner` over a class-incremental stream, from the start
/// (`ClassRunRecord::default()`) or from where a checkpointed run stopped (`start`, the
/// learner restored to that point), and returns the finished record.
///
/// Each class's training images are encoded when the class begins, and the test
/// images again whenever the learner's representation version changes. After class
/// `c` is learnt (and its learning speed measured), [`ClassLearner::after_class`] runs
/// (a consolidation, if the learner decides on one) before the stream's row `c` is
/// measured. `class_done(record, learner)` follows each class (checkpoints);
/// `progress` is called after each class with (classes done, classes).
pub fn run_class_stream(
    learner: &mut dyn ClassLearner,
    images: &ClassImages,
    start: ClassRunRecord,
    class_done: &mut dyn FnMut(&ClassRunRecord, &dyn ClassLearner) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ClassRunRecord> {
    let t = images.train.len();
    if t == 0 || images.test.len() != t {
        return Err(Error::config(
            "class stream",
            format!("{t} training and {} test classes", images.test.len()),
            "needs the same number of classes, at least one",
        ));
    }
    let clock = Instant::now();
    let points = protocol_points(t);
    let first = start.rows.len();
    if first > t || start.speed.len() != first || learner.known() != first {
        return Err(Error::config(
            "resumed record",
            format!("{first} classes, the learner {}", learner.known()),
            format!("must agree, and the stream has {t}"),
        ));
    }
    let mut record = ClassRunRecord {
        points: points.clone(),
        ..start
    };
    let (wall_before, encode_before) = (record.wall_s, record.encode_s);
    let mut encoding = 0.0;
    let mut version = learner.version();
    let mut test = timed(&mut encoding, || test_set(learner, images));
    for c in first..t {
        let train_c = &images.train[c];
        let feats = timed(&mut encoding, || learner.encode(train_c));
        let n = train_c.size()[0] as usize;
        let mut s = vec![SpeedPoint {
            asked: 0,
            seen: 0,
            accuracy: 0.0,
        }];
        for i in 0..n {
            let i64_ = i as i64;
            learner.learn(c, &feats.get(i64_), &train_c.narrow(0, i64_, 1))?;
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
        learner.after_class(c + 1)?;
        if learner.version() != version {
            version = learner.version();
            test = timed(&mut encoding, || test_set(learner, images));
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
        record.encode_s = encode_before + encoding;
        class_done(&record, learner)?;
        progress(c + 1, t);
    }
    Ok(record)
}

/// `f()`, its seconds added to `seconds`.
fn timed<T>(seconds: &mut f64, f: impl FnOnce() -> T) -> T {
    let clock = Instant::now();
    let v = f();
    *seconds += clock.elapsed().as_secs_f64();
    v
}

/// Every class's test images, encoded by `learner` (one batch per class).
fn test_set(learner: &dyn ClassLearner, images: &ClassImages) -> TestSet {
    let feats: Vec<Tensor> = images.test.iter().map(|x| learner.encode(x)).collect();
    TestSet::new(&feats)
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

/// The format of class-stream checkpoints this version writes and reads.
const CHECKPOINT_FORMAT: u64 = 2;

/// What the `state.json` of a class-stream checkpoint holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassSaved {
    /// The checkpoint format (absent, read as 0, before format 2).
    #[serde(default)]
    pub format: u64,
    /// The run's configuration; a resume must match it.
    pub config: serde_json::Value,
    /// Everything measured so far.
    pub record: ClassRunRecord,
    /// The JSON part of the learner's state.
    pub learner: serde_json::Value,
}

/// Writes a checkpoint of a class stream after `record.rows.len()` classes: the
/// learner's whole state and the record.
pub fn save_class_checkpoint(
    ck: &Checkpoints,
    config: &serde_json::Value,
    record: &ClassRunRecord,
    learner: &dyn ClassLearner,
) -> Result<()> {
    let state = learner.state();
    let saved = ClassSaved {
        format: CHECKPOINT_FORMAT,
        config: config.clone(),
        record: record.clone(),
        learner: state.meta,
    };
    ck.write_step(record.rows.len(), &[("learner", state.tensors)], &saved)
}

/// Reads a class-stream checkpoint written for `config`, restores `learner` to it and
/// returns the record to resume from.
pub fn restore_class_checkpoint(
    ck: &Checkpoints,
    config: &serde_json::Value,
    learner: &mut dyn ClassLearner,
) -> Result<ClassRunRecord> {
    let saved: ClassSaved = ck.read_state()?;
    if saved.format != CHECKPOINT_FORMAT {
        return Err(Error::run(
            ck.state_path(),
            format!(
                "a class-stream checkpoint of format {} (this Perennial, {}, reads format \
                 {CHECKPOINT_FORMAT}, written since the lifelong learner became a library \
                 type); start the run afresh in another --out",
                saved.format,
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    ck.check_config(&saved.config, config)?;
    let k = saved.record.rows.len();
    learner.restore(StrategyState {
        tensors: ck.read_group("learner", k)?,
        meta: saved.learner,
    })?;
    Ok(saved.record)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lifelong::encoder::{self, EncoderSpec, Encoding, Identity};
    use crate::lifelong::heads::{LaMamlHead, OnlineHead};
    use crate::lifelong::lamaml::LaMamlConfig;
    use crate::lifelong::learner::LearnerConfig;
    use crate::lifelong::policy::ConsolidationPolicy;
    use crate::lifelong::ConsolidationConfig;
    use crate::nn::Distance;

    /// Perennial's learner on inputs that are features already, never consolidating.
    fn prototypes(quantile: f64) -> LifelongLearner {
        let config = LearnerConfig {
            unknown_quantile: quantile,
            ..LearnerConfig::default()
        }
        .with_shift_radius(0)
        .with_policy(ConsolidationPolicy::never());
        LifelongLearner::new(Box::new(Identity), config).unwrap()
    }

    fn identity() -> Encoding {
        Encoding::new(Box::new(Identity), 0).unwrap()
    }

    fn run(learner: &mut dyn ClassLearner, train: &[Tensor], test: &[Tensor]) -> ClassRunRecord {
        let images = ClassImages {
            train: train.iter().map(Tensor::shallow_clone).collect(),
            test: test.iter().map(Tensor::shallow_clone).collect(),
        };
        run_class_stream(
            learner,
            &images,
            ClassRunRecord::default(),
            &mut |_, _| Ok(()),
            &mut |_, _| {},
        )
        .unwrap()
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
            Box::new(prototypes(0.95)) as Box<dyn ClassLearner>,
            Box::new(OnlineHead::new(identity(), 2, 3, 0.5).unwrap()),
        ] {
            let mut learner = learner;
            let r = run(learner.as_mut(), &train, &test);
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
            assert!(r.encode_s >= 0.0 && r.encode_s <= r.wall_s);
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
        let r = run(&mut prototypes(0.95), &train, &test);
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
        let r = run(&mut prototypes(0.95), &train, &test);
        assert_eq!(r.rows[2], [1.0, 0.0, 1.0]);
        assert_eq!(r.final_own_labels, [1.0, 1.0, 1.0]);
        assert_eq!(r.matrix().unwrap().metrics().bwt, Some(-0.5));
        assert_eq!(r.own_label_bwt(), Some(0.0));
    }

    /// Normal draws from the uniform generator (Box–Muller).
    fn normal(rng: &mut crate::data::Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (rng.uniform().max(1e-12), rng.uniform());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }

    /// `classes` Gaussian classes in 16-D (means N(0, 4I), spread 0.5), 15 training
    /// and 10 test points each.
    fn gaussian_classes(classes: usize, seed: u64) -> (Vec<Tensor>, Vec<Tensor>) {
        let mut rng = crate::data::Rng::new(seed);
        let dim = 16;
        let means: Vec<Vec<f32>> = (0..classes).map(|_| normal(&mut rng, dim)).collect();
        let mut points = |c: usize, n: usize| {
            let noise = normal(&mut rng, n * dim);
            let v: Vec<f32> = (0..n * dim)
                .map(|i| 2.0 * means[c][i % dim] + 0.5 * noise[i])
                .collect();
            Tensor::from_slice(&v).view([n as i64, dim as i64])
        };
        let train: Vec<Tensor> = (0..classes).map(|c| points(c, 15)).collect();
        let test: Vec<Tensor> = (0..classes).map(|c| points(c, 10)).collect();
        (train, test)
    }

    /// `classes` classes of 28×28 images: a random pattern per class, and per image the
    /// pattern plus noise and a 0–2 pixel shift; 15 training and 5 test images each.
    pub(crate) fn image_classes(classes: usize, seed: u64) -> ClassImages {
        let mut rng = crate::data::Rng::new(seed);
        let side = 28usize;
        let patterns: Vec<Vec<f32>> = (0..classes)
            .map(|_| {
                (0..side * side)
                    .map(|_| (rng.uniform() > 0.8) as u8 as f32)
                    .collect()
            })
            .collect();
        let mut images = |c: usize, n: usize| {
            let mut v = Vec::with_capacity(n * side * side);
            for _ in 0..n {
                let (dy, dx) = (rng.below(3) as usize, rng.below(3) as usize);
                let noise = normal(&mut rng, side * side);
                for (p, z) in noise.iter().enumerate() {
                    let (i, j) = (p / side, p % side);
                    let src = if i >= dy && j >= dx {
                        patterns[c][(i - dy) * side + j - dx]
                    } else {
                        0.0
                    };
                    v.push(src + 0.2 * z);
                }
            }
            Tensor::from_slice(&v).view([n as i64, 1, side as i64, side as i64])
        };
        let train = (0..classes).map(|c| images(c, 15)).collect();
        let test = (0..classes).map(|c| images(c, 5)).collect();
        ClassImages { train, test }
    }

    /// Perennial's learner on a freshly initialised ProtoNet (28×28 images) that
    /// consolidates every `every` new classes with short episodes.
    pub(crate) fn consolidating(every: usize, distance: Distance) -> LifelongLearner {
        let spec = EncoderSpec::Run {
            config: Box::new(crate::lifelong::encoder::tests::protonet_run(distance)),
            consolidation_lr: 1e-3,
        };
        let config = LearnerConfig {
            consolidation: ConsolidationConfig {
                episodes: 2,
                ways: 3,
                shots: 2,
                queries: 3,
                neighbours: 2,
                jitter: 1,
            },
            ..LearnerConfig::default()
        }
        .with_seed(4)
        .with_policy(ConsolidationPolicy {
            every_new_classes: every,
            ..ConsolidationPolicy::never()
        });
        LifelongLearner::new(encoder::build(&spec).unwrap(), config).unwrap()
    }

    /// Twenty Gaussian classes in 16-D, learnt one class at a time: the plain online
    /// head ends up predicting its newest classes, La-MAML's replayed meta-loss keeps
    /// the old ones (higher accuracy and backward transfer), and a La-MAML learner is
    /// deterministic per seed.
    #[test]
    fn lamaml_head_forgets_less_than_the_online_head() {
        let dim = 16;
        let (train, test) = gaussian_classes(20, 11);
        let mut head = OnlineHead::new(identity(), dim, 20, 0.15).unwrap();
        let h = run(&mut head, &train, &test);
        let lamaml = || {
            let mut l = LaMamlHead::new(identity(), dim, 20, LaMamlConfig::default(), 3).unwrap();
            run(&mut l, &train, &test)
        };
        let l = lamaml();
        let (hm, lm) = (h.matrix().unwrap().metrics(), l.matrix().unwrap().metrics());
        assert!(lm.acc > hm.acc + 0.2, "lamaml {lm:?} head {hm:?}");
        assert!(
            lm.bwt.unwrap() > hm.bwt.unwrap(),
            "lamaml {lm:?} head {hm:?}"
        );
        assert_eq!(lamaml().rows, l.rows);
        let bad = LaMamlConfig {
            glances: 0,
            ..LaMamlConfig::default()
        };
        assert!(LaMamlHead::new(identity(), dim, 20, bad, 3).is_err());
    }

    /// A learner that consolidates along the stream: its policy fires after every
    /// second class, each consolidation is a new representation version, the stream's
    /// rows after it are measured on test features of the new encoder, and the
    /// prototypes are the means of the examples encoded anew.
    #[test]
    fn a_consolidating_learner_is_measured_in_its_new_representation() {
        let images = image_classes(5, 2);
        let mut l = consolidating(2, Distance::SquaredEuclidean);
        let mut versions = Vec::new();
        let r = run_class_stream(
            &mut l,
            &images,
            ClassRunRecord::default(),
            &mut |rec, l| {
                versions.push((rec.rows.len(), l.version()));
                Ok(())
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(versions, [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)]);
        let log = l.consolidations();
        assert_eq!(log.len(), 2);
        assert_eq!((log[0].classes, log[1].classes), (2, 4));
        assert!(log.iter().all(|c| c.loss.is_finite()));
        // The last row, measured by the stream, is the final learner's accuracy on the
        // test images encoded now.
        for (j, want) in r.rows[4].iter().enumerate() {
            let f = l.encode(&images.test[j]);
            let hit = l
                .scores(&f)
                .argmax(1, false)
                .eq(j as i64)
                .to_kind(Kind::Double);
            assert_eq!(hit.mean(Kind::Double).double_value(&[]), *want, "class {j}");
        }
        // Every prototype is its class's mean feature in the final encoder.
        for c in 0..5 {
            let mean = l.encode(&images.train[c]).mean_dim(0, false, Kind::Float);
            let p = l.memory().prototypes().unwrap().get(c as i64);
            assert!(p.allclose(&mean, 1e-5, 1e-5, false), "class {c}");
        }
        // The same seed gives the same run.
        let mut again = consolidating(2, Distance::SquaredEuclidean);
        let r2 = run(&mut again, &images.train, &images.test);
        assert_eq!(r2.rows, r.rows);
    }

    /// A run killed after a checkpoint and resumed from it ends with the record of an
    /// uninterrupted run, for every learner (a consolidating one included: its encoder,
    /// optimiser and generator come back with it).
    #[test]
    fn a_class_stream_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one() {
        let (train, test) = gaussian_classes(12, 7);
        let gaussian = ClassImages { train, test };
        let pictures = image_classes(9, 5);
        type Make = fn() -> Box<dyn ClassLearner>;
        let makers: [(Make, &ClassImages); 4] = [
            (|| Box::new(prototypes(0.9)), &gaussian),
            (
                || Box::new(OnlineHead::new(identity(), 16, 12, 0.1).unwrap()),
                &gaussian,
            ),
            (
                || {
                    Box::new(
                        LaMamlHead::new(identity(), 16, 12, LaMamlConfig::default(), 2).unwrap(),
                    )
                },
                &gaussian,
            ),
            (
                || Box::new(consolidating(3, Distance::SquaredEuclidean)),
                &pictures,
            ),
        ];
        let config = serde_json::json!({"test": "resume"});
        for (make, images) in makers {
            let t = images.train.len();
            let mut straight = make();
            let s = run(straight.as_mut(), &images.train, &images.test);
            let dir = tempfile::tempdir().unwrap();
            let ck = Checkpoints::new(dir.path());
            let mut learner = make();
            let killed = run_class_stream(
                learner.as_mut(),
                images,
                ClassRunRecord::default(),
                &mut |r, l| {
                    if r.rows.len() % 4 == 0 {
                        save_class_checkpoint(&ck, &config, r, l)?;
                    }
                    if r.rows.len() == t - 1 {
                        return Err(Error::config("kill", t - 1, "simulated"));
                    }
                    Ok(())
                },
                &mut |_, _| {},
            );
            assert!(killed.is_err());
            let mut learner = make();
            let restored = restore_class_checkpoint(&ck, &config, learner.as_mut()).unwrap();
            assert_eq!(restored.rows.len(), 4 * ((t - 1) / 4), "{}", learner.name());
            let mut r = run_class_stream(
                learner.as_mut(),
                images,
                restored,
                &mut |_, _| Ok(()),
                &mut |_, _| {},
            )
            .unwrap();
            r.wall_s = s.wall_s;
            r.encode_s = s.encode_s;
            assert_eq!(r, s, "{}", learner.name());
            assert_eq!(
                learner.consolidations().len(),
                straight.consolidations().len()
            );
            let other = serde_json::json!({"test": "other"});
            let err = restore_class_checkpoint(&ck, &other, make().as_mut()).unwrap_err();
            assert!(err.to_string().contains("test"), "{err}");
        }
    }
}
