//! `dirsync explain USER`: why a user has each role, service, group and field value, and
//! what the next cycle will do. Read-only: it takes no lock and writes nothing.
//!
//! What the next cycle will do comes from the real cycle, run as a dry run
//! ([`cycle::Request::Plan`]): the same reads, planner and guards as `dirsync plan`, so
//! the answer is what a cycle would do now. The facts around it (the directory entry, the
//! group paths, the portal user, the last-synced values) come from a full read of both
//! sides made at the same time; [`explain_user`] puts them together, without I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;

use serde::Serialize;

use crate::access::{self, Membership};
use crate::apply::blocking;
use crate::config::Config;
use crate::cycle::{self, CycleError};
use crate::dn;
use crate::mapping::{self, AttrPath, Owner, Value};
use crate::plan::{self, Action, Baseline, Change};
use crate::portal::{PortalClient, PortalError, PortalUser, UserFields};
use crate::report::Report;
use crate::source::{DirectoryGroup, DirectoryUser, LdapSource, Snapshot, SourceError, Timestamp};
use crate::state::{State, StateError};

/// Why there is no explanation.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The dry-run cycle failed (a side unreachable, an incomplete read).
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error("directory: {0}")]
    Source(#[from] SourceError),
    #[error("portal: {0}")]
    Portal(#[from] PortalError),
    #[error("{0}")]
    State(#[from] StateError),
    /// No directory entry in scope and no portal user matches.
    #[error(
        "no user {0} in the directory's scope or in the portal (give a login, a DN or an anchor)"
    )]
    NotFound(String),
    /// Several match; the admin must be more precise.
    #[error("{query} matches {} users: {}; give the DN or the anchor", .matches.len(), .matches.join(", "))]
    Ambiguous { query: String, matches: Vec<String> },
}

