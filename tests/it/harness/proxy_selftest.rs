//! Checks the fault-injecting [`Proxy`] against a real `scim2-server`: plain forwarding,
//! counting, each kind of [`Fault`], the schedules, rewritten answers, keep-alive, and
//! stopping.

use super::{Fault, Proxy, ScimServer, Seen};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

type Response = ureq::http::Response<ureq::Body>;

/// A ureq agent (keep-alive pool) that returns 4xx/5xx as responses.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn normal_agent() -> ureq::Agent {
    agent(Duration::from_secs(10))
}

/// A client of `base` (the proxy's or the server's URL) with the server's token.
struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    fn new(agent: ureq::Agent, base: &str, scim: &ScimServer) -> Self {
        Client {
            agent,
            base: base.to_owned(),
            token: scim.token.clone(),
        }
    }

    fn get(&self, path: &str) -> Result<Response, ureq::Error> {
        self.agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
    }

    fn send(&self, method: &str, path: &str, body: &Value) -> Result<Response, ureq::Error> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "POST" => self.agent.post(&url),
            "PATCH" => self.agent.patch(&url),
            other => panic!("unsupported method {other}"),
        };
        request
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/scim+json")
            .send(body.to_string())
    }

    fn create(&self, user_name: &str) -> Result<Response, ureq::Error> {
        self.send(
            "POST",
            "/Users",
            &json!({ "schemas": [USER], "userName": user_name }),
        )
    }

    fn rename(&self, id: &str, display_name: &str) -> Result<Response, ureq::Error> {
        let ops = json!([{ "op": "replace", "path": "displayName", "value": display_name }]);
        self.send(
            "PATCH",
            &format!("/Users/{id}"),
            &json!({ "schemas": [PATCH_OP], "Operations": ops }),
        )
    }
}

