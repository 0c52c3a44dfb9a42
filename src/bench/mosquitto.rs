//! The reference peer: Mosquitto (MQTT QoS 1 over TLS, persistence on),
//! started on loopback and driven at the same rates and message size as quince.

use std::path::Path;
use std::time::Duration;

use super::results::RatePoint;

pub struct Mosquitto {}

impl Mosquitto {
    /// Starts mosquitto on a free loopback port with TLS and persistence under `work_dir`.
    pub async fn start(_work_dir: &Path) -> anyhow::Result<Mosquitto> {
        anyhow::bail!("not written yet")
    }

    /// `pairs` publisher/subscriber pairs, `rate` messages/s in all, open loop.
    pub async fn one_to_one(
        &self,
        _pairs: usize,
        _rate: f64,
        _duration: Duration,
        _size: usize,
    ) -> anyhow::Result<RatePoint> {
        todo!("helper")
    }

    /// One publisher, `members` subscribers of one topic, `rate` messages/s.
    pub async fn fan_out(
        &self,
        _members: usize,
        _rate: f64,
        _duration: Duration,
        _size: usize,
    ) -> anyhow::Result<RatePoint> {
        todo!("helper")
    }

    /// Stops mosquitto and removes its files.
    pub async fn stop(self) -> anyhow::Result<()> {
        Ok(())
    }
}
