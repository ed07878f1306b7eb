//! The meta-learning vocabulary shared by every algorithm.
//!
//! A [`MetaLearner`] holds meta-parameters θ. `adapt(support)` returns an [`Adapted`]
//! model for one task without touching θ; `meta_step(tasks)` performs one outer update.
//! One evaluation loop ([`crate::eval`]) and one training loop ([`crate::train`]) serve
//! every algorithm through these two traits, and [`registry`] names every algorithm.

pub mod memory;
pub mod metric;
pub mod optimization;
pub mod registry;

use std::sync::Arc;

use tch::Tensor;

use crate::error::Result;
use crate::nn::ParamSet;
use crate::optim::{Adam, GradReduce};
use crate::tensors::{Batch, Task};

/// A meta-learner's tensors, by role ([`MetaLearner::parts`]).
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// The meta-parameters.
    pub params: &'a ParamSet,
    /// Batch-norm running statistics, for learners that keep them.
    pub buffers: Option<&'a ParamSet>,
    /// The outer optimiser, for learners that train with Adam.
    pub adam: Option<&'a Adam>,
}

/// [`Parts`], mutable.
#[derive(Debug)]
pub struct PartsMut<'a> {
    /// The meta-parameters.
    pub params: &'a mut ParamSet,
    /// Batch-norm running statistics, for learners that keep them.
    pub buffers: Option<&'a mut ParamSet>,
    /// The outer optimiser, for learners that train with Adam.
    pub adam: Option<&'a mut Adam>,
}

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

/// The mean of per-task losses over `tasks` (`each` gives a task's differentiable loss
/// and its query accuracy) and the report of the update, for learners that train on
/// one episode at a time; `None` for no tasks. The caller backpropagates the mean and
/// steps its optimiser.
pub(crate) fn mean_task_loss(
    tasks: &[Task],
    mut each: impl FnMut(&Task) -> (Tensor, f64),
) -> (Option<Tensor>, StepReport) {
    let mut report = StepReport::default();
    let mut acc = 0.0;
    let mut total: Option<Tensor> = None;
    for task in tasks {
        let (loss, a) = each(task);
        report.loss += loss.double_value(&[]);
        acc += a;
        total = Some(match total {
            None => loss,
            Some(t) => t + loss,
        });
    }
    let n = tasks.len().max(1) as f64;
    report.loss /= n;
    report.accuracy = Some(acc / n);
    (total.map(|t| t / n), report)
}

/// The tensor `name` of a saved adapted model, on `device`.
pub(crate) fn adapted_tensor(
    named: &[(String, Tensor)],
    name: &str,
    device: tch::Device,
) -> Result<Tensor> {
    named
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.to_device(device))
        .ok_or_else(|| crate::error::Error::Parameters {
            name: name.into(),
            reason: "missing from the adapted model".into(),
        })
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

    /// For learners that read a task as one labelled sequence (memory-augmented
    /// networks): the task's steps in the order they were shown, each as (which
    /// presentation of its class it is, from 0; whether it was classified right before
    /// its label was shown). `None` for every other learner.
    fn sequence_record(&self, _task: &Task) -> Option<Vec<(usize, bool)>> {
        None
    }

    /// Sets (or with `None` removes) the meta-gradient hand-off of data-parallel
    /// training ([`crate::dist`]): every later update passes its gradients through
    /// `reducer` before it is applied. Learners that train with Adam hand it to their
    /// optimiser (this default); the others override it.
    fn set_gradient_reducer(&mut self, reducer: Option<Arc<dyn GradReduce>>) -> Result<()> {
        let name = self.name();
        match self.parts_mut().adam {
            Some(adam) => {
                adam.set_reducer(reducer);
                Ok(())
            }
            None if reducer.is_none() => Ok(()),
            None => Err(crate::error::Error::config(
                "algorithm",
                name,
                "has no meta-gradient hand-off for data-parallel training",
            )),
        }
    }

    /// The learner's tensors: meta-parameters, buffers and optimiser. The four state
    /// methods below are built on it, under the names every checkpoint uses
    /// (`params.*`, `buffers.*`, `adam.*`).
    fn parts(&self) -> Parts<'_>;

    /// [`MetaLearner::parts`], to load into.
    fn parts_mut(&mut self) -> PartsMut<'_>;

    /// Every tensor needed to resume training (meta-parameters, buffers, optimiser).
    fn training_state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.model_state();
        if let Some(adam) = self.parts().adam {
            out.extend(adam.state("adam."));
        }
        out
    }

    /// Restores [`MetaLearner::training_state`].
    fn load_training_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        self.load_model_state(named)?;
        match self.parts_mut().adam {
            Some(adam) => adam.load_state(named, "adam."),
            None => Ok(()),
        }
    }

    /// The tensors needed to predict (meta-parameters and buffers), for the best model.
    fn model_state(&self) -> Vec<(String, Tensor)> {
        let parts = self.parts();
        let mut out = parts.params.named("params.");
        if let Some(b) = parts.buffers {
            out.extend(b.named("buffers."));
        }
        out
    }

    /// Restores [`MetaLearner::model_state`].
    fn load_model_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let parts = self.parts_mut();
        parts.params.load_named(named, "params.")?;
        match parts.buffers {
            Some(b) => b.load_named(named, "buffers."),
            None => Ok(()),
        }
    }
}
