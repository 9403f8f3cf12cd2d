#!/usr/bin/env bash
# The kubectl path end to end (integration/tests/kubectl.rs): a one-node cluster of Kubernetes'
# own etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet on a private
# containerd with the VM runtime, driven with kubectl as the README tells a user (the
# RuntimeClass as shipped, a VM pod beside a runc pod, get -o wide, logs, attach, delete).
#
# Not part of CI: building the control plane from the Go module proxy takes longer than a new
# machine's CI hour allows (the standalone kubelet suite runs there). Everything it builds is
# cached outside git ($SHIM_VM_CACHE, default /var/tmp/containerd-shim-vm/cache), so a second run
# starts at once. Needs root, Go and cargo, as the test command does.
# Usage: integration/k8s/run.sh    CONTAINERD_BIN_DIR=... picks another containerd than the host's.
set -euo pipefail
cd "$(dirname "$0")/../.."

source integration/scripts/prepare.sh
prepare k8s/run.sh --tests --features integration/kubectl
for component in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
  dir=$(bash integration/scripts/build-kubernetes.sh "$component")
  export "$(tr 'a-z-' 'A-Z_' <<<"$component")_BIN_DIR=$dir"
done
CRICTL_BIN_DIR=$(bash integration/scripts/build-crictl.sh)
export CRICTL_BIN_DIR
# A hang guard, not a target: the suite takes under a minute here.
timeout -k 30 20m cargo test --release -p integration --features kubectl --test kubectl -- --test-threads=1
