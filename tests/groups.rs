//! Groups: fan-out to many members, removal, leaving, ownership, membership
//! events in history, and the conversation list.
mod common;

use std::time::Duration;

use common::*;
use quince::client::{Client, Trust};
use quince::protocol::{
    Body, ConvKind, ErrorCode, Event, GroupRole, Message, PresenceInfo, PresenceState, Role, Target,
};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

/// Client endpoints (UDP sockets) the many members of a big group share, as
/// a load generator would: a test process has too few file descriptors and
/// ports to give 500 clients a socket each.
const ENDPOINTS: usize = 4;

/// Registers members concurrently (one argon2 hash each on the server), their
/// connections spread over [`ENDPOINTS`] shared client endpoints.
async fn members(server: &TestServer, admin: &Client, names: &[String]) -> Vec<Client> {
    let endpoints: Vec<quinn::Endpoint> = (0..ENDPOINTS)
        .map(|_| quince::client::endpoint("127.0.0.1:0".parse().unwrap()).expect("endpoint"))
        .collect();
    let mut set = JoinSet::new();
    for (i, name) in names.iter().cloned().enumerate() {
        let admin = admin.clone();
        let (addr, fingerprint) = (server.addr, server.fingerprint.clone());
        let endpoint = endpoints[i % ENDPOINTS].clone();
        set.spawn(async move {
            let invite = admin
                .admin_invite(Role::Member, None)
                .await
                .expect("invite");
            let client = Client::connect_on(&endpoint, addr, Trust::Pinned(fingerprint))
                .await
                .expect("connect");
            client
                .register(&invite.token, &name, &password(&name), "test")
                .await
                .expect("register");
            (i, client)
        });
    }
    let mut clients = set.join_all().await;
    clients.sort_by_key(|(i, _)| *i);
    clients.into_iter().map(|(_, c)| c).collect()
}

/// Asserts that no inbox has anything queued after waiting `wait` once.
async fn all_quiet(inboxes: &mut [mpsc::Receiver<Message>], wait: Duration) {
    tokio::time::sleep(wait).await;
    for (i, inbox) in inboxes.iter_mut().enumerate() {
        if let Ok(m) = inbox.try_recv() {
            panic!("inbox {i} got an unexpected message: {m:?}");
        }
    }
}

