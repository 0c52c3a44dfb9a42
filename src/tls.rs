//! Certificates: the server's own (self-signed on first start, or configured),
//! and the client's pinning of it by SHA-256 fingerprint.
//!
//! quince servers usually live on a home network with no public name, so a
//! CA-issued certificate is the exception. The client therefore trusts on first
//! use and pins the certificate's fingerprint, as SSH does with host keys.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// File names inside the data directory.
pub const CERT_FILE: &str = "server.crt";
pub const KEY_FILE: &str = "server.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { path: String, what: &'static str },
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's certificate chain and key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// SHA-256 fingerprint of the end-entity certificate, lower-case hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }
}

/// SHA-256 of a DER certificate, as 64 lower-case hex digits.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn load_pem(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|_| TlsError::Pem {
            path: cert.display().to_string(),
            what: "certificate",
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            path: cert.display().to_string(),
            what: "certificate",
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| TlsError::Pem {
        path: key.display().to_string(),
        what: "private key",
    })?;
    Ok(Identity { chain, key })
}

/// The configured certificate, or the data directory's self-signed one, made
/// on first start. Returns whether it was just created.
pub fn load_or_create(
    data_dir: &Path,
    configured: Option<(&Path, &Path)>,
) -> Result<(Identity, bool), TlsError> {
    if let Some((cert, key)) = configured {
        return Ok((load_pem(cert, key)?, false));
    }
    let cert_path = data_dir.join(CERT_FILE);
    let key_path = data_dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        return Ok((load_pem(&cert_path, &key_path)?, false));
    }
    let host = hostname();
    let mut names = vec!["quince".to_string(), "localhost".to_string()];
    if !host.is_empty() && !names.contains(&host) {
        names.push(host);
    }
    let generated = rcgen::generate_simple_self_signed(names)?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(io(&cert_path))?;
    Ok((load_pem(&cert_path, &key_path)?, true))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Writes a file only its owner can read: the key must not leak to other users.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The crypto provider quince uses on both sides: ring, so no cmake is needed to build.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only a certificate with this SHA-256 fingerprint (hex).
    Pinned(String),
    /// Whatever the server presents; its fingerprint is reported so it can be pinned.
    FirstUse,
}

/// Verifies the server by fingerprint and records what it saw. Handshake
/// signatures are still checked, so only the holder of the pinned key passes.
#[derive(Debug)]
pub struct PinVerifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
    /// Fingerprint of the certificate the server presented.
    pub seen: Mutex<Option<String>>,
}

impl PinVerifier {
    pub fn new(trust: Trust) -> Arc<Self> {
        Arc::new(PinVerifier {
            trust,
            provider: provider(),
            seen: Mutex::new(None),
        })
    }

    pub fn seen(&self) -> Option<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or(None)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(got.clone());
        }
        match &self.trust {
            Trust::FirstUse => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(want) if want.eq_ignore_ascii_case(&got) => {
                Ok(ServerCertVerified::assertion())
            }
            Trust::Pinned(_) => Err(rustls::Error::General(
                "server certificate fingerprint changed".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
