#!/bin/busybox sh
# The kernel lab's /stage2 (`cargo xtask vm`), run by busybox's init (the initramfs's /init,
# pid 1, which reaps every orphan the tests leave, as a real init would) under the Debian kernel
# being tested. It loads the 9p and overlay modules, mounts the host's root file system read-only
# (9p share `hostroot`) under a tmpfs overlay, so the guest sees the host's programs, libraries
# and the built binaries at their own paths while its writes stay in guest memory; binds the
# kernel package's /boot and modules (share `kernel`) over the host's; mounts what fij needs
# (cgroup2, tracefs, debugfs, bpffs); then runs the run directory's run.sh (share `out`, the
# only writable host directory) in that root and writes its exit status next to it.
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev

out=$(sed -n 's/.*fij.out=\([^ ]*\).*/\1/p' /proc/cmdline)
fail() {
    echo "fij-vm: $*" >&2
    poweroff -f
}
echo "fij-vm: kernel $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s"

for m in $(cat /modules/order); do
    insmod "/modules/$m" || fail "insmod $m failed"
done

P9=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /lower /upper /merged /kernel
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || fail "cannot mount the host's root (9p hostroot)"
mount -t tmpfs -o mode=0755 upper /upper && mkdir /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /merged ||
    fail "cannot mount the overlay"
mount -t 9p -o "$P9,ro,cache=loose" kernel /kernel || fail "cannot mount the kernel package (9p kernel)"

M=/merged
mount --bind /kernel/boot $M/boot
# The kernel's modules at its release's path only, beside the host's other releases: their
# `build` links are the kernel headers that stap elaborates against (tests/it/stap.rs). If the
# host has a directory of that release (the headers' links), the kernel's goes over it.
R=$(uname -r)
if [ -d "/lower/usr/lib/modules/$R" ]; then
    mount -t overlay -o "lowerdir=/kernel/lib/modules/$R:/lower/usr/lib/modules/$R" modules \
        "$M/usr/lib/modules/$R" || fail "cannot mount the kernel's modules over the host's $R"
else
    mkdir -p "$M/usr/lib/modules/$R"
    mount --bind "/kernel/lib/modules/$R" "$M/usr/lib/modules/$R"
fi
mount -t proc proc $M/proc
mount -t sysfs sys $M/sys
mount -t devtmpfs dev $M/dev
mkdir -p $M/dev/pts $M/dev/shm
mount -t devpts -o ptmxmode=0666 devpts $M/dev/pts
mount -t tmpfs shm $M/dev/shm
mount -t tmpfs tmp $M/tmp
mount -t tmpfs run $M/run
mount -t cgroup2 cgroup2 $M/sys/fs/cgroup
mount -t tracefs tracefs $M/sys/kernel/tracing
mount -t debugfs debugfs $M/sys/kernel/debug
mount -t bpf bpf $M/sys/fs/bpf
# The kernel runs its module loader (a qdisc or veth asked for by a test) in pid 1's root, the
# initramfs: the helper runs the host's modprobe in the test root, where the modules are.
printf '#!/bin/busybox sh\nexec /bin/busybox chroot %s /sbin/modprobe "$@"\n' $M >/bin/modprobe-in-root
chmod 755 /bin/modprobe-in-root
echo /bin/modprobe-in-root >/proc/sys/kernel/modprobe
mkdir -p "$M$out"
mount -t 9p -o "$P9,cache=none" out "$M$out" || fail "cannot mount the run directory (9p out)"
echo "fij-vm: root file system ready after $(cut -d' ' -f1 /proc/uptime) s"

chroot $M /bin/sh -c "ip link set lo up; hostname -F /etc/hostname; cd '$out' && exec /bin/bash '$out/run.sh'" </dev/console
status=$?
echo "$status" >"$M$out/status"
echo "fij-vm: run.sh exited with $status after $(cut -d' ' -f1 /proc/uptime) s"
sync
poweroff -f
