//! The command-line client's memory: which server and account a profile uses,
//! and the certificate fingerprints pinned for each server (like SSH's
//! known_hosts). Kept under `$QUINCE_HOME`, else the user's config directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// A logged-in account on a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub server: String,
    pub user: String,
    pub device: u64,
    pub token: String,
}

pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("QUINCE_HOME") {
        return Ok(PathBuf::from(dir));
    }
    match dirs::config_dir() {
        Some(dir) => Ok(dir.join("quince")),
        None => bail!("no config directory; set QUINCE_HOME"),
    }
}

fn profile_path(name: &str) -> anyhow::Result<PathBuf> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        bail!("a profile name is letters, digits, '-', '_' and '.'");
    }
    Ok(home()?.join("profiles").join(format!("{name}.toml")))
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    quince::tls::write_private(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn load(name: &str) -> anyhow::Result<Profile> {
    let path = profile_path(name)?;
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("profile '{name}' is not logged in ({} missing); run `quince login` or `quince register` first", path.display())
    })?;
    toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

pub fn save(name: &str, profile: &Profile) -> anyhow::Result<()> {
    write_private(&profile_path(name)?, &toml::to_string(profile)?)
}

pub fn remove(name: &str) -> anyhow::Result<()> {
    let path = profile_path(name)?;
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

fn known_path() -> anyhow::Result<PathBuf> {
    Ok(home()?.join("known_servers.toml"))
}

/// The pinned fingerprint of a server address, if any.
pub fn pinned(server: &str) -> anyhow::Result<Option<String>> {
    let path = known_path()?;
    if !path.exists() {
        return Ok(None);
    }
    let known: BTreeMap<String, String> = toml::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(known.get(server).cloned())
}

pub fn pin(server: &str, fingerprint: &str) -> anyhow::Result<()> {
    let path = known_path()?;
    let mut known: BTreeMap<String, String> = if path.exists() {
        toml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("reading {}", path.display()))?
    } else {
        BTreeMap::new()
    };
    known.insert(server.to_string(), fingerprint.to_string());
    write_private(&path, &toml::to_string(&known)?)
}