#[track_caller]
fn ok(result: Result<Response, ureq::Error>) -> Response {
    result.unwrap_or_else(|e| panic!("request failed: {e}"))
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

#[track_caller]
fn json_body(response: &mut Response) -> Value {
    let text = response.body_mut().read_to_string().expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[track_caller]
fn status_of(result: Result<Response, ureq::Error>) -> u16 {
    let mut response = ok(result);
    let _ = response.body_mut().read_to_vec(); // drain, so the connection is reused
    response.status().as_u16()
}

fn statuses(proxy: &Proxy) -> Vec<u16> {
    proxy.requests().iter().map(|s| s.status).collect()
}

#[test]
fn proxy_forwards_requests_and_keeps_headers() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    assert!(proxy.url.starts_with("http://127.0.0.1:"), "{}", proxy.url);
    assert_ne!(proxy.url, scim.url);
    assert_eq!(proxy.upstream(), scim.url);
    let via = Client::new(normal_agent(), &proxy.url, &scim);
    let direct = Client::new(normal_agent(), &scim.url, &scim);

    let mut created = ok(via.create("alice"));
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(header(&created, "etag").as_deref(), Some("W/\"1\""));
    // Host is passed through, so the upstream's locations point at the proxy.
    let location = header(&created, "location").expect("Location");
    assert!(location.starts_with(&proxy.url), "{location}");
    assert_eq!(
        header(&created, "connection").as_deref(),
        Some("keep-alive")
    );
    let user = json_body(&mut created);
    let id = user["id"].as_str().expect("id").to_owned();
    assert_eq!(scim.users().len(), 1);

    // The same resource through the proxy and directly: same status, ETag and body apart
    // from the host in the locations.
    let mut through = ok(via.get(&format!("/Users/{id}")));
    let mut straight = ok(direct.get(&format!("/Users/{id}")));
    assert_eq!(through.status(), straight.status());
    assert_eq!(header(&through, "etag"), header(&straight, "etag"));
    assert_eq!(
        header(&through, "content-type"),
        header(&straight, "content-type")
    );
    let through_text = through.body_mut().read_to_string().expect("body");
    let straight_text = straight.body_mut().read_to_string().expect("body");
    assert_eq!(through_text.replace(&proxy.url, &scim.url), straight_text);

    // PATCH: 204 with an empty body and the new ETag.
    let mut patched = ok(via.rename(&id, "Alice"));
    assert_eq!(patched.status().as_u16(), 204);
    assert_eq!(header(&patched, "etag").as_deref(), Some("W/\"2\""));
    assert_eq!(header(&patched, "content-length"), None);
    assert!(patched.body_mut().read_to_vec().expect("body").is_empty());

    // Conditional GET: a bodiless 304 keeps its ETag, and the connection stays usable.
    let not_modified = ok(via
        .agent
        .get(&format!("{}/Users/{id}", proxy.url))
        .header("Authorization", &format!("Bearer {}", scim.token))
        .header("If-None-Match", "W/\"2\"")
        .call());
    assert_eq!(not_modified.status().as_u16(), 304);
    assert_eq!(header(&not_modified, "etag").as_deref(), Some("W/\"2\""));
    let mut listed = ok(via.get("/Users?filter=userName%20eq%20%22alice%22"));
    assert_eq!(listed.status().as_u16(), 200);
    assert_eq!(json_body(&mut listed)["totalResults"], 1);

    let seen = proxy.requests();
    let lines: Vec<String> = seen.iter().map(Seen::to_string).collect();
    assert_eq!(
        lines,
        [
            "POST /Users -> 201".to_owned(),
            format!("GET /Users/{id} -> 200"),
            format!("PATCH /Users/{id} -> 204"),
            format!("GET /Users/{id} -> 304"),
            "GET /Users?filter=userName%20eq%20%22alice%22 -> 200".to_owned(),
        ],
        "{}",
        proxy.summary()
    );
    assert!(seen.iter().all(|s| !s.faulted && s.fault.is_none()));
    assert!(seen.iter().all(|s| s.upstream_status == Some(s.status)));
    assert!(seen[0].body.contains("\"alice\""), "{}", seen[0].body);
    assert!(seen[1].body.is_empty());

    assert_eq!(proxy.count("POST", "/Users"), 1);
    assert_eq!(proxy.count("GET", "/Users/"), 2);
    assert_eq!(proxy.count("get", "/Users"), 3);
    assert_eq!(proxy.count("PATCH", "/Users/"), 1);
    assert_eq!(proxy.count("*", "/Users"), 5);
    assert_eq!(proxy.count("", "/Groups"), 0);
    proxy.clear();
    assert!(proxy.requests().is_empty());
    assert_eq!(status_of(via.get("/ServiceProviderConfig")), 200);
    assert_eq!(proxy.count("GET", "/"), 1);
}

#[test]
fn proxy_status_fault_answers_without_forwarding() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let via = Client::new(normal_agent(), &proxy.url, &scim);

    proxy.fail_next(vec![Fault::retry_after(429, 7)]);
    assert_eq!(proxy.pending_faults(), 1);
    let mut throttled = ok(via.create("alice"));
    assert_eq!(throttled.status().as_u16(), 429);
    assert_eq!(header(&throttled, "retry-after").as_deref(), Some("7"));
    assert_eq!(
        header(&throttled, "content-type").as_deref(),
        Some("application/scim+json")
    );
    let error = json_body(&mut throttled);
    assert_eq!(error["schemas"], json!([SCIM_ERROR]));
    assert_eq!(error["status"], "429");
    assert!(
        scim.users().is_empty(),
        "a faulted request reached upstream"
    );
    assert_eq!(proxy.pending_faults(), 0);

    // Normal service resumes, on the same pooled connection.
    assert_eq!(status_of(via.create("alice")), 201);
    assert_eq!(scim.users().len(), 1);

    let seen = proxy.requests();
    assert_eq!(seen.len(), 2, "{}", proxy.summary());
    assert!(seen[0].faulted);
    assert_eq!(seen[0].fault, Some(Fault::retry_after(429, 7)));
    assert_eq!((seen[0].status, seen[0].upstream_status), (429, None));
    assert!(!seen[1].faulted);
    assert_eq!((seen[1].status, seen[1].upstream_status), (201, Some(201)));

    // Several queued faults, one per request, then normal service.
    proxy.fail_next(vec![
        Fault::status(503),
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    ]);
    proxy.fail_next(vec![Fault::status(502)]);
    proxy.clear();
    for _ in 0..4 {
        let _ = status_of(via.get("/ServiceProviderConfig"));
    }
    assert_eq!(statuses(&proxy), [503, 500, 502, 200]);
}

