//! The algorithm registry: every meta-learner by name, with its family, a default
//! configuration and a builder.
//!
//! Training ([`crate::train`]), evaluation, the command line and the conformance tests
//! (`tests/conformance.rs`) reach the learners through it, so a learner added here is
//! built, trained, evaluated and held to the same contract the day it lands: adding an
//! algorithm is its module plus one entry in [`all`].

use tch::Device;

use crate::checkpoint::{AlgorithmConfig, DataConfig, RunConfig, ScheduleConfig};
use crate::data::omniglot::{Split, SplitScheme};
use crate::data::EpisodeSpec;
use crate::error::{Error, Result};
use crate::lifelong::oml::{Oml, OmlConfig};
use crate::meta::memory::{KvMemory, KvMemoryConfig, Mann, MannConfig};
use crate::meta::metric::{
    Matching, MatchingConfig, PairEmbedding, PairEmbeddingConfig, ProtoNet, ProtoNetConfig,
    Relation, RelationConfig,
};
use crate::meta::optimization::maml::{Maml, MamlConfig, MamlVariant};
use crate::meta::optimization::reptile::{Reptile, ReptileConfig};
use crate::meta::MetaLearner;

/// The families of the system's taxonomy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Learn an embedding and a distance in which the nearest class is right.
    Metric,
    /// Learn an initialisation that fine-tunes fast.
    Optimization,
    /// Learn to write a new task into an external memory.
    Memory,
    /// Learn a representation for learning online, one example at a time.
    Lifelong,
}

/// One registered algorithm.
#[derive(Debug)]
pub struct Algorithm {
    /// Its name, as `perennial train NAME` and a run's `config.toml` spell it.
    pub name: &'static str,
    /// Its family.
    pub family: Family,
    /// One line on what it is.
    pub summary: &'static str,
    /// This algorithm's settings with their defaults, for episodes of `ways` classes.
    settings: fn(usize) -> AlgorithmConfig,
    /// Builds the learner of a run configuration.
    build: fn(&RunConfig, Device) -> Result<Box<dyn MetaLearner>>,
}

impl Algorithm {
    /// A configuration with this algorithm's defaults for Omniglot episodes `episode`
    /// (the Vinyals split, the data directory of [`crate::data::paths::data_dir`]),
    /// 1000 updates of one task each, no validation, a checkpoint every 100.
    pub fn config(&self, episode: EpisodeSpec, seed: u64) -> RunConfig {
        RunConfig {
            algorithm: (self.settings)(episode.ways),
            seed,
            data: DataConfig {
                dataset: "omniglot".into(),
                data_dir: crate::data::paths::data_dir(None),
                splits: SplitScheme::Vinyals,
                train_split: Split::Train,
            },
            train_episode: episode,
            val_episode: episode,
            schedule: ScheduleConfig {
                episodes: 1000,
                val_every: 0,
                val_episodes: 100,
                checkpoint_every: 100,
                log_every: 50,
                meta_batch: 1,
            },
            sinusoid: None,
            augment: None,
        }
    }

    /// The learner `config` describes (freshly initialised from its seed).
    pub fn build(&self, config: &RunConfig, device: Device) -> Result<Box<dyn MetaLearner>> {
        if config.algorithm.name() != self.name {
            return Err(Error::config(
                "algorithm",
                config.algorithm.name(),
                format!("this is the builder of {}", self.name),
            ));
        }
        (self.build)(config, device)
    }
}

/// A configuration without the section its builder reads (never, as the registry
/// builds by name).
fn missing(config: &RunConfig, section: &str) -> Error {
    Error::config(
        "algorithm",
        config.algorithm.name(),
        format!("the config has no [{section}] section"),
    )
}

fn maml_settings(variant: MamlVariant, ways: usize) -> AlgorithmConfig {
    let mut m = MamlConfig {
        variant,
        ..MamlConfig::default()
    };
    m.net.outputs = ways;
    AlgorithmConfig::maml_family(m)
}

fn build_maml(config: &RunConfig, device: Device) -> Result<Box<dyn MetaLearner>> {
    let m = config
        .algorithm
        .maml()
        .cloned()
        .ok_or_else(|| missing(config, "maml"))?;
    let variant: MamlVariant = config.algorithm.name().parse()?;
    if m.variant != variant {
        return Err(Error::config(
            "maml.variant",
            m.variant.name(),
            format!("does not match algorithm {}", config.algorithm.name()),
        ));
    }
    Ok(Box::new(Maml::new(m, config.seed, device)?))
}

