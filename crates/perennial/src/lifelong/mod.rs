//! Lifelong learning: Perennial's learner, the streams it and its baselines are
//! measured on, and the measures.
//!
//! The learner:
//! * [`learner`]: [`LifelongLearner`], a meta-learned encoder with one prototype per
//!   class, an unknown flag and scheduled meta-consolidation; learn, predict,
//!   consolidate, save and load.
//! * [`encoder`]: the [`Encoder`] trait every meta-learned representation implements
//!   (ProtoNet, OML), and shift averaging.
//! * [`prototypes`]: the prototype memory and its unknown threshold.
//! * [`policy`]: when the learner consolidates.
//! * [`consolidate`]: meta-consolidation of the encoder on replayed classes.
//!
//! The streams and their strategies:
//! * [`class_stream`]: class-incremental learning one class at a time (the Omniglot
//!   protocol of OML and ANML), for every [`class_stream::ClassLearner`].
//! * [`heads`]: the online softmax heads of that stream (naive, OML, La-MAML).
//! * [`oml`]: OML's representation, meta-trained for an online head.
//! * [`strategy`]: the classifier a strategy trains on an MNIST stream, the
//!   [`Strategy`] interface with naive fine-tuning, joint training and experience
//!   replay, and [`run_stream`], which fills the accuracy matrix.
//! * [`strategies`]: EWC, A-GEM and MER; [`lamaml`]: La-MAML's look-ahead update.
//! * [`metrics`]: average accuracy, backward and forward transfer (GEM's definitions),
//!   forgetting and learning speed, from one accuracy matrix.
//! * [`reservoir`]: a reservoir-sampling buffer, the memory of experience replay.
//! * [`checkpoint`]: checkpoints between tasks, so a killed run resumes.

pub mod checkpoint;
pub mod class_stream;
pub mod consolidate;
pub mod encoder;
pub mod heads;
pub mod lamaml;
pub mod learner;
pub mod metrics;
pub mod oml;
pub mod policy;
pub mod prototypes;
pub mod reservoir;
pub mod strategies;
pub mod strategy;

pub use checkpoint::Checkpoints;
pub use consolidate::ConsolidationConfig;
pub use encoder::{Encoder, EncoderSpec, Encoding};
pub use lamaml::{LaMaml, LaMamlConfig, LookAhead};
pub use learner::{
    ClassInfo, ConsolidationRecord, LearnerConfig, Learnt, LifelongLearner, Prediction, Ranked,
};
pub use metrics::{AccuracyMatrix, Metrics};
pub use policy::{ConsolidationPolicy, Due, RateTrigger};
pub use prototypes::PrototypeMemory;
pub use reservoir::Reservoir;
pub use strategies::{Agem, Ewc, Mer, MerConfig};
pub use strategy::{
    run_stream, Classifier, Joint, Naive, Replay, RunRecord, RunSettings, SpeedPoint, Strategy,
    StrategyState, SPEED_POINTS,
};
