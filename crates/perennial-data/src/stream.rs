//! Continual-learning task streams: Permuted-, Rotated- and Split-MNIST.
//!
//! A [`Stream`] is a sequence of tasks over one pair of MNIST parts (train and test).
//! Every task is a pure function of the stream's seed and its index: which training
//! examples it holds and in what order, which test examples, and its input transform
//! (a pixel permutation, a rotation, or none). Nothing is copied ahead: [`Stream::batch`]
//! builds the pixels of the examples asked for, so twenty tasks of the full test set
//! cost no memory beyond the two MNIST parts.
//!
//! The protocols:
//!
//! * **Permuted-MNIST** and **Rotated-MNIST** as in GEM (Lopez-Paz & Ranzato 2017):
//!   20 tasks by default; each task's training set is 1000 examples drawn without
//!   replacement from the 60,000 training images, its test set the 10,000 test images,
//!   all under the task's transform. A permuted task shuffles the 784 pixels with its
//!   own random permutation (every task, the first included); a rotated task turns the
//!   image by an angle drawn uniformly in `[180 t / T, 180 (t + 1) / T)` degrees, so the
//!   angles spread over 0–180. The label space is the ten digits for every task
//!   (domain-incremental).
//! * **Split-MNIST**: five tasks of two digits, (0, 1), (2, 3), …, (8, 9), with every
//!   training and test image of those digits (or `train_per_task` of them). In the
//!   *task-incremental* scenario the task is known at test time and a learner chooses
//!   between its two digits only ([`Stream::mask`]); in the *class-incremental* one it
//!   chooses among all ten.
//!
//! Labels are always the original digits `0..10`; [`Scenario`] says how a learner may
//! use the task identity.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mnist::Mnist;
use crate::rng::streams;
use crate::rng::Rng;

/// Pixels per MNIST image.
pub const PIXELS: usize = 28 * 28;

/// The streams this module builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamName {
    /// Permuted-MNIST (GEM protocol).
    PermutedMnist,
    /// Rotated-MNIST (GEM protocol).
    RotatedMnist,
    /// Split-MNIST, five tasks of two digits.
    SplitMnist,
}

impl StreamName {
    /// Every stream name, as the CLI spells it.
    pub const ALL: [&'static str; 3] = ["permuted-mnist", "rotated-mnist", "split-mnist"];

    /// The name as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::PermutedMnist => "permuted-mnist",
            StreamName::RotatedMnist => "rotated-mnist",
            StreamName::SplitMnist => "split-mnist",
        }
    }
}

impl std::str::FromStr for StreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "permuted-mnist" => Ok(StreamName::PermutedMnist),
            "rotated-mnist" => Ok(StreamName::RotatedMnist),
            "split-mnist" => Ok(StreamName::SplitMnist),
            _ => Err(Error::invalid(
                "--stream",
                s,
                format!(
                    "known streams: {}, omniglot-classes",
                    StreamName::ALL.join(", ")
                ),
            )),
        }
    }
}

/// What a learner knows about the task at test time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Every task has the same label space and the inputs change (Permuted-, Rotated-MNIST).
    DomainIncremental,
    /// The task is known: a learner picks among that task's classes only.
    TaskIncremental,
    /// The task is not known: a learner picks among every class.
    ClassIncremental,
}

impl std::str::FromStr for Scenario {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "domain" | "domain-incremental" => Ok(Scenario::DomainIncremental),
            "task" | "task-incremental" => Ok(Scenario::TaskIncremental),
            "class" | "class-incremental" => Ok(Scenario::ClassIncremental),
            _ => Err(Error::invalid(
                "--scenario",
                s,
                "known scenarios: domain, task, class",
            )),
        }
    }
}

/// How many tasks and examples a stream has, and its seed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamSpec {
    /// Number of tasks (Split-MNIST: at most 5).
    pub tasks: usize,
    /// Training examples per task; `None` takes every one available (Split-MNIST).
    pub train_per_task: Option<usize>,
    /// Test examples per task; `None` takes every one available.
    pub test_per_task: Option<usize>,
    /// The seed every task is derived from.
    pub seed: u64,
}

