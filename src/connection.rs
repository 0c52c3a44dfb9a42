//! One client connection: reads requests off the control stream, answers them,
//! and after login forwards the device's events on the event stream.
//!
//! Requests are read in order. Writes are queued to the store in that same
//! order before their commit is awaited in a task of their own, so one
//! connection's sends keep their order while many can share a commit. Reads are
//! answered from tasks too; at most [`MAX_INFLIGHT`] requests per connection run
//! at once, and beyond that the connection simply stops reading (QUIC flow
//! control pushes back on the client), which bounds memory per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::auth::{self, ThrottleKey};
use crate::config::Config;
use crate::protocol::{
    self, Body, ConvList, Created, Done, ErrorBody, ErrorCode, Event, FrameError, GroupRole,
    Invite, MAX_EXT, MAX_TEXT, MID_LEN, PowerState, Request, Role, Session, Status, Target, Users,
    close,
};
use crate::server::State;
use crate::store::{Amendment, MAX_GROUP_MEMBERS, StoreError, WriteOp, WriteOutcome};
use crate::stream::{self, FrameReader};

/// Requests of one connection handled at the same time.
pub const MAX_INFLIGHT: usize = 64;
/// How long a new connection may take to open its control stream.
const CONTROL_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// A refused request: code, human-readable text, and for `rate_limited` the wait.
#[derive(Debug)]
struct Refusal(ErrorCode, String, Option<u64>);

type Reply = Result<Vec<u8>, Refusal>;

