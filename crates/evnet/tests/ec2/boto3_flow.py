"""A tenant's whole flow through the real boto3 client pointed at evnet's
EC2 endpoint: VPCs, subnets, groups with rules, ENIs, instances with those
ENIs, an ENI moved between instances, bandwidth through `evnet:` tags,
routes, peering, paging, errors, other tenants' ids, refused signatures,
then teardown. Every answer's XML is checked against botocore's EC2 model."""

import datetime
import os
import sys
import threading
import urllib.request

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from common import (ADMIN, CHECKER, ENDPOINT, REGION, client, error_code, expect_error, ok, rest, tags, tenant,
                    wait_for)

SUFFIX = os.urandom(3).hex()
A = tenant(f"ec2-a-{SUFFIX}")
B = tenant(f"ec2-b-{SUFFIX}")
ec2 = client(A)
other = client(B)

# --- Hosts: registered and kept alive the way agents do, reporting the
# instances placed on them as running. --------------------------------------
# Each host registers with a single-use bootstrap token and then speaks
# with the credential it was given.
hosts = [
    ok("POST", "/v1/hosts", ok("POST", "/v1/bootstrap-tokens", ADMIN, {})["token"],
       {"name": f"ec2-h{i}-{SUFFIX}", "underlay_ip": f"198.18.{200 + i}.{int(SUFFIX[:2], 16)}", "nic_mbps": 10000})
    for i in range(2)
]
stop = threading.Event()


def heartbeat_once():
    for h in hosts:
        _, page = rest("GET", f"/v1/instances?host_id={h['id']}&limit=1000", ADMIN)
        running = [i["id"] for i in (page or {}).get("items", [])]
        rest("POST", f"/v1/hosts/{h['id']}/heartbeat", h["credential"], {"applied_generation": 0, "running_instances": running})


def heartbeats():
    while not stop.is_set():
        heartbeat_once()
        stop.wait(0.2)


heartbeat_once()
threading.Thread(target=heartbeats, daemon=True).start()

# --- VPC and subnets ---------------------------------------------------------
vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "flow"}, {"Key": "team", "Value": "net"}]}])["Vpc"]
vpc_id = vpc["VpcId"]
assert vpc["CidrBlock"] == "10.20.0.0/16" and vpc["State"] == "available", vpc
assert tags(vpc) == {"Name": "flow", "team": "net"}, vpc
# The same id is valid in the REST API, with the Name tag as its name.
rv = ok("GET", f"/v1/vpcs/{vpc_id}", A["token"])
assert rv["name"] == "flow" and rv["cidr_block"] == "10.20.0.0/16", rv
assert [v["VpcId"] for v in ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["fl*"]}])["Vpcs"]] == [vpc_id]
assert ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["nope"]}])["Vpcs"] == []
assert ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute="enableDnsSupport")["EnableDnsSupport"]["Value"] is False
ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsSupport={"Value": False})
expect_error("UnsupportedOperation", ec2.modify_vpc_attribute, VpcId=vpc_id, EnableDnsHostnames={"Value": True})

s1 = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.20.1.0/24", TagSpecifications=[{"ResourceType": "subnet", "Tags": [{"Key": "tier", "Value": "web"}]}])["Subnet"]
s2 = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.20.2.0/24")["Subnet"]
assert s1["AvailableIpAddressCount"] == 251 and s1["VpcId"] == vpc_id, s1
expect_error("InvalidSubnet.Conflict", ec2.create_subnet, VpcId=vpc_id, CidrBlock="10.20.1.0/25")
expect_error("InvalidSubnet.Range", ec2.create_subnet, VpcId=vpc_id, CidrBlock="10.99.0.0/24")
expect_error("InvalidParameterValue", ec2.create_subnet, VpcId=vpc_id, CidrBlock="10.20.300.0/24")
expect_error("InvalidVpcID.NotFound", ec2.create_subnet, VpcId="vpc-00000000000000aa", CidrBlock="10.20.9.0/24")
expect_error("MissingParameter", ec2.create_vpc)
got = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
assert sorted(s["SubnetId"] for s in got) == sorted([s1["SubnetId"], s2["SubnetId"]]), got
got = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "tag:tier", "Values": ["web"]}])["Subnets"]
assert [s["SubnetId"] for s in got] == [s1["SubnetId"]], got
expect_error("InvalidParameterValue", ec2.describe_subnets, Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
ec2.modify_subnet_attribute(SubnetId=s1["SubnetId"], MapPublicIpOnLaunch={"Value": False})
expect_error("UnsupportedOperation", ec2.modify_subnet_attribute, SubnetId=s1["SubnetId"], MapPublicIpOnLaunch={"Value": True})

# --- Security groups ---------------------------------------------------------
web = ec2.create_security_group(GroupName="web", Description="web servers", VpcId=vpc_id)["GroupId"]
db = ec2.create_security_group(GroupName="db", Description="databases", VpcId=vpc_id,
                               TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "tier", "Value": "db"}]}])["GroupId"]
