"""benchmarks/device_check.py in its --tiny setting on the CPU, checked through what it prints.

One subprocess run (a few minutes) serves the first tests: it exits 0, every implementation
that can run here passes every mask kind with finite errors, the timing table carries useful
TFLOP/s next to every time, the PyTorch peers (where torch imports) pass their mask check, the
train-step table has MFU columns and the peer row, and the goals carry numbers; --out holds
the same report. It runs with grain, TFDS, clu, TensorFlow and ml_collections made
unimportable for the kernel sections (a bare accelerator image). The last test breaks one
implementation's mask and expects the check to FAIL it.
"""
import importlib.util
import math
import os
import re
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

from mma_jax import attention, masks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.py")


def _section(text: str, heading: str) -> str:
  """The text from a '## <heading>' line to the next '## ' line."""
  start = text.index(f"\n## {heading}")
  end = text.find("\n## ", start + 1)
  return text[start:] if end < 0 else text[start:end]


def _rows(section: str) -> list[list[str]]:
  """Markdown table rows (cells stripped), without the header and separator lines."""
  rows = [[c.strip() for c in line.strip().strip("|").split("|")]
          for line in section.splitlines() if line.startswith("|")]
  return [r for r in rows[1:] if not set("".join(r)) <= set("-")]


def _positive(cell: str) -> float:
  x = float(cell.split()[0])  # "ms (TFLOP/s)" cells: the time
  assert math.isfinite(x) and x > 0, cell
  return x


def _can_run() -> list[str]:
  unavailable = getattr(attention, "unavailable", None)
  return [n for n in attention.IMPLEMENTATIONS
          if n != "auto" and not (unavailable and unavailable(n, "cpu"))]


def _tflops(cell: str) -> float:
  """The useful TFLOP/s of a "ms (TFLOP/s)" cell."""
  x = float(cell.split("(")[1].rstrip(")"))
  assert math.isfinite(x) and x > 0, cell
  return x


