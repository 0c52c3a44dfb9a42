//! Lists of user ids read from the store and kept in memory: a user's
//! contacts (presence), a conversation's members (typing).
//!
//! Both are read often and change rarely, so each list is read once and kept
//! until a membership change invalidates it. A list being read while an
//! invalidation happens may come from the older snapshot of the store: a
//! generation counter, bumped by every invalidation, tells the reader to
//! hand that list out once but not keep it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::StoreError;

/// A cache of id lists by key, at most `max` of them (beyond, it starts over).
pub struct IdLists {
    max: usize,
    inner: Mutex<Lists>,
}

#[derive(Default)]
struct Lists {
    lists: HashMap<u64, Arc<[u64]>>,
    generation: u64,
}

impl IdLists {
    pub fn new(max: usize) -> IdLists {
        IdLists {
            max,
            inner: Mutex::default(),
        }
    }

    /// The list for `key`, from the cache or from `load`. A loaded list is
    /// kept only if `keep` accepts it and no invalidation came meanwhile.
    pub fn get_or_load(
        &self,
        key: u64,
        load: impl FnOnce() -> Result<Vec<u64>, StoreError>,
        keep: impl FnOnce(&[u64]) -> bool,
    ) -> Result<Arc<[u64]>, StoreError> {
        let generation = {
            let inner = self.lock();
            if let Some(list) = inner.lists.get(&key) {
                return Ok(list.clone());
            }
            inner.generation
        };
        let list: Arc<[u64]> = load()?.into();
        let mut inner = self.lock();
        if inner.generation == generation && keep(&list) {
            if inner.lists.len() >= self.max {
                inner.lists.clear();
            }
            inner.lists.insert(key, list.clone());
        }
        Ok(list)
    }

    /// Bumped by every invalidation: a list handed out while it had another
    /// value may miss a membership change that came since.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The lists of `keys` are out of date (a membership changed).
    pub fn invalidate(&self, keys: &[u64]) {
        let mut inner = self.lock();
        inner.generation += 1;
        for key in keys {
            inner.lists.remove(key);
        }
    }

    /// Drops a list that is still right but no longer needed.
    pub fn forget(&self, key: u64) {
        self.lock().lists.remove(&key);
    }

    fn lock(&self) -> MutexGuard<'_, Lists> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_kept_until_invalidated_and_a_racing_read_is_not_kept() {
        let lists = IdLists::new(10);
        let a = lists.get_or_load(1, || Ok(vec![2, 3]), |_| true).unwrap();
        // Kept: the loader is not called again.
        let again = lists.get_or_load(1, || panic!("read again"), |_| true);
        assert_eq!(again.unwrap(), a);
        let before = lists.generation();
        lists.invalidate(&[1]);
        assert_ne!(lists.generation(), before);
        // A read that an invalidation overtakes is answered but not kept.
        let raced = lists.get_or_load(
            1,
            || {
                lists.invalidate(&[7]);
                Ok(vec![2])
            },
            |_| true,
        );
        assert_eq!(&*raced.unwrap(), &[2]);
        let fresh = lists.get_or_load(1, || Ok(vec![2, 4]), |_| true).unwrap();
        assert_eq!(&*fresh, &[2, 4]);
        // `keep` can refuse a list.
        lists
            .get_or_load(5, || Ok(vec![]), |l| !l.is_empty())
            .unwrap();
        let reread = lists.get_or_load(5, || Ok(vec![9]), |_| true).unwrap();
        assert_eq!(&*reread, &[9]);
    }
}
