//! The async client library an app embeds.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quince::client::ClientError> {
//! use quince::client::{Client, Trust};
//! use quince::protocol::Target;
//! let client = Client::connect("127.0.0.1:4433".parse().unwrap(), Trust::FirstUse).await?;
//! println!("pin this fingerprint: {}", client.fingerprint());
//! client.login("alice", "correct horse", "laptop").await?;
//! let mut inbox = client.subscribe().await?;
//! client.send(Target::User("bob".into()), "hello", None).await?;
//! while let Some(message) = inbox.recv().await {
//!     println!("{}: {:?}", message.from, message.body);
//! }
//! # Ok(()) }
//! ```
//!
//! [`Client::subscribe`] gives every message of every conversation exactly
//! once and in order per conversation: it syncs what was missed, then follows
//! the live event stream, fills any gap from history, and acknowledges what it
//! has handed over so the server's cursor for this device moves on. Messages
//! this device sent itself are not echoed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::protocol::{
    self, ALPN, AttachmentRef, BackupReady, ConvList, Created, Done, ErrorBody, ErrorCode, Event,
    Invite, MID_LEN, Members, Message, Page, PowerNotice, Receipts, Reply, Request, Role, SendAck,
    Session, Status, Target, Users,
};
use crate::stream::{self, FrameReader};
use crate::tls::PinVerifier;
pub use crate::tls::Trust;

mod transfer;
pub use transfer::{TransferError, part_path};

/// Messages queued for the app before the client stops reading events.
const INBOX: usize = 1024;
/// Events other than messages kept for a slow reader of [`Client::events`]
/// before it starts missing the oldest (they are ephemeral by nature).
const EVENTS: usize = 1024;
/// Longest wait before what was handed to the app is acknowledged.
const ACK_DELAY: Duration = Duration::from_millis(50);
/// Page size used when catching up.
const SYNC_PAGE: u32 = 500;
/// Requests queued for the control stream before callers wait for room.
const CONTROL_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(
        "the server's certificate changed: pinned fingerprint {expected}, server presented {got}. \
         If the server was reinstalled on purpose, remove its entry from your known servers; \
         otherwise someone may be intercepting the connection"
    )]
    FingerprintChanged { expected: String, got: String },
    #[error("{}: {}", code_name(.code), .message)]
    Server {
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the connection is closed")]
    Closed,
    #[error("local socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
}

fn code_name(code: &ErrorCode) -> String {
    match ciborium::Value::serialized(code) {
        Ok(ciborium::Value::Text(t)) => t,
        _ => format!("{code:?}"),
    }
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// Shared between the client handle and its background tasks.
struct Inner {
    conn: quinn::Connection,
    /// Frames for the control stream; a task writes them in order, batched.
    control: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    /// This connection's device id once logged in.
    device: AtomicU64,
    /// Per-conversation cursors of the subscribed inbox, shared so that `send`
    /// can move past this device's own messages.
    cursors: Mutex<Option<HashMap<u64, u64>>>,
    /// The server's power state, from its `power` events.
    power: watch::Sender<PowerNotice>,
    /// Every other event (receipts, presence, typing, deletions), for the app.
    events: broadcast::Sender<Event>,
    /// The server's unidirectional streams, sorted once something needs them;
    /// the sender ends the sorting task when the client is dropped, so its
    /// handle of the connection does not keep the connection open.
    streams: std::sync::OnceLock<(Arc<Streams>, oneshot::Sender<()>)>,
}

/// A data stream's reader, and the bytes read past its header frame.
type DataStream = (quinn::RecvStream, bytes::Bytes);

/// Server-opened unidirectional streams, sorted by their first frame: the
/// event stream (events), or a data stream (a [`protocol::StreamHeader`]
/// naming the request it answers, e.g. `admin_backup`).
struct Streams {
    events: tokio::sync::Mutex<mpsc::Receiver<FrameReader>>,
    data: Mutex<HashMap<u64, oneshot::Sender<DataStream>>>,
}

/// Accepts the server's unidirectional streams and hands each to whoever
/// waits for it; runs until the connection ends.
async fn route_streams(
    conn: quinn::Connection,
    events: mpsc::Sender<FrameReader>,
    to: Arc<Streams>,
    mut dropped: oneshot::Receiver<()>,
) {
    loop {
        let recv = tokio::select! {
            _ = &mut dropped => return,
            recv = conn.accept_uni() => match recv {
                Ok(recv) => recv,
                Err(_) => return,
            },
        };
        let (events, to) = (events.clone(), to.clone());
        tokio::spawn(async move {
            let mut reader = FrameReader::new(recv);
            let header = match reader.peek().await {
                Ok(Some(first)) => protocol::decode_stream_header(first),
                _ => None,
            };
            match header {
                Some(header) => {
                    let _ = reader.next().await;
                    let waiter = to
                        .data
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&header.id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(reader.into_parts());
                    }
                }
                None => {
                    let _ = events.send(reader).await;
                }
            }
        });
    }
}

