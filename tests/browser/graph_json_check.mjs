// Checks a graph JSON file (circ-trace --graph-json) against what the
// viewers' code reads from it, field by field. Written from reading (not
// copying) these sources:
//  [CT]  safety-research/circuit-tracer circuit_tracer/frontend/graph_models.py
//        (Metadata, QParams, Node.feature_node / error_node / token_node /
//        logit_node, Link) and circuit_tracer/utils/create_graph_files.py
//        (which nodes and links a file holds, their order) and
//        circuit_tracer/frontend/utils.py (process_token).
//  [NPS] hijohnnylin/neuronpedia apps/webapp/app/api/graph/graph-schema.json
//        (the upload validator's required fields and types).
//  [NPT] hijohnnylin/neuronpedia apps/webapp/app/[modelId]/graph/graph-types.ts
//        (CLTGraph, CLTGraphNode, CLTGraphLink).
//  [NPU] hijohnnylin/neuronpedia apps/webapp/app/[modelId]/graph/utils.ts
//        (formatCLTGraphData, the port of the attribution-graphs frontend's
//        util-cg.js formatData; getLayerFromCantorValue,
//        getIndexFromCantorValue; reconstructAdjacencyMatrix and
//        computeGraphScoresFromGraphData; filterNodes).
// usage: node tests/browser/graph_json_check.mjs FILE
// Prints each problem found and exits 1, or exits 0 when there is none.
import { readFileSync } from 'node:fs';

const file = process.argv[2];
const bad = [];
const fail = (msg) => bad.push(msg);
let g;
try {
  g = JSON.parse(readFileSync(file, 'utf8'));
} catch (err) {
  console.error(`${file}: not JSON: ${err.message}`);
  process.exit(1);
}
const isStr = (v) => typeof v === 'string';
const isInt = (v) => Number.isInteger(v);
const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
const isArr = Array.isArray;

// [NPS] required top-level keys; [CT] Model(metadata, qParams, nodes, links)
for (const k of ['metadata', 'qParams', 'nodes', 'links'])
  if (!(k in g)) fail(`missing top-level '${k}'`);
const m = g.metadata || {};
const q = g.qParams || {};
const nodes = isArr(g.nodes) ? g.nodes : (fail('nodes is not an array'), []);
const links = isArr(g.links) ? g.links : (fail('links is not an array'), []);

// [CT] Metadata: slug, scan (str), transcoder_list (list[str]), prompt_tokens
// (list[str]), prompt (str), node_threshold (float|None), schema_version
// (int|None); [NPS] requires slug, scan, prompt_tokens, prompt.
if (!isStr(m.slug) || !m.slug) fail('metadata.slug: a non-empty string');
if (!isStr(m.scan) || !m.scan) fail('metadata.scan: a non-empty string (Neuronpedia: the model id)');
if (!isArr(m.transcoder_list) || !m.transcoder_list.every(isStr))
  fail('metadata.transcoder_list: a list of strings');
if (!isArr(m.prompt_tokens) || !m.prompt_tokens.length || !m.prompt_tokens.every(isStr))
  fail('metadata.prompt_tokens: a non-empty list of strings');
if (!isStr(m.prompt)) fail('metadata.prompt: a string');
// [CT] process_token: tokens show newline, tab, carriage return as symbols
if (isArr(m.prompt_tokens) && m.prompt_tokens.some((t) => isStr(t) && /[\n\t\r]/.test(t)))
  fail('metadata.prompt_tokens: a raw newline, tab or carriage return (process_token maps them)');
// [NPU] filterNodes: node_threshold > 0 turns on the influence filter
if (m.node_threshold !== undefined && m.node_threshold !== null &&
    !(isNum(m.node_threshold) && m.node_threshold >= 0 && m.node_threshold <= 1))
  fail('metadata.node_threshold: a number in [0, 1]');
// [NPU] schema_version 1: a feature node's feature is Cantor(layer, index)
if (m.schema_version !== 1) fail('metadata.schema_version: 1 (Cantor-paired feature ids)');

// [CT] QParams: pinnedIds list[str], supernodes list[list[str]], linkType,
// clickedId, sg_pos str
if (!isArr(q.pinnedIds) || !q.pinnedIds.every(isStr)) fail('qParams.pinnedIds: a list of strings');
if (!isArr(q.supernodes) || !q.supernodes.every((s) => isArr(s) && s.every(isStr)))
  fail('qParams.supernodes: a list of lists of strings');
for (const k of ['linkType', 'clickedId', 'sg_pos'])
  if (!isStr(q[k])) fail(`qParams.${k}: a string`);

