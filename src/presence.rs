//! Presence: who among a user's contacts is online, away or offline.
//!
//! A user's *contacts* are the people who share an active membership of a
//! conversation with them (a direct conversation, or a group neither has
//! left). Presence is ephemeral: it lives in memory only, is never written to
//! the store, and starts empty when the server starts.
//!
//! # States
//! Each logged-in connection is `online` from login until it says `away` with
//! `set_presence` (and `online` again when it is back in use). A user is
//! `online` when any connected device is online, `away` when every connected
//! device said away, and `offline` when none is connected. `last_seen` is when
//! the user's last device disconnected; it is kept in memory, so for users not
//! seen since the server started it is unknown (absent).
//!
//! # Cost
//! Presence servers are known CPU sinks on small boards when every change is
//! matched against every user's subscriptions (users × contacts per change).
//! Here a change costs O(that user's contacts) hash lookups and nothing else:
//! - an event goes out only when the user's *aggregate* state changes (a
//!   second device logging in, or one of two devices going away, sends nothing);
//! - the recipients are the user's contact list, kept in memory: built from the
//!   store once, in one read transaction, when first needed (normally at
//!   login), dropped when the user goes offline, and invalidated when a
//!   membership that involves the user changes (`memberships_changed`);
//! - the event is encoded once and queued only for contacts that are online
//!   (one hash lookup each in the hub), never with a store read per contact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::hub::Hub;
use crate::protocol::{self, Event, PresenceInfo, PresenceList, PresenceState};
use crate::store::{Store, StoreError};

/// No real device has this id: presence events go to every device of a contact.
const NO_DEVICE: u64 = u64::MAX;

/// A user's contacts, ids and names side by side, so fan-out needs no copy.
struct Contacts {
    ids: Vec<u64>,
    names: Vec<String>,
}

/// One user's connections and when they last left.
#[derive(Default)]
struct UserPresence {
    /// Each logged-in connection (its hub id) and what it said it is.
    conns: Vec<(u64, PresenceState)>,
    /// When the last connection went away (ms since the epoch).
    last_seen: Option<u64>,
}

impl UserPresence {
    fn state(&self) -> PresenceState {
        if self.conns.is_empty() {
            PresenceState::Offline
        } else if self.conns.iter().any(|(_, s)| *s == PresenceState::Online) {
            PresenceState::Online
        } else {
            PresenceState::Away
        }
    }

    fn info(&self, user: &str) -> PresenceInfo {
        let state = self.state();
        PresenceInfo {
            user: user.to_string(),
            state,
            last_seen: self.last_seen.filter(|_| state == PresenceState::Offline),
        }
    }
}

/// Cached contact lists, and a counter that tells a list built from an older
/// snapshot of the store (while a membership changed) not to be cached.
#[derive(Default)]
struct ContactCache {
    lists: HashMap<u64, Arc<Contacts>>,
    generation: u64,
}

/// Everything the server knows about presence.
pub struct Presence {
    enabled: bool,
    users: Mutex<HashMap<u64, UserPresence>>,
    contacts: Mutex<ContactCache>,
}

