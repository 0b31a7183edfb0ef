#!/usr/bin/env bash
# Build the filterd container image: `make image`.
#
#   deploy/docker/image.sh build    build $FILTERD__IMAGE (default localhost/filterd:VERSION)
#   deploy/docker/image.sh base     only make sure the base images exist (local ones if needed)
#   deploy/docker/image.sh engine   print the container engine command it uses
#   deploy/docker/image.sh name     print the image name and tag it builds
#   deploy/docker/image.sh size     print the size of the image (or of the one named)
#
# The engine is $CONTAINER_ENGINE when set (e.g. `docker`, `podman`), otherwise podman
# through deploy/docker/podman.sh (this project's machines) when podman is installed,
# otherwise docker.
#
# The base images are the Dockerfile's defaults (the public Python images) when the engine
# has them or can pull them. Where no registry answers (the pull fails, or takes more than
# FILTERD__IMAGE_PULL_TIMEOUT seconds, default 30), a pair is built from Debian's own packages
# and cached in the engine's store, then passed to the Dockerfile as build arguments:
#
#   localhost/filterd-base:bookworm        debootstrap --variant=minbase bookworm + python3
#                                          (the runtime base: no compiler)
#   localhost/filterd-base:bookworm-build  the same + python3-venv, python3-dev, gcc
#                                          (the builder base), deploy/docker/Containerfile.base-build
#
# debootstrap needs root and uses the Debian mirror the host's apt sources name
# (DEBIAN_MIRROR overrides it). FILTERD__IMAGE_BASE=local skips the pull attempt,
# FILTERD__IMAGE_BASE=public never builds a local base.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dockerfile="$here/Dockerfile"
cache="${FILTERD__IMAGE_CACHE:-$HOME/.cache/filterd/image}"
suite=bookworm
local_runtime="localhost/filterd-base:$suite"
local_builder="localhost/filterd-base:$suite-build"

say() { printf 'image: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

version() {
	sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/filterd/__init__.py"
}

image_name() {
	echo "${FILTERD__IMAGE:-localhost/filterd:$(version)}"
}

engine() {
	if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
		echo "$CONTAINER_ENGINE"
	elif command -v podman >/dev/null 2>&1; then
		echo "$here/podman.sh"
	elif command -v docker >/dev/null 2>&1; then
		echo docker
	else
		die "neither podman nor docker is installed (or set CONTAINER_ENGINE)"
	fi
}

# The default of `ARG NAME=...` in the Dockerfile: the public base images, named once.
dockerfile_default() {
	sed -n "s/^ARG $1=//p" "$dockerfile"
}

# The Debian mirror of the host's apt sources (deb822 or one-line format), for debootstrap.
host_mirror() {
	local uri
	uri="$(awk -v RS= '/(^|\n)Suites:[^\n]*[[:space:]]'"$suite"'([[:space:]]|$)/ && /(^|\n)Components:[^\n]*main/ {
		if (match($0, /(^|\n)URIs:[[:space:]]*[^[:space:]\n]+/)) {
			s = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[[:space:]]*/, "", s); print s; exit
		}
	}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
	if [[ -z "$uri" ]]; then
		uri="$(sed -n -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+'"$suite"'[[:space:]].*main.*/\2/p' \
			/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1 || true)"
	fi
	echo "${uri:-http://deb.debian.org/debian}"
}

has_image() {
	"$ENGINE" image inspect --format '{{.Id}}' "$1" >/dev/null 2>&1
}

# Pull the public bases unless present; false, quickly, when no registry answers.
public_bases() {
	local image
	for image in "$(dockerfile_default BUILDER_IMAGE)" "$(dockerfile_default PYTHON_IMAGE)"; do
		has_image "$image" && continue
		say "pulling $image (at most ${FILTERD__IMAGE_PULL_TIMEOUT:-30} s)"
		if ! timeout --kill-after=5 "${FILTERD__IMAGE_PULL_TIMEOUT:-30}" \
			"$ENGINE" pull --quiet "$image" >/dev/null 2>"$cache/pull.log"; then
			say "cannot pull $image: $(tail -n 1 "$cache/pull.log")"
			return 1
		fi
	done
}

