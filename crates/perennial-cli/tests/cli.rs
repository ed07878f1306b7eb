//! The `perennial` binary end to end: training, kill and resume, evaluation, user
//! episodes, download, and every bad-input path (one line on stderr, exit status 2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_perennial"));
    c.arg("-q");
    c
}

fn shared_data() -> Option<PathBuf> {
    perennial_data::paths::shared_test_data()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running perennial")
}

/// Asserts a clean failure: exit status 2 and exactly one line on stderr containing
/// every `needle`, with no panic or backtrace.
fn assert_fails(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2, got {:?}; stderr: {err}",
        out.status
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "panic: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

fn train_cmd(data: &Path, out: &Path, episodes: u64) -> Command {
    train_cmd_val(data, out, episodes, 20)
}

fn train_cmd_val(data: &Path, out: &Path, episodes: u64, val_every: u64) -> Command {
    let mut c = bin();
    c.args([
        "train",
        "protonet",
        "--ways",
        "5",
        "--shots",
        "1",
        "--queries",
        "5",
    ])
    .args([
        "--episodes",
        &episodes.to_string(),
        "--checkpoint-every",
        "5",
        "--log-every",
        "5",
    ])
    .args([
        "--val-every",
        &val_every.to_string(),
        "--val-episodes",
        "5",
        "--seed",
        "3",
        "--device",
        "cpu",
    ])
    .arg("--data-dir")
    .arg(data)
    .arg("--out")
    .arg(out);
    c
}

fn checkpoint_tensors(run: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    // Compare the raw safetensors payloads by name via tch.
    tch::Tensor::read_safetensors(run.join("checkpoint.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t
                .to_kind(tch::Kind::Float)
                .flatten(0, -1)
                .try_into()
                .unwrap();
            (n, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect()
}

/// Starts `cmd`, SIGKILLs it once `run_dir` holds a checkpoint at update `at` or later,
/// and checks it had not finished all `total` updates.
fn kill_after_checkpoint(cmd: &mut Command, run_dir: &Path, at: u64, total: u64) {
    let mut child = cmd.spawn().unwrap();
    let t = Instant::now();
    loop {
        let state = std::fs::read_to_string(run_dir.join("state.json")).unwrap_or_default();
        let next = serde_json::from_str::<serde_json::Value>(&state)
            .ok()
            .and_then(|v| v["next_episode"].as_u64())
            .unwrap_or(0);
        if next >= at {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("state.json")).unwrap())
            .unwrap();
    assert!(
        state["next_episode"].as_u64().unwrap() < total,
        "the run finished before it was killed"
    );
}

#[test]
fn killed_maml_run_resumes_exactly() {
    // Sinusoid MAML: checkpoints hold θ and Adam's state; the task sequence is a pure
    // function of the update index and the meta-batch.
    let dir = tempfile::tempdir().unwrap();
    let cmd = |out: &Path| {
        let mut c = bin();
        c.args(["--threads", "1", "train", "maml", "--dataset", "sinusoid"])
            .args([
                "--episodes",
                "3000",
                "--meta-batch",
                "5",
                "--checkpoint-every",
                "50",
            ])
            .arg("--out")
            .arg(out);
        c
    };
    let (straight, killed) = (dir.path().join("straight"), dir.path().join("killed"));
    assert!(run(&mut cmd(&straight)).status.success());
    kill_after_checkpoint(&mut cmd(&killed), &killed, 50, 3000);
    let out = run(bin()
        .args(["--threads", "1", "train", "maml", "--resume", "--out"])
        .arg(&killed));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        checkpoint_tensors(&straight),
        checkpoint_tensors(&killed),
        "resumed MAML run diverged"
    );
}

#[test]
fn killed_run_resumes_on_the_same_episode_sequence() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let killed = dir.path().join("killed");
    assert!(run(&mut train_cmd(&data, &straight, 40)).status.success());

    kill_after_checkpoint(&mut train_cmd(&data, &killed, 40), &killed, 5, 40);

    // Resuming without --resume is refused; with it, the run completes.
    assert_fails(
        &run(&mut train_cmd(&data, &killed, 40)),
        &["already holds a run", "--resume"],
    );
    let mut resume = bin();
    resume
        .args(["train", "protonet", "--resume", "--device", "cpu", "--out"])
        .arg(&killed);
    let out = run(&mut resume);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        checkpoint_tensors(&straight),
        checkpoint_tensors(&killed),
        "resumed run diverged"
    );
    let episodes = |p: &Path| -> Vec<u64> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("loss").is_some())
            .map(|v| v["episode"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        episodes(&killed),
        (1..=8).map(|i| i * 5).collect::<Vec<_>>()
    );
    assert_eq!(episodes(&straight), episodes(&killed));

    // eval --json prints fractions in [0, 1].
    let out = run(bin()
        .args(["eval", "--episodes", "20", "--json", "--device", "cpu"])
        .arg(&straight));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc) && acc > 0.3, "{v}");
    assert!(v["ci95"].as_f64().unwrap() > 0.0 && v["ci95"].as_f64().unwrap() < 0.2);
    assert_eq!(v["episodes"], 20);

    // Impossible episodes are refused with the parameter named.
    assert_fails(
        &run(bin()
            .args(["eval", "--ways", "5000", "--device", "cpu"])
            .arg(&straight)),
        &["5000-way", "test split", "1692 classes"],
    );
    // --unrotated: the split's 423 characters without their rotated copies.
    assert_fails(
        &run(bin()
            .args(["eval", "--unrotated", "--ways", "500", "--device", "cpu"])
            .arg(&straight)),
        &["500-way", "test split", "only 423 classes"],
    );
    assert_fails(
        &run(bin()
            .args([
                "eval",
                "--shots",
                "10",
                "--queries",
                "15",
                "--device",
                "cpu",
            ])
            .arg(&straight)),
        &["25 are needed", "has 20 examples"],
    );
    assert_fails(
        &run(bin()
            .args(["eval", "--split", "nope", "--device", "cpu"])
            .arg(&straight)),
        &["--split", "nope"],
    );

    // User-supplied episodes as image folders.
    let eps = dir.path().join("episodes");
    write_user_episodes(&data, &eps, 3);
    let out = run(bin()
        .args(["eval-episodes", "--json", "--device", "cpu"])
        .arg(&straight)
        .arg("--episodes-dir")
        .arg(&eps));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["episodes"], 3);
    assert_eq!(v["per_episode"].as_array().unwrap().len(), 3);
    assert!(v["accuracy"].as_f64().unwrap() > 0.3, "{v}");
    // Adapt to a user's support folder, save, reload and classify its query images.
    adapt_and_predict(&straight, &eps, dir.path(), 0.5);
    // A query class without support examples is reported.
    std::fs::create_dir_all(eps.join("ep0/query/stranger")).unwrap();
    std::fs::copy(
        eps.join("ep0/query/a/0.png"),
        eps.join("ep0/query/stranger/0.png"),
    )
    .unwrap();
    assert_fails(
        &run(bin()
            .args(["eval-episodes", "--device", "cpu"])
            .arg(&straight)
            .arg("--episodes-dir")
            .arg(&eps)),
        &["\"stranger\"", "no support examples"],
    );
    // A corrupt image is reported by path.
    std::fs::remove_dir_all(eps.join("ep0/query/stranger")).unwrap();
    std::fs::write(eps.join("ep1/support/b/0.png"), b"garbage").unwrap();
    assert_fails(
        &run(bin()
            .args(["eval-episodes", "--device", "cpu"])
            .arg(&straight)
            .arg("--episodes-dir")
            .arg(&eps)),
        &["ep1/support/b/0.png", "cannot decode"],
    );
}

