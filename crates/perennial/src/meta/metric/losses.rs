//! Losses on a labelled batch of embeddings: triplet (all, batch-hard and semi-hard
//! mining), contrastive (Hadsell et al. 2006) and supervised-contrastive (Khosla et al.
//! 2020).
//!
//! Every function takes the embeddings `[n, d]` of one batch and its labels `[n]`, and
//! returns the loss as a differentiable scalar. Each is the mean of the terms its paper
//! sums (over the triplets, pairs or anchors named in its documentation); the mean is
//! the sum divided by a count that does not depend on the parameters, so it has the
//! sum's minimisers and, under Adam, its steps. The unit tests check values and
//! gradients against brute-force references written with plain loops.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The distance between two embeddings of a pair or triplet loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairDistance {
    /// `‖a − b‖²`.
    #[default]
    SquaredEuclidean,
    /// `1 − cos(a, b)`, in `[0, 2]`.
    Cosine,
}

impl std::str::FromStr for PairDistance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "euclidean" | "squared-euclidean" | "sqeuclidean" => Ok(PairDistance::SquaredEuclidean),
            "cosine" => Ok(PairDistance::Cosine),
            _ => Err(Error::config(
                "--distance",
                s,
                "expected `euclidean` or `cosine`",
            )),
        }
    }
}

impl PairDistance {
    /// The distances `[n, n]` between all rows of `e` (`[n, d]`).
    ///
    /// Squared Euclidean distances are summed over the coordinate differences (not
    /// expanded as `‖a‖² + ‖b‖² − 2a·b`), so they are exact and never negative.
    pub fn matrix(&self, e: &Tensor) -> Tensor {
        match self {
            PairDistance::SquaredEuclidean => (e.unsqueeze(1) - e.unsqueeze(0))
                .square()
                .sum_dim_intlist(-1, false, None::<Kind>),
            PairDistance::Cosine => {
                let n = normalize(e);
                n.matmul(&n.transpose(0, 1)).neg() + 1.0
            }
        }
    }
}

/// Rows of `e` scaled to unit length (zero rows stay zero).
pub fn normalize(e: &Tensor) -> Tensor {
    e / (e.norm_scalaropt_dim(2, -1, true) + 1e-8)
}

/// Which triplets a triplet loss sums over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Every valid triplet (anchor, positive of its class, negative of another).
    All,
    /// Batch-hard (Hermans et al. 2017): for each anchor, its farthest positive and its
    /// nearest negative.
    Hard,
    /// Semi-hard (Schroff et al. 2015): for each (anchor, positive) pair, the nearest
    /// negative farther than the positive; where there is none, the farthest negative
    /// (as TensorFlow's `triplet_semihard_loss` does).
    #[default]
    SemiHard,
}

impl std::str::FromStr for Mining {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Mining::All),
            "hard" | "batch-hard" => Ok(Mining::Hard),
            "semi-hard" | "semihard" => Ok(Mining::SemiHard),
            _ => Err(Error::config(
                "--mining",
                s,
                "expected all, hard or semi-hard",
            )),
        }
    }
}

impl Mining {
    /// The name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Mining::All => "all",
            Mining::Hard => "hard",
            Mining::SemiHard => "semi-hard",
        }
    }
}

/// Masks `[n, n]` of (anchor, positive) pairs (same label, not the same example) and
/// of (anchor, negative) pairs (different labels).
fn pair_masks(labels: &Tensor) -> (Tensor, Tensor) {
    let n = labels.size()[0];
    let same = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0));
    let eye = Tensor::eye(n, (Kind::Bool, labels.device()));
    let pos = same.logical_and(&eye.logical_not());
    let neg = same.logical_not();
    (pos, neg)
}

