//! `perennial adapt` (fine-tune a trained run on a user's labelled examples and save
//! the adapted model) and `perennial predict` (classify images with it).
//!
//! An adapted model is a folder:
//!
//! ```text
//! MODEL/model.json            format, algorithm, class names, image size
//! MODEL/config.toml           the run's configuration (to rebuild the learner)
//! MODEL/meta.safetensors      the meta-parameters it was adapted from
//! MODEL/adapted.safetensors   what adaptation produced (prototypes or fast weights)
//! ```
//!
//! A kv-memory model adapted with `--store` (or from more than [`STORE_ABOVE`] images)
//! holds its memory in `MODEL/store/`, a persistent store with an HNSW index, in place
//! of `adapted.safetensors`, and `predict` reads it through the index.

use std::path::Path;

use anyhow::{bail, Context, Result};
use perennial::checkpoint::{RunConfig, RunDir};
use perennial::data::folder;
use perennial::meta::memory::kv::write_memory_to_store;
use perennial::meta::memory::{KeyValueMemory, KvMemory};
use perennial::meta::MetaLearner;
use perennial::nn::params::{load_named, save_named};
use perennial::tensors::Batch;
use perennial::train::build_learner;
use perennial_store::{Store, StoreConfig};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::cli::{AdaptArgs, PredictArgs};

const FORMAT: u64 = 1;

/// Support images above which a kv-memory model keeps its memory in a store.
pub const STORE_ABOVE: usize = 50_000;

/// The store folder of a model.
const STORE_DIR: &str = "store";

