#!/usr/bin/env bash
# The Debian package, from a fresh Debian 12 machine: install what is missing,
# build the .deb with dpkg-buildpackage from a copy of the tracked files (so
# nothing lands beside the tree), unpack it into a scratch root and check
# that it holds what "meson install" promises and that its programs run.
# KEEP=1 keeps the scratch directory (its path is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

pkgs=(dpkg-dev debhelper git meson ninja-build pkg-config gcc python3 libfuse3-dev
      liburing-dev zlib1g-dev libzstd-dev libglib2.0-dev fuse3)
bash "$top/contrib/install-missing.sh" --no-install-recommends "${pkgs[@]}"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/vdiskfs-package.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
	echo "== scratch directory kept: $scratch"
else
	trap 'rm -rf "$scratch"' EXIT
fi
fail() {
	echo "package: $*" >&2
	exit 1
}

# The tracked files only: no build directories, no local leftovers.
echo "== package: copy the tree"
mkdir "$scratch/vdiskfs"
git -C "$top" ls-files -z | tar -C "$top" --null -T - -cf - | tar -C "$scratch/vdiskfs" -xf -

echo "== package: dpkg-buildpackage -b -us -uc (log: build.log)"
if ! (cd "$scratch/vdiskfs" &&
	DEB_BUILD_OPTIONS="parallel=$(nproc)" dpkg-buildpackage -b -us -uc) \
	>"$scratch/build.log" 2>&1; then
	tail -n 40 "$scratch/build.log" >&2
	fail "dpkg-buildpackage failed"
fi
debs=("$scratch"/vdiskfs_*.deb)
[ ${#debs[@]} -eq 1 ] || fail "expected one vdiskfs_*.deb, found: ${debs[*]}"
[ -f "${debs[0]}" ] || fail "no vdiskfs_*.deb was built"
deb=${debs[0]}
echo "== package: built $(basename "$deb")"
dpkg-deb --field "$deb" Depends | grep -q 'fuse3' || fail "Depends lacks fuse3"

echo "== package: unpack into a scratch root"
root=$scratch/root
dpkg -x "$deb" "$root"
expected=(
	usr/bin/vdiskfs
	usr/bin/vdiskfsctl
	usr/share/man/man1/vdiskfs.1.gz
	usr/share/man/man1/vdiskfsctl.1.gz
	usr/share/man/man7/vdiskfs-mirror.7.gz
	usr/share/man/man7/vdiskfs-jobs.7.gz
	lib/systemd/system/vdiskfs@.service
	usr/share/bash-completion/completions/vdiskfsctl
	usr/share/doc/vdiskfs/fstab.example
	usr/share/doc/vdiskfs/vdiskfs.conf.example
	usr/share/doc/vdiskfs/copyright
	etc/vdiskfs
)
for f in "${expected[@]}"; do
	[ -e "$root/$f" ] || fail "$f is missing from the package"
done
for f in usr/bin/vdiskfs usr/bin/vdiskfsctl; do
	[ -x "$root/$f" ] || fail "$f is not executable"
done

# The unit carries the installed paths, and no placeholder is left over.
unit=$root/lib/systemd/system/vdiskfs@.service
! grep -n '@[a-z0-9_]*@' "$unit" || fail "unconfigured placeholder in the unit"
grep -q '^ExecStart=/usr/bin/vdiskfs ' "$unit" || fail "ExecStart is not /usr/bin/vdiskfs"
grep -q '^ExecStop=/usr/bin/fusermount3 ' "$unit" || fail "ExecStop is not /usr/bin/fusermount3"
# A template unit: nothing may enable or start it on installation.
if dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - --wildcards './post*' 2>/dev/null |
	grep -E 'deb-systemd-(helper enable|invoke start)'; then
	fail "the maintainer scripts enable or start a unit"
fi
if command -v systemd-analyze >/dev/null; then
	# Parse errors name the file and line; a missing /usr/bin/vdiskfs on
	# this machine is no fault of the unit.
	if systemd-analyze verify --man=no "$unit" 2>&1 | grep -E ':[0-9]+: '; then
		fail "systemd-analyze verify: the unit does not parse cleanly"
	fi
	echo "== package: $(systemd-analyze security --offline=true --root="$root" --no-pager \
		vdiskfs@check.service 2>/dev/null | tail -n 1 | sed 's/^→ //')"
fi

# dpkg itself installs and removes it in an empty root of its own (none of
# the dependencies are there, hence --force-depends; the package has no
# maintainer scripts, which dpkg would otherwise run chrooted there).
echo "== package: dpkg --root install and remove"
inst=$scratch/inst
mkdir -p "$inst/var/lib/dpkg/info" "$inst/var/lib/dpkg/updates"
: >"$inst/var/lib/dpkg/status"
dpkg --root="$inst" --force-depends -i "$deb" >"$scratch/dpkg.log" 2>&1 ||
	{ cat "$scratch/dpkg.log" >&2; fail "dpkg --root -i failed"; }
dpkg --root="$inst" -s vdiskfs | grep -q '^Status: install ok installed' ||
	fail "dpkg --root does not show vdiskfs installed"
for f in "${expected[@]}"; do
	[ -e "$inst/$f" ] || fail "$f is missing after dpkg --root -i"
done
dpkg --root="$inst" --force-depends -r vdiskfs >>"$scratch/dpkg.log" 2>&1 ||
	{ cat "$scratch/dpkg.log" >&2; fail "dpkg --root -r failed"; }
left=$(find "$inst" -mindepth 1 -not -path "$inst/var*" -type f)
[ -z "$left" ] || fail "files left after removal: $left"

echo "== package: run the unpacked programs"
"$root/usr/bin/vdiskfs" --version
"$root/usr/bin/vdiskfsctl" --help >/dev/null || fail "vdiskfsctl --help failed"

echo "== package: ok ($(dpkg-deb -c "$deb" | wc -l) entries)"
