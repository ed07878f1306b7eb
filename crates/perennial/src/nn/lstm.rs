//! A functional LSTM cell on libtorch's fused `lstm_cell`: parameters in a
//! [`ParamSet`] under a prefix, so learners keep them beside their other weights
//! (Matching Networks' full-context embeddings, the memory-augmented network's
//! controller).

use perennial_data::Rng;
use tch::{Device, Tensor};

use super::backbone::uniform;
use super::ParamSet;

/// The parameters of one LSTM cell of `input` inputs and `hidden` units under `prefix`,
/// initialised as PyTorch does (U(±1/√hidden)).
pub(crate) fn lstm_params(
    p: &mut ParamSet,
    rng: &mut Rng,
    prefix: &str,
    input: i64,
    hidden: i64,
    device: Device,
) {
    let b = 1.0 / (hidden as f64).sqrt();
    p.push(
        format!("{prefix}.w_ih"),
        uniform(rng, &[4 * hidden, input], b, device),
    );
    p.push(
        format!("{prefix}.w_hh"),
        uniform(rng, &[4 * hidden, hidden], b, device),
    );
    p.push(
        format!("{prefix}.b_ih"),
        uniform(rng, &[4 * hidden], b, device),
    );
    p.push(
        format!("{prefix}.b_hh"),
        uniform(rng, &[4 * hidden], b, device),
    );
}

/// One step of the LSTM cell `prefix` on inputs `x` `[n, in]` from state `(h, c)`.
pub(crate) fn lstm_step(
    p: &ParamSet,
    prefix: &str,
    x: &Tensor,
    h: &Tensor,
    c: &Tensor,
) -> (Tensor, Tensor) {
    x.lstm_cell(
        &[h, c],
        p.get(&format!("{prefix}.w_ih")),
        p.get(&format!("{prefix}.w_hh")),
        Some(p.get(&format!("{prefix}.b_ih"))),
        Some(p.get(&format!("{prefix}.b_hh"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The functional LSTM cell against its definition, by hand: gates i, f, g, o.
    #[test]
    fn lstm_step_is_the_lstm_cell() {
        let mut p = ParamSet::new();
        let mut rng = Rng::new(3);
        lstm_params(&mut p, &mut rng, "l", 2, 1, Device::Cpu);
        let x = Tensor::from_slice(&[0.5f32, -1.0]).view([1, 2]);
        let (h0, c0) = (
            Tensor::from_slice(&[0.3f32]).view([1, 1]),
            Tensor::from_slice(&[-0.2f32]).view([1, 1]),
        );
        let (h, c) = lstm_step(&p, "l", &x, &h0, &c0);
        let pre = x.matmul(&p.get("l.w_ih").transpose(0, 1))
            + h0.matmul(&p.get("l.w_hh").transpose(0, 1))
            + p.get("l.b_ih")
            + p.get("l.b_hh");
        let v: Vec<f32> = pre.flatten(0, -1).try_into().unwrap();
        let s = |z: f32| 1.0 / (1.0 + (-z).exp());
        let c_want = s(v[1]) * -0.2 + s(v[0]) * v[2].tanh();
        let h_want = s(v[3]) * c_want.tanh();
        assert!((c.double_value(&[0, 0]) as f32 - c_want).abs() < 1e-6);
        assert!((h.double_value(&[0, 0]) as f32 - h_want).abs() < 1e-6);
    }
}
