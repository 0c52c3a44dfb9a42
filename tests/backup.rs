//! Backups against a real server on loopback with a real redb file: taken
//! under load, restored, encrypted, refused when damaged, admin only, and
//! scheduled from the config.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use quince::backup::{BackupError, SecretString};
use quince::client::{Client, Draft, new_mid};
use quince::protocol::{AttachmentRef, Body, ErrorCode, Target};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_quince");

fn quince(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run quince")
}

fn no_passphrase() -> std::io::Result<SecretString> {
    Err(std::io::Error::other("no passphrase expected"))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every text message of a conversation, by sequence number.
async fn all_texts(client: &Client, conv: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = client.history(conv, Some(after), None, 500).await.unwrap();
        for m in &page.messages {
            if let Body::Text { text, .. } = &m.body {
                out.push((m.seq, text.clone()));
            }
        }
        match page.messages.last() {
            Some(m) if page.more => after = m.seq,
            _ => return out,
        }
    }
}

/// Takes a backup through the client library into `dest`.
async fn backup_to(admin: &Client, dest: &Path, passphrase: Option<&str>) -> PathBuf {
    let download = admin.admin_backup().await.expect("admin_backup");
    let pass = passphrase.map(|s| SecretString::from(s.to_string()));
    quince::backup::save(download, dest, pass)
        .await
        .expect("save the backup")
}

