//! The `quince` client commands, built on `quince::client`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use quince::client::{Client, Trust};
use quince::protocol::{
    Body, ConvKind, GroupRole, Message, PowerNotice, PowerState, Role, Target, Throttling,
};
use tokio::io::AsyncBufReadExt;

use crate::profile::{self, Profile};

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create an account with an invite token and log this profile in.
    Register {
        /// Server address, host:port (port 4433 if left out).
        #[arg(long)]
        server: String,
        #[arg(long)]
        invite: String,
        username: String,
        /// Expected server certificate fingerprint (else shown and pinned on first use).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Name of this device [default: cli@HOSTNAME].
        #[arg(long)]
        device: Option<String>,
    },
    /// Log this profile in with a password.
    Login {
        #[arg(long)]
        server: String,
        username: String,
        #[arg(long)]
        fingerprint: Option<String>,
        #[arg(long)]
        device: Option<String>,
    },
    /// Log out: revoke this device's token and forget it.
    Logout,
    /// Show who this profile is logged in as.
    Whoami,
    /// Send one message to a user (or a group with --group).
    Send {
        /// Recipient user name, or a conversation id with --group.
        to: String,
        text: String,
        #[arg(long)]
        group: bool,
    },
    /// Send a file to a user (or a group with --group), with an optional text.
    SendFile {
        /// Recipient user name, or a conversation id with --group.
        to: String,
        path: PathBuf,
        #[arg(long)]
        group: bool,
        /// A text to go with the file.
        #[arg(long)]
        text: Option<String>,
    },
    /// Download an attachment by its id (shown in `history`) to PATH.
    Fetch { id: String, path: PathBuf },
    /// Chat interactively: type lines to send, see incoming messages as they arrive.
    Chat {
        to: String,
        #[arg(long)]
        group: bool,
    },
    /// Show a conversation's history.
    History {
        to: String,
        #[arg(long)]
        group: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Show messages before this sequence number (page backwards).
        #[arg(long)]
        before: Option<u64>,
    },
    /// List conversations, with unread counts and the last message.
    Conversations,
    /// Reply to message SEQ of a conversation (quote it).
    Reply {
        to: String,
        seq: u64,
        text: String,
        #[arg(long)]
        group: bool,
    },
    /// Edit your message SEQ (within the server's edit window, 24 h by default).
    Edit {
        to: String,
        seq: u64,
        text: String,
        #[arg(long)]
        group: bool,
    },
    /// Recall message SEQ: yours within the recall window (2 min by default),
    /// or any in a group you own or administer. Its content is deleted.
    Recall {
        to: String,
        seq: u64,
        #[arg(long)]
        group: bool,
    },
    /// React to message SEQ with an emoji (or take the reaction back with --remove).
    React {
        to: String,
        seq: u64,
        emoji: String,
        #[arg(long)]
        group: bool,
        #[arg(long)]
        remove: bool,
    },
    /// Mark a conversation read (up to SEQ, or everything).
    Read {
        to: String,
        seq: Option<u64>,
        #[arg(long)]
        group: bool,
    },
    /// Who has received and read how far in a conversation.
    Receipts {
        to: String,
        #[arg(long)]
        group: bool,
    },
    /// Delete a conversation from your view (all your devices); the others keep theirs.
    Delete {
        to: String,
        #[arg(long)]
        group: bool,
    },
    /// Groups: create, add, remove, leave, members.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Administration (admin accounts only).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Back up the server (admin only) while it runs: its messages, accounts,
    /// certificate and key, into one file (restore with `quince restore`).
    Backup {
        /// File to write, or a directory to put quince-YYYYMMDDTHHMMSSZ.qbk in.
        dest: PathBuf,
        /// Encrypt with a passphrase (asked for, or --passphrase-file).
        #[arg(long)]
        encrypt: bool,
        /// Read the passphrase from the first line of this file (implies --encrypt).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Show your contacts' presence: online, away, or offline (with last seen).
    Presence,
    /// Tell a user (or a group with --group) that you are typing.
    Typing {
        /// User name, or a conversation id with --group.
        to: String,
        #[arg(long)]
        group: bool,
        /// Say you stopped typing instead.
        #[arg(long)]
        stop: bool,
    },
    /// Show as `away` (or `online`) to your contacts while this runs, until
    /// end of input (Ctrl-D) or Ctrl-C.
    SetPresence {
        #[arg(value_enum)]
        state: PresenceArg,
    },
}

