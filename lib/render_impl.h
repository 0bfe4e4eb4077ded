/*
 * render_impl: what render.c shares with the rest of the render module
 * (render_dashboard.c): the HTML page's head (charset and a content
 * security policy that forbids network access), escaping and the final
 * stream check. Not a public interface.
 */
#ifndef CIRC_RENDER_IMPL_H
#define CIRC_RENDER_IMPL_H

#include <stdio.h>

#include "util.h"

/* The lines of an HTML page's head up to (not including) its title,
 * NULL-terminated. */
extern const char *const *const circ_render_html_head;
/* Each line followed by a newline. */
void circ_render_put_lines(FILE *f, const char *const *lines);
/* HTML / XML text: <, >, & and " escaped. */
void circ_render_put_xml(FILE *f, const char *s);
/* Flushes f: -1 with "write error: ..." if any write on it failed. */
int circ_render_check(FILE *f, circ_error *e);

#endif