const cantor = (x, y) => ((x + y) * (x + y + 1)) / 2 + y;
// [NPU] getLayerFromCantorValue / getIndexFromCantorValue
const uncantor = (z) => {
  const w = Math.floor((Math.sqrt(8 * z + 1) - 1) / 2);
  const t = (w * w + w) / 2;
  return [w - (z - t), z - t];
};
const T = isArr(m.prompt_tokens) ? m.prompt_tokens.length : 0;
const ids = new Set();
const types = ['cross layer transcoder', 'mlp reconstruction error', 'embedding', 'logit'];
let nLayers = -1;
let maxLayer;
let targets = 0;
let topProb = -1;
let targetProb = -1;
nodes.forEach((n, i) => {
  const at = `nodes[${i}] (${n && n.node_id})`;
  // [CT] Node fields and types; [NPS] requires node_id, feature, layer,
  // ctx_idx, feature_type, jsNodeId, clerp
  if (!isStr(n.node_id)) return fail(`${at}: node_id: a string`);
  if (ids.has(n.node_id)) fail(`${at}: node_id appears twice (the viewers key nodes by it)`);
  ids.add(n.node_id);
  if (!isInt(n.feature)) fail(`${at}: feature: an integer`);
  if (!isStr(n.layer)) fail(`${at}: layer: a string ([CT] layer: str)`);
  if (!isInt(n.ctx_idx) || n.ctx_idx < 0 || n.ctx_idx >= T)
    fail(`${at}: ctx_idx: an index into metadata.prompt_tokens ([NPU] reads prompt_tokens[ctx_idx])`);
  if (!types.includes(n.feature_type)) fail(`${at}: feature_type '${n.feature_type}' is not one of ${types}`);
  if (!isNum(n.token_prob) || n.token_prob < 0 || n.token_prob > 1)
    fail(`${at}: token_prob: a number in [0, 1] ([NPU] logit weights of the scores)`);
  if (typeof n.is_target_logit !== 'boolean') fail(`${at}: is_target_logit: a boolean`);
  if (n.run_idx !== 0 || n.reverse_ctx_idx !== 0) fail(`${at}: run_idx and reverse_ctx_idx: 0`);
  if (!isStr(n.jsNodeId)) fail(`${at}: jsNodeId: a string`);
  if (!isStr(n.clerp)) fail(`${at}: clerp: a string`);
  if (!(n.influence === null || (isNum(n.influence) && n.influence >= 0 && n.influence <= 1)))
    fail(`${at}: influence: null or a number in [0, 1] ([NPU] shouldShowNodeForInfluenceThreshold)`);
  if (!(n.activation === null || isNum(n.activation))) fail(`${at}: activation: null or a number`);
  const L = Number(n.layer);
  // [NPU] maxLayer: the largest +layer of the nodes that are not logits
  if (n.feature_type !== 'logit' && Number.isFinite(L)) maxLayer = maxLayer === undefined ? L : Math.max(maxLayer, L);
  const parts = n.node_id.split('_');
  switch (n.feature_type) {
    case 'cross layer transcoder': { // [CT] Node.feature_node
      const [l, f, p] = parts.map(Number);
      if (parts.length !== 3 || String(l) !== n.layer || p !== n.ctx_idx)
        fail(`${at}: node_id is not {layer}_{feature index}_{ctx_idx}`);
      if (n.feature !== cantor(l, f)) fail(`${at}: feature is not Cantor(layer, index) = ${cantor(l, f)}`);
      const [ul, uf] = uncantor(n.feature);
      if (ul !== l || uf !== f) fail(`${at}: the viewer reads layer ${ul}, index ${uf} from feature`);
      if (n.jsNodeId !== `${l}_${f}-0`) fail(`${at}: jsNodeId is not {layer}_{index}-0`);
      if (!isNum(n.activation)) fail(`${at}: a feature's activation: a number`);
      if (!isNum(n.influence)) fail(`${at}: a feature's influence: a number`);
      break;
    }
    case 'mlp reconstruction error': // [CT] Node.error_node; [NPU] isError from 'error' in the type
      if (n.node_id !== `${n.layer}_-1_${n.ctx_idx}` || n.feature !== -1)
        fail(`${at}: an error node is {layer}_-1_{ctx_idx}, feature -1`);
      if (n.jsNodeId !== `${n.layer}_-1-${n.ctx_idx}`) fail(`${at}: jsNodeId is not {layer}_-1-{ctx_idx}`);
      if (n.activation !== null) fail(`${at}: an error node's activation: null`);
      break;
    case 'embedding': // [CT] Node.token_node
      if (n.layer !== 'E' || parts.length !== 3 || parts[0] !== 'E' || Number(parts[2]) !== n.ctx_idx)
        fail(`${at}: an embedding is E_{token id}_{ctx_idx} with layer "E"`);
      if (n.feature !== n.ctx_idx) fail(`${at}: an embedding's feature is its ctx_idx`);
      if (n.jsNodeId !== `E_${parts[1]}-${n.ctx_idx}`) fail(`${at}: jsNodeId is not E_{token id}-{ctx_idx}`);
      break;
    case 'logit': { // [CT] Node.logit_node
      if (parts.length !== 3 || parts[0] !== n.layer || Number(parts[1]) !== n.feature ||
          Number(parts[2]) !== n.ctx_idx)
        fail(`${at}: a logit is {layers + 1}_{token id}_{ctx_idx}`);
      if (nLayers < 0) nLayers = L - 1;
      else if (L - 1 !== nLayers) fail(`${at}: logits on different layers`);
      if (n.ctx_idx !== T - 1) fail(`${at}: a logit sits at the last position (${T - 1})`);
      if (n.jsNodeId !== `L_${n.feature}-${n.ctx_idx}`) fail(`${at}: jsNodeId is not L_{token id}-{ctx_idx}`);
      // [NPU] logitPct = +clerp.split('(p=')[1].split(')')[0]
      const pct = n.clerp.includes('(p=') ? +n.clerp.split('(p=')[1].split(')')[0] : NaN;
      if (!Number.isFinite(pct) || Math.abs(pct - n.token_prob) > 5e-4)
        fail(`${at}: clerp '${n.clerp}' does not give token_prob as (p=...)`);
      if (!/^Output ".*" \(p=[0-9.]+\)$/s.test(n.clerp)) fail(`${at}: clerp is not Output "<token>" (p=<prob>)`);
      if (n.influence !== null || n.activation !== null) fail(`${at}: a logit's influence and activation: null`);
      if (n.is_target_logit) { targets++; targetProb = n.token_prob; }
      topProb = Math.max(topProb, n.token_prob);
      break;
    }
  }
  if (n.feature_type !== 'logit' && n.is_target_logit) fail(`${at}: only a logit is the target logit`);
});
// [NPU] formatCLTGraphData throws 'No layer found' unless maxLayer is truthy
if (!maxLayer) fail(`the largest layer of the nodes that are not logits is ${maxLayer}: Neuronpedia's formatCLTGraphData throws 'No layer found'`);
// [CT] create_nodes: the first (most probable) logit is the target
if (targets !== 1) fail(`${targets} target logits (one: the most probable)`);
else if (targetProb !== topProb) fail('the target logit is not the most probable one');
// [CT] create_used_nodes_and_edges: embeddings and logits always, other
// nodes only with a link
for (let p = 0; p < T; p++)
  if (!nodes.some((n) => n.feature_type === 'embedding' && n.ctx_idx === p)) fail(`no embedding node at position ${p}`);
