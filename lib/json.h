/*
 * json: the JSON-lines face of circ's streams. Converts one msgpack record to
 * one line of JSON and one parsed JSON value back to msgpack, such that
 * stream -> JSON -> stream and (canonical) JSON -> stream -> JSON are
 * byte-identical (canonical JSON lines end with their end record, as the
 * writer prints them; see stream.h). The mapping:
 *   nil/bool/str/array/map     as themselves (map keys must be strings)
 *   integers                   JSON integers
 *   float64                    shortest text that reads back to the same
 *                              double, always with '.', 'e' or a "$f64" form
 *   non-finite floats          {"$f64":"NaN"|"Infinity"|"-Infinity"}
 *   tensor maps                data shown as an array of numbers
 *   other bin                  {"$base64":"..."}
 * float32 scalars are widened to float64 (circ never writes them).
 */
#ifndef CIRC_JSON_H
#define CIRC_JSON_H

#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>

#include "record.h"
#include "util.h"

/* Appends the JSON text of o (no newline) to *buf (realloc'd; *len, *cap). */
int circ_json_from_msgpack(const msgpack_object *o, char **buf, size_t *len, size_t *cap,
			   circ_error *e);
/* 0 if circ_json_from_msgpack would accept o (tensor maps whose shape fits
 * their data, string keys, UTF-8 strings, nesting), else -1 with the problem
 * (naming the field): lets a reader blame its input, not its output. Cheap:
 * nothing is formatted. */
int circ_json_check(const msgpack_object *o, circ_error *e);
/* Packs a JSON value as msgpack. */
int circ_json_to_msgpack(const json_t *j, msgpack_packer *pk, circ_error *e);

#endif
