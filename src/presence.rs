//! Presence: who among a user's contacts is online, away or offline.
//!
//! A user's *contacts* are the people who share an active membership of a
//! conversation with them (a direct conversation, or a group neither has
//! left). Presence is ephemeral: states live in memory only and start empty
//! (everyone offline) when the server starts. The one thing stored is each
//! user's `last_seen`, so "last seen" survives a restart.
//!
//! # States
//! Each logged-in connection is `online` from login until it says `away` with
//! `set_presence` (and `online` again when it is back in use). A user is
//! `online` when any connected device is online, `away` when every connected
//! device said away, and `offline` when none is connected. `last_seen` is when
//! the user's last device disconnected. It is written to the store when the
//! user is settled offline (after [`OFFLINE_GRACE`], so a reconnecting app
//! costs no write), before contacts are told, and, for users still connected
//! (as the time of the shutdown) or within the grace, when the server shuts
//! down; after a power cut, a user who was connected keeps the time recorded
//! before. It is absent for users never seen.
//!
//! # New contacts
//! When a membership change makes users contacts (a direct conversation's
//! first message, a group created, a member added), the server *introduces*
//! them instead of leaving every client to ask `presence` again: each user
//! who joined and is online or away is announced to the conversation's other
//! members, and each other member who is online or away to those who joined.
//! `offline` is never sent: it is what a client assumes of a contact it has
//! heard nothing about. Removals and leaves make no new contacts and send
//! nothing. Someone who already was a contact through another conversation
//! may be introduced again; the event repeats what they were told.
//!
//! An introduction carries the state the user's contacts were last told
//! (`announced`), not the live one, so new and old contacts stay in step
//! during [`OFFLINE_GRACE`]: a user whose last device has just left is still
//! `online` to their contacts, so a new contact is told `online` too, and
//! all of them hear `offline` together once the grace ends (or nothing, if
//! the user is back in time). A change made while a membership changes
//! cannot leave a new contact with an older state: changes and introductions
//! are queued under one lock, and a change whose contact list was read before
//! an invalidation reads it again under that lock (see `contacts_and_users`).
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
//!   change) within it costs its contacts nothing;
//! - an introduction encodes one event per user involved who is online or
//!   away, and is skipped (clients ask `presence`) when the users who joined
//!   times the members exceed [`MAX_INTRODUCTION_PAIRS`] or the conversation
//!   has more than [`MAX_INTRODUCTION_MEMBERS`] members: a 500-member group
//!   created in one request would otherwise queue 250 000 events, and one
//!   user added to a large group would get an event per member, enough to
//!   overflow their device's event queue.
//!
//! A contact list holds user ids only (8 bytes a contact: a 500-member group
//! with everyone online is 2 MB of lists). Names, needed only to answer
//! `presence`, are kept once per user in a map of their own; usernames never
//! change, so that map is never invalidated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::hub::{self, Hub};
use crate::id_lists::IdLists;
use crate::protocol::{self, Event, PresenceInfo, PresenceList, PresenceState};
use crate::server::State;
use crate::store::{Store, StoreError, WriteOp};

/// How long a user whose last device disconnected has to come back before
/// their contacts are told they are offline.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(2);

/// A membership change whose users who joined times members (all of them,
/// old and new) exceed this introduces nobody, and clients ask `presence`
/// (one request each) instead: the events of a group created at once grow
/// with the square of its size. A group created with up to 64 members is
/// introduced; so is one member added to any group within
/// [`MAX_INTRODUCTION_MEMBERS`].
pub const MAX_INTRODUCTION_PAIRS: usize = 4096;

/// A membership change in a conversation with more members than this
/// introduces nobody: one user added would be sent an event per member, and
/// a quarter of a device's event queue is as much as one request may fill
/// (a device whose queue is full is disconnected).
pub const MAX_INTRODUCTION_MEMBERS: usize = hub::EVENT_QUEUE / 4;

/// No real device has this id: presence events go to every device of a contact.
const NO_DEVICE: u64 = u64::MAX;

/// One user's connections and when they last left.
#[derive(Default)]
struct UserPresence {
    /// The username, for introductions (which start from a user id).
    name: String,
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

/// Presence of the users seen since the server started, by user id.
type Users = HashMap<u64, UserPresence>;

/// Everything the server knows about presence.
pub struct Presence {
    enabled: bool,
    users: Mutex<Users>,
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

