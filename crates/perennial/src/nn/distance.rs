use tch::Tensor;

/// A distance between embeddings, turned into logits (higher = closer).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Distance {
    /// Squared Euclidean distance; logits are `-‖q − p‖²` (Snell et al. 2017).
    #[default]
    SquaredEuclidean,
    /// Cosine similarity times a fixed `scale` (a temperature; cosine logits lie in
    /// `[-1, 1]`, too flat for a softmax without it).
    Cosine {
        /// The logit scale.
        scale: f64,
    },
}

impl std::str::FromStr for Distance {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "euclidean" | "squared-euclidean" | "sqeuclidean" => Ok(Distance::SquaredEuclidean),
            "cosine" => Ok(Distance::Cosine { scale: 10.0 }),
            _ => Err(crate::Error::config(
                "--distance",
                s,
                "expected `euclidean` or `cosine`",
            )),
        }
    }
}

impl Distance {
    /// Logits `[q, p]` of queries `[q, d]` against prototypes `[p, d]`.
    pub fn logits(&self, queries: &Tensor, protos: &Tensor) -> Tensor {
        match self {
            Distance::SquaredEuclidean => {
                let diff = queries.unsqueeze(1) - protos.unsqueeze(0);
                -(diff.square().sum_dim_intlist(-1, false, None::<tch::Kind>))
            }
            Distance::Cosine { scale } => {
                let eps = 1e-8;
                let qn = queries / (queries.norm_scalaropt_dim(2, -1, true) + eps);
                let pn = protos / (protos.norm_scalaropt_dim(2, -1, true) + eps);
                qn.matmul(&pn.transpose(0, 1)) * *scale
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_logits() {
        let q = Tensor::from_slice(&[0.0f32, 0.0, 3.0, 4.0]).view([2, 2]);
        let p = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let e = Distance::SquaredEuclidean.logits(&q, &p);
        let got: Vec<f32> = e.flatten(0, -1).try_into().unwrap();
        assert_eq!(got, vec![0.0, -1.0, -25.0, -18.0]);
        let c = Distance::Cosine { scale: 1.0 }.logits(&q, &p);
        let got: Vec<f32> = c.flatten(0, -1).try_into().unwrap();
        // [3,4]·[0,1] / 5 = 0.8; zero vectors give 0.
        assert!(
            (got[3] - 0.8).abs() < 1e-6 && got[0].abs() < 1e-6,
            "{got:?}"
        );
    }
}
