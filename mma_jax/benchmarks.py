"""Judge-free benchmark scoring: per benchmark a fixed prompt, a fixed answer extraction and its
metrics, following VLMEvalKit's exact-matching conventions unless an entry says otherwise.

A row is a dict of strings: a VLMEvalKit TSV row (mma_jax.data.vlmeval_tsv) plus `prediction`,
the model's raw answer. Each REGISTRY entry records its prompt template and extraction rule,
and both are written next to every score. Scores are percentages (MME: points, acc% + acc+%
per subtask), except `synthetic`, whose accuracies are fractions as in a run's results.json.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import re
import string
from typing import Callable, Mapping, Sequence

import numpy as np

Row = Mapping[str, str]
CIRCULAR_STRIDE = 1_000_000  # MMBench: copy k of question g has index g + k * 1e6


# --- answer extraction -------------------------------------------------------------------------

_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Contractions the official VQA evaluator restores; each may be written with one apostrophe
# left out ("dont", "couldnt've", "couldn'tve"). Forms that are also words (its, were, well,
# hell, shed, ...) and the capitalised I-forms (never matched after lowercasing) are absent.
_CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
  hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am
  mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't
  she'd've she's should've shouldn't shouldn't've somebody'd've somebody'll somebody's
  someone'd someone'd've someone'll someone's something'd something'd've something'll that's
  there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't
  we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd
  who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
  y'all'll y'all'd've you'd you'd've you'll you're you've""".split()
_CONTRACTIONS = {w[:i] + w[i + 1:]: w for w in _CONTRACTED for i, c in enumerate(w) if c == "'"}


def strip_punctuation(text: str) -> str:
  """The VQA evaluator's punctuation rule: a mark next to a space (or any mark in a text with a
  digit,digit group) is deleted, otherwise it becomes a space; periods not before a digit go."""
  joined = re.search(r"\d,\d", text) is not None
  out = text
  for p in _PUNCT:  # the tests look at the original text, as the evaluator does
    out = out.replace(p, "" if joined or p + " " in text or " " + p in text else " ")
  return re.sub(r"\.(?!\d)", "", out)


def normalize_vqa(text: str) -> str:
  """Standard VQA answer normalisation: whitespace, punctuation, lowercase, number words ->
  digits, articles dropped, contractions restored ("dont" -> "don't")."""
  words = strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip()).lower().split()
  words = [_NUMBER_WORDS.get(w, w) for w in words]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def yes_no(prediction: str) -> str:
  """'Yes' if the words hold 'yes' but not 'no', 'No' for the reverse, else 'Unknown'."""
  words = strip_punctuation(prediction.lower()).split()
  if "yes" in words and "no" not in words:
    return "Yes"
  if "no" in words and "yes" not in words:
    return "No"
  return "Unknown"


def options(row: Row) -> dict[str, str]:
  """The row's options {letter: text}: non-empty A..Z columns, else a `choices` list cell."""
  out = {c: row[c] for c in string.ascii_uppercase if (row.get(c) or "").strip()}
  if not out and (row.get("choices") or "").strip():
    out = dict(zip(string.ascii_uppercase, answer_list(row["choices"])))
  return out


def infer_option(prediction: str, opts: Mapping[str, str]) -> str:
  """The option a free-form answer picks, or '' (VLMEvalKit's can_infer, exact matching).

  1. Letters: with .()[],:;!*#{} turned into spaces, exactly one option letter stands as a word,
     and it is among the last five words. 2. Texts: else exactly one option's text (lowercase)
     occurs in the answer, which is at most twice as long as all option texts together.
  """
  words = re.sub(r"[.()\[\],:;!*#{}]", " ", prediction).split()
  letters = [c for c in opts if c in words]
  if len(letters) == 1 and words.index(letters[0]) > len(words) - 5:
    return letters[0]
  text = prediction.lower()
  if len(text) > 2 * sum(len(v) for v in opts.values()):
    return ""
  hits = [c for c, v in opts.items() if v.lower() in text]
  return hits[0] if len(hits) == 1 else ""


