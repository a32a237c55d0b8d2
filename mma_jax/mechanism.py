"""Pictures of the mechanism: what image tokens do with the question that follows them.

For test images each asked two different questions (image first, I&T):
  (a) the attention of the image tokens over the question tokens, per layer: under `causal` it
      is zero (the question comes later), under `mma` the image rows read the question;
  (b) how far the image tokens' hidden states move between the two questions, per layer, as a
      cosine distance: exactly 0 under `causal` (nothing before them changed), > 0 under `mma`.

The decoder is run layer by layer from the trained parameters (the same DecoderLayer module),
so the probabilities come from the layer's own q and k with the dense reference mask
(mma_jax.masks.dense_mask), whatever attention implementation the model trains with.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mma_jax import attention as attn_lib
from mma_jax import masks, tokens
from mma_jax.data import chat
from mma_jax.data.shapes import generate
from mma_jax.evaluate import prompts, runner
from mma_jax.models import llm, rope, vlm

# One image, one question: the types whose questions can be swapped between records (easy and
# hard benchmark; every hard type is one image, one question).
SWAPPABLE = ("count", "exist", "attribute", "spatial") + generate.HARD_QUESTION_TYPES


class Trace(NamedTuple):
  """hidden: f32[N + 1, B, L, E] residual stream (0 = input embeddings, n = after layer n);
  attention: f32[N, B, L, L] probabilities averaged over heads (rows: queries)."""
  hidden: jax.Array
  attention: jax.Array


def _embed(module: vlm.VLM, batch):
  """The LLM's input: text embeddings with the image tokens scattered in (as VLM.__call__)."""
  x = module.llm.embed(batch["tokens"])
  return vlm.scatter_images(x, batch["modality"], module.encode_images(batch["images"]))


def _probs(q, k, mask):
  """q: f[B, L, H, D]; k: f[B, L, K, D]; mask: bool[B, L, L] -> f32[B, L, L] head mean."""
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # kv head h // (H / K), as the layer does
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None], logits * q.shape[-1] ** -0.5, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1) * jnp.any(mask, axis=-1)[:, None, :, None]
  return jnp.mean(probs, axis=1)


def trace(model: vlm.VLM, params, batch: Mapping[str, jax.Array], kind: str) -> Trace:
  """Hidden states and attention probabilities of every decoder layer (no KV cache).

  Args: model; params (the 'params' collection); batch: a prompt batch (tokens, segment_ids,
    modality, role, turn, positions i32[B, L], images f32[B, N, H, W, 3]); kind: mask kind.
  """
  cfg = model.cfg.llm
  x = model.apply({"params": params}, batch, method=_embed)
  ids = [batch[k] for k in tokens.ID_KEYS]
  q_ids, k_ids = attn_lib.token_ids(*ids, kind)
  mask = masks.dense_mask(*ids, kind)
  sin_cos = rope.sin_cos(batch["positions"], cfg.rope, cfg.head_dim)
  layer = llm.DecoderLayer(cfg)
  prepared = attn_lib.prepare(q_ids, k_ids, cfg.head_dim, cfg.attention)
  hidden, attention = [x], []
  for n in range(cfg.layers):
    layer_params = jax.tree_util.tree_map(lambda p: p[n], params["llm"]["layers"])
    (x, _), state = layer.apply({"params": layer_params}, x, None, sin_cos, q_ids, k_ids,
                                prepared, 0,
                                capture_intermediates=lambda m, _: m.name in ("q", "k"))
    seen = state["intermediates"]
    q, k = (rope.apply(seen[name]["__call__"][0], *sin_cos) for name in ("q", "k"))
    attention.append(_probs(q, k, mask))
    hidden.append(x)
  return Trace(jnp.stack(hidden).astype(jnp.float32), jnp.stack(attention))


def cosine_distance(a, b):
  """1 - cos(a, b) over the last axis, as |a/|a| - b/|b||^2 / 2: exactly 0 for equal vectors."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)
  return 0.5 * np.sum((unit(a) - unit(b)) ** 2, axis=-1)


def _image_positions(batch, row):
  return np.nonzero(np.asarray(batch["modality"][row]) != 0)[0]


def _question_positions(batch, row):
  """Prompt text after the row's last image token (the question and the assistant header)."""
  b = {k: np.asarray(batch[k][row]) for k in ("modality", "role", "segment_ids")}
  after = np.arange(len(b["role"])) > _image_positions(batch, row).max()
  return np.nonzero(after & (b["role"] == 1) & (b["modality"] == 0) & (b["segment_ids"] != 0))[0]


