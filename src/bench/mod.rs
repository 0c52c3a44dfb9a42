//! `quince bench`: the load generator and the standard scenarios.
//!
//! The bench seeds a fresh data directory, starts `quince serve` from this same
//! binary as a child process (so its memory is measured on its own), and drives
//! it with many simulated users multiplexed over a few quinn endpoints. The
//! same rates are then offered to Mosquitto, the reference peer. Everything
//! measured lands in one [`results::Report`], printed as a table, as JSON with
//! `--json`, and written to docs/BENCHMARKS.md with a plot beside it.

mod limits;
mod load;
mod mosquitto;
mod quince;
mod report;
mod results;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use results::{Figure, RatePoint, Report, ScenarioResult};

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 1:1 chat, acknowledged only after commit; rate steps.
    OneToOne,
    /// One sender to a 500-member group; rate steps.
    FanOut,
    /// Many authenticated clients connected and idle; server memory.
    Idle,
    /// Many clients resuming with their device tokens at once.
    Reconnect,
    /// One device syncing many missed messages.
    CatchUp,
    /// One attachment uploaded, downloaded and uploaded again (deduplicated).
    Attachments,
    /// Opening the store after the server was killed, by database size.
    Repair,
    /// `quince backup` of a running server, by database size.
    Backup,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// The short version `make bench` runs (a few minutes in all).
    #[arg(long)]
    pub quick: bool,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write the report into this Markdown file (between its bench markers) and
    /// the plot beside it.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where the server's data directory and the fsync test live. Use a real
    /// disk: on tmpfs, fsync costs nothing and durable figures mean nothing.
    #[arg(long, default_value = "target/bench-data")]
    pub work_dir: PathBuf,
    /// Measure the server of the current profile (`quince login` as an
    /// administrator first) instead of starting one here. Accounts are made
    /// through invites; the machine's limits and the Mosquitto comparison are
    /// skipped, as they would describe this machine, not the server's.
    #[arg(long)]
    pub remote: bool,
    /// Skip the Mosquitto comparison.
    #[arg(long)]
    pub no_peer: bool,
    /// Message size in bytes (text), for quince and Mosquitto alike.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds per offered-rate step.
    #[arg(long)]
    pub step_secs: Option<f64>,
    /// A rate step "holds" while p99 latency stays under this many milliseconds.
    #[arg(long, default_value_t = 25.0)]
    pub p99_ms: f64,
    /// Connections for the idle scenario.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Clients for the reconnect storm.
    #[arg(long)]
    pub reconnect: Option<usize>,
    /// Missed messages for the catch-up scenario.
    #[arg(long)]
    pub catch_up: Option<usize>,
    /// Sender/recipient pairs for 1:1 chat.
    #[arg(long, default_value_t = 64)]
    pub pairs: usize,
    /// Group size for fan-out.
    #[arg(long, default_value_t = 500)]
    pub members: usize,
}

impl BenchArgs {
    fn wants(&self, s: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&s)
    }

    fn step_duration(&self) -> Duration {
        Duration::from_secs_f64(
            self.step_secs
                .unwrap_or(if self.quick { 3.0 } else { 10.0 }),
        )
    }
}

