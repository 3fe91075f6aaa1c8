#!/usr/bin/env bash
# install-missing.sh [APT-GET-OPTION...] PACKAGE...: install the Debian
# packages that are not installed yet (apt-get update first), and touch apt
# not at all when none is missing. Options (words starting with -) go to
# apt-get install. Used by contrib/quickstart.sh, tests/run.sh and
# tests/package.sh.
set -euo pipefail
opts=() missing=()
for p in "$@"; do
	case $p in
	-*) opts+=("$p") ;;
	*) dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing+=("$p") ;;
	esac
done
[ ${#missing[@]} -gt 0 ] || exit 0
echo "== installing: ${missing[*]}"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y "${opts[@]}" "${missing[@]}"
