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
//   node gen_corpus.mjs tricky N [TOKJSON]  N JSON-string lines of tricky text for the Hugging
//                                       Face tokenizers (tests/tokenizers.bats): fixed cases,
//                                       then random mixes of fragments (letters of many
//                                       scripts, combining marks, digits, runs of spaces,
//                                       tabs, CR and LF, code, emoji, CJK, contractions in
//                                       any case), with TOKJSON's added tokens, whole and cut
//   node gen_corpus.mjs spaces N TOKJSON   N JSON-string lines of runs of spaces (1 to 30),
//                                       tabs, newlines and CR between words, with TOKJSON's
//                                       added tokens whole, cut, and run into their neighbours
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
} else if (mode === "tricky") {
  const n = Number(arg || 1000), tokjson = process.argv[4];
  const added = tokjson ? JSON.parse(readFileSync(tokjson, "utf8")).added_tokens.map((t) => t.content) : [];
  const fixed = [
    "", " ", "  ", "\n", "\r\n", " \n ", "Hello world", " Hello", "hello  world", "a\n\nb",
    "it's I'M you'Re they'VE we'd she'LL 'S 'x ''", "ſ K ﬁ ß ǅ", "12 123 1234 12345 ١٢٣٤ ½ Ⅻ ²",
    "   leading and trailing   ", "\t\ttabs\t", "x\r\n\r\n  y", "line\n  \n\tz  \n",
    "e\u0301 vs \u00e9, A\u030a vs \u00c5, \u1100\u1161\u11a8 vs \uac01, Ω Å",
    "def f(x):\n    return x**2 + 1  # comment\n\tif (a&&b) { c[i] = {'k': \"v\"}; }",
    "中文字符，日本語のテキスト。한국어 텍스트!", "😀👍🏽🇯🇵👨‍👩‍👧 emoji", "\u00a0nbsp\u0085nel\ufeffbom\u3000ideo\u2028ls",
    "<|endoftext|> <s> </s> <bos> <eos> <|begin_of_text|> <|im_start|> <think> <0x0A> ▁ ▁▁",
    "<|begin_of_text|", "<s", "<|im_start|>user\nhi<|im_end|>", "▁x ▁ y▁▁z", "ĠĠ Ċ ĉ",
    "$$$ ... !!! ??? --- ***", "(hello) [world] {x}", "https://example.com/a?b=c&d=e#f",
    "x".repeat(300), " ".repeat(70) + "x", "\n".repeat(40), "ab".repeat(200), "9".repeat(100),
  ];
  const frags = [
    "the", "The", "THE", " of", "and", "ing", "ation", "über", "naïve", "café", "Ελληνικά",
    "русский", "עברית", "العربية", "हिन्दी", "ไทย", "中", "文字", "日本", "カタカナ", "한국",
    "😀", "👍🏽", "🇯🇵", "❤️", "e\u0301", "a\u0308", "\u0301", "0", "7", "42", "2024", "3.14",
    "1,000", "٣", "½", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\u00a0",
    "\u3000", "\u0085", "'s", "'T", "'re", "'VE", "'m", "'Ll", "'d", "'", "\"", ".", ",", "!",
    "?", "...", "-", "--", "_", "(", ")", "{", "}", "[", "]", "<", ">", "/", "\\", "=", "==",
    "+=", "->", "#", "@", "$", "%", "^", "&", "*", "~", "`", "|", ";", ":", "▁", "Ġ", "\x7f",
    "\u200b", "\ufeff", "ﬁ", "ſ", "ǅ", "ß",
  ];
  for (const l of fixed) out.push(JSON.stringify(l) + "\n");
  for (let i = 0; i < n; i++) {
    let s = "";
    const k = 1 + rand(24);
    for (let j = 0; j < k; j++) {
      const r = rand(20);
      if (r === 0 && added.length) {
        const t = added[rand(added.length)];
        s += rand(4) === 0 ? t.slice(0, 1 + rand(Math.max(1, t.length - 1))) : t;
      } else {
        s += pick(frags);
      }
    }
    out.push(JSON.stringify(s) + "\n");
  }
} else if (mode === "spaces") {
  const n = Number(arg || 1000), tokjson = process.argv[4];
  const added = JSON.parse(readFileSync(tokjson, "utf8")).added_tokens.map((t) => t.content);
  const words = ["x", "hello", "Hello", "word", "words", "sword", "_", "é", "e\u0301", "A\u030a\u0301",
    "\u01fa", "\u00c5\u0301", "ex", "e\u0301x", "1", "中", "!", ".", "<", ">", "|", "\u00a0", "\u3000", "\u0085", "\ufeff"];
  for (let i = 0; i < n; i++) {
    let s = "";
    const k = 1 + rand(16);
    for (let j = 0; j < k; j++) {
      const r = rand(10);
      if (r < 3) s += " ".repeat(1 + rand(30));
      else if (r === 3) s += pick(["\t", "\t\t", "\t\t\t", "\n", "\n\n", "\n\n\n\n", "\r\n", " \t ", "\n "]);
      else if (r < 6) {
        const t = pick(added);
        s += rand(3) === 0 ? t.slice(0, 1 + rand(Math.max(1, t.length - 1))) : t;
      } else s += pick(words);
    }
    out.push(JSON.stringify(s) + "\n");
  }
} else {
  process.stderr.write("usage: gen_corpus.mjs long | words BYTES | sweep RANGES | tricky N [TOKJSON] | spaces N TOKJSON\n");
  process.exit(2);
}
process.stdout.write(out.join(""));