fn refuse<T>(code: ErrorCode, msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(code, msg.into(), None))
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(code, msg) => Refusal(code, msg, None),
            StoreError::Closed => Refusal(
                ErrorCode::ShuttingDown,
                "the server is shutting down".into(),
                None,
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                Refusal(
                    ErrorCode::Internal,
                    "the server could not complete this; nothing was changed".into(),
                    None,
                )
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Who a logged-in connection is.
#[derive(Debug, Clone)]
struct Auth {
    user: u64,
    username: String,
    role: Role,
    device: u64,
    conn_id: u64,
}

/// Serves one connection until the client goes away or the server shuts down.
pub async fn handle(state: Arc<State>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    state
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (send, recv) = match tokio::time::timeout(CONTROL_STREAM_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        _ => {
            conn.close(
                close::PROTOCOL_VIOLATION.into(),
                b"no control stream opened",
            );
            state
                .connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    };
    let (replies, reply_rx) = mpsc::channel(MAX_INFLIGHT);
    let writer = tokio::spawn(write_replies(send, reply_rx));
    let mut session = Connection {
        state: state.clone(),
        conn: conn.clone(),
        remote,
        auth: None,
        replies,
        inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        uploader: Arc::default(),
    };
    let uploads = tokio::spawn(crate::attachment::accept_uploads(
        state.clone(),
        conn.clone(),
        session.uploader.clone(),
    ));
    let shutting_down = session.serve(recv).await;
    // Let requests already taken finish (their commits are answered) before leaving.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        session.inflight.acquire_many(MAX_INFLIGHT as u32),
    )
    .await;
    session.go_offline();
    uploads.abort();
    drop(session);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if shutting_down {
        conn.close(close::SHUTDOWN.into(), b"server shutting down");
    }
    state
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Writes queued replies until every sender is gone, then finishes the stream.
async fn write_replies(mut send: quinn::SendStream, mut frames: mpsc::Receiver<Vec<u8>>) {
    if stream::write_frames(&mut send, &mut frames).await {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
}

/// Forwards a device's events from the hub to its event stream.
async fn forward_events(conn: quinn::Connection, mut events: mpsc::Receiver<Bytes>) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    if stream::write_frames(&mut send, &mut events).await {
        let _ = send.finish();
    }
}

struct Connection {
    state: Arc<State>,
    conn: quinn::Connection,
    remote: SocketAddr,
    auth: Option<Auth>,
    replies: mpsc::Sender<Vec<u8>>,
    inflight: Arc<Semaphore>,
    /// The logged-in user's id (0: none), for upload streams.
    uploader: Arc<std::sync::atomic::AtomicU64>,
}

impl Connection {
    /// Reads and dispatches requests. Returns true if it stopped for shutdown.
    async fn serve(&mut self, recv: quinn::RecvStream) -> bool {
        let mut recv = FrameReader::new(recv);
        let mut shutdown = self.state.shutdown.clone();
        loop {
            let frame = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return true,
                frame = recv.next() => frame,
            };
            match frame {
                Ok(Some(body)) => self.on_frame(body).await,
                Ok(None) => return false,
                Err(FrameError::TooLarge(len)) => {
                    tracing::warn!(remote = %self.remote, len, "frame over the size limit; closing the connection");
                    self.conn
                        .close(close::PROTOCOL_VIOLATION.into(), b"frame too large");
                    return false;
                }
                Err(e) => {
                    tracing::debug!(remote = %self.remote, error = %e, "control stream ended");
                    return false;
                }
            }
        }
    }

    async fn on_frame(&mut self, body: Bytes) {
        let raw = match protocol::decode_request(&body) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::info!(remote = %self.remote, error = %e, "malformed frame");
                self.send_reply(0, Err(Refusal(ErrorCode::BadFrame, e.to_string(), None)))
                    .await;
                return;
            }
        };
        let id = raw.id;
        let op = raw.op.clone();
        let request = match raw.parse() {
            Ok(Some(request)) => request,
            Ok(None) => {
                tracing::info!(remote = %self.remote, op, "unknown request");
                let msg = format!("unknown request `{op}`");
                self.send_reply(id, Err(Refusal(ErrorCode::UnknownRequest, msg, None)))
                    .await;
                return;
            }
            Err(e) => {
                tracing::info!(remote = %self.remote, op, error = %e, "bad request");
                let msg = format!("bad `{op}` request: {e}");
                self.send_reply(id, Err(Refusal(ErrorCode::BadRequest, msg, None)))
                    .await;
                return;
            }
        };
        self.dispatch(id, request).await;
    }

    async fn send_reply(&self, id: u64, reply: Reply) {
        let _ = self.replies.send(encode_reply(id, reply)).await;
    }

    async fn dispatch(&mut self, id: u64, request: Request) {
        let auth = match (&self.auth, &request) {
            (_, Request::Ping {}) => return self.send_reply(id, ok(id, &Done {})).await,
            (
                Some(_),
                Request::Register { .. } | Request::Login { .. } | Request::Resume { .. },
            ) => {
                return self
                    .send_reply(
                        id,
                        refuse(ErrorCode::AlreadyAuthenticated, "already logged in"),
                    )
                    .await;
            }
            (None, Request::Register { .. } | Request::Login { .. } | Request::Resume { .. }) => {
                // Boxed: logging in needs far more state than serving requests,
                // and an idle connection should not carry that space for its life.
                let reply = Box::pin(self.authenticate(id, request)).await;
                return self.send_reply(id, reply).await;
            }
            (None, _) => {
                return self
                    .send_reply(id, refuse(ErrorCode::NotAuthenticated, "log in first"))
                    .await;
            }
            (Some(auth), _) => auth.clone(),
        };
        if let Request::Logout {} = request {
            let reply = self.logout(id, &auth).await;
            return self.send_reply(id, reply).await;
        }
        if let Some(reply) = ephemeral(&self.state, &auth, id, &request) {
            return self.send_reply(id, reply).await;
        }
        let Ok(permit) = self.inflight.clone().acquire_owned().await else {
            return;
        };
        if let Request::AdminBackup {} = request {
            let (state, conn, replies) =
                (self.state.clone(), self.conn.clone(), self.replies.clone());
            tokio::spawn(async move {
                let reply = backup(&state, &auth, conn, id).await;
                let _ = replies.send(encode_reply(id, reply)).await;
                drop(permit);
            });
            return;
        }
        if let Request::UploadBegin { .. }
        | Request::UploadFinish { .. }
        | Request::Download { .. } = request
        {
            let (state, conn, replies) =
                (self.state.clone(), self.conn.clone(), self.replies.clone());
            tokio::spawn(async move {
                let reply = attachment_request(&state, &auth, conn, id, request).await;
                let _ = replies.send(encode_reply(id, reply)).await;
                drop(permit);
            });
            return;
        }
        // Writes are queued here, in request order; everything else runs in the task.
        let queued = match write_op(&self.state.config, &auth, &request) {
            Ok(Some(op)) => match self.state.store.submit(op).await {
                Ok(rx) => Some(rx),
                Err(e) => return self.send_reply(id, Err(e.into())).await,
            },
            Ok(None) => None,
            Err(refusal) => return self.send_reply(id, Err(refusal)).await,
        };
        let state = self.state.clone();
        let replies = self.replies.clone();
        tokio::spawn(async move {
            let reply = match queued {
                Some(rx) => match rx.await {
                    Ok(Ok(outcome)) => after_write(&state, &auth, id, &request, outcome).await,
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(StoreError::Closed.into()),
                },
                None => read(&state, &auth, id, request).await,
            };
            let _ = replies.send(encode_reply(id, reply)).await;
            drop(permit);
        });
    }

    async fn authenticate(&mut self, id: u64, request: Request) -> Reply {
        let store = &self.state.store;
        let (outcome, token) = match request {
            Request::Register {
                invite,
                username,
                password,
                device,
            } => {
                auth::check_username(&username).map_err(|(c, m)| Refusal(c, m, None))?;
                auth::check_password(&password).map_err(|(c, m)| Refusal(c, m, None))?;
                check_device_name(&device)?;
                let phc = hash(password).await?;
                let (token, token_hash) = auth::new_token();
                let op = WriteOp::Register {
                    invite_hash: auth::token_hash(&invite),
                    username,
                    password: phc,
                    device,
                    token_hash,
                    now: now_ms(),
                };
                let outcome = store.write(op).await?;
                forget_admin_invite(&self.state.config.data_dir, &invite);
                (outcome, Some(token))
            }
            Request::Login {
                username,
                password,
                device,
            } => {
                check_device_name(&device)?;
                let user_key = ThrottleKey::User(username.clone());
                let addr_key = ThrottleKey::Addr(self.remote.ip());
                // The account's attempt counts at once, so concurrent guesses at one
                // account cannot pass its limit together; the address counts
                // failures only, so a household's good logins never lock it out.
                let counted = [user_key.clone()];
                if let Err(wait) = self
                    .state
                    .throttle
                    .attempt(&counted, std::slice::from_ref(&addr_key))
                {
                    tracing::info!(remote = %self.remote, user = username, "login throttled");
                    return Err(Refusal(
                        ErrorCode::RateLimited,
                        "too many failed logins; wait and try again".into(),
                        Some(wait.as_millis() as u64),
                    ));
                }
                let found = store.user_by_name(&username)?;
                // Verify against a fixed hash when the user does not exist, so
                // timing does not tell which names are registered.
                let phc = found
                    .as_ref()
                    .map(|(_, u)| u.password.clone())
                    .unwrap_or_default();
                let permit = HASHING.acquire().await;
                let good = tokio::task::spawn_blocking(move || {
                    let phc = if phc.is_empty() { dummy_hash() } else { phc };
                    auth::verify_password(&password, &phc)
                })
                .await
                .unwrap_or(false);
                drop(permit);
                let (user_id, record) = match found {
                    Some(found) if good => found,
                    _ => {
                        tracing::info!(remote = %self.remote, user = username, "failed login");
                        self.state.throttle.fail(&counted, addr_key);
                        return refuse(ErrorCode::InvalidCredentials, "wrong username or password");
                    }
                };
                self.state.throttle.succeed(&user_key);
                if record.disabled {
                    return refuse(ErrorCode::AccountDisabled, "this account is disabled");
                }
                let (token, token_hash) = auth::new_token();
                let op = WriteOp::AddDevice {
                    user: user_id,
                    device,
                    token_hash,
                    now: now_ms(),
                };
                (store.write(op).await?, Some(token))
            }
            Request::Resume { token } => {
                let Some((device, _, user)) = store.device_by_token(&auth::token_hash(&token))?
                else {
                    tracing::info!(remote = %self.remote, "resume with an unknown or revoked token");
                    return refuse(
                        ErrorCode::InvalidToken,
                        "unknown or revoked device token; log in again",
                    );
                };
                if user.disabled {
                    return refuse(ErrorCode::AccountDisabled, "this account is disabled");
                }
                let Some((user_id, _)) = store.user_by_name(&user.name)? else {
                    return refuse(
                        ErrorCode::InvalidToken,
                        "unknown or revoked device token; log in again",
                    );
                };
                (
                    WriteOutcome::Device {
                        user: user_id,
                        username: user.name,
                        role: user.role,
                        device,
                    },
                    None,
                )
            }
            _ => return refuse(ErrorCode::BadRequest, "not a login request"),
        };
        let WriteOutcome::Device {
            user,
            username,
            role,
            device,
        } = outcome
        else {
            return refuse(ErrorCode::Internal, "unexpected store answer");
        };
        // A device that logs in while the server is on battery hears it at once.
        let power = self.state.power_notice();
        let first = (power.state != PowerState::Online)
            .then(|| Bytes::from(protocol::encode_event(&Event::Power(power))));
        let (conn_id, events) = self
            .state
            .hub
            .register(user, device, self.conn.clone(), first);
        tokio::spawn(forward_events(self.conn.clone(), events));
        let (store, hub) = (&self.state.store, &self.state.hub);
        self.state
            .presence
            .connect(store, hub, user, &username, conn_id);
        tracing::debug!(remote = %self.remote, user = username, device, "logged in");
        let session = Session {
            user: username.clone(),
            role,
            device,
            token,
        };
        self.uploader
            .store(user, std::sync::atomic::Ordering::Release);
        self.auth = Some(Auth {
            user,
            username,
            role,
            device,
            conn_id,
        });
        ok(id, &session)
    }

    async fn logout(&mut self, id: u64, auth: &Auth) -> Reply {
        self.state
            .store
            .write(WriteOp::RemoveDevice {
                device: auth.device,
            })
            .await?;
        self.go_offline();
        self.state.hub.close_device(
            auth.user,
            auth.device,
            auth.conn_id,
            close::DEVICE_REVOKED,
            "device logged out",
        );
        ok(id, &Done {})
    }

    fn go_offline(&mut self) {
        self.uploader.store(0, std::sync::atomic::Ordering::Release);
        if let Some(auth) = self.auth.take() {
            self.state.hub.unregister(auth.user, auth.conn_id);
            let (user, name, conn) = (auth.user, &auth.username, auth.conn_id);
            crate::presence::disconnected(&self.state, user, name, conn);
            self.state.typing.forget(conn);
        }
    }
}

