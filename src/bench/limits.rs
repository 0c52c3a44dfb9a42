//! The machine's own limits, measured in the same run as quince: fsyncs per
//! second on the data disk and UDP datagrams per second over loopback.
//!
//! quince acknowledges a message only after it is committed, and every
//! delivery travels in at least one UDP datagram, so these two numbers are the
//! ceilings its figures are read against: messages per fsync shows how well
//! commits are grouped, deliveries per datagram-per-second how much of the
//! packet budget is left for crypto, storage and the protocol.

use std::fs::{File, OpenOptions};
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use super::results::{Limits, Machine};

/// Bytes written before each fsync: one page, the size of a small log append.
const FSYNC_BLOCK: usize = 4096;

/// The fsync test file is truncated back to empty when it reaches this size.
/// Only a device that syncs for free (tmpfs, a battery-backed cache) gets here
/// within a few seconds, and truncating keeps such runs from filling the disk
/// while every write stays an append that changes the file size, as a log's does.
const FSYNC_FILE_CAP: u64 = 64 << 20;

/// Payload of the UDP test's datagrams: about what a QUIC short-header packet
/// carrying one 100-byte chat message weighs (header and connection id ~25 B,
/// STREAM frame header ~10 B, the message's framing and ids ~50 B, AEAD tag
/// 16 B), rounded up.
const UDP_PAYLOAD: usize = 200;

/// How long the UDP receiver blocks before checking whether time is up.
const UDP_POLL: Duration = Duration::from_millis(50);

/// Describes this machine (CPU, cores, memory, kernel, OS, data filesystem).
///
/// Never fails: whatever cannot be read is reported as "unknown", since a
/// missing detail should not stop a benchmark run.
pub fn machine(data_dir: &Path) -> Machine {
    let unknown = || "unknown".to_string();
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .ok();
    let cpus = sys.as_ref().map(|s| s.cpus()).unwrap_or_default();
    let cpu = cpus
        .iter()
        .map(|c| c.brand().trim())
        .find(|b| !b.is_empty())
        .map(str::to_string)
        .or_else(cpuinfo_model)
        .unwrap_or_else(System::cpu_arch);
    let cores = if cpus.is_empty() {
        std::thread::available_parallelism().map_or(0, |n| n.get())
    } else {
        cpus.len()
    };
    Machine {
        cpu,
        cores,
        memory_mb: sys.as_ref().map_or(0, |s| s.total_memory() / (1024 * 1024)),
        kernel: System::kernel_version().unwrap_or_else(|_| unknown()),
        os: os_pretty_name()
            .or_else(|| System::long_os_version().ok())
            .unwrap_or_else(unknown),
        data_fs: filesystem_type(data_dir).unwrap_or_else(unknown),
        quince_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Measures fsyncs/s in `data_dir` and loopback UDP datagrams/s.
///
/// The two tests run one after the other, not together, so that neither
/// steals CPU from the other; each takes about 1 s when `quick`, 3 s otherwise.
pub async fn measure(data_dir: &Path, quick: bool) -> anyhow::Result<Limits> {
    let duration = Duration::from_secs(if quick { 1 } else { 3 });
    let dir = data_dir.to_path_buf();
    let fsyncs_per_s = tokio::task::spawn_blocking(move || fsync_rate(&dir, duration))
        .await
        .context("fsync test panicked")??;
    let udp_datagrams_per_s = tokio::task::spawn_blocking(move || udp_rate(UDP_PAYLOAD, duration))
        .await
        .context("UDP test panicked")??;
    Ok(Limits {
        fsyncs_per_s,
        fsync_dir: data_dir.display().to_string(),
        udp_datagrams_per_s,
        udp_payload_bytes: UDP_PAYLOAD,
    })
}

/// Removes the fsync test file however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Appends `FSYNC_BLOCK` bytes and `sync_data`s, over and over for
/// `duration`; returns the pairs completed per second.
///
/// `sync_data` (fdatasync) is what a database commit costs: the data plus the
/// file size, which every append changes, but not the timestamps.
fn fsync_rate(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join(format!(".quince-fsync-test-{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _guard = RemoveOnDrop(path.clone());
    let block = vec![0x5a_u8; FSYNC_BLOCK];
    let mut offset = 0;
    let mut append = |file: &File| -> anyhow::Result<()> {
        if offset >= FSYNC_FILE_CAP {
            file.set_len(0)?;
            offset = 0;
        }
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        offset += FSYNC_BLOCK as u64;
        Ok(())
    };
    // The first syncs also commit the file's creation; leave them out.
    for _ in 0..4 {
        append(&file).with_context(|| format!("writing {}", path.display()))?;
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        append(&file).with_context(|| format!("writing {}", path.display()))?;
        count += 1;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// One thread sends `payload`-byte datagrams to another as fast as it can over
/// loopback for `duration`; returns the datagrams the receiver got per second.
///
/// The receiver's rate is the one that counts: loopback silently drops what a
/// slower receiver cannot take, as a real network would. The socket buffers
/// are the system defaults (std cannot set SO_RCVBUF), as quince's would be.
fn udp_rate(payload: usize, duration: Duration) -> anyhow::Result<f64> {
    let receiver = UdpSocket::bind("127.0.0.1:0").context("binding UDP receiver")?;
    receiver.set_read_timeout(Some(UDP_POLL))?;
    let sender = UdpSocket::bind("127.0.0.1:0").context("binding UDP sender")?;
    sender
        .connect(receiver.local_addr()?)
        .context("connecting UDP sender")?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let blaster = scope.spawn(|| {
            let datagram = vec![0xa5_u8; payload];
            while !stop.load(Ordering::Relaxed) {
                // Errors (ENOBUFS, a refused port once the receiver is gone)
                // are losses like any other; the receiver's count tells.
                let _ = sender.send(&datagram);
            }
        });
        let counted = receive_for(&receiver, duration);
        stop.store(true, Ordering::Relaxed);
        if blaster.join().is_err() {
            anyhow::bail!("UDP sender thread panicked");
        }
        counted
    })
}

/// Counts datagrams arriving on `socket` for `duration`, starting at the
/// first one so the sender's start-up time is not charged to the link.
fn receive_for(socket: &UdpSocket, duration: Duration) -> anyhow::Result<f64> {
    let mut buf = [0u8; 2048];
    let deadline_for_first = Instant::now() + Duration::from_secs(2);
    loop {
        match socket.recv(&mut buf) {
            Ok(_) => break,
            Err(e) if is_timeout(&e) && Instant::now() < deadline_for_first => continue,
            Err(e) => return Err(e).context("waiting for the first UDP datagram"),
        }
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        match socket.recv(&mut buf) {
            Ok(_) => count += 1,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("receiving UDP datagrams"),
        }
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// `PRETTY_NAME` from /etc/os-release, e.g. "Debian GNU/Linux 12 (bookworm)":
/// the name people recognise, which sysinfo's long version does not give.
fn os_pretty_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The CPU's name from /proc/cpuinfo, for ARM boards where sysinfo finds no
/// brand: Raspberry Pi kernels put it in "Model" (the board) rather than
/// "model name".
fn cpuinfo_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    ["model name", "Model", "Hardware", "cpu model"]
        .iter()
        .find_map(|key| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
            })
        })
}

/// The type of the filesystem holding `dir` ("ext4", "tmpfs", ...): on tmpfs
/// fsync is free, so readers must know where the durable figures came from.
fn filesystem_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mount_type_for(&dir, &mounts)
}

/// The filesystem type of the mount in `mounts` (/proc/self/mounts format)
/// whose mount point is the longest prefix of `path`; the last such entry
/// wins, since a later mount on the same point hides the earlier one.
fn mount_type_for(path: &Path, mounts: &str) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(point), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let point = unescape_mount_field(point);
        let point = Path::new(&point);
        if path.starts_with(point) {
            let depth = point.components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, fstype));
            }
        }
    }
    best.map(|(_, fstype)| fstype.to_string())
}

