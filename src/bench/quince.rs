//! The scenarios against quince.
//!
//! Each scenario gets a fresh data directory, seeded directly through the
//! store (accounts with known device tokens, missed messages) so that setup
//! costs neither argon2 hashing per account nor minutes of sending. The server
//! is then started as a child process, and the simulated users connect with
//! `resume`, as real devices do after a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quince::auth;
use quince::client::{self, Client};
use quince::protocol::{AttachmentRef, Body, Message, Role, Target};
use quince::store::{Store, WriteOp, WriteOutcome};
use quince::tls::Trust;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::BenchArgs;
use super::load::{self, Recorder, Schedule};
use super::results::{Figure, Latency, RatePoint, ScenarioResult};

/// Client endpoints (UDP sockets) the simulated users share.
const ENDPOINTS: usize = 8;
/// Connection attempts in flight at once while setting up a scenario.
const CONNECT_CONCURRENCY: usize = 256;
/// Tries per client in the reconnect storm before it counts as failed for good.
const RESUME_TRIES: u32 = 8;
/// Password of every seeded account (hashed once; logins are not measured).
const PASSWORD: &str = "bench-password-not-secret";

pub struct Bench {
    work_dir: PathBuf,
    /// The server named by the current profile, instead of one started here.
    remote: Option<Remote>,
    size: usize,
    step: Duration,
    p99_ms: f64,
    pairs: usize,
    members: usize,
    quick: bool,
    idle: usize,
    reconnect: usize,
    catch_up: usize,
}

impl Bench {
    pub fn new(args: &BenchArgs, work_dir: &Path, remote: Option<&Remote>) -> Bench {
        Bench {
            work_dir: work_dir.to_path_buf(),
            remote: remote.cloned(),
            size: args.size.max(16),
            step: args.step_duration(),
            p99_ms: args.p99_ms,
            pairs: args.pairs.max(1),
            members: args.members.max(2),
            quick: args.quick,
            idle: args.idle.unwrap_or(20_000),
            reconnect: args.reconnect.unwrap_or(5_000),
            catch_up: args
                .catch_up
                .unwrap_or(if args.quick { 100_000 } else { 200_000 }),
        }
    }

    fn params(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut p = vec![("message size".to_string(), format!("{} B", self.size))];
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        p
    }

    /// A server for scenario `name` with `users` accounts, and `messages`
    /// messages from the first to the second account: a fresh local one, or
    /// the remote one with new accounts.
    async fn prepare(
        &self,
        name: &str,
        users: usize,
        messages: usize,
    ) -> anyhow::Result<(Server, Seeded)> {
        match &self.remote {
            None => {
                let data_dir = self.work_dir.join(name);
                let seeded = seed(&data_dir, users, messages).await?;
                Ok((Server::start(&self.work_dir, &data_dir).await?, seeded))
            }
            Some(remote) => remote.prepare(users, messages).await,
        }
    }

    /// Scenario 1: pairs of users chatting 1:1; every message is acknowledged
    /// only after its commit, and counted when the recipient receives it.
    pub async fn one_to_one(&self) -> anyhow::Result<ScenarioResult> {
        let pairs = self.pairs;
        let (server, seeded) = self.prepare("one-to-one", 2 * pairs, 0).await?;
        let clients = connect_all(server.addr, &seeded.tokens, "connecting 1:1 users").await?;
        let (senders, recipients) = clients.split_at(pairs);
        let targets: Vec<Target> = seeded.names[pairs..]
            .iter()
            .map(|n| Target::User(n.clone()))
            .collect();
        let sink = Deliveries::listen(recipients).await?;
        // Warm up: every pair's conversation exists before measuring.
        let warm = sink.begin();
        for (sender, target) in senders.iter().zip(&targets) {
            sender.send(target.clone(), "hello", None).await?;
        }
        warm.wait(pairs as u64, Duration::from_secs(10)).await;

        let rates = if self.quick {
            load::step_rates(3125.0, 100_000.0, 2.0)
        } else {
            load::step_rates(1562.5, 200_000.0, 2.0)
        };
        let mut steps = vec![];
        for rate in rates {
            let point = self
                .run_rate("quince 1:1", rate, senders, &targets, &sink, 1)
                .await;
            let held = point.held(1, self.p99_ms);
            steps.push(point);
            if !held && !sustained(steps.last(), 1) {
                break;
            }
        }
        let rss = server.rss().await;
        server.stop().await?;
        let mut figures = vec![
            Figure::new(
                "messages/s delivered end to end (peak, none lost)",
                best_complete(&steps, 1),
                "/s",
            )
            .at_least(50_000.0),
            Figure::new(
                "highest step kept up (≥95 % of offered)",
                best_sustained(&steps, 1),
                "/s",
            ),
            Figure::new(
                "highest rate with p99 under the limit",
                best_held(&steps, 1, self.p99_ms),
                "/s",
            ),
        ];
        if let Some(p) = steps.iter().find(|p| p.offered_per_s == 25_000.0) {
            figures.push(Figure::new("p99 at 25,000 msg/s", p.latency.p99_ms, "ms").at_most(25.0));
        }
        figures.push(Figure::new("server peak RSS", rss.peak_mib(), "MiB"));
        Ok(ScenarioResult {
            id: "one-to-one".into(),
            title: "1:1 chat, durable".into(),
            system: "quince".into(),
            params: self.params(&[
                ("pairs", pairs.to_string()),
                ("step", format!("{:.0} s", self.step.as_secs_f64())),
            ]),
            figures,
            steps,
            notes: vec![
                "A send is acknowledged only after its commit (fsync); latency runs from the \
                 message's scheduled time to its arrival at the recipient."
                    .into(),
            ],
        })
    }

