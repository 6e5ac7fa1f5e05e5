//! Image references as docker and containerd spell them: `[REGISTRY/]REPO[:TAG][@DIGEST]`.
//! A first path component with a `.` or a `:`, or `localhost`, names the registry;
//! otherwise the registry is Docker Hub and one-component names live under `library/`.

use super::OciError;
use std::fmt;
use std::str::FromStr;

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's distribution API really answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Host, with a port when one was given (`127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/debian`, `team/app`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// The host the API calls go to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What goes after `/manifests/`: the digest when there is one, else the tag
    /// (`latest` when none was given).
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository, at another tag or digest.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// Whether the registry is on this machine (plain HTTP is then the usual choice).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => &self.registry,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, OciError> {
        let bad = |detail: &str| OciError::Reference {
            reference: s.to_string(),
            detail: detail.to_string(),
        };
        let s_trim = s.strip_prefix("docker://").unwrap_or(s);
        if s_trim.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s_trim.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|e| bad(&e))?;
                (r, Some(d.to_string()))
            }
            None => (s_trim, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(bad(&format!("bad tag {t:?}")));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(bad(&format!("bad registry host {registry:?}")));
        }
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for comp in path.split('/') {
            if !valid_component(comp) {
                return Err(bad(&format!(
                    "bad repository component {comp:?} (lowercase letters, digits and separators . _ __ -)"
                )));
            }
        }
        Ok(Reference {
            registry,
            repository: path,
            tag,
            digest,
        })
    }
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|x| x == '-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `sha256:` and 64 lowercase hex digits (the only algorithm registries use for images).
pub fn check_digest(d: &str) -> Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!("bad digest {d:?} (want sha256:<64 hex digits>)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_usual_forms() {
        let a = r("debian");
        assert_eq!(
            (a.registry.as_str(), a.repository.as_str(), a.tag.as_deref()),
            ("docker.io", "library/debian", None)
        );
        assert_eq!(a.manifest_ref(), "latest");
        assert_eq!(a.api_host(), "registry-1.docker.io");
        let b = r("127.0.0.1:5000/team/app:v1.2");
        assert_eq!(b.registry, "127.0.0.1:5000");
        assert_eq!(b.repository, "team/app");
        assert_eq!(b.tag.as_deref(), Some("v1.2"));
        assert!(b.is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let c = r(&format!("localhost/x@{d}"));
        assert_eq!(c.registry, "localhost");
        assert_eq!(c.manifest_ref(), d);
        assert_eq!(c.to_string(), format!("localhost/x@{d}"));
        let e = r("ghcr.io/o/r/deep/name:tag");
        assert_eq!(e.repository, "o/r/deep/name");
        assert!(!e.is_loopback());
        assert_eq!(r("docker://quay.io/a/b:1").registry, "quay.io");
        assert_eq!(r("user/app").repository, "user/app");
    }

    #[test]
    fn refuses_bad_ones() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "reg.io/a:",
            "reg.io/a:-x",
            "reg.io/a@sha256:abc",
            "reg.io/a@md5:aa",
            "reg.io/-a",
            "reg.io/a..b",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
    }
}
