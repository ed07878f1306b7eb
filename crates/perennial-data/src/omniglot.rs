//! Omniglot (Lake, Salakhutdinov & Tenenbaum, Science 2015).
//!
//! Two on-disk forms are read, and give identical images:
//! * the `.npz` archives (`images_background.npz`, `images_evaluation.npz`): boolean
//!   arrays of shape `(chars, 20, 105, 105)`, `true` = white paper, with
//!   `alphabets.tsv` naming each character's alphabet;
//! * the canonical PNG layout `images_background/<Alphabet>/characterNN/<id>_<drawer>.png`,
//!   as a folder or as the official zip.
//!
//! Images are resized from 105 x 105 to 28 x 28 with an antialiased bilinear filter,
//! with ink = 1.0 and paper = 0.0. Two split schemes are offered ([`SplitScheme`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataset::{ClassEntry, ClassSet};
use crate::error::{Error, Result};
use crate::imageops::{grey_to_ink, resize_bilinear_aa};
use crate::npy::read_header;

/// Side of the images Perennial trains on.
pub const SIZE: usize = 28;
/// Side of the original Omniglot images.
pub const ORIGINAL_SIZE: usize = 105;
/// Number of characters in the background set (Omniglot ids 1..=964).
pub const BACKGROUND_CHARS: usize = 964;
/// Number of characters in the whole of Omniglot (ids 1..=1623).
pub const TOTAL_CHARS: usize = 1623;

/// The two halves of Omniglot as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// `images_background`: 30 alphabets, ids 1..=964.
    Background,
    /// `images_evaluation`: 20 alphabets, ids 965..=1623.
    Evaluation,
}

impl Background {
    fn stem(self) -> &'static str {
        match self {
            Background::Background => "images_background",
            Background::Evaluation => "images_evaluation",
        }
    }
    fn json_key(self) -> &'static str {
        match self {
            Background::Background => "background",
            Background::Evaluation => "evaluation",
        }
    }
}

/// How characters are divided between training, validation and test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitScheme {
    /// Vinyals et al. 2016: 1028 / 172 / 423 characters (from `splits/omniglot__*.json`),
    /// every split augmented with rotations by 0/90/180/270 degrees as distinct classes.
    Vinyals,
    /// Lake et al. 2015: train on the 964 background characters (with rotations), test on
    /// the 659 evaluation characters (no rotations). There is no validation split.
    Lake,
}

impl std::str::FromStr for SplitScheme {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vinyals" => Ok(SplitScheme::Vinyals),
            "lake" => Ok(SplitScheme::Lake),
            _ => Err(Error::invalid(
                "--splits",
                s,
                "expected `vinyals` or `lake`",
            )),
        }
    }
}

/// Which part of a split scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Meta-training classes.
    Train,
    /// Validation classes (model selection).
    Val,
    /// Held-out test classes.
    Test,
    /// Training and validation classes together (final training without model
    /// selection, as in Snell et al. 2017, who trained on 1200 characters).
    TrainVal,
}

impl Split {
    /// The lowercase name (`train`, `val`, `test`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::TrainVal => "trainval",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            "trainval" => Ok(Split::TrainVal),
            _ => Err(Error::invalid(
                "--split",
                s,
                "expected train, val, test or trainval",
            )),
        }
    }
}

/// One character: where it comes from and where its images are stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Character {
    /// Global Omniglot id, 1..=1623.
    pub id: u32,
    /// Alphabet folder name, e.g. `Asomtavruli_(Georgian)`.
    pub alphabet: String,
    /// 1-based index within its alphabet (`characterNN`).
    pub number: u32,
    /// Indices of its images (one per drawer, in drawer order) in [`Omniglot::images`].
    pub examples: Vec<u32>,
}

/// The loaded characters of Omniglot, images already at 28 x 28.
#[derive(Debug, Clone)]
pub struct Omniglot {
    /// All images, 28 x 28 each, ink = 1.0.
    pub images: Arc<Vec<f32>>,
    /// Characters by global id.
    pub characters: BTreeMap<u32, Character>,
}

