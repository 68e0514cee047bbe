"""Helpers for evnet's EC2 Query API tests: REST calls for setup, boto3
clients on the server's /ec2 endpoint, and a checker that validates every
EC2 response against botocore's own EC2 service model (the shapes AWS
publishes), element by element."""

import json
import os
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

URL = os.environ["EVNET_URL"]
ADMIN = os.environ["EVNET_ADMIN_TOKEN"]
ENDPOINT = URL + "/ec2"
REGION = "us-east-1"
NS = "{http://ec2.amazonaws.com/doc/2016-11-15/}"


def rest(method, path, token, body=None):
    """One REST call; answers (status, parsed JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw.strip() else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw.strip() else None)


def ok(method, path, token, body=None):
    status, v = rest(method, path, token, body)
    assert 200 <= status < 300, f"{method} {path} answered {status}: {v}"
    return v


def tenant(name, key=None):
    """A new tenant with its bearer token and (unless `key` is given) an
    access key made with its own token."""
    t = ok("POST", "/v1/tenants", ADMIN, {"name": name})
    k = key or ok("POST", f"/v1/tenants/{t['id']}/access-keys", t["token"], {})
    return {"id": t["id"], "token": t["token"], "key": k["access_key_id"], "secret": k["secret_access_key"]}


class ShapeChecker:
    """A `before-parse` hook: checks the raw XML of each answer against the
    operation's output shape in botocore's EC2 model — the root element and
    namespace, `requestId`, that every element is a member of its shape, that
    lists hold `item`s, and that scalars parse as their types and enums hold
    one of their values. Errors must have EC2's error shape."""

    def __init__(self):
        self.problems = []
        self.seen = {}

    def __call__(self, operation_model, response_dict, **_):
        op = operation_model.name
        self.seen[op] = self.seen.get(op, 0) + 1
        body = response_dict["body"]
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            self.problems.append(f"{op}: answer is not XML ({e}): {body[:200]!r}")
            return
        if response_dict["status_code"] >= 300:
            code = root.find("./Errors/Error/Code")
            msg = root.find("./Errors/Error/Message")
            rid = root.find("./RequestID")
            if root.tag != "Response" or code is None or msg is None or rid is None or not code.text:
                self.problems.append(f"{op}: error answer is not EC2's error shape: {body[:300]!r}")
            return
        want = f"{NS}{op}Response"
        if root.tag != want:
            self.problems.append(f"{op}: root element {root.tag}, expected {want}")
        if root.find(f"{NS}requestId") is None:
            self.problems.append(f"{op}: no requestId")
        shape = operation_model.output_shape
        children = [c for c in root if c.tag != f"{NS}requestId"]
        if shape is None:
            for c in children:
                if c.tag != f"{NS}return":
                    self.problems.append(f"{op}: element {c.tag} in an answer without output shape")
            return
        self.structure(op, op, children, shape)

    def structure(self, op, path, children, shape):
        members = {}
        for name, m in shape.members.items():
            members[m.serialization.get("name", name)] = m
            members.setdefault(name[0].lower() + name[1:], m)
        for c in children:
            tag = c.tag.replace(NS, "")
            if tag == "return" and path == op:
                if c.text not in ("true", "false"):
                    self.problems.append(f"{path}.return: {c.text!r} is not a boolean")
                continue
            m = members.get(tag)
            if m is None:
                self.problems.append(f"{path}: <{tag}> is not a member of {shape.name}")
                continue
            self.value(op, f"{path}.{tag}", c, m)

    def value(self, op, path, elem, shape):
        t = shape.type_name
        if t == "structure":
            self.structure(op, path, list(elem), shape)
        elif t == "list":
            item = shape.member.serialization.get("name", "member")
            for i, c in enumerate(elem):
                tag = c.tag.replace(NS, "")
                if tag != item:
                    self.problems.append(f"{path}: list holds <{tag}>, expected <{item}>")
                    continue
                self.value(op, f"{path}[{i}]", c, shape.member)
        else:
            text = elem.text or ""
            try:
                if t in ("integer", "long"):
                    int(text)
                elif t in ("float", "double"):
                    float(text)
                elif t == "boolean":
                    assert text in ("true", "false")
                elif t == "timestamp":
                    parse_timestamp(text)
                elif t == "string" and shape.enum:
                    assert text in shape.enum, f"not one of {shape.enum}"
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                self.problems.append(f"{path}: {text!r} is not a valid {shape.name} ({t}): {e}")


CHECKER = ShapeChecker()


def client(t, secret=None, checker=CHECKER):
    c = boto3.client(
        "ec2",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=t["key"],
        aws_secret_access_key=secret or t["secret"],
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    if checker is not None:
        c.meta.events.register("before-parse.ec2.*", checker)
    return c


def error_code(fn, *args, **kwargs):
    """The EC2 error code a call answers (it must fail)."""
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError(f"{getattr(fn, '__name__', fn)} succeeded; expected an error")


def expect_error(code, fn, *args, **kwargs):
    got = error_code(fn, *args, **kwargs)
    assert got == code, f"{getattr(fn, '__name__', fn)}: expected {code}, got {got}"


def wait_for(what, cond, timeout=20.0):
    """Polls `cond` until it answers a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def tags(d):
    return {t["Key"]: t["Value"] for t in d.get("Tags", d.get("TagSet", []))}
