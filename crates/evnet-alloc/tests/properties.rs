//! Property tests on random problems, and comparison with the exact
//! reference in `common`.

mod common;

use common::{diff, host_problem, problem, reference_guarantees, reference_rates};
use evnet_alloc::{Allocator, Problem, allocate, verify};
use proptest::prelude::*;

/// Rounding tolerance for comparisons with the exact reference: one bit/s per
/// flow (rounding down at freeze, then the leftover pass) plus weight
/// quantization, relative 2^-30 at most here.
fn tolerance(p: &Problem, exact: f64) -> f64 {
    p.flows.len() as f64 + 2.0 + exact / 2f64.powi(30)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Capacities, demands, limits, guarantee bounds, reported sums and the
    /// max-min certificate (see `verify`).
    #[test]
    fn allocations_verify(p in problem()) {
        let a = allocate(&p);
        if let Err(e) = verify(&p, &a) {
            return Err(TestCaseError::fail(format!("{e}\nproblem: {p:?}\nallocation: {a:?}")));
        }
    }

    #[test]
    fn guarantees_match_exact_reference(p in problem()) {
        let a = allocate(&p);
        let exact = reference_guarantees(&p);
        for (f, g) in exact.iter().enumerate() {
            let d = diff(a.flow_guarantee_bps[f], g);
            let g64 = num_traits::ToPrimitive::to_f64(g).unwrap();
            prop_assert!(d <= tolerance(&p, g64),
                "flow {f}: guarantee {} vs exact {g} (off by {d})\n{p:?}", a.flow_guarantee_bps[f]);
        }
    }

    #[test]
    fn rates_match_exact_reference(p in problem()) {
        let a = allocate(&p);
        let exact = reference_rates(&p, &a.flow_guarantee_bps);
        for (f, x) in exact.iter().enumerate() {
            let d = diff(a.flow_rate_bps[f], x);
            let x64 = num_traits::ToPrimitive::to_f64(x).unwrap();
            prop_assert!(d <= tolerance(&p, x64),
                "flow {f}: rate {} vs exact {x} (off by {d})\n{p:?}\n{a:?}", a.flow_rate_bps[f]);
        }
    }

    /// Same input, same output, whether the scratch space is fresh or was
    /// used for other problems before.
    #[test]
    fn deterministic_and_reuse_safe(ps in prop::collection::vec(problem(), 1..5)) {
        let mut reused = Allocator::new();
        for p in &ps {
            let fresh = allocate(p);
            prop_assert_eq!(&fresh, &allocate(p));
            prop_assert_eq!(&fresh, reused.allocate(p));
        }
    }

    /// With admission holding (guarantees fit the NIC and the pools), every
    /// ENI gets its guarantee, or all it asks for if that is less.
    #[test]
    fn enis_get_their_guarantee_when_feasible(p in host_problem()) {
        let a = allocate(&p);
        prop_assert!(verify(&p, &a).is_ok(), "{:?}", verify(&p, &a));
        for (e, eni) in p.enis.iter().enumerate() {
            let dtx: u128 = p.flows.iter().filter(|f| f.src == Some(e)).map(|f| u128::from(f.demand_bps)).sum();
            let drx: u128 = p.flows.iter().filter(|f| f.dst == Some(e)).map(|f| u128::from(f.demand_bps)).sum();
            let want_tx = dtx.min(u128::from(eni.guaranteed_tx_bps));
            let want_rx = drx.min(u128::from(eni.guaranteed_rx_bps));
            prop_assert!(u128::from(a.eni_tx_bps[e]) >= want_tx,
                "ENI {e} sends {} < {want_tx}\n{p:?}\n{a:?}", a.eni_tx_bps[e]);
            prop_assert!(u128::from(a.eni_rx_bps[e]) >= want_rx,
                "ENI {e} receives {} < {want_rx}\n{p:?}\n{a:?}", a.eni_rx_bps[e]);
        }
    }

    /// Only weight ratios matter: multiplying every weight by the same
    /// factor changes no rate beyond rounding. (Flows with no endpoint in the
    /// problem weigh 1 whatever the ENIs weigh, so they are left out.)
    #[test]
    fn weights_are_relative(p in problem(), k in 2u32..=50) {
        let mut p = p;
        p.flows.retain(|f| f.src.is_some() || f.dst.is_some());
        let mut q = p.clone();
        for e in &mut q.enis {
            e.weight = e.weight.min(1000) * k;
        }
        for e in &mut p.enis {
            e.weight = e.weight.min(1000);
        }
        let (a, b) = (allocate(&p), allocate(&q));
        prop_assert_eq!(&a.flow_guarantee_bps, &b.flow_guarantee_bps);
        for f in 0..p.flows.len() {
            let (x, y) = (a.flow_rate_bps[f], b.flow_rate_bps[f]);
            prop_assert!(x.abs_diff(y) as f64 <= tolerance(&p, x as f64) * 2.0, "flow {f}: {x} vs {y}\n{p:?}");
        }
    }

    /// A heavier ENI never gets less than a lighter one when everything else
    /// about them is the same.
    #[test]
    fn heavier_gets_at_least_as_much(cap in 1u64..=10_000_000_000, w1 in 1u32..=20, w2 in 1u32..=20,
                                     d1 in 1u64..=20_000_000_000, g in 0u64..=1_000_000) {
        let eni = |weight| evnet_alloc::Eni { guaranteed_tx_bps: g.min(cap / 2), weight, ..Default::default() };
        let flow = |src| evnet_alloc::Flow { src: Some(src), dst: None, demand_bps: d1, path: vec![0] };
        let p = Problem {
            links: vec![evnet_alloc::Link { capacity_bps: cap }],
            enis: vec![eni(w1), eni(w2)],
            flows: vec![flow(0), flow(1)],
            pools: vec![],
        };
        let a = allocate(&p);
        let (r1, r2) = (a.flow_rate_bps[0], a.flow_rate_bps[1]);
        if w1 > w2 { prop_assert!(r1 + 1 >= r2, "{r1} {r2}"); }
        if w1 < w2 { prop_assert!(r2 + 1 >= r1, "{r1} {r2}"); }
        if w1 == w2 { prop_assert!(r1.abs_diff(r2) <= 1, "{r1} {r2}"); }
        prop_assert!(verify(&p, &a).is_ok());
    }
}
