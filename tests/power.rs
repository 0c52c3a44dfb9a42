//! Power loss off the appliance: a real Network UPS Tools server (Debian's
//! upsd with the dummy-ups driver) and SIGPWR drive a real `quince serve`.
//! On battery the clients hear it; power back within the grace time changes
//! nothing else; low battery (or the end of the grace time) stops writes with
//! `shutting_down`, commits, and exits with status 3, and every acknowledged
//! message is there after a restart. (The same on the image, powering the
//! machine off: tests/image.rs.)
mod common;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nut::{UPS_NAME, Ups};
use common::*;
use quince::client::Client;
use quince::protocol::{ErrorCode, PowerNotice, PowerState, Target};
use tokio::sync::watch;

/// Exit status of `quince serve` after a power-loss shutdown.
const EXIT_POWER_OFF: i32 = quince::server::EXIT_POWER_OFF;

/// What a steady sender saw: acknowledged texts, and the error that stopped it.
#[derive(Default)]
struct Sent {
    acked: Vec<String>,
    refused: Option<ErrorCode>,
}

/// alice sends to bob every 20 ms until a send fails.
fn steady_sender(alice: Client) -> (Arc<Mutex<Sent>>, tokio::task::JoinHandle<()>) {
    let sent = Arc::new(Mutex::new(Sent::default()));
    let record = sent.clone();
    let task = tokio::spawn(async move {
        for i in 0.. {
            let text = format!("m{i}");
            match alice.send(Target::User("bob".into()), &text, None).await {
                Ok(_) => record.lock().unwrap().acked.push(text),
                Err(e) => {
                    record.lock().unwrap().refused = e.code();
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (sent, task)
}

async fn power_becomes(power: &mut watch::Receiver<PowerNotice>, state: PowerState) -> PowerNotice {
    tokio::time::timeout(
        Duration::from_secs(15),
        power.wait_for(|p| p.state == state),
    )
    .await
    .unwrap_or_else(|_| panic!("no {state:?} event within 15 s"))
    .expect("client alive")
    .clone()
}

/// Blocking UPS control, off the runtime's worker threads.
async fn ups_switch(ups: &Arc<Mutex<Ups>>, status: &'static str) {
    let ups = ups.clone();
    tokio::task::spawn_blocking(move || ups.lock().unwrap().switch(status))
        .await
        .unwrap();
}

/// Every acknowledged text is in bob's history after a restart, once and in order.
async fn all_acknowledged_are_stored(dir: &std::path::Path, acked: &[String]) {
    let server = TestServer::start(dir);
    let bob = server.connect().await;
    bob.login("bob", &password("bob"), "check").await.unwrap();
    let conv = bob.conversations().await.unwrap().conversations[0].conv;
    let stored = conversation_texts(&bob, conv).await;
    // The one in flight when writes stopped may or may not be stored, so
    // compare the acknowledged prefix.
    assert!(
        stored.len() >= acked.len() && stored[..acked.len()] == *acked,
        "acknowledged {} messages, stored {}",
        acked.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nut_on_battery_warns_power_back_cancels_low_battery_shuts_down() {
    let ups = tokio::task::spawn_blocking(|| Ups::start(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let ups = Arc::new(Mutex::new(ups));
    let addr = ups.lock().unwrap().addr;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Long enough for two NUT polls (2 s apart) after the test switches the
    // mains back, on a loaded machine.
    let grace = 10;
    let mut server = TestServer::start_configured(
        &dir,
        &format!(
            "[power]\nnut = \"{addr}\"\nnut_ups = \"{UPS_NAME}\"\ngrace_secs = {grace}\nsigpwr = false\n"
        ),
    );
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let _inbox = bob.subscribe().await.unwrap();
    let mut power = bob.power();
    let (sent, sender) = steady_sender(alice);

    // On battery: an event with the time left, and the server keeps serving.
    ups_switch(&ups, "OB DISCHRG").await;
    let notice = power_becomes(&mut power, PowerState::OnBattery).await;
    let left = notice.shutdown_in_secs.expect("time left while on battery");
    assert!((grace - 2..=grace).contains(&left), "{notice:?}");
    assert_eq!(
        admin.admin_status().await.unwrap().power.state,
        PowerState::OnBattery
    );
    // The mains returns within the grace time: an event, and nothing else.
    ups_switch(&ups, "OL CHRG").await;
    power_becomes(&mut power, PowerState::Online).await;
    assert_eq!(
        server.wait_exit(Duration::from_secs(grace + 3)),
        None,
        "the server stopped although the power came back"
    );
    let before = sent.lock().unwrap().acked.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sent.lock().unwrap().acked.len() > before, "sending stopped");

    // A device logging in while on battery hears it first thing.
    ups_switch(&ups, "OB DISCHRG").await;
    power_becomes(&mut power, PowerState::OnBattery).await;
    let carol = server.user(&admin, "carol").await;
    let _carol_inbox = carol.subscribe().await.unwrap();
    power_becomes(&mut carol.power(), PowerState::OnBattery).await;

    // Low battery: writes are refused with `shutting_down`, then it exits.
    ups_switch(&ups, "OB LB").await;
    let low = Instant::now();
    power_becomes(&mut power, PowerState::ShuttingDown).await;
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(20)))
        .expect("quince stopped after low battery");
    println!("low battery to exit: {:?}", low.elapsed());
    assert_eq!(status.code(), Some(EXIT_POWER_OFF), "{status}");
    sender.await.unwrap();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    assert_eq!(sent.refused, Some(ErrorCode::ShuttingDown));
    assert!(sent.acked.len() > 50, "{} acknowledged", sent.acked.len());
    all_acknowledged_are_stored(&dir, &sent.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigpwr_with_the_sysv_status_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let status_file = tmp.path().join("powerstatus");
    let grace = 3;
    let mut server = TestServer::start_configured(
        &dir,
        &format!(
            "[power]\nsigpwr_status_file = \"{}\"\ngrace_secs = {grace}\n",
            status_file.display()
        ),
    );
    let admin = server.admin().await;
    let alice = server.user(&admin, "alice").await;
    let bob = server.user(&admin, "bob").await;
    let _inbox = bob.subscribe().await.unwrap();
    let mut power = bob.power();
    let (sent, sender) = steady_sender(alice);

    // FAIL then OK within the grace time: two events, no shutdown.
    std::fs::write(&status_file, "FAIL\n").unwrap();
    server.signal("PWR");
    power_becomes(&mut power, PowerState::OnBattery).await;
    std::fs::write(&status_file, "OK\n").unwrap();
    server.signal("PWR");
    power_becomes(&mut power, PowerState::Online).await;
    assert_eq!(server.wait_exit(Duration::from_secs(grace + 2)), None);

    // SIGPWR with no status file means the power failed; the grace time runs out.
    std::fs::remove_file(&status_file).unwrap();
    server.signal("PWR");
    let failed = Instant::now();
    power_becomes(&mut power, PowerState::OnBattery).await;
    power_becomes(&mut power, PowerState::ShuttingDown).await;
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(20)))
        .expect("quince stopped after the grace time");
    let took = failed.elapsed();
    println!("SIGPWR to exit with a {grace} s grace time: {took:?}");
    assert!(took >= Duration::from_secs(grace), "{took:?}");
    assert_eq!(status.code(), Some(EXIT_POWER_OFF), "{status}");
    sender.await.unwrap();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    assert_eq!(sent.refused, Some(ErrorCode::ShuttingDown));
    all_acknowledged_are_stored(&dir, &sent.acked).await;
}

/// Neither an unreachable upsd nor a missing GPIO chip stops the server or
/// counts as a power loss (the grace time here is 0): each is logged once.
#[test]
fn unreachable_upsd_and_missing_gpio_chip_are_reported_once_and_the_server_runs() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = tmp.path().join("quince.toml");
    std::fs::write(
        &config,
        format!(
            "[power]\nnut = \"{closed}\"\ngpio_chip = \"{}\"\ngpio_line = 6\ngrace_secs = 0\n",
            tmp.path().join("gpiochip9").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quince"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "info"])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for upsd to be tried three times.
    std::thread::sleep(Duration::from_secs(6));
    assert!(child.try_wait().unwrap().is_none(), "the server stopped");
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(
        log.matches("cannot read the UPS status").count(),
        1,
        "{log}"
    );
    assert!(log.contains("Connection refused"), "{log}");
    assert_eq!(
        log.matches("cannot watch the GPIO power-loss line").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("power state changed"), "{log}");
}
