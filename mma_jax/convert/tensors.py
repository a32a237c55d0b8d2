"""HF checkpoint files: read and write safetensors directories (never pickle), and key diffs.

A directory holds config.json and either model.safetensors or shards listed in
model.safetensors.index.json ({"weight_map": {tensor name: shard file}}).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class KeyMismatch(ValueError):
  """A checkpoint whose tensor names or shapes are not what the model needs."""


def read_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: an HF model directory needs its config.json.")
  with open(path) as f:
    return json.load(f)


def _shard_files(directory: str) -> list[str]:
  index = os.path.join(directory, INDEX)
  if os.path.exists(index):
    with open(index) as f:
      return sorted(set(json.load(f)["weight_map"].values()))
  if os.path.exists(os.path.join(directory, SINGLE)):
    return [SINGLE]
  found = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  pickles = [f for f in found if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
  hint = (f" It holds pickle files {pickles}, which are never read (they can run code): "
          "re-save them as safetensors." if pickles else "")
  raise FileNotFoundError(f"No {SINGLE} or {INDEX} in {directory}.{hint}")


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of a safetensors directory as numpy (bf16 as ml_dtypes.bfloat16)."""
  out = {}
  for name in _shard_files(directory):
    with safe_open(os.path.join(directory, name), framework="np") as f:
      for key in f.keys():
        out[key] = f.get_tensor(key)
  return out


def write_tensors(directory: str, tensors: Mapping[str, np.ndarray], config: dict,
                  max_shard_bytes: int = 5 << 30) -> None:
  """Write config.json and the tensors, sharded with an index past max_shard_bytes."""
  os.makedirs(directory, exist_ok=True)
  shards, current, size = [], {}, 0
  for key in sorted(tensors):
    arr = np.ascontiguousarray(tensors[key])
    if current and size + arr.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[key], size = arr, size + arr.nbytes
  shards.append(current)
  meta = {"format": "pt"}  # transformers checks this tag
  if len(shards) == 1:
    save_file(shards[0], os.path.join(directory, SINGLE), metadata=meta)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(directory, name), metadata=meta)
      weight_map.update({k: name for k in shard})
    total = sum(int(a.nbytes) for a in tensors.values())
    with open(os.path.join(directory, INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f, indent=2)


def check_keys(expected: Mapping[str, tuple], given: Mapping[str, tuple],
               ignored: Iterable[str] = (), where: str = "checkpoint") -> None:
  """Raise KeyMismatch listing missing, unknown and mis-shaped tensors (nothing is converted).

  expected / given: tensor name -> shape; ignored: names present but deliberately unused.
  """
  ignored = set(ignored)
  missing = sorted(set(expected) - set(given))
  unknown = sorted(set(given) - set(expected) - ignored)
  shapes = sorted(k for k in set(expected) & set(given) if tuple(expected[k]) != tuple(given[k]))
  if not (missing or unknown or shapes):
    return
  lines = [f"The {where} does not match the model config ({len(missing)} missing, "
           f"{len(unknown)} unknown, {len(shapes)} mis-shaped tensors):"]
  lines += [f"  - missing   {k} {tuple(expected[k])}" for k in missing[:50]]
  lines += [f"  + unknown   {k} {tuple(given[k])}" for k in unknown[:50]]
  lines += [f"  ~ shape     {k}: checkpoint {tuple(given[k])}, model needs {tuple(expected[k])}"
            for k in shapes[:50]]
  if max(len(missing), len(unknown), len(shapes)) > 50:
    lines.append("  ... (first 50 of each kind shown)")
  lines.append("Check that config.json belongs to these weights and that the family is right.")
  raise KeyMismatch("\n".join(lines))