#[tokio::test]
async fn backup_under_write_load_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;

    let acked: Arc<Mutex<Vec<(u64, u64, String)>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..4 {
        let (client, acked) = (alice.clone(), acked.clone());
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
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Everything acknowledged up to here must be in the backup.
    let before = acked.lock().unwrap().clone();
    let dest = dir.path().join("load.qbk");
    backup_to(&admin, &dest, None).await;
    let during = acked.lock().unwrap().len() - before.len();
    // The server kept taking writes while the backup ran, and after it.
    let after_backup = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < after_backup + 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    senders.shutdown().await;
    eprintln!(
        "{} messages acknowledged before the backup, {during} while it ran",
        before.len()
    );
    let fingerprint = server.fingerprint.clone();
    drop(server);

    // Restore with the real command into a fresh directory and serve it.
    let restored = dir.path().join("restored");
    let out = quince(&["restore", p(&dest), "--data-dir", p(&restored)]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = TestServer::start(&restored);
    assert_eq!(
        server.fingerprint, fingerprint,
        "a restored server must keep its certificate"
    );
    assert!(server.admin_invite.is_none(), "accounts came back");
    let bob = server.connect().await;
    bob.login("bob", &password("bob"), "check").await.unwrap();
    let stored = all_texts(&bob, before[0].0).await;
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    for (_, seq, text) in &before {
        assert_eq!(
            stored.get(*seq as usize - 1).map(|(_, t)| t.as_str()),
            Some(text.as_str()),
            "message #{seq} acknowledged before the backup is missing"
        );
    }
    // The admin's own device token works on the restored server too.
    let admin2 = server.connect().await;
    admin2
        .login("admin", "admin-password", "again")
        .await
        .unwrap();
    assert!(admin2.admin_users().await.unwrap().users.len() >= 3);
}

#[tokio::test]
async fn encrypted_backup_round_trip_and_wrong_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let conv = alice
        .send(Target::User("bob".into()), "secret plans", None)
        .await
        .unwrap()
        .conv;

    // The real client command, with a profile made by `quince login`.
    let home = dir.path().join("home");
    let login = Command::new(BIN)
        .env("QUINCE_HOME", &home)
        .env("QUINCE_PASSWORD", "admin-password")
        .args(["--profile", "adm", "login", "--server"])
        .arg(server.addr.to_string())
        .args(["--fingerprint", &server.fingerprint, "admin"])
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, "correct horse battery staple\n").unwrap();
    let dest = dir.path().join("enc.qbk");
    let backup = Command::new(BIN)
        .env("QUINCE_HOME", &home)
        .args(["--profile", "adm", "backup", p(&dest), "--passphrase-file"])
        .arg(&pass_file)
        .output()
        .unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    assert!(String::from_utf8_lossy(&backup.stdout).contains("encrypted"));
    let bytes = std::fs::read(&dest).unwrap();
    assert!(
        bytes.starts_with(b"age-encryption.org/v1"),
        "not an age file"
    );
    assert!(
        !bytes.windows(8).any(|w| w == quince::backup::MAGIC),
        "the plaintext container shows through"
    );
    assert!(
        !bytes.windows(12).any(|w| w == b"secret plans"),
        "a message shows through"
    );

    // A wrong passphrase is refused, and nothing is written.
    let target = dir.path().join("restored");
    let wrong = quince::backup::restore(&dest, &target, || {
        Ok(SecretString::from("wrong horse".to_string()))
    });
    assert!(
        matches!(wrong, Err(BackupError::WrongPassphrase)),
        "{wrong:?}"
    );
    assert!(!target.exists());
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "wrong horse\n").unwrap();
    let out = quince(&[
        "restore",
        p(&dest),
        "--data-dir",
        p(&target),
        "--passphrase-file",
        p(&wrong_file),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists());

    // The right one restores it.
    let out = quince(&[
        "restore",
        p(&dest),
        "--data-dir",
        p(&target),
        "--passphrase-file",
        p(&pass_file),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fingerprint = server.fingerprint.clone();
    drop(server);
    let server = TestServer::start(&target);
    assert_eq!(server.fingerprint, fingerprint);
    let bob = server.connect().await;
    bob.login("bob", &password("bob"), "check").await.unwrap();
    let page = bob.history(conv, None, None, 10).await.unwrap();
    assert_eq!(text(&page.messages[0]), "secret plans");
}

/// Runs `quince restore` and asserts it fails with `expect` in its message
/// and leaves `target` as it was (absent, or holding only `keep`).
fn refused(src: &Path, target: &Path, expect: &str) {
    let out = quince(&["restore", p(src), "--data-dir", p(target)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore of {src:?} succeeded");
    assert!(
        stderr.to_lowercase().contains(expect),
        "expected '{expect}' in: {stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
}

#[tokio::test]
async fn restore_refuses_damaged_foreign_and_non_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    let admin = server.admin().await;
    let good = backup_to(&admin, &dir.path().join("good.qbk"), None).await;
    let bytes = std::fs::read(&good).unwrap();
    let target = dir.path().join("target");

    // The good one restores (so the refusals below are about the damage).
    let ok_dir = dir.path().join("ok");
    quince::backup::restore(&good, &ok_dir, no_passphrase).unwrap();

    // One flipped byte in the middle: the checksum catches it.
    let mut flipped = bytes.clone();
    let at = bytes.len() / 2;
    flipped[at] ^= 0x01;
    let f = dir.path().join("flipped.qbk");
    std::fs::write(&f, &flipped).unwrap();
    refused(&f, &target, "checksum");
    assert!(!target.exists());

    // Cut short, in the database and in the checksum.
    for cut in [bytes.len() / 2, bytes.len() - 10] {
        let t = dir.path().join("truncated.qbk");
        std::fs::write(&t, &bytes[..cut]).unwrap();
        refused(&t, &target, "truncated");
        assert!(!target.exists());
    }

    // Trailing garbage.
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"more");
    let t = dir.path().join("longer.qbk");
    std::fs::write(&t, &longer).unwrap();
    refused(&t, &target, "after its checksum");

    // Foreign files: text, and a bare redb database.
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "dear diary\n").unwrap();
    refused(&text_file, &target, "not a quince backup");
    let redb_file = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&redb_file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, u64>::new("t"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
    }
    refused(&redb_file, &target, "not a quince backup");
    assert!(!target.exists());

    // A well-formed container (built from the documented format, with a
    // correct checksum) around a redb file that is not a quince store.
    let db = std::fs::read(&redb_file).unwrap();
    let mut c = Vec::new();
    c.extend_from_slice(b"QUINCEBK");
    c.extend_from_slice(&1u32.to_be_bytes());
    c.extend_from_slice(&0u64.to_be_bytes());
    c.extend_from_slice(&1u32.to_be_bytes());
    c.extend_from_slice(&0u32.to_be_bytes());
    c.extend_from_slice(&0u32.to_be_bytes());
    c.extend_from_slice(&(db.len() as u64).to_be_bytes());
    c.extend_from_slice(&db);
    let sum = Sha256::digest(&c);
    c.extend_from_slice(&sum);
    let wrapped = dir.path().join("wrapped.qbk");
    std::fs::write(&wrapped, &c).unwrap();
    refused(&wrapped, &target, "not a usable quince store");
    assert!(!target.exists());

    // A newer format version.
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&3u32.to_be_bytes());
    let n = dir.path().join("newer.qbk");
    std::fs::write(&n, &newer).unwrap();
    refused(&n, &target, "format version 3");

    // A version 1 backup (no attachment section) still restores: the same
    // file without its count of zero files, with its checksum redone.
    let end = bytes.len() - 32;
    assert_eq!(bytes[8..12], 2u32.to_be_bytes());
    assert_eq!(bytes[end - 8..end], [0u8; 8], "no files, so a count of 0");
    let mut v1 = bytes[..end - 8].to_vec();
    v1[8..12].copy_from_slice(&1u32.to_be_bytes());
    let sum = Sha256::digest(&v1);
    v1.extend_from_slice(&sum);
    let v1_file = dir.path().join("v1.qbk");
    std::fs::write(&v1_file, &v1).unwrap();
    let v1_dir = dir.path().join("from-v1");
    let restored = quince::backup::restore(&v1_file, &v1_dir, no_passphrase).unwrap();
    assert_eq!(restored.files, 0);
    assert!(v1_dir.join("quince.redb").exists());

    // A data directory that is not empty is refused and left alone.
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "mine").unwrap();
    refused(&good, &target, "not empty");
    let left: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(
        std::fs::read_to_string(target.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[tokio::test]
async fn members_may_not_back_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let err = alice.admin_backup().await.err().expect("a member's backup");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");

    // The member's refusal left nothing, and admins' backups one after the
    // other each get the server's one backup slot (it is freed after each).
    let one = backup_to(&admin, &dir.path().join("one.qbk"), None).await;
    let mut two = None;
    for _ in 0..100 {
        match admin.admin_backup().await {
            Ok(d) => {
                two = Some(d);
                break;
            }
            // The first one's stream may not be acknowledged yet.
            Err(e) if e.code() == Some(ErrorCode::Busy) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let two = quince::backup::save(
        two.expect("the slot frees up"),
        &dir.path().join("two.qbk"),
        None,
    )
    .await
    .unwrap();
    assert!(std::fs::metadata(one).unwrap().len() > 1000);
    assert!(std::fs::metadata(two).unwrap().len() > 1000);
    // Nothing of the snapshots is left in the data directory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leftovers: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backup-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| quince::backup::parse_file_name(n).is_some())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn scheduled_backups_keep_the_newest_and_report_failures() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    std::fs::write(backups.join("notes.txt"), "not ours").unwrap();
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, "scheduled secret\n").unwrap();
    // 0.0003 hours is about a second.
    let server = TestServer::start_configured(
        &dir.path().join("data"),
        &format!(
            "[backup]\ndir = {:?}\ninterval_hours = 0.0003\nkeep = 2\npassphrase_file = {:?}\n",
            p(&backups),
            p(&pass_file)
        ),
    );
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    alice
        .send(Target::User("bob".into()), "before the schedule", None)
        .await
        .unwrap();

    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen:?} in 60 s"
        );
        seen.extend(backups_in(&backups));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = admin.admin_status().await.unwrap();
    assert!(status.backup_last_success.is_some(), "{status:?}");
    assert!(status.backup_last_error.is_none(), "{status:?}");
    assert!(status.backup_next.is_some());
    // Pruning follows each rename at once; a look between the two may see 3.
    let mut left = backups_in(&backups);
    for _ in 0..200 {
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = backups_in(&backups);
    }
    assert_eq!(left.len(), 2, "keep = 2, found {left:?}");
    assert_eq!(
        std::fs::read_to_string(backups.join("notes.txt")).unwrap(),
        "not ours"
    );
    // Only finished files: no temporary names left but possibly the one in progress.
    let newest = backups.join(left.last().unwrap());
    assert!(
        std::fs::read(&newest)
            .unwrap()
            .starts_with(b"age-encryption.org/v1")
    );
    let restored = dir.path().join("restored");
    let r = quince::backup::restore(&newest, &restored, || {
        Ok(SecretString::from("scheduled secret".to_string()))
    })
    .unwrap();
    assert!(r.encrypted && r.identity);
    drop(server);
    let server = TestServer::start(&restored);
    let bob = server.connect().await;
    bob.login("bob", &password("bob"), "check").await.unwrap();
    let conv = bob.conversations().await.unwrap().conversations[0].conv;
    assert_eq!(all_texts(&bob, conv).await[0].1, "before the schedule");
    drop(server);

    // A backup directory that is not there (the stick is not plugged in):
    // the failure shows in admin status.
    let missing = dir.path().join("no-stick");
    let server = TestServer::start_configured(
        &dir.path().join("data2"),
        &format!(
            "[backup]\ndir = {:?}\ninterval_hours = 0.0003\n",
            p(&missing)
        ),
    );
    let admin = server.admin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = admin.admin_status().await.unwrap();
        if let Some(e) = status.backup_last_error {
            assert!(e.contains("does not exist"), "{e}");
            assert!(status.backup_last_success.is_none());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failure reported: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !missing.exists(),
        "the schedule must not create the directory"
    );
    drop(server);

    // A backup directory that cannot be written: a file where the directory
    // should be, and (when the test does not run as root, which may write
    // anywhere) a directory without write permission.
    let mut unwritable = vec![(dir.path().join("a-file"), "not a directory")];
    std::fs::write(&unwritable[0].0, "x").unwrap();
    // Root's files are owned by uid 0; root writes through any permission.
    let root =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&unwritable[0].0).unwrap()) == 0;
    if !root {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        unwritable.push((ro, "permission denied"));
    }
    for (i, (target, expect)) in unwritable.iter().enumerate() {
        let server = TestServer::start_configured(
            &dir.path().join(format!("data-unwritable-{i}")),
            &format!("[backup]\ndir = {:?}\ninterval_hours = 1\n", p(target)),
        );
        let admin = server.admin().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = admin.admin_status().await.unwrap();
            if let Some(e) = status.backup_last_error {
                assert!(e.to_lowercase().contains(expect), "{e}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failure for {target:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts a server whose `[backup]` writes hourly into `backups`.
fn hourly(dir: &Path, name: &str, backups: &Path) -> TestServer {
    TestServer::start_configured(
        &dir.join(name),
        &format!("[backup]\ndir = {:?}\ninterval_hours = 1\n", p(backups)),
    )
}

#[tokio::test]
async fn the_first_scheduled_backup_is_due_one_interval_after_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // The newest backup is from 2000: one is due at once, not in an hour.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("quince-20000101T000000Z.qbk"), "old").unwrap();
    let server = hourly(dir.path(), "a", &old);
    let admin = server.admin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // The file appears a moment before the outcome is recorded; wait for both.
    let status = loop {
        let status = admin.admin_status().await.unwrap();
        if status.backup_last_success.is_some() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "no backup at start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(backups_in(&old).len(), 2);
    let next = status.backup_next.unwrap() / 1000;
    assert!(next >= now + 3500, "next due {next}, now {now}");
    drop(server);

    // The newest backup is from now: the next is due in an hour, not at start.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let name = quince::backup::file_name(now);
    std::fs::write(fresh.join(&name), "fresh").unwrap();
    let server = hourly(dir.path(), "b", &fresh);
    let admin = server.admin().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(backups_in(&fresh), vec![name]);
    let status = admin.admin_status().await.unwrap();
    assert_eq!(status.backup_next.unwrap() / 1000, now + 3600);
    assert!(status.backup_last_success.is_none());
    assert!(status.backup_last_error.is_none());
}

// --- Attachment files ----------------------------------------------------------

/// Uploads `bytes` as alice and sends it to bob; returns (file id, ack).
async fn send_file(
    alice: &Client,
    work: &Path,
    name: &str,
    bytes: &[u8],
) -> (String, quince::protocol::SendAck) {
    let path = work.join(name);
    std::fs::write(&path, bytes).unwrap();
    let up = alice.upload(&path, |_, _| {}).await.unwrap();
    let draft = Draft {
        text: format!("here is {name}"),
        attachment: Some(AttachmentRef {
            id: up.id.clone(),
            name: name.into(),
            mime: None,
        }),
        ..Draft::default()
    };
    let ack = alice
        .send_draft(Target::User("bob".into()), new_mid(), draft)
        .await
        .unwrap();
    (up.id, ack)
}

fn blob_path(data: &Path, id: &str) -> PathBuf {
    data.join("attachments/blobs").join(&id[..2]).join(id)
}

/// Downloads file `id` as bob from a server started on `data` and checks
/// that every file in `expect` comes back byte for byte.
async fn bob_downloads(data: &Path, work: &Path, expect: &[(&str, &[u8])]) {
    let server = TestServer::start(data);
    let bob = server.connect().await;
    bob.login("bob", &password("bob"), "check").await.unwrap();
    for (id, bytes) in expect {
        let dest = work.join(format!("got-{}", &id[..8]));
        let size = bob.download(id, &dest, |_, _| {}).await.unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(&std::fs::read(&dest).unwrap(), bytes, "file {id}");
        std::fs::remove_file(&dest).unwrap();
    }
}

#[tokio::test]
async fn attachment_files_are_backed_up_and_restored_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    // Bigger than the client's stream window (1.25 MB), so the server is
    // still sending (and reading files) until the client reads.
    let big = content(3_000_000, 1);
    let (big_id, _) = send_file(&alice, work.path(), "big.bin", &big).await;
    let (empty_id, _) = send_file(&alice, work.path(), "empty.txt", b"").await;
    let doomed = content(40_000, 2);
    let (doomed_id, doomed_ack) = send_file(&alice, work.path(), "doomed.bin", &doomed).await;

    // The backup is taken; the server holds it until the client has read it.
    let download = admin.admin_backup().await.unwrap();
    // Recalling a message deletes its file unless a backup still needs it:
    // the garbage collection waits for the backup.
    alice.recall(doomed_ack.conv, doomed_ack.seq).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        blob_path(&data, &doomed_id).exists(),
        "a file in a running backup was deleted"
    );
    let dest = dir.path().join("files.qbk");
    quince::backup::save(download, &dest, None).await.unwrap();
    // Once the backup is done, the collection goes ahead.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while blob_path(&data, &doomed_id).exists() {
        assert!(std::time::Instant::now() < deadline, "never collected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(blob_path(&data, &big_id).exists());
    drop(server);

    // The real command restores the files next to the database.
    let restored = dir.path().join("restored");
    let out = quince(&["restore", p(&dest), "--data-dir", p(&restored)]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("3 attachment files of 2.9 MiB"), "{said}");
    let mut expect = vec![
        blob_path(Path::new(""), &big_id),
        blob_path(Path::new(""), &doomed_id),
        blob_path(Path::new(""), &empty_id),
    ];
    expect.extend(["quince.redb", "server.crt", "server.key"].map(PathBuf::from));
    expect.sort();
    assert_eq!(
        files_under(&restored)
            .iter()
            .map(|f| f.strip_prefix(&restored).unwrap().to_path_buf())
            .collect::<Vec<_>>(),
        expect,
        "the files, and nothing temporary"
    );
    // The restored server has the message recalled after the backup, and its file.
    bob_downloads(
        &restored,
        work.path(),
        &[(&big_id, &big), (&empty_id, b""), (&doomed_id, &doomed)],
    )
    .await;
}

#[tokio::test]
async fn encrypted_backup_with_files_round_trips_and_damaged_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let bytes = content(300_000, 3);
    let (id, _) = send_file(&alice, work.path(), "photo.jpg", &bytes).await;
    let enc = backup_to(&admin, &dir.path().join("enc.qbk"), Some("pass phrase")).await;
    let plain = backup_to(&admin, &dir.path().join("plain.qbk"), None).await;
    // A file damaged on the server's disk fails the backup, with its path,
    // rather than making a backup that restore would refuse.
    let mut rotten = bytes.clone();
    rotten[7] ^= 1;
    std::fs::write(blob_path(&data, &id), &rotten).unwrap();
    let err = admin
        .admin_backup()
        .await
        .err()
        .expect("a backup of a damaged file");
    let msg = err.to_string();
    assert!(
        msg.contains(&id) && msg.contains("does not match its SHA-256"),
        "{msg}"
    );
    drop(server);
    let on_disk = std::fs::read(&enc).unwrap();
    assert!(
        !on_disk.windows(64).any(|w| w == &bytes[1000..1064]),
        "the file shows through the encryption"
    );

    let restored = dir.path().join("restored");
    let r = quince::backup::restore(&enc, &restored, || {
        Ok(SecretString::from("pass phrase".to_string()))
    })
    .unwrap();
    assert!(r.encrypted);
    assert_eq!((r.files, r.file_bytes), (1, bytes.len() as u64));
    bob_downloads(&restored, work.path(), &[(&id, &bytes)]).await;

    // Damage inside the file section: found by its SHA-256, which precedes it
    // (its last occurrence: the database has it too).
    let good = std::fs::read(&plain).unwrap();
    let sha = hex::decode(&id).unwrap();
    let head = good.windows(32).rposition(|w| w == sha.as_slice()).unwrap();
    let start = head + 40;
    assert_eq!(good[head + 32..start], (bytes.len() as u64).to_be_bytes());
    assert_eq!(good[start..start + bytes.len()], bytes[..]);
    let target = dir.path().join("target");
    let damaged = dir.path().join("damaged.qbk");
    // Cut short inside the file.
    std::fs::write(&damaged, &good[..start + bytes.len() / 2]).unwrap();
    refused(&damaged, &target, "truncated");
    assert!(!target.exists());
    // One flipped byte in the file: it no longer matches its name.
    let mut flipped = good.clone();
    flipped[start + 12_345] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    refused(&damaged, &target, "does not match its sha-256");
    assert!(!target.exists());
    // The same flip with the checksum redone is still caught by the name.
    let body = flipped.len() - 32;
    let sum = Sha256::digest(&flipped[..body]);
    flipped[body..].copy_from_slice(&sum);
    std::fs::write(&damaged, &flipped).unwrap();
    refused(&damaged, &target, "does not match its sha-256");
    // Into an existing empty directory: it stays empty.
    std::fs::create_dir(&target).unwrap();
    refused(&damaged, &target, "does not match its sha-256");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

#[tokio::test]
async fn a_scheduled_backup_holds_the_attachment_files() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let _bob = server.user(&admin, "bob").await;
    let bytes = content(200_000, 4);
    let (id, _) = send_file(&alice, work.path(), "notes.bin", &bytes).await;
    drop(server);

    // The same data directory with a schedule: the first backup is due at once.
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let server = hourly(dir.path(), "data", &backups);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backups_in(&backups).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no scheduled backup");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
    let written = backups.join(&backups_in(&backups)[0]);
    let restored = dir.path().join("restored");
    let r = quince::backup::restore(&written, &restored, no_passphrase).unwrap();
    assert_eq!((r.files, r.file_bytes), (1, bytes.len() as u64));
    bob_downloads(&restored, work.path(), &[(&id, &bytes)]).await;
}