expect_error("InvalidGroup.Duplicate", ec2.create_security_group, GroupName="web", Description="again", VpcId=vpc_id)
ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]}])
expect_error("InvalidPermission.Duplicate", ec2.authorize_security_group_ingress, GroupId=web,
             IpPermissions=[{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
ec2.revoke_security_group_egress(GroupId=db, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
ec2.authorize_security_group_egress(GroupId=db, IpPermissions=[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.20.0.0/16"}]}])
g = ec2.describe_security_groups(GroupIds=[db])["SecurityGroups"][0]
assert g["GroupName"] == "db" and g["Description"] == "databases", g
assert g["IpPermissions"] == [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"UserId": A["id"], "GroupId": web, "VpcId": vpc_id}], "IpRanges": []}], g
assert g["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "10.20.0.0/16"}], g
rg = ok("GET", f"/v1/security-groups/{db}", A["token"])
assert rg["ingress"] == [{"protocol": "tcp", "from_port": 5432, "to_port": 5432, "source_group_id": web}], rg
assert {x["GroupName"] for x in ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]} == {"default", "web", "db"}
assert [x["GroupId"] for x in ec2.describe_security_groups(Filters=[{"Name": "ip-permission.group-id", "Values": [web]}])["SecurityGroups"]] == [db]
expect_error("InvalidPermission.NotFound", ec2.revoke_security_group_ingress, GroupId=web,
             IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])

# --- ENIs ---------------------------------------------------------------------
def eni(subnet, **kw):
    return ec2.create_network_interface(SubnetId=subnet, Groups=[web], **kw)["NetworkInterface"]


e1 = eni(s1["SubnetId"], Description="front",
         TagSpecifications=[{"ResourceType": "network-interface", "Tags": [{"Key": "evnet:guaranteed-mbps", "Value": "100"}, {"Key": "role", "Value": "front"}]}])
e2 = eni(s1["SubnetId"], PrivateIpAddress="10.20.1.50")
e3 = eni(s1["SubnetId"], SecondaryPrivateIpAddressCount=1)
assert e1["Status"] == "available" and e1["Description"] == "front" and e1["MacAddress"], e1
assert tags(e1)["evnet:guaranteed-mbps"] == "100" and tags(e1)["role"] == "front", e1
assert ok("GET", f"/v1/enis/{e1['NetworkInterfaceId']}", A["token"])["bandwidth"]["guaranteed_mbps"] == 100
assert e2["PrivateIpAddress"] == "10.20.1.50", e2
assert len(e3["PrivateIpAddresses"]) == 2 and [p["Primary"] for p in e3["PrivateIpAddresses"]] == [True, False], e3
expect_error("InvalidIPAddress.InUse", eni, s1["SubnetId"], PrivateIpAddress="10.20.1.50")
expect_error("InvalidParameterValue", eni, s1["SubnetId"], PrivateIpAddress="10.20.1.1")
ec2.modify_network_interface_attribute(NetworkInterfaceId=e2["NetworkInterfaceId"], SourceDestCheck={"Value": False})
ec2.modify_network_interface_attribute(NetworkInterfaceId=e2["NetworkInterfaceId"], Groups=[web, db])
ec2.modify_network_interface_attribute(NetworkInterfaceId=e2["NetworkInterfaceId"], Description={"Value": "appliance"})
d2 = ec2.describe_network_interfaces(NetworkInterfaceIds=[e2["NetworkInterfaceId"]])["NetworkInterfaces"][0]
assert d2["SourceDestCheck"] is False and d2["Description"] == "appliance", d2
assert sorted(x["GroupId"] for x in d2["Groups"]) == sorted([web, db]), d2
assigned = ec2.assign_private_ip_addresses(NetworkInterfaceId=e2["NetworkInterfaceId"], SecondaryPrivateIpAddressCount=2)
added = [a["PrivateIpAddress"] for a in assigned["AssignedPrivateIpAddresses"]]
assert len(added) == 2, assigned
ec2.assign_private_ip_addresses(NetworkInterfaceId=e2["NetworkInterfaceId"], PrivateIpAddresses=["10.20.1.77"])
expect_error("InvalidIPAddress.InUse", ec2.assign_private_ip_addresses, NetworkInterfaceId=e3["NetworkInterfaceId"], PrivateIpAddresses=["10.20.1.77"])
ec2.unassign_private_ip_addresses(NetworkInterfaceId=e2["NetworkInterfaceId"], PrivateIpAddresses=[added[0]])
d2 = ec2.describe_network_interfaces(NetworkInterfaceIds=[e2["NetworkInterfaceId"]])["NetworkInterfaces"][0]
assert sorted(p["PrivateIpAddress"] for p in d2["PrivateIpAddresses"]) == sorted(["10.20.1.50", added[1], "10.20.1.77"]), d2
found = ec2.describe_network_interfaces(Filters=[{"Name": "addresses.private-ip-address", "Values": ["10.20.1.77"]}])["NetworkInterfaces"]
assert [x["NetworkInterfaceId"] for x in found] == [e2["NetworkInterfaceId"]], found

# --- Instances with those ENIs ----------------------------------------------
h0, h1 = hosts[0]["id"], hosts[1]["id"]
r1 = ec2.run_instances(MinCount=1, MaxCount=1, ImageId="evnet", InstanceType="t3.micro",
                       NetworkInterfaces=[{"NetworkInterfaceId": e1["NetworkInterfaceId"], "DeviceIndex": 0}],
                       Placement={"HostId": h0},
                       TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "front-1"}]}])
