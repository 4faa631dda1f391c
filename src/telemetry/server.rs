//! The HTTP listener of `dirsync run` on `health.listen`: `GET /healthz` and `GET /metrics`
//! (HTTP/1.1 over `hyper`). Off unless the config asks for it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::health::{healthz, HealthState};
use super::{CycleFacts, Telemetry, METRICS_CONTENT_TYPE};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long answers in flight may take to finish once the listener is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the listener could not start. Fatal at start: the admin fixes `health.listen` (or
/// stops whatever holds the port).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen on {addr} (health.listen): {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// What the listener and the daemon share: the metrics and what `/healthz` knows.
#[derive(Debug)]
pub struct Shared {
    telemetry: Arc<Telemetry>,
    health: Mutex<HealthState>,
    max_age: Mutex<Duration>,
}

impl Shared {
    /// `max_age` is `health.max_age_secs`.
    pub fn new(telemetry: Arc<Telemetry>, max_age: Duration) -> Shared {
        Shared {
            telemetry,
            health: Mutex::new(HealthState::default()),
            max_age: Mutex::new(max_age),
        }
    }

    /// The metrics, to hand to the portal client
    /// ([`crate::portal::PortalClient::with_telemetry`]).
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// After a config reload.
    pub fn set_max_age(&self, max_age: Duration) {
        *lock(&self.max_age) = max_age;
    }

    /// After each cycle: counts it in the metrics and remembers it for `/healthz`, with
    /// `reason` (one line; see [`super::report_reason`], or the error of a failed cycle).
    pub fn record_cycle(&self, facts: &CycleFacts, reason: &str) {
        self.telemetry.observe_cycle(facts);
        lock(&self.health).record(facts.outcome, facts.finished_at, reason);
    }

    /// A copy of what `/healthz` knows.
    pub fn health(&self) -> HealthState {
        lock(&self.health).clone()
    }

    /// The `/healthz` answer at `now`: status and reason.
    pub fn healthz(&self, now: SystemTime) -> (u16, String) {
        let max_age = *lock(&self.max_age);
        healthz(&lock(&self.health), now, max_age)
    }
}

/// A lock whose holder panicked still holds consistent data here (plain values, set
/// whole): use it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds the listener to `health.listen`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TelemetryError> {
    TcpListener::bind(addr).await.map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the port is in use (another dirsync, or another service?)".to_string()
            }
            std::io::ErrorKind::AddrNotAvailable => "this host has no such address".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".to_string()
            }
            _ => crate::secret::io_reason(&e),
        };
        TelemetryError::Bind { addr, reason }
    })
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown` resolves; then stops
/// accepting and lets the answers in flight finish (for a few seconds at most).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /healthz and /metrics");
    }
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pass, and try again shortly.
                    warn!(error = %e, "health listener: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let shared = Arc::clone(&shared);
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let answer = respond(&shared, req.method(), req.uri().path(), SystemTime::now());
            async move { Ok::<_, Infallible>(answer) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "health listener: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("health listener: connections still open at shutdown were dropped");
    }
}

/// The answer to `method path` at `now`.
fn respond(shared: &Shared, method: &Method, path: &str, now: SystemTime) -> Response<Full<Bytes>> {
    let known = matches!(path, "/healthz" | "/metrics");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz or /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from(shared.telemetry.render())));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
        return r;
    }
    let (status, reason) = shared.healthz(now);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, &format!("{reason}\n"))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{ChangeKind, Outcome, ReadKind};

    fn ok_cycle(finished_at: SystemTime) -> CycleFacts {
        CycleFacts {
            read: ReadKind::Full,
            outcome: Outcome::Ok,
            duration: Duration::from_secs(2),
            finished_at,
            entries_read_directory: 10,
            entries_read_portal: 8,
            applied: vec![(ChangeKind::Create, 3)],
            failures: Vec::new(),
            held_back: 0,
        }
    }

    /// GET `url`: status, content type and body.
    async fn get(client: &reqwest::Client, url: &str) -> (u16, String, String) {
        let r = client.get(url).send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, content_type, r.text().await.unwrap())
    }

    #[tokio::test]
    async fn serves_healthz_and_metrics_as_cycles_come_and_stops_when_told() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::new(
            Arc::new(Telemetry::new()),
            Duration::from_secs(3600),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::clone(&shared), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let healthz = format!("http://{addr}/healthz");
        let metrics = format!("http://{addr}/metrics");

        assert_eq!(
            get(&client, &healthz).await,
            (
                503,
                "text/plain; charset=utf-8".to_string(),
                "no cycle has run yet\n".to_string()
            )
        );

        shared.record_cycle(&ok_cycle(SystemTime::now()), "");
        let (status, _, body) = get(&client, &healthz).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("ok: last cycle succeeded at "), "{body}");

        let (status, content_type, body) = get(&client, &metrics).await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        for line in [
            r#"dirsync_changes_applied_total{kind="create"} 3"#,
            r#"dirsync_entries_read_total{side="directory"} 10"#,
            r#"dirsync_cycle_duration_seconds_count{read="full",outcome="ok"} 1"#,
        ] {
            assert!(body.lines().any(|l| l == line), "no {line:?} in:\n{body}");
        }

        shared.record_cycle(
            &CycleFacts::failed(Duration::from_secs(1), SystemTime::now()),
            "portal: portal unreachable or failing: GET /Users failed",
        );
        let (status, _, body) = get(&client, &healthz).await;
        assert_eq!(status, 503);
        assert!(body.starts_with("last cycle failed at "), "{body}");
        assert!(
            body.ends_with(": portal: portal unreachable or failing: GET /Users failed\n"),
            "{body}"
        );
        let (_, _, body) = get(&client, &metrics).await;
        assert!(
            body.lines().any(|l| l
                == r#"dirsync_cycle_duration_seconds_count{read="unknown",outcome="failed"} 1"#),
            "{body}"
        );

        // An ok cycle, but the last success is older than max_age.
        shared.record_cycle(&ok_cycle(SystemTime::now() - Duration::from_secs(7200)), "");
        let (status, _, body) = get(&client, &healthz).await;
        assert_eq!(status, 503);
        assert!(body.starts_with("no successful cycle since "), "{body}");
        assert!(body.ends_with(" (max_age_secs 3600)\n"), "{body}");
        shared.set_max_age(Duration::from_secs(3 * 3600));
        assert_eq!(get(&client, &healthz).await.0, 200);

        let r = client.post(&metrics).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405);
        assert_eq!(r.headers().get(ALLOW).unwrap(), "GET, HEAD");
        assert_eq!(get(&client, &format!("http://{addr}/")).await.0, 404);
        assert_eq!(
            get(&client, &format!("http://{addr}/healthz/x")).await.0,
            404
        );

        // The client still holds a kept-alive connection: shutdown closes it.
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("the listener stops when told")
            .unwrap();
        let after = reqwest::Client::new().get(&healthz).send().await;
        assert!(after.is_err(), "still answering after shutdown: {after:?}");
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error_naming_the_address_and_the_key() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot listen on {addr} (health.listen): the port is in use (another dirsync, or another service?)"
            )
        );
    }
}
