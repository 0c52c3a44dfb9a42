//! What happens to messages after they are sent: replies, edits, recalls,
//! reactions, read markers and unread counts, receipts, and deleting a
//! conversation from one's own view — over real QUIC, on every device.
mod common;

use std::time::Duration;

use common::cli::CliUser;
use common::*;
use quince::client::{Client, Draft, new_mid};
use quince::protocol::{
    Body, ConvDeleted, ErrorCode, Event, Marker, Message, Reactions, Role, Target,
};
use tokio::sync::broadcast;

/// The message `seq` of `conv` as `client` reads it in history.
async fn stored(client: &Client, conv: u64, seq: u64) -> Message {
    let page = client.history(conv, Some(seq - 1), None, 1).await.unwrap();
    page.messages.into_iter().next().expect("the message")
}

/// The next event matching `pick`, skipping others, failing after 10 s.
async fn event<T>(events: &mut broadcast::Receiver<Event>, pick: impl Fn(Event) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.expect("event stream open");
            if let Some(t) = pick(e) {
                return t;
            }
        }
    })
    .await
    .expect("the event within 10 s")
}

fn reactions(m: &Message) -> Vec<Reactions> {
    match &m.body {
        Body::Text { reactions, .. } => reactions.clone(),
        other => panic!("not a text message: {other:?}"),
    }
}

