//! Named parameter sets and safetensors files.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// An ordered set of named tensors: a network's parameters or its buffers
/// (batch-norm running statistics).
#[derive(Debug, Default)]
pub struct ParamSet {
    entries: Vec<(String, Tensor)>,
}

impl ParamSet {
    /// An empty set.
    pub fn new() -> Self {
        ParamSet {
            entries: Vec::new(),
        }
    }

    /// Appends a tensor under `name`.
    pub fn push(&mut self, name: impl Into<String>, t: Tensor) {
        self.entries.push((name.into(), t));
    }

    /// The tensor named `name`.
    ///
    /// # Panics
    /// If there is none: backbones only ask for names they created.
    pub fn get(&self, name: &str) -> &Tensor {
        self.try_get(name)
            .unwrap_or_else(|| panic!("no parameter named {name}"))
    }

    /// The tensor named `name`, if any.
    pub fn try_get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Names and tensors, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// The tensors, in order.
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.entries.iter().map(|(_, t)| t).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar values.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.numel()).sum()
    }

    /// A new set with `f` applied to every tensor (names kept).
    pub fn map(&self, mut f: impl FnMut(&str, &Tensor) -> Tensor) -> ParamSet {
        ParamSet {
            entries: self
                .entries
                .iter()
                .map(|(n, t)| (n.clone(), f(n, t)))
                .collect(),
        }
    }

    /// Deep copies, detached from any graph.
    pub fn detached_copy(&self) -> ParamSet {
        self.map(|_, t| t.detach().copy())
    }

    /// Marks every tensor as requiring gradients (for parameters).
    pub fn requires_grad(self) -> ParamSet {
        ParamSet {
            entries: self
                .entries
                .into_iter()
                .map(|(n, t)| (n, t.set_requires_grad(true)))
                .collect(),
        }
    }

    /// Named tensors with a prefix, for saving several sets in one file.
    pub fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|(n, t)| (format!("{prefix}{n}"), t.detach().to_device(Device::Cpu)))
            .collect()
    }

    /// Copies values from `named` (with `prefix`) into this set, in place. Every tensor
    /// of the set must be present with the same shape.
    pub fn load_named(&mut self, named: &[(String, Tensor)], prefix: &str) -> Result<()> {
        for (name, t) in &mut self.entries {
            let key = format!("{prefix}{name}");
            let src = named
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, s)| s)
                .ok_or_else(|| Error::Parameters {
                    name: key.clone(),
                    reason: "missing from checkpoint".into(),
                })?;
            if src.size() != t.size() {
                return Err(Error::Parameters {
                    name: key,
                    reason: format!(
                        "checkpoint has shape {:?}, model expects {:?}",
                        src.size(),
                        t.size()
                    ),
                });
            }
            tch::no_grad(|| t.copy_(&src.to_kind(t.kind()).to_device(t.device())));
        }
        Ok(())
    }

    /// Saves to a safetensors file (atomically: written beside, then renamed).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_named(&self.named(""), path)
    }

    /// Moves every tensor to `device` and `kind`.
    pub fn to(&self, device: Device, kind: Kind) -> ParamSet {
        self.map(|_, t| t.to_device(device).to_kind(kind))
    }
}

/// Writes named tensors to `path` in safetensors format, atomically.
pub fn save_named(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    Tensor::write_safetensors(named, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::run(path, e.to_string()))?;
    Ok(())
}

/// Reads named tensors from a safetensors file, with a clear error when it is missing
/// or corrupt.
pub fn load_named(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::run(path, "checkpoint not found"));
    }
    Tensor::read_safetensors(path)
        .map_err(|e| Error::run(path, format!("not a readable safetensors checkpoint: {e}")))
}
