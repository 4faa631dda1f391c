//! [`Proxy`]: an HTTP/1.1 reverse proxy for tests, put between dirsync and the stand-in
//! portal. It logs every request ([`Proxy::requests`], [`Proxy::count`]) and injects
//! [`Fault`]s on a schedule chosen by the test ([`Proxy::fail_next`],
//! [`Proxy::fail_matching`], [`Proxy::random_faults`]).
//!
//! Protocol, as seen by the client:
//! - HTTP/1.1 with keep-alive: any number of requests, one after another (pipelining is
//!   tolerated, answered in order). Every response has an exact `Content-Length` (none for
//!   204/304) and `Connection: keep-alive`, or `Connection: close` followed by a close when
//!   the client asked for it (or spoke HTTP/1.0 without `keep-alive`). An idle connection
//!   is never closed by the proxy, except by [`Proxy::stop`], so a client's connection pool
//!   never races a server-side idle close.
//! - Request bodies by `Content-Length` or `Transfer-Encoding: chunked` (de-chunked and
//!   forwarded with a `Content-Length`); other transfer codings get 501. `Expect:
//!   100-continue` is answered with `100 Continue` by the proxy itself.
//! - Headers are forwarded as they came, minus the hop-by-hop ones (`Connection`,
//!   `Keep-Alive`, `Transfer-Encoding`, `TE`, `Trailer`, `Upgrade`, `Proxy-Connection`, and
//!   any named in `Connection`). `Host` is kept, so the upstream's `Location` and
//!   `meta.location` point at the proxy (scim2-server builds them from `Host`).
//!
//! Towards the upstream: one fresh TCP connection per request, with `Connection: close`;
//! the response is read in full (by `Content-Length`, chunked, or up to the close, as
//! HTTP/1.0 scim2-server does), then relayed with status line, headers (`ETag`,
//! `Location`, `Retry-After`, ...) and body unchanged, unless a rewrite rule matches: then
//! a 2xx JSON body is replaced by what the rule's function makes of it (with the
//! `Content-Length` of the new body). An upstream that cannot be reached or
//! answers garbage gives the client a 502 (logged unfaulted, `upstream_status: None`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest request or response head (request line or status line plus headers).
const MAX_HEAD: usize = 64 * 1024;
/// Largest body the proxy buffers.
const MAX_BODY: usize = 64 << 20;
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per read or write on the upstream connection.
const UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a held request ([`Fault::Delay`]) checks whether its client hung up.
const HANGUP_POLL: Duration = Duration::from_millis(10);
const SCIM_ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// What happens to one request instead of (or besides) plain forwarding.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer `code` with a small SCIM error body (and `Retry-After: <seconds>` if given),
    /// without forwarding upstream.
    Status { code: u16, retry_after: Option<u64> },
    /// Hold the request this long, then forward it. If the client hangs up meanwhile (say
    /// its timeout fired) the request is dropped: the upstream never sees it.
    Delay(Duration),
    /// Read the request, then close the connection without a response: an RST on Linux
    /// (`SO_LINGER` 0), a plain close elsewhere. Not forwarded.
    Reset,
    /// Forward the request (the upstream makes the change), then answer the client with the
    /// inner fault instead of the upstream's response: `Status` or `Reset`, or `Delay` to
    /// hold the upstream's response that long (dropped if the client hangs up).
    AfterForward(Box<Fault>),
    /// Forward the request unchanged, as if no fault were scheduled: lets a schedule skip
    /// requests (`fail_matching("POST", "/Users", vec![Pass, Pass, status(500)])` fails the
    /// third create). Logged as unfaulted.
    Pass,
}

