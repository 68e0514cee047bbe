//! The allocator's input and output types and input validation.

use serde::{Deserialize, Serialize};

/// Bits per second.
pub type Bps = u64;

/// A capacitated link, used in one direction (a NIC's transmit side, a
/// fabric link, a NIC's receive side, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub capacity_bps: Bps,
}

/// An ENI's bandwidth contract, per direction (tx = what it sends, rx = what it
/// receives). `weight` (≥ 1) applies to both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eni {
    pub guaranteed_tx_bps: Bps,
    pub guaranteed_rx_bps: Bps,
    pub limit_tx_bps: Bps,
    pub limit_rx_bps: Bps,
    pub weight: u32,
}

impl Default for Eni {
    /// No guarantee, no limit, weight 1.
    fn default() -> Self {
        Eni {
            guaranteed_tx_bps: 0,
            guaranteed_rx_bps: 0,
            limit_tx_bps: Bps::MAX,
            limit_rx_bps: Bps::MAX,
            weight: 1,
        }
    }
}

/// A flow from `src` to `dst` (ENI indices; `None` = an endpoint outside the
/// problem, with no hose constraint), crossing `path` (link indices, e.g.
/// sender NIC tx, fabric links, receiver NIC rx), wanting `demand_bps`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub src: Option<usize>,
    pub dst: Option<usize>,
    pub demand_bps: Bps,
    pub path: Vec<usize>,
}

/// An aggregate cap over several ENIs, applied separately to what they send
/// and what they receive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub limit_bps: Bps,
    pub members: Vec<usize>,
}

/// One allocation problem: links, ENIs, the flows between them and pools.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    pub links: Vec<Link>,
    pub enis: Vec<Eni>,
    pub flows: Vec<Flow>,
    pub pools: Vec<Pool>,
}

/// The allocator's answer. Every vector is indexed like the corresponding
/// vector of the [`Problem`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allocation {
    /// The rate of each flow.
    pub flow_rate_bps: Vec<Bps>,
    /// The part of the hose guarantees each flow got (after scaling down on
    /// oversubscribed links and pools); `flow_rate_bps[f] >= flow_guarantee_bps[f]`.
    pub flow_guarantee_bps: Vec<Bps>,
    /// What each ENI sends in total (sum over flows with `src == Some(eni)`).
    pub eni_tx_bps: Vec<Bps>,
    /// What each ENI receives in total (sum over flows with `dst == Some(eni)`).
    pub eni_rx_bps: Vec<Bps>,
    /// The load on each link.
    pub link_load_bps: Vec<Bps>,
    /// What each pool's members send in total.
    pub pool_tx_bps: Vec<Bps>,
    /// What each pool's members receive in total.
    pub pool_rx_bps: Vec<Bps>,
}

/// Why a [`Problem`] cannot be allocated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProblemError {
    #[error("flow {flow}: source ENI {eni} does not exist (the problem has {enis} ENIs)")]
    FlowSrcOutOfRange {
        flow: usize,
        eni: usize,
        enis: usize,
    },
    #[error("flow {flow}: destination ENI {eni} does not exist (the problem has {enis} ENIs)")]
    FlowDstOutOfRange {
        flow: usize,
        eni: usize,
        enis: usize,
    },
    #[error("flow {flow}: link {link} in its path does not exist (the problem has {links} links)")]
    FlowLinkOutOfRange {
        flow: usize,
        link: usize,
        links: usize,
    },
    #[error("flow {flow}: link {link} appears more than once in its path")]
    DuplicateLinkInPath { flow: usize, link: usize },
    #[error("ENI {eni}: weight must be at least 1")]
    ZeroWeight { eni: usize },
    #[error(
        "ENI {eni}: guaranteed tx {guaranteed_bps} bit/s is above its tx limit {limit_bps} bit/s"
    )]
    TxGuaranteeAboveLimit {
        eni: usize,
        guaranteed_bps: Bps,
        limit_bps: Bps,
    },
    #[error(
        "ENI {eni}: guaranteed rx {guaranteed_bps} bit/s is above its rx limit {limit_bps} bit/s"
    )]
    RxGuaranteeAboveLimit {
        eni: usize,
        guaranteed_bps: Bps,
        limit_bps: Bps,
    },
    #[error("pool {pool}: member ENI {eni} does not exist (the problem has {enis} ENIs)")]
    PoolMemberOutOfRange {
        pool: usize,
        eni: usize,
        enis: usize,
    },
    #[error("pool {pool}: ENI {eni} is listed more than once")]
    DuplicatePoolMember { pool: usize, eni: usize },
    #[error("the problem is too large: {what} ({count}) must stay below 2^32")]
    TooLarge { what: &'static str, count: usize },
}

