//! The admin status report: what the box is doing and how healthy it is.

use std::path::Path;

use sysinfo::{Components, Disks, ProcessesToUpdate, System};

/// Facts about the machine gathered with sysinfo; missing sensors give `None`.
pub struct Machine {
    pub rss_bytes: u64,
    pub total_memory_bytes: u64,
    pub load_average: [f64; 3],
    pub disk_free_bytes: u64,
    pub temperature_c: Option<f32>,
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
        temperature_c: temperature(),
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
