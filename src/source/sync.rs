//! RFC 4533 content synchronisation, the messages of a `refreshOnly` search: the Sync State
//! control on each entry, the Sync Info intermediate messages and the Sync Done control on
//! the result. Pure: parsed from their BER values without panicking (a value that does not
//! parse is `None`, and the read that met it fails), and folded into a [`Refresh`] that
//! says what changed and what left.

use std::collections::BTreeSet;

use ldap3::asn1::{parse_tag, StructureTag, TagClass, Types, PL};

/// The Sync Request control (sent, critical: a server without content synchronisation
/// must refuse the search rather than answer it as a plain one).
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
/// The Sync State control, on each entry of the refresh.
pub const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
/// The Sync Done control, on the search result.
pub const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
/// The Sync Info intermediate message.
pub const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";

/// What the server says of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Unchanged and still in the content (present phase).
    Present,
    Add,
    Modify,
    /// Gone from the content: deleted, or no longer matching the search.
    Delete,
}

/// The Sync State control of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncState {
    pub state: EntryState,
    /// The entry's `entryUUID`, lowercased in its string form.
    pub uuid: String,
    pub cookie: Option<Vec<u8>>,
}

/// The Sync Done control that ends the refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncDone {
    pub cookie: Option<Vec<u8>>,
    /// `false`: the refresh ended with a present phase, so entries not reported present
    /// (or changed) are gone; `true`: it ended with a delete phase, so entries not reported
    /// deleted stay.
    pub refresh_deletes: bool,
}

/// A Sync Info intermediate message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncInfo {
    NewCookie(Vec<u8>),
    /// The end of a delete phase.
    RefreshDelete {
        cookie: Option<Vec<u8>>,
    },
    /// The end of a present phase.
    RefreshPresent {
        cookie: Option<Vec<u8>>,
    },
    /// Many entries at once: deleted (`refresh_deletes`) or present.
    IdSet {
        cookie: Option<Vec<u8>>,
        refresh_deletes: bool,
        uuids: Vec<String>,
    },
}

