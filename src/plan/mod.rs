//! The plan: what must change in the portal so that it matches the directory. Pure: it takes
//! plain values (directory users, portal users, the daemon's state, the rules) and returns
//! a [`Plan`]; it performs no I/O, so every rule here is tested without servers.

mod baseline;
pub(crate) mod folded;
pub mod groups;
pub mod guard;
pub mod links;
pub mod settled;
#[doc(hidden)]
pub mod synthetic;
pub mod user;
mod validate;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

pub use self::groups::{GroupAction, GroupChange, KnownGroup, MirroredGroups};
pub use self::links::{Links, Orphan};
use crate::access::{self, AccessRules, Membership};
use crate::mapping::{self, AttrPath, Attributes, Owner, Rule, Value};
use crate::portal::{PortalGroup, PortalSchema, PortalUser, UserFields};
use crate::source::{BadEntry, Closure, DirectoryGroup, DirectoryUser, Timestamp};
use folded::{Folded, Multi};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    /// Link an existing hand-made portal user to its directory entry.
    Adopt,
    Update,
    Reactivate,
    Close,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Create,
        Action::Adopt,
        Action::Update,
        Action::Reactivate,
        Action::Close,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Adopt => "adopt",
            Action::Update => "update",
            Action::Reactivate => "reactivate",
            Action::Close => "close",
        }
    }
}

/// Why an attribute is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The directory changed it since the last sync.
    DirectoryChange,
    /// It is admin-locked and was edited in the portal: the directory value is put back.
    RevertedPortalEdit,
    /// No last-synced value is known (a new, adopted or newly mapped attribute).
    Initial,
}

impl Why {
    pub fn label(self) -> &'static str {
        match self {
            Why::DirectoryChange => "directory change",
            Why::RevertedPortalEdit => "reverted portal edit",
            Why::Initial => "initial value",
        }
    }
}

/// One attribute going from `old` to `new` (`None`: absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FieldChange {
    pub path: AttrPath,
    pub old: Option<Value>,
    pub new: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<Why>,
    /// Where the directory value came from (e.g. the group that grants a role).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub use baseline::Baseline;

/// One portal user to create or change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// Why a user is closed, reactivated or adopted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub fields: Vec<FieldChange>,
    /// `active` to set, for closures, reactivations and adoptions of closed users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_active: Option<bool>,
    /// What the state records once the portal confirmed the change.
    #[serde(skip)]
    pub baseline: Baseline,
    /// What the change was planned from, to plan it again if the portal user changes
    /// between plan and apply.
    #[serde(skip)]
    pub from: Option<Planned>,
}

/// The inputs of a user's change that the planner needs again after a `412`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub desired: Attributes,
    pub base: Option<Baseline>,
}

/// A directory entry that is not synced this cycle, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Skipped {
    pub dn: String,
    pub problem: String,
}

/// A directory change the portal will not take (the attribute is immutable or read-only
/// there); an administrator must act in the portal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NeedsAdmin {
    pub anchor: String,
    pub user_name: String,
    pub path: AttrPath,
    pub old: Option<Value>,
    pub new: Option<Value>,
    pub reason: String,
}

/// A `merge` attribute both sides changed: the portal value was kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Conflict {
    pub anchor: String,
    pub user_name: String,
    pub path: AttrPath,
    pub last_synced: Option<Value>,
    pub directory: Option<Value>,
    pub portal: Option<Value>,
}

/// A linked user with nothing to change, whose link and baseline the state records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InSync {
    pub anchor: String,
    pub portal_id: String,
    pub user_name: String,
    pub baseline: Baseline,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub skipped: Vec<Skipped>,
    pub needs_admin: Vec<NeedsAdmin>,
    pub conflicts: Vec<Conflict>,
    /// Portal groups to create, update or delete; applied after the users.
    pub group_changes: Vec<GroupChange>,
    /// Linked users with nothing to change.
    #[serde(skip)]
    pub in_sync: Vec<InSync>,
    /// Things the admin should know that are not changes.
    pub notes: Vec<String>,
    /// Portal users with an externalId dirsync does not manage and no directory user has
    /// (see [`links`]); `adopted` when taken over this cycle.
    pub orphans: Vec<Orphan>,
    /// Changes a safety guard held back, and how to release them.
    pub held: Vec<guard::Held>,
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
    /// The daemon's memory: the anchors (lowercased) of the users it manages, with their
    /// last-synced values.
    pub state: &'a HashMap<String, Baseline>,
    /// The mapping rules and the access-derived attributes: see [`effective_rules`].
    pub rules: &'a [Rule],
    pub schema: &'a PortalSchema,
    pub groups: &'a [DirectoryGroup],
    pub access: &'a AccessRules,
    pub portal_groups: &'a [PortalGroup],
    /// Lowercased anchor → the portal group the state links it to.
    pub known_groups: &'a HashMap<String, KnownGroup>,
    /// This cycle's time: accounts whose expiry is not after it are closed.
    pub now: Timestamp,
    /// Anchors (lowercased) the directory showed deleted this cycle (AD tombstones). Other
    /// managed users missing from the directory left its scope.
    pub deleted: &'a HashSet<String>,
    /// The state's links to portal ids, which of them the portal deleted, and whether
    /// orphans are taken over.
    pub links: &'a Links,
    /// Which users and groups the plan covers: all of them, or only those an incremental
    /// cycle read from the portal.
    pub scope: &'a PlanScope,
}