    /// Scenario 2: one sender, a group of `members` (the sender included); each
    /// message is delivered to every other member.
    pub async fn fan_out(&self) -> anyhow::Result<ScenarioResult> {
        let members = self.members;
        let (server, seeded) = self.prepare("fan-out", members, 0).await?;
        let clients = connect_all(server.addr, &seeded.tokens, "connecting group members").await?;
        let (sender, recipients) = clients.split_at(1);
        let others: Vec<&str> = seeded.names[1..].iter().map(String::as_str).collect();
        let conv = sender[0]
            .group_create("bench", &others)
            .await
            .context("creating the group")?;
        let target = Target::Conv(conv);
        let per_message = recipients.len() as u64;
        let sink = Deliveries::listen(recipients).await?;
        // Everyone has seen the group's creation before measuring.
        let warm = sink.begin();
        sender[0].send(target.clone(), "hello", None).await?;
        warm.wait(per_message, Duration::from_secs(20)).await;

        let rates = if self.quick {
            load::step_rates(31.25, 2000.0, 2.0)
        } else {
            load::step_rates(15.625, 4000.0, 2.0)
        };
        let mut steps = vec![];
        for rate in rates {
            let targets = [target.clone()];
            let point = self
                .run_rate("quince fan-out", rate, sender, &targets, &sink, per_message)
                .await;
            let held = point.held(per_message, self.p99_ms);
            steps.push(point);
            if !held && !sustained(steps.last(), per_message) {
                break;
            }
        }
        let rss = server.rss().await;
        server.stop().await?;
        Ok(ScenarioResult {
            id: "fan-out".into(),
            title: format!("group fan-out, {members} members"),
            system: "quince".into(),
            params: self.params(&[
                ("members", members.to_string()),
                ("deliveries per message", per_message.to_string()),
            ]),
            figures: vec![
                Figure::new(
                    "deliveries/s (peak, none lost)",
                    best_complete(&steps, per_message),
                    "/s",
                )
                .at_least(500_000.0),
                Figure::new(
                    "highest step kept up (≥95 % of offered)",
                    best_sustained(&steps, per_message),
                    "/s",
                ),
                Figure::new(
                    "highest deliveries/s with p99 under the limit",
                    best_held(&steps, per_message, self.p99_ms),
                    "/s",
                ),
                Figure::new("server peak RSS", rss.peak_mib(), "MiB"),
            ],
            steps,
            notes: vec![format!(
                "Rates are messages/s offered by the one sender; each reaches {per_message} devices."
            )],
        })
    }

