#!/usr/bin/env bash
# Makes a Debian 12 machine run enrichproxy's containers with rootful Podman, and builds the
# images compose.yaml pulls from registries as local stand-ins where no registry is reachable.
# tests/test_containers.py runs it before every session (`make container-test`); a second run
# changes nothing and takes a few seconds.
#
# Each step acts only where the machine needs it:
#   1. apt: podman, buildah, crun, netavark, aardvark-dns, iptables (netavark's firewall),
#      debootstrap and docker-compose, where missing.
#   2. cgroups: crun refuses a hybrid layout ("cgroups in hybrid mode not supported, drop all
#      controllers from cgroupv2"); a controller left on the v2 hierarchy is mounted as a v1
#      hierarchy of its own, which empties v2 of controllers.
#   3. ulimits: rootful Podman asks for nofile/nproc limits above a hard limit the machine may
#      not grant ("crun: setrlimit RLIMIT_NOFILE: Operation not permitted"); where a probe
#      container fails so, /etc/containers/containers.conf sets the machine's own hard limits
#      (written only when absent: an existing file is the operator's).
#   4. images, kept in Podman's local storage and reused by tag:
#      localhost/enrichproxy-standin/debian:bookworm  `debootstrap --variant=minbase`, imported
#      docker.io/library/python:3.11-slim-bookworm    standins/python
#      docker.io/library/mongo:7.0                     standins/mongo (secantusdb + mongosh)
#      docker.io/prom/prometheus:v2.42.0               standins/prometheus (Debian's 2.42)
#      A stand-in is rebuilt when its directory changes (a hash in a label); an image of that
#      name that is not a stand-in (pulled from a registry) is left alone.
#
# On a machine whose outbound TLS is intercepted, its CA is in the host's bundle
# (/usr/local/share/ca-certificates); the mongo stand-in's build mounts that bundle over the
# image's for its RUN steps only, so no layer keeps it. Grafana has no stand-in.
#
# Exit status: 0 ready; 2 this machine cannot run containers (not root, or Podman missing and
# apt unusable), with the reason on stderr; 1 anything else that failed.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
BASE_IMAGE=localhost/enrichproxy-standin/debian:bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
SUITE=bookworm
STANDIN_LABEL=org.enrichproxy.standin.hash
PACKAGES=(podman buildah crun netavark aardvark-dns iptables debootstrap docker-compose)
CONTAINERS_CONF=/etc/containers/containers.conf
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
LOCAL_CA_DIR=/usr/local/share/ca-certificates
# No process needs more; a larger hard limit is capped to it.
NOFILE_CAP=1048576

say() { printf 'prepare-host: %s\n' "$*" >&2; }
cannot() { say "cannot run containers here: $*"; exit 2; }

[ "$(id -u)" = 0 ] || cannot "rootful Podman, apt and the cgroup mount need root"

# --- 1. packages ------------------------------------------------------------------------------
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
  say "installing ${missing[*]}"
  if ! { apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           "${missing[@]}" >/dev/null; }; then
    command -v podman >/dev/null || cannot "apt-get could not install ${missing[*]}"
    say "apt-get failed; going on with what is installed"
  fi
fi

# --- 2. cgroups -------------------------------------------------------------------------------
UNIFIED=/sys/fs/cgroup/unified
if [ -r "$UNIFIED/cgroup.controllers" ]; then
  for controller in $(cat "$UNIFIED/cgroup.controllers"); do
    say "cgroup hybrid layout: mounting $controller as a v1 hierarchy"
    mkdir -p "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller"
  done
fi

# --- 3. the base image and the ulimit probe ---------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
  say "building $BASE_IMAGE with debootstrap (about a minute)"
  rootfs="$(mktemp -d /var/tmp/enrichproxy-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' \
    --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

probe() { podman run --rm --network none "$BASE_IMAGE" true 2>&1; }
if ! probe_output="$(probe)"; then
  if grep -q setrlimit <<<"$probe_output" && [ ! -e "$CONTAINERS_CONF" ]; then
    nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
    [ "$nofile" = unlimited ] || [ "$nofile" -gt "$NOFILE_CAP" ] && nofile=$NOFILE_CAP
    [ "$nproc" = unlimited ] && nproc=$NOFILE_CAP
    say "containers ask for more than this machine's hard limits: writing $CONTAINERS_CONF"
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    cat >"$CONTAINERS_CONF" <<EOF
# Written by enrichproxy's deploy/podman/prepare-host.sh: Podman's default ulimits exceed this
# machine's hard limits, which crun may not raise ("setrlimit RLIMIT_NOFILE: Operation not
# permitted"). These are the machine's own hard limits.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
EOF
    probe_output="$(probe)" || { say "a container still fails to start: $probe_output"; exit 1; }
  else
    say "a container fails to start: $probe_output"
    exit 1
  fi
fi

# --- 4. stand-in images -----------------------------------------------------------------------
build_volumes=()
if compgen -G "$LOCAL_CA_DIR/*.crt" >/dev/null; then
  build_volumes=(--volume "$HOST_CA_BUNDLE:$HOST_CA_BUNDLE:ro")
fi

# standin NAME IMAGE [--with-host-ca]: build standins/NAME as IMAGE unless it is up to date.
# Only a stand-in that downloads over TLS (pip, npm) takes the host's bundle: mounted over the
# system bundle, it would break the install of ca-certificates itself.
standin() {
  local name="$1" image="$2" context="$HERE/standins/$1" hash current parent volumes=()
  [ "${3:-}" = --with-host-ca ] && volumes=("${build_volumes[@]}")
  parent="$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$context/Containerfile" | head -n 1)"
  hash="$( (podman image inspect --format '{{.Id}}' "$parent"
            cd "$context" && find . -type f -print0 | sort -z | xargs -0 sha256sum) \
          | sha256sum | cut -c1-16)"
  if podman image exists "$image"; then
    current="$(podman image inspect --format "{{index .Labels \"$STANDIN_LABEL\"}}" "$image")"
    if [ "$current" = "$hash" ]; then
      return
    fi
    if [ -z "$current" ] || [ "$current" = "<no value>" ]; then
      say "$image is not a stand-in: keeping it"
      return
    fi
  fi
  say "building the stand-in $image"
  podman build --format docker --quiet --label "$STANDIN_LABEL=$hash" \
    --label "org.opencontainers.image.description=enrichproxy test stand-in for $image" \
    "${volumes[@]}" -t "$image" "$context" >/dev/null
}

standin python docker.io/library/python:3.11-slim-bookworm
standin prometheus docker.io/prom/prometheus:v2.42.0
standin mongo docker.io/library/mongo:7.0 --with-host-ca
say "ready"
