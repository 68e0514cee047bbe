//! Tests of argument parsing (`try_parse_from`), of what the tables look
//! like, of the exec argument handling, and of a few verbs end to end
//! against a scripted HTTP server that records the requests they make.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::sync::{Arc, Mutex};

use clap::{CommandFactory, Parser};
use evnet_model::*;
use serde_json::{Value, json};

use super::eni::{BandwidthArgs, EniCommand};
use super::render::{self, Render};
use super::sg::{ProtoArg, SgCommand};
use super::*;

#[derive(Parser, Debug)]
#[command(name = "evnet")]
struct TestCli {
    #[command(flatten)]
    opts: GlobalOpts,
    #[command(subcommand)]
    cmd: ResourceCommand,
}

fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
    TestCli::try_parse_from(std::iter::once("evnet").chain(args.iter().copied()))
}

fn parse_ok(args: &[&str]) -> TestCli {
    parse(args).unwrap_or_else(|e| panic!("{args:?} should parse: {e}"))
}

// ---------------------------------------------------------------------------
// The command tree.

#[test]
fn the_command_tree_is_consistent() {
    TestCli::command().debug_assert();
}

#[test]
fn every_verb_has_examples() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name());
        let subs: Vec<_> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() {
            let examples = cmd
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !examples.contains("Examples:\n  ") {
                missing.push(path.clone());
            }
        }
        for s in subs {
            walk(s, &path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&TestCli::command(), "", &mut missing);
    assert!(missing.is_empty(), "verbs without examples: {missing:?}");
}

#[test]
fn global_options_go_before_or_after_the_verb() {
    let cli = parse_ok(&[
        "vpc",
        "list",
        "-o",
        "json",
        "--url",
        "http://10.1.1.1:9",
        "--token",
        "t",
    ]);
    assert_eq!(cli.opts.output, OutputFormat::Json);
    assert_eq!(cli.opts.url, "http://10.1.1.1:9");
    assert_eq!(cli.opts.token.as_deref(), Some("t"));
    let cli = parse_ok(&["--output", "table", "vpc", "get", "prod"]);
    assert_eq!(cli.opts.output, OutputFormat::Table);
    assert!(
        matches!(cli.cmd, ResourceCommand::Vpc(network::VpcCommand::Get { ref vpc }) if vpc == "prod")
    );
    assert!(parse(&["vpc", "list", "-o", "yaml"]).is_err());
}

#[test]
fn vpc_create_takes_tags() {
    let cli = parse_ok(&[
        "vpc",
        "create",
        "--cidr",
        "10.0.0.0/16",
        "--name",
        "prod",
        "--tag",
        "env=prod",
        "--tag",
        "team=a=b",
    ]);
    let ResourceCommand::Vpc(network::VpcCommand::Create { cidr, name, tags }) = cli.cmd else {
        panic!()
    };
    assert_eq!(cidr, "10.0.0.0/16");
    assert_eq!(name.as_deref(), Some("prod"));
    assert_eq!(
        tags,
        [
            ("env".to_string(), "prod".to_string()),
            ("team".to_string(), "a=b".to_string())
        ]
    );
    let err = parse(&["vpc", "create", "--cidr", "10.0.0.0/16", "--tag", "novalue"]).unwrap_err();
    assert!(err.to_string().contains("write it as key=value"), "{err}");
    assert!(parse(&["vpc", "create"]).is_err(), "--cidr is required");
}

#[test]
fn eni_create_parses_rates_and_flags() {
    let cli = parse_ok(&[
        "eni",
        "create",
        "--subnet",
        "web",
        "--ip",
        "10.0.1.10",
        "--secondary-ips",
        "2",
        "--sg",
        "ssh",
        "--sg",
        "sg-1a2b3c4d5e6f7a8b",
        "--no-source-dest-check",
        "--guaranteed",
        "200M",
        "--limit",
        "1G",
        "--weight",
        "3",
    ]);
    let ResourceCommand::Eni(EniCommand::Create {
        subnet,
        ip,
        secondary_ip_count,
        security_groups,
        no_source_dest_check,
        bandwidth,
        ..
    }) = cli.cmd
    else {
        panic!()
    };
    assert_eq!(subnet, "web");
    assert_eq!(ip, Some("10.0.1.10".parse().unwrap()));
    assert_eq!(secondary_ip_count, 2);
    assert_eq!(security_groups, ["ssh", "sg-1a2b3c4d5e6f7a8b"]);
    assert!(no_source_dest_check);
    assert_eq!(
        bandwidth,
        BandwidthArgs {
            guaranteed: Some(200),
            limit: Some(LimitArg::Mbps(1000)),
            weight: Some(3),
            burst_kbytes: None
        }
    );
    let err = parse(&["eni", "create", "--subnet", "web", "--guaranteed", "fast"]).unwrap_err();
    assert!(err.to_string().contains("write it like 200M"), "{err}");
    assert!(parse(&["eni", "create", "--subnet", "web", "--ip", "10.0.1"]).is_err());
}

