//! Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS
//! 2016).
//!
//! A query is classified by attention over the support set: the softmax of its cosine
//! similarities to the support embeddings weighs their one-hot labels,
//! `P(y | x, S) = Σ_i a(x, x_i) y_i`, and training minimises the query's negative log
//! of that probability, one episode per update.
//!
//! With full-context embeddings (`fce`), the support embeddings are read in context by
//! a bidirectional LSTM (`g(x_i) = g'(x_i) + [h→_i; h←_i]`, each direction of half the
//! width) and each query by an attention LSTM that runs as many processing steps as the
//! support set has images (`ĥ, c = LSTM(f'(x), [h + r, c])`, `h = ĥ + f'(x)`,
//! `r = Σ softmax(h·g(x_i)) g(x_i)`), the paper's appendix in the form of its common
//! reimplementations. The LSTMs are functional, on libtorch's fused `lstm_cell`.

use perennial_data::Rng;
use tch::{Device, Tensor};

use super::losses::normalize;
use crate::error::{Error, Result};
use crate::meta::{
    adapted_tensor, mean_task_loss, Adapted, MetaLearner, Parts, PartsMut, StepReport,
};
use crate::nn::{lstm_params, lstm_step, Backbone, BackboneConfig, ParamSet};
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{accuracy, Batch, Task};

/// Matching Networks' settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MatchingConfig {
    /// The embedding network (g' = f').
    pub backbone: BackboneConfig,
    /// Full-context embeddings: a bidirectional LSTM over the support set and an
    /// attention LSTM for each query.
    pub fce: bool,
    /// The cosine similarities are multiplied by this before the softmax. The paper's
    /// is 1; Perennial's default is 10, because cosines of non-negative (ReLU)
    /// features lie in [0, 1], where a softmax over 5 shots of 5 classes cannot give
    /// the right class more than 5e/(5e + 20) = 0.40 and its loss keeps pushing the
    /// features apart long after every query is right (on the conformance suite's
    /// held-out classes: 0.99 falls to 0.64 in 60 updates at 1, stays 0.995 at 10).
    pub scale: f64,
    /// The optimiser.
    pub optimizer: AdamConfig,
}

impl Default for MatchingConfig {
    fn default() -> Self {
        MatchingConfig {
            backbone: BackboneConfig::default(),
            fce: false,
            scale: 10.0,
            optimizer: AdamConfig::default(),
        }
    }
}

impl MatchingConfig {
    /// Refuses a scale that is not positive and a bad optimiser.
    pub fn validate(&self) -> Result<()> {
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(Error::config("--scale", self.scale, "must be positive"));
        }
        self.optimizer.validate()
    }
}

/// A Matching Network: embedding (and FCE LSTM) parameters, batch-norm buffers, Adam.
#[derive(Debug)]
pub struct Matching {
    config: MatchingConfig,
    backbone: Box<dyn Backbone>,
    params: ParamSet,
    buffers: ParamSet,
    adam: Adam,
}

impl Matching {
    /// A freshly initialised network (deterministic for `seed`).
    pub fn new(config: MatchingConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let backbone = config.backbone.build();
        let (mut params, buffers) = backbone.init(seed, device);
        if config.fce {
            let d = backbone.out_dim() as i64;
            if d % 2 != 0 {
                return Err(Error::config(
                    "--fce",
                    d,
                    "the bidirectional LSTM splits the embedding in two: its width must be even",
                ));
            }
            // A separate stream, so the backbone's initialisation is FCE's or not alike.
            let mut rng = Rng::new(seed ^ 0x6d61_7463_6869_6e67);
            let mut fce = ParamSet::new();
            lstm_params(&mut fce, &mut rng, "fce.g.forward", d, d / 2, device);
            lstm_params(&mut fce, &mut rng, "fce.g.backward", d, d / 2, device);
            lstm_params(&mut fce, &mut rng, "fce.f", d, d, device);
            for (name, t) in fce.iter() {
                params.push(name, t.set_requires_grad(true));
            }
        }
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(Matching {
            config,
            backbone,
            params,
            buffers,
            adam,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MatchingConfig {
        &self.config
    }

    /// The embedding f' = g' `[n, d]` of images in evaluation mode, without gradients
    /// and without context (what a lifelong learner builds on).
    pub fn embed_eval(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.embed(x, false))
    }

    fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        self.backbone
            .forward(&self.params, Some(&self.buffers), x, train)
    }

    /// The support set in context, g(S) `[n, d]` (g' itself without FCE).
    fn support_context(&self, s: &Tensor) -> Tensor {
        if !self.config.fce {
            return s.shallow_clone();
        }
        let n = s.size()[0];
        let half = s.size()[1] / 2;
        let run = |prefix: &str, order: Vec<i64>| {
            let z = Tensor::zeros([1, half], (s.kind(), s.device()));
            let (mut h, mut c) = (z.shallow_clone(), z);
            let mut out: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
            for i in order {
                (h, c) = lstm_step(&self.params, prefix, &s.narrow(0, i, 1), &h, &c);
                out[i as usize] = Some(h.shallow_clone());
            }
            Tensor::cat(&out.into_iter().flatten().collect::<Vec<_>>(), 0)
        };
        let fw = run("fce.g.forward", (0..n).collect());
        let bw = run("fce.g.backward", (0..n).rev().collect());
        s + Tensor::cat(&[fw, bw], 1)
    }

    /// The queries in the context of g(S), f(Q) `[m, d]` (f' itself without FCE).
    fn query_context(&self, q: &Tensor, g: &Tensor) -> Tensor {
        if !self.config.fce {
            return q.shallow_clone();
        }
        let (mut h, mut c) = (q.shallow_clone(), q.zeros_like());
        let mut r = q.zeros_like();
        let gt = g.transpose(0, 1);
        for _ in 0..g.size()[0] {
            let (h_hat, c2) = lstm_step(&self.params, "fce.f", q, &(&h + &r), &c);
            c = c2;
            h = h_hat + q;
            r = h.matmul(&gt).softmax(1, h.kind()).matmul(g);
        }
        h
    }

    /// Log-probabilities `[m, ways]` of queries in context `f` against the support in
    /// context `g` with one-hot labels `onehot` `[n, ways]`, the cosines times `scale`.
    fn log_probs(f: &Tensor, g: &Tensor, onehot: &Tensor, scale: f64) -> Tensor {
        let att = (normalize(f).matmul(&normalize(g).transpose(0, 1)) * scale).softmax(1, f.kind());
        (att.matmul(onehot) + 1e-8).log()
    }
}

/// A Matching Network conditioned on a support set.
struct MatchingAdapted<'a> {
    net: &'a Matching,
    /// g(S), `[n, d]`.
    support: Tensor,
    /// The support's one-hot labels `[n, ways]`.
    onehot: Tensor,
}

