//! The representation a lifelong learner builds on: one [`Encoder`] trait for every
//! meta-learned embedding (ProtoNet, Matching Networks, triplet and contrastive
//! embeddings, the Relation Network's feature maps and OML), and [`Encoding`], an encoder with shift averaging.
//!
//! An encoder is built from a trained run ([`open_run`]) and described by an
//! [`EncoderSpec`] that is enough to rebuild it ([`build`]) once its tensors
//! ([`Encoder::state`]) are loaded back: a saved lifelong learner needs no run
//! directory to come back. An encoder whose learner trains on episodes
//! ([`Encoder::trainable`]) can be meta-consolidated further on the classes a learner
//! meets ([`super::consolidate`]).

use std::path::Path;

use tch::{Device, Tensor};

use crate::checkpoint::{RunConfig, RunDir};
use crate::error::{Error, Result};
use crate::lifelong::oml::Oml;
use crate::meta::memory::KvMemory;
use crate::meta::metric::{Matching, PairEmbedding, ProtoNet, Relation};
use crate::meta::MetaLearner;
use crate::nn::{shift_averaged, Distance};

/// What rebuilds an encoder: the configuration of the run it came from (and the
/// learning rate of its further meta-training), or the identity map.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EncoderSpec {
    /// The embedding of a meta-trained run.
    Run {
        /// The run's resolved configuration (its `config.toml`).
        config: Box<RunConfig>,
        /// The Adam learning rate of meta-consolidation (the run's own schedule does
        /// not apply to it: the rate stays constant).
        consolidation_lr: f64,
    },
    /// Inputs are features already: `[n, ...]` flattened to `[n, d]`.
    Identity,
}

/// A meta-learned representation: images in, feature vectors out.
pub trait Encoder: Send + std::fmt::Debug {
    /// What rebuilds this encoder ([`build`]), before its [`Encoder::state`] is loaded.
    fn spec(&self) -> EncoderSpec;

    /// The algorithm that trained it (`protonet`, `oml`, `identity`).
    fn algorithm(&self) -> &str;

    /// Features `[n, d]` of inputs `[n, ...]` (images `[n, 1, side, side]`), in
    /// evaluation mode, without gradients.
    fn embed(&self, x: &Tensor) -> Tensor;

    /// The distance the embedding was trained with, which its classes' prototypes are
    /// compared under.
    fn distance(&self) -> Distance;

    /// The side of the square images it takes (`None`: any input).
    fn image_side(&self) -> Option<usize>;

    /// The meta-learner behind the embedding when it can be meta-trained further on
    /// episodes (meta-consolidation); `None` for a representation that stays frozen.
    fn trainable(&mut self) -> Option<&mut dyn MetaLearner>;

    /// Every tensor needed to restore it, optimiser included.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores [`Encoder::state`].
    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<()>;

    /// Loads a trained model's weights (a run's best model), the optimiser fresh.
    fn load_weights(&mut self, named: &[(String, Tensor)]) -> Result<()>;
}

/// A meta-learner whose embedding an [`Encoder`] exposes.
trait Embedding: MetaLearner + Send + std::fmt::Debug {
    /// Features in evaluation mode.
    fn embed_eval(&self, x: &Tensor) -> Tensor;
    /// The distance it was trained with.
    fn trained_distance(&self) -> Distance;
    /// Whether meta-consolidation can train it on prototype episodes.
    const TRAINABLE: bool;
}

impl Embedding for ProtoNet {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        ProtoNet::embed_eval(self, x)
    }
    fn trained_distance(&self) -> Distance {
        self.config().distance
    }
    const TRAINABLE: bool = true;
}

impl Embedding for Matching {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        Matching::embed_eval(self, x)
    }
    fn trained_distance(&self) -> Distance {
        // Its attention compares cosines (a scale does not change the nearest class).
        Distance::Cosine { scale: 10.0 }
    }
    const TRAINABLE: bool = true;
}

impl Embedding for PairEmbedding {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        PairEmbedding::embed_eval(self, x)
    }
    fn trained_distance(&self) -> Distance {
        self.config().loss.class_distance()
    }
    const TRAINABLE: bool = true;
}

impl Embedding for Relation {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        Relation::embed_eval(self, x)
    }
    fn trained_distance(&self) -> Distance {
        // Its metric is its relation module, which scores one (query, class) pair at
        // a time; class means of its flattened feature maps are compared by the
        // squared Euclidean distance instead, and the embedding stays frozen (training
        // it further would train the relation module, not that distance).
        Distance::SquaredEuclidean
    }
    const TRAINABLE: bool = false;
}

impl Embedding for KvMemory {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        KvMemory::embed_eval(self, x)
    }
    fn trained_distance(&self) -> Distance {
        // Unit-length keys read by cosine similarity.
        Distance::Cosine { scale: 10.0 }
    }
    // Meta-consolidation trains it with its own memory loss on the episodes it is given.
    const TRAINABLE: bool = true;
}

