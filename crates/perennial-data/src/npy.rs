//! A minimal reader for NumPy `.npy` headers, enough for Omniglot's `.npz` archives.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NpyHeader {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

/// Reads the magic string and header from `r`, leaving it at the first data byte.
pub(crate) fn read_header(r: &mut impl Read, path: &Path) -> Result<NpyHeader> {
    let bad = |reason: &str| Error::corrupt(path, format!("not a valid .npy array: {reason}"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| bad("file too short"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("missing \\x93NUMPY magic"));
    }
    let len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    if len > 1 << 20 {
        return Err(bad("header longer than 1 MiB"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|_| bad("truncated header"))?;
    let text = String::from_utf8_lossy(&text);
    parse_dict(&text).ok_or_else(|| bad(&format!("cannot parse header {:?}", text.trim())))
}

fn parse_dict(text: &str) -> Option<NpyHeader> {
    let field = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'')?;
    let descr = descr[..descr.find('\'')?].to_string();
    let fortran = field("fortran_order")?;
    let fortran_order = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        return None;
    };
    let shape = field("shape")?.strip_prefix('(')?;
    let shape = &shape[..shape.find(')')?];
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    Some(NpyHeader {
        descr,
        fortran_order,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_numpy_header() {
        let h =
            parse_dict("{'descr': '|b1', 'fortran_order': False, 'shape': (964, 20, 105, 105), }")
                .unwrap();
        assert_eq!(h.descr, "|b1");
        assert!(!h.fortran_order);
        assert_eq!(h.shape, vec![964, 20, 105, 105]);
        let h = parse_dict("{'descr': '<i8', 'fortran_order': True, 'shape': (7,), }").unwrap();
        assert_eq!(h.shape, vec![7]);
        assert!(h.fortran_order);
        assert!(parse_dict("{'descr': '<i8'}").is_none());
    }

    #[test]
    fn rejects_garbage() {
        let mut bytes: &[u8] = b"PK\x03\x04 not numpy";
        let err = read_header(&mut bytes, Path::new("x.npy")).unwrap_err();
        assert!(err.to_string().contains("x.npy"), "{err}");
    }
}