impl Fault {
    /// `Fault::Status { code, retry_after: None }`.
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
        }
    }

    /// `Fault::Status { code, retry_after: Some(seconds) }`, e.g. `Fault::retry_after(429, 1)`.
    pub fn retry_after(code: u16, seconds: u64) -> Fault {
        Fault::Status {
            code,
            retry_after: Some(seconds),
        }
    }

    /// `Fault::AfterForward(Box::new(inner))`.
    pub fn after_forward(inner: Fault) -> Fault {
        Fault::AfterForward(Box::new(inner))
    }

    /// Panics (in the test's thread, at the caller) on a fault the proxy cannot carry out.
    #[track_caller]
    fn validate(&self) {
        match self {
            Fault::Status { code, .. } if !(200..=599).contains(code) => {
                panic!("Fault::Status code must be 200..=599, got {code}")
            }
            Fault::AfterForward(inner)
                if matches!(**inner, Fault::AfterForward(_) | Fault::Pass) =>
            {
                panic!("Fault::AfterForward takes Status, Reset or Delay: {self:?}")
            }
            Fault::AfterForward(inner) => inner.validate(),
            _ => {}
        }
    }
}

/// One request the proxy received, in arrival order.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `POST`, `PATCH`, ...
    pub method: String,
    /// Path and query as the client sent them, e.g. `/Users?filter=...` (origin form).
    pub path: String,
    /// The status the client got; 0 when it got none (Reset, a held request whose client
    /// hung up, or while the request is still in flight).
    pub status: u16,
    /// Whether a fault was applied.
    pub faulted: bool,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// What the upstream answered when the request was forwarded; `None` when it was not
    /// forwarded (or the upstream could not be reached).
    pub upstream_status: Option<u16>,
    /// The request body (lossy UTF-8, de-chunked).
    pub body: String,
    /// A [`Proxy::rewrite_matching`] rule matched: a 2xx JSON answer was rewritten.
    pub rewritten: bool,
}

impl fmt::Display for Seen {
    /// `PATCH /Groups/42 -> 204`, with the fault and the upstream's answer when they differ.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.method, self.path, self.status)?;
        if let Some(fault) = &self.fault {
            write!(f, " [fault {fault:?}]")?;
        }
        if self.rewritten {
            write!(f, " [rewritten]")?;
        }
        match self.upstream_status {
            Some(upstream) if upstream != self.status || self.fault.is_some() => {
                write!(f, " [upstream {upstream}]")
            }
            Some(_) => Ok(()),
            None => write!(f, " [not forwarded]"),
        }
    }
}

