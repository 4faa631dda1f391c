//! The portal side: a SCIM 2.0 client (RFC 7644) over `reqwest` with a bearer token.
//!
//! It only ever PATCHes the attributes that changed (a PUT would wipe the fields users edit
//! in the portal), reads lists page by page within the server's `maxResults`, and returns a
//! list only when every page was read.

mod schema;

use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH, RETRY_AFTER,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value as Json};
use tracing::{debug, info};
use url::Url;

pub use self::schema::{Mutability, PortalSchema};
use crate::config::PortalConfig;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_JSON: &str = "application/scim+json";
/// An upper bound on pages, so that a server that never reports the end cannot loop us.
const MAX_PAGES: usize = 100_000;

/// A portal user, with the whole resource as the portal sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct PortalUser {
    pub id: String,
    pub external_id: Option<String>,
    pub user_name: String,
    pub active: bool,
    /// `meta.version`, the ETag for `If-Match`.
    pub version: Option<String>,
    pub resource: Json,
}

impl PortalUser {
    pub fn from_json(resource: Json) -> Result<PortalUser, PortalError> {
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
        Ok(PortalUser {
            external_id: resource
                .get("externalId")
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
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
            resource,
        })
    }
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
    #[error("portal refused the credentials (HTTP {0}): check portal.token_file")]
    Auth(u16),
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
}

impl PortalError {
    /// Whether the whole cycle should stop rather than go on with other users.
    pub fn is_fatal(&self) -> bool {
        matches!(self, PortalError::Auth(_) | PortalError::Protocol(_))
    }
}

