//! `perennial bench`: the same work as the Python peer benchmark (`peer_bench.py`: plain
//! PyTorch and learn2learn), under the same names, one JSON line per benchmark. Each benchmark runs in a fresh child process so
//! its `peak_rss_mb` is its own.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use perennial::data::omniglot::{Split, SplitScheme};
use perennial::data::sinusoid::{SinusoidSampler, SinusoidSpec};
use perennial::data::{paths, EpisodeSampler, EpisodeSpec};
use perennial::meta::memory::{KvMemory, KvMemoryConfig, Mann, MannConfig};
use perennial::meta::metric::{
    Matching, MatchingConfig, PairEmbedding, PairEmbeddingConfig, ProtoNet, ProtoNetConfig,
    Relation, RelationConfig,
};
use perennial::meta::optimization::fastnet::FastNetConfig;
use perennial::meta::optimization::maml::{Maml, MamlConfig, MamlVariant};
use perennial::meta::MetaLearner;
use perennial::tensors::Task;
use serde_json::json;
use tch::Device;

use crate::cli::BenchArgs;

#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// Sampling alone.
    Data,
    /// One ProtoNet training episode.
    Protonet,
    /// One MAML meta-iteration on Omniglot.
    Maml(MamlVariant),
    /// One MAML meta-iteration on sinusoid tasks (K = shots, MLP 1-40-40-1).
    Sine,
    /// One Relation Network training episode.
    Relation,
    /// One Matching Networks training episode (with full-context embeddings or not).
    Matching {
        /// Full-context embeddings.
        fce: bool,
    },
    /// One semi-hard triplet step on a batch of ways x (shots + queries) images
    /// (margin 0.2, unit-length embeddings, squared Euclidean distance).
    Triplet,
    /// One memory-augmented network update on `tasks` sequences of ways x (shots +
    /// queries) images (controller 200, memory 128 x 40, 4 heads, LRUA, γ 0.95).
    Mann,
    /// One key-value memory episode (Conv4 + linear to 128, memory 8192, k 256,
    /// margin 0.1).
    KvMemory,
    /// The persistent store: insert `--iters` (default one million) 64-d vectors of a
    /// seeded Gaussian mixture, then time single k = 10 queries at the HNSW search
    /// width that reaches recall@10 ≥ 0.99 against exact search (two lines).
    Store,
}

struct Bench {
    name: &'static str,
    spec: EpisodeSpec,
    work: Work,
    /// Tasks per iteration (the meta-batch).
    tasks: usize,
    iters: usize,
    warmup: usize,
}

const PROTONET: &[Bench] = &[
    Bench {
        name: "protonet_5w1s15q",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Protonet,
        tasks: 1,
        iters: 50,
        warmup: 5,
    },
    Bench {
        name: "protonet_20w5s15q",
        spec: EpisodeSpec {
            ways: 20,
            shots: 5,
            queries: 15,
        },
        work: Work::Protonet,
        tasks: 1,
        iters: 50,
        warmup: 5,
    },
    Bench {
        name: "data_5w1s15q",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Data,
        tasks: 1,
        iters: 200,
        warmup: 10,
    },
    Bench {
        name: "data_20w5s15q",
        spec: EpisodeSpec {
            ways: 20,
            shots: 5,
            queries: 15,
        },
        work: Work::Data,
        tasks: 1,
        iters: 200,
        warmup: 10,
    },
];

const MAML: &[Bench] = &[
    Bench {
        name: "maml2_5w1s15q_mb32",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Maml(MamlVariant::Maml),
        tasks: 32,
        iters: 10,
        warmup: 2,
    },
    Bench {
        name: "fomaml_5w1s15q_mb32",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Maml(MamlVariant::Fomaml),
        tasks: 32,
        iters: 10,
        warmup: 2,
    },
    Bench {
        name: "maml_sine_10shot_mb25",
        spec: EpisodeSpec {
            ways: 1,
            shots: 10,
            queries: 10,
        },
        work: Work::Sine,
        tasks: 25,
        iters: 200,
        warmup: 20,
    },
    Bench {
        name: "data_maml_5w1s15q_mb32",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Data,
        tasks: 32,
        iters: 50,
        warmup: 5,
    },
];

