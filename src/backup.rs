//! Backups: the file format, taking one from the running server, sending it
//! to a client, saving it (optionally encrypted), restoring it, and the
//! server's schedule.
//!
//! # The backup file (`.qbk`)
//! All integers are big-endian. docs/PROTOCOL.md §16 describes the same.
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `QUINCEBK` |
//! | 4 | format version, 2 |
//! | 8 | creation time, ms since the epoch |
//! | 4 | store schema version of the database inside |
//! | 4 + C | length C, then the server certificate (PEM); C = 0 when none |
//! | 4 + K | length K, then its private key (PEM); K = 0 when none |
//! | 8 + D | length D, then the redb database file |
//! | 8 | N, the number of attachment files |
//! | N × (32 + 8 + L) | per file: its SHA-256, its length L, its bytes |
//! | 32 | SHA-256 of every byte before it |
//!
//! The database is a snapshot made from one read transaction
//! ([`Store::snapshot`]), not a copy of the live file. The attachment files
//! are those in that snapshot's `blobs` table, in its key order; the garbage
//! collection deletes no blob file while a backup runs, so each is still
//! there to read. Version 1 is the same without the attachment section (the
//! two rows before the checksum); restore reads both. The certificate and key
//! are the data directory's own, so a restored server keeps its fingerprint and
//! clients' pins still hold. An encrypted backup is this whole file inside an
//! [age](https://age-encryption.org/v1) file with a passphrase (scrypt)
//! recipient; the SHA-256 is checked after decryption.

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use age::secrecy::SecretString;

use crate::protocol::{BackupReady, StreamHeader};
use crate::server::{DB_FILE, State};
use crate::store::{SCHEMA_VERSION, Store, StoreError};
use crate::tls::{CERT_FILE, KEY_FILE};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"QUINCEBK";
/// The container format this build writes; it reads this and version 1
/// (which has no attachment files).
pub const FORMAT_VERSION: u32 = 2;
/// File name extension of backups.
pub const EXTENSION: &str = "qbk";
/// How an age file begins (binary form).
const AGE_MAGIC: &[u8] = b"age-encryption.org/";
/// Largest certificate or key accepted from a backup: a corrupt length must
/// not make restore allocate gigabytes.
const MAX_PEM: u32 = 1024 * 1024;
/// Free space kept beyond a file's expected size before writing it.
const SPACE_MARGIN: u64 = 1024 * 1024;
/// Chunk size when sending and copying.
const CHUNK: usize = 256 * 1024;
/// After a failed scheduled backup, the next try comes after at most this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);
/// Backups are named, and so pruned, by the clock. A board without a
/// real-time clock (a Raspberry Pi) starts in 1970 until NTP sets the time; the
/// schedule waits for a clock past this (2025-01-01) so that a backup named
/// 1970 never looks like the oldest one and gets pruned first.
const CLOCK_SET_AFTER_SECS: u64 = 1_735_689_600;
/// Prefix of the snapshot's temporary file in the data directory.
const SNAPSHOT_TMP_PREFIX: &str = ".backup-";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("another backup is running; try again when it has finished")]
    Busy,
    #[error(
        "not enough disk space for {what}: about {} MiB needed, {} MiB free",
        .need / (1024 * 1024) + 1,
        .free / (1024 * 1024)
    )]
    NoSpace { what: String, need: u64, free: u64 },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("taking the snapshot: {0}")]
    Snapshot(StoreError),
    #[error("{0}")]
    Destination(String),
    #[error("not a quince backup (it does not start with {MAGIC:?})")]
    NotABackup,
    #[error("backup format version {0}; this build reads versions 1 to {FORMAT_VERSION}")]
    NewerFormat(u32),
    #[error("cannot back up the attachment file {}: {problem}", .file.display())]
    Attachment { file: PathBuf, problem: String },
    #[error("the backup is truncated: it ends before its {0}")]
    Truncated(&'static str),
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the backup is corrupt: its SHA-256 checksum does not match (expected {expected}, computed {computed})"
    )]
    Checksum { expected: String, computed: String },
    #[error("the database in the backup is not a usable quince store: {0}")]
    NotAStore(StoreError),
    #[error("wrong passphrase (or the encrypted file's header is damaged)")]
    WrongPassphrase,
    #[error("cannot decrypt the backup: {0}")]
    Decrypt(String),
    #[error("cannot encrypt the backup: {0}")]
    Encrypt(String),
    #[error("{0} is not empty; restore only into an empty or new data directory")]
    NotEmpty(PathBuf),
    #[error("the backup transfer failed: {0}")]
    Transfer(String),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> BackupError {
    let what = what.to_string();
    move |source| BackupError::Io { what, source }
}

fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

// --- Shared state: one backup at a time, and the schedule's outcome ---------

/// The server's backup state: at most one backup runs at a time (a client's
/// or the schedule's), and what the schedule last did, for `admin_status`.
#[derive(Default)]
pub struct Backups {
    running: Arc<tokio::sync::Mutex<()>>,
    status: std::sync::Mutex<ScheduleStatus>,
    /// Read-held by a backup from before its snapshot until it has sent or
    /// written its attachment files; the garbage collection write-holds it
    /// while it deletes blob files ([`Backups::files_unread`]).
    files: Arc<tokio::sync::RwLock<()>>,
}

