//! Hand-computed cases.

use evnet_alloc::{
    Allocator, Eni, Flow, Link, Pool, Problem, ProblemError, allocate, try_allocate, verify,
};

const M: u64 = 1_000_000;
const BIG: u64 = 100_000 * M;

fn eni(g_tx: u64, g_rx: u64, weight: u32) -> Eni {
    Eni {
        guaranteed_tx_bps: g_tx,
        guaranteed_rx_bps: g_rx,
        weight,
        ..Default::default()
    }
}

fn out(src: usize, demand: u64, path: Vec<usize>) -> Flow {
    Flow {
        src: Some(src),
        dst: None,
        demand_bps: demand,
        path,
    }
}

fn checked(p: &Problem) -> evnet_alloc::Allocation {
    let a = allocate(p);
    if let Err(e) = verify(p, &a) {
        panic!("{e}\n{p:?}\n{a:?}");
    }
    a
}

/// Two ENIs with 300 and 100 Mbit/s guarantees on a 500 Mbit/s link.
fn two_enis(w_a: u32, w_b: u32, d_a: u64, d_b: u64) -> Problem {
    Problem {
        links: vec![Link {
            capacity_bps: 500 * M,
        }],
        enis: vec![eni(300 * M, 0, w_a), eni(100 * M, 0, w_b)],
        flows: vec![out(0, d_a, vec![0]), out(1, d_b, vec![0])],
        pools: vec![],
    }
}

#[test]
fn backlogged_pair_gets_guarantees_plus_spare_split_by_weight() {
    let a = checked(&two_enis(1, 1, BIG, BIG));
    assert_eq!(a.flow_guarantee_bps, vec![300 * M, 100 * M]);
    assert_eq!(a.flow_rate_bps, vec![350 * M, 150 * M]);
    assert_eq!(a.link_load_bps, vec![500 * M]);

    let a = checked(&two_enis(1, 3, BIG, BIG));
    assert_eq!(a.flow_rate_bps, vec![325 * M, 175 * M]);
    let a = checked(&two_enis(4, 1, BIG, BIG));
    assert_eq!(a.flow_rate_bps, vec![380 * M, 120 * M]);
}

#[test]
fn when_one_stops_the_other_gets_the_link() {
    let a = checked(&two_enis(1, 1, BIG, 0));
    assert_eq!(a.flow_rate_bps, vec![500 * M, 0]);
    let a = checked(&two_enis(1, 1, 0, BIG));
    assert_eq!(a.flow_rate_bps, vec![0, 500 * M]);
    // A small demand is served in full and the rest goes to the other.
    let a = checked(&two_enis(1, 1, BIG, 20 * M));
    assert_eq!(a.flow_rate_bps, vec![480 * M, 20 * M]);
    assert_eq!(a.flow_guarantee_bps, vec![300 * M, 20 * M]);
}

/// Hosts H1 (links 0 tx, 1 rx), H2 (2, 3), H3 (4, 5) with 1 Gbit/s NICs.
/// S1 on H1 and S2 on H3 send to R on H2; S3 on H3, ten times heavier,
/// floods Q, also on H2.
fn incast(r_rx_guarantee: u64) -> Problem {
    let nic = Link {
        capacity_bps: 1000 * M,
    };
    Problem {
        links: vec![nic; 6],
        enis: vec![
            eni(300 * M, 0, 1),        // 0: S1
            eni(300 * M, 0, 1),        // 1: S2
            eni(0, r_rx_guarantee, 1), // 2: R
            eni(0, 0, 10),             // 3: S3
            eni(0, 0, 1),              // 4: Q
        ],
        flows: vec![
            Flow {
                src: Some(0),
                dst: Some(2),
                demand_bps: BIG,
                path: vec![0, 3],
            },
            Flow {
                src: Some(1),
                dst: Some(2),
                demand_bps: BIG,
                path: vec![4, 3],
            },
            Flow {
                src: Some(3),
                dst: Some(4),
                demand_bps: BIG,
                path: vec![4, 3],
            },
        ],
        pools: vec![],
    }
}