impl Omniglot {
    /// Loads both halves from `dir`, preferring `<stem>.npz` (with `alphabets.tsv`), then
    /// a `<stem>/` folder, then `<stem>.zip`. The data may sit in `dir` itself or in
    /// `dir/omniglot`.
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = if dir.join("omniglot").is_dir() {
            dir.join("omniglot")
        } else {
            dir.to_path_buf()
        };
        let mut builder = Builder::default();
        for half in [Background::Background, Background::Evaluation] {
            let npz = dir.join(format!("{}.npz", half.stem()));
            let folder = dir.join(half.stem());
            let zip = dir.join(format!("{}.zip", half.stem()));
            if npz.is_file() {
                let alphabets = read_alphabets(&dir.join("alphabets.tsv"))?;
                builder.add_npz(&npz, half, &alphabets)?;
            } else if folder.is_dir() {
                builder.add_png_dir(&folder)?;
            } else if zip.is_file() {
                builder.add_png_zip(&zip)?;
            } else {
                return Err(Error::Missing {
                    what: format!("Omniglot {} (.npz, folder or .zip)", half.stem()),
                    path: npz,
                    hint: "; pass --data-dir, set PERENNIAL_DATA, or run `perennial download omniglot`"
                        .into(),
                });
            }
        }
        Ok(builder.finish())
    }

    /// Loads only the archive or folder at `path`: a `.npz` (needs `alphabets.tsv` beside
    /// it), a `.zip` of PNGs, or a folder of PNGs in the canonical layout.
    pub fn load_one(path: &Path) -> Result<Self> {
        let mut builder = Builder::default();
        if path.is_dir() {
            builder.add_png_dir(path)?;
        } else if path.extension().is_some_and(|e| e == "npz") {
            let half = if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains("evaluation"))
            {
                Background::Evaluation
            } else {
                Background::Background
            };
            let tsv = path.with_file_name("alphabets.tsv");
            builder.add_npz(path, half, &read_alphabets(&tsv)?)?;
        } else if path.is_file() {
            builder.add_png_zip(path)?;
        } else {
            return Err(Error::Missing {
                what: "Omniglot archive".into(),
                path: path.to_path_buf(),
                hint: String::new(),
            });
        }
        Ok(builder.finish())
    }

    /// The classes of `split` under `scheme`. `splits_dir` holds the Vinyals split files
    /// (`omniglot__{train,val,test}.json`); it is ignored by the Lake scheme.
    pub fn split(&self, scheme: SplitScheme, split: Split, splits_dir: &Path) -> Result<ClassSet> {
        let (ids, rotate): (Vec<u32>, bool) = match scheme {
            SplitScheme::Vinyals => (self.vinyals_ids(split, splits_dir)?, true),
            SplitScheme::Lake => match split {
                Split::Train | Split::TrainVal => ((1..=BACKGROUND_CHARS as u32).collect(), true),
                Split::Val => (Vec::new(), false),
                Split::Test => (
                    (BACKGROUND_CHARS as u32 + 1..=TOTAL_CHARS as u32).collect(),
                    false,
                ),
            },
        };
        self.class_set(split.name(), &ids, rotate)
    }

    /// A class set of the given characters, each optionally in four rotations.
    pub fn class_set(&self, split: &str, ids: &[u32], rotations: bool) -> Result<ClassSet> {
        let mut classes = Vec::with_capacity(ids.len() * if rotations { 4 } else { 1 });
        let turns: &[u8] = if rotations { &[0, 1, 2, 3] } else { &[0] };
        for &rot in turns {
            for id in ids {
                let c = self.characters.get(id).ok_or_else(|| Error::Missing {
                    what: format!("Omniglot character id {id} (needed by the {split} split)"),
                    path: PathBuf::from("<loaded Omniglot data>"),
                    hint: "; the data folder holds only part of Omniglot".into(),
                })?;
                classes.push(ClassEntry {
                    name: format!(
                        "{}/character{:02}/rot{}",
                        c.alphabet,
                        c.number,
                        rot as u32 * 90
                    ),
                    examples: c.examples.clone(),
                    rotation: rot,
                });
            }
        }
        Ok(ClassSet {
            split: split.to_string(),
            height: SIZE,
            width: SIZE,
            images: self.images.clone(),
            classes,
        })
    }

    fn vinyals_ids(&self, split: Split, splits_dir: &Path) -> Result<Vec<u32>> {
        if split == Split::TrainVal {
            let mut ids = self.vinyals_ids(Split::Train, splits_dir)?;
            ids.extend(self.vinyals_ids(Split::Val, splits_dir)?);
            return Ok(ids);
        }
        let file = splits_dir.join(format!("omniglot__{}.json", split.name()));
        let text = std::fs::read_to_string(&file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing {
                what: "Vinyals split file".into(),
                path: file.clone(),
                hint: "; it ships in the data folder's splits/".into(),
            },
            _ => Error::io(&file, e),
        })?;
        let json: BTreeMap<String, BTreeMap<String, Vec<String>>> =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&file, e.to_string()))?;
        let by_name: HashMap<(&str, u32), u32> = self
            .characters
            .values()
            .map(|c| ((c.alphabet.as_str(), c.number), c.id))
            .collect();
        let mut ids = Vec::new();
        for half in [Background::Background, Background::Evaluation] {
            for (alphabet, chars) in json.get(half.json_key()).into_iter().flatten() {
                for ch in chars {
                    let number: u32 = ch
                        .strip_prefix("character")
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| {
                            Error::corrupt(&file, format!("bad character name {ch:?}"))
                        })?;
                    let id = by_name.get(&(alphabet.as_str(), number)).ok_or_else(|| {
                        Error::Missing {
                            what: format!(
                                "Omniglot character {alphabet}/{ch} (needed by {})",
                                file.display()
                            ),
                            path: PathBuf::from("<loaded Omniglot data>"),
                            hint: "; the data folder holds only part of Omniglot".into(),
                        }
                    })?;
                    ids.push(*id);
                }
            }
        }
        Ok(ids)
    }
}

