//! Who may talk to whom: every key here derives from the cluster secret, so holding the
//! secret is what makes a machine a member.
//!
//! - The membership layer (libp2p over TCP) runs inside a private network: a pre-shared
//!   key from the secret encrypts every connection before libp2p's own handshake, so a
//!   machine without the secret cannot even finish a handshake (libp2p's `pnet`).
//! - The transfer layer (QUIC) uses mutual TLS. The cluster CA's key is derived from the
//!   secret, so every member can rebuild the CA and sign a certificate for its own fresh
//!   key; each side accepts only certificates that chain to that CA. No CA files to ship,
//!   and rotating the secret splits old members from new ones.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// The name every member's certificate carries and every client checks.
pub const PEER_NAME: &str = "warren-peer";
/// ALPN of the transfer protocol.
pub const ALPN: &[u8] = b"warren-peer/1";

/// Why a member's keys or TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The secret is too short to protect a cluster.
    #[error("the cluster secret is empty or shorter than 16 bytes")]
    WeakSecret,
    /// rcgen could not make the CA or the member's certificate.
    #[error("building the cluster certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the keys or certificates.
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("building the client certificate check: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration.
    #[error("QUIC does not accept the TLS configuration: {0}")]
    Quic(String),
}

/// A member's keys, all derived from (or signed under) the cluster secret.
pub struct ClusterTrust {
    psk: [u8; 32],
    ca_der: CertificateDer<'static>,
    leaf_der: CertificateDer<'static>,
    leaf_key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for ClusterTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTrust { .. }")
    }
}

/// The PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410), so rcgen can load a key we derive.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

impl ClusterTrust {
    /// Derives the cluster's keys from its secret and makes this member a fresh certificate.
    pub fn from_secret(secret: &[u8]) -> Result<Self, TrustError> {
        if secret.len() < 16 {
            return Err(TrustError::WeakSecret);
        }
        let psk = blake3::derive_key("warren peer mesh 2026 private network key", secret);
        let ca_seed = blake3::derive_key("warren peer mesh 2026 cluster CA key", secret);
        let ca_pkcs8 = PrivatePkcs8KeyDer::from(ed25519_pkcs8(&ca_seed));
        let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(&ca_pkcs8, &PKCS_ED25519)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "warren cluster CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec![PEER_NAME.to_string()])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, PEER_NAME);
        let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;
        Ok(ClusterTrust {
            psk,
            ca_der: ca_cert.der().clone(),
            leaf_der: leaf.der().clone(),
            leaf_key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        })
    }

    /// The private-network key of the membership layer.
    pub fn psk(&self) -> [u8; 32] {
        self.psk
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TrustError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        Ok(Arc::new(roots))
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.leaf_key.clone_key())
    }

    /// QUIC server side: present our certificate, demand one from the cluster CA.
    pub fn quic_server(&self) -> Result<quinn::ServerConfig, TrustError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            Self::provider(),
        )
        .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.leaf_der.clone()], self.key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TrustError::Quic(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// QUIC client side: check the server against the cluster CA, show our certificate.
    pub fn quic_client(&self) -> Result<quinn::ClientConfig, TrustError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.leaf_der.clone()], self.key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TrustError::Quic(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_same_keys() {
        let a = ClusterTrust::from_secret(b"0123456789abcdef-cluster").unwrap();
        let b = ClusterTrust::from_secret(b"0123456789abcdef-cluster").unwrap();
        let c = ClusterTrust::from_secret(b"0123456789abcdef-other").unwrap();
        assert_eq!(a.psk(), b.psk());
        assert_ne!(a.psk(), c.psk());
        // Each member has its own leaf key.
        assert_ne!(a.leaf_der, b.leaf_der);
        assert!(ClusterTrust::from_secret(b"short").is_err());
    }
}