#[test]
fn proxy_reset_gives_a_connection_error() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);

    proxy.fail_next(vec![Fault::Reset]);
    let via = Client::new(normal_agent(), &proxy.url, &scim);
    let result = via.create("alice");
    assert!(result.is_err(), "expected a connection error: {result:?}");
    assert!(scim.users().is_empty(), "a reset request reached upstream");
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].fault, Some(Fault::Reset));
    assert_eq!((seen[0].status, seen[0].upstream_status), (0, None));

    // Normal service resumes (the agent opens a new connection).
    assert_eq!(status_of(via.create("alice")), 201);

    // On the wire: a real RST where SO_LINGER can be set, else a plain close.
    proxy.fail_next(vec![Fault::Reset]);
    let mut stream = connect(&proxy);
    stream
        .write_all(b"GET /ServiceProviderConfig HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let read = stream.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "got bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    if cfg!(target_os = "linux") {
        assert_eq!(
            read.as_ref().map_err(std::io::Error::kind).err(),
            Some(ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }
}

#[test]
fn proxy_delay_beyond_the_client_timeout_is_never_forwarded() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let impatient = Client::new(agent(Duration::from_secs(1)), &proxy.url, &scim);

    proxy.fail_next(vec![Fault::Delay(Duration::from_secs(3))]);
    let started = Instant::now();
    let result = impatient.create("alice");
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ureq::Error::Timeout(_))),
        "expected a timeout: {result:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    // The proxy notices the hang-up and drops the request long before the 3 s are up.
    proxy.wait_idle(Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        scim.users().is_empty(),
        "a dropped request reached upstream"
    );
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].status, seen[0].upstream_status), (0, None));

    // A delay within the client's patience is forwarded.
    proxy.fail_next(vec![Fault::Delay(Duration::from_millis(300))]);
    let started = Instant::now();
    assert_eq!(status_of(impatient.create("alice")), 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(scim.users().len(), 1);
    let seen = proxy.requests();
    assert_eq!((seen[1].status, seen[1].upstream_status), (201, Some(201)));
    assert!(seen[1].faulted);
}

#[test]
fn proxy_after_forward_makes_the_change_but_reports_failure() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let via = Client::new(normal_agent(), &proxy.url, &scim);

    proxy.fail_next(vec![Fault::after_forward(Fault::status(500))]);
    let mut failed = ok(via.create("alice"));
    assert_eq!(failed.status().as_u16(), 500);
    assert_eq!(json_body(&mut failed)["status"], "500");
    assert_eq!(
        scim.users().len(),
        1,
        "the upstream did not get the request"
    );

    proxy.fail_next(vec![Fault::AfterForward(Box::new(Fault::Reset))]);
    let result = via.create("bob");
    assert!(result.is_err(), "expected a connection error: {result:?}");
    assert_eq!(scim.users().len(), 2);

    // The upstream answers, but the answer is held past the client's timeout.
    let impatient = Client::new(agent(Duration::from_secs(1)), &proxy.url, &scim);
    proxy.fail_next(vec![Fault::after_forward(Fault::Delay(
        Duration::from_secs(3),
    ))]);
    let result = impatient.create("carol");
    assert!(matches!(result, Err(ureq::Error::Timeout(_))), "{result:?}");
    proxy.wait_idle(Duration::from_secs(5));
    assert_eq!(scim.users().len(), 3);

    let seen: Vec<(u16, Option<u16>)> = proxy
        .requests()
        .iter()
        .map(|s| (s.status, s.upstream_status))
        .collect();
    assert_eq!(
        seen,
        [(500, Some(201)), (0, Some(201)), (0, Some(201))],
        "{}",
        proxy.summary()
    );
}

