//! Test harness: runs the real `quince` binary on a loopback port with a real
//! redb file in a temporary directory, and connects real clients to it.
#![allow(dead_code)]

pub mod appliance;
pub mod cli;
pub mod nut;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quince::client::{Client, Trust};
use quince::protocol::{Message, Role};
use tokio::sync::mpsc;

/// A running `quince serve`, killed when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub admin_invite: Option<String>,
    pub dir: PathBuf,
    child: Child,
}

impl TestServer {
    /// Starts a server on a free loopback port with its data in `dir`.
    pub fn start(dir: &Path) -> TestServer {
        Self::start_on(dir, "127.0.0.1:0".parse().unwrap())
    }

    pub fn start_on(dir: &Path, listen: SocketAddr) -> TestServer {
        Self::start_with(dir, listen, &[])
    }

    /// Starts a server on a free loopback port with `options` (TOML) as its
    /// configuration file.
    pub fn start_configured(dir: &Path, options: &str) -> TestServer {
        let file = dir.with_extension("toml");
        std::fs::write(&file, options).expect("write the configuration");
        let config = ["--config", file.to_str().expect("UTF-8 path")];
        Self::start_with(dir, "127.0.0.1:0".parse().unwrap(), &config)
    }

    /// Starts a server with extra `quince serve` arguments (e.g. `--config FILE`).
    fn start_with(dir: &Path, listen: SocketAddr, extra: &[&str]) -> TestServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quince"))
            .args(["serve", "--listen", &listen.to_string(), "--data-dir"])
            .arg(dir)
            .args(["--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start quince serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut fingerprint = None;
        let mut admin_invite = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
            } else if let Some(fp) = line.strip_prefix("certificate fingerprint (SHA-256): ") {
                fingerprint = Some(fp.trim().to_string());
                // The invite line, if any, follows the fingerprint.
            } else if let Some(inv) = line.strip_prefix("admin invite: ") {
                admin_invite = Some(inv.trim().to_string());
            }
            if fingerprint.is_some()
                && (admin_invite.is_some() || !dir.join("admin-invite.txt").exists())
            {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        TestServer {
            addr: addr.expect("server printed its address"),
            fingerprint: fingerprint.expect("server printed its fingerprint"),
            admin_invite,
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// A power cut for the process: SIGKILL, no chance to clean up.
    pub fn kill9(mut self) -> (PathBuf, SocketAddr) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.dir.clone(), self.addr)
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().expect("wait for quince")
    }

    /// The exit status, if the server exits within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for quince") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn signal(&self, signal: &str) {
        unsafe_kill(self.child.id(), signal);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client trusting this server's fingerprint.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr, Trust::Pinned(self.fingerprint.clone()))
            .await
            .expect("connect")
    }

    /// Registers the first (admin) account.
    pub async fn admin(&self) -> Client {
        let client = self.connect().await;
        let invite = self
            .admin_invite
            .clone()
            .expect("fresh server has an admin invite");
        client
            .register(&invite, "admin", "admin-password", "test")
            .await
            .expect("register admin");
        client
    }

    /// Another device of an existing user: a new connection logged in with
    /// the password as device `device`.
    pub async fn login(&self, name: &str, device: &str) -> Client {
        let client = self.connect().await;
        client
            .login(name, &password(name), device)
            .await
            .expect("login");
        client
    }

    /// Registers a member account through `admin` and returns it logged in.
    pub async fn user(&self, admin: &Client, name: &str) -> Client {
        let invite = admin
            .admin_invite(Role::Member, None)
            .await
            .expect("invite");
        let client = self.connect().await;
        client
            .register(&invite.token, name, &password(name), "test")
            .await
            .expect("register");
        client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Deterministic, incompressible-looking test content (attachments).
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Every file under `dir`, recursively, sorted (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                todo.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// The error code of a request that must have been refused.
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, quince::client::ClientError>,
) -> quince::protocol::ErrorCode {
    let err = result.expect_err("the server should refuse this");
    err.code()
        .unwrap_or_else(|| panic!("expected a server error, got {err}"))
}

/// The password tests use for a user.
pub fn password(name: &str) -> String {
    format!("{name}-password")
}

/// The next message from a subscription, failing the test after 10 s.
pub async fn next(inbox: &mut mpsc::Receiver<Message>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .expect("a message within 10 s")
        .expect("subscription still open")
}

/// Asserts that nothing arrives within `wait`.
pub async fn nothing(inbox: &mut mpsc::Receiver<Message>, wait: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(wait, inbox.recv()).await {
        panic!("expected no message, got {m:?}");
    }
}

/// The texts of `conv` as `client` sees it, oldest first.
pub async fn conversation_texts(client: &Client, conv: u64) -> Vec<String> {
    let (mut texts, mut after) = (Vec::new(), 0);
    loop {
        let page = client.history(conv, Some(after), None, 500).await.unwrap();
        for m in &page.messages {
            if let quince::protocol::Body::Text { text, .. } = &m.body {
                texts.push(text.clone());
            }
            after = m.seq;
        }
        if !page.more {
            return texts;
        }
    }
}

/// The text of a text message.
pub fn text(m: &Message) -> &str {
    match &m.body {
        quince::protocol::Body::Text { text, .. } => text,
        other => panic!("not a text message: {other:?}"),
    }
}
