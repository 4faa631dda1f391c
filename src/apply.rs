//! Apply: carries out a [`Plan`] against the portal and records each confirmed change in
//! the state store, through a [`Writer`] that commits them in batches off the async
//! tasks. One user's failure never stops the others; only an error that would fail every
//! request (bad token, not a SCIM endpoint) or a failing state stops the run.

mod writer;

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tracing::{info, warn};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::mapping::Rule;
use crate::plan::groups::Member;
use crate::plan::{self, Action, Baseline, Change, GroupAction, Plan};
use crate::portal::{PortalClient, PortalError, PortalSchema, USER_SCHEMA};
use crate::state::StateError;

pub use writer::{Link, Writer};

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
        Progress::sized(plan.changes.len(), plan.group_changes.len())
    }

    fn sized(changes: usize, group_changes: usize) -> Progress {
        Progress {
            outcomes: Mutex::new(vec![None; changes]),
            group_outcomes: Mutex::new(vec![None; group_changes]),
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

/// Applies the plan, writing each outcome into `progress` as it comes: at once for a
/// change that records nothing, else once `writer` committed its link. `stop`: start no
/// new change once it is cancelled (a shutdown); changes in flight finish. A failing
/// state write stops the run too; [`Writer::finish`] gives its error.
pub async fn apply(
    plan: &Plan,
    portal: &PortalClient,
    writer: &Writer,
    replan: &Replan<'_>,
    stop: &CancellationToken,
    progress: &Progress,
) -> Result<(), ApplyError> {
    // Orphans taken over (`--adopt-orphans`) are managed from now on, never synced yet;
    // closures planned for them follow below or, if a guard held them, once confirmed.
    for o in plan.orphans.iter().filter(|o| o.adopted) {
        let link = Link {
            anchor: o.external_id.clone(),
            portal_id: o.portal_id.clone(),
            user_name: o.user_name.clone(),
            baseline: Baseline::new(),
        };
        writer.link(link, None);
    }
    let run = Run {
        consecutive_failures: AtomicUsize::new(0),
        stop: Mutex::new(None),
        max_failures: replan.max_consecutive_failures,
        shutdown: stop,
        writer,
    };
    // Bounded concurrency; each change hands its link to the writer as soon as the
    // portal confirms it, and the next change starts meanwhile.
    // The futures are made first and then driven (not made by a closure inside the
    // stream), so the cycle stays `Send` for the daemon's task (rust-lang/rust#102211).
    let run_ref = &run;
    let changes: Vec<_> = plan
        .changes
        .iter()
        .enumerate()
        .map(|(i, change)| async move {
            match apply_guarded(change, portal, replan, run_ref).await {
                (outcome, Some(link)) => writer.link(link, Some((i, outcome))),
                (outcome, None) => progress.set(i, outcome),
            }
        })
        .collect();
    stream::iter(changes)
        .buffer_unordered(replan.concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    if let Some(why) = run.stop.lock().map(|s| s.clone()).unwrap_or(None) {
        progress.abort(why);
    }
    apply_groups(plan, portal, writer, &run, progress).await?;
    if let Some(why) = run.stop.lock().map(|s| s.clone()).unwrap_or(None) {
        progress.abort(why);
    }
    Ok(())
}

/// Runs a short synchronous state access off the async worker threads (the runtime hands
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
    /// Fails once a state write failed: no new change starts either.
    writer: &'a Writer,
}

/// Why changes were not attempted after a shutdown was asked for.
const SHUTDOWN: &str =
    "dirsync was asked to stop: changes not started yet are planned again next cycle";

impl Run<'_> {
    fn stopped(&self) -> bool {
        if let Some(why) = self.writer.failure() {
            self.stop_with(why);
        }
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

/// Applies one change unless the run stopped: its outcome, and the link to record
/// before the outcome counts, if it has one.
async fn apply_guarded(
    change: &Change,
    portal: &PortalClient,
    replan: &Replan<'_>,
    run: &Run<'_>,
) -> (Outcome, Option<Link>) {
    if run.stopped() {
        let outcome = Outcome {
            status: Status::NotAttempted,
            message: None,
        };
        return (outcome, None);
    }
    match apply_one(change, portal, replan).await {
        Ok((message, link)) => {
            run.consecutive_failures.store(0, Ordering::Relaxed);
            info!(action = change.action.label(), user = %change.user_name, "applied");
            let outcome = Outcome {
                status: Status::Applied,
                message,
            };
            (outcome, link)
        }
        Err(e) => {
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
            let outcome = Outcome {
                status,
                message: Some(message),
            };
            (outcome, None)
        }
    }
}

/// Group changes, after the users: members are resolved to portal ids now, so users
/// created in this cycle can be members.
async fn apply_groups(
    plan: &Plan,
    portal: &PortalClient,
    writer: &Writer,
    run: &Run<'_>,
    progress: &Progress,
) -> Result<(), ApplyError> {
    if plan.group_changes.is_empty() {
        return Ok(());
    }
    // After the users' links are committed.
    let ids = writer.call(|s| s.portal_ids()).await?;
    let known = writer.call(|s| s.groups()).await?;
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
                    Ok(created) => writer.call(record_group(gc, &created.id, true))
                        .await
                        .map(|()| {
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
                    Ok(()) if had_ops || gc.take_over => writer
                        .call(record_group(gc, &id, created))
                        .await
                        .map(|()| Ok(None)),
                    Ok(()) => Ok(Ok(None)),
                    Err(e) => Ok(Err(e)),
                }
            }
            GroupAction::Delete => {
                let id = gc.portal_id.clone().unwrap_or_default();
                match portal.delete_group(&id).await {
                    Ok(()) | Err(PortalError::NotFound) => {
                        let anchor = gc.anchor.clone();
                        writer
                            .call(move |s| s.forget_group(&anchor))
                            .await
                            .map(|()| Ok(None))
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

/// The state write that records a mirrored group the portal confirmed.
fn record_group(
    gc: &plan::GroupChange,
    portal_id: &str,
    created: bool,
) -> impl FnOnce(&mut crate::state::State) -> Result<(), StateError> + Send + 'static {
    let (anchor, portal_id, name) = (gc.anchor.clone(), portal_id.to_string(), gc.name.clone());
    move |s| s.record_group(&anchor, &portal_id, &name, created)
}

/// What a confirmed change leaves to record: a note when it had to be planned again on
/// the way (or took a user over), and the link to record, if it has one.
type Confirmed = (Option<String>, Option<Link>);

/// Applies one change.
async fn apply_one(
    change: &Change,
    portal: &PortalClient,
    replan: &Replan<'_>,
) -> Result<Confirmed, PortalError> {
    let id = match change.action {
        Action::Create => return create(change, portal).await,
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
        Err(e) => return Err(e),
    };
    let link = (done.dn.is_some() && done.action != Action::Close).then(|| Link {
        portal_id: id.to_string(),
        anchor: done.anchor,
        user_name: done.user_name,
        baseline: done.baseline,
    });
    Ok((note, link))
}

/// Creates a user. A `409` (the login exists) is most often our own earlier create whose
/// answer was lost to a timeout or a reset: the user is looked up and taken over instead
/// of failing, so a retried create never duplicates anyone.
async fn create(change: &Change, portal: &PortalClient) -> Result<Confirmed, PortalError> {
    let link = |portal_id: &str, user_name: &str, baseline: &Baseline| Link {
        anchor: change.anchor.clone(),
        portal_id: portal_id.to_string(),
        user_name: user_name.to_string(),
        baseline: baseline.clone(),
    };
    match portal.create_user(create_body(change)).await {
        Ok(created) => Ok((
            None,
            Some(link(&created.id, &created.user_name, &change.baseline)),
        )),
        Err(PortalError::Rejected {
            status: 409,
            detail,
            ..
        }) => {
            // Only the portal user this create would have made is taken over: the same
            // login (`find_users` checks what the portal answers, as it may ignore the
            // filter), and no externalId or this user's own.
            let found = portal.find_users(&change.user_name).await?;
            let refuse = |why: String| Err(PortalError::NotTakenOver(why));
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
                Some(x) if x.eq_ignore_ascii_case(&change.anchor) => Ok((
                    Some("HTTP 409: the user already existed with this anchor (an earlier create whose answer was lost); taken over".into()),
                    Some(link(&u.id, &u.user_name, &change.baseline)),
                )),
                None => {
                    let op = json!({"op": "replace", "path": "externalId", "value": change.anchor});
                    portal
                        .patch_user(&u.id, vec![op], u.version.as_deref())
                        .await?;
                    // Nothing is known to be synced: the next cycle brings every attribute in line.
                    Ok((
                        Some("HTTP 409: a user with this login already existed; adopted, its attributes follow next cycle".into()),
                        Some(link(&u.id, &u.user_name, &Baseline::new())),
                    ))
                }
                Some(other) => refuse(format!(
                    "HTTP 409: the portal user {} (id {}) carries externalId {other}, not this user's {}; \
                     it is not taken over",
                    u.user_name, u.id, change.anchor
                )),
            }
        }
        Err(e) => Err(e),
    }
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
