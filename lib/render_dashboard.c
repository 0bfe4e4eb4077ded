/*
 * render_dashboard: feature dashboards (see render_dashboard.h).
 *
 * Design: per feature, the accumulator keeps how often it fired, its
 * non-zero activations (the histogram's range is known only at the end)
 * and a sorted list of at most `contexts` examples, each with the window of
 * tokens and activations around the example's maximum, copied when the
 * example enters the list (the stream is read once; tokens are not kept).
 * Both writers go through one JSON writer per feature, so the HTML page's
 * inline data block is exactly the JSON lines (as an array); the page's
 * script draws from it.
 *
 * Errors: writers check the stream once at the end (ferror).
 */
#include "render_dashboard.h"
#include "render_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct dash_ctx {
	int64_t id;
	int pos;	 /* the maximum's position in the example */
	float max;	 /* the activation there */
	int start, n;	 /* the window: positions start .. start + n - 1 */
	int32_t *tokens; /* (n) */
	float *acts;	 /* (n) this feature's activation, 0 where inactive */
} dash_ctx;

typedef struct dash_feat {
	int64_t count; /* positions active */
	float *vals;   /* (count) non-zero activations, in stream order */
	size_t cap;
	int n_ctx; /* contexts kept, best first */
	dash_ctx *ctx;
} dash_feat;

struct circ_dash {
	circ_dash_opts o;
	int n_dict;
	int *d_sae;	    /* (n_dict) */
	int64_t *positions; /* (n_dict) */
	dash_feat **feat;   /* (n_dict) each (S) */
	float *emax;	    /* (S_max) scratch: per-example max */
	int *epos;	    /* (S_max) its position, -1 if not active */
	int *touched;	    /* (S_max) features active in the example */
};

void circ_dash_opts_default(circ_dash_opts *o)
{
	o->contexts = 10;
	o->window = 8;
	o->bins = 20;
	o->logits = 10;
}

circ_dash *circ_dash_new(int n_dict, const int *d_sae, const circ_dash_opts *o)
{
	circ_dash *d = circ_xcalloc(1, sizeof *d);
	int smax = 1;
	d->o = *o;
	d->n_dict = n_dict;
	d->d_sae = circ_xcalloc((size_t)n_dict, sizeof *d->d_sae);
	d->positions = circ_xcalloc((size_t)n_dict, sizeof *d->positions);
	d->feat = circ_xcalloc((size_t)n_dict, sizeof *d->feat);
	for (int k = 0; k < n_dict; k++) {
		d->d_sae[k] = d_sae[k];
		d->feat[k] = circ_xcalloc((size_t)d_sae[k], sizeof **d->feat);
		if (d_sae[k] > smax)
			smax = d_sae[k];
	}
	d->emax = circ_xcalloc((size_t)smax, sizeof *d->emax);
	d->epos = circ_xcalloc((size_t)smax, sizeof *d->epos);
	d->touched = circ_xcalloc((size_t)smax, sizeof *d->touched);
	for (int j = 0; j < smax; j++)
		d->epos[j] = -1;
	return d;
}

void circ_dash_free(circ_dash *d)
{
	if (!d)
		return;
	for (int k = 0; k < d->n_dict; k++) {
		for (int j = 0; j < d->d_sae[k]; j++) {
			dash_feat *f = &d->feat[k][j];
			for (int c = 0; c < f->n_ctx; c++) {
				free(f->ctx[c].tokens);
				free(f->ctx[c].acts);
			}
			free(f->ctx);
			free(f->vals);
		}
		free(d->feat[k]);
	}
	free(d->feat);
	free(d->d_sae);
	free(d->positions);
	free(d->emax);
	free(d->epos);
	free(d->touched);
	free(d);
}

