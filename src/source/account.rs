//! Whether a directory account may use the portal now, and if not, why: disabled, expired,
//! out of scope or deleted. An expiry passes with time while nothing in the directory
//! changes, so it is decided at every cycle from the values already known, against that
//! cycle's "now".

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::DirectoryUser;

/// A point in time, to the second, in UTC (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_unix(seconds: i64) -> Timestamp {
        Timestamp(seconds)
    }

    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        Timestamp(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
        })
    }

    pub fn unix(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    /// `2026-12-01 10:00:00 UTC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
        match time::OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| t.format(&format).ok())
        {
            Some(text) => f.write_str(&text),
            None => write!(f, "{} s after 1970-01-01 00:00:00 UTC", self.0),
        }
    }
}

/// Why the directory says an account may not use the portal: the reason a portal user is
/// closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closure {
    /// Disabled in the directory: AD's `userAccountControl` ACCOUNTDISABLE bit, or the
    /// configured `disabled_filter`.
    Disabled,
    /// The account's expiry (AD `accountExpires`) has passed.
    Expired { on: Timestamp },
    /// No longer among the users in scope: moved out of the users base, no longer
    /// matching the filter, or deleted without its tombstone being seen (a full read
    /// cannot tell these apart).
    LeftScope,
    /// Deleted from the directory: its tombstone was read.
    Deleted,
}

impl fmt::Display for Closure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closure::Disabled => f.write_str("disabled in the directory"),
            Closure::Expired { on } => write!(f, "account expired on {on}"),
            Closure::LeftScope => f.write_str("no longer in the directory scope"),
            Closure::Deleted => f.write_str("deleted from the directory"),
        }
    }
}

impl DirectoryUser {
    /// Why this user, still in the directory, may not use the portal at `now`; `None`
    /// when it may.
    pub fn closure(&self, now: Timestamp) -> Option<Closure> {
        if self.disabled {
            return Some(Closure::Disabled);
        }
        self.expires
            .filter(|on| *on <= now)
            .map(|on| Closure::Expired { on })
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn user(disabled: bool, expires: Option<i64>) -> DirectoryUser {
        DirectoryUser {
            dn: "CN=Anna Berg,OU=Staff,DC=dirsync,DC=test".into(),
            anchor: "a".into(),
            attrs: Default::default(),
            disabled,
            expires: expires.map(Timestamp::from_unix),
        }
    }

    #[test]
    fn an_account_expires_when_its_time_comes_not_when_it_is_read() {
        let on = 1_796_119_200; // 2026-12-01 10:00:00 UTC
        let u = user(false, Some(on));
        assert_eq!(u.closure(Timestamp::from_unix(on - 1)), None);
        let closed = u.closure(Timestamp::from_unix(on)).unwrap();
        assert_eq!(
            closed,
            Closure::Expired {
                on: Timestamp::from_unix(on)
            }
        );
        assert_eq!(
            closed.to_string(),
            "account expired on 2026-12-01 10:00:00 UTC"
        );
        assert_eq!(
            user(false, None).closure(Timestamp::from_unix(i64::MAX)),
            None
        );
    }

    #[test]
    fn a_disabled_account_is_disabled_whether_or_not_it_expired() {
        let u = user(true, Some(0));
        assert_eq!(u.closure(Timestamp::from_unix(10)), Some(Closure::Disabled));
        assert_eq!(Closure::Disabled.to_string(), "disabled in the directory");
    }

    #[test]
    fn deleted_and_out_of_scope_read_differently() {
        assert_eq!(Closure::Deleted.to_string(), "deleted from the directory");
        assert_eq!(
            Closure::LeftScope.to_string(),
            "no longer in the directory scope"
        );
    }
}
