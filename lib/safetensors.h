/*
 * safetensors: reading (memory-mapped, validated) and writing of the
 * safetensors format that Hugging Face uses for weights.
 *
 * The format: an 8-byte little-endian header length n, n bytes of JSON
 * ({"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 * ..., optional "__metadata__": {str: str}}), then the data region; offsets
 * are relative to its start. Nothing in the file is trusted before it is
 * checked: the header length against the file size, the JSON, each dtype,
 * each shape against its byte range, every range inside the data region,
 * no two ranges overlapping and no byte of the data region left unindexed
 * (the reference implementation's rule), no duplicate names. Every error
 * names the file and, where there is one, the tensor:
 *   "'m.safetensors': tensor 'h.0.mlp.c_fc.weight': data_offsets [0, 12] hold
 *    12 bytes, shape [3, 2] of F32 needs 24"
 *
 * Tensors are not copied: data points into the read-only mapping, which
 * lives until circ_st_close. Data may be unaligned (a header's length need
 * not be a multiple of 4); circ_st_aligned says whether a tensor can be
 * used in place as float.
 *
 * The writer produces the same format from tensors in memory: names in the
 * given order, data in the same order, the header padded with spaces to a
 * multiple of 8 bytes so every tensor is 8-byte aligned in the file. It
 * writes to a temporary file and renames it into place, so a failed write
 * never leaves a file that looks complete.
 *
 * Layering: uses util and stream (for circ_dtype).
 */
#ifndef CIRC_SAFETENSORS_H
#define CIRC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "stream.h"
#include "util.h"

/* One tensor of a file (reader) or to write (writer). */
typedef struct circ_st_tensor {
	const char *name;
	circ_dtype dtype; /* F64, F32, F16, BF16, I64, I32 or U8 */
	int ndim;
	int64_t shape[CIRC_MAX_DIMS];
	const void *data; /* little-endian elements; reader: into the mapping */
	size_t nbytes;	  /* numel * dtype size */
} circ_st_tensor;

typedef struct circ_st circ_st;

/* Maps and validates path. NULL with "'<path>': <problem>" (and the tensor's
 * name when one is at fault) on any error, including an empty or short file,
 * a header length beyond the file, bad JSON, an unknown dtype ("I8", "BOOL",
 * ... are rejected as circ has no use for them), a negative or overflowing
 * shape, offsets outside the data region, overlaps or gaps. */
circ_st *circ_st_open(const char *path, circ_error *e);
void circ_st_close(circ_st *f); /* NULL is a no-op */

/* 0 if the file at the path is still the one mapped at open, untouched
 * (device, inode, size, modification and change times); else -1 with
 * "'<path>': changed while in use ...". The data is used in place from the
 * mapping, so a file rewritten during a run (as cp does, in place) would
 * give results computed partly from other weights: tools call this before
 * committing their output. (Truncation is caught earlier: see
 * circ_guard_mapping.) */
int circ_st_check_unchanged(const circ_st *f, circ_error *e);
const char *circ_st_path(const circ_st *f);
/* The file's identity when it was opened, as git's index keys a file:
 * "dev ino size mtime.ns ctime.ns" into out (NUL-terminated, truncated to
 * n); *age is how many seconds before now it was last modified or changed
 * (a file changed within the timestamps' granularity cannot be told from
 * its next version by this key, so callers trust it only when old enough). */
void circ_st_identity(const circ_st *f, char *out, size_t n, double *age);
int circ_st_count(const circ_st *f);
/* Tensor i (0 <= i < count), in the order of their data offsets. */
const circ_st_tensor *circ_st_at(const circ_st *f, int i);
/* Tensor by exact name, or NULL. */
const circ_st_tensor *circ_st_find(const circ_st *f, const char *name);
/* A "__metadata__" value by key, or NULL. */
const char *circ_st_metadata(const circ_st *f, const char *key);
/* The whole mapped file (for digests). */
const void *circ_st_bytes(const circ_st *f, size_t *len);
/* 1 if t's data is 4-byte aligned (usable in place as float/int32). */
int circ_st_aligned(const circ_st_tensor *t);

/* Converts n elements of a float dtype (F32, F16, BF16, F64) to f32. */
void circ_st_to_f32(float *out, const void *data, circ_dtype dtype, size_t n);
/* Rounds f32 to F16 / BF16 bits (round to nearest even; NaN stays NaN,
 * overflow gives infinity). */
uint16_t circ_f32_to_f16(float f);
uint16_t circ_f32_to_bf16(float f);
float circ_f16_to_f32(uint16_t h);
float circ_bf16_to_f32(uint16_t h);

/* ---- a model's weights: one file, or shards with an index ----
 *
 * A Hugging Face directory holds model.safetensors, or (large models)
 * model-0000k-of-0000n.safetensors shards with model.safetensors.index.json:
 * {"metadata": {...}, "weight_map": {"<tensor>": "<shard file>", ...}}.
 * A set opens whichever the directory has (model.safetensors first, as
 * transformers does) and checks the index against the shards: every shard
 * named exists and is a valid file (shard names are plain file names in
 * the directory), every tensor of the weight_map is in the shard it names,
 * every tensor of a shard is in the weight_map under that shard (a name in
 * two shards is an error), and the JSON has no duplicate keys. */
typedef struct circ_st_set circ_st_set;

/* Opens dir's weights. NULL with "'<file>': <problem>" naming the index or
 * the shard (and the tensor) at fault. */
circ_st_set *circ_st_set_open(const char *dir, circ_error *e);
void circ_st_set_close(circ_st_set *s); /* NULL is a no-op */
/* Files of the set (1 without an index), in the order of their names. */
int circ_st_set_files(const circ_st_set *s);
const circ_st *circ_st_set_file(const circ_st_set *s, int k);
/* The index's path, or NULL for a single file. */
const char *circ_st_set_index(const circ_st_set *s);
/* Tensors of all files: file by file, each in its order of offsets. *file
 * (when not NULL) is set to the path of the file holding it. */
int circ_st_set_count(const circ_st_set *s);
const circ_st_tensor *circ_st_set_at(const circ_st_set *s, int i, const char **file);
/* Tensor by exact name, or NULL. */
const circ_st_tensor *circ_st_set_find(const circ_st_set *s, const char *name, const char **file);
/* circ_st_check_unchanged of every file. */
int circ_st_set_check_unchanged(const circ_st_set *s, circ_error *e);

/* Writes n tensors to path; metadata is n_meta key/value pairs (meta[2i]
 * the key, meta[2i+1] the value), may be NULL. Names must be unique and
 * non-empty, nbytes must match the shape. -1 with "'<path>': ..." on error
 * (the temporary file is removed). */
int circ_st_write(const char *path, int n, const circ_st_tensor *t, int n_meta,
		  const char *const *meta, circ_error *e);
/* The same bytes, fed to a sink instead of a file (for digests): sink is
 * called with consecutive pieces of the file. */
int circ_st_serialize(int n, const circ_st_tensor *t, int n_meta, const char *const *meta,
		      void (*sink)(void *ctx, const void *p, size_t len), void *ctx, circ_error *e);

#endif
