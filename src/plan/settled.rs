//! A plan that stands while nothing changes. Pure.
//!
//! An incremental cycle maps every directory user to find the ones whose desired values
//! differ from what was last synced. When such a cycle concerned nobody and planned
//! nothing, the next one would map every user again to find the same: the users' values
//! depend on the directory, the rules and the state, and on the time only through
//! account expiry. So the cycle remembers its findings ([`Settled`]) with its basis, and
//! while the directory brings no change, no account expires and nothing is pending, the
//! next cycle reports them as they were instead of reading the state's baselines and
//! mapping the users.

use serde::{Deserialize, Serialize};

use super::{Conflict, NeedsAdmin, Plan, PlanScope, Skipped};
use crate::source::{DirectoryUser, Timestamp};

/// What a cycle that left nothing to do found, and until when it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The first account expiry after the cycle's read (Unix seconds), if any: from then
    /// on somebody may lose access, so the users are mapped again.
    pub until: Option<i64>,
    /// The managed users, as the cycle counted them (nothing was applied since).
    pub managed: usize,
    pub skipped: Vec<Skipped>,
    pub needs_admin: Vec<NeedsAdmin>,
    pub conflicts: Vec<Conflict>,
    pub notes: Vec<String>,
}

impl Settled {
    /// The findings of an incremental cycle that concerned no user and no group
    /// (`scope`) and planned nothing (nothing held, no orphans), over the directory's
    /// `users` read at `read_at` (Unix seconds); `None` for any other cycle.
    pub fn of(
        plan: &Plan,
        scope: &PlanScope,
        users: &[DirectoryUser],
        read_at: u64,
        managed: usize,
    ) -> Option<Settled> {
        let nobody = matches!(scope, PlanScope::Only { users, groups } if users.is_empty() && groups.is_empty());
        let nothing = plan.changes.is_empty()
            && plan.group_changes.is_empty()
            && plan.held.is_empty()
            && plan.orphans.is_empty();
        if !(nobody && nothing) {
            return None;
        }
        let read_at = i64::try_from(read_at).unwrap_or(i64::MAX);
        let until = users
            .iter()
            .filter(|u| !u.disabled)
            .filter_map(|u| u.expires.map(Timestamp::unix))
            .filter(|on| *on > read_at)
            .min();
        Some(Settled {
            until,
            managed,
            skipped: plan.skipped.clone(),
            needs_admin: plan.needs_admin.clone(),
            conflicts: plan.conflicts.clone(),
            notes: plan.notes.clone(),
        })
    }

    /// Whether the findings still hold at `now` (no account expired since the read).
    pub fn holds(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|on| now.unix() < on)
    }

    /// The plan the findings make: no change, what was reported.
    pub fn plan(&self) -> Plan {
        Plan {
            skipped: self.skipped.clone(),
            needs_admin: self.needs_admin.clone(),
            conflicts: self.conflicts.clone(),
            notes: self.notes.clone(),
            ..Plan::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::plan::{guard, Action, Change};

    fn user(anchor: &str, disabled: bool, expires: Option<i64>) -> DirectoryUser {
        DirectoryUser {
            dn: format!("uid={anchor},ou=people,dc=example,dc=com"),
            anchor: anchor.into(),
            attrs: Default::default(),
            disabled,
            expires: expires.map(Timestamp::from_unix),
        }
    }

    fn nobody() -> PlanScope {
        PlanScope::Only {
            users: HashSet::new(),
            groups: HashSet::new(),
        }
    }

    #[test]
    fn holds_until_the_first_expiry_after_the_read() {
        let users = [
            user("a", false, Some(900)),  // expired before the read
            user("b", false, Some(1500)), // the first after it
            user("c", false, Some(2000)),
            user("d", true, Some(1200)), // disabled: closed whenever it expires
            user("e", false, None),
        ];
        let plan = Plan {
            skipped: vec![Skipped {
                dn: "uid=x,ou=people,dc=example,dc=com".into(),
                problem: "no mail".into(),
            }],
            notes: vec!["a note".into()],
            ..Plan::default()
        };
        let s = Settled::of(&plan, &nobody(), &users, 1000, 4).expect("settled");
        assert_eq!(s.until, Some(1500));
        assert!(s.holds(Timestamp::from_unix(1499)));
        assert!(!s.holds(Timestamp::from_unix(1500)));
        assert_eq!(s.plan(), plan);
        assert_eq!(s.managed, 4);
        // Nobody expires: it holds until something changes.
        let s = Settled::of(&plan, &nobody(), &users[4..], 1000, 4).unwrap();
        assert_eq!(s.until, None);
        assert!(s.holds(Timestamp::from_unix(i64::MAX)));
        // It survives the basis it is written with.
        let back: Settled = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn only_a_cycle_that_concerned_nobody_and_planned_nothing_settles() {
        let users = [user("a", false, None)];
        let empty = Plan::default();
        assert!(Settled::of(&empty, &nobody(), &users, 0, 1).is_some());
        assert_eq!(Settled::of(&empty, &PlanScope::Full, &users, 0, 1), None);
        let concerned = PlanScope::Only {
            users: HashSet::from(["a".to_string()]),
            groups: HashSet::new(),
        };
        assert_eq!(Settled::of(&empty, &concerned, &users, 0, 1), None);
        let change = Plan {
            changes: vec![Change {
                action: Action::Close,
                anchor: "a".into(),
                user_name: "a@example.com".into(),
                dn: None,
                portal_id: Some("p1".into()),
                version: None,
                reason: None,
                fields: Vec::new(),
                set_active: Some(false),
                baseline: Default::default(),
                from: None,
            }],
            ..Plan::default()
        };
        assert_eq!(Settled::of(&change, &nobody(), &users, 0, 1), None);
        let held = Plan {
            held: vec![guard::Held::new(
                guard::HeldKind::ScopeChange,
                0,
                "scope".into(),
                "held".into(),
            )],
            ..Plan::default()
        };
        assert_eq!(Settled::of(&held, &nobody(), &users, 0, 1), None);
    }
}
