//! The continual learners by name: one entry each, with what it is, what it runs on and
//! how it is built. The command line's `continual --strategy NAME` and the docs read it;
//! adding a strategy is its file plus one entry here.

use super::lamaml::{LaMaml, LaMamlConfig};
use super::strategies::{Agem, Ewc, Mer, MerConfig};
use super::strategy::{Joint, Naive, Replay, Strategy};
use crate::error::{Error, Result};

/// Every setting a strategy may take; each entry reads only its own.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategySettings {
    /// The seed of its draws (buffers, orders).
    pub seed: u64,
    /// Training batch size (EWC's Fisher batches).
    pub batch: usize,
    /// Replay buffer size in examples (er).
    pub buffer: usize,
    /// EWC's penalty strength λ.
    pub ewc_lambda: f64,
    /// Examples of each task kept in A-GEM's episodic memory.
    pub memory_per_task: usize,
    /// Memory examples drawn for each A-GEM reference gradient.
    pub agem_sample: usize,
    /// MER's settings.
    pub mer: MerConfig,
    /// La-MAML's settings.
    pub lamaml: LaMamlConfig,
}

/// What a learner is made of.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A strategy that trains a classifier ([`super::ModelLearner`]): on a stream's
    /// inputs, or on a frozen encoder's features (the class stream).
    Classifier {
        /// The strategy.
        build: fn(&StrategySettings) -> Result<Box<dyn Strategy>>,
        /// The settings it reads, for the run's record.
        settings: fn(&StrategySettings) -> serde_json::Value,
    },
    /// Perennial's [`super::LifelongLearner`] (prototypes, unknown flag,
    /// consolidation), on a meta-learned encoder.
    Lifelong,
    /// OML's meta-test learner: naive SGD of a zero-initialised head on an OML
    /// representation.
    Oml,
    /// A key-value memory of examples ([`super::KvMemoryLearner`]) on a kv-memory
    /// run's keys.
    KvMemory,
}

/// One registered continual learner.
#[derive(Debug)]
pub struct Entry {
    /// Its name, as `continual --strategy` spells it.
    pub name: &'static str,
    /// One line on what it is.
    pub summary: &'static str,
    /// What it is made of.
    pub kind: Kind,
}

impl Entry {
    /// Whether it needs a meta-learned encoder (and so runs on the class stream only).
    pub fn needs_encoder(&self) -> bool {
        !matches!(self.kind, Kind::Classifier { .. })
    }
}

fn none(_: &StrategySettings) -> serde_json::Value {
    serde_json::json!({})
}

/// Every registered learner.
pub fn all() -> &'static [Entry] {
    &ENTRIES
}

static ENTRIES: [Entry; 10] = [
    Entry {
        name: "naive",
        summary: "fine-tuning by SGD on the current batch only (the lower bound)",
        kind: Kind::Classifier {
            build: |_| Ok(Box::new(Naive)),
            settings: none,
        },
    },
    Entry {
        name: "joint",
        summary: "the same examples in one i.i.d. order over the whole stream (the upper bound)",
        kind: Kind::Classifier {
            build: |s| Ok(Box::new(Joint::new(s.seed))),
            settings: none,
        },
    },
    Entry {
        name: "er",
        summary: "experience replay from a reservoir buffer (Chaudhry et al. 2019)",
        kind: Kind::Classifier {
            build: |s| Ok(Box::new(Replay::new(s.buffer, s.seed)?)),
            settings: |s| serde_json::json!({ "buffer": s.buffer }),
        },
    },
    Entry {
        name: "ewc",
        summary: "elastic weight consolidation, one penalty per task (Kirkpatrick et al. 2017)",
        kind: Kind::Classifier {
            build: |s| Ok(Box::new(Ewc::new(s.ewc_lambda, s.batch)?)),
            settings: |s| serde_json::json!({ "ewc_lambda": s.ewc_lambda }),
        },
    },
    Entry {
        name: "agem",
        summary: "averaged gradient episodic memory (Chaudhry et al. 2019)",
        kind: Kind::Classifier {
            build: |s| {
                Ok(Box::new(Agem::new(
                    s.memory_per_task,
                    s.agem_sample,
                    s.seed,
                )?))
            },
            settings: |s| {
                serde_json::json!({
                    "memory_per_task": s.memory_per_task, "agem_sample": s.agem_sample,
                })
            },
        },
    },
    Entry {
        name: "mer",
        summary: "meta-experience replay (Riemer et al. 2019)",
        kind: Kind::Classifier {
            build: |s| Ok(Box::new(Mer::new(s.mer, s.seed)?)),
            settings: |s| serde_json::json!({ "buffer": s.buffer, "mer": s.mer }),
        },
    },
    Entry {
        name: "lamaml",
        summary: "La-MAML's look-ahead update with learned rates (Gupta et al. 2020)",
        kind: Kind::Classifier {
            build: |s| Ok(Box::new(LaMaml::new(s.lamaml, s.seed)?)),
            settings: |s| serde_json::json!({ "buffer": s.buffer, "lamaml": s.lamaml }),
        },
    },
    Entry {
        name: "perennial",
        summary: "Perennial's lifelong learner: prototypes, unknown flag, meta-consolidation",
        kind: Kind::Lifelong,
    },
    Entry {
        name: "oml",
        summary: "OML's online head on its meta-learned representation (Javed & White 2019)",
        kind: Kind::Oml,
    },
    Entry {
        name: "kv-memory",
        summary: "Kaiser et al.'s key-value memory on its meta-learned keys: every example written by the update rule, the nearest key's label predicted",
        kind: Kind::KvMemory,
    },
];

/// The names, in order.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|e| e.name).collect()
}

/// The learner `name`.
pub fn find(name: &str) -> Result<&'static Entry> {
    all().iter().find(|e| e.name == name).ok_or_else(|| {
        Error::config(
            "--strategy",
            name,
            format!("known strategies: {}", names().join(", ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_classifier_strategy_builds_under_its_name() {
        let s = StrategySettings {
            seed: 1,
            batch: 10,
            buffer: 20,
            ewc_lambda: 1.0,
            memory_per_task: 5,
            agem_sample: 5,
            mer: MerConfig {
                capacity: 20,
                replay: 10,
                batches: 5,
                beta: 0.1,
                gamma: 1.0,
            },
            lamaml: LaMamlConfig::default(),
        };
        for e in all() {
            assert_eq!(find(e.name).unwrap().name, e.name);
            if let Kind::Classifier { build, settings } = e.kind {
                assert_eq!(build(&s).unwrap().name(), e.name);
                assert!(settings(&s).is_object());
                assert!(!e.needs_encoder());
            } else {
                assert!(e.needs_encoder());
            }
        }
        assert!(find("sgd").unwrap_err().to_string().contains("perennial"));
    }
}