/// Which directory users and groups a plan covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PlanScope {
    /// Every user and group: both sides were listed whole (a full reconcile).
    #[default]
    Full,
    /// Only these (lowercased anchors): an incremental cycle read just the portal users
    /// and groups they concern (`portal` and `portal_groups` hold those alone). Nothing
    /// outside them is created, closed, counted as an orphan or deleted.
    Only {
        users: HashSet<String>,
        groups: HashSet<String>,
    },
}

impl PlanScope {
    /// Whether the plan covers the user with this (lowercased) anchor.
    pub fn covers_user(&self, anchor: &str) -> bool {
        match self {
            PlanScope::Full => true,
            PlanScope::Only { users, .. } => users.contains(anchor),
        }
    }

    /// The mirrored groups covered, when not all are.
    fn groups(&self) -> Option<&HashSet<String>> {
        match self {
            PlanScope::Full => None,
            PlanScope::Only { groups, .. } => Some(groups),
        }
    }
}

/// A directory user that passed validation. Its attributes are mapped when it is planned,
/// and dropped once it is: a plan holds no copy of every user's attributes.
pub(crate) struct Wanted<'a> {
    pub(crate) user: &'a DirectoryUser,
    pub(crate) user_name: String,
}

/// The rules the planner diffs by: the config's mappings, then the attributes derived
/// from group membership and the tree (role, one per service, sub-unit), all owned by
/// the directory.
pub fn effective_rules(mapping: &[Rule], access: &AccessRules) -> Vec<Rule> {
    let mut rules = mapping.to_vec();
    let derived = |to: AttrPath| Rule {
        from: String::new(),
        to,
        multi: false,
        owner: Owner::Directory,
    };
    if access.roles.is_some() {
        rules.push(derived(access::role_path()));
    }
    for s in &access.services {
        rules.push(derived(access::service_path(&s.service)));
    }
    if let Some(su) = &access.sub_unit {
        rules.push(derived(su.to.clone()));
    }
    rules
}

/// The directory entries a plan skips for their own data, whatever the portal holds:
/// those the source could not read as users (no anchor) and those without a usable,
/// unique login. `dirsync check` reports these, so it counts what `plan` then skips.
pub fn unusable(users: &[DirectoryUser], bad_entries: &[BadEntry], rules: &[Rule]) -> Vec<Skipped> {
    let mut skipped: Vec<Skipped> = bad_entries
        .iter()
        .map(|bad| Skipped {
            dn: bad.dn.clone(),
            problem: bad.problem.clone(),
        })
        .collect();
    validate::validate(
        users,
        rules,
        &login_rules(rules),
        &mut skipped,
        &mut Vec::new(),
    );
    skipped.sort_by_cached_key(|s| s.dn.to_lowercase());
    skipped
}

/// The rules that set the login (`userName`).
fn login_rules(rules: &[Rule]) -> Vec<Rule> {
    rules
        .iter()
        .filter(|r| r.to.is_user_name())
        .cloned()
        .collect()
}

/// The portal users, indexed once per plan so that no user is looked for by a scan.
struct PortalIndex<'a> {
    /// Portal id → user.
    by_id: HashMap<&'a str, &'a PortalUser>,
    /// `userName` (without case) → users with it, in listing order (with their position).
    by_login: Multi<'a, (usize, &'a PortalUser)>,
    /// Primary email (without case) → users without externalId that have it, in listing
    /// order (with their position).
    hand_made_by_email: Multi<'a, (usize, &'a PortalUser)>,
}

impl<'a> PortalIndex<'a> {
    fn new(portal: &'a [PortalUser]) -> PortalIndex<'a> {
        let mut index = PortalIndex {
            by_id: HashMap::with_capacity(portal.len()),
            by_login: Multi::with_capacity(portal.len()),
            hand_made_by_email: Multi::with_capacity(0),
        };
        for (i, p) in portal.iter().enumerate() {
            index.by_id.entry(p.id.as_str()).or_insert(p);
            index.by_login.push(&p.user_name, (i, p));
            if let (None, Some(e)) = (&p.external_id, &p.primary_email) {
                index.hand_made_by_email.push(e, (i, p));
            }
        }
        index
    }

    /// The users with this login (any case), in listing order.
    fn with_login<'s>(&'s self, login: &'s str) -> impl Iterator<Item = &'a PortalUser> + 's {
        self.by_login.get(login).iter().map(|&(_, p)| p)
    }
}

/// Everything the planning of one user looks at.
struct Context<'a, 'i> {
    input: &'i Input<'a>,
    in_directory: &'i HashSet<Folded<'a>>,
    index: &'i PortalIndex<'a>,
    membership: &'i Membership<'a>,
    resolved: &'i access::Resolved<'a>,
}

/// What the plan reads of each portal user: the targets of the rules it compares (not
/// those the portal owns, which it never compares), e.g. from [`effective_rules`].
pub fn portal_fields(rules: &[Rule]) -> Arc<UserFields> {
    UserFields::new(
        rules
            .iter()
            .filter(|r| r.owner != Owner::Portal)
            .map(|r| r.to.clone()),
    )
}