/// Removes the first-start invite's file once that invite has been used.
fn forget_admin_invite(data_dir: &std::path::Path, used: &str) {
    let file = data_dir.join(crate::server::ADMIN_INVITE_FILE);
    if std::fs::read_to_string(&file).is_ok_and(|t| t.trim() == used) {
        let _ = std::fs::remove_file(&file);
    }
}

fn check_device_name(name: &str) -> Result<(), Refusal> {
    let len = name.chars().count();
    if (1..=64).contains(&len) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        refuse(
            ErrorCode::BadRequest,
            "a device name is 1 to 64 printable characters",
        )
    }
}

fn check_text(text: &str) -> Result<(), Refusal> {
    if text.len() > MAX_TEXT {
        return refuse(
            ErrorCode::TextTooLong,
            format!("text is over {MAX_TEXT} bytes"),
        );
    }
    Ok(())
}

/// A reaction is one short emoji (a few code points, with modifiers and
/// joiners), not text: no spaces or control characters, at most 64 bytes.
fn check_emoji(emoji: &str) -> Result<(), Refusal> {
    let ok = (1..=64).contains(&emoji.len())
        && emoji.chars().count() <= 16
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        refuse(
            ErrorCode::BadRequest,
            "a reaction is one emoji: 1 to 64 bytes, no spaces",
        )
    }
}