impl Embedding for Oml {
    fn embed_eval(&self, x: &Tensor) -> Tensor {
        Oml::embed_eval(self, x)
    }
    fn trained_distance(&self) -> Distance {
        // OML meta-trains its representation for a linear head, under no distance;
        // prototypes over it are compared as ProtoNet's default does.
        Distance::SquaredEuclidean
    }
    const TRAINABLE: bool = false;
}

/// The embedding of a trained run.
#[derive(Debug)]
struct RunEncoder<N> {
    config: RunConfig,
    consolidation_lr: f64,
    net: N,
}

impl<N: Embedding> Encoder for RunEncoder<N> {
    fn spec(&self) -> EncoderSpec {
        EncoderSpec::Run {
            config: Box::new(self.config.clone()),
            consolidation_lr: self.consolidation_lr,
        }
    }

    fn algorithm(&self) -> &str {
        self.config.algorithm.name()
    }

    fn embed(&self, x: &Tensor) -> Tensor {
        self.net.embed_eval(x)
    }

    fn distance(&self) -> Distance {
        self.net.trained_distance()
    }

    fn image_side(&self) -> Option<usize> {
        self.config.image_size()
    }

    fn trainable(&mut self) -> Option<&mut dyn MetaLearner> {
        if N::TRAINABLE {
            Some(&mut self.net)
        } else {
            None
        }
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.net.training_state()
    }

    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        self.net.load_training_state(named)
    }

    fn load_weights(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        self.net.load_model_state(named)
    }
}

/// Inputs that are features already (flattened to `[n, d]`); squared Euclidean
/// prototypes; nothing to train or save. For features computed elsewhere, and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl Encoder for Identity {
    fn spec(&self) -> EncoderSpec {
        EncoderSpec::Identity
    }
    fn algorithm(&self) -> &str {
        "identity"
    }
    fn embed(&self, x: &Tensor) -> Tensor {
        x.flatten(1, -1)
    }
    fn distance(&self) -> Distance {
        Distance::SquaredEuclidean
    }
    fn image_side(&self) -> Option<usize> {
        None
    }
    fn trainable(&mut self) -> Option<&mut dyn MetaLearner> {
        None
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn load_state(&mut self, _named: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }
    fn load_weights(&mut self, _named: &[(String, Tensor)]) -> Result<()> {
        Ok(())
    }
}

/// A freshly initialised encoder for `spec` (its weights are then loaded with
/// [`Encoder::load_state`]). Refuses runs whose learner has no embedding to build on.
pub fn build(spec: &EncoderSpec) -> Result<Box<dyn Encoder>> {
    let (config, lr) = match spec {
        EncoderSpec::Identity => return Ok(Box::new(Identity)),
        EncoderSpec::Run {
            config,
            consolidation_lr,
        } => (config.as_ref(), *consolidation_lr),
    };
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(Error::config("--consolidate-lr", lr, "must be positive"));
    }
    let a = &config.algorithm;
    let with_lr = |mut o: crate::optim::AdamConfig| {
        // The optimiser serves meta-consolidation only: its rate, no schedule.
        o.lr = lr;
        o.step_every = 0;
        o
    };
    fn boxed<N: Embedding + 'static>(config: &RunConfig, lr: f64, net: N) -> Box<dyn Encoder> {
        Box::new(RunEncoder {
            config: config.clone(),
            consolidation_lr: lr,
            net,
        })
    }
    let seed = config.seed;
    let cpu = Device::Cpu;
    if let Some(p) = a.protonet() {
        let mut p = p.clone();
        p.optimizer = with_lr(p.optimizer);
        return Ok(boxed(config, lr, ProtoNet::new(p, seed, cpu)?));
    }
    if let Some(m) = a.matching() {
        let mut m = m.clone();
        m.optimizer = with_lr(m.optimizer);
        return Ok(boxed(config, lr, Matching::new(m, seed, cpu)?));
    }
    if let Some(p) = a.pair_embedding() {
        let mut p = p.clone();
        p.optimizer = with_lr(p.optimizer);
        return Ok(boxed(config, lr, PairEmbedding::new(p, seed, cpu)?));
    }
    if let Some(r) = a.relation() {
        return Ok(boxed(config, lr, Relation::new(r.clone(), seed, cpu)?));
    }
    if let Some(o) = a.oml() {
        return Ok(boxed(config, lr, Oml::new(o.clone(), seed, cpu)?));
    }
    if let Some(k) = a.kv_memory() {
        let mut k = k.clone();
        k.optimizer = with_lr(k.optimizer);
        return Ok(boxed(config, lr, KvMemory::new(k, seed, cpu)?));
    }
    Err(Error::config("encoder", a.name(), NOT_AN_EMBEDDING))
}

/// Why a run's learner cannot be an encoder.
const NOT_AN_EMBEDDING: &str = "a lifelong learner builds on an embedding: the encoder must be a \
     ProtoNet, Matching, triplet, contrastive, Relation, OML or kv-memory run";

