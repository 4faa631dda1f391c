//! The portal side: a SCIM 2.0 client (RFC 7644) over `reqwest` with a bearer token.
//!
//! It only ever PATCHes the attributes that changed (a PUT would wipe the fields users edit
//! in the portal), reads lists page by page within the server's `maxResults`, and returns a
//! list only when it adds up: every page read, no id twice, exactly `totalResults`
//! resources (see [`PortalClient::list_users`]). Lookups by filter are checked against what
//! was asked, since a portal may ignore the filter.

mod schema;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH, RETRY_AFTER,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use tracing::{debug, info};
use url::Url;

pub use self::schema::{Mutability, PortalSchema};
use crate::config::PortalConfig;
use crate::mapping::{AttrPath, Packed, Value, ValueRef};
use crate::telemetry::Telemetry;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_JSON: &str = "application/scim+json";
/// An upper bound on pages, so that a server that never reports the end cannot loop us.
const MAX_PAGES: usize = 100_000;
/// What a portal id keeps unescaped in a path segment: RFC 3986 unreserved characters.
/// Everything else is percent-encoded (a space is `%20`, a `/` is `%2F`).
const ID_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The attributes read from portal users: the paths the plan compares (the mappings,
/// role, services, sub-unit), besides the identity every user record has (id,
/// externalId, userName, active, version and, for users without externalId, the primary
/// email adoption matches by). One table is shared by every user read with it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UserFields {
    paths: Vec<AttrPath>,
    index: HashMap<AttrPath, usize>,
}

impl UserFields {
    /// The table of these paths (each once, in order).
    pub fn new(paths: impl IntoIterator<Item = AttrPath>) -> Arc<UserFields> {
        let mut fields = UserFields::default();
        for p in paths {
            if !fields.index.contains_key(&p) {
                fields.index.insert(p.clone(), fields.paths.len());
                fields.paths.push(p);
            }
        }
        Arc::new(fields)
    }

    pub fn paths(&self) -> &[AttrPath] {
        &self.paths
    }

    /// Where `path`'s value sits in a user record; `None` if it is not read. A clone of a
    /// path of the table is found by address, without hashing.
    pub fn position(&self, path: &AttrPath) -> Option<usize> {
        self.paths
            .iter()
            .position(|p| p.same(path))
            .or_else(|| self.index.get(path).copied())
    }

    /// The `attributes` parameter of a listing (RFC 7644 §3.4.2.5): exactly what the
    /// records keep, comma-separated, each name once.
    pub fn attributes(&self) -> String {
        let mut names: Vec<String> = ["id", "externalId", "userName", "active", "meta.version"]
            .into_iter()
            .map(str::to_string)
            .chain(["emails.value".to_string(), "emails.primary".to_string()])
            .chain(self.paths.iter().map(AttrPath::attribute_name))
            .collect();
        let mut seen = HashSet::new();
        names.retain(|n| seen.insert(n.to_ascii_lowercase()));
        // A whole attribute asked for makes asking for its sub-attributes redundant.
        let whole: HashSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        names.retain(|n| {
            n.rsplit_once('.').is_none_or(|(parent, _)| {
                parent.contains(':') || !whole.contains(&parent.to_ascii_lowercase())
            })
        });
        names.join(",")
    }
}

/// A portal user as the plan needs it: the identity, and the value of each path of its
/// [`UserFields`]. Nothing else of the resource is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct PortalUser {
    pub id: String,
    pub external_id: Option<String>,
    pub user_name: String,
    pub active: bool,
    /// `meta.version`, the ETag for `If-Match`.
    pub version: Option<String>,
    /// For a user without externalId (one adoption may match): the email marked
    /// primary, else the only one.
    pub primary_email: Option<String>,
    fields: Arc<UserFields>,
    /// The value of each path of `fields`, in its order.
    values: Packed,
}

impl PortalUser {
    /// Reads the identity and the values of `fields` from a SCIM user resource.
    pub fn from_json(resource: &Json, fields: &Arc<UserFields>) -> Result<PortalUser, PortalError> {
        let id = resource
            .get("id")
            .and_then(Json::as_str)
            .ok_or_else(|| PortalError::Protocol("a user resource has no id".into()))?
            .to_string();
        let user_name = resource
            .get("userName")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let external_id = resource
            .get("externalId")
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(PortalUser {
            primary_email: match external_id {
                None => primary_email(resource).map(str::to_string),
                Some(_) => None,
            },
            external_id,
            // RFC 7643: `active` absent means the service provider's default; portals treat
            // a user without it as active.
            active: resource
                .get("active")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            version: resource
                .pointer("/meta/version")
                .and_then(Json::as_str)
                .map(str::to_string),
            id,
            user_name,
            values: Packed::new(fields.paths.iter().map(|p| p.get(resource))),
            fields: Arc::clone(fields),
        })
    }

    /// An active user known only by its identity, none of its values read: stands in for
    /// a group member an incremental cycle did not read (the state links it).
    pub fn stand_in(id: String, external_id: String, user_name: String) -> PortalUser {
        PortalUser {
            id,
            external_id: Some(external_id),
            user_name,
            active: true,
            version: None,
            primary_email: None,
            fields: UserFields::new([]),
            values: Packed::default(),
        }
    }

    /// The portal's value of `path`; `None` when it is absent, or not among the fields
    /// read (see [`PortalUser::reads`]).
    pub fn get(&self, path: &AttrPath) -> Option<Value> {
        self.get_ref(path).map(ValueRef::to_value)
    }

    /// [`PortalUser::get`], borrowed: for comparing without a copy.
    pub fn get_ref(&self, path: &AttrPath) -> Option<ValueRef<'_>> {
        self.values.get(self.fields.position(path)?)
    }

    /// Whether `path` was read, so that [`PortalUser::get`] tells its value.
    pub fn reads(&self, path: &AttrPath) -> bool {
        self.fields.position(path).is_some()
    }

    pub fn fields(&self) -> &Arc<UserFields> {
        &self.fields
    }

    /// Sets a value read (for tests: the portal as edited); `false` if `path` is not read.
    #[doc(hidden)]
    pub fn set(&mut self, path: &AttrPath, value: Option<Value>) -> bool {
        let Some(i) = self.fields.position(path) else {
            return false;
        };
        let mut values = self.values.to_values();
        values.resize(self.fields.paths.len(), None);
        values[i] = value;
        self.values = Packed::new(values);
        true
    }
}