const linked = new Set();
links.forEach((l, i) => {
  const at = `links[${i}]`;
  // [CT] Link: source, target str, weight float; [NPU] links whose ends are
  // not nodes are dropped
  if (!isStr(l.source) || !ids.has(l.source)) fail(`${at}: source '${l.source}' is not a node_id`);
  if (!isStr(l.target) || !ids.has(l.target)) fail(`${at}: target '${l.target}' is not a node_id`);
  if (!isNum(l.weight)) fail(`${at}: weight: a finite number`);
  linked.add(l.source);
  linked.add(l.target);
  const s = nodes.find((n) => n.node_id === l.source);
  const t = nodes.find((n) => n.node_id === l.target);
  if (s && s.feature_type === 'logit') fail(`${at}: a link out of a logit`);
  if (t && t.feature_type === 'embedding') fail(`${at}: a link into an embedding`);
  if (s && t && s.ctx_idx > t.ctx_idx) fail(`${at}: a link back in position (${s.ctx_idx} -> ${t.ctx_idx})`);
});
const seen = new Set();
links.forEach((l, i) => {
  const k = `${l.source} ${l.target}`;
  if (seen.has(k)) fail(`links[${i}]: ${l.source} -> ${l.target} twice`);
  seen.add(k);
});
nodes.forEach((n) => {
  if (n.feature_type !== 'embedding' && n.feature_type !== 'logit' && !linked.has(n.node_id))
    fail(`${n.node_id}: a ${n.feature_type} node without a link (create_graph_files leaves those out)`);
});

if (bad.length) {
  for (const b of bad) console.error(`${file}: ${b}`);
  process.exit(1);
}
console.log(`${file}: ${nodes.length} nodes, ${links.length} links: as the viewers read them`);