/// What the schedule last did (all times in ms since the epoch).
#[derive(Debug, Clone, Default)]
pub struct ScheduleStatus {
    pub last_success: Option<u64>,
    /// Set by a failure, cleared by the next success.
    pub last_error: Option<String>,
    pub next: Option<u64>,
}

/// Held while a backup runs.
pub struct BackupGuard {
    _held: tokio::sync::OwnedMutexGuard<()>,
    files: Arc<tokio::sync::RwLock<()>>,
}

impl Backups {
    /// Starts a backup now, or says another one runs.
    pub fn try_begin(&self) -> Result<BackupGuard, BackupError> {
        self.running
            .clone()
            .try_lock_owned()
            .map(|held| BackupGuard {
                _held: held,
                files: self.files.clone(),
            })
            .map_err(|_| BackupError::Busy)
    }

    /// Waits until no other backup runs, then starts one.
    pub async fn begin(&self) -> BackupGuard {
        BackupGuard {
            _held: self.running.clone().lock_owned().await,
            files: self.files.clone(),
        }
    }

    /// Waits until no backup is reading attachment files, and keeps the
    /// next one from starting its snapshot while held: the garbage
    /// collection holds it while it deletes blob files, so a file recorded
    /// in a running backup's snapshot is never deleted under it.
    pub async fn files_unread(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.files.write().await
    }

    pub fn status(&self) -> ScheduleStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut ScheduleStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

// --- Temporary files ---------------------------------------------------------

/// A file that is removed when dropped unless [`TempFile::keep`] was called,
/// so a failure anywhere leaves nothing behind.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// A name for a file that the caller creates.
    fn reserve(path: PathBuf) -> TempFile {
        TempFile { path, keep: false }
    }

    /// Creates the file, readable by its owner only (it holds secrets).
    fn create(path: PathBuf) -> Result<(TempFile, std::fs::File), BackupError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        Ok((TempFile { path, keep: false }, file))
    }

    /// Renames it to `to` (same directory) and keeps it.
    fn persist(mut self, to: &Path) -> Result<(), BackupError> {
        std::fs::rename(&self.path, to).map_err(io_err(format!(
            "renaming {} to {}",
            self.path.display(),
            to.display()
        )))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    rand::fill(&mut b);
    hex::encode(b)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64, BackupError> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(|e| BackupError::Io {
        what: format!("checking free space in {}", dir.display()),
        source: e.into(),
    })?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

fn check_space(dir: &Path, need: u64, what: String) -> Result<(), BackupError> {
    let free = free_bytes(dir)?;
    if free < need.saturating_add(SPACE_MARGIN) {
        return Err(BackupError::NoSpace { what, need, free });
    }
    Ok(())
}

// --- Taking a backup on the server --------------------------------------------

/// A backup ready to be written or sent: the container's header in memory,
/// the database snapshot in a temporary file in the data directory, the list
/// of attachment files it records, and the checksum of all. Dropping it
/// removes the file and ends the backup (the garbage collection may then
/// delete blob files again).
pub struct Snapshot {
    header: Vec<u8>,
    db: TempFile,
    db_len: u64,
    /// The data directory, where the attachment files are.
    dir: PathBuf,
    /// SHA-256 and size of every attachment file, in the snapshot's order.
    blobs: Vec<([u8; 32], u64)>,
    sha256: [u8; 32],
    _reading: tokio::sync::OwnedRwLockReadGuard<()>,
    _running: BackupGuard,
}

/// Where the attachment file with this SHA-256 is in the data directory `dir`
/// (as [`crate::attachment::Attachments::blob_path`] has it).
fn blob_file(dir: &Path, sha: &[u8; 32]) -> PathBuf {
    let hex = hex::encode(sha);
    dir.join(crate::attachment::DIR)
        .join("blobs")
        .join(&hex[..2])
        .join(&hex)
}

/// What precedes an attachment file's bytes in the backup.
fn file_head(sha: &[u8; 32], size: u64) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[..32].copy_from_slice(sha);
    h[32..].copy_from_slice(&size.to_be_bytes());
    h
}

impl Snapshot {
    /// Copies the store from one read transaction into a temporary file in
    /// `data_dir` (its free space is checked first) and prepares the rest of
    /// the backup. The server keeps serving meanwhile.
    pub async fn take(
        store: &Store,
        data_dir: &Path,
        running: BackupGuard,
    ) -> Result<Snapshot, BackupError> {
        let store = store.clone();
        let dir = data_dir.to_path_buf();
        // Before the snapshot's read transaction begins: a file it records
        // must not be collected before the backup has read it.
        let reading = running.files.clone().read_owned().await;
        tokio::task::spawn_blocking(move || Snapshot::take_blocking(&store, &dir, running, reading))
            .await
            .map_err(|e| BackupError::Io {
                what: "the snapshot thread".into(),
                source: io::Error::other(e.to_string()),
            })?
    }

