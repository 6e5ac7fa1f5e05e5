//! An OCI registry as origin: a blob id is the layer digest `sha256:<id>` in one
//! repository, and a chunk run is one ranged GET (see [`crate::oci::client`] for the
//! timeouts, retries and auth). The same type is the registry destination of `convert`.
//! A read that still fails after its retries is an error here, which the fetch chain
//! turns into EIO for the reader.

use super::{BlobBackend, BlobUpload};
use crate::oci::auth::Credentials;
use crate::oci::{Client, OciError, RegistryOptions};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

pub struct RegistryBackend {
    client: Arc<Client>,
    repo: String,
}

impl RegistryBackend {
    pub fn new(client: Arc<Client>, repo: impl Into<String>) -> Self {
        RegistryBackend {
            client,
            repo: repo.into(),
        }
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    pub fn repository(&self) -> &str {
        &self.repo
    }
}

fn digest_of(blob_id: &str) -> std::io::Result<String> {
    let hex = blob_id.strip_prefix("sha256:").unwrap_or(blob_id);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("blob id {blob_id:?} is not a sha256 digest"),
        ));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

impl BlobBackend for RegistryBackend {
    fn read_range(&self, blob_id: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let digest = digest_of(blob_id)?;
        self.client
            .read_blob_range(&self.repo, &digest, offset, len)
            .map_err(|e| {
                tracing::warn!(error = %e, "registry read failed");
                std::io::Error::from(e)
            })
    }

    fn read_range_streamed(
        &self,
        blob_id: &str,
        offset: u64,
        len: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> std::io::Result<()> {
        let digest = digest_of(blob_id)?;
        self.client
            .read_blob_range_streamed(&self.repo, &digest, offset, len, sink)
            .map_err(|e| {
                tracing::warn!(error = %e, "registry read failed");
                std::io::Error::from(e)
            })
    }

    fn kind(&self) -> &'static str {
        "registry"
    }
}

impl BlobUpload for RegistryBackend {
    fn upload(&self, blob_id: &str, path: &std::path::Path) -> std::io::Result<()> {
        let digest = digest_of(blob_id)?;
        self.client
            .upload_file(&self.repo, &digest, path, &|_| {})
            .map_err(std::io::Error::from)
    }

    fn kind(&self) -> &'static str {
        "registry"
    }
}

/// A registry origin: where, which repository, how.
#[derive(Clone, Debug)]
pub struct RegistryOrigin {
    pub host: String,
    pub repo: String,
    pub options: RegistryOptions,
}

