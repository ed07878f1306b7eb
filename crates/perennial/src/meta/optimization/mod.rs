//! Optimization-based meta-learning: learn an initialisation θ* (and, for Meta-SGD,
//! per-parameter rates) from which a few gradient steps fit a new task.
//!
//! * [`maml`]: MAML with exact second-order gradients, first-order MAML, ANIL and
//!   Meta-SGD, one learner with a variant switch.
//! * [`reptile`]: Reptile, the first-order method that moves θ towards the weights
//!   fine-tuned on each task.
//! * [`fastnet`]: the network these learners fine-tune (a functional body and a linear
//!   head) and its losses.
//! * [`inner`]: the one differentiable inner step, shared with La-MAML's look-ahead and
//!   OML's online head.

pub mod fastnet;
pub mod inner;
pub mod maml;
pub mod reptile;
