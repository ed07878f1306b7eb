//! The sinusoid regression task family of Finn, Abbeel & Levine (ICML 2017).
//!
//! A task is `y = A · sin(x − φ)` with amplitude `A ~ U[0.1, 5]` and phase
//! `φ ~ U[0, π]`; inputs are drawn `x ~ U[−5, 5]`. A task's support set has `shots`
//! points and its query set `queries` points, all drawn independently. Like the episode
//! sampler, task `i` is a pure function of `(seed, stream, i)`.

use crate::error::{Error, Result};
use crate::rng::Rng;

/// The ranges tasks and inputs are drawn from, and the task's size.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SinusoidSpec {
    /// Support points per task (K).
    pub shots: usize,
    /// Query points per task.
    pub queries: usize,
    /// Amplitude range `[lo, hi]`.
    pub amplitude: (f64, f64),
    /// Phase range `[lo, hi]`, radians.
    pub phase: (f64, f64),
    /// Input range `[lo, hi]`.
    pub x: (f64, f64),
}

impl Default for SinusoidSpec {
    /// Finn et al.'s ranges with K = 10 and 10 query points.
    fn default() -> Self {
        SinusoidSpec {
            shots: 10,
            queries: 10,
            amplitude: (0.1, 5.0),
            phase: (0.0, std::f64::consts::PI),
            x: (-5.0, 5.0),
        }
    }
}

impl SinusoidSpec {
    /// Finn et al.'s ranges with the given support and query sizes.
    pub fn new(shots: usize, queries: usize) -> Self {
        SinusoidSpec {
            shots,
            queries,
            ..Default::default()
        }
    }

    /// Checks the sizes and ranges.
    pub fn validate(&self) -> Result<()> {
        if self.shots == 0 {
            return Err(Error::invalid(
                "--shots",
                0,
                "a task needs at least 1 support point",
            ));
        }
        if self.queries == 0 {
            return Err(Error::invalid(
                "--queries",
                0,
                "a task needs at least 1 query point",
            ));
        }
        for (name, (lo, hi)) in [
            ("amplitude range", self.amplitude),
            ("phase range", self.phase),
            ("x range", self.x),
        ] {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(Error::invalid(
                    name,
                    format!("[{lo}, {hi}]"),
                    "needs finite bounds with lo <= hi",
                ));
            }
        }
        Ok(())
    }
}

/// One sinusoid task: its parameters and its support and query points.
#[derive(Debug, Clone, PartialEq)]
pub struct SinusoidTask {
    /// The task's index in its stream.
    pub index: u64,
    /// Amplitude A.
    pub amplitude: f64,
    /// Phase φ.
    pub phase: f64,
    /// Support inputs.
    pub support_x: Vec<f32>,
    /// Support targets.
    pub support_y: Vec<f32>,
    /// Query inputs.
    pub query_x: Vec<f32>,
    /// Query targets.
    pub query_y: Vec<f32>,
}

impl SinusoidTask {
    /// The true function at `x`.
    pub fn eval(&self, x: f64) -> f64 {
        self.amplitude * (x - self.phase).sin()
    }
}

/// Draws sinusoid tasks as a pure function of `(seed, stream, index)`.
#[derive(Debug, Clone)]
pub struct SinusoidSampler {
    spec: SinusoidSpec,
    seed: u64,
    stream: u64,
}

impl SinusoidSampler {
    /// A sampler for `spec` (checked here).
    pub fn new(spec: SinusoidSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        Ok(SinusoidSampler {
            spec,
            seed,
            stream: 0,
        })
    }

    /// The same sampler on another stream (training, validation and test streams never
    /// share tasks).
    pub fn with_stream(mut self, stream: u64) -> Self {
        self.stream = stream;
        self
    }

    /// The task specification.
    pub fn spec(&self) -> SinusoidSpec {
        self.spec
    }

    /// Task number `index`.
    pub fn sample(&self, index: u64) -> SinusoidTask {
        let s = &self.spec;
        let mut rng = Rng::for_item(self.seed, self.stream, index);
        let mut draw = |(lo, hi): (f64, f64)| lo + (hi - lo) * rng.uniform();
        let amplitude = draw(s.amplitude);
        let phase = draw(s.phase);
        let mut points = |n: usize| -> (Vec<f32>, Vec<f32>) {
            (0..n)
                .map(|_| {
                    let x = draw(s.x);
                    (x as f32, (amplitude * (x - phase).sin()) as f32)
                })
                .unzip()
        };
        let (support_x, support_y) = points(s.shots);
        let (query_x, query_y) = points(s.queries);
        SinusoidTask {
            index,
            amplitude,
            phase,
            support_x,
            support_y,
            query_x,
            query_y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_finn_et_al() {
        let s = SinusoidSpec::default();
        assert_eq!(s.amplitude, (0.1, 5.0));
        assert_eq!(s.phase, (0.0, std::f64::consts::PI));
        assert_eq!(s.x, (-5.0, 5.0));
        assert!(SinusoidSpec::new(0, 10).validate().is_err());
        assert!(SinusoidSpec {
            x: (1.0, -1.0),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    proptest! {
        #[test]
        fn tasks_are_pure_in_range_and_on_the_curve(seed in 0u64..1000, index in 0u64..10_000) {
            let s = SinusoidSampler::new(SinusoidSpec::new(5, 7), seed).unwrap();
            let t = s.sample(index);
            prop_assert_eq!(&t, &s.sample(index));
            prop_assert_eq!(t.support_x.len(), 5);
            prop_assert_eq!(t.query_y.len(), 7);
            prop_assert!((0.1..=5.0).contains(&t.amplitude));
            prop_assert!((0.0..=std::f64::consts::PI).contains(&t.phase));
            for (x, y) in t.support_x.iter().zip(&t.support_y).chain(t.query_x.iter().zip(&t.query_y)) {
                prop_assert!((-5.0..=5.0).contains(x));
                prop_assert!((t.eval(*x as f64) - *y as f64).abs() < 1e-5);
            }
            // Another stream gives other tasks.
            prop_assert_ne!(t.amplitude, s.clone().with_stream(1).sample(index).amplitude);
        }
    }
}
