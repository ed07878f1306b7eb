//! Turning data-crate episodes into tensors.

use perennial_data::Episode;
use tch::{Device, Kind, Tensor};

/// A labelled batch of images on a device: `x` is `[n, 1, h, w]` `f32`, `y` is `[n]`
/// `i64` labels in `0..ways`.
#[derive(Debug)]
pub struct Batch {
    /// Images, `[n, 1, h, w]`.
    pub x: Tensor,
    /// Labels, `[n]`.
    pub y: Tensor,
    /// Number of classes the labels range over.
    pub ways: usize,
}

impl Batch {
    /// A batch from raw pixels and labels.
    pub fn from_pixels(
        pixels: &[f32],
        labels: &[i64],
        h: usize,
        w: usize,
        ways: usize,
        device: Device,
    ) -> Self {
        let n = labels.len() as i64;
        Batch {
            x: Tensor::from_slice(pixels)
                .view([n, 1, h as i64, w as i64])
                .to_device(device),
            y: Tensor::from_slice(labels).to_device(device),
            ways,
        }
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.y.size()[0] as usize
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An episode's support and query sets as tensors.
#[derive(Debug)]
pub struct Task {
    /// The support (training) set.
    pub support: Batch,
    /// The query (test) set.
    pub query: Batch,
}

impl Task {
    /// Moves an episode to `device`.
    pub fn from_episode(ep: &Episode, device: Device) -> Self {
        let ways = ep.spec.ways;
        Task {
            support: Batch::from_pixels(
                &ep.support,
                &ep.support_labels,
                ep.height,
                ep.width,
                ways,
                device,
            ),
            query: Batch::from_pixels(
                &ep.query,
                &ep.query_labels,
                ep.height,
                ep.width,
                ways,
                device,
            ),
        }
    }
}

/// Fraction of rows of `logits` whose argmax equals `labels`.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    logits
        .argmax(-1, false)
        .eq_tensor(labels)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}
