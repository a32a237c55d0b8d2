"""Judge-free benchmark scoring: per benchmark a fixed prompt, a fixed answer extraction and its
metrics, following VLMEvalKit's exact-matching conventions unless an entry says otherwise.

A row is a dict of strings: a VLMEvalKit TSV row (mma_jax.evaluate.vlmeval_tsv) plus `prediction`,
the model's raw answer. Each REGISTRY entry records its prompt template and extraction rule,
and both are written next to every score. Scores are percentages (MME: points, acc% + acc+%
per subtask), except `shapes`, whose accuracies are fractions as in a run's results.json.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import functools
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
# hell, shed, shes, ...) and the capitalised I-forms (never matched after lowercasing) are absent.
_CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
  hadn't've hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am
  mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't
  she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's
  someone'd someone'd've someone'll someone's something'd something'd've something'll that's
  there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't
  we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd
  who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
  y'all'll y'all'd've you'd you'd've you'll you're you've""".split()
# "somebody'd" -> "somebodyd" is the evaluators' own quirk, kept so that scores agree.
_CONTRACTIONS = {w[:i] + w[i + 1:]: w for w in _CONTRACTED for i, c in enumerate(w) if c == "'"}
_CONTRACTIONS["somebody'd"] = "somebodyd"


# Cells pandas reads as missing (read_csv's default na_values). VLMEvalKit loads tables with
# pandas, so such an option or hint does not exist for it and such a prediction is the text 'nan'.
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                       "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                       "nan", "null"})


def cell(row: Row, key: str) -> str:
  """row[key], or '' where the column is absent or the cell is one pandas reads as missing."""
  value = row.get(key)
  return "" if value is None or value in PANDAS_NA else value


def prediction(row: Row) -> str:
  """The prediction as VLMEvalKit scores it: str() of the pandas cell ('nan' when missing)."""
  return cell(row, "prediction") or "nan"


def strip_punctuation(text: str, official: bool = False) -> str:
  """The VQA evaluator's punctuation rule: a mark next to a space (or any mark in a text with a
  digit,digit group) is deleted, otherwise it becomes a space. Periods: VLMEvalKit deletes one
  with no digit on either side ('2.' stays '2.'); the official VQA script (official=True)
  deletes every period not followed by a digit ('2.' -> '2')."""
  joined = re.search(r"\d,\d", text) is not None
  out = text
  for p in _PUNCT:  # the tests look at the original text, as the evaluator does
    out = out.replace(p, "" if joined or p + " " in text or " " + p in text else " ")
  return re.sub(r"\.(?!\d)" if official else r"(?<!\d)\.(?!\d)", "", out)


def digits_articles(text: str) -> str:
  """Lowercase words, number words -> digits, articles dropped, contractions restored."""
  words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa(text: str, official: bool = False) -> str:
  """Standard VQA answer normalisation: whitespace, punctuation (strip_punctuation), then
  digits_articles."""
  text = text.replace("\n", " ").replace("\t", " ").strip()
  return digits_articles(strip_punctuation(text, official))


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
  out = {c: row[c] for c in string.ascii_uppercase if cell(row, c).strip()}
  if not out and cell(row, "choices").strip():
    out = dict(zip(string.ascii_uppercase, answer_list(row["choices"])))
  return out


# Refusals VLMEvalKit reads as option 'Z' (never right), and its verbose-answer pattern.
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE_ANSWER = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)


def _infer_letter(prediction: str, opts: Mapping[str, str]) -> str:
  """The letter step of infer_option: '' when it decides nothing."""
  if "Failed to obtain answer via API" in prediction:
    return ""
  if any(r in prediction for r in _REFUSALS):
    return "Z"
  words = re.sub(r"[.()\[\],:;!*#{}]", " ", prediction).split()
  letters = [c for c in opts if c in words]
  if len(letters) == 1 and words.index(letters[0]) > len(words) - 5:
    return letters[0]
  if not letters and "Z" in words:
    return "Z"
  verbose = _VERBOSE_ANSWER.search(prediction)
  if verbose and verbose.group(1).upper() in opts:
    return verbose.group(1).upper()
  return ""