    /// When the user left, if they are still offline since departure number
    /// `departure`.
    fn left_at(&self, user: u64, departure: u64) -> Option<u64> {
        let users = lock(&self.users);
        let p = users.get(&user)?;
        (p.departures == departure && p.state() == PresenceState::Offline)
            .then_some(p.last_seen)
            .flatten()
    }

    /// Tells the contacts that the user is offline, if they still are since
    /// departure number `departure`; their contact list is then dropped (lists
    /// are kept for connected users only, not for every user ever seen).
    fn settle(&self, store: &Store, hub: &Hub, user: u64, name: &str, departure: u64) {
        let (contacts, mut users) = self.contacts_and_users(store, user);
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

    /// Every user seen since the server started, with when they were last
    /// seen (`now` for those still connected), to write at shutdown. Times
    /// already recorded are written again: simpler than tracking which are,
    /// and it is one commit.
    fn last_seen_at_shutdown(&self, now: u64) -> Vec<(u64, u64)> {
        lock(&self.users)
            .iter()
            .filter_map(|(&user, p)| match p.state() {
                PresenceState::Offline => p.last_seen.map(|at| (user, at)),
                _ => Some((user, now)),
            })
            .collect()
    }

    /// Every contact of `user` with their presence, sorted by name.
    pub fn list(&self, store: &Store, user: u64) -> Result<PresenceList, StoreError> {
        let contacts = self.contacts(store, user)?;
        let named = self.names(store, &contacts)?;
        // Read for every contact, before the lock: the answer is then one
        // consistent view of memory, which wins for anyone seen since start.
        let recorded: HashMap<u64, u64> = store.last_seen(&contacts)?.into_iter().collect();
        let users = lock(&self.users);
        let mut list: Vec<PresenceInfo> = named
            .iter()
            .map(|(id, name)| match users.get(id) {
                Some(p) => p.info(name),
                None => PresenceInfo {
                    user: name.to_string(),
                    state: PresenceState::Offline,
                    last_seen: recorded.get(id).copied(),
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

    /// A committed membership change (a group made, joined or left, a direct
    /// conversation started): the contact lists of `members` (everyone whose
    /// contacts changed) are rebuilt when next needed, and `joined` (those of
    /// them who just became members) are introduced to the others, and the
    /// others to them, within the limits (see the module docs).
    pub fn memberships_changed(&self, hub: &Hub, members: &[u64], joined: &[u64]) {
        if !self.enabled {
            return;
        }
        // Before the introductions: a change racing them then reads the new list.
        self.contacts.invalidate(members);
        if !worth_introducing(joined.len(), members.len()) {
            return;
        }
        // Queued while the lock is held, like changes, so they keep their order.
        let users = lock(&self.users);
        for &user in joined {
            if let Some(frame) = introduction(&users, user) {
                let others: Vec<u64> = members.iter().copied().filter(|&m| m != user).collect();
                hub.deliver(&others, NO_DEVICE, frame);
            }
        }
        for &user in members.iter().filter(|m| !joined.contains(m)) {
            if let Some(frame) = introduction(&users, user) {
                hub.deliver(joined, NO_DEVICE, frame);
            }
        }
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
        let (contacts, mut users) = self.contacts_and_users(store, user);
        let p = users.entry(user).or_default();
        if p.name.is_empty() {
            p.name = name.to_string();
        }
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

    /// The user's contact list and the lock on every user's presence, the
    /// list current for as long as the lock is held. The list is read before
    /// the lock (it may read the store; it is almost always cached). If a
    /// membership changed meanwhile, that change's introductions may already
    /// have told a new contact the user's state; a change announced to the
    /// older list would then never reach them, so the list is read again,
    /// under the lock, which the introductions of any later change wait for.
    fn contacts_and_users(
        &self,
        store: &Store,
        user: u64,
    ) -> (Result<Arc<[u64]>, StoreError>, MutexGuard<'_, Users>) {
        let generation = self.contacts.generation();
        let contacts = self.contacts(store, user);
        let users = lock(&self.users);
        if self.contacts.generation() == generation {
            return (contacts, users);
        }
        (self.contacts(store, user), users)
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
        let Some(state) = state.upgrade() else {
            return;
        };
        let Some(left) = state.presence.left_at(user, departure) else {
            return;
        };
        // Recorded first, so once contacts hear "offline" the time is durable.
        // If the user is back meanwhile, it still is when they last left.
        let (store, hub) = (&state.store, &state.hub);
        record(store, vec![(user, left)]).await;
        state.presence.settle(store, hub, user, &name, departure);
    });
}

/// Records when every user seen since the server started was last seen (a
/// shutdown disconnects everyone, too late for [`OFFLINE_GRACE`] to end).
/// Called once the connections are closed, before the store is.
pub async fn shutting_down(state: &State) {
    if !state.presence.enabled() {
        return;
    }
    let seen = state.presence.last_seen_at_shutdown(now_ms());
    if !seen.is_empty() {
        record(&state.store, seen).await;
    }
}

async fn record(store: &Store, seen: Vec<(u64, u64)>) {
    match store.write(WriteOp::LastSeen { seen }).await {
        Ok(_) | Err(StoreError::Closed) => {}
        Err(e) => tracing::warn!(error = %e, "cannot record when users were last seen"),
    }
}

/// Whether a change by which `joined` users joined a conversation of
/// `members` members (those who joined included) is small enough for them
/// to be introduced (see [`MAX_INTRODUCTION_PAIRS`], [`MAX_INTRODUCTION_MEMBERS`]).
fn worth_introducing(joined: usize, members: usize) -> bool {
    joined > 0
        && members <= MAX_INTRODUCTION_MEMBERS
        && joined.saturating_mul(members) <= MAX_INTRODUCTION_PAIRS
}

/// The event that introduces `user` to new contacts: the state their
/// contacts were last told, unless that is `offline` (or nothing was).
fn introduction(users: &Users, user: u64) -> Option<Bytes> {
    let p = users.get(&user)?;
    if p.announced == PresenceState::Offline {
        return None;
    }
    let info = PresenceInfo {
        user: p.name.clone(),
        state: p.announced,
        last_seen: None,
    };
    Some(Bytes::from(protocol::encode_event(&Event::Presence(info))))
}

/// Queues one `presence` event for every online device of `contacts`.
fn announce(hub: &Hub, contacts: &[u64], info: PresenceInfo) {
    let frame = Bytes::from(protocol::encode_event(&Event::Presence(info)));
    hub.deliver(contacts, NO_DEVICE, frame);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    fn introductions_stay_within_the_limits() {
        // A direct conversation; groups created with 64 and 65 members.
        assert!(worth_introducing(2, 2));
        assert!(worth_introducing(64, 64));
        assert!(!worth_introducing(65, 65));
        assert!(!worth_introducing(500, 500));
        // One member added to groups of 128 and 129 (after the addition).
        assert!(worth_introducing(1, 128));
        assert!(!worth_introducing(1, 129));
        // A removal or a leave: nobody joined.
        assert!(!worth_introducing(0, 10));
    }

    #[test]
    fn introductions_tell_the_announced_state_and_never_offline() {
        let mut users = Users::new();
        assert_eq!(introduction(&users, 1), None);
        let p = users.entry(1).or_default();
        p.name = "dave".into();
        p.conns.push((7, PresenceState::Away));
        // Connected, but nothing announced yet: not introduced.
        assert_eq!(introduction(&users, 1), None);
        let p = users.entry(1).or_default();
        p.announced = PresenceState::Away;
        let away = Event::Presence(PresenceInfo {
            user: "dave".into(),
            state: PresenceState::Away,
            last_seen: None,
        });
        let frame = introduction(&users, 1).expect("introduced");
        assert_eq!(&frame[..], &protocol::encode_event(&away)[..]);
        // Gone, within the grace: still introduced as what contacts were told.
        let p = users.entry(1).or_default();
        p.conns.clear();
        p.last_seen = Some(5);
        let frame = introduction(&users, 1).expect("introduced within the grace");
        assert_eq!(&frame[..], &protocol::encode_event(&away)[..]);
        // Announced offline: not introduced.
        users.entry(1).or_default().announced = PresenceState::Offline;
        assert_eq!(introduction(&users, 1), None);
    }

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
