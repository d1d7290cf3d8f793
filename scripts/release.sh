#!/usr/bin/env bash
# Build the release artefacts of chaos-agent into dist/:
#
#   scripts/release.sh [--bin-dir DIR] [--version V] [--out DIR] [--formats tar,deb,rpm]
#
#   chaos-agent-V-x86_64-unknown-linux-musl.tar.gz    the static binary, the unit, the sample
#                                                     configuration, install.sh/uninstall.sh, docs
#   chaos-control-V-x86_64-unknown-linux-musl.tar.gz  the static control plane binary, docs
#   chaos-agent_V_amd64.deb                           Debian/Ubuntu package (docs/install.md)
#   chaos-agent-V-1.x86_64.rpm                        RHEL/CentOS 7+/Fedora/SUSE package
#   SHA256SUMS                                        of the files above
#
# Without --bin-dir it builds both binaries as static release builds for
# x86_64-unknown-linux-musl (installing, as root, the rustup target and Debian's musl-tools when
# they are missing). Every binary is checked before it is packaged: an x86-64 ELF, static (no
# PT_INTERP program header, no NEEDED entry), and `--version` runs.
#
#   --bin-dir DIR   package the chaos-agent and chaos-control already built in DIR instead of
#                   building (e.g. target/x86_64-unknown-linux-musl/debug: the VM suite packages
#                   its debug static build this way). Debug info is stripped from the copies.
#   --version V     the packages' version (default: what `chaos-agent --version` says), e.g. a
#                   higher one to test an upgrade. Digits, letters, '.', '+', '~'; starts with
#                   a digit; no '-' (the rpm release and the deb revision use it).
#   --out DIR       where to write (default: dist/ in the repository); files of the same names
#                   are replaced, others are left alone.
#   --formats LIST  what to write, comma-separated from tar, deb, rpm (default: all three);
#                   e.g. `--formats deb` for the VM suite's upgrade test.
#
# Needs: dpkg-deb, rpmbuild, readelf, strip (installed with apt-get as root when missing:
# dpkg, rpm, binutils). Not root: the packages get root ownership from dpkg-deb
# --root-owner-group and the spec's %attr.
#
# Why dpkg-deb and rpmbuild with our own control files and spec, not cargo-deb and
# cargo-generate-rpm: both tools are already on every Debian host (no `cargo install` to compile
# in CI), they are the distributions' own builders, and the maintainer scripts must be written
# by hand anyway (cargo-generate-rpm has no systemd scriptlets, and cargo-deb's generated
# systemd snippets restart after the upgrade instead of stopping the old agent before its
# files are replaced, and know nothing of refusing a removal while faults are on the host).
# The scripts' one body is packaging/pkg/scripts.sh, shared by the deb and the rpm.
#
# Exit status: 0 built, 1 error, 2 bad arguments.
set -euo pipefail

