//! The `quince` command: the daemon (`quince serve`) and a command-line client.

#[cfg(feature = "bench")]
mod bench;
mod cli;
mod profile;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quince::config::Config;
use quince::server::{Server, Stopped};

#[derive(Parser)]
#[command(
    name = "quince",
    version,
    about = "A private instant-messaging server and its client"
)]
struct Args {
    /// Client profile to use (several accounts on one machine each get one).
    #[arg(long, global = true, env = "QUINCE_PROFILE", default_value = "default")]
    profile: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Prepare a data directory (store, certificate, first admin invite) and
    /// print the certificate fingerprint and any unused admin invite.
    Init(InitArgs),
    /// Restore a backup (from `quince backup` or a scheduled one) into an
    /// empty data directory; then `quince serve --data-dir DIR` serves it.
    Restore(RestoreArgs),
    /// Check a boot-partition quince.toml (used by the appliance at boot).
    #[command(hide = true)]
    BootConfig(BootConfigArgs),
    /// Measure quince (and Mosquitto, for comparison) under load; see docs/BENCHMARKS.md.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address to listen on [default: [::]:4433].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory [default: ./quince-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long)]
    log_level: Option<String>,
    /// Runtime worker threads; 0 = one per core [default: 0].
    #[arg(long)]
    worker_threads: Option<usize>,
    /// PEM certificate chain to serve instead of the self-signed one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Hardware watchdog device to arm and pet while healthy [default: none].
    #[arg(long)]
    watchdog: Option<PathBuf>,
}

#[derive(clap::Args)]
struct InitArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./quince-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup file (.qbk, encrypted or not).
    src: PathBuf,
    /// Data directory to restore into; it must be empty or not exist.
    #[arg(long)]
    data_dir: PathBuf,
    /// For an encrypted backup: read the passphrase from this file's first line.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BootConfigArgs {
    /// The owner's quince.toml (a missing file means the defaults).
    file: PathBuf,
    /// Where to write the server options `quince serve --config` should use.
    #[arg(long)]
    server_config: PathBuf,
    /// Where to write the system settings as shell variables.
    #[arg(long)]
    env: PathBuf,
    /// Directory of time zone files that `system.timezone` must name.
    #[arg(long, default_value = "/usr/share/zoneinfo")]
    zoneinfo: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Serve(serve_args) => serve(serve_args),
        Command::Init(init_args) => init(init_args),
        Command::Restore(restore_args) => restore(restore_args),
        Command::BootConfig(boot_args) => boot_config(boot_args),
        #[cfg(feature = "bench")]
        Command::Bench(bench_args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(bench::run(bench_args, &args.profile)),
        Command::Client(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cli::run(&args.profile, command))
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

/// Logs go to stderr; stdout carries only what a person or script needs.
fn init_logging(config: &Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log_level).context("log_level")?,
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in the appliance's log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_deref())?;
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    config.validate()?;
    // Opening the store can mean repairing it after a power cut: say so.
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let prepared = runtime.block_on(quince::server::prepare(&config))?;
    println!("fingerprint: {}", prepared.fingerprint);
    if let Some(invite) = prepared.pending_invite {
        println!("invite: {invite}");
    }
    Ok(())
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let file = args.passphrase_file.clone();
    let restored = quince::backup::restore(&args.src, &args.data_dir, || {
        cli::read_passphrase(file.as_deref(), false).map_err(std::io::Error::other)
    })
    .with_context(|| {
        format!(
            "cannot restore {}; nothing was written to {}",
            args.src.display(),
            args.data_dir.display()
        )
    })?;
    println!(
        "restored the backup of {} ({}{:.1} MiB database, {} attachment files of {:.1} MiB{}) into {}",
        quince::backup::format_utc(restored.created),
        if restored.encrypted {
            "encrypted, "
        } else {
            ""
        },
        restored.db_bytes as f64 / (1024.0 * 1024.0),
        restored.files,
        restored.file_bytes as f64 / (1024.0 * 1024.0),
        if restored.identity {
            ", with the server's certificate and key"
        } else {
            "; the backup had no certificate: the server makes a new one and clients must pin it again"
        },
        args.data_dir.display()
    );
    println!(
        "start it with: quince serve --data-dir {}",
        args.data_dir.display()
    );
    Ok(())
}

/// Reads the owner's file as far as it can; problems go to stdout, one per
/// line, and never stop the boot (see `quince::system`).
fn boot_config(args: BootConfigArgs) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{} not found; using the defaults", args.file.display());
            String::new()
        }
        Err(e) => {
            println!(
                "cannot read {}: {e}; using the defaults",
                args.file.display()
            );
            String::new()
        }
    };
    let boot = quince::system::BootConfig::read(&text, &args.zoneinfo);
    for problem in &boot.problems {
        println!("{problem}");
    }
    let server = if boot.server_from_file {
        text.as_str()
    } else {
        ""
    };
    std::fs::write(&args.server_config, server)
        .with_context(|| args.server_config.display().to_string())?;
    std::fs::write(&args.env, boot.to_shell()).with_context(|| args.env.display().to_string())?;
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_deref())?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.log_level {
        config.log_level = v;
    }
    if let Some(v) = args.worker_threads {
        config.worker_threads = v;
    }
    if args.cert.is_some() {
        config.cert = args.cert;
        config.key = args.key;
    }
    if args.watchdog.is_some() {
        config.watchdog = args.watchdog;
    }
    config.validate()?;
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads())
        .thread_name("quince-worker")
        .enable_all()
        .build()?;
    let stopped = runtime.block_on(async move {
        let threads = config.threads();
        let server = Server::bind(config.clone()).await?;
        let addr = server.local_addr()?;
        // stdout carries the facts a person (or a test) needs; logs go to stderr.
        println!(
            "quince {} listening on {addr} (udp, {threads} worker threads)",
            env!("CARGO_PKG_VERSION")
        );
        println!("certificate fingerprint (SHA-256): {}", server.fingerprint);
        if let Some(invite) = &server.admin_invite {
            println!("admin invite: {invite}");
            println!(
                "  (one-time; also in {}) register the first account with:",
                config
                    .data_dir
                    .join(quince::server::ADMIN_INVITE_FILE)
                    .display()
            );
            println!(
                "  quince register --server {} --invite {invite} YOUR_NAME",
                client_addr(addr)
            );
        }
        anyhow::Ok(server.run(shutdown_signal()).await)
    })?;
    if stopped == Stopped::PowerLoss {
        // Every commit is already on disk (redb syncs each one); this flushes
        // the rest of the system's dirty pages too before the power goes.
        nix::unistd::sync();
        println!("stopped for a power loss; power the machine off now");
        std::process::exit(quince::server::EXIT_POWER_OFF);
    }
    Ok(())
}

/// An address a local client can dial: the unspecified address becomes loopback.
fn client_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    }
    addr
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
