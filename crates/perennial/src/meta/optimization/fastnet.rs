//! The network optimisation-based learners fine-tune: a functional backbone (the
//! *body*) and a linear *head*, with a loss for classification or regression.
//!
//! Parameters are named `body.<backbone name>` and `head.weight` / `head.bias`, so ANIL
//! can adapt the head alone and checkpoints stay readable.
//!
//! Batch norm always uses the statistics of the batch it sees, in the inner loop and
//! when predicting, as in Finn et al. 2017 and learn2learn: there are no running
//! statistics, and a query set is normalised with its own statistics (transductive).

use perennial_data::Rng;
use tch::{Device, Kind, Reduction, Tensor};

use crate::nn::linear_tasks;
use crate::nn::{Backbone, BackboneConfig, ParamSet};
use crate::tensors::accuracy;

/// What the network is fitted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Cross-entropy on integer labels; the head has one output per class.
    #[default]
    Classification,
    /// Mean squared error on real targets `[n, outputs]`.
    Regression,
}

/// The shape of a [`FastNet`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FastNetConfig {
    /// The body.
    pub backbone: BackboneConfig,
    /// Outputs of the head: the number of ways, or the regression target's width.
    pub outputs: usize,
    /// The loss.
    pub objective: Objective,
}

impl Default for FastNetConfig {
    /// Conv4 on 28 x 28 Omniglot with a 5-way head.
    fn default() -> Self {
        FastNetConfig {
            backbone: BackboneConfig::default(),
            outputs: 5,
            objective: Objective::Classification,
        }
    }
}

impl FastNetConfig {
    /// Finn et al.'s sinusoid regressor: 1 → 40 → 40 → 1 with ReLUs.
    pub fn sinusoid(hidden: usize) -> Self {
        FastNetConfig {
            backbone: BackboneConfig::Mlp {
                sizes: vec![1, hidden, hidden],
                relu_last: true,
            },
            outputs: 1,
            objective: Objective::Regression,
        }
    }
}

/// Body and head, run functionally on any parameter set.
#[derive(Debug)]
pub struct FastNet {
    /// The shape.
    pub config: FastNetConfig,
    body: Box<dyn Backbone>,
}

impl FastNet {
    /// The network of `config`.
    pub fn new(config: FastNetConfig) -> Self {
        let body = config.backbone.build();
        FastNet { config, body }
    }

    /// Fresh parameters, deterministic for `seed` (PyTorch's default initialisation).
    pub fn init(&self, seed: u64, device: Device) -> ParamSet {
        let (body, _) = self.body.init(seed, device);
        let mut p = ParamSet::new();
        for (n, t) in body.iter() {
            p.push(format!("body.{n}"), t.detach());
        }
        let fan_in = self.body.out_dim();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut rng = Rng::for_item(seed, perennial_data::rng::streams::HEAD_INIT, 0);
        let mut draw = |n: usize| -> Tensor {
            let v: Vec<f32> = (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect();
            Tensor::from_slice(&v).to_device(device)
        };
        let o = self.config.outputs;
        p.push(
            "head.weight",
            draw(o * fan_in).view([o as i64, fan_in as i64]),
        );
        p.push("head.bias", draw(o));
        p.requires_grad()
    }

    /// Whether `name` is a head parameter.
    pub fn is_head(name: &str) -> bool {
        name.starts_with("head.")
    }

    fn body_params(params: &ParamSet) -> ParamSet {
        let mut b = ParamSet::new();
        for (n, t) in params.iter() {
            if let Some(rest) = n.strip_prefix("body.") {
                b.push(rest, t.shallow_clone());
            }
        }
        b
    }

    /// Body features `[n, d]` of `x` (batch statistics in batch norm).
    pub fn features(&self, params: &ParamSet, x: &Tensor) -> Tensor {
        self.body.forward(&Self::body_params(params), None, x, true)
    }

    /// Body features of `x` normalised with fixed batch-norm statistics (from
    /// [`FastNet::batch_statistics`]) instead of the batch's own.
    pub fn features_with(&self, params: &ParamSet, stats: &ParamSet, x: &Tensor) -> Tensor {
        if stats.is_empty() {
            return self.features(params, x);
        }
        self.body
            .forward(&Self::body_params(params), Some(stats), x, false)
    }

    /// The body's batch-norm statistics on `x` (e.g. a support set), to classify later
    /// inputs one at a time.
    pub fn batch_statistics(&self, params: &ParamSet, x: &Tensor) -> ParamSet {
        self.body.batch_statistics(&Self::body_params(params), x)
    }

    /// The head on features.
    pub fn head(&self, params: &ParamSet, features: &Tensor) -> Tensor {
        features.linear(params.get("head.weight"), Some(params.get("head.bias")))
    }

    /// Outputs (logits or predictions) for `x`.
    pub fn forward(&self, params: &ParamSet, x: &Tensor) -> Tensor {
        self.head(params, &self.features(params, x))
    }

    /// `T` tasks at once: parameters `[T, ...]`, `x` `[T, n, ...]`, outputs
    /// `[T, n, outputs]`; `None` if the body has no batched path.
    pub fn forward_tasks(&self, params: &ParamSet, x: &Tensor) -> Option<Tensor> {
        let h = self.body.forward_tasks(&Self::body_params(params), x)?;
        Some(linear_tasks(
            &h,
            params.get("head.weight"),
            params.get("head.bias"),
        ))
    }

    /// Whether [`FastNet::forward_tasks`] is available.
    pub fn has_forward_tasks(&self) -> bool {
        self.body.has_forward_tasks()
    }

    /// The mean loss of `out` against `y`.
    pub fn loss(&self, out: &Tensor, y: &Tensor) -> Tensor {
        match self.config.objective {
            // Not tch's `cross_entropy_for_logits`: it computes in f32 whatever the input.
            Objective::Classification => {
                out.cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.0)
            }
            Objective::Regression => out.mse_loss(y, Reduction::Mean),
        }
    }

    /// Per-task mean losses `[T]` of batched outputs `[T, n, k]` against `[T, n, ...]`.
    pub fn task_losses(&self, out: &Tensor, y: &Tensor) -> Tensor {
        let s = out.size();
        match self.config.objective {
            Objective::Classification => out
                .view([s[0] * s[1], s[2]])
                .cross_entropy_loss::<Tensor>(
                    &y.view([s[0] * s[1]]),
                    None,
                    Reduction::None,
                    -100,
                    0.0,
                )
                .view([s[0], s[1]])
                .mean_dim(1, false, None::<Kind>),
            Objective::Regression => {
                (out - y)
                    .square()
                    .flatten(1, -1)
                    .mean_dim(1, false, None::<Kind>)
            }
        }
    }

    /// Accuracy for classification, `None` for regression.
    pub fn accuracy(&self, out: &Tensor, y: &Tensor) -> Option<f64> {
        match self.config.objective {
            Objective::Classification => Some(accuracy(out, y)),
            Objective::Regression => None,
        }
    }
}