#[test]
fn incast_receiver_gets_its_rx_guarantee() {
    let a = checked(&incast(400 * M));
    assert!(a.eni_rx_bps[2] >= 400 * M, "{a:?}");
    // Each sender holds half of R's rx guarantee; the 600 Mbit/s left on H2's
    // NIC are split 1 : 1 : 10.
    assert_eq!(a.flow_guarantee_bps, vec![200 * M, 200 * M, 0]);
    assert_eq!(a.flow_rate_bps, vec![250 * M, 250 * M, 500 * M]);
    assert_eq!(a.eni_rx_bps[2], 500 * M);
    assert_eq!(a.link_load_bps[3], 1000 * M);

    // Without the guarantee the flood takes 10/12 of the NIC.
    let a = checked(&incast(0));
    assert!(a.eni_rx_bps[2] < 200 * M, "{a:?}");
}

#[test]
fn hose_partition_moves_guarantee_a_receiver_cannot_take() {
    // A (300 tx) sends to B (100 rx) and C (1000 rx): B can only hold 100, so
    // A's flow to C gets the other 200.
    let p = Problem {
        links: vec![],
        enis: vec![eni(300 * M, 0, 1), eni(0, 100 * M, 1), eni(0, 1000 * M, 1)],
        flows: vec![
            Flow {
                src: Some(0),
                dst: Some(1),
                demand_bps: BIG,
                path: vec![],
            },
            Flow {
                src: Some(0),
                dst: Some(2),
                demand_bps: BIG,
                path: vec![],
            },
        ],
        pools: vec![],
    };
    let a = checked(&p);
    assert_eq!(a.flow_guarantee_bps, vec![100 * M, 200 * M]);
    // Nothing limits the rates, so they reach the demands.
    assert_eq!(a.flow_rate_bps, vec![BIG, BIG]);
}

#[test]
fn guarantee_water_fills_by_demand() {
    // 300 among demands 50, 500, 500: the small one is served, the other two
    // split the remaining 250.
    let p = Problem {
        links: vec![Link {
            capacity_bps: 10_000 * M,
        }],
        enis: vec![eni(300 * M, 0, 1)],
        flows: vec![
            out(0, 50 * M, vec![0]),
            out(0, 500 * M, vec![0]),
            out(0, 500 * M, vec![0]),
        ],
        pools: vec![],
    };
    let a = checked(&p);
    assert_eq!(a.flow_guarantee_bps, vec![50 * M, 125 * M, 125 * M]);
    // An indivisible guarantee still adds up: 100 among three flows.
    let p = Problem {
        links: vec![],
        enis: vec![eni(100, 0, 1)],
        flows: vec![
            out(0, BIG, vec![]),
            out(0, BIG, vec![]),
            out(0, BIG, vec![]),
        ],
        pools: vec![],
    };
    let a = checked(&p);
    assert_eq!(a.flow_guarantee_bps.iter().sum::<u64>(), 100);
    assert!(a.flow_guarantee_bps.iter().all(|&g| g == 33 || g == 34));
}

#[test]
fn more_flows_do_not_buy_more_share() {
    let mut flows = vec![out(0, BIG, vec![0])];
    flows.extend((0..5).map(|_| out(1, BIG, vec![0])));
    let p = Problem {
        links: vec![Link {
            capacity_bps: 600 * M,
        }],
        enis: vec![eni(0, 0, 1), eni(0, 0, 1)],
        flows,
        pools: vec![],
    };
    let a = checked(&p);
    assert_eq!(a.eni_tx_bps, vec![300 * M, 300 * M]);
    assert!(a.flow_rate_bps[1..].iter().all(|&r| r == 60 * M));
}

#[test]
fn limits_and_pools_cap_rates() {
    let mut capped = eni(0, 0, 1);
    capped.limit_tx_bps = 100 * M;
    let p = Problem {
        links: vec![Link {
            capacity_bps: 1000 * M,
        }],
        enis: vec![capped, eni(0, 0, 1), eni(0, 0, 1), eni(0, 0, 1)],
        flows: (0..4).map(|e| out(e, BIG, vec![0])).collect(),
        pools: vec![Pool {
            limit_bps: 300 * M,
            members: vec![1, 2],
        }],
    };
    let a = checked(&p);
    // ENI 0 stops at its limit, the pool holds ENIs 1 and 2 to 300 together,
    // ENI 3 takes the rest.
    assert_eq!(a.flow_rate_bps, vec![100 * M, 150 * M, 150 * M, 600 * M]);
    assert_eq!(a.pool_tx_bps, vec![300 * M]);
    assert_eq!(a.pool_rx_bps, vec![0]);
}

