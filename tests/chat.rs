//! Two users chatting, offline delivery and multi-device delivery.
mod common;

use common::*;
use quince::protocol::Target;
use std::time::Duration;

#[tokio::test]
async fn two_users_chat_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let mut alice_in = alice.subscribe().await.unwrap();
    let mut bob_in = bob.subscribe().await.unwrap();

    let ack = alice
        .send(Target::User("bob".into()), "hi bob", None)
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
    let m = next(&mut bob_in).await;
    assert_eq!((m.from.as_str(), text(&m), m.seq), ("alice", "hi bob", 1));

    let ack2 = bob
        .send(Target::Conv(ack.conv), "hi alice", Some(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!((ack2.conv, ack2.seq), (ack.conv, 2));
    let m = next(&mut alice_in).await;
    assert_eq!((m.from.as_str(), text(&m)), ("bob", "hi alice"));
    // The sender's own message is not echoed to the sending device.
    nothing(&mut alice_in, Duration::from_millis(300)).await;
    nothing(&mut bob_in, Duration::from_millis(10)).await;
}

#[tokio::test]
async fn offline_user_gets_messages_on_next_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let token = {
        // Log bob in on a second device whose token we keep, then go offline.
        let c = server.connect().await;
        let s = c.login("bob", &password("bob"), "phone").await.unwrap();
        c.close().await;
        s.token.unwrap()
    };
    bob.close().await;
    for i in 0..450 {
        alice
            .send(Target::User("bob".into()), &format!("msg {i}"), None)
            .await
            .unwrap();
    }
    let phone = server.connect().await;
    phone.resume(&token).await.unwrap();
    let changed = phone.sync().await.unwrap();
    assert_eq!(changed.conversations.len(), 1);
    assert_eq!(changed.conversations[0].last_seq, 450);
    assert_eq!(changed.conversations[0].cursor, 0);
    let mut inbox = phone.subscribe().await.unwrap();
    for i in 0..450 {
        let m = next(&mut inbox).await;
        assert_eq!(m.seq, i + 1);
        assert_eq!(text(&m), format!("msg {i}"));
    }
    nothing(&mut inbox, Duration::from_millis(300)).await;
    // Everything was acknowledged: the next connect has nothing to catch up on.
    phone.close().await;
    let again = server.connect().await;
    again.resume(&token).await.unwrap();
    let mut synced = again.sync().await.unwrap();
    for _ in 0..200 {
        if synced.conversations.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        synced = again.sync().await.unwrap();
    }
    assert!(
        synced.conversations.is_empty(),
        "still unacknowledged: {synced:?}"
    );
}

#[tokio::test]
async fn every_device_of_a_user_receives_and_senders_other_devices_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let bob_laptop = server.connect().await;
    bob_laptop
        .login("bob", &password("bob"), "laptop")
        .await
        .unwrap();
    let bob_phone = server.connect().await;
    bob_phone
        .login("bob", &password("bob"), "phone")
        .await
        .unwrap();
    let alice_tablet = server.connect().await;
    alice_tablet
        .login("alice", &password("alice"), "tablet")
        .await
        .unwrap();
    let mut laptop = bob_laptop.subscribe().await.unwrap();
    let mut phone = bob_phone.subscribe().await.unwrap();
    let mut tablet = alice_tablet.subscribe().await.unwrap();

    alice
        .send(Target::User("bob".into()), "to all of bob", None)
        .await
        .unwrap();
    for inbox in [&mut laptop, &mut phone, &mut tablet] {
        let m = next(inbox).await;
        assert_eq!(text(&m), "to all of bob");
    }
}

#[tokio::test]
async fn idempotent_retry_does_not_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let mut bob_in = bob.subscribe().await.unwrap();
    let mid = [42u8; 16];
    let first = alice
        .send_with_id(Target::User("bob".into()), mid, "once", None)
        .await
        .unwrap();
    assert!(!first.duplicate);
    // The retry comes over a new connection, as after a dropped one.
    alice.close().await;
    let again = server.connect().await;
    again
        .login("alice", &password("alice"), "test2")
        .await
        .unwrap();
    let retry = again
        .send_with_id(Target::User("bob".into()), mid, "once", None)
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.conv, retry.seq, retry.ts),
        (first.conv, first.seq, first.ts)
    );
    let err = again
        .send_with_id(Target::User("bob".into()), mid, "different", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(quince::protocol::ErrorCode::Conflict));
    assert_eq!(text(&next(&mut bob_in).await), "once");
    nothing(&mut bob_in, Duration::from_millis(300)).await;
    let page = bob.history(first.conv, None, None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
}

#[tokio::test]
async fn history_pages_backwards_and_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let mut conv = 0;
    for i in 1..=25 {
        conv = alice
            .send(Target::User("bob".into()), &format!("{i}"), None)
            .await
            .unwrap()
            .conv;
    }
    let newest = alice.history(conv, None, None, 10).await.unwrap();
    assert_eq!(
        newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (16..=25).collect::<Vec<_>>()
    );
    assert!(newest.more);
    let older = alice.history(conv, None, Some(16), 10).await.unwrap();
    assert_eq!(older.messages.first().unwrap().seq, 6);
    let oldest = alice.history(conv, None, Some(6), 10).await.unwrap();
    assert_eq!(oldest.messages.len(), 5);
    assert!(!oldest.more);
    let forward = alice.history(conv, Some(20), None, 10).await.unwrap();
    assert_eq!(
        forward.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (21..=25).collect::<Vec<_>>()
    );
    assert!(!forward.more);
}
