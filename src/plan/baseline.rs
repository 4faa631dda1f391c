//! The last-synced values of one user ([`Baseline`]), kept small: the state holds one per
//! managed user, so at 100,000 users every byte here is a tenth of a megabyte.

use crate::mapping::{AttrPath, Value};

/// The last-synced value of each directory- or merge-owned attribute of one user; a path
/// that is missing was never synced, one mapped to `None` was synced as absent.
///
/// A map from path to value, ordered by path (as a `BTreeMap` would be), stored as one
/// sorted vector: a user has a handful of paths, and a B-tree's smallest node holds
/// eleven, so the vector is a third of its size and as fast to search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline(Vec<(AttrPath, Option<Value>)>);

impl Baseline {
    pub fn new() -> Baseline {
        Baseline(Vec::new())
    }

    fn find(&self, path: &AttrPath) -> Result<usize, usize> {
        self.0.binary_search_by(|(p, _)| p.cmp(path))
    }

    /// The value last synced to `path`: `None` when it never was, `Some(None)` when it was
    /// synced as absent.
    pub fn get(&self, path: &AttrPath) -> Option<&Option<Value>> {
        self.find(path).ok().map(|i| &self.0[i].1)
    }

    /// Sets the value of `path`, returning the one it had.
    pub fn insert(&mut self, path: AttrPath, value: Option<Value>) -> Option<Option<Value>> {
        match self.find(&path) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (path, value));
                None
            }
        }
    }

    pub fn contains_key(&self, path: &AttrPath) -> bool {
        self.find(path).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The paths and their values, ordered by path.
    pub fn iter(&self) -> impl Iterator<Item = (&AttrPath, &Option<Value>)> {
        self.0.iter().map(|(p, v)| (p, v))
    }

    /// Gives back the room a baseline built by inserts may have left over (for the
    /// baselines a cycle holds for every user).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl FromIterator<(AttrPath, Option<Value>)> for Baseline {
    /// Later values of a path replace earlier ones, as in a map.
    fn from_iter<I: IntoIterator<Item = (AttrPath, Option<Value>)>>(iter: I) -> Baseline {
        let mut b = Baseline::new();
        for (path, value) in iter {
            b.insert(path, value);
        }
        b.shrink_to_fit();
        b
    }
}

impl<'a> IntoIterator for &'a Baseline {
    type Item = (&'a AttrPath, &'a Option<Value>);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (AttrPath, Option<Value>)>,
        fn(&'a (AttrPath, Option<Value>)) -> (&'a AttrPath, &'a Option<Value>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(p, v)| (p, v))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn path(i: u8) -> AttrPath {
        const PATHS: [&str; 6] = [
            "name.familyName",
            "name.givenName",
            "displayName",
            "emails[type eq \"work\"].value",
            "userName",
            "title",
        ];
        AttrPath::parse(PATHS[usize::from(i) % PATHS.len()]).unwrap()
    }

    proptest! {
        /// Any sequence of inserts leaves the baseline holding what a `BTreeMap` holds,
        /// in the same order, with the same answers to `get` and `insert`.
        #[test]
        fn behaves_as_an_ordered_map(ops in prop::collection::vec((0u8..6, prop::option::of("[a-c]{0,2}")), 0..20)) {
            let mut b = Baseline::new();
            let mut m: BTreeMap<AttrPath, Option<Value>> = BTreeMap::new();
            for (i, v) in ops {
                let value = v.map(Value::One);
                prop_assert_eq!(b.insert(path(i), value.clone()), m.insert(path(i), value));
            }
            for i in 0..6 {
                prop_assert_eq!(b.get(&path(i)), m.get(&path(i)));
            }
            prop_assert_eq!(b.len(), m.len());
            prop_assert!(b.iter().eq(m.iter()));
            let collected: Baseline = m.clone().into_iter().collect();
            prop_assert_eq!(collected, b);
        }
    }
}
