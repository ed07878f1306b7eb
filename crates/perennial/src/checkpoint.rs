//! Run directories: the resolved config, checkpoints, metrics, and the state needed to
//! resume a killed run on the same episode sequence.
//!
//! ```text
//! RUN_DIR/config.toml              resolved configuration (written once)
//! RUN_DIR/state.json               next episode, best validation accuracy
//! RUN_DIR/checkpoint.safetensors   everything to resume (parameters, buffers, Adam)
//! RUN_DIR/best.safetensors         the model with the best validation accuracy
//! RUN_DIR/metrics.jsonl            one JSON object per log or validation event
//! ```
//!
//! The sampler is a pure function of `(seed, index)`, so "RNG and sampler state" is the
//! next episode index. Every file is replaced atomically (write, then rename), and a
//! checkpoint is written before the state that points past it, so a SIGKILL at any
//! moment leaves a consistent run.

use std::io::Write;
use std::path::{Path, PathBuf};

use perennial_data::omniglot::{Split, SplitScheme};
use perennial_data::{EpisodeSpec, Jitter};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::lifelong::oml::OmlConfig;
use crate::meta::memory::{KvMemoryConfig, MannConfig};
use crate::meta::metric::{MatchingConfig, PairEmbeddingConfig, ProtoNetConfig, RelationConfig};
use crate::meta::optimization::maml::MamlConfig;
use crate::meta::optimization::reptile::ReptileConfig;
use crate::nn::params::{load_named, save_named};
use crate::nn::BackboneConfig;
use perennial_data::sinusoid::SinusoidSpec;

/// Where training data comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataConfig {
    /// The data set (`omniglot`).
    pub dataset: String,
    /// The data directory used.
    pub data_dir: PathBuf,
    /// The split scheme.
    pub splits: SplitScheme,
    /// The classes trained on: `train`, or `trainval` (train and validation classes,
    /// with no validation).
    #[serde(default = "default_train_split")]
    pub train_split: Split,
}

fn default_train_split() -> Split {
    Split::Train
}

/// The training schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleConfig {
    /// Outer updates in all (training episodes when `meta_batch` is 1); the other
    /// intervals below count updates too.
    pub episodes: u64,
    /// Validate every this many episodes (0 = never).
    pub val_every: u64,
    /// Validation episodes per validation.
    pub val_episodes: u64,
    /// Write a resumable checkpoint every this many episodes.
    pub checkpoint_every: u64,
    /// Append a training-metrics line every this many episodes.
    pub log_every: u64,
    /// Tasks per outer update (the meta-batch; ProtoNet uses 1).
    #[serde(default = "one")]
    pub meta_batch: u64,
}

fn one() -> u64 {
    1
}

impl ScheduleConfig {
    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        if self.episodes == 0 {
            return Err(Error::config("--episodes", 0, "must be at least 1"));
        }
        if self.checkpoint_every == 0 {
            return Err(Error::config("--checkpoint-every", 0, "must be at least 1"));
        }
        if self.meta_batch == 0 {
            return Err(Error::config("--meta-batch", 0, "must be at least 1"));
        }
        if self.log_every == 0 {
            return Err(Error::config("--log-every", 0, "must be at least 1"));
        }
        if self.val_every > 0 && self.val_episodes == 0 {
            return Err(Error::config(
                "--val-episodes",
                0,
                "must be at least 1 when validating",
            ));
        }
        Ok(())
    }
}

