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
//!   login), dropped once the user is announced offline, and invalidated when a
//!   membership that involves the user changes (`memberships_changed`);
//! - the event is encoded once and queued only for contacts that are online
//!   (one hash lookup each in the hub), never with a store read per contact;
//! - flapping is coalesced: contacts hear that a user went offline only after
//!   [`OFFLINE_GRACE`], so an app that reconnects (a restart, a network
//!   change) within it costs its contacts nothing.
//!
//! A contact list holds user ids only (8 bytes a contact: a 500-member group
//! with everyone online is 2 MB of lists). Names, needed only to answer
//! `presence`, are kept once per user in a map of their own; usernames never
//! change, so that map is never invalidated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::hub::Hub;
use crate::id_lists::IdLists;
use crate::protocol::{self, Event, PresenceInfo, PresenceList, PresenceState};
use crate::server::State;
use crate::store::{Store, StoreError};

/// How long a user whose last device disconnected has to come back before
/// their contacts are told they are offline.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(2);

/// No real device has this id: presence events go to every device of a contact.
const NO_DEVICE: u64 = u64::MAX;

/// One user's connections and when they last left.
#[derive(Default)]
struct UserPresence {
    /// Each logged-in connection (its hub id) and what it said it is.
    conns: Vec<(u64, PresenceState)>,
    /// When the last connection went away (ms since the epoch).
    last_seen: Option<u64>,
    /// The state contacts were last told.
    announced: PresenceState,
    /// Counts the times the user was left with no connection, so a delayed
    /// offline notice can tell whether the user came and went again since.
    departures: u64,
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

/// Everything the server knows about presence.
pub struct Presence {
    enabled: bool,
    users: Mutex<HashMap<u64, UserPresence>>,
    contacts: IdLists,
    /// Names of users that were someone's contact (for `presence` answers).
    names: Mutex<HashMap<u64, Arc<str>>>,
}

impl Presence {
    /// `enabled: false` (config `presence = false`) makes every method a no-op.
    pub fn new(enabled: bool) -> Presence {
        Presence {
            enabled,
            users: Mutex::default(),
            // One list per user whose presence is wanted: no bound needed.
            contacts: IdLists::new(usize::MAX),
            names: Mutex::default(),
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

    /// A connection logged out or went away. If it was the user's last, the
    /// departure's number, for [`Presence::settle`] after [`OFFLINE_GRACE`].
    fn disconnect(
        &self,
        store: &Store,
        hub: &Hub,
        user: u64,
        name: &str,
        conn: u64,
    ) -> Option<u64> {
        self.update(store, hub, user, name, |p| {
            p.conns.retain(|(c, _)| *c != conn);
            if p.conns.is_empty() {
                p.last_seen = Some(now_ms());
            }
        })
    }

    /// Tells the contacts that the user is offline, if they still are since
    /// departure number `departure`; their contact list is then dropped (lists
    /// are kept for connected users only, not for every user ever seen).
    fn settle(&self, store: &Store, hub: &Hub, user: u64, name: &str, departure: u64) {
        let contacts = self.contacts(store, user);
        let mut users = lock(&self.users);
        let Some(p) = users.get_mut(&user) else {
            return;
        };
        if p.departures != departure || p.state() != PresenceState::Offline {
            return;
        }
        self.contacts.forget(user);
        if p.announced == PresenceState::Offline {
            return;
        }
        p.announced = PresenceState::Offline;
        match contacts {
            Ok(contacts) => announce(hub, &contacts, p.info(name)),
            Err(e) => {
                tracing::warn!(user, error = %e, "cannot read contacts; presence change not sent")
            }
        }
    }

    /// Every contact of `user` with their presence, sorted by name.
    pub fn list(&self, store: &Store, user: u64) -> Result<PresenceList, StoreError> {
        let contacts = self.contacts(store, user)?;
        let named = self.names(store, &contacts)?;
        let users = lock(&self.users);
        let mut list: Vec<PresenceInfo> = named
            .iter()
            .map(|(id, name)| match users.get(id) {
                Some(p) => p.info(name),
                None => PresenceInfo {
                    user: name.to_string(),
                    state: PresenceState::Offline,
                    last_seen: None,
                },
            })
            .collect();
        drop(users);
        list.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(PresenceList { users: list })
    }

    /// The names of `ids`, reading from the store (once) only those not known yet.
    fn names(&self, store: &Store, ids: &[u64]) -> Result<Vec<(u64, Arc<str>)>, StoreError> {
        let missing: Vec<u64> = {
            let names = lock(&self.names);
            ids.iter()
                .copied()
                .filter(|id| !names.contains_key(id))
                .collect()
        };
        let read = if missing.is_empty() {
            Vec::new()
        } else {
            store.user_names(&missing)?
        };
        let mut names = lock(&self.names);
        for (id, name) in read {
            names.insert(id, name.into());
        }
        Ok(ids
            .iter()
            .filter_map(|id| names.get(id).map(|n| (*id, n.clone())))
            .collect())
    }

    /// Memberships of these users changed (a group was made, joined or left,
    /// a direct conversation started): their contact lists are rebuilt when
    /// next needed.
    pub fn memberships_changed(&self, users: &[u64]) {
        if !self.enabled {
            return;
        }
        self.contacts.invalidate(users);
    }

    /// Applies `change` to a user's connections and, if the user's aggregate
    /// state is no longer what their contacts were told, tells their online
    /// contacts; going offline is left to [`Presence::settle`] (returning the
    /// departure's number).
    fn update(
        &self,
        store: &Store,
        hub: &Hub,
        user: u64,
        name: &str,
        change: impl FnOnce(&mut UserPresence),
    ) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        // Fetched before the lock (it may read the store); almost always cached.
        let contacts = self.contacts(store, user);
        let mut users = lock(&self.users);
        let p = users.entry(user).or_default();
        let was = p.state();
        change(p);
        let now = p.state();
        if now == PresenceState::Offline {
            if was == PresenceState::Offline {
                return None;
            }
            p.departures += 1;
            return Some(p.departures);
        }
        if now == p.announced {
            return None;
        }
        p.announced = now;
        match contacts {
            // Queued while the lock is held, so one user's events keep their order.
            Ok(contacts) => announce(hub, &contacts, p.info(name)),
            Err(e) => {
                tracing::warn!(user, error = %e, "cannot read contacts; presence change not sent")
            }
        }
        None
    }

    /// The user's contact list, from the cache or built from the store.
    fn contacts(&self, store: &Store, user: u64) -> Result<Arc<[u64]>, StoreError> {
        self.contacts
            .get_or_load(user, || store.contacts(user), |_| true)
    }
}

/// A connection of `user` ended (logout, disconnect): updates their presence
/// and, if it was their last, tells their contacts after [`OFFLINE_GRACE`]
/// unless they are back by then.
pub fn disconnected(state: &Arc<State>, user: u64, name: &str, conn: u64) {
    let (store, hub) = (&state.store, &state.hub);
    let Some(departure) = state.presence.disconnect(store, hub, user, name, conn) else {
        return;
    };
    // A weak handle: a pending notice does not keep a stopping server alive.
    let (state, name) = (Arc::downgrade(state), name.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(OFFLINE_GRACE).await;
        if let Some(state) = state.upgrade() {
            let (store, hub) = (&state.store, &state.hub);
            state.presence.settle(store, hub, user, &name, departure);
        }
    });
}

/// Queues one `presence` event for every online device of `contacts`.
fn announce(hub: &Hub, contacts: &[u64], info: PresenceInfo) {
    let frame = Bytes::from(protocol::encode_event(&Event::Presence(info)));
    hub.deliver(contacts, NO_DEVICE, frame);
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
