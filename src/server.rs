//! The daemon: binds the QUIC endpoint, accepts connections, and shuts down cleanly.
//!
//! Shutdown story: when the shutdown future resolves the endpoint stops
//! accepting, every connection stops reading new requests and finishes the ones
//! it has (their commits are answered), connections are closed with the
//! `shutdown` code, and the store's writer commits what is queued and exits.
//! A power loss (see [`crate::power`]) takes the same path, after first
//! refusing new writes for a second so clients hear `shutting_down`, and
//! [`Server::run`] then says so, for `quince serve` to exit with
//! [`EXIT_POWER_OFF`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::{self, Throttle};
use crate::config::Config;
use crate::connection;
use crate::hub::Hub;
use crate::power::{Decision, Monitor};
use crate::protocol::{ALPN, Event, PowerNotice, PowerState, close, encode_event};
use crate::store::{Store, StoreError, WriteOp, WriteOutcome, WriterThread};
use crate::tls::{self, TlsError};
use crate::udp;
use crate::watchdog::Watchdog;

/// File in the data directory holding the first-start admin invite until it is used.
pub const ADMIN_INVITE_FILE: &str = "admin-invite.txt";
/// File name of the database inside the data directory.
pub const DB_FILE: &str = "quince.redb";
/// Lifetime of the first-start admin invite.
const ADMIN_INVITE_TTL_MS: u64 = 30 * 24 * 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every connection shares.
pub struct State {
    pub store: Store,
    pub hub: Hub,
    pub throttle: Throttle,
    pub config: Config,
    pub started: Instant,
    pub connections: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    /// The power state and, on battery, when the server will shut down.
    power: std::sync::Mutex<(PowerState, Option<tokio::time::Instant>)>,
    /// One backup at a time, and the schedule's last outcome.
    pub backups: crate::backup::Backups,
    /// Who is online, away or offline (in memory only).
    pub presence: crate::presence::Presence,
    /// Typing indicators passed on (nothing stored).
    pub typing: crate::typing::Typing,
    /// Attachment files: uploads, the blob store, its garbage collection.
    pub attachments: crate::attachment::Attachments,
}

impl State {
    /// The power state as clients are told it.
    pub fn power_notice(&self) -> PowerNotice {
        let (state, deadline) = *self.power.lock().unwrap_or_else(|e| e.into_inner());
        PowerNotice {
            state,
            shutdown_in_secs: deadline.map(|d| {
                d.saturating_duration_since(tokio::time::Instant::now())
                    .as_secs()
            }),
        }
    }

    /// Records a new power state and tells every online device.
    fn set_power(&self, state: PowerState, shutdown_in: Option<Duration>) {
        let deadline = shutdown_in.map(|d| tokio::time::Instant::now() + d);
        *self.power.lock().unwrap_or_else(|e| e.into_inner()) = (state, deadline);
        let notice = PowerNotice {
            state,
            shutdown_in_secs: shutdown_in.map(|d| d.as_secs()),
        };
        self.hub
            .broadcast(encode_event(&Event::Power(notice)).into());
    }
}

/// Why [`Server::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The stop future resolved (SIGTERM, SIGINT, a test).
    Requested,
    /// The UPS battery is running out (or the grace time on battery did):
    /// the machine should be powered off. `quince serve` then exits with
    /// [`EXIT_POWER_OFF`].
    PowerLoss,
}

/// Exit status of `quince serve` after a power-loss shutdown: everything is
/// committed and synced, and whoever supervises quince (the appliance's
/// `quince-service`) should power the machine off now.
pub const EXIT_POWER_OFF: i32 = 3;

/// Between refusing writes and closing connections on a power loss: long
/// enough for clients to hear "shutting down" rather than a dropped connection.
const POWER_OFF_NOTICE: Duration = Duration::from_secs(1);

/// A bound, ready server.
pub struct Server {
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    writer: WriterThread,
    shutdown: watch::Sender<bool>,
    /// SHA-256 of the served certificate, for clients to compare.
    pub fingerprint: String,
    /// True when this start created the self-signed certificate.
    pub new_certificate: bool,
    /// The admin invite, when this start created it (empty data directory).
    pub admin_invite: Option<String>,
    watchdog: Option<Watchdog>,
}

/// What [`prepare`] reports about a data directory.
#[derive(Debug)]
pub struct Prepared {
    /// SHA-256 of the certificate the server will present.
    pub fingerprint: String,
    /// The admin invite, when no account exists yet and it is still unused:
    /// made by this call on an empty store, or read back from the file an
    /// earlier start wrote.
    pub pending_invite: Option<String>,
}

