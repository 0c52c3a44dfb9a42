//! Writing a [`Report`]: the terminal table, docs/BENCHMARKS.md and the plot.
//!
//! All three are built as strings first and only then printed or written, so
//! the tests can check them without a terminal, and a failure half-way never
//! leaves a half-written file behind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use super::results::{Figure, Limits, RatePoint, Report, ScenarioResult};

/// The lines between which docs/BENCHMARKS.md is generated; everything outside
/// them is written by hand and kept.
const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

/// Prints the summary table on stdout.
pub fn print_table(report: &Report) {
    print!("{}", table_text(report));
}

/// Writes the latency-versus-offered-load plot (SVG).
pub fn write_plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    let svg = plot_svg(report)?;
    write_atomically(path, &svg)
}

/// Replaces the generated part of the Markdown report at `path`.
///
/// The hand-written text around the markers is kept byte for byte; a file
/// without markers gets them appended, and a missing file is created.
pub fn write_markdown(report: &Report, path: &Path, plot: &Path) -> anyhow::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let generated = markdown_region(report, &relative_link(path, plot));
    let new = splice(old.as_deref(), &generated)
        .with_context(|| format!("updating {}", path.display()))?;
    write_atomically(path, &new)
}

// ---------------------------------------------------------------------------
// Formatting figures

/// A number for people: thousands separators on large values, three
/// significant digits on small ones, so rates and latencies both read well.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        group_thousands(v.round())
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        // Three significant digits: 0.123, 0.0123, 0.00123.
        let decimals = (2 - a.log10().floor() as i32).clamp(3, 9) as usize;
        format!("{v:.decimals$}")
    }
}

/// `1234567` → `1,234,567`.
fn group_thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// A value with its unit: rates and percentages attach (`1,200/s`, `5%`),
/// other units stand apart (`12.5 ms`, `38.0 MB`).
fn fmt_value(v: f64, unit: &str) -> String {
    // A unitless figure is a count: no decimals on whole numbers.
    let n = if unit.is_empty() && v.fract() == 0.0 {
        group_thousands(v)
    } else {
        fmt_num(v)
    };
    if unit.is_empty() || unit.starts_with('/') || unit == "%" {
        format!("{n}{unit}")
    } else {
        format!("{n} {unit}")
    }
}

/// The target as a requirement, e.g. `≥ 1,000/s` or `≤ 25.0 ms`.
fn fmt_target(f: &Figure) -> String {
    match f.target {
        Some(t) => {
            let op = if f.higher_is_better { '≥' } else { '≤' };
            format!("{op} {}", fmt_value(t, &f.unit))
        }
        None => String::new(),
    }
}

fn fmt_met(f: &Figure) -> &'static str {
    match f.met() {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "",
    }
}

/// Renders rows as aligned columns; `right[i]` right-aligns column `i`
/// (numbers), the rest are left-aligned (names).
fn columns(rows: &[Vec<String>], right: &[bool], indent: &str) -> String {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..ncols).map(width).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c > 0 {
                line.push_str("  ");
            }
            if right.get(c).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// What the renderings share

/// One-line description of the machine.
fn machine_line(report: &Report) -> String {
    let m = &report.machine;
    format!(
        "{}, {} logical cores, {} MB RAM, {}, kernel {}, data on {}, quince {}",
        m.cpu,
        m.cores,
        group_thousands(m.memory_mb as f64),
        m.os,
        m.kernel,
        m.data_fs,
        m.quince_version
    )
}

/// The systems' results for one scenario id that ran against more than one
/// system, quince first, for the side-by-side comparisons.
struct Comparison<'a> {
    id: &'a str,
    systems: Vec<&'a ScenarioResult>,
}

/// Every scenario id with steps from two or more systems, in report order.
fn comparisons(report: &Report) -> Vec<Comparison<'_>> {
    let mut out: Vec<Comparison<'_>> = vec![];
    for s in report.scenarios.iter().filter(|s| !s.steps.is_empty()) {
        match out.iter_mut().find(|c| c.id == s.id) {
            Some(c) => c.systems.push(s),
            None => out.push(Comparison {
                id: &s.id,
                systems: vec![s],
            }),
        }
    }
    out.retain(|c| c.systems.len() >= 2);
    for c in &mut out {
        c.systems.sort_by_key(|s| s.system != "quince");
    }
    out
}

