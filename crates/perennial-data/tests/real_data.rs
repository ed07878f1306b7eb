//! Readers against the real data in `../shared/data` (skipped with a message when absent).

use std::path::PathBuf;

use perennial_data::omniglot::{Omniglot, Split, SplitScheme};
use perennial_data::{download, mnist::Mnist, paths, EpisodeSampler, EpisodeSpec};

fn shared_data() -> Option<PathBuf> {
    perennial_data::paths::shared_test_data()
}

fn sums(data: &std::path::Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(data.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, f)| (f.trim_start_matches("./").to_string(), h.to_string()))
        .collect()
}

#[test]
fn npz_and_png_readers_agree_on_small1() {
    let Some(data) = shared_data() else { return };
    let npz = Omniglot::load_one(&data.join("omniglot/images_background.npz")).unwrap();
    let png = Omniglot::load_one(&data.join("omniglot/images_background_small1.zip")).unwrap();
    assert_eq!(npz.characters.len(), 964);
    assert_eq!(png.characters.len(), 136);
    let mut compared = 0;
    for (id, c) in &png.characters {
        let n = &npz.characters[id];
        assert_eq!((&c.alphabet, c.number), (&n.alphabet, n.number), "id {id}");
        assert_eq!(c.examples.len(), 20);
        for (a, b) in c.examples.iter().zip(&n.examples) {
            let pa = &png.images[*a as usize * 784..(*a as usize + 1) * 784];
            let pb = &npz.images[*b as usize * 784..(*b as usize + 1) * 784];
            assert_eq!(pa, pb, "character {id} differs between readers");
            compared += 1;
        }
    }
    assert_eq!(compared, 136 * 20);
}

