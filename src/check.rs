//! `dirsync check`: is the config usable, and can both sides be reached?

use serde::Serialize;

use crate::config::Config;
use crate::cycle::CycleError;
use crate::plan::{self, Skipped};
use crate::portal::PortalClient;
use crate::source::LdapSource;
use crate::state::State;

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub config: String,
    pub directory: DirectoryCheck,
    pub portal: PortalCheck,
    pub state: StateCheck,
}

#[derive(Debug, Serialize)]
pub struct DirectoryCheck {
    pub url: String,
    pub tls: String,
    pub bind_dn: Option<String>,
    pub users: usize,
    pub disabled: usize,
    pub groups: Option<usize>,
    /// Entries `plan` skips for their own data (no anchor, no usable or unique login):
    /// the length of `skipped`.
    pub unusable_entries: usize,
    /// Those entries, by DN, and why each is skipped.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
pub struct PortalCheck {
    pub url: String,
    pub etag: bool,
    pub max_results: Option<usize>,
    pub users: usize,
    pub groups: usize,
}

#[derive(Debug, Serialize)]
pub struct StateCheck {
    pub path: String,
    pub exists: bool,
    pub managed_users: usize,
}

pub async fn check(config: &Config) -> Result<CheckReport, CycleError> {
    let attributes = crate::cycle::source_attributes(config);
    let mut source = LdapSource::connect(&config.source, &attributes).await?;
    let read = source.read().await;
    source.close().await;
    let read = read?;
    let now = crate::source::Timestamp::now();
    let rules = plan::effective_rules(&config.mapping, &config.access);
    let skipped = plan::unusable(&read.users, &read.bad_entries, &rules);
    let mut portal = PortalClient::new(&config.portal)?;
    let caps = portal.discover().await?;
    portal.schema().await?;
    let users = portal.list_users().await?.len();
    let groups = portal.list_groups().await?.len();
    let state = State::open_read_only(&config.state_path)?;
    Ok(CheckReport {
        config: config.path.display().to_string(),
        directory: DirectoryCheck {
            url: config.source.url.to_string(),
            tls: config.source.tls.label().to_string(),
            bind_dn: config.source.bind.as_ref().map(|b| b.dn.clone()),
            users: read.users.len(),
            disabled: read
                .users
                .iter()
                .filter(|u| u.closure(now).is_some())
                .count(),
            groups: config.source.groups.as_ref().map(|_| read.groups.len()),
            unusable_entries: skipped.len(),
            skipped,
        },
        portal: PortalCheck {
            url: config.portal.url.to_string(),
            etag: caps.etag,
            max_results: caps.max_results,
            users,
            groups,
        },
        state: StateCheck {
            path: config.state_path.display().to_string(),
            exists: state.is_some(),
            managed_users: match state {
                Some(s) => s.managed()?.len(),
                None => 0,
            },
        },
    })
}

impl CheckReport {
    pub fn to_text(&self) -> String {
        let d = &self.directory;
        let p = &self.portal;
        let mut out = format!(
            "config    {}: ok\n\
             directory {} ({}, bound as {}): {} users in scope ({} disabled){}; \
             {} entries that plan skips (no anchor, or no usable or unique login)\n",
            self.config,
            d.url,
            d.tls,
            d.bind_dn.as_deref().unwrap_or("anonymous"),
            d.users,
            d.disabled,
            d.groups
                .map(|g| format!(", {g} groups"))
                .unwrap_or_default(),
            d.unusable_entries,
        );
        for s in &d.skipped {
            out.push_str(&format!("          skipped {}: {}\n", s.dn, s.problem));
        }
        out.push_str(&format!(
            "portal    {}: SCIM ok (ETags {}, maxResults {}), {} users, {} groups\n\
             state     {}: {}\n",
            p.url,
            if p.etag { "yes" } else { "no" },
            p.max_results
                .map_or("not announced".to_string(), |m| m.to_string()),
            p.users,
            p.groups,
            self.state.path,
            if self.state.exists {
                format!(
                    "{} users linked to directory users",
                    self.state.managed_users
                )
            } else {
                "not created yet (the first sync creates it)".to_string()
            },
        ));
        out
    }
}
