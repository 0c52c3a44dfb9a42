//! Security: certificate pinning, credentials and rate limiting, disabled and
//! revoked accounts, access to other people's conversations, the login
//! requirement, administrator rights, and malformed or oversized input.
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ciborium::Value;
use common::*;
use quince::client::{Client, ClientError, Trust};
use quince::protocol::{
    ErrorCode, MAX_EXT, MAX_FRAME, MAX_TEXT, Request, Role, Session, Target, close,
};
use serde_bytes::ByteBuf;
use tokio::task::JoinSet;

/// Registers a member and returns the client with its session (and token).
async fn register(server: &TestServer, admin: &Client, name: &str) -> (Client, Session) {
    let invite = admin.admin_invite(Role::Member, None).await.unwrap();
    let client = server.connect().await;
    let session = client
        .register(&invite.token, name, &password(name), "test")
        .await
        .expect("register");
    (client, session)
}

/// The application close code the server closed `client` with.
async fn close_code(client: &Client) -> u64 {
    let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .expect("the server closes the connection within 5 s");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// A frame: 4-byte big-endian length, then the CBOR of `value`.
fn frame(value: &Value) -> Vec<u8> {
    let mut body = Vec::new();
    ciborium::into_writer(value, &mut body).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// Writes raw bytes and waits for the reply with `id`. The reply is awaited
/// before the bytes go out, so it cannot arrive unclaimed.
async fn raw(client: &Client, id: u64, bytes: &[u8]) -> Result<Value, ClientError> {
    let (reply, sent) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), client.expect_reply(id)),
        client.send_raw(bytes)
    );
    sent.expect("write to the control stream");
    reply.expect("a reply within 5 s")
}

// ---------------------------------------------------------------------------
// Certificate pinning

#[tokio::test]
async fn pinned_client_refuses_a_different_certificate() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start(dir_a.path());
    let b = TestServer::start(dir_b.path());
    assert_ne!(a.fingerprint, b.fingerprint);
    assert_eq!(a.fingerprint.len(), 64);

    match Client::connect(b.addr, Trust::Pinned(a.fingerprint.clone())).await {
        Err(ClientError::FingerprintChanged { expected, got }) => {
            assert_eq!(expected, a.fingerprint);
            assert_eq!(got, b.fingerprint);
        }
        Err(other) => panic!("expected FingerprintChanged, got {other}"),
        Ok(_) => panic!("a client pinned to server A connected to server B"),
    }
    // A made-up pin is refused the same way.
    let bogus = "00".repeat(32);
    assert!(matches!(
        Client::connect(b.addr, Trust::Pinned(bogus)).await,
        Err(ClientError::FingerprintChanged { .. })
    ));
    // The right pin (in any case) connects; first use reports the same fingerprint.
    let ok = Client::connect(b.addr, Trust::Pinned(b.fingerprint.to_uppercase()))
        .await
        .unwrap_or_else(|e| panic!("the right pin must connect: {e}"));
    ok.ping().await.unwrap();
    assert_eq!(ok.fingerprint(), b.fingerprint);
    let first = Client::connect(a.addr, Trust::FirstUse)
        .await
        .unwrap_or_else(|e| panic!("first use connects: {e}"));
    assert_eq!(first.fingerprint(), a.fingerprint);
}

