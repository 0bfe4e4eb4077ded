#!/bin/sh
# Stream speed against the zstd command line on the same bytes (foundation
# issue: at least 80% of `zstd -3` writing and of `zstd -d` reading).
set -eu
B=${B:-build/release}
MIB=${STREAM_MIB:-256}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
best() { sort -n | head -1; }
# Each measurement is the best of 3, taken alternately, to damp noise.
for i in 1 2 3; do
	$B/bench/stream_bench write "$d/plain.mp" "$MIB" --no-compress >/dev/null
	s=$(date +%s.%N); zstd -q -3 -f -c "$d/plain.mp" >"$d/ref.zst"; e=$(date +%s.%N)
	echo "$s $e" | awk '{print $2-$1}' >>"$d/zc"
	$B/bench/stream_bench write "$d/circ.zst" "$MIB" | awk '{print $1}' >>"$d/cc"
	s=$(date +%s.%N); zstd -q -d -c "$d/ref.zst" >/dev/null; e=$(date +%s.%N)
	echo "$s $e" | awk '{print $2-$1}' >>"$d/zd"
	$B/bench/stream_bench read "$d/circ.zst" >"$d/rd.out"
	awk '{print $1}' "$d/rd.out" >>"$d/cd"
done
zc=$(best <"$d/zc"); cc=$(best <"$d/cc"); zd=$(best <"$d/zd"); cd=$(best <"$d/cd")
rss=$(awk '{print $2}' "$d/rd.out")
printf 'stream  %d MiB of f32 tensor records (1 MiB each)\n' "$MIB"
printf '  write: circ %.3fs  zstd -3 %.3fs  speed ratio %.2f (goal >= 0.80)\n' "$cc" "$zc" "$(echo "$zc $cc" | awk '{print $1/$2}')"
printf '  read:  circ %.3fs  zstd -d %.3fs  speed ratio %.2f (goal >= 0.80)  peak RSS %s KiB\n' "$cd" "$zd" "$(echo "$zd $cd" | awk '{print $1/$2}')" "$rss"
