//! Command-line flags, parsed raw; `commands` resolves them into settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Perennial: lifelong learning built on meta-learning.
#[derive(Debug, Parser)]
#[command(name = "perennial", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// libtorch intra-op threads (default: libtorch's choice, one per core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Meta-train a learner.
    Train {
        /// The algorithm.
        #[command(subcommand)]
        algorithm: TrainAlgorithm,
    },
    /// Evaluate a trained run on sampled test episodes.
    Eval(EvalArgs),
    /// Evaluate a trained run on episodes stored as image folders.
    EvalEpisodes(EvalEpisodesArgs),
    /// Fine-tune a trained run on your own labelled images and save the adapted model.
    Adapt(AdaptArgs),
    /// Classify images with a model saved by `adapt`.
    Predict(PredictArgs),
    /// Download a data set's canonical archives (sha256-verified).
    Download(DownloadArgs),
    /// Benchmarks, one JSON line each, named as the lines of the Python peer benchmark
    /// (PyTorch, learn2learn) so that the two compare line by line.
    Bench(BenchArgs),
    /// Run a continual-learning strategy over a task stream: accuracy matrix, ACC, BWT,
    /// FWT, forgetting, learning speed, plots.
    Continual(ContinualArgs),
    /// Compare finished `continual` runs: one table (and mean ± std over seeds) and one
    /// plot.
    Report(ReportArgs),
    /// Serve a lifelong learner over HTTP: people teach it classes from a few images
    /// at any time, it answers at once, flags what it has not seen, and consolidates
    /// itself in the background. `perennial serve token` makes tokens.
    Serve(ServeArgs),
    /// Start N local ranks of a data-parallel run: `perennial launch --nproc 2 -- train
    /// maml ...` runs the command after `--` N times with RANK, WORLD_SIZE, LOCAL_RANK,
    /// MASTER_ADDR and MASTER_PORT set, as torchrun does (on a cluster, run the same
    /// command under torchrun --no-python, srun or mpirun instead).
    Launch(LaunchArgs),
}

/// `launch` flags.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Ranks to start on this machine.
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// The address rank 0 serves the rendezvous on.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Its port (default: a free port).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// The command every rank runs (`train ...`), after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `serve` flags.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    /// Tokens and rollback.
    #[command(subcommand)]
    pub action: Option<ServeAction>,
    /// The trained encoder run a new store starts from (`perennial train protonet ...`);
    /// an existing store keeps its own.
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// The store's folder: created on first start, opened after.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Where to listen (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Predictions and reads need no token (teaching still does).
    #[arg(long)]
    pub public_read: bool,
    /// Requests waiting for the learner at most; more are answered 503.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// The largest request body, in MiB.
    #[arg(long, default_value_t = 16)]
    pub max_body_mb: usize,
    /// Consolidate after this many new classes (0: only when asked or by rate).
    #[arg(long)]
    pub consolidate_every: Option<usize>,
    /// Episodes of a consolidation.
    #[arg(long)]
    pub consolidate_episodes: Option<usize>,
    /// The unknown threshold's quantile of held-out distances, in (0, 1].
    #[arg(long)]
    pub unknown_quantile: Option<f64>,
    /// Features averaged over translations of up to this many pixels.
    #[arg(long)]
    pub shift_radius: Option<usize>,
    /// Representation versions kept for rollback.
    #[arg(long, default_value_t = 5)]
    pub keep_versions: usize,
    /// How to classify: `prototypes` (one per class) or `knn:K` (the K nearest taught
    /// examples; `knn` is knn:10). Kept in the store.
    #[arg(long, value_name = "prototypes|knn:K")]
    pub classify: Option<String>,
    /// Keep the taught examples' features in an HNSW-indexed store on disk
    /// (STORE/examples): kNN predictions and consolidation's neighbour classes search
    /// it, and a restart reloads it instead of rebuilding it. Kept in the store.
    #[arg(long, conflicts_with = "no_example_index")]
    pub example_index: bool,
    /// Turn a store's example index off (its folder is removed at start).
    #[arg(long)]
    pub no_example_index: bool,
}

