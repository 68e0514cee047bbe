#!/usr/bin/env python3
"""EC2 Query API benchmark: describe and create through boto3's signed
requests beside the same operations on the REST API, in the same run.

Starts the real `evnet server` (an embedded store in a temporary directory),
makes a tenant with an access key, then runs alternated rounds (the order of
the variants rotates every round) of:

  describe: one VPC by id   — REST GET /v1/vpcs/{id} | EC2 DescribeVpcs
  create:   one ENI          — REST POST /v1/enis     | EC2 CreateNetworkInterface

through three clients, one request at a time:

  rest   http.client with a bearer token and JSON
  sigv4  http.client with botocore's SigV4 signer on each request (the
         protocol's cost on the server plus signing, without boto3)
  boto3  the boto3 client (what a user of AWS's tools gets)

It prints per-variant throughput (requests/s) and p50/p99 latency, and the
median over rounds of each variant's throughput ratio to REST in the same
round. Run: .venv/bin/python scripts/ec2-bench.py [--evnet target/release/evnet]
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

ADMIN = "ec2-bench-admin"
REGION = "us-east-1"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Rest:
    def __init__(self, port, token):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.c.request(method, path, body=None if body is None else json.dumps(body), headers=self.h)
        r = self.c.getresponse()
        data = r.read()
        assert 200 <= r.status < 300, (r.status, data)
        return json.loads(data)


class SigV4:
    def __init__(self, port, key, secret):
        self.port = port
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.signer = SigV4Auth(Credentials(key, secret), "ec2", REGION)

    def call(self, params):
        body = "&".join(f"{k}={v}" for k, v in params.items())
        req = AWSRequest(method="POST", url=f"http://127.0.0.1:{self.port}/ec2/", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        self.signer.add_auth(req)
        p = req.prepare()
        self.c.request("POST", "/ec2/", body=p.body, headers=dict(p.headers))
        r = self.c.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data)
        return data


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(fn, n):
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        a = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - a)
    return n / (time.perf_counter() - t0), lat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--evnet", default="target/release/evnet", help="the evnet binary")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--describes", type=int, default=400, help="describe requests per variant per round")
    ap.add_argument("--creates", type=int, default=100, help="create requests per variant per round")
    args = ap.parse_args()
    assert args.rounds >= 3

    data = tempfile.mkdtemp(prefix="evnet-ec2-bench-")
    port = free_port()
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen([args.evnet, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(data, "d")],
                              env={**os.environ, "EVNET_ADMIN_TOKEN": ADMIN, "RUST_LOG": "warn"}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.02)
        admin = Rest(port, ADMIN)
        t = admin.call("POST", "/v1/tenants", {"name": "bench"})
        k = Rest(port, t["token"]).call("POST", f"/v1/tenants/{t['id']}/access-keys", {})
        rest = Rest(port, t["token"])
        sig = SigV4(port, k["access_key_id"], k["secret_access_key"])
        ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{port}/ec2", region_name=REGION,
                           aws_access_key_id=k["access_key_id"], aws_secret_access_key=k["secret_access_key"],
                           config=Config(retries={"max_attempts": 1}))
        vpc = rest.call("POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
        total_creates = 3 * args.rounds * args.creates
        assert total_creates < 60000, "the subnet holds 65,531 addresses"
        subnet = rest.call("POST", "/v1/subnets", {"vpc_id": vpc, "cidr_block": "10.0.0.0/16"})["id"]

        ops = {
            "describe": {
                "rest": lambda i: rest.call("GET", f"/v1/vpcs/{vpc}"),
                "sigv4": lambda i: sig.call({"Action": "DescribeVpcs", "Version": "2016-11-15", "VpcId.1": vpc}),
                "boto3": lambda i: ec2.describe_vpcs(VpcIds=[vpc]),
            },
            "create": {
                "rest": lambda i: rest.call("POST", "/v1/enis", {"subnet_id": subnet}),
                "sigv4": lambda i: sig.call({"Action": "CreateNetworkInterface", "Version": "2016-11-15", "SubnetId": subnet}),
                "boto3": lambda i: ec2.create_network_interface(SubnetId=subnet),
            },
        }
        variants = ["rest", "sigv4", "boto3"]
        # Warm-up: connections, imports, caches.
        for op in ops.values():
            for v in variants:
                measure(op[v], 20)
        results = {op: {v: {"tput": [], "lat": []} for v in variants} for op in ops}
        for r in range(args.rounds):
            order = variants[r % 3:] + variants[:r % 3]
            for op_name, op in ops.items():
                n = args.describes if op_name == "describe" else args.creates
                for v in order:
                    tput, lat = measure(op[v], n)
                    results[op_name][v]["tput"].append(tput)
                    results[op_name][v]["lat"].extend(lat)
        print(f"evnet EC2 benchmark: {args.rounds} rounds (order rotated each round), one request at a time; "
              f"{args.describes} describes and {args.creates} creates per variant per round")
        print(f"{'op':9} {'client':6} {'req/s (median round)':>21} {'p50 ms':>8} {'p99 ms':>8} {'ratio to rest (median of rounds)':>33}")
        for op_name in ops:
            for v in variants:
                res = results[op_name][v]
                ratios = [a / b for a, b in zip(res["tput"], results[op_name]["rest"]["tput"])]
                print(f"{op_name:9} {v:6} {statistics.median(res['tput']):21.0f} {pct(res['lat'], 0.5) * 1e3:8.2f} "
                      f"{pct(res['lat'], 0.99) * 1e3:8.2f} {statistics.median(ratios):33.2f}")
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
