//! The one continual loop: any [`Learner`] over any [`TaskStream`], filling one
//! [`RunRecord`].
//!
//! Tasks arrive in order; each task's training examples are seen once, in batches, and
//! after each task the learner is tested, which gives row `i` of the accuracy matrix
//! `R[i][j]`. The stream's [`Protocol`] says how:
//!
//! * [`Protocol::AllTasks`] (GEM's, the MNIST streams): every task of the stream, seen
//!   or not, each under its own mask, with an untrained baseline for forward transfer;
//! * [`Protocol::ClassIncremental`] (OML's and ANML's Omniglot stream): one class per
//!   task, tested on the held-out images of every class seen so far among all classes
//!   known (zero above the diagonal), with the mean accuracy at the protocol's points
//!   (10, 50, 100, 200, 600 classes), the unknown flag's rates, and at the end each
//!   class's accuracy within its own label set (own-label BWT).
//!
//! Learning speed is measured the same way on both: a task's accuracy after 0, 1, 5 and
//! all of its training examples (at the first batch end at or past each). A learner that
//! encodes its inputs ([`Learner::encodes`]) is shown features: the loop encodes every
//! task's examples once per representation version ([`Learner::version`]), one batch
//! per task and part.

use std::ops::Range;
use std::time::Instant;

use tch::{Kind, Tensor};

use super::learner::ConsolidationRecord;
use super::metrics::AccuracyMatrix;
use super::strategy::StrategyState;
use crate::data::stream::{Part, Stream};
use crate::error::{Error, Result};

/// How a stream's learners are tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Every task after every task, each under its own mask, with a baseline.
    AllTasks,
    /// One class per task, tested among the classes known so far.
    ClassIncremental,
}

/// A stream of tasks: what the loop and the learners read.
pub trait TaskStream {
    /// The number of tasks.
    fn len(&self) -> usize;

    /// Whether the stream has no task.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How learners are tested on it.
    fn protocol(&self) -> Protocol;

    /// The number of examples of a task's part.
    fn examples(&self, task: usize, part: Part) -> usize;

    /// Examples `range` of a task's part: inputs `[n, ...]` and labels `[n]`.
    fn batch(&self, task: usize, part: Part, range: Range<usize>) -> (Tensor, Tensor);

    /// The examples at `positions` of a task's part.
    fn gather(&self, task: usize, part: Part, positions: &[usize]) -> (Tensor, Tensor);

    /// The labels `[n]` of the examples at `positions` of a task's part.
    fn labels(&self, task: usize, part: Part, positions: &[usize]) -> Tensor {
        self.gather(task, part, positions).1
    }

    /// The classes a task's examples are told apart among (task-incremental
    /// learning), or `None` for all the model's outputs.
    fn mask(&self, task: usize) -> Option<Vec<usize>>;
}

/// The MNIST streams: GEM's protocol.
impl TaskStream for Stream {
    fn len(&self) -> usize {
        Stream::len(self)
    }

    fn protocol(&self) -> Protocol {
        Protocol::AllTasks
    }

    fn examples(&self, task: usize, part: Part) -> usize {
        Stream::examples(self, task, part)
    }

    fn batch(&self, task: usize, part: Part, range: Range<usize>) -> (Tensor, Tensor) {
        let (x, y) = Stream::batch(self, task, part, range);
        tensors(&x, &y)
    }

    fn gather(&self, task: usize, part: Part, positions: &[usize]) -> (Tensor, Tensor) {
        let (x, y) = Stream::gather(self, task, part, positions);
        tensors(&x, &y)
    }

    fn mask(&self, task: usize) -> Option<Vec<usize>> {
        Stream::mask(self, task).map(|m| m.iter().map(|&c| c as usize).collect())
    }
}

/// A batch as tensors: `x` `[n, d]` f32 and `y` `[n]` i64.
pub fn tensors(x: &[f32], y: &[i64]) -> (Tensor, Tensor) {
    let n = y.len() as i64;
    (Tensor::from_slice(x).view([n, -1]), Tensor::from_slice(y))
}