    /// Offers `rate` messages/s for one step; message `i` goes from sender
    /// `i % senders` to its target.
    async fn run_rate(
        &self,
        what: &str,
        rate: f64,
        senders: &[Client],
        targets: &[Target],
        sink: &Deliveries,
        per_message: u64,
    ) -> RatePoint {
        let run = sink.begin();
        let mut schedule = Schedule::new(rate, self.step);
        let total = schedule.total();
        let bar = load::progress(total, &format!("{what} at {rate:.0}/s"));
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut sends = JoinSet::new();
        while let Some(batch) = schedule.next_batch().await {
            for i in batch {
                let k = (i as usize) % senders.len();
                let client = senders[k].clone();
                let target = targets[k % targets.len()].clone();
                let text = load::payload(load::stamp(schedule.due(i)), self.size);
                let errors = errors.clone();
                sends.spawn(async move {
                    if client.send(target, &text, None).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            bar.set_position(schedule.next_index());
            // Reap finished sends so the set stays small.
            while sends.try_join_next().is_some() {}
        }
        bar.finish_and_clear();
        let drain = self.step.mul_f64(2.0).max(Duration::from_secs(5));
        let _ =
            tokio::time::timeout(drain, async { while sends.join_next().await.is_some() {} }).await;
        sends.abort_all();
        let errors = errors.load(Ordering::Relaxed);
        let expected = (total - errors.min(total)) * per_message;
        run.wait(expected, drain).await;
        let delivered = run.delivered();
        let elapsed = run
            .last_delivery()
            .map(|t| t.duration_since(start))
            .unwrap_or(self.step)
            .max(Duration::from_millis(1));
        let point = RatePoint {
            offered_per_s: rate,
            delivered_per_s: delivered as f64 / elapsed.as_secs_f64(),
            sent: total,
            delivered,
            errors,
            latency: Latency::of(&run.recorder.snapshot()),
        };
        eprintln!(
            "{what}: offered {rate:.0}/s, delivered {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, errors {errors}",
            point.delivered_per_s, point.latency.p50_ms, point.latency.p99_ms
        );
        point
    }

    /// Scenario 3: many authenticated clients, connected and idle.
    pub async fn idle(&self) -> anyhow::Result<ScenarioResult> {
        let n = self.idle;
        let (server, seeded) = self.prepare("idle", n, 0).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let empty = server.rss().await;
        let clients = connect_many(
            server.addr,
            &seeded.tokens,
            false,
            "connecting idle clients",
        )
        .await?;
        // Idle means idle for a while: the handshakes' transient memory has
        // been freed and handed back (the server trims its heap every 10 s).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let connected = server.rss().await;
        let bar = load::progress(n as u64, "logging idle clients in");
        let mut logins = JoinSet::new();
        let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        for (client, token) in clients.iter().zip(&seeded.tokens) {
            let (client, token, limit, bar) =
                (client.clone(), token.clone(), limit.clone(), bar.clone());
            logins.spawn(async move {
                let _permit = limit.acquire_owned().await?;
                client.resume(&token).await?;
                bar.inc(1);
                anyhow::Ok(())
            });
        }
        while let Some(done) = logins.join_next().await {
            done??;
        }
        bar.finish_and_clear();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let loaded = server.rss().await;
        let per_conn_kib = (loaded.rss_kib.saturating_sub(empty.rss_kib)) as f64 / n as f64;
        let quic_kib = (connected.rss_kib.saturating_sub(empty.rss_kib)) as f64 / n as f64;
        for c in &clients {
            c.close_now();
        }
        drop(clients);
        // What the server gives back once everyone has gone (it trims its heap
        // every 10 s): memory a Pi's page cache can use again.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let left = server.rss().await;
        server.stop().await?;
        Ok(ScenarioResult {
            id: "idle".into(),
            title: "idle connections".into(),
            system: "quince".into(),
            params: vec![("connections".into(), n.to_string())],
            figures: vec![
                // A remote server has other clients (this bench's administrator at
                // least) and its own history, so the empty-server target is ours only.
                if self.remote.is_some() {
                    Figure::new("server RSS before connecting", empty.rss_mib(), "MiB")
                } else {
                    Figure::new("server RSS, no clients", empty.rss_mib(), "MiB").at_most(12.0)
                },
                Figure::new(
                    &format!("server RSS, {n} idle connections"),
                    loaded.rss_mib(),
                    "MiB",
                )
                .at_most(400.0 * n as f64 / 20_000.0),
                Figure::new("RSS per connection", per_conn_kib, "KiB").at_most(20.0),
                Figure::new("of which QUIC + TLS before login", quic_kib, "KiB"),
                Figure::new("server RSS after all disconnected", left.rss_mib(), "MiB"),
            ],
            steps: vec![],
            notes: vec![
                "Each client has logged in (resumed with its device token) and holds its \
                 control and event streams open."
                    .into(),
            ],
        })
    }

    /// Scenario 4: every client resumes at once on a freshly started server.
    pub async fn reconnect(&self) -> anyhow::Result<ScenarioResult> {
        let n = self.reconnect;
        let (server, seeded) = self.prepare("reconnect", n, 0).await?;
        let endpoints = endpoints()?;
        let addr = server.addr;
        let bar = load::progress(n as u64, "reconnect storm");
        let retries = Arc::new(AtomicU64::new(0));
        let causes = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let start = Instant::now();
        let mut storm = JoinSet::new();
        for (i, token) in seeded.tokens.iter().enumerate() {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let token = token.clone();
            let retries = retries.clone();
            let causes = causes.clone();
            let bar = bar.clone();
            storm.spawn(async move {
                for attempt in 0..RESUME_TRIES {
                    if attempt > 0 {
                        retries.fetch_add(1, Ordering::Relaxed);
                        // Back off with jitter, as a well-behaved app does.
                        let ms = 100u64 << attempt.min(5);
                        let jitter = rand::random_range(0..ms);
                        tokio::time::sleep(Duration::from_millis(ms + jitter)).await;
                    }
                    match resume(&endpoint, addr, &token).await {
                        Ok(c) => {
                            bar.inc(1);
                            return Some((c, start.elapsed()));
                        }
                        Err(e) => {
                            let mut causes = causes.lock().unwrap_or_else(|e| e.into_inner());
                            *causes.entry(format!("{e:#}")).or_insert(0u64) += 1;
                        }
                    }
                }
                None
            });
        }
        let mut clients = vec![];
        let mut failed = 0u64;
        let mut last = Duration::ZERO;
        while let Some(done) = storm.join_next().await {
            match done {
                Ok(Some((c, at))) => {
                    last = last.max(at);
                    clients.push(c);
                }
                _ => failed += 1,
            }
        }
        bar.finish_and_clear();
        let rate = clients.len() as f64 / last.as_secs_f64().max(0.001);
        for c in &clients {
            c.close_now();
        }
        drop(clients);
        // Let the closes finish before the next scenario measures anything.
        for endpoint in &endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
        }
        server.stop().await?;
        let retries = retries.load(Ordering::Relaxed);
        let causes = causes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut notes = vec![
            "Each resume is a new QUIC connection (TLS 1.3 handshake) plus a token check \
             against the store, all clients starting together."
                .to_string(),
        ];
        notes.extend(
            causes
                .iter()
                .map(|(cause, n)| format!("{n} attempts failed with: {cause}")),
        );
        eprintln!(
            "reconnect: {n} clients in {last:.2?}, {rate:.0}/s, {retries} retries, {failed} failed"
        );
        Ok(ScenarioResult {
            id: "reconnect".into(),
            title: "reconnect storm".into(),
            system: "quince".into(),
            params: vec![("clients".into(), n.to_string())],
            figures: vec![
                Figure::new("resumes/s", rate, "/s").at_least(5_000.0),
                Figure::new("clients failed for good", failed as f64, "").at_most(0.0),
                Figure::new("retries", retries as f64, ""),
                Figure::new("time until all resumed", last.as_secs_f64(), "s"),
            ],
            steps: vec![],
            notes,
        })
    }

    /// Scenario 5: one device comes back to `catch_up` missed messages.
    pub async fn catch_up(&self) -> anyhow::Result<ScenarioResult> {
        let m = self.catch_up;
        let (server, seeded) = self.prepare("catch-up", 2, m).await?;
        let endpoint = client::endpoint("127.0.0.1:0".parse()?)?;
        let bar = load::progress(m as u64, "offline catch-up");
        let start = Instant::now();
        let device = resume(&endpoint, server.addr, &seeded.tokens[1]).await?;
        let mut inbox = device.subscribe().await?;
        let mut got = 0u64;
        let mut in_order = true;
        let mut last_seq = 0;
        while got < m as u64 {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(30), inbox.recv()).await
            else {
                break;
            };
            in_order &= msg.seq > last_seq;
            last_seq = msg.seq;
            got += 1;
            if got.is_multiple_of(1024) {
                bar.set_position(got);
            }
        }
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        device.close().await;
        let rss = server.rss().await;
        server.stop().await?;
        if got < m as u64 {
            bail!("catch-up: only {got} of {m} messages arrived");
        }
        if !in_order {
            bail!("catch-up: messages arrived out of order");
        }
        let rate = got as f64 / elapsed.as_secs_f64();
        eprintln!("catch-up: {got} messages in {elapsed:.2?}, {rate:.0}/s");
        Ok(ScenarioResult {
            id: "catch-up".into(),
            title: "offline catch-up".into(),
            system: "quince".into(),
            params: self.params(&[("missed messages", m.to_string())]),
            figures: vec![
                Figure::new("messages/s to one device", rate, "/s").at_least(200_000.0),
                Figure::new("time to catch up", elapsed.as_secs_f64(), "s"),
                Figure::new("server peak RSS", rss.peak_mib(), "MiB"),
            ],
            steps: vec![],
            notes: vec![
                "From connecting (QUIC handshake and resume) to the last message handed to the \
                 app by the client library's exactly-once inbox, which pages history and \
                 acknowledges as it goes."
                    .into(),
            ],
        })
    }

    /// Scenario 6: one attachment sent and fetched. The upload is timed as an
    /// app sees it (hashing the file, then streaming it); the recipient then
    /// downloads it (the client checks its SHA-256) and uploads the same file
    /// itself, which the server already stores. Server memory shows whether
    /// files stream through or are held.
    pub async fn attachments(&self) -> anyhow::Result<ScenarioResult> {
        let mib: u64 = if self.quick { 32 } else { 100 };
        let (server, seeded) = self.prepare("attachments", 2, 0).await?;
        let endpoint = client::endpoint("127.0.0.1:0".parse()?)?;
        let sender = resume(&endpoint, server.addr, &seeded.tokens[0]).await?;
        let recipient = resume(&endpoint, server.addr, &seeded.tokens[1]).await?;
        let source = self.work_dir.join("attachment.bin");
        let fetched = self.work_dir.join("attachment.fetched");
        let _ = std::fs::remove_file(&fetched);
        let _ = std::fs::remove_file(client::part_path(&fetched));
        let hashing = tokio::task::spawn_blocking({
            let source = source.clone();
            move || write_random_file(&source, mib << 20)
        })
        .await??;
        let idle = server.rss().await;

        let start = Instant::now();
        let uploaded = sender.upload(&source, |_, _| {}).await?;
        let upload = start.elapsed();
        let draft = client::Draft {
            attachment: Some(AttachmentRef {
                id: uploaded.id.clone(),
                name: "attachment.bin".into(),
                mime: None,
            }),
            ..Default::default()
        };
        let to = Target::User(seeded.names[1].clone());
        sender.send_draft(to, client::new_mid(), draft).await?;

        let start = Instant::now();
        let size = recipient
            .download(&uploaded.id, &fetched, |_, _| {})
            .await?;
        let download = start.elapsed();
        if size != mib << 20 {
            bail!("attachments: downloaded {size} bytes of {}", mib << 20);
        }
        let start = Instant::now();
        let again = recipient.upload(&source, |_, _| {}).await?;
        let stored = start.elapsed();
        if again.id != uploaded.id {
            bail!("attachments: the same file got another id");
        }
        let rss = server.rss().await;
        server.stop().await?;
        let _ = std::fs::remove_file(&source);
        let _ = std::fs::remove_file(&fetched);
        let rate = |took: Duration| mib as f64 / took.as_secs_f64();
        eprintln!(
            "attachments: {mib} MiB up in {upload:.2?}, down in {download:.2?}, \
             again in {stored:.2?} (hashing {hashing:.2?})"
        );
        Ok(ScenarioResult {
            id: "attachments".into(),
            title: "attachment upload and download".into(),
            system: "quince".into(),
            params: vec![("file size".into(), format!("{mib} MiB"))],
            figures: vec![
                Figure::new("upload MiB/s (hashing included)", rate(upload), "MiB/s"),
                Figure::new("download MiB/s (hash checked)", rate(download), "MiB/s"),
                Figure::new("upload MiB/s, a file already stored", rate(stored), "MiB/s"),
                Figure::new(
                    "client SHA-256 of the file (cached)",
                    hashing.as_secs_f64(),
                    "s",
                ),
                Figure::new("server RSS before", idle.rss_mib(), "MiB"),
                Figure::new("server peak RSS", rss.peak_mib(), "MiB"),
            ],
            steps: vec![],
            notes: vec![
                "Over QUIC on loopback, one file at a time. The upload is `Client::upload` as an \
                 app calls it: the client hashes the file, then streams it; the server writes \
                 it under the data directory, checks its SHA-256 and fsyncs it before \
                 `upload_finish` answers. In the second upload the recipient uploads the same \
                 file: its bytes are sent again, as knowing a file's id is no proof of having \
                 it, but it is stored once. (To forward a file it can read, a client sends its \
                 id without uploading.)"
                    .into(),
            ],
        })
    }

    /// Scenario 7: opening the store after a crash (the server killed with
    /// SIGKILL just after a write), by database size. After a power cut redb
    /// checks and repairs the file before quince can serve, so on a box that
    /// lost power this is part of the boot.
    pub async fn repair(&self) -> anyhow::Result<ScenarioResult> {
        let sizes: &[usize] = if self.quick {
            &[10_000, 100_000]
        } else {
            &[10_000, 100_000, 1_000_000]
        };
        let endpoint = client::endpoint("127.0.0.1:0".parse()?)?;
        let mut figures = vec![];
        for &messages in sizes {
            let name = format!("repair-{messages}");
            let (server, seeded) = self.prepare(&name, 2, messages).await?;
            // A commit after the server opened the file, then the crash.
            let client = resume(&endpoint, server.addr, &seeded.tokens[0]).await?;
            client
                .send(
                    Target::User(seeded.names[1].clone()),
                    "before the crash",
                    None,
                )
                .await?;
            server.kill().await?;
            let path = self.work_dir.join(&name).join(quince::server::DB_FILE);
            let mib = std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64;
            let (took, repair) = tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                let (store, writer) = Store::open(&path, 64 << 20)?;
                let took = start.elapsed();
                let repair = store.repair_time();
                drop(store);
                writer.join();
                anyhow::Ok((took, repair))
            })
            .await??;
            if repair.is_none() {
                bail!("repair: the store opened without a repair after SIGKILL");
            }
            eprintln!("repair: {messages} messages, {mib:.1} MiB: opened in {took:.2?}");
            figures.push(Figure::new(
                &format!("open after a crash, {messages} messages ({mib:.1} MiB)"),
                took.as_secs_f64() * 1000.0,
                "ms",
            ));
        }
        Ok(ScenarioResult {
            id: "repair".into(),
            title: "store repair after a crash".into(),
            system: "quince".into(),
            params: self.params(&[(
                "database sizes (messages)",
                sizes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )]),
            figures,
            steps: vec![],
            notes: vec![
                "The server is killed with SIGKILL right after a commit; the time is Store::open \
                 on the same machine, which includes redb's check and repair of the whole file."
                    .into(),
            ],
        })
    }

    /// Scenario 8: `quince backup` of a running server, by database size:
    /// the snapshot (one read transaction copied into a new file), the
    /// transfer over QUIC on loopback, and the client writing the file.
    pub async fn backup(&self) -> anyhow::Result<ScenarioResult> {
        let sizes: &[usize] = if self.quick {
            &[100_000]
        } else {
            &[100_000, 1_000_000]
        };
        let endpoint = client::endpoint("127.0.0.1:0".parse()?)?;
        let mut figures = vec![];
        for &messages in sizes {
            let name = format!("backup-{messages}");
            let data_dir = self.work_dir.join(&name);
            seed(&data_dir, 2, messages).await?;
            let admin_token = seed_admin(&data_dir).await?;
            let server = Server::start(&self.work_dir, &data_dir).await?;
            let admin = resume(&endpoint, server.addr, &admin_token).await?;
            let dest = self.work_dir.join(format!("{name}.qbk"));
            let _ = std::fs::remove_file(&dest);
            let start = Instant::now();
            let download = admin.admin_backup().await?;
            let snapshot = start.elapsed();
            let bytes = download.ready().bytes;
            quince::backup::save(download, &dest, None).await?;
            let took = start.elapsed();
            let _ = std::fs::remove_file(&dest);
            // The same, encrypted on the client (age: scrypt once, then
            // ChaCha20-Poly1305), as `quince backup --encrypt` does.
            let start = Instant::now();
            let download = admin.admin_backup().await?;
            let pass = quince::backup::SecretString::from("bench passphrase".to_string());
            quince::backup::save(download, &dest, Some(pass)).await?;
            let encrypted = start.elapsed();
            let _ = std::fs::remove_file(&dest);
            admin.close().await;
            server.stop().await?;
            let mib = bytes as f64 / (1 << 20) as f64;
            let rate = mib / took.as_secs_f64();
            let enc_rate = mib / encrypted.as_secs_f64();
            eprintln!(
                "backup: {messages} messages, {mib:.1} MiB: snapshot {snapshot:.2?}, \
                 in the file after {took:.2?} ({rate:.0} MiB/s); encrypted {encrypted:.2?} \
                 ({enc_rate:.0} MiB/s)"
            );
            figures.push(Figure::new(
                &format!("backup of {messages} messages ({mib:.1} MiB), end to end"),
                rate,
                "MiB/s",
            ));
            figures.push(Figure::new(
                &format!("backup of {messages} messages, encrypted (--encrypt)"),
                enc_rate,
                "MiB/s",
            ));
            let mut snap = Figure::new(
                &format!("snapshot of {messages} messages, before the transfer starts"),
                snapshot.as_secs_f64() * 1000.0,
                "ms",
            );
            snap.higher_is_better = false;
            figures.push(snap);
        }
        Ok(ScenarioResult {
            id: "backup".into(),
            title: "backup of a running server".into(),
            system: "quince".into(),
            params: self.params(&[(
                "database sizes (messages)",
                sizes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )]),
            figures,
            steps: vec![],
            notes: vec![
                "From the admin_backup request to the file written, synced and renamed by the \
                 client (unencrypted), over QUIC on loopback; the snapshot is the time until the \
                 server's answer, which it sends once the copy of the database is made."
                    .into(),
            ],
        })
    }
}

