/*
 * tasks: the dataset generators. Each generator draws from one circ_rng in
 * a fixed order per example (written next to each generator and in
 * man/circ-dataset.1), builds the example as a jansson object with keys in
 * a fixed order and hands the compact JSON text to the caller.
 *
 * The lists below are copies of the JSON files in fixtures/tasks (ACDC's lists, MIT
 * License; see fixtures/tasks/NOTICE), compiled in so that circ-dataset
 * needs no data files at run time. tests/unit/test_bpe.c checks that they
 * equal the fixture files item by item. The subject-verb agreement lists
 * are circ's own (no fixture copy).
 */
#include "tasks.h"

#include <stdarg.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* ---- lists (from fixtures/tasks: ioi_lists.json, greaterthan.json,
 * docstring_lists.json) ---- */
static const char *const ioi_names[] = {
    "Michael",	"Christopher", "Jessica",   "Matthew",	"Ashley",    "Jennifer", "Joshua",
    "Amanda",	"Daniel",      "David",	    "James",	"Robert",    "John",	 "Joseph",
    "Andrew",	"Ryan",	       "Brandon",   "Jason",	"Justin",    "Sarah",	 "William",
    "Jonathan", "Stephanie",   "Brian",	    "Nicole",	"Nicholas",  "Anthony",	 "Heather",
    "Eric",	"Elizabeth",   "Adam",	    "Megan",	"Melissa",   "Kevin",	 "Steven",
    "Thomas",	"Timothy",     "Christina", "Kyle",	"Rachel",    "Laura",	 "Lauren",
    "Amber",	"Brittany",    "Danielle",  "Richard",	"Kimberly",  "Jeffrey",	 "Amy",
    "Crystal",	"Michelle",    "Tiffany",   "Jeremy",	"Benjamin",  "Mark",	 "Emily",
    "Aaron",	"Charles",     "Rebecca",   "Jacob",	"Stephen",   "Patrick",	 "Sean",
    "Erin",	"Jamie",       "Kelly",	    "Samantha", "Nathan",    "Sara",	 "Dustin",
    "Paul",	"Angela",      "Tyler",	    "Scott",	"Katherine", "Andrea",	 "Gregory",
    "Erica",	"Mary",	       "Travis",    "Lisa",	"Kenneth",   "Bryan",	 "Lindsey",
    "Kristen",	"Jose",	       "Alexander", "Jesse",	"Katie",     "Lindsay",	 "Shannon",
    "Vanessa",	"Courtney",    "Christine", "Alicia",	"Cody",	     "Allison",	 "Bradley",
    "Samuel",
};
static const char *const ioi_places[] = {
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
};
static const char *const ioi_objects[] = {
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
};
static const char *const ioi_baba[] = {
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to "
    "[A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
};
static const char *const ioi_abba[] = {
    "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [A] and [B] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [A] and [B] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [A] and [B] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to "
    "[A]",
    "Then, [A] and [B] had a long argument, and afterwards [B] said to [A]",
    "After [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [A] and [B] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [A] and [B] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [A] and [B] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [A] and [B] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [A] and [B] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [A] and [B] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [A] and [B] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
};
static const char *const gt_nouns[] = {
    "abduction",     "accord",	       "affair",       "agreement",	"appraisal",
    "assaults",	     "assessment",     "attack",       "attempts",	"campaign",
    "captivity",     "case",	       "challenge",    "chaos",		"clash",
    "collaboration", "coma",	       "competition",  "confrontation", "consequence",
    "conspiracy",    "construction",   "consultation", "contact",	"contract",
    "convention",    "cooperation",    "custody",      "deal",		"decline",
    "decrease",	     "demonstrations", "development",  "disagreement",	"disorder",
    "dispute",	     "domination",     "dynasty",      "effect",	"effort",
    "employment",    "endeavor",       "engagement",   "epidemic",	"evaluation",
    "exchange",	     "existence",      "expansion",    "expedition",	"experiments",
    "fall",	     "fame",	       "flights",      "friendship",	"growth",
    "hardship",	     "hostility",      "illness",      "impact",	"imprisonment",
    "improvement",   "incarceration",  "increase",     "insurgency",	"invasion",
    "investigation", "journey",	       "kingdom",      "marriage",	"modernization",
    "negotiation",   "notoriety",      "obstruction",  "operation",	"order",
    "outbreak",	     "outcome",	       "overhaul",     "patrols",	"pilgrimage",
    "plague",	     "plan",	       "practice",     "process",	"program",
    "progress",	     "project",	       "pursuit",      "quest",		"raids",
    "reforms",	     "reign",	       "relationship", "retaliation",	"riot",
    "rise",	     "rivalry",	       "romance",      "rule",		"sanctions",
    "shift",	     "siege",	       "slump",	       "stature",	"stint",
    "strikes",	     "study",	       "test",	       "testing",	"tests",
    "therapy",	     "tour",	       "tradition",    "treaty",	"trial",
    "trip",	     "unemployment",   "voyage",       "warfare",	"work",
};
static const char *const ds_names[] = {
    "data",	"name",	    "file",	"value",   "test",    "new",	  "result",	 "line",
    "user",	"key",	    "default",	"request", "path",    "output",	  "node",	 "item",
    "url",	"model",    "response", "text",	   "version", "function", "log",	 "string",
    "field",	"start",    "number",	"values",  "sub",     "index",	  "error",	 "current",
    "context",	"image",    "message",	"check",   "json",    "create",	  "size",	 "event",
    "state",	"row",	    "obj",	"parser",  "end",     "files",	  "form",	 "query",
    "fields",	"instance", "label",	"run",	   "action",  "target",	  "array",	 "code",
    "num",	"table",    "source",	"msg",	   "config",  "first",	  "required",	 "options",
    "ret",	"update",   "module",	"status",  "group",   "content",  "client",	 "filename",
    "results",	"last",	    "read",	"command", "val",     "base",	  "format",	 "color",
    "settings", "order",    "found",	"count",   "match",   "tag",	  "title",	 "parent",
    "call",	"session",  "token",	"server",  "host",    "date",	  "description", "mode",
    "expected", "project",  "info",	"valid",   "page",    "header",	  "option",	 "task",
    "shape",	"load",	    "names",	"port",	   "old",     "resource", "root",
};
static const char *const ds_nouns[] = {
    "price",	     "control",	    "action",	     "cost",	   "issue",	 "process",
    "position",	     "course",	    "minute",	     "education",  "type",	 "research",
    "subject",	     "girl",	    "age",	     "father",	   "force",	 "order",
    "value",	     "act",	    "matter",	     "health",	   "lot",	 "street",
    "patient",	     "class",	    "mind",	     "church",	   "condition",	 "paper",
    "bank",	     "century",	    "section",	     "activity",   "table",	 "building",
    "sense",	     "sort",	    "staff",	     "team",	   "student",	 "language",
    "town",	     "plan",	    "management",    "morning",	   "committee",	 "product",
    "practice",	     "evidence",    "ground",	     "letter",	   "foot",	 "boy",
    "back",	     "game",	    "food",	     "union",	   "role",	 "event",
    "land",	     "art",	    "support",	     "range",	   "stage",	 "trade",
    "voice",	     "arm",	    "club",	     "field",	   "history",	 "parent",
    "account",	     "material",    "care",	     "manager",	   "project",	 "record",
    "example",	     "training",    "window",	     "air",	   "light",	 "wife",
    "quality",	     "rule",	    "pound",	     "story",	   "tax",	 "worker",
    "data",	     "model",	    "nature",	     "bed",	   "hospital",	 "method",
    "unit",	     "detail",	    "date",	     "wall",	   "computer",	 "amount",
    "bit",	     "president",   "chapter",	     "property",   "son",	 "director",
    "leader",	     "south",	    "application",   "board",	   "king",	 "production",
    "operation",     "share",	    "lord",	     "contract",   "picture",	 "test",
    "security",	     "election",    "source",	     "colour",	   "future",	 "site",
    "loss",	     "shop",	    "animal",	     "heart",	   "purpose",	 "standard",
    "page",	     "doctor",	    "factor",	     "hair",	   "love",	 "music",
    "charge",	     "pattern",	    "design",	     "piece",	   "population", "tree",
    "knowledge",     "performance", "plant",	     "pressure",   "fire",	 "environment",
    "size",	     "analysis",    "rest",	     "success",	   "thought",	 "region",
    "list",	     "relation",    "set",	     "space",	   "statement",	 "demand",
    "sea",	     "step",	    "capital",	     "choice",	   "player",	 "station",
    "film",	     "feature",	    "income",	     "individual", "cup",	 "technology",
    "machine",	     "cell",	    "degree",	     "energy",	   "growth",	 "treatment",
    "mile",	     "function",    "risk",	     "sound",	   "task",	 "top",
    "resource",	     "floor",	    "science",	     "style",	   "hall",	 "horse",
    "response",	     "character",   "user",	     "answer",	   "dog",	 "look",
    "brother",	     "argument",    "season",	     "bill",	   "element",	 "glass",
    "duty",	     "claim",	    "fund",	     "leg",	   "park",	 "title",
    "note",	     "daughter",    "sun",	     "box",	   "river",	 "profit",
    "division",	     "stone",	    "post",	     "client",	   "help",	 "image",
    "oil",	     "sector",	    "attack",	     "direction",  "seat",	 "employment",
    "goal",	     "sign",	    "ability",	     "campaign",   "fish",	 "item",
    "medium",	     "show",	    "version",	     "drug",	   "library",	 "press",
    "surface",	     "blood",	    "culture",	     "memory",	   "return",	 "bar",
    "talk",	     "access",	    "deal",	     "star",	   "text",	 "cause",
    "mouth",	     "payment",	    "context",	     "reference",  "second",	 "article",
    "chair",	     "earth",	    "object",	     "agency",	   "card",	 "collection",
    "communication", "public",	    "document",	     "weight",	   "bird",	 "rock",
    "call",	     "edge",	    "miss",	     "option",	   "quarter",	 "stock",
    "aid",	     "concept",	    "match",	     "network",	   "radio",	 "target",
    "finger",	     "forest",	    "race",	     "sex",	   "ball",	 "crime",
    "message",	     "peace",	    "review",	     "scale",	   "scene",	 "speech",
    "band",	     "expression",  "hill",	     "reader",	   "owner",	 "trust",
    "truth",	     "turn",	    "file",	     "past",	   "start",	 "trial",
    "balance",	     "copy",	    "league",	     "length",	   "wind",	 "front",
    "move",	     "pain",	    "spirit",	     "train",	   "contact",	 "official",
    "strength",	     "cash",	    "gas",	     "shape",	   "agent",	 "pair",
    "protection",    "rise",	    "driver",	     "master",	   "meaning",	 "vote",
    "adult",	     "play",	    "fig",	     "route",	   "speed",	 "credit",
    "impact",	     "danger",	    "flower",	     "half",	   "path",	 "track",
    "video",	     "aim",	    "bag",	     "comment",	   "content",	 "distance",
    "gold",	     "link",	    "skin",	     "boat",	   "dad",	 "prison",
    "sight",	     "wine",	    "offer",	     "writer",	   "hole",	 "package",
    "confidence",    "generation",  "key",	     "phone",	   "sample",	 "ship",
    "threat",	     "volume",	    "author",	     "background", "engine",	 "entry",
    "stuff",	     "yard",	    "bus",	     "regulation", "row",	 "song",
    "category",	     "consumer",    "football",	     "meal",	   "wood",	 "bridge",
    "description",   "existence",   "flat",	     "lip",	   "session",	 "sheet",
    "code",	     "flight",	    "limit",	     "plate",	   "rain",	 "respect",
    "writing",	     "capacity",    "dream",	     "selection",  "spring",	 "while",
    "definition",    "egg",	    "examination",   "mark",	   "notice",	 "output",
    "will",	     "address",	    "bottom",	     "kid",	   "middle",	 "neck",
    "run",	     "acid",	    "assembly",	     "birth",	   "ear",	 "error",
    "module",	     "store",	    "transfer",	     "wave",	   "channel",	 "component",
    "cut",	     "fee",	    "lead",	     "weather",	   "block",	 "brain",
    "guide",	     "program",	    "screen",	     "connection", "cover",	 "map",
    "metal",	     "phase",	    "pool",	     "search",	   "sequence",	 "sky",
    "sum",	     "trip",	    "cat",	     "display",	   "gallery",	 "gate",
    "heat",	     "location",    "reading",	     "theme",	   "drive",	 "faith",
    "hell",	     "learning",    "opening",	     "priority",   "spot",	 "tool",
    "castle",	     "coal",	    "flow",	     "lane",	   "motion",	 "release",
    "total",	     "wing",	    "border",	     "index",	   "pocket",	 "ring",
    "billion",	     "device",	    "engineering",   "fruit",	   "lake",	 "leaf",
    "pub",	     "request",	    "square",	     "tone",	   "walk",	 "chain",
    "circle",	     "creation",    "fall",	     "present",	   "shot",	 "fashion",
    "god",	     "mass",	    "panel",	     "fan",	   "iron",	 "origin",
    "ticket",	     "bone",	    "cancer",	     "chief",	   "editor",	 "fuel",
    "general",	     "height",	    "round",	     "vision",	   "warning",	 "being",
    "cross",	     "living",	    "rail",	     "working",	   "column",	 "finding",
    "gap",	     "grass",	    "plane",	     "root",	   "score",	 "shadow",
    "shock",	     "touch",	    "database",	     "formation",  "male",	 "ref",
    "resident",	     "resolution",  "topic",	     "break",	   "camp",	 "currency",
    "phrase",	     "thinking",    "coat",	     "mill",	   "stress",	 "boot",
    "command",	     "depth",	    "female",	     "frame",	   "framework",	 "holder",
    "ice",	     "inch",	    "port",	     "protein",	   "rose",	 "saving",
    "string",	     "wheel",	    "bishop",	     "cycle",	   "export",	 "hat",
    "load",	     "mode",	    "setting",	     "stairs",	   "travel",	 "average",
    "camera",	     "focus",	    "green",	     "guard",	   "input",	 "layer",
    "poll",	     "sleep",	    "suit",	     "bread",	   "cake",	 "efficiency",
    "peak",	     "self",	    "angle",	     "bay",	   "bid",	 "cloud",
    "custom",	     "dollar",	    "variable",	     "zone",	   "actor",	 "chip",
    "core",	     "final",	    "frequency",     "gain",	   "guy",	 "relative",
    "rent",	     "reply",	    "secret",	     "shirt",	   "apple",	 "instance",
    "intelligence",  "lad",	    "pipe",	     "anger",	   "disk",	 "fight",
    "hero",	     "journal",	    "left",	     "mail",	   "pace",	 "paragraph",
    "platform",	     "print",	    "rank",	     "sand",	   "scope",	 "shift",
    "stream",	     "chemical",    "clock",	     "delay",	   "host",	 "human",
    "count",	     "mission",	    "pack",	     "seed",	   "tail",	 "tie",
    "watch",	     "dark",	    "hold",	     "mine",	   "net",	 "tip",
    "dimension",     "operator",    "professional",  "shell",	   "storage",	 "summary",
    "tube",	     "conduct",	    "determination", "drop",	   "import",	 "label",
    "percent",	     "pot",	    "proof",	     "unity",	   "win",	 "wire",
    "bell",	     "comfort",	    "complex",	     "draft",	   "grade",	 "lift",
    "mouse",	     "movie",	    "profile",	     "standing",   "belt",	 "black",
    "check",	     "joy",	    "local",	     "pit",	   "red",	 "register",
    "storm",	     "album",	    "ban",	     "bench",	   "button",	 "cap",
    "chart",	     "coin",	    "dust",	     "folk",	   "margin",	 "pole",
    "stand",	     "stick",	    "tin",
};

