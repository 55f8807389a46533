#!/usr/bin/env bash
# Set up everything recoverd needs on a Debian machine (as root), then run the demo or the tests.
#
#   ./setup.sh demo    back up a sample workstation over a throwaway loopback sshd, show the log
#   ./setup.sh test    run the test suite (real sshd, real restic, real ext4 images)
#
# Idempotent: packages already installed and an up-to-date virtualenv are left as they are.
set -euo pipefail
cd "$(dirname "$0")"

# program -> Debian package that provides it
declare -A PACKAGES=(
    [restic]=restic
    [sshd]=openssh-server
    [ssh-keygen]=openssh-client
    [partclone.ext4]=partclone
    [mkfs.ext4]=e2fsprogs
    [debugfs]=e2fsprogs
    [python3]=python3
    [chromium]=chromium  # the report test renders HTML in headless Chromium
    [openssl]=openssl    # image hashes on the machine use the CPU's SHA extensions through it
)
missing=()
for program in "${!PACKAGES[@]}"; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$program" >/dev/null 2>&1; then
        missing+=("${PACKAGES[$program]}")
    fi
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Boot drills: qemu and UEFI firmware, and what the tests build bootable disks with (no mount).
# The test disk's kernel is Debian's linux-image package, downloaded (not installed) and cached.
boot_missing=()
for package in qemu-system-x86 ovmf syslinux syslinux-common mtools dosfstools busybox-static; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
        boot_missing+=("$package")
done
if ((${#boot_missing[@]})); then
    echo "setup: installing ${boot_missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${boot_missing[@]}" >/dev/null
fi
kernel_cache=/var/cache/recoverd/kernel
if ! compgen -G "$kernel_cache/linux-image-*-amd64_*.deb" >/dev/null; then
    kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    echo "setup: downloading $kernel into $kernel_cache (for the boot drill tests)" >&2
    mkdir -p "$kernel_cache"
    (cd "$kernel_cache" && apt-get download -qq "$kernel" 2>/dev/null)
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: recoverd needs Python 3.11 or later; found $(python3 --version)" >&2
    exit 2
}

# The virtualenv is rebuilt only when pyproject.toml changed since the last install.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

case "${1:-}" in
    demo) exec .venv/bin/python examples/demo.py ;;
    test) shift; exec .venv/bin/python -m pytest "$@" ;;
    *) echo "usage: $0 demo|test [pytest options]" >&2; exit 2 ;;
esac