/// Adds an administrator to a seeded (stopped) data directory; its device token.
async fn seed_admin(data_dir: &Path) -> anyhow::Result<String> {
    let phc = tokio::task::spawn_blocking(|| auth::hash_password(PASSWORD))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    let (store, writer) = Store::open(&data_dir.join(quince::server::DB_FILE), 64 << 20)?;
    let mut invite = [0u8; 32];
    rand::fill(&mut invite);
    let (token, token_hash) = auth::new_token();
    store
        .write(WriteOp::CreateInvite {
            token_hash: invite,
            role: Role::Admin,
            expires: u64::MAX,
            created_by: 0,
        })
        .await?;
    store
        .write(WriteOp::Register {
            invite_hash: invite,
            username: "benchadmin".into(),
            password: phc,
            device: "bench".into(),
            token_hash,
            now: 0,
        })
        .await?;
    drop(store);
    tokio::task::spawn_blocking(move || writer.join()).await?;
    Ok(token)
}

/// Whether a step kept up (everything delivered, no errors), whatever its latency.
fn sustained(p: Option<&RatePoint>, per_message: u64) -> bool {
    p.is_some_and(|p| p.held(per_message, f64::INFINITY))
}

/// The highest delivery rate among steps in which every message arrived
/// without errors, however late: the throughput the server delivered.
fn best_complete(steps: &[RatePoint], per_message: u64) -> f64 {
    steps
        .iter()
        .filter(|p| p.errors == 0 && p.delivered >= p.sent * per_message)
        .map(|p| p.delivered_per_s)
        .fold(0.0, f64::max)
}