HAS_TORCH = importlib.util.find_spec("torch") is not None
# Packages a bare GPU image lacks, made absent before the script runs: a None entry in
# sys.modules makes `import x` raise ImportError and importlib.util.find_spec(x) return None,
# as for a package that is not installed.
BARE_IMAGE = textwrap.dedent("""
    import runpy, sys
    for name in ("grain", "tensorflow", "tensorflow_datasets", "clu", "ml_collections"):
      sys.modules[name] = None
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("device_check") / "report.md"
  proc = subprocess.run([sys.executable, SCRIPT, "--tiny", f"--out={out}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  return proc, out.read_text() if out.exists() else ""


def test_kernel_sections_run_without_grain_tfds_clu_tensorflow_or_ml_collections():
  proc = subprocess.run(
      [sys.executable, "-c", BARE_IMAGE, SCRIPT, "--tiny", "--sections=correctness,speed",
       "--implementations=xla,blockwise"], cwd=ROOT, capture_output=True, text=True,
      timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "Correctness: all PASS" in proc.stdout
  # and the train section, which needs ml_collections, says so in its row instead of crashing
  proc = subprocess.run([sys.executable, "-c", BARE_IMAGE, SCRIPT, "--tiny", "--sections=train"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ERROR: ModuleNotFoundError: import of ml_collections halted" in proc.stdout, \
      proc.stdout[-3000:]


def test_tiny_run_exits_0_and_every_implementation_that_can_run_passes(tiny):
  proc, _ = tiny
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  text = proc.stdout
  expected = _can_run()
  assert {"xla", "blockwise"} <= set(expected)
  for name in attention.IMPLEMENTATIONS:
    if name not in expected and name != "auto":  # listed with its reason
      assert f"- {name}: skipped: " in text, name
  rows = _rows(_section(text, "(a)"))
  seen = set()
  for length, _, kind, name, *errors, ratio, result in rows:
    assert result == "PASS", (length, kind, name, errors, result)
    for e in errors + [ratio]:
      assert math.isfinite(float(e)) and float(e) >= 0, (name, kind, e)
    seen.add((name, kind))
  assert seen == {(n, k) for n in expected for k in masks.KINDS}
  assert "Correctness: all PASS" in text


def test_tiny_run_prints_timings_train_step_and_goals(tiny):
  proc, report = tiny
  text = proc.stdout
  speed = _rows(_section(text, "(b)"))
  timed = {(int(r[0]), r[2]) for r in speed}
  assert timed == {(length, name) for length in (256, 512)
                   for name in ("jax.nn dense mask (xla)", "xla", "blockwise")}
  for length, batch, name, *cells in speed:
    assert int(batch) * int(length) == 1024
    assert len(cells) == 10  # four times in ms, two MMA ÷ causal, four ÷ dense ratios
    for cell in cells:
      _positive(cell)
    for cell in cells[:4]:  # each time with its useful TFLOP/s
      _tflops(cell)
    # useful FLOPs = time x TFLOP/s: fwd+bwd is 3.5x fwd (backward 2.5x), MMA's mask allows
    # more pairs than causal's
    flop = [_positive(c) * _tflops(c) for c in cells[:4]]
    assert flop[2] / flop[0] == pytest.approx(3.5, rel=0.02)
    assert flop[3] / flop[1] == pytest.approx(3.5, rel=0.02)
    assert flop[1] > flop[0]

  train = _rows(_section(text, "(c)"))
  ours = [r for r in train if r[0] in ("causal", "mma")]
  assert [r[0] for r in ours] == ["causal", "mma"]
  for kind, step_ms, tokens_per_s, mfu, useful, loss, compile_s in ours:
    _positive(step_ms), _positive(tokens_per_s), _positive(compile_s)
    assert math.isfinite(float(loss)) and mfu == useful == "n/a"  # no peak FLOP/s for a CPU
  mma, causal = map(float, re.search(r"useful (\S+) MMA / (\S+) causal", text).groups())
  assert 0 < causal < mma  # MMA's mask allows more pairs than causal's
  ratio = text.split("Train step MMA ÷ causal: ")[1].split("x")[0]
  _positive(ratio)

  goals = _section(text, "Goals").splitlines()
  results = [line for line in goals if line.startswith("  - blockwise")]
  assert len(results) == 4, goals
  assert all(line.split(" (goal")[0].endswith(("met", "not met", "not measured"))
             for line in results), results
  _positive(results[0].split(": ")[1].rstrip("x"))
  # --out holds the report that was printed
  assert report and report.strip() == text.strip()


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch peers: torch is installed on the 3.11 leg")
def test_tiny_run_prints_the_torch_peers_on_the_same_rows(tiny):
  proc, _ = tiny
  text = proc.stdout
  peers = _rows(_section(text, "(d)"))
  assert {(int(r[0]), r[2]) for r in peers} == {
      (length, peer) for length in (256, 512)
      for peer in ("torch flex_attention", "torch SDPA + dense bool mask")}
  for length, batch, peer, *cells, check, over in peers:
    for cell in cells[:2]:  # forward times, with useful TFLOP/s
      _tflops(cell)
    if peer == "torch flex_attention":
      assert check == "PASS"  # its mask_mod allows exactly dense_mask's keys, every row
      assert cells[2] == cells[3] == "n/a"  # no FlexAttention backward on the CPU
    else:
      _tflops(cells[2]), _tflops(cells[3]), _positive(over)
  # the transformers train step at the preset's LLM dims, both kinds
  train = _rows(_section(text, "(c)"))
  peer = [r for r in train if r[0].startswith("transformers")]
  assert [r[1] for r in peer] == ["causal", "mma"]
  for row in peer:
    _positive(row[2]), _positive(row[3])
    assert math.isfinite(float(row[6]))


def test_a_wrong_mask_fails_the_correctness_check(monkeypatch, capsys):
  """blockwise made to ignore the group ids (every kind becomes causal): only causal passes."""
  from benchmarks import device_check

  real = attention.attention

  def wrong(q, k, v, q_ids, k_ids, implementation="auto"):
    if implementation == "blockwise":
      q_ids = q_ids._replace(group=jnp.full_like(q_ids.group, -1))
    return real(q, k, v, q_ids, k_ids, implementation)

  monkeypatch.setattr(attention, "attention", wrong)
  rc = device_check.main(["--tiny", "--sections=correctness", "--implementations=blockwise"])
  rows = _rows(_section(capsys.readouterr().out, "(a)"))
  results = {kind: result for _, _, kind, name, *_, result in rows}
  assert rc == 1
  assert results == {k: "PASS" if k == "causal" else "FAIL" for k in masks.KINDS}
