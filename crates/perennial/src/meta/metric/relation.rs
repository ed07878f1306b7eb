//! Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018): a
//! learned metric.
//!
//! An embedding module turns each image into feature maps (Omniglot: four blocks of
//! conv 3×3 64 → batch norm → ReLU, the first two unpadded and max-pooled, the last two
//! padded and unpooled: 64×5×5 on 28×28 inputs). A class is the mean of its support
//! images' maps: the paper sums them, which for the one shot count a model is trained
//! and tested at is the same up to a scale the relation module's first layer absorbs,
//! but a sum trained at one shot and tested at five shows the relation module maps five
//! times larger than any it has seen (with the sum, a 5-way 1-shot model classified
//! fewer than 3 of 10 queries right from 3-shot support sets in the CLI's test, chance
//! being 2). The relation module scores each (query, class) pair from their
//! concatenated maps (two blocks of conv 3×3 64 → batch norm → ReLU → max-pool, then
//! fully connected 64 → 8 → 1, sigmoid), and training regresses the scores onto the
//! one-hot target with the mean squared error, as in the paper.

use perennial_data::Rng;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::meta::{
    adapted_tensor, mean_task_loss, Adapted, MetaLearner, Parts, PartsMut, StepReport,
};
use crate::nn::{channels_last, uniform, ParamSet};
use crate::optim::{Adam, AdamConfig};
use crate::tensors::{accuracy, Batch, Task};

/// A Relation Network's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RelationConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Input side in pixels (square).
    pub image_size: usize,
    /// Channels of every convolution block.
    pub hidden: usize,
    /// Width of the relation module's hidden fully connected layer.
    pub relation_hidden: usize,
    /// The optimiser.
    pub optimizer: AdamConfig,
}

impl Default for RelationConfig {
    fn default() -> Self {
        RelationConfig {
            in_channels: 1,
            image_size: 28,
            hidden: 64,
            relation_hidden: 8,
            optimizer: AdamConfig::default(),
        }
    }
}

/// Padding and pooling of the embedding's four blocks and the relation module's two.
const EMBED: [(i64, bool); 4] = [(0, true), (0, true), (1, false), (1, false)];
const RELATE: [(i64, bool); 2] = [(1, true), (1, true)];

impl RelationConfig {
    /// The side of the embedding's feature maps, and of the relation module's output.
    fn sides(&self) -> (i64, i64) {
        let mut s = self.image_size as i64;
        for (pad, pool) in EMBED {
            s = s + 2 * pad - 2;
            if pool {
                s /= 2;
            }
        }
        let maps = s;
        for (pad, pool) in RELATE {
            s = s + 2 * pad - 2;
            if pool {
                s /= 2;
            }
        }
        (maps, s)
    }

    /// Refuses images too small for the network and a bad optimiser.
    pub fn validate(&self) -> Result<()> {
        let (maps, out) = self.sides();
        if maps < 1 || out < 1 {
            return Err(Error::config(
                "image_size",
                self.image_size,
                "too small for the Relation Network's embedding and relation module (at least 22)",
            ));
        }
        if self.in_channels == 0 || self.hidden == 0 || self.relation_hidden == 0 {
            return Err(Error::config(
                "relation",
                format!(
                    "{}/{}/{}",
                    self.in_channels, self.hidden, self.relation_hidden
                ),
                "channels and widths must be positive",
            ));
        }
        self.optimizer.validate()
    }
}

/// A Relation Network: embedding and relation-module parameters, batch-norm buffers,
/// Adam.
#[derive(Debug)]
pub struct Relation {
    config: RelationConfig,
    params: ParamSet,
    buffers: ParamSet,
    adam: Adam,
}

/// The parameters and buffers of a conv 3×3 block `name` (PyTorch's initialisation).
fn conv_block_init(
    p: &mut ParamSet,
    b: &mut ParamSet,
    rng: &mut Rng,
    name: &str,
    cin: i64,
    cout: i64,
    device: Device,
) {
    let bound = 1.0 / ((cin * 9) as f64).sqrt();
    p.push(
        format!("{name}.weight"),
        uniform(rng, &[cout, cin, 3, 3], bound, device),
    );
    p.push(format!("{name}.bias"), uniform(rng, &[cout], bound, device));
    p.push(
        format!("{name}.bn.weight"),
        Tensor::ones([cout], (Kind::Float, device)),
    );
    p.push(
        format!("{name}.bn.bias"),
        Tensor::zeros([cout], (Kind::Float, device)),
    );
    b.push(
        format!("{name}.bn.running_mean"),
        Tensor::zeros([cout], (Kind::Float, device)),
    );
    b.push(
        format!("{name}.bn.running_var"),
        Tensor::ones([cout], (Kind::Float, device)),
    );
}