impl Problem {
    /// Checks indices, weights and guarantee ≤ limit.
    pub fn validate(&self) -> Result<(), ProblemError> {
        let mut scratch = ValidateScratch::default();
        self.validate_with(&mut scratch)
    }

    /// The number of constraints the allocator builds: links, ENI tx and rx
    /// limits, pool tx and rx caps.
    pub(crate) fn resource_count(&self) -> usize {
        self.links.len() + 2 * self.enis.len() + 2 * self.pools.len()
    }

    /// [`Problem::validate`] with reusable marker arrays (no allocation once
    /// they are large enough).
    pub(crate) fn validate_with(&self, s: &mut ValidateScratch) -> Result<(), ProblemError> {
        let limit = u32::MAX as usize;
        if self.flows.len() >= limit {
            return Err(ProblemError::TooLarge {
                what: "flows",
                count: self.flows.len(),
            });
        }
        if self.resource_count() >= limit {
            return Err(ProblemError::TooLarge {
                what: "links + 2 × ENIs + 2 × pools",
                count: self.resource_count(),
            });
        }
        for (i, e) in self.enis.iter().enumerate() {
            if e.weight == 0 {
                return Err(ProblemError::ZeroWeight { eni: i });
            }
            if e.guaranteed_tx_bps > e.limit_tx_bps {
                return Err(ProblemError::TxGuaranteeAboveLimit {
                    eni: i,
                    guaranteed_bps: e.guaranteed_tx_bps,
                    limit_bps: e.limit_tx_bps,
                });
            }
            if e.guaranteed_rx_bps > e.limit_rx_bps {
                return Err(ProblemError::RxGuaranteeAboveLimit {
                    eni: i,
                    guaranteed_bps: e.guaranteed_rx_bps,
                    limit_bps: e.limit_rx_bps,
                });
            }
        }
        let enis = self.enis.len();
        let links = self.links.len();
        // Stamp arrays: mark[i] == stamp means "seen in the current list".
        s.link_mark.clear();
        s.link_mark.resize(links, u32::MAX);
        for (fi, f) in self.flows.iter().enumerate() {
            if let Some(e) = f.src
                && e >= enis
            {
                return Err(ProblemError::FlowSrcOutOfRange {
                    flow: fi,
                    eni: e,
                    enis,
                });
            }
            if let Some(e) = f.dst
                && e >= enis
            {
                return Err(ProblemError::FlowDstOutOfRange {
                    flow: fi,
                    eni: e,
                    enis,
                });
            }
            for &l in &f.path {
                if l >= links {
                    return Err(ProblemError::FlowLinkOutOfRange {
                        flow: fi,
                        link: l,
                        links,
                    });
                }
                if s.link_mark[l] == fi as u32 {
                    return Err(ProblemError::DuplicateLinkInPath { flow: fi, link: l });
                }
                s.link_mark[l] = fi as u32;
            }
        }
        s.eni_mark.clear();
        s.eni_mark.resize(enis, u32::MAX);
        for (pi, p) in self.pools.iter().enumerate() {
            for &e in &p.members {
                if e >= enis {
                    return Err(ProblemError::PoolMemberOutOfRange {
                        pool: pi,
                        eni: e,
                        enis,
                    });
                }
                if s.eni_mark[e] == pi as u32 {
                    return Err(ProblemError::DuplicatePoolMember { pool: pi, eni: e });
                }
                s.eni_mark[e] = pi as u32;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub(crate) struct ValidateScratch {
    link_mark: Vec<u32>,
    eni_mark: Vec<u32>,
}
