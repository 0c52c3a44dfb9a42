//! The reference peer: Mosquitto (MQTT QoS 1 over TLS, persistence on),
//! started on loopback and driven at the same rates and message size as quince.
//!
//! The comparison is meant to be fair to Mosquitto, not flattering to quince:
//! the broker runs with its queue and in-flight limits raised (so it slows
//! down rather than drops under load, as quince's store does), subscribers keep
//! persistent sessions (the broker queues for them, like store-and-forward), and
//! the load is the same open loop as quince's, timed from each message's due
//! time. What Mosquitto does *not* do is commit each message to disk before
//! acknowledging it: with `persistence true` it keeps everything in memory and
//! saves a snapshot of its database every `autosave_interval` (default 30
//! minutes) and on exit. Its figures are therefore those of a broker that may
//! lose the last minutes of messages on a crash, against quince's durable ones.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::load::{Recorder, Schedule, parse_stamp, payload, since, stamp};
use super::results::{Latency, RatePoint};

/// Debian's broker, as installed by `make bench` (`apt-get install mosquitto`).
const BINARY: &str = "/usr/sbin/mosquitto";

/// How long the broker may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one client may take to connect (TLS handshake and CONNACK) and,
/// for a subscriber, to have its subscription acknowledged. Generous, because
/// hundreds of clients connect at once to a single-threaded broker.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Clients connecting at the same time. Beyond a few dozen, simultaneous TLS
/// handshakes only overflow the broker's listen backlog and cost SYN retries.
const CONNECT_CONCURRENCY: usize = 32;

/// QoS 1 publishes a client may have awaiting PUBACK. rumqttc's default of
/// 100 would make the client, not the broker, the limit at high rates.
const CLIENT_INFLIGHT: u16 = 1000;

/// How long clients get to send DISCONNECT and close after a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running broker and what its clients need to reach it.
pub struct Mosquitto {
    child: Child,
    dir: PathBuf,
    broker: Broker,
    /// Runs so far, to give each run fresh client ids and topics: a run must
    /// not receive what an earlier, slower run left queued.
    runs: AtomicU64,
}

