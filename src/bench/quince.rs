//! The scenarios against quince.

use std::path::{Path, PathBuf};

use super::BenchArgs;
use super::results::ScenarioResult;

pub struct Bench {
    work_dir: PathBuf,
}

impl Bench {
    pub fn new(_args: &BenchArgs, work_dir: &Path) -> Bench {
        Bench {
            work_dir: work_dir.to_path_buf(),
        }
    }

    pub async fn one_to_one(&self) -> anyhow::Result<ScenarioResult> {
        todo!()
    }
    pub async fn fan_out(&self) -> anyhow::Result<ScenarioResult> {
        todo!()
    }
    pub async fn idle(&self) -> anyhow::Result<ScenarioResult> {
        todo!()
    }
    pub async fn reconnect(&self) -> anyhow::Result<ScenarioResult> {
        todo!()
    }
    pub async fn catch_up(&self) -> anyhow::Result<ScenarioResult> {
        todo!()
    }
}
