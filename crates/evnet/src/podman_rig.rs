//! podman on evnet for the podman test and `evnet-cni-bench`: podman
//! (Debian's, with runc and its CNI backend) with storage, configuration
//! and networks of its own under one directory, and an image imported from
//! a local busybox rootfs, so nothing is pulled. Included by path by both
//! (the `evnet` package has no library).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// The image every container runs.
pub const IMAGE: &str = "localhost/evnet-busybox";

/// podman with its own storage, configuration and networks under `dir`.
pub struct Podman {
    pub dir: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e} (scripts/setup.sh installs it)"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Podman {
    /// Sets up `dir` (the plugin `cni_plugin` linked into its plugin
    /// directory) and imports the image.
    pub fn new(dir: &Path, cni_plugin: &Path) -> Result<Podman, String> {
        let p = Podman { dir: dir.to_path_buf() };
        for d in ["cni", "net", "root", "runroot", "rootfs/bin"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        std::os::unix::fs::symlink(cni_plugin, dir.join("cni/evnet-cni")).map_err(|e| e.to_string())?;
        // crun does not run here, nor do the default rlimits (KERNEL-NOTES).
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
            dir.join("cni").display(),
            dir.join("net").display()
        );
        std::fs::write(dir.join("containers.conf"), conf).map_err(|e| e.to_string())?;
        let rootfs = dir.join("rootfs");
        std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).map_err(|e| format!("/usr/bin/busybox: {e} (busybox-static; scripts/setup.sh installs it)"))?;
        for applet in ["sh", "ping", "ip", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).map_err(|e| e.to_string())?;
        }
        let tar = dir.join("rootfs.tar");
        run("tar", &["-C", &rootfs.display().to_string(), "-cf", &tar.display().to_string(), "."])?;
        p.ok(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(p)
    }

    /// `podman` with this rig's storage and configuration.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args(["--root", &self.dir.join("root").display().to_string(), "--runroot", &self.dir.join("runroot").display().to_string()]);
        c
    }

    pub fn cmd(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        self.command().args(args).output()
    }

    pub fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.cmd(args).map_err(|e| format!("podman: {e} (scripts/setup.sh installs it)"))?;
        if !out.status.success() {
            return Err(format!("podman {args:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A network `name` whose containers get ENIs through `socket`'s agent.
    pub fn network(&self, name: &str, socket: &Path, token_file: &Path, subnet: &str, bandwidth: Value) -> Result<(), String> {
        let conf = json!({
            "cniVersion": "1.0.0", "name": name,
            "plugins": [{"type": "evnet-cni", "agent_socket": socket, "token_file": token_file, "subnet_id": subnet, "bandwidth": bandwidth,
                         "capabilities": {"bandwidth": true}}]
        });
        std::fs::write(self.dir.join("net").join(format!("{name}.conflist")), conf.to_string()).map_err(|e| e.to_string())
    }

    /// Runs a container that sleeps on `network`: its id.
    pub fn start(&self, network: &str) -> Result<String, String> {
        self.ok(&["run", "-d", "--network", network, IMAGE, "sleep", "600"])
    }

    pub fn inspect(&self, id: &str) -> Result<Value, String> {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", id])?).map_err(|e| e.to_string())?;
        Ok(v[0].clone())
    }

    pub fn ip(&self, id: &str) -> Result<Ipv4Addr, String> {
        let v = self.inspect(id)?;
        let nets = v["NetworkSettings"]["Networks"].as_object().ok_or("no networks")?;
        let ip = nets.values().next().and_then(|n| n["IPAddress"].as_str()).ok_or("no address")?;
        ip.parse().map_err(|e| format!("{ip}: {e}"))
    }

    pub fn netns(&self, id: &str) -> Result<String, String> {
        Ok(self.inspect(id)?["NetworkSettings"]["SandboxKey"].as_str().ok_or("no SandboxKey")?.to_string())
    }

    pub fn pings(&self, id: &str, ip: Ipv4Addr) -> bool {
        self.cmd(&["exec", id, "ping", "-c", "1", "-W", "1", &ip.to_string()]).is_ok_and(|o| o.status.success())
    }

    pub fn rm(&self, id: &str) -> Result<(), String> {
        self.ok(&["rm", "-f", "-t", "0", id]).map(|_| ())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.cmd(&["system", "reset", "-f"]);
    }
}