def answer_list(cell: str) -> list[str]:
  """An answer cell: a Python-literal list string (VLMEvalKit's VQA answers) or one answer."""
  cell = cell.strip()
  if cell.startswith("["):
    try:
      return [str(a) for a in ast.literal_eval(cell)]
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"Cannot parse the answer list {cell[:80]!r}: {e}") from e
  return [cell]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """VQA accuracy: min(#other humans giving the answer / 3, 1), averaged over the leave-one-out
  subsets of the human answers (10 choose 9 for VQAv2). A single answer: exact match."""
  pred = normalize_vqa(prediction)
  gts = [normalize_vqa(a) for a in answers]
  if len(gts) == 1:
    return float(pred == gts[0])
  return float(np.mean([min(1.0, sum(g == pred for j, g in enumerate(gts) if j != i) / 3)
                        for i in range(len(gts))]))


def normalize(text: str) -> str:
  """The synthetic benchmark's rule: lowercase, outer spaces and periods off, spaces folded."""
  return " ".join(text.lower().strip().strip(".").split())


# --- prompts -----------------------------------------------------------------------------------

def _option_lines(row: Row) -> str:
  return "".join(f"{c}. {v}\n" for c, v in options(row).items())


def mcq_prompt(row: Row) -> str:
  """VLMEvalKit's ImageMCQDataset prompt."""
  hint = (row.get("hint") or "").strip()
  prompt = (f"Hint: {row['hint']}\n" if hint else "") + f"Question: {row['question']}\n"
  if options(row):
    prompt += ("Options:\n" + _option_lines(row)
               + "Please select the correct answer from the options above. \n")
  return prompt


def cvbench_prompt(row: Row) -> str:
  """AKI's eval_cv_bench prompt."""
  return ("Answer with the option's letter from the given choices directly. "
          f"{row['question']}\nOptions:\n{_option_lines(row)}")


VQA_SUFFIX = "\nAnswer the question using a single word or phrase."


# --- metrics -----------------------------------------------------------------------------------

def _percent(hits) -> float:
  return 100.0 * float(np.mean(hits)) if len(hits) else 0.0


def grouped_accuracy(rows: Sequence[Row], hits: Sequence[float],
                     columns=("split", "category", "l2-category")) -> dict[str, float]:
  """overall and <column>/<value> accuracies (%) for the columns the rows have."""
  out = {"overall": _percent(hits)}
  for col in columns:
    groups = collections.defaultdict(list)
    for row, h in zip(rows, hits):
      if (row.get(col) or "").strip():
        groups[row[col]].append(h)
    out.update({f"{col}/{g}": _percent(v) for g, v in sorted(groups.items())})
  return out


def _yes_no_rates(pairs, prefix: str) -> dict[str, float]:
  """pairs of (truth 'Yes'/'No', extracted) -> accuracy, precision, recall, F1, yes ratio (%)."""
  truth = np.array([t == "Yes" for t, _ in pairs])
  said = np.array([p == "Yes" for _, p in pairs])
  tp, fp, fn = np.sum(truth & said), np.sum(~truth & said), np.sum(truth & ~said)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {f"{prefix}/accuracy": _percent([t == p for t, p in pairs]),
          f"{prefix}/precision": 100.0 * precision, f"{prefix}/recall": 100.0 * recall,
          f"{prefix}/f1": 100.0 * f1, f"{prefix}/yes_ratio": _percent(said)}


def _truth(row: Row) -> str:
  return row["answer"].strip().capitalize()


def pope_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """Per split (the comma-separated `category`: adversarial, popular, random) and overall over
  all (row, split) pairs, as VLMEvalKit's POPE_rating explodes them. Unknown counts as No."""
  overall, splits = [], collections.defaultdict(list)
  for row in rows:
    pair = (_truth(row), yes_no(row["prediction"]))
    names = [s.strip() for s in (row.get("category") or "").split(",") if s.strip()]
    overall += [pair] * max(len(names), 1)
    for s in names:
      splits[s].append(pair)
  out = _yes_no_rates(overall, "overall")
  for s, pairs in sorted(splits.items()):
    out.update(_yes_no_rates(pairs, s))
  return out


MME_PERCEPTION = ("OCR", "artwork", "celebrity", "color", "count", "existence", "landmark",
                  "position", "posters", "scene")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
                 "code_reasoning")