    fn take_blocking(
        store: &Store,
        dir: &Path,
        running: BackupGuard,
        reading: tokio::sync::OwnedRwLockReadGuard<()>,
    ) -> Result<Snapshot, BackupError> {
        remove_stale_snapshots(dir);
        // The copy holds the live data without free pages, so the file's
        // size is an upper bound for it.
        check_space(
            dir,
            store.file_size(),
            format!("the snapshot in {}", dir.display()),
        )?;
        let db = TempFile::reserve(dir.join(format!("{SNAPSHOT_TMP_PREFIX}{}.redb", random_hex())));
        let blobs = store
            .snapshot(&db.path)
            .map_err(BackupError::Snapshot)?
            .blobs;
        let db_len = std::fs::metadata(&db.path)
            .map_err(io_err("reading the snapshot's size"))?
            .len();
        let (cert, key) = identity(dir)?;
        let header = encode_header(now_ms(), SCHEMA_VERSION, &cert, &key, db_len);
        let mut hasher = Sha256::new();
        hasher.update(&header);
        let mut file = std::fs::File::open(&db.path).map_err(io_err("reading the snapshot"))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(io_err("reading the snapshot"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        hasher.update((blobs.len() as u64).to_be_bytes());
        for (sha, size) in &blobs {
            hasher.update(file_head(sha, *size));
            hash_blob(&blob_file(dir, sha), sha, *size, &mut hasher, &mut buf)?;
        }
        Ok(Snapshot {
            header,
            db,
            db_len,
            dir: dir.to_path_buf(),
            blobs,
            sha256: hasher.finalize().into(),
            _reading: reading,
            _running: running,
        })
    }

    /// Length of the whole backup file.
    pub fn total(&self) -> u64 {
        let files: u64 = self.blobs.iter().map(|(_, size)| 40 + size).sum();
        self.header.len() as u64 + self.db_len + 8 + files + 32
    }

    /// What `admin_backup` answers.
    pub fn ready(&self) -> BackupReady {
        BackupReady {
            bytes: self.total(),
            sha256: hex::encode(self.sha256),
        }
    }

    /// Writes the backup file (blocking).
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.header)?;
        io::copy(&mut std::fs::File::open(&self.db.path)?, out)?;
        out.write_all(&(self.blobs.len() as u64).to_be_bytes())?;
        for (sha, size) in &self.blobs {
            out.write_all(&file_head(sha, *size))?;
            let path = blob_file(&self.dir, sha);
            let copied = io::copy(&mut std::fs::File::open(&path)?.take(*size), out)?;
            if copied != *size {
                return Err(shrunk(&path));
            }
        }
        out.write_all(&self.sha256)
    }

    /// Sends the backup on a new unidirectional stream of `conn`: a
    /// [`StreamHeader`] frame naming request `id`, then the file's bytes.
    pub async fn send(self, conn: quinn::Connection, id: u64) {
        match self.send_on(&conn, id).await {
            Ok(out) => {
                // Every byte is in QUIC's send buffer now, which retransmits
                // from memory: the snapshot file, the hold on the attachment
                // files and the one-backup-at-a-time guard can go, so a
                // client may start its next backup as soon as it has read
                // this one.
                drop(self);
                let _ = tokio::time::timeout(Duration::from_secs(60), out.stopped()).await;
            }
            Err(e) => tracing::warn!(error = %e, "sending a backup failed"),
        }
    }

    /// Writes the whole backup on a new stream and finishes it.
    async fn send_on(
        &self,
        conn: &quinn::Connection,
        id: u64,
    ) -> Result<quinn::SendStream, BackupError> {
        use tokio::io::AsyncReadExt;
        let failed = |e: &dyn std::fmt::Display| BackupError::Transfer(e.to_string());
        let mut out = conn.open_uni().await.map_err(|e| failed(&e))?;
        let header = crate::protocol::encode_stream_header(&StreamHeader {
            stream: "backup".into(),
            id,
            offset: None,
        });
        out.write_all(&header).await.map_err(|e| failed(&e))?;
        out.write_all(&self.header).await.map_err(|e| failed(&e))?;
        let mut file = tokio::fs::File::open(&self.db.path)
            .await
            .map_err(io_err("reading the snapshot"))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(io_err("reading the snapshot"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).await.map_err(|e| failed(&e))?;
        }
        let count = (self.blobs.len() as u64).to_be_bytes();
        out.write_all(&count).await.map_err(|e| failed(&e))?;
        for (sha, size) in &self.blobs {
            let head = file_head(sha, *size);
            out.write_all(&head).await.map_err(|e| failed(&e))?;
            let path = blob_file(&self.dir, sha);
            let what = format!("reading {}", path.display());
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(io_err(&what))?
                .take(*size);
            let mut left = *size;
            while left > 0 {
                let n = file.read(&mut buf).await.map_err(io_err(&what))?;
                if n == 0 {
                    return Err(io_err(&what)(shrunk(&path)));
                }
                out.write_all(&buf[..n]).await.map_err(|e| failed(&e))?;
                left -= n as u64;
            }
        }
        out.write_all(&self.sha256).await.map_err(|e| failed(&e))?;
        out.finish().map_err(|e| failed(&e))?;
        Ok(out)
    }
}

/// An attachment file that became shorter after the snapshot checked it.
fn shrunk(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{} became shorter during the backup", path.display()),
    )
}

