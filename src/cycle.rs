//! One sync cycle, the one way through the code:
//! read the directory and the portal → plan (pure) → apply (unless a dry run) → record → report.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use tracing::{info, warn};

use crate::apply::{self, blocking, Applied, ApplyError, Status};
use crate::concern::{self, Concerned};
use crate::config::Config;
use crate::plan::{self, guard, Action, KnownGroup, Plan, PlanScope};
use crate::portal::{GroupKey, PortalClient, PortalError, PortalGroup, PortalSchema, PortalUser};
use crate::record;
use crate::report::{self, DirectorySummary, PortalSummary, Report, RunOutcome, Stopped};
use crate::report::{millis, ApplyPhase, DirectoryRead, Phases, PlanPhase, PortalRead};
use crate::saved::SavedPlan;
use crate::source::delta::{self, Cached, FullReason, Pending};
use crate::source::{DirectoryGroup, DirectoryUser, LdapSource, SourceError, Timestamp};
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
    /// A full reconcile (`--full`): both sides read whole, even where an incremental
    /// cycle could build on the last one.
    pub full: bool,
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
    // Why this cycle must be a full reconcile, whatever the directory says.
    let forced = if matches!(request, Request::Apply(_)) {
        Some(FullReason::SavedPlan)
    } else if options.adopt_orphans {
        Some(FullReason::AdoptOrphans)
    } else if options.full {
        Some(FullReason::Requested)
    } else {
        None
    };
    let remembered = match Remembered::read(state.as_ref(), config, forced.as_ref()) {
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
        r = prepare(config, &options, remembered, context.telemetry.clone(), forced) => r,
    };
    // The directory brought a change after a cycle that settled: the baselines left
    // unread are read now, and the cycle plans.
    let prepared = match prepared {
        Ok(Step::Ready(p)) => Ok(*p),
        Ok(Step::Load(side)) => match Loaded::read(state.as_ref()) {
            Ok(loaded) => tokio::select! {
                biased;
                _ = stop.hard.cancelled() => Err(CycleError::Interrupted),
                _ = stop.soft.cancelled() => Err(CycleError::Interrupted),
                _ = &mut deadline => Err(CycleError::Timeout(config.cycle_timeout)),
                r = plan_read(config, &options, *side, loaded) => r,
            },
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
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
        planned,
        legacy_basis,
        mut phases,
        settled,
        mut plan,
        ..
    } = prepared;
    let applying = kind.applies() && may_apply;
    let (applied, stopped) = match state.take() {
        Some(mut owned) if applying => {
            // Their portal users are gone; a create planned again links anew.
            for anchor in &deleted_in_portal {
                blocking(|| owned.forget_user(anchor))?;
            }
            let rules = plan::effective_rules(&config.mapping, &config.access);
            let replan = apply::Replan {
                rules: &rules,
                schema: &schema,
                concurrency: config.portal.concurrency,
                max_consecutive_failures: config.safety.max_consecutive_failures,
            };
            let progress = Arc::new(apply::Progress::new(&plan));
            // Timing: the apply phase, up to the last link committed.
            let (apply_started, requests_before) = (Instant::now(), portal.requests_sent());
            // The writer owns the state while the plan is applied, and hands it back.
            let writer = match apply::Writer::start(owned, Arc::clone(&progress)) {
                Ok(w) => w,
                Err(failed) => {
                    let (mut owned, e) = *failed;
                    let e = record_failure(
                        config,
                        kind,
                        &started_at,
                        clock,
                        Some(&mut owned),
                        e.into(),
                    );
                    return Err(e);
                }
            };
            let ended = tokio::select! {
                r = apply::apply(&plan, &portal, &writer, &replan, &stop.soft, &progress) => {
                    r.map(|()| stop.soft.is_cancelled().then_some(Stopped::Interrupted))
                }
                _ = stop.hard.cancelled() => Ok(Some(Stopped::Interrupted)),
                _ = &mut deadline => Ok(Some(Stopped::TimedOut)),
            };
            // Stopped hard or not, what the portal confirmed is committed before the
            // outcomes are read.
            let (back, written) = blocking(|| writer.finish());
            state = back;
            let stopped = match ended
                .map_err(CycleError::from)
                .and_then(|s| written.map(|()| s).map_err(CycleError::from))
            {
                Ok(s) => s,
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
            let why = stopped.map(|s| match s {
                Stopped::Interrupted => "dirsync was asked to stop; changes not made are planned again next cycle".to_string(),
                Stopped::TimedOut => format!(
                    "the cycle did not finish within {} s (sync.cycle_timeout_secs); changes not made are planned again next cycle",
                    config.cycle_timeout.as_secs()
                ),
            });
            let applied = progress.applied(why.as_deref());
            phases.apply = Some(ApplyPhase {
                ms: millis(apply_started.elapsed()),
                requests: portal.requests_sent().saturating_sub(requests_before),
                applied: applied
                    .outcomes
                    .iter()
                    .chain(&applied.group_outcomes)
                    .filter(|o| o.status == apply::Status::Applied)
                    .count(),
            });
            (Some(applied), stopped)
        }
        other => {
            state = other;
            (None, None)
        }
    };
    let in_sync = std::mem::take(&mut plan.in_sync);
    let pending = planned.pending_after(&plan, applied.as_ref());
    let mut report = Report::new(
        kind.label(),
        started_at.clone(),
        directory,
        portal_summary,
        plan,
        applied,
        stopped,
    );
    report.config = Some(config.path.display().to_string());
    report.phases = phases;

    // Record.
    if let (true, Some(state)) = (kind.records(), state.as_mut()) {
        let mut meta = Vec::new();
        if applying {
            meta.push((SCOPE_KEY, config.scope_text()));
        }
        // The findings of a cycle that left nothing to do, for the next one (only when
        // nothing is owed, and the cycle ran to its end).
        let settled = settled
            .filter(|_| pending.users.is_empty() && pending.groups.is_empty() && stopped.is_none())
            .and_then(|s| serde_json::to_value(s).ok());
        if let Some(read) = &directory_read {
            meta.extend(delta::basis_meta(
                read,
                config,
                &pending,
                settled.as_ref(),
                legacy_basis,
            ));
        }
        // The snapshot, streamed into the state, unless the one it keeps is still true.
        let snapshot = directory_read.as_ref().filter(|r| !r.snapshot_unchanged());
        let write_snapshot = |out: &mut dyn std::io::Write| match snapshot {
            Some(read) => delta::write_snapshot(read, out),
            None => Ok(()),
        };
        let documents = match snapshot {
            Some(_) => vec![crate::state::Document {
                key: delta::SNAPSHOT_KEY,
                write: &write_snapshot,
            }],
            None => Vec::new(),
        };
        let facts = record::Facts {
            command: kind.label(),
            started_at: &started_at,
            duration: clock.elapsed(),
            in_sync: if applying { &in_sync } else { &[] },
            known: &known,
            linked: &linked,
            meta,
            documents,
            keep_runs: config.keep_runs,
        };
        let recorded = blocking(|| record::cycle(state, &facts, &report))?;
        report.phases.record = Some(recorded);
    }
    info!(
        command = kind.label(),
        read = %report.directory.read,
        why = report.directory.read_reason.as_deref().unwrap_or_default(),
        outcome = report.outcome.label(),
        created = report.counts.get("create").copied().unwrap_or(0),
        updated = report.counts.get("update").copied().unwrap_or(0),
        closed = report.counts.get("close").copied().unwrap_or(0),
        failed = report.counts.get("failed").copied().unwrap_or(0),
        held = report.held.len(),
        directory_read_ms = report.phases.directory_read.ms,
        portal_read_ms = report.phases.portal_read.ms,
        plan_ms = report.phases.plan.ms,
        apply_ms = report.phases.apply.as_ref().map(|a| a.ms),
        record_ms = report.phases.record.as_ref().map(|r| r.ms),
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
        let again = format!("{} plan --save FILE", guard::invocation(&config.path));
        prepared.plan.held.push(guard::Held {
            confirm: None,
            moved: moved.clone(),
            ..guard::Held::new(
                guard::HeldKind::StalePlan,
                moved.len(),
                "the plan as saved".into(),
                format!(
                    "the saved plan (from {}) was not applied: {} of what it holds no longer matches (listed below). \
                     Run `{again}` again and review.",
                    saved.saved_at,
                    moved.len(),
                ),
            )
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
    /// What the directory read gave, to remember for the next incremental read.
    directory_read: Option<delta::Read>,
    /// The state still has a basis where an older dirsync kept it (emptied on record).
    legacy_basis: bool,
    /// The changes planned, before a guard held any back: what is still owed after the
    /// cycle is remembered with the basis.
    planned: Planned,
    /// Anchors the state links to portal users that were deleted in the portal: their
    /// links are dropped before applying.
    deleted_in_portal: Vec<String>,
    /// What the state held when the cycle started (lowercased anchors): baselines and
    /// portal ids, so the record step writes only what changed.
    known: HashMap<String, plan::Baseline>,
    linked: HashMap<String, String>,
    /// The reads' and the plan's timings; apply and record add theirs.
    phases: Phases,
    /// What this cycle remembers with its basis if it leaves nothing to do.
    settled: Option<plan::settled::Settled>,
    pub plan: Plan,
}

/// What a cycle needs from the state, read before anything is awaited (the database
/// stays with the cycle, never shared across tasks).
struct Remembered {
    /// `None` when left unread for a plan that may stand ([`may_stand`]).
    loaded: Option<Loaded>,
    basis: Cached,
    legacy_basis: bool,
    last_scope: Option<String>,
}

/// What the state says of every managed user and mirrored group: what a plan is made on.
struct Loaded {
    known: HashMap<String, plan::Baseline>,
    known_groups: HashMap<String, KnownGroup>,
    linked: HashMap<String, String>,
}

impl Loaded {
    fn read(state: Option<&State>) -> Result<Loaded, StateError> {
        let Some(s) = state else {
            return Ok(Loaded {
                known: HashMap::new(),
                known_groups: HashMap::new(),
                linked: HashMap::new(),
            });
        };
        blocking(|| {
            let (known, linked) = s.managed_users()?;
            Ok(Loaded {
                known,
                known_groups: s.groups()?,
                linked,
            })
        })
    }
}

impl Remembered {
    fn read(
        state: Option<&State>,
        config: &Config,
        forced: Option<&FullReason>,
    ) -> Result<Remembered, StateError> {
        let Some(s) = state else {
            return Ok(Remembered {
                loaded: Some(Loaded::read(None)?),
                basis: Cached::Nothing,
                legacy_basis: false,
                last_scope: None,
            });
        };
        let (basis, legacy_basis, last_scope) = blocking(|| {
            Ok::<_, StateError>((
                delta::Basis::load(s, config, forced)?,
                delta::legacy(s)?,
                s.meta(SCOPE_KEY)?,
            ))
        })?;
        let loaded = match may_stand(&basis, config, forced) {
            true => None,
            false => Some(Loaded::read(state)?),
        };
        Ok(Remembered {
            loaded,
            basis,
            legacy_basis,
            last_scope,
        })
    }
}

/// Whether the last cycle's plan may stand ([`plan::settled`]), as far as the basis
/// tells before the directory is read: then the baselines are left unread until the
/// read shows whether anything changed.
fn may_stand(basis: &Cached, config: &Config, forced: Option<&FullReason>) -> bool {
    let Cached::Basis(b) = basis else {
        return false;
    };
    !delta::full_ahead(basis, config, forced)
        && b.pending.users.is_empty()
        && b.pending.groups.is_empty()
        && b.settled
            .as_ref()
            .and_then(settled_of)
            .is_some_and(|s| s.holds(Timestamp::now()))
}

/// The changes a plan holds before the guards, by lowercased anchor, with how much each
/// changes (fields, activation; members added and removed, a rename): a change is settled
/// only when it was applied whole.
#[derive(Clone, Debug, Default)]
struct Planned {
    users: HashMap<String, usize>,
    groups: HashMap<String, usize>,
    /// Concerned users and groups that could not be read: owed as they are.
    unread: Pending,
}

impl Planned {
    fn of(plan: &Plan) -> Planned {
        Planned {
            users: plan
                .changes
                .iter()
                .map(|c| (c.anchor.to_ascii_lowercase(), user_weight(c)))
                .collect(),
            groups: plan
                .group_changes
                .iter()
                .map(|g| (g.anchor.to_ascii_lowercase(), group_weight(g)))
                .collect(),
            unread: Pending::default(),
        }
    }

    /// What is still owed after `applied` (nothing was applied without it): every planned
    /// change but those the portal confirmed whole.
    fn pending_after(&self, plan: &Plan, applied: Option<&Applied>) -> Pending {
        let mut pending = Pending {
            users: self.users.keys().cloned().collect(),
            groups: self.groups.keys().cloned().collect(),
        };
        pending.users.extend(self.unread.users.iter().cloned());
        pending.groups.extend(self.unread.groups.iter().cloned());
        if let Some(applied) = applied {
            for (c, o) in plan.changes.iter().zip(&applied.outcomes) {
                let key = c.anchor.to_ascii_lowercase();
                if o.status == Status::Applied && self.users.get(&key) == Some(&user_weight(c)) {
                    pending.users.remove(&key);
                }
            }
            for (g, o) in plan.group_changes.iter().zip(&applied.group_outcomes) {
                let key = g.anchor.to_ascii_lowercase();
                if o.status == Status::Applied && self.groups.get(&key) == Some(&group_weight(g)) {
                    pending.groups.remove(&key);
                }
            }
        }
        pending
    }
}

fn user_weight(c: &plan::Change) -> usize {
    c.fields.len() + usize::from(c.set_active.is_some())
}

fn group_weight(g: &plan::GroupChange) -> usize {
    g.add.len() + g.remove.len() + usize::from(g.rename.is_some())
}

/// The portal users and groups a cycle plans with.
struct PortalView {
    users: Vec<PortalUser>,
    groups: Vec<PortalGroup>,
    /// Linked users the portal answered 404 for: anchor → portal id.
    deleted: HashMap<String, String>,
    /// Concerned users and groups an incremental cycle could not read (a transient
    /// failure after the retries): not planned this cycle, owed to the next.
    unread: Pending,
}

/// Where [`prepare`] got to.
enum Step {
    /// Planned (or the last plan stands): ready to apply.
    Ready(Box<Prepared>),
    /// Both sides read, the state's baselines and links not: they were left unread for a
    /// plan that might stand ([`plan::settled`]), and the directory brought a change.
    /// The cycle reads them and plans ([`plan_read`]).
    Load(Box<ReadSide>),
}

/// What the reads gave, before planning.
struct ReadSide {
    read: delta::Read,
    directory_took: Duration,
    portal: PortalClient,
    schema: PortalSchema,
    /// The portal listed whole, when a full read was known ahead.
    listed: Option<PortalView>,
    portal_took: Duration,
    legacy_basis: bool,
    last_scope: Option<String>,
}

/// Reads the directory and the portal and plans. A full reconcile lists the portal while
/// the directory is read; an incremental cycle reads, once the directory said what
/// changed, only the portal users and groups the changes concern. When the last cycle
/// settled and the directory brought nothing, its plan stands.
async fn prepare(
    config: &Config,
    options: &Options,
    remembered: Remembered,
    telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
    forced: Option<FullReason>,
) -> Result<Step, CycleError> {
    let Remembered {
        loaded,
        basis,
        legacy_basis,
        last_scope,
    } = remembered;
    let mirror_groups = config.access.portal_groups.is_some();
    // Left unread only when no full read is ahead: a listing needs the links.
    let full_ahead = delta::full_ahead(&basis, config, forced.as_ref());
    let no_links = HashMap::new();
    let linked = loaded.as_ref().map_or(&no_links, |l| &l.linked);

    let attributes = source_attributes(config);
    let rules = plan::effective_rules(&config.mapping, &config.access);
    let read_directory = async {
        let started = Instant::now(); // Timing: the directory read.
        let mut source = LdapSource::connect(&config.source, &attributes).await?;
        let read = delta::read(&mut source, config, basis, forced).await;
        source.close().await;
        read.map(|r| (r, started.elapsed()))
    };
    let read_portal = async {
        let started = Instant::now(); // Timing: the portal read.
        let mut portal = PortalClient::new(&config.portal)?.reading(plan::portal_fields(&rules));
        if let Some(t) = telemetry {
            portal = portal.with_telemetry(t);
        }
        portal.discover().await?;
        let schema = portal.schema().await?;
        let listed = if full_ahead {
            Some(list_portal(&portal, linked, mirror_groups).await?)
        } else {
            None
        };
        Ok::<_, PortalError>((portal, schema, listed, started.elapsed()))
    };
    let (read, portal_side) = tokio::join!(read_directory, read_portal);
    let (read, directory_took) = read?;
    // The portal is asked at every cycle, also when nothing concerns it: its discovery
    // says whether it is reachable and takes the credentials (health and alerts rely on
    // that), and costs two small requests made while the directory is read.
    let (portal, schema, listed, portal_took) = portal_side?;
    let side = ReadSide {
        read,
        directory_took,
        portal,
        schema,
        listed,
        portal_took,
        legacy_basis,
        last_scope,
    };
    match loaded {
        Some(loaded) => Ok(Step::Ready(Box::new(
            plan_read(config, options, side, loaded).await?,
        ))),
        None => {
            // One "now" for whether the findings hold and for what the report counts.
            let now = Timestamp::now();
            match standing(config, &side, now) {
                Some(settled) => Ok(Step::Ready(Box::new(stand(config, side, settled, now)))),
                None => Ok(Step::Load(Box::new(side))),
            }
        }
    }
}

/// The last cycle's plan, if it stands: that cycle settled, this read brought nothing,
/// no account expired since, and the scope is the one last synced.
fn standing(config: &Config, side: &ReadSide, now: Timestamp) -> Option<plan::settled::Settled> {
    let changes = side.read.changes.as_ref()?;
    let quiet = changes.changed.is_empty()
        && changes.gone.is_empty()
        && changes.pending.users.is_empty()
        && changes.pending.groups.is_empty();
    let same_scope = side
        .last_scope
        .as_deref()
        .is_none_or(|last| last == config.scope_text());
    let settled = changes.settled.as_ref().and_then(settled_of)?;
    (quiet && same_scope && settled.holds(now)).then_some(settled)
}

/// The settled findings a basis carries (`None` when it carries none it can read).
fn settled_of(json: &serde_json::Value) -> Option<plan::settled::Settled> {
    serde::Deserialize::deserialize(json).ok()
}

/// A cycle whose plan stands ([`standing`]): the last cycle's findings, reported again,
/// without the state's baselines read or a user mapped.
fn stand(
    config: &Config,
    side: ReadSide,
    settled: plan::settled::Settled,
    now: Timestamp,
) -> Prepared {
    let plan_started = Instant::now(); // Timing: the plan.
    let ReadSide {
        read,
        directory_took,
        portal,
        schema,
        portal_took,
        legacy_basis,
        ..
    } = side;
    info!(
        "nothing changed in the directory since a cycle that left nothing to do: its findings stand"
    );
    let plan = settled.plan();
    let phases = Phases {
        directory_read: DirectoryRead {
            ms: millis(directory_took),
            entries: read.snapshot.entries_read,
        },
        portal_read: PortalRead {
            ms: millis(portal_took),
            users: 0,
            groups: 0,
            fetched: 0,
            requests: portal.requests_sent(),
        },
        plan: PlanPhase {
            ms: millis(plan_started.elapsed()),
            changes: 0,
        },
        apply: None,
        record: None,
    };
    Prepared {
        directory: directory_summary(
            config,
            &read,
            now,
            format!("{}; {STANDS}", read.kind.reason()),
        ),
        portal_summary: PortalSummary {
            url: config.portal.url.to_string(),
            users: 0,
            managed: settled.managed,
            listed: false,
            managed_active: settled.managed,
        },
        directory_read: Some(read),
        known: HashMap::new(),
        linked: HashMap::new(),
        phases,
        portal,
        schema,
        may_apply: true,
        legacy_basis,
        planned: Planned::default(),
        deleted_in_portal: Vec::new(),
        settled: Some(settled),
        plan,
    }
}

/// What the report says of the directory `read`, with why it was read so; who is
/// disabled is counted as of the cycle's `now`.
fn directory_summary(
    config: &Config,
    read: &delta::Read,
    now: Timestamp,
    reason: String,
) -> DirectorySummary {
    let snapshot = &read.snapshot;
    DirectorySummary {
        url: config.source.url.to_string(),
        users: snapshot.users.len(),
        disabled: snapshot
            .users
            .iter()
            .filter(|u| u.closure(now).is_some())
            .count(),
        groups: config.source.groups.as_ref().map(|_| snapshot.groups.len()),
        read: read.kind.label().into(),
        read_reason: Some(reason),
        domain_controller: read.identity.clone(),
        entries_read: snapshot.entries_read,
    }
}

/// What the report says of a cycle whose plan stands.
pub const STANDS: &str =
    "nothing changed since a cycle that left nothing to do, so its findings stand \
     (the users were not mapped again)";

/// Plans on what both sides gave.
async fn plan_read(
    config: &Config,
    options: &Options,
    side: ReadSide,
    loaded: Loaded,
) -> Result<Prepared, CycleError> {
    let Loaded {
        known,
        known_groups,
        linked,
    } = loaded;
    let ReadSide {
        mut read,
        directory_took,
        portal,
        schema,
        listed,
        portal_took,
        legacy_basis,
        last_scope,
    } = side;
    // The groups with AD's primary-group members: a copy of the groups where AD's
    // primary groups add some, else none. The snapshot stays as read (the next basis).
    let primary_groups = match read.snapshot.with_primary_group_members() {
        Cow::Owned(groups) => Some(groups),
        Cow::Borrowed(_) => None,
    };

    // One "now" for the whole cycle: expiries pass with time, not with directory changes.
    let now = Timestamp::now();
    let remembrance = Remembrance {
        known: &known,
        known_groups: &known_groups,
        linked: &linked,
    };
    // Timing: what an incremental cycle's changes concern is part of the plan phase.
    let concern_started = Instant::now();
    let incremental = read.changes.as_mut().map(|changes| {
        let groups = primary_groups.as_deref().unwrap_or(&read.snapshot.groups);
        concern_of(
            config,
            (&read.snapshot.users, groups),
            changes,
            &remembrance,
            now,
        )
    });
    let concern_took = concern_started.elapsed();
    // Timing: the portal read goes on here when it had to wait for the directory (a
    // listing after a forced full read, or an incremental cycle's reads by id).
    let view_started = Instant::now();
    let mirror_groups = config.access.portal_groups.is_some();
    let (view, scope, managed_before) = match (incremental, listed) {
        (_, Some(listed)) => (listed, PlanScope::Full, None),
        (None, None) => (
            list_portal(&portal, &linked, mirror_groups).await?,
            PlanScope::Full,
            None,
        ),
        (Some(incremental), None) => {
            read_incremental(config, &portal, incremental, &remembrance).await?
        }
    };
    let portal_timing = PortalRead {
        ms: millis(portal_took + view_started.elapsed()),
        users: view.users.len(),
        groups: view.groups.len(),
        fetched: view.deleted.len(),
        requests: portal.requests_sent(),
    };
    // Timing: the plan, from here to the guards' end, and what the changes concern.
    let plan_started = Instant::now()
        .checked_sub(concern_took)
        .unwrap_or_else(Instant::now);
    plan_and_guard(
        config,
        options,
        Planning {
            known,
            known_groups,
            linked,
            last_scope,
            legacy_basis,
            read,
            primary_groups,
            portal,
            schema,
            view,
            scope,
            managed_before,
            now,
            directory_took,
            portal_timing,
            plan_started,
        },
    )
}

/// The state's memory an incremental cycle looks things up in.
struct Remembrance<'a> {
    known: &'a HashMap<String, plan::Baseline>,
    known_groups: &'a HashMap<String, KnownGroup>,
    linked: &'a HashMap<String, String>,
}

/// What an incremental cycle found the directory's changes concern, and the managed
/// users active as of the last read (what a listing would count, for the closure guard).
struct Incremental {
    concerned: Concerned,
    managed_before: usize,
}

/// The users and groups the directory's `changes` concern ([`concern::concerned`]).
/// The basis in `changes` is used up; what was deleted is kept.
fn concern_of(
    config: &Config,
    (users, groups): (&[DirectoryUser], &[DirectoryGroup]),
    changes: &mut delta::Changes,
    state: &Remembrance<'_>,
    now: Timestamp,
) -> Incremental {
    let rules = plan::effective_rules(&config.mapping, &config.access);
    // The last read's directory with primary-group members; `None` when nothing was
    // read as changed: it is the one read now.
    let mut previous = changes.previous.take();
    if let Some(p) = previous.as_mut() {
        p.add_primary_group_members();
    }
    let previous = previous.as_ref().map(|p| (&p.users[..], &p.groups[..]));
    let before = Timestamp::from_unix(i64::try_from(changes.previous_at).unwrap_or(0));
    let managed_before = previous
        .map_or(users, |(u, _)| u)
        .iter()
        .filter(|u| {
            state
                .known
                .contains_key(plan::folded::lowered(&u.anchor).as_ref())
                && u.closure(before).is_none()
        })
        .count();
    let concerned = concern::concerned(&concern::Input {
        users,
        groups,
        previous,
        now,
        before,
        changed: &changes.changed,
        gone: &changes.gone,
        pending: &changes.pending,
        known: state.known,
        known_groups: state.known_groups,
        rules: &rules,
        access: &config.access,
    });
    Incremental {
        concerned,
        managed_before,
    }
}

/// The portal side of an incremental cycle: the users and groups its changes concern,
/// read one by one, and the plan scope that covers just them (and the managed users
/// active as of the last read, for the closure guard). When so much changed that listing
/// the portal costs less, it is listed and the plan covers everyone.
async fn read_incremental(
    config: &Config,
    portal: &PortalClient,
    incremental: Incremental,
    state: &Remembrance<'_>,
) -> Result<(PortalView, PlanScope, Option<usize>), PortalError> {
    let Incremental {
        concerned,
        managed_before,
    } = incremental;
    if listing_is_cheaper(
        &concerned,
        state.linked,
        state.known.len(),
        state.known_groups.len(),
        config.portal.page_size,
    ) {
        info!(
            users = concerned.users.len(),
            groups = concerned.groups.len(),
            "so much changed that listing the portal costs less than reading each user it concerns"
        );
        let mirror_groups = config.access.portal_groups.is_some();
        let view = list_portal(portal, state.linked, mirror_groups).await?;
        return Ok((view, PlanScope::Full, None));
    }
    info!(
        users = concerned.users.len(),
        groups = concerned.groups.len(),
        "incremental cycle: reading the portal users and groups the changes concern"
    );
    let view = read_concerned(
        portal,
        &concerned,
        state.linked,
        state.known_groups,
        config.portal.concurrency,
    )
    .await?;
    let scope = PlanScope::Only {
        users: concerned
            .users
            .into_iter()
            .filter(|a| !view.unread.users.contains(a))
            .collect(),
        groups: concerned
            .groups
            .into_keys()
            .filter(|a| !view.unread.groups.contains(a))
            .collect(),
    };
    Ok((view, scope, Some(managed_before)))
}

/// What a cycle plans from, once both sides are read.
struct Planning {
    known: HashMap<String, plan::Baseline>,
    known_groups: HashMap<String, KnownGroup>,
    linked: HashMap<String, String>,
    last_scope: Option<String>,
    legacy_basis: bool,
    read: delta::Read,
    /// The groups with primary-group members, when AD's primary groups add some (else
    /// the snapshot's groups are planned with).
    primary_groups: Option<Vec<DirectoryGroup>>,
    portal: PortalClient,
    schema: PortalSchema,
    view: PortalView,
    scope: PlanScope,
    /// Managed users active as of the last read, when the portal was not listed.
    managed_before: Option<usize>,
    now: Timestamp,
    /// Timings of the reads, and when planning started.
    directory_took: Duration,
    portal_timing: PortalRead,
    plan_started: Instant,
}

/// Plans, applies the guards, and makes the cycle ready to apply.
fn plan_and_guard(
    config: &Config,
    options: &Options,
    planning: Planning,
) -> Result<Prepared, CycleError> {
    let Planning {
        known,
        known_groups,
        linked,
        last_scope,
        legacy_basis,
        read,
        primary_groups,
        portal,
        schema,
        view,
        scope,
        managed_before,
        now,
        directory_took,
        portal_timing,
        plan_started,
    } = planning;
    let rules = plan::effective_rules(&config.mapping, &config.access);
    let snapshot = &read.snapshot;
    let groups = primary_groups.as_deref().unwrap_or(&snapshot.groups);
    let PortalView {
        users: portal_users,
        groups: portal_groups,
        deleted,
        unread,
    } = view;

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
        groups,
        access: &config.access,
        portal_groups: &portal_groups,
        known_groups: &known_groups,
        now,
        deleted: &read.deleted(),
        links: &links,
        scope: &scope,
    });
    let mut planned = Planned::of(&plan);
    planned.unread = unread.clone();
    if !unread.users.is_empty() || !unread.groups.is_empty() {
        plan.notes.push(format!(
            "{} portal users and {} portal groups could not be read (the portal failed after the retries): \
             they are planned again next cycle",
            unread.users.len(),
            unread.groups.len()
        ));
    }
    let linked = links.portal_ids;
    // Orphans taken over count as managed users from now on.
    let adopted = plan.orphans.iter().filter(|o| o.adopted).count();
    let managed_now = adopted
        + managed_before.unwrap_or_else(|| {
            portal_users
                .iter()
                .filter(|p| {
                    p.active
                        && p.external_id
                            .as_ref()
                            .is_some_and(|x| known.contains_key(&x.to_ascii_lowercase()))
                })
                .count()
        });
    let limits = guard::Limits {
        max_closures: config.safety.max_closures,
        max_closure_percent: config.safety.max_closure_percent,
        max_access_removals: config.safety.max_access_removals,
        privileged_roles: config.access.keep_one_of.clone(),
        dirsync: guard::invocation(&config.path),
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
                let count = plan.changes.len() + plan.group_changes.len();
                let confirm = format!(
                    "{} sync --accept-scope-change",
                    guard::invocation(&config.path)
                );
                plan.held.push(guard::Held {
                    confirm: Some(confirm.clone()),
                    ..guard::Held::new(
                        guard::HeldKind::ScopeChange,
                        count,
                        "the scope of the last sync".into(),
                        format!(
                            "the directory scope changed since the last sync, so nothing was applied: this run is a plan \
                             (its {count} changes are listed in the report). Review it, then run `{confirm}`.\n{}",
                            scope_diff(&last, &scope)
                        ),
                    )
                });
            }
        }
    }
    let phases = Phases {
        directory_read: DirectoryRead {
            ms: millis(directory_took),
            entries: read.snapshot.entries_read,
        },
        portal_read: portal_timing,
        plan: PlanPhase {
            ms: millis(plan_started.elapsed()),
            changes: plan.changes.len() + plan.group_changes.len(),
        },
        apply: None,
        record: None,
    };
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

    let listed = scope == PlanScope::Full;
    // Linked portal users: counted from the listing in a full reconcile; an incremental
    // cycle lists no portal, so it counts the state's links and cannot tell which of them
    // are active (it says so by counting them all).
    let (managed, managed_active) = if listed {
        let linked_users: Vec<&PortalUser> = portal_users
            .iter()
            .filter(|p| {
                p.external_id
                    .as_ref()
                    .is_some_and(|x| known.contains_key(&x.to_ascii_lowercase()))
            })
            .collect();
        (
            linked_users.len(),
            linked_users.iter().filter(|p| p.active).count(),
        )
    } else {
        (known.len(), known.len())
    };
    let settled = plan::settled::Settled::of(&plan, &scope, &snapshot.users, read.read_at, managed);
    Ok(Prepared {
        known,
        linked,
        phases,
        portal,
        schema,
        directory: directory_summary(config, &read, now, read.kind.reason()),
        directory_read: Some(read),
        legacy_basis,
        planned,
        deleted_in_portal: deleted.into_keys().collect(),
        portal_summary: PortalSummary {
            url: config.portal.url.to_string(),
            users: portal_users.len(),
            managed,
            listed,
            managed_active,
        },
        may_apply,
        settled,
        plan,
    })
}

