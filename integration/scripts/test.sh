#!/usr/bin/env bash
# The test command (README and CI): installs what is missing, builds, runs the unit
# tests and the end-to-end suites (a private containerd, real QEMU), then the
# end-to-end suites again on containerd 1.7 and 2.x fetched from Debian's archive.
# Must run as root: the suites start containerd, QEMU and create cgroups.
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/scripts/prepare.sh
prepare test.sh --tests
# VMs boot under software emulation on small machines: two tests at a time.
threads=${TEST_THREADS:-2}

failed=()
host_version=$(containerd --version | awk '{print $3}')
echo "== unit tests, and end-to-end suites on the host's containerd $host_version"
cargo test --release --workspace -- --test-threads="$threads" || failed+=("containerd $host_version (host)")

# CONTAINERD_SERIES="" skips the other releases (for a quick local run).
for series in ${CONTAINERD_SERIES-1.7 2}; do
  if ! bin=$(bash integration/scripts/fetch-containerd.sh "$series"); then
    failed+=("containerd $series: could not be fetched")
    continue
  fi
  version=$(cat "$bin/../../VERSION")
  echo "== end-to-end suites on containerd $version"
  CONTAINERD_BIN_DIR=$bin cargo test --release -p integration --tests -- --test-threads="$threads" \
    || failed+=("containerd $version")
done

if [ ${#failed[@]} -gt 0 ]; then
  printf '== FAILED on: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "== all suites passed on containerd $host_version and ${CONTAINERD_SERIES-1.7 2}"
