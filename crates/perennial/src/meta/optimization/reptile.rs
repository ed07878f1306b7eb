//! Reptile (Nichol, Achiam & Schulman 2018).
//!
//! For each task of a meta-batch, start from θ and take `inner_steps` steps of plain
//! gradient descent on all of the task's labelled data (support and query together:
//! Reptile does not split a training task). Then move θ towards the mean of the
//! adapted weights: `θ ← θ + ε_t · (mean_i φ_i − θ)`, with the outer step size
//! `ε_t = meta_lr · (1 − t / anneal_steps)` annealed linearly to zero as in the paper
//! (constant when `anneal_steps` is 0). No second-order terms, no outer optimiser.
//!
//! Adapting to a new task is `eval_steps` gradient steps on its support set. Batch
//! norm uses batch statistics (transductive, as the paper's Omniglot results).
//! Differences from the paper's Omniglot setup: the inner optimiser is SGD rather than
//! Adam with β1 = 0, and every inner step uses the whole task rather than minibatches.

use std::sync::Arc;

use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::meta::optimization::fastnet::{FastNet, FastNetConfig};
use crate::meta::optimization::maml::FineTuned;
use crate::meta::{Adapted, MetaLearner, Parts, PartsMut, StepReport};
use crate::nn::ParamSet;
use crate::optim::GradReduce;
use crate::tensors::{Batch, Task};

/// Reptile's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ReptileConfig {
    /// The network.
    pub net: FastNetConfig,
    /// Inner SGD steps per training task.
    pub inner_steps: usize,
    /// Inner steps when adapting to a new task.
    pub eval_steps: usize,
    /// Inner SGD learning rate.
    pub inner_lr: f64,
    /// Outer step size ε at the start.
    pub meta_lr: f64,
    /// Anneal ε linearly to 0 over this many outer updates (0 = constant).
    pub anneal_steps: u64,
}

impl Default for ReptileConfig {
    fn default() -> Self {
        ReptileConfig {
            net: FastNetConfig::default(),
            inner_steps: 5,
            eval_steps: 10,
            inner_lr: 0.1,
            meta_lr: 1.0,
            anneal_steps: 0,
        }
    }
}

impl ReptileConfig {
    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("--inner-lr", self.inner_lr), ("--meta-lr", self.meta_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(name, v, "must be positive"));
            }
        }
        if self.inner_steps == 0 {
            return Err(Error::config("--inner-steps", 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// A Reptile learner.
pub struct Reptile {
    config: ReptileConfig,
    net: FastNet,
    params: ParamSet,
    t: u64,
    /// Data-parallel training's hand-off: the outer step's direction (the mean of the
    /// adapted weights minus θ) goes through it, as a gradient would.
    reducer: Option<Arc<dyn GradReduce>>,
}

impl std::fmt::Debug for Reptile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reptile")
            .field("config", &self.config)
            .field("t", &self.t)
            .field("data_parallel", &self.reducer.is_some())
            .finish()
    }
}

impl Reptile {
    /// A freshly initialised learner (deterministic for `seed`).
    pub fn new(config: ReptileConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let net = FastNet::new(config.net.clone());
        let params = net.init(seed, device);
        Ok(Reptile {
            config,
            net,
            params,
            t: 0,
            reducer: None,
        })
    }

    /// The meta-parameters θ.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// ε for outer update `t`.
    pub fn meta_lr_at(&self, t: u64) -> f64 {
        match self.config.anneal_steps {
            0 => self.config.meta_lr,
            n => self.config.meta_lr * (1.0 - (t as f64 / n as f64)).max(0.0),
        }
    }

    /// `steps` SGD steps from θ on `(x, y)`; returns the detached weights and the loss
    /// and outputs of the last step's forward pass.
    fn sgd(&self, x: &Tensor, y: &Tensor, steps: usize) -> (ParamSet, Tensor, Tensor) {
        tch::with_grad(|| {
            let mut fast = self.params.map(|_, t| t.detach().set_requires_grad(true));
            let mut last = None;
            for _ in 0..steps {
                let out = self.net.forward(&fast, x);
                let loss = self.net.loss(&out, y);
                let grads = Tensor::run_backward(&[&loss], &fast.tensors(), false, false);
                let mut g = grads.iter();
                fast = fast.map(|_, t| {
                    (t.detach() - g.next().expect("one gradient per tensor") * self.config.inner_lr)
                        .set_requires_grad(true)
                });
                last = Some((loss.detach(), out.detach()));
            }
            let (loss, out) = last.expect("inner_steps >= 1");
            (fast.detached_copy(), loss, out)
        })
    }
}

impl MetaLearner for Reptile {
    fn parts(&self) -> Parts<'_> {
        Parts {
            params: &self.params,
            buffers: None,
            adam: None,
        }
    }

    fn parts_mut(&mut self) -> PartsMut<'_> {
        PartsMut {
            params: &mut self.params,
            buffers: None,
            adam: None,
        }
    }

    fn name(&self) -> &'static str {
        "reptile"
    }

    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        let fast = if self.config.eval_steps == 0 {
            self.params.detached_copy()
        } else {
            self.sgd(&support.x, &support.y, self.config.eval_steps).0
        };
        Box::new(FineTuned::new(&self.net, fast, &support.x))
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        Ok(Box::new(FineTuned::load(&self.net, &self.params, named)?))
    }

    /// Reports the loss and accuracy of the last inner step, before its update.
    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let n = tasks.len().max(1) as f64;
        let mut report = StepReport {
            loss: 0.0,
            accuracy: Some(0.0),
        };
        let mut sum: Option<ParamSet> = None;
        for task in tasks {
            let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
            let y = Tensor::cat(&[&task.support.y, &task.query.y], 0);
            let (fast, loss, out) = self.sgd(&x, &y, self.config.inner_steps);
            report.loss += loss.double_value(&[]) / n;
            report.accuracy = match (report.accuracy, self.net.accuracy(&out, &y)) {
                (Some(a), Some(b)) => Some(a + b / n),
                _ => None,
            };
            sum = Some(match sum {
                None => fast,
                Some(s) => s.map(|name, t| t + fast.get(name)),
            });
        }
        if let Some(sum) = sum {
            let eps = self.meta_lr_at(self.t);
            tch::no_grad(|| {
                let mut dirs: Vec<Option<Tensor>> = self
                    .params
                    .iter()
                    .map(|(name, p)| Some(sum.get(name) / n - p))
                    .collect();
                let reduced = match &self.reducer {
                    None => true,
                    Some(r) => r.reduce(&self.params.tensors(), &mut dirs),
                };
                if reduced {
                    for ((_, p), d) in self.params.iter().zip(&dirs) {
                        if let Some(d) = d {
                            let _ = p.shallow_clone().g_add_(&(d * eps));
                        }
                    }
                }
            });
        }
        self.t += 1;
        report
    }

    fn set_gradient_reducer(&mut self, reducer: Option<Arc<dyn GradReduce>>) -> Result<()> {
        self.reducer = reducer;
        Ok(())
    }

    fn training_state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.model_state();
        out.push(("reptile.t".into(), Tensor::from_slice(&[self.t as i64])));
        out
    }

    fn load_training_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        self.load_model_state(named)?;
        let t = named
            .iter()
            .find(|(n, _)| n == "reptile.t")
            .ok_or_else(|| Error::Parameters {
                name: "reptile.t".into(),
                reason: "missing from checkpoint".into(),
            })?;
        self.t = t.1.int64_value(&[0]) as u64;
        Ok(())
    }
}
