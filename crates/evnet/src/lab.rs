//! `evnet lab`: a whole cluster on one machine. A server with the embedded
//! store (or, with `--store etcd --servers K`, a 3-member etcd cluster and K
//! servers on it) and N agents run as processes of this machine; each agent
//! drives its own "host" network namespace and is given every server's URL;
//! the hosts share an underlay bridge in a namespace of the lab's own, with
//! addresses from 198.18.0.0/15. An external namespace stands for the
//! internet: a bridge with a router's address from a documentation range
//! (203.0.113.0/24), joined to every host by its `ext0` with an address of
//! its own. Nothing is added to the machine's own namespace; etcd and the
//! servers listen on loopback ports of their own.
//!
//! `DIR/lab.json` records everything the lab made (processes, namespaces,
//! files) as it makes it, so `evnet lab down` removes exactly that, also
//! after a failed `up`.
//!
//! DIR is mode 0700 and every file in it that holds a token (`lab.json`,
//! `env`, each host's `host-N.credential`) 0600. Tokens reach the server
//! and the agents through their environment, never their command lines.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use evnet_client::Client;
use evnet_model::*;
use serde::{Deserialize, Serialize};

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Start a server and N agents, each driving its own host namespace; returns when all hosts are ready.
    #[command(after_help = "Example:\n  sudo evnet lab up --hosts 3 --dir /tmp/evnet-lab && . /tmp/evnet-lab/env && evnet vpc list")]
    Up(UpArgs),
    /// Stop the lab's processes and remove every namespace, link and file it made.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Bring a lab up (if it is not) and run the demo: two tenants with the same CIDR, isolation, an ENI moved while a ping runs; on `bpf` also the way out and a VM talking to a namespace instance and a podman container.
    Demo {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        /// Tear the lab down at the end.
        #[arg(long)]
        down: bool,
        /// The data plane of a lab the demo brings up (`bpf` also shows
        /// the way out: an internet gateway and an elastic IP).
        #[arg(long, value_enum, default_value_t = crate::daemons::DataplaneArg::Bpf)]
        dataplane: crate::daemons::DataplaneArg,
    },
    /// `kill -9` one server (1-based, as `evnet cluster status` lists them by start): a failover drill.
    #[command(after_help = "Example:\n  sudo evnet lab kill-server 1 --dir /tmp/evnet-lab && evnet cluster status")]
    KillServer {
        /// Which server (1 … number of servers).
        k: usize,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start a server the lab killed (or restart a running one) on the same port and data dir.
    #[command(after_help = "Example:\n  sudo evnet lab restart-server 1 --dir /tmp/evnet-lab")]
    RestartServer {
        /// Which server (1 … number of servers).
        k: usize,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Boot a VM on a lab host (`--dataplane bpf`): a `vm` instance with the given ENIs as taps, and a small guest under QEMU that takes its addresses by DHCP.
    #[command(after_help = "Examples:\n  sudo -E evnet lab vm vm-1 --host host-1 --subnet web --dir /tmp/evnet-lab\n  evnet eni create --subnet db --name vm-2-eth0\n  sudo -E evnet lab vm vm-2 --host host-2 --eni vm-2-eth0 --dir /tmp/evnet-lab\n  sudo -E evnet exec vm-1 -- ip -br addr\n\nThe guest's console is logged to /run/evnet/vms/<instance id>/console.log;\nits QMP socket (qmp.sock) there plugs further ENIs in (docs/vm.md).")]
    Vm(crate::labvm::VmArgs),
    /// Attach an ENI to a running lab VM and plug its tap into the guest over QMP (hot plug).
    #[command(after_help = "Example:\n  sudo -E evnet lab vm-plug vm-1 --eni vm-1-eth1 --dir /tmp/evnet-lab")]
    VmPlug {
        /// The VM's name.
        name: String,
        /// The ENI (id or name).
        #[arg(long)]
        eni: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Unplug an ENI's NIC from a running lab VM over QMP, then detach the ENI.
    #[command(after_help = "Example:\n  sudo -E evnet lab vm-unplug vm-1 --eni vm-1-eth1 --dir /tmp/evnet-lab")]
    VmUnplug {
        /// The VM's name.
        name: String,
        /// The ENI (id or name).
        #[arg(long)]
        eni: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop a lab VM (by its PID) and delete its instance; its ENIs stay, detached.
    #[command(after_help = "Example:\n  sudo -E evnet lab vm-stop vm-1 --dir /tmp/evnet-lab")]
    VmStop {
        /// The VM's name.
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Restart one host's agent (kill -9 with --kill); the kernel state it built stays in place.
    RestartAgent {
        #[arg(long)]
        dir: PathBuf,
        /// The host's name (host-1 …).
        #[arg(long)]
        host: String,
        /// Kill it with SIGKILL instead of stopping it with SIGTERM.
        #[arg(long)]
        kill: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of hosts (host-1 … host-N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub hosts: u32,
    /// Where the lab keeps its state, logs and `env` file.
    #[arg(long)]
    pub dir: PathBuf,
    /// NIC capacity of each host in each direction, in Mbit/s: what the
    /// hosts register, and (with `--nic-shaping underlay`) what their
    /// underlay links carry.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=400_000))]
    pub nic_mbps: u64,
    /// `underlay`: each host's link to the underlay bridge carries at most
    /// `--nic-mbps` in each direction, so a host's receive side congests as
    /// a real ToR downlink does. `none`: the links run at memory speed and
    /// `--nic-mbps` is only what the allocator and shapers are told.
    #[arg(long, value_enum, default_value_t = NicShaping::Underlay)]
    pub nic_shaping: NicShaping,
    /// Server port on 127.0.0.1 (0: any free port); further servers take any free port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Number of servers; more than one needs `--store etcd`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub servers: u32,
    /// `embedded`: one server with a file store. `etcd`: a 3-member etcd cluster on loopback that the servers share.
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "etcd"])]
    pub store: String,
    /// The data plane every agent builds (`evnet agent --dataplane`).
    #[arg(long, value_enum, default_value_t = crate::daemons::DataplaneArg::Nft)]
    pub dataplane: crate::daemons::DataplaneArg,
    /// How long a host's agent may be silent before the servers mark the
    /// host lost (`evnet server --host-lost-after-ms`; default the
    /// server's). Tests of what follows a lost host shorten it.
    #[arg(long)]
    pub host_lost_after_ms: Option<u64>,
}

/// Whether a lab's hosts' NICs are as slow as they say ([`UpArgs::nic_shaping`]).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicShaping {
    /// Shaped on the underlay: `--nic-mbps` in each direction.
    Underlay,
    /// Not shaped (labs made before shaping existed were not).
    #[default]
    None,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LabState {
    pub lab_id: String,
    pub url: String,
    pub admin_token: String,
    pub tenant_token: String,
    #[serde(default)]
    pub nic_mbps: u64,
    /// Whether the underlay links carry at most `nic_mbps` each way.
    #[serde(default)]
    pub nic_shaping: NicShaping,
    pub server_pid: Option<u32>,
    #[serde(default)]
    pub store: String,
    /// Every server (the first is also `url` / `server_pid` for older tools).
    #[serde(default)]
    pub servers: Vec<LabServer>,
    #[serde(default)]
    pub etcd: Vec<LabEtcd>,
    pub underlay_netns: Option<String>,
    /// The namespace standing for the internet: a bridge every host is
    /// joined to ([`EXTERNAL_CIDR`]).
    #[serde(default)]
    pub external_netns: Option<String>,
    /// The external network the lab defines for it (`internet`).
    #[serde(default)]
    pub external_network_id: Option<String>,
    pub hosts: Vec<LabHost>,
    pub files: Vec<PathBuf>,
    /// `nft` or `bpf`: what the agents run (older labs: nft).
    #[serde(default)]
    pub dataplane: String,
    /// The VMs `evnet lab vm` started.
    #[serde(default)]
    pub vms: Vec<crate::labvm::LabVm>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabServer {
    pub url: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabEtcd {
    pub name: String,
    pub client_url: String,
    pub data_dir: PathBuf,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabHost {
    pub name: String,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub agent_pid: Option<u32>,
    pub host_id: Option<String>,
}

pub async fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(args) => {
            let st = up(&args).await?;
            let store = if st.etcd.is_empty() { "embedded store".to_string() } else { format!("etcd {}", st.etcd.iter().map(|e| e.client_url.as_str()).collect::<Vec<_>>().join(",")) };
            let nic = match st.nic_shaping {
                NicShaping::Underlay => format!("NICs of {} Mbit/s each way", st.nic_mbps),
                NicShaping::None => format!("NICs registered at {} Mbit/s, not shaped", st.nic_mbps),
            };
            println!("lab is up: {} hosts ({nic}), {} server(s) {} on the {store}", st.hosts.len(), st.servers.len().max(1), st.url);
            println!("use it:   . {}/env && evnet vpc list", args.dir.display());
            println!("stop it:  evnet lab down --dir {}", args.dir.display());
            Ok(())
        }
        LabCommand::Down { dir } => down(&dir),
        LabCommand::Vm(args) => {
            require_root()?;
            let vm = crate::labvm::start(&args).await?;
            println!("VM {} ({}) is up on {}: QEMU pid {}", vm.name, vm.instance_id, vm.host, vm.pid);
            println!("run in it: sudo -E evnet exec {} -- ip -br addr", vm.name);
            println!("console:   {}", vm.run_dir.join("console.log").display());
            println!("stop it:   sudo -E evnet lab vm-stop {} --dir {}", vm.name, args.dir.display());
            Ok(())
        }
        LabCommand::VmPlug { name, eni, dir } => {
            require_root()?;
            let idx = crate::labvm::plug(&dir, &name, &eni).await?;
            println!("{eni} plugged into VM {name} as its NIC {idx} (QMP netdev net{idx}); the guest asks DHCP on it");
            Ok(())
        }
        LabCommand::VmUnplug { name, eni, dir } => {
            require_root()?;
            crate::labvm::unplug(&dir, &name, &eni).await?;
            println!("{eni} unplugged from VM {name} and detached");
            Ok(())
        }
        LabCommand::VmStop { name, dir } => {
            require_root()?;
            crate::labvm::stop(&dir, &name).await?;
            println!("VM {name} stopped and its instance deleted");
            Ok(())
        }
        LabCommand::RestartAgent { dir, host, kill } => restart_agent(&dir, &host, kill).await,
        LabCommand::KillServer { k, dir } => kill_server(&dir, k),
        LabCommand::RestartServer { k, dir } => restart_server(&dir, k).await,
        LabCommand::Demo { dir, hosts, down: tear_down, dataplane } => {
            if !dir.join("lab.json").exists() {
                up(&UpArgs { hosts, dir: dir.clone(), nic_mbps: 1000, nic_shaping: NicShaping::Underlay, port: 0, servers: 1, store: "embedded".into(), dataplane, host_lost_after_ms: None }).await?;
            }
            let result = crate::lab::demo(&dir).await;
            if tear_down {
                down(&dir)?;
            } else {
                println!("\nthe lab is still up: `. {}/env` to use it, `evnet lab down --dir {}` to remove it", dir.display(), dir.display());
            }
            result
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and needs root: run it with sudo");
    }
    for tool in ["ip", "nft", "tc"] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            bail!("`{tool}` is missing: install iproute2 and nftables (apt-get install iproute2 nftables)");
        }
    }
    Ok(())
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn save(dir: &Path, st: &LabState) -> anyhow::Result<()> {
    let path = dir.join("lab.json");
    let tmp = dir.join("lab.json.tmp");
    write_private(&tmp, &serde_json::to_vec_pretty(st)?)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// Writes a file only its owner reads (0600), also when it exists already
/// with a wider mode.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Makes `dir` (and its parents) and sets it to 0700.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// The lab's record (for the VM commands).
pub fn load_state(dir: &Path) -> anyhow::Result<LabState> {
    load(dir)
}

/// Records a file or directory `lab down` removes.
pub fn add_file(dir: &Path, path: &Path) -> anyhow::Result<()> {
    let mut st = load(dir)?;
    if !st.files.iter().any(|f| f == path) {
        st.files.push(path.to_path_buf());
    }
    save(dir, &st)
}

/// Records a VM `lab down` stops.
pub fn add_vm(dir: &Path, vm: &crate::labvm::LabVm) -> anyhow::Result<()> {
    let mut st = load(dir)?;
    st.vms.retain(|v| v.name != vm.name);
    st.vms.push(vm.clone());
    save(dir, &st)
}

/// Forgets a stopped VM.
pub fn remove_vm(dir: &Path, name: &str) -> anyhow::Result<()> {
    let mut st = load(dir)?;
    st.vms.retain(|v| v.name != name);
    save(dir, &st)
}

fn load(dir: &Path) -> anyhow::Result<LabState> {
    let path = dir.join("lab.json");
    let text = std::fs::read(&path).with_context(|| format!("no lab in {} (no lab.json)", dir.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts a child in its own session (so it outlives this command), its
/// output into `log`.
fn spawn(args: &[String], env: &[(&str, &str)], log: &Path) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find the evnet binary")?;
    spawn_program(&exe, args, env, log)
}

fn spawn_program(exe: &Path, args: &[String], env: &[(&str, &str)], log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd.spawn().context("cannot start a lab process")?.id())
}

pub async fn up(args: &UpArgs) -> anyhow::Result<LabState> {
    require_root()?;
    let dir = &args.dir;
    if dir.join("lab.json").exists() {
        bail!("a lab is already up in {} (evnet lab down --dir {} first)", dir.display(), dir.display());
    }
    private_dir(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let lab_id = format!("{:04x}", rand::random::<u16>());
    let admin_token = format!("{:032x}", rand::random::<u128>());
    if args.servers > 1 && args.store != "etcd" {
        bail!("--servers {} needs --store etcd (the embedded store serves one server)", args.servers);
    }
    if args.store == "etcd" && evnet_store::etcd_process::etcd_binary().is_none() {
        bail!("--store etcd needs etcd: apt-get install etcd-server (scripts/setup.sh does)");
    }
    let port = if args.port == 0 { free_port()? } else { args.port };
    let mut st = LabState {
        lab_id: lab_id.clone(),
        url: format!("http://127.0.0.1:{port}"),
        admin_token: admin_token.clone(),
        store: args.store.clone(),
        dataplane: if args.dataplane == crate::daemons::DataplaneArg::Bpf { "bpf" } else { "nft" }.to_string(),
        ..Default::default()
    };
    save(&dir, &st)?;
    let result = build(&dir, args, &mut st).await;
    if let Err(e) = result {
        let _ = save(&dir, &st);
        eprintln!("lab up failed: {e:#}; removing what it made");
        let _ = down(&dir);
        return Err(e);
    }
    Ok(st)
}

/// The lab's external network (a documentation range, RFC 5737): the
/// addresses exist only in the lab's namespaces.
pub const EXTERNAL_CIDR: &str = "203.0.113.0/24";
/// The external network's router, in the external namespace.
pub const EXTERNAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The device each lab host reaches the external network by.
pub const EXTERNAL_DEVICE: &str = "ext0";

/// Host `i`'s own address on the external network (`.191` on; outside
/// [`EXTERNAL_POOL`]).
pub fn external_host_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 190 + i as u8)
}

/// The elastic IP range the lab's external network hands out: between the
/// gateway and the hosts' own addresses.
pub const EXTERNAL_POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(203, 0, 113, 189));

/// The external namespace `ext`: a bridge with the router's address, and
/// each host joined to it by [`EXTERNAL_DEVICE`] with an address of its own.
fn build_external(ext: &str, hosts: &[LabHost]) -> anyhow::Result<()> {
    sh(&["ip", "-n", ext, "link", "set", "lo", "up"])?;
    sh(&["ip", "-n", ext, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", ext, "addr", "add", &format!("{EXTERNAL_GATEWAY}/24"), "dev", "br0"])?;
    sh(&["ip", "-n", ext, "link", "set", "br0", "up"])?;
    for (n, h) in hosts.iter().enumerate() {
        let i = n as u32 + 1;
        let port = format!("ex{i}");
        sh(&["ip", "-n", ext, "link", "add", &port, "type", "veth", "peer", "name", EXTERNAL_DEVICE, "netns", &h.netns])?;
        sh(&["ip", "-n", ext, "link", "set", &port, "master", "br0", "up"])?;
        sh(&["ip", "-n", &h.netns, "addr", "add", &format!("{}/24", external_host_ip(i)), "dev", EXTERNAL_DEVICE])?;
        sh(&["ip", "-n", &h.netns, "link", "set", EXTERNAL_DEVICE, "up"])?;
    }
    Ok(())
}

async fn build(dir: &Path, args: &UpArgs, st: &mut LabState) -> anyhow::Result<()> {
    let ul = format!("evl-{}-ul", st.lab_id);
    sh(&["ip", "netns", "add", &ul])?;
    st.underlay_netns = Some(ul.clone());
    save(dir, st)?;
    sh(&["ip", "-n", &ul, "link", "set", "lo", "up"])?;
    sh(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
    for i in 1..=args.hosts {
        let ns = format!("evl-{}-h{i}", st.lab_id);
        let ip = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8);
        sh(&["ip", "netns", "add", &ns])?;
        st.hosts.push(LabHost { name: format!("host-{i}"), netns: ns.clone(), underlay_ip: ip, agent_pid: None, host_id: None });
        save(dir, st)?;
        let port = format!("ul{i}");
        sh(&["ip", "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &ns])?;
        sh(&["ip", "-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/15"), "dev", "ul0"])?;
        sh(&["ip", "-n", &ns, "link", "set", "ul0", "up"])?;
        if args.nic_shaping == NicShaping::Underlay {
            shape_nic(&ul, i, args.nic_mbps)?;
        }
    }
    let ext = format!("evl-{}-ext", st.lab_id);
    sh(&["ip", "netns", "add", &ext])?;
    st.external_netns = Some(ext.clone());
    save(dir, st)?;
    build_external(&ext, &st.hosts)?;
    st.nic_mbps = args.nic_mbps;
    st.nic_shaping = args.nic_shaping;
    save(dir, st)?;
    if args.store == "etcd" {
        start_etcd(dir, st)?;
    }
    // The servers.
    let first_port: u16 = st.url.rsplit(':').next().and_then(|p| p.parse().ok()).context("the lab's URL")?;
    let mut urls = Vec::new();
    for k in 1..=args.servers as usize {
        let port = if k == 1 { first_port } else { free_port()? };
        let listen = format!("127.0.0.1:{port}");
        let url = format!("http://{listen}");
        let data = if k == 1 { dir.join("server") } else { dir.join(format!("server-{k}")) };
        std::fs::create_dir_all(&data)?;
        st.files.push(data.clone());
        st.files.push(server_log(dir, k));
        let mut argv: Vec<String> = vec!["server".into(), "--listen".into(), listen, "--data-dir".into(), data.display().to_string()];
        if !st.etcd.is_empty() {
            let endpoints: Vec<&str> = st.etcd.iter().map(|e| e.client_url.as_str()).collect();
            argv.extend(["--store".into(), "etcd".into(), "--etcd-endpoints".into(), endpoints.join(","), "--advertise-url".into(), url.clone()]);
        }
        if let Some(ms) = args.host_lost_after_ms {
            argv.extend(["--host-lost-after-ms".into(), ms.to_string()]);
        }
        st.servers.push(LabServer { url: url.clone(), data_dir: data, args: argv, pid: None });
        let pid = spawn_server(dir, st, k)?;
        st.servers[k - 1].pid = Some(pid);
        if k == 1 {
            st.server_pid = Some(pid);
        }
        urls.push(url);
        save(dir, st)?;
    }
    st.url = urls.join(",");
    save(dir, st)?;
    for s in &st.servers {
        let c = Client::new(&s.url, st.admin_token.clone())?;
        wait_until(Duration::from_secs(20), &format!("the server at {} to answer", s.url), || async { c.health().await.is_ok() }).await?;
    }
    let admin = Client::new(&st.url, st.admin_token.clone())?;
    wait_until(Duration::from_secs(20), "the server to answer", || async { admin.health().await.is_ok() }).await?;
    for i in 0..st.hosts.len() {
        st.files.push(credential_file(dir, &st.hosts[i]));
        let pid = spawn_agent(dir, st, &st.hosts[i]).await?;
        st.hosts[i].agent_pid = Some(pid);
        st.files.push(agent_log(dir, &st.hosts[i]));
        st.files.push(cni_socket(dir, &st.hosts[i]));
    }
    save(dir, st)?;
    let want = st.hosts.len();
    wait_until(Duration::from_secs(30), "every agent to register", || async {
        admin.list_hosts(&Default::default()).await.map(|hs| hs.iter().filter(|h| h.status == HostStatus::Ready).count() == want).unwrap_or(false)
    })
    .await?;
    // Registered hosts whose agents have not yet written their credential
    // would register nothing on a restart: wait for the files too.
    let creds: Vec<PathBuf> = st.hosts.iter().map(|h| credential_file(dir, h)).collect();
    wait_until(Duration::from_secs(10), "every agent to keep its credential", || async { creds.iter().all(|c| c.exists()) }).await?;
    // And to serve `evnet-cni` (after loading its data plane).
    let sockets: Vec<PathBuf> = st.hosts.iter().map(|h| cni_socket(dir, h)).collect();
    wait_until(Duration::from_secs(30), "every agent to serve its CNI socket", || async { sockets.iter().all(|s| s.exists()) }).await?;
    let hosts = admin.list_hosts(&Default::default()).await?;
    for h in st.hosts.iter_mut() {
        h.host_id = hosts.iter().find(|x| x.name == h.name).map(|x| x.id.clone());
    }
    // The external namespace as an external network, which elastic IPs,
    // internet and NAT gateways use.
    let internet = CreateExternalNetwork {
        cidr: EXTERNAL_CIDR.into(),
        gateway_ip: Some(EXTERNAL_GATEWAY),
        allocation_pool: Some(AddressRange { start: EXTERNAL_POOL.0, end: EXTERNAL_POOL.1 }),
        host_interface: Some(EXTERNAL_DEVICE.into()),
        name: Some("internet".into()),
        tags: Default::default(),
        client_token: None,
    };
    st.external_network_id = Some(admin.create_external_network(&internet).await?.id);
    let tenant = admin.create_tenant(&CreateTenant { name: format!("lab-{}", st.lab_id), tags: Default::default() }).await?;
    st.tenant_token = tenant.token.clone();
    let env = dir.join("env");
    write_private(
        &env,
        format!("export EVNET_URL={}\nexport EVNET_TOKEN={}\nexport EVNET_ADMIN_TOKEN={}\n", st.url, st.tenant_token, st.admin_token).as_bytes(),
    )?;
    st.files.push(env);
    save(dir, st)?;
    Ok(())
}

/// Makes host `i`'s link to the underlay bridge a NIC of `mbps` in each
/// direction, in the underlay namespace `ul`, so nothing a host's agent
/// does to its own `ul0` (the fast path's send tree lives there) can lift
/// the limit:
/// - what the host receives leaves the bridge through port `ul<i>`: a TBF
///   at its root;
/// - what the host sends enters the bridge through `ul<i>`: its ingress
///   redirects everything to IFB `ul<i>-tx`, where a TBF queues it before
///   the bridge forwards it.
///
/// The bucket holds 2 ms at the rate and never less than 128 KiB (GSO
/// packets of up to 64 KiB pass whole); the queue holds 20 ms.
fn shape_nic(ul: &str, i: u32, mbps: u64) -> anyhow::Result<()> {
    let port = format!("ul{i}");
    let ifb = format!("ul{i}-tx");
    let rate = format!("{mbps}mbit");
    let burst = (mbps * 1_000_000 / 8 / 500).max(128 * 1024).to_string();
    let tbf = |dev: &str| sh(&["tc", "-n", ul, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst, "latency", "20ms"]);
    tbf(&port)?;
    sh(&["ip", "-n", ul, "link", "add", &ifb, "type", "ifb"])?;
    sh(&["ip", "-n", ul, "link", "set", &ifb, "up"])?;
    tbf(&ifb)?;
    sh(&["tc", "-n", ul, "qdisc", "add", "dev", &port, "handle", "ffff:", "ingress"])?;
    sh(&[
        "tc", "-n", ul, "filter", "add", "dev", &port, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred",
        "egress", "redirect", "dev", &ifb,
    ])
}

fn server_log(dir: &Path, k: usize) -> PathBuf {
    if k == 1 { dir.join("server.log") } else { dir.join(format!("server-{k}.log")) }
}

fn spawn_server(dir: &Path, st: &LabState, k: usize) -> anyhow::Result<u32> {
    spawn(&st.servers[k - 1].args, &[("EVNET_ADMIN_TOKEN", &st.admin_token)], &server_log(dir, k))
}

/// Three etcd members on loopback ports of their own, data under `dir`.
fn start_etcd(dir: &Path, st: &mut LabState) -> anyhow::Result<()> {
    use evnet_store::etcd_process::{member_args, MemberSpec};
    let bin = evnet_store::etcd_process::etcd_binary().context("etcd is not installed")?;
    let mut specs = Vec::new();
    for i in 0..3 {
        specs.push(MemberSpec {
            name: format!("evl-{}-e{i}", st.lab_id),
            client_port: free_port()?,
            peer_port: free_port()?,
            data_dir: dir.join(format!("etcd-{i}")),
            log: dir.join(format!("etcd-{i}.log")),
        });
    }
    let token = format!("evl-{}", st.lab_id);
    for m in &specs {
        st.files.push(m.data_dir.clone());
        st.files.push(m.log.clone());
        let pid = spawn_program(&bin, &member_args(m, &specs, &token, false), &[], &m.log)?;
        st.etcd.push(LabEtcd { name: m.name.clone(), client_url: m.client_url(), data_dir: m.data_dir.clone(), pid: Some(pid) });
        save(dir, st)?;
    }
    Ok(())
}

/// Whether `pid` is still the etcd member with data dir `data_dir`.
fn is_our_etcd(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    text.contains("etcd") && text.contains(&data_dir.display().to_string())
}

fn kill_server(dir: &Path, k: usize) -> anyhow::Result<()> {
    require_root()?;
    let dir = std::fs::canonicalize(dir)?;
    let mut st = load(&dir)?;
    if k == 0 || k > st.servers.len() {
        bail!("the lab has servers 1 to {}; there is no server {k}", st.servers.len());
    }
    let s = st.servers[k - 1].clone();
    let Some(pid) = s.pid else { bail!("server {k} is not running (evnet lab restart-server {k} starts it)") };
    if is_ours(pid, &s.data_dir.display().to_string()) {
        // SAFETY: a PID verified to be this lab's server.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let start = Instant::now();
        while is_alive(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    st.servers[k - 1].pid = None;
    if k == 1 {
        st.server_pid = None;
    }
    save(&dir, &st)?;
    println!("server {k} ({}) killed", s.url);
    Ok(())
}

async fn restart_server(dir: &Path, k: usize) -> anyhow::Result<()> {
    require_root()?;
    let dir = std::fs::canonicalize(dir)?;
    let mut st = load(&dir)?;
    if k == 0 || k > st.servers.len() {
        bail!("the lab has servers 1 to {}; there is no server {k}", st.servers.len());
    }
    let s = st.servers[k - 1].clone();
    if let Some(pid) = s.pid {
        stop(pid, &s.data_dir.display().to_string())?;
    }
    let pid = spawn_server(&dir, &st, k)?;
    st.servers[k - 1].pid = Some(pid);
    if k == 1 {
        st.server_pid = Some(pid);
    }
    save(&dir, &st)?;
    let c = Client::new(&s.url, st.admin_token.clone())?;
    wait_until(Duration::from_secs(20), &format!("server {k} to answer"), || async { c.health().await.is_ok() }).await?;
    println!("server {k} ({}) restarted (pid {pid})", s.url);
    Ok(())
}

fn agent_log(dir: &Path, h: &LabHost) -> PathBuf {
    dir.join(format!("agent-{}.log", h.name))
}

/// Where host `h`'s agent keeps its credential.
pub fn credential_file(dir: &Path, h: &LabHost) -> PathBuf {
    dir.join(format!("{}.credential", h.name))
}

/// Starts `h`'s agent. While the host has no credential yet, the agent gets
/// a fresh bootstrap token in its environment; after that it uses the
/// credential file.
/// Where a lab host's agent serves `evnet-cni` (a network configuration
/// for that host names it as `agent_socket`).
pub fn cni_socket(dir: &Path, h: &LabHost) -> PathBuf {
    dir.join(format!("{}.cni.sock", h.name))
}

async fn spawn_agent(dir: &Path, st: &LabState, h: &LabHost) -> anyhow::Result<u32> {
    let log = agent_log(dir, h);
    let cred = credential_file(dir, h);
    let bootstrap = if cred.exists() {
        String::new()
    } else {
        let admin = Client::new(&st.url, st.admin_token.clone())?;
        admin.create_bootstrap_token(&CreateBootstrapToken { ttl_seconds: Some(600) }).await?.token
    };
    // Append, so a restarted agent's log follows its predecessor's.
    let previous = std::fs::read(&log).unwrap_or_default();
    let pid = spawn(
        &[
            "agent".into(),
            "--server".into(),
            st.url.clone(),
            "--host-netns".into(),
            h.netns.clone(),
            "--name".into(),
            h.name.clone(),
            "--underlay-ip".into(),
            h.underlay_ip.to_string(),
            "--nic-mbps".into(),
            st.nic_mbps.to_string(),
            "--resync-ms".into(),
            "1000".into(),
            "--credential-file".into(),
            cred.display().to_string(),
            "--cni-socket".into(),
            cni_socket(dir, h).display().to_string(),
            "--dataplane".into(),
            if st.dataplane.is_empty() { "nft".into() } else { st.dataplane.clone() },
        ],
        &[("EVNET_BOOTSTRAP_TOKEN", &bootstrap)],
        &log,
    )?;
    if !previous.is_empty() {
        let _ = std::fs::write(dir.join(format!("agent-{}.previous.log", h.name)), previous);
    }
    Ok(pid)
}

async fn restart_agent(dir: &Path, host: &str, kill: bool) -> anyhow::Result<()> {
    require_root()?;
    let dir = std::fs::canonicalize(dir)?;
    let mut st = load(&dir)?;
    let i = st.hosts.iter().position(|h| h.name == host).with_context(|| format!("the lab has no host named {host}"))?;
    let h = st.hosts[i].clone();
    if let Some(pid) = h.agent_pid {
        if kill {
            if is_ours(pid, &h.netns) {
                // SAFETY: a PID verified to be this lab's agent.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let start = Instant::now();
                while is_alive(pid) && start.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        } else {
            stop(pid, &h.netns)?;
        }
    }
    let pid = spawn_agent(&dir, &st, &h).await?;
    st.hosts[i].agent_pid = Some(pid);
    let prev = dir.join(format!("agent-{}.previous.log", h.name));
    if prev.exists() && !st.files.contains(&prev) {
        st.files.push(prev);
    }
    save(&dir, &st)?;
    println!("agent of {host} restarted (pid {pid})");
    Ok(())
}

async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    while !check().await {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
    Ok(())
}

/// Whether `pid` is still one of our processes: its command line must name
/// this binary's file and `marker`, so a reused PID is never signalled.
fn is_ours(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let exe_name = std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "evnet".into());
    text.contains(&exe_name) && text.contains(marker)
}

fn stop(pid: u32, marker: &str) -> anyhow::Result<()> {
    if !is_ours(pid, marker) {
        return Ok(());
    }
    // SAFETY: kill with a PID verified above to be our child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    while is_alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_alive(pid) && is_ours(pid, marker) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let start = Instant::now();
        while is_alive(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if is_alive(pid) {
        bail!("process {pid} would not stop");
    }
    Ok(())
}

fn is_alive(pid: u32) -> bool {
    // A zombie (our child reaped by nobody) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Removes everything the lab in `dir` made; keeps going past failures and
/// reports them all at the end.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    require_root()?;
    let st = load(dir)?;
    // VMs first: their taps are in the hosts' namespaces.
    let mut errors = crate::labvm::stop_all(&st.vms);
    for h in &st.hosts {
        if let Some(pid) = h.agent_pid {
            if let Err(e) = stop(pid, &h.netns) {
                errors.push(format!("agent {}: {e}", h.name));
            }
        }
    }
    if st.servers.is_empty() {
        if let Some(pid) = st.server_pid {
            let marker = dir.join("server").display().to_string();
            if let Err(e) = stop(pid, &marker) {
                errors.push(format!("server: {e}"));
            }
        }
    }
    for (k, s) in st.servers.iter().enumerate() {
        if let Some(pid) = s.pid
            && let Err(e) = stop(pid, &s.data_dir.display().to_string())
        {
            errors.push(format!("server {}: {e}", k + 1));
        }
    }
    for m in &st.etcd {
        if let Some(pid) = m.pid
            && is_our_etcd(pid, &m.data_dir)
        {
            // SAFETY: a PID verified to be this lab's etcd member.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let start = Instant::now();
            while is_alive(pid) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_alive(pid) && is_our_etcd(pid, &m.data_dir) {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_alive(pid) {
                errors.push(format!("etcd member {} (pid {pid}) would not stop", m.name));
            }
        }
    }
    // Namespaces the agents made for these hosts, then the hosts' and the underlay's.
    let tags: Vec<String> = st.hosts.iter().filter_map(|h| h.host_id.as_deref()).map(evnet_plan::naming::host_tag).collect();
    // (Any namespace evnet names after a host: VPCs', instances' and NAT gateways'.)
    let mut doomed: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| st.hosts.iter().filter_map(|h| h.host_id.as_deref()).any(|id| evnet_plan::naming::owned_netns(n, id)))
        .collect();
    doomed.extend(st.hosts.iter().map(|h| h.netns.clone()));
    doomed.extend(st.underlay_netns.clone());
    doomed.extend(st.external_netns.clone());
    let present = netns_list();
    for ns in doomed.iter().filter(|n| present.contains(n)) {
        if let Err(e) = sh(&["ip", "netns", "delete", ns]) {
            errors.push(e.to_string());
        }
    }
    // The fast path's pins of these hosts (agents on `--dataplane bpf`).
    for t in &tags {
        let pins = Path::new("/sys/fs/bpf/evnet").join(t);
        if pins.exists() && let Err(e) = std::fs::remove_dir_all(&pins) {
            errors.push(format!("{}: {e}", pins.display()));
        }
    }
    for f in &st.files {
        let r = if f.is_dir() { std::fs::remove_dir_all(f) } else { std::fs::remove_file(f) };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("{}: {e}", f.display()));
            }
        }
    }
    if errors.is_empty() {
        std::fs::remove_file(dir.join("lab.json"))?;
        let _ = std::fs::remove_dir(dir);
        println!("lab in {} is down", dir.display());
        Ok(())
    } else {
        bail!("lab down left things behind:\n  {}", errors.join("\n  "))
    }
}

// ---------------------------------------------------------------------------
// The demo.

/// Runs `argv` inside namespace `ns` and returns (success, stdout).
pub fn in_netns(ns: &str, argv: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(argv).output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn in_netns_thread<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns changes only this thread's namespace; the fd is valid.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "entering {path}");
        f()
    })
}

pub fn ping_once(ns: &str, ip: Ipv4Addr) -> bool {
    in_netns(ns, &["ping", "-c", "1", "-W", "1", &ip.to_string()]).map(|(ok, _)| ok).unwrap_or(false)
}

/// Waits (bounded) until every host has applied its current desired state.
pub async fn wait_synced(admin: &Client, limit: Duration) -> anyhow::Result<()> {
    let hosts = admin.list_hosts(&Default::default()).await?;
    for h in hosts {
        let target = admin.desired_state(&h.id, None, None).await?.generation;
        wait_until(limit, &format!("host {} to apply generation {target}", h.name), || async {
            admin.get_host(&h.id).await.map(|x| x.applied_generation >= target).unwrap_or(false)
        })
        .await?;
    }
    Ok(())
}

async fn demo(dir: &Path) -> anyhow::Result<()> {
    let st = load(dir)?;
    let admin = Client::new(&st.url, st.admin_token.clone())?;
    let hosts: Vec<String> = st.hosts.iter().filter_map(|h| h.host_id.clone()).collect();
    if hosts.len() < 2 {
        bail!("the demo needs at least 2 hosts");
    }
    let host = |i: usize| hosts[i % hosts.len()].clone();
    println!("== two tenants, red and blue, each with VPC 10.0.0.0/16 and subnet 10.0.1.0/24");
    let mut tenants = vec![];
    let mut tokens = vec![];
    for name in ["red", "blue"] {
        let t = admin.create_tenant(&CreateTenant { name: format!("{name}-{}", rand::random::<u16>()), tags: Default::default() }).await?;
        let c = Client::new(&st.url, t.token.clone())?;
        let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), name: Some(format!("{name}-vpc")), ..Default::default() }).await?;
        let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await?;
        tenants.push((name, c, subnet));
        tokens.push(t.token.clone());
    }
    // red: instances on host 1 and 2; blue: on host 1 and the last host.
    let mut inst = vec![];
    for (ti, (name, c, subnet)) in tenants.iter().enumerate() {
        for (k, h) in [0usize, if ti == 0 { 1 } else { hosts.len() - 1 }].into_iter().enumerate() {
            let eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
            let i = c
                .create_instance(&CreateInstance { name: Some(format!("{name}-{}", k + 1)), host_id: Some(host(h)), eni_ids: vec![eni.id.clone()], ..Default::default() })
                .await?;
            println!("   {:<7} on host-{}  eth0 {}  mac {}", i.name, h + 1, eni.private_ip, eni.mac);
            inst.push((ti, i, eni));
        }
    }
    // An address only blue has.
    let blue_only = tenants[1].1.create_eni(&CreateEni { subnet_id: tenants[1].2.id.clone(), private_ip: Some(Ipv4Addr::new(10, 0, 1, 77)), ..Default::default() }).await?;
    let b3 = tenants[1].1.create_instance(&CreateInstance { name: Some("blue-3".into()), host_id: Some(host(1)), eni_ids: vec![blue_only.id.clone()], ..Default::default() }).await?;
    println!("   blue-3  on host-2  eth0 {} (an address red does not have)", blue_only.private_ip);
    let t0 = Instant::now();
    wait_synced(&admin, Duration::from_secs(20)).await?;
    println!("   all hosts applied their desired state in {} ms", t0.elapsed().as_millis());
    wait_until(Duration::from_secs(10), "instances to run", || async {
        let mut all = true;
        for (ti, i, _) in &inst {
            all &= tenants[*ti].1.get_instance(&i.id).await.map(|x| x.state == InstanceState::Running).unwrap_or(false);
        }
        all
    })
    .await?;
    let (red1, red2, blue1, blue2) = (&inst[0], &inst[1], &inst[2], &inst[3]);
    let mut failures = 0;
    let mut check = |what: &str, got: bool, want: bool| {
        let verdict = if got == want { "ok" } else { failures += 1; "FAILED" };
        println!("   {what:<62} {} [{verdict}]", if got { "reachable" } else { "unreachable" });
    };
    println!("== reachability");
    check(&format!("red-1 → red-2 ({}, across hosts)", red2.2.private_ip), ping_once(&red1.1.netns, red2.2.private_ip), true);
    check(&format!("blue-1 → blue-2 ({}, across hosts)", blue2.2.private_ip), ping_once(&blue1.1.netns, blue2.2.private_ip), true);
    check(&format!("red-1 → gateway {}", tenants[0].2.gateway_ip), ping_once(&red1.1.netns, tenants[0].2.gateway_ip), true);
    check(&format!("red-1 → {} (blue-3's address: not in red's VPC)", blue_only.private_ip), ping_once(&red1.1.netns, blue_only.private_ip), false);
    check(&format!("blue-1 → blue-3 ({})", blue_only.private_ip), ping_once(&blue1.1.netns, blue_only.private_ip), true);
    let _ = b3;

    // What evnet trace says about the same packets.
    println!("== evnet trace red-1 {} --protocol icmp (blue-3's address, seen from red)", blue_only.private_ip);
    let red_client = &tenants[0].1;
    let explain = |to: std::net::Ipv4Addr| evnet_model::trace::TraceRequest {
        source_eni_id: red1.2.id.clone(),
        destination_ip: to,
        protocol: evnet_model::Protocol::Icmp,
        port: None,
        source_ip: None,
    };
    let t = red_client.trace(&explain(blue_only.private_ip)).await?;
    for step in &t.steps {
        println!("   {:<14} {:<5} {}", step.stage.label(), if step.pass { "pass" } else { "DROP" }, step.detail);
    }
    let t2 = red_client.trace(&explain(red2.2.private_ip)).await?;
    let agrees = t.verdict == evnet_model::trace::TraceVerdict::Dropped && t2.verdict == evnet_model::trace::TraceVerdict::Delivered;
    println!("   trace agrees with the pings (red-2 delivered, blue-3's address dropped) [{}]", if agrees { "ok" } else { "FAILED" });
    if !agrees {
        failures += 1;
    }

    println!("== move red-2's ENI to a new instance on another host while red-1 pings it");
    let (red_name, red, _) = &tenants[0];
    let target_host = host(2.min(hosts.len() - 1));
    let red3 = red.create_instance(&CreateInstance { name: Some(format!("{red_name}-3")), host_id: Some(target_host.clone()), ..Default::default() }).await?;
    wait_synced(&admin, Duration::from_secs(20)).await?;
    let ip = red2.2.private_ip.to_string();
    // Only red-3 listens on this port, so a connection proves the ENI is at its new place.
    let port = 7300 + rand::random::<u16>() % 1000;
    let listener = in_netns_thread(&red3.netns, move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).ok()?;
        l.set_nonblocking(true).ok()?;
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            if l.accept().is_ok() {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    let pinger = Command::new("ip")
        .args(["netns", "exec", &red1.1.netns, "ping", "-i", "0.02", "-W", "1", "-c", "150", &ip])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t_call = Instant::now();
    red.detach_eni(&red2.2.id).await?;
    let moved = red.attach_eni(&red2.2.id, &AttachEni { instance_id: red3.id.clone(), device_index: None }).await?;
    let t_done = Instant::now();
    let target = std::net::SocketAddr::from((red2.2.private_ip, port));
    let reached = in_netns_thread(&red1.1.netns, move || {
        while t_done.elapsed() < Duration::from_secs(5) {
            if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok() {
                return Some(t_done.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    })
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))?;
    let _ = listener.join();
    let out = pinger.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let answered = text.lines().filter(|l| l.contains("bytes from")).count();
    println!("   ENI {} keeps mac {} and ip {}; now on instance red-3", moved.id, moved.mac, moved.private_ip);
    println!("   detach + attach API calls took {} ms", (t_done - t_call).as_millis());
    match reached {
        Some(d) => println!("   reachable at its new place {} ms after the attach call returned", d.as_millis()),
        None => {
            failures += 1;
            println!("   never reachable at its new place [FAILED]");
        }
    }
    println!("   pings answered during the move: {answered} of 150 (one every 20 ms)");

    // The way out (the tc-BPF data plane): red's VPC gets an internet
    // gateway and a default route to it, red-1 an elastic IP.
    if let (Some(ext), true) = (st.external_netns.as_deref(), st.dataplane == "bpf") {
        println!("== the way out: an internet gateway for red's VPC, an elastic IP for red-1");
        let red_vpc = red.get_subnet(&tenants[0].2.id).await?.vpc_id;
        let vpc = red.get_vpc(&red_vpc).await?;
        let igw = red.create_internet_gateway(&CreateInternetGateway { vpc_id: vpc.id.clone(), ..Default::default() }).await?;
        let main = red.get_route_table(&vpc.main_route_table_id).await?;
        let mut routes = main.routes.clone();
        routes.push(Route::new("0.0.0.0/0".parse().expect("a block"), igw.id.clone()));
        red.patch_route_table(&main.id, &PatchRouteTable { routes: Some(routes), ..Default::default() }).await?;
        let eip = red.allocate_elastic_ip(&AllocateElasticIp::default()).await?;
        red.associate_elastic_ip(&eip.id, &AssociateElasticIp { eni_id: red1.2.id.clone(), ..Default::default() }).await?;
        // Pings from outside: the default group admits only its members.
        let g = red.get_security_group(&vpc.default_security_group_id).await?;
        let mut ingress = g.ingress.clone();
        ingress.push(SgRule { protocol: Protocol::Icmp, from_port: None, to_port: None, cidr: Some("0.0.0.0/0".parse().expect("a block")), source_group_id: None });
        red.patch_security_group(&g.id, &PatchSecurityGroup { ingress: Some(ingress), ..Default::default() }).await?;
        println!("   {} on red-1's {} through {}", eip.address, red1.2.private_ip, igw.id);
        let t0 = Instant::now();
        let out = wait_until(Duration::from_secs(15), "red-1 to reach the external router", || async { ping_once(&red1.1.netns, EXTERNAL_GATEWAY) }).await.is_ok();
        let took = t0.elapsed();
        let checks = [
            (format!("red-1 → {EXTERNAL_GATEWAY} (the external router), from {}", eip.address), out, true),
            (format!("the external namespace → {} (red-1's elastic IP)", eip.address), ping_once(ext, eip.address), true),
            (format!("red-3 (red-2's ENI, no elastic IP) → {EXTERNAL_GATEWAY}"), ping_once(&red3.netns, EXTERNAL_GATEWAY), false),
        ];
        for (what, got, want) in checks {
            let verdict = if got == want { "ok" } else { failures += 1; "FAILED" };
            println!("   {what:<62} {} [{verdict}]", if got { "reachable" } else { "unreachable" });
        }
        println!("   red-1 reached the outside {} ms after the calls returned", took.as_millis());
    }
    if st.dataplane == "bpf" {
        println!("== a VM, a container and a namespace instance in red's VPC");
        let checks = demo_vm(dir, &st, red, &tenants[0].2, &tokens[0], red2.2.private_ip, blue_only.private_ip).await;
        match checks {
            Ok(checks) => {
                for (what, got, want) in checks {
                    let verdict = if got == want { "ok" } else { failures += 1; "FAILED" };
                    println!("   {what:<62} {} [{verdict}]", if got { "reachable" } else { "unreachable" });
                }
            }
            Err(e) => {
                failures += 1;
                println!("   {e:#} [FAILED]");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} demo check(s) failed; see the agent logs in {}", dir.display());
    }
    println!("== demo passed");
    Ok(())
}

/// The demo's VM: a `vm` instance on host-1 whose guest (QEMU, DHCP from
/// the agent) reaches red-3 (a namespace instance) and a podman container
/// on host-2 that evnet-cni gave an ENI of red's subnet, and is reached by
/// it; not blue's address. The container is removed at the end; the VM
/// stays (`evnet lab down` stops it).
async fn demo_vm(
    dir: &Path,
    st: &LabState,
    red: &Client,
    subnet: &Subnet,
    red_token: &str,
    red3_ip: Ipv4Addr,
    blue_only: Ipv4Addr,
) -> anyhow::Result<Vec<(String, bool, bool)>> {
    let eni = red.create_eni(&CreateEni { subnet_id: subnet.id.clone(), name: Some("red-vm-eth0".into()), ..Default::default() }).await?;
    let t0 = Instant::now();
    let vm = crate::labvm::start_with(dir, red, "red-vm", &st.hosts[0], vec![eni.id.clone()], 256).await?;
    let mut ch = evnet_vm::ExecChannel::connect(&vm.run_dir.join("exec.sock"), Duration::from_secs(5))?;
    ch.run_until("ip -4 addr show dev eth0", Duration::from_secs(60), |_, out| out.contains(&format!("inet {}/", eni.private_ip)))?;
    println!("   red-vm  on host-1  eth0 {} by DHCP, {} ms after the instance was created (QEMU pid {})", eni.private_ip, t0.elapsed().as_millis(), vm.pid);
    // A container on host-2, through podman and evnet-cni.
    let exe = std::env::current_exe()?;
    let cni = exe.parent().context("the evnet binary's directory")?.join("evnet-cni");
    let rig = dir.join("podman");
    let token_file = dir.join("red.token");
    write_private(&token_file, red_token.as_bytes())?;
    let pm = crate::podman_rig::Podman::new(&rig, &cni).map_err(anyhow::Error::msg)?;
    let sock = cni_socket(dir, &st.hosts[1]);
    pm.network("red-h2", &sock, &token_file, &subnet.id, serde_json::json!({})).map_err(anyhow::Error::msg)?;
    let c = pm.start("red-h2").map_err(anyhow::Error::msg)?;
    let cip = pm.ip(&c).map_err(anyhow::Error::msg)?;
    println!("   a podman container on host-2 got {cip} from evnet-cni");
    let mut vm_pings = |ip: Ipv4Addr| -> bool {
        ch.run_until(&format!("ping -c 1 -W 1 {ip}"), Duration::from_secs(5), |rc, _| rc == 0).is_ok()
    };
    let checks = vec![
        (format!("red-vm → red-3 ({red3_ip}, a namespace instance on host-3)"), vm_pings(red3_ip), true),
        (format!("red-vm → the container ({cip}, host-2)"), vm_pings(cip), true),
        (format!("red-vm → {blue_only} (blue-3's address)"), vm_pings(blue_only), false),
        (format!("the container → red-vm ({})", eni.private_ip), pm.pings(&c, eni.private_ip), true),
    ];
    drop(pm);
    let _ = std::fs::remove_dir_all(&rig);
    let _ = std::fs::remove_file(&token_file);
    Ok(checks)
}
