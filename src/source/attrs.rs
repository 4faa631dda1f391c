//! An entry's attribute values, compact: a directory of 100,000 users is held in memory
//! for the whole cycle, so each entry keeps all its attribute names and values in one
//! string with one small index, instead of a map of strings (three allocations and map
//! nodes per attribute).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Attribute values by lowercased attribute name, in name order. Built once from what
/// the source read, read-only after that.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EntryAttrs {
    /// Every name and value, one after another.
    text: Box<str>,
    /// Per attribute, in name order: where its name ends in `text` (it starts where the
    /// attribute before it ends), and how many values it and those before it have.
    names: Box<[(u32, u32)]>,
    /// Where each value ends in `text` (it starts where the name or value before it ends).
    ends: Box<[u32]>,
}

/// The values of one attribute.
#[derive(Clone, Copy)]
pub struct Values<'a> {
    text: &'a str,
    /// Where the first value starts.
    start: u32,
    ends: &'a [u32],
}

impl<'a> Values<'a> {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn first(&self) -> Option<&'a str> {
        self.iter().next()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let text = self.text;
        let mut start = self.start as usize;
        self.ends.iter().map(move |&end| {
            let v = &text[start..end as usize];
            start = end as usize;
            v
        })
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

impl fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl EntryAttrs {
    /// The values of `name` (lowercased), if the entry has that attribute.
    pub fn get(&self, name: &str) -> Option<Values<'_>> {
        self.position(name).map(|i| self.values_at(i))
    }

    /// Every attribute (lowercased name) with its values, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Values<'_>)> + '_ {
        (0..self.names.len()).map(|i| (self.name_at(i), self.values_at(i)))
    }

    /// Adds (or replaces) attribute `name` (lowercased), rebuilding the entry (for tests:
    /// the source adds what it derives before the entry is made compact).
    pub fn insert(&mut self, name: String, values: Vec<String>) {
        let mut map = self.to_map();
        map.insert(name, values);
        *self = EntryAttrs::from(map);
    }

    /// Removes attribute `name` (lowercased), rebuilding the entry (for tests).
    pub fn remove(&mut self, name: &str) -> Option<Vec<String>> {
        let mut map = self.to_map();
        let removed = map.remove(name);
        *self = EntryAttrs::from(map);
        removed
    }

    /// The attributes as a map (for tests and the rare rebuild).
    pub fn to_map(&self) -> BTreeMap<String, Vec<String>> {
        self.iter()
            .map(|(name, values)| (name.to_string(), values.to_vec()))
            .collect()
    }

    fn position(&self, name: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.names.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.name_at(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The index of attribute `i`'s first value.
    fn first_value(&self, i: usize) -> usize {
        match i {
            0 => 0,
            _ => self.names[i - 1].1 as usize,
        }
    }

    /// Where attribute `i` ends in `text`: its last value's end, else its name's.
    fn end_of(&self, i: usize) -> usize {
        let (name_end, values_end) = self.names[i];
        match values_end as usize > self.first_value(i) {
            true => self.ends[values_end as usize - 1] as usize,
            false => name_end as usize,
        }
    }

    fn name_at(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            _ => self.end_of(i - 1),
        };
        &self.text[start..self.names[i].0 as usize]
    }

    fn values_at(&self, i: usize) -> Values<'_> {
        let (name_end, values_end) = self.names[i];
        Values {
            text: &self.text,
            start: name_end,
            ends: &self.ends[self.first_value(i)..values_end as usize],
        }
    }
}

impl From<BTreeMap<String, Vec<String>>> for EntryAttrs {
    fn from(map: BTreeMap<String, Vec<String>>) -> EntryAttrs {
        let size: usize = map
            .iter()
            .map(|(k, vs)| k.len() + vs.iter().map(String::len).sum::<usize>())
            .sum();
        let mut text = String::with_capacity(size);
        let mut names = Vec::with_capacity(map.len());
        let mut ends = Vec::with_capacity(map.values().map(Vec::len).sum());
        // Offsets are u32: an entry of 4 GiB is not a directory entry.
        let at = |text: &String| u32::try_from(text.len()).unwrap_or(u32::MAX);
        for (name, values) in map {
            text.push_str(&name);
            let name_end = at(&text);
            for v in values {
                text.push_str(&v);
                ends.push(at(&text));
            }
            names.push((name_end, u32::try_from(ends.len()).unwrap_or(u32::MAX)));
        }
        EntryAttrs {
            text: text.into_boxed_str(),
            names: names.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, Vec<V>); N]> for EntryAttrs {
    fn from(attrs: [(K, Vec<V>); N]) -> EntryAttrs {
        attrs
            .into_iter()
            .map(|(k, vs)| (k.into(), vs.into_iter().map(Into::into).collect()))
            .collect::<BTreeMap<String, Vec<String>>>()
            .into()
    }
}

impl fmt::Debug for EntryAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for EntryAttrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.iter()
                .map(|(k, vs)| (k, vs.iter().collect::<Vec<_>>())),
        )
    }
}

impl<'de> Deserialize<'de> for EntryAttrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EntryAttrs, D::Error> {
        BTreeMap::<String, Vec<String>>::deserialize(d).map(EntryAttrs::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_found_by_name_in_order_also_empty_ones() {
        let a = EntryAttrs::from([
            ("sn", vec!["Berg"]),
            ("mail", vec!["anna@x.se", "a@x.se"]),
            ("empty", Vec::<&str>::new()),
            ("cn", vec!["Anna Berg"]),
        ]);
        assert_eq!(a.get("mail").unwrap().to_vec(), ["anna@x.se", "a@x.se"]);
        assert_eq!(a.get("sn").unwrap().first(), Some("Berg"));
        assert!(a.get("empty").unwrap().is_empty());
        assert_eq!(a.get("cn").unwrap().first(), Some("Anna Berg"));
        assert!(a.get("title").is_none());
        let names: Vec<&str> = a.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["cn", "empty", "mail", "sn"]);
    }

    #[test]
    fn insert_adds_or_replaces() {
        let mut a = EntryAttrs::from([("mail", vec!["anna@x.se"])]);
        a.insert("smtpaliases".into(), vec!["b@x.se".into()]);
        a.insert("mail".into(), vec!["new@x.se".into()]);
        assert_eq!(a.get("mail").unwrap().to_vec(), ["new@x.se"]);
        assert_eq!(a.get("smtpaliases").unwrap().to_vec(), ["b@x.se"]);
    }

    proptest! {
        /// Whatever the names and values (empty ones, non-ASCII, attributes without
        /// values), the compact form gives back the map it was built from, and its JSON
        /// is the map's.
        #[test]
        fn the_compact_form_holds_the_map(
            map in proptest::collection::btree_map(
                "[a-zé;=-]{0,8}",
                proptest::collection::vec("\\PC{0,6}", 0..4),
                0..8,
            )
        ) {
            let a = EntryAttrs::from(map.clone());
            prop_assert_eq!(a.to_map(), map.clone());
            for (k, vs) in &map {
                prop_assert_eq!(a.get(k).map(|v| v.to_vec()), Some(vs.clone()));
            }
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&map).unwrap());
            let back: EntryAttrs = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