/// Where the broker listens and how to trust it; cloned into client tasks.
#[derive(Clone)]
struct Broker {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl Mosquitto {
    /// Starts mosquitto on a free loopback port with TLS and persistence under `work_dir`.
    pub async fn start(work_dir: &Path) -> anyhow::Result<Mosquitto> {
        if !Path::new(BINARY).exists() {
            bail!(
                "{BINARY} not found: install Debian's mosquitto package \
                 (apt-get install --no-install-recommends mosquitto), or pass --no-peer"
            );
        }
        let dir = work_dir.join("mosquitto");
        // A database left by an interrupted run would bring back its sessions
        // and queued messages; start from nothing.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir_str = dir
            .to_str()
            .filter(|s| !s.contains(char::is_whitespace))
            .ok_or_else(|| {
                anyhow!(
                    "{}: mosquitto's configuration cannot name a path with spaces \
                     or non-UTF-8 characters; choose another --work-dir",
                    dir.display()
                )
            })?
            .to_string();

        // The client connects to 127.0.0.1, so the certificate names that address.
        let generated =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
                .context("generating mosquitto's certificate")?;
        let cert_path = dir.join("server.crt");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, generated.cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        quince::tls::write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(generated.cert.der().clone())
            .context("trusting mosquitto's certificate")?;
        let tls = rustls::ClientConfig::builder_with_provider(quince::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let port = free_port()?;
        let config_path = dir.join("mosquitto.conf");
        std::fs::write(&config_path, config(&dir_str, port, running_as_root()))
            .with_context(|| format!("writing {}", config_path.display()))?;

        // What mosquitto prints before its log file is open (a bad
        // configuration, say) goes here, so that errors can show it.
        let console_path = dir.join("console.log");
        let console = std::fs::File::create(&console_path)
            .with_context(|| format!("creating {}", console_path.display()))?;
        let mut child = Command::new(BINARY)
            .arg("-c")
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {BINARY}"))?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("mosquitto exited at start ({status}):\n{}", log_tail(&dir));
            }
            // A bare TCP connection is enough to know the listener is up; the
            // broker logs it as an "unexpected eof" TLS error, which is harmless.
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "mosquitto did not accept connections on port {port} within {:?}:\n{}",
                    START_TIMEOUT,
                    log_tail(&dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        Ok(Mosquitto {
            child,
            dir,
            broker: Broker {
                port,
                tls: Arc::new(tls),
            },
            runs: AtomicU64::new(0),
        })
    }

    /// `pairs` publisher/subscriber pairs, `rate` messages/s in all, open loop.
    pub async fn one_to_one(
        &self,
        pairs: usize,
        rate: f64,
        duration: Duration,
        size: usize,
    ) -> anyhow::Result<RatePoint> {
        if pairs == 0 {
            bail!("1:1 chat needs at least one pair");
        }
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let topics: Vec<String> = (0..pairs)
            .map(|j| format!("bench/{run}/pair/{j}"))
            .collect();
        let plan = Plan {
            subscribers: (0..pairs)
                .map(|j| (format!("qb{run}r{j}"), topics[j].clone()))
                .collect(),
            publishers: (0..pairs).map(|j| format!("qb{run}s{j}")).collect(),
            topics,
            deliveries_per_message: 1,
        };
        self.run(plan, rate, duration, size).await
    }

    /// One publisher, `members` subscribers of one topic, `rate` messages/s.
    pub async fn fan_out(
        &self,
        members: usize,
        rate: f64,
        duration: Duration,
        size: usize,
    ) -> anyhow::Result<RatePoint> {
        if members == 0 {
            bail!("fan-out needs at least one member");
        }
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let topic = format!("bench/{run}/group");
        let plan = Plan {
            subscribers: (0..members)
                .map(|m| (format!("qb{run}m{m}"), topic.clone()))
                .collect(),
            publishers: vec![format!("qb{run}p")],
            topics: vec![topic],
            deliveries_per_message: members as u64,
        };
        self.run(plan, rate, duration, size).await
    }

    /// Stops mosquitto and removes its files.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SIGKILL: a clean exit would only write a database we are about to delete.
        self.child.kill().await.context("stopping mosquitto")?;
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))
    }

    /// Connects the plan's clients, offers the load, waits for it to drain,
    /// and closes everything again, whatever happened in between.
    async fn run(
        &self,
        plan: Plan,
        rate: f64,
        duration: Duration,
        size: usize,
    ) -> anyhow::Result<RatePoint> {
        let tally = Arc::new(Tally::default());
        // Each publisher's request channel holds its whole share of the run,
        // so a publish never waits for room: a slow broker shows as latency
        // from the due time, not as a scheduler that stops scheduling.
        let total = Schedule::new(rate, duration).total();
        let share = total.div_ceil(plan.publishers.len() as u64) as usize + 8;

        // Subscribers first: a message published before its subscription is
        // acknowledged would be lost, not late.
        let subscribers = self
            .broker
            .connect_all(
                plan.subscribers
                    .iter()
                    .map(|(id, topic)| Spec {
                        id: id.clone(),
                        clean_session: false,
                        topic: Some(topic.clone()),
                        capacity: 16,
                    })
                    .collect(),
                size,
                &tally,
            )
            .await;
        let subscribers = match subscribers {
            Ok(s) => s,
            Err(e) => {
                self.discard_sessions(&plan, size).await;
                return Err(e.context("connecting mosquitto subscribers"));
            }
        };
        let publishers = self
            .broker
            .connect_all(
                plan.publishers
                    .iter()
                    .map(|id| Spec {
                        id: id.clone(),
                        clean_session: true,
                        topic: None,
                        capacity: share,
                    })
                    .collect(),
                size,
                &tally,
            )
            .await;
        let publishers = match publishers {
            Ok(p) => p,
            Err(e) => {
                tally.closing.store(true, Ordering::Relaxed);
                close(subscribers).await;
                self.discard_sessions(&plan, size).await;
                return Err(e.context("connecting mosquitto publishers"));
            }
        };

        let mut schedule = Schedule::new(rate, duration);
        let start = schedule.due(0);
        let mut sent = 0u64;
        let mut errors = 0u64;
        while let Some(batch) = schedule.next_batch().await {
            for i in batch {
                let k = (i % publishers.len() as u64) as usize;
                let text = payload(stamp(schedule.due(i)), size);
                match publishers[k]
                    .client
                    .publish(plan.topics[k].as_str(), QoS::AtLeastOnce, false, text)
                    .await
                {
                    Ok(()) => sent += 1,
                    Err(_) => errors += 1,
                }
            }
        }

        // Wait for every delivery and every PUBACK, or give up at the deadline.
        let expected = sent * plan.deliveries_per_message;
        let drain = (2 * duration).max(Duration::from_secs(5));
        let deadline = Instant::now() + drain;
        while (tally.delivered.load(Ordering::Relaxed) < expected
            || tally.acked.load(Ordering::Relaxed) < sent)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tally.closing.store(true, Ordering::Relaxed);

        let delivered = tally.delivered.load(Ordering::Relaxed);
        // A publish never acknowledged within the drain has timed out.
        let unacked = sent.saturating_sub(tally.acked.load(Ordering::Relaxed));
        errors += tally.errors.load(Ordering::Relaxed) + unacked;
        let delivered_per_s = match tally.last_delivery(start) {
            Some(span) if !span.is_zero() => delivered as f64 / span.as_secs_f64(),
            _ => 0.0,
        };
        let point = RatePoint {
            offered_per_s: rate,
            delivered_per_s,
            sent,
            delivered,
            errors,
            latency: Latency::of(&tally.recorder.snapshot()),
        };

        close(publishers).await;
        close(subscribers).await;
        self.discard_sessions(&plan, size).await;
        Ok(point)
    }

    /// Ends the subscribers' persistent sessions. A session outlives its
    /// connection, with whatever is still queued for it, and MQTT 3.1.1 ends
    /// one only when its client connects again with a clean session; without
    /// this, every run would leave its backlog in the broker for the next.
    async fn discard_sessions(&self, plan: &Plan, size: usize) {
        let tally = Arc::new(Tally::default());
        tally.closing.store(true, Ordering::Relaxed);
        let specs = plan
            .subscribers
            .iter()
            .map(|(id, _)| Spec {
                id: id.clone(),
                clean_session: true,
                topic: None,
                capacity: 4,
            })
            .collect();
        match self.broker.connect_all(specs, size, &tally).await {
            Ok(conns) => close(conns).await,
            Err(e) => eprintln!("warning: ending mosquitto's bench sessions: {e:#}"),
        }
    }
}