/// Adapts a run to the classes of `--support` and writes the model folder.
pub fn adapt(a: AdaptArgs) -> Result<()> {
    let device = super::device(&a.device)?;
    let run = RunDir::open(&a.run_dir)?;
    let config = run.config()?;
    let size = super::image_size(&config, &a.run_dir)?;
    let support = folder::load_labelled(&a.support, size)
        .with_context(|| format!("reading the support set {}", a.support.display()))?;
    let ways = support.classes.len();
    if ways < 2 {
        bail!(
            "{}: {ways} class folder(s); adapting needs at least 2 (DIR/<class>/<image>)",
            a.support.display()
        );
    }
    if let Some(outputs) = config.fixed_ways() {
        if outputs != ways {
            bail!(
                "{}: {ways} classes, but this {} run has a {outputs}-way head; give exactly {outputs} class folders",
                a.support.display(),
                config.algorithm
            );
        }
    }
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{}: already exists and is not empty; choose another --out",
            a.out.display()
        );
    }
    let mut learner = build_learner(&config, device)?;
    learner.load_model_state(&run.load_best()?)?;
    let labels: Vec<i64> = support.labels.iter().map(|&l| l as i64).collect();
    let batch = Batch::from_pixels(&support.images, &labels, size, size, ways, device);
    let in_store =
        config.algorithm.kv_memory().is_some() && (a.store || support.labels.len() > STORE_ABOVE);
    if a.store && config.algorithm.kv_memory().is_none() {
        bail!(
            "--store: only a kv-memory model keeps a memory of examples; this run is {}",
            config.algorithm
        );
    }
    let adapted = learner.adapt(&batch);
    // Write beside, then rename, so a model folder is complete or absent.
    let tmp = a.out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let meta = json!({
        "format": FORMAT,
        "algorithm": config.algorithm.name(),
        "classes": support.classes,
        "image_size": size,
        "support_images": support.labels.len(),
        "run": std::fs::canonicalize(&a.run_dir).unwrap_or(a.run_dir.clone()),
        "store": in_store,
    });
    std::fs::write(tmp.join("model.json"), serde_json::to_string_pretty(&meta)?)?;
    std::fs::write(tmp.join("config.toml"), toml::to_string_pretty(&config)?)?;
    save_named(&learner.model_state(), &tmp.join("meta.safetensors"))?;
    if in_store {
        let state = adapted.state();
        let get = |name: &str| {
            state
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .with_context(|| format!("the adapted memory has no {name}"))
        };
        let memory = KeyValueMemory {
            keys: get("keys")?,
            values: get("values")?,
            ages: get("ages")?,
        };
        let dir = tmp.join(STORE_DIR);
        let mut store = Store::open(&dir, StoreConfig::new(memory.keys.size()[1] as usize))
            .with_context(|| format!("creating {}", dir.display()))?;
        write_memory_to_store(&memory, &mut store)
            .with_context(|| format!("writing {}", dir.display()))?;
        store
            .close()
            .with_context(|| format!("closing {}", dir.display()))?;
    } else {
        save_named(&adapted.state(), &tmp.join("adapted.safetensors"))?;
    }
    if a.out.exists() {
        std::fs::remove_dir(&a.out).with_context(|| format!("replacing {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "adapted {} to {ways} classes from {} images; model in {}",
        config.algorithm,
        support.labels.len(),
        a.out.display()
    );
    Ok(())
}

fn read_model_json(dir: &Path) -> Result<(Vec<String>, usize, bool)> {
    let path = dir.join("model.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: not an adapted model (made by `perennial adapt`)",
            dir.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: corrupt", path.display()))?;
    if v["format"].as_u64() != Some(FORMAT) {
        bail!("{}: unknown model format {}", path.display(), v["format"]);
    }
    let classes: Vec<String> = serde_json::from_value(v["classes"].clone())
        .with_context(|| format!("{}: bad class list", path.display()))?;
    let size = v["image_size"]
        .as_u64()
        .with_context(|| format!("{}: no image size", path.display()))? as usize;
    Ok((classes, size, v["store"].as_bool().unwrap_or(false)))
}

/// Classifies images with an adapted model.
pub fn predict(a: PredictArgs) -> Result<()> {
    let device = super::device(&a.device)?;
    let (classes, size, in_store) = read_model_json(&a.model)?;
    let cfg_path = a.model.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let config: RunConfig =
        toml::from_str(&text).with_context(|| format!("{}: corrupt", cfg_path.display()))?;
    let meta = load_named(&a.model.join("meta.safetensors"))?;
    // A memory in a store is read through the store's index by the kv-memory network;
    // any other model by its learner. (Declared here: the adapted model borrows them.)
    let net: KvMemory;
    let mut learner: Box<dyn MetaLearner>;
    let adapted = match (in_store, config.algorithm.kv_memory()) {
        (false, _) => {
            learner = build_learner(&config, device)?;
            learner.load_model_state(&meta)?;
            learner.load_adapted(&load_named(&a.model.join("adapted.safetensors"))?)?
        }
        (true, Some(k)) => {
            let mut kv = KvMemory::new(k.clone(), config.seed, device)?;
            kv.load_model_state(&meta)?;
            net = kv;
            let dir = a.model.join(STORE_DIR);
            if !dir.is_dir() {
                bail!("{}: missing (the model's memory)", dir.display());
            }
            let store = Store::open(&dir, StoreConfig::new(net.config().key_dim))
                .with_context(|| format!("opening {}", dir.display()))?;
            net.adapted_in_store(store, classes.len())?
        }
        (true, None) => bail!(
            "{}: a store-backed model of a {} run (only kv-memory keeps one)",
            a.model.display(),
            config.algorithm
        ),
    };
    if a.images.is_empty() {
        bail!("no images given");
    }
    let mut pixels = Vec::with_capacity(a.images.len() * size * size);
    for p in &a.images {
        pixels.extend(folder::load_image(p, size).map_err(anyhow::Error::from)?);
    }
    let x = Tensor::from_slice(&pixels)
        .view([a.images.len() as i64, 1, size as i64, size as i64])
        .to_device(device);
    let probs = adapted.predict(&x).softmax(-1, Kind::Float);
    if probs.size()[1] as usize != classes.len() {
        bail!(
            "{}: the model predicts {} classes but lists {}",
            a.model.display(),
            probs.size()[1],
            classes.len()
        );
    }
    let probs: Vec<Vec<f32>> = (0..a.images.len() as i64)
        .map(|i| Vec::<f32>::try_from(probs.get(i)).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    for (path, p) in a.images.iter().zip(&probs) {
        let (best, prob) =
            p.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        if a.json {
            let all: serde_json::Map<String, serde_json::Value> = classes
                .iter()
                .zip(p)
                .map(|(c, &v)| (c.clone(), json!(v)))
                .collect();
            println!(
                "{}",
                json!({ "image": path, "class": classes[best], "probability": prob, "probabilities": all })
            );
        } else {
            println!("{}\t{}\t{:.3}", path.display(), classes[best], prob);
        }
    }
    Ok(())
}
