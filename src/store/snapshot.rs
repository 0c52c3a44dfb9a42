//! Consistent copies of the store while it serves, for backups.
//!
//! Copying the database file itself while the writer commits is not safe (a
//! copy can mix pages of two commits), and the server holds redb's file lock
//! anyway. Instead one read transaction — a frozen view of one commit, which
//! redb's MVCC keeps intact however long it is open — is copied table by table
//! into a new redb file. The writer never waits for it. Entries are copied in
//! batches of a few MiB, each its own (non-durable) transaction in the new
//! file, so a large store does not need its size in memory.

use std::path::Path;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    Value,
};

use super::{
    CONVS, CURSORS, DEVICE_TOKENS, DEVICES, DIRECT, EDITS, INVITES, LAST_SEEN, MEMBERS,
    MESSAGE_IDS, MESSAGES, META, READ_MARKERS, SCHEMA_VERSION, Store, StoreError, TEXT_ORDINALS,
    USER_CONVS, USER_DEVICES, USERNAMES, USERS,
};

/// Bytes of keys and values copied per transaction of the copy.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Page cache of the copy: it is only written, never read back.
const COPY_CACHE: usize = 8 * 1024 * 1024;

/// Something done to every table of the store.
trait TableVisitor {
    fn visit<K: Key + 'static, V: Value + 'static>(
        &mut self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<(), StoreError>;
}

/// Every table of the store, in one list: what is not here is not in a
/// backup. The test below checks it against the tables `Store::open` creates.
fn each_table(v: &mut impl TableVisitor) -> Result<(), StoreError> {
    v.visit(META)?;
    v.visit(USERS)?;
    v.visit(USERNAMES)?;
    v.visit(DEVICES)?;
    v.visit(DEVICE_TOKENS)?;
    v.visit(USER_DEVICES)?;
    v.visit(INVITES)?;
    v.visit(CONVS)?;
    v.visit(DIRECT)?;
    v.visit(MEMBERS)?;
    v.visit(USER_CONVS)?;
    v.visit(MESSAGES)?;
    v.visit(MESSAGE_IDS)?;
    v.visit(CURSORS)?;
    v.visit(READ_MARKERS)?;
    v.visit(TEXT_ORDINALS)?;
    v.visit(EDITS)?;
    v.visit(LAST_SEEN)?;
    v.visit(super::attachments::UPLOADS)?;
    v.visit(super::attachments::UPLOAD_INDEX)?;
    v.visit(super::attachments::BLOBS)?;
    v.visit(super::attachments::BLOB_OWNERS)?;
    v.visit(super::attachments::USER_BLOBS)?;
    v.visit(super::attachments::ATTACHMENT_REFS)?;
    Ok(())
}

/// What a snapshot copied.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// Entries copied, over all tables.
    pub entries: u64,
    /// Every attachment file recorded in the copy (its `blobs` table): the
    /// SHA-256 and size, in key order. Read in the copy's own transaction,
    /// so the database and this list agree (40 bytes a file in memory).
    pub blobs: Vec<([u8; 32], u64)>,
}

struct Copier<'a> {
    src: &'a ReadTransaction,
    dst: &'a Database,
    entries: u64,
}

impl TableVisitor for Copier<'_> {
    fn visit<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<(), StoreError> {
        let src = self.src.open_table(def)?;
        let mut rows = src.iter()?;
        loop {
            let mut txn = self.dst.begin_write()?;
            txn.set_durability(Durability::None)?;
            let mut finished = true;
            {
                // Opened even when empty, so the copy has every table.
                let mut table = txn.open_table(def)?;
                let mut bytes = 0;
                for row in rows.by_ref() {
                    let (k, v) = row?;
                    let (k, v) = (k.value(), v.value());
                    bytes += K::as_bytes(&k).as_ref().len() + V::as_bytes(&v).as_ref().len();
                    table.insert(k, v)?;
                    self.entries += 1;
                    if bytes >= BATCH_BYTES {
                        finished = false;
                        break;
                    }
                }
            }
            txn.commit()?;
            if finished {
                return Ok(());
            }
        }
    }
}

/// Opens every table in a read transaction: fails on the first one missing.
struct Checker<'a>(&'a ReadTransaction);

impl TableVisitor for Checker<'_> {
    fn visit<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<'static, K, V>,
    ) -> Result<(), StoreError> {
        self.0.open_table(def)?;
        Ok(())
    }
}

