"""Benchmark scoring against hand-computed values: extraction rules and metrics, no model."""
import pytest

from mma_jax.evaluate import scoring as bm


def rows(*specs, **common):
  return [dict(common, **s) for s in specs]


# --- extraction --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Two dogs.", "2 dogs"), ("The cat!", "cat"), ("3.5", "3.5"), ("dont", "don't"),
    ("couldnt've", "couldn't've"), ("a man, (left)", "man left"), ("1,000", "1000"),
    ("yes-no", "yes no"), ("  None\n", "0"), ("its", "its")])
def test_vqa_normalisation(text, expected):
  assert bm.normalize_vqa(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Yes", "Yes"), ("yes, there is.", "Yes"), ("No.", "No"), ("Yes and no", "Unknown"),
    ("I cannot tell", "Unknown"), ("Nope", "Unknown")])
def test_yes_no_extraction(text, expected):
  assert bm.yes_no(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("The answer is B.", "B"), ("(C) bird", "C"), ("dog", "B"),
    ("A or B", ""),  # two letters and no option text
    ("B is right, as one can see from all of the many visual clues", ""),  # letter not near end
    ("a bird or a dog", ""),  # two option texts
    ("I think this picture shows a dog", "")])  # longer than twice the option texts
def test_option_inference(text, expected):
  assert bm.infer_option(text, {"A": "cat", "B": "dog", "C": "bird"}) == expected


@pytest.mark.parametrize("text,expected", [
    # Verbose answers: "(correct) answer is X" anywhere, any case, bold allowed.
    ("The correct answer is **C**. Here is why: birds have feathers and lay eggs, not cats.", "C"),
    ("After looking at every part of the picture closely, the answer is b for sure now", "B"),
    ("A careful look shows it; the answer is C, not A", "C"),  # two letters: the phrase decides
    # Two options named, no phrase: nothing.
    ("A or B", ""), ("either a cat or a dog", ""),
    # Option text instead of a letter; an empty answer; the text 'nan' of an empty cell.
    ("a dog", "B"), ("", ""), ("nan", ""),
    # Z as a word (no option letter) and refusals: 'Z', never right; Z shadows the text rule.
    ("Z", "Z"), ("Z dog", "Z"), ("Cannot determine the answer from this dog picture", "Z"),
    # "answer is" followed by a word beginning with A-D is read as that letter, as VLMEvalKit does.
    ("I would say the answer is dog", "D"),
    ("answer is B", "B"), ("B.", "B"), ("(B)", "B"), ("**B**", "B")])
def test_option_inference_vlmevalkit_hard_cases(text, expected):
  opts = {"A": "cat", "B": "dog", "C": "bird", "D": "cow"}
  assert bm.infer_option(text, opts) == expected


def test_predictions_and_options_as_pandas_reads_them():
  # An empty or 'None' prediction cell is NaN for pandas, scored as the text 'nan'.
  assert bm.prediction({"prediction": ""}) == "nan" == bm.prediction({"prediction": "None"})
  assert bm.prediction({}) == "nan" and bm.prediction({"prediction": "none"}) == "none"
  # An option cell 'NA' does not exist for VLMEvalKit (prompt and extraction alike).
  assert bm.options({"A": "cat", "B": "NA", "C": "dog"}) == {"A": "cat", "C": "dog"}
  m = bm.mcq_metrics([dict(mcq(1, "A", "x", A="an", B="dog"), prediction=""),
                      dict(mcq(2, "B", "x", A="cat", B="dog"), prediction="")])
  assert m["overall"] == 50  # 'nan' contains the option text 'an' of row 1


@pytest.mark.parametrize("text,expected", [
    ("a no", "No"), ("Yes!", "Yes"), ("No, there is not.", "No"), ("yes/no", "Unknown"),
    ("", "Unknown"), ("YES.", "Yes"), ("Answer: no", "No")])
def test_yes_no_hard_cases(text, expected):
  assert bm.yes_no(text) == expected


