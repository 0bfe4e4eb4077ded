// Generates the large inputs of the exactness test and the benchmark,
// deterministically (a fixed linear congruential generator, no seeds to
// pass), so that nothing large is committed:
//   node gen_corpus.mjs long            long pieces: a 3000-letter word, 2000 digits,
//                                       2000 spaces, CJK and emoji runs, punctuation
//   node gen_corpus.mjs words BYTES     random words, numbers and punctuation, about
//                                       BYTES long (many distinct pieces: the cache churns)
//   node gen_corpus.mjs sweep RANGES    every code point listed in RANGES (see
//                                       tests/data/tokenizer/assigned-unicode14.ranges)
//                                       in contexts that expose its class (L, N, space, other)
import { readFileSync } from "node:fs";

let state = 12345n;
function rand(n) { // 48-bit LCG (drand48's constants), uniform enough for text
  state = (state * 0x5deece66dn + 0xbn) & 0xffffffffffffn;
  return Number(state >> 17n) % n;
}
const pick = (a) => a[rand(a.length)];
const out = [];
const [mode, arg] = process.argv.slice(2);

if (mode === "long") {
  const letters = "abcdefghijklmnopqrstuvwxyz";
  let w = "";
  for (let i = 0; i < 3000; i++) w += letters[rand(26)];
  out.push(w, "\n", "1234567890".repeat(200), "\n", " ".repeat(2000), "x\n");
  let cjk = "";
  for (let i = 0; i < 1000; i++) cjk += String.fromCodePoint(0x4e00 + rand(0x5000));
  out.push(cjk, "\n", "😀👍🏽🇯🇵".repeat(100), "\n", "!?.".repeat(1000), "\n");
  out.push("\n".repeat(500), "\t \n".repeat(300), "ab".repeat(1500), " ", "Ab".repeat(1500), "\n");
} else if (mode === "words") {
  const size = Number(arg || 1000000);
  const syl = ["ka", "ro", "mi", "the", "an", "de", "str", "ing", "tion", "qu", "ex", "ph", "zz",
    "ou", "ea", "ly", "er", "re", "in", "al", "é", "ü", "ñ", "ø", "ж", "ли", "λο", "中", "文"];
  const punct = [".", ",", "!", "?", ";", ":", " -", "'s", "'t", "'ll", "\"", "(", ")", "...", "\n", "\n\n"];
  let n = 0;
  while (n < size) {
    let w = "";
    const k = 1 + rand(4);
    for (let i = 0; i < k; i++) w += pick(syl);
    if (rand(10) === 0) w = w[0].toUpperCase() + w.slice(1);
    if (rand(12) === 0) w = String(rand(100000));
    const s = (rand(8) === 0 ? "  " : " ") + w + (rand(6) === 0 ? pick(punct) : "");
    out.push(s);
    n += Buffer.byteLength(s);
  }
  out.push("\n");
} else if (mode === "sweep") {
  for (const line of readFileSync(arg, "utf8").split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const [a, b] = line.split("-").map((h) => parseInt(h, 16));
    for (let c = a; c <= b; c++) {
      const s = String.fromCodePoint(c);
      out.push("a" + s + "1" + s + " " + s + s + "!" + s + "  " + s + "x\n");
    }
  }
} else {
  process.stderr.write("usage: gen_corpus.mjs long | words BYTES | sweep RANGES\n");
  process.exit(2);
}
process.stdout.write(out.join(""));