/// A running proxy on `127.0.0.1`. Stopped on `Drop`.
pub struct Proxy {
    /// `http://127.0.0.1:PORT` plus the upstream's base path, if it had one: the same path
    /// layout as the upstream (`{url}/Users` is forwarded to `{upstream}/Users`).
    pub url: String,
    upstream: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy for `upstream` (`http://HOST:PORT[/base]`, e.g. `ScimServer::url`) on
    /// a free loopback port; one thread per client connection.
    #[track_caller]
    pub fn start(upstream: &str) -> Proxy {
        let (upstream_addr, base) = parse_upstream(upstream);
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("proxy: cannot bind a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy: cannot read the bound port: {e}"));
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            stopping: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
            conns: Mutex::new(Conns::default()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(&shared, &listener))
                .unwrap_or_else(|e| panic!("proxy: cannot spawn the accept thread: {e}"))
        };
        Proxy {
            url: format!("http://{addr}{base}"),
            upstream: upstream.to_owned(),
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The upstream URL given to [`Proxy::start`].
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Every request seen so far (since the last [`Proxy::clear`]), in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared
            .state()
            .log
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// The log as text, one [`Seen`] per line, for assertion messages.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for seen in self.requests() {
            out.push_str(&seen.to_string());
            out.push('\n');
        }
        out
    }

    /// Forgets the log (not the scheduled faults).
    pub fn clear(&self) {
        self.shared.state().log.clear();
    }

    /// How many logged requests have this method (case-insensitive; `""` or `"*"`: any) and
    /// a path (with query) starting with `path_prefix`, e.g. `count("PATCH", "/Groups/")`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.shared
            .state()
            .log
            .iter()
            .filter(|(_, s)| matches(method, path_prefix, &s.method, &s.path))
            .count()
    }

    /// The next requests get these faults, one each, in order; then normal service resumes.
    /// Appends to faults already queued this way.
    #[track_caller]
    pub fn fail_next(&self, faults: Vec<Fault>) {
        faults.iter().for_each(Fault::validate);
        self.shared.state().next.extend(faults);
    }

    /// Like [`Proxy::fail_next`], but only for requests matching `method` and `path_prefix`
    /// (as in [`Proxy::count`]). Rules are tried in the order they were added, before the
    /// [`Proxy::fail_next`] queue and before [`Proxy::random_faults`].
    #[track_caller]
    pub fn fail_matching(&self, method: &str, path_prefix: &str, faults: Vec<Fault>) {
        faults.iter().for_each(Fault::validate);
        if faults.is_empty() {
            return;
        }
        self.shared.state().rules.push(Rule {
            method: method.to_owned(),
            prefix: path_prefix.to_owned(),
            faults: faults.into(),
        });
    }

    /// From now on each request (not already given a scheduled fault) independently gets,
    /// with probability `rate`, one of `faults` chosen uniformly. Deterministic for a `seed`
    /// given the order in which requests arrive (a sequential client). `rate` 0 (or no
    /// faults) turns it off. Replaces an earlier call.
    #[track_caller]
    pub fn random_faults(&self, rate: f64, seed: u64, faults: Vec<Fault>) {
        assert!(
            (0.0..=1.0).contains(&rate),
            "random_faults: rate must be within 0..=1, got {rate}"
        );
        faults.iter().for_each(Fault::validate);
        let random = if rate > 0.0 && !faults.is_empty() {
            Some(Random {
                rate,
                rng: SplitMix64(seed),
                faults,
            })
        } else {
            None
        };
        self.shared.state().random = random;
    }

    /// From now on (until [`Proxy::heal`]) the upstream's 2xx JSON answers to requests
    /// matching `method` and `path_prefix` (as in [`Proxy::count`]) reach the client as
    /// `rewrite(path, body)` makes them, `path` being the request's path and query: e.g. a
    /// listing page with another `totalResults`, or without some `Resources`. Other
    /// answers pass unchanged. The first matching rule applies; faults still apply (a
    /// request given `Fault::Delay` is rewritten after the delay). Logged as
    /// [`Seen::rewritten`].
    pub fn rewrite_matching(
        &self,
        method: &str,
        path_prefix: &str,
        rewrite: impl Fn(&str, Value) -> Value + Send + Sync + 'static,
    ) {
        self.shared.state().rewrites.push(RewriteRule {
            method: method.to_owned(),
            prefix: path_prefix.to_owned(),
            rewrite: Arc::new(rewrite),
        });
    }

    /// Cancels every scheduled fault and rewrite: the `fail_next` queue, `fail_matching`
    /// rules, `random_faults` and `rewrite_matching` rules.
    pub fn heal(&self) {
        let mut state = self.shared.state();
        state.next.clear();
        state.rules.clear();
        state.random = None;
        state.rewrites.clear();
    }

    /// Faults scheduled with `fail_next` and `fail_matching` and not used yet.
    pub fn pending_faults(&self) -> usize {
        let state = self.shared.state();
        state.next.len() + state.rules.iter().map(|r| r.faults.len()).sum::<usize>()
    }

    /// Waits until no request is being handled (received but not yet answered, dropped or
    /// reset); panics after `timeout`.
    #[track_caller]
    pub fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state();
        while state.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let log: Vec<String> = state.log.iter().map(|(_, s)| s.to_string()).collect();
                panic!(
                    "proxy: {} request(s) still in flight after {timeout:?}; log:\n{}",
                    state.in_flight,
                    log.join("\n")
                );
            }
            state = self
                .shared
                .idle
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stops accepting, closes every connection (client and upstream side) and joins the
    /// proxy's threads; connections are refused from then on. Idempotent; `Drop` calls it.
    pub fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = acceptor.join();
        let threads = {
            let mut conns = self.shared.conns();
            for stream in conns.streams.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut conns.threads)
        };
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `http://HOST[:PORT][/base]` → the upstream's address and base path (no trailing `/`).
#[track_caller]
fn parse_upstream(upstream: &str) -> (SocketAddr, String) {
    let Some(rest) = upstream.strip_prefix("http://") else {
        panic!("proxy: upstream must be an http:// URL, got {upstream:?}");
    };
    let (authority, base) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("proxy: cannot resolve the upstream {upstream:?}"));
    (addr, base.to_owned())
}

fn matches(method: &str, prefix: &str, seen_method: &str, seen_path: &str) -> bool {
    (method.is_empty() || method == "*" || method.eq_ignore_ascii_case(seen_method))
        && seen_path.starts_with(prefix)
}