impl Store {
    /// Copies the store, as of one commit, into a new redb file at `dest`
    /// (which must not exist). Blocking: run it on a blocking thread. Writes
    /// go on meanwhile; they are simply not in the copy.
    pub fn snapshot(&self, dest: &Path) -> Result<SnapshotInfo, StoreError> {
        let txn = self.db.begin_read()?;
        // create_new: never write into a file that is already there.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| StoreError::Db(redb::StorageError::Io(e).into()))?;
        let out = Database::builder()
            .set_cache_size(COPY_CACHE)
            .create(dest)?;
        let mut copier = Copier {
            src: &txn,
            dst: &out,
            entries: 0,
        };
        each_table(&mut copier)?;
        let entries = copier.entries;
        // One durable commit makes every batch before it durable.
        let last = out.begin_write()?;
        last.commit()?;
        let blobs = super::attachments::blob_list(&txn)?;
        Ok(SnapshotInfo { entries, blobs })
    }
}

/// Checks that the redb file at `path` is a quince store this build can
/// open: every table is there and the schema version is not newer than
/// [`SCHEMA_VERSION`]. Returns the file's schema version. Blocking.
pub fn check_file(path: &Path) -> Result<u32, StoreError> {
    let db = Database::open(path)?;
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let version = match meta.get("schema_version")? {
        Some(v) => u32::from_be_bytes(
            v.value()
                .try_into()
                .map_err(|_| StoreError::Corrupt("meta"))?,
        ),
        None => return Err(StoreError::Corrupt("meta")),
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema(version));
    }
    each_table(&mut Checker(&txn))?;
    Ok(version)
}

/// Names of the tables in [`each_table`], for tests.
#[cfg(test)]
fn table_names() -> Vec<String> {
    use redb::TableHandle;
    struct Names(Vec<String>);
    impl TableVisitor for Names {
        fn visit<K: Key + 'static, V: Value + 'static>(
            &mut self,
            def: TableDefinition<'static, K, V>,
        ) -> Result<(), StoreError> {
            self.0.push(def.name().to_string());
            Ok(())
        }
    }
    let mut names = Names(Vec::new());
    each_table(&mut names).expect("naming cannot fail");
    names.0.sort();
    names.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableHandle;

    fn tables_of(path: &Path) -> Vec<String> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let mut names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        names.sort();
        names
    }

    /// A table that `Store::open` creates but the snapshot list forgets would
    /// silently be missing from every backup.
    #[test]
    fn the_table_list_is_every_table_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (store, writer) = Store::open(&path, 1 << 20).unwrap();
        let copy = dir.path().join("copy.redb");
        store.snapshot(&copy).unwrap();
        drop(store);
        writer.join();
        assert_eq!(table_names(), tables_of(&path));
        assert_eq!(tables_of(&copy), tables_of(&path));
        assert_eq!(check_file(&copy).unwrap(), SCHEMA_VERSION);
    }

    /// A table bigger than one batch arrives whole.
    #[test]
    fn big_tables_are_copied_whole_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("s.redb"), 1 << 20).unwrap();
        let value = vec![7u8; 4096];
        let rows = 3 * BATCH_BYTES / value.len() + 10;
        let txn = store.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(MESSAGES).unwrap();
            for i in 0..rows as u64 {
                t.insert(super::super::k16(1, i), value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        let copy = dir.path().join("copy.redb");
        let info = store.snapshot(&copy).unwrap();
        let db = Database::open(&copy).unwrap();
        let read = db.begin_read().unwrap();
        let t = read.open_table(MESSAGES).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&t).unwrap(), rows as u64);
        assert!(info.entries >= rows as u64);
        let last = t
            .get(super::super::k16(1, rows as u64 - 1))
            .unwrap()
            .unwrap();
        assert_eq!(last.value(), value.as_slice());
    }

    #[test]
    fn snapshot_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("s.redb"), 1 << 20).unwrap();
        let copy = dir.path().join("copy.redb");
        std::fs::write(&copy, b"keep me").unwrap();
        assert!(store.snapshot(&copy).is_err());
        assert_eq!(std::fs::read(&copy).unwrap(), b"keep me");
    }

    #[test]
    fn check_file_refuses_a_foreign_redb_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("something"))
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        assert!(check_file(&path).is_err());
    }
}
