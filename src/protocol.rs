//! The quince wire protocol: frames, requests, responses and server events.
//!
//! Everything a client and the server exchange is defined here, and
//! `docs/PROTOCOL.md` is its prose twin. Frames are a 4-byte big-endian length
//! followed by one CBOR (RFC 8949) map. CBOR was chosen over a Rust-only format
//! so that apps in Kotlin, Swift or JavaScript can speak the protocol with a
//! stock library.
//!
//! Requests are maps with an `id` (chosen by the client, echoed in the
//! response) and an `op` naming the request; responses carry the same `id` and
//! either `ok` (the result map) or `err` (code and message). Events pushed by the
//! server carry `ev` instead of `id`.

use ciborium::Value;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

/// ALPN protocol name; the digit is the protocol's major version.
pub const ALPN: &[u8] = b"quince/1";
/// Largest frame body (the CBOR map) either side may send, in bytes.
pub const MAX_FRAME: usize = 256 * 1024;
/// Largest message text, in bytes of UTF-8.
pub const MAX_TEXT: usize = 16 * 1024;
/// Largest opaque application payload (`ext`) of a message, in bytes.
pub const MAX_EXT: usize = 16 * 1024;
/// Largest page of messages a `history` request returns.
pub const MAX_PAGE: u32 = 500;
/// Byte budget for one page of messages, so a page always fits in a frame.
pub const PAGE_BYTES: usize = 192 * 1024;
/// Length of a client-chosen message id, in bytes.
pub const MID_LEN: usize = 16;

/// QUIC application error codes used when the server closes a connection.
pub mod close {
    /// Normal close (the client quit).
    pub const NORMAL: u32 = 0;
    /// The server is shutting down; reconnect later.
    pub const SHUTDOWN: u32 = 1;
    /// The account was disabled by an administrator.
    pub const ACCOUNT_DISABLED: u32 = 2;
    /// The client sent a frame over [`super::MAX_FRAME`] or a broken length prefix.
    pub const PROTOCOL_VIOLATION: u32 = 3;
    /// The client did not read its events fast enough; reconnect and sync.
    pub const SLOW_CONSUMER: u32 = 4;
    /// This device's token was revoked (logout elsewhere, or a password reset).
    pub const DEVICE_REVOKED: u32 = 5;
}

/// QUIC error codes the server stops an upload stream with (`STOP_SENDING`),
/// so the client learns why its bytes were not taken.
pub mod upload_stop {
    /// The first frame is not an upload stream header.
    pub const BAD_HEADER: u32 = 1;
    /// Not logged in, no such upload, or another user's upload.
    pub const REFUSED: u32 = 2;
    /// `offset` is not the number of bytes the server has: ask `upload_begin` again.
    pub const WRONG_OFFSET: u32 = 3;
    /// More bytes than the size given to `upload_begin`: the upload was deleted.
    pub const TOO_MANY_BYTES: u32 = 4;
    /// The server could not write the bytes (disk full, I/O error); what it
    /// had before stays.
    pub const FAILED: u32 = 5;
    /// A newer stream of the same upload took over from this one.
    pub const SUPERSEDED: u32 = 6;
}

/// Role of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Member,
    Admin,
}

/// Where a message goes: an existing conversation, or the direct conversation
/// with a user (created on first use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Conv(u64),
    User(String),
}

