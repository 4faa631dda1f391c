//! The last-synced values of one user ([`Baseline`]), kept small: the state holds one per
//! managed user, so at 100,000 users every byte here is a tenth of a megabyte.

use std::sync::Arc;

use crate::mapping::{AttrPath, Packed, Value, ValueRef};

/// The last-synced value of each directory- or merge-owned attribute of one user; a path
/// that is missing was never synced, one mapped to `None` was synced as absent.
///
/// A map from path to value, ordered by path (as a `BTreeMap` would be), stored packed:
/// the paths in one shared list (users synced by one configuration have the same paths,
/// and [`Baseline::with_paths_of`] lets them share it) and the values in one [`Packed`] row.
/// Built once, read many times: [`Baseline::insert`] rebuilds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    paths: Arc<[AttrPath]>,
    values: Packed,
}

impl Baseline {
    pub fn new() -> Baseline {
        Baseline::default()
    }

    fn find(&self, path: &AttrPath) -> Result<usize, usize> {
        self.paths.binary_search_by(|p| p.cmp(path))
    }

    /// The value last synced to `path`: `None` when it never was, `Some(None)` when it was
    /// synced as absent.
    pub fn get(&self, path: &AttrPath) -> Option<Option<Value>> {
        self.get_ref(path).map(|v| v.map(ValueRef::to_value))
    }

    /// [`Baseline::get`], borrowed: for comparing without a copy.
    pub fn get_ref(&self, path: &AttrPath) -> Option<Option<ValueRef<'_>>> {
        self.find(path).ok().map(|i| self.values.get(i))
    }

    /// Whether `path` was last synced as exactly `value` (`None`: as absent).
    pub fn holds(&self, path: &AttrPath, value: Option<&Value>) -> bool {
        match (self.get_ref(path), value) {
            (Some(None), None) => true,
            (Some(Some(r)), Some(v)) => r.is(v),
            _ => false,
        }
    }

    /// Sets the value of `path`, returning the one it had. Rebuilds the baseline.
    pub fn insert(&mut self, path: AttrPath, value: Option<Value>) -> Option<Option<Value>> {
        let mut entries = self.entries();
        let old = match entries.binary_search_by(|(p, _)| p.cmp(&path)) {
            Ok(i) => Some(std::mem::replace(&mut entries[i].1, value)),
            Err(i) => {
                entries.insert(i, (path, value));
                None
            }
        };
        *self = Baseline::sorted(entries);
        old
    }

    /// This baseline, holding `other`'s list of paths instead of its own when the two
    /// lists are the same.
    pub fn with_paths_of(mut self, other: &Baseline) -> Baseline {
        if self.paths[..] == other.paths[..] {
            self.paths = Arc::clone(&other.paths);
        }
        self
    }

    /// Whether this baseline and `other` share one list of paths ([`Baseline::with_paths_of`]).
    pub fn shares_paths(&self, other: &Baseline) -> bool {
        Arc::ptr_eq(&self.paths, &other.paths)
    }

    pub fn contains_key(&self, path: &AttrPath) -> bool {
        self.find(path).is_ok()
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The paths and their values, ordered by path.
    pub fn iter(&self) -> impl Iterator<Item = (&AttrPath, Option<ValueRef<'_>>)> {
        self.paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p, self.values.get(i)))
    }

    /// The paths and their values, owned.
    fn entries(&self) -> Vec<(AttrPath, Option<Value>)> {
        self.iter()
            .map(|(p, v)| (p.clone(), v.map(ValueRef::to_value)))
            .collect()
    }

    /// Builds a baseline from entries sorted by path, each path once.
    fn sorted(entries: Vec<(AttrPath, Option<Value>)>) -> Baseline {
        let values = Packed::new(entries.iter().map(|(_, v)| v.as_ref()));
        let paths = entries.into_iter().map(|(p, _)| p).collect();
        Baseline { paths, values }
    }
}

impl FromIterator<(AttrPath, Option<Value>)> for Baseline {
    /// Later values of a path replace earlier ones, as in a map.
    fn from_iter<I: IntoIterator<Item = (AttrPath, Option<Value>)>>(iter: I) -> Baseline {
        let mut entries: Vec<(AttrPath, Option<Value>)> = iter.into_iter().collect();
        // Stable: of equal paths the later stays last, and is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(AttrPath, Option<Value>)> = Vec::with_capacity(entries.len());
        for e in entries {
            match kept.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => kept.push(e),
            }
        }
        Baseline::sorted(kept)
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
        /// in the same order, with the same answers to `get`, `holds` and `insert`; built
        /// at once (sharing another's paths or not), it is the same baseline.
        #[test]
        fn behaves_as_an_ordered_map(
            ops in prop::collection::vec((0u8..6, crate::mapping::any_value("a-c")), 0..20),
            probe in crate::mapping::any_value("a-c"),
        ) {
            let mut b = Baseline::new();
            let mut m: BTreeMap<AttrPath, Option<Value>> = BTreeMap::new();
            for (i, value) in &ops {
                prop_assert_eq!(b.insert(path(*i), value.clone()), m.insert(path(*i), value.clone()));
            }
            for i in 0..6 {
                prop_assert_eq!(b.get(&path(i)), m.get(&path(i)).cloned());
                prop_assert_eq!(b.contains_key(&path(i)), m.contains_key(&path(i)));
                prop_assert_eq!(
                    b.holds(&path(i), probe.as_ref()),
                    m.get(&path(i)) == Some(&probe)
                );
            }
            prop_assert_eq!(b.len(), m.len());
            let listed: Vec<(AttrPath, Option<Value>)> =
                b.iter().map(|(p, v)| (p.clone(), v.map(ValueRef::to_value))).collect();
            let want: Vec<(AttrPath, Option<Value>)> = m.clone().into_iter().collect();
            prop_assert_eq!(listed, want);
            let ops: Vec<(AttrPath, Option<Value>)> =
                ops.into_iter().map(|(i, v)| (path(i), v)).collect();
            let collected: Baseline = ops.into_iter().collect();
            prop_assert_eq!(&collected, &b);
            let alike = collected.clone().with_paths_of(&b);
            prop_assert!(alike.shares_paths(&b));
            prop_assert_eq!(&alike, &collected);
        }
    }
}