#[test]
fn set_bandwidth_changes_only_what_is_given() {
    let cli = parse_ok(&[
        "eni",
        "set-bandwidth",
        "web-eth0",
        "--limit",
        "nic",
        "--burst-kbytes",
        "128",
    ]);
    let ResourceCommand::Eni(EniCommand::SetBandwidth { eni, bandwidth }) = cli.cmd else {
        panic!()
    };
    assert_eq!(eni, "web-eth0");
    let current = BandwidthSpec {
        guaranteed_mbps: 100,
        limit_mbps: Some(500),
        weight: 2,
        burst_kbytes: 64,
    };
    assert_eq!(
        bandwidth.apply(current),
        BandwidthSpec {
            guaranteed_mbps: 100,
            limit_mbps: None,
            weight: 2,
            burst_kbytes: 128
        }
    );
    let cli = parse_ok(&["eni", "set-bandwidth", "e", "--guaranteed", "1.5G"]);
    let ResourceCommand::Eni(EniCommand::SetBandwidth { bandwidth, .. }) = cli.cmd else {
        panic!()
    };
    assert_eq!(bandwidth.apply(current).guaranteed_mbps, 1500);
    assert_eq!(bandwidth.apply(current).limit_mbps, Some(500));
    assert!(BandwidthArgs::default().is_empty());
}

#[test]
fn eni_attach_and_list_filters() {
    let cli = parse_ok(&[
        "eni",
        "attach",
        "web-eth1",
        "--instance",
        "web-1",
        "--device-index",
        "1",
    ]);
    assert!(matches!(
        cli.cmd,
        ResourceCommand::Eni(EniCommand::Attach { ref eni, ref instance, device_index: Some(1) })
            if eni == "web-eth1" && instance == "web-1"
    ));
    assert!(
        parse(&["eni", "attach", "web-eth1"]).is_err(),
        "--instance is required"
    );
    let cli = parse_ok(&["eni", "list", "--vpc", "prod", "--status", "in-use"]);
    assert!(matches!(
        cli.cmd,
        ResourceCommand::Eni(EniCommand::List { status: Some(eni::StatusArg::InUse), ref vpc, .. }) if vpc.as_deref() == Some("prod")
    ));
    let cli = parse_ok(&["eni", "update", "nat", "--source-dest-check", "false"]);
    assert!(matches!(
        cli.cmd,
        ResourceCommand::Eni(EniCommand::Update {
            source_dest_check: Some(false),
            ..
        })
    ));
}