/// `serve` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServeAction {
    /// Print a new token (one line) and keep only its hash in the store; works on a
    /// new or an existing store, with or without a server running.
    Token {
        /// The store's folder.
        #[arg(long)]
        store: PathBuf,
        /// What the token may do: reader (predict, read) or writer (also teach,
        /// forget, correct, consolidate).
        #[arg(long)]
        role: String,
    },
    /// Make an earlier kept representation version current (server stopped; a running
    /// server takes `POST /v1/rollback`).
    Rollback {
        /// The store's folder.
        #[arg(long)]
        store: PathBuf,
        /// The version (default: the kept one before the current).
        #[arg(long)]
        to: Option<u64>,
    },
}

/// The trainable algorithms.
#[derive(Debug, Subcommand)]
pub enum TrainAlgorithm {
    /// Prototypical Networks (Snell et al. 2017).
    Protonet(ProtonetArgs),
    /// MAML with exact second-order meta-gradients (Finn et al. 2017).
    Maml(MamlArgs),
    /// First-order MAML.
    Fomaml(MamlArgs),
    /// ANIL: MAML adapting the head only (Raghu et al. 2020).
    Anil(MamlArgs),
    /// Meta-SGD: MAML with learned per-parameter inner learning rates (Li et al. 2017).
    Metasgd(MamlArgs),
    /// Reptile (Nichol et al. 2018).
    Reptile(ReptileArgs),
    /// OML: a representation on which a head learns classes online, one image at a
    /// time (Javed & White 2019); the encoder of `continual --strategy oml`.
    Oml(OmlArgs),
    /// Relation Networks (Sung et al. 2018): a learned metric, a relation module
    /// scoring (query, class) feature maps, trained on episodes with the MSE to the
    /// one-hot target.
    Relation(RelationArgs),
    /// Matching Networks (Vinyals et al. 2016): cosine attention over the support set;
    /// --fce for full-context embeddings.
    Matching(MatchingArgs),
    /// An embedding trained with the triplet loss on batches of --ways classes x
    /// (--shots + --queries) images (an episode is one batch); classifies by the
    /// nearest class mean.
    Triplet(TripletArgs),
    /// An embedding trained with the contrastive loss of Hadsell et al. 2006 on every
    /// pair of a batch, or the supervised-contrastive loss (--loss supcon); batches as
    /// for triplet.
    Contrastive(ContrastiveArgs),
    /// Memory-augmented networks (Santoro et al. 2016): an LSTM controller with an
    /// external memory read by content and written by least-recently-used access; each
    /// episode is one sequence of --ways classes x --instances images, each step shown
    /// with the previous step's label. --no-memory trains the LSTM baseline.
    Mann(MannArgs),
    /// A learned key-value memory (Kaiser et al. 2017): a Conv4 embedding whose
    /// normalised keys are written with their labels into a memory read by nearest
    /// neighbour, trained with the memory's margin loss on N-way K-shot episodes.
    #[command(name = "kv-memory")]
    KvMemory(KvMemoryArgs),
}

/// `train kv-memory` flags.
#[derive(Debug, Args)]
pub struct KvMemoryArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    /// Width of a key (20-way needs 256, the reference code's note says).
    #[arg(long, default_value_t = 256)]
    pub key_dim: usize,
    /// Memory slots per episode.
    #[arg(long, default_value_t = 8192)]
    pub memory_size: usize,
    /// Nearest keys the memory loss looks at.
    #[arg(long, default_value_t = 256)]
    pub knn: usize,
    /// The memory loss's margin α.
    #[arg(long, default_value_t = 0.1)]
    pub margin: f64,
}

/// `train mann` flags.
#[derive(Debug, Args)]
pub struct MannArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    /// Presentations of each class in a sequence (the paper: 10).
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    /// Episodes (sequences) per update.
    #[arg(long, default_value_t = 16)]
    pub meta_batch: u64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Multiply the learning rate by --lr-gamma every this many updates (0 = never).
    #[arg(long, default_value_t = 0)]
    pub lr_step: u64,
    /// Learning-rate decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// Clip the gradient's global norm to this (0 = off).
    #[arg(long, default_value_t = 10.0)]
    pub clip_norm: f64,
    /// LSTM controller units.
    #[arg(long, default_value_t = 200)]
    pub hidden: usize,
    /// Memory slots.
    #[arg(long, default_value_t = 128)]
    pub memory_slots: usize,
    /// Width of a memory slot.
    #[arg(long, default_value_t = 40)]
    pub memory_width: usize,
    /// Read heads.
    #[arg(long, default_value_t = 4)]
    pub read_heads: usize,
    /// Usage decay.
    #[arg(long, default_value_t = 0.95)]
    pub gamma: f64,
    /// No external memory: the LSTM baseline.
    #[arg(long)]
    pub no_memory: bool,
    /// A learned key strength per read head (β = 1 + softplus(W h + b) times the
    /// cosines before the read softmax, as in the Neural Turing Machine; the paper has
    /// none).
    #[arg(long)]
    pub key_strength: bool,
    /// A separate add vector per head, written in place of the key (as in the Neural
    /// Turing Machine; the paper writes the key itself).
    #[arg(long)]
    pub add_vector: bool,
    /// String labels of this many characters over 5 letters, drawn anew for every
    /// sequence (the paper's Table 2: 5, with --ways 15); 0 = one-hot labels.
    #[arg(long, default_value_t = 0)]
    pub label_chars: usize,
}

