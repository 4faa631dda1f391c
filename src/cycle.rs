//! One sync cycle, the one way through the code:
//! read the directory and the portal → plan (pure) → apply (unless a dry run) → record → report.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tracing::{info, warn};

use crate::apply::{self, ApplyError};
use crate::config::Config;
use crate::config::SourceKind;
use crate::plan::{self, guard, Action, Plan};
use crate::portal::{PortalClient, PortalError, PortalSchema, PortalUser};
use crate::report::{self, DirectorySummary, PortalSummary, Report};
use crate::saved::SavedPlan;
use crate::source::delta;
use crate::source::{LdapSource, SourceError, Timestamp};
use crate::state::{RunRecord, State, StateError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Compute and report; write nothing anywhere.
    Plan,
    /// Compute, apply, record, report.
    Sync,
}

/// Why a cycle produced no report. Nothing was closed: a failed read never means "gone".
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("directory: {0}")]
    Source(#[from] SourceError),
    #[error("portal: {0}")]
    Portal(#[from] PortalError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("the cycle did not finish within {} s (sync.cycle_timeout_secs); nothing more was done", .0.as_secs())]
    Timeout(Duration),
}

impl From<ApplyError> for CycleError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::State(s) => CycleError::State(s),
        }
    }
}

/// What the admin said on the command line about this cycle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Exact numbers of held-back closures / access removals the admin confirmed.
    pub confirmed: guard::Confirmed,
    /// Apply even though the directory scope changed since the last sync.
    pub accept_scope_change: bool,
    /// The plan was reviewed and saved: the guards' limits do not hold it back again.
    pub reviewed: bool,
    /// Take over portal users with an externalId dirsync does not manage and no directory
    /// user has (`--adopt-orphans`): they become managed users.
    pub adopt_orphans: bool,
}

/// The `meta` key of the scope the last applied sync ran with.
const SCOPE_KEY: &str = "scope";

/// Runs one cycle within the configured cycle timeout.
pub async fn run(config: &Config, mode: Mode, options: &Options) -> Result<Report, CycleError> {
    let cycle = async {
        let prepared = prepare(config, mode, options).await?;
        finish(config, prepared).await
    };
    within_cycle_timeout(config, cycle).await
}

/// Applies a saved plan exactly as reviewed, or refuses if an affected user moved.
pub async fn apply_saved(config: &Config, saved: &SavedPlan) -> Result<Report, CycleError> {
    let cycle = async {
        let scope = config.scope_text();
        let options = Options {
            accept_scope_change: saved.scope == scope,
            reviewed: true,
            adopt_orphans: !saved.adopted_orphans.is_empty(),
            ..Options::default()
        };
        let mut prepared = prepare(config, Mode::Sync, &options).await?;
        let mut moved = saved.restrict(&mut prepared.plan);
        if saved.scope != scope {
            moved.insert(
                0,
                format!(
                    "the directory scope changed since the plan was saved:\n{}",
                    scope_diff(&saved.scope, &scope)
                ),
            );
        }
        if !moved.is_empty() {
            prepared.may_apply = false;
            prepared.plan.held.push(guard::Held {
                kind: "stale_plan".into(),
                count: moved.len(),
                limit: "the plan as saved".into(),
                message: format!(
                    "the saved plan (from {}) was not applied: {} of its changes no longer match. Run `dirsync plan` again and review.\n  {}",
                    saved.saved_at,
                    moved.len(),
                    moved.join("\n  ")
                ),
            });
        }
        finish(config, prepared).await
    };
    within_cycle_timeout(config, cycle).await
}

/// Runs `cycle` within `sync.cycle_timeout_secs`.
async fn within_cycle_timeout(
    config: &Config,
    cycle: impl std::future::Future<Output = Result<Report, CycleError>>,
) -> Result<Report, CycleError> {
    match tokio::time::timeout(config.cycle_timeout, cycle).await {
        Ok(r) => r,
        Err(_) => Err(CycleError::Timeout(config.cycle_timeout)),
    }
}

/// A cycle that has read both sides and planned, ready to apply.
pub struct Prepared {
    mode: Mode,
    started_at: String,
    state: Option<State>,
    portal: PortalClient,
    schema: PortalSchema,
    directory: DirectorySummary,
    portal_summary: PortalSummary,
    /// False when a guard turned this sync into a plan only.
    may_apply: bool,
    /// What the directory read gave, to remember for the next delta (AD).
    directory_read: Option<delta::Read>,
    /// Anchors the state links to portal users that were deleted in the portal: their
    /// links are dropped before applying.
    deleted_in_portal: Vec<String>,
    pub plan: Plan,
}

