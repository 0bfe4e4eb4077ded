// Re-encodes a circ-dataset file with @huggingface/tokenizers and checks that
// each answer and wrong answer is one token after its prompt (clean and
// corrupt), and that clean and corrupt have as many tokens; prints, per
// example, {"clean": ids, "corrupt": ids, "answer": ids, "wrong": ids} as
// tokenizers.js encodes them (answers: the one token each adds), for
// tests/tokenizers.bats to compare with circ-tokenize:
//   node check_dataset.mjs DIR DATASET.jsonl
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, file] = process.argv.slice(2);
const tok = new Tokenizer(JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8")), {});
const enc = (s) => tok.encode(s, { add_special_tokens: false }).ids;
let bad = 0;
const out = [];
for (const line of readFileSync(file, "utf8").split("\n")) {
  if (line === "") continue;
  const ex = JSON.parse(line);
  const clean = enc(ex.clean), corrupt = enc(ex.corrupt);
  if (clean.length !== corrupt.length) bad++, process.stderr.write(`lengths differ: ${line}\n`);
  const next = (p, ids, s) => {
    const all = enc(p + s);
    if (all.length !== ids.length + 1 || ids.some((x, i) => all[i] !== x)) {
      bad++;
      process.stderr.write(`${JSON.stringify(s)} is not one token after ${JSON.stringify(p)}\n`);
    }
    return all[all.length - 1];
  };
  const one = (s) => (next(ex.corrupt, corrupt, s), next(ex.clean, clean, s));
  const list = (a) => (Array.isArray(a) ? a : [a]).map(one);
  out.push(JSON.stringify({ clean, corrupt, answer: list(ex.answer), wrong: list(ex.wrong) }));
}
process.stdout.write(out.join("\n") + "\n");
process.exit(bad ? 1 : 0);