/// The email marked primary, else the only one.
fn primary_email(resource: &Json) -> Option<&str> {
    let emails = resource.get("emails")?.as_array()?;
    let primary = emails
        .iter()
        .find(|e| e.get("primary").and_then(Json::as_bool) == Some(true))
        .or(if emails.len() == 1 {
            emails.first()
        } else {
            None
        })?;
    primary.get("value")?.as_str()
}

/// A portal group, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct PortalGroup {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    /// Member ids (`members[].value`).
    pub members: Vec<String>,
}

impl PortalGroup {
    pub fn from_json(g: &Json) -> Result<PortalGroup, PortalError> {
        let id = g
            .get("id")
            .and_then(Json::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| PortalError::Protocol("a group resource has no id".into()))?
            .to_string();
        Ok(PortalGroup {
            id,
            display_name: g
                .get("displayName")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
            external_id: g
                .get("externalId")
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            members: g
                .get("members")
                .and_then(Json::as_array)
                .map(|m| {
                    m.iter()
                        .filter_map(|e| e.get("value").and_then(Json::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// What a group is looked up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKey {
    ExternalId,
    DisplayName,
}

impl GroupKey {
    fn name(self) -> &'static str {
        match self {
            GroupKey::ExternalId => "externalId",
            GroupKey::DisplayName => "displayName",
        }
    }
}

/// What `/ServiceProviderConfig` announced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub patch: bool,
    pub etag: bool,
    pub filter: bool,
    pub max_results: Option<usize>,
}

/// Why a portal request failed; each variant says how the caller reacts.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// Network trouble, a timeout, 429 or a 5xx. Transient: retried next cycle.
    #[error("portal unreachable or failing: {0}")]
    Transient(String),
    /// 429: the portal asks us to slow down, for `retry_after` if it said. Transient.
    #[error("{what}: HTTP 429 (rate limited)")]
    RateLimited {
        what: String,
        retry_after: Option<Duration>,
    },
    /// 401/403: the token is wrong or lacks rights. Needs an admin; the cycle stops.
    /// `token_key` is the config key the token was read from.
    #[error(
        "portal refused the credentials (HTTP {status}): check the token read from {token_key}"
    )]
    Auth { status: u16, token_key: String },
    /// TLS with the portal failed: its certificate is not trusted or does not name the
    /// host. Needs an admin; not retried (it will not pass by itself).
    #[error("TLS with the portal failed: {0}")]
    Tls(String),
    /// 400/409 and other 4xx for one resource: that user is skipped and reported.
    #[error("portal rejected the request (HTTP {status}{}): {detail}", scim_type.as_ref().map(|t| format!(", {t}")).unwrap_or_default())]
    Rejected {
        status: u16,
        scim_type: Option<String>,
        detail: String,
    },
    /// 412: the resource changed since it was read.
    #[error("the portal resource changed since it was read (HTTP 412)")]
    PreconditionFailed,
    /// 404: the resource is gone.
    #[error("the portal resource no longer exists (HTTP 404)")]
    NotFound,
    /// The portal answered something that is not SCIM. Needs an admin (wrong URL?).
    #[error("unexpected answer from the portal: {0}")]
    Protocol(String),
    /// A listing that does not add up: a page without `totalResults`, an id twice, fewer
    /// or more resources than announced, a `totalResults` that kept changing, or a user
    /// dirsync manages missing from it. The cycle stops before planning, since a user
    /// missing from the listing would be planned as a create. Transient if the portal was
    /// busy; needs an admin if it persists.
    #[error("listing /{endpoint} is incomplete ({problem}); nothing was planned from it")]
    IncompleteListing { endpoint: String, problem: String },
    /// A create met a resource that already exists (HTTP 409, or a lost answer) and that
    /// is not dirsync's to take over (another login, another externalId). That one
    /// resource is skipped and reported; an admin must look.
    #[error("{0}")]
    NotTakenOver(String),
}

impl PortalError {
    /// Whether the whole cycle should stop rather than go on with other users.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PortalError::Auth { .. }
                | PortalError::Tls(_)
                | PortalError::Protocol(_)
                | PortalError::IncompleteListing { .. }
        )
    }

    fn incomplete(endpoint: &str, problem: String) -> PortalError {
        PortalError::IncompleteListing {
            endpoint: endpoint.to_string(),
            problem,
        }
    }
}

/// What a group create ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedGroup {
    pub id: String,
    /// The answer to the create was lost and the group was found by its `externalId`:
    /// an earlier attempt made it.
    pub found_after_lost_answer: bool,
}

/// One pass over a listing.
#[derive(Debug)]
enum Listing<T> {
    Complete(Vec<T>),
    /// `totalResults` changed between pages: the portal changed meanwhile.
    Changed(String),
}

/// A SCIM client for one portal.
pub struct PortalClient {
    http: reqwest::Client,
    /// The config key the token came from, for auth errors.
    token_key: String,
    base: Url,
    page_size: usize,
    /// How many listing pages are read at once.
    concurrency: usize,
    max_retries: u32,
    /// What is read of each user.
    fields: Arc<UserFields>,
    pub capabilities: Capabilities,
    /// Where requests and retries are counted, if anywhere.
    telemetry: Option<Arc<Telemetry>>,
    /// Requests sent by this client (each try of a retried one), for the report's phases.
    requests: AtomicU64,
}

