"""benchmarks/device_check.py in its --tiny setting on the CPU, checked through what it prints.

One subprocess run (a minute or two) serves the first two tests: it exits 0, every
implementation that can run here passes every mask kind with finite errors, and the timing
table, the train-step table and the goals carry finite positive numbers; --out holds the same
report. The last test breaks one implementation's mask and expects the check to FAIL it.
"""
import math
import os
import subprocess
import sys

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
  x = float(cell)
  assert math.isfinite(x) and x > 0, cell
  return x


def _can_run() -> list[str]:
  unavailable = getattr(attention, "unavailable", None)
  return [n for n in attention.IMPLEMENTATIONS
          if n != "auto" and not (unavailable and unavailable(n, "cpu"))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("device_check") / "report.md"
  proc = subprocess.run([sys.executable, SCRIPT, "--tiny", f"--out={out}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)
  return proc, out.read_text() if out.exists() else ""


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

  train = _rows(_section(text, "(c)"))
  assert [r[0] for r in train] == ["causal", "mma"]
  for kind, step_ms, tokens_per_s, mfu, loss, compile_s in train:
    _positive(step_ms), _positive(tokens_per_s), _positive(compile_s)
    assert math.isfinite(float(loss)) and mfu == "n/a"  # no peak FLOP/s known for a CPU
  ratio = text.split("Train step MMA ÷ causal: ")[1].split("x")[0]
  _positive(ratio)

  goals = _section(text, "Goals").splitlines()
  results = [line for line in goals if line.startswith("  - blockwise")]
  assert len(results) == 2 and all(line.endswith(("met", "not met")) for line in results)
  _positive(results[0].split(": ")[1].rstrip("x"))
  # --out holds the report that was printed
  assert report and report.strip() == text.strip()


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
