# Helpers for files.cases (sourced by each case that needs them): a tool
# caught in the middle of a run, with its output temporary open.

# start_on_fifo OUT CMD...: runs CMD... in (the background, pid in $pid) with
# the FIFO 'in' as its token stream, feeds it the tiny stream's header and
# first record, and returns once CMD has OUT's temporary open (1 if CMD
# exited before). finish_fifo feeds the rest, closes the FIFO and waits.
start_on_fifo() {
	local out=$1
	shift
	mkfifo in
	"$@" in &
	pid=$!
	exec 3>in
	tiny_tokens 1 >&3
	until compgen -G "$out.tmp.*" >/dev/null; do
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.05
	done
}
finish_fifo() {
	tiny_tokens | tail -n +3 >&3
	exec 3>&-
	wait "$pid"
}

# interrupt SIG OUT CMD...: CMD killed by SIG while it writes OUT; returns
# CMD's exit status (128 + the signal's number when the signal killed it).
interrupt() {
	local sig=$1
	set -m # background jobs keep SIGINT (without job control they ignore it)
	shift
	start_on_fifo "$@" || return 99
	kill -s "$sig" "$pid"
	wait "$pid"
	local rc=$?
	exec 3>&-
	return $rc
}

# A copy of the tiny model, and one of its weights file that differs in its
# last byte only (same size: what cp writes over it in place).
tiny_copy() {
	cp -r "$TINY" m
	cp m/model.safetensors other.safetensors
	printf '\001' | dd of=other.safetensors bs=1 conv=notrunc status=none \
		seek=$(($(stat -c %s other.safetensors) - 1))
}

# start_reading CMD...: runs CMD... in the background (pid in $pid) on the
# FIFO 'in' and feeds it the tiny stream's header and first record; returns
# once CMD has opened the FIFO, that is, after it loaded its model.
start_reading() {
	mkfifo in
	"$@" in &
	pid=$!
	exec 3>in
	tiny_tokens 1 >&3
}
