/*
 * topology_hooks: the names of the hook points (TransformerLens's) that
 * dictionaries read and write, and where each sits among the stages of a
 * topology. One table; dict and the tools ask it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "topology.h"

static const char *const hook_names[CIRC_HOOK_COUNT] = {
    [CIRC_HOOK_RESID_PRE] = "hook_resid_pre",
    [CIRC_HOOK_RESID_MID] = "hook_resid_mid",
    [CIRC_HOOK_RESID_POST] = "hook_resid_post",
    [CIRC_HOOK_ATTN_OUT] = "hook_attn_out",
    [CIRC_HOOK_MLP_OUT] = "hook_mlp_out",
    [CIRC_HOOK_ATTN_Z] = "attn.hook_z",
    [CIRC_HOOK_LN2_NORMALIZED] = "ln2.hook_normalized",
    [CIRC_HOOK_MLP_IN] = "hook_mlp_in",
};

const char *circ_hook_point_name(circ_hook_kind k)
{
	CIRC_ASSERT(k >= 0 && k < CIRC_HOOK_COUNT);
	return hook_names[k];
}

int circ_hook_point_parse(const char *point, circ_hook_kind *k)
{
	for (int i = 0; i < CIRC_HOOK_COUNT; i++)
		if (!strcmp(point, hook_names[i])) {
			*k = (circ_hook_kind)i;
			return 0;
		}
	if (!strcmp(point, "mlp.hook_in")) {
		*k = CIRC_HOOK_LN2_NORMALIZED;
		return 0;
	}
	if (!strcmp(point, "mlp.hook_out")) {
		*k = CIRC_HOOK_MLP_OUT;
		return 0;
	}
	return -1;
}

int circ_hook_parse(const char *name, circ_hook *h, circ_error *e)
{
	const char *p = name;
	if (strncmp(p, "blocks.", 7) != 0)
		return circ_errorf(e, "hook '%s': expected 'blocks.<layer>.<point>'", name);
	p += 7;
	long layer = 0;
	int digits = 0;
	for (; *p >= '0' && *p <= '9' && digits < 7; p++, digits++)
		layer = layer * 10 + (*p - '0');
	if (!digits || *p != '.' || (digits > 1 && p[-digits] == '0'))
		return circ_errorf(e, "hook '%s': expected 'blocks.<layer>.<point>'", name);
	if (circ_hook_point_parse(p + 1, &h->kind) < 0) {
		char list[512] = "";
		for (int i = 0; i < CIRC_HOOK_COUNT; i++) {
			strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
			strncat(list, hook_names[i], sizeof list - strlen(list) - 1);
		}
		return circ_errorf(e, "hook '%s': unknown point '%s' (known: %s)", name, p + 1,
				   list);
	}
	h->layer = (int)layer;
	return 0;
}

void circ_hook_format(const circ_hook *h, char *out, size_t n)
{
	snprintf(out, n, "blocks.%d.%s", h->layer, circ_hook_point_name(h->kind));
}

int circ_hook_check(const circ_topology *t, const circ_hook *h, circ_error *e)
{
	char name[160];
	circ_hook_format(h, name, sizeof name);
	if (h->layer < 0 || h->layer >= t->d.n_layer)
		return circ_errorf(e, "hook '%s' is not in the model: layer %d of %d", name,
				   h->layer, t->d.n_layer);
	/* parallel blocks have no residual between the attention and the MLP;
	 * the MLP's input (and its norm) is the block's input */
	if (h->kind == CIRC_HOOK_RESID_MID && t->d.block != CIRC_BLOCK_SEQUENTIAL)
		return circ_errorf(e, "hook '%s' is not in the model: its blocks are parallel",
				   name);
	return 0;
}

int circ_hook_stage(const circ_topology *t, const circ_hook *h)
{
	switch (h->kind) {
	case CIRC_HOOK_RESID_PRE: return circ_topo_stage_attn(t, h->layer);
	case CIRC_HOOK_MLP_IN:
	case CIRC_HOOK_LN2_NORMALIZED: return circ_topo_stage_mlp(t, h->layer);
	case CIRC_HOOK_RESID_MID:
	case CIRC_HOOK_ATTN_OUT:
	case CIRC_HOOK_ATTN_Z:
		return t->d.block == CIRC_BLOCK_SEQUENTIAL ? circ_topo_stage_mlp(t, h->layer)
							   : circ_topo_stage_mlp(t, h->layer) + 1;
	case CIRC_HOOK_MLP_OUT:
	case CIRC_HOOK_RESID_POST:
	default: return circ_topo_stage_mlp(t, h->layer) + 1;
	}
}