/// The optimiser and validation flags of the metric learners.
#[derive(Debug, Args)]
pub struct MetricArgs {
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Multiply the learning rate by --lr-gamma every this many episodes (0 = never).
    #[arg(long, default_value_t = 2000)]
    pub lr_step: u64,
    /// Learning-rate decay factor.
    #[arg(long, default_value_t = 0.5)]
    pub lr_gamma: f64,
    /// Classes per validation episode.
    #[arg(long, default_value_t = 5)]
    pub val_ways: usize,
    /// Support examples per class in validation (default: --shots).
    #[arg(long)]
    pub val_shots: Option<usize>,
}

/// `train relation` flags.
#[derive(Debug, Args)]
pub struct RelationArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
}

/// `train matching` flags.
#[derive(Debug, Args)]
pub struct MatchingArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    /// Full-context embeddings: a bidirectional LSTM over the support set and an
    /// attention LSTM for each query.
    #[arg(long)]
    pub fce: bool,
    /// Multiply the cosine similarities by this before the softmax (the paper: 1).
    #[arg(long, default_value_t = 10.0)]
    pub scale: f64,
}

/// `train triplet` flags.
#[derive(Debug, Args)]
pub struct TripletArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    /// The margin m (> 0).
    #[arg(long, default_value_t = 0.2)]
    pub margin: f64,
    /// Which triplets: all, hard (batch-hard) or semi-hard.
    #[arg(long, default_value = "semi-hard")]
    pub mining: String,
    /// Distance: euclidean (squared) or cosine (1 - cos).
    #[arg(long, default_value = "euclidean")]
    pub distance: String,
    /// Keep embeddings as they are instead of scaling them to unit length.
    #[arg(long)]
    pub no_normalize: bool,
}

/// `train contrastive` flags.
#[derive(Debug, Args)]
pub struct ContrastiveArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    #[command(flatten)]
    pub metric: MetricArgs,
    /// The loss: pairs (Hadsell et al. 2006) or supcon (Khosla et al. 2020).
    #[arg(long, default_value = "pairs")]
    pub loss: String,
    /// The margin of --loss pairs (> 0): pairs of two classes are pushed to this
    /// distance.
    #[arg(long, default_value_t = 1.0)]
    pub margin: f64,
    /// The temperature of --loss supcon (> 0).
    #[arg(long, default_value_t = 0.1)]
    pub temperature: f64,
    /// Distance of --loss pairs: euclidean or cosine (1 - cos).
    #[arg(long, default_value = "euclidean")]
    pub distance: String,
    /// Keep embeddings as they are instead of scaling them to unit length (--loss
    /// pairs; supcon always normalises).
    #[arg(long)]
    pub no_normalize: bool,
}