#define COUNT(a) (sizeof(a) / sizeof *(a))

/* ---- subject-verb agreement lists (circ's own, after the nouns and
 * structures of Finlayson et al. 2021 and Marks et al. 2024; every entry's
 * " singular" and " plural" is one GPT-2 token) ---- */
typedef struct sva_pair {
	const char *sg, *pl;
} sva_pair;
static const sva_pair sva_subjects[] = {
    {"athlete", "athletes"}, {"boy", "boys"},	      {"doctor", "doctors"},
    {"farmer", "farmers"},   {"father", "fathers"},   {"friend", "friends"},
    {"girl", "girls"},	     {"guy", "guys"},	      {"kid", "kids"},
    {"lawyer", "lawyers"},   {"man", "men"},	      {"mother", "mothers"},
    {"poet", "poets"},	     {"singer", "singers"},   {"teacher", "teachers"},
    {"woman", "women"},	     {"parent", "parents"},   {"secretary", "secretaries"},
    {"student", "students"}, {"officer", "officers"}, {"pilot", "pilots"},
    {"child", "children"},   {"author", "authors"},   {"nurse", "nurses"},
    {"soldier", "soldiers"}, {"player", "players"},   {"worker", "workers"},
};
static const sva_pair sva_rc_nouns[] = {
    {"architect", "architects"}, {"assistant", "assistants"}, {"chef", "chefs"},
    {"dancer", "dancers"},	 {"driver", "drivers"},	      {"executive", "executives"},
    {"guard", "guards"},	 {"manager", "managers"},     {"minister", "ministers"},
    {"senator", "senators"},	 {"customer", "customers"},   {"judge", "judges"},
    {"banker", "bankers"},	 {"editor", "editors"},	      {"client", "clients"},
};
static const sva_pair sva_pp_nouns[] = {
    {"car", "cars"},	 {"cat", "cats"},	    {"chair", "chairs"}, {"desk", "desks"},
    {"dog", "dogs"},	 {"bike", "bikes"},	    {"table", "tables"}, {"tree", "trees"},
    {"truck", "trucks"}, {"window", "windows"},	    {"house", "houses"}, {"door", "doors"},
    {"box", "boxes"},	 {"building", "buildings"},
};
static const char *const sva_preps[] = {"near", "behind", "beside"};
/* the answers: third person singular and plural present (past for be) */
static const sva_pair sva_verbs[] = {
    {"is", "are"},     {"was", "were"},	  {"has", "have"},   {"does", "do"},	{"goes", "go"},
    {"likes", "like"}, {"seems", "seem"}, {"wants", "want"}, {"knows", "know"}, {"makes", "make"},
};
/* the verb of the relative clause in across-rc (agrees with its subject) */
static const sva_pair sva_rc_verbs[] = {
    {"likes", "like"}, {"loves", "love"},   {"hates", "hate"}, {"knows", "know"},
    {"meets", "meet"}, {"trusts", "trust"}, {"helps", "help"},
};
static const char *const sva_templates[] = {"simple", "within-rc", "across-rc", "across-pp"};

