//! Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).
//!
//! Each class's prototype is the mean embedding of its support examples; a query is
//! classified by a softmax over negative distances to the prototypes. Training
//! minimises the query cross-entropy, one episode per update, with support and query
//! embedded in one batch as in the paper's code.

use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::meta::{
    adapted_tensor, mean_task_loss, Adapted, MetaLearner, Parts, PartsMut, StepReport,
};
use crate::nn::{Backbone, BackboneConfig, Distance, ParamSet};
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{accuracy, Batch, Task};

/// ProtoNet's settings.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ProtoNetConfig {
    /// The embedding network.
    pub backbone: BackboneConfig,
    /// The distance between embeddings.
    pub distance: Distance,
    /// The outer optimiser.
    pub optimizer: AdamConfig,
}

/// A Prototypical Network: embedding parameters, batch-norm buffers and Adam.
#[derive(Debug)]
pub struct ProtoNet {
    config: ProtoNetConfig,
    backbone: Box<dyn Backbone>,
    params: ParamSet,
    buffers: ParamSet,
    adam: Adam,
}

impl ProtoNet {
    /// A freshly initialised network (deterministic for `seed`).
    pub fn new(config: ProtoNetConfig, seed: u64, device: Device) -> Result<Self> {
        config.optimizer.validate()?;
        let backbone = config.backbone.build();
        let (params, buffers) = backbone.init(seed, device);
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(ProtoNet {
            config,
            backbone,
            params,
            buffers,
            adam,
        })
    }

    /// The meta-parameters.
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// The settings.
    pub fn config(&self) -> &ProtoNetConfig {
        &self.config
    }

    /// The embedding `[n, d]` of images `x` in evaluation mode (batch norm with its
    /// running statistics), without gradients: the representation a continual learner
    /// builds on.
    pub fn embed_eval(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.embed(x, false))
    }

    fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        self.backbone
            .forward(&self.params, Some(&self.buffers), x, train)
    }
}

/// Class means of `emb` (`[n, d]`) under labels `0..ways`.
pub(crate) fn prototypes(emb: &Tensor, labels: &Tensor, ways: usize) -> Tensor {
    let onehot = labels.one_hot(ways as i64).to_kind(emb.kind()); // [n, ways]
    let counts = onehot.sum_dim_intlist(0, false, None::<Kind>).unsqueeze(1); // [ways, 1]
    onehot.transpose(0, 1).matmul(emb) / counts
}

/// Logits of the queries against the class means of the support, in `emb`: the
/// embeddings of a task's support images followed by its query images.
pub(crate) fn query_logits(distance: &Distance, emb: &Tensor, task: &Task) -> Tensor {
    let ns = task.support.len() as i64;
    let protos = prototypes(&emb.narrow(0, 0, ns), &task.support.y, task.support.ways);
    distance.logits(&emb.narrow(0, ns, emb.size()[0] - ns), &protos)
}

struct ProtoAdapted<'a> {
    net: &'a ProtoNet,
    protos: Tensor,
}

impl Adapted for ProtoAdapted<'_> {
    fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.net
                .config
                .distance
                .logits(&self.net.embed(x, false), &self.protos)
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("prototypes".into(), self.protos.to_device(Device::Cpu))]
    }
}

impl MetaLearner for ProtoNet {
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
        "protonet"
    }

    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        let protos =
            tch::no_grad(|| prototypes(&self.embed(&support.x, false), &support.y, support.ways));
        Box::new(ProtoAdapted { net: self, protos })
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        let device = self.params.tensors()[0].device();
        let protos = adapted_tensor(named, "prototypes", device)?;
        Ok(Box::new(ProtoAdapted { net: self, protos }))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let (total, report) = mean_task_loss(tasks, |task| {
            let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
            let emb = self.embed(&x, true);
            let logits = query_logits(&self.config.distance, &emb, task);
            let loss = logits.cross_entropy_for_logits(&task.query.y);
            (loss, accuracy(&logits, &task.query.y))
        });
        self.adam.minimise(&self.params, total);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototypes_are_class_means() {
        let emb = Tensor::from_slice(&[1.0f32, 0.0, 3.0, 0.0, 0.0, 5.0]).view([3, 2]);
        let y = Tensor::from_slice(&[0i64, 0, 1]);
        let p: Vec<f32> = prototypes(&emb, &y, 2).flatten(0, -1).try_into().unwrap();
        assert_eq!(p, vec![2.0, 0.0, 0.0, 5.0]);
    }
}