/// Runs the `quince` command line with its own home and the given password.
fn quince(home: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quince"))
        .args(args)
        .env("QUINCE_HOME", home)
        .env("QUINCE_PASSWORD", password("alice"))
        .env_remove("QUINCE_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quince");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait for quince").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("quince {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("quince output")
}

#[test]
fn cli_refuses_a_server_whose_certificate_changed() {
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let home = tempfile::tempdir().unwrap();
    let first = TestServer::start(dir1.path());
    let old_fingerprint = first.fingerprint.clone();
    let invite = first.admin_invite.clone().unwrap();
    let addr = first.addr.to_string();

    let out = quince(
        home.path(),
        &[
            "--profile",
            "p",
            "register",
            "--server",
            &addr,
            "--invite",
            &invite,
            "alice",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "register failed: {stderr}");
    let known = home.path().join("known_servers.toml");
    assert!(
        std::fs::read_to_string(&known)
            .unwrap()
            .contains(&old_fingerprint)
    );
    let out = quince(home.path(), &["--profile", "p", "whoami"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("alice on {addr}")), "{stdout}");

    // Another server (another certificate) now answers on the same address.
    let (_, listen) = first.kill9();
    let second = TestServer::start_on(dir2.path(), listen);
    assert_eq!(second.addr, listen);
    assert_ne!(second.fingerprint, old_fingerprint);
    let out = quince(home.path(), &["--profile", "p", "whoami"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "whoami worked against a changed certificate"
    );
    assert!(stderr.contains("certificate changed"), "stderr: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("alice on"));
    // Logging in again does not silently trust the new certificate either.
    let out = quince(
        home.path(),
        &["--profile", "q", "login", "--server", &addr, "alice"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "login re-pinned a changed certificate"
    );
    assert!(stderr.contains("certificate changed"), "stderr: {stderr}");
    let pins = std::fs::read_to_string(&known).unwrap();
    assert!(pins.contains(&old_fingerprint) && !pins.contains(&second.fingerprint));
}

// ---------------------------------------------------------------------------
// Credentials

#[tokio::test]
async fn wrong_credentials_are_refused_and_repeated_failures_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let _alice = server.user(&admin, "alice").await;
    let _carol = server.user(&admin, "carol").await;
    let c = server.connect().await;

    let wrong = c.login("alice", "not-her-password", "x").await;
    let unknown = c.login("nobody", "whatever-password", "x").await;
    let wrong = wrong.expect_err("wrong password accepted");
    let unknown = unknown.expect_err("unknown user accepted");
    assert_eq!(wrong.code(), Some(ErrorCode::InvalidCredentials));
    assert_eq!(unknown.code(), Some(ErrorCode::InvalidCredentials));
    // The two are not told apart.
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert_eq!(refused(c.whoami().await), ErrorCode::NotAuthenticated);

    // Five failures for carol, then even her right password must wait.
    for i in 0..5 {
        let r = c.login("carol", &format!("guess-number-{i}"), "x").await;
        assert_eq!(refused(r), ErrorCode::InvalidCredentials, "attempt {i}");
    }
    let limited = c
        .login("carol", &password("carol"), "x")
        .await
        .expect_err("the sixth attempt is refused");
    let ClientError::Server {
        code,
        retry_after_ms,
        ..
    } = &limited
    else {
        panic!("expected a server error, got {limited}");
    };
    assert_eq!(*code, ErrorCode::RateLimited);
    let wait = retry_after_ms.expect("rate_limited carries retry_after_ms");
    assert!(wait > 0 && wait <= 1000, "retry_after_ms {wait}");
    assert_eq!(refused(c.whoami().await), ErrorCode::NotAuthenticated);
    // The limit is per account: alice still logs in from the same address.
    server
        .connect()
        .await
        .login("alice", &password("alice"), "y")
        .await
        .unwrap();
    // After the wait the right password works (the refused attempt did not count),
    // and success clears the failures.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    let s = c.login("carol", &password("carol"), "x").await.unwrap();
    assert_eq!(s.user, "carol");
    let again = server.connect().await;
    let r = again.login("carol", "one-more-guess", "x").await;
    assert_eq!(refused(r), ErrorCode::InvalidCredentials);
}

/// Failed logins racing each other get no more guesses than one after another.
/// (A throttle that is checked before the slow password check but counts the
/// failure only after it lets every parallel attempt through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failed_logins_are_rate_limited_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let _victim = server.user(&admin, "victim").await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(server.connect().await);
    }
    let mut set = JoinSet::new();
    for (i, c) in clients.iter().cloned().enumerate() {
        set.spawn(async move { c.login("victim", &format!("guess-{i}"), "x").await.err() });
    }
    let codes: Vec<Option<ErrorCode>> = set
        .join_all()
        .await
        .into_iter()
        .map(|e| e.and_then(|e| e.code()))
        .collect();
    let checked = codes
        .iter()
        .filter(|c| **c == Some(ErrorCode::InvalidCredentials))
        .count();
    let limited = codes
        .iter()
        .filter(|c| **c == Some(ErrorCode::RateLimited))
        .count();
    assert_eq!(checked + limited, 12, "{codes:?}");
    assert!(
        checked <= 5,
        "{checked} of 12 parallel guesses were checked against the password; at most 5 may be"
    );
}

/// Only failed logins count towards the per-address limit of 20: a household
/// behind one address can log in its devices as often as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_logins_do_not_count_as_failures() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let _alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    // One after another: concurrent attempts at one account count against it
    // while they are in flight (that is what stops parallel guessing).
    for i in 0..24 {
        let c = server.connect().await;
        let name = if i % 2 == 0 { "alice" } else { "bob" };
        let session = c.login(name, &password(name), &format!("device {i}")).await;
        assert_eq!(session.expect("a good login is never limited").user, name);
        c.close().await;
    }
    // A failure after all those successes is just one failure.
    let c = server.connect().await;
    let r = c.login("alice", "not-her-password", "x").await;
    assert_eq!(refused(r), ErrorCode::InvalidCredentials);
    c.login("alice", &password("alice"), "x").await.unwrap();
}

#[tokio::test]
async fn disabled_account_is_disconnected_and_refused_until_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let (bob, session) = register(&server, &admin, "bob").await;
    let token = session.token.expect("register returns a token");
    let mut bob_in = bob.subscribe().await.unwrap();

    assert_eq!(
        refused(admin.admin_disable("admin").await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(admin.admin_disable("nobody").await),
        ErrorCode::NotFound
    );
    admin.admin_disable("bob").await.unwrap();
    assert_eq!(close_code(&bob).await, 2);
    assert_eq!(close::ACCOUNT_DISABLED, 2);
    // His subscription ends with the connection.
    let end = tokio::time::timeout(Duration::from_secs(5), bob_in.recv()).await;
    assert!(matches!(end, Ok(None)), "subscription still open: {end:?}");
    // Others are not affected.
    alice.ping().await.unwrap();

    let c = server.connect().await;
    assert_eq!(
        refused(c.login("bob", &password("bob"), "x").await),
        ErrorCode::AccountDisabled
    );
    // A wrong password does not reveal that the account is disabled.
    assert_eq!(
        refused(c.login("bob", "not-bobs-password", "x").await),
        ErrorCode::InvalidCredentials
    );
    assert_eq!(refused(c.resume(&token).await), ErrorCode::AccountDisabled);
    assert_eq!(refused(c.whoami().await), ErrorCode::NotAuthenticated);
    let users = admin.admin_users().await.unwrap().users;
    let b = users.iter().find(|u| u.user == "bob").unwrap();
    assert!(b.disabled);
    // Messages can still be sent to him; he gets them once enabled.
    alice
        .send(Target::User("bob".into()), "while you were away", None)
        .await
        .unwrap();

    admin.admin_enable("bob").await.unwrap();
    let s = c.resume(&token).await.unwrap();
    assert_eq!((s.user.as_str(), s.device), ("bob", session.device));
    let page = c.sync().await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    let fresh = server.connect().await;
    fresh.login("bob", &password("bob"), "y").await.unwrap();
    let users = admin.admin_users().await.unwrap().users;
    assert!(!users.iter().find(|u| u.user == "bob").unwrap().disabled);
}

#[tokio::test]
async fn logout_revokes_the_token_and_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let (bob, first) = register(&server, &admin, "bob").await;
    let phone = server.connect().await;
    let session = phone.login("bob", &password("bob"), "phone").await.unwrap();
    let token = session.token.unwrap();
    // A second connection of the same device.
    let phone2 = server.connect().await;
    phone2.resume(&token).await.unwrap();

    phone.logout().await.unwrap();
    assert_eq!(close_code(&phone2).await, u64::from(close::DEVICE_REVOKED));
    assert_eq!(refused(phone.whoami().await), ErrorCode::NotAuthenticated);
    let sent = phone.send(Target::User("admin".into()), "hi", None).await;
    assert_eq!(refused(sent), ErrorCode::NotAuthenticated);
    assert_eq!(refused(phone.sync().await), ErrorCode::NotAuthenticated);
    assert_eq!(refused(phone.logout().await), ErrorCode::NotAuthenticated);
    let c = server.connect().await;
    assert_eq!(refused(c.resume(&token).await), ErrorCode::InvalidToken);
    assert_eq!(
        refused(c.resume("not-a-token-at-all").await),
        ErrorCode::InvalidToken
    );
    // Bob's other device is untouched.
    assert_eq!(bob.whoami().await.unwrap().device, first.device);
    c.resume(first.token.as_deref().unwrap()).await.unwrap();
    // The logged-out connection may log in again.
    let again = phone.login("bob", &password("bob"), "phone").await.unwrap();
    assert_ne!(again.device, session.device);
    assert_eq!(phone.whoami().await.unwrap().device, again.device);
}

