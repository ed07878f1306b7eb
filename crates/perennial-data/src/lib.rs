//! Data sets, transforms and N-way K-shot episode samplers for Perennial.
//!
//! This crate never touches tensors: images are plain `f32` buffers, so readers and
//! samplers are cheap to test exhaustively and can run on any thread. The library crate
//! (`perennial`) turns an [`Episode`] into tensors.
//!
//! * [`omniglot`]: Omniglot from the `.npz` archives or from the canonical PNG layout
//!   (folder or zip), the Vinyals and Lake splits, rotations as classes.
//! * [`mnist`]: the MNIST IDX format (`.gz` or plain).
//! * [`folder`]: a generic image-folder data set (one subfolder per class).
//! * [`episode`]: the episode sampler, a pure function of `(seed, index)`, and a
//!   prefetching iterator that prepares episodes on a worker thread.
//! * [`sinusoid`]: Finn et al.'s sinusoid regression tasks, pure in `(seed, index)`.
//! * [`stream`]: continual-learning task streams (Permuted-, Rotated-, Split-MNIST).
//! * [`classinc`]: the Omniglot class-incremental stream of OML and ANML.
//! * [`download`]: fetching the canonical archives with sha256 verification.

pub mod classinc;
pub mod dataset;
pub mod download;
pub mod episode;
pub mod error;
pub mod folder;
pub mod imageops;
pub mod mnist;
mod npy;
pub mod omniglot;
pub mod paths;
pub mod rng;
pub mod sinusoid;
pub mod stream;

pub use dataset::{ClassEntry, ClassSet};
pub use episode::{Episode, EpisodeSampler, EpisodeSpec, Jitter, Prefetcher};
pub use error::{Error, Result};
pub use rng::Rng;
