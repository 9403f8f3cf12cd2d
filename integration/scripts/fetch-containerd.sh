#!/usr/bin/env bash
# Fetches a containerd release from Debian's archive without touching this machine's apt
# state (sources, lists, caches, preferences, dpkg status), and unpacks it under
# $SHIM_VM_CACHE/containerd/<series>/ (default /var/tmp/containerd-shim-vm/cache: outside git,
# so a machine that ran CI before reuses it from any clone).
# Usage: fetch-containerd.sh SERIES       SERIES: 1.7 (Debian trixie) or 2 (Debian sid: 2.1 today)
# Prints the directory holding containerd, ctr and containerd-shim-runc-v2.
set -euo pipefail
series=${1:?usage: fetch-containerd.sh 1.7|2}
case "$series" in
  1.7) suite=trixie ;;
  2) suite=sid ;;
  *) echo "fetch-containerd.sh: unknown series $series (known: 1.7, 2)" >&2; exit 2 ;;
esac
cache=${SHIM_VM_CACHE:-/var/tmp/containerd-shim-vm/cache}/containerd
out=$cache/$series
mkdir -p "$cache"
# Clones share the cache: one fetch at a time.
exec 9>"$cache/.lock"
flock 9
if [ -x "$out/usr/bin/containerd" ]; then
  echo "$out/usr/bin"
  exit 0
fi

apt_dir=$cache/apt-$suite
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/cache"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" > "$apt_dir/sources.list"
# Every file apt reads or writes is private: the host's pins do not apply, its package
# caches are not rewritten from the other suite's lists, and its lock is not taken.
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=/dev/null
          -o Dir::Etc::preferences=/dev/null -o Dir::Etc::preferencesparts=/dev/null
          -o "Dir::State::Lists=$apt_dir/lists" -o Dir::State::status=/dev/null
          -o "Dir::Cache=$apt_dir/cache" -o "Dir::Cache::archives=$apt_dir/archives"
          -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" -q update >&2
version=$(apt-cache "${apt_opts[@]}" policy containerd | awk '/Candidate:/ {print $2}')
case "$version" in
  "$series".*) ;;
  *) echo "fetch-containerd.sh: $suite offers containerd ${version:-nothing}, not $series.x" >&2; exit 1 ;;
esac
rm -f "$apt_dir"/containerd_*.deb
(cd "$apt_dir" && apt-get "${apt_opts[@]}" -q download "containerd=$version" >&2)
debs=("$apt_dir"/containerd_*.deb)
[ ${#debs[@]} = 1 ] && [ -f "${debs[0]}" ] || { echo "fetch-containerd.sh: apt-get download left ${debs[*]}" >&2; exit 1; }
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
dpkg-deb -x "${debs[0]}" "$out.tmp"
echo "$version" > "$out.tmp/VERSION"
mv "$out.tmp" "$out"
echo "$out/usr/bin"