/// A connection to a quince server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    fingerprint: String,
    // Keeps the UDP socket alive as long as the client.
    _endpoint: quinn::Endpoint,
}

/// Makes a client endpoint (one UDP socket) that many [`Client`]s can share.
pub fn endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    Ok(crate::udp::endpoint(bind, None)?)
}

fn client_config(verifier: Arc<PinVerifier>) -> Result<quinn::ClientConfig, ClientError> {
    let mut crypto = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(15)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(60_000).into()));
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(4u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

impl Client {
    /// Connects from a fresh local socket.
    pub async fn connect(addr: SocketAddr, trust: Trust) -> Result<Client, ClientError> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .expect("literal");
        Client::connect_on(&endpoint(bind)?, addr, trust).await
    }

    /// Connects over an existing endpoint (so thousands of clients can share a few sockets).
    pub async fn connect_on(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        trust: Trust,
    ) -> Result<Client, ClientError> {
        let verifier = PinVerifier::new(trust.clone());
        let config = client_config(verifier.clone())?;
        let conn = match endpoint.connect_with(config, addr, "quince")?.await {
            Ok(conn) => conn,
            Err(e) => {
                if let (Trust::Pinned(expected), Some(got)) = (&trust, verifier.seen())
                    && !expected.eq_ignore_ascii_case(&got)
                {
                    return Err(ClientError::FingerprintChanged {
                        expected: expected.clone(),
                        got,
                    });
                }
                return Err(e.into());
            }
        };
        let fingerprint = verifier
            .seen()
            .ok_or_else(|| ClientError::Tls("no server certificate seen".into()))?;
        let (send, recv) = conn.open_bi().await?;
        let pending: Pending = Arc::default();
        tokio::spawn(read_replies(recv, pending.clone()));
        let (control, mut frames) = mpsc::channel::<Vec<u8>>(CONTROL_QUEUE);
        tokio::spawn(async move {
            let mut send = send;
            if stream::write_frames(&mut send, &mut frames).await {
                let _ = send.finish();
            }
        });
        let inner = Arc::new(Inner {
            conn,
            control,
            pending,
            next_id: AtomicU64::new(1),
            device: AtomicU64::new(0),
            cursors: Mutex::new(None),
            power: watch::Sender::new(PowerNotice::default()),
            events: broadcast::Sender::new(EVENTS),
            streams: std::sync::OnceLock::new(),
        });
        Ok(Client {
            inner,
            fingerprint,
            _endpoint: endpoint.clone(),
        })
    }

    /// SHA-256 fingerprint of the server's certificate (hex), to pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Sends a request and waits for its result.
    pub async fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        call(&self.inner, request).await
    }

    /// Sends raw bytes on the control stream (for tests of the server's handling of bad input).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.inner
            .control
            .send(bytes.to_vec())
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Waits for the reply with this id (after [`Client::send_raw`]).
    pub async fn expect_reply(&self, id: u64) -> Result<ciborium::Value, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        into_result(rx.await.map_err(|_| self.closed_error())?)
    }

    fn closed_error(&self) -> ClientError {
        closed_error(&self.inner.conn)
    }

    fn logged_in(&self, session: Session) -> Session {
        self.inner.device.store(session.device, Ordering::Relaxed);
        session
    }

    pub async fn register(
        &self,
        invite: &str,
        username: &str,
        password: &str,
        device: &str,
    ) -> Result<Session, ClientError> {
        let req = Request::Register {
            invite: invite.into(),
            username: username.into(),
            password: password.into(),
            device: device.into(),
        };
        Ok(self.logged_in(self.call(req).await?))
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device: &str,
    ) -> Result<Session, ClientError> {
        let req = Request::Login {
            username: username.into(),
            password: password.into(),
            device: device.into(),
        };
        Ok(self.logged_in(self.call(req).await?))
    }

    pub async fn resume(&self, token: &str) -> Result<Session, ClientError> {
        Ok(self.logged_in(
            self.call(Request::Resume {
                token: token.into(),
            })
            .await?,
        ))
    }

    /// Revokes this device's token.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.call::<Done>(Request::Logout {}).await.map(|_| ())
    }

    pub async fn whoami(&self) -> Result<Session, ClientError> {
        self.call(Request::Whoami {}).await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call::<Done>(Request::Ping {}).await.map(|_| ())
    }

    /// Sends a text message with a fresh message id (see [`new_mid`]).
    pub async fn send(
        &self,
        to: Target,
        text: &str,
        ext: Option<Vec<u8>>,
    ) -> Result<SendAck, ClientError> {
        self.send_with_id(to, new_mid(), text, ext).await
    }

    /// Sends with a caller-chosen message id: retrying with the same id after a
    /// lost connection never stores the message twice.
    pub async fn send_with_id(
        &self,
        to: Target,
        mid: [u8; MID_LEN],
        text: &str,
        ext: Option<Vec<u8>>,
    ) -> Result<SendAck, ClientError> {
        let draft = Draft {
            text: text.into(),
            ext,
            ..Draft::default()
        };
        self.send_draft(to, mid, draft).await
    }

    /// Sends a message with everything a message can carry: a reply to an
    /// earlier message, an attachment, application data.
    pub async fn send_draft(
        &self,
        to: Target,
        mid: [u8; MID_LEN],
        draft: Draft,
    ) -> Result<SendAck, ClientError> {
        let (conv, user) = match to {
            Target::Conv(c) => (Some(c), None),
            Target::User(u) => (None, Some(u)),
        };
        let req = Request::Send {
            conv,
            user,
            mid: ByteBuf::from(mid.to_vec()),
            text: draft.text,
            ext: draft.ext.map(ByteBuf::from),
            reply_to: draft.reply_to,
            attachment: draft.attachment,
        };
        let ack: SendAck = self.call(req).await?;
        // Our own message is not echoed back: step the inbox past it.
        if let Some(cursors) = self
            .inner
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let cursor = cursors.entry(ack.conv).or_insert(0);
            if *cursor + 1 == ack.seq {
                *cursor = ack.seq;
            }
        }
        Ok(ack)
    }

    /// Conversations with messages this device has not acknowledged.
    pub async fn sync(&self) -> Result<ConvList, ClientError> {
        self.call(Request::Sync {}).await
    }

    pub async fn conversations(&self) -> Result<ConvList, ClientError> {
        self.call(Request::Conversations {}).await
    }

    /// Messages after `after` (forwards), or before `before` (backwards; both
    /// `None` for the newest page), in ascending order.
    pub async fn history(
        &self,
        conv: u64,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Page, ClientError> {
        self.call(Request::History {
            conv,
            after,
            before,
            limit,
        })
        .await
    }

    pub async fn ack(&self, conv: u64, seq: u64) -> Result<(), ClientError> {
        self.call::<Done>(Request::Ack { conv, seq })
            .await
            .map(|_| ())
    }

    pub async fn group_create(&self, name: &str, members: &[&str]) -> Result<u64, ClientError> {
        let members = members.iter().map(|m| m.to_string()).collect();
        let created: Created = self
            .call(Request::GroupCreate {
                name: name.into(),
                members,
            })
            .await?;
        Ok(created.conv)
    }

    pub async fn group_add(&self, conv: u64, user: &str) -> Result<(), ClientError> {
        self.call::<Done>(Request::GroupAdd {
            conv,
            user: user.into(),
        })
        .await
        .map(|_| ())
    }

    pub async fn group_remove(&self, conv: u64, user: &str) -> Result<(), ClientError> {
        self.call::<Done>(Request::GroupRemove {
            conv,
            user: user.into(),
        })
        .await
        .map(|_| ())
    }

    pub async fn group_leave(&self, conv: u64) -> Result<(), ClientError> {
        self.call::<Done>(Request::GroupLeave { conv })
            .await
            .map(|_| ())
    }

    pub async fn group_members(&self, conv: u64) -> Result<Members, ClientError> {
        self.call(Request::GroupMembers { conv }).await
    }

    /// Owner: renames a group.
    pub async fn group_rename(&self, conv: u64, name: &str) -> Result<(), ClientError> {
        let req = Request::GroupRename {
            conv,
            name: name.into(),
        };
        self.call::<Done>(req).await.map(|_| ())
    }

    /// Owner: makes a member an admin.
    pub async fn group_promote(&self, conv: u64, user: &str) -> Result<(), ClientError> {
        let req = Request::GroupPromote {
            conv,
            user: user.into(),
        };
        self.call::<Done>(req).await.map(|_| ())
    }

    /// Owner: makes an admin a plain member.
    pub async fn group_demote(&self, conv: u64, user: &str) -> Result<(), ClientError> {
        let req = Request::GroupDemote {
            conv,
            user: user.into(),
        };
        self.call::<Done>(req).await.map(|_| ())
    }

    /// Owner: hands the group to another member (you stay on as an admin).
    pub async fn group_transfer(&self, conv: u64, user: &str) -> Result<(), ClientError> {
        let req = Request::GroupTransfer {
            conv,
            user: user.into(),
        };
        self.call::<Done>(req).await.map(|_| ())
    }

    /// Replaces the text of your message `seq` (within the server's edit window).
    pub async fn edit(&self, conv: u64, seq: u64, text: &str) -> Result<SendAck, ClientError> {
        self.call(Request::Edit {
            conv,
            seq,
            text: text.into(),
        })
        .await
    }

    /// Recalls message `seq`: yours within the recall window, or any in a
    /// group you own or administer. Its content is deleted on the server.
    pub async fn recall(&self, conv: u64, seq: u64) -> Result<SendAck, ClientError> {
        self.call(Request::Recall { conv, seq }).await
    }

    /// Adds (`add`) or removes an emoji reaction to message `seq`.
    pub async fn react(
        &self,
        conv: u64,
        seq: u64,
        emoji: &str,
        add: bool,
    ) -> Result<SendAck, ClientError> {
        self.call(Request::React {
            conv,
            seq,
            emoji: emoji.into(),
            remove: !add,
        })
        .await
    }

    /// Moves your read marker in `conv` to `seq`: your other devices and the
    /// other members get a `read` event; unread counts follow it.
    pub async fn mark_read(&self, conv: u64, seq: u64) -> Result<(), ClientError> {
        self.call::<Done>(Request::Read { conv, seq })
            .await
            .map(|_| ())
    }

    /// Every member's delivery and read markers in `conv`.
    pub async fn receipts(&self, conv: u64) -> Result<Receipts, ClientError> {
        self.call(Request::Receipts { conv }).await
    }

    /// Deletes `conv` from your view, on all your devices; the other members
    /// keep theirs. It comes back when a new message arrives.
    pub async fn delete_conversation(&self, conv: u64) -> Result<(), ClientError> {
        self.call::<Done>(Request::ConvDelete { conv })
            .await
            .map(|_| ())
    }

    pub async fn admin_invite(
        &self,
        role: Role,
        ttl_secs: Option<u64>,
    ) -> Result<Invite, ClientError> {
        self.call(Request::AdminInvite { role, ttl_secs }).await
    }

    pub async fn admin_users(&self) -> Result<Users, ClientError> {
        self.call(Request::AdminUsers {}).await
    }

    pub async fn admin_disable(&self, user: &str) -> Result<(), ClientError> {
        self.call::<Done>(Request::AdminDisable { user: user.into() })
            .await
            .map(|_| ())
    }

    pub async fn admin_enable(&self, user: &str) -> Result<(), ClientError> {
        self.call::<Done>(Request::AdminEnable { user: user.into() })
            .await
            .map(|_| ())
    }

    pub async fn admin_reset_password(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let req = Request::AdminResetPassword {
            user: user.into(),
            password: password.into(),
        };
        self.call::<Done>(req).await.map(|_| ())
    }

    pub async fn admin_status(&self) -> Result<Status, ClientError> {
        self.call(Request::AdminStatus {}).await
    }

    /// Admin: a consistent backup of the server (its store, certificate and
    /// key). The result streams the backup file; [`crate::backup::save`]
    /// writes it, and checks its length and SHA-256 as it does.
    pub async fn admin_backup(&self) -> Result<crate::backup::Download, ClientError> {
        let (ready, (recv, leftover)) = self
            .call_with_stream::<BackupReady>(Request::AdminBackup {}, "a backup")
            .await?;
        Ok(crate::backup::Download::new(ready, recv, leftover))
    }

    /// Sends a request whose bytes come on a data stream the server opens
    /// (`admin_backup`, `download`), and waits for both the result and the
    /// stream. `what` names the data in the error when no stream comes.
    pub(crate) async fn call_with_stream<T: DeserializeOwned>(
        &self,
        request: Request,
        what: &str,
    ) -> Result<(T, DataStream), ClientError> {
        let streams = self.streams();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let forget = || {
            streams
                .data
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
        };
        streams
            .data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let result: T = match call_as(&self.inner, id, request).await {
            Ok(result) => result,
            Err(e) => {
                forget();
                return Err(e);
            }
        };
        // The server opens the stream as it answers; it may come first.
        let stream = tokio::select! {
            stream = rx => stream.map_err(|_| self.closed_error())?,
            _ = self.inner.conn.closed() => return Err(self.closed_error()),
            _ = tokio::time::sleep(Duration::from_secs(60)) => {
                forget();
                return Err(ClientError::Protocol(format!(
                    "the server announced {what} but sent no stream for it"
                )));
            }
        };
        Ok((result, stream))
    }

    /// The sorter of the server's unidirectional streams, started on first use.
    fn streams(&self) -> Arc<Streams> {
        self.inner
            .streams
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel(4);
                let streams = Arc::new(Streams {
                    events: tokio::sync::Mutex::new(rx),
                    data: Mutex::default(),
                });
                let (alive, dropped) = oneshot::channel();
                tokio::spawn(route_streams(
                    self.inner.conn.clone(),
                    tx,
                    streams.clone(),
                    dropped,
                ));
                (streams, alive)
            })
            .0
            .clone()
    }

    /// Starts receiving: catches up on everything missed, then follows live
    /// events. Call once, after logging in. The receiver ends when the
    /// connection does; reconnect, resume and subscribe again to continue
    /// exactly where this device left off.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<Message>, ClientError> {
        // One round trip gives every conversation with this device's cursor;
        // those with messages past the cursor are what was missed.
        let all = self.conversations().await?.conversations;
        {
            let mut cursors = self.inner.cursors.lock().unwrap_or_else(|e| e.into_inner());
            let map = cursors.get_or_insert_with(HashMap::new);
            for c in &all {
                map.insert(c.conv, c.cursor);
            }
        }
        let missed = all.into_iter().filter(|c| c.last_seq > c.cursor).collect();
        let initial = ConvList {
            conversations: missed,
        };
        let (tx, rx) = mpsc::channel(INBOX);
        let (raw_tx, raw_rx) = mpsc::channel(INBOX);
        // The event stream reaches us with the first event the server writes
        // on it, so it is awaited in the background rather than here.
        let streams = self.streams();
        let power = self.inner.power.clone();
        let others = self.inner.events.clone();
        tokio::spawn(async move {
            let events = streams.events.lock().await.recv().await;
            if let Some(events) = events {
                read_events(events, raw_tx, power, others).await;
            }
        });
        let inbox = Inbox {
            inner: self.inner.clone(),
            out: tx,
        };
        tokio::spawn(inbox.run(initial, raw_rx));
        Ok(rx)
    }

    /// Events other than messages and power: read and delivery receipts,
    /// presence, typing, conversations deleted on another device. Like
    /// messages they flow once [`Client::subscribe`] has been called; a
    /// receiver that falls more than 1024 events behind misses the oldest.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The server's power state: `online` until the server says otherwise.
    /// Updated from the event stream, so only after [`Client::subscribe`].
    /// On battery, `shutdown_in_secs` says how long the server has left;
    /// an app can warn its user that sending will soon fail for a while.
    pub fn power(&self) -> watch::Receiver<PowerNotice> {
        self.inner.power.subscribe()
    }

    /// Closes the connection politely and waits (briefly) until the server
    /// has been told, so it does not keep the connection until its idle timeout.
    pub async fn close(&self) {
        self.inner
            .conn
            .close(protocol::close::NORMAL.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self._endpoint.wait_idle()).await;
    }

    /// Closes the connection without waiting: for many clients sharing one
    /// endpoint, where waiting for the endpoint to go idle would wait for all.
    pub fn close_now(&self) {
        self.inner
            .conn
            .close(protocol::close::NORMAL.into(), b"bye");
    }

    /// Waits until the server closes the connection, and returns why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.inner.conn.closed().await
    }
}

