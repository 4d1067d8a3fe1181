#!/bin/busybox sh
# shoal-tiny HTTP handler for "GET /", run by busybox httpd as a CGI.
# (httpd runs it for every directory: /disks/ and /vol/ go to disks.cgi.)
# Answers: boot=<id per boot> count=<requests since boot> disk=<counter>
# The disk counter lives in sector 0 of /dev/vda as "SHOALCTR <n>" and is
# read, incremented, written and fsync'd on every request.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
case "$REQUEST_URI" in
/disks/* | /vol/*) exec /etc/shoal/disks.cgi ;;
esac
S=/run/shoal
DISK=/dev/vda
MAGIC=SHOALCTR

# Serialize requests: mkdir is atomic. A lock older than ~10 s is stale.
i=0
until mkdir $S/lock 2>/dev/null; do
	i=$((i + 1))
	[ $i -ge 2000 ] && break
	usleep 5000
done

count=$(($(cat $S/count 2>/dev/null || echo 0) + 1))
echo $count >$S/count

disk=none
if [ -b $DISK ] && dd if=$DISK of=$S/sector bs=512 count=1 2>/dev/null; then
	hdr=$(head -c 32 $S/sector | tr -d '\000' | head -n 1)
	cur=""
	case "$hdr" in
	"$MAGIC "[0-9]*)
		cur=${hdr#"$MAGIC "}
		cur=${cur%%[!0-9]*}
		;;
	"")
		# Only a wholly blank sector may be claimed.
		[ -z "$(tr -d '\000' <$S/sector | head -c 1)" ] && cur=0
		;;
	esac
	if [ -n "$cur" ]; then
		next=$((cur + 1))
		if printf '%s %d\n' $MAGIC $next |
			dd of=$DISK bs=512 count=1 conv=notrunc,sync,fsync 2>/dev/null; then
			disk=$next
		else
			disk=error
		fi
	fi
fi
rmdir $S/lock 2>/dev/null

body="boot=$(cat $S/boot) count=$count disk=$disk"
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n' \
	$((${#body} + 1)) "$body"
