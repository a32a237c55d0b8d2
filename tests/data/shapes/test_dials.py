"""The hard benchmark's difficulty dials, and the shapes records generated on the fly."""
import collections
import glob
import hashlib
import json
import os
import pickle

import grain
import numpy as np
import pytest

from mma_jax import config as config_lib
from mma_jax import masks, tokens
from mma_jax.data import chat, task, vocab
from mma_jax.data.shapes import builder as shapes_builder
from mma_jax.data.shapes import generate as g
from mma_jax.data.shapes import source as shapes_source
from tests.data.shapes.test_hard import Ambiguous, every_question, solve

TYPES = g.HARD_QUESTION_TYPES
# Settings other than the defaults, each every type can be built with.
SETTINGS = [g.Dials(grid=5, objects_max=25), g.Dials(grid=6, objects_min=20, objects_max=30),
            g.Dials(distractors=0.0), g.Dials(distractors=0.5), g.Dials(objects_min=1,
                                                                        objects_max=3),
            g.Dials(question_types=("relation", "exist_adversarial"))]


def digest(difficulty, size, n=50, seed=0):
  """sha256 over ids, conversations, captions, types, sources and image bytes of the first n
  records of train and test."""
  h = hashlib.sha256()
  for split in ("train", "test"):
    for i in range(n):
      r = g.make_example(seed, split, i, size, difficulty)
      h.update(json.dumps({k: r[k] for k in ("id", "conversations", "caption", "question_type",
                                              "source")}, sort_keys=True).encode())
      for img in r["images"]:
        h.update(np.ascontiguousarray(img).tobytes())
  return h.hexdigest()


def test_default_dials_are_the_committed_benchmarks_bit_for_bit():
  """The digests were computed with this same function from the code at commit 3ef09bc, the
  commit before the dials were added, so at the defaults no record, pixel, id or token moved."""
  assert digest("hard", 64) == "5e3f909ac07edbce8d0195c127eb0ad2c849bb2e953f2eaf471f3a903a524a61"
  assert digest("easy", 32) == "cea36838371442c28e9bfb56a5d4fb21d5be06b12a9969488cdf50adfe409005"
  ids = sorted(vocab.shapes_tokenizer("hard").tok.get_vocab().items(), key=lambda x: x[1])
  assert len(ids) == 70 and hashlib.sha256(json.dumps(ids).encode()).hexdigest() == (
      "9b1cf9699ab80ba404bdc1f52b77ec7479c21d76800f4c167724ce29f7c92f37")
  assert g.dials(config_lib.base_config().data) == g.Dials()