/// Every request a client can make. The `op` tag names it on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create an account with an invite token; logs this connection in.
    Register {
        invite: String,
        username: String,
        password: String,
        device: String,
    },
    /// Log in with a password; creates a device and returns its token.
    Login {
        username: String,
        password: String,
        device: String,
    },
    /// Log in with a device token from an earlier `login`/`register`.
    Resume {
        token: String,
    },
    /// Revoke this device's token and log the connection out.
    Logout {},
    /// Who this connection is logged in as.
    Whoami {},
    /// Keep-alive / round-trip probe; works before login.
    Ping {},
    /// Send a message. Exactly one of `conv` or `user` is given.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        mid: ByteBuf,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ext: Option<ByteBuf>,
        /// Sequence number of the message (in the same conversation) this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        /// A file uploaded with `upload_begin`/`upload_finish` (or one already
        /// in a conversation the sender can read), sent with this message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachment: Option<AttachmentRef>,
    },
    /// Replace the text of one's own message (within the edit window).
    Edit {
        conv: u64,
        seq: u64,
        text: String,
    },
    /// Take back one's own message (within the recall window; group owners
    /// and admins at any time): its content is removed from the server.
    Recall {
        conv: u64,
        seq: u64,
    },
    /// Add (or with `remove`, take away) an emoji reaction to a message.
    React {
        conv: u64,
        seq: u64,
        emoji: String,
        #[serde(default)]
        remove: bool,
    },
    /// The user has read `conv` up to `seq` (the read marker; it only moves forward).
    Read {
        conv: u64,
        seq: u64,
    },
    /// Every member's delivery and read markers in a conversation.
    Receipts {
        conv: u64,
    },
    /// Delete a conversation from this user's view: its history up to now is
    /// no longer shown to any of the user's devices. The other members keep theirs.
    ConvDelete {
        conv: u64,
    },
    /// This device is `online` (in use) or `away` (idle, in the background).
    SetPresence {
        state: PresenceState,
    },
    /// Presence of everyone the user shares a conversation with.
    Presence {},
    /// The user is typing in `conv` (`active: false`: stopped).
    Typing {
        conv: u64,
        #[serde(default = "yes")]
        active: bool,
    },
    /// Start (or resume) uploading an attachment of `size` bytes with this SHA-256.
    UploadBegin {
        size: u64,
        /// SHA-256 of the whole file, 64 lower-case hex digits.
        sha256: String,
    },
    /// Complete an upload whose bytes have all been sent; checks the SHA-256.
    UploadFinish {
        upload: u64,
    },
    /// Download an attachment from `offset`; the bytes come on a data stream.
    Download {
        id: String,
        #[serde(default)]
        offset: u64,
    },
    /// Which conversations have messages this device has not acknowledged.
    Sync {},
    /// Every conversation of the user, with its last sequence number.
    Conversations {},
    /// A page of a conversation: after `after` (forwards) or before `before`
    /// (backwards; neither means the newest page).
    History {
        conv: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        limit: u32,
    },
    /// This device has received everything in `conv` up to `seq`.
    Ack {
        conv: u64,
        seq: u64,
    },
    /// Create a group with the caller as owner and the named members.
    GroupCreate {
        name: String,
        members: Vec<String>,
    },
    GroupAdd {
        conv: u64,
        user: String,
    },
    GroupRemove {
        conv: u64,
        user: String,
    },
    GroupLeave {
        conv: u64,
    },
    GroupMembers {
        conv: u64,
    },
    /// Owner: rename the group.
    GroupRename {
        conv: u64,
        name: String,
    },
    /// Owner: make a member an admin.
    GroupPromote {
        conv: u64,
        user: String,
    },
    /// Owner: make an admin a plain member again.
    GroupDemote {
        conv: u64,
        user: String,
    },
    /// Owner: hand the group to another member (the old owner stays as an admin).
    GroupTransfer {
        conv: u64,
        user: String,
    },
    /// Admin: create an invite token.
    AdminInvite {
        #[serde(default)]
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
    },
    AdminUsers {},
    AdminDisable {
        user: String,
    },
    AdminEnable {
        user: String,
    },
    AdminResetPassword {
        user: String,
        password: String,
    },
    AdminStatus {},
    /// Admin: a consistent backup of the store; the result says its size and
    /// checksum, and its bytes follow on a unidirectional stream of their own
    /// (see [`StreamHeader`]).
    AdminBackup {},
}

impl Request {
    /// Every `op` name this server understands, for telling "unknown request"
    /// apart from "malformed request".
    pub const OPS: &'static [&'static str] = &[
        "register",
        "login",
        "resume",
        "logout",
        "whoami",
        "ping",
        "send",
        "edit",
        "recall",
        "react",
        "read",
        "receipts",
        "conv_delete",
        "set_presence",
        "presence",
        "typing",
        "upload_begin",
        "upload_finish",
        "download",
        "sync",
        "conversations",
        "history",
        "ack",
        "group_create",
        "group_add",
        "group_remove",
        "group_leave",
        "group_members",
        "group_rename",
        "group_promote",
        "group_demote",
        "group_transfer",
        "admin_invite",
        "admin_users",
        "admin_disable",
        "admin_enable",
        "admin_reset_password",
        "admin_status",
        "admin_backup",
    ];
}

