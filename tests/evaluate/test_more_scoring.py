"""MMMU, MMStar, HallusionBench, AI2D and MME-RealWorld scoring against hand-computed tables
(VLMEvalKit's exact-matching rules, no judge), and one table through the CLI scorer."""
import csv
import json

import pytest

from mma_jax.evaluate import runner
from mma_jax.evaluate import scoring as bm


def test_new_benchmarks_are_registered_under_their_vlmevalkit_names():
  for name, vlmeval in [("mmmu", "MMMU_DEV_VAL"), ("mmstar", "MMStar"),
                        ("hallusionbench", "HallusionBench"), ("ai2d", "AI2D_TEST"),
                        ("mme_realworld", "MME-RealWorld")]:
    b = bm.get(vlmeval)
    assert b.name == name and b.vlmeval_name == vlmeval and b.prompt and b.extraction
    assert name in bm.NAMES and vlmeval.lower() in bm.NAMES
  assert bm.get("mmmu_val").name == "mmmu" and bm.get("hallusion").name == "hallusionbench"


# --- MMMU --------------------------------------------------------------------------------------

def mmmu_row(index, split, category, answer, pred, **opts):
  return dict(index=str(index), split=split, category=category, question="q", answer=answer,
              prediction=pred, **opts)


def test_mmmu_open_questions_become_two_option_questions():
  open_q = mmmu_row(3, "validation", "Math", "3.5", "3.5")
  assert bm.mmmu_options(open_q) == {"A": "3.5", "B": "Other Answers"}
  assert bm.mmmu_truth(open_q) == "A"
  mcq = mmmu_row(1, "validation", "Art", "B", "B", A="cat", B="dog")
  assert bm.mmmu_options(mcq) == {"A": "cat", "B": "dog"} and bm.mmmu_truth(mcq) == "B"
  # The prompt of an open question has no Options lines.
  assert "Options" not in bm.get("mmmu").build_prompt(open_q)
  assert "A. cat\nB. dog\n" in bm.get("mmmu").build_prompt(mcq)


def test_mmmu_metrics_per_split_as_report_acc():
  rows = [
      mmmu_row(1, "validation", "Art", "B", "B", A="cat", B="dog"),    # B == B: right
      mmmu_row(2, "validation", "Art", "A", "dog", A="cat", B="dog"),  # text 'dog' -> B: wrong
      # Open: options A='3.5', B='Other Answers', truth A. '3.5' contains '3.5' -> A: right.
      mmmu_row(3, "validation", "Math", "3.5", "3.5"),
      # 'The answer is 3.5': no letter word ('3.5' -> '3 5'), 17 chars <= 2 * (3 + 13): the
      # text '3.5' is in it -> A: right.
      mmmu_row(4, "validation", "Math", "3.5", "The answer is 3.5"),
      mmmu_row(5, "dev", "Math", "12", "13"),  # neither '12' nor 'other answers': wrong
      mmmu_row(6, "dev", "Math", "12", "A"),   # the letter A is read as option A: right
  ]
  m = bm.mmmu_metrics(rows)
  # validation 3/4, of which Art 1/2, Math 2/2; dev 1/2 (Math 1/2); pooled 4/6.
  assert m == pytest.approx({
      "overall": 400 / 6, "open_rows": 4.0,
      "split/validation/overall": 75.0, "split/validation/category/Art": 50.0,
      "split/validation/category/Math": 100.0,
      "split/dev/overall": 50.0, "split/dev/category/Math": 50.0})


def test_mmmu_without_split_reports_categories_and_non_letter_mcq_truth_is_a():
  rows = [mmmu_row(1, "", "Art", "B", "(B)", A="cat", B="dog"),
          mmmu_row(2, "", "Bio", "dog", "B", A="cat", B="dog")]  # truth 'A' (not a letter)
  m = bm.mmmu_metrics(rows)
  assert m == pytest.approx({"overall": 50.0, "category/Art": 100.0, "category/Bio": 0.0,
                             "open_rows": 0.0})