#[test]
fn oversubscribed_fabric_scales_guarantees_proportionally() {
    // Two senders with 300 and 100 guaranteed cross a 200 Mbit/s link.
    let p = Problem {
        links: vec![Link {
            capacity_bps: 200 * M,
        }],
        enis: vec![eni(300 * M, 0, 1), eni(100 * M, 0, 1)],
        flows: vec![out(0, BIG, vec![0]), out(1, BIG, vec![0])],
        pools: vec![],
    };
    let a = checked(&p);
    assert_eq!(a.flow_guarantee_bps, vec![150 * M, 50 * M]);
    assert_eq!(a.flow_rate_bps, vec![150 * M, 50 * M]);
}

#[test]
fn host_loop_shape_one_flow_per_eni_per_direction() {
    // 1 Gbit/s NIC, ENI 0: 200 guaranteed each way, ENI 1: 100, weight 3.
    let mut enis = vec![eni(200 * M, 200 * M, 1), eni(100 * M, 100 * M, 3)];
    enis[1].limit_rx_bps = 150 * M;
    let p = Problem {
        links: vec![
            Link {
                capacity_bps: 1000 * M,
            },
            Link {
                capacity_bps: 1000 * M,
            },
        ],
        enis,
        flows: vec![
            out(0, BIG, vec![0]),
            out(1, BIG, vec![0]),
            Flow {
                src: None,
                dst: Some(0),
                demand_bps: BIG,
                path: vec![1],
            },
            Flow {
                src: None,
                dst: Some(1),
                demand_bps: BIG,
                path: vec![1],
            },
        ],
        pools: vec![],
    };
    let a = checked(&p);
    // tx: 700 spare split 1:3.
    assert_eq!(a.eni_tx_bps, vec![375 * M, 625 * M]);
    // rx: ENI 1 stops at its 150 limit, ENI 0 takes the rest.
    assert_eq!(a.eni_rx_bps, vec![850 * M, 150 * M]);
}

#[test]
fn edge_cases() {
    let empty = Problem::default();
    let a = checked(&empty);
    assert!(a.flow_rate_bps.is_empty());
    // A zero-capacity link, a flow with no path and no endpoints (only its
    // demand limits it), a zero demand.
    let p = Problem {
        links: vec![Link { capacity_bps: 0 }],
        enis: vec![eni(0, 0, 1)],
        flows: vec![
            out(0, BIG, vec![0]),
            Flow {
                src: None,
                dst: None,
                demand_bps: 7,
                path: vec![],
            },
            out(0, 0, vec![]),
        ],
        pools: vec![],
    };
    let a = checked(&p);
    assert_eq!(a.flow_rate_bps, vec![0, 7, 0]);
    // Extreme numbers: demand and capacity at u64::MAX.
    let p = Problem {
        links: vec![Link {
            capacity_bps: u64::MAX,
        }],
        enis: vec![eni(u64::MAX, 0, u32::MAX), eni(0, 0, 1)],
        flows: vec![out(0, u64::MAX, vec![0]), out(1, u64::MAX, vec![0])],
        pools: vec![],
    };
    let a = checked(&p);
    assert_eq!(a.flow_rate_bps, vec![u64::MAX, 0]);
}

/// Many flows in demand order, the last ones with empty paths (nothing
/// caps them but their demand and their ENI): every one gets its demand.
#[test]
fn flows_without_links_get_their_demand() {
    let mut flows: Vec<Flow> = (0..40u64).map(|i| out(0, (i + 1) * M, vec![0])).collect();
    flows.extend((0..40u64).map(|i| out(1, (100 + i) * M, vec![])));
    let p = Problem {
        links: vec![Link { capacity_bps: BIG }],
        enis: vec![eni(0, 0, 1), eni(0, 0, 1)],
        flows,
        pools: vec![],
    };
    let a = checked(&p);
    let demands: Vec<u64> = p.flows.iter().map(|f| f.demand_bps).collect();
    assert_eq!(a.flow_rate_bps, demands);
}

#[test]
fn allocator_reuse_matches_fresh_allocation() {
    let problems = [
        two_enis(1, 3, BIG, BIG),
        incast(400 * M),
        Problem::default(),
        two_enis(2, 1, 5, BIG),
    ];
    let mut al = Allocator::new();
    for p in problems.iter().chain(problems.iter().rev()) {
        assert_eq!(al.allocate(p), &allocate(p));
    }
}