/// The store write of an edit, recall or reaction.
fn amend(auth: &Auth, conv: u64, seq: u64, now: u64, change: Amendment) -> WriteOp {
    WriteOp::Amend {
        user: auth.user,
        username: auth.username.clone(),
        device: auth.device,
        conv,
        seq,
        change,
        now,
    }
}

fn check_group_name(name: &str) -> Result<(), Refusal> {
    let len = name.chars().count();
    if (1..=64).contains(&len) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        refuse(
            ErrorCode::BadRequest,
            "a group name is 1 to 64 printable characters",
        )
    }
}

/// An Argon2id hash of a random password, verified against when a login names
/// no account, so such a login costs the same time as a real one.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| auth::hash_password(&auth::new_token().0).unwrap_or_default())
        .clone()
}

/// Argon2 runs use 19 MiB each: at most one per core at a time, so a burst of
/// logins cannot run a small board out of memory.
static HASHING: std::sync::LazyLock<Semaphore> = std::sync::LazyLock::new(|| {
    Semaphore::new(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    )
});

async fn hash(password: String) -> Result<String, Refusal> {
    let _permit = HASHING.acquire().await;
    match tokio::task::spawn_blocking(move || auth::hash_password(&password)).await {
        Ok(Ok(phc)) => Ok(phc),
        _ => refuse(ErrorCode::Internal, "could not hash the password"),
    }
}

fn ok<T: Serialize>(id: u64, result: &T) -> Reply {
    Ok(protocol::encode_ok(id, result))
}

fn encode_reply(id: u64, reply: Reply) -> Vec<u8> {
    match reply {
        Ok(frame) => frame,
        Err(Refusal(code, message, retry_after_ms)) => protocol::encode_err(
            id,
            &ErrorBody {
                code,
                message,
                retry_after_ms,
            },
        ),
    }
}

fn require_admin(auth: &Auth) -> Result<(), Refusal> {
    if auth.role == Role::Admin {
        Ok(())
    } else {
        refuse(ErrorCode::Forbidden, "administrators only")
    }
}