main() {
    local v repo out bin_dir="" version="" formats=tar,deb,rpm target=x86_64-unknown-linux-musl
    repo=$(cd "$(dirname "$0")/.." && pwd)
    out=$repo/dist
    while [ $# -gt 0 ]; do
        case $1 in
        --bin-dir | --version | --out | --formats)
            [ $# -ge 2 ] && [ -n "$2" ] || usage_error "$1 needs a value"
            case $1 in
            --bin-dir) bin_dir=$2 ;;
            --version) version=$2 ;;
            --out) out=$2 ;;
            --formats) formats=$2 ;;
            esac
            shift 2
            ;;
        --bin-dir=* | --version=* | --out=* | --formats=*)
            v=${1#*=}
            [ -n "$v" ] || usage_error "${1%%=*} needs a value"
            case $1 in
            --bin-dir=*) bin_dir=$v ;;
            --version=*) version=$v ;;
            --out=*) out=$v ;;
            --formats=*) formats=$v ;;
            esac
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '/^set -euo pipefail/d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *) usage_error "unknown argument: $1" ;;
        esac
    done
    if [ -n "$version" ] && ! [[ $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]]; then
        usage_error "--version $(quote "$version"): use digits, letters, '.', '+', '~', starting with a digit (no '-')"
    fi
    local f v want_tar=no want_deb=no want_rpm=no
    IFS=, read -ra f <<<"$formats"
    [ ${#f[@]} -gt 0 ] || usage_error "--formats: empty"
    for v in "${f[@]}"; do
        case $v in
        tar) want_tar=yes ;;
        deb) want_deb=yes ;;
        rpm) want_rpm=yes ;;
        *) usage_error "--formats: unknown format $(quote "$v") (tar, deb, rpm)" ;;
        esac
    done
    mkdir -p "$out" || die "cannot create $out"
    out=$(cd "$out" && pwd)

    need_tools "$want_deb" "$want_rpm"
    if [ -z "$bin_dir" ]; then
        build_release "$repo" "$target"
        bin_dir=$(target_dir "$repo")/$target/release
    else
        [ -d "$bin_dir" ] || die "--bin-dir $(quote "$bin_dir"): not a directory"
        bin_dir=$(cd "$bin_dir" && pwd)
    fi

    local b
    for b in chaos-agent chaos-control; do
        check_binary "$bin_dir/$b"
    done
    "$bin_dir/chaos-agent" daemon --help >/dev/null 2>&1 ||
        die "$bin_dir/chaos-agent has no \`daemon\` command, which the unit runs"
    local own
    own=$("$bin_dir/chaos-agent" --version | awk '{print $2}')
    if [ -z "$version" ]; then
        version=$own
        [[ $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]] ||
            die "chaos-agent --version says $(quote "$version"), not a version the packages can use; pass --version"
    elif [ "$version" != "$own" ]; then
        echo "==> note: packaging as version $version; the binaries say $own"
    fi

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/chaos-release.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}

    # Stripped copies: a package never needs debug info (release builds have none already).
    mkdir -p "$TMP/bin"
    for b in chaos-agent chaos-control; do
        strip --strip-debug -o "$TMP/bin/$b" "$bin_dir/$b" || die "strip $bin_dir/$b failed"
        chmod 0755 "$TMP/bin/$b"
    done
    package_unit "$repo" "$TMP/chaos-agent.service"

    local built=()
    if [ "$want_tar" = yes ]; then
        built+=("$(tarball_agent "$repo" "$version" "$target" "$out")")
        built+=("$(tarball_control "$repo" "$version" "$target" "$out")")
    fi
    [ "$want_deb" = no ] || built+=("$(build_deb "$repo" "$version" "$out")")
    [ "$want_rpm" = no ] || built+=("$(build_rpm "$repo" "$version" "$out")")
    (cd "$out" && sha256sum "${built[@]}" >SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
    echo "==> $out"
    (cd "$out" && ls -l "${built[@]}" SHA256SUMS)
}

die() {
    echo "release.sh: $*" >&2
    exit 1
}

usage_error() {
    echo "release.sh: $* (see --help)" >&2
    exit 2
}

quote() { printf '%q' "$1"; }

