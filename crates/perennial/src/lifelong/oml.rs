//! OML, online-aware meta-learning (Javed & White, NeurIPS 2019): meta-learns a
//! representation (the RLN) on which a prediction network (the PLN) learns a stream of
//! classes online, one example at a time, with little interference.
//!
//! Each meta-training episode replays the meta-test protocol on background classes:
//! a zero-initialised linear PLN meets the episode's classes one after another and
//! takes one SGD step (`inner_lr`) on each support image in turn, with cross-entropy
//! over the classes met so far (the *trajectory*); the meta-loss is the cross-entropy
//! of the resulting PLN on the query and support images of every class of the
//! episode (OML's `S_rand ∪ S_traj`: remembering the early classes is part of the
//! objective). The gradient reaches the RLN through the whole trajectory, exactly: the
//! softmax cross-entropy's gradient with respect to a linear layer has a closed form,
//! so each inner step is an ordinary differentiable expression of the features and no
//! `create_graph` is needed.
//!
//! Differences from the paper, all in the direction of the one-class-at-a-time
//! protocol this library evaluates on: the PLN is one linear layer reset to zero every
//! episode (the paper's PLN has two layers, and resets only the output row of the
//! trajectory's class), a trajectory holds the episode's `ways` classes, and the RLN is
//! the library's Conv4 on 28×28 images (the paper uses six 256-channel convolutions
//! on 84×84). At meta-test time the RLN is frozen and the PLN is the same online head,
//! with the same learning rate ([`head_step`]).

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::meta::optimization::inner::{sgd_step, Rate};
use crate::meta::{Adapted, MetaLearner, Parts, PartsMut, StepReport};
use crate::nn::{Backbone, BackboneConfig, ParamSet};
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{accuracy, Batch, Task};

/// OML's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OmlConfig {
    /// The representation network (RLN).
    pub backbone: BackboneConfig,
    /// The PLN's SGD step on each example, in meta-training and at meta-test time.
    pub inner_lr: f64,
    /// The outer optimiser.
    pub optimizer: AdamConfig,
}

impl Default for OmlConfig {
    /// Conv4, inner step 0.1, Adam 1e-3.
    fn default() -> Self {
        OmlConfig {
            backbone: BackboneConfig::default(),
            inner_lr: 0.1,
            optimizer: AdamConfig::default(),
        }
    }
}