/// Reads the directory and the portal (at the same time) and plans.
pub async fn prepare(
    config: &Config,
    mode: Mode,
    options: &Options,
) -> Result<Prepared, CycleError> {
    let started_at = report::now();
    let state = match mode {
        Mode::Sync => Some(State::open(&config.state_path)?),
        Mode::Plan => State::open_read_only(&config.state_path)?,
    };
    let (known, known_groups, linked) = match &state {
        Some(s) => (s.baselines()?, s.groups()?, s.portal_ids()?),
        None => Default::default(),
    };
    let rules = plan::effective_rules(&config.mapping, &config.access);
    let mirror_groups = config.access.portal_groups.is_some();

    let attributes = source_attributes(config);
    let basis = match &state {
        Some(s) if config.source.kind == SourceKind::ActiveDirectory => delta::Basis::load(s)?,
        _ => delta::Cached::Nothing,
    };
    let read_directory = async {
        let mut source = LdapSource::connect(&config.source, &attributes).await?;
        let read = delta::read(&mut source, config, basis).await;
        source.close().await;
        read
    };
    let read_portal = async {
        let mut portal = PortalClient::new(&config.portal)?;
        portal.discover().await?;
        let schema = portal.schema().await?;
        let users = portal.list_users().await?;
        let deleted = deleted_in_portal(&portal, &users, &linked).await?;
        let groups = if mirror_groups {
            portal.list_groups().await?
        } else {
            Vec::new()
        };
        Ok::<_, PortalError>((portal, schema, users, groups, deleted))
    };
    let (snapshot, portal_side) = tokio::join!(read_directory, read_portal);
    let read = snapshot?;
    let mut snapshot = read.snapshot.clone();
    snapshot.add_primary_group_members();
    let (portal, schema, portal_users, portal_groups, deleted) = portal_side?;

    // One "now" for the whole cycle: expiries pass with time, not with directory changes.
    let now = Timestamp::now();
    let links = plan::Links {
        deleted_in_portal: deleted.values().cloned().collect(),
        portal_ids: linked,
        adopt_orphans: options.adopt_orphans,
    };
    let mut plan = plan::compute(&plan::Input {
        directory: &snapshot.users,
        bad_entries: &snapshot.bad_entries,
        portal: &portal_users,
        state: &known,
        rules: &rules,
        schema: &schema,
        groups: &snapshot.groups,
        access: &config.access,
        portal_groups: &portal_groups,
        known_groups: &known_groups,
        now,
        deleted: &read.deleted,
        links: &links,
    });
    // Orphans taken over count as managed users from now on.
    let adopted = plan.orphans.iter().filter(|o| o.adopted).count();
    let managed_now = adopted
        + portal_users
            .iter()
            .filter(|p| {
                p.active
                    && p.external_id
                        .as_ref()
                        .is_some_and(|x| known.contains_key(&x.to_ascii_lowercase()))
            })
            .count();
    let limits = guard::Limits {
        max_closures: config.safety.max_closures,
        max_closure_percent: config.safety.max_closure_percent,
        max_access_removals: config.safety.max_access_removals,
        privileged_roles: config.access.keep_one_of.clone(),
    };
    if !options.reviewed {
        let held = guard::apply_limits(&mut plan, managed_now, &limits, options.confirmed);
        plan.held.extend(held);
    }
    let mut may_apply = true;
    if let Some(s) = &state {
        let scope = config.scope_text();
        if let Some(last) = s.meta(SCOPE_KEY)? {
            if last != scope && !options.accept_scope_change {
                may_apply = false;
                plan.held.push(guard::Held {
                    kind: "scope_change".into(),
                    count: plan.changes.len() + plan.group_changes.len(),
                    limit: "the scope of the last sync".into(),
                    message: format!(
                        "the directory scope changed since the last sync, so nothing was applied: this run is a plan. \
                         Review it, then run `dirsync sync --accept-scope-change`.\n{}",
                        scope_diff(&last, &scope)
                    ),
                });
            }
        }
    }
    info!(
        create = plan.count(Action::Create),
        adopt = plan.count(Action::Adopt),
        update = plan.count(Action::Update),
        reactivate = plan.count(Action::Reactivate),
        close = plan.count(Action::Close),
        skipped = plan.skipped.len(),
        conflicts = plan.conflicts.len(),
        "planned"
    );

    let managed = portal_users
        .iter()
        .filter(|p| {
            p.external_id
                .as_ref()
                .is_some_and(|x| known.contains_key(&x.to_ascii_lowercase()))
        })
        .count();
    Ok(Prepared {
        mode,
        started_at,
        state,
        portal,
        schema,
        directory: DirectorySummary {
            url: config.source.url.to_string(),
            users: snapshot.users.len(),
            disabled: snapshot
                .users
                .iter()
                .filter(|u| u.closure(now).is_some())
                .count(),
            groups: config.source.groups.as_ref().map(|_| snapshot.groups.len()),
            read: if read.delta { "delta" } else { "full" }.into(),
            read_reason: read.reason.as_ref().map(ToString::to_string),
            domain_controller: read.identity.clone(),
            entries_read: read.snapshot.entries_read,
        },
        directory_read: Some(read),
        deleted_in_portal: deleted.into_keys().collect(),
        portal_summary: PortalSummary {
            url: config.portal.url.to_string(),
            users: portal_users.len(),
            managed,
        },
        may_apply,
        plan,
    })
}