impl RegistryOrigin {
    /// `http://HOST/REPO` or `https://HOST/REPO`, for mount listings.
    pub fn location(&self) -> String {
        let scheme = if self.options.plain_http {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/{}", self.host, self.repo)
    }

    /// The registry backend of a whole nydusd config, if it has one: `device.backend` with
    /// `{"type": "registry", "config": {...}}` (config v1) or `backend` with
    /// `{"type": "registry", "registry": {...}}` (config v2). `None` for other types.
    pub fn from_nydusd_config(c: &serde_json::Value) -> Result<Option<RegistryOrigin>, String> {
        let (backend, inner) = match c.get("device") {
            Some(d) => (d.get("backend"), "config"),
            None => (c.get("backend"), "registry"),
        };
        let Some(backend) = backend else {
            return Ok(None);
        };
        if backend.get("type").and_then(|t| t.as_str()) != Some("registry") {
            return Ok(None);
        }
        let Some(config) = backend.get(inner) else {
            return Err(format!("the registry backend has no `{inner}` object"));
        };
        RegistryOrigin::from_nydusd(config).map(Some)
    }

    pub fn open(&self) -> Result<RegistryBackend, OciError> {
        let client = Client::new(&self.host, self.options.clone())?;
        Ok(RegistryBackend::new(Arc::new(client), self.repo.clone()))
    }

    /// nydusd's `registry` backend config (the `config` object of
    /// `{"type": "registry", "config": {...}}`): `scheme` (default https), `host`, `repo`,
    /// `auth` (base64 of user:password; the `IMAGE_PULL_AUTH` environment variable
    /// overrides it, as in nydusd), `skip_verify`, `timeout` and `connect_timeout`
    /// (seconds), `retry_limit`. `registry_token` is taken as a password for the token
    /// flow. Proxy and mirror settings are ignored (this node has its own peer mesh).
    pub fn from_nydusd(config: &serde_json::Value) -> Result<RegistryOrigin, String> {
        #[derive(Deserialize)]
        struct Nydus {
            #[serde(default)]
            scheme: Option<String>,
            #[serde(default)]
            host: String,
            #[serde(default)]
            repo: String,
            #[serde(default)]
            auth: Option<String>,
            #[serde(default)]
            registry_token: Option<String>,
            #[serde(default)]
            skip_verify: Option<bool>,
            #[serde(default)]
            timeout: Option<u64>,
            #[serde(default)]
            connect_timeout: Option<u64>,
            #[serde(default)]
            retry_limit: Option<u32>,
        }
        let n: Nydus = serde_json::from_value(config.clone())
            .map_err(|e| format!("registry backend config: {e}"))?;
        if n.host.is_empty() || n.repo.is_empty() {
            return Err("registry backend config needs `host` and `repo`".into());
        }
        let plain_http = match n.scheme.as_deref().unwrap_or("https") {
            "http" => true,
            "https" | "" => false,
            other => {
                return Err(format!(
                    "registry backend config: scheme {other:?} (http or https)"
                ))
            }
        };
        let mut options = RegistryOptions {
            plain_http,
            insecure: n.skip_verify.unwrap_or(false),
            ..RegistryOptions::default()
        };
        let env_auth = std::env::var(crate::oci::auth::ENV_NYDUS_AUTH).ok();
        if let Some(a) = env_auth.or(n.auth).filter(|a| !a.is_empty()) {
            options.credentials = Some(
                Credentials::from_base64(&a)
                    .map_err(|e| format!("registry backend config: {e}"))?,
            );
        } else if let Some(t) = n.registry_token.filter(|t| !t.is_empty()) {
            options.credentials = Some(Credentials::new("<token>", t));
        }
        if let Some(t) = n.timeout.filter(|&t| t > 0) {
            options.timeout = Duration::from_secs(t);
        }
        if let Some(t) = n.connect_timeout.filter(|&t| t > 0) {
            options.connect_timeout = Duration::from_secs(t);
        }
        if let Some(r) = n.retry_limit {
            options.retries = r;
        }
        Ok(RegistryOrigin {
            host: n.host,
            repo: n.repo,
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nydusd_registry_config() {
        let o = RegistryOrigin::from_nydusd(&json!({
            "scheme": "http", "host": "127.0.0.1:5000", "repo": "a/b",
            "auth": "dXNlcjpwYXNz", "timeout": 3, "connect_timeout": 2, "retry_limit": 1,
            "proxy": {"url": "http://p", "fallback": true}
        }))
        .unwrap();
        assert_eq!(
            (o.host.as_str(), o.repo.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert!(o.options.plain_http);
        assert_eq!(
            o.options.credentials,
            Some(Credentials::new("user", "pass"))
        );
        assert_eq!(o.options.timeout, Duration::from_secs(3));
        assert_eq!(o.options.retries, 1);
        assert!(!format!("{o:?}").contains("pass\""), "{o:?}");
        assert!(RegistryOrigin::from_nydusd(&json!({"host": "h"})).is_err());
        assert!(
            RegistryOrigin::from_nydusd(&json!({"host": "h", "repo": "r", "scheme": "ftp"}))
                .is_err()
        );
        assert!(
            !RegistryOrigin::from_nydusd(&json!({"host": "h", "repo": "r"}))
                .unwrap()
                .options
                .plain_http
        );
    }

    #[test]
    fn whole_nydusd_configs() {
        let v1 = json!({"device": {"backend": {"type": "registry", "config": {
            "scheme": "http", "host": "h:1", "repo": "r"}}, "cache": {"type": "blobcache"}},
            "mode": "direct"});
        let o = RegistryOrigin::from_nydusd_config(&v1).unwrap().unwrap();
        assert_eq!(o.location(), "http://h:1/r");
        let v2 = json!({"version": 2, "backend": {"type": "registry", "registry": {
            "host": "h", "repo": "a/b"}}});
        let o = RegistryOrigin::from_nydusd_config(&v2).unwrap().unwrap();
        assert_eq!(o.location(), "https://h/a/b");
        let local = json!({"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}});
        assert!(RegistryOrigin::from_nydusd_config(&local)
            .unwrap()
            .is_none());
        let broken = json!({"device": {"backend": {"type": "registry"}}});
        assert!(RegistryOrigin::from_nydusd_config(&broken).is_err());
    }

    #[test]
    fn blob_ids_must_be_digests() {
        assert!(digest_of(&"a".repeat(64)).is_ok());
        assert!(digest_of(&format!("sha256:{}", "B".repeat(64)))
            .unwrap()
            .ends_with(&"b".repeat(64)));
        assert!(digest_of("../x").is_err());
    }
}