/// Error codes in `err.code`. Stable strings: clients switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a CBOR map with an `id` and `op`.
    BadFrame,
    /// The `op` is not one this server knows.
    UnknownRequest,
    /// The request's fields are missing, of the wrong type, or out of range.
    BadRequest,
    /// The request needs a logged-in connection.
    NotAuthenticated,
    /// `register`/`login`/`resume` on a connection that is already logged in.
    AlreadyAuthenticated,
    /// Wrong username or password.
    InvalidCredentials,
    /// Unknown or revoked device token.
    InvalidToken,
    /// Unknown, used or expired invite token.
    InvalidInvite,
    /// The account is disabled.
    AccountDisabled,
    /// Username does not follow the rules (3–32 of `a-z 0-9 _ . -`, starts with a letter or digit).
    InvalidUsername,
    UsernameTaken,
    /// Password shorter than 8 or longer than 1024 bytes.
    WeakPassword,
    /// No such user, conversation or message.
    NotFound,
    /// Not allowed: not a member, not an admin, not the group's owner…
    Forbidden,
    /// Text over [`MAX_TEXT`] bytes.
    TextTooLong,
    /// `ext` over [`MAX_EXT`] bytes.
    ExtTooLarge,
    /// Too many failed attempts; wait `retry_after_ms`.
    RateLimited,
    /// The server is shutting down and takes no more writes.
    ShuttingDown,
    /// The same message id was already used for a different message.
    Conflict,
    /// A server-side fault (disk full, I/O error); nothing was stored.
    Internal,
    /// The server is already doing this (one backup at a time); try again later.
    Busy,
    /// The server's administrator has switched this feature off.
    Disabled,
    /// Too late: the edit or recall window of the message has passed.
    TooLate,
    /// The attachment is over the server's size limit.
    TooLarge,
    /// The upload would take the user over their attachment quota.
    QuotaExceeded,
    /// The upload has not received all its bytes yet; send the rest, then finish.
    Incomplete,
}

fn yes() -> bool {
    true
}

/// A member's place in a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    #[default]
    Member,
    /// Adds and removes members (but not the owner or other admins).
    Admin,
    /// One per group: also renames it, promotes and demotes admins, and
    /// hands ownership on.
    Owner,
}

/// An attachment as a `send` names it: the file's id and how to present it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// The id `upload_finish` returned (the file's SHA-256 in hex).
    pub id: String,
    /// File name to show and save as (no directories).
    pub name: String,
    /// Media type, e.g. `image/jpeg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
}

/// An attachment as a message carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// One emoji's reactions to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reactions {
    pub emoji: String,
    /// Who reacted with it, in the order they did.
    pub users: Vec<String>,
}

/// The `err` half of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Text {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ext: Option<ByteBuf>,
        /// The message this one answers (its sequence number).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachment: Option<Attachment>,
        /// When the text was last edited (ms since the epoch); the stored
        /// message always holds the newest text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edited: Option<u64>,
        /// Reactions so far, as stored (live devices apply `reaction` events).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reactions: Vec<Reactions>,
    },
    /// What is left of a recalled message, and of the edits of one.
    Recalled {},
    /// The message `of` now reads `text`.
    Edit {
        of: u64,
        text: String,
    },
    /// The message `of` was recalled: forget its content.
    Recall {
        of: u64,
    },
    /// `emoji` was added to (or with `add: false` taken from) the message `of`.
    Reaction {
        of: u64,
        emoji: String,
        add: bool,
    },
    GroupCreated {
        name: String,
    },
    GroupRenamed {
        name: String,
    },
    /// `user`'s role in the group is now `role` (admin or member).
    RoleChanged {
        user: String,
        role: GroupRole,
    },
    /// `user` owns the group now; the previous owner became an admin.
    OwnerChanged {
        user: String,
    },
    MemberAdded {
        user: String,
    },
    MemberRemoved {
        user: String,
    },
    MemberLeft {
        user: String,
    },
}

impl Body {
    /// A plain text body: no reply, attachment, edits or reactions.
    pub fn text(text: impl Into<String>) -> Body {
        Body::Text {
            text: text.into(),
            ext: None,
            reply_to: None,
            attachment: None,
            edited: None,
            reactions: Vec::new(),
        }
    }
}

