"""A tiny checkpoint in the AKI layout, built from its key list, converts and runs.

Each part is checked against an independent computation: the Perceiver against a torch
re-implementation of AKI's resampler, the language model against transformers' Phi-3 holding
the decoupled rows, the vision tower against transformers' SigLIP.
"""
import json

import numpy as np
import pytest
torch = pytest.importorskip(  # absent on the Python 3.12 CI leg
    "torch", reason="PyTorch parity: torch is installed on the Python 3.11 CI leg only")
import torch.nn.functional as F
import transformers

from mma_jax.convert import __main__ as cli
from mma_jax.convert import hf, parity, tensors
from mma_jax.models import configs, connector, vlm
from tests.convert import hf_models
from tests.layouts import model_batch

ROWS, N0, EXTRA = 96, 90, 2       # Phi-3 rows, initial_tokenizer_len, <image> + <|endofchunk|>
DEPTH, HEADS, DIM_HEAD, LATENTS, W, E = 2, 2, 8, 3, 32, 32


def _perceiver_tensors(g):
  t = {"latents": g(LATENTS, W)}
  for l in range(DEPTH):
    a, f = f"layers.{l}.0.", f"layers.{l}.1."
    for norm in (a + "norm_media", a + "norm_latents", f + "0"):
      t[norm + ".weight"], t[norm + ".bias"] = 1 + 0.1 * g(W), 0.1 * g(W)
    t[a + "to_q.weight"] = g(HEADS * DIM_HEAD, W)
    t[a + "to_kv.weight"] = g(2 * HEADS * DIM_HEAD, W)
    t[a + "to_out.weight"] = g(W, HEADS * DIM_HEAD)
    t[f + "1.weight"], t[f + "3.weight"] = g(4 * W, W), g(W, 4 * W)
  t["norm.weight"], t["norm.bias"] = 1 + 0.1 * g(W), 0.1 * g(W)
  t["projection.weight"], t["projection.bias"] = g(E, W), g(E)
  return t


def _perceiver_reference(t, media):
  """AKI's resampler, written from its description: latents attend over [media; latents]."""
  t = {k: torch.from_numpy(v) for k, v in t.items()}
  ln = lambda x, p: F.layer_norm(x, (W,), t[p + ".weight"], t[p + ".bias"], 1e-5)
  lat = t["latents"][None].expand(media.shape[0], -1, -1)
  heads = lambda x: x.reshape(x.shape[0], x.shape[1], HEADS, DIM_HEAD).transpose(1, 2)
  for l in range(DEPTH):
    a, f = f"layers.{l}.0.", f"layers.{l}.1."
    x, y = ln(media, a + "norm_media"), ln(lat, a + "norm_latents")
    q = heads(y @ t[a + "to_q.weight"].T)
    k, v = (heads(z) for z in (torch.cat([x, y], 1) @ t[a + "to_kv.weight"].T).chunk(2, -1))
    attn = torch.softmax(q @ k.transpose(-1, -2) * DIM_HEAD ** -0.5, -1)
    out = (attn @ v).transpose(1, 2).reshape(lat.shape[0], LATENTS, -1)
    lat = out @ t[a + "to_out.weight"].T + lat
    h = F.gelu(ln(lat, f + "0") @ t[f + "1.weight"].T) @ t[f + "3.weight"].T
    lat = h + lat
  return (ln(lat, "norm") @ t["projection.weight"].T + t["projection.bias"]).numpy()


def _aki_checkpoint(root):
  """Writes an AKI-layout checkpoint + the two config.json files it needs; returns parts."""
  rng = np.random.default_rng(0)
  g = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
  vit = hf_models.save_siglip(root / "siglip")           # vision_use_head=True: head ignored
  phi = hf_models.save_llm("phi3_longrope", root / "phi")
  t = {f"vision_encoder.{k}": v.numpy() for k, v in vit.state_dict().items()}
  t.update({f"lang_model.{k}": v.numpy() for k, v in phi.state_dict().items()})
  t["lang_model.model.embed_tokens.additional_embedding.weight"] = g(EXTRA, E)
  t["lang_model.lm_head.additional_fc.weight"] = g(EXTRA, E)
  t["lang_model.lm_head.additional_fc.bias"] = g(EXTRA)
  t["lang_model.lm_head.bias"] = g(ROWS)
  perceiver = _perceiver_tensors(g)
  t.update({f"vision_tokenizer.{k}": v for k, v in perceiver.items()})
  tensors.write_tensors(str(root / "aki"), t, {"initial_tokenizer_len": N0,
                                               "num_vision_tokens": LATENTS})
  return t, perceiver


