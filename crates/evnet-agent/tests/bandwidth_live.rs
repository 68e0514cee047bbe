//! A bandwidth change through the API reaches the kernel live: the agent
//! runs against an in-process server and the kernel model, whose shapers
//! carry a backlogged load (every 20 ms each shaper "sends" at its current
//! rate). `PATCH /v1/enis/{id}` with a lower limit must show in the shaper
//! within 1 s, changed in place (the shaper is not rebuilt); the agent's
//! reports reach `GET /v1/enis/{id}/stats`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use evnet_agent::AgentConfig;
use evnet_agent::bandwidth::shaper_namespaces;
use evnet_client::Client;
use evnet_kernel::{Kernel, ModelKernel};
use evnet_model::*;
use evnet_plan::Ns;
use tokio::time::Instant;
use common::{ADMIN, server, spawn_agent};

const M: u64 = 1_000_000;

/// The rate of the shaper on `dev` in the model, if it exists.
fn rate(k: &ModelKernel, namespaces: &[String], dev: &str) -> Option<u64> {
    k.shaper_stats(namespaces).unwrap().into_iter().find(|s| s.dev == dev).map(|s| s.shaper.rate_bps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patched_limit_reaches_the_shaper_within_a_second() {
    let url = server().await;
    let admin = Client::new(&url, ADMIN).unwrap();
    let agent_token = admin.create_bootstrap_token(&Default::default()).await.unwrap().token;
    let tenant = admin.create_tenant(&CreateTenant { name: "t".into(), tags: Default::default() }).await.unwrap();
    let tc = Client::new(&url, tenant.token.clone()).unwrap();

    let k = Arc::new(ModelKernel::new());
    let mut cfg = AgentConfig::new(&url, &agent_token, "host-1", "198.18.0.1".parse().unwrap(), 1000);
    cfg.heartbeat = Duration::from_millis(200);
    let (agent, stop_tx) = spawn_agent(cfg, k.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    let host = loop {
        if let Some(h) = admin.list_hosts(&Default::default()).await.unwrap().into_iter().next() {
            break h;
        }
        assert!(Instant::now() < deadline, "the agent never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let vpc = tc.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let subnet = tc.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let spec = |g: u64, l: u64| BandwidthSpec { guaranteed_mbps: g, limit_mbps: Some(l), ..Default::default() };
    let eni = tc.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    let eni = tc.patch_eni(&eni.id, &PatchEni { bandwidth: Some(spec(100, 800)), ..Default::default() }).await.unwrap();
    tc.create_instance(&CreateInstance { host_id: Some(host.id.clone()), eni_ids: vec![eni.id.clone()], ..Default::default() }).await.unwrap();
    let desired = admin.desired_state(&host.id, None, None).await.unwrap();
    let namespaces = shaper_namespaces(&desired);
    let (_, evq) = evnet_plan::plan::eni_shaper_devices(&eni.id);
    let vns = Ns::named(&namespaces[0]);

    // A backlogged sender: every 20 ms each shaper passes what its rate allows.
    let load_k = k.clone();
    let load_ns = namespaces.clone();
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            for s in load_k.shaper_stats(&load_ns).unwrap() {
                let _ = load_k.transmit(&Ns::named(&s.ns), &s.dev, s.shaper.rate_bps / 400, 1, 0, 0);
            }
        }
    });

    // The sending side settles at the 800 Mbit/s limit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rate(&k, &namespaces, &evq) != Some(800 * M) {
        assert!(Instant::now() < deadline, "never reached 800 Mbit/s: {:?}", rate(&k, &namespaces, &evq));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let built = k.shaper_generation(&vns, &evq);

    // Lower the limit: within 1 s the shaper holds it, changed in place.
    let t0 = Instant::now();
    tc.patch_eni(&eni.id, &PatchEni { bandwidth: Some(spec(100, 200)), ..Default::default() }).await.unwrap();
    while rate(&k, &namespaces, &evq) != Some(200 * M) {
        assert!(t0.elapsed() < Duration::from_secs(1), "limit not applied within 1 s: {:?}", rate(&k, &namespaces, &evq));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("limit applied {} ms after the PATCH", t0.elapsed().as_millis());
    assert_eq!(k.shaper_generation(&vns, &evq), built, "the shaper was rebuilt, not changed in place");

    // Raise it again: the loop ramps back up to the new limit.
    let t0 = Instant::now();
    tc.patch_eni(&eni.id, &PatchEni { bandwidth: Some(spec(100, 600)), ..Default::default() }).await.unwrap();
    while rate(&k, &namespaces, &evq) != Some(600 * M) {
        assert!(t0.elapsed() < Duration::from_secs(1), "raised limit not reached within 1 s: {:?}", rate(&k, &namespaces, &evq));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The agent's reports reach the API.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = tc.eni_stats(&eni.id).await.unwrap();
        if v["tx"]["allocated_bps"].as_u64() == Some(600 * M) && v["tx"]["rate_bps"].as_u64().is_some_and(|r| r > 500 * M) {
            assert_eq!(v["guaranteed_bps"], serde_json::json!(100 * M));
            break;
        }
        assert!(Instant::now() < deadline, "stats never showed the allocation: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.abort();
    let _ = stop_tx.send(());
    agent.await.unwrap();
}