/// Lists the portal whole (a full reconcile): its users, those the state links that the
/// portal deleted, and the groups when groups are mirrored.
async fn list_portal(
    portal: &PortalClient,
    linked: &HashMap<String, String>,
    mirror_groups: bool,
) -> Result<PortalView, PortalError> {
    let users = portal.list_users().await?;
    let deleted = deleted_in_portal(portal, &users, linked).await?;
    let groups = if mirror_groups {
        portal.list_groups().await?
    } else {
        Vec::new()
    };
    Ok(PortalView {
        users,
        groups,
        deleted,
        unread: Pending::default(),
    })
}

/// Whether reading the concerned users and groups one by one would cost the portal more
/// than listing it. Both go `portal.concurrency` requests at a time, so what counts is
/// what the portal does: a read by id is one request for one resource; a listing is a
/// request per page, and every resource on a page costs about a tenth of a read
/// (scim2-server: 5-20 ms a read by id, 1.2 ms a user on a page, with pages of 100 or
/// of 1000). A page is not a fixed number of reads: counted as two, pages of 1000 made
/// 110 changed users out of 10,000 list the portal (17 s) instead of reading them (1 s).
/// Listing must cost half as much before it is chosen, and a change that needs at most
/// [`ALWAYS_BY_ID`] reads is always read by id: a listing also makes the plan cover
/// everyone (reverting portal edits of directory-owned fields before the next full
/// reconcile), which should not depend on how small the portal is. The portal holds at
/// least the `managed` users and `groups`.
fn listing_is_cheaper(
    concerned: &Concerned,
    linked: &HashMap<String, String>,
    managed: usize,
    groups: usize,
    page_size: usize,
) -> bool {
    /// Resources on a page that cost the portal as much as one read by id.
    const LISTED_PER_READ: usize = 10;
    let lookups = concerned
        .logins
        .keys()
        .filter(|a| !linked.contains_key(*a))
        .count();
    // A group planned from what the last cycle left costs no read.
    let groups_read = concerned
        .groups
        .keys()
        .filter(|a| !concerned.left.contains_key(*a))
        .count();
    let reads = concerned.users.len() + 2 * lookups + 2 * groups_read;
    let page_size = page_size.max(1);
    let pages = managed / page_size + 1 + groups / page_size + 1;
    reads > ALWAYS_BY_ID && reads > 2 * (pages + (managed + groups) / LISTED_PER_READ)
}