/// Where the data is.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// Data directory (default: $PERENNIAL_DATA, else ~/.cache/perennial/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Flags every `train` command shares.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The data set: omniglot, or sinusoid (regression; MAML family and Reptile).
    #[arg(long, default_value = "omniglot")]
    pub dataset: String,
    /// Split scheme: vinyals (1028/172/423 characters) or lake (964 / 659).
    #[arg(long, default_value = "vinyals")]
    pub splits: String,
    /// Classes to train on: train, or trainval (train and validation classes, no
    /// validation; Snell et al.'s final protocol).
    #[arg(long, default_value = "train")]
    pub train_split: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Classes per training episode (N).
    #[arg(long, default_value_t = 5)]
    pub ways: usize,
    /// Support examples per class (K; for sinusoid: support points per task).
    #[arg(long, default_value_t = 1)]
    pub shots: usize,
    /// Query examples per class (default 15; for sinusoid: query points, default 10).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Outer updates: training episodes for protonet, meta-iterations otherwise.
    #[arg(long, default_value_t = 10_000)]
    pub episodes: u64,
    /// Run directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of initialisation and sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate every this many updates (0 = never; sinusoid runs never validate).
    #[arg(long, default_value_t = 500)]
    pub val_every: u64,
    /// Episodes per validation.
    #[arg(long, default_value_t = 200)]
    pub val_episodes: u64,
    /// Write a resumable checkpoint every this many updates.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Append a training-metrics line every this many updates.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Rotate every training image by a random angle of up to this many degrees either
    /// way (0 = none; Santoro et al.'s augmentation, 30 in the reproductions of their
    /// MANN; below 45 on Omniglot's splits, whose quarter turns are classes of their
    /// own). Validation and test images are never jittered.
    #[arg(long, default_value_t = 0.0)]
    pub augment_rotate: f64,
    /// Shift every training image by a random vector of up to this many pixels (of the
    /// stored 28 x 28 image) along each axis (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub augment_shift: f64,
    /// Continue the run in --out where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Conv4 initialisation: torch (PyTorch's defaults) or maml (learn2learn's CNN4:
    /// Xavier-uniform convolutions, zero biases, batch-norm scales U(0, 1)).
    #[arg(long, default_value = "torch")]
    pub init: String,
}

/// `train protonet` flags.
#[derive(Debug, Args)]
pub struct ProtonetArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    /// Distance: euclidean (squared) or cosine.
    #[arg(long, default_value = "euclidean")]
    pub distance: String,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Multiply the learning rate by --lr-gamma every this many episodes (0 = never).
    #[arg(long, default_value_t = 2000)]
    pub lr_step: u64,
    /// Learning-rate decay factor.
    #[arg(long, default_value_t = 0.5)]
    pub lr_gamma: f64,
    /// Classes per validation episode (default: 5).
    #[arg(long, default_value_t = 5)]
    pub val_ways: usize,
    /// Support examples per class in validation (default: --shots).
    #[arg(long)]
    pub val_shots: Option<usize>,
    /// Episodes per update, their losses averaged (Snell et al.: 1). More than one lets
    /// a data-parallel run (`perennial launch`) share an update's episodes out.
    #[arg(long, default_value_t = 1)]
    pub meta_batch: u64,
}

/// `train maml|fomaml|anil|metasgd` flags.
#[derive(Debug, Args)]
pub struct MamlArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    /// Inner gradient steps in meta-training.
    #[arg(long, default_value_t = 1)]
    pub inner_steps: usize,
    /// Inner gradient steps when adapting at evaluation (default: 3; sinusoid: 10;
    /// Meta-SGD: --inner-steps).
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Inner learning rate (default 0.4; sinusoid 0.01; Meta-SGD: the initial rates).
    #[arg(long)]
    pub inner_lr: Option<f64>,
    /// Tasks per meta-update (default 32; sinusoid 25).
    #[arg(long)]
    pub meta_batch: Option<u64>,
    /// Outer (Adam) learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub meta_lr: f64,
    /// Hidden width of the sinusoid MLP (1-h-h-1).
    #[arg(long, default_value_t = 40)]
    pub hidden: usize,
    /// MAML++ multi-step loss: weigh the query loss after every inner step, annealed
    /// onto the last step over this many meta-iterations (0 = off; needs
    /// --inner-steps 2 or more).
    #[arg(long, default_value_t = 0)]
    pub msl_iterations: usize,
    /// MAML++ per-step batch norm: one meta-learned batch-norm scale and shift per
    /// inner step, not adapted in the inner loop (Conv4 only; not with ANIL).
    #[arg(long)]
    pub per_step_bn: bool,
}

