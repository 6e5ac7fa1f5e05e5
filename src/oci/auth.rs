//! Registry authentication: where credentials come from (flags, environment,
//! `~/.docker/config.json`), `WWW-Authenticate` challenges, and bearer tokens cached until
//! they expire. Nothing here prints a secret: `Debug` of every type holding one redacts it.

use base64::Engine;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Environment variables read for credentials when no flag gives them.
pub const ENV_USERNAME: &str = "WARREN_REGISTRY_USERNAME";
pub const ENV_PASSWORD: &str = "WARREN_REGISTRY_PASSWORD";
/// nydusd's: base64 of `user:password`, overriding the config's `auth`.
pub const ENV_NYDUS_AUTH: &str = "IMAGE_PULL_AUTH";

/// A user name and a secret (a password, or an identity token from a docker login).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// `USER:PASSWORD` (as skopeo's `--creds`).
    pub fn parse_user_pass(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::new(u, p)),
            _ => Err("credentials must be USER:PASSWORD".into()),
        }
    }

    /// base64 of `USER:PASSWORD` (docker's `auth` field, nydusd's `auth`).
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| "auth is not base64".to_string())?;
        let text = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
        Credentials::parse_user_pass(&text)
            .map_err(|_| "auth is not base64 of USER:PASSWORD".into())
    }

    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// Credentials for `registry` when none were given explicitly: the environment
    /// (`WARREN_REGISTRY_USERNAME`/`_PASSWORD`, then `IMAGE_PULL_AUTH`), then docker's
    /// config file (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub fn from_environment(registry: &str) -> Option<Credentials> {
        if let (Ok(u), Ok(p)) = (std::env::var(ENV_USERNAME), std::env::var(ENV_PASSWORD)) {
            if !u.is_empty() {
                return Some(Credentials::new(u, p));
            }
        }
        if let Ok(a) = std::env::var(ENV_NYDUS_AUTH) {
            match Credentials::from_base64(&a) {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!("ignoring {ENV_NYDUS_AUTH}: {e}"),
            }
        }
        let path = docker_config_path()?;
        let text = std::fs::read_to_string(&path).ok()?;
        match from_docker_config(&text, registry) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring docker config: {e}");
                None
            }
        }
    }
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The entry of docker's `config.json` for `registry` (`auths` keyed by host, or by URL as
/// `docker login` writes them: `https://host`, `https://index.docker.io/v1/` for Docker
/// Hub). Credential helpers are not run.
pub fn from_docker_config(text: &str, registry: &str) -> Result<Option<Credentials>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let wanted: Vec<String> = if registry == super::reference::DOCKER_HUB {
        vec![
            "docker.io".into(),
            "index.docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![registry.to_string()]
    };
    let host_of = |key: &str| {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or(k).to_string()
    };
    let Some(entry) = auths
        .iter()
        .find(|(k, _)| wanted.contains(&host_of(k)))
        .map(|(_, e)| e)
    else {
        return Ok(None);
    };
    if let Some(a) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        return Credentials::from_base64(a).map(Some);
    }
    let field = |n: &str| entry.get(n).and_then(|x| x.as_str()).unwrap_or("");
    if !field("identitytoken").is_empty() {
        // An OAuth2 refresh token: docker sends it as the password of user `<token>`.
        return Ok(Some(Credentials::new("<token>", field("identitytoken"))));
    }
    if !field("username").is_empty() {
        return Ok(Some(Credentials::new(field("username"), field("password"))));
    }
    Ok(None)
}

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercase: `bearer`, `basic`.
    pub scheme: String,
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// `Bearer realm="https://auth",service="reg",scope="repository:a/b:pull,push"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r),
            None => (header, ""),
        };
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut s = rest.trim_start();
        while !s.is_empty() {
            let Some(eq) = s.find('=') else { break };
            let key = s[..eq]
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            s = s[eq + 1..].trim_start();
            let value;
            if let Some(q) = s.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = q.char_indices();
                let mut end = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                out.push(n);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => out.push(c),
                    }
                }
                value = out;
                s = &q[end.min(q.len())..];
            } else {
                let end = s.find(',').unwrap_or(s.len());
                value = s[..end].trim().to_string();
                s = &s[end..];
            }
            s = s.trim_start().trim_start_matches(',').trim_start();
            if !key.is_empty() {
                params.insert(key, value);
            }
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    pub fn param(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
}

