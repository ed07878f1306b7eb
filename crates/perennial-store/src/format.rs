//! The byte formats of the store's files: the write-ahead log, the snapshot and the
//! index sidecar. All integers are little-endian; checksums are CRC-32 (IEEE, as in
//! zlib). See docs/store.md for the same tables in prose.
//!
//! Write-ahead log `wal-<generation as 16 hex digits>.log`:
//!
//! ```text
//! header (32 bytes): magic "PRNSTWAL" | version u32 | dim u32 | metric u8 | 0u8 x3
//!                    | generation u64 | crc32 of the 28 bytes before it u32
//! record:            len u32 | crc32(payload) u32 | payload (len bytes)
//! payload:           1 u8 | id u64 | value i64 | age u64 | meta_len u32 | meta | key f32 x dim
//!                    (insert; meta_len u32::MAX = no metadata, else UTF-8 bytes)
//!                    2 u8 | id u64                    (delete)
//!                    3 u8 | id u64 | age u64          (set age)
//! ```
//!
//! Snapshot `snapshot.bin`:
//!
//! ```text
//! header (44 bytes): magic "PRNSTSNP" | version u32 | dim u32 | metric u8 | 0u8 x3
//!                    | generation u64 | next_id u64 | count u64
//! count entries:     id u64 | value i64 | age u64 | meta_len u32 | meta | key f32 x dim
//! trailer:           crc32 of every byte before it u32 | "PRNSTEND"
//! ```
//!
//! Index sidecar `index.meta` (describes `index.usearch`, USearch's own file):
//!
//! ```text
//! magic "PRNSTIDX" | version u32 | dim u32 | metric u8 | 0u8 x3 | m u32 | ef_construction u32
//! | generation u64 | wal_offset u64 | count u64 | slots u64 | blob_len u64 | blob_crc u32
//! | crc32 of the bytes before it u32                                           (76 bytes)
//! ```

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use crate::entries::Entries;
use crate::error::{Error, Result};
use crate::{Metric, Quantization};

pub(crate) const WAL_MAGIC: [u8; 8] = *b"PRNSTWAL";
pub(crate) const SNAP_MAGIC: [u8; 8] = *b"PRNSTSNP";
pub(crate) const SNAP_END: [u8; 8] = *b"PRNSTEND";
pub(crate) const INDEX_MAGIC: [u8; 8] = *b"PRNSTIDX";
/// Format version of all three files.
pub(crate) const VERSION: u32 = 1;
/// Bytes of the log's header.
pub(crate) const WAL_HEADER_LEN: u64 = 32;
const SNAP_HEADER_LEN: u64 = 44;
const SNAP_TRAILER_LEN: u64 = 12;
pub(crate) const INDEX_META_LEN: usize = 76;
/// Largest metadata string an entry may carry, in bytes.
pub const MAX_METADATA_BYTES: usize = 1 << 20;
const NO_META: u32 = u32::MAX;

const TAG_INSERT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_SET_AGE: u8 = 3;

pub(crate) fn metric_code(m: Metric) -> u8 {
    match m {
        Metric::Cosine => 1,
        Metric::L2 => 2,
    }
}

pub(crate) fn metric_from_code(c: u8) -> Option<Metric> {
    match c {
        1 => Some(Metric::Cosine),
        2 => Some(Metric::L2),
        _ => None,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

// ---------------------------------------------------------------------------------------
// Write-ahead log

/// The log's header fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalHeader {
    pub dim: u32,
    pub metric: Metric,
    pub generation: u64,
}

pub(crate) fn encode_wal_header(h: &WalHeader) -> [u8; WAL_HEADER_LEN as usize] {
    let mut b = [0u8; WAL_HEADER_LEN as usize];
    b[0..8].copy_from_slice(&WAL_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&h.dim.to_le_bytes());
    b[16] = metric_code(h.metric);
    b[20..28].copy_from_slice(&h.generation.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_wal_header(path: &Path, b: &[u8]) -> Result<WalHeader> {
    if b[0..8] != WAL_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a perennial-store log (bad magic)",
        ));
    }
    if crc32fast::hash(&b[0..28]) != u32_at(b, 28) {
        return Err(Error::corrupt(path, 28, "log header checksum mismatch"));
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(Error::corrupt(
            path,
            8,
            format!("log format version {version}, this build reads version {VERSION}"),
        ));
    }
    let metric = metric_from_code(b[16])
        .ok_or_else(|| Error::corrupt(path, 16, format!("unknown metric code {}", b[16])))?;
    Ok(WalHeader {
        dim: u32_at(b, 12),
        metric,
        generation: u64_at(b, 20),
    })
}