/// The clients of one run and where each publisher sends.
struct Plan {
    /// Client id and topic of each subscriber.
    subscribers: Vec<(String, String)>,
    /// Client ids of the publishers; message `i` goes out through publisher
    /// `i % publishers.len()`.
    publishers: Vec<String>,
    /// The topic each publisher sends to.
    topics: Vec<String>,
    /// Subscribers that receive each message.
    deliveries_per_message: u64,
}

/// One client to connect.
struct Spec {
    id: String,
    clean_session: bool,
    /// Subscribe to this topic (QoS 1); the client is ready at its SUBACK
    /// rather than its CONNACK.
    topic: Option<String>,
    /// Requests the client may queue before `publish` waits.
    capacity: usize,
}

/// A connected client and the task that drives its connection.
struct Conn {
    client: AsyncClient,
    task: JoinHandle<()>,
}

/// What the connections of one run observed.
#[derive(Default)]
struct Tally {
    recorder: Recorder,
    delivered: AtomicU64,
    /// PUBACKs received by publishers.
    acked: AtomicU64,
    /// Connection errors and undecodable deliveries.
    errors: AtomicU64,
    /// When the latest delivery arrived, in nanoseconds since `base`.
    last_ns: AtomicU64,
    base: Base,
    /// Set once the run is over: errors from here on are the teardown's.
    closing: AtomicBool,
}

