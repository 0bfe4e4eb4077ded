/*
 * render_impl: what render.c and render_dashboard.c share with the rest of
 * the render module (render_dashboard.c, render_fgraph.c): the HTML page's head (charset and a
 * content security policy that forbids network access), escaping and the final stream check. Not a
 * public interface.
 */
#ifndef CIRC_RENDER_IMPL_H
#define CIRC_RENDER_IMPL_H

#include <stdio.h>

#include "render_dashboard.h"
#include "util.h"

/* The lines of an HTML page's head up to (not including) its title,
 * NULL-terminated. */
extern const char *const *const circ_render_html_head;
/* Each line followed by a newline. */
void circ_render_put_lines(FILE *f, const char *const *lines);
/* HTML / XML text: <, >, & and " escaped. */
void circ_render_put_xml(FILE *f, const char *s);
/* A JSON string (NULL: ""): invalid UTF-8 becomes U+FFFD; <, > and &
 * escaped, so the text is safe inside an HTML script block. */
void circ_render_put_json_str(FILE *f, const char *s);
/* Flushes f: -1 with "write error: ..." if any write on it failed. */
int circ_render_check(FILE *f, circ_error *e);

/* The dashboards' shared page parts (render_dashboard.c): CSS rules (no
 * <style> tags) and a script (no <script> tags) defining circDash(f),
 * which builds one feature's section element from its JSON object. Both
 * NULL-terminated. */
extern const char *const circ_dash_css[];
extern const char *const circ_dash_script[];
/* A page's start: head, title, a style block of css (CSS rules, may be
 * NULL) and circ_dash_css, the body's h1 (the title). */
void circ_dash_page_start(FILE *f, const char *title, const char *const *css);
/* One feature's JSON object, as a line of circ_dash_write_jsonl (no
 * newline). */
void circ_dash_put_feature(FILE *f, const circ_dash *d, const circ_dash_show *s, circ_dash_feat ft);

#endif
