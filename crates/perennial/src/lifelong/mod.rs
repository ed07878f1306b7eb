//! Lifelong (continual) learning: the measures of a run over a task stream and the
//! building blocks its strategies share.
//!
//! * [`metrics`]: average accuracy, backward and forward transfer (GEM's definitions),
//!   forgetting and learning speed, from one accuracy matrix.
//! * [`reservoir`]: a reservoir-sampling buffer, the memory of experience replay.
//! * [`learner`]: the classifier a strategy trains, the [`Strategy`] interface with
//!   naive fine-tuning, joint training and experience replay, and [`run_stream`], which runs a strategy
//!   over a stream and fills the accuracy matrix.
//! * [`strategies`]: EWC, A-GEM and MER.
//! * [`consolidate`]: meta-consolidation of the learner's encoder on replayed classes.
//! * [`lamaml`]: La-MAML's look-ahead meta-update with learned learning rates.
//! * [`checkpoint`]: checkpoints between tasks, so a killed run resumes.
//! * [`classinc`]: class-incremental learning one class at a time (the Omniglot protocol
//!   of OML and ANML), Perennial's prototype-memory learner with its unknown flag.

pub mod checkpoint;
pub mod classinc;
pub mod consolidate;
pub mod lamaml;
pub mod learner;
pub mod metrics;
pub mod oml;
pub mod reservoir;
pub mod strategies;

pub use checkpoint::Checkpoints;
pub use lamaml::{LaMaml, LaMamlConfig, LookAhead};
pub use learner::{
    run_stream, Classifier, Joint, Naive, Replay, RunRecord, RunSettings, SpeedPoint, Strategy,
    StrategyState, SPEED_POINTS,
};
pub use metrics::{AccuracyMatrix, Metrics};
pub use reservoir::Reservoir;
pub use strategies::{Agem, Ewc, Mer, MerConfig};
