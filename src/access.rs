//! Access from the directory: role, services, sub-unit and portal-group membership, from
//! (nested) group membership and the user's place in the tree. Pure: no I/O.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, OnceLock};

use hashbrown::HashTable;

use crate::dn::{self, Dn};
use crate::mapping::{AttrPath, Attributes, PathParts, Value};
use crate::plan::folded::Folded;
use crate::source::{DirectoryGroup, DirectoryUser};

/// A directory group named in the config: by DN (contains `=`) or by `cn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRef(pub String);

impl GroupRef {
    /// Named by DN (holds `=`) rather than by `cn`.
    pub fn is_dn(&self) -> bool {
        self.0.contains('=')
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRule {
    pub group: GroupRef,
    pub role: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRule {
    pub group: GroupRef,
    pub service: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubUnitSource {
    /// The OU path of the user's DN below `base`, outermost first: `Stockholm/Sales`.
    OuPath { base: String },
    /// A directory attribute's value (lowercased name).
    Attribute(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubUnitRule {
    pub from: SubUnitSource,
    pub to: AttrPath,
}

/// Which directory groups are mirrored as portal groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortalGroupRule {
    pub groups: Vec<GroupRef>,
    /// Groups the source marked as matching the configured `portal_groups.filter`.
    pub by_filter: bool,
    /// Count members of nested groups too (default).
    pub flatten: bool,
}

/// The access rules of the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// First match wins; `None` when roles are not managed.
    pub roles: Option<(Vec<RoleRule>, String)>,
    pub services: Vec<ServiceRule>,
    pub sub_unit: Option<SubUnitRule>,
    pub portal_groups: Option<PortalGroupRule>,
    /// Roles of which the portal must keep at least one active, managed holder.
    pub keep_one_of: Vec<String>,
}

impl AccessRules {
    pub fn needs_groups(&self) -> bool {
        self.roles.as_ref().is_some_and(|(r, _)| !r.is_empty())
            || !self.services.is_empty()
            || self.portal_groups.is_some()
    }
}

/// The role path: a one-element list, marked primary. One shared path for every caller.
pub fn role_path() -> AttrPath {
    static ROLE: OnceLock<AttrPath> = OnceLock::new();
    ROLE.get_or_init(|| {
        AttrPath::from(PathParts {
            schema: None,
            attr: "roles".into(),
            filter: None,
            sub: Some("value".into()),
        })
    })
    .clone()
}

/// One service's path: `entitlements[value eq "fax"].value`, present when granted.
pub fn service_path(service: &str) -> AttrPath {
    AttrPath::from(PathParts {
        schema: None,
        attr: "entitlements".into(),
        filter: Some(("value".into(), service.to_string())),
        sub: Some("value".into()),
    })
}

/// The group graph, with transitive membership. DNs are compared by their RFC 4514 key
/// ([`dn::key`]), never as strings: `ou=R&D\, Lab` and `ou=R&D\2C Lab` are one OU.
///
/// Every DN key some group lists as a member is held once ([`Members`]); a group's members
/// are indices into it. A large directory lists a person in several groups, and its groups
/// hold most of its member values, so they are not kept as a string each (a plain DN not
/// even once: it is borrowed from the group that lists it).
pub struct Membership<'a> {
    groups: &'a [DirectoryGroup],
    /// Each group's DN key, by index in `groups`.
    keys: Vec<String>,
    /// DN key → index in `groups`.
    by_dn: HashMap<String, usize>,
    /// The member DN keys, each once, with the groups that list each directly.
    listed: Members<'a>,
    /// Each group's direct members (indices into `listed`).
    members: Vec<Vec<u32>>,
    /// Lowercased name (`cn`) → groups (indices, in directory order) of that name.
    by_name: HashMap<String, Vec<usize>>,
}

/// The distinct member DN keys of the groups, each with an index (its place in `keys`),
/// found by key through a table of indices, and the groups (indices) that list it directly.
/// A plain DN ([`dn::is_plain`]) is its own key without ASCII case, so it is kept as the
/// group lists it, borrowed, and every key is hashed and compared without ASCII case
/// ([`Folded`]); the others are keyed ([`dn::key`]) and owned.
struct Members<'a> {
    keys: Vec<Cow<'a, str>>,
    /// The groups that list member `i` directly are `parents[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
    parents: Vec<u32>,
    /// The group each member key is, if it is one of the groups read.
    group: Vec<Option<u32>>,
    table: HashTable<u32>,
    hasher: RandomState,
}

impl<'a> Members<'a> {
    fn new() -> Members<'a> {
        Members {
            keys: Vec::new(),
            starts: Vec::new(),
            parents: Vec::new(),
            group: Vec::new(),
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    fn find(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(Folded(key));
        self.table
            .find(hash, |&i| self.keys[i as usize].eq_ignore_ascii_case(key))
            .map(|&i| i as usize)
    }

    /// The index of member DN `dn`, added if its key is new.
    fn intern(&mut self, dn: &'a str) -> u32 {
        let key: Cow<'a, str> = match dn::is_plain(dn) {
            true => Cow::Borrowed(dn),
            false => Cow::Owned(dn::key(dn)),
        };
        let hash = self.hasher.hash_one(Folded(&key));
        let keys = &self.keys;
        if let Some(&i) = self
            .table
            .find(hash, |&i| keys[i as usize].eq_ignore_ascii_case(&key))
        {
            return i;
        }
        // Indices are u32: four billion member keys are not a directory's groups.
        let i = self.keys.len() as u32;
        self.keys.push(key);
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(Folded(&keys[j as usize])));
        i
    }

    /// The key of member `i` as [`dn::key`] spells it (lowercased).
    fn key(&self, i: usize) -> Cow<'_, str> {
        crate::plan::folded::lowered(&self.keys[i])
    }

