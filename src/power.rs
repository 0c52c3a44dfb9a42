//! Power-loss handling: watch the UPS, warn clients, shut down before the battery dies.
//!
//! Three sources can say the mains is gone, and a box may have any of them:
//!
//! * a Network UPS Tools server (`upsd`), asked for `ups.status` every
//!   2 s — how most UPSes (USB ones through NUT's drivers) and many Pi
//!   UPS HATs report;
//! * a GPIO line (the power-loss pin of a UPS HAT), through the Linux GPIO
//!   character device; [`Hat`] presets the line of HATs quince knows;
//! * SIGPWR, the traditional signal a UPS daemon sends, with the SysV
//!   convention of a status file saying `OK`, `FAIL` or `LOW`.
//!
//! The worst state any source reports wins. On battery the server tells its
//! clients and keeps serving; when the grace time runs out, or at once on low
//! battery, [`Monitor::next`] returns [`Decision::ShutDown`] and the server stops
//! taking writes, commits, and exits so that init can power the machine off.
//! If the mains returns within the grace time, clients get one more event and
//! nothing else happens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use crate::protocol::PowerState;

/// How often upsd is asked for the UPS's status. upsmon asks every 5 s by
/// default; a little more often costs nothing and gives the grace time back.
const NUT_POLL: Duration = Duration::from_secs(2);
/// Longest wait for upsd to connect or answer.
const NUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a GPIO wait lasts before the line's level is read again anyway.
const GPIO_RECHECK: Duration = Duration::from_secs(1);
/// How often a GPIO chip that cannot be opened is tried again.
const GPIO_RETRY: Duration = Duration::from_secs(5);

/// Power options of `quince serve` (the `[power]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    /// Network UPS Tools server (`host:port`, upsd's port is 3493) to poll.
    pub nut: Option<String>,
    /// Name of the UPS on that server (`upsc NAME@host` names it).
    pub nut_ups: String,
    /// GPIO character device whose line signals power loss, e.g. `/dev/gpiochip0`.
    pub gpio_chip: Option<PathBuf>,
    /// Offset of that line on the chip.
    pub gpio_line: Option<u32>,
    /// Level of the line while the mains is lost: `high` or `low` (`high`
    /// when not given).
    pub gpio_power_lost: Option<Level>,
    /// A UPS HAT whose power-loss pin quince knows: fills in whichever of
    /// `gpio_chip`, `gpio_line` and `gpio_power_lost` are not given. Off by
    /// default: see [`Hat`] for why.
    pub hat: Option<Hat>,
    /// React to SIGPWR, reading `sigpwr_status_file` for what it means.
    pub sigpwr: bool,
    /// SysV power status file (`OK`, `FAIL`, `LOW`; first letter counts).
    /// Missing or unreadable at SIGPWR means the power failed.
    pub sigpwr_status_file: PathBuf,
    /// Seconds on battery before shutting down; 0 shuts down at once.
    pub grace_secs: u64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            nut: None,
            nut_ups: "ups".into(),
            gpio_chip: None,
            gpio_line: None,
            gpio_power_lost: None,
            hat: None,
            sigpwr: true,
            sigpwr_status_file: PathBuf::from("/run/powerstatus"),
            grace_secs: 120,
        }
    }
}

/// A GPIO line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    High,
    Low,
}

/// UPS HATs for the Raspberry Pi that signal a mains failure on a GPIO pin.
///
/// Never assumed: on a Pi without the HAT the same pin floats or is pulled
/// up, reads "power lost", and the server would shut the machine down after
/// the grace time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hat {
    /// Geekworm (SupTronics) X728: BCM GPIO6 goes high when the external
    /// power is lost (on board v2.x, with the power-loss-detection jumper fitted).
    X728,
}

impl Hat {
    /// Line offset (the BCM GPIO number) and its level while the mains is lost.
    fn pin(self) -> (u32, Level) {
        match self {
            Hat::X728 => (6, Level::High),
        }
    }
}