const char *const *circ_task_list(const char *name, size_t *n)
{
	static const struct {
		const char *name;
		const char *const *items;
		size_t n;
	} lists[] = {
	    {"ioi.names", ioi_names, COUNT(ioi_names)},
	    {"ioi.places", ioi_places, COUNT(ioi_places)},
	    {"ioi.objects", ioi_objects, COUNT(ioi_objects)},
	    {"ioi.baba_templates", ioi_baba, COUNT(ioi_baba)},
	    {"ioi.abba_templates", ioi_abba, COUNT(ioi_abba)},
	    {"greater-than.nouns", gt_nouns, COUNT(gt_nouns)},
	    {"docstring.variable_names", ds_names, COUNT(ds_names)},
	    {"docstring.nouns", ds_nouns, COUNT(ds_nouns)},
	    {"sva.templates", sva_templates, COUNT(sva_templates)},
	    {"sva.prepositions", sva_preps, COUNT(sva_preps)},
	};
	for (size_t i = 0; i < COUNT(lists); i++)
		if (!strcmp(lists[i].name, name)) {
			*n = lists[i].n;
			return lists[i].items;
		}
	return NULL;
}

void circ_task_opts_default(circ_task_opts *o)
{
	memset(o, 0, sizeof *o);
	o->n = 100;
	o->ioi_order = "mixed";
	o->gt_century_lo = 11;
	o->gt_century_hi = 17;
	o->ind_len = 16;
	o->ind_vocab_lo = 1000;
	o->ind_vocab_hi = 20000;
}

const char *circ_task_metric(const char *task)
{
	if (!strcmp(task, "ioi") || !strcmp(task, "docstring") || !strcmp(task, "sva"))
		return "logit_diff";
	if (!strcmp(task, "greater-than"))
		return "prob_diff";
	if (!strcmp(task, "induction"))
		return "logprob";
	return NULL;
}

/* ---- shared helpers ---- */

/* Tells o->note, if any, printf-style. */
static void note(const circ_task_opts *o, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	if (!o->note)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	o->note(msg, o->note_ctx);
}

/* Notes the entries of a list dropped because they are not single tokens. */
static void note_dropped(const circ_task_opts *o, const char *what, size_t n, size_t kept,
			 const char *names)
{
	if (o->bpe && kept < n)
		note(o,
		     "%s: dropped %zu of %zu, not one token after a space in this vocabulary: %s",
		     what, n - kept, n, names);
}

/* Appends ", s" (or "s") to a bounded list of names; "..." once full. */
static void names_add(char *names, size_t cap, const char *s)
{
	size_t l = strlen(names);
	if (l + strlen(s) + 8 >= cap) {
		if (l + 4 < cap && (l < 3 || strcmp(names + l - 3, "...")))
			strcat(names, l ? ", ..." : "...");
		return;
	}
	if (l)
		strcat(names, ", ");
	strcat(names, s);
}

/* The entries of list whose " entry" is a single token (all of them when
 * there is no vocabulary); the others are noted as dropped from what.
 * Returns the count; *out is a new array. */
static size_t single_token_entries(const circ_task_opts *o, const char *what,
				   const char *const *list, size_t n, const char ***out)
{
	const char **keep = circ_xmalloc((n ? n : 1) * sizeof *keep);
	size_t k = 0;
	char names[400] = "";
	for (size_t i = 0; i < n; i++) {
		char buf[256];
		int len = snprintf(buf, sizeof buf, " %s", list[i]);
		if (!o->bpe || circ_bpe_single(o->bpe, buf, (size_t)len) >= 0)
			keep[k++] = list[i];
		else
			names_add(names, sizeof names, list[i]);
	}
	note_dropped(o, what, n, k, names);
	*out = keep;
	return k;
}