/// A run's algorithm with its settings: one variant per algorithm of the registry
/// ([`crate::meta::registry`]), so that a configuration holds its own algorithm's
/// section and no other. In `config.toml` it reads as it always has:
/// `algorithm = "maml"` beside a `[maml]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum AlgorithmConfig {
    /// Prototypical Networks.
    Protonet {
        /// Its settings.
        protonet: ProtoNetConfig,
    },
    /// MAML with second-order meta-gradients.
    Maml {
        /// Its settings.
        maml: MamlConfig,
    },
    /// First-order MAML.
    Fomaml {
        /// Its settings.
        maml: MamlConfig,
    },
    /// ANIL.
    Anil {
        /// Its settings.
        maml: MamlConfig,
    },
    /// Meta-SGD.
    Metasgd {
        /// Its settings.
        maml: MamlConfig,
    },
    /// Reptile.
    Reptile {
        /// Its settings.
        reptile: ReptileConfig,
    },
    /// OML.
    Oml {
        /// Its settings.
        oml: OmlConfig,
    },
    /// Relation Networks.
    Relation {
        /// Its settings.
        relation: RelationConfig,
    },
    /// Matching Networks.
    Matching {
        /// Its settings.
        matching: MatchingConfig,
    },
    /// An embedding trained with the triplet loss.
    Triplet {
        /// Its settings.
        triplet: PairEmbeddingConfig,
    },
    /// An embedding trained with a contrastive loss (pairs, or supervised-contrastive).
    Contrastive {
        /// Its settings.
        contrastive: PairEmbeddingConfig,
    },
    /// A memory-augmented network (or its LSTM baseline).
    Mann {
        /// Its settings.
        mann: MannConfig,
    },
    /// A learned key-value memory.
    #[serde(rename = "kv-memory")]
    KvMemory {
        /// Its settings.
        kv_memory: KvMemoryConfig,
    },
}

impl AlgorithmConfig {
    /// The algorithm's name, as the registry and `perennial train` spell it.
    pub fn name(&self) -> &'static str {
        match self {
            AlgorithmConfig::Protonet { .. } => "protonet",
            AlgorithmConfig::Maml { .. } => "maml",
            AlgorithmConfig::Fomaml { .. } => "fomaml",
            AlgorithmConfig::Anil { .. } => "anil",
            AlgorithmConfig::Metasgd { .. } => "metasgd",
            AlgorithmConfig::Reptile { .. } => "reptile",
            AlgorithmConfig::Oml { .. } => "oml",
            AlgorithmConfig::Relation { .. } => "relation",
            AlgorithmConfig::Matching { .. } => "matching",
            AlgorithmConfig::Triplet { .. } => "triplet",
            AlgorithmConfig::Contrastive { .. } => "contrastive",
            AlgorithmConfig::Mann { .. } => "mann",
            AlgorithmConfig::KvMemory { .. } => "kv-memory",
        }
    }

    /// The MAML family's settings for `variant`.
    pub fn maml_family(maml: MamlConfig) -> Self {
        use crate::meta::optimization::maml::MamlVariant;
        match maml.variant {
            MamlVariant::Maml => AlgorithmConfig::Maml { maml },
            MamlVariant::Fomaml => AlgorithmConfig::Fomaml { maml },
            MamlVariant::Anil => AlgorithmConfig::Anil { maml },
            MamlVariant::Metasgd => AlgorithmConfig::Metasgd { maml },
        }
    }

    /// ProtoNet's settings, for a ProtoNet run.
    pub fn protonet(&self) -> Option<&ProtoNetConfig> {
        match self {
            AlgorithmConfig::Protonet { protonet } => Some(protonet),
            _ => None,
        }
    }

    /// The MAML family's settings, for a run of one of them.
    pub fn maml(&self) -> Option<&MamlConfig> {
        match self {
            AlgorithmConfig::Maml { maml }
            | AlgorithmConfig::Fomaml { maml }
            | AlgorithmConfig::Anil { maml }
            | AlgorithmConfig::Metasgd { maml } => Some(maml),
            _ => None,
        }
    }

    /// [`AlgorithmConfig::maml`], to change.
    pub fn maml_mut(&mut self) -> Option<&mut MamlConfig> {
        match self {
            AlgorithmConfig::Maml { maml }
            | AlgorithmConfig::Fomaml { maml }
            | AlgorithmConfig::Anil { maml }
            | AlgorithmConfig::Metasgd { maml } => Some(maml),
            _ => None,
        }
    }

    /// Reptile's settings, for a Reptile run.
    pub fn reptile(&self) -> Option<&ReptileConfig> {
        match self {
            AlgorithmConfig::Reptile { reptile } => Some(reptile),
            _ => None,
        }
    }

    /// [`AlgorithmConfig::reptile`], to change.
    pub fn reptile_mut(&mut self) -> Option<&mut ReptileConfig> {
        match self {
            AlgorithmConfig::Reptile { reptile } => Some(reptile),
            _ => None,
        }
    }

    /// OML's settings, for an OML run.
    pub fn oml(&self) -> Option<&OmlConfig> {
        match self {
            AlgorithmConfig::Oml { oml } => Some(oml),
            _ => None,
        }
    }

    /// The Relation Network's settings, for a Relation run.
    pub fn relation(&self) -> Option<&RelationConfig> {
        match self {
            AlgorithmConfig::Relation { relation } => Some(relation),
            _ => None,
        }
    }

    /// Matching Networks' settings, for a Matching run.
    pub fn matching(&self) -> Option<&MatchingConfig> {
        match self {
            AlgorithmConfig::Matching { matching } => Some(matching),
            _ => None,
        }
    }

    /// The memory-augmented network's settings, for a MANN run.
    pub fn mann(&self) -> Option<&MannConfig> {
        match self {
            AlgorithmConfig::Mann { mann } => Some(mann),
            _ => None,
        }
    }

    /// The key-value memory's settings, for a kv-memory run.
    pub fn kv_memory(&self) -> Option<&KvMemoryConfig> {
        match self {
            AlgorithmConfig::KvMemory { kv_memory } => Some(kv_memory),
            _ => None,
        }
    }

    /// The settings of a triplet or contrastive run.
    pub fn pair_embedding(&self) -> Option<&PairEmbeddingConfig> {
        match self {
            AlgorithmConfig::Triplet { triplet: p }
            | AlgorithmConfig::Contrastive { contrastive: p } => Some(p),
            _ => None,
        }
    }
}