/// The store write a request makes, checked; `None` for requests that only read.
fn write_op(config: &Config, auth: &Auth, request: &Request) -> Result<Option<WriteOp>, Refusal> {
    let now = now_ms();
    let op = match request {
        Request::Send {
            conv,
            user,
            mid,
            text,
            ext,
            reply_to,
            attachment,
        } => {
            let target = match (conv, user) {
                (Some(conv), None) => Target::Conv(*conv),
                (None, Some(user)) => Target::User(user.clone()),
                _ => {
                    return refuse(
                        ErrorCode::BadRequest,
                        "give exactly one of `conv` and `user`",
                    );
                }
            };
            let mid: [u8; MID_LEN] = mid.as_slice().try_into().or_else(|_| {
                refuse(
                    ErrorCode::BadRequest,
                    format!("`mid` must be {MID_LEN} bytes"),
                )
            })?;
            check_text(text)?;
            if ext.as_ref().is_some_and(|e| e.len() > MAX_EXT) {
                return refuse(
                    ErrorCode::ExtTooLarge,
                    format!("`ext` is over {MAX_EXT} bytes"),
                );
            }
            if let Some(a) = attachment {
                crate::attachment::check_ref(&a.name, a.mime.as_deref())
                    .or_else(|msg| refuse(ErrorCode::BadRequest, msg))?;
            }
            WriteOp::Send {
                user: auth.user,
                username: auth.username.clone(),
                device: auth.device,
                target,
                mid,
                text: text.clone(),
                ext: ext.clone(),
                reply_to: *reply_to,
                attachment: attachment.clone(),
                now,
            }
        }
        Request::Ack { conv, seq } => WriteOp::Ack {
            user: auth.user,
            username: auth.username.clone(),
            device: auth.device,
            conv: *conv,
            seq: *seq,
        },
        Request::Edit { conv, seq, text } => {
            check_text(text)?;
            amend(
                auth,
                *conv,
                *seq,
                now,
                Amendment::Edit {
                    text: text.clone(),
                    window_ms: config.edit_window_secs.saturating_mul(1000),
                },
            )
        }
        Request::Recall { conv, seq } => amend(
            auth,
            *conv,
            *seq,
            now,
            Amendment::Recall {
                window_ms: config.recall_window_secs.saturating_mul(1000),
            },
        ),
        Request::React {
            conv,
            seq,
            emoji,
            remove,
        } => {
            check_emoji(emoji)?;
            amend(
                auth,
                *conv,
                *seq,
                now,
                Amendment::React {
                    emoji: emoji.clone(),
                    add: !remove,
                },
            )
        }
        Request::Read { conv, seq } => WriteOp::Read {
            user: auth.user,
            username: auth.username.clone(),
            conv: *conv,
            seq: *seq,
        },
        Request::ConvDelete { conv } => WriteOp::ConvDelete {
            user: auth.user,
            conv: *conv,
        },
        Request::GroupRename { conv, name } => {
            check_group_name(name)?;
            WriteOp::GroupRename {
                user: auth.user,
                username: auth.username.clone(),
                device: auth.device,
                conv: *conv,
                name: name.clone(),
                now,
            }
        }
        Request::GroupPromote { conv, user }
        | Request::GroupDemote { conv, user }
        | Request::GroupTransfer { conv, user } => WriteOp::GroupRole {
            user: auth.user,
            username: auth.username.clone(),
            device: auth.device,
            conv: *conv,
            member: user.clone(),
            role: match request {
                Request::GroupPromote { .. } => GroupRole::Admin,
                Request::GroupDemote { .. } => GroupRole::Member,
                _ => GroupRole::Owner,
            },
            now,
        },
        Request::GroupCreate { name, members } => {
            check_group_name(name)?;
            if members.len() >= MAX_GROUP_MEMBERS {
                return refuse(
                    ErrorCode::BadRequest,
                    format!("a group has at most {MAX_GROUP_MEMBERS} members"),
                );
            }
            WriteOp::GroupCreate {
                user: auth.user,
                username: auth.username.clone(),
                device: auth.device,
                name: name.clone(),
                members: members.clone(),
                now,
            }
        }
        Request::GroupAdd { conv, user } => WriteOp::GroupAdd {
            user: auth.user,
            username: auth.username.clone(),
            device: auth.device,
            conv: *conv,
            member: user.clone(),
            now,
        },
        Request::GroupRemove { conv, user } => WriteOp::GroupRemove {
            user: auth.user,
            username: auth.username.clone(),
            device: auth.device,
            conv: *conv,
            member: user.clone(),
            now,
        },
        Request::GroupLeave { conv } => WriteOp::GroupLeave {
            user: auth.user,
            username: auth.username.clone(),
            device: auth.device,
            conv: *conv,
            now,
        },
        Request::AdminDisable { user } | Request::AdminEnable { user } => {
            require_admin(auth)?;
            if *user == auth.username {
                return refuse(
                    ErrorCode::BadRequest,
                    "you cannot disable or enable your own account",
                );
            }
            WriteOp::SetDisabled {
                username: user.clone(),
                disabled: matches!(request, Request::AdminDisable { .. }),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// Answers a committed write and pushes what it produced to the recipients.
async fn after_write(
    state: &State,
    auth: &Auth,
    id: u64,
    request: &Request,
    outcome: WriteOutcome,
) -> Reply {
    memberships_changed(state, request, &outcome);
    match outcome {
        WriteOutcome::Message {
            ack,
            message,
            recipients,
        } => {
            if let Some(message) = message {
                if let Body::Recall { .. } = message.body {
                    // The recalled message's file may have lost its last reference.
                    state.attachments.collect_now();
                }
                let frame = Bytes::from(protocol::encode_event(&Event::Message(message)));
                state.hub.deliver(&recipients, auth.device, frame);
            }
            match request {
                Request::Send { .. }
                | Request::Edit { .. }
                | Request::Recall { .. }
                | Request::React { .. } => ok(id, &ack),
                _ => ok(id, &Done {}),
            }
        }
        WriteOutcome::Notice { event, recipients } => {
            let frame = Bytes::from(protocol::encode_event(&event));
            state.hub.deliver(&recipients, auth.device, frame);
            ok(id, &Done {})
        }
        WriteOutcome::Group {
            conv,
            message,
            recipients,
        } => {
            let frame = Bytes::from(protocol::encode_event(&Event::Message(message)));
            state.hub.deliver(&recipients, auth.device, frame);
            ok(id, &Created { conv })
        }
        WriteOutcome::Account { user, .. } => {
            if let Request::AdminDisable { user: name } = request {
                tracing::info!(admin = auth.username, user = name, "account disabled");
                state.hub.close_user(
                    user,
                    close::ACCOUNT_DISABLED,
                    "account disabled by an administrator",
                );
            }
            ok(id, &Done {})
        }
        _ => ok(id, &Done {}),
    }
}

/// `set_presence`, `presence` and `typing` (docs/PROTOCOL.md §7.6): answered
/// on the connection's task, in request order, so a client's "away" then
/// "online", or "typing" then "stopped", can never pass each other. `None`
/// for every other request.
fn ephemeral(state: &State, auth: &Auth, id: u64, request: &Request) -> Option<Reply> {
    let (store, hub) = (&state.store, &state.hub);
    let disabled = |what: &str| {
        refuse(
            ErrorCode::Disabled,
            format!("{what} is switched off on this server"),
        )
    };
    let reply = match request {
        Request::SetPresence { .. } | Request::Presence {} if !state.presence.enabled() => {
            disabled("presence")
        }
        Request::SetPresence {
            state: crate::protocol::PresenceState::Offline,
        } => refuse(
            ErrorCode::BadRequest,
            "a connected device is `online` or `away`; disconnect to go offline",
        ),
        Request::SetPresence { state: to } => {
            let (user, name, conn) = (auth.user, &auth.username, auth.conn_id);
            state.presence.set(store, hub, user, name, conn, *to);
            ok(id, &Done {})
        }
        Request::Presence {} => match state.presence.list(store, auth.user) {
            Ok(list) => ok(id, &list),
            Err(e) => Err(e.into()),
        },
        Request::Typing { .. } if !state.typing.enabled() => disabled("typing"),
        Request::Typing { conv, active } => {
            let (user, name, conn) = (auth.user, &auth.username, auth.conn_id);
            match state
                .typing
                .notify(store, hub, user, name, conn, *conv, *active)
            {
                Ok(_) => ok(id, &Done {}),
                Err(e) => Err(e.into()),
            }
        }
        _ => return None,
    };
    Some(reply)
}

/// Presence and typing keep member lists in memory: a committed change of
/// membership (a group made, joined, left or shrunk, a direct conversation
/// started by its first message) invalidates the lists of everyone involved,
/// and presence introduces those who joined to the other members and the
/// other members to them (docs/PROTOCOL.md §7.6).
fn memberships_changed(state: &State, request: &Request, outcome: &WriteOutcome) {
    let (members, joined, conv): (&[u64], &[u64], u64) = match (request, outcome) {
        (
            Request::GroupCreate { .. },
            WriteOutcome::Group {
                recipients, conv, ..
            },
        ) => (recipients, recipients, *conv),
        (Request::GroupAdd { conv, .. }, WriteOutcome::Message { recipients, .. }) => {
            // The store lists the added member last, after the existing members.
            let joined = recipients
                .split_last()
                .map_or(&[][..], |(added, _)| std::slice::from_ref(added));
            (recipients, joined, *conv)
        }
        (
            Request::GroupRemove { conv, .. } | Request::GroupLeave { conv },
            WriteOutcome::Message { recipients, .. },
        ) => (recipients, &[], *conv),
        (
            Request::Send { .. },
            WriteOutcome::Message {
                message: Some(m),
                recipients,
                ..
            },
        ) if m.seq == 1 => (recipients, recipients, m.conv),
        _ => return,
    };
    state
        .presence
        .memberships_changed(&state.hub, members, joined);
    state.typing.members_changed(conv);
}

/// `admin_backup`: takes a snapshot, answers with its size and checksum, and
/// sends the backup on a data stream of its own (docs/PROTOCOL.md §3, §7.5, §16).
async fn backup(state: &State, auth: &Auth, conn: quinn::Connection, id: u64) -> Reply {
    require_admin(auth)?;
    let running = state
        .backups
        .try_begin()
        .map_err(|e| Refusal(ErrorCode::Busy, e.to_string(), None))?;
    let snapshot = crate::backup::Snapshot::take(&state.store, &state.config.data_dir, running)
        .await
        .map_err(|e| {
            tracing::error!(admin = auth.username, error = %e, "backup failed");
            Refusal(ErrorCode::Internal, format!("backup failed: {e}"), None)
        })?;
    let ready = snapshot.ready();
    tracing::info!(
        admin = auth.username,
        bytes = ready.bytes,
        "sending a backup"
    );
    tokio::spawn(snapshot.send(conn, id));
    ok(id, &ready)
}

/// Requests that read, and admin requests that need work before their write.
async fn read(state: &State, auth: &Auth, id: u64, request: Request) -> Reply {
    let store = &state.store;
    match request {
        Request::Whoami {} => ok(
            id,
            &Session {
                user: auth.username.clone(),
                role: auth.role,
                device: auth.device,
                token: None,
            },
        ),
        Request::Sync {} => ok(
            id,
            &ConvList {
                conversations: store.conversations(auth.user, auth.device, true)?,
            },
        ),
        Request::Conversations {} => ok(
            id,
            &ConvList {
                conversations: store.conversations(auth.user, auth.device, false)?,
            },
        ),
        Request::History {
            conv,
            after,
            before,
            limit,
        } => ok(id, &store.history(auth.user, conv, after, before, limit)?),
        Request::GroupMembers { conv } => ok(id, &store.members(auth.user, conv)?),
        Request::Receipts { conv } => ok(id, &store.receipts(auth.user, conv)?),
        Request::AdminInvite { role, ttl_secs } => {
            require_admin(auth)?;
            let ttl_ms = ttl_secs
                .map(|s| s.saturating_mul(1000))
                .unwrap_or(state.config.invite_ttl_hours * 3_600_000);
            let expires = now_ms().saturating_add(ttl_ms);
            let (token, token_hash) = auth::new_token();
            store
                .write(WriteOp::CreateInvite {
                    token_hash,
                    role,
                    expires,
                    created_by: auth.user,
                })
                .await?;
            tracing::info!(admin = auth.username, ?role, "invite created");
            ok(
                id,
                &Invite {
                    token,
                    role,
                    expires,
                },
            )
        }
        Request::AdminUsers {} => {
            require_admin(auth)?;
            ok(
                id,
                &Users {
                    users: store.users()?,
                },
            )
        }
        Request::AdminResetPassword { user, password } => {
            require_admin(auth)?;
            auth::check_password(&password).map_err(|(c, m)| Refusal(c, m, None))?;
            let phc = hash(password).await?;
            if let WriteOutcome::Account { user: uid, .. } = store
                .write(WriteOp::ResetPassword {
                    username: user.clone(),
                    password: phc,
                })
                .await?
            {
                tracing::info!(
                    admin = auth.username,
                    user,
                    "password reset; devices signed out"
                );
                state.hub.close_user(
                    uid,
                    close::DEVICE_REVOKED,
                    "password reset by an administrator",
                );
            }
            ok(id, &Done {})
        }
        Request::AdminStatus {} => {
            require_admin(auth)?;
            let dir = state.config.data_dir.clone();
            let machine = tokio::task::spawn_blocking(move || crate::status::machine(&dir))
                .await
                .or_else(|_| refuse(ErrorCode::Internal, "could not read machine status"))?;
            let (users, messages) = store.counts()?;
            let backup = state.backups.status();
            ok(
                id,
                &Status {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    uptime_secs: state.started.elapsed().as_secs(),
                    connections: state.connections.load(std::sync::atomic::Ordering::Relaxed),
                    users,
                    messages,
                    store_bytes: store.file_size(),
                    disk_free_bytes: machine.disk_free_bytes,
                    memory_rss_bytes: machine.rss_bytes,
                    memory_total_bytes: machine.total_memory_bytes,
                    load_average: machine.load_average,
                    temperature_c: machine.temperature_c,
                    throttling: machine.throttling,
                    power: state.power_notice(),
                    backup_last_success: backup.last_success,
                    backup_last_error: backup.last_error,
                    backup_next: backup.next,
                },
            )
        }
        _ => refuse(ErrorCode::BadRequest, "unexpected request"),
    }
}

// --- Attachments -------------------------------------------------------------

/// `upload_begin`, `upload_finish` and `download` (docs/PROTOCOL.md §7.6):
/// they work on files as well as the store, so they run here rather than as
/// plain writes or reads.
async fn attachment_request(
    state: &State,
    auth: &Auth,
    conn: quinn::Connection,
    id: u64,
    request: Request,
) -> Reply {
    use crate::attachment::AttachmentError;
    use crate::protocol::{DownloadReady, UploadSlot, Uploaded};
    use crate::store::{human_size, parse_sha256};
    let store = &state.store;
    let files = &state.attachments;
    match request {
        Request::UploadBegin { size, sha256 } => {
            let Some(sha) = parse_sha256(&sha256) else {
                return refuse(
                    ErrorCode::BadRequest,
                    "`sha256` must be 64 hexadecimal digits",
                );
            };
            let limits = &state.config.attachments;
            if size > limits.max_bytes() {
                return refuse(
                    ErrorCode::TooLarge,
                    format!(
                        "the file is {}; this server takes attachments of at most {}",
                        human_size(size),
                        human_size(limits.max_bytes())
                    ),
                );
            }
            let outcome = store
                .write(WriteOp::UploadBegin {
                    user: auth.user,
                    size,
                    sha256: sha,
                    quota: limits.quota_bytes(),
                    now: now_ms(),
                })
                .await?;
            let WriteOutcome::Upload { upload } = outcome else {
                return refuse(ErrorCode::Internal, "unexpected store answer");
            };
            let received = files.received(upload).min(size);
            ok(id, &UploadSlot { upload, received })
        }
        Request::UploadFinish { upload } => {
            let not_yours = || refuse(ErrorCode::NotFound, format!("no upload {upload} of yours"));
            // Checked before a writer slot is made for it, so that asking
            // about made-up ids costs the server nothing.
            if store
                .upload(upload)?
                .is_none_or(|rec| rec.user != auth.user)
            {
                return not_yours();
            }
            let slot = files.slot(upload);
            // No stream appends while the file is checked and moved.
            let _writing = slot.file.lock().await;
            let rec = match store.upload(upload)? {
                Some(rec) if rec.user == auth.user => rec,
                // Finished or deleted while this one waited.
                _ => return not_yours(),
            };
            let received = files.received(upload);
            if received < rec.size {
                return refuse(
                    ErrorCode::Incomplete,
                    format!(
                        "the server has {received} of the upload's {} bytes; send the rest from offset {received}",
                        rec.size
                    ),
                );
            }
            let _collecting = files.collecting.lock().await;
            let (sha, size) = (rec.sha256.clone(), rec.size);
            let stored = files.finish_upload(upload, &sha, size).await;
            match stored {
                Ok(_) => {}
                Err(AttachmentError::Checksum { expected, computed }) => {
                    store.write(WriteOp::UploadAbort { upload }).await?;
                    files.forget(upload);
                    return refuse(
                        ErrorCode::BadRequest,
                        format!(
                            "the bytes received have SHA-256 {computed}, not {expected}; the upload was deleted, start again"
                        ),
                    );
                }
                Err(AttachmentError::Incomplete { received, size }) => {
                    return refuse(
                        ErrorCode::Incomplete,
                        format!("the server has {received} of the upload's {size} bytes"),
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, upload, "storing an upload failed");
                    return refuse(
                        ErrorCode::Internal,
                        "the server could not store the file; send upload_finish again later",
                    );
                }
            }
            store
                .write(WriteOp::UploadDone {
                    user: auth.user,
                    upload,
                    now: now_ms(),
                })
                .await?;
            files.forget(upload);
            ok(id, &Uploaded { id: sha, size })
        }
        Request::Download { id: file, offset } => {
            let unknown = || {
                refuse(
                    ErrorCode::NotFound,
                    format!("no attachment {file} that you can read"),
                )
            };
            let Some(sha) = parse_sha256(&file) else {
                return unknown();
            };
            let Some(size) = store.downloadable(auth.user, &sha)? else {
                return unknown();
            };
            if offset > size {
                return refuse(
                    ErrorCode::BadRequest,
                    format!("`offset` {offset} is past the end of the file ({size} bytes)"),
                );
            }
            let blob = match files.open_blob(&hex::encode(sha)) {
                Ok(blob) => blob,
                Err(e) => {
                    tracing::error!(error = %e, "a recorded attachment file cannot be read");
                    return refuse(ErrorCode::Internal, "the server cannot read this file");
                }
            };
            tokio::spawn(crate::attachment::Attachments::send(conn, id, blob, offset));
            ok(id, &DownloadReady { size, offset })
        }
        _ => refuse(ErrorCode::BadRequest, "unexpected request"),
    }
}