/// Feeds the attachment file at `path` to `hasher`, checking that it has
/// `size` bytes and the SHA-256 `sha` it is named by: a damaged file fails
/// the backup now rather than its restore later.
fn hash_blob(
    path: &Path,
    sha: &[u8; 32],
    size: u64,
    hasher: &mut Sha256,
    buf: &mut [u8],
) -> Result<(), BackupError> {
    let bad = |problem: String| BackupError::Attachment {
        file: path.to_path_buf(),
        problem,
    };
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut own = Sha256::new();
    let mut left = size;
    loop {
        let n = file.read(buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            break;
        }
        if n as u64 > left {
            return Err(bad(format!("it is longer than the {size} bytes recorded")));
        }
        hasher.update(&buf[..n]);
        own.update(&buf[..n]);
        left -= n as u64;
    }
    if left > 0 {
        return Err(bad(format!(
            "it has {} of the {size} bytes recorded",
            size - left
        )));
    }
    if own.finalize().as_slice() != sha {
        return Err(bad("its content does not match its SHA-256".into()));
    }
    Ok(())
}

/// Removes snapshot files a crash left in the data directory.
fn remove_stale_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SNAPSHOT_TMP_PREFIX) && name.ends_with(".redb") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The data directory's certificate and key, or two empty strings when the
/// server uses a configured certificate kept elsewhere.
fn identity(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), BackupError> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !(cert.exists() && key.exists()) {
        return Ok((Vec::new(), Vec::new()));
    }
    let read = |p: &Path| std::fs::read(p).map_err(io_err(format!("reading {}", p.display())));
    Ok((read(&cert)?, read(&key)?))
}

fn encode_header(created: u64, schema: u32, cert: &[u8], key: &[u8], db_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(48 + cert.len() + key.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    h.extend_from_slice(&created.to_be_bytes());
    h.extend_from_slice(&schema.to_be_bytes());
    h.extend_from_slice(&(cert.len() as u32).to_be_bytes());
    h.extend_from_slice(cert);
    h.extend_from_slice(&(key.len() as u32).to_be_bytes());
    h.extend_from_slice(key);
    h.extend_from_slice(&db_len.to_be_bytes());
    h
}

// --- Receiving a backup on the client ------------------------------------------

/// A backup arriving from the server: yields its bytes and, at the end,
/// checks the length and the SHA-256 (announced, and trailing the file).
pub struct Download {
    recv: quinn::RecvStream,
    leftover: Bytes,
    ready: BackupReady,
    received: u64,
    hasher: Sha256,
    trailer: Vec<u8>,
}

impl Download {
    /// `leftover`: bytes already read off the stream after its header frame.
    pub fn new(ready: BackupReady, recv: quinn::RecvStream, leftover: Bytes) -> Download {
        Download {
            recv,
            leftover,
            ready,
            received: 0,
            hasher: Sha256::new(),
            trailer: Vec::with_capacity(32),
        }
    }

    /// Size and checksum the server announced.
    pub fn ready(&self) -> &BackupReady {
        &self.ready
    }

    /// The next bytes of the backup; `None` once all arrived and checked out.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, BackupError> {
        let chunk = if !self.leftover.is_empty() {
            std::mem::take(&mut self.leftover)
        } else {
            match self.recv.read_chunk(CHUNK, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => {
                    self.finish()?;
                    return Ok(None);
                }
                Err(e) => return Err(BackupError::Transfer(e.to_string())),
            }
        };
        let total = self.ready.bytes;
        let (start, end) = (self.received, self.received + chunk.len() as u64);
        if end > total || total < 32 {
            return Err(BackupError::Transfer(format!(
                "the server sent more than the {total} bytes it announced"
            )));
        }
        let body_end = total - 32;
        if start < body_end {
            let upto = (end.min(body_end) - start) as usize;
            self.hasher.update(&chunk[..upto]);
        }
        if end > body_end {
            let from = (start.max(body_end) - start) as usize;
            self.trailer.extend_from_slice(&chunk[from..]);
        }
        self.received = end;
        Ok(Some(chunk))
    }

    fn finish(&mut self) -> Result<(), BackupError> {
        if self.received != self.ready.bytes {
            return Err(BackupError::Transfer(format!(
                "the stream ended after {} of {} bytes",
                self.received, self.ready.bytes
            )));
        }
        let computed = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if computed != self.ready.sha256 || hex::encode(&self.trailer) != self.ready.sha256 {
            return Err(BackupError::Checksum {
                expected: self.ready.sha256.clone(),
                computed,
            });
        }
        Ok(())
    }
}

/// Where a backup file is written: straight, or through age encryption.
enum Sink {
    Plain(io::BufWriter<std::fs::File>),
    Age(age::stream::StreamWriter<io::BufWriter<std::fs::File>>),
}

impl Sink {
    fn new(file: std::fs::File, passphrase: Option<SecretString>) -> Result<Sink, BackupError> {
        let out = io::BufWriter::with_capacity(CHUNK, file);
        Ok(match passphrase {
            None => Sink::Plain(out),
            Some(p) => Sink::Age(
                age::Encryptor::with_user_passphrase(p)
                    .wrap_output(out)
                    .map_err(|e| BackupError::Encrypt(e.to_string()))?,
            ),
        })
    }

