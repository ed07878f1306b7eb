//! The inner step every optimisation-based learner takes: `θ' = θ − α ⊙ g`, as new
//! tensors, so that autograd sees through it (second-order MAML, La-MAML's look-ahead,
//! OML's online head).
//!
//! MAML's inner loop steps with a scalar rate (Meta-SGD with a learned rate per
//! tensor), La-MAML's look-ahead with its learned per-weight rates, OML's online head
//! with the closed-form softmax gradient of a linear layer: one function serves them.

use tch::Tensor;

use crate::nn::ParamSet;

/// The rate of one tensor's step.
#[derive(Debug, Clone, Copy)]
pub enum Rate<'a> {
    /// One rate for the whole tensor.
    Scalar(f64),
    /// A learned rate (per weight, or one per tensor), differentiable.
    Learned(&'a Tensor),
}

/// One differentiable SGD step: every tensor of `fast` whose `rate` is `Some` moves
/// against its gradient (the next of `grads`, in the order of `fast`), the others are
/// shared as they are. The result holds new tensors; `fast` is untouched.
pub fn sgd_step<'a>(
    fast: &ParamSet,
    grads: &[Tensor],
    mut rate: impl FnMut(&str) -> Option<Rate<'a>>,
) -> ParamSet {
    let mut g = grads.iter();
    fast.map(|n, t| match rate(n) {
        None => t.shallow_clone(),
        Some(r) => {
            let grad = g.next().expect("one gradient per stepped tensor");
            match r {
                Rate::Scalar(lr) => t - grad * lr,
                Rate::Learned(a) => t - a * grad,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_the_chosen_tensors_and_shares_the_others() {
        let mut p = ParamSet::new();
        p.push("a", Tensor::from_slice(&[1.0f32, 2.0]));
        p.push("b", Tensor::from_slice(&[5.0f32]));
        p.push("c", Tensor::from_slice(&[3.0f32]));
        let grads = [
            Tensor::from_slice(&[1.0f32, -1.0]),
            Tensor::from_slice(&[2.0f32]),
        ];
        let rate = Tensor::from_slice(&[0.25f32]);
        let next = sgd_step(&p, &grads, |n| match n {
            "a" => Some(Rate::Scalar(0.5)),
            "c" => Some(Rate::Learned(&rate)),
            _ => None,
        });
        let v = |n: &str| Vec::<f32>::try_from(next.get(n)).unwrap();
        assert_eq!(v("a"), [0.5, 2.5]);
        assert_eq!(v("b"), [5.0]);
        assert_eq!(v("c"), [2.5]);
        assert_eq!(Vec::<f32>::try_from(p.get("a")).unwrap(), [1.0, 2.0]);
    }
}