/* A growable string. */
typedef struct sbuf {
	char *s;
	size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->s = circ_xrealloc(b->s, b->cap);
	}
	memcpy(b->s + b->n, s, n);
	b->n += n;
	b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static int emit_obj(json_t *obj, circ_task_emit emit, void *ctx, circ_error *e)
{
	char *line = json_dumps(obj, JSON_COMPACT);
	int rc = emit(line, strlen(line), ctx, e);
	free(line);
	json_decref(obj);
	return rc;
}

static json_t *str_array(const char *const *items, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(items[i]));
	return a;
}

/* ---- IOI ----
 * Per example: order (one draw of below(2), only for "mixed": 0 = BABA,
 * 1 = ABBA); template index below(K); IO name A = below(#names); S name B
 * = below(#names) again until B != A; place below(#places); object
 * below(#objects); then the three corrupting names C (replaces IO), D
 * (replaces S2) and E (replaces S1), each drawn with below(#names) until
 * distinct from A, B and the ones before it. The prompt is the filled
 * template without its final " [A]". */

/* Fills tmpl up to (not including) its final " [A]". The n-th occurrence
 * of [B] (0-based) gets b1 if n == 0, else b2. */
static char *ioi_fill(const char *tmpl, const char *a, const char *b1, const char *b2,
		      const char *place, const char *object)
{
	sbuf out = {0};
	size_t len = strlen(tmpl), nb = 0;
	if (len >= 4 && !strcmp(tmpl + len - 4, " [A]"))
		len -= 4;
	for (size_t i = 0; i < len;) {
		const char *rep = NULL;
		size_t skip = 0;
		if (!strncmp(tmpl + i, "[A]", 3))
			rep = a, skip = 3;
		else if (!strncmp(tmpl + i, "[B]", 3))
			rep = nb++ == 0 ? b1 : b2, skip = 3;
		else if (!strncmp(tmpl + i, "[PLACE]", 7))
			rep = place, skip = 7;
		else if (!strncmp(tmpl + i, "[OBJECT]", 8))
			rep = object, skip = 8;
		if (rep) {
			sb_str(&out, rep);
			i += skip;
		} else {
			sb_add(&out, tmpl + i, 1);
			i++;
		}
	}
	if (!out.s)
		sb_add(&out, "", 0);
	return out.s;
}

static size_t draw_other(circ_rng *r, size_t n, const size_t *avoid, int navoid)
{
	for (;;) {
		size_t v = (size_t)circ_rng_below(r, n);
		int ok = 1;
		for (int i = 0; i < navoid; i++)
			ok &= v != avoid[i];
		if (ok)
			return v;
	}
}

static int gen_ioi(const circ_task_opts *o, circ_rng *r, circ_task_emit emit, void *ctx,
		   circ_error *e)
{
	int order_mode;
	if (!strcmp(o->ioi_order, "mixed"))
		order_mode = -1;
	else if (!strcmp(o->ioi_order, "baba"))
		order_mode = 0;
	else if (!strcmp(o->ioi_order, "abba"))
		order_mode = 1;
	else
		return circ_errorf(e, "unknown IOI order '%s' (expected mixed, baba or abba)",
				   o->ioi_order);
	size_t k = COUNT(ioi_baba);
	if (o->ioi_templates < 0 || (size_t)o->ioi_templates > k)
		return circ_errorf(e, "IOI templates must be 1..%zu (0 for all)", k);
	if (o->ioi_templates)
		k = (size_t)o->ioi_templates;
	const char **names;
	size_t nn = single_token_entries(o, "ioi names", ioi_names, COUNT(ioi_names), &names);
	if (nn < 5) {
		free(names);
		return circ_errorf(
		    e, "only %zu IOI names are single tokens in this vocabulary (need 5)", nn);
	}
	for (int64_t i = 0; i < o->n; i++) {
		int order = order_mode >= 0 ? order_mode : (int)circ_rng_below(r, 2);
		size_t t = (size_t)circ_rng_below(r, k);
		size_t ids[5];
		ids[0] = (size_t)circ_rng_below(r, nn);
		ids[1] = draw_other(r, nn, ids, 1);
		size_t place = (size_t)circ_rng_below(r, COUNT(ioi_places));
		size_t object = (size_t)circ_rng_below(r, COUNT(ioi_objects));
		for (int c = 2; c < 5; c++)
			ids[c] = draw_other(r, nn, ids, c);
		const char *tmpl = order ? ioi_abba[t] : ioi_baba[t];
		const char *A = names[ids[0]], *B = names[ids[1]];
		const char *C = names[ids[2]], *D = names[ids[3]], *E = names[ids[4]];
		char *clean = ioi_fill(tmpl, A, B, B, ioi_places[place], ioi_objects[object]);
		char *corrupt = ioi_fill(tmpl, C, E, D, ioi_places[place], ioi_objects[object]);
		char answer[256], wrong[256];
		snprintf(answer, sizeof answer, " %s", A);
		snprintf(wrong, sizeof wrong, " %s", B);
		json_t *meta = json_object();
		json_object_set_new(meta, "order", json_string(order ? "ABBA" : "BABA"));
		json_object_set_new(meta, "template", json_integer((json_int_t)t));
		json_object_set_new(meta, "io", json_string(A));
		json_object_set_new(meta, "s", json_string(B));
		json_object_set_new(meta, "place", json_string(ioi_places[place]));
		json_object_set_new(meta, "object", json_string(ioi_objects[object]));
		const char *cn[3] = {C, D, E};
		json_object_set_new(meta, "corrupt_names", str_array(cn, 3));
		json_t *ex = json_object();
		json_object_set_new(ex, "task", json_string("ioi"));
		json_object_set_new(ex, "clean", json_string(clean));
		json_object_set_new(ex, "corrupt", json_string(corrupt));
		json_object_set_new(ex, "answer", json_string(answer));
		json_object_set_new(ex, "wrong", json_string(wrong));
		json_object_set_new(ex, "metric", json_string("logit_diff"));
		json_object_set_new(ex, "meta", meta);
		free(clean);
		free(corrupt);
		if (emit_obj(ex, emit, ctx, e) < 0) {
			free(names);
			return -1;
		}
	}
	free(names);
	return 0;
}

/* ---- greater-than ----
 * Valid years: for each century CC in [lo, hi], the years CCYY whose
 * " CCYY" encodes as exactly [" CC", "YY"] (and " CC01", the corruption,
 * as [" CC", "01"]); the first and last valid year of each century are
 * dropped. Per example: year = below(#valid years) (in order of century,
 * then YY), noun = below(#nouns). */

/* ---- greater-than where numbers are split otherwise (see circ-dataset(1)) ----
 * Tokenizers that write " CCYY" as single digits (Llama 2, Gemma, Qwen 2/3)
 * or as a three-digit chunk and a digit (Llama 3) cannot state the task
 * with a two-digit answer. The prompt stops where the tokenizer itself puts
 * the boundary before the tens digit of the end year: after " CC" (single
 * digits) or after " " (three-digit chunks, " " being a token of its own
 * before digits); the answer is that next token, the tens digit d (or the
 * chunk "CCd"). d above the start year's tens digit t makes the end year
 * greater whatever follows, d below makes it smaller, d = t decides
 * nothing and is in neither set; so t runs over 1..8. Every prompt with
 * every noun, and each answer after it, is checked to encode so. */