/// Presence and typing (docs/PROTOCOL.md §7.6). Their events (`presence`,
/// `typing`) come through [`Client::events`] once subscribed.
impl Client {
    /// Says whether this device is in use (`online`) or idle (`away`). Every
    /// device starts `online` when it logs in; `offline` is refused.
    pub async fn set_presence(&self, state: protocol::PresenceState) -> Result<(), ClientError> {
        self.call::<Done>(Request::SetPresence { state })
            .await
            .map(|_| ())
    }

    /// The presence of everyone this user shares a conversation with.
    pub async fn presence(&self) -> Result<protocol::PresenceList, ClientError> {
        self.call(Request::Presence {}).await
    }

    /// Tells the other members of `conv` that this user is typing (`active`)
    /// or stopped. Call it again every ~3 s while typing: receivers treat a
    /// notice as stopped after ~6 s without a refresh.
    pub async fn typing(&self, conv: u64, active: bool) -> Result<(), ClientError> {
        self.call::<Done>(Request::Typing { conv, active })
            .await
            .map(|_| ())
    }
}

/// A message to send: text, and optionally a reply, an attachment and
/// application data.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub text: String,
    /// Opaque application payload (up to [`protocol::MAX_EXT`] bytes).
    pub ext: Option<Vec<u8>>,
    /// Sequence number of the message this one answers.
    pub reply_to: Option<u64>,
    pub attachment: Option<AttachmentRef>,
}