i1 = r1["Instances"][0]
assert i1["Placement"]["HostId"] == h0 and i1["PrivateIpAddress"] == e1["PrivateIpAddress"], i1
assert [n["NetworkInterfaceId"] for n in i1["NetworkInterfaces"]] == [e1["NetworkInterfaceId"]], i1
r2 = ec2.run_instances(MinCount=1, MaxCount=1, ImageId="evnet",
                       NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": s2["SubnetId"], "Groups": [db]},
                                          {"DeviceIndex": 1, "NetworkInterfaceId": e2["NetworkInterfaceId"]}],
                       Placement={"HostId": hosts[1]["name"]})
i2 = r2["Instances"][0]
assert i2["Placement"]["HostId"] == h1 and i2["SubnetId"] == s2["SubnetId"], i2
assert [n["Attachment"]["DeviceIndex"] for n in i2["NetworkInterfaces"]] == [0, 1], i2
r3 = ec2.run_instances(MinCount=2, MaxCount=2, ImageId="evnet", SubnetId=s2["SubnetId"], SecurityGroupIds=[web])
batch = [i["InstanceId"] for i in r3["Instances"]]
assert len(batch) == 2, r3
expect_error("InvalidParameterCombination", ec2.run_instances, MinCount=2, MaxCount=2, ImageId="evnet",
             NetworkInterfaces=[{"NetworkInterfaceId": e3["NetworkInterfaceId"], "DeviceIndex": 0}])
expect_error("InvalidNetworkInterface.InUse", ec2.run_instances, MinCount=1, MaxCount=1, ImageId="evnet",
             NetworkInterfaces=[{"NetworkInterfaceId": e1["NetworkInterfaceId"], "DeviceIndex": 0}])
expect_error("MissingParameter", ec2.run_instances, MinCount=1, MaxCount=1, ImageId="evnet")
expect_error("UnsupportedOperation", ec2.run_instances, MinCount=1, MaxCount=1, ImageId="evnet", SubnetId=s2["SubnetId"],
             Placement={"AvailabilityZone": "us-east-1a"})

ids = [i1["InstanceId"], i2["InstanceId"], *batch]
# Wait with describe_network_interfaces until the ENIs are in use, and with
# describe_instances until the hosts report the instances running.
wait_for("ENIs in use", lambda: all(
    x["Status"] == "in-use"
    for x in ec2.describe_network_interfaces(Filters=[{"Name": "attachment.instance-id", "Values": ids}])["NetworkInterfaces"]
) and len(ec2.describe_network_interfaces(Filters=[{"Name": "attachment.instance-id", "Values": ids}])["NetworkInterfaces"]) == 5)
wait_for("instances running", lambda: all(
    i["State"]["Name"] == "running"
    for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]
))
assert ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 5}) is None
found = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["front-1"]}])["Reservations"]
assert [r["Instances"][0]["InstanceId"] for r in found] == [i1["InstanceId"]], found
found = ec2.describe_instances(Filters=[{"Name": "network-interface.network-interface-id", "Values": [e2["NetworkInterfaceId"]]}])["Reservations"]
assert [r["Instances"][0]["InstanceId"] for r in found] == [i2["InstanceId"]], found

# --- Move an ENI from one instance to another -------------------------------
e3id = e3["NetworkInterfaceId"]
att = ec2.attach_network_interface(NetworkInterfaceId=e3id, InstanceId=i1["InstanceId"], DeviceIndex=1)["AttachmentId"]
d3 = ec2.describe_network_interfaces(NetworkInterfaceIds=[e3id])["NetworkInterfaces"][0]
assert d3["Status"] == "in-use" and d3["Attachment"]["InstanceId"] == i1["InstanceId"] and d3["Attachment"]["AttachmentId"] == att, d3
expect_error("InvalidNetworkInterface.InUse", ec2.attach_network_interface, NetworkInterfaceId=e3id, InstanceId=i2["InstanceId"], DeviceIndex=2)
expect_error("InvalidNetworkInterface.InUse", ec2.delete_network_interface, NetworkInterfaceId=e3id)
ec2.detach_network_interface(AttachmentId=att)
expect_error("InvalidAttachmentID.NotFound", ec2.detach_network_interface, AttachmentId=att)
ec2.attach_network_interface(NetworkInterfaceId=e3id, InstanceId=i2["InstanceId"], DeviceIndex=2)
d3 = wait_for("the moved ENI in use on its new instance", lambda: [
    x for x in ec2.describe_network_interfaces(NetworkInterfaceIds=[e3id])["NetworkInterfaces"]
    if x["Status"] == "in-use" and x["Attachment"]["InstanceId"] == i2["InstanceId"]])[0]
