//! The plan: what must change in the portal so that it matches the directory. Pure: it takes
//! plain values (directory users, portal users, the daemon's state, the rules) and returns
//! a [`Plan`]; it performs no I/O, so every rule here is tested without servers.

mod validate;

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::mapping::{self, AttrPath, Attributes, Rule, Value};
use crate::portal::{Mutability, PortalSchema, PortalUser};
use crate::source::{BadEntry, DirectoryUser};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Reactivate,
    Close,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Create,
        Action::Update,
        Action::Reactivate,
        Action::Close,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Reactivate => "reactivate",
            Action::Close => "close",
        }
    }
}

/// One attribute going from `old` to `new` (`None`: absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub path: AttrPath,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// One portal user to create or change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: Action,
    /// The directory anchor, sent as `externalId`.
    pub anchor: String,
    pub user_name: String,
    /// The directory entry, when the user is still in the directory.
    pub dn: Option<String>,
    /// The portal user's id; `None` for a create.
    pub portal_id: Option<String>,
    /// The portal version (ETag) the change was computed from.
    pub version: Option<String>,
    /// Why a user is closed or reactivated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub fields: Vec<FieldChange>,
}

/// A directory entry that is not synced this cycle, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub dn: String,
    pub problem: String,
}

/// A directory change the portal will not take (the attribute is immutable or read-only
/// there); an administrator must act in the portal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeedsAdmin {
    pub anchor: String,
    pub user_name: String,
    pub path: AttrPath,
    pub old: Option<Value>,
    pub new: Option<Value>,
    pub reason: String,
}

/// A portal user matched to a directory entry by `externalId`, for the state store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub anchor: String,
    pub portal_id: String,
    pub user_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub skipped: Vec<Skipped>,
    pub needs_admin: Vec<NeedsAdmin>,
    /// Portal users this cycle recognised as the daemon's (externalId = a directory anchor).
    #[serde(skip)]
    pub links: Vec<Link>,
    /// Things the admin should know that are not changes (e.g. closures held back).
    pub notes: Vec<String>,
}

impl Plan {
    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }
}

/// Everything the planner looks at.
pub struct Input<'a> {
    pub directory: &'a [DirectoryUser],
    /// Entries the source could not read as users (no anchor).
    pub bad_entries: &'a [BadEntry],
    pub portal: &'a [PortalUser],
    /// Anchors (lowercased) of the portal users the daemon manages, from its state.
    pub managed: &'a HashSet<String>,
    pub rules: &'a [Rule],
    pub schema: &'a PortalSchema,
}

/// A directory user that passed validation, with its mapped attributes.
struct Wanted<'a> {
    user: &'a DirectoryUser,
    attrs: Attributes,
    user_name: String,
}