    /// Ends the file (age's last chunk) and returns it, not yet synced.
    fn finish(self) -> io::Result<std::fs::File> {
        let out = match self {
            Sink::Plain(out) => out,
            Sink::Age(w) => w.finish()?,
        };
        out.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

/// Writes a downloaded backup to `dest` (a file, or a directory to put
/// `quince-YYYYMMDDTHHMMSSZ.qbk` in), encrypted when a passphrase is given.
/// It goes to a temporary name first and is renamed once complete, checked
/// and synced, so `dest` never holds half a backup. Returns the path written.
pub async fn save(
    mut download: Download,
    dest: &Path,
    passphrase: Option<SecretString>,
) -> Result<PathBuf, BackupError> {
    let dest = if dest.is_dir() {
        dest.join(file_name(now_ms() / 1000))
    } else {
        dest.to_path_buf()
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            BackupError::Destination(format!("{} is not a file name", dest.display()))
        })?;
    // age adds 16 bytes per 64 KiB chunk; 1/1024 covers it.
    let bytes = download.ready().bytes;
    check_space(
        &dir,
        bytes + bytes / 1024,
        format!("the backup in {}", dir.display()),
    )?;
    let (tmp, file) = TempFile::create(dir.join(format!(".{name}.partial-{}", random_hex())))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let what = format!("writing {}", tmp.path.display());
    // Encryption and file writes block: they run on their own thread.
    let writer = tokio::task::spawn_blocking(move || -> Result<std::fs::File, BackupError> {
        let mut sink = Sink::new(file, passphrase)?;
        while let Some(chunk) = rx.blocking_recv() {
            sink.write_all(&chunk).map_err(io_err(&what))?;
        }
        let file = sink.finish().map_err(io_err(&what))?;
        file.sync_all().map_err(io_err(&what))?;
        Ok(file)
    });
    let mut failed = None;
    loop {
        match download.next_chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| BackupError::Io {
        what: "the writer thread".into(),
        source: io::Error::other(e.to_string()),
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    drop(written?);
    tmp.persist(&dest)?;
    sync_dir(&dir)?;
    Ok(dest)
}

// --- Restore -------------------------------------------------------------------

/// What [`restore`] put in place.
#[derive(Debug)]
pub struct Restored {
    /// Creation time of the backup (ms since the epoch).
    pub created: u64,
    pub schema: u32,
    pub encrypted: bool,
    /// Whether the backup held the server's certificate and key.
    pub identity: bool,
    pub db_bytes: u64,
    /// Attachment files restored (none from a version 1 backup).
    pub files: u64,
    pub file_bytes: u64,
}

/// Reads and hashes.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BackupError::Truncated(what),
        _ => decrypt_or_io(e, "reading the backup"),
    })
}

/// age reports a damaged ciphertext as an I/O error of kind InvalidData.
fn decrypt_or_io(e: io::Error, what: &str) -> BackupError {
    if e.kind() == io::ErrorKind::InvalidData {
        BackupError::Decrypt(e.to_string())
    } else {
        BackupError::Io {
            what: what.into(),
            source: e,
        }
    }
}

fn read_u32(r: &mut impl Read, what: &'static str) -> Result<u32, BackupError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, what)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read, what: &'static str) -> Result<u64, BackupError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, what)?;
    Ok(u64::from_be_bytes(b))
}

fn read_pem(r: &mut impl Read, what: &'static str) -> Result<Vec<u8>, BackupError> {
    let len = read_u32(r, what)?;
    if len > MAX_PEM {
        return Err(BackupError::Corrupt(format!("{what} of {len} bytes")));
    }
    let mut v = vec![0u8; len as usize];
    read_exact(r, &mut v, what)?;
    Ok(v)
}

/// Whether the file at `src` is age-encrypted (so a passphrase is needed).
pub fn is_encrypted(src: &Path) -> Result<bool, BackupError> {
    let mut start = Vec::with_capacity(AGE_MAGIC.len());
    std::fs::File::open(src)
        .and_then(|f| f.take(AGE_MAGIC.len() as u64).read_to_end(&mut start))
        .map_err(io_err(format!("reading {}", src.display())))?;
    Ok(start == AGE_MAGIC)
}

/// Restores the backup `src` into the data directory `dir`, which must be
/// empty or not exist. `passphrase` is asked only for an encrypted backup.
///
/// Everything is checked before anything is put in place: the magic and
/// version, the SHA-256, and that the database opens as a quince store of a
/// schema this build reads. The files are written under temporary names in
/// `dir`, synced, and renamed at the end; on any failure they are removed
/// (and `dir` too, if this created it), so a refused backup writes nothing.
pub fn restore(
    src: &Path,
    dir: &Path,
    passphrase: impl FnOnce() -> io::Result<SecretString>,
) -> Result<Restored, BackupError> {
    let created_dir = prepare_empty_dir(dir)?;
    let result = restore_into(src, dir, passphrase);
    if result.is_err() && created_dir {
        let _ = std::fs::remove_dir(dir);
    }
    result
}

