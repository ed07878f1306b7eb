//! Continual-learning metrics from one accuracy matrix.
//!
//! With `T` tasks learnt in order, `R[i][j]` is the test accuracy on task `j` after
//! training on tasks `0..=i`, and `b[j]` the accuracy on task `j` of the model before
//! any training (for forward transfer). Following Lopez-Paz & Ranzato (GEM, 2017):
//!
//! * average accuracy `ACC = 1/T Σ_j R[T-1][j]`;
//! * backward transfer `BWT = 1/(T-1) Σ_{j<T-1} (R[T-1][j] − R[j][j])`: how learning
//!   later tasks changed the earlier ones (negative: forgetting);
//! * forward transfer `FWT = 1/(T-1) Σ_{j≥1} (R[j-1][j] − b[j])`: how the earlier tasks
//!   helped a task before it was seen;
//!
//! and following Chaudhry et al. (2018), forgetting
//! `F = 1/(T-1) Σ_{j<T-1} max_{l<T-1} (R[l][j]) − R[T-1][j]`, the average drop from the
//! best accuracy a task ever had to its final one (the max runs over `l ≥ j`, since a
//! task's accuracy before it is learnt is not a level it can forget from).
//!
//! BWT, FWT and forgetting need at least two tasks; with one they are `None`.

use crate::error::{Error, Result};

/// A `T x T` accuracy matrix and, optionally, the untrained model's accuracies.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccuracyMatrix {
    /// `r[i][j]`: accuracy on task `j` after training on tasks `0..=i`, in `[0, 1]`.
    pub r: Vec<Vec<f64>>,
    /// `b[j]`: accuracy on task `j` before any training (for FWT).
    pub baseline: Option<Vec<f64>>,
}

/// The summary of a run; fractions in `[0, 1]` (BWT and FWT in `[-1, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Average final accuracy over all tasks.
    pub acc: f64,
    /// Backward transfer (`None` for one task).
    pub bwt: Option<f64>,
    /// Forward transfer (`None` for one task or without a baseline).
    pub fwt: Option<f64>,
    /// Average forgetting (`None` for one task).
    pub forgetting: Option<f64>,
}

