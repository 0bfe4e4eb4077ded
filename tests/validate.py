#!/usr/bin/python3
"""Validates JSON lines (from `circ cat`) against a circ schema.

usage: validate.py SCHEMA [FILE]   (FILE defaults to stdin)

The kind schema has "header" and "record" definitions ($defs); the first line
is checked against the header, the others against the record (or, where a
record has "summary": true, against "summary" if the schema defines it); an
end record {"$end": ...} (end.schema.json) must be the last line, and count
the records before it.
References to header.schema.json and tensor.schema.json resolve locally.
"""
import json, os, sys
import jsonschema

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "schemas")
store = {}
for f in os.listdir(here):
    if f.endswith(".json"):
        with open(os.path.join(here, f)) as fh:
            s = json.load(fh)
        store[s.get("$id", f)] = s
        store[f] = s

schema = json.load(open(sys.argv[1]))
resolver = jsonschema.RefResolver(base_uri="https://circ.dev/schemas/", referrer=schema, store=store)
defs = schema.get("$defs", {})
def check(kind, obj, n):
    sub = dict(defs[kind]); sub["$defs"] = defs
    try:
        jsonschema.validate(obj, sub, resolver=resolver, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as e:
        print(f"validate: line {n}: {kind}: {e.message} at {list(e.absolute_path)}", file=sys.stderr)
        sys.exit(1)
src = open(sys.argv[2]) if len(sys.argv) > 2 else sys.stdin
n = 0
ended = None
for n, line in enumerate(src, 1):
    obj = json.loads(line)
    if ended is not None:
        print(f"validate: line {n}: a line after the end record (line {ended})", file=sys.stderr)
        sys.exit(1)
    if n > 1 and "$end" in obj:
        try:
            jsonschema.validate(obj, store["end.schema.json"], cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as e:
            print(f"validate: line {n}: end record: {e.message}", file=sys.stderr)
            sys.exit(1)
        if obj["$end"]["records"] != n - 2:
            print(f"validate: line {n}: end record counts {obj['$end']['records']} records, not {n - 2}", file=sys.stderr)
            sys.exit(1)
        ended = n
    elif n == 1:
        check("header", obj, n)
    elif obj.get("summary") is True and "summary" in defs:
        check("summary", obj, n)
    else:
        check("record", obj, n)
if n == 0:
    print("validate: empty input", file=sys.stderr); sys.exit(1)