/// Checks that `dir` is empty (a `lost+found` is allowed) or creates it;
/// returns whether it created it.
fn prepare_empty_dir(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
                if entry.file_name() != "lost+found" {
                    return Err(BackupError::NotEmpty(dir.to_path_buf()));
                }
            }
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io_err(format!("creating {}", dir.display())))?;
            Ok(true)
        }
        Err(e) => Err(io_err(format!("reading {}", dir.display()))(e)),
    }
}

fn restore_into(
    src: &Path,
    dir: &Path,
    passphrase: impl FnOnce() -> io::Result<SecretString>,
) -> Result<Restored, BackupError> {
    let file = std::fs::File::open(src).map_err(io_err(format!("opening {}", src.display())))?;
    let encrypted = is_encrypted(src)?;
    let input: Box<dyn Read> = if encrypted {
        let pass = passphrase().map_err(io_err("reading the passphrase"))?;
        let decryptor = age::Decryptor::new_buffered(BufReader::new(file))
            .map_err(|e| BackupError::Decrypt(e.to_string()))?;
        if !decryptor.is_scrypt() {
            return Err(BackupError::Decrypt(
                "the file is encrypted to a key, not a passphrase".into(),
            ));
        }
        let identity = age::scrypt::Identity::new(pass);
        let reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| match e {
                // What a wrong passphrase gives: the file key does not unwrap.
                age::DecryptError::DecryptionFailed
                | age::DecryptError::NoMatchingKeys
                | age::DecryptError::KeyDecryptionFailed => BackupError::WrongPassphrase,
                other => BackupError::Decrypt(other.to_string()),
            })?;
        Box::new(BufReader::with_capacity(CHUNK, reader))
    } else {
        Box::new(BufReader::with_capacity(CHUNK, file))
    };
    let mut r = Hashing {
        inner: input,
        hasher: Sha256::new(),
    };
    let mut magic = [0u8; 8];
    match r.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => {}
        Ok(()) => return Err(BackupError::NotABackup),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(BackupError::NotABackup),
        Err(e) => return Err(decrypt_or_io(e, "reading the backup")),
    }
    let version = read_u32(&mut r, "format version")?;
    if version > FORMAT_VERSION {
        return Err(BackupError::NewerFormat(version));
    }
    if version == 0 {
        return Err(BackupError::Corrupt("format version 0".into()));
    }
    let created = read_u64(&mut r, "header")?;
    let schema = read_u32(&mut r, "header")?;
    let cert = read_pem(&mut r, "certificate")?;
    let key = read_pem(&mut r, "private key")?;
    let db_len = read_u64(&mut r, "database length")?;

    let (db_tmp, mut db_file) =
        TempFile::create(dir.join(format!(".restore-{}.redb", random_hex())))?;
    let copied = io::copy(&mut (&mut r).take(db_len), &mut db_file)
        .map_err(|e| decrypt_or_io(e, "writing the database"))?;
    if copied != db_len {
        return Err(BackupError::Truncated("database"));
    }
    // Version 2: the attachment files, each checked against its name.
    let mut blobs = Vec::new();
    let mut file_bytes = 0u64;
    if version >= 2 {
        let count = read_u64(&mut r, "attachment files")?;
        let mut last: Option<[u8; 32]> = None;
        for _ in 0..count {
            let mut sha = [0u8; 32];
            read_exact(&mut r, &mut sha, "attachment files")?;
            let len = read_u64(&mut r, "attachment files")?;
            if last.is_some_and(|l| l >= sha) {
                return Err(BackupError::Corrupt(
                    "its attachment files are out of order or repeated".into(),
                ));
            }
            last = Some(sha);
            let (tmp, mut f) = TempFile::create(dir.join(format!(".restore-{}", random_hex())))?;
            let mut own = Hashing {
                inner: (&mut r).take(len),
                hasher: Sha256::new(),
            };
            let copied = io::copy(&mut own, &mut f)
                .map_err(|e| decrypt_or_io(e, "writing an attachment file"))?;
            if copied != len {
                return Err(BackupError::Truncated("attachment files"));
            }
            if own.hasher.finalize().as_slice() != sha {
                return Err(BackupError::Corrupt(format!(
                    "the attachment file {} does not match its SHA-256",
                    hex::encode(sha)
                )));
            }
            f.sync_all()
                .map_err(io_err("syncing a restored attachment file"))?;
            blobs.push((tmp, sha));
            file_bytes += len;
        }
    }
    let computed: [u8; 32] = std::mem::take(&mut r.hasher).finalize().into();
    let mut trailer = [0u8; 32];
    read_exact(&mut r.inner, &mut trailer, "checksum")?;
    if trailer != computed {
        return Err(BackupError::Checksum {
            expected: hex::encode(trailer),
            computed: hex::encode(computed),
        });
    }
    let mut extra = [0u8; 1];
    match r.inner.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => {
            return Err(BackupError::Corrupt(
                "there are bytes after its checksum".into(),
            ));
        }
        Err(e) => return Err(decrypt_or_io(e, "reading the backup")),
    }
    db_file
        .sync_all()
        .map_err(io_err("syncing the restored database"))?;
    drop(db_file);
    crate::store::check_file(&db_tmp.path).map_err(BackupError::NotAStore)?;

    // The attachment files first and the database last: a restore cut
    // short has no database, so no server starts on half of it.
    let files = blobs.len() as u64;
    let mut fans = std::collections::BTreeSet::new();
    for (tmp, sha) in blobs {
        let to = blob_file(dir, &sha);
        if let Some(fan) = to.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(fan)
                .map_err(io_err(format!("creating {}", fan.display())))?;
            fans.insert(fan.to_path_buf());
        }
        tmp.persist(&to)?;
    }
    if !fans.is_empty() {
        let blobs_dir = dir.join(crate::attachment::DIR).join("blobs");
        for d in fans
            .iter()
            .chain([&blobs_dir, &dir.join(crate::attachment::DIR)])
        {
            sync_dir(d)?;
        }
    }

    let identity = !cert.is_empty() && !key.is_empty();
    let mut staged = Vec::new();
    if identity {
        for (bytes, name) in [(&cert, CERT_FILE), (&key, KEY_FILE)] {
            let (tmp, mut f) = TempFile::create(dir.join(format!(".restore-{}", random_hex())))?;
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .map_err(io_err(format!("writing {name}")))?;
            staged.push((tmp, dir.join(name)));
        }
    }
    staged.push((db_tmp, dir.join(DB_FILE)));
    for (tmp, to) in staged {
        tmp.persist(&to)?;
    }
    sync_dir(dir)?;
    Ok(Restored {
        created,
        schema,
        encrypted,
        identity,
        db_bytes: db_len,
        files,
        file_bytes,
    })
}