/// Computes the plan.
pub fn compute(input: &Input<'_>) -> Plan {
    compute_on(
        input,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
}

/// [`compute`] on up to `threads` threads: the users are mapped on all of them
/// ([`quiet_users`]); the directory's group membership is built while the users are
/// validated, and the portal groups are planned while the users are ([`both`]). One
/// thread gives the same plan.
pub(crate) fn compute_on(input: &Input<'_>, threads: usize) -> Plan {
    let mut plan = Plan::default();
    for bad in input.bad_entries {
        plan.skipped.push(Skipped {
            dn: bad.dn.clone(),
            problem: bad.problem.clone(),
        });
    }

    let login_rules = login_rules(input.rules);
    let adopt = input.links.adopt_orphans;
    let ((membership, resolved), read) = both(
        threads,
        || {
            let membership = Membership::new(input.groups);
            let resolved = access::resolve(input.access, &membership);
            (membership, resolved)
        },
        || {
            let (mut skipped, mut notes) = (Vec::new(), Vec::new());
            let wanted = validate::validate(
                input.directory,
                input.rules,
                &login_rules,
                &mut skipped,
                &mut notes,
            );
            // Portal users by externalId (anchors are compared case-insensitively: GUID
            // strings differ in case between tools). Two portal users claiming one anchor
            // is a conflict an admin must resolve; neither is touched.
            let mut by_anchor: Multi<'_, &PortalUser> = Multi::with_capacity(input.portal.len());
            for p in input.portal {
                if let Some(x) = &p.external_id {
                    by_anchor.push(x, p);
                }
            }
            let in_directory: HashSet<Folded<'_>> =
                input.directory.iter().map(|u| Folded(&u.anchor)).collect();
            // Orphans are found by listing the whole portal; a partial plan sees only some.
            let orphans = if input.scope == &PlanScope::Full {
                links::orphans(input.portal, input.state, &in_directory, adopt)
            } else {
                Vec::new()
            };
            let index = PortalIndex::new(input.portal);
            Read {
                wanted,
                skipped,
                notes,
                by_anchor,
                in_directory,
                orphans,
                index,
            }
        },
    );
    plan.notes.extend(resolved.problems.iter().cloned());
    for cycle in membership.cycles() {
        plan.notes.push(format!(
            "group cycle in the directory: {cycle} (membership counted once)"
        ));
    }
    plan.skipped.extend(read.skipped);
    plan.notes.extend(read.notes);
    plan.orphans = read.orphans;
    if let Some(p) = input.portal.first() {
        for r in input.rules.iter().filter(|r| r.owner != Owner::Portal) {
            if !p.reads(&r.to) {
                plan.notes.push(format!(
                    "`{}` was not read from the portal, so it is not compared or written this cycle",
                    r.to
                ));
            }
        }
    }

    let recorded = input.state;
    let with_orphans;
    let input = if adopt && !plan.orphans.is_empty() {
        with_orphans = links::with_orphans(input.state, &plan.orphans);
        &Input {
            state: &with_orphans,
            ..*input
        }
    } else {
        input
    };
    let cx = Context {
        input,
        in_directory: &read.in_directory,
        index: &read.index,
        membership: &membership,
        resolved: &resolved,
    };
    let ((group_changes, group_notes), ()) = both(
        threads,
        || plan_groups(input, &read.wanted, &membership, &read.index),
        || {
            plan_users(
                &cx,
                &read.wanted,
                &read.by_anchor,
                recorded,
                threads,
                &mut plan,
            )
        },
    );
    plan.group_changes = group_changes;
    plan.notes.extend(group_notes);
    plan.changes
        .sort_by_cached_key(|c| (c.action, c.user_name.to_ascii_lowercase()));
    plan
}

/// What [`compute_on`] reads off the directory users and the portal users, apart from
/// the directory's groups.
struct Read<'a> {
    /// The users that pass validation, with what it skipped and noted.
    wanted: Vec<Wanted<'a>>,
    skipped: Vec<Skipped>,
    notes: Vec<String>,
    by_anchor: Multi<'a, &'a PortalUser>,
    in_directory: HashSet<Folded<'a>>,
    orphans: Vec<links::Orphan>,
    index: PortalIndex<'a>,
}

/// `a()` and `b()`: on a thread of their own each when `threads` is 2 or more, else one
/// after the other.
fn both<A: Send, B>(threads: usize, a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    if threads < 2 {
        let a = a();
        return (a, b());
    }
    std::thread::scope(|s| {
        let a = s.spawn(a);
        let b = b();
        let a = a.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (a, b)
    })
}

