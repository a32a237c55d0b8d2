"""HF directories -> an mma_jax parameter checkpoint (Orbax) + model.json, and back.

A converted directory:
  params/        Orbax checkpoint of the parameter tree {vision?, connector?, llm?}
  model.json     {"model": config.model dict, "components": [...], "family": ...,
                  "template": chat template name, "source": [...]}
  tokenizer.json (and the other tokenizer files) copied from the source, when present
Trainers start from it with --config=configs/from_hf.py:DIR (or config.init_from=DIR).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mma_jax import attention
from mma_jax.convert import aki as aki_conv
from mma_jax.convert import llm as llm_conv
from mma_jax.convert import siglip
from mma_jax.convert import tensors as tio
from mma_jax.convert.rules import export_params, hf_shapes, import_params
from mma_jax.models import configs as mc
from mma_jax.models import connector as connector_lib
from mma_jax.models import llm as llm_lib
from mma_jax.models import vit

# Token ids an exported config.json carries over (transformers' defaults may lie outside vocab).
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json")
# Chat template per LLM family (mma_jax.data.templates; Llama: see template_of); AKI has its own.
TEMPLATES = {"llama": "llama3", "qwen2": "qwen2.5", "phi3": "phi3.5"}


@dataclasses.dataclass
class Converted:
  """model: config.model sections for the components present; params: flat {path: array}."""
  model: dict[str, Any]
  params: dict[str, np.ndarray]
  family: str = ""
  template: str = ""
  sources: list[str] = dataclasses.field(default_factory=list)
  special_ids: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def components(self) -> list[str]:
    return [c for c in ("vision", "connector", "llm") if c in self.model]


def _convert(directory, model: dict, table, tensors, ignored=()):
  """Check every tensor name and shape against what `model` needs, then convert."""
  expected = hf_shapes(table, component_shapes(model))
  given = {k: tuple(v.shape) for k, v in tensors.items()}
  tio.check_keys(expected, given, ignored, where=f"checkpoint {directory}")
  if ignored:
    logging.info("Ignored %d tensors a VLM does not use (e.g. %s).", len(ignored),
                 sorted(ignored)[0])
  return import_params(table, tensors)


def component_shapes(model: dict) -> dict[str, tuple]:
  """{param path: shape} of the components in `model` (config.model sections), not allocated.

  Each component is shaped on its own: a converted directory may hold only some of them (a
  whole VLM is mma_jax.models.build.abstract_params).
  """
  key, shapes = jax.random.key(0), {}

  def add(name, module, *args, **kwargs):
    tree = jax.eval_shape(lambda: flax.core.meta.unbox(module.init(key, *args, **kwargs))["params"])
    shapes.update({f"{name}/{'/'.join(k)}": v.shape
                   for k, v in flax.traverse_util.flatten_dict(tree).items()})

  if "vision" in model:
    vis = mc.build(mc.ViTConfig, model["vision"], "model.vision")
    add("vision", vit.ViT(vis), np.zeros((1, vis.image_size, vis.image_size, 3), np.float32))
  if "llm" in model:
    cfg = mc.build(mc.LLMConfig, model["llm"], "model.llm")
    ones = np.ones((1, 2), np.int32)
    ids = attention.token_ids(ones, 0 * ones, ones, 0 * ones, "causal")
    add("llm", llm_lib.LLM(cfg), ones, ones, *ids,  # embed + decoder: every parameter
        method=lambda m, t, *a: m(m.embed(t), *a))
  if "connector" in model:
    conn = mc.build(mc.ConnectorConfig, model["connector"], "model.connector")
    width = model["vision"]["hidden"]
    add("connector", connector_lib.make(conn, model["llm"]["hidden"], np.float32),
        np.zeros((1, 4, width), np.float32))
  return shapes


def import_llm(directory: str) -> Converted:
  c = tio.read_config(directory)
  cfg = llm_conv.config_from_hf(c)
  family = llm_conv.family_of(c)
  tensors = tio.read_tensors(directory)
  ignored = [k for k in tensors if k.endswith("rotary_emb.inv_freq")]
  table = llm_conv.rules(cfg, family)
  model = {"llm": _asdict(cfg)}
  params = _convert(directory, model, table, tensors, ignored)
  return Converted(model, params, family, template_of(directory, cfg, family), [directory],
                   {k: c.get(k) for k in SPECIAL_IDS})


def template_of(directory: str, cfg: mc.LLMConfig, family: str) -> str:
  """The chat template of an LLM directory. Llama 3.1 / 3.2 write a dated system block that 3.0
  does not: told apart by the jinja in tokenizer_config.json, else by 3.1's llama3 rope scaling."""
  if family != "llama":
    return TEMPLATES[family]
  path = os.path.join(directory, "tokenizer_config.json")
  if os.path.exists(path):
    with open(path) as f:
      jinja = str(json.load(f).get("chat_template") or "")  # a string, or a list of named ones
    if jinja:
      return "llama3.1" if "Cutting Knowledge Date" in jinja else "llama3"
  return "llama3.1" if cfg.rope.kind == "llama3" else "llama3"


