//! Portal groups mirrored from directory groups. Pure.
//!
//! A mirrored group is anchored by the directory group's anchor in `externalId`; its
//! members are the portal users dirsync manages that belong to the directory group
//! (nested groups flattened by default). Membership changes are incremental: what to add
//! and what to remove, never the whole list. Hand-made portal groups are never touched;
//! a group that leaves scope is deleted only if dirsync created it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::folded::Folded;
use super::Wanted;

use serde::Serialize;

use crate::access::{Membership, PortalGroupRule};
use crate::portal::{PortalGroup, PortalUser};
use crate::source::DirectoryGroup;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupAction {
    Create,
    Update,
    Delete,
}

/// A portal group member, by directory anchor (to resolve to a portal id at apply time,
/// when users created in this cycle have one) or by portal id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Member {
    pub user_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portal_id: Option<String>,
    /// For a member added: the directory groups through which the user belongs, from the
    /// one that lists it up to the mirrored group (`IT-Leads → Sales`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GroupChange {
    pub action: GroupAction,
    pub name: String,
    pub anchor: String,
    pub portal_id: Option<String>,
    /// `(old, new)` display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rename: Option<(String, String)>,
    pub add: Vec<Member>,
    pub remove: Vec<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The portal group carries the directory group's anchor as `externalId` but the
    /// state does not know it: a group dirsync made whose create was not recorded (the
    /// run was killed, or its answer lost). It is linked, as made by dirsync.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub take_over: bool,
}

/// Mirrored groups as the directory asks for them: lowercased anchor → (name, the
/// lowercased anchors of the members).
pub type MirroredGroups = BTreeMap<String, (String, BTreeSet<String>)>;

/// A portal group the state knows: its id and whether dirsync created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownGroup {
    pub portal_id: String,
    pub created: bool,
}

pub(crate) struct GroupInput<'a> {
    pub rule: &'a PortalGroupRule,
    pub directory: &'a [DirectoryGroup],
    pub membership: &'a Membership<'a>,
    /// Directory users that may be members, by DN key ([`crate::dn::key`]).
    pub users: &'a HashMap<Folded<'a>, &'a Wanted<'a>>,
    /// The portal users, by id.
    pub portal_by_id: &'a HashMap<&'a str, &'a PortalUser>,
    pub portal_groups: &'a [PortalGroup],
    /// Lowercased anchor → the portal group the state links it to.
    pub known: &'a HashMap<String, KnownGroup>,
    /// Only these directory groups (lowercased anchors) are planned, when not all are:
    /// an incremental cycle read just their portal groups.
    pub only: Option<&'a HashSet<String>>,
}

