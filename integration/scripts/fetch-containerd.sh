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

# The Debian mirror this machine already uses: the first archive URI its apt sources name
# for its own suite with the main component. (Read from the files, not from apt's lists,
# which may not exist yet.)
host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
sources_files() {
  [ ! -f /etc/apt/sources.list ] || echo /etc/apt/sources.list
  # apt reads the parts in name order, .list and .sources alike.
  local f
  for f in /etc/apt/sources.list.d/*; do
    case "$f" in *.list|*.sources) [ -f "$f" ] && echo "$f" ;; esac
  done
}
mirror_in() { # mirror_in FILE: the first "deb URI $host_suite ... main ..." entry's URI
  case "$1" in
    *.list) # one-line format: deb [options] URI SUITE COMPONENT...
      awk -v suite="$host_suite" '
        { sub(/#.*/, "") }
        $1 == "deb" {
          i = 2
          if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
          if ($(i + 1) != suite) next
          for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit }
        }' "$1" ;;
    *.sources) # deb822: stanzas of Types, URIs, Suites, Components (and Enabled)
      awk -v suite="$host_suite" '
        function has(list, word,   n, a, k) { n = split(list, a, " "); for (k = 1; k <= n; k++) if (a[k] == word) return 1; return 0 }
        function stanza_end(   a) {
          if (!done && has(f["types"], "deb") && f["enabled"] != "no" && has(f["suites"], suite) && has(f["components"], "main")) {
            split(f["uris"], a, " "); print a[1]; done = 1
          }
          delete f; key = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { stanza_end(); next }
        /^[ \t]/ { if (key != "") f[key] = f[key] " " $0; next }
        { c = index($0, ":"); key = tolower(substr($0, 1, c - 1)); f[key] = substr($0, c + 1)
          if (key == "enabled") { f[key] = tolower(f[key]); gsub(/[ \t]/, "", f[key]) } }
        END { stanza_end() }' "$1" ;;
  esac
}
mirror=
while read -r file; do
  mirror=$(mirror_in "$file")
  [ -z "$mirror" ] || break
done < <(sources_files)
if [ -z "$host_suite" ] || [ -z "$mirror" ]; then
  echo "fetch-containerd.sh: no Debian mirror found: none of /etc/apt/sources.list," \
       "/etc/apt/sources.list.d/*.list or *.sources has a \"deb\" entry for this host's suite" \
       "(${host_suite:-unknown: no VERSION_CODENAME in /etc/os-release}) with the main component." \
       "Add the Debian archive for it to apt's sources, then run this again." >&2
  exit 1
fi
mirror=${mirror%/}
echo "fetch-containerd.sh: fetching from $mirror (the mirror apt uses for $host_suite)" >&2

apt_dir=$cache/apt-$suite
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/cache"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" > "$apt_dir/sources.list"
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
