"""What the train step spends, counted by XLA on the CPU: compiled FLOPs and temporary memory.

  python benchmarks/step_waste.py

Three sections, each before / after in one run, from `.lower(...).compile()` of the whole
train step (mma_jax.train.memory.compile_step; nothing is allocated or timed):

  images  a frozen vision tower over every image slot (model.vision.images_per_row = 0) vs
          only the used ones (images_per_row = the real images per row): compiled FLOPs next
          to the models/flops.py count. The towers have one layer each: XLA's cost analysis
          counts a scanned body once, so one layer (and one pass of images) is counted exactly.
  loss    the loss over a 32k vocabulary from the whole f32 logits (model.llm.loss_chunk = -1)
          vs chunks of 512 tokens: compiled temporaries (no FLOPs: XLA would count one chunk).
  remat   the LLM's remat policies (model.llm.remat): compiled temporaries vs the estimate
          of mma_jax.train.memory.
"""
from __future__ import annotations

import dataclasses

import jax

from mma_jax import config as config_lib
from mma_jax import sharding
from mma_jax.models import configs, flops
from mma_jax.train import memory

MiB = 2 ** 20


def _with(cfg: configs.VLMConfig, vision=None, llm=None) -> configs.VLMConfig:
  return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **(vision or {})),
                             llm=dataclasses.replace(cfg.llm, **(llm or {})))


def _text_heavy(vocab_size: int, layers: int) -> configs.VLMConfig:
  """A small LLM (256 wide) behind a minimal vision tower."""
  return configs.VLMConfig(
      vision=configs.ViTConfig(image_size=16, patch_size=8, hidden=32, layers=1, heads=2,
                               mlp_dim=64),
      llm=configs.LLMConfig(vocab_size=vocab_size, hidden=256, layers=layers, heads=4,
                            kv_heads=2, head_dim=64, mlp_dim=1024))


def _step(cfg, batch, length, images):
  optim = config_lib.base_config().optim  # the vision tower frozen, as by default
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  compiled = memory.compile_step(cfg, mesh, sharding.make_rules(), optim, batch, length, images)
  return compiled, mesh, optim


def images_section():
  batch, length, slots, real = 2, 512, 8, 2
  cfg = configs.VLMConfig(
      vision=configs.ViTConfig(image_size=64, patch_size=8, hidden=256, layers=1, heads=4,
                               mlp_dim=1024),
      llm=configs.LLMConfig(vocab_size=1024, hidden=256, layers=1, heads=4, kv_heads=2,
                            head_dim=64, mlp_dim=1024))
  trainable = {"vision": False, "connector": True, "llm": True}
  print(f"## images: {batch} rows x {slots} slots, {real} real images per row, frozen tower")
  rows = []
  for per_row in (0.0, float(real)):
    c = _with(cfg, vision={"images_per_row": per_row})
    compiled, _, _ = _step(c, batch, length, slots)
    xla = compiled.cost_analysis()["flops"]
    model = flops.train_step(c, batch, length, slots, trainable)
    rows.append((per_row, xla, model))
    print(f"images_per_row={per_row:g}: compiled {xla / 1e9:.3f} GFLOP, flops.train_step "
          f"{model / 1e9:.3f} GFLOP, tower images per pass {batch * (per_row or slots):g}")
  print(f"before - after: compiled {(rows[0][1] - rows[1][1]) / 1e9:.3f} GFLOP, "
        f"flops.train_step {(rows[0][2] - rows[1][2]) / 1e9:.3f} GFLOP "
        f"({batch * (slots - real)} empty slots)")
  print(f"compiled FLOPs after / before: {rows[1][1] / rows[0][1]:.3f}; "
        f"useful (flops.train_step with real_images={real}): "
        f"{flops.train_step(cfg, batch, length, slots, trainable, real_images=real) / 1e9:.3f}"
        " GFLOP")


def loss_section():
  batch, length, images = 2, 2048, 2
  cfg = _text_heavy(vocab_size=32768, layers=1)
  print(f"## loss: {batch} rows x {length} tokens, vocab {cfg.llm.vocab_size}; whole f32 logits "
        f"= {batch * length * cfg.llm.vocab_size * 4 / MiB:.0f} MiB")
  temps = []
  for chunk in (-1, 512):
    c = _with(cfg, llm={"loss_chunk": chunk})
    compiled, mesh, optim = _step(c, batch, length, images)
    temp = compiled.memory_analysis().temp_size_in_bytes
    est = memory.estimate(c, mesh, sharding.make_rules(), optim, batch, length, images)
    temps.append(temp)
    print(f"loss_chunk={chunk} (tokens per chunk {c.llm.loss_chunk_for(length) or length}): "
          f"compiled temporaries {temp / MiB:.1f} MiB; estimated activations "
          f"{est.activations / MiB:.1f} MiB")
  print(f"compiled temporaries after / before: {temps[1] / temps[0]:.3f}")


def remat_section():
  batch, length, images = 2, 512, 2
  cfg = _text_heavy(vocab_size=1024, layers=4)
  print(f"## remat: {cfg.llm.layers} LLM layers, {batch} rows x {length} tokens")
  for policy in configs.REMAT_POLICIES:
    c = _with(cfg, llm={"remat": policy})
    compiled, mesh, optim = _step(c, batch, length, images)
    est = memory.estimate(c, mesh, sharding.make_rules(), optim, batch, length, images)
    print(f"remat={policy}: compiled temporaries "
          f"{compiled.memory_analysis().temp_size_in_bytes / MiB:.2f} MiB, estimated "
          f"activations {est.activations / MiB:.2f} MiB")


def main():
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
  images_section()
  loss_section()
  remat_section()


if __name__ == "__main__":
  main()