/// Everything `explain` says about one user.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// What the admin asked for.
    pub query: String,
    /// The directory entry; `None` when the user is not (or no longer) in scope.
    pub directory: Option<Entry>,
    /// Every group the user is in, with the path through nesting.
    pub groups: Vec<GroupPath>,
    /// The role rules in order, the one that decided, or the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleDecision>,
    pub services: Vec<RuleMatch>,
    /// The directory groups mirrored as portal groups that the user is a member of, or
    /// could be (`matched`).
    pub portal_groups: Vec<RuleMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_unit: Option<SubUnit>,
    /// The portal user, when there is one.
    pub portal: Option<PortalSide>,
    /// How the directory entry and the portal user are linked.
    pub link: String,
    /// Each mapped field: owner, the three values, and what the next cycle does.
    pub fields: Vec<Field>,
    /// What the next cycle does for this user.
    pub next: Next,
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub dn: String,
    pub anchor: String,
    /// Whether the directory lets the user log in, and if not, why.
    pub status: String,
    /// The attributes the mapping reads, as the directory holds them.
    pub attributes: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupPath {
    pub name: String,
    pub dn: String,
    /// The groups from the one the user is a direct member of to this one; one element
    /// for a direct membership.
    pub path: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleMatch {
    /// The group as the config names it.
    pub group: String,
    /// What it grants: a role, a service, a portal group.
    pub grants: String,
    pub matched: bool,
    /// The path through nesting, when matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    /// Why the rule cannot apply (the group is unknown or ambiguous).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoleDecision {
    pub role: String,
    /// The first matching rule (by index into `rules`); `None`: the default role.
    pub decided_by: Option<usize>,
    pub rules: Vec<RuleMatch>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SubUnit {
    pub from: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortalSide {
    pub id: String,
    pub user_name: String,
    pub active: bool,
    pub external_id: Option<String>,
}

/// The last-synced value of a field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "known", content = "value")]
pub enum LastSynced {
    /// Never synced (a new user, or a field mapped since).
    Never,
    /// Synced, as this value (`None`: as absent).
    Value(Option<Value>),
}

#[derive(Clone, Debug, Serialize)]
pub struct Field {
    pub attribute: AttrPath,
    pub owner: Owner,
    /// Where the directory value comes from: an attribute, or a rule.
    pub source: String,
    pub last_synced: LastSynced,
    pub directory: Option<Value>,
    pub portal: Option<Value>,
    /// What the next cycle does to it, and why.
    pub next: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Next {
    /// The action planned for the user; `None`: nothing.
    pub action: Option<Action>,
    pub summary: String,
    /// Portal group memberships the next cycle adds or removes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Why the user is not synced, if the planner skipped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Guards that hold back changes this cycle (they may include this user's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
}

/// What `explain` reads besides the dry run.
pub struct Facts {
    pub snapshot: Snapshot,
    pub portal: Vec<PortalUser>,
    /// Lowercased anchor → last-synced values.
    pub baselines: HashMap<String, Baseline>,
    /// Lowercased anchor → linked portal id.
    pub links: HashMap<String, String>,
}

/// Reads both sides and runs the dry-run cycle, at the same time; explains `query`.
pub async fn explain(config: &Config, query: &str) -> Result<Explanation, ExplainError> {
    let (options, context) = (cycle::Options::default(), cycle::Context::default());
    let dry_run = cycle::run(
        config,
        cycle::Request::Plan { save: None },
        &options,
        &context,
    );
    let (report, facts) = tokio::join!(dry_run, read(config));
    explain_user(config, &facts?, &report?, query)
}

async fn read(config: &Config) -> Result<Facts, ExplainError> {
    let attributes = cycle::source_attributes(config);
    let directory = async {
        let mut source = LdapSource::connect(&config.source, &attributes).await?;
        let read = source.read().await;
        source.close().await;
        let mut snapshot = read?;
        snapshot.add_primary_group_members();
        Ok::<_, SourceError>(snapshot)
    };
    // Every rule's portal value is shown, the portal-owned ones too.
    let fields = UserFields::new(
        plan::effective_rules(&config.mapping, &config.access)
            .into_iter()
            .map(|r| r.to),
    );
    let portal = async {
        let mut portal = PortalClient::new(&config.portal)?.reading(fields);
        portal.discover().await?;
        portal.list_users().await
    };
    let (snapshot, portal) = tokio::join!(directory, portal);
    let (baselines, links) = match blocking(|| State::open_read_only(&config.state_path))? {
        Some(s) => blocking(|| s.managed_users())?,
        None => (HashMap::new(), HashMap::new()),
    };
    Ok(Facts {
        snapshot: snapshot?,
        portal: portal?,
        baselines,
        links,
    })
}

/// Explains one user from what was read and what the dry run planned. Pure.
pub fn explain_user(
    config: &Config,
    facts: &Facts,
    report: &Report,
    query: &str,
) -> Result<Explanation, ExplainError> {
    let rules = plan::effective_rules(&config.mapping, &config.access);
    let q = query.trim();
    let qkey = q.contains('=').then(|| dn::key(q));
    let login = |u: &DirectoryUser| -> Option<String> {
        mapping::map_entry(&config.mapping, &u.attrs)
            .into_iter()
            .find(|(p, _)| p.is_user_name())
            .and_then(|(_, v)| match v {
                Value::One(s) => Some(s),
                Value::Many(_) => None,
            })
    };
    let found: Vec<&DirectoryUser> = facts
        .snapshot
        .users
        .iter()
        .filter(|u| match &qkey {
            Some(k) => dn::key(&u.dn) == *k,
            None => {
                u.anchor.eq_ignore_ascii_case(q)
                    || login(u).is_some_and(|l| l.eq_ignore_ascii_case(q))
            }
        })
        .collect();
    let user = match found.as_slice() {
        [] => None,
        [u] => Some(*u),
        many => {
            return Err(ExplainError::Ambiguous {
                query: q.to_string(),
                matches: many.iter().map(|u| u.dn.clone()).collect(),
            })
        }
    };
    let anchor = user.map(|u| u.anchor.to_ascii_lowercase());
    let user_name = user.and_then(login);

    // The portal user: by externalId, else by login (or primary email), as the planner.
    let by_anchor = |a: &str| {
        facts.portal.iter().find(|p| {
            p.external_id
                .as_ref()
                .is_some_and(|x| x.eq_ignore_ascii_case(a))
        })
    };
    let by_login = |l: &str| {
        facts
            .portal
            .iter()
            .find(|p| p.user_name.eq_ignore_ascii_case(l))
    };
    let portal = match (&anchor, &user_name) {
        (Some(a), l) => by_anchor(a).or_else(|| l.as_deref().and_then(by_login)),
        (None, _) => by_anchor(q).or_else(|| by_login(q)),
    };
    if user.is_none() && portal.is_none() {
        return Err(ExplainError::NotFound(q.to_string()));
    }
    let anchor = anchor.or_else(|| {
        portal
            .and_then(|p| p.external_id.as_ref())
            .map(|x| x.to_ascii_lowercase())
    });
    let base = anchor.as_ref().and_then(|a| facts.baselines.get(a));
    let login_now = user_name
        .clone()
        .or_else(|| portal.map(|p| p.user_name.clone()))
        .unwrap_or_else(|| q.to_string());

    // This user's part of the dry run.
    let is_this = |a: &str, name: &str| {
        anchor.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(a))
            || name.eq_ignore_ascii_case(&login_now)
    };
    let change: Option<&Change> = report
        .changes
        .iter()
        .map(|c| &c.change)
        .find(|c| is_this(&c.anchor, &c.user_name));

    let membership = Membership::new(&facts.snapshot.groups);
    let resolved = access::resolve(&config.access, &membership);
    let paths = user
        .map(|u| group_paths(&facts.snapshot.groups, &u.dn))
        .unwrap_or_default();
    let via = |g: &DirectoryGroup| -> Option<Vec<String>> {
        let key = membership.key_of(g);
        paths.get(&key).map(|p| {
            p.iter()
                .map(|&i| facts.snapshot.groups[i].name.clone())
                .collect()
        })
    };
    let rule_match =
        |group: &access::GroupRef, grants: String, resolved: Option<&DirectoryGroup>| {
            let hit = resolved.and_then(&via);
            RuleMatch {
                group: group.0.clone(),
                grants,
                matched: hit.is_some(),
                via: hit.unwrap_or_default(),
                problem: match resolved {
                    Some(_) => None,
                    None => membership.resolve(group).err(),
                },
            }
        };

    let role = config.access.roles.as_ref().map(|(role_rules, default)| {
        let rules: Vec<RuleMatch> = role_rules
            .iter()
            .zip(&resolved.roles)
            .map(|(r, g)| rule_match(&r.group, format!("role {}", r.role), *g))
            .collect();
        let decided_by = rules.iter().position(|r| r.matched);
        RoleDecision {
            role: decided_by.map_or_else(|| default.clone(), |i| role_rules[i].role.clone()),
            decided_by,
            rules,
        }
    });
    let services = config
        .access
        .services
        .iter()
        .zip(&resolved.services)
        .map(|(r, g)| rule_match(&r.group, format!("service {}", r.service), *g))
        .collect();
    let portal_groups = match &config.access.portal_groups {
        None => Vec::new(),
        Some(rule) => facts
            .snapshot
            .groups
            .iter()
            .filter(|g| {
                (rule.by_filter && g.selected)
                    || rule
                        .groups
                        .iter()
                        .any(|r| membership.resolve(r).is_ok_and(|x| std::ptr::eq(x, *g)))
            })
            .map(|g| {
                let member = user.is_some_and(|u| {
                    membership
                        .members_of(g, rule.flatten)
                        .contains(&dn::key(&u.dn))
                });
                RuleMatch {
                    group: g.name.clone(),
                    grants: format!("portal group {}", g.name),
                    matched: member,
                    via: if member {
                        via(g).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    problem: None,
                }
            })
            .collect(),
    };
    let sub_unit = config.access.sub_unit.as_ref().map(|su| SubUnit {
        from: match &su.from {
            access::SubUnitSource::OuPath { base } => format!("the OU path below {base}"),
            access::SubUnitSource::Attribute(a) => format!("the attribute {a}"),
        },
        value: user.and_then(|u| match &su.from {
            access::SubUnitSource::OuPath { base } => access::ou_path(&u.dn, base),
            access::SubUnitSource::Attribute(a) => {
                u.attrs.get(a).and_then(|v| v.first()).map(str::to_string)
            }
        }),
    });

    // The directory's values: mapped, then derived from groups and the tree.
    let (desired, derived_why) = match user {
        Some(u) => {
            let mut attrs = mapping::map_entry(&config.mapping, &u.attrs);
            let (derived, why) = access::derive(&config.access, &membership, &resolved, u);
            attrs.extend(derived);
            (attrs, why)
        }
        None => Default::default(),
    };
    let conflicts: Vec<&plan::Conflict> = report
        .conflicts
        .iter()
        .filter(|c| is_this(&c.anchor, &c.user_name))
        .collect();
    let needs_admin: Vec<&plan::NeedsAdmin> = report
        .needs_admin
        .iter()
        .filter(|n| is_this(&n.anchor, &n.user_name))
        .collect();
    let fields = rules
        .iter()
        .map(|rule| {
            let path = &rule.to;
            let dir = desired.get(path).cloned();
            let por = portal.and_then(|p| p.get(path));
            let last = match base.and_then(|b| b.get(path)) {
                Some(v) => LastSynced::Value(v),
                None => LastSynced::Never,
            };
            let source = if rule.from.is_empty() {
                match derived_why.get(path) {
                    Some(why) => format!("from the access rules: {why}"),
                    None => "from the access rules".into(),
                }
            } else {
                format!("from directory attribute {}", rule.from)
            };
            let next = field_next(FieldFacts {
                path,
                owner: rule.owner,
                directory: dir.as_ref(),
                portal: por.as_ref(),
                last: &last,
                change,
                has_portal_user: portal.is_some(),
                conflict: conflicts.iter().any(|c| &c.path == path),
                needs_admin: needs_admin
                    .iter()
                    .find(|n| &n.path == path)
                    .map(|n| n.reason.as_str()),
            });
            Field {
                attribute: path.clone(),
                owner: rule.owner,
                source,
                last_synced: last,
                directory: dir,
                portal: por,
                next,
            }
        })
        .collect();

    let entry = user.map(|u| {
        // The attributes the mapping reads, spelt as the config spells them.
        let mut attributes = BTreeMap::new();
        for a in cycle::source_attributes(config) {
            let key = a.to_ascii_lowercase();
            if attributes
                .keys()
                .any(|k: &String| k.eq_ignore_ascii_case(&a))
            {
                continue;
            }
            if let Some(v) = u.attrs.get(&key) {
                attributes.insert(a, v.to_vec());
            }
        }
        Entry {
            dn: u.dn.clone(),
            anchor: u.anchor.clone(),
            status: match u.closure(Timestamp::now()) {
                None => "may log in".into(),
                Some(c) => format!("may not log in: {c}"),
            },
            attributes,
        }
    });
    let link = link_text(
        user.is_some(),
        portal,
        anchor.as_deref(),
        &facts.links,
        change,
    );
    let groups_next: Vec<String> = report
        .group_changes
        .iter()
        .flat_map(|g| {
            let name = &g.change.name;
            let add = g
                .change
                .add
                .iter()
                .filter(|m| m.user_name.eq_ignore_ascii_case(&login_now))
                .map(move |_| format!("added to portal group {name}"));
            let remove = g
                .change
                .remove
                .iter()
                .filter(|m| m.user_name.eq_ignore_ascii_case(&login_now))
                .map(move |_| format!("removed from portal group {name}"));
            add.chain(remove)
        })
        .collect();
    let skipped = user.and_then(|u| {
        report
            .skipped
            .iter()
            .find(|s| dn::key(&s.dn) == dn::key(&u.dn))
            .map(|s| s.problem.clone())
    });
    let summary = match change {
        Some(c) => {
            let mut s = c.action.label().to_string();
            if let Some(r) = &c.reason {
                s.push_str(": ");
                s.push_str(r);
            }
            s
        }
        None if skipped.is_some() => "nothing: the user is skipped (see below)".into(),
        None if user.is_none() && portal.is_some_and(|p| !p.active) => {
            "nothing: the portal user is closed and the directory has no such user in scope".into()
        }
        None => "nothing for this user".into(),
    };
    let mut groups: Vec<GroupPath> = paths
        .values()
        .map(|p| {
            let last = p.last().copied().unwrap_or_default();
            GroupPath {
                name: facts.snapshot.groups[last].name.clone(),
                dn: facts.snapshot.groups[last].dn.clone(),
                path: p
                    .iter()
                    .map(|&i| facts.snapshot.groups[i].name.clone())
                    .collect(),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        (a.path.len(), a.name.to_lowercase()).cmp(&(b.path.len(), b.name.to_lowercase()))
    });
    Ok(Explanation {
        query: q.to_string(),
        directory: entry,
        groups,
        role,
        services,
        portal_groups,
        sub_unit,
        portal: portal.map(|p| PortalSide {
            id: p.id.clone(),
            user_name: p.user_name.clone(),
            active: p.active,
            external_id: p.external_id.clone(),
        }),
        link,
        fields,
        next: Next {
            action: change.map(|c| c.action),
            summary,
            groups: groups_next,
            skipped,
            held: report.held.iter().map(|h| h.message.clone()).collect(),
        },
    })
}

/// The groups `dn` is in, each with its shortest path through nesting: group DN key →
/// indices into `groups`, from the user's direct group to that group.
pub fn group_paths(groups: &[DirectoryGroup], dn: &str) -> BTreeMap<String, Vec<usize>> {
    let keys: Vec<String> = groups.iter().map(|g| dn::key(&g.dn)).collect();
    let mut parents: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        for m in &g.members {
            parents.entry(dn::key(m)).or_default().push(i);
        }
    }
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut todo: VecDeque<(String, Vec<usize>)> = VecDeque::from([(dn::key(dn), Vec::new())]);
    while let Some((key, path)) = todo.pop_front() {
        for &i in parents.get(&key).map(Vec::as_slice).unwrap_or_default() {
            if out.contains_key(&keys[i]) {
                continue;
            }
            let mut p = path.clone();
            p.push(i);
            out.insert(keys[i].clone(), p.clone());
            todo.push_back((keys[i].clone(), p));
        }
    }
    out
}

/// What the planner had for one field.
struct FieldFacts<'a> {
    path: &'a AttrPath,
    owner: Owner,
    directory: Option<&'a Value>,
    portal: Option<&'a Value>,
    last: &'a LastSynced,
    change: Option<&'a Change>,
    has_portal_user: bool,
    conflict: bool,
    needs_admin: Option<&'a str>,
}

/// What the next cycle does to one field, and why, in words.
fn field_next(f: FieldFacts<'_>) -> String {
    let show = |v: Option<&Value>| v.map_or_else(|| "(none)".to_string(), Value::to_string);
    if let Some(c) = f.change {
        if c.action == Action::Create {
            return match f.directory {
                Some(v) => format!("written as {} when the user is created", v),
                None => "not set: the directory has no value".into(),
            };
        }
        if let Some(fc) = c.fields.iter().find(|fc| &fc.path == f.path) {
            let why = fc.why.map(|w| w.label()).unwrap_or("the directory's value");
            let detail = fc
                .detail
                .as_ref()
                .map(|d| format!(", {d}"))
                .unwrap_or_default();
            return format!("set to {} ({why}{detail})", show(fc.new.as_ref()));
        }
    }
    if f.conflict {
        return "keeps the portal value: the directory and the portal both changed it since the \
                last sync (merge conflict; reported until one side gives way)"
            .into();
    }
    if let Some(reason) = f.needs_admin {
        return format!("not changed, needs an administrator: {reason}");
    }
    if !f.has_portal_user {
        return "nothing: no portal user".into();
    }
    if f.owner == Owner::Portal {
        return "never touched: owned by the portal (user-editable), written only when the user \
                is created"
            .into();
    }
    if plan::user::same(f.path, f.directory, f.portal) {
        return "nothing: the portal has the directory's value".into();
    }
    if let (Owner::Merge, LastSynced::Value(last)) = (f.owner, f.last) {
        let dir_moved = !plan::user::same(f.path, f.directory, last.as_ref());
        if !dir_moved {
            return "nothing: changed in the portal only; merge keeps the user's value".into();
        }
    }
    "nothing this cycle, although the values differ (see the held-back changes and the plan)".into()
}

fn link_text(
    in_directory: bool,
    portal: Option<&PortalUser>,
    anchor: Option<&str>,
    links: &HashMap<String, String>,
    change: Option<&Change>,
) -> String {
    let managed = anchor.and_then(|a| links.get(&a.to_ascii_lowercase()));
    match (portal, change.map(|c| c.action)) {
        (None, Some(Action::Create)) => "no portal user yet: the next cycle creates one".into(),
        (None, _) if in_directory => "no portal user".into(),
        (None, _) => "none".into(),
        (Some(p), Some(Action::Adopt)) => format!(
            "portal user {} (externalId {}) is adopted by the next cycle: {}",
            p.user_name,
            p.external_id.as_deref().unwrap_or("not set"),
            change.and_then(|c| c.reason.as_deref()).unwrap_or("matched by login")
        ),
        (Some(p), _) => match (&p.external_id, managed) {
            (Some(x), Some(id)) if *id == p.id => format!(
                "linked: externalId {x} is the directory anchor, and the state links it to portal id {id} (managed by dirsync)"
            ),
            (Some(x), Some(id)) => format!(
                "externalId {x} is the directory anchor, but the state links it to portal id {id}, not {}",
                p.id
            ),
            (Some(x), None) if anchor.is_some_and(|a| a.eq_ignore_ascii_case(x)) => format!(
                "externalId {x} is the directory anchor, but the state does not know it (not yet recorded, or the state was lost)"
            ),
            (Some(x), None) => format!(
                "externalId {x} is not this user's anchor: a portal user dirsync does not manage, left alone"
            ),
            (None, _) => "the portal user has no externalId: made by hand, not managed by dirsync".into(),
        },
    }
}

/// The explanation as text for people.
pub fn render_text(e: &Explanation) -> String {
    let mut o = String::new();
    let show = |v: &Option<Value>| {
        v.as_ref()
            .map_or_else(|| "(none)".to_string(), Value::to_string)
    };
    let _ = writeln!(o, "dirsync explain {}", e.query);
    match &e.directory {
        Some(d) => {
            let _ = writeln!(o, "\ndirectory entry {}", d.dn);
            let _ = writeln!(o, "  anchor {}; {}", d.anchor, d.status);
            for (a, v) in &d.attributes {
                let _ = writeln!(o, "  {a}: {}", v.join(", "));
            }
        }
        None => {
            let _ = writeln!(o, "\ndirectory entry: none in scope");
        }
    }
    let _ = writeln!(o, "\ngroups");
    if e.groups.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for g in &e.groups {
        if g.path.len() == 1 {
            let _ = writeln!(o, "  {} (direct member) {}", g.name, g.dn);
        } else {
            let _ = writeln!(o, "  {} via {} {}", g.name, g.path.join(" ⊂ "), g.dn);
        }
    }
    let rule_line = |o: &mut String, n: Option<usize>, r: &RuleMatch| {
        let num = n.map(|i| format!("rule {}: ", i + 1)).unwrap_or_default();
        let state = match (&r.problem, r.matched) {
            (Some(p), _) => format!("cannot apply: {p}"),
            (None, true) if r.via.len() > 1 => format!("matched, via {}", r.via.join(" ⊂ ")),
            (None, true) => "matched, direct member".to_string(),
            (None, false) => "no match: not a member".to_string(),
        };
        let _ = writeln!(o, "  {num}group {} → {}: {state}", r.group, r.grants);
    };
    if let Some(role) = &e.role {
        let why = match role.decided_by {
            Some(i) => format!("rule {} (the first that matches)", i + 1),
            None => "the default: no rule matches".to_string(),
        };
        let _ = writeln!(o, "\nrole {}: {why}", role.role);
        for (i, r) in role.rules.iter().enumerate() {
            rule_line(&mut o, Some(i), r);
        }
    }
    if !e.services.is_empty() {
        let _ = writeln!(o, "\nservices");
        for r in &e.services {
            rule_line(&mut o, None, r);
        }
    }
    if !e.portal_groups.is_empty() {
        let _ = writeln!(o, "\nportal groups");
        for r in &e.portal_groups {
            rule_line(&mut o, None, r);
        }
    }
    if let Some(su) = &e.sub_unit {
        let _ = writeln!(
            o,
            "\nsub-unit {} (from {})",
            su.value.as_deref().unwrap_or("(none)"),
            su.from
        );
    }
    let _ = writeln!(o, "\nportal user");
    match &e.portal {
        Some(p) => {
            let _ = writeln!(
                o,
                "  {} (id {}), {}",
                p.user_name,
                p.id,
                if p.active { "active" } else { "closed" }
            );
        }
        None => {
            let _ = writeln!(o, "  (none)");
        }
    }
    let _ = writeln!(o, "  link: {}", e.link);
    let _ = writeln!(o, "\nfields");
    for f in &e.fields {
        let last = match &f.last_synced {
            LastSynced::Never => "never".to_string(),
            LastSynced::Value(v) => show(v),
        };
        let _ = writeln!(
            o,
            "  {} [{}] {}",
            f.attribute,
            owner_label(f.owner),
            f.source
        );
        let _ = writeln!(
            o,
            "      last synced {last} · directory {} · portal {}",
            show(&f.directory),
            show(&f.portal)
        );
        let _ = writeln!(o, "      next: {}", f.next);
    }
    let _ = writeln!(o, "\nnext cycle: {}", e.next.summary);
    for g in &e.next.groups {
        let _ = writeln!(o, "  {g}");
    }
    if let Some(s) = &e.next.skipped {
        let _ = writeln!(o, "  skipped: {s}");
    }
    for h in &e.next.held {
        let _ = writeln!(o, "  held back this cycle: {h}");
    }
    o
}

fn owner_label(o: Owner) -> &'static str {
    match o {
        Owner::Directory => "owner directory",
        Owner::Portal => "owner portal",
        Owner::Merge => "owner merge",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(cn: &str, members: &[&str]) -> DirectoryGroup {
        DirectoryGroup {
            dn: format!("cn={cn},ou=groups,dc=example,dc=com"),
            anchor: cn.into(),
            name: cn.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            selected: false,
            sid: None,
        }
    }

    #[test]
    fn group_paths_follow_nesting_shortest_first_and_survive_cycles() {
        let alice = "uid=alice,ou=people,dc=example,dc=com";
        let groups = vec![
            group("admins", &["cn=Staff,ou=groups,dc=example,dc=com"]),
            // DNs compare as DNs: case and spacing differ from the member value.
            group("staff", &["UID=alice, ou=people,dc=example,dc=com"]),
            group(
                "everyone",
                &[
                    "cn=admins,ou=groups,dc=example,dc=com",
                    "cn=staff,ou=groups,dc=example,dc=com",
                ],
            ),
            group("loop", &["cn=everyone,ou=groups,dc=example,dc=com"]),
            group("other", &["uid=bob,ou=people,dc=example,dc=com"]),
        ];
        let paths = group_paths(&groups, alice);
        let named = |k: &str| -> Vec<&str> {
            paths[&dn::key(&format!("cn={k},ou=groups,dc=example,dc=com"))]
                .iter()
                .map(|&i| groups[i].name.as_str())
                .collect()
        };
        assert_eq!(named("staff"), ["staff"]);
        assert_eq!(named("admins"), ["staff", "admins"]);
        assert_eq!(named("everyone"), ["staff", "everyone"]);
        assert_eq!(named("loop"), ["staff", "everyone", "loop"]);
        assert_eq!(paths.len(), 4, "not in `other`");
    }

    fn value(s: &str) -> Value {
        Value::One(s.into())
    }

    #[test]
    fn a_merge_field_changed_in_the_portal_only_keeps_the_users_value() {
        let path = AttrPath::parse("displayName").unwrap();
        let last = LastSynced::Value(Some(value("A")));
        let next = field_next(FieldFacts {
            path: &path,
            owner: Owner::Merge,
            directory: Some(&value("A")),
            portal: Some(&value("B")),
            last: &last,
            change: None,
            has_portal_user: true,
            conflict: false,
            needs_admin: None,
        });
        assert!(next.contains("merge keeps the user's value"), "{next}");
        let next = field_next(FieldFacts {
            owner: Owner::Portal,
            ..FieldFacts {
                path: &path,
                owner: Owner::Merge,
                directory: Some(&value("A")),
                portal: Some(&value("B")),
                last: &last,
                change: None,
                has_portal_user: true,
                conflict: false,
                needs_admin: None,
            }
        });
        assert!(next.starts_with("never touched"), "{next}");
    }
}