/// `adapt` on `eps/ep0/support`, `predict` on `eps/ep0/query/*/*.png`: the predictions
/// name the right classes at least `min_acc` of the time; every image gets a line.
fn adapt_and_predict(run_dir: &Path, eps: &Path, tmp: &Path, min_acc: f64) {
    let model = tmp.join(format!(
        "model-{}",
        run_dir.file_name().unwrap().to_string_lossy()
    ));
    let out = run(bin()
        .args(["adapt", "--device", "cpu"])
        .arg(run_dir)
        .arg("--support")
        .arg(eps.join("ep0/support"))
        .arg("--out")
        .arg(&model));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "model.json",
        "config.toml",
        "meta.safetensors",
        "adapted.safetensors",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    // Adapting again into the same folder is refused.
    assert_fails(
        &run(bin()
            .args(["adapt", "--device", "cpu"])
            .arg(run_dir)
            .arg("--support")
            .arg(eps.join("ep0/support"))
            .arg("--out")
            .arg(&model)),
        &["not empty"],
    );
    let mut images = Vec::new();
    for class in ["a", "b", "c", "d", "e"] {
        for j in 0..2 {
            images.push((class, eps.join(format!("ep0/query/{class}/{j}.png"))));
        }
    }
    let mut cmd = bin();
    cmd.args(["predict", "--json", "--device", "cpu"])
        .arg(&model);
    for (_, p) in &images {
        cmd.arg(p);
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), images.len());
    let mut right = 0;
    for ((class, _), v) in images.iter().zip(&lines) {
        let p = v["probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        let total: f64 = v["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{v}");
        right += (v["class"] == *class) as usize;
    }
    let acc = right as f64 / images.len() as f64;
    assert!(acc >= min_acc, "predict accuracy {acc}: {lines:?}");
    // Predicting one image alone gives the same answer as in a batch.
    let single = run(bin()
        .args(["predict", "--json", "--device", "cpu"])
        .arg(&model)
        .arg(&images[3].1));
    let v: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
    assert_eq!(v["class"], lines[3]["class"]);
    assert!(
        (v["probability"].as_f64().unwrap() - lines[3]["probability"].as_f64().unwrap()).abs()
            < 1e-4
    );
    // Bad input.
    assert_fails(
        &run(bin()
            .args(["predict", "--device", "cpu"])
            .arg(tmp)
            .arg(&images[0].1)),
        &["not an adapted model"],
    );
    assert_fails(
        &run(bin()
            .args(["predict", "--device", "cpu"])
            .arg(&model)
            .arg(tmp.join("missing.png"))),
        &["missing.png"],
    );
}