impl PortalClient {
    /// Builds the client; TLS is verified against the system roots plus `portal.ca_file`.
    pub fn new(config: &PortalConfig) -> Result<PortalClient, PortalError> {
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
            .map_err(|_| {
                PortalError::Protocol(
                    "the portal token holds characters not allowed in an HTTP header".into(),
                )
            })?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static(SCIM_JSON));
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("dirsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .timeout(config.timeout)
            .https_only(config.url.scheme() == "https");
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                PortalError::Protocol(format!("cannot read portal.ca_file {}: {e}", ca.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                PortalError::Protocol(format!("portal.ca_file {}: {e}", ca.display()))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| PortalError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        Ok(PortalClient {
            http,
            token_key: config.token_key.clone(),
            base: config.url.clone(),
            page_size: config.page_size,
            concurrency: config.concurrency.max(1),
            max_retries: config.max_retries,
            fields: UserFields::new([]),
            capabilities: Capabilities::default(),
            telemetry: None,
            requests: AtomicU64::new(0),
        })
    }

    /// Reads these attributes of each user (see [`UserFields`]); by default only the
    /// identity.
    pub fn reading(mut self, fields: Arc<UserFields>) -> Self {
        self.fields = fields;
        self
    }

    /// Counts every request sent (by method and HTTP status) and every retry in `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// How many requests this client has sent so far (every try of a retried request,
    /// answered or not). A cycle reads it between its phases.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Reads `/ServiceProviderConfig` and remembers what the portal supports.
    pub async fn discover(&mut self) -> Result<Capabilities, PortalError> {
        let (body, _) = self
            .send(Method::GET, "ServiceProviderConfig", None, None)
            .await?;
        let flag = |name: &str| {
            body.get(name)
                .and_then(|v| v.get("supported"))
                .and_then(Json::as_bool)
                .unwrap_or(false)
        };
        let caps = Capabilities {
            patch: flag("patch"),
            etag: flag("etag"),
            filter: flag("filter"),
            max_results: body
                .pointer("/filter/maxResults")
                .and_then(Json::as_u64)
                .filter(|n| *n > 0)
                .map(|n| n as usize),
        };
        if !caps.patch {
            return Err(PortalError::Protocol(
                "the portal does not announce PATCH support; dirsync never replaces whole users"
                    .into(),
            ));
        }
        info!(etag = caps.etag, max_results = ?caps.max_results, "portal capabilities");
        self.capabilities = caps.clone();
        Ok(caps)
    }

    /// Reads `/Schemas`: which attributes are immutable or read-only.
    pub async fn schema(&self) -> Result<PortalSchema, PortalError> {
        let (body, _) = self.send(Method::GET, "Schemas", None, None).await?;
        let list = match body.get("Resources") {
            Some(r) => r.clone(),
            None => body,
        };
        Ok(PortalSchema::from_json(&list))
    }

    /// Every portal user. The listing is complete or an error
    /// ([`PortalError::IncompleteListing`]): see [`PortalClient::list`].
    /// Each page becomes user records as it comes, asking only for the attributes they
    /// keep (`attributes`; a portal that ignores it sends more, which is dropped).
    pub async fn list_users(&self) -> Result<Vec<PortalUser>, PortalError> {
        let attributes: String =
            url::form_urlencoded::byte_serialize(self.fields.attributes().as_bytes()).collect();
        let fields = &self.fields;
        self.list("Users", &format!("&attributes={attributes}"), |r| {
            PortalUser::from_json(&r, fields)
        })
        .await
    }

    /// Every portal group, complete or an error, as [`PortalClient::list_users`].
    pub async fn list_groups(&self) -> Result<Vec<PortalGroup>, PortalError> {
        self.list("Groups", "", |g| PortalGroup::from_json(&g))
            .await
    }

    pub async fn create_user(&self, resource: Json) -> Result<PortalUser, PortalError> {
        let (body, etag) = self
            .send(Method::POST, "Users", Some(resource), None)
            .await?;
        let mut user = PortalUser::from_json(&body, &self.fields)?;
        if user.version.is_none() {
            user.version = etag;
        }
        Ok(user)
    }

    /// PATCHes a user with `operations`. With `if_match` (and ETag support) a concurrent edit
    /// in the portal makes this fail with [`PortalError::PreconditionFailed`] instead of
    /// being overwritten. Returns the new version when the portal sends one.
    pub async fn patch_user(
        &self,
        id: &str,
        operations: Vec<Json>,
        if_match: Option<&str>,
    ) -> Result<Option<String>, PortalError> {
        let body = json!({"schemas": [PATCH_OP], "Operations": operations});
        let if_match = if self.capabilities.etag {
            if_match
        } else {
            None
        };
        let (resp, etag) = self
            .send(
                Method::PATCH,
                &resource_path("Users", id)?,
                Some(body),
                if_match,
            )
            .await?;
        Ok(etag.or_else(|| {
            resp.pointer("/meta/version")
                .and_then(Json::as_str)
                .map(str::to_string)
        }))
    }

    /// The users whose login is `user_name` (case-insensitively). A filter query when the
    /// portal supports filters; what it answers is checked, and a portal that ignored the
    /// filter (it sent other users) is searched by a full listing instead.
    pub async fn find_users(&self, user_name: &str) -> Result<Vec<PortalUser>, PortalError> {
        self.find_users_where("userName", user_name, |u| {
            u.get("userName")
                .and_then(Json::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(user_name))
        })
        .await
    }

    /// The users with `email` among their `emails` (case-insensitively), checked as
    /// [`PortalClient::find_users`] checks logins.
    pub async fn find_users_by_email(&self, email: &str) -> Result<Vec<PortalUser>, PortalError> {
        self.find_users_where("emails.value", email, |u| {
            u.get("emails").and_then(Json::as_array).is_some_and(|all| {
                all.iter().any(|e| {
                    e.get("value")
                        .and_then(Json::as_str)
                        .is_some_and(|v| v.eq_ignore_ascii_case(email))
                })
            })
        })
        .await
    }

    /// The users `matching` says are the ones asked for, judged on the resources as the
    /// portal sent them (a user record keeps less than a lookup may need, e.g. every email).
    async fn find_users_where(
        &self,
        attribute: &str,
        value: &str,
        matching: impl Fn(&Json) -> bool,
    ) -> Result<Vec<PortalUser>, PortalError> {
        let convert = |found: Vec<Json>| {
            found
                .iter()
                .map(|u| PortalUser::from_json(u, &self.fields))
                .collect::<Result<Vec<_>, _>>()
        };
        if self.capabilities.filter {
            if let Some(found) = self.filtered("Users", attribute, value).await? {
                if found.iter().all(&matching) {
                    return convert(found);
                }
                info!(
                    attribute,
                    value,
                    "the portal ignored the user filter; looking the user up in the full listing"
                );
            }
        }
        // Rare (a portal without working filters): the whole listing, kept as JSON only
        // until it is matched.
        let all = self.list("Users", "", Ok).await?;
        convert(all.into_iter().filter(|u| matching(u)).collect())
    }

    /// The groups whose `attribute` (`externalId` or `displayName`) is `value`
    /// (case-insensitively), checked as [`PortalClient::find_users`] checks users.
    pub async fn find_groups(
        &self,
        attribute: GroupKey,
        value: &str,
    ) -> Result<Vec<PortalGroup>, PortalError> {
        let matching = |g: &PortalGroup| {
            let have = match attribute {
                GroupKey::ExternalId => g.external_id.as_deref(),
                GroupKey::DisplayName => Some(g.display_name.as_str()),
            };
            have.is_some_and(|h| h.eq_ignore_ascii_case(value))
        };
        if self.capabilities.filter {
            let found = self
                .filtered("Groups", attribute.name(), value)
                .await?
                .map(|r| {
                    r.iter()
                        .map(PortalGroup::from_json)
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            if let Some(found) = found {
                if found.iter().all(matching) {
                    return Ok(found);
                }
                info!(
                    attribute = attribute.name(),
                    value, "the portal ignored the group filter; looking in the full listing"
                );
            }
        }
        Ok(self
            .list_groups()
            .await?
            .into_iter()
            .filter(matching)
            .collect())
    }

    /// `GET /{endpoint}?filter={attribute} eq "{value}"`: the resources of the first page,
    /// or `None` when the portal refused the filter (then the caller lists everything).
    async fn filtered(
        &self,
        endpoint: &str,
        attribute: &str,
        value: &str,
    ) -> Result<Option<Vec<Json>>, PortalError> {
        let filter = format!(
            "{attribute} eq \"{}\"",
            value.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", &filter)
            .finish();
        let page = match self
            .send(Method::GET, &format!("{endpoint}?{query}"), None, None)
            .await
        {
            Ok((page, _)) => page,
            // A 400 for a filter the portal does not support: list everything instead.
            Err(PortalError::Protocol(why)) => {
                info!(endpoint, attribute, why, "filter lookup refused");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(Some(match page.get("Resources") {
            Some(Json::Array(r)) => r.clone(),
            _ => Vec::new(),
        }))
    }

    /// Creates a group with its members (portal user ids).
    ///
    /// A create whose answer was lost (a timeout, a reset, a 5xx) may have made the group
    /// all the same, and a portal need not refuse a second group of the same name. So it
    /// is never sent again blindly: the group is first looked up by `externalId`, then by
    /// `displayName`, and taken over if it carries this `external_id`. A group of that name
    /// with another or no `externalId` is someone else's: [`PortalError::NotTakenOver`].
    pub async fn create_group(
        &self,
        name: &str,
        external_id: &str,
        members: &[String],
    ) -> Result<CreatedGroup, PortalError> {
        let body = json!({
            "schemas": [GROUP_SCHEMA],
            "displayName": name,
            "externalId": external_id,
            "members": members.iter().map(|m| json!({"value": m})).collect::<Vec<_>>(),
        });
        let mut attempt = 0u32;
        loop {
            let (status, result) = self
                .send_once(Method::POST, "Groups", Some(body.clone()), None)
                .await;
            let lost = match result {
                Ok((created, _)) => {
                    return created
                        .get("id")
                        .and_then(Json::as_str)
                        .filter(|id| !id.is_empty())
                        .map(|id| CreatedGroup {
                            id: id.to_string(),
                            found_after_lost_answer: false,
                        })
                        .ok_or_else(|| {
                            PortalError::Protocol("POST /Groups answered without an id".into())
                        })
                }
                Err(e) => match retry_wait(&e, attempt) {
                    Some(wait) => (e, wait),
                    None => return Err(e),
                },
            };
            if let Some(id) = self.find_own_group(name, external_id).await? {
                info!(
                    group = name,
                    id, "a group create's answer was lost; the group was made and is taken over"
                );
                return Ok(CreatedGroup {
                    id,
                    found_after_lost_answer: true,
                });
            }
            let (error, wait) = lost;
            if attempt >= self.max_retries {
                return Err(error);
            }
            attempt += 1;
            self.count_retry(status);
            debug!(
                group = name,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "the group is not there; creating it again"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// The id of the group dirsync made for `external_id`, if the portal has it: looked up
    /// by `externalId`, then by `displayName` (a portal may not filter on `externalId`).
    async fn find_own_group(
        &self,
        name: &str,
        external_id: &str,
    ) -> Result<Option<String>, PortalError> {
        let ours = |g: &PortalGroup| {
            g.external_id
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(external_id))
        };
        if let Some(g) = self
            .find_groups(GroupKey::ExternalId, external_id)
            .await?
            .into_iter()
            .find(ours)
        {
            return Ok(Some(g.id));
        }
        let named = self.find_groups(GroupKey::DisplayName, name).await?;
        if let Some(g) = named.iter().find(|g| ours(g)) {
            return Ok(Some(g.id.clone()));
        }
        if let Some(other) = named.first() {
            return Err(PortalError::NotTakenOver(format!(
                "the answer to creating portal group {name:?} was lost, and the portal now has a group of that name \
                 (id {}) with externalId {}, not {external_id}: it is not taken over, and no second group is created",
                other.id,
                other.external_id.as_deref().unwrap_or("not set"),
            )));
        }
        Ok(None)
    }

    /// PATCHes a group: incremental member changes and renames.
    pub async fn patch_group(&self, id: &str, operations: Vec<Json>) -> Result<(), PortalError> {
        let body = json!({"schemas": [PATCH_OP], "Operations": operations});
        self.send(
            Method::PATCH,
            &resource_path("Groups", id)?,
            Some(body),
            None,
        )
        .await?;
        Ok(())
    }

    pub async fn delete_group(&self, id: &str) -> Result<(), PortalError> {
        self.send(Method::DELETE, &resource_path("Groups", id)?, None, None)
            .await?;
        Ok(())
    }

    /// `GET /Groups/{id}`; [`PortalError::NotFound`] when the group is gone.
    pub async fn get_group(&self, id: &str) -> Result<PortalGroup, PortalError> {
        let (body, _) = self
            .send(Method::GET, &resource_path("Groups", id)?, None, None)
            .await?;
        PortalGroup::from_json(&body)
    }

    /// `GET /Users/{id}`; [`PortalError::NotFound`] when the user is gone.
    pub async fn get_user(&self, id: &str) -> Result<PortalUser, PortalError> {
        let (body, etag) = self
            .send(Method::GET, &resource_path("Users", id)?, None, None)
            .await?;
        let mut user = PortalUser::from_json(&body, &self.fields)?;
        if user.version.is_none() {
            user.version = etag;
        }
        Ok(user)
    }

    /// Lists every resource of an endpoint with `startIndex`/`count` pagination; see
    /// [`Pages`] for what makes a listing complete. Each resource becomes a record
    /// (`convert`) as its page comes. When `totalResults` changes between pages (the
    /// portal changed meanwhile) the listing is read once more, and fails if it still does
    /// not add up. `query` is appended to each page's query (`&attributes=…`).
    async fn list<T>(
        &self,
        endpoint: &str,
        query: &str,
        convert: impl Fn(Json) -> Result<T, PortalError>,
    ) -> Result<Vec<T>, PortalError> {
        let first = match self.list_once(endpoint, query, &convert).await? {
            Listing::Complete(all) => return Ok(all),
            Listing::Changed(why) => why,
        };
        info!(
            endpoint,
            first, "the portal changed while it was listed; listing again"
        );
        match self.list_once(endpoint, query, &convert).await? {
            Listing::Complete(all) => Ok(all),
            Listing::Changed(again) => Err(PortalError::incomplete(
                endpoint,
                format!("totalResults kept changing while the portal was listed: {first}; on the second try {again}"),
            )),
        }
    }

    /// One pass over a listing: pages from `startIndex` 1 until [`Pages`] says the listing
    /// is complete, changed, or wrong. Pages are taken in order; once the first page told
    /// `totalResults` and came as long as asked, the pages after it (and the empty one
    /// that confirms the end) are read `portal.concurrency` at a time. A page shorter than
    /// asked before the end means the portal pages otherwise: from there on, one page at a
    /// time, each from where the last one ended.
    async fn list_once<T>(
        &self,
        endpoint: &str,
        query: &str,
        convert: &impl Fn(Json) -> Result<T, PortalError>,
    ) -> Result<Listing<T>, PortalError> {
        let count = self
            .capabilities
            .max_results
            .map_or(self.page_size, |m| m.min(self.page_size))
            .max(1);
        let mut pages = Pages::new(endpoint);
        let mut start = 1usize;
        let mut read = 0usize;
        let mut ahead = self.concurrency > 1;
        loop {
            let starts: Vec<usize> = match pages.announced {
                Some(total) if ahead => (start..=total)
                    .step_by(count)
                    .chain((start <= total + 1).then_some(total + 1))
                    .fold(Vec::new(), |mut v, s| {
                        if v.last() != Some(&s) {
                            v.push(s);
                        }
                        v
                    }),
                _ => vec![start],
            };
            let mut answers = stream::iter(starts.iter().copied())
                .map(|s| {
                    let path = format!("{endpoint}?startIndex={s}&count={count}{query}");
                    async move { self.send(Method::GET, &path, None, None).await }
                })
                .buffered(self.concurrency);
            let mut next = start;
            for &at in &starts {
                if at != next {
                    break; // a short page: the pages asked for ahead start elsewhere
                }
                read += 1;
                if read > MAX_PAGES {
                    return Err(PortalError::incomplete(
                        endpoint,
                        format!("more than {MAX_PAGES} pages"),
                    ));
                }
                let Some(answer) = answers.next().await else {
                    break;
                };
                let (page, _) = answer?;
                match pages.take(at, page, convert)? {
                    Next::Page(after) => {
                        let total = pages.announced.unwrap_or(0);
                        if after - at < count && after <= total {
                            ahead = false;
                        }
                        next = after;
                    }
                    Next::Done(listing) => return Ok(listing),
                }
            }
            start = next;
        }
    }

    /// Sends a request, retrying transient failures (connection errors, timeouts, 5xx,
    /// 429) with exponential backoff and jitter; a 429's `Retry-After` is honoured.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
        if_match: Option<&str>,
    ) -> Result<(Json, Option<String>), PortalError> {
        let mut attempt = 0u32;
        loop {
            let (status, result) = self
                .send_once(method.clone(), path, body.clone(), if_match)
                .await;
            let wait = match &result {
                Ok(_) => return result,
                Err(e) => match retry_wait(e, attempt) {
                    Some(wait) => wait,
                    None => return result,
                },
            };
            if attempt >= self.max_retries {
                return result;
            }
            attempt += 1;
            self.count_retry(status);
            debug!(%method, path, attempt, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends a request once and counts it in the telemetry: the HTTP status of the answer
    /// (`None` when no whole answer came) and what the answer means.
    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
        if_match: Option<&str>,
    ) -> (Option<u16>, Result<(Json, Option<String>), PortalError>) {
        let url = match self.base.join(path) {
            Ok(url) => url,
            Err(e) => {
                // Nothing was sent.
                let e = PortalError::Protocol(format!("bad request path {path}: {e}"));
                return (None, Err(e));
            }
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (status, result) = self
            .exchange(method.clone(), url, path, body, if_match)
            .await;
        if let Some(t) = &self.telemetry {
            t.portal_request(method.as_str(), status);
        }
        (status, result)
    }

    /// Counts a retry after a request that got `status` (`None`: no answer).
    fn count_retry(&self, status: Option<u16>) {
        if let Some(t) = &self.telemetry {
            t.portal_retry(status);
        }
    }

    /// One HTTP exchange: the status of the answer (`None` when no whole answer came) and
    /// what it means.
    async fn exchange(
        &self,
        method: Method,
        url: Url,
        path: &str,
        body: Option<Json>,
        if_match: Option<&str>,
    ) -> (Option<u16>, Result<(Json, Option<String>), PortalError>) {
        let mut req = self.http.request(method.clone(), url);
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, SCIM_JSON).body(body.to_string());
        }
        if let Some(v) = if_match {
            req = req.header(IF_MATCH, v);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let chain = error_chain(&e);
                if let Some(why) = tls_problem(&chain) {
                    let e = PortalError::Tls(format!("{method} /{path}: {chain}. {why}"));
                    return (None, Err(e));
                }
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                let e = PortalError::Transient(format!("{method} /{path} {what}: {chain}"));
                return (None, Err(e));
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = match resp.text().await {
            Ok(text) => text,
            Err(e) => {
                let e = PortalError::Transient(format!(
                    "{method} /{path}: reading the answer failed: {e}"
                ));
                return (None, Err(e));
            }
        };
        let result = self.interpret(&method, path, status, retry_after, etag, &text);
        (Some(status.as_u16()), result)
    }

    /// What an answer means: its JSON body and ETag, or the error its status stands for.
    fn interpret(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        retry_after: Option<Duration>,
        etag: Option<String>,
        text: &str,
    ) -> Result<(Json, Option<String>), PortalError> {
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok((Json::Null, etag));
            }
            let json = serde_json::from_str(text).map_err(|e| {
                PortalError::Protocol(format!(
                    "{method} /{path}: HTTP {status} with a body that is not JSON ({e})"
                ))
            })?;
            return Ok((json, etag));
        }
        let err: Json = serde_json::from_str(text).unwrap_or(Json::Null);
        let detail = err
            .get("detail")
            .and_then(Json::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let scim_type = err
            .get("scimType")
            .and_then(Json::as_str)
            .map(str::to_string);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PortalError::Auth {
                status: status.as_u16(),
                token_key: self.token_key.clone(),
            },
            StatusCode::PRECONDITION_FAILED => PortalError::PreconditionFailed,
            StatusCode::NOT_FOUND
                if method != Method::GET
                    || path.starts_with("Users/")
                    || path.starts_with("Groups/") =>
            {
                PortalError::NotFound
            }
            StatusCode::TOO_MANY_REQUESTS => PortalError::RateLimited {
                what: format!("{method} /{path}"),
                retry_after,
            },
            s if s.is_server_error() => {
                PortalError::Transient(format!("{method} /{path}: HTTP {s}: {detail}"))
            }
            s if s.is_client_error() && method != Method::GET => PortalError::Rejected {
                status: s.as_u16(),
                scim_type,
                detail,
            },
            s => PortalError::Protocol(format!("{method} /{path}: HTTP {s}: {detail}")),
        })
    }
}

/// What to do after a page of a listing.
#[derive(Debug)]
enum Next<T> {
    /// Read the page at this `startIndex`.
    Page(usize),
    Done(Listing<T>),
}

/// The pages of one listing as they come, and whether they add up. The listing is
/// complete when every resource has an id, no id came twice, each page announced the same
/// `totalResults`, and exactly that many resources came back. Pages are asked for from
/// `startIndex` advanced by what was received (a portal may send fewer than asked); an
/// empty page before `totalResults` is reached is an error, and once it is reached one
/// more page is asked for, which must be empty. Pure.
struct Pages<T> {
    endpoint: String,
    /// `users`, `groups`: for messages.
    what: String,
    /// The records of the resources read so far.
    all: Vec<T>,
    ids: HashSet<String>,
    announced: Option<usize>,
}

impl<T> Pages<T> {
    fn new(endpoint: &str) -> Pages<T> {
        Pages {
            endpoint: endpoint.to_string(),
            what: endpoint.to_ascii_lowercase(),
            all: Vec::new(),
            ids: HashSet::new(),
            announced: None,
        }
    }

    fn incomplete(&self, problem: String) -> PortalError {
        PortalError::incomplete(&self.endpoint, problem)
    }

    /// Takes the page read at `start`; each resource becomes a record (`convert`) once
    /// its page is checked.
    fn take(
        &mut self,
        start: usize,
        mut page: Json,
        convert: impl Fn(Json) -> Result<T, PortalError>,
    ) -> Result<Next<T>, PortalError> {
        let what = &self.what;
        let total = page
            .get("totalResults")
            .and_then(Json::as_u64)
            .ok_or_else(|| {
                self.incomplete(format!(
                    "the page at startIndex {start} has no totalResults, so there is no telling \
                     whether every one of the {what} was read"
                ))
            })? as usize;
        match self.announced {
            Some(before) if before != total => {
                return Ok(Next::Done(Listing::Changed(format!(
                    "totalResults went from {before} to {total} at startIndex {start}"
                ))))
            }
            _ => self.announced = Some(total),
        }
        // An empty page may leave out `Resources`.
        let resources = match page.get_mut("Resources").map(Json::take) {
            Some(Json::Array(r)) => r,
            None | Some(Json::Null) => Vec::new(),
            Some(_) => {
                return Err(PortalError::Protocol(format!(
                    "GET /{}?startIndex={start}: Resources is not a list",
                    self.endpoint
                )))
            }
        };
        debug!(
            endpoint = self.endpoint,
            start,
            got = resources.len(),
            total,
            "read a page"
        );
        if resources.is_empty() {
            if self.all.len() == total {
                return Ok(Next::Done(Listing::Complete(std::mem::take(&mut self.all))));
            }
            return Err(self.incomplete(format!(
                "totalResults is {total}, but the page at startIndex {start} was empty after {} {what}",
                self.all.len()
            )));
        }
        for r in &resources {
            let id = r
                .get("id")
                .and_then(Json::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    PortalError::Protocol(format!(
                        "GET /{}?startIndex={start}: one of the {what} has no id",
                        self.endpoint
                    ))
                })?;
            if !self.ids.insert(id.to_string()) {
                return Err(self.incomplete(format!(
                    "id {id} came twice, again at startIndex {start}: the portal repeated a page \
                     (does it ignore startIndex?)"
                )));
            }
        }
        let got = resources.len();
        if self.all.len() + got > total {
            return Err(self.incomplete(format!(
                "totalResults is {total}, but {} {what} came back by the page at startIndex {start}",
                self.all.len() + got
            )));
        }
        for r in resources {
            self.all.push(convert(r)?);
        }
        Ok(Next::Page(start + got))
    }
}

/// How long to wait before trying a request again after `e`, if it is worth trying again:
/// transient failures with backoff, a 429 for its `Retry-After`.
fn retry_wait(e: &PortalError, attempt: u32) -> Option<Duration> {
    match e {
        PortalError::Transient(_) => Some(backoff(attempt)),
        PortalError::RateLimited { retry_after, .. } => {
            Some(retry_after.unwrap_or_else(|| backoff(attempt)))
        }
        _ => None,
    }
}

/// `{endpoint}/{id}` with the id percent-encoded as one path segment (a space is `%20`,
/// never `+`). An empty id (or `.`, `..`, which a URL resolves away) would address the
/// collection or another resource: it is an error, and no request is sent.
fn resource_path(endpoint: &str, id: &str) -> Result<String, PortalError> {
    if id.is_empty() || id == "." || id == ".." {
        return Err(PortalError::Protocol(format!(
            "refusing a request to /{endpoint}/ for the portal id {id:?}: not an id"
        )));
    }
    Ok(format!(
        "{endpoint}/{}",
        utf8_percent_encode(id, ID_SEGMENT)
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The longest wait a `Retry-After` may impose before we give up on it for this cycle.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// What to do about a TLS failure with the portal, if `chain` (an error and its causes)
/// is one.
fn tls_problem(chain: &str) -> Option<&'static str> {
    let lower = chain.to_ascii_lowercase();
    if lower.contains("not valid for name") {
        Some(
            "The portal's certificate does not name the host in portal.url (names are \
             checked against its subjectAltName): use the name the certificate holds",
        )
    } else if lower.contains("invalid peer certificate")
        || lower.contains("unknownissuer")
        || lower.contains("certificate verify failed")
    {
        Some(
            "The portal's certificate is not trusted: put the CA that signed it (PEM) in \
             portal.ca_file",
        )
    } else {
        None
    }
}

/// `Retry-After` (RFC 9110): seconds, or an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`),
/// as a wait from now, capped at [`MAX_RETRY_AFTER`]; a date in the past means now.
fn parse_retry_after(v: &str) -> Option<Duration> {
    parse_retry_after_at(v, time::OffsetDateTime::now_utc())
}

fn parse_retry_after_at(v: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let v = v.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822)
                .ok()?;
            Duration::try_from(at - now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Exponential backoff from 250 ms, capped at 10 s, with ±50% jitter so that many clients
/// (or many concurrent requests) do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1u64 << attempt.min(6)).min(10_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    // A cheap mix of the clock's nanoseconds: plenty for jitter, no RNG needed.
    let mixed = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let jitter = 0.5 + (mixed % 1000) as f64 / 1000.0;
    Duration::from_millis((base as f64 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 0..10 {
            let d = backoff(attempt).as_millis() as u64;
            let base = (250u64 << attempt.min(6)).min(10_000);
            assert!(
                d >= base / 2 && d <= base * 3 / 2,
                "attempt {attempt}: {d} ms"
            );
        }
    }

    fn page(total: Option<u64>, ids: &[&str]) -> Json {
        let mut p = json!({
            "Resources": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
        });
        if let Some(t) = total {
            p["totalResults"] = json!(t);
        }
        p
    }

    /// Feeds `pages` (each the answer to the startIndex asked for) to a listing.
    fn list(pages: &[Json]) -> Result<Vec<String>, String> {
        let mut pages_read: Pages<Json> = Pages::new("Users");
        let mut start = 1;
        for (i, p) in pages.iter().enumerate() {
            match pages_read
                .take(start, p.clone(), Ok)
                .map_err(|e| e.to_string())?
            {
                Next::Page(next) => start = next,
                Next::Done(Listing::Complete(all)) => {
                    assert_eq!(i, pages.len() - 1, "pages left unread");
                    return Ok(all
                        .iter()
                        .map(|r| r["id"].as_str().unwrap().to_string())
                        .collect());
                }
                Next::Done(Listing::Changed(why)) => return Err(format!("changed: {why}")),
            }
        }
        panic!("the listing asked for more pages than the portal has");
    }

    #[test]
    fn a_listing_that_adds_up_ends_with_one_empty_page_even_when_pages_are_short() {
        // Asked for 5 a page, the portal sends 2: startIndex advances by what came.
        let all = list(&[
            page(Some(5), &["a", "b"]),
            page(Some(5), &["c", "d"]),
            page(Some(5), &["e"]),
            page(Some(5), &[]),
        ])
        .unwrap();
        assert_eq!(all, ["a", "b", "c", "d", "e"]);
        assert_eq!(list(&[page(Some(0), &[])]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_listing_that_does_not_add_up_is_an_error_that_names_the_problem() {
        let cases = [
            (
                vec![page(Some(3), &["a", "b"]), page(Some(3), &["c", "d"])],
                "totalResults is 3, but 4 users came back by the page at startIndex 3",
            ),
            (
                vec![page(Some(2), &["a", "b"]), page(Some(2), &["c"])],
                "totalResults is 2, but 3 users came back by the page at startIndex 3",
            ),
            (
                vec![page(Some(9), &["a", "b"]), page(Some(9), &[])],
                "totalResults is 9, but the page at startIndex 3 was empty after 2 users",
            ),
            (
                vec![page(None, &["a"])],
                "the page at startIndex 1 has no totalResults",
            ),
            (
                vec![page(Some(4), &["a", "b"]), page(Some(4), &["a", "b"])],
                "id a came twice, again at startIndex 3",
            ),
            (
                vec![page(Some(4), &["a", "b"]), page(Some(5), &["c", "d"])],
                "changed: totalResults went from 4 to 5 at startIndex 3",
            ),
        ];
        for (pages, expected) in cases {
            let err = list(&pages).unwrap_err();
            assert!(err.contains(expected), "{err}\nexpected: {expected}");
            if !err.starts_with("changed") {
                assert!(err.starts_with("listing /Users is incomplete ("), "{err}");
                assert!(err.ends_with("nothing was planned from it"), "{err}");
            }
        }
    }

    #[test]
    fn portal_ids_are_one_percent_encoded_path_segment_and_never_empty() {
        assert_eq!(resource_path("Users", "a b").unwrap(), "Users/a%20b");
        assert_eq!(
            resource_path("Groups", "x/y?z#w+v%").unwrap(),
            "Groups/x%2Fy%3Fz%23w%2Bv%25"
        );
        assert_eq!(
            resource_path("Users", "2819c223-7f76-453a.b_c~d").unwrap(),
            "Users/2819c223-7f76-453a.b_c~d"
        );
        for bad in ["", ".", ".."] {
            assert!(
                matches!(resource_path("Users", bad), Err(PortalError::Protocol(_))),
                "{bad:?}"
            );
        }
        // What the client sends: joined onto the base URL, the segment stays as encoded.
        let base = Url::parse("https://portal.example/scim/v2/").unwrap();
        assert_eq!(
            base.join(&resource_path("Users", "a b/c").unwrap())
                .unwrap()
                .as_str(),
            "https://portal.example/scim/v2/Users/a%20b%2Fc"
        );
    }

    #[test]
    fn retry_after_in_seconds_is_honoured_and_capped() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        let now = time::macros::datetime!(2015-10-21 07:27:30 UTC);
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(30)),
            "an HTTP date counts from now"
        );
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date past is now"
        );
        assert_eq!(
            parse_retry_after_at("Thu, 22 Oct 2015 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// A portal on a loopback port that gives `answers` (status, body) in turn, the last
    /// one again and again.
    async fn scripted_portal(answers: Vec<(u16, &'static str)>) -> std::net::SocketAddr {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answers = Arc::new(answers);
        let next = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (answers, next) = (Arc::clone(&answers), Arc::clone(&next));
                let service = hyper::service::service_fn(move |_req| {
                    let i = next.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1);
                    let (status, body) = answers[i];
                    let mut r = hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(body.as_bytes()),
                    ));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    fn client(addr: std::net::SocketAddr, max_retries: u32) -> PortalClient {
        PortalClient::new(&PortalConfig {
            url: Url::parse(&format!("http://{addr}/scim/v2/")).unwrap(),
            token: crate::secret::Secret::new("t"),
            token_key: "portal.token_file".into(),
            ca_file: None,
            timeout: Duration::from_secs(5),
            page_size: 100,
            concurrency: 1,
            max_retries,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn each_request_and_retry_is_counted_by_status() {
        let addr = scripted_portal(vec![
            (503, "busy"),
            (200, r#"{"patch": {"supported": true}}"#),
            (500, "broken"),
        ])
        .await;
        let telemetry = Arc::new(Telemetry::new());
        let mut portal = client(addr, 1).with_telemetry(Arc::clone(&telemetry));
        portal.discover().await.unwrap();
        // 500 twice: retried once, then given up.
        portal.schema().await.unwrap_err();
        assert_eq!(portal.requests_sent(), 4, "every try is a request sent");
        let out = telemetry.render();
        for line in [
            r#"dirsync_portal_requests_total{method="GET",status="503"} 1"#,
            r#"dirsync_portal_requests_total{method="GET",status="200"} 1"#,
            r#"dirsync_portal_requests_total{method="GET",status="500"} 2"#,
            r#"dirsync_portal_retries_total{reason="503"} 1"#,
            r#"dirsync_portal_retries_total{reason="500"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
        }
    }

    #[tokio::test]
    async fn a_request_without_an_answer_is_counted_as_an_error() {
        // A port nothing listens on.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let telemetry = Arc::new(Telemetry::new());
        let portal = client(addr, 1).with_telemetry(Arc::clone(&telemetry));
        portal.delete_group("g1").await.unwrap_err();
        assert_eq!(portal.requests_sent(), 2, "unanswered tries count too");
        let out = telemetry.render();
        for line in [
            r#"dirsync_portal_requests_total{method="DELETE",status="error"} 2"#,
            r#"dirsync_portal_retries_total{reason="error"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
        }
    }

    #[tokio::test]
    async fn a_group_create_retried_after_a_lost_answer_counts_the_retry() {
        // POST 502; the two lookups (full listings: no filter support was discovered)
        // find no group; POST again: 201.
        let addr = scripted_portal(vec![
            (502, "bad gateway"),
            (200, r#"{"totalResults": 0, "Resources": []}"#),
            (200, r#"{"totalResults": 0, "Resources": []}"#),
            (201, r#"{"id": "g-1"}"#),
        ])
        .await;
        let telemetry = Arc::new(Telemetry::new());
        let portal = client(addr, 2).with_telemetry(Arc::clone(&telemetry));
        let created = portal.create_group("Fax", "x-1", &[]).await.unwrap();
        assert_eq!(created.id, "g-1");
        let out = telemetry.render();
        for line in [
            r#"dirsync_portal_requests_total{method="POST",status="502"} 1"#,
            r#"dirsync_portal_requests_total{method="POST",status="201"} 1"#,
            r#"dirsync_portal_retries_total{reason="502"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
        }
    }
}
