//! `dirsync check`: is the config usable, and can both sides be reached?

use serde::Serialize;

use crate::config::Config;
use crate::cycle::CycleError;
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
    pub unusable_entries: usize,
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
    let found = source.check().await;
    source.close().await;
    let found = found?;
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
            users: found.users,
            disabled: found.disabled,
            groups: found.groups,
            unusable_entries: found.bad_entries,
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
        format!(
            "config    {}: ok\n\
             directory {} ({}, bound as {}): {} users in scope ({} disabled){}, {} unusable entries\n\
             portal    {}: SCIM ok (ETags {}, maxResults {}), {} users, {} groups\n\
             state     {}: {}\n",
            self.config,
            d.url,
            d.tls,
            d.bind_dn.as_deref().unwrap_or("anonymous"),
            d.users,
            d.disabled,
            d.groups.map(|g| format!(", {g} groups")).unwrap_or_default(),
            d.unusable_entries,
            p.url,
            if p.etag { "yes" } else { "no" },
            p.max_results.map_or("not announced".to_string(), |m| m.to_string()),
            p.users,
            p.groups,
            self.state.path,
            if self.state.exists {
                format!("{} managed users", self.state.managed_users)
            } else {
                "not created yet (the first sync creates it)".to_string()
            },
        )
    }
}