def infer_option(prediction: str, opts: Mapping[str, str]) -> str:
  """The option a free-form answer picks, 'Z' for a refusal, or '' (VLMEvalKit's can_infer).

  1. Letters (after .()[],:;!*#{} -> spaces): a refusal phrase -> 'Z'; exactly one option
     letter standing as a word, among the last five words -> it; no option letter but a word
     'Z' -> 'Z'; else "(correct) answer is X" anywhere (X in A-D, any case) -> X.
  2. Texts: else exactly one option's text (lowercase) occurs in the answer, which is at most
     twice as long as all option texts together.
  """
  letter = _infer_letter(prediction, opts)
  if letter:
    return letter
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


def vqa_accuracy(prediction: str, answers: Sequence[str], rule: str = "vlmevalkit") -> float:
  """VQA accuracy: min(#other humans giving the answer / 3, 1), averaged over the leave-one-out
  subsets of the human answers (10 choose 9 for VQAv2); a single answer has no other human
  and scores 0, as in both evaluators.

  vlmevalkit: prediction and answers through normalize_vqa. official (the VQA challenge's
  script): the prediction through normalize_vqa(official=True); the answers through the
  punctuation rule alone, and only when the humans disagree (the annotations are normalised)."""
  if rule == "official":
    pred = normalize_vqa(prediction, official=True)
    gts = [strip_punctuation(a, official=True) for a in answers] if len(set(answers)) > 1 \
        else list(answers)
  else:
    pred, gts = normalize_vqa(prediction), [normalize_vqa(a) for a in answers]
  return float(np.mean([min(1.0, sum(g == pred for j, g in enumerate(gts) if j != i) / 3)
                        for i in range(len(gts))]))


def normalize(text: str) -> str:
  """The shapes benchmark's rule: lowercase, outer spaces and periods off, spaces folded."""
  return " ".join(text.lower().strip().strip(".").split())


# --- prompts -----------------------------------------------------------------------------------

def _option_lines(row: Row) -> str:
  return "".join(f"{c}. {v}\n" for c, v in options(row).items())


def mcq_prompt(row: Row) -> str:
  """VLMEvalKit's ImageMCQDataset prompt."""
  hint = cell(row, "hint").strip()
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
    pair = (_truth(row), yes_no(prediction(row)))
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
        yes_no(prediction(row)) == _truth(row))
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
  """infer_option == answer. A row without options (RealWorldQA has open ones) can infer
  nothing and is wrong, as in VLMEvalKit without a judge."""
  return infer_option(prediction(row), options(row)) == row["answer"].strip()


def mcq_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """Vanilla multiple choice: accuracy overall and per split / category / l2-category;
  `open_rows` counts the rows without options (always wrong)."""
  out = grouped_accuracy(rows, [_mcq_hit(r) for r in rows])
  out["open_rows"] = float(sum(not options(r) for r in rows))
  return out


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


def circular_metrics(rows: Sequence[Row], strict: bool = False) -> dict[str, float]:
  """MMBench CircularEval over groups g = index mod 1e6 (main row g, copies g + k * 1e6).

  vlmevalkit (default): a group is scored when its main row is present, and is right when
  every row of it that is present is answered right; copies without their main row are not
  scored (`orphan_rows`). A table without copies so scores its main rows one by one.
  strict (MMBench's CircularEval as defined): a group is right only when the main row and all
  rotations(main) - 1 copies are present and right; a group missing one (a skipped row, a
  truncated table) is scored wrong, reported per the main row's categories (a copy's when the
  main row is missing). Both count groups lacking a row in `incomplete_groups`.
  `noncircular/overall` is the plain accuracy of the main rows present."""
  groups = collections.defaultdict(dict)  # g -> {k: hit}
  first = {}  # g -> (smallest k, its row): the main row when present
  for row in rows:
    k, g = divmod(_int_index(row), CIRCULAR_STRIDE)
    groups[g][k] = _mcq_hit(row)
    if g not in first or k < first[g][0]:
      first[g] = (k, row)
  first = {g: row for g, (_, row) in first.items()}
  complete = {g: 0 in groups[g] and set(range(rotations(first[g]))) <= set(groups[g])
              for g in groups}
  order = sorted(groups) if strict else sorted(g for g in groups if 0 in groups[g])
  hits = [(complete[g] or not strict) and all(groups[g].values()) for g in order]
  out = grouped_accuracy([first[g] for g in order], hits)
  out["noncircular/overall"] = _percent([groups[g][0] for g in order if 0 in groups[g]])
  out["questions"] = float(len(order))
  out["incomplete_groups"] = float(sum(not complete[g] for g in order))
  if not strict:
    out["orphan_rows"] = float(sum(len(groups[g]) for g in groups if 0 not in groups[g]))
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


