//! Apply: carries out a [`Plan`] against the portal and records each confirmed change in
//! the state store. One user's failure never stops the others; only an error that would
//! fail every request (bad token, not a SCIM endpoint) stops the run.

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tracing::{info, warn};

use crate::plan::{Action, Change, Plan};
use crate::portal::{PortalClient, PortalError, USER_SCHEMA};
use crate::state::{State, StateError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What happened to each change of the plan, in plan order.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcomes: Vec<Outcome>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
}

/// Why applying stopped; the state store failing means the daemon could lose track.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
}

pub async fn apply(
    plan: &Plan,
    portal: &PortalClient,
    state: &mut State,
) -> Result<Applied, ApplyError> {
    for link in &plan.links {
        state.link(&link.anchor, &link.portal_id, &link.user_name)?;
    }
    let mut applied = Applied::default();
    for change in &plan.changes {
        if applied.aborted.is_some() {
            applied.outcomes.push(Outcome {
                status: Status::NotAttempted,
                message: None,
            });
            continue;
        }
        let result = apply_one(change, portal, state).await;
        let outcome = match result {
            Ok(()) => {
                info!(action = change.action.label(), user = %change.user_name, "applied");
                Outcome {
                    status: Status::Applied,
                    message: None,
                }
            }
            Err(Failure::State(e)) => return Err(e.into()),
            Err(Failure::Portal(e)) => {
                warn!(action = change.action.label(), user = %change.user_name, error = %e, "change not applied");
                if e.is_fatal() {
                    applied.aborted = Some(e.to_string());
                }
                let status = match e {
                    PortalError::Rejected { .. } => Status::Rejected,
                    _ => Status::Failed,
                };
                Outcome {
                    status,
                    message: Some(e.to_string()),
                }
            }
        };
        applied.outcomes.push(outcome);
    }
    Ok(applied)
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

async fn apply_one(
    change: &Change,
    portal: &PortalClient,
    state: &mut State,
) -> Result<(), Failure> {
    match change.action {
        Action::Create => {
            let created = portal.create_user(create_body(change)).await?;
            state.link(&change.anchor, &created.id, &created.user_name)?;
        }
        Action::Update | Action::Reactivate | Action::Close => {
            let id = change.portal_id.as_deref().unwrap_or_default();
            portal
                .patch_user(id, patch_operations(change), change.version.as_deref())
                .await?;
            if change.dn.is_some() && change.action != Action::Close {
                // Still in the directory: (re)confirm the link, e.g. after a relink.
                state.link(&change.anchor, id, &change.user_name)?;
            }
        }
    }
    Ok(())
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
    match change.action {
        Action::Close => ops.push(json!({"op": "replace", "path": "active", "value": false})),
        Action::Reactivate => ops.push(json!({"op": "replace", "path": "active", "value": true})),
        Action::Create | Action::Update => {}
    }
    ops
}
