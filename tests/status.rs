//! `admin status` over real QUIC reports the machine's throttling as the
//! server reads it from sysfs (`quince::status::throttling`); the parsing of
//! each kind of machine's sysfs is tested in `src/status.rs` with made-up trees.

mod common;

use common::TestServer;
use quince::protocol::Throttling;

/// The flags without the clock, which moves between two reads.
fn flags(t: Option<Throttling>) -> Option<Throttling> {
    t.map(|t| Throttling { cpu_mhz: None, ..t })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_carries_this_machines_throttling() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    let admin = server.admin().await;
    let status = admin.admin_status().await.unwrap();
    let here = quince::status::throttling("/sys");
    assert_eq!(
        status.throttling.is_some(),
        here.is_some(),
        "server: {:?}, here: {here:?}",
        status.throttling
    );
    assert_eq!(flags(status.throttling), flags(here));
}
