#!/bin/busybox sh
# shoal-tiny init: PID 1 of the tiny guest. Busybox ash runs its applets
# without symlinks, through /proc/self/exe, so /proc is mounted first.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

/bin/busybox mount -t proc proc /proc

# Host KVM probe: answer and power off before doing anything else.
case " $(cat /proc/cmdline) " in
*" shoal.probe=1 "*)
	echo SHOAL-PROBE-OK >/dev/console
	poweroff -f
	exit 0
	;;
esac

mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/log /mnt
mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s

. /etc/shoal/lib.sh
# busybox halt/poweroff/reboot signal PID 1 (USR1/USR2/TERM).
trap 'say "powering off"; sync; poweroff -f' USR1 USR2
trap 'say "rebooting"; sync; reboot -f' TERM
mkdir -p $S $S/seed
echo 0 >$S/count
tr -d - </proc/sys/kernel/random/uuid | cut -c1-12 >$S/boot

# Kernel modules, dependencies first (the order was resolved at build time).
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done </etc/shoal/modules

ip link set lo up
hostname shoal-tiny

# ACPI power button (QMP system_powerdown): any event on the "Power Button"
# input device means power off. The first disk is synced per request anyway.
for ev in /sys/class/input/event*; do
	[ -e "$ev" ] || continue
	[ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ] || continue
	(
		until dd if="/dev/input/${ev##*/}" of=/dev/null bs=24 count=1; do
			sleep 1
		done
		say "power button pressed, powering off"
		sync
		poweroff -f
	) &
done

userdata=""
if find_seed || { sleep 1; find_seed; }; then
	h=$(yaml_get local-hostname $S/seed/meta-data)
	[ -n "$h" ] && hostname "$h"
	if [ "$(head -c 2 $S/seed/user-data 2>/dev/null)" = "#!" ]; then
		cp $S/seed/user-data $S/user-data && chmod 0755 $S/user-data
		userdata=$S/user-data
	fi
else
	say "no cidata seed found"
fi
hostname >/etc/hostname
configure_net

httpd -p 80 -h /www || say "httpd failed to start"
setsid /etc/shoal/disklog.sh </dev/null >/dev/console 2>&1 &

ips=$(ip -4 -o addr show scope global | awk '{ sub(/\/.*/, "", $4); printf "%s%s", s, $4; s = " " }')
say "serving on ${ips:-no-address}"

if [ -n "$userdata" ]; then
	say "running user-data (log: /var/log/user-data.log)"
	setsid "$userdata" </dev/null >/var/log/user-data.log 2>&1 &
fi

# Root shell on the console, respawned when it exits.
(
	while :; do
		setsid cttyhack sh -l
		sleep 1
	done
) &

# PID 1 must never exit; waiting also reaps orphaned processes.
while :; do
	sleep 3600 &
	wait $!
done