@pytest.mark.parametrize("text,vlmevalkit,official", [
    ("2.", "2.", "2"), ("2.5", "2.5", "2.5"), ("Two.", "2", "2"), ("e.g.", "eg", "eg"),
    ("3. apples", "3. apples", "3 apples"), ("shes", "shes", "shes"),
    ("somebody'd", "somebodyd", "somebodyd"), ("Dont!", "don't", "don't")])
def test_vqa_normalisation_vlmevalkit_vs_official(text, vlmevalkit, official):
  assert bm.normalize_vqa(text) == vlmevalkit
  assert bm.normalize_vqa(text, official=True) == official


def test_vqav2_rules_differ_on_a_period_after_a_digit():
  answers = ["2"] * 10
  assert bm.vqa_accuracy("2.", answers) == 0.0  # VLMEvalKit keeps '2.'
  assert bm.vqa_accuracy("2.", answers, rule="official") == 1.0
  # Official: answers all equal are compared raw (they are normalised annotations).
  assert bm.vqa_accuracy("two", ["two"] * 10, rule="official") == 0.0
  assert bm.vqa_accuracy("two", ["two"] * 10) == 1.0
  assert bm.vqa_accuracy("red", ["red"]) == 0.0  # one answer: no other human agrees
  rows = [{"answer": str(answers), "prediction": "2."}]
  assert bm.get("vqav2").scorer("official")[1](rows)["overall"] == 100
  assert bm.get("vqav2").metrics(rows)["overall"] == 0


def test_vqa_accuracy_over_leave_one_out_subsets():
  three_red = ["red"] * 3 + ["blue"] * 7
  # Leaving out one of the 3 'red' leaves 2 -> 2/3; leaving out a 'blue' leaves 3 -> 1.
  assert bm.vqa_accuracy("Red.", three_red) == pytest.approx((3 * 2 / 3 + 7) / 10)
  two_red = ["red"] * 2 + ["blue"] * 8
  assert bm.vqa_accuracy("red", two_red) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
  assert bm.vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0
  assert bm.vqa_accuracy("two", ["2"] * 10) == 1.0
  assert bm.vqa_accuracy("green", three_red) == 0.0


# --- metrics -----------------------------------------------------------------------------------

def test_pope_per_split_and_overall():
  m = bm.pope_metrics([
      {"answer": "Yes", "prediction": "Yes, there is.", "category": "adversarial,popular"},
      {"answer": "No", "prediction": "yes", "category": "adversarial"},
      {"answer": "Yes", "prediction": "No.", "category": "popular"},
      {"answer": "No", "prediction": "I am not sure", "category": "random"},
      {"answer": "No", "prediction": "no", "category": "random"}])
  # Overall over the 6 (row, split) pairs: tp 2, fp 1, fn 1, 3 right, 3 said yes.
  assert m["overall/accuracy"] == pytest.approx(50)
  assert m["overall/precision"] == pytest.approx(200 / 3)
  assert m["overall/recall"] == pytest.approx(200 / 3)
  assert m["overall/f1"] == pytest.approx(200 / 3)
  assert m["overall/yes_ratio"] == pytest.approx(50)
  assert (m["adversarial/precision"], m["adversarial/recall"]) == (50, 100)
  assert m["adversarial/f1"] == pytest.approx(200 / 3) and m["adversarial/yes_ratio"] == 100
  assert (m["popular/precision"], m["popular/recall"]) == (100, 50)
  assert m["random/f1"] == 0 and m["random/accuracy"] == 50 and m["random/yes_ratio"] == 0