#[test]
fn invalid_problems_are_rejected_with_typed_errors() {
    let base = two_enis(1, 1, BIG, BIG);
    let mut p = base.clone();
    p.enis[1].weight = 0;
    assert_eq!(try_allocate(&p), Err(ProblemError::ZeroWeight { eni: 1 }));
    let mut p = base.clone();
    p.enis[0].limit_tx_bps = 10;
    assert!(matches!(
        p.validate(),
        Err(ProblemError::TxGuaranteeAboveLimit { eni: 0, .. })
    ));
    let mut p = base.clone();
    p.enis[0].guaranteed_rx_bps = 10;
    p.enis[0].limit_rx_bps = 9;
    assert!(matches!(
        p.validate(),
        Err(ProblemError::RxGuaranteeAboveLimit { eni: 0, .. })
    ));
    let mut p = base.clone();
    p.flows[1].path = vec![0, 0];
    assert_eq!(
        p.validate(),
        Err(ProblemError::DuplicateLinkInPath { flow: 1, link: 0 })
    );
    let mut p = base.clone();
    p.flows[0].path = vec![3];
    assert_eq!(
        p.validate(),
        Err(ProblemError::FlowLinkOutOfRange {
            flow: 0,
            link: 3,
            links: 1
        })
    );
    let mut p = base.clone();
    p.flows[0].src = Some(2);
    assert_eq!(
        p.validate(),
        Err(ProblemError::FlowSrcOutOfRange {
            flow: 0,
            eni: 2,
            enis: 2
        })
    );
    let mut p = base.clone();
    p.flows[0].dst = Some(9);
    assert_eq!(
        p.validate(),
        Err(ProblemError::FlowDstOutOfRange {
            flow: 0,
            eni: 9,
            enis: 2
        })
    );
    let mut p = base.clone();
    p.pools = vec![Pool {
        limit_bps: 1,
        members: vec![1, 1],
    }];
    assert_eq!(
        p.validate(),
        Err(ProblemError::DuplicatePoolMember { pool: 0, eni: 1 })
    );
    p.pools = vec![Pool {
        limit_bps: 1,
        members: vec![5],
    }];
    assert_eq!(
        p.validate(),
        Err(ProblemError::PoolMemberOutOfRange {
            pool: 0,
            eni: 5,
            enis: 2
        })
    );
    // The same link in two different flows' paths is fine.
    assert_eq!(base.validate(), Ok(()));
}

#[test]
fn verify_catches_violations() {
    let p = two_enis(1, 1, BIG, BIG);
    let good = allocate(&p);
    assert_eq!(verify(&p, &good), Ok(()));
    // Over capacity.
    let mut a = good.clone();
    a.flow_rate_bps[0] += 1;
    a.eni_tx_bps[0] += 1;
    a.link_load_bps[0] += 1;
    assert!(verify(&p, &a).unwrap_err().contains("above its capacity"));
    // Not max-min: capacity left over while both want more.
    let mut a = good.clone();
    a.flow_rate_bps[0] -= 1000;
    a.eni_tx_bps[0] -= 1000;
    a.link_load_bps[0] -= 1000;
    assert!(verify(&p, &a).unwrap_err().contains("below its demand"));
    // Full link but the split ignores the weights: ENI 1 gets ENI 0's spare.
    let mut a = good.clone();
    a.flow_rate_bps = vec![310 * M, 190 * M];
    a.eni_tx_bps = vec![310 * M, 190 * M];
    assert!(verify(&p, &a).unwrap_err().contains("flow 0"));
    // Below the guarantee.
    let mut a = good.clone();
    a.flow_rate_bps = vec![290 * M, 210 * M];
    a.eni_tx_bps = vec![290 * M, 210 * M];
    assert!(verify(&p, &a).unwrap_err().contains("below its guarantee"));
    // A sum that does not add up.
    let mut a = good.clone();
    a.eni_tx_bps[1] = 0;
    assert!(verify(&p, &a).unwrap_err().contains("eni_tx_bps[1]"));
    // Too much guarantee for the ENI.
    let mut a = good;
    a.flow_guarantee_bps[1] = 101 * M;
    assert!(verify(&p, &a).unwrap_err().contains("tx guarantee"));
}