    /// Records which groups list each member directly, from each group's `members`.
    fn link(&mut self, members: &[Vec<u32>]) {
        let n = self.keys.len();
        let mut starts = vec![0u32; n + 1];
        for &m in members.iter().flatten() {
            starts[m as usize + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut next = starts.clone();
        let mut parents = vec![0u32; starts[n] as usize];
        for (g, ms) in members.iter().enumerate() {
            for &m in ms {
                let at = &mut next[m as usize];
                parents[*at as usize] = g as u32;
                *at += 1;
            }
        }
        self.starts = starts;
        self.parents = parents;
        self.group = vec![None; n];
    }

    /// The groups (indices) that list member `i` directly, in directory order.
    fn parents(&self, i: usize) -> &[u32] {
        &self.parents[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

impl<'a> Membership<'a> {
    pub fn new(groups: &'a [DirectoryGroup]) -> Membership<'a> {
        let keys: Vec<String> = groups.iter().map(|g| dn::key(&g.dn)).collect();
        let by_dn: HashMap<String, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let mut listed = Members::new();
        let members: Vec<Vec<u32>> = groups
            .iter()
            .map(|group| group.members.iter().map(|m| listed.intern(m)).collect())
            .collect();
        listed.link(&members);
        for i in 0..listed.keys.len() {
            listed.group[i] = by_dn.get(&*listed.key(i)).map(|&g| g as u32);
        }
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            by_name
                .entry(g.name.to_ascii_lowercase())
                .or_default()
                .push(i);
        }
        Membership {
            groups,
            keys,
            by_dn,
            listed,
            members,
            by_name,
        }
    }

    /// The DN key of a group read from the directory.
    pub fn key_of(&self, group: &DirectoryGroup) -> String {
        self.index_of(group)
            .map_or_else(|| dn::key(&group.dn), |i| self.keys[i].clone())
    }

    /// The index of `group` when it is an element of `groups` (found by its address, in
    /// constant time), else `None`.
    fn index_of(&self, group: &DirectoryGroup) -> Option<usize> {
        let size = std::mem::size_of::<DirectoryGroup>().max(1);
        let start = self.groups.as_ptr() as usize;
        let at = (group as *const DirectoryGroup as usize).checked_sub(start)?;
        let i = at / size;
        (at.is_multiple_of(size) && i < self.groups.len() && std::ptr::eq(&self.groups[i], group))
            .then_some(i)
    }

    /// Resolves a configured group to its DN. The error says why (unknown, ambiguous).
    pub fn resolve(&self, r: &GroupRef) -> Result<&'a DirectoryGroup, String> {
        if r.is_dn() {
            return self
                .by_dn
                .get(&dn::key(&r.0))
                .map(|&i| &self.groups[i])
                .ok_or_else(|| {
                    format!(
                        "group {} is not among the groups read from the directory",
                        r.0
                    )
                });
        }
        let found: Vec<&DirectoryGroup> = self
            .by_name
            .get(&r.0.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|&i| &self.groups[i])
            .collect();
        match found.as_slice() {
            [g] => Ok(g),
            [] => Err(format!(
                "no directory group named {:?} (check source.groups)",
                r.0
            )),
            many => Err(format!(
                "{} directory groups are named {:?}; name it by DN: {}",
                many.len(),
                r.0,
                many.iter()
                    .map(|g| g.dn.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Every group `dn` belongs to, directly or through nested groups (DN keys).
    /// Cycles are harmless here: each group is visited once.
    pub fn groups_of(&self, dn: &str) -> BTreeSet<String> {
        self.ancestry_keyed(&dn::key(dn))
            .via
            .keys()
            .map(|&i| self.keys[i].clone())
            .collect()
    }

    /// Every group `dn` belongs to, directly or through nested groups, each with the group
    /// through which it was reached: a breadth-first walk up the graph, so the path it
    /// records is a shortest one. Each group is visited once (cycles are harmless).
    pub fn ancestry(&self, dn: &str) -> Ancestry {
        self.ancestry_keyed(&dn::key(dn))
    }

    /// [`Self::ancestry`] of the entry whose DN key ([`dn::key`]) is `key`.
    pub fn ancestry_keyed(&self, key: &str) -> Ancestry {
        let mut via: HashMap<usize, Option<usize>> = HashMap::new();
        let mut todo: VecDeque<usize> = VecDeque::new();
        let parents_of = |key: &str| {
            self.listed
                .find(key)
                .map_or(&[][..], |i| self.listed.parents(i))
        };
        for i in parents_of(key).iter().map(|&i| i as usize) {
            if let std::collections::hash_map::Entry::Vacant(e) = via.entry(i) {
                e.insert(None);
                todo.push_back(i);
            }
        }
        while let Some(g) = todo.pop_front() {
            for i in parents_of(&self.keys[g]).iter().map(|&i| i as usize) {
                if let std::collections::hash_map::Entry::Vacant(e) = via.entry(i) {
                    e.insert(Some(g));
                    todo.push_back(i);
                }
            }
        }
        Ancestry { via }
    }

    /// The index of a group read from the directory (by address, else by DN).
    fn position(&self, group: &DirectoryGroup) -> Option<usize> {
        self.index_of(group)
            .or_else(|| self.by_dn.get(&dn::key(&group.dn)).copied())
    }

    /// Whether the user of `ancestry` belongs to `group`, directly or not.
    pub fn contains(&self, ancestry: &Ancestry, group: &DirectoryGroup) -> bool {
        self.position(group)
            .is_some_and(|i| ancestry.via.contains_key(&i))
    }

    /// How the user of `ancestry` is in `group`: the groups from the one that lists the
    /// user up to `group`, by name (`IT-Leads → Portal-Admins`); `None` when not a member.
    pub fn path(&self, ancestry: &Ancestry, group: &DirectoryGroup) -> Option<String> {
        let mut at = self.position(group)?;
        let mut chain = vec![self.groups[at].name.as_str()];
        // Each step goes one level down; a chain never repeats a group.
        while let Some(&Some(below)) = ancestry.via.get(&at) {
            if chain.len() > self.groups.len() {
                break;
            }
            chain.push(self.groups[below].name.as_str());
            at = below;
        }
        ancestry.via.contains_key(&at).then(|| {
            chain.reverse();
            chain.join(" → ")
        })
    }

    /// The member DN keys of a group: direct, or through nested groups too. Nested group
    /// entries themselves are not members.
    pub fn members_of(&self, group: &DirectoryGroup, flatten: bool) -> BTreeSet<String> {
        self.members_via(group, flatten).into_keys().collect()
    }

    /// [`Self::members_of`], each member with the groups through which it belongs, from
    /// the one that lists it up to `group` (`IT-Leads → Sales`; just `Sales` when direct).
    /// Breadth first, so the path is a shortest one; each group is visited once.
    pub fn members_via(&self, group: &DirectoryGroup, flatten: bool) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(start) = self.position(group) else {
            return group
                .members
                .iter()
                .map(|m| (dn::key(m), group.name.clone()))
                .collect();
        };
        // Group → the group one level up through which the walk reached it.
        let mut above: HashMap<usize, Option<usize>> = HashMap::from([(start, None)]);
        let mut todo = VecDeque::from([start]);
        let path = |mut at: usize, above: &HashMap<usize, Option<usize>>| {
            let mut chain = vec![self.groups[at].name.as_str()];
            while let Some(&Some(up)) = above.get(&at) {
                if chain.len() > self.groups.len() {
                    break;
                }
                chain.push(self.groups[up].name.as_str());
                at = up;
            }
            chain.join(" → ")
        };
        while let Some(g) = todo.pop_front() {
            let here = path(g, &above);
            for &m in &self.members[g] {
                match self.listed.group[m as usize].map(|i| i as usize) {
                    Some(i) => {
                        if flatten && !above.contains_key(&i) {
                            above.insert(i, Some(g));
                            todo.push_back(i);
                        }
                    }
                    None => {
                        let key = self.listed.key(m as usize);
                        if !out.contains_key(&*key) {
                            out.insert(key.into_owned(), here.clone());
                        }
                    }
                }
            }
        }
        out
    }

    /// Cycles in the group graph, each as the names along it (`A ⊃ B ⊃ A`).
    pub fn cycles(&self) -> Vec<String> {
        // Depth-first search over group → nested group edges, colouring nodes.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let mut mark = vec![Mark::New; self.groups.len()];
        let mut found = BTreeSet::new();
        for start in 0..self.groups.len() {
            if mark[start] != Mark::New {
                continue;
            }
            // Iterative DFS: (node, next child index), with the current path.
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            mark[start] = Mark::Open;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let children: Vec<usize> = self.members[node]
                    .iter()
                    .filter_map(|&m| self.listed.group[m as usize].map(|g| g as usize))
                    .collect();
                if *next < children.len() {
                    let child = children[*next];
                    *next += 1;
                    match mark[child] {
                        Mark::New => {
                            mark[child] = Mark::Open;
                            stack.push((child, 0));
                        }
                        Mark::Open => {
                            let from = stack.iter().position(|&(n, _)| n == child).unwrap_or(0);
                            let mut names: Vec<&str> = stack[from..]
                                .iter()
                                .map(|&(n, _)| self.groups[n].name.as_str())
                                .collect();
                            names.push(self.groups[child].name.as_str());
                            found.insert(names.join(" ⊃ "));
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
        found.into_iter().collect()
    }
}

/// The groups one entry belongs to (indices into the groups), each with the group one level
/// down through which it was reached (`None`: the entry is a direct member).
#[derive(Clone, Debug, Default)]
pub struct Ancestry {
    via: HashMap<usize, Option<usize>>,
}

/// The access-derived attributes of one user, with a note on where each came from: the
/// path of groups that gives a role or service (`via group IT-Leads → Portal-Admins`).
pub fn derive(
    rules: &AccessRules,
    membership: &Membership<'_>,
    resolved: &Resolved<'_>,
    user: &DirectoryUser,
) -> (Attributes, BTreeMap<AttrPath, String>) {
    let mut why = BTreeMap::new();
    let attrs = derive_keyed(
        rules,
        membership,
        resolved,
        user,
        &dn::key(&user.dn),
        Some(&mut why),
    );
    (attrs, why)
}

/// [`derive`] for a user whose DN is keyed ([`dn::key`]) already; the notes on where
/// each value came from only when `why` asks for them.
pub fn derive_keyed(
    rules: &AccessRules,
    membership: &Membership<'_>,
    resolved: &Resolved<'_>,
    user: &DirectoryUser,
    key: &str,
    mut why: Option<&mut BTreeMap<AttrPath, String>>,
) -> Attributes {
    let mut attrs = Attributes::new();
    let needs_groups = rules.roles.is_some() || !rules.services.is_empty();
    let ancestry = if needs_groups {
        membership.ancestry_keyed(key)
    } else {
        Ancestry::default()
    };
    let member = |g: &DirectoryGroup| membership.contains(&ancestry, g);
    if let Some((role_rules, default)) = &rules.roles {
        let hit = role_rules
            .iter()
            .zip(&resolved.roles)
            .find(|(_, g)| g.is_some_and(member));
        let role = match hit {
            Some((r, Some(_))) => r.role.clone(),
            _ => default.clone(),
        };
        attrs.insert(role_path(), Value::Many(vec![role].into()));
        if let Some(why) = why.as_deref_mut() {
            let note = match hit {
                Some((_, Some(g))) => via(membership, &ancestry, g),
                _ => "default role: no role group applies".to_string(),
            };
            why.insert(role_path(), note);
        }
    }
    for ((rule, group), path) in rules
        .services
        .iter()
        .zip(&resolved.services)
        .zip(&resolved.service_paths)
    {
        let Some(g) = group else {
            continue;
        };
        let granted = member(g);
        if granted {
            attrs.insert(path.clone(), Value::One(rule.service.clone()));
        }
        if let Some(why) = why.as_deref_mut() {
            let note = match granted {
                true => format!("granted {}", via(membership, &ancestry, g)),
                false => format!("not a member of {}", g.name),
            };
            why.insert(path.clone(), note);
        }
    }
    if let Some(su) = &rules.sub_unit {
        let value = match &su.from {
            SubUnitSource::OuPath { .. } => resolved.ou_path(&user.dn),
            SubUnitSource::Attribute(a) => user
                .attrs
                .get(a)
                .and_then(|v| v.first())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
        };
        if let Some(v) = value {
            attrs.insert(su.to.clone(), Value::One(v));
        }
    }
    attrs
}

/// `via group IT-Leads → Portal-Admins`: the groups from the user's own up to `group`.
fn via(membership: &Membership<'_>, ancestry: &Ancestry, group: &DirectoryGroup) -> String {
    format!(
        "via group {}",
        membership
            .path(ancestry, group)
            .unwrap_or_else(|| group.name.clone())
    )
}

/// The configured groups resolved against what the directory returned; `None` where a
/// group could not be resolved (reported once in the plan's notes).
pub struct Resolved<'a> {
    pub roles: Vec<Option<&'a DirectoryGroup>>,
    pub services: Vec<Option<&'a DirectoryGroup>>,
    /// Each service's path ([`service_path`]), made once.
    pub service_paths: Vec<AttrPath>,
    /// The base of an OU-path sub-unit, parsed once (`None` if it does not parse).
    pub sub_unit_base: Option<Dn>,
    pub problems: Vec<String>,
    /// The OU path below a plain parent DN ([`dn::is_plain`]), as written: the users of
    /// one OU share it. Behind a lock: the plan maps users on several threads.
    ou_paths: Mutex<HashMap<String, Option<String>>>,
}

impl Resolved<'_> {
    /// [`ou_path`] of `entry` under the sub-unit's base: the path of its parent, worked
    /// out once per parent.
    fn ou_path(&self, entry: &str) -> Option<String> {
        let base = self.sub_unit_base.as_ref()?;
        let parent = match entry.split_once(',') {
            Some((_, parent)) if dn::is_plain(entry) => parent,
            _ => return ou_path_of(&Dn::parse(entry).ok()?, base),
        };
        let known = |paths: &HashMap<String, Option<String>>| paths.get(parent).cloned();
        if let Some(hit) = self.ou_paths.lock().map_or(None, |p| known(&p)) {
            return hit;
        }
        // The entry's own RDN is not part of its OU path: its parent's RDNs below the
        // base are.
        let path = Dn::parse(parent).ok().and_then(|p| {
            let ous: Vec<&str> = p
                .below(base)?
                .iter()
                .rev()
                .filter_map(|rdn| rdn.value_of("ou"))
                .collect();
            (!ous.is_empty()).then(|| ous.join("/"))
        });
        if let Ok(mut paths) = self.ou_paths.lock() {
            paths.insert(parent.to_string(), path.clone());
        }
        path
    }
}

pub fn resolve<'a>(rules: &AccessRules, membership: &Membership<'a>) -> Resolved<'a> {
    let mut problems = Vec::new();
    let mut one = |r: &GroupRef, what: &str| match membership.resolve(r) {
        Ok(g) => Some(g),
        Err(e) => {
            problems.push(format!("{what}: {e}"));
            None
        }
    };
    let roles = rules
        .roles
        .as_ref()
        .map(|(rs, _)| {
            rs.iter()
                .map(|r| one(&r.group, &format!("role rule {}", r.role)))
                .collect()
        })
        .unwrap_or_default();
    let services = rules
        .services
        .iter()
        .map(|s| one(&s.group, &format!("service rule {}", s.service)))
        .collect();
    Resolved {
        roles,
        services,
        service_paths: rules
            .services
            .iter()
            .map(|s| service_path(&s.service))
            .collect(),
        sub_unit_base: match &rules.sub_unit {
            Some(SubUnitRule {
                from: SubUnitSource::OuPath { base },
                ..
            }) => Dn::parse(base).ok(),
            _ => None,
        },
        problems,
        ou_paths: Mutex::default(),
    }
}

/// `ou=Sales,ou=Stockholm,ou=people,dc=example,dc=com` under `ou=people,dc=example,dc=com`
/// → `Stockholm/Sales`. Only the OU components between the entry and the base count, and
/// they are shown unescaped (`ou=R&D\2C Lab` is `R&D, Lab`). `None` when either is not a
/// DN or the entry is not below the base.
pub fn ou_path(entry: &str, base: &str) -> Option<String> {
    ou_path_of(&Dn::parse(entry).ok()?, &Dn::parse(base).ok()?)
}

/// [`ou_path`] of parsed DNs.
fn ou_path_of(entry: &Dn, base: &Dn) -> Option<String> {
    let own = entry.below(base)?;
    let ous: Vec<&str> = own
        .iter()
        .skip(1)
        .rev()
        .filter_map(|rdn| rdn.value_of("ou"))
        .collect();
    (!ous.is_empty()).then(|| ous.join("/"))
}

#[cfg(test)]
mod tests;
