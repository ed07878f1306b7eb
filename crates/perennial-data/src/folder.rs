//! A generic image-folder data set: `root/<class>/<image>`, any common image format.
//!
//! Images are converted like Omniglot: to grey levels, resized to `size x size` with the
//! antialiased bilinear filter, with dark strokes on light paper mapped to ink = 1.0.

use std::path::{Path, PathBuf};

use crate::dataset::ClassSet;
use crate::error::{Error, Result};
use crate::imageops::{grey_to_ink, resize_bilinear_aa};

const EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "pgm", "ppm", "pbm",
];

/// Whether `path` has an image extension this reader understands.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads one image file and converts it to a `size x size` ink image.
pub fn load_image(path: &Path, size: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, size, &ImageLimits::default()).map_err(|e| Error::BadImage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Bounds on an image decoded from untrusted bytes: a small file that claims a huge
/// picture (a decompression bomb) is refused before its pixels are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// The widest and tallest picture accepted, in pixels.
    pub max_side: u32,
    /// The most bytes the decoder may allocate.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    /// 8192 pixels a side, 256 MiB of decoder memory.
    fn default() -> Self {
        ImageLimits {
            max_side: 8192,
            max_alloc: 256 << 20,
        }
    }
}

/// Why [`decode_image`] refused an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRejected {
    /// Larger than the [`ImageLimits`] allow.
    TooLarge(String),
    /// Not an image, or a broken one.
    Invalid(String),
}

impl std::fmt::Display for ImageRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRejected::TooLarge(s) => write!(f, "too large: {s}"),
            ImageRejected::Invalid(s) => f.write_str(s),
        }
    }
}

/// Decodes an image held in memory (PNG, JPEG, BMP, GIF, TIFF, PNM; the format is
/// guessed from the bytes) and converts it as [`load_image`] does.
pub fn decode_image(
    bytes: &[u8],
    size: usize,
    limits: &ImageLimits,
) -> std::result::Result<Vec<f32>, ImageRejected> {
    let invalid = |e: String| ImageRejected::Invalid(e);
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(e.to_string()))?;
    if reader.format().is_none() {
        return Err(invalid(
            "not an image in a format this reads (PNG, JPEG, BMP, GIF, TIFF, PNM)".into(),
        ));
    }
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let img = reader
        .decode()
        .map_err(|e| match e {
            image::ImageError::Limits(e) => {
                ImageRejected::TooLarge(format!("{e} (at most {0}x{0} pixels)", limits.max_side))
            }
            e => invalid(e.to_string()),
        })?
        .to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(invalid("empty image".into()));
    }
    let ink = grey_to_ink(img.as_raw());
    Ok(if (h, w) == (size, size) {
        ink
    } else {
        resize_bilinear_aa(&ink, h, w, size, size)
    })
}

/// Sorted subfolders of `dir`.
pub fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted image files directly in `dir`.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file() && is_image(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A labelled set of images read from a class-per-subfolder tree.
#[derive(Debug, Clone)]
pub struct LabelledImages {
    /// Class names (subfolder names), sorted.
    pub classes: Vec<String>,
    /// Pixels, `size * size` per image.
    pub images: Vec<f32>,
    /// Class index of each image.
    pub labels: Vec<usize>,
    /// The file each image came from.
    pub files: Vec<PathBuf>,
}

/// Reads `root/<class>/<image>` into `size x size` ink images.
pub fn load_labelled(root: &Path, size: usize) -> Result<LabelledImages> {
    if !root.is_dir() {
        return Err(Error::Missing {
            what: "image folder".into(),
            path: root.to_path_buf(),
            hint: String::new(),
        });
    }
    let mut out = LabelledImages {
        classes: Vec::new(),
        images: Vec::new(),
        labels: Vec::new(),
        files: Vec::new(),
    };
    for (c, dir) in subdirs(root)?.into_iter().enumerate() {
        let files = image_files(&dir)?;
        if files.is_empty() {
            return Err(Error::corrupt(&dir, "class folder holds no images"));
        }
        out.classes.push(
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        for f in files {
            out.images.extend(load_image(&f, size)?);
            out.labels.push(c);
            out.files.push(f);
        }
    }
    if out.classes.is_empty() {
        return Err(Error::corrupt(root, "no class subfolders"));
    }
    Ok(out)
}

/// Reads an image folder as a [`ClassSet`] for episode sampling.
pub fn class_set(root: &Path, size: usize, split: &str) -> Result<ClassSet> {
    let l = load_labelled(root, size)?;
    Ok(ClassSet::from_labelled(
        split, size, size, l.images, &l.labels, l.classes,
    ))
}
