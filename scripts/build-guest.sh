#!/usr/bin/env bash
# Builds the small guest that evnet's VM tests, lab and benchmarks boot with
# QEMU (crates/evnet-vm, docs/vm.md), from Debian packages only:
#
#   OUTDIR/vmlinuz            Debian's linux-image-<ver>-cloud-amd64 kernel
#   OUTDIR/initramfs.cpio.gz  busybox-static, iperf3 with its libraries, the
#                             virtio-net modules, /init, the DHCP client script
#                             and the exec channel on ttyS1
#
# Usage: scripts/build-guest.sh [OUTDIR]   (default <repo>/target/guest)
#
# A stamp of the inputs (this script, the kernel package's version, the
# busybox and iperf3 files) makes a second run with the same inputs a no-op.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/guest}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# The cloud kernel's package: the one linux-image-cloud-amd64 depends on
# (`apt-cache depends linux-image-cloud-amd64`; `show` gives the same line
# with the version). apt-cache takes about a second, so its answer is kept
# with a signature of apt's package lists and asked again only when they
# change.
lists_sig="$(stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* 2>/dev/null | sha256sum | cut -d' ' -f1)"
kcache="$out/.kernel-package"
kdep=""
if [ "$(sed -n 1p "$kcache" 2>/dev/null)" = "$lists_sig" ]; then
  kdep="$(sed -n 2p "$kcache")"
fi
if [ -z "$kdep" ]; then
  kdep="$(apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-cloud-amd64\)\( (= \([^)]*\))\)\{0,1\}.*$/\1 \3/p' | head -n1)"
  [ -z "$kdep" ] || printf '%s\n%s\n' "$lists_sig" "$kdep" > "$kcache"
fi
kpkg="${kdep%% *}"
if [ -z "$kpkg" ]; then
  echo "build-guest: cannot find the cloud kernel's package (apt-cache depends linux-image-cloud-amd64); run apt-get update" >&2
  exit 1
fi

# busybox: the host's when it is busybox-static's, else the package's.
# (dpkg knows it as /bin/busybox; on a merged /usr that is /usr/bin/busybox.)
busybox=""
for b in /bin/busybox /usr/bin/busybox; do
  if [ -x "$b" ] && dpkg -S "$b" 2>/dev/null | grep -q '^busybox-static:'; then busybox="$b"; break; fi
done
# iperf3 and every library it loads, with the dynamic loader.
iperf3="$(command -v iperf3 || true)"
if [ -z "$iperf3" ]; then
  echo "build-guest: iperf3 is not installed (apt-get install iperf3)" >&2
  exit 1
fi
libs="$(ldd "$iperf3" | awk '/=> \//{print $3} /^\t\//{print $1}')"

inputs="$( {
  sha256sum < "$0"
  echo "$kdep"
  if [ -n "$busybox" ]; then sha256sum "$busybox"; else apt-cache policy busybox-static | sed -n 's/^ *Candidate: //p'; fi
  # shellcheck disable=SC2086
  sha256sum "$iperf3" $(readlink -f $libs)
} | sha256sum | cut -d' ' -f1)"
stamp="$out/.stamp"
if [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# --- the kernel and its modules ---------------------------------------------
apt-get download -q=2 "$kpkg" 2>/dev/null || apt-get download "$kpkg"
dpkg-deb -x "$kpkg"_*.deb kroot
kver="${kpkg#linux-image-}"
moddir="kroot/lib/modules/$kver"
[ -d "$moddir" ] || { echo "build-guest: $kpkg has no $moddir" >&2; exit 1; }

# Debian's package ships no modules.dep (depmod writes it when the package is
# installed), so the order comes from each module's own `depends=` field in
# its .modinfo section, the list depmod reads too. Compressed modules
# (.ko.xz/.ko.zst) are decompressed here: busybox's insmod loads plain .ko.
mkdir -p mods
modpath() { # the file of module $1 (names use _ where files may use -)
  local n="$1" alt="${1//_/-}" f
  f="$(find "$moddir/kernel" \( -name "$n.ko" -o -name "$n.ko.*" -o -name "$alt.ko" -o -name "$alt.ko.*" \) | head -n1)"
  [ -n "$f" ] || { echo "build-guest: module $n not found in $kpkg" >&2; exit 1; }
  echo "$f"
}
plain() { # decompressed copy of module $1 under mods/, echoes its path
  local f; f="$(modpath "$1")"
  case "$f" in
    *.ko.xz) xz -dc "$f" > "mods/$1.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "mods/$1.ko" ;;
    *.ko.gz) gzip -dc "$f" > "mods/$1.ko" ;;
    *) cp "$f" "mods/$1.ko" ;;
  esac
  echo "mods/$1.ko"
}
order=()
seen=" "
add_mod() { # depth-first: dependencies before the module
  local m="$1" f d
  case "$seen" in *" $m "*) return ;; esac
  seen="$seen$m "
  f="$(plain "$m")"
  for d in $(tr '\0' '\n' < "$f" | sed -n 's/^depends=//p' | tr ',' ' '); do
    add_mod "$d"
  done
  order+=("$m")
}
# Only what the config builds as modules: virtio_pci (the transport) and
# virtio_net (the NIC) pull in virtio, virtio_ring, the pci helpers and failover.
for m in virtio_pci virtio_net; do
  if grep -q "^CONFIG_${m^^}=y" "kroot/boot/config-$kver"; then continue; fi
  add_mod "$m"