# localhost/filterd-base:bookworm from debootstrap, the root file system kept as a tarball in
# the cache so that an emptied image store is refilled without downloading again.
local_runtime_base() {
	has_image "$local_runtime" && return 0
	local tarball="$cache/$suite-minbase-python3.tar"
	if [[ ! -s "$tarball" ]]; then
		command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
		((EUID == 0)) || die "debootstrap needs root to build $local_runtime"
		local mirror rootfs
		mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
		rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
		# The directory becomes the image's /: mktemp made it 0700.
		chmod 0755 "$rootfs"
		# shellcheck disable=SC2064 # expanded now: $rootfs is local
		trap "umount -R '$rootfs/proc' '$rootfs/sys' 2>/dev/null; rm -rf '$rootfs'" EXIT
		say "debootstrap --variant=minbase --include=python3 $suite from $mirror"
		if ! debootstrap --variant=minbase --include=python3 "$suite" "$rootfs" "$mirror" \
			>"$cache/debootstrap.log" 2>&1; then
			tail -n 20 "$cache/debootstrap.log" >&2
			die "debootstrap failed (log: $cache/debootstrap.log)"
		fi
		# What images leave out: downloaded packages and package lists (the builder base
		# fetches fresh lists; the runtime installs nothing).
		rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
		tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
		mv "$tarball.tmp" "$tarball"
		rm -rf "$rootfs"
		trap - EXIT
	fi
	say "importing $tarball as $local_runtime"
	"$ENGINE" import --change 'CMD ["python3"]' "$tarball" "$local_runtime" >/dev/null
}

local_builder_base() {
	has_image "$local_builder" && return 0
	say "building $local_builder"
	"$ENGINE" build ${PODMAN_FORMAT[@]+"${PODMAN_FORMAT[@]}"} \
		--build-arg "BASE_IMAGE=$local_runtime" -t "$local_builder" \
		-f "$here/Containerfile.base-build" "$here" >&2
}

# Sets BUILD_ARGS: none for the public bases, the local pair otherwise.
bases() {
	BUILD_ARGS=()
	local mode="${FILTERD__IMAGE_BASE:-auto}"
	if [[ "$mode" != local ]] && public_bases; then
		say "base images: the public ones"
		return 0
	fi
	[[ "$mode" == public ]] && die "the public base images cannot be pulled (FILTERD__IMAGE_BASE=public)"
	say "base images: local, from Debian's packages ($local_runtime, $local_builder)"
	local_runtime_base
	local_builder_base
	BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$local_runtime" --build-arg "BUILDER_IMAGE=$local_builder")
}

build() {
	local image started
	image="$(image_name)"
	started=$SECONDS
	bases
	say "building $image with $ENGINE"
	# podman reads no <Dockerfile>.dockerignore by itself (BuildKit does), and writes OCI
	# images by default, which have no HEALTHCHECK: the Docker format keeps it.
	"$ENGINE" build ${PODMAN_FORMAT[@]+"${PODMAN_FORMAT[@]}"} ${IGNOREFILE[@]+"${IGNOREFILE[@]}"} \
		--pull=false ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} \
		-f "$dockerfile" -t "$image" "$repo" >&2
	say "built $image in $((SECONDS - started)) s, $(size "$image")"
	if [[ "$ENGINE" == "$here/podman.sh" ]]; then
		# The private store keeps every earlier build of the tag as a dangling image, each a
		# full copy with the vfs driver (~0.9 GB a build): only the layer cache is worth
		# keeping. Another engine's store is the operator's, never pruned here.
		"$ENGINE" image prune --force >/dev/null 2>&1 || true
	fi
}

size() {
	local bytes
	bytes="$("$ENGINE" image inspect --format '{{.Size}}' "$1")"
	echo "size $bytes bytes ($((bytes / 1000000)) MB)"
}

use_engine() {
	ENGINE="$(engine)"
	PODMAN_FORMAT=()
	IGNOREFILE=()
	if [[ "$ENGINE" == *podman* ]]; then
		PODMAN_FORMAT=(--format docker)
		IGNOREFILE=(--ignorefile "$here/Dockerfile.dockerignore")
	fi
	mkdir -p "$cache"
}

case "${1:-}" in
build)
	use_engine
	build
	;;
base)
	use_engine
	bases
	;;
engine)
	use_engine
	echo "$ENGINE"
	;;
size)
	use_engine
	size "${2:-$(image_name)}"
	;;
name) image_name ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
