//! The hub: which devices are online, and pushing events to them.
//!
//! Each logged-in connection registers a bounded queue of encoded event frames.
//! A committed message is encoded once and the same bytes are queued for every
//! recipient device, so a 500-member group costs one encode. A device whose
//! queue is full is disconnected (it will reconnect and sync from the store)
//! rather than letting its backlog grow the server's memory.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::close;

/// Events queued per device before it counts as too slow.
pub const EVENT_QUEUE: usize = 512;

struct Online {
    conn_id: u64,
    device: u64,
    events: mpsc::Sender<Bytes>,
    conn: quinn::Connection,
}

/// Registry of online devices by user.
#[derive(Default)]
pub struct Hub {
    users: RwLock<HashMap<u64, Vec<Online>>>,
    next_conn: AtomicU64,
}

impl Hub {
    /// Adds a logged-in connection; the receiver yields its event frames,
    /// starting with `first` (news the device needs now, such as "on battery").
    pub fn register(
        &self,
        user: u64,
        device: u64,
        conn: quinn::Connection,
        first: Option<Bytes>,
    ) -> (u64, mpsc::Receiver<Bytes>) {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        if let Some(frame) = first {
            let _ = tx.try_send(frame);
        }
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        users.entry(user).or_default().push(Online {
            conn_id,
            device,
            events: tx,
            conn,
        });
        (conn_id, rx)
    }

    pub fn unregister(&self, user: u64, conn_id: u64) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = users.get_mut(&user) {
            list.retain(|o| o.conn_id != conn_id);
            if list.is_empty() {
                users.remove(&user);
            }
        }
    }

    /// Queues `frame` for every online device of `recipients` except `skip_device`.
    pub fn deliver(&self, recipients: &[u64], skip_device: u64, frame: Bytes) {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        for user in recipients {
            let Some(list) = users.get(user) else {
                continue;
            };
            for online in list.iter().filter(|o| o.device != skip_device) {
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    online.events.try_send(frame.clone())
                {
                    tracing::info!(
                        device = online.device,
                        "device reads its events too slowly; disconnecting it"
                    );
                    online.conn.close(
                        close::SLOW_CONSUMER.into(),
                        b"too slow reading events; reconnect and sync",
                    );
                }
            }
        }
    }

    /// Queues `frame` for every online device (server-wide news such as a
    /// power loss). A device with a full queue simply misses it: it is
    /// being disconnected for reading too slowly anyway.
    pub fn broadcast(&self, frame: Bytes) {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        for online in users.values().flatten() {
            let _ = online.events.try_send(frame.clone());
        }
    }

    /// Closes every connection of a user (account disabled, password reset).
    pub fn close_user(&self, user: u64, code: u32, reason: &str) {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        for online in users.get(&user).into_iter().flatten() {
            online.conn.close(code.into(), reason.as_bytes());
        }
    }

    /// Closes the connections of one device, on `skip` excepted (logout elsewhere).
    pub fn close_device(&self, user: u64, device: u64, skip_conn: u64, code: u32, reason: &str) {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        for online in users.get(&user).into_iter().flatten() {
            if online.device == device && online.conn_id != skip_conn {
                online.conn.close(code.into(), reason.as_bytes());
            }
        }
    }
}
