//! Attachments over real QUIC against the real server binary: upload, send,
//! download, deduplication, resumption (after a dropped connection and a
//! server restart), authorisation, limits, bad uploads, garbage collection,
//! and the `quince send-file` / `quince fetch` commands.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use quince::client::{Client, ClientError, Draft, TransferError, new_mid};
use quince::protocol::{AttachmentRef, Body, ErrorCode, Message, Target};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn partials(server: &TestServer) -> Vec<PathBuf> {
    files_under(&server.dir.join("attachments/partial"))
}

fn blobs(server: &TestServer) -> Vec<PathBuf> {
    files_under(&server.dir.join("attachments/blobs"))
}

/// Waits up to 30 s for `cond` (background work on a loaded machine).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `upload_finish`, asked again while the server says `incomplete` (the
/// stream's last bytes may still be on their way), for up to 30 s.
async fn finish(client: &Client, upload: u64) -> Result<quince::protocol::Uploaded, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = client.upload_finish(upload).await;
        match &result {
            Err(e) if e.code() == Some(ErrorCode::Incomplete) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return result,
        }
    }
}

fn transfer_code<T: std::fmt::Debug>(result: Result<T, TransferError>) -> ErrorCode {
    let err = result.expect_err("the server should refuse this");
    err.code()
        .unwrap_or_else(|| panic!("expected a server error, got {err}"))
}

/// Writes `bytes` to `dir/name` and returns the path.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn send_attachment(
    from: &Client,
    to: Target,
    id: &str,
    name: &str,
    text: &str,
) -> Result<quince::protocol::SendAck, ClientError> {
    let draft = Draft {
        text: text.into(),
        attachment: Some(AttachmentRef {
            id: id.into(),
            name: name.into(),
            mime: Some("application/octet-stream".into()),
        }),
        ..Draft::default()
    };
    from.send_draft(to, new_mid(), draft).await
}

fn attachment_of(m: &Message) -> &quince::protocol::Attachment {
    match &m.body {
        Body::Text {
            attachment: Some(a),
            ..
        } => a,
        other => panic!("no attachment in {other:?}"),
    }
}

#[tokio::test]
async fn a_file_sent_by_one_user_is_fetched_identical_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let mut inbox = bob.subscribe().await.unwrap();

    let bytes = content(700_000, 1);
    let path = file(work.path(), "report.pdf", &bytes);
    let mut seen = Vec::new();
    let uploaded = alice
        .upload(&path, |done, total| seen.push((done, total)))
        .await
        .unwrap();
    assert_eq!(uploaded.id, sha256(&bytes));
    assert_eq!(uploaded.size, bytes.len() as u64);
    assert_eq!(seen.last(), Some(&(700_000, 700_000)));
    assert!(partials(&server).is_empty());
    assert_eq!(blobs(&server).len(), 1);

    // A message may be just the file, without text.
    send_attachment(
        &alice,
        Target::User("bob".into()),
        &uploaded.id,
        "report.pdf",
        "",
    )
    .await
    .unwrap();
    let m = next(&mut inbox).await;
    let a = attachment_of(&m);
    assert_eq!(
        (a.id.as_str(), a.name.as_str()),
        (uploaded.id.as_str(), "report.pdf")
    );
    assert_eq!(a.size, 700_000, "the server fills in the size it knows");
    assert_eq!(text(&m), "");

    let dest = work.path().join("got.pdf");
    let size = bob.download(&a.id, &dest, |_, _| {}).await.unwrap();
    assert_eq!(size, 700_000);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!quince::client::part_path(&dest).exists());

    // A download broken off half way resumes from the .part file.
    let again = work.path().join("again.pdf");
    std::fs::write(quince::client::part_path(&again), &bytes[..300_000]).unwrap();
    let mut first = None;
    bob.download(&a.id, &again, |done, _| {
        first.get_or_insert(done);
    })
    .await
    .unwrap();
    assert_eq!(
        first,
        Some(300_000),
        "the download resumed at the .part's length"
    );
    assert_eq!(std::fs::read(&again).unwrap(), bytes);

    // Bad names and media types are refused.
    for (name, mime) in [
        ("a/b", None),
        ("", None),
        ("x\n", None),
        ("ok", Some("m".repeat(128))),
    ] {
        let draft = Draft {
            attachment: Some(AttachmentRef {
                id: uploaded.id.clone(),
                name: name.into(),
                mime,
            }),
            ..Draft::default()
        };
        let sent = alice
            .send_draft(Target::User("bob".into()), new_mid(), draft)
            .await;
        assert_eq!(refused(sent), ErrorCode::BadRequest, "name {name:?}");
    }
}