done

# --- the initramfs tree -------------------------------------------------------
r="$work/initramfs"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib/modules}
if [ -z "$busybox" ]; then
  apt-get download -q=2 busybox-static 2>/dev/null || apt-get download busybox-static
  dpkg-deb -x busybox-static_*.deb bbroot
  busybox="$work/bbroot/bin/busybox"
fi
cp "$busybox" "$r/bin/busybox"
chmod 0755 "$r/bin/busybox"
for a in $("$r/bin/busybox" --list-full); do
  [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
done

for m in "${order[@]}"; do cp "mods/$m.ko" "$r/lib/modules/"; done
printf '%s\n' "${order[@]}" > "$r/etc/modules"

cp "$iperf3" "$r/usr/bin/iperf3"
for l in $libs; do
  mkdir -p "$r$(dirname "$l")"
  cp -L "$l" "$r$l"
done

cat > "$r/etc/hosts" <<'EOF'
127.0.0.1 localhost
EOF
echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
echo 'root:x:0:' > "$r/etc/group"

cat > "$r/init" <<'EOF'
#!/bin/sh
# evnet's guest: modules, loopback, a DHCP client on every NIC (also
# hot-plugged ones), and the exec channel on ttyS1 (docs/vm.md).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run/nic
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
for m in $(cat /etc/modules); do
  insmod /lib/modules/$m.ko || echo "evnet-guest: insmod $m failed" > /dev/console
done
ip link set lo up
hostname evnet-guest
# The exec channel, started again should it ever end.
setsid sh -c 'while :; do /bin/evnet-exec; sleep 1; done' &

# The NIC loop: a DHCP client for each new eth*, stopped when its NIC goes
# away. /run/nic/<name> holds the ifindex the client was started for, so a
# NIC unplugged and another plugged under the same name between two looks is
# still noticed.
while :; do
  for d in /sys/class/net/eth*; do
    [ -e "$d/ifindex" ] || continue
    n=${d##*/}
    idx=$(cat "$d/ifindex" 2>/dev/null) || continue
    [ "$(cat /run/nic/$n 2>/dev/null)" = "$idx" ] && continue
    [ -f /run/nic/$n.pid ] && kill "$(cat /run/nic/$n.pid)" 2>/dev/null
    ip link set "$n" up
    # In the foreground of a background job (not -b, which first waits for
    # a lease before it forks): the loop goes on at once, and the client
    # retries for as long as the NIC lives.
    udhcpc -f -i "$n" -s /etc/udhcpc.script \
      -t 3 -T 1 -A 1 -O mtu -O staticroutes >/dev/null 2>&1 &
    echo $! > /run/nic/$n.pid
    echo "$idx" > /run/nic/$n
    echo "evnet-guest: $n up $(cat $d/address)" > /dev/console
  done
  for f in /run/nic/*; do
    case "$f" in *.pid|*'*') continue ;; esac
    n=${f##*/}
    [ "$(cat /sys/class/net/$n/ifindex 2>/dev/null)" = "$(cat $f)" ] && continue
    [ -f $f.pid ] && kill "$(cat $f.pid)" 2>/dev/null
    rm -f "$f" "$f.pid" /run/nic/$n.lease
    echo "evnet-guest: $n gone" > /dev/console
  done
  sleep 0.5
done
EOF
chmod 0755 "$r/init"

cat > "$r/bin/evnet-exec" <<'EOF'
#!/bin/sh
# The exec channel on ttyS1 (docs/vm.md). Each line is "ID COMMAND": the
# answer is "@@evnet-exec-begin ID@@\n", the command's output (stdout and
# stderr, stdin from /dev/null), then "\n@@evnet-exec-done ID RC@@\n".
# An empty line is answered with "@@evnet-exec-ready@@\n".
exec </dev/ttyS1 >/dev/ttyS1 2>&1
stty raw -echo
echo "@@evnet-exec-ready@@"
echo "evnet-guest: exec ready" > /dev/console
while IFS= read -r line; do
  [ -z "$line" ] && { echo "@@evnet-exec-ready@@"; continue; }
  id=${line%% *}
  cmd=${line#"$id"}
  cmd=${cmd# }
  printf '@@evnet-exec-begin %s@@\n' "$id"
  sh -c -- "$cmd" </dev/null 2>&1
  printf '\n@@evnet-exec-done %s %s@@\n' "$id" "$?"
done
EOF
chmod 0755 "$r/bin/evnet-exec"

cat > "$r/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# udhcpc's hook: addresses, MTU (option 26), the default route (eth0 only),
# classless static routes (option 121) for any NIC, a routing table and
# rule per NIC so each address answers by its own NIC, and resolv.conf (eth0).
# One console line per lease: "evnet-guest: IF ADDR/PREFIX EVENT".
log() { echo "evnet-guest: $*" > /dev/console; }
event=$1
case "$event" in
deconfig)
  ip -4 route flush dev "$interface" 2>/dev/null
  ip -4 addr flush dev "$interface" 2>/dev/null
  ip link set "$interface" up
  rm -f /run/nic/$interface.lease
  ;;
bound|renew)
  old=$(cat /run/nic/$interface.lease 2>/dev/null)
  if [ "$old" != "$ip/$mask" ]; then
    ip -4 route flush dev "$interface" 2>/dev/null
    ip -4 addr flush dev "$interface" 2>/dev/null
  fi
  [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
  ip addr replace "$ip/$mask" broadcast "${broadcast:-+}" dev "$interface"
  if [ -n "$staticroutes" ]; then
    # RFC 3442: given classless routes, the router option is ignored.
    set -- $staticroutes
    while [ $# -ge 2 ]; do
      dst=$1 gw=$2
      shift 2
      if [ "$dst" = 0.0.0.0/0 ] && [ "$interface" != eth0 ]; then continue; fi
      if [ "$gw" = 0.0.0.0 ]; then
        ip route replace "$dst" dev "$interface"
      else
        ip route replace "$dst" via "$gw" dev "$interface" onlink
      fi
    done
  elif [ -n "$router" ] && [ "$interface" = eth0 ]; then
    set -- $router
    ip route replace default via "$1" dev "$interface" onlink
  fi
  if [ "$interface" = eth0 ] && [ -n "$dns$domain" ]; then
    {
      [ -n "$domain" ] && echo "search $domain"
      for s in $dns; do echo "nameserver $s"; done
    } > /etc/resolv.conf
  fi
  # Replies leave by the NIC their address is on: a table per NIC (100 +
  # its index) with its subnet and a default route through its gateway
  # (the router option, else the DHCP server, which is the gateway), and a
  # rule for its address, as evnet's own instances have (docs/vm.md).
  idx=${interface#eth}
  case "$idx" in ''|*[!0-9]*) idx= ;; esac
  if [ -n "$idx" ]; then
    t=$((100 + idx))
    gw=${router%% *}
    gw=${gw:-$serverid}
    eval "$(ipcalc -n "$ip/$mask")"
    ip route flush table $t 2>/dev/null
    ip route replace "$NETWORK/$mask" dev "$interface" table $t
    [ -n "$gw" ] && ip route replace default via "$gw" dev "$interface" onlink table $t
    while ip rule del priority $((1000 + idx)) 2>/dev/null; do :; done
    ip rule add from "$ip" table $t priority $((1000 + idx))
  fi
  echo "$ip/$mask" > /run/nic/$interface.lease
  log "$interface $ip/$mask $event"
  ;;
esac
exit 0
EOF
chmod 0755 "$r/etc/udhcpc.script"

# --- pack ---------------------------------------------------------------------
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | "$r/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) |
  gzip -6 -n > "$work/initramfs.cpio.gz"
install -m 0644 "kroot/boot/vmlinuz-$kver" "$out/vmlinuz.new"
install -m 0644 "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$out/initramfs.cpio.gz.new" "$out/initramfs.cpio.gz"
# A new image: the cached verdict of the KVM probe (evnet-vm) is stale.
rm -f "$out/accel"
echo "$kver" > "$out/kernel-version"
echo "$inputs" > "$stamp"
echo "build-guest: $out (kernel $kver, modules: ${order[*]})"