/// One message of a conversation, as stored and as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub conv: u64,
    pub seq: u64,
    pub mid: ByteBuf,
    /// Username of the sender.
    pub from: String,
    /// Device id of the sender, so an app can tell its own devices' messages apart.
    pub device: u64,
    /// Server time of the commit, milliseconds since the Unix epoch.
    pub ts: u64,
    pub body: Body,
}

/// Kind of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    Direct,
    Group,
}

/// One conversation in `sync` and `conversations` results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSummary {
    pub conv: u64,
    pub kind: ConvKind,
    /// Group name, or the other user's name for a direct conversation.
    pub name: String,
    /// Newest sequence number this user may read.
    pub last_seq: u64,
    /// Highest sequence number this device has acknowledged.
    pub cursor: u64,
    /// False once the user left or was removed (history up to then stays readable).
    pub member: bool,
    /// The user's read marker: the highest sequence number they have read.
    #[serde(default)]
    pub read: u64,
    /// Messages from others (text and attachments) after the read marker.
    #[serde(default)]
    pub unread: u64,
    /// The newest message the user may read, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Box<Message>>,
}

/// Result of `register`, `login` and `resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub device: u64,
    /// The device token; present after `register` and `login` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Result of `send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAck {
    pub conv: u64,
    pub seq: u64,
    pub ts: u64,
    /// True when this `mid` had already been stored: nothing new was written.
    pub duplicate: bool,
}

/// Result of `sync` and `conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvList {
    pub conversations: Vec<ConvSummary>,
}

/// Result of `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Messages in ascending sequence order.
    pub messages: Vec<Message>,
    /// True when more messages lie beyond this page in the requested direction.
    pub more: bool,
}

/// Result of `group_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub conv: u64,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub owner: bool,
    #[serde(default)]
    pub role: GroupRole,
}

/// Result of `group_members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub name: String,
    pub members: Vec<Member>,
}

/// Result of `admin_invite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub token: String,
    pub role: Role,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires: u64,
}

/// An account in `admin_users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: String,
    pub role: Role,
    pub disabled: bool,
    pub devices: u32,
    pub created: u64,
}

/// Result of `admin_users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    pub users: Vec<UserInfo>,
}

/// Result of `admin_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    pub connections: u64,
    pub users: u64,
    pub messages: u64,
    pub store_bytes: u64,
    pub disk_free_bytes: u64,
    pub memory_rss_bytes: u64,
    pub memory_total_bytes: u64,
    pub load_average: [f64; 3],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f32>,
    /// Whether the CPU runs slower than it can, and why; absent on machines
    /// that report none of it. A throttled Pi is a slow Pi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling: Option<Throttling>,
    /// Power as the UPS reports it (`online` without one).
    #[serde(default)]
    pub power: PowerNotice,
    /// When the last scheduled backup succeeded (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_last_success: Option<u64>,
    /// Why the last scheduled backup failed, while no later one succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_last_error: Option<String>,
    /// When the next scheduled backup is due (ms since the epoch); absent
    /// when scheduled backups are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_next: Option<u64>,
}

/// Signs that the machine slows its CPU down: the Raspberry Pi firmware's
/// throttling flags (under-voltage, frequency capping, throttling, the soft
/// temperature limit) and the kernel's CPU frequency. Each field is absent
/// when the machine has no source for it, so `false` always means "checked,
/// and no".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttling {
    /// The supply voltage is too low (below about 4.63 V on a Pi) now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_voltage: Option<bool>,
    /// Under-voltage has happened since boot, or since the firmware's sticky
    /// flag was last cleared (Linux's `raspberrypi-hwmon` driver clears it
    /// on every 2 s poll, so with that driver this means "lately").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub under_voltage_occurred: Option<bool>,
    /// The CPU's top frequency is capped now (by the firmware, or by the
    /// kernel lowering the highest allowed frequency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_capped: Option<bool>,
    /// Frequency capping has happened (the firmware's sticky flag, as above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_capped_occurred: Option<bool>,
    /// The firmware is throttling the CPU now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<bool>,
    /// Throttling has happened (the firmware's sticky flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_occurred: Option<bool>,
    /// The firmware's soft temperature limit is active now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_temp_limit: Option<bool>,
    /// The soft temperature limit has been reached (the firmware's sticky flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_temp_limit_occurred: Option<bool>,
    /// The CPU's current frequency in MHz (the fastest core, where cores differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_mhz: Option<u32>,
    /// The CPU's highest frequency in MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max_mhz: Option<u32>,
}

