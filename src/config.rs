//! Server configuration: a TOML file, overridden by command-line flags.
//!
//! Every option has a default, so `quince serve` with no file runs. The README's
//! configuration reference lists the same options; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything `quince serve` can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory holding the database, the certificate and key.
    pub data_dir: PathBuf,
    /// Log filter: error, warn, info, debug, trace (or a tracing directive).
    pub log_level: String,
    /// Runtime worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// PEM certificate chain to serve instead of the self-signed one.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Connections beyond this are refused.
    pub max_connections: usize,
    /// Page cache of the database, in MiB.
    pub cache_mb: usize,
    /// Default lifetime of invites made by administrators, in hours.
    pub invite_ttl_hours: u64,
    /// Hardware watchdog device to arm and pet while healthy (the appliance
    /// uses `/dev/watchdog`). None: no watchdog. Off by default because a
    /// watchdog reboots the whole machine when quince is killed and not
    /// restarted, which is right for an appliance and wrong for a laptop.
    pub watchdog: Option<PathBuf>,
    /// Seconds without a pet before the hardware resets the machine.
    pub watchdog_timeout_secs: u64,
    /// Which cipher suite the server prefers: `auto` (ChaCha20-Poly1305 when
    /// the CPU has no AES instructions, as on a Raspberry Pi 4), `chacha20` or `aes`.
    pub tls_prefer: crate::tls::TlsPrefer,
    /// UPS and power-loss handling (the `[power]` table).
    pub power: crate::power::PowerConfig,
    /// The appliance's system settings (network, host name, time). The server
    /// ignores them; the appliance's boot reads them with [`crate::system`].
    pub system: toml::Table,
    /// Scheduled backups (`[backup]`); off unless `dir` is set.
    pub backup: BackupConfig,
    /// Tell contacts who is online, away or offline. Off: `presence` is
    /// refused with `disabled` and no presence events are sent.
    pub presence: bool,
    /// Pass typing indicators on. Off: `typing` is refused with `disabled`.
    pub typing: bool,
    /// Seconds after sending during which a message can be edited.
    pub edit_window_secs: u64,
    /// Seconds after sending during which the sender can recall a message
    /// (group owners and admins can recall any message at any time).
    pub recall_window_secs: u64,
    /// Attachments (`[attachments]`).
    pub attachments: AttachmentsConfig,
}

/// `[attachments]`: limits on uploaded files.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// Largest file, in MiB.
    pub max_mb: u64,
    /// Most a user may have stored (all their uploads together), in MiB.
    pub quota_mb: u64,
    /// Hours an uploaded file that no message carries, or an upload that got
    /// no byte, is kept before it is deleted and stops counting against the
    /// quota. Long enough for an app to finish the message it uploads for.
    pub unsent_hours: f64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            max_mb: 100,
            quota_mb: 1024,
            unsent_hours: 24.0,
        }
    }
}

impl AttachmentsConfig {
    /// The size limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_mb.saturating_mul(1024 * 1024)
    }

    /// The per-user quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_mb.saturating_mul(1024 * 1024)
    }

    /// How long an unsent file or an idle upload is kept.
    pub fn unsent_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64((self.unsent_hours * 3600.0).max(1.0))
    }
}

/// `[backup]`: where and how often the server writes backups of itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Directory the backups go to (a USB stick on the appliance). None: no
    /// scheduled backups. quince does not create it: a missing directory (a
    /// stick that is not plugged in) is reported as a failed backup.
    pub dir: Option<PathBuf>,
    /// Hours between backups. Fractions are allowed (0.25 is 15 minutes;
    /// tests use a few seconds' worth).
    pub interval_hours: f64,
    /// How many backups to keep: the oldest beyond this are deleted.
    pub keep: usize,
    /// A file holding the passphrase to encrypt backups with (age, scrypt).
    /// None: backups are not encrypted.
    pub passphrase_file: Option<PathBuf>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            interval_hours: 24.0,
            keep: 7,
            passphrase_file: None,
        }
    }
}

impl BackupConfig {
    /// The interval as a duration (`validate` has checked it).
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64((self.interval_hours * 3600.0).max(1.0))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "[::]:4433".parse().expect("valid literal"),
            data_dir: PathBuf::from("./quince-data"),
            log_level: "info".into(),
            worker_threads: 0,
            cert: None,
            key: None,
            max_connections: 25_000,
            cache_mb: 32,
            invite_ttl_hours: 24 * 7,
            watchdog: None,
            watchdog_timeout_secs: 15,
            tls_prefer: Default::default(),
            power: Default::default(),
            system: toml::Table::new(),
            backup: BackupConfig::default(),
            presence: true,
            typing: true,
            edit_window_secs: 24 * 3600,
            recall_window_secs: 120,
            attachments: AttachmentsConfig::default(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("`cert` and `key` must be given together")]
    CertWithoutKey,
    #[error("[backup] {0}")]
    Backup(&'static str),
    #[error("[attachments] {0}")]
    Attachments(&'static str),
}

impl Config {
    /// Reads a TOML file; options it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks combinations a single field cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(ConfigError::CertWithoutKey);
        }
        let b = &self.backup;
        if !(b.interval_hours.is_finite() && b.interval_hours * 3600.0 >= 1.0) {
            return Err(ConfigError::Backup(
                "interval_hours must be at least one second (1/3600)",
            ));
        }
        if b.keep == 0 {
            return Err(ConfigError::Backup("keep must be at least 1"));
        }
        let a = &self.attachments;
        if !(a.unsent_hours.is_finite() && a.unsent_hours * 3600.0 >= 1.0) {
            return Err(ConfigError::Attachments(
                "unsent_hours must be at least one second (1/3600)",
            ));
        }
        Ok(())
    }

    /// Worker threads to start: the configured number, or one per core.
    pub fn threads(&self) -> usize {
        if self.worker_threads > 0 {
            self.worker_threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_file_keeps_defaults() {
        let c: Config = toml::from_str("listen = \"127.0.0.1:5000\"\ncache_mb = 8\n").unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.cache_mb, 8);
        assert_eq!(c.data_dir, PathBuf::from("./quince-data"));
    }

    #[test]
    fn the_example_file_parses() {
        let c: Config = toml::from_str(include_str!("../quince.example.toml")).unwrap();
        assert_eq!(c.power.grace_secs, 120);
        assert!(c.power.sigpwr);
        assert_eq!(c.attachments.unsent_after().as_secs(), 24 * 3600);
    }

    #[test]
    fn unsent_hours_is_at_least_a_second() {
        let c: Config = toml::from_str("[attachments]\nunsent_hours = 0.001\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.attachments.unsent_after().as_millis(), 3600);
        for bad in ["0", "0.0001", "-1", "nan"] {
            let c: Config =
                toml::from_str(&format!("[attachments]\nunsent_hours = {bad}\n")).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn backup_table_has_defaults_and_checks() {
        let c: Config = toml::from_str("[backup]\ndir = \"/media/backup\"\n").unwrap();
        assert_eq!(c.backup.interval_hours, 24.0);
        assert_eq!(c.backup.keep, 7);
        c.validate().unwrap();
        let c: Config = toml::from_str("[backup]\ninterval_hours = 0.001\nkeep = 2\n").unwrap();
        assert_eq!(c.backup.interval().as_millis(), 3600);
        assert!(
            toml::from_str::<Config>("[backup]\nkeep = 0\n")
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(toml::from_str::<Config>("[backup]\nevery = 1\n").is_err());
    }

    #[test]
    fn unknown_option_is_an_error() {
        assert!(toml::from_str::<Config>("lissen = \"x\"").is_err());
    }
}
