#!/usr/bin/env bash
# podman with the settings the project's build and test machines need, in one place.
#
#   deploy/docker/podman.sh ARGS...       exactly `podman ARGS...`, with these settings
#
# `make image` and `make image-test` (deploy/docker/image.sh, tests/deploy/test_image.py) run
# podman through this script. The machines they run on are themselves containers without
# systemd, overlay mounts or a writable cgroup tree, and reach the Internet only through a
# TLS-inspecting proxy. An operator's podman or Docker engine needs none of this: see
# docs/deploy.md, "Container image".
#
#   --root/--runroot/--tmpdir
#                          a private image store under FILTERD__IMAGE_CACHE (default
#                          ~/.cache/filterd/image), kept between runs (the layer cache), apart
#                          from any other podman user of the machine
#   --storage-driver vfs   no overlay file system inside a container (slower, bigger on disk)
#   --runtime runc         the OCI runtime Debian ships with podman's dependencies here
#   --cgroup-manager cgroupfs, --events-backend file
#                          no systemd (nor journald) to delegate cgroups or events to
#   CONTAINERS_CONF        deploy/docker/containers.conf: containers keep the ulimits they
#                          start with (they cannot raise them)
#
# For `build`, also:
#   --network host         the build reaches Debian's mirror and PyPI through the host's
#                          network (no bridge networking here)
#   --secret id=build-ca   the host's CA bundle (FILTERD__IMAGE_BUILD_CA, default
#                          /etc/ssl/certs/ca-certificates.crt; empty: none), which pip in the
#                          Dockerfile's builder stage trusts: these machines reach PyPI through a
#                          TLS-inspecting proxy. A build secret is never part of a layer.
#
# `run` and `exec` get no extra option: the tests give `--network host` themselves.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FILTERD__IMAGE_CACHE:-$HOME/.cache/filterd/image}"
# Run-time state (locks, container state; gone after a reboot) of this store only: a podman
# store must not share it with another, and podman records these paths in its database.
state="${XDG_RUNTIME_DIR:-/run}/filterd-image-$(printf '%s' "$cache" | cksum | cut -d ' ' -f 1)"
export CONTAINERS_CONF="$here/containers.conf"

global=(
	--root "$cache/storage"
	--runroot "$state/run"
	--tmpdir "$state/tmp"
	--storage-driver vfs
	--runtime runc
	--cgroup-manager cgroupfs
	--events-backend file
)

if [[ "${1:-}" == build ]]; then
	shift
	extra=(--network host)
	ca="${FILTERD__IMAGE_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}"
	if [[ -n "$ca" && -f "$ca" ]]; then
		extra+=(--secret "id=build-ca,src=$ca")
	fi
	exec podman "${global[@]}" build "${extra[@]}" "$@"
fi
exec podman "${global[@]}" "$@"
