//! A row of attribute values kept compact ([`Packed`]): the plan holds one row per portal
//! user, so at 100,000 users a value's `String` header and allocation are megabytes.

use std::borrow::Borrow;
use std::fmt;

use super::Value;

/// Set on a slot that holds a value.
const PRESENT: u32 = 1 << 31;
/// Set on a slot whose value is a set of strings ([`Value::Many`]).
const MANY: u32 = 1 << 30;
const COUNT: u32 = MANY - 1;

/// The values of a fixed number of slots, each absent, one string, or a set of strings,
/// in one allocation: an index of `u32` words (little-endian), then every string's
/// bytes. The index holds the slot count, then per slot its flags and the number of
/// strings up to and including it, then per string where it ends in the text. One
/// allocation for a whole row, where `Option<Value>`s take one per string besides their
/// slots.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Packed {
    bytes: Box<[u8]>,
}

/// A value of a [`Packed`] row, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum ValueRef<'a> {
    One(&'a str),
    Many(Strings<'a>),
}

/// The strings of a [`ValueRef::Many`].
#[derive(Clone, Copy)]
pub struct Strings<'a> {
    text: &'a str,
    start: usize,
    /// Where each string ends in `text`: `u32` words, little-endian.
    ends: &'a [u8],
}

impl<'a> Strings<'a> {
    pub fn len(&self) -> usize {
        self.ends.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let text = self.text;
        let mut start = self.start;
        self.ends.chunks_exact(4).map(move |end| {
            let end = word_at(end, 0) as usize;
            let s = &text[start..end];
            start = end;
            s
        })
    }
}

impl fmt::Debug for Strings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl ValueRef<'_> {
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::One(s) => Value::One(s.to_string()),
            ValueRef::Many(m) => Value::Many(m.iter().map(str::to_string).collect()),
        }
    }

    /// Whether this is `v`, exactly.
    pub fn is(self, v: &Value) -> bool {
        match (self, v) {
            (ValueRef::One(a), Value::One(b)) => a == b,
            (ValueRef::Many(a), Value::Many(b)) => a.len() == b.len() && a.iter().eq(b.iter()),
            _ => false,
        }
    }
}

/// The `k`th `u32` word of `bytes` (little-endian); [`crate::source::attrs`] lays its
/// entries out the same way.
pub(crate) fn word_at(bytes: &[u8], k: usize) -> u32 {
    let at = 4 * k;
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Packed {
    /// Packs one value per slot, in slot order.
    pub fn new<V: Borrow<Value>>(values: impl IntoIterator<Item = Option<V>>) -> Packed {
        let mut text = String::new();
        let mut slots: Vec<u32> = vec![0];
        let mut ends: Vec<u32> = Vec::new();
        let mut push = |s: &str, ends: &mut Vec<u32>| {
            text.push_str(s);
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        };
        for v in values {
            let flags = match v.as_ref().map(Borrow::borrow) {
                None => 0,
                Some(Value::One(s)) => {
                    push(s, &mut ends);
                    PRESENT
                }
                Some(Value::Many(m)) => {
                    for s in m.iter() {
                        push(s, &mut ends);
                    }
                    PRESENT | MANY
                }
            };
            slots.push(flags | (ends.len() as u32 & COUNT));
        }
        if slots.len() == 1 {
            return Packed::default(); // No slots: one spelling of the empty row.
        }
        slots[0] = (slots.len() - 1) as u32;
        let mut bytes = Vec::with_capacity(4 * (slots.len() + ends.len()) + text.len());
        for w in slots.iter().chain(&ends) {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.extend_from_slice(text.as_bytes());
        Packed {
            bytes: bytes.into_boxed_slice(),
        }
    }

    fn word(&self, k: usize) -> u32 {
        word_at(&self.bytes, k)
    }

    /// How many slots the row has.
    pub fn slots(&self) -> usize {
        match self.bytes.is_empty() {
            true => 0,
            false => self.word(0) as usize,
        }
    }

    /// Every string of the row, one after the other.
    fn text(&self) -> &str {
        let n = self.slots();
        if n == 0 {
            return "";
        }
        let strings = (self.word(n) & COUNT) as usize;
        let bytes = &self.bytes[4 * (1 + n + strings)..];
        // SAFETY: `new` wrote these bytes from one `String` (valid UTF-8) and nothing
        // changes them; the index before them is as long as `new` made it.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The value of slot `i`; `None` when it is absent or there is no such slot.
    pub fn get(&self, i: usize) -> Option<ValueRef<'_>> {
        let n = self.slots();
        if i >= n {
            return None;
        }
        let slot = self.word(1 + i);
        if slot & PRESENT == 0 {
            return None;
        }
        let first = match i {
            0 => 0,
            _ => (self.word(i) & COUNT) as usize,
        };
        let last = (slot & COUNT) as usize;
        let ends = &self.bytes[4 * (1 + n + first)..4 * (1 + n + last)];
        let start = match first {
            0 => 0,
            _ => self.word(n + first) as usize,
        };
        let text = self.text();
        Some(if slot & MANY == 0 {
            let end = match ends.is_empty() {
                true => start,
                false => word_at(ends, 0) as usize,
            };
            ValueRef::One(&text[start..end])
        } else {
            ValueRef::Many(Strings { text, start, ends })
        })
    }

    /// Every slot's value, owned.
    pub fn to_values(&self) -> Vec<Option<Value>> {
        (0..self.slots())
            .map(|i| self.get(i).map(ValueRef::to_value))
            .collect()
    }
}

impl fmt::Debug for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.slots()).map(|i| self.get(i)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A packed row gives back every value as it was given, and compares each as
        /// the value does.
        #[test]
        fn gives_back_what_it_packed(
            values in prop::collection::vec(crate::mapping::any_value("a-zé "), 0..12),
            other in crate::mapping::any_value("a-zé "),
        ) {
            let packed = Packed::new(values.iter().map(Option::as_ref));
            prop_assert_eq!(packed.slots(), values.len());
            prop_assert_eq!(packed.to_values(), values.clone());
            prop_assert!(packed.get(values.len()).is_none());
            for (i, v) in values.iter().enumerate() {
                if let Some(o) = &other {
                    prop_assert_eq!(packed.get(i).is_some_and(|r| r.is(o)), v.as_ref() == Some(o));
                }
            }
            let again = Packed::new(values.iter().map(Option::as_ref));
            prop_assert_eq!(again, packed);
        }
    }
}