impl Throttling {
    /// True when something slows the CPU down now.
    pub fn slowed_now(&self) -> bool {
        [
            self.under_voltage,
            self.frequency_capped,
            self.throttled,
            self.soft_temp_limit,
        ]
        .contains(&Some(true))
    }
}

/// Result of `admin_backup`: what the backup stream will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReady {
    /// Length of the backup file in bytes.
    pub bytes: u64,
    /// SHA-256 of the backup file without its last 32 bytes (which are this
    /// same checksum), 64 lower-case hex digits.
    pub sha256: String,
}

/// First frame of a unidirectional stream that carries data rather than
/// events: `{"stream": "backup", "id": 7}` from the server (the `id` of the
/// request it answers: `backup` or `download`), or `{"stream": "upload",
/// "id": 12, "offset": 0}` from a client (the upload's id, and where its
/// bytes start). Raw bytes follow the frame until the stream ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// What the stream carries: `"backup"`, `"download"` or `"upload"`.
    pub stream: String,
    /// The `id` of the request it answers, or the upload's id.
    pub id: u64,
    /// For `upload`: the file offset of the first byte that follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Encodes a [`StreamHeader`] frame.
pub fn encode_stream_header(header: &StreamHeader) -> Vec<u8> {
    frame_direct(header)
}

/// Reads a frame body as a [`StreamHeader`]; `None` for anything else (an
/// event frame, on the event stream).
pub fn decode_stream_header(body: &[u8]) -> Option<StreamHeader> {
    let entries = decode_map(body).ok()?;
    if !entries.iter().any(|(k, _)| k.as_text() == Some("stream")) {
        return None;
    }
    Value::Map(entries).deserialized().ok()
}

/// One member's markers in `receipts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub user: String,
    /// Highest sequence number one of the user's devices has received.
    pub delivered: u64,
    /// The user's read marker.
    pub read: u64,
}

/// Result of `receipts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipts {
    pub conv: u64,
    pub members: Vec<Receipt>,
}

/// Whether a user is around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// At least one device is connected and in use.
    Online,
    /// Connected, but every device is idle.
    Away,
    /// No device connected.
    #[default]
    Offline,
}

/// A user's presence, in `presence` results and events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub user: String,
    pub state: PresenceState,
    /// When the user's last device disconnected (ms since the epoch), while
    /// offline; absent when the server has not seen them since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// Result of `presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceList {
    pub users: Vec<PresenceInfo>,
}

/// Result of `upload_begin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSlot {
    /// The upload's id, for the upload stream and `upload_finish`.
    pub upload: u64,
    /// Bytes the server already has (a resumed upload); send from here.
    pub received: u64,
}

/// Result of `upload_finish`: the stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The id to name in `send`'s `attachment` (the SHA-256 in hex).
    pub id: String,
    pub size: u64,
}

/// Result of `download`: what the data stream carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadReady {
    /// Size of the whole file.
    pub size: u64,
    /// Where the stream's bytes start.
    pub offset: u64,
}

/// An empty result (`{}`), for requests that only succeed or fail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// Events the server pushes on the event stream.
// Messages dominate the traffic and are encoded straight away; boxing them
// to shrink the rare small events would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// A new message in one of the user's conversations.
    Message(Message),
    /// The server's power changed (it runs on a UPS battery, the mains came
    /// back, or it is about to shut down).
    Power(PowerNotice),
    /// A member's read marker moved (also sent to the reader's other devices).
    Read(Marker),
    /// The other side of a direct conversation received messages up to `seq`.
    Delivered(Marker),
    /// A contact's presence changed.
    Presence(PresenceInfo),
    /// A member started or stopped typing.
    Typing(TypingNotice),
    /// One of the user's devices deleted the conversation from the user's view
    /// up to `seq`.
    ConvDeleted(ConvDeleted),
}

/// The `read` and `delivered` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub conv: u64,
    pub user: String,
    pub seq: u64,
}

