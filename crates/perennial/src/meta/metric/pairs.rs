//! An embedding trained with a loss on labelled batches (triplet, contrastive or
//! supervised-contrastive; [`super::losses`]) instead of on episodes, classifying at
//! test time by the nearest class mean, in the same evaluation loop as ProtoNet.
//!
//! A training "episode" is one batch: the episode's support and query images together,
//! `ways` classes of `shots + queries` images each (Hermans et al.'s P×K batch with
//! P = ways, K = shots + queries).

use tch::{Device, Tensor};

use super::losses::{self, Mining, PairDistance};
use super::protonet::{prototypes, query_logits};
use crate::error::{Error, Result};
use crate::meta::{
    adapted_tensor, mean_task_loss, Adapted, MetaLearner, Parts, PartsMut, StepReport,
};
use crate::nn::{Backbone, BackboneConfig, Distance, ParamSet};
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{accuracy, Batch, Task};

/// The training loss of a [`PairEmbedding`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PairLoss {
    /// The triplet loss ([`losses::triplet`]).
    Triplet {
        /// The margin m.
        margin: f64,
        /// Which triplets.
        mining: Mining,
        /// The distance d.
        distance: PairDistance,
    },
    /// The contrastive loss of Hadsell et al. 2006 on every pair ([`losses::contrastive`]).
    Contrastive {
        /// The margin beyond which pairs of two classes stop being pushed.
        margin: f64,
        /// The distance.
        distance: PairDistance,
    },
    /// The supervised-contrastive loss of Khosla et al. 2020
    /// ([`losses::supervised_contrastive`]).
    SupCon {
        /// The temperature τ.
        temperature: f64,
    },
}

impl Default for PairLoss {
    fn default() -> Self {
        PairLoss::Triplet {
            margin: 0.2,
            mining: Mining::SemiHard,
            distance: PairDistance::SquaredEuclidean,
        }
    }
}

impl PairLoss {
    /// The algorithm this loss trains under: `triplet`, or `contrastive` (both
    /// contrastive losses).
    pub fn algorithm(&self) -> &'static str {
        match self {
            PairLoss::Triplet { .. } => "triplet",
            PairLoss::Contrastive { .. } | PairLoss::SupCon { .. } => "contrastive",
        }
    }

    /// Refuses a margin or temperature that is not positive and finite.
    pub fn validate(&self) -> Result<()> {
        let (name, v) = match self {
            PairLoss::Triplet { margin, .. } | PairLoss::Contrastive { margin, .. } => {
                ("--margin", *margin)
            }
            PairLoss::SupCon { temperature } => ("--temperature", *temperature),
        };
        if !(v > 0.0 && v.is_finite()) {
            return Err(Error::config(name, v, "must be positive"));
        }
        Ok(())
    }

    /// The distance the trained embedding's class means are compared under.
    pub fn class_distance(&self) -> Distance {
        match self {
            PairLoss::Triplet {
                distance: PairDistance::SquaredEuclidean,
                ..
            }
            | PairLoss::Contrastive {
                distance: PairDistance::SquaredEuclidean,
                ..
            } => Distance::SquaredEuclidean,
            _ => Distance::Cosine { scale: 10.0 },
        }
    }

    /// The loss of embeddings `e` with labels `y`.
    pub fn loss(&self, e: &Tensor, y: &Tensor) -> Tensor {
        match *self {
            PairLoss::Triplet {
                margin,
                mining,
                distance,
            } => losses::triplet(e, y, margin, mining, distance),
            PairLoss::Contrastive { margin, distance } => {
                losses::contrastive(e, y, margin, distance)
            }
            PairLoss::SupCon { temperature } => losses::supervised_contrastive(e, y, temperature),
        }
    }
}

/// A [`PairEmbedding`]'s settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PairEmbeddingConfig {
    /// The embedding network.
    pub backbone: BackboneConfig,
    /// The loss.
    pub loss: PairLoss,
    /// Scale embeddings to unit length before the loss and at test time (FaceNet's
    /// hypersphere; the supervised-contrastive loss normalises anyway).
    pub normalize: bool,
    /// The optimiser.
    pub optimizer: AdamConfig,
}

