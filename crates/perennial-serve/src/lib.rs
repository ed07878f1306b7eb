//! `perennial serve`: Perennial's lifelong learner behind HTTP, learning while people
//! use it.
//!
//! People teach classes from a few images at any time (`POST /v1/classes/{label}/examples`),
//! get answers at once (`POST /v1/predict`) with an *unknown* flag for what the learner
//! has not met, correct it (`POST /v1/feedback`), and the learner's own policy decides
//! when to consolidate its representation, in the background, as a new version.
//!
//! - [`store`]: the store (SQLite, WAL, synchronous commits; versions as safetensors),
//!   the one source of truth the learner is rebuilt from on start.
//! - [`worker`]: the one thread that owns the learner, micro-batches predictions and
//!   group-commits teachings.
//! - [`api`]: the axum routes; [`auth`]: tokens (argon2).
//!
//! ```no_run
//! let running = perennial_serve::start(perennial_serve::Options::new("store", Some("runs/enc")))?;
//! println!("listening on http://{}", running.addr());
//! running.wait()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod api;
pub mod auth;
pub mod bench;
pub mod client;
pub mod error;
pub mod openapi;
pub mod state;
pub mod store;
pub mod worker;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use perennial::lifelong::{
    encoder, Classify, ConsolidationConfig, ConsolidationPolicy, LearnerConfig, LifelongLearner,
};
use tokio::sync::{mpsc, oneshot};

pub use api::Limits;
pub use store::{Role, Store};
pub use worker::WorkerConfig;

/// Learner settings given on the command line; `None` keeps the store's (or, for a
/// new store, the service's default).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Consolidate after this many new classes (0: never by count).
    pub consolidate_every: Option<usize>,
    /// Episodes of a consolidation.
    pub consolidate_episodes: Option<usize>,
    /// The unknown threshold's quantile.
    pub unknown_quantile: Option<f64>,
    /// Shift averaging radius.
    pub shift_radius: Option<usize>,
    /// Consolidation's seed.
    pub seed: Option<u64>,
    /// How predictions are made (prototypes or the k nearest examples).
    pub classify: Option<Classify>,
    /// Keep the examples in an indexed store on disk (`STORE/examples`): kNN
    /// classification and consolidation's neighbour classes search it.
    pub example_index: Option<bool>,
}

/// The learner settings of a new store: the library's defaults, with consolidation
/// episodes of 2 shots and 3 queries, so that a class taught 5 examples takes part.
pub fn default_config() -> LearnerConfig {
    LearnerConfig {
        consolidation: ConsolidationConfig {
            shots: 2,
            queries: 3,
            ..ConsolidationConfig::default()
        },
        ..LearnerConfig::default()
    }
}

impl Settings {
    /// `config` with these settings applied.
    pub fn apply(&self, mut config: LearnerConfig) -> LearnerConfig {
        if let Some(n) = self.consolidate_every {
            config.policy = ConsolidationPolicy {
                every_new_classes: n,
                ..config.policy
            };
        }
        if let Some(n) = self.consolidate_episodes {
            config.consolidation.episodes = n;
        }
        if let Some(q) = self.unknown_quantile {
            config.unknown_quantile = q;
        }
        if let Some(r) = self.shift_radius {
            config.shift_radius = r;
        }
        if let Some(s) = self.seed {
            config.seed = s;
        }
        if let Some(c) = self.classify {
            config.classify = c;
        }
        config
    }
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The store's folder (created on first start).
    pub store: PathBuf,
    /// The trained encoder run a new store starts from.
    pub encoder: Option<PathBuf>,
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// Predictions and reads without a token.
    pub public_read: bool,
    /// Requests waiting for the learner at most (then 503).
    pub queue: usize,
    /// Request bounds.
    pub limits: Limits,
    /// The learner task's settings.
    pub worker: WorkerConfig,
    /// Learner settings to set.
    pub settings: Settings,
}

impl Options {
    /// Defaults: loopback port 8080, tokens needed, a queue of 256.
    pub fn new(store: impl Into<PathBuf>, encoder: Option<impl Into<PathBuf>>) -> Options {
        Options {
            store: store.into(),
            encoder: encoder.map(Into::into),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_read: false,
            queue: 256,
            limits: Limits::default(),
            worker: WorkerConfig::default(),
            settings: Settings::default(),
        }
    }
}

/// Takes the store's lock: one server per store.
fn lock(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(store::LOCK);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another server is running on {} (it holds {})",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow!("cannot lock {}: {e}", path.display())),
    }
}