#[tokio::test]
async fn the_same_content_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let bytes = content(200_000, 2);
    let a = alice
        .upload(&file(work.path(), "a.bin", &bytes), |_, _| {})
        .await
        .unwrap();
    let b = bob
        .upload(&file(work.path(), "b.bin", &bytes), |_, _| {})
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    let stored = blobs(&server);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), bytes);
    assert!(partials(&server).is_empty());
    // Each may send it: both uploaded it.
    send_attachment(
        &bob,
        Target::User("alice".into()),
        &b.id,
        "b.bin",
        "mine too",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_upload_resumes_after_a_dropped_connection_and_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let bytes = content(1_000_000, 3);
    let path = file(work.path(), "big.bin", &bytes);
    let sha = sha256(&bytes);

    // Part of the file, then the connection is gone.
    let slot = alice.upload_begin(bytes.len() as u64, &sha).await.unwrap();
    assert_eq!(slot.received, 0);
    alice
        .upload_stream(slot.upload, 0, &bytes[..400_000], |_| {})
        .await
        .unwrap();
    let mut received = 0;
    for _ in 0..1500 {
        received = alice
            .upload_begin(bytes.len() as u64, &sha)
            .await
            .unwrap()
            .received;
        if received == 400_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(received, 400_000);
    alice.close().await;

    // A new connection: the same upload, and the server's count.
    let again = server.connect().await;
    again
        .login("alice", &password("alice"), "phone")
        .await
        .unwrap();
    let resumed = again.upload_begin(bytes.len() as u64, &sha).await.unwrap();
    assert_eq!(resumed.upload, slot.upload);
    assert_eq!(resumed.received, 400_000);
    // Finishing too early says how far the server got.
    let early = again.upload_finish(slot.upload).await;
    let err = early.expect_err("incomplete");
    assert_eq!(err.code(), Some(ErrorCode::Incomplete));
    assert!(err.to_string().contains("400000"), "{err}");
    // Sending from the wrong offset is refused and changes nothing.
    let wrong = again
        .upload_stream(slot.upload, 0, &bytes[..], |_| {})
        .await;
    assert!(matches!(wrong, Err(TransferError::Stopped(_))), "{wrong:?}");
    again.close().await;

    // The server restarts (killed, no clean shutdown): the upload survives.
    let (data, listen) = server.kill9();
    let server = TestServer::start_on(&data, listen);
    let third = server.connect().await;
    third
        .login("alice", &password("alice"), "laptop")
        .await
        .unwrap();
    let mut first = None;
    let done = third
        .upload(&path, |done, _| {
            first.get_or_insert(done);
        })
        .await
        .unwrap();
    assert_eq!(
        first,
        Some(400_000),
        "the upload went on where the server was"
    );
    assert_eq!(done.id, sha);
    let stored = blobs(&server);
    assert_eq!(stored.len(), 1);
    assert_eq!(std::fs::read(&stored[0]).unwrap(), bytes);
    assert!(partials(&server).is_empty());
    // And it is a whole, usable file.
    send_attachment(&third, Target::User("bob".into()), &done.id, "big.bin", "")
        .await
        .unwrap();
    let dest = work.path().join("back.bin");
    third.download(&done.id, &dest, |_, _| {}).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

#[tokio::test]
async fn only_those_who_can_read_the_message_can_download() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let carol = server.user(&admin, "carol").await;
    let bytes = content(50_000, 4);
    let up = alice
        .upload(&file(work.path(), "plan.txt", &bytes), |_, _| {})
        .await
        .unwrap();
    let dest = |name: &str| work.path().join(name);

    // Before it is sent, only the uploader may fetch (or send) it.
    alice
        .download(&up.id, &dest("a0"), |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        transfer_code(bob.download(&up.id, &dest("b0"), |_, _| {}).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(send_attachment(&bob, Target::User("carol".into()), &up.id, "x", "").await),
        ErrorCode::NotFound
    );

    send_attachment(&alice, Target::User("bob".into()), &up.id, "plan.txt", "")
        .await
        .unwrap();
    bob.download(&up.id, &dest("b1"), |_, _| {}).await.unwrap();
    assert_eq!(std::fs::read(dest("b1")).unwrap(), bytes);
    // Carol is in no conversation with it: the same answer as an unknown id.
    let not_hers = transfer_code(carol.download(&up.id, &dest("c1"), |_, _| {}).await);
    let unknown = transfer_code(
        carol
            .download(&"0".repeat(64), &dest("c2"), |_, _| {})
            .await,
    );
    assert_eq!(
        (not_hers, unknown),
        (ErrorCode::NotFound, ErrorCode::NotFound)
    );
    assert!(!dest("c1").exists() && !quince::client::part_path(&dest("c1")).exists());

    // Bob, who can read it, may forward it; Carol then can download it.
    send_attachment(&bob, Target::User("carol".into()), &up.id, "fwd.txt", "fyi")
        .await
        .unwrap();
    carol
        .download(&up.id, &dest("c3"), |_, _| {})
        .await
        .unwrap();

    // In a group, a member who joined after the message cannot fetch it.
    let dave = server.user(&admin, "dave").await;
    let other = content(10_000, 5);
    let up2 = alice
        .upload(&file(work.path(), "g.bin", &other), |_, _| {})
        .await
        .unwrap();
    let conv = alice.group_create("g", &["bob"]).await.unwrap();
    send_attachment(&alice, Target::Conv(conv), &up2.id, "g.bin", "")
        .await
        .unwrap();
    alice.group_add(conv, "dave").await.unwrap();
    bob.download(&up2.id, &dest("b2"), |_, _| {}).await.unwrap();
    assert_eq!(
        transfer_code(dave.download(&up2.id, &dest("d2"), |_, _| {}).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn recalling_the_message_deletes_its_file_and_deleting_the_conversation_ends_access() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let dest = |name: &str| work.path().join(name);

    // Deleting the conversation from one's view ends one's access to its files.
    let kept = content(20_000, 7);
    let up = alice
        .upload(&file(work.path(), "kept.bin", &kept), |_, _| {})
        .await
        .unwrap();
    let ack = send_attachment(&alice, Target::User("bob".into()), &up.id, "kept.bin", "")
        .await
        .unwrap();
    bob.download(&up.id, &dest("b0"), |_, _| {}).await.unwrap();
    bob.delete_conversation(ack.conv).await.unwrap();
    assert_eq!(
        transfer_code(bob.download(&up.id, &dest("b1"), |_, _| {}).await),
        ErrorCode::NotFound
    );
    alice
        .download(&up.id, &dest("a1"), |_, _| {})
        .await
        .unwrap();

    // A recalled message takes its file with it, from the disk too.
    let gone = content(30_000, 8);
    let up = alice
        .upload(&file(work.path(), "oops.bin", &gone), |_, _| {})
        .await
        .unwrap();
    let ack = send_attachment(&alice, Target::User("bob".into()), &up.id, "oops.bin", "")
        .await
        .unwrap();
    assert_eq!(blobs(&server).len(), 2);
    bob.download(&up.id, &dest("b2"), |_, _| {}).await.unwrap();
    alice.recall(ack.conv, ack.seq).await.unwrap();
    for who in [&alice, &bob] {
        assert_eq!(
            transfer_code(who.download(&up.id, &dest("x"), |_, _| {}).await),
            ErrorCode::NotFound
        );
    }
    let gone_id = up.id.clone();
    eventually("the recalled file is deleted", || {
        let left = blobs(&server);
        left.len() == 1 && !left.iter().any(|p| p.ends_with(&gone_id))
    })
    .await;
    // The other file is untouched.
    alice
        .download(
            &up.id.replace(&up.id, &sha256(&kept)),
            &dest("a2"),
            |_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest("a2")).unwrap(), kept);
}

#[tokio::test]
async fn a_file_over_the_size_limit_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start_configured(dir.path(), "[attachments]\nmax_mb = 1\n");
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bytes = content(1024 * 1024 + 1, 6);
    let result = alice
        .upload(&file(work.path(), "big", &bytes), |_, _| {})
        .await;
    let err = result.expect_err("too large");
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    assert!(err.to_string().contains("1.0 MiB"), "{err}");
    assert!(partials(&server).is_empty() && blobs(&server).is_empty());
    // Exactly the limit is fine.
    alice
        .upload(&file(work.path(), "ok", &bytes[..1024 * 1024]), |_, _| {})
        .await
        .unwrap();
}

#[tokio::test]
async fn an_upload_over_the_quota_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_configured(dir.path(), "[attachments]\nmax_mb = 1\nquota_mb = 1\n");
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let first = content(600_000, 7);
    alice
        .upload(&file(work.path(), "one", &first), |_, _| {})
        .await
        .unwrap();
    let second = content(600_000, 8);
    let over = alice
        .upload(&file(work.path(), "two", &second), |_, _| {})
        .await;
    assert_eq!(transfer_code(over), ErrorCode::QuotaExceeded);
    assert!(partials(&server).is_empty());
    assert_eq!(blobs(&server).len(), 1);
    // An upload in progress counts too.
    let slot = bob.upload_begin(600_000, &sha256(&first)).await.unwrap();
    assert_eq!(
        refused(bob.upload_begin(600_000, &sha256(&second)).await),
        ErrorCode::QuotaExceeded
    );
    // The quota is per user: Bob has his own.
    bob.upload_stream(slot.upload, 0, &first[..], |_| {})
        .await
        .unwrap();
    let done = finish(&bob, slot.upload).await;
    assert_eq!(done.unwrap().id, sha256(&first));
}

#[tokio::test]
async fn a_wrong_checksum_or_too_many_bytes_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let bytes = content(100_000, 9);

    assert_eq!(
        refused(alice.upload_begin(10, "not hex").await),
        ErrorCode::BadRequest
    );

    // Bytes that do not match the announced SHA-256.
    let claimed = sha256(b"something else");
    let slot = alice
        .upload_begin(bytes.len() as u64, &claimed)
        .await
        .unwrap();
    // Someone else cannot write to or finish it.
    // (Streams larger than the server's receive window, so that the refusal
    // reaches the sender before all of it is sent.)
    let big = content(1_000_000, 11);
    let intruder = bob.upload_stream(slot.upload, 0, &big[..], |_| {}).await;
    assert!(
        matches!(intruder, Err(TransferError::Stopped(_))),
        "{intruder:?}"
    );
    assert_eq!(
        refused(bob.upload_finish(slot.upload).await),
        ErrorCode::NotFound
    );
    alice
        .upload_stream(slot.upload, 0, &bytes[..], |_| {})
        .await
        .unwrap();
    let finished = finish(&alice, slot.upload).await;
    let err = finished.expect_err("checksum mismatch");
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    assert!(err.to_string().contains(&sha256(&bytes)), "{err}");
    assert!(partials(&server).is_empty() && blobs(&server).is_empty());
    assert_eq!(
        refused(alice.upload_finish(slot.upload).await),
        ErrorCode::NotFound
    );

    // More bytes than announced: the stream is stopped, the upload deleted.
    let small = &bytes[..1000];
    let slot = alice.upload_begin(1000, &sha256(small)).await.unwrap();
    let _ = alice
        .upload_stream(slot.upload, 0, &bytes[..], |_| {})
        .await;
    eventually("the oversized upload is deleted", || {
        partials(&server).is_empty()
    })
    .await;
    let gone = finish(&alice, slot.upload).await;
    assert_eq!(refused(gone), ErrorCode::NotFound);
    assert!(partials(&server).is_empty() && blobs(&server).is_empty());
    // A new begin starts from zero.
    let fresh = alice.upload_begin(1000, &sha256(small)).await.unwrap();
    assert_eq!(fresh.received, 0);
}

