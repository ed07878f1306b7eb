//! The meta-learning vocabulary shared by every algorithm.
//!
//! A [`MetaLearner`] holds meta-parameters θ. `adapt(support)` returns an [`Adapted`]
//! model for one task without touching θ; `meta_step(tasks)` performs one outer update.
//! One evaluation loop ([`crate::eval`]) and one training loop ([`crate::train`]) serve
//! every algorithm through these two traits.

pub mod memory;
pub mod metric;
pub mod optimization;

use tch::Tensor;

use crate::error::Result;
use crate::tensors::{Batch, Task};

/// A model adapted to one task.
pub trait Adapted {
    /// Logits `[n, ways]` for inputs `[n, ...]` (for regression: predictions
    /// `[n, outputs]`).
    fn predict(&self, x: &Tensor) -> Tensor;

    /// What the adapted model holds beyond the meta-parameters (prototypes, fast
    /// weights), to save it; [`MetaLearner::load_adapted`] rebuilds it.
    fn state(&self) -> Vec<(String, Tensor)>;
}

/// What one outer update reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Mean query loss over the update's tasks.
    pub loss: f64,
    /// Mean query accuracy over the update's tasks (`None` for regression).
    pub accuracy: Option<f64>,
}

/// A meta-learning algorithm.
pub trait MetaLearner {
    /// The algorithm's name (as on the command line).
    fn name(&self) -> &'static str;

    /// Adapts to a task from its support set. Never changes the meta-parameters.
    fn adapt<'a>(&'a self, support: &Batch) -> Box<dyn Adapted + 'a>;

    /// Rebuilds an adapted model saved with [`Adapted::state`] (on these
    /// meta-parameters).
    fn load_adapted<'a>(&'a self, named: &[(String, Tensor)]) -> Result<Box<dyn Adapted + 'a>>;

    /// One outer (meta-) update on a batch of tasks.
    fn meta_step(&mut self, tasks: &[Task]) -> StepReport;

    /// Every tensor needed to resume training (meta-parameters, buffers, optimiser).
    fn training_state(&self) -> Vec<(String, Tensor)>;

    /// Restores [`MetaLearner::training_state`].
    fn load_training_state(&mut self, named: &[(String, Tensor)]) -> Result<()>;

    /// The tensors needed to predict (meta-parameters and buffers), for the best model.
    fn model_state(&self) -> Vec<(String, Tensor)>;

    /// Restores [`MetaLearner::model_state`].
    fn load_model_state(&mut self, named: &[(String, Tensor)]) -> Result<()>;
}
