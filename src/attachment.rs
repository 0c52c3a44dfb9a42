//! Attachment files on the server's disk: uploads arriving on their own QUIC
//! streams, the content-addressed blob store, and its garbage collection.
//!
//! Layout under `<data_dir>/attachments/`:
//!
//! * `partial/<upload id>`: the bytes of an upload so far. Appending to it
//!   is all an upload stream does, so a dropped connection loses nothing
//!   that arrived: `upload_begin` reports the file's length and the client
//!   goes on from there (after a server restart too; the upload's record is
//!   in the store).
//! * `blobs/<first two hex digits>/<SHA-256 hex>`: complete files, named by
//!   their content. The same bytes uploaded twice (by anyone) are one file;
//!   the store's `blobs` table says which files exist, and a file it does
//!   not know is garbage.
//!
//! A finished upload is checked against its announced SHA-256, fsynced, and
//! renamed into the blob store (its directory fsynced too) before the store
//! records it, so a recorded file is always a whole, durable file.
//!
//! The store's records are the truth and the files follow them; the two
//! are changed in an order that can leave, after a crash, only files without
//! records, never records without files. The garbage collection deletes such
//! files, and uploads nobody touched for a day, at start, hourly, and when
//! [`Attachments::collect_now`] asks (recall does, after dropping a file's
//! last reference). It waits while a backup runs, which reads the files its
//! snapshot recorded even if their records are gone by then.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::protocol::{StreamHeader, upload_stop};
use crate::server::State;
use crate::store::{Store, StoreError, WriteOp};
use crate::stream::FrameReader;

/// Directory of attachments inside the data directory.
pub const DIR: &str = "attachments";
/// Bytes read from a stream or a file at a time.
const CHUNK: usize = 256 * 1024;
/// Time between garbage collections (a quarter of `[attachments]
/// unsent_hours` when that is shorter, so nothing outstays it by much).
pub const COLLECT_EVERY: Duration = Duration::from_secs(3600);
/// How long a new upload stream may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an attachment could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the server has {received} of the upload's {size} bytes")]
    Incomplete { received: u64, size: u64 },
    #[error("the bytes received have SHA-256 {computed}, not the {expected} given to upload_begin")]
    Checksum { expected: String, computed: String },
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> AttachmentError {
    let what = what.to_string();
    move |source| AttachmentError::Io { what, source }
}

/// One upload's writer slot: at most one stream appends to an upload at a
/// time, and a newer stream (the client reconnected) takes over from an
/// older one that may still be waiting on a dead connection.
#[derive(Default)]
pub struct UploadSlot {
    /// Held while appending to the partial file, and while finishing.
    pub file: tokio::sync::Mutex<()>,
    /// Bumped by each new stream; an older stream stops when it sees a newer number.
    generation: AtomicU64,
    superseded: Notify,
}

/// The server's attachment files.
pub struct Attachments {
    root: PathBuf,
    /// Held by the garbage collection while it deletes, and by a finishing
    /// upload from its rename into the blob store until the store recorded
    /// it, so a file that is about to be recorded is never collected.
    pub collecting: tokio::sync::Mutex<()>,
    /// Wakes the garbage collection now (see [`Attachments::collect_now`]).
    collect: Notify,
    slots: Mutex<HashMap<u64, Arc<UploadSlot>>>,
}

impl Attachments {
    /// The attachment directories under `data_dir`, created if missing.
    pub fn open(data_dir: &Path) -> io::Result<Attachments> {
        use std::os::unix::fs::DirBuilderExt;
        let root = data_dir.join(DIR);
        for dir in [root.join("blobs"), root.join("partial")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Ok(Attachments {
            root,
            collecting: Default::default(),
            collect: Notify::new(),
            slots: Mutex::default(),
        })
    }

    /// Asks for a garbage collection now (after a file lost its last
    /// reference, e.g. by a recall); it runs in the background.
    pub fn collect_now(&self) {
        self.collect.notify_one();
    }

    pub fn partial_path(&self, upload: u64) -> PathBuf {
        self.root.join("partial").join(upload.to_string())
    }

    /// Where the file with this SHA-256 (lower-case hex) is stored.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        let fan = sha256.get(..2).unwrap_or("00");
        self.root.join("blobs").join(fan).join(sha256)
    }

    /// Bytes the server has of an upload.
    pub fn received(&self, upload: u64) -> u64 {
        std::fs::metadata(self.partial_path(upload))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The writer slot of an upload.
    pub fn slot(&self, upload: u64) -> Arc<UploadSlot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(upload)
            .or_default()
            .clone()
    }

