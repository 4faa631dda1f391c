//! `scim2-server` (PyPI, an in-memory SCIM 2.0 server) standing in for the portal.
//!
//! It serves the portal's published `/Schemas` and `/ResourceTypes` from
//! `tests/fixtures/portal` (so `userName` is immutable, the faxportal extension exists),
//! requires a random bearer token, and forgets everything when it stops.

use super::{
    find_tool, fixtures_dir, free_port, log_stdio, log_tail, port_was_taken, random_hex, Proc,
    POLL_INTERVAL, PORT_ATTEMPTS, STARTUP_TIMEOUT,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const INSTALL_HINT: &str = "python3 -m venv target/venv && target/venv/bin/pip install \
                            scim2-server (or set DIRSYNC_SCIM2_SERVER to its path)";
const SCIM_JSON: &str = "application/scim+json";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// Page size used by [`ScimServer::users`] and [`ScimServer::groups`].
const PAGE: usize = 100;

/// A running `scim2-server`. Killed on `Drop`.
pub struct ScimServer {
    /// `http://127.0.0.1:PORT`: the SCIM base URL (`/Users`, `/Groups`, `/Schemas`, ...).
    /// The server answers under `/v2` as well, and its `meta.location`s use `/v2`.
    pub url: String,
    /// The bearer token it accepts: `portal-token-<random hex>`.
    pub token: String,
    agent: ureq::Agent,
    proc: Proc,
    log: PathBuf,
    // Last: dropped after `Drop::drop` has killed the server.
    dir: TempDir,
}

/// `$DIRSYNC_SCIM2_SERVER`, else `<crate>/target/venv/bin/scim2-server`, else `$PATH`.
pub fn scim2_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DIRSYNC_SCIM2_SERVER") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            panic!(
                "DIRSYNC_SCIM2_SERVER={} does not exist. Run scripts/test, which installs \
                 scim2-server, or: {INSTALL_HINT}",
                path.display()
            );
        }
        return path;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/scim2-server");
    find_tool("scim2-server", &[venv], INSTALL_HINT)
}