/// Computes the plan.
pub fn compute(input: &Input<'_>) -> Plan {
    let mut plan = Plan::default();
    for bad in input.bad_entries {
        plan.skipped.push(Skipped {
            dn: bad.dn.clone(),
            problem: bad.problem.clone(),
        });
    }

    let wanted = validate::validate(input.directory, input.rules, &mut plan.skipped);

    // Portal users by externalId (anchors are compared case-insensitively: GUID strings
    // differ in case between tools). Two portal users claiming one anchor is a conflict
    // an admin must resolve; neither is touched.
    let mut by_anchor: HashMap<String, Vec<&PortalUser>> = HashMap::new();
    for p in input.portal {
        if let Some(x) = &p.external_id {
            by_anchor.entry(x.to_ascii_lowercase()).or_default().push(p);
        }
    }
    let portal_by_name: HashMap<String, &PortalUser> = input
        .portal
        .iter()
        .map(|p| (p.user_name.to_ascii_lowercase(), p))
        .collect();

    let in_directory: HashSet<String> = input
        .directory
        .iter()
        .map(|u| u.anchor.to_ascii_lowercase())
        .collect();
    let mut relinked: HashSet<String> = HashSet::new();
    for w in &wanted {
        let key = w.user.anchor.to_ascii_lowercase();
        match by_anchor.get(&key).map(Vec::as_slice) {
            None | Some([]) => {
                // A managed portal user with this login whose own anchor left the directory:
                // the person came back as a new entry (deleted and recreated). Relink and
                // reactivate rather than duplicate.
                let returning = portal_by_name
                    .get(&w.user_name.to_ascii_lowercase())
                    .copied()
                    .filter(|p| {
                        p.external_id
                            .as_ref()
                            .map(|x| x.to_ascii_lowercase())
                            .is_some_and(|x| {
                                input.managed.contains(&x) && !in_directory.contains(&x)
                            })
                    });
                match returning {
                    Some(p) if !w.user.disabled => {
                        relinked.insert(p.id.clone());
                        plan_relink(w, p, input.rules, input.schema, &mut plan);
                    }
                    _ => plan_create(w, input.rules, &portal_by_name, &mut plan),
                }
            }
            Some([p]) => {
                plan.links.push(Link {
                    anchor: w.user.anchor.clone(),
                    portal_id: p.id.clone(),
                    user_name: p.user_name.clone(),
                });
                plan_existing(w, p, input.rules, input.schema, &mut plan);
            }
            Some(many) => {
                plan.skipped.push(Skipped {
                    dn: w.user.dn.clone(),
                    problem: format!(
                    "{} portal users carry externalId {} ({}); resolve the duplicate in the portal",
                    many.len(),
                    w.user.anchor,
                    many.iter().map(|p| p.user_name.as_str()).collect::<Vec<_>>().join(", ")
                ),
                })
            }
        }
    }

    plan_closures(input, &in_directory, &relinked, &mut plan);
    plan.changes.sort_by(|a, b| {
        (a.action, &a.user_name.to_ascii_lowercase())
            .cmp(&(b.action, &b.user_name.to_ascii_lowercase()))
    });
    plan
}

fn plan_create(
    w: &Wanted<'_>,
    rules: &[Rule],
    portal_by_name: &HashMap<String, &PortalUser>,
    plan: &mut Plan,
) {
    if w.user.disabled {
        return; // Never create a user the directory says is disabled.
    }
    if let Some(p) = portal_by_name.get(&w.user_name.to_ascii_lowercase()) {
        plan.skipped.push(Skipped {
            dn: w.user.dn.clone(),
            problem: format!(
                "the portal already has a user {} that dirsync does not manage (externalId {}); \
                 it is left alone",
                p.user_name,
                p.external_id.as_deref().unwrap_or("not set"),
            ),
        });
        return;
    }
    plan.changes.push(Change {
        action: Action::Create,
        anchor: w.user.anchor.clone(),
        user_name: w.user_name.clone(),
        dn: Some(w.user.dn.clone()),
        portal_id: None,
        version: None,
        reason: None,
        // In the order of the config's mappings, so the report reads as the config does.
        fields: rules
            .iter()
            .filter_map(|r| {
                w.attrs.get(&r.to).map(|v| FieldChange {
                    path: r.to.clone(),
                    old: None,
                    new: Some(v.clone()),
                })
            })
            .collect(),
    });
}

fn plan_existing(
    w: &Wanted<'_>,
    p: &PortalUser,
    rules: &[Rule],
    schema: &PortalSchema,
    plan: &mut Plan,
) {
    if w.user.disabled {
        if p.active {
            plan.changes.push(close(
                p,
                &w.user.anchor,
                Some(&w.user.dn),
                "disabled in the directory",
            ));
        }
        return;
    }
    let fields = diff_fields(w, p, rules, schema, plan);
    let action = if !p.active {
        Action::Reactivate
    } else if !fields.is_empty() {
        Action::Update
    } else {
        return;
    };
    plan.changes.push(Change {
        action,
        anchor: w.user.anchor.clone(),
        user_name: p.user_name.clone(),
        dn: Some(w.user.dn.clone()),
        portal_id: Some(p.id.clone()),
        version: p.version.clone(),
        reason: (action == Action::Reactivate).then(|| "active in the directory again".to_string()),
        fields,
    });
}

