//! What every local stand-in for a provider API shares (tests and
//! benchmarks): a server on 127.0.0.1, a mode telling it how to fail, and a
//! log of what it accepted and refused. Each channel crate adds the routes
//! that check requests as its providers do (path, auth, signature, fields).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::Response;

/// How the fake answers valid requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Accept,
    /// 503 to everything (the provider is down).
    Down,
    /// The provider's "slow down" answer, with Retry-After seconds where it has one.
    Busy(u64),
    /// Answers after this long.
    Slow(Duration),
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub to: String,
    pub body: String,
    /// The id the fake gave it (Twilio sid, Aliyun BizId, ...).
    pub provider_id: String,
    /// Our id sent along (Aliyun OutId, ...), if the API has one.
    pub our_id: Option<String>,
    pub at: Instant,
}

#[derive(Default)]
pub struct Log {
    pub accepted: Vec<Received>,
    /// Requests refused for a bad signature, auth or shape, with why.
    pub refused: Vec<String>,
    /// Every request that reached the fake, valid or not.
    pub requests: usize,
}

/// The state the routes of a fake share.
pub struct FakeState {
    mode: Mutex<Mode>,
    log: Mutex<Log>,
    /// (user or key id, secret) the fake expects.
    pub credential: (String, String),
    /// Nonces seen, for APIs that refuse replays.
    pub nonces: Mutex<HashSet<String>>,
    /// Access tokens handed out and still honoured, and how many were handed out.
    tokens: Mutex<(HashSet<String>, usize)>,
    /// Message ids handed out (unique even when requests race).
    ids: std::sync::atomic::AtomicU64,
    /// Delivery reports waiting for a pull API (each handed out once).
    pub reports: Mutex<std::collections::VecDeque<serde_json::Value>>,
    /// Where a push-model provider posts delivery reports (set in its console, here by the test).
    pub report_url: Mutex<Option<String>>,
}

/// A running fake provider.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`: the provider's `endpoint`.
    pub endpoint: String,
    shared: Arc<FakeState>,
}

impl FakeProvider {
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Every access token issued so far stops being honoured (as at expiry).
    pub fn expire_tokens(&self) {
        self.shared.tokens.lock().unwrap().0.clear();
    }

    /// How many access tokens the fake has issued.
    pub fn tokens_issued(&self) -> usize {
        self.shared.tokens.lock().unwrap().1
    }

    /// Where the fake pushes delivery reports (providers whose console holds a report URL).
    pub fn set_report_url(&self, url: &str) {
        *self.shared.report_url.lock().unwrap() = Some(url.to_string());
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.shared.log.lock().unwrap()
    }

    /// Serves `routes` on a free port; they check requests against `user` / `secret`.
    pub async fn start(user: &str, secret: &str, routes: Router<Arc<FakeState>>) -> FakeProvider {
        Self::start_on("127.0.0.1:0", user, secret, routes).await.expect("bind 127.0.0.1:0")
    }

    /// As `start`, listening on `bind` (`notiflow stand-ins` serves a configured provider's port).
    pub async fn start_on(bind: &str, user: &str, secret: &str, routes: Router<Arc<FakeState>>) -> std::io::Result<FakeProvider> {
        let shared = Arc::new(FakeState {
            mode: Mutex::new(Mode::Accept),
            log: Mutex::new(Log::default()),
            credential: (user.to_string(), secret.to_string()),
            nonces: Mutex::new(HashSet::new()),
            tokens: Mutex::new((HashSet::new(), 0)),
            ids: std::sync::atomic::AtomicU64::new(0),
            reports: Mutex::new(std::collections::VecDeque::new()),
            report_url: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = routes.with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Ok(FakeProvider { endpoint, shared })
    }
}

/// An `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

impl FakeState {
    pub fn refuse(&self, why: String) {
        self.log.lock().unwrap().refused.push(why);
    }

    pub fn accept(&self, to: &str, body: &str, provider_id: String, our_id: Option<String>) {
        let received = Received { to: to.into(), body: body.into(), provider_id, our_id, at: Instant::now() };
        self.log.lock().unwrap().accepted.push(received);
    }

    /// The mode's answer when it is not Accept; waits out Slow.
    pub async fn interfere(&self, busy: impl Fn(u64) -> Response, down: impl Fn() -> Response) -> Option<Response> {
        self.log.lock().unwrap().requests += 1;
        let mode = self.mode.lock().unwrap().clone();
        match mode {
            Mode::Accept => None,
            Mode::Down => Some(down()),
            Mode::Busy(seconds) => Some(busy(seconds)),
            Mode::Slow(wait) => {
                tokio::time::sleep(wait).await;
                None
            }
        }
    }

    /// A new access token, honoured until the fake's tokens are expired.
    pub fn issue_token(&self) -> String {
        let mut tokens = self.tokens.lock().unwrap();
        tokens.1 += 1;
        let token = format!("token-{}", tokens.1);
        tokens.0.insert(token.clone());
        token
    }

    /// Honours `token` from now on (for tokens the client mints itself, like APNs JWTs).
    pub fn honour_token(&self, token: &str) {
        self.tokens.lock().unwrap().0.insert(token.to_string());
    }

    pub fn token_valid(&self, token: &str) -> bool {
        self.tokens.lock().unwrap().0.contains(token)
    }

    /// How many messages were accepted so far (for ids the fake hands out).
    /// A fresh message number (1, 2, ...) for the provider's message id.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    pub fn accepted_count(&self) -> usize {
        self.log.lock().unwrap().accepted.len()
    }
}
