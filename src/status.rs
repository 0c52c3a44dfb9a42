//! The admin status report: what the box is doing and how healthy it is.
//!
//! Temperature and throttling come from sysfs, read below a root directory
//! (`/sys` in the server) so tests can hand in a made-up tree for each kind
//! of machine: a Raspberry Pi with Debian's kernel, one with the Raspberry
//! Pi kernel, a PC.

use std::path::Path;

use sysinfo::{Components, Disks, ProcessesToUpdate, System};

use crate::protocol::Throttling;

/// Facts about the machine gathered with sysinfo; missing sensors give `None`.
pub struct Machine {
    pub rss_bytes: u64,
    pub total_memory_bytes: u64,
    pub load_average: [f64; 3],
    pub disk_free_bytes: u64,
    pub temperature_c: Option<f32>,
    pub throttling: Option<Throttling>,
}

/// Reads the figures now. Costs a few milliseconds (it reads /proc and /sys),
/// so call it from a blocking thread.
pub fn machine(data_dir: &Path) -> Machine {
    let (rss_bytes, total_memory_bytes) = match System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            let rss = sysinfo::get_current_pid()
                .ok()
                .and_then(|pid| {
                    sys.refresh_processes(ProcessesToUpdate::Some(&[pid]), false);
                    sys.process(pid).map(|p| p.memory())
                })
                .unwrap_or(0);
            (rss, sys.total_memory())
        }
        Err(_) => (0, 0),
    };
    let load_average = System::load_average()
        .map(|l| [l.one, l.five, l.fifteen])
        .unwrap_or([0.0; 3]);
    Machine {
        rss_bytes,
        total_memory_bytes,
        load_average,
        disk_free_bytes: disk_free(data_dir),
        temperature_c: cpu_zone_temperature(SYSFS).or_else(temperature),
        throttling: throttling(SYSFS),
    }
}

/// Free space on the filesystem holding `dir`: the disk with the longest mount
/// point that is a prefix of the directory's real path.
fn disk_free(dir: &Path) -> u64 {
    let Ok(dir) = dir.canonicalize() else {
        return 0;
    };
    let Ok(disks) = Disks::new_with_refreshed_list() else {
        return 0;
    };
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
        .unwrap_or(0)
}

/// Where the kernel's sysfs is mounted.
const SYSFS: &str = "/sys";

/// A sysfs file's first line, trimmed; None when missing or unreadable.
fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

