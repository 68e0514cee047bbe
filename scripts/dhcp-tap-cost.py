#!/usr/bin/env python3
"""What the agent's DHCP tap costs a device's received traffic (root).

The agent listens for DHCP on each ENI's host-side device with an
AF_PACKET socket bound as a tap (ETH_P_ALL, PACKET_IGNORE_OUTGOING) and a
classic BPF filter that keeps only UDP to port 67 (evnet_agent::dhcp), so
every frame the device receives runs that filter. This measures it on a
plain veth between two namespaces of its own (random names, removed at
the end): one iperf3 TCP stream into the veth end, rounds alternating
without and with the same tap on that end, and prints each round and the
median of per-round ratios (with / without).

Run: sudo scripts/dhcp-tap-cost.py [--rounds 10] [--seconds 3]
"""

import argparse
import json
import random
import socket
import statistics
import subprocess
import time

# The agent's filter (crates/evnet-agent/src/dhcp.rs, FILTER).
PROG = [
    (0x28, 0, 0, 12), (0x15, 0, 8, 0x0800), (0x30, 0, 0, 23), (0x15, 0, 6, 17),
    (0x28, 0, 0, 20), (0x45, 4, 0, 0x1FFF), (0xB1, 0, 0, 14), (0x48, 0, 0, 16),
    (0x15, 0, 1, 67), (0x06, 0, 0, 0x40000), (0x06, 0, 0, 0),
]
SO_ATTACH_FILTER, SOL_PACKET, PACKET_IGNORE_OUTGOING, ETH_P_ALL = 26, 263, 23, 3


TAP_CHILD = f"""
import ctypes, socket, sys, time
class SF(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]
class FP(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SF))]
prog = {PROG!r}
arr = (SF * len(prog))(*[SF(*p) for p in prog])
fp = FP(len(prog), ctypes.cast(arr, ctypes.POINTER(SF)))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, {SO_ATTACH_FILTER}, bytes(fp))
s.setsockopt({SOL_PACKET}, {PACKET_IGNORE_OUTGOING}, 1)
s.bind((sys.argv[1], {ETH_P_ALL}))
print("ready", flush=True)
sys.stdin.read()
"""


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def iperf(client, server, seconds):
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", "10.99.0.2", "-t", str(seconds), "-J"],
                             check=True, capture_output=True, timeout=seconds + 10).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]
    finally:
        srv.kill()
        srv.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=3)
    a = ap.parse_args()
    tag = f"{random.getrandbits(24):06x}"
    c, s = f"evtap-c-{tag}", f"evtap-s-{tag}"
    try:
        sh("ip", "netns", "add", c)
        sh("ip", "netns", "add", s)
        sh("ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "evetap", "netns", s)
        sh("ip", "-n", c, "addr", "add", "10.99.0.1/24", "dev", "eth0")
        sh("ip", "-n", s, "addr", "add", "10.99.0.2/24", "dev", "evetap")
        for ns, dev in [(c, "eth0"), (s, "evetap"), (c, "lo"), (s, "lo")]:
            sh("ip", "-n", ns, "link", "set", dev, "up")
        ratios = []
        print("round  without Gbit/s  with tap Gbit/s  ratio")
        for r in range(1, a.rounds + 1):
            without = iperf(c, s, a.seconds)
            tap = subprocess.Popen(["ip", "netns", "exec", s, "python3", "-c", TAP_CHILD, "evetap"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert tap.stdout.readline().strip() == "ready", "the tap did not open"
                with_tap = iperf(c, s, a.seconds)
            finally:
                tap.stdin.close()
                tap.wait(timeout=10)
            ratios.append(with_tap / without)
            print(f"{r:>5}  {without / 1e9:>14.2f}  {with_tap / 1e9:>15.2f}  {with_tap / without:.3f}")
        print(f"median of per-round ratios (with tap / without): {statistics.median(ratios):.3f}")
    finally:
        subprocess.run(["ip", "netns", "del", c], capture_output=True)
        subprocess.run(["ip", "netns", "del", s], capture_output=True)


if __name__ == "__main__":
    main()