def vqa_metrics(rows: Sequence[Row], rule: str = "vlmevalkit") -> dict[str, float]:
  """VQAv2 accuracy (%) over the human answers in `answer`, per answer_type / question_type."""
  scores = [vqa_accuracy(prediction(r), answer_list(r["answer"]), rule) for r in rows]
  return grouped_accuracy(rows, scores, ("answer_type", "question_type", "category"))


def gqa_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """GQA accuracy (%), VLMEvalKit's 'accuracy' method: per row the share of its answers equal
  to the prediction after strip() and lower() (one answer: exact match); no VQA normalisation."""
  def hit(row):
    pred = prediction(row).strip().lower()
    return np.mean([a.strip().lower() == pred for a in answer_list(row["answer"])])
  return grouped_accuracy(rows, [hit(r) for r in rows], ("category", "type"))


def shapes_score(predictions: Sequence[str], answers: Sequence[str], types: Sequence[str],
                 chance: Mapping[str, float]) -> dict[str, float]:
  """Exact-match accuracy per question type and overall, yes/no F1 on 'exist' (and on each
  'exist_*' type), chance levels.

  Returns a flat dict: accuracy/<type>, chance/<type>, accuracy/all, f1/exist and
  yes_rate/exist (positive = yes; likewise per exist_* type).
  """
  pairs = collections.defaultdict(list)  # type -> [(prediction, answer)], normalised once
  for pred, ans, qtype in zip(predictions, answers, types, strict=True):
    pairs[qtype].append((normalize(pred), normalize(ans)))
  hits = {t: [p == a for p, a in v] for t, v in pairs.items()}
  out = {f"accuracy/{t}": float(np.mean(h)) for t, h in sorted(hits.items())}
  out.update({f"chance/{t}": float(chance[t]) for t in sorted(hits) if t in chance})
  out["accuracy/all"] = float(np.mean([x for h in hits.values() for x in h])) if hits else 0.0
  # POPE-style F1 and yes rate per existence type (the hard benchmark has exist_<negatives>).
  for kind in sorted(t for t in hits if t == "exist" or t.startswith("exist_")):
    exist = pairs[kind]
    tp = sum(p == "yes" and a == "yes" for p, a in exist)
    fp = sum(p == "yes" and a != "yes" for p, a in exist)
    fn = sum(p != "yes" and a == "yes" for p, a in exist)
    out[f"f1/{kind}"] = 2 * tp / max(2 * tp + fp + fn, 1)
    out[f"yes_rate/{kind}"] = float(np.mean([p == "yes" for p, _ in exist]))
  return out


def shapes_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """shapes_score with chance = the majority-answer rate per question type (`category`)."""
  answers = collections.defaultdict(collections.Counter)
  for r in rows:
    answers[r["category"]][r["answer"]] += 1
  chance = {t: max(c.values()) / sum(c.values()) for t, c in answers.items()}
  return shapes_score([r["prediction"] for r in rows], [r["answer"] for r in rows],
                      [r["category"] for r in rows], chance)


# --- more benchmarks: MMMU, MMStar, HallusionBench, AI2D, MME-RealWorld ---

def report_acc_metrics(rows: Sequence[Row], hits: Sequence[float]) -> dict[str, float]:
  """VLMEvalKit's report_acc: with a `split` column, accuracy (%) per split and, inside each
  split, per category / l2-category (split/<s>/overall, split/<s>/category/<c>, ...); without
  one, overall and category/<c>, l2-category/<c>. `overall` is always the pooled accuracy (a
  number VLMEvalKit does not print when there are several splits)."""
  splits = collections.defaultdict(list)
  for row, h in zip(rows, hits):
    splits[cell(row, "split").strip()].append((row, h))
  if set(splits) <= {""}:
    return grouped_accuracy(rows, hits, ("category", "l2-category"))
  out = {"overall": _percent(hits)}
  for s, pairs in sorted(splits.items()):
    part = grouped_accuracy([r for r, _ in pairs], [h for _, h in pairs],
                            ("category", "l2-category"))
    out.update({f"split/{s or 'none'}/{k}": v for k, v in part.items()})
  return out


