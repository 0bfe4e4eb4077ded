#!/usr/bin/env bats
# circ-train sae / circ-train transcoder: sparse dictionaries trained on the
# superposition fixture (the true directions recovered) and on a fixture
# model's activations (a SAELens directory that circ-forward --dict reads),
# determinism, checkpoint and resume, and bad input. The gradients are
# checked in tests/unit/test_dict_train.c.
load helper

M=fixtures/induction-trained

# A corpus of n ids below 256 (a fixed pseudo-random sequence) into $1.
corpus() {
	awk -v n="${2:-20000}" 'BEGIN { x = 7; for (i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%d%s", x % 256, (i % 24 == 23 ? "\n" : " ") } }' >"$1"
}

small=(--ctx-len 24 --seqs 4 --batch 128 --buffer 512 --d-sae 128 --threads 2)

@test "sae --help lists the dictionary options and exits 0" {
	run circ-train sae --help
	assert_success
	for f in --model --fixture --hook --arch --k --k-aux --l1 --l0 --bandwidth --buffer --buffer-dir --checkpoint --resume; do
		[[ "$output" == *"$f"* ]] || { echo "no $f"; return 1; }
	done
	run circ-train --help
	assert_output --partial "sae|transcoder"
}

@test "superposition fixture: topk SAE and relu transcoder recover the true directions (>= 0.95)" {
	run --separate-stderr circ-train sae --fixture --arch topk --k 4 --d-sae 128 --steps 1000 --batch 256 \
		--lr 1e-2 --warmup 50 --dead-tokens 12800 --threads 1 --out "$T/s"
	assert_success
	rec=$(sed -n 's/.*decoder.s rows \([0-9.]*\)$/\1/p' <<<"$stderr")
	echo "topk sae: $rec"
	awk -v r="$rec" 'BEGIN { exit !(r >= 0.95) }'
	run --separate-stderr circ-train transcoder --fixture --arch relu --l1 0.3 --d-sae 128 --steps 1000 \
		--batch 256 --lr 1e-2 --warmup 50 --threads 1 --out "$T/t"
	assert_success
	rec=$(sed -n 's/.*decoder.s rows \([0-9.]*\)$/\1/p' <<<"$stderr")
	echo "relu transcoder: $rec"
	awk -v r="$rec" 'BEGIN { exit !(r >= 0.95) }'
	# the written directory: SAELens's layout
	run jq -r '.architecture, .d_in, .d_sae, .d_out' "$T/t/cfg.json"
	assert_output "$(printf 'transcoder\n32\n128\n40')"
}

@test "each architecture trains on a model's activations and circ-forward --dict reads the result" {
	corpus "$T/ids" 30000
	for a in relu topk batchtopk jumprelu; do
		run --separate-stderr circ-train sae --model $M --hook blocks.1.hook_resid_pre --arch $a --steps 20 "${small[@]}" --out "$T/$a" "$T/ids"
		assert_success
		[ -z "$stderr" ] # no progress line off a terminal
		run bash -o pipefail -c "circ-dataset induction --n 4 --len 6 --vocab-lo 0 --vocab-hi 256 | circ-tokenize --model-dir $M | circ-forward --model $M --dict '$T/$a' --json | sed -n 2p | jq -r '.architecture, .d_in, .d_sae, .l0 > 0'"
		assert_success
		exp=$a
		[ $a = relu ] && exp=standard
		[ $a = batchtopk ] && exp=jumprelu
		assert_output "$(printf '%s\n64\n128\ntrue' "$exp")"
	done
}

@test "transcoder on the MLP (ln2.hook_normalized -> hook_mlp_out), from a pipe, with --log" {
	corpus "$T/ids" 20000
	run --separate-stderr bash -c "circ-train transcoder --model $M --hook blocks.1.ln2.hook_normalized --arch jumprelu --steps 10 --log 5 ${small[*]} --out '$T/tc' <'$T/ids'"
	assert_success
	[[ "$stderr" == *"step 10 mse"*"tokens/s"* ]]
	run jq -r '.hook_name, .hook_name_out, .architecture' "$T/tc/cfg.json"
	assert_output "$(printf 'blocks.1.ln2.hook_normalized\nblocks.1.hook_mlp_out\njumprelu_transcoder')"
}

