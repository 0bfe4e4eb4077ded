# Transcoder sets for the model families of tests/data/families, shared by
# tests/trace_family.bats and tests/tcircuit_family.bats: every input hook
# kind across the families, a layer without a transcoder in some.

mk() { # dir layer hook [dict_ref make options]
	local d=$1 l=$2 hook=$3
	shift 3
	/usr/bin/python3 tests/ref/dict_ref.py make "$d" --hook "blocks.$l.$hook" \
		--hook-out "blocks.$l.hook_mlp_out" --d-in 64 --d-sae 48 --seed $((l + 11)) "$@" >/dev/null
}

# Transcoders for family $1 in $T/$1: every input hook kind across the
# families, a layer without a transcoder in some.
make_set() {
	local f=$1 S="$T/$1"
	case $f in
	llama)
		mk "$S/a" 0 ln2.hook_normalized --arch transcoder
		mk "$S/b" 1 ln2.hook_normalized --arch jumprelu_transcoder --fold-ln 0
		;;
	llama-tied) mk "$S/b" 1 hook_mlp_in --arch jumprelu_transcoder ;; # layer 0: none
	mistral)
		mk "$S/a" 0 hook_resid_mid --arch transcoder
		mk "$S/b" 1 ln2.hook_normalized --arch transcoder
		;;
	qwen2 | qwen3 | gemma)
		mk "$S/a" 0 ln2.hook_normalized --arch transcoder --fold-ln 0
		mk "$S/b" 1 ln2.hook_normalized --arch jumprelu_transcoder
		;;
	gemma2 | gemma3_text)
		mk "$S/a" 0 ln2.hook_normalized --arch transcoder
		mk "$S/b" 1 ln2.hook_normalized --arch jumprelu_transcoder --fold-ln 0
		mk "$S/d" 3 hook_mlp_in --arch transcoder # layer 2: none
		;;
	olmo2)
		mk "$S/a" 0 ln2.hook_normalized --arch transcoder # no norm: the residual
		mk "$S/b" 1 hook_resid_mid --arch jumprelu_transcoder
		;;
	gpt_neox)
		mk "$S/a" 0 ln2.hook_normalized --arch transcoder --fold-ln 0
		mk "$S/b" 1 hook_mlp_in --arch jumprelu_transcoder
		;;
	esac
}
