//! The store's half of attachments: who uploaded which file, uploads in
//! progress, and which messages reference a file.
//!
//! The files themselves live in the data directory ([`crate::attachment`]);
//! these tables say which of them exist (a blob file without a `blobs` row is
//! garbage), who may download them, and how much of their quota each user
//! uses. A file is identified by its SHA-256, so two users uploading the same
//! bytes share one file (and one `blobs` row) but each has it counted against
//! their own quota.
//!
//! | table | key | value |
//! |---|---|---|
//! | `uploads` | upload id (u64) | [`UploadRecord`] |
//! | `upload_index` | user id ‖ SHA-256 (40 bytes) | upload id |
//! | `blobs` | SHA-256 (32 bytes) | [`BlobRecord`] |
//! | `blob_owners` | SHA-256 ‖ user id (40 bytes) | () |
//! | `user_blobs` | user id ‖ SHA-256 (40 bytes) | size in bytes (u64) |
//! | `attachment_refs` | SHA-256 ‖ conversation id ‖ sequence number (48 bytes) | () |

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{MEMBERS, Membership, Store, StoreError, WriteOutcome, Writer, dec, enc, k16, reject};
use crate::protocol::{Attachment, AttachmentRef, ErrorCode};

pub(super) const UPLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("uploads");
pub(super) const UPLOAD_INDEX: TableDefinition<[u8; 40], u64> =
    TableDefinition::new("upload_index");
pub(super) const BLOBS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("blobs");
pub(super) const BLOB_OWNERS: TableDefinition<[u8; 40], ()> = TableDefinition::new("blob_owners");
pub(super) const USER_BLOBS: TableDefinition<[u8; 40], u64> = TableDefinition::new("user_blobs");
pub(super) const ATTACHMENT_REFS: TableDefinition<[u8; 48], ()> =
    TableDefinition::new("attachment_refs");

/// An upload that has begun and not yet finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadRecord {
    pub user: u64,
    pub size: u64,
    /// The SHA-256 the client announced, 64 lower-case hex digits.
    pub sha256: String,
    /// When it began (ms since the epoch), for dropping abandoned uploads.
    pub created: u64,
}

/// A stored file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    /// When it was last uploaded (ms since the epoch): a file no message
    /// carries is kept for `[attachments] unsent_hours` after that.
    pub created: u64,
}

/// Parses 64 hex digits (either case) into the 32 bytes of a SHA-256.
pub fn parse_sha256(hex_digits: &str) -> Option<[u8; 32]> {
    if hex_digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// Every stored file of the read transaction `txn`: SHA-256 and size, in
/// key order (for backups).
pub(super) fn blob_list(txn: &redb::ReadTransaction) -> Result<Vec<([u8; 32], u64)>, StoreError> {
    use redb::ReadableTable;
    let mut out = Vec::new();
    for row in txn.open_table(BLOBS)?.iter()? {
        let (k, v) = row?;
        out.push((k.value(), dec::<BlobRecord>("blobs", v.value())?.size));
    }
    Ok(out)
}

fn k40(a: &[u8], b: &[u8]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..a.len()].copy_from_slice(a);
    k[a.len()..].copy_from_slice(b);
    k
}

fn ref_key(sha: &[u8; 32], conv: u64, seq: u64) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(sha);
    k[32..].copy_from_slice(&k16(conv, seq));
    k
}

fn split_ref(k: [u8; 48]) -> (u64, u64) {
    let mut conv = [0u8; 8];
    let mut seq = [0u8; 8];
    conv.copy_from_slice(&k[32..40]);
    seq.copy_from_slice(&k[40..]);
    (u64::from_be_bytes(conv), u64::from_be_bytes(seq))
}

fn refs_of(sha: &[u8; 32]) -> std::ops::RangeInclusive<[u8; 48]> {
    ref_key(sha, 0, 0)..=ref_key(sha, u64::MAX, u64::MAX)
}

/// Creates the attachment tables (at open, so readers never meet a missing one).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(UPLOADS)?;
    txn.open_table(UPLOAD_INDEX)?;
    txn.open_table(BLOBS)?;
    txn.open_table(BLOB_OWNERS)?;
    txn.open_table(USER_BLOBS)?;
    txn.open_table(ATTACHMENT_REFS)?;
    Ok(())
}

/// The attachment tables, open in the writer's transaction.
pub(super) struct Tables<'t> {
    uploads: Table<'t, u64, &'static [u8]>,
    upload_index: Table<'t, [u8; 40], u64>,
    blobs: Table<'t, [u8; 32], &'static [u8]>,
    blob_owners: Table<'t, [u8; 40], ()>,
    user_blobs: Table<'t, [u8; 40], u64>,
    refs: Table<'t, [u8; 48], ()>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            uploads: txn.open_table(UPLOADS)?,
            upload_index: txn.open_table(UPLOAD_INDEX)?,
            blobs: txn.open_table(BLOBS)?,
            blob_owners: txn.open_table(BLOB_OWNERS)?,
            user_blobs: txn.open_table(USER_BLOBS)?,
            refs: txn.open_table(ATTACHMENT_REFS)?,
        })
    }
}