/// Every registered algorithm.
pub fn all() -> &'static [Algorithm] {
    &ALGORITHMS
}

static ALGORITHMS: [Algorithm; 13] = [
    Algorithm {
        name: "protonet",
        family: Family::Metric,
        summary:
            "Prototypical Networks (Snell et al. 2017): nearest class mean in a learned embedding",
        settings: |_| AlgorithmConfig::Protonet {
            protonet: ProtoNetConfig::default(),
        },
        build: |c, device| {
            let p = c.algorithm.protonet().cloned();
            let p = p.ok_or_else(|| missing(c, "protonet"))?;
            Ok(Box::new(ProtoNet::new(p, c.seed, device)?))
        },
    },
    Algorithm {
        name: "maml",
        family: Family::Optimization,
        summary: "MAML (Finn et al. 2017) with exact second-order meta-gradients",
        settings: |w| maml_settings(MamlVariant::Maml, w),
        build: build_maml,
    },
    Algorithm {
        name: "fomaml",
        family: Family::Optimization,
        summary: "first-order MAML",
        settings: |w| maml_settings(MamlVariant::Fomaml, w),
        build: build_maml,
    },
    Algorithm {
        name: "anil",
        family: Family::Optimization,
        summary: "ANIL (Raghu et al. 2020): MAML adapting the head alone",
        settings: |w| maml_settings(MamlVariant::Anil, w),
        build: build_maml,
    },
    Algorithm {
        name: "metasgd",
        family: Family::Optimization,
        summary: "Meta-SGD (Li et al. 2017): MAML with a learned rate per parameter",
        settings: |w| maml_settings(MamlVariant::Metasgd, w),
        build: build_maml,
    },
    Algorithm {
        name: "reptile",
        family: Family::Optimization,
        summary: "Reptile (Nichol et al. 2018): move towards the task-fine-tuned weights",
        settings: |ways| {
            let mut reptile = ReptileConfig::default();
            reptile.net.outputs = ways;
            AlgorithmConfig::Reptile { reptile }
        },
        build: |c, device| {
            let r = c.algorithm.reptile().cloned();
            let r = r.ok_or_else(|| missing(c, "reptile"))?;
            Ok(Box::new(Reptile::new(r, c.seed, device)?))
        },
    },
    Algorithm {
        name: "oml",
        family: Family::Lifelong,
        summary: "OML (Javed & White 2019): a representation meta-trained for an online head",
        settings: |_| AlgorithmConfig::Oml {
            oml: OmlConfig::default(),
        },
        build: |c, device| {
            let o = c.algorithm.oml().cloned();
            let o = o.ok_or_else(|| missing(c, "oml"))?;
            Ok(Box::new(Oml::new(o, c.seed, device)?))
        },
    },
    Algorithm {
        name: "relation",
        family: Family::Metric,
        summary: "Relation Networks (Sung et al. 2018): a learned metric scoring (query, class) feature maps",
        settings: |_| AlgorithmConfig::Relation {
            relation: RelationConfig::default(),
        },
        build: |c, device| {
            let r = c.algorithm.relation().cloned();
            let r = r.ok_or_else(|| missing(c, "relation"))?;
            Ok(Box::new(Relation::new(r, c.seed, device)?))
        },
    },
    Algorithm {
        name: "matching",
        family: Family::Metric,
        summary: "Matching Networks (Vinyals et al. 2016): cosine attention over the support set, optional full-context embeddings",
        settings: |_| AlgorithmConfig::Matching {
            matching: MatchingConfig::default(),
        },
        build: |c, device| {
            let m = c.algorithm.matching().cloned();
            let m = m.ok_or_else(|| missing(c, "matching"))?;
            Ok(Box::new(Matching::new(m, c.seed, device)?))
        },
    },
    Algorithm {
        name: "triplet",
        family: Family::Metric,
        summary: "an embedding trained with the triplet loss (all, batch-hard or semi-hard mining); nearest class mean",
        settings: |_| AlgorithmConfig::Triplet {
            triplet: PairEmbeddingConfig::default(),
        },
        build: build_pairs,
    },
    Algorithm {
        name: "contrastive",
        family: Family::Metric,
        summary: "an embedding trained with the contrastive (Hadsell et al. 2006) or supervised-contrastive (Khosla et al. 2020) loss; nearest class mean",
        settings: |_| AlgorithmConfig::Contrastive {
            contrastive: PairEmbeddingConfig::contrastive(),
        },
        build: build_pairs,
    },
    Algorithm {
        name: "mann",
        family: Family::Memory,
        summary: "memory-augmented networks (Santoro et al. 2016): an LSTM controller with a memory written by least-recently-used access, reading a task as a labelled sequence",
        settings: |ways| AlgorithmConfig::Mann {
            mann: MannConfig {
                classes: ways,
                ..MannConfig::default()
            },
        },
        build: |c, device| {
            let m = c.algorithm.mann().cloned();
            let m = m.ok_or_else(|| missing(c, "mann"))?;
            Ok(Box::new(Mann::new(m, c.seed, device)?))
        },
    },
    Algorithm {
        name: "kv-memory",
        family: Family::Memory,
        summary: "a learned key-value memory (Kaiser et al. 2017): keys, labels and ages read by nearest neighbour, a margin loss on the embedding, a new class learnt by writing",
        settings: |_| AlgorithmConfig::KvMemory {
            kv_memory: KvMemoryConfig::default(),
        },
        build: |c, device| {
            let k = c.algorithm.kv_memory().cloned();
            let k = k.ok_or_else(|| missing(c, "kv_memory"))?;
            Ok(Box::new(KvMemory::new(k, c.seed, device)?))
        },
    },
];

