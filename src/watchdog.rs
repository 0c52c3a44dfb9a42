//! The hardware watchdog: the board reboots itself if quince stops petting it.
//!
//! A box on a shelf can hang (a stuck disk, a kernel bug, quince itself
//! wedged) with nobody there to press reset. Linux exposes the board's
//! watchdog timer as `/dev/watchdog`: once opened it must be "petted" (the
//! `WDIOC_KEEPALIVE` ioctl) more often than its timeout, or the hardware resets
//! the machine. quince pets it only while it is healthy:
//!
//! - the async runtime runs the petting task at all (its event loop answers);
//! - the store's writer is not stuck in a commit for longer than half the
//!   timeout ([`crate::store::Store::stalled_for`]).
//!
//! A clean shutdown disarms it with the "magic close" (writing `V` before
//! closing), so a deliberate stop never reboots the box; a crash, a hang or
//! SIGKILL closes it without the `V` and the hardware resets the board.
//!
//! The ioctls are the kernel's watchdog API (linux/watchdog.h) through `nix`;
//! no crate wraps them, and three ioctls do not need one.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("opening the watchdog {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting the watchdog timeout to {secs} s: {source}")]
    Timeout { secs: u64, source: nix::Error },
}

/// An armed watchdog device.
pub struct Watchdog {
    file: File,
    /// The timeout the driver accepted (it may round the one asked for).
    pub timeout: Duration,
}

impl Watchdog {
    /// Opens and arms the device with the given timeout. `Ok(None)` when the
    /// device does not exist: quince runs without one (and says so once).
    pub fn open(path: &Path, timeout: Duration) -> Result<Option<Watchdog>, WatchdogError> {
        let file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(WatchdogError::Open {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let secs = timeout.as_secs().max(1);
        let mut value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: the fd is an open watchdog device and `value` outlives the call.
        if let Err(source) = unsafe { wdioc_settimeout(file.as_raw_fd(), &mut value) } {
            // Leave it disarmed rather than running with a timeout we do not know.
            let mut file = file;
            let _ = file.write_all(b"V");
            return Err(WatchdogError::Timeout { secs, source });
        }
        let watchdog = Watchdog {
            file,
            timeout: Duration::from_secs(u64::try_from(value).unwrap_or(secs).max(1)),
        };
        watchdog.pet();
        Ok(Some(watchdog))
    }

    /// Restarts the hardware timer.
    pub fn pet(&self) {
        let mut dummy: libc::c_int = 0;
        // SAFETY: the fd is an open watchdog device and `dummy` outlives the call.
        if let Err(e) = unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut dummy) } {
            tracing::warn!(error = %e, "petting the watchdog failed");
        }
    }

    /// How often to pet it: well inside the timeout.
    pub fn interval(&self) -> Duration {
        self.timeout / 3
    }

    /// Disarms the watchdog (the "magic close") so a clean stop does not reboot.
    pub fn disarm(mut self) {
        if let Err(e) = self.file.write_all(b"V") {
            tracing::warn!(error = %e, "disarming the watchdog failed; the board may reset");
        }
    }
}
