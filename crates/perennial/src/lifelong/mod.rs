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
//! * [`examples`]: the example-level memory (k-nearest-neighbour classification,
//!   consolidation's neighbour classes), in tensors or in a persistent indexed store.
//! * [`policy`]: when the learner consolidates.
//! * [`consolidate`]: meta-consolidation of the encoder on replayed classes.
//!
//! The one continual loop and its strategies:
//! * [`mod@run`]: the [`TaskStream`] every stream is (the MNIST streams and the Omniglot
//!   class stream), the [`Learner`] vocabulary every learner speaks, the loop
//!   [`run::run`] and its [`RunRecord`].
//! * [`strategy`]: strategies that train a classifier (naive fine-tuning, joint
//!   training, experience replay), the [`Strategy`] interface, and [`ModelLearner`],
//!   which runs any of them on any stream (on a frozen encoder's features for the class
//!   stream).
//! * [`strategies`]: EWC, A-GEM and MER; [`lamaml`]: La-MAML's look-ahead update.
//! * [`registry`]: every continual learner by name, with what it runs on.
//! * [`oml`]: OML's representation, meta-trained for an online head.
//! * [`kvmemory`]: Kaiser et al.'s key-value memory of examples as a lifelong learner.
//! * [`metrics`]: average accuracy, backward and forward transfer (GEM's definitions),
//!   forgetting and learning speed, from one accuracy matrix.
//! * [`reservoir`]: a reservoir-sampling buffer, the memory of experience replay.
//! * [`checkpoint`]: checkpoints between tasks, so a killed run resumes.

pub mod checkpoint;
pub mod consolidate;
pub mod encoder;
pub mod examples;
pub mod kvmemory;
pub mod lamaml;
pub mod learner;
pub mod metrics;
pub mod oml;
pub mod policy;
pub mod prototypes;
pub mod registry;
pub mod reservoir;
pub mod run;
pub mod strategies;
pub mod strategy;

pub use checkpoint::Checkpoints;
pub use consolidate::ConsolidationConfig;
pub use encoder::{Encoder, EncoderSpec, Encoding};
pub use examples::{prune_example_stores, Classify};
pub use kvmemory::KvMemoryLearner;
pub use lamaml::{LaMaml, LaMamlConfig, LookAhead};
pub use learner::{
    ClassInfo, ConsolidationRecord, LearnerConfig, Learnt, LifelongLearner, Prediction, Ranked,
};
pub use metrics::{AccuracyMatrix, Metrics};
pub use policy::{ConsolidationPolicy, Due, RateTrigger};
pub use prototypes::PrototypeMemory;
pub use reservoir::Reservoir;
pub use run::{
    run, ClassImages, Learner, Protocol, RunRecord, RunSettings, SpeedPoint, TaskStream,
    UnknownRates, View, SPEED_POINTS,
};
pub use strategies::{Agem, Ewc, Mer, MerConfig};
pub use strategy::{Classifier, Joint, ModelLearner, Naive, Replay, Strategy, StrategyState};