const METRIC: &[Bench] = &[
    Bench {
        name: "relation_5w1s15q",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Relation,
        tasks: 1,
        iters: 50,
        warmup: 5,
    },
    Bench {
        name: "matching_5w1s15q",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Matching { fce: false },
        tasks: 1,
        iters: 50,
        warmup: 5,
    },
    Bench {
        name: "matching_fce_5w1s15q",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::Matching { fce: true },
        tasks: 1,
        iters: 50,
        warmup: 5,
    },
    Bench {
        // P = 32 classes x K = 4 images: one support and three query images each.
        name: "triplet_semihard_p32k4",
        spec: EpisodeSpec {
            ways: 32,
            shots: 1,
            queries: 3,
        },
        work: Work::Triplet,
        tasks: 1,
        iters: 50,
        warmup: 5,
    },
];

const MEMORY: &[Bench] = &[
    Bench {
        // 16 sequences of 5 classes x 10 instances.
        name: "mann_lrua_5c10i_b16",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 9,
        },
        work: Work::Mann,
        tasks: 16,
        iters: 30,
        warmup: 3,
    },
    Bench {
        name: "kvmem_5w1s15q",
        spec: EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        work: Work::KvMemory,
        tasks: 1,
        iters: 50,
        warmup: 5,
    },
    Bench {
        // Prints store_insert_1m_d64 and store_query_1m_d64_k10.
        name: "store_1m_d64",
        spec: EpisodeSpec {
            ways: 0,
            shots: 0,
            queries: 0,
        },
        work: Work::Store,
        tasks: 0,
        iters: 1_000_000,
        warmup: 0,
    },
];

