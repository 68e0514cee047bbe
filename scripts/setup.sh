#!/usr/bin/env bash
# Installs what evnet needs on a fresh Debian machine: the kernel tools the
# agent and the lab drive, traffic tools for tests, etcd, and protoc for builds.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
command -v protoc >/dev/null || need+=(protobuf-compiler)
# etcd: the store backend for several servers; tests and the lab run real members.
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
# The fast path's programs (crates/evnet-bpf): clang builds them, libbpf-rs
# builds its libbpf against libelf and zlib; bpftool shows what is loaded.
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
command -v bpftool >/dev/null || need+=(bpftool)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -e /usr/include/libelf.h ] || need+=(libelf-dev)
[ -e /usr/include/zlib.h ] || need+=(zlib1g-dev)
# Containers on evnet (crates/evnet/tests/podman.rs): podman with runc (crun
# does not run here) and busybox-static for an image built without a pull;
# nsenter (util-linux) enters runtimes' namespaces by path.
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/bin/busybox ] && /usr/bin/busybox --help 2>&1 | grep -q static || dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v nsenter >/dev/null || need+=(util-linux)
# VMs (crates/evnet-vm): Debian's QEMU, without its recommends (no GUI,
# no firmware beyond what the x86 machine needs).
need_norec=()
command -v qemu-system-x86_64 >/dev/null || need_norec+=(qemu-system-x86)
if [ $((${#need[@]} + ${#need_norec[@]})) -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} ${need_norec[*]}; run as root or: sudo apt-get install ${need[*]} && sudo apt-get install --no-install-recommends ${need_norec[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  [ ${#need_norec[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_norec[@]}" >/dev/null
fi

# The VM guest (kernel + initramfs in target/guest, from Debian packages);
# a no-op when its inputs have not changed. It needs apt's package lists to
# find and download the cloud kernel.
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "apt has no package lists; run as root or: sudo apt-get update" >&2
    exit 1
  fi
  apt-get update -qq
fi
"$root/scripts/build-guest.sh"

# AWS's clients (boto3, the aws CLI) in a virtual environment under the repo,
# for the EC2 Query API's tests and benchmark. Reinstalled only when the
# pinned requirements change.
req="$root/scripts/ec2-requirements.txt"
venv="$root/.venv"
stamp="$venv/.ec2-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "python3 cannot make virtual environments; run as root or: sudo apt-get install python3-venv" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