/// The highest delivery rate among steps that kept up.
fn best_sustained(steps: &[RatePoint], per_message: u64) -> f64 {
    steps
        .iter()
        .filter(|p| sustained(Some(p), per_message))
        .map(|p| p.delivered_per_s)
        .fold(0.0, f64::max)
}

/// The highest delivery rate among steps that kept up within the p99 limit.
fn best_held(steps: &[RatePoint], per_message: u64, p99_ms: f64) -> f64 {
    steps
        .iter()
        .filter(|p| p.held(per_message, p99_ms))
        .map(|p| p.delivered_per_s)
        .fold(0.0, f64::max)
}

/// A seeded data directory: accounts with their names and device tokens.
struct Seeded {
    names: Vec<String>,
    tokens: Vec<String>,
}

/// Creates a fresh data directory with `users` accounts (one device each) and
/// `messages` messages from the first account to the second, written through
/// the store exactly as the server would write them.
async fn seed(data_dir: &Path, users: usize, messages: usize) -> anyhow::Result<Seeded> {
    if data_dir.exists() {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("removing old {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(data_dir)?;
    let phc = tokio::task::spawn_blocking(|| auth::hash_password(PASSWORD))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    let (store, writer) = Store::open(&data_dir.join("quince.redb"), 64 << 20)?;
    let bar = load::progress((users + messages) as u64, "seeding the store");
    let mut names = Vec::with_capacity(users);
    let mut tokens = Vec::with_capacity(users);
    let mut pending = Vec::with_capacity(users);
    for i in 0..users {
        let name = format!("user{i:05}");
        let mut invite = [0u8; 32];
        rand::fill(&mut invite);
        let (token, token_hash) = auth::new_token();
        // Invites and registrations are queued back to back; the writer commits
        // them in order, many to a transaction.
        store
            .submit(WriteOp::CreateInvite {
                token_hash: invite,
                role: Role::Member,
                expires: u64::MAX,
                created_by: 0,
            })
            .await?;
        pending.push(
            store
                .submit(WriteOp::Register {
                    invite_hash: invite,
                    username: name.clone(),
                    password: phc.clone(),
                    device: "bench".into(),
                    token_hash,
                    now: 0,
                })
                .await?,
        );
        names.push(name);
        tokens.push(token);
    }
    let mut ids = Vec::with_capacity(users);
    for rx in pending {
        match rx.await? {
            Ok(WriteOutcome::Device { user, device, .. }) => ids.push((user, device)),
            Ok(other) => bail!("seeding: unexpected outcome {other:?}"),
            Err(e) => bail!("seeding: {e}"),
        }
        bar.inc(1);
    }
    if messages > 0 {
        let (user, device) = ids[0];
        let mut pending = Vec::with_capacity(1024);
        for i in 0..messages {
            let mid = client::new_mid();
            pending.push(
                store
                    .submit(WriteOp::Send {
                        user,
                        username: names[0].clone(),
                        device,
                        target: Target::User(names[1].clone()),
                        mid,
                        text: load::payload(i as u64, 100),
                        ext: None,
                        reply_to: None,
                        attachment: None,
                        now: 0,
                    })
                    .await?,
            );
            if pending.len() == 4096 {
                for rx in pending.drain(..) {
                    rx.await??;
                }
                bar.inc(4096);
            }
        }
        for rx in pending {
            rx.await??;
        }
    }
    bar.finish_and_clear();
    drop(store);
    tokio::task::spawn_blocking(move || writer.join()).await?;
    Ok(Seeded { names, tokens })
}

/// The quince server under test: a child process of this one, or a remote
/// server reached through an administrator's session.
struct Server {
    kind: ServerKind,
    addr: SocketAddr,
}

enum ServerKind {
    Child(tokio::process::Child),
    Remote(Client),
}

/// Resident memory of the server.
struct Rss {
    rss_kib: u64,
    peak_kib: u64,
}

impl Rss {
    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
    fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

impl Server {
    /// Runs `quince serve` from this executable on a free loopback port.
    async fn start(work_dir: &Path, data_dir: &Path) -> anyhow::Result<Server> {
        let config = work_dir.join("bench-server.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"warn\"\nmax_connections = 100000\n",
                data_dir.display().to_string()
            ),
        )?;
        // QUINCE_BENCH_WRAP names a program to run the server under, for
        // profiling a scenario (e.g. `heaptrack`); memory figures then include it.
        let mut command = match std::env::var_os("QUINCE_BENCH_WRAP") {
            Some(wrapper) => {
                let mut c = tokio::process::Command::new(wrapper);
                c.arg(std::env::current_exe()?);
                c
            }
            None => tokio::process::Command::new(std::env::current_exe()?),
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting quince serve")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split(" listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return Ok(addr.parse::<SocketAddr>()?);
                }
            }
            bail!("the server exited before listening")
        })
        .await
        .context("waiting for the server to listen")??;
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            kind: ServerKind::Child(child),
            addr,
        })
    }

    /// Resident memory: from /proc for a child; a remote server reports its
    /// own (current, so its peak is the current figure too).
    async fn rss(&self) -> Rss {
        let child = match &self.kind {
            ServerKind::Child(child) => child,
            ServerKind::Remote(admin) => {
                let kib = match admin.admin_status().await {
                    Ok(status) => status.memory_rss_bytes / 1024,
                    Err(e) => {
                        eprintln!("warning: server status: {e}");
                        0
                    }
                };
                return Rss {
                    rss_kib: kib,
                    peak_kib: kib,
                };
            }
        };
        let status = child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Rss {
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }

    /// Kills a child with SIGKILL (a crash) and waits for it to be gone.
    async fn kill(self) -> anyhow::Result<()> {
        match self.kind {
            ServerKind::Child(mut child) => Ok(child.kill().await?),
            ServerKind::Remote(_) => bail!("a remote server is not killed"),
        }
    }

    /// Stops a child the way init would (SIGTERM) and waits for it; leaves a
    /// remote server running.
    async fn stop(self) -> anyhow::Result<()> {
        let mut child = match self.kind {
            ServerKind::Child(child) => child,
            ServerKind::Remote(admin) => {
                admin.close_now();
                return Ok(());
            }
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!("warning: the server exited with {status}");
                }
            }
            Err(_) => {
                eprintln!("warning: the server did not stop within 20 s; killing it");
                child.kill().await?;
            }
        }
        Ok(())
    }
}