/// Which of `n` GETs were faulted, starting from an empty log.
fn fault_pattern(proxy: &Proxy, via: &Client, n: usize) -> Vec<bool> {
    proxy.clear();
    for _ in 0..n {
        let status = status_of(via.get("/ServiceProviderConfig"));
        let last = proxy.requests().pop().expect("logged");
        assert_eq!(status, last.status, "{last}");
        assert_eq!(last.faulted, status != 200, "{last}");
    }
    proxy.requests().iter().map(|s| s.faulted).collect()
}

#[test]
fn proxy_random_faults_are_deterministic_per_seed() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let via = Client::new(normal_agent(), &proxy.url, &scim);
    let faults = vec![Fault::status(500), Fault::retry_after(503, 1)];

    proxy.random_faults(0.3, 42, faults.clone());
    let first = fault_pattern(&proxy, &via, 50);
    let codes: Vec<u16> = proxy
        .requests()
        .iter()
        .filter(|s| s.faulted)
        .map(|s| s.status)
        .collect();
    proxy.random_faults(0.3, 42, faults.clone());
    let again = fault_pattern(&proxy, &via, 50);
    assert_eq!(first, again, "same seed, different faults");
    let hits = first.iter().filter(|&&f| f).count();
    assert!((8..=24).contains(&hits), "{hits} of 50 faulted at rate 0.3");
    assert!(codes.contains(&500) && codes.contains(&503), "{codes:?}");

    proxy.random_faults(0.3, 43, faults.clone());
    assert_ne!(fault_pattern(&proxy, &via, 50), first, "seed ignored");

    proxy.random_faults(1.0, 7, vec![Fault::status(503)]);
    assert!(fault_pattern(&proxy, &via, 5).iter().all(|&f| f));
    proxy.random_faults(0.0, 42, faults);
    assert!(fault_pattern(&proxy, &via, 20).iter().all(|&f| !f));
}

#[test]
fn proxy_fail_matching_only_hits_matching_requests() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let via = Client::new(normal_agent(), &proxy.url, &scim);
    let mut created = ok(via.create("alice"));
    let id = json_body(&mut created)["id"]
        .as_str()
        .expect("id")
        .to_owned();

    proxy.fail_matching(
        "PATCH",
        "/Users/",
        vec![Fault::status(409), Fault::status(503)],
    );
    assert_eq!(status_of(via.get("/Users")), 200);
    assert_eq!(status_of(via.create("bob")), 201);
    assert_eq!(status_of(via.rename(&id, "A")), 409);
    assert_eq!(status_of(via.get(&format!("/Users/{id}"))), 200);
    assert_eq!(status_of(via.rename(&id, "B")), 503);
    assert_eq!(status_of(via.rename(&id, "C")), 204);
    assert_eq!(proxy.pending_faults(), 0);
    assert_eq!(scim.users().len(), 2);
    assert_eq!(proxy.count("PATCH", "/Users/"), 3);
    let faulted: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|s| s.faulted)
        .map(|s| format!("{} {}", s.method, s.status))
        .collect();
    assert_eq!(faulted, ["PATCH 409", "PATCH 503"]);

    // Rules come before the fail_next queue, which the others still get.
    proxy.fail_next(vec![Fault::status(500)]);
    proxy.fail_matching("GET", "/Schemas", vec![Fault::status(404)]);
    proxy.clear();
    assert_eq!(status_of(via.get("/Schemas")), 404);
    assert_eq!(status_of(via.get("/Schemas")), 500);
    assert_eq!(status_of(via.get("/Schemas")), 200);

    // Pass skips a request within a schedule: here the third create fails, and a passed
    // request is logged as unfaulted.
    proxy.clear();
    proxy.fail_matching(
        "POST",
        "/Users",
        vec![Fault::Pass, Fault::Pass, Fault::status(500)],
    );
    let statuses: Vec<u16> = ["c1", "c2", "c3", "c4"]
        .iter()
        .map(|name| status_of(via.create(name)))
        .collect();
    assert_eq!(statuses, [201, 201, 500, 201]);
    assert_eq!(scim.users().len(), 5);
    let faulted: Vec<bool> = proxy.requests().iter().map(|s| s.faulted).collect();
    assert_eq!(faulted, [false, false, true, false]);

    // heal() cancels everything scheduled.
    proxy.fail_next(vec![Fault::status(500)]);
    proxy.fail_matching("", "/", vec![Fault::Reset]);
    proxy.random_faults(1.0, 1, vec![Fault::status(503)]);
    proxy.heal();
    assert_eq!(proxy.pending_faults(), 0);
    assert_eq!(status_of(via.get("/ServiceProviderConfig")), 200);
}

