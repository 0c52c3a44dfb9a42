//! The appliance's system settings: the `[system]` table of `quince.toml`.
//!
//! On the appliance the owner edits `quince.toml` on the FAT boot partition
//! from any PC, so the file may be half-finished, mistyped or written by an
//! editor that mangles it. The boot scripts must never fail because of it:
//! [`BootConfig::read`] keeps every setting it can use, replaces each one it
//! cannot with its safe default (DHCP, hostname `quince`, UTC), and lists what
//! it replaced so the boot can report it on the console and in a status file.
//!
//! Each setting is checked on its own, so a typo in the time zone does not
//! throw away a static address. Values that reach the boot scripts as shell
//! variables are restricted to characters that need no quoting.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use crate::config::Config;

/// Host name used when none (or an invalid one) is configured.
pub const DEFAULT_HOSTNAME: &str = "quince";
/// Time zone used when none (or an unknown one) is configured.
pub const DEFAULT_TIMEZONE: &str = "UTC";
/// NTP servers used when none are configured.
pub const DEFAULT_NTP: [&str; 2] = ["0.pool.ntp.org", "1.pool.ntp.org"];

/// How the appliance gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// DHCP on the first Ethernet interface (the safe default).
    Dhcp,
    /// A fixed address with prefix length, a gateway and name servers.
    Static {
        address: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        dns: Vec<IpAddr>,
    },
}

/// The system settings after checking; every field holds a usable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemConfig {
    pub hostname: String,
    /// An IANA zone name such as `Europe/Berlin`, present in the zoneinfo directory.
    pub timezone: String,
    pub ntp_servers: Vec<String>,
    pub network: Network,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            hostname: DEFAULT_HOSTNAME.into(),
            timezone: DEFAULT_TIMEZONE.into(),
            ntp_servers: DEFAULT_NTP.iter().map(|s| s.to_string()).collect(),
            network: Network::Dhcp,
        }
    }
}

/// A boot-partition `quince.toml`, read as far as it can be.
#[derive(Debug)]
pub struct BootConfig {
    /// The server options, or the defaults when they were invalid.
    pub server: Config,
    /// True when `server` came from the file (so the file can be handed to `quince serve`).
    pub server_from_file: bool,
    pub system: SystemConfig,
    /// One line per setting that was invalid and replaced by its default.
    pub problems: Vec<String>,
}

impl BootConfig {
    /// Reads the text of a `quince.toml`. `zoneinfo` is the directory time
    /// zone names are checked against.
    pub fn read(text: &str, zoneinfo: &Path) -> BootConfig {
        let mut problems = Vec::new();
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!(
                    "quince.toml is not valid TOML ({}); using the defaults for everything",
                    one_line(&e.to_string())
                ));
                return BootConfig {
                    server: Config::default(),
                    server_from_file: false,
                    system: SystemConfig::default(),
                    problems,
                };
            }
        };
        let (server, server_from_file) = match toml::from_str::<Config>(text)
            .map_err(|e| one_line(&e.to_string()))
            .and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string()))
        {
            Ok(c) => (c, true),
            Err(e) => {
                problems.push(format!(
                    "server options: {e}; using the default server options"
                ));
                (Config::default(), false)
            }
        };
        let mut system = SystemConfig::default();
        match table.get("system") {
            None => {}
            Some(toml::Value::Table(t)) => read_system(t, zoneinfo, &mut system, &mut problems),
            Some(_) => problems.push("[system] must be a table; using the defaults".into()),
        }
        BootConfig {
            server,
            server_from_file,
            system,
            problems,
        }
    }

    /// The settings as shell variable assignments for the boot scripts.
    /// Every value has been checked to be free of shell metacharacters.
    pub fn to_shell(&self) -> String {
        let s = &self.system;
        let mut out = String::new();
        let _ = writeln!(out, "QUINCE_PORT={}", self.server.listen.port());
        let _ = writeln!(out, "HOSTNAME={}", s.hostname);
        let _ = writeln!(out, "TIMEZONE={}", s.timezone);
        let _ = writeln!(out, "NTP_SERVERS='{}'", s.ntp_servers.join(" "));
        match &s.network {
            Network::Dhcp => {
                let _ = writeln!(out, "NETWORK=dhcp");
            }
            Network::Static {
                address,
                prefix,
                gateway,
                dns,
            } => {
                let _ = writeln!(out, "NETWORK=static");
                let _ = writeln!(out, "ADDRESS={address}/{prefix}");
                let gateway = gateway.map(|g| g.to_string()).unwrap_or_default();
                let _ = writeln!(out, "GATEWAY={gateway}");
                let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
                let _ = writeln!(out, "DNS='{}'", dns.join(" "));
            }
        }
        out
    }
}

fn read_system(
    table: &toml::Table,
    zoneinfo: &Path,
    system: &mut SystemConfig,
    problems: &mut Vec<String>,
) {
    for (key, value) in table {
        // Each setting: read it, or say what it falls back to.
        let (result, fallback) = match key.as_str() {
            "hostname" => (
                hostname(value).map(|h| system.hostname = h),
                format!("; using \"{DEFAULT_HOSTNAME}\""),
            ),
            "timezone" => (
                timezone(value, zoneinfo).map(|t| system.timezone = t),
                format!("; using {DEFAULT_TIMEZONE}"),
            ),
            "ntp_servers" => (
                ntp_servers(value).map(|n| system.ntp_servers = n),
                format!("; using {}", DEFAULT_NTP.join(", ")),
            ),
            "network" => (
                network(value).map(|n| system.network = n),
                "; using DHCP".to_string(),
            ),
            _ => (Err("unknown setting (ignored)".to_string()), String::new()),
        };
        if let Err(e) = result {
            problems.push(format!("system.{key}: {e}{fallback}"));
        }
    }
}