enum { GT_DIGIT = 1, GT_CHUNK3 };

/* Emits one greater-than example (taking answers and wrong); split, if not
 * NULL, goes into meta. */
static int gt_emit(const char *noun, int year, const char *split, const char *clean,
		   const char *corrupt, json_t *answers, json_t *wrong, circ_task_emit emit,
		   void *ctx, circ_error *e)
{
	json_t *meta = json_object();
	json_object_set_new(meta, "noun", json_string(noun));
	json_object_set_new(meta, "year", json_integer(year));
	json_object_set_new(meta, "century", json_integer(year / 100));
	json_object_set_new(meta, "yy", json_integer(year % 100));
	if (split)
		json_object_set_new(meta, "split", json_string(split));
	json_t *ex = json_object();
	json_object_set_new(ex, "task", json_string("greater-than"));
	json_object_set_new(ex, "clean", json_string(clean));
	json_object_set_new(ex, "corrupt", json_string(corrupt));
	json_object_set_new(ex, "answer", answers);
	json_object_set_new(ex, "wrong", wrong);
	json_object_set_new(ex, "metric", json_string("prob_diff"));
	json_object_set_new(ex, "meta", meta);
	return emit_obj(ex, emit, ctx, e);
}

/* The ids of text as it follows other text. */
static int gt_ids(circ_bpe *b, const char *text, circ_ids *ids, circ_error *e)
{
	ids->n = 0;
	return circ_bpe_encode_after(b, text, strlen(text), 0, ids, e);
}

/* 1 if " CCYY" is written the mode's way (its last tokens). */
static int gt_year_ok(circ_bpe *b, int mode, int year, const int32_t digit[10], circ_error *e)
{
	char buf[32];
	circ_ids ids = {0};
	int ok = 0;
	snprintf(buf, sizeof buf, " %04d", year);
	if (gt_ids(b, buf, &ids, e) == 0) {
		int c[4] = {year / 1000, year / 100 % 10, year / 10 % 10, year % 10};
		if (mode == GT_DIGIT) {
			ok = ids.n >= 4;
			for (int k = 0; ok && k < 4; k++)
				ok = ids.v[ids.n - 4 + k] == digit[c[k]];
		} else {
			snprintf(buf, sizeof buf, "%03d", year / 10);
			ok = ids.n >= 2 && ids.v[ids.n - 1] == digit[c[3]] &&
			     ids.v[ids.n - 2] == circ_bpe_single(b, buf, 3);
		}
	}
	circ_ids_free(&ids);
	return ok;
}

/* The prompt and the answer string for tens digit d. */
static void gt_prompt(char *out, size_t cap, int mode, const char *noun, int year)
{
	if (mode == GT_DIGIT)
		snprintf(out, cap, "The %s lasted from the year %d to the year %d", noun, year,
			 year / 100);
	else
		snprintf(out, cap, "The %s lasted from the year %d to the year ", noun, year);
}

static void gt_answer(char *out, size_t cap, int mode, int cc, int d)
{
	if (mode == GT_DIGIT)
		snprintf(out, cap, "%d", d);
	else
		snprintf(out, cap, "%d%d", cc, d);
}

/* 1 if, with every noun, century cc's prompt is followed by each answer as
 * one more token. */
static int gt_century_ok(circ_bpe *b, int mode, int cc, circ_error *e)
{
	circ_ids p = {0}, q = {0};
	int ok = 1;
	for (size_t i = 0; ok && i < COUNT(gt_nouns); i++) {
		char prompt[256], full[300], ans[16];
		gt_prompt(prompt, sizeof prompt, mode, gt_nouns[i], cc * 100 + 50);
		p.n = 0;
		ok = circ_bpe_encode(b, prompt, strlen(prompt), 0, &p, e) == 0;
		for (int d = 0; ok && d < 10; d++) {
			gt_answer(ans, sizeof ans, mode, cc, d);
			snprintf(full, sizeof full, "%s%s", prompt, ans);
			q.n = 0;
			ok = circ_bpe_encode(b, full, strlen(full), 0, &q, e) == 0 &&
			     q.n == p.n + 1 && !memcmp(q.v, p.v, p.n * sizeof *p.v) &&
			     q.v[p.n] == circ_bpe_single(b, ans, strlen(ans));
		}
	}
	circ_ids_free(&p);
	circ_ids_free(&q);
	return ok;
}

static int gen_greater_than_split(const circ_task_opts *o, circ_rng *r, circ_task_emit emit,
				  void *ctx, circ_error *e)
{
	circ_bpe *b = o->bpe;
	int32_t digit[10];
	int years[100 * 90], ny = 0, mode = 0;
	char buf[256];
	for (int d = 0; d < 10; d++) {
		snprintf(buf, sizeof buf, "%d", d);
		digit[d] = circ_bpe_single(b, buf, 1);
	}
	for (int m = GT_DIGIT; m <= GT_CHUNK3 && !ny; m++)
		for (int cc = o->gt_century_lo; cc <= o->gt_century_hi; cc++) {
			if (!gt_year_ok(b, m, cc * 100 + 1, digit, e) ||
			    !gt_century_ok(b, m, cc, e))
				continue;
			for (int yy = 10; yy < 90; yy++)
				if (gt_year_ok(b, m, cc * 100 + yy, digit, e))
					years[ny++] = cc * 100 + yy, mode = m;
		}
	if (!ny) {
		circ_ids ids = {0};
		char toks[400] = "";
		snprintf(buf, sizeof buf, " %d50", o->gt_century_lo);
		if (gt_ids(b, buf, &ids, e) < 0)
			snprintf(toks, sizeof toks, "nothing (%.300s)", e->msg);
		else
			for (size_t i = 0; i < ids.n; i++) {
				size_t l;
				const unsigned char *t = circ_bpe_token_bytes(b, ids.v[i], &l);
				char one[64];
				snprintf(one, sizeof one, "'%.*s'", (int)(l < 40 ? l : 40),
					 t ? (const char *)t : "?");
				names_add(toks, sizeof toks, one);
			}
		circ_ids_free(&ids);
		return circ_errorf(e,
				   "greater-than cannot be stated for this tokenizer: it writes "
				   "'%s' as %s, not as ' CC' 'YY' (GPT-2), single digits, or a "
				   "three-digit chunk and a digit, in centuries %d..%d",
				   buf, toks, o->gt_century_lo, o->gt_century_hi);
	}
	note(o,
	     "greater-than: this tokenizer writes years as %s, so the prompt ends before the "
	     "end year's tens digit (%s) and the answers are %s above the start year's tens "
	     "digit, the wrong answers those below it (the equal one in neither set); years "
	     "with tens digit 0 or 9 are not drawn",
	     mode == GT_DIGIT ? "single digits" : "a three-digit chunk and a digit",
	     mode == GT_DIGIT ? "after ' CC'" : "after ' '",
	     mode == GT_DIGIT ? "the digits" : "the chunks 'CCd' with d");
	for (int64_t i = 0; i < o->n; i++) {
		int year = years[circ_rng_below(r, (uint64_t)ny)];
		const char *noun = gt_nouns[circ_rng_below(r, COUNT(gt_nouns))];
		int cc = year / 100, yy = year % 100, t = yy / 10;
		char clean[256], corrupt[256], ans[16];
		gt_prompt(clean, sizeof clean, mode, noun, year);
		gt_prompt(corrupt, sizeof corrupt, mode, noun, cc * 100 + 1);
		json_t *answers = json_array(), *wrong = json_array();
		for (int d = 0; d < 10; d++) {
			gt_answer(ans, sizeof ans, mode, cc, d);
			if (d != t)
				json_array_append_new(d > t ? answers : wrong, json_string(ans));
		}
		if (gt_emit(noun, year, mode == GT_DIGIT ? "single-digit" : "three-digit", clean,
			    corrupt, answers, wrong, emit, ctx, e) < 0)
			return -1;
	}
	return 0;
}

