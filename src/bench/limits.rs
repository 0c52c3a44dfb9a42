//! The machine's own limits, measured in the same run as quince: fsyncs per
//! second on the data disk and UDP datagrams per second over loopback.

use std::path::Path;

use super::results::{Limits, Machine};

/// Describes this machine (CPU, cores, memory, kernel, OS, data filesystem).
pub fn machine(_data_dir: &Path) -> Machine {
    todo!("helper")
}

/// Measures fsyncs/s in `data_dir` and loopback UDP datagrams/s.
pub async fn measure(_data_dir: &Path, _quick: bool) -> anyhow::Result<Limits> {
    todo!("helper")
}
