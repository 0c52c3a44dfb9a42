//! The appliance image booted in QEMU, for the image tests (tests/image.rs,
//! tests/pi_image.rs): a copy of the built disk, the guest, and `quince`
//! command-line users on the host.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one boot may take under TCG before the test gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The guest port the firewall test listens on: not in the ruleset.
pub const CLOSED_PORT: u16 = 8080;

/// Where `make image BOARD=board` put the board's image and its parts.
pub fn image_dir(board: &str) -> PathBuf {
    let dir = std::env::var_os("QUINCE_IMAGE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/image"))
        .join(board);
    assert!(
        dir.join(format!("quince-{board}.img")).exists(),
        "no image in {}: run `make image BOARD={board}` first (make test does)",
        dir.display()
    );
    dir
}

pub fn free_port() -> u16 {
    // Both protocols on the same number, so one port serves either use.
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A disk: a copy of the built image, optionally on a bigger "card".
pub struct Disk {
    /// The board folder (board/BOARD) the image was built for.
    pub board: &'static str,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Disk {
    pub fn copy_of_image(board: &'static str, size: Option<u64>) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(image_dir(board).join(format!("quince-{board}.img")))
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        if let Some(size) = size {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(size)
                .unwrap();
        }
        Disk { board, dir, path }
    }

    /// `path@@1M`: the boot partition, for mtools.
    pub fn boot(&self) -> String {
        format!("{}@@1M", self.path.display())
    }

    pub fn read_boot_file(&self, name: &str) -> Option<String> {
        let out = run(Command::new("mtype")
            .arg("-i")
            .arg(self.boot())
            .arg(format!("::{name}")));
        out.status.success().then(|| stdout(&out).replace('\r', ""))
    }

    pub fn write_boot_file(&self, name: &str, contents: &str) {
        let local = self.dir.path().join(name);
        std::fs::write(&local, contents).unwrap();
        let out = run(Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(self.boot())
            .arg(&local)
            .arg(format!("::{name}")));
        assert!(out.status.success(), "{out:?}");
    }

    /// (start, size) in sectors of the GPT partition named `name`, from the disk file.
    pub fn partition(&self, name: &str) -> (u64, u64) {
        let dump = stdout(&run(Command::new("sfdisk").arg("-d").arg(&self.path)));
        let line = dump
            .lines()
            .find(|l| l.contains(&format!("name=\"{name}\"")))
            .unwrap_or_else(|| panic!("no partition {name} in:\n{dump}"));
        let field = |key: &str| -> u64 {
            let (_, fields) = line.split_once(" : ").expect("sfdisk -d line");
            fields
                .split(',')
                .filter_map(|f| f.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line}"))
        };
        (field("start"), field("size"))
    }

    /// `e2fsck -fn` on the data partition: true when the filesystem is clean.
    pub fn data_is_clean(&self) -> (bool, String) {
        let (start, _) = self.partition("data");
        let out = run(Command::new("e2fsck").arg("-fn").arg(format!(
            "{}?offset={}",
            self.path.display(),
            start * 512
        )));
        (
            out.status.success(),
            format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr)),
        )
    }
}

/// A running QEMU guest.
pub struct Vm {
    pub child: Child,
    pub console: PathBuf,
    pub qmp: PathBuf,
    pub quic_port: u16,
    pub ssh_port: u16,
    pub closed_port: u16,
    pub key: PathBuf,
    pub started: Instant,
}

impl Vm {
    pub fn boot(disk: &Disk, key: &Path, uefi: bool) -> Vm {
        Vm::boot_on(disk, key, uefi, (free_port(), free_port(), free_port()))
    }

    /// Boots with given (QUIC, SSH, closed) host ports: clients' profiles
    /// remember the server's address, so a second boot must keep it.
    pub fn boot_on(disk: &Disk, key: &Path, uefi: bool, ports: (u16, u16, u16)) -> Vm {
        Vm::boot_with(disk, key, uefi, ports, &[])
    }