/// Reads a passphrase file: its first line, without the line end.
pub fn read_passphrase_file(path: &Path) -> Result<SecretString, BackupError> {
    let text = std::fs::read_to_string(path).map_err(io_err(format!(
        "reading passphrase_file {}",
        path.display()
    )))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(BackupError::Destination(format!(
            "the passphrase file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(line.to_string()))
}

// --- The schedule ---------------------------------------------------------------

/// Writes backups into `[backup] dir` every `interval_hours`, keeps the newest
/// `keep`, and records each outcome for `admin_status`; a failure is logged at
/// error level every time. The first backup is due one interval after the
/// newest one already in the directory (at once when there is none).
pub async fn schedule(state: Arc<State>) {
    let cfg = state.config.backup.clone();
    let Some(dir) = cfg.dir.clone() else {
        return;
    };
    let interval = cfg.interval();
    if now_ms() / 1000 < CLOCK_SET_AFTER_SECS {
        tracing::warn!("the clock is not set yet (no NTP answer?); scheduled backups wait for it");
        while now_ms() / 1000 < CLOCK_SET_AFTER_SECS {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }
    let mut due = newest_backup(&dir)
        .map(|t| t + interval)
        .unwrap_or_else(SystemTime::now);
    tracing::info!(dir = %dir.display(), interval_secs = interval.as_secs_f64(), keep = cfg.keep, "scheduled backups on");
    state.backups.update(|s| s.next = Some(epoch_ms(due)));
    loop {
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let started = std::time::Instant::now();
        // Each outcome and the next due time are recorded in one update, so
        // `admin_status` never shows a finished backup beside the old due time.
        match scheduled_backup(&state, &dir).await {
            Ok((path, bytes)) => {
                tracing::info!(file = %path.display(), bytes, ms = started.elapsed().as_millis() as u64, "backup written");
                due = SystemTime::now() + interval;
                state.backups.update(|s| {
                    s.last_success = Some(now_ms());
                    s.last_error = None;
                    s.next = Some(epoch_ms(due));
                });
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "scheduled backup FAILED");
                due = SystemTime::now() + interval.min(RETRY_AFTER_FAILURE);
                state.backups.update(|s| {
                    s.last_error = Some(e.to_string());
                    s.next = Some(epoch_ms(due));
                });
            }
        }
    }
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn scheduled_backup(state: &State, dir: &Path) -> Result<(PathBuf, u64), BackupError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(BackupError::Destination(format!(
                "the backup directory {} is not a directory",
                dir.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::Destination(format!(
                "the backup directory {} does not exist (is the backup disk plugged in and mounted?)",
                dir.display()
            )));
        }
        Err(e) => return Err(io_err(format!("checking {}", dir.display()))(e)),
    }
    let cfg = &state.config.backup;
    let passphrase = match &cfg.passphrase_file {
        Some(f) => Some(read_passphrase_file(f)?),
        None => None,
    };
    let running = state.backups.begin().await;
    let snapshot = Snapshot::take(&state.store, &state.config.data_dir, running).await?;
    let (dir, keep) = (dir.to_path_buf(), cfg.keep);
    tokio::task::spawn_blocking(move || write_scheduled(&snapshot, &dir, passphrase, keep))
        .await
        .map_err(|e| BackupError::Io {
            what: "the backup thread".into(),
            source: io::Error::other(e.to_string()),
        })?
}

fn write_scheduled(
    snapshot: &Snapshot,
    dir: &Path,
    passphrase: Option<SecretString>,
    keep: usize,
) -> Result<(PathBuf, u64), BackupError> {
    check_space(
        dir,
        snapshot.total() + snapshot.total() / 1024,
        format!("the backup in {}", dir.display()),
    )?;
    let name = file_name(now_ms() / 1000);
    let (tmp, file) = TempFile::create(dir.join(format!(".{name}.tmp")))?;
    let what = format!("writing {}", tmp.path.display());
    let mut sink = Sink::new(file, passphrase)?;
    snapshot.write_to(&mut sink).map_err(io_err(&what))?;
    let file = sink.finish().map_err(io_err(&what))?;
    file.sync_all().map_err(io_err(&what))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    let path = dir.join(&name);
    tmp.persist(&path)?;
    sync_dir(dir)?;
    if let Err(e) = prune(dir, keep) {
        tracing::error!(dir = %dir.display(), error = %e, "could not delete old backups");
    }
    Ok((path, bytes))
}

/// `quince-YYYYMMDDTHHMMSSZ.qbk` for a time in seconds since the epoch.
pub fn file_name(secs: u64) -> String {
    format!("quince-{}.{EXTENSION}", utc_stamp(secs))
}

/// Parses a name made by [`file_name`] back to seconds since the epoch; any
/// other name is `None`, so the schedule only ever deletes its own files.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let stamp = name.strip_prefix("quince-")?.strip_suffix(".qbk")?;
    let b = stamp.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = stamp.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    u64::try_from(days * 86_400)
        .ok()
        .map(|t| t + h * 3600 + mi * 60 + s)
}

/// Time of the newest backup in `dir` by its name.
fn newest_backup(dir: &Path) -> Option<SystemTime> {
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| parse_file_name(&e.file_name().to_string_lossy()))
        .max()?;
    Some(UNIX_EPOCH + Duration::from_secs(newest))
}

/// Deletes the oldest of this schedule's backups beyond the newest `keep`,
/// and temporary files of its own that a crash or power cut left behind.
fn prune(dir: &Path, keep: usize) -> Result<(), BackupError> {
    let mut ours: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(io_err(format!("listing {}", dir.display())))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(t) = parse_file_name(&name) {
            ours.push((t, entry.path()));
        } else if let Some(stale) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp"))
            && parse_file_name(stale).is_some()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    ours.sort();
    let excess = ours.len().saturating_sub(keep.max(1));
    for (_, path) in ours.into_iter().take(excess) {
        std::fs::remove_file(&path).map_err(io_err(format!("deleting {}", path.display())))?;
        tracing::info!(file = %path.display(), "deleted an old backup");
    }
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ` (UTC) for seconds since the epoch.
pub fn utc_stamp(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` for milliseconds since the epoch.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (y, m, d).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_others_are_ignored() {
        // 2026-12-02T05:43:34Z
        let t = 1_796_190_214;
        assert_eq!(file_name(t), "quince-20261202T054334Z.qbk");
        assert_eq!(parse_file_name(&file_name(t)), Some(t));
        assert_eq!(parse_file_name(&file_name(0)), Some(0));
        assert_eq!(parse_file_name(&file_name(951_782_400)), Some(951_782_400)); // 2000-02-29
        for other in [
            "quince-20261202T054334Z.qbk.tmp",
            ".quince-20261202T054334Z.qbk.tmp",
            "quince-2026120T054334Z.qbk",
            "quince-20261302T054334Z.qbk",
            "notes.txt",
            "quince-backup.qbk",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
        assert_eq!(format_utc(t * 1000), "2026-12-02 05:43:34 UTC");
    }

    #[test]
    fn prune_keeps_the_newest_and_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for t in [100, 200, 300, 400] {
            std::fs::write(dir.path().join(file_name(t)), b"x").unwrap();
        }
        std::fs::write(dir.path().join("mine.qbk"), b"x").unwrap();
        // Left by a power cut in the middle of a write.
        std::fs::write(dir.path().join(format!(".{}.tmp", file_name(50))), b"x").unwrap();
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["mine.qbk".to_string(), file_name(300), file_name(400)]
        );
    }

    #[test]
    fn too_little_space_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_space(dir.path(), u64::MAX / 2, "the test".into()).unwrap_err();
        assert!(matches!(err, BackupError::NoSpace { .. }));
        assert!(
            err.to_string()
                .contains("not enough disk space for the test")
        );
        check_space(dir.path(), 1, "a byte".into()).unwrap();
    }

    #[test]
    fn only_one_backup_at_a_time() {
        let b = Backups::default();
        let first = b.try_begin().unwrap();
        assert!(matches!(b.try_begin(), Err(BackupError::Busy)));
        drop(first);
        assert!(b.try_begin().is_ok());
    }

    #[test]
    fn restore_refuses_a_non_empty_dir_and_removes_a_dir_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("junk.qbk");
        std::fs::write(&src, b"hello, this is not a backup").unwrap();
        let full = dir.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"x").unwrap();
        let nopass = || -> io::Result<SecretString> { Err(io::Error::other("no")) };
        assert!(matches!(
            restore(&src, &full, nopass),
            Err(BackupError::NotEmpty(_))
        ));
        let new = dir.path().join("new");
        assert!(matches!(
            restore(&src, &new, nopass),
            Err(BackupError::NotABackup)
        ));
        assert!(
            !new.exists(),
            "a refused restore must not leave its directory"
        );
    }
}
