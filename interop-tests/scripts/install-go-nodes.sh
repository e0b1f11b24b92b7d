#!/usr/bin/env bash
# Installs the Go node binaries the interop tests run against:
#   CometBFT   v0.38.25 -> <repo>/.cache/go-bin/cometbft-v0.38.25/cometbft
#   CometBFT   v0.40.0  -> <repo>/.cache/go-bin/cometbft-v0.40.0/cometbft (lp2p; the v0.40.0
#                          tag still reports version 0.39.0)
#   Tendermint v0.34.24 -> <repo>/.cache/go-bin/tendermint-v0.34.24/tendermint
#   gopeer (ours)       -> <repo>/.cache/go-bin/gopeer-<hash>/gopeer, built from
#                          interop-tests/gopeer; <hash> is the first 16 hex digits of the
#                          SHA-256 of, concatenated: gopeer's go.mod, go.sum and *.go (name
#                          order), then interop-tests/gocommon's go.mod and *.go (name order),
#                          the shared module it compiles in; so a change to the sources builds
#                          a new binary (GoPeer::program_dir in src/lib.rs computes the same
#                          hash to find it).
#   golp2p (ours)       -> <repo>/.cache/go-bin/golp2p-<hash>/golp2p, built from
#                          interop-tests/golp2p (CometBFT v0.40.0's lp2p); <hash> as for
#                          gopeer, over interop-tests/golp2p's go.mod, go.sum and *.go, then
#                          gocommon's go.mod and *.go.
#
# Idempotent: a binary that is present and reports the expected version is kept.
# Pure-Go builds (CGO_ENABLED=0) with the local Go toolchain (GOTOOLCHAIN=local); the
# default GOMODCACHE / GOCACHE are used so repeated runs (and CI caches) stay warm.
#
# First tries `go install <module>/cmd/<name>@<version>`. Some module proxies refuse the
# version-list request `go install` makes for its deprecation check (HTTP 403); then the
# module is fetched with `go mod download` and built from a writable copy instead.
#
# Environment:
#   REQUIRE_TENDERMINT_034=1  fail (exit 1) if Tendermint v0.34.24 cannot be built;
#                             otherwise that failure is only a loud warning.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
bin_root="$repo/.cache/go-bin"

die() {
    echo "install-go-nodes: ERROR: $*" >&2
    exit 1
}
log() { echo "install-go-nodes: $*" >&2; }

command -v go >/dev/null 2>&1 || die "go not found: install Go >= 1.25 and put it on PATH"

go_version="$(go env GOVERSION 2>/dev/null || true)" # e.g. go1.26.8
if [[ "$go_version" =~ ^go([0-9]+)\.([0-9]+) ]]; then
    major="${BASH_REMATCH[1]}"
    minor="${BASH_REMATCH[2]}"
    if ((major < 1 || (major == 1 && minor < 25))); then
        die "found $go_version, but Go >= 1.25 is required (CometBFT v0.40.0 and golp2p need go 1.25)"
    fi
else
    die "cannot determine the Go version (go env GOVERSION printed '$go_version'); install Go >= 1.25"
fi

export GOTOOLCHAIN=local
export CGO_ENABLED=0

# install <name> <module> <version> [<reported version>]: makes sure
# $bin_root/<name>-<version>/<name> exists and prints that version (or the reported version
# given, for tags that print another). Returns non-zero on failure.
install_one() {
    local name="$1" module="$2" version="$3"
    local dir="$bin_root/$name-$version"
    local bin="$dir/$name"
    local want="${4:-${version#v}}"

    if [[ -x "$bin" ]]; then
        local have
        have="$("$bin" version 2>/dev/null | head -n1 || true)"
        if [[ "$have" == "$want" ]]; then
            log "$name $version already installed at $bin"
            return 0
        fi
        log "$bin reports version '$have', expected '$want': reinstalling"
        rm -f "$bin"
    fi

    mkdir -p "$dir"
    local start=$SECONDS
    log "installing $name $version with $go_version (go install) ..."
    if ! GOBIN="$dir" go install "$module/cmd/$name@$version"; then
        log "go install failed; falling back to go mod download + go build from a copy"
        local json src tmp
        if ! json="$(go mod download -json "$module@$version")"; then
            log "go mod download $module@$version failed"
            return 1
        fi
        src="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' | head -n1)"
        if [[ -z "$src" || ! -d "$src" ]]; then
            log "could not find the downloaded source directory of $module@$version"
            return 1
        fi
        tmp="$(mktemp -d)"
        cp -r "$src" "$tmp/src"
        chmod -R u+w "$tmp/src"
        if ! (cd "$tmp/src" && go build -buildvcs=false -o "$bin" "./cmd/$name"); then
            rm -rf "$tmp"
            log "go build of $module@$version failed"
            return 1
        fi
        rm -rf "$tmp"
    fi

    local have
    have="$("$bin" version 2>/dev/null | head -n1 || true)"
    if [[ "$have" != "$want" ]]; then
        log "$bin was built but reports version '$have', expected '$want'"
        return 1
    fi
    log "$name $version installed at $bin in $((SECONDS - start)) s"
}