/// Entries of a sysfs directory whose names start with `prefix`, sorted so
/// the result does not depend on directory order.
fn entries(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The CPU's thermal zone, read directly: a Raspberry Pi's SoC sensor is the
/// zone `cpu-thermal` (Debian's kernel; `cpu_thermal` in older ones), a PC's
/// package sensor `x86_pkg_temp`. Read first because it does not depend on
/// the kernel also exposing the zone as a hwmon device, which is all sysinfo
/// looks at when a machine has any hwmon device (a Pi's `rpi_volt` is one).
pub fn cpu_zone_temperature(sys: impl AsRef<Path>) -> Option<f32> {
    entries(&sys.as_ref().join("class/thermal"), "thermal_zone")
        .into_iter()
        .find_map(|zone| {
            let kind = read(&zone.join("type"))?.to_ascii_lowercase();
            let cpu = kind.contains("cpu") || kind.contains("soc") || kind == "x86_pkg_temp";
            if !cpu {
                return None;
            }
            // Millidegrees Celsius; may be negative.
            let milli: i64 = read(&zone.join("temp"))?.parse().ok()?;
            Some(milli as f32 / 1000.0)
        })
}

/// The Raspberry Pi firmware's throttling flags (`vcgencmd get_throttled`),
/// as the Raspberry Pi kernel's firmware driver shows them in sysfs: a hex
/// number, `50005` or `0x50005`.
fn firmware_flags(sys: &Path) -> Option<u32> {
    // `soc:firmware` under `soc` on the Pi 4; other boards name the bus differently.
    let known = sys.join("devices/platform/soc/soc:firmware/get_throttled");
    let file = if known.exists() {
        known
    } else {
        entries(&sys.join("devices/platform"), "")
            .into_iter()
            .flat_map(|bus| entries(&bus, ""))
            .filter(|d| d.to_string_lossy().ends_with(":firmware"))
            .map(|d| d.join("get_throttled"))
            .find(|f| f.exists())?
    };
    let text = read(&file)?;
    let hex = text.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(hex, 16).ok()
}

/// Debian's (upstream) kernel has no `get_throttled`; its `raspberrypi-hwmon`
/// driver (hwmon name `rpi_volt`) polls the firmware every 2 s and raises
/// `in0_lcrit_alarm` while under-voltage shows.
fn hwmon_under_voltage(sys: &Path) -> Option<bool> {
    entries(&sys.join("class/hwmon"), "hwmon")
        .into_iter()
        .find(|d| read(&d.join("name")).as_deref() == Some("rpi_volt"))
        .and_then(|d| read(&d.join("in0_lcrit_alarm")))
        .map(|v| v != "0")
}

/// What cpufreq says: the current and highest frequency (kHz) of the fastest
/// policy, and whether any policy's allowed maximum is below what its CPU
/// can do (the kernel's thermal code lowers it when it throttles).
fn cpufreq(sys: &Path) -> Option<(Option<u32>, Option<u32>, bool)> {
    let policies = entries(&sys.join("devices/system/cpu/cpufreq"), "policy");
    let khz = |dir: &Path, file: &str| read(&dir.join(file)).and_then(|v| v.parse::<u32>().ok());
    let mut seen = false;
    let (mut cur, mut max, mut capped) = (None, None, false);
    for p in &policies {
        let (c, m, allowed) = (
            khz(p, "scaling_cur_freq"),
            khz(p, "cpuinfo_max_freq"),
            khz(p, "scaling_max_freq"),
        );
        seen |= c.is_some() || m.is_some();
        cur = cur.max(c);
        max = max.max(m);
        if let (Some(m), Some(a)) = (m, allowed) {
            capped |= a < m;
        }
    }
    seen.then_some((cur, max, capped))
}

/// Throttling as far as this machine tells: the firmware's flags (Raspberry
/// Pi kernel), the `rpi_volt` under-voltage alarm (Debian's kernel on a Pi),
/// cpufreq (most machines). None when there is none of them.
pub fn throttling(sys: impl AsRef<Path>) -> Option<Throttling> {
    let sys = sys.as_ref();
    let flags = firmware_flags(sys);
    let hwmon = hwmon_under_voltage(sys);
    let freq = cpufreq(sys);
    if flags.is_none() && hwmon.is_none() && freq.is_none() {
        return None;
    }
    let bit = |n: u32| flags.map(|f| f & (1 << n) != 0);
    let either = |a: Option<bool>, b: Option<bool>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a == Some(true) || b == Some(true)),
    };
    let (cpu_khz, max_khz, cpufreq_capped) = match freq {
        Some((c, m, capped)) => (c, m, Some(capped)),
        None => (None, None, None),
    };
    Some(Throttling {
        under_voltage: either(bit(0), hwmon),
        under_voltage_occurred: bit(16),
        frequency_capped: either(bit(1), cpufreq_capped),
        frequency_capped_occurred: bit(17),
        throttled: bit(2),
        throttled_occurred: bit(18),
        soft_temp_limit: bit(3),
        soft_temp_limit_occurred: bit(19),
        cpu_mhz: cpu_khz.map(|k| k / 1000),
        cpu_max_mhz: max_khz.map(|k| k / 1000),
    })
}

