// Expected ids for hand-made cases of Hugging Face tokenizers' own added-token
// semantics (single_word, lstrip and rstrip on tokens matched in normalized
// text, Unicode White_Space), which tokenizers.js does not follow: each case
// is [text, pieces], a piece being plain text (encoded alone by tokenizers.js
// with the added tokens taken out of the file, as Hugging Face encodes each
// text between added tokens) or {"added": CONTENT} (that token's id).
//   node hf_pieces.mjs DIR CASES.jsonl    one JSON array of ids per case
//   node hf_pieces.mjs DIR CASES.jsonl --text    the cases' texts, one JSON string a line
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, file, mode] = process.argv.slice(2);
const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
const ids = new Map(json.added_tokens.map((t) => [t.content, t.id]));
const plain = new Tokenizer({ ...json, added_tokens: [] }, {});
const out = [];
for (const line of readFileSync(file, "utf8").split("\n")) {
  if (line === "" || line.startsWith("//")) continue;
  const [text, pieces] = JSON.parse(line);
  if (mode === "--text") {
    out.push(JSON.stringify(text));
    continue;
  }
  const r = [];
  for (const p of pieces) {
    if (typeof p === "string") r.push(...plain.encode(p, { add_special_tokens: false }).ids);
    else if (ids.has(p.added)) r.push(ids.get(p.added));
    else throw new Error(`no added token ${JSON.stringify(p.added)}`);
  }
  out.push(JSON.stringify(r));
}
process.stdout.write(out.join("\n") + "\n");
