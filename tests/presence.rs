//! Presence and typing indicators, over real QUIC against the real server:
//! aggregate state over a user's devices, who hears about it (contacts only),
//! new contacts told each other's state, last seen kept across restarts,
//! typing to the other members only and not stored, the config switches, and
//! the command line.
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use quince::protocol::{ErrorCode, Event, PresenceInfo, PresenceState, Target, TypingNotice};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

/// The next presence or typing event (other events are skipped).
async fn next_event(events: &mut broadcast::Receiver<Event>) -> Event {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("an event within 10 s")
            .expect("event channel open");
        if matches!(event, Event::Presence(_) | Event::Typing(_)) {
            return event;
        }
    }
}

async fn next_presence(events: &mut broadcast::Receiver<Event>) -> PresenceInfo {
    match next_event(events).await {
        Event::Presence(p) => p,
        other => panic!("expected a presence event, got {other:?}"),
    }
}

/// The next typing event (presence events, such as new contacts being
/// introduced, are skipped).
async fn next_typing(events: &mut broadcast::Receiver<Event>) -> TypingNotice {
    loop {
        if let Event::Typing(t) = next_event(events).await {
            return t;
        }
    }
}

/// The next `n` presence events as (user, state), sorted by user: for events
/// that have no defined order between them (those of one membership change).
async fn presences(
    events: &mut broadcast::Receiver<Event>,
    n: usize,
) -> Vec<(String, PresenceState)> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = next_presence(events).await;
        got.push((p.user, p.state));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    got
}

fn pairs(list: &[(&str, PresenceState)]) -> Vec<(String, PresenceState)> {
    list.iter().map(|(u, s)| (u.to_string(), *s)).collect()
}

/// Asserts that no presence or typing event is queued now.
fn none_queued(events: &mut broadcast::Receiver<Event>, who: &str) {
    while let Ok(event) = events.try_recv() {
        if matches!(event, Event::Presence(_) | Event::Typing(_)) {
            panic!("{who} got an unexpected event: {event:?}");
        }
    }
}

fn state(p: &PresenceInfo) -> (&str, PresenceState) {
    (p.user.as_str(), p.state)
}

