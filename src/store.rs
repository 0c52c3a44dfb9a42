//! The durable store: one redb file holding accounts, devices, conversations
//! and messages.
//!
//! Reads run on the caller's thread in their own read transaction, so they
//! never wait for a writer (redb is MVCC). All writes go through one writer
//! thread that groups whatever requests are queued into a single write
//! transaction and commits it with `Durability::Immediate` (group commit): one
//! fsync acknowledges a whole batch, and each request is answered only after
//! the commit that holds it returned.
//!
//! # Key encodings
//! Composite keys are fixed-width byte arrays of big-endian integers, so redb's
//! byte-wise ordering is numeric ordering. Values are CBOR maps of the record
//! structs below (or the wire [`Message`]).
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | name (text) | `schema_version`: u32 BE; `next_user`/`next_device`/`next_conv`: u64 BE |
//! | `users` | user id (u64) | [`UserRecord`] |
//! | `usernames` | username (text) | user id |
//! | `devices` | device id (u64) | [`DeviceRecord`] |
//! | `device_tokens` | SHA-256 of the token (32 bytes) | device id |
//! | `user_devices` | user id ‖ device id (16 bytes) | () |
//! | `invites` | SHA-256 of the token (32 bytes) | [`InviteRecord`] |
//! | `conversations` | conversation id (u64) | [`ConvRecord`] |
//! | `direct_index` | lower user id ‖ higher user id | conversation id |
//! | `members` | conversation id ‖ user id | [`Membership`] |
//! | `user_conversations` | user id ‖ conversation id | () |
//! | `messages` | conversation id ‖ sequence number | [`Message`] |
//! | `message_ids` | sender user id ‖ client message id (24 bytes) | conversation id ‖ sequence number |
//! | `cursors` | device id ‖ conversation id | acknowledged sequence number (u64) |
//! | `read_markers` | conversation id ‖ user id | the user's read marker (u64) |
//! | `text_ordinals` | conversation id ‖ sequence number | how many text messages the conversation has up to this one (u64) |
//! | `edits` | conversation id ‖ edited sequence number ‖ edit's sequence number | () |
//!
//! `text_ordinals` makes unread counts cheap: the texts after a read marker
//! are the ordinal at the conversation's end minus the ordinal at the marker,
//! two lookups however long the backlog. `edits` lets a recall find and wipe
//! every earlier edit of the message it recalls.
//!
//! The attachment tables (`uploads`, `blobs`, …) are described in `store/attachments.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot};

mod snapshot;
pub use snapshot::{SnapshotInfo, check_file};

mod attachments;
pub use attachments::{BlobRecord, UploadRecord, human_size, parse_sha256};

use crate::protocol::{
    AttachmentRef, Body, ConvDeleted, ConvKind, ConvSummary, ErrorCode, Event, GroupRole, MAX_PAGE,
    MID_LEN, Marker, Member, Members, Message, PAGE_BYTES, Page, Reactions, Receipt, Receipts,
    Role, SendAck, Target, UserInfo,
};

/// The schema version this build writes. A later release migrates older files.
pub const SCHEMA_VERSION: u32 = 2;
/// Most requests committed in one write transaction.
const MAX_BATCH: usize = 1024;
/// Queue of write requests waiting for the writer thread; senders wait when it is full.
const WRITE_QUEUE: usize = 4096;
/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 2000;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
const USERNAMES: TableDefinition<&str, u64> = TableDefinition::new("usernames");
const DEVICES: TableDefinition<u64, &[u8]> = TableDefinition::new("devices");
const DEVICE_TOKENS: TableDefinition<[u8; 32], u64> = TableDefinition::new("device_tokens");
const USER_DEVICES: TableDefinition<[u8; 16], ()> = TableDefinition::new("user_devices");
const INVITES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("invites");
const CONVS: TableDefinition<u64, &[u8]> = TableDefinition::new("conversations");
const DIRECT: TableDefinition<[u8; 16], u64> = TableDefinition::new("direct_index");
const MEMBERS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("members");
const USER_CONVS: TableDefinition<[u8; 16], ()> = TableDefinition::new("user_conversations");
const MESSAGES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("messages");
const MESSAGE_IDS: TableDefinition<[u8; 24], [u8; 16]> = TableDefinition::new("message_ids");
const CURSORS: TableDefinition<[u8; 16], u64> = TableDefinition::new("cursors");
const READ_MARKERS: TableDefinition<[u8; 16], u64> = TableDefinition::new("read_markers");
const TEXT_ORDINALS: TableDefinition<[u8; 16], u64> = TableDefinition::new("text_ordinals");
const EDITS: TableDefinition<[u8; 24], ()> = TableDefinition::new("edits");
/// When each user's last device disconnected (ms since the epoch): presence's
/// `last_seen`, kept across restarts.
const LAST_SEEN: TableDefinition<u64, u64> = TableDefinition::new("last_seen");
/// Most reactions (user and emoji pairs) one message holds, so a message
/// always fits in a frame.
pub const MAX_REACTIONS: usize = 1000;
/// Most different emoji on one message.
pub const MAX_REACTION_KINDS: usize = 50;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is refused; the code and text go back to the client as they are.
    #[error("{1}")]
    Rejected(ErrorCode, String),
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record in table {0}")]
    Corrupt(&'static str),
    #[error(
        "the database file was written by a newer quince (schema {0}); this build reads {SCHEMA_VERSION}"
    )]
    NewerSchema(u32),
    #[error("the store is shut down")]
    Closed,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn reject<T>(code: ErrorCode, msg: impl Into<String>) -> Result<T, StoreError> {
    Err(StoreError::Rejected(code, msg.into()))
}

/// An account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// Argon2id PHC string.
    pub password: String,
    pub role: Role,
    pub disabled: bool,
    pub created: u64,
}

/// A logged-in device of an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub user: u64,
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub token_hash: Vec<u8>,
    pub created: u64,
}

/// An unused invite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteRecord {
    pub role: Role,
    pub expires: u64,
    /// User id of the admin who made it; 0 for the first-start invite.
    pub created_by: u64,
}

/// A conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvRecord {
    pub kind: ConvKind,
    /// Group name; empty for direct conversations.
    pub name: String,
    /// For direct conversations: the two user names (lower id first).
    pub peers: Vec<String>,
    /// Owner of a group; 0 for direct conversations.
    pub owner: u64,
    pub last_seq: u64,
    pub created: u64,
    /// How many of its messages are texts (the last `text_ordinals` entry).
    #[serde(default)]
    pub texts: u64,
}

/// One user's membership of a conversation: which sequence numbers they may read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Membership {
    pub from_seq: u64,
    /// Set when the user left or was removed: the last sequence number they may read.
    pub until_seq: Option<u64>,
    /// Admin or member (the owner is [`ConvRecord::owner`]).
    #[serde(default)]
    pub role: GroupRole,
    /// The user deleted the conversation from their view up to here.
    #[serde(default)]
    pub cleared: u64,
}

impl Membership {
    /// A member from `seq` on.
    fn from(seq: u64) -> Membership {
        Membership {
            from_seq: seq,
            until_seq: None,
            role: GroupRole::Member,
            cleared: 0,
        }
    }

    fn active(&self) -> bool {
        self.until_seq.is_none()
    }

    /// The first sequence number the user sees.
    pub(crate) fn first_visible(&self) -> u64 {
        self.from_seq.max(self.cleared.saturating_add(1)).max(1)
    }
}

/// A user's role in a conversation: the owner is the record's, the rest the membership's.
fn role_of(rec: &ConvRecord, user: u64, m: &Membership) -> GroupRole {
    if rec.kind == ConvKind::Group && rec.owner == user {
        GroupRole::Owner
    } else {
        m.role
    }
}

fn k16(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

fn split16(k: [u8; 16]) -> (u64, u64) {
    let a = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    let b = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
    (a, b)
}

fn k24(a: u64, b: u64, c: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..16].copy_from_slice(&b.to_be_bytes());
    k[16..].copy_from_slice(&c.to_be_bytes());
    k
}

fn split24(k: [u8; 24]) -> (u64, u64, u64) {
    let part = |i: usize| u64::from_be_bytes(k[i..i + 8].try_into().expect("8 bytes"));
    (part(0), part(8), part(16))
}

fn mid_key(user: u64, mid: &[u8]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..].copy_from_slice(mid);
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(v, &mut out).expect("writing to a Vec cannot fail");
    out
}

fn dec<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    ciborium::from_reader(bytes).map_err(|_| StoreError::Corrupt(table))
}