/// Appends one framed record: `len | crc | payload`.
fn frame(buf: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    payload(buf);
    let len = (buf.len() - start - 8) as u32;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_entry(b: &mut Vec<u8>, id: u64, value: i64, age: u64, meta: Option<&str>, key: &[f32]) {
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&value.to_le_bytes());
    b.extend_from_slice(&age.to_le_bytes());
    match meta {
        Some(m) => {
            b.extend_from_slice(&(m.len() as u32).to_le_bytes());
            b.extend_from_slice(m.as_bytes());
        }
        None => b.extend_from_slice(&NO_META.to_le_bytes()),
    }
    for x in key {
        b.extend_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn encode_insert(
    buf: &mut Vec<u8>,
    id: u64,
    value: i64,
    age: u64,
    meta: Option<&str>,
    key: &[f32],
) {
    frame(buf, |b| {
        b.push(TAG_INSERT);
        put_entry(b, id, value, age, meta, key);
    });
}

pub(crate) fn encode_delete(buf: &mut Vec<u8>, id: u64) {
    frame(buf, |b| {
        b.push(TAG_DELETE);
        b.extend_from_slice(&id.to_le_bytes());
    });
}

pub(crate) fn encode_set_age(buf: &mut Vec<u8>, id: u64, age: u64) {
    frame(buf, |b| {
        b.push(TAG_SET_AGE);
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&age.to_le_bytes());
    });
}

/// One decoded log record; the key is still raw little-endian bytes.
pub(crate) enum Record<'a> {
    Insert {
        id: u64,
        value: i64,
        age: u64,
        meta: Option<&'a str>,
        key: &'a [u8],
    },
    Delete {
        id: u64,
    },
    SetAge {
        id: u64,
        age: u64,
    },
}

fn decode_record(p: &[u8], dim: usize) -> std::result::Result<Record<'_>, String> {
    let tag = *p.first().ok_or("empty record")?;
    match tag {
        TAG_INSERT => {
            if p.len() < 29 {
                return Err(format!("insert record of {} bytes is too short", p.len()));
            }
            let meta_len = u32_at(p, 25);
            let (meta, key_at) = if meta_len == NO_META {
                (None, 29)
            } else {
                let m = meta_len as usize;
                if m > MAX_METADATA_BYTES || 29 + m > p.len() {
                    return Err(format!("metadata length {m} does not fit the record"));
                }
                let s = std::str::from_utf8(&p[29..29 + m])
                    .map_err(|_| "metadata is not UTF-8".to_string())?;
                (Some(s), 29 + m)
            };
            if p.len() - key_at != dim * 4 {
                return Err(format!(
                    "insert record holds a key of {} bytes, expected {} (dim {dim})",
                    p.len() - key_at,
                    dim * 4
                ));
            }
            Ok(Record::Insert {
                id: u64_at(p, 1),
                value: u64_at(p, 9) as i64,
                age: u64_at(p, 17),
                meta,
                key: &p[key_at..],
            })
        }
        TAG_DELETE if p.len() == 9 => Ok(Record::Delete { id: u64_at(p, 1) }),
        TAG_SET_AGE if p.len() == 17 => Ok(Record::SetAge {
            id: u64_at(p, 1),
            age: u64_at(p, 9),
        }),
        TAG_DELETE | TAG_SET_AGE => Err(format!("record of tag {tag} has {} bytes", p.len())),
        t => Err(format!("unknown record tag {t}")),
    }
}