#[test]
fn maml_family_trains_adapts_and_predicts_on_omniglot() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("episodes");
    write_user_episodes(&data, &eps, 1);
    // The last entry is MAML with both MAML++ options.
    let plus_plus: &[&str] = &[
        "--inner-steps",
        "2",
        "--msl-iterations",
        "10",
        "--per-step-bn",
    ];
    for (label, algorithm, extra) in [
        ("maml", "maml", &[][..]),
        ("fomaml", "fomaml", &[]),
        ("anil", "anil", &[]),
        ("metasgd", "metasgd", &[]),
        ("reptile", "reptile", &[]),
        ("maml++", "maml", plus_plus),
    ] {
        let run_dir = dir.path().join(label);
        let out = run(bin()
            .args([
                "train",
                algorithm,
                "--ways",
                "5",
                "--shots",
                "1",
                "--queries",
                "5",
            ])
            .args(["--episodes", "30", "--meta-batch", "2", "--val-every", "15"])
            .args([
                "--val-episodes",
                "5",
                "--checkpoint-every",
                "10",
                "--device",
                "cpu",
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--out")
            .arg(&run_dir)
            .args(extra));
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
        assert!(
            config.contains(&format!("algorithm = \"{algorithm}\"")),
            "{config}"
        );
        if !extra.is_empty() {
            assert!(config.contains("per_step_bn = true"), "{config}");
            assert!(config.contains("msl_iterations = 10"), "{config}");
        }
        let out = run(bin()
            .args(["eval", "--episodes", "10", "--json", "--device", "cpu"])
            .arg(&run_dir));
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let acc = v["accuracy"].as_f64().unwrap();
        // 30 small updates are too few to learn much (learning is tested in the
        // library's tests); this checks the pipeline end to end.
        eprintln!("{label}: 30 updates, 5-way 1-shot accuracy {acc:.3}");
        assert!((0.0..=1.0).contains(&acc), "{v}");
        // The head is 5-way: other ways are refused with the reason.
        assert_fails(
            &run(bin()
                .args(["eval", "--ways", "20", "--device", "cpu"])
                .arg(&run_dir)),
            &["5-way head", "--ways 5"],
        );
        adapt_and_predict(&run_dir, &eps, dir.path(), 0.0);
    }
    // A support folder with the wrong number of classes.
    std::fs::remove_dir_all(eps.join("ep0/support/e")).unwrap();
    assert_fails(
        &run(bin()
            .args(["adapt", "--device", "cpu"])
            .arg(dir.path().join("maml"))
            .arg("--support")
            .arg(eps.join("ep0/support"))
            .arg("--out")
            .arg(dir.path().join("m4"))),
        &["4 classes", "5-way head"],
    );
}

#[test]
fn sinusoid_maml_trains_and_reports_mse_with_plots() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("sine");
    let out = run(bin()
        .args(["train", "maml", "--dataset", "sinusoid", "--shots", "10"])
        .args(["--episodes", "300", "--checkpoint-every", "100"])
        .arg("--out")
        .arg(&run_dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(bin()
        .args(["eval", "--episodes", "50", "--json"])
        .arg(&run_dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["mse"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "K = 5, 10 x steps 0, 1, 10: {v}");
    let mse = |k: u64, s: u64| {
        rows.iter()
            .find(|r| r["shots"] == k && r["steps"] == s)
            .unwrap()["mse"]
            .as_f64()
            .unwrap()
    };
    for k in [5, 10] {
        assert!(mse(k, 10) < mse(k, 0), "adapting does not help: {v}");
    }
    for k in [5, 10] {
        let svg = std::fs::read_to_string(run_dir.join(format!("sinusoid-k{k}.svg"))).unwrap();
        assert!(svg.contains("true function") && svg.contains("after 10 steps"));
    }
    // Regression runs do not classify images.
    assert_fails(
        &run(bin()
            .args(["adapt", "--support"])
            .arg(dir.path())
            .arg("--out")
            .arg(dir.path().join("m"))
            .arg(&run_dir)),
        &["does not classify images"],
    );
    assert_fails(
        &run(bin()
            .args(["train", "protonet", "--dataset", "sinusoid", "--out"])
            .arg(dir.path().join("p"))),
        &["sinusoid", "regression"],
    );
    // Bad MAML settings, each refused naming the flag (one run folder each).
    let refused: [(&[&str], &[&str]); 5] = [
        (
            &["--dataset", "sinusoid", "--inner-lr", "0"],
            &["--inner-lr"],
        ),
        (&["--dataset", "cifar"], &["cifar", "omniglot or sinusoid"]),
        (
            &["--dataset", "sinusoid", "--meta-batch", "0"],
            &["--meta-batch"],
        ),
        (
            &["--dataset", "sinusoid", "--msl-iterations", "5"],
            &["--msl-iterations", "--inner-steps 2"],
        ),
        (
            &["--dataset", "sinusoid", "--per-step-bn"],
            &["--per-step-bn", "no batch norm"],
        ),
    ];
    for (i, (flags, needles)) in refused.into_iter().enumerate() {
        assert_fails(
            &run(bin()
                .args(["train", "maml"])
                .args(flags)
                .arg("--out")
                .arg(dir.path().join(format!("bad{i}")))),
            needles,
        );
    }
}

/// Writes `n` 5-way episodes (3 support and 2 query images per class) as PNG files of
/// a different size from Omniglot test characters, the way a user would bring them.
fn write_user_episodes(data: &Path, root: &Path, n: usize) {
    use perennial_data::omniglot::{Omniglot, Split, SplitScheme};
    let o = Omniglot::load(data).unwrap();
    let test = o
        .split(
            SplitScheme::Vinyals,
            Split::Test,
            &perennial_data::paths::splits_dir(data),
        )
        .unwrap();
    for e in 0..n {
        for (k, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let class = &test.classes[e * 5 + k];
            for (j, &img) in class.examples.iter().take(5).enumerate() {
                let part = if j < 3 { "support" } else { "query" };
                let d = root.join(format!("ep{e}/{part}/{name}"));
                std::fs::create_dir_all(&d).unwrap();
                let px: Vec<u8> = test
                    .image(img)
                    .iter()
                    .map(|&v| ((1.0 - v) * 255.0).round() as u8)
                    .collect();
                let g = image::GrayImage::from_raw(28, 28, px).unwrap();
                let big =
                    image::imageops::resize(&g, 56, 56, image::imageops::FilterType::Triangle);
                big.save(d.join(format!("{}.png", j % 3))).unwrap();
            }
        }
    }
}

#[test]
fn bad_input_gets_one_clear_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.path().join("run");
    // Missing data.
    let o = run(bin()
        .args([
            "train",
            "protonet",
            "--episodes",
            "2",
            "--device",
            "cpu",
            "--data-dir",
        ])
        .arg(&empty)
        .arg("--out")
        .arg(&out));
    assert_fails(&o, &["images_background", "perennial download omniglot"]);
    // ... and leaves no run directory behind, so the same command works once the data
    // is there (it used to leave one that only --resume would open).
    assert!(
        !out.exists(),
        "a run that could not load its data was created"
    );
    // Bad flag values.
    let o = run(bin()
        .args(["train", "protonet", "--splits", "bogus", "--out"])
        .arg(dir.path().join("r2")));
    assert_fails(&o, &["--splits", "bogus"]);
    let o = run(bin()
        .args(["train", "protonet", "--ways", "1", "--out"])
        .arg(dir.path().join("r3")));
    assert_fails(&o, &["--ways 1"]);
    let o = run(bin()
        .args(["train", "protonet", "--lr=-1", "--out"])
        .arg(dir.path().join("r4")));
    assert_fails(&o, &["lr", "must be positive"]);
    let o = run(bin()
        .args(["train", "protonet", "--distance", "manhattan", "--out"])
        .arg(dir.path().join("r5")));
    assert_fails(&o, &["--distance", "manhattan"]);
    // Runs that are not there or are corrupt.
    assert_fails(
        &run(bin().arg("eval").arg(dir.path().join("nope"))),
        &["run directory not found"],
    );
    assert_fails(
        &run(bin().arg("eval").arg(&empty)),
        &["not a run directory"],
    );
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("config.toml"), "algorithm = 3").unwrap();
    assert_fails(
        &run(bin().arg("eval").arg(&bad)),
        &["config.toml", "corrupt config"],
    );
    // Unknown download and bench targets.
    assert_fails(
        &run(bin().args(["download", "imagenet"])),
        &["imagenet", "omniglot"],
    );
    assert_fails(&run(bin().args(["bench", "nope"])), &["nope", "protonet"]);
    // Regression (issue 18): --threads 0 panicked inside libtorch with a backtrace.
    assert_fails(
        &run(bin().args(["--threads", "0", "eval"]).arg(&empty)),
        &["--threads", "at least 1"],
    );
    // clap's own errors also exit 2.
    assert_eq!(
        run(bin().args(["train", "protonet", "--ways", "x", "--out", "y"]))
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn corrupt_checkpoint_is_reported() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("run");
    let o = run(&mut train_cmd_val(&data, &r, 5, 0));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(r.join("best.safetensors"), b"not safetensors").unwrap();
    assert_fails(
        &run(bin()
            .args(["eval", "--episodes", "2", "--device", "cpu"])
            .arg(&r)),
        &["best.safetensors", "not a readable safetensors checkpoint"],
    );
    std::fs::write(r.join("state.json"), b"{").unwrap();
    let mut resume = bin();
    resume
        .args(["train", "protonet", "--resume", "--out"])
        .arg(&r);
    assert_fails(&run(&mut resume), &["state.json", "corrupt state"]);
}

#[test]
fn download_from_a_local_mirror() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir(&mirror).unwrap();
    std::fs::copy(
        data.join("omniglot/images_background_small1.zip"),
        mirror.join("images_background_small1.zip"),
    )
    .unwrap();
    let dest = dir.path().join("data");
    // small2 is missing from the mirror: small1 lands verified, then a clear error.
    let o = run(bin()
        .args(["download", "omniglot-small", "--from"])
        .arg(&mirror)
        .arg("--data-dir")
        .arg(&dest));
    assert_fails(&o, &["images_background_small2.zip", "download of"]);
    assert!(dest.join("omniglot/images_background_small1.zip").is_file());
    assert!(!dest
        .join("omniglot/images_background_small2.zip.partial")
        .exists());

    // The split files go to DATA/splits, where training looks for them.
    let o = run(bin()
        .args(["download", "omniglot-splits", "--from"])
        .arg(data.join("splits"))
        .arg("--data-dir")
        .arg(&dest));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for split in ["train", "val", "test"] {
        let f = dest.join(format!("splits/omniglot__{split}.json"));
        assert_eq!(
            std::fs::read(&f).unwrap(),
            std::fs::read(data.join(format!("splits/omniglot__{split}.json"))).unwrap()
        );
    }
}

#[test]
fn continual_runs_a_strategy_over_a_stream_and_writes_its_report() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("er");
    let args = |out: &std::path::Path| {
        let mut c = bin();
        c.args([
            "continual",
            "--stream",
            "split-mnist",
            "--strategy",
            "er",
            "--tasks",
            "3",
            "--train-per-task",
            "200",
            "--test-per-task",
            "300",
            "--buffer",
            "50",
            "--json",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out")
        .arg(out);
        c
    };
    let o = run(&mut args(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = line["matrix"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    assert!(m.iter().all(|r| r.as_array().unwrap().len() == 3));
    let acc = line["acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    for k in ["bwt", "fwt", "forgetting"] {
        assert!(line[k].is_number(), "{k}: {line}");
    }
    for f in ["result.json", "matrix.csv", "matrix.svg", "accuracy.svg"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("matrix.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}"); // header, baseline, 3 rows
                                                 // The same seed gives the same matrix; a finished run is not overwritten.
    let again = run(&mut args(&dir.path().join("er2")));
    let line2: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(line["matrix"], line2["matrix"]);
    assert_fails(&run(&mut args(&out)), &["already holds a finished run"]);
    // Stopped after one task, then resumed: the run of one go.
    let stopped = dir.path().join("stopped");
    let o = run(args(&stopped).args(["--stop-after", "1"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!stopped.join("result.json").exists());
    let o = run(args(&stopped).arg("--resume"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(resumed["matrix"], line["matrix"]);

    // Bad input: one clear line each.
    let bad = |extra: &[&str], want: &[&str]| {
        let mut c = bin();
        c.args(["continual", "--out"])
            .arg(dir.path().join("bad"))
            .arg("--data-dir")
            .arg(&data)
            .args(extra);
        assert_fails(&run(&mut c), want);
    };
    bad(&["--stream", "cifar"], &["--stream", "permuted-mnist"]);
    bad(
        &["--stream", "split-mnist", "--strategy", "dropout"],
        &["--strategy", "naive, joint, er, ewc, agem"],
    );
    bad(
        &["--stream", "split-mnist", "--strategy", "oml"],
        &["omniglot-classes"],
    );
    bad(
        &[
            "--stream",
            "split-mnist",
            "--strategy",
            "lamaml",
            "--glances",
            "0",
        ],
        &["--glances"],
    );
    bad(
        &[
            "--stream",
            "split-mnist",
            "--strategy",
            "ewc",
            "--ewc-lambda=-1",
        ],
        &["--ewc-lambda"],
    );
    bad(
        &[
            "--stream",
            "split-mnist",
            "--strategy",
            "agem",
            "--memory-per-task",
            "0",
        ],
        &["--memory-per-task"],
    );
    bad(&["--stream", "split-mnist", "--tasks", "6"], &["--tasks"]);
    bad(
        &["--stream", "permuted-mnist", "--train-per-task", "70000"],
        &["--train-per-task", "60000"],
    );
    bad(
        &[
            "--stream",
            "split-mnist",
            "--strategy",
            "er",
            "--buffer",
            "0",
        ],
        &["--buffer"],
    );
    bad(
        &["--stream", "split-mnist", "--shift-radius", "1"],
        &["--shift-radius", "omniglot-classes only"],
    );
}

/// A `continual` run killed with SIGKILL between tasks resumes from its checkpoint and
/// ends with the matrix of an uninterrupted run; `report` compares finished runs and
/// refuses unfinished or corrupt ones.
#[test]
fn continual_resumes_after_kill_and_report_compares_runs() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &Path, extra: &[&str]| {
        let mut c = bin();
        c.args([
            "continual",
            "--stream",
            "permuted-mnist",
            "--strategy",
            "agem",
            "--tasks",
            "8",
            "--memory-per-task",
            "100",
            "--agem-sample",
            "64",
            "--json",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out")
        .arg(out)
        .args(extra);
        c
    };
    let killed = dir.path().join("killed");
    let mut child = args(&killed, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = killed.join("checkpoint/state.json");
    let t0 = Instant::now();
    let done = loop {
        let tasks = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["record"]["rows"].as_array().map(|r| r.len()));
        if tasks.is_some_and(|n| n >= 2) {
            break tasks.unwrap();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("result.json").exists());
    assert!(done < 8, "{done}");

    // An unfinished run is neither overwritten nor reported.
    assert_fails(
        &run(&mut args(&killed, &[])),
        &["unfinished run", "--resume"],
    );
    let mut report = bin();
    report.arg("report").arg(&killed);
    assert_fails(&run(&mut report), &["unfinished run"]);
    // Resuming with other settings is refused, naming the setting.
    assert_fails(
        &run(&mut args(&killed, &["--resume", "--lr", "0.05"])),
        &["lr: 0.1 → 0.05"],
    );
    let fresh = dir.path().join("fresh");
    assert_fails(
        &run(&mut args(&fresh, &["--resume"])),
        &["no checkpoint to resume"],
    );

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(corrupt.join("checkpoint")).unwrap();
    std::fs::write(corrupt.join("checkpoint/state.json"), "{\"config\": 1").unwrap();
    assert_fails(
        &run(&mut args(&corrupt, &["--resume"])),
        &["corrupt checkpoint state"],
    );

    let resumed = run(&mut args(&killed, &["--resume"]));
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(!killed.join("checkpoint").exists());
    let straight = run(&mut args(&fresh, &[]));
    assert!(straight.status.success());
    let a: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&straight.stdout).unwrap();
    assert_eq!(a["matrix"], b["matrix"]);
    assert_eq!(a["matrix"].as_array().unwrap().len(), 8);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("result.json")).unwrap())
            .unwrap();
    let speed = &result["learning_speed"]["mean_accuracy"];
    assert_eq!(speed.as_array().unwrap().len(), 4, "{speed}");

    // report: one table, a group of the two (same settings, same seed), one plot.
    let plot = dir.path().join("cmp.svg");
    let mut report = bin();
    report
        .arg("report")
        .arg(&killed)
        .arg(&fresh)
        .arg("--plot")
        .arg(&plot);
    let o = run(&mut report);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("agem (memory/task 100)"), "{text}");
    assert!(text.contains("± 0.00"), "{text}");
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    let mut report = bin();
    report.arg("report").arg(&killed).arg(&fresh).arg("--json");
    let o = run(&mut report);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["runs"], 2);
    assert_eq!(lines[2]["acc"]["mean"], a["acc"]);

    // A corrupt result file is named.
    std::fs::write(fresh.join("result.json"), "{not json").unwrap();
    let mut report = bin();
    report.arg("report").arg(&fresh);
    assert_fails(&run(&mut report), &["corrupt result file"]);
}

/// The Omniglot class-incremental stream end to end: a (briefly) meta-trained Lake
/// encoder, the perennial learner over 30 classes with its outputs, and the bad inputs
/// of this stream.
#[test]
fn omniglot_classes_runs_on_a_lake_encoder() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc");
    let mut t = bin();
    t.args([
        "train",
        "protonet",
        "--splits",
        "lake",
        "--ways",
        "5",
        "--shots",
        "1",
        "--queries",
        "5",
        "--episodes",
        "10",
        "--val-every",
        "0",
        "--device",
        "cpu",
        "--data-dir",
    ])
    .arg(&data)
    .arg("--out")
    .arg(&enc);
    let o = run(&mut t);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let args = |out: &Path, extra: &[&str]| {
        let mut c = bin();
        c.args(["continual", "--stream", "omniglot-classes", "--json"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args(extra);
        c
    };
    let out = dir.path().join("proto");
    let encoder = enc.to_str().unwrap();
    let o = run(&mut args(
        &out,
        &[
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--tasks",
            "30",
        ],
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["points"], serde_json::json!([10, 30]));
    assert_eq!(line["matrix"].as_array().unwrap().len(), 30);
    let acc = line["acc"].as_f64().unwrap();
    assert!(acc > 0.3 && acc <= 1.0, "{acc}");
    for f in ["result.json", "matrix.csv", "matrix.svg", "accuracy.svg"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["unknown"].as_array().unwrap().len(), 2);
    // Meta-consolidation is on by default, every 50 classes: none in 30.
    assert_eq!(result["consolidation"]["runs"], serde_json::json!([]));
    // Perennial averages features over 1-pixel shifts by default.
    assert_eq!(result["shift_radius"], 1);
    assert_eq!(
        result["learning_speed"]["mean_accuracy"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Bad input: one clear line each.
    let bad = |extra: &[&str], want: &[&str]| {
        assert_fails(&run(&mut args(&dir.path().join("bad"), extra)), want);
    };
    bad(&["--strategy", "perennial"], &["needs --encoder"]);
    bad(
        &["--strategy", "dropout", "--encoder", encoder],
        &["--strategy", "perennial"],
    );
    bad(&["--strategy", "oml", "--encoder", encoder], &["train oml"]);
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--tasks",
            "700",
        ],
        &["--tasks", "659"],
    );
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--train-per-task",
            "20",
        ],
        &["none would be left"],
    );
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            dir.path().join("none").to_str().unwrap(),
        ],
        &["none"],
    );
    // Meta-consolidation every 5 classes, two short episodes each: recorded.
    let flags = |extra: &[&'static str]| {
        let mut f = vec![
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--tasks",
            "12",
            "--consolidate-every",
            "5",
            "--consolidate-episodes",
            "2",
            "--consolidate-ways",
            "3",
            "--consolidate-neighbours",
            "2",
        ];
        f.extend_from_slice(extra);
        f
    };
    let out = dir.path().join("consolidated");
    let o = run(&mut args(&out, &flags(&[])));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let runs = result["consolidation"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["classes"], 10);
    let straight: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let own = straight["bwt_own_labels"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&own), "{own}");
    assert_eq!(result["final_own_labels"].as_array().unwrap().len(), 12);
    // Stopped after 7 classes (one consolidation done), then resumed: the same run.
    let stopped = dir.path().join("stopped");
    let o = run(&mut args(&stopped, &flags(&["--stop-after", "7"])));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    assert!(stopped.join("checkpoint/state.json").is_file());
    assert!(!stopped.join("result.json").exists());
    assert_fails(&run(&mut args(&stopped, &flags(&[]))), &["unfinished run"]);
    assert_fails(
        &run(&mut args(
            &stopped,
            &flags(&["--resume", "--consolidate-lr", "0.001"]),
        )),
        &["consolidation"],
    );
    assert_fails(
        &run(&mut args(
            &stopped,
            &flags(&["--resume", "--shift-radius", "0"]),
        )),
        &["shift_radius: 1 → 0"],
    );
    assert_fails(
        &run(&mut args(
            &stopped,
            &flags(&["--resume", "--consolidate-jitter", "0"]),
        )),
        &["consolidation"],
    );
    let o = run(&mut args(&stopped, &flags(&["--resume"])));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(resumed["matrix"], straight["matrix"]);
    assert!(!stopped.join("checkpoint").exists());
    // report shows BWT within the classes' own label sets beside GEM's.
    let mut report = bin();
    report.arg("report").arg(&out).arg(&stopped).arg("--json");
    let o = run(&mut report);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // (JSON parsing may move the last digit.)
    let one = lines[0]["bwt_own_labels"].as_f64().unwrap();
    let mean = lines[2]["bwt_own_labels"]["mean"].as_f64().unwrap();
    assert!(
        (one - own).abs() < 1e-12 && (mean - own).abs() < 1e-12,
        "{one} {mean} {own}"
    );
    let mut report = bin();
    report.arg("report").arg(&out);
    let o = run(&mut report);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("own BWT"), "{table}");
    assert!(
        table.contains("(consolidate/5, 2 episodes, jitter 1, shift 1)"),
        "{table}"
    );
    assert_fails(
        &run(&mut args(&dir.path().join("fresh"), &flags(&["--resume"]))),
        &["no checkpoint to resume"],
    );
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--consolidate-shots",
            "10",
            "--consolidate-queries",
            "10",
        ],
        &["--consolidate-shots"],
    );
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--consolidate-neighbours",
            "0",
        ],
        &["--consolidate-neighbours"],
    );
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--shift-radius",
            "8",
        ],
        &["--shift-radius", "at most 7"],
    );
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            encoder,
            "--consolidate-jitter",
            "8",
        ],
        &["--consolidate-jitter", "at most 7"],
    );
    // OML: a representation meta-trained for its online head, then the head on it;
    // La-MAML's and experience replay's heads (every strategy of the MNIST streams runs
    // here too, on the encoder's features) run on either encoder.
    let oml = dir.path().join("oml");
    let mut t = bin();
    t.args([
        "train",
        "oml",
        "--splits",
        "lake",
        "--ways",
        "5",
        "--shots",
        "2",
        "--queries",
        "2",
        "--episodes",
        "5",
        "--device",
        "cpu",
        "--data-dir",
    ])
    .arg(&data)
    .arg("--out")
    .arg(&oml);
    let o = run(&mut t);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (name, enc) in [("oml", &oml), ("lamaml", &enc), ("er", &oml)] {
        let out = dir.path().join(name);
        let enc = enc.to_str().unwrap();
        let o = run(&mut args(
            &out,
            &["--strategy", name, "--encoder", enc, "--tasks", "12"],
        ));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(line["points"], serde_json::json!([10, 12]), "{name}");
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap())
                .unwrap();
        assert_eq!(result["strategy"], name);
    }
    // An encoder meta-trained on the Vinyals split has seen evaluation characters.
    let vin = dir.path().join("vin");
    let o = run(&mut train_cmd(&data, &vin, 5));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    bad(
        &[
            "--strategy",
            "perennial",
            "--encoder",
            vin.to_str().unwrap(),
        ],
        &["--splits lake"],
    );
}

