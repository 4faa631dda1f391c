//! Apply: carries out a [`Plan`] against the portal and records each confirmed change in
//! the state store. One user's failure never stops the others; only an error that would
//! fail every request (bad token, not a SCIM endpoint) stops the run.

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tracing::{info, warn};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::mapping::Rule;
use crate::plan::groups::Member;
use crate::plan::{self, Action, Change, GroupAction, Plan};
use crate::portal::{PortalClient, PortalError, PortalSchema, USER_SCHEMA};
use crate::state::{State, StateError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The portal confirmed the change.
    Applied,
    /// The portal refused this user's data (400, 409, …): fix the entry; not retried as is.
    Rejected,
    /// A transient failure; the change is planned again next cycle.
    Failed,
    /// The run stopped before this change.
    NotAttempted,
}

impl Status {
    /// How a portal error counts: the portal refusing the data is `Rejected` (fix the
    /// entry); anything else is `Failed` (planned again next cycle).
    fn of(e: &PortalError) -> Status {
        match e {
            PortalError::Rejected { .. } | PortalError::NotTakenOver(_) => Status::Rejected,
            _ => Status::Failed,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What happened to each change of the plan, in plan order.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcomes: Vec<Outcome>,
    /// What happened to each group change, in plan order.
    pub group_outcomes: Vec<Outcome>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
}

/// Why applying stopped; the state store failing means the daemon could lose track.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the planner needs to plan a change again after a `412`.
pub struct Replan<'a> {
    pub rules: &'a [Rule],
    pub schema: &'a PortalSchema,
    /// Changes in flight at once.
    pub concurrency: usize,
    /// Stop after this many failures in a row.
    pub max_consecutive_failures: usize,
}

/// What applying has done so far. It lives outside the apply future, so a cycle stopped
/// hard (its in-flight requests abandoned) still reports every outcome it saw.
#[derive(Debug, Default)]
pub struct Progress {
    outcomes: Mutex<Vec<Option<Outcome>>>,
    group_outcomes: Mutex<Vec<Option<Outcome>>>,
    aborted: Mutex<Option<String>>,
}

impl Progress {
    pub fn new(plan: &Plan) -> Progress {
        Progress {
            outcomes: Mutex::new(vec![None; plan.changes.len()]),
            group_outcomes: Mutex::new(vec![None; plan.group_changes.len()]),
            aborted: Mutex::new(None),
        }
    }

    fn set(&self, i: usize, outcome: Outcome) {
        if let Some(slot) = lock(&self.outcomes).get_mut(i) {
            *slot = Some(outcome);
        }
    }

    fn set_group(&self, i: usize, outcome: Outcome) {
        if let Some(slot) = lock(&self.group_outcomes).get_mut(i) {
            *slot = Some(outcome);
        }
    }

    fn abort(&self, why: String) {
        let mut a = lock(&self.aborted);
        if a.is_none() {
            *a = Some(why);
        }
    }