def mcq_report_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """Vanilla multiple choice (infer_option == answer), reported as report_acc does."""
  return report_acc_metrics(rows, [_mcq_hit(r) for r in rows])


def mmmu_options(row: Row) -> dict[str, str]:
  """The options MMMU's exact matching scores against: a row without option A (an open
  question) gets A = its answer text, B = 'Other Answers' (other option columns kept)."""
  opts = options(row)
  if "A" not in opts:  # an empty answer leaves A empty, as a NaN in VLMEvalKit
    extra = {"A": row["answer"]} if cell(row, "answer") else {}
    opts = dict(sorted({**opts, **extra, "B": "Other Answers"}.items()))
  return opts


def mmmu_truth(row: Row) -> str:
  """The answer if it is one capital letter, else 'A' (an open question's answer text)."""
  answer = row["answer"]
  return answer if len(answer) == 1 and answer in string.ascii_uppercase else "A"


def mmmu_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """MMMU: open questions scored as two-option questions (mmmu_options, mmmu_truth), then
  infer_option == truth; report_acc per split; `open_rows` counts the open questions."""
  hits = [infer_option(prediction(r), mmmu_options(r)) == mmmu_truth(r) for r in rows]
  out = report_acc_metrics(rows, hits)
  out["open_rows"] = float(sum("A" not in options(r) for r in rows))
  return out


def _hallusion_ids(row: Row) -> tuple[str, str, str]:
  """(set_id, figure_id, question_id): parts 3, 4, 5 of the index split on '_'."""
  parts = str(row["index"]).split("_")
  if len(parts) < 6:
    raise ValueError(f"HallusionBench needs indices like VD_<cat>_<x>_<set>_<figure>_<question>"
                     f" (6 '_'-separated parts); got {row['index']!r}.")
  return parts[3], parts[4], parts[5]


def _hallusion_scores(pairs) -> dict[str, float]:
  """pairs of (row, hit) -> aAcc (% of questions), fAcc (% of figures, keyed l2-category +
  set_id + figure_id, with every question right), qAcc (the same per l2-category + set_id +
  question_id)."""
  figures, questions = collections.defaultdict(list), collections.defaultdict(list)
  for row, h in pairs:
    set_id, figure_id, question_id = _hallusion_ids(row)
    figures[(row["l2-category"], set_id, figure_id)].append(h)
    questions[(row["l2-category"], set_id, question_id)].append(h)
  return {"aAcc": _percent([h for _, h in pairs]),
          "fAcc": _percent([all(v) for v in figures.values()]),
          "qAcc": _percent([all(v) for v in questions.values()])}


def hallusion_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """HallusionBench (VLMEvalKit Hallusion_rating): yes_no(prediction) == answer (as written);
  aAcc / fAcc / qAcc overall and per category and per l2-category."""
  pairs = [(r, yes_no(prediction(r)) == r["answer"]) for r in rows]
  out = {f"overall/{k}": v for k, v in _hallusion_scores(pairs).items()}
  for col in ("category", "l2-category"):
    groups = collections.defaultdict(list)
    for r, h in pairs:
      groups[r[col]].append((r, h))
    for g, sub in sorted(groups.items()):
      out.update({f"{col}/{g}/{k}": v for k, v in _hallusion_scores(sub).items()})
  return out


MME_REALWORLD_SYS = ("Select the best answer to the above multiple-choice question based on the "
                     "image. Respond with only the letter (A, B, C, D, or E) of the correct "
                     "option. \nThe best answer is:")


