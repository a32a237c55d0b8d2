"""A built-in vision-centric benchmark: coloured shapes on a grid, no download.

Every example is a normalized LLaVA-like record, deterministic from (seed, split, index):
  {"id", "images": [uint8[H, W, 3]], "conversations": [{"from": "human"|"gpt", "value"}],
   "source": "shapes", "question_type", "caption"}
Question types probe what MMA is said to help: counting, existence (balanced yes/no, a
POPE-like hallucination probe), attribute at a place, spatial relation, a two-image question
and a two-turn conversation (scored on the last answer).
"""
from __future__ import annotations

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230),
          "yellow": (235, 220, 50)}
SHAPES = ("square", "circle", "triangle")
PLACES = ("top left", "top right", "bottom left", "bottom right")  # 2 x 2 grid, row-major
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("count", "exist", "attribute", "spatial", "two_image", "two_turn")
SPLITS = {"train": 0, "validation": 1, "test": 2}
SYSTEM = "answer with one word ."
BACKGROUND = 128

# Every answer each type can have: chance level and vocabulary come from here.
ANSWERS = {
    "count": NUMBERS[1:],
    "exist": ("yes", "no"),
    "attribute": tuple(COLORS) + SHAPES,
    "spatial": ("left", "right", "above", "below"),
    "two_image": ("first", "second"),
    "two_turn": NUMBERS[1:],
}
TEMPLATE_WORDS = ("how many shapes are there ? is there a what color is the shape at "
                  "what shape is at where is relative to which image has more shapes ? "
                  "and . , first second image").split()


def _scene(rng, min_objects=1, max_objects=4):
  """Distinct (colour, shape) objects in distinct cells: list of (cell, colour, shape)."""
  n = int(rng.integers(min_objects, max_objects + 1))
  cells = rng.permutation(4)[:n]
  combos = [(c, s) for c in COLORS for s in SHAPES]
  picks = rng.permutation(len(combos))[:n]
  return [(int(cell), *combos[p]) for cell, p in zip(cells, picks)]


def draw(scene, size: int = 32) -> np.ndarray:
  """uint8[size, size, 3] image of the scene; each cell is size/2 pixels."""
  img = np.full((size, size, 3), BACKGROUND, np.uint8)
  cell = size // 2
  margin = max(1, cell // 8)
  yy, xx = np.mgrid[0:cell, 0:cell]
  c = (cell - 1) / 2
  for idx, color, shape in scene:
    r0, c0 = (idx // 2) * cell, (idx % 2) * cell
    if shape == "square":
      m = (yy >= margin) & (yy < cell - margin) & (xx >= margin) & (xx < cell - margin)
    elif shape == "circle":
      m = (yy - c) ** 2 + (xx - c) ** 2 <= (c - margin + 0.5) ** 2
    else:  # triangle, apex up
      h = (yy - margin) / max(cell - 2 * margin, 1)
      m = (yy >= margin) & (yy < cell - margin) & (np.abs(xx - c) <= h * (c - margin + 0.5))
    img[r0:r0 + cell, c0:c0 + cell][m] = COLORS[color]
  return img


def caption(scene) -> str:
  parts = [f"a {color} {shape} at {PLACES[idx]}" for idx, color, shape in sorted(scene)]
  return " and ".join(parts) + " ."


def _name(obj) -> str:
  return f"{obj[1]} {obj[2]}"


def _relation(a, b) -> str | None:
  """Where a is relative to b, when they share a row or a column."""
  (ra, ca), (rb, cb) = divmod(a[0], 2), divmod(b[0], 2)
  if ra == rb:
    return "left" if ca < cb else "right"
  if ca == cb:
    return "above" if ra < rb else "below"
  return None


def _turn(question: str, answer: str, images: int = 0):
  return [{"from": "human", "value": "<image>\n" * images + question},
          {"from": "gpt", "value": answer}]


def _attribute(rng, scene):
  obj = scene[int(rng.integers(len(scene)))]
  if rng.integers(2):
    return f"what color is the shape at {PLACES[obj[0]]} ?", obj[1]
  return f"what shape is at {PLACES[obj[0]]} ?", obj[2]


def _count(scene):
  return "how many shapes are there ?", NUMBERS[len(scene)]


def make_example(seed: int, split: str, index: int, image_size: int = 32) -> dict:
  """The record for (seed, split, index); the type cycles so every split is balanced."""
  rng = np.random.default_rng([seed, SPLITS[split], index])
  qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
  scene = _scene(rng)
  scenes = [scene]
  if qtype == "count":
    conv = _turn(*_count(scene), images=1)
  elif qtype == "exist":
    present = (index // len(QUESTION_TYPES)) % 2 == 0  # exactly alternating yes / no
    if present:
      obj = scene[int(rng.integers(len(scene)))]
    else:  # a plausible absent object: a colour or a shape that is in the image
      have = {(o[1], o[2]) for o in scene}
      absent = [(0, c, s) for c in COLORS for s in SHAPES if (c, s) not in have]
      obj = absent[int(rng.integers(len(absent)))]
    conv = _turn(f"is there a {_name(obj)} ?", "yes" if present else "no", images=1)
  elif qtype == "attribute":
    conv = _turn(*_attribute(rng, scene), images=1)
  elif qtype == "spatial":
    while True:  # redraw until some pair shares a row or a column
      scene = _scene(rng, 2, 3)
      pairs = [(a, b) for a in scene for b in scene if a != b and _relation(a, b)]
      if pairs:
        break
    scenes = [scene]
    a, b = pairs[int(rng.integers(len(pairs)))]
    conv = _turn(f"where is the {_name(a)} relative to the {_name(b)} ?", _relation(a, b),
                 images=1)
  elif qtype == "two_image":
    second = _scene(rng)
    while len(second) == len(scene):
      second = _scene(rng)
    scenes = [scene, second]
    conv = _turn("which image has more shapes ?", "first" if len(scene) > len(second) else
                 "second", images=2)
  else:  # two_turn: an attribute question, then a count; the count is scored
    conv = _turn(*_attribute(rng, scene), images=1) + _turn(*_count(scene))
  return {"id": f"shapes-{split}-{index}", "images": [draw(s, image_size) for s in scenes],
          "conversations": conv, "source": "shapes", "question_type": qtype,
          "caption": caption(scene)}


def chance(records) -> dict[str, float]:
  """Majority-answer rate per question type: what always giving the commonest answer scores."""
  answers: dict[str, list[str]] = {}
  for r in records:
    answers.setdefault(r["question_type"], []).append(r["conversations"][-1]["value"])
  out = {}
  for t, a in answers.items():
    _, counts = np.unique(a, return_counts=True)
    out[t] = float(counts.max() / len(a))
  return out


def vocabulary() -> list[str]:
  """Every word the benchmark can produce."""
  words = set(TEMPLATE_WORDS) | set(SYSTEM.split()) | set(NUMBERS)
  for values in ANSWERS.values():
    words |= set(values)
  for place in PLACES:
    words |= set(place.split())
  words |= set(COLORS) | set(SHAPES) | {"?", ".", "a", "the"}
  return sorted(words)