/// The next presence event (other events are skipped), failing after 10 s.
async fn next_presence(events: &mut broadcast::Receiver<Event>) -> PresenceInfo {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("no event missed");
        if let Event::Presence(p) = event {
            return p;
        }
    }
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_member_group_gets_one_message_on_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let owner = server.user(&admin, "owner").await;
    let names: Vec<String> = (0..499).map(|i| format!("member{i:03}")).collect();
    let clients = members(&server, &admin, &names).await;
    assert_eq!(clients.len(), 499);
    let mut owner_events = owner.events();
    let mut member_events = clients[1].events();
    let mut owner_in = owner.subscribe().await.unwrap();
    let mut inboxes = Vec::new();
    for c in &clients {
        inboxes.push(c.subscribe().await.unwrap());
    }

    let member_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let conv = owner
        .group_create("five hundred", &member_refs)
        .await
        .unwrap();
    let listed = owner.group_members(conv).await.unwrap();
    assert_eq!(listed.name, "five hundred");
    assert_eq!(listed.members.len(), 500);
    let owners: Vec<&str> = listed
        .members
        .iter()
        .filter(|m| m.owner)
        .map(|m| m.user.as_str())
        .collect();
    assert_eq!(owners, ["owner"]);
    for inbox in inboxes.iter_mut() {
        let m = next(inbox).await;
        assert_eq!((m.conv, m.seq, m.from.as_str()), (conv, 1, "owner"));
        assert_eq!(
            m.body,
            Body::GroupCreated {
                name: "five hundred".into()
            }
        );
    }
    // Too big for its members to be told each other's presence (that would
    // be 250 000 events; docs/PROTOCOL.md §7.6): events to a device keep
    // their order, so the first presence event the owner and a member hear
    // is a change made after the group was created.
    clients[0].set_presence(PresenceState::Away).await.unwrap();
    for events in [&mut owner_events, &mut member_events] {
        let p = next_presence(events).await;
        assert_eq!(
            (p.user.as_str(), p.state),
            ("member000", PresenceState::Away)
        );
    }

    let ack = owner
        .send(Target::Conv(conv), "hello, five hundred", None)
        .await
        .unwrap();
    assert_eq!((ack.conv, ack.seq, ack.duplicate), (conv, 2, false));
    for (i, inbox) in inboxes.iter_mut().enumerate() {
        let m = next(inbox).await;
        assert_eq!(
            (m.conv, m.seq, m.from.as_str(), text(&m)),
            (conv, 2, "owner", "hello, five hundred"),
            "member {i}"
        );
    }
    // Exactly one message each, and no echo of the group's creation or the
    // message to the owner's own device.
    all_quiet(&mut inboxes, Duration::from_millis(300)).await;
    assert!(owner_in.try_recv().is_err(), "the sender got an echo");

    // A reply from one member reaches the owner and the 498 others, not its sender.
    clients[7]
        .send(Target::Conv(conv), "reply from 007", None)
        .await
        .unwrap();
    let m = next(&mut owner_in).await;
    assert_eq!(
        (m.seq, m.from.as_str(), text(&m)),
        (3, "member007", "reply from 007")
    );
    for (i, inbox) in inboxes.iter_mut().enumerate() {
        if i == 7 {
            continue;
        }
        let m = next(inbox).await;
        assert_eq!((m.seq, text(&m)), (3, "reply from 007"), "member {i}");
    }
    all_quiet(&mut inboxes, Duration::from_millis(200)).await;
    nothing(&mut owner_in, Duration::from_millis(10)).await;
}

