//! Every bad-input path of the readers gives one clear error naming the file.

use perennial_data::omniglot::Omniglot;
use perennial_data::{folder, mnist};

#[test]
fn missing_omniglot_names_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = Omniglot::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("images_background"), "{err}");
    assert!(err.contains("perennial download omniglot"), "{err}");
}

#[test]
fn corrupt_npz_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alphabets.tsv"),
        "set\talphabet\tfirst_char_id\tlast_char_id\tn_chars\n",
    )
    .unwrap();
    let npz = dir.path().join("images_background.npz");
    std::fs::write(&npz, b"this is not a zip").unwrap();
    let err = Omniglot::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("images_background.npz") && err.contains("not a valid .npz"),
        "{err}"
    );
}

fn write_npz(
    path: &std::path::Path,
    images_header: &str,
    images: &[u8],
    labels_header: &str,
    labels: &[u8],
) {
    use std::io::Write;
    let npy = |header: &str, data: &[u8]| {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    };
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default();
    z.start_file("images.npy", opts).unwrap();
    z.write_all(&npy(images_header, images)).unwrap();
    z.start_file("labels.npy", opts).unwrap();
    z.write_all(&npy(labels_header, labels)).unwrap();
    z.finish().unwrap();
}

#[test]
fn wrong_array_shapes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("images_background.npz");
    std::fs::write(
        dir.path().join("alphabets.tsv"),
        "set\talphabet\tfirst_char_id\tlast_char_id\tn_chars\nbackground\tA\t1\t964\t964\n",
    )
    .unwrap();
    // 28x28 instead of 105x105.
    write_npz(
        &npz,
        "{'descr': '|b1', 'fortran_order': False, 'shape': (1, 2, 28, 28), }",
        &[1u8; 2 * 784],
        "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }",
        &[0u8; 16],
    );
    let err = Omniglot::load_one(&npz).unwrap_err().to_string();
    assert!(
        err.contains("(chars, drawers, 105, 105)") && err.contains("[1, 2, 28, 28]"),
        "{err}"
    );
    // Truncated image data.
    write_npz(
        &npz,
        "{'descr': '|b1', 'fortran_order': False, 'shape': (1, 2, 105, 105), }",
        &[1u8; 105 * 105],
        "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }",
        &[0u8; 16],
    );
    let err = Omniglot::load_one(&npz).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    // Labels of the wrong shape.
    write_npz(
        &npz,
        "{'descr': '|b1', 'fortran_order': False, 'shape': (1, 2, 105, 105), }",
        &[1u8; 2 * 105 * 105],
        "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
        &[0u8; 16],
    );
    let err = Omniglot::load_one(&npz).unwrap_err().to_string();
    assert!(err.contains("labels.npy"), "{err}");
    // A good tiny one loads: two drawers of blank paper.
    write_npz(
        &npz,
        "{'descr': '|b1', 'fortran_order': False, 'shape': (1, 2, 105, 105), }",
        &[1u8; 2 * 105 * 105],
        "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }",
        &[0u8; 16],
    );
    let o = Omniglot::load_one(&npz).unwrap();
    assert_eq!(o.characters[&1].examples.len(), 2);
    assert!(o.images.iter().all(|&v| v == 0.0));
}

#[test]
fn unreadable_images_and_empty_folders() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("cat");
    std::fs::create_dir(&class).unwrap();
    std::fs::write(class.join("a.png"), b"not a png").unwrap();
    let err = folder::load_labelled(dir.path(), 28)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a.png") && err.contains("cannot decode"),
        "{err}"
    );
    std::fs::remove_file(class.join("a.png")).unwrap();
    let err = folder::load_labelled(dir.path(), 28)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no images"), "{err}");
    let err = folder::load_labelled(&dir.path().join("nope"), 28)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn folder_reader_converts_like_omniglot() {
    let dir = tempfile::tempdir().unwrap();
    for (class, shade) in [("dark", 0u8), ("light", 255u8)] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
        for i in 0..3 {
            let img = image::GrayImage::from_pixel(50, 40, image::Luma([shade]));
            img.save(dir.path().join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let l = folder::load_labelled(dir.path(), 28).unwrap();
    assert_eq!(l.classes, ["dark", "light"]);
    assert_eq!(l.labels, [0, 0, 0, 1, 1, 1]);
    assert_eq!(l.images.len(), 6 * 784);
    // Black strokes are ink = 1.0; white paper is 0.0.
    assert!(l.images[..3 * 784].iter().all(|&v| (v - 1.0).abs() < 1e-6));
    assert!(l.images[3 * 784..].iter().all(|&v| v.abs() < 1e-6));
}

#[test]
fn corrupt_mnist_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(
        &p,
        [0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2, 3],
    )
    .unwrap();
    let err = mnist::read_idx(&p).unwrap_err().to_string();
    assert!(err.contains("need 1568 bytes"), "{err}");
    std::fs::write(&p, b"garbage!").unwrap();
    let err = mnist::read_idx(&p).unwrap_err().to_string();
    assert!(err.contains("bad magic"), "{err}");
}