fn string(value: &toml::Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| "must be a string".to_string())
}

/// A DNS name: dot-separated labels of letters, digits and hyphens.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn hostname(value: &toml::Value) -> Result<String, String> {
    let s = string(value)?;
    if s.len() <= 63 && !s.contains('.') && is_dns_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a host name (1-63 letters, digits and hyphens)"
        ))
    }
}

fn timezone(value: &toml::Value, zoneinfo: &Path) -> Result<String, String> {
    let s = string(value)?;
    let well_formed = !s.is_empty()
        && !s.starts_with('/')
        && s.split('/').all(|part| part != "." && part != "..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if well_formed && zoneinfo.join(s).is_file() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a known time zone (use a name such as \"Europe/Berlin\")"
        ))
    }
}

fn ntp_servers(value: &toml::Value) -> Result<Vec<String>, String> {
    let list = value
        .as_array()
        .ok_or_else(|| "must be a list of host names".to_string())?;
    let mut out = Vec::new();
    for v in list {
        let s = string(v)?;
        if s.parse::<IpAddr>().is_err() && !is_dns_name(s) {
            return Err(format!("{s:?} is not a host name or address"));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

fn network(value: &toml::Value) -> Result<Network, String> {
    let t = value
        .as_table()
        .ok_or_else(|| "must be a table".to_string())?;
    for key in t.keys() {
        if !["mode", "address", "gateway", "dns"].contains(&key.as_str()) {
            return Err(format!("unknown setting {key:?}"));
        }
    }
    let mode = match t.get("mode") {
        None => "dhcp",
        Some(v) => string(v)?,
    };
    match mode {
        "dhcp" => Ok(Network::Dhcp),
        "static" => {
            let address = t
                .get("address")
                .ok_or_else(|| {
                    "static mode needs an address such as \"192.168.1.20/24\"".to_string()
                })
                .and_then(string)?;
            let (ip, prefix) = address.split_once('/').ok_or_else(|| {
                format!("address {address:?} needs a prefix length, as in \"192.168.1.20/24\"")
            })?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{ip:?} is not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| (1..=max).contains(p))
                .ok_or_else(|| format!("{prefix:?} is not a prefix length (1-{max})"))?;
            let gateway = match t.get("gateway") {
                None => None,
                Some(v) => {
                    let s = string(v)?;
                    Some(
                        s.parse::<IpAddr>()
                            .map_err(|_| format!("gateway {s:?} is not an IP address"))?,
                    )
                }
            };
            let mut dns = Vec::new();
            if let Some(v) = t.get("dns") {
                for d in v
                    .as_array()
                    .ok_or_else(|| "dns must be a list of addresses".to_string())?
                {
                    let s = string(d)?;
                    dns.push(
                        s.parse::<IpAddr>()
                            .map_err(|_| format!("dns {s:?} is not an IP address"))?,
                    );
                }
            }
            Ok(Network::Static {
                address: ip,
                prefix,
                gateway,
                dns,
            })
        }
        other => Err(format!("mode {other:?} is neither \"dhcp\" nor \"static\"")),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zoneinfo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("Europe")).unwrap();
        std::fs::write(dir.path().join("Europe/Berlin"), b"TZif").unwrap();
        dir
    }

    #[test]
    fn static_network_and_zone_are_read() {
        let z = zoneinfo();
        let c = BootConfig::read(
            "listen = \"[::]:5000\"\n[system]\nhostname = \"chat\"\ntimezone = \"Europe/Berlin\"\n\
             [system.network]\nmode = \"static\"\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.0.1\"\ndns = [\"10.0.0.1\"]\n",
            z.path(),
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(c.server_from_file);
        let shell = c.to_shell();
        assert!(shell.contains("QUINCE_PORT=5000\n"), "{shell}");
        assert!(
            shell.contains(
                "NETWORK=static\nADDRESS=10.0.0.5/24\nGATEWAY=10.0.0.1\nDNS='10.0.0.1'\n"
            ),
            "{shell}"
        );
        assert!(shell.contains("TIMEZONE=Europe/Berlin\n"));
        assert!(shell.contains("HOSTNAME=chat\n"));
    }

    #[test]
    fn each_bad_setting_falls_back_alone() {
        let z = zoneinfo();
        let c = BootConfig::read(
            "[system]\nhostname = \"bad name; rm -rf /\"\ntimezone = \"../../etc/passwd\"\n\
             [system.network]\nmode = \"static\"\naddress = \"10.0.0.999/24\"\n",
            z.path(),
        );
        assert_eq!(c.problems.len(), 3, "{:?}", c.problems);
        assert_eq!(c.system, SystemConfig::default());
        assert!(c.server_from_file, "the server options were fine");
        assert!(c.problems.iter().any(|p| p.contains("using DHCP")));
    }

    #[test]
    fn broken_toml_means_all_defaults() {
        let z = zoneinfo();
        let c = BootConfig::read("listen = [oops\n", z.path());
        assert!(!c.server_from_file);
        assert_eq!(c.system, SystemConfig::default());
        assert_eq!(c.problems.len(), 1);
        assert!(c.to_shell().contains("NETWORK=dhcp\n"));
        assert!(c.to_shell().contains("QUINCE_PORT=4433\n"));
    }

    #[test]
    fn bad_server_option_keeps_system_settings() {
        let z = zoneinfo();
        let c = BootConfig::read(
            "max_conections = 5\n[system]\nhostname = \"chat\"\n",
            z.path(),
        );
        assert!(!c.server_from_file);
        assert_eq!(c.system.hostname, "chat");
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
    }
}