#[test]
fn omniglot_counts_checksums_and_splits() {
    let Some(data) = shared_data() else { return };
    let sums = sums(&data);
    for f in [
        "omniglot/images_background.npz",
        "omniglot/images_evaluation.npz",
        "splits/omniglot__train.json",
    ] {
        assert_eq!(
            download::sha256_file(&data.join(f)).unwrap(),
            sums[f],
            "{f}"
        );
    }
    let o = Omniglot::load(&data).unwrap();
    assert_eq!(o.characters.len(), 1623);
    assert_eq!(o.images.len(), 1623 * 20 * 784);
    // About 8% of pixels are ink (data README); the resize preserves the mean.
    let mean = o.images.iter().map(|&v| v as f64).sum::<f64>() / o.images.len() as f64;
    assert!((0.06..0.10).contains(&mean), "mean ink {mean}");
    assert!(o.images.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(o.characters[&1].alphabet, "Arcadian");
    assert_eq!(o.characters[&965].alphabet, "Angelic");
    let splits = paths::splits_dir(&data);
    for (split, chars) in [(Split::Train, 1028), (Split::Val, 172), (Split::Test, 423)] {
        let s = o.split(SplitScheme::Vinyals, split, &splits).unwrap();
        assert_eq!(s.classes.len(), chars * 4, "{split:?}");
    }
    let trainval = o
        .split(SplitScheme::Vinyals, Split::TrainVal, &splits)
        .unwrap();
    assert_eq!(
        trainval.classes.len(),
        1200 * 4,
        "Snell et al.'s 1200 characters"
    );
    assert_eq!(
        o.split(SplitScheme::Lake, Split::Train, &splits)
            .unwrap()
            .classes
            .len(),
        964 * 4
    );
    assert_eq!(
        o.split(SplitScheme::Lake, Split::Test, &splits)
            .unwrap()
            .classes
            .len(),
        659
    );
    assert!(o
        .split(SplitScheme::Lake, Split::Val, &splits)
        .unwrap()
        .classes
        .is_empty());
    // Vinyals splits are disjoint in characters.
    let ids = |split| -> std::collections::HashSet<String> {
        o.split(SplitScheme::Vinyals, split, &splits)
            .unwrap()
            .classes
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    let (tr, va, te) = (ids(Split::Train), ids(Split::Val), ids(Split::Test));
    assert!(tr.is_disjoint(&va) && tr.is_disjoint(&te) && va.is_disjoint(&te));
    // A 20-way 5-shot 15-query episode from the test split.
    let test = std::sync::Arc::new(o.split(SplitScheme::Vinyals, Split::Test, &splits).unwrap());
    let ep = EpisodeSampler::new(test, EpisodeSpec::new(20, 5, 15), 1)
        .unwrap()
        .sample(0);
    assert_eq!(ep.support.len(), 100 * 784);
    assert_eq!(ep.query.len(), 300 * 784);
}

#[test]
fn mnist_counts() {
    let Some(data) = shared_data() else { return };
    let train = Mnist::load(&data, "train").unwrap();
    assert_eq!(train.labels.len(), 60_000);
    let mut counts = [0usize; 10];
    train.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let test = Mnist::load(&data, "t10k").unwrap();
    assert_eq!(test.labels.len(), 10_000);
    assert_eq!(test.images.len(), 10_000 * 784);
    let set = test.class_set("test");
    assert_eq!(set.classes.len(), 10);
    assert_eq!(
        set.classes.iter().map(|c| c.examples.len()).sum::<usize>(),
        10_000
    );
}

#[test]
fn download_verifies_sha256_from_a_local_mirror() {
    let Some(data) = shared_data() else { return };
    let assets = download::catalogue("omniglot-small").unwrap();
    let small1 = assets[0];
    let dest = tempfile::tempdir().unwrap();
    let src = data.join("omniglot");
    let mut calls = 0;
    let got = download::fetch(&small1, src.to_str().unwrap(), dest.path(), &mut |_, _| {
        calls += 1
    })
    .unwrap();
    assert!(matches!(got, download::Fetched::Downloaded(_)));
    assert!(calls > 0);
    assert_eq!(
        download::sha256_file(&dest.path().join(small1.file)).unwrap(),
        small1.sha256
    );
    // Second time: already there.
    let again =
        download::fetch(&small1, src.to_str().unwrap(), dest.path(), &mut |_, _| {}).unwrap();
    assert!(matches!(again, download::Fetched::AlreadyPresent(_)));
    // A corrupted mirror: the fetch fails and leaves nothing behind.
    let bad_src = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(src.join(small1.file)).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(bad_src.path().join(small1.file), bytes).unwrap();
    let dest2 = tempfile::tempdir().unwrap();
    let err = download::fetch(
        &small1,
        &format!("file://{}", bad_src.path().display()),
        dest2.path(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert_eq!(std::fs::read_dir(dest2.path()).unwrap().count(), 0);
    // A missing source names the URL.
    let err =
        download::fetch(&small1, "/nonexistent/mirror", dest2.path(), &mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/mirror/images_background_small1.zip"),
        "{err}"
    );
}

#[test]
fn download_catalogue_includes_the_vinyals_split_files() {
    let Some(data) = shared_data() else { return };
    let all = download::catalogue("omniglot").unwrap();
    let splits = download::catalogue("omniglot-splits").unwrap();
    assert_eq!(splits.len(), 3);
    for s in splits {
        assert!(all.contains(s), "{} missing from omniglot", s.file);
        assert_eq!(s.dir, "splits");
        assert!(s.base.starts_with("https://"));
        // The catalogue's size and sha256 are those of the shared copy.
        let local = data.join("splits").join(s.file);
        assert_eq!(
            std::fs::metadata(&local).unwrap().len(),
            s.size,
            "{}",
            s.file
        );
        assert_eq!(
            download::sha256_file(&local).unwrap(),
            s.sha256,
            "{}",
            s.file
        );
    }
    // A local mirror serves the data-folder names (omniglot__test.json), not the remote
    // ones (test.json).
    let dest = tempfile::tempdir().unwrap();
    let test = splits.iter().find(|s| s.remote == "test.json").unwrap();
    let src = data.join("splits");
    let got = download::fetch(test, src.to_str().unwrap(), dest.path(), &mut |_, _| {}).unwrap();
    assert_eq!(
        got,
        download::Fetched::Downloaded(dest.path().join("omniglot__test.json"))
    );
}