/// The `typing` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingNotice {
    pub conv: u64,
    pub user: String,
    pub active: bool,
}

/// The `conv_deleted` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvDeleted {
    pub conv: u64,
    pub seq: u64,
}

/// Where the server's power comes from. Ordered: a later state is worse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// Mains power (or no UPS is watched).
    #[default]
    Online,
    /// The UPS runs on its battery; the server will shut down after a grace time.
    OnBattery,
    /// The battery is nearly empty (or the UPS ordered a shutdown).
    LowBattery,
    /// The server takes no more writes and is about to stop.
    ShuttingDown,
}

/// The `power` event, and the power half of `admin_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerNotice {
    pub state: PowerState,
    /// Seconds until the server shuts down, while on battery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_in_secs: Option<u64>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame is not valid CBOR: {0}")]
    Cbor(String),
    #[error("frame is not a CBOR map with an `id` and an `op`")]
    NotARequest,
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// A request as read off the wire, before its `op` is interpreted.
pub struct RawRequest {
    pub id: u64,
    pub op: String,
    /// The map without `id`, for deserializing into [`Request`].
    pub body: Value,
}

impl RawRequest {
    /// Interprets the map as a known request; `None` for an unknown `op`.
    pub fn parse(self) -> Result<Option<Request>, String> {
        if !Request::OPS.contains(&self.op.as_str()) {
            return Ok(None);
        }
        self.body
            .deserialized::<Request>()
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// A frame as the client reads it off the control stream.
pub enum Reply {
    Ok { id: u64, result: Value },
    Err { id: u64, error: ErrorBody },
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // Serializing our own types into a CBOR value cannot fail: they hold only
    // strings, integers, byte strings, floats, sequences and maps.
    Value::serialized(v).expect("protocol types always serialize")
}

/// Prefixes a CBOR value with its length.
fn frame(value: &Value) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    ciborium::into_writer(value, &mut out).expect("writing to a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Serializes straight into a length-prefixed frame. The server encodes
/// every reply and event this way: building a [`Value`] first would double the
/// work. A struct serializes as a definite-length map with its fields in
/// order, exactly as the equivalent `Value::Map` would (tests/protocol_doc.rs
/// checks the bytes).
fn frame_direct<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0u8; 4]);
    ciborium::into_writer(value, &mut out).expect("protocol types always serialize");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Encodes a request frame: `{"id": id, "op": ..., fields...}`.
pub fn encode_request(id: u64, request: &Request) -> Vec<u8> {
    let mut entries = vec![(Value::from("id"), Value::from(id))];
    if let Value::Map(fields) = to_value(request) {
        entries.extend(fields);
    }
    frame(&Value::Map(entries))
}

/// Encodes a success response: `{"id": id, "ok": result}`.
pub fn encode_ok<T: Serialize>(id: u64, result: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        id: u64,
        ok: &'a T,
    }
    frame_direct(&Ok { id, ok: result })
}

/// Encodes an error response: `{"id": id, "err": {"code": ..., "message": ...}}`.
pub fn encode_err(id: u64, error: &ErrorBody) -> Vec<u8> {
    #[derive(Serialize)]
    struct Err<'a> {
        id: u64,
        err: &'a ErrorBody,
    }
    frame_direct(&Err { id, err: error })
}

/// Encodes an event frame: `{"ev": ..., fields...}`.
pub fn encode_event(event: &Event) -> Vec<u8> {
    frame_direct(event)
}

fn decode_map(body: &[u8]) -> Result<Vec<(Value, Value)>, FrameError> {
    match ciborium::from_reader::<Value, _>(body) {
        Ok(Value::Map(entries)) => Ok(entries),
        Ok(_) => Err(FrameError::NotARequest),
        Err(e) => Err(FrameError::Cbor(e.to_string())),
    }
}

fn take(entries: &mut Vec<(Value, Value)>, key: &str) -> Option<Value> {
    let at = entries.iter().position(|(k, _)| k.as_text() == Some(key))?;
    Some(entries.remove(at).1)
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i).ok())
}