def mme_realworld_prompt(row: Row) -> str:
  """question + ' ' + the `multi-choice options` cell + '\\n' + MME_REALWORLD_SYS; without that
  cell, it is rebuilt as VLMEvalKit writes it ('The choices are listed below:\\n(A) ...')."""
  choices = cell(row, "multi-choice options")
  if not choices:
    choices = "The choices are listed below:\n" + "\n".join(
        f"({c}) {v}" for c, v in options(row).items())
  return f"{row['question']} {choices}\n{MME_REALWORLD_SYS}"


_MME_RW_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                    "The best option is", "The correct option is", "Best answer:",
                    "Best option:")


def mme_realworld_letter(text: str) -> str:
  """VLMEvalKit's extract_characters_regex (after its <answer>...</answer> step): '' or a
  letter A-E."""
  tagged = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
  if tagged:
    text = tagged.group(1).strip().upper()
  text = text.strip()
  for prefix in _MME_RW_PREFIXES:
    text = text.replace(prefix, "")
  letter = re.search(r"[ABCDE]", text)
  if letter:
    return letter.group(0)
  if len(text.split()) > 10:
    return ""
  # No capital A-E: the answer (lowercase) inside '(a)', ..., '(e)' ('' and 'a' give 'A').
  return next((c for c in "ABCDE" if text.lower() in f"({c.lower()})"), "")


def mme_realworld_metrics(rows: Sequence[Row]) -> dict[str, float]:
  """MME-RealWorld (VLMEvalKit get_dimension_rating), accuracy (%) of mme_realworld_letter ==
  answer: overall, <task>/avg, <task>/<subtask>/avg and <task>/<subtask>/<l2-category> (task
  and subtask = `category` split on '/'; an l2-category containing 'attribute' becomes
  '<its first '/' part>/attribute', lowercase)."""
  hits = collections.defaultdict(list)  # (task, subtask, l2) -> hits
  for row in rows:
    parts = row["category"].split("/")
    if len(parts) < 2:
      raise ValueError(f"MME-RealWorld categories are <task>/<subtask>; row {row['index']} has "
                       f"{row['category']!r}.")
    l2 = row["l2-category"].lower()
    if "attribute" in l2:
      l2 = l2.split("/")[0] + "/attribute"
    hits[(parts[0], parts[1], l2)].append(mme_realworld_letter(prediction(row)) == row["answer"])
  by_task, by_subtask = collections.defaultdict(list), collections.defaultdict(list)
  for (t, s, _), v in hits.items():
    by_task[t] += v
    by_subtask[(t, s)] += v
  out = {"overall": _percent([h for v in by_task.values() for h in v])}
  for (t, sub, c), v in sorted(hits.items()):  # each average before the groups inside it
    out.setdefault(f"{t}/avg", _percent(by_task[t]))
    out.setdefault(f"{t}/{sub}/avg", _percent(by_subtask[(t, sub)]))
    out[f"{t}/{sub}/{c}"] = _percent(v)
  return out


# Appended to MCQ_PROMPT / OPTION / YES_NO (defined with the registry) in the entries.
MMMU_PROMPT_NOTE = ("; open questions: no Options lines [VLMEvalKit MMMUDataset; its '<image k>'"
                    " markers stay text and all images come first]")
MMMU_RULE = ("; open questions (no option A) are scored with A = the answer text, B = 'Other "
             "Answers' and truth 'A' (any answer that is not one capital letter becomes 'A') "
             "[VLMEvalKit MMMU_preproc, mcq_vanilla_eval]; report_acc per split")
HALLUSION_RULE = ("; right iff == answer; aAcc = questions, fAcc = figures (l2-category, "
                  "set_id, figure_id = index parts 3, 4 of '_') with all questions right, qAcc "
                  "= question pairs (l2-category, set_id, question_id = index part 5) all right"
                  " [VLMEvalKit Hallusion_rating]")