/// A running server to measure, and an administrator's device token for it.
#[derive(Clone)]
pub struct Remote {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub admin_token: String,
}

impl Remote {
    async fn admin(&self) -> anyhow::Result<Client> {
        let endpoint = client::endpoint("0.0.0.0:0".parse()?)?;
        let trust = Trust::Pinned(self.fingerprint.clone());
        let admin = Client::connect_on(&endpoint, self.addr, trust).await?;
        let session = admin.resume(&self.admin_token).await?;
        if session.role != Role::Admin {
            bail!(
                "the profile's account `{}` is not an administrator",
                session.user
            );
        }
        Ok(admin)
    }

    /// Registers `users` new accounts through invites (each costs the server
    /// one password hash) and sends `messages` from the first to the second.
    async fn prepare(&self, users: usize, messages: usize) -> anyhow::Result<(Server, Seeded)> {
        let admin = self.admin().await?;
        let run = hex::encode(rand::random::<[u8; 3]>());
        let endpoints = endpoints()?;
        let bar = load::progress(users as u64, "registering accounts");
        let limit = Arc::new(Semaphore::new(16));
        let mut set = JoinSet::new();
        for i in 0..users {
            let name = format!("b{run}-{i:05}");
            let invite = admin.admin_invite(Role::Member, Some(3600)).await?.token;
            let endpoint = endpoints[i % ENDPOINTS].clone();
            let (addr, fp) = (self.addr, self.fingerprint.clone());
            let (limit, bar) = (limit.clone(), bar.clone());
            set.spawn(async move {
                let _permit = limit.acquire_owned().await?;
                let c = Client::connect_on(&endpoint, addr, Trust::Pinned(fp)).await?;
                let session = c.register(&invite, &name, PASSWORD, "bench").await?;
                c.close_now();
                bar.inc(1);
                anyhow::Ok((i, name, session.token.unwrap_or_default()))
            });
        }
        let mut accounts = vec![(String::new(), String::new()); users];
        while let Some(done) = set.join_next().await {
            let (i, name, token) = done??;
            accounts[i] = (name, token);
        }
        bar.finish_and_clear();
        let (names, tokens): (Vec<String>, Vec<String>) = accounts.into_iter().unzip();
        if messages > 0 {
            let sender = resume(&endpoints[0], self.addr, &tokens[0]).await?;
            let to = Target::User(names[1].clone());
            let mut sends = JoinSet::new();
            for i in 0..messages {
                if sends.len() >= 64 {
                    sends.join_next().await.transpose()?.transpose()?;
                }
                let (sender, to) = (sender.clone(), to.clone());
                sends.spawn(
                    async move { sender.send(to, &load::payload(i as u64, 100), None).await },
                );
            }
            while let Some(done) = sends.join_next().await {
                done??;
            }
            sender.close_now();
        }
        Ok((
            Server {
                kind: ServerKind::Remote(admin),
                addr: self.addr,
            },
            Seeded { names, tokens },
        ))
    }
}

