//! Perennial's lifelong learner, used from Rust through its library API alone.
//!
//! ```text
//! cargo run --release -p perennial --example lifelong [-- ENCODER_RUN]
//! ```
//!
//! It teaches 20 Omniglot evaluation characters (5 drawings each) to a
//! [`LifelongLearner`], predicts 15 held-out drawings of each, checks how often the
//! drawings of 10 characters it was never taught are flagged *unknown*, consolidates,
//! then saves the learner, loads it back and checks that it predicts the same.
//!
//! The encoder is a ProtoNet run trained on the background characters
//! (`perennial train protonet --splits lake ...`). Without `ENCODER_RUN` the example
//! meta-trains a small one first (300 episodes, about a minute on 2 cores) and keeps it
//! under `target/lifelong-example/` for the next time. Omniglot is read from
//! `$PERENNIAL_DATA` (or the per-user data directory that `perennial download omniglot`
//! fills).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use perennial::data::classinc::{ClassStream, ClassStreamSpec};
use perennial::data::omniglot::{Omniglot, Split, SplitScheme};
use perennial::data::paths;
use perennial::data::stream::Part;
use perennial::lifelong::{ConsolidationConfig, LearnerConfig, LifelongLearner};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Characters taught, drawings taught per character, characters never taught.
const TAUGHT: usize = 20;
const SHOTS: usize = 5;
const UNSEEN: usize = 10;

fn run() -> perennial::Result<()> {
    let data = data_dir()?;
    let encoder = match std::env::args().nth(1) {
        Some(run) => PathBuf::from(run),
        None => small_encoder(&data)?,
    };

    // The learner: the encoder's embedding, one prototype per character. With 5
    // drawings per character, consolidation episodes take 2 support and 3 query each.
    let config = LearnerConfig {
        consolidation: ConsolidationConfig {
            episodes: 30,
            ways: 10,
            shots: 2,
            queries: 3,
            ..ConsolidationConfig::default()
        },
        ..LearnerConfig::default()
    };
    let mut learner = LifelongLearner::from_run(&encoder, config)?;

    // Characters the encoder never saw: 30 evaluation characters, 5 drawings to teach
    // and 15 held out each.
    let omniglot = Omniglot::load(&data)?;
    let evaluation = omniglot.split(SplitScheme::Lake, Split::Test, &paths::splits_dir(&data))?;
    let stream = ClassStream::new(
        Arc::new(evaluation),
        ClassStreamSpec {
            classes: TAUGHT + UNSEEN,
            train_per_class: SHOTS,
            seed: 0,
        },
    )?;
    for c in 0..TAUGHT {
        let drawings = learner.images(&stream.images(c, Part::Train))?;
        learner.learn(stream.class_name(c), &drawings)?;
    }
    println!(
        "taught {} characters, {SHOTS} drawings each",
        learner.known()
    );

    let report = |learner: &LifelongLearner| -> perennial::Result<(f64, f64, f64)> {
        let (mut right, mut known_flagged, mut n) = (0, 0, 0);
        for c in 0..TAUGHT {
            for p in learner.predict(&learner.images(&stream.images(c, Part::Test))?)? {
                right += usize::from(p.label == stream.class_name(c));
                known_flagged += usize::from(p.unknown);
                n += 1;
            }
        }
        let (mut flagged, mut m) = (0, 0);
        for c in TAUGHT..TAUGHT + UNSEEN {
            for p in learner.predict(&learner.images(&stream.images(c, Part::Test))?)? {
                flagged += usize::from(p.unknown);
                m += 1;
            }
        }
        Ok((
            right as f64 / n as f64,
            known_flagged as f64 / n as f64,
            flagged as f64 / m as f64,
        ))
    };
    let (accuracy, known_flagged, novel_flagged) = report(&learner)?;
    println!(
        "accuracy on {} held-out drawings of the taught characters: {:.1}% ({TAUGHT}-way, chance {:.1}%)",
        TAUGHT * (20 - SHOTS),
        100.0 * accuracy,
        100.0 / TAUGHT as f64
    );
    println!(
        "flagged unknown: {:.1}% of the taught characters' drawings, {:.1}% of {UNSEEN} characters never taught",
        100.0 * known_flagged,
        100.0 * novel_flagged
    );
    let query = learner
        .images(&stream.images(0, Part::Test))?
        .narrow(0, 0, 1);
    let p = &learner.predict(&query)?[0];
    let top: Vec<String> = p
        .top
        .iter()
        .map(|r| format!("{} {:.2}", r.label, r.probability))
        .collect();
    println!(
        "one drawing of {}: {} (top: {})",
        stream.class_name(0),
        p.label,
        top.join(", ")
    );

    // The policy consolidates every 50 new classes; ask for one now.
    let c = learner.consolidate()?;
    let (after, _, _) = report(&learner)?;
    println!(
        "consolidated ({} episodes, {:.1} s, representation version {}): accuracy {:.1}%",
        learner.config().consolidation.episodes,
        c.seconds,
        c.version,
        100.0 * after
    );

    // Save atomically, load back: the same predictions.
    let dir = workspace_target().join("lifelong-example").join("learner");
    learner.save(&dir)?;
    let loaded = LifelongLearner::load(&dir)?;
    let x = learner.images(&stream.images(1, Part::Test))?;
    if loaded.predict(&x)? != learner.predict(&x)? {
        return Err(perennial::Error::run(
            &dir,
            "the loaded learner predicts otherwise",
        ));
    }
    println!(
        "saved to {} and loaded back: same predictions",
        dir.display()
    );
    Ok(())
}

/// The data directory: `$PERENNIAL_DATA` or the per-user one, else the workspace's
/// shared data folder when there is one.
fn data_dir() -> perennial::Result<PathBuf> {
    let user = paths::data_dir(None);
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    [user.clone(), beside]
        .into_iter()
        .find(|d| d.join("omniglot").is_dir())
        .ok_or_else(|| {
            perennial::Error::run(
                user,
                "no Omniglot here: run `perennial download omniglot` or set PERENNIAL_DATA",
            )
        })
}

/// The workspace's `target/` folder.
fn workspace_target() -> PathBuf {
    let t = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::canonicalize(&t).unwrap_or(t)
}

/// A ProtoNet meta-trained on the background characters (20-way 5-shot, 300
/// episodes), trained once and kept.
fn small_encoder(data: &Path) -> perennial::Result<PathBuf> {
    let dir = workspace_target().join("lifelong-example").join("encoder");
    if !dir.join("config.toml").exists() {
        println!(
            "meta-training a small encoder on the background characters (300 episodes) in {}",
            dir.display()
        );
    }
    let clock = std::time::Instant::now();
    perennial::train::omniglot_encoder(data, &dir, 300)?;
    if clock.elapsed().as_secs() > 5 {
        println!("trained in {:.0} s", clock.elapsed().as_secs_f64());
    }
    Ok(dir)
}