@test "--skip: a skip transcoder (W_skip learned, SAELens's skip_transcoder) that circ-forward --dict reads; SAEs refuse it" {
	corpus "$T/ids" 30000
	for a in topk jumprelu; do
		circ-train transcoder --model $M --hook blocks.1.ln2.hook_normalized --arch $a --skip --steps 20 "${small[@]}" --out "$T/$a" "$T/ids"
		run jq -r '.architecture' "$T/$a/cfg.json"
		exp=skip_transcoder
		[ $a = jumprelu ] && exp=jumprelu_skip_transcoder
		assert_output $exp
		# W_skip (d_out, d_in) was learned: not all zero
		run /usr/bin/python3 -c "
import sys; sys.path.insert(0, 'tests/ref'); import stio
w = stio.read_safetensors('$T/$a/sae_weights.safetensors')['W_skip']
print(w.shape, bool(abs(w).max() > 0))"
		assert_output "(64, 64) True"
		run bash -o pipefail -c "circ-dataset induction --n 4 --len 6 --vocab-lo 0 --vocab-hi 256 | circ-tokenize --model-dir $M | circ-forward --model $M --dict '$T/$a' --json | sed -n 2p | jq -r '.architecture, .fvu < 10'"
		assert_success
		assert_output "$(printf '%s\ntrue' $exp)"
	done
	run --separate-stderr circ-train sae --model $M --skip --steps 2 "${small[@]}" --out "$T/x" "$T/ids"
	assert_failure 2
	[[ "$stderr" == *"'--skip' applies to transcoders only"* ]]
}

@test "same options give the same bytes; a resumed run gives the uninterrupted run's bytes" {
	corpus "$T/ids" 30000
	args=(sae --model $M --hook blocks.0.hook_mlp_out --arch topk --k 8 --dead-tokens 500 --steps 30 "${small[@]}")
	circ-train "${args[@]}" --out "$T/a" "$T/ids"
	circ-train "${args[@]}" --out "$T/b" "$T/ids"
	cmp "$T/a/sae_weights.safetensors" "$T/b/sae_weights.safetensors"
	circ-train "${args[@]}" --checkpoint "$T/ck" --every 4 --stop-after 13 "$T/ids"
	[ ! -e "$T/c" ]
	circ-train "${args[@]}" --resume "$T/ck" --out "$T/c" "$T/ids"
	cmp "$T/a/sae_weights.safetensors" "$T/c/sae_weights.safetensors"
	# other options are refused by name
	run --separate-stderr circ-train "${args[@]/--k/--k-aux}" --resume "$T/ck" --out "$T/d" "$T/ids"
	assert_failure 1
	[[ "$stderr" == *"checkpoint made with other options"* ]]
}

@test "--buffer-dir: the buffer in a file on disk serves the same rows, leaves nothing behind, resumes" {
	corpus "$T/ids" 30000
	mkdir "$T/buf"
	args=(sae --model $M --hook blocks.0.hook_mlp_out --arch topk --k 8 --steps 20 "${small[@]}")
	circ-train "${args[@]}" --out "$T/a" "$T/ids"
	circ-train "${args[@]}" --buffer-dir "$T/buf" --out "$T/b" "$T/ids"
	cmp "$T/a/sae_weights.safetensors" "$T/b/sae_weights.safetensors"
	[ -z "$(ls -A "$T/buf")" ]
	circ-train "${args[@]}" --buffer-dir "$T/buf" --checkpoint "$T/ck" --every 4 --stop-after 9 "$T/ids"
	circ-train "${args[@]}" --resume "$T/ck" --out "$T/c" "$T/ids"
	cmp "$T/a/sae_weights.safetensors" "$T/c/sae_weights.safetensors"
	run --separate-stderr circ-train "${args[@]}" --buffer-dir "$T/none" --out "$T/d" "$T/ids"
	assert_failure 1
	[[ "$stderr" == *"--buffer-dir"*"$T/none"* ]]
	[ ! -e "$T/d" ]
}

@test "--normalize: SAELens's expected_average_only_in with its factor; resumed alike" {
	corpus "$T/ids" 30000
	base=(sae --model $M --hook blocks.1.hook_resid_pre --arch relu --steps 12 "${small[@]}")
	args=("${base[@]}" --normalize)
	circ-train "${args[@]}" --out "$T/a" "$T/ids"
	run jq -r .normalize_activations "$T/a/cfg.json"
	assert_output expected_average_only_in
	run jq -r '.scaling_factor > 0 and .scaling_factor != 1' "$T/a/activation_scaler.json"
	assert_output true
	circ-train "${args[@]}" --checkpoint "$T/ck" --stop-after 5 "$T/ids"
	circ-train "${args[@]}" --resume "$T/ck" --out "$T/b" "$T/ids"
	cmp "$T/a/sae_weights.safetensors" "$T/b/sae_weights.safetensors"
	cmp "$T/a/activation_scaler.json" "$T/b/activation_scaler.json"
	run --separate-stderr circ-train "${base[@]}" --resume "$T/ck" --out "$T/c" "$T/ids"
	assert_failure 1
	[[ "$stderr" == *"made with --normalize"* ]]
}