/// The directory entry is new (new anchor) but the person is the one a managed portal user
/// was for: point that user's `externalId` at the new anchor, reactivate it if closed.
fn plan_relink(
    w: &Wanted<'_>,
    p: &PortalUser,
    rules: &[Rule],
    schema: &PortalSchema,
    plan: &mut Plan,
) {
    let mut fields = vec![FieldChange {
        path: external_id_path(),
        old: p.external_id.clone().map(Value::One),
        new: Some(Value::One(w.user.anchor.clone())),
    }];
    fields.extend(diff_fields(w, p, rules, schema, plan));
    plan.changes.push(Change {
        action: if p.active {
            Action::Update
        } else {
            Action::Reactivate
        },
        anchor: w.user.anchor.clone(),
        user_name: p.user_name.clone(),
        dn: Some(w.user.dn.clone()),
        portal_id: Some(p.id.clone()),
        version: p.version.clone(),
        reason: Some(
            "back in the directory as a new entry (new anchor); relinked to the portal user it had"
                .into(),
        ),
        fields,
    });
}

fn external_id_path() -> AttrPath {
    AttrPath {
        schema: None,
        attr: "externalId".into(),
        filter: None,
        sub: None,
    }
}

/// The mapped attributes where the portal differs from the directory. Changes the portal
/// will not take (immutable, read-only) go to `plan.needs_admin` instead.
fn diff_fields(
    w: &Wanted<'_>,
    p: &PortalUser,
    rules: &[Rule],
    schema: &PortalSchema,
    plan: &mut Plan,
) -> Vec<FieldChange> {
    let mut fields = Vec::new();
    // Every mapped attribute, including those the directory no longer has: those are
    // removed from the portal too.
    for path in rules.iter().map(|r| &r.to) {
        let new = w.attrs.get(path).cloned();
        let old = path.get(&p.resource);
        if same(path, old.as_ref(), new.as_ref()) {
            continue;
        }
        if schema.is_fixed(path) {
            plan.needs_admin.push(NeedsAdmin {
                anchor: w.user.anchor.clone(),
                user_name: p.user_name.clone(),
                path: path.clone(),
                old,
                new,
                reason: format!(
                    "`{path}` is {} in the portal: change it there by hand, or recreate the user",
                    match schema.mutability(path) {
                        Mutability::ReadOnly => "read-only",
                        _ => "immutable",
                    }
                ),
            });
            continue;
        }
        fields.push(FieldChange {
            path: path.clone(),
            old,
            new,
        });
    }
    fields
}

fn plan_closures(
    input: &Input<'_>,
    in_directory: &HashSet<String>,
    relinked: &HashSet<String>,
    plan: &mut Plan,
) {
    let leaving: Vec<&PortalUser> = input
        .portal
        .iter()
        .filter(|p| p.active && !relinked.contains(&p.id))
        .filter(|p| {
            p.external_id
                .as_ref()
                .map(|x| x.to_ascii_lowercase())
                .is_some_and(|x| input.managed.contains(&x) && !in_directory.contains(&x))
        })
        .collect();
    if leaving.is_empty() {
        return;
    }
    if input.directory.is_empty() {
        plan.notes.push(format!(
            "the directory returned no users in scope: the {} managed portal users that would \
             leave are NOT closed (check the base DN and filter)",
            leaving.len()
        ));
        return;
    }
    for p in leaving {
        let anchor = p.external_id.clone().unwrap_or_default();
        plan.changes
            .push(close(p, &anchor, None, "no longer in the directory scope"));
    }
}

fn close(p: &PortalUser, anchor: &str, dn: Option<&str>, reason: &str) -> Change {
    Change {
        action: Action::Close,
        anchor: anchor.to_string(),
        user_name: p.user_name.clone(),
        dn: dn.map(str::to_string),
        portal_id: Some(p.id.clone()),
        version: p.version.clone(),
        reason: Some(reason.to_string()),
        fields: Vec::new(),
    }
}

/// Whether the portal already holds what the directory wants. The login (`userName`) is
/// compared without case, as the portal does; everything else exactly.
fn same(path: &AttrPath, old: Option<&Value>, new: Option<&Value>) -> bool {
    match (old, new) {
        (Some(Value::One(a)), Some(Value::One(b))) if path.is_user_name() => {
            a.eq_ignore_ascii_case(b)
        }
        (Some(Value::Many(a)), Some(Value::One(b)))
        | (Some(Value::One(b)), Some(Value::Many(a))) => a.len() == 1 && &a[0] == b,
        _ => old == new,
    }
}

/// Maps a directory user through the rules (re-exported for the report and tests).
pub fn map_user(rules: &[Rule], user: &DirectoryUser) -> Attributes {
    mapping::map_entry(rules, &user.attrs)
}

#[cfg(test)]
mod tests;
