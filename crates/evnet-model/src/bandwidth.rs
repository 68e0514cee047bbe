//! Bandwidth units. The API speaks Mbit/s (`guaranteed_mbps`); everything
//! inside speaks bit/s in a `u64`. An ENI's spec applies to each direction
//! separately: what it sends and what it receives.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Largest rate the API accepts for a limit or a NIC: 400 Gbit/s.
pub const MAX_MBPS: u64 = 400_000;
/// Largest weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Largest burst: 16 MiB.
pub const MAX_BURST_KBYTES: u32 = 16 * 1024;
/// Default burst: 64 KiB reaches the full rate with HTB on this kernel, where
/// one MTU costs about 1% at 1 Gbit/s.
pub const DEFAULT_BURST_KBYTES: u32 = 64;

/// An ENI's bandwidth, in each direction: at least `guaranteed_mbps` whenever
/// it has the demand, a share of idle capacity by `weight` above that, never
/// more than `limit_mbps` (`None`: the host NIC's capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BandwidthSpec {
    /// At most `limit_mbps` when that is given.
    #[serde(default)]
    #[schemars(range(max = MAX_MBPS))]
    pub guaranteed_mbps: u64,
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_MBPS))]
    pub limit_mbps: Option<u64>,
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = MAX_WEIGHT))]
    pub weight: u32,
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = MAX_BURST_KBYTES))]
    pub burst_kbytes: u32,
}

fn default_weight() -> u32 {
    1
}
fn default_burst() -> u32 {
    DEFAULT_BURST_KBYTES
}

impl Default for BandwidthSpec {
    fn default() -> Self {
        Self { guaranteed_mbps: 0, limit_mbps: None, weight: 1, burst_kbytes: DEFAULT_BURST_KBYTES }
    }
}

impl BandwidthSpec {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(ModelError::invalid(
                "invalid_bandwidth",
                format!("weight must be between 1 and {MAX_WEIGHT}, got {}", self.weight),
            ));
        }
        if self.guaranteed_mbps > MAX_MBPS {
            return Err(ModelError::invalid(
                "invalid_bandwidth",
                format!("guaranteed_mbps must be at most {MAX_MBPS}, got {}", self.guaranteed_mbps),
            ));
        }
        if let Some(limit) = self.limit_mbps {
            if limit == 0 || limit > MAX_MBPS {
                return Err(ModelError::invalid(
                    "invalid_bandwidth",
                    format!("limit_mbps must be between 1 and {MAX_MBPS}, got {limit}"),
                ));
            }
            if self.guaranteed_mbps > limit {
                return Err(ModelError::invalid(
                    "invalid_bandwidth",
                    format!(
                        "guaranteed_mbps ({}) must not exceed limit_mbps ({limit})",
                        self.guaranteed_mbps
                    ),
                ));
            }
        }
        if self.burst_kbytes == 0 || self.burst_kbytes > MAX_BURST_KBYTES {
            return Err(ModelError::invalid(
                "invalid_bandwidth",
                format!("burst_kbytes must be between 1 and {MAX_BURST_KBYTES}, got {}", self.burst_kbytes),
            ));
        }
        Ok(())
    }

    pub fn guaranteed_bps(&self) -> u64 {
        mbps_to_bps(self.guaranteed_mbps)
    }

    /// The limit in bit/s, with `nic_mbps` standing in for "no limit".
    pub fn limit_bps(&self, nic_mbps: u64) -> u64 {
        mbps_to_bps(self.limit_mbps.unwrap_or(nic_mbps).min(nic_mbps.max(1)))
    }
}

pub fn mbps_to_bps(mbps: u64) -> u64 {
    mbps.saturating_mul(1_000_000)
}

/// Parses a rate as people write it — `200M`, `1G`, `1.5G`, `500` (Mbit/s),
/// `800Mbit`, `10Gbps` — into whole Mbit/s.
pub fn parse_rate_mbps(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a rate: write it like 200M, 1G or 1.5G (bits per second)"))?;
    let unit = unit.trim().trim_end_matches("ps").trim_end_matches("/s").trim_end_matches("bit").trim_end_matches('b');
    let mbps = match unit {
        "" | "m" => value,
        "k" => value / 1000.0,
        "g" => value * 1000.0,
        "t" => value * 1_000_000.0,
        _ => return Err(format!("`{text}` has an unknown unit: use K, M, G or T (bits per second)")),
    };
    if !(mbps.is_finite()) || mbps < 0.0 {
        return Err(format!("`{text}` is not a valid rate"));
    }
    let rounded = mbps.round();
    if (rounded - mbps).abs() > 1e-9 {
        return Err(format!("`{text}` is not a whole number of Mbit/s"));
    }
    Ok(rounded as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate_mbps("200M"), Ok(200));
        assert_eq!(parse_rate_mbps("1G"), Ok(1000));
        assert_eq!(parse_rate_mbps("1.5G"), Ok(1500));
        assert_eq!(parse_rate_mbps("500"), Ok(500));
        assert_eq!(parse_rate_mbps("800Mbit"), Ok(800));
        assert_eq!(parse_rate_mbps("10Gbps"), Ok(10_000));
        assert!(parse_rate_mbps("fast").is_err());
        assert!(parse_rate_mbps("10X").is_err());
        assert!(parse_rate_mbps("2000K") == Ok(2));
        assert!(parse_rate_mbps("1K").is_err());
    }

    #[test]
    fn validates_specs() {
        assert!(BandwidthSpec::default().validate().is_ok());
        let bad = BandwidthSpec { guaranteed_mbps: 300, limit_mbps: Some(200), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().code, "invalid_bandwidth");
        let bad = BandwidthSpec { weight: 0, ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = BandwidthSpec { limit_mbps: Some(MAX_MBPS + 1), ..Default::default() };
        assert!(bad.validate().is_err());
        let spec = BandwidthSpec { guaranteed_mbps: 100, limit_mbps: None, ..Default::default() };
        assert_eq!(spec.limit_bps(1000), 1_000_000_000);
        assert_eq!(spec.guaranteed_bps(), 100_000_000);
    }
}