#[tokio::test]
async fn removed_member_stops_receiving_and_loses_access() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let mut bob_in = bob.subscribe().await.unwrap();
    let mut carol_in = carol.subscribe().await.unwrap();

    let conv = alice.group_create("trio", &["bob", "carol"]).await.unwrap();
    for inbox in [&mut bob_in, &mut carol_in] {
        assert_eq!(next(inbox).await.seq, 1);
    }
    alice
        .send(Target::Conv(conv), "before", None)
        .await
        .unwrap();
    for inbox in [&mut bob_in, &mut carol_in] {
        let m = next(inbox).await;
        assert_eq!((m.seq, text(&m)), (2, "before"));
    }

    alice.group_remove(conv, "bob").await.unwrap();
    // The removal is the last thing bob gets, and carol sees it too.
    for inbox in [&mut bob_in, &mut carol_in] {
        let m = next(inbox).await;
        assert_eq!((m.seq, m.from.as_str()), (3, "alice"));
        assert_eq!(m.body, Body::MemberRemoved { user: "bob".into() });
        assert_eq!(m.mid.as_slice(), &[0u8; 16]);
    }
    alice.send(Target::Conv(conv), "after", None).await.unwrap();
    let m = next(&mut carol_in).await;
    assert_eq!((m.seq, text(&m)), (4, "after"));
    nothing(&mut bob_in, Duration::from_millis(300)).await;

    // Bob can no longer write, list members or change the group...
    let sent = bob.send(Target::Conv(conv), "let me in", None).await;
    assert_eq!(refused(sent), ErrorCode::Forbidden);
    assert_eq!(refused(bob.group_members(conv).await), ErrorCode::Forbidden);
    assert_eq!(
        refused(bob.group_add(conv, "bob").await),
        ErrorCode::Forbidden
    );
    assert_eq!(refused(bob.group_leave(conv).await), ErrorCode::Forbidden);
    // ...and reads history only up to his removal, whichever way he pages.
    let newest = bob.history(conv, None, None, 100).await.unwrap();
    assert_eq!(seqs(&newest.messages), [1, 2, 3]);
    assert!(!newest.more);
    let forward = bob.history(conv, Some(0), None, 100).await.unwrap();
    assert_eq!(seqs(&forward.messages), [1, 2, 3]);
    let past_end = bob.history(conv, Some(3), None, 100).await.unwrap();
    assert!(past_end.messages.is_empty() && !past_end.more);
    let before_end = bob.history(conv, None, Some(10), 100).await.unwrap();
    assert_eq!(seqs(&before_end.messages), [1, 2, 3]);
    let listed = bob.conversations().await.unwrap().conversations;
    let summary = listed
        .iter()
        .find(|c| c.conv == conv)
        .expect("still listed");
    assert_eq!((summary.member, summary.last_seq), (false, 3));
    // Nothing of his refused attempts was stored.
    let all = alice.history(conv, None, None, 100).await.unwrap();
    assert_eq!(seqs(&all.messages), [1, 2, 3, 4]);

    // The others carry on without him.
    let left: Vec<String> = carol
        .group_members(conv)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(left, ["alice", "carol"]);
    assert_eq!(
        refused(alice.group_remove(conv, "bob").await),
        ErrorCode::NotFound
    );
    alice
        .send(Target::Conv(conv), "still here", None)
        .await
        .unwrap();
    assert_eq!(text(&next(&mut carol_in).await), "still here");
    nothing(&mut bob_in, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn plain_members_neither_add_nor_remove_leavers_stop_receiving_ownership_passes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    // Registration order is user id order: alice < bob < carol < dave.
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let dave = server.user(&admin, "dave").await;
    let mut alice_in = alice.subscribe().await.unwrap();
    let mut bob_in = bob.subscribe().await.unwrap();
    let mut carol_in = carol.subscribe().await.unwrap();
    let mut dave_in = dave.subscribe().await.unwrap();

    let conv = alice.group_create("club", &["bob", "carol"]).await.unwrap();
    assert_eq!(next(&mut bob_in).await.seq, 1);
    assert_eq!(next(&mut carol_in).await.seq, 1);

    // A member who is not the owner cannot remove anyone.
    assert_eq!(
        refused(bob.group_remove(conv, "carol").await),
        ErrorCode::Forbidden
    );
    let names = |m: quince::protocol::Members| -> Vec<(String, bool)> {
        m.members.into_iter().map(|m| (m.user, m.owner)).collect()
    };
    assert_eq!(
        names(alice.group_members(conv).await.unwrap()),
        [
            ("alice".into(), true),
            ("bob".into(), false),
            ("carol".into(), false)
        ]
    );

    // Nor add: that takes the owner or an admin.
    assert_eq!(
        refused(bob.group_add(conv, "dave").await),
        ErrorCode::Forbidden
    );
    alice.group_add(conv, "dave").await.unwrap();
    for inbox in [&mut bob_in, &mut carol_in, &mut dave_in] {
        let m = next(inbox).await;
        assert_eq!((m.seq, m.from.as_str()), (2, "alice"));
        assert_eq!(
            m.body,
            Body::MemberAdded {
                user: "dave".into()
            }
        );
    }
    // Adding a current member again changes nothing.
    alice.group_add(conv, "dave").await.unwrap();
    assert_eq!(
        alice
            .history(conv, None, None, 10)
            .await
            .unwrap()
            .messages
            .len(),
        2
    );

    // Leaving: the others see it, the leaver gets nothing more.
    carol.group_leave(conv).await.unwrap();
    for inbox in [&mut alice_in, &mut bob_in, &mut dave_in] {
        let m = next(inbox).await;
        assert_eq!((m.seq, m.from.as_str()), (3, "carol"));
        assert_eq!(
            m.body,
            Body::MemberLeft {
                user: "carol".into()
            }
        );
    }
    alice
        .send(Target::Conv(conv), "carol is gone", None)
        .await
        .unwrap();
    for inbox in [&mut bob_in, &mut dave_in] {
        let m = next(inbox).await;
        assert_eq!((m.seq, text(&m)), (4, "carol is gone"));
    }
    nothing(&mut carol_in, Duration::from_millis(300)).await;
    assert_eq!(
        refused(carol.group_members(conv).await),
        ErrorCode::Forbidden
    );
    let sent = carol.send(Target::Conv(conv), "wait", None).await;
    assert_eq!(refused(sent), ErrorCode::Forbidden);
    let carols = carol.history(conv, None, None, 100).await.unwrap();
    assert_eq!(seqs(&carols.messages), [1, 2, 3]);

    // The owner leaves: the remaining member with the oldest account (bob) owns it.
    alice.group_leave(conv).await.unwrap();
    for inbox in [&mut bob_in, &mut dave_in] {
        let m = next(inbox).await;
        assert_eq!(
            m.body,
            Body::MemberLeft {
                user: "alice".into()
            }
        );
        assert_eq!(m.seq, 5);
    }
    assert_eq!(
        names(dave.group_members(conv).await.unwrap()),
        [("bob".into(), true), ("dave".into(), false)]
    );
    // The new owner can remove; the former owner can do nothing any more.
    assert_eq!(
        refused(alice.group_remove(conv, "dave").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(dave.group_remove(conv, "bob").await),
        ErrorCode::Forbidden
    );
    bob.group_remove(conv, "dave").await.unwrap();
    let m = next(&mut dave_in).await;
    assert_eq!(
        m.body,
        Body::MemberRemoved {
            user: "dave".into()
        }
    );
    assert_eq!(
        names(bob.group_members(conv).await.unwrap()),
        [("bob".into(), true)]
    );
    nothing(&mut alice_in, Duration::from_millis(200)).await;
    nothing(&mut carol_in, Duration::from_millis(10)).await;
}

#[tokio::test]
async fn membership_changes_are_history_events_and_late_joiners_see_no_earlier_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let dave = server.user(&admin, "dave").await;

    let conv = alice.group_create("book club", &["bob"]).await.unwrap();
    alice
        .send(Target::Conv(conv), "secret before carol", None)
        .await
        .unwrap();
    alice.group_add(conv, "carol").await.unwrap();
    carol
        .send(Target::Conv(conv), "hi all", None)
        .await
        .unwrap();
    alice.group_remove(conv, "bob").await.unwrap();
    carol.group_leave(conv).await.unwrap();
    alice.group_add(conv, "dave").await.unwrap();

    let page = alice.history(conv, Some(0), None, 100).await.unwrap();
    assert!(!page.more);
    let got: Vec<(u64, &str, &Body)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.from.as_str(), &m.body))
        .collect();
    let text_body = |t: &str| Body::text(t);
    let expected = [
        (
            1,
            "alice",
            Body::GroupCreated {
                name: "book club".into(),
            },
        ),
        (2, "alice", text_body("secret before carol")),
        (
            3,
            "alice",
            Body::MemberAdded {
                user: "carol".into(),
            },
        ),
        (4, "carol", text_body("hi all")),
        (5, "alice", Body::MemberRemoved { user: "bob".into() }),
        (
            6,
            "carol",
            Body::MemberLeft {
                user: "carol".into(),
            },
        ),
        (
            7,
            "alice",
            Body::MemberAdded {
                user: "dave".into(),
            },
        ),
    ];
    let expected: Vec<(u64, &str, &Body)> = expected.iter().map(|(s, f, b)| (*s, *f, b)).collect();
    assert_eq!(got, expected);
    for m in &page.messages {
        let is_event = !matches!(m.body, Body::Text { .. });
        assert_eq!(m.mid.as_slice() == [0u8; 16], is_event, "mid of {m:?}");
        assert_eq!(m.conv, conv);
    }

    // Carol reads from her own addition to her leaving, from either direction.
    let carols = carol.history(conv, Some(0), None, 100).await.unwrap();
    assert_eq!(seqs(&carols.messages), [3, 4, 5, 6]);
    assert_eq!(
        carols.messages[0].body,
        Body::MemberAdded {
            user: "carol".into()
        }
    );
    let carols = carol.history(conv, None, None, 100).await.unwrap();
    assert_eq!(seqs(&carols.messages), [3, 4, 5, 6]);
    assert!(!carols.more);
    let older = carol.history(conv, None, Some(3), 100).await.unwrap();
    assert!(older.messages.is_empty() && !older.more);
    // Dave sees nothing before his own addition; bob up to his removal.
    let daves = dave.history(conv, Some(0), None, 100).await.unwrap();
    assert_eq!(seqs(&daves.messages), [7]);
    assert_eq!(
        daves.messages[0].body,
        Body::MemberAdded {
            user: "dave".into()
        }
    );
    let summary = dave.conversations().await.unwrap().conversations;
    assert_eq!(summary.len(), 1);
    assert_eq!(
        (summary[0].last_seq, summary[0].cursor, summary[0].member),
        (7, 6, true)
    );
    let bobs = bob.history(conv, None, None, 100).await.unwrap();
    assert_eq!(seqs(&bobs.messages), [1, 2, 3, 4, 5]);

    // A late joiner subscribing gets exactly their range, starting with their addition.
    let mut dave_in = dave.subscribe().await.unwrap();
    let m = next(&mut dave_in).await;
    assert_eq!(m.seq, 7);
    alice
        .send(Target::Conv(conv), "welcome", None)
        .await
        .unwrap();
    let m = next(&mut dave_in).await;
    assert_eq!((m.seq, text(&m)), (8, "welcome"));
    nothing(&mut dave_in, Duration::from_millis(200)).await;

    // Added again, carol's range starts anew: her earlier range is gone.
    alice.group_add(conv, "carol").await.unwrap();
    let carols = carol.history(conv, Some(0), None, 100).await.unwrap();
    assert_eq!(seqs(&carols.messages), [9]);
    assert_eq!(
        carols.messages[0].body,
        Body::MemberAdded {
            user: "carol".into()
        }
    );
}