/// The states a device can choose (`offline` is what disconnecting is).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PresenceArg {
    Online,
    Away,
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a group; prints its conversation id.
    Create {
        name: String,
        members: Vec<String>,
    },
    Add {
        conv: u64,
        user: String,
    },
    Remove {
        conv: u64,
        user: String,
    },
    Leave {
        conv: u64,
    },
    Members {
        conv: u64,
    },
    /// Owner: rename the group.
    Rename {
        conv: u64,
        name: String,
    },
    /// Owner: make a member an admin (admins add and remove members).
    Promote {
        conv: u64,
        user: String,
    },
    /// Owner: make an admin a plain member again.
    Demote {
        conv: u64,
        user: String,
    },
    /// Owner: hand the group to another member (you stay on as an admin).
    Transfer {
        conv: u64,
        user: String,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Make an invite token.
    Invite {
        /// The invite creates an administrator.
        #[arg(long)]
        admin: bool,
        /// Hours until it expires [default: the server's setting].
        #[arg(long)]
        ttl_hours: Option<u64>,
    },
    Users,
    Disable {
        user: String,
    },
    Enable {
        user: String,
    },
    /// Set a new password; the user's devices are logged out.
    ResetPassword {
        user: String,
    },
    Status,
}

/// Clients opened by a command, closed politely when it ends.
static OPEN: std::sync::Mutex<Vec<Client>> = std::sync::Mutex::new(Vec::new());

pub async fn run(profile_name: &str, command: ClientCommand) -> anyhow::Result<()> {
    let result = run_command(profile_name, command).await;
    let open: Vec<Client> = std::mem::take(&mut *OPEN.lock().unwrap_or_else(|e| e.into_inner()));
    for client in open {
        client.close().await;
    }
    result
}

