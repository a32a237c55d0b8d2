"""A built-in vision-centric benchmark: coloured shapes on a grid, no download.

Every example is a normalized LLaVA-like record, deterministic from (seed, split, index):
  {"id", "images": [uint8[H, W, 3]], "conversations": [{"from": "human"|"gpt", "value"}],
   "source": "shapes", "question_type", "caption"}
Question types probe what MMA is said to help: counting, existence (balanced yes/no, a
POPE-like hallucination probe), attribute at a place, spatial relation, a two-image question
and a two-turn conversation (scored on the last answer).

difficulty="hard" (make_hard_example, below) is a harder variant with its own types, words,
record ids and source ("shapes_hard"): 6-12 objects on a 4 x 4 grid with distractors, filtered
counting, relations between named objects, attributes of named objects and POPE-like existence
(random / popular / adversarial negatives); every answer is balanced, and neither the question
nor the image alone says anything about it. Its design is a point of difficulty dials (`Dials`:
objects per scene, grid size, share of distractors, question types; config.data.objects_min
...), and the defaults are that committed benchmark, record for record.
"""
from __future__ import annotations

import collections
import functools
from typing import NamedTuple

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
DIFFICULTIES = ("easy", "hard")  # config.data.difficulty

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


def clip(draw_fn, scene, size: int, frames: int) -> np.ndarray:
  """A short clip of a scene: uint8[frames, size, size, 3], its objects appearing one group per
  frame; the last frame is the whole scene (the still image), so a question about the scene
  needs the clip's end."""
  n = len(scene)
  return np.stack([draw_fn(scene[:-(-(k + 1) * n // frames)], size) for k in range(frames)])


def make_example(seed: int, split: str, index: int, image_size: int = 32,
                 difficulty: str = "easy", frames: int = 0, dials: "Dials | None" = None) -> dict:
  """The record for (seed, split, index); the type cycles so every split is balanced.

  frames > 1: every image is a clip of that many frames (`clip`), uint8[frames, H, W, 3]; the
  records are otherwise the same (the same scenes, questions and answers). dials: the hard
  benchmark's (None = its defaults); the easy one has none."""
  if check_difficulty(difficulty) == "hard":
    return make_hard_example(seed, split, index, image_size, frames, dials or Dials())
  if dials not in (None, Dials()):
    raise ValueError(f"The easy shapes benchmark has no difficulty dials, got {dials}.")
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
  images = [clip(draw, s, image_size, frames) if frames > 1 else draw(s, image_size)
            for s in scenes]
  return {"id": f"shapes-{split}-{index}", "images": images,
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


def check_difficulty(difficulty: str) -> str:
  """The difficulty, or a ValueError naming the ones there are."""
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"Unknown shapes difficulty {difficulty!r}; use one of {DIFFICULTIES}.")
  return difficulty


def vocabulary(difficulty: str = "easy", grid: int | None = None) -> list[str]:
  """Every word the benchmark can produce; the hard one's is a superset of the easy one's. For
  the hard one, at any dials with that grid (rows and columns past four add their names; the
  default grid keeps the tokenizer the committed hard runs were trained with)."""
  words = set(TEMPLATE_WORDS) | set(SYSTEM.split()) | set(NUMBERS)
  for values in ANSWERS.values():
    words |= set(values)
  for place in PLACES:
    words |= set(place.split())
  words |= set(COLORS) | set(SHAPES) | {"?", ".", "a", "the"}
  if check_difficulty(difficulty) == "hard":
    words |= set(HARD_TEMPLATE_WORDS) | set(HARD_COLORS) | set(HARD_SHAPES)
    words |= {f"{s}s" for s in HARD_SHAPES} | {w for r in RELATIONS for w in r.split()}
    words |= {v for values in HARD_ANSWERS.values() for v in values}
    words |= set(line_names(grid or GRID))
  return sorted(words)


# --- The hard variant (config.data.difficulty = "hard") -----------------------------------------
# 6-12 objects on a 4 x 4 grid, repeated (colour, shape) pairs, distractors sharing the colour or
# the shape of what is asked, and questions that name the object to look at. The answer is drawn
# first (cycling with the index, so answers are balanced). The scene then holds one candidate per
# answer of the type, drawn alike and in a random order (for existence: the asked object or a
# decoy drawn like it), and the question names the candidate with the drawn answer. So neither
# the question alone nor the scene alone says anything about the answer: the image has to be read
# for this question (tests/data/shapes/test_hard.py checks both).
GRID = 4  # the default grid; cells row-major, rows and columns named one.. from the top left
GRIDS = (4, 5, 6)  # the grids every type can be built on (count_filter plants 10 objects and
                   # attribute_color 5 in the reference's row and column: too many for 3 x 3)
LINE_WORDS = NUMBERS + ("five", "six")  # row and column names, up to the largest grid
HARD_COLORS = {**COLORS, "purple": (150, 60, 200)}
HARD_SHAPES = SHAPES + ("diamond",)
LINE_NAMES = LINE_WORDS[1:GRID + 1]
# "left of" etc. in attribute questions, like the relation answers: in the same row (column),
# on that side.
RELATIONS = {"left of": "left", "right of": "right", "above": "above", "below": "below"}
HARD_QUESTION_TYPES = ("count_filter", "relation", "attribute_color", "attribute_shape",
                       "exist_random", "exist_popular", "exist_adversarial")
HARD_ANSWERS = {
    "count_filter": NUMBERS[1:5],
    "relation": ("left", "right", "above", "below"),
    "attribute_color": tuple(HARD_COLORS),
    "attribute_shape": HARD_SHAPES,
    "exist_random": ("yes", "no"),
    "exist_popular": ("yes", "no"),
    "exist_adversarial": ("yes", "no"),
}
# Answers are exactly balanced, so chance (the majority answer's rate) is 1 / answers.
HARD_CHANCE = {t: 1 / len(a) for t, a in HARD_ANSWERS.items()}
HARD_TEMPLATE_WORDS = ("how many shapes are there ? where is the relative to what color is "
                       "shape object in row column of is there a : , .").split()
_NC, _NS = len(HARD_COLORS), len(HARD_SHAPES)
HARD_COMBOS = tuple((c, s) for c in HARD_COLORS for s in HARD_SHAPES)  # index = colour * 4 + shape
_COLOR_OF = np.arange(len(HARD_COMBOS)) // _NS
_SHAPE_OF = np.arange(len(HARD_COMBOS)) % _NS
# How often each (colour, shape) fills a scene, most frequent first (weights 1 / rank): the
# frequent ones are POPE's "popular" objects, the only ones exist_popular asks about.
POPULARITY = ("red circle", "blue square", "green triangle", "yellow diamond", "purple square",
              "red triangle", "blue diamond", "green circle", "yellow square", "purple triangle",
              "red diamond", "blue circle", "green square", "yellow triangle", "purple diamond",
              "red square", "blue triangle", "green diamond", "yellow circle", "purple circle")
POPULAR = POPULARITY[:4]
_PRIOR = np.zeros(len(HARD_COMBOS))
for _rank, _obj in enumerate(POPULARITY):
  _PRIOR[HARD_COMBOS.index(tuple(_obj.split()))] = 1 / (_rank + 1)
_PRIOR /= _PRIOR.sum()
_STEP = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}


class Dials(NamedTuple):
  """The hard benchmark's difficulty (config.data keys in DIAL_KEYS); the defaults are the
  committed hard benchmark, record for record (the same random draws in the same order).

  objects_min, objects_max: filler tops a scene up to n objects, n uniform in [min, max]; the
    question's own objects come first, so a scene holds max(n, those): count_filter plants 10,
    relation 8, attribute_color 6 plus its distractors.
  grid: rows = columns, one of GRIDS.
  distractors: the share of the look-alikes that attribute_color, attribute_shape and
    exist_adversarial add on purpose that is kept (each with this probability; 1 keeps all
    without a draw, 0 none). The other types plant no distractors.
  question_types: the types cycled through with the index, in HARD_QUESTION_TYPES' order.
  turns: 1, or 2 for a conversation: a first turn asks the shape in one occupied cell, then the
    record's own question follows (the same scene, question and answer as at 1 turn; scored).
    With mask mma the image sees only the first turn's question, with mma_conversation both."""
  objects_min: int = 6
  objects_max: int = 12
  grid: int = GRID
  distractors: float = 1.0
  question_types: tuple[str, ...] = HARD_QUESTION_TYPES
  turns: int = 1


DIAL_KEYS = {f: f"data.{f}" for f in Dials._fields}  # config.data.question_types: 'a,b' ('' = all)


def _type_names(names: str) -> list[str]:
  return [t.strip() for t in names.split(",") if t.strip()]


def dials(data) -> Dials:
  """The Dials of a config.data (keys a config saved before them lacks: the defaults); an
  unknown question type is dropped here and reported by dial_problems."""
  d = Dials()
  types = _type_names(data.get("question_types", ""))
  return Dials(int(data.get("objects_min", d.objects_min)),
               int(data.get("objects_max", d.objects_max)), int(data.get("grid", d.grid)),
               float(data.get("distractors", d.distractors)),
               tuple(t for t in HARD_QUESTION_TYPES if t in types) if types else d.question_types,
               int(data.get("turns", d.turns)))


def dial_problems(data, image_size: int) -> list[tuple[str, str]]:
  """(config key, what is wrong) for every impossible dial of config.data, whose scenes are drawn
  at image_size pixels; [] when the dials can be built."""
  d, out = dials(data), []
  if check_difficulty(data.get("difficulty", "easy")) == "easy":
    return [(DIAL_KEYS[f], "the difficulty dials are the hard benchmark's; set "
             f"data.difficulty='hard' or leave it at {getattr(Dials(), f)!r}")
            for f in Dials._fields if getattr(d, f) != getattr(Dials(), f)]
  if d.grid not in GRIDS:
    out.append(("data.grid", f"use one of {GRIDS}"))
  elif image_size // d.grid < 8:  # below 8 px a cell the four shapes' masks look alike
    out.append(("data.grid", f"{image_size} px images leave {image_size // d.grid} px a cell, "
                "8 are needed: raise data.render_size (or model.vision.image_size)"))
  if not 1 <= d.objects_min <= d.objects_max:
    out.append(("data.objects_min", f"need 1 <= data.objects_min <= data.objects_max="
                f"{d.objects_max}"))
  if d.objects_max > d.grid ** 2:
    out.append(("data.objects_max", f"at most {d.grid ** 2}, the cells of a {d.grid} x {d.grid} "
                "grid"))
  if not 0.0 <= d.distractors <= 1.0:
    out.append(("data.distractors", "a share in [0, 1]"))
  if d.turns not in (1, 2):
    out.append(("data.turns", "1 (one question) or 2 (a first question, then the scored one)"))
  names = _type_names(data.get("question_types", ""))
  bad = [t for t in names if t not in HARD_QUESTION_TYPES]
  if bad or len(set(names)) != len(names) or (data.get("question_types", "") and not names):
    out.append(("data.question_types", f"comma-separated, each once, of {HARD_QUESTION_TYPES} "
                f"('' = all){'; unknown: ' + ', '.join(bad) if bad else ''}"))
  return out


def line_names(grid: int = GRID) -> tuple[str, ...]:
  """The names of the rows (columns) of a grid, top (left) first."""
  return LINE_WORDS[1:grid + 1]


def _ray(cell: int, direction: str, grid: int = GRID) -> list[int]:
  """Cells in the same row (column) as cell, on that side of it."""
  (r, c), (dr, dc) = divmod(cell, grid), _STEP[direction]
  out = []
  while 0 <= r + dr < grid and 0 <= c + dc < grid:
    r, c = r + dr, c + dc
    out.append(r * grid + c)
  return out


def _name_of(k: int) -> str:
  return " ".join(HARD_COMBOS[k])


class _Scene:
  """A scene under construction: objects by cell and which combo each cell may still take.

  allowed: bool[cells, combos]; the question's constraints switch entries off so that
  distractors and filler never make the answer ambiguous (placed answer objects bypass it)."""

  def __init__(self, rng, grid: int = GRID, distractors: float = 1.0):
    self.rng = rng
    self.grid, self.cells = grid, grid * grid
    self.distractors = distractors
    self.objs: dict[int, int] = {}
    self.allowed = np.ones((self.cells, len(HARD_COMBOS)), bool)

  def ray(self, cell: int, direction: str) -> list[int]:
    return _ray(cell, direction, self.grid)

  def pick(self, items):
    return items[int(self.rng.integers(len(items)))]

  def put(self, cell: int, k: int) -> None:
    self.objs[int(cell)] = int(k)

  def add(self, combos, cells, count: int) -> None:
    """Up to count distractors, uniform over the given combos (bool[combos]) and free cells;
    each kept with probability self.distractors (drawn only below 1: the default draws stay)."""
    if self.distractors < 1:
      count = int(self.rng.binomial(count, self.distractors))
    cells = list(cells)
    for _ in range(count):
      fits = (self.allowed[cells] & combos).any(1)
      free = [c for c, ok in zip(cells, fits) if ok and c not in self.objs]
      if not free:
        return
      cell = self.pick(free)
      self.put(cell, self.pick(np.flatnonzero(self.allowed[cell] & combos)))

  def prior(self, combos) -> int:
    """A combo from the popularity prior restricted to combos (bool[combos], one True at least)."""
    cum = np.cumsum(np.where(combos, _PRIOR, 0.0))
    return int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))

  def fill(self, n: int) -> None:
    """Filler from the popularity prior in random free cells until there are n objects."""
    free = [int(c) for c in self.rng.permutation(self.cells) if int(c) not in self.objs]
    for cell in free[:max(0, n - len(self.objs))]:
      if self.allowed[cell].any():
        self.put(cell, self.prior(self.allowed[cell]))

  def scene(self) -> list[tuple[int, str, str]]:
    return [(cell, *HARD_COMBOS[k]) for cell, k in sorted(self.objs.items())]


def _hard_count_filter(s: _Scene, answer: str) -> str:
  """'how many red squares / red shapes / squares are there ?'. Four filters of one kind are
  planted with the counts one..four in a random order and the question asks for the one whose
  count is the answer, so the scene looks the same whatever the answer."""
  counts = s.rng.permutation(4) + 1
  kind = int(s.rng.integers(3))
  if kind == 2:  # (colour, shape): a random 2 x 2 block, so each shares attributes with two
    colors, shapes = s.rng.permutation(_NC)[:2], s.rng.permutation(_NS)[:2]
    filters = [(_COLOR_OF == c) & (_SHAPE_OF == sh) for c in colors for sh in shapes]
  else:  # every colour (the fifth is absent) or every shape gets one of the counts
    attr, size = (_COLOR_OF, _NC) if kind == 0 else (_SHAPE_OF, _NS)
    filters = [attr == v for v in s.rng.permutation(size)]
    s.allowed[:] = False  # the counts cover the whole scene: no filler
  cells = iter(s.rng.permutation(s.cells))
  for match, count in zip(filters, counts):
    for _ in range(count):
      s.put(next(cells), s.prior(match))
    s.allowed[:, match] = False
  asked = filters[list(counts).index(NUMBERS.index(answer))]
  color, shape = HARD_COMBOS[int(np.argmax(asked))]  # any combo the filter takes names it
  return [f"how many {color} shapes are there ?", f"how many {shape}s are there ?",
          f"how many {color} {shape}s are there ?"][kind]


def _hard_relation(s: _Scene, answer: str) -> str:
  """'where is the A relative to the B ?': A and B unique, in one row or column. Four such
  pairs of unique objects, one for each answer in a random order, share the scene; the
  question names the pair whose relation is the answer."""
  combos = s.rng.permutation(len(HARD_COMBOS))[:8]
  s.allowed[:, combos] = False
  question = ""
  free = lambda cells: [c for c in cells if c not in s.objs]
  for j, side in enumerate(s.rng.permutation(list(_STEP))):
    # Never empty: 6 objects at most leave 10 free cells, 2 or more in some row and column.
    cell_b = s.pick([c for c in free(range(s.cells)) if free(s.ray(c, side))])
    ka, kb = int(combos[2 * j]), int(combos[2 * j + 1])
    s.put(cell_b, kb)
    s.put(s.pick(free(s.ray(cell_b, side))), ka)
    if side == answer:
      question = f"where is the {_name_of(ka)} relative to the {_name_of(kb)} ?"
  return question


def _hard_attribute_color(s: _Scene, answer: str) -> str:
  """'what color is the triangle left of the green circle ?': the reference is unique and the
  asked object is the only one of its shape on that side of it in its row (column). Five such
  objects, one of each colour in a random order, sit in the reference's row and column (every
  cell has 2 * (grid - 1) >= 6 cells there); the question names the one of the answer's colour."""
  cell_r, rs = int(s.rng.integers(s.cells)), int(s.rng.integers(_NS))
  kr = int(s.rng.integers(_NC)) * _NS + rs
  s.put(cell_r, kr)
  s.allowed[:, kr] = False
  slots = [(side, c) for side in _STEP for c in s.ray(cell_r, side)]
  while True:  # at most one of each other shape on a side; on a 4 x 4 grid a side has 3 cells
    picked = [slots[i] for i in sorted(s.rng.permutation(len(slots))[:_NC])]
    if max(collections.Counter(side for side, _ in picked).values()) < _NS:
      break
  slots = picked
  others = [x for x in range(_NS) if x != rs]
  shapes = {side: list(s.rng.permutation(others)) for side in _STEP}  # distinct on a side
  colors = s.rng.permutation(_NC)
  question = ""
  for (side, cell), color in zip(slots, colors):
    shape = int(shapes[side].pop())
    s.put(cell, color * _NS + shape)
    s.allowed[np.ix_(s.ray(cell_r, side), _SHAPE_OF == shape)] = False
    if color == tuple(HARD_COLORS).index(answer):
      words = next(w for w, d in RELATIONS.items() if d == side)
      question = f"what color is the {HARD_SHAPES[shape]} {words} the {_name_of(kr)} ?"
  everywhere = range(s.cells)  # objects sharing the reference's colour or shape
  s.add((_COLOR_OF == kr // _NS) & (_SHAPE_OF != rs), everywhere, int(s.rng.integers(1, 3)))
  s.add((_SHAPE_OF == rs) & (_COLOR_OF != kr // _NS), everywhere, int(s.rng.integers(0, 2)))
  return question


def _hard_attribute_shape(s: _Scene, answer: str) -> str:
  """'what shape is the blue object in row two ?': the only blue object of that row (column).
  Four such objects, one of each shape in a random order, each the only one of its colour in
  a row or column of its own; the question names the one of the answer's shape."""
  question, colors = "", []
  for shape in s.rng.permutation(_NS):
    while True:  # a colour and line with no object of that colour yet, and a free cell there
      ci, i, is_row = int(s.rng.integers(_NC)), int(s.rng.integers(s.grid)), bool(s.rng.integers(2))
      line = [i * s.grid + j if is_row else j * s.grid + i for j in range(s.grid)]
      k = ci * _NS + int(shape)
      free = [c for c in line if c not in s.objs and s.allowed[c, k]]
      if free and all(_COLOR_OF[s.objs[c]] != ci for c in line if c in s.objs):
        break
    s.put(s.pick(free), k)
    s.allowed[np.ix_(line, _COLOR_OF == ci)] = False
    colors.append(ci)
    if HARD_SHAPES[shape] == answer:
      question = (f"what shape is the {tuple(HARD_COLORS)[ci]} object in "
                  f"{'row' if is_row else 'column'} {line_names(s.grid)[i]} ?")
  for ci in colors:  # each one's colour again, outside the lines that name them
    s.add(_COLOR_OF == ci, range(s.cells), 1)
  return question


def _neighbours(k: int) -> np.ndarray:
  """Combos sharing exactly one attribute with combo k: bool[combos]."""
  return (_COLOR_OF == _COLOR_OF[k]) != (_SHAPE_OF == _SHAPE_OF[k])


def _hard_exist(kind: str):
  """'is there a red square ?', POPE-like: two objects are drawn alike, the asked one and a
  decoy; the scene holds exactly one of them (the asked one when the answer is yes), so neither
  the question nor the scene alone says which. random: any two objects; popular: two of the
  most frequent filler objects; adversarial: two sharing a colour or a shape, and the scene
  also holds other objects of each one's colour and of each one's shape."""
  def build(s: _Scene, answer: str) -> str:
    if kind == "popular":
      kq, kd = (HARD_COMBOS.index(tuple(POPULAR[i].split()))
                for i in s.rng.permutation(len(POPULAR))[:2])
    else:
      kq = int(s.rng.integers(len(HARD_COMBOS)))
      near = _neighbours(kq) if kind == "adversarial" else np.arange(len(HARD_COMBOS)) != kq
      kd = int(s.pick(np.flatnonzero(near)))
    s.allowed[:, [kq, kd]] = False
    s.put(int(s.rng.integers(s.cells)), kq if answer == "yes" else kd)
    if kind == "adversarial":
      everywhere = range(s.cells)
      for k in s.rng.permutation([kq, kd]):
        s.add((_COLOR_OF == _COLOR_OF[k]) & (_SHAPE_OF != _SHAPE_OF[k]), everywhere, 1)
        s.add((_SHAPE_OF == _SHAPE_OF[k]) & (_COLOR_OF != _COLOR_OF[k]), everywhere, 1)
    return f"is there a {_name_of(kq)} ?"
  return build


_HARD_BUILDERS = {
    "count_filter": _hard_count_filter, "relation": _hard_relation,
    "attribute_color": _hard_attribute_color, "attribute_shape": _hard_attribute_shape,
    "exist_random": _hard_exist("random"), "exist_popular": _hard_exist("popular"),
    "exist_adversarial": _hard_exist("adversarial")}


class HardQuestion(NamedTuple):
  qtype: str
  scene: list  # (cell, colour, shape) per object, by cell
  question: str
  answer: str


def hard_question(seed: int, split: str, index: int, dials: Dials = Dials()) -> HardQuestion:
  """The scene, question and answer of hard record (seed, split, index), without drawing.

  The type cycles with the index and, within a type, so does the answer: both are balanced."""
  rng = np.random.default_rng([seed, SPLITS[split], index, 1])  # 1: apart from easy's streams
  types = dials.question_types
  qtype = types[index % len(types)]
  answers = HARD_ANSWERS[qtype]
  answer = answers[(index // len(types)) % len(answers)]
  s = _Scene(rng, dials.grid, dials.distractors)
  n = int(rng.integers(dials.objects_min, dials.objects_max + 1))
  question = _HARD_BUILDERS[qtype](s, answer)
  s.fill(n)
  return HardQuestion(qtype, s.scene(), question, answer)


@functools.lru_cache(maxsize=8)
def _masks(cell: int) -> dict[str, np.ndarray]:
  """bool[cell, cell] per shape, drawn as easy's draw does, plus a diamond."""
  margin = max(1, cell // 8)
  yy, xx = np.mgrid[0:cell, 0:cell]
  c = (cell - 1) / 2
  h = (yy - margin) / max(cell - 2 * margin, 1)
  inside = (yy >= margin) & (yy < cell - margin)
  return {"square": inside & (xx >= margin) & (xx < cell - margin),
          "circle": (yy - c) ** 2 + (xx - c) ** 2 <= (c - margin + 0.5) ** 2,
          "triangle": inside & (np.abs(xx - c) <= h * (c - margin + 0.5)),
          "diamond": np.abs(yy - c) + np.abs(xx - c) <= c - margin + 0.5}


def draw_hard(scene, size: int = 64, grid: int = GRID) -> np.ndarray:
  """uint8[size, size, 3] image of a hard scene; each cell is size // grid pixels."""
  img = np.full((size, size, 3), BACKGROUND, np.uint8)
  cell = size // grid
  masks = _masks(cell)
  for idx, color, shape in scene:
    r0, c0 = (idx // grid) * cell, (idx % grid) * cell
    img[r0:r0 + cell, c0:c0 + cell][masks[shape]] = HARD_COLORS[color]
  return img


def hard_caption(scene, grid: int = GRID) -> str:
  """'row one : red square in column two , blue circle in column four . row three : ...'."""
  rows: dict[int, list[str]] = {}
  names = line_names(grid)
  for idx, color, shape in sorted(scene):
    rows.setdefault(idx // grid, []).append(f"{color} {shape} in column {names[idx % grid]}")
  return " ".join(f"row {names[r]} : {' , '.join(objs)} ." for r, objs in sorted(rows.items()))


def make_hard_example(seed: int, split: str, index: int, image_size: int = 64,
                      frames: int = 0, dials: Dials = Dials()) -> dict:
  """The hard record for (seed, split, index), in make_example's format. Made for 64 px images
  (16 px a cell); at 32 px (8 px a cell) the four shapes still differ, by fewer pixels."""
  q = hard_question(seed, split, index, dials)
  draw_fn = functools.partial(draw_hard, grid=dials.grid)
  image = (clip(draw_fn, q.scene, image_size, frames) if frames > 1
           else draw_fn(q.scene, image_size))
  if dials.turns == 2:
    conversation = _turn(*first_turn(seed, split, index, q.scene, dials.grid), images=1)
    conversation += _turn(q.question, q.answer)
  else:
    conversation = _turn(q.question, q.answer, images=1)
  return {"id": f"shapes_hard-{split}-{index}", "images": [image],
          "conversations": conversation, "source": "shapes_hard",
          "question_type": q.qtype, "caption": hard_caption(q.scene, dials.grid)}


def first_turn(seed: int, split: str, index: int, scene, grid: int = GRID) -> tuple[str, str]:
  """The first turn of a two-turn hard record: 'what shape is the object in row two column
  three ?' about one occupied cell, drawn from a stream of its own (2) so the scene, question
  and answer of the scored turn are the one-turn record's."""
  cell, _, shape = scene[int(np.random.default_rng([seed, SPLITS[split], index, 2])
                             .integers(len(scene)))]
  names = line_names(grid)
  row, column = names[cell // grid], names[cell % grid]
  return f"what shape is the object in row {row} column {column} ?", shape
