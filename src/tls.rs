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

/// Which AEAD the TLS handshake should prefer: the `tls_prefer` setting.
///
/// `Auto` asks the CPU. The other two are for machines whose detection is
/// wrong (an emulator that hides or fakes AES instructions, say) and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsPrefer {
    /// ChaCha20-Poly1305 first when the CPU has no AES instructions, else AES-GCM.
    #[default]
    Auto,
    /// ChaCha20-Poly1305 first, whatever the CPU says.
    Chacha20,
    /// AES-GCM first, whatever the CPU says.
    Aes,
}

/// The cipher suite order chosen, and why, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteChoice {
    /// ChaCha20-Poly1305 goes first, and a server insists on its own order.
    pub chacha_first: bool,
    pub reason: &'static str,
}

impl SuiteChoice {
    /// The TLS 1.3 suite this side prefers.
    pub fn preferred(&self) -> &'static str {
        if self.chacha_first {
            "TLS13_CHACHA20_POLY1305_SHA256"
        } else {
            "TLS13_AES_256_GCM_SHA384"
        }
    }
}

/// Decides the suite order from the setting and the CPU; pure, so tests can
/// try CPUs they do not run on.
///
/// Without AES instructions (the Raspberry Pi 4's Cortex-A72 lacks the ARMv8
/// crypto extensions), AES-GCM runs in constant-time software several times
/// slower than ChaCha20-Poly1305, which needs only ordinary arithmetic. With
/// them, AES-GCM is the faster of the two, and rustls' default order stands.
pub fn choose_suites(prefer: TlsPrefer, has_aes: bool) -> SuiteChoice {
    match (prefer, has_aes) {
        (TlsPrefer::Chacha20, _) => SuiteChoice {
            chacha_first: true,
            reason: "tls_prefer = \"chacha20\"",
        },
        (TlsPrefer::Aes, _) => SuiteChoice {
            chacha_first: false,
            reason: "tls_prefer = \"aes\"",
        },
        (TlsPrefer::Auto, false) => SuiteChoice {
            chacha_first: true,
            reason: "the CPU has no AES instructions",
        },
        (TlsPrefer::Auto, true) => SuiteChoice {
            chacha_first: false,
            reason: "the CPU has AES instructions",
        },
    }
}

/// Whether this CPU has AES instructions, asked at run time: one binary
/// serves both a Pi 4 (no AES) and a Pi 5 (AES), and the appliance image is
/// built for their common denominator, so a build-time answer would be wrong
/// for one of them. Other architectures are assumed to have none.
pub fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        // Rust's "aes" feature on aarch64 includes PMULL, which GCM needs too.
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    {
        false
    }
}

/// Whether a suite uses ChaCha20-Poly1305 (TLS 1.3 or 1.2).
fn is_chacha(suite: &rustls::SupportedCipherSuite) -> bool {
    use rustls::CipherSuite as C;
    matches!(
        suite.suite(),
        C::TLS13_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// The suites in preference order: the ChaCha20 ones first when asked, the
/// rest in their given order. Nothing is removed, so peers that only speak
/// AES-GCM still connect.
pub fn order_suites(
    suites: &[rustls::SupportedCipherSuite],
    chacha_first: bool,
) -> Vec<rustls::SupportedCipherSuite> {
    let mut ordered = suites.to_vec();
    if chacha_first {
        // A stable sort keeps the order within each group.
        ordered.sort_by_key(|s| !is_chacha(s));
    }
    ordered
}

/// The crypto provider quince uses on both sides: ring (so no cmake is needed
/// to build), its cipher suites in the order this CPU prefers (see
/// [`choose_suites`]).
///
/// The order covers the handshake's choice for the connection. QUIC's Initial
/// packets are always protected with AES-128-GCM (RFC 9001, section 5.2) under
/// keys anyone can derive; that is a handful of packets per connection and
/// costs nothing noticeable even without AES instructions.
pub fn provider() -> Arc<CryptoProvider> {
    provider_for(choose_suites(TlsPrefer::Auto, cpu_has_aes()))
}

/// The ring provider with its suites ordered as `choice` says.
pub fn provider_for(choice: SuiteChoice) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = order_suites(&provider.cipher_suites, choice.chacha_first);
    Arc::new(provider)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite as C;

    fn tls13_order(choice: SuiteChoice) -> Vec<C> {
        provider_for(choice)
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .map(|s| s.suite())
            .collect()
    }

    #[test]
    fn without_aes_chacha_comes_first_and_with_aes_last() {
        let pi4 = choose_suites(TlsPrefer::Auto, false);
        assert!(pi4.chacha_first);
        assert_eq!(pi4.preferred(), "TLS13_CHACHA20_POLY1305_SHA256");
        assert_eq!(
            tls13_order(pi4),
            [
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_AES_128_GCM_SHA256
            ]
        );
        let pi5 = choose_suites(TlsPrefer::Auto, true);
        assert!(!pi5.chacha_first);
        assert_eq!(
            tls13_order(pi5),
            [
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
    }

    #[test]
    fn the_setting_overrides_the_cpu() {
        assert!(choose_suites(TlsPrefer::Chacha20, true).chacha_first);
        assert!(!choose_suites(TlsPrefer::Aes, false).chacha_first);
        assert_eq!(
            choose_suites(TlsPrefer::Aes, false).reason,
            "tls_prefer = \"aes\""
        );
    }

    #[test]
    fn ordering_keeps_every_suite() {
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        let ordered = order_suites(&all, true);
        assert_eq!(ordered.len(), all.len());
        // ChaCha suites (TLS 1.3 and both TLS 1.2 ones) lead, the rest keep their order.
        assert!(ordered[..3].iter().all(is_chacha));
        let rest: Vec<C> = ordered[3..].iter().map(|s| s.suite()).collect();
        let before: Vec<C> = all
            .iter()
            .filter(|s| !is_chacha(s))
            .map(|s| s.suite())
            .collect();
        assert_eq!(rest, before);
        assert_eq!(
            order_suites(&all, false)
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>(),
            all.iter().map(|s| s.suite()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn tls_prefer_reads_from_toml() {
        #[derive(serde::Deserialize)]
        struct T {
            p: TlsPrefer,
        }
        let p = |s: &str| toml::from_str::<T>(&format!("p = \"{s}\"")).map(|t| t.p);
        assert_eq!(p("auto").unwrap(), TlsPrefer::Auto);
        assert_eq!(p("chacha20").unwrap(), TlsPrefer::Chacha20);
        assert_eq!(p("aes").unwrap(), TlsPrefer::Aes);
        assert!(p("chacha").is_err());
    }
}