async fn run_command(profile_name: &str, command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Register {
            server,
            invite,
            username,
            fingerprint,
            device,
        } => {
            let password = read_password("new password: ", true)?;
            let client = connect_new(&server, fingerprint).await?;
            let session = client
                .register(&invite, &username, &password, &device_name(device))
                .await?;
            save(profile_name, &server, session)?;
            println!("registered {username}; profile '{profile_name}' is logged in");
        }
        ClientCommand::Login {
            server,
            username,
            fingerprint,
            device,
        } => {
            let password = read_password("password: ", false)?;
            let client = connect_new(&server, fingerprint).await?;
            let session = client
                .login(&username, &password, &device_name(device))
                .await?;
            save(profile_name, &server, session)?;
            println!("logged in as {username}");
        }
        ClientCommand::Logout => {
            let (client, _) = resume(profile_name).await?;
            client.logout().await?;
            profile::remove(profile_name)?;
            println!("logged out");
        }
        ClientCommand::Whoami => {
            let (client, p) = resume(profile_name).await?;
            let me = client.whoami().await?;
            println!(
                "{} on {} (role {}, device {})",
                me.user,
                p.server,
                role(me.role),
                me.device
            );
        }
        ClientCommand::Send { to, text, group } => {
            let (client, _) = resume(profile_name).await?;
            let ack = client.send(target(&to, group)?, &text, None).await?;
            println!("sent (conversation {}, #{})", ack.conv, ack.seq);
        }
        ClientCommand::History {
            to,
            group,
            limit,
            before,
        } => {
            let (client, p) = resume(profile_name).await?;
            let Some(conv) = find_conv(&client, &to, group).await? else {
                println!("no messages with {to} yet");
                return Ok(());
            };
            let page = client.history(conv, None, before, limit).await?;
            for m in &page.messages {
                println!("{}", show(m, &p.user));
            }
            if let (true, Some(first)) = (page.more, page.messages.first()) {
                println!("(older: --before {})", first.seq);
            }
        }
        ClientCommand::Conversations => {
            let (client, p) = resume(profile_name).await?;
            for c in client.conversations().await?.conversations {
                let kind = match c.kind {
                    ConvKind::Direct => "direct",
                    ConvKind::Group => "group",
                };
                let left = if c.member { "" } else { " (left)" };
                println!(
                    "{:>6}  {kind:<6}  {}{left}  {} unread",
                    c.conv, c.name, c.unread
                );
                if let Some(last) = &c.last {
                    println!("        {}", show(last, &p.user));
                }
            }
        }
        ClientCommand::Reply {
            to,
            seq,
            text,
            group,
        } => {
            let (client, _) = resume(profile_name).await?;
            let conv = existing_conv(&client, &to, group).await?;
            let draft = quince::client::Draft {
                text,
                reply_to: Some(seq),
                ..Default::default()
            };
            let ack = client
                .send_draft(Target::Conv(conv), quince::client::new_mid(), draft)
                .await?;
            println!("sent (conversation {}, #{})", ack.conv, ack.seq);
        }
        ClientCommand::Edit {
            to,
            seq,
            text,
            group,
        } => {
            let (client, _) = resume(profile_name).await?;
            let conv = existing_conv(&client, &to, group).await?;
            let ack = client.edit(conv, seq, &text).await?;
            println!("edited #{seq} (event #{})", ack.seq);
        }
        ClientCommand::Recall { to, seq, group } => {
            let (client, _) = resume(profile_name).await?;
            let conv = existing_conv(&client, &to, group).await?;
            client.recall(conv, seq).await?;
            println!("recalled #{seq}");
        }
        ClientCommand::React {
            to,
            seq,
            emoji,
            group,
            remove,
        } => {
            let (client, _) = resume(profile_name).await?;
            let conv = existing_conv(&client, &to, group).await?;
            client.react(conv, seq, &emoji, !remove).await?;
        }
        ClientCommand::Read { to, seq, group } => {
            let (client, _) = resume(profile_name).await?;
            let conv = existing_conv(&client, &to, group).await?;
            let seq = match seq {
                Some(seq) => seq,
                None => client
                    .conversations()
                    .await?
                    .conversations
                    .iter()
                    .find(|c| c.conv == conv)
                    .map(|c| c.last_seq)
                    .unwrap_or(0),
            };
            client.mark_read(conv, seq).await?;
        }
        ClientCommand::Receipts { to, group } => {
            let (client, _) = resume(profile_name).await?;
            let conv = existing_conv(&client, &to, group).await?;
            for r in client.receipts(conv).await?.members {
                println!(
                    "{:<32} received up to #{:<6} read up to #{}",
                    r.user, r.delivered, r.read
                );
            }
        }
        ClientCommand::Delete { to, group } => {
            let (client, _) = resume(profile_name).await?;
            let conv = existing_conv(&client, &to, group).await?;
            client.delete_conversation(conv).await?;
            println!("deleted conversation {conv} from your view");
        }
        ClientCommand::Chat { to, group } => chat(profile_name, &to, group).await?,
        ClientCommand::SendFile {
            to,
            path,
            group,
            text,
        } => send_file(profile_name, &to, &path, group, text).await?,
        ClientCommand::Fetch { id, path } => fetch(profile_name, &id, &path).await?,
        ClientCommand::Presence => show_presence(profile_name).await?,
        ClientCommand::Typing { to, group, stop } => {
            send_typing(profile_name, &to, group, !stop).await?
        }
        ClientCommand::SetPresence { state } => hold_presence(profile_name, state).await?,
        ClientCommand::Backup {
            dest,
            encrypt,
            passphrase_file,
        } => {
            let passphrase = if encrypt || passphrase_file.is_some() {
                Some(read_passphrase(passphrase_file.as_deref(), true)?)
            } else {
                None
            };
            let (client, p) = resume(profile_name).await?;
            let download = client.admin_backup().await?;
            let bytes = download.ready().bytes;
            let sha256 = download.ready().sha256.clone();
            let encrypted = passphrase.is_some();
            let path = quince::backup::save(download, &dest, passphrase).await?;
            println!(
                "backed up {} ({:.1} MiB, SHA-256 {sha256}{}) to {}",
                p.server,
                mib(bytes),
                if encrypted { ", encrypted" } else { "" },
                path.display()
            );
        }
        ClientCommand::Group(g) => {
            let (client, _) = resume(profile_name).await?;
            match g {
                GroupCommand::Create { name, members } => {
                    let members: Vec<&str> = members.iter().map(String::as_str).collect();
                    let conv = client.group_create(&name, &members).await?;
                    println!("created group {name}: conversation {conv}");
                }
                GroupCommand::Add { conv, user } => client.group_add(conv, &user).await?,
                GroupCommand::Remove { conv, user } => client.group_remove(conv, &user).await?,
                GroupCommand::Leave { conv } => client.group_leave(conv).await?,
                GroupCommand::Members { conv } => {
                    let members = client.group_members(conv).await?;
                    println!("{}:", members.name);
                    for m in members.members {
                        match m.role {
                            GroupRole::Member => println!("  {}", m.user),
                            role => println!("  {} ({})", m.user, group_role(role)),
                        }
                    }
                }
                GroupCommand::Rename { conv, name } => client.group_rename(conv, &name).await?,
                GroupCommand::Promote { conv, user } => client.group_promote(conv, &user).await?,
                GroupCommand::Demote { conv, user } => client.group_demote(conv, &user).await?,
                GroupCommand::Transfer { conv, user } => client.group_transfer(conv, &user).await?,
            }
        }
        ClientCommand::Admin(a) => {
            let (client, _) = resume(profile_name).await?;
            match a {
                AdminCommand::Invite { admin, ttl_hours } => {
                    let r = if admin { Role::Admin } else { Role::Member };
                    let invite = client.admin_invite(r, ttl_hours.map(|h| h * 3600)).await?;
                    println!("{}", invite.token);
                }
                AdminCommand::Users => {
                    for u in client.admin_users().await?.users {
                        let state = if u.disabled { "disabled" } else { "active" };
                        println!(
                            "{:<32} {:<6} {state:<8} {} devices",
                            u.user,
                            role(u.role),
                            u.devices
                        );
                    }
                }
                AdminCommand::Disable { user } => client.admin_disable(&user).await?,
                AdminCommand::Enable { user } => client.admin_enable(&user).await?,
                AdminCommand::ResetPassword { user } => {
                    let password = read_password(&format!("new password for {user}: "), true)?;
                    client.admin_reset_password(&user, &password).await?;
                }
                AdminCommand::Status => {
                    let s = client.admin_status().await?;
                    println!("version        {}", s.version);
                    println!("uptime         {} s", s.uptime_secs);
                    println!("connections    {}", s.connections);
                    println!("users          {}", s.users);
                    println!("messages       {}", s.messages);
                    println!("store          {:.1} MiB", mib(s.store_bytes));
                    println!("disk free      {:.1} MiB", mib(s.disk_free_bytes));
                    println!(
                        "memory (RSS)   {:.1} MiB of {:.0} MiB",
                        mib(s.memory_rss_bytes),
                        mib(s.memory_total_bytes)
                    );
                    println!(
                        "load average   {:.2} {:.2} {:.2}",
                        s.load_average[0], s.load_average[1], s.load_average[2]
                    );
                    match s.temperature_c {
                        Some(t) => println!("temperature    {t:.1} °C"),
                        None => println!("temperature    (no sensor)"),
                    }
                    println!("throttling     {}", throttling_line(s.throttling.as_ref()));
                    let power = match (s.power.state, s.power.shutdown_in_secs) {
                        (PowerState::Online, _) => "mains (or no UPS watched)".to_string(),
                        (PowerState::OnBattery, Some(secs)) => {
                            format!("on battery, shutting down in {secs} s")
                        }
                        (PowerState::OnBattery, None) => "on battery".to_string(),
                        (PowerState::LowBattery, _) => "battery low".to_string(),
                        (PowerState::ShuttingDown, _) => "shutting down".to_string(),
                    };
                    println!("power          {power}");
                    let when = |t: Option<u64>| {
                        t.map(quince::backup::format_utc)
                            .unwrap_or_else(|| "never".into())
                    };
                    match s.backup_next {
                        None => println!("backups        not scheduled"),
                        Some(next) => {
                            println!("last backup    {}", when(s.backup_last_success));
                            if let Some(e) = &s.backup_last_error {
                                println!("backup FAILED  {e}");
                            }
                            println!("next backup    {}", quince::backup::format_utc(next));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// One line for `admin status`: what slows the CPU now, what the firmware
/// flagged earlier, and the clock. Only what the server could find out is named.
fn throttling_line(t: Option<&Throttling>) -> String {
    let Some(t) = t else {
        return "(not reported)".into();
    };
    let named = |flags: [(Option<bool>, &'static str); 4]| {
        let known = flags.iter().any(|(f, _)| f.is_some());
        let set: Vec<&str> = flags
            .iter()
            .filter(|(f, _)| *f == Some(true))
            .map(|(_, name)| *name)
            .collect();
        (known, set)
    };
    let (now_known, now) = named([
        (t.under_voltage, "UNDER-VOLTAGE"),
        (t.frequency_capped, "frequency capped"),
        (t.throttled, "throttled"),
        (t.soft_temp_limit, "soft temperature limit"),
    ]);
    let (_, before) = named([
        (t.under_voltage_occurred, "under-voltage"),
        (t.frequency_capped_occurred, "frequency capped"),
        (t.throttled_occurred, "throttled"),
        (t.soft_temp_limit_occurred, "soft temperature limit"),
    ]);
    let mut parts = Vec::new();
    if now_known {
        parts.push(if now.is_empty() {
            "none now".to_string()
        } else {
            format!("now {}", now.join(", "))
        });
    }
    if !before.is_empty() {
        parts.push(format!("earlier {}", before.join(", ")));
    }
    match (t.cpu_mhz, t.cpu_max_mhz) {
        (Some(cur), Some(max)) => parts.push(format!("CPU {cur} of {max} MHz")),
        (Some(cur), None) => parts.push(format!("CPU {cur} MHz")),
        (None, Some(max)) => parts.push(format!("CPU up to {max} MHz")),
        (None, None) => {}
    }
    if parts.is_empty() {
        "(not reported)".into()
    } else {
        parts.join("; ")
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn group_role(r: GroupRole) -> &'static str {
    match r {
        GroupRole::Owner => "owner",
        GroupRole::Admin => "admin",
        GroupRole::Member => "member",
    }
}

fn device_name(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| format!("cli@{}", h.trim()))
            .unwrap_or_else(|_| "cli".into())
    })
}

/// Reads a password from `QUINCE_PASSWORD`, the terminal (without echo), or a
/// line of standard input when it is not a terminal.
fn read_password(prompt: &str, confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("QUINCE_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(prompt)?;
        if confirm && rpassword::prompt_password("again: ")? != p {
            bail!("the passwords differ");
        }
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// A backup passphrase: the first line of `file`, else asked at the terminal
/// (twice when `confirm`), else one line of standard input.
pub fn read_passphrase(
    file: Option<&Path>,
    confirm: bool,
) -> anyhow::Result<quince::backup::SecretString> {
    if let Some(file) = file {
        return Ok(quince::backup::read_passphrase_file(file)?);
    }
    let p = if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("backup passphrase: ")?;
        if confirm && rpassword::prompt_password("again: ")? != p {
            bail!("the passphrases differ");
        }
        p
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if p.is_empty() {
        bail!("an empty passphrase would not protect anything");
    }
    Ok(p.into())
}

/// Canonical form of a server address: host:port, port 4433 by default.
fn canonical(server: &str) -> String {
    let has_port = match server.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        server.to_string()
    } else {
        format!("{server}:4433")
    }
}

async fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("cannot resolve {server}"))?
        .next()
        .with_context(|| format!("{server} has no address"))
}

/// Connects to a server for register/login, pinning its certificate on first use.
async fn connect_new(server: &str, expected: Option<String>) -> anyhow::Result<Client> {
    let server = canonical(server);
    let addr = resolve(&server).await?;
    if let Some(pinned) = profile::pinned(&server)? {
        let client = Client::connect(addr, Trust::Pinned(pinned)).await?;
        OPEN.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client.clone());
        return Ok(client);
    }
    let client = match &expected {
        Some(fp) => Client::connect(addr, Trust::Pinned(fp.to_ascii_lowercase())).await?,
        None => Client::connect(addr, Trust::FirstUse).await?,
    };
    OPEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(client.clone());
    if expected.is_none() {
        eprintln!("The server at {server} presents a certificate with SHA-256 fingerprint");
        eprintln!("  {}", client.fingerprint());
        eprintln!("Compare it with the fingerprint the server printed when it started.");
        if std::io::stdin().is_terminal() && std::env::var_os("QUINCE_PASSWORD").is_none() {
            eprint!("Trust this server from now on? [y/N] ");
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !answer.trim().eq_ignore_ascii_case("y")
                && !answer.trim().eq_ignore_ascii_case("yes")
            {
                bail!("not trusted; nothing was saved");
            }
        }
    }
    profile::pin(&server, client.fingerprint())?;
    eprintln!("pinned {server} ({})", client.fingerprint());
    Ok(client)
}

fn save(
    profile_name: &str,
    server: &str,
    session: quince::protocol::Session,
) -> anyhow::Result<()> {
    let token = session.token.context("the server sent no device token")?;
    profile::save(
        profile_name,
        &Profile {
            server: canonical(server),
            user: session.user,
            device: session.device,
            token,
        },
    )
}

/// Connects with the profile's pinned fingerprint and resumes its session.
async fn resume(profile_name: &str) -> anyhow::Result<(Client, Profile)> {
    let p = profile::load(profile_name)?;
    let pinned = profile::pinned(&p.server)?
        .with_context(|| format!("no pinned certificate for {}; log in again", p.server))?;
    let client = Client::connect(resolve(&p.server).await?, Trust::Pinned(pinned)).await?;
    OPEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(client.clone());
    client.resume(&p.token).await?;
    Ok((client, p))
}

fn target(to: &str, group: bool) -> anyhow::Result<Target> {
    if group {
        Ok(Target::Conv(to.parse().context(
            "--group takes a conversation id (see `quince conversations`)",
        )?))
    } else {
        Ok(Target::User(to.to_string()))
    }
}

/// The conversation id of a user's direct chat or a group id.
async fn find_conv(client: &Client, to: &str, group: bool) -> anyhow::Result<Option<u64>> {
    if group {
        return Ok(Some(to.parse().context("--group takes a conversation id")?));
    }
    let list = client.conversations().await?;
    Ok(list
        .conversations
        .iter()
        .find(|c| c.kind == ConvKind::Direct && c.name == to)
        .map(|c| c.conv))
}

/// The conversation `to` names, which must exist.
async fn existing_conv(client: &Client, to: &str, group: bool) -> anyhow::Result<u64> {
    find_conv(client, to, group)
        .await?
        .with_context(|| format!("no conversation with {to} yet"))
}

/// Seconds since the epoch as HH:MM:SS (UTC); a full date library is not worth
/// its weight for a timestamp prefix.
fn clock(ts_ms: u64) -> String {
    let s = ts_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn show(m: &Message, me: &str) -> String {
    let who = if m.from == me {
        "you".to_string()
    } else {
        m.from.clone()
    };
    let text = match &m.body {
        Body::Text {
            text,
            reply_to,
            attachment,
            edited,
            reactions,
            ..
        } => {
            let mut line = format!("{who}: ");
            if let Some(quoted) = reply_to {
                line.push_str(&format!("(reply to #{quoted}) "));
            }
            if let Some(a) = attachment {
                let size = quince::store::human_size(a.size);
                line.push_str(&format!("[file {}, {size}, id {}] ", a.name, a.id));
            }
            line.push_str(text);
            line.truncate(line.trim_end().len());
            if edited.is_some() {
                line.push_str(" (edited)");
            }
            for r in reactions {
                line.push_str(&format!(" [{} {}]", r.emoji, r.users.join(", ")));
            }
            line
        }
        Body::GroupCreated { name } => format!("* {who} created the group {name}"),
        Body::MemberAdded { user } => format!("* {who} added {user}"),
        Body::MemberRemoved { user } => format!("* {who} removed {user}"),
        Body::MemberLeft { user } => format!("* {user} left"),
        Body::Recalled {} => format!("* {who} recalled a message"),
        Body::Edit { of, text } => format!("* {who} edited #{of}: {text}"),
        Body::Recall { of } => format!("* {who} recalled #{of}"),
        Body::Reaction { of, emoji, add } => {
            if *add {
                format!("* {who} reacted {emoji} to #{of}")
            } else {
                format!("* {who} took back {emoji} from #{of}")
            }
        }
        Body::GroupRenamed { name } => format!("* {who} renamed the group to {name}"),
        Body::RoleChanged { user, role } => format!("* {who} made {user} {}", group_role(*role)),
        Body::OwnerChanged { user } => format!("* {who} handed the group to {user}"),
    };
    format!("[{}] #{} {text}", clock(m.ts), m.seq)
}

/// What the chat shows for an event about the conversation on screen.
fn receipt_line(event: &quince::protocol::Event, conv: Option<u64>, me: &str) -> Option<String> {
    use quince::protocol::Event;
    match event {
        Event::Read(r) if Some(r.conv) == conv && r.user != me => {
            Some(format!("({} has read up to #{})", r.user, r.seq))
        }
        _ => None,
    }
}

/// What the chat shows when the server's power changes.
fn power_line(notice: &PowerNotice) -> String {
    match (notice.state, notice.shutdown_in_secs) {
        (PowerState::Online, _) => "(the server is on mains power again)".into(),
        (PowerState::OnBattery, Some(secs)) => {
            format!("(the server runs on its UPS battery; it shuts down in {secs} s unless the power returns)")
        }
        (PowerState::OnBattery, None) => "(the server runs on its UPS battery)".into(),
        (PowerState::LowBattery, _) => "(the server's UPS battery is low)".into(),
        (PowerState::ShuttingDown, _) => {
            "(the server is shutting down for a power loss; messages cannot be sent until it is back)".into()
        }
    }
}

async fn chat(profile_name: &str, to: &str, group: bool) -> anyhow::Result<()> {
    let (client, p) = resume(profile_name).await?;
    let mut conv = find_conv(&client, to, group).await?;
    if let Some(c) = conv {
        // Context: the last few messages already seen on this device; the
        // subscription below brings what it has not seen yet.
        let list = client.conversations().await?.conversations;
        let cursor = list
            .iter()
            .find(|s| s.conv == c)
            .map(|s| s.cursor)
            .unwrap_or(0);
        if cursor > 0 {
            for m in client
                .history(c, None, Some(cursor + 1), 10)
                .await?
                .messages
            {
                println!("{}", show(&m, &p.user));
            }
        }
    }
    let mut events = client.events();
    let mut inbox = client.subscribe().await?;
    eprintln!(
        "chatting with {to} as {}; type a line and press Enter to send, Ctrl-D to quit",
        p.user
    );
    let peers = chat_peers(&client, to, conv, group, &p.user).await;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut power = client.power();
    loop {
        tokio::select! {
            Ok(()) = power.changed() => {
                let notice = power.borrow_and_update().clone();
                eprintln!("{}", power_line(&notice));
            }
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                if line.trim().is_empty() { continue; }
                if chat_presence_command(&client, &line).await { continue; }
                let dest = match conv { Some(c) => Target::Conv(c), None => target(to, group)? };
                let ack = client.send(dest, &line, None).await?;
                conv = Some(ack.conv);
            }
            Ok(event) = events.recv() => {
                let line = chat_event_line(&event, conv, &peers)
                    .or_else(|| receipt_line(&event, conv, &p.user));
                if let Some(line) = line {
                    eprintln!("{line}");
                }
            }
            message = inbox.recv() => {
                let Some(m) = message else {
                    bail!("disconnected: {}", client.closed().await);
                };
                let ours = match conv {
                    Some(c) => m.conv == c,
                    None => !group && m.from == to,
                };
                if ours {
                    conv = Some(m.conv);
                    println!("{}", show(&m, &p.user));
                    // Shown on the screen is read: tell the sender and our other devices.
                    let (reader, seq) = (client.clone(), m.seq);
                    tokio::spawn(async move { reader.mark_read(m.conv, seq).await });
                } else {
                    println!("(conversation {} from {}: {})", m.conv, m.from, show(&m, &p.user));
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

// ---- Presence and typing: commands, and what `quince chat` shows of them ----

async fn show_presence(profile_name: &str) -> anyhow::Result<()> {
    let (client, _) = resume(profile_name).await?;
    let list = client.presence().await?.users;
    if list.is_empty() {
        println!("no contacts yet (people you share a conversation with)");
    }
    let width = list.iter().map(|i| i.user.len()).max().unwrap_or(0);
    for info in &list {
        println!("{:<width$}  {}", info.user, presence_state(info));
    }
    Ok(())
}

async fn send_typing(
    profile_name: &str,
    to: &str,
    group: bool,
    active: bool,
) -> anyhow::Result<()> {
    let (client, _) = resume(profile_name).await?;
    let Some(conv) = find_conv(&client, to, group).await? else {
        bail!("no conversation with {to} yet; send a message first");
    };
    client.typing(conv, active).await?;
    println!(
        "told {to} you {}",
        if active {
            "are typing"
        } else {
            "stopped typing"
        }
    );
    Ok(())
}

async fn hold_presence(profile_name: &str, state: PresenceArg) -> anyhow::Result<()> {
    let (client, _) = resume(profile_name).await?;
    let (state, name) = match state {
        PresenceArg::Online => (quince::protocol::PresenceState::Online, "online"),
        PresenceArg::Away => (quince::protocol::PresenceState::Away, "away"),
    };
    client.set_presence(state).await?;
    eprintln!("showing as {name} to your contacts; Ctrl-D or Ctrl-C to stop");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    tokio::select! {
        _ = async { while let Ok(Some(_)) = lines.next_line().await {} } => {}
        _ = tokio::signal::ctrl_c() => {}
        reason = client.closed() => bail!("disconnected: {reason}"),
    }
    Ok(())
}

/// "away", "online", "offline, last seen 14:02:11" (UTC; with the date when
/// over a day ago), or "offline" when the server has never seen them leave.
fn presence_state(info: &quince::protocol::PresenceInfo) -> String {
    use quince::protocol::PresenceState;
    match (info.state, info.last_seen) {
        (PresenceState::Online, _) => "online".into(),
        (PresenceState::Away, _) => "away".into(),
        (PresenceState::Offline, None) => "offline".into(),
        (PresenceState::Offline, Some(ms)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let when = if now.saturating_sub(ms) < 86_400_000 {
                clock(ms)
            } else {
                quince::backup::format_utc(ms)
            };
            format!("offline, last seen {when}")
        }
    }
}

/// Who a chat shows presence for: the peer, or the group's other members.
async fn chat_peers(
    client: &Client,
    to: &str,
    conv: Option<u64>,
    group: bool,
    me: &str,
) -> Vec<String> {
    let peers = match (group, conv) {
        (false, _) => vec![to.to_string()],
        (true, Some(c)) => match client.group_members(c).await {
            Ok(m) => m
                .members
                .into_iter()
                .map(|m| m.user)
                .filter(|u| u != me)
                .collect(),
            Err(_) => Vec::new(),
        },
        (true, None) => Vec::new(),
    };
    // Where they are now; a server with presence switched off says nothing.
    if let Ok(list) = client.presence().await {
        for info in list.users.iter().filter(|i| peers.contains(&i.user)) {
            eprintln!("({} is {})", info.user, presence_state(info));
        }
    }
    peers
}

/// `/away` and `/online` typed in a chat set this device's presence.
async fn chat_presence_command(client: &Client, line: &str) -> bool {
    let state = match line.trim() {
        "/away" => quince::protocol::PresenceState::Away,
        "/online" => quince::protocol::PresenceState::Online,
        _ => return false,
    };
    match client.set_presence(state).await {
        Ok(()) => eprintln!("(you show as {})", line.trim().trim_start_matches('/')),
        Err(e) => eprintln!("(cannot set presence: {e})"),
    }
    true
}

/// What a chat shows of a presence or typing event, if it concerns the chat.
fn chat_event_line(
    event: &quince::protocol::Event,
    conv: Option<u64>,
    peers: &[String],
) -> Option<String> {
    use quince::protocol::Event;
    match event {
        Event::Presence(info) if peers.contains(&info.user) => {
            Some(format!("({} is {})", info.user, presence_state(info)))
        }
        Event::Typing(t) if Some(t.conv) == conv => Some(if t.active {
            format!("({} is typing…)", t.user)
        } else {
            format!("({} stopped typing)", t.user)
        }),
        _ => None,
    }
}

// --- Attachments --------------------------------------------------------------

/// Files from this size on get a progress line on stderr.
const PROGRESS_FROM: u64 = 1024 * 1024;

/// A progress line on stderr for a large transfer, redrawn at most ten times
/// a second.
struct ProgressLine {
    label: String,
    last: Option<std::time::Instant>,
    shown: bool,
}

impl ProgressLine {
    fn new(label: String) -> ProgressLine {
        ProgressLine {
            label,
            last: None,
            shown: false,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if total < PROGRESS_FROM {
            return;
        }
        let now = std::time::Instant::now();
        if done < total
            && self
                .last
                .is_some_and(|t| now - t < std::time::Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        self.shown = true;
        let percent = done.saturating_mul(100) / total.max(1);
        eprint!(
            "\r{}: {:.1} of {:.1} MiB ({percent}%)   ",
            self.label,
            mib(done),
            mib(total)
        );
    }

    fn end(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// A media type for common file name extensions; None for the rest.
fn guess_mime(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let mime = match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "m4a" => "audio/mp4",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        _ => return None,
    };
    Some(mime.to_string())
}

async fn send_file(
    profile_name: &str,
    to: &str,
    path: &Path,
    group: bool,
    text: Option<String>,
) -> anyhow::Result<()> {
    let dest = target(to, group)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", path.display()))?
        .to_string();
    let (client, _) = resume(profile_name).await?;
    let mut line = ProgressLine::new(format!("uploading {name}"));
    let uploaded = client
        .upload(path, |done, total| line.update(done, total))
        .await;
    line.end();
    let uploaded = uploaded.with_context(|| format!("uploading {}", path.display()))?;
    let draft = quince::client::Draft {
        text: text.unwrap_or_default(),
        attachment: Some(quince::protocol::AttachmentRef {
            id: uploaded.id.clone(),
            name,
            mime: guess_mime(path),
        }),
        ..Default::default()
    };
    let ack = client
        .send_draft(dest, quince::client::new_mid(), draft)
        .await?;
    println!(
        "sent {} ({}, id {}) (conversation {}, #{})",
        path.display(),
        quince::store::human_size(uploaded.size),
        uploaded.id,
        ack.conv,
        ack.seq
    );
    Ok(())
}

async fn fetch(profile_name: &str, id: &str, path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "{} is a directory; give the file name to save as",
            path.display()
        );
    }
    let (client, _) = resume(profile_name).await?;
    let mut line = ProgressLine::new(format!("downloading {}", path.display()));
    let size = client
        .download(id, path, |done, total| line.update(done, total))
        .await;
    line.end();
    let size = size.with_context(|| format!("downloading {id}"))?;
    println!(
        "saved {} ({})",
        path.display(),
        quince::store::human_size(size)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_line_names_what_is_known() {
        assert_eq!(throttling_line(None), "(not reported)");
        let pi = Throttling {
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
        };
        assert_eq!(
            throttling_line(Some(&pi)),
            "now UNDER-VOLTAGE, throttled; earlier under-voltage, throttled; CPU 600 of 1800 MHz"
        );
        let pc = Throttling {
            frequency_capped: Some(false),
            cpu_mhz: Some(3900),
            cpu_max_mhz: Some(4200),
            ..Throttling::default()
        };
        assert_eq!(throttling_line(Some(&pc)), "none now; CPU 3900 of 4200 MHz");
        assert_eq!(
            throttling_line(Some(&Throttling::default())),
            "(not reported)"
        );
    }
}
