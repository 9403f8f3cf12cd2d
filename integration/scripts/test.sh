#!/usr/bin/env bash
# The test command (README and CI): installs what is missing, builds, runs the unit
# tests, then the end-to-end suites (a private containerd, real QEMU) on the host's
# containerd, again on containerd 1.7 and 2.x fetched from Debian's archive, and on the
# newest containerd release built from its Go module.
# Must run as root: the suites start containerd, QEMU and create cgroups.
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/scripts/prepare.sh
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root (it starts its own containerd and QEMU)" >&2
  exit 1
fi
[ "${SKIP_INSTALL:-0}" = 1 ] || bash integration/scripts/install-deps.sh
# CONTAINERD_SERIES="" skips the other releases (for a quick local run); CI never sets it.
# 1.7 and 2: Debian's packages (fetch-containerd.sh); latest: the newest release, built
# from the Go module proxy (build-containerd.sh).
series_list=${CONTAINERD_SERIES-1.7 2 latest}

# The clients the suites drive (nerdctl, crictl, kubelet) and the newest containerd are built
# from the Go module proxy and cached outside git. On a new machine they are the longest part
# of the run, so they build in the background while cargo builds (its links leave a core idle).
go_builds=$(mktemp -d)
# Each build is a process group of its own, so that a run that ends early stops the whole of
# every build still going (its go commands too) before their output goes.
build_groups=()
trap 'for group in "${build_groups[@]}"; do kill -- "-$group" 2>/dev/null || true; done; wait || true; rm -rf "$go_builds"' EXIT
build_in_background() { # build_in_background NAME SCRIPT [ARGS...]: SCRIPT's output (a directory) in $go_builds/NAME
  local name=$1
  shift
  OUT=$go_builds/$name setsid bash -c 'bash "$@" > "$OUT" 2> "$OUT.log" || touch "$OUT.failed"' build "$@" &
  build_groups+=("$!")
}
built() { # built NAME: the directory the build printed; its log and a failure if it failed
  if [ -e "$go_builds/$1.failed" ]; then
    cat "$go_builds/$1.log" >&2
    echo "test.sh: building $1 failed" >&2
    return 1
  fi
  tail -n 1 "$go_builds/$1.log" >&2
  cat "$go_builds/$1"
}
build_in_background nerdctl integration/scripts/build-nerdctl.sh
build_in_background crictl integration/scripts/build-crictl.sh
build_in_background kubelet integration/scripts/build-kubernetes.sh kubelet
case " $series_list " in *" latest "*) build_in_background containerd integration/scripts/build-containerd.sh ;; esac

SKIP_INSTALL=1 prepare test.sh --tests
# The Debian package of the shim just built, for the package suite (dpkg -i, dpkg -r).
SHIM_VM_DEB=$(bash packaging/build-deb.sh)
export SHIM_VM_DEB
wait
build_groups=() # all ended: their group ids may be anyone's now
NERDCTL_BIN_DIR=$(built nerdctl)
CRICTL_BIN_DIR=$(built crictl)
KUBELET_BIN_DIR=$(built kubelet)
export NERDCTL_BIN_DIR CRICTL_BIN_DIR KUBELET_BIN_DIR
# VMs boot under software emulation on small machines: two tests at a time.
threads=${TEST_THREADS:-2}
# A hang guard per suite run, not a target: one run takes 1-2 minutes here. timeout
# signals its whole process group (cargo, the tests, their containerd and QEMU).
suite_timeout=${SUITE_TIMEOUT:-20m}

failed=()
ran=()
run_suites() { # run_suites LABEL [cargo test args...]
  local label=$1 start=$SECONDS; shift
  echo "== $label"
  if timeout -k 30 "$suite_timeout" cargo test --release --no-fail-fast "$@" -- --test-threads="$threads"; then
    echo "== $label: passed in $((SECONDS - start)) s"
  else
    echo "== $label: FAILED after $((SECONDS - start)) s" >&2
    failed+=("$label")
  fi
}

# Style and lints first: cheap, and a failure here is named like any suite's.
echo "== formatting and lints"
if cargo fmt --all -- --check && cargo clippy -q --workspace --all-targets --all-features -- -D warnings; then
  echo "== formatting and lints: clean"
else
  echo "== formatting and lints: FAILED" >&2
  failed+=("formatting and lints")
fi

# Selected together so that cargo builds the workspace's dependencies once, with one feature set.
run_suites "unit tests, the layering check, the cold-text placement, the QMP client against real QEMU, the guest-agent client against real qemu-ga, pod namespaces" --workspace --lib --bins --test qemu --test agent --test layers --test cold_text --test pod_namespace
run_suites "doc examples" --workspace --doc
host_version=$(containerd --version | awk '{print $3}')
# The Debian guest's suite, minutes a boot under TCG, on this release only.
run_suites "end-to-end suites on containerd $host_version (host), with the Debian guest" -p integration --tests --features debian-guest
ran+=("$host_version")

for series in $series_list; do
  case "$series" in
    latest) bin=$(built containerd) || bin= ;;
    *) bin=$(bash integration/scripts/fetch-containerd.sh "$series") || bin= ;;
  esac
  if [ -z "$bin" ]; then
    failed+=("containerd $series: could not be fetched or built")
    continue
  fi
  version=$(cat "$bin/../../VERSION")
  CONTAINERD_BIN_DIR=$bin run_suites "end-to-end suites on containerd $version" -p integration --tests
  ran+=("$version")
done

if [ ${#failed[@]} -gt 0 ]; then
  printf '== FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
[ -n "$series_list" ] || echo "== SKIPPED: containerd 1.7, 2.x and the newest release (CONTAINERD_SERIES is empty)" >&2
echo "== all suites passed on containerd ${ran[*]}"
