//! Meta-consolidation: Perennial's learner keeps improving its representation on the
//! classes it has met.
//!
//! When its policy says so ([`super::policy`]), the lifelong learner's encoder (a
//! ProtoNet's embedding) is meta-trained further on episodes replayed from the
//! examples of the classes learnt so far (the learner keeps them: 15 images of 28×28
//! per class, 28 MB at 600 classes), with the same objective it was meta-trained with
//! on the background classes. The learner then encodes its examples again and rebuilds
//! its prototypes from the new features ([`super::LifelongLearner::consolidate`]).
//! An episode's classes can be drawn in groups of near neighbours
//! ([`ConsolidationConfig::neighbours`]), so that the encoder trains on the classes its
//! memory confuses rather than on random ones it already tells apart.
//! Only training images are ever replayed; test images are never seen by the encoder.

use tch::{Device, Kind, Tensor};

use crate::data::Rng;
use crate::error::{Error, Result};
use crate::meta::{MetaLearner, StepReport};
use crate::tensors::{Batch, Task};

/// The settings of meta-consolidation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsolidationConfig {
    /// Episodes per consolidation.
    pub episodes: usize,
    /// Classes per episode (at most the classes known).
    pub ways: usize,
    /// Support images per class.
    pub shots: usize,
    /// Query images per class.
    pub queries: usize,
    /// Classes per group of near neighbours in an episode: an episode is built from
    /// groups of a random class and its `neighbours − 1` nearest classes (by the
    /// distance between their prototypes), so that it holds the classes the memory
    /// confuses. 1: the classes are drawn at random; more than `ways`: one group
    /// fills the episode.
    #[serde(default = "one")]
    pub neighbours: usize,
    /// Translate each replayed image by a random `dy, dx ∈ −jitter..=jitter` pixels
    /// (zero fill) each time it enters an episode, so that the few training images of
    /// a class are seen in more than one position (0: as stored).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter: usize,
}

