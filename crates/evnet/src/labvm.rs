//! `evnet lab vm`: virtual machines on a lab's hosts. A `vm` instance is
//! created on the chosen host with the given ENIs; once its host's agent
//! has made the taps (`evt…`, in the host's namespace), QEMU boots the
//! project's small guest (`scripts/build-guest.sh`: Debian's cloud kernel,
//! a busybox userland that asks DHCP on every NIC) inside that namespace,
//! one virtio NIC per tap with the ENI's MAC. The guest's run directory is
//! `/run/evnet/vms/<instance id>/` (console log, exec and QMP sockets, pid
//! file), so `evnet exec` reaches the guest by its instance alone; the lab
//! records it and `evnet lab down` stops the VM by its PID.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use evnet_client::Client;
use evnet_model::ids::Kind;
use evnet_model::*;
use serde::{Deserialize, Serialize};

/// Where the guests' run directories are, by instance id.
pub const VM_RUN_ROOT: &str = "/run/evnet/vms";

/// How long the agent may take to make the taps of a new VM.
const TAPS_BOUND: Duration = Duration::from_secs(30);
/// How long a guest may take to boot to its exec channel (TCG included).
pub const BOOT_BOUND: Duration = Duration::from_secs(90);

/// A VM the lab started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabVm {
    pub name: String,
    pub instance_id: String,
    pub host: String,
    pub run_dir: PathBuf,
    pub pid: u32,
}

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// The VM's name (its instance's name).
    pub name: String,
    /// The lab's directory (`evnet lab up --dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The lab host to run on (host-1 …).
    #[arg(long)]
    pub host: String,
    /// An ENI to attach (id or name), in device order (repeatable).
    #[arg(long = "eni", required_unless_present = "subnet")]
    pub enis: Vec<String>,
    /// Create the VM's first ENI (`NAME-eth0`) in this subnet (id or name),
    /// before any `--eni`.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u32,
}

/// The run directory of the guest of `instance_id`.
pub fn run_dir(instance_id: &str) -> PathBuf {
    Path::new(VM_RUN_ROOT).join(instance_id)
}

/// The client a lab VM command acts with: `EVNET_TOKEN` when set (a tenant
/// of the caller's own), else the lab's tenant.
fn tenant_client(st: &crate::lab::LabState) -> anyhow::Result<Client> {
    let token = std::env::var("EVNET_TOKEN").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| st.tenant_token.clone());
    let url = std::env::var("EVNET_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| st.url.clone());
    Ok(Client::new(&url, token)?)
}