/// A class-incremental stream of images: class `c` is task `c`, `train[c]`
/// `[n_c, ...]` its training inputs in the order they are taught and `test[c]` its
/// held-out ones.
#[derive(Debug)]
pub struct ClassImages {
    /// Each class's training inputs.
    pub train: Vec<Tensor>,
    /// Each class's test inputs.
    pub test: Vec<Tensor>,
}

impl ClassImages {
    fn part(&self, part: Part) -> &[Tensor] {
        match part {
            Part::Train => &self.train,
            Part::Test => &self.test,
        }
    }
}

impl TaskStream for ClassImages {
    fn len(&self) -> usize {
        self.train.len()
    }

    fn protocol(&self) -> Protocol {
        Protocol::ClassIncremental
    }

    fn examples(&self, task: usize, part: Part) -> usize {
        self.part(part)[task].size()[0] as usize
    }

    fn batch(&self, task: usize, part: Part, range: Range<usize>) -> (Tensor, Tensor) {
        let x = self.part(part)[task].narrow(0, range.start as i64, range.len() as i64);
        (x, labels(task, range.len()))
    }

    fn gather(&self, task: usize, part: Part, positions: &[usize]) -> (Tensor, Tensor) {
        let idx: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let x = self.part(part)[task].index_select(0, &Tensor::from_slice(&idx));
        (x, labels(task, positions.len()))
    }

    fn labels(&self, task: usize, _part: Part, positions: &[usize]) -> Tensor {
        labels(task, positions.len())
    }

    fn mask(&self, _task: usize) -> Option<Vec<usize>> {
        None
    }
}

fn labels(class: usize, n: usize) -> Tensor {
    Tensor::full([n as i64], class as i64, (Kind::Int64, tch::Device::Cpu))
}

/// Every task's examples in a learner's representation, one batch per task and part.
struct Encoded {
    version: u64,
    train: Vec<Tensor>,
    test: Vec<Tensor>,
}

impl Encoded {
    fn new(learner: &dyn Learner, stream: &dyn TaskStream) -> Self {
        let all = |part: Part| -> Vec<Tensor> {
            (0..stream.len())
                .map(|t| {
                    let (x, _) = stream.batch(t, part, 0..stream.examples(t, part));
                    learner.encode(&x)
                })
                .collect()
        };
        Encoded {
            version: learner.version(),
            train: all(Part::Train),
            test: all(Part::Test),
        }
    }

    fn part(&self, part: Part) -> &[Tensor] {
        match part {
            Part::Train => &self.train,
            Part::Test => &self.test,
        }
    }
}

/// A learner's view of the stream while it learns task `current`: the stream's
/// examples, as features when the learner encodes them, and the masks it learns under.
pub struct View<'a> {
    stream: &'a dyn TaskStream,
    encoded: Option<&'a Encoded>,
    current: usize,
}

impl View<'_> {
    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.stream.len()
    }

    /// Whether the stream has no task.
    pub fn is_empty(&self) -> bool {
        self.stream.is_empty()
    }

    /// The task being learnt.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The number of examples of a task's part.
    pub fn examples(&self, task: usize, part: Part) -> usize {
        self.stream.examples(task, part)
    }

    /// Examples `range` of a task's part as the learner sees them (features when it
    /// encodes) and their labels.
    pub fn batch(&self, task: usize, part: Part, range: Range<usize>) -> (Tensor, Tensor) {
        match self.encoded {
            Some(e) => {
                let f = e.part(part)[task].narrow(0, range.start as i64, range.len() as i64);
                let positions: Vec<usize> = range.collect();
                (f, self.stream.labels(task, part, &positions))
            }
            None => self.stream.batch(task, part, range),
        }
    }

    /// The examples at `positions` of a task's part, as [`View::batch`] gives them.
    pub fn gather(&self, task: usize, part: Part, positions: &[usize]) -> (Tensor, Tensor) {
        match self.encoded {
            Some(e) => {
                let idx: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
                let f = e.part(part)[task].index_select(0, &Tensor::from_slice(&idx));
                (f, self.stream.labels(task, part, positions))
            }
            None => self.stream.gather(task, part, positions),
        }
    }

    /// Examples `range` of a task's part as the stream holds them (images), for a
    /// learner that keeps what it learns.
    pub fn inputs(&self, task: usize, part: Part, range: Range<usize>) -> Tensor {
        self.stream.batch(task, part, range).0
    }

    /// The classes a task's examples are told apart among: the task's own classes
    /// (task-incremental learning), every class known so far (class-incremental
    /// learning: classes `0..=current`), or `None` for all outputs.
    pub fn mask(&self, task: usize) -> Option<Vec<usize>> {
        match self.stream.protocol() {
            Protocol::AllTasks => self.stream.mask(task),
            Protocol::ClassIncremental => Some((0..=self.current).collect()),
        }
    }
}

