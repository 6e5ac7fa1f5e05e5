//! One registry's HTTP plumbing under [`super::Client`]: a pooled `reqwest` client (kept
//! connections, rustls), authentication (anonymous, basic, bearer tokens from the
//! registry's token server, cached per scope), redirects followed by hand (so a 307 to
//! object storage keeps the `Range` header and loses the registry's `Authorization`), and
//! attempts with a deadline, retried with backoff when the failure is transient.
//!
//! Logs and errors name the method, host and path only: never a header, never a query
//! string (upload states and pre-signed redirect URLs carry signatures there).

use super::auth::{parse_token_response, Challenge, Credentials, TokenCache};
use super::client::RegistryOptions;
use super::OciError;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How an attempt failed.
pub(crate) enum Failure {
    /// Worth another attempt: a connection error, a reset, a timeout, a 5xx, a short body.
    Transient(String),
    /// Final: a 4xx, refused credentials, bad content.
    Fatal(OciError),
}

impl From<OciError> for Failure {
    fn from(e: OciError) -> Self {
        Failure::Fatal(e)
    }
}

/// Counters of one client's traffic (for `--json` summaries and tests).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub token_fetches: AtomicU64,
    pub redirects: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ClientStats {
    pub requests: u64,
    pub retries: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub token_fetches: u64,
    pub redirects: u64,
}

#[derive(Clone, Debug, Default)]
enum Scheme {
    /// Nothing learnt yet: requests go without credentials until a 401 says how.
    #[default]
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug, Default)]
struct AuthState {
    scheme: Scheme,
    tokens: TokenCache,
}

pub(crate) struct Transport {
    http: Http,
    /// `http://host:port` or `https://host`.
    pub base: String,
    pub host: String,
    pub opts: RegistryOptions,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    pub counters: Counters,
}

/// One request, replayable: the body is borrowed so each attempt sends it again.
pub(crate) struct Req<'a> {
    pub method: Method,
    /// Absolute URL, or a path on the registry (`/v2/...`).
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<&'a [u8]>,
    /// The token scope this request needs.
    pub scope: &'a str,
}

const MAX_REDIRECTS: usize = 5;