fn endpoints() -> anyhow::Result<Vec<quinn::Endpoint>> {
    (0..ENDPOINTS)
        .map(|_| Ok(client::endpoint("127.0.0.1:0".parse()?)?))
        .collect()
}

/// Connects and resumes one device.
async fn resume(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<Client> {
    let client = Client::connect_on(endpoint, addr, Trust::FirstUse).await?;
    client.resume(token).await?;
    Ok(client)
}

/// Connects every token's device, a bounded number at a time, over shared endpoints.
async fn connect_all(
    addr: SocketAddr,
    tokens: &[String],
    what: &str,
) -> anyhow::Result<Vec<Client>> {
    connect_many(addr, tokens, true, what).await
}

/// Connects one client per token, and logs each in (resumes) if `login`.
async fn connect_many(
    addr: SocketAddr,
    tokens: &[String],
    login: bool,
    what: &str,
) -> anyhow::Result<Vec<Client>> {
    let endpoints = endpoints()?;
    let bar = load::progress(tokens.len() as u64, what);
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let endpoint = endpoints[i % ENDPOINTS].clone();
        let token = token.clone();
        let limit = limit.clone();
        let bar = bar.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let mut last = None;
            for attempt in 0..3u64 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                let connected = if login {
                    resume(&endpoint, addr, &token).await
                } else {
                    // A ping opens the control stream, which is what the server
                    // waits for (it drops a connection that never does).
                    async {
                        let c = Client::connect_on(&endpoint, addr, Trust::FirstUse).await?;
                        c.ping().await?;
                        anyhow::Ok(c)
                    }
                    .await
                };
                match connected {
                    Ok(c) => {
                        bar.inc(1);
                        return Ok((i, c));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
        });
    }
    let mut clients: Vec<Option<Client>> = vec![None; tokens.len()];
    while let Some(done) = set.join_next().await {
        let (i, c) = done??;
        clients[i] = Some(c);
    }
    bar.finish_and_clear();
    Ok(clients.into_iter().flatten().collect())
}