    /// Drops the writer slot of an upload that finished or was deleted.
    pub fn forget(&self, upload: u64) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&upload);
    }

    /// Deletes an upload's bytes.
    pub fn remove_partial(&self, upload: u64) {
        let _ = std::fs::remove_file(self.partial_path(upload));
    }

    /// Checks a complete upload against its SHA-256 and moves it into the
    /// blob store, durably. Returns false when the same file was already
    /// stored (the upload is then just deleted: deduplicated). A wrong
    /// checksum deletes the upload's bytes. Blocking.
    pub fn store_upload(
        &self,
        upload: u64,
        sha256: &str,
        size: u64,
    ) -> Result<bool, AttachmentError> {
        store_upload(&self.root, upload, sha256, size)
    }

    /// [`Attachments::store_upload`] on a blocking thread (hashing a large
    /// file takes a while).
    pub async fn finish_upload(
        &self,
        upload: u64,
        sha256: &str,
        size: u64,
    ) -> Result<bool, AttachmentError> {
        let (root, sha256) = (self.root.clone(), sha256.to_string());
        tokio::task::spawn_blocking(move || store_upload(&root, upload, &sha256, size))
            .await
            .map_err(|e| AttachmentError::Io {
                what: "storing the upload".into(),
                source: io::Error::other(e),
            })?
    }

    /// Opens a stored file for reading.
    pub fn open_blob(&self, sha256: &str) -> io::Result<std::fs::File> {
        std::fs::File::open(self.blob_path(sha256))
    }

    /// Receives one upload stream, opened by a client of `user` (0: not
    /// logged in). Bytes are appended as they come; what arrived stays if
    /// the stream breaks off.
    pub async fn receive(state: Arc<State>, recv: quinn::RecvStream, user: u64) {
        let mut reader = FrameReader::new(recv);
        let header = match tokio::time::timeout(HEADER_TIMEOUT, reader.next()).await {
            Ok(Ok(Some(body))) => crate::protocol::decode_stream_header(&body),
            _ => None,
        };
        let (mut recv, leftover) = reader.into_parts();
        let stop = |recv: &mut quinn::RecvStream, code: u32| {
            let _ = recv.stop(code.into());
        };
        let (upload, offset) = match header {
            Some(StreamHeader {
                stream,
                id,
                offset: Some(offset),
            }) if stream == "upload" => (id, offset),
            _ => return stop(&mut recv, upload_stop::BAD_HEADER),
        };
        let me = &state.attachments;
        let rec = match state.store.upload(upload) {
            Ok(Some(rec)) if user != 0 && rec.user == user => rec,
            Ok(_) => return stop(&mut recv, upload_stop::REFUSED),
            Err(e) => {
                tracing::error!(error = %e, "reading an upload record");
                return stop(&mut recv, upload_stop::FAILED);
            }
        };
        let slot = me.slot(upload);
        let generation = slot.generation.fetch_add(1, Ordering::AcqRel) + 1;
        slot.superseded.notify_waiters();
        let _writing = slot.file.lock().await;
        let mut have = me.received(upload);
        if offset != have {
            return stop(&mut recv, upload_stop::WRONG_OFFSET);
        }
        let path = me.partial_path(upload);
        let mut file = match open_append(&path).await {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(error = %e, upload, "cannot open an upload's file");
                return stop(&mut recv, upload_stop::FAILED);
            }
        };
        let mut pending = Some(leftover).filter(|b| !b.is_empty());
        loop {
            let chunk = match pending.take() {
                Some(bytes) => bytes,
                None => {
                    let superseded = slot.superseded.notified();
                    tokio::pin!(superseded);
                    superseded.as_mut().enable();
                    if slot.generation.load(Ordering::Acquire) != generation {
                        break stop(&mut recv, upload_stop::SUPERSEDED);
                    }
                    tokio::select! {
                        _ = superseded => break stop(&mut recv, upload_stop::SUPERSEDED),
                        chunk = recv.read_chunk(CHUNK, true) => match chunk {
                            Ok(Some(chunk)) => chunk.bytes,
                            // The end, or a broken-off stream: keep what came.
                            Ok(None) | Err(_) => break,
                        },
                    }
                }
            };
            let len = chunk.len() as u64;
            if have + len > rec.size {
                drop(file);
                stop(&mut recv, upload_stop::TOO_MANY_BYTES);
                me.remove_partial(upload);
                if let Err(e) = state.store.write(WriteOp::UploadAbort { upload }).await {
                    tracing::warn!(error = %e, upload, "forgetting an oversized upload");
                }
                me.forget(upload);
                return;
            }
            use tokio::io::AsyncWriteExt;
            if let Err(e) = file.write_all(&chunk).await {
                tracing::error!(error = %e, upload, "writing an upload failed");
                // A short write may have left part of the chunk: cut back to
                // what is whole, so the length stays the resume offset.
                let _ = file.set_len(have).await;
                break stop(&mut recv, upload_stop::FAILED);
            }
            have += len;
        }
        if let Err(e) = file.sync_data().await {
            tracing::warn!(error = %e, upload, "syncing an upload failed");
        }
    }

    /// Sends a stored file from `offset` on a new data stream answering
    /// request `id`.
    pub async fn send(conn: quinn::Connection, id: u64, file: std::fs::File, offset: u64) {
        if let Err(e) = send_file(&conn, id, file, offset).await {
            tracing::debug!(error = %e, "sending an attachment broke off");
        }
    }
}