# --- MMStar and AI2D ---------------------------------------------------------------------------

def test_mmstar_per_category_and_l2_category():
  rows = [
      dict(index="1", question="q", answer="A", prediction="A", A="x", B="y",
           category="coarse perception", **{"l2-category": "image scene"}),    # right
      dict(index="2", question="q", answer="B", prediction="(B) y", A="x", B="y",
           category="coarse perception", **{"l2-category": "image style"}),    # right
      dict(index="3", question="q", answer="D", prediction="C", A="1", B="2", C="3", D="4",
           category="math", **{"l2-category": "numeric"}),                     # wrong
  ]
  m = bm.get("mmstar").metrics(rows)
  assert m == pytest.approx({"overall": 200 / 3, "category/coarse perception": 100.0,
                             "category/math": 0.0, "l2-category/image scene": 100.0,
                             "l2-category/image style": 100.0, "l2-category/numeric": 0.0})


def test_ai2d_vanilla_mcq():
  rows = [dict(index="1", question="q", answer="C", prediction="The answer is C.",
               A="leaf", B="root", C="stem", D="seed", category="plants"),  # right
          dict(index="2", question="q", answer="A", prediction="root",
               A="leaf", B="root", C="stem", D="seed", category="plants"),  # text -> B: wrong
          dict(index="3", question="q", answer="A", prediction="I cannot tell",
               A="leaf", B="root", category="cells")]                       # nothing: wrong
  m = bm.get("ai2d").metrics(rows)
  assert m == pytest.approx({"overall": 100 / 3, "category/plants": 50.0, "category/cells": 0.0})
  assert bm.get("ai2d").build_prompt(rows[0]).startswith("Question: q\nOptions:\nA. leaf\n")


# --- HallusionBench ----------------------------------------------------------------------------

def hall_row(index, answer, pred):
  category, l2 = index.split("_")[:2]
  return {"index": index, "question": "q", "answer": answer, "prediction": pred,
          "category": category, "l2-category": l2}


HALLUSION = [
    # index: <category>_<l2>_<x>_<set>_<figure>_<question>
    hall_row("VD_figure_0_0_0_0", "Yes", "Yes"),           # right
    hall_row("VD_figure_0_0_1_0", "No", "No, it isn't."),  # right
    hall_row("VD_figure_0_0_0_1", "No", "Yes"),            # wrong
    hall_row("VD_figure_0_0_1_1", "Yes", "yes."),          # right
    hall_row("VS_chart_0_1_0_0", "Yes", "I'm not sure"),   # Unknown: wrong
]


def test_hallusion_question_figure_and_pair_accuracy():
  m = bm.hallusion_metrics(HALLUSION)
  # aAcc: 3 of 5 questions. fAcc, figures (l2, set, figure): (figure,0,0) = [right, wrong],
  # (figure,0,1) = [right, right], (chart,1,0) = [wrong] -> 1/3. qAcc, questions
  # (l2, set, question): (figure,0,0) = [right, right], (figure,0,1) = [wrong, right],
  # (chart,1,0) = [wrong] -> 1/3. VD alone: 3/4, 1/2, 1/2; VS alone: 0, 0, 0.
  expected = {"overall/aAcc": 60.0, "overall/fAcc": 100 / 3, "overall/qAcc": 100 / 3}
  for prefix, (a, f, q) in {"category/VD": (75, 50, 50), "category/VS": (0, 0, 0),
                            "l2-category/figure": (75, 50, 50),
                            "l2-category/chart": (0, 0, 0)}.items():
    expected.update({f"{prefix}/aAcc": a, f"{prefix}/fAcc": f, f"{prefix}/qAcc": q})
  assert m == pytest.approx(expected)


def test_hallusion_needs_six_part_indices():
  with pytest.raises(ValueError, match="HallusionBench needs indices"):
    bm.hallusion_metrics([hall_row("VD_figure_0_0", "Yes", "Yes")])