/// Whether this is the last scenario with its id, after which its comparison
/// is shown.
fn last_of_id(report: &Report, index: usize) -> bool {
    let id = &report.scenarios[index].id;
    !report.scenarios[index + 1..].iter().any(|s| &s.id == id)
}

/// The offered rates of all systems' steps, ascending, each once.
fn offered_rates(c: &Comparison<'_>) -> Vec<f64> {
    let mut rates: Vec<f64> = c
        .systems
        .iter()
        .flat_map(|s| s.steps.iter().map(|p| p.offered_per_s))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup_by(|a, b| same_rate(*a, *b));
    rates
}

/// Offered rates are the same when they agree to a millionth: the peer is
/// offered quince's rates, but they may have passed through arithmetic.
fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

fn step_at(s: &ScenarioResult, rate: f64) -> Option<&RatePoint> {
    s.steps.iter().find(|p| same_rate(p.offered_per_s, rate))
}

/// The comparison as rows: offered rate, then delivered/s and p99 for each system.
fn comparison_rows(c: &Comparison<'_>) -> Vec<Vec<String>> {
    let mut header = vec!["offered msg/s".to_string()];
    for s in &c.systems {
        header.push(format!("{} delivered/s", s.system));
    }
    for s in &c.systems {
        header.push(format!("{} p99 ms", s.system));
    }
    let mut rows = vec![header];
    for rate in offered_rates(c) {
        let mut row = vec![fmt_num(rate)];
        let points: Vec<Option<&RatePoint>> = c.systems.iter().map(|s| step_at(s, rate)).collect();
        row.extend(
            points
                .iter()
                .map(|p| p.map_or("–".into(), |p| fmt_num(p.delivered_per_s))),
        );
        row.extend(points.iter().map(|p| p.map_or("–".into(), p99_cell)));
        rows.push(row);
    }
    rows
}

/// p99 of a step, or a dash when nothing was delivered (no latency to show).
fn p99_cell(p: &RatePoint) -> String {
    if p.latency.count == 0 {
        "–".into()
    } else {
        fmt_num(p.latency.p99_ms)
    }
}

fn step_header() -> Vec<String> {
    [
        "offered/s",
        "delivered/s",
        "sent",
        "delivered",
        "errors",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    ]
    .map(String::from)
    .to_vec()
}

fn step_row(p: &RatePoint) -> Vec<String> {
    let lat = |v: f64| {
        if p.latency.count == 0 {
            "–".to_string()
        } else {
            fmt_num(v)
        }
    };
    vec![
        fmt_num(p.offered_per_s),
        fmt_num(p.delivered_per_s),
        group_thousands(p.sent as f64),
        group_thousands(p.delivered as f64),
        group_thousands(p.errors as f64),
        lat(p.latency.p50_ms),
        lat(p.latency.p99_ms),
        lat(p.latency.p999_ms),
        lat(p.latency.max_ms),
    ]
}

/// The scenario's figures compared with the machine's limits, as sentences;
/// empty when there is nothing meaningful to compare.
///
/// Only rate-step scenarios are compared. Per-fsync ratios are given only for
/// quince, which commits before acknowledging; the peer's QoS 1 does not fsync
/// per message, so its ratios would mean nothing.
fn limit_ratios(s: &ScenarioResult, limits: &Limits) -> Vec<String> {
    let mut out = vec![];
    if s.steps.is_empty() {
        return out;
    }
    let per_message = deliveries_per_message(s);
    if s.system == "quince" && limits.fsyncs_per_s > 0.0 {
        for f in s.figures.iter().filter(|f| f.unit == "/s" && f.value > 0.0) {
            let per_fsync = f.value / limits.fsyncs_per_s;
            let mut line = format!(
                "{} ÷ fsyncs/s = **{}** per fsync",
                f.name,
                fmt_num(per_fsync)
            );
            if per_message > 1.0 {
                let _ = write!(
                    line,
                    " ({} messages per fsync at {} deliveries per message)",
                    fmt_num(per_fsync / per_message),
                    fmt_num(per_message)
                );
            }
            out.push(line);
        }
        if !out.is_empty() && per_message <= 1.0 {
            out.push(
                "Messages per fsync is the group-commit factor: above 1, several \
                 messages share one disk flush, which is how a durable server gets past \
                 the disk's fsync rate."
                    .into(),
            );
        }
    }
    let peak = s
        .steps
        .iter()
        .map(|p| p.delivered_per_s)
        .fold(0.0, f64::max);
    if limits.udp_datagrams_per_s > 0.0 && peak > 0.0 {
        out.push(format!(
            "peak deliveries/s ÷ loopback UDP datagrams/s = **{}%** \
             (each delivery needs at least one datagram, so 100% would be the \
             whole packet budget of the machine)",
            fmt_num(100.0 * peak / limits.udp_datagrams_per_s)
        ));
    }
    out
}