/// A write request for the writer thread.
#[derive(Debug)]
pub enum WriteOp {
    /// First start: make the admin invite if there are no accounts and no invites.
    Bootstrap {
        token_hash: [u8; 32],
        expires: u64,
    },
    Register {
        invite_hash: [u8; 32],
        username: String,
        password: String,
        device: String,
        token_hash: [u8; 32],
        now: u64,
    },
    AddDevice {
        user: u64,
        device: String,
        token_hash: [u8; 32],
        now: u64,
    },
    RemoveDevice {
        device: u64,
    },
    Send {
        user: u64,
        username: String,
        device: u64,
        target: Target,
        mid: [u8; MID_LEN],
        text: String,
        ext: Option<ByteBuf>,
        reply_to: Option<u64>,
        attachment: Option<AttachmentRef>,
        now: u64,
    },
    Ack {
        user: u64,
        username: String,
        device: u64,
        conv: u64,
        seq: u64,
    },
    /// A change to an earlier message: edit, recall or reaction.
    Amend {
        user: u64,
        username: String,
        device: u64,
        conv: u64,
        seq: u64,
        change: Amendment,
        now: u64,
    },
    /// Moves the user's read marker forward.
    Read {
        user: u64,
        username: String,
        conv: u64,
        seq: u64,
    },
    /// Deletes a conversation from the user's view.
    ConvDelete {
        user: u64,
        conv: u64,
    },
    /// The owner renames a group.
    GroupRename {
        user: u64,
        username: String,
        device: u64,
        conv: u64,
        name: String,
        now: u64,
    },
    /// The owner changes a member's role, or hands the group over (`Owner`).
    GroupRole {
        user: u64,
        username: String,
        device: u64,
        conv: u64,
        member: String,
        role: GroupRole,
        now: u64,
    },
    GroupCreate {
        user: u64,
        username: String,
        device: u64,
        name: String,
        members: Vec<String>,
        now: u64,
    },
    GroupAdd {
        user: u64,
        username: String,
        device: u64,
        conv: u64,
        member: String,
        now: u64,
    },
    GroupRemove {
        user: u64,
        username: String,
        device: u64,
        conv: u64,
        member: String,
        now: u64,
    },
    GroupLeave {
        user: u64,
        username: String,
        device: u64,
        conv: u64,
        now: u64,
    },
    CreateInvite {
        token_hash: [u8; 32],
        role: Role,
        expires: u64,
        created_by: u64,
    },
    SetDisabled {
        username: String,
        disabled: bool,
    },
    ResetPassword {
        username: String,
        password: String,
    },
    /// Start or resume an upload (the size limit is checked before).
    UploadBegin {
        user: u64,
        size: u64,
        sha256: [u8; 32],
        quota: u64,
        now: u64,
    },
    /// The upload's file is verified and in the blob store: record it.
    UploadDone {
        user: u64,
        upload: u64,
        now: u64,
    },
    /// Forget an upload whose partial file was deleted.
    UploadAbort {
        upload: u64,
    },
    /// Forget every file last uploaded before `before` (ms since the epoch)
    /// that no message carries: its quota use goes, and the next garbage
    /// collection deletes it.
    ExpireUnsent {
        before: u64,
    },
    /// Record when users were last seen: (user id, ms since the epoch).
    LastSeen {
        seen: Vec<(u64, u64)>,
    },
}

/// What [`WriteOp::Amend`] does to the message.
#[derive(Debug)]
pub enum Amendment {
    /// New text, allowed within `window_ms` of sending.
    Edit {
        text: String,
        window_ms: u64,
    },
    /// Recall by the sender within `window_ms`, or by a group's owner or admins.
    Recall {
        window_ms: u64,
    },
    React {
        emoji: String,
        add: bool,
    },
}

/// What a committed write produced.
#[derive(Debug)]
pub enum WriteOutcome {
    Done,
    Bootstrapped(bool),
    /// A new account or device: (user id, username, role, device id).
    Device {
        user: u64,
        username: String,
        role: Role,
        device: u64,
    },
    /// A stored message and the users whose devices should get it pushed.
    Message {
        ack: SendAck,
        message: Option<Message>,
        /// Shared with the writer's member cache: a group send copies no list.
        recipients: Arc<[u64]>,
    },
    /// A new group.
    Group {
        conv: u64,
        message: Message,
        recipients: Vec<u64>,
    },
    /// An event for the devices of `recipients` (a marker moved, a
    /// conversation was deleted from a user's view).
    Notice {
        event: Event,
        recipients: Arc<[u64]>,
    },
    /// An account whose connections must now be closed, and its revoked devices.
    Account {
        user: u64,
        devices: Vec<u64>,
    },
    /// The upload `upload_begin` started or resumed.
    Upload {
        upload: u64,
    },
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// Handle to the store. Cheap to clone; the writer thread stops when the last
/// handle is dropped, after committing what was queued.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    busy: Arc<WriterBusy>,
    repair: Option<std::time::Duration>,
    /// Set when the server stops taking writes ahead of a shutdown.
    writes_closed: Arc<std::sync::atomic::AtomicBool>,
}