#[tokio::test]
async fn password_reset_revokes_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let (bob, session) = register(&server, &admin, "bob").await;
    let token = session.token.unwrap();
    let laptop = server.connect().await;
    let laptop_token = laptop
        .login("bob", &password("bob"), "laptop")
        .await
        .unwrap()
        .token
        .unwrap();
    let devices = |users: quince::protocol::Users| {
        users
            .users
            .iter()
            .find(|u| u.user == "bob")
            .unwrap()
            .devices
    };
    assert_eq!(devices(admin.admin_users().await.unwrap()), 2);

    assert_eq!(
        refused(admin.admin_reset_password("bob", "short").await),
        ErrorCode::WeakPassword
    );
    assert_eq!(
        refused(admin.admin_reset_password("nobody", "long-enough-pw").await),
        ErrorCode::NotFound
    );
    bob.ping().await.unwrap();

    admin
        .admin_reset_password("bob", "brand-new-password")
        .await
        .unwrap();
    assert_eq!(close_code(&bob).await, u64::from(close::DEVICE_REVOKED));
    assert_eq!(close_code(&laptop).await, u64::from(close::DEVICE_REVOKED));
    let c = server.connect().await;
    assert_eq!(refused(c.resume(&token).await), ErrorCode::InvalidToken);
    assert_eq!(
        refused(c.resume(&laptop_token).await),
        ErrorCode::InvalidToken
    );
    assert_eq!(
        refused(c.login("bob", &password("bob"), "x").await),
        ErrorCode::InvalidCredentials
    );
    c.login("bob", "brand-new-password", "x").await.unwrap();
    assert_eq!(devices(admin.admin_users().await.unwrap()), 1);
}

