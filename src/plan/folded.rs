//! Map keys compared without ASCII case, borrowed from the records they index: the plan
//! indexes every user by anchor and login, and a lowercased copy of each key would cost
//! an allocation per user and key.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// `s` ASCII-lowercased, as a key of a map of lowercased keys: borrowed when it already
/// is lowercase, as most anchors are.
pub fn lowered(s: &str) -> Cow<'_, str> {
    match s.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(s.to_ascii_lowercase()),
        false => Cow::Borrowed(s),
    }
}

/// A string that equals and hashes as its ASCII-lowercased self, without being copied.
#[derive(Clone, Copy, Debug)]
pub struct Folded<'a>(pub &'a str);

impl PartialEq for Folded<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(other.0)
    }
}

impl Eq for Folded<'_> {}

impl Hash for Folded<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The lowercased bytes, a stack buffer at a time, then a terminator as `str` has.
        let mut buf = [0u8; 64];
        for chunk in self.0.as_bytes().chunks(buf.len()) {
            let lowered = &mut buf[..chunk.len()];
            lowered.copy_from_slice(chunk);
            lowered.make_ascii_lowercase();
            state.write(lowered);
        }
        state.write_u8(0xff);
    }
}

/// Values by a key without case, several per key allowed, in the order they came. Most
/// keys have one value, kept without a list of its own.
#[derive(Debug)]
pub struct Multi<'a, V> {
    first: HashMap<Folded<'a>, V>,
    /// Every value of a key that has more than one, the first included.
    more: HashMap<Folded<'a>, Vec<V>>,
}

impl<'a, V: Clone> Multi<'a, V> {
    pub fn with_capacity(n: usize) -> Multi<'a, V> {
        Multi {
            first: HashMap::with_capacity(n),
            more: HashMap::new(),
        }
    }

    pub fn push(&mut self, key: &'a str, value: V) {
        let key = Folded(key);
        if let Some(all) = self.more.get_mut(&key) {
            all.push(value);
        } else if let Some(first) = self.first.get(&key) {
            self.more.insert(key, vec![first.clone(), value]);
        } else {
            self.first.insert(key, value);
        }
    }

    /// The values of `key` (any case), in the order they came.
    pub fn get<'s>(&'s self, key: &'s str) -> &'s [V] {
        // The maps' keys, borrowed for as long as `key` is (maps are covariant in them).
        fn find<'m, 'k, V>(
            first: &'m HashMap<Folded<'k>, V>,
            more: &'m HashMap<Folded<'k>, Vec<V>>,
            key: Folded<'k>,
        ) -> &'m [V] {
            match more.get(&key) {
                Some(all) => all,
                None => first
                    .get(&key)
                    .map(std::slice::from_ref)
                    .unwrap_or_default(),
            }
        }
        find(&self.first, &self.more, Folded(key))
    }

    /// The values of each key that has more than one, in no particular order.
    pub fn repeated(&self) -> impl Iterator<Item = &[V]> {
        self.more.values().map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn hash(f: Folded<'_>) -> u64 {
        let mut h = DefaultHasher::new();
        f.hash(&mut h);
        h.finish()
    }

    proptest! {
        /// Folded keys are equal, and hash alike, exactly when the lowercased strings are
        /// (long keys too: the hash lowercases in pieces).
        #[test]
        fn equal_and_hashed_as_lowercased(a in "[a-cA-CéÉ=,]{0,70}", b in "[a-cA-CéÉ=,]{0,70}") {
            let (fa, fb) = (Folded(&a), Folded(&b));
            let (la, lb) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
            prop_assert_eq!(fa == fb, la == lb);
            prop_assert_eq!(hash(Folded(&a)), hash(Folded(&a.to_ascii_uppercase())));
            if fa == fb {
                prop_assert_eq!(hash(fa), hash(fb));
            }
        }

        /// A `Multi` answers as a map of lists keyed by the lowercased key.
        #[test]
        fn lowered_is_the_lowercase_copied_only_when_it_differs(a in "[a-cA-CéÉ=,]{0,70}") {
            let l = lowered(&a);
            prop_assert_eq!(l.as_ref(), a.to_ascii_lowercase());
            prop_assert_eq!(matches!(l, Cow::Borrowed(_)), a == a.to_ascii_lowercase());
        }

        #[test]
        fn multi_is_a_map_of_lists(keys in prop::collection::vec("[aAbB]{1,2}", 0..30)) {
            let mut m = Multi::with_capacity(0);
            let mut lists: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, k) in keys.iter().enumerate() {
                m.push(k, i);
                lists.entry(k.to_ascii_lowercase()).or_default().push(i);
            }
            let all: HashSet<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            for k in all.iter().chain(["zz".to_string()].iter()) {
                let want = lists.get(&k.to_ascii_lowercase()).cloned().unwrap_or_default();
                prop_assert_eq!(m.get(k), want.as_slice());
            }
            let mut repeated: Vec<&[usize]> = m.repeated().collect();
            repeated.sort();
            let mut want: Vec<&[usize]> =
                lists.values().filter(|v| v.len() > 1).map(Vec::as_slice).collect();
            want.sort();
            prop_assert_eq!(repeated, want);
        }
    }
}