assert d3["MacAddress"] == e3["MacAddress"] and d3["PrivateIpAddress"] == e3["PrivateIpAddress"], d3
assert ok("GET", f"/v1/enis/{e3id}", A["token"])["attachment"]["instance_id"] == i2["InstanceId"]

# --- Bandwidth through evnet: tags, with the REST PATCH's effect -----------
ec2.create_tags(Resources=[e1["NetworkInterfaceId"]], Tags=[{"Key": "evnet:guaranteed-mbps", "Value": "300"}, {"Key": "evnet:limit-mbps", "Value": "2000"}])
bw = ok("GET", f"/v1/enis/{e1['NetworkInterfaceId']}", A["token"])["bandwidth"]
assert bw["guaranteed_mbps"] == 300 and bw["limit_mbps"] == 2000, bw
# Admission on the ENI's host refuses a guarantee the NIC cannot hold.
expect_error("InsufficientInstanceCapacity", ec2.create_tags, Resources=[e1["NetworkInterfaceId"]], Tags=[{"Key": "evnet:guaranteed-mbps", "Value": "9500"}, {"Key": "evnet:limit-mbps", "Value": "10000"}])
expect_error("InvalidParameterValue", ec2.create_tags, Resources=[e1["NetworkInterfaceId"]], Tags=[{"Key": "evnet:limit-mbps", "Value": "fast"}])
expect_error("InvalidParameterValue", ec2.create_tags, Resources=[vpc_id], Tags=[{"Key": "evnet:limit-mbps", "Value": "10"}])
ec2.delete_tags(Resources=[e1["NetworkInterfaceId"]], Tags=[{"Key": "evnet:limit-mbps"}])
bw = ok("GET", f"/v1/enis/{e1['NetworkInterfaceId']}", A["token"])["bandwidth"]
assert bw["guaranteed_mbps"] == 300 and bw.get("limit_mbps") is None, bw
ec2.create_tags(Resources=[vpc_id, s2["SubnetId"]], Tags=[{"Key": "env", "Value": "test"}])
assert tags(ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0])["env"] == "test"
ec2.delete_tags(Resources=[vpc_id], Tags=[{"Key": "env", "Value": "other"}])
assert tags(ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0])["env"] == "test"
ec2.delete_tags(Resources=[vpc_id], Tags=[{"Key": "env"}])
assert "env" not in tags(ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0])
rows = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [s2["SubnetId"]]}])["Tags"]
assert rows == [{"Key": "env", "ResourceId": s2["SubnetId"], "ResourceType": "subnet", "Value": "test"}], rows

# --- Route tables --------------------------------------------------------------
rtb = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]
rtb_id = rtb["RouteTableId"]
assert rtb["Routes"][0]["GatewayId"] == "local" and rtb["Routes"][0]["DestinationCidrBlock"] == "10.20.0.0/16", rtb
ec2.create_route(RouteTableId=rtb_id, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e2["NetworkInterfaceId"])
expect_error("RouteAlreadyExists", ec2.create_route, RouteTableId=rtb_id, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e3id)
expect_error("InvalidInternetGatewayID.NotFound", ec2.create_route, RouteTableId=rtb_id, DestinationCidrBlock="8.8.8.0/24", GatewayId="igw-0123456789abcdef0")
expect_error("UnsupportedOperation", ec2.create_route, RouteTableId=rtb_id, DestinationCidrBlock="8.8.8.0/24", TransitGatewayId="tgw-0123456789abcdef0")
ec2.replace_route(RouteTableId=rtb_id, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e3id)
assoc = ec2.associate_route_table(RouteTableId=rtb_id, SubnetId=s2["SubnetId"])
assert assoc["AssociationState"]["State"] == "associated", assoc
got = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [s2["SubnetId"]]}])["RouteTables"]
assert [t["RouteTableId"] for t in got] == [rtb_id], got
r = {x["DestinationCidrBlock"]: x for x in got[0]["Routes"]}
assert r["0.0.0.0/0"]["NetworkInterfaceId"] == e3id and r["0.0.0.0/0"]["State"] == "active", r
main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
assert len(main) == 1 and main[0]["Associations"][0]["Main"] is True, main
expect_error("DependencyViolation", ec2.delete_route_table, RouteTableId=rtb_id)
expect_error("InvalidParameterValue", ec2.delete_route, RouteTableId=rtb_id, DestinationCidrBlock="10.20.0.0/16")
ec2.delete_route(RouteTableId=rtb_id, DestinationCidrBlock="0.0.0.0/0")
expect_error("InvalidRoute.NotFound", ec2.delete_route, RouteTableId=rtb_id, DestinationCidrBlock="0.0.0.0/0")
ec2.disassociate_route_table(AssociationId=assoc["AssociationId"])
expect_error("InvalidAssociationID.NotFound", ec2.disassociate_route_table, AssociationId=assoc["AssociationId"])
ec2.delete_route_table(RouteTableId=rtb_id)
expect_error("InvalidRouteTableID.NotFound", ec2.describe_route_tables, RouteTableIds=[rtb_id])