/// `train reptile` flags.
#[derive(Debug, Args)]
pub struct ReptileArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    /// Inner SGD steps per training task.
    #[arg(long, default_value_t = 5)]
    pub inner_steps: usize,
    /// Inner steps when adapting at evaluation.
    #[arg(long, default_value_t = 10)]
    pub eval_steps: usize,
    /// Inner SGD learning rate (default 0.1; sinusoid 0.01).
    #[arg(long)]
    pub inner_lr: Option<f64>,
    /// Tasks per meta-update (default 5).
    #[arg(long, default_value_t = 5)]
    pub meta_batch: u64,
    /// Outer step size ε at the start.
    #[arg(long, default_value_t = 1.0)]
    pub meta_lr: f64,
    /// Keep ε constant instead of annealing it linearly to 0 over the run.
    #[arg(long)]
    pub no_anneal: bool,
    /// Hidden width of the sinusoid MLP (1-h-h-1).
    #[arg(long, default_value_t = 40)]
    pub hidden: usize,
}

/// `train oml` flags.
#[derive(Debug, Args)]
pub struct OmlArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    /// The online head's SGD step on each image (meta-training and meta-test).
    #[arg(long, default_value_t = 0.1)]
    pub inner_lr: f64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Multiply the learning rate by --lr-gamma every this many episodes (0 = never).
    #[arg(long, default_value_t = 0)]
    pub lr_step: u64,
    /// Learning-rate decay factor.
    #[arg(long, default_value_t = 0.5)]
    pub lr_gamma: f64,
}

/// `eval` flags.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Classes per episode.
    #[arg(long, default_value_t = 5)]
    pub ways: usize,
    /// Support examples per class.
    #[arg(long, default_value_t = 1)]
    pub shots: usize,
    /// Query examples per class (default 15; for a memory-augmented network: the run's
    /// own, so that a sequence shows each class as often as in training).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Episodes.
    #[arg(long, default_value_t = 1000)]
    pub episodes: u64,
    /// Split to evaluate on.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Leave out the rotated copies (90, 180, 270 degrees) that the Vinyals protocol adds
    /// to every split as classes: only the split's characters as drawn (Santoro et al.
    /// 2016 test on the 423 held-out characters).
    #[arg(long)]
    pub unrotated: bool,
    /// Seed of the evaluation episodes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data directory (default: the one the run was trained with).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `eval-episodes` flags.
#[derive(Debug, Args)]
pub struct EvalEpisodesArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Folder of episodes: DIR/<episode>/{support,query}/<class>/<image>.
    #[arg(long)]
    pub episodes_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `adapt` flags.
#[derive(Debug, Args)]
pub struct AdaptArgs {
    /// The trained run directory.
    pub run_dir: PathBuf,
    /// Labelled examples: DIR/<class>/<image> (any size; converted like Omniglot).
    #[arg(long)]
    pub support: PathBuf,
    /// Folder to write the adapted model to (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// kv-memory: keep the adapted memory in a persistent, indexed store (MODEL/store),
    /// which `predict` searches through its HNSW index; the default above 50,000
    /// support images.
    #[arg(long)]
    pub store: bool,
    /// Device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `predict` flags.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The adapted model folder (from `adapt`).
    pub model: PathBuf,
    /// Images to classify.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// One JSON object per image, with every class's probability.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `download` flags.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// What to download: omniglot (both archives and the Vinyals split files),
    /// omniglot-splits (the split files alone) or omniglot-small.
    pub dataset: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Source: a base URL, or an offline mirror (a file:// URL or a local folder holding
    /// the files flat, under their data-folder names). Default: the canonical sources.
    #[arg(long)]
    pub from: Option<String>,
}

/// `bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which family: protonet (protonet_5w1s15q, protonet_20w5s15q, data_5w1s15q,
    /// data_20w5s15q), maml (maml2_5w1s15q_mb32, fomaml_5w1s15q_mb32,
    /// maml_sine_10shot_mb25, data_maml_5w1s15q_mb32), metric (relation_5w1s15q,
    /// matching_5w1s15q, matching_fce_5w1s15q, triplet_semihard_p32k4), memory
    /// (mann_lrua_5c10i_b16, kvmem_5w1s15q, store_1m_d64: the persistent store's
    /// store_insert_1m_d64 and store_query_1m_d64_k10 lines, --iters vectors) or serve (serve_predict_c8,
    /// serve_learn_c4: `perennial serve` under load, with 1000 classes taught).
    pub family: String,
    /// Print JSON lines (the only format; kept for symmetry with the peer script).
    #[arg(long)]
    pub json: bool,
    /// Run only this benchmark.
    #[arg(long)]
    pub bench: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Internal: run one benchmark in this process.
    #[arg(long, hide = true)]
    pub child: bool,
    /// Data-parallel: run each benchmark on this many local ranks (processes joined by
    /// Gloo, as `perennial launch` starts them), each meta-step's tasks shared out and
    /// its gradients all-reduced; the line adds the all-reduce's time and bytes per step.
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// Tasks per meta-step instead of the benchmark's own (its `config.tasks`).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Timed iterations (default: as in the peer script); for serve, requests per
    /// client (default 250).
    #[arg(long)]
    pub iters: Option<usize>,
    /// serve: the encoder run to serve (default: a small one trained once in the
    /// cache).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// serve: also drive a peer server at this address with the same load
    /// (`scripts/bench_serve.sh` starts the FastAPI + PyTorch one).
    #[arg(long)]
    pub peer: Option<String>,
    /// serve: how the server classifies (`prototypes` or `knn:K`).
    #[arg(long, default_value = "prototypes", value_name = "prototypes|knn:K")]
    pub classify: String,
    /// serve: keep the taught examples in the server's HNSW-indexed example store.
    #[arg(long)]
    pub example_index: bool,
    /// serve: classes taught before the load.
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
}

