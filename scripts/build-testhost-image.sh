#!/bin/sh
# Build (or reuse) the ndctl test host image: debootstrap on first use (~45 s),
# then cached as a rootfs tarball under /var/cache/ndctl and as ndctl-testhost:<recipe hash>.
# Prints the image ref. Needs root, debootstrap and a running Docker daemon.
set -eu
cd "$(dirname "$0")/.."
exec python3 -m ndctl.sandbox image