def mme_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """Per subtask acc (% of questions) and acc+ (% of images with both questions right), score =
  acc + acc+; perception = sum over the 10 perception subtasks (max 2000), cognition over the
  4 cognition subtasks (max 800; VLMEvalKit calls it 'reasoning'). Images pair by image_path.

  MME asks exactly 2 questions per image: an image with another number (one lost to a skipped
  row, say) counts as wrong for acc+, and `incomplete_images` counts such images."""
  by_image = collections.defaultdict(lambda: collections.defaultdict(list))
  for row in rows:
    by_image[row["category"]][row["image_path"]].append(
        yes_no(row["prediction"]) == _truth(row))
  out, incomplete = {}, 0
  for cat, images in sorted(by_image.items()):
    acc = _percent([h for hits in images.values() for h in hits])
    # One right answer alone is not "both right": acc+ needs the pair.
    acc_plus = _percent([len(hits) == 2 and all(hits) for hits in images.values()])
    incomplete += sum(len(hits) != 2 for hits in images.values())
    out.update({f"{cat}/acc": acc, f"{cat}/acc_plus": acc_plus, f"{cat}/score": acc + acc_plus})
  for total, cats in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
    present = [c for c in cats if c in by_image]
    if present:
      out[total] = sum(out[f"{c}/score"] for c in present)
      out[f"{total}/subtasks"] = float(len(present))
  out["incomplete_images"] = float(incomplete)
  return out


def _mcq_hit(row: Row) -> bool:
  opts = options(row)
  if not opts:  # an open question among MCQs (RealWorldQA has a few): exact match
    return normalize(row["prediction"]) == normalize(row["answer"])
  return infer_option(row["prediction"], opts) == row["answer"].strip()


def mcq_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """Vanilla multiple choice: accuracy overall and per split / category / l2-category."""
  return grouped_accuracy(rows, [_mcq_hit(r) for r in rows])


def _int_index(row: Row) -> int:
  try:
    return int(row["index"])
  except ValueError as e:
    raise ValueError(f"Circular evaluation needs integer indices; got {row['index']!r}.") from e


def rotations(row: Row) -> int:
  """How many rows (itself included) CircularEval expects for the question of main row `row`:
  one per option when the options are A, B, ... in order and the answer is one of them (the
  questions circularize rotates), else 1."""
  opts = options(row)
  letters = list(opts)
  if row["answer"].strip() in opts and letters == list(string.ascii_uppercase[:len(opts)]):
    return len(letters)
  return 1


def circular_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """MMBench CircularEval: a question g counts only if its main row (index g < 1e6) and all
  rotations(main) - 1 copies (index g + k * 1e6) are present and answered right; groups are
  reported per the main row's categories (a copy's when the main row is missing).

  A group missing its main row or a rotation (a skipped row, a truncated table) is scored
  wrong and counted in `incomplete_groups`: a rotation answered wrongly may be the one that is
  missing. `noncircular/overall` is the plain accuracy of the main rows present."""
  groups = collections.defaultdict(dict)  # g -> {k: hit}
  first = {}  # g -> (smallest k, its row): the main row when present
  for row in rows:
    k, g = divmod(_int_index(row), CIRCULAR_STRIDE)
    groups[g][k] = _mcq_hit(row)
    if g not in first or k < first[g][0]:
      first[g] = (k, row)
  first = {g: row for g, (_, row) in first.items()}
  order = sorted(groups)
  complete = {g: 0 in groups[g] and set(range(rotations(first[g]))) <= set(groups[g])
              for g in order}
  out = grouped_accuracy([first[g] for g in order],
                         [complete[g] and all(groups[g].values()) for g in order])
  out["noncircular/overall"] = _percent([groups[g][0] for g in order if 0 in groups[g]])
  out["questions"] = float(len(order))
  out["incomplete_groups"] = float(sum(not c for c in complete.values()))
  return out


def circularize(rows: Sequence[Row]) -> list[dict[str, str]]:
  """The rows plus, for each question with n options, n - 1 rotated copies (index g + k * 1e6,
  option letter j holding the original option (j + k) mod n) — VLMEvalKit's circular copies,
  for a table that does not carry them already (one that does is returned as it is)."""
  out = [dict(r) for r in rows]
  if any(_int_index(r) >= CIRCULAR_STRIDE for r in rows):
    return out
  for row in rows:
    if rotations(row) == 1:  # nothing to rotate; circular_metrics expects no copies either
      continue
    opts = options(row)
    letters = list(opts)
    answer = letters.index(row["answer"].strip())
    for k in range(1, len(letters)):
      copy = dict(row, index=str(int(row["index"]) + k * CIRCULAR_STRIDE),
                  answer=letters[(answer - k) % len(letters)])
      copy.update({c: opts[letters[(j + k) % len(letters)]] for j, c in enumerate(letters)})
      out.append(copy)
  return out


