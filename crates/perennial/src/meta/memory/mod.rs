//! Memory-based meta-learning: an external memory M, differentiable (a
//! memory-augmented network read by content and written by least-recently-used access)
//! or a key-value store (keys, values and ages, read by nearest neighbour), trained
//! jointly with the network so that a new task is learnt by writing to memory, at once.
//!
//! The family's learners join the one vocabulary of [`crate::meta`]
//! ([`crate::meta::MetaLearner`] / [`crate::meta::Adapted`]), so the training loop, the
//! evaluation loop and the lifelong learner's encoder interface serve them unchanged.
//!
//! - [`mann`]: memory-augmented networks (Santoro et al. 2016), an LSTM controller with
//!   a memory written by least-recently-used access, reading a task as a labelled
//!   sequence; with no memory, the LSTM baseline.
//! - [`kv`]: a learned key-value memory (Kaiser et al. 2017), keys, labels and ages
//!   read by nearest neighbour, trained jointly with a Conv4 embedding.

pub mod kv;
pub mod mann;

pub use kv::{KeyValueMemory, KvMemory, KvMemoryConfig};
pub use mann::{Mann, MannConfig};