// ---------------------------------------------------------------------------------------
// Shared state

struct Shared {
    upstream: SocketAddr,
    stopping: AtomicBool,
    state: Mutex<State>,
    /// Signalled when `State::in_flight` drops.
    idle: Condvar,
    conns: Mutex<Conns>,
}

#[derive(Default)]
struct State {
    /// Sequence number (to update an entry after `clear`) and entry.
    log: Vec<(u64, Seen)>,
    seq: u64,
    in_flight: usize,
    next: VecDeque<Fault>,
    rules: Vec<Rule>,
    random: Option<Random>,
    rewrites: Vec<RewriteRule>,
}

/// Makes the client's JSON body from the upstream's: `(path and query, body) -> body`.
type Rewrite = Arc<dyn Fn(&str, Value) -> Value + Send + Sync>;

struct RewriteRule {
    method: String,
    prefix: String,
    rewrite: Rewrite,
}

struct Rule {
    method: String,
    prefix: String,
    faults: VecDeque<Fault>,
}

struct Random {
    rate: f64,
    rng: SplitMix64,
    faults: Vec<Fault>,
}

/// Open sockets (clones, to shut them down on stop) and connection threads.
#[derive(Default)]
struct Conns {
    next_id: u64,
    streams: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Registers a socket so that `stop` can shut it down; `None` once stopping.
    fn register(self: &Arc<Self>, stream: &TcpStream) -> Option<Registered> {
        let clone = stream.try_clone().ok()?;
        let mut conns = self.conns();
        // Checked under the lock `stop` takes after setting the flag: a socket registered
        // here is either seen by `stop` or refused.
        if self.stopping() {
            return None;
        }
        let id = conns.next_id;
        conns.next_id += 1;
        conns.streams.insert(id, clone);
        Some(Registered {
            shared: Arc::clone(self),
            id,
        })
    }

    /// Logs a request, picks its fault and rewrite and counts it in flight.
    fn admit(self: &Arc<Self>, request: &Request) -> (InFlight, Option<Fault>, Option<Rewrite>) {
        let mut state = self.state();
        // A scheduled Pass is plain forwarding: neither faulted nor logged as a fault.
        let fault = state
            .pick(&request.method, &request.target)
            .filter(|f| *f != Fault::Pass);
        let rewrite = state
            .rewrites
            .iter()
            .find(|r| matches(&r.method, &r.prefix, &request.method, &request.target))
            .map(|r| Arc::clone(&r.rewrite));
        state.seq += 1;
        let seq = state.seq;
        state.in_flight += 1;
        state.log.push((
            seq,
            Seen {
                method: request.method.clone(),
                path: request.target.clone(),
                status: 0,
                faulted: fault.is_some(),
                fault: fault.clone(),
                upstream_status: None,
                body: String::from_utf8_lossy(&request.body).into_owned(),
                rewritten: rewrite.is_some(),
            },
        ));
        (
            InFlight {
                shared: Arc::clone(self),
                seq,
            },
            fault,
            rewrite,
        )
    }
}

impl State {
    fn pick(&mut self, method: &str, path: &str) -> Option<Fault> {
        if let Some(i) = self
            .rules
            .iter()
            .position(|r| matches(&r.method, &r.prefix, method, path))
        {
            let fault = self.rules[i].faults.pop_front();
            if self.rules[i].faults.is_empty() {
                self.rules.remove(i);
            }
            return fault;
        }
        if let Some(fault) = self.next.pop_front() {
            return Some(fault);
        }
        let random = self.random.as_mut()?;
        if random.rng.next_f64() < random.rate {
            let i = (random.rng.next_u64() % random.faults.len() as u64) as usize;
            return Some(random.faults[i].clone());
        }
        None
    }
}

/// A registered socket; unregistered on drop.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.conns().streams.remove(&self.id);
    }
}

/// A logged request being handled; `wait_idle` waits for these to drop.
struct InFlight {
    shared: Arc<Shared>,
    seq: u64,
}