# --- Peering -------------------------------------------------------------------
vpc2 = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
vpc3 = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
expect_error("InvalidVpcPeeringConnection.OverlappingCidr", ec2.create_vpc_peering_connection, VpcId=vpc_id, PeerVpcId=vpc3)
pcx = ec2.create_vpc_peering_connection(VpcId=vpc_id, PeerVpcId=vpc2)["VpcPeeringConnection"]
pcx_id = pcx["VpcPeeringConnectionId"]
assert pcx["Status"]["Code"] == "pending-acceptance", pcx
assert pcx["RequesterVpcInfo"]["VpcId"] == vpc_id and pcx["AccepterVpcInfo"]["CidrBlock"] == "10.30.0.0/16", pcx
assert ok("GET", f"/v1/peerings/{pcx_id}", A["token"])["status"] == "pending-acceptance"
main_id = main[0]["RouteTableId"]
ec2.create_route(RouteTableId=main_id, DestinationCidrBlock="10.30.0.0/16", VpcPeeringConnectionId=pcx_id)
def pcx_route_state():
    rt = ec2.describe_route_tables(RouteTableIds=[main_id])["RouteTables"][0]
    return [r["State"] for r in rt["Routes"] if r.get("VpcPeeringConnectionId") == pcx_id]
# A route to a peering not yet accepted forwards nothing.
assert pcx_route_state() == ["blackhole"], pcx_route_state()
acc = ec2.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)["VpcPeeringConnection"]
assert acc["Status"]["Code"] == "active", acc
got = ec2.describe_vpc_peering_connections(Filters=[{"Name": "status-code", "Values": ["active"]}, {"Name": "requester-vpc-info.vpc-id", "Values": [vpc_id]}])
assert [p["VpcPeeringConnectionId"] for p in got["VpcPeeringConnections"]] == [pcx_id], got
assert pcx_route_state() == ["active"], pcx_route_state()
# Deleting a peering leaves its routes, as blackholes (as in AWS).
assert ec2.delete_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)["Return"] is True
assert pcx_route_state() == ["blackhole"], pcx_route_state()
ec2.delete_route(RouteTableId=main_id, DestinationCidrBlock="10.30.0.0/16")
assert pcx_route_state() == [], pcx_route_state()

# --- Paging ----------------------------------------------------------------------
for n in range(7):
    ec2.create_subnet(VpcId=vpc2, CidrBlock=f"10.30.{n}.0/24")
page1 = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc2]}], MaxResults=5)
assert len(page1["Subnets"]) == 5 and page1.get("NextToken"), page1
page2 = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc2]}], MaxResults=5, NextToken=page1["NextToken"])
assert len(page2["Subnets"]) == 2 and not page2.get("NextToken"), page2
everything = [s["SubnetId"] for p in ec2.get_paginator("describe_subnets").paginate(Filters=[{"Name": "vpc-id", "Values": [vpc2]}], PaginationConfig={"PageSize": 5}) for s in p["Subnets"]]
assert sorted(everything) == sorted(s["SubnetId"] for s in page1["Subnets"] + page2["Subnets"]) and len(set(everything)) == 7, everything
expect_error("InvalidParameterValue", ec2.describe_subnets, MaxResults=5, NextToken="garbage")
enis_all = [x["NetworkInterfaceId"] for p in ec2.get_paginator("describe_network_interfaces").paginate(PaginationConfig={"PageSize": 5}) for x in p["NetworkInterfaces"]]
assert len(enis_all) == len(set(enis_all)) == 6, enis_all