#[tokio::test]
async fn conversations_lists_direct_and_group_conversations_with_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;

    assert!(
        alice
            .conversations()
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
    let direct_ab = alice
        .send(Target::User("bob".into()), "one", None)
        .await
        .unwrap()
        .conv;
    alice
        .send(Target::User("bob".into()), "two", None)
        .await
        .unwrap();
    bob.send(Target::User("alice".into()), "three", None)
        .await
        .unwrap();
    let group = alice.group_create("g", &["bob", "carol"]).await.unwrap();
    alice.send(Target::Conv(group), "to g", None).await.unwrap();
    let direct_ac = carol
        .send(Target::User("alice".into()), "hi alice", None)
        .await
        .unwrap()
        .conv;
    assert!(direct_ab < group && group < direct_ac);

    assert_eq!(
        rows(&alice).await,
        [
            (direct_ab, ConvKind::Direct, "bob".to_string(), 3, true),
            (group, ConvKind::Group, "g".to_string(), 2, true),
            (direct_ac, ConvKind::Direct, "carol".to_string(), 1, true),
        ]
    );
    assert_eq!(
        rows(&bob).await,
        [
            (direct_ab, ConvKind::Direct, "alice".to_string(), 3, true),
            (group, ConvKind::Group, "g".to_string(), 2, true),
        ]
    );
    assert_eq!(
        rows(&carol).await,
        [
            (group, ConvKind::Group, "g".to_string(), 2, true),
            (direct_ac, ConvKind::Direct, "alice".to_string(), 1, true),
        ]
    );

    // Cursors: alice's device is past its own messages, not past others'.
    let cursors: Vec<(u64, u64)> = alice
        .conversations()
        .await
        .unwrap()
        .conversations
        .iter()
        .map(|c| (c.conv, c.cursor))
        .collect();
    assert_eq!(cursors, [(direct_ab, 2), (group, 2), (direct_ac, 0)]);
    let unread: Vec<u64> = alice
        .sync()
        .await
        .unwrap()
        .conversations
        .iter()
        .map(|c| c.conv)
        .collect();
    assert_eq!(unread, [direct_ab, direct_ac]);

    // Leaving keeps the group listed, as a former membership.
    carol.group_leave(group).await.unwrap();
    alice
        .send(Target::Conv(group), "after carol", None)
        .await
        .unwrap();
    let carols = carol.conversations().await.unwrap().conversations;
    let g = carols.iter().find(|c| c.conv == group).unwrap();
    assert_eq!((g.last_seq, g.member), (3, false));
    let g = alice
        .conversations()
        .await
        .unwrap()
        .conversations
        .into_iter()
        .find(|c| c.conv == group)
        .unwrap();
    assert_eq!((g.last_seq, g.member), (4, true));
}