impl Transport {
    pub fn new(host: &str, opts: RegistryOptions) -> Result<Transport, OciError> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(opts.insecure)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OciError::Unsupported(format!("HTTP client: {}", describe(&e))))?;
        let scheme = if opts.plain_http { "http" } else { "https" };
        let creds = opts
            .credentials
            .clone()
            .or_else(|| Credentials::from_environment(host));
        Ok(Transport {
            http,
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            opts,
            creds,
            auth: Mutex::new(AuthState::default()),
            counters: Counters::default(),
        })
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            requests: l(&c.requests),
            retries: l(&c.retries),
            bytes_in: l(&c.bytes_in),
            bytes_out: l(&c.bytes_out),
            token_fetches: l(&c.token_fetches),
            redirects: l(&c.redirects),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries or the deadline
    /// are spent. `attempt` gets the time left for it.
    pub fn retrying<T>(
        &self,
        op: &str,
        attempt: impl FnMut(Duration) -> Result<T, Failure>,
    ) -> Result<T, OciError> {
        self.retrying_within(op, self.opts.timeout, self.opts.deadline, attempt)
    }

    /// [`Self::retrying`] for uploads: an attempt sends a whole blob, so it gets minutes.
    pub fn retrying_long<T>(
        &self,
        op: &str,
        attempt: impl FnMut(Duration) -> Result<T, Failure>,
    ) -> Result<T, OciError> {
        let per = self.opts.timeout.max(Duration::from_secs(300));
        let total = self.opts.deadline.max(Duration::from_secs(1800));
        self.retrying_within(op, per, total, attempt)
    }

    fn retrying_within<T>(
        &self,
        op: &str,
        per_attempt: Duration,
        total: Duration,
        mut attempt: impl FnMut(Duration) -> Result<T, Failure>,
    ) -> Result<T, OciError> {
        let started = Instant::now();
        let deadline = started + total;
        let mut backoff = self.opts.backoff;
        let mut n = 0u32;
        loop {
            n += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = left.min(per_attempt);
            let err = match attempt(budget) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(e)) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if n > self.opts.retries || left <= backoff {
                return Err(OciError::Transport {
                    op: op.to_string(),
                    detail: err,
                    attempts: n,
                    secs: started.elapsed().as_secs_f64(),
                });
            }
            tracing::debug!(op, attempt = n, error = %err, "retrying");
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(jitter(backoff));
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One attempt: sends `req` (authenticating and following redirects as needed) and
    /// returns the response of whatever status; the caller judges it. `budget` bounds the
    /// wait for the response head; `None` leaves the client's idle timeout in charge
    /// (streams).
    pub fn send(&self, req: &Req<'_>, budget: Option<Duration>) -> Result<Response, Failure> {
        let started = Instant::now();
        let left = |b: Duration| b.saturating_sub(started.elapsed());
        let mut url = self.url(&req.url)?;
        let mut method = req.method.clone();
        let mut with_body = true;
        let mut authed = 0;
        let mut hops = 0;
        loop {
            let same_host = url.host_str() == self.url_host().as_deref()
                && url.port_or_known_default() == self.url_port();
            let auth = if same_host {
                self.auth_header(req.scope, budget.map(left))?
            } else {
                None
            };
            let mut rb: RequestBuilder = self.http.request(method.clone(), url.clone());
            for (k, v) in &req.headers {
                rb = rb.header(*k, v);
            }
            if let Some(a) = &auth {
                rb = rb.header(AUTHORIZATION, a);
            }
            if let (true, Some(body)) = (with_body, req.body) {
                rb = rb.body(body.to_vec());
                self.counters
                    .bytes_out
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            if let Some(b) = budget {
                let l = left(b);
                if l.is_zero() {
                    return Err(Failure::Transient("timed out".into()));
                }
                rb = rb.timeout(l);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let t = Instant::now();
            let resp = rb.send().map_err(|e| Failure::Transient(describe(&e)))?;
            let status = resp.status();
            tracing::debug!(method = %method, host = %url.host_str().unwrap_or(""), path = url.path(), status = status.as_u16(), ms = t.elapsed().as_millis() as u64, "registry request");
            if status == StatusCode::UNAUTHORIZED && same_host && authed >= 1 {
                let detail = match self.lock().scheme {
                    Scheme::Basic => "the registry refused the user name and password".to_string(),
                    Scheme::Bearer { .. } => format!(
                        "the registry refused the token its token server gave for {:?}",
                        req.scope
                    ),
                    Scheme::Unknown => "401 Unauthorized".to_string(),
                };
                return Err(Failure::Fatal(OciError::Auth {
                    op: format!("{method} {}", redact(&url)),
                    detail,
                }));
            }
            if status == StatusCode::UNAUTHORIZED && same_host {
                authed += 1;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .and_then(Challenge::parse);
                if self.learn(challenge, req.scope, auth.is_some(), budget.map(left))? {
                    continue;
                }
                return Ok(resp);
            }
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(loc) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()) else {
                    return Ok(resp);
                };
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(Failure::Fatal(OciError::invalid(
                        format!("{} {}", req.method, redact(&url)),
                        "too many redirects",
                    )));
                }
                url = url.join(loc).map_err(|_| {
                    Failure::Fatal(OciError::invalid(redact(&url), "bad redirect location"))
                })?;
                if status == StatusCode::SEE_OTHER {
                    method = Method::GET;
                    with_body = false;
                }
                self.counters.redirects.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            return Ok(resp);
        }
    }

    fn url(&self, u: &str) -> Result<Url, Failure> {
        let full = if u.starts_with("http://") || u.starts_with("https://") {
            u.to_string()
        } else {
            format!("{}{u}", self.base)
        };
        Url::parse(&full)
            .map_err(|_| Failure::Fatal(OciError::invalid("URL", format!("cannot parse {u:?}"))))
    }

    fn url_host(&self) -> Option<String> {
        Url::parse(&self.base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
    }

    fn url_port(&self) -> Option<u16> {
        Url::parse(&self.base)
            .ok()
            .and_then(|u| u.port_or_known_default())
    }

    /// The `Authorization` value for a request with `scope`, fetching a token if the
    /// registry wants one and none is cached.
    fn auth_header(
        &self,
        scope: &str,
        budget: Option<Duration>,
    ) -> Result<Option<String>, Failure> {
        let scheme = self.lock().scheme.clone();
        match scheme {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            Scheme::Bearer { realm, service } => {
                if let Some(t) = self.lock().tokens.get(scope, Instant::now()) {
                    return Ok(Some(format!("Bearer {}", t.value)));
                }
                let token = self.fetch_token(&realm, service.as_deref(), &[scope], budget)?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Takes in a 401's challenge. True when the request is worth sending again.
    fn learn(
        &self,
        challenge: Option<Challenge>,
        scope: &str,
        had_auth: bool,
        budget: Option<Duration>,
    ) -> Result<bool, Failure> {
        let refused = |detail: &str| {
            Failure::Fatal(OciError::Auth {
                op: format!("registry {}", self.host),
                detail: detail.to_string(),
            })
        };
        let Some(c) = challenge else {
            return Err(refused("401 without a WWW-Authenticate challenge"));
        };
        match c.scheme.as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err(refused("the registry wants a user name and password, and none was given (--creds, WARREN_REGISTRY_USERNAME/_PASSWORD, or ~/.docker/config.json)"));
                }
                let mut st = self.lock();
                if had_auth && matches!(st.scheme, Scheme::Basic) {
                    return Err(refused("the registry refused the user name and password"));
                }
                st.scheme = Scheme::Basic;
                Ok(true)
            }
            "bearer" => {
                let Some(realm) = c.param("realm").filter(|r| !r.is_empty()) else {
                    return Err(refused("bearer challenge without a realm"));
                };
                let service = c.param("service").map(str::to_string);
                {
                    let mut st = self.lock();
                    if had_auth && matches!(st.scheme, Scheme::Bearer { .. }) {
                        // A token we held was refused (revoked, expired early): one fresh
                        // token, then give up.
                        st.tokens.forget(scope);
                    }
                    st.scheme = Scheme::Bearer {
                        realm: realm.to_string(),
                        service: service.clone(),
                    };
                }
                let mut scopes = vec![scope];
                if let Some(s) = c.param("scope").filter(|s| *s != scope) {
                    scopes.push(s);
                }
                self.fetch_token(realm, service.as_deref(), &scopes, budget)?;
                Ok(true)
            }
            other => Err(refused(&format!("unsupported auth scheme {other:?}"))),
        }
    }

    /// Gets a token for `scopes` from the token server (with our credentials, if any) and
    /// caches it under the first scope.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
        budget: Option<Duration>,
    ) -> Result<String, Failure> {
        let mut url = Url::parse(realm).map_err(|_| {
            Failure::Fatal(OciError::Auth {
                op: format!("registry {}", self.host),
                detail: "the token realm is not a URL".into(),
            })
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes.iter().filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        let mut rb = self.http.get(url.clone());
        if let Some(c) = &self.creds {
            rb = rb.header(AUTHORIZATION, c.basic_header());
        }
        if let Some(b) = budget {
            rb = rb.timeout(b.max(Duration::from_millis(1)));
        }
        self.counters.token_fetches.fetch_add(1, Ordering::Relaxed);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = rb.send().map_err(|e| {
            Failure::Transient(format!("token server {}: {}", redact(&url), describe(&e)))
        })?;
        let status = resp.status();
        tracing::debug!(host = %url.host_str().unwrap_or(""), path = url.path(), status = status.as_u16(), "token request");
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure::Transient(format!(
                "token server {}: {status}",
                redact(&url)
            )));
        }
        if !status.is_success() {
            return Err(Failure::Fatal(OciError::Auth {
                op: format!("registry {}", self.host),
                detail: format!(
                    "the token server {} answered {status}{}",
                    redact(&url),
                    if self.creds.is_some() {
                        " for the given credentials"
                    } else {
                        " (no credentials were given)"
                    }
                ),
            }));
        }
        let body = resp
            .bytes()
            .map_err(|e| Failure::Transient(format!("token server: {}", describe(&e))))?;
        let (token, lifetime) = parse_token_response(&body).map_err(|d| {
            Failure::Fatal(OciError::Auth {
                op: format!("registry {}", self.host),
                detail: d,
            })
        })?;
        self.lock()
            .tokens
            .put(scopes[0], token.clone(), lifetime, Instant::now());
        Ok(token)
    }
}

/// `host/path` of a URL: no credentials, no query.
pub(crate) fn redact(u: &Url) -> String {
    let mut s = u.host_str().unwrap_or("").to_string();
    if let Some(p) = u.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(u.path());
    s
}

/// A reqwest error in words, without its URL, with its causes.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut out = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "the response body broke off".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    let mut last = String::new();
    while let Some(s) = src {
        let t = s.to_string();
        if t != last && !t.contains("://") {
            out.push_str(": ");
            out.push_str(&t);
        }
        last = t;
        src = s.source();
    }
    out
}

/// The backoff with up to a quarter added at random, so clients that failed together do
/// not retry together.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos()) as u64;
    d + d.mul_f64((nanos % 1000) as f64 / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_no_secrets() {
        let u = Url::parse("https://user:pw@s3.example:9000/b/k?X-Amz-Signature=abc").unwrap();
        assert_eq!(redact(&u), "s3.example:9000/b/k");
    }
}
