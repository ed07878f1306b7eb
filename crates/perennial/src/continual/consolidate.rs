//! Meta-consolidation: Perennial's learner keeps improving its representation on the
//! classes it has met.
//!
//! Every `every` classes, the ProtoNet encoder under the prototype memory is
//! meta-trained further on episodes replayed from the training images of the classes
//! learnt so far (the learner keeps them: 15 images of 28×28 per class, 7 MB at 600
//! classes), with the same objective it was meta-trained with on the background
//! classes. The stream's images are then encoded again and the memory rebuilds its
//! prototypes from the new features ([`super::classinc::run_class_stream_refreshing`]).
//! Only training images are ever replayed; test images are never seen by the encoder.

use tch::Device;

use crate::data::Rng;
use crate::error::{Error, Result};
use crate::meta::metric::ProtoNet;
use crate::meta::{MetaLearner, StepReport};
use crate::tensors::{Batch, Task};

/// The settings of meta-consolidation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsolidationConfig {
    /// Consolidate after every this many classes (0: never).
    pub every: usize,
    /// Episodes per consolidation.
    pub episodes: usize,
    /// Classes per episode (at most the classes known).
    pub ways: usize,
    /// Support images per class.
    pub shots: usize,
    /// Query images per class.
    pub queries: usize,
}

impl ConsolidationConfig {
    /// Checks the values against the `per_class` training images each class has.
    pub fn validate(&self, per_class: usize) -> Result<()> {
        if self.every == 0 {
            return Ok(());
        }
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
        if self.shots == 0 || self.queries == 0 || self.shots + self.queries > per_class {
            return Err(Error::config(
                "--consolidate-shots/--consolidate-queries",
                format!("{}+{}", self.shots, self.queries),
                format!(
                    "need at least one each, and at most {per_class} images per class together"
                ),
            ));
        }
        Ok(())
    }

    /// Whether to consolidate once `known` of `total` classes are learnt (never after
    /// the last class: nothing would use it).
    pub fn due(&self, known: usize, total: usize) -> bool {
        self.every > 0 && known % self.every == 0 && known < total
    }
}

/// One consolidation: `config.episodes` meta-updates of `net` on episodes drawn from
/// the classes `0..known`, whose training images `images(c)` returns (`side`×`side`
/// pixels each, concatenated). Returns the mean of the updates' reports.
pub fn consolidate(
    net: &mut ProtoNet,
    config: &ConsolidationConfig,
    known: usize,
    side: usize,
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
    let pixels = side * side;
    let mut mean = StepReport {
        loss: 0.0,
        accuracy: Some(0.0),
    };
    for _ in 0..config.episodes {
        let classes = rng.choose_distinct(known, ways);
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
                if k < config.shots {
                    sx.extend_from_slice(img);
                    sy.push(label as i64);
                } else {
                    qx.extend_from_slice(img);
                    qy.push(label as i64);
                }
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
    use crate::meta::metric::ProtoNetConfig;

    fn config() -> ConsolidationConfig {
        ConsolidationConfig {
            every: 2,
            episodes: 3,
            ways: 5,
            shots: 1,
            queries: 2,
        }
    }

    #[test]
    fn settings_are_checked_and_consolidation_is_due_every_k_classes() {
        let c = config();
        assert!(c.validate(3).is_ok());
        assert!(c.validate(2).is_err(), "1 + 2 images need 3 per class");
        assert!(ConsolidationConfig { ways: 1, ..c }.validate(15).is_err());
        assert!(ConsolidationConfig { episodes: 0, ..c }
            .validate(15)
            .is_err());
        assert!(ConsolidationConfig {
            every: 0,
            ways: 0,
            ..c
        }
        .validate(0)
        .is_ok());
        let due: Vec<usize> = (1..=6).filter(|&k| c.due(k, 6)).collect();
        assert_eq!(due, [2, 4], "never after the last class");
        assert!(!ConsolidationConfig { every: 0, ..c }.due(2, 6));
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
            &mut |c| images(c),
            &mut Rng::new(1),
        );
        assert!(one.is_err(), "one class cannot make an episode");
    }
}
