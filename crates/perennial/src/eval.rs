//! Few-shot evaluation: adapt on each episode's support set, score its query set, and
//! report the mean accuracy with a 95% confidence interval. One loop serves every
//! [`MetaLearner`].

use perennial_data::Episode;
use tch::Device;

use crate::meta::MetaLearner;
use crate::tensors::{accuracy, Task};

/// Mean accuracy over episodes with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Mean accuracy, a fraction in `[0, 1]`.
    pub accuracy: f64,
    /// Half-width of the 95% confidence interval, `1.96 · s / √n` with the sample
    /// standard deviation `s` (the convention of Snell et al. and Finn et al.).
    pub ci95: f64,
    /// Number of episodes.
    pub episodes: usize,
}

/// Summarises per-episode accuracies.
pub fn summarize(accs: &[f64]) -> Summary {
    let n = accs.len();
    if n == 0 {
        return Summary {
            accuracy: 0.0,
            ci95: 0.0,
            episodes: 0,
        };
    }
    let mean = accs.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Summary {
        accuracy: mean,
        ci95: 1.96 * var.sqrt() / (n as f64).sqrt(),
        episodes: n,
    }
}

/// Query accuracy of `learner` on one task.
pub fn task_accuracy(learner: &dyn MetaLearner, task: &Task) -> f64 {
    let adapted = learner.adapt(&task.support);
    accuracy(&adapted.predict(&task.query.x), &task.query.y)
}

/// Query mean squared error of `learner` on one regression task.
pub fn task_mse(learner: &dyn MetaLearner, task: &Task) -> f64 {
    let adapted = learner.adapt(&task.support);
    tch::no_grad(|| {
        adapted
            .predict(&task.query.x)
            .mse_loss(&task.query.y, tch::Reduction::Mean)
            .double_value(&[])
    })
}

/// Evaluates on a sequence of episodes; `each(i, acc)` is called after every episode
/// (for progress bars).
pub fn evaluate(
    learner: &dyn MetaLearner,
    episodes: impl IntoIterator<Item = Episode>,
    device: Device,
    mut each: impl FnMut(usize, f64),
) -> Summary {
    let mut accs = Vec::new();
    for (i, ep) in episodes.into_iter().enumerate() {
        let a = task_accuracy(learner, &Task::from_episode(&ep, device));
        each(i, a);
        accs.push(a);
    }
    summarize(&accs)
}

/// A sequence learner's evaluation ([`MetaLearner::sequence_record`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SequenceSummary {
    /// Accuracy over every step of a sequence, summarised over episodes.
    pub summary: Summary,
    /// Entry `i`: the accuracy on the (i+1)-th presentation of a class, over every
    /// episode (as Santoro et al.'s Table 1 reports it).
    pub by_instance: Vec<f64>,
    /// How many steps each entry of `by_instance` averages.
    pub counts: Vec<usize>,
}

/// Evaluates a sequence learner on a sequence of episodes (each read whole, support
/// and query, as one labelled sequence); `None` when the learner does not read tasks
/// as sequences. `each(i, acc)` is called after every episode.
pub fn evaluate_sequences(
    learner: &dyn MetaLearner,
    episodes: impl IntoIterator<Item = Episode>,
    device: Device,
    mut each: impl FnMut(usize, f64),
) -> Option<SequenceSummary> {
    let mut accs = Vec::new();
    let (mut right, mut counts) = (Vec::<usize>::new(), Vec::<usize>::new());
    for (i, ep) in episodes.into_iter().enumerate() {
        let record = learner.sequence_record(&Task::from_episode(&ep, device))?;
        for &(inst, ok) in &record {
            if inst >= counts.len() {
                counts.resize(inst + 1, 0);
                right.resize(inst + 1, 0);
            }
            counts[inst] += 1;
            right[inst] += usize::from(ok);
        }
        let a = record.iter().filter(|r| r.1).count() as f64 / record.len().max(1) as f64;
        each(i, a);
        accs.push(a);
    }
    Some(SequenceSummary {
        summary: summarize(&accs),
        by_instance: right
            .iter()
            .zip(&counts)
            .map(|(r, c)| *r as f64 / (*c).max(1) as f64)
            .collect(),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_matches_hand_computation() {
        // mean 0.5, sample sd = sqrt(((0.5)^2*2 + 0)/2) = 0.5; ci = 1.96*0.5/sqrt(3)
        let s = summarize(&[0.0, 0.5, 1.0]);
        assert!((s.accuracy - 0.5).abs() < 1e-12);
        assert!((s.ci95 - 1.96 * 0.5 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.episodes, 3);
        assert_eq!(summarize(&[]).episodes, 0);
    }
}