/// Deliveries each message makes: the scenario's "deliveries per message"
/// parameter if it has one, else what the steps show (fan-out delivers each
/// message to every member), at least 1.
fn deliveries_per_message(s: &ScenarioResult) -> f64 {
    let from_param = s
        .params
        .iter()
        .find(|(k, _)| k == "deliveries per message")
        .and_then(|(_, v)| v.trim().parse::<f64>().ok());
    let from_steps = || {
        s.steps
            .iter()
            .filter(|p| p.sent > 0)
            .map(|p| p.delivered as f64 / p.sent as f64)
            .fold(0.0, f64::max)
            .round()
    };
    from_param.unwrap_or_else(from_steps).max(1.0)
}

// ---------------------------------------------------------------------------
// Terminal

fn table_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "quince bench, {}", report.date);
    let _ = writeln!(out, "machine: {}", machine_line(report));
    match &report.limits {
        Some(l) => {
            let _ = writeln!(
                out,
                "limits:  {} fsyncs/s (4 KiB appends in {}), {} UDP datagrams/s over loopback ({} B)",
                fmt_num(l.fsyncs_per_s),
                l.fsync_dir,
                fmt_num(l.udp_datagrams_per_s),
                l.udp_payload_bytes
            );
        }
        None => out.push_str("limits:  not measured\n"),
    }
    let comps = comparisons(report);
    for (i, s) in report.scenarios.iter().enumerate() {
        let _ = writeln!(out, "\n== {} [{}]: {}", s.id, s.system, s.title);
        if !s.params.is_empty() {
            let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "   {}", params.join(", "));
        }
        let rows: Vec<Vec<String>> = s
            .figures
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    fmt_value(f.value, &f.unit),
                    fmt_target(f),
                    fmt_met(f).to_string(),
                ]
            })
            .collect();
        out.push_str(&columns(&rows, &[false, true, true, false], "   "));
        if !s.steps.is_empty() {
            out.push('\n');
            let mut rows = vec![step_header()];
            rows.extend(s.steps.iter().map(step_row));
            out.push_str(&columns(&rows, &[true; 9], "   "));
        }
        for note in &s.notes {
            let _ = writeln!(out, "   note: {note}");
        }
        if last_of_id(report, i)
            && let Some(c) = comps.iter().find(|c| c.id == s.id)
        {
            let names: Vec<&str> = c.systems.iter().map(|s| s.system.as_str()).collect();
            let _ = writeln!(out, "\n== {}: {}", c.id, names.join(" vs "));
            let rows = comparison_rows(c);
            let right = vec![true; rows.first().map_or(0, Vec::len)];
            out.push_str(&columns(&rows, &right, "   "));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Markdown

/// A table cell: pipes would end the cell, newlines the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A GitHub-flavoured Markdown table; `right[i]` right-aligns column `i`.
fn md_table(rows: &[Vec<String>], right: &[bool]) -> String {
    let mut out = String::new();
    let Some((header, body)) = rows.split_first() else {
        return out;
    };
    let line = |r: &Vec<String>| {
        let cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    out.push_str(&line(header));
    let rule: Vec<&str> = (0..header.len())
        .map(|i| {
            if right.get(i).copied().unwrap_or(false) {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for r in body {
        out.push_str(&line(r));
    }
    out
}

/// The generated region, without the markers.
fn markdown_region(report: &Report, plot_link: &str) -> String {
    let mut out = String::new();
    out.push_str("<!-- Generated by `quince bench --report`; edits here are overwritten. -->\n\n");
    out.push_str("## Latest run\n\n");
    let _ = writeln!(out, "Run on {} with:\n", report.date);
    let _ = writeln!(out, "```sh\n{}\n```\n", report.command);

    out.push_str("### Machine\n\n");
    let m = &report.machine;
    let machine = [
        ("CPU", m.cpu.clone()),
        ("Logical cores", m.cores.to_string()),
        (
            "Memory",
            format!("{} MB", group_thousands(m.memory_mb as f64)),
        ),
        ("OS", m.os.clone()),
        ("Kernel", m.kernel.clone()),
        ("Data filesystem", m.data_fs.clone()),
        ("quince", m.quince_version.clone()),
    ];
    let mut rows = vec![vec!["".to_string(), "".to_string()]];
    rows.extend(machine.iter().map(|(k, v)| vec![k.to_string(), v.clone()]));
    out.push_str(&md_table(&rows, &[]));
    out.push('\n');

    out.push_str("### Physical limits\n\n");
    match &report.limits {
        Some(l) => {
            let rows = vec![
                vec!["Limit".into(), "Measured".into(), "What it means".into()],
                vec![
                    "fsyncs/s".into(),
                    fmt_num(l.fsyncs_per_s),
                    format!(
                        "4 KiB appends, each followed by fdatasync, per second in `{}`: \
                         the most separate durable commits the disk allows. A server that \
                         acknowledges only after commit goes beyond it only by grouping \
                         several messages into one commit.",
                        l.fsync_dir
                    ),
                ],
                vec![
                    "UDP datagrams/s".into(),
                    fmt_num(l.udp_datagrams_per_s),
                    format!(
                        "{} B datagrams one sender thread gets through loopback to one \
                         receiver thread: the packet ceiling before any encryption, \
                         protocol or storage work. Every delivery costs at least one.",
                        l.udp_payload_bytes
                    ),
                ],
            ];
            out.push_str(&md_table(&rows, &[false, true, false]));
        }
        None => out.push_str("Not measured in this run.\n"),
    }
    out.push('\n');

    let comps = comparisons(report);
    for (i, s) in report.scenarios.iter().enumerate() {
        let _ = writeln!(out, "### {} ({}): {}\n", s.id, s.system, s.title);
        if !s.params.is_empty() {
            let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "Parameters: {}.\n", params.join(", "));
        }
        if !s.figures.is_empty() {
            let mut rows = vec![vec![
                "Figure".to_string(),
                "Value".into(),
                "Target".into(),
                "Met".into(),
            ]];
            rows.extend(s.figures.iter().map(|f| {
                vec![
                    f.name.clone(),
                    fmt_value(f.value, &f.unit),
                    fmt_target(f),
                    fmt_met(f).to_string(),
                ]
            }));
            out.push_str(&md_table(&rows, &[false, true, true, false]));
            out.push('\n');
        }
        if let Some(limits) = &report.limits {
            let ratios = limit_ratios(s, limits);
            if !ratios.is_empty() {
                out.push_str("Against the physical limits:\n\n");
                for r in ratios {
                    let _ = writeln!(out, "- {r}");
                }
                out.push('\n');
            }
        }
        if !s.steps.is_empty() {
            let mut rows = vec![step_header()];
            rows.extend(s.steps.iter().map(step_row));
            out.push_str(&md_table(&rows, &[true; 9]));
            out.push('\n');
        }
        if !s.notes.is_empty() {
            for note in &s.notes {
                let _ = writeln!(out, "- {note}");
            }
            out.push('\n');
        }
        if last_of_id(report, i)
            && let Some(c) = comps.iter().find(|c| c.id == s.id)
        {
            let names: Vec<&str> = c.systems.iter().map(|s| s.system.as_str()).collect();
            let _ = writeln!(out, "### {}: {}\n", c.id, names.join(" vs "));
            out.push_str(
                "The same offered rates, message size and clients against each system; \
                 delivered/s counts deliveries to recipients.\n\n",
            );
            let rows = comparison_rows(c);
            let right = vec![true; rows.first().map_or(0, Vec::len)];
            out.push_str(&md_table(&rows, &right));
            out.push('\n');
        }
    }

    out.push_str("### Latency versus offered load\n\n");
    let _ = writeln!(out, "![latency vs offered load]({plot_link})");
    out
}

/// How the Markdown file links to the plot: relative to the Markdown file's
/// folder when the plot lies under it (the usual case, side by side), else the
/// path as given.
fn relative_link(markdown: &Path, plot: &Path) -> String {
    let dir = markdown.parent().unwrap_or(Path::new(""));
    let rel: PathBuf = plot
        .strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| plot.to_path_buf());
    rel.to_string_lossy().replace('\\', "/")
}

/// The file's new text: `old` with the region between the markers replaced by
/// `generated`, or a new file (or `old` plus markers) if there are none.
///
/// Markers are matched as whole lines so that a mention of them in the prose
/// (in backquotes, say) is not taken for the real thing.
fn splice(old: Option<&str>, generated: &str) -> anyhow::Result<String> {
    let region = format!("{BEGIN}\n{}\n{END}\n", generated.trim_end());
    let old = match old {
        Some(text) if !text.trim().is_empty() => text,
        _ => {
            return Ok(format!(
                "# quince benchmarks\n\n{}\n{region}",
                generated_note()
            ));
        }
    };
    let is = |line: &str, marker: &str| line.trim() == marker;
    let mut offset = 0;
    let mut begin = None;
    let mut end = None;
    for line in old.split_inclusive('\n') {
        if begin.is_none() && is(line, BEGIN) {
            begin = Some(offset);
        } else if begin.is_some() && is(line, END) {
            end = Some(offset + line.len());
            break;
        }
        offset += line.len();
    }
    match (begin, end) {
        (Some(b), Some(e)) => Ok(format!("{}{region}{}", &old[..b], &old[e..])),
        (Some(_), None) => {
            anyhow::bail!("found `{BEGIN}` but no `{END}` after it; fix the markers by hand")
        }
        _ => {
            let mut text = old.trim_end().to_string();
            let _ = write!(text, "\n\n{}\n{region}", generated_note());
            Ok(text)
        }
    }
}

fn generated_note() -> String {
    "The section between the `bench:begin` and `bench:end` markers below is \
     generated by `make bench` (`quince bench --report docs/BENCHMARKS.md`); \
     edit outside it.\n"
        .to_string()
}

/// Writes `text` to a temporary file beside `path` and renames it into place,
/// so a reader (or a crash) never sees half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------
// Plot

const PANEL_W: u32 = 640;
const PANEL_H: u32 = 440;

/// The lowest latency the plot shows, 10 µs; a log axis cannot reach 0.
const Y_FLOOR_MS: f64 = 0.01;

/// The colour of a system's line: quince blue, the peer orange, any other
/// from the palette.
fn system_color(system: &str, index: usize) -> RGBColor {
    match system {
        "quince" => RGBColor(31, 119, 180),
        "mosquitto" => RGBColor(230, 126, 34),
        _ => {
            let c = Palette99::pick(index + 2).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// The p99 latencies of a scenario's steps as (offered/s, p99 ms) points;
/// steps without deliveries have no latency and are left out.
fn p99_points(s: &ScenarioResult) -> Vec<(f64, f64)> {
    s.steps
        .iter()
        .filter(|p| p.latency.count > 0 && p.offered_per_s > 0.0)
        .map(|p| (p.offered_per_s, p.latency.p99_ms))
        .collect()
}

/// A log-scale axis range covering `values` with some room at both ends;
/// never empty or non-positive, which a log axis cannot show.
fn log_range(values: impl Iterator<Item = f64>, floor: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v.max(floor)), hi.max(v))
        });
    if !lo.is_finite() || hi <= 0.0 {
        return floor..floor * 1000.0;
    }
    (lo / 1.3).max(floor / 1.3)..(hi * 1.3).max(lo * 3.0)
}

/// Tick marks for a log axis over `range`: labelled (bold) ticks from the
/// sparsest of 1-10-100, 1-2-5 and 1-2-3-…-9 that gives at least three, and
/// light grid lines at every 1-9 step when the labels are sparser than that.
///
/// plotters' own log ticks label every light line and crowd the axis.
fn log_ticks(range: &std::ops::Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        let first = range.start.log10().floor() as i32;
        let last = range.end.log10().ceil() as i32;
        (first..=last)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| range.contains(v))
            .collect()
    };
    let all = ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    for mantissas in [&[1.0][..], &[1.0, 2.0, 5.0]] {
        let bold = ticks(mantissas);
        if bold.len() >= 3 {
            return (bold, all);
        }
    }
    (all, vec![])
}