/// Labels of the GPIO chips that drive the Raspberry Pi's 40-pin header, in
/// the order they are tried: the Pi 5's RP1, the Pi 4's BCM2711, the Pi 3's
/// and older BCM2835. Which `/dev/gpiochipN` a label gets depends on the
/// kernel (the Pi 5's header has been gpiochip4 and gpiochip0), so a HAT's
/// chip is looked up by label.
pub const HEADER_CHIP_LABELS: [&str; 3] = ["pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835"];

/// The chip to use when no chip has a header label (a kernel that names it
/// otherwise): where the header is on most Pis.
const HEADER_CHIP_FALLBACK: &str = "/dev/gpiochip0";

/// Where the power-loss line's chip is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChipRef {
    /// A configured path.
    Path(PathBuf),
    /// The Raspberry Pi header's chip, looked up by [`HEADER_CHIP_LABELS`].
    PiHeader,
}

impl ChipRef {
    /// The chip's device path now. A header chip is looked up each time, as
    /// the chip may appear after quince starts.
    fn resolve(&self) -> PathBuf {
        match self {
            ChipRef::Path(p) => p.clone(),
            ChipRef::PiHeader => {
                let chips: Vec<(PathBuf, String)> = gpiocdev::chip::chips()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|path| {
                        let label = gpiocdev::Chip::from_path(&path).ok()?.info().ok()?.label;
                        Some((path, label))
                    })
                    .collect();
                chip_by_label(&chips, &HEADER_CHIP_LABELS)
                    .unwrap_or_else(|| PathBuf::from(HEADER_CHIP_FALLBACK))
            }
        }
    }
}

/// The first chip, in the order of `labels`, whose label is one of them.
fn chip_by_label(chips: &[(PathBuf, String)], labels: &[&str]) -> Option<PathBuf> {
    labels.iter().find_map(|want| {
        chips
            .iter()
            .find(|(_, label)| label == want)
            .map(|(path, _)| path.clone())
    })
}

/// A GPIO line to watch: its chip, its offset, its level while the mains is lost.
type GpioLine = (ChipRef, u32, Level);

impl PowerConfig {
    /// The GPIO line to watch: the configuration's own settings, each missing
    /// one taken from the HAT preset. Err when a chip is set without a line.
    fn gpio(&self) -> Result<Option<GpioLine>, String> {
        let preset = self.hat.map(Hat::pin);
        let chip = match (&self.gpio_chip, self.hat) {
            (Some(path), _) => Some(ChipRef::Path(path.clone())),
            (None, Some(_)) => Some(ChipRef::PiHeader),
            (None, None) => None,
        };
        let line = self.gpio_line.or(preset.map(|(line, _)| line));
        let lost = self
            .gpio_power_lost
            .or(preset.map(|(_, level)| level))
            .unwrap_or(Level::High);
        match (chip, line) {
            (Some(chip), Some(line)) => Ok(Some((chip, line, lost))),
            (Some(ChipRef::Path(chip)), None) => Err(format!(
                "power.gpio_chip ({}) is set but power.gpio_line is not; not watching GPIO",
                chip.display()
            )),
            _ => Ok(None),
        }
    }
}

/// Which source a report comes from; each keeps its own last word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Nut,
    Gpio,
    Sigpwr,
}

/// What the server should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The power state changed: tell the clients. `shutdown_in` is the time
    /// left before the server shuts down, when on battery.
    Changed {
        state: PowerState,
        shutdown_in: Option<Duration>,
    },
    /// Stop now: the grace time ran out or the battery is low.
    ShutDown(PowerState),
}

/// Combines the sources' reports and keeps the grace-time clock.
pub struct Monitor {
    reports: mpsc::Receiver<(Source, PowerState)>,
    tracker: Tracker,
}

