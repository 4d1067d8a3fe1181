# shoal-tiny shell functions, sourced by /init (and by the host-side tests
# of the network-config parser). POSIX sh + busybox applets only.

S=/run/shoal

say() { echo "shoal-tiny: $*"; }

# find_seed mounts the NoCloud seed (ISO9660 labelled cidata) on $S/seed.
find_seed() {
	for d in /dev/vd[b-z] /dev/sr[0-9]*; do
		[ -b "$d" ] || continue
		# ISO9660 primary volume descriptor at 32 KiB: "CD001" at byte 1,
		# the volume ID in bytes 40-71.
		[ "$(dd if="$d" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || continue
		label=$(dd if="$d" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000' | tr A-Z a-z)
		[ "$label" = cidata ] || continue
		if mount -t iso9660 -o ro "$d" $S/seed 2>/dev/null; then
			say "seed on $d"
			return 0
		fi
	done
	return 1
}

# yaml_get KEY FILE prints the value of a top-level "KEY: value" line.
yaml_get() {
	sed -n "s/^$1:[[:space:]]*//p" "$2" | head -n1 |
		sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}

# parse_netcfg FILE turns the netplan v2 document written by
# internal/cloudinit.NetworkConfig into "key value" lines: mac, name, addr,
# gw, dns. Only the first ethernet is used.
parse_netcfg() {
	awk '
	function unq(s) {
		gsub(/^[ \t]+|[ \t]+$/, "", s)
		if (s ~ /^".*"$/ || s ~ /^\047.*\047$/) s = substr(s, 2, length(s) - 2)
		return s
	}
	function emit(k, v) {
		v = unq(v)
		if (v ~ /^[0-9A-Za-z:.\/_-]+$/) print k, v
	}
	function items(k, v,   n, a, i) {
		gsub(/^[ \t]*\[|\][ \t]*$/, "", v)
		n = split(v, a, ",")
		for (i = 1; i <= n; i++) if (unq(a[i]) != "") emit(k, a[i])
	}
	BEGIN { top = 0; eind = -1; eth = 0 }
	{
		line = $0
		sub(/[ \t]+#.*$/, "", line)
		if (line ~ /^[ \t]*(#.*)?$/) next
		match(line, /^ */); ind = RLENGTH; t = substr(line, ind + 1)
		if (t ~ /^- /) { if (list != "") emit(list, substr(t, 3)); next }
		list = ""
		k = t; sub(/:.*$/, "", k)
		v = t; sub(/^[^:]*:/, "", v)
		if (ind == 0 && k == "network" && unq(v) == "") { top = -1; next }
		if (top < 0) top = ind
		if (ind <= top) { sect = k; next }
		if (sect != "ethernets") next
		if (eind < 0) eind = ind
		if (ind <= eind) { eth++; ns = 0; next }
		if (eth != 1) next
		if (ns && ind <= nsind) ns = 0
		if (k == "macaddress") emit("mac", v)
		else if (k == "set-name") emit("name", v)
		else if (k == "gateway4") emit("gw", v)
		else if (k == "nameservers") { ns = 1; nsind = ind }
		else if (k == "addresses") {
			key = ns ? "dns" : "addr"
			if (unq(v) == "") list = key; else items(key, v)
		}
	}
	' "$1"
}

configure_net() {
	mac="" name="" addrs="" gw="" dns=""
	if [ -f $S/seed/network-config ]; then
		while read -r k v; do
			case "$k" in
			mac) mac=$(echo "$v" | tr A-F a-f) ;;
			name) name=$v ;;
			addr) addrs="$addrs $v" ;;
			gw) gw=$v ;;
			dns) dns="$dns $v" ;;
			esac
		done <<EOF
$(parse_netcfg $S/seed/network-config)
EOF
	fi
	iface=""
	for n in /sys/class/net/*; do
		i=${n##*/}
		[ "$i" = lo ] && continue
		[ -e "$n/device" ] || continue
		if [ -n "$mac" ]; then
			[ "$(cat "$n/address")" = "$mac" ] && iface=$i
		elif [ -z "$iface" ]; then
			iface=$i
		fi
	done
	if [ -z "$iface" ]; then
		say "no network interface${mac:+ with MAC $mac}"
		return 1
	fi
	name=${name:-eth0}
	if [ "$iface" != "$name" ]; then
		ip link set dev "$iface" name "$name" 2>/dev/null && iface=$name
	fi
	ip link set dev "$iface" up
	if [ -z "$addrs" ]; then
		say "no static address in the seed, trying DHCP on $iface"
		udhcpc -i "$iface" -n -q -t 3 -T 1 -s /etc/shoal/udhcpc.sh >/dev/null 2>&1
		return 0
	fi
	for a in $addrs; do
		ip addr add "$a" dev "$iface"
		# Tell the neighbours at once: an address used before by another
		# VM may still sit in their ARP caches with the old MAC.
		case "$a" in *.*) arping -q -U -c 2 -I "$iface" "${a%/*}" >/dev/null 2>&1 & ;; esac
	done
	[ -n "$gw" ] && ip route add default via "$gw" dev "$iface"
	: >/etc/resolv.conf
	for d in $dns; do
		echo "nameserver $d" >>/etc/resolv.conf
	done
	return 0
}