def cvbench_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """AKI's rule, except that the prediction is stripped: right iff prediction.strip() ==
  answer.strip('()'). 2D = mean(ADE20K, COCO accuracy) when both sources are present, 3D =
  Omni3D accuracy, overall = mean(2D, 3D) only when both exist (AKI's combined score; a
  partial table has no overall). `accuracy` is the plain share of rows right."""
  hits = [row["prediction"].strip() == row["answer"].strip().strip("()") for row in rows]
  out = grouped_accuracy(rows, hits, ("source", "task", "type"))
  out["accuracy"] = out.pop("overall")
  if "source/ADE20K" in out and "source/COCO" in out:
    out["2d"] = (out["source/ADE20K"] + out["source/COCO"]) / 2
  if "source/Omni3D" in out:
    out["3d"] = out["source/Omni3D"]
  if "2d" in out and "3d" in out:
    out["overall"] = (out["2d"] + out["3d"]) / 2
  return out


def vqa_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """VQAv2 accuracy (%) over the human answers in `answer`, per answer_type / question_type."""
  scores = [vqa_accuracy(r["prediction"], answer_list(r["answer"])) for r in rows]
  return grouped_accuracy(rows, scores, ("answer_type", "question_type", "category"))


def gqa_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """GQA accuracy (%): the normalised prediction equals a normalised answer."""
  hits = [normalize_vqa(r["prediction"]) in {normalize_vqa(a) for a in answer_list(r["answer"])}
          for r in rows]
  return grouped_accuracy(rows, hits, ("category", "type"))


def shapes_score(predictions: Sequence[str], answers: Sequence[str], types: Sequence[str],
                 chance: Mapping[str, float]) -> dict[str, float]:
  """Exact-match accuracy per question type and overall, yes/no F1 on 'exist', chance levels.

  Returns a flat dict: accuracy/<type>, chance/<type>, accuracy/all, f1/exist (positive = yes).
  """
  hits = collections.defaultdict(list)
  for pred, ans, qtype in zip(predictions, answers, types, strict=True):
    hits[qtype].append(normalize(pred) == normalize(ans))
  out = {f"accuracy/{t}": float(np.mean(h)) for t, h in sorted(hits.items())}
  out.update({f"chance/{t}": float(chance[t]) for t in sorted(hits) if t in chance})
  out["accuracy/all"] = float(np.mean([x for h in hits.values() for x in h])) if hits else 0.0
  exist = [(normalize(p), normalize(a)) for p, a, t in zip(predictions, answers, types)
           if t == "exist"]
  if exist:
    tp = sum(p == "yes" and a == "yes" for p, a in exist)
    fp = sum(p == "yes" and a != "yes" for p, a in exist)
    fn = sum(p != "yes" and a == "yes" for p, a in exist)
    out["f1/exist"] = 2 * tp / max(2 * tp + fp + fn, 1)
    out["yes_rate/exist"] = float(np.mean([p == "yes" for p, _ in exist]))
  return out


def synthetic_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """shapes_score with chance = the majority-answer rate per question type (`category`)."""
  answers = collections.defaultdict(collections.Counter)
  for r in rows:
    answers[r["category"]][r["answer"]] += 1
  chance = {t: max(c.values()) / sum(c.values()) for t, c in answers.items()}
  return shapes_score([r["prediction"] for r in rows], [r["answer"] for r in rows],
                      [r["category"] for r in rows], chance)


# --- the registry ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark: how to ask, how to read the answer, how to score (all fixed)."""
  name: str
  prompt: str                  # the prompt template, recorded next to every score
  extraction: str              # the answer-extraction rule, recorded next to every score
  metrics: Callable[[Sequence[Row]], dict[str, float]]
  build_prompt: Callable[[Row], str] | None  # None: the records carry their prompts
  required: tuple[str, ...] = ("index", "question", "answer")
  vlmeval_name: str = ""       # VLMEvalKit's dataset name: the default $LMUData/<name>.tsv
  circular: bool = False       # add rotated copies when the table has none (MMBench)
  aliases: tuple[str, ...] = ()


YES_NO = ("yes_no: lowercase, VQA punctuation rule, split into words; 'yes' without 'no' -> "
          "Yes, 'no' without 'yes' -> No, else Unknown (scored wrong) [VLMEvalKit "
          "YOrN_Extraction, exact matching, no judge]")