impl Presence {
    /// `enabled: false` (config `presence = false`) makes every method a no-op.
    pub fn new(enabled: bool) -> Presence {
        Presence {
            enabled,
            users: Mutex::default(),
            contacts: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A connection logged in: it starts `online`.
    pub fn connect(&self, store: &Store, hub: &Hub, user: u64, name: &str, conn: u64) {
        self.update(store, hub, user, name, |p| {
            p.conns.push((conn, PresenceState::Online))
        });
    }

    /// A connection said it is `online` or `away` (`offline` is refused earlier).
    pub fn set(
        &self,
        store: &Store,
        hub: &Hub,
        user: u64,
        name: &str,
        conn: u64,
        state: PresenceState,
    ) {
        self.update(store, hub, user, name, |p| {
            if let Some(entry) = p.conns.iter_mut().find(|(c, _)| *c == conn) {
                entry.1 = state;
            }
        });
    }

    /// A connection logged out or went away.
    pub fn disconnect(&self, store: &Store, hub: &Hub, user: u64, name: &str, conn: u64) {
        self.update(store, hub, user, name, |p| {
            p.conns.retain(|(c, _)| *c != conn);
            if p.conns.is_empty() {
                p.last_seen = Some(now_ms());
            }
        });
    }

    /// Every contact of `user` with their presence, by name.
    pub fn list(&self, store: &Store, user: u64) -> Result<PresenceList, StoreError> {
        let contacts = self.contacts(store, user)?;
        let users = lock(&self.users);
        let list = contacts
            .ids
            .iter()
            .zip(&contacts.names)
            .map(|(id, name)| match users.get(id) {
                Some(p) => p.info(name),
                None => PresenceInfo {
                    user: name.clone(),
                    state: PresenceState::Offline,
                    last_seen: None,
                },
            })
            .collect();
        Ok(PresenceList { users: list })
    }

    /// Memberships of these users changed (a group was made, joined or left,
    /// a direct conversation started): their contact lists are rebuilt when
    /// next needed.
    pub fn memberships_changed(&self, users: &[u64]) {
        if !self.enabled {
            return;
        }
        let mut cache = lock(&self.contacts);
        cache.generation += 1;
        for user in users {
            cache.lists.remove(user);
        }
    }

    /// Applies `change` to a user's connections and, if the user's aggregate
    /// state changed, tells their online contacts.
    fn update(
        &self,
        store: &Store,
        hub: &Hub,
        user: u64,
        name: &str,
        change: impl FnOnce(&mut UserPresence),
    ) {
        if !self.enabled {
            return;
        }
        // Fetched before the lock (it may read the store); almost always cached.
        let contacts = match self.contacts(store, user) {
            Ok(contacts) => Some(contacts),
            Err(e) => {
                tracing::warn!(user, error = %e, "cannot read contacts; presence change not sent");
                None
            }
        };
        let mut users = lock(&self.users);
        let p = users.entry(user).or_default();
        let before = p.state();
        change(p);
        let after = p.state();
        if after == PresenceState::Offline {
            // Kept only while the user is connected: a list per user ever seen
            // would grow with the user base rather than with who is online.
            lock(&self.contacts).lists.remove(&user);
        }
        if before == after {
            return;
        }
        let Some(contacts) = contacts else { return };
        let frame = Bytes::from(protocol::encode_event(&Event::Presence(p.info(name))));
        // Queued while the lock is held, so one user's events keep their order.
        hub.deliver(&contacts.ids, NO_DEVICE, frame);
    }

    /// The user's contact list, from the cache or built from the store.
    fn contacts(&self, store: &Store, user: u64) -> Result<Arc<Contacts>, StoreError> {
        let generation = {
            let cache = lock(&self.contacts);
            if let Some(list) = cache.lists.get(&user) {
                return Ok(list.clone());
            }
            cache.generation
        };
        let (ids, names) = store.contacts(user)?.into_iter().unzip();
        let list = Arc::new(Contacts { ids, names });
        let mut cache = lock(&self.contacts);
        if cache.generation == generation {
            cache.lists.insert(user, list.clone());
        }
        Ok(list)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_state_follows_the_devices() {
        let mut p = UserPresence::default();
        assert_eq!(p.state(), PresenceState::Offline);
        p.conns.push((1, PresenceState::Online));
        p.conns.push((2, PresenceState::Away));
        assert_eq!(p.state(), PresenceState::Online);
        p.conns[0].1 = PresenceState::Away;
        assert_eq!(p.state(), PresenceState::Away);
        p.conns.clear();
        p.last_seen = Some(7);
        assert_eq!(p.info("bob").last_seen, Some(7));
        p.conns.push((3, PresenceState::Online));
        assert_eq!(p.info("bob").last_seen, None);
    }
}
