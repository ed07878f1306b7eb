//! The lifelong learner's memory of classes: one prototype per class (the running mean
//! of its examples' features), nearest-prototype prediction under the encoder's
//! distance, and an *unknown* flag calibrated on the learner's own examples.
//!
//! Learning a class never changes another class's prototype, so what is learnt is
//! never overwritten; accuracy on an old class can fall only because newer classes
//! come to compete with it.
//!
//! The unknown threshold: when the `n`-th example of a class arrives (`n ≥ 2`), its
//! distance `d` to the class's prototype *before* it is added is an out-of-sample
//! distance of a known-class input. A prototype of `m` examples lies off the class's
//! true mean, which adds about `1/m` of the spread to squared Euclidean distances, so
//! each is recorded as `d · m/(m+1)` (a distance to the class mean), and an input whose
//! nearest prototype, of `m` examples, is at `d` counts as `d · m/(m+1)`. An input is
//! flagged unknown when that exceeds the `quantile` of the recorded distances. Under
//! the cosine distance (`1 − cos`) the same correction is applied; it is then an
//! approximation.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::nn::Distance;

/// What the memory makes of one input ([`PrototypeMemory::assess`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// The class of the nearest prototype.
    pub nearest: Option<usize>,
    /// Whether the input is farther from every prototype than the threshold.
    pub unknown: bool,
    /// The corrected nearest distance over the threshold.
    pub score: f64,
}

/// One prototype per class, under a distance, with an unknown flag.
#[derive(Debug)]
pub struct PrototypeMemory {
    distance: Distance,
    sums: Vec<Tensor>,
    counts: Vec<usize>,
    protos: Option<Tensor>,
    /// Per class, the corrected out-of-sample distances of its examples.
    held_out: Vec<Vec<f64>>,
    quantile: f64,
}

impl PrototypeMemory {
    /// An empty memory comparing features under `distance`, whose unknown threshold is
    /// the `quantile` (in `(0, 1]`) of out-of-sample distances.
    pub fn new(distance: Distance, quantile: f64) -> Result<Self> {
        if !(quantile > 0.0 && quantile <= 1.0) {
            return Err(Error::config(
                "--unknown-quantile",
                quantile,
                "must be in (0, 1]",
            ));
        }
        Ok(PrototypeMemory {
            distance,
            sums: Vec::new(),
            counts: Vec::new(),
            protos: None,
            held_out: Vec::new(),
            quantile,
        })
    }

    /// The distance prototypes are compared under.
    pub fn distance(&self) -> Distance {
        self.distance
    }

    /// The number of classes known.
    pub fn known(&self) -> usize {
        self.sums.len()
    }

    /// The number of examples of each class.
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// The prototypes `[known, d]` (`None` before the first class).
    pub fn prototypes(&self) -> Option<&Tensor> {
        self.protos.as_ref()
    }

    /// The current unknown threshold (a distance; ∞ until calibrated): the `quantile`
    /// of the recorded distances, computed when asked rather than on every example.
    pub fn threshold(&self) -> f64 {
        let mut v: Vec<f64> = self.held_out.iter().flatten().copied().collect();
        if v.is_empty() {
            return f64::INFINITY;
        }
        let k = ((self.quantile * v.len() as f64).ceil() as usize).clamp(1, v.len());
        *v.select_nth_unstable_by(k - 1, f64::total_cmp).1
    }

    /// The distance of one feature vector `[d]` to another `[d]`.
    fn pair_distance(&self, a: &Tensor, b: &Tensor) -> f64 {
        match self.distance {
            Distance::SquaredEuclidean => (a - b).square().sum(Kind::Float).double_value(&[]),
            Distance::Cosine { .. } => {
                let cos = Distance::Cosine { scale: 1.0 }
                    .logits(&a.view([1, -1]), &b.view([1, -1]))
                    .double_value(&[0, 0]);
                1.0 - cos
            }
        }
    }