/// Plans the group changes; notes go to `notes`.
pub(crate) fn plan(input: &GroupInput<'_>, notes: &mut Vec<String>) -> Vec<GroupChange> {
    let mut out = Vec::new();
    let covered = |anchor: &str| input.only.is_none_or(|only| only.contains(anchor));
    // The configured groups, resolved once: their DN keys.
    let mut named: HashSet<String> = HashSet::new();
    for r in &input.rule.groups {
        match input.membership.resolve(r) {
            Ok(found) => {
                named.insert(crate::dn::key(&found.dn));
            }
            Err(e) => notes.push(format!("portal_groups: {e}")),
        }
    }
    let all_selected: Vec<&DirectoryGroup> = input
        .directory
        .iter()
        .filter(|g| mirrored(input.rule, input.membership, &named, g))
        .collect();
    let selected: Vec<&DirectoryGroup> = all_selected
        .iter()
        .copied()
        .filter(|g| covered(&g.anchor.to_ascii_lowercase()))
        .collect();
    // Hand-made portal groups (no externalId) by lowercased name, the first listed.
    let mut hand_made: HashMap<String, &PortalGroup> = HashMap::new();
    for p in input
        .portal_groups
        .iter()
        .filter(|p| p.external_id.is_none())
    {
        hand_made
            .entry(p.display_name.to_ascii_lowercase())
            .or_insert(p);
    }
    let group_by_id: HashMap<&str, &PortalGroup> = input
        .portal_groups
        .iter()
        .rev()
        .map(|g| (g.id.as_str(), g))
        .collect();
    let by_external: HashMap<String, &PortalGroup> = input
        .portal_groups
        .iter()
        .filter_map(|g| g.external_id.as_ref().map(|x| (x.to_ascii_lowercase(), g)))
        .collect();
    let user_by_id = input.portal_by_id;

    for g in &selected {
        let desired: BTreeMap<String, ((&str, &str), String)> = input
            .membership
            .members_via(g, input.rule.flatten)
            .into_iter()
            .filter_map(|(dn, via)| {
                input.users.get(&Folded(&dn)).map(|w| {
                    let (anchor, login) = (w.user.anchor.as_str(), w.user_name.as_str());
                    (anchor.to_ascii_lowercase(), ((anchor, login), via))
                })
            })
            .collect();
        let key = g.anchor.to_ascii_lowercase();
        match by_external.get(&key) {
            None => {
                if let Some(hand_made) = hand_made.get(&g.name.to_ascii_lowercase()) {
                    notes.push(format!(
                        "portal group {:?} exists but was not made by dirsync; directory group {} is not mirrored",
                        hand_made.display_name, g.dn
                    ));
                    continue;
                }
                out.push(GroupChange {
                    action: GroupAction::Create,
                    name: g.name.clone(),
                    anchor: g.anchor.clone(),
                    portal_id: None,
                    rename: None,
                    add: desired
                        .values()
                        .map(|((anchor, login), via)| Member {
                            user_name: login.to_string(),
                            anchor: Some(anchor.to_string()),
                            portal_id: None,
                            via: Some(via.clone()),
                        })
                        .collect(),
                    remove: Vec::new(),
                    reason: None,
                    take_over: false,
                });
            }
            Some(p) => {
                let current: BTreeMap<String, &str> = p
                    .members
                    .iter()
                    .map(|id| {
                        let anchor = user_by_id
                            .get(id.as_str())
                            .and_then(|u| u.external_id.as_ref())
                            .map(|x| x.to_ascii_lowercase())
                            .unwrap_or_else(|| format!("id:{id}"));
                        (anchor, id.as_str())
                    })
                    .collect();
                let add: Vec<Member> = desired
                    .iter()
                    .filter(|(a, _)| !current.contains_key(*a))
                    .map(|(_, ((anchor, login), via))| Member {
                        user_name: login.to_string(),
                        anchor: Some(anchor.to_string()),
                        portal_id: None,
                        via: Some(via.clone()),
                    })
                    .collect();
                let remove: Vec<Member> = current
                    .iter()
                    .filter(|(a, _)| !desired.contains_key(*a))
                    .map(|(_, id)| Member {
                        user_name: user_by_id
                            .get(id)
                            .map_or_else(|| id.to_string(), |u| u.user_name.clone()),
                        anchor: None,
                        portal_id: Some(id.to_string()),
                        via: None,
                    })
                    .collect();
                let rename =
                    (p.display_name != g.name).then(|| (p.display_name.clone(), g.name.clone()));
                // Made by dirsync (it carries the anchor dirsync sends) but never recorded:
                // the run that made it was killed, or lost the answer. Linked as dirsync's.
                let take_over = !input.known.contains_key(&key);
                if add.is_empty() && remove.is_empty() && rename.is_none() && !take_over {
                    continue;
                }
                out.push(GroupChange {
                    action: GroupAction::Update,
                    name: g.name.clone(),
                    anchor: g.anchor.clone(),
                    portal_id: Some(p.id.clone()),
                    rename,
                    add,
                    remove,
                    reason: take_over.then(|| {
                        "carries this directory group's anchor as externalId but dirsync had not recorded it \
                         (a run stopped before it could); linked as a group dirsync made"
                            .to_string()
                    }),
                    take_over,
                });
            }
        }
    }

    // Groups dirsync mirrored before that are no longer selected or no longer exist.
    let selected_anchors: BTreeSet<String> = all_selected
        .iter()
        .map(|g| g.anchor.to_ascii_lowercase())
        .collect();
    let leaving: Vec<(&String, &KnownGroup)> = input
        .known
        .iter()
        .filter(|(a, _)| !selected_anchors.contains(*a) && covered(a))
        .collect();
    if !leaving.is_empty() && input.directory.is_empty() {
        notes.push(format!(
            "the directory returned no groups: the {} mirrored portal groups are NOT deleted (check source.groups)",
            leaving.len()
        ));
        return out;
    }
    for (anchor, known) in leaving {
        let Some(p) = group_by_id.get(known.portal_id.as_str()) else {
            continue; // already gone from the portal
        };
        if known.created {
            out.push(GroupChange {
                action: GroupAction::Delete,
                name: p.display_name.clone(),
                anchor: anchor.clone(),
                portal_id: Some(p.id.clone()),
                rename: None,
                add: Vec::new(),
                remove: Vec::new(),
                reason: Some("no longer a mirrored directory group".into()),
                take_over: false,
            });
        } else {
            notes.push(format!(
                "portal group {:?} is no longer mirrored; dirsync did not create it, so it is left as it is",
                p.display_name
            ));
        }
    }
    out.sort_by(|a, b| {
        (a.action, a.name.to_ascii_lowercase()).cmp(&(b.action, b.name.to_ascii_lowercase()))
    });
    out
}

/// Whether `g` is mirrored: selected by the filter, or among the `named` groups (DN keys).
fn mirrored(
    rule: &PortalGroupRule,
    membership: &Membership<'_>,
    named: &HashSet<String>,
    g: &DirectoryGroup,
) -> bool {
    (rule.by_filter && g.selected) || (!named.is_empty() && named.contains(&membership.key_of(g)))
}

/// The mirrored directory groups (lowercased anchor) with their names and the lowercased
/// anchors of their members among `users` (DN key → (anchor, login)), as [`plan`] wants
/// them in the portal.
pub fn desired_members(
    rule: &PortalGroupRule,
    directory: &[DirectoryGroup],
    membership: &Membership<'_>,
    users: &HashMap<String, (String, String)>,
) -> MirroredGroups {
    let named: HashSet<String> = rule
        .groups
        .iter()
        .filter_map(|r| membership.resolve(r).ok())
        .map(|found| crate::dn::key(&found.dn))
        .collect();
    directory
        .iter()
        .filter(|g| mirrored(rule, membership, &named, g))
        .map(|g| {
            let members = membership
                .members_of(g, rule.flatten)
                .into_iter()
                .filter_map(|dn| users.get(&dn).map(|u| u.0.to_ascii_lowercase()))
                .collect();
            (g.anchor.to_ascii_lowercase(), (g.name.clone(), members))
        })
        .collect()
}
