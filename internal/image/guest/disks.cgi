#!/bin/busybox sh
# shoal-tiny HTTP handler for the guest's virtio disks, run by index.cgi.
# busybox httpd runs CGI only under /cgi-bin/ or for a directory, so
# /www/disks and /www/vol are directories: GET /disks is redirected to
# /disks/ (query kept), which index.cgi hands over to this script.
#
#   GET /disks                      one line per virtio disk:
#                                   <dev> <serial> <size in bytes>
#                                   ("-" for a disk without a serial)
#   GET /vol?serial=S               the text in sector 0 of the disk whose
#                                   serial is S (empty if none)
#   GET /vol?serial=S&write=TEXT    writes TEXT (1 to 64 of A-Z a-z 0-9 . _ -)
#                                   and a newline to sector 0 of that disk,
#                                   synced; answers "ok"
#
# Bad input gets 400, an unknown serial 404. The first disk (vda) holds
# the request counter of "GET /" in its sector 0 and is not written.
# SHOAL_SYS_BLOCK and SHOAL_DEV (default /sys/block, /dev) let the host's
# tests run this script on files.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
SYSBLOCK=${SHOAL_SYS_BLOCK:-/sys/block}
DEV=${SHOAL_DEV:-/dev}

# answer STATUS BODY: the whole response; BODY ends with its own newline.
answer() {
	printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
		"$1" ${#2} "$2"
	exit 0
}
bad() { answer "400 Bad Request" "$*
"; }

# valid MAX VALUE: VALUE is 1 to MAX of A-Z a-z 0-9 . _ -
valid() {
	case "$2" in
	"" | *[!A-Za-z0-9._-]*) return 1 ;;
	esac
	[ ${#2} -le "$1" ]
}

serial_of() { tr -cd 'A-Za-z0-9._-' <"$1/serial" 2>/dev/null; }

disks() {
	body=""
	for b in "$SYSBLOCK"/vd*; do
		[ -e "$b/size" ] || continue
		s=$(serial_of "$b")
		body="$body${b##*/} ${s:--} $(($(cat "$b/size") * 512))
"
	done
	answer "200 OK" "$body"
}

vol() {
	serial="" text="" write=""
	old=$IFS
	IFS='&'
	set -f # no globbing of the query's words
	set -- $QUERY_STRING
	set +f
	IFS=$old
	for kv; do
		case "$kv" in
		serial=*) serial=${kv#serial=} ;;
		write=*) text=${kv#write=} write=1 ;;
		*) bad "unknown parameter ${kv%%=*}: want serial= and optionally write=" ;;
		esac
	done
	valid 20 "$serial" || bad "serial: want 1 to 20 of A-Z a-z 0-9 . _ -"
	if [ -n "$write" ]; then
		valid 64 "$text" || bad "write: want 1 to 64 of A-Z a-z 0-9 . _ -"
	fi
	dev=""
	for b in "$SYSBLOCK"/vd*; do
		[ -e "$b/size" ] || continue
		if [ "$(serial_of "$b")" = "$serial" ]; then
			dev=${b##*/}
			break
		fi
	done
	[ -n "$dev" ] || answer "404 Not Found" "no disk with serial $serial
"
	if [ -z "$write" ]; then
		answer "200 OK" "$(dd if="$DEV/$dev" bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1 |
			tr -cd 'A-Za-z0-9._-' | head -c 64)
"
	fi
	[ "$dev" != vda ] || bad "vda holds the request counter of GET /: not written"
	if printf '%s\n' "$text" | dd of="$DEV/$dev" bs=512 count=1 conv=notrunc,sync,fsync 2>/dev/null; then
		answer "200 OK" "ok
"
	fi
	answer "500 Internal Server Error" "write to $dev failed
"
}

path=${REQUEST_URI%%\?*}
case "$path" in
/disks | /disks/) disks ;;
/vol | /vol/) vol ;;
esac
answer "404 Not Found" "no such page: $path
"