#[tokio::test]
async fn unsent_files_and_idle_uploads_expire_and_free_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // 0.002 hours is 7.2 s: long enough to send what was just uploaded.
    let server = TestServer::start_configured(
        dir.path(),
        "[attachments]\nmax_mb = 1\nquota_mb = 1\nunsent_hours = 0.002\n",
    );
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let sent = content(400_000, 21);
    let sent_id = alice
        .upload(&file(work.path(), "sent", &sent), |_, _| {})
        .await
        .unwrap()
        .id;
    send_attachment(&alice, Target::User("bob".into()), &sent_id, "sent", "kept")
        .await
        .unwrap();
    let unsent = content(400_000, 22);
    let unsent_id = alice
        .upload(&file(work.path(), "unsent", &unsent), |_, _| {})
        .await
        .unwrap()
        .id;
    // An upload that got half its bytes and then nothing more.
    let idle = content(200_000, 23);
    let slot = alice
        .upload_begin(idle.len() as u64, &sha256(&idle))
        .await
        .unwrap();
    alice
        .upload_stream(slot.upload, 0, &idle[..100_000], |_| {})
        .await
        .unwrap();
    // 400 + 400 + 200 KB of the 1 MiB quota are in use.
    let more = content(300_000, 24);
    let more_path = file(work.path(), "more", &more);
    assert_eq!(
        transfer_code(alice.upload(&more_path, |_, _| {}).await),
        ErrorCode::QuotaExceeded
    );
    assert_eq!(blobs(&server).len(), 2);

    // The unsent file and the idle upload go; the sent file stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    while blobs(&server).len() != 1 || !partials(&server).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not collected: {:?} {:?}",
            blobs(&server),
            partials(&server)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(blobs(&server)[0].ends_with(&sent_id));
    assert_eq!(
        refused(
            send_attachment(
                &alice,
                Target::User("bob".into()),
                &unsent_id,
                "unsent",
                "late"
            )
            .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(alice.upload_finish(slot.upload).await),
        ErrorCode::NotFound
    );
    let fetched = work.path().join("fetched");
    bob.download(&sent_id, &fetched, |_, _| {}).await.unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), sent);
    // Their quota is free again.
    assert_eq!(
        alice.upload(&more_path, |_, _| {}).await.unwrap().id,
        sha256(&more)
    );
}