// ---------------------------------------------------------------------------
// Authorisation

#[tokio::test]
async fn nobody_reads_or_writes_a_conversation_that_is_not_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let mut bob_in = bob.subscribe().await.unwrap();
    let conv = alice
        .send(Target::User("bob".into()), "just for bob", None)
        .await
        .unwrap()
        .conv;
    assert_eq!(text(&next(&mut bob_in).await), "just for bob");
    let group = alice.group_create("private", &["bob"]).await.unwrap();
    assert_eq!(next(&mut bob_in).await.conv, group);
    let missing = 999_999;

    for target in [conv, group, missing] {
        let what = format!("conversation {target}");
        let r = carol.history(target, None, None, 10).await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "history of {what}");
        let r = carol.history(target, Some(0), None, 10).await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "history of {what}");
        let r = carol.send(Target::Conv(target), "let me in", None).await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "send to {what}");
        let r = carol.ack(target, 1).await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "ack of {what}");
        let r = carol.group_members(target).await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "members of {what}");
        let r = carol.group_add(target, "carol").await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "add to {what}");
        let r = carol.group_remove(target, "bob").await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "remove from {what}");
        let r = carol.group_leave(target).await;
        assert_eq!(refused(r), ErrorCode::Forbidden, "leave {what}");
    }
    // A direct conversation is no group, even for its members.
    assert_eq!(
        refused(alice.group_add(conv, "carol").await),
        ErrorCode::Forbidden
    );
    // Nothing leaked and nothing changed.
    assert!(
        carol
            .conversations()
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
    nothing(&mut bob_in, Duration::from_millis(300)).await;
    assert_eq!(
        alice
            .history(conv, None, None, 10)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    assert_eq!(
        alice
            .history(group, None, None, 10)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    let members: Vec<String> = bob
        .group_members(group)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(members, ["alice", "bob"]);
}

#[tokio::test]
async fn login_is_required_once_and_admin_requests_need_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let (_bob, bob_session) = register(&server, &admin, "bob").await;

    let c = server.connect().await;
    c.ping().await.unwrap();
    let r = c
        .send(Target::User("admin".into()), "anonymous", None)
        .await;
    assert_eq!(refused(r), ErrorCode::NotAuthenticated);
    assert_eq!(refused(c.sync().await), ErrorCode::NotAuthenticated);
    let r = c.history(1, None, None, 10).await;
    assert_eq!(refused(r), ErrorCode::NotAuthenticated);
    assert_eq!(
        refused(c.conversations().await),
        ErrorCode::NotAuthenticated
    );
    assert_eq!(refused(c.whoami().await), ErrorCode::NotAuthenticated);
    assert_eq!(refused(c.ack(1, 1).await), ErrorCode::NotAuthenticated);
    assert_eq!(refused(c.logout().await), ErrorCode::NotAuthenticated);
    let r = c.group_create("g", &["bob"]).await;
    assert_eq!(refused(r), ErrorCode::NotAuthenticated);
    let r = c.admin_invite(Role::Admin, None).await;
    assert_eq!(refused(r), ErrorCode::NotAuthenticated);

    let session = c.login("bob", &password("bob"), "cli").await.unwrap();
    c.ping().await.unwrap();
    let r = c.login("bob", &password("bob"), "cli").await;
    assert_eq!(refused(r), ErrorCode::AlreadyAuthenticated);
    let r = c.login("admin", "admin-password", "cli").await;
    assert_eq!(refused(r), ErrorCode::AlreadyAuthenticated);
    let r = c.resume(bob_session.token.as_deref().unwrap()).await;
    assert_eq!(refused(r), ErrorCode::AlreadyAuthenticated);
    let invite = admin.admin_invite(Role::Member, None).await.unwrap();
    let r = c
        .register(&invite.token, "erin", &password("erin"), "cli")
        .await;
    assert_eq!(refused(r), ErrorCode::AlreadyAuthenticated);
    let me = c.whoami().await.unwrap();
    assert_eq!((me.user.as_str(), me.device), ("bob", session.device));

    // A member is no administrator.
    let forbidden = [
        refused(c.admin_invite(Role::Admin, None).await),
        refused(c.admin_invite(Role::Member, None).await),
        refused(c.admin_users().await),
        refused(c.admin_disable("admin").await),
        refused(c.admin_enable("bob").await),
        refused(c.admin_reset_password("admin", "taken-over-pw").await),
        refused(c.admin_status().await),
    ];
    assert!(
        forbidden.iter().all(|code| *code == ErrorCode::Forbidden),
        "{forbidden:?}"
    );
    // None of it had an effect: the admin is enabled and keeps the password,
    // and the unused invite still works.
    let users = admin.admin_users().await.unwrap().users;
    assert!(!users.iter().find(|u| u.user == "admin").unwrap().disabled);
    let check = server.connect().await;
    check
        .login("admin", "admin-password", "check")
        .await
        .unwrap();
    server
        .connect()
        .await
        .register(&invite.token, "erin", &password("erin"), "x")
        .await
        .unwrap();
    assert_eq!(admin.admin_status().await.unwrap().users, 3);
}

// ---------------------------------------------------------------------------
// Malformed and oversized input

#[tokio::test]
async fn malformed_frames_get_error_replies_and_the_connection_survives() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let _bob = server.user(&admin, "bob").await;

    // Not CBOR at all.
    let r = raw(&admin, 0, &[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    assert_eq!(refused(r), ErrorCode::BadFrame);
    admin.ping().await.unwrap();
    // CBOR, but not a map; a map without an op; an id that is not an unsigned integer.
    assert_eq!(
        refused(raw(&admin, 0, &frame(&Value::from(7u64))).await),
        ErrorCode::BadFrame
    );
    let no_op = frame(&map(&[("id", 50u64.into())]));
    assert_eq!(refused(raw(&admin, 0, &no_op).await), ErrorCode::BadFrame);
    let text_id = frame(&map(&[("id", "one".into()), ("op", "ping".into())]));
    assert_eq!(refused(raw(&admin, 0, &text_id).await), ErrorCode::BadFrame);
    // An op this server does not know: answered with the request's id.
    let unknown = frame(&map(&[("id", 1001u64.into()), ("op", "teleport".into())]));
    assert_eq!(
        refused(raw(&admin, 1001, &unknown).await),
        ErrorCode::UnknownRequest
    );
    // Known ops with wrong or missing fields.
    let wrong_type = frame(&map(&[
        ("id", 1002u64.into()),
        ("op", "history".into()),
        ("conv", "one".into()),
        ("limit", 10u64.into()),
    ]));
    assert_eq!(
        refused(raw(&admin, 1002, &wrong_type).await),
        ErrorCode::BadRequest
    );
    let missing = frame(&map(&[
        ("id", 1003u64.into()),
        ("op", "ack".into()),
        ("conv", 1u64.into()),
    ]));
    assert_eq!(
        refused(raw(&admin, 1003, &missing).await),
        ErrorCode::BadRequest
    );
    let short_mid = frame(&map(&[
        ("id", 1004u64.into()),
        ("op", "send".into()),
        ("user", "bob".into()),
        ("mid", Value::Bytes(vec![1, 2, 3])),
        ("text", "hi".into()),
    ]));
    assert_eq!(
        refused(raw(&admin, 1004, &short_mid).await),
        ErrorCode::BadRequest
    );
    let both_targets = admin
        .call::<quince::protocol::SendAck>(Request::Send {
            conv: Some(1),
            user: Some("bob".into()),
            mid: ByteBuf::from(vec![9u8; 16]),
            text: "hi".into(),
            ext: None,
            reply_to: None,
            attachment: None,
        })
        .await;
    assert_eq!(refused(both_targets), ErrorCode::BadRequest);
    let both_directions = admin.history(1, Some(1), Some(5), 10).await;
    assert_eq!(refused(both_directions), ErrorCode::BadRequest);
    // Unknown keys are ignored.
    let extra = frame(&map(&[
        ("id", 1005u64.into()),
        ("op", "ping".into()),
        ("future_field", true.into()),
    ]));
    raw(&admin, 1005, &extra).await.unwrap();

    // A frame of exactly the limit is read (and answered).
    let with_pad = |n: usize| {
        frame(&map(&[
            ("id", 1006u64.into()),
            ("op", "ping".into()),
            ("pad", Value::Bytes(vec![0xab; n])),
        ]))
    };
    let overhead = with_pad(100_000).len() - 4 - 100_000;
    let biggest = with_pad(MAX_FRAME - overhead);
    assert_eq!(biggest.len(), 4 + MAX_FRAME);
    raw(&admin, 1006, &biggest).await.unwrap();

    // Still the same, working, logged-in connection; nothing was stored.
    admin.ping().await.unwrap();
    assert_eq!(admin.whoami().await.unwrap().user, "admin");
    assert!(
        admin
            .conversations()
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let mut bob_in = bob.subscribe().await.unwrap();

    let offender = server.connect().await;
    offender.ping().await.unwrap();
    let len = (MAX_FRAME as u32 + 1).to_be_bytes();
    offender.send_raw(&len).await.unwrap();
    assert_eq!(
        close_code(&offender).await,
        u64::from(close::PROTOCOL_VIOLATION)
    );
    assert!(offender.ping().await.is_err());

    // Everyone else carries on.
    alice
        .send(Target::User("bob".into()), "still here?", None)
        .await
        .unwrap();
    assert_eq!(text(&next(&mut bob_in).await), "still here?");
    let newcomer = server.connect().await;
    newcomer
        .login("alice", &password("alice"), "new")
        .await
        .unwrap();
    newcomer
        .send(Target::User("bob".into()), "and me", None)
        .await
        .unwrap();
    assert_eq!(text(&next(&mut bob_in).await), "and me");
}

#[tokio::test]
async fn registration_input_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let _alice = server.user(&admin, "alice").await;
    let invite = admin.admin_invite(Role::Member, None).await.unwrap().token;
    let c = server.connect().await;

    for bad in [
        "Bad Name",
        "ab",
        "_alice",
        "Alice",
        "al!ce",
        &"a".repeat(33),
        "",
    ] {
        let r = c.register(&invite, bad, "good-password", "x").await;
        assert_eq!(refused(r), ErrorCode::InvalidUsername, "username {bad:?}");
    }
    for weak in ["", "1234567", &"p".repeat(1025)] {
        let r = c.register(&invite, "erin", weak, "x").await;
        assert_eq!(refused(r), ErrorCode::WeakPassword, "{} bytes", weak.len());
    }
    let r = c.register(&invite, "erin", "good-password", "").await;
    assert_eq!(refused(r), ErrorCode::BadRequest);
    let r = c.register(&invite, "alice", "good-password", "x").await;
    assert_eq!(refused(r), ErrorCode::UsernameTaken);
    let r = c
        .register("no-such-invite", "erin", "good-password", "x")
        .await;
    assert_eq!(refused(r), ErrorCode::InvalidInvite);
    assert_eq!(refused(c.whoami().await), ErrorCode::NotAuthenticated);

    // The refusals left the invite unused.
    let s = c
        .register(&invite, "erin", "good-password", "x")
        .await
        .unwrap();
    assert_eq!((s.user.as_str(), s.role), ("erin", Role::Member));
    let r = server
        .connect()
        .await
        .register(&invite, "frank", "good-password", "x")
        .await;
    assert_eq!(refused(r), ErrorCode::InvalidInvite);
    let users: Vec<String> = admin
        .admin_users()
        .await
        .unwrap()
        .users
        .into_iter()
        .map(|u| u.user)
        .collect();
    assert_eq!(users, ["admin", "alice", "erin"]);
}

#[tokio::test]
async fn message_size_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let bob = Target::User("bob".into());

    let r = alice
        .send(bob.clone(), &"x".repeat(MAX_TEXT + 1), None)
        .await;
    assert_eq!(refused(r), ErrorCode::TextTooLong);
    // The limit is in bytes, not characters.
    let r = alice
        .send(bob.clone(), &"é".repeat(MAX_TEXT / 2 + 1), None)
        .await;
    assert_eq!(refused(r), ErrorCode::TextTooLong);
    let r = alice
        .send(bob.clone(), "small", Some(vec![0; MAX_EXT + 1]))
        .await;
    assert_eq!(refused(r), ErrorCode::ExtTooLarge);
    // Nothing was stored, not even the direct conversation.
    assert!(
        alice
            .conversations()
            .await
            .unwrap()
            .conversations
            .is_empty()
    );

    let ack = alice
        .send(bob.clone(), &"x".repeat(MAX_TEXT), Some(vec![7; MAX_EXT]))
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
    let page = alice.history(ack.conv, None, None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(text(&page.messages[0]).len(), MAX_TEXT);
}