/// One alphabet's contiguous range of global ids, from `alphabets.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlphabetRange {
    /// Alphabet folder name.
    pub name: String,
    /// First global id.
    pub first: u32,
    /// Last global id (inclusive).
    pub last: u32,
}

/// Reads `alphabets.tsv` (columns `set alphabet first_char_id last_char_id n_chars`).
pub fn read_alphabets(path: &Path) -> Result<Vec<AlphabetRange>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Missing {
            what: "Omniglot alphabet table".into(),
            path: path.to_path_buf(),
            hint: "; it must sit beside the .npz files".into(),
        },
        _ => Error::io(path, e),
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let parsed = (cols.len() >= 4)
            .then(|| Some((cols[1], cols[2].parse().ok()?, cols[3].parse().ok()?)))
            .flatten();
        let (name, first, last): (&str, u32, u32) = parsed.ok_or_else(|| {
            Error::corrupt(
                path,
                format!("line {}: expected 5 tab-separated columns", n + 1),
            )
        })?;
        out.push(AlphabetRange {
            name: name.to_string(),
            first,
            last,
        });
    }
    Ok(out)
}

#[derive(Default)]
struct Builder {
    images: Vec<f32>,
    characters: BTreeMap<u32, Character>,
}

impl Builder {
    fn finish(self) -> Omniglot {
        Omniglot {
            images: Arc::new(self.images),
            characters: self.characters,
        }
    }

    fn push_image(&mut self, ink: &[f32]) -> u32 {
        let idx = self.images.len() / (SIZE * SIZE);
        self.images.extend(resize_bilinear_aa(
            ink,
            ORIGINAL_SIZE,
            ORIGINAL_SIZE,
            SIZE,
            SIZE,
        ));
        idx as u32
    }