/// Prepares a data directory without serving: the store, the certificate and,
/// on an empty store, the admin invite. The appliance runs this at boot so it
/// can show the owner the fingerprint and invite before the server starts.
pub async fn prepare(config: &Config) -> Result<Prepared, ServerError> {
    let dir = &config.data_dir;
    let opened = DataDir::open(config).await?;
    drop(opened.store);
    tokio::task::spawn_blocking(move || opened.writer.join())
        .await
        .map_err(|e| ServerError::DataDir {
            path: dir.display().to_string(),
            source: std::io::Error::other(e),
        })?;
    let pending_invite = opened.admin_invite.or_else(|| {
        std::fs::read_to_string(dir.join(ADMIN_INVITE_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    Ok(Prepared {
        fingerprint: opened.identity.fingerprint(),
        pending_invite,
    })
}

/// A data directory made ready: the store open, the certificate loaded or
/// made, and the admin invite made if the store was empty.
struct DataDir {
    store: Store,
    writer: WriterThread,
    identity: tls::Identity,
    new_certificate: bool,
    admin_invite: Option<String>,
}

impl DataDir {
    async fn open(config: &Config) -> Result<DataDir, ServerError> {
        let dir = &config.data_dir;
        create_private_dir(dir)?;
        let (store, writer) =
            Store::open(&dir.join(DB_FILE), config.cache_mb.max(1) * 1024 * 1024)?;
        let configured = config.cert.as_deref().zip(config.key.as_deref());
        let (identity, new_certificate) = tls::load_or_create(dir, configured)?;
        let admin_invite = bootstrap_invite(&store, dir).await?;
        Ok(DataDir {
            store,
            writer,
            identity,
            new_certificate,
            admin_invite,
        })
    }
}

impl Server {
    /// Prepares the data directory, store and certificate, and binds the UDP socket.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let DataDir {
            store,
            writer,
            identity,
            new_certificate,
            admin_invite,
        } = DataDir::open(&config).await?;
        let fingerprint = identity.fingerprint();

        let suites = tls::choose_suites(config.tls_prefer, tls::cpu_has_aes());
        tracing::info!(
            preferred = suites.preferred(),
            reason = suites.reason,
            "TLS cipher suite order"
        );
        let mut crypto = rustls::ServerConfig::builder_with_provider(tls::provider_for(suites))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::from)?
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)
            .map_err(TlsError::from)?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        // A server without AES instructions picks ChaCha20 even for a client
        // that lists AES-GCM first: the client (a PC) handles either quickly,
        // the server would not. With AES, the client's order wins, so a Pi 4
        // client still gets the ChaCha20 it asks for.
        crypto.ignore_client_order = suites.chacha_first;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server_config.transport_config(Arc::new(transport()));
        let endpoint = udp::endpoint(config.listen, Some(server_config)).map_err(|source| {
            ServerError::Bind {
                addr: config.listen,
                source,
            }
        })?;

        let watchdog = config.watchdog.as_deref().and_then(|path| {
            let timeout = Duration::from_secs(config.watchdog_timeout_secs);
            // Serving without a watchdog beats not serving: a device that is
            // missing or will not arm is reported, once, and left alone.
            match Watchdog::open(path, timeout) {
                Ok(Some(w)) => {
                    tracing::info!(device = %path.display(), timeout_secs = w.timeout.as_secs(), "watchdog armed");
                    Some(w)
                }
                Ok(None) => {
                    tracing::warn!(device = %path.display(), "no watchdog device; running without one");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "running without a watchdog");
                    None
                }
            }
        });

        let attachments =
            crate::attachment::Attachments::open(&config.data_dir).map_err(|source| {
                ServerError::DataDir {
                    path: config
                        .data_dir
                        .join(crate::attachment::DIR)
                        .display()
                        .to_string(),
                    source,
                }
            })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (presence, typing) = (config.presence, config.typing);
        let state = Arc::new(State {
            store,
            hub: Hub::default(),
            throttle: Throttle::default(),
            config,
            started: Instant::now(),
            connections: AtomicU64::new(0),
            shutdown: shutdown_rx,
            power: Default::default(),
            backups: Default::default(),
            presence: crate::presence::Presence::new(presence),
            typing: crate::typing::Typing::new(typing),
            attachments,
        });
        Ok(Server {
            endpoint,
            state,
            writer,
            shutdown,
            fingerprint,
            new_certificate,
            admin_invite,
            watchdog,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `stop` resolves or the UPS says the power is running out,
    /// then shuts down cleanly.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Stopped {
        let Server {
            endpoint,
            state,
            writer,
            shutdown,
            watchdog,
            ..
        } = self;
        let mut connections = JoinSet::new();
        let trimmer = tokio::spawn(return_free_memory());
        let backups = tokio::spawn(crate::backup::schedule(state.clone()));
        let collector = tokio::spawn(crate::attachment::collect_garbage(state.clone()));
        let watchdog = watchdog.map(Arc::new);
        let petter = watchdog
            .clone()
            .map(|w| tokio::spawn(pet_watchdog(w, state.store.clone())));
        let mut power = Monitor::start(&state.config.power);
        let mut stopped = Stopped::Requested;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                decision = power.next() => match decision {
                    Decision::Changed { state: now, shutdown_in } => {
                        state.set_power(now, shutdown_in);
                    }
                    Decision::ShutDown(reason) => {
                        tracing::warn!(?reason, "power is running out: no more writes; shutting down");
                        state.store.close_writes();
                        state.set_power(PowerState::ShuttingDown, None);
                        tokio::time::sleep(POWER_OFF_NOTICE).await;
                        stopped = Stopped::PowerLoss;
                        break;
                    }
                },
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if connections.len() >= state.config.max_connections {
                        tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                        incoming.refuse();
                        continue;
                    }
                    connections.spawn(connection::handle(state.clone(), incoming));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        tracing::info!(
            connections = connections.len(),
            "shutting down: no new connections"
        );
        endpoint.set_server_config(None);
        trimmer.abort();
        backups.abort();
        collector.abort();
        let _ = shutdown.send(true);
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still busy after 10 s; closing them");
            connections.shutdown().await;
        }
        endpoint.close(close::SHUTDOWN.into(), b"server shutting down");
        crate::presence::shutting_down(&state).await;
        drop(state);
        let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
        // Stop petting before the store closes (the petter holds a store
        // handle, and the writer's exit is not a hang); one last pet gives the
        // final commits a whole timeout.
        if let Some(petter) = petter {
            petter.abort();
            let _ = petter.await;
        }
        if let Some(watchdog) = &watchdog {
            watchdog.pet();
        }
        // The writer exits once the last store handle is gone, after committing its queue.
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || writer.join()),
        )
        .await;
        if let Some(watchdog) = watchdog.and_then(Arc::into_inner) {
            watchdog.disarm();
            tracing::info!("watchdog disarmed");
        }
        tracing::info!("stopped");
        stopped
    }
}

