//! Metric-based meta-learning: learn an embedding in which a simple distance classifies.

mod protonet;

pub use protonet::{ProtoNet, ProtoNetConfig};