/// The embedding of the run in `dir` (its best model), whose further meta-training
/// (meta-consolidation) takes Adam steps of `consolidation_lr`.
pub fn open_run(dir: &Path, consolidation_lr: f64) -> Result<Box<dyn Encoder>> {
    let run = RunDir::open(dir)?;
    let config = run.config()?;
    let mut encoder = build(&EncoderSpec::Run {
        config: Box::new(config),
        consolidation_lr,
    })
    .map_err(|e| match e {
        Error::Config { name, .. } if name == "encoder" => {
            Error::run(dir, format!("not an embedding: {NOT_AN_EMBEDDING}"))
        }
        e => e,
    })?;
    encoder.load_weights(&run.load_best()?)?;
    Ok(encoder)
}

/// A deep copy of `encoder` (weights and optimiser state), to train while the
/// original keeps serving.
pub fn copy(encoder: &dyn Encoder) -> Result<Box<dyn Encoder>> {
    let mut c = build(&encoder.spec())?;
    // Loading copies into the new encoder's own tensors.
    c.load_state(&encoder.state())?;
    Ok(c)
}

/// An encoder with shift averaging: an image's features are the mean of the encoder's
/// features of its translations by up to `shift` pixels ([`shift_averaged`]).
#[derive(Debug)]
pub struct Encoding {
    encoder: Box<dyn Encoder>,
    shift: usize,
}

impl Encoding {
    /// `encoder` averaged over translations of up to `shift` pixels (0: none). A shift
    /// is at most a quarter of the image side.
    pub fn new(encoder: Box<dyn Encoder>, shift: usize) -> Result<Self> {
        if let Some(side) = encoder.image_side() {
            at_most_a_quarter("--shift-radius", shift, side)?;
        } else if shift > 0 {
            return Err(Error::config(
                "--shift-radius",
                shift,
                "shift averaging needs an encoder of images",
            ));
        }
        Ok(Encoding { encoder, shift })
    }

    /// Features `[n, d]` of inputs `[n, ...]`.
    pub fn features(&self, x: &Tensor) -> Tensor {
        shift_averaged(|x| self.encoder.embed(x), x, self.shift as i64)
    }

    /// The shift radius.
    pub fn shift(&self) -> usize {
        self.shift
    }

    /// The encoder.
    pub fn encoder(&self) -> &dyn Encoder {
        self.encoder.as_ref()
    }

    /// Replaces the encoder (a consolidated copy), keeping the shift.
    pub fn replace(&mut self, encoder: Box<dyn Encoder>) {
        self.encoder = encoder;
    }

    /// The width of the features of inputs shaped like `example` (`[1, ...]`).
    pub fn dim(&self, example: &Tensor) -> usize {
        self.features(example).size()[1] as usize
    }
}

/// A translation of up to `pixels` (shift averaging, consolidation jitter) is at most a
/// quarter of the image `side`.
pub fn at_most_a_quarter(flag: &str, pixels: usize, side: usize) -> Result<()> {
    if pixels > side / 4 {
        return Err(Error::config(
            flag,
            pixels,
            format!("at most {} (a quarter of the {side}-pixel side)", side / 4),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::AlgorithmConfig;
    use crate::meta::metric::ProtoNetConfig;

    /// The configuration of a ProtoNet run on 28-pixel images (never trained): the
    /// registry's defaults with `distance`.
    pub(crate) fn protonet_run(distance: Distance) -> RunConfig {
        let mut c = crate::meta::registry::find("protonet")
            .unwrap()
            .config(crate::data::EpisodeSpec::new(5, 1, 1), 3);
        c.data.splits = crate::data::omniglot::SplitScheme::Lake;
        c.algorithm = AlgorithmConfig::Protonet {
            protonet: ProtoNetConfig {
                distance,
                ..ProtoNetConfig::default()
            },
        };
        c
    }

    #[test]
    fn a_copy_embeds_as_the_original_and_trains_apart_from_it() {
        let spec = EncoderSpec::Run {
            config: Box::new(protonet_run(Distance::SquaredEuclidean)),
            consolidation_lr: 1e-3,
        };
        let a = build(&spec).unwrap();
        let x = Tensor::rand([2, 1, 28, 28], (tch::Kind::Float, Device::Cpu));
        let mut b = copy(a.as_ref()).unwrap();
        assert!(a.embed(&x).equal(&b.embed(&x)));
        assert_eq!(b.spec(), spec);
        assert_eq!(a.image_side(), Some(28));
        // Training the copy leaves the original alone.
        let before = a.embed(&x);
        let net = b.trainable().expect("a ProtoNet trains further");
        let y = Tensor::from_slice(&[0i64, 1]);
        let batch = || crate::tensors::Batch {
            x: x.shallow_clone(),
            y: y.shallow_clone(),
            ways: 2,
        };
        let task = crate::tensors::Task {
            support: batch(),
            query: batch(),
        };
        net.meta_step(&[task]);
        assert!(a.embed(&x).equal(&before));
        assert!(!b.embed(&x).equal(&before));
        // Shift averaging is bounded by the side; the identity takes no shift.
        assert!(Encoding::new(copy(a.as_ref()).unwrap(), 7).is_ok());
        let err = Encoding::new(copy(a.as_ref()).unwrap(), 8).unwrap_err();
        assert!(err.to_string().contains("at most 7"), "{err}");
        assert!(Encoding::new(Box::new(Identity), 1).is_err());
    }
}