/// The users' changes, closures and notes, into `plan`: each validated user (`wanted`)
/// against the portal user of its anchor (`by_anchor`), or created or adopted; `recorded`
/// is what the state holds.
fn plan_users(
    cx: &Context<'_, '_>,
    wanted: &[Wanted<'_>],
    by_anchor: &Multi<'_, &PortalUser>,
    recorded: &HashMap<String, Baseline>,
    threads: usize,
    plan: &mut Plan,
) {
    let input = cx.input;
    let compared = user::compared_paths(input.rules);
    let mut claimed: HashSet<String> = HashSet::new();
    let quiet = quiet_users(wanted, cx, by_anchor, compared, recorded, threads);
    for (w, _) in wanted.iter().zip(&quiet).filter(|(_, &q)| !q) {
        let anchor = folded::lowered(&w.user.anchor);
        if !input.scope.covers_user(&anchor) {
            continue;
        }
        let key = crate::dn::key(&w.user.dn);
        match by_anchor.get(&anchor) {
            [] => plan_unlinked(w, cx, &key, &mut claimed, plan),
            [p] => {
                let closed = w.user.closure(input.now);
                let attrs = match closed {
                    Some(_) => Attributes::new(),
                    None => cx.desired(w.user, &key),
                };
                let base = input.state.get(&*anchor);
                plan_linked(w, &anchor, compared, attrs, p, base, recorded, input, plan)
            }
            many => {
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

    plan_closures(input, cx.in_directory, &claimed, plan);
    // Where each derived value came from, for the users with changes.
    let changed: HashSet<&str> = plan
        .changes
        .iter()
        .filter(|c| !c.fields.is_empty())
        .map(|c| c.anchor.as_str())
        .collect();
    let mut wanted_by_anchor: HashMap<&str, &Wanted<'_>> = HashMap::new();
    for w in wanted
        .iter()
        .filter(|w| changed.contains(w.user.anchor.as_str()))
    {
        wanted_by_anchor.entry(w.user.anchor.as_str()).or_insert(w);
    }
    for change in &mut plan.changes {
        if change.fields.is_empty() {
            continue;
        }
        if let Some(w) = wanted_by_anchor.get(change.anchor.as_str()) {
            let mut why = BTreeMap::new();
            let key = crate::dn::key(&w.user.dn);
            access::derive_keyed(
                input.access,
                cx.membership,
                cx.resolved,
                w.user,
                &key,
                Some(&mut why),
            );
            for f in &mut change.fields {
                f.detail = why.get(&f.path).cloned();
            }
        }
    }
    keep_one_privileged(cx, wanted, plan);
}

/// The portal groups' changes ([`groups::plan`]) and the notes it makes; none unless
/// groups are mirrored.
fn plan_groups(
    input: &Input<'_>,
    wanted: &[Wanted<'_>],
    membership: &Membership<'_>,
    index: &PortalIndex<'_>,
) -> (Vec<GroupChange>, Vec<String>) {
    let mut notes = Vec::new();
    let Some(rule) = &input.access.portal_groups else {
        return (Vec::new(), notes);
    };
    let made_keys = made_member_keys(wanted, input.now);
    let members = group_members(wanted, &made_keys, input.now);
    let (with_members, by_id);
    let portal_by_id = match input.scope {
        PlanScope::Full => &index.by_id,
        PlanScope::Only { .. } => {
            with_members = with_linked_members(input, wanted);
            by_id = with_members.iter().map(|u| (u.id.as_str(), u)).collect();
            &by_id
        }
    };
    let changes = groups::plan(
        &groups::GroupInput {
            rule,
            directory: input.groups,
            membership,
            users: &members,
            portal_by_id,
            portal_groups: input.portal_groups,
            known: input.known_groups,
            only: input.scope.groups(),
        },
        &mut notes,
    );
    (changes, notes)
}

/// The directory users that may be portal group members (those not closed), by DN key.
/// A plain DN ([`crate::dn::is_plain`]) is
/// its own key without case, so it is borrowed; the others' keys are made first
/// ([`made_member_keys`], in the same order) and borrowed from there.
fn group_members<'w, 'a>(
    wanted: &'w [Wanted<'a>],
    made: &'w [String],
    now: Timestamp,
) -> HashMap<Folded<'w>, &'w Wanted<'a>> {
    let mut made = made.iter();
    let mut by_key = HashMap::new();
    for w in wanted.iter().filter(|w| w.user.closure(now).is_none()) {
        let key = if crate::dn::is_plain(&w.user.dn) {
            w.user.dn.as_str()
        } else {
            made.next().map_or("", String::as_str)
        };
        by_key.insert(Folded(key), w);
    }
    by_key
}

/// The DN keys [`group_members`] cannot borrow: those of the possible members whose DN
/// is not plain, in their order.
fn made_member_keys(wanted: &[Wanted<'_>], now: Timestamp) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| w.user.closure(now).is_none() && !crate::dn::is_plain(&w.user.dn))
        .map(|w| crate::dn::key(&w.user.dn))
        .collect()
}

/// The portal users of a partial plan, and a stand-in for each member of a portal group
/// read this cycle whose user was not read: the state links its id to an anchor (and the
/// directory names its login), so it is not taken for a stranger and removed.
fn with_linked_members(input: &Input<'_>, wanted: &[Wanted<'_>]) -> Vec<PortalUser> {
    let mut users: Vec<PortalUser> = input.portal.to_vec();
    let mut seen: HashSet<String> = users.iter().map(|u| u.id.clone()).collect();
    let anchor_of: HashMap<&str, &str> = input
        .links
        .portal_ids
        .iter()
        .map(|(anchor, id)| (id.as_str(), anchor.as_str()))
        .collect();
    let login_of: HashMap<String, &str> = wanted
        .iter()
        .map(|w| (w.user.anchor.to_ascii_lowercase(), w.user_name.as_str()))
        .collect();
    for id in input.portal_groups.iter().flat_map(|g| &g.members) {
        let Some(anchor) = anchor_of.get(id.as_str()) else {
            continue;
        };
        if input.links.deleted_in_portal.contains(id) {
            continue; // gone: a member id that no longer names anyone
        }
        if seen.insert(id.clone()) {
            users.push(PortalUser::stand_in(
                id.clone(),
                anchor.to_string(),
                login_of.get(*anchor).map_or(id.as_str(), |l| l).to_string(),
            ));
        }
    }
    users
}

/// What the directory asks of the portal at `now`, by the same rules as [`compute`]:
/// each user it would sync, lowercased anchor → (login, mapped and derived attributes;
/// entries it would skip are left out), and the mirrored groups ([`mirrored_groups`]).
/// The directory is validated and its group membership built once for both.
pub fn desired(
    directory: &[DirectoryUser],
    groups: &[DirectoryGroup],
    rules: &[Rule],
    access: &AccessRules,
    now: Timestamp,
) -> Desired {
    let (users, groups) = desired_each(
        directory,
        groups,
        rules,
        access,
        now,
        |user, login, attrs| Some((user.anchor.to_ascii_lowercase(), (login.to_string(), attrs))),
    );
    Desired {
        users: users.into_iter().collect(),
        groups,
    }
}

/// [`desired`], a user at a time: `visit` gets each user it would sync with its login
/// and attributes, and keeps what it returns, so that a caller that only looks at each
/// once holds none of them. The users are mapped on every core (in the directory's
/// order within each part; the parts in order); the group membership is built while
/// the users are validated. Returns what `visit` kept and the mirrored groups.
pub fn desired_each<'d, T: Send>(
    directory: &'d [DirectoryUser],
    groups: &[DirectoryGroup],
    rules: &[Rule],
    access: &AccessRules,
    now: Timestamp,
    visit: impl Fn(&'d DirectoryUser, &str, Attributes) -> Option<T> + Sync,
) -> (Vec<T>, MirroredGroups) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    desired_each_on(directory, groups, rules, access, now, visit, threads)
}

/// [`desired_each`] on up to `threads` threads; one gives the same.
pub(crate) fn desired_each_on<'d, T: Send>(
    directory: &'d [DirectoryUser],
    groups: &[DirectoryGroup],
    rules: &[Rule],
    access: &AccessRules,
    now: Timestamp,
    visit: impl Fn(&'d DirectoryUser, &str, Attributes) -> Option<T> + Sync,
    threads: usize,
) -> (Vec<T>, MirroredGroups) {
    let (membership, wanted) = both(
        threads,
        || Membership::new(groups),
        || validate_all(directory, rules),
    );
    let resolved = access::resolve(access, &membership);
    let map = |ws: &[Wanted<'d>]| -> Vec<T> {
        ws.iter()
            .filter_map(|w| {
                let key = crate::dn::key(&w.user.dn);
                let attrs = desired_attrs(rules, access, &membership, &resolved, w.user, &key);
                visit(w.user, &w.user_name, attrs)
            })
            .collect()
    };
    both(
        threads,
        || in_parts(&wanted, threads, map),
        || mirrored_of(&wanted, groups, &membership, access, now),
    )
}

/// What [`desired`] finds: the users' values and the mirrored groups.
pub struct Desired {
    pub users: HashMap<String, (String, Attributes)>,
    pub groups: MirroredGroups,
}

/// The directory users that pass validation (notes and skips are [`compute`]'s to report).
fn validate_all<'a>(directory: &'a [DirectoryUser], rules: &[Rule]) -> Vec<Wanted<'a>> {
    let (mut skipped, mut notes) = (Vec::new(), Vec::new());
    validate::validate(
        directory,
        rules,
        &login_rules(rules),
        &mut skipped,
        &mut notes,
    )
}