    /// Distances `[n, known]` of features `[n, d]` to every prototype: squared
    /// Euclidean, or `1 − cos`.
    pub fn distances(&self, features: &Tensor) -> Option<Tensor> {
        let p = self.protos.as_ref()?;
        Some(match self.distance {
            Distance::SquaredEuclidean => {
                // ‖x − p‖² = ‖x‖² − 2 x·p + ‖p‖², for all pairs at once.
                let x2 = features.square().sum_dim_intlist(1, true, Kind::Float);
                let p2 = p
                    .square()
                    .sum_dim_intlist(1, true, Kind::Float)
                    .transpose(0, 1);
                (x2 - features.matmul(&p.transpose(0, 1)) * 2.0 + p2).clamp_min(0.0)
            }
            Distance::Cosine { .. } => {
                let cos = Distance::Cosine { scale: 1.0 }.logits(features, p);
                (-cos) + 1.0
            }
        })
    }

    /// Scores `[n, known]` of features `[n, d]` (the highest is the prediction): the
    /// logits of the encoder's distance (`−‖x − p‖²`, or `scale · cos`).
    pub fn scores(&self, features: &Tensor) -> Tensor {
        let Some(p) = self.protos.as_ref() else {
            return Tensor::zeros([features.size()[0], 0], (Kind::Float, features.device()));
        };
        match self.distance {
            Distance::SquaredEuclidean => {
                -self.distances(features).expect("prototypes are present")
            }
            cosine => cosine.logits(features, p),
        }
    }

    /// Each input's nearest class (`[n]`) and its corrected distance to it (`[n]`).
    fn nearest(&self, features: &Tensor) -> Option<(Tensor, Tensor)> {
        let d = self.distances(features)?;
        let (nearest, which) = d.min_dim(1, false);
        let m: Vec<f32> = self.counts.iter().map(|&m| m as f32).collect();
        let m = Tensor::from_slice(&m).index_select(0, &which);
        Some((which, nearest * &m / (m + 1.0)))
    }

    /// Whether each input `[n, d]` is farther from every prototype than the threshold
    /// (`[n]` booleans; everything is unknown before the first class).
    pub fn unknown(&self, features: &Tensor) -> Tensor {
        match self.nearest(features) {
            Some((_, d)) => d.gt(self.threshold()),
            None => Tensor::ones([features.size()[0]], (Kind::Bool, features.device())),
        }
    }

    /// For each input `[n, d]`, from one distance computation: its nearest class
    /// (`None` before the first class), whether it is unknown (as
    /// [`PrototypeMemory::unknown`] says), and its unknown score, the corrected nearest
    /// distance over the threshold, so that above 1 is unknown (0 before calibration;
    /// ∞ before the first class).
    pub fn assess(&self, features: &Tensor) -> Vec<Assessment> {
        let n = features.size()[0] as usize;
        let Some((which, d)) = self.nearest(features) else {
            let none = Assessment {
                nearest: None,
                unknown: true,
                score: f64::INFINITY,
            };
            return vec![none; n];
        };
        let t = self.threshold();
        let which: Vec<i64> = Vec::try_from(which).unwrap_or_default();
        let d: Vec<f32> = Vec::try_from(d.to_kind(Kind::Float)).unwrap_or_default();
        which
            .into_iter()
            .zip(d)
            .map(|(c, d)| Assessment {
                nearest: Some(c as usize),
                // The comparison of [`PrototypeMemory::unknown`]: in the features' f32.
                unknown: d > t as f32,
                score: if t.is_finite() { f64::from(d) / t } else { 0.0 },
            })
            .collect()
    }

