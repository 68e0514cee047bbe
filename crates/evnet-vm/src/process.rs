//! Starting QEMU (in a network namespace), and ending exactly that process.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::accel::resolve_accel;
use crate::error::{io, Error, Result};
use crate::exec::ExecChannel;
use crate::qmp::{Qmp, QMP_TIMEOUT};
use crate::spec::{qemu_args, Accel, VmSpec};

/// The QEMU binary (Debian's `qemu-system-x86`).
pub const QEMU: &str = "qemu-system-x86_64";
/// How long [`VmProcess::kill`] waits after SIGTERM before SIGKILL.
pub const TERM_BOUND: Duration = Duration::from_secs(5);
/// How often a process's exit is looked for while waiting for it.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// A running QEMU started by [`spawn`]. Dropping it kills QEMU (as
/// [`VmProcess::kill`]) unless it was [`VmProcess::detach`]ed.
pub struct VmProcess {
    child: Option<Child>,
    pid: u32,
    spec: VmSpec,
}

/// Starts QEMU for `spec`, inside network namespace `netns` when given (a
/// name under `/run/netns`, or a path to a namespace file): it joins the
/// namespace before it execs (`setns` between fork and exec), so its taps
/// are opened there. [`Accel::Auto`] is resolved first
/// ([`resolve_accel`]); the run directory is made, and stale sockets,
/// console log and pid file in it removed. Returns at once; use
/// [`VmProcess::connect_exec`] to wait for the guest.
pub fn spawn(spec: &VmSpec, netns: Option<&str>) -> Result<VmProcess> {
    spec.validate()?;
    if !spec.image.exists() {
        return Err(Error::ImageMissing { searched: spec.image.dir().unwrap_or(Path::new("")).display().to_string() });
    }
    let mut spec = spec.clone();
    spec.accel = resolve_accel(spec.accel, &spec.image)?;
    start(spec, netns)
}

/// [`spawn`] with the acceleration already resolved.
pub(crate) fn start(spec: VmSpec, netns: Option<&str>) -> Result<VmProcess> {
    std::fs::create_dir_all(&spec.run_dir).map_err(io(format!("make {}", spec.run_dir.display())))?;
    for f in [spec.exec_socket(), spec.qmp_socket(), spec.pid_file(), spec.console_log()] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(format!("remove {}", f.display()))(e)),
            _ => {}
        }
    }
    let ns = match netns {
        None => None,
        Some(n) => {
            let path = netns_path(n)?;
            Some(File::open(&path).map_err(io(format!("open network namespace {}", path.display())))?)
        }
    };
    let log = File::create(spec.qemu_log()).map_err(io(format!("create {}", spec.qemu_log().display())))?;
    let log2 = log.try_clone().map_err(io("duplicate QEMU's log file"))?;
    let mut cmd = Command::new(QEMU);
    cmd.args(qemu_args(&spec)).stdin(Stdio::null()).stdout(log).stderr(log2);
    if let Some(f) = &ns {
        let fd = f.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only setns(2), which is async-signal-safe; `fd` stays open
        // in the parent (and so in the child) until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            format!("start {QEMU} (not installed? scripts/setup.sh installs qemu-system-x86)")
        } else {
            format!("start {QEMU}")
        };
        io(what)(e)
    })?;
    drop(ns);
    Ok(VmProcess { pid: child.id(), child: Some(child), spec })
}

fn netns_path(name: &str) -> Result<PathBuf> {
    if name.starts_with('/') {
        return Ok(PathBuf::from(name));
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Invalid { what: "network namespace", value: name.into(), why: "a name under /run/netns or an absolute path" });
    }
    Ok(Path::new("/run/netns").join(name))
}

impl VmProcess {
    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The spec it was started with, its acceleration resolved.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// KVM or TCG: what it runs with.
    pub fn accel(&self) -> Accel {
        self.spec.accel
    }