as_root_apt() { # packages...
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
    echo "==> apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

need_tools() { # want_deb want_rpm
    local -A pkg=([readelf]=binutils [strip]=binutils [sha256sum]=coreutils [tar]=tar [gzip]=gzip)
    [ "$1" = no ] || pkg[dpkg-deb]=dpkg
    [ "$2" = no ] || pkg[rpmbuild]=rpm
    local missing=() t
    for t in "${!pkg[@]}"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("${pkg[$t]}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    as_root_apt "${missing[@]}" || die "missing tools from: ${missing[*]} (as root with apt-get this script installs them)"
}

target_dir() { # repo
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        (cd "$1" && mkdir -p "$CARGO_TARGET_DIR" && cd "$CARGO_TARGET_DIR" && pwd)
    else
        echo "$1/target"
    fi
}

build_release() { # repo target
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"
    if ! rustup target list --installed 2>/dev/null | grep -qx "$2"; then
        command -v rustup >/dev/null 2>&1 || die "the Rust target $2 is missing and rustup is not installed"
        echo "==> rustup target add $2"
        rustup target add "$2" || die "rustup target add $2 failed"
    fi
    if ! command -v musl-gcc >/dev/null 2>&1; then
        as_root_apt musl-tools || die "musl-gcc not found: install Debian's musl-tools (as root: apt-get install musl-tools)"
    fi
    echo "==> cargo build --release --target $2 (chaos-agent, chaos-control)"
    (cd "$1" && CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$2" \
        -p chaos-agent --bin chaos-agent -p chaos-control --bin chaos-control) ||
        die "cargo build failed"
}

# An x86-64 ELF executable that needs no dynamic loader and no shared library, and runs here.
check_binary() { # path
    local f=$1 hdr
    [ -f "$f" ] && [ -x "$f" ] || die "$f: not found or not executable"
    hdr=$(readelf -h "$f" 2>/dev/null) || die "$f: not an ELF file"
    grep -q 'Machine:.*X86-64' <<<"$hdr" || die "$f: not an x86-64 binary"
    if readelf -l "$f" | grep -q 'INTERP'; then
        die "$f is dynamically linked (it has a PT_INTERP program interpreter); build it for x86_64-unknown-linux-musl"
    fi
    if readelf -d "$f" | grep -q '(NEEDED)'; then
        die "$f needs shared libraries: $(readelf -d "$f" | awk '/\(NEEDED\)/ {printf "%s ", $NF}')"
    fi
    local v
    v=$("$f" --version 2>&1) || die "$f --version failed: $v"
    echo "==> $f: static, $v"
}

# The unit for the packages: packaging/chaos-agent.service (written for install.sh, which
# installs to /usr/local) with the packages' paths.
package_unit() { # repo dest
    local src=$1/packaging/chaos-agent.service
    head -n 1 "$src" | grep -q '^# systemd unit for the chaos-agent daemon' &&
        grep -q '^# `systemctl daemon-reload' "$src" ||
        die "$src changed shape: its header (up to \`systemctl daemon-reload ...\`) is replaced for the packages"
    {
        cat <<'EOF'
# systemd unit for the chaos-agent daemon, installed by the chaos-agent package (deb or rpm).
# Change it with `systemctl edit chaos-agent` (a drop-in), not here: an upgrade replaces this
# file. Configure /etc/chaos-agent/ (see /etc/chaos-agent/agent.toml.sample), then
# `systemctl start chaos-agent` (the package enabled it).
EOF
        sed -e '1,/^# `systemctl daemon-reload/d' \
            -e 's|/usr/local/bin/chaos-agent|/usr/bin/chaos-agent|g' \
            -e 's|/usr/local/share/doc/chaos-agent|/usr/share/doc/chaos-agent|g' "$src"
    } >"$2"
    grep -qx 'ExecStart=/usr/bin/chaos-agent daemon' "$2" &&
        grep -qx 'ExecStartPre=-/usr/bin/chaos-agent recover' "$2" &&
        ! grep -q '/usr/local' "$2" ||
        die "$src changed shape: the package's unit must run /usr/bin/chaos-agent (ExecStartPre=-... recover, ExecStart=... daemon) and name no /usr/local path"
}

# tar.gz of DIR's contents under NAME/, owned by root, sorted, dated SOURCE_DATE_EPOCH.
make_tarball() { # dir name out
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$1" -cf - "$2" | gzip -n -9 >"$3/$2.tar.gz"
    echo "$2.tar.gz"
}

tarball_agent() { # repo version target out
    local name=chaos-agent-$2-$3 d
    d=$TMP/tar-agent/$name
    install -d -m 0755 "$d/packaging" "$d/docs"
    install -m 0755 "$TMP/bin/chaos-agent" "$d/chaos-agent"
    install -m 0644 "$1/packaging/chaos-agent.service" "$1/packaging/agent.toml.sample" "$d/packaging/"
    install -m 0755 "$1/packaging/install.sh" "$1/packaging/uninstall.sh" "$d/packaging/"
    install -m 0644 "$1/packaging/next-steps.sh" "$d/packaging/"
    install -m 0644 "$1/README.md" "$d/"
    install -m 0644 "$1/docs/install.md" "$d/docs/"
    make_tarball "$TMP/tar-agent" "$name" "$4"
}

tarball_control() { # repo version target out
    local name=chaos-control-$2-$3 d
    d=$TMP/tar-control/$name
    install -d -m 0755 "$d/docs"
    install -m 0755 "$TMP/bin/chaos-control" "$d/chaos-control"
    install -m 0644 "$1/README.md" "$d/"
    install -m 0644 "$1/control-plane/README.md" "$d/docs/chaos-control.md"
    make_tarball "$TMP/tar-control" "$name" "$4"
}

# The files both packages install, under ROOT, with the unit in UNIT_DIR.
stage_files() { # repo root unit_dir
    local r=$2
    install -d -m 0755 "$r" "$r/usr/bin" "$r$3" "$r/etc/chaos-agent" "$r/usr/share/doc/chaos-agent"
    install -d -m 0700 "$r/etc/chaos-agent/config.d"
    install -m 0755 "$TMP/bin/chaos-agent" "$r/usr/bin/chaos-agent"
    install -m 0644 "$TMP/chaos-agent.service" "$r$3/chaos-agent.service"
    install -m 0644 "$1/packaging/agent.toml.sample" "$r/etc/chaos-agent/agent.toml.sample"
    install -m 0644 "$1/README.md" "$1/docs/install.md" "$r/usr/share/doc/chaos-agent/"
}

# One maintainer script: the shared body, then the entry point that maps the package
# manager's arguments to events (packaging/pkg/).
maintainer_script() { # repo entry
    cat "$1/packaging/next-steps.sh"
    printf '\n'
    cat "$1/packaging/pkg/scripts.sh"
    printf '\n'
    cat "$2"
}

build_deb() { # repo version out
    local r=$TMP/deb file=chaos-agent_$2_amd64.deb s size url
    stage_files "$1" "$r" /lib/systemd/system
    url=$(workspace_url "$1")
    cat >"$r/usr/share/doc/chaos-agent/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: chaos-agent
Source: $url

Files: *
Copyright: the chaos-agent authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
    chmod 0644 "$r/usr/share/doc/chaos-agent/copyright"
    install -d -m 0755 "$r/DEBIAN"
    for s in preinst postinst prerm postrm; do
        { printf '#!/bin/sh\nset -e\n'; maintainer_script "$1" "$1/packaging/pkg/deb/$s"; } >"$r/DEBIAN/$s"
        chmod 0755 "$r/DEBIAN/$s"
    done
    echo /etc/chaos-agent/agent.toml.sample >"$r/DEBIAN/conffiles"
    # what `dpkg --verify` checks (conffiles have their own sums in the status file)
    (cd "$r" && find usr lib -type f | LC_ALL=C sort | xargs md5sum >DEBIAN/md5sums)
    size=$(du -sk --exclude=DEBIAN "$r" | cut -f1)
    cat >"$r/DEBIAN/control" <<EOF
Package: chaos-agent
Version: $2
Architecture: amd64
Maintainer: chaos-agent maintainers <chaos-agent@example.invalid>
Installed-Size: $size
Section: admin
Priority: optional
Homepage: $url
Description: runs chaos experiments on this host and always puts it back
 chaos-agent injects faults into the host it runs on (processes, disks,
 network, CPU, memory, services) and always reverts them: every change is
 journaled before it is made, and \`chaos-agent recover\` undoes it after a
 crash, a kill -9 or a reboot. The chaos-agent service runs
 \`chaos-agent daemon\` against a control plane (chaos-control).
 .
 A static binary: it depends on no library.
EOF
    chmod 0644 "$r/DEBIAN/control" "$r/DEBIAN/conffiles" "$r/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$r" "$3/$file" >/dev/null || die "dpkg-deb --build failed"
    echo "$file"
}

build_rpm() { # repo version out
    local r=$TMP/rpmroot top=$TMP/rpmbuild file=chaos-agent-$2-1.x86_64.rpm spec s
    stage_files "$1" "$r" /usr/lib/systemd/system
    install -d -m 0700 "$r/var/lib/chaos-agent"
    mkdir -p "$top"
    spec=$top/chaos-agent.spec
    {
        sed -e "s|@VERSION@|$2|g" -e "s|@URL@|$(workspace_url "$1")|g" -e "s|@STAGE@|$r|g" \
            "$1/packaging/pkg/rpm/chaos-agent.spec.in"
        for s in pre post preun postun; do
            printf '\n%%%s\n' "$s"
            # (rpm expands % in scriptlets: %% keeps a literal one)
            maintainer_script "$1" "$1/packaging/pkg/rpm/$s" | sed 's/%/%%/g'
        done
    } >"$spec"
    rpmbuild -bb --target x86_64 --quiet \
        --define "_topdir $top" \
        --define "_tmppath $top/tmp" \
        --define "use_source_date_epoch_as_buildtime 1" \
        --define "clamp_mtime_to_source_date_epoch 1" \
        "$spec" >"$top/log" 2>&1 || { cat "$top/log" >&2; die "rpmbuild failed"; }
    [ -f "$top/RPMS/x86_64/$file" ] || { cat "$top/log" >&2; die "rpmbuild did not write RPMS/x86_64/$file"; }
    mv "$top/RPMS/x86_64/$file" "$3/$file"
    echo "$file"
}

workspace_url() { # repo
    awk -F'"' '/^\[workspace.package\]/ {on = 1; next} /^\[/ {on = 0} on && /^repository *=/ {print $2; exit}' "$1/Cargo.toml"
}

main "$@"