async fn send_file(
    conn: &quinn::Connection,
    id: u64,
    file: std::fs::File,
    offset: u64,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut out = conn.open_uni().await.map_err(|e| e.to_string())?;
    let header = crate::protocol::encode_stream_header(&StreamHeader {
        stream: "download".into(),
        id,
        offset: None,
    });
    out.write_all(&header).await.map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::from_std(file);
    file.seek(io::SeekFrom::Start(offset))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
    }
    out.finish().map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(60), out.stopped()).await;
    Ok(())
}

/// [`Attachments::store_upload`] for the attachment directory `root`.
fn store_upload(
    root: &Path,
    upload: u64,
    sha256: &str,
    size: u64,
) -> Result<bool, AttachmentError> {
    let partial = root.join("partial").join(upload.to_string());
    if size == 0 && !partial.exists() {
        // An empty file needs no stream, so nothing created its partial file.
        std::fs::File::create(&partial).map_err(io_err("creating the upload"))?;
    }
    let received = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if received != size {
        return Err(AttachmentError::Incomplete { received, size });
    }
    let mut file = std::fs::File::open(&partial).map_err(io_err("reading the upload"))?;
    let computed = hash_reader(&mut file).map_err(io_err("reading the upload"))?;
    if computed != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(AttachmentError::Checksum {
            expected: sha256.to_string(),
            computed,
        });
    }
    file.sync_all().map_err(io_err("syncing the upload"))?;
    let blobs = root.join("blobs");
    let fan = blobs.join(sha256.get(..2).unwrap_or("00"));
    let dest = fan.join(sha256);
    std::fs::create_dir_all(&fan).map_err(io_err("creating the blob directory"))?;
    if dest.exists() {
        let _ = std::fs::remove_file(&partial);
        return Ok(false);
    }
    std::fs::rename(&partial, &dest).map_err(io_err("storing the upload"))?;
    sync_dir(&fan).map_err(io_err("syncing the blob directory"))?;
    sync_dir(&blobs).map_err(io_err("syncing the blob directory"))?;
    Ok(true)
}

async fn open_append(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
}

/// SHA-256 of everything `r` yields, in lower-case hex.
pub fn hash_reader(r: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Checks a `send`'s attachment name and media type.
pub fn check_ref(name: &str, mime: Option<&str>) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("an attachment's name is 1 to 255 bytes");
    }
    if name.contains('/') || name.chars().any(char::is_control) || name == "." || name == ".." {
        return Err("an attachment's name has no '/', control characters, and is not . or ..");
    }
    if let Some(mime) = mime
        && (mime.len() > 127 || mime.chars().any(|c| c.is_control()))
    {
        return Err("an attachment's media type is at most 127 bytes, without control characters");
    }
    Ok(())
}

/// Accepts a connection's upload streams until it closes. `user` holds the
/// connection's logged-in user id (0 while not logged in).
pub async fn accept_uploads(state: Arc<State>, conn: quinn::Connection, user: Arc<AtomicU64>) {
    while let Ok(recv) = conn.accept_uni().await {
        let who = user.load(Ordering::Acquire);
        tokio::spawn(Attachments::receive(state.clone(), recv, who));
    }
}

