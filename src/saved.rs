//! Reviewed plans: `dirsync plan --save FILE` writes the plan with the versions it was
//! computed from (portal ETags, old and new values); `dirsync apply FILE` applies exactly
//! those changes, and refuses, listing what moved, if either side changed for an affected
//! user since. Reviewing the saved plan is the confirmation: closures and removals in it
//! are not held back again, and its scope must be the config's scope now.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::plan::Plan;

pub const FORMAT: &str = "dirsync-plan/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: String,
    pub saved_at: String,
    /// The directory scope the plan was computed with ([`crate::config::Config::scope_text`]).
    pub scope: String,
    pub changes: Vec<Json>,
    pub group_changes: Vec<Json>,
    /// Portal ids of the orphans taken over in the plan (`plan --adopt-orphans`): applying
    /// it takes over exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted_orphans: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("cannot read the saved plan {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot write the saved plan {path}: {message}")]
    Write { path: String, message: String },
}

impl SavedPlan {
    pub fn of(plan: &Plan, scope: String) -> SavedPlan {
        SavedPlan {
            format: FORMAT.into(),
            saved_at: crate::report::now(),
            scope,
            changes: plan
                .changes
                .iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect(),
            group_changes: plan
                .group_changes
                .iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect(),
            adopted_orphans: plan
                .orphans
                .iter()
                .filter(|o| o.adopted)
                .map(|o| o.portal_id.clone())
                .collect(),
        }
    }

    pub fn write(&self, path: &Path) -> Result<(), SavedError> {
        let err = |message: String| SavedError::Write {
            path: path.display().to_string(),
            message,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        // A plan holds personal data: 0600, whatever the umask.
        let mut file = crate::state::create_private(path).map_err(|e| err(e.to_string()))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| err(e.to_string()))
    }

    pub fn read(path: &Path) -> Result<SavedPlan, SavedError> {
        let err = |message: String| SavedError::Read {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let saved: SavedPlan = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a saved dirsync plan ({e})")))?;
        if saved.format != FORMAT {
            return Err(err(format!(
                "format {:?}; this dirsync reads {FORMAT:?}",
                saved.format
            )));
        }
        Ok(saved)
    }

    /// Restricts a freshly computed `plan` to the saved changes. Returns what no longer
    /// matches (empty when the plan may be applied as reviewed).
    pub fn restrict(&self, plan: &mut Plan) -> Vec<String> {
        let mut moved = Vec::new();
        let key = |c: &Json| (c["action"].clone(), c["anchor"].clone());
        let fresh: Vec<Json> = plan
            .changes
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        for saved in &self.changes {
            let who = saved["user_name"].as_str().unwrap_or("?");
            match fresh.iter().find(|f| key(f) == key(saved)) {
                Some(f) if f == saved => {}
                Some(f) if f["version"] != saved["version"] => moved.push(format!(
                    "{who}: the portal user changed since the plan was saved (version {} then, {} now)",
                    words(&saved["version"]),
                    words(&f["version"])
                )),
                Some(f) => moved.push(format!(
                    "{who}: the planned change is different now: {}",
                    fields_moved(&saved["fields"], &f["fields"])
                )),
                None => moved.push(format!(
                    "{who}: the saved {} is no longer planned (the directory or the portal changed)",
                    saved["action"].as_str().unwrap_or("change")
                )),
            }
        }
        let group_key = |c: &Json| (c["action"].clone(), c["anchor"].clone());
        let fresh_groups: Vec<Json> = plan
            .group_changes
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        for saved in &self.group_changes {
            let name = saved["name"].as_str().unwrap_or("?");
            match fresh_groups
                .iter()
                .find(|f| group_key(f) == group_key(saved))
            {
                Some(f) if f == saved => {}
                _ => moved.push(format!(
                    "portal group {name}: the planned change is different now"
                )),
            }
        }
        let keep = |c: &Json, saved: &[Json]| saved.iter().any(|s| s == c);
        let extra = fresh.iter().filter(|c| !keep(c, &self.changes)).count()
            + fresh_groups
                .iter()
                .filter(|c| !keep(c, &self.group_changes))
                .count();
        let mut i = 0;
        plan.changes.retain(|_| {
            let k = keep(&fresh[i], &self.changes);
            i += 1;
            k
        });
        let mut i = 0;
        plan.group_changes.retain(|_| {
            let k = keep(&fresh_groups[i], &self.group_changes);
            i += 1;
            k
        });
        plan.in_sync.clear();
        // Only the orphans taken over in the reviewed plan are linked; others that
        // appeared since are reported, not taken over.
        for o in &mut plan.orphans {
            o.adopted = o.adopted && self.adopted_orphans.contains(&o.portal_id);
        }
        if extra > 0 {
            plan.notes.push(format!(
                "{extra} changes appeared since the plan was saved; they are not applied now (run `dirsync plan` to review them)"
            ));
        }
        moved
    }
}

/// A JSON value of a saved change in words: strings bare, lists comma-separated,
/// `(none)` for null.
fn words(v: &Json) -> String {
    match v {
        Json::Null => "(none)".into(),
        Json::String(s) => s.clone(),
        Json::Array(items) => format!(
            "[{}]",
            items.iter().map(words).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// How the fields of a saved change differ from the change planned now, field by field:
/// `name.familyName: New → Newer (saved: Old → New)`.
fn fields_moved(saved: &Json, now: &Json) -> String {
    let by_path = |fields: &Json| -> Vec<(String, Json)> {
        fields
            .as_array()
            .map(|fs| fs.iter().map(|f| (words(&f["path"]), f.clone())).collect())
            .unwrap_or_default()
    };
    let (saved, now) = (by_path(saved), by_path(now));
    let find = |list: &[(String, Json)], path: &str| {
        list.iter().find(|(p, _)| p == path).map(|(_, f)| f.clone())
    };
    let mut paths: Vec<&String> = saved.iter().chain(now.iter()).map(|(p, _)| p).collect();
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    for path in paths {
        let change = |f: &Json| format!("{} → {}", words(&f["old"]), words(&f["new"]));
        match (find(&saved, path), find(&now, path)) {
            (Some(s), Some(n)) if s != n => out.push(format!(
                "{path}: now {} (saved: {})",
                change(&n),
                change(&s)
            )),
            (Some(s), None) => {
                out.push(format!("{path}: no longer changed (saved: {})", change(&s)))
            }
            (None, Some(n)) => out.push(format!("{path}: now also {}", change(&n))),
            _ => {}
        }
    }
    if out.is_empty() {
        "its reason or target changed".into()
    } else {
        out.join("; ")
    }
}
