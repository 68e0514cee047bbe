//! The `evnet` binary's resource verbs against the real API (`evnet-server`
//! over an in-memory store on 127.0.0.1:0): what a person types, what they
//! read back, and how errors and exit codes look.

use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;

const ADMIN: &str = "admin-secret-for-cli-tests";

/// Starts the server on its own runtime thread and returns its URL.
fn start_server() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store: Arc<dyn evnet_store::Store> = Arc::new(evnet_store::MemStore::new());
            let state = evnet_server::state(store, ADMIN, Default::default())
                .await
                .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, evnet_server::app(state))
                .await
                .unwrap();
        });
    });
    let addr = rx.recv().expect("the server starts");
    format!("http://{addr}")
}

struct Cli {
    url: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }
}

impl Cli {
    fn run(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_evnet"));
        cmd.args(args)
            .env("EVNET_URL", &self.url)
            .env_remove("EVNET_TOKEN");
        if let Some(t) = token {
            cmd.env("EVNET_TOKEN", t);
        }
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().expect("evnet runs");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    }
}

#[test]
fn a_tenant_builds_a_network_with_the_cli() {
    let cli = Cli {
        url: start_server(),
    };

    // The admin creates a tenant; its token is in the JSON.
    let tenant = cli
        .run(Some(ADMIN), &["tenant", "create", "acme", "-o", "json"])
        .json();
    let token = tenant["token"].as_str().expect("a token").to_string();
    let t = Some(token.as_str());

    let out = cli
        .run(
            t,
            &[
                "vpc",
                "create",
                "--cidr",
                "10.0.0.0/16",
                "--name",
                "prod",
                "--tag",
                "env=prod",
            ],
        )
        .ok();
    assert!(out.contains("cidr_block:"), "{out}");
    assert!(out.contains("10.0.0.0/16"), "{out}");
    assert!(out.contains("env=prod"), "{out}");

    // Names stand in for ids.
    let subnet = cli
        .run(
            t,
            &[
                "subnet",
                "create",
                "--vpc",
                "prod",
                "--cidr",
                "10.0.1.0/24",
                "--name",
                "web",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(subnet["cidr_block"], "10.0.1.0/24");
    assert_eq!(subnet["gateway_ip"], "10.0.1.1");

    cli.run(t, &["sg", "create", "--vpc", "prod", "--name", "ssh"])
        .ok();
    let out = cli
        .run(
            t,
            &[
                "sg",
                "authorize-ingress",
                "ssh",
                "--proto",
                "tcp",
                "--port",
                "22",
                "--cidr",
                "10.0.0.0/16",
            ],
        )
        .ok();
    assert!(out.contains("ingress:"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["tcp", "22", "10.0.0.0/16"]),
        "{out}"
    );
    let dup = cli.run(
        t,
        &[
            "sg",
            "authorize-ingress",
            "ssh",
            "--proto",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "10.0.0.0/16",
        ],
    );
    assert_eq!(dup.code, 1);
    assert!(
        dup.stderr.contains("already has this rule"),
        "{}",
        dup.stderr
    );

    let eni = cli
        .run(
            t,
            &[
                "eni",
                "create",
                "--subnet",
                "web",
                "--name",
                "web-eth0",
                "--sg",
                "ssh",
                "--guaranteed",
                "100M",
                "--limit",
                "1G",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(eni["bandwidth"]["guaranteed_mbps"], 100);
    assert_eq!(eni["bandwidth"]["limit_mbps"], 1000);
    let eni_id = eni["id"].as_str().unwrap().to_string();

    // set-bandwidth changes only what it is given.
    let eni = cli
        .run(
            t,
            &[
                "eni",
                "set-bandwidth",
                "web-eth0",
                "--guaranteed",
                "200M",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(eni["bandwidth"]["guaranteed_mbps"], 200);
    assert_eq!(eni["bandwidth"]["limit_mbps"], 1000);

    let out = cli.run(t, &["eni", "list", "--vpc", "prod"]).ok();
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("ID ") && header.contains("BANDWIDTH"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&eni_id) && l.contains("web-eth0") && l.contains("200M/1G")),
        "{out}"
    );

    // Lists as JSON are the API's page shape with every item.
    let list = cli.run(t, &["subnet", "list", "-o", "json"]).json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // A host for the instance, registered by the admin.
    cli.run(
        Some(ADMIN),
        &[
            "host",
            "register",
            "--name",
            "host-1",
            "--underlay-ip",
            "198.18.0.1",
            "--nic",
            "1G",
        ],
    )
    .ok();
    let hosts = cli.run(Some(ADMIN), &["host", "list"]).ok();
    assert!(
        hosts.contains("host-1") && hosts.contains("198.18.0.1"),
        "{hosts}"
    );
    // Only the admin moves a host's underlay address; a bootstrap token
    // registers a new host once and answers its credential.
    let moved = cli
        .run(Some(ADMIN), &["host", "update", "host-1", "--underlay-ip", "198.18.0.21", "-o", "json"])
        .json();
    assert_eq!(moved["underlay_ip"], "198.18.0.21");
    let boot = cli.run(Some(ADMIN), &["host", "create-token", "-o", "json"]).json();
    let boot = boot["token"].as_str().unwrap().to_string();
    let reg = &["host", "register", "--name", "host-2", "--underlay-ip", "198.18.0.2", "--nic", "1G", "-o", "json"];
    let h2 = cli.run(Some(&boot), reg).json();
    assert_eq!(h2["credential"].as_str().map(str::len), Some(64), "{h2}");
    let again = cli.run(Some(&boot), reg);
    assert!(again.code != 0 && again.stderr.contains("(unauthorized)"), "a used bootstrap token registers nothing: {}", again.stderr);

    let inst = cli
        .run(
            t,
            &[
                "instance", "create", "--name", "web-1", "--eni", "web-eth0", "-o", "json",
            ],
        )
        .json();
    assert_eq!(inst["state"], "pending");
    let got = cli.run(t, &["eni", "get", "web-eth0", "-o", "json"]).json();
    assert_eq!(got["status"], "in-use");
    assert_eq!(got["attachment"]["instance_id"], inst["id"]);

    // No agent runs here, so the instance never starts: exec says so.
    let exec = cli.run(t, &["exec", "web-1", "--", "true"]);
    assert_eq!(exec.code, 1);
    assert!(
        exec.stderr.contains("is not running yet"),
        "{}",
        exec.stderr
    );

    // Trace from the instance (its eth0): the gateway answers; an address
    // no ENI holds goes nowhere; a tcp packet needs a port.
    let out = cli.run(t, &["trace", "web-1", "10.0.1.1", "--protocol", "icmp"]).ok();
    assert!(out.contains("anti-spoofing") && out.contains("verdict: answered by the VPC's router"), "{out}");
    let tr = cli.run(t, &["trace", "web-eth0", "10.0.1.200", "--protocol", "udp", "--port", "53", "-o", "json"]).json();
    assert_eq!(tr["verdict"], "dropped");
    assert_eq!(tr["steps"][2]["stage"], "route");
    assert!(tr["steps"][2]["detail"].as_str().unwrap().contains("no ENI"), "{tr}");
    let bad = cli.run(t, &["trace", "web-1", "10.0.1.1"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("--port"), "{}", bad.stderr);

    let out = cli.run(t, &["eni", "detach", "web-eth0"]).ok();
    assert!(out.contains("available"), "{out}");

    // The server's errors print as `error: <message> (<code>)`.
    let bad = cli.run(
        t,
        &["subnet", "create", "--vpc", "prod", "--cidr", "10.9.0.0/24"],
    );
    assert_eq!(bad.code, 1);
    let line = bad.stderr.trim();
    assert!(
        line.starts_with("error: ") && line.ends_with(')') && line.contains(" ("),
        "{line}"
    );

    let none = cli.run(t, &["vpc", "get", "nope"]);
    assert_eq!(none.code, 1);
    assert!(
        none.stderr.contains("no VPC is named `nope`"),
        "{}",
        none.stderr
    );

    // Deletes.
    let out = cli.run(t, &["eni", "delete", "web-eth0"]).ok();
    assert_eq!(out.trim(), format!("deleted eni {eni_id}"));
    assert_eq!(
        cli.run(t, &["eni", "list", "-o", "json"]).json()["items"],
        serde_json::json!([])
    );
}

#[test]
fn routes_peerings_and_pools() {
    let cli = Cli {
        url: start_server(),
    };
    let token = cli
        .run(Some(ADMIN), &["tenant", "create", "beta", "-o", "json"])
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let t = Some(token.as_str());
    cli.run(
        t,
        &["vpc", "create", "--cidr", "10.0.0.0/16", "--name", "a"],
    )
    .ok();
    cli.run(
        t,
        &["vpc", "create", "--cidr", "10.9.0.0/16", "--name", "b"],
    )
    .ok();
    cli.run(
        t,
        &[
            "subnet",
            "create",
            "--vpc",
            "a",
            "--cidr",
            "10.0.1.0/24",
            "--name",
            "a1",
        ],
    )
    .ok();

    let pcx = cli
        .run(
            t,
            &[
                "peering", "create", "--vpc-a", "a", "--vpc-b", "b", "--name", "a-b", "-o", "json",
            ],
        )
        .json();
    let pcx_id = pcx["id"].as_str().unwrap();

    let rtb = cli
        .run(
            t,
            &[
                "route-table",
                "create",
                "--vpc",
                "a",
                "--name",
                "to-b",
                "--subnet",
                "a1",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(rtb["subnet_ids"].as_array().unwrap().len(), 1);
    let out = cli
        .run(
            t,
            &[
                "route-table",
                "add-route",
                "to-b",
                "--destination",
                "10.9.0.0/16",
                "--target",
                pcx_id,
            ],
        )
        .ok();
    assert!(
        out.lines()
            .any(|l| l.contains("10.9.0.0/16") && l.contains(pcx_id)),
        "{out}"
    );
    let out = cli.run(t, &["route-table", "list", "--vpc", "a"]).ok();
    assert_eq!(out.lines().count(), 3, "the main table and to-b:\n{out}");

    cli.run(t, &["eni", "create", "--subnet", "a1", "--name", "e1"])
        .ok();
    cli.run(t, &["eni", "create", "--subnet", "a1", "--name", "e2"])
        .ok();
    let pool = cli
        .run(
            t,
            &[
                "bandwidth-pool",
                "create",
                "--scope",
                "vpc",
                "--vpc",
                "a",
                "--limit",
                "500M",
                "--member",
                "e1",
                "--name",
                "pkg",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(pool["limit_mbps"], 500);
    let pool = cli
        .run(
            t,
            &[
                "bandwidth-pool",
                "update",
                "pkg",
                "--add-member",
                "e2",
                "--limit",
                "1G",
                "-o",
                "json",
            ],
        )
        .json();
    assert_eq!(pool["members"].as_array().unwrap().len(), 2);
    assert_eq!(pool["limit_mbps"], 1000);

    let missing = cli.run(None, &["vpc", "list"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("set EVNET_TOKEN"),
        "{}",
        missing.stderr
    );
}

#[test]
fn leaving_the_vpc_with_the_cli() {
    let cli = Cli { url: start_server() };
    let token = cli.run(Some(ADMIN), &["tenant", "create", "gamma", "-o", "json"]).json()["token"].as_str().unwrap().to_string();
    let t = Some(token.as_str());

    // Only the admin defines external networks; every tenant reads them.
    let refused = cli.run(t, &["external-network", "create", "--cidr", "203.0.113.0/29"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("(forbidden)"), "{}", refused.stderr);
    let bad = cli.run(Some(ADMIN), &["external-network", "create", "--cidr", "203.0.113.0/29", "--pool", "203.0.113.9"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("START-END"), "{}", bad.stderr);
    cli.run(Some(ADMIN), &["external-network", "create", "--cidr", "203.0.113.0/29", "--name", "internet"]).ok();
    let out = cli.run(t, &["external-network", "list"]).ok();
    assert!(out.contains("HOST_INTERFACE") && out.contains("203.0.113.2-203.0.113.6") && out.contains("evext0"), "{out}");
    cli.run(Some(ADMIN), &["host", "register", "--name", "host-1", "--underlay-ip", "198.18.0.1", "--nic", "10G"]).ok();

    cli.run(t, &["vpc", "create", "--cidr", "10.0.0.0/16", "--name", "prod"]).ok();
    cli.run(t, &["subnet", "create", "--vpc", "prod", "--cidr", "10.0.1.0/24", "--name", "public"]).ok();
    let eni = cli.run(t, &["eni", "create", "--subnet", "public", "--name", "web", "-o", "json"]).json();
    let eip = cli.run(t, &["eip", "allocate", "--name", "web-ip", "-o", "json"]).json();
    assert_eq!(eip["address"], "203.0.113.2", "{eip}");

    // Associating without the VPC's gateway says what to do.
    let no_igw = cli.run(t, &["eip", "associate", "web-ip", "--eni", "web"]);
    assert_ne!(no_igw.code, 0);
    assert!(no_igw.stderr.contains("evnet igw create --vpc") && no_igw.stderr.contains("(no_internet_gateway)"), "{}", no_igw.stderr);
    let igw = cli.run(t, &["igw", "create", "--vpc", "prod", "--name", "prod-igw", "-o", "json"]).json();
    let igw_id = igw["id"].as_str().unwrap();
    // The elastic IP by its address; the table shows what it maps to.
    let out = cli.run(t, &["eip", "associate", "203.0.113.2", "--eni", "web"]).ok();
    let field = |name: &str| out.lines().find(|l| l.starts_with(&format!("{name}:"))).map(|l| l.split_whitespace().last().unwrap_or("").to_string());
    assert_eq!(field("associated_with").as_deref(), eni["id"].as_str(), "{out}");
    assert_eq!(field("private_ip").as_deref(), eni["private_ip"].as_str(), "{out}");
    let out = cli.run(t, &["eip", "update", "203.0.113.2", "--tag", "team=web", "-o", "json"]).json();
    assert_eq!((&out["name"], &out["tags"]["team"]), (&serde_json::json!("web-ip"), &serde_json::json!("web")), "{out}");
    let nothing = cli.run(t, &["eip", "update", "web-ip"]);
    assert!(nothing.code != 0 && nothing.stderr.contains("nothing to change"), "{}", nothing.stderr);
    let out = cli.run(t, &["eip", "list"]).ok();
    assert!(out.lines().next().unwrap().contains("ASSOCIATED_WITH") && out.contains("203.0.113.2"), "{out}");
    assert!(cli.run(t, &["eip", "release", "web-ip"]).stderr.contains("(eip_associated)"));

    // A NAT gateway with a second elastic IP, on the only ready host.
    cli.run(t, &["eip", "allocate", "--name", "nat-ip"]).ok();
    let nat = cli.run(t, &["natgw", "create", "--subnet", "public", "--eip", "nat-ip", "--name", "prod-nat", "-o", "json"]).json();
    assert_eq!((nat["state"].as_str(), nat["host_id"].as_str().map(|h| h.starts_with("host-"))), (Some("available"), Some(true)), "{nat}");
    let out = cli.run(t, &["natgw", "show", "prod-nat"]).ok();
    assert!(out.contains("host_id:") && out.contains("elastic_ip_id:"), "{out}");

    // Routes to both gateways; deleting one leaves its route a blackhole.
    let nat_id = nat["id"].as_str().unwrap();
    let rtb = cli
        .run(t, &["route-table", "create", "--vpc", "prod", "--name", "out", "--route", &format!("0.0.0.0/0={igw_id}"), "--route", &format!("192.0.2.0/24={nat_id}"), "-o", "json"])
        .json();
    assert_eq!(rtb["routes"][1]["state"], "active", "{rtb}");
    let out = cli.run(t, &["natgw", "delete", "prod-nat"]).ok();
    assert!(out.contains(&format!("deleted NAT gateway {nat_id}")), "{out}");
    let out = cli.run(t, &["route-table", "get", "out"]).ok();
    assert!(out.lines().any(|l| l.contains(nat_id) && l.contains("blackhole")), "{out}");
    let out = cli.run(t, &["eip", "get", "nat-ip", "-o", "json"]).json();
    assert!(out["association"].is_null(), "{out}");

    // Take it all down.
    cli.run(t, &["eip", "disassociate", "web-ip"]).ok();
    cli.run(t, &["eip", "release", "web-ip"]).ok();
    cli.run(t, &["eip", "release", "nat-ip"]).ok();
    cli.run(t, &["igw", "delete", "prod-igw"]).ok();
    assert_eq!(cli.run(t, &["igw", "list", "-o", "json"]).json()["items"], serde_json::json!([]));
    cli.run(Some(ADMIN), &["external-network", "delete", "internet"]).ok();
}
