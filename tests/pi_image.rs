//! The Raspberry Pi images (`make image BOARD=rpi4`, `BOARD=rpi5`), tested on
//! a machine without a Pi: `make test-pi` (part of `make test`) builds them and
//! runs these with `--ignored`.
//!
//! - the SD card layout and the FAT partition the Pi's firmware reads;
//! - the arm64 `quince` serving and chatting under QEMU's user-mode emulator;
//! - the Pi 4 image's kernel, initramfs, root and data partitions booted in
//!   QEMU's generic arm64 machine (`virt`; QEMU cannot run the Pi's GPU
//!   firmware), with the same QUIC chat from the host as on x86.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::appliance::*;

/// The arm64 `quince` the Pi images carry (`make appliance-binary BOARD=rpi4`).
fn arm64_quince() -> PathBuf {
    let path = std::env::var_os("QUINCE_ARM64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("target/debian-rust/aarch64-unknown-linux-gnu/appliance/quince")
        });
    assert!(
        path.exists(),
        "no arm64 quince at {}: run `make image BOARD=rpi4`",
        path.display()
    );
    path
}

/// Names of the files in the top folder of the image's boot partition.
fn boot_files(disk: &Disk) -> Vec<String> {
    let out = run(Command::new("mdir")
        .args(["-b", "-i"])
        .arg(disk.boot())
        .arg("::/"));
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
        .lines()
        .map(|l| {
            l.trim_start_matches("::/")
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// Settings lines of a config.txt, without comments and blank lines.
fn settings(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The GPT of the image: (name, type GUID) of each partition, in order.
fn partitions(disk: &Disk) -> Vec<(String, String)> {
    let out = run(Command::new("sfdisk").arg("--json").arg(&disk.path));
    assert!(out.status.success(), "{out:?}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(table["partitiontable"]["label"], "gpt", "{table}");
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Checks one Pi image: what the firmware needs is on the FAT partition and
/// says what it should; the partitions are the appliance's.
fn check_sd_image(board: &'static str, firmware: &[&str], dtbs: &[&str], console: &str) {
    let disk = Disk::copy_of_image(board, None);
    let arm64_root = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
    // "Microsoft basic data": the FAT type all Pi bootloaders read on GPT.
    let fat = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
    let linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    let expected: Vec<(String, String)> = [
        ("boot", fat),
        ("root-a", arm64_root),
        ("root-b", arm64_root),
        ("data", linux),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    assert_eq!(partitions(&disk), expected, "{board}");

    let files = boot_files(&disk);
    for name in firmware.iter().chain(dtbs).chain(&[
        "config.txt",
        "cmdline.txt",
        "vmlinuz",
        "initrd.img",
        "quince.toml",
        "authorized_keys",
    ]) {
        assert!(
            files.iter().any(|f| f == name),
            "{board}: no {name} in {files:?}"
        );
    }
    if firmware.is_empty() {
        // The Pi 5's firmware is in its EEPROM: old start*.elf would be noise.
        assert!(!files.iter().any(|f| f.starts_with("start")), "{files:?}");
    }

    let config = disk.read_boot_file("config.txt").unwrap();
    let config = settings(&config);
    for line in [
        "arm_64bit=1",
        "kernel=vmlinuz",
        "initramfs initrd.img followkernel",
        "dtparam=watchdog=on",
        "enable_uart=1",
    ] {
        assert!(
            config.contains(&line),
            "{board}: config.txt lacks {line}: {config:?}"
        );
    }
    // No radio is switched on, and nothing asks the firmware for a display.
    assert!(
        !config
            .iter()
            .any(|l| l.contains("wifi") || l.contains("hdmi")),
        "{config:?}"
    );

    let cmdline = disk.read_boot_file("cmdline.txt").unwrap();
    assert_eq!(
        cmdline.lines().count(),
        1,
        "cmdline.txt is one line: {cmdline:?}"
    );
    let args: Vec<&str> = cmdline.split_whitespace().collect();
    for arg in ["quince.root=root-a", "ro", console] {
        assert!(
            args.contains(&arg),
            "{board}: cmdline.txt lacks {arg}: {args:?}"
        );
    }

    // The kernel is an uncompressed arm64 Image, which the firmware loads
    // as it is: "ARM\x64" at byte 56 of its header.
    let kernel = disk.dir.path().join("vmlinuz");
    let out = run(Command::new("mcopy")
        .arg("-i")
        .arg(disk.boot())
        .arg("::vmlinuz")
        .arg(&kernel));
    assert!(out.status.success(), "{out:?}");
    let header = std::fs::read(&kernel).unwrap();
    assert_eq!(
        &header[56..60],
        b"ARM\x64",
        "{board}: vmlinuz is not an arm64 Image"
    );

    // The device trees are real flattened device trees (magic d00dfeed).
    for dtb in dtbs {
        let local = disk.dir.path().join(dtb);
        let out = run(Command::new("mcopy")
            .arg("-i")
            .arg(disk.boot())
            .arg(format!("::{dtb}"))
            .arg(&local));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            &std::fs::read(&local).unwrap()[..4],
            [0xd0, 0x0d, 0xfe, 0xed],
            "{dtb}"
        );
    }
}

#[test]
#[ignore = "needs the Pi 4 image; run by `make test-pi`"]
fn pi4_sd_image_has_firmware_device_trees_and_settings() {
    check_sd_image(
        "rpi4",
        &["start4.elf", "fixup4.dat", "start4cd.elf", "fixup4cd.dat"],
        &[
            "bcm2711-rpi-4-b.dtb",
            "bcm2711-rpi-400.dtb",
            "bcm2711-rpi-cm4-io.dtb",
        ],
        "console=ttyS1,115200",
    );
    // gpu_mem=16 selects the cut-down firmware, which the image carries.
    let disk = Disk::copy_of_image("rpi4", None);
    let config = disk.read_boot_file("config.txt").unwrap();
    assert!(settings(&config).contains(&"gpu_mem=16"), "{config}");
}

#[test]
#[ignore = "needs the Pi 5 image; run by `make test-pi`"]
fn pi5_sd_image_has_device_trees_and_settings() {
    check_sd_image(
        "rpi5",
        &[],
        &["bcm2712-rpi-5-b.dtb", "bcm2712-d-rpi-5-b.dtb"],
        "console=ttyAMA10,115200",
    );
}

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arm64 `quince` under QEMU's user-mode emulator, as a command-line
/// user with its own profile.
fn arm64(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("qemu-aarch64-static");
    cmd.arg(arm64_quince())
        .args(args)
        .env("QUINCE_HOME", home)
        .env("QUINCE_PASSWORD", "alice-password-1234");
    cmd
}

#[test]
#[ignore = "needs the arm64 quince and qemu-user-static; run by `make test-pi`"]
fn arm64_quince_serves_and_chats_under_qemu_user() {
    let data = tempfile::tempdir().unwrap();
    let alice_home = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");

    // `init` prints the fingerprint and the first admin invite.
    let out = run(arm64(alice_home.path(), &["init", "--data-dir"]).arg(data.path()));
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in: {text}"))
    };
    let (fingerprint, invite) = (field("fingerprint:"), field("invite:"));

    let log = data.path().join("serve.log");
    let _server = Running(
        arm64(
            alice_home.path(),
            &["serve", "--listen", &listen, "--data-dir"],
        )
        .arg(data.path())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-aarch64-static (make image-deps installs qemu-user-static)"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // alice: the arm64 client; bob: this machine's x86-64 client.
    let alice = |args: &[&str]| {
        let out = run(&mut arm64(alice_home.path(), args));
        assert!(out.status.success(), "arm64 quince {args:?}: {out:?}");
        stdout(&out)
    };
    alice(&[
        "register",
        "--server",
        &listen,
        "--invite",
        &invite,
        "--fingerprint",
        &fingerprint,
        "alice",
    ]);
    let bob_invite = alice(&["admin", "invite"]);
    let bob = User::new("bob");
    bob.ok(&[
        "register",
        "--server",
        &listen,
        "--invite",
        bob_invite.trim(),
        "--fingerprint",
        &fingerprint,
        "bob",
    ]);
    alice(&["send", "bob", "hello from arm64"]);
    bob.ok(&["send", "alice", "hello from x86-64"]);
    let history = alice(&["history", "bob"]);
    assert!(history.contains("hello from arm64"), "{history}");
    assert!(history.contains("hello from x86-64"), "{history}");
    assert!(bob.ok(&["history", "alice"]).contains("hello from arm64"));
}

#[test]
#[ignore = "boots the Pi 4 image in qemu-system-aarch64; run by `make test-pi`"]
fn pi4_image_boots_in_qemu_virt_and_chats() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(keys.path());
    let disk = Disk::copy_of_image("rpi4", Some(1 << 30));
    disk.write_boot_file("authorized_keys", &public);

    let mut vm = Vm::boot(&disk, &key, false);
    let up = vm.wait_console("listening on");
    println!(
        "Pi 4 image in QEMU virt (TCG): quince listening after {:.1} s",
        up.as_secs_f64()
    );
    let (fingerprint, invite) = welcome(&disk);
    let invite = invite.expect("an admin invite on first boot");

    let alice = User::new("alice");
    alice.register(&vm, &invite, &fingerprint);
    let bob_invite = alice.ok(&["admin", "invite"]);
    let bob = User::new("bob");
    bob.register(&vm, bob_invite.trim(), &fingerprint);
    alice.ok(&["send", "bob", "hello from the host to the Pi image"]);
    bob.ok(&["send", "alice", "and back"]);
    assert!(
        bob.ok(&["history", "alice"])
            .contains("hello from the host to the Pi image")
    );
    assert!(alice.ok(&["history", "bob"]).contains("and back"));

    // It is the arm64 system from the image: read-only root from root-a,
    // the data partition grown to the disk, quince feeding a watchdog.
    let facts = stdout(&vm.ssh(
        "uname -m; grep -o 'quince.root=[^ ]*' /proc/cmdline; \
         awk '$2 == \"/\" {print $3, substr($4, 1, 2)}' /proc/mounts; \
         awk '$2 == \"/data\" {print $3}' /proc/mounts; \
         file=/usr/bin/quince; head -c 20 $file | od -An -tx1 | tr -d ' \\n'; echo",
    ));
    let lines: Vec<&str> = facts.lines().collect();
    assert_eq!(lines.first(), Some(&"aarch64"), "{facts}");
    assert_eq!(lines.get(1), Some(&"quince.root=root-a"), "{facts}");
    assert_eq!(lines.get(2), Some(&"erofs ro"), "{facts}");
    assert_eq!(lines.get(3), Some(&"ext4"), "{facts}");
    // ELF header: e_machine 0xb7 (AArch64) at byte 18.
    assert!(
        lines
            .get(4)
            .is_some_and(|h| h.starts_with("7f454c46") && h.ends_with("b700")),
        "{facts}"
    );
    assert!(vm.console().contains("watchdog armed"), "{}", vm.console());
    let (start, size) = disk.partition("data");
    assert!(
        (start + size) * 512 > (1 << 30) - (2 << 20),
        "data partition not grown to the end of the disk: ends at sector {}",
        start + size
    );

    // The power button (virt's GPIO key) stops quince cleanly and powers off.
    let console = vm.power_off();
    assert!(console.contains("stopped"), "{console}");
    let (clean, fsck) = disk.data_is_clean();
    assert!(clean, "{fsck}");
}