@test "--tokens: a token stream's clean ids; another tokenizer's stream is refused" {
	circ-dataset induction --n 300 --len 10 --vocab-lo 0 --vocab-hi 256 | circ-tokenize --model-dir $M >"$T/tok"
	run --separate-stderr circ-train sae --model $M --tokens --steps 3 "${small[@]}" --out "$T/o" "$T/tok"
	assert_success
	[ -s "$T/o/sae_weights.safetensors" ]
	circ-dataset induction --n 30 --len 10 --vocab-lo 0 --vocab-hi 256 | circ-tokenize --vocab-dir fixtures/gpt2-tokenizer >"$T/other"
	run --separate-stderr circ-train sae --model $M --tokens --steps 3 "${small[@]}" --out "$T/p" "$T/other"
	assert_failure 1
	[[ "$stderr" == *"another tokenizer"* ]]
	corpus "$T/ids" 100
	run --separate-stderr circ-train sae --model $M --tokens --steps 3 "${small[@]}" --out "$T/p" "$T/ids"
	assert_failure 1
	run --separate-stderr circ-train sae --fixture --tokens --out "$T/p"
	assert_failure 2
}

@test "bad input: ids outside the vocabulary, junk, a short corpus, a missing file" {
	printf '1 2 3 999 4\n' >"$T/bad"
	run --separate-stderr circ-train sae --model $M --steps 2 "${small[@]}" --out "$T/o" "$T/bad"
	assert_failure 1
	[[ "$stderr" == *"'$T/bad': token 3: id outside the model's vocabulary (257 ids)"* ]]
	printf '1 2 x 4\n' >"$T/junk"
	run --separate-stderr circ-train sae --model $M --steps 2 "${small[@]}" --out "$T/o" "$T/junk"
	assert_failure 1
	[[ "$stderr" == *"unexpected 'x'"* ]]
	printf '1 2 \001 4\n' >"$T/junk"
	run --separate-stderr circ-train sae --model $M --steps 2 "${small[@]}" --out "$T/o" - <"$T/junk"
	assert_failure 1
	[[ "$stderr" == *"'<stdin>': token 2: unexpected byte 0x01"* ]]
	# a token stream without --tokens: said so, not read as junk text
	circ-cat --to-msgpack -o "$T/stream.circ" tests/data/tiny/tokens.jsonl
	for f in tests/data/tiny/tokens.jsonl "$T/stream.circ"; do
		run --separate-stderr circ-train sae --model $M --steps 2 "${small[@]}" --out "$T/o" "$f"
		assert_failure 1
		[[ "$stderr" == *"a circ stream or JSON lines, not token ids as text: give --tokens"* ]]
	done
	corpus "$T/short" 500
	run --separate-stderr circ-train sae --model $M --steps 2 "${small[@]}" --out "$T/o" "$T/short"
	assert_failure 1
	[[ "$stderr" == *"'$T/short': corpus exhausted after 20 sequences of 24 tokens; the run takes about "*" tokens (--buffer rows, then --steps x --batch)"* ]]
	run --separate-stderr circ-train sae --model $M --steps 2 "${small[@]}" --out "$T/o" "$T/none"
	assert_failure 1
	[[ "$stderr" == *"'$T/none': cannot open"* ]]
	[ ! -e "$T/o" ]
}

@test "usage errors exit 2" {
	run circ-train sae --fixture
	assert_failure 2
	run --separate-stderr circ-train sae --out "$T/o"
	assert_failure 2
	[[ "$stderr" == *"--model DIR and --fixture"* ]]
	run --separate-stderr circ-train sae --fixture --arch gated --out "$T/o"
	assert_failure 2
	[[ "$stderr" == *"unknown architecture 'gated'"* ]]
	run --separate-stderr circ-train sae --fixture --hook-out blocks.0.hook_mlp_out --out "$T/o"
	assert_failure 2
	[[ "$stderr" == *"transcoders only"* ]]
	run --separate-stderr circ-train sae --model $M --hook blocks.7.hook_resid_pre --out "$T/o"
	assert_failure 2
	[[ "$stderr" == *"blocks.7"* ]]
	run --separate-stderr circ-train sae --model $M --hook blocks.0.hook_bogus --out "$T/o"
	assert_failure 2
	[[ "$stderr" == *"hook_bogus"* ]]
	run --separate-stderr circ-train sae --fixture --k 500 --d-sae 100 --out "$T/o"
	assert_failure 2
	run --separate-stderr circ-train sae --fixture --batch 100 --buffer 150 --out "$T/o"
	assert_failure 2
	[[ "$stderr" == *"two batches"* ]]
	run --separate-stderr circ-train sae --model $M --ctx-len 100 --out "$T/o"
	assert_failure 2
	run circ-train sae --fixture --bogus
	assert_failure 2
}

@test "an output directory that cannot be written is an error" {
	run --separate-stderr circ-train sae --fixture --steps 2 --batch 64 --d-sae 64 --out /proc/circ-no
	assert_failure 1
	[[ "$stderr" == *"/proc/circ-no"* ]]
	# a missing parent is found before training, not after
	run --separate-stderr circ-train sae --fixture --steps 100000 --batch 64 --d-sae 64 --out "$T/no/such/dir"
	assert_failure 1
	[[ "$stderr" == *"'$T/no/such/dir': cannot create: its parent directory '$T/no/such/' does not exist"* ]]
}
