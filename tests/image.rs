//! The appliance image, booted in QEMU: `make test-image` (part of `make test`)
//! builds it and runs these with `--ignored`.
//!
//! Everything here is the real thing: the disk image `make image` built, the
//! real kernel and init under QEMU (software emulation), the `quince` command
//! line on the host reaching the guest through QEMU's port forwarding, OpenSSH
//! against the guest's dropbear, mtools and e2fsck on the disk file.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::appliance::*;
use common::{conversation_texts, nut};

/// The board these tests boot (board/qemu-x86_64).
const BOARD: &str = "qemu-x86_64";

#[test]
#[ignore = "boots the appliance image in QEMU; run by `make test-image`"]
fn first_boot_chat_power_off_and_boot_again() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(keys.path());
    // The image is ~450 MiB; the "card" it is written to is 2 GiB.
    let disk = Disk::copy_of_image(BOARD, Some(2 << 30));
    let (_, data_size_before) = disk.partition("data");
    disk.write_boot_file("authorized_keys", &public);
    disk.write_boot_file(
        "quince.toml",
        "[system]\nhostname = \"chatbox\"\ntimezone = \"Europe/Berlin\"\n",
    );

    let mut vm = Vm::boot(&disk, &key, false);
    let up = vm.wait_console("listening on");
    println!("first boot to quince listening: {:.1} s", up.as_secs_f64());
    let rss = vm.ssh("grep VmRSS /proc/$(pidof quince)/status");
    println!("quince right after boot: {}", stdout(&rss).trim());
    let (fingerprint, invite) = welcome(&disk);
    let invite = invite.expect("an admin invite on first boot");

    // Register two users from the host through the forwarded QUIC port.
    let alice = User::new("alice");
    alice.register(&vm, &invite, &fingerprint);
    println!(
        "boot to the first accepted QUIC connection (registration): {:.1} s",
        vm.started.elapsed().as_secs_f64()
    );
    let bob_invite = alice.ok(&["admin", "invite"]);
    let bob = User::new("bob");
    bob.register(&vm, bob_invite.trim(), &fingerprint);
    alice.ok(&["send", "bob", "hello from the host"]);
    assert!(
        bob.ok(&["history", "alice"])
            .contains("hello from the host")
    );
    let after = vm.ssh("grep VmRSS /proc/$(pidof quince)/status");
    println!(
        "quince after boot and two registrations: {}",
        stdout(&after).trim()
    );

    // The first boot grew the data partition to the end of the 2 GiB disk.
    let (start, size) = disk.partition("data");
    assert!(
        size > data_size_before * 10,
        "data partition: {size} sectors"
    );
    assert!(
        (start + size) * 512 > (2 << 30) - (2 << 20),
        "ends at sector {}",
        start + size
    );
    let df = stdout(&vm.ssh("df -k /data | tail -1"));
    let kib: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(kib > 1_400_000, "the filesystem did not grow: {df}");

    // The settings from the boot partition apply (the clock is UTC+1 in November).
    let settings = vm.ssh("hostname; date -d @1795000000 +%Z");
    assert_eq!(stdout(&settings), "chatbox\nCET\n", "{settings:?}");

    // SSH with the key from the boot partition works; the root fs is read-only.
    let out = vm.ssh("touch /probe");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    for dir in ["/etc", "/usr/bin", "/boot"] {
        assert!(
            !vm.ssh(&format!("touch {dir}/probe")).status.success(),
            "{dir} is writable"
        );
    }
    assert!(
        vm.ssh("touch /data/probe && rm /data/probe")
            .status
            .success()
    );

    // Passwords are refused: the server offers public keys only.
    let out = run(vm
        .ssh_command()
        .args(["-v", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no"])
        .args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .arg("root@127.0.0.1")
        .arg("true"));
    assert!(!out.status.success(), "a login without a key succeeded");
    let log = String::from_utf8_lossy(&out.stderr);
    let offered = log
        .lines()
        .find(|l| l.contains("Authentications that can continue"))
        .unwrap_or_else(|| panic!("no auth methods in:\n{log}"));
    assert!(offered.trim_end().ends_with("publickey"), "{offered}");

    // The firewall: a listener on a port outside the ruleset answers inside
    // the guest but not from outside, until the ruleset is flushed.
    let listener = format!(
        "setsid nc -ll -p {CLOSED_PORT} -e echo open </dev/null >/dev/null 2>&1 & sleep 1; nc 127.0.0.1 {CLOSED_PORT} </dev/null"
    );
    let inside = vm.ssh(&listener);
    assert!(
        stdout(&inside).contains("open"),
        "listener in the guest: {inside:?}"
    );
    assert!(
        !banner(vm.closed_port).contains("open"),
        "port {CLOSED_PORT} is reachable through the firewall"
    );
    assert!(vm.ssh("nft flush ruleset").status.success());
    assert!(
        banner(vm.closed_port).contains("open"),
        "the check above cannot tell open from closed"
    );
    let reload = vm.ssh("nft -D quic_port=4433 -f /etc/nftables.conf && kill $(pidof nc)");
    assert!(reload.status.success(), "{reload:?}");

    // quince killed inside the guest is back within a second (guest clock,
    // polling every ~50 ms under emulation).
    let restart = vm.ssh(
        "old=$(pidof quince); kill -9 $old; start=$(cut -d' ' -f1 /proc/uptime); \
         for i in $(seq 100); do new=$(pidof quince); [ -n \"$new\" ] && [ \"$new\" != \"$old\" ] && break; usleep 20000; done; \
         end=$(cut -d' ' -f1 /proc/uptime); echo \"$old $new $start $end\"",
    );
    let fields: Vec<String> = stdout(&restart)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(fields.len(), 4, "{restart:?}");
    assert_ne!(fields[0], fields[1], "quince was not restarted");
    let took: f64 = fields[3].parse::<f64>().unwrap() - fields[2].parse::<f64>().unwrap();
    println!("quince running again {took:.2} s after SIGKILL");
    assert!(took <= 1.0, "quince came back after {took:.2} s");
    // And it serves: the client reconnects and the message is stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bob
        .quince(&["send", "alice", "after the restart"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "quince did not serve again after the restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Power button: quince stops cleanly and /data is unmounted clean.
    let ports = (vm.quic_port, vm.ssh_port, vm.closed_port);
    let console = vm.power_off();
    assert!(console.contains("SIGTERM received"), "{console}");
    assert!(console.contains("quince::server: stopped"), "{console}");
    let (clean, report) = disk.data_is_clean();
    assert!(clean, "e2fsck -fn after power-off:\n{report}");

    // Boot again, now with a static address (the one QEMU's network expects)
    // and a listen address this machine does not have: quince falls back to
    // the default server options, the history is intact, no new invite.
    disk.write_boot_file(
        "quince.toml",
        "listen = \"192.0.2.1:4433\"\n\
         [system.network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\n\
         gateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n",
    );
    let mut vm = Vm::boot_on(&disk, &key, false, ports);
    vm.wait_console("listening on");
    let (fingerprint_again, invite_again) = welcome(&disk);
    assert_eq!(
        fingerprint_again, fingerprint,
        "the certificate changed across a reboot"
    );
    assert_eq!(
        invite_again, None,
        "a second admin invite after the first account"
    );
    let history = bob.history_once_up("alice");
    assert!(history.contains("hello from the host"), "{history}");
    assert!(history.contains("after the restart"), "{history}");
    assert!(
        vm.console().contains("failed to start 3 times"),
        "{}",
        vm.console()
    );
    let status = disk.read_boot_file("quince-status.txt").unwrap();
    assert!(status.contains("eth0 (static): 10.0.2.15/24"), "{status}");
    assert!(status.contains("read without problems"), "{status}");
    assert_eq!(
        stdout(&vm.ssh("cat /etc/resolv.conf")),
        "nameserver 10.0.2.3\n"
    );
    vm.power_off();
    let (clean, report) = disk.data_is_clean();
    assert!(clean, "e2fsck -fn after the second power-off:\n{report}");
}

#[test]
#[ignore = "boots the appliance image in QEMU; run by `make test-image`"]
fn uefi_boot_with_invalid_settings_falls_back_to_dhcp() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(keys.path());
    let disk = Disk::copy_of_image(BOARD, None);
    disk.write_boot_file("authorized_keys", &public);
    // An address that cannot be: if the boot used it, QEMU's network (which
    // hands out 10.0.2.15 by DHCP) could not reach the guest.
    disk.write_boot_file(
        "quince.toml",
        "cert = \"/boot/missing.pem\"\nkey = \"/boot/missing.key\"\n\
         [system]\nhostname = \"chat box\"\n\
         [system.network]\nmode = \"static\"\naddress = \"192.168.7.300/24\"\n",
    );

    let mut vm = Vm::boot(&disk, &key, true);
    let up = vm.wait_console("listening on");
    println!(
        "UEFI boot (OVMF, systemd-boot, compressed kernel) to quince listening: {:.1} s",
        up.as_secs_f64()
    );
    let console = vm.console();
    assert!(
        console.contains("quince.toml: system.network:"),
        "{console}"
    );

    let status = disk
        .read_boot_file("quince-status.txt")
        .expect("quince-status.txt");
    assert!(
        status.contains("system.network") && status.contains("using DHCP"),
        "{status}"
    );
    assert!(status.contains("system.hostname"), "{status}");
    assert!(status.contains("eth0 (dhcp): 10.0.2.15/24"), "{status}");
    // A certificate that is not there: quince runs with the default server options.
    assert!(
        status.contains("server options in quince.toml do not work"),
        "{status}"
    );
    assert!(status.contains("missing.pem"), "{status}");

    // Reachable over QUIC (the DHCP address) and booted through UEFI.
    let (fingerprint, invite) = welcome(&disk);
    User::new("carol").register(&vm, &invite.expect("invite"), &fingerprint);
    let efi = vm.ssh("test -d /sys/firmware/efi && hostname");
    assert!(efi.status.success(), "not booted through UEFI: {efi:?}");
    assert_eq!(
        stdout(&efi).trim(),
        "quince",
        "the invalid host name was used"
    );
    vm.power_off();
}

#[test]
#[ignore = "boots the appliance image in QEMU; run by `make test-image`"]
fn watchdog_resets_a_frozen_quince_but_not_a_clean_stop() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(keys.path());
    let disk = Disk::copy_of_image(BOARD, None);
    disk.write_boot_file("authorized_keys", &public);
    disk.write_boot_file("quince.toml", "watchdog_timeout_secs = 5\n");
    // The firmware's banner starts every boot, the first and each reset.
    let boots = |vm: &Vm| vm.console().matches("SeaBIOS (version").count();

    let mut vm = Vm::boot(&disk, &key, false);
    vm.wait_console("listening on");
    assert!(vm.console().contains("watchdog armed"), "{}", vm.console());
    let (fingerprint, invite) = welcome(&disk);
    let dave = User::new("dave");
    dave.register(&vm, &invite.expect("invite"), &fingerprint);
    let erin = User::new("erin");
    erin.register(&vm, dave.ok(&["admin", "invite"]).trim(), &fingerprint);
    assert_eq!(boots(&vm), 1);

    // A clean stop disarms the watchdog: quince-service starts quince again,
    // and more than twice the timeout later the machine has not been reset.
    let mark = vm.console().len();
    assert!(vm.ssh("kill -TERM $(pidof quince)").status.success());
    vm.wait_console_from(mark, "watchdog disarmed");
    vm.wait_console_from(mark, "watchdog armed");
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        boots(&vm),
        1,
        "a clean stop reset the machine:\n{}",
        vm.console()
    );

    // A frozen quince stops petting it: the hardware resets the machine, which
    // comes back serving with the acknowledged message.
    dave.ok(&["send", "erin", "acknowledged before the freeze"]);
    let mark = vm.console().len();
    let frozen = Instant::now();
    assert!(vm.ssh("kill -STOP $(pidof quince)").status.success());
    while boots(&vm) < 2 {
        assert!(
            frozen.elapsed() < Duration::from_secs(90),
            "no reset 90 s after freezing quince:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "watchdog reset {:.1} s after quince froze (timeout 5 s)",
        frozen.elapsed().as_secs_f64()
    );
    vm.wait_console_from(mark, "listening on");
    println!(
        "serving again {:.1} s after quince froze",
        frozen.elapsed().as_secs_f64()
    );
    let history = erin.history_once_up("dave");
    assert!(
        history.contains("acknowledged before the freeze"),
        "{history}"
    );
    vm.power_off();
    let (clean, report) = disk.data_is_clean();
    assert!(
        clean,
        "e2fsck -fn after the reset and a power-off:\n{report}"
    );
}

#[test]
#[ignore = "needs nft (make image-deps installs it); run by `make test-image`"]
fn firewall_ruleset_passes_nft_check() {
    // `nft -c` runs the ruleset through the kernel without committing it; a
    // new user and network namespace gives it a kernel table of its own.
    let check = |defines: &[&str]| {
        run(Command::new("unshare")
            .args(["-rn", "nft", "-c"])
            .args(defines)
            .args(["-f", "overlay/etc/nftables.conf"]))
    };
    let out = check(&["-D", "quic_port=4433"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The port comes from the boot: without it the ruleset must not load.
    let out = check(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("quic_port"));
}

/// Power cuts under load: QEMU is killed (SIGKILL, no shutdown of any kind)
/// at a random moment while a client sends, then booted again, many times.
/// After every boot each acknowledged message is there exactly once, in the
/// order it was sent, and nothing unacknowledged is there half-written.
/// `make test` makes 3 cuts; `make soak` makes 50 (QUINCE_POWER_CUTS).
#[test]
#[ignore = "boots the appliance image in QEMU; run by `make test-image` and `make soak`"]
fn power_cuts_lose_no_acknowledged_message() {
    use quince::client::{Client, Trust};
    use quince::protocol::{Body, Target};
    use std::sync::{Arc, Mutex};

    let cuts: usize = std::env::var("QUINCE_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = ssh_key(keys.path());
    let disk = Disk::copy_of_image(BOARD, Some(1 << 30));
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut vm = Vm::boot(&disk, &key, false);
    vm.wait_console("listening on");
    let ports = (vm.quic_port, vm.ssh_port, vm.closed_port);
    let (fingerprint, invite) = welcome(&disk);
    let addr: std::net::SocketAddr = vm.server().parse().unwrap();
    let connect = || Client::connect(addr, Trust::Pinned(fingerprint.clone()));
    let token = runtime.block_on(async {
        let admin = connect().await.unwrap();
        let session = admin
            .register(
                &invite.expect("invite"),
                "alice",
                "alice-password-1234",
                "soak",
            )
            .await
            .unwrap();
        let bob_invite = admin
            .admin_invite(quince::protocol::Role::Member, None)
            .await
            .unwrap();
        connect()
            .await
            .unwrap()
            .register(&bob_invite.token, "bob", "bob-password-1234", "soak")
            .await
            .unwrap();
        session.token.expect("token")
    });

    // Message numbers acknowledged so far, and the one in flight (if any).
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let in_flight: Arc<Mutex<Option<u64>>> = Arc::default();
    let mut next = 0u64;
    let mut conv = None;
    for cut in 1..=cuts {
        let sent_before = acked.lock().unwrap().len();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sender = {
            let (acked, in_flight, token) = (acked.clone(), in_flight.clone(), token.clone());
            let client = runtime.block_on(connect()).expect("connect");
            runtime.block_on(client.resume(&token)).expect("resume");
            runtime.spawn(async move {
                // One at a time, so the order they were sent in is the order
                // they must be stored in.
                let mut conv = conv;
                loop {
                    next += 1;
                    *in_flight.lock().unwrap() = Some(next);
                    let text = format!("message {next}");
                    let send = client.send(Target::User("bob".into()), &text, None);
                    tokio::select! {
                        _ = &mut stop_rx => return (next, conv),
                        result = send => match result {
                            Ok(ack) => {
                                acked.lock().unwrap().push(next);
                                *in_flight.lock().unwrap() = None;
                                conv = Some(ack.conv);
                            }
                            // The connection died with the power.
                            Err(_) => return (next, conv),
                        },
                    }
                }
            })
        };
        // A random moment while it sends.
        let delay = Duration::from_millis(rand::random_range(1000..4000));
        std::thread::sleep(delay);
        vm.child.kill().unwrap(); // SIGKILL: the power is gone.
        let _ = vm.child.wait();
        let _ = stop_tx.send(());
        (next, conv) = runtime.block_on(sender).unwrap();
        let acked_now = acked.lock().unwrap().clone();
        let maybe = *in_flight.lock().unwrap();
        drop(vm);

        vm = Vm::boot_on(&disk, &key, false, ports);
        vm.wait_console("listening on");
        let console = vm.console();
        // quince's log line: "... checked and repaired it repair_ms=N file_bytes=M".
        let field = |line: &str, key: &str| -> String {
            line.split(key)
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_string()
        };
        let repair = console
            .lines()
            .find(|l| l.contains("not closed cleanly"))
            .map(|l| {
                format!(
                    "{} ms for a {}-byte file",
                    field(l, "repair_ms="),
                    field(l, "file_bytes=")
                )
            });
        println!(
            "cut {cut}: {} acknowledged this round ({} in all), cut after {delay:?}; redb repair: {}",
            acked_now.len() - sent_before,
            acked_now.len(),
            repair.as_deref().unwrap_or("not needed")
        );

        // Read the conversation back and check it against what was acknowledged.
        let stored: Vec<u64> = runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let client = loop {
                match connect().await {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "no server after the cut: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            client.resume(&token).await.expect("resume after the cut");
            let Some(conv) = conv else { return Vec::new() };
            let mut stored = Vec::new();
            let mut after = 0;
            loop {
                let page = client.history(conv, Some(after), None, 500).await.unwrap();
                for m in &page.messages {
                    let Body::Text { text, .. } = &m.body else {
                        continue;
                    };
                    let n: u64 = text
                        .strip_prefix("message ")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("a damaged message: {text:?}"));
                    stored.push(n);
                    after = m.seq;
                }
                if !page.more {
                    break;
                }
            }
            client.close().await;
            stored
        });
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "stored out of order or twice: {stored:?}"
        );
        for n in &acked_now {
            assert!(
                stored.contains(n),
                "acknowledged message {n} lost in cut {cut}"
            );
        }
        for n in &stored {
            assert!(
                acked_now.contains(n) || Some(*n) == maybe,
                "message {n} stored but never sent"
            );
        }
        // A message stored but not acknowledged (the cut came between the
        // commit and the reply) counts as delivered from now on.
        if let Some(n) = maybe.filter(|n| stored.contains(n)) {
            acked.lock().unwrap().push(n);
        }
    }
    vm.power_off();
    let (clean, report) = disk.data_is_clean();
    assert!(
        clean,
        "e2fsck -fn after {cuts} power cuts and a power-off:\n{report}"
    );
}

/// A 64 MiB FAT USB stick labelled QUINCE-BAK (the appliance mounts it at
/// /media/backup), and the QEMU arguments that plug it in.
fn backup_stick(dir: &Path) -> (PathBuf, Vec<String>) {
    let stick = dir.join("stick.img");
    let out = run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "QUINCE-BAK"])
        .arg(&stick)
        .arg("65536"));
    assert!(out.status.success(), "{out:?}");
    let args = [
        "-device".to_string(),
        "qemu-xhci".into(),
        "-drive".into(),
        format!("if=none,id=stick,format=raw,file={}", stick.display()),
        "-device".into(),
        "usb-storage,drive=stick".into(),
    ];
    (stick, args.to_vec())
}

