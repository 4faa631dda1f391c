//! The config file as written by an admin: version 1 of the TOML format.
//! Private to the config module; [`super::Config`] is what the rest of the crate sees.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileV1 {
    pub source: SourceV1,
    pub portal: PortalV1,
    #[serde(default)]
    pub state: Option<StateV1>,
    #[serde(default)]
    pub sync: Option<SyncV1>,
    pub schedule: Option<ScheduleV1>,
    pub safety: Option<SafetyV1>,
    #[serde(default, rename = "mapping")]
    pub mappings: Vec<MappingV1>,
    pub roles: Option<RolesV1>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceV1>,
    pub portal_groups: Option<PortalGroupsV1>,
    pub sub_unit: Option<SubUnitV1>,
    pub health: Option<HealthV1>,
    pub reports: Option<ReportsV1>,
    pub mail: Option<MailV1>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RolesV1 {
    pub default: Option<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RoleRuleV1>,
    pub keep_one_of: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleRuleV1 {
    pub group: String,
    pub role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceV1 {
    pub group: String,
    pub service: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortalGroupsV1 {
    #[serde(default)]
    pub groups: Vec<String>,
    pub filter: Option<String>,
    pub flatten: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubUnitV1 {
    pub from: String,
    pub base: Option<String>,
    pub attribute: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceV1 {
    pub kind: Option<String>,
    pub url: String,
    pub starttls: Option<bool>,
    pub ca_file: Option<String>,
    pub tls_server_name: Option<String>,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<String>,
    pub bind_password_env: Option<String>,
    pub bind_password_credential: Option<String>,
    pub timeout_secs: Option<u64>,
    pub page_size: Option<i64>,
    pub anchor_attribute: Option<String>,
    pub full_reconcile_hours: Option<u64>,
    pub users: UsersV1,
    pub groups: Option<GroupsV1>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsersV1 {
    pub base: String,
    pub scope: Option<String>,
    pub filter: Option<String>,
    pub disabled_filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupsV1 {
    pub base: String,
    pub scope: Option<String>,
    pub filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortalV1 {
    pub url: String,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    pub ca_file: Option<String>,
    pub insecure_http: Option<bool>,
    pub timeout_secs: Option<u64>,
    pub page_size: Option<i64>,
    pub concurrency: Option<i64>,
    pub max_retries: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateV1 {
    pub path: Option<String>,
    pub keep_runs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleV1 {
    pub cron: Option<String>,
    pub run_at_start: Option<bool>,
    pub standby: Option<bool>,
    pub stop_grace_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SyncV1 {
    pub cycle_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthV1 {
    pub listen: Option<String>,
    pub max_age_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SafetyV1 {
    pub max_closures: Option<i64>,
    pub max_closure_percent: Option<f64>,
    pub max_access_removals: Option<i64>,
    pub max_consecutive_failures: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MappingV1 {
    pub from: String,
    pub to: String,
    pub multi_valued: Option<bool>,
    pub owner: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportsV1 {
    pub dir: Option<String>,
    pub keep: Option<i64>,
    pub max_age_days: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MailV1 {
    pub host: String,
    pub port: Option<i64>,
    pub tls: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub password_credential: Option<String>,
    pub ca_file: Option<String>,
    pub timeout_secs: Option<u64>,
}