/// What reading the log found.
#[derive(Debug)]
pub(crate) struct WalScan {
    /// Length of the valid prefix: header and whole, checked records.
    pub valid_len: u64,
    /// Length of the file as found.
    pub file_len: u64,
    /// Why the bytes after `valid_len` were judged a torn (never acknowledged) tail.
    pub torn: Option<String>,
}

fn read_full(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<()> {
    r.read_exact(buf).map_err(|e| Error::io(path, e))
}

fn rest_is_zero(r: &mut impl Read, path: &Path) -> Result<bool> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// Reads the log at `path`, checks its header with `check_header`, and hands every
/// record with its byte offset to `apply` (an `Err(reason)` from it is corruption).
///
/// A damaged last record, a record running past the end of the file, a partial frame
/// header or an all-zero tail are a torn tail: reported in [`WalScan::torn`], not an
/// error. Damage followed by more data is [`Error::Corrupt`].
pub(crate) fn scan_wal(
    path: &Path,
    check_header: impl FnOnce(&WalHeader) -> Result<()>,
    mut apply: impl FnMut(u64, Record<'_>) -> std::result::Result<(), String>,
) -> Result<WalScan> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < WAL_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            file_len,
            format!("log is {file_len} bytes, shorter than its {WAL_HEADER_LEN}-byte header"),
        ));
    }
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut hb = [0u8; WAL_HEADER_LEN as usize];
    read_full(&mut r, &mut hb, path)?;
    let header = decode_wal_header(path, &hb)?;
    check_header(&header)?;
    let dim = header.dim as usize;
    let max_len = 29 + MAX_METADATA_BYTES as u64 + 4 * dim as u64;
    let mut pos = WAL_HEADER_LEN;
    let mut payload = Vec::new();
    let torn = loop {
        let rem = file_len - pos;
        if rem == 0 {
            break None;
        }
        if rem < 8 {
            break Some(format!("{rem}-byte partial record header"));
        }
        let mut fh = [0u8; 8];
        read_full(&mut r, &mut fh, path)?;
        let len = u32_at(&fh, 0) as u64;
        let crc = u32_at(&fh, 4);
        if len == 0 || len > max_len {
            if fh.iter().all(|&b| b == 0) && rest_is_zero(&mut r, path)? {
                break Some(format!("{rem} zero bytes"));
            }
            return Err(Error::corrupt(
                path,
                pos,
                format!("impossible record length {len} (at most {max_len})"),
            ));
        }
        if len > rem - 8 {
            break Some(format!(
                "last record claims {len} bytes but only {} remain",
                rem - 8
            ));
        }
        payload.resize(len as usize, 0);
        read_full(&mut r, &mut payload, path)?;
        if crc32fast::hash(&payload) != crc {
            if pos + 8 + len == file_len {
                break Some("checksum mismatch in the last record".to_string());
            }
            return Err(Error::corrupt(
                path,
                pos,
                "record checksum mismatch (followed by more records)",
            ));
        }
        let rec = decode_record(&payload, dim).map_err(|e| Error::corrupt(path, pos, e))?;
        apply(pos, rec).map_err(|e| Error::corrupt(path, pos, e))?;
        pos += 8 + len;
    };
    Ok(WalScan {
        valid_len: pos,
        file_len,
        torn,
    })
}

// ---------------------------------------------------------------------------------------
// Snapshot

/// The snapshot's header fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapHeader {
    pub dim: u32,
    pub metric: Metric,
    pub generation: u64,
    pub next_id: u64,
    pub count: u64,
}

struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    pos: u64,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes the snapshot of `entries` to `w` (not synced).
pub(crate) fn write_snapshot(w: impl Write, h: &SnapHeader, e: &Entries) -> io::Result<()> {
    let mut w = CrcWriter {
        inner: w,
        hasher: crc32fast::Hasher::new(),
    };
    let mut b = Vec::with_capacity(1 << 16);
    b.extend_from_slice(&SNAP_MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&h.dim.to_le_bytes());
    b.extend_from_slice(&[metric_code(h.metric), 0, 0, 0]);
    b.extend_from_slice(&h.generation.to_le_bytes());
    b.extend_from_slice(&h.next_id.to_le_bytes());
    b.extend_from_slice(&h.count.to_le_bytes());
    for row in 0..e.len() {
        put_entry(
            &mut b,
            e.ids[row],
            e.values[row],
            e.ages[row],
            e.meta[row].as_deref(),
            e.key(row),
        );
        if b.len() >= 1 << 16 {
            w.write_all(&b)?;
            b.clear();
        }
    }
    w.write_all(&b)?;
    let crc = w.hasher.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    inner.write_all(&SNAP_END)?;
    inner.flush()
}

/// Reads a snapshot into `entries` (which must be empty), after `check_header` accepted
/// its header. Any damage, including truncation, is [`Error::Corrupt`].
pub(crate) fn read_snapshot(
    path: &Path,
    check_header: impl FnOnce(&SnapHeader) -> Result<()>,
    entries: &mut Entries,
) -> Result<SnapHeader> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let truncated = |at: u64| {
        Error::corrupt(
            path,
            at,
            format!("snapshot is truncated or damaged (file is {file_len} bytes)"),
        )
    };
    if file_len < SNAP_HEADER_LEN + SNAP_TRAILER_LEN {
        return Err(truncated(file_len));
    }
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
        pos: 0,
    };
    let mut hb = [0u8; SNAP_HEADER_LEN as usize];
    read_full(&mut r, &mut hb, path)?;
    if hb[0..8] != SNAP_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a perennial-store snapshot (bad magic)",
        ));
    }
    let version = u32_at(&hb, 8);
    if version != VERSION {
        return Err(Error::corrupt(
            path,
            8,
            format!("snapshot format version {version}, this build reads version {VERSION}"),
        ));
    }
    let metric = metric_from_code(hb[16])
        .ok_or_else(|| Error::corrupt(path, 16, format!("unknown metric code {}", hb[16])))?;
    let h = SnapHeader {
        dim: u32_at(&hb, 12),
        metric,
        generation: u64_at(&hb, 20),
        next_id: u64_at(&hb, 28),
        count: u64_at(&hb, 36),
    };
    let dim = h.dim as usize;
    let min_entry = 28 + 4 * dim as u64;
    let body = file_len - SNAP_HEADER_LEN - SNAP_TRAILER_LEN;
    if h.count.checked_mul(min_entry).is_none_or(|b| b > body) {
        return Err(Error::corrupt(
            path,
            36,
            format!(
                "header claims {} entries, more than the file's {file_len} bytes can hold",
                h.count
            ),
        ));
    }
    check_header(&h)?;
    entries.reserve(h.count as usize);
    let end = file_len - SNAP_TRAILER_LEN;
    let mut fixed = [0u8; 24];
    let mut meta = Vec::new();
    let mut key = vec![0u8; dim * 4];
    for _ in 0..h.count {
        let at = r.pos;
        if at + min_entry > end {
            return Err(truncated(at));
        }
        read_full(&mut r, &mut fixed, path)?;
        let mut ml = [0u8; 4];
        read_full(&mut r, &mut ml, path)?;
        let ml = u32::from_le_bytes(ml);
        let m = if ml == NO_META {
            None
        } else {
            if ml as usize > MAX_METADATA_BYTES || r.pos + ml as u64 + 4 * dim as u64 > end {
                return Err(Error::corrupt(
                    path,
                    at,
                    format!("entry metadata length {ml} does not fit the file"),
                ));
            }
            meta.resize(ml as usize, 0);
            read_full(&mut r, &mut meta, path)?;
            Some(
                std::str::from_utf8(&meta)
                    .map_err(|_| Error::corrupt(path, at, "entry metadata is not UTF-8"))?
                    .to_string(),
            )
        };
        read_full(&mut r, &mut key, path)?;
        let id = u64_at(&fixed, 0);
        if id >= h.next_id {
            return Err(Error::corrupt(
                path,
                at,
                format!("entry id {id} is not below next_id {}", h.next_id),
            ));
        }
        let ok = entries.push_le(id, &key, u64_at(&fixed, 8) as i64, u64_at(&fixed, 16), m);
        if !ok {
            return Err(Error::corrupt(path, at, format!("duplicate entry id {id}")));
        }
    }
    if r.pos != end {
        return Err(Error::corrupt(
            path,
            r.pos,
            format!("{} unexpected bytes after the last entry", end - r.pos),
        ));
    }
    let crc = r.hasher.clone().finalize();
    let mut t = [0u8; SNAP_TRAILER_LEN as usize];
    read_full(&mut r.inner, &mut t, path)?;
    if t[4..12] != SNAP_END {
        return Err(Error::corrupt(path, end + 4, "snapshot end marker missing"));
    }
    if u32_at(&t, 0) != crc {
        return Err(Error::corrupt(path, end, "snapshot checksum mismatch"));
    }
    Ok(h)
}

