# Sourced by pipelines/common.mk's recipes (bash) for a target that a shell
# command writes, as the tools write theirs with -o:
#
#   . pipelines/atomic.sh TARGET; COMMAND >"$tmp"; atomic_commit
#
# The command writes to a temporary of this run's own (mktemp beside the
# target), renamed into place by atomic_commit, so concurrent runs over one
# run directory never write into each other's files, a rename that loses a
# race leaves an identical whole target, and a failed or interrupted recipe
# leaves the old target or none, never a part. The temporary is removed when
# the recipe's shell exits without committing it (an error under -e, a
# signal), and holds a lock while it lives: stale temporaries of the same
# target (over a minute old, locked by nobody: their writer was killed) are
# removed first, as the tools do for theirs.
atomic_target=$1
for atomic_f in "$atomic_target".tmp.??????; do
	[ -f "$atomic_f" ] && [ ! -L "$atomic_f" ] || continue
	[ -n "$(find "$atomic_f" -maxdepth 0 -mmin +1 2>/dev/null)" ] || continue
	{ flock -n 8 && rm -f "$atomic_f"; } 8<"$atomic_f" 2>/dev/null || :
done
tmp=$(mktemp "$atomic_target.tmp.XXXXXX")
exec 9<"$tmp"
flock -n 9 || :
trap 'rm -f "$tmp"' EXIT
trap 'rm -f "$tmp"; trap - INT; kill -INT $$' INT
trap 'rm -f "$tmp"; trap - TERM; kill -TERM $$' TERM
trap 'rm -f "$tmp"; trap - HUP; kill -HUP $$' HUP
atomic_commit() {
	chmod "$(printf '%o' $((0666 & ~0$(umask))))" "$tmp" # mktemp makes 0600
	sync "$tmp"
	mv -f "$tmp" "$atomic_target"
}