/// `--ewc-lambda`'s default. The penalties of past tasks add up, so the largest stable
/// λ falls with the stream's length: on 20 Permuted-MNIST tasks at SGD 0.1, λ = 30
/// diverges at task 16 and 10 does not (README).
pub const EWC_LAMBDA: f64 = 10.0;

/// `--mer-beta`'s default (README: the best of a sweep on 5 Permuted-MNIST tasks).
pub const MER_BETA: f64 = 0.1;

/// `continual` flags.
#[derive(Debug, Args)]
pub struct ContinualArgs {
    /// The stream: permuted-mnist, rotated-mnist (GEM protocol: 20 tasks of 1000
    /// examples), split-mnist (5 tasks of two digits), or omniglot-classes (OML / ANML:
    /// evaluation characters one class at a time, 15 images each; needs --encoder).
    #[arg(long)]
    pub stream: String,
    /// The learner: naive (fine-tuning), joint (the same examples in one i.i.d. order:
    /// the upper bound), er (experience replay, reservoir buffer), ewc (elastic weight
    /// consolidation), agem (averaged GEM), mer (meta-experience replay) or lamaml
    /// (look-ahead MAML with learned rates), on every stream (on omniglot-classes, on a
    /// head over the encoder's features); and on omniglot-classes only, perennial
    /// (Perennial's lifelong learner: prototypes, unknown flag, meta-consolidation), oml
    /// (OML's online head on an OML encoder) or kv-memory (Kaiser et al.'s key-value
    /// memory of examples on a kv-memory encoder).
    #[arg(long, default_value = "naive")]
    pub strategy: String,
    /// Split-MNIST's scenario: task (the task is known at test time) or class.
    #[arg(long, default_value = "class")]
    pub scenario: String,
    /// Number of tasks (default: 20; split-mnist 5).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Training examples per task (default: 1000; split-mnist all).
    #[arg(long)]
    pub train_per_task: Option<usize>,
    /// Test examples per task (default: all).
    #[arg(long)]
    pub test_per_task: Option<usize>,
    /// Seed of the stream, the network and the buffer.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training batch size (one pass over each task); mer and lamaml also draw this
    /// many examples from their buffer per update (on omniglot-classes, lamaml's
    /// draw: images arrive one at a time).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Hidden layer widths of the MLP (784 → hidden → 10).
    #[arg(long, default_value = "100,100")]
    pub hidden: String,
    /// Replay buffer size in examples (er, mer, lamaml).
    #[arg(long, default_value_t = 200)]
    pub buffer: usize,
    /// EWC's penalty strength λ (ewc).
    #[arg(long, default_value_t = EWC_LAMBDA)]
    pub ewc_lambda: f64,
    /// Inner batches per incoming batch (mer's s).
    #[arg(long, default_value_t = 5)]
    pub mer_batches: usize,
    /// Within-batch Reptile factor (mer's β).
    #[arg(long, default_value_t = MER_BETA)]
    pub mer_beta: f64,
    /// Across-batch Reptile factor (mer's γ).
    #[arg(long, default_value_t = 1.0)]
    pub mer_gamma: f64,
    /// Meta-updates per incoming batch, each with a fresh replay draw (lamaml's
    /// glances).
    #[arg(long, default_value_t = 5)]
    pub glances: usize,
    /// La-MAML's initial per-parameter learning rate α₀ (lamaml).
    #[arg(long, default_value_t = 0.15)]
    pub lamaml_alpha: f64,
    /// The learning rate of La-MAML's rates α (lamaml).
    #[arg(long, default_value_t = 0.3)]
    pub lamaml_alpha_lr: f64,
    /// Examples of each task kept in A-GEM's episodic memory (agem).
    #[arg(long, default_value_t = 250)]
    pub memory_per_task: usize,
    /// Memory examples drawn for each A-GEM reference gradient (agem).
    #[arg(long, default_value_t = 256)]
    pub agem_sample: usize,
    #[command(flatten)]
    pub data: DataArgs,
    /// omniglot-classes: the meta-learned representation, a ProtoNet run trained on
    /// the background characters (`train protonet --splits lake`).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// omniglot-classes, perennial: an input is flagged unknown when it lies farther
    /// from every prototype than this quantile of the distances at which the learner
    /// has seen its own classes' new examples.
    #[arg(long, default_value_t = 0.95)]
    pub unknown_quantile: f64,
    /// omniglot-classes: each image's features are the mean of the encoder's features
    /// of its translations by up to this many pixels in each direction ((2R+1)²
    /// copies, zero fill), a fixed function of the image alone (0: the image only;
    /// default 1 for perennial, 0 for the other strategies).
    #[arg(long)]
    pub shift_radius: Option<usize>,
    /// omniglot-classes, perennial: classify by `prototypes` (one per class) or by the
    /// K nearest taught examples (`knn:K`; `knn` is knn:10).
    #[arg(long, default_value = "prototypes", value_name = "prototypes|knn:K")]
    pub classify: String,
    /// omniglot-classes, oml: the online head's learning rate at meta-test time
    /// (default: the step it was meta-trained with).
    #[arg(long)]
    pub oml_lr: Option<f64>,
    /// omniglot-classes, kv-memory: memory slots (default: one per training image of
    /// the stream, so nothing is overwritten).
    #[arg(long)]
    pub memory_size: Option<usize>,
    /// omniglot-classes, kv-memory: keep the memory in this persistent store directory
    /// (durable writes, HNSW search) instead of in RAM; a new run needs it empty or
    /// absent.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// omniglot-classes, perennial: meta-consolidate the encoder after every this many
    /// classes, on episodes replayed from the learnt classes' training images, then
    /// rebuild the prototypes (0: never; default 50 on a ProtoNet encoder, 0 on an
    /// OML one, which meta-consolidation does not train).
    #[arg(long)]
    pub consolidate_every: Option<usize>,
    /// Episodes per meta-consolidation.
    #[arg(long, default_value_t = 120)]
    pub consolidate_episodes: usize,
    /// Classes per consolidation episode (at most the classes learnt).
    #[arg(long, default_value_t = 20)]
    pub consolidate_ways: usize,
    /// Support images per class in a consolidation episode.
    #[arg(long, default_value_t = 5)]
    pub consolidate_shots: usize,
    /// Query images per class in a consolidation episode.
    #[arg(long, default_value_t = 10)]
    pub consolidate_queries: usize,
    /// Build each consolidation episode from groups of this many near classes: a
    /// random class and its nearest others by prototype distance, the classes the
    /// memory confuses (1: classes drawn at random).
    #[arg(long, default_value_t = 5)]
    pub consolidate_neighbours: usize,
    /// Translate each replayed image by a random shift of up to this many pixels
    /// (zero fill) each time it enters a consolidation episode (0: as stored).
    #[arg(long, default_value_t = 1)]
    pub consolidate_jitter: usize,
    /// Adam learning rate of meta-consolidation.
    #[arg(long, default_value_t = 1e-4)]
    pub consolidate_lr: f64,
    /// Run directory: result.json, matrix.csv, matrix.svg, accuracy.svg, and
    /// checkpoint/ while the run is unfinished.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the unfinished run in --out from its last checkpoint (after the last
    /// task it finished), with the same flags.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many tasks (classes on omniglot-classes), keeping the
    /// checkpoint, to continue later with --resume.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Also print {"acc", "bwt", "fwt", "forgetting", "matrix"} as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// `report` flags.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories of finished `continual` runs.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Write the plot of accuracy over the stream (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the table as JSON lines instead (one per run, then one per group).
    #[arg(long)]
    pub json: bool,
}
