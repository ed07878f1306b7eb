//! La-MAML (Gupta, Yadav & Paull, NeurIPS 2020): look-ahead meta-learning for online
//! continual learning.
//!
//! For each incoming batch, `glances` times: draw `replay` examples from a reservoir
//! buffer; starting from θ, take one SGD step on each incoming example in turn (in a
//! random order), each scaled element-wise by a learned learning rate α (one per
//! parameter, initialised to `alpha_init`), and after each step evaluate the loss of
//! the fast weights on incoming ∪ replay (the meta-loss, averaged over the steps). Then
//! update α by SGD on the meta-loss (`alpha_lr`), and θ by `θ ← θ − max(α, 0) ⊙ ∇θ`:
//! the learned rates gate the update, so a parameter whose rate the meta-loss drives
//! to zero or below (it interferes with the replayed past) stops moving. Inner
//! gradients are clamped element-wise to `±clip`, and both meta-gradients are clipped
//! to norm `clip`, as in the paper's code. The inner gradients are first-order (the
//! paper's MNIST setting); α still gets its exact gradient, since the fast weights are
//! linear in it.
//!
//! [`LookAhead`] is that update on any parameter set and any two loss functions; it
//! serves [`LaMaml`], the strategy of the continual loop.

use std::ops::Range;

use tch::{Kind, Tensor};

use super::run::View;
use super::strategy::{task_loss, Classifier, Groups, Strategy, StrategyState};
use crate::data::Rng;
use crate::error::{Error, Result};
use crate::meta::optimization::inner::{sgd_step, Rate};
use crate::nn::ParamSet;

/// The settings of La-MAML.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LaMamlConfig {
    /// Reservoir buffer capacity (examples).
    pub capacity: usize,
    /// Examples drawn from the buffer for each glance's meta-loss.
    pub replay: usize,
    /// Meta-updates per incoming batch, each with a fresh replay draw.
    pub glances: usize,
    /// The initial per-parameter learning rate α₀.
    pub alpha_init: f64,
    /// The learning rate of α.
    pub alpha_lr: f64,
    /// Clamp of inner gradients and norm clip of meta-gradients.
    pub clip: f64,
}

impl Default for LaMamlConfig {
    /// The paper's MNIST settings: 200 memories, replay 10, 5 glances, α₀ 0.15, α's
    /// learning rate 0.3, clip 2.
    fn default() -> Self {
        LaMamlConfig {
            capacity: 200,
            replay: 10,
            glances: 5,
            alpha_init: 0.15,
            alpha_lr: 0.3,
            clip: 2.0,
        }
    }
}

impl LaMamlConfig {
    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::config(
                "--buffer",
                0,
                "La-MAML needs a buffer of at least one example",
            ));
        }
        if self.glances == 0 {
            return Err(Error::config("--glances", 0, "must be at least 1"));
        }
        for (name, v) in [
            ("--lamaml-alpha", self.alpha_init),
            ("--lamaml-alpha-lr", self.alpha_lr),
            ("--lamaml-clip", self.clip),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::config(name, v, "must be positive"));
            }
        }
        Ok(())
    }
}

/// La-MAML's learned learning rates and its meta-update, on any parameter set.
#[derive(Debug)]
pub struct LookAhead {
    alphas: Vec<Tensor>,
    alpha_lr: f64,
    clip: f64,
}

impl LookAhead {
    /// Rates `alpha_init` for every element of `params`.
    pub fn new(params: &ParamSet, config: &LaMamlConfig) -> Self {
        let alphas = params
            .tensors()
            .iter()
            .map(|p| p.full_like(config.alpha_init).set_requires_grad(true))
            .collect();
        LookAhead {
            alphas,
            alpha_lr: config.alpha_lr,
            clip: config.clip,
        }
    }

    /// Rates restored from [`LookAhead::alphas`], checked against `params`' shapes.
    pub fn from_alphas(
        params: &ParamSet,
        alphas: Vec<Tensor>,
        config: &LaMamlConfig,
    ) -> Result<Self> {
        let shapes: Vec<_> = params.tensors().iter().map(|p| p.size()).collect();
        let got: Vec<_> = alphas.iter().map(|a| a.size()).collect();
        if shapes != got {
            return Err(Error::config(
                "strategy state",
                "lamaml.alpha",
                format!("shapes {got:?} do not match the network's {shapes:?}"),
            ));
        }
        Ok(LookAhead {
            alphas: alphas
                .into_iter()
                .map(|a| a.detach().copy().set_requires_grad(true))
                .collect(),
            alpha_lr: config.alpha_lr,
            clip: config.clip,
        })
    }

    /// The learned rates, one tensor per parameter.
    pub fn alphas(&self) -> &[Tensor] {
        &self.alphas
    }