#[test]
fn proxy_rewrite_changes_matching_json_answers_until_healed() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let via = Client::new(normal_agent(), &proxy.url, &scim);
    for name in ["alice", "bob", "carol"] {
        assert_eq!(status_of(via.create(name)), 201);
    }
    let seen_paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let paths = std::sync::Arc::clone(&seen_paths);
    proxy.rewrite_matching("GET", "/Users?", move |path, mut page| {
        paths.lock().unwrap().push(path.to_owned());
        page["totalResults"] = json!(42);
        page["Resources"].as_array_mut().unwrap().truncate(1);
        page
    });

    // The matching listing is rewritten, with a Content-Length that fits the new body.
    let mut listed = ok(via.get("/Users?startIndex=1&count=10"));
    assert_eq!(listed.status().as_u16(), 200);
    let length: usize = header(&listed, "content-length").unwrap().parse().unwrap();
    let text = listed.body_mut().read_to_string().unwrap();
    assert_eq!(length, text.len());
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["totalResults"], 42);
    assert_eq!(page["Resources"].as_array().unwrap().len(), 1);
    assert_eq!(
        *seen_paths.lock().unwrap(),
        ["/Users?startIndex=1&count=10"],
        "the function sees the request's path and query"
    );

    // Other requests, non-2xx answers and faulted answers pass unchanged.
    let mut one = ok(via.get(&format!(
        "/Users/{}",
        page["Resources"][0]["id"].as_str().unwrap()
    )));
    assert_eq!(json_body(&mut one), page["Resources"][0], "not rewritten");
    assert_eq!(
        status_of(via.get("/Users?filter=userName%20eq%20%22nobody%22%20and")),
        400
    );
    proxy.fail_next(vec![Fault::status(503)]);
    assert_eq!(status_of(via.get("/Users?count=10")), 503);
    let rewritten: Vec<(u16, bool)> = proxy
        .requests()
        .iter()
        .filter(|s| s.method == "GET")
        .map(|s| (s.status, s.rewritten))
        .collect();
    assert_eq!(
        rewritten,
        [(200, true), (200, false), (400, true), (503, true)]
    );
    assert!(proxy.summary().contains("[rewritten]"));

    proxy.heal();
    let mut healed = ok(via.get("/Users?startIndex=1&count=10"));
    let page = json_body(&mut healed);
    assert_eq!(page["totalResults"], 3);
    assert_eq!(page["Resources"].as_array().unwrap().len(), 3);
    assert_eq!(
        seen_paths.lock().unwrap().len(),
        1,
        "400 and 503 were not rewritten"
    );
}