/// Whether `desired` differs from the last-synced values (`base`) in an attribute the
/// directory owns or merges; a value never synced differs.
pub fn differs_from_baseline(desired: &Attributes, base: &Baseline, rules: &[Rule]) -> bool {
    rules
        .iter()
        .filter(|r| r.owner != Owner::Portal)
        .any(|r| match base.get_ref(&r.to) {
            None => true,
            Some(last) => !user::same_ref(&r.to, last, desired.get(&r.to)),
        })
}

/// The portal groups the directory asks for at `now`: lowercased anchor of each mirrored
/// directory group → (its name, the lowercased anchors of the users [`compute`] makes its
/// members). Empty when no groups are mirrored.
pub fn mirrored_groups(
    directory: &[DirectoryUser],
    groups: &[DirectoryGroup],
    rules: &[Rule],
    access: &AccessRules,
    now: Timestamp,
) -> MirroredGroups {
    if access.portal_groups.is_none() {
        return BTreeMap::new();
    }
    let membership = Membership::new(groups);
    mirrored_of(
        &validate_all(directory, rules),
        groups,
        &membership,
        access,
        now,
    )
}

/// [`mirrored_groups`] of users validated and a membership built already.
fn mirrored_of(
    wanted: &[Wanted<'_>],
    groups: &[DirectoryGroup],
    membership: &Membership<'_>,
    access: &AccessRules,
    now: Timestamp,
) -> MirroredGroups {
    let Some(rule) = &access.portal_groups else {
        return BTreeMap::new();
    };
    let users: HashMap<String, (String, String)> = wanted
        .iter()
        .filter(|w| w.user.closure(now).is_none())
        .map(|w| {
            (
                crate::dn::key(&w.user.dn),
                (w.user.anchor.clone(), w.user_name.clone()),
            )
        })
        .collect();
    groups::desired_members(rule, groups, membership, &users)
}

impl Context<'_, '_> {
    /// What the directory says `user`'s portal attributes should be ([`desired_attrs`]);
    /// `key` is its DN key.
    fn desired(&self, user: &DirectoryUser, key: &str) -> Attributes {
        desired_attrs(
            self.input.rules,
            self.input.access,
            self.membership,
            self.resolved,
            user,
            key,
        )
    }
}

/// What the directory says a user's portal attributes should be: the mapped ones (with
/// control characters replaced, see [`validate`]) and the derived ones. `key`: the
/// user's DN key ([`crate::dn::key`]).
fn desired_attrs(
    rules: &[Rule],
    access: &AccessRules,
    membership: &Membership<'_>,
    resolved: &access::Resolved<'_>,
    user: &DirectoryUser,
    key: &str,
) -> Attributes {
    let mut attrs = mapping::map_entry(rules, &user.attrs);
    validate::clean(&mut attrs);
    attrs.extend(access::derive_keyed(
        access, membership, resolved, user, key, None,
    ));
    attrs
}

/// A directory user with no portal user carrying its anchor: relink a returning managed
/// user, adopt a hand-made one, or create.
fn plan_unlinked(
    w: &Wanted<'_>,
    cx: &Context<'_, '_>,
    key: &str,
    claimed: &mut HashSet<String>,
    plan: &mut Plan,
) {
    let input = cx.input;
    if w.user.closure(input.now).is_some() {
        return; // Never create or adopt a user the directory says may not log in.
    }
    let login = w.user_name.to_ascii_lowercase();
    let managed_elsewhere = |p: &PortalUser| {
        p.external_id
            .as_ref()
            .map(|x| x.to_ascii_lowercase())
            .is_some_and(|x| input.state.contains_key(&x))
    };

    // A managed portal user with this login whose own anchor left the directory: the
    // person came back as a new entry (deleted and recreated). Relink, don't duplicate.
    if let Some(p) = cx.index.with_login(&login).find(|p| {
        managed_elsewhere(p)
            && p.external_id
                .as_ref()
                .is_some_and(|x| !cx.in_directory.contains(&Folded(x)))
    }) {
        claimed.insert(p.id.clone());
        let old_anchor = p.external_id.clone().unwrap_or_default();
        let base = input.state.get(&old_anchor.to_ascii_lowercase());
        let reason =
            "back in the directory as a new entry (new anchor); relinked to the portal user it had";
        let attrs = cx.desired(w.user, key);
        push_linking_change(w, attrs, p, base, input, reason, plan);
        return;
    }

    // Hand-made portal users (no externalId) with this login or primary email, in
    // listing order.
    let mut candidates: Vec<(usize, &PortalUser)> = cx
        .index
        .by_login
        .get(&login)
        .iter()
        .chain(cx.index.hand_made_by_email.get(&login))
        .filter(|(_, p)| p.external_id.is_none() && !claimed.contains(&p.id))
        .copied()
        .collect();
    candidates.sort_by_key(|&(i, _)| i);
    candidates.dedup_by_key(|&mut (i, _)| i);
    let candidates: Vec<&PortalUser> = candidates.into_iter().map(|(_, p)| p).collect();
    match candidates.as_slice() {
        [] => {}
        [p] => {
            claimed.insert(p.id.clone());
            let how = if p.user_name.eq_ignore_ascii_case(&login) {
                "userName"
            } else {
                "primary email"
            };
            let reason = format!("existing portal user matched by {how}; now managed by dirsync");
            let attrs = cx.desired(w.user, key);
            push_linking_change(w, attrs, p, None, input, &reason, plan);
            return;
        }
        many => {
            plan.skipped.push(Skipped {
                dn: w.user.dn.clone(),
                problem: format!(
                    "ambiguous: {} portal users match login {} ({}); none is adopted",
                    many.len(),
                    w.user_name,
                    many.iter()
                        .map(|p| p.user_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
            return;
        }
    }

    if let Some(p) = cx.index.with_login(&login).next() {
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
    // Never a second portal user for one the state links this anchor to.
    let reason = match input
        .links
        .may_create(&w.user.anchor, |id| cx.index.by_id.get(id).copied())
    {
        Ok(reason) => reason,
        Err(problem) => {
            plan.skipped.push(Skipped {
                dn: w.user.dn.clone(),
                problem,
            });
            return;
        }
    };
    let attrs = cx.desired(w.user, key);
    plan.changes.push(Change {
        action: Action::Create,
        anchor: w.user.anchor.clone(),
        user_name: w.user_name.clone(),
        dn: Some(w.user.dn.clone()),
        portal_id: None,
        version: None,
        reason,
        // In the order of the config's mappings, so the report reads as the config does.
        fields: input
            .rules
            .iter()
            .filter_map(|r| {
                attrs.get(&r.to).map(|v| FieldChange {
                    path: r.to.clone(),
                    old: None,
                    new: Some(v.clone()),
                    why: None,
                    detail: None,
                })
            })
            .collect(),
        set_active: None,
        baseline: user::created_baseline(&attrs, input.rules),
        from: None,
    });
}

/// Adoption or relink: set `externalId`, bring the attributes in line, open if closed.
fn push_linking_change(
    w: &Wanted<'_>,
    attrs: Attributes,
    p: &PortalUser,
    base: Option<&Baseline>,
    input: &Input<'_>,
    reason: &str,
    plan: &mut Plan,
) {
    let d = user::diff(&w.user.anchor, &attrs, base, p, input.rules, input.schema);
    plan.conflicts.extend(d.conflicts);
    plan.needs_admin.extend(d.needs_admin);
    let mut fields = vec![FieldChange {
        path: external_id_path(),
        old: p.external_id.clone().map(Value::One),
        new: Some(Value::One(w.user.anchor.clone())),
        why: None,
        detail: None,
    }];
    fields.extend(d.fields);
    let adopting = p.external_id.is_none();
    plan.changes.push(Change {
        action: match (adopting, p.active) {
            (true, _) => Action::Adopt,
            (false, true) => Action::Update,
            (false, false) => Action::Reactivate,
        },
        anchor: w.user.anchor.clone(),
        user_name: p.user_name.clone(),
        dn: Some(w.user.dn.clone()),
        portal_id: Some(p.id.clone()),
        version: p.version.clone(),
        reason: Some(reason.to_string()),
        fields,
        set_active: (!p.active).then_some(true),
        baseline: d.baseline,
        from: Some(Planned {
            desired: attrs,
            base: base.cloned(),
        }),
    });
}

/// Which of `wanted` need nothing planned or recorded: linked to one active portal user,
/// by the anchor the state links to that user's id, not closed, and in step with it as
/// the state recorded them ([`user::in_step_as_recorded`]). Most users, most cycles.
/// Finding that out maps each user, the plan's main cost, so it runs on every core;
/// the rest of the plan (what the others need) stays in directory order, on one.
fn quiet_users(
    wanted: &[Wanted<'_>],
    cx: &Context<'_, '_>,
    by_anchor: &Multi<'_, &PortalUser>,
    compared: usize,
    recorded: &HashMap<String, Baseline>,
    threads: usize,
) -> Vec<bool> {
    let input = cx.input;
    let quiet = |w: &Wanted<'_>| {
        let anchor = folded::lowered(&w.user.anchor);
        let (true, [p]) = (input.scope.covers_user(&anchor), by_anchor.get(&anchor)) else {
            return false;
        };
        let Some(r) = recorded.get(&*anchor) else {
            return false;
        };
        p.active
            && input.links.portal_ids.get(&*anchor) == Some(&p.id)
            && w.user.closure(input.now).is_none()
            && user::in_step_as_recorded(
                &cx.desired(w.user, &crate::dn::key(&w.user.dn)),
                p,
                input.rules,
                compared,
                r,
            )
    };
    in_parts(wanted, threads, |ws| ws.iter().map(quiet).collect())
}

/// `f` of each part of `items`, in order: one part per thread up to `threads`, each of
/// 4,096 items at least (below a few thousand users a thread costs more than it saves).
fn in_parts<W: Sync, R: Send>(
    items: &[W],
    threads: usize,
    f: impl Fn(&[W]) -> Vec<R> + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(threads.max(1)).max(4096);
    if items.len() <= chunk {
        return f(items);
    }
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || f(part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// A directory user linked to portal user `p` by its anchor (`key`, lowercased);
/// `recorded` is what the state holds (an in-step user it holds as it is needs no record).
#[allow(clippy::too_many_arguments)]
fn plan_linked(
    w: &Wanted<'_>,
    key: &str,
    compared: usize,
    attrs: Attributes,
    p: &PortalUser,
    base: Option<&Baseline>,
    recorded: &HashMap<String, Baseline>,
    input: &Input<'_>,
    plan: &mut Plan,
) {
    if let Some(why) = w.user.closure(input.now) {
        if p.active {
            plan.changes
                .push(close(p, &w.user.anchor, Some(&w.user.dn), why));
        }
        return;
    }
    // Most users are in step and recorded as they are: nothing to plan or record, and
    // no baseline to build to find that out.
    if p.active
        && input.links.portal_ids.get(key) == Some(&p.id)
        && recorded
            .get(key)
            .is_some_and(|r| user::in_step_as_recorded(&attrs, p, input.rules, compared, r))
    {
        return;
    }
    let d = user::diff(&w.user.anchor, &attrs, base, p, input.rules, input.schema);
    plan.conflicts.extend(d.conflicts);
    plan.needs_admin.extend(d.needs_admin);
    let action = if !p.active {
        Action::Reactivate
    } else if !d.fields.is_empty() {
        Action::Update
    } else {
        let known = input.links.portal_ids.get(key) == Some(&p.id)
            && recorded.get(key) == Some(&d.baseline);
        if !known {
            plan.in_sync.push(InSync {
                anchor: w.user.anchor.clone(),
                portal_id: p.id.clone(),
                user_name: p.user_name.clone(),
                baseline: d.baseline,
            });
        }
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
        fields: d.fields,
        set_active: (action == Action::Reactivate).then_some(true),
        baseline: d.baseline,
        from: Some(Planned {
            desired: attrs,
            base: base.cloned(),
        }),
    });
}

/// Plans a change again from a freshly read portal user (after a `412`), under the same
/// rules. `None` when nothing is left to do.
pub fn replan(
    change: &Change,
    fresh: &PortalUser,
    rules: &[Rule],
    schema: &PortalSchema,
) -> Option<Change> {
    let mut next = change.clone();
    next.version = fresh.version.clone();
    if change.action == Action::Close {
        return fresh.active.then_some(next);
    }
    let from = change.from.as_ref()?;
    let d = user::diff(
        &change.anchor,
        &from.desired,
        from.base.as_ref(),
        fresh,
        rules,
        schema,
    );
    let mut fields: Vec<FieldChange> = change
        .fields
        .iter()
        .filter(|f| {
            f.path == external_id_path()
                && fresh.external_id.as_deref() != Some(change.anchor.as_str())
        })
        .cloned()
        .collect();
    fields.extend(d.fields);
    next.fields = fields;
    next.baseline = d.baseline;
    next.set_active = (!fresh.active).then_some(true);
    (!next.fields.is_empty() || next.set_active.is_some()).then_some(next)
}

fn external_id_path() -> AttrPath {
    static EXTERNAL_ID: std::sync::OnceLock<AttrPath> = std::sync::OnceLock::new();
    EXTERNAL_ID
        .get_or_init(|| {
            AttrPath::from(crate::mapping::PathParts {
                schema: None,
                attr: "externalId".into(),
                filter: None,
                sub: None,
            })
        })
        .clone()
}

fn plan_closures(
    input: &Input<'_>,
    in_directory: &HashSet<Folded<'_>>,
    claimed: &HashSet<String>,
    plan: &mut Plan,
) {
    let leaving: Vec<&PortalUser> = input
        .portal
        .iter()
        .filter(|p| {
            p.active
                && p.external_id.as_ref().is_some_and(|x| {
                    if in_directory.contains(&Folded(x)) {
                        return false;
                    }
                    let x = x.to_ascii_lowercase();
                    input.state.contains_key(&x) && input.scope.covers_user(&x)
                })
                && !claimed.contains(&p.id)
        })
        .collect();
    if leaving.is_empty() {
        return;
    }
    if input.directory.is_empty() {
        let mut not_closed: Vec<Change> = leaving
            .iter()
            .map(|p| {
                let anchor = p.external_id.clone().unwrap_or_default();
                close(p, &anchor, None, Closure::LeftScope)
            })
            .collect();
        not_closed.sort_by_key(|c| c.user_name.to_lowercase());
        plan.held.push(guard::Held {
            changes: not_closed,
            ..guard::Held::new(
                guard::HeldKind::EmptySource,
                leaving.len(),
                "a directory with users".into(),
                format!(
                    "the directory returned no users in scope: the {} managed portal users that would \
                     leave are NOT closed (check the base DN, the filter and the directory)",
                    leaving.len()
                ),
            )
        });
        return;
    }
    for p in leaving {
        let anchor = p.external_id.clone().unwrap_or_default();
        let why = if input.deleted.contains(&anchor.to_ascii_lowercase()) {
            Closure::Deleted
        } else {
            Closure::LeftScope
        };
        plan.changes.push(close(p, &anchor, None, why));
    }
}

/// Never leave the portal without an active, managed holder of one of the `keep_one_of`
/// roles: if the plan would demote or close the last one, that one change is held back.
/// A partial plan counts the managed users it did not read as the directory has them:
/// nothing changed for them since the last sync.
fn keep_one_privileged(cx: &Context<'_, '_>, wanted: &[Wanted<'_>], plan: &mut Plan) {
    let (input, in_directory) = (cx.input, cx.in_directory);
    let keep = &input.access.keep_one_of;
    if input.access.roles.is_none() || keep.is_empty() {
        return;
    }
    let role = access::role_path();
    let privileged = |v: Option<&Value>| match v {
        Some(Value::Many(roles)) => roles
            .iter()
            .any(|r| keep.iter().any(|k| k.eq_ignore_ascii_case(r))),
        Some(Value::One(r)) => keep.iter().any(|k| k.eq_ignore_ascii_case(r)),
        None => false,
    };
    let managed = |p: &PortalUser| {
        p.external_id
            .as_ref()
            .map(|x| x.to_ascii_lowercase())
            .is_some_and(|x| input.state.contains_key(&x) || in_directory.contains(&Folded(&x)))
    };
    let holders: Vec<&PortalUser> = input
        .portal
        .iter()
        .filter(|p| p.active && privileged(p.get(&role).as_ref()) && managed(p))
        .collect();
    if let PlanScope::Only { users, .. } = input.scope {
        let unread_holder = wanted.iter().any(|w| {
            let key = w.user.anchor.to_ascii_lowercase();
            !users.contains(&key)
                && input.state.contains_key(&key)
                && w.user.closure(input.now).is_none()
                && privileged(
                    access::derive_keyed(
                        input.access,
                        cx.membership,
                        cx.resolved,
                        w.user,
                        &crate::dn::key(&w.user.dn),
                        None,
                    )
                    .get(&role),
                )
        });
        if unread_holder {
            return;
        }
    }
    if holders.is_empty() {
        return;
    }
    // Portal id → the first change of that user.
    let mut change_at: HashMap<&str, usize> = HashMap::new();
    for (i, c) in plan.changes.iter().enumerate() {
        if let Some(id) = c.portal_id.as_deref() {
            change_at.entry(id).or_insert(i);
        }
    }
    let change_of = |_: &Plan, id: &str| change_at.get(id).copied();
    let stays = |plan: &Plan, p: &PortalUser| match change_of(plan, &p.id).map(|i| &plan.changes[i])
    {
        None => true,
        Some(c) if c.set_active == Some(false) => false,
        Some(c) => c
            .fields
            .iter()
            .find(|f| f.path == role)
            .is_none_or(|f| privileged(f.new.as_ref())),
    };
    let gains = plan.changes.iter().any(|c| {
        c.set_active != Some(false)
            && c.fields
                .iter()
                .any(|f| f.path == role && privileged(f.new.as_ref()))
    });
    if gains || holders.iter().any(|p| stays(plan, p)) {
        return;
    }
    let mut keepers = holders.clone();
    keepers.sort_by_key(|p| p.user_name.to_ascii_lowercase());
    let p = keepers[0];
    let current = p.get(&role);
    let Some(i) = change_of(plan, &p.id) else {
        return;
    };
    drop(change_at);
    let change = &mut plan.changes[i];
    let what = if change.set_active == Some(false) {
        let why = change.reason.clone().unwrap_or_default();
        plan.changes.remove(i);
        format!("not closed ({why})")
    } else {
        let lost = change
            .fields
            .iter()
            .find(|f| f.path == role)
            .and_then(|f| f.detail.clone())
            .unwrap_or_default();
        change.fields.retain(|f| f.path != role);
        if let Some(c) = &current {
            change.baseline.insert(role.clone(), Some(c.clone()));
        }
        let emptied = change.fields.is_empty() && change.set_active.is_none();
        if emptied {
            let c = plan.changes.remove(i);
            plan.in_sync.push(InSync {
                anchor: c.anchor,
                portal_id: p.id.clone(),
                user_name: c.user_name,
                baseline: c.baseline,
            });
        }
        format!(
            "keeps role {} ({lost})",
            current.as_ref().map(|v| v.to_string()).unwrap_or_default()
        )
    };
    plan.notes.push(format!(
        "{}: {what}: it is the last active {} dirsync manages, and a cycle never leaves the portal without one",
        p.user_name,
        keep.join(" or ")
    ));
}

fn close(p: &PortalUser, anchor: &str, dn: Option<&str>, why: Closure) -> Change {
    Change {
        action: Action::Close,
        anchor: anchor.to_string(),
        user_name: p.user_name.clone(),
        dn: dn.map(str::to_string),
        portal_id: Some(p.id.clone()),
        version: p.version.clone(),
        reason: Some(why.to_string()),
        fields: Vec::new(),
        set_active: Some(false),
        baseline: Baseline::new(),
        from: None,
    }
}

#[cfg(test)]
mod tests;