/// A 16-byte UUID in its string form, lowercase (as OpenLDAP shows `entryUUID`).
pub fn uuid_string(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 16 {
        return None;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

fn tag(bytes: &[u8]) -> Option<StructureTag> {
    parse_tag(bytes).ok().map(|(_, t)| t)
}

fn primitive(t: &StructureTag) -> Option<&[u8]> {
    match &t.payload {
        PL::P(v) => Some(v),
        PL::C(_) => None,
    }
}

fn children(t: StructureTag) -> Option<Vec<StructureTag>> {
    t.expect_constructed()
}

fn is_universal(t: &StructureTag, kind: Types) -> bool {
    t.class == TagClass::Universal && t.id == kind as u64
}

fn boolean(t: &StructureTag) -> Option<bool> {
    primitive(t)?.first().map(|b| *b != 0)
}

/// `syncStateValue ::= SEQUENCE { state ENUMERATED, entryUUID syncUUID, cookie syncCookie OPTIONAL }`
pub fn parse_state(value: &[u8]) -> Option<SyncState> {
    let mut parts = children(tag(value)?)?.into_iter();
    let state = parts.next()?;
    if !is_universal(&state, Types::Enumerated) {
        return None;
    }
    let state = match primitive(&state)? {
        [0] => EntryState::Present,
        [1] => EntryState::Add,
        [2] => EntryState::Modify,
        [3] => EntryState::Delete,
        _ => return None,
    };
    let uuid = parts.next()?;
    let uuid = uuid_string(primitive(&uuid)?)?;
    let cookie = match parts.next() {
        Some(c) => Some(primitive(&c)?.to_vec()),
        None => None,
    };
    Some(SyncState {
        state,
        uuid,
        cookie,
    })
}

/// `syncDoneValue ::= SEQUENCE { cookie syncCookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE }`
pub fn parse_done(value: &[u8]) -> Option<SyncDone> {
    let mut done = SyncDone {
        cookie: None,
        refresh_deletes: false,
    };
    for part in children(tag(value)?)? {
        if is_universal(&part, Types::OctetString) {
            done.cookie = Some(primitive(&part)?.to_vec());
        } else if is_universal(&part, Types::Boolean) {
            done.refresh_deletes = boolean(&part)?;
        } else {
            return None;
        }
    }
    Some(done)
}

/// The Sync Info value (the intermediate response's `responseValue`):
/// `newcookie [0]`, `refreshDelete [1]`, `refreshPresent [2]` or `syncIdSet [3]`.
pub fn parse_info(value: &[u8]) -> Option<SyncInfo> {
    let t = tag(value)?;
    if t.class != TagClass::Context {
        return None;
    }
    match t.id {
        0 => Some(SyncInfo::NewCookie(primitive(&t)?.to_vec())),
        1..=3 => {
            let id = t.id;
            let mut cookie = None;
            // refreshDone defaults to TRUE; refreshDeletes (syncIdSet) to FALSE.
            let mut flag = id != 3;
            let mut uuids = Vec::new();
            for part in children(t)? {
                if is_universal(&part, Types::OctetString) {
                    cookie = Some(primitive(&part)?.to_vec());
                } else if is_universal(&part, Types::Boolean) {
                    flag = boolean(&part)?;
                } else if is_universal(&part, Types::Set) {
                    for u in children(part)? {
                        uuids.push(uuid_string(primitive(&u)?)?);
                    }
                } else {
                    return None;
                }
            }
            Some(match id {
                1 => SyncInfo::RefreshDelete { cookie },
                2 => SyncInfo::RefreshPresent { cookie },
                _ => SyncInfo::IdSet {
                    cookie,
                    refresh_deletes: flag,
                    uuids,
                },
            })
        }
        _ => None,
    }
}

/// An intermediate response (`[APPLICATION 25]`): its Sync Info, or `None` when it is
/// something else or does not parse.
pub fn parse_intermediate(message: StructureTag) -> Option<SyncInfo> {
    let mut name = None;
    let mut value = None;
    for part in message.expect_constructed()? {
        match (part.class, part.id) {
            (TagClass::Context, 0) => name = Some(primitive(&part)?.to_vec()),
            (TagClass::Context, 1) => value = Some(primitive(&part)?.to_vec()),
            _ => {}
        }
    }
    if name.as_deref() != Some(SYNC_INFO_OID.as_bytes()) {
        return None;
    }
    parse_info(&value?)
}

/// What one `refreshOnly` search said, message by message (RFC 4533 §3.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Entries added or modified (lowercased `entryUUID`s): to be read again.
    pub changed: BTreeSet<String>,
    /// Entries reported gone.
    pub deleted: BTreeSet<String>,
    /// Entries reported unchanged and present.
    pub present: BTreeSet<String>,
    /// A present phase took place: what was neither reported present nor changed is gone.
    pub present_phase: bool,
    /// The last cookie the server gave; `None` when it gave none (nothing changed).
    pub cookie: Option<Vec<u8>>,
    /// The Sync Done control came: the refresh is complete.
    pub done: bool,
}

impl Refresh {
    /// An entry of the refresh, with its Sync State.
    pub fn entry(&mut self, s: SyncState) {
        match s.state {
            EntryState::Add | EntryState::Modify => {
                self.deleted.remove(&s.uuid);
                self.changed.insert(s.uuid);
            }
            EntryState::Present => {
                self.present_phase = true;
                self.present.insert(s.uuid);
            }
            EntryState::Delete => {
                self.changed.remove(&s.uuid);
                self.deleted.insert(s.uuid);
            }
        }
        if s.cookie.is_some() {
            self.cookie = s.cookie;
        }
    }

    pub fn info(&mut self, info: SyncInfo) {
        let cookie = match info {
            SyncInfo::NewCookie(c) => Some(c),
            SyncInfo::RefreshDelete { cookie } => cookie,
            SyncInfo::RefreshPresent { cookie } => {
                self.present_phase = true;
                cookie
            }
            SyncInfo::IdSet {
                cookie,
                refresh_deletes,
                uuids,
            } => {
                if refresh_deletes {
                    for u in uuids {
                        self.changed.remove(&u);
                        self.deleted.insert(u);
                    }
                } else {
                    self.present_phase = true;
                    self.present.extend(uuids);
                }
                cookie
            }
        };
        if cookie.is_some() {
            self.cookie = cookie;
        }
    }

    pub fn finish(&mut self, done: SyncDone) {
        if !done.refresh_deletes {
            self.present_phase = true;
        }
        if done.cookie.is_some() {
            self.cookie = done.cookie;
        }
        self.done = true;
    }

    /// Of the entries the last read had (`known`, lowercased anchors), those that are gone
    /// now: reported deleted, or, after a present phase, neither present nor changed.
    pub fn gone<'a>(&self, known: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        let mut gone: BTreeSet<String> = self.deleted.clone();
        if self.present_phase {
            for k in known {
                if !self.present.contains(k) && !self.changed.contains(k) {
                    gone.insert(k.to_string());
                }
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::{write, ASNTag, Boolean, OctetString, Sequence, Set, Tag};

    fn decode64(s: &str) -> Vec<u8> {
        // A tiny base64 decoder for the fixtures below (as ldapsearch printed them).
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        out
    }

    fn encode(t: Tag) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        write::encode_into(&mut buf, t.into_structure()).unwrap();
        buf.to_vec()
    }

    const UUID: [u8; 16] = [
        0xd0, 0xdf, 0x55, 0x58, 0x81, 0x5c, 0x10, 0x41, 0x99, 0x2a, 0xa3, 0x49, 0xc4, 0x3c, 0x6e,
        0xa0,
    ];

    #[test]
    fn slapds_sync_state_and_sync_done_parse() {
        // As slapd 2.5 sent them to ldapsearch -E sync=ro.
        let state = parse_state(&decode64("MBUKAQEEENDfVViBXBBBmSqjScQ8bqA=")).unwrap();
        assert_eq!(state.state, EntryState::Add);
        assert_eq!(state.uuid, "d0df5558-815c-1041-992a-a349c43c6ea0");
        assert_eq!(state.cookie, None);
        let done = parse_done(&decode64(
            "MDkENHJpZD0wMDAsY3NuPTIwMjYxMTMwMjI1NTAwLjI2ODczOVojMDAwMDAwIzAwMCMwMDAwMDABAf8=",
        ))
        .unwrap();
        assert!(done.refresh_deletes);
        assert_eq!(
            done.cookie.as_deref(),
            Some(b"rid=000,csn=20261130225500.268739Z#000000#000#000000".as_slice())
        );
        let up_to_date = parse_done(&decode64("MAMBAf8=")).unwrap();
        assert_eq!(
            (up_to_date.cookie, up_to_date.refresh_deletes),
            (None, true)
        );
        assert_eq!(uuid_string(&UUID).unwrap(), state.uuid);
    }

    #[test]
    fn malformed_values_are_none_never_a_panic() {
        for bad in [
            &b""[..],
            &[0x30, 0x03, 0x0a, 0x01, 0x09][..],
            &[0x30, 0x05, 0x0a, 0x01, 0x01, 0x04, 0x00][..],
            &[0x04, 0x00][..],
            &[0x30, 0x80][..],
            &[0xff; 7][..],
        ] {
            assert_eq!(parse_state(bad), None, "{bad:?}");
            assert_eq!(parse_info(bad), None, "{bad:?}");
        }
        assert_eq!(parse_done(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }

    #[test]
    fn a_sync_id_set_of_deletes_and_one_of_present_entries_parse() {
        let set = |deletes: Option<bool>| {
            let mut inner = vec![Tag::OctetString(OctetString {
                inner: b"cookie-2".to_vec(),
                ..Default::default()
            })];
            if let Some(d) = deletes {
                inner.push(Tag::Boolean(Boolean {
                    inner: d,
                    ..Default::default()
                }));
            }
            inner.push(Tag::Set(Set {
                inner: vec![Tag::OctetString(OctetString {
                    inner: UUID.to_vec(),
                    ..Default::default()
                })],
                ..Default::default()
            }));
            encode(Tag::Sequence(Sequence {
                id: 3,
                class: TagClass::Context,
                inner,
            }))
        };
        let uuid = uuid_string(&UUID).unwrap();
        assert_eq!(
            parse_info(&set(Some(true))),
            Some(SyncInfo::IdSet {
                cookie: Some(b"cookie-2".to_vec()),
                refresh_deletes: true,
                uuids: vec![uuid.clone()],
            })
        );
        assert_eq!(
            parse_info(&set(None)),
            Some(SyncInfo::IdSet {
                cookie: Some(b"cookie-2".to_vec()),
                refresh_deletes: false,
                uuids: vec![uuid],
            }),
            "refreshDeletes defaults to FALSE"
        );
        let present_done = encode(Tag::Sequence(Sequence {
            id: 2,
            class: TagClass::Context,
            inner: vec![],
        }));
        assert_eq!(
            parse_info(&present_done),
            Some(SyncInfo::RefreshPresent { cookie: None })
        );
    }

    fn known() -> Vec<&'static str> {
        vec!["a", "b", "c", "d"]
    }

    #[test]
    fn a_delete_phase_removes_only_what_it_names() {
        let mut r = Refresh::default();
        r.entry(SyncState {
            state: EntryState::Add,
            uuid: "e".into(),
            cookie: None,
        });
        r.info(SyncInfo::IdSet {
            cookie: Some(b"c1".to_vec()),
            refresh_deletes: true,
            uuids: vec!["b".into()],
        });
        r.finish(SyncDone {
            cookie: Some(b"c2".to_vec()),
            refresh_deletes: true,
        });
        assert_eq!(r.gone(known()), BTreeSet::from(["b".to_string()]));
        assert_eq!(r.changed, BTreeSet::from(["e".to_string()]));
        assert_eq!(r.cookie.as_deref(), Some(b"c2".as_slice()));
    }

    #[test]
    fn a_present_phase_removes_everything_not_present_or_changed() {
        let mut r = Refresh::default();
        r.info(SyncInfo::IdSet {
            cookie: None,
            refresh_deletes: false,
            uuids: vec!["a".into(), "c".into()],
        });
        r.entry(SyncState {
            state: EntryState::Add,
            uuid: "d".into(),
            cookie: None,
        });
        r.finish(SyncDone {
            cookie: Some(b"c3".to_vec()),
            refresh_deletes: false,
        });
        assert_eq!(r.gone(known()), BTreeSet::from(["b".to_string()]));
    }

    #[test]
    fn nothing_changed_keeps_everything_and_the_old_cookie() {
        let mut r = Refresh::default();
        r.finish(SyncDone {
            cookie: None,
            refresh_deletes: true,
        });
        assert!(r.gone(known()).is_empty());
        assert_eq!(r.cookie, None);
        assert!(r.done);
    }
}