impl Monitor {
    /// Starts watching every source the configuration names. Problems with a
    /// source (a missing GPIO chip, an unreachable upsd) are logged, and the
    /// others keep working.
    pub fn start(config: &PowerConfig) -> Monitor {
        let (tx, reports) = mpsc::channel(16);
        if let Some(addr) = &config.nut {
            tokio::spawn(watch_nut(addr.clone(), config.nut_ups.clone(), tx.clone()));
        }
        match config.gpio() {
            Ok(Some((chip, line, level))) => {
                if let Some(hat) = config.hat {
                    tracing::info!(?hat, line, ?level, "UPS HAT preset");
                }
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("quince-gpio".into())
                    .spawn(move || watch_gpio(&chip, line, level, tx));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the GPIO power watcher");
                }
            }
            Ok(None) => {}
            Err(problem) => tracing::error!("{problem}"),
        }
        if config.sigpwr {
            tokio::spawn(watch_sigpwr(config.sigpwr_status_file.clone(), tx));
        }
        Monitor {
            reports,
            tracker: Tracker::new(Duration::from_secs(config.grace_secs)),
        }
    }

    /// Waits for the next thing the server must act on. Pending forever when
    /// no source is configured.
    pub async fn next(&mut self) -> Decision {
        loop {
            let deadline = self.tracker.deadline;
            let report = tokio::select! {
                report = self.reports.recv() => report,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    tracing::warn!("on battery for the whole grace time");
                    return Decision::ShutDown(PowerState::OnBattery);
                }
            };
            match report {
                Some((source, state)) => {
                    if let Some(decision) = self.tracker.report(source, state, Instant::now()) {
                        return decision;
                    }
                }
                // Every source has stopped (none configured): nothing will change.
                None if deadline.is_none() => std::future::pending::<()>().await,
                None => {
                    tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await;
                    return Decision::ShutDown(PowerState::OnBattery);
                }
            }
        }
    }
}

/// The decision logic without I/O, so it can be tested with made-up reports.
struct Tracker {
    nut: PowerState,
    gpio: PowerState,
    sigpwr: PowerState,
    grace: Duration,
    /// When the server shuts down if the mains does not return.
    deadline: Option<Instant>,
}

impl Tracker {
    fn new(grace: Duration) -> Tracker {
        Tracker {
            nut: PowerState::Online,
            gpio: PowerState::Online,
            sigpwr: PowerState::Online,
            grace,
            deadline: None,
        }
    }

    fn effective(&self) -> PowerState {
        self.nut.max(self.gpio).max(self.sigpwr)
    }

    fn report(&mut self, source: Source, state: PowerState, now: Instant) -> Option<Decision> {
        let before = self.effective();
        match source {
            Source::Nut => self.nut = state,
            Source::Gpio => self.gpio = state,
            Source::Sigpwr => self.sigpwr = state,
        }
        let after = self.effective();
        if after == before {
            return None;
        }
        tracing::warn!(?source, from = ?before, to = ?after, "power state changed");
        match after {
            PowerState::Online => {
                self.deadline = None;
                Some(Decision::Changed {
                    state: after,
                    shutdown_in: None,
                })
            }
            PowerState::OnBattery if !self.grace.is_zero() => {
                // Back from low battery to merely on battery keeps the clock running.
                let deadline = *self.deadline.get_or_insert(now + self.grace);
                Some(Decision::Changed {
                    state: after,
                    shutdown_in: Some(deadline.saturating_duration_since(now)),
                })
            }
            PowerState::OnBattery | PowerState::LowBattery | PowerState::ShuttingDown => {
                Some(Decision::ShutDown(after))
            }
        }
    }
}

/// Why upsd's answer could not be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum NutError {
    #[error("upsd answered `{0}`")]
    Refused(String),
    #[error("unexpected answer from upsd: `{0}`")]
    Unexpected(String),
}

/// Reads the reply to `GET VAR <ups> ups.status`: `VAR <ups> ups.status "OL CHRG"`.
/// The status is a list of flags; `LB` (low battery) and `FSD` (the UPS's
/// primary monitor orders a shutdown) mean stop now, `OB` means on battery.
fn parse_nut_status(line: &str, ups: &str) -> Result<PowerState, NutError> {
    let line = line.trim_end();
    if let Some(err) = line.strip_prefix("ERR ") {
        return Err(NutError::Refused(err.to_string()));
    }
    let prefix = format!("VAR {ups} ups.status ");
    let Some(value) = line.strip_prefix(&prefix) else {
        return Err(NutError::Unexpected(line.to_string()));
    };
    let flags: Vec<&str> = value.trim_matches('"').split_whitespace().collect();
    Ok(if flags.iter().any(|f| *f == "LB" || *f == "FSD") {
        PowerState::LowBattery
    } else if flags.contains(&"OB") {
        PowerState::OnBattery
    } else {
        PowerState::Online
    })
}

