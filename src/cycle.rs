//! One sync cycle, the one way through the code:
//! read the directory and the portal → plan (pure) → apply (unless a dry run) → record → report.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use tracing::{info, warn};

use crate::apply::{self, blocking, ApplyError};
use crate::config::Config;
use crate::config::SourceKind;
use crate::plan::{self, guard, Action, Plan};
use crate::portal::{PortalClient, PortalError, PortalSchema, PortalUser};
use crate::record;
use crate::report::{self, DirectorySummary, PortalSummary, Report, RunOutcome, Stopped};
use crate::saved::SavedPlan;
use crate::source::delta;
use crate::source::{LdapSource, SourceError, Timestamp};
use crate::state::{State, StateError};

/// What a cycle is asked to do. Every command but `check` is one of these, through
/// [`run`]; so are the daemon's cycles.
pub enum Request<'a> {
    /// Compute and report; write nothing anywhere. With `save`, also save the plan to
    /// apply later exactly as reviewed.
    Plan { save: Option<&'a Path> },
    /// Compute, apply, record, report.
    Sync,
    /// Apply a saved plan exactly as reviewed, or refuse if an affected user moved.
    Apply(&'a SavedPlan),
    /// The daemon on a spare host: plan and report every cycle and record the run, but
    /// never write to the portal or the state's links.
    Standby,
}

/// The kind of a cycle, as reports and the run history name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Plan,
    Sync,
    Apply,
    Standby,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Plan => "plan",
            Kind::Sync => "sync",
            Kind::Apply => "apply",
            Kind::Standby => "standby",
        }
    }

    /// Writes to the portal (and the links in the state).
    fn applies(self) -> bool {
        matches!(self, Kind::Sync | Kind::Apply)
    }

    /// Opens the state as its one writer and records the run.
    fn records(self) -> bool {
        !matches!(self, Kind::Plan)
    }
}

impl Request<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Plan { .. } => Kind::Plan,
            Request::Sync => Kind::Sync,
            Request::Apply(_) => Kind::Apply,
            Request::Standby => Kind::Standby,
        }
    }
}

/// How a running cycle is told to stop. `soft` (a shutdown): no new request is started,
/// those in flight finish, and the cycle records and reports what it did. `hard` (the
/// shutdown's grace period is over): requests still in flight are abandoned, and the
/// cycle still records and reports. The cycle timeout is a hard stop of its own.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    pub soft: CancellationToken,
    pub hard: CancellationToken,
}

/// What a cycle runs within: how it is stopped, and where it counts its portal requests
/// (the daemon's metrics; none for a one-shot command).
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub stop: Stop,
    pub telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
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
    #[error(transparent)]
    Saved(#[from] crate::saved::SavedError),
    #[error("the cycle did not finish within {} s (sync.cycle_timeout_secs) and was stopped before anything was applied", .0.as_secs())]
    Timeout(Duration),
    #[error("the cycle was asked to stop before anything was applied")]
    Interrupted,
}