    /// Boots with more QEMU arguments (devices).
    pub fn boot_with(
        disk: &Disk,
        key: &Path,
        uefi: bool,
        ports: (u16, u16, u16),
        extra: &[String],
    ) -> Vm {
        let (quic_port, ssh_port, closed_port) = ports;
        let console = disk.dir.path().join(format!("console-{quic_port}.log"));
        let qmp = disk.dir.path().join(format!("qmp-{quic_port}.sock"));
        let child = Command::new(format!("board/{}/qemu.sh", disk.board))
            .arg(image_dir(disk.board))
            .arg(&disk.path)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(extra)
            .env("QUIC_PORT", quic_port.to_string())
            .env("SSH_PORT", ssh_port.to_string())
            .env(
                "EXTRA_HOSTFWD",
                format!(",hostfwd=tcp:127.0.0.1:{closed_port}-:{CLOSED_PORT}"),
            )
            .env("UEFI", if uefi { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("QEMU (make image-deps installs it)");
        Vm {
            child,
            console,
            qmp,
            quic_port,
            ssh_port,
            closed_port,
            key: key.to_path_buf(),
            started: Instant::now(),
        }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `text`; returns the time since boot.
    pub fn wait_console(&mut self, text: &str) -> Duration {
        self.wait_console_from(0, text)
    }

    /// Waits until the console shows `text` after its first `from` bytes.
    pub fn wait_console_from(&mut self, from: usize, text: &str) -> Duration {
        while !self.console().get(from..).unwrap_or("").contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}) before {text:?}:\n{}",
                    self.console()
                );
            }
            assert!(
                self.started.elapsed() < BOOT_TIMEOUT,
                "no {text:?} on the console after {BOOT_TIMEOUT:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.started.elapsed()
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.quic_port)
    }

    pub fn ssh_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"])
        .arg("-p")
        .arg(self.ssh_port.to_string());
        cmd
    }

    /// Runs a shell command in the guest as root over SSH with the test's key.
    pub fn ssh(&self, script: &str) -> Output {
        run(self
            .ssh_command()
            .args(["-o", "BatchMode=yes", "-i"])
            .arg(&self.key)
            .arg("root@127.0.0.1")
            .arg(script))
    }

    pub fn qmp(&self, command: &str) {
        let stream = UnixStream::connect(&self.qmp).expect("QMP socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap(); // greeting
        for c in ["qmp_capabilities", command] {
            writeln!(&stream, "{{\"execute\": \"{c}\"}}").unwrap();
            // Events (POWERDOWN, ...) can arrive before the reply.
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if !line.contains("\"event\"") {
                    break;
                }
            }
            assert!(line.contains("\"return\""), "QMP {c}: {line}");
        }
    }

    /// Presses the power button and waits for the guest to power off.
    pub fn power_off(mut self) -> String {
        self.qmp("system_powerdown");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "QEMU: {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no power-off 90 s after the power button:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.console()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `quince` command-line user with its own profile directory on the host.
pub struct User {
    pub home: tempfile::TempDir,
    pub name: &'static str,
}

impl User {
    pub fn new(name: &'static str) -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            name,
        }
    }

    pub fn quince(&self, args: &[&str]) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_quince"))
            .args(args)
            .env("QUINCE_HOME", self.home.path())
            .env("QUINCE_PASSWORD", format!("{}-password-1234", self.name)))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.quince(args);
        assert!(
            out.status.success(),
            "quince {args:?} as {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    }

    /// The conversation with `peer`, retrying while the server (just booted)
    /// is not answering yet.
    pub fn history_once_up(&self, peer: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.quince(&["history", peer]);
            if out.status.success() {
                return stdout(&out);
            }
            assert!(Instant::now() < deadline, "{out:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn register(&self, vm: &Vm, invite: &str, fingerprint: &str) {
        self.ok(&[
            "register",
            "--server",
            &vm.server(),
            "--invite",
            invite,
            "--fingerprint",
            fingerprint,
            self.name,
        ]);
    }
}

/// Fingerprint and invite from the welcome file on the boot partition.
pub fn welcome(disk: &Disk) -> (String, Option<String>) {
    let text = disk
        .read_boot_file("quince-welcome.txt")
        .expect("quince-welcome.txt on the boot partition");
    let after = |heading: &str| {
        let mut lines = text.lines();
        lines.find(|l| l.starts_with(heading))?;
        lines.next().map(|l| l.trim().to_string())
    };
    let fingerprint = after("Certificate fingerprint").expect("fingerprint");
    assert_eq!(fingerprint.len(), 64, "{text}");
    (fingerprint, after("Admin invite"))
}

pub fn ssh_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public)
}

/// Connects to the forwarded port and returns what the guest's listener sent.
pub fn banner(port: u16) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut got = String::new();
    let _ = stream.read_to_string(&mut got);
    got
}
