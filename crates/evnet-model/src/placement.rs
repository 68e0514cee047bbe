//! The scheduler's pure core: bandwidth admission and host choice.
//!
//! Admission: on every host, the sum of the guarantees of attached ENIs stays
//! within `nic_mbps × (100 − headroom%) / 100`, in each direction (an ENI's
//! guarantee is symmetric, so one sum covers both). Choice: `spread` takes the
//! ready host with the fewest instances, `pack` the fullest one that fits;
//! both only among hosts that can admit what the instance brings.

use crate::error::ModelError;
use crate::resources::PlacementStrategy;

pub const DEFAULT_HEADROOM_PERCENT: u64 = 10;

/// What the scheduler knows of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLoad {
    pub host_id: String,
    pub host_name: String,
    pub ready: bool,
    pub nic_mbps: u64,
    /// Sum of `guaranteed_mbps` of the ENIs attached on this host.
    pub guaranteed_mbps: u64,
    pub instance_count: u32,
}

impl HostLoad {
    /// Guarantees this host may hold in total.
    pub fn admissible_mbps(&self, headroom_percent: u64) -> u64 {
        self.nic_mbps.saturating_mul(100 - headroom_percent.min(100)) / 100
    }

    /// Guarantee capacity still free.
    pub fn free_mbps(&self, headroom_percent: u64) -> u64 {
        self.admissible_mbps(headroom_percent).saturating_sub(self.guaranteed_mbps)
    }

    /// Refuses `extra_mbps` more guarantee with an error that names the host,
    /// what was asked and what is free.
    pub fn admit(&self, extra_mbps: u64, headroom_percent: u64) -> Result<(), ModelError> {
        let free = self.free_mbps(headroom_percent);
        if extra_mbps > free {
            return Err(ModelError::conflict(
                "insufficient_bandwidth",
                format!(
                    "host {} ({}) cannot guarantee {extra_mbps} Mbit/s more: {free} Mbit/s of guarantee is free \
                     ({} Mbit/s NIC, {headroom_percent}% headroom, {} Mbit/s already guaranteed)",
                    self.host_name, self.host_id, self.nic_mbps, self.guaranteed_mbps
                ),
            ));
        }
        Ok(())
    }
}

/// Chooses a host for an instance whose ENIs guarantee `need_mbps` in total.
/// Returns the index into `hosts`.
pub fn choose_host(
    hosts: &[HostLoad],
    need_mbps: u64,
    strategy: PlacementStrategy,
    headroom_percent: u64,
) -> Result<usize, ModelError> {
    let ready: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].ready).collect();
    if ready.is_empty() {
        return Err(ModelError::conflict(
            "no_host_available",
            "no host is ready to run instances; start an agent (evnet agent) or wait for a lost host to return",
        ));
    }
    let fits: Vec<usize> =
        ready.iter().copied().filter(|&i| hosts[i].admit(need_mbps, headroom_percent).is_ok()).collect();
    let key = |i: usize| (hosts[i].instance_count, hosts[i].free_mbps(headroom_percent), &hosts[i].host_name);
    let chosen = match strategy {
        // Fewest instances; then most free guarantee; then by name.
        PlacementStrategy::Spread => fits.iter().copied().min_by(|&a, &b| {
            let (ca, fa, na) = key(a);
            let (cb, fb, nb) = key(b);
            ca.cmp(&cb).then(fb.cmp(&fa)).then(na.cmp(nb))
        }),
        // Most instances; then least free guarantee; then by name.
        PlacementStrategy::Pack => fits.iter().copied().min_by(|&a, &b| {
            let (ca, fa, na) = key(a);
            let (cb, fb, nb) = key(b);
            cb.cmp(&ca).then(fa.cmp(&fb)).then(na.cmp(nb))
        }),
    };
    match chosen {
        Some(i) => Ok(i),
        None => {
            let best = ready.iter().copied().max_by_key(|&i| hosts[i].free_mbps(headroom_percent)).unwrap_or(ready[0]);
            let h = &hosts[best];
            Err(ModelError::conflict(
                "insufficient_bandwidth",
                format!(
                    "no host can guarantee {need_mbps} Mbit/s: the most free is host {} ({}) with {} Mbit/s of guarantee free",
                    h.host_name,
                    h.host_id,
                    h.free_mbps(headroom_percent)
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, nic: u64, g: u64, n: u32) -> HostLoad {
        HostLoad { host_id: format!("host-{name}"), host_name: name.into(), ready: true, nic_mbps: nic, guaranteed_mbps: g, instance_count: n }
    }

    #[test]
    fn admission_keeps_headroom() {
        let h = host("a", 1000, 800, 0);
        assert_eq!(h.admissible_mbps(10), 900);
        assert!(h.admit(100, 10).is_ok());
        let e = h.admit(101, 10).unwrap_err();
        assert_eq!(e.code, "insufficient_bandwidth");
        assert!(e.message.contains("host a") && e.message.contains("101") && e.message.contains("100 Mbit/s of guarantee is free"));
    }

    #[test]
    fn spread_and_pack() {
        let hosts = vec![host("a", 1000, 0, 2), host("b", 1000, 0, 1), host("c", 1000, 850, 0)];
        // c has fewest instances but cannot admit 100.
        assert_eq!(choose_host(&hosts, 100, PlacementStrategy::Spread, 10).unwrap(), 1);
        assert_eq!(choose_host(&hosts, 0, PlacementStrategy::Spread, 10).unwrap(), 2);
        assert_eq!(choose_host(&hosts, 100, PlacementStrategy::Pack, 10).unwrap(), 0);
        let e = choose_host(&hosts, 1000, PlacementStrategy::Spread, 10).unwrap_err();
        assert_eq!(e.code, "insufficient_bandwidth");
        let mut down = hosts.clone();
        down.iter_mut().for_each(|h| h.ready = false);
        assert_eq!(choose_host(&down, 0, PlacementStrategy::Spread, 10).unwrap_err().code, "no_host_available");
    }
}