/// Undoes the kernel's octal escapes in /proc/self/mounts (`\040` for a space,
/// `\011`, `\012`, `\134`).
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            let code = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(code).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_mount_point_wins() {
        let mounts = "\
/dev/sda1 / ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
/dev/sdb1 /srv/quince\\040data xfs rw 0 0
/dev/sdc1 /srv btrfs rw 0 0
";
        let ty = |p: &str| mount_type_for(Path::new(p), mounts);
        assert_eq!(ty("/home/me").as_deref(), Some("ext4"));
        assert_eq!(ty("/tmp/x").as_deref(), Some("tmpfs"));
        assert_eq!(ty("/tmpx").as_deref(), Some("ext4"));
        assert_eq!(ty("/srv/quince data/db").as_deref(), Some("xfs"));
        assert_eq!(ty("/srv/other").as_deref(), Some("btrfs"));
    }

    #[test]
    fn later_mount_on_same_point_wins() {
        let mounts = "/dev/sda1 / ext4 rw 0 0\noverlay / overlay rw 0 0\n";
        assert_eq!(
            mount_type_for(Path::new("/x"), mounts).as_deref(),
            Some("overlay")
        );
    }

    #[test]
    fn machine_describes_this_host() {
        let m = machine(Path::new("."));
        assert!(m.cores >= 1);
        assert!(!m.cpu.is_empty());
        assert_eq!(m.quince_version, env!("CARGO_PKG_VERSION"));
    }

    /// Prints this machine's limits: `cargo test --bin quince limits -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "takes a few seconds and writes to the disk"]
    async fn measure_this_machine() {
        // Under target/, on the project's disk: /tmp may be tmpfs, where fsync is free.
        let dir = tempfile::tempdir_in("target").expect("temp dir under target/");
        let m = machine(dir.path());
        let l = measure(dir.path(), true).await.expect("measuring");
        println!("{m:?}\n{l:?}");
        assert!(l.fsyncs_per_s > 0.0);
        assert!(l.udp_datagrams_per_s > 0.0);
    }
}