MME_REALWORLD_EXTRACTION = (
    "extract_characters_regex: inside <answer>...</answer> if present (upper-cased); strip; "
    "delete 'The best answer is', 'The correct answer is', 'The answer is', 'The answer', "
    "'The best option is', 'The correct option is', 'Best answer:', 'Best option:'; the first "
    "capital A-E anywhere; else none if over 10 words; else the letter whose '(x)' contains "
    "the lowercased answer; else none (wrong) [VLMEvalKit MMERealWorld.evaluate, "
    "get_dimension_rating]")


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
  # Other named rules (e.g. a benchmark's official evaluator): name -> (extraction, metrics).
  # `extraction` and `metrics` above are the default rule, DEFAULT_RULE.
  other_rules: Mapping[str, tuple[str, Callable[[Sequence[Row]], dict[str, float]]]] = \
      dataclasses.field(default_factory=dict)

  @property
  def rules(self) -> tuple[str, ...]:
    return (DEFAULT_RULE, *self.other_rules)

  def scorer(self, rule: str = "") -> tuple[str, Callable[[Sequence[Row]], dict[str, float]]]:
    """(extraction rule text, metrics function) of a rule ('' = the default), or ValueError."""
    if rule in ("", DEFAULT_RULE):
      return self.extraction, self.metrics
    if rule not in self.other_rules:
      raise ValueError(f"Benchmark {self.name!r} has no scoring rule {rule!r}; its rules are "
                       f"{list(self.rules)} (--rule / config.eval.rule).")
    return self.other_rules[rule]


# Every benchmark scores as VLMEvalKit's current code does unless another rule is asked for.
DEFAULT_RULE = "vlmevalkit"
RULES = (DEFAULT_RULE, "official", "strict")


YES_NO = ("yes_no: lowercase, VQA punctuation rule, split into words; 'yes' without 'no' -> "
          "Yes, 'no' without 'yes' -> No, else Unknown (scored wrong) [VLMEvalKit "
          "YOrN_Extraction, exact matching, no judge]")
OPTION = ("option_letter: a refusal -> Z; the one option letter standing as a word among the "
          "last five words (after .()[],:;!*#{} -> spaces); else Z as a word -> Z; else '(correct)"
          " answer is X' anywhere; else the one option whose text the answer contains; else "
          "none (scored wrong) [VLMEvalKit can_infer, exact_matching, no judge]")
MCQ_PROMPT = ("[Hint: {hint}\\n]Question: {question}\\nOptions:\\nA. {A}\\nB. {B}\\n...Please "
              "select the correct answer from the options above. \\n [VLMEvalKit ImageMCQDataset]")
VQA_EXTRACTION = ("vqa_normalize: VQA punctuation rule (a period with no digit on either side "
                  "deleted: '2.' stays), lowercase, number words -> digits, articles dropped, "
                  "contractions restored, on prediction and answers")