    fn add_npz(
        &mut self,
        path: &Path,
        half: Background,
        alphabets: &[AlphabetRange],
    ) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| Error::corrupt(path, format!("not a valid .npz (zip) archive: {e}")))?;
        let offset = match half {
            Background::Background => 1,
            Background::Evaluation => BACKGROUND_CHARS as u32 + 1,
        };
        let member = |zip: &mut zip::ZipArchive<BufReader<File>>, name: &str| -> Result<Vec<u8>> {
            let mut f = zip
                .by_name(name)
                .map_err(|_| Error::corrupt(path, format!("archive has no {name}")))?;
            let mut buf = Vec::with_capacity(f.size() as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| Error::corrupt(path, format!("cannot inflate {name}: {e}")))?;
            Ok(buf)
        };
        let labels_raw = member(&mut zip, "labels.npy")?;
        let mut cursor = labels_raw.as_slice();
        let lh = read_header(&mut cursor, &path.join("labels.npy"))?;
        let mut f = zip
            .by_name("images.npy")
            .map_err(|_| Error::corrupt(path, "archive has no images.npy"))?;
        let mut f = BufReader::with_capacity(1 << 20, &mut f);
        let h = read_header(&mut f, &path.join("images.npy"))?;
        if h.descr != "|b1"
            || h.fortran_order
            || h.shape.len() != 4
            || h.shape[2] != ORIGINAL_SIZE
            || h.shape[3] != ORIGINAL_SIZE
        {
            return Err(Error::corrupt(
                path,
                format!(
                    "images.npy must be C-order bool (chars, drawers, 105, 105); found descr {} shape {:?}{}",
                    h.descr,
                    h.shape,
                    if h.fortran_order { " (Fortran order)" } else { "" }
                ),
            ));
        }
        let (chars, drawers) = (h.shape[0], h.shape[1]);
        if lh.descr != "<i8" || lh.shape != [chars, drawers] || cursor.len() != chars * drawers * 8
        {
            return Err(Error::corrupt(
                path,
                format!(
                    "labels.npy must be <i8 of shape ({chars}, {drawers}); found {} {:?}",
                    lh.descr, lh.shape
                ),
            ));
        }
        let mut raw = vec![0u8; ORIGINAL_SIZE * ORIGINAL_SIZE];
        let mut ink = vec![0f32; ORIGINAL_SIZE * ORIGINAL_SIZE];
        self.images.reserve(chars * drawers * SIZE * SIZE);
        for c in 0..chars {
            let label = i64::from_le_bytes(
                cursor[c * drawers * 8..c * drawers * 8 + 8]
                    .try_into()
                    .unwrap(),
            );
            if label != c as i64 {
                return Err(Error::corrupt(
                    path,
                    format!("labels.npy: row {c} has label {label}"),
                ));
            }
            let id = offset + c as u32;
            let alphabet = alphabets
                .iter()
                .find(|a| a.first <= id && id <= a.last)
                .ok_or_else(|| {
                    Error::corrupt(path, format!("alphabets.tsv has no alphabet for id {id}"))
                })?;
            let mut examples = Vec::with_capacity(drawers);
            for _ in 0..drawers {
                f.read_exact(&mut raw)
                    .map_err(|e| Error::corrupt(path, format!("images.npy is truncated: {e}")))?;
                for (o, &b) in ink.iter_mut().zip(raw.iter()) {
                    // true (1) = white paper, false (0) = ink
                    *o = if b == 0 { 1.0 } else { 0.0 };
                }
                examples.push(self.push_image(&ink));
            }
            self.characters.insert(
                id,
                Character {
                    id,
                    alphabet: alphabet.name.clone(),
                    number: id - alphabet.first + 1,
                    examples,
                },
            );
        }
        Ok(())
    }

    /// Adds PNG files given as (relative path, bytes) pairs in canonical layout.
    fn add_png_files(&mut self, source: &Path, mut files: Vec<(String, Vec<u8>)>) -> Result<()> {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        // id -> (alphabet, number within alphabet, [(drawer, image index)])
        type Found = BTreeMap<u32, (String, u32, Vec<(u32, u32)>)>;
        let mut found: Found = BTreeMap::new();
        for (name, bytes) in &files {
            let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
            if parts.len() < 3 {
                continue;
            }
            let (alphabet, chardir, file) = (
                parts[parts.len() - 3],
                parts[parts.len() - 2],
                parts[parts.len() - 1],
            );
            let member = source.join(name);
            let bad_name =
                || Error::corrupt(&member, "expected <Alphabet>/characterNN/<id>_<drawer>.png");
            let number: u32 = chardir
                .strip_prefix("character")
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad_name)?;
            let stem = file.strip_suffix(".png").ok_or_else(bad_name)?;
            let (id, drawer) = stem.split_once('_').ok_or_else(bad_name)?;
            let id: u32 = id.parse().map_err(|_| bad_name())?;
            let drawer: u32 = drawer.parse().map_err(|_| bad_name())?;
            let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
                .map_err(|e| Error::BadImage {
                    path: member.clone(),
                    reason: e.to_string(),
                })?
                .to_luma8();
            if img.width() as usize != ORIGINAL_SIZE || img.height() as usize != ORIGINAL_SIZE {
                return Err(Error::BadImage {
                    path: member,
                    reason: format!("expected 105x105, found {}x{}", img.width(), img.height()),
                });
            }
            let idx = self.push_image(&grey_to_ink(img.as_raw()));
            let entry = found
                .entry(id)
                .or_insert_with(|| (alphabet.to_string(), number, Vec::new()));
            entry.2.push((drawer, idx));
        }
        for (id, (alphabet, number, mut ex)) in found {
            ex.sort();
            self.characters.insert(
                id,
                Character {
                    id,
                    alphabet,
                    number,
                    examples: ex.into_iter().map(|(_, i)| i).collect(),
                },
            );
        }
        Ok(())
    }

    fn add_png_zip(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| Error::corrupt(path, format!("not a valid zip archive: {e}")))?;
        let mut files = Vec::new();
        for i in 0..zip.len() {
            let mut f = zip
                .by_index(i)
                .map_err(|e| Error::corrupt(path, format!("member {i}: {e}")))?;
            if !f.is_file() || !f.name().ends_with(".png") {
                continue;
            }
            let name = f.name().to_string();
            let mut buf = Vec::with_capacity(f.size() as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| Error::corrupt(path, format!("cannot inflate {name}: {e}")))?;
            files.push((name, buf));
        }
        if files.is_empty() {
            return Err(Error::corrupt(path, "the archive holds no PNG images"));
        }
        self.add_png_files(path, files)
    }

    fn add_png_dir(&mut self, dir: &Path) -> Result<()> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files)?;
        if files.is_empty() {
            return Err(Error::corrupt(dir, "the folder holds no PNG images"));
        }
        self.add_png_files(dir, files)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "png") {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, bytes));
        }
    }
    Ok(())
}
