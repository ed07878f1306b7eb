//! Adam (Kingma & Ba 2015) with a step learning-rate schedule, written on plain tensors
//! so its whole state (moments and step count) goes into checkpoints and a resumed run
//! continues exactly where it stopped.

use std::sync::Arc;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::nn::ParamSet;

/// Adam's hyperparameters and the step schedule `lr · gamma^⌊t / step_every⌋`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamConfig {
    /// Base learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Multiply the learning rate by `gamma` every `step_every` updates (0 = never).
    pub step_every: u64,
    /// The decay factor of the schedule.
    pub gamma: f64,
}

impl Default for AdamConfig {
    /// Snell et al. 2017: lr 1e-3, halved every 2000 episodes.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step_every: 2000,
            gamma: 0.5,
        }
    }
}

impl AdamConfig {
    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config("lr", self.lr, "must be positive"));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(Error::config(
                "betas",
                format!("{}, {}", self.beta1, self.beta2),
                "must lie in [0, 1)",
            ));
        }
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return Err(Error::config("lr-gamma", self.gamma, "must lie in (0, 1]"));
        }
        Ok(())
    }

    /// The learning rate for update number `t` (0-based).
    pub fn lr_at(&self, t: u64) -> f64 {
        match self.step_every {
            0 => self.lr,
            s => self.lr * self.gamma.powi((t / s) as i32),
        }
    }
}

/// The meta-gradient hand-off of data-parallel training: turns one rank's gradients
/// (of its share of the meta-batch) into the whole meta-batch's, the same on every rank
/// (an all-reduce; [`crate::dist`]). An optimiser given one calls it before every update.
pub trait GradReduce: Send + Sync {
    /// Replaces `grads` (one per tensor of `params`, `None` where a tensor has no
    /// gradient on this rank) by the meta-batch's gradients. Returns `false` when the
    /// collective failed: the update is then skipped, and the failure is the
    /// reducer's to report (the training loop asks it after every update).
    fn reduce(&self, params: &[&Tensor], grads: &mut [Option<Tensor>]) -> bool;
}