/// A SCIM client for one portal.
pub struct PortalClient {
    http: reqwest::Client,
    base: Url,
    page_size: usize,
    max_retries: u32,
    pub capabilities: Capabilities,
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
            base: config.url.clone(),
            page_size: config.page_size,
            max_retries: config.max_retries,
            capabilities: Capabilities::default(),
        })
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

    pub async fn list_users(&self) -> Result<Vec<PortalUser>, PortalError> {
        self.list("Users")
            .await?
            .into_iter()
            .map(PortalUser::from_json)
            .collect()
    }

    pub async fn list_groups(&self) -> Result<Vec<PortalGroup>, PortalError> {
        let groups = self.list("Groups").await?;
        Ok(groups
            .into_iter()
            .filter_map(|g| {
                Some(PortalGroup {
                    id: g.get("id")?.as_str()?.to_string(),
                    display_name: g
                        .get("displayName")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    external_id: g
                        .get("externalId")
                        .and_then(Json::as_str)
                        .map(str::to_string),
                    members: g
                        .get("members")
                        .and_then(Json::as_array)
                        .map(|m| {
                            m.iter()
                                .filter_map(|e| {
                                    e.get("value").and_then(Json::as_str).map(str::to_string)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect())
    }

    pub async fn create_user(&self, resource: Json) -> Result<PortalUser, PortalError> {
        let (body, etag) = self
            .send(Method::POST, "Users", Some(resource), None)
            .await?;
        let mut user = PortalUser::from_json(body)?;
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
                &format!("Users/{}", encode_id(id)),
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

    /// The user with this login, if any (a filter query when the portal supports filters).
    pub async fn find_user(&self, user_name: &str) -> Result<Option<PortalUser>, PortalError> {
        if !self.capabilities.filter {
            return Ok(self
                .list_users()
                .await?
                .into_iter()
                .find(|u| u.user_name.eq_ignore_ascii_case(user_name)));
        }
        let filter = format!(
            "userName eq \"{}\"",
            user_name.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", &filter)
            .finish();
        let (page, _) = self
            .send(Method::GET, &format!("Users?{query}"), None, None)
            .await?;
        let found = page
            .get("Resources")
            .and_then(Json::as_array)
            .and_then(|r| r.first())
            .cloned();
        found.map(PortalUser::from_json).transpose()
    }

    /// Creates a group with its members (portal user ids); returns its id.
    pub async fn create_group(
        &self,
        name: &str,
        external_id: &str,
        members: &[String],
    ) -> Result<String, PortalError> {
        let body = json!({
            "schemas": [GROUP_SCHEMA],
            "displayName": name,
            "externalId": external_id,
            "members": members.iter().map(|m| json!({"value": m})).collect::<Vec<_>>(),
        });
        let (created, _) = self.send(Method::POST, "Groups", Some(body), None).await?;
        created
            .get("id")
            .and_then(Json::as_str)
            .map(str::to_string)
            .ok_or_else(|| PortalError::Protocol("POST /Groups answered without an id".into()))
    }

    /// PATCHes a group: incremental member changes and renames.
    pub async fn patch_group(&self, id: &str, operations: Vec<Json>) -> Result<(), PortalError> {
        let body = json!({"schemas": [PATCH_OP], "Operations": operations});
        self.send(
            Method::PATCH,
            &format!("Groups/{}", encode_id(id)),
            Some(body),
            None,
        )
        .await?;
        Ok(())
    }

    pub async fn delete_group(&self, id: &str) -> Result<(), PortalError> {
        self.send(
            Method::DELETE,
            &format!("Groups/{}", encode_id(id)),
            None,
            None,
        )
        .await?;
        Ok(())
    }

    pub async fn get_user(&self, id: &str) -> Result<PortalUser, PortalError> {
        let (body, etag) = self
            .send(Method::GET, &format!("Users/{}", encode_id(id)), None, None)
            .await?;
        let mut user = PortalUser::from_json(body)?;
        if user.version.is_none() {
            user.version = etag;
        }
        Ok(user)
    }

    /// Lists every resource of an endpoint with `startIndex`/`count` pagination.
    async fn list(&self, endpoint: &str) -> Result<Vec<Json>, PortalError> {
        let count = self
            .capabilities
            .max_results
            .map_or(self.page_size, |m| m.min(self.page_size));
        let mut all = Vec::new();
        let mut start = 1usize;
        for _ in 0..MAX_PAGES {
            let path = format!("{endpoint}?startIndex={start}&count={count}");
            let (page, _) = self.send(Method::GET, &path, None, None).await?;
            let total = page
                .get("totalResults")
                .and_then(Json::as_u64)
                .ok_or_else(|| PortalError::Protocol(format!("GET /{endpoint}: no totalResults")))?
                as usize;
            // An empty page may leave out `Resources`; a short page is caught below.
            let resources = match page.get("Resources") {
                Some(Json::Array(r)) => r.clone(),
                _ => Vec::new(),
            };
            let got = resources.len();
            all.extend(resources);
            debug!(endpoint, start, got, total, "read a page");
            if all.len() >= total {
                return Ok(all);
            }
            if got == 0 {
                return Err(PortalError::Protocol(format!(
                    "GET /{endpoint}: the portal announced {total} resources but stopped after {}",
                    all.len()
                )));
            }
            start += got;
        }
        Err(PortalError::Protocol(format!(
            "GET /{endpoint}: more than {MAX_PAGES} pages"
        )))
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
            let result = self
                .send_once(method.clone(), path, body.clone(), if_match)
                .await;
            let wait = match &result {
                Err(PortalError::Transient(_)) => backoff(attempt),
                Err(PortalError::RateLimited { retry_after, .. }) => {
                    retry_after.unwrap_or_else(|| backoff(attempt))
                }
                _ => return result,
            };
            if attempt >= self.max_retries {
                return result;
            }
            attempt += 1;
            debug!(%method, path, attempt, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
        if_match: Option<&str>,
    ) -> Result<(Json, Option<String>), PortalError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| PortalError::Protocol(format!("bad request path {path}: {e}")))?;
        let mut req = self.http.request(method.clone(), url);
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, SCIM_JSON).body(body.to_string());
        }
        if let Some(v) = if_match {
            req = req.header(IF_MATCH, v);
        }
        let resp = req.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            PortalError::Transient(format!("{method} /{path} {what}: {}", error_chain(&e)))
        })?;
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
        let text = resp.text().await.map_err(|e| {
            PortalError::Transient(format!("{method} /{path}: reading the answer failed: {e}"))
        })?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok((Json::Null, etag));
            }
            let json = serde_json::from_str(&text).map_err(|e| {
                PortalError::Protocol(format!(
                    "{method} /{path}: HTTP {status} with a body that is not JSON ({e})"
                ))
            })?;
            return Ok((json, etag));
        }
        let err: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
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
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PortalError::Auth(status.as_u16()),
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

fn encode_id(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
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

/// `Retry-After` in seconds (an HTTP date is rare for APIs; it falls back to backoff).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
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

    #[test]
    fn retry_after_in_seconds_is_honoured_and_capped() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