// ---------------------------------------------------------------------------------------
// Index sidecar

/// What `index.meta` says about `index.usearch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexMeta {
    pub dim: u32,
    pub metric: Metric,
    pub m: u32,
    pub ef_construction: u32,
    pub quantization: Quantization,
    pub generation: u64,
    pub wal_offset: u64,
    pub count: u64,
    pub slots: u64,
    pub blob_len: u64,
    pub blob_crc: u32,
}

pub(crate) fn encode_index_meta(m: &IndexMeta) -> [u8; INDEX_META_LEN] {
    let mut b = [0u8; INDEX_META_LEN];
    b[0..8].copy_from_slice(&INDEX_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&m.dim.to_le_bytes());
    b[16] = metric_code(m.metric);
    // Byte 17 was zero before the quantisation was recorded: zero is f32.
    b[17] = match m.quantization {
        Quantization::F32 => 0,
        Quantization::F16 => 1,
        Quantization::I8 => 2,
    };
    b[20..24].copy_from_slice(&m.m.to_le_bytes());
    b[24..28].copy_from_slice(&m.ef_construction.to_le_bytes());
    b[28..36].copy_from_slice(&m.generation.to_le_bytes());
    b[36..44].copy_from_slice(&m.wal_offset.to_le_bytes());
    b[44..52].copy_from_slice(&m.count.to_le_bytes());
    b[52..60].copy_from_slice(&m.slots.to_le_bytes());
    b[60..68].copy_from_slice(&m.blob_len.to_le_bytes());
    b[68..72].copy_from_slice(&m.blob_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[0..72]);
    b[72..76].copy_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_index_meta(b: &[u8]) -> std::result::Result<IndexMeta, String> {
    if b.len() != INDEX_META_LEN {
        return Err(format!(
            "index.meta is {} bytes, expected {INDEX_META_LEN}",
            b.len()
        ));
    }
    if b[0..8] != INDEX_MAGIC {
        return Err("index.meta has a bad magic".into());
    }
    if crc32fast::hash(&b[0..72]) != u32_at(b, 72) {
        return Err("index.meta checksum mismatch".into());
    }
    if u32_at(b, 8) != VERSION {
        return Err(format!("index.meta version {}", u32_at(b, 8)));
    }
    Ok(IndexMeta {
        dim: u32_at(b, 12),
        metric: metric_from_code(b[16]).ok_or("index.meta has an unknown metric")?,
        m: u32_at(b, 20),
        ef_construction: u32_at(b, 24),
        quantization: match b[17] {
            0 => Quantization::F32,
            1 => Quantization::F16,
            2 => Quantization::I8,
            q => return Err(format!("index.meta has an unknown quantisation {q}")),
        },
        generation: u64_at(b, 28),
        wal_offset: u64_at(b, 36),
        count: u64_at(b, 44),
        slots: u64_at(b, 52),
        blob_len: u64_at(b, 60),
        blob_crc: u32_at(b, 68),
    })
}

/// CRC-32 and length of a whole file, read in 1 MiB pieces.
pub(crate) fn file_crc(path: &Path) -> io::Result<(u64, u32)> {
    let mut f = File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((len, h.finalize()));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}