#[tokio::test]
async fn files_without_a_record_are_collected_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    // (An account, so the restarted server has no invite left to print.)
    let _admin = server.admin().await;
    let (data, listen) = server.kill9();
    let stray_blob = data.join("attachments/blobs/ab").join("ab".repeat(32));
    std::fs::create_dir_all(stray_blob.parent().unwrap()).unwrap();
    std::fs::write(&stray_blob, b"nobody's").unwrap();
    let stray_partial = data.join("attachments/partial/4242");
    std::fs::write(&stray_partial, b"half").unwrap();
    let _server = TestServer::start_on(&data, listen);
    eventually("stray files are deleted", || {
        !stray_blob.exists() && !stray_partial.exists()
    })
    .await;
}

/// Runs the `quince` command line with its own home.
fn quince(home: &Path, password: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quince"))
        .args(args)
        .env("QUINCE_HOME", home)
        .env("QUINCE_PASSWORD", password)
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

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_sends_and_fetches_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let admin = server.admin().await;
    let _alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let addr = server.addr.to_string();
    for name in ["alice", "bob"] {
        let out = quince(
            home.path(),
            &password(name),
            &[
                "--profile",
                name,
                "login",
                "--server",
                &addr,
                "--fingerprint",
                &server.fingerprint,
                name,
            ],
        );
        ok(&out);
    }
    let bytes = content(1_500_000, 10);
    let src = file(work.path(), "holiday photo.jpg", &bytes);
    let home_path = home.path().to_path_buf();
    let src_arg = src.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        quince(
            &home_path,
            "",
            &[
                "--profile",
                "alice",
                "send-file",
                "bob",
                &src_arg,
                "--text",
                "look",
            ],
        )
    })
    .await
    .unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("sent"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MiB (100%)"), "progress line: {stderr}");

    let home_path = home.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        quince(&home_path, "", &["--profile", "bob", "history", "alice"])
    })
    .await
    .unwrap();
    let history = ok(&out);
    let id = sha256(&bytes);
    assert!(
        history.contains(&format!(
            "alice: [file holiday photo.jpg, 1.4 MiB, id {id}] look"
        )),
        "{history}"
    );

    let dest = work.path().join("fetched.jpg");
    let (home_path, dest_arg) = (
        home.path().to_path_buf(),
        dest.to_str().unwrap().to_string(),
    );
    let out = tokio::task::spawn_blocking(move || {
        quince(
            &home_path,
            "",
            &["--profile", "bob", "fetch", &id, &dest_arg],
        )
    })
    .await
    .unwrap();
    assert!(ok(&out).contains("saved"));
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}