    /// Learns one example (features `[d]`) of class `class`: a known class, or the next
    /// new one (`class == known`).
    pub fn learn(&mut self, features: &Tensor, class: usize) -> Result<()> {
        let f = features.reshape([-1]).to_kind(Kind::Float);
        match class.cmp(&self.sums.len()) {
            std::cmp::Ordering::Less => {
                let m = self.counts[class] as f64;
                let mean = &self.sums[class] / m;
                let d = self.pair_distance(&f, &mean);
                self.held_out[class].push(d * m / (m + 1.0));
                self.sums[class] = &self.sums[class] + &f;
                self.counts[class] += 1;
            }
            std::cmp::Ordering::Equal => {
                self.sums.push(f.copy());
                self.counts.push(1);
                self.held_out.push(Vec::new());
            }
            std::cmp::Ordering::Greater => {
                return Err(Error::config(
                    "class label",
                    class,
                    format!("classes must arrive in order; {} known", self.sums.len()),
                ))
            }
        }
        let row = &self.sums[class] / self.counts[class] as f64;
        self.protos = Some(match self.protos.take() {
            Some(p) if (class as i64) < p.size()[0] => {
                p.narrow(0, class as i64, 1).copy_(&row.unsqueeze(0));
                p
            }
            Some(p) => Tensor::cat(&[p, row.unsqueeze(0)], 0),
            None => row.unsqueeze(0),
        });
        Ok(())
    }

    /// Forgets class `class` (its prototype and distances); the classes after it move
    /// down by one.
    pub fn forget(&mut self, class: usize) -> Result<()> {
        if class >= self.known() {
            return Err(Error::config(
                "class",
                class,
                format!("not known ({} classes)", self.known()),
            ));
        }
        let _ = self.sums.remove(class);
        self.counts.remove(class);
        self.held_out.remove(class);
        self.protos = self.rows();
        Ok(())
    }

    /// Forgets everything (the distance and quantile stay).
    pub fn clear(&mut self) {
        self.sums.clear();
        self.counts.clear();
        self.protos = None;
        self.held_out.clear();
    }

    fn rows(&self) -> Option<Tensor> {
        if self.sums.is_empty() {
            return None;
        }
        let rows: Vec<Tensor> = self
            .sums
            .iter()
            .zip(&self.counts)
            .map(|(s, &m)| s / m as f64)
            .collect();
        Some(Tensor::stack(&rows, 0))
    }

    /// Everything the memory holds: the sums as named tensors `sum.{c}`, and the counts
    /// and distances as JSON.
    pub fn state(&self) -> (Vec<(String, Tensor)>, serde_json::Value) {
        let tensors = self
            .sums
            .iter()
            .enumerate()
            .map(|(c, t)| (format!("sum.{c}"), t.shallow_clone()))
            .collect();
        let meta = serde_json::json!({ "counts": self.counts, "held_out": self.held_out });
        (tensors, meta)
    }

    /// Restores a [`PrototypeMemory::state`].
    pub fn restore(
        &mut self,
        tensors: &[(String, Tensor)],
        meta: &serde_json::Value,
    ) -> Result<()> {
        let field = |key: &str| {
            meta.get(key).cloned().ok_or_else(|| {
                Error::config("prototype memory", key, "missing from the saved state")
            })
        };
        let bad = |key: &str, e: serde_json::Error| {
            Error::config("prototype memory", key, format!("unreadable: {e}"))
        };
        let counts: Vec<usize> =
            serde_json::from_value(field("counts")?).map_err(|e| bad("counts", e))?;
        let held_out: Vec<Vec<f64>> =
            serde_json::from_value(field("held_out")?).map_err(|e| bad("held_out", e))?;
        if held_out.len() != counts.len() || counts.contains(&0) {
            return Err(Error::config(
                "prototype memory",
                "counts",
                "do not fit the saved distances",
            ));
        }
        self.sums = indexed(tensors, "sum.", counts.len())?;
        self.counts = counts;
        self.held_out = held_out;
        self.protos = self.rows();
        Ok(())
    }
}