impl Adapted for MatchingAdapted<'_> {
    fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let q = self.net.embed(x, false);
            let f = self.net.query_context(&q, &self.support);
            Matching::log_probs(&f, &self.support, &self.onehot, self.net.config.scale)
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("support".into(), self.support.to_device(Device::Cpu)),
            ("onehot".into(), self.onehot.to_device(Device::Cpu)),
        ]
    }
}

fn one_hot(y: &Tensor, ways: usize, like: &Tensor) -> Tensor {
    y.one_hot(ways as i64).to_kind(like.kind())
}

impl MetaLearner for Matching {
    fn name(&self) -> &'static str {
        "matching"
    }

    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        let g = tch::no_grad(|| self.support_context(&self.embed(&support.x, false)));
        let onehot = one_hot(&support.y, support.ways, &g);
        Box::new(MatchingAdapted {
            net: self,
            support: g,
            onehot,
        })
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        let device = self.params.tensors()[0].device();
        let support = adapted_tensor(named, "support", device)?;
        let onehot = adapted_tensor(named, "onehot", device)?;
        if support.size().first() != onehot.size().first() {
            return Err(Error::Parameters {
                name: "onehot".into(),
                reason: format!(
                    "{} labels for {} support embeddings",
                    onehot.size()[0],
                    support.size()[0]
                ),
            });
        }
        Ok(Box::new(MatchingAdapted {
            net: self,
            support,
            onehot,
        }))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let (total, report) = mean_task_loss(tasks, |task| {
            let ns = task.support.len() as i64;
            let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
            let e = self.embed(&x, true);
            let g = self.support_context(&e.narrow(0, 0, ns));
            let f = self.query_context(&e.narrow(0, ns, e.size()[0] - ns), &g);
            let onehot = one_hot(&task.support.y, task.support.ways, &g);
            let logp = Matching::log_probs(&f, &g, &onehot, self.config.scale);
            (logp.nll_loss(&task.query.y), accuracy(&logp, &task.query.y))
        });
        self.adam.minimise(&self.params, total);
        report
    }

    fn parts(&self) -> Parts<'_> {
        Parts {
            params: &self.params,
            buffers: Some(&self.buffers),
            adam: Some(&self.adam),
        }
    }

    fn parts_mut(&mut self) -> PartsMut<'_> {
        PartsMut {
            params: &mut self.params,
            buffers: Some(&mut self.buffers),
            adam: Some(&mut self.adam),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention of a query equal to a support embedding: softmax of cosines
    /// (1, 0) → (e/(e+1), 1/(e+1)), summed per class.
    #[test]
    fn attention_is_a_softmax_over_cosines() {
        let g = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let q = Tensor::from_slice(&[3.0f32, 0.0]).view([1, 2]);
        let onehot = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([2, 2]);
        let p: Vec<f32> = Matching::log_probs(&q, &g, &onehot, 1.0)
            .exp()
            .flatten(0, -1)
            .try_into()
            .unwrap();
        let e = std::f32::consts::E;
        assert!((p[1] - e / (e + 1.0)).abs() < 1e-6, "{p:?}");
        assert!((p[0] - 1.0 / (e + 1.0)).abs() < 1e-6, "{p:?}");
    }
}
