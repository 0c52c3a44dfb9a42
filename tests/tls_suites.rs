//! Which cipher suite a real handshake settles on: a server told to prefer
//! ChaCha20-Poly1305 (as a Raspberry Pi 4, which has no AES instructions, is)
//! gets it even from a client that lists AES-GCM first; a server with AES
//! honours the client's order.
//!
//! quinn does not expose the negotiated suite, so the test client carries
//! ring's own suites with their QUIC packet-protection algorithm wrapped in a
//! counter: the suite whose algorithm is asked for packet keys is the suite
//! the handshake chose. (Initial packets always use AES-128-GCM, RFC 9001
//! section 5.2, so that suite's counter says nothing and is not looked at.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestServer;
use quince::client::Trust;
use quince::tls::PinVerifier;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::quic::{Algorithm, HeaderProtectionKey, PacketKey};
use rustls::{SupportedCipherSuite, Tls13CipherSuite};

/// A suite's QUIC algorithm that counts the packet keys made with it.
struct Counting {
    inner: &'static dyn Algorithm,
    keys: &'static AtomicUsize,
}

impl Algorithm for Counting {
    fn packet_key(&self, key: AeadKey, iv: Iv) -> Box<dyn PacketKey> {
        self.keys.fetch_add(1, Ordering::SeqCst);
        self.inner.packet_key(key, iv)
    }
    fn header_protection_key(&self, key: AeadKey) -> Box<dyn HeaderProtectionKey> {
        self.inner.header_protection_key(key)
    }
    fn aead_key_len(&self) -> usize {
        self.inner.aead_key_len()
    }
}

/// A copy of one of ring's TLS 1.3 suites whose QUIC keys are counted.
fn counted(suite: SupportedCipherSuite) -> (SupportedCipherSuite, &'static AtomicUsize) {
    let real = suite.tls13().expect("a TLS 1.3 suite");
    let keys: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let quic: &'static Counting = Box::leak(Box::new(Counting {
        inner: real.quic.expect("ring's suites support QUIC"),
        keys,
    }));
    let copy: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
        common: rustls::crypto::CipherSuiteCommon {
            suite: real.common.suite,
            hash_provider: real.common.hash_provider,
            confidentiality_limit: real.common.confidentiality_limit,
        },
        hkdf_provider: real.hkdf_provider,
        aead_alg: real.aead_alg,
        quic: Some(quic),
    }));
    (SupportedCipherSuite::Tls13(copy), keys)
}

#[derive(Debug, PartialEq, Eq)]
enum Negotiated {
    Chacha20,
    Aes256,
}

/// Connects to `server` offering the suites in the order given (ChaCha20
/// first, as a client without AES does, or AES-GCM first, rustls' default)
/// and reports which suite protects the connection.
async fn handshake(server: &TestServer, client_prefers_chacha: bool) -> Negotiated {
    let (chacha, chacha_keys) = counted(TLS13_CHACHA20_POLY1305_SHA256);
    let (aes256, aes256_keys) = counted(TLS13_AES_256_GCM_SHA384);
    let (aes128, _) = counted(TLS13_AES_128_GCM_SHA256);
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = if client_prefers_chacha {
        vec![chacha, aes256, aes128]
    } else {
        vec![aes256, aes128, chacha]
    };
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(PinVerifier::new(Trust::Pinned(
            server.fingerprint.clone(),
        )))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![quince::protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let endpoint = quinn::Endpoint::client(bind).unwrap();
    let conn = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(quic)),
            server.addr,
            "quince",
        )
        .unwrap()
        .await
        .expect("the handshake completes");
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    match (
        chacha_keys.load(Ordering::SeqCst),
        aes256_keys.load(Ordering::SeqCst),
    ) {
        (c, 0) if c > 0 => Negotiated::Chacha20,
        (0, a) if a > 0 => Negotiated::Aes256,
        (c, a) => panic!("packet keys from both or neither suite: chacha20 {c}, aes256 {a}"),
    }
}

fn server(dir: &tempfile::TempDir, prefer: &str) -> TestServer {
    TestServer::start_configured(
        &dir.path().join(prefer),
        &format!("tls_prefer = \"{prefer}\"\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_preferring_chacha20_gets_it_from_a_client_with_aes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir, "chacha20");
    assert_eq!(handshake(&server, false).await, Negotiated::Chacha20);
    assert_eq!(handshake(&server, true).await, Negotiated::Chacha20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_aes_follows_the_clients_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir, "aes");
    assert_eq!(handshake(&server, false).await, Negotiated::Aes256);
    // A client without AES (a Pi 4) still gets ChaCha20.
    assert_eq!(handshake(&server, true).await, Negotiated::Chacha20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_asks_this_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir, "auto");
    let expected = if quince::tls::cpu_has_aes() {
        Negotiated::Aes256
    } else {
        Negotiated::Chacha20
    };
    assert_eq!(handshake(&server, false).await, expected);
}