/// A client's conversation list as (conv, kind, name, last seq, member) rows.
async fn rows(client: &quince::client::Client) -> Vec<(u64, ConvKind, String, u64, bool)> {
    client
        .conversations()
        .await
        .unwrap()
        .conversations
        .iter()
        .map(|c| (c.conv, c.kind, c.name.clone(), c.last_seq, c.member))
        .collect()
}

#[tokio::test]
async fn owner_and_admins_manage_the_group_and_nobody_removes_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let dave = server.user(&admin, "dave").await;
    let erin = server.user(&admin, "erin").await;
    let mut erin_in = erin.subscribe().await.unwrap();
    let conv = alice
        .group_create("club", &["bob", "carol", "dave"])
        .await
        .unwrap();
    let roles = |m: quince::protocol::Members| -> Vec<(String, GroupRole)> {
        m.members.into_iter().map(|m| (m.user, m.role)).collect()
    };

    // Plain members manage nothing.
    assert_eq!(
        refused(bob.group_add(conv, "erin").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(bob.group_remove(conv, "carol").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(bob.group_rename(conv, "bob's club").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(bob.group_promote(conv, "bob").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(bob.group_remove(conv, "alice").await),
        ErrorCode::Forbidden
    );

    // The owner makes Bob and Dave admins; everyone sees it in the history.
    alice.group_promote(conv, "bob").await.unwrap();
    alice.group_promote(conv, "dave").await.unwrap();
    assert_eq!(
        roles(carol.group_members(conv).await.unwrap()),
        [
            ("alice".into(), GroupRole::Owner),
            ("bob".into(), GroupRole::Admin),
            ("carol".into(), GroupRole::Member),
            ("dave".into(), GroupRole::Admin),
        ]
    );
    let page = carol.history(conv, None, None, 10).await.unwrap();
    assert_eq!(
        page.messages.last().unwrap().body,
        Body::RoleChanged {
            user: "dave".into(),
            role: GroupRole::Admin
        }
    );
    // An admin adds and removes members, but not other admins, nor the owner;
    // renaming and roles stay the owner's.
    bob.group_add(conv, "erin").await.unwrap();
    let m = next(&mut erin_in).await;
    assert_eq!(
        (m.from.as_str(), m.body),
        (
            "bob",
            Body::MemberAdded {
                user: "erin".into()
            }
        )
    );
    bob.group_remove(conv, "carol").await.unwrap();
    assert_eq!(
        next(&mut erin_in).await.body,
        Body::MemberRemoved {
            user: "carol".into()
        }
    );
    assert_eq!(
        refused(bob.group_remove(conv, "dave").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(bob.group_remove(conv, "alice").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(erin.group_remove(conv, "alice").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(bob.group_rename(conv, "bob's club").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(bob.group_demote(conv, "dave").await),
        ErrorCode::Forbidden
    );

    // The owner renames: an event, and the new name in every list.
    alice.group_rename(conv, "lunch club").await.unwrap();
    let m = next(&mut erin_in).await;
    assert_eq!(
        m.body,
        Body::GroupRenamed {
            name: "lunch club".into()
        }
    );
    let listed = erin.conversations().await.unwrap().conversations;
    assert_eq!(listed[0].name, "lunch club");

    // Ownership moves to Dave; Alice stays as an admin and has lost the rest.
    alice.group_transfer(conv, "dave").await.unwrap();
    let m = next(&mut erin_in).await;
    assert_eq!(
        (m.from.as_str(), m.body),
        (
            "alice",
            Body::OwnerChanged {
                user: "dave".into()
            }
        )
    );
    assert_eq!(
        roles(erin.group_members(conv).await.unwrap()),
        [
            ("alice".into(), GroupRole::Admin),
            ("bob".into(), GroupRole::Admin),
            ("dave".into(), GroupRole::Owner),
            ("erin".into(), GroupRole::Member),
        ]
    );
    assert_eq!(
        refused(alice.group_rename(conv, "mine again").await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(alice.group_remove(conv, "dave").await),
        ErrorCode::Forbidden
    );
    // The new owner demotes Bob, who can then add nobody; and removes Alice.
    dave.group_demote(conv, "bob").await.unwrap();
    assert_eq!(
        refused(bob.group_add(conv, "carol").await),
        ErrorCode::Forbidden
    );
    dave.group_remove(conv, "alice").await.unwrap();
    // Only current members can be promoted or handed the group.
    assert_eq!(
        refused(dave.group_transfer(conv, "carol").await),
        ErrorCode::NotFound
    );

    // When an owner leaves, an admin inherits before older plain members.
    dave.group_promote(conv, "erin").await.unwrap();
    dave.group_leave(conv).await.unwrap();
    assert_eq!(
        roles(bob.group_members(conv).await.unwrap()),
        [
            ("bob".into(), GroupRole::Member),
            ("erin".into(), GroupRole::Owner),
        ]
    );
}

/// Group roles from the command line, between real users.
#[tokio::test]
async fn the_command_line_manages_roles_renames_and_hands_groups_over() {
    use common::cli::CliUser;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let users: Vec<CliUser> = ["alice", "bob", "carol"]
        .into_iter()
        .map(CliUser::new)
        .collect();
    for user in &users {
        let invite = admin.admin_invite(Role::Member, None).await.unwrap();
        user.register(&server, &invite.token);
    }
    let [alice, bob, carol] = &users[..] else {
        unreachable!()
    };
    let created = alice.ok(&["group", "create", "club", "bob"]);
    let conv = created.trim().rsplit(' ').next().unwrap().to_string();
    assert!(!bob.fails(&["group", "add", &conv, "carol"]).is_empty());
    alice.ok(&["group", "promote", &conv, "bob"]);
    bob.ok(&["group", "add", &conv, "carol"]);
    alice.ok(&["group", "rename", &conv, "lunch club"]);
    let members = carol.ok(&["group", "members", &conv]);
    assert_eq!(
        members, "lunch club:\n  alice (owner)\n  bob (admin)\n  carol\n",
        "{members}"
    );
    assert!(!bob.fails(&["group", "remove", &conv, "alice"]).is_empty());
    alice.ok(&["group", "transfer", &conv, "carol"]);
    let members = bob.ok(&["group", "members", &conv]);
    assert!(members.contains("alice (admin)") && members.contains("carol (owner)"));
    carol.ok(&["group", "demote", &conv, "bob"]);
    let history = bob.ok(&["history", "--group", &conv]);
    for line in [
        "alice made bob admin",
        "you added carol",
        "alice renamed the group to lunch club",
        "alice handed the group to carol",
        "carol made bob member",
    ] {
        assert!(history.contains(line), "{line:?} in {history}");
    }
}