# --- Elastic IPs: the admin's external network and the VPC's internet
# gateway come from the REST API (this endpoint serves no gateways) ---------
expect_error("InvalidParameterValue", ec2.allocate_address, Domain="vpc")  # no external network yet
net = ok("POST", "/v1/external-networks", ADMIN, {"cidr": "203.0.113.0/29"})
ok("PUT", f"/v1/tenants/{A['id']}/quotas", ADMIN, {"elastic_ips_per_tenant": 2})
a1 = ec2.allocate_address(Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [{"Key": "Name", "Value": "front-ip"}]}])
assert a1["PublicIp"] == "203.0.113.2" and a1["AllocationId"].startswith("eipalloc-") and a1["PublicIpv4Pool"] == net["id"] and a1["Domain"] == "vpc", a1
a2 = ec2.allocate_address(PublicIpv4Pool=net["id"])
expect_error("AddressLimitExceeded", ec2.allocate_address, Domain="vpc")
expect_error("UnsupportedOperation", ec2.allocate_address, Domain="standard")
e1id = e1["NetworkInterfaceId"]
expect_error("Gateway.NotAttached", ec2.associate_address, AllocationId=a1["AllocationId"], NetworkInterfaceId=e1id)
igw = ok("POST", "/v1/internet-gateways", A["token"], {"vpc_id": vpc_id})
# An instance stands for its interface at device index 0 (e1 on i1).
assoc = ec2.associate_address(AllocationId=a1["AllocationId"], InstanceId=i1["InstanceId"])["AssociationId"]
assert assoc == "eipassoc-" + a1["AllocationId"].split("-")[1], assoc
got = ec2.describe_addresses(AllocationIds=[a1["AllocationId"]])["Addresses"]
assert len(got) == 1 and got[0]["NetworkInterfaceId"] == e1id and got[0]["InstanceId"] == i1["InstanceId"], got
assert got[0]["PrivateIpAddress"] == e1["PrivateIpAddress"] and got[0]["AssociationId"] == assoc and tags(got[0]) == {"Name": "front-ip"}, got
assert [x["AllocationId"] for x in ec2.describe_addresses(Filters=[{"Name": "network-interface-id", "Values": [e1id]}])["Addresses"]] == [a1["AllocationId"]]
assert [x["AllocationId"] for x in ec2.describe_addresses(PublicIps=[a2["PublicIp"]])["Addresses"]] == [a2["AllocationId"]]
assert ok("GET", f"/v1/elastic-ips/{a1['AllocationId']}", A["token"])["association"] == {"eni_id": e1id, "private_ip": e1["PrivateIpAddress"]}
# One address per private address; moving one needs AllowReassociation.
expect_error("InvalidParameterValue", ec2.associate_address, AllocationId=a2["AllocationId"], NetworkInterfaceId=e1id)
expect_error("Resource.AlreadyAssociated", ec2.associate_address, AllocationId=a1["AllocationId"], NetworkInterfaceId=e3["NetworkInterfaceId"])
ec2.associate_address(AllocationId=a1["AllocationId"], NetworkInterfaceId=e3["NetworkInterfaceId"], AllowReassociation=True)
assert ec2.describe_addresses(AllocationIds=[a1["AllocationId"]])["Addresses"][0]["NetworkInterfaceId"] == e3["NetworkInterfaceId"]
expect_error("InvalidIPAddress.InUse", ec2.release_address, AllocationId=a1["AllocationId"])
ec2.create_tags(Resources=[a1["AllocationId"]], Tags=[{"Key": "team", "Value": "web"}])
rows = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["elastic-ip"]}])["Tags"]
assert sorted((r["ResourceId"], r["Key"], r["Value"]) for r in rows) == [(a1["AllocationId"], "Name", "front-ip"), (a1["AllocationId"], "team", "web")], rows
assert ok("GET", f"/v1/elastic-ips/{a1['AllocationId']}", A["token"])["name"] == "front-ip"

# Another tenant sees none of them.
assert other.describe_addresses()["Addresses"] == []
expect_error("InvalidAllocationID.NotFound", other.release_address, AllocationId=a1["AllocationId"])
expect_error("InvalidAssociationID.NotFound", other.disassociate_address, AssociationId=assoc)
ec2.disassociate_address(AssociationId=assoc)
assert "AssociationId" not in ec2.describe_addresses(AllocationIds=[a1["AllocationId"]])["Addresses"][0]
expect_error("InvalidAssociationID.NotFound", ec2.disassociate_address, AssociationId=assoc)
# The gateway as EC2 describes it: attached to its VPC.
gw = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])["InternetGateways"]
assert [(g["InternetGatewayId"], g["Attachments"]) for g in gw] == [(igw["id"], [{"VpcId": vpc_id, "State": "attached"}])], gw
assert other.describe_internet_gateways()["InternetGateways"] == []
# A NAT gateway with the second address, running on a host the server picks.
nat = ec2.create_nat_gateway(SubnetId=s1["SubnetId"], AllocationId=a2["AllocationId"], ClientToken="nat-1",
                             TagSpecifications=[{"ResourceType": "natgateway", "Tags": [{"Key": "Name", "Value": "out"}]}])["NatGateway"]
nat_id = nat["NatGatewayId"]
addr = nat["NatGatewayAddresses"][0]
assert nat["State"] == "available" and nat["VpcId"] == vpc_id and addr["PublicIp"] == a2["PublicIp"] and addr["AllocationId"] == a2["AllocationId"], nat
assert ok("GET", f"/v1/nat-gateways/{nat_id}", A["token"])["host_id"] in (h0, h1)
assert ec2.create_nat_gateway(SubnetId=s1["SubnetId"], AllocationId=a2["AllocationId"], ClientToken="nat-1",
                              TagSpecifications=[{"ResourceType": "natgateway", "Tags": [{"Key": "Name", "Value": "out"}]}])["NatGateway"]["NatGatewayId"] == nat_id
