#!/usr/bin/env bash
# The whole test suite: unit, property, HTTP, store conformance, crash, and
# (as root) the kernel and lab tests in network namespaces. Root tests fail,
# never skip, when CI=true and they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_="" ; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
$sudo_ scripts/setup.sh
cargo build --workspace --all-targets
# One test at a time: the root tests measure throughput and must not share
# the two cores with each other.
cargo test --workspace --no-fail-fast -- --test-threads=1
