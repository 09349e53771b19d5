#!/usr/bin/env bash
# CPython 3.14 and 3.15 for the test suite: a Debian sid chroot with Debian's python3.14 and
# python3.15 packages (GIL builds; release and -dbg), set up and entered by this script. Run as
# root.
#
#   tools/sid-chroot.sh setup          create or complete the chroot (idempotent)
#   tools/sid-chroot.sh run CMD...     run CMD inside it, in this checkout (set up first if needed)
#   tools/sid-chroot.sh path           print where the chroot lives
#
# The chroot lives in /var/cache/corolet/sid-chroot (COROLET_SID_CHROOT overrides it), outside
# the checkout: `make clean` never touches it, every worktree shares one, and no `rm -rf` of a
# checkout directory can ever descend into a live bind mount. Deleting that directory (with no
# `run` active) starts over.
#
# Setup: debootstrap (installed on the host with apt if missing) puts a minimal sid into a
# temporary directory, which becomes the chroot only once complete; then apt installs the
# interpreters and a C toolchain inside. Each stage leaves a stamp, so an interrupted setup
# resumes and a finished one costs nothing. The Rust toolchain is not installed inside: the
# host's rustup and cargo homes are bind-mounted (their binaries run on sid's newer glibc).
#
# `run` enters a private mount namespace (unshare), mounts /proc, /dev, /sys, this checkout
# (at its own path, so absolute paths agree inside and out; its git directory too when that
# lies elsewhere, as for a worktree) and the Rust homes, copies in resolv.conf and the CA
# bundle, and runs CMD with a clean environment. The mounts exist only in that namespace: they
# vanish when CMD ends, however it ends, and concurrent runs do not see each other's.
set -euo pipefail

CHROOT=${COROLET_SID_CHROOT:-/var/cache/corolet/sid-chroot}
PACKAGES=(python3.14-dev python3.14-venv python3.15-dev python3.15-venv
          python3.14-dbg python3.15-dbg gcc g++ make git libc6-dev iproute2)
# Bump when the recipe changes: a chroot with another stamp is brought up to date.
RECIPE="3 ${PACKAGES[*]}"
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd -P)
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_DIR=${CARGO_HOME:-$HOME/.cargo}

die() { echo "sid-chroot: $*" >&2; exit 1; }
log() { echo "sid-chroot: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mounts need it)"

# The Debian mirror this machine's apt already uses.
mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null |
          grep -v security | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' \
              /etc/apt/sources.list 2>/dev/null || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Runs "$@" chrooted into $1 inside a private mount namespace with the usual mounts.
# Variables: BIND_CHECKOUT=1 also mounts the checkout and the Rust homes.
# With EXEC=1 the caller's process becomes the command (one process all along, so a signal
# sent to the script reaches the command itself).
in_namespace() {
    local root=$1 exec=
    shift
    [ "${EXEC:-0}" = 1 ] && exec=exec
    $exec unshare --mount --propagation private -- bash -euo pipefail -c '
        root=$1; checkout=$2; rustup=$3; cargo=$4; bind=$5; shift 5
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
        cp -L /etc/resolv.conf "$root/etc/resolv.conf"
        if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
            mkdir -p "$root/etc/ssl/certs"
            cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
        fi
        if [ "$bind" = 1 ]; then
            mkdir -p "$root$checkout" "$root/root/.rustup" "$root/root/.cargo"
            mount --bind "$checkout" "$root$checkout"
            common=$(git -C "$checkout" rev-parse --path-format=absolute --git-common-dir \
                     2>/dev/null || true)
            case "$common" in
                "" | "$checkout"/*) ;;
                *) mkdir -p "$root$common" && mount --bind "$common" "$root$common" ;;
            esac
            [ -d "$rustup" ] && mount --bind "$rustup" "$root/root/.rustup"
            [ -d "$cargo" ] && mount --bind "$cargo" "$root/root/.cargo"
        fi
        exec chroot "$root" "$@"
    ' bash "$root" "$CHECKOUT" "$RUSTUP_DIR" "$CARGO_DIR" "${BIND_CHECKOUT:-0}" "$@"
}

setup() {
    mkdir -p "$(dirname "$CHROOT")"
    # One setup at a time; a second waits and then finds the work done. The lock is held
    # only while setting up, not while a command runs.
    (
        flock 9
        setup_locked
    ) 9>"$CHROOT.lock"
}

setup_locked() {
    if [ -f "$CHROOT/.corolet-stamp" ] && [ "$(cat "$CHROOT/.corolet-stamp")" = "$RECIPE" ]; then
        return
    fi
    local start=$SECONDS
    if [ ! -f "$CHROOT/.corolet-debootstrapped" ]; then
        if ! command -v debootstrap >/dev/null; then
            log "installing debootstrap on the host"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                debootstrap >/dev/null
        fi
        local tmp=$CHROOT.partial uri
        uri=$(mirror)
        rm -rf --one-file-system "$tmp"
        log "debootstrap sid from $uri into $tmp"
        unshare --mount --propagation private -- \
            debootstrap --variant=minbase --include=ca-certificates sid "$tmp" "$uri" \
            >"$CHROOT.debootstrap.log" 2>&1 ||
            die "debootstrap failed, see $CHROOT.debootstrap.log"
        # sid's Release file on the mirror may be past its Valid-Until date.
        echo 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99corolet"
        touch "$tmp/.corolet-debootstrapped"
        rm -rf --one-file-system "$CHROOT"
        mv "$tmp" "$CHROOT"
    fi
    log "installing ${PACKAGES[*]}"
    in_namespace "$CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive bash -ec "
            apt-get -qq update
            apt-get install -y -qq --no-install-recommends ${PACKAGES[*]} >/dev/null
            apt-get clean
        "
    echo "$RECIPE" >"$CHROOT/.corolet-stamp"
    log "ready in $((SECONDS - start)) s: $CHROOT"
}

run() {
    [ $# -gt 0 ] || die "run: no command"
    setup
    # A clean environment: the host's pip, proxy and Rust settings pass; make's (jobserver
    # descriptors, levels) and paths of the host (CARGO_TARGET_DIR, PYTHON, ...) do not.
    local -a envs=(HOME=/root LANG=C.UTF-8 "TERM=${TERM:-dumb}"
                   PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    local name
    while IFS= read -r name; do
        case "$name" in
            PIP_FIND_LINKS | CARGO_TARGET_DIR | CARGO_HOME | RUSTUP_HOME) ;;
            PIP_* | RUST* | CARGO_* | http_proxy | https_proxy | no_proxy | HTTP_PROXY | \
                HTTPS_PROXY | NO_PROXY | COROLET_* | PYTHONUNBUFFERED | PYTHONDONTWRITEBYTECODE)
                envs+=("$name=${!name}") ;;
        esac
    done < <(compgen -e)
    EXEC=1 BIND_CHECKOUT=1 in_namespace "$CHROOT" /usr/bin/env -i "${envs[@]}" \
        bash -c 'cd "$1" && shift && exec "$@"' bash "$CHECKOUT" "$@"
}

case "${1:-}" in
    setup) setup ;;
    run) shift; run "$@" ;;
    path) echo "$CHROOT" ;;
    *) die "usage: $0 setup | run CMD... | path" ;;
esac