#[test]
fn sg_rules_need_one_peer_and_one_port_form() {
    let cli = parse_ok(&[
        "sg",
        "authorize-ingress",
        "web",
        "--proto",
        "tcp",
        "--ports",
        "1000-2000",
        "--cidr",
        "10.0.0.0/8",
    ]);
    let ResourceCommand::Sg(SgCommand::AuthorizeIngress { group, rule }) = cli.cmd else {
        panic!()
    };
    assert_eq!(group, "web");
    assert_eq!(rule.proto, ProtoArg::Tcp);
    assert_eq!(
        rule.to_rule(None),
        SgRule {
            protocol: Protocol::Tcp,
            from_port: Some(1000),
            to_port: Some(2000),
            cidr: Some("10.0.0.0/8".parse().unwrap()),
            source_group_id: None
        }
    );

    let cli = parse_ok(&[
        "security-group",
        "authorize-egress",
        "db",
        "--proto",
        "tcp",
        "--port",
        "5432",
        "--group",
        "app",
    ]);
    let ResourceCommand::Sg(SgCommand::AuthorizeEgress { rule, .. }) = cli.cmd else {
        panic!()
    };
    assert_eq!(rule.source_group.as_deref(), Some("app"));
    let r = rule.to_rule(Some("sg-0000000000000002".into()));
    assert_eq!((r.from_port, r.to_port), (Some(5432), Some(5432)));
    assert_eq!(r.source_group_id.as_deref(), Some("sg-0000000000000002"));

    let icmp = parse_ok(&[
        "sg",
        "authorize-ingress",
        "web",
        "--proto",
        "icmp",
        "--cidr",
        "0.0.0.0/0",
    ]);
    let ResourceCommand::Sg(SgCommand::AuthorizeIngress { rule, .. }) = icmp.cmd else {
        panic!()
    };
    assert_eq!(
        (rule.to_rule(None).from_port, rule.to_rule(None).to_port),
        (None, None)
    );

    for bad in [
        &[
            "sg",
            "authorize-ingress",
            "web",
            "--proto",
            "tcp",
            "--port",
            "22",
        ][..],
        &[
            "sg",
            "authorize-ingress",
            "web",
            "--proto",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "10.0.0.0/8",
            "--source-group",
            "x",
        ],
        &[
            "sg",
            "authorize-ingress",
            "web",
            "--proto",
            "tcp",
            "--port",
            "22",
            "--ports",
            "1-2",
            "--cidr",
            "10.0.0.0/8",
        ],
        &[
            "sg",
            "authorize-ingress",
            "web",
            "--proto",
            "tcp",
            "--ports",
            "2000-1000",
            "--cidr",
            "10.0.0.0/8",
        ],
        &[
            "sg",
            "authorize-ingress",
            "web",
            "--proto",
            "sctp",
            "--cidr",
            "10.0.0.0/8",
        ],
        &[
            "sg",
            "authorize-ingress",
            "web",
            "--proto",
            "tcp",
            "--cidr",
            "10.0.0.0/33",
        ],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn rule_lists_refuse_duplicates_and_unknown_revokes() {
    let rule = |port| SgRule {
        protocol: Protocol::Tcp,
        from_port: Some(port),
        to_port: Some(port),
        cidr: Some("10.0.0.0/8".parse().unwrap()),
        source_group_id: None,
    };
    let mut rules = vec![rule(22)];
    sg::add_rule(&mut rules, rule(80)).unwrap();
    assert!(sg::add_rule(&mut rules, rule(22)).is_err());
    assert_eq!(rules, [rule(22), rule(80)]);
    sg::remove_rule(&mut rules, &rule(22)).unwrap();
    assert_eq!(rules, [rule(80)]);
    assert!(sg::remove_rule(&mut rules, &rule(443)).is_err());
}

#[test]
fn route_tables_parse_routes() {
    let cli = parse_ok(&[
        "route-table",
        "create",
        "--vpc",
        "prod",
        "--route",
        "0.0.0.0/0=eni-1a2b3c4d5e6f7a8b",
        "--route",
        "10.9.0.0/16=pcx-1a2b3c4d5e6f7a8b",
        "--subnet",
        "private",
    ]);
    let ResourceCommand::RouteTable(route_table::RouteTableCommand::Create {
        routes, subnets, ..
    }) = cli.cmd
    else {
        panic!()
    };
    assert_eq!(
        routes[0],
        Route::new("0.0.0.0/0".parse().unwrap(), "eni-1a2b3c4d5e6f7a8b")
    );
    assert_eq!(routes[1].target, "pcx-1a2b3c4d5e6f7a8b");
    assert_eq!(subnets, ["private"]);
    assert!(route_table::parse_route("10.9.0.0/16").is_err());
    assert!(route_table::parse_route("10.9.0.0/16=").is_err());
    assert!(route_table::parse_route("10.9.0/16=local").is_err());

    let mut routes = vec![Route::new("10.0.0.0/16".parse().unwrap(), "local")];
    route_table::upsert_route(
        &mut routes,
        Route::new("0.0.0.0/0".parse().unwrap(), "eni-1"),
    );
    route_table::upsert_route(
        &mut routes,
        Route::new("0.0.0.0/0".parse().unwrap(), "eni-2"),
    );
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[1].target, "eni-2");
}

#[test]
fn pools_and_instances() {
    assert!(
        parse(&[
            "bandwidth-pool",
            "create",
            "--scope",
            "vpc",
            "--limit",
            "1G"
        ])
        .is_err(),
        "a vpc pool names its VPC"
    );
    let cli = parse_ok(&[
        "bandwidth-pool",
        "create",
        "--scope",
        "tenant",
        "--limit",
        "1G",
        "--member",
        "a",
        "--member",
        "b",
    ]);
    let ResourceCommand::BandwidthPool(pool::PoolCommand::Create {
        limit,
        members,
        vpc,
        ..
    }) = cli.cmd
    else {
        panic!()
    };
    assert_eq!((limit, vpc), (1000, None));
    assert_eq!(members, ["a", "b"]);

    let members = vec!["eni-a".to_string(), "eni-b".to_string()];
    let edited = pool::edit_members(
        &members,
        &["eni-c".into(), "eni-a".into()],
        &["eni-b".into()],
    )
    .unwrap();
    assert_eq!(edited, ["eni-a", "eni-c"]);
    assert!(pool::edit_members(&members, &[], &["eni-z".into()]).is_err());

    let cli = parse_ok(&[
        "instance",
        "create",
        "--name",
        "web-1",
        "--placement",
        "pack",
        "--eni",
        "a",
        "--eni",
        "b",
    ]);
    let ResourceCommand::Instance(instance::InstanceCommand::Create {
        placement,
        enis,
        host,
        ..
    }) = cli.cmd
    else {
        panic!()
    };
    assert_eq!(PlacementStrategy::from(placement), PlacementStrategy::Pack);
    assert_eq!(enis, ["a", "b"]);
    assert_eq!(host, None);
    let cli = parse_ok(&["instance", "create"]);
    let ResourceCommand::Instance(instance::InstanceCommand::Create { placement, .. }) = cli.cmd
    else {
        panic!()
    };
    assert_eq!(
        PlacementStrategy::from(placement),
        PlacementStrategy::Spread
    );
}

#[test]
fn admin_verbs() {
    let cli = parse_ok(&["tenant", "create", "acme"]);
    assert!(
        matches!(cli.cmd, ResourceCommand::Tenant(admin::TenantCommand::Create { ref name, .. }) if name == "acme")
    );
    let cli = parse_ok(&[
        "host",
        "register",
        "--name",
        "h9",
        "--underlay-ip",
        "198.18.0.9",
        "--nic",
        "10G",
    ]);
    assert!(matches!(
        cli.cmd,
        ResourceCommand::Host(admin::HostCommand::Register { nic: 10_000, .. })
    ));
    assert!(matches!(
        parse_ok(&["host", "create-token"]).cmd,
        ResourceCommand::Host(admin::HostCommand::CreateToken { ttl: None })
    ));
    assert!(matches!(
        parse_ok(&["host", "update", "host-2", "--underlay-ip", "198.18.0.22"]).cmd,
        ResourceCommand::Host(admin::HostCommand::Update { underlay_ip: Some(ip), nic: None, .. }) if ip == std::net::Ipv4Addr::new(198, 18, 0, 22)
    ));
}

#[test]
fn small_parsers() {
    assert_eq!(parse_tag("k=v"), Ok(("k".into(), "v".into())));
    assert_eq!(parse_tag("k="), Ok(("k".into(), String::new())));
    assert!(parse_tag("=v").is_err());
    assert_eq!(parse_limit("NIC"), Ok(LimitArg::Nic));
    assert_eq!(parse_limit("none"), Ok(LimitArg::Nic));
    assert_eq!(parse_limit("2.5G"), Ok(LimitArg::Mbps(2500)));
    assert!(parse_limit("lots").is_err());
    assert_eq!(sg::parse_port_range("22"), Ok((22, 22)));
    assert_eq!(sg::parse_port_range("1000-2000"), Ok((1000, 2000)));
    assert!(sg::parse_port_range("70000").is_err());
    assert!(sg::parse_port_range("a-b").is_err());
}

// ---------------------------------------------------------------------------
// exec.

fn instance(state: &str, netns: &str) -> Instance {
    serde_json::from_value(json!({
        "id": "i-00000000000000a1", "name": "web-1", "tags": {}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 4, "host_id": "host-0000000000000001",
        "state": state, "netns": netns
    }))
    .unwrap()
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn exec_takes_the_command_with_or_without_dashes() {
    let cli = parse_ok(&["exec", "web-1", "--", "ip", "-br", "addr"]);
    let ResourceCommand::Exec(args) = cli.cmd else {
        panic!()
    };
    assert_eq!(args.instance, "web-1");
    assert_eq!(args.command, os(&["ip", "-br", "addr"]));

    // Everything after the instance belongs to the command, even options
    // evnet itself knows.
    let cli = parse_ok(&["exec", "web-1", "ping", "-c", "1", "-o", "json"]);
    let ResourceCommand::Exec(args) = cli.cmd else {
        panic!()
    };
    assert_eq!(args.command, os(&["ping", "-c", "1", "-o", "json"]));
    assert_eq!(cli.opts.output, OutputFormat::Table);

    let cli = parse_ok(&[
        "-o",
        "json",
        "exec",
        "web-1",
        "--",
        "sh",
        "-c",
        "echo $0 -- x",
    ]);
    let ResourceCommand::Exec(args) = cli.cmd else {
        panic!()
    };
    assert_eq!(args.command, os(&["sh", "-c", "echo $0 -- x"]));

    assert!(parse(&["exec", "web-1"]).is_err(), "a command is required");
    assert!(
        parse(&["exec", "web-1", "--"]).is_err(),
        "a command is required"
    );
}

#[test]
fn exec_runs_ip_netns_exec_in_the_instance_namespace() {
    let argv = exec::netns_argv(
        &instance("running", "evi00000000a1"),
        &os(&["ping", "-c", "1", "10.0.1.5"]),
    )
    .unwrap();
    assert_eq!(
        argv,
        os(&[
            "ip",
            "netns",
            "exec",
            "evi00000000a1",
            "ping",
            "-c",
            "1",
            "10.0.1.5"
        ])
    );
}

#[test]
fn exec_refuses_instances_that_are_not_running() {
    let err = exec::netns_argv(&instance("pending", ""), &os(&["true"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("web-1 (i-00000000000000a1) is not running yet (state pending, host host-0000000000000001)"), "{err}");
    assert!(
        err.contains("evnet instance get i-00000000000000a1"),
        "{err}"
    );
    let err = exec::netns_argv(&instance("running", ""), &os(&["true"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not running yet"), "{err}");
    let err = exec::netns_argv(&instance("running", "../etc"), &os(&["true"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unusable namespace name"), "{err}");
    assert!(exec::netns_argv(&instance("running", "evi1"), &[]).is_err());
}

// ---------------------------------------------------------------------------
// Rendering.

fn vpc(id: &str, name: &str, cidr: &str, vni: u32) -> Vpc {
    serde_json::from_value(json!({
        "id": id, "name": name, "tags": {"env": "prod", "team": "net"}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 7, "cidr_block": cidr, "vni": vni,
        "main_route_table_id": "rtb-0000000000000001", "default_security_group_id": "sg-0000000000000001"
    }))
    .unwrap()
}

fn eni(id: &str, attached: bool, bandwidth: Value) -> Eni {
    let attachment = if attached {
        json!({"instance_id": "i-00000000000000a1", "host_id": "host-0000000000000001", "device_index": 0})
    } else {
        Value::Null
    };
    serde_json::from_value(json!({
        "id": id, "name": if attached { "web-1-eth0" } else { "" }, "tags": {}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 3,
        "subnet_id": "subnet-0000000000000001", "vpc_id": "vpc-0000000000000001",
        "mac": "02:00:0a:00:01:0a", "private_ip": "10.0.1.10", "secondary_ips": ["10.0.1.11", "10.0.1.12"],
        "security_group_ids": ["sg-0000000000000001"], "source_dest_check": true,
        "bandwidth": bandwidth, "attachment": attachment,
        "status": if attached { "in-use" } else { "available" }
    }))
    .unwrap()
}

#[test]
fn tables_align_columns_without_trailing_spaces() {
    let out = render::table(
        &["ID", "NAME", "X"],
        &[
            vec!["a".into(), "longer name".into(), "1".into()],
            vec!["bbbb".into(), String::new(), String::new()],
        ],
    );
    assert_eq!(
        out,
        "ID     NAME          X\na      longer name   1\nbbbb   -             -\n"
    );
    assert_eq!(render::table(&["ID", "NAME"], &[]), "ID   NAME\n");
}

#[test]
fn vpc_list_table() {
    let vpcs = [
        vpc("vpc-1a2b3c4d5e6f7a8b", "prod", "10.0.0.0/16", 4097),
        vpc("vpc-0000000000000002", "", "10.1.0.0/24", 12),
    ];
    assert_eq!(
        render::render_list(&vpcs),
        "\
ID                     NAME   CIDR          VNI
vpc-1a2b3c4d5e6f7a8b   prod   10.0.0.0/16   4097
vpc-0000000000000002   -      10.1.0.0/24   12
"
    );
}

#[test]
fn eni_list_table_and_detail() {
    let enis = [
        eni(
            "eni-0000000000000001",
            true,
            json!({"guaranteed_mbps": 200, "limit_mbps": 1000, "weight": 2, "burst_kbytes": 64}),
        ),
        eni(
            "eni-0000000000000002",
            false,
            json!({"guaranteed_mbps": 0, "limit_mbps": null, "weight": 1, "burst_kbytes": 64}),
        ),
    ];
    assert_eq!(
        render::render_list(&enis),
        "\
ID                     NAME         SUBNET                    IP          MAC                 STATUS      INSTANCE             BANDWIDTH
eni-0000000000000001   web-1-eth0   subnet-0000000000000001   10.0.1.10   02:00:0a:00:01:0a   in-use      i-00000000000000a1   200M/1G
eni-0000000000000002   -            subnet-0000000000000001   10.0.1.10   02:00:0a:00:01:0a   available   -                    0/nic
"
    );
    assert_eq!(
        render::render_one(&enis[0]),
        "\
id:                  eni-0000000000000001
name:                web-1-eth0
tenant:              tenant-0000000000000001
tags:                -
created_at:          2024-05-01T10:00:00Z
revision:            3
subnet_id:           subnet-0000000000000001
vpc_id:              vpc-0000000000000001
mac:                 02:00:0a:00:01:0a
private_ip:          10.0.1.10
secondary_ips:       10.0.1.11,10.0.1.12
security_group_ids:  sg-0000000000000001
source_dest_check:   true
status:              in-use
attachment:          i-00000000000000a1 on host-0000000000000001 (device 0)
guaranteed:          200M
limit:               1G
weight:              2
burst_kbytes:        64
"
    );
}

#[test]
fn security_group_detail_lists_rules() {
    let sg: SecurityGroup = serde_json::from_value(json!({
        "id": "sg-0000000000000001", "name": "web", "tags": {}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 9, "vpc_id": "vpc-0000000000000001",
        "description": "web servers",
        "ingress": [
            {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/16"},
            {"protocol": "tcp", "from_port": 8000, "to_port": 8080, "source_group_id": "sg-0000000000000002"},
            {"protocol": "icmp", "cidr": "0.0.0.0/0"}
        ],
        "egress": []
    }))
    .unwrap();
    assert_eq!(
        render::render_one(&sg),
        "\
id:           sg-0000000000000001
name:         web
tenant:       tenant-0000000000000001
tags:         -
created_at:   2024-05-01T10:00:00Z
revision:     9
vpc_id:       vpc-0000000000000001
description:  web servers

ingress:
  PROTO   PORTS       PEER
  tcp     22          10.0.0.0/16
  tcp     8000-8080   sg-0000000000000002
  icmp    all         0.0.0.0/0

egress:
  (none)
"
    );
    assert_eq!(
        render::render_list(std::slice::from_ref(&sg)),
        "ID                    NAME   VPC                    INGRESS   EGRESS\nsg-0000000000000001   web    vpc-0000000000000001   3         0\n"
    );
}

#[test]
fn hosts_instances_and_tenant_tokens() {
    let host: Host = serde_json::from_value(json!({
        "id": "host-0000000000000001", "name": "host-1", "tags": {}, "tenant": "system",
        "created_at": "2024-05-01T10:00:00Z", "revision": 2, "underlay_ip": "198.18.0.1", "nic_mbps": 10000,
        "labels": {}, "status": "ready", "last_heartbeat_ms": 1714557600000u64, "applied_generation": 41
    }))
    .unwrap();
    assert_eq!(
        render::render_list(&[host]),
        "ID                      NAME     UNDERLAY     NIC   STATUS   APPLIED\nhost-0000000000000001   host-1   198.18.0.1   10G   ready    41\n"
    );
    assert_eq!(
        render::render_list(&[instance("pending", "")]),
        "ID                   NAME    HOST                    STATE     NETNS\ni-00000000000000a1   web-1   host-0000000000000001   pending   -\n"
    );
    let t: TenantWithToken = serde_json::from_value(json!({
        "id": "tenant-0000000000000002", "name": "acme", "tags": {}, "tenant": "tenant-0000000000000002",
        "created_at": "2024-05-01T10:00:00Z", "revision": 1, "token": "secret-123"
    }))
    .unwrap();
    assert!(
        render::render_one(&t).ends_with("token:       secret-123\n"),
        "{}",
        render::render_one(&t)
    );
    assert_eq!(t.fields().len(), 7);
}

#[test]
fn rates_read_like_people_write_them() {
    assert_eq!(render::rate(200), "200M");
    assert_eq!(render::rate(1000), "1G");
    assert_eq!(render::rate(1500), "1.5G");
    assert_eq!(render::rate(1001), "1001M");
    assert_eq!(render::rate(25_000), "25G");
    assert_eq!(render::rate(400_000), "400G");
    assert_eq!(render::rate(2_000_000), "2T");
    assert_eq!(render::rate(0), "0M");
    // What the table prints parses back to the same rate.
    for mbps in [1, 200, 999, 1000, 1250, 1500, 40_000, 400_000] {
        assert_eq!(
            evnet_model::bandwidth::parse_rate_mbps(&render::rate(mbps)),
            Ok(mbps)
        );
    }
}

#[test]
fn unknown_json_renders_as_paths() {
    let stats = json!({"eni_id": "eni-1", "rx": {"bytes": 10, "rate_mbps": 1.5}, "queues": [1, 2], "flows": [{"dst": "a"}], "note": null});
    assert_eq!(
        render::render_json_fields(&stats),
        "\
eni_id:        eni-1
flows[0].dst:  a
note:          -
queues:        1,2
rx.bytes:      10
rx.rate_mbps:  1.5
"
    );
}

// ---------------------------------------------------------------------------
// Verbs against a scripted server.

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    auth: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Script {
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<VecDeque<(u16, Value)>>>,
}

async fn answer(
    axum::extract::State(script): axum::extract::State<Script>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    script.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        auth: parts
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    let reply = script.replies.lock().unwrap().pop_front();
    match reply {
        Some((status, v)) => (
            axum::http::StatusCode::from_u16(status).unwrap(),
            axum::Json(v),
        )
            .into_response(),
        None => (axum::http::StatusCode::IM_A_TEAPOT, "no reply scripted").into_response(),
    }
}

async fn scripted(replies: Vec<(u16, Value)>) -> (GlobalOpts, Script) {
    let script = Script {
        replies: Arc::new(Mutex::new(replies.into())),
        ..Default::default()
    };
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let opts = GlobalOpts {
        url: format!("http://{addr}"),
        token: Some("tok".into()),
        output: OutputFormat::Json,
    };
    (opts, script)
}

#[tokio::test]
async fn set_bandwidth_resolves_the_name_and_writes_at_the_revision_read() {
    let bw = json!({"guaranteed_mbps": 100, "limit_mbps": 500, "weight": 2, "burst_kbytes": 64});
    let current = eni("eni-0000000000000001", true, bw);
    let mut updated = current.clone();
    updated.bandwidth.guaranteed_mbps = 300;
    let (opts, script) = scripted(vec![
        (
            200,
            json!({"items": [{"id": "eni-0000000000000001", "name": "web-1-eth0"}]}),
        ),
        (200, serde_json::to_value(&current).unwrap()),
        (200, serde_json::to_value(&updated).unwrap()),
    ])
    .await;
    let cli = parse_ok(&["eni", "set-bandwidth", "web-1-eth0", "--guaranteed", "300M"]);
    run(cli.cmd, &opts).await.unwrap();

    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(seen.iter().all(|s| s.auth.as_deref() == Some("Bearer tok")));
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("GET", "/v1/enis?name=web-1-eth0")
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].uri.as_str()),
        ("GET", "/v1/enis/eni-0000000000000001")
    );
    assert_eq!(
        (seen[2].method.as_str(), seen[2].uri.as_str()),
        ("PATCH", "/v1/enis/eni-0000000000000001")
    );
    assert_eq!(
        seen[2].body,
        json!({
            "name": null, "tags": null, "security_group_ids": null, "source_dest_check": null,
            "bandwidth": {"guaranteed_mbps": 300, "limit_mbps": 500, "weight": 2, "burst_kbytes": 64},
            "revision": 3
        })
    );
}

#[tokio::test]
async fn authorize_ingress_appends_to_the_current_rules() {
    let sg = json!({
        "id": "sg-0000000000000001", "name": "web", "tags": {}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 9, "vpc_id": "vpc-0000000000000001",
        "description": "", "ingress": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/16"}],
        "egress": [{"protocol": "all", "cidr": "0.0.0.0/0"}]
    });
    let (opts, script) = scripted(vec![
        (200, json!({"items": [{"id": "sg-0000000000000002"}]})),
        (200, sg.clone()),
        (200, sg),
    ])
    .await;
    let cli = parse_ok(&[
        "sg",
        "authorize-ingress",
        "sg-0000000000000001",
        "--proto",
        "tcp",
        "--ports",
        "8000-8080",
        "--source-group",
        "lb",
    ]);
    run(cli.cmd, &opts).await.unwrap();
    let seen = script.seen.lock().unwrap().clone();
    // The group given by id is not looked up; the peer group given by name is.
    assert_eq!(seen[0].uri, "/v1/security-groups?name=lb");
    assert_eq!(seen[1].uri, "/v1/security-groups/sg-0000000000000001");
    assert_eq!(seen[2].method, "PATCH");
    assert_eq!(seen[2].body["revision"], json!(9));
    assert_eq!(
        seen[2].body["ingress"],
        json!([
            {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/16"},
            {"protocol": "tcp", "from_port": 8000, "to_port": 8080, "source_group_id": "sg-0000000000000002"}
        ])
    );
    assert_eq!(
        seen[2].body["egress"],
        Value::Null,
        "egress is left as it is"
    );
}

#[tokio::test]
async fn names_that_match_nothing_or_several_are_errors() {
    let (opts, script) = scripted(vec![
        (200, json!({"items": []})),
        (
            200,
            json!({"items": [{"id": "i-0000000000000001"}, {"id": "i-0000000000000002"}]}),
        ),
    ])
    .await;
    let err = run(parse_ok(&["instance", "get", "web"]).cmd, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "no instance is named `web` (give a name or an id like i-1a2b3c4d5e6f7a8b)"
    );
    let err = run(parse_ok(&["instance", "get", "web"]).cmd, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "2 instances are named `web` (i-0000000000000001, i-0000000000000002): give the id instead"
    );
    assert_eq!(script.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn server_errors_read_message_then_code() {
    let (opts, _script) = scripted(vec![(
        409,
        json!({"error": {"code": "subnet_exhausted", "message": "subnet subnet-0000000000000001 has no free address"}}),
    )])
    .await;
    let err = run(
        parse_ok(&["eni", "create", "--subnet", "subnet-0000000000000001"]).cmd,
        &opts,
    )
    .await
    .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "subnet subnet-0000000000000001 has no free address (subnet_exhausted)"
    );
}

#[tokio::test]
async fn a_missing_token_says_to_set_evnet_token() {
    let opts = GlobalOpts {
        url: "http://127.0.0.1:7300".into(),
        token: None,
        output: OutputFormat::Table,
    };
    let err = run(parse_ok(&["vpc", "list"]).cmd, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("set EVNET_TOKEN"), "{err}");
    let opts = GlobalOpts {
        token: Some("  ".into()),
        ..opts
    };
    assert!(run(parse_ok(&["vpc", "list"]).cmd, &opts).await.is_err());
}

#[tokio::test]
async fn nothing_to_change_is_refused_before_any_request() {
    let (opts, script) = scripted(vec![]).await;
    for args in [
        &["eni", "set-bandwidth", "e"][..],
        &["eni", "update", "e"],
        &["vpc", "update", "v"],
        &["subnet", "update", "s"],
        &["bandwidth-pool", "update", "p"],
    ] {
        let err = run(parse_ok(args).cmd, &opts)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("nothing to change"), "{args:?}: {err}");
    }
    assert!(script.seen.lock().unwrap().is_empty());
}

#[test]
fn dhcp_options_verbs_parse() {
    let cli = parse_ok(&[
        "vpc",
        "dhcp-options",
        "set",
        "prod",
        "--dns",
        "10.0.0.2",
        "--dns",
        "1.1.1.1",
        "--domain",
        "corp.example",
        "--ntp",
        "10.0.0.3",
    ]);
    let ResourceCommand::Vpc(network::VpcCommand::DhcpOptions(
        network::VpcDhcpOptionsCommand::Set { vpc, options },
    )) = cli.cmd
    else {
        panic!()
    };
    assert_eq!(vpc, "prod");
    assert_eq!(
        options.dns,
        [
            "10.0.0.2".parse::<std::net::Ipv4Addr>().unwrap(),
            "1.1.1.1".parse().unwrap()
        ]
    );
    assert_eq!(
        (options.domain.as_deref(), options.ntp.len()),
        (Some("corp.example"), 1)
    );
    let cli = parse_ok(&["subnet", "dhcp-options", "clear", "web"]);
    assert!(matches!(
        cli.cmd,
        ResourceCommand::Subnet(network::SubnetCommand::DhcpOptions(network::SubnetDhcpOptionsCommand::Clear { ref subnet })) if subnet == "web"
    ));
    let err = parse(&["vpc", "dhcp-options", "set", "prod", "--dns", "dns.example"]).unwrap_err();
    assert!(err.to_string().contains("--dns"), "{err}");
    assert!(
        parse(&["subnet", "dhcp-options", "set"]).is_err(),
        "the subnet is required"
    );
}

#[test]
fn vpc_and_subnet_detail_show_the_dhcp_option_set() {
    let mut v = vpc("vpc-1a2b3c4d5e6f7a8b", "prod", "10.0.0.0/16", 4097);
    assert!(
        render::render_one(&v).ends_with(
            "default_security_group_id:  sg-0000000000000001\ndhcp_options:               -\n"
        ),
        "{}",
        render::render_one(&v)
    );
    v.dhcp_options = Some(DhcpOptions {
        domain_name_servers: vec!["10.0.0.2".parse().unwrap(), "1.1.1.1".parse().unwrap()],
        domain_name: Some("corp.example".into()),
        ntp_servers: vec![],
    });
    assert!(
        render::render_one(&v).ends_with(
            "\
default_security_group_id:  sg-0000000000000001
dhcp_dns_servers:           10.0.0.2,1.1.1.1
dhcp_domain_name:           corp.example
dhcp_ntp_servers:           -
"
        ),
        "{}",
        render::render_one(&v)
    );
    let s: Subnet = serde_json::from_value(json!({
        "id": "subnet-0000000000000001", "name": "web", "tags": {}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 4, "vpc_id": "vpc-1a2b3c4d5e6f7a8b",
        "cidr_block": "10.0.1.0/24", "gateway_ip": "10.0.1.1", "available_ip_count": 250
    }))
    .unwrap();
    assert!(
        render::render_one(&s)
            .ends_with("available_ip_count:  250\ndhcp_options:        - (the VPC's)\n"),
        "{}",
        render::render_one(&s)
    );
}

#[tokio::test]
async fn dhcp_options_set_and_clear_put_and_delete_the_set() {
    let v = vpc("vpc-1a2b3c4d5e6f7a8b", "prod", "10.0.0.0/16", 4097);
    let (opts, script) = scripted(vec![
        (
            200,
            json!({"items": [{"id": "vpc-1a2b3c4d5e6f7a8b", "name": "prod"}]}),
        ),
        (200, serde_json::to_value(&v).unwrap()),
        (200, serde_json::to_value(&v).unwrap()),
    ])
    .await;
    let cli = parse_ok(&[
        "vpc",
        "dhcp-options",
        "set",
        "prod",
        "--dns",
        "10.0.0.2",
        "--domain",
        "corp.example",
    ]);
    run(cli.cmd, &opts).await.unwrap();
    run(
        parse_ok(&["vpc", "dhcp-options", "clear", "vpc-1a2b3c4d5e6f7a8b"]).cmd,
        &opts,
    )
    .await
    .unwrap();
    let seen = script.seen.lock().unwrap().clone();
    let wire: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.uri.as_str()))
        .collect();
    assert_eq!(
        wire,
        [
            ("GET", "/v1/vpcs?name=prod"),
            ("PUT", "/v1/vpcs/vpc-1a2b3c4d5e6f7a8b/dhcp-options"),
            ("DELETE", "/v1/vpcs/vpc-1a2b3c4d5e6f7a8b/dhcp-options"),
        ]
    );
    assert_eq!(
        seen[1].body,
        json!({"domain_name_servers": ["10.0.0.2"], "domain_name": "corp.example", "ntp_servers": []})
    );
    // Nothing to set: refused before any request.
    let err = run(
        parse_ok(&["subnet", "dhcp-options", "set", "web"]).cmd,
        &opts,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("nothing to set"), "{err}");
    assert_eq!(script.seen.lock().unwrap().len(), 3);
}

// ---------------------------------------------------------------------------
// The way out of a VPC.

#[test]
fn external_verbs_parse() {
    let cli = parse_ok(&[
        "external-network",
        "create",
        "--cidr",
        "203.0.113.0/24",
        "--gateway",
        "203.0.113.254",
        "--pool",
        "203.0.113.10 - 203.0.113.99",
    ]);
    let ResourceCommand::ExternalNetwork(super::external::ExternalNetworkCommand::Create {
        gateway,
        pool,
        host_interface,
        ..
    }) = cli.cmd
    else {
        panic!()
    };
    assert_eq!(gateway, Some("203.0.113.254".parse().unwrap()));
    assert_eq!(
        pool,
        Some(AddressRange {
            start: "203.0.113.10".parse().unwrap(),
            end: "203.0.113.99".parse().unwrap()
        })
    );
    assert_eq!(host_interface, None);
    for bad in ["203.0.113.10", "203.0.113.99-203.0.113.10", "a-b"] {
        assert!(super::external::parse_pool(bad).is_err(), "{bad}");
    }
    let cli = parse_ok(&[
        "eip",
        "associate",
        "203.0.113.7",
        "--eni",
        "web",
        "--private-ip",
        "10.0.1.9",
        "--allow-reassociation",
    ]);
    let ResourceCommand::Eip(super::external::EipCommand::Associate {
        eip,
        eni,
        private_ip,
        allow_reassociation,
    }) = cli.cmd
    else {
        panic!()
    };
    assert_eq!(
        (eip.as_str(), eni.as_str(), private_ip, allow_reassociation),
        (
            "203.0.113.7",
            "web",
            Some("10.0.1.9".parse().unwrap()),
            true
        )
    );
    assert!(
        parse(&["eip", "associate", "web"]).is_err(),
        "--eni is required"
    );
    assert!(
        parse(&["natgw", "create", "--subnet", "public"]).is_err(),
        "--eip is required"
    );
    // The long names and `show` work as well.
    assert!(matches!(
        parse_ok(&["elastic-ip", "show", "web"]).cmd,
        ResourceCommand::Eip(super::external::EipCommand::Get { .. })
    ));
    assert!(matches!(
        parse_ok(&["internet-gateway", "list", "--vpc", "prod"]).cmd,
        ResourceCommand::Igw(super::external::IgwCommand::List { .. })
    ));
    assert!(matches!(
        parse_ok(&["nat-gateway", "delete", "n"]).cmd,
        ResourceCommand::Natgw(super::external::NatgwCommand::Delete { .. })
    ));
    // Route tables take gateway targets.
    let r = route_table::parse_route("0.0.0.0/0=igw-1a2b3c4d5e6f7a8b").unwrap();
    assert_eq!(r.target, "igw-1a2b3c4d5e6f7a8b");
}

#[test]
fn elastic_ip_and_nat_gateway_tables() {
    let eip = |id: &str, address: &str, association: Value| -> ElasticIp {
        serde_json::from_value(json!({"id": id, "name": "", "tenant": "tenant-1", "created_at": "2026-12-07T10:00:00Z",
            "external_network_id": "extnet-0000000000000001", "address": address, "association": association}))
        .unwrap()
    };
    let eips = [
        eip(
            "eipalloc-0000000000000001",
            "203.0.113.2",
            json!({"eni_id": "eni-0000000000000009", "private_ip": "10.0.1.4"}),
        ),
        eip(
            "eipalloc-0000000000000002",
            "203.0.113.3",
            json!({"nat_gateway_id": "nat-0000000000000003", "private_ip": "10.0.1.5"}),
        ),
        eip("eipalloc-0000000000000003", "203.0.113.4", Value::Null),
    ];
    assert_eq!(
        render::render_list(&eips),
        "\
ID                          NAME   ADDRESS       ASSOCIATED_WITH        PRIVATE_IP
eipalloc-0000000000000001   -      203.0.113.2   eni-0000000000000009   10.0.1.4
eipalloc-0000000000000002   -      203.0.113.3   nat-0000000000000003   10.0.1.5
eipalloc-0000000000000003   -      203.0.113.4   -                      -
"
    );
    let nat: NatGateway = serde_json::from_value(json!({"id": "nat-0000000000000003", "name": "out", "tenant": "tenant-1",
        "created_at": "2026-12-07T10:00:00Z", "vpc_id": "vpc-0000000000000001", "subnet_id": "subnet-0000000000000001",
        "private_ip": "10.0.1.5", "elastic_ip_id": "eipalloc-0000000000000002", "state": "available", "host_id": "host-0000000000000001"}))
    .unwrap();
    assert_eq!(
        render::render_list(&[nat]),
        "\
ID                     NAME   SUBNET                    PRIVATE_IP   ELASTIC_IP                  STATE       HOST
nat-0000000000000003   out    subnet-0000000000000001   10.0.1.5     eipalloc-0000000000000002   available   host-0000000000000001
"
    );
}
