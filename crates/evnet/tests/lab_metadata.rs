//! Instance metadata at 169.254.169.254, answered by the agent on the
//! ENI's host-side device, on a lab with the tc-BPF data plane, as root,
//! with curl inside the instances as a guest's tools ask: a token by `PUT
//! latest/api/token`, then the instance's id, its MAC's subnet and groups,
//! its tags and the identity document; a `GET` without a token gets 401.
//! Two tenants' instances on one host with the same private address each
//! see only their own id, and a token of one is refused to the other. A
//! forged source address (a second address on eth0 that is not the ENI's)
//! and a forged MAC get no answer at all; with the MAC back the instance is
//! answered again.
//!
//! Fails (never skips) without root when CI=true.

use std::process::Command;
use std::time::{Duration, Instant};

use evnet_model::*;

mod common;
use common::TestLab;

/// Runs `sh -c CMD` in named namespace `ns`; it must succeed: its output.
fn in_ns(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const MD: &str = "http://169.254.169.254";

/// One request by curl in `ns` (at most 3 s): the status (0 when nothing
/// answered) and the body.
fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let (code, body, _) = curl_exit(ns, args);
    (code, body)
}

/// [`curl`], and curl's exit status (28: timed out, nothing answered).
fn curl_exit(ns: &str, args: &[&str]) -> (u16, String, i32) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "3", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string(), out.status.code().unwrap_or(-1))
}

/// Curl's exit status when the time ran out with no answer.
const TIMED_OUT: i32 = 28;

/// A token for `ns` (60 s), or the status that came instead.
fn token(ns: &str, extra: &[&str]) -> Result<String, u16> {
    let mut args = vec!["-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60"];
    args.extend_from_slice(extra);
    let url = format!("{MD}/latest/api/token");
    args.push(&url);
    match curl(ns, &args) {
        (200, t) if !t.is_empty() => Ok(t),
        (code, _) => Err(code),
    }
}

