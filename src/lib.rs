//! quince: a private instant-messaging server for small hardware, and its client.
//!
//! - [`protocol`]: frames, requests, responses and events on the wire.
//! - [`store`]: the redb database with group commit.
//! - [`server`] and [`connection`]: the daemon.
//! - [`hub`]: online devices and event fan-out.
//! - [`presence`] and [`typing`]: ephemeral presence and typing indicators.
//! - [`stream`]: reading and writing frames on QUIC streams, batched.
//! - [`client`]: the async client library apps embed.
//! - [`backup`]: backup files, restore, and scheduled backups.
//! - [`attachment`]: attachment files: uploads, the blob store, garbage collection.
//! - [`system`]: the appliance's settings from the boot partition's `quince.toml`.
pub mod attachment;
pub mod auth;
pub mod backup;
pub mod client;
pub mod config;
pub mod connection;
pub mod hub;
pub mod id_lists;
pub mod power;
pub mod presence;
pub mod protocol;
pub mod server;
pub mod status;
pub mod store;
pub mod stream;
pub mod system;
pub mod tls;
pub mod typing;
pub mod udp;
pub mod watchdog;
