//! An entry's attribute values, compact: a directory of 100,000 users is held in memory
//! for the whole cycle, so each entry keeps all its attribute names and values in one
//! allocation, a small index before the text, instead of a map of strings (three
//! allocations and map nodes per attribute).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mapping::packed::word_at;

/// Attribute values by lowercased attribute name, in name order. Built once from what
/// the source read, read-only after that.
///
/// One allocation per entry: `u32` words (little-endian), then the text. The words are
/// the number of attributes; per attribute, in name order, where its name ends in the
/// text (it starts where the attribute before it ends) and how many values it and those
/// before it have; then where each value ends in the text (it starts where the name or
/// value before it ends). The text is every name and value, one after another.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EntryAttrs {
    bytes: Box<[u8]>,
}

/// The values of one attribute.
#[derive(Clone, Copy)]
pub struct Values<'a> {
    text: &'a str,
    /// Where the first value starts.
    start: u32,
    /// Where each value ends: `u32` words, little-endian.
    ends: &'a [u8],
}

impl<'a> Values<'a> {
    pub fn len(&self) -> usize {
        self.ends.len() / 4
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
        self.ends.chunks_exact(4).map(move |end| {
            let end = word_at(end, 0) as usize;
            let v = &text[start..end];
            start = end;
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
        (0..self.names()).map(|i| (self.name_at(i), self.values_at(i)))
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
        let (mut lo, mut hi) = (0, self.names());
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

    /// How many attributes the entry has.
    fn names(&self) -> usize {
        match self.bytes.is_empty() {
            true => 0,
            false => word_at(&self.bytes, 0) as usize,
        }
    }

    /// Where attribute `i`'s name ends in the text, and how many values it and those
    /// before it have.
    fn name_entry(&self, i: usize) -> (u32, u32) {
        (
            word_at(&self.bytes, 1 + 2 * i),
            word_at(&self.bytes, 2 + 2 * i),
        )
    }

    /// The word where the value ends start.
    fn ends_at(&self) -> usize {
        1 + 2 * self.names()
    }

    /// Every name and value, one after another.
    fn text(&self) -> &str {
        let n = self.names();
        if n == 0 {
            return "";
        }
        let values = self.name_entry(n - 1).1 as usize;
        let bytes = &self.bytes[4 * (self.ends_at() + values)..];
        // SAFETY: `pack` wrote these bytes from one `str` (valid UTF-8) and nothing
        // changes them; the words before them are as many as `pack` wrote.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The index of attribute `i`'s first value.
    fn first_value(&self, i: usize) -> usize {
        match i {
            0 => 0,
            _ => self.name_entry(i - 1).1 as usize,
        }
    }

    /// Where attribute `i` ends in the text: its last value's end, else its name's.
    fn end_of(&self, i: usize) -> usize {
        let (name_end, values_end) = self.name_entry(i);
        match values_end as usize > self.first_value(i) {
            true => word_at(&self.bytes, self.ends_at() + values_end as usize - 1) as usize,
            false => name_end as usize,
        }
    }

    fn name_at(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            _ => self.end_of(i - 1),
        };
        &self.text()[start..self.name_entry(i).0 as usize]
    }

    fn values_at(&self, i: usize) -> Values<'_> {
        let (name_end, values_end) = self.name_entry(i);
        let ends = self.ends_at();
        Values {
            text: self.text(),
            start: name_end,
            ends: &self.bytes[4 * (ends + self.first_value(i))..4 * (ends + values_end as usize)],
        }
    }

    /// Packs an entry: its text, and per attribute where its name ends and how many
    /// values it and those before it have, and where each value ends.
    fn pack(text: &str, names: &[(u32, u32)], ends: &[u32]) -> EntryAttrs {
        if names.is_empty() {
            return EntryAttrs::default(); // No attributes: one spelling of the empty entry.
        }
        let words = 1 + 2 * names.len() + ends.len();
        let mut bytes = Vec::with_capacity(4 * words + text.len());
        let count = u32::try_from(names.len()).unwrap_or(u32::MAX);
        let pairs = names.iter().flat_map(|&(name, values)| [name, values]);
        for w in std::iter::once(count)
            .chain(pairs)
            .chain(ends.iter().copied())
        {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.extend_from_slice(text.as_bytes());
        EntryAttrs {
            bytes: bytes.into_boxed_slice(),
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
        EntryAttrs::pack(&text, &names, &ends)
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
    /// Read straight into the compact form (an incremental cycle reads the snapshot of
    /// every user): names and values appended as they come, no map and no string per
    /// value. Names out of order or repeated (not as dirsync writes them) are sorted
    /// after, the last of a name kept, as a map would.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EntryAttrs, D::Error> {
        d.deserialize_map(Build)
    }
}

/// Builds an [`EntryAttrs`] from a map of names to lists of values.
struct Build;

impl<'de> Visitor<'de> for Build {
    type Value = EntryAttrs;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of attribute names to lists of values")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EntryAttrs, A::Error> {
        // Built in this thread's scratch buffers, then copied out at its size: one
        // allocation per entry, none grown.
        thread_local! {
            static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::default();
        }
        let mut scratch = SCRATCH.take();
        let built = build(map, &mut scratch);
        scratch.0.clear();
        scratch.1.clear();
        scratch.2.clear();
        SCRATCH.set(scratch);
        built
    }
}

/// Text, names and value ends of the entry being read.
type Scratch = (String, Vec<(u32, u32)>, Vec<u32>);

/// Reads an entry's attributes into `scratch`, then copies them out at their size.
fn build<'de, A: MapAccess<'de>>(
    mut map: A,
    (text, names, ends): &mut Scratch,
) -> Result<EntryAttrs, A::Error> {
    let at = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
    let mut sorted = true;
    let mut last_name: Option<(usize, usize)> = None;
    loop {
        let start = text.len();
        if map.next_key_seed(Append(text))?.is_none() {
            break;
        }
        let name_end = text.len();
        if let Some((s, e)) = last_name {
            sorted &= text[s..e] < text[start..name_end];
        }
        map.next_value_seed(AppendAll(text, ends))?;
        names.push((at(name_end), at(ends.len())));
        last_name = Some((start, name_end));
    }
    let attrs = EntryAttrs::pack(text, names, ends);
    Ok(match sorted {
        true => attrs,
        false => EntryAttrs::from(attrs.to_map()),
    })
}

/// A string, appended to the text.
struct Append<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for Append<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Append<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.push_str(v);
        Ok(())
    }
}

/// A list of strings, each appended to the text, with where it ends.
struct AppendAll<'a>(&'a mut String, &'a mut Vec<u32>);

impl<'de> DeserializeSeed<'de> for AppendAll<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AppendAll<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Append(self.0))?.is_some() {
            self.1.push(u32::try_from(self.0.len()).unwrap_or(u32::MAX));
        }
        Ok(())
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

        /// A map written in another order, or with a name twice, reads as a map would
        /// (sorted, the last of a name kept).
        #[test]
        fn any_order_reads_as_a_map(
            pairs in proptest::collection::vec(
                ("[a-cé\\\\\"]{0,3}", proptest::collection::vec("\\PC{0,4}", 0..3)),
                0..8,
            )
        ) {
            let json = format!(
                "{{{}}}",
                pairs
                    .iter()
                    .map(|(k, vs)| format!("{}:{}", serde_json::to_string(k).unwrap(), serde_json::to_string(vs).unwrap()))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let map: BTreeMap<String, Vec<String>> = pairs.into_iter().collect();
            let read: EntryAttrs = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(read, EntryAttrs::from(map));
        }
    }

    #[test]
    fn what_is_not_a_map_of_lists_of_strings_is_refused() {
        for bad in [r#"[]"#, r#"{"a": "x"}"#, r#"{"a": [1]}"#, r#"{"a": ["x""#] {
            assert!(serde_json::from_str::<EntryAttrs>(bad).is_err(), "{bad}");
        }
    }
}