/// Collects garbage at start, every [`COLLECT_EVERY`], and when asked.
pub async fn collect_garbage(state: Arc<State>) {
    let every = COLLECT_EVERY.min(state.config.attachments.unsent_after() / 4);
    loop {
        match collect(&state).await {
            Ok((blobs, uploads)) if blobs + uploads > 0 => {
                tracing::info!(blobs, uploads, "deleted unreferenced attachment files")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "attachment garbage collection failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.attachments.collect.notified() => {}
        }
    }
}

/// One garbage collection: forgets files no message carries that were last
/// uploaded longer than `[attachments] unsent_hours` ago, then deletes blob
/// files the store has no record of, partial files of uploads it does not
/// know, and uploads untouched for `unsent_hours`. Returns (blob files,
/// uploads) deleted.
pub async fn collect(state: &State) -> Result<(usize, usize), StoreError> {
    let me = &state.attachments;
    let keep = state.config.attachments.unsent_after();
    // Not while a backup reads blob files: it may hold files whose records
    // were deleted after its snapshot.
    let _no_backup = state.backups.files_unread().await;
    // Not while an upload is being stored: its file may be on disk before
    // its record is.
    let _collecting = me.collecting.lock().await;
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let before = now_ms.saturating_sub(keep.as_millis() as u64);
    state.store.write(WriteOp::ExpireUnsent { before }).await?;
    let store = state.store.clone();
    let root = me.root.clone();
    let uploads = store.uploads()?;
    let known: HashMap<u64, u64> = uploads.iter().map(|(id, r)| (*id, r.created)).collect();
    let blobs = tokio::task::spawn_blocking(move || remove_unknown_blobs(&store, &root))
        .await
        .unwrap_or(Ok(0))?;
    let mut stale = Vec::new();
    if let Ok(entries) = std::fs::read_dir(me.root.join("partial")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if !known.contains_key(&id) {
                // Begun since the list was read? A stream writes only to an
                // upload that is recorded, so a second look settles it.
                if state.store.upload(id)?.is_none() {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            let touched = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
            if now.duration_since(touched).unwrap_or_default() > keep {
                stale.push(id);
            }
        }
    }
    // Uploads that never got a byte.
    for (id, created) in &known {
        let age = Duration::from_millis(now_ms.saturating_sub(*created));
        if age > keep && !me.partial_path(*id).exists() && !stale.contains(id) {
            stale.push(*id);
        }
    }
    let mut removed = 0;
    for id in stale {
        // Not while a stream writes to it.
        let slot = me.slot(id);
        let Ok(_writing) = slot.file.try_lock() else {
            continue;
        };
        state
            .store
            .write(WriteOp::UploadAbort { upload: id })
            .await?;
        me.remove_partial(id);
        me.forget(id);
        removed += 1;
    }
    Ok((blobs, removed))
}

fn remove_unknown_blobs(store: &Store, root: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    let Ok(fans) = std::fs::read_dir(root.join("blobs")) else {
        return Ok(0);
    };
    for fan in fans.flatten() {
        let Ok(files) = std::fs::read_dir(fan.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let known = match name.to_str().and_then(crate::store::parse_sha256) {
                Some(sha) => store.blob_size(&sha)?.is_some(),
                None => false,
            };
            if !known && std::fs::remove_file(file.path()).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` to a new file and syncs it.
    fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    #[test]
    fn names_and_media_types_are_checked() {
        assert!(check_ref("report.pdf", Some("application/pdf")).is_ok());
        assert!(check_ref("ünïcode ok.txt", None).is_ok());
        assert!(check_ref("", None).is_err());
        assert!(check_ref(&"x".repeat(256), None).is_err());
        assert!(check_ref("a/b", None).is_err());
        assert!(check_ref("a\nb", None).is_err());
        assert!(check_ref("a\0b", None).is_err());
        assert!(check_ref("..", None).is_err());
        assert!(check_ref("a", Some(&"x".repeat(128))).is_err());
    }

    #[test]
    fn store_upload_verifies_and_deduplicates() {
        let dir = tempfile::tempdir().unwrap();
        let a = Attachments::open(dir.path()).unwrap();
        let bytes = b"hello attachments";
        let sha = hex::encode(Sha256::digest(bytes));
        write_synced(&a.partial_path(1), bytes).unwrap();
        assert!(a.store_upload(1, &sha, bytes.len() as u64).unwrap());
        assert_eq!(std::fs::read(a.blob_path(&sha)).unwrap(), bytes);
        assert!(!a.partial_path(1).exists());
        // The same bytes again: dropped, the one stored file stays.
        write_synced(&a.partial_path(2), bytes).unwrap();
        assert!(!a.store_upload(2, &sha, bytes.len() as u64).unwrap());
        assert!(!a.partial_path(2).exists());
        // Too few bytes: kept for resumption. Wrong bytes: deleted.
        write_synced(&a.partial_path(3), b"hello").unwrap();
        assert!(matches!(
            a.store_upload(3, &sha, bytes.len() as u64),
            Err(AttachmentError::Incomplete { received: 5, .. })
        ));
        assert!(a.partial_path(3).exists());
        write_synced(&a.partial_path(4), b"HELLO attachments").unwrap();
        assert!(matches!(
            a.store_upload(4, &sha, bytes.len() as u64),
            Err(AttachmentError::Checksum { .. })
        ));
        assert!(!a.partial_path(4).exists());
        // An empty file is a file too (it never had a stream).
        let empty = hex::encode(Sha256::digest(b""));
        assert!(a.store_upload(5, &empty, 0).unwrap());
        assert_eq!(std::fs::read(a.blob_path(&empty)).unwrap(), b"");
    }
}
