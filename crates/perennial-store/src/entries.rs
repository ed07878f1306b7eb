//! The in-memory table of live entries: column vectors with the keys in one contiguous
//! row-major `f32` matrix, and a map from id to row. Deleting moves the last row into the
//! hole, so rows are dense but not in id order.

use std::collections::HashMap;

use crate::EntryView;

#[derive(Debug, Default)]
pub(crate) struct Entries {
    pub dim: usize,
    pub ids: Vec<u64>,
    pub keys: Vec<f32>,
    pub values: Vec<i64>,
    pub ages: Vec<u64>,
    pub meta: Vec<Option<Box<str>>>,
    pub pos: HashMap<u64, usize>,
}

impl Entries {
    pub fn new(dim: usize) -> Self {
        Entries {
            dim,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn reserve(&mut self, n: usize) {
        self.ids.reserve(n);
        self.keys.reserve(n * self.dim);
        self.values.reserve(n);
        self.ages.reserve(n);
        self.meta.reserve(n);
        self.pos.reserve(n);
    }

    pub fn key(&self, row: usize) -> &[f32] {
        &self.keys[row * self.dim..(row + 1) * self.dim]
    }

    pub fn row(&self, id: u64) -> Option<usize> {
        self.pos.get(&id).copied()
    }

    pub fn view(&self, row: usize) -> EntryView<'_> {
        EntryView {
            id: self.ids[row],
            key: self.key(row),
            value: self.values[row],
            age: self.ages[row],
            metadata: self.meta[row].as_deref(),
        }
    }

    /// Adds an entry; false (and nothing added) when the id is already present.
    pub fn push(
        &mut self,
        id: u64,
        key: &[f32],
        value: i64,
        age: u64,
        meta: Option<String>,
    ) -> bool {
        debug_assert_eq!(key.len(), self.dim);
        if self.pos.contains_key(&id) {
            return false;
        }
        self.pos.insert(id, self.ids.len());
        self.ids.push(id);
        self.keys.extend_from_slice(key);
        self.values.push(value);
        self.ages.push(age);
        self.meta.push(meta.map(String::into_boxed_str));
        true
    }

    /// As [`Entries::push`], with the key as little-endian `f32` bytes.
    pub fn push_le(
        &mut self,
        id: u64,
        key: &[u8],
        value: i64,
        age: u64,
        meta: Option<String>,
    ) -> bool {
        debug_assert_eq!(key.len(), self.dim * 4);
        if self.pos.contains_key(&id) {
            return false;
        }
        self.pos.insert(id, self.ids.len());
        self.ids.push(id);
        self.keys.extend(
            key.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        self.values.push(value);
        self.ages.push(age);
        self.meta.push(meta.map(String::into_boxed_str));
        true
    }

    /// Removes an entry; false when absent.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(row) = self.pos.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            self.pos.insert(moved, row);
            let d = self.dim;
            self.keys.copy_within(last * d..(last + 1) * d, row * d);
        }
        self.ids.swap_remove(row);
        self.values.swap_remove(row);
        self.ages.swap_remove(row);
        self.meta.swap_remove(row);
        self.keys.truncate(last * self.dim);
        true
    }
}