/// Applies a prepared plan (in a sync), records the run, and reports.
pub async fn finish(config: &Config, prepared: Prepared) -> Result<Report, CycleError> {
    let Prepared {
        mode,
        started_at,
        mut state,
        portal,
        schema,
        directory,
        portal_summary,
        may_apply,
        directory_read,
        deleted_in_portal,
        plan,
    } = prepared;
    let (command, applied) = match (mode, state.as_mut()) {
        (Mode::Sync, Some(state)) if may_apply => {
            // Their portal users are gone; a create planned again links anew.
            for anchor in &deleted_in_portal {
                state.forget_user(anchor)?;
            }
            let rules = plan::effective_rules(&config.mapping, &config.access);
            let replan = apply::Replan {
                rules: &rules,
                schema: &schema,
                concurrency: config.portal.concurrency,
                max_consecutive_failures: config.safety.max_consecutive_failures,
            };
            (
                "sync",
                Some(apply::apply(&plan, &portal, state, &replan).await?),
            )
        }
        (Mode::Sync, _) => ("sync", None),
        (Mode::Plan, _) => ("plan", None),
    };
    let report = Report::new(
        command,
        started_at,
        directory,
        portal_summary,
        plan,
        applied,
    );

    if let (Mode::Sync, Some(state)) = (mode, state.as_mut()) {
        if may_apply {
            state.set_meta(SCOPE_KEY, &config.scope_text())?;
        }
        if let Some(read) = &directory_read {
            delta::remember(state, read, config)?;
        }
        let c = |k: &str| report.counts.get(k).copied().unwrap_or(0);
        state.record_run(&RunRecord {
            started_at: report.started_at.clone(),
            finished_at: report.finished_at.clone(),
            command: command.to_string(),
            outcome: if report.has_failures() {
                "partial"
            } else if !report.held.is_empty() {
                "held"
            } else {
                "ok"
            }
            .to_string(),
            created: c("create"),
            adopted: c("adopt"),
            updated: c("update"),
            reactivated: c("reactivate"),
            closed: c("close"),
            skipped: c("skipped"),
            failed: c("failed") + c("rejected"),
            conflicts: c("conflicts"),
        })?;
    }
    Ok(report)
}

/// Checks that the listing holds every portal user the state links to a directory anchor
/// (`linked`: lowercased anchor → portal id). One missing is fetched by id: if the portal
/// still has it, the listing was incomplete and the cycle fails before planning; if it is
/// gone (404), it was deleted in the portal. Returns those, as anchor → portal id.
async fn deleted_in_portal(
    portal: &PortalClient,
    listed: &[PortalUser],
    linked: &HashMap<String, String>,
) -> Result<HashMap<String, String>, PortalError> {
    let ids: HashSet<&str> = listed.iter().map(|u| u.id.as_str()).collect();
    let mut missing: Vec<(&String, &String)> = linked
        .iter()
        .filter(|(_, id)| !ids.contains(id.as_str()))
        .collect();
    missing.sort();
    let mut deleted = HashMap::new();
    for (anchor, id) in missing {
        match portal.get_user(id).await {
            Ok(user) => {
                return Err(PortalError::IncompleteListing {
                    endpoint: "Users".into(),
                    problem: format!(
                        "portal user {} (id {id}), which dirsync manages for directory anchor {anchor}, \
                         exists but was not in the listing",
                        user.user_name
                    ),
                })
            }
            Err(PortalError::NotFound) => {
                warn!(anchor, id, "a managed portal user was deleted in the portal");
                deleted.insert(anchor.clone(), id.clone());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// The directory attributes a cycle reads for users: the mapped ones and the sub-unit's.
pub fn source_attributes(config: &Config) -> Vec<String> {
    let mut attributes: Vec<String> = config.mapping.iter().map(|r| r.from.clone()).collect();
    if let Some(crate::access::SubUnitRule {
        from: crate::access::SubUnitSource::Attribute(a),
        ..
    }) = &config.access.sub_unit
    {
        attributes.push(a.clone());
    }
    attributes
}

/// The lines of the scope that changed, as `- old` / `+ new`.
fn scope_diff(old: &str, new: &str) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let mut out = Vec::new();
    for l in &old_lines {
        if !new_lines.contains(l) {
            out.push(format!("  - {l}"));
        }
    }
    for l in &new_lines {
        if !old_lines.contains(l) {
            out.push(format!("  + {l}"));
        }
    }
    out.join("\n")
}