static int gen_greater_than(const circ_task_opts *o, circ_rng *r, circ_task_emit emit, void *ctx,
			    circ_error *e)
{
	circ_bpe *b = o->bpe;
	if (!b)
		return circ_errorf(e, "greater-than needs a vocabulary (--vocab-dir): which years "
				      "are valid depends on it");
	if (o->gt_century_lo < 10 || o->gt_century_hi > 99 || o->gt_century_lo > o->gt_century_hi)
		return circ_errorf(e, "centuries must satisfy 10 <= lo <= hi <= 99 (got %d..%d)",
				   o->gt_century_lo, o->gt_century_hi);
	int32_t yy_id[100];
	int years[100 * 90], ny = 0;
	char buf[64];
	for (int yy = 0; yy < 100; yy++) {
		snprintf(buf, sizeof buf, "%02d", yy);
		yy_id[yy] = circ_bpe_single(b, buf, 2);
	}
	if (yy_id[1] < 0) /* not GPT-2's way with numbers */
		return gen_greater_than_split(o, r, emit, ctx, e);
	for (int cc = o->gt_century_lo; cc <= o->gt_century_hi; cc++) {
		int valid[100], nv = 0;
		snprintf(buf, sizeof buf, " %d", cc);
		int32_t cc_id = circ_bpe_single(b, buf, 3);
		if (cc_id < 0)
			continue;
		for (int yy = 0; yy < 100; yy++) {
			circ_ids ids = {0};
			int n = snprintf(buf, sizeof buf, " %d%02d", cc, yy);
			if (yy_id[yy] >= 0 && circ_bpe_encode(b, buf, (size_t)n, 0, &ids, e) == 0 &&
			    ids.n == 2 && ids.v[0] == cc_id && ids.v[1] == yy_id[yy])
				valid[nv++] = yy;
			circ_ids_free(&ids);
		}
		int corrupt_ok = 0;
		for (int v = 0; v < nv; v++)
			corrupt_ok |= valid[v] == 1;
		if (!corrupt_ok || nv < 3)
			continue;
		for (int v = 1; v + 1 < nv; v++)
			years[ny++] = cc * 100 + valid[v];
	}
	if (!ny)
		return gen_greater_than_split(o, r, emit, ctx, e);
	for (int64_t i = 0; i < o->n; i++) {
		int year = years[circ_rng_below(r, (uint64_t)ny)];
		const char *noun = gt_nouns[circ_rng_below(r, COUNT(gt_nouns))];
		int cc = year / 100, yy = year % 100;
		char clean[256], corrupt[256];
		snprintf(clean, sizeof clean, "The %s lasted from the year %d to the year %d", noun,
			 year, cc);
		snprintf(corrupt, sizeof corrupt, "The %s lasted from the year %d01 to the year %d",
			 noun, cc, cc);
		json_t *ans = json_array(), *wrong = json_array();
		for (int y = 0; y < 100; y++) {
			if (yy_id[y] < 0)
				continue;
			snprintf(buf, sizeof buf, "%02d", y);
			json_array_append_new(y > yy ? ans : wrong, json_string(buf));
		}
		if (gt_emit(noun, year, NULL, clean, corrupt, ans, wrong, emit, ctx, e) < 0)
			return -1;
	}
	return 0;
}

/* ---- induction ----
 * Per example: the sequence s of L distinct ids, each lo + below(hi - lo)
 * redrawn while it repeats an earlier one (or is <|endoftext|>); then the
 * corrupting first half c, drawn the same way. clean = s s, corrupt = c s;
 * the predictions are at positions L .. 2L-2, each of the next token. */

static void draw_distinct(circ_rng *r, int32_t lo, int32_t hi, int32_t eot, int32_t *out, int len)
{
	for (int i = 0; i < len; i++) {
		int32_t v;
		int dup;
		do {
			v = lo + (int32_t)circ_rng_below(r, (uint64_t)(hi - lo));
			dup = v == eot;
			for (int k = 0; k < i && !dup; k++)
				dup = out[k] == v;
		} while (dup);
		out[i] = v;
	}
}

static int gen_induction(const circ_task_opts *o, circ_rng *r, circ_task_emit emit, void *ctx,
			 circ_error *e)
{
	int L = o->ind_len;
	int32_t lo = o->ind_vocab_lo, hi = o->ind_vocab_hi, eot = -1;
	if (L < 2 || L > 100000)
		return circ_errorf(e, "induction length must be 2..100000 (got %d)", L);
	if (lo < 0 || hi <= lo)
		return circ_errorf(e, "id range [%d, %d) is empty", (int)lo, (int)hi);
	if (o->bpe) {
		size_t l;
		eot = circ_bpe_eot(o->bpe);
		if (hi > circ_bpe_vocab_size(o->bpe))
			return circ_errorf(e, "id range [%d, %d) exceeds the vocabulary (%d ids)",
					   (int)lo, (int)hi, (int)circ_bpe_vocab_size(o->bpe));
		for (int32_t id = lo; id < hi; id++)
			if (!circ_bpe_token_bytes(o->bpe, id, &l))
				return circ_errorf(e, "id %d in [%d, %d) is not in the vocabulary",
						   (int)id, (int)lo, (int)hi);
	}
	if ((int64_t)(hi - lo) - (eot >= lo && eot < hi) < L)
		return circ_errorf(e,
				   "id range [%d, %d) has fewer than %d ids to draw distinct ones",
				   (int)lo, (int)hi, L);
	int32_t *s = circ_xmalloc((size_t)L * sizeof *s), *c = circ_xmalloc((size_t)L * sizeof *c);
	int rc = 0;
	for (int64_t i = 0; i < o->n && rc == 0; i++) {
		draw_distinct(r, lo, hi, eot, s, L);
		draw_distinct(r, lo, hi, eot, c, L);
		json_t *clean = json_array(), *corrupt = json_array(), *pos = json_array(),
		       *ans = json_array();
		for (int h = 0; h < 2; h++)
			for (int k = 0; k < L; k++) {
				json_array_append_new(clean, json_integer(s[k]));
				json_array_append_new(corrupt, json_integer(h ? s[k] : c[k]));
			}
		for (int p = L; p <= 2 * L - 2; p++) {
			json_array_append_new(pos, json_integer(p));
			json_array_append_new(ans, json_integer(s[p + 1 - L]));
		}
		json_t *meta = json_object();
		json_object_set_new(meta, "len", json_integer(L));
		json_t *ex = json_object();
		json_object_set_new(ex, "task", json_string("induction"));
		json_object_set_new(ex, "clean_ids", clean);
		json_object_set_new(ex, "corrupt_ids", corrupt);
		json_object_set_new(ex, "pos", pos);
		json_object_set_new(ex, "answer_ids", ans);
		json_object_set_new(ex, "wrong_ids", json_array());
		json_object_set_new(ex, "metric", json_string("logprob"));
		json_object_set_new(ex, "meta", meta);
		rc = emit_obj(ex, emit, ctx, e);
	}
	free(s);
	free(c);
	return rc;
}