impl std::fmt::Display for AlgorithmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that defines a training run; written to `config.toml`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    /// The algorithm and its settings.
    #[serde(flatten)]
    pub algorithm: AlgorithmConfig,
    /// The seed of initialisation and episode sampling.
    pub seed: u64,
    /// The data.
    pub data: DataConfig,
    /// Training episodes' shape.
    pub train_episode: EpisodeSpec,
    /// Validation episodes' shape.
    pub val_episode: EpisodeSpec,
    /// The schedule.
    pub schedule: ScheduleConfig,
    /// The sinusoid task family (runs with `dataset = "sinusoid"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinusoid: Option<SinusoidSpec>,
    /// Random rotations and shifts of the training episodes' images (`--augment-rotate`,
    /// `--augment-shift`); validation and test episodes are never jittered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Jitter>,
}

impl RunConfig {
    /// The backbone of the run's learner.
    pub fn backbone(&self) -> Option<&BackboneConfig> {
        let a = &self.algorithm;
        a.protonet()
            .map(|p| &p.backbone)
            .or_else(|| a.maml().map(|m| &m.net.backbone))
            .or_else(|| a.oml().map(|o| &o.backbone))
            .or_else(|| a.reptile().map(|r| &r.net.backbone))
            .or_else(|| a.matching().map(|m| &m.backbone))
            .or_else(|| a.kv_memory().map(|k| &k.backbone))
            .or_else(|| a.pair_embedding().map(|p| &p.backbone))
    }

    /// The ways a learner with a fixed-size head was trained for (MAML family,
    /// Reptile); `None` for metric learners, which take any number of ways.
    pub fn fixed_ways(&self) -> Option<usize> {
        if self.sinusoid.is_some() {
            return None;
        }
        let a = &self.algorithm;
        a.maml()
            .map(|m| m.net.outputs)
            .or_else(|| a.reptile().map(|r| r.net.outputs))
            .or_else(|| a.mann().map(|m| m.classes))
    }

    /// The side of the square images the learner takes, if it takes images.
    pub fn image_size(&self) -> Option<usize> {
        if let Some(r) = self.algorithm.relation() {
            return Some(r.image_size);
        }
        if let Some(m) = self.algorithm.mann() {
            return Some(m.input_size);
        }
        match self.backbone()? {
            BackboneConfig::Conv4 { image_size, .. } => Some(*image_size),
            BackboneConfig::Mlp { .. } => None,
        }
    }
}

