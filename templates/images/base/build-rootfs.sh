#!/bin/sh
# Builds the slim Debian root filesystem that every offline-lane image starts from,
# and imports it as a Docker image. No registry is involved: debootstrap fetches
# .deb files from the host's own apt mirror.
# Usage: build-rootfs.sh SUITE MIRROR IMAGE_TAG CONTEXT_HASH
set -eu
suite=$1 mirror=$2 tag=$3 hash=$4
rootfs=$(mktemp -d /var/tmp/govstack-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/dev/null

# Keep images small for good: no docs, man pages or locales are ever unpacked,
# no Recommends are installed, and apt never keeps its .deb cache.
cat > "$rootfs/etc/dpkg/dpkg.cfg.d/01-govstack-slim" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
CFG
cat > "$rootfs/etc/apt/apt.conf.d/01-govstack-slim" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.govstack.context-hash=$hash" \
  - "$tag" >/dev/null