expect_error("Resource.AlreadyAssociated", ec2.create_nat_gateway, SubnetId=s1["SubnetId"], AllocationId=a2["AllocationId"])
expect_error("InvalidIPAddress.InUse", ec2.release_address, AllocationId=a2["AllocationId"])
assert [n["NatGatewayId"] for n in ec2.describe_nat_gateways(Filter=[{"Name": "vpc-id", "Values": [vpc_id]}])["NatGateways"]] == [nat_id]
assert other.describe_nat_gateways()["NatGateways"] == []
expect_error("NatGatewayNotFound", other.delete_nat_gateway, NatGatewayId=nat_id)
# Routes to the gateways: active while they exist, blackholes once gone.
routes = lambda: {x["DestinationCidrBlock"]: x for x in ec2.describe_route_tables(RouteTableIds=[main_id])["RouteTables"][0]["Routes"]}
ec2.create_route(RouteTableId=main_id, DestinationCidrBlock="198.51.100.0/24", GatewayId=igw["id"])
ec2.create_route(RouteTableId=main_id, DestinationCidrBlock="192.0.2.0/24", NatGatewayId=nat_id)
r = routes()
assert r["198.51.100.0/24"]["GatewayId"] == igw["id"] and r["198.51.100.0/24"]["State"] == "active", r
assert r["192.0.2.0/24"]["NatGatewayId"] == nat_id and r["192.0.2.0/24"]["State"] == "active", r
b_vpc = other.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
b_main = other.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [b_vpc]}])["RouteTables"][0]["RouteTableId"]
expect_error("InvalidInternetGatewayID.NotFound", other.create_route, RouteTableId=b_main, DestinationCidrBlock="198.51.100.0/24", GatewayId=igw["id"])
other.delete_vpc(VpcId=b_vpc)
assert ec2.delete_nat_gateway(NatGatewayId=nat_id)["NatGatewayId"] == nat_id
ok("DELETE", f"/v1/internet-gateways/{igw['id']}", A["token"])
r = routes()
assert r["198.51.100.0/24"]["State"] == "blackhole" and r["192.0.2.0/24"]["State"] == "blackhole", r
ec2.delete_route(RouteTableId=main_id, DestinationCidrBlock="198.51.100.0/24")
ec2.delete_route(RouteTableId=main_id, DestinationCidrBlock="192.0.2.0/24")
ec2.release_address(AllocationId=a1["AllocationId"])
ec2.release_address(PublicIp=a2["PublicIp"])
assert ec2.describe_addresses()["Addresses"] == []

# --- Errors ---------------------------------------------------------------------
expect_error("InvalidVpcID.NotFound", ec2.describe_vpcs, VpcIds=["vpc-00000000000000aa"])
expect_error("InvalidVpcID.NotFound", ec2.describe_vpcs, VpcIds=["not-a-vpc"])
expect_error("DependencyViolation", ec2.delete_vpc, VpcId=vpc_id)
expect_error("DependencyViolation", ec2.delete_subnet, SubnetId=s1["SubnetId"])
expect_error("DryRunOperation", ec2.create_vpc, CidrBlock="10.50.0.0/16", DryRun=True)
expect_error("DryRunOperation", ec2.describe_vpcs, DryRun=True)
assert not [v for v in ec2.describe_vpcs()["Vpcs"] if v["CidrBlock"] == "10.50.0.0/16"]
expect_error("UnsupportedOperation", ec2.create_internet_gateway)
expect_error("MissingParameter", ec2.create_nat_gateway, SubnetId=s1["SubnetId"])
expect_error("InvalidAction", ec2.describe_images)


def signed(params, auth_cls=SigV4Auth, key=A, secret=None, timestamp=None, method="POST"):
    """A request signed by botocore's own signer (optionally at another time)."""
    body = "&".join(f"{k}={v}" for k, v in params.items())
    creds = Credentials(key["key"], secret or key["secret"])
    if method == "POST":
        req = AWSRequest(method="POST", url=ENDPOINT + "/", data=body, headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    else:
        req = AWSRequest(method="GET", url=ENDPOINT + "/?" + body)
    signer = auth_cls(creds, "ec2", REGION) if auth_cls is SigV4Auth else auth_cls(creds, "ec2", REGION, expires=60)
    if timestamp:
        req.context["timestamp"] = timestamp
        signer._modify_request_before_signing(req)
        sig = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
        signer._inject_signature_to_request(req, sig)
    else:
        signer.add_auth(req)
    prepared = req.prepare()
    data = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    r = urllib.request.Request(prepared.url, data=data if method == "POST" else None, method=method, headers=dict(prepared.headers))
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


import urllib.error  # noqa: E402

status, text = signed({"Action": "NoSuchAction", "Version": "2016-11-15"})
assert status == 400 and "<Code>InvalidAction</Code>" in text and "<RequestID>" in text, (status, text)
status, text = signed({"Action": "DescribeVpcs", "Version": "2010-01-01"})
assert status == 400 and "<Code>InvalidParameterValue</Code>" in text, (status, text)
status, text = signed({"Action": "DescribeVpcs"})
assert status == 400 and "<Code>MissingParameter</Code>" in text, (status, text)
# A presigned GET (Signature Version 4 in the query string).
status, text = signed({"Action": "DescribeVpcs", "Version": "2016-11-15"}, auth_cls=SigV4QueryAuth, method="GET")
assert status == 200 and vpc_id in text, (status, text)

# --- Signatures refused -------------------------------------------------------
expect_error("SignatureDoesNotMatch", client(A, secret="x" * 40).describe_vpcs)
expect_error("AuthFailure", client({"key": "AKIAAAAAAAAAAAAAAAAA", "secret": A["secret"]}).describe_vpcs)
old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)).strftime("%Y%m%dT%H%M%SZ")
status, text = signed({"Action": "DescribeVpcs", "Version": "2016-11-15"}, timestamp=old)
assert status == 400 and "<Code>RequestExpired</Code>" in text, (status, text)
future = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)).strftime("%Y%m%dT%H%M%SZ")
status, text = signed({"Action": "DescribeVpcs", "Version": "2016-11-15"}, timestamp=future)
assert status == 400 and "<Code>RequestExpired</Code>" in text, (status, text)
recent = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=2)).strftime("%Y%m%dT%H%M%SZ")
status, text = signed({"Action": "DescribeVpcs", "Version": "2016-11-15"}, timestamp=recent)
assert status == 200, (status, text)
status, text = signed({"Action": "DescribeVpcs", "Version": "2016-11-15"}, secret="y" * 40)
assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in text, (status, text)
req = urllib.request.Request(ENDPOINT + "/?Action=DescribeVpcs&Version=2016-11-15")
try:
    urllib.request.urlopen(req, timeout=10)
    raise AssertionError("an unsigned request was answered")
