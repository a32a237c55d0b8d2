"""A built-in, procedurally drawn, vision-centric benchmark: coloured shapes in a grid.

Every example is drawn from its own numpy Generator seeded by (seed, split, index), so any
example can be reproduced alone and the splits never share a stream. An image is a `grid`×`grid`
array of cells; a cell holds at most one shape. With the defaults (32 px, 2×2) a cell is 16 px,
i.e. 2×2 ViT patches of 8 px, so a tiny model learns the task in minutes on a CPU.

Records follow the normalized LLaVA-like schema (REFERENCE.md §4):

  {"id": str, "images": [uint8[H, W, 3], ...],
   "conversations": [{"from": "human" | "gpt", "value": str}, ...],
   "source": "shapes", "question_type": str, "caption": str}

Each human turn holds one literal `<image>` per image it shows ("<image>\\nquestion"). Answers are
single words; the scored answer is the value of the last gpt turn.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import Iterable, Iterator, Mapping

import numpy as np

SOURCE = "shapes"
IMAGE_TOKEN = "<image>"
SPLITS = {"train": 0, "validation": 1, "test": 2}
QUESTION_TYPES = ("count", "exist", "attribute", "spatial", "two_image", "two_turn")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
}
SHAPES = ("square", "circle", "triangle")
RELATIONS = ("left", "right", "above", "below")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_ROW_NAMES = {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
_COL_NAMES = {2: ("left", "right"), 3: ("left", "center", "right")}

# Question and caption templates: every word the benchmark writes comes from here (vocabulary()).
Q_COUNT = "how many shapes are there ?"
Q_EXIST = "is there a {color} {shape} ?"
Q_COLOR_AT = "what color is the shape at the {place} ?"
Q_SHAPE_AT = "what shape is at the {place} ?"
Q_SPATIAL = "where is the {a} relative to the {b} ?"
Q_MORE = "which image has more shapes ?"
Q_WHICH_HAS = "which image has a {color} {shape} ?"
CAPTION_ITEM = "a {color} {shape} at the {place} ."
CAPTION_EMPTY = "no shapes ."
CAPTION_TWO = "first image : {first} second image : {second}"
# The instruction the chat template puts in the system turn (the answers are single words).
SYSTEM_PROMPT = "answer the question with a single word ."


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
  """How images are drawn. image_size must be a multiple of grid; grid is 2 or 3."""
  image_size: int = 32
  grid: int = 2

  def __post_init__(self):
    if self.grid not in _ROW_NAMES:
      raise ValueError(f"ShapesConfig.grid={self.grid}: use 2 or 3 (cells have place names).")
    if self.image_size % self.grid or self.image_size // self.grid < 6:
      raise ValueError(f"ShapesConfig.image_size={self.image_size} must be a multiple of "
                       f"grid={self.grid} with cells of at least 6 px.")

  @property
  def cells(self) -> int:
    return self.grid * self.grid


@dataclasses.dataclass(frozen=True)
class Item:
  """One shape in one cell."""
  color: str
  shape: str
  row: int
  col: int

  @property
  def name(self) -> str:
    return f"{self.color} {self.shape}"


def place(row: int, col: int, grid: int) -> str:
  """Cell name, e.g. 'top left'."""
  return f"{_ROW_NAMES[grid][row]} {_COL_NAMES[grid][col]}"


def question_type(index: int) -> str:
  """Types cycle with the index so that every split is balanced across types."""
  return QUESTION_TYPES[index % len(QUESTION_TYPES)]


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The Generator of one example: independent of every other example and split."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: use one of {tuple(SPLITS)}")
  return np.random.default_rng([seed, SPLITS[split], index])


# ---------------------------------------------------------------------------------------------
# Scenes.

def _all_objects() -> list[tuple[str, str]]:
  return list(itertools.product(COLORS, SHAPES))


def _scene(rng: np.random.Generator, cfg: ShapesConfig, n: int,
           fixed: Iterable[Item] = (), avoid: Iterable[tuple[str, str]] = ()) -> list[Item]:
  """n items in distinct cells with distinct (color, shape); `fixed` items are kept as given."""
  items = list(fixed)
  used_cells = {(it.row, it.col) for it in items}
  used_objects = {(it.color, it.shape) for it in items} | set(avoid)
  free_cells = [c for c in itertools.product(range(cfg.grid), repeat=2) if c not in used_cells]
  free_objects = [o for o in _all_objects() if o not in used_objects]
  extra = n - len(items)
  cells = rng.permutation(len(free_cells))[:extra]
  objects = rng.permutation(len(free_objects))[:extra]
  for c, o in zip(cells, objects):
    (row, col), (color, shape) = free_cells[c], free_objects[o]
    items.append(Item(color, shape, row, col))
  return sorted(items, key=lambda it: (it.row, it.col))


def _random_cells(rng: np.random.Generator, cfg: ShapesConfig, k: int) -> list[tuple[int, int]]:
  cells = list(itertools.product(range(cfg.grid), repeat=2))
  return [cells[i] for i in rng.permutation(len(cells))[:k]]


def render(items: Iterable[Item], cfg: ShapesConfig, rng: np.random.Generator) -> np.ndarray:
  """Draws the items. Returns uint8[H, W, 3] (H = W = image_size).

  Size, position inside the cell, colour tone and background vary a little so that the task is
  not a lookup of exact pixel values.
  """
  s, cell = cfg.image_size, cfg.image_size // cfg.grid
  background = rng.integers(0, 40)
  image = np.full((s, s, 3), background, np.int32)
  yy, xx = np.mgrid[0:s, 0:s] + 0.5
  for it in items:
    r = rng.uniform(0.30, 0.42) * cell
    slack = max(cell / 2 - r - 0.5, 0.0)
    cy = (it.row + 0.5) * cell + rng.uniform(-slack, slack)
    cx = (it.col + 0.5) * cell + rng.uniform(-slack, slack)
    dy, dx = yy - cy, xx - cx
    if it.shape == "square":
      inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif it.shape == "circle":
      inside = dx * dx + dy * dy <= r * r
    else:  # Apex up; the half-width grows from 0 at the top to r at the base.
      inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    tone = np.asarray(COLORS[it.color]) + rng.integers(-20, 21, size=3)
    image[inside] = tone
  return np.clip(image, 0, 255).astype(np.uint8)


def caption_of(items: list[Item], cfg: ShapesConfig) -> str:
  if not items:
    return CAPTION_EMPTY
  return " ".join(CAPTION_ITEM.format(color=it.color, shape=it.shape,
                                      place=place(it.row, it.col, cfg.grid)) for it in items)


# ---------------------------------------------------------------------------------------------
# Questions. Each returns (scenes, [(question, answer), ...]); scenes are lists of Items.

def _count(rng, cfg, k):
  del k
  n = int(rng.integers(0, cfg.cells + 1))
  return [_scene(rng, cfg, n)], [(Q_COUNT, NUMBERS[n])]


def _exist(rng, cfg, k):
  """Yes/no alternate with the type-local index k: each split is balanced to within one."""
  n = int(rng.integers(1, cfg.cells + 1))
  items = _scene(rng, cfg, n)
  if k % 2 == 0:
    target = items[rng.integers(len(items))]
    asked, answer = (target.color, target.shape), "yes"
  else:
    # POPE-like: a plausible absent object shares its colour or its shape with a present one.
    present = {(it.color, it.shape) for it in items}
    absent = [o for o in _all_objects() if o not in present]
    near = [o for o in absent if any(o[0] == p[0] or o[1] == p[1] for p in present)]
    pool = near or absent
    asked, answer = pool[rng.integers(len(pool))], "no"
  return [items], [(Q_EXIST.format(color=asked[0], shape=asked[1]), answer)]


def _attribute_question(rng, cfg, items):
  it = items[rng.integers(len(items))]
  where = place(it.row, it.col, cfg.grid)
  if rng.integers(2) == 0:
    return Q_COLOR_AT.format(place=where), it.color
  return Q_SHAPE_AT.format(place=where), it.shape


def _attribute(rng, cfg, k):
  del k
  items = _scene(rng, cfg, int(rng.integers(1, cfg.cells + 1)))
  return [items], [_attribute_question(rng, cfg, items)]


def _spatial(rng, cfg, k):
  """A and B share a row (left/right) or a column (above/below): the answer is unambiguous."""
  del k
  relation = RELATIONS[rng.integers(len(RELATIONS))]
  line = int(rng.integers(cfg.grid))
  lo, hi = sorted(rng.permutation(cfg.grid)[:2].tolist())
  if relation in ("left", "right"):
    a_cell, b_cell = (line, lo), (line, hi)
  else:
    a_cell, b_cell = (lo, line), (hi, line)
  if relation in ("right", "below"):
    a_cell, b_cell = b_cell, a_cell
  objects = _all_objects()
  i, j = rng.permutation(len(objects))[:2]
  a, b = Item(*objects[i], *a_cell), Item(*objects[j], *b_cell)
  items = _scene(rng, cfg, int(rng.integers(2, cfg.cells + 1)), fixed=[a, b])
  return [items], [(Q_SPATIAL.format(a=a.name, b=b.name), relation)]


def _two_image(rng, cfg, k):
  """Which of two images has more shapes, or holds a named object; first/second balanced."""
  del k
  first_wins = bool(rng.integers(2))
  if rng.integers(2) == 0:
    more, fewer = sorted(rng.permutation(cfg.cells + 1)[:2].tolist(), reverse=True)
    counts = (more, fewer) if first_wins else (fewer, more)
    scenes = [_scene(rng, cfg, n) for n in counts]
    question = Q_MORE
  else:
    color, shape = _all_objects()[rng.integers(len(_all_objects()))]
    (row, col), = _random_cells(rng, cfg, 1)
    holder = _scene(rng, cfg, int(rng.integers(1, cfg.cells + 1)),
                    fixed=[Item(color, shape, row, col)])
    other = _scene(rng, cfg, int(rng.integers(0, cfg.cells + 1)), avoid=[(color, shape)])
    scenes = [holder, other] if first_wins else [other, holder]
    question = Q_WHICH_HAS.format(color=color, shape=shape)
  return scenes, [(question, "first" if first_wins else "second")]


def _two_turn(rng, cfg, k):
  """Count, then (teacher-forced) an attribute question about the same image."""
  del k
  items = _scene(rng, cfg, int(rng.integers(1, cfg.cells + 1)))
  return [items], [(Q_COUNT, NUMBERS[len(items)]), _attribute_question(rng, cfg, items)]


_QUESTIONS = {"count": _count, "exist": _exist, "attribute": _attribute, "spatial": _spatial,
              "two_image": _two_image, "two_turn": _two_turn}


# ---------------------------------------------------------------------------------------------
# Records.

def make_example(split: str, index: int, *, seed: int = 0,
                 config: ShapesConfig = ShapesConfig()) -> dict:
  """The record at `index` of `split`; depends on (seed, split, index, config) only."""
  rng = example_rng(seed, split, index)
  qtype = question_type(index)
  scenes, turns = _QUESTIONS[qtype](rng, config, index // len(QUESTION_TYPES))
  images = [render(items, config, rng) for items in scenes]
  placeholders = "".join(f"{IMAGE_TOKEN}\n" for _ in images)
  conversations = []
  for t, (question, answer) in enumerate(turns):
    conversations.append({"from": "human", "value": (placeholders if t == 0 else "") + question})
    conversations.append({"from": "gpt", "value": answer})
  captions = [caption_of(items, config) for items in scenes]
  caption = captions[0] if len(captions) == 1 else CAPTION_TWO.format(first=captions[0],
                                                                      second=captions[1])
  return {"id": f"{SOURCE}-{split}-{index:06d}", "images": images,
          "conversations": conversations, "source": SOURCE, "question_type": qtype,
          "caption": caption}


def generate(split: str, num_examples: int, *, seed: int = 0,
             config: ShapesConfig = ShapesConfig()) -> Iterator[dict]:
  for index in range(num_examples):
    yield make_example(split, index, seed=seed, config=config)


def answer_of(record: Mapping) -> str:
  """The scored answer: the last gpt turn."""
  return record["conversations"][-1]["value"]


def answer_sets(config: ShapesConfig = ShapesConfig()) -> dict[str, frozenset[str]]:
  """Every answer each question type can have."""
  colors_shapes = frozenset(COLORS) | frozenset(SHAPES)
  return {
      "count": frozenset(NUMBERS[:config.cells + 1]),
      "exist": frozenset({"yes", "no"}),
      "attribute": colors_shapes,
      "spatial": frozenset(RELATIONS),
      "two_image": frozenset({"first", "second"}),
      "two_turn": colors_shapes,
  }


def chance_levels(records: Iterable[Mapping]) -> dict[str, float]:
  """Per question type, the accuracy of always giving that type's most frequent answer."""
  answers = collections.defaultdict(collections.Counter)
  for r in records:
    answers[r["question_type"]][answer_of(r)] += 1
  return {t: c.most_common(1)[0][1] / sum(c.values()) for t, c in sorted(answers.items())}


def vocabulary() -> list[str]:
  """Every word (whitespace-separated) that questions, answers, captions and the system prompt
  can use, for any grid size."""
  texts = [Q_COUNT, Q_EXIST, Q_COLOR_AT, Q_SHAPE_AT, Q_SPATIAL, Q_MORE, Q_WHICH_HAS,
           CAPTION_ITEM, CAPTION_EMPTY, CAPTION_TWO, SYSTEM_PROMPT]
  texts += list(COLORS) + list(SHAPES) + list(RELATIONS) + list(NUMBERS)
  texts += [n for names in (*_ROW_NAMES.values(), *_COL_NAMES.values()) for n in names]
  texts += ["yes", "no", "first", "second"]
  return sorted({w for text in texts for w in text.split()
                 if not (w.startswith("{") and w.endswith("}"))})
