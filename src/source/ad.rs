//! Active Directory's dialect, as pure functions over attribute values: binary GUIDs and
//! SIDs, the account-disabled bit and expiry, `proxyAddresses`, ranged `member` values and
//! the primary group. The LDAP source calls these; the tests feed them recorded values.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::account::Timestamp;

/// `userAccountControl` bit: the account is disabled.
pub const ACCOUNTDISABLE: u32 = 0x2;

/// An AD GUID (`objectGUID`, a DC's `invocationId`): 16 bytes as the directory stores
/// them, rendered once, in the standard form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid([u8; 16]);

/// Where each byte of the standard form comes from: the first three fields are
/// little-endian.
const GUID_TEXT_ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

impl Guid {
    /// The GUID in `bytes`; `None` unless there are exactly 16.
    pub fn from_bytes(bytes: &[u8]) -> Option<Guid> {
        Some(Guid(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Guid {
    /// `33221100-5544-7766-8899-aabbccddeeff` for the bytes `00 11 22 .. ff`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &at) in GUID_TEXT_ORDER.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{:02x}", self.0[at])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// A string that is not a GUID in the standard form.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
pub struct NotAGuid(String);

impl FromStr for Guid {
    type Err = NotAGuid;

    /// The standard form, in either case.
    fn from_str(s: &str) -> Result<Guid, NotAGuid> {
        let bad = || NotAGuid(s.to_string());
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
        if hex.len() != 32 || dashes != [8, 13, 18, 23] {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        for (i, &at) in GUID_TEXT_ORDER.iter().enumerate() {
            let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).map_err(|_| bad())?;
            bytes[at] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Guid(bytes))
    }
}

impl Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Guid, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The standard string form of an `objectGUID`; `None` unless `bytes` are 16.
pub fn guid_string(bytes: &[u8]) -> Option<String> {
    Guid::from_bytes(bytes).map(|g| g.to_string())
}

/// `S-1-5-21-…` from a binary `objectSid` (MS-DTYP 2.4.2.2).
pub fn sid_string(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 8 {
        return None;
    }
    let revision = bytes[0];
    let count = bytes[1] as usize;
    if bytes.len() != 8 + 4 * count {
        return None;
    }
    let authority = bytes[2..8]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut s = format!("S-{revision}-{authority}");
    for i in 0..count {
        let at = 8 + 4 * i;
        let sub = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        s.push_str(&format!("-{sub}"));
    }
    Some(s)
}

/// Splits a SID into its domain part and the relative id (the last sub-authority).
pub fn sid_domain_and_rid(sid: &str) -> Option<(&str, u32)> {
    let (domain, rid) = sid.rsplit_once('-')?;
    Some((domain, rid.parse().ok()?))
}

/// Whether `userAccountControl` has the ACCOUNTDISABLE bit; the error says what the
/// value is when it is not a number.
pub fn account_disabled(user_account_control: &str) -> Result<bool, String> {
    let uac = user_account_control
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("userAccountControl {user_account_control:?} is not a number"))?;
    Ok((uac as u32) & ACCOUNTDISABLE != 0)
}

/// 100-ns intervals from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_UNIX_EPOCH: i128 = 116_444_736_000_000_000;

/// When the account expires, from `accountExpires` (a FILETIME: 100-ns intervals since
/// 1601-01-01 UTC); `None` for never (0, 0x7FFFFFFFFFFFFFFF, or beyond the year 9999). A
/// fraction of a second rounds up: an account never closes early.
pub fn account_expires(value: &str) -> Result<Option<Timestamp>, String> {
    let ft = value
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("accountExpires {value:?} is not a number"))?;
    if ft <= 0 || ft == i64::MAX {
        return Ok(None);
    }
    let unix_100ns = i128::from(ft) - FILETIME_UNIX_EPOCH;
    let seconds = (unix_100ns + 9_999_999).div_euclid(10_000_000);
    let seconds =
        i64::try_from(seconds).map_err(|_| format!("accountExpires {value} is out of range"))?;
    // Far-future values (AD tools write some near the FILETIME maximum) mean never.
    Ok(time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .map(|_| Timestamp::from_unix(seconds)))
}

/// A FILETIME for "now plus `secs`" (negative for the past), for tests and seeding.
pub fn filetime_from_now(secs: i64, now: SystemTime) -> i64 {
    let unix = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        + secs;
    (unix + 11_644_473_600) * 10_000_000
}

/// `proxyAddresses` values: the primary SMTP address (`SMTP:`) and the others (`smtp:`).
/// Other address types (X500:, SIP:) are left out.
pub fn smtp_addresses(values: &[String]) -> (Option<String>, Vec<String>) {
    let mut primary = None;
    let mut aliases = Vec::new();
    for v in values {
        if let Some(a) = v.strip_prefix("SMTP:") {
            primary = Some(a.to_string());
        } else if let Some((kind, a)) = v.split_once(':') {
            if kind.eq_ignore_ascii_case("smtp") {
                aliases.push(a.to_string());
            }
        }
    }
    (primary, aliases)
}

/// A ranged attribute in a search result (`member;range=0-1499`): the attribute, where
/// the range starts, and where it ends (`None` for `*`, the last range).
#[derive(Debug, PartialEq, Eq)]
pub struct Range<'a> {
    pub attr: &'a str,
    pub start: u64,
    pub end: Option<u64>,
}

pub fn parse_range(key: &str) -> Option<Range<'_>> {
    let (attr, opts) = key.split_once(';')?;
    let spec = opts.split(';').find_map(|o| {
        let (k, v) = o.split_once('=')?;
        k.eq_ignore_ascii_case("range").then_some(v)
    })?;
    let (start, end) = spec.split_once('-')?;
    Some(Range {
        attr,
        start: start.parse().ok()?,
        end: if end == "*" {
            None
        } else {
            Some(end.parse().ok()?)
        },
    })
}

/// The attribute to ask for to continue after `range` (`member;range=1500-*`), or `None`
/// when `range` was the last one.
pub fn next_range(range: &Range<'_>) -> Option<String> {
    let next = range.end?.checked_add(1)?;
    Some(format!("{};range={next}-*", range.attr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn guid_bytes_render_in_the_standard_form() {
        let bytes: Vec<u8> = (0..16u8).map(|i| i * 0x11).collect();
        assert_eq!(
            guid_string(&bytes).unwrap(),
            "33221100-5544-7766-8899-aabbccddeeff"
        );
        assert_eq!(guid_string(&bytes[..15]), None);
    }

    #[test]
    fn guids_parse_back_from_their_standard_form_in_either_case() {
        let bytes: Vec<u8> = (0..16u8).map(|i| i * 0x11).collect();
        let guid = Guid::from_bytes(&bytes).unwrap();
        assert_eq!(
            "33221100-5544-7766-8899-AABBCCDDEEFF".parse::<Guid>(),
            Ok(guid)
        );
        let json = serde_json::to_string(&guid).unwrap();
        assert_eq!(json, "\"33221100-5544-7766-8899-aabbccddeeff\"");
        assert_eq!(serde_json::from_str::<Guid>(&json).unwrap(), guid);
        for bad in [
            "",
            "33221100554477668899aabbccddeeff",
            "33221100-5544-7766-8899-aabbccddeef",
            "33221100-5544-7766-8899-aabbccddeefg",
            "3322110-05544-7766-8899-aabbccddeeff",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sids_render_and_split() {
        // S-1-5-21-1004336348-1177238915-682003330-513 (Domain Users)
        let mut b = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 1004336348, 1177238915, 682003330, 513] {
            b.extend_from_slice(&sub.to_le_bytes());
        }
        let sid = sid_string(&b).unwrap();
        assert_eq!(sid, "S-1-5-21-1004336348-1177238915-682003330-513");
        assert_eq!(
            sid_domain_and_rid(&sid),
            Some(("S-1-5-21-1004336348-1177238915-682003330", 513))
        );
        assert_eq!(sid_string(&b[..10]), None);
    }

    #[test]
    fn the_disabled_bit_is_read_from_user_account_control() {
        assert_eq!(account_disabled("512"), Ok(false));
        assert_eq!(account_disabled("514"), Ok(true));
        assert_eq!(
            account_disabled("66050"),
            Ok(true),
            "514 | DONT_EXPIRE_PASSWORD"
        );
        assert!(account_disabled("enabled").is_err());
    }

    #[test]
    fn account_expires_is_a_filetime_and_zero_or_max_mean_never() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(account_expires("0"), Ok(None));
        assert_eq!(account_expires("9223372036854775807"), Ok(None));
        assert_eq!(
            account_expires("9223372036854775806"),
            Ok(None),
            "year 30828"
        );
        let in_an_hour = filetime_from_now(3600, now).to_string();
        assert_eq!(
            account_expires(&in_an_hour),
            Ok(Some(Timestamp::from_unix(1_800_003_600)))
        );
        // 2026-12-01 10:00:00.5 UTC: rounds up, never closes early.
        assert_eq!(
            account_expires("134405928005000000"),
            Ok(Some(Timestamp::from_unix(1_796_119_201)))
        );
        assert_eq!(
            account_expires("134405928000000000")
                .unwrap()
                .unwrap()
                .to_string(),
            "2026-12-01 10:00:00 UTC"
        );
        assert!(account_expires("soon").is_err());
    }

    #[test]
    fn proxy_addresses_split_into_primary_and_aliases() {
        let v: Vec<String> = [
            "smtp:old@x.se",
            "SMTP:anna@x.se",
            "X500:/o=x",
            "sip:anna@x.se",
            "smtp:a.b@x.se",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (primary, aliases) = smtp_addresses(&v);
        assert_eq!(primary.as_deref(), Some("anna@x.se"));
        assert_eq!(aliases, ["old@x.se", "a.b@x.se"]);
    }

    #[test]
    fn ranged_member_values_are_followed_until_the_star() {
        // As AD returns a 3,200-member group: three ranges.
        let first = parse_range("member;range=0-1499").unwrap();
        assert_eq!(
            first,
            Range {
                attr: "member",
                start: 0,
                end: Some(1499)
            }
        );
        assert_eq!(next_range(&first).as_deref(), Some("member;range=1500-*"));
        let second = parse_range("member;range=1500-2999").unwrap();
        assert_eq!(next_range(&second).as_deref(), Some("member;range=3000-*"));
        let last = parse_range("member;range=3000-*").unwrap();
        assert_eq!(last.end, None);
        assert_eq!(next_range(&last), None);
        assert_eq!(parse_range("member"), None);
        assert_eq!(parse_range("member;binary"), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_guid_renders_and_parses_back_to_its_bytes(bytes in prop::array::uniform16(any::<u8>())) {
            let g = Guid::from_bytes(&bytes).unwrap();
            let text = g.to_string();
            prop_assert_eq!(text.len(), 36);
            prop_assert_eq!(text.parse::<Guid>().ok(), Some(g));
            prop_assert_eq!(text.to_uppercase().parse::<Guid>().ok(), Some(g));
            prop_assert_eq!(guid_string(&bytes), Some(text));
        }

        #[test]
        fn only_sixteen_bytes_are_a_guid(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(Guid::from_bytes(&bytes).is_some(), bytes.len() == 16);
            let _ = String::from_utf8_lossy(&bytes).parse::<Guid>();
        }

        #[test]
        fn sids_render_from_their_parts_and_split_at_the_rid(
            authority in 0u64..(1 << 48),
            subs in prop::collection::vec(any::<u32>(), 1..15),
        ) {
            let mut bytes = vec![1u8, subs.len() as u8];
            bytes.extend_from_slice(&authority.to_be_bytes()[2..]);
            for s in &subs {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            let text = sid_string(&bytes).unwrap();
            let want: Vec<String> = subs.iter().map(u32::to_string).collect();
            prop_assert_eq!(&text, &format!("S-1-{authority}-{}", want.join("-")));
            let (domain, rid) = sid_domain_and_rid(&text).unwrap();
            prop_assert_eq!(rid, *subs.last().unwrap());
            prop_assert!(text.starts_with(domain));
        }

        #[test]
        fn any_bytes_or_text_never_panic_the_decoders(
            bytes in prop::collection::vec(any::<u8>(), 0..80),
            text in any::<String>(),
        ) {
            let _ = sid_string(&bytes);
            let _ = sid_domain_and_rid(&text);
            let _ = account_disabled(&text);
            let _ = account_expires(&text);
            if let Some(r) = parse_range(&text) {
                let _ = next_range(&r);
            }
        }

        #[test]
        fn expiry_is_never_early_and_at_most_a_second_late(ft in 1i64..i64::MAX) {
            match account_expires(&ft.to_string()).unwrap() {
                Some(at) => {
                    let expires_100ns = i128::from(ft) - FILETIME_UNIX_EPOCH;
                    let at_100ns = i128::from(at.unix()) * 10_000_000;
                    prop_assert!(at_100ns >= expires_100ns, "closed early");
                    prop_assert!(at_100ns - expires_100ns < 10_000_000, "more than a second late");
                }
                // Beyond what a date can hold (year 9999): never.
                None => prop_assert!(ft > 2_650_467_743_990_000_000),
            }
        }

        #[test]
        fn ranged_attribute_names_round_trip(
            attr in "[a-zA-Z][a-zA-Z0-9-]{0,12}",
            start in any::<u64>(),
            len in prop::option::of(any::<u64>()),
        ) {
            let end = len.map(|l| start.saturating_add(l));
            let key = match end {
                Some(e) => format!("{attr};range={start}-{e}"),
                None => format!("{attr};range={start}-*"),
            };
            let r = parse_range(&key).unwrap();
            prop_assert_eq!(&r, &Range { attr: &attr, start, end });
            match (end, next_range(&r)) {
                (None, next) => prop_assert_eq!(next, None),
                (Some(u64::MAX), next) => prop_assert_eq!(next, None),
                (Some(e), Some(next)) => {
                    let n = parse_range(&next).unwrap();
                    prop_assert_eq!((n.attr, n.start, n.end), (attr.as_str(), e + 1, None));
                }
                (Some(_), None) => prop_assert!(false, "a range that is not the last has a next"),
            }
        }
    }
}