/* Checks the CSR of one record against d_sae S. */
static int check_csr(int S, int T, const int64_t *row_ptr, int64_t nnz, const int32_t *feat,
		     const float *act, circ_error *e)
{
	if (row_ptr[0] != 0)
		return circ_errorf(e, "field 'row_ptr': starts at %lld, not 0",
				   (long long)row_ptr[0]);
	if (row_ptr[T] != nnz)
		return circ_errorf(e, "field 'row_ptr': ends at %lld, but 'feat' has %lld entries",
				   (long long)row_ptr[T], (long long)nnz);
	for (int t = 0; t < T; t++) {
		if (row_ptr[t + 1] < row_ptr[t])
			return circ_errorf(e, "field 'row_ptr': decreases at position %d", t + 1);
		for (int64_t q = row_ptr[t]; q < row_ptr[t + 1]; q++) {
			if (feat[q] < 0 || feat[q] >= S)
				return circ_errorf(e,
						   "field 'feat': feature %d is not in [0, d_sae = "
						   "%d) (is the stream from another dictionary?)",
						   (int)feat[q], S);
			if (q > row_ptr[t] && feat[q] <= feat[q - 1])
				return circ_errorf(e,
						   "field 'feat': features of position %d do not "
						   "increase",
						   t);
			if (!isfinite(act[q]) || act[q] == 0)
				return circ_errorf(e, "field 'act': entry %lld is %g", (long long)q,
						   (double)act[q]);
		}
	}
	return 0;
}