impl CycleError {
    /// How the run history records this failure.
    fn outcome(&self) -> RunOutcome {
        match self {
            CycleError::Timeout(_) => RunOutcome::TimedOut,
            CycleError::Interrupted => RunOutcome::Interrupted,
            _ => RunOutcome::Failed,
        }
    }
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

/// Runs one cycle: read both sides, plan, apply (unless the request is a dry run or a
/// guard held the cycle back), record, report. Under `sync.cycle_timeout_secs` and `stop`;
/// a cycle that writes always records its run, also when it fails, times out or is
/// stopped, and a cycle that got as far as planning always reports.
pub async fn run(
    config: &Config,
    request: Request<'_>,
    options: &Options,
    context: &Context,
) -> Result<Report, CycleError> {
    let stop = &context.stop;
    let kind = request.kind();
    let clock = Instant::now();
    let started_at = report::now();
    let deadline = tokio::time::sleep(config.cycle_timeout);
    tokio::pin!(deadline);

    let mut state = if kind.records() {
        Some(blocking(|| State::open(&config.state_path))?)
    } else {
        blocking(|| State::open_read_only(&config.state_path))?
    };
    // Read and plan. A stop of either kind ends it: nothing was applied yet.
    let options = match &request {
        Request::Apply(saved) => Options {
            accept_scope_change: saved.scope == config.scope_text(),
            reviewed: true,
            adopt_orphans: !saved.adopted_orphans.is_empty(),
            ..Options::default()
        },
        _ => *options,
    };
    let remembered = match Remembered::read(config, state.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            return Err(record_failure(
                config,
                kind,
                &started_at,
                clock,
                state.as_mut(),
                e.into(),
            ))
        }
    };
    let prepared = tokio::select! {
        biased;
        _ = stop.hard.cancelled() => Err(CycleError::Interrupted),
        _ = stop.soft.cancelled() => Err(CycleError::Interrupted),
        _ = &mut deadline => Err(CycleError::Timeout(config.cycle_timeout)),
        r = prepare(config, &options, remembered, context.telemetry.clone()) => r,
    };
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            return Err(record_failure(
                config,
                kind,
                &started_at,
                clock,
                state.as_mut(),
                e,
            ))
        }
    };
    match &request {
        Request::Apply(saved) => refuse_if_moved(config, saved, &mut prepared),
        Request::Plan { save: Some(path) } => {
            SavedPlan::of(&prepared.plan, config.scope_text()).write(path)?;
        }
        _ => {}
    }

    // Apply.
    let Prepared {
        schema,
        portal,
        directory,
        portal_summary,
        may_apply,
        directory_read,
        deleted_in_portal,
        known,
        linked,
        mut plan,
        ..
    } = prepared;
    let applying = kind.applies() && may_apply;
    let (applied, stopped) = match state.as_mut() {
        Some(state) if applying => {
            // Their portal users are gone; a create planned again links anew.
            for anchor in &deleted_in_portal {
                blocking(|| state.forget_user(anchor))?;
            }
            let rules = plan::effective_rules(&config.mapping, &config.access);
            let replan = apply::Replan {
                rules: &rules,
                schema: &schema,
                concurrency: config.portal.concurrency,
                max_consecutive_failures: config.safety.max_consecutive_failures,
            };
            let progress = apply::Progress::new(&plan);
            let ended = tokio::select! {
                r = apply::apply(&plan, &portal, state, &replan, &stop.soft, &progress) => {
                    r.map(|()| stop.soft.is_cancelled().then_some(Stopped::Interrupted))
                }
                _ = stop.hard.cancelled() => Ok(Some(Stopped::Interrupted)),
                _ = &mut deadline => Ok(Some(Stopped::TimedOut)),
            };
            let stopped = match ended {
                Ok(s) => s,
                Err(e) => {
                    return Err(record_failure(
                        config,
                        kind,
                        &started_at,
                        clock,
                        Some(state),
                        e.into(),
                    ))
                }
            };
            let why = stopped.map(|s| match s {
                Stopped::Interrupted => "dirsync was asked to stop; changes not made are planned again next cycle".to_string(),
                Stopped::TimedOut => format!(
                    "the cycle did not finish within {} s (sync.cycle_timeout_secs); changes not made are planned again next cycle",
                    config.cycle_timeout.as_secs()
                ),
            });
            (Some(progress.applied(why.as_deref())), stopped)
        }
        _ => (None, None),
    };
    let in_sync = std::mem::take(&mut plan.in_sync);
    let report = Report::new(
        kind.label(),
        started_at.clone(),
        directory,
        portal_summary,
        plan,
        applied,
        stopped,
    );

    // Record.
    if let (true, Some(state)) = (kind.records(), state.as_mut()) {
        let mut meta = Vec::new();
        if applying {
            meta.push((SCOPE_KEY, config.scope_text()));
        }
        if let Some(read) = &directory_read {
            meta.extend(delta::basis_meta(read, config));
        }
        let facts = record::Facts {
            command: kind.label(),
            started_at: &started_at,
            duration: clock.elapsed(),
            in_sync: if applying { &in_sync } else { &[] },
            known: &known,
            linked: &linked,
            meta,
            keep_runs: config.keep_runs,
        };
        blocking(|| record::cycle(state, &facts, &report))?;
    }
    info!(
        command = kind.label(),
        read = %report.directory.read,
        outcome = report.outcome.label(),
        created = report.counts.get("create").copied().unwrap_or(0),
        updated = report.counts.get("update").copied().unwrap_or(0),
        closed = report.counts.get("close").copied().unwrap_or(0),
        failed = report.counts.get("failed").copied().unwrap_or(0),
        held = report.held.len(),
        duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        "cycle finished"
    );
    Ok(report)
}

