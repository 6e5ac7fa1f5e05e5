//! Registry flags shared by `convert` and `mount --image`.

use crate::oci::auth::Credentials;
use crate::oci::{Reference, RegistryOptions};
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (loopback and lab registries).
    #[arg(long)]
    pub plain_http: bool,
    /// Accept any TLS certificate from the registry.
    #[arg(long)]
    pub insecure: bool,
    /// USER:PASSWORD for the registry. Without it: WARREN_REGISTRY_USERNAME and
    /// WARREN_REGISTRY_PASSWORD, IMAGE_PULL_AUTH (base64 USER:PASSWORD), then
    /// ~/.docker/config.json.
    #[arg(long, value_parser = parse_creds, hide_default_value = true)]
    pub creds: Option<Credentials>,
    /// Longest wait of one registry request, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub registry_timeout: f64,
    /// Retries of a failed registry request (5xx, resets, short reads, timeouts).
    #[arg(long, default_value_t = 4)]
    pub registry_retries: u32,
    /// Longest a registry request may take with its retries, seconds; past it a read
    /// fails with EIO.
    #[arg(long, default_value_t = 60.0)]
    pub registry_deadline: f64,
}

fn parse_creds(s: &str) -> Result<Credentials, String> {
    Credentials::parse_user_pass(s)
}

fn secs(what: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v > 0.0 && v.is_finite()) {
        anyhow::bail!("--{what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

impl RegistryArgs {
    pub fn options(&self) -> anyhow::Result<RegistryOptions> {
        Ok(RegistryOptions {
            plain_http: self.plain_http,
            insecure: self.insecure,
            credentials: self.creds.clone(),
            timeout: secs("registry-timeout", self.registry_timeout)?,
            retries: self.registry_retries,
            deadline: secs("registry-deadline", self.registry_deadline)?,
            ..RegistryOptions::default()
        })
    }

    /// Options for `reference`, with a hint when a loopback registry is reached over
    /// HTTPS (the usual lab setup speaks plain HTTP).
    pub fn options_for(&self, reference: &Reference) -> anyhow::Result<RegistryOptions> {
        let o = self.options()?;
        if !o.plain_http && reference.is_loopback() {
            tracing::info!(registry = %reference.registry, "loopback registry over HTTPS; pass --plain-http if it speaks HTTP");
        }
        Ok(o)
    }
}

/// Adds `--plain-http` advice to errors from a loopback registry reached over HTTPS.
pub fn hint(
    err: crate::oci::OciError,
    reference: &Reference,
    opts: &RegistryOptions,
) -> anyhow::Error {
    let transport = matches!(err, crate::oci::OciError::Transport { .. });
    let e = anyhow::Error::new(err);
    if transport && !opts.plain_http && reference.is_loopback() {
        e.context(format!(
            "{} is a loopback registry reached over HTTPS; if it speaks plain HTTP, pass --plain-http",
            reference.registry
        ))
    } else {
        e
    }
}

/// A Nydus image in a registry, ready to mount: its bootstrap (in a temporary directory
/// that lives as long as this) and the registry as origin.
pub struct ImageOrigin {
    pub bootstrap: std::path::PathBuf,
    pub backend: std::sync::Arc<dyn crate::backend::BlobBackend>,
    pub manifest_digest: String,
    _dir: tempfile::TempDir,
}

/// Resolves `image` (through an index to `platform`, default this machine's), fetches its
/// bootstrap layer and opens the registry backend for its blobs.
pub fn open_image_origin(
    image: &str,
    platform: Option<&str>,
    args: &RegistryArgs,
) -> anyhow::Result<ImageOrigin> {
    use anyhow::Context;
    let reference: Reference = image.parse()?;
    let opts = args.options_for(&reference)?;
    let platform = match platform {
        Some(p) => crate::oci::manifest::PlatformSpec::parse(p).map_err(anyhow::Error::msg)?,
        None => crate::oci::manifest::PlatformSpec::host(),
    };
    let client = std::sync::Arc::new(crate::oci::Client::for_reference(&reference, opts.clone())?);
    let dir = tempfile::Builder::new()
        .prefix("warren-bootstrap-")
        .tempdir()
        .context("creating a temporary directory for the bootstrap")?;
    let pulled = crate::oci::pull::pull_bootstrap(&client, &reference, &platform, dir.path())
        .map_err(|e| hint(e, &reference, &opts))
        .with_context(|| format!("fetching the bootstrap of {reference}"))?;
    tracing::info!(image = %reference, manifest = %pulled.manifest_digest, blobs = pulled.blob_ids.len(), "bootstrap fetched");
    let backend =
        crate::backend::registry::RegistryBackend::new(client, reference.repository.clone());
    Ok(ImageOrigin {
        bootstrap: pulled.path,
        backend: std::sync::Arc::new(backend),
        manifest_digest: pulled.manifest_digest,
        _dir: dir,
    })
}