/// The instant a [`Tally`] was made, to store delivery times in an atomic.
struct Base(Instant);

impl Default for Base {
    fn default() -> Self {
        Base(Instant::now())
    }
}

impl Tally {
    fn deliver(&self, body: &[u8]) {
        match parse_stamp(body) {
            Some(s) => {
                self.recorder.record(since(s));
                let now = self.base.0.elapsed().as_nanos() as u64;
                self.last_ns.fetch_max(now, Ordering::Relaxed);
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Time from `start` to the latest delivery, if there was one.
    fn last_delivery(&self, start: Instant) -> Option<Duration> {
        if self.delivered.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let last = self.base.0 + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
        Some(last.saturating_duration_since(start))
    }
}

impl Broker {
    /// Connects every client of `specs`, a few at a time, in order. If one
    /// fails, those already connected are closed again and the error returned.
    async fn connect_all(
        &self,
        specs: Vec<Spec>,
        size: usize,
        tally: &Arc<Tally>,
    ) -> anyhow::Result<Vec<Conn>> {
        let n = specs.len();
        let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let mut set = JoinSet::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let broker = self.clone();
            let permits = permits.clone();
            let tally = tally.clone();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (i, broker.connect(spec, size, tally).await)
            });
        }
        let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
        let mut failure = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Ok(conn))) => conns[i] = Some(conn),
                Ok((_, Err(e))) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(anyhow!("connecting task failed: {e}"));
                }
            }
        }
        let conns: Vec<Conn> = conns.into_iter().flatten().collect();
        if let Some(e) = failure {
            // No run took place, so the teardown's errors count for nothing.
            tally.closing.store(true, Ordering::Relaxed);
            close(conns).await;
            return Err(e);
        }
        Ok(conns)
    }

    /// Connects one client and waits until it is ready: connected, and for a
    /// subscriber, subscribed.
    async fn connect(&self, spec: Spec, size: usize, tally: Arc<Tally>) -> anyhow::Result<Conn> {
        let mut options = MqttOptions::new(spec.id.clone(), "127.0.0.1", self.port);
        // The packet limits apply to the payload plus topic and header.
        let max_packet = (size + 1024).max(10 * 1024);
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                self.tls.clone(),
            )))
            .set_clean_session(spec.clean_session)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(CLIENT_INFLIGHT)
            .set_max_packet_size(max_packet, max_packet);
        let (client, mut eventloop) = AsyncClient::new(options, spec.capacity.max(1));
        let mut network = NetworkOptions::new();
        // Small messages must not wait for Nagle's algorithm; quince's QUIC
        // streams do not either.
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(SETUP_TIMEOUT.as_secs());
        eventloop.set_network_options(network);

        let subscriber = spec.topic.is_some();
        if let Some(topic) = spec.topic {
            // Queued now, sent by the event loop right after CONNACK.
            client
                .subscribe(topic, QoS::AtLeastOnce)
                .await
                .with_context(|| format!("{}: subscribing", spec.id))?;
        }
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(drive(eventloop, subscriber, ready_tx, tally));
        let ready = tokio::time::timeout(SETUP_TIMEOUT, ready_rx).await;
        match ready {
            Ok(Ok(Ok(()))) => Ok(Conn { client, task }),
            Ok(Ok(Err(e))) => Err(e.context(spec.id)),
            Ok(Err(_)) => Err(anyhow!(
                "{}: connection task ended before it was ready",
                spec.id
            )),
            Err(_) => {
                task.abort();
                Err(anyhow!(
                    "{}: mosquitto did not acknowledge within {:?}",
                    spec.id,
                    SETUP_TIMEOUT
                ))
            }
        }
    }
}

