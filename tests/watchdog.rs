//! The watchdog off the appliance: a configured device that is not there, or
//! is not a watchdog, is reported once and the server serves anyway. (The
//! real device, i6300esb under QEMU, is tested in tests/image.rs.)

use std::io::Read;
use std::process::{Command, Stdio};

/// Starts `quince serve --watchdog DEVICE`, checks it serves a client, stops
/// it with SIGTERM and returns what it logged.
async fn serve_with_watchdog(device: &std::path::Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quince"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "info"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--watchdog")
        .arg(device)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut addr, mut fingerprint) = (None, None);
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0 {
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(|a| a.parse().unwrap());
        }
        if let Some(fp) = line.strip_prefix("certificate fingerprint (SHA-256): ") {
            fingerprint = Some(fp.trim().to_string());
            break;
        }
        line.clear();
    }
    let client = quince::client::Client::connect(
        addr.expect("listening"),
        quince::client::Trust::Pinned(fingerprint.expect("fingerprint")),
    )
    .await;
    match client {
        Ok(client) => client.close().await,
        Err(e) => panic!("the server does not serve: {e}"),
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    log
}

#[tokio::test]
async fn missing_device_is_reported_once_and_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = serve_with_watchdog(&dir.path().join("watchdog")).await;
    assert_eq!(log.matches("no watchdog device").count(), 1, "{log}");
    assert!(!log.contains("watchdog armed"), "{log}");
}

#[tokio::test]
async fn a_file_that_is_not_a_watchdog_is_refused_and_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_device = dir.path().join("watchdog");
    std::fs::write(&not_a_device, b"").unwrap();
    let log = serve_with_watchdog(&not_a_device).await;
    assert_eq!(
        log.matches("running without a watchdog").count(),
        1,
        "{log}"
    );
    assert!(log.contains("setting the watchdog timeout"), "{log}");
}