REGISTRY = {b.name: b for b in (
    Benchmark("pope", "{question} [VLMEvalKit ImageYORNDataset]", YES_NO, pope_metrics,
              lambda r: r["question"], vlmeval_name="POPE"),
    Benchmark("mme", "{question} (MME questions end in 'Please answer yes or no.') [VLMEvalKit "
              "ImageYORNDataset]", YES_NO, mme_metrics, lambda r: r["question"],
              required=("index", "question", "answer", "category", "image_path"),
              vlmeval_name="MME"),
    Benchmark("mmbench", MCQ_PROMPT, OPTION + "; CircularEval over g_index = index mod 1e6: "
              "a group with its main row is right when all its rows present are right; copies "
              "without a main row are not scored (orphan_rows) [VLMEvalKit mcq_circular_eval]",
              circular_metrics, mcq_prompt, vlmeval_name="MMBench_DEV_EN", circular=True,
              aliases=("mmbench_dev_en", "mmbench_dev_en_v11", "mmbench_test_en"),
              other_rules={"strict": (
                  OPTION + "; strict CircularEval: a group is right only with its main row and "
                  "every rotation present and right; a group missing one is wrong "
                  "(incomplete_groups)", functools.partial(circular_metrics, strict=True))}),
    Benchmark("seedbench_img", MCQ_PROMPT, OPTION, mcq_metrics, mcq_prompt,
              vlmeval_name="SEEDBench_IMG", aliases=("seed", "seed_img", "seedbench")),
    Benchmark("realworldqa", MCQ_PROMPT, OPTION + "; rows without options cannot be inferred "
              "and are wrong (open_rows) [VLMEvalKit without a judge]", mcq_metrics, mcq_prompt,
              vlmeval_name="RealWorldQA"),
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
              "answers (the `answer` list) of min(#matches / 3, 1) [VLMEvalKit process_line "
              "vqa_score]", vqa_metrics, lambda r: r["question"] + VQA_SUFFIX,
              vlmeval_name="VQAv2_VAL", aliases=("vqa", "vqa_v2"),
              other_rules={"official": (
                  "the VQA challenge's script: prediction normalised (every period not before a "
                  "digit deleted, '2.' -> '2'), human answers through the punctuation rule only "
                  "when they differ; leave-one-out min(#matches / 3, 1)",
                  functools.partial(vqa_metrics, rule="official"))}),
    Benchmark("gqa", "{question}" + VQA_SUFFIX.replace("\n", "\\n") + " [VLMEvalKit VQA]",
              "accuracy: prediction.strip().lower() == answer.strip().lower(), no VQA "
              "normalisation [VLMEvalKit process_line 'accuracy' for GQA]", gqa_metrics,
              lambda r: r["question"] + VQA_SUFFIX, vlmeval_name="GQA_TestDev_Balanced",
              aliases=("gqa_testdev_balanced",)),
    Benchmark("shapes", "the records' own conversations (mma_jax.data.shapes, test split)",
              "normalize: lowercase, outer spaces and periods off; exact match",
              shapes_metrics, None, required=("index", "answer", "category"),
              aliases=("shapes",)),
    Benchmark("records", "the records' own conversations (the imported sources' split)",
              "normalize: lowercase, outer spaces and periods off; exact match; per source "
              "(category); chance = the majority answer's rate", shapes_metrics, None,
              required=("index", "answer", "category")),
    Benchmark("mmmu", MCQ_PROMPT + MMMU_PROMPT_NOTE, OPTION + MMMU_RULE, mmmu_metrics, mcq_prompt,
              vlmeval_name="MMMU_DEV_VAL", aliases=("mmmu_val", "mmmu_dev_val")),
    Benchmark("mmstar", MCQ_PROMPT, OPTION + "; report_acc", mcq_report_metrics, mcq_prompt,
              vlmeval_name="MMStar"),
    Benchmark("hallusionbench", "{question} [VLMEvalKit ImageYORNDataset]", YES_NO + HALLUSION_RULE,
              hallusion_metrics, lambda r: r["question"],
              required=("index", "question", "answer", "category", "l2-category"),
              vlmeval_name="HallusionBench", aliases=("hallusion",)),
    Benchmark("ai2d", MCQ_PROMPT, OPTION + "; report_acc", mcq_report_metrics, mcq_prompt,
              vlmeval_name="AI2D_TEST", aliases=("ai2d_test",)),
    Benchmark("mme_realworld", "{question} {multi-choice options}\\n" + MME_REALWORLD_SYS.replace(
              "\n", "\\n") + " [VLMEvalKit MMERealWorld]", MME_REALWORLD_EXTRACTION,
              mme_realworld_metrics, mme_realworld_prompt,
              required=("index", "question", "answer", "category", "l2-category"),
              vlmeval_name="MME-RealWorld", aliases=("mme-realworld", "mmerealworld")),
)}


def parse_list(spec: str) -> list[tuple[str, str]]:
  """config.eval.benchmarks 'pope,mme=/data/MME.tsv' -> [(name, TSV path or '')]; '' = the
  default $LMUData/<VLMEvalKit name>.tsv. Unknown names are a ValueError naming the key."""
  out = []
  for item in filter(None, (x.strip() for x in spec.split(","))):
    name, _, path = item.partition("=")
    try:
      out.append((get(name).name, path.strip()))
    except ValueError as e:
      raise ValueError(f"config.eval.benchmarks={spec!r}: {e}") from None
  return out


# Every name `get` accepts, lowercase.
NAMES = frozenset(n.lower() for b in REGISTRY.values()
                  for n in (b.name, *b.aliases, b.vlmeval_name) if n)


def get(name: str) -> Benchmark:
  """A benchmark by name or alias (case-insensitive), or a ValueError listing the names."""
  key = name.strip().lower()
  for b in REGISTRY.values():
    if key == b.name or key in b.aliases or key == b.vlmeval_name.lower():
      return b
  raise ValueError(f"Unknown benchmark {name!r}; use one of {sorted(REGISTRY)}.")