impl InFlight {
    /// Records what the client gets, before it gets it (so a client that saw its response
    /// also sees it logged).
    fn record(&self, status: u16, upstream_status: Option<u16>) {
        let mut state = self.shared.state();
        if let Some((_, seen)) = state.log.iter_mut().rev().find(|(s, _)| *s == self.seq) {
            seen.status = status;
            seen.upstream_status = upstream_status;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.state().in_flight -= 1;
        self.shared.idle.notify_all();
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, and good enough to pick faults.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------
// Connections

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for incoming in listener.incoming() {
        if shared.stopping() {
            return;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(_) => {
                // EMFILE and the like: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some(registered) = shared.register(&stream) else {
            if shared.stopping() {
                return;
            }
            continue; // could not clone the socket: drop this connection
        };
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("proxy-conn".to_owned())
            .spawn(move || {
                serve(&conn_shared, stream);
                // Drops the registry's clone last: only then is the socket really closed
                // (which is what turns `Fault::Reset` into an RST).
                drop(registered);
            });
        let mut conns = shared.conns();
        conns.threads.retain(|t| !t.is_finished());
        if let Ok(handle) = spawned {
            conns.threads.push(handle);
        }
    }
}

/// A parsed request.
struct Request {
    method: String,
    /// Origin form: path and query.
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The client framed a body (`Content-Length` or `Transfer-Encoding`), even if empty.
    framed: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    fn keep_alive(&self) -> bool {
        let tokens = connection_tokens(&self.headers);
        if self.version == "HTTP/1.0" {
            tokens.iter().any(|t| t == "keep-alive")
        } else {
            !tokens.iter().any(|t| t == "close")
        }
    }
}

/// Why a request could not be read.
enum BadRequest {
    /// The client went away (or the proxy is stopping): nothing to answer.
    Gone,
    /// Answer this status and close.
    Status(u16, &'static str),
}

impl From<io::Error> for BadRequest {
    fn from(_: io::Error) -> Self {
        BadRequest::Gone
    }
}

/// What the client gets.
enum Reply {
    Send {
        status: u16,
        bytes: Vec<u8>,
    },
    /// Close without a response (RST where possible).
    Reset,
    /// The client hung up while its request was held: just close.
    HungUp,
}

fn serve(shared: &Arc<Shared>, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = client;
    loop {
        let request = match read_request(&mut reader, &mut writer) {
            Ok(Some(request)) => request,
            Ok(None) | Err(BadRequest::Gone) => return,
            Err(BadRequest::Status(status, detail)) => {
                let _ = writer.write_all(&error_response(status, None, detail, false, false));
                return;
            }
        };
        if shared.stopping() {
            return;
        }
        let keep_alive = request.keep_alive();
        let (in_flight, fault, rewrite) = shared.admit(&request);
        let relay = Relay {
            shared,
            request: &request,
            keep_alive,
            rewrite,
        };
        let (reply, upstream_status) = handle(&relay, fault, &writer);
        match reply {
            Reply::Send { status, bytes } => {
                in_flight.record(status, upstream_status);
                if writer
                    .write_all(&bytes)
                    .and_then(|()| writer.flush())
                    .is_err()
                {
                    return;
                }
                drop(in_flight);
                if !keep_alive {
                    let _ = writer.shutdown(Shutdown::Write);
                    return;
                }
            }
            Reply::Reset => {
                in_flight.record(0, upstream_status);
                set_linger_zero(&writer);
                // Returning drops both halves; the caller drops the registry's clone.
                return;
            }
            Reply::HungUp => {
                in_flight.record(0, upstream_status);
                return;
            }
        }
    }
}

/// One request to forward, and what to make of the answer.
struct Relay<'a> {
    shared: &'a Arc<Shared>,
    request: &'a Request,
    keep_alive: bool,
    rewrite: Option<Rewrite>,
}

/// Carries out `fault` (or plain forwarding) for one request.
fn handle(relay: &Relay<'_>, fault: Option<Fault>, client: &TcpStream) -> (Reply, Option<u16>) {
    let (shared, request, keep_alive) = (relay.shared, relay.request, relay.keep_alive);
    let head = request.method == "HEAD";
    match fault {
        None | Some(Fault::Pass) => relay.send(),
        Some(Fault::Status { code, retry_after }) => (
            Reply::Send {
                status: code,
                bytes: error_response(
                    code,
                    retry_after,
                    "fault injected by the test proxy",
                    keep_alive,
                    head,
                ),
            },
            None,
        ),
        Some(Fault::Reset) => (Reply::Reset, None),
        Some(Fault::Delay(delay)) => {
            if hold(shared, client, delay) {
                relay.send()
            } else {
                (Reply::HungUp, None)
            }
        }
        Some(Fault::AfterForward(inner)) => {
            let (forwarded, upstream_status) = relay.send();
            let reply = match *inner {
                Fault::Status { code, retry_after } => Reply::Send {
                    status: code,
                    bytes: error_response(
                        code,
                        retry_after,
                        "fault injected by the test proxy after forwarding",
                        keep_alive,
                        head,
                    ),
                },
                Fault::Reset => Reply::Reset,
                Fault::Delay(delay) if hold(shared, client, delay) => forwarded,
                Fault::Delay(_) => Reply::HungUp,
                // Rejected by `Fault::validate`.
                Fault::AfterForward(_) | Fault::Pass => Reply::Reset,
            };
            (reply, upstream_status)
        }
    }
}

impl Relay<'_> {
    /// Forwards the request and builds the client's response (rewritten if a rule says
    /// so; 502 when the upstream fails).
    fn send(&self) -> (Reply, Option<u16>) {
        let (shared, request) = (self.shared, self.request);
        match forward(shared, request) {
            Ok(mut response) => {
                let status = response.status;
                if let Some(rewrite) = &self.rewrite {
                    response.rewrite(&request.target, rewrite);
                }
                let bytes = response.to_client(request.method == "HEAD", self.keep_alive);
                (Reply::Send { status, bytes }, Some(status))
            }
            Err(e) => {
                let detail = format!("test proxy: upstream {} failed: {e}", shared.upstream);
                let bytes = error_response(
                    502,
                    None,
                    &detail,
                    self.keep_alive,
                    request.method == "HEAD",
                );
                (Reply::Send { status: 502, bytes }, None)
            }
        }
    }
}

/// Waits `delay`; false as soon as the client hangs up (or the proxy stops).
fn hold(shared: &Shared, client: &TcpStream, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    if client.set_nonblocking(true).is_err() {
        std::thread::sleep(delay);
        return !shared.stopping();
    }
    let alive = loop {
        if shared.stopping() {
            break false;
        }
        // Ok(0) is the client's FIN; data (a pipelined request) or WouldBlock: still there.
        match client.peek(&mut [0u8; 1]) {
            Ok(0) => break false,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break false,
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break true;
        }
        std::thread::sleep(left.min(HANGUP_POLL));
    };
    let _ = client.set_nonblocking(false);
    alive
}

/// SO_LINGER 0, so that closing sends an RST instead of a FIN (std's `set_linger` is
/// unstable). Linux ABIs where SOL_SOCKET is 1 and SO_LINGER 13; elsewhere a plain close.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )
))]
fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    use std::os::raw::{c_int, c_void};

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    unsafe extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
    }
    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is an open socket owned by `stream` for the whole call, and
    // `linger` is a valid `struct linger` of the size passed, alive for the whole call.
    unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<Linger>() as u32,
        );
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )
)))]
fn set_linger_zero(_stream: &TcpStream) {}