install_one cometbft github.com/cometbft/cometbft v0.38.25 ||
    die "could not install CometBFT v0.38.25 (see the go output above)"

install_one cometbft github.com/cometbft/cometbft v0.40.0 0.39.0 ||
    die "could not install CometBFT v0.40.0 (see the go output above)"

tendermint_ok=1
if ! install_one tendermint github.com/tendermint/tendermint v0.34.24; then
    tendermint_ok=0
    if [[ "${REQUIRE_TENDERMINT_034:-}" == "1" ]]; then
        die "could not build Tendermint v0.34.24 with $go_version (REQUIRE_TENDERMINT_034=1)"
    fi
    {
        echo
        echo "######################################################################"
        echo "# WARNING: Tendermint v0.34.24 could NOT be built with $go_version."
        echo "# The Tendermint v0.34 interop tests will fail until it is installed."
        echo "# Set REQUIRE_TENDERMINT_034=1 to make this an error."
        echo "######################################################################"
        echo
    } >&2
fi

# program_sources <dir> <file>...: writes the given files of <dir>, then its *.go files in
# byte order of their names, to stdout (the input of install_program's hash).
program_sources() {
    local dir="$1" go_files
    shift
    go_files="$(cd "$dir" && LC_ALL=C ls -- *.go)" || return 1
    # shellcheck disable=SC2086 # file names without spaces, one per line
    (cd "$dir" && cat -- "$@" $go_files)
}

# install_program <name>: builds our Go peer interop-tests/<name> (gopeer, golp2p) unless the
# binary for the current sources exists, and sets program_bin to its path. The hash covers the
# program's go.mod, go.sum and *.go, then those of the module it shares with the other
# program, interop-tests/gocommon (go.mod and *.go; it has no go.sum): GoPeer::program_dir in
# src/lib.rs computes the same. Returns non-zero on failure.
install_program() {
    local name="$1"
    local src="$repo/interop-tests/$name"
    local common="$repo/interop-tests/gocommon"
    local hash
    if ! hash="$({
        program_sources "$src" go.mod go.sum && program_sources "$common" go.mod
    } | sha256sum | cut -c1-16)"; then
        log "could not read the sources of interop-tests/$name and interop-tests/gocommon"
        return 1
    fi
    local dir="$bin_root/$name-$hash"
    local bin="$dir/$name"
    if [[ -x "$bin" ]]; then
        log "$name $hash already built at $bin"
        program_bin="$bin"
        return 0
    fi
    mkdir -p "$dir"
    log "building $name $hash with $go_version ..."
    if ! (cd "$src" && go build -mod=readonly -trimpath -o "$bin.tmp" .); then
        rm -f "$bin.tmp"
        log "go build of interop-tests/$name failed"
        return 1
    fi
    mv "$bin.tmp" "$bin"
    log "$name built at $bin"
    # Builds of older sources are of no further use.
    find "$bin_root" -maxdepth 1 -type d -name "$name-*" ! -name "$name-$hash" -exec rm -rf {} +
    program_bin="$bin"
}

program_bin=""
install_program gopeer || die "could not build interop-tests/gopeer (see the go output above)"
gopeer_bin="$program_bin"
install_program golp2p || die "could not build interop-tests/golp2p (see the go output above)"
golp2p_bin="$program_bin"

echo "$bin_root/cometbft-v0.38.25/cometbft"
echo "$bin_root/cometbft-v0.40.0/cometbft"
if ((tendermint_ok)); then
    echo "$bin_root/tendermint-v0.34.24/tendermint"
else
    echo "$bin_root/tendermint-v0.34.24/tendermint (NOT INSTALLED)"
fi
echo "$gopeer_bin"
echo "$golp2p_bin"
