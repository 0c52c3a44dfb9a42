//! Nothing acknowledged is lost: not to SIGKILL, not to a clean restart.
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use quince::protocol::{Body, Target};

#[tokio::test]
async fn sigkill_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;

    // Eight senders pipeline messages; each acknowledged text is recorded.
    let acked: Arc<Mutex<Vec<(u64, u64, String)>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..8 {
        let client = alice.clone();
        let acked = acked.clone();
        senders.spawn(async move {
            for i in 0.. {
                let text = format!("s{s}-{i}");
                match client.send(Target::User("bob".into()), &text, None).await {
                    Ok(ack) => acked.lock().unwrap().push((ack.conv, ack.seq, text)),
                    Err(_) => return,
                }
            }
        });
    }
    // Let a few hundred commits happen, then cut the power.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (dir_path, addr) = server.kill9();
    // Sends in flight at the cut get no answer (the client would wait for its
    // idle timeout); they were not acknowledged, so they are simply dropped.
    senders.shutdown().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let server = TestServer::start_on(&dir_path, addr);
    assert!(
        server.admin_invite.is_none(),
        "a restart must not make a new admin invite"
    );
    let bob = server.connect().await;
    bob.login("bob", &password("bob"), "check").await.unwrap();
    let conv = acked[0].0;
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = bob.history(conv, Some(after), None, 500).await.unwrap();
        for m in &page.messages {
            if let Body::Text { text, .. } = &m.body {
                stored.push((m.seq, text.clone()));
            }
        }
        match page.messages.last() {
            Some(m) if page.more => after = m.seq,
            _ => break,
        }
    }
    // Sequence numbers are 1..=n with no gap, and no text appears twice.
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    let texts: HashSet<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.len(), stored.len(), "a message was stored twice");
    // Every acknowledged message is there, at the sequence number it was acknowledged with.
    for (_, seq, text) in &acked {
        assert_eq!(
            stored.get(*seq as usize - 1).map(|(_, t)| t.as_str()),
            Some(text.as_str())
        );
    }
    // Per sender, the order of sends is the order of sequence numbers.
    for s in 0..8 {
        let prefix = format!("s{s}-");
        let order: Vec<u64> = stored
            .iter()
            .filter(|(_, t)| t.starts_with(&prefix))
            .map(|(_, t)| t[prefix.len()..].parse().unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "sender {s} reordered: {order:?}"
        );
    }
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let fingerprint = server.fingerprint.clone();
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let mut conv = 0;
    for i in 0..20 {
        conv = alice
            .send(Target::User("bob".into()), &format!("m{i}"), None)
            .await
            .unwrap()
            .conv;
    }
    let addr = server.addr;
    let status = server.terminate();
    assert!(status.success(), "quince exited with {status:?}");
    // The connected client was told why.
    match tokio::time::timeout(Duration::from_secs(5), alice.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(quince::protocol::close::SHUTDOWN)
            )
        }
        other => panic!("unexpected close: {other}"),
    }
    // A request made after the connection ended fails at once; it must not
    // wait forever for a reply no one will read.
    let late = tokio::time::timeout(Duration::from_secs(5), alice.whoami()).await;
    assert!(
        matches!(late, Ok(Err(_))),
        "a call on a closed connection must fail, not hang: {late:?}"
    );
    let server = TestServer::start_on(dir.path(), addr);
    assert_eq!(
        server.fingerprint, fingerprint,
        "the certificate must survive a restart"
    );
    let bob = server.connect().await;
    bob.login("bob", &password("bob"), "check").await.unwrap();
    let page = bob.history(conv, None, None, 100).await.unwrap();
    assert_eq!(page.messages.len(), 20);
    assert_eq!(text(&page.messages[19]), "m19");
}

#[tokio::test]
async fn admin_invite_file_is_written_and_removed_once_used() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let file = dir.path().join("admin-invite.txt");
    let on_disk = std::fs::read_to_string(&file).unwrap();
    assert_eq!(on_disk.trim(), server.admin_invite.as_deref().unwrap());
    let _admin = server.admin().await;
    let addr = server.addr;
    drop(server);
    let server = TestServer::start_on(dir.path(), addr);
    assert!(server.admin_invite.is_none());
    assert!(!file.exists(), "the used invite's file must be gone");
    // The invite cannot be used twice.
    let c = server.connect().await;
    let err = c
        .register(on_disk.trim(), "mallory", "mallory-password", "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(quince::protocol::ErrorCode::InvalidInvite));
}
