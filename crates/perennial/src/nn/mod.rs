//! Functional neural networks: explicit parameter sets, backbones, distances.
//!
//! A backbone never owns its weights. `forward(params, buffers, x, train)` runs it on
//! whatever parameter set it is given, so MAML can evaluate θ' = θ − α∇L by building a
//! new [`ParamSet`] of (differentiable) tensors instead of cloning modules.

mod backbone;
mod distance;
mod lstm;
pub mod params;
pub mod shift;

pub(crate) use backbone::uniform;
pub use backbone::{channels_last, linear_tasks, Backbone, BackboneConfig, Conv4, ConvInit, Mlp};
pub use distance::Distance;
pub(crate) use lstm::{lstm_params, lstm_step};
pub use params::ParamSet;
pub use shift::{shift_averaged, translations};