/// Asserts that the next presence event says `user` is `expected`.
async fn hears(events: &mut broadcast::Receiver<Event>, user: &str, expected: PresenceState) {
    let p = next_presence(events).await;
    assert_eq!(state(&p), (user, expected), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_every_device_of_a_contact() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    alice
        .send(Target::User("bob".into()), "hi bob", None)
        .await
        .unwrap();
    let mut seen = alice.events();
    let _inbox = alice.subscribe().await.unwrap();
    let mut stranger = carol.events();
    let _carol_inbox = carol.subscribe().await.unwrap();

    // The first message made them contacts: alice was told bob is online.
    hears(&mut seen, "bob", PresenceState::Online).await;

    // Bob's only device leaves: offline, with when.
    bob.close().await;
    let p = next_presence(&mut seen).await;
    assert_eq!(state(&p), ("bob", PresenceState::Offline));
    let left = p.last_seen.expect("last_seen once bob has left");

    // Bob logs in: online.
    let laptop = server.login("bob", "laptop").await;
    let p = next_presence(&mut seen).await;
    assert_eq!(state(&p), ("bob", PresenceState::Online));
    assert_eq!(p.last_seen, None);

    // A second device changes nothing; one of two going away changes nothing
    // either (the next event alice hears is the one after both are away).
    let phone = server.login("bob", "phone").await;
    laptop.set_presence(PresenceState::Away).await.unwrap();
    let listed = alice.presence().await.unwrap().users;
    assert_eq!(listed.len(), 1, "only bob is alice's contact: {listed:?}");
    assert_eq!(state(&listed[0]), ("bob", PresenceState::Online));
    phone.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut seen, "bob", PresenceState::Away).await;
    assert_eq!(
        state(&alice.presence().await.unwrap().users[0]),
        ("bob", PresenceState::Away)
    );
    phone.set_presence(PresenceState::Online).await.unwrap();
    hears(&mut seen, "bob", PresenceState::Online).await;
    // `offline` is what disconnecting is; a device cannot claim it.
    assert_eq!(
        refused(phone.set_presence(PresenceState::Offline).await),
        ErrorCode::BadRequest
    );

    // The online device leaves: the away one remains, so bob is away; then
    // the last one leaves and bob is offline again, seen later than before.
    phone.close().await;
    hears(&mut seen, "bob", PresenceState::Away).await;
    laptop.close().await;
    let p = next_presence(&mut seen).await;
    assert_eq!(state(&p), ("bob", PresenceState::Offline));
    assert!(p.last_seen.expect("last_seen") >= left);
    let listed = alice.presence().await.unwrap().users;
    assert_eq!(listed, [p]);

    // Carol shares no conversation with bob or alice: no events, empty list.
    assert!(carol.presence().await.unwrap().users.is_empty());
    none_queued(&mut stranger, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_reconnect_is_not_announced() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    alice
        .send(Target::User("bob".into()), "hi bob", None)
        .await
        .unwrap();
    let mut seen = alice.events();
    let _inbox = alice.subscribe().await.unwrap();
    assert_eq!(
        state(&next_presence(&mut seen).await),
        ("bob", PresenceState::Online),
        "the first message introduced bob"
    );

    // Bob's app restarts: its connection goes and a new one comes at once.
    let left = std::time::Instant::now();
    bob.close().await;
    let again = server.login("bob", "phone").await;
    let quick = left.elapsed() < quince::presence::OFFLINE_GRACE / 2;
    again.set_presence(PresenceState::Away).await.unwrap();
    let mut p = next_presence(&mut seen).await;
    if !quick && p.state == PresenceState::Offline {
        // Too slow a machine to have beaten the grace time: then alice heard
        // offline and online first, and nothing else.
        p = next_presence(&mut seen).await;
        assert_eq!(state(&p), ("bob", PresenceState::Online));
        p = next_presence(&mut seen).await;
    }
    // Otherwise the first thing alice heard is bob going away.
    assert_eq!(state(&p), ("bob", PresenceState::Away));
}

/// Skips events until one says `user` is offline, and returns its `last_seen`.
async fn offline(events: &mut broadcast::Receiver<Event>, user: &str) -> u64 {
    loop {
        let p = next_presence(events).await;
        if p.user == user && p.state == PresenceState::Offline {
            return p.last_seen.expect("last_seen with offline");
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// "Last seen" is kept across restarts: it is recorded before contacts hear
/// that a user went offline (so a power cut right after keeps it), and at a
/// clean shutdown for users still connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_survives_a_power_cut_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let _carol = server.user(&admin, "carol").await;
    for peer in ["bob", "carol"] {
        alice
            .send(Target::User(peer.into()), "hi", None)
            .await
            .unwrap();
    }
    let mut seen = alice.events();
    let _inbox = alice.subscribe().await.unwrap();
    bob.close().await;
    let bob_left = offline(&mut seen, "bob").await;

    // The power goes the moment alice hears it; carol is still connected.
    let (data, addr) = server.kill9();
    let server = TestServer::start_on(&data, addr);
    let alice = server.login("alice", "laptop").await;
    let offline_since = |user: &str, at: Option<u64>| PresenceInfo {
        user: user.into(),
        state: PresenceState::Offline,
        last_seen: at,
    };
    assert_eq!(
        alice.presence().await.unwrap().users,
        [
            offline_since("bob", Some(bob_left)),
            offline_since("carol", None)
        ],
        "bob's time was recorded before alice heard it; carol was never seen leaving"
    );

    // Carol is connected when the server is stopped cleanly.
    let _carol = server.login("carol", "phone").await;
    let listed = alice.presence().await.unwrap().users;
    assert_eq!(state(&listed[1]), ("carol", PresenceState::Online));
    let before = now_ms();
    assert!(server.terminate().success());
    let after = now_ms();
    let server = TestServer::start_on(&data, addr);
    let alice = server.login("alice", "laptop").await;
    let listed = alice.presence().await.unwrap().users;
    assert_eq!(listed[0], offline_since("bob", Some(bob_left)));
    assert_eq!(state(&listed[1]), ("carol", PresenceState::Offline));
    let carol_left = listed[1].last_seen.expect("carol's shutdown time recorded");
    assert!(
        (before..=after).contains(&carol_left),
        "{before} <= {carol_left} <= {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_follow_group_membership() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let mut seen = alice.events();
    let _inbox = alice.subscribe().await.unwrap();
    // No shared conversation yet: nobody is listed.
    assert!(alice.presence().await.unwrap().users.is_empty());

    // A group makes bob and carol alice's contacts; alice is told they are online.
    let conv = alice.group_create("trio", &["bob", "carol"]).await.unwrap();
    assert_eq!(
        presences(&mut seen, 2).await,
        pairs(&[
            ("bob", PresenceState::Online),
            ("carol", PresenceState::Online)
        ])
    );
    bob.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut seen, "bob", PresenceState::Away).await;
    let names: Vec<String> = alice
        .presence()
        .await
        .unwrap()
        .users
        .into_iter()
        .map(|p| p.user)
        .collect();
    assert_eq!(names, ["bob", "carol"]);

    // Removed from the group, bob is no longer a contact: his change is not
    // heard (carol's, made after it, is the next event), and he is not listed.
    alice.group_remove(conv, "bob").await.unwrap();
    bob.set_presence(PresenceState::Online).await.unwrap();
    carol.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut seen, "carol", PresenceState::Away).await;
    let listed = alice.presence().await.unwrap().users;
    assert_eq!(listed.len(), 1);
    assert_eq!(state(&listed[0]), ("carol", PresenceState::Away));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_introduces_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let mut at_alice = alice.events();
    let _a = alice.subscribe().await.unwrap();
    let mut at_bob = bob.events();
    let mut bob_inbox = bob.subscribe().await.unwrap();
    let mut at_carol = carol.events();
    let _c = carol.subscribe().await.unwrap();
    assert!(alice.presence().await.unwrap().users.is_empty());

    // The first message makes them contacts: each is told the other is
    // online (before or after the message itself: their order is not defined).
    alice
        .send(Target::User("bob".into()), "hi bob", None)
        .await
        .unwrap();
    hears(&mut at_bob, "alice", PresenceState::Online).await;
    hears(&mut at_alice, "bob", PresenceState::Online).await;
    assert_eq!(text(&next(&mut bob_inbox).await), "hi bob");

    // Only the first message introduces: after a second one, the next thing
    // each hears is the other's own change.
    alice
        .send(Target::User("bob".into()), "again", None)
        .await
        .unwrap();
    assert_eq!(text(&next(&mut bob_inbox).await), "again");
    bob.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut at_alice, "bob", PresenceState::Away).await;
    alice.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut at_bob, "alice", PresenceState::Away).await;

    // Carol, no party to it, heard nothing of it: the first presence she
    // hears is alice's, when alice writes to her (alice is away by now).
    alice
        .send(Target::User("carol".into()), "hi carol", None)
        .await
        .unwrap();
    hears(&mut at_carol, "alice", PresenceState::Away).await;
    hears(&mut at_alice, "carol", PresenceState::Online).await;
    none_queued(&mut at_alice, "alice");
    none_queued(&mut at_bob, "bob");
    none_queued(&mut at_carol, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_to_a_group_and_the_members_are_introduced() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let mut at_alice = alice.events();
    let _a = alice.subscribe().await.unwrap();
    let mut at_bob = bob.events();
    let _b = bob.subscribe().await.unwrap();
    let mut at_carol = carol.events();
    let _c = carol.subscribe().await.unwrap();

    // A group of two introduces its members to each other.
    let conv = alice.group_create("pair", &["bob"]).await.unwrap();
    hears(&mut at_alice, "bob", PresenceState::Online).await;
    hears(&mut at_bob, "alice", PresenceState::Online).await;

    // Carol, away, is added: the members hear she is away, she hears they
    // are online.
    carol.set_presence(PresenceState::Away).await.unwrap();
    alice.group_add(conv, "carol").await.unwrap();
    hears(&mut at_alice, "carol", PresenceState::Away).await;
    hears(&mut at_bob, "carol", PresenceState::Away).await;
    assert_eq!(
        presences(&mut at_carol, 2).await,
        pairs(&[
            ("alice", PresenceState::Online),
            ("bob", PresenceState::Online)
        ])
    );
    // What was pushed is what `presence` says.
    let listed: Vec<_> = carol.presence().await.unwrap().users;
    let listed: Vec<_> = listed.iter().map(state).collect();
    assert_eq!(
        listed,
        [
            ("alice", PresenceState::Online),
            ("bob", PresenceState::Online)
        ]
    );

    // Each was introduced once: the next thing anyone hears is a change.
    carol.set_presence(PresenceState::Online).await.unwrap();
    hears(&mut at_alice, "carol", PresenceState::Online).await;
    hears(&mut at_bob, "carol", PresenceState::Online).await;
    bob.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut at_carol, "bob", PresenceState::Away).await;
    hears(&mut at_alice, "bob", PresenceState::Away).await;

    // Leaving makes no new contacts: nothing is pushed (the next thing
    // alice hears is bob's change after it).
    carol.group_leave(conv).await.unwrap();
    bob.set_presence(PresenceState::Online).await.unwrap();
    hears(&mut at_alice, "bob", PresenceState::Online).await;
    none_queued(&mut at_alice, "alice");
    none_queued(&mut at_bob, "bob");
    none_queued(&mut at_carol, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_added_is_announced_to_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let dave = server.user(&admin, "dave").await;
    let mut at_admin = admin.events();
    let _d = admin.subscribe().await.unwrap();
    let mut at_alice = alice.events();
    let _a = alice.subscribe().await.unwrap();
    let mut at_bob = bob.events();
    let _b = bob.subscribe().await.unwrap();

    // Dave leaves; once the admin, his contact, hears he is offline, his
    // contacts were told and he is offline for good.
    admin
        .send(Target::User("dave".into()), "welcome", None)
        .await
        .unwrap();
    hears(&mut at_admin, "dave", PresenceState::Online).await;
    dave.close().await;
    hears(&mut at_admin, "dave", PresenceState::Offline).await;

    let conv = alice.group_create("pair", &["bob"]).await.unwrap();
    hears(&mut at_alice, "bob", PresenceState::Online).await;
    hears(&mut at_bob, "alice", PresenceState::Online).await;

    // Dave is added while offline: nobody hears of it. Events to a device
    // keep their order, so the next thing alice and bob hear is each
    // other's change after it, not dave.
    alice.group_add(conv, "dave").await.unwrap();
    bob.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut at_alice, "bob", PresenceState::Away).await;
    alice.set_presence(PresenceState::Away).await.unwrap();
    hears(&mut at_bob, "alice", PresenceState::Away).await;
    none_queued(&mut at_admin, "admin");

    // Dave is their contact all the same: listed offline, and his return is
    // announced like any change.
    let listed = alice.presence().await.unwrap().users;
    let listed: Vec<_> = listed.iter().map(state).collect();
    assert_eq!(
        listed,
        [
            ("bob", PresenceState::Away),
            ("dave", PresenceState::Offline)
        ]
    );
    let _phone = server.login("dave", "phone").await;
    hears(&mut at_alice, "dave", PresenceState::Online).await;
    hears(&mut at_bob, "dave", PresenceState::Online).await;
    none_queued(&mut at_alice, "alice");
    none_queued(&mut at_bob, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_just_after_leaving_is_online_until_the_grace_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let dave = server.user(&admin, "dave").await;
    let mut at_alice = alice.events();
    let _a = alice.subscribe().await.unwrap();
    let conv = alice.group_create("solo", &[]).await.unwrap();

    // Dave's last device leaves and he is added at once: his other contacts
    // (none here) would still think him online, so alice is told that too,
    // and hears he is offline when the grace ends, like everyone else.
    let left = std::time::Instant::now();
    dave.close().await;
    alice.group_add(conv, "dave").await.unwrap();
    if left.elapsed() < quince::presence::OFFLINE_GRACE / 2 {
        hears(&mut at_alice, "dave", PresenceState::Online).await;
        let p = next_presence(&mut at_alice).await;
        assert_eq!(state(&p), ("dave", PresenceState::Offline));
        assert!(p.last_seen.is_some());
    }
    // (A machine too slow to add him within the grace announces nothing.)
    let listed = alice.presence().await.unwrap().users;
    assert_eq!(listed.len(), 1);
    assert_eq!(state(&listed[0]), ("dave", PresenceState::Offline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_other_members_only_and_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let bob_phone = server.login("bob", "phone").await;
    let conv = alice
        .send(Target::User("bob".into()), "hi bob", None)
        .await
        .unwrap()
        .conv;
    let mut at_alice = alice.events();
    let _a = alice.subscribe().await.unwrap();
    let mut at_phone = bob_phone.events();
    let _p = bob_phone.subscribe().await.unwrap();
    let mut at_carol = carol.events();
    let _c = carol.subscribe().await.unwrap();
    let before = alice.history(conv, None, None, 50).await.unwrap();

    // Bob types: alice hears it. A repeat within a second is answered but not
    // passed on: the next thing alice hears is bob stopping. (On a machine
    // so loaded that the repeat came over a second later, it is passed on.)
    let started = std::time::Instant::now();
    bob.typing(conv, true).await.unwrap();
    bob.typing(conv, true).await.unwrap();
    let repeat_in_window = started.elapsed() < Duration::from_millis(900);
    bob.typing(conv, false).await.unwrap();
    let t = next_typing(&mut at_alice).await;
    assert_eq!((t.conv, t.user.as_str(), t.active), (conv, "bob", true));
    let mut t = next_typing(&mut at_alice).await;
    if !repeat_in_window && t.active {
        t = next_typing(&mut at_alice).await;
    }
    assert_eq!((t.conv, t.user.as_str(), t.active), (conv, "bob", false));

    // Bob's other device heard none of that: the first typing it gets is alice's.
    alice.typing(conv, true).await.unwrap();
    let t = next_typing(&mut at_phone).await;
    assert_eq!((t.conv, t.user.as_str(), t.active), (conv, "alice", true));

    // Not a member: refused, checked by the server.
    assert_eq!(
        refused(carol.typing(conv, true).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(carol.typing(999_999, true).await),
        ErrorCode::Forbidden
    );

    // Conversations that do not exist yet are refused too, and that answer is
    // not remembered: once a group gets one of those ids, its members may type.
    for unborn in conv + 1..conv + 4 {
        assert_eq!(
            refused(carol.typing(unborn, true).await),
            ErrorCode::Forbidden
        );
    }

    // A member who left a group may no longer type in it.
    let group = alice.group_create("g", &["bob", "carol"]).await.unwrap();
    assert!((conv + 1..conv + 4).contains(&group));
    carol.typing(group, true).await.unwrap();
    let t = next_typing(&mut at_alice).await;
    assert_eq!((t.conv, t.user.as_str()), (group, "carol"));
    carol.group_leave(group).await.unwrap();
    assert_eq!(
        refused(carol.typing(group, false).await),
        ErrorCode::Forbidden
    );

    // Nothing was stored: the direct conversation's history is unchanged.
    let after = alice.history(conv, None, None, 50).await.unwrap();
    assert_eq!(after.messages, before.messages);
    let listed = alice.conversations().await.unwrap().conversations;
    let direct = listed.iter().find(|c| c.conv == conv).unwrap();
    assert_eq!(direct.last_seq, 1);

    // Carol, no contact of bob's until the group, heard no typing about bob:
    // her first typing event is alice typing in a conversation they now
    // share. The group and that conversation introduced alice and bob to her.
    let with_carol = alice
        .send(Target::User("carol".into()), "hi carol", None)
        .await
        .unwrap()
        .conv;
    alice.typing(with_carol, true).await.unwrap();
    loop {
        match next_event(&mut at_carol).await {
            Event::Typing(t) if t.conv == with_carol => {
                assert_eq!(t.user, "alice");
                break;
            }
            Event::Typing(t) if t.conv == group => {} // her own group, before she left
            Event::Presence(p)
                if p.state == PresenceState::Online && ["alice", "bob"].contains(&&*p.user) => {}
            other => panic!("carol heard something not meant for her: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_presence_and_typing_are_refused_and_silent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_configured(dir.path(), "presence = false\ntyping = false\n");
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let conv = alice
        .send(Target::User("bob".into()), "hi", None)
        .await
        .unwrap()
        .conv;
    let mut seen = alice.events();
    let mut inbox = alice.subscribe().await.unwrap();

    assert_eq!(
        refused(bob.set_presence(PresenceState::Away).await),
        ErrorCode::Disabled
    );
    assert_eq!(refused(alice.presence().await), ErrorCode::Disabled);
    assert_eq!(refused(bob.typing(conv, true).await), ErrorCode::Disabled);
    // Devices come and go without a word to alice: the message bob sends
    // afterwards arrives with no presence event before it.
    let phone = server.login("bob", "phone").await;
    phone.close().await;
    bob.send(Target::Conv(conv), "still here", None)
        .await
        .unwrap();
    let m = next(&mut inbox).await;
    assert_eq!(text(&m), "still here");
    none_queued(&mut seen, "alice");
}

/// Runs the `quince` command line as `profile`, with its own home.
fn quince(home: &Path, profile: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_quince"))
        .env("QUINCE_HOME", home)
        .env("QUINCE_PASSWORD", password(profile))
        .args(["--profile", profile])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run quince");
    assert!(
        out.status.success(),
        "quince {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_presence_typing_and_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let _carol = server.user(&admin, "carol").await;
    let conv = alice
        .send(Target::User("bob".into()), "hi bob", None)
        .await
        .unwrap()
        .conv;
    let mut at_alice = alice.events();
    let _inbox = alice.subscribe().await.unwrap();
    bob.set_presence(PresenceState::Away).await.unwrap();

    let home = dir.path().join("home");
    let addr = server.addr.to_string();
    for user in ["alice", "bob"] {
        let login = [
            "login",
            "--server",
            &addr,
            "--fingerprint",
            &server.fingerprint,
            user,
        ];
        tokio::task::block_in_place(|| quince(&home, user, &login));
    }

    // `quince presence`: alice's one contact, bob, is away (carol is not listed).
    tokio::task::block_in_place(|| {
        let out = quince(&home, "alice", &["presence"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "bob  away\n");
    });

    // `quince typing alice` (and --stop), as bob.
    tokio::task::block_in_place(|| quince(&home, "bob", &["typing", "alice"]));
    let t = loop {
        if let Event::Typing(t) = next_event(&mut at_alice).await {
            break t;
        }
    };
    assert_eq!((t.conv, t.user.as_str(), t.active), (conv, "bob", true));
    tokio::task::block_in_place(|| quince(&home, "bob", &["typing", "alice", "--stop"]));
    let t = loop {
        if let Event::Typing(t) = next_event(&mut at_alice).await {
            break t;
        }
    };
    assert_eq!((t.conv, t.user.as_str(), t.active), (conv, "bob", false));

    // `quince chat bob` shows where bob is, his typing and his changes, on stderr.
    let mut chat = Command::new(env!("CARGO_BIN_EXE_quince"))
        .env("QUINCE_HOME", &home)
        .args(["--profile", "alice", "chat", "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quince chat");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = chat.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |wanted: &str| {
        tokio::task::block_in_place(|| {
            loop {
                match rx.recv_timeout(WAIT) {
                    Ok(line) if line == wanted => return,
                    Ok(_) => {}
                    Err(e) => panic!("quince chat never printed {wanted:?} ({e})"),
                }
            }
        })
    };
    wait_for("(bob is away)");
    bob.typing(conv, true).await.unwrap();
    wait_for("(bob is typing…)");
    bob.set_presence(PresenceState::Online).await.unwrap();
    wait_for("(bob is online)");
    drop(chat.stdin.take());
    let status = tokio::task::block_in_place(|| chat.wait()).unwrap();
    assert!(status.success());
}
