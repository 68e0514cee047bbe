"""The EC2 endpoint under a small rate limit (the server runs with
--rate-limit-rps 2 --rate-limit-burst 5): a tenant's signed requests draw on
its own bucket and, past it, answer AWS's RequestLimitExceeded (botocore's
retries off, so the refusal is seen); another tenant is not slowed by it.
Every changing EC2 action is in the audit log under the tenant's name with
its action; describes are not."""

import time

from botocore.exceptions import ClientError

from common import ADMIN, client, ok, tenant, wait_for

A = tenant("limits-a")
B = tenant("limits-b")
a = client(A)  # botocore's retries are off in these clients


def code_of(fn, *args, **kwargs):
    """None when the call is answered, else its EC2 error code."""
    try:
        fn(*args, **kwargs)
        return None
    except ClientError as e:
        return e.response["Error"]["Code"]

# Past the burst, a refusal with AWS's throttling code. Calls are made until
# the first refusal (at most 100): on a loaded machine one call can take long
# enough for the bucket to refill between a few of them.
codes = []
while "RequestLimitExceeded" not in codes and len(codes) < 100:
    codes.append(code_of(a.describe_vpcs))
assert "RequestLimitExceeded" in codes, codes
assert codes[0] is None, codes
assert set(codes) <= {None, "RequestLimitExceeded"}, codes
# Another tenant has its own bucket.
b = client(B)
assert code_of(b.describe_vpcs) is None
# The bucket refills: after a second and a half, A is answered again.
time.sleep(1.5)
a.create_vpc(CidrBlock="10.40.0.0/16")

# The change is audited under A's name, with the action; describes are not.
def audited():
    items = ok("GET", "/v1/audit?limit=1000", ADMIN)["items"]
    return [r for r in items if r["caller"] == f"tenant:{A['id']}" and r["route"].startswith("/ec2")]

rows = wait_for("the audit record of CreateVpc", lambda: [r for r in audited() if r["route"] == "/ec2?Action=CreateVpc" and r["status"] == 200])
assert not [r for r in audited() if "Describe" in r["route"]], audited()
print("limits flow: ok")