/* ---- docstring ----
 * ACDC's docstring prompt ("rest" style, 3 matching arguments, 2 before
 * and 1 after them in the def, 3 words of description, 2 per parameter).
 * Per example: 15 distinct variable names by circ_rng_sample (method name,
 * unused random answer, 3 random def args, 2 random doc args, 2
 * non-matching args, 3 matching args, 2 def prefix args, 1 def suffix
 * arg, in that order); 3 distinct description nouns; 2 distinct nouns for
 * each of the 2 documented parameters. Clean: the def lists prefix,
 * matching, suffix; the docstring documents the first two matching
 * arguments and ends at "    :param"; the answer is the third. Corrupt
 * ("random_random"): the def has the 3 random def args in place of the
 * matching ones and the docstring documents the 2 random doc args. */

static char *ds_prompt(const char *met, const char *const *def, int ndef, const char *const *desc,
		       const char *const *doc, int ndoc, const char *const (*argdesc)[2])
{
	sbuf s = {0};
	sb_str(&s, "\ndef ");
	sb_str(&s, met);
	sb_str(&s, "(self");
	for (int i = 0; i < ndef; i++) {
		sb_str(&s, ", ");
		sb_str(&s, def[i]);
	}
	sb_str(&s, "):\n    \"\"\"");
	for (int i = 0; i < 3; i++) {
		if (i)
			sb_str(&s, " ");
		sb_str(&s, desc[i]);
	}
	sb_str(&s, "\n\n");
	for (int i = 0; i < ndoc; i++) {
		sb_str(&s, "    :param ");
		sb_str(&s, doc[i]);
		sb_str(&s, ": ");
		sb_str(&s, argdesc[i][0]);
		sb_str(&s, " ");
		sb_str(&s, argdesc[i][1]);
		sb_str(&s, "\n");
	}
	sb_str(&s, "    :param");
	return s.s;
}

static int gen_docstring(const circ_task_opts *o, circ_rng *r, circ_task_emit emit, void *ctx,
			 circ_error *e)
{
	const char **names, **nouns;
	size_t nn = single_token_entries(o, "docstring names", ds_names, COUNT(ds_names), &names);
	size_t nw = single_token_entries(o, "docstring nouns", ds_nouns, COUNT(ds_nouns), &nouns);
	int rc = 0;
	if (nn < 15 || nw < 3) {
		free(names);
		free(nouns);
		return circ_errorf(e,
				   "too few single-token names (%zu, need 15) or nouns (%zu, "
				   "need 3) in this vocabulary",
				   nn, nw);
	}
	for (int64_t i = 0; i < o->n && rc == 0; i++) {
		size_t v[15], w[3], a0[2], a1[2];
		circ_rng_sample(r, nn, 15, v);
		circ_rng_sample(r, nw, 3, w);
		circ_rng_sample(r, nw, 2, a0);
		circ_rng_sample(r, nw, 2, a1);
		const char *met = names[v[0]];
		const char *pick[15];
		for (int k = 0; k < 15; k++)
			pick[k] = names[v[k]];
		/* pick: 0 met, 1 random answer, 2-4 rr def, 5-6 rr doc, 7-8 not
		 * matching, 9-11 matching, 12-13 def prefix, 14 def suffix */
		const char *desc[3] = {nouns[w[0]], nouns[w[1]], nouns[w[2]]};
		const char *const argdesc[2][2] = {{nouns[a0[0]], nouns[a0[1]]},
						   {nouns[a1[0]], nouns[a1[1]]}};
		const char *clean_def[6] = {pick[12], pick[13], pick[9],
					    pick[10], pick[11], pick[14]};
		const char *corrupt_def[6] = {pick[12], pick[13], pick[2],
					      pick[3],	pick[4],  pick[14]};
		const char *clean_doc[2] = {pick[9], pick[10]};
		const char *corrupt_doc[2] = {pick[5], pick[6]};
		char *clean = ds_prompt(met, clean_def, 6, desc, clean_doc, 2, argdesc);
		char *corrupt = ds_prompt(met, corrupt_def, 6, desc, corrupt_doc, 2, argdesc);
		char answer[256];
		snprintf(answer, sizeof answer, " %s", pick[11]);
		json_t *wrong = json_array();
		for (int k = 1; k < 15; k++) {
			if (k == 11)
				continue;
			char wbuf[256];
			snprintf(wbuf, sizeof wbuf, " %s", pick[k]);
			json_array_append_new(wrong, json_string(wbuf));
		}
		json_t *meta = json_object();
		json_object_set_new(meta, "method", json_string(met));
		json_object_set_new(meta, "def_args", str_array(clean_def, 6));
		json_object_set_new(meta, "corrupt_def_args", str_array(corrupt_def, 6));
		json_object_set_new(meta, "corrupt_doc_args", str_array(corrupt_doc, 2));
		json_t *ex = json_object();
		json_object_set_new(ex, "task", json_string("docstring"));
		json_object_set_new(ex, "clean", json_string(clean));
		json_object_set_new(ex, "corrupt", json_string(corrupt));
		json_object_set_new(ex, "answer", json_string(answer));
		json_object_set_new(ex, "wrong", wrong);
		json_object_set_new(ex, "metric", json_string("logit_diff"));
		json_object_set_new(ex, "meta", meta);
		free(clean);
		free(corrupt);
		rc = emit_obj(ex, emit, ctx, e);
	}
	free(names);
	free(nouns);
	return rc;
}

/* ---- subject-verb agreement ----
 * Templates (Finlayson et al. 2021; Marks et al. 2024): simple "The S",
 * within-rc "The S that the R" (the verb agrees with R), across-rc "The S
 * that the R V" (V agrees with R, the answer with S), across-pp "The S P the
 * N" (the answer with S). The governing noun is R for within-rc, else S;
 * clean and corrupt differ only in its number. Example i: its template is
 * the chosen one, or with "all" sva_templates[(i / 2) % 4]; the governing
 * noun is singular in the clean prompt for even i, plural for odd i (so
 * every 2 examples, and with "all" every 8, are balanced). Draws per
 * example: S = below(#subjects); within-rc and across-rc: R =
 * below(#rc nouns); across-pp: P = below(#prepositions), N = below(#pp
 * nouns); except for simple, the other noun's number below(2) (1 = plural);
 * across-rc: V = below(#rc verbs); last, the answer verb below(#verbs). */

/* The pairs of list whose " sg" and " pl" are each one token (all of them
 * without a vocabulary); the others are noted as dropped from what.
 * Returns the count; *out is a new array. */
static size_t single_token_pairs(const circ_task_opts *o, const char *what, const sva_pair *list,
				 size_t n, const sva_pair **out)
{
	sva_pair *keep = circ_xmalloc((n ? n : 1) * sizeof *keep);
	size_t k = 0;
	char names[400] = "";
	for (size_t i = 0; i < n; i++) {
		char s1[256], s2[256];
		int l1 = snprintf(s1, sizeof s1, " %s", list[i].sg);
		int l2 = snprintf(s2, sizeof s2, " %s", list[i].pl);
		if (!o->bpe || (circ_bpe_single(o->bpe, s1, (size_t)l1) >= 0 &&
				circ_bpe_single(o->bpe, s2, (size_t)l2) >= 0))
			keep[k++] = list[i];
		else
			names_add(names, sizeof names, list[i].sg);
	}
	note_dropped(o, what, n, k, names);
	*out = keep;
	return k;
}

static int sva_template_index(const char *name)
{
	for (size_t t = 0; t < COUNT(sva_templates); t++)
		if (!strcmp(name, sva_templates[t]))
			return (int)t;
	return !strcmp(name, "all") ? -1 : -2;
}

