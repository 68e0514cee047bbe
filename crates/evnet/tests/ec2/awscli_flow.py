"""The `aws ec2` CLI (awscli from PyPI) against evnet's EC2 endpoint with
JSON output: create-vpc, create-subnet, describe-subnets --filters,
create-network-interface, run-instances, attach-network-interface."""

import json
import os
import subprocess
import sys

from common import ADMIN, ENDPOINT, REGION, ok

KEY = os.environ["EC2_ACCESS_KEY_ID"]
SECRET = os.environ["EC2_SECRET_ACCESS_KEY"]
AWS = os.path.join(os.path.dirname(sys.executable), "aws")
ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("TMPDIR", "/tmp"),
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_MAX_ATTEMPTS": "1",
}


def aws(*args, expect_ok=True):
    p = subprocess.run([sys.executable, AWS, "ec2", *args, "--endpoint-url", ENDPOINT, "--output", "json"],
                       env=ENV, capture_output=True, text=True, timeout=60)
    if expect_ok:
        assert p.returncode == 0, f"aws ec2 {' '.join(args)} exited {p.returncode}:\n{p.stderr}"
        return json.loads(p.stdout) if p.stdout.strip() else None
    assert p.returncode != 0, f"aws ec2 {' '.join(args)} succeeded:\n{p.stdout}"
    return p.stderr


# A host for the instance (registered the way an agent does).
host = ok("POST", "/v1/hosts", ok("POST", "/v1/bootstrap-tokens", ADMIN, {})["token"], {"name": "cli-host-" + os.urandom(3).hex(), "underlay_ip": f"198.18.210.{os.urandom(1)[0]}", "nic_mbps": 10000})

vpc = aws("create-vpc", "--cidr-block", "10.40.0.0/16", "--tag-specifications", "ResourceType=vpc,Tags=[{Key=Name,Value=cli}]")["Vpc"]
vpc_id = vpc["VpcId"]
assert vpc["CidrBlock"] == "10.40.0.0/16" and {"Key": "Name", "Value": "cli"} in vpc["Tags"], vpc
subnet = aws("create-subnet", "--vpc-id", vpc_id, "--cidr-block", "10.40.1.0/24")["Subnet"]
aws("create-subnet", "--vpc-id", vpc_id, "--cidr-block", "10.40.2.0/24")
got = aws("describe-subnets", "--filters", f"Name=vpc-id,Values={vpc_id}", "Name=cidr-block,Values=10.40.1.0/24")["Subnets"]
assert [s["SubnetId"] for s in got] == [subnet["SubnetId"]], got
got = aws("describe-subnets", "--filters", f"Name=vpc-id,Values={vpc_id}")["Subnets"]
assert len(got) == 2, got
eni = aws("create-network-interface", "--subnet-id", subnet["SubnetId"], "--description", "cli-eni")["NetworkInterface"]
assert eni["Status"] == "available" and eni["PrivateIpAddress"].startswith("10.40.1."), eni
inst = aws("run-instances", "--image-id", "evnet", "--count", "1", "--subnet-id", subnet["SubnetId"],
           "--placement", f"HostId={host['id']}")["Instances"][0]
att = aws("attach-network-interface", "--network-interface-id", eni["NetworkInterfaceId"], "--instance-id", inst["InstanceId"], "--device-index", "1")
assert att["AttachmentId"].startswith("eni-attach-"), att
desc = aws("describe-network-interfaces", "--network-interface-ids", eni["NetworkInterfaceId"])["NetworkInterfaces"][0]
assert desc["Status"] == "in-use" and desc["Attachment"]["InstanceId"] == inst["InstanceId"] and desc["Attachment"]["DeviceIndex"] == 1, desc
err = aws("describe-vpcs", "--vpc-ids", "vpc-00000000000000aa", expect_ok=False)
assert "InvalidVpcID.NotFound" in err, err
err = aws("create-subnet", "--vpc-id", vpc_id, "--cidr-block", "10.40.1.0/25", expect_ok=False)
assert "InvalidSubnet.Conflict" in err, err

aws("terminate-instances", "--instance-ids", inst["InstanceId"])
for x in aws("describe-network-interfaces", "--filters", f"Name=vpc-id,Values={vpc_id}")["NetworkInterfaces"]:
    aws("delete-network-interface", "--network-interface-id", x["NetworkInterfaceId"])
for s in aws("describe-subnets", "--filters", f"Name=vpc-id,Values={vpc_id}")["Subnets"]:
    aws("delete-subnet", "--subnet-id", s["SubnetId"])
aws("delete-vpc", "--vpc-id", vpc_id)
assert aws("describe-vpcs")["Vpcs"] == []
print("aws ec2 CLI flow ok")