/// A continual learner: how it learns from a batch of the current task, what it does
/// between tasks, and how it predicts. The hooks have no-op defaults.
pub trait Learner {
    /// Its name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Whether it learns on features of its own ([`Learner::encode`]) rather than on the
    /// stream's inputs.
    fn encodes(&self) -> bool {
        false
    }

    /// Features `[n, d]` of inputs `[n, ...]` in its current representation (the
    /// inputs themselves unless it encodes).
    fn encode(&self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    /// The representation's version: features from [`Learner::encode`] are stale once
    /// it changes. The default never changes.
    fn version(&self) -> u64 {
        0
    }

    /// Called before the first batch of `task`.
    fn before_task(&mut self, _data: &View<'_>, _task: usize) -> Result<()> {
        Ok(())
    }

    /// Learns from examples `range` of `task`'s training part. Returns the training loss
    /// (0 for a learner without one).
    fn observe(&mut self, data: &View<'_>, task: usize, range: Range<usize>) -> Result<f64>;

    /// Called after the last batch of `task`, before it is tested: a learner may
    /// improve itself here (consolidate its representation).
    fn after_task(&mut self, _data: &View<'_>, _task: usize) -> Result<()> {
        Ok(())
    }

    /// Scores `[n, classes]` of features `[n, d]` (the highest is the prediction),
    /// among the classes of `mask` when given (the others score −∞ or are absent).
    fn scores(&self, features: &Tensor, mask: Option<&[usize]>) -> Tensor;

    /// Whether each of features `[n, d]` is far from everything it knows (`None`: it
    /// has no such flag).
    fn unknown(&self, _features: &Tensor) -> Option<Tensor> {
        None
    }

    /// The consolidations of its representation so far.
    fn consolidations(&self) -> Vec<ConsolidationRecord> {
        Vec::new()
    }

    /// Everything it holds, for a checkpoint between tasks.
    fn state(&self) -> StrategyState;

    /// Restores a [`Learner::state`], so that the rest of the stream runs exactly as it
    /// would have without the interruption.
    fn restore(&mut self, state: StrategyState) -> Result<()>;
}

/// Settings of a run over a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSettings {
    /// Training batch size (GEM: 10; one for the class-incremental stream, whose
    /// images arrive one at a time).
    pub batch: usize,
    /// Test examples per task used for the accuracy matrix (`None`: all).
    pub test_examples: Option<usize>,
}

/// The numbers of training examples after which the loop measures each task's
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

/// The rates of the unknown flag at one point of a class-incremental stream.
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

/// Everything a run over a stream has measured so far; the state [`run`] resumes from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The untrained learner's accuracy on every task, for forward transfer
    /// ([`Protocol::AllTasks`]; empty otherwise).
    #[serde(default)]
    pub baseline: Vec<f64>,
    /// Row `i`: accuracy on every task after learning tasks `0..=i`.
    pub rows: Vec<Vec<f64>>,
    /// For every task learnt, its accuracy after 0, 1, 5 and all of its examples.
    pub speed: Vec<Vec<SpeedPoint>>,
    /// The points (numbers of classes learnt) where accuracy on all seen classes is
    /// reported ([`Protocol::ClassIncremental`]).
    #[serde(default)]
    pub points: Vec<usize>,
    /// Accuracy on the test images of all classes seen, at each point (images
    /// weighted equally).
    #[serde(default)]
    pub accuracy_at: Vec<f64>,
    /// The unknown flag's rates at each point.
    #[serde(default)]
    pub unknown: Vec<UnknownRates>,
    /// At the end of a class-incremental stream, each class's accuracy when it is told
    /// apart only from the classes known when it was learnt: what
    /// [`RunRecord::own_label_bwt`] compares with `R[j][j]`.
    #[serde(default)]
    pub final_own_labels: Vec<f64>,
    /// Seconds spent learning, testing, encoding and consolidating, over all sessions
    /// of the run.
    pub wall_s: f64,
    /// The part of `wall_s` spent encoding.
    #[serde(default)]
    pub encode_s: f64,
}