def import_vision(directory: str) -> Converted:
  c = tio.read_config(directory)
  cfg = siglip.config_from_hf(c)
  tensors = tio.read_tensors(directory)
  prefix = siglip.hf_prefix_of(c, tensors)
  ignored = [k for k in tensors if siglip.IGNORED.fullmatch(k[len(prefix):])
             or not k.startswith(prefix)]
  model = {"vision": _asdict(cfg)}
  params = _convert(directory, model, siglip.rules(cfg, hf_prefix=prefix), tensors, ignored)
  return Converted(model, params, sources=[directory])


def import_aki(directory: str, vision_config: str, llm_config: str,
               perceiver_heads: int = 8) -> Converted:
  """vision_config / llm_config: config.json files of the SigLIP and Phi-3.5 models it wraps."""
  aki_cfg = tio.read_config(directory)
  tensors = tio.read_tensors(directory)
  with open(vision_config) as f:
    vis = json.load(f)
  with open(llm_config) as f:
    llm = json.load(f)
  model, table, ignored = aki_conv.configs(aki_cfg, tensors, vis, llm, perceiver_heads)
  _check_aki_tokenizer(directory, int(aki_cfg["initial_tokenizer_len"]))
  params = _convert(directory, model, table, tensors, ignored)
  return Converted(model, params, "phi3", "aki", [directory])


def _check_aki_tokenizer(directory: str, n0: int) -> None:
  """AKI's additional rows serve ids n0, n0 + 1 (n0 = initial_tokenizer_len): the tokenizer
  must give the template's added tokens (<image>, <|endofchunk|>) those ids, or every image
  would read the wrong embedding."""
  from mma_jax.data import templates
  added = templates.get("aki").added_tokens()
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.exists(path):
    logging.warning("%s has no tokenizer.json; the ids of %s are not checked against "
                    "initial_tokenizer_len=%d.", directory, added, n0)
    return
  import tokenizers
  tok = tokenizers.Tokenizer.from_file(path)
  got = {t: tok.token_to_id(t) for t in added}
  if sorted(got.values(), key=lambda i: -1 if i is None else i) != [n0, n0 + 1]:
    raise ValueError(f"{path}: token ids {got}, but AKI's additional embedding rows serve ids "
                     f"{n0} and {n0 + 1} (initial_tokenizer_len={n0}); this tokenizer is not "
                     "the checkpoint's own.")


def combine(vision: Converted, llm: Converted, connector: dict, seed: int = 0) -> Converted:
  """A fresh VLM: a converted vision tower + a converted LLM + a newly initialised connector."""
  conn_cfg = mc.build(mc.ConnectorConfig, connector, "model.connector")
  vis_cfg = mc.build(mc.ViTConfig, vision.model["vision"], "model.vision")
  llm_hidden = llm.model["llm"]["hidden"]
  module = connector_lib.make(conn_cfg, llm_hidden, np.float32)
  media = np.zeros((1, vis_cfg.num_patches, vis_cfg.hidden), np.float32)
  fresh = flax.core.meta.unbox(module.init(jax.random.key(seed), media)["params"])
  conn = {f"connector/{'/'.join(k)}": np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(fresh).items()}
  model = {"vision": vision.model["vision"], "connector": _asdict(conn_cfg),
           "llm": llm.model["llm"]}
  return Converted(model, {**vision.params, **conn, **llm.params}, llm.family, llm.template,
                   vision.sources + llm.sources, llm.special_ids)