/// Tensors `PREFIX0..PREFIX{n-1}` of a saved state, in order (copies).
pub(crate) fn indexed(tensors: &[(String, Tensor)], prefix: &str, n: usize) -> Result<Vec<Tensor>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn prototypes_are_running_means_and_never_move_for_other_classes() {
        let mut m = PrototypeMemory::new(Distance::SquaredEuclidean, 1.0).unwrap();
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
        // (1.5, 0) is 0.25 from (1, 0), a prototype of 2: 0.25 · 2/3 over 2.
        let a = m.assess(&x);
        assert!((a[0].score - 0.25 * 2.0 / 3.0 / 2.0).abs() < 1e-6, "{a:?}");
        assert!(a[2].score > 1.0 && a[2].unknown);
        let nearest: Vec<Option<usize>> = a.iter().map(|a| a.nearest).collect();
        assert_eq!(
            nearest,
            [Some(0), Some(1), Some(1)],
            "the classes scores predict"
        );
        assert!(m.learn(&t(&[0.0, 0.0]), 5).is_err());
        assert!(PrototypeMemory::new(Distance::SquaredEuclidean, 0.0).is_err());
        // Forgetting class 0 moves class 1 down and drops its distances.
        m.forget(0).unwrap();
        assert_eq!(m.known(), 1);
        assert_eq!(m.threshold(), f64::INFINITY);
        let pred: Vec<i64> = m.scores(&x).argmax(1, false).try_into().unwrap();
        assert_eq!(pred, [0, 0, 0]);
        assert!(m.forget(1).is_err());
    }

    /// Regression test (issue 18): the memory compared prototypes under squared
    /// Euclidean distance whatever the encoder was trained with. Under the cosine
    /// distance a query along a far prototype's direction belongs to it.
    #[test]
    fn prototypes_honour_the_encoders_cosine_distance() {
        let learn = |distance| {
            let mut m = PrototypeMemory::new(distance, 0.95).unwrap();
            m.learn(&t(&[10.0, 0.0]), 0).unwrap();
            m.learn(&t(&[1.0, 1.0]), 1).unwrap();
            m
        };
        let q = Tensor::from_slice(&[1.0f32, 0.1]).view([1, 2]);
        let cosine = learn(Distance::Cosine { scale: 10.0 });
        let euclid = learn(Distance::SquaredEuclidean);
        let pred = |m: &PrototypeMemory| m.scores(&q).argmax(1, false).int64_value(&[0]);
        assert_eq!(
            pred(&cosine),
            0,
            "cos((1, .1), (10, 0)) > cos((1, .1), (1, 1))"
        );
        assert_eq!(pred(&euclid), 1);
        // Scores are the distance's logits: scale · cos.
        let s: Vec<f32> = cosine.scores(&q).reshape([-1]).try_into().unwrap();
        let c0 = 1.0 / (1.0f32 + 0.01).sqrt();
        assert!((s[0] - 10.0 * c0).abs() < 1e-4, "{s:?}");
        // Distances are 1 − cos, and the held-out distance is measured the same way.
        let d: Vec<f32> = cosine
            .distances(&q)
            .unwrap()
            .reshape([-1])
            .try_into()
            .unwrap();
        assert!((d[0] - (1.0 - c0)).abs() < 1e-5, "{d:?}");
        let mut m = learn(Distance::Cosine { scale: 10.0 });
        m.learn(&t(&[0.0, 5.0]), 1).unwrap();
        // (0, 5) against the prototype (1, 1): 1 − cos 45°, recorded as · 1/2.
        let want = (1.0 - std::f64::consts::FRAC_1_SQRT_2) / 2.0;
        assert!((m.threshold() - want).abs() < 1e-6, "{}", m.threshold());
    }

    #[test]
    fn a_saved_memory_restores_to_the_same_scores() {
        let mut m = PrototypeMemory::new(Distance::SquaredEuclidean, 0.9).unwrap();
        for (c, v) in [
            (0, [0.0, 1.0]),
            (0, [0.5, 1.0]),
            (1, [3.0, 3.0]),
            (1, [3.0, 2.0]),
        ] {
            m.learn(&t(&v), c).unwrap();
        }
        let (tensors, meta) = m.state();
        let mut r = PrototypeMemory::new(Distance::SquaredEuclidean, 0.9).unwrap();
        r.restore(&tensors, &meta).unwrap();
        let x = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 2.0]).view([2, 2]);
        assert!(r.scores(&x).equal(&m.scores(&x)));
        assert_eq!(r.threshold(), m.threshold());
        assert_eq!(r.counts(), m.counts());
        let broken = serde_json::json!({ "counts": [2, 2], "held_out": [[0.1]] });
        assert!(r.restore(&tensors, &broken).is_err());
    }
}