/// The scheduled backups on the stick, oldest first.
fn stick_backups(stick: &Path) -> Vec<String> {
    let listing = run(Command::new("mdir").args(["-b", "-i"]).arg(stick).arg("::"));
    let mut backups: Vec<String> = stdout(&listing)
        .lines()
        .map(|l| l.trim().trim_start_matches("::/").to_string())
        .filter(|name| name.starts_with("quince-") && name.ends_with(".qbk"))
        .collect();
    backups.sort();
    backups
}

/// Restores `name` from the stick on the host (`quince restore`), serves it,
/// checks that it has the appliance's certificate, and returns the texts of
/// `user`'s first conversation.
fn restored_texts(
    stick: &Path,
    name: &str,
    work: &Path,
    fingerprint: &str,
    (user, password): (&str, &str),
) -> Vec<String> {
    let file = work.join(name);
    let out = run(Command::new("mcopy")
        .arg("-i")
        .arg(stick)
        .arg(format!("::/{name}"))
        .arg(&file));
    assert!(out.status.success(), "{out:?}");
    let restored = work.join("restored");
    let out = run(Command::new(env!("CARGO_BIN_EXE_quince"))
        .args(["restore", "--data-dir"])
        .arg(&restored)
        .arg(&file));
    assert!(out.status.success(), "{out:?}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_quince"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&restored)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let (mut addr, mut served_fingerprint) = (None, None);
    for line in lines {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            addr = rest.split_whitespace().next().map(|a| a.to_string());
        }
        if let Some(fp) = line.strip_prefix("certificate fingerprint (SHA-256): ") {
            served_fingerprint = Some(fp.trim().to_string());
            break;
        }
    }
    assert_eq!(served_fingerprint.as_deref(), Some(fingerprint));
    let messages = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let addr = addr.expect("listening").parse().unwrap();
        let trust = quince::client::Trust::Pinned(fingerprint.to_string());
        let client = quince::client::Client::connect(addr, trust).await.unwrap();
        client.login(user, password, "restored").await.unwrap();
        let conv = client.conversations().await.unwrap().conversations[0].conv;
        conversation_texts(&client, conv).await
    });
    let _ = server.kill();
    let _ = server.wait();
    messages
}