OPTION = ("option_letter: the one option letter standing as a word among the last five words "
          "(after .()[],:;!*#{} -> spaces), else the one option whose text the answer contains; "
          "else none (scored wrong) [VLMEvalKit can_infer, exact_matching, no judge]")
MCQ_PROMPT = ("[Hint: {hint}\\n]Question: {question}\\nOptions:\\nA. {A}\\nB. {B}\\n...Please "
              "select the correct answer from the options above. \\n [VLMEvalKit ImageMCQDataset]")
VQA_EXTRACTION = ("vqa_normalize: VQA punctuation rule, lowercase, number words -> digits, "
                  "articles dropped, contractions restored, on prediction and answers")

REGISTRY = {b.name: b for b in (
    Benchmark("pope", "{question} [VLMEvalKit ImageYORNDataset]", YES_NO, pope_metrics,
              lambda r: r["question"], vlmeval_name="POPE"),
    Benchmark("mme", "{question} (MME questions end in 'Please answer yes or no.') [VLMEvalKit "
              "ImageYORNDataset]", YES_NO, mme_metrics, lambda r: r["question"],
              required=("index", "question", "answer", "category", "image_path"),
              vlmeval_name="MME"),
    Benchmark("mmbench", MCQ_PROMPT, OPTION + "; CircularEval over g_index = index mod 1e6 "
              "(a group missing its main row or a rotation is scored wrong: incomplete_groups)",
              circular_metrics, mcq_prompt, vlmeval_name="MMBench_DEV_EN", circular=True,
              aliases=("mmbench_dev_en", "mmbench_dev_en_v11", "mmbench_test_en")),
    Benchmark("seedbench_img", MCQ_PROMPT, OPTION, mcq_metrics, mcq_prompt,
              vlmeval_name="SEEDBench_IMG", aliases=("seed", "seed_img", "seedbench")),
    Benchmark("realworldqa", MCQ_PROMPT, OPTION + "; rows without options: exact match after "
              "lowercase/strip", mcq_metrics, mcq_prompt, vlmeval_name="RealWorldQA"),
    Benchmark("cvbench", "Answer with the option's letter from the given choices directly. "
              "{question}\\nOptions:\\nA. {A}\\n...\\n [AKI eval_cv_bench]",
              "exact: prediction.strip() == answer.strip('()') [AKI eval_cv_bench compares "
              "the raw prediction, without .strip()]",
              cvbench_metrics, cvbench_prompt,
              required=("index", "question", "answer", "source"), aliases=("cv-bench", "cv_bench")),
    Benchmark("scienceqa_img", MCQ_PROMPT, OPTION, mcq_metrics, mcq_prompt,
              vlmeval_name="ScienceQA_TEST", aliases=("scienceqa", "scienceqa_test", "sqa_img")),
    Benchmark("vqav2", "{question}" + VQA_SUFFIX.replace("\n", "\\n") + " [VLMEvalKit VQA]",
              VQA_EXTRACTION + "; accuracy = mean over the leave-one-out subsets of the human "
              "answers (the `answer` list) of min(#matches / 3, 1)", vqa_metrics,
              lambda r: r["question"] + VQA_SUFFIX, aliases=("vqa", "vqa_v2")),
    Benchmark("gqa", "{question}" + VQA_SUFFIX.replace("\n", "\\n") + " [VLMEvalKit VQA]",
              VQA_EXTRACTION + "; exact match with the answer", gqa_metrics,
              lambda r: r["question"] + VQA_SUFFIX, vlmeval_name="GQA_TestDev_Balanced",
              aliases=("gqa_testdev_balanced",)),
    Benchmark("synthetic", "the records' own conversations (mma_jax.data.synthetic, test split)",
              "normalize: lowercase, outer spaces and periods off; exact match",
              synthetic_metrics, None, required=("index", "answer", "category"),
              aliases=("shapes",)),
)}


def get(name: str) -> Benchmark:
  """A benchmark by name or alias (case-insensitive), or a ValueError listing the names."""
  key = name.strip().lower()
  for b in REGISTRY.values():
    if key == b.name or key in b.aliases or key == b.vlmeval_name.lower():
      return b
  raise ValueError(f"Unknown benchmark {name!r}; use one of {sorted(REGISTRY)}.")