/// Runs the benchmarks of a family.
pub fn bench(a: BenchArgs) -> Result<()> {
    let family = match a.family.as_str() {
        "protonet" => PROTONET,
        "maml" => MAML,
        "metric" => METRIC,
        "memory" => MEMORY,
        "serve" => return serve(&a),
        other => bail!("bench family {other:?}: known: protonet, maml, metric, memory, serve"),
    };
    let selected: Vec<&Bench> = match &a.bench {
        Some(name) => {
            let b = family.iter().find(|b| b.name == name).with_context(|| {
                format!(
                    "--bench {name}: known: {}",
                    family.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
                )
            })?;
            vec![b]
        }
        None => family.iter().collect(),
    };
    if a.child {
        return run_one(selected[0], &a);
    }
    if a.ranks == 0 {
        bail!("invalid --ranks = 0: must be at least 1");
    }
    if a.ranks > 1 {
        if let Some(b) = selected
            .iter()
            .find(|b| matches!(b.work, Work::Store | Work::Data))
        {
            bail!(
                "--ranks {}: {} has no meta-step to share (give --bench a training benchmark)",
                a.ranks,
                b.name
            );
        }
    }
    let exe = std::env::current_exe()?;
    for b in selected {
        let mut child_args: Vec<String> = ["bench", &a.family, "--child", "--bench", b.name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(d) = &a.data.data_dir {
            child_args.extend(["--data-dir".into(), d.display().to_string()]);
        }
        if let Some(n) = a.iters {
            child_args.extend(["--iters".into(), n.to_string()]);
        }
        if let Some(n) = a.tasks {
            child_args.extend(["--tasks".into(), n.to_string()]);
        }
        let threads = std::env::var("PERENNIAL_BENCH_THREADS").ok();
        if a.ranks > 1 {
            // Rank 0 prints the line; the ranks inherit this process's stdout.
            super::launch::spawn_ranks(
                crate::cli::LaunchArgs {
                    nproc: a.ranks,
                    master_addr: "127.0.0.1".into(),
                    master_port: None,
                    command: child_args,
                },
                threads.as_deref().map(str::parse).transpose()?,
                true,
            )
            .with_context(|| format!("benchmark {} on {} ranks", b.name, a.ranks))?;
            continue;
        }
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(&child_args);
        if let Some(t) = &threads {
            cmd.args(["--threads", t]);
        }
        let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
        if !out.status.success() {
            bail!("benchmark {} failed", b.name);
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// `bench serve`: the server in this process, its clients in threads (the lines'
/// `peak_rss_mb` is the process's: server and clients).
fn serve(a: &BenchArgs) -> Result<()> {
    if a.classes < 2 {
        bail!("--classes must be at least 2");
    }
    let data = perennial::data::paths::data_dir(a.data.data_dir.as_deref());
    let options = perennial_serve::bench::BenchOptions {
        work: perennial::data::paths::default_data_dir().with_file_name("bench-serve"),
        data,
        encoder: a.encoder.clone(),
        classes: a.classes,
        requests: a.iters.unwrap_or(250),
        peer: a.peer.clone(),
        classify: perennial::lifelong::Classify::parse(&a.classify)?,
        example_index: a.example_index,
    };
    for line in perennial_serve::bench::run(&options, || Some(super::peak_rss_mb()))? {
        println!("{line}");
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The store's two lines (`perennial_store::bench`), on all of libtorch's threads.
fn store(a: &BenchArgs) -> Result<()> {
    let options = perennial_store::bench::BenchOptions {
        n: a.iters.unwrap_or(1_000_000),
        threads: tch::get_num_threads().max(1) as usize,
        ..Default::default()
    };
    let (insert, query) = perennial_store::bench::bench_store(&options)?;
    for mut line in [insert, query] {
        line["peak_rss_mb"] = json!(super::peak_rss_mb());
        println!("{line}");
    }
    Ok(())
}

fn run_one(b: &Bench, a: &BenchArgs) -> Result<()> {
    if b.work == Work::Store {
        return store(a);
    }
    let iters = a.iters.unwrap_or(b.iters);
    if iters == 0 {
        bail!("invalid --iters = 0: must be at least 1");
    }
    let device = Device::Cpu;
    // The peer's setup: the Vinyals train split, 1028 characters x 4 rotations. Not timed.
    let episodes = if b.work == Work::Sine {
        None
    } else {
        let data = paths::data_dir(a.data.data_dir.as_deref());
        let set = super::omniglot_split(&data, SplitScheme::Vinyals, Split::Train)?;
        Some(EpisodeSampler::new(set, b.spec, 0)?)
    };
    let sines = SinusoidSampler::new(SinusoidSpec::new(b.spec.shots, b.spec.queries), 0)?;
    let rss_setup = super::peak_rss_mb();
    let mut learner: Option<Box<dyn MetaLearner>> = match b.work {
        Work::Data | Work::Store => None,
        Work::Protonet => Some(Box::new(ProtoNet::new(
            ProtoNetConfig::default(),
            0,
            device,
        )?)),
        Work::Maml(variant) => Some(Box::new(Maml::new(
            MamlConfig {
                variant,
                net: FastNetConfig {
                    outputs: b.spec.ways,
                    ..Default::default()
                },
                inner_steps: 1,
                inner_lr: 0.4,
                ..Default::default()
            },
            0,
            device,
        )?)),
        Work::Sine => Some(Box::new(Maml::new(
            MamlConfig {
                variant: MamlVariant::Maml,
                net: FastNetConfig::sinusoid(40),
                inner_steps: 1,
                inner_lr: 0.01,
                ..Default::default()
            },
            0,
            device,
        )?)),
        Work::Relation => Some(Box::new(Relation::new(
            RelationConfig::default(),
            0,
            device,
        )?)),
        Work::Matching { fce } => Some(Box::new(Matching::new(
            MatchingConfig {
                fce,
                ..Default::default()
            },
            0,
            device,
        )?)),
        // The defaults: semi-hard mining, margin 0.2, unit length, squared Euclidean.
        Work::Triplet => Some(Box::new(PairEmbedding::new(
            PairEmbeddingConfig::default(),
            0,
            device,
        )?)),
        // The peer clips no gradient.
        Work::Mann => Some(Box::new(Mann::new(
            MannConfig {
                clip_norm: 0.0,
                ..Default::default()
            },
            0,
            device,
        )?)),
        Work::KvMemory => Some(Box::new(KvMemory::new(
            KvMemoryConfig {
                key_dim: 128,
                ..Default::default()
            },
            0,
            device,
        )?)),
    };
    let n_tasks = a.tasks.unwrap_or(b.tasks);
    if n_tasks == 0 && b.work != Work::Data {
        bail!("invalid --tasks = 0: must be at least 1");
    }
    // Under `--ranks`: this rank's share of every meta-step's tasks, and the hand-off.
    let dp = match perennial::dist::join()? {
        Some(g) => Some(perennial::dist::DataParallel::with_flag(
            g,
            n_tasks as u64,
            "--tasks",
        )?),
        None => None,
    };
    let (lo, hi) = dp.as_ref().map_or((0, n_tasks), |d| {
        let (lo, hi) = d.share();
        (lo as usize, hi as usize)
    });
    if let (Some(dp), Some(l)) = (&dp, learner.as_mut()) {
        l.set_gradient_reducer(Some(dp.reducer()))?;
    }
    let mut traffic_before = perennial::dist::Traffic::default();
    let mut times = Vec::with_capacity(iters);
    let mut data_times = Vec::with_capacity(iters);
    let mut window = Instant::now();
    for i in 0..(b.warmup + iters) {
        if i == b.warmup {
            if let Some(dp) = &dp {
                // Every rank starts the timed steps together.
                dp.barrier()?;
                traffic_before = dp.traffic();
                window = Instant::now();
            }
        }
        let t0 = Instant::now();
        let tasks: Vec<Task> = (lo..hi)
            .map(|j| {
                let index = (i * n_tasks + j) as u64;
                match &episodes {
                    Some(s) => Task::from_episode(&s.sample(index), device),
                    None => Task::from_sinusoid(&sines.sample(index), device),
                }
            })
            .collect();
        let t_data = t0.elapsed().as_secs_f64();
        if let Some(l) = learner.as_mut() {
            // Sampling, forward, backward, the Adam step and reading the loss, as timed by the peer.
            let r = l.meta_step(&tasks);
            std::hint::black_box(r.loss);
            if let Some(e) = dp
                .as_ref()
                .and_then(perennial::dist::DataParallel::take_failure)
            {
                return Err(e.into());
            }
        }
        let t = t0.elapsed().as_secs_f64();
        if i >= b.warmup {
            times.push(t);
            data_times.push(t_data);
        }
    }
    let timed_window_s = window.elapsed().as_secs_f64();
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);
    let data_med = median(&mut data_times);
    let trains = b.work != Work::Data;
    let mut parallel = json!(null);
    if let Some(dp) = &dp {
        let t = dp.traffic();
        let calls = (t.calls - traffic_before.calls).max(1) as f64;
        let per_step_s = (t.seconds - traffic_before.seconds) / calls;
        parallel = json!({
            "ranks": dp.world_size(),
            "tasks_per_rank": hi - lo,
            "allreduce_ms_per_step": per_step_s * 1e3,
            "allreduce_bytes_per_step": (t.bytes - traffic_before.bytes) as f64 / calls,
            "allreduce_share": per_step_s / mean,
        });
        dp.barrier()?;
        if !dp.is_root() {
            return Ok(());
        }
    }
    println!(
        "{}",
        json!({
            "bench": b.name,
            "impl": "perennial",
            "per_sec": 1.0 / med,
            "median_s": med,
            "min_s": min,
            "mean_s": mean,
            "n": iters,
            "warmup": b.warmup,
            "peak_rss_mb": super::peak_rss_mb(),
            "rss_after_setup_mb": rss_setup,
            "data_median_s": if trains { json!(data_med) } else { json!(null) },
            "data_share": if trains { json!(data_med / med) } else { json!(null) },
            "threads": tch::get_num_threads(),
            "timed_window_s": timed_window_s,
            "config": { "ways": b.spec.ways, "shots": b.spec.shots, "queries": b.spec.queries, "tasks": n_tasks },
            "learner": learner.as_ref().map(|l| l.name()),
            "data_parallel": parallel,
        })
    );
    Ok(())
}