/// Progress of a run, in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// The index of the next training episode (= episodes done).
    pub next_episode: u64,
    /// The best validation accuracy so far.
    pub best_val_accuracy: Option<f64>,
    /// The episode count at which it was reached.
    pub best_episode: Option<u64>,
    /// Whether the schedule has finished.
    pub finished: bool,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates a new run directory (it must not hold a run already) and writes `config`.
    pub fn create(root: &Path, config: &RunConfig) -> Result<Self> {
        if root.join("config.toml").exists() {
            return Err(Error::run(
                root,
                "already holds a run; pass --resume to continue it, or choose another --out",
            ));
        }
        std::fs::create_dir_all(root)
            .map_err(|e| Error::run(root, format!("cannot create: {e}")))?;
        let dir = RunDir {
            root: root.to_path_buf(),
        };
        let text = toml::to_string_pretty(config).map_err(|e| Error::run(root, e.to_string()))?;
        dir.write_atomic("config.toml", text.as_bytes())?;
        dir.save_state(&RunState::default())?;
        Ok(dir)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens an existing run directory.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::run(root, "run directory not found"));
        }
        if !root.join("config.toml").is_file() {
            return Err(Error::run(root, "not a run directory (no config.toml)"));
        }
        Ok(RunDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Reads `config.toml`.
    pub fn config(&self) -> Result<RunConfig> {
        let p = self.root.join("config.toml");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::run(&p, e.to_string()))?;
        toml::from_str(&text)
            .map_err(|e| Error::run(&p, format!("corrupt config: {}", e.message())))
    }

    /// Reads `state.json`.
    pub fn state(&self) -> Result<RunState> {
        let p = self.root.join("state.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::run(&p, e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| Error::run(&p, format!("corrupt state: {e}")))
    }

    /// Writes `state.json` atomically.
    pub fn save_state(&self, state: &RunState) -> Result<()> {
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        self.write_atomic("state.json", text.as_bytes())
    }

    /// The resumable checkpoint's path.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.root.join("checkpoint.safetensors")
    }

    /// The best model's path.
    pub fn best_path(&self) -> PathBuf {
        self.root.join("best.safetensors")
    }

    /// Writes named tensors to `checkpoint.safetensors`.
    pub fn save_checkpoint(&self, named: &[(String, Tensor)]) -> Result<()> {
        save_named(named, &self.checkpoint_path())
    }

    /// Writes named tensors to `best.safetensors`.
    pub fn save_best(&self, named: &[(String, Tensor)]) -> Result<()> {
        save_named(named, &self.best_path())
    }

    /// Reads `checkpoint.safetensors`.
    pub fn load_checkpoint(&self) -> Result<Vec<(String, Tensor)>> {
        load_named(&self.checkpoint_path())
    }

    /// Reads the model to evaluate: `best.safetensors`, else the last checkpoint.
    pub fn load_best(&self) -> Result<Vec<(String, Tensor)>> {
        if self.best_path().is_file() {
            load_named(&self.best_path())
        } else if self.checkpoint_path().is_file() {
            load_named(&self.checkpoint_path())
        } else {
            Err(Error::run(
                &self.root,
                "holds no trained model yet (no best.safetensors or checkpoint.safetensors)",
            ))
        }
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn append_metric(&self, value: &serde_json::Value) -> Result<()> {
        let p = self.root.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| Error::run(&p, e.to_string()))?;
        writeln!(f, "{value}").map_err(|e| Error::run(&p, e.to_string()))
    }

    /// Drops metric lines past `episode` (written after the last checkpoint by a run
    /// that was then killed), so a resumed run does not log them twice.
    pub fn truncate_metrics(&self, episode: u64) -> Result<()> {
        let p = self.root.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&p) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("episode").and_then(|e| e.as_u64()))
                    .is_some_and(|e| e <= episode)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        self.write_atomic("metrics.jsonl", kept.as_bytes())
    }

    /// The metric lines written so far.
    pub fn metrics(&self) -> Result<Vec<serde_json::Value>> {
        let p = self.root.join("metrics.jsonl");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l).map_err(|e| Error::run(&p, format!("corrupt line: {e}")))
            })
            .collect()
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| Error::run(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::run(&p, e.to_string()))
    }
}
