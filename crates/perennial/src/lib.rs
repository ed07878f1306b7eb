//! Perennial: lifelong learning built on meta-learning, on libtorch (via `tch`).
//!
//! * [`nn`]: functional backbones (Conv4, MLP) whose `forward` takes an explicit
//!   parameter set, so optimisation-based meta-learners can run the same network on
//!   adapted parameters without copying modules; distances.
//! * [`meta`]: the [`meta::MetaLearner`] / [`meta::Adapted`] vocabulary shared by every
//!   algorithm, and the three families: metric ([`meta::metric`]: Prototypical,
//!   Matching and Relation Networks, Siamese/triplet and contrastive embeddings),
//!   optimisation ([`meta::optimization::maml::Maml`]: MAML, first-order MAML, ANIL,
//!   Meta-SGD; [`meta::optimization::reptile::Reptile`]) and memory ([`meta::memory`]:
//!   the memory-augmented network and the learned key-value memory).
//! * [`lifelong`]: the continual loop over task streams, its learners and strategies,
//!   consolidation, and the lifelong metrics (ACC, BWT, FWT, forgetting).
//! * [`optim`]: Adam with a step schedule whose state is checkpointable, and the
//!   meta-gradient hand-off ([`optim::GradReduce`]) data-parallel training plugs into.
//! * [`dist`]: data-parallel meta-training over a group of processes (c10d's Gloo,
//!   through `perennial-dist`).
//! * [`plot`]: dependency-free SVG line plots for reports.
//! * [`eval`]: few-shot evaluation (mean accuracy and 95% confidence interval).
//! * [`checkpoint`]: run directories, safetensors checkpoints, resume.
//! * [`train`]: the episodic training loop with validation and best-checkpoint keeping,
//!   in one process or as one rank of a data-parallel run.

pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod eval;
pub mod lifelong;
pub mod meta;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod tensors;
pub mod train;

pub use error::{Error, Result};
pub use perennial_data as data;