impl StreamSpec {
    /// GEM's protocol for Permuted- and Rotated-MNIST: 20 tasks of 1000 training
    /// examples, the whole test set per task.
    pub fn gem(seed: u64) -> Self {
        StreamSpec {
            tasks: 20,
            train_per_task: Some(1000),
            test_per_task: None,
            seed,
        }
    }

    /// Split-MNIST: five tasks with every example of their two digits.
    pub fn split(seed: u64) -> Self {
        StreamSpec {
            tasks: 5,
            train_per_task: None,
            test_per_task: None,
            seed,
        }
    }

    /// The default spec of a stream.
    pub fn default_for(name: StreamName, seed: u64) -> Self {
        match name {
            StreamName::SplitMnist => StreamSpec::split(seed),
            _ => StreamSpec::gem(seed),
        }
    }
}

/// A task's input transform.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// The image as it is.
    Identity,
    /// `out[i] = in[perm[i]]` over the 784 pixels.
    Permute(Vec<u16>),
    /// A rotation by this many degrees counter-clockwise (bilinear, zero fill), stored
    /// as four taps per output pixel so applying it is a gather.
    Rotate {
        /// The angle in degrees.
        degrees: f64,
        /// Source pixel of each tap (0 where the tap falls outside the image).
        taps: Vec<[u16; 4]>,
        /// Weight of each tap (0 outside the image).
        weights: Vec<[f32; 4]>,
    },
}

impl Transform {
    /// A rotation by `degrees` of a 28 x 28 image (the taps of
    /// [`crate::imageops::rotation_taps`]).
    pub fn rotation(degrees: f64) -> Self {
        let (taps, weights) = crate::imageops::rotation_taps(28, 28, degrees)
            .into_iter()
            .map(|(t, w)| (t.map(|i| i as u16), w.map(|v| v as f32)))
            .unzip();
        Transform::Rotate {
            degrees,
            taps,
            weights,
        }
    }

    /// Writes the transformed 784 pixels of `src` into `out`.
    pub fn apply(&self, src: &[f32], out: &mut [f32]) {
        debug_assert_eq!(src.len(), PIXELS);
        debug_assert_eq!(out.len(), PIXELS);
        match self {
            Transform::Identity => out.copy_from_slice(src),
            Transform::Permute(p) => {
                for (o, &k) in out.iter_mut().zip(p) {
                    *o = src[k as usize];
                }
            }
            Transform::Rotate { taps, weights, .. } => {
                for ((o, t), w) in out.iter_mut().zip(taps).zip(weights) {
                    // Sum in f64, in the same order as `imageops::rotate_bilinear`.
                    let v = (w[0] as f64) * src[t[0] as usize] as f64
                        + (w[1] as f64) * src[t[1] as usize] as f64
                        + (w[2] as f64) * src[t[2] as usize] as f64
                        + (w[3] as f64) * src[t[3] as usize] as f64;
                    *o = v as f32;
                }
            }
        }
    }

    /// A short description (`identity`, `permutation`, `rotation 37.2°`).
    pub fn describe(&self) -> String {
        match self {
            Transform::Identity => "identity".into(),
            Transform::Permute(_) => "permutation".into(),
            Transform::Rotate { degrees, .. } => format!("rotation {degrees:.1}°"),
        }
    }
}

/// One task of a stream.
#[derive(Debug, Clone)]
pub struct StreamTask {
    /// A short name (`perm 3`, `rot 27.1°`, `digits 2/3`).
    pub name: String,
    /// The input transform.
    pub transform: Transform,
    /// The digits this task holds (all ten for domain-incremental streams).
    pub classes: Vec<u8>,
    /// Indices into the training part, in the order the task presents them.
    pub train: Vec<u32>,
    /// Indices into the test part.
    pub test: Vec<u32>,
}

/// Which part of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The task's training examples.
    Train,
    /// The task's test examples.
    Test,
}

