//! `evnet exec INSTANCE -- CMD…`: runs a command inside an instance's
//! network namespace with `ip netns exec`, or, for a VM that `evnet lab vm`
//! booted on this machine, inside the guest over its exec channel (a serial
//! port the guest runs commands from; output and exit status come back).
//!
//! The `evnet` process is replaced by `ip` (exec, not spawn), so the command
//! inherits the terminal, receives signals directly and its exit code is
//! evnet's exit code.

use std::ffi::OsString;

use evnet_client::Client;
use evnet_model::ids::Kind;
use evnet_model::{Instance, InstanceState};

use super::resolve;

pub(crate) const EXAMPLES: &str = "Examples:
  sudo -E evnet exec web-1 -- ip -br addr
  sudo -E evnet exec web-1 -- ping -c 3 10.0.1.5
  sudo -E evnet exec i-1a2b3c4d5e6f7a8b -- iperf3 -s

The instance must be running on this machine, and entering its namespace
needs root.";

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The instance, by id or name.
    pub instance: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The argv that runs `command` inside `instance`'s namespace, or why it
/// cannot run yet.
pub(crate) fn netns_argv(
    instance: &Instance,
    command: &[OsString],
) -> anyhow::Result<Vec<OsString>> {
    let who = if instance.name.is_empty() {
        instance.id.clone()
    } else {
        format!("{} ({})", instance.name, instance.id)
    };
    if instance.state != InstanceState::Running || instance.netns.is_empty() {
        anyhow::bail!(
            "instance {who} is not running yet (state {}, host {}): wait until `evnet instance get {}` shows it running",
            match instance.state {
                InstanceState::Pending => "pending",
                InstanceState::Running => "running without a namespace",
            },
            instance.host_id,
            instance.id,
        );
    }
    if instance.netns.contains('/') || instance.netns.starts_with('.') {
        anyhow::bail!(
            "instance {who} reports an unusable namespace name `{}`",
            instance.netns
        );
    }
    if command.is_empty() {
        anyhow::bail!("give the command to run after `--`");
    }
    let mut argv: Vec<OsString> = vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        instance.netns.clone().into(),
    ];
    argv.extend(command.iter().cloned());
    Ok(argv)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) async fn run(args: ExecArgs, client: &Client) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;

    let id = resolve::id(client, Kind::Instance, &args.instance).await?;
    let instance = client.get_instance(&id).await?;
    if instance.kind == evnet_model::InstanceKind::Vm {
        return vm_exec(&instance, &args.command);
    }
    let argv = netns_argv(&instance, &args.command)?;
    if !is_root() {
        anyhow::bail!(
            "entering instance {}'s namespace `{}` needs root: run `sudo -E evnet exec …` (-E keeps EVNET_URL and EVNET_TOKEN)",
            instance.id,
            instance.netns
        );
    }
    // Only returns on failure: on success this process becomes `ip`.
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::bail!("cannot run `ip`: iproute2 is not installed or not in PATH");
    }
    Err(anyhow::Error::new(err).context("cannot run `ip netns exec`"))
}

/// How long a command in a VM may run.
const VM_EXEC_BOUND: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs `command` (its words joined, each quoted for the guest's shell) in
/// the guest of a lab VM over its exec channel, prints what it printed
/// and exits with its status.
fn vm_exec(instance: &Instance, command: &[OsString]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let sock = std::path::Path::new("/run/evnet/vms").join(&instance.id).join("exec.sock");
    if !sock.exists() {
        anyhow::bail!(
            "VM {} has no exec channel on this machine ({} is missing): `evnet exec` reaches VMs that `evnet lab vm` booted here",
            instance.id,
            sock.display()
        );
    }
    if !is_root() {
        anyhow::bail!("the VM's exec channel is root's: run `sudo -E evnet exec …`");
    }
    let line = command.iter().map(|w| shell_quote(&w.to_string_lossy())).collect::<Vec<_>>().join(" ");
    let mut ch = evnet_vm::ExecChannel::connect(&sock, std::time::Duration::from_secs(5))?;
    let (status, out) = ch.run_bytes(&line, VM_EXEC_BOUND)?;
    std::io::stdout().write_all(&out)?;
    std::io::stdout().flush()?;
    std::process::exit(status);
}

/// `w` quoted for a POSIX shell (left alone when it needs no quotes).
fn shell_quote(w: &str) -> String {
    if !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}