/// `train ALGORITHM` for a metric learner on 5-way 1-shot 5-query Omniglot episodes.
fn metric_train_cmd(
    data: &Path,
    out: &Path,
    algorithm: &str,
    extra: &[&str],
    episodes: u64,
) -> Command {
    let mut c = bin();
    c.args([
        "train",
        algorithm,
        "--ways",
        "5",
        "--shots",
        "1",
        "--queries",
        "5",
    ])
    .args([
        "--episodes",
        &episodes.to_string(),
        "--checkpoint-every",
        "10",
    ])
    .args([
        "--log-every",
        "10",
        "--val-every",
        "40",
        "--val-episodes",
        "5",
    ])
    .args(["--seed", "1", "--device", "cpu", "--data-dir"])
    .arg(data)
    .arg("--out")
    .arg(out)
    .args(extra);
    c
}

/// Issue #20: every metric learner trains on Omniglot's background classes, is clearly
/// above chance on held-out (test-split) classes after 80 small updates, evaluates at
/// other ways, adapts and predicts, and serves as a lifelong learner's encoder.
#[test]
fn metric_family_trains_evaluates_adapts_and_predicts_on_omniglot() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("episodes");
    write_user_episodes(&data, &eps, 1);
    for (label, algorithm, extra) in [
        ("relation", "relation", &[][..]),
        ("matching", "matching", &[]),
        ("matching-fce", "matching", &["--fce"]),
        ("triplet", "triplet", &[]),
        (
            "triplet-hard-cosine",
            "triplet",
            &["--mining", "hard", "--distance", "cosine"],
        ),
        ("triplet-all", "triplet", &["--mining", "all"]),
        ("contrastive", "contrastive", &[]),
        ("supcon", "contrastive", &["--loss", "supcon"]),
    ] {
        let run_dir = dir.path().join(label);
        let out = run(&mut metric_train_cmd(&data, &run_dir, algorithm, extra, 80));
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
        assert!(
            config.contains(&format!("algorithm = \"{algorithm}\"")),
            "{config}"
        );
        let eval = |ways: &str| -> f64 {
            let out = run(bin()
                .args([
                    "eval",
                    "--ways",
                    ways,
                    "--episodes",
                    "20",
                    "--json",
                    "--device",
                    "cpu",
                ])
                .arg(&run_dir));
            assert!(
                out.status.success(),
                "{label}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["accuracy"].as_f64().unwrap()
        };
        let (five, twenty) = (eval("5"), eval("20"));
        eprintln!("{label}: 80 updates, 5-way 1-shot {five:.3}, 20-way 1-shot {twenty:.3}");
        // Chance is 0.2 and 0.05.
        assert!(five > 0.45, "{label}: 5-way accuracy {five}");
        assert!(twenty > 0.15, "{label}: 20-way accuracy {twenty}");
        adapt_and_predict(&run_dir, &eps, dir.path(), 0.3);
    }
    // A triplet embedding of the background characters as the encoder of the lifelong
    // learner on the 600-class stream (its first 20 classes).
    let enc = dir.path().join("triplet-lake");
    let mut t = metric_train_cmd(&data, &enc, "triplet", &["--splits", "lake"], 20);
    let o = run(&mut t);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("stream");
    let o = run(bin()
        .args([
            "continual",
            "--stream",
            "omniglot-classes",
            "--json",
            "--strategy",
            "perennial",
        ])
        .args([
            "--tasks",
            "20",
            "--consolidate-every",
            "10",
            "--consolidate-episodes",
            "3",
        ])
        .arg("--encoder")
        .arg(&enc)
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let acc = line["acc"].as_f64().unwrap();
    assert!(acc > 0.3 && acc <= 1.0, "{acc}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    // The triplet embedding was meta-consolidated (with its own loss) twice.
    assert_eq!(
        result["consolidation"]["runs"].as_array().unwrap().len(),
        2,
        "{result}"
    );
}

/// Issue #20: a killed triplet or FCE Matching run resumes to exactly the
/// uninterrupted run; bad flags are refused with one line and exit 2.
#[test]
fn metric_runs_resume_exactly_and_bad_flags_are_refused() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (label, algorithm, extra) in [
        ("triplet", "triplet", &["--mining", "all"][..]),
        ("matching-fce", "matching", &["--fce"]),
        ("relation", "relation", &[]),
    ] {
        let straight = dir.path().join(format!("{label}-straight"));
        let killed = dir.path().join(format!("{label}-killed"));
        let out = run(&mut metric_train_cmd(
            &data, &straight, algorithm, extra, 40,
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        kill_after_checkpoint(
            &mut metric_train_cmd(&data, &killed, algorithm, extra, 40),
            &killed,
            10,
            40,
        );
        let out = run(bin()
            .args(["train", algorithm, "--resume", "--device", "cpu", "--out"])
            .arg(&killed));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            checkpoint_tensors(&straight),
            checkpoint_tensors(&killed),
            "{label}: resumed run diverged"
        );
    }
    let refused = |algorithm: &str, extra: &[&str], needles: &[&str]| {
        let out = run(&mut metric_train_cmd(
            &data,
            &dir.path().join("refused"),
            algorithm,
            extra,
            10,
        ));
        assert_fails(&out, needles);
        assert!(
            !dir.path().join("refused").exists(),
            "{algorithm} {extra:?} created a run"
        );
    };
    refused(
        "triplet",
        &["--margin", "0"],
        &["--margin", "must be positive"],
    );
    refused(
        "triplet",
        &["--margin=-0.5"],
        &["--margin", "must be positive"],
    );
    refused(
        "contrastive",
        &["--margin", "0"],
        &["--margin", "must be positive"],
    );
    refused(
        "contrastive",
        &["--loss", "supcon", "--temperature", "0"],
        &["--temperature"],
    );
    refused(
        "contrastive",
        &["--loss", "infonce"],
        &["--loss infonce", "pairs or supcon"],
    );
    refused(
        "contrastive",
        &["--loss", "supcon", "--no-normalize"],
        &["--no-normalize"],
    );
    refused("triplet", &["--mining", "easy"], &["--mining", "semi-hard"]);
    refused(
        "triplet",
        &["--distance", "manhattan"],
        &["--distance", "cosine"],
    );
    refused(
        "matching",
        &["--scale", "0"],
        &["--scale", "must be positive"],
    );
    refused(
        "relation",
        &["--init", "maml"],
        &["--init maml", "Relation"],
    );
    refused(
        "relation",
        &["--dataset", "sinusoid"],
        &["sinusoid", "classifies"],
    );
    // K = shots + queries < 2 images of a class: no anchor-positive pair.
    let mut c = bin();
    c.args([
        "train",
        "triplet",
        "--shots",
        "1",
        "--queries",
        "0",
        "--device",
        "cpu",
    ])
    .arg("--data-dir")
    .arg(&data)
    .arg("--out")
    .arg(dir.path().join("refused"));
    assert_fails(&run(&mut c), &["at least 2 images of each class"]);
    // --fce belongs to matching alone: clap refuses it elsewhere (exit 2).
    for algorithm in ["protonet", "relation", "triplet"] {
        let out = run(&mut metric_train_cmd(
            &data,
            &dir.path().join("refused"),
            algorithm,
            &["--fce"],
            10,
        ));
        assert_eq!(out.status.code(), Some(2), "{algorithm} --fce");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--fce"));
    }
}

/// `train mann` with the flags of the memory tests: 5 classes x `--instances 10`,
/// `updates` updates of `meta_batch` sequences.
fn mann_train_cmd(
    data: &Path,
    out: &Path,
    extra: &[&str],
    updates: u64,
    meta_batch: u64,
) -> Command {
    let mut c = bin();
    c.args(["train", "mann", "--episodes", &updates.to_string()])
        .args(["--meta-batch", &meta_batch.to_string()])
        .args([
            "--checkpoint-every",
            "10",
            "--log-every",
            "10",
            "--val-every",
            "0",
        ])
        .args(["--seed", "1", "--device", "cpu", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// Issue #21: the memory family trains on Omniglot's background classes. The key-value
/// memory is clearly above chance after 80 episodes and adapts and predicts on user
/// folders; a memory-augmented network reports accuracy by instance, and after 300
/// updates of 16 sequences it reads the label input (a class's first presentation is
/// answered with a label not yet shown in the sequence: above chance, as in Santoro et
/// al.'s first phase of training); its LSTM baseline trains and evaluates alike.
#[test]
fn memory_family_trains_evaluates_adapts_and_predicts_on_omniglot() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("episodes");
    write_user_episodes(&data, &eps, 1);
    let eval = |run_dir: &Path, extra: &[&str]| -> serde_json::Value {
        let out = run(bin()
            .args(["eval", "--json", "--device", "cpu"])
            .args(extra)
            .arg(run_dir));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Key-value memory (a small memory and key width, for speed).
    let kv = dir.path().join("kv");
    let small = ["--key-dim", "64", "--memory-size", "512", "--knn", "32"];
    let out = run(&mut metric_train_cmd(&data, &kv, "kv-memory", &small, 80));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(kv.join("config.toml")).unwrap();
    assert!(config.contains("algorithm = \"kv-memory\""), "{config}");
    let five = eval(&kv, &["--episodes", "20"])["accuracy"]
        .as_f64()
        .unwrap();
    let twenty = eval(&kv, &["--ways", "20", "--episodes", "20"])["accuracy"]
        .as_f64()
        .unwrap();
    eprintln!("kv-memory: 80 episodes, 5-way 1-shot {five:.3}, 20-way 1-shot {twenty:.3}");
    assert!(five > 0.45, "kv-memory 5-way {five}");
    assert!(twenty > 0.15, "kv-memory 20-way {twenty}");
    adapt_and_predict(&kv, &eps, dir.path(), 0.3);
    // The same adaptation with the memory in a persistent store (HNSW index): the
    // same answers; a damaged store is refused with one line, exit 2.
    let stored = dir.path().join("model-kv-store");
    let adapt = |run_dir: &Path, out: &Path| {
        run(bin()
            .args(["adapt", "--store", "--device", "cpu"])
            .arg(run_dir)
            .arg("--support")
            .arg(eps.join("ep0/support"))
            .arg("--out")
            .arg(out))
    };
    let o = adapt(&kv, &stored);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stored.join("store").is_dir() && !stored.join("adapted.safetensors").exists());
    let queries: Vec<PathBuf> = ["a", "b", "c", "d", "e"]
        .iter()
        .flat_map(|c| (0..2).map(move |j| format!("ep0/query/{c}/{j}.png")))
        .map(|p| eps.join(p))
        .collect();
    let classes = |model: &Path| -> Result<Vec<String>, String> {
        let o = run(bin()
            .args(["predict", "--json", "--device", "cpu"])
            .arg(model)
            .args(&queries));
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["class"].to_string())
            .collect())
    };
    assert_eq!(
        classes(&stored).unwrap(),
        classes(&dir.path().join("model-kv")).unwrap()
    );
    // The largest of its log and snapshot holds the entries.
    let data_file = std::fs::read_dir(stored.join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log" || e == "bin"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&data_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&data_file, &bytes).unwrap();
    let err = classes(&stored).unwrap_err();
    assert!(err.contains("corrupt store file"), "{err}");

    // Memory-augmented network.
    let mann = dir.path().join("mann");
    let out = run(&mut mann_train_cmd(&data, &mann, &[], 300, 16));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = eval(&mann, &["--episodes", "100"]);
    let by: Vec<f64> = v["by_instance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    eprintln!("mann: 300 updates, by instance {by:.3?}");
    assert_eq!(by.len(), 10, "{v}");
    assert!(
        v["instance_counts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c == 500),
        "{v}"
    );
    let mean = by.iter().sum::<f64>() / 10.0;
    assert!((v["accuracy"].as_f64().unwrap() - mean).abs() < 1e-9, "{v}");
    // Chance is 0.2; guessing a label not yet shown lifts the first presentation.
    assert!(by[0] > 0.28, "first instance {}", by[0]);
    // A longer sequence at evaluation (instances 1 to 16) is reported in full.
    let v = eval(&mann, &["--episodes", "5", "--queries", "15"]);
    assert_eq!(v["by_instance"].as_array().unwrap().len(), 16, "{v}");
    adapt_and_predict(&mann, &eps, dir.path(), 0.0);
    assert_fails(
        &adapt(&mann, &dir.path().join("refused-model")),
        &["--store", "kv-memory"],
    );
    // Short variants: each trains, records its setting and reports ten instances.
    let variant = |name: &str, flag: &str, recorded: &str| {
        let out_dir = dir.path().join(name);
        let out = run(&mut mann_train_cmd(&data, &out_dir, &[flag], 20, 4));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = std::fs::read_to_string(out_dir.join("config.toml")).unwrap();
        assert!(config.contains(recorded), "{config}");
        assert_eq!(
            eval(&out_dir, &["--episodes", "5"])["by_instance"]
                .as_array()
                .unwrap()
                .len(),
            10
        );
    };
    // The LSTM baseline.
    variant("lstm", "--no-memory", "memory_slots = 0");
    // A learned key strength; the baseline refuses one.
    variant("mann-key-strength", "--key-strength", "key_strength = true");
    // A separate add vector per head.
    variant("mann-add-vector", "--add-vector", "add_vector = true");
    assert_fails(
        &run(&mut mann_train_cmd(
            &data,
            &dir.path().join("refused-strength"),
            &["--key-strength", "--no-memory"],
            20,
            4,
        )),
        &["--key-strength", "LSTM baseline"],
    );
    // String labels (Santoro et al.'s Table 2): 5 letters over a-e, a new string per
    // class and sequence. A random string is right once in 3125; after 200 updates the
    // network recalls a class's string at its later presentations well above that.
    let strings = dir.path().join("mann-strings");
    let out = run(&mut mann_train_cmd(
        &data,
        &strings,
        &["--label-chars", "5"],
        200,
        16,
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = eval(&strings, &["--episodes", "50"]);
    let by: Vec<f64> = v["by_instance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    eprintln!("mann, string labels: 200 updates, by instance {by:.3?}");
    let later = by[1..].iter().sum::<f64>() / 9.0;
    assert!(later > 0.008, "string labels, instances 2-10: {later}");
    adapt_and_predict(&strings, &eps, dir.path(), 0.0);
    assert_fails(
        &run(&mut mann_train_cmd(
            &data,
            &dir.path().join("refused"),
            &["--label-chars", "1", "--ways", "6"],
            1,
            1,
        )),
        &["--label-chars", "distinct strings"],
    );
    // A key-value memory encoder of the background characters under the lifelong
    // learners of the 600-class stream (its first 20 classes): Kaiser et al.'s memory
    // of examples, and Perennial's prototypes with meta-consolidation by the memory loss.
    let enc = dir.path().join("kv-lake");
    let mut t = metric_train_cmd(&data, &enc, "kv-memory", &small, 20);
    let o = run(t.args(["--splits", "lake"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stream = |strategy: &str, extra: &[&str], out: &str| -> Output {
        run(bin()
            .args(["continual", "--stream", "omniglot-classes", "--json"])
            .args(["--strategy", strategy, "--tasks", "20"])
            .args(extra)
            .arg("--encoder")
            .arg(&enc)
            .arg("--data-dir")
            .arg(&data)
            .arg("--out")
            .arg(dir.path().join(out)))
    };
    for (strategy, extra, out) in [
        ("kv-memory", &[][..], "stream-kv"),
        ("kv-memory", &["--memory-size", "40"][..], "stream-kv-small"),
        (
            "perennial",
            &["--consolidate-every", "10", "--consolidate-episodes", "3"][..],
            "stream-proto",
        ),
    ] {
        let o = stream(strategy, extra, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let acc = line["acc"].as_f64().unwrap();
        eprintln!("{strategy} {extra:?}: 20 classes, accuracy {acc:.3}");
        // Chance is 0.05; a 40-slot memory holds the last 40 of 300 images.
        let floor = if out == "stream-kv-small" { 0.05 } else { 0.3 };
        assert!(acc > floor && acc <= 1.0, "{strategy} {extra:?}: {acc}");
    }
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("stream-kv/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["memory_size"], 300, "{result}");
    // The same memory in a persistent store (HNSW search): the same stream, the same
    // accuracy; then damaged store files are refused with one line, exit 2.
    let store = dir.path().join("kv-store");
    let store_flag = ["--store", store.to_str().unwrap()];
    let o = stream("kv-memory", &store_flag, "stream-kv-store");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let in_ram: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("stream-kv/result.json")).unwrap(),
    )
    .unwrap();
    let (a, b) = (
        line["acc"].as_f64().unwrap(),
        in_ram["acc"].as_f64().unwrap(),
    );
    // Two of the 100 answers may differ (an approximate index, and ties); the slack
    // keeps 0.53 vs 0.51 inside despite the floating-point subtraction.
    assert!((a - b).abs() <= 0.02 + 1e-9, "store {a} vs memory {b}");
    assert_fails(
        &stream("kv-memory", &store_flag, "refused-stream"),
        &["--store", "holds", "empty memory"],
    );
    let wal = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();
    assert_fails(
        &stream("kv-memory", &store_flag, "refused-stream"),
        &["corrupt store file", "checksum"],
    );
    std::fs::write(&wal, &bytes[..20]).unwrap();
    assert_fails(
        &stream("kv-memory", &store_flag, "refused-stream"),
        &["corrupt store file", "shorter than its"],
    );
    assert_fails(
        &stream("perennial", &["--memory-size", "10"], "refused-stream"),
        &["--memory-size/--store", "kv-memory"],
    );
    assert_fails(
        &stream("kv-memory", &["--memory-size", "0"], "refused-stream"),
        &["--memory-size", "must be positive"],
    );
    // A 20-way evaluation of a 5-class network is refused.
    assert_fails(
        &run(bin()
            .args(["eval", "--ways", "20", "--device", "cpu"])
            .arg(&mann)),
        &["--ways 20", "--ways 5"],
    );
}

/// Issue #21: killed memory runs resume to exactly the uninterrupted run; bad flags are
/// refused with one line and exit 2, creating nothing.
#[test]
fn memory_runs_resume_exactly_and_bad_flags_are_refused() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kv_flags = ["--key-dim", "64", "--memory-size", "512", "--knn", "32"];
    let cmd = |label: &str| -> Command {
        let out = dir.path().join(label);
        if label.starts_with("kv") {
            metric_train_cmd(&data, &out, "kv-memory", &kv_flags, 40)
        } else {
            // Jittered training images (Santoro et al.'s augmentation) resume exactly
            // too: the jitter is a pure function of the episode index; and so does a
            // learning-rate step that falls after the kill.
            mann_train_cmd(
                &data,
                &out,
                &[
                    "--augment-rotate",
                    "30",
                    "--augment-shift",
                    "2.67",
                    "--lr-step",
                    "20",
                    "--lr-gamma",
                    "0.5",
                ],
                40,
                4,
            )
        }
    };
    for (label, algorithm) in [("kv", "kv-memory"), ("mann", "mann")] {
        let straight = dir.path().join(format!("{label}-straight"));
        let killed = dir.path().join(format!("{label}-killed"));
        let out = run(&mut cmd(&format!("{label}-straight")));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if algorithm == "mann" {
            let config = std::fs::read_to_string(straight.join("config.toml")).unwrap();
            assert!(
                config.contains("step_every = 20") && config.contains("gamma = 0.5"),
                "{config}"
            );
        }
        kill_after_checkpoint(&mut cmd(&format!("{label}-killed")), &killed, 10, 40);
        let out = run(bin()
            .args(["train", algorithm, "--resume", "--device", "cpu", "--out"])
            .arg(&killed));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            checkpoint_tensors(&straight),
            checkpoint_tensors(&killed),
            "{label}: resumed run diverged"
        );
    }
    let refused_dir = dir.path().join("refused");
    let refused = |algorithm: &str, extra: &[&str], needles: &[&str]| {
        let out = if algorithm == "mann" {
            run(&mut mann_train_cmd(&data, &refused_dir, extra, 10, 2))
        } else {
            run(&mut metric_train_cmd(
                &data,
                &refused_dir,
                algorithm,
                extra,
                10,
            ))
        };
        assert_fails(&out, needles);
        assert!(!refused_dir.exists(), "{algorithm} {extra:?} created a run");
    };
    refused("kv-memory", &["--knn", "0"], &["--knn"]);
    refused("mann", &["--lr-gamma", "0"], &["lr-gamma", "(0, 1]"]);
    refused(
        "kv-memory",
        &["--memory-size", "16", "--knn", "32"],
        &["--knn", "--memory-size"],
    );
    refused(
        "kv-memory",
        &["--margin", "0"],
        &["--margin", "must be positive"],
    );
    refused("kv-memory", &["--key-dim", "0"], &["--key-dim"]);
    refused("mann", &["--instances", "1"], &["--instances 1"]);
    refused("mann", &["--shots", "2"], &["--instances"]);
    refused("mann", &["--queries", "9"], &["--instances"]);
    refused("mann", &["--read-heads", "0"], &["--read-heads"]);
    refused(
        "mann",
        &["--memory-slots", "2"],
        &["--read-heads", "--memory-slots"],
    );
    refused("mann", &["--gamma", "1.5"], &["--gamma"]);
    refused("mann", &["--clip-norm=-1"], &["--clip-norm"]);
    refused("mann", &["--dataset", "sinusoid"], &["sinusoid"]);
    refused(
        "mann",
        &["--augment-rotate", "200"],
        &["--augment-rotate", "180"],
    );
    refused("mann", &["--augment-shift", "28"], &["--augment-shift"]);
    refused("mann", &["--augment-shift=-1"], &["--augment-shift"]);
    let config = std::fs::read_to_string(dir.path().join("mann-straight/config.toml")).unwrap();
    assert!(
        config.contains("[augment]") && config.contains("max_degrees = 30"),
        "{config}"
    );
}

/// The largest difference between two runs' checkpointed meta-parameters (`params.*`),
/// relative to the largest parameter.
fn params_diff(a: &Path, b: &Path) -> f64 {
    let read = |p: &Path| -> std::collections::BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(p.join("checkpoint.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n.starts_with("params."))
            .collect()
    };
    let (a, b) = (read(a), read(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (n, ta) in &a {
        diff = diff.max((ta - &b[n]).abs().max().double_value(&[]));
        scale = scale.max(ta.abs().max().double_value(&[]));
    }
    diff / scale
}

/// `perennial launch --nproc 2 -- train ...`: two ranks (processes, Gloo on loopback)
/// end 600 updates with the parameters of one process on the whole meta-batch, to
/// rounding (sinusoid MAML, two tasks an update, one a rank: the process batches its
/// two tasks into one graph, the ranks do not); killed after a checkpoint and resumed
/// under `launch`, they end with the uninterrupted launch's checkpoint byte for byte; a
/// meta-batch smaller than the ranks is refused by every rank.
#[test]
fn launch_trains_data_parallel_as_one_process_and_resumes() {
    if !perennial::dist::backend_available() {
        eprintln!("skipped: this build has no distributed backend");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let train_args = |out: &Path, meta_batch: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "maml",
            "--dataset",
            "sinusoid",
            "--episodes",
            "600",
            "--meta-batch",
            meta_batch,
            "--checkpoint-every",
            "50",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(out.display().to_string());
        v
    };
    let launch = |args: Vec<String>| {
        let mut c = bin();
        c.args(["--threads", "1", "launch", "--nproc", "2", "--"])
            .args(args);
        c
    };
    let single = dir.path().join("single");
    let out = run(bin()
        .args(["--threads", "1"])
        .args(train_args(&single, "2")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let two = dir.path().join("two");
    let out = run(&mut launch(train_args(&two, "2")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = params_diff(&single, &two);
    eprintln!("launch vs single: {d:e}");
    assert!(d < 1e-5, "two ranks diverged from one process: {d:e}");
    // Rank 0 alone wrote the metrics: one line per 50 updates (the default --log-every)
    // and the all-reduce's cost.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 13, "{metrics}");
    assert!(
        metrics
            .lines()
            .last()
            .unwrap()
            .contains("\"allreduce_calls\":600"),
        "{metrics}"
    );

    let killed = dir.path().join("killed");
    kill_after_checkpoint(&mut launch(train_args(&killed, "2")), &killed, 50, 600);
    let mut resume = bin();
    resume
        .args(["--threads", "1", "launch", "--nproc", "2", "--"])
        .args(["train", "maml", "--resume", "--out"])
        .arg(&killed);
    let out = run(&mut resume);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        checkpoint_tensors(&two),
        checkpoint_tensors(&killed),
        "the resumed data-parallel run diverged"
    );

    // Only training runs as ranks.
    let out = run(bin()
        .args(["launch", "--nproc", "2", "--", "eval"])
        .arg(&two));
    assert_fails(&out, &["only `train` runs data-parallel"]);

    let out = run(&mut launch(train_args(&dir.path().join("mb1"), "1")));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--meta-batch") && err.contains("failed"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