/// Scales `grads` so that their global (L2) norm is at most `max` (computed in f64; the
/// usual `max / (norm + 1e-6)` factor).
pub fn clip_global_norm(grads: &mut [Option<Tensor>], max: f64) {
    tch::no_grad(|| {
        let total: f64 = grads
            .iter()
            .flatten()
            .map(|g| g.square().sum(tch::Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        if total > max {
            for g in grads.iter_mut().flatten() {
                let _ = g.g_mul_scalar_(max / (total + 1e-6));
            }
        }
    });
}

/// Adam's state for one parameter set.
pub struct Adam {
    /// The hyperparameters.
    pub config: AdamConfig,
    m: ParamSet,
    v: ParamSet,
    t: u64,
    reducer: Option<Arc<dyn GradReduce>>,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam")
            .field("config", &self.config)
            .field("t", &self.t)
            .field("data_parallel", &self.reducer.is_some())
            .finish()
    }
}

impl Adam {
    /// Fresh state for `params`.
    pub fn new(config: AdamConfig, params: &ParamSet) -> Self {
        let zeros = || params.map(|_, p| p.detach().zeros_like());
        Adam {
            config,
            m: zeros(),
            v: zeros(),
            t: 0,
            reducer: None,
        }
    }

    /// Sets (or with `None` removes) the meta-gradient hand-off of data-parallel
    /// training: every later update first passes its gradients through `reducer`.
    pub fn set_reducer(&mut self, reducer: Option<Arc<dyn GradReduce>>) {
        self.reducer = reducer;
    }

    /// Updates performed so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update from explicit gradients, one per tensor of `params` in order (as
    /// returned by `autograd.grad`); `.grad` is not read.
    pub fn step_with(&mut self, params: &ParamSet, grads: &[Tensor]) {
        match self.reducer.clone() {
            None => self.apply(params, grads.iter().map(Some)),
            Some(r) => {
                let mut g: Vec<Option<Tensor>> =
                    grads.iter().map(|g| Some(g.shallow_clone())).collect();
                if r.reduce(&params.tensors(), &mut g) {
                    self.apply(params, g.iter().map(Option::as_ref));
                }
            }
        }
    }

    /// One update from the gradients accumulated in `params`; clears them. Tensors
    /// without a gradient are left alone.
    pub fn step(&mut self, params: &ParamSet) {
        self.step_clipped(params, None);
    }

    /// [`Adam::step`], the gradients' global norm first clipped to `max_norm` (when
    /// given): after the data-parallel hand-off, so that it is the meta-batch's gradient
    /// that is clipped, as in a single process.
    pub fn step_clipped(&mut self, params: &ParamSet, max_norm: Option<f64>) {
        let grads: Vec<Tensor> = params.tensors().iter().map(|p| p.grad()).collect();
        let mut g: Vec<Option<Tensor>> = grads
            .iter()
            .map(|g| g.defined().then(|| g.shallow_clone()))
            .collect();
        let reduced = match self.reducer.clone() {
            None => true,
            Some(r) => r.reduce(&params.tensors(), &mut g),
        };
        if reduced {
            if let Some(max) = max_norm {
                clip_global_norm(&mut g, max);
            }
            self.apply(params, g.iter().map(Option::as_ref));
        }
        tch::no_grad(|| {
            for mut g in grads.into_iter().filter(Tensor::defined) {
                let _ = g.zero_();
            }
        });
    }

    /// Backpropagates `loss` (when there is one) into `params` and takes one
    /// [`Adam::step`]: the end of every episodic learner's update.
    pub fn minimise(&mut self, params: &ParamSet, loss: Option<Tensor>) {
        if let Some(loss) = loss {
            loss.backward();
            self.step(params);
        }
    }

    fn apply<'g>(&mut self, params: &ParamSet, grads: impl Iterator<Item = Option<&'g Tensor>>) {
        let c = &self.config;
        let lr = c.lr_at(self.t);
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        tch::no_grad(|| {
            for ((((_, p), (_, m)), (_, v)), g) in params
                .iter()
                .zip(self.m.iter())
                .zip(self.v.iter())
                .zip(grads)
            {
                let Some(g) = g else { continue };
                let (mut m, mut v, mut p) =
                    (m.shallow_clone(), v.shallow_clone(), p.shallow_clone());
                let _ = m.g_mul_scalar_(c.beta1).g_add_(&(g * (1.0 - c.beta1)));
                let _ = v
                    .g_mul_scalar_(c.beta2)
                    .g_add_(&(g.square() * (1.0 - c.beta2)));
                let denom = (&v / bc2).sqrt() + c.eps;
                let _ = p.g_sub_(&((&m / bc1) / denom * lr));
            }
        });
    }

    /// The state as named tensors (`<prefix>m.<param>`, `<prefix>v.<param>`,
    /// `<prefix>t`).
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = self.m.named(&format!("{prefix}m."));
        out.extend(self.v.named(&format!("{prefix}v.")));
        out.push((format!("{prefix}t"), Tensor::from_slice(&[self.t as i64])));
        out
    }

    /// Restores the state written by [`Adam::state`].
    pub fn load_state(&mut self, named: &[(String, Tensor)], prefix: &str) -> Result<()> {
        self.m.load_named(named, &format!("{prefix}m."))?;
        self.v.load_named(named, &format!("{prefix}v."))?;
        let key = format!("{prefix}t");
        let t = named
            .iter()
            .find(|(n, _)| *n == key)
            .ok_or_else(|| Error::Parameters {
                name: key.clone(),
                reason: "missing from checkpoint".into(),
            })?;
        self.t = t.1.int64_value(&[0]) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn first_adam_step_moves_by_lr_against_the_gradient_sign() {
        // After one step, m̂ = g and v̂ = g², so Δp = −lr · g / (|g| + eps) ≈ −lr · sign(g).
        let mut ps = ParamSet::new();
        ps.push(
            "w",
            Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true),
        );
        let mut adam = Adam::new(
            AdamConfig {
                lr: 0.1,
                ..Default::default()
            },
            &ps,
        );
        let loss = (ps.get("w") * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float);
        loss.backward();
        adam.step(&ps);
        let w: Vec<f32> = ps.get("w").detach().try_into().unwrap();
        assert!(
            (w[0] - 0.9).abs() < 1e-5 && (w[1] + 1.9).abs() < 1e-5,
            "{w:?}"
        );
        assert_eq!(adam.steps(), 1);
        // Gradients were cleared.
        let g = ps.get("w").grad();
        assert_eq!(g.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let _ = Device::Cpu;
    }

    /// Stands for the sum over ten ranks of the same gradient.
    struct TenRanks;
    impl GradReduce for TenRanks {
        fn reduce(&self, _params: &[&Tensor], grads: &mut [Option<Tensor>]) -> bool {
            for g in grads.iter_mut().flatten() {
                *g = &*g * 10.0;
            }
            true
        }
    }

    #[test]
    fn the_hand_off_comes_before_clipping_and_the_update() {
        let mut ps = ParamSet::new();
        ps.push(
            "w",
            Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true),
        );
        ps.push(
            "unused",
            Tensor::from_slice(&[5.0f32]).set_requires_grad(true),
        );
        let mut adam = Adam::new(AdamConfig::default(), &ps);
        adam.set_reducer(Some(Arc::new(TenRanks)));
        let loss = (ps.get("w") * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float);
        loss.backward();
        adam.step_clipped(&ps, Some(1.0));
        // The first moment is (1 - beta1) times the applied gradient: the reduced one
        // (10 g = [30, -5]), clipped to norm 1 afterwards.
        let m: Vec<f32> = adam
            .state("")
            .into_iter()
            .find(|(n, _)| n == "m.w")
            .unwrap()
            .1
            .try_into()
            .unwrap();
        let norm = (30.0f64 * 30.0 + 5.0 * 5.0).sqrt();
        let want = [0.1 * 30.0 / norm, -0.1 * 5.0 / norm];
        assert!(
            (f64::from(m[0]) - want[0]).abs() < 1e-6 && (f64::from(m[1]) - want[1]).abs() < 1e-6,
            "{m:?} vs {want:?}"
        );
        // A tensor without a gradient is not stepped.
        assert_eq!(ps.get("unused").double_value(&[0]), 5.0);
        assert_eq!(
            ps.get("w").grad().abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }

    #[test]
    fn schedule_and_validation() {
        let c = AdamConfig {
            lr: 1.0,
            step_every: 10,
            gamma: 0.5,
            ..Default::default()
        };
        assert_eq!(c.lr_at(9), 1.0);
        assert_eq!(c.lr_at(10), 0.5);
        assert_eq!(c.lr_at(25), 0.25);
        assert!(AdamConfig {
            lr: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(AdamConfig {
            gamma: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