#[test]
#[should_panic(expected = "AfterForward takes Status, Reset or Delay")]
fn proxy_rejects_nested_after_forward() {
    let proxy = Proxy::start("http://127.0.0.1:9");
    proxy.fail_next(vec![Fault::after_forward(Fault::after_forward(
        Fault::Reset,
    ))]);
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 on one connection

fn connect(proxy: &Proxy) -> TcpStream {
    let addr = proxy.url.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// A response read off the wire: status, headers (lowercased names), body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response framed by Content-Length (which the proxy always sends, except for
/// 204/304 and HEAD).
#[track_caller]
fn read_raw(reader: &mut BufReader<TcpStream>, head_request: bool) -> Raw {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let mut parts = line.trim_end().splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {line:?}");
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let raw = Raw {
        status,
        headers,
        body: Vec::new(),
    };
    assert!(raw.header("transfer-encoding").is_none());
    let len = match raw.header("content-length") {
        _ if head_request || status == 204 || status == 304 => 0,
        Some(n) => n.parse().expect("Content-Length"),
        None => panic!("no Content-Length on a {status}"),
    };
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("body");
    Raw { body, ..raw }
}

#[test]
fn proxy_serves_many_requests_on_one_keep_alive_connection() {
    let scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let auth = format!("Authorization: Bearer {}\r\nHost: test\r\n", scim.token);
    let mut stream = connect(&proxy);
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));

    let get = |path: &str| format!("GET {path} HTTP/1.1\r\n{auth}\r\n");
    stream
        .write_all(get("/ServiceProviderConfig").as_bytes())
        .expect("write");
    let config = read_raw(&mut reader, false);
    assert_eq!(config.status, 200);
    assert_eq!(config.header("connection"), Some("keep-alive"));
    let config: Value = serde_json::from_slice(&config.body).expect("JSON");
    assert_eq!(config["etag"]["supported"], true);

    let user = json!({ "schemas": [USER], "userName": "alice" }).to_string();
    let post = format!(
        "POST /Users HTTP/1.1\r\n{auth}Content-Type: application/scim+json\r\n\
         Content-Length: {}\r\n\r\n{user}",
        user.len()
    );
    stream.write_all(post.as_bytes()).expect("write");
    let created = read_raw(&mut reader, false);
    assert_eq!(created.status, 201);
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    let created: Value = serde_json::from_slice(&created.body).expect("JSON");
    let id = created["id"].as_str().expect("id");

    let ops = json!({ "schemas": [PATCH_OP], "Operations": [
        { "op": "replace", "path": "displayName", "value": "Alice" }
    ]})
    .to_string();
    let patch = format!(
        "PATCH /Users/{id} HTTP/1.1\r\n{auth}Content-Type: application/scim+json\r\n\
         Content-Length: {}\r\n\r\n{ops}",
        ops.len()
    );
    stream.write_all(patch.as_bytes()).expect("write");
    let patched = read_raw(&mut reader, false);
    assert_eq!(patched.status, 204);
    assert_eq!(patched.header("etag"), Some("W/\"2\""));
    assert_eq!(patched.header("content-length"), None);

    // Pipelined: two requests in one write, answered in order.
    stream
        .write_all(format!("{}{}", get(&format!("/Users/{id}")), get("/Groups")).as_bytes())
        .expect("write");
    let fetched = read_raw(&mut reader, false);
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.header("etag"), Some("W/\"2\""));
    let groups = read_raw(&mut reader, false);
    assert_eq!(groups.status, 200);

    // A chunked request body is de-chunked and forwarded.
    let bob = json!({ "schemas": [USER], "userName": "bob" }).to_string();
    let (a, b) = bob.split_at(10);
    let chunked = format!(
        "POST /Users HTTP/1.1\r\n{auth}Content-Type: application/scim+json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    stream.write_all(chunked.as_bytes()).expect("write");
    assert_eq!(read_raw(&mut reader, false).status, 201);

    // A fault does not end the connection.
    proxy.fail_next(vec![Fault::retry_after(503, 2)]);
    stream.write_all(get("/Users").as_bytes()).expect("write");
    let unavailable = read_raw(&mut reader, false);
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.header("retry-after"), Some("2"));
    assert_eq!(unavailable.header("connection"), Some("keep-alive"));

    // HEAD: headers only (scim2-server answers 405 with a Content-Length).
    stream
        .write_all(format!("HEAD /Users/{id} HTTP/1.1\r\n{auth}\r\n").as_bytes())
        .expect("write");
    let head = read_raw(&mut reader, true);
    assert_eq!(head.status, 405);

    // Connection: close is honoured: the response, then EOF.
    stream
        .write_all(format!("GET /Users HTTP/1.1\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .expect("write");
    let last = read_raw(&mut reader, false);
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    let listed: Value = serde_json::from_slice(&last.body).expect("JSON");
    assert_eq!(listed["totalResults"], 2);
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).expect("EOF"), 0);

    assert_eq!(
        statuses(&proxy),
        [200, 201, 204, 200, 200, 201, 503, 405, 200],
        "{}",
        proxy.summary()
    );
    assert_eq!(scim.users().len(), 2);
}