/// A tick label: as few digits as the tick needs (`0.05`, `2`, `1,000`).
fn fmt_tick(v: f64) -> String {
    if v >= 1.0 {
        group_thousands(v.round())
    } else {
        let decimals = (-(v.log10() + 1e-9).floor()).clamp(1.0, 9.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// The SVG text: one panel per scenario id with rate steps (side by side,
/// two to a row), p99 latency against offered messages/s on log axes, one
/// line per system.
///
/// Both axes are logarithmic because the offered rates step geometrically and
/// latency past saturation grows by orders of magnitude.
fn plot_svg(report: &Report) -> anyhow::Result<String> {
    let mut ids: Vec<&str> = vec![];
    for s in report.scenarios.iter().filter(|s| !s.steps.is_empty()) {
        if !ids.contains(&s.id.as_str()) {
            ids.push(&s.id);
        }
    }
    let cols = ids.len().clamp(1, 2);
    let rows = ids.len().div_ceil(2).max(1);
    let size = (PANEL_W * cols as u32, PANEL_H * rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        if ids.is_empty() {
            root.draw(&Text::new(
                "no rate-step scenarios in this run",
                (20, 40),
                ("sans-serif", 18).into_font(),
            ))
            .map_err(plot_error)?;
        }
        let panels = root.split_evenly((rows, cols));
        for (id, area) in ids.iter().zip(panels.iter()) {
            let results: Vec<&ScenarioResult> = report
                .scenarios
                .iter()
                .filter(|s| s.id == *id && !s.steps.is_empty())
                .collect();
            draw_panel(area, id, &results)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    id: &str,
    results: &[&ScenarioResult],
) -> anyhow::Result<()> {
    let points: Vec<Vec<(f64, f64)>> = results.iter().map(|s| p99_points(s)).collect();
    let x = log_range(points.iter().flatten().map(|p| p.0), 0.1);
    let y = log_range(points.iter().flatten().map(|p| p.1), Y_FLOOR_MS);
    let (x_bold, x_light) = log_ticks(&x);
    let (y_bold, y_light) = log_ticks(&y);
    let title = results
        .iter()
        .find(|s| s.system == "quince")
        .or(results.first())
        .map_or(id.to_string(), |s| format!("{id}: {}", s.title));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(
            x.log_scale()
                .with_key_points(x_bold)
                .with_light_points(x_light),
            y.log_scale()
                .with_key_points(y_bold)
                .with_light_points(y_light),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("offered load (messages/s)")
        .y_desc("p99 latency (ms)")
        .x_label_formatter(&|v| fmt_tick(*v))
        .y_label_formatter(&|v| fmt_tick(*v))
        .draw()
        .map_err(plot_error)?;
    for (i, (s, pts)) in results.iter().zip(points).enumerate() {
        let color = system_color(&s.system, i);
        let style = color.stroke_width(2);
        chart
            .draw_series(
                LineSeries::new(pts.into_iter().map(|(x, y)| (x, y.max(Y_FLOOR_MS))), style)
                    .point_size(3),
            )
            .map_err(plot_error)?
            .label(s.system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// plotters' errors borrow from the backend's lifetime in ways `?` cannot
/// carry into anyhow; their text is all that is needed.
fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::super::results::Latency;
    use super::*;

    fn step(offered: f64, delivered_per_s: f64, p99: f64) -> RatePoint {
        RatePoint {
            offered_per_s: offered,
            delivered_per_s,
            sent: (offered * 3.0) as u64,
            delivered: (delivered_per_s * 3.0) as u64,
            errors: 0,
            latency: Latency {
                count: (delivered_per_s * 3.0) as u64,
                p50_ms: p99 / 4.0,
                p99_ms: p99,
                p999_ms: p99 * 2.0,
                max_ms: p99 * 3.0,
            },
        }
    }

    fn scenario(id: &str, system: &str, steps: Vec<RatePoint>) -> ScenarioResult {
        ScenarioResult {
            id: id.into(),
            title: "1:1 chat, durable".into(),
            system: system.into(),
            params: vec![("message size".into(), "100 B".into())],
            figures: vec![
                Figure::new("highest rate held (deliveries/s)", 2000.0, "/s").at_least(1000.0),
                Figure::new("server memory", 41.25, "MB").at_most(32.0),
            ],
            steps,
            notes: vec!["a note".into()],
        }
    }

    fn fake_report() -> Report {
        Report {
            date: "2025-01-02T03:04:05Z".into(),
            command: "quince bench --quick --report docs/BENCHMARKS.md".into(),
            machine: super::super::results::Machine {
                cpu: "Test CPU".into(),
                cores: 4,
                memory_mb: 8000,
                kernel: "6.1.0".into(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                data_fs: "ext4".into(),
                quince_version: "0.1.0".into(),
            },
            limits: Some(Limits {
                fsyncs_per_s: 500.0,
                fsync_dir: "/tmp/x".into(),
                udp_datagrams_per_s: 300_000.0,
                udp_payload_bytes: 200,
            }),
            scenarios: vec![
                scenario(
                    "one-to-one",
                    "quince",
                    vec![
                        step(100.0, 100.0, 2.0),
                        step(1000.0, 990.0, 8.0),
                        step(4000.0, 2500.0, 900.0),
                    ],
                ),
                scenario(
                    "one-to-one",
                    "mosquitto",
                    vec![step(100.0, 100.0, 1.0), step(1000.0, 1000.0, 3.0)],
                ),
                scenario(
                    "fan-out",
                    "quince",
                    vec![step(1.0, 500.0, 5.0), step(10.0, 5000.0, 40.0)],
                ),
                scenario("idle", "quince", vec![]),
            ],
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1234567.4), "1,234,567");
        assert_eq!(fmt_num(-1234.0), "-1,234");
        assert_eq!(fmt_num(999.6), "1,000");
        assert_eq!(fmt_num(100.0), "100");
        assert_eq!(fmt_num(42.26), "42.3");
        assert_eq!(fmt_num(4.56789), "4.57");
        assert_eq!(fmt_num(0.123456), "0.123");
        assert_eq!(fmt_num(0.00123456), "0.00123");
        assert_eq!(fmt_num(f64::NAN), "–");
        assert_eq!(fmt_value(1500.0, "/s"), "1,500/s");
        assert_eq!(fmt_value(12.5, "ms"), "12.5 ms");
        assert_eq!(fmt_value(7.0, ""), "7");
        assert_eq!(fmt_value(7.5, ""), "7.50");
        let f = Figure::new("p99", 30.0, "ms").at_most(25.0);
        assert_eq!(fmt_target(&f), "≤ 25.0 ms");
        assert_eq!(fmt_met(&f), "✗");
        let f = Figure::new("rate", 1200.0, "/s").at_least(1000.0);
        assert_eq!(fmt_target(&f), "≥ 1,000/s");
        assert_eq!(fmt_met(&f), "✓");
        assert_eq!(fmt_met(&Figure::new("x", 1.0, "")), "");
    }

    #[test]
    fn table_has_figures_steps_and_comparison() {
        let t = table_text(&fake_report());
        assert!(t.contains("Test CPU, 4 logical cores, 8,000 MB RAM"));
        assert!(t.contains("500 fsyncs/s"));
        assert!(t.contains("≥ 1,000/s  ✓"));
        assert!(t.contains("one-to-one: quince vs mosquitto"));
        assert!(!t.contains("fan-out: quince vs"));
        // The comparison comes after both systems' sections.
        let cmp = t.find("quince vs mosquitto").unwrap();
        assert!(t.find("[mosquitto]").unwrap() < cmp);
    }

    #[test]
    fn comparison_aligns_rates_and_marks_missing_steps() {
        let report = fake_report();
        let comps = comparisons(&report);
        assert_eq!(comps.len(), 1);
        let rows = comparison_rows(&comps[0]);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[3], ["4,000", "2,500", "–", "900", "–"]);
    }

    #[test]
    fn markdown_region_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("BENCHMARKS.md");
        let plot = dir.path().join("benchmarks-latency.svg");
        let before = "# quince benchmarks\n\nDesign notes, `<!-- bench:begin -->` in prose.\n\n";
        let after = "\n## Before and after\n\nHand-written.\n";
        std::fs::write(&md, format!("{before}{BEGIN}\nold stuff\n{END}\n{after}")).unwrap();

        let report = fake_report();
        write_markdown(&report, &md, &plot).unwrap();
        let once = std::fs::read_to_string(&md).unwrap();
        assert!(once.starts_with(before));
        assert!(once.ends_with(after));
        assert!(!once.contains("old stuff"));
        assert!(once.contains("![latency vs offered load](benchmarks-latency.svg)"));
        assert!(once.contains("| highest rate held (deliveries/s) | 2,000/s | ≥ 1,000/s | ✓ |"));
        assert_eq!(cell("a|b"), "a\\|b");
        assert!(once.contains("**4.00** per fsync"));
        assert!(once.contains("### one-to-one: quince vs mosquitto"));

        write_markdown(&report, &md, &plot).unwrap();
        assert_eq!(std::fs::read_to_string(&md).unwrap(), once);
    }

    #[test]
    fn markdown_without_markers_gets_them() {
        let generated = "GEN";
        let new = splice(None, generated).unwrap();
        assert!(new.starts_with("# quince benchmarks\n"));
        assert!(new.contains(&format!("{BEGIN}\nGEN\n{END}\n")));
        assert_eq!(splice(Some(&new), generated).unwrap(), new);

        let hand = "# Mine\n\nKeep me.";
        let new = splice(Some(hand), generated).unwrap();
        assert!(new.starts_with("# Mine\n\nKeep me.\n\n"));
        assert!(new.ends_with(&format!("{BEGIN}\nGEN\n{END}\n")));
        assert_eq!(splice(Some(&new), generated).unwrap(), new);

        assert!(splice(Some(&format!("x\n{BEGIN}\nno end\n")), generated).is_err());
    }

    #[test]
    fn plot_is_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        write_plot(&fake_report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("p99 latency (ms)"));
        assert!(svg.contains("mosquitto"));

        // A run without rate steps still gives a valid picture.
        let mut report = fake_report();
        report.scenarios.retain(|s| s.steps.is_empty());
        assert!(plot_svg(&report).unwrap().contains("<svg"));
    }

    #[test]
    fn log_ticks_are_sparse_and_round() {
        let (bold, light) = log_ticks(&(50.0..20_000.0));
        assert_eq!(bold, [100.0, 1000.0, 10_000.0]);
        assert_eq!(light.len(), 24);
        let (bold, _) = log_ticks(&(0.7..15.0));
        assert_eq!(bold, [1.0, 2.0, 5.0, 10.0]);
        let (bold, light) = log_ticks(&(210.0..480.0));
        assert_eq!(bold, [300.0, 400.0]);
        assert!(light.is_empty());
        assert_eq!(fmt_tick(0.05), "0.05");
        assert_eq!(fmt_tick(0.3), "0.3");
        assert_eq!(fmt_tick(2000.0), "2,000");
    }

    #[test]
    fn plot_link_is_relative_to_the_markdown() {
        assert_eq!(
            relative_link(
                Path::new("docs/BENCHMARKS.md"),
                Path::new("docs/benchmarks-latency.svg")
            ),
            "benchmarks-latency.svg"
        );
        assert_eq!(
            relative_link(Path::new("BENCHMARKS.md"), Path::new("out/p.svg")),
            "out/p.svg"
        );
    }
}