    /// What happened, in plan order. A change without an outcome was never answered:
    /// `NotAttempted`, with `unfinished` as the reason the run stopped, if it did.
    pub fn applied(&self, unfinished: Option<&str>) -> Applied {
        let finish = |v: &Vec<Option<Outcome>>| -> Vec<Outcome> {
            v.iter()
                .map(|o| {
                    o.clone().unwrap_or(Outcome {
                        status: Status::NotAttempted,
                        message: unfinished.map(str::to_string),
                    })
                })
                .collect()
        };
        let outcomes = finish(&lock(&self.outcomes));
        let group_outcomes = finish(&lock(&self.group_outcomes));
        let mut aborted = lock(&self.aborted).clone();
        if let Some(why) = unfinished {
            aborted.get_or_insert_with(|| why.to_string());
        }
        Applied {
            outcomes,
            group_outcomes,
            aborted,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies the plan, writing each outcome into `progress` as it comes. `stop`: start no
/// new change once it is cancelled (a shutdown); changes in flight finish.
pub async fn apply(
    plan: &Plan,
    portal: &PortalClient,
    state: &mut State,
    replan: &Replan<'_>,
    stop: &CancellationToken,
    progress: &Progress,
) -> Result<(), ApplyError> {
    // Orphans taken over (`--adopt-orphans`) are managed from now on, never synced yet;
    // closures planned for them follow below or, if a guard held them, once confirmed.
    for o in plan.orphans.iter().filter(|o| o.adopted) {
        blocking(|| {
            state.record(
                &o.external_id,
                &o.portal_id,
                &o.user_name,
                &plan::Baseline::new(),
            )
        })?;
    }
    let state = Mutex::new(state);
    let run = Run {
        consecutive_failures: AtomicUsize::new(0),
        stop: Mutex::new(None),
        max_failures: replan.max_consecutive_failures,
        shutdown: stop,
    };
    // Bounded concurrency; each change records its own outcome in the state as soon as
    // the portal confirms it, so an interruption loses nothing that happened.
    // The futures are made first and then driven (not made by a closure inside the
    // stream), so the cycle stays `Send` for the daemon's task (rust-lang/rust#102211).
    let (state_ref, run_ref) = (&state, &run);
    let changes: Vec<_> = plan
        .changes
        .iter()
        .enumerate()
        .map(|(i, change)| async move {
            let outcome = apply_guarded(change, portal, state_ref, replan, run_ref).await?;
            progress.set(i, outcome);
            Ok::<(), StateError>(())
        })
        .collect();
    let results: Vec<Result<(), StateError>> = stream::iter(changes)
        .buffer_unordered(replan.concurrency.max(1))
        .collect()
        .await;
    if let Some(why) = run.stop.lock().map(|s| s.clone()).unwrap_or(None) {
        progress.abort(why);
    }
    for r in results {
        r?;
    }
    let state = state.into_inner().unwrap_or_else(|p| p.into_inner());
    apply_groups(plan, portal, state, &run, progress).await?;
    if let Some(why) = run.stop.lock().map(|s| s.clone()).unwrap_or(None) {
        progress.abort(why);
    }
    Ok(())
}

/// Runs a short synchronous state write off the async worker threads (the runtime hands
/// its other tasks to another thread meanwhile); directly on a single-threaded runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Shared by the changes of one run: when to stop.
struct Run<'a> {
    consecutive_failures: AtomicUsize,
    stop: Mutex<Option<String>>,
    max_failures: usize,
    /// Cancelled when dirsync is asked to stop: no new change starts.
    shutdown: &'a CancellationToken,
}

/// Why changes were not attempted after a shutdown was asked for.
const SHUTDOWN: &str =
    "dirsync was asked to stop: changes not started yet are planned again next cycle";

impl Run<'_> {
    fn stopped(&self) -> bool {
        if self.shutdown.is_cancelled() {
            self.stop_with(SHUTDOWN.to_string());
        }
        self.stop.lock().map(|s| s.is_some()).unwrap_or(true)
    }

    fn stop_with(&self, why: String) {
        if let Ok(mut s) = self.stop.lock() {
            if s.is_none() {
                *s = Some(why);
            }
        }
    }
}

async fn apply_guarded(
    change: &Change,
    portal: &PortalClient,
    state: &Mutex<&mut State>,
    replan: &Replan<'_>,
    run: &Run<'_>,
) -> Result<Outcome, StateError> {
    if run.stopped() {
        return Ok(Outcome {
            status: Status::NotAttempted,
            message: None,
        });
    }
    Ok(match apply_one(change, portal, state, replan).await {
        Ok(message) => {
            run.consecutive_failures.store(0, Ordering::Relaxed);
            info!(action = change.action.label(), user = %change.user_name, "applied");
            Outcome {
                status: Status::Applied,
                message,
            }
        }
        Err(Failure::State(e)) => {
            run.stop_with(e.to_string());
            return Err(e);
        }
        Err(Failure::Portal(e)) => {
            warn!(action = change.action.label(), user = %change.user_name, error = %e, "change not applied");
            if e.is_fatal() {
                run.stop_with(e.to_string());
            }
            let status = Status::of(&e);
            if status == Status::Failed {
                let n = run.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= run.max_failures {
                    run.stop_with(format!(
                        "stopped after {n} portal failures in a row (safety.max_consecutive_failures); last: {e}"
                    ));
                }
            } else {
                run.consecutive_failures.store(0, Ordering::Relaxed);
            }
            let message = match e {
                PortalError::PreconditionFailed => "the portal user changed again while it was being updated \
                                                    (HTTP 412 twice); it is planned again next cycle"
                    .to_string(),
                e => e.to_string(),
            };
            Outcome {
                status,
                message: Some(message),
            }
        }
    })
}

/// Group changes, after the users: members are resolved to portal ids now, so users
/// created in this cycle can be members.
async fn apply_groups(
    plan: &Plan,
    portal: &PortalClient,
    state: &mut State,
    run: &Run<'_>,
    progress: &Progress,
) -> Result<(), ApplyError> {
    if plan.group_changes.is_empty() {
        return Ok(());
    }
    let ids = blocking(|| state.portal_ids())?;
    let known = blocking(|| state.groups())?;
    for (i, gc) in plan.group_changes.iter().enumerate() {
        if run.stopped() {
            progress.set_group(
                i,
                Outcome {
                    status: Status::NotAttempted,
                    message: None,
                },
            );
            continue;
        }
        let mut missing = Vec::new();
        let mut resolve = |m: &Member| {
            let id = m.portal_id.clone().or_else(|| {
                m.anchor
                    .as_ref()
                    .and_then(|a| ids.get(&a.to_ascii_lowercase()).cloned())
            });
            if id.is_none() {
                missing.push(m.user_name.clone());
            }
            id
        };
        // Ok(Ok(note)) applied, Ok(Err(e)) refused or failed, Err(e) the state failed.
        let result: Result<Result<Option<String>, PortalError>, StateError> = match gc.action {
            GroupAction::Create => {
                let members: Vec<String> = gc.add.iter().filter_map(&mut resolve).collect();
                match portal.create_group(&gc.name, &gc.anchor, &members).await {
                    Ok(created) => blocking(|| state.record_group(&gc.anchor, &created.id, &gc.name, true))
                        .map(|_| {
                            Ok(created.found_after_lost_answer.then(|| {
                                "the answer to the create was lost; the group it made was found by its externalId and taken over"
                                    .to_string()
                            }))
                        }),
                    Err(e) => Ok(Err(e)),
                }
            }
            GroupAction::Update => {
                let id = gc.portal_id.clone().unwrap_or_default();
                let created = gc.take_over
                    || known
                        .get(&gc.anchor.to_ascii_lowercase())
                        .is_some_and(|k| k.created);
                let mut ops = Vec::new();
                if let Some((_, new)) = &gc.rename {
                    ops.push(json!({"op": "replace", "path": "displayName", "value": new}));
                }
                let add: Vec<Json> = gc
                    .add
                    .iter()
                    .filter_map(&mut resolve)
                    .map(|v| json!({"value": v}))
                    .collect();
                if !add.is_empty() {
                    ops.push(json!({"op": "add", "path": "members", "value": add}));
                }
                for m in &gc.remove {
                    if let Some(v) = &m.portal_id {
                        ops.push(
                            json!({"op": "remove", "path": format!("members[value eq \"{v}\"]")}),
                        );
                    }
                }
                let had_ops = !ops.is_empty();
                let patched = if had_ops {
                    portal.patch_group(&id, ops).await
                } else {
                    Ok(())
                };
                match patched {
                    Ok(()) if had_ops || gc.take_over => {
                        blocking(|| state.record_group(&gc.anchor, &id, &gc.name, created))
                            .map(|_| Ok(None))
                    }
                    Ok(()) => Ok(Ok(None)),
                    Err(e) => Ok(Err(e)),
                }
            }
            GroupAction::Delete => {
                let id = gc.portal_id.clone().unwrap_or_default();
                match portal.delete_group(&id).await {
                    Ok(()) | Err(PortalError::NotFound) => {
                        blocking(|| state.forget_group(&gc.anchor)).map(|_| Ok(None))
                    }
                    Err(e) => Ok(Err(e)),
                }
            }
        };
        let outcome = match result? {
            Ok(note) => Outcome {
                status: Status::Applied,
                message: [
                    note,
                    (!missing.is_empty()).then(|| {
                        format!(
                            "not added (not in the portal yet; next cycle): {}",
                            missing.join(", ")
                        )
                    }),
                ]
                .into_iter()
                .flatten()
                .reduce(|a, b| format!("{a}; {b}")),
            },
            Err(e) => {
                warn!(group = %gc.name, error = %e, "group change not applied");
                if e.is_fatal() {
                    run.stop_with(e.to_string());
                }
                Outcome {
                    status: Status::of(&e),
                    message: Some(e.to_string()),
                }
            }
        };
        progress.set_group(i, outcome);
    }
    Ok(())
}

enum Failure {
    Portal(PortalError),
    State(StateError),
}

impl From<PortalError> for Failure {
    fn from(e: PortalError) -> Self {
        Failure::Portal(e)
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        Failure::State(e)
    }
}

/// Applies one change; `Ok(Some(note))` when it had to be planned again on the way.
async fn apply_one(
    change: &Change,
    portal: &PortalClient,
    state: &Mutex<&mut State>,
    replan: &Replan<'_>,
) -> Result<Option<String>, Failure> {
    let id = match change.action {
        Action::Create => return create(change, portal, state).await,
        _ => change.portal_id.as_deref().unwrap_or_default(),
    };
    let mut note = None;
    let done = match portal
        .patch_user(id, patch_operations(change), change.version.as_deref())
        .await
    {
        Ok(_) => change.clone(),
        Err(PortalError::PreconditionFailed) => {
            // Someone edited the user in the portal after we read it. Read it again and
            // plan this user again under the same rules, so that edit is not overwritten.
            let fresh = portal.get_user(id).await?;
            match plan::replan(change, &fresh, replan.rules, replan.schema) {
                None => {
                    note = Some(
                        "the portal user changed meanwhile (HTTP 412); re-read: nothing left to do"
                            .to_string(),
                    );
                    Change {
                        fields: Vec::new(),
                        ..change.clone()
                    }
                }
                Some(again) => {
                    portal
                        .patch_user(id, patch_operations(&again), again.version.as_deref())
                        .await?;
                    note = Some(format!(
                        "the portal user changed meanwhile (HTTP 412); re-read and re-planned: {} applied",
                        again.fields.iter().map(|f| f.path.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                    again
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    if done.dn.is_some() && done.action != Action::Close {
        write_state(state, |s| {
            s.record(&done.anchor, id, &done.user_name, &done.baseline)
        })?;
    }
    Ok(note)
}

/// Creates a user. A `409` (the login exists) is most often our own earlier create whose
/// answer was lost to a timeout or a reset: the user is looked up and taken over instead
/// of failing, so a retried create never duplicates anyone.
async fn create(
    change: &Change,
    portal: &PortalClient,
    state: &Mutex<&mut State>,
) -> Result<Option<String>, Failure> {
    match portal.create_user(create_body(change)).await {
        Ok(created) => {
            write_state(state, |s| {
                s.record(
                    &change.anchor,
                    &created.id,
                    &created.user_name,
                    &change.baseline,
                )
            })?;
            Ok(None)
        }
        Err(PortalError::Rejected {
            status: 409,
            detail,
            ..
        }) => {
            // Only the portal user this create would have made is taken over: the same
            // login (`find_users` checks what the portal answers, as it may ignore the
            // filter), and no externalId or this user's own.
            let found = portal.find_users(&change.user_name).await?;
            let refuse = |why: String| Err(Failure::Portal(PortalError::NotTakenOver(why)));
            let u = match found.as_slice() {
                [u] => u,
                [] => {
                    let why = format!(
                        "HTTP 409 ({detail}), but the portal has no user {} to take over; \
                         not created",
                        change.user_name
                    );
                    return refuse(why);
                }
                many => {
                    let ids: Vec<&str> = many.iter().map(|u| u.id.as_str()).collect();
                    return refuse(format!(
                        "HTTP 409, and {} portal users have the login {} ({}); none is taken over",
                        many.len(),
                        change.user_name,
                        ids.join(", ")
                    ));
                }
            };
            match u.external_id.as_deref() {
                Some(x) if x.eq_ignore_ascii_case(&change.anchor) => {
                    write_state(state, |s| s.record(&change.anchor, &u.id, &u.user_name, &change.baseline))?;
                    Ok(Some("HTTP 409: the user already existed with this anchor (an earlier create whose answer was lost); taken over".into()))
                }
                None => {
                    let op = json!({"op": "replace", "path": "externalId", "value": change.anchor});
                    portal
                        .patch_user(&u.id, vec![op], u.version.as_deref())
                        .await?;
                    // Nothing is known to be synced: the next cycle brings every attribute in line.
                    write_state(state, |s| s.record(
                        &change.anchor,
                        &u.id,
                        &u.user_name,
                        &Default::default(),
                    ))?;
                    Ok(Some("HTTP 409: a user with this login already existed; adopted, its attributes follow next cycle".into()))
                }
                Some(other) => refuse(format!(
                    "HTTP 409: the portal user {} (id {}) carries externalId {other}, not this user's {}; \
                     it is not taken over",
                    u.user_name, u.id, change.anchor
                )),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The state, for one short synchronous write. A poisoned lock (a panic elsewhere) still
/// holds a consistent database: every write is its own transaction.
fn locked<'a, 'b>(state: &'a Mutex<&'b mut State>) -> std::sync::MutexGuard<'a, &'b mut State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// One synchronous state write under the lock, off the async worker threads.
fn write_state<T>(state: &Mutex<&mut State>, f: impl FnOnce(&mut State) -> T) -> T {
    blocking(|| f(&mut locked(state)))
}

/// The resource a create POSTs: the mapped attributes, the anchor as `externalId`, active.
pub fn create_body(change: &Change) -> Json {
    let mut resource = Map::new();
    let mut schemas = vec![USER_SCHEMA.to_string()];
    for field in &change.fields {
        if let Some(value) = &field.new {
            field.path.set(&mut resource, value);
            if let Some(urn) = &field.path.schema {
                if !schemas.iter().any(|s| s.eq_ignore_ascii_case(urn)) {
                    schemas.push(urn.clone());
                }
            }
        }
    }
    resource.insert("schemas".into(), json!(schemas));
    resource.insert("externalId".into(), json!(change.anchor));
    resource.insert("active".into(), json!(true));
    Json::Object(resource)
}

/// The PATCH operations of an update, reactivation or closure: only what changed.
pub fn patch_operations(change: &Change) -> Vec<Json> {
    let mut ops: Vec<Json> = change
        .fields
        .iter()
        .map(|f| f.path.patch_op(f.old.as_ref(), f.new.as_ref()))
        .collect();
    if let Some(active) = change.set_active {
        ops.push(json!({"op": "replace", "path": "active", "value": active}));
    }
    ops
}