def test_mme_acc_acc_plus_and_totals():
  m = bm.mme_metrics(
      rows({"answer": "Yes", "prediction": "Yes", "image_path": "a"},
           {"answer": "No", "prediction": "No", "image_path": "a"},
           {"answer": "Yes", "prediction": "Yes.", "image_path": "b"},
           {"answer": "No", "prediction": "Yes", "image_path": "b"}, category="color")
      + rows({"answer": "Yes", "prediction": "yes", "image_path": "c"},
             {"answer": "No", "prediction": "no", "image_path": "c"}, category="code_reasoning")
      + rows({"answer": "Yes", "prediction": "no", "image_path": "d"},
             {"answer": "No", "prediction": "maybe", "image_path": "d"}, category="OCR"))
  assert (m["color/acc"], m["color/acc_plus"], m["color/score"]) == (75, 50, 125)
  assert m["code_reasoning/score"] == 200 and m["OCR/score"] == 0
  assert m["perception"] == 125 and m["perception/subtasks"] == 2
  assert m["cognition"] == 200 and m["cognition/subtasks"] == 1
  assert m["incomplete_images"] == 0


def test_mme_image_that_lost_a_question_is_not_acc_plus():
  m = bm.mme_metrics(rows(
      {"answer": "Yes", "prediction": "Yes", "image_path": "a"},  # its 'No' question is gone
      {"answer": "Yes", "prediction": "Yes", "image_path": "b"},
      {"answer": "No", "prediction": "No", "image_path": "b"},
      {"answer": "No", "prediction": "No", "image_path": "c"},  # three questions: not MME's
      {"answer": "No", "prediction": "No", "image_path": "c"},
      {"answer": "No", "prediction": "No", "image_path": "c"}, category="color"))
  assert m["color/acc"] == 100 and m["color/acc_plus"] == pytest.approx(100 / 3)
  assert m["incomplete_images"] == 2


def mcq(index, answer, category, **opts):
  return {"index": str(index), "question": f"q{index}", "answer": answer,
          "category": category, **opts}


def test_circular_evaluation_with_an_inconsistent_answerer():
  table = bm.circularize([mcq(1, "B", "x", A="cat", B="dog", C="bird", D="cow"),
                          mcq(2, "A", "y", A="red", B="blue", C="green", D="pink")])
  assert len(table) == 8
  assert sorted(int(r["index"]) for r in table) == [
      1, 2, 1000001, 1000002, 2000001, 2000002, 3000001, 3000002]
  truth = {"1": "dog", "2": "red"}
  for r in table:  # every rotation keeps the right text behind its answer letter
    assert r[r["answer"]] == truth[str(int(r["index"]) % 1_000_000)]
  assert len({tuple(r[c] for c in "ABCD") for r in table}) == 8
  assert bm.circularize(table) == table  # a table with copies stays as it is

  # Question 1: always the right option's text (consistent). Question 2: always "A", right
  # only in the rotation where the answer is A.
  def answer(r):
    return truth["1"] if r["index"].endswith("1") else "A"

  m = bm.circular_metrics([dict(r, prediction=answer(r)) for r in table])
  assert m["overall"] == 50 and m["category/x"] == 100 and m["category/y"] == 0
  assert m["noncircular/overall"] == 100  # both main rows alone look right
  assert m["questions"] == 2
  vanilla = bm.mcq_metrics([dict(r, prediction=answer(r)) for r in table])
  assert vanilla["overall"] == pytest.approx(100 * 5 / 8)


def test_strict_circular_groups_missing_a_rotation_or_the_main_row_are_wrong_and_counted():
  table = bm.circularize([mcq(1, "B", "x", A="cat", B="dog", C="bird"),
                          mcq(2, "A", "x", A="red", B="blue", C="green"),
                          mcq(3, "A", "y", A="sun", B="moon", C="star")])
  assert [bm.rotations(r) for r in table[:3]] == [3, 3, 3]
  assert bm.rotations(mcq(4, "E", "x", A="a", B="b")) == 1  # answer not an option: no copies
  right = {r["index"]: dict(r, prediction=r["answer"]) for r in table}
  # 1: complete, all right. 2: the one wrong rotation was lost (a skipped row). 3: copies only.
  answered = [right[i] for i in ("1", "1000001", "2000001", "2", "1000002", "1000003",
                                 "2000003")]
  m = bm.circular_metrics(answered, strict=True)
  assert m["questions"] == 3 and m["incomplete_groups"] == 2
  assert m["overall"] == pytest.approx(100 / 3)  # only question 1 counts as right
  assert m["category/x"] == 50 and m["category/y"] == 0  # 3 reported by its copies' category
  assert m["noncircular/overall"] == 100  # main rows 1 and 2, both right
  complete = bm.circular_metrics(list(right.values()), strict=True)
  assert complete["overall"] == 100 and complete["incomplete_groups"] == 0
  # A question that cannot be rotated is complete alone (circularize adds no copies).
  lone = bm.circular_metrics([dict(mcq(4, "A", "x", A="a", B="b", D="d"), prediction="A")],
                             strict=True)
  assert lone["overall"] == 100 and lone["incomplete_groups"] == 0


