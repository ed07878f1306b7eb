//! Turning data-crate episodes into tensors.

use perennial_data::sinusoid::SinusoidTask;
use perennial_data::Episode;
use tch::{Device, Kind, Tensor};

/// A labelled batch on a device. For classification `x` is images `[n, 1, h, w]`
/// `f32` and `y` is `[n]` `i64` labels in `0..ways`; for regression `x` is `[n, d]`,
/// `y` is `[n, k]` `f32` targets and `ways` is 0.
#[derive(Debug)]
pub struct Batch {
    /// Inputs, `[n, ...]`.
    pub x: Tensor,
    /// Labels `[n]` or regression targets `[n, k]`.
    pub y: Tensor,
    /// Number of classes the labels range over (0 for regression).
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

    /// A regression batch of scalar inputs and targets, `[n, 1]` each.
    pub fn regression(x: &[f32], y: &[f32], device: Device) -> Self {
        let n = x.len() as i64;
        Batch {
            x: Tensor::from_slice(x).view([n, 1]).to_device(device),
            y: Tensor::from_slice(y).view([n, 1]).to_device(device),
            ways: 0,
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
    /// Another handle on the same tensors (for sending a task to a worker thread).
    pub fn shallow_clone(&self) -> Self {
        let b = |b: &Batch| Batch {
            x: b.x.shallow_clone(),
            y: b.y.shallow_clone(),
            ways: b.ways,
        };
        Task {
            support: b(&self.support),
            query: b(&self.query),
        }
    }

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

impl Task {
    /// A sinusoid task's points as `[n, 1]` tensors.
    pub fn from_sinusoid(t: &SinusoidTask, device: Device) -> Self {
        Task {
            support: Batch::regression(&t.support_x, &t.support_y, device),
            query: Batch::regression(&t.query_x, &t.query_y, device),
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
