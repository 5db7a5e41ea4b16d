#!/usr/bin/env bash
# Installs what pgi needs on Debian 12 (as root): Debian packages from the host's own apt
# sources, then the npm packages, then builds pgi. Safe to run again.
# --test: also what the test suite needs beyond pgi itself (scripts/test.sh passes it).
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

DEB_PACKAGES=(
  qemu-system-x86 qemu-utils          # lab VMs and image conversion
  socat                               # lab guests' path to host-side stores (guestfwd relay, src/lab/qemu-uplink.ts)
  genisoimage                         # cloud-init NoCloud seed images (src/qemu/cloudinit.ts)
  mmdebstrap extlinux syslinux-common e2fsprogs dosfstools fdisk mount zstd uidmap  # image build
  casync                              # image publish: content-defined chunk stores (src/image/publish.ts; its binary patches use zstd and debugfs, above)
  age openssh-client openssh-server   # handoff interoperability, SSH to VMs
  restic                              # off-site backups: pgi backup list/prune read the Région's repositories (src/backup)
  openssl iproute2 ca-certificates
  time                                # /usr/bin/time: memory of CLI runs in tests (test/e2e/cli/bad-inventory.test.ts)
  postgresql-client                   # the AMI's view: psql against a deployed VM
  python3-proxmoxer python3-requests  # a PVE client nobody here wrote, against the lab (test/unit/lab/proxmoxer.test.ts)
  # proteus, Tryton's scripting client: 6.0 logs in to the 1.x image (test/e2e/image); 7.0 is
  # Debian 13's, unpacked by the tests (test/helpers/proteus.ts) and run with these dependencies
  tryton-proteus python3-dateutil python3-defusedxml
)
# the image's database engine runs natively in test/unit/image-tools, against a throwaway
# PostgreSQL cluster and a real trytond with the image's modules, and proteus as the client
DEB_TEST_PACKAGES=(
  postgresql-15 python3-psycopg2 tryton-server tryton-proteus
  tryton-modules-account tryton-modules-account-fr tryton-modules-account-invoice tryton-modules-account-product
  tryton-modules-company tryton-modules-country tryton-modules-currency tryton-modules-party tryton-modules-product
  tryton-modules-purchase tryton-modules-sale tryton-modules-stock
  # the teachers' console, natively (test/unit/console): its web stack, nginx in front, the web
  # client it sends students to, and Debian's chromium driven by playwright-core
  tryton-sao nginx-light python3-flask python3-waitress python3-argon2 python3-cryptography chromium
  # the off-site copies' REST server, append-only, on loopback (test/unit/image-tools/test_offsite.py)
  rclone
  # xmllint: the JUnit reports (--report junit) are validated against test/schemas/junit.xsd
  libxml2-utils
)
[ "$with_test" = 1 ] && DEB_PACKAGES+=("${DEB_TEST_PACKAGES[@]}")
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "pgi needs these Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # the tests start their own PostgreSQL cluster and trytond: the packages' services are not
  # started by the installation (Debian's policy-rc.d convention), only installed
  if [ "$with_test" = 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build --silent
