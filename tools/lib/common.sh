# shellcheck shell=bash
# Shared by tools/test, tools/demo and friends: where the tree is, and how to
# get the Debian packages tern needs onto a fresh Debian 12 machine.

TERN_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)

# Build and test dependencies.  The VM lane needs the last group: qemu, a
# Debian kernel with rdma_rxe, a static busybox for the initramfs.
TERN_BUILD_PKGS=(gcc meson ninja-build pkg-config libuv1-dev libcmocka-dev
	libibverbs-dev librdmacm-dev rdma-core ibverbs-utils rdmacm-utils
	python3 python3-dev python3-pytest python3-numpy python3-hypothesis valgrind scdoc man-db)
TERN_VM_PKGS=(qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2)
# The fuzz lane (tools/fuzz): clang with libFuzzer, and Hypothesis for the
# IDL compiler's property test.
TERN_FUZZ_PKGS=(clang-14 libfuzzer-14-dev python3-hypothesis)

tern_log() { printf '%s: %s\n' "${TERN_PROG:-tern}" "$*" >&2; }
tern_die() { printf '%s: error: %s\n' "${TERN_PROG:-tern}" "$*" >&2; exit 1; }

# tern_ensure_packages PKG... - install whatever is missing, once, quietly.
# Idempotent: on a machine that has everything it runs no apt command at all.
tern_ensure_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" != 0 ]; then
		tern_die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
	fi
	tern_log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null || tern_die "apt-get update failed"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/tern-apt.log 2>&1 || {
		tail -n 20 /tmp/tern-apt.log >&2
		tern_die "apt-get install failed (log: /tmp/tern-apt.log)"
	}
}

# tern_host_has_rdma - true when this kernel exposes at least one verbs device.
tern_host_has_rdma() {
	[ -d /sys/class/infiniband ] && [ -n "$(ls -A /sys/class/infiniband 2>/dev/null)" ]
}

# tern_build DIR [MESON OPTIONS...] - configure DIR once, then build it.
tern_build() {
	local dir=$1
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$TERN_TOP" "$@" >"$dir.setup.log" 2>&1 || {
			cat "$dir.setup.log" >&2
			tern_die "meson setup failed"
		}
	fi
	meson compile -C "$dir" >"$dir.compile.log" 2>&1 || {
		tail -n 60 "$dir.compile.log" >&2
		tern_die "build failed (log: $dir.compile.log)"
	}
}