/// Waits (bounded) for `ns` to get a token: the agent's socket on the
/// device comes with the pass that made it.
fn token_within(ns: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match token(ns, &[]) {
            Ok(t) => return t,
            Err(code) if Instant::now() >= deadline => panic!("no metadata token in {ns} within {secs} s (last status {code})"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `GET path` with `token`: status and body.
fn get(ns: &str, token: &str, path: &str) -> (u16, String) {
    let header = format!("X-aws-ec2-metadata-token: {token}");
    curl(ns, &["-H", &header, &format!("{MD}{path}")])
}

/// The body of `GET path`, which must answer 200.
fn get_ok(ns: &str, token: &str, path: &str) -> String {
    let (code, body) = get(ns, token, path);
    assert_eq!(code, 200, "GET {path} in {ns}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_answers_each_instance_its_own_data_and_nothing_to_a_forger() {
    if !common::require_root("the lab metadata test") {
        return;
    }
    let lab = TestLab::bpf(1).await;
    let h1 = lab.host("host-1");
    let url = lab.state["url"].as_str().unwrap().to_string();
    let tb = lab.admin.create_tenant(&CreateTenant { name: "metadata-b".into(), tags: Default::default() }).await.unwrap();
    let tenant_b = evnet_client::Client::new(&url, tb.token.clone()).unwrap();
    // Each tenant: a VPC 10.20.0.0/16, an ENI at 10.20.1.10, an instance on host-1.
    let mut made = vec![];
    for (c, name) in [(&lab.tenant, "a"), (&tenant_b, "b")] {
        let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.20.0.0/16".into(), ..Default::default() }).await.unwrap();
        let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.20.1.0/24".into(), ..Default::default() }).await.unwrap();
        let eni = c
            .create_eni(&CreateEni { subnet_id: subnet.id.clone(), private_ip: Some("10.20.1.10".parse().unwrap()), ..Default::default() })
            .await
            .unwrap();
        let tags = [("role".to_string(), format!("web-{name}")), ("team".to_string(), "blue".to_string())].into_iter().collect();
        let inst = c
            .create_instance(&CreateInstance {
                name: Some(name.into()),
                host_id: Some(h1.clone()),
                eni_ids: vec![eni.id.clone()],
                tags,
                ..Default::default()
            })
            .await
            .unwrap();
        made.push((vpc, subnet, eni, inst));
    }
    let (_, subnet_a, eni_a, a) = &made[0];
    let (_, _, _, b) = &made[1];
    let (ns_a, ns_b) = (a.netns.as_str(), b.netns.as_str());

    // A's instance: a token, then its own data.
    let ta = token_within(ns_a, 30);
    assert_eq!(get_ok(ns_a, &ta, "/latest/meta-data/instance-id"), a.id);
    assert_eq!(get_ok(ns_a, &ta, "/latest/meta-data/local-ipv4"), "10.20.1.10");
    let mac = in_ns(ns_a, "cat /sys/class/net/eth0/address").trim().to_string();
    assert_eq!(get_ok(ns_a, &ta, "/latest/meta-data/mac"), mac);
    let macs = format!("/latest/meta-data/network/interfaces/macs/{mac}");
    assert_eq!(get_ok(ns_a, &ta, &format!("{macs}/subnet-id")), subnet_a.id);
    assert_eq!(get_ok(ns_a, &ta, &format!("{macs}/interface-id")), eni_a.id);
    assert_eq!(get_ok(ns_a, &ta, &format!("{macs}/security-group-ids")), eni_a.security_group_ids.join("\n"));
    assert_eq!(get_ok(ns_a, &ta, &format!("{macs}/owner-id")), a.tenant);
    assert_eq!(get_ok(ns_a, &ta, &format!("{macs}/vpc-ipv4-cidr-block")), "10.20.0.0/16");
    assert_eq!(get_ok(ns_a, &ta, "/latest/meta-data/tags/instance"), "role\nteam");
    assert_eq!(get_ok(ns_a, &ta, "/latest/meta-data/tags/instance/role"), "web-a");
    let doc: serde_json::Value = serde_json::from_str(&get_ok(ns_a, &ta, "/latest/dynamic/instance-identity/document")).unwrap();
    assert_eq!((doc["instanceId"].as_str(), doc["privateIp"].as_str()), (Some(a.id.as_str()), Some("10.20.1.10")));
    // Without a token, with a made-up one: 401; forwarded: 403.
    assert_eq!(curl(ns_a, &[&format!("{MD}/latest/meta-data/instance-id")]).0, 401);
    assert_eq!(get(ns_a, "not-a-token", "/latest/meta-data/instance-id").0, 401);
    assert_eq!(token(ns_a, &["-H", "X-Forwarded-For: 10.20.1.10"]), Err(403));

    // B's instance, same address on the same host: its own id only, and
    // A's token is refused to it (and B's to A).
    let tb = token_within(ns_b, 30);
    assert_eq!(get_ok(ns_b, &tb, "/latest/meta-data/instance-id"), b.id);
    assert_eq!(get_ok(ns_b, &tb, "/latest/meta-data/tags/instance/role"), "web-b");
    assert_eq!(get(ns_b, &ta, "/latest/meta-data/instance-id").0, 401);
    assert_eq!(get(ns_a, &tb, "/latest/meta-data/instance-id").0, 401);

    // A forged source: a second address on eth0 that is not the ENI's.
    // The agent's full pass may take the address away meanwhile (the
    // instance's namespace is evnet's): then the check proves nothing and
    // runs again.
    let url_token = format!("{MD}/latest/api/token");
    let forged = ["--interface", "10.20.1.99", "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", url_token.as_str()];
    let mut checked = false;
    for _ in 0..3 {
        in_ns(ns_a, "ip addr replace 10.20.1.99/32 dev eth0");
        let (code, body, exit) = curl_exit(ns_a, &forged);
        if !in_ns(ns_a, "ip -4 addr show dev eth0").contains("10.20.1.99/32") {
            continue;
        }
        assert_eq!((code, exit), (0, TIMED_OUT), "a forged source was answered (or refused): {body}");
        checked = true;
        break;
    }
    assert!(checked, "the forged address never stayed for a whole check");
    let _ = Command::new("ip").args(["netns", "exec", ns_a, "ip", "addr", "del", "10.20.1.99/32", "dev", "eth0"]).output();

    // A forged MAC: nothing answers (the same care for the agent's repair).
    let forged_mac = "02:00:00:de:ad:02";
    let mut checked = false;
    for _ in 0..3 {
        in_ns(ns_a, &format!("ip link set eth0 address {forged_mac}"));
        let header = format!("X-aws-ec2-metadata-token: {ta}");
        let (code, body, exit) = curl_exit(ns_a, &["-H", &header, &format!("{MD}/latest/meta-data/instance-id")]);
        if in_ns(ns_a, "cat /sys/class/net/eth0/address").trim() != forged_mac {
            continue;
        }
        assert_eq!((code, exit), (0, TIMED_OUT), "a forged MAC was answered (or refused): {body}");
        checked = true;
        break;
    }
    assert!(checked, "the forged MAC never stayed for a whole check");
    in_ns(ns_a, &format!("ip link set eth0 address {mac}"));
    let ta = token_within(ns_a, 10);
    assert_eq!(get_ok(ns_a, &ta, "/latest/meta-data/instance-id"), a.id);

    lab.down();
}