/// Counts and times deliveries to a set of subscribed recipients.
struct Deliveries {
    current: Arc<Mutex<Arc<Run>>>,
}

/// Deliveries during one measured run.
#[derive(Default)]
struct Run {
    recorder: Recorder,
    delivered: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Run {
    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn last_delivery(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `expected` deliveries arrived or `timeout` passed.
    async fn wait(&self, expected: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.delivered() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Deliveries {
    /// Subscribes every recipient; a task per recipient records each message's
    /// latency (from the stamp in its text) into the current run.
    async fn listen(recipients: &[Client]) -> anyhow::Result<Deliveries> {
        let current = Arc::new(Mutex::new(Arc::new(Run::default())));
        for client in recipients {
            let mut inbox: mpsc::Receiver<Message> = client.subscribe().await?;
            let current = current.clone();
            tokio::spawn(async move {
                while let Some(msg) = inbox.recv().await {
                    let run = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    // Warm-up texts carry no stamp: counted, not timed.
                    if let Body::Text { text, .. } = &msg.body
                        && let Some(stamp) = load::parse_stamp(text.as_bytes())
                    {
                        run.recorder.record(load::since(stamp));
                    }
                    run.delivered.fetch_add(1, Ordering::Relaxed);
                    *run.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
            });
        }
        Ok(Deliveries { current })
    }

    /// Starts a new run: deliveries from now on count towards it.
    fn begin(&self) -> Arc<Run> {
        let run = Arc::new(Run::default());
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = run.clone();
        run
    }
}

/// Writes `len` random (incompressible) bytes to `path`, and returns how long
/// hashing them takes (SHA-256, as a client does before an upload).
fn write_random_file(path: &Path, len: u64) -> anyhow::Result<Duration> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rand::fill(&mut chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.into_inner()?.sync_all()?;
    let start = Instant::now();
    quince::attachment::hash_reader(&mut std::fs::File::open(path)?)?;
    Ok(start.elapsed())
}
