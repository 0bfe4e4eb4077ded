/*
 * circ-cat: look at streams as a person would. Prints any stream (zstd,
 * msgpack or JSON lines; several files are read one after another) as JSON
 * lines, header first; --to-msgpack turns JSON lines back into the identical
 * binary stream. The end record is checked on reading and not copied: it is
 * the writer's proof of completion, and each writer adds its own (in JSON
 * lines too, as the last line), so JSON -> stream -> JSON is byte-identical.
 */
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "cli/opt.h"

enum { OPT_TO_MSGPACK = CIRC_OPT_FIRST_TOOL, OPT_HEADER, OPT_NO_HEADER, OPT_KIND };

static const circ_opt opts[] = {
    {"to-msgpack", OPT_TO_MSGPACK, NULL, "write a binary stream (zstd unless --no-compress)"},
    {"header", OPT_HEADER, NULL, "print only the header"},
    {"no-header", OPT_NO_HEADER, NULL, "print only the data records"},
    {"kind", OPT_KIND, "KIND", "fail unless the stream is of this kind"},
    {0},
};

static struct {
	int to_msgpack, header_only, no_header;
	const char *kind;
} o;

static int handle(int key, const char *arg, void *ctx)
{
	switch (key) {
	case OPT_TO_MSGPACK: o.to_msgpack = 1; return 0;
	case OPT_HEADER: o.header_only = 1; return 0;
	case OPT_NO_HEADER: o.no_header = 1; return 0;
	case OPT_KIND: o.kind = arg; return 0;
	}
	return -1;
}

/* Writes one record of r. A record the JSON face cannot show (a tensor whose
 * shape does not fit its data, say) is the input's fault: it is checked here,
 * in either direction, so that the message names the input and its record. */
static void pack_object_record(circ_writer *w, circ_reader *r, const msgpack_object *rec,
			       circ_error *e)
{
	if (circ_json_check(rec, e) < 0) {
		circ_reader_fail(r, e);
		circ_writer_abort(w);
		circ_die(e);
	}
	msgpack_pack_object(circ_writer_packer(w), *rec);
	if (circ_writer_end_record(w, e) < 0) {
		circ_writer_abort(w);
		circ_die(e);
	}
}

int main(int argc, char **argv)
{
	circ_cli cli = {
	    "[options] [file...]",
	    "Print circ streams as JSON lines (header first), or JSON lines as a stream.", opts, 1};
	circ_error e;
	circ_writer *w;
	int i, nfiles;
	char **files, *stdin_only[] = {"-"};

	circ_init("circ-cat");
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (o.header_only && o.no_header)
		circ_usage_error("--header and --no-header exclude each other");
	/* only the header, or only the data, is no stream: no end record */
	cli.wopts.no_end = o.header_only || o.no_header;
	if (!o.to_msgpack)
		cli.wopts.json = 1;
	else if (cli.wopts.json)
		circ_usage_error("--to-msgpack and --json exclude each other");
	nfiles = argc - i;
	files = nfiles ? argv + i : stdin_only;
	if (!nfiles)
		nfiles = 1;
	w = circ_writer_open(cli.output, &cli.wopts, &e);
	if (!w)
		circ_die(&e);
	for (int f = 0; f < nfiles; f++) {
		circ_reader *r = circ_reader_open(files[f], o.kind, &e);
		const msgpack_object *rec;
		int k = 0;
		if (!r) {
			circ_writer_abort(w);
			circ_die(&e);
		}
		if (f == 0 && !o.no_header)
			pack_object_record(w, r, circ_reader_header(r), &e);
		while (!o.header_only && (k = circ_reader_next(r, &rec, &e)) > 0)
			pack_object_record(w, r, rec, &e);
		if (!o.header_only && k < 0) {
			circ_writer_abort(w);
			circ_die(&e);
		}
		circ_reader_free(r);
	}
	if (circ_writer_close(w, &e) < 0)
		circ_die(&e);
	return 0;
}