/* Feature j's activation at position t, 0 where inactive (binary search). */
static float act_at(const int64_t *row_ptr, const int32_t *feat, const float *act, int t, int j)
{
	int64_t lo = row_ptr[t], hi = row_ptr[t + 1];
	while (lo < hi) {
		int64_t mid = lo + (hi - lo) / 2;
		if (feat[mid] < j)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < row_ptr[t + 1] && feat[lo] == j ? act[lo] : 0.0f;
}

/* 1 when context (m, id) ranks before c: larger max, then smaller id. */
static int ranks_before(float m, int64_t id, const dash_ctx *c)
{
	return m > c->max || (m == c->max && id < c->id);
}

int circ_dash_add(circ_dash *d, int k, int64_t id, const int32_t *tokens, int T,
		  const int64_t *row_ptr, int64_t nnz, const int32_t *feat, const float *act,
		  circ_error *e)
{
	if (k < 0 || k >= d->n_dict)
		return circ_errorf(e, "field 'dict': %d is not in [0, %d)", k, d->n_dict);
	int S = d->d_sae[k], nt = 0, K = d->o.contexts, W = d->o.window;
	if (check_csr(S, T, row_ptr, nnz, feat, act, e) < 0)
		return -1;
	d->positions[k] += T;
	for (int t = 0; t < T; t++)
		for (int64_t q = row_ptr[t]; q < row_ptr[t + 1]; q++) {
			int j = feat[q];
			dash_feat *f = &d->feat[k][j];
			if (f->count == (int64_t)f->cap) {
				f->cap = f->cap ? 2 * f->cap : 16;
				f->vals = circ_xrealloc(f->vals, f->cap * sizeof *f->vals);
			}
			f->vals[f->count++] = act[q];
			if (d->epos[j] < 0) {
				d->touched[nt++] = j;
				d->epos[j] = t;
				d->emax[j] = act[q];
			} else if (act[q] > d->emax[j]) {
				d->epos[j] = t;
				d->emax[j] = act[q];
			}
		}
	for (int i = 0; i < nt; i++) {
		int j = d->touched[i], pos = d->epos[j];
		float m = d->emax[j];
		dash_feat *f = &d->feat[k][j];
		d->epos[j] = -1;
		if (f->n_ctx == K && !ranks_before(m, id, &f->ctx[K - 1]))
			continue;
		if (!f->ctx)
			f->ctx = circ_xcalloc((size_t)K, sizeof *f->ctx);
		if (f->n_ctx == K) { /* drop the last */
			free(f->ctx[K - 1].tokens);
			free(f->ctx[K - 1].acts);
			f->n_ctx--;
		}
		int at = f->n_ctx;
		while (at > 0 && ranks_before(m, id, &f->ctx[at - 1]))
			at--;
		memmove(&f->ctx[at + 1], &f->ctx[at], (size_t)(f->n_ctx - at) * sizeof *f->ctx);
		f->n_ctx++;
		dash_ctx *c = &f->ctx[at];
		c->id = id;
		c->pos = pos;
		c->max = m;
		c->start = pos - W < 0 ? 0 : pos - W;
		c->n = (pos + W >= T ? T - 1 : pos + W) - c->start + 1;
		c->tokens = circ_xrealloc(NULL, (size_t)c->n * sizeof *c->tokens);
		c->acts = circ_xrealloc(NULL, (size_t)c->n * sizeof *c->acts);
		for (int q = 0; q < c->n; q++) {
			c->tokens[q] = tokens[c->start + q];
			c->acts[q] = act_at(row_ptr, feat, act, c->start + q, j);
		}
	}
	return 0;
}

int64_t circ_dash_positions(const circ_dash *d, int k)
{
	return d->positions[k];
}

int circ_dash_top(const circ_dash *d, int n, circ_dash_feat *out)
{
	int m = 0;
	for (int k = 0; k < d->n_dict; k++)
		for (int j = 0; j < d->d_sae[k]; j++) {
			int64_t c = d->feat[k][j].count;
			if (c == 0)
				continue;
			/* insertion into the sorted top n; (k, j) come in increasing
			 * order, so equal counts keep that order */
			int at = m < n ? m : n;
			while (at > 0 && d->feat[out[at - 1].dict][out[at - 1].feat].count < c)
				at--;
			if (at >= n)
				continue;
			int last = m < n ? m : n - 1;
			memmove(&out[at + 1], &out[at], (size_t)(last - at) * sizeof *out);
			out[at].dict = k;
			out[at].feat = j;
			if (m < n)
				m++;
		}
	return m;
}

/* ---- JSON ---- */

/* Shortest decimal that reads back as the same float. */
static void put_f32(FILE *f, float v)
{
	char buf[32];
	for (int p = 1; p <= 9; p++) {
		snprintf(buf, sizeof buf, "%.*g", p, (double)v);
		if (strtof(buf, NULL) == v)
			break;
	}
	fputs(buf, f);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static int utf8_len(const unsigned char *s, size_t n)
{
	int len = s[0] < 0x80		  ? 1
		  : (s[0] & 0xe0) == 0xc0 ? 2
		  : (s[0] & 0xf0) == 0xe0 ? 3
		  : (s[0] & 0xf8) == 0xf0 ? 4
					  : 0;
	if (len == 0 || (size_t)len > n || (len == 2 && s[0] < 0xc2) || (len == 4 && s[0] > 0xf4))
		return 0;
	for (int i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((len == 3 && s[0] == 0xe0 && s[1] < 0xa0) ||
	    (len == 3 && s[0] == 0xed && s[1] >= 0xa0) ||
	    (len == 4 && s[0] == 0xf0 && s[1] < 0x90) || (len == 4 && s[0] == 0xf4 && s[1] >= 0x90))
		return 0;
	return len;
}

/* A JSON string of bytes s[0..n): invalid UTF-8 becomes U+FFFD; '<', '>'
 * and '&' are escaped so the text is safe inside an HTML script block. */
static void put_json_bytes(FILE *f, const unsigned char *s, size_t n)
{
	putc('"', f);
	for (size_t i = 0; i < n;) {
		unsigned char c = s[i];
		int len = utf8_len(s + i, n - i);
		if (len == 0) {
			fputs("\\ufffd", f);
			i++;
		} else if (len > 1) {
			fwrite(s + i, 1, (size_t)len, f);
			i += (size_t)len;
		} else {
			if (c == '"' || c == '\\')
				fprintf(f, "\\%c", c);
			else if (c < 0x20 || c == '<' || c == '>' || c == '&' || c == 0x7f)
				fprintf(f, "\\u%04x", c);
			else
				putc(c, f);
			i++;
		}
	}
	putc('"', f);
}

void circ_render_put_json_str(FILE *f, const char *s)
{
	put_json_bytes(f, (const unsigned char *)(s ? s : ""), s ? strlen(s) : 0);
}

/* A token's text: its decoded bytes, or the id in decimal. */
static void put_token(FILE *f, const circ_bpe *bpe, int32_t id)
{
	char buf[16];
	if (bpe) {
		circ_error e;
		size_t len;
		char *s = circ_bpe_decode(bpe, &id, 1, &len, &e);
		if (s) {
			put_json_bytes(f, (const unsigned char *)s, len);
			free(s);
			return;
		}
	}
	snprintf(buf, sizeof buf, "%d", (int)id);
	circ_render_put_json_str(f, buf);
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

/* The histogram: bins equal bins over [min(0, lowest), highest]. */
static void put_hist(FILE *f, const dash_feat *df, int bins)
{
	float *v = circ_xrealloc(NULL, (size_t)df->count * sizeof *v + 1);
	int64_t *cnt = circ_xcalloc((size_t)bins, sizeof *cnt);
	memcpy(v, df->vals, (size_t)df->count * sizeof *v);
	qsort(v, (size_t)df->count, sizeof *v, cmp_float);
	double lo = v[0] < 0 ? v[0] : 0, hi = v[df->count - 1], w = (hi - lo) / bins;
	for (int64_t i = 0; i < df->count; i++) {
		int b = w > 0 ? (int)((v[i] - lo) / w) : bins - 1;
		cnt[b < 0 ? 0 : b >= bins ? bins - 1 : b]++;
	}
	double sum = 0;
	for (int64_t i = 0; i < df->count; i++)
		sum += v[i];
	fputs(",\"mean\":", f);
	put_f32(f, (float)(sum / (double)df->count));
	fputs(",\"max\":", f);
	put_f32(f, (float)hi);
	fputs(",\"hist\":{\"lo\":", f);
	put_f32(f, (float)lo);
	fputs(",\"hi\":", f);
	put_f32(f, (float)hi);
	fputs(",\"counts\":[", f);
	for (int b = 0; b < bins; b++)
		fprintf(f, "%s%lld", b ? "," : "", (long long)cnt[b]);
	fputs("]}", f);
	free(cnt);
	free(v);
}

typedef struct logit_ent {
	double x;
	int32_t id;
} logit_ent;

static int cmp_desc(const void *a, const void *b)
{
	const logit_ent *p = a, *q = b;
	if (p->x != q->x)
		return p->x < q->x ? 1 : -1;
	return (p->id > q->id) - (p->id < q->id);
}

static int cmp_asc(const void *a, const void *b)
{
	const logit_ent *p = a, *q = b;
	if (p->x != q->x)
		return p->x > q->x ? 1 : -1;
	return (p->id > q->id) - (p->id < q->id);
}

static void put_logit_list(FILE *f, const circ_dash_show *s, const logit_ent *l, int n)
{
	putc('[', f);
	for (int i = 0; i < n; i++) {
		fprintf(f, "%s{\"token\":%d,\"text\":", i ? "," : "", (int)l[i].id);
		put_token(f, s->bpe, l[i].id);
		fputs(",\"logit\":", f);
		put_f32(f, (float)l[i].x);
		putc('}', f);
	}
	putc(']', f);
}

/* "promoted" and "suppressed": the top and bottom `logits` tokens of
 * direction . W_U (double sums), or nulls without a direction. */
static void put_logits(FILE *f, const circ_dash_show *s, const float *dir, int n)
{
	if (!dir || !s->W_U) {
		fputs(",\"promoted\":null,\"suppressed\":null", f);
		return;
	}
	logit_ent *l = circ_xrealloc(NULL, (size_t)s->V * sizeof *l);
	for (int v = 0; v < s->V; v++) {
		const float *u = s->W_U + (size_t)v * s->C;
		double x = 0;
		for (int c = 0; c < s->C; c++)
			x += (double)dir[c] * u[c];
		l[v].x = x;
		l[v].id = v;
	}
	if (n > s->V)
		n = s->V;
	qsort(l, (size_t)s->V, sizeof *l, cmp_desc);
	fputs(",\"promoted\":", f);
	put_logit_list(f, s, l, n);
	qsort(l, (size_t)s->V, sizeof *l, cmp_asc);
	fputs(",\"suppressed\":", f);
	put_logit_list(f, s, l, n);
	free(l);
}

void circ_dash_put_feature(FILE *f, const circ_dash *d, const circ_dash_show *s, circ_dash_feat ft)
{
	const dash_feat *df = &d->feat[ft.dict][ft.feat];
	int64_t P = d->positions[ft.dict];
	fprintf(f, "{\"dict\":%d,\"dict_name\":", ft.dict);
	circ_render_put_json_str(f, s->dict_name ? s->dict_name[ft.dict] : NULL);
	fputs(",\"hook\":", f);
	circ_render_put_json_str(f, s->dict_hook ? s->dict_hook[ft.dict] : NULL);
	fputs(",\"hook_out\":", f);
	if (s->dict_out && s->dict_out[ft.dict])
		circ_render_put_json_str(f, s->dict_out[ft.dict]);
	else
		fputs("null", f);
	fprintf(f, ",\"feature\":%d,\"count\":%lld,\"positions\":%lld,\"density\":", ft.feat,
		(long long)df->count, (long long)P);
	put_f32(f, P ? (float)((double)df->count / (double)P) : 0.0f);
	if (df->count)
		put_hist(f, df, d->o.bins);
	else
		fputs(",\"mean\":null,\"max\":null,\"hist\":null", f);
	fputs(",\"contexts\":[", f);
	for (int c = 0; c < df->n_ctx; c++) {
		const dash_ctx *x = &df->ctx[c];
		fprintf(f, "%s{\"id\":%lld,\"pos\":%d,\"max\":", c ? "," : "", (long long)x->id,
			x->pos);
		put_f32(f, x->max);
		fprintf(f, ",\"start\":%d,\"tokens\":[", x->start);
		for (int q = 0; q < x->n; q++)
			fprintf(f, "%s%d", q ? "," : "", (int)x->tokens[q]);
		fputs("],\"text\":[", f);
		for (int q = 0; q < x->n; q++) {
			if (q)
				putc(',', f);
			put_token(f, s->bpe, x->tokens[q]);
		}
		fputs("],\"acts\":[", f);
		for (int q = 0; q < x->n; q++) {
			if (q)
				putc(',', f);
			put_f32(f, x->acts[q]);
		}
		fputs("]}", f);
	}
	putc(']', f);
	const float *dir = s->direction && s->direction[ft.dict]
			       ? s->direction[ft.dict] + (size_t)ft.feat * s->C
			       : NULL;
	put_logits(f, s, dir, d->o.logits);
	putc('}', f);
}

int circ_dash_write_jsonl(FILE *f, const circ_dash *d, const circ_dash_show *s, circ_error *e)
{
	for (int i = 0; i < s->n_feats; i++) {
		circ_dash_put_feature(f, d, s, s->feats[i]);
		putc('\n', f);
	}
	return circ_render_check(f, e);
}

/* ---- HTML ---- */

const char *const circ_dash_css[] = {
    "body { font: 14px Helvetica, Arial, sans-serif; margin: 16px; color: #222; "
    "background: #fff; }",
    "h1 { font-size: 18px; margin: 0 0 8px; }",
    ".feature { border: 1px solid #ccc; border-radius: 4px; margin: 12px 0; padding: 8px; }",
    ".feature h2 { font-size: 15px; margin: 0 0 6px; }",
    ".feature .meta { color: #666; font-size: 12px; }",
    ".cols { display: flex; flex-wrap: wrap; gap: 16px; }",
    ".ctx { font: 12px monospace; white-space: pre; margin: 2px 0; }",
    ".ctx .tok { border-radius: 2px; padding: 0 1px; }",
    ".ctx .max { outline: 1px solid #c40; }",
    ".ctx .act { color: #666; display: inline-block; width: 6em; }",
    "table.logits { font: 12px monospace; border-collapse: collapse; }",
    "table.logits td { padding: 0 6px; }",
    "table.logits .pos { color: #1a5fb4; }",
    "table.logits .neg { color: #c01c28; }",
    "svg.hist rect { fill: #e66100; }",
    NULL,
};

/* circDash(f): one feature's section element (a dashboard-data object). */
const char *const circ_dash_script[] = {
    "var circDash = (function () {",
    "'use strict';",
    "var NS = 'http://www.w3.org/2000/svg';",
    "function h(tag, cls, text) {",
    "  var x = document.createElement(tag);",
    "  if (cls) x.className = cls;",
    "  if (text !== undefined) x.textContent = text;",
    "  return x;",
    "}",
    "function num(v) { return v === null ? '-' : Number(v).toPrecision(4); }",
    "function hist(hs) {",
    "  var W = 240, H = 80, svg = document.createElementNS(NS, 'svg');",
    "  svg.setAttribute('class', 'hist');",
    "  svg.setAttribute('width', W); svg.setAttribute('height', H + 14);",
    "  if (!hs) return svg;",
    "  var n = hs.counts.length, top = Math.max.apply(null, hs.counts) || 1;",
    "  hs.counts.forEach(function (c, i) {",
    "    var r = document.createElementNS(NS, 'rect'), bh = H * c / top;",
    "    r.setAttribute('x', i * W / n); r.setAttribute('width', Math.max(W / n - 1, 1));",
    "    r.setAttribute('y', H - bh); r.setAttribute('height', bh);",
    "    var t = document.createElementNS(NS, 'title');",
    "    t.textContent = c + ' in [' + num(hs.lo + i * (hs.hi - hs.lo) / n) + ', ' +",
    "      num(hs.lo + (i + 1) * (hs.hi - hs.lo) / n) + ')';",
    "    r.appendChild(t); svg.appendChild(r);",
    "  });",
    "  [[0, 'start', hs.lo], [W, 'end', hs.hi]].forEach(function (a) {",
    "    var t = document.createElementNS(NS, 'text');",
    "    t.setAttribute('x', a[0]); t.setAttribute('y', H + 12);",
    "    t.setAttribute('text-anchor', a[1]); t.setAttribute('font-size', '10');",
    "    t.textContent = num(a[2]); svg.appendChild(t);",
    "  });",
    "  return svg;",
    "}",
    "function logits(title, list, cls) {",
    "  var t = h('table', 'logits'), cap = h('caption', null, title);",
    "  t.appendChild(cap);",
    "  (list || []).forEach(function (l) {",
    "    var tr = h('tr');",
    "    tr.appendChild(h('td', null, JSON.stringify(l.text)));",
    "    tr.appendChild(h('td', cls, num(l.logit)));",
    "    t.appendChild(tr);",
    "  });",
    "  return t;",
    "}",
    "return function (f) {",
    "  var s = h('section', 'feature');",
    "  s.id = 'f' + f.dict + '-' + f.feature;",
    "  s.appendChild(h('h2', null, 'dictionary ' + f.dict + ' (' + f.hook +",
    "    (f.hook_out ? ' -> ' + f.hook_out : '') + '), feature ' + f.feature));",
    "  s.appendChild(h('div', 'meta', 'active at ' + f.count + ' of ' + f.positions +",
    "    ' positions (density ' + num(f.density) + '), mean ' + num(f.mean) + ', max ' +",
    "    num(f.max)));",
    "  var ctxs = h('div', 'contexts');",
    "  f.contexts.forEach(function (c) {",
    "    var line = h('div', 'ctx');",
    "    line.appendChild(h('span', 'act', num(c.max)));",
    "    c.text.forEach(function (tx, q) {",
    "      var a = c.acts[q], sp = h('span', 'tok', tx);",
    "      if (c.start + q === c.pos) sp.className += ' max';",
    "      var al = f.max > 0 ? Math.max(0, Math.min(1, a / f.max)) : 0;",
    "      sp.style.background = 'rgba(230, 97, 0, ' + al.toFixed(3) + ')';",
    "      sp.title = 'token ' + c.tokens[q] + ', example ' + c.id + ', position ' +",
    "        (c.start + q) + ': ' + num(a);",
    "      line.appendChild(sp);",
    "    });",
    "    ctxs.appendChild(line);",
    "  });",
    "  s.appendChild(ctxs);",
    "  var cols = h('div', 'cols');",
    "  cols.appendChild(hist(f.hist));",
    "  cols.appendChild(logits('promoted', f.promoted, 'pos'));",
    "  cols.appendChild(logits('suppressed', f.suppressed, 'neg'));",
    "  s.appendChild(cols);",
    "  return s;",
    "};",
    "})();",
    NULL,
};

static const char *const page_script[] = {
    "(function () {",
    "'use strict';",
    "var feats = JSON.parse(document.getElementById('dashboard-data').textContent);",
    "var root = document.getElementById('features');",
    "feats.forEach(function (f) { root.appendChild(circDash(f)); });",
    "document.getElementById('feature-count').textContent = String(feats.length);",
    "document.body.setAttribute('data-ready', '1');",
    "})();",
    "</script>",
    NULL,
};

void circ_dash_page_start(FILE *f, const char *title, const char *const *css)
{
	circ_render_put_lines(f, circ_render_html_head);
	fputs("<title>", f);
	circ_render_put_xml(f, title);
	fputs("</title>\n<style>\n", f);
	if (css)
		circ_render_put_lines(f, css);
	circ_render_put_lines(f, circ_dash_css);
	fputs("</style>\n</head>\n<body>\n<h1>", f);
	circ_render_put_xml(f, title);
	fputs("</h1>\n", f);
}

int circ_dash_write_html(FILE *f, const circ_dash *d, const circ_dash_show *s, circ_error *e)
{
	circ_dash_page_start(f, s->title ? s->title : "feature dashboards", NULL);
	fputs("<p><span id=\"feature-count\">0</span> features; tokens coloured by the "
	      "feature's activation (the maximum outlined); logits of the decoder direction "
	      "through W_U.</p>\n<div id=\"features\"></div>\n",
	      f);
	fputs("<script type=\"application/json\" id=\"dashboard-data\">[\n", f);
	for (int i = 0; i < s->n_feats; i++) {
		circ_dash_put_feature(f, d, s, s->feats[i]);
		fputs(i + 1 < s->n_feats ? ",\n" : "\n", f);
	}
	fputs("]</script>\n<script>\n", f);
	circ_render_put_lines(f, circ_dash_script);
	circ_render_put_lines(f, page_script);
	fputs("</body>\n</html>\n", f);
	return circ_render_check(f, e);
}