impl OmlConfig {
    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        if !(self.inner_lr > 0.0 && self.inner_lr.is_finite()) {
            return Err(Error::config(
                "--inner-lr",
                self.inner_lr,
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// An OML learner: the RLN's parameters and batch-norm buffers, and Adam.
#[derive(Debug)]
pub struct Oml {
    config: OmlConfig,
    backbone: Box<dyn Backbone>,
    params: ParamSet,
    buffers: ParamSet,
    adam: Adam,
}

impl Oml {
    /// A freshly initialised learner (deterministic for `seed`).
    pub fn new(config: OmlConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let backbone = config.backbone.build();
        let (params, buffers) = backbone.init(seed, device);
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(Oml {
            config,
            backbone,
            params,
            buffers,
            adam,
        })
    }

    /// The settings.
    pub fn config(&self) -> &OmlConfig {
        &self.config
    }

    /// The RLN's features `[n, d]` of images `x` in evaluation mode (batch norm with
    /// its running statistics), without gradients: what the online PLN learns on.
    pub fn embed_eval(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.embed(x, false))
    }

    fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        self.backbone
            .forward(&self.params, Some(&self.buffers), x, train)
    }
}

/// The online PLN: a zero-initialised linear head over `ways` classes that meets the
/// examples `feats` (`[n, d]`) in the order given, taking one SGD step of size `lr` on
/// each, with cross-entropy over classes `0..=label` (the classes met so far, when
/// classes arrive in order). Differentiable with respect to `feats`. Returns the
/// weight `[d, ways]` and bias `[ways]` (new tensors each step: autograd needs the old
/// ones for the backward pass).
pub fn online_head(feats: &Tensor, labels: &[i64], ways: usize, lr: f64) -> (Tensor, Tensor) {
    let (kind, device) = (feats.kind(), feats.device());
    let d = feats.size()[1];
    let w_ = ways as i64;
    let mut w = Tensor::zeros([d, w_], (kind, device));
    let mut b = Tensor::zeros([w_], (kind, device));
    for (i, &c) in labels.iter().enumerate() {
        let x = feats.narrow(0, i as i64, 1);
        // Classes after `c` are not met yet: they take no part in the softmax.
        let mask: Vec<f32> = (0..w_)
            .map(|j| if j <= c { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        let mask = Tensor::from_slice(&mask).to_device(device).to_kind(kind);
        let z = x.matmul(&w) + &b + mask;
        (w, b) = head_step(&w, &b, &x, &z, c, lr);
    }
    (w, b)
}

/// One SGD step of a linear softmax head `{w [d, k], b [k]}` on one example `x`
/// (`[1, d]`) of class `label`, whose logits `z = x·w + b` (`[1, k]`, masked or not)
/// are given: softmax cross-entropy's gradient has the closed form
/// `∂CE/∂z = softmax(z) − onehot(label)`, so no autograd graph is needed for it (and it
/// stays differentiable with respect to `x`, `w` and `b` when they are). Returns the
/// new `(w, b)`. OML's online head and the class stream's online head both step with it.
pub fn head_step(
    w: &Tensor,
    b: &Tensor,
    x: &Tensor,
    z: &Tensor,
    label: i64,
    lr: f64,
) -> (Tensor, Tensor) {
    let g = z.softmax(1, z.kind());
    let onehot = Tensor::zeros_like(&g).index_fill(
        1,
        &Tensor::from_slice(&[label]).to_device(g.device()),
        1.0,
    );
    let g = g - onehot;
    let mut head = ParamSet::new();
    head.push("weight", w.shallow_clone());
    head.push("bias", b.shallow_clone());
    let grads = [x.transpose(0, 1).matmul(&g), g.squeeze_dim(0)];
    let next = sgd_step(&head, &grads, |_| Some(Rate::Scalar(lr)));
    (
        next.get("weight").shallow_clone(),
        next.get("bias").shallow_clone(),
    )
}

/// The support examples' positions sorted by class (stable): the trajectory order.
fn trajectory(labels: &Tensor) -> (Vec<i64>, Vec<i64>) {
    let y: Vec<i64> =
        Vec::try_from(labels.to_device(Device::Cpu).to_kind(Kind::Int64)).unwrap_or_default();
    let mut order: Vec<i64> = (0..y.len() as i64).collect();
    order.sort_by_key(|&i| y[i as usize]);
    let sorted = order.iter().map(|&i| y[i as usize]).collect();
    (order, sorted)
}

struct OmlAdapted<'a> {
    net: &'a Oml,
    weight: Tensor,
    bias: Tensor,
}

impl Adapted for OmlAdapted<'_> {
    fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.embed(x, false).matmul(&self.weight) + &self.bias)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("pln.weight".into(), self.weight.to_device(Device::Cpu)),
            ("pln.bias".into(), self.bias.to_device(Device::Cpu)),
        ]
    }
}

impl MetaLearner for Oml {
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

