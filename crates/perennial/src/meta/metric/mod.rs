//! Metric-based meta-learning: learn an embedding in which a simple distance classifies.
//!
//! - [`ProtoNet`]: nearest class mean, trained on episodes (Snell et al. 2017);
//! - [`Matching`]: attention over the support set by cosine similarity, with optional
//!   full-context embeddings (Vinyals et al. 2016);
//! - [`Relation`]: a learned metric, a relation module scoring (query, class) feature
//!   maps (Sung et al. 2018);
//! - [`PairEmbedding`]: an embedding trained with a triplet, contrastive or
//!   supervised-contrastive loss ([`losses`]) on labelled batches, classifying by the
//!   nearest class mean.

pub mod losses;
mod matching;
mod pairs;
mod protonet;
mod relation;

pub use matching::{Matching, MatchingConfig};
pub use pairs::{PairEmbedding, PairEmbeddingConfig, PairLoss};
pub use protonet::{ProtoNet, ProtoNetConfig};
pub use relation::{Relation, RelationConfig};