/// The scope a request needs: `repository:NAME:pull` or `...:pull,push`.
pub fn repo_scope(repository: &str, push: bool) -> String {
    format!(
        "repository:{repository}:{}",
        if push { "pull,push" } else { "pull" }
    )
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    pub expires: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// Tokens from a registry's token server, by scope. A token is used until a little before
/// it expires (so one sent now is still valid when it arrives), then fetched again.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<String, Token>,
}

/// Tokens are renewed this long before they expire, or at half their life when shorter.
const RENEW_MARGIN: Duration = Duration::from_secs(10);

impl TokenCache {
    pub fn get(&self, scope: &str, now: Instant) -> Option<&Token> {
        self.tokens.get(scope).filter(|t| t.expires > now)
    }

    pub fn put(&mut self, scope: &str, value: String, lifetime: Duration, now: Instant) {
        let margin = RENEW_MARGIN.min(lifetime / 2);
        self.tokens.insert(
            scope.to_string(),
            Token {
                value,
                expires: now + lifetime - margin,
            },
        );
    }

    pub fn forget(&mut self, scope: &str) {
        self.tokens.remove(scope);
    }
}

/// The token server's answer: `token` (or `access_token`), `expires_in` seconds (60 when
/// absent, as the distribution spec says).
pub fn parse_token_response(body: &[u8]) -> Result<(String, Duration), String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| "the token server's answer is not JSON".to_string())?;
    let token = v
        .get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "the token server's answer holds no token".to_string())?;
    let secs = v
        .get("expires_in")
        .and_then(|e| e.as_u64())
        .filter(|&e| e > 0)
        .unwrap_or(60);
    Ok((token.to_string(), Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="http://127.0.0.1:9/token",service="reg, one",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:9/token"));
        assert_eq!(c.param("service"), Some("reg, one"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let b = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.param("realm"), Some("Registry Realm"));
        let t = Challenge::parse("Bearer realm=x, service=y").unwrap();
        assert_eq!(
            (t.param("realm"), t.param("service")),
            (Some("x"), Some("y"))
        );
        let e = Challenge::parse(r#"Bearer realm="a\"b""#).unwrap();
        assert_eq!(e.param("realm"), Some("a\"b"));
    }

    #[test]
    fn docker_config_entries() {
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        let cfg = format!(
            r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{auth}"}},
            "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}}}}}}"#
        );
        assert_eq!(
            from_docker_config(&cfg, "reg.example:5000").unwrap(),
            Some(Credentials::new("u", "p:w"))
        );
        assert_eq!(
            from_docker_config(&cfg, "docker.io").unwrap(),
            Some(Credentials::new("hub", "pw"))
        );
        assert_eq!(from_docker_config(&cfg, "other.example").unwrap(), None);
        assert!(from_docker_config(r#"{"auths": {"h": {"auth": "!!"}}}"#, "h").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::new("user", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut cache = TokenCache::default();
        cache.put(
            "s",
            "tok-secret".into(),
            Duration::from_secs(60),
            Instant::now(),
        );
        assert!(!format!("{cache:?}").contains("tok-secret"));
    }

    #[test]
    fn tokens_expire_early() {
        let now = Instant::now();
        let mut cache = TokenCache::default();
        cache.put("s", "t".into(), Duration::from_secs(60), now);
        assert!(cache.get("s", now + Duration::from_secs(49)).is_some());
        assert!(cache.get("s", now + Duration::from_secs(51)).is_none());
        cache.put("s", "t".into(), Duration::from_secs(4), now);
        assert!(cache.get("s", now + Duration::from_secs(1)).is_some());
        assert!(cache.get("s", now + Duration::from_secs(3)).is_none());
        let (t, d) = parse_token_response(br#"{"access_token": "x"}"#).unwrap();
        assert_eq!((t.as_str(), d.as_secs()), ("x", 60));
        assert!(parse_token_response(b"{}").is_err());
    }
}