/// The UPS says the battery is low, or SIGPWR says the power failed: quince
/// refuses writes, stops, and the appliance powers itself off cleanly; every
/// acknowledged message is there at the next boot. The UPS is a real Network
/// UPS Tools server (upsd with dummy-ups) on the host, which the guest
/// reaches at QEMU's host address 10.0.2.2.
#[test]
#[ignore = "boots the appliance image in QEMU; run by `make test-image`"]
fn ups_low_battery_and_sigpwr_power_the_appliance_off() {
    use quince::client::{Client, Trust};
    use quince::protocol::{ErrorCode, PowerState, Target};

    let grace = 5;
    let mut ups = nut::Ups::start(std::net::Ipv4Addr::LOCALHOST);
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(keys.path());
    let disk = Disk::copy_of_image(BOARD, None);
    disk.write_boot_file("authorized_keys", &public);
    disk.write_boot_file(
        "quince.toml",
        &format!(
            "[power]\nnut = \"10.0.2.2:{}\"\nnut_ups = \"{}\"\ngrace_secs = {grace}\n\
             gpio_chip = \"/dev/gpiochip0\"\ngpio_line = 0\ngpio_power_lost = \"high\"\n\
             [backup]\ndir = \"/media/backup\"\ninterval_hours = 0.001\nkeep = 2\n",
            ups.addr.port(),
            nut::UPS_NAME
        ),
    );
    // Scheduled backups every 3.6 s onto a USB stick, the newest 2 kept.
    let (stick, plug_in) = backup_stick(disk.dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ports = (free_port(), free_port(), free_port());
    let mut vm = Vm::boot_with(&disk, &key, false, ports, &plug_in);
    vm.wait_console("listening on");
    vm.wait_console("watching the UPS");
    vm.wait_console("(vfat) mounted at /media/backup");
    let (fingerprint, invite) = welcome(&disk);
    let addr: std::net::SocketAddr = vm.server().parse().unwrap();
    let connect = || Client::connect(addr, Trust::Pinned(fingerprint.clone()));
    let (alice, bob) = runtime.block_on(async {
        let alice = connect().await.unwrap();
        alice
            .register(
                &invite.expect("invite"),
                "alice",
                "alice-password-1234",
                "t",
            )
            .await
            .unwrap();
        let bob_invite = alice
            .admin_invite(quince::protocol::Role::Member, None)
            .await
            .unwrap();
        let bob = connect().await.unwrap();
        let session = bob
            .register(&bob_invite.token, "bob", "bob-password-1234", "t")
            .await
            .unwrap();
        (alice, session.token.expect("token"))
    });

    // alice sends to bob until a send is refused; returns (acknowledged, refusal).
    let sender = |alice: Client, phase: &'static str| {
        runtime.spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let text = format!("{phase} {i}");
                match alice.send(Target::User("bob".into()), &text, None).await {
                    Ok(_) => acked.push(text),
                    Err(e) => return (acked, e.code()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            unreachable!()
        })
    };
    // bob's view of the whole conversation, once the server answers.
    let stored = |bob_token: &str| -> Vec<String> {
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let bob = loop {
                match connect().await {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "no server: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            bob.resume(bob_token).await.unwrap();
            let conv = bob.conversations().await.unwrap().conversations[0].conv;
            conversation_texts(&bob, conv).await
        })
    };
    let wait_power_off = |vm: &mut Vm, what: &str| -> Duration {
        let since = Instant::now();
        loop {
            if let Some(status) = vm.child.try_wait().unwrap() {
                assert!(status.success(), "QEMU: {status}");
                return since.elapsed();
            }
            assert!(
                since.elapsed() < Duration::from_secs(90),
                "no power-off 90 s after {what}:\n{}",
                vm.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // 1. NUT: on battery, then back within the grace time: events, no shutdown.
    let watcher = runtime.block_on(async {
        let c = connect().await.unwrap();
        c.resume(&bob).await.unwrap();
        let inbox = c.subscribe().await.unwrap();
        (c, inbox)
    });
    let mut power = watcher.0.power();
    let wait_power = |power: &mut tokio::sync::watch::Receiver<_>, state: PowerState| {
        runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                power.wait_for(|p: &quince::protocol::PowerNotice| p.state == state),
            )
            .await
            .unwrap_or_else(|_| panic!("no {state:?} event"))
            .unwrap()
            .clone()
        })
    };
    let sending = sender(alice, "ups");
    ups.switch("OB DISCHRG");
    let notice = wait_power(&mut power, PowerState::OnBattery);
    assert!(
        notice.shutdown_in_secs.is_some_and(|s| s <= grace),
        "{notice:?}"
    );
    ups.switch("OL");
    wait_power(&mut power, PowerState::Online);
    std::thread::sleep(Duration::from_secs(grace + 3));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "the appliance powered off although the power came back"
    );

    // Low battery: writes refused, quince stops, the machine powers off.
    ups.switch("OB LB");
    let took = wait_power_off(&mut vm, "low battery");
    println!(
        "UPS low battery to power-off: {:.1} s (upsd poll 2 s)",
        took.as_secs_f64()
    );
    let console = vm.console();
    assert!(console.contains("stopped for a power loss"), "{console}");
    assert!(console.contains("reboot: Power down"), "{console}");
    let (acked, refusal) = runtime.block_on(sending).unwrap();
    assert_eq!(refusal, Some(ErrorCode::ShuttingDown));
    assert!(acked.len() > 20, "{} acknowledged", acked.len());
    let (clean, report) = disk.data_is_clean();
    assert!(clean, "e2fsck -fn after the UPS power-off:\n{report}");
    drop(vm);

    // 2. Power back; the next boot has every acknowledged message. Then SIGPWR
    // (SysV style: "FAIL" in /run/powerstatus) and the grace time runs out.
    ups.switch("OL");
    let mut vm = Vm::boot_with(&disk, &key, false, ports, &plug_in);
    vm.wait_console("listening on");
    let texts = stored(&bob);
    assert_eq!(
        texts[..acked.len()],
        acked[..],
        "lost after the UPS power-off"
    );
    let alice = runtime.block_on(async {
        let c = connect().await.unwrap();
        c.login("alice", "alice-password-1234", "t2").await.unwrap();
        c
    });
    let sending = sender(alice, "sigpwr");
    std::thread::sleep(Duration::from_secs(1));
    let out = vm.ssh("echo FAIL > /run/powerstatus && kill -PWR $(pidof quince)");
    assert!(out.status.success(), "{out:?}");
    let took = wait_power_off(&mut vm, "SIGPWR");
    println!(
        "SIGPWR to power-off with a {grace} s grace time: {:.1} s",
        took.as_secs_f64()
    );
    assert!(took >= Duration::from_secs(grace), "{took:?}");
    let (acked2, refusal) = runtime.block_on(sending).unwrap();
    assert_eq!(refusal, Some(ErrorCode::ShuttingDown));
    let (clean, report) = disk.data_is_clean();
    assert!(clean, "e2fsck -fn after the SIGPWR power-off:\n{report}");
    drop(vm);

    let mut vm = Vm::boot_with(&disk, &key, false, ports, &plug_in);
    vm.wait_console("listening on");
    let texts = stored(&bob);
    for text in acked.iter().chain(&acked2) {
        assert_eq!(
            texts.iter().filter(|t| *t == text).count(),
            1,
            "{text} not stored exactly once"
        );
    }

    // 3. A GPIO power-loss line: the test chip (tests/gpio-test-chip, one
    // input line set through a module parameter) appears after boot, so it
    // gets the permissions rcS gives the chips present at boot; quince, which
    // has been retrying the missing chip, picks it up.
    assert!(
        vm.console()
            .contains("cannot watch the GPIO power-loss line"),
        "{}",
        vm.console()
    );
    let module = std::fs::read(gpio_test_chip()).unwrap();
    let mut load = vm
        .ssh_command()
        .args(["-o", "BatchMode=yes", "-i"])
        .arg(&vm.key)
        .arg("root@127.0.0.1")
        .arg(
            "cat > /tmp/chip.ko && insmod /tmp/chip.ko && \
             chgrp quince /dev/gpiochip0 && chmod 0660 /dev/gpiochip0",
        )
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&module).unwrap();
    assert!(load.wait().unwrap().success(), "loading the GPIO test chip");
    let mark = vm.console().len();
    vm.wait_console_from(mark, "watching the GPIO power-loss line");
    let level = |vm: &Vm, v: u8| {
        let out = vm.ssh(&format!(
            "echo {v} > /sys/module/gpio_test_chip/parameters/level"
        ));
        assert!(out.status.success(), "{out:?}");
    };
    // High (power lost), then low again within the grace time: nothing happens.
    level(&vm, 1);
    vm.wait_console_from(mark, "from=Online to=OnBattery");
    level(&vm, 0);
    vm.wait_console_from(mark, "from=OnBattery to=Online");
    std::thread::sleep(Duration::from_secs(grace + 2));
    assert!(vm.child.try_wait().unwrap().is_none(), "powered off anyway");
    level(&vm, 1);
    let took = wait_power_off(&mut vm, "the GPIO line went high");
    println!(
        "GPIO power-loss line to power-off with a {grace} s grace time: {:.1} s",
        took.as_secs_f64()
    );
    assert!(took >= Duration::from_secs(grace), "{took:?}");
    let (clean, report) = disk.data_is_clean();
    assert!(clean, "e2fsck -fn after the GPIO power-off:\n{report}");

    // The stick holds the newest 2 scheduled backups; the newest, made in the
    // third boot, restores on the host with the appliance's certificate and
    // every message acknowledged in the first two.
    let backups = stick_backups(&stick);
    assert_eq!(backups.len(), 2, "{backups:?}");
    let texts = restored_texts(
        &stick,
        &backups[1],
        disk.dir.path(),
        &fingerprint,
        ("bob", "bob-password-1234"),
    );
    for text in acked.iter().chain(&acked2) {
        assert!(texts.contains(text), "{text} is not in the backup");
    }
}

/// The GPIO test chip module `make test-image` builds.
fn gpio_test_chip() -> PathBuf {
    let path = std::env::var_os("QUINCE_GPIO_TEST_CHIP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/gpio-test-chip/gpio-test-chip.ko"));
    assert!(
        path.exists(),
        "no {}: run `make target/gpio-test-chip/gpio-test-chip.ko` (make test-image does)",
        path.display()
    );
    path
}
