//! Typing indicators: "alice is typing" in one conversation.
//!
//! Nothing is stored: a `typing` request is checked (the typer must be an
//! active member of the conversation) and passed on as a `typing` event to the
//! other members' online devices, never to the typer's own devices.
//!
//! Typing is the chattiest thing a client sends, so it must stay cheap:
//! - the members of a conversation are kept in memory once someone has typed
//!   in it (invalidated when its membership changes), so a notice costs no
//!   store read, only one hash lookup per member in the hub;
//! - a connection repeating the same notice (same conversation, same
//!   `active`) within [`REPEAT_WINDOW`] is answered but not passed on, so a
//!   client that sends one per keystroke costs no more than one that follows
//!   the protocol (refresh every ~3 s; receivers expire a notice after ~6 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::hub::Hub;
use crate::id_lists::IdLists;
use crate::protocol::{self, ErrorCode, Event, TypingNotice};
use crate::store::{Store, StoreError};

/// Repeats of the same notice from a connection within this are dropped.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);
/// Conversations whose member lists are kept; past this the cache starts over.
const MAX_CACHED_CONVS: usize = 4096;

/// Passes typing notices on.
pub struct Typing {
    enabled: bool,
    /// Active members of conversations someone typed in.
    members: IdLists,
    /// Per connection (hub id): the last notice passed on for each conversation.
    recent: Mutex<HashMap<u64, Recent>>,
}

/// One connection's recent notices: (conversation, active, when passed on).
type Recent = Vec<(u64, bool, Instant)>;

/// What became of a typing notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// Queued for the other members' online devices.
    Sent,
    /// A repeat within [`REPEAT_WINDOW`]: dropped.
    Repeat,
}

impl Typing {
    /// `enabled: false` (config `typing = false`): the caller refuses `typing`.
    pub fn new(enabled: bool) -> Typing {
        Typing {
            enabled,
            members: IdLists::new(MAX_CACHED_CONVS),
            recent: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Checks that `user` is an active member of `conv` and passes the notice
    /// on; `Forbidden` if they are not.
    #[allow(clippy::too_many_arguments)]
    pub fn notify(
        &self,
        store: &Store,
        hub: &Hub,
        user: u64,
        name: &str,
        conn: u64,
        conv: u64,
        active: bool,
    ) -> Result<Passed, StoreError> {
        let members = self.members(store, conv)?;
        if !members.contains(&user) {
            return Err(StoreError::Rejected(
                ErrorCode::Forbidden,
                format!("you are not a member of conversation {conv}"),
            ));
        }
        if self.is_repeat(conn, conv, active) {
            return Ok(Passed::Repeat);
        }
        let others: Vec<u64> = members.iter().copied().filter(|m| *m != user).collect();
        let notice = TypingNotice {
            conv,
            user: name.to_string(),
            active,
        };
        let frame = Bytes::from(protocol::encode_event(&Event::Typing(notice)));
        hub.deliver(&others, u64::MAX, frame);
        Ok(Passed::Sent)
    }

    /// The membership of `conv` changed: read its members again when needed.
    pub fn members_changed(&self, conv: u64) {
        self.members.invalidate(&[conv]);
    }

    /// A connection ended: forget its recent notices.
    pub fn forget(&self, conn: u64) {
        lock(&self.recent).remove(&conn);
    }

    /// True if this connection passed on the same notice for `conv` within
    /// [`REPEAT_WINDOW`]; otherwise records this one.
    fn is_repeat(&self, conn: u64, conv: u64, active: bool) -> bool {
        let now = Instant::now();
        let mut recent = lock(&self.recent);
        let list = recent.entry(conn).or_default();
        list.retain(|(_, _, at)| now.duration_since(*at) < REPEAT_WINDOW);
        match list.iter_mut().find(|(c, _, _)| *c == conv) {
            Some((_, was, _)) if *was == active => true,
            Some(entry) => {
                *entry = (conv, active, now);
                false
            }
            None => {
                list.push((conv, active, now));
                false
            }
        }
    }

    fn members(&self, store: &Store, conv: u64) -> Result<Arc<[u64]>, StoreError> {
        // An empty list is a conversation that does not exist (yet): not
        // kept, so probing ids cannot fill the cache or hide a new group.
        self.members.get_or_load(
            conv,
            || store.active_member_ids(conv),
            |list| !list.is_empty(),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