/// CPU temperature where the hardware has a sensor (a Raspberry Pi's SoC
/// sensor shows as `cpu_thermal`), else the hottest sensor, else none.
fn temperature() -> Option<f32> {
    let components = Components::new_with_refreshed_list().ok()?;
    let cpu = components.iter().find(|c| {
        let l = c.label().to_ascii_lowercase();
        l.contains("cpu") || l.contains("package") || l.contains("soc")
    });
    cpu.and_then(|c| c.temperature()).or_else(|| {
        components
            .iter()
            .filter_map(|c| c.temperature())
            .reduce(f32::max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up sysfs tree: `files` are (path below the root, contents).
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const PI4_CPUFREQ: [(&str, &str); 3] = [
        (
            "devices/system/cpu/cpufreq/policy0/scaling_cur_freq",
            "600000\n",
        ),
        (
            "devices/system/cpu/cpufreq/policy0/cpuinfo_max_freq",
            "1800000\n",
        ),
        (
            "devices/system/cpu/cpufreq/policy0/scaling_max_freq",
            "1800000\n",
        ),
    ];

    #[test]
    fn raspberry_pi_kernel_firmware_flags() {
        let mut files = vec![
            ("devices/platform/soc/soc:firmware/get_throttled", "50005\n"),
            ("class/thermal/thermal_zone0/type", "cpu-thermal\n"),
            ("class/thermal/thermal_zone0/temp", "61834\n"),
        ];
        files.extend(PI4_CPUFREQ);
        let sys = tree(&files);
        let t = throttling(sys.path()).unwrap();
        assert_eq!(
            t,
            Throttling {
                under_voltage: Some(true),
                under_voltage_occurred: Some(true),
                frequency_capped: Some(false),
                frequency_capped_occurred: Some(false),
                throttled: Some(true),
                throttled_occurred: Some(true),
                soft_temp_limit: Some(false),
                soft_temp_limit_occurred: Some(false),
                cpu_mhz: Some(600),
                cpu_max_mhz: Some(1800),
            }
        );
        assert!(t.slowed_now());
        assert_eq!(cpu_zone_temperature(sys.path()), Some(61.834));
    }

    #[test]
    fn firmware_flags_on_another_bus_and_with_0x() {
        let sys = tree(&[(
            "devices/platform/axi/axi:firmware/get_throttled",
            "0x80008\n",
        )]);
        let t = throttling(sys.path()).unwrap();
        assert_eq!(t.soft_temp_limit, Some(true));
        assert_eq!(t.soft_temp_limit_occurred, Some(true));
        assert_eq!(t.under_voltage, Some(false));
        assert_eq!(t.cpu_mhz, None, "no cpufreq in this tree");
    }

    #[test]
    fn debian_kernel_rpi_volt_alarm_and_lowered_cpufreq_limit() {
        let sys = tree(&[
            ("class/hwmon/hwmon0/name", "cpu_thermal\n"),
            ("class/hwmon/hwmon1/name", "rpi_volt\n"),
            ("class/hwmon/hwmon1/in0_lcrit_alarm", "1\n"),
            ("class/thermal/thermal_zone0/type", "cpu-thermal\n"),
            ("class/thermal/thermal_zone0/temp", "84000\n"),
            (
                "devices/system/cpu/cpufreq/policy0/scaling_cur_freq",
                "1000000\n",
            ),
            (
                "devices/system/cpu/cpufreq/policy0/cpuinfo_max_freq",
                "1500000\n",
            ),
            (
                "devices/system/cpu/cpufreq/policy0/scaling_max_freq",
                "1000000\n",
            ),
        ]);
        let t = throttling(sys.path()).unwrap();
        assert_eq!(
            t,
            Throttling {
                under_voltage: Some(true),
                frequency_capped: Some(true),
                cpu_mhz: Some(1000),
                cpu_max_mhz: Some(1500),
                ..Throttling::default()
            },
            "the upstream kernel knows nothing of the firmware's other flags"
        );
        assert_eq!(cpu_zone_temperature(sys.path()), Some(84.0));

        // Voltage fine, limit back up: nothing slows the CPU.
        let sys = tree(&[
            ("class/hwmon/hwmon3/name", "rpi_volt\n"),
            ("class/hwmon/hwmon3/in0_lcrit_alarm", "0\n"),
        ]);
        let t = throttling(sys.path()).unwrap();
        assert_eq!(t.under_voltage, Some(false));
        assert!(!t.slowed_now());
    }

    #[test]
    fn a_pc_has_cpufreq_only_and_a_bare_tree_has_nothing() {
        let sys = tree(&[
            ("class/thermal/thermal_zone0/type", "acpitz\n"),
            ("class/thermal/thermal_zone0/temp", "27800\n"),
            ("class/thermal/thermal_zone1/type", "x86_pkg_temp\n"),
            ("class/thermal/thermal_zone1/temp", "45000\n"),
            (
                "devices/system/cpu/cpufreq/policy0/scaling_cur_freq",
                "800000\n",
            ),
            (
                "devices/system/cpu/cpufreq/policy0/cpuinfo_max_freq",
                "4200000\n",
            ),
            (
                "devices/system/cpu/cpufreq/policy1/scaling_cur_freq",
                "3900000\n",
            ),
            (
                "devices/system/cpu/cpufreq/policy1/cpuinfo_max_freq",
                "4200000\n",
            ),
        ]);
        let t = throttling(sys.path()).unwrap();
        assert_eq!(
            t,
            Throttling {
                frequency_capped: Some(false),
                cpu_mhz: Some(3900),
                cpu_max_mhz: Some(4200),
                ..Throttling::default()
            }
        );
        assert_eq!(cpu_zone_temperature(sys.path()), Some(45.0));

        let bare = tree(&[("class/thermal/thermal_zone0/type", "acpitz\n")]);
        assert_eq!(throttling(bare.path()), None);
        assert_eq!(cpu_zone_temperature(bare.path()), None);
    }

    #[test]
    fn garbage_is_no_source() {
        let sys = tree(&[
            (
                "devices/platform/soc/soc:firmware/get_throttled",
                "not hex\n",
            ),
            ("class/thermal/thermal_zone0/type", "cpu-thermal\n"),
            ("class/thermal/thermal_zone0/temp", "\n"),
        ]);
        assert_eq!(throttling(sys.path()), None);
        assert_eq!(cpu_zone_temperature(sys.path()), None);
    }
}