def add_image_tokens(conv: Converted, tokenizer_dir: str | None, out: str) -> list[str]:
  """Give the LLM the tokens its chat template needs (<image>, ...): added to tokenizer.json as
  special tokens, their embedding / output rows set to the mean of the rows of the tokenizer's
  own tokens. The new ids may fall on spare rows the checkpoint already has (Phi-3.5 and
  Qwen2.5 pad their tables past the tokenizer) or past the table, which then grows.
  Writes the tokenizer to out/tokenizer.json; returns the tokens added."""
  import tokenizers

  from mma_jax.data import templates, vocab
  path = os.path.join(tokenizer_dir or "", "tokenizer.json")
  if not tokenizer_dir or not os.path.exists(path) or "llm" not in conv.model:
    return []
  tok = tokenizers.Tokenizer.from_file(path)
  rows = conv.model["llm"]["vocab_size"]
  trained = tok.get_vocab_size()
  if trained > rows:
    raise ValueError(f"{path} has {trained} tokens but the model only {rows} embedding rows: "
                     "not this model's tokenizer.")
  added = vocab.add_image_tokens(tok, templates.get(conv.template))
  ids = [tok.token_to_id(t) for t in added]
  new_size = max(tok.get_vocab_size(), rows)
  for key, axis in (("llm/embedder/embedding", 0), ("llm/lm_head/kernel", 1),
                    ("llm/lm_head/bias", 0)):
    if key in conv.params and ids:
      a = np.moveaxis(conv.params[key], axis, 0)
      grown = np.concatenate([a, np.zeros((new_size - rows,) + a.shape[1:], a.dtype)])
      grown[ids] = a[:trained].mean(axis=0)  # spare rows past the tokenizer are untrained
      conv.params[key] = np.moveaxis(grown, 0, axis)
  conv.model["llm"]["vocab_size"] = new_size
  os.makedirs(out, exist_ok=True)
  tok.save(os.path.join(out, "tokenizer.json"))
  if added:
    logging.info("Added %s to the tokenizer (ids %s); %d new embedding rows.", added, ids,
                 new_size - rows)
  return added


def _asdict(cfg) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def nested(flat: dict[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def save(conv: Converted, out: str, tokenizer_from: str | None = None) -> None:
  """Write params/ (Orbax) and model.json; copy tokenizer files from tokenizer_from."""
  out = os.path.abspath(out)
  if os.path.exists(os.path.join(out, "params")):
    raise FileExistsError(f"{out}/params exists; choose a new --out directory.")
  os.makedirs(out, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(out, "params"), nested(conv.params))
  meta = {"model": conv.model, "components": conv.components, "family": conv.family,
          "template": conv.template, "sources": conv.sources, "special_ids": conv.special_ids}
  with open(os.path.join(out, "model.json"), "w") as f:
    json.dump(meta, f, indent=1)
  if tokenizer_from:
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(out, name)):  # already written (image tokens added)
        continue
      if os.path.exists(os.path.join(tokenizer_from, name)):
        shutil.copy(os.path.join(tokenizer_from, name), os.path.join(out, name))


def load(directory: str) -> tuple[dict, dict]:
  """(model.json contents, nested numpy params) of a converted directory."""
  path = os.path.join(directory, "model.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not a directory written by mma_jax.convert.")
  with open(path) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(os.path.abspath(directory), "params"))
  return meta, jax.tree_util.tree_map(np.asarray, params)


def export_llm(model: dict, params: dict, family: str, out: str,
               dtype=np.float32, extra_config: dict | None = None) -> None:
  """The LLM of a parameter tree as an HF {family}ForCausalLM directory."""
  cfg = mc.build(mc.LLMConfig, model["llm"], "model.llm")
  table = llm_conv.rules(cfg, family)
  tensors = export_params(table, flat({"llm": params["llm"]}), dtype)
  extra = {k: None for k in SPECIAL_IDS}
  extra.update(extra_config or {})
  tio.write_tensors(out, tensors, _with_dtype(llm_conv.config_to_hf(cfg, family, extra), dtype))


def export_vision(model: dict, params: dict, out: str, dtype=np.float32) -> None:
  """The vision tower as an HF SiglipVisionModel directory."""
  cfg = mc.build(mc.ViTConfig, model["vision"], "model.vision")
  tensors = export_params(siglip.rules(cfg, hf_prefix=siglip.EXPORT_PREFIX),
                          flat({"vision": params["vision"]}), dtype)
  tio.write_tensors(out, tensors, _with_dtype(siglip.config_to_hf(cfg), dtype))


def _with_dtype(config: dict, dtype) -> dict:
  """config.json names the dtype the tensors are stored in ('float32' or 'bfloat16')."""
  return {**config, "torch_dtype": np.dtype(dtype).name}