/// Runs the bench and reports.
pub async fn run(args: BenchArgs, profile: &str) -> anyhow::Result<()> {
    let remote = if args.remote {
        Some(remote_from_profile(profile).await?)
    } else {
        None
    };
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("creating {}", args.work_dir.display()))?;
    let work_dir = args.work_dir.canonicalize()?;
    let mut report = Report {
        date: now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: limits::machine(&work_dir),
        ..Report::default()
    };
    if remote.is_none() {
        eprintln!("measuring this machine's limits (fsync, loopback UDP)...");
        report.limits = Some(limits::measure(&work_dir, args.quick).await?);
    }

    let quince = quince::Bench::new(&args, &work_dir, remote.as_ref());
    let peer = if args.no_peer || remote.is_some() {
        None
    } else {
        match mosquitto::Mosquitto::start(&work_dir).await {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("warning: Mosquitto comparison skipped: {e:#}");
                None
            }
        }
    };

    if args.wants(Scenario::OneToOne) {
        report.scenarios.push(quince.one_to_one().await?);
        if let Some(peer) = &peer {
            let rates = report.scenarios.last().map(step_rates).unwrap_or_default();
            let steps = offer_peer("1:1", rates, async |rate| {
                peer.one_to_one(args.pairs, rate, args.step_duration(), args.size)
                    .await
            })
            .await?;
            let result = peer_result("one-to-one", "1:1 chat, QoS 1", &args, steps, 1);
            report.scenarios.push(result);
        }
    }
    if args.wants(Scenario::FanOut) {
        report.scenarios.push(quince.fan_out().await?);
        if let Some(peer) = &peer {
            // The same recipients as quince's group: everyone but the sender.
            let recipients = args.members.max(2) - 1;
            let rates = report.scenarios.last().map(step_rates).unwrap_or_default();
            let steps = offer_peer("fan-out", rates, async |rate| {
                peer.fan_out(recipients, rate, args.step_duration(), args.size)
                    .await
            })
            .await?;
            let title = "group fan-out, QoS 1";
            let result = peer_result("fan-out", title, &args, steps, recipients as u64);
            report.scenarios.push(result);
        }
    }
    if let Some(peer) = peer {
        peer.stop().await?;
    }
    if args.wants(Scenario::Idle) {
        report.scenarios.push(quince.idle().await?);
    }
    if args.wants(Scenario::Reconnect) {
        report.scenarios.push(quince.reconnect().await?);
    }
    if args.wants(Scenario::CatchUp) {
        report.scenarios.push(quince.catch_up().await?);
    }
    if args.wants(Scenario::Attachments) {
        report.scenarios.push(quince.attachments().await?);
    }
    if args.wants(Scenario::Repair) && !args.remote {
        report.scenarios.push(quince.repair().await?);
    }
    if args.wants(Scenario::Backup) && !args.remote {
        report.scenarios.push(quince.backup().await?);
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report::print_table(&report);
    }
    if let Some(path) = &args.report {
        let plot = path.with_file_name("benchmarks-latency.svg");
        report::write_plot(&report, &plot)?;
        report::write_markdown(&report, path, &plot)?;
        eprintln!("wrote {} and {}", path.display(), plot.display());
    }
    Ok(())
}

/// The server, its pinned certificate and an administrator's token, from a
/// client profile saved by `quince login`.
async fn remote_from_profile(name: &str) -> anyhow::Result<quince::Remote> {
    let saved = crate::profile::load(name)?;
    let fingerprint = crate::profile::pinned(&saved.server)?.with_context(|| {
        format!(
            "no pinned certificate for {}; log in with the quince command first",
            saved.server
        )
    })?;
    let addr = tokio::net::lookup_host(saved.server.as_str())
        .await?
        .next()
        .with_context(|| format!("{} has no address", saved.server))?;
    Ok(quince::Remote {
        addr,
        fingerprint,
        admin_token: saved.token,
    })
}

/// Offers the peer each rate in turn.
async fn offer_peer(
    what: &str,
    rates: Vec<f64>,
    mut run: impl AsyncFnMut(f64) -> anyhow::Result<RatePoint>,
) -> anyhow::Result<Vec<RatePoint>> {
    let mut steps = Vec::with_capacity(rates.len());
    for rate in rates {
        eprintln!("mosquitto {what} at {rate}/s");
        steps.push(run(rate).await?);
    }
    Ok(steps)
}

/// The offered rates of a scenario's steps, to offer the peer the same.
fn step_rates(s: &ScenarioResult) -> Vec<f64> {
    s.steps.iter().map(|p| p.offered_per_s).collect()
}

/// The peer's result for a rate-step scenario, figures in the same terms as quince's.
fn peer_result(
    id: &str,
    title: &str,
    args: &BenchArgs,
    steps: Vec<RatePoint>,
    deliveries_per_message: u64,
) -> ScenarioResult {
    let best = steps
        .iter()
        .filter(|p| p.held(deliveries_per_message, args.p99_ms))
        .map(|p| p.delivered_per_s)
        .fold(0.0, f64::max);
    let peak = steps.iter().map(|p| p.delivered_per_s).fold(0.0, f64::max);
    ScenarioResult {
        id: id.into(),
        title: title.into(),
        system: "mosquitto".into(),
        params: vec![("message size".into(), format!("{} B", args.size))],
        figures: vec![
            Figure::new("highest rate held (deliveries/s)", best, "/s"),
            Figure::new("peak deliveries/s", peak, "/s"),
        ],
        steps,
        notes: vec![
            "Mosquitto acknowledges a QoS 1 publish once it is in memory: with persistence on \
             it saves its database at exit and every autosave_interval (default 30 minutes), \
             never per message. quince acknowledges only after an fsync'd commit."
                .into(),
        ],
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