/// Whether `user` may read message `seq` of `conv` by their membership.
fn may_read(
    members: &impl ReadableTable<[u8; 16], &'static [u8]>,
    conv: u64,
    seq: u64,
    user: u64,
) -> Result<bool, StoreError> {
    Ok(match members.get(k16(conv, user))? {
        Some(v) => {
            let m: Membership = dec("members", v.value())?;
            // What the user deleted from their view is no longer theirs to fetch.
            m.first_visible() <= seq && m.until_seq.is_none_or(|until| seq <= until)
        }
        None => false,
    })
}

/// Whether `user` uploaded the file or can read a message that references it.
fn may_use(
    owners: &impl ReadableTable<[u8; 40], ()>,
    refs: &impl ReadableTable<[u8; 48], ()>,
    members: &impl ReadableTable<[u8; 16], &'static [u8]>,
    sha: &[u8; 32],
    user: u64,
) -> Result<bool, StoreError> {
    if owners.get(k40(sha, &user.to_be_bytes()))?.is_some() {
        return Ok(true);
    }
    for entry in refs.range(refs_of(sha))? {
        let (conv, seq) = split_ref(entry?.0.value());
        if may_read(members, conv, seq, user)? {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Store {
    /// An upload in progress.
    pub fn upload(&self, id: u64) -> Result<Option<UploadRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        match txn.open_table(UPLOADS)?.get(id)? {
            Some(v) => Ok(Some(dec("uploads", v.value())?)),
            None => Ok(None),
        }
    }

    /// Every upload in progress, for the garbage collection.
    pub fn uploads(&self) -> Result<Vec<(u64, UploadRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(UPLOADS)?.iter()? {
            let (k, v) = entry?;
            out.push((k.value(), dec("uploads", v.value())?));
        }
        Ok(out)
    }

    /// The size of a stored file, if the store knows it.
    pub fn blob_size(&self, sha: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        match txn.open_table(BLOBS)?.get(sha)? {
            Some(v) => Ok(Some(dec::<BlobRecord>("blobs", v.value())?.size)),
            None => Ok(None),
        }
    }

    /// The size of a file `user` may download: one they uploaded, or one a
    /// message they can read references. `None` for any other file, known or
    /// not, so that ids cannot be probed.
    pub fn downloadable(&self, user: u64, sha: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(size) = txn
            .open_table(BLOBS)?
            .get(sha)?
            .map(|v| dec::<BlobRecord>("blobs", v.value()))
            .transpose()?
            .map(|b| b.size)
        else {
            return Ok(None);
        };
        let allowed = may_use(
            &txn.open_table(BLOB_OWNERS)?,
            &txn.open_table(ATTACHMENT_REFS)?,
            &txn.open_table(MEMBERS)?,
            sha,
            user,
        )?;
        Ok(allowed.then_some(size))
    }

    /// Bytes of files `user` has stored (each distinct file once).
    pub fn attachment_usage(&self, user: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USER_BLOBS)?;
        let mut used = 0u64;
        for entry in table
            .range(k40(&user.to_be_bytes(), &[0; 32])..=k40(&user.to_be_bytes(), &[0xff; 32]))?
        {
            used = used.saturating_add(entry?.1.value());
        }
        Ok(used)
    }
}

impl Writer<'_, '_> {
    /// `upload_begin`: the user's upload of this file (resumed if it exists),
    /// or a new one if the quota allows.
    pub(super) fn upload_begin(
        &mut self,
        user: u64,
        size: u64,
        sha: &[u8; 32],
        quota: u64,
        now: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let index_key = k40(&user.to_be_bytes(), sha);
        if let Some(upload) = self.att.upload_index.get(index_key)?.map(|v| v.value()) {
            let rec: UploadRecord = match self.att.uploads.get(upload)? {
                Some(v) => dec("uploads", v.value())?,
                None => return Err(StoreError::Corrupt("upload_index")),
            };
            if rec.size != size {
                return reject(
                    ErrorCode::BadRequest,
                    format!(
                        "you have an upload of this SHA-256 with a size of {} bytes, not {size}",
                        rec.size
                    ),
                );
            }
            return Ok(WriteOutcome::Upload { upload });
        }
        let (lo, hi) = (
            k40(&user.to_be_bytes(), &[0; 32]),
            k40(&user.to_be_bytes(), &[0xff; 32]),
        );
        let mut used = 0u64;
        for entry in self.att.user_blobs.range(lo..=hi)? {
            used = used.saturating_add(entry?.1.value());
        }
        // Uploads in progress count too: many half-finished uploads must not
        // get round the quota.
        for entry in self.att.upload_index.range(lo..=hi)? {
            let id = entry?.1.value();
            if let Some(v) = self.att.uploads.get(id)? {
                used = used.saturating_add(dec::<UploadRecord>("uploads", v.value())?.size);
            }
        }
        let owned = self.att.user_blobs.get(index_key)?.is_some();
        let extra = if owned { 0 } else { size };
        if used.saturating_add(extra) > quota {
            return reject(
                ErrorCode::QuotaExceeded,
                format!(
                    "this file ({}) would take you over your attachment quota: {} of {} used",
                    human_size(size),
                    human_size(used),
                    human_size(quota)
                ),
            );
        }
        let upload = self.next_id("next_upload")?;
        let rec = UploadRecord {
            user,
            size,
            sha256: hex::encode(sha),
            created: now,
        };
        self.att.uploads.insert(upload, enc(&rec).as_slice())?;
        self.att.upload_index.insert(index_key, upload)?;
        Ok(WriteOutcome::Upload { upload })
    }

    /// The upload's bytes are verified and in the blob store: record the
    /// file and count it against its uploader's quota.
    pub(super) fn upload_done(
        &mut self,
        user: u64,
        upload: u64,
        now: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let rec: UploadRecord = match self.att.uploads.get(upload)? {
            Some(v) => dec("uploads", v.value())?,
            None => return reject(ErrorCode::NotFound, format!("no upload {upload}")),
        };
        if rec.user != user {
            return reject(ErrorCode::NotFound, format!("no upload {upload}"));
        }
        let sha = parse_sha256(&rec.sha256).ok_or(StoreError::Corrupt("uploads"))?;
        self.att.uploads.remove(upload)?;
        self.att
            .upload_index
            .remove(k40(&user.to_be_bytes(), &sha))?;
        // A new upload of a stored file restarts its unsent time: the
        // uploader is about to send it.
        let blob = BlobRecord {
            size: rec.size,
            created: now,
        };
        self.att.blobs.insert(sha, enc(&blob).as_slice())?;
        self.att
            .blob_owners
            .insert(k40(&sha, &user.to_be_bytes()), ())?;
        self.att
            .user_blobs
            .insert(k40(&user.to_be_bytes(), &sha), rec.size)?;
        Ok(WriteOutcome::Done)
    }

    /// Forgets an upload (its partial file is, or is about to be, deleted).
    pub(super) fn upload_abort(&mut self, upload: u64) -> Result<WriteOutcome, StoreError> {
        let rec = match self.att.uploads.remove(upload)? {
            Some(v) => dec::<UploadRecord>("uploads", v.value())?,
            None => return Ok(WriteOutcome::Done),
        };
        if let Some(sha) = parse_sha256(&rec.sha256) {
            self.att
                .upload_index
                .remove(k40(&rec.user.to_be_bytes(), &sha))?;
        }
        Ok(WriteOutcome::Done)
    }

    /// The attachment a `send` names, as the message will carry it: allowed
    /// when the sender uploaded the file or can read a message that has it.
    pub(super) fn attachment_for(
        &self,
        user: u64,
        r: &AttachmentRef,
    ) -> Result<Attachment, StoreError> {
        let unknown = || {
            reject(
                ErrorCode::NotFound,
                format!("no attachment {} that you can send", r.id),
            )
        };
        let Some(sha) = parse_sha256(&r.id) else {
            return unknown();
        };
        let Some(blob) = self.att.blobs.get(sha)? else {
            return unknown();
        };
        let blob: BlobRecord = dec("blobs", blob.value())?;
        if !may_use(
            &self.att.blob_owners,
            &self.att.refs,
            &self.members,
            &sha,
            user,
        )? {
            return unknown();
        }
        Ok(Attachment {
            id: hex::encode(sha),
            name: r.name.clone(),
            mime: r.mime.clone(),
            size: blob.size,
        })
    }

    /// Records that message `seq` of `conv` carries the file: members who can
    /// read that message may download it.
    pub(super) fn add_attachment_ref(
        &mut self,
        id: &str,
        conv: u64,
        seq: u64,
    ) -> Result<(), StoreError> {
        let sha = parse_sha256(id).ok_or(StoreError::Corrupt("messages"))?;
        self.att.refs.insert(ref_key(&sha, conv, seq), ())?;
        Ok(())
    }

    /// The deletion hook for recall (and anything else that removes a
    /// message's content): drops message `seq` of `conv`'s reference to the
    /// file `id`. When no message references the file any more, its record
    /// and every uploader's quota use of it go too, and the next garbage
    /// collection ([`crate::attachment::Attachments::collect_now`]) deletes the
    /// file. Unknown ids and missing references are not errors.
    pub fn release_attachment(&mut self, id: &str, conv: u64, seq: u64) -> Result<(), StoreError> {
        let Some(sha) = parse_sha256(id) else {
            return Ok(());
        };
        self.att.refs.remove(ref_key(&sha, conv, seq))?;
        if self.att.refs.range(refs_of(&sha))?.next().is_some() {
            return Ok(());
        }
        self.forget_blob(&sha)
    }

    /// `ExpireUnsent`: forgets the files last uploaded before `before` that
    /// no message carries. Checked and removed in one transaction, so a
    /// `send` naming such a file either commits first (and keeps it) or is
    /// refused `not_found`.
    pub(super) fn expire_unsent(&mut self, before: u64) -> Result<WriteOutcome, StoreError> {
        let mut old = Vec::new();
        for entry in self.att.blobs.iter()? {
            let (sha, v) = entry?;
            if dec::<BlobRecord>("blobs", v.value())?.created < before {
                old.push(sha.value());
            }
        }
        for sha in old {
            if self.att.refs.range(refs_of(&sha))?.next().is_none() {
                self.forget_blob(&sha)?;
            }
        }
        Ok(WriteOutcome::Done)
    }

    /// Removes a file's record, its owners and every uploader's quota use of it.
    fn forget_blob(&mut self, sha: &[u8; 32]) -> Result<(), StoreError> {
        self.att.blobs.remove(sha)?;
        let mut owners = Vec::new();
        for entry in self
            .att
            .blob_owners
            .range(k40(sha, &[0; 8])..=k40(sha, &[0xff; 8]))?
        {
            owners.push(entry?.0.value());
        }
        for key in owners {
            self.att.blob_owners.remove(key)?;
            self.att.user_blobs.remove(k40(&key[32..], sha))?;
        }
        Ok(())
    }
}

/// A size for people: bytes, KiB, MiB or GiB with one decimal.
pub fn human_size(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b < K {
        format!("{bytes} B")
    } else if b < K * K {
        format!("{:.1} KiB", b / K)
    } else if b < K * K * K {
        format!("{:.1} MiB", b / (K * K))
    } else {
        format!("{:.1} GiB", b / (K * K * K))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_parsing_and_keys() {
        let hex_digits = "ab".repeat(32);
        assert_eq!(parse_sha256(&hex_digits), Some([0xab; 32]));
        assert_eq!(parse_sha256(&hex_digits.to_uppercase()), Some([0xab; 32]));
        assert_eq!(parse_sha256("ab"), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
        let k = ref_key(&[7; 32], 3, 9);
        assert_eq!(split_ref(k), (3, 9));
        assert!(refs_of(&[7; 32]).contains(&k));
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn releasing_the_last_reference_forgets_the_file_and_its_quota_use() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("db"), 1 << 20).unwrap();
        let sha = [5u8; 32];
        let id = hex::encode(sha);
        let mut cache = super::super::MembersCache::default();
        let txn = store.db.begin_write().unwrap();
        {
            let mut w = Writer::open(&txn, &mut cache).unwrap();
            let WriteOutcome::Upload { upload } = w.upload_begin(1, 10, &sha, 100, 0).unwrap()
            else {
                panic!("no upload");
            };
            // Resuming finds the same upload; another size is refused.
            assert!(matches!(
                w.upload_begin(1, 10, &sha, 100, 0).unwrap(),
                WriteOutcome::Upload { upload: u } if u == upload
            ));
            assert!(w.upload_begin(1, 11, &sha, 100, 0).is_err());
            // Over the quota, counting the upload in progress.
            assert!(matches!(
                w.upload_begin(1, 95, &[6; 32], 100, 0),
                Err(StoreError::Rejected(ErrorCode::QuotaExceeded, _))
            ));
            w.upload_done(1, upload, 0).unwrap();
            w.add_attachment_ref(&id, 7, 1).unwrap();
            w.add_attachment_ref(&id, 7, 2).unwrap();
            w.release_attachment(&id, 7, 1).unwrap();
            assert!(w.att.blobs.get(sha).unwrap().is_some());
            w.release_attachment(&id, 7, 2).unwrap();
            w.release_attachment(&id, 7, 2).unwrap();
            w.release_attachment("not an id", 7, 2).unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(store.blob_size(&sha).unwrap(), None);
        assert_eq!(store.attachment_usage(1).unwrap(), 0);
        assert_eq!(store.downloadable(1, &sha).unwrap(), None);
    }
}