@pytest.mark.parametrize("dials", SETTINGS, ids=lambda d: shapes_builder.dials_tag(d))
def test_every_setting_is_balanced_unambiguous_and_answerable_only_with_the_question(dials):
  types = dials.question_types
  per = {t: len(g.HARD_ANSWERS[t]) for t in types}
  n = len(types) * 20  # 20 = lcm of the answer counts: every answer equally often
  answers = collections.defaultdict(list)
  for i in range(n):
    q = g.hard_question(2, "validation", i, dials)
    answers[q.qtype].append(q.answer)
    assert len({c for c, _, _ in q.scene}) == len(q.scene)
    assert all(0 <= c < dials.grid ** 2 for c, _, _ in q.scene)
    assert q.question in every_question(q.qtype, dials.grid)
    assert solve(q.scene, q.question, dials.grid) == q.answer, (q, dials)
    if not q.qtype.startswith("exist"):  # the scene holds a candidate for every answer
      possible = set()
      for question in every_question(q.qtype, dials.grid):
        try:
          possible.add(solve(q.scene, question, dials.grid))
        except Ambiguous:
          pass
      assert possible >= set(g.HARD_ANSWERS[q.qtype]), (q, dials)
  assert list(answers) == list(types)
  for t, a in answers.items():
    assert collections.Counter(a) == {x: 20 // per[t] for x in g.HARD_ANSWERS[t]}, (t, dials)


def test_objects_per_scene_follow_the_range():
  """Filler tops a scene up to n in [min, max]; the question's own objects come first."""
  for lo, hi, grid in [(3, 5, 4), (14, 16, 4), (20, 25, 5)]:
    dials = g.Dials(objects_min=lo, objects_max=hi, grid=grid,
                    question_types=("exist_random", "exist_popular"))  # 1 object of their own
    sizes = {len(g.hard_question(0, "train", i, dials).scene) for i in range(60)}
    assert sizes == set(range(lo, hi + 1)), (lo, hi, sizes)
  planted = g.Dials(objects_min=1, objects_max=1, question_types=("count_filter", "relation"))
  assert {len(g.hard_question(0, "train", i, planted).scene) for i in range(20)} == {8, 10}


@pytest.mark.parametrize("grid", [5, 6])
def test_grid_size_shows_in_cells_caption_image_and_questions(grid):
  dials, size = g.Dials(grid=grid, objects_max=grid * grid), 8 * grid
  names = g.line_names(grid)
  assert names[-1] == g.LINE_WORDS[grid] and len(names) == grid
  used, asked = set(), set()
  for i in range(7 * 6):
    r = g.make_example(1, "test", i, size, "hard", dials=dials)
    scene = g.hard_question(1, "test", i, dials).scene
    used |= {c for c, _, _ in scene}
    asked.add(r["conversations"][0]["value"].split()[-2])
    img = r["images"][0]
    assert img.shape == (size, size, 3)
    objs = {c: col for c, col, _ in scene}
    for c in range(grid * grid):  # each cell's centre: its object's colour or background
      y, x = divmod(c, grid)
      want = g.HARD_COLORS[objs[c]] if c in objs else (g.BACKGROUND,) * 3
      np.testing.assert_array_equal(img[y * 8 + 4, x * 8 + 4], want)
    got, row = [], None  # the caption names every object and where it is, nothing else
    for part in r["caption"].replace(" .", " ,").split(" , "):
      words = part.strip(" ,").split()
      if words[0] == "row":
        row, words = names.index(words[1]), words[3:]
      got.append((row * grid + names.index(words[4]), words[0], words[1]))
    assert sorted(got) == scene
  assert max(used) >= grid * (grid - 1) and max(c % grid for c in used) == grid - 1
  assert names[-1] in asked  # attribute_shape names the last row or column too


def test_distractor_share_thins_the_look_alikes_only():
  """With no filler (objects 1..1), a scene is the question's objects: share 0 leaves the
  planted ones alone, 1 adds today's look-alikes, 0.5 about half of them. Types without
  distractors draw the same scenes at any share."""
  mean = {}
  for share in (0.0, 0.5, 1.0):
    dials = g.Dials(objects_min=1, objects_max=1, distractors=share)
    sizes = collections.defaultdict(list)
    for i in range(7 * 60):
      sizes[g.hard_question(0, "train", i, dials).qtype].append(
          len(g.hard_question(0, "train", i, dials).scene))
    mean[share] = {t: float(np.mean(v)) for t, v in sizes.items()}
  assert {t: mean[0.0][t] for t in ("attribute_color", "attribute_shape",
                                    "exist_adversarial")} == {
      "attribute_color": 6, "attribute_shape": 4, "exist_adversarial": 1}
  for t in ("attribute_color", "attribute_shape", "exist_adversarial"):
    assert mean[0.0][t] < mean[0.5][t] < mean[1.0][t], (t, mean)
  assert mean[1.0]["exist_adversarial"] == 5  # 1 asked (or decoy) + 4 look-alikes
  full, none = g.Dials(distractors=1.0), g.Dials(distractors=0.0)
  for i in range(7 * 3):
    if g.hard_question(0, "test", i).qtype in ("count_filter", "relation", "exist_random",
                                               "exist_popular"):
      assert g.hard_question(0, "test", i, full) == g.hard_question(0, "test", i, none)
  # With filler (the defaults), fewer distractors leave fewer look-alikes of the asked object:
  # at 1 each of the 100 scenes has its 4 planted ones; at 0 only filler's, by chance.
  alike = {}
  for share in (0.0, 1.0):
    n = 0
    for i in range(7 * 100):
      q = g.hard_question(0, "train", i, g.Dials(distractors=share))
      if q.qtype == "exist_adversarial":
        w = q.question.split()
        n += sum((c == w[3]) != (s == w[4]) for _, c, s in q.scene)
    alike[share] = n
  assert alike[1.0] >= 400 and alike[0.0] < 0.8 * alike[1.0], alike


def test_question_types_subset_cycles_in_the_canonical_order():
  c = config_lib.base_config()
  c.data.update(difficulty="hard", question_types=" exist_random,relation")
  config_lib.validate(c)
  dials = g.dials(c.data)
  assert dials.question_types == ("relation", "exist_random")
  qtypes = [g.hard_question(0, "train", i, dials).qtype for i in range(8)]
  assert qtypes == ["relation", "exist_random"] * 4


def test_vocabulary_covers_every_word_of_every_grid():
  """The tokenizer of a grid knows every word its records say; wider grids add line names."""
  assert g.vocabulary("hard", 4) == g.vocabulary("hard")
  assert set(g.vocabulary("hard")) < set(g.vocabulary("hard", 5)) < set(g.vocabulary("hard", 6))
  assert set(g.vocabulary("hard", 6)) - set(g.vocabulary("hard")) == {"five", "six"}
  for dials in [g.Dials(), *SETTINGS]:
    tok = vocab.shapes_tokenizer("hard", dials.grid)
    unk, words = tok.token_id("<unk>"), set()
    for i in range(7 * 6):
      r = g.make_example(0, "train", i, 8 * dials.grid, "hard", dials=dials)
      for text in [r["caption"]] + [m["value"] for m in r["conversations"]]:
        words |= set(text.replace("<image>", " ").split())
        assert unk not in tok.encode(text), text
    assert words <= set(g.vocabulary("hard", dials.grid))


@pytest.mark.parametrize("key,value,match", [
    ("grid", 3, "config.data.grid=3: use one of"),
    ("grid", 7, "config.data.grid=7: use one of"),
    ("grid", 6, "config.data.grid=6: 32 px images leave 5 px a cell"),
    ("objects_min", 0, "config.data.objects_min=0"),
    ("objects_min", 13, "config.data.objects_min=13: need 1 <= data.objects_min"),
    ("objects_max", 17, "config.data.objects_max=17: at most 16"),
    ("distractors", 1.5, r"config.data.distractors=1.5: a share in \[0, 1\]"),
    ("distractors", -0.1, "config.data.distractors=-0.1"),
    ("question_types", "relation,bogus", "config.data.question_types='relation,bogus'.*bogus"),
    ("question_types", "relation,relation", "config.data.question_types=.*each once"),
    ("question_types", ",", "config.data.question_types=','"),
    ("turns", 3, "config.data.turns=3: 1 .one question. or 2"),
    ("turns", 0, "config.data.turns=0"),
])
def test_bad_dials_name_their_config_key(key, value, match):
  c = config_lib.base_config()
  c.data.difficulty = "hard"
  c.data[key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


def test_dials_need_the_hard_benchmark_and_fit_a_larger_render():
  c = config_lib.base_config()
  c.data.grid = 5
  with pytest.raises(ValueError, match="config.data.grid=5: the difficulty dials are the hard"):
    config_lib.validate(c)
  c.data.update(difficulty="hard", render_size=40)
  config_lib.validate(c)
  with pytest.raises(ValueError, match="no difficulty dials"):
    g.make_example(0, "train", 0, dials=g.Dials(grid=5))


def test_builder_names_only_dials_that_differ():
  names = {shapes_builder.ShapesConfig(train_size=7, validation_size=2, test_size=2, seed=5,
                                       image_size=64, difficulty="hard", dials=d).name
           for d in [g.Dials(), *SETTINGS, g.Dials(question_types=("relation", "exist_random"))]}
  assert len(names) == len(SETTINGS) + 2  # different settings never share files
  assert "hard_s5_px64_n7-2-2" in names  # the default hard name is what it was
  assert "hard_s5_px64_n7-2-2_g5_o6-25" not in names
  assert "hard_s5_px64_n7-2-2_o6-25_g5" in names and "hard_s5_px64_n7-2-2_d0.5" in names
  assert "hard_s5_px64_n7-2-2_q14" in names
  assert shapes_builder.dials_tag(g.Dials(turns=2)) == "_t2"


@pytest.mark.parametrize("dials", [g.Dials(turns=2), g.Dials(grid=5, objects_max=25, turns=2)],
                         ids=["t2", "g5_t2"])
def test_two_turn_records_ask_a_cell_first_then_the_one_turn_question(dials):
  """A two-turn record is its one-turn record (image, scored question and answer, type) with a
  first turn before it, whose answer is the shape in the cell it names."""
  one = dials._replace(turns=1)
  size = 16 * dials.grid
  shapes = collections.Counter()
  for i in range(40):
    two, single = (g.make_example(3, "test", i, size, "hard", dials=d) for d in (dials, one))
    np.testing.assert_array_equal(two["images"][0], single["images"][0])
    assert {k: two[k] for k in ("id", "question_type", "caption")} == {
        k: single[k] for k in ("id", "question_type", "caption")}
    (q1, a1), (q2, a2) = [(two["conversations"][j]["value"], two["conversations"][j + 1]["value"])
                          for j in (0, 2)]
    assert [q2, a2] == [single["conversations"][0]["value"].replace("<image>\n", ""),
                        single["conversations"][1]["value"]]
    assert q1.startswith("<image>\n") and "<image>" not in q2
    words = q1.split()
    row, column = (g.line_names(dials.grid).index(words[words.index(w) + 1])
                   for w in ("row", "column"))
    cells = {c: shape for c, _, shape in g.hard_question(3, "test", i, one).scene}
    assert a1 == cells[row * dials.grid + column]
    shapes[a1] += 1
  assert len(shapes) >= 3  # the first turn asks different cells, not one fixed answer


def test_two_turns_split_the_mma_masks_and_are_tokenized_with_the_hard_vocabulary():
  """Under mma the image sees only the first turn's question; under mma_conversation it also
  sees the scored question of the second turn: the pair the multi-turn study compares."""
  record = g.make_example(0, "train", 5, 64, "hard", dials=g.Dials(turns=2))
  tok = vocab.shapes_tokenizer("hard")
  ex = chat.encode(record, tok, tokens_per_image=16, image_size=64)
  assert tok.tok.token_to_id("<unk>") not in list(ex["tokens"])
  vec = {k: np.asarray(ex[k])[None] for k in ("modality", "role", "turn")}
  seg = np.ones_like(vec["turn"])
  image = np.flatnonzero(vec["modality"][0] != tokens.TEXT)
  second_q = np.flatnonzero((vec["turn"][0] == 1) & (vec["role"][0] == tokens.PROMPT))
  first_q = np.flatnonzero((vec["turn"][0] == 0) & (vec["role"][0] == tokens.PROMPT)
                           & (np.arange(seg.shape[1]) > image[-1]))
  assert len(image) == 16 and len(second_q) and len(first_q)
  seen = {kind: np.asarray(masks.dense_mask(seg, vec["modality"], vec["role"], vec["turn"],
                                            kind))[0] for kind in ("mma", "mma_conversation")}
  assert seen["mma"][np.ix_(image, first_q)].all()
  assert not seen["mma"][np.ix_(image, second_q)].any()
  assert seen["mma_conversation"][np.ix_(image, second_q)].all()


def assert_same_records(got, want):
  """got and want (lists of records) hold the same records, images as arrays, in any order."""
  by_id = {r["id"]: r for r in want}
  assert sorted(by_id) == sorted(r["id"] for r in got)
  for r in got:
    w = by_id[r["id"]]
    assert {k: v for k, v in r.items() if k != "images"} == {
        k: v for k, v in w.items() if k != "images"}
    assert len(r["images"]) == len(w["images"])
    for a, b in zip(r["images"], w["images"]):
      assert a.dtype == b.dtype == np.uint8
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("difficulty,size,frames,dials", [
    ("hard", 40, 0, g.Dials(grid=5, distractors=0.5, objects_max=20)),
    ("easy", 16, 3, g.Dials()),
])
def test_on_the_fly_source_equals_the_tfds_records(tmp_path, difficulty, size, frames, dials):
  b = shapes_builder.builder(str(tmp_path), train_size=9, validation_size=2, test_size=3, seed=4,
                             image_size=size, difficulty=difficulty, frames=frames, dials=dials)
  for split in ("train", "test"):
    stored = [shapes_builder.decode_record(x, frames) for x in b.as_data_source(split)]
    fly = shapes_source.ShapesSource(split, len(stored), seed=4, image_size=size,
                                     difficulty=difficulty, frames=frames, dials=dials)
    assert [r["id"] for r in fly] == [f"{stored[0]['id'].rsplit('-', 1)[0]}-{i}"
                                      for i in range(len(stored))]
    assert_same_records(list(fly), stored)
    again = pickle.loads(pickle.dumps(fly))  # Grain's worker processes get a pickled copy
    assert_same_records([again[1]], [fly[1]])
    with pytest.raises(IndexError):
      fly[len(stored)]  # pylint: disable=pointless-statement


def test_task_reads_every_split_on_the_fly_without_files(tmp_path):
  c = config_lib.base_config()
  c.data.update(difficulty="hard", dir=str(tmp_path / "data"), train_size=10, validation_size=7,
                test_size=8, grid=5, question_types="relation,attribute_shape",
                on_the_fly=True)
  c.model.vision.image_size = 40
  config_lib.validate(c)
  t = task.Task(c, str(tmp_path / "work"))
  assert t.builder is None and not glob.glob(str(tmp_path / "**" / "*.array_record*"),
                                             recursive=True)
  assert t.tokenizer.vocab_size == vocab.shapes_tokenizer("hard", 5).vocab_size
  train = t.source("train")
  assert isinstance(train, grain.MapDataset) and len(train) == 10
  assert_same_records([train[3]], [g.make_example(0, "train", 3, 40, "hard", dials=t.dials)])
  recs, types = t.eval_records("test")
  assert len(recs) == 8 and sorted(set(types)) == ["attribute_shape", "relation"]
  batch = next(t.train_iterator("I&T", 16))
  assert batch["tokens"].shape[0] == c.train.batch_size
  # The same config on TFDS files: the same records, in TFDS's own order.
  c.data.on_the_fly = False
  stored = task.Task(c, str(tmp_path / "work"))
  assert stored.builder.builder_config.name == "hard_s0_px40_n10-7-8_g5_q13"
  assert os.path.isdir(stored.builder.data_dir)
  assert_same_records(list(stored.source("test")), recs)
