//! The latest few distinct values of a kind, for equal values to share one allocation: a
//! bounded table remembering a value for each of many messages (who may answer each, each
//! one's handling conditions) holds one `Arc` per message, not one copy, when most messages
//! carry the same few values.
//!
//! Sans-I/O. Bounded: [`LATEST`] values; a value unlike all of them is kept in place of the
//! oldest, so a stream of distinct values costs what it did without sharing, and no more.

use std::collections::VecDeque;
use std::sync::Arc;

/// How many distinct values are kept for sharing.
pub(crate) const LATEST: usize = 16;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Latest<T: ?Sized> {
    values: VecDeque<Arc<T>>,
}

impl<T: ?Sized> Default for Latest<T> {
    fn default() -> Latest<T> {
        Latest {
            values: VecDeque::new(),
        }
    }
}

impl<T: ?Sized> Latest<T> {
    /// One of the latest values that `same` finds equal to `value`, or `value` (then kept as
    /// the latest, in place of the oldest beyond [`LATEST`]).
    pub fn share<V: Into<Arc<T>>>(&mut self, value: V, same: impl Fn(&T, &V) -> bool) -> Arc<T> {
        if let Some(v) = self.values.iter().find(|v| same(v, &value)) {
            return v.clone();
        }
        let v = value.into();
        if self.values.len() >= LATEST {
            self.values.pop_front();
        }
        self.values.push_back(v.clone());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_and_the_table_stays_bounded() {
        let mut latest: Latest<[u8]> = Latest::default();
        let mut get = |v: &[u8]| latest.share(v.to_vec(), |x, v| x == v.as_slice());
        let a = get(b"pgr");
        assert!(Arc::ptr_eq(&a, &get(b"pgr")));
        for i in 0..LATEST as u8 {
            get(&[i]);
        }
        assert!(!Arc::ptr_eq(&a, &get(b"pgr")), "the oldest was let go");
        assert_eq!(latest.values.len(), LATEST);
    }
}