/// A new message id laid out like a UUIDv7: 48 bits of Unix milliseconds, then
/// 80 random bits. Unique without coordination, and ids made later sort later,
/// so the server's index of message ids grows at its end instead of touching
/// a random page of the database for every message.
pub fn new_mid() -> [u8; MID_LEN] {
    let mut mid = [0u8; MID_LEN];
    rand::fill(&mut mid[6..]);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    mid[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    mid
}

fn closed_error(conn: &quinn::Connection) -> ClientError {
    match conn.close_reason() {
        Some(reason) => ClientError::Connection(reason),
        None => ClientError::Closed,
    }
}

fn into_result(reply: Reply) -> Result<ciborium::Value, ClientError> {
    match reply {
        Reply::Ok { result, .. } => Ok(result),
        Reply::Err {
            error:
                ErrorBody {
                    code,
                    message,
                    retry_after_ms,
                },
            ..
        } => Err(ClientError::Server {
            code,
            message,
            retry_after_ms,
        }),
    }
}

async fn call<T: DeserializeOwned>(inner: &Inner, request: Request) -> Result<T, ClientError> {
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    call_as(inner, id, request).await
}

/// [`call`] with an id the caller took from `next_id`.
async fn call_as<T: DeserializeOwned>(
    inner: &Inner,
    id: u64,
    request: Request,
) -> Result<T, ClientError> {
    let (tx, rx) = oneshot::channel();
    inner
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    let frame = protocol::encode_request(id, &request);
    if inner.control.send(frame).await.is_err() {
        inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        return Err(closed_error(&inner.conn));
    }
    // If the connection died before the reply-reader saw this request, no one
    // would ever answer or drop `rx`: wait on the connection's end too.
    let reply = tokio::select! {
        biased;
        reply = rx => reply.map_err(|_| closed_error(&inner.conn))?,
        _ = inner.conn.closed() => return Err(closed_error(&inner.conn)),
    };
    protocol::decode_result(into_result(reply)?).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Routes replies on the control stream to their waiting callers.
async fn read_replies(recv: quinn::RecvStream, pending: Pending) {
    let mut recv = FrameReader::new(recv);
    while let Ok(Some(body)) = recv.next().await {
        match protocol::decode_reply(&body) {
            Ok(reply) => {
                let id = match &reply {
                    Reply::Ok { id, .. } | Reply::Err { id, .. } => *id,
                };
                if let Some(tx) = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id)
                {
                    let _ = tx.send(reply);
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable reply from server"),
        }
    }
    // Dropping the senders wakes every waiting caller with "closed".
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

async fn read_events(
    mut recv: FrameReader,
    out: mpsc::Sender<Message>,
    power: watch::Sender<PowerNotice>,
    others: broadcast::Sender<Event>,
) {
    while let Ok(Some(body)) = recv.next().await {
        match protocol::decode_event(&body) {
            Ok(Event::Message(m)) => {
                if out.send(m).await.is_err() {
                    return;
                }
            }
            Ok(Event::Power(notice)) => {
                power.send_replace(notice);
            }
            Ok(other) => {
                // No receiver is fine: the app did not ask for these.
                let _ = others.send(other);
            }
            // Unknown event types are skipped, as the protocol asks.
            Err(e) => tracing::debug!(error = %e, "skipping an event this client does not know"),
        }
    }
}

/// Turns sync pages and live events into an exactly-once, in-order stream.
struct Inbox {
    inner: Arc<Inner>,
    out: mpsc::Sender<Message>,
}

impl Inbox {
    async fn run(self, initial: ConvList, mut live: mpsc::Receiver<Message>) {
        for conv in initial.conversations {
            if self.fill(conv.conv, conv.last_seq).await.is_err() {
                return;
            }
        }
        self.flush_acks(&mut HashMap::new());
        // Acknowledgements are coalesced: at most one per conversation every
        // ACK_DELAY, so a busy conversation does not cost a store write per message.
        let mut unacked: HashMap<u64, u64> = HashMap::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let message = tokio::select! {
                message = live.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    self.flush_acks(&mut unacked);
                    deadline = None;
                    continue;
                }
            };
            let (conv, seq) = (message.conv, message.seq);
            let cursor = self.cursor(conv);
            if seq <= cursor {
                continue;
            }
            if seq > cursor + 1 && self.fill(conv, seq - 1).await.is_err() {
                break;
            }
            if seq == self.cursor(conv) + 1 {
                if self.out.send(message).await.is_err() {
                    break;
                }
                self.set_cursor(conv, seq);
            }
            unacked.insert(conv, self.cursor(conv));
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + ACK_DELAY);
        }
        self.flush_acks(&mut unacked);
    }

    fn cursor(&self, conv: u64) -> u64 {
        let cursors = self.inner.cursors.lock().unwrap_or_else(|e| e.into_inner());
        cursors
            .as_ref()
            .and_then(|c| c.get(&conv).copied())
            .unwrap_or(0)
    }

    fn set_cursor(&self, conv: u64, seq: u64) {
        let mut cursors = self.inner.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cursors
            .get_or_insert_with(HashMap::new)
            .entry(conv)
            .or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Fetches and hands over everything in `conv` from the cursor up to `upto`.
    ///
    /// Pages are pipelined: the request for the next page goes out as soon as
    /// a page arrives, so the server prepares it while this one is handed
    /// over, and a long catch-up is not one round trip per page.
    async fn fill(&self, conv: u64, upto: u64) -> Result<(), ClientError> {
        let own = self.inner.device.load(Ordering::Relaxed);
        let cursor = self.cursor(conv);
        if cursor >= upto {
            return Ok(());
        }
        let mut next = Some(self.fetch_page(conv, cursor));
        while let Some(fetching) = next.take() {
            let page = fetching.await.map_err(|_| ClientError::Closed)??;
            let Some(last) = page.messages.last().map(|m| m.seq) else {
                // Nothing this user may read lies below `upto` (it was before
                // they joined, or they deleted it from their view).
                self.set_cursor(conv, upto);
                break;
            };
            if page.more && last < upto {
                next = Some(self.fetch_page(conv, last));
            }
            for message in page.messages {
                let seq = message.seq;
                if message.device != own && self.out.send(message).await.is_err() {
                    return Err(ClientError::Closed);
                }
                self.set_cursor(conv, seq);
            }
            let inner = self.inner.clone();
            tokio::spawn(
                async move { call::<Done>(&inner, Request::Ack { conv, seq: last }).await },
            );
        }
        Ok(())
    }

    /// Requests the page of `conv` after `after`, in the background.
    fn fetch_page(
        &self,
        conv: u64,
        after: u64,
    ) -> tokio::task::JoinHandle<Result<Page, ClientError>> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            call(
                &inner,
                Request::History {
                    conv,
                    after: Some(after),
                    before: None,
                    limit: SYNC_PAGE,
                },
            )
            .await
        })
    }

    fn flush_acks(&self, unacked: &mut HashMap<u64, u64>) {
        for (conv, seq) in unacked.drain() {
            let inner = self.inner.clone();
            tokio::spawn(async move { call::<Done>(&inner, Request::Ack { conv, seq }).await });
        }
    }
}
