#!/usr/bin/env bash
# Set up everything recoverd needs on a Debian machine (as root), then run the demo or the tests.
#
#   ./setup.sh demo    back up a sample workstation over a throwaway loopback sshd, show the log
#   ./setup.sh test    run the test suite (real sshd, real restic, real ext4 images), once with
#                      restic 0.18 (Debian 13's build, cached) and once with the system's 0.14
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

# The current restic (0.18, Debian 13's static build: it runs on Debian 12) beside the system's,
# unpacked into a cache with a private apt source list; the system's apt configuration is untouched.
# The tests run once per supported restic (0.14 from Debian 12, and this one).
trixie=/var/cache/recoverd/restic-trixie
restic_current="$trixie/x/usr/bin/restic"
if [ ! -x "$restic_current" ]; then
    echo "setup: fetching restic from Debian 13 into $trixie (the system's apt sources are untouched)" >&2
    mkdir -p "$trixie/lists/partial" "$trixie/archives/partial"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: trixie' 'Components: main' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$trixie/trixie.sources"
    apt_private=(-o "Dir::Etc::sourcelist=$trixie/trixie.sources" -o Dir::Etc::sourceparts=/dev/null
        -o "Dir::State::Lists=$trixie/lists" -o "Dir::Cache::archives=$trixie/archives"
        -o APT::Sandbox::User=root)
    apt-get "${apt_private[@]}" update -qq
    rm -f "$trixie"/restic_*.deb
    (cd "$trixie" && apt-get "${apt_private[@]}" download -qq restic)
    rm -rf "$trixie/x.new"
    dpkg-deb -x "$trixie"/restic_*.deb "$trixie/x.new"
    "$trixie/x.new/usr/bin/restic" version >/dev/null
    rm -rf "$trixie/x" && mv "$trixie/x.new" "$trixie/x"
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
    test)
        # Once per supported restic: the current one (0.18), then Debian 12's 0.14 on PATH.
        shift
        status=0
        echo "setup: tests with $("$restic_current" version)" >&2
        RECOVERD_TEST_RESTIC="$restic_current" .venv/bin/python -m pytest "$@" || status=$?
        echo "setup: tests with $(restic version)" >&2
        RECOVERD_TEST_RESTIC="$(command -v restic)" .venv/bin/python -m pytest "$@" || status=$?
        exit "$status"
        ;;
    *) echo "usage: $0 demo|test [pytest options]" >&2; exit 2 ;;
esac