/// Polls upsd for the UPS's status, reconnecting when the connection fails.
/// While upsd cannot be asked, the last state stands: an unreachable upsd is
/// no reason to shut down, and no proof that the mains is back.
async fn watch_nut(addr: String, ups: String, tx: mpsc::Sender<(Source, PowerState)>) {
    let mut last_problem: Option<String> = None;
    loop {
        let problem = match poll_nut(&addr, &ups, &tx).await {
            Ok(()) => return, // the monitor is gone: the server is stopping
            Err(e) => e,
        };
        if last_problem.as_deref() != Some(problem.as_str()) {
            tracing::error!(upsd = %addr, ups, problem, "cannot read the UPS status; retrying");
            last_problem = Some(problem);
        }
        tokio::time::sleep(NUT_POLL).await;
    }
}

/// One connection to upsd: asks for the status every [`NUT_POLL`] until
/// something fails (the error says what) or the monitor stops listening.
async fn poll_nut(
    addr: &str,
    ups: &str,
    tx: &mpsc::Sender<(Source, PowerState)>,
) -> Result<(), String> {
    let target: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("resolving: {e}"))?
            .next()
            .ok_or("the name has no address")?,
    };
    let stream = tokio::time::timeout(NUT_TIMEOUT, tokio::net::TcpStream::connect(target))
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| format!("connecting: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let question = format!("GET VAR {ups} ups.status\n");
    let mut reported = None;
    loop {
        write
            .write_all(question.as_bytes())
            .await
            .map_err(|e| format!("writing: {e}"))?;
        let line = tokio::time::timeout(NUT_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| format!("reading: {e}"))?
            .ok_or("upsd closed the connection")?;
        let state = parse_nut_status(&line, ups).map_err(|e| e.to_string())?;
        if reported != Some(state) {
            if reported.is_none() {
                tracing::info!(upsd = %addr, ups, ?state, "watching the UPS");
            }
            if tx.send((Source::Nut, state)).await.is_err() {
                return Ok(());
            }
            reported = Some(state);
        }
        tokio::time::sleep(NUT_POLL).await;
    }
}

/// Watches a GPIO line on a thread of its own (the character device's waits
/// are blocking calls). Requests the line as an input with edge events, and
/// reads its level after every edge and at least every [`GPIO_RECHECK`], so
/// a missed edge costs a second, not a shutdown (a line without edge events
/// is read every [`GPIO_RECHECK`]). A chip that is not there
/// (yet: a USB adapter, a module loaded late) is tried again every
/// [`GPIO_RETRY`]; the problem is logged once.
fn watch_gpio(chip: &ChipRef, line: u32, lost: Level, tx: mpsc::Sender<(Source, PowerState)>) {
    let mut last_problem = None;
    loop {
        let chip = chip.resolve();
        let chip = chip.as_path();
        let problem = match watch_gpio_line(chip, line, lost, &tx) {
            Ok(()) => return, // the monitor is gone: the server is stopping
            Err(e) => e.to_string(),
        };
        if last_problem.as_ref() != Some(&problem) {
            tracing::error!(chip = %chip.display(), line, problem, "cannot watch the GPIO power-loss line; retrying");
            last_problem = Some(problem);
        }
        std::thread::sleep(GPIO_RETRY);
    }
}

fn watch_gpio_line(
    chip: &Path,
    line: u32,
    lost: Level,
    tx: &mpsc::Sender<(Source, PowerState)>,
) -> Result<(), gpiocdev::Error> {
    let request = |edges: bool| {
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(chip)
            .with_consumer("quince-power")
            .with_line(line)
            .as_input();
        if edges {
            builder.with_edge_detection(gpiocdev::line::EdgeDetection::BothEdges);
        }
        // Active = the mains is lost, whatever the wiring.
        if lost == Level::Low {
            builder.as_active_low();
        }
        builder.request()
    };
    // A line without an interrupt (a GPIO expander whose interrupt pin is not
    // wired) refuses edge detection; then its level is read every second.
    let (request, edges) = match request(true) {
        Ok(r) => (r, true),
        Err(with_edges) => match request(false) {
            Ok(r) => (r, false),
            Err(_) => return Err(with_edges),
        },
    };
    tracing::info!(chip = %chip.display(), line, ?lost, edges, "watching the GPIO power-loss line");
    let mut reported = None;
    loop {
        let state = match request.value(line)? {
            gpiocdev::line::Value::Active => PowerState::OnBattery,
            gpiocdev::line::Value::Inactive => PowerState::Online,
        };
        if reported != Some(state) {
            if tx.blocking_send((Source::Gpio, state)).is_err() {
                return Ok(());
            }
            reported = Some(state);
        }
        if !edges {
            std::thread::sleep(GPIO_RECHECK);
        } else if request.wait_edge_event(GPIO_RECHECK)? {
            // The level is what counts; the events only wake us.
            while request.has_edge_event()? {
                request.read_edge_event()?;
            }
        }
    }
}