/// When the writer thread began the commit it is in, for the watchdog.
struct WriterBusy {
    /// Milliseconds after `epoch` the current commit began; 0 when idle.
    since_ms: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl WriterBusy {
    fn now_ms(&self) -> u64 {
        // +1 so that a commit starting at the epoch is not read as idle.
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// Joins the writer thread once every [`Store`] handle is gone.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits until every queued write is committed and the writer has exited.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Store {
    /// Opens (or creates) the database file and starts the writer thread.
    /// `cache_bytes` bounds redb's page cache.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<(Store, WriterThread), StoreError> {
        // After a crash or power cut redb checks and repairs the file before
        // it opens; say so, and how long it took (it grows with the file).
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = repaired.clone();
        let started = std::time::Instant::now();
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .set_repair_callback(move |_| flag.store(true, std::sync::atomic::Ordering::Relaxed))
            .create(path)?;
        let repair = repaired
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| started.elapsed());
        if let Some(took) = repair {
            tracing::warn!(
                repair_ms = took.as_millis() as u64,
                file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                "the database was not closed cleanly (crash or power cut); checked and repaired it"
            );
        }
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let version = match meta.get("schema_version")? {
                Some(v) => Some(u32::from_be_bytes(
                    v.value()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("meta"))?,
                )),
                None => None,
            };
            match version {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION.to_be_bytes().as_slice())?;
                }
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::NewerSchema(v)),
                Some(1) => {
                    migrate_1_to_2(&txn)?;
                    meta.insert("schema_version", SCHEMA_VERSION.to_be_bytes().as_slice())?;
                    tracing::info!("store upgraded from schema 1 to 2 (unread counts)");
                }
                Some(_) => {}
            }
            // Create every table so readers never meet a missing one.
            txn.open_table(USERS)?;
            txn.open_table(USERNAMES)?;
            txn.open_table(DEVICES)?;
            txn.open_table(DEVICE_TOKENS)?;
            txn.open_table(USER_DEVICES)?;
            txn.open_table(INVITES)?;
            txn.open_table(CONVS)?;
            txn.open_table(DIRECT)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(USER_CONVS)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(MESSAGE_IDS)?;
            txn.open_table(CURSORS)?;
            txn.open_table(READ_MARKERS)?;
            txn.open_table(TEXT_ORDINALS)?;
            txn.open_table(EDITS)?;
            txn.open_table(LAST_SEEN)?;
            attachments::create_tables(&txn)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer_db = db.clone();
        let busy = Arc::new(WriterBusy {
            since_ms: Default::default(),
            epoch: std::time::Instant::now(),
        });
        let writer_busy = busy.clone();
        let handle = std::thread::Builder::new()
            .name("quince-writer".into())
            .spawn(move || writer_loop(writer_db, rx, &writer_busy))
            .map_err(|e| StoreError::Db(redb::StorageError::Io(e).into()))?;
        Ok((
            Store {
                db,
                path: path.to_path_buf(),
                writer: tx,
                busy,
                repair,
                writes_closed: Default::default(),
            },
            WriterThread(handle),
        ))
    }

    /// Queues a write; the returned receiver resolves after its commit.
    /// Queueing order is commit order, so one connection's sends keep their order.
    pub async fn submit(
        &self,
        op: WriteOp,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, StoreError> {
        if self
            .writes_closed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(StoreError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Refuses every write queued from now on (they fail with
    /// [`StoreError::Closed`]); writes already queued are still committed.
    /// Used before a power-loss shutdown, so clients hear "shutting down"
    /// while the connections are still open.
    pub fn close_writes(&self) {
        self.writes_closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Queues a write and waits for its commit.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        self.submit(op)
            .await?
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// How long the writer has been inside its current commit, or `None` when
    /// it is waiting for work. A commit that takes seconds means the disk (or
    /// the writer) is stuck; the watchdog stops petting then.
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        let since = self
            .busy
            .since_ms
            .load(std::sync::atomic::Ordering::Acquire);
        (since != 0)
            .then(|| std::time::Duration::from_millis(self.busy.now_ms().saturating_sub(since)))
    }

    /// How long opening took when the file had to be checked and repaired
    /// (it was not closed cleanly); `None` after a clean close.
    pub fn repair_time(&self) -> Option<std::time::Duration> {
        self.repair
    }

    /// False once the writer thread has gone (it panicked or the store closed).
    pub fn writer_alive(&self) -> bool {
        !self.writer.is_closed()
    }

    /// Size of the database file in bytes.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<(u64, UserRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(id) = txn.open_table(USERNAMES)?.get(name)?.map(|v| v.value()) else {
            return Ok(None);
        };
        Ok(read_user(&txn.open_table(USERS)?, id)?.map(|u| (id, u)))
    }

    pub fn user(&self, id: u64) -> Result<Option<UserRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        read_user(&txn.open_table(USERS)?, id)
    }

    /// The device a token belongs to, with its account.
    pub fn device_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<(u64, DeviceRecord, UserRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(id) = txn
            .open_table(DEVICE_TOKENS)?
            .get(token_hash)?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let Some(dev) = txn
            .open_table(DEVICES)?
            .get(id)?
            .map(|v| v.value().to_vec())
        else {
            return Ok(None);
        };
        let dev: DeviceRecord = dec("devices", &dev)?;
        let Some(user) = read_user(&txn.open_table(USERS)?, dev.user)? else {
            return Ok(None);
        };
        Ok(Some((id, dev, user)))
    }

    /// The user's conversations with this device's cursor in each; with
    /// `changed_only`, just those with messages past the cursor.
    pub fn conversations(
        &self,
        user: u64,
        device: u64,
        changed_only: bool,
    ) -> Result<Vec<ConvSummary>, StoreError> {
        let txn = self.db.begin_read()?;
        let user_convs = txn.open_table(USER_CONVS)?;
        let convs = txn.open_table(CONVS)?;
        let members = txn.open_table(MEMBERS)?;
        let cursors = txn.open_table(CURSORS)?;
        let users = txn.open_table(USERS)?;
        let markers = txn.open_table(READ_MARKERS)?;
        let ordinals = txn.open_table(TEXT_ORDINALS)?;
        let messages = txn.open_table(MESSAGES)?;
        let me = read_user(&users, user)?.map(|u| u.name).unwrap_or_default();
        let mut out = Vec::new();
        for entry in user_convs.range(k16(user, 0)..=k16(user, u64::MAX))? {
            let (key, _) = entry?;
            let (_, conv) = split16(key.value());
            let Some(rec) = convs.get(conv)? else {
                continue;
            };
            let rec: ConvRecord = dec("conversations", rec.value())?;
            let Some(m) = members.get(k16(conv, user))? else {
                continue;
            };
            let m: Membership = dec("members", m.value())?;
            let last_seq = m.until_seq.unwrap_or(rec.last_seq);
            let seen_before = m.first_visible() - 1;
            if last_seq <= m.cleared {
                // Deleted from this user's view, and nothing came since.
                continue;
            }
            let cursor = cursors
                .get(k16(device, conv))?
                .map(|v| v.value())
                .unwrap_or(0)
                .max(seen_before);
            if changed_only && last_seq <= cursor {
                continue;
            }
            let read = markers
                .get(k16(conv, user))?
                .map(|v| v.value())
                .unwrap_or(0)
                .min(last_seq);
            let unread = texts_upto(&ordinals, conv, last_seq)?.saturating_sub(texts_upto(
                &ordinals,
                conv,
                read.max(seen_before),
            )?);
            let last = match messages.get(k16(conv, last_seq))? {
                Some(v) if last_seq > seen_before => Some(Box::new(dec("messages", v.value())?)),
                _ => None,
            };
            let name = match rec.kind {
                ConvKind::Group => rec.name.clone(),
                ConvKind::Direct => rec
                    .peers
                    .iter()
                    .find(|p| **p != me)
                    .or(rec.peers.first())
                    .cloned()
                    .unwrap_or_default(),
            };
            out.push(ConvSummary {
                conv,
                kind: rec.kind,
                name,
                last_seq,
                cursor,
                member: m.active(),
                read,
                unread,
                last,
            });
        }
        Ok(out)
    }

    /// The direct conversation between two users, if it exists.
    pub fn direct_conv(&self, a: u64, b: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(DIRECT)?
            .get(k16(a.min(b), a.max(b)))?
            .map(|v| v.value()))
    }

    /// A page of a conversation the user may read.
    pub fn history(
        &self,
        user: u64,
        conv: u64,
        after: Option<u64>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        if after.is_some() && before.is_some() {
            return reject(ErrorCode::BadRequest, "give `after` or `before`, not both");
        }
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let txn = self.db.begin_read()?;
        let (rec, m) = readable(
            &txn.open_table(CONVS)?,
            &txn.open_table(MEMBERS)?,
            conv,
            user,
        )?;
        let lo = m.first_visible();
        let hi = m.until_seq.unwrap_or(rec.last_seq);
        let messages_table = txn.open_table(MESSAGES)?;
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        if let Some(after) = after {
            let start = after.saturating_add(1).max(lo);
            if start <= hi {
                for entry in messages_table.range(k16(conv, start)..=k16(conv, hi))? {
                    let (_, v) = entry?;
                    let v = v.value();
                    if messages.len() == limit
                        || (bytes + v.len() > PAGE_BYTES && !messages.is_empty())
                    {
                        more = true;
                        break;
                    }
                    bytes += v.len();
                    messages.push(dec::<Message>("messages", v)?);
                }
            }
        } else {
            let end = before.unwrap_or(u64::MAX).min(hi.saturating_add(1));
            if end > lo {
                for entry in messages_table.range(k16(conv, lo)..k16(conv, end))?.rev() {
                    let (_, v) = entry?;
                    let v = v.value();
                    if messages.len() == limit
                        || (bytes + v.len() > PAGE_BYTES && !messages.is_empty())
                    {
                        more = true;
                        break;
                    }
                    bytes += v.len();
                    messages.push(dec::<Message>("messages", v)?);
                }
                messages.reverse();
            }
        }
        Ok(Page { messages, more })
    }

    /// Members of a group the user belongs to.
    pub fn members(&self, user: u64, conv: u64) -> Result<Members, StoreError> {
        let txn = self.db.begin_read()?;
        let convs = txn.open_table(CONVS)?;
        let members = txn.open_table(MEMBERS)?;
        let (rec, m) = readable(&convs, &members, conv, user)?;
        if !m.active() {
            return reject(
                ErrorCode::Forbidden,
                format!("you are no longer a member of conversation {conv}"),
            );
        }
        let users = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for entry in members.range(k16(conv, 0)..=k16(conv, u64::MAX))? {
            let (k, v) = entry?;
            let m: Membership = dec("members", v.value())?;
            if !m.active() {
                continue;
            }
            let (_, uid) = split16(k.value());
            if let Some(u) = read_user(&users, uid)? {
                out.push(Member {
                    user: u.name,
                    owner: uid == rec.owner,
                    role: role_of(&rec, uid, &m),
                });
            }
        }
        Ok(Members {
            name: rec.name,
            members: out,
        })
    }

    /// Every active member's delivery and read markers in a conversation the
    /// user belongs to. Delivered is the furthest any of the member's
    /// devices has acknowledged.
    pub fn receipts(&self, user: u64, conv: u64) -> Result<Receipts, StoreError> {
        let txn = self.db.begin_read()?;
        let members = txn.open_table(MEMBERS)?;
        let (rec, m) = readable(&txn.open_table(CONVS)?, &members, conv, user)?;
        if !m.active() {
            return reject(
                ErrorCode::Forbidden,
                format!("you are no longer a member of conversation {conv}"),
            );
        }
        let users = txn.open_table(USERS)?;
        let user_devices = txn.open_table(USER_DEVICES)?;
        let cursors = txn.open_table(CURSORS)?;
        let markers = txn.open_table(READ_MARKERS)?;
        let mut out = Vec::new();
        for entry in members.range(k16(conv, 0)..=k16(conv, u64::MAX))? {
            let (k, v) = entry?;
            if !dec::<Membership>("members", v.value())?.active() {
                continue;
            }
            let (_, uid) = split16(k.value());
            let Some(u) = read_user(&users, uid)? else {
                continue;
            };
            let mut delivered = 0;
            for d in user_devices.range(k16(uid, 0)..=k16(uid, u64::MAX))? {
                let (_, device) = split16(d?.0.value());
                if let Some(c) = cursors.get(k16(device, conv))? {
                    delivered = delivered.max(c.value());
                }
            }
            let read = markers.get(k16(conv, uid))?.map(|v| v.value()).unwrap_or(0);
            out.push(Receipt {
                user: u.name,
                delivered: delivered.min(rec.last_seq),
                read: read.min(rec.last_seq),
            });
        }
        Ok(Receipts { conv, members: out })
    }

    /// Every account, for administrators.
    pub fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        let txn = self.db.begin_read()?;
        let users = txn.open_table(USERS)?;
        let user_devices = txn.open_table(USER_DEVICES)?;
        let mut out = Vec::new();
        for entry in users.iter()? {
            let (k, v) = entry?;
            let u: UserRecord = dec("users", v.value())?;
            let id = k.value();
            let devices = user_devices.range(k16(id, 0)..=k16(id, u64::MAX))?.count() as u32;
            out.push(UserInfo {
                user: u.name,
                role: u.role,
                disabled: u.disabled,
                devices,
                created: u.created,
            });
        }
        Ok(out)
    }

    /// Counts for the status report: (users, messages).
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        Ok((
            txn.open_table(USERS)?.len()?,
            txn.open_table(MESSAGES)?.len()?,
        ))
    }
}

