#!/bin/bash
# Build a Debian guest image the VM suite boots (docs/testing.md).
#
#   tests/vm/build-image.sh OUT_DIR [SUITE]      SUITE: bookworm (default) | bullseye
#
# bookworm: Debian 12, kernel 6.1, glibc 2.36, systemd 252, merged /usr.
# bullseye: Debian 11, kernel 5.10, glibc 2.31, systemd 247, cgroup v2 only; its root is not
#           merged-/usr (modules in /lib/modules) and it has no dpkg-db-backup.timer.
# Writes OUT_DIR/{rootfs.ext4,vmlinuz,initrd.img}. Needs root, mmdebstrap, e2fsprogs and the
# Debian mirror of this machine's apt sources (~30 s idle, ~1 min under load). tests/vm/run.sh
# calls it only when the cache has no image for the hash of this file: change anything here
# and the next run rebuilds. The image holds no project code: the agent binary and the unit
# are copied in at the start of every suite, so a code change never forces a rebuild.
set -euo pipefail

OUT=${1:?usage: build-image.sh OUT_DIR [bookworm|bullseye]}
SUITE=${2:-bookworm}
case $SUITE in
  bookworm|bullseye) ;;
  *) echo "build-image: unknown Debian suite '$SUITE' (bookworm or bullseye)" >&2; exit 2 ;;
esac
# The Debian mirror this machine already uses (first URIs line of its apt sources).
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || { echo "build-image: no Debian mirror in the apt sources; set MIRROR" >&2; exit 1; }
# e2fsprogs: chattr for the needs-manual scenario; iputils-ping/iproute2/nftables: measuring
# and inspecting network faults; qemu-guest-agent: the harness's control channel;
# systemd-timesyncd: the NTP service time.offset stops and starts again (it runs without a
# network, never reaching a server). Both suites have every one of these packages.
PKGS=systemd,systemd-sysv,udev,kmod,e2fsprogs,iproute2,nftables,procps,iputils-ping,qemu-guest-agent,linux-image-amd64,initramfs-tools,zstd,systemd-timesyncd

ROOTFS=$OUT/rootfs
mkdir -p "$OUT"
rm -rf "$ROOTFS"
start=$(date +%s)

# mmdebstrap hooks run under /bin/sh (dash): no brace expansion. MODULES=dep cannot work in a
# chroot, so the initramfs is told its module list before the kernel package is configured.
mmdebstrap --variant=minbase --mode=root --quiet \
  --include="$PKGS" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"; printf "MODULES=list\nCOMPRESS=zstd\n" > "$1/etc/initramfs-tools/conf.d/vm.conf"; printf "virtio_pci\nvirtio_blk\next4\n" >> "$1/etc/initramfs-tools/modules"' \
  --customize-hook='
    set -e
    echo chaosvm > "$1/etc/hostname"
    echo "127.0.1.1 chaosvm" >> "$1/etc/hosts"
    echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$1/etc/fstab"
    chroot "$1" passwd -d root
    # root autologin on the serial console (interactive debugging: vm.py console)
    mkdir -p "$1/etc/systemd/system/serial-getty@ttyS0.service.d"
    printf "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200 %%I \$TERM\n" \
      > "$1/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
    # DHCP on the (slirp, restrict=on) NIC: ens2 10.0.2.15/24, gateway 10.0.2.2, nothing beyond
    printf "[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/20-wired.network"
    chroot "$1" systemctl enable systemd-networkd
    chroot "$1" systemctl mask systemd-networkd-wait-online.service
    # persistent journal: a test reads the log of the boot before a hard reset
    mkdir -p "$1/var/log/journal"
    # fewer moving parts at boot, and no timer firing in the middle of a test
    # (masking a unit a suite does not have, like dpkg-db-backup.timer on bullseye, is harmless)
    chroot "$1" systemctl mask e2scrub_reap.service getty-static.service getty@tty1.service \
      apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
      systemd-tmpfiles-clean.timer
    # drop kernel modules a virtio VM never loads (~250 MiB); net/sched (sch_netem, htb, u32),
    # netfilter and drivers/net/veth.ko stay. /lib/modules: bullseye is not merged-/usr (on
    # bookworm /lib points to /usr/lib)
    kdir=$(echo "$1"/lib/modules/*)
    for d in sound net/wireless net/mac80211 net/bluetooth drivers/gpu drivers/media \
        drivers/infiniband drivers/iio drivers/staging drivers/usb drivers/bluetooth \
        drivers/hid drivers/isdn drivers/input drivers/video drivers/scsi drivers/target \
        drivers/nfc drivers/net/wireless drivers/net/ethernet drivers/net/can; do
      rm -rf "$kdir/kernel/$d"
    done
    chroot "$1" depmod -a "$(basename "$kdir")"
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin
  ' \
  "$SUITE" "$ROOTFS" "$MIRROR"

cp -L "$ROOTFS/vmlinuz" "$OUT/vmlinuz"
cp -L "$ROOTFS/initrd.img" "$OUT/initrd.img"

# ext4 image: used size + 768 MiB of headroom. The suite installs ~120 MiB (the static debug
# binaries, test binaries, two .deb files) and the disk.fill scenarios fill 64 MiB at most on
# `/`, which must stay above disk.fill's reserve for a protected filesystem (a quarter of a
# filesystem this small): with 384 MiB of headroom that reserve was missed by 3 MiB.
used_mb=$(du -sm "$ROOTFS" | cut -f1)
size_mb=$((used_mb + 768))
rm -f "$OUT/rootfs.ext4"
mkfs.ext4 -q -F -L root -d "$ROOTFS" "$OUT/rootfs.ext4" "${size_mb}M"
rm -rf "$ROOTFS"

echo "build-image: $SUITE in $(($(date +%s) - start))s; rootfs ${used_mb} MiB; $(du -sh --apparent-size "$OUT/rootfs.ext4" | cut -f1) image"