// ---------------------------------------------------------------------------------------
// HTTP/1.x parsing

/// One line (up to and including `\n`), counting against `budget`; `None` at EOF before
/// any byte.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
    }
    *budget -= n;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Header lines up to the empty line.
fn read_headers(
    reader: &mut impl BufRead,
    budget: &mut usize,
) -> Result<Vec<(String, String)>, BadRequest> {
    let mut headers = Vec::new();
    loop {
        let line = match read_line(reader, budget) {
            Ok(Some(line)) => line,
            Ok(None) => return Err(BadRequest::Gone),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(BadRequest::Status(431, "request head too large"))
            }
            Err(_) => return Err(BadRequest::Gone),
        };
        if line.is_empty() {
            return Ok(headers);
        }
        let line = String::from_utf8_lossy(&line);
        if line.starts_with([' ', '\t']) {
            return Err(BadRequest::Status(400, "obsolete header line folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(BadRequest::Status(400, "malformed header line"));
        };
        if name.is_empty() || name.ends_with([' ', '\t']) {
            return Err(BadRequest::Status(400, "malformed header name"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The lowercased tokens of every `Connection` header.
fn connection_tokens(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Hop-by-hop headers, which a proxy must not forward.
fn is_hop_by_hop(name: &str, connection: &[String]) -> bool {
    const HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let lower = name.to_ascii_lowercase();
    HOP.contains(&lower.as_str()) || connection.contains(&lower)
}

/// `Content-Length`: `Ok(None)` when absent, `Err` when malformed or conflicting.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, ()> {
    let mut found: Option<usize> = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: usize = part.parse().map_err(|_| ())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether `Transfer-Encoding` ends in `chunked` (`Ok(None)`: no such header).
fn chunked(headers: &[(String, String)]) -> Option<bool> {
    let codings: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if codings.is_empty() {
        None
    } else {
        Some(codings.last().is_some_and(|c| c == "chunked"))
    }
}

fn read_exact_body(reader: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    if len > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// Decodes a chunked body, discarding chunk extensions and trailers.
fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut body = Vec::new();
    loop {
        let mut budget = MAX_HEAD;
        let line = read_line(reader, &mut budget)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let line = String::from_utf8_lossy(&line);
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailer section, up to the empty line.
            loop {
                match read_line(reader, &mut budget)? {
                    Some(line) if line.is_empty() => return Ok(body),
                    Some(_) => {}
                    None => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        match read_line(reader, &mut budget)? {
            Some(line) if line.is_empty() => {}
            _ => return Err(invalid("missing CRLF after a chunk")),
        }
    }
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<Option<Request>, BadRequest> {
    let mut budget = MAX_HEAD;
    // Robustness (RFC 9112 §2.2): ignore empty lines before the request line.
    let line = loop {
        match read_line(reader, &mut budget) {
            Ok(None) => return Ok(None),
            Ok(Some(line)) if line.is_empty() => {}
            Ok(Some(line)) => break line,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(BadRequest::Status(414, "request line too long"))
            }
            Err(_) => return Err(BadRequest::Gone),
        }
    };
    let line = String::from_utf8_lossy(&line).into_owned();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Status(400, "malformed request line"));
    };
    if method.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(BadRequest::Status(400, "malformed request line"));
    }
    // Absolute form (as sent to forward proxies): keep the path and query.
    let target = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]).to_owned(),
        None => target.to_owned(),
    };
    let headers = read_headers(reader, &mut budget)?;

    let te = chunked(&headers);
    let length = content_length(&headers)
        .map_err(|()| BadRequest::Status(400, "malformed Content-Length"))?;
    if te == Some(false) {
        return Err(BadRequest::Status(501, "unsupported Transfer-Encoding"));
    }
    let framed = te.is_some() || length.is_some();
    if framed
        && version != "HTTP/1.0"
        && header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = if te == Some(true) {
        read_chunked(reader).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => BadRequest::Status(400, "malformed chunked body"),
            _ => BadRequest::Gone,
        })?
    } else {
        match length {
            Some(n) if n > MAX_BODY => {
                return Err(BadRequest::Status(413, "request body too large"))
            }
            Some(n) => read_exact_body(reader, n)?,
            None => Vec::new(),
        }
    };
    Ok(Some(Request {
        method: method.to_owned(),
        target,
        version: version.to_owned(),
        headers,
        body,
        framed,
    }))
}

/// An upstream response, read in full.
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// Replaces a 2xx JSON body by `rewrite(path, body)`; other bodies stay as they are.
    /// The client's `Content-Length` is computed from the body in [`Response::to_client`].
    fn rewrite(&mut self, path: &str, rewrite: &Rewrite) {
        if !(200..300).contains(&self.status) {
            return;
        }
        let Ok(body) = serde_json::from_slice::<Value>(&self.body) else {
            return;
        };
        self.body = rewrite(path, body).to_string().into_bytes();
    }

    /// The response for the client: same status line, headers and body, re-framed with an
    /// exact `Content-Length` and our own `Connection`.
    fn to_client(&self, head: bool, keep_alive: bool) -> Vec<u8> {
        let connection = connection_tokens(&self.headers);
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            let keep_length = head && name.eq_ignore_ascii_case("content-length");
            if is_hop_by_hop(name, &connection)
                || (name.eq_ignore_ascii_case("content-length") && !keep_length)
            {
                continue;
            }
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut bytes = finish_head(out, self.status, self.body.len(), head, keep_alive);
        if !head && has_body(self.status) {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// Whether a response with this status carries a body (RFC 9110 §6.4.1).
fn has_body(status: u16) -> bool {
    !(status < 200 || status == 204 || status == 304)
}

/// Adds `Content-Length` (unless a HEAD response or a bodiless status) and `Connection`,
/// and the empty line.
fn finish_head(
    mut head: String,
    status: u16,
    len: usize,
    is_head: bool,
    keep_alive: bool,
) -> Vec<u8> {
    if has_body(status) && !is_head {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    head.into_bytes()
}

/// A SCIM error response (RFC 7644 §3.12) from the proxy itself.
fn error_response(
    status: u16,
    retry_after: Option<u64>,
    detail: &str,
    keep_alive: bool,
    is_head: bool,
) -> Vec<u8> {
    let body = serde_json::json!({
        "schemas": [SCIM_ERROR],
        "status": status.to_string(),
        "detail": detail,
    })
    .to_string();
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if has_body(status) {
        head.push_str("Content-Type: application/scim+json\r\n");
        if is_head {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
    }
    if let Some(seconds) = retry_after {
        head.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    let mut bytes = finish_head(head, status, body.len(), is_head, keep_alive);
    if has_body(status) && !is_head {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Sends `request` upstream on a fresh connection and reads the whole response.
fn forward(shared: &Arc<Shared>, request: &Request) -> io::Result<Response> {
    let stopped = || io::Error::new(io::ErrorKind::Interrupted, "proxy stopping");
    if shared.stopping() {
        return Err(stopped());
    }
    let stream = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)?;
    let _registered = shared.register(&stream).ok_or_else(stopped)?;
    stream.set_read_timeout(Some(UPSTREAM_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(UPSTREAM_IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);

    let connection = connection_tokens(&request.headers);
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if is_hop_by_hop(name, &connection)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("expect")
        {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if request.header("host").is_none() {
        head.push_str(&format!("Host: {}\r\n", shared.upstream));
    }
    if request.framed || !request.body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(&request.body);
    (&stream).write_all(&message)?;
    (&stream).flush()?;

    let mut reader = BufReader::new(&stream);
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    loop {
        let mut budget = MAX_HEAD;
        let line = read_line(&mut reader, &mut budget)?
            .ok_or_else(|| invalid("upstream closed without a response".to_owned()))?;
        let line = String::from_utf8_lossy(&line).into_owned();
        let mut parts = line.splitn(3, ' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(invalid(format!("bad status line {line:?}")));
        };
        let status: u16 = code
            .parse()
            .ok()
            .filter(|s| (100..=599).contains(s) && version.starts_with("HTTP/"))
            .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
        let reason = parts.next().unwrap_or("").to_owned();
        let headers = read_headers(&mut reader, &mut budget)
            .map_err(|_| invalid("bad response headers".to_owned()))?;
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response (100 Continue, 103 Early Hints)
        }
        let body = if request.method == "HEAD" || !has_body(status) {
            Vec::new()
        } else if chunked(&headers) == Some(true) {
            read_chunked(&mut reader)?
        } else {
            // Other transfer codings are delimited by the close (RFC 9112 §6.3).
            let length = match chunked(&headers) {
                Some(_) => None,
                None => content_length(&headers)
                    .map_err(|()| invalid("bad upstream Content-Length".to_owned()))?,
            };
            match length {
                Some(n) => read_exact_body(&mut reader, n)?,
                None => {
                    let mut body = Vec::new();
                    (&mut reader)
                        .take(MAX_BODY as u64 + 1)
                        .read_to_end(&mut body)?;
                    if body.len() > MAX_BODY {
                        return Err(invalid("upstream body too large".to_owned()));
                    }
                    body
                }
            }
        };
        return Ok(Response {
            status,
            reason,
            headers,
            body,
        });
    }
}