impl RunRecord {
    /// The tasks learnt so far.
    pub fn tasks_done(&self) -> usize {
        self.rows.len()
    }

    /// The accuracy matrix, with its baseline when there is one (forward transfer is
    /// not defined without: a class-incremental stream's unknown class scores zero by
    /// construction).
    pub fn matrix(&self) -> Result<AccuracyMatrix> {
        let baseline = (!self.baseline.is_empty()).then(|| self.baseline.clone());
        AccuracyMatrix::new(self.rows.clone(), baseline)
    }

    /// The mean learning-speed accuracy at each point (0, 1, 5, all examples) over
    /// the tasks learnt.
    pub fn mean_speed(&self) -> Vec<f64> {
        let n = self.speed.len().max(1) as f64;
        (0..SPEED_POINTS.len() + 1)
            .map(|k| {
                self.speed
                    .iter()
                    .filter_map(|s| s.get(k))
                    .map(|p| p.accuracy)
                    .sum::<f64>()
                    / n
            })
            .collect()
    }

    /// Backward transfer within each class's own label set: the mean over classes
    /// `j < T−1` of `final_own_labels[j] − R[j][j]`, where the final accuracy on class
    /// `j` is measured among the classes known when `j` was learnt, as `R[j][j]` was.
    /// GEM's BWT also counts the drop that comes from meeting the later classes'
    /// labels; this one counts only what the learner lost (or gained) on the task it
    /// was given. `None` before the stream ends, with a single class, or on a stream
    /// that does not measure it.
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

/// The test examples of a class-incremental stream in the learner's representation,
/// concatenated, with each class's offset and size.
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

    /// Scores of the test features `rows` among the `known` classes.
    fn scores(&self, learner: &dyn Learner, rows: Range<i64>, known: usize) -> Tensor {
        let mask: Vec<usize> = (0..known).collect();
        learner.scores(
            &self.all.narrow(0, rows.start, rows.end - rows.start),
            Some(&mask),
        )
    }