/// conv 3×3 (padding `pad`) → batch norm → ReLU (→ max-pool 2).
fn conv_block(
    p: &ParamSet,
    b: &ParamSet,
    name: &str,
    x: &Tensor,
    (pad, pool): (i64, bool),
    train: bool,
) -> Tensor {
    let w = p.get(&format!("{name}.weight"));
    let w = if x.device() == Device::Cpu {
        channels_last(w)
    } else {
        w.shallow_clone()
    };
    let h = x
        .conv2d(
            &w,
            Some(p.get(&format!("{name}.bias"))),
            [1, 1],
            [pad, pad],
            [1, 1],
            1,
        )
        .batch_norm(
            Some(p.get(&format!("{name}.bn.weight"))),
            Some(p.get(&format!("{name}.bn.bias"))),
            Some(b.get(&format!("{name}.bn.running_mean"))),
            Some(b.get(&format!("{name}.bn.running_var"))),
            train,
            0.1,
            1e-5,
            true,
        )
        .relu();
    if pool {
        h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
    } else {
        h
    }
}

impl Relation {
    /// A freshly initialised network (deterministic for `seed`).
    pub fn new(config: RelationConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let (mut p, mut b) = (ParamSet::new(), ParamSet::new());
        let h = config.hidden as i64;
        for i in 0..EMBED.len() {
            let cin = if i == 0 { config.in_channels as i64 } else { h };
            conv_block_init(
                &mut p,
                &mut b,
                &mut rng,
                &format!("embed{i}"),
                cin,
                h,
                device,
            );
        }
        for i in 0..RELATE.len() {
            let cin = if i == 0 { 2 * h } else { h };
            conv_block_init(
                &mut p,
                &mut b,
                &mut rng,
                &format!("relate{i}"),
                cin,
                h,
                device,
            );
        }
        let (_, out) = config.sides();
        let flat = h * out * out;
        let r = config.relation_hidden as i64;
        let b1 = 1.0 / (flat as f64).sqrt();
        p.push("fc1.weight", uniform(&mut rng, &[r, flat], b1, device));
        p.push("fc1.bias", uniform(&mut rng, &[r], b1, device));
        let b2 = 1.0 / (r as f64).sqrt();
        p.push("fc2.weight", uniform(&mut rng, &[1, r], b2, device));
        p.push("fc2.bias", uniform(&mut rng, &[1], b2, device));
        let params = p.requires_grad();
        let adam = Adam::new(config.optimizer.clone(), &params);
        Ok(Relation {
            config,
            params,
            buffers: b,
            adam,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RelationConfig {
        &self.config
    }

    /// Feature maps `[n, c, s, s]` of images `[n, 1, side, side]`.
    fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, shape) in EMBED.into_iter().enumerate() {
            h = conv_block(
                &self.params,
                &self.buffers,
                &format!("embed{i}"),
                &h,
                shape,
                train,
            );
        }
        h
    }

    /// The embedding `[n, c·s·s]` of images in evaluation mode, without gradients: the
    /// flattened feature maps the relation module compares.
    pub fn embed_eval(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.embed(x, false).flatten(1, -1))
    }

    /// Class maps `[ways, c, s, s]`: the mean of each class's support maps.
    fn classes(maps: &Tensor, labels: &Tensor, ways: usize) -> Tensor {
        let size = maps.size();
        super::protonet::prototypes(&maps.flatten(1, -1), labels, ways).view([
            ways as i64,
            size[1],
            size[2],
            size[3],
        ])
    }

