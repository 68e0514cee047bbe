//! The agent against a real server (in-process, memory store) and the
//! in-memory kernel model: it registers, follows desired state, converges,
//! reports the generation it applied, repairs drift and adopts what exists
//! after a restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use evnet_agent::{reconcile_once, AgentConfig};
use evnet_client::Client;
use evnet_kernel::{Kernel, ModelKernel};
use evnet_model::*;
use common::{ADMIN, server, spawn_agent};

/// Waits (bounded) until the host reports it applied its current desired generation.
async fn wait_synced(admin: &Client, host_id: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = admin.desired_state(host_id, None, None).await.unwrap();
        let h = admin.get_host(host_id).await.unwrap();
        if h.applied_generation >= d.generation && d.generation > 0 {
            return d.generation;
        }
        assert!(tokio::time::Instant::now() < deadline, "host {host_id} never applied generation {}", d.generation);
        let _ = admin.desired_state(host_id, Some(d.generation), Some(Duration::from_millis(200))).await;
    }
}

fn start_agent(
    url: &str,
    bootstrap: &str,
    credential_file: &std::path::Path,
    name: &str,
    ip: &str,
    kernel: Arc<ModelKernel>,
) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let mut cfg = AgentConfig::new(url, bootstrap, name, ip.parse().unwrap(), 1000);
    cfg.credential_file = Some(credential_file.to_path_buf());
    cfg.resync = Duration::from_millis(200);
    cfg.heartbeat = Duration::from_millis(200);
    spawn_agent(cfg, kernel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_converges_repairs_and_adopts() {
    let url = server().await;
    let admin = Client::new(&url, ADMIN).unwrap();
    let bootstrap = || async { admin.create_bootstrap_token(&Default::default()).await.unwrap().token };
    let dir = tempfile::tempdir().unwrap();
    let (cred1, cred2) = (dir.path().join("host-1.credential"), dir.path().join("host-2.credential"));
    let tenant = admin.create_tenant(&CreateTenant { name: "t".into(), tags: Default::default() }).await.unwrap();
    let tc = Client::new(&url, tenant.token.clone()).unwrap();

    let k1 = Arc::new(ModelKernel::new());
    let k2 = Arc::new(ModelKernel::new());
    let (a1, stop1) = start_agent(&url, &bootstrap().await, &cred1, "host-1", "198.18.0.1", k1.clone());
    let (_a2, _stop2) = start_agent(&url, &bootstrap().await, &cred2, "host-2", "198.18.0.2", k2.clone());
    // Wait for both hosts to register.
    let hosts = loop {
        let hs = admin.list_hosts(&Default::default()).await.unwrap();
        if hs.len() == 2 {
            break hs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let h1 = hosts.iter().find(|h| h.name == "host-1").unwrap().id.clone();
    let h2 = hosts.iter().find(|h| h.name == "host-2").unwrap().id.clone();
    // Each agent keeps its own host's credential, readable by its owner
    // only; it writes the file just after its registration answers, so the
    // host can be listed a moment before the file is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        if let Some(c) = evnet_agent::credential::load(&cred1).unwrap() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "host-1 never wrote its credential file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kept.host_id, h1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&cred1).unwrap().permissions().mode() & 0o777, 0o600);

    let vpc = tc.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let subnet = tc.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let e1 = tc.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    let e2 = tc.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    let i1 = tc.create_instance(&CreateInstance { host_id: Some(h1.clone()), eni_ids: vec![e1.id.clone()], ..Default::default() }).await.unwrap();
    let i2 = tc.create_instance(&CreateInstance { host_id: Some(h2.clone()), eni_ids: vec![e2.id.clone()], ..Default::default() }).await.unwrap();
    wait_synced(&admin, &h1).await;
    wait_synced(&admin, &h2).await;

    // The kernel model holds the instance namespaces with the ENIs' MACs.
    let obs1 = k1.observe().unwrap();
    let ns1 = obs1.namespaces.get(&i1.netns).expect("instance namespace on host-1");
    let eth0 = ns1.links.get("eth0").expect("eth0 in the instance");
    assert_eq!(eth0.mac.clone(), Some(e1.mac.clone()));
    assert!(k2.observe().unwrap().namespaces.contains_key(&i2.netns));
    // The instances are reported running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tc.get_instance(&i1.id).await.unwrap().state != InstanceState::Running {
        assert!(tokio::time::Instant::now() < deadline, "instance never reported running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Move e1 to i2's host: detach, attach. It keeps MAC and IP, and host-1 drops it.
    tc.detach_eni(&e1.id).await.unwrap();
    let moved = tc.attach_eni(&e1.id, &AttachEni { instance_id: i2.id.clone(), device_index: None }).await.unwrap();
    assert_eq!((moved.mac.as_str(), moved.private_ip), (e1.mac.as_str(), e1.private_ip));
    wait_synced(&admin, &h1).await;
    wait_synced(&admin, &h2).await;
    let ns2 = k2.observe().unwrap().namespaces.get(&i2.netns).cloned().unwrap();
    assert_eq!(ns2.links.get("eth1").and_then(|l| l.mac.clone()), Some(e1.mac.clone()));
    assert!(!k1.observe().unwrap().namespaces.get(&i1.netns).unwrap().links.contains_key("eth0"), "host-1 removed the moved ENI");

    // Stop agent 1; its kernel state stays; a new agent adopts it with no ops.
    stop1.send(()).unwrap();
    a1.await.unwrap();
    let d1 = admin.desired_state(&h1, None, None).await.unwrap();
    assert_eq!(reconcile_once(k1.as_ref(), &d1, false).unwrap().ops, 0, "restart adopts: nothing to redo");
    assert!(evnet_agent::converged(k1.as_ref(), &d1).unwrap());
    let before = k1.observe().unwrap();
    // The restart has no bootstrap token: it uses the kept credential.
    let (_a1b, _stop1b) = start_agent(&url, "", &cred1, "host-1", "198.18.0.1", k1.clone());
    wait_synced(&admin, &h1).await;
    assert_eq!(admin.list_hosts(&Default::default()).await.unwrap().len(), 2, "the restart registered nothing new");
    assert_eq!(k1.observe().unwrap(), before, "the restarted agent changed nothing");

    // Drift: delete an owned object by hand; the next resync brings it back.
    let d2 = admin.desired_state(&h2, None, None).await.unwrap();
    let vpc_ns = k2.observe().unwrap().namespaces.keys().find(|n| n.starts_with("evv-")).cloned().unwrap();
    let veth = evnet_plan::naming::eni_veth(&e2.id);
    k2.apply(&evnet_plan::Op::DeleteLink { ns: evnet_plan::Ns::Named(vpc_ns.clone()), name: veth.clone() }).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let obs = k2.observe().unwrap();
        if obs.namespaces.get(&vpc_ns).is_some_and(|n| n.links.contains_key(&veth)) && evnet_plan::plan(&d2, &obs, &Default::default()).is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "deleted veth never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tenant's VPC namespace refuses its firewall: the agent reports that
/// VPC's failure on the host (API) and in its metric, and still builds
/// another tenant's new instance on the same host completely; when the
/// namespace accepts loads again, the failure clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_vpc_does_not_stop_another_tenants_instance() {
    let url = server().await;
    let admin = Client::new(&url, ADMIN).unwrap();
    let bootstrap = admin.create_bootstrap_token(&Default::default()).await.unwrap().token;
    let dir = tempfile::tempdir().unwrap();
    let k = Arc::new(ModelKernel::new());
    let (_a, _stop) = start_agent(&url, &bootstrap, &dir.path().join("host-1.credential"), "host-1", "198.18.0.1", k.clone());
    let host = loop {
        if let Some(h) = admin.list_hosts(&Default::default()).await.unwrap().into_iter().next() {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let tenant = |name: &str| {
        let admin = admin.clone();
        let (url, name) = (url.clone(), name.to_string());
        async move {
            let t = admin.create_tenant(&CreateTenant { name, tags: Default::default() }).await.unwrap();
            let c = Client::new(&url, t.token).unwrap();
            let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
            let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
            (c, vpc, subnet)
        }
    };
    let (ca, va, sa) = tenant("a").await;
    let (cb, vb, sb) = tenant("b").await;
    let broken = evnet_plan::Ns::Named(evnet_plan::naming::vpc_netns(&host.id, va.vni));
    k.refuse_firewall_in(&broken, true);
    let ea = ca.create_eni(&CreateEni { subnet_id: sa.id.clone(), ..Default::default() }).await.unwrap();
    ca.create_instance(&CreateInstance { host_id: Some(host.id.clone()), eni_ids: vec![ea.id.clone()], ..Default::default() }).await.unwrap();
    let eb = cb.create_eni(&CreateEni { subnet_id: sb.id.clone(), ..Default::default() }).await.unwrap();
    let ib = cb.create_instance(&CreateInstance { host_id: Some(host.id.clone()), eni_ids: vec![eb.id.clone()], ..Default::default() }).await.unwrap();

    // The host reports A's VPC, and only it, as failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = admin.get_host(&host.id).await.unwrap();
        let d = admin.desired_state(&host.id, None, None).await.unwrap();
        if h.applied_generation >= d.generation && !h.failures.is_empty() {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failure was never reported: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h.failures.len(), 1, "{:?}", h.failures);
    assert_eq!((h.failures[0].kind, h.failures[0].object.as_str()), (FailedObjectKind::Vpc, va.id.as_str()));
    assert!(h.failures[0].error.contains("nft"), "{}", h.failures[0].error);
    // B's instance is complete: planning B's objects gives nothing; what is
    // left to do is A's firewall alone.
    let d = admin.desired_state(&host.id, None, None).await.unwrap();
    let left = evnet_plan::plan(&d, &k.observe().unwrap(), &Default::default());
    assert!(!left.is_empty() && left.iter().all(|o| o.ns() == broken), "only A's VPC has work left: {left:?}");
    let ns_b = k.observe().unwrap().namespaces[&evnet_plan::naming::vpc_netns(&host.id, vb.vni)].clone();
    assert!(ns_b.firewall.is_some() && ns_b.links.contains_key(&evnet_plan::naming::eni_veth(&eb.id)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cb.get_instance(&ib.id).await.unwrap().state != InstanceState::Running {
        assert!(tokio::time::Instant::now() < deadline, "B's instance never reported running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Loads work again: the next pass builds A's firewall and the report clears.
    k.refuse_firewall_in(&broken, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !admin.get_host(&host.id).await.unwrap().failures.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the failure never cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(evnet_agent::converged(k.as_ref(), &d).unwrap());
}

/// The metric counts failing objects by kind.
#[test]
fn failure_gauges_by_kind() {
    let m = evnet_agent::metrics::AgentMetrics::default();
    m.set_failures(&[ReconcileFailure { kind: FailedObjectKind::Vpc, object: "vpc-1".into(), error: "x".into() }]);
    let text = m.render();
    assert!(text.contains("evnet_agent_reconcile_failures{kind=\"vpc\"} 1"), "{text}");
    assert!(text.contains("evnet_agent_reconcile_failures{kind=\"instance\"} 0"), "{text}");
    m.set_failures(&[]);
    assert!(m.render().contains("evnet_agent_reconcile_failures{kind=\"vpc\"} 0"));
}