impl AccuracyMatrix {
    /// Checks the matrix is square, non-empty, and holds accuracies in `[0, 1]`.
    pub fn new(r: Vec<Vec<f64>>, baseline: Option<Vec<f64>>) -> Result<Self> {
        let t = r.len();
        let bad = |what: &str, v: String| Err(Error::config("accuracy matrix", what, v));
        if t == 0 {
            return bad("rows", "no task".into());
        }
        for (i, row) in r.iter().enumerate() {
            if row.len() != t {
                return bad(
                    &format!("row {i}"),
                    format!("{} entries, expected {t}", row.len()),
                );
            }
        }
        if let Some(b) = &baseline {
            if b.len() != t {
                return bad("baseline", format!("{} entries, expected {t}", b.len()));
            }
        }
        let all = r.iter().flatten().chain(baseline.iter().flatten());
        if let Some(v) = all.into_iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return bad("entry", format!("{v} is not an accuracy in [0, 1]"));
        }
        Ok(AccuracyMatrix { r, baseline })
    }

    /// Number of tasks.
    pub fn tasks(&self) -> usize {
        self.r.len()
    }

    /// ACC, BWT, FWT and forgetting as defined in the module docs.
    pub fn metrics(&self) -> Metrics {
        let t = self.tasks();
        let last = &self.r[t - 1];
        let acc = last.iter().sum::<f64>() / t as f64;
        if t < 2 {
            return Metrics {
                acc,
                bwt: None,
                fwt: None,
                forgetting: None,
            };
        }
        let n = (t - 1) as f64;
        let bwt = (0..t - 1).map(|j| last[j] - self.r[j][j]).sum::<f64>() / n;
        let fwt = self
            .baseline
            .as_ref()
            .map(|b| (1..t).map(|j| self.r[j - 1][j] - b[j]).sum::<f64>() / n);
        let forgetting = (0..t - 1)
            .map(|j| {
                let best = (j..t - 1)
                    .map(|l| self.r[l][j])
                    .fold(f64::NEG_INFINITY, f64::max);
                best - last[j]
            })
            .sum::<f64>()
            / n;
        Metrics {
            acc,
            bwt: Some(bwt),
            fwt,
            forgetting: Some(forgetting),
        }
    }

    /// Average accuracy over the tasks seen so far after each task: `1/(i+1) Σ_{j≤i}
    /// R[i][j]` for every `i` (the "accuracy over the stream" curve).
    pub fn seen_accuracy(&self) -> Vec<f64> {
        self.r
            .iter()
            .enumerate()
            .map(|(i, row)| row[..=i].iter().sum::<f64>() / (i + 1) as f64)
            .collect()
    }

    /// The matrix as CSV: a header `after,task0,task1,...`, then one row per training
    /// stage (and a `baseline` row first when there is one).
    pub fn to_csv(&self) -> String {
        let t = self.tasks();
        let mut s = String::from("after");
        for j in 0..t {
            s.push_str(&format!(",task{j}"));
        }
        s.push('\n');
        let row = |s: &mut String, name: &str, v: &[f64]| {
            s.push_str(name);
            for x in v {
                s.push_str(&format!(",{x}"));
            }
            s.push('\n');
        };
        if let Some(b) = &self.baseline {
            row(&mut s, "baseline", b);
        }
        for (i, r) in self.r.iter().enumerate() {
            row(&mut s, &format!("task{i}"), r);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn metrics_match_a_hand_computed_matrix() {
        // Three tasks. Row i: after training task i.
        let m = AccuracyMatrix::new(
            vec![
                vec![0.9, 0.2, 0.1],
                vec![0.7, 0.8, 0.3],
                vec![0.6, 0.9, 0.95],
            ],
            Some(vec![0.1, 0.1, 0.1]),
        )
        .unwrap();
        let x = m.metrics();
        // ACC = (0.6 + 0.9 + 0.95) / 3
        assert!(close(x.acc, 2.45 / 3.0), "{}", x.acc);
        // BWT = ((0.6 - 0.9) + (0.9 - 0.8)) / 2 = -0.1
        assert!(close(x.bwt.unwrap(), -0.1));
        // FWT = ((0.2 - 0.1) + (0.3 - 0.1)) / 2 = 0.15
        assert!(close(x.fwt.unwrap(), 0.15));
        // Forgetting: task 0: max(0.9, 0.7) - 0.6 = 0.3; task 1: 0.8 - 0.9 = -0.1 → 0.1
        assert!(close(x.forgetting.unwrap(), 0.1));
        let seen = m.seen_accuracy();
        assert!(close(seen[0], 0.9) && close(seen[1], 0.75) && close(seen[2], 2.45 / 3.0));
        let csv = m.to_csv();
        assert!(csv.starts_with("after,task0,task1,task2\nbaseline,0.1,0.1,0.1\ntask0,0.9,"));
    }

    #[test]
    fn perfect_memory_has_zero_bwt_and_forgetting() {
        let m = AccuracyMatrix::new(vec![vec![1.0, 0.5], vec![1.0, 1.0]], None).unwrap();
        let x = m.metrics();
        assert_eq!(
            (x.acc, x.bwt, x.fwt, x.forgetting),
            (1.0, Some(0.0), None, Some(0.0))
        );
        let one = AccuracyMatrix::new(vec![vec![0.7]], None)
            .unwrap()
            .metrics();
        assert_eq!((one.acc, one.bwt, one.forgetting), (0.7, None, None));
    }

    #[test]
    fn malformed_matrices_are_refused() {
        assert!(AccuracyMatrix::new(vec![], None).is_err());
        let e = AccuracyMatrix::new(vec![vec![0.5, 0.5], vec![0.5]], None).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        let e = AccuracyMatrix::new(vec![vec![1.5]], None).unwrap_err();
        assert!(e.to_string().contains("1.5"), "{e}");
        assert!(AccuracyMatrix::new(vec![vec![f64::NAN]], None).is_err());
        assert!(AccuracyMatrix::new(vec![vec![0.5]], Some(vec![])).is_err());
    }
}