    /// An error if QEMU has exited (with the end of its log).
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        match child.try_wait().map_err(io("wait for QEMU"))? {
            None => Ok(()),
            Some(status) => Err(self.exited(status)),
        }
    }

    fn exited(&self, status: ExitStatus) -> Error {
        let log = self.spec.qemu_log();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        Error::Exited { status: status.to_string(), log, tail }
    }

    /// Connects to the exec channel and waits for the guest to answer on
    /// it, all within `timeout` (a TCG boot takes seconds). Fails at once
    /// if QEMU exits meanwhile.
    pub fn connect_exec(&mut self, timeout: Duration) -> Result<ExecChannel> {
        let deadline = Instant::now() + timeout;
        let sock = self.spec.exec_socket();
        let mut ch = ExecChannel::connect_checked(&sock, timeout, || self.check_running())?;
        match ch.wait_ready(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => Ok(ch),
            Err(e @ (Error::Closed { .. } | Error::Timeout { .. })) => {
                self.check_running()?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Connects to QMP (capabilities negotiated).
    pub fn connect_qmp(&mut self) -> Result<Qmp> {
        let sock = self.spec.qmp_socket();
        Qmp::connect_checked(&sock, QMP_TIMEOUT, || self.check_running())
    }

    /// Waits up to `timeout` for QEMU to exit (after [`Qmp::quit`], or a
    /// guest that powered off or panicked: `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(Error::Invalid { what: "VM process", value: self.pid.to_string(), why: "detached" });
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(io("wait for QEMU"))? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { what: format!("QEMU (pid {}) to exit", self.pid), after: timeout });
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Ends this QEMU: SIGTERM to its PID, SIGKILL if it is still there
    /// after [`TERM_BOUND`], and reaps it. Nothing else is signalled. A
    /// second call does nothing.
    pub fn kill(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        if child.try_wait().map_err(io("wait for QEMU"))?.is_none() {
            signal(self.pid, libc::SIGTERM)?;
            if self.wait_exit(TERM_BOUND).is_ok() {
                return Ok(());
            }
        }
        if let Some(mut child) = self.child.take() {
            // Child::kill is SIGKILL to this PID; it errs only if reaped.
            let _ = child.kill();
            child.wait().map_err(io("wait for QEMU"))?;
        }
        Ok(())
    }

    /// Lets QEMU outlive this value (a lab that keeps its VMs running):
    /// answers its PID; stop it later with [`stop_recorded`].
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.pid
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| Error::Invalid { what: "pid", value: pid.to_string(), why: "out of range" })?;
    // SAFETY: kill(2) with a positive PID signals that process only.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(io(format!("signal {sig} to pid {pid}"))(e));
        }
    }
    Ok(())
}

/// Stops a QEMU started (and [`VmProcess::detach`]ed) earlier for the run
/// directory `run_dir`: reads its pid file, and signals that PID only if it
/// still is that QEMU (its command line names this run directory's exec
/// socket), SIGTERM then SIGKILL after `bound`. Answers whether a process
/// was stopped.
pub fn stop_recorded(run_dir: &Path, bound: Duration) -> Result<bool> {
    let pid_file = run_dir.join("qemu.pid");
    let pid: u32 = match std::fs::read_to_string(&pid_file) {
        Ok(s) => match s.trim().parse() {
            Ok(p) => p,
            Err(_) => return Ok(false),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(format!("read {}", pid_file.display()))(e)),
    };
    let sock = run_dir.join("exec.sock").display().to_string();
    let is_ours = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let alive = proc_state(pid).is_none_or(|s| s != 'Z');
        alive && cmdline.split(|&b| b == 0).any(|a| String::from_utf8_lossy(a).contains(&sock))
    };
    if !is_ours(pid) {
        return Ok(false);
    }
    signal(pid, libc::SIGTERM)?;
    let deadline = Instant::now() + bound;
    let mut sig = libc::SIGTERM;
    loop {
        // Reap it if it is a child of this process (ECHILD otherwise).
        let mut status = 0;
        // SAFETY: waitpid(2) on one PID with WNOHANG does not block.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if !is_ours(pid) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            if sig == libc::SIGKILL {
                return Err(Error::Timeout { what: format!("QEMU (pid {pid}) to exit after SIGKILL"), after: bound });
            }
            sig = libc::SIGKILL;
            signal(pid, sig)?;
        }
        std::thread::sleep(EXIT_POLL);
    }
}

/// The state letter of /proc/PID/stat.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_by_name_or_path() {
        assert_eq!(netns_path("evtest-1").unwrap(), PathBuf::from("/run/netns/evtest-1"));
        assert_eq!(netns_path("/proc/1/ns/net").unwrap(), PathBuf::from("/proc/1/ns/net"));
        assert!(netns_path("a/b").is_err());
        assert!(netns_path("..").is_err());
    }

    #[test]
    fn nothing_recorded_stops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!stop_recorded(dir.path(), Duration::from_millis(10)).unwrap());
        // A pid file naming a process that is not this run's QEMU (this test).
        std::fs::write(dir.path().join("qemu.pid"), std::process::id().to_string()).unwrap();
        assert!(!stop_recorded(dir.path(), Duration::from_millis(10)).unwrap());
    }
}