/// Creates the `vm` instance, waits for its taps, boots the guest in the
/// host's namespace and waits until it answers on its exec channel.
pub async fn start(args: &VmArgs) -> anyhow::Result<LabVm> {
    let st = crate::lab::load_state(&args.dir)?;
    if st.dataplane != "bpf" {
        bail!("VMs need the tc-BPF data plane: bring the lab up with `--dataplane bpf`");
    }
    if st.vms.iter().any(|v| v.name == args.name) {
        bail!("the lab already has a VM named {}: `evnet lab vm-stop {} --dir {}` first", args.name, args.name, args.dir.display());
    }
    let host = st
        .hosts
        .iter()
        .find(|h| h.name == args.host)
        .with_context(|| format!("no lab host {} (hosts: {})", args.host, st.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")))?
        .clone();
    let client = tenant_client(&st)?;
    let mut eni_ids = vec![];
    if let Some(s) = &args.subnet {
        let subnet_id = crate::cli::resolve_id(&client, Kind::Subnet, s).await?;
        let eni = client.create_eni(&CreateEni { subnet_id, name: Some(format!("{}-eth0", args.name)), ..Default::default() }).await?;
        eni_ids.push(eni.id);
    }
    for e in &args.enis {
        eni_ids.push(crate::cli::resolve_id(&client, Kind::Eni, e).await?);
    }
    start_with(&args.dir, &client, &args.name, &host, eni_ids, args.memory_mib).await
}

/// [`start`] for a tenant's `client`, on lab host `host`, with ENIs by id.
pub async fn start_with(
    dir: &Path,
    client: &Client,
    name: &str,
    host: &crate::lab::LabHost,
    eni_ids: Vec<String>,
    memory_mib: u32,
) -> anyhow::Result<LabVm> {
    let st = crate::lab::load_state(dir)?;
    let host_id = host.host_id.clone().context("the host has not registered")?;
    let image = evnet_vm::GuestImage::locate().context("the guest image is missing: run scripts/build-guest.sh")?;
    let inst = client
        .create_instance(&CreateInstance {
            name: Some(name.to_string()),
            host_id: Some(host_id),
            kind: InstanceKind::Vm,
            eni_ids,
            ..Default::default()
        })
        .await?;
    let result = boot(dir, &st, host, client, &inst, &image, memory_mib).await;
    if result.is_err() {
        let _ = client.delete_instance(&inst.id).await;
    }
    result
}

async fn boot(
    dir: &Path,
    st: &crate::lab::LabState,
    host: &crate::lab::LabHost,
    client: &Client,
    inst: &Instance,
    image: &evnet_vm::GuestImage,
    memory_mib: u32,
) -> anyhow::Result<LabVm> {
    let taps = wait_taps(client, &inst.id, &host.netns, inst.taps.len()).await?;
    let run = run_dir(&inst.id);
    let mut spec = evnet_vm::VmSpec::new(inst.name.clone(), image.clone(), run.clone());
    spec.memory_mib = memory_mib;
    for t in &taps {
        spec = spec.nic(format!("net{}", t.device_index), t.tap.clone(), t.mac.clone());
    }
    // Recorded before it starts, so `lab down` finds it whatever follows.
    crate::lab::add_file(dir, &run)?;
    let mut vm = evnet_vm::spawn(&spec, Some(&host.netns)).with_context(|| format!("booting {}", inst.name))?;
    let lab_vm = LabVm { name: inst.name.clone(), instance_id: inst.id.clone(), host: host.name.clone(), run_dir: run.clone(), pid: vm.pid() };
    let _ = st;
    crate::lab::add_vm(dir, &lab_vm)?;
    vm.connect_exec(BOOT_BOUND).with_context(|| format!("{} did not boot (console: {})", inst.name, spec.console_log().display()))?;
    vm.detach();
    Ok(lab_vm)
}

/// Waits until the instance lists `n` taps and each exists in `netns`.
async fn wait_taps(client: &Client, id: &str, netns: &str, n: usize) -> anyhow::Result<Vec<VmTap>> {
    let deadline = Instant::now() + TAPS_BOUND;
    loop {
        let inst = client.get_instance(id).await?;
        if inst.taps.len() == n && inst.state == InstanceState::Running && inst.taps.iter().all(|t| tap_exists(netns, &t.tap)) {
            return Ok(inst.taps);
        }
        if Instant::now() >= deadline {
            bail!("the taps of {id} did not appear in {netns} within {} s (state {:?})", TAPS_BOUND.as_secs(), inst.state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the link `tap` exists in namespace `netns`.
pub fn tap_exists(netns: &str, tap: &str) -> bool {
    crate::lab::in_netns(netns, &["ip", "link", "show", "dev", tap]).map(|(ok, _)| ok).unwrap_or(false)
}

/// Stops the lab VM `name` by its PID and deletes its instance (its ENIs
/// stay, detached).
pub async fn stop(dir: &Path, name: &str) -> anyhow::Result<()> {
    let st = crate::lab::load_state(dir)?;
    let vm = st.vms.iter().find(|v| v.name == name).with_context(|| format!("the lab has no VM named {name}"))?.clone();
    evnet_vm::stop_recorded(&vm.run_dir, Duration::from_secs(5))?;
    let client = tenant_client(&st)?;
    match client.delete_instance(&vm.instance_id).await {
        Ok(()) => {}
        Err(e) if e.status() == Some(404) => {}
        Err(e) => return Err(e.into()),
    }
    let _ = std::fs::remove_dir_all(&vm.run_dir);
    crate::lab::remove_vm(dir, name)?;
    Ok(())
}

/// Stops every VM of the lab (at `lab down`), by PID; answers what failed.
pub fn stop_all(vms: &[LabVm]) -> Vec<String> {
    let mut errors = vec![];
    for v in vms {
        if let Err(e) = evnet_vm::stop_recorded(&v.run_dir, Duration::from_secs(5)) {
            errors.push(format!("VM {} (pid {}): {e}", v.name, v.pid));
        }
    }
    errors
}

/// The lab VM `name` and the client of its tenant.
fn lab_vm(dir: &Path, name: &str) -> anyhow::Result<(crate::lab::LabState, LabVm, Client)> {
    let st = crate::lab::load_state(dir)?;
    let vm = st.vms.iter().find(|v| v.name == name).with_context(|| format!("the lab has no VM named {name}"))?.clone();
    let client = tenant_client(&st)?;
    Ok((st, vm, client))
}

/// Attaches `eni` to the running lab VM `name` and plugs its tap into the
/// guest over QMP (netdev `net<device index>`, device `net<index>-nic`):
/// the guest sees a new NIC and asks DHCP on it. Answers the device index.
pub async fn plug(dir: &Path, name: &str, eni: &str) -> anyhow::Result<u32> {
    let (st, vm, client) = lab_vm(dir, name)?;
    let host = st.hosts.iter().find(|h| h.name == vm.host).context("the VM's host is not in the lab")?;
    let eni_id = crate::cli::resolve_id(&client, Kind::Eni, eni).await?;
    let e = client.attach_eni(&eni_id, &AttachEni { instance_id: vm.instance_id.clone(), device_index: None }).await?;
    let idx = e.attachment.as_ref().map(|a| a.device_index).context("the ENI was not attached")?;
    let tap = evnet_plan::naming::eni_tap(&e.id);
    let deadline = Instant::now() + TAPS_BOUND;
    while !tap_exists(&host.netns, &tap) {
        if Instant::now() >= deadline {
            bail!("the tap {tap} did not appear in {} within {} s", host.netns, TAPS_BOUND.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut q = evnet_vm::Qmp::connect(&vm.run_dir.join("qmp.sock"))?;
    let id = format!("net{idx}");
    q.netdev_add_tap(&id, &tap)?;
    q.device_add_virtio_net(&evnet_vm::device_id(&id), &id, &e.mac)?;
    Ok(idx)
}

/// Unplugs `eni`'s NIC from the lab VM `name` over QMP (waiting for the
/// guest to let go of it), then detaches the ENI; its tap then goes.
pub async fn unplug(dir: &Path, name: &str, eni: &str) -> anyhow::Result<()> {
    let (_, vm, client) = lab_vm(dir, name)?;
    let eni_id = crate::cli::resolve_id(&client, Kind::Eni, eni).await?;
    let e = client.get_eni(&eni_id).await?;
    let idx = match &e.attachment {
        Some(a) if a.instance_id == vm.instance_id => a.device_index,
        _ => bail!("ENI {eni_id} is not attached to VM {name}"),
    };
    let id = format!("net{idx}");
    let mut q = evnet_vm::Qmp::connect(&vm.run_dir.join("qmp.sock"))?;
    q.device_del(&evnet_vm::device_id(&id), Duration::from_secs(30))?;
    q.netdev_del(&id)?;
    client.detach_eni(&eni_id).await?;
    Ok(())
}