/// A sequence of tasks over MNIST; see the module docs.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Which stream.
    pub name: StreamName,
    /// How a learner may use the task identity.
    pub scenario: Scenario,
    /// The spec it was built from.
    pub spec: StreamSpec,
    /// The tasks, in order.
    pub tasks: Vec<StreamTask>,
    train: Arc<Mnist>,
    test: Arc<Mnist>,
}

impl Stream {
    /// Builds stream `name` in `scenario` from the MNIST `train` and `test` parts.
    /// Permuted- and Rotated-MNIST are domain-incremental only; Split-MNIST is task- or
    /// class-incremental.
    pub fn new(
        name: StreamName,
        scenario: Scenario,
        spec: StreamSpec,
        train: Arc<Mnist>,
        test: Arc<Mnist>,
    ) -> Result<Self> {
        if spec.tasks == 0 {
            return Err(Error::invalid(
                "--tasks",
                0,
                "a stream needs at least one task",
            ));
        }
        let split = name == StreamName::SplitMnist;
        match (split, scenario) {
            (false, Scenario::DomainIncremental)
            | (true, Scenario::TaskIncremental | Scenario::ClassIncremental) => {}
            _ => {
                return Err(Error::invalid(
                    "--scenario",
                    format!("{scenario:?}"),
                    format!(
                        "{} is {}",
                        name.as_str(),
                        if split {
                            "task- or class-incremental"
                        } else {
                            "domain-incremental"
                        }
                    ),
                ))
            }
        }
        if split && spec.tasks > 5 {
            return Err(Error::invalid(
                "--tasks",
                spec.tasks,
                "split-mnist has 5 tasks of two digits",
            ));
        }
        for (part, n) in [("train", &train), ("test", &test)] {
            if n.images.len() != n.labels.len() * PIXELS {
                return Err(Error::invalid(
                    "MNIST part",
                    part,
                    format!("{} pixels for {} labels", n.images.len(), n.labels.len()),
                ));
            }
        }
        let mut tasks = Vec::with_capacity(spec.tasks);
        for t in 0..spec.tasks {
            let classes: Vec<u8> = if split {
                vec![2 * t as u8, 2 * t as u8 + 1]
            } else {
                (0..10).collect()
            };
            let pick = |part: &Mnist, want: Option<usize>, sub: u64, what: &str| {
                let mut pool: Vec<u32> = (0..part.labels.len() as u32)
                    .filter(|&i| classes.contains(&part.labels[i as usize]))
                    .collect();
                let mut rng = Rng::for_item(spec.seed, sub, t as u64);
                rng.shuffle(&mut pool);
                match want {
                    Some(0) => Err(Error::invalid(what, 0, "a task needs at least one example")),
                    Some(k) if k > pool.len() => Err(Error::invalid(
                        what,
                        k,
                        format!("task {t} has only {} examples", pool.len()),
                    )),
                    Some(k) => {
                        pool.truncate(k);
                        Ok(pool)
                    }
                    None => Ok(pool),
                }
            };
            let train_idx = pick(
                &train,
                spec.train_per_task,
                streams::STREAM_TRAIN,
                "--train-per-task",
            )?;
            let mut test_idx = pick(
                &test,
                spec.test_per_task,
                streams::STREAM_TEST,
                "--test-per-task",
            )?;
            // The test set's order does not matter; keep it sorted for cache locality.
            test_idx.sort_unstable();
            let mut rng = Rng::for_item(spec.seed, streams::STREAM_TRANSFORMS, t as u64);
            let (tname, transform) = match name {
                StreamName::PermutedMnist => {
                    let mut p: Vec<u16> = (0..PIXELS as u16).collect();
                    rng.shuffle(&mut p);
                    (format!("perm {t}"), Transform::Permute(p))
                }
                StreamName::RotatedMnist => {
                    let (lo, hi) = (
                        180.0 * t as f64 / spec.tasks as f64,
                        180.0 * (t + 1) as f64 / spec.tasks as f64,
                    );
                    let deg = lo + rng.uniform() * (hi - lo);
                    (format!("rot {deg:.1}°"), Transform::rotation(deg))
                }
                StreamName::SplitMnist => (
                    format!("digits {}/{}", classes[0], classes[1]),
                    Transform::Identity,
                ),
            };
            tasks.push(StreamTask {
                name: tname,
                transform,
                classes,
                train: train_idx,
                test: test_idx,
            });
        }
        Ok(Stream {
            name,
            scenario,
            spec,
            tasks,
            train,
            test,
        })
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the stream has no task (never true for a built stream).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Input size of every example (784).
    pub fn input_dim(&self) -> usize {
        PIXELS
    }

    /// Number of output classes a learner needs (10: labels are the digits).
    pub fn outputs(&self) -> usize {
        10
    }

    /// Every digit of the stream's tasks, in task order.
    pub fn classes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for t in &self.tasks {
            for &c in &t.classes {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The classes a learner may answer for task `task`: that task's digits in the
    /// task-incremental scenario, `None` (all of them) otherwise.
    pub fn mask(&self, task: usize) -> Option<&[u8]> {
        match self.scenario {
            Scenario::TaskIncremental => Some(&self.tasks[task].classes),
            _ => None,
        }
    }

    /// Number of examples in a part of a task.
    pub fn examples(&self, task: usize, part: Part) -> usize {
        match part {
            Part::Train => self.tasks[task].train.len(),
            Part::Test => self.tasks[task].test.len(),
        }
    }

    /// The pixels (`range.len() * 784`, transformed) and labels of examples `range` of
    /// a part of a task, in the task's order.
    pub fn batch(&self, task: usize, part: Part, range: Range<usize>) -> (Vec<f32>, Vec<i64>) {
        let positions: Vec<usize> = range.collect();
        self.gather(task, part, &positions)
    }

    /// Like [`Stream::batch`], for any positions of a part of a task (e.g. a replay
    /// buffer's).
    pub fn gather(&self, task: usize, part: Part, positions: &[usize]) -> (Vec<f32>, Vec<i64>) {
        let t = &self.tasks[task];
        let (idx, data) = match part {
            Part::Train => (&t.train, &*self.train),
            Part::Test => (&t.test, &*self.test),
        };
        let mut x = vec![0f32; positions.len() * PIXELS];
        let mut y = Vec::with_capacity(positions.len());
        for (out, &p) in x.chunks_exact_mut(PIXELS).zip(positions) {
            let i = idx[p] as usize;
            t.transform
                .apply(&data.images[i * PIXELS..(i + 1) * PIXELS], out);
            y.push(data.labels[i] as i64);
        }
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageops::rotate_bilinear;

    fn fake(n: usize, seed: u64) -> Arc<Mnist> {
        let mut rng = Rng::new(seed);
        Arc::new(Mnist {
            images: (0..n * PIXELS).map(|_| rng.uniform() as f32).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        })
    }

    #[test]
    fn rotation_taps_match_the_reference_rotation() {
        let img: Vec<f32> = fake(1, 3).images.clone();
        for deg in [0.0, 12.5, 90.0, 171.3] {
            let mut out = vec![0f32; PIXELS];
            Transform::rotation(deg).apply(&img, &mut out);
            let want = rotate_bilinear(&img, 28, 28, deg);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-6, "{deg}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let (tr, te) = (fake(100, 1), fake(50, 2));
        let build = |name, sc, spec| Stream::new(name, sc, spec, tr.clone(), te.clone());
        let mut spec = StreamSpec::gem(0);
        spec.train_per_task = Some(101);
        let err = build(StreamName::PermutedMnist, Scenario::DomainIncremental, spec)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--train-per-task") && err.contains("100"),
            "{err}"
        );
        let mut spec = StreamSpec::split(0);
        spec.tasks = 6;
        let err = build(StreamName::SplitMnist, Scenario::TaskIncremental, spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tasks"), "{err}");
        let err = build(
            StreamName::SplitMnist,
            Scenario::DomainIncremental,
            StreamSpec::split(0),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--scenario"), "{err}");
        let mut spec = StreamSpec::gem(0);
        spec.tasks = 0;
        assert!(build(StreamName::RotatedMnist, Scenario::DomainIncremental, spec).is_err());
        assert!("imagenet".parse::<StreamName>().is_err());
    }
}
