"""A weighted mixture of imported sources, from config.data.mixture.

Spec: comma-separated items, each a preset name or NAME=WEIGHT; later items override earlier
ones and weight 0 drops a source, e.g. 'aki_sft', 'aki_sft,vsr=0.05,llava150k=0' or
'/data/mine=1,vqav2=0.5'. A NAME is an imported directory (python -m mma_jax.data.importers
... --out ROOT writes ROOT/NAME), relative to config.data.dir unless absolute. Weights are
relative (normalized here).

The mixture is a finite Grain MapDataset in which every record of every source appears at least
once: each source is shuffled and repeated (reshuffled every pass) and the sources are
interleaved in proportion to their weights (grain.MapDataset.mix) for about
max_k(len_k / weight_k) elements (rounded up until no source falls short). The training
pipeline shuffles and repeats that as it does any source.
"""
from __future__ import annotations

import math
import os

import grain

from mma_jax.data import records, tfds_records

# The paper's SFT sampling weights (AKI configs/sft.yaml), keyed by the importers' source names.
PRESETS = {
    "aki_sft": {"vqav2": .103, "gqa": .103, "vsr": .026, "ocrvqa": .103, "aokvqa": .103,
                "scienceqa": .103, "refcoco": .103, "refcoco+": .103, "refcocog": .103,
                "vg": .047, "llava150k": .103},
}


def parse(spec: str, key: str = "config.data.mixture") -> dict[str, float]:
  """NAME -> normalized weight (sums to 1), in the order given; errors name `key`."""
  weights: dict[str, float] = {}
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    if "=" not in item:
      if item not in PRESETS:
        raise ValueError(f"{key}={spec!r}: {item!r} is neither NAME=WEIGHT nor a preset "
                         f"({sorted(PRESETS)}).")
      weights.update(PRESETS[item])
      continue
    name, _, value = item.rpartition("=")
    try:
      w = float(value)
    except ValueError:
      w = -1.0
    if not name.strip() or not (w >= 0 and math.isfinite(w)):
      raise ValueError(f"{key}={spec!r}: {item!r} needs NAME=WEIGHT with a weight >= 0.")
    weights[name.strip()] = w
  weights = {n: w for n, w in weights.items() if w > 0}
  if not weights:
    raise ValueError(f"{key}={spec!r}: names no source with a positive weight; e.g. 'aki_sft' "
                     "or 'NAME=1' for one imported directory.")
  total = sum(weights.values())
  return {n: w / total for n, w in weights.items()}


def sources(spec: str, root: str, split: str, key: str = "config.data.mixture"):
  """[(name, MapDataset of records (images still encoded), weight)] for the split."""
  out = []
  for name, w in parse(spec, key).items():
    stored = tfds_records.open_split(os.path.join(root, name), split, key)
    out.append((name, grain.MapDataset.source(stored).map(records.from_stored), w))
  return out


def _counts(n: int, proportions: list[int]) -> list[int]:
  """How many of the first n mixed elements each source gives (grain's interleaving rule)."""
  out, rest = [], sum(proportions)
  for p in proportions:
    later = n * (rest - p) // rest
    out.append(n - later)
    n, rest = later, rest - p
  return out


def _int_proportions(weights: list[float]) -> list[int]:
  """Integer proportions, smallest exactly 100, that grain.MapDataset.mix uses unchanged.

  grain rescales whatever it gets by 100 / min and truncates; int(w * 100 / min) can give 99
  for the smallest weight, and then grain's draws disagree with the counts computed here.
  With integers whose minimum is 100 its scale factor is exactly 1.0, so both agree.
  """
  smallest = min(weights)
  return [max(100, round(w / smallest * 100)) for w in weights]  # w / w == 1.0 exactly


def mix(datasets: list[grain.MapDataset], weights: list[float], seed: int) -> grain.MapDataset:
  """The finite weighted mixture of the module docstring."""
  for ds in datasets:
    if not len(ds):
      raise ValueError("A mixture source has no records; re-import it or drop it from "
                       "config.data.mixture.")
  if len(datasets) == 1:
    return datasets[0]
  props = _int_proportions(weights)
  total, sizes = sum(props), [len(ds) for ds in datasets]
  length = max(math.ceil(n * total / p) for n, p in zip(sizes, props))
  while short := [math.ceil((n - c) * total / p)
                  for n, c, p in zip(sizes, _counts(length, props), props) if n > c]:
    length += max(short)  # rounding left a source a few records short
  parents = [ds.shuffle(seed=(seed + 1_000_003 * k) % 2**32).repeat()
             for k, ds in enumerate(datasets)]
  return grain.MapDataset.mix(parents, props)[:length]