#[test]
fn proxy_answers_502_when_the_upstream_is_down() {
    let mut scim = ScimServer::start();
    let proxy = Proxy::start(&scim.url);
    let via = Client::new(normal_agent(), &proxy.url, &scim);
    assert_eq!(status_of(via.get("/ServiceProviderConfig")), 200);
    scim.stop();
    let mut down = ok(via.get("/ServiceProviderConfig"));
    assert_eq!(down.status().as_u16(), 502);
    assert_eq!(json_body(&mut down)["status"], "502");
    let seen = proxy.requests();
    assert_eq!((seen[1].status, seen[1].upstream_status), (502, None));
    assert!(!seen[1].faulted);
}

#[test]
fn proxy_stop_closes_everything_and_refuses_connections() {
    let scim = ScimServer::start();
    let mut proxy = Proxy::start(&scim.url);
    let addr = proxy.url.trim_start_matches("http://").to_owned();

    // An idle keep-alive connection, and a request held for a long time.
    let mut idle = connect(&proxy);
    idle.write_all(b"GET /ServiceProviderConfig HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut idle_reader = BufReader::new(idle.try_clone().expect("clone"));
    assert_eq!(read_raw(&mut idle_reader, false).status, 200);
    proxy.fail_next(vec![Fault::Delay(Duration::from_secs(60))]);
    let mut held = connect(&proxy);
    held.write_all(b"GET /ServiceProviderConfig HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    while proxy.requests().len() < 2 {
        std::thread::sleep(Duration::from_millis(10));
    }

    let started = Instant::now();
    proxy.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    proxy.stop(); // idempotent
    proxy.wait_idle(Duration::from_secs(1));

    let mut rest = Vec::new();
    assert_eq!(
        idle_reader.read_to_end(&mut rest).map_err(|e| e.kind()),
        Ok(0)
    );
    assert!(matches!(held.read_to_end(&mut rest), Ok(0) | Err(_)));
    assert!(rest.is_empty());
    // The port is free again. Another test's server may take it at once (tests run in
    // parallel and free ports are reused), so what matters is that the stopped proxy
    // takes nothing: either the connection is refused or it reaches someone else.
    let seen = proxy.requests().len();
    match TcpStream::connect(&addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e:?}"),
        Ok(mut other) => {
            let _ = other.write_all(b"GET /ServiceProviderConfig HTTP/1.1\r\nHost: x\r\n\r\n");
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                proxy.requests().len(),
                seen,
                "the stopped proxy took a request"
            );
        }
    }
    assert_eq!(proxy.requests()[1].status, 0);
}
