#!/usr/bin/env bash
# Fetches a containerd release from Debian's archive without touching this machine's
# apt sources, and unpacks it under .cache/containerd/<series>/ (outside git).
# Usage: fetch-containerd.sh SERIES       SERIES: 1.7 (Debian trixie) or 2 (Debian sid: 2.1 today)
# Prints the directory holding containerd, ctr and containerd-shim-runc-v2.
set -euo pipefail
series=${1:?usage: fetch-containerd.sh 1.7|2}
case "$series" in
  1.7) suite=trixie ;;
  2) suite=sid ;;
  *) echo "fetch-containerd.sh: unknown series $series (known: 1.7, 2)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=$root/.cache/containerd
out=$cache/$series
if [ -x "$out/usr/bin/containerd" ]; then
  echo "$out/usr/bin"
  exit 0
fi

apt_dir=$cache/apt-$suite
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=/dev/null
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::archives=$apt_dir/archives"
          -o APT::Sandbox::User=root -o Debug::NoLocking=1)
apt-get "${apt_opts[@]}" -q update >&2
version=$(apt-cache "${apt_opts[@]}" policy containerd | awk '/Candidate:/ {print $2}')
case "$version" in
  "$series".*) ;;
  *) echo "fetch-containerd.sh: $suite offers containerd $version, not $series.x" >&2; exit 1 ;;
esac
(cd "$apt_dir" && apt-get "${apt_opts[@]}" -q download "containerd=$version" >&2)
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
dpkg-deb -x "$apt_dir"/containerd_*.deb "$out.tmp"
echo "$version" > "$out.tmp/VERSION"
mv "$out.tmp" "$out"
echo "$out/usr/bin"
