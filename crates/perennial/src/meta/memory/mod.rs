//! Memory-based meta-learning: an external memory M, differentiable (a
//! memory-augmented network read by content and written by least-recently-used access)
//! or a key-value store (keys, values and ages, read by nearest neighbour), trained
//! jointly with the network so that a new task is learnt by writing to memory, at once.
//!
//! The family's learners land here and join the one vocabulary of [`crate::meta`]
//! ([`crate::meta::MetaLearner`] / [`crate::meta::Adapted`]), so the training loop, the
//! evaluation loop and the lifelong learner's encoder interface serve them unchanged.
//! Nothing is implemented yet: this module only reserves the family's place in the tree.
