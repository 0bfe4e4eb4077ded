// Encodes text with @huggingface/tokenizers (the tokenizer of
// @huggingface/transformers) from a tokenizer.json, printing ids as
// circ-tokenize does, for tests/tokenizers.bats and bench/tokenize.sh:
//   node hf_encode.mjs DIR --json FILE    JSON string per line -> JSON array per line
//   node hf_encode.mjs DIR --text FILE    whole file -> ids on one line
//   node hf_encode.mjs DIR --bos          the ids the post-processor adds to ""
//   node hf_encode.mjs DIR --bench FILE OUT   JSON lines: prints the seconds encoding them
//                                         takes (encode only, after a warm-up); arrays to OUT
// DIR holds tokenizer.json (and tokenizer_config.json). Added and special tokens in
// the text are matched (as circ-tokenize --special); no BOS is added except with --bos.
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, mode, file] = process.argv.slice(2);
if (!dir || !["--json", "--text", "--bos", "--bench"].includes(mode)) {
  process.stderr.write("usage: hf_encode.mjs DIR --json|--text FILE | --bench FILE OUT | --bos\n");
  process.exit(2);
}
const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
const cfgPath = `${dir}/tokenizer_config.json`;
const config = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, "utf8")) : {};
const tok = new Tokenizer(json, config);
const encode = (s) => tok.encode(s, { add_special_tokens: false }).ids;
if (mode === "--bos") {
  process.stdout.write(JSON.stringify(tok.encode("", { add_special_tokens: true }).ids) + "\n");
  process.exit(0);
}
const text = new TextDecoder("utf-8", { fatal: true }).decode(readFileSync(file));
if (mode === "--bench") { // encode only, each JSON line after a warm-up; arrays to OUT
  const lines = text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
  for (const l of lines.slice(0, 100)) encode(l);
  const t0 = process.hrtime.bigint();
  const out = lines.map(encode);
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  writeFileSync(process.argv[5], out.map((a) => JSON.stringify(a)).join("\n") + "\n");
  process.stdout.write(`${dt}\n`);
} else if (mode === "--text") {
  process.stdout.write(encode(text).join(" ") + "\n");
} else {
  const out = [];
  const lines = text.split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  for (const line of lines) out.push(JSON.stringify(encode(JSON.parse(line))));
  process.stdout.write(out.join("\n") + "\n");
}