/// How many text messages `conv` has up to and including `seq`.
fn texts_upto(
    ordinals: &impl ReadableTable<[u8; 16], u64>,
    conv: u64,
    seq: u64,
) -> Result<u64, StoreError> {
    Ok(
        match ordinals.range(k16(conv, 0)..=k16(conv, seq))?.next_back() {
            Some(entry) => entry?.1.value(),
            None => 0,
        },
    )
}

/// Schema 2 added unread counts: number the text messages already stored,
/// and record each conversation's count.
fn migrate_1_to_2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let messages = txn.open_table(MESSAGES)?;
    let mut ordinals = txn.open_table(TEXT_ORDINALS)?;
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for entry in messages.iter()? {
        let (k, v) = entry?;
        let (conv, seq) = split16(k.value());
        let body = dec::<Message>("messages", v.value())?.body;
        if matches!(body, Body::Text { .. }) {
            let count = counts.entry(conv).or_default();
            *count += 1;
            ordinals.insert(k16(conv, seq), *count)?;
        }
    }
    let mut convs = txn.open_table(CONVS)?;
    for (conv, texts) in counts {
        let Some(rec) = convs.get(conv)?.map(|v| v.value().to_vec()) else {
            continue;
        };
        let mut rec: ConvRecord = dec("conversations", &rec)?;
        rec.texts = texts;
        convs.insert(conv, enc(&rec).as_slice())?;
    }
    Ok(())
}

fn read_user(
    users: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<UserRecord>, StoreError> {
    match users.get(id)? {
        Some(v) => Ok(Some(dec("users", v.value())?)),
        None => Ok(None),
    }
}

/// The conversation and the user's membership of it, or `Forbidden`. A
/// conversation that does not exist gets the same answer as one the user is not
/// in, so ids cannot be probed.
fn readable(
    convs: &impl ReadableTable<u64, &'static [u8]>,
    members: &impl ReadableTable<[u8; 16], &'static [u8]>,
    conv: u64,
    user: u64,
) -> Result<(ConvRecord, Membership), StoreError> {
    let m = match members.get(k16(conv, user))? {
        Some(v) => dec::<Membership>("members", v.value())?,
        None => {
            return reject(
                ErrorCode::Forbidden,
                format!("you are not a member of conversation {conv}"),
            );
        }
    };
    let rec = match convs.get(conv)? {
        Some(v) => dec::<ConvRecord>("conversations", v.value())?,
        None => return Err(StoreError::Corrupt("conversations")),
    };
    Ok((rec, m))
}

/// Reads for presence and typing (`crate::presence`, `crate::typing`), which
/// keep what they read in memory and so ask rarely.
impl Store {
    /// Ids of everyone who shares an active membership of a conversation
    /// with `user` (not `user`), ascending. One read transaction: the user's
    /// conversations, then each one's members; no user records are read.
    pub fn contacts(&self, user: u64) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let user_convs = txn.open_table(USER_CONVS)?;
        let members = txn.open_table(MEMBERS)?;
        let mut ids = std::collections::BTreeSet::new();
        for entry in user_convs.range(k16(user, 0)..=k16(user, u64::MAX))? {
            let (key, _) = entry?;
            let (_, conv) = split16(key.value());
            let active = match members.get(k16(conv, user))? {
                Some(m) => dec::<Membership>("members", m.value())?.active(),
                None => false,
            };
            if !active {
                continue;
            }
            for entry in members.range(k16(conv, 0)..=k16(conv, u64::MAX))? {
                let (k, v) = entry?;
                let (_, uid) = split16(k.value());
                if uid != user && dec::<Membership>("members", v.value())?.active() {
                    ids.insert(uid);
                }
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// The names of these users (those that exist), in one read transaction.
    pub fn user_names(&self, ids: &[u64]) -> Result<Vec<(u64, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let users = txn.open_table(USERS)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(u) = read_user(&users, *id)? {
                out.push((*id, u.name));
            }
        }
        Ok(out)
    }

    /// When these users were last seen (those recorded), in one read transaction.
    pub fn last_seen(&self, ids: &[u64]) -> Result<Vec<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LAST_SEEN)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(at) = table.get(*id)? {
                out.push((*id, at.value()));
            }
        }
        Ok(out)
    }

    /// User ids of the active members of a conversation (empty if there is none).
    pub fn active_member_ids(&self, conv: u64) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let members = txn.open_table(MEMBERS)?;
        let mut out = Vec::new();
        for entry in members.range(k16(conv, 0)..=k16(conv, u64::MAX))? {
            let (k, v) = entry?;
            if dec::<Membership>("members", v.value())?.active() {
                out.push(split16(k.value()).1);
            }
        }
        Ok(out)
    }
}

fn writer_loop(db: Arc<Database>, mut rx: mpsc::Receiver<Job>, busy: &WriterBusy) {
    use std::sync::atomic::Ordering;
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut cache = MembersCache::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        busy.since_ms.store(busy.now_ms(), Ordering::Release);
        let committed = commit_batch(&db, &batch, &mut cache);
        busy.since_ms.store(0, Ordering::Release);
        match committed {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                // The cache may hold lists the failed transaction changed.
                cache.0.clear();
                tracing::error!(error = %e, requests = batch.len(), "write transaction failed; nothing in it was stored");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Rejected(
                        ErrorCode::Internal,
                        "the server could not store this; nothing was saved".into(),
                    )));
                }
            }
        }
    }
}

/// Applies a batch in one transaction. A request refused by validation leaves
/// nothing written and does not affect the others; a storage error fails the batch.
fn commit_batch(
    db: &Database,
    batch: &[Job],
    cache: &mut MembersCache,
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut w = Writer::open(&txn, cache)?;
        for job in batch {
            match w.apply(&job.op) {
                Err(StoreError::Rejected(code, msg)) => {
                    results.push(Err(StoreError::Rejected(code, msg)))
                }
                Err(e) => return Err(e),
                Ok(outcome) => results.push(Ok(outcome)),
            }
        }
    }
    txn.commit()?;
    Ok(results)
}

/// Active members of groups, kept by the writer thread between transactions.
///
/// Every send to a group needs its member list to know whom to push to;
/// reading it back from the members table costs one row per member, which for
/// a 500-member group was most of the work of a send. Only the writer changes
/// memberships, so it can keep the lists and drop one whenever a membership of
/// that conversation is written (or the whole cache when a transaction fails).
#[derive(Default)]
struct MembersCache(HashMap<u64, Arc<[u64]>>);

/// Conversations whose member lists are kept at most; beyond, the cache restarts.
const MEMBERS_CACHE_MAX: usize = 4096;

/// Every table, open in one write transaction.
struct Writer<'t, 'c> {
    cache: &'c mut MembersCache,
    meta: Table<'t, &'static str, &'static [u8]>,
    users: Table<'t, u64, &'static [u8]>,
    usernames: Table<'t, &'static str, u64>,
    devices: Table<'t, u64, &'static [u8]>,
    device_tokens: Table<'t, [u8; 32], u64>,
    user_devices: Table<'t, [u8; 16], ()>,
    invites: Table<'t, [u8; 32], &'static [u8]>,
    convs: Table<'t, u64, &'static [u8]>,
    direct: Table<'t, [u8; 16], u64>,
    members: Table<'t, [u8; 16], &'static [u8]>,
    user_convs: Table<'t, [u8; 16], ()>,
    messages: Table<'t, [u8; 16], &'static [u8]>,
    message_ids: Table<'t, [u8; 24], [u8; 16]>,
    cursors: Table<'t, [u8; 16], u64>,
    read_markers: Table<'t, [u8; 16], u64>,
    text_ordinals: Table<'t, [u8; 16], u64>,
    edits: Table<'t, [u8; 24], ()>,
    last_seen: Table<'t, u64, u64>,
    att: attachments::Tables<'t>,
}

impl<'t, 'c> Writer<'t, 'c> {
    fn open(txn: &'t WriteTransaction, cache: &'c mut MembersCache) -> Result<Self, StoreError> {
        Ok(Writer {
            cache,
            meta: txn.open_table(META)?,
            users: txn.open_table(USERS)?,
            usernames: txn.open_table(USERNAMES)?,
            devices: txn.open_table(DEVICES)?,
            device_tokens: txn.open_table(DEVICE_TOKENS)?,
            user_devices: txn.open_table(USER_DEVICES)?,
            invites: txn.open_table(INVITES)?,
            convs: txn.open_table(CONVS)?,
            direct: txn.open_table(DIRECT)?,
            members: txn.open_table(MEMBERS)?,
            user_convs: txn.open_table(USER_CONVS)?,
            messages: txn.open_table(MESSAGES)?,
            message_ids: txn.open_table(MESSAGE_IDS)?,
            cursors: txn.open_table(CURSORS)?,
            read_markers: txn.open_table(READ_MARKERS)?,
            text_ordinals: txn.open_table(TEXT_ORDINALS)?,
            edits: txn.open_table(EDITS)?,
            last_seen: txn.open_table(LAST_SEEN)?,
            att: attachments::Tables::open(txn)?,
        })
    }

