// Encodes text with js-tiktoken's gpt2 encoding, printing ids in the same
// formats as circ-tokenize, for the exactness test (tests/tokenize.bats):
//   node tiktoken_encode.mjs [--special] --text FILE   whole file -> ids on one line
//   node tiktoken_encode.mjs [--special] --json FILE   JSON string per line -> JSON array per line
// Without --special, "<|endoftext|>" in the text is ordinary text (as in
// circ-tokenize without --special); with it, the special token.
import { readFileSync } from "node:fs";
import { getEncoding } from "js-tiktoken";

const args = process.argv.slice(2);
const special = args.includes("--special");
const mode = args.find((a) => a === "--text" || a === "--json");
const file = args.filter((a) => !a.startsWith("--"))[0];
if (!mode || !file) {
  process.stderr.write("usage: tiktoken_encode.mjs [--special] --text|--json FILE\n");
  process.exit(2);
}
const enc = getEncoding("gpt2");
const encode = (s) => (special ? enc.encode(s, "all") : enc.encode(s, [], []));
// fatal: the corpus must be valid UTF-8 (node would otherwise replace bytes).
const text = new TextDecoder("utf-8", { fatal: true }).decode(readFileSync(file));
const out = [];
if (mode === "--text") {
  out.push(encode(text).join(" "));
} else {
  const lines = text.split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  for (const line of lines) out.push(JSON.stringify(encode(JSON.parse(line))));
}
process.stdout.write(out.join("\n") + "\n");