/// Drives one client's connection until it has sent DISCONNECT: reports
/// readiness once, counts PUBACKs, records deliveries. After a connection
/// error mid-run it polls again, which makes rumqttc reconnect (resuming the
/// session of a persistent subscriber).
async fn drive(
    mut eventloop: EventLoop,
    subscriber: bool,
    ready: oneshot::Sender<anyhow::Result<()>>,
    tally: Arc<Tally>,
) {
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => tally.deliver(&publish.payload),
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                tally.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) if !subscriber => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(ready) = ready.take() {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure));
                    let _ = ready.send(if refused {
                        Err(anyhow!("mosquitto refused the subscription"))
                    } else {
                        Ok(())
                    });
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(anyhow!(e)));
                    return;
                }
                if tally.closing.load(Ordering::Relaxed) {
                    return;
                }
                tally.errors.fetch_add(1, Ordering::Relaxed);
                // Not a busy loop while the broker is unreachable.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Disconnects clients and waits for their tasks, aborting any that hang.
async fn close(conns: Vec<Conn>) {
    for conn in &conns {
        // Fails only if the task has already ended; there is nothing to close then.
        let _ = conn.client.try_disconnect();
    }
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    for conn in conns {
        let mut task = conn.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// The broker's configuration. `dir` holds the certificate, the database and the log.
fn config(dir: &str, port: u16, as_root: bool) -> String {
    let user = if as_root {
        // Run as root, mosquitto switches to the `mosquitto` user, which
        // cannot read our key or write our directory; stay who we are.
        "user root\n"
    } else {
        // Ignored by mosquitto when not run as root.
        ""
    };
    format!(
        "# Written by `quince bench` and removed when it ends.
{user}listener {port} 127.0.0.1
certfile {dir}/server.crt
keyfile {dir}/server.key
allow_anonymous true

# Messages and sessions are kept in memory and saved to mosquitto.db here
# every autosave_interval (default 1800 s) and on exit; there is no per-message
# write or fsync.
persistence true
persistence_location {dir}/

# Defaults are 20 in flight and 1000 queued per client, and mosquitto silently
# drops QoS 1 messages beyond the queue. quince's store never drops what it
# has acknowledged, so a queue limit would turn overload into loss where quince
# shows latency. No queue limit (0), then, and a window of 1000 unacknowledged
# messages per subscriber, like the client's, so the window is not what limits
# throughput over loopback.
max_inflight_messages 1000
max_queued_messages 0

# Deliveries go out at once rather than waiting to be coalesced (Nagle).
set_tcp_nodelay true

log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
# Each fan-out step connects hundreds of clients; their comings and goings
# would drown whatever else the log says.
connection_messages false
"
    )
}

/// Whether this process runs as root (the owner of /proc/self is its effective user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A loopback port nobody listens on now. Another process could take it
/// before mosquitto does; then mosquitto fails to start and says so.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last lines of mosquitto's log and console output, for error messages.
fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["mosquitto.log", "console.log"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        if !tail.is_empty() {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                path.display(),
                tail.join("\n")
            ));
        }
    }
    if out.is_empty() {
        out.push_str("(mosquitto wrote no log)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run with `cargo test --bin quince mosquitto -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "needs /usr/sbin/mosquitto"]
    async fn runs_against_mosquitto() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Mosquitto::start(dir.path()).await.expect("start");
        let one = m
            .one_to_one(8, 2000.0, Duration::from_secs(2), 100)
            .await
            .expect("one_to_one");
        println!("one_to_one: {one:?}");
        assert_eq!(one.delivered, one.sent);
        let fan = m
            .fan_out(50, 100.0, Duration::from_secs(2), 100)
            .await
            .expect("fan_out");
        println!("fan_out: {fan:?}");
        assert_eq!(fan.delivered, fan.sent * 50);
        m.stop().await.expect("stop");
    }
}