def image_drift(hidden, batch) -> np.ndarray:
  """Mean cosine distance of the image tokens' hidden states between rows 2p and 2p + 1.

  Args: hidden f[N + 1, 2P, L, E]; batch with modality i32[2P, L].
  Returns: f64[N + 1, P].
  """
  hidden = np.asarray(hidden, np.float64)
  out = []
  for p in range(hidden.shape[1] // 2):
    pos = _image_positions(batch, 2 * p)
    if not np.array_equal(pos, _image_positions(batch, 2 * p + 1)):
      raise ValueError(f"Pair {p}: the two prompts put the image at different positions; "
                       "compare prompts with the image first (I&T).")
    out.append(cosine_distance(hidden[:, 2 * p, pos], hidden[:, 2 * p + 1, pos]).mean(-1))
  return np.stack(out, axis=1)


def question_attention(attention, batch, row) -> np.ndarray:
  """f[N, L, L] probabilities of one row -> f[N, images, question tokens]."""
  a = np.asarray(attention)[:, row]
  return a[:, _image_positions(batch, row)][:, :, _question_positions(batch, row)]


def question_pairs(records, count: int) -> list[tuple[dict, dict]]:
  """`count` (record, the same image asked another type's question) pairs from test records."""
  single = [r for r in records if r["question_type"] in SWAPPABLE]
  pairs = []
  for r in single:
    other = next((o for o in single if o["question_type"] != r["question_type"]), None)
    if other is None or len(pairs) == count:
      break
    pairs.append((r, dict(r, conversations=other["conversations"],
                          question_type=other["question_type"])))
  if len(pairs) < count:
    raise ValueError(f"Found {len(pairs)} of {count} image/question pairs; the test split needs "
                     f"records of two of the types {SWAPPABLE} (raise config.data.test_size).")
  return pairs


def prompt_batch(pairs, tokenizer, tokens_per_image: int, image_size: int) -> dict:
  """Rows 2p, 2p + 1: the two questions of pair p as I&T prompts, padded to one length."""
  encode = chat.prompt_encoder(tokenizer, tokens_per_image, "I&T", image_size)
  examples = [(encode(r), None, None) for pair in pairs for r in pair]
  length = max(len(ex["tokens"]) for ex, _, _ in examples)
  prompt, _, _ = next(prompts.prompt_batches(
      examples, batch_size=len(examples), prompt_length=length, max_images=1,
      image_size=image_size))
  return prompt


def figure(**kwargs):
  """A matplotlib Figure drawn by Agg: no pyplot state, no display, the backend left alone."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def _figure_array(fig) -> np.ndarray:
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def plot_attention(per_run: Mapping[str, np.ndarray], words: list[str], title: str, path: str):
  """per_run: label -> f[N, images, question tokens] -> PNG at path; returns the RGB image."""
  layers = next(iter(per_run.values())).shape[0]
  vmax = max(float(a.max()) for a in per_run.values()) or 1.0
  fig = figure(figsize=(2.0 + 0.3 * len(words) * layers, 1.2 + 2.4 * len(per_run)),
               layout="constrained")
  axes = fig.subplots(len(per_run), layers, squeeze=False)
  for r, (label, att) in enumerate(per_run.items()):
    for n in range(layers):
      ax = axes[r, n]
      im = ax.imshow(att[n], aspect="auto", vmin=0.0, vmax=vmax, cmap="viridis")
      ax.set_title(f"{label}: layer {n + 1}", fontsize=8)
      ax.set_xticks(range(len(words)), words, rotation=90, fontsize=6)
      ax.set_yticks([])
    axes[r, 0].set_ylabel("image tokens", fontsize=8)
  fig.colorbar(im, ax=axes, shrink=0.8, label="attention (head mean)")
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def plot_drift(per_run: Mapping[str, np.ndarray], path: str):
  """per_run: label -> f[N + 1, P] cosine distances -> PNG at path; returns the RGB image."""
  fig = figure(figsize=(5.5, 3.5))
  ax = fig.subplots()
  for n, (label, d) in enumerate(per_run.items()):
    color = f"C{n}"
    ax.plot(range(d.shape[0]), d, color=color, alpha=0.3, lw=1)
    ax.plot(range(d.shape[0]), d.mean(axis=1), color=color, lw=2.5, marker="o", label=label)
  ax.set_xticks(range(d.shape[0]))
  ax.set_xlabel("layer (0 = input embeddings)")
  ax.set_ylabel("cosine distance")
  ax.set_title("image tokens' hidden states: question A vs question B", fontsize=9)
  ax.legend()
  fig.tight_layout()
  return _save(fig, path)


def _save(fig, path):
  fig.savefig(path, dpi=110)
  return _figure_array(fig)


def traces(runs: Mapping[str, tuple], pairs, tokenizer) -> tuple[dict, dict[str, Trace]]:
  """(prompt batch of the pairs, label -> Trace) for runs: label -> (VLM, params, mask kind)."""
  model = next(iter(runs.values()))[0]
  batch = prompt_batch(pairs, tokenizer, model.cfg.tokens_per_image,
                       model.cfg.vision.image_size)
  return batch, {label: jax.jit(lambda p, b, m=m, k=k: trace(m, p, b, k))(params, batch)
                 for label, (m, params, k) in runs.items()}


def pictures(runs: Mapping[str, tuple], pairs, tokenizer, out_dir: str, writer=None,
             traced: tuple[dict, Mapping[str, Trace]] | None = None) -> dict:
  """Both pictures for `runs` (label -> (VLM, params, mask kind)) on image/question pairs.

  Writes under out_dir: drift.png, attention_<p>.png per pair, mechanism.json (the distances);
  and the images to TensorBoard through `writer` (a clu MetricWriter) when given.
  traced: what traces(runs, pairs, tokenizer) returned, if already computed.
  Returns {"drift": {label: [[per pair] per layer]}, "files": [paths], "pairs": [...]}.
  """
  os.makedirs(out_dir, exist_ok=True)
  batch, by_run = traced or traces(runs, pairs, tokenizer)
  drift = {label: image_drift(t.hidden, batch) for label, t in by_run.items()}
  images = {"mechanism/drift": plot_drift(drift, os.path.join(out_dir, "drift.png"))}
  files = [os.path.join(out_dir, "drift.png")]
  for p, (a, b) in enumerate(pairs):
    question = [tokenizer.tok.id_to_token(int(t)) for t in  # special tokens by name too
                np.asarray(batch["tokens"][2 * p])[_question_positions(batch, 2 * p)]]
    path = os.path.join(out_dir, f"attention_{p}.png")
    title = (f"{a['id']}: image tokens -> question tokens\n"
             f"(other question: {b['conversations'][0]['value'].split(chr(10))[-1]!r})")
    images[f"mechanism/attention_{p}"] = plot_attention(
        {label: question_attention(t.attention, batch, 2 * p) for label, t in by_run.items()},
        question, title, path)
    files.append(path)
  result = {"drift": {label: d.tolist() for label, d in drift.items()}, "files": files,
            "pairs": [[a["id"], a["question_type"], b["question_type"]] for a, b in pairs]}
  with open(os.path.join(out_dir, "mechanism.json"), "w") as f:
    json.dump(result, f, indent=1)
  if writer is not None:
    for name, image in images.items():
      writer.write_images(0, {name: image[None]})
    writer.flush()
  return result


def from_workdirs(runs: Mapping[str, tuple], out_dir: str, examples: int = 3) -> dict:
  """pictures() for finished runs: label -> (config, workdir); each run's own mask kind, the
  first run's test split. TensorBoard events go to out_dir."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  loaded, pairs, tokenizer = {}, None, None
  for label, (config, workdir) in runs.items():
    task, model, params, _ = runner.load(config, workdir)
    if pairs is None:
      pairs, tokenizer = question_pairs(list(task.source("test")), examples), task.tokenizer
    loaded[label] = (model, params, config.mask)
  writer = metric_writers.create_default_writer(out_dir, just_logging=jax.process_index() > 0)
  return pictures(loaded, pairs, tokenizer, out_dir, writer)