/// The triplet loss with margin `margin` on embeddings `e` `[n, d]` with labels `[n]`:
/// the mean, over the triplets `(i, j, k)` that `mining` selects (`y_i = y_j`, `i ≠ j`,
/// `y_k ≠ y_i`), of `max(0, margin + d(e_i, e_j) − d(e_i, e_k))`.
///
/// `All` averages over every valid triplet; `Hard` over the anchors with a positive
/// and a negative; `SemiHard` over the (anchor, positive) pairs whose anchor has a
/// negative. A batch with no such term has loss zero (still differentiable).
pub fn triplet(
    e: &Tensor,
    labels: &Tensor,
    margin: f64,
    mining: Mining,
    distance: PairDistance,
) -> Tensor {
    let d = distance.matrix(e);
    let (pos, neg) = pair_masks(labels);
    let has_neg = neg.any_dim(1, false); // [n]
    let inf = f64::INFINITY;
    let (terms, valid) = match mining {
        Mining::All => {
            // t[a, p, n] = margin + d[a, p] − d[a, n]
            let t = (d.unsqueeze(2) - d.unsqueeze(1) + margin).relu();
            let valid = pos.unsqueeze(2).logical_and(&neg.unsqueeze(1));
            (t, valid)
        }
        Mining::Hard => {
            let hardest_pos = d.masked_fill(&pos.logical_not(), -inf).amax(1, false);
            let hardest_neg = d.masked_fill(&neg.logical_not(), inf).amin(1, false);
            let valid = pos.any_dim(1, false).logical_and(&has_neg);
            // Invalid anchors hold ±inf: zero them before they meet the mask.
            let t = (hardest_pos - hardest_neg + margin)
                .where_scalarother(&valid, 0.0)
                .relu();
            (t, valid)
        }
        Mining::SemiHard => {
            let d_ap = d.unsqueeze(2); // [a, p, 1]
            let d_an = d.unsqueeze(1); // [a, 1, n]
            let semi = neg.unsqueeze(1).logical_and(&d_an.gt_tensor(&d_ap)); // [a, p, n]
            let semi_min = d_an
                .expand_as(&semi)
                .masked_fill(&semi.logical_not(), inf)
                .amin(2, false); // [a, p]
            let farthest = d
                .masked_fill(&neg.logical_not(), -inf)
                .amax(1, true)
                .expand_as(&semi_min);
            let found = semi.any_dim(2, false);
            let d_neg = semi_min.where_self(&found, &farthest);
            let valid = pos.logical_and(&has_neg.unsqueeze(1));
            let t = (&d - d_neg + margin).where_scalarother(&valid, 0.0).relu();
            (t, valid)
        }
    };
    masked_mean(&terms, &valid)
}

/// The mean of `t` where `mask` holds (zero, differentiably, where it never does).
fn masked_mean(t: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(t.kind());
    (t * &m).sum(t.kind()) / m.sum(t.kind()).clamp_min(1.0)
}

/// The contrastive loss of Hadsell, Chopra & LeCun (2006) on every pair `i < j` of the
/// batch: `½ D²` for a pair of one class and `½ max(0, margin − D)²` for a pair of two,
/// averaged over the pairs; `D` is the Euclidean distance (`distance` squared
/// Euclidean) or the cosine distance `1 − cos`.
pub fn contrastive(e: &Tensor, labels: &Tensor, margin: f64, distance: PairDistance) -> Tensor {
    let n = e.size()[0];
    let d = distance.matrix(e);
    let (d2, dist) = match distance {
        // The square root only where it is needed, and never at 0.
        PairDistance::SquaredEuclidean => (d.shallow_clone(), (&d + 1e-12).sqrt()),
        PairDistance::Cosine => (d.square(), d.shallow_clone()),
    };
    let same = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0));
    let pull = &d2 * 0.5;
    let push = (dist.neg() + margin).relu().square() * 0.5;
    let t = pull.where_self(&same, &push);
    let upper = Tensor::ones([n, n], (Kind::Bool, e.device())).triu(1);
    masked_mean(&t, &upper)
}