/// Reads by id an incremental cycle makes without weighing a listing instead.
const ALWAYS_BY_ID: usize = 100;

/// Reads what an incremental cycle plans with, and nothing else: each concerned user the
/// state links, by id (its values and ETag; a 404 means deleted in the portal); those it
/// does not link, and those deleted in the portal, looked up by login and by email (to
/// adopt or relink rather than create twice); each concerned mirrored group, by id when
/// dirsync knows it, else looked up by externalId and name. At most `concurrency`
/// requests at once.
async fn read_concerned(
    portal: &PortalClient,
    concerned: &Concerned,
    linked: &HashMap<String, String>,
    known_groups: &HashMap<String, KnownGroup>,
    concurrency: usize,
) -> Result<PortalView, PortalError> {
    let concurrency = concurrency.max(1);
    // A transient failure (after the retries) leaves that one user or group unread; one
    // that would fail every request (credentials, TLS, not SCIM) fails the cycle.
    let unreadable = |e: PortalError| if e.is_fatal() { Err(e) } else { Ok(e) };
    let mut unread = Pending::default();
    let by_id: Vec<_> = concerned
        .users
        .iter()
        .filter_map(|a| linked.get(a).map(|id| (a, id)))
        .map(|(anchor, id)| async move { (anchor, id, portal.get_user(id).await) })
        .collect();
    let fetched: Vec<_> = stream::iter(by_id)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut users: Vec<PortalUser> = Vec::new();
    let mut deleted: HashMap<String, String> = HashMap::new();
    for (anchor, id, result) in fetched {
        match result {
            Ok(user) => users.push(user),
            Err(PortalError::NotFound) => {
                warn!(
                    anchor,
                    id, "a managed portal user was deleted in the portal"
                );
                deleted.insert(anchor.clone(), id.clone());
            }
            Err(e) => {
                let e = unreadable(e)?;
                warn!(anchor, id, error = %e, "a portal user could not be read; it is planned next cycle");
                unread.users.insert(anchor.clone());
            }
        }
    }

    let lookups: Vec<_> = concerned
        .logins
        .iter()
        .filter(|(anchor, _)| !linked.contains_key(*anchor) || deleted.contains_key(*anchor))
        .map(|(anchor, login)| async move {
            let found = match portal.find_users(login).await {
                Ok(mut found) => portal.find_users_by_email(login).await.map(|more| {
                    found.extend(more);
                    found
                }),
                Err(e) => Err(e),
            };
            (anchor, login, found)
        })
        .collect();
    let looked_up: Vec<_> = stream::iter(lookups)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (anchor, login, found) in looked_up {
        match found {
            Ok(found) => users.extend(found),
            Err(e) => {
                let e = unreadable(e)?;
                warn!(anchor, login, error = %e, "a portal user could not be looked up; it is planned next cycle");
                unread.users.insert(anchor.clone());
            }
        }
    }

    // A group the last cycle left as the directory then asked is planned from that and
    // the links, unread, unless one of its members was found deleted in the portal.
    let mut groups: Vec<PortalGroup> = Vec::new();
    let mut to_read: Vec<(&String, &String)> = Vec::new();
    for (anchor, name) in &concerned.groups {
        let left = concerned
            .left
            .get(anchor)
            .filter(|(_, members)| !members.iter().any(|m| deleted.contains_key(m)));
        match (left, known_groups.get(anchor)) {
            (Some((left_name, members)), Some(known)) => groups.push(PortalGroup {
                id: known.portal_id.clone(),
                display_name: left_name.clone(),
                external_id: Some(anchor.clone()),
                members: members
                    .iter()
                    .filter_map(|m| linked.get(m).cloned())
                    .collect(),
            }),
            _ => to_read.push((anchor, name)),
        }
    }
    if !groups.is_empty() {
        info!(
            groups = groups.len(),
            "mirrored groups planned from the members the last cycle left, without reading them"
        );
    }
    let group_reads: Vec<_> = to_read
        .into_iter()
        .map(|(anchor, name)| async move {
            let found = async {
                if let Some(known) = known_groups.get(anchor) {
                    match portal.get_group(&known.portal_id).await {
                        Ok(g) => return Ok(vec![g]),
                        Err(PortalError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
                let mut found = portal.find_groups(GroupKey::ExternalId, anchor).await?;
                if !name.is_empty() {
                    found.extend(portal.find_groups(GroupKey::DisplayName, name).await?);
                }
                Ok(found)
            }
            .await;
            (anchor, found)
        })
        .collect();
    let group_results: Vec<_> = stream::iter(group_reads)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (anchor, found) in group_results {
        match found {
            Ok(found) => groups.extend(found),
            Err(e) => {
                let e = unreadable(e)?;
                warn!(anchor, error = %e, "a portal group could not be read; it is planned next cycle");
                unread.groups.insert(anchor.clone());
            }
        }
    }

    let mut seen = HashSet::new();
    users.retain(|u| seen.insert(u.id.clone()));
    let mut seen = HashSet::new();
    groups.retain(|g| seen.insert(g.id.clone()));
    Ok(PortalView {
        users,
        groups,
        deleted,
        unread,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `users` changed users, all linked, and `groups` mirrored groups they are in.
    fn changed(users: usize, groups: usize) -> (Concerned, HashMap<String, String>) {
        let mut concerned = Concerned::default();
        let mut linked = HashMap::new();
        for i in 0..users {
            let anchor = format!("anchor-{i}");
            concerned
                .logins
                .insert(anchor.clone(), format!("u{i}@example.com"));
            linked.insert(anchor.clone(), format!("id-{i}"));
            concerned.users.insert(anchor);
        }
        for i in 0..groups {
            concerned
                .groups
                .insert(format!("group-{i}"), format!("Group {i}"));
        }
        (concerned, linked)
    }

    #[test]
    fn a_few_changed_users_are_read_by_id_whatever_the_page_size() {
        // The bench's incremental cycle: 110 users and 38 mirrored groups of 10,000 and 201.
        let (concerned, linked) = changed(110, 38);
        for page_size in [100, 1000] {
            assert!(
                !listing_is_cheaper(&concerned, &linked, 10_000, 201, page_size),
                "pages of {page_size}"
            );
        }
    }

    #[test]
    fn a_small_portal_is_not_listed_for_a_few_changes() {
        // Listing 5 users would cost the portal less than 12 reads, but the plan would then
        // cover everyone.
        let (concerned, linked) = changed(8, 2);
        assert!(!listing_is_cheaper(&concerned, &linked, 5, 2, 100));
    }

    #[test]
    fn the_portal_is_listed_once_a_large_part_of_it_changed() {
        let (concerned, linked) = changed(4_000, 50);
        for page_size in [100, 1000] {
            assert!(
                listing_is_cheaper(&concerned, &linked, 10_000, 201, page_size),
                "pages of {page_size}"
            );
        }
        // Users it does not link are looked up twice (login and email): fewer tip it.
        let (mut concerned, _) = changed(1_200, 0);
        assert!(!listing_is_cheaper(
            &concerned,
            &linked_all(&concerned),
            10_000,
            201,
            1000
        ));
        concerned.users.clear();
        assert!(listing_is_cheaper(
            &concerned,
            &HashMap::new(),
            10_000,
            201,
            1000
        ));
    }

    fn linked_all(concerned: &Concerned) -> HashMap<String, String> {
        concerned
            .users
            .iter()
            .map(|a| (a.clone(), format!("id-{a}")))
            .collect()
    }
}