/// Each SIGPWR reads the SysV status file: `O`(K) the power is back, `L`(OW)
/// the battery is low, anything else (or no file) the power failed.
async fn watch_sigpwr(status_file: PathBuf, tx: mpsc::Sender<(Source, PowerState)>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigpwr = match signal(SignalKind::from_raw(libc::SIGPWR)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGPWR");
            return;
        }
    };
    while sigpwr.recv().await.is_some() {
        let text = tokio::fs::read_to_string(&status_file)
            .await
            .unwrap_or_default();
        let state = sigpwr_state(&text);
        tracing::warn!(status_file = %status_file.display(), ?state, "SIGPWR received");
        if tx.send((Source::Sigpwr, state)).await.is_err() {
            return;
        }
    }
}

fn sigpwr_state(status: &str) -> PowerState {
    match status.trim_start().chars().next() {
        Some('O' | 'o') => PowerState::Online,
        Some('L' | 'l') => PowerState::LowBattery,
        _ => PowerState::OnBattery,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn power(toml_text: &str) -> PowerConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn x728_preset_fills_in_what_is_not_given() {
        assert_eq!(
            power("hat = \"x728\"").gpio(),
            Ok(Some((ChipRef::PiHeader, 6, Level::High)))
        );
        assert_eq!(
            power("hat = \"x728\"\ngpio_chip = \"/dev/gpiochip4\"\ngpio_power_lost = \"low\"")
                .gpio(),
            Ok(Some((
                ChipRef::Path("/dev/gpiochip4".into()),
                6,
                Level::Low
            )))
        );
        assert_eq!(
            power("hat = \"x728\"\ngpio_line = 17").gpio(),
            Ok(Some((ChipRef::PiHeader, 17, Level::High)))
        );
        assert!(toml::from_str::<PowerConfig>("hat = \"x999\"").is_err());
    }

    #[test]
    fn without_a_hat_nothing_is_watched_and_a_chip_needs_a_line() {
        assert_eq!(PowerConfig::default().gpio(), Ok(None));
        assert_eq!(power("gpio_line = 6").gpio(), Ok(None));
        assert!(power("gpio_chip = \"/dev/gpiochip0\"").gpio().is_err());
        assert_eq!(
            power("gpio_chip = \"/dev/gpiochip1\"\ngpio_line = 0").gpio(),
            Ok(Some((
                ChipRef::Path("/dev/gpiochip1".into()),
                0,
                Level::High
            )))
        );
    }

    #[test]
    fn the_appliance_files_x728_block_is_off_and_works_when_uncommented() {
        let text = include_str!("../overlay/usr/share/quince/quince.toml");
        let config: crate::config::Config = toml::from_str(text).unwrap();
        assert_eq!(config.power.hat, None);
        assert_eq!(config.power.gpio(), Ok(None));
        let line = "# hat = \"x728\"\n";
        assert_eq!(text.matches(line).count(), 1, "one ready-to-uncomment line");
        let enabled = text.replace(line, "hat = \"x728\"\n");
        let config: crate::config::Config = toml::from_str(&enabled).unwrap();
        assert_eq!(
            config.power.gpio(),
            Ok(Some((ChipRef::PiHeader, 6, Level::High)))
        );
    }

    #[test]
    fn header_chip_is_found_by_label() {
        let chips = |list: &[(&str, &str)]| -> Vec<(PathBuf, String)> {
            list.iter()
                .map(|(p, l)| (PathBuf::from(p), l.to_string()))
                .collect()
        };
        // A Pi 5 with the Raspberry Pi kernel: the header is gpiochip4.
        let pi5 = chips(&[
            ("/dev/gpiochip0", "gpio-brcmstb@107d508500"),
            ("/dev/gpiochip1", "gpio-brcmstb@107d508520"),
            ("/dev/gpiochip4", "pinctrl-rp1"),
        ]);
        assert_eq!(
            chip_by_label(&pi5, &HEADER_CHIP_LABELS),
            Some(PathBuf::from("/dev/gpiochip4"))
        );
        // A Pi 4: the SoC's chip, not the firmware's expander.
        let pi4 = chips(&[
            ("/dev/gpiochip0", "pinctrl-bcm2711"),
            ("/dev/gpiochip1", "raspberrypi-exp-gpio"),
        ]);
        assert_eq!(
            chip_by_label(&pi4, &HEADER_CHIP_LABELS),
            Some(PathBuf::from("/dev/gpiochip0"))
        );
        let pc = chips(&[("/dev/gpiochip0", "INT34C5:00")]);
        assert_eq!(chip_by_label(&pc, &HEADER_CHIP_LABELS), None);
    }

    #[test]
    fn nut_status_flags() {
        let p = |l| parse_nut_status(l, "ups");
        assert_eq!(p("VAR ups ups.status \"OL\"\n"), Ok(PowerState::Online));
        assert_eq!(p("VAR ups ups.status \"OL CHRG\""), Ok(PowerState::Online));
        assert_eq!(
            p("VAR ups ups.status \"OB DISCHRG\""),
            Ok(PowerState::OnBattery)
        );
        assert_eq!(
            p("VAR ups ups.status \"OB LB\""),
            Ok(PowerState::LowBattery)
        );
        assert_eq!(
            p("VAR ups ups.status \"FSD OL\""),
            Ok(PowerState::LowBattery)
        );
        assert_eq!(
            p("ERR DATA-STALE"),
            Err(NutError::Refused("DATA-STALE".into()))
        );
        assert!(matches!(
            p("VAR other ups.status \"OB\""),
            Err(NutError::Unexpected(_))
        ));
    }

    #[test]
    fn sigpwr_status_file_convention() {
        assert_eq!(sigpwr_state("OK\n"), PowerState::Online);
        assert_eq!(sigpwr_state("LOW\n"), PowerState::LowBattery);
        assert_eq!(sigpwr_state("FAIL\n"), PowerState::OnBattery);
        assert_eq!(sigpwr_state(""), PowerState::OnBattery);
    }

    #[test]
    fn grace_time_starts_on_battery_and_ends_when_power_returns() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(60));
        assert_eq!(t.report(Source::Nut, PowerState::Online, t0), None);
        assert_eq!(
            t.report(Source::Nut, PowerState::OnBattery, t0),
            Some(Decision::Changed {
                state: PowerState::OnBattery,
                shutdown_in: Some(Duration::from_secs(60))
            })
        );
        assert_eq!(t.deadline, Some(t0 + Duration::from_secs(60)));
        // A second source agreeing changes nothing, and keeps the clock.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.report(Source::Gpio, PowerState::OnBattery, later), None);
        assert_eq!(t.report(Source::Gpio, PowerState::Online, later), None);
        assert_eq!(
            t.report(Source::Nut, PowerState::Online, later),
            Some(Decision::Changed {
                state: PowerState::Online,
                shutdown_in: None
            })
        );
        assert_eq!(t.deadline, None);
    }

    #[test]
    fn low_battery_from_any_source_shuts_down_at_once() {
        let now = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(60));
        t.report(Source::Nut, PowerState::OnBattery, now);
        assert_eq!(
            t.report(Source::Sigpwr, PowerState::LowBattery, now),
            Some(Decision::ShutDown(PowerState::LowBattery))
        );
        let mut t = Tracker::new(Duration::ZERO);
        assert_eq!(
            t.report(Source::Gpio, PowerState::OnBattery, now),
            Some(Decision::ShutDown(PowerState::OnBattery))
        );
    }
}
