"""Hand-drawn token layouts for mask and model tests.

A layout is three strings of equal length, one character per token:
  kind: P prompt text, I image, A response (answer) text, . padding
  seg:  segment id digit (0 = padding); turn: turn digit.
"""
import numpy as np

_MODALITY = {"P": 0, "I": 1, "A": 0, ".": 0}
_ROLE = {"P": 1, "I": 1, "A": 2, ".": 0}


def vectors(kind: str, seg: str | None = None, turn: str | None = None):
  """-> dict of segment_ids, modality, role, turn, positions, each i32[1, L]."""
  seg = seg or "".join("0" if c == "." else "1" for c in kind)
  turn = turn or "0" * len(kind)
  assert len(kind) == len(seg) == len(turn)
  segment = np.array([int(c) for c in seg], np.int32)
  positions = np.zeros_like(segment)
  for s in set(segment.tolist()) - {0}:
    positions[segment == s] = np.arange(np.sum(segment == s))
  out = {
      "segment_ids": segment,
      "modality": np.array([_MODALITY[c] for c in kind], np.int32),
      "role": np.array([_ROLE[c] for c in kind], np.int32),
      "turn": np.array([int(c) for c in turn], np.int32),
      "positions": positions,
  }
  return {k: v[None] for k, v in out.items()}


def matrix(rows: str) -> np.ndarray:
  """'11. 111' style rows (whitespace-separated) -> bool[L, L]."""
  return np.array([[c == "1" for c in row] for row in rows.split()], bool)