/// Splits a request frame body into id, op and the remaining fields.
pub fn decode_request(body: &[u8]) -> Result<RawRequest, FrameError> {
    let mut entries = decode_map(body)?;
    let id = take(&mut entries, "id")
        .as_ref()
        .and_then(as_u64)
        .ok_or(FrameError::NotARequest)?;
    let op = entries
        .iter()
        .find(|(k, _)| k.as_text() == Some("op"))
        .and_then(|(_, v)| v.as_text())
        .ok_or(FrameError::NotARequest)?
        .to_string();
    Ok(RawRequest {
        id,
        op,
        body: Value::Map(entries),
    })
}

/// Decodes a response frame body (client side).
pub fn decode_reply(body: &[u8]) -> Result<Reply, FrameError> {
    let mut entries = decode_map(body)?;
    let id = take(&mut entries, "id")
        .as_ref()
        .and_then(as_u64)
        .ok_or(FrameError::NotARequest)?;
    if let Some(err) = take(&mut entries, "err") {
        let error = err
            .deserialized::<ErrorBody>()
            .map_err(|e| FrameError::Cbor(e.to_string()))?;
        return Ok(Reply::Err { id, error });
    }
    let result = take(&mut entries, "ok").ok_or(FrameError::NotARequest)?;
    Ok(Reply::Ok { id, result })
}

/// Decodes an event frame body (client side).
pub fn decode_event(body: &[u8]) -> Result<Event, FrameError> {
    ciborium::from_reader::<Event, _>(body).map_err(|e| FrameError::Cbor(e.to_string()))
}

/// Deserializes a response's `ok` value into the result type of its request.
pub fn decode_result<T: DeserializeOwned>(value: Value) -> Result<T, FrameError> {
    value
        .deserialized::<T>()
        .map_err(|e| FrameError::Cbor(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let req = Request::Send {
            conv: None,
            user: Some("bob".into()),
            mid: ByteBuf::from(vec![7u8; 16]),
            text: "hi".into(),
            ext: None,
            reply_to: None,
            attachment: None,
        };
        let bytes = encode_request(9, &req);
        let raw = decode_request(&bytes[4..]).unwrap();
        assert_eq!(raw.id, 9);
        assert_eq!(raw.op, "send");
        assert_eq!(raw.parse().unwrap(), Some(req));
    }

    #[test]
    fn unknown_op_is_not_malformed() {
        let v = Value::Map(vec![
            ("id".into(), 3u64.into()),
            ("op".into(), "teleport".into()),
        ]);
        let mut body = Vec::new();
        ciborium::into_writer(&v, &mut body).unwrap();
        let raw = decode_request(&body).unwrap();
        assert_eq!(raw.parse().unwrap(), None);
    }

    #[test]
    fn throttling_fields_are_sent_only_when_known() {
        let t = Throttling {
            under_voltage: Some(false),
            cpu_mhz: Some(1500),
            ..Throttling::default()
        };
        let bytes = encode_ok(1, &t);
        let Reply::Ok { result, .. } = decode_reply(&bytes[4..]).unwrap() else {
            panic!("not an ok reply");
        };
        let keys: Vec<&str> = result
            .as_map()
            .unwrap()
            .iter()
            .filter_map(|(k, _)| k.as_text())
            .collect();
        assert_eq!(keys, ["under_voltage", "cpu_mhz"]);
        assert_eq!(decode_result::<Throttling>(result).unwrap(), t);
        // A status from a server that knows no throttling decodes as None.
        let status: Status = ciborium::Value::Map(vec![
            ("version".into(), "0.1.0".into()),
            ("uptime_secs".into(), 1u64.into()),
            ("connections".into(), 0u64.into()),
            ("users".into(), 1u64.into()),
            ("messages".into(), 0u64.into()),
            ("store_bytes".into(), 0u64.into()),
            ("disk_free_bytes".into(), 0u64.into()),
            ("memory_rss_bytes".into(), 0u64.into()),
            ("memory_total_bytes".into(), 0u64.into()),
            (
                "load_average".into(),
                ciborium::Value::Array(vec![0.0.into(), 0.0.into(), 0.0.into()]),
            ),
        ])
        .deserialized()
        .unwrap();
        assert_eq!(status.throttling, None);
    }

    #[test]
    fn garbage_is_a_frame_error() {
        assert!(decode_request(&[0xff, 0x00, 0x13]).is_err());
        assert!(matches!(
            decode_request(&[0x01]),
            Err(FrameError::NotARequest)
        ));
    }
}
