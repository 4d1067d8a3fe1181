#!/bin/busybox sh
# shoal-tiny disk write log, started by /init: twice a second, a record on
# the first disk saying which boot of the guest wrote it, so that the disk
# alone shows whether two copies of the VM ever wrote to it at once (see
# internal/image/disklog.go, which reads it). Layout, in 512-byte sectors:
#   0       the request counter (index.cgi)
#   8       head: "SHOALHEAD <next position> <boot id>"
#   9       "SHOALDUAL ..." once a writer finds the head moved by another
#   16...   record of position p at sector 16 + p % 65536:
#           "SHOALLOG <p> <boot id> <seq of this boot>"
# Every access bypasses the guest's page cache (O_DIRECT), so a write by
# another copy of the VM is seen at the next look.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
. /etc/shoal/lib.sh
DISK=/dev/vda
RING=65536
BOOT=$(cat $S/boot)

readsec() {
	dd if=$DISK bs=512 skip=$1 count=1 iflag=direct 2>/dev/null | head -c 80 | tr -d '\000' | head -n 1
}
writesec() {
	printf '%s\n' "$2" | dd of=$DISK bs=512 seek=$1 count=1 conv=notrunc,sync,fsync oflag=direct 2>/dev/null
}

[ -b $DISK ] || exit 0
set -- $(readsec 8)
case "$1" in
SHOALHEAD) pos=$2 ;;
"")
	# Only a blank sector may be claimed: the disk may hold other data.
	[ -z "$(dd if=$DISK bs=512 skip=8 count=1 2>/dev/null | tr -d '\000' | head -c 1)" ] || exit 0
	pos=0
	;;
*)
	say "disk log: sector 8 of $DISK is not ours; not logging"
	exit 0
	;;
esac
case "$pos" in '' | *[!0-9]*) exit 0 ;; esac

seq=0
dual=""
check="" # set once this writer's own head is on the disk
while :; do
	set -- $(readsec 8)
	if [ -n "$check" ] && [ -z "$dual" ] && [ "$1 $2 $3" != "SHOALHEAD $pos $BOOT" ]; then
		dual="SHOALDUAL $BOOT expected head $pos, found: $*"
		say "disk log: another writer: $dual"
		writesec 9 "$dual"
	fi
	writesec $((16 + pos % RING)) "SHOALLOG $pos $BOOT $seq" || { sleep 1; continue; }
	pos=$((pos + 1))
	seq=$((seq + 1))
	if writesec 8 "SHOALHEAD $pos $BOOT"; then check=1; else check=""; fi
	usleep 500000
done
