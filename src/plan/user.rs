//! One linked user: the three-way rule per attribute. Pure.
//!
//! For each mapped attribute there are three values: the directory's now (`dir`), the
//! portal's now (`por`), and the last value both sides agreed on (`base`, from the state;
//! unknown for a user never synced). By owner:
//!
//! * `directory`: `dir` wins whenever `por` differs. If `por` moved away from `base`, the
//!   change is reported as a reverted portal edit.
//! * `portal`: never touched after creation.
//! * `merge`: `dir` flows when only the directory moved (`dir ≠ base`, `por = base`); a
//!   portal-only change stays; when both moved to different values the portal value stays
//!   and a conflict with all three values is reported. With no `base`, `dir` flows.
//!
//! Attributes the portal marks immutable or read-only are never patched: a difference is
//! reported as needing an administrator.

use super::{Baseline, Conflict, FieldChange, NeedsAdmin, Why};
use crate::mapping::{AttrPath, Attributes, Owner, Rule, Value, ValueRef};
use crate::portal::{Mutability, PortalSchema, PortalUser};

/// What the rule decided for one user.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UserDiff {
    pub fields: Vec<FieldChange>,
    pub conflicts: Vec<Conflict>,
    pub needs_admin: Vec<NeedsAdmin>,
    /// The last-synced values to record once the fields are applied.
    pub baseline: Baseline,
}

pub fn diff(
    anchor: &str,
    desired: &Attributes,
    base: Option<&Baseline>,
    portal: &PortalUser,
    rules: &[Rule],
    schema: &PortalSchema,
) -> UserDiff {
    let mut out = UserDiff::default();
    // The baseline's entries, one path at a time; packed once at the end.
    let mut baseline: Vec<(AttrPath, Option<Value>)> = Vec::new();
    for rule in rules {
        if rule.owner == Owner::Portal {
            continue;
        }
        let path = &rule.to;
        if !portal.reads(path) {
            // Not read from the portal (see `portal::UserFields`): its value there is
            // unknown, so nothing is written; the last-synced value stays.
            if let Some(l) = base.and_then(|b| b.get(path)) {
                baseline.push((path.clone(), l));
            }
            continue;
        }
        let dir = desired.get(path);
        let por = portal.get(path);
        if same(path, por.as_ref(), dir) {
            baseline.push((path.clone(), dir.cloned()));
            continue;
        }
        let dir = dir.cloned();
        // `Some(x)`: the last-synced value is known (and is x, possibly absent).
        let last: Option<Option<Value>> = base.and_then(|b| b.get(path));
        if schema.is_fixed(path) {
            out.needs_admin.push(NeedsAdmin {
                anchor: anchor.to_string(),
                user_name: portal.user_name.clone(),
                path: path.clone(),
                old: por,
                new: dir,
                reason: format!(
                    "`{path}` is {} in the portal: change it there by hand, or recreate the user",
                    match schema.mutability(path) {
                        Mutability::ReadOnly => "read-only",
                        _ => "immutable",
                    }
                ),
            });
            if let Some(l) = last {
                baseline.push((path.clone(), l));
            }
            continue;
        }
        let why = match (&rule.owner, &last) {
            (_, None) => Why::Initial,
            (Owner::Directory, Some(l)) if !same(path, por.as_ref(), l.as_ref()) => {
                Why::RevertedPortalEdit
            }
            (Owner::Directory, Some(_)) => Why::DirectoryChange,
            (_, Some(l)) => {
                let dir_moved = !same(path, dir.as_ref(), l.as_ref());
                let por_moved = !same(path, por.as_ref(), l.as_ref());
                if por_moved {
                    if dir_moved {
                        out.conflicts.push(Conflict {
                            anchor: anchor.to_string(),
                            user_name: portal.user_name.clone(),
                            path: path.clone(),
                            last_synced: l.clone(),
                            directory: dir.clone(),
                            portal: por.clone(),
                        });
                    }
                    // The user's value stays; the baseline stays too, so a conflict is
                    // reported until one side gives way.
                    baseline.push((path.clone(), l.clone()));
                    continue;
                }
                Why::DirectoryChange
            }
        };
        out.fields.push(FieldChange {
            path: path.clone(),
            old: por,
            new: dir.clone(),
            why: Some(why),
            detail: None,
        });
        baseline.push((path.clone(), dir));
    }
    out.baseline = baseline.into_iter().collect();
    out
}

/// How many paths [`diff`] compares (and a baseline holds): those of the rules the
/// portal does not own, each once.
pub fn compared_paths(rules: &[Rule]) -> usize {
    let paths: std::collections::HashSet<&AttrPath> = rules
        .iter()
        .filter(|r| r.owner != Owner::Portal)
        .map(|r| &r.to)
        .collect();
    paths.len()
}

/// Whether [`diff`] would find nothing to change and return `recorded` as the baseline:
/// every compared attribute is read from the portal, the same on both sides, and
/// recorded as the directory has it, and `recorded` holds nothing else (`compared`:
/// [`compared_paths`] of `rules`).
pub fn in_step_as_recorded(
    desired: &Attributes,
    portal: &PortalUser,
    rules: &[Rule],
    compared: usize,
    recorded: &Baseline,
) -> bool {
    if recorded.len() != compared {
        return false;
    }
    for rule in rules {
        if rule.owner == Owner::Portal {
            continue;
        }
        let path = &rule.to;
        if !portal.reads(path) {
            return false;
        }
        let dir = desired.get(path);
        if !same_ref(path, portal.get_ref(path), dir) || !recorded.holds(path, dir) {
            return false;
        }
    }
    true
}

/// The baseline a freshly created user starts with: what was written.
pub fn created_baseline(desired: &Attributes, rules: &[Rule]) -> Baseline {
    rules
        .iter()
        .filter(|r| r.owner != Owner::Portal)
        .map(|r| (r.to.clone(), desired.get(&r.to).cloned()))
        .collect()
}

/// Whether two values are the same for the portal. The login (`userName`) is compared
/// without case, as the portal does; everything else exactly.
pub fn same(path: &AttrPath, a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::One(x)), Some(Value::One(y))) if path.is_user_name() => {
            x.eq_ignore_ascii_case(y)
        }
        (Some(Value::Many(m)), Some(Value::One(o)))
        | (Some(Value::One(o)), Some(Value::Many(m))) => m.len() == 1 && &m[0] == o,
        _ => a == b,
    }
}

/// [`same`], for a value borrowed from a portal user's record ([`PortalUser::get_ref`]).
pub fn same_ref(path: &AttrPath, a: Option<ValueRef<'_>>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(ValueRef::One(x)), Some(Value::One(y))) if path.is_user_name() => {
            x.eq_ignore_ascii_case(y)
        }
        (Some(ValueRef::Many(m)), Some(Value::One(o))) => {
            m.len() == 1 && m.iter().next() == Some(o.as_str())
        }
        (Some(ValueRef::One(o)), Some(Value::Many(m))) => m.len() == 1 && m[0] == o,
        (Some(a), Some(b)) => a.is(b),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mapping::Packed;

    proptest! {
        /// A borrowed portal value compares as the value itself does, for the login and
        /// for any other path.
        #[test]
        fn same_ref_is_same(a in crate::mapping::any_value("aAb"), b in crate::mapping::any_value("aAb"), login in any::<bool>()) {
            let path = AttrPath::parse(if login { "userName" } else { "title" }).unwrap();
            let packed = Packed::new([a.as_ref()]);
            prop_assert_eq!(
                same_ref(&path, packed.get(0), b.as_ref()),
                same(&path, a.as_ref(), b.as_ref())
            );
        }
    }
}