    /// Relation scores `[m, ways]` in (0, 1) of query maps `[m, c, s, s]` against class
    /// maps `[ways, c, s, s]`.
    fn scores(&self, queries: &Tensor, classes: &Tensor, train: bool) -> Tensor {
        let (m, w) = (queries.size()[0], classes.size()[0]);
        let s = queries.size();
        let (c, h, wd) = (s[1], s[2], s[3]);
        let pairs = Tensor::cat(
            &[
                queries.unsqueeze(1).expand([m, w, c, h, wd], false),
                classes.unsqueeze(0).expand([m, w, c, h, wd], false),
            ],
            2,
        )
        .view([m * w, 2 * c, h, wd]);
        let mut r = pairs;
        for (i, shape) in RELATE.into_iter().enumerate() {
            r = conv_block(
                &self.params,
                &self.buffers,
                &format!("relate{i}"),
                &r,
                shape,
                train,
            );
        }
        let p = &self.params;
        r.flatten(1, -1)
            .linear(p.get("fc1.weight"), Some(p.get("fc1.bias")))
            .relu()
            .linear(p.get("fc2.weight"), Some(p.get("fc2.bias")))
            .sigmoid()
            .view([m, w])
    }
}

/// A Relation Network holding a task's class maps.
struct RelationAdapted<'a> {
    net: &'a Relation,
    classes: Tensor,
}

impl Adapted for RelationAdapted<'_> {
    /// The relation scores, in (0, 1): the class with the highest is predicted.
    fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.net
                .scores(&self.net.embed(x, false), &self.classes, false)
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("classes".into(), self.classes.to_device(Device::Cpu))]
    }
}

impl MetaLearner for Relation {
    fn name(&self) -> &'static str {
        "relation"
    }

    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a> {
        let classes = tch::no_grad(|| {
            Relation::classes(&self.embed(&support.x, false), &support.y, support.ways)
        });
        Box::new(RelationAdapted { net: self, classes })
    }

    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>> {
        let device = self.params.tensors()[0].device();
        let classes = adapted_tensor(named, "classes", device)?;
        let (maps, _) = self.config.sides();
        let want = [self.config.hidden as i64, maps, maps];
        if classes.dim() != 4 || classes.size()[1..] != want {
            return Err(Error::Parameters {
                name: "classes".into(),
                reason: format!("shape {:?}, expected [ways, {want:?}]", classes.size()),
            });
        }
        Ok(Box::new(RelationAdapted { net: self, classes }))
    }

    fn meta_step(&mut self, tasks: &[Task]) -> StepReport {
        let (total, report) = mean_task_loss(tasks, |task| {
            let ns = task.support.len() as i64;
            let x = Tensor::cat(&[&task.support.x, &task.query.x], 0);
            let maps = self.embed(&x, true);
            let classes =
                Relation::classes(&maps.narrow(0, 0, ns), &task.support.y, task.support.ways);
            let scores = self.scores(&maps.narrow(0, ns, maps.size()[0] - ns), &classes, true);
            let target = task
                .query
                .y
                .one_hot(task.query.ways as i64)
                .to_kind(scores.kind());
            let loss = scores.mse_loss(&target, tch::Reduction::Mean);
            (loss, accuracy(&scores, &task.query.y))
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
    fn omniglot_shapes_are_the_papers() {
        let c = RelationConfig::default();
        assert_eq!(c.sides(), (5, 1));
        let net = Relation::new(c, 0, Device::Cpu).unwrap();
        let x = Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        assert_eq!(net.embed(&x, false).size(), vec![3, 64, 5, 5]);
        let classes =
            Relation::classes(&net.embed(&x, false), &Tensor::from_slice(&[0i64, 1, 1]), 2);
        assert_eq!(classes.size(), vec![2, 64, 5, 5]);
        let s = net.scores(&net.embed(&x, false), &classes, false);
        assert_eq!(s.size(), vec![3, 2]);
        let small = RelationConfig {
            image_size: 16,
            ..Default::default()
        };
        assert!(Relation::new(small, 0, Device::Cpu).is_err());
    }

    #[test]
    fn a_class_is_the_mean_of_its_support_maps() {
        let maps = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([3, 1, 1, 1]);
        let y = Tensor::from_slice(&[1i64, 0, 1]);
        let c: Vec<f32> = Relation::classes(&maps, &y, 2)
            .flatten(0, -1)
            .try_into()
            .unwrap();
        assert_eq!(c, vec![2.0, 2.0]);
    }
}