static const char *number_name(int plural)
{
	return plural ? "plural" : "singular";
}

static int gen_sva(const circ_task_opts *o, circ_rng *r, circ_task_emit emit, void *ctx,
		   circ_error *e)
{
	int mode = sva_template_index(o->sva_template ? o->sva_template : "all");
	if (mode == -2)
		return circ_errorf(e,
				   "unknown SVA template '%s' (expected simple, within-rc, "
				   "across-rc, across-pp or all)",
				   o->sva_template);
	const sva_pair *subj, *rcn, *ppn, *verbs, *rcv;
	size_t ns = single_token_pairs(o, "sva subjects", sva_subjects, COUNT(sva_subjects), &subj);
	size_t nr = single_token_pairs(o, "sva relative-clause nouns", sva_rc_nouns,
				       COUNT(sva_rc_nouns), &rcn);
	size_t np = single_token_pairs(o, "sva prepositional-phrase nouns", sva_pp_nouns,
				       COUNT(sva_pp_nouns), &ppn);
	size_t nv = single_token_pairs(o, "sva verbs", sva_verbs, COUNT(sva_verbs), &verbs);
	size_t nrv = single_token_pairs(o, "sva relative-clause verbs", sva_rc_verbs,
					COUNT(sva_rc_verbs), &rcv);
	const char *preps[COUNT(sva_preps)];
	size_t nprep = 0;
	for (size_t k = 0; k < COUNT(sva_preps); k++) {
		char buf[64];
		int l = snprintf(buf, sizeof buf, " %s", sva_preps[k]);
		if (!o->bpe || circ_bpe_single(o->bpe, buf, (size_t)l) >= 0)
			preps[nprep++] = sva_preps[k];
	}
	int rc = 0;
	/* every list a template of this run needs must have an entry */
	int need_rc = mode < 0 || mode == 1 || mode == 2, need_pp = mode < 0 || mode == 3;
	const char *empty = !ns			    ? "subject nouns"
			    : !nv		    ? "verbs"
			    : need_rc && !nr	    ? "relative-clause nouns"
			    : mode < 0 || mode == 2 ? (!nrv ? "relative-clause verbs" : NULL)
						    : NULL;
	if (!empty && need_pp)
		empty = !np ? "prepositional-phrase nouns" : !nprep ? "prepositions" : NULL;
	if (empty)
		rc = circ_errorf(e,
				 "no SVA %s are single tokens (singular and plural) in this "
				 "vocabulary",
				 empty);
	for (int64_t i = 0; i < o->n && rc == 0; i++) {
		int t = mode >= 0 ? mode : (int)((i / 2) % 4);
		int pl = (int)(i % 2), other_pl = 0;
		const sva_pair *s = &subj[circ_rng_below(r, ns)], *other = NULL, *v2 = NULL;
		const char *prep = NULL;
		if (t == 1 || t == 2)
			other = &rcn[circ_rng_below(r, nr)];
		if (t == 3) {
			prep = preps[circ_rng_below(r, nprep)];
			other = &ppn[circ_rng_below(r, np)];
		}
		if (t != 0)
			other_pl = (int)circ_rng_below(r, 2);
		if (t == 2)
			v2 = &rcv[circ_rng_below(r, nrv)];
		const sva_pair *verb = &verbs[circ_rng_below(r, nv)];
		char clean[512], corrupt[512];
		for (int k = 0; k < 2; k++) {
			int gov = k ? !pl : pl; /* the governing noun's number */
			char *out = k ? corrupt : clean;
			size_t cap = sizeof clean;
			switch (t) {
			case 0: snprintf(out, cap, "The %s", gov ? s->pl : s->sg); break;
			case 1:
				snprintf(out, cap, "The %s that the %s", other_pl ? s->pl : s->sg,
					 gov ? other->pl : other->sg);
				break;
			case 2:
				snprintf(out, cap, "The %s that the %s %s", gov ? s->pl : s->sg,
					 other_pl ? other->pl : other->sg,
					 other_pl ? v2->pl : v2->sg);
				break;
			default:
				snprintf(out, cap, "The %s %s the %s", gov ? s->pl : s->sg, prep,
					 other_pl ? other->pl : other->sg);
			}
		}
		char answer[64], wrong[64];
		snprintf(answer, sizeof answer, " %s", pl ? verb->pl : verb->sg);
		snprintf(wrong, sizeof wrong, " %s", pl ? verb->sg : verb->pl);
		json_t *meta = json_object();
		json_object_set_new(meta, "template", json_string(sva_templates[t]));
		json_object_set_new(meta, "number", json_string(number_name(pl)));
		json_object_set_new(meta, "subject", json_string(s->sg));
		if (other) {
			json_object_set_new(meta, t == 3 ? "pp_noun" : "rc_noun",
					    json_string(other->sg));
			json_object_set_new(meta, "other_number",
					    json_string(number_name(other_pl)));
		}
		if (prep)
			json_object_set_new(meta, "preposition", json_string(prep));
		if (v2)
			json_object_set_new(meta, "rc_verb",
					    json_string(other_pl ? v2->pl : v2->sg));
		json_t *ex = json_object();
		json_object_set_new(ex, "task", json_string("sva"));
		json_object_set_new(ex, "clean", json_string(clean));
		json_object_set_new(ex, "corrupt", json_string(corrupt));
		json_object_set_new(ex, "answer", json_string(answer));
		json_object_set_new(ex, "wrong", json_string(wrong));
		json_object_set_new(ex, "metric", json_string("logit_diff"));
		json_object_set_new(ex, "meta", meta);
		/* with a vocabulary, the pair must align token for token */
		if (o->bpe) {
			circ_ids a = {0}, c = {0};
			if (circ_bpe_encode(o->bpe, clean, strlen(clean), 0, &a, e) < 0 ||
			    circ_bpe_encode(o->bpe, corrupt, strlen(corrupt), 0, &c, e) < 0)
				rc = -1;
			else if (a.n != c.n)
				rc = circ_errorf(e,
						 "example %lld: '%s' is %zu tokens but '%s' is %zu "
						 "in this vocabulary",
						 (long long)i, clean, a.n, corrupt, c.n);
			circ_ids_free(&a);
			circ_ids_free(&c);
		}
		if (rc == 0)
			rc = emit_obj(ex, emit, ctx, e);
		else
			json_decref(ex);
	}
	free((void *)subj);
	free((void *)rcn);
	free((void *)ppn);
	free((void *)verbs);
	free((void *)rcv);
	return rc;
}

int circ_task_generate(const circ_task_opts *o, circ_task_emit emit, void *ctx, circ_error *e)
{
	circ_rng r;
	if (!o->task)
		return circ_errorf(e, "no task given");
	if (o->n < 0)
		return circ_errorf(e, "the number of examples must not be negative");
	circ_rng_seed(&r, o->seed);
	if (!strcmp(o->task, "ioi"))
		return gen_ioi(o, &r, emit, ctx, e);
	if (!strcmp(o->task, "greater-than"))
		return gen_greater_than(o, &r, emit, ctx, e);
	if (!strcmp(o->task, "induction"))
		return gen_induction(o, &r, emit, ctx, e);
	if (!strcmp(o->task, "docstring"))
		return gen_docstring(o, &r, emit, ctx, e);
	if (!strcmp(o->task, "sva"))
		return gen_sva(o, &r, emit, ctx, e);
	return circ_errorf(
	    e, "unknown task '%s' (expected ioi, greater-than, induction, docstring or sva)",
	    o->task);
}