fn build_pairs(config: &RunConfig, device: Device) -> Result<Box<dyn MetaLearner>> {
    let p = config
        .algorithm
        .pair_embedding()
        .cloned()
        .ok_or_else(|| missing(config, config.algorithm.name()))?;
    if p.loss.algorithm() != config.algorithm.name() {
        return Err(Error::config(
            "loss",
            p.loss.algorithm(),
            format!("does not match algorithm {}", config.algorithm.name()),
        ));
    }
    Ok(Box::new(PairEmbedding::new(p, config.seed, device)?))
}

/// The registered algorithm `name`.
pub fn find(name: &str) -> Result<&'static Algorithm> {
    all()
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| Error::config("algorithm", name, format!("known: {}", names().join(", "))))
}

/// The registered names, in order.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|a| a.name).collect()
}

/// The learner of a run configuration: [`find`] its algorithm, then build.
pub fn build(config: &RunConfig, device: Device) -> Result<Box<dyn MetaLearner>> {
    find(config.algorithm.name())?.build(config, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_builds_from_its_default_config_under_its_name() {
        let mut seen = std::collections::HashSet::new();
        for a in all() {
            assert!(seen.insert(a.name), "{} twice", a.name);
            let c = a.config(EpisodeSpec::new(5, 1, 2), 3);
            let learner = a.build(&c, Device::Cpu).unwrap();
            assert_eq!(learner.name(), a.name);
            assert_eq!(find(a.name).unwrap().name, a.name);
            assert_eq!(c.fixed_ways().unwrap_or(5), 5);
            assert_eq!(c.algorithm.name(), a.name);
            // config.toml round trip, in the shape it has always had.
            let text = toml::to_string(&c).unwrap();
            assert!(
                text.contains(&format!("algorithm = \"{}\"", a.name)),
                "{text}"
            );
            let back: RunConfig = toml::from_str(&text).unwrap();
            assert_eq!(back, c);
            // ... and with augmented training images (a table beside the flattened
            // algorithm's; ranks and resumption read it back from this text).
            let mut jittered = c.clone();
            jittered.augment = Some(perennial_data::Jitter {
                max_degrees: 30.0,
                max_shift: 2.67,
            });
            let text = toml::to_string_pretty(&jittered).unwrap();
            assert!(text.contains("[augment]"), "{text}");
            let back: RunConfig = toml::from_str(&text).unwrap();
            assert_eq!(back, jittered);
        }
        let err = find("nope").unwrap_err().to_string();
        assert!(err.contains("protonet") && err.contains("oml"), "{err}");
        let c = find("maml").unwrap().config(EpisodeSpec::new(5, 1, 2), 0);
        assert!(find("protonet").unwrap().build(&c, Device::Cpu).is_err());
    }
}