    fn next_id(&mut self, counter: &str) -> Result<u64, StoreError> {
        let current = match self.meta.get(counter)? {
            Some(v) => u64::from_be_bytes(
                v.value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("meta"))?,
            ),
            None => 1,
        };
        self.meta
            .insert(counter, (current + 1).to_be_bytes().as_slice())?;
        Ok(current)
    }

    fn user_id(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.usernames.get(name)?.map(|v| v.value()))
    }

    fn user(&self, id: u64) -> Result<Option<UserRecord>, StoreError> {
        read_user(&self.users, id)
    }

    fn conv(&self, id: u64) -> Result<Option<ConvRecord>, StoreError> {
        match self.convs.get(id)? {
            Some(v) => Ok(Some(dec("conversations", v.value())?)),
            None => Ok(None),
        }
    }

    fn membership(&self, conv: u64, user: u64) -> Result<Option<Membership>, StoreError> {
        match self.members.get(k16(conv, user))? {
            Some(v) => Ok(Some(dec("members", v.value())?)),
            None => Ok(None),
        }
    }

    fn set_membership(&mut self, conv: u64, user: u64, m: &Membership) -> Result<(), StoreError> {
        self.cache.0.remove(&conv);
        self.members.insert(k16(conv, user), enc(m).as_slice())?;
        self.user_convs.insert(k16(user, conv), ())?;
        Ok(())
    }

    /// Current members of a conversation.
    fn active_members(&mut self, conv: u64) -> Result<Arc<[u64]>, StoreError> {
        if let Some(ids) = self.cache.0.get(&conv) {
            return Ok(ids.clone());
        }
        let mut out = Vec::new();
        for entry in self.members.range(k16(conv, 0)..=k16(conv, u64::MAX))? {
            let (k, v) = entry?;
            let m: Membership = dec("members", v.value())?;
            if m.active() {
                out.push(split16(k.value()).1);
            }
        }
        let ids: Arc<[u64]> = out.into();
        if self.cache.0.len() >= MEMBERS_CACHE_MAX {
            self.cache.0.clear();
        }
        self.cache.0.insert(conv, ids.clone());
        Ok(ids)
    }

    #[allow(clippy::too_many_arguments)]
    /// Appends a message to a conversation and moves the sending device's
    /// cursor past it when the device had everything before it.
    fn append(
        &mut self,
        conv: u64,
        rec: &mut ConvRecord,
        mid: [u8; MID_LEN],
        from: &str,
        device: u64,
        now: u64,
        body: Body,
    ) -> Result<Message, StoreError> {
        rec.last_seq += 1;
        let seq = rec.last_seq;
        let message = Message {
            conv,
            seq,
            mid: ByteBuf::from(mid.to_vec()),
            from: from.to_string(),
            device,
            ts: now,
            body,
        };
        self.messages
            .insert(k16(conv, seq), enc(&message).as_slice())?;
        if matches!(message.body, Body::Text { .. }) {
            rec.texts += 1;
            self.text_ordinals.insert(k16(conv, seq), rec.texts)?;
        }
        self.convs.insert(conv, enc(rec).as_slice())?;
        let cursor_key = k16(device, conv);
        let cursor = self
            .cursors
            .get(cursor_key)?
            .map(|v| v.value())
            .unwrap_or(0);
        if cursor + 1 == seq {
            self.cursors.insert(cursor_key, seq)?;
        }
        Ok(message)
    }

    fn create_device(
        &mut self,
        user: u64,
        name: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<u64, StoreError> {
        let id = self.next_id("next_device")?;
        let rec = DeviceRecord {
            user,
            name: name.to_string(),
            token_hash: token_hash.to_vec(),
            created: now,
        };
        self.devices.insert(id, enc(&rec).as_slice())?;
        self.device_tokens.insert(token_hash, id)?;
        self.user_devices.insert(k16(user, id), ())?;
        Ok(id)
    }

    fn remove_device(&mut self, device: u64) -> Result<(), StoreError> {
        let Some(rec) = self.devices.remove(device)?.map(|v| v.value().to_vec()) else {
            return Ok(());
        };
        let rec: DeviceRecord = dec("devices", &rec)?;
        if let Ok(hash) = <[u8; 32]>::try_from(rec.token_hash.as_slice()) {
            self.device_tokens.remove(hash)?;
        }
        self.user_devices.remove(k16(rec.user, device))?;
        self.cursors
            .retain_in(k16(device, 0)..=k16(device, u64::MAX), |_, _| false)?;
        Ok(())
    }

    fn user_devices(&self, user: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .user_devices
            .range(k16(user, 0)..=k16(user, u64::MAX))?
        {
            out.push(split16(entry?.0.value()).1);
        }
        Ok(out)
    }

    fn group_for_change(&self, conv: u64, actor: u64) -> Result<ConvRecord, StoreError> {
        let rec = match self.conv(conv)? {
            Some(r) if r.kind == ConvKind::Group => r,
            _ => {
                return reject(
                    ErrorCode::Forbidden,
                    format!("you are not a member of group {conv}"),
                );
            }
        };
        match self.membership(conv, actor)? {
            Some(m) if m.active() => Ok(rec),
            _ => reject(
                ErrorCode::Forbidden,
                format!("you are not a member of group {conv}"),
            ),
        }
    }

    /// The user's role in a group they are an active member of.
    fn role(&self, rec: &ConvRecord, conv: u64, user: u64) -> Result<GroupRole, StoreError> {
        let m = self
            .membership(conv, user)?
            .ok_or(StoreError::Corrupt("members"))?;
        Ok(role_of(rec, user, &m))
    }

    /// Appends an event (rename, role change…) sent by `username` to every member.
    fn system_message(
        &mut self,
        conv: u64,
        mut rec: ConvRecord,
        username: &str,
        device: u64,
        now: u64,
        body: Body,
    ) -> Result<WriteOutcome, StoreError> {
        let recipients = self.active_members(conv)?;
        let message = self.append(conv, &mut rec, [0; MID_LEN], username, device, now, body)?;
        Ok(WriteOutcome::Message {
            ack: ack_of(&message, false),
            message: Some(message),
            recipients,
        })
    }

    /// The owner promotes, demotes, or hands the group to `member`.
    #[allow(clippy::too_many_arguments)]
    fn set_role(
        &mut self,
        user: u64,
        username: &str,
        device: u64,
        conv: u64,
        member: &str,
        role: GroupRole,
        now: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut rec = self.group_for_change(conv, user)?;
        if rec.owner != user {
            return reject(
                ErrorCode::Forbidden,
                "only the group's owner can change roles or hand the group over",
            );
        }
        let Some(member_id) = self.user_id(member)? else {
            return reject(ErrorCode::NotFound, format!("no user named {member}"));
        };
        let Some(mut m) = self.membership(conv, member_id)?.filter(|m| m.active()) else {
            return reject(
                ErrorCode::NotFound,
                format!("{member} is not a member of group {conv}"),
            );
        };
        if member_id == user {
            return reject(ErrorCode::BadRequest, "you are the owner already");
        }
        let body = if role == GroupRole::Owner {
            rec.owner = member_id;
            m.role = GroupRole::Member;
            self.set_membership(conv, member_id, &m)?;
            let mut mine = self
                .membership(conv, user)?
                .ok_or(StoreError::Corrupt("members"))?;
            mine.role = GroupRole::Admin;
            self.set_membership(conv, user, &mine)?;
            Body::OwnerChanged {
                user: member.to_string(),
            }
        } else {
            if m.role == role {
                return Ok(WriteOutcome::Done);
            }
            m.role = role;
            self.set_membership(conv, member_id, &m)?;
            Body::RoleChanged {
                user: member.to_string(),
                role,
            }
        };
        self.system_message(conv, rec, username, device, now, body)
    }

    fn message(&self, conv: u64, seq: u64) -> Result<Option<Message>, StoreError> {
        match self.messages.get(k16(conv, seq))? {
            Some(v) => Ok(Some(dec("messages", v.value())?)),
            None => Ok(None),
        }
    }

    fn put_message(&mut self, m: &Message) -> Result<(), StoreError> {
        self.messages
            .insert(k16(m.conv, m.seq), enc(m).as_slice())?;
        Ok(())
    }

    /// Edits, recalls or reacts to message `seq` of `conv`, and appends the
    /// event that tells every device.
    #[allow(clippy::too_many_arguments)]
    fn amend(
        &mut self,
        user: u64,
        username: &str,
        device: u64,
        conv: u64,
        seq: u64,
        change: &Amendment,
        now: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let (rec, m) = readable(&self.convs, &self.members, conv, user)?;
        if !m.active() {
            return reject(
                ErrorCode::Forbidden,
                format!("you are no longer a member of conversation {conv}"),
            );
        }
        let not_found = || {
            reject(
                ErrorCode::NotFound,
                format!("no message #{seq} in conversation {conv}"),
            )
        };
        if seq < m.from_seq {
            return not_found();
        }
        let Some(mut original) = self.message(conv, seq)? else {
            return not_found();
        };
        let own = original.from == username;
        let age = now.saturating_sub(original.ts);
        match (&original.body, change) {
            (Body::Text { .. }, _) => {}
            // A recall retried after its answer was lost changes nothing more.
            (Body::Recalled {}, Amendment::Recall { .. }) => return Ok(unchanged(&original)),
            (Body::Recalled {}, _) => {
                return reject(ErrorCode::NotFound, format!("message #{seq} was recalled"));
            }
            _ => {
                return reject(
                    ErrorCode::BadRequest,
                    format!("message #{seq} is an event, not a message that can be changed"),
                );
            }
        }
        let event = match change {
            Amendment::Edit { text, window_ms } => {
                if !own {
                    return reject(ErrorCode::Forbidden, "you can only edit your own messages");
                }
                if age > *window_ms {
                    return reject(
                        ErrorCode::TooLate,
                        format!(
                            "messages can be edited for {} s after sending",
                            window_ms / 1000
                        ),
                    );
                }
                if let Body::Text {
                    text: current,
                    edited,
                    ..
                } = &mut original.body
                {
                    if current == text {
                        return Ok(unchanged(&original));
                    }
                    *current = text.clone();
                    *edited = Some(now);
                }
                self.put_message(&original)?;
                Body::Edit {
                    of: seq,
                    text: text.clone(),
                }
            }
            Amendment::Recall { window_ms } => {
                let moderator =
                    rec.kind == ConvKind::Group && role_of(&rec, user, &m) >= GroupRole::Admin;
                if !own && !moderator {
                    return reject(
                        ErrorCode::Forbidden,
                        "you can only recall your own messages",
                    );
                }
                if !moderator && age > *window_ms {
                    return reject(
                        ErrorCode::TooLate,
                        format!(
                            "messages can be recalled for {} s after sending",
                            window_ms / 1000
                        ),
                    );
                }
                // The content goes from the store: the message and every
                // edit of it keep only their place in the conversation. An
                // attached file no other message refers to goes as well (the
                // garbage collection deletes it once this commits).
                if let Body::Text {
                    attachment: Some(a),
                    ..
                } = &original.body
                {
                    self.release_attachment(&a.id, conv, seq)?;
                }
                original.body = Body::Recalled {};
                self.put_message(&original)?;
                let mut edits = Vec::new();
                for entry in self
                    .edits
                    .range(k24(conv, seq, 0)..=k24(conv, seq, u64::MAX))?
                {
                    edits.push(split24(entry?.0.value()).2);
                }
                for edit_seq in edits {
                    if let Some(mut edit) = self.message(conv, edit_seq)? {
                        edit.body = Body::Recalled {};
                        self.put_message(&edit)?;
                    }
                    self.edits.remove(k24(conv, seq, edit_seq))?;
                }
                Body::Recall { of: seq }
            }
            Amendment::React { emoji, add } => {
                let Body::Text { reactions, .. } = &mut original.body else {
                    return not_found();
                };
                let at = reactions.iter().position(|r| r.emoji == *emoji);
                let mine = at.is_some_and(|i| reactions[i].users.iter().any(|u| u == username));
                if mine == *add {
                    return Ok(unchanged(&original));
                }
                if *add {
                    let total: usize = reactions.iter().map(|r| r.users.len()).sum();
                    if total >= MAX_REACTIONS
                        || (at.is_none() && reactions.len() >= MAX_REACTION_KINDS)
                    {
                        return reject(
                            ErrorCode::BadRequest,
                            format!("message #{seq} has as many reactions as a message can hold"),
                        );
                    }
                    match at {
                        Some(i) => reactions[i].users.push(username.to_string()),
                        None => reactions.push(Reactions {
                            emoji: emoji.clone(),
                            users: vec![username.to_string()],
                        }),
                    }
                } else if let Some(i) = at {
                    reactions[i].users.retain(|u| u != username);
                    if reactions[i].users.is_empty() {
                        reactions.remove(i);
                    }
                }
                self.put_message(&original)?;
                Body::Reaction {
                    of: seq,
                    emoji: emoji.clone(),
                    add: *add,
                }
            }
        };
        let edit = matches!(event, Body::Edit { .. });
        let outcome = self.system_message(conv, rec, username, device, now, event)?;
        if let (true, WriteOutcome::Message { ack, .. }) = (edit, &outcome) {
            self.edits.insert(k24(conv, seq, ack.seq), ())?;
        }
        Ok(outcome)
    }

    fn apply(&mut self, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
        match op {
            WriteOp::Bootstrap {
                token_hash,
                expires,
            } => {
                if !self.users.is_empty()? || !self.invites.is_empty()? {
                    return Ok(WriteOutcome::Bootstrapped(false));
                }
                let rec = InviteRecord {
                    role: Role::Admin,
                    expires: *expires,
                    created_by: 0,
                };
                self.invites.insert(*token_hash, enc(&rec).as_slice())?;
                Ok(WriteOutcome::Bootstrapped(true))
            }
            WriteOp::Register {
                invite_hash,
                username,
                password,
                device,
                token_hash,
                now,
            } => {
                let invite: InviteRecord = match self.invites.get(invite_hash)? {
                    Some(v) => dec("invites", v.value())?,
                    None => {
                        return reject(ErrorCode::InvalidInvite, "unknown or already used invite");
                    }
                };
                if invite.expires < *now {
                    self.invites.remove(invite_hash)?;
                    return reject(ErrorCode::InvalidInvite, "this invite has expired");
                }
                if self.user_id(username)?.is_some() {
                    return reject(
                        ErrorCode::UsernameTaken,
                        format!("the name {username} is taken"),
                    );
                }
                self.invites.remove(invite_hash)?;
                let id = self.next_id("next_user")?;
                let rec = UserRecord {
                    name: username.clone(),
                    password: password.clone(),
                    role: invite.role,
                    disabled: false,
                    created: *now,
                };
                self.users.insert(id, enc(&rec).as_slice())?;
                self.usernames.insert(username.as_str(), id)?;
                let dev = self.create_device(id, device, *token_hash, *now)?;
                Ok(WriteOutcome::Device {
                    user: id,
                    username: username.clone(),
                    role: invite.role,
                    device: dev,
                })
            }
            WriteOp::AddDevice {
                user,
                device,
                token_hash,
                now,
            } => {
                let rec = match self.user(*user)? {
                    Some(r) if !r.disabled => r,
                    Some(_) => {
                        return reject(ErrorCode::AccountDisabled, "this account is disabled");
                    }
                    None => {
                        return reject(ErrorCode::InvalidCredentials, "wrong username or password");
                    }
                };
                let dev = self.create_device(*user, device, *token_hash, *now)?;
                Ok(WriteOutcome::Device {
                    user: *user,
                    username: rec.name,
                    role: rec.role,
                    device: dev,
                })
            }
            WriteOp::RemoveDevice { device } => {
                self.remove_device(*device)?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::Send {
                user,
                username,
                device,
                target,
                mid,
                text,
                ext,
                reply_to,
                attachment,
                now,
            } => self.send(
                *user,
                username,
                *device,
                target,
                *mid,
                OutgoingText {
                    text,
                    ext,
                    reply_to: *reply_to,
                    attachment: attachment.as_ref(),
                },
                *now,
            ),
            WriteOp::Ack {
                user,
                username,
                device,
                conv,
                seq,
            } => {
                let (rec, m) = readable(&self.convs, &self.members, *conv, *user)?;
                let top = m.until_seq.unwrap_or(rec.last_seq);
                let key = k16(*device, *conv);
                let current = self.cursors.get(key)?.map(|v| v.value()).unwrap_or(0);
                let next = (*seq).min(top);
                if next <= current {
                    return Ok(WriteOutcome::Done);
                }
                self.cursors.insert(key, next)?;
                // Delivery receipts are pushed in direct conversations only:
                // in a group every member's ack would go to every member, n²
                // events per message. Groups ask with `receipts`.
                if rec.kind != ConvKind::Direct {
                    return Ok(WriteOutcome::Done);
                }
                let peers: Vec<u64> = self
                    .active_members(*conv)?
                    .iter()
                    .copied()
                    .filter(|id| id != user)
                    .collect();
                Ok(WriteOutcome::Notice {
                    event: Event::Delivered(Marker {
                        conv: *conv,
                        user: username.clone(),
                        seq: next,
                    }),
                    recipients: peers.into(),
                })
            }
            WriteOp::Amend {
                user,
                username,
                device,
                conv,
                seq,
                change,
                now,
            } => self.amend(*user, username, *device, *conv, *seq, change, *now),
            WriteOp::Read {
                user,
                username,
                conv,
                seq,
            } => {
                let (rec, m) = readable(&self.convs, &self.members, *conv, *user)?;
                let top = m.until_seq.unwrap_or(rec.last_seq);
                let next = (*seq).min(top);
                let key = k16(*conv, *user);
                let current = self.read_markers.get(key)?.map(|v| v.value()).unwrap_or(0);
                if next <= current {
                    return Ok(WriteOutcome::Done);
                }
                self.read_markers.insert(key, next)?;
                // The reader's other devices hear it as well as the other members.
                let mut recipients = self.active_members(*conv)?.to_vec();
                if !recipients.contains(user) {
                    recipients.push(*user);
                }
                Ok(WriteOutcome::Notice {
                    event: Event::Read(Marker {
                        conv: *conv,
                        user: username.clone(),
                        seq: next,
                    }),
                    recipients: recipients.into(),
                })
            }
            WriteOp::ConvDelete { user, conv } => {
                let (rec, mut m) = readable(&self.convs, &self.members, *conv, *user)?;
                let top = m.until_seq.unwrap_or(rec.last_seq);
                if m.active() {
                    m.cleared = m.cleared.max(top);
                    self.set_membership(*conv, *user, &m)?;
                } else {
                    // A former member's view is all there is of it for them:
                    // nothing new can arrive, so it goes for good.
                    self.cache.0.remove(conv);
                    self.members.remove(k16(*conv, *user))?;
                    self.user_convs.remove(k16(*user, *conv))?;
                }
                // Every device of the user has now "received" what was deleted,
                // so none of them syncs it again.
                for d in self.user_devices(*user)? {
                    let key = k16(d, *conv);
                    let current = self.cursors.get(key)?.map(|v| v.value()).unwrap_or(0);
                    if current < top {
                        self.cursors.insert(key, top)?;
                    }
                }
                Ok(WriteOutcome::Notice {
                    event: Event::ConvDeleted(ConvDeleted {
                        conv: *conv,
                        seq: top,
                    }),
                    recipients: Arc::new([*user]),
                })
            }
            WriteOp::GroupRename {
                user,
                username,
                device,
                conv,
                name,
                now,
            } => {
                let mut rec = self.group_for_change(*conv, *user)?;
                if rec.owner != *user {
                    return reject(ErrorCode::Forbidden, "only the group's owner can rename it");
                }
                if rec.name == *name {
                    return Ok(WriteOutcome::Done);
                }
                rec.name = name.clone();
                let body = Body::GroupRenamed { name: name.clone() };
                self.system_message(*conv, rec, username, *device, *now, body)
            }
            WriteOp::GroupRole {
                user,
                username,
                device,
                conv,
                member,
                role,
                now,
            } => self.set_role(*user, username, *device, *conv, member, *role, *now),
            WriteOp::GroupCreate {
                user,
                username,
                device,
                name,
                members,
                now,
            } => {
                let mut ids = vec![*user];
                for member in members {
                    match self.user_id(member)? {
                        Some(id) if !ids.contains(&id) => ids.push(id),
                        Some(_) => {}
                        None => {
                            return reject(ErrorCode::NotFound, format!("no user named {member}"));
                        }
                    }
                }
                if ids.len() > MAX_GROUP_MEMBERS {
                    return reject(
                        ErrorCode::BadRequest,
                        format!("a group has at most {MAX_GROUP_MEMBERS} members"),
                    );
                }
                let conv = self.next_id("next_conv")?;
                let mut rec = ConvRecord {
                    kind: ConvKind::Group,
                    name: name.clone(),
                    peers: Vec::new(),
                    owner: *user,
                    last_seq: 0,
                    created: *now,
                    texts: 0,
                };
                for id in &ids {
                    self.set_membership(conv, *id, &Membership::from(1))?;
                }
                let body = Body::GroupCreated { name: name.clone() };
                let message =
                    self.append(conv, &mut rec, [0; MID_LEN], username, *device, *now, body)?;
                Ok(WriteOutcome::Group {
                    conv,
                    message,
                    recipients: ids,
                })
            }
            WriteOp::GroupAdd {
                user,
                username,
                device,
                conv,
                member,
                now,
            } => {
                let mut rec = self.group_for_change(*conv, *user)?;
                if self.role(&rec, *conv, *user)? < GroupRole::Admin {
                    return reject(
                        ErrorCode::Forbidden,
                        "only the group's owner and admins can add members",
                    );
                }
                let Some(member_id) = self.user_id(member)? else {
                    return reject(ErrorCode::NotFound, format!("no user named {member}"));
                };
                if matches!(self.membership(*conv, member_id)?, Some(m) if m.active()) {
                    return Ok(WriteOutcome::Done);
                }
                let mut recipients = self.active_members(*conv)?.to_vec();
                if recipients.len() >= MAX_GROUP_MEMBERS {
                    return reject(
                        ErrorCode::BadRequest,
                        format!("a group has at most {MAX_GROUP_MEMBERS} members"),
                    );
                }
                let seq = rec.last_seq + 1;
                self.set_membership(*conv, member_id, &Membership::from(seq))?;
                let body = Body::MemberAdded {
                    user: member.clone(),
                };
                let message =
                    self.append(*conv, &mut rec, [0; MID_LEN], username, *device, *now, body)?;
                // Last: presence tells the added member from the existing
                // ones by this (connection::memberships_changed).
                recipients.push(member_id);
                Ok(WriteOutcome::Message {
                    ack: ack_of(&message, false),
                    message: Some(message),
                    recipients: recipients.into(),
                })
            }
            WriteOp::GroupRemove {
                user,
                username,
                device,
                conv,
                member,
                now,
            } => {
                let mut rec = self.group_for_change(*conv, *user)?;
                let actor = self.role(&rec, *conv, *user)?;
                if actor < GroupRole::Admin {
                    return reject(
                        ErrorCode::Forbidden,
                        "only the group's owner and admins can remove members",
                    );
                }
                let Some(member_id) = self.user_id(member)? else {
                    return reject(ErrorCode::NotFound, format!("no user named {member}"));
                };
                if member_id == *user {
                    return reject(ErrorCode::BadRequest, "use group_leave to leave a group");
                }
                let Some(mut m) = self.membership(*conv, member_id)?.filter(|m| m.active()) else {
                    return reject(
                        ErrorCode::NotFound,
                        format!("{member} is not a member of group {conv}"),
                    );
                };
                // Admins remove members; only the owner removes admins; nobody the owner.
                if role_of(&rec, member_id, &m) >= actor {
                    return reject(
                        ErrorCode::Forbidden,
                        format!("you cannot remove {member}: their role is not below yours"),
                    );
                }
                let recipients = self.active_members(*conv)?;
                let body = Body::MemberRemoved {
                    user: member.clone(),
                };
                let message =
                    self.append(*conv, &mut rec, [0; MID_LEN], username, *device, *now, body)?;
                m.until_seq = Some(message.seq);
                self.set_membership(*conv, member_id, &m)?;
                Ok(WriteOutcome::Message {
                    ack: ack_of(&message, false),
                    message: Some(message),
                    recipients,
                })
            }
            WriteOp::GroupLeave {
                user,
                username,
                device,
                conv,
                now,
            } => {
                let mut rec = self.group_for_change(*conv, *user)?;
                let recipients = self.active_members(*conv)?;
                let body = Body::MemberLeft {
                    user: username.clone(),
                };
                if rec.owner == *user {
                    // Ownership passes to the remaining admin with the oldest
                    // account (lowest user id), else to the oldest member: a rule
                    // every device can predict from the history.
                    let mut heir = None;
                    for id in recipients.iter().copied().filter(|id| id != user) {
                        let admin = self
                            .membership(*conv, id)?
                            .is_some_and(|m| m.role == GroupRole::Admin);
                        if admin {
                            heir = Some(id);
                            break;
                        }
                        heir.get_or_insert(id);
                    }
                    rec.owner = heir.unwrap_or(0);
                    if let Some(heir) = heir
                        && let Some(mut m) = self.membership(*conv, heir)?
                    {
                        m.role = GroupRole::Member;
                        self.set_membership(*conv, heir, &m)?;
                    }
                }
                let message =
                    self.append(*conv, &mut rec, [0; MID_LEN], username, *device, *now, body)?;
                let mut m = self
                    .membership(*conv, *user)?
                    .ok_or(StoreError::Corrupt("members"))?;
                m.until_seq = Some(message.seq);
                self.set_membership(*conv, *user, &m)?;
                Ok(WriteOutcome::Message {
                    ack: ack_of(&message, false),
                    message: Some(message),
                    recipients,
                })
            }
            WriteOp::CreateInvite {
                token_hash,
                role,
                expires,
                created_by,
            } => {
                let rec = InviteRecord {
                    role: *role,
                    expires: *expires,
                    created_by: *created_by,
                };
                self.invites.insert(*token_hash, enc(&rec).as_slice())?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::LastSeen { seen } => {
                for &(user, at) in seen {
                    self.last_seen.insert(user, at)?;
                }
                Ok(WriteOutcome::Done)
            }
            WriteOp::SetDisabled { username, disabled } => {
                let Some(id) = self.user_id(username)? else {
                    return reject(ErrorCode::NotFound, format!("no user named {username}"));
                };
                let mut rec = self.user(id)?.ok_or(StoreError::Corrupt("users"))?;
                rec.disabled = *disabled;
                self.users.insert(id, enc(&rec).as_slice())?;
                Ok(WriteOutcome::Account {
                    user: id,
                    devices: Vec::new(),
                })
            }
            WriteOp::ResetPassword { username, password } => {
                let Some(id) = self.user_id(username)? else {
                    return reject(ErrorCode::NotFound, format!("no user named {username}"));
                };
                let mut rec = self.user(id)?.ok_or(StoreError::Corrupt("users"))?;
                rec.password = password.clone();
                self.users.insert(id, enc(&rec).as_slice())?;
                // A reset means the old password may be known to someone else:
                // every device logged in with it is signed out.
                let devices = self.user_devices(id)?;
                for d in &devices {
                    self.remove_device(*d)?;
                }
                Ok(WriteOutcome::Account { user: id, devices })
            }
            WriteOp::UploadBegin {
                user,
                size,
                sha256,
                quota,
                now,
            } => self.upload_begin(*user, *size, sha256, *quota, *now),
            WriteOp::UploadDone { user, upload, now } => self.upload_done(*user, *upload, *now),
            WriteOp::UploadAbort { upload } => self.upload_abort(*upload),
            WriteOp::ExpireUnsent { before } => self.expire_unsent(*before),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        user: u64,
        username: &str,
        device: u64,
        target: &Target,
        mid: [u8; MID_LEN],
        out: OutgoingText<'_>,
        now: u64,
    ) -> Result<WriteOutcome, StoreError> {
        // Idempotency: a retried send finds its first attempt.
        if let Some(at) = self
            .message_ids
            .get(mid_key(user, &mid))?
            .map(|v| v.value())
        {
            let stored: Message = match self.messages.get(at)? {
                Some(v) => dec("messages", v.value())?,
                None => return Err(StoreError::Corrupt("message_ids")),
            };
            // An edited or recalled message no longer reads as it was sent:
            // compare what the sender sent, or accept the retry outright.
            let as_sent = match &stored.body {
                Body::Text {
                    text,
                    ext,
                    reply_to,
                    attachment,
                    edited: None,
                    ..
                } => {
                    text == out.text
                        && ext == out.ext
                        && *reply_to == out.reply_to
                        && attachment.as_ref().map(|a| &a.id) == out.attachment.map(|a| &a.id)
                }
                _ => true,
            };
            if !as_sent {
                return reject(
                    ErrorCode::Conflict,
                    "this message id was already used for another message",
                );
            }
            return Ok(WriteOutcome::Message {
                ack: ack_of(&stored, true),
                message: None,
                recipients: Arc::new([]),
            });
        }
        // Everything is checked before anything is written: a refused request
        // must leave nothing behind in the batch's transaction.
        let attachment = match out.attachment {
            Some(r) => Some(self.attachment_for(user, r)?),
            None => None,
        };
        let (conv, mut rec) = match target {
            Target::Conv(conv) => {
                let rec = self.conv(*conv)?;
                match (rec, self.membership(*conv, user)?) {
                    (Some(rec), Some(m)) if m.active() => (*conv, rec),
                    _ => {
                        return reject(
                            ErrorCode::Forbidden,
                            format!("you are not a member of conversation {conv}"),
                        );
                    }
                }
            }
            Target::User(name) => {
                let Some(peer) = self.user_id(name)? else {
                    return reject(ErrorCode::NotFound, format!("no user named {name}"));
                };
                let key = k16(user.min(peer), user.max(peer));
                let existing = self.direct.get(key)?.map(|v| v.value());
                match existing {
                    Some(conv) => (
                        conv,
                        self.conv(conv)?
                            .ok_or(StoreError::Corrupt("direct_index"))?,
                    ),
                    None => {
                        if let Some(quoted) = out.reply_to {
                            return reject(
                                ErrorCode::NotFound,
                                format!("no message #{quoted} with {name} to reply to"),
                            );
                        }
                        let conv = self.next_id("next_conv")?;
                        let (lo, hi) = (user.min(peer), user.max(peer));
                        let lo_name = if lo == user {
                            username.to_string()
                        } else {
                            name.clone()
                        };
                        let hi_name = if hi == user {
                            username.to_string()
                        } else {
                            name.clone()
                        };
                        let rec = ConvRecord {
                            kind: ConvKind::Direct,
                            name: String::new(),
                            peers: vec![lo_name, hi_name],
                            owner: 0,
                            last_seq: 0,
                            created: now,
                            texts: 0,
                        };
                        self.direct.insert(key, conv)?;
                        for id in [user, peer] {
                            self.set_membership(conv, id, &Membership::from(1))?;
                        }
                        (conv, rec)
                    }
                }
            }
        };
        if let Some(quoted) = out.reply_to {
            let seen_from = self
                .membership(conv, user)?
                .map(|m| m.from_seq)
                .unwrap_or(1);
            if quoted < seen_from || quoted > rec.last_seq {
                return reject(
                    ErrorCode::NotFound,
                    format!("no message #{quoted} in conversation {conv} to reply to"),
                );
            }
        }
        let attached = attachment.as_ref().map(|a| a.id.clone());
        let body = Body::Text {
            text: out.text.to_string(),
            ext: out.ext.clone(),
            reply_to: out.reply_to,
            attachment,
            edited: None,
            reactions: Vec::new(),
        };
        let recipients = self.active_members(conv)?;
        let message = self.append(conv, &mut rec, mid, username, device, now, body)?;
        self.message_ids
            .insert(mid_key(user, &mid), k16(conv, message.seq))?;
        // Writing in a conversation means having read it.
        let marker = k16(conv, user);
        if self
            .read_markers
            .get(marker)?
            .map(|v| v.value())
            .unwrap_or(0)
            < message.seq
        {
            self.read_markers.insert(marker, message.seq)?;
        }
        if let Some(id) = &attached {
            self.add_attachment_ref(id, conv, message.seq)?;
        }
        Ok(WriteOutcome::Message {
            ack: ack_of(&message, false),
            message: Some(message),
            recipients,
        })
    }
}

/// The parts of a `send` that make the message's body.
struct OutgoingText<'a> {
    text: &'a str,
    ext: &'a Option<ByteBuf>,
    reply_to: Option<u64>,
    attachment: Option<&'a AttachmentRef>,
}

/// The answer to a change that was already made: the original's place, no event.
fn unchanged(original: &Message) -> WriteOutcome {
    WriteOutcome::Message {
        ack: ack_of(original, true),
        message: None,
        recipients: Arc::new([]),
    }
}

fn ack_of(m: &Message, duplicate: bool) -> SendAck {
    SendAck {
        conv: m.conv,
        seq: m.seq,
        ts: m.ts,
        duplicate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> [u8; 32] {
        [n; 32]
    }

    /// A schema 1 file (no text ordinals, no counts in the conversation
    /// records) opens as schema 2 with unread counts for what it held.
    #[tokio::test]
    async fn schema_1_files_get_unread_counts_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (store, writer) = Store::open(&path, 1 << 20).unwrap();
        for (i, name) in ["alice", "bob"].into_iter().enumerate() {
            let n = i as u8 + 1;
            store
                .write(WriteOp::CreateInvite {
                    token_hash: hash(n),
                    role: Role::Member,
                    expires: u64::MAX,
                    created_by: 0,
                })
                .await
                .unwrap();
            store
                .write(WriteOp::Register {
                    invite_hash: hash(n),
                    username: name.into(),
                    password: String::new(),
                    device: "d".into(),
                    token_hash: hash(n + 10),
                    now: 0,
                })
                .await
                .unwrap();
        }
        for i in 0..3u8 {
            store
                .write(WriteOp::Send {
                    user: 1,
                    username: "alice".into(),
                    device: 1,
                    target: Target::User("bob".into()),
                    mid: [i + 1; MID_LEN],
                    text: format!("m{i}"),
                    ext: None,
                    reply_to: None,
                    attachment: None,
                    now: 0,
                })
                .await
                .unwrap();
        }
        drop(store);
        writer.join();

        // Take the file back to schema 1.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("schema_version", 1u32.to_be_bytes().as_slice())
                    .unwrap();
                txn.delete_table(TEXT_ORDINALS).unwrap();
                let mut convs = txn.open_table(CONVS).unwrap();
                let bytes = convs.get(1).unwrap().unwrap().value().to_vec();
                let mut rec: ConvRecord = dec("conversations", &bytes).unwrap();
                rec.texts = 0;
                convs.insert(1, enc(&rec).as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }

        let (store, writer) = Store::open(&path, 1 << 20).unwrap();
        let bob = store.conversations(2, 2, false).unwrap();
        assert_eq!((bob[0].unread, bob[0].last_seq), (3, 3));
        // New texts count on from the migrated total.
        store
            .write(WriteOp::Send {
                user: 1,
                username: "alice".into(),
                device: 1,
                target: Target::Conv(1),
                mid: [9; MID_LEN],
                text: "m3".into(),
                ext: None,
                reply_to: None,
                attachment: None,
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(store.conversations(2, 2, false).unwrap()[0].unread, 4);
        drop(store);
        writer.join();
        assert_eq!(check_file(&path).unwrap(), SCHEMA_VERSION);
    }
}