    /// Per-class accuracy on the test images of classes `0..known`, padded with zeros
    /// to `len` classes.
    fn row(&self, learner: &dyn Learner, known: usize, len: usize) -> Vec<f64> {
        tch::no_grad(|| {
            let n = self.offsets[known - 1] + self.sizes[known - 1];
            let hit = self
                .scores(learner, 0..n, known)
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

    /// Each class `j`'s accuracy when the learner's scores are cut to classes `0..=j`
    /// (all `known` classes learnt).
    fn own_label_row(&self, learner: &dyn Learner, known: usize) -> Vec<f64> {
        tch::no_grad(|| {
            let n = self.offsets[known - 1] + self.sizes[known - 1];
            let scores = self.scores(learner, 0..n, known);
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

    /// Accuracy on class `c`'s test images among the `known` classes.
    fn class_accuracy(&self, learner: &dyn Learner, c: usize, known: usize) -> f64 {
        tch::no_grad(|| {
            let (o, m) = (self.offsets[c], self.sizes[c]);
            self.scores(learner, o..o + m, known)
                .argmax(1, false)
                .eq_tensor(&self.labels.narrow(0, o, m))
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        })
    }

    /// The fraction of the test images of classes `from..to` flagged unknown.
    fn flagged(&self, learner: &dyn Learner, from: usize, to: usize) -> f64 {
        let end = self.offsets[to - 1] + self.sizes[to - 1];
        let x = self
            .all
            .narrow(0, self.offsets[from], end - self.offsets[from]);
        tch::no_grad(|| match learner.unknown(&x) {
            Some(u) => u.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]),
            None => 0.0,
        })
    }
}

/// How a run is tested: the stream's protocol over the learner's current features.
struct Tester<'a> {
    stream: &'a dyn TaskStream,
    settings: &'a RunSettings,
    /// The class-incremental stream's test set.
    classes: Option<TestSet>,
}

impl<'a> Tester<'a> {
    fn new(
        stream: &'a dyn TaskStream,
        settings: &'a RunSettings,
        encoded: Option<&Encoded>,
    ) -> Self {
        let classes = (stream.protocol() == Protocol::ClassIncremental).then(|| {
            let test: Vec<Tensor> = match encoded {
                Some(e) => e.test.iter().map(Tensor::shallow_clone).collect(),
                None => (0..stream.len())
                    .map(|t| {
                        let n = stream.examples(t, Part::Test);
                        stream.batch(t, Part::Test, 0..n).0
                    })
                    .collect(),
            };
            TestSet::new(&test)
        });
        Tester {
            stream,
            settings,
            classes,
        }
    }

    /// Accuracy on task `j`'s test examples (of the first `settings.test_examples`)
    /// under its mask, while task `current` is learnt.
    fn task(
        &self,
        learner: &dyn Learner,
        encoded: Option<&Encoded>,
        j: usize,
        current: usize,
    ) -> f64 {
        if let Some(set) = &self.classes {
            return set.class_accuracy(learner, j, current + 1);
        }
        let n = self.stream.examples(j, Part::Test);
        let n = self.settings.test_examples.map_or(n, |k| k.min(n));
        let view = View {
            stream: self.stream,
            encoded,
            current,
        };
        let (x, y) = view.batch(j, Part::Test, 0..n);
        let mask = view.mask(j);
        tch::no_grad(|| {
            learner
                .scores(&x, mask.as_deref())
                .argmax(-1, false)
                .eq_tensor(&y)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        })
    }

    /// Row `current` of the accuracy matrix (after learning tasks `0..=current`).
    fn row(&self, learner: &dyn Learner, encoded: Option<&Encoded>, current: usize) -> Vec<f64> {
        let t = self.stream.len();
        match &self.classes {
            Some(set) => set.row(learner, current + 1, t),
            None => (0..t)
                .map(|j| self.task(learner, encoded, j, current))
                .collect(),
        }
    }
}

/// Runs `learner` over `stream`, from the start (`record` empty) or from where a
/// checkpointed run stopped (`record`, with the learner restored to its state after its
/// last task), and returns the finished record.
///
/// After the untrained baseline (when the protocol has one) and after every task,
/// `task_done` gets the record and the learner (to write a checkpoint; an error stops
/// the run); `progress` is called after every batch with (task, batches done in it,
/// batches in it).
pub fn run(
    learner: &mut dyn Learner,
    stream: &dyn TaskStream,
    settings: &RunSettings,
    mut record: RunRecord,
    task_done: &mut dyn FnMut(&RunRecord, &dyn Learner) -> Result<()>,
    progress: &mut dyn FnMut(usize, usize, usize),
) -> Result<RunRecord> {
    if settings.batch == 0 {
        return Err(Error::config("--batch", 0, "must be at least 1"));
    }
    let tasks = stream.len();
    let protocol = stream.protocol();
    let first = record.rows.len();
    let with_baseline = protocol == Protocol::AllTasks;
    if tasks == 0
        || first > tasks
        || record.speed.len() != first
        || (first > 0 && with_baseline && record.baseline.len() != tasks)
    {
        return Err(Error::config(
            "run record",
            format!("{first} rows of a stream of {tasks} tasks"),
            "does not fit the stream",
        ));
    }
    let points = match protocol {
        Protocol::ClassIncremental => protocol_points(tasks),
        Protocol::AllTasks => Vec::new(),
    };
    record.points = points.clone();
    let mut clock = Instant::now();
    let mut tick = |record: &mut RunRecord| {
        record.wall_s += clock.elapsed().as_secs_f64();
        clock = Instant::now();
    };
    let mut encoding = 0.0;
    let encode = |learner: &dyn Learner, seconds: &mut f64| {
        learner.encodes().then(|| {
            let c = Instant::now();
            let e = Encoded::new(learner, stream);
            *seconds += c.elapsed().as_secs_f64();
            e
        })
    };
    let mut encoded = encode(learner, &mut encoding);
    let mut tester = Tester::new(stream, settings, encoded.as_ref());
    if with_baseline && record.rows.is_empty() {
        record.baseline = (0..tasks)
            .map(|j| tester.task(learner, encoded.as_ref(), j, 0))
            .collect();
        tick(&mut record);
        task_done(&record, learner)?;
    }
    for t in first..tasks {
        let view = |current| View {
            stream,
            encoded: encoded.as_ref(),
            current,
        };
        learner.before_task(&view(t), t)?;
        let n = stream.examples(t, Part::Train);
        let batches = n.div_ceil(settings.batch);
        let before = match t {
            0 => record.baseline.first().copied().unwrap_or(0.0),
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
            let loss = learner.observe(&view(t), t, range)?;
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
                let accuracy = tester.task(learner, encoded.as_ref(), t, t);
                speed.extend(due.into_iter().map(|asked| SpeedPoint {
                    asked,
                    seen,
                    accuracy,
                }));
            }
            progress(t, b + 1, batches);
        }
        learner.after_task(&view(t), t)?;
        record.speed.push(speed);
        if encoded
            .as_ref()
            .is_some_and(|e| e.version != learner.version())
        {
            encoded = encode(learner, &mut encoding);
            tester = Tester::new(stream, settings, encoded.as_ref());
        }
        let r = tester.row(learner, encoded.as_ref(), t);
        if let Some(set) = &tester.classes {
            if points.contains(&(t + 1)) {
                let known_n = set.offsets[t] + set.sizes[t];
                let total: f64 = (0..=t).map(|j| r[j] * set.sizes[j] as f64).sum();
                record.accuracy_at.push(total / known_n as f64);
                let novel = (t + 1 < tasks)
                    .then(|| set.flagged(learner, t + 1, (t + 1 + NOVEL_CLASSES).min(tasks)));
                record.unknown.push(UnknownRates {
                    classes: t + 1,
                    known_flagged: set.flagged(learner, 0, t + 1),
                    novel_flagged: novel,
                });
            }
            if t + 1 == tasks {
                record.final_own_labels = set.own_label_row(learner, tasks);
            }
        }
        record.rows.push(r);
        record.encode_s += encoding;
        encoding = 0.0;
        tick(&mut record);
        task_done(&record, learner)?;
    }
    Ok(record)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lifelong::encoder::{self, EncoderSpec, Encoding, Identity};
    use crate::lifelong::lamaml::{LaMaml, LaMamlConfig};
    use crate::lifelong::learner::{LearnerConfig, LifelongLearner};
    use crate::lifelong::policy::ConsolidationPolicy;
    use crate::lifelong::strategy::{Classifier, ModelLearner, Naive};
    use crate::lifelong::{Checkpoints, ConsolidationConfig};
    use crate::nn::Distance;

    /// A naive online softmax head on inputs that are features already.
    fn head(dim: usize, classes: usize, lr: f64) -> ModelLearner {
        let model = Classifier::linear_zero(dim, classes, lr).unwrap();
        ModelLearner::on_features(identity(), model, Box::new(Naive))
    }

    const ONE_AT_A_TIME: RunSettings = RunSettings {
        batch: 1,
        test_examples: None,
    };

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

    fn stream(learner: &mut dyn Learner, images: &ClassImages) -> RunRecord {
        run(
            learner,
            images,
            &ONE_AT_A_TIME,
            RunRecord::default(),
            &mut |_, _| Ok(()),
            &mut |_, _, _| {},
        )
        .unwrap()
    }

    fn run_on(learner: &mut dyn Learner, train: &[Tensor], test: &[Tensor]) -> RunRecord {
        let images = ClassImages {
            train: train.iter().map(Tensor::shallow_clone).collect(),
            test: test.iter().map(Tensor::shallow_clone).collect(),
        };
        stream(learner, &images)
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
            Box::new(prototypes(0.95)) as Box<dyn Learner>,
            Box::new(head(2, 3, 0.5)),
        ] {
            let mut learner = learner;
            let r = run_on(learner.as_mut(), &train, &test);
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
        let r = run_on(&mut prototypes(0.95), &train, &test);
        assert_eq!(r.rows, [[1.0, 0.0], [0.5, 1.0]]);
        assert_eq!(r.matrix().unwrap().metrics().bwt, Some(-0.5));
        assert_eq!(r.final_own_labels, [1.0, 1.0]);
        assert_eq!(r.own_label_bwt(), Some(0.0));
        let cut = RunRecord {
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
        let r = run_on(&mut prototypes(0.95), &train, &test);
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
        let h = run_on(&mut head(dim, 20, 0.15), &train, &test);
        let lamaml = || {
            let model = Classifier::linear_zero(dim, 20, 0.15).unwrap();
            let strategy = LaMaml::new(LaMamlConfig::default(), 3).unwrap();
            let mut l = ModelLearner::on_features(identity(), model, Box::new(strategy));
            run_on(&mut l, &train, &test)
        };
        let l = lamaml();
        let (hm, lm) = (h.matrix().unwrap().metrics(), l.matrix().unwrap().metrics());
        assert!(lm.acc > hm.acc + 0.2, "lamaml {lm:?} head {hm:?}");
        assert!(
            lm.bwt.unwrap() > hm.bwt.unwrap(),
            "lamaml {lm:?} head {hm:?}"
        );
        assert_eq!(lamaml().rows, l.rows);
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
        let r = run(
            &mut l,
            &images,
            &ONE_AT_A_TIME,
            RunRecord::default(),
            &mut |rec, l| {
                versions.push((rec.rows.len(), l.version()));
                Ok(())
            },
            &mut |_, _, _| {},
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
        let r2 = stream(&mut again, &images);
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
        type Make = fn() -> Box<dyn Learner>;
        let lamaml: Make = || {
            let model = Classifier::linear_zero(16, 12, 0.1).unwrap();
            let strategy = LaMaml::new(LaMamlConfig::default(), 2).unwrap();
            Box::new(ModelLearner::on_features(
                identity(),
                model,
                Box::new(strategy),
            ))
        };
        let makers: [(Make, &ClassImages); 4] = [
            (|| Box::new(prototypes(0.9)), &gaussian),
            (|| Box::new(head(16, 12, 0.1)), &gaussian),
            (lamaml, &gaussian),
            (
                || Box::new(consolidating(3, Distance::SquaredEuclidean)),
                &pictures,
            ),
        ];
        let config = serde_json::json!({"test": "resume"});
        for (make, images) in makers {
            let t = images.train.len();
            let mut straight = make();
            let s = stream(straight.as_mut(), images);
            let dir = tempfile::tempdir().unwrap();
            let ck = Checkpoints::new(dir.path());
            let mut learner = make();
            let killed = run(
                learner.as_mut(),
                images,
                &ONE_AT_A_TIME,
                RunRecord::default(),
                &mut |r, l| {
                    if r.rows.len() % 4 == 0 {
                        ck.save(&config, r, l)?;
                    }
                    if r.rows.len() == t - 1 {
                        return Err(Error::config("kill", t - 1, "simulated"));
                    }
                    Ok(())
                },
                &mut |_, _, _| {},
            );
            assert!(killed.is_err());
            let mut learner = make();
            let restored = ck.restore(&config, learner.as_mut()).unwrap();
            assert_eq!(
                restored.record.rows.len(),
                4 * ((t - 1) / 4),
                "{}",
                learner.name()
            );
            let mut r = run(
                learner.as_mut(),
                images,
                &ONE_AT_A_TIME,
                restored.record,
                &mut |_, _| Ok(()),
                &mut |_, _, _| {},
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
            let err = ck.restore(&other, make().as_mut()).unwrap_err();
            assert!(err.to_string().contains("test"), "{err}");
            // A checkpoint of the earlier format (no `format` field) is refused by name.
            let path = ck.state_path();
            let mut state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            state.as_object_mut().unwrap().remove("format");
            std::fs::write(&path, state.to_string()).unwrap();
            let err = ck
                .restore(&config, make().as_mut())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("format 0") && err.contains("start the run afresh"),
                "{err}"
            );
        }
    }
}