def test_aki_layout_converts_and_each_part_matches(tmp_path):
  t, perceiver = _aki_checkpoint(tmp_path)
  cli.main(["--aki", str(tmp_path / "aki"), "--vision_config", str(tmp_path / "siglip/config.json"),
            "--llm_config", str(tmp_path / "phi/config.json"), "--perceiver_heads", str(HEADS),
            "--out", str(tmp_path / "out")])
  meta, params = hf.load(str(tmp_path / "out"))
  model = meta["model"]
  assert meta["template"] == "aki"
  assert model["llm"]["vocab_size"] == N0 + EXTRA and model["llm"]["lm_head_bias"]
  assert (model["connector"]["depth"], model["connector"]["num_latents"]) == (DEPTH, LATENTS)
  cfg = configs.vlm_config_from_dict(model)

  # Perceiver vs the torch reference.
  media = np.random.default_rng(1).standard_normal((2, 16, W)).astype(np.float32)
  ours = connector.make(cfg.connector, E, np.float32).apply({"params": params["connector"]}, media)
  np.testing.assert_allclose(np.asarray(ours), _perceiver_reference(perceiver, torch.from_numpy(media)),
                             atol=1e-4)

  # Language model vs transformers' Phi-3 whose vocabulary is the decoupled one: rows < N0 of
  # the original matrices, then the two additional rows; the output bias added to its logits.
  phi_cfg = transformers.Phi3Config(**{**json.load(open(tmp_path / "phi/config.json")),
                                       "vocab_size": N0 + EXTRA})
  ref = transformers.Phi3ForCausalLM(phi_cfg).eval()
  state = {k[len("lang_model."):]: torch.from_numpy(v) for k, v in t.items()
           if k.startswith("lang_model.") and "additional" not in k and k != "lang_model.lm_head.bias"}
  cat = lambda a, b: torch.cat([a[:N0], torch.from_numpy(b)])
  state["model.embed_tokens.weight"] = cat(state["model.embed_tokens.weight"],
                                           t["lang_model.model.embed_tokens.additional_embedding.weight"])
  state["lm_head.weight"] = cat(state["lm_head.weight"], t["lang_model.lm_head.additional_fc.weight"])
  ref.load_state_dict(state)
  bias = np.concatenate([t["lang_model.lm_head.bias"][:N0], t["lang_model.lm_head.additional_fc.bias"]])
  tokens = np.random.default_rng(2).integers(0, N0 + EXTRA, (2, 24)).astype(np.int32)
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.numpy() + bias
  np.testing.assert_allclose(parity.llm_logits(model, params, tokens), want, atol=1e-4)

  # Vision tower vs transformers' SigLIP (from the same weights).
  images = np.random.default_rng(3).uniform(-1, 1, (1, 30, 30, 3)).astype(np.float32)
  vit = transformers.SiglipVisionModel.from_pretrained(str(tmp_path / "siglip")).eval()
  with torch.no_grad():
    want = vit(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state
  np.testing.assert_allclose(parity.vision_features(model, params, images), want.numpy(), atol=1e-4)

  # The whole VLM runs with MMA on an image + question.
  batch = model_batch("PIIIPPA", tokens_per_image=LATENTS, image_size=30)
  logits, _ = vlm.VLM(cfg).apply({"params": params}, batch, "mma")
  assert logits.shape == (1, 7, N0 + EXTRA) and np.isfinite(np.asarray(logits)).all()


def _import(root):
  return hf.import_aki(str(root / "aki"), str(root / "siglip/config.json"),
                       str(root / "phi/config.json"), perceiver_heads=HEADS)


def test_aki_vocabulary_boundary_must_be_known_and_match_the_tokenizer(tmp_path):
  from tests.data.test_templates import tiny_tokenizer
  t, _ = _aki_checkpoint(tmp_path)
  # Without initial_tokenizer_len the boundary of the additional rows is unknown: an error.
  tensors.write_tensors(str(tmp_path / "aki"), t, {"num_vision_tokens": LATENTS})
  with pytest.raises(ValueError, match="no 'initial_tokenizer_len'"):
    _import(tmp_path)
  # A tokenizer whose <image> is not at that boundary is not the checkpoint's own.
  tensors.write_tensors(str(tmp_path / "aki"), t, {"initial_tokenizer_len": N0,
                                                   "num_vision_tokens": LATENTS})
  tok = tiny_tokenizer("aki")
  assert tok.token_to_id("<image>") != N0
  tok.save(str(tmp_path / "aki" / "tokenizer.json"))
  with pytest.raises(ValueError, match=f"serve ids {N0} and {N0 + 1}"):
    _import(tmp_path)