#[tokio::test]
async fn replies_edits_reactions_and_recalls_reach_every_device_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let alice2 = server.login("alice", "second").await;
    let carol = server.user(&admin, "carol").await;
    let mut bob_in = bob.subscribe().await.unwrap();
    let mut alice2_in = alice2.subscribe().await.unwrap();

    let hello = alice
        .send(Target::User("bob".into()), "hello", None)
        .await
        .unwrap();
    let conv = hello.conv;
    assert_eq!(next(&mut bob_in).await.seq, 1);
    assert_eq!(next(&mut alice2_in).await.seq, 1);

    // A reply quotes by sequence number.
    let draft = Draft {
        text: "hi alice".into(),
        reply_to: Some(1),
        ..Draft::default()
    };
    let reply = bob
        .send_draft(Target::Conv(conv), new_mid(), draft)
        .await
        .unwrap();
    let m = next(&mut alice2_in).await;
    assert_eq!(m.seq, reply.seq);
    assert!(matches!(
        m.body,
        Body::Text {
            reply_to: Some(1),
            ..
        }
    ));
    let nowhere = Draft {
        text: "to what?".into(),
        reply_to: Some(99),
        ..Draft::default()
    };
    let sent = bob.send_draft(Target::Conv(conv), new_mid(), nowhere).await;
    assert_eq!(refused(sent), ErrorCode::NotFound);

    // An edit is a new event pointing at the original; the stored original
    // reads as edited for anyone who loads history later.
    let edit = alice.edit(conv, 1, "hello, bob").await.unwrap();
    assert_eq!(edit.seq, 3);
    for inbox in [&mut bob_in, &mut alice2_in] {
        let m = next(inbox).await;
        assert_eq!((m.seq, m.from.as_str()), (3, "alice"));
        assert_eq!(
            m.body,
            Body::Edit {
                of: 1,
                text: "hello, bob".into()
            }
        );
    }
    let original = stored(&bob, conv, 1).await;
    assert!(
        matches!(&original.body, Body::Text { text, edited: Some(_), .. } if text == "hello, bob"),
        "{original:?}"
    );
    // Only the sender edits, an event is not a message, and a retried
    // edit with the same text changes nothing.
    assert_eq!(
        refused(bob.edit(conv, 1, "hijacked").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(alice.edit(conv, 3, "x").await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(alice.edit(conv, 42, "x").await),
        ErrorCode::NotFound
    );
    assert!(alice.edit(conv, 1, "hello, bob").await.unwrap().duplicate);
    // Someone outside the conversation can do nothing to it.
    assert_eq!(
        refused(carol.edit(conv, 1, "x").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(carol.react(conv, 1, "👍", true).await),
        ErrorCode::Forbidden
    );
    assert_eq!(refused(carol.recall(conv, 1).await), ErrorCode::Forbidden);

    // Reactions: add, add again (nothing new), a second user, take back.
    bob.react(conv, 1, "👍", true).await.unwrap();
    let m = next(&mut alice2_in).await;
    assert_eq!(
        m.body,
        Body::Reaction {
            of: 1,
            emoji: "👍".into(),
            add: true
        }
    );
    assert!(bob.react(conv, 1, "👍", true).await.unwrap().duplicate);
    alice.react(conv, 1, "👍", true).await.unwrap();
    alice.react(conv, 1, "🎉", true).await.unwrap();
    bob.react(conv, 1, "👍", false).await.unwrap();
    assert_eq!(
        reactions(&stored(&bob, conv, 1).await),
        [
            Reactions {
                emoji: "👍".into(),
                users: vec!["alice".into()]
            },
            Reactions {
                emoji: "🎉".into(),
                users: vec!["alice".into()]
            }
        ]
    );
    let long = "x".repeat(65);
    for bad in ["", "two words", "\u{7}", long.as_str()] {
        assert_eq!(
            refused(bob.react(conv, 1, bad, true).await),
            ErrorCode::BadRequest,
            "{bad:?}"
        );
    }
    // Bob's device hears Alice's two reactions, in order (not his own).
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = next(&mut bob_in).await;
        seen.push((m.from, m.body));
    }
    assert_eq!(
        seen,
        [
            (
                "alice".to_string(),
                Body::Reaction {
                    of: 1,
                    emoji: "👍".into(),
                    add: true
                }
            ),
            (
                "alice".to_string(),
                Body::Reaction {
                    of: 1,
                    emoji: "🎉".into(),
                    add: true
                }
            ),
        ]
    );

    // Bob cannot recall Alice's message; Alice can, within the window.
    assert_eq!(refused(bob.recall(conv, 1).await), ErrorCode::Forbidden);
    let recall = alice.recall(conv, 1).await.unwrap();
    let m = next(&mut bob_in).await;
    assert_eq!((m.seq, m.body), (recall.seq, Body::Recall { of: 1 }));
    // The content is gone from the store: the message and its edit keep
    // their places, with nothing in them; the reply still points at #1.
    assert_eq!(stored(&bob, conv, 1).await.body, Body::Recalled {});
    assert_eq!(stored(&bob, conv, 3).await.body, Body::Recalled {});
    assert!(matches!(
        stored(&alice, conv, 2).await.body,
        Body::Text {
            reply_to: Some(1),
            ..
        }
    ));
    // Recalling again is harmless; editing or reacting to a recalled message is not possible.
    assert!(alice.recall(conv, 1).await.unwrap().duplicate);
    assert_eq!(
        refused(alice.edit(conv, 1, "back").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(bob.react(conv, 1, "👍", true).await),
        ErrorCode::NotFound
    );

    // A backup is a fresh copy of what the store holds: the recalled text
    // is not in it.
    let backup = admin.admin_backup().await.unwrap();
    let file = dir.path().join("after-recall.qbk");
    quince::backup::save(backup, &file, None).await.unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let holds = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(holds("hi alice"), "the backup holds the messages");
    assert!(
        !holds("hello, bob"),
        "the recalled text is still in the backup"
    );
}

#[tokio::test]
async fn edit_and_recall_windows_and_moderators() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_configured(dir.path(), "edit_window_secs = 6\nrecall_window_secs = 1\n");
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let conv = alice.group_create("club", &["bob", "carol"]).await.unwrap();
    let sent = bob
        .send(Target::Conv(conv), "soon too late", None)
        .await
        .unwrap();
    let seq = sent.seq;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Past the recall window, inside the edit window (with seconds to spare
    // for a loaded machine).
    assert_eq!(refused(bob.recall(conv, seq).await), ErrorCode::TooLate);
    bob.edit(conv, seq, "edited in time").await.unwrap();
    // Until just past the edit window, counted from the message's time.
    let sent_at = std::time::UNIX_EPOCH + Duration::from_millis(sent.ts + 6_300);
    if let Ok(left) = sent_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!(
        refused(bob.edit(conv, seq, "too late").await),
        ErrorCode::TooLate
    );
    // A plain member cannot recall someone else's message; the group's
    // owner and admins can, at any time.
    assert_eq!(refused(carol.recall(conv, seq).await), ErrorCode::Forbidden);
    alice.group_promote(conv, "carol").await.unwrap();
    carol.recall(conv, seq).await.unwrap();
    let page = alice.history(conv, None, None, 50).await.unwrap();
    let bodies: Vec<&Body> = page.messages.iter().map(|m| &m.body).collect();
    assert!(bodies.contains(&&Body::Recall { of: seq }));
    assert!(!page.messages.iter().any(|m| matches!(&m.body,
        Body::Text { text, .. } | Body::Edit { text, .. } if text.contains("in time"))));
}

#[tokio::test]
async fn read_markers_drive_unread_counts_and_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let bob2 = server.login("bob", "second").await;
    let carol = server.user(&admin, "carol").await;
    let _alice_in = alice.subscribe().await.unwrap();
    let mut alice_events = alice.events();
    let mut bob2_in = bob2.subscribe().await.unwrap();
    let mut bob2_events = bob2.events();

    let mut conv = 0;
    for text in ["one", "two", "three"] {
        conv = alice
            .send(Target::User("bob".into()), text, None)
            .await
            .unwrap()
            .conv;
    }
    for seq in 1..=3 {
        assert_eq!(next(&mut bob2_in).await.seq, seq);
    }
    // Bob's list: three unread, the last message shown; Alice's: her own
    // messages are not unread to her.
    let bobs = bob.conversations().await.unwrap().conversations;
    assert_eq!((bobs[0].unread, bobs[0].read), (3, 0));
    let last = bobs[0].last.as_ref().expect("last message");
    assert_eq!((last.seq, text(last)), (3, "three"));
    let alices = alice.conversations().await.unwrap().conversations;
    assert_eq!((alices[0].unread, alices[0].read), (0, 3));

    // Delivery: Bob's second device acknowledged all three; Alice hears it.
    let delivered = event(&mut alice_events, |e| match e {
        Event::Delivered(m) if m.seq == 3 => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(delivered.user, "bob");

    // Bob reads up to 2 on his first device: Alice and Bob's other device hear it.
    bob.mark_read(conv, 2).await.unwrap();
    let read = Marker {
        conv,
        user: "bob".into(),
        seq: 2,
    };
    let for_alice = event(&mut alice_events, |e| match e {
        Event::Read(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(for_alice, read);
    let for_bob2 = event(&mut bob2_events, |e| match e {
        Event::Read(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(for_bob2, read);
    // The marker only moves forward; unread counts follow it, in every
    // list, on every device; reactions and edits are not unread messages.
    bob.mark_read(conv, 1).await.unwrap();
    alice.react(conv, 3, "👀", true).await.unwrap();
    alice.edit(conv, 3, "three!").await.unwrap();
    for device in [&bob, &bob2] {
        let list = device.conversations().await.unwrap().conversations;
        assert_eq!((list[0].read, list[0].unread), (2, 1));
    }
    let receipts = alice.receipts(conv).await.unwrap();
    let row = |name: &str| {
        let r = receipts.members.iter().find(|r| r.user == name).unwrap();
        (r.delivered, r.read)
    };
    assert_eq!(row("bob").1, 2);
    assert!(row("bob").0 >= 3, "bob received everything: {receipts:?}");
    assert_eq!(row("alice"), (5, 3));
    // Replying counts as reading what came before.
    bob.send(Target::Conv(conv), "got them", None)
        .await
        .unwrap();
    let list = bob.conversations().await.unwrap().conversations;
    assert_eq!((list[0].read, list[0].unread), (6, 0));
    let list = alice.conversations().await.unwrap().conversations;
    assert_eq!(list[0].unread, 1);

    // Outsiders learn nothing and move nothing.
    assert_eq!(refused(carol.receipts(conv).await), ErrorCode::Forbidden);
    assert_eq!(
        refused(carol.mark_read(conv, 3).await),
        ErrorCode::Forbidden
    );

    // In a group everyone's markers are there to ask for.
    let group = alice.group_create("g", &["bob", "carol"]).await.unwrap();
    alice
        .send(Target::Conv(group), "hi all", None)
        .await
        .unwrap();
    carol.mark_read(group, 2).await.unwrap();
    let receipts = bob.receipts(group).await.unwrap();
    let mut reads: Vec<(String, u64)> = receipts
        .members
        .into_iter()
        .map(|r| (r.user, r.read))
        .collect();
    reads.sort();
    assert_eq!(
        reads,
        [("alice".into(), 2), ("bob".into(), 0), ("carol".into(), 2)]
    );
}

#[tokio::test]
async fn deleting_a_conversation_hides_it_for_me_on_every_device_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let alice2 = server.login("alice", "second").await;
    let mut alice2_in = alice2.subscribe().await.unwrap();
    let mut alice2_events = alice2.events();

    let conv = bob
        .send(Target::User("alice".into()), "one", None)
        .await
        .unwrap()
        .conv;
    alice.send(Target::Conv(conv), "two", None).await.unwrap();
    assert_eq!(next(&mut alice2_in).await.seq, 1);
    assert_eq!(next(&mut alice2_in).await.seq, 2);

    alice.delete_conversation(conv).await.unwrap();
    let deleted = event(&mut alice2_events, |e| match e {
        Event::ConvDeleted(d) => Some(d),
        _ => None,
    })
    .await;
    assert_eq!(deleted, ConvDeleted { conv, seq: 2 });
    for device in [&alice, &alice2] {
        assert!(
            device
                .conversations()
                .await
                .unwrap()
                .conversations
                .is_empty()
        );
        let page = device.history(conv, None, None, 50).await.unwrap();
        assert!(page.messages.is_empty(), "{page:?}");
    }
    // Bob keeps his.
    assert_eq!(
        conversation_texts(&bob, conv).await,
        ["one".to_string(), "two".to_string()]
    );

    // A new message brings the conversation back, with only what is new.
    bob.send(Target::Conv(conv), "three", None).await.unwrap();
    let m = next(&mut alice2_in).await;
    assert_eq!((m.seq, text(&m)), (3, "three"));
    let list = alice.conversations().await.unwrap().conversations;
    assert_eq!((list.len(), list[0].unread), (1, 1));
    assert_eq!(
        conversation_texts(&alice, conv).await,
        ["three".to_string()]
    );
    // A device logging in later syncs only that.
    let alice3 = server.login("alice", "second").await;
    let mut alice3_in = alice3.subscribe().await.unwrap();
    let m = next(&mut alice3_in).await;
    assert_eq!((m.seq, text(&m)), (3, "three"));
    nothing(&mut alice3_in, Duration::from_millis(300)).await;

    // Someone else's conversation cannot be deleted.
    let carol = server.user(&admin, "carol").await;
    assert_eq!(
        refused(carol.delete_conversation(conv).await),
        ErrorCode::Forbidden
    );
    // A group one has left goes from the list for good.
    let group = bob.group_create("g", &["alice"]).await.unwrap();
    alice.group_leave(group).await.unwrap();
    assert!(
        alice
            .conversations()
            .await
            .unwrap()
            .conversations
            .iter()
            .any(|c| c.conv == group && !c.member)
    );
    alice.delete_conversation(group).await.unwrap();
    assert!(
        !alice
            .conversations()
            .await
            .unwrap()
            .conversations
            .iter()
            .any(|c| c.conv == group)
    );
    assert_eq!(
        refused(alice.history(group, None, None, 10).await),
        ErrorCode::Forbidden
    );
}

/// Everything above, from the command line, between two real users.
#[tokio::test]
async fn the_command_line_replies_edits_reacts_recalls_reads_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = CliUser::new("alice");
    let bob = CliUser::new("bob");
    for user in [&alice, &bob] {
        let invite = admin.admin_invite(Role::Member, None).await.unwrap();
        user.register(&server, &invite.token);
    }
    assert!(alice.ok(&["send", "bob", "lunch?"]).contains("#1"));
    let listed = bob.ok(&["conversations"]);
    assert!(
        listed.contains("alice") && listed.contains("1 unread"),
        "{listed}"
    );
    assert!(listed.contains("lunch?"), "the last message: {listed}");
    bob.ok(&["reply", "alice", "1", "yes, at noon"]);
    alice.ok(&["edit", "bob", "1", "lunch today?"]);
    bob.ok(&["react", "alice", "1", "👍"]);
    let history = bob.ok(&["history", "alice"]);
    assert!(
        history.contains("lunch today? (edited) [👍 bob]"),
        "{history}"
    );
    assert!(history.contains("(reply to #1) yes, at noon"), "{history}");
    assert!(!bob.fails(&["edit", "alice", "1", "mine now"]).is_empty());

    bob.ok(&["read", "alice"]);
    let receipts = alice.ok(&["receipts", "bob"]);
    let bob_row = receipts.lines().find(|l| l.starts_with("bob")).unwrap();
    assert!(bob_row.contains("read up to #4"), "{receipts}");

    alice.ok(&["recall", "bob", "1"]);
    let history = bob.ok(&["history", "alice"]);
    assert!(!history.contains("lunch"), "{history}");
    assert!(history.contains("alice recalled"), "{history}");

    alice.ok(&["delete", "bob"]);
    assert!(!alice.ok(&["conversations"]).contains("bob"));
    assert!(bob.ok(&["conversations"]).contains("alice"));
}
