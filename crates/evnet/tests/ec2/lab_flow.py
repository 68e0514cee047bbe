"""A tenant's flow through the real boto3 client against a running lab: real
hosts with real agents building namespaces, veths and VXLAN. It makes a VPC,
a subnet, a group that admits ICMP from the VPC, three ENIs; runs one
instance on each of two hosts with those ENIs; waits with
describe_network_interfaces until they are in use; pings across hosts inside
the instances' namespaces; moves an ENI (detach, attach) from an instance
on one host to an instance on the other and checks it keeps its MAC and
address and answers there; then
tears everything down and checks the namespaces are gone.

Needs root (it enters the lab's namespaces with `ip netns exec`) and the
lab's EVNET_URL and EVNET_ADMIN_TOKEN."""

import os
import subprocess
import time

from common import client, ok, tenant, wait_for

SUFFIX = os.urandom(3).hex()
A = tenant(f"ec2-lab-{SUFFIX}")
ec2 = client(A)
hosts = sorted(ok("GET", "/v1/hosts?limit=1000", os.environ["EVNET_ADMIN_TOKEN"])["items"], key=lambda h: h["name"])
assert len(hosts) >= 2, hosts


def netns_of(instance_id):
    return ok("GET", f"/v1/instances/{instance_id}", A["token"])["netns"]


def ping(instance_id, ip):
    r = subprocess.run(["ip", "netns", "exec", netns_of(instance_id), "ping", "-c", "1", "-W", "1", ip],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def macs_in(instance_id):
    # Empty until the agent has made the instance's namespace.
    r = subprocess.run(["ip", "netns", "exec", netns_of(instance_id), "ip", "-o", "link", "show"],
                       capture_output=True, text=True)
    out = r.stdout if r.returncode == 0 else ""
    return {line.split("link/ether ")[1].split()[0] for line in out.splitlines() if "link/ether " in line}


def netns_exists(name):
    return os.path.exists(f"/run/netns/{name}")


vpc_id = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
sg = ec2.create_security_group(VpcId=vpc_id, GroupName="icmp", Description="ICMP from the VPC")["GroupId"]
ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
    {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "10.30.0.0/16"}]}])
enis = [ec2.create_network_interface(SubnetId=subnet_id, Groups=[sg])["NetworkInterface"] for _ in range(3)]
e1, e2, e3 = enis

r1 = ec2.run_instances(MinCount=1, MaxCount=1, ImageId="evnet",
                       NetworkInterfaces=[{"NetworkInterfaceId": e1["NetworkInterfaceId"], "DeviceIndex": 0}],
                       Placement={"HostId": hosts[0]["name"]})["Instances"][0]
r2 = ec2.run_instances(MinCount=1, MaxCount=1, ImageId="evnet",
                       NetworkInterfaces=[{"NetworkInterfaceId": e2["NetworkInterfaceId"], "DeviceIndex": 0}],
                       Placement={"HostId": hosts[1]["name"]})["Instances"][0]
i1, i2 = r1["InstanceId"], r2["InstanceId"]
assert r1["Placement"]["HostId"] == hosts[0]["id"] and r2["Placement"]["HostId"] == hosts[1]["id"], (r1, r2)

# The agents report the instances running; the ENIs are then in use.
start = time.monotonic()
wait_for("ENIs in use", lambda: sorted(
    x["NetworkInterfaceId"] for x in ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [i1, i2]}, {"Name": "status", "Values": ["in-use"]}])["NetworkInterfaces"]
) == sorted([e1["NetworkInterfaceId"], e2["NetworkInterfaceId"]]), timeout=30)
ec2.get_waiter("instance_running").wait(InstanceIds=[i1, i2], WaiterConfig={"Delay": 1, "MaxAttempts": 30})
wait_for("a ping from host-1's instance to host-2's", lambda: ping(i1, e2["PrivateIpAddress"]), timeout=30)
print(f"instances running and pinging across hosts {time.monotonic() - start:.2f} s after RunInstances")
assert ping(i2, e1["PrivateIpAddress"])

# Move e3 between instances on two hosts. Each instance that holds it has
# its primary ENI in a second subnet, so e3 is the instance's only link into
# the first one and answers through itself (two links in one subnet would
# need policy routing inside the instance, as on AWS).
subnet2 = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.30.2.0/24")["Subnet"]["SubnetId"]
e4, e5 = [ec2.create_network_interface(SubnetId=subnet2, Groups=[sg])["NetworkInterface"] for _ in range(2)]
enis += [e4, e5]
e3id = e3["NetworkInterfaceId"]
i3 = ec2.run_instances(MinCount=1, MaxCount=1, ImageId="evnet", Placement={"HostId": hosts[0]["name"]},
                       NetworkInterfaces=[{"NetworkInterfaceId": e5["NetworkInterfaceId"], "DeviceIndex": 0},
                                          {"NetworkInterfaceId": e3id, "DeviceIndex": 1}])["Instances"][0]["InstanceId"]
i4 = ec2.run_instances(MinCount=1, MaxCount=1, ImageId="evnet", Placement={"HostId": hosts[1]["name"]},
                       NetworkInterfaces=[{"NetworkInterfaceId": e4["NetworkInterfaceId"], "DeviceIndex": 0}])["Instances"][0]["InstanceId"]
wait_for("e3 answering from i3 on host-1", lambda: e3["MacAddress"] in macs_in(i3) and ping(i2, e3["PrivateIpAddress"]), timeout=30)
att = ec2.describe_network_interfaces(NetworkInterfaceIds=[e3id])["NetworkInterfaces"][0]["Attachment"]["AttachmentId"]
ec2.detach_network_interface(AttachmentId=att)
ec2.attach_network_interface(NetworkInterfaceId=e3id, InstanceId=i4, DeviceIndex=1)
start = time.monotonic()
wait_for("e3 answering from i4 on host-2", lambda: e3["MacAddress"] in macs_in(i4) and ping(i1, e3["PrivateIpAddress"]), timeout=30)
print(f"moved ENI answering from the other host {time.monotonic() - start:.2f} s after AttachNetworkInterface")
assert e3["MacAddress"] not in macs_in(i3)
d3 = ec2.describe_network_interfaces(NetworkInterfaceIds=[e3id])["NetworkInterfaces"][0]
assert d3["Status"] == "in-use" and d3["Attachment"]["InstanceId"] == i4, d3
assert d3["MacAddress"] == e3["MacAddress"] and d3["PrivateIpAddress"] == e3["PrivateIpAddress"], d3

# Teardown: the namespaces go with the instances.
instances = [i1, i2, i3, i4]
spaces = [netns_of(i) for i in instances]
ec2.terminate_instances(InstanceIds=instances)
# evnet forgets a terminated instance at once.
assert ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": instances}])["Reservations"] == []
wait_for("the instances' namespaces gone", lambda: not any(netns_exists(n) for n in spaces), timeout=30)
for e in enis:
    wait_for(f"{e['NetworkInterfaceId']} available", lambda: ec2.describe_network_interfaces(
        NetworkInterfaceIds=[e["NetworkInterfaceId"]])["NetworkInterfaces"][0]["Status"] == "available")
    ec2.delete_network_interface(NetworkInterfaceId=e["NetworkInterfaceId"])
ec2.delete_security_group(GroupId=sg)
ec2.delete_subnet(SubnetId=subnet_id)
ec2.delete_subnet(SubnetId=subnet2)
ec2.delete_vpc(VpcId=vpc_id)
assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Vpcs"] == []
print("lab flow: ok")