/// Records a cycle that failed before it could report (when the cycle writes), and
/// hands the error back.
fn record_failure(
    config: &Config,
    kind: Kind,
    started_at: &str,
    clock: Instant,
    state: Option<&mut State>,
    e: CycleError,
) -> CycleError {
    if let (true, Some(s)) = (kind.records(), state) {
        let recorded = blocking(|| {
            record::failed(
                s,
                kind.label(),
                started_at,
                clock.elapsed(),
                e.outcome(),
                &e.to_string(),
                config.keep_runs,
            )
        });
        if let Err(r) = recorded {
            warn!(error = %r, "the failed run could not be recorded");
        }
    }
    e
}

/// A saved plan applied later: restricted to what was reviewed, and held back whole if
/// an affected user or the scope moved since.
fn refuse_if_moved(config: &Config, saved: &SavedPlan, prepared: &mut Prepared) {
    let scope = config.scope_text();
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
            kind: guard::HeldKind::StalePlan,
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
}

/// A cycle that has read both sides and planned, ready to apply.
pub struct Prepared {
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
    /// What the state held when the cycle started (lowercased anchors): baselines and
    /// portal ids, so the record step writes only what changed.
    known: HashMap<String, plan::Baseline>,
    linked: HashMap<String, String>,
    pub plan: Plan,
}

/// Reads the directory and the portal (at the same time) and plans.
/// What a cycle needs from the state, read before anything is awaited (the database
/// stays with the cycle, never shared across tasks).
struct Remembered {
    known: HashMap<String, plan::Baseline>,
    known_groups: HashMap<String, plan::KnownGroup>,
    linked: HashMap<String, String>,
    basis: delta::Cached,
    last_scope: Option<String>,
}

impl Remembered {
    fn read(config: &Config, state: Option<&State>) -> Result<Remembered, StateError> {
        let Some(s) = state else {
            return Ok(Remembered {
                known: HashMap::new(),
                known_groups: HashMap::new(),
                linked: HashMap::new(),
                basis: delta::Cached::Nothing,
                last_scope: None,
            });
        };
        blocking(|| {
            Ok(Remembered {
                known: s.baselines()?,
                known_groups: s.groups()?,
                linked: s.portal_ids()?,
                basis: if config.source.kind == SourceKind::ActiveDirectory {
                    delta::Basis::load(s)?
                } else {
                    delta::Cached::Nothing
                },
                last_scope: s.meta(SCOPE_KEY)?,
            })
        })
    }
}

async fn prepare(
    config: &Config,
    options: &Options,
    remembered: Remembered,
    telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
) -> Result<Prepared, CycleError> {
    let Remembered {
        known,
        known_groups,
        linked,
        basis,
        last_scope,
    } = remembered;
    let rules = plan::effective_rules(&config.mapping, &config.access);
    let mirror_groups = config.access.portal_groups.is_some();

    let attributes = source_attributes(config);
    let read_directory = async {
        let mut source = LdapSource::connect(&config.source, &attributes).await?;
        let read = delta::read(&mut source, config, basis).await;
        source.close().await;
        read
    };
    let read_portal = async {
        let mut portal = PortalClient::new(&config.portal)?.reading(plan::portal_fields(&rules));
        if let Some(t) = telemetry {
            portal = portal.with_telemetry(t);
        }
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
    // The groups with AD's primary-group members; the snapshot stays as read (the next
    // delta's basis) and is not copied.
    let groups = read.snapshot.with_primary_group_members();
    let snapshot = &read.snapshot;
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
        groups: &groups,
        access: &config.access,
        portal_groups: &portal_groups,
        known_groups: &known_groups,
        now,
        deleted: &read.deleted,
        links: &links,
    });
    let linked = links.portal_ids;
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
    {
        let scope = config.scope_text();
        if let Some(last) = last_scope {
            if last != scope && !options.accept_scope_change {
                may_apply = false;
                plan.held.push(guard::Held {
                    kind: guard::HeldKind::ScopeChange,
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
        known,
        linked,
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