/// Transport limits sized for many mostly idle phones on a small board.
fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(60_000).into()));
    // The control stream, plus room for later features' streams.
    t.max_concurrent_bidi_streams(8u32.into());
    // Clients open unidirectional streams only to upload attachments.
    t.max_concurrent_uni_streams(4u32.into());
    t.stream_receive_window(quinn::VarInt::from_u32(512 * 1024));
    t.receive_window(quinn::VarInt::from_u32(1024 * 1024));
    t.send_window(1024 * 1024);
    t
}

fn create_private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| ServerError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    Ok(())
}

/// On an empty store, makes the one-time admin invite and writes it to a file
/// in the data directory. Once an account exists the file is removed.
async fn bootstrap_invite(store: &Store, dir: &Path) -> Result<Option<String>, ServerError> {
    let file = dir.join(ADMIN_INVITE_FILE);
    let (token, token_hash) = auth::new_token();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        + ADMIN_INVITE_TTL_MS;
    match store
        .write(WriteOp::Bootstrap {
            token_hash,
            expires,
        })
        .await?
    {
        WriteOutcome::Bootstrapped(true) => {
            tls::write_private(&file, format!("{token}\n").as_bytes())?;
            Ok(Some(token))
        }
        _ => {
            if store.counts()?.0 > 0 {
                let _ = std::fs::remove_file(&file);
            }
            Ok(None)
        }
    }
}

/// Pets the watchdog while the server is healthy: this task runs (the
/// runtime answers) and the store's writer is not stuck in a commit.
async fn pet_watchdog(watchdog: Arc<Watchdog>, store: Store) {
    let mut tick = tokio::time::interval(watchdog.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = watchdog.timeout / 2;
    let mut warned = false;
    loop {
        tick.tick().await;
        let stalled = store.stalled_for();
        if store.writer_alive() && stalled.is_none_or(|d| d < limit) {
            watchdog.pet();
            warned = false;
        } else if !warned {
            tracing::error!(
                stalled_ms = stalled.map(|d| d.as_millis() as u64),
                "the store is not committing; no longer petting the watchdog, the machine will reset"
            );
            warned = true;
        }
    }
}

/// How often freed heap memory is handed back to the kernel.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Hands memory the allocator holds but no longer uses back to the kernel.
///
/// glibc's malloc keeps freed memory in its arenas for reuse. After a burst
/// (thousands of TLS handshakes when every device reconnects, a big catch-up)
/// that can be hundreds of megabytes the server will not need again soon, and
/// on a Raspberry Pi the page cache wants it. `malloc_trim` returns the free
/// pages (after 20,000 clients left, RSS fell from 736 MiB to under 100 MiB);
/// it runs on a blocking thread so it never stalls the runtime.
async fn return_free_memory() {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages of glibc's own heap;
        // it takes the allocator's locks itself and touches no live allocation.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}