/// Opens the store in `options.store`, or creates it from `options.encoder`.
fn open_or_create(options: &Options) -> Result<Store> {
    let dir = &options.store;
    if Store::exists(dir) {
        let store = Store::open(dir)?;
        if let Some(run) = &options.encoder {
            let given = encoder::open_run(run, 1e-4)?;
            let ours = store.encoder(0)?;
            if given.spec() != ours.spec() || !same_weights(&given.state(), &ours.state()) {
                bail!(
                    "{} was created from another encoder than {}: leave --encoder out to \
                     serve the store as it is, or give a new store",
                    dir.display(),
                    run.display()
                );
            }
        }
        let config = options.settings.apply(store.config()?);
        if config != store.config()? {
            store.set_config(&config)?;
        }
        if let Some(on) = options.settings.example_index {
            store.set_example_index(on)?;
        }
        Ok(store)
    } else {
        let run = options.encoder.as_ref().ok_or_else(|| {
            anyhow!(
                "{} holds no store yet: give --encoder RUN (a trained encoder run) to create it",
                dir.display()
            )
        })?;
        let config = options.settings.apply(default_config());
        config.validate()?;
        let enc = encoder::open_run(run, config.consolidation_lr)?;
        // The settings and the encoder suit each other (a frozen encoder cannot
        // consolidate) before anything is written.
        LifelongLearner::new(encoder::copy(enc.as_ref())?, config.clone())?;
        let store = Store::create(dir, enc.as_ref(), &config)?;
        store.set_example_index(options.settings.example_index.unwrap_or(false))?;
        Ok(store)
    }
}

fn same_weights(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, ta), (nb, tb))| na == nb && ta.size() == tb.size() && ta.equal(tb))
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<()>>>,
    worker: Option<JoinHandle<()>>,
    _lock: File,
}

/// Starts a server: opens (or creates) the store, rebuilds the learner from it, and
/// listens. Returns once it accepts connections.
pub fn start(options: Options) -> Result<Running> {
    let lock = lock(&options.store)?;
    let store = open_or_create(&options)?;
    let side = store.side();
    let (tx, rx) = mpsc::channel(options.queue.max(1));
    let shared = Arc::new(state::Shared::default());
    let worker = worker::Worker::new(
        store,
        shared.clone(),
        tx.downgrade(),
        options.worker.clone(),
    )?;
    let worker = std::thread::Builder::new()
        .name("learner".into())
        .spawn(move || worker.run(rx))
        .context("cannot start the learner thread")?;
    if options.public_read {
        tracing::info!("predictions and reads need no token (--public-read)");
    }
    if auth::count(&options.store)? == 0 {
        tracing::warn!(
            "the store has no token yet: make one with `perennial serve token --store {} --role writer`",
            options.store.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(options.addr))
        .with_context(|| format!("cannot listen on {}", options.addr))?;
    let addr = listener.local_addr()?;
    let app = Arc::new(api::App {
        tx,
        shared,
        dir: options.store.clone(),
        public_read: options.public_read,
        side,
        limits: options.limits,
        verified: auth::Verified::default(),
        started: Instant::now(),
        uploads: Arc::new(tokio::sync::Semaphore::new(api::UPLOADS)),
        verifying: tokio::sync::Semaphore::new(2),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let router = api::router(app);
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        tokio::select! {
                            _ = stopped => {}
                            _ = tokio::signal::ctrl_c() => {
                                tracing::info!("interrupted: stopping");
                            }
                        }
                    })
                    .await
                    .context("the server failed")
            })
        })
        .context("cannot start the server thread")?;
    Ok(Running {
        addr,
        stop: Some(stop),
        server: Some(server),
        worker: Some(worker),
        _lock: lock,
    })
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until interrupted (Ctrl-C), then stops.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    /// Stops accepting, finishes what was asked, and waits for the learner task.
    pub fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        let r = match self.server.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("the server thread panicked")),
            None => Ok(()),
        };
        if let Some(w) = self.worker.take() {
            w.join()
                .map_err(|_| anyhow!("the learner thread panicked"))?;
        }
        r
    }
}

/// Makes an earlier kept version current in a store no server is running on (a
/// running server takes `POST /v1/rollback`); returns the version now current.
pub fn rollback(dir: &Path, version: Option<u64>) -> Result<u64> {
    let _lock = lock(dir).context("roll back a running server with POST /v1/rollback")?;
    let store = Store::open(dir)?;
    let target = match version {
        Some(v) => v,
        None => store.previous_kept()?,
    };
    store.check_kept(target)?;
    // Its weights load (and match their checksum) before the store names it.
    store.encoder(target)?;
    store.set_current(target)?;
    Ok(target)
}
