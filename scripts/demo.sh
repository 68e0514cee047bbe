#!/usr/bin/env bash
# evnet's main job on one machine: a lab of 3 hosts (a server and 3 agents,
# each host in its own network namespace) and the demo: two tenants with the
# same CIDR, isolation between them, an ENI moved to another host while a
# ping runs, the way out (an internet gateway, an elastic IP reached from
# the lab's external namespace), and a VM (QEMU, DHCP from the agent) talking
# to a namespace instance and a podman container, on the tc-BPF data plane.
# Leaves the lab up;
# `evnet lab down --dir DIR` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-/tmp/evnet-lab}"
sudo_="" ; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
$sudo_ scripts/setup.sh
cargo build --release -p evnet
if [ -e "$DIR/lab.json" ]; then $sudo_ target/release/evnet lab down --dir "$DIR"; fi
$sudo_ target/release/evnet lab demo --dir "$DIR" --hosts 3
