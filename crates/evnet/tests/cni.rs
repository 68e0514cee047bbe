//! `evnet-cni` driven as a container runtime drives it (the operation and
//! the container in `CNI_*` variables, the network configuration on stdin,
//! the result or error object on stdout) against the agents of a lab on
//! the tc-BPF data plane, as root: the operations against the
//! specification's rules, bad input of every kind, connectivity with an
//! evnet instance on another host, the bandwidth capability, an existing
//! ENI attached with `EVNET_ENI_ID`, idempotent DEL, CHECK finding drift,
//! GC, and a failed ADD leaving nothing behind.
//!
//! Fails (never skips) without root when CI=true.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;
use serde_json::{json, Value};

mod common;
use common::{evnet, lab_state, links_in, ping_from_path as ping_from};

/// The lab, and the namespaces the test made as a runtime would (removed
/// first, then the lab goes down).
struct Lab {
    _lab: common::Lab,
    namespaces: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}


/// One run of the plugin: exit status and what it printed on stdout (JSON,
/// or `Null` when it printed nothing).
fn plugin(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evnet-cni"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON on stdout ({e}): {text}")) };
    (out.status.success(), v)
}

/// A runtime's call: `command` for container `id` in `netns` as `ifname`.
fn call(command: &str, id: &str, netns: &str, ifname: &str, args: &str, conf: &Value) -> (bool, Value) {
    plugin(
        &[("CNI_COMMAND", command), ("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args), ("CNI_PATH", "/opt/cni/bin")],
        &conf.to_string(),
    )
}

fn err_code(v: &Value) -> u64 {
    v["code"].as_u64().unwrap_or_else(|| panic!("not a CNI error object: {v}"))
}

async fn eni_count(c: &Client) -> usize {
    c.list_enis(&Default::default()).await.unwrap().len()
}

async fn instance_count(c: &Client) -> usize {
    c.list_instances(&Default::default()).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evnet_cni_as_a_runtime_drives_it() {
    if !common::require_root("the CNI tests") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let mut lab = Lab { _lab: common::Lab { dir: dir.clone() }, namespaces: vec![] };
    evnet(&["lab", "up", "--hosts", "2", "--dir", &dir.display().to_string(), "--dataplane", "bpf"]);
    let st = lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap().id.clone();
    let h1 = host("host-1");
    let ta = admin.create_tenant(&CreateTenant { name: "a".into(), tags: Default::default() }).await.unwrap();
    let token_file = tmp.path().join("tenant-a.token");
    std::fs::write(&token_file, format!("{}\n", ta.token)).unwrap();
    let a = Client::new(&url, ta.token.clone()).unwrap();
    let vpc = a.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let sub = a.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let e1 = a.create_eni(&CreateEni { subnet_id: sub.id.clone(), ..Default::default() }).await.unwrap();
    let i1 = a.create_instance(&CreateInstance { host_id: Some(h1.clone()), eni_ids: vec![e1.id.clone()], ..Default::default() }).await.unwrap();

    // The containers' namespaces, made as a runtime makes them.
    let netns = |lab: &mut Lab, n: &str| -> String {
        let name = format!("cni-{}-{n}", std::process::id());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        assert!(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status().unwrap().success());
        lab.namespaces.push(name.clone());
        format!("/run/netns/{name}")
    };
    let (ns_a, ns_b, ns_c) = (netns(&mut lab, "a"), netns(&mut lab, "b"), netns(&mut lab, "c"));
    let socket = dir.join("host-2.cni.sock");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "tenant-a", "type": "evnet-cni",
        "agent_socket": socket, "token_file": token_file, "subnet_id": sub.id,
        "bandwidth": {"guaranteed_mbps": 10}, "dns": {"nameservers": ["10.0.1.2"]},
        "capabilities": {"bandwidth": true, "ips": true}
    });
    let with = |patch: Value| {
        let mut c = conf.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };

    // VERSION, and the plugin's own refusals.
    let (ok, v) = plugin(&[("CNI_COMMAND", "VERSION")], &conf.to_string());
    assert!(ok, "{v}");
    assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));
    let (ok, v) = plugin(&[], &conf.to_string());
    assert!(!ok && err_code(&v) == 4, "no CNI_COMMAND: {v}");
    let (ok, v) = plugin(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", &ns_a), ("CNI_IFNAME", "eth0")], "{not json");
    assert!(!ok && err_code(&v) == 6, "bad JSON: {v}");
    let bad: Vec<(&str, &str, &str, &str, Value, u64)> = vec![
        ("unknown version", "c1", &ns_a, "eth0", with(json!({"cniVersion": "0.3.1"})), 1),
        ("no ifname", "c1", &ns_a, "", conf.clone(), 4),
        ("a bad container id", "c/1", &ns_a, "eth0", conf.clone(), 4),
        ("a netns that does not exist", "c1", "/run/netns/cni-nothing-here", "eth0", conf.clone(), 3),
        ("no token_file", "c1", &ns_a, "eth0", with(json!({"token_file": null})), 7),
        ("a token_file that is not there", "c1", &ns_a, "eth0", with(json!({"token_file": "/nonexistent/token"})), 7),
        ("no subnet_id", "c1", &ns_a, "eth0", with(json!({"subnet_id": null})), 7),
        ("an interface evnet cannot name", "c1", &ns_a, "net0", conf.clone(), 4),
        ("rates that differ by direction", "c1", &ns_a, "eth0", with(json!({"runtimeConfig": {"bandwidth": {"ingressRate": 1_000_000, "egressRate": 2_000_000}}})), 7),
        ("a MAC of the runtime's", "c1", &ns_a, "eth0", with(json!({"runtimeConfig": {"mac": "02:11:22:33:44:55"}})), 2),
        ("an address outside the subnet", "c1", &ns_a, "eth0", with(json!({"runtimeConfig": {"ips": ["10.9.9.9/24"]}})), 100),
        ("an agent that is not there", "c1", &ns_a, "eth0", with(json!({"agent_socket": tmp.path().join("none.sock")})), 11),
        ("a guarantee the host cannot admit", "c1", &ns_a, "eth0", with(json!({"bandwidth": {"guaranteed_mbps": 990}})), 100),
        ("a guarantee that is not a number", "c1", &ns_a, "eth0", with(json!({"args": {"cni": {"EVNET_GUARANTEED_MBPS": "lots"}}})), 7),
    ];
    let (enis0, insts0) = (eni_count(&a).await, instance_count(&a).await);
    for (what, id, ns, ifname, c, want) in &bad {
        let (ok, v) = call("ADD", id, ns, ifname, "", c);
        assert!(!ok, "{what}: accepted: {v}");
        assert_eq!(err_code(&v), *want, "{what}: {v}");
        assert!(!v["msg"].as_str().unwrap_or("").is_empty(), "{what}: no message: {v}");
    }
    assert_eq!((eni_count(&a).await, instance_count(&a).await), (enis0, insts0), "a failed ADD leaves nothing behind");
    assert!(links_in(&ns_a).iter().all(|l| l == "lo"), "{:?}", links_in(&ns_a));

    // ADD: the result names the interface with the ENI's MAC, its address
    // and gateway, the default route and the DNS; the container reaches the
    // instance on the other host and back.
    let t0 = Instant::now();
    let (ok, r) = call("ADD", "ctr-a", &ns_a, "eth0", "IgnoreUnknown=1;K8S_POD_NAME=web", &with(json!({"runtimeConfig": {"bandwidth": {"ingressRate": 200_000_000, "egressRate": 200_000_000}}})));
    assert!(ok, "ADD: {r}");
    eprintln!("ADD took {:?}", t0.elapsed());
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], ns_a.as_str());
    let mac = r["interfaces"][0]["mac"].as_str().unwrap().to_string();
    let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(addr.ends_with("/24"), "{r}");
    assert_eq!(r["ips"][0]["gateway"], sub.gateway_ip.to_string());
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["dns"]["nameservers"][0], "10.0.1.2");
    let ip_a: Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
    let enis = a.list_enis(&Default::default()).await.unwrap();
    let eni_a = enis.iter().find(|e| e.private_ip == ip_a && e.subnet_id == sub.id).expect("the ENI ADD made");
    assert_eq!(evnet_plan::naming::normalize_mac(&eni_a.mac).as_deref(), Some(mac.as_str()));
    assert_eq!((eni_a.bandwidth.guaranteed_mbps, eni_a.bandwidth.limit_mbps), (10, Some(200)), "the configuration's guarantee, the capability's rate as the limit");
    assert!(ping_from(&ns_a, e1.private_ip), "the container reaches the instance on host-1");
    assert!(ping_from(&ns_a, sub.gateway_ip), "the gateway answers the container");
    let i1_ns = i1.netns.clone();
    let ping_to_a = Command::new("ip").args(["netns", "exec", &i1_ns, "ping", "-c", "1", "-W", "1", &ip_a.to_string()]).output().unwrap();
    assert!(ping_to_a.status.success(), "the instance reaches the container");

    // A second ADD of the same interface is refused and changes nothing.
    let (enis1, insts1) = (eni_count(&a).await, instance_count(&a).await);
    let (ok, v) = call("ADD", "ctr-a", &ns_a, "eth0", "", &conf);
    assert!(!ok && err_code(&v) == 100, "second ADD: {v}");
    assert_eq!((eni_count(&a).await, instance_count(&a).await), (enis1, insts1));

    // CHECK passes, then finds drift (the interface down by hand).
    let (ok, v) = call("CHECK", "ctr-a", &ns_a, "eth0", "", &conf);
    assert!(ok, "CHECK: {v}");
    assert!(Command::new("nsenter").args([&format!("--net={ns_a}"), "ip", "link", "set", "eth0", "down"]).status().unwrap().success());
    let (ok, v) = call("CHECK", "ctr-a", &ns_a, "eth0", "", &conf);
    assert!(!ok && err_code(&v) == 101, "CHECK after drift: {v}");
    // Put back by hand (the agent repairs a container namespace at its full
    // resync, not at once).
    assert!(Command::new("nsenter").args([&format!("--net={ns_a}"), "ip", "link", "set", "eth0", "up"]).status().unwrap().success());
    let (ok, v) = call("CHECK", "ctr-a", &ns_a, "eth0", "", &conf);
    assert!(ok, "CHECK after the repair: {v}");
    let (ok, v) = call("CHECK", "ctr-nobody", &ns_a, "eth0", "", &conf);
    assert!(!ok && err_code(&v) == 3, "CHECK of an unknown container: {v}");

    // An existing ENI, attached with EVNET_ENI_ID: its MAC and address.
    let kept = a.create_eni(&CreateEni { subnet_id: sub.id.clone(), private_ip: Some(Ipv4Addr::new(10, 0, 1, 77)), ..Default::default() }).await.unwrap();
    let (ok, r) = call("ADD", "ctr-b", &ns_b, "eth0", &format!("EVNET_ENI_ID={}", kept.id), &with(json!({"subnet_id": null})));
    assert!(ok, "ADD with EVNET_ENI_ID: {r}");
    assert_eq!(r["ips"][0]["address"], "10.0.1.77/24");
    assert_eq!(r["interfaces"][0]["mac"].as_str(), evnet_plan::naming::normalize_mac(&kept.mac).as_deref());
    assert!(ping_from(&ns_b, ip_a), "two containers on one host reach each other");

    // DEL: the ENI ADD made goes, the one given stays (detached); the
    // namespaces stay the runtime's; DEL again succeeds.
    for _ in 0..2 {
        let (ok, v) = call("DEL", "ctr-a", &ns_a, "eth0", "", &conf);
        assert!(ok, "DEL: {v}");
        let (ok, v) = call("DEL", "ctr-b", &ns_b, "eth0", "", &with(json!({"subnet_id": null})));
        assert!(ok, "DEL: {v}");
    }
    assert!(a.get_eni(&eni_a.id).await.unwrap_err().is_not_found(), "the ENI ADD made is deleted");
    let kept_now = a.get_eni(&kept.id).await.unwrap();
    assert!(kept_now.attachment.is_none(), "the given ENI is detached and kept: {kept_now:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while links_in(&ns_a).contains("eth0") || links_in(&ns_b).contains("eth0") {
        assert!(Instant::now() < deadline, "eth0 stayed after DEL");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Path::new(&ns_a).exists() && Path::new(&ns_b).exists(), "DEL never deletes the runtime's namespace");
    // The kept ENI follows its workload to another host: a container on
    // host-1 gets it with its MAC and address.
    let ns_e = netns(&mut lab, "e");
    let conf_h1 = with(json!({"agent_socket": dir.join("host-1.cni.sock"), "subnet_id": null}));
    let (ok, r) = call("ADD", "ctr-e", &ns_e, "eth0", &format!("EVNET_ENI_ID={}", kept.id), &conf_h1);
    assert!(ok, "ADD on host-1 with EVNET_ENI_ID: {r}");
    assert_eq!(r["ips"][0]["address"], "10.0.1.77/24");
    assert_eq!(r["interfaces"][0]["mac"].as_str(), evnet_plan::naming::normalize_mac(&kept.mac).as_deref());
    assert_eq!(a.get_eni(&kept.id).await.unwrap().attachment.map(|x| x.host_id), Some(h1.clone()));
    assert!(ping_from(&ns_e, e1.private_ip), "the moved address works on its new host");
    let (ok, v) = call("DEL", "ctr-e", &ns_e, "eth0", "", &conf_h1);
    assert!(ok, "DEL: {v}");
    // The ips capability: the address asked for.
    let (ok, r) = call("ADD", "ctr-f", &ns_e, "eth0", "EVNET_LIMIT_MBPS=300", &with(json!({"runtimeConfig": {"ips": ["10.0.1.88/24"]}, "args": {"cni": {"EVNET_GUARANTEED_MBPS": "25", "EVNET_LIMIT_MBPS": "100"}}})));
    assert!(ok, "ADD with an address asked for: {r}");
    assert_eq!(r["ips"][0]["address"], "10.0.1.88/24");
    let ef = a.list_enis(&Default::default()).await.unwrap().into_iter().find(|e| e.private_ip == Ipv4Addr::new(10, 0, 1, 88)).unwrap();
    assert_eq!((ef.bandwidth.guaranteed_mbps, ef.bandwidth.limit_mbps), (25, Some(300)), "args.cni keys, CNI_ARGS winning");
    let (ok, v) = call("DEL", "ctr-f", &ns_e, "eth0", "", &conf);
    assert!(ok, "DEL: {v}");

    // The configuration's security groups hold for the container: in a
    // group with no ingress rules it is refused the ping that the VPC's
    // default group let through to ctr-a above.
    let closed = a
        .create_security_group(&CreateSecurityGroup { vpc_id: vpc.id.clone(), name: "closed".into(), description: String::new(), ingress: vec![], egress: None, tags: Default::default(), client_token: None })
        .await
        .unwrap();
    let (ok, r) = call("ADD", "ctr-g", &ns_e, "eth0", "", &with(json!({"security_group_ids": [closed.id]})));
    assert!(ok, "ADD with a group: {r}");
    let ip_g: Ipv4Addr = r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
    assert!(ping_from(&ns_e, sub.gateway_ip), "the container is on the network");
    let ping_in = Command::new("ip").args(["netns", "exec", &i1_ns, "ping", "-c", "1", "-W", "1", &ip_g.to_string()]).output().unwrap();
    assert!(!ping_in.status.success(), "a ping in passed a group with no ingress rules");
    let (ok, v) = call("DEL", "ctr-g", &ns_e, "eth0", "", &conf);
    assert!(ok, "DEL: {v}");

    // DEL of a container evnet never saw, and without a netns: success.
    let (ok, v) = call("DEL", "ctr-never", "", "eth0", "", &conf);
    assert!(ok, "DEL of nothing: {v}");

    // GC: a container the runtime no longer lists is removed.
    let (ok, v) = call("ADD", "ctr-c", &ns_c, "eth0", "", &conf);
    assert!(ok, "ADD: {v}");
    let gc = with(json!({"cni.dev/valid-attachments": [{"containerID": "ctr-other", "ifname": "eth0"}]}));
    let (ok, v) = plugin(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc.to_string());
    assert!(ok, "GC: {v}");
    let left: Vec<Instance> = a.list_instances(&Default::default()).await.unwrap();
    assert!(left.iter().all(|i| i.kind != InstanceKind::Container), "GC left {left:?}");
    assert_eq!(eni_count(&a).await, enis0 + 1, "only the kept ENI is new");

    // A container removed without a DEL (its namespace deleted): its
    // instance and the ENI ADD made go, freeing the address.
    let ns_d = netns(&mut lab, "d");
    let (ok, r) = call("ADD", "ctr-d", &ns_d, "eth0", "", &conf);
    assert!(ok, "ADD: {r}");
    let ip_d: Ipv4Addr = r["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
    let name_d = ns_d.trim_start_matches("/run/netns/").to_string();
    assert!(Command::new("ip").args(["netns", "del", &name_d]).status().unwrap().success());
    lab.namespaces.retain(|n| *n != name_d);
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.list_enis(&Default::default()).await.unwrap().iter().any(|e| e.private_ip == ip_d) {
        assert!(Instant::now() < deadline, "the ENI of a container whose namespace is gone is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.list_instances(&Default::default()).await.unwrap().iter().all(|i| i.kind != InstanceKind::Container));

    // STATUS: the agent and its server are there (1.1 only).
    let (ok, v) = plugin(&[("CNI_COMMAND", "STATUS")], &conf.to_string());
    assert!(ok, "STATUS: {v}");
    let (ok, v) = plugin(&[("CNI_COMMAND", "STATUS")], &with(json!({"cniVersion": "1.0.0"})).to_string());
    assert!(!ok && err_code(&v) == 1, "STATUS on 1.0.0: {v}");
    let (ok, v) = plugin(&[("CNI_COMMAND", "STATUS")], &with(json!({"agent_socket": tmp.path().join("none.sock")})).to_string());
    assert!(!ok && err_code(&v) == 50, "STATUS without an agent: {v}");
    drop(lab);
}
