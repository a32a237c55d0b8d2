"""The study's plan: one Run (name, variant, seed, config, workdir) per PT run and per variant x
seed, with configs loaded from configs/*.py and the --config.KEY=VALUE overrides applied."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Mapping, Sequence

from mma_jax import tokens
from mma_jax.study.variants import BASELINE, FIXED_KEYS, PT_RUNS, VARIANTS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS_DIR = os.path.join(REPO, "configs")


@dataclasses.dataclass
class Run:
  name: str           # a PT run's name (PT_RUNS) or VARIANT/seedS
  variant: str        # '' for PT
  seed: int
  config: Any         # ml_collections.ConfigDict
  workdir: str

  @property
  def total_steps(self) -> int:
    return self.config.train.steps * len(tokens.phases(self.config.data.order))


# --- configs ----------------------------------------------------------------------------------

def load_config(path: str, *args):
  """get_config(*args) of a config file (configs/*.py; from_hf.py takes a directory)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path} not found; pass --configs_dir=<repo>/configs.")
  spec = importlib.util.spec_from_file_location(f"_study_config_{os.path.basename(path)[:-3]}",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def apply_overrides(config, overrides: Mapping[str, Any]):
  """Set dotted keys ('optim.lr') in place, to values of the keys' types (the command line's
  --config.KEY=VALUE are parsed by ml_collections.config_flags against the base config)."""
  for key, value in overrides.items():
    if key in FIXED_KEYS:
      raise ValueError(f"--config.{key} is set by the study for each run; use --steps, "
                       "--pt_steps, --seeds or --variants instead.")
    _set(config, key, value)
  return config


def _set(config, key: str, value: Any) -> None:
  """config[key] = value for a dotted key that must exist, to a value of its type."""
  *path, leaf = key.split(".")
  node = config
  for part in path:
    if part not in node:
      raise KeyError(f"--config.{key}: no key {part!r} in the config (see mma_jax/config.py).")
    node = node[part]
  if leaf not in node:
    raise KeyError(f"--config.{key}: no key {leaf!r} in the config (see mma_jax/config.py).")
  try:
    node[leaf] = value
  except (ValueError, TypeError) as e:
    raise ValueError(f"--config.{key}={value!r}: {e}") from None


def plan(workdir: str, seeds: int, variants: Sequence[str], steps: int | None = None,
         pt_steps: int | None = None, overrides: Mapping[str, Any] | None = None,
         configs_dir: str = CONFIGS_DIR) -> list[Run]:
  """The runs of the study, PT first: each PT run (PT_RUNS order) that a variant starts from,
  then VARIANT/seedS per variant and seed. steps / pt_steps None = the config files' own."""
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f"Unknown variants {unknown}; choose from {sorted(VARIANTS)}.")
  if BASELINE not in variants:
    raise ValueError(f"--variants must include {BASELINE!r}: every difference is against it.")
  if seeds < 1:
    raise ValueError(f"--seeds={seeds} must be at least 1.")
  workdir = os.path.abspath(workdir)
  overrides = dict(overrides or {})
  def make(config_file, study_sets: Mapping[str, Any], owner: str, users: str):
    """config_file's config with the --config overrides, then the keys the study sets for
    `owner` (a PT run or a variant, used by the --variants `users`); overriding one is refused."""
    c = apply_overrides(load_config(os.path.join(configs_dir, config_file)), overrides)
    if "data.dir" not in overrides:  # one copy of the benchmark for every run
      c.data.dir = os.path.join(workdir, "data")
    for key in sorted(set(study_sets) & set(overrides)):
      raise ValueError(f"--config.{key} is set by the study for {owner}; leave it out, or "
                       f"leave {users} out of --variants.")
    for key, value in study_sets.items():
      _set(c, key, value)
    return c

  runs = []
  needed = {VARIANTS[v].pt for v in variants}
  for name in (n for n in PT_RUNS if n in needed):  # the same steps, overrides and seed 0
    users = ", ".join(v for v in variants if VARIANTS[v].pt == name)
    pt = make("pt.py", PT_RUNS[name], f"the PT run {name!r} (of --variants {users})", users)
    if pt_steps:
      pt.train.steps = pt_steps
    runs.append(Run(name, "", 0, pt, os.path.join(workdir, name)))
  for v in variants:
    for s in range(seeds):
      c = make(VARIANTS[v].config_file, dict(VARIANTS[v].overrides), f"the variant {v!r}", v)
      c.train.steps = VARIANTS[v].step_factor * (steps or c.train.steps)
      c.seed = c.data.shuffle_seed = s
      c.init_from = os.path.join(workdir, VARIANTS[v].pt)  # its PT run's workdir
      runs.append(Run(f"{v}/seed{s}", v, s, c, os.path.join(workdir, "runs", v, f"seed{s}")))
  return runs


def finished(run: Run) -> bool:
  """True when the run's results.json reports its full step count."""
  path = os.path.join(run.workdir, "results.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get("step") == run.total_steps
