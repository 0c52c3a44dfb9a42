//! Writing a [`Report`]: the terminal table, docs/BENCHMARKS.md and the plot.

use std::path::Path;

use super::results::Report;

/// Prints the summary table on stdout.
pub fn print_table(_report: &Report) {
    todo!("helper")
}

/// Writes the latency-versus-offered-load plot (SVG).
pub fn write_plot(_report: &Report, _path: &Path) -> anyhow::Result<()> {
    todo!("helper")
}

/// Replaces the generated part of the Markdown report at `path`.
pub fn write_markdown(_report: &Report, _path: &Path, _plot: &Path) -> anyhow::Result<()> {
    todo!("helper")
}
