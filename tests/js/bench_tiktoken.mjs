// Times js-tiktoken's gpt2 encoding of a file, for bench/tokenize.sh.
//   node bench_tiktoken.mjs FILE
// Prints "bytes tokens encode_seconds" for one encode of the whole file,
// after loading the encoding and warming up on the first 64 KB, so that the
// number is js-tiktoken's steady encoding speed (start-up not counted).
import { readFileSync } from "node:fs";
import { getEncoding } from "js-tiktoken";

const file = process.argv[2];
const buf = readFileSync(file);
const text = buf.toString("utf8");
const enc = getEncoding("gpt2");
enc.encode(text.slice(0, 65536), [], []);
const t0 = process.hrtime.bigint();
const ids = enc.encode(text, [], []);
const t1 = process.hrtime.bigint();
console.log(`${buf.length} ${ids.length} ${Number(t1 - t0) / 1e9}`);