def test_hallusion_through_the_cli_scorer(tmp_path):
  path = tmp_path / "HallusionBench.tsv"
  columns = ["index", "question", "answer", "category", "l2-category", "prediction"]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, columns, delimiter="\t")
    w.writeheader()
    w.writerows(HALLUSION)
  results = runner.score_file("HallusionBench", str(path))
  assert results["metrics"]["overall/aAcc"] == pytest.approx(60.0)
  assert results["metrics"]["overall/fAcc"] == pytest.approx(100 / 3)
  assert results["metrics"]["overall/qAcc"] == pytest.approx(100 / 3)
  assert results["extraction"] == bm.get("hallusionbench").extraction
  written = json.loads((tmp_path / "hallusionbench_results.json").read_text())
  assert written["metrics"] == pytest.approx(results["metrics"])


# --- MME-RealWorld -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("(B)", "B"), ("B", "B"), ("The best answer is C", "C"), ("The answer is (D).", "D"),
    ("The answer: E", "E"), ("Best option: (A)", "A"), ("<answer>b</answer>", "B"),
    # Over 10 words and no capital A-E: nothing.
    ("the red car is parked near the tree on the left side of the road", ""),
    # Few words, no capital A-E: the letter whose '(x)' contains the lowercase answer.
    ("red car", ""), ("a", "A"), ("(c)", "C"), ("", "A"), ("nan", ""),
    # The first capital A-E anywhere, even inside a word ('Because' -> B).
    ("Because the sign says stop", "B"),
    ("I think that the correct one here is option E for sure ok", "E")])
def test_mme_realworld_extraction(text, expected):
  assert bm.mme_realworld_letter(text) == expected


def test_mme_realworld_prompt():
  row = {"question": "What color is the car?", "A": "red", "B": "blue",
         "multi-choice options": "The choices are listed below:\n(A) red\n(B) blue"}
  expected = ("What color is the car? The choices are listed below:\n(A) red\n(B) blue\n"
              "Select the best answer to the above multiple-choice question based on the image. "
              "Respond with only the letter (A, B, C, D, or E) of the correct option. \n"
              "The best answer is:")
  assert bm.mme_realworld_prompt(row) == expected
  # Without the cell, it is rebuilt from the option columns.
  del row["multi-choice options"]
  assert bm.mme_realworld_prompt(row) == expected


def test_mme_realworld_dimension_rating():
  def row(i, category, l2, answer, pred):
    return {"index": str(i), "question": "q", "answer": answer, "prediction": pred,
            "category": category, "l2-category": l2}
  rows = [
      row(1, "Perception/Remote Sensing", "color", "B", "(B)"),                     # right
      row(2, "Perception/Remote Sensing", "Vehicle/attribute/color", "C",
          "The best answer is C"),                                                  # right
      row(3, "Perception/Remote Sensing", "Vehicle/attribute/orientation", "A",
          "the vehicle in the picture is facing towards the upper part of it"),    # none: wrong
      row(4, "Perception/OCR with Complex Context", "license", "D", "D"),           # right
      row(5, "Reasoning/Monitoring", "intention", "A", "E"),                        # wrong
      row(6, "Reasoning/Monitoring", "intention", "A", "a"),                        # right
  ]
  m = bm.mme_realworld_metrics(rows)
  # Both attribute l2-categories become 'vehicle/attribute' (1 of 2). Perception 3/4,
  # Remote Sensing 2/3, OCR 1/1; Reasoning 1/2; overall 4/6.
  assert m == pytest.approx({
      "overall": 400 / 6,
      "Perception/avg": 75.0,
      "Perception/OCR with Complex Context/avg": 100.0,
      "Perception/OCR with Complex Context/license": 100.0,
      "Perception/Remote Sensing/avg": 200 / 3,
      "Perception/Remote Sensing/color": 100.0,
      "Perception/Remote Sensing/vehicle/attribute": 50.0,
      "Reasoning/avg": 50.0, "Reasoning/Monitoring/avg": 50.0,
      "Reasoning/Monitoring/intention": 50.0})
