//! A token server for the registry's `auth.token` mode: checks basic credentials and
//! issues RS256 JWTs (header `x5c` with its self-signed certificate, which the registry
//! trusts through `rootcertbundle`), granting the requested repository actions. The key
//! and certificate come from the `openssl` command; signing is `ring`'s.

use super::{need, run};
use base64::Engine;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the registry's config needs to know about the token server.
#[derive(Clone, Debug)]
pub struct TokenConfig {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub cert_pem: PathBuf,
}

pub struct TokenServer {
    pub config: TokenConfig,
    /// Token requests answered (any status).
    pub requests: Arc<AtomicUsize>,
    /// Every token handed out.
    pub issued: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    addr: String,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: ring::signature::RsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    service: String,
    issuer: String,
    /// What `expires_in` says (the JWT itself lives longer, so the registry keeps
    /// accepting a token the client has already replaced).
    expires_in: u64,
}

impl TokenServer {
    /// Grants to `user`:`password` only; tokens announce `expires_in` seconds of life.
    pub fn start(user: &str, password: &str, expires_in: u64) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let openssl = need("openssl");
        let key = dir.path().join("key.der");
        let pem = dir.path().join("cert.pem");
        let der = dir.path().join("cert.der");
        run(Command::new(&openssl)
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
                "-out",
            ])
            .arg(&key));
        run(Command::new(&openssl)
            .args(["req", "-x509", "-new", "-keyform", "DER", "-key"])
            .arg(&key)
            .args(["-subj", "/CN=warren-test-token", "-days", "2", "-out"])
            .arg(&pem));
        run(Command::new(&openssl)
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&der));
        let signer = Arc::new(Signer {
            key: ring::signature::RsaKeyPair::from_der(&std::fs::read(&key).unwrap())
                .expect("openssl wrote a PKCS#1 RSA key"),
            cert_der: std::fs::read(&der).unwrap(),
            user: user.into(),
            password: password.into(),
            service: "warren-test-registry".into(),
            issuer: "warren-test-issuer".into(),
            expires_in,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = TokenConfig {
            realm: format!("http://{addr}/token"),
            service: signer.service.clone(),
            issuer: signer.issuer.clone(),
            cert_pem: pem,
        };
        let (requests, issued, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (r2, i2, s2) = (requests.clone(), issued.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (signer, r, i) = (signer.clone(), r2.clone(), i2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &signer, &r, &i);
                });
            }
        });
        TokenServer {
            config,
            requests,
            issued,
            stop,
            addr,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    signer: &Signer,
    requests: &AtomicUsize,
    issued: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let mut conn = conn;
    let authorized = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|raw| raw == format!("{}:{}", signer.user, signer.password).as_bytes());
    if !authorized {
        return respond(
            &mut conn,
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#,
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path != "/token" {
        return respond(&mut conn, "404 Not Found", "{}");
    }
    let mut access = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "scope" {
            continue;
        }
        let scope = percent_decode(v);
        let mut parts = scope.splitn(3, ':');
        if let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        {
            access.push(serde_json::json!({
                "type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let token = signer.token(access);
    issued.lock().unwrap().push(token.clone());
    let body = serde_json::json!({
        "token": token, "access_token": token,
        "expires_in": signer.expires_in,
    });
    respond(&mut conn, "200 OK", &body.to_string())
}

fn respond(conn: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl Signer {
    fn token(&self, access: Vec<serde_json::Value>) -> String {
        let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT", "alg": "RS256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": self.user, "aud": self.service,
            "exp": now + 600, "nbf": now - 5, "iat": now,
            "jti": format!("{now}-{}", rand_u64()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .expect("signing");
        format!("{signing_input}.{}", b64(&sig))
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