impl ScimServer {
    /// Starts scim2-server on a free loopback port and waits (15 s at most) until
    /// `GET /ServiceProviderConfig` with the token answers 200.
    #[track_caller]
    pub fn start() -> ScimServer {
        let binary = scim2_server_binary();
        let portal = fixtures_dir().join("portal");
        let token = format!("portal-token-{}", random_hex(16));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();

        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let dir = tempfile::Builder::new()
                .prefix("dirsync-scim-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
            let log = dir.path().join("scim2-server.log");
            let (out, err) = log_stdio(&log);
            let child = Command::new(&binary)
                .arg("--schema")
                .arg(portal.join("schemas.json"))
                .arg("--resource-type")
                .arg(portal.join("resource-types.json"))
                .args(["--bearer-token", &token, "--hostname", "127.0.0.1"])
                .args(["--port", &port.to_string()])
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let mut server = ScimServer {
                url,
                token: token.clone(),
                agent: agent.clone(),
                proc: Proc::new(child),
                log: log.clone(),
                dir,
            };

            let started = Instant::now();
            loop {
                if let Some(status) = server.proc.exited() {
                    let tail = log_tail(&log, 4000);
                    if port_was_taken(&tail) && attempt < PORT_ATTEMPTS {
                        break; // another process took the port: try a new one
                    }
                    panic!(
                        "scim2-server exited during startup ({status}) on {}:\n{tail}",
                        server.url
                    );
                }
                let last = match server.try_get("/ServiceProviderConfig") {
                    Ok((200, _)) => return server,
                    Ok((status, body)) => format!("HTTP {status}: {body}"),
                    Err(e) => e.to_string(),
                };
                if started.elapsed() > STARTUP_TIMEOUT {
                    server.stop();
                    panic!(
                        "scim2-server on {} did not answer GET /ServiceProviderConfig with 200 \
                         within {STARTUP_TIMEOUT:?} (last: {last}); its log:\n{}",
                        server.url,
                        log_tail(&log, 4000),
                    );
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            // Port race: `server` (and its directory) is dropped; try again on a fresh port.
        }
        unreachable!("the last attempt either returns or panics")
    }

    fn endpoint(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else if path.starts_with('/') {
            format!("{}{path}", self.url)
        } else {
            format!("{}/{path}", self.url)
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn try_get(&self, path: &str) -> Result<(u16, Value), ureq::Error> {
        let response = self
            .agent
            .get(&self.endpoint(path))
            .header("Authorization", &self.bearer())
            .header("Accept", SCIM_JSON)
            .call()?;
        read_response(response)
    }

    /// `GET <url><path>` with the token (`path` like `/Users?filter=...`, already encoded):
    /// the status and the JSON body (`Value::Null` when empty, a string when not JSON).
    #[track_caller]
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {} failed: {e}", self.endpoint(path)))
    }

    #[track_caller]
    fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let url = self.endpoint(path);
        let request = match method {
            "POST" => self.agent.post(&url),
            "PATCH" => self.agent.patch(&url),
            "PUT" => self.agent.put(&url),
            other => panic!("unsupported method {other}"),
        };
        request
            .header("Authorization", &self.bearer())
            .header("Accept", SCIM_JSON)
            .header("Content-Type", SCIM_JSON)
            .send(body.to_string())
            .and_then(read_response)
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
    }

    /// Every resource at `endpoint` (`/Users`, `/Groups`), following `startIndex`/`count`
    /// pagination.
    #[track_caller]
    fn list_all(&self, endpoint: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let path = format!("{endpoint}?startIndex={}&count={PAGE}", all.len() + 1);
            let (status, page) = self.get(&path);
            if status != 200 {
                panic!("GET {path} answered {status}: {page}");
            }
            let resources = page["Resources"].as_array().cloned().unwrap_or_default();
            let total = page["totalResults"]
                .as_u64()
                .unwrap_or_else(|| panic!("GET {path}: no totalResults in {page}"));
            let empty = resources.is_empty();
            all.extend(resources);
            if empty || all.len() as u64 >= total {
                return all;
            }
        }
    }

    /// All users (`GET /Users`, paged).
    #[track_caller]
    pub fn users(&self) -> Vec<Value> {
        self.list_all("/Users")
    }

    /// All groups (`GET /Groups`, paged).
    #[track_caller]
    pub fn groups(&self) -> Vec<Value> {
        self.list_all("/Groups")
    }

    /// `POST /Users` with `body` (add `schemas` yourself); panics unless 201. Returns the
    /// created user.
    #[track_caller]
    pub fn create_user(&self, body: Value) -> Value {
        let (status, created) = self.send("POST", "/Users", &body);
        if status != 201 {
            panic!("POST /Users answered {status}: {created}\nrequest: {body}");
        }
        created
    }

    /// `POST /Groups` with `body`; panics unless 201. Returns the created group.
    #[track_caller]
    pub fn create_group(&self, body: Value) -> Value {
        let (status, created) = self.send("POST", "/Groups", &body);
        if status != 201 {
            panic!("POST /Groups answered {status}: {created}\nrequest: {body}");
        }
        created
    }

    /// `PATCH /Users/{id}` with a PatchOp envelope around `ops` (a JSON array of
    /// operations); returns the status (scim2-server answers 204 on success).
    #[track_caller]
    pub fn patch_user(&self, id: &str, ops: Value) -> u16 {
        let body = json!({ "schemas": [PATCH_OP], "Operations": ops });
        self.send("PATCH", &format!("/Users/{id}"), &body).0
    }

    /// `PATCH /Groups/{id}` with a PatchOp envelope around `ops`; returns the status.
    #[track_caller]
    pub fn patch_group(&self, id: &str, ops: Value) -> u16 {
        let body = json!({ "schemas": [PATCH_OP], "Operations": ops });
        self.send("PATCH", &format!("/Groups/{id}"), &body).0
    }

    /// `DELETE /Users/{id}`: returns the status (scim2-server answers 204 on success).
    #[track_caller]
    pub fn delete_user(&self, id: &str) -> u16 {
        let url = self.endpoint(&format!("/Users/{id}"));
        self.agent
            .delete(&url)
            .header("Authorization", &self.bearer())
            .header("Accept", SCIM_JSON)
            .call()
            .and_then(read_response)
            .unwrap_or_else(|e| panic!("DELETE {url} failed: {e}"))
            .0
    }

    /// The tail of the server's log (one line per request).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 8000)
    }

    /// Kills the server (SIGKILL): requests fail from then on, e.g. to test an outage.
    /// Idempotent; `Drop` calls it too.
    pub fn stop(&mut self) {
        self.proc.kill();
    }
}

impl Drop for ScimServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_response(
    mut response: ureq::http::Response<ureq::Body>,
) -> Result<(u16, Value), ureq::Error> {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}