def test_vlmevalkit_circular_scores_the_rows_present_of_groups_with_a_main_row():
  table = bm.circularize([mcq(1, "B", "x", A="cat", B="dog", C="bird"),
                          mcq(2, "A", "x", A="red", B="blue", C="green"),
                          mcq(3, "A", "y", A="sun", B="moon", C="star")])
  right = {r["index"]: dict(r, prediction=r["answer"]) for r in table}
  wrong = lambda i: dict(right[i], prediction="C" if right[i]["answer"] != "C" else "A")
  # All copies: 1 right everywhere, 2 wrong in one rotation, 3 right -> 2 of 3.
  full = [right[i] for i in right if i != "1000002"] + [wrong("1000002")]
  m = bm.circular_metrics(full)
  assert m["overall"] == pytest.approx(200 / 3) and m["incomplete_groups"] == 0
  assert m["category/x"] == 50 and m["category/y"] == 100
  # Some copies: 1 complete, 2 lost its wrong rotation (now right on what is there), 3 has
  # copies only (not scored: its main row is absent) -> 2 of 2, 2 orphan rows.
  some = [right[i] for i in ("1", "1000001", "2000001", "2", "1000002", "1000003", "2000003")]
  m = bm.circular_metrics(some)
  assert m["questions"] == 2 and m["overall"] == 100 and m["orphan_rows"] == 2
  assert m["incomplete_groups"] == 1 and "category/y" not in m
  # No copies: each main row alone, as VLMEvalKit scores a table without them.
  none = [right["1"], wrong("2"), right["3"]]
  m = bm.circular_metrics(none)
  assert m["overall"] == pytest.approx(200 / 3) and m["noncircular/overall"] == m["overall"]
  assert m["incomplete_groups"] == 3 and m["orphan_rows"] == 0
  assert bm.circular_metrics(none, strict=True)["overall"] == 0  # strict: all incomplete
  # The registry's rules: the default and the named strict one.
  bench = bm.get("mmbench")
  assert bench.rules == ("vlmevalkit", "strict")
  assert bench.scorer("strict")[1](none)["overall"] == 0
  assert bench.scorer("")[1](none)["overall"] == pytest.approx(200 / 3)
  with pytest.raises(ValueError, match="no scoring rule 'official'; its rules are"):
    bench.scorer("official")