    /// One meta-update of `params` (leaf tensors that require gradients): `inner`
    /// first-order steps on `inner_loss(fast, k)` for `k` in `0..inner`, the mean of
    /// `meta_loss` after each step, then α and θ updated as the module explains.
    /// Returns the meta-loss, or an error for `inner == 0`.
    pub fn update(
        &mut self,
        params: &ParamSet,
        inner: usize,
        inner_loss: &mut dyn FnMut(&ParamSet, usize) -> Tensor,
        meta_loss: &mut dyn FnMut(&ParamSet) -> Tensor,
    ) -> Result<f64> {
        if inner == 0 {
            return Err(Error::config(
                "La-MAML",
                0,
                "needs at least one incoming example",
            ));
        }
        let mut fast = params.map(|_, p| p.shallow_clone());
        let mut metas = Vec::with_capacity(inner);
        for k in 0..inner {
            let loss = inner_loss(&fast, k);
            let grads: Vec<Tensor> = Tensor::run_backward(&[&loss], &fast.tensors(), false, false)
                .iter()
                .map(|g| g.clamp(-self.clip, self.clip))
                .collect();
            let mut alphas = self.alphas.iter();
            fast = sgd_step(&fast, &grads, |_| alphas.next().map(Rate::Learned));
            metas.push(meta_loss(&fast));
        }
        let meta = Tensor::stack(&metas, 0).mean(Kind::Float);
        let value = meta.double_value(&[]);
        if !value.is_finite() {
            return Ok(value);
        }
        let theta = params.tensors();
        let mut inputs: Vec<&Tensor> = theta.clone();
        inputs.extend(self.alphas.iter());
        let grads = Tensor::run_backward(&[&meta], &inputs, false, false);
        let (gp, ga) = grads.split_at(theta.len());
        let gp = clip_norm(gp, self.clip);
        let ga = clip_norm(ga, self.clip);
        tch::no_grad(|| {
            for (a, g) in self.alphas.iter().zip(&ga) {
                let mut a = a.shallow_clone();
                let _ = a.g_sub_(&(g * self.alpha_lr));
            }
            for ((p, g), a) in theta.iter().zip(&gp).zip(&self.alphas) {
                let mut p = (*p).shallow_clone();
                let _ = p.g_sub_(&(g * a.relu()));
            }
        });
        Ok(value)
    }
}

/// `grads` scaled to total norm at most `max`.
fn clip_norm(grads: &[Tensor], max: f64) -> Vec<Tensor> {
    let total: f64 = grads
        .iter()
        .map(|g| g.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    let scale = if total > max {
        max / (total + 1e-6)
    } else {
        1.0
    };
    grads.iter().map(|g| g * scale).collect()
}

/// La-MAML as a strategy of the MNIST streams: the incoming batch's examples are the
/// inner steps, its examples and a reservoir draw the meta-loss (each example under its
/// own task's mask). The incoming batch joins the buffer after its glances.
#[derive(Debug)]
pub struct LaMaml {
    config: LaMamlConfig,
    look: Option<LookAhead>,
    /// Rates restored from a checkpoint, checked against the network at the next batch.
    pending: Option<Vec<Tensor>>,
    buffer: super::Reservoir<(usize, usize)>,
    rng: Rng,
}

impl LaMaml {
    /// La-MAML with `config`, its draws seeded by `seed`.
    pub fn new(config: LaMamlConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Ok(LaMaml {
            config,
            look: None,
            pending: None,
            buffer: super::Reservoir::new(config.capacity, seed),
            rng: Rng::for_item(seed, crate::data::rng::streams::LAMAML_BUFFER, 0),
        })
    }

    /// The learned rates (`None` before the first batch).
    pub fn look_ahead(&self) -> Option<&LookAhead> {
        self.look.as_ref()
    }
}

impl Strategy for LaMaml {
    fn name(&self) -> &'static str {
        "lamaml"
    }

    fn observe(
        &mut self,
        model: &mut Classifier,
        data: &View<'_>,
        task: usize,
        range: Range<usize>,
    ) -> Result<f64> {
        let value = tch::no_grad(|| task_loss(model, data, task, range.clone())).double_value(&[]);
        if let Some(alphas) = self.pending.take() {
            self.look = Some(LookAhead::from_alphas(&model.params, alphas, &self.config)?);
        }
        let look = self
            .look
            .get_or_insert_with(|| LookAhead::new(&model.params, &self.config));
        let incoming: Vec<(usize, usize)> = range.clone().map(|i| (task, i)).collect();
        let singles: Vec<Groups> = incoming
            .iter()
            .map(|item| Groups::new(data, std::slice::from_ref(item)))
            .collect();
        for _ in 0..self.config.glances {
            let mut order: Vec<usize> = (0..singles.len()).collect();
            self.rng.shuffle(&mut order);
            let mut meta_items = incoming.clone();
            meta_items.extend(self.buffer.sample(self.config.replay).into_iter().copied());
            let meta = Groups::new(data, &meta_items);
            let m = &*model;
            let v = look.update(
                &model.params,
                order.len(),
                &mut |fast, k| singles[order[k]].mean_loss(m, fast),
                &mut |fast| meta.mean_loss(m, fast),
            )?;
            if !v.is_finite() {
                return Ok(v);
            }
        }
        for i in range {
            self.buffer.offer((task, i));
        }
        Ok(value)
    }

    fn state(&self) -> StrategyState {
        let alphas: Vec<Tensor> = match (&self.look, &self.pending) {
            (Some(l), _) => l.alphas().iter().map(|a| a.detach().copy()).collect(),
            (None, Some(p)) => p.iter().map(|a| a.shallow_clone()).collect(),
            (None, None) => Vec::new(),
        };
        let tensors = alphas
            .into_iter()
            .enumerate()
            .map(|(i, a)| (format!("alpha.{i}"), a))
            .collect();
        StrategyState {
            tensors,
            meta: serde_json::json!({ "buffer": self.buffer, "rng": self.rng }),
        }
    }

    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.buffer = state.field("lamaml", "buffer")?;
        self.rng = state.field("lamaml", "rng")?;
        let mut alphas: Vec<(usize, Tensor)> = Vec::new();
        for (name, t) in &state.tensors {
            let i = name
                .strip_prefix("alpha.")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| Error::config("strategy state", name, "not a La-MAML tensor"))?;
            alphas.push((i, t.shallow_clone()));
        }
        alphas.sort_by_key(|(i, _)| *i);
        self.look = None;
        self.pending = (!alphas.is_empty()).then(|| alphas.into_iter().map(|(_, t)| t).collect());
        Ok(())
    }
}