    fn name(&self) -> &'static str {
        "oml"
    }

    /// Learns the support classes online, in label order, on the frozen RLN.
    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        let (weight, bias) = tch::no_grad(|| {
            let (order, labels) = trajectory(&support.y);
            let order = Tensor::from_slice(&order).to_device(support.x.device());
            let feats = self.embed(&support.x.index_select(0, &order), false);
            online_head(&feats, &labels, support.ways, self.config.inner_lr)
        });
        Box::new(OmlAdapted {
            net: self,
            weight,
            bias,
        })
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        let device = self.params.tensors()[0].device();
        let find = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_device(device))
                .ok_or_else(|| Error::Parameters {
                    name: name.into(),
                    reason: "missing from the adapted model".into(),
                })
        };
        Ok(Box::new(OmlAdapted {
            net: self,
            weight: find("pln.weight")?,
            bias: find("pln.bias")?,
        }))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let mut report = StepReport::default();
        let mut acc = 0.0;
        let mut total: Option<Tensor> = None;
        for task in tasks {
            let (order, labels) = trajectory(&task.support.y);
            let device = task.support.x.device();
            let order = Tensor::from_slice(&order).to_device(device);
            let ns = task.support.len() as i64;
            let x = Tensor::cat(&[&task.support.x.index_select(0, &order), &task.query.x], 0);
            let emb = self.embed(&x, true);
            let (w, b) = online_head(
                &emb.narrow(0, 0, ns),
                &labels,
                task.support.ways,
                self.config.inner_lr,
            );
            let logits = emb.matmul(&w) + b;
            let y = Tensor::cat(&[&task.support.y.index_select(0, &order), &task.query.y], 0);
            let loss = logits.cross_entropy_for_logits(&y);
            report.loss += loss.double_value(&[]);
            let nq = task.query.len() as i64;
            acc += accuracy(&logits.narrow(0, ns, nq), &task.query.y);
            total = Some(match total {
                None => loss,
                Some(t) => t + loss,
            });
        }
        let n = tasks.len().max(1) as f64;
        if let Some(t) = total {
            (t / n).backward();
            self.adam.step(&self.params);
        }
        report.loss /= n;
        report.accuracy = Some(acc / n);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed-form trajectory equals SGD by autograd on the same head, step by
    /// step, and its gradient with respect to the features matches central finite
    /// differences (f64): the meta-gradient through the trajectory is exact.
    #[test]
    fn the_online_head_is_sgd_and_differentiable() {
        let opts = (Kind::Double, Device::Cpu);
        let feats = Tensor::from_slice(&[0.3f64, -1.0, 0.5, 0.2, 1.5, 0.1, -0.4, 0.8, 0.0, 1.0])
            .view([5, 2]);
        let labels = [0i64, 0, 1, 1, 2];
        let (w, b) = online_head(&feats, &labels, 3, 0.5);
        // Autograd SGD with the classes met so far.
        let mut wa = Tensor::zeros([2, 3], opts);
        let mut ba = Tensor::zeros([3], opts);
        for (i, &c) in labels.iter().enumerate() {
            let wl = wa.detach().set_requires_grad(true);
            let bl = ba.detach().set_requires_grad(true);
            let k = c + 1;
            let z = feats.narrow(0, i as i64, 1).matmul(&wl.narrow(1, 0, k)) + bl.narrow(0, 0, k);
            // (`cross_entropy_for_logits` would compute in f32.)
            let loss = z.cross_entropy_loss::<Tensor>(
                &Tensor::from_slice(&[c]),
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            );
            let g = Tensor::run_backward(&[loss], &[&wl, &bl], false, false);
            wa = wl.detach() - &g[0] * 0.5;
            ba = bl.detach() - &g[1] * 0.5;
        }
        let diff = (&w - &wa).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "{w} vs {wa}: {diff}");
        assert!(b.allclose(&ba, 1e-12, 1e-12, false));

        let f = feats.set_requires_grad(true);
        let probe = Tensor::from_slice(&[1.0f64, -2.0, 0.5]);
        let objective = |f: &Tensor| {
            let (w, b) = online_head(f, &labels, 3, 0.5);
            (f.matmul(&w) + b).matmul(&probe).sum(Kind::Double)
        };
        let g = Tensor::run_backward(&[objective(&f)], &[&f], false, false);
        let g: Vec<f64> = Vec::try_from(g[0].reshape([-1])).unwrap();
        let base: Vec<f64> = Vec::try_from(f.detach().reshape([-1])).unwrap();
        let eps = 1e-6;
        for (i, gi) in g.iter().enumerate() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                objective(&Tensor::from_slice(&v).view([5, 2])).double_value(&[])
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - gi).abs() < 1e-7 * (1.0 + fd.abs()),
                "{i}: {fd} vs {gi}"
            );
        }
    }

    #[test]
    fn the_trajectory_is_sorted_by_class() {
        let (order, labels) = trajectory(&Tensor::from_slice(&[2i64, 0, 1, 0, 2]));
        assert_eq!(order, [1, 3, 2, 0, 4]);
        assert_eq!(labels, [0, 0, 1, 2, 2]);
    }
}