/// The supervised-contrastive loss of Khosla et al. (2020, their `L_out`) with
/// temperature `temperature` on the unit-normalised rows `z` of `e`: for each anchor
/// `i` with positives `P(i)` (same label, not `i`),
/// `−1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) )`, averaged over
/// the anchors that have a positive.
pub fn supervised_contrastive(e: &Tensor, labels: &Tensor, temperature: f64) -> Tensor {
    let n = e.size()[0];
    let z = normalize(e);
    let eye = Tensor::eye(n, (Kind::Bool, e.device()));
    let logits = z.matmul(&z.transpose(0, 1)) / temperature;
    let denom = logits
        .masked_fill(&eye, f64::NEG_INFINITY)
        .logsumexp(1, true);
    let log_prob = (&logits - denom).masked_fill(&eye, 0.0);
    let (pos, _) = pair_masks(labels);
    let pos = pos.to_kind(e.kind());
    let count = pos.sum_dim_intlist(1, false, None::<Kind>);
    let per_anchor =
        (log_prob * &pos).sum_dim_intlist(1, false, None::<Kind>) / count.clamp_min(1.0);
    let has = count.gt(0.0);
    masked_mean(&per_anchor.neg(), &has)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small batch: 7 embeddings of width 3 in 3 classes (one class with one example,
    /// which is an anchor of no triplet), in f64.
    fn batch(seed: u64) -> (Vec<Vec<f64>>, Vec<i64>) {
        let mut rng = perennial_data::Rng::new(seed);
        let e = (0..7)
            .map(|_| (0..3).map(|_| rng.uniform() * 2.0 - 1.0).collect())
            .collect();
        (e, vec![0, 1, 0, 2, 1, 0, 1])
    }

    fn tensor(e: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f64> = e.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([e.len() as i64, e[0].len() as i64])
    }

    fn dist(a: &[f64], b: &[f64], distance: PairDistance) -> f64 {
        match distance {
            PairDistance::SquaredEuclidean => a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum(),
            PairDistance::Cosine => {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let na = a.iter().map(|x| x * x).sum::<f64>().sqrt() + 1e-8;
                let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt() + 1e-8;
                1.0 - dot / (na * nb)
            }
        }
    }

    /// The brute-force triplet loss: plain loops over every (i, j, k).
    fn triplet_ref(e: &[Vec<f64>], y: &[i64], m: f64, mining: Mining, dd: PairDistance) -> f64 {
        let n = e.len();
        let d = |i: usize, j: usize| dist(&e[i], &e[j], dd);
        let (mut sum, mut count) = (0.0, 0usize);
        match mining {
            Mining::All => {
                for i in 0..n {
                    for j in 0..n {
                        for k in 0..n {
                            if i != j && y[i] == y[j] && y[k] != y[i] {
                                sum += (m + d(i, j) - d(i, k)).max(0.0);
                                count += 1;
                            }
                        }
                    }
                }
            }
            Mining::Hard => {
                for i in 0..n {
                    let pos = (0..n).filter(|&j| j != i && y[j] == y[i]).map(|j| d(i, j));
                    let neg = (0..n).filter(|&k| y[k] != y[i]).map(|k| d(i, k));
                    let (hp, hn) = (
                        pos.fold(f64::NEG_INFINITY, f64::max),
                        neg.fold(f64::INFINITY, f64::min),
                    );
                    if hp.is_finite() && hn.is_finite() {
                        sum += (m + hp - hn).max(0.0);
                        count += 1;
                    }
                }
            }
            Mining::SemiHard => {
                for i in 0..n {
                    let negs: Vec<usize> = (0..n).filter(|&k| y[k] != y[i]).collect();
                    if negs.is_empty() {
                        continue;
                    }
                    for j in (0..n).filter(|&j| j != i && y[j] == y[i]) {
                        let farther: Vec<f64> = negs
                            .iter()
                            .map(|&k| d(i, k))
                            .filter(|&x| x > d(i, j))
                            .collect();
                        let dn = if farther.is_empty() {
                            negs.iter()
                                .map(|&k| d(i, k))
                                .fold(f64::NEG_INFINITY, f64::max)
                        } else {
                            farther.iter().copied().fold(f64::INFINITY, f64::min)
                        };
                        sum += (m + d(i, j) - dn).max(0.0);
                        count += 1;
                    }
                }
            }
        }
        sum / count.max(1) as f64
    }

    fn contrastive_ref(e: &[Vec<f64>], y: &[i64], m: f64, dd: PairDistance) -> f64 {
        let n = e.len();
        let (mut sum, mut count) = (0.0, 0);
        for i in 0..n {
            for j in i + 1..n {
                let d = match dd {
                    PairDistance::SquaredEuclidean => dist(&e[i], &e[j], dd).sqrt(),
                    PairDistance::Cosine => dist(&e[i], &e[j], dd),
                };
                sum += if y[i] == y[j] {
                    0.5 * d * d
                } else {
                    0.5 * (m - d).max(0.0).powi(2)
                };
                count += 1;
            }
        }
        sum / count as f64
    }

    fn supcon_ref(e: &[Vec<f64>], y: &[i64], tau: f64) -> f64 {
        let n = e.len();
        let z: Vec<Vec<f64>> = e
            .iter()
            .map(|v| {
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt() + 1e-8;
                v.iter().map(|x| x / norm).collect()
            })
            .collect();
        let s = |i: usize, j: usize| z[i].iter().zip(&z[j]).map(|(a, b)| a * b).sum::<f64>() / tau;
        let (mut sum, mut anchors) = (0.0, 0);
        for i in 0..n {
            let pos: Vec<usize> = (0..n).filter(|&p| p != i && y[p] == y[i]).collect();
            if pos.is_empty() {
                continue;
            }
            let denom: f64 = (0..n).filter(|&a| a != i).map(|a| s(i, a).exp()).sum();
            let l: f64 = pos
                .iter()
                .map(|&p| (s(i, p).exp() / denom).ln())
                .sum::<f64>();
            sum += -l / pos.len() as f64;
            anchors += 1;
        }
        sum / anchors as f64
    }

    /// Checks `ours` against `reference` at the batch, and its autograd gradient
    /// against central finite differences of the reference.
    fn check(
        what: &str,
        ours: impl Fn(&Tensor, &Tensor) -> Tensor,
        reference: impl Fn(&[Vec<f64>], &[i64]) -> f64,
    ) {
        for seed in 0..4 {
            let (e, y) = batch(seed);
            let x = tensor(&e).set_requires_grad(true);
            let labels = Tensor::from_slice(&y);
            let loss = ours(&x, &labels);
            let want = reference(&e, &y);
            let got = loss.double_value(&[]);
            assert!(
                (got - want).abs() < 1e-9,
                "{what} seed {seed}: {got} vs {want}"
            );
            loss.backward();
            let grad: Vec<f64> = x.grad().flatten(0, -1).try_into().unwrap();
            let h = 1e-6;
            for i in 0..e.len() {
                for k in 0..e[0].len() {
                    let (mut up, mut down) = (e.clone(), e.clone());
                    up[i][k] += h;
                    down[i][k] -= h;
                    let fd = (reference(&up, &y) - reference(&down, &y)) / (2.0 * h);
                    let g = grad[i * e[0].len() + k];
                    assert!(
                        (g - fd).abs() < 1e-5 * (1.0 + fd.abs()),
                        "{what} seed {seed} d/de[{i}][{k}]: autograd {g}, finite differences {fd}"
                    );
                }
            }
        }
    }

    #[test]
    fn triplet_losses_match_brute_force_values_and_gradients() {
        for dd in [PairDistance::SquaredEuclidean, PairDistance::Cosine] {
            for mining in [Mining::All, Mining::Hard, Mining::SemiHard] {
                // A margin large enough that most terms are active, and a small one.
                for m in [0.2, 1.5] {
                    check(
                        &format!("triplet {mining:?} {dd:?} m={m}"),
                        |x, y| triplet(x, y, m, mining, dd),
                        |e, y| triplet_ref(e, y, m, mining, dd),
                    );
                }
            }
        }
    }

    #[test]
    fn contrastive_losses_match_brute_force_values_and_gradients() {
        for dd in [PairDistance::SquaredEuclidean, PairDistance::Cosine] {
            for m in [0.5, 2.0] {
                check(
                    &format!("contrastive {dd:?} m={m}"),
                    |x, y| contrastive(x, y, m, dd),
                    |e, y| contrastive_ref(e, y, m, dd),
                );
            }
        }
        for tau in [0.1, 0.5] {
            check(
                &format!("supcon tau={tau}"),
                |x, y| supervised_contrastive(x, y, tau),
                |e, y| supcon_ref(e, y, tau),
            );
        }
    }

    #[test]
    fn semi_hard_mining_picks_the_nearest_farther_negative() {
        // On a line: class 0 at 0 and 1, class 1 at 0.5, 2 and 3; margin 3.5; squared
        // distances d(0,1) = 1, d(0,2) = d(1,2) = 0.25, d(0,3) = 4, d(0,4) = 9,
        // d(1,3) = 1, d(1,4) = 4, d(2,3) = 2.25, d(2,4) = 6.25, d(3,4) = 1.
        let e = Tensor::from_slice(&[0.0f64, 1.0, 0.5, 2.0, 3.0]).view([5, 1]);
        let y = Tensor::from_slice(&[0i64, 0, 1, 1, 1]);
        let sq = PairDistance::SquaredEuclidean;
        // Semi-hard, (anchor, positive): negative → term 3.5 + d(a,p) − d(a,n):
        // (0,1): 4 → 0.5; (1,0): 4 (1 is not farther than 1) → 0.5; (2,3): none farther
        // than 2.25, the farthest 0.25 → 5.5; (2,4): 0.25 → 9.5; (3,2): 4 → 1.75;
        // (3,4): 4 → 0.5; (4,2): 9 → 0.75; (4,3): 4 → 0.5. Mean 19.5 / 8.
        let l = triplet(&e, &y, 3.5, Mining::SemiHard, sq).double_value(&[]);
        assert!((l - 19.5 / 8.0).abs() < 1e-12, "{l}");
        // Batch-hard, anchor: farthest positive, nearest negative → term:
        // 0: 1, 0.25 → 4.25; 1: 1, 0.25 → 4.25; 2: 6.25, 0.25 → 9.5; 3: 2.25, 1 → 4.75;
        // 4: 6.25, 4 → 5.75. Mean 28.5 / 5.
        let l = triplet(&e, &y, 3.5, Mining::Hard, sq).double_value(&[]);
        assert!((l - 28.5 / 5.0).abs() < 1e-12, "{l}");
    }

    #[test]
    fn a_batch_without_triplets_has_zero_loss_and_a_gradient() {
        let x = Tensor::from_slice(&[0.0f64, 1.0, 2.0])
            .view([3, 1])
            .set_requires_grad(true);
        let y = Tensor::from_slice(&[0i64, 1, 2]); // no positives
        for mining in [Mining::All, Mining::Hard, Mining::SemiHard] {
            let l = triplet(&x, &y, 0.2, mining, PairDistance::SquaredEuclidean);
            assert_eq!(l.double_value(&[]), 0.0);
            l.backward();
            let g: Vec<f64> = x.grad().flatten(0, -1).try_into().unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        }
        let l = supervised_contrastive(&x, &y, 0.1);
        assert_eq!(l.double_value(&[]), 0.0);
    }
}
