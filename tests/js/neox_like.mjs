// Writes a tokenizer.json built like GPT-NeoX's (Pythia's): byte-level BPE
// (GPT-2's vocabulary and merges from fixtures/gpt2-tokenizer), an NFC
// normalizer, and added tokens as Pythia has them, runs of spaces matched
// in the normalized text ("normalized": true), with more of each kind for
// tests/tokenizers.bats:
//   node neox_like.mjs GPT2DIR            the file compared with @huggingface/tokenizers
//   node neox_like.mjs GPT2DIR --flags    the same, with lstrip, rstrip and single_word on
//                                         normalized tokens (Hugging Face's own semantics,
//                                         which tokenizers.js does not follow: hand-checked)
import { readFileSync } from "node:fs";

const [dir, variant] = process.argv.slice(2);
if (!dir || (variant && variant !== "--flags")) {
  process.stderr.write("usage: neox_like.mjs GPT2DIR [--flags]\n");
  process.exit(2);
}
const vocab = JSON.parse(readFileSync(`${dir}/vocab.json`, "utf8"));
const merges = readFileSync(`${dir}/merges.txt`, "utf8").split("\n")
  .filter((l, i) => l !== "" && !(i === 0 && l.startsWith("#version")));
const flags = variant === "--flags";
const tok = (content, normalized, special, more = {}) =>
  ({ content, single_word: false, lstrip: false, rstrip: false, normalized, special, ...more });
const added = [tok("<|endoftext|>", false, true), tok("<|padding|>", false, true)];
for (let n = 24; n >= 2; n--) added.push(tok(" ".repeat(n), true, false)); // as Pythia
added.push(
  tok("\t\t", true, false), tok("\t\t\t\t", true, false), tok("\n\n\n", true, false),
  tok("e\u0301x", true, false),        // matched as its NFC, "éx"
  tok("A\u030a\u0301", true, false),   // "Ǻ" (not "Å": tokenizers.js takes a byte token spelt as an added token for it)
  tok("hello", true, false),           // a near miss of " hello", "Hello"
  tok("<mask>", true, true),           // normalized and special: only with --special
  tok("<|sep|>", false, false, { lstrip: true, rstrip: true }), // raw, strips around it
  tok("[raw]", false, false, { rstrip: true }),
);
if (flags) {
  added.push(
    tok("<L>", true, false, { lstrip: true }), tok("<R>", true, false, { rstrip: true }),
    tok("word", true, false, { single_word: true }),
    tok("<W>", false, false, { single_word: true }),
  );
  for (const t of added) if (t.content === "   ") t.rstrip = true;   // 3 spaces
  for (const t of added) if (t.content === "\t\t") t.single_word = true;
}
let id = 50256;
const json = {
  version: "1.0", truncation: null, padding: null,
  added_tokens: added.map((t) => ({ id: t.content === "<|endoftext|>" ? 50256 : ++id, ...t })),
  normalizer: { type: "NFC" },
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  model: {
    type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null,
    end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges,
  },
};
process.stdout.write(JSON.stringify(json) + "\n");