impl Default for PairEmbeddingConfig {
    fn default() -> Self {
        PairEmbeddingConfig {
            backbone: BackboneConfig::default(),
            loss: PairLoss::default(),
            normalize: true,
            optimizer: AdamConfig::default(),
        }
    }
}

impl PairEmbeddingConfig {
    /// The defaults of the contrastive loss (Hadsell et al.'s, on unit-length
    /// embeddings with Euclidean distance up to 2: margin 1).
    pub fn contrastive() -> Self {
        PairEmbeddingConfig {
            loss: PairLoss::Contrastive {
                margin: 1.0,
                distance: PairDistance::SquaredEuclidean,
            },
            ..Default::default()
        }
    }

    /// Checks the loss and the optimiser.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        self.optimizer.validate()
    }
}

/// An embedding trained with a triplet, contrastive or supervised-contrastive loss.
#[derive(Debug)]
pub struct PairEmbedding {
    config: PairEmbeddingConfig,
    backbone: Box<dyn Backbone>,
    params: ParamSet,
    buffers: ParamSet,
    adam: Adam,
}

impl PairEmbedding {
    /// A freshly initialised network (deterministic for `seed`).
    pub fn new(config: PairEmbeddingConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let backbone = config.backbone.build();
        let (params, buffers) = backbone.init(seed, device);
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(PairEmbedding {
            config,
            backbone,
            params,
            buffers,
            adam,
        })
    }

    /// The settings.
    pub fn config(&self) -> &PairEmbeddingConfig {
        &self.config
    }

    /// The embedding `[n, d]` in evaluation mode, without gradients (unit length when
    /// the config normalises).
    pub fn embed_eval(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.embed(x, false))
    }

    fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        let e = self
            .backbone
            .forward(&self.params, Some(&self.buffers), x, train);
        if self.config.normalize {
            losses::normalize(&e)
        } else {
            e
        }
    }
}

/// Nearest class mean on a [`PairEmbedding`].
struct NearestMean<'a> {
    net: &'a PairEmbedding,
    means: Tensor,
}

impl Adapted for NearestMean<'_> {
    fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.net
                .config
                .loss
                .class_distance()
                .logits(&self.net.embed(x, false), &self.means)
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("prototypes".into(), self.means.to_device(Device::Cpu))]
    }
}

impl MetaLearner for PairEmbedding {
    fn name(&self) -> &'static str {
        self.config.loss.algorithm()
    }

    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        let means =
            tch::no_grad(|| prototypes(&self.embed(&support.x, false), &support.y, support.ways));
        Box::new(NearestMean { net: self, means })
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        let device = self.params.tensors()[0].device();
        let means = adapted_tensor(named, "prototypes", device)?;
        Ok(Box::new(NearestMean { net: self, means }))
    }

    /// One Adam step on the mean loss of the tasks, each task one labelled batch (its
    /// support and query images). The reported accuracy is the nearest-class-mean
    /// accuracy of the queries against the support in that batch's embedding.
    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let (total, report) = mean_task_loss(tasks, |task| {
            let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
            let y = Tensor::cat(&[&task.support.y, &task.query.y], 0);
            let e = self.embed(&x, true);
            let loss = self.config.loss.loss(&e, &y);
            let acc = tch::no_grad(|| {
                let logits = query_logits(&self.config.loss.class_distance(), &e.detach(), task);
                accuracy(&logits, &task.query.y)
            });
            (loss, acc)
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

    #[test]
    fn bad_margins_and_temperatures_are_refused() {
        for loss in [
            PairLoss::Triplet {
                margin: 0.0,
                mining: Mining::All,
                distance: PairDistance::Cosine,
            },
            PairLoss::Contrastive {
                margin: -1.0,
                distance: PairDistance::SquaredEuclidean,
            },
            PairLoss::SupCon {
                temperature: f64::NAN,
            },
        ] {
            let config = PairEmbeddingConfig {
                loss,
                ..Default::default()
            };
            let err = PairEmbedding::new(config, 0, Device::Cpu).unwrap_err();
            assert!(err.to_string().contains("must be positive"), "{err}");
        }
    }
}