def test_mcq_cvbench_vqa_gqa_and_shapes():
  m = bm.mcq_metrics([
      dict(mcq(1, "A", "x", A="cat", B="dog"), prediction="A", split="dev"),
      dict(mcq(2, "B", "x", A="cat", B="dog"), prediction="cat", split="dev"),
      dict(mcq(3, "B", "y", A="cat", B="dog"), prediction="The answer is B", split="dev"),
      {"index": "4", "answer": "3", "question": "open", "category": "y", "prediction": "3"}])
  # The open row (no options) infers nothing and is wrong, as in VLMEvalKit without a judge.
  assert m["overall"] == 50 and m["category/x"] == 50 and m["category/y"] == 50
  assert m["split/dev"] == pytest.approx(200 / 3) and m["open_rows"] == 1

  cv = bm.cvbench_metrics([
      {"answer": "(A)", "prediction": "A", "source": "ADE20K"},
      {"answer": "(B)", "prediction": "B.", "source": "ADE20K"},  # AKI: exact equality only
      {"answer": "(C)", "prediction": " C", "source": "COCO"},
      {"answer": "(B)", "prediction": "B", "source": "Omni3D"},
      {"answer": "(B)", "prediction": "C", "source": "Omni3D"}])
  assert (cv["source/ADE20K"], cv["source/COCO"], cv["source/Omni3D"]) == (50, 100, 50)
  assert (cv["2d"], cv["3d"], cv["overall"]) == (75, 50, 62.5)
  assert cv["accuracy"] == 60  # the plain share of rows, named apart from AKI's overall
  only_2d = bm.cvbench_metrics([{"answer": "(A)", "prediction": "A", "source": "ADE20K"},
                                {"answer": "(A)", "prediction": "B", "source": "COCO"}])
  assert only_2d["2d"] == 50 and "3d" not in only_2d and "overall" not in only_2d
  only_ade = bm.cvbench_metrics([{"answer": "(A)", "prediction": "A", "source": "ADE20K"}])
  assert "2d" not in only_ade and only_ade["accuracy"] == 100
  assert "strip()" in bm.get("cvbench").extraction and "raw" in bm.get("cvbench").extraction

  vqa = bm.vqa_metrics([
      {"answer": str(["red"] * 3 + ["blue"] * 7), "prediction": "Red", "answer_type": "other"},
      {"answer": str(["2"] * 10), "prediction": "two", "answer_type": "number"}])
  assert vqa["overall"] == pytest.approx(95) and vqa["answer_type/number"] == 100

  # GQA: strip + lower only: articles and periods count.
  gqa = bm.gqa_metrics([{"answer": "table", "prediction": " Table "},
                        {"answer": "the table", "prediction": "table"},
                        {"answer": "table", "prediction": "table."},
                        {"answer": "left", "prediction": "right"}])
  assert gqa["overall"] == 25

  syn = bm.shapes_metrics(rows(
      {"prediction": "Yes", "answer": "yes", "category": "exist"},
      {"prediction": "no", "answer": "yes", "category": "exist"},
      {"prediction": "yes", "answer": "no", "category": "exist"},
      {"prediction": "two", "answer": "two", "category": "count"},
      {"prediction": "red.", "answer": "red", "category": "attribute"},
      {"prediction": "left", "answer": "right", "category": "spatial"}))
  assert syn["accuracy/exist"] == pytest.approx(1 / 3) and syn["accuracy/count"] == 1.0
  assert syn["accuracy/all"] == pytest.approx(3 / 6)
  assert syn["f1/exist"] == pytest.approx(0.5)  # tp 1, fp 1, fn 1
  assert syn["chance/exist"] == pytest.approx(2 / 3)  # 'yes' is the majority answer


def test_registry_records_prompt_and_extraction_and_resolves_names():
  assert set(bm.REGISTRY) >= {"pope", "mme", "mmbench", "seedbench_img", "realworldqa",
                              "cvbench", "scienceqa_img", "vqav2", "gqa", "shapes", "records"}
  for b in bm.REGISTRY.values():
    assert b.prompt and b.extraction
  assert bm.get("MMBench_DEV_EN").name == "mmbench" and bm.get("CV-Bench").name == "cvbench"
  assert bm.get("POPE").name == "pope"
  with pytest.raises(ValueError, match="Unknown benchmark 'nosuch'; use one of"):
    bm.get("nosuch")
  row = {"question": "What is it?", "hint": "A zoo.", "A": "cat", "B": "dog", "C": ""}
  assert bm.mcq_prompt(row) == ("Hint: A zoo.\nQuestion: What is it?\nOptions:\nA. cat\nB. dog\n"
                                "Please select the correct answer from the options above. \n")
  assert bm.cvbench_prompt({"question": "Which?", "choices": "['x', 'y']"}) == (
      "Answer with the option's letter from the given choices directly. Which?\nOptions:\n"
      "A. x\nB. y\n")