fn one() -> usize {
    1
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// Appends `img` (`side`×`side`) translated by `(dy, dx)` pixels to `out`: output
/// pixel `(i, j)` reads input pixel `(i − dy, j − dx)`, zero where that is outside.
fn push_translated(out: &mut Vec<f32>, img: &[f32], side: usize, dy: i64, dx: i64) {
    let s = side as i64;
    out.extend((0..s * s).map(|p| {
        let (i, j) = (p / s - dy, p % s - dx);
        if (0..s).contains(&i) && (0..s).contains(&j) {
            img[(i * s + j) as usize]
        } else {
            0.0
        }
    }));
}

impl Default for ConsolidationConfig {
    /// 120 episodes of 20 ways, 5 shots and 10 queries, built from groups of 5 near
    /// neighbours, with 1-pixel jitter: the settings of the Omniglot class stream.
    fn default() -> Self {
        ConsolidationConfig {
            episodes: 120,
            ways: 20,
            shots: 5,
            queries: 10,
            neighbours: 5,
            jitter: 1,
        }
    }
}

impl ConsolidationConfig {
    /// The examples a class needs to enter a consolidation episode.
    pub fn examples_per_class(&self) -> usize {
        self.shots + self.queries
    }

    /// Checks the values against the `per_class` examples each class has (`None`:
    /// not known in advance).
    pub fn validate(&self, per_class: Option<usize>) -> Result<()> {
        if self.episodes == 0 {
            return Err(Error::config(
                "--consolidate-episodes",
                0,
                "must be at least 1",
            ));
        }
        if self.ways < 2 {
            return Err(Error::config(
                "--consolidate-ways",
                self.ways,
                "an episode needs at least 2 classes",
            ));
        }
        if self.neighbours == 0 {
            return Err(Error::config(
                "--consolidate-neighbours",
                0,
                "must be at least 1 (1: classes drawn at random)",
            ));
        }
        let too_many = per_class.is_some_and(|n| self.shots + self.queries > n);
        if self.shots == 0 || self.queries == 0 || too_many {
            let most = per_class.map_or(String::new(), |n| {
                format!(", and at most {n} images per class together")
            });
            return Err(Error::config(
                "--consolidate-shots/--consolidate-queries",
                format!("{}+{}", self.shots, self.queries),
                format!("need at least one each{most}"),
            ));
        }
        Ok(())
    }
}

/// Each class's nearest other classes, nearest first (at most `k`), by the squared
/// distance between the rows of `means` (`[classes, d]`).
pub fn nearest_classes(means: &Tensor, k: usize) -> Vec<Vec<usize>> {
    tch::no_grad(|| {
        let m = means.to_kind(Kind::Double);
        let n = m.size()[0];
        let sq = (&m * &m).sum_dim_intlist(1, false, Kind::Double);
        let d = sq.unsqueeze(1) + sq.unsqueeze(0) - m.matmul(&m.tr()) * 2.0;
        // A class is never its own neighbour.
        let d = d.masked_fill(&Tensor::eye(n, (Kind::Bool, m.device())), f64::INFINITY);
        let take = (k as i64).min(n - 1);
        if take <= 0 {
            return vec![Vec::new(); n as usize];
        }
        let (_, idx) = d.topk(take, 1, false, true);
        let idx: Vec<i64> = Vec::try_from(idx.reshape([-1])).unwrap_or_default();
        idx.chunks(take as usize)
            .map(|row| row.iter().map(|&c| c as usize).collect())
            .collect()
    })
}

/// The `ways` classes of one episode among `0..known`: at random, or (with `near`,
/// each class's nearest others) in groups of a random class and its `neighbours − 1`
/// nearest classes not yet chosen.
fn episode_classes(
    known: usize,
    ways: usize,
    neighbours: usize,
    near: Option<&[Vec<usize>]>,
    rng: &mut Rng,
) -> Vec<usize> {
    let Some(near) = near.filter(|_| neighbours > 1) else {
        return rng.choose_distinct(known, ways);
    };
    let mut chosen = Vec::with_capacity(ways);
    let mut taken = vec![false; known];
    while chosen.len() < ways {
        let anchor = loop {
            let c = rng.below(known as u64) as usize;
            if !taken[c] {
                break c;
            }
        };
        taken[anchor] = true;
        chosen.push(anchor);
        let mut group = 1;
        for &c in &near[anchor] {
            if group == neighbours || chosen.len() == ways {
                break;
            }
            if c < known && !taken[c] {
                taken[c] = true;
                chosen.push(c);
                group += 1;
            }
        }
    }
    chosen
}

/// One consolidation: `config.episodes` meta-updates of `net` (an episodic
/// meta-learner: a ProtoNet) on episodes drawn from the classes `0..known`, whose training images `images(c)` returns (`side`×`side`
/// pixels each, concatenated). `means` (`[known, d]`, the classes' prototypes in
/// the current embedding) is needed when `config.neighbours > 1`. Returns the mean of
/// the updates' reports.
pub fn consolidate(
    net: &mut dyn MetaLearner,
    config: &ConsolidationConfig,
    known: usize,
    side: usize,
    means: Option<&Tensor>,
    images: &mut dyn FnMut(usize) -> Vec<f32>,
    rng: &mut Rng,
) -> Result<StepReport> {
    let ways = config.ways.min(known);
    let near = if config.neighbours > 1 && ways >= 2 {
        let Some(m) = means.filter(|m| m.size().first() == Some(&(known as i64))) else {
            return Err(Error::config(
                "consolidation",
                "prototypes",
                format!("episodes of near neighbours need the {known} classes' prototypes"),
            ));
        };
        Some(nearest_classes(m, ways))
    } else {
        None
    };
    consolidate_near(net, config, known, side, near.as_deref(), images, rng)
}

/// [`consolidate`] with each class's nearest other classes given (`near[c]`, nearest
/// first, as the learner's example index finds them) instead of computed from the
/// prototypes; `None` draws episodes at random.
pub fn consolidate_near(
    net: &mut dyn MetaLearner,
    config: &ConsolidationConfig,
    known: usize,
    side: usize,
    near: Option<&[Vec<usize>]>,
    images: &mut dyn FnMut(usize) -> Vec<f32>,
    rng: &mut Rng,
) -> Result<StepReport> {
    let ways = config.ways.min(known);
    if ways < 2 {
        return Err(Error::config(
            "classes known",
            known,
            "consolidation needs at least 2",
        ));
    }
    if near.is_some_and(|n| n.len() != known) {
        return Err(Error::config(
            "consolidation",
            "neighbour lists",
            format!("need one list for each of the {known} classes"),
        ));
    }
    let pixels = side * side;
    let mut mean = StepReport {
        loss: 0.0,
        accuracy: Some(0.0),
    };
    for _ in 0..config.episodes {
        let classes = episode_classes(known, ways, config.neighbours, near, rng);
        let (mut sx, mut sy, mut qx, mut qy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (label, &c) in classes.iter().enumerate() {
            let all = images(c);
            let n = all.len() / pixels;
            if n < config.shots + config.queries {
                return Err(Error::config(
                    "class",
                    c,
                    format!("has {n} training images, fewer than shots + queries"),
                ));
            }
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            for (k, &i) in order[..config.shots + config.queries].iter().enumerate() {
                let img = &all[i * pixels..(i + 1) * pixels];
                let (x, y) = if k < config.shots {
                    (&mut sx, &mut sy)
                } else {
                    (&mut qx, &mut qy)
                };
                if config.jitter > 0 {
                    let j = config.jitter as i64;
                    let dy = rng.below(2 * j as u64 + 1) as i64 - j;
                    let dx = rng.below(2 * j as u64 + 1) as i64 - j;
                    push_translated(x, img, side, dy, dx);
                } else {
                    x.extend_from_slice(img);
                }
                y.push(label as i64);
            }
        }
        let task = Task {
            support: Batch::from_pixels(&sx, &sy, side, side, ways, Device::Cpu),
            query: Batch::from_pixels(&qx, &qy, side, side, ways, Device::Cpu),
        };
        let r = net.meta_step(std::slice::from_ref(&task));
        if !r.loss.is_finite() {
            return Err(Error::config(
                "consolidation",
                "loss",
                "diverged (not finite); lower --consolidate-lr",
            ));
        }
        mean.loss += r.loss / config.episodes as f64;
        if let (Some(m), Some(a)) = (mean.accuracy.as_mut(), r.accuracy) {
            *m += a / config.episodes as f64;
        }
    }
    Ok(mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::metric::{ProtoNet, ProtoNetConfig};

    fn config() -> ConsolidationConfig {
        ConsolidationConfig {
            episodes: 3,
            ways: 5,
            shots: 1,
            queries: 2,
            neighbours: 1,
            jitter: 0,
        }
    }

    #[test]
    fn settings_are_checked() {
        let c = config();
        assert!(c.validate(Some(3)).is_ok());
        assert!(c.validate(None).is_ok());
        assert!(
            c.validate(Some(2)).is_err(),
            "1 + 2 images need 3 per class"
        );
        assert_eq!(c.examples_per_class(), 3);
        let bad = |c: ConsolidationConfig| c.validate(Some(15)).is_err();
        assert!(bad(ConsolidationConfig { ways: 1, ..c }));
        assert!(bad(ConsolidationConfig { neighbours: 0, ..c }));
        assert!(bad(ConsolidationConfig { episodes: 0, ..c }));
        assert!(
            !bad(ConsolidationConfig { neighbours: 9, ..c }),
            "a group larger than an episode fills the episode"
        );
        assert!(ConsolidationConfig::default().validate(Some(15)).is_ok());
    }

    /// Episodes are drawn from the known classes only, and each update moves the
    /// encoder; the same seed gives the same encoder.
    #[test]
    fn consolidation_trains_on_the_known_classes_only() {
        let side = 28;
        // Class c's images: constant c / 10 with a per-image offset.
        let images = |c: usize| -> Vec<f32> {
            (0..3)
                .flat_map(|i| vec![c as f32 / 10.0 + i as f32 * 0.01; side * side])
                .collect()
        };
        let run = || {
            let mut net = ProtoNet::new(ProtoNetConfig::default(), 1, Device::Cpu).unwrap();
            let before = net.params().tensors()[0].copy();
            let mut asked = Vec::new();
            let mut rng = Rng::new(5);
            let r = consolidate(
                &mut net,
                &config(),
                4,
                side,
                None,
                &mut |c| {
                    asked.push(c);
                    images(c)
                },
                &mut rng,
            )
            .unwrap();
            assert!(r.loss.is_finite());
            assert!(asked.iter().all(|&c| c < 4), "{asked:?}");
            assert_eq!(
                asked.len(),
                3 * 4,
                "4 ways (the classes known) x 3 episodes"
            );
            let after = net.params().tensors()[0].copy();
            assert!((&after - &before).abs().max().double_value(&[]) > 0.0);
            after
        };
        let (a, b) = (run(), run());
        assert!(a.equal(&b));
        let mut net = ProtoNet::new(ProtoNetConfig::default(), 1, Device::Cpu).unwrap();
        let one = consolidate(
            &mut net,
            &config(),
            1,
            side,
            None,
            &mut |c| images(c),
            &mut Rng::new(1),
        );
        assert!(one.is_err(), "one class cannot make an episode");
    }

    /// A translated image moves its pixels by (dy, dx) and loses what leaves the frame;
    /// jittered consolidation is as deterministic per seed as the plain one, and
    /// trains the encoder on other pixels than it.
    #[test]
    fn jitter_translates_replayed_images() {
        let side = 4;
        let mut img = vec![0f32; 16];
        img[4 + 2] = 1.0; // (1, 2)
        img[15] = 2.0; // (3, 3)
        let mut out = Vec::new();
        push_translated(&mut out, &img, side, 1, -1);
        assert_eq!(out.len(), 16);
        assert_eq!(out[2 * 4 + 1], 1.0, "(1, 2) moves to (2, 1)");
        assert_eq!(out.iter().filter(|&&v| v != 0.0).count(), 1, "(3, 3) left");
        let mut same = Vec::new();
        push_translated(&mut same, &img, side, 0, 0);
        assert_eq!(same, img);

        let side = 28;
        // Class c's images: a bright square whose place depends on c and the image.
        let images = |c: usize| -> Vec<f32> {
            (0..3)
                .flat_map(|i| {
                    let mut v = vec![0f32; side * side];
                    for p in 0..36 {
                        v[(4 + c + p / 6) * side + 4 + i + p % 6] = 1.0;
                    }
                    v
                })
                .collect()
        };
        let run = |jitter| {
            let mut net = ProtoNet::new(ProtoNetConfig::default(), 1, Device::Cpu).unwrap();
            let c = ConsolidationConfig { jitter, ..config() };
            consolidate(
                &mut net,
                &c,
                4,
                side,
                None,
                &mut |c| images(c),
                &mut Rng::new(5),
            )
            .unwrap();
            net.params().tensors()[0].copy()
        };
        let (a, b, plain) = (run(2), run(2), run(0));
        assert!(a.equal(&b));
        assert!((&a - &plain).abs().max().double_value(&[]) > 0.0);
    }

    /// Neighbour lists are nearest first and never hold the class itself; an episode
    /// of groups holds each anchor's nearest classes, all distinct; near-neighbour
    /// episodes refuse to run without prototypes.
    #[test]
    fn near_neighbour_episodes_group_the_closest_classes() {
        // Classes on a line at 0, 1, 2, 10, 11, 12, 20, 21.
        let at = [0.0f32, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0, 21.0];
        let means = Tensor::from_slice(&at).view([-1, 1]);
        let near = nearest_classes(&means, 3);
        assert_eq!(near[0], [1, 2, 3]);
        assert!(near[4][..2].contains(&3) && near[4][..2].contains(&5));
        assert_eq!(near[7][0], 6);
        assert!(near.iter().enumerate().all(|(c, n)| !n.contains(&c)));
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let e = episode_classes(8, 6, 3, Some(&near), &mut rng);
            assert_eq!(e.len(), 6);
            let mut sorted = e.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 6, "{e:?}");
            // The first group is an anchor and its two nearest classes.
            let (a, g) = (e[0], &e[1..3]);
            assert!(g.iter().all(|c| near[a][..2].contains(c)), "{e:?}");
        }
        // A group larger than the episode fills it with the anchor's nearest classes.
        let e = episode_classes(8, 3, 9, Some(&near), &mut rng);
        assert_eq!(e[1..], near[e[0]][..2]);
        // One neighbour per group is the random draw.
        let (mut r1, mut r2) = (Rng::new(9), Rng::new(9));
        assert_eq!(
            episode_classes(8, 4, 1, Some(&near), &mut r1),
            r2.choose_distinct(8, 4)
        );
        let mut net = ProtoNet::new(ProtoNetConfig::default(), 1, Device::Cpu).unwrap();
        let hard = ConsolidationConfig {
            neighbours: 2,
            ..config()
        };
        let none = consolidate(
            &mut net,
            &hard,
            4,
            28,
            None,
            &mut |_| vec![0.0; 3 * 784],
            &mut rng,
        );
        assert!(none.is_err());
        let ok = consolidate(
            &mut net,
            &hard,
            4,
            28,
            Some(&means.narrow(0, 0, 4)),
            &mut |c| vec![c as f32 / 4.0; 3 * 784],
            &mut rng,
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