except urllib.error.HTTPError as e:
    assert e.code == 401 and "<Code>AuthFailure</Code>" in e.read().decode()

# --- Another tenant's key: A's ids do not exist for B ---------------------------
expect_error("InvalidVpcID.NotFound", other.describe_vpcs, VpcIds=[vpc_id])
expect_error("InvalidSubnetID.NotFound", other.describe_subnets, SubnetIds=[s1["SubnetId"]])
expect_error("InvalidNetworkInterfaceID.NotFound", other.describe_network_interfaces, NetworkInterfaceIds=[e1["NetworkInterfaceId"]])
expect_error("InvalidGroup.NotFound", other.describe_security_groups, GroupIds=[web])
expect_error("InvalidInstanceID.NotFound", other.describe_instances, InstanceIds=[i1["InstanceId"]])
expect_error("InvalidInstanceID.NotFound", other.terminate_instances, InstanceIds=[i1["InstanceId"]])
expect_error("InvalidSubnetID.NotFound", other.delete_subnet, SubnetId=s1["SubnetId"])
expect_error("InvalidVpcID.NotFound", other.create_subnet, VpcId=vpc_id, CidrBlock="10.20.77.0/24")
expect_error("InvalidNetworkInterfaceID.NotFound", other.create_tags, Resources=[e1["NetworkInterfaceId"]], Tags=[{"Key": "x", "Value": "y"}])
assert other.describe_vpcs()["Vpcs"] == [] and other.describe_network_interfaces()["NetworkInterfaces"] == []
# B's own VPC is B's alone.
bv = other.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
expect_error("InvalidVpcID.NotFound", ec2.delete_vpc, VpcId=bv)
other.delete_vpc(VpcId=bv)

# --- Teardown -------------------------------------------------------------------
term = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
assert [t["CurrentState"]["Name"] for t in term] == ["terminated"] * len(ids) and term[0]["PreviousState"]["Name"] == "running", term
expect_error("InvalidInstanceID.NotFound", ec2.describe_instances, InstanceIds=[i1["InstanceId"]])
leftover = ec2.describe_network_interfaces()["NetworkInterfaces"]
assert leftover and all(x["Status"] == "available" for x in leftover), leftover
for x in leftover:
    ec2.delete_network_interface(NetworkInterfaceId=x["NetworkInterfaceId"])
expect_error("DependencyViolation", ec2.delete_security_group, GroupId=web)
ec2.delete_security_group(GroupId=db)
ec2.delete_security_group(GroupId=web)
for s in ec2.describe_subnets()["Subnets"]:
    ec2.delete_subnet(SubnetId=s["SubnetId"])
for v in [vpc_id, vpc2, vpc3]:
    ec2.delete_vpc(VpcId=v)
assert ec2.describe_vpcs()["Vpcs"] == [] and ec2.describe_subnets()["Subnets"] == []
stop.set()

# --- Every implemented action was called, and every answer had its shape ------
actions = os.environ.get("EVNET_EC2_ACTIONS", "").split(",")
missing = [a for a in actions if a and a not in CHECKER.seen]
assert not missing, f"actions the flow never called: {missing}"
if CHECKER.problems:
    print("\n".join(CHECKER.problems), file=sys.stderr)
    raise AssertionError(f"{len(CHECKER.problems)} answers do not match botocore's EC2 model")
print(f"boto3 flow ok: {sum(CHECKER.seen.values())} answers over {len(CHECKER.seen)} operations matched botocore's EC2 model")
