"""Importers: each released layout, written here as a few-row fixture with drawn images,
imports to records with the paper's templates; bad rows raise naming file and row, or are
counted."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mma_jax.data import records, tfds_records
from mma_jax.data.importers import __main__ as cli
from mma_jax.data.importers import import_source, sources


def draw(path, size=(40, 30), color=(200, 30, 30)) -> np.ndarray:
  """A drawn image (a rectangle on grey) saved at path (format from its suffix); its pixels."""
  img = Image.new("RGB", size, (128, 128, 128))
  ImageDraw.Draw(img).rectangle([5, 5, size[0] // 2, size[1] // 2], fill=color)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path)
  return np.asarray(img)


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    if path.endswith(".jsonl"):
      f.write("\n".join(json.dumps(r) for r in obj) + "\n")
    else:
      json.dump(obj, f)
  return str(path)


def imported(out, name, split="train"):
  """id -> record of an imported split."""
  return {r["id"]: r for r in tfds_records.read_all(os.path.join(out, name), split)}


def human(r):
  return r["conversations"][0]["value"]


def gpt(r):
  return r["conversations"][1]["value"]


def llava_fixture(tmp):
  """A LLaVA JSON: multi-turn, two images, text-only, no tag; images under tmp/img."""
  draw(f"{tmp}/img/a.png")
  draw(f"{tmp}/img/sub/b.png", color=(0, 0, 255))
  rows = [
      {"id": "m1", "image": "a.png", "conversations": [
          {"from": "human", "value": "<image>\nWhat is red?"}, {"from": "gpt", "value": "box"},
          {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "top left"}]},
      {"id": "m2", "image": ["a.png", "sub/b.png"], "conversations": [
          {"from": "human", "value": "<image> and <image>: which is blue?"},
          {"from": "gpt", "value": "the second"}]},
      {"id": "t1", "conversations": [{"from": "human", "value": "Say hi."},
                                     {"from": "gpt", "value": "hi"}]},
      {"id": "n1", "image": "a.png", "conversations": [{"from": "user", "value": "Colour?"},
                                                      {"from": "assistant", "value": "red"}]},
  ]
  return write_json(f"{tmp}/llava.json", rows), f"{tmp}/img"


def test_llava_keeps_multi_turn_whole_and_several_images(tmp_path):
  path, img = llava_fixture(tmp_path)
  out = str(tmp_path / "out")
  report = import_source("llava", [path], img, out)
  assert report.written == 4 and not report.skipped
  got = imported(out, "llava")
  m1 = got["llava-m1"]
  assert [m["from"] for m in m1["conversations"]] == ["human", "gpt"] * 2
  assert m1["conversations"][3]["value"] == "top left" and m1["task_type"] == "conversation"
  m2 = got["llava-m2"]
  assert m2["image"] == ["a.png", "sub/b.png"] and len(m2["images"]) == 2
  # Stored bytes are the files' own bytes; decoding gives the drawn pixels back (PNG).
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(m2["images"][1]))),
                                np.asarray(Image.open(f"{img}/sub/b.png")))
  assert got["llava-t1"]["image"] == [] and got["llava-t1"]["images"] == []
  assert human(got["llava-n1"]) == "<image>\nColour?" and gpt(got["llava-n1"]) == "red"


def test_llava150k_splits_each_pair_into_its_own_sample_with_the_image(tmp_path):
  """AKI's LLaVAInstructDataset: one single-turn sample per human/gpt pair, <image> in each."""
  draw(f"{tmp_path}/coco/000000000001.jpg")
  path = write_json(f"{tmp_path}/llava_instruct_150k.json", [
      {"id": "000000000001", "image": "000000000001.jpg", "conversations": [
          {"from": "human", "value": "What is red?\n<image>"}, {"from": "gpt", "value": "box"},
          {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "top left"},
          {"from": "human", "value": "<image>\nAnd the rest?"}, {"from": "gpt", "value": "grey"}]},
      {"id": "t1", "conversations": [{"from": "user", "value": "Say hi."},
                                     {"from": "assistant", "value": "hi"}]},
      {"id": "odd", "image": "000000000001.jpg", "conversations": [
          {"from": "gpt", "value": "no question first"}, {"from": "human", "value": "?"}]}])
  out = str(tmp_path / "out")
  with pytest.raises(records.BadRow, match=r"llava_instruct_150k.json row 2: malformed row: "
                     r".*not human/gpt pairs"):
    import_source("llava150k", [path], f"{tmp_path}/coco", out)
  report = import_source("llava150k", [path], f"{tmp_path}/coco", out, skip_bad=True)
  assert report.written == 4 and report.skipped == {records.MALFORMED_ROW: 1}
  got = imported(out, "llava150k")
  assert sorted(got) == ["llava150k-000000000001-0", "llava150k-000000000001-1",
                         "llava150k-000000000001-2", "llava150k-t1-0"]
  pairs = [(human(got[f"llava150k-000000000001-{k}"]), gpt(got[f"llava150k-000000000001-{k}"]))
           for k in range(3)]
  assert pairs == [("<image>\nWhat is red?", "box"), ("<image>\nWhere?", "top left"),
                   ("<image>\nAnd the rest?", "grey")]
  for k in range(3):
    r = got[f"llava150k-000000000001-{k}"]
    assert len(r["conversations"]) == 2 and r["image"] == ["000000000001.jpg"]
  assert human(got["llava150k-t1-0"]) == "Say hi." and got["llava150k-t1-0"]["image"] == []


def test_vqa_style_sources_use_the_short_answer_template(tmp_path):
  coco, out = str(tmp_path / "coco"), str(tmp_path / "out")
  draw(f"{coco}/train2014/COCO_train2014_{9:012d}.jpg")
  draw(f"{coco}/train2017/{7:012d}.jpg")
  q = write_json(f"{tmp_path}/VQA/v2_OpenEnded_mscoco_train2014_questions.json",
                 {"data_subtype": "train2014", "questions": [
                     {"question_id": 90, "image_id": 9, "question": "How many?"}]})
  write_json(f"{tmp_path}/VQA/v2_mscoco_train2014_annotations.json",
             {"annotations": [{"question_id": 90, "image_id": 9,
                               "multiple_choice_answer": "two"}]})
  import_source("vqav2", [q], coco, out)  # annotations found beside the questions
  r = imported(out, "vqav2")["vqav2-90"]
  assert r["image"] == ["train2014/COCO_train2014_000000000009.jpg"]
  assert human(r) == "<image>\nAnswer the question using a single word or phrase. How many?"
  assert gpt(r) == "two" and r["source"] == "vqav2"

  draw(f"{tmp_path}/gqa/images/n1.jpg")
  g = write_json(f"{tmp_path}/gqa/train_balanced_questions.json",
                 {"q5": {"imageId": "n1", "question": "Is it red?", "answer": "yes",
                         "fullAnswer": "Yes, it is."}})
  import_source("gqa", [g], f"{tmp_path}/gqa/images", out)
  assert gpt(imported(out, "gqa")["gqa-q5"]) == "yes"

  v = write_json(f"{tmp_path}/vsr/train-random.jsonl", [
      {"image_link": "http://images.cocodataset.org/train2017/000000000007.jpg",
       "caption": "The cat is on the table.", "label": 0}])
  import_source("vsr", [v], coco, out)
  r = imported(out, "vsr")["vsr-1"]
  assert r["image"] == ["train2017/000000000007.jpg"]
  assert human(r).endswith("single word or phrase. Is the cat on the table? Please answer yes "
                           "or no.") and gpt(r) == "no"

  draw(f"{tmp_path}/ocr/k1.png")
  o = write_json(f"{tmp_path}/ocr/dataset.json", {
      "k1": {"imageURL": "http://x/k1.png", "questions": ["Title?", "Author?"],
             "answers": ["Dune", "Herbert"], "split": 1},
      "k2": {"imageURL": "http://x/k2.jpg", "questions": ["Title?"], "answers": ["X"],
             "split": 3}})
  import_source("ocrvqa", [o], f"{tmp_path}/ocr", out)
  got = imported(out, "ocrvqa")
  assert sorted(got) == ["ocrvqa-k1-0", "ocrvqa-k1-1"]  # one record per question, train only
  assert gpt(got["ocrvqa-k1-1"]) == "Herbert" and got["ocrvqa-k1-1"]["image"] == ["k1.png"]


def test_multiple_choice_sources_letter_the_shuffled_options(tmp_path):
  coco, out = str(tmp_path / "coco"), str(tmp_path / "out")
  draw(f"{coco}/train2017/{7:012d}.jpg")
  a = write_json(f"{tmp_path}/aokvqa_v1p0_train.json", [
      {"question_id": "qa1", "image_id": 7, "split": "train", "question": "What is it?",
       "choices": ["cat", "dog", "box", "car"], "correct_choice_idx": 2,
       "rationales": ["r"], "direct_answers": ["box"]}])
  import_source("aokvqa", [a], coco, out)
  r = imported(out, "aokvqa")["aokvqa-qa1"]
  prompt = human(r)
  assert prompt.startswith("<image>\nAnswer with the option's letter from the given choices "
                           "directly. What is it?\nOptions:\nA. ")
  lines = prompt.split("Options:\n")[1].strip().split("\n")
  assert sorted(l[3:] for l in lines) == ["box", "car", "cat", "dog"]
  assert lines["ABCD".index(gpt(r))][3:] == "box"  # the letter points at the right answer

  sq = f"{tmp_path}/ScienceQA"
  draw(f"{sq}/images/train/1/image.png")
  p = write_json(f"{sq}/problems.json", {
      "1": {"question": "Which is north?", "choices": ["A", "B"], "answer": 1, "hint": "",
            "image": "image.png", "split": "train"},
      "2": {"question": "2+2?", "choices": ["4", "5"], "answer": 0, "hint": "Maths.",
            "image": None, "split": "train"},
      "3": {"question": "Val?", "choices": ["x", "y"], "answer": 0, "hint": "", "image": None,
            "split": "val"}})
  import_source("scienceqa", [p], f"{sq}/images", out)
  got = imported(out, "scienceqa")
  assert sorted(got) == ["scienceqa-1", "scienceqa-2"]
  assert got["scienceqa-1"]["image"] == ["train/1/image.png"]
  assert "\nContext: N/A\nOptions:\n" in human(got["scienceqa-1"])
  text_only = got["scienceqa-2"]
  assert text_only["image"] == [] and "<image>" not in human(text_only)
  assert "Context: Maths." in human(text_only)
  import_source("scienceqa", [p], f"{sq}/images", out, split="validation")
  assert sorted(imported(out, "scienceqa", "validation")) == ["scienceqa-3"]
  assert len(imported(out, "scienceqa")) == 2  # the train split is still there


def test_several_input_files_are_all_imported_with_unique_ids(tmp_path):
  coco, out = str(tmp_path / "coco"), str(tmp_path / "out")
  for sub, i in (("train2014", 9), ("val2014", 8)):
    draw(f"{coco}/{sub}/COCO_{sub}_{i:012d}.jpg")
  draw(f"{coco}/train2017/{7:012d}.jpg")
  draw(f"{coco}/val2017/{6:012d}.jpg")
  # One kind of file: every file's rows come in.
  g = [write_json(f"{tmp_path}/gqa/{name}.json", {qid: {"imageId": "n1", "question": "Red?",
                                                        "answer": "yes"}})
       for name, qid in (("train_balanced_questions", "q1"), ("val_balanced_questions", "q2"))]
  draw(f"{tmp_path}/gqa/images/n1.jpg")
  import_source("gqa", g, f"{tmp_path}/gqa/images", out)
  assert sorted(imported(out, "gqa")) == ["gqa-q1", "gqa-q2"]
  # Ids from row positions carry the file name when there are several files.
  v = [write_json(f"{tmp_path}/vsr/{name}.jsonl", [
      {"image_link": f"x/{sub}/{i:012d}.jpg", "caption": "A cat is on a mat.", "label": 1}])
       for name, sub, i in (("train-random", "train2017", 7), ("dev-random", "val2017", 6))]
  import_source("vsr", v, coco, out)
  assert sorted(imported(out, "vsr")) == ["vsr-dev-random-1", "vsr-train-random-1"]
  a = [write_json(f"{tmp_path}/aokvqa_v1p0_{split}.json", [
      {"question_id": f"qa-{split}", "image_id": i, "split": split, "question": "What?",
       "choices": ["cat", "dog"], "correct_choice_idx": 0}])
       for split, i in (("train", 7), ("val", 6))]
  import_source("aokvqa", a, coco, out)
  assert sorted(imported(out, "aokvqa")) == ["aokvqa-qa-train", "aokvqa-qa-val"]
  draw(f"{tmp_path}/ocr/k1.png")
  o = [write_json(f"{tmp_path}/ocr/{name}.json", {key: {
      "imageURL": "http://x/k1.png", "questions": ["Title?"], "answers": ["Dune"], "split": 1}})
       for name, key in (("part1", "k1"), ("part2", "k2"))]
  draw(f"{tmp_path}/ocr/k2.png")
  import_source("ocrvqa", o, f"{tmp_path}/ocr", out)
  assert sorted(imported(out, "ocrvqa")) == ["ocrvqa-k1-0", "ocrvqa-k2-0"]
  sq = [write_json(f"{tmp_path}/sq/{name}.json", {pid: {
      "question": "2+2?", "choices": ["4", "5"], "answer": 0, "hint": "", "image": None,
      "split": "train"}}) for name, pid in (("problems", "1"), ("more_problems", "2"))]
  import_source("scienceqa", sq, f"{tmp_path}/sq", out)
  assert sorted(imported(out, "scienceqa")) == ["scienceqa-1", "scienceqa-2"]
  draw(f"{coco}/train2014/COCO_train2014_{5:012d}.jpg", size=(200, 100))
  m = [write_json(f"{tmp_path}/mdetr/finetune_refcoco_{split}.json", {  # both use id 0
      "images": [{"id": 0, "file_name": "COCO_train2014_000000000005.jpg", "width": 200,
                  "height": 100, "caption": split}],
      "annotations": [{"id": 0, "image_id": 0, "bbox": [10, 20, 50, 30]}]})
       for split in ("train", "val")]
  import_source("refcoco", m, coco, out)
  got = imported(out, "refcoco")
  assert sorted(got) == ["refcoco-finetune_refcoco_train-0", "refcoco-finetune_refcoco_val-0"]
  assert gpt(got["refcoco-finetune_refcoco_val-0"]) == "val"

  # Two kinds of file: QUESTIONS ANNOTATIONS pairs.
  vqa = []
  for sub, i in (("train2014", 9), ("val2014", 8)):
    vqa.append(write_json(f"{tmp_path}/VQA/v2_OpenEnded_mscoco_{sub}_questions.json",
                          {"data_subtype": sub, "questions": [
                              {"question_id": i * 10, "image_id": i, "question": "How many?"}]}))
    vqa.append(write_json(f"{tmp_path}/VQA/v2_mscoco_{sub}_annotations.json", {"annotations": [
        {"question_id": i * 10, "image_id": i, "multiple_choice_answer": str(i)}]}))
  import_source("vqav2", vqa, coco, out)
  got = imported(out, "vqav2")
  assert sorted(got) == ["vqav2-80", "vqav2-90"]
  assert got["vqav2-80"]["image"] == ["val2014/COCO_val2014_000000000008.jpg"]
  with pytest.raises(ValueError, match=r"vqav2: --input got 3 files; pass QUESTIONS.json alone "
                     r".*or pairs 'QUESTIONS.json ANNOTATIONS.json'"):
    import_source("vqav2", vqa[:3], coco, out)
  with pytest.raises(ValueError, match=r"val2014_questions.json is not a VQAv2 annotations "
                     r"file"):
    import_source("vqav2", [vqa[0], vqa[2]], coco, out)  # two question files
  vg = []
  for k in (1, 2):
    draw(f"{tmp_path}/vg/VG_100K/{k}.jpg", size=(100, 100))
    vg.append(write_json(f"{tmp_path}/vg/part{k}/region_descriptions.json", [{"id": k, "regions": [
        {"region_id": 10 + k, "image_id": k, "x": 0, "y": 0, "width": 50, "height": 50,
         "phrase": "sky"}]}]))
    vg.append(write_json(f"{tmp_path}/vg/part{k}/image_data.json", [
        {"image_id": k, "width": 100, "height": 100, "url": f"http://x/VG_100K/{k}.jpg"}]))
  import_source("vg", vg, f"{tmp_path}/vg", out)
  assert sorted(imported(out, "vg")) == ["vg-11", "vg-12"]
  with pytest.raises(ValueError, match=r"vg: --input got 3 files"):
    import_source("vg", vg[:3], f"{tmp_path}/vg", out)
  with pytest.raises(ValueError, match=r"part2/region_descriptions.json is not VG's "
                     r"image_data.json"):
    import_source("vg", [vg[0], vg[2]], f"{tmp_path}/vg", out)
  with pytest.raises(ValueError, match=r"--input names .*train_balanced_questions.json twice"):
    import_source("gqa", [g[0], g[0]], f"{tmp_path}/gqa/images", out)


def test_rows_of_other_splits_are_counted_and_a_bad_split_is_named(tmp_path):
  draw(f"{tmp_path}/ocr/k1.png")
  o = write_json(f"{tmp_path}/ocr/dataset.json", {
      "k1": {"imageURL": "http://x/k1.png", "questions": ["Title?"], "answers": ["Dune"],
             "split": 1},
      "k2": {"imageURL": "http://x/k2.jpg", "questions": ["Title?"], "answers": ["X"],
             "split": 3},
      "k3": {"imageURL": "http://x/k3.jpg", "questions": ["Title?"], "answers": ["Y"],
             "split": 2}})
  out = str(tmp_path / "out")
  report = import_source("ocrvqa", [o], f"{tmp_path}/ocr", out)  # not --skip_bad: no error
  assert report.written == 1 and report.skipped == {"other split": 2}
  assert "dataset.json key 'k2': other split: split 3" in report.first["other split"]
  assert "skipped 2: other split" in report.summary()
  with pytest.raises(ValueError, match=r"ocrvqa: --split='dev' is not an OCR-VQA split; use "
                     r"one of \['test', 'train', 'val', 'validation'\]"):
    import_source("ocrvqa", [o], f"{tmp_path}/ocr", out, split="dev")
  p = write_json(f"{tmp_path}/sq/problems.json", {
      "1": {"question": "?", "choices": ["4", "5"], "answer": 0, "hint": "", "image": None,
            "split": "train"},
      "2": {"question": "?", "choices": ["4", "5"], "answer": 0, "hint": "", "image": None,
            "split": "test"}})
  report = import_source("scienceqa", [p], f"{tmp_path}/sq", out, split="test")
  assert report.written == 1 and report.skipped == {"other split": 1}
  saved = json.load(open(os.path.join(out, "scienceqa", "import_report-test.json")))
  assert saved["skipped"] == {"other split": 1}


def test_region_sources_write_normalized_boxes(tmp_path):
  coco, out = str(tmp_path / "coco"), str(tmp_path / "out")
  draw(f"{coco}/train2014/COCO_train2014_{5:012d}.jpg", size=(200, 100))
  m = write_json(f"{tmp_path}/mdetr/finetune_refcocog_train.json", {
      "images": [{"id": 11, "file_name": "COCO_train2014_000000000005.jpg", "width": 200,
                  "height": 100, "caption": "the red box", "original_id": 5}],
      "annotations": [{"id": 11, "image_id": 11, "bbox": [10, 20, 50, 30]}]})
  import_source("refcocog", [m], coco, out)
  r = imported(out, "refcocog")["refcocog-11"]
  assert human(r) == ("<image>\nProvide a short description for this region. "
                      "<bbox>[0.050, 0.200][0.300, 0.500]</bbox>")
  assert gpt(r) == "the red box" and r["image"] == ["train2014/COCO_train2014_000000000005.jpg"]

  vg_root = f"{tmp_path}/vg"
  draw(f"{vg_root}/VG_100K/1.jpg", size=(300, 300))
  reg = write_json(f"{vg_root}/region_descriptions.json", [{"id": 1, "regions": [
      {"region_id": 7, "image_id": 1, "x": 0, "y": 150, "width": 300, "height": 400,
       "phrase": "grass "},
      {"region_id": 8, "image_id": 1, "x": 30, "y": 30, "width": 30, "height": 30,
       "phrase": "sky"}]}])
  write_json(f"{vg_root}/image_data.json", [
      {"image_id": 1, "width": 300, "height": 300,
       "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg"}])
  import_source("vg", [reg], vg_root, out)
  got = imported(out, "vg")
  assert human(got["vg-7"]).endswith("<bbox>[0.000, 0.500][1.000, 1.000]</bbox>")  # clipped
  assert gpt(got["vg-7"]) == "grass" and got["vg-8"]["image"] == ["VG_100K/1.jpg"]


def wds_shard(path, samples):
  """A WebDataset tar: samples = [(key, {ext: bytes})]."""
  with tarfile.open(path, "w") as tar:
    for key, parts in samples:
      for ext, data in parts.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return str(path)


def png_bytes(color=(10, 200, 10)):
  buf = io.BytesIO()
  Image.new("RGB", (20, 10), color).save(buf, "PNG")
  return buf.getvalue()


def test_webdataset_shards_become_caption_records_and_bad_samples_are_counted(tmp_path):
  draw(f"{tmp_path}/x.jpg")
  good = wds_shard(tmp_path / "00000.tar", [
      ("s0", {"jpg": open(f"{tmp_path}/x.jpg", "rb").read(), "txt": b"A red box on grey.",
              "json": b"{}"}),
      ("s1", {"png": png_bytes(), "txt": b"A green field."})])
  bad = wds_shard(tmp_path / "00001.tar", [
      ("s2", {"txt": b"no image"}),
      ("s3", {"png": png_bytes()}),
      ("s4", {"png": b"not a png", "txt": b"broken"}),
      ("s5", {"png": png_bytes((1, 2, 3)), "txt": b"fine"})])
  out = str(tmp_path / "out")
  with pytest.raises(records.BadRow, match=r"00001.tar sample 's2': missing image"):
    import_source("webdataset", [good, bad], None, out, name="kale")
  report = import_source("webdataset", [str(tmp_path / "*.tar")], None, out, name="kale",
                         skip_bad=True)
  assert report.written == 3
  assert report.skipped == {records.MISSING_IMAGE: 1, records.MALFORMED_ROW: 1,
                            records.UNDECODABLE_IMAGE: 1}
  got = imported(out, "kale")
  r = got["webdataset-00000.tar/s1"]
  assert r["task_type"] == "caption" and r["caption"] == "A green field."
  assert r["conversations"] == [] and r["image"] == ["00000.tar/s1.png"]
  assert set(got) == {"webdataset-00000.tar/s0", "webdataset-00000.tar/s1",
                      "webdataset-00001.tar/s5"}
  saved = json.load(open(os.path.join(out, "kale", "import_report-train.json")))
  assert saved["written"] == 3 and saved["skipped"][records.UNDECODABLE_IMAGE] == 1


def test_bad_rows_name_file_and_row_or_are_counted_by_reason(tmp_path):
  path, img = llava_fixture(tmp_path)
  rows = json.load(open(path))
  rows.insert(1, {"id": "gone", "image": "missing.png", "conversations": rows[0]
                  ["conversations"]})
  with open(f"{img}/broken.png", "wb") as f:
    f.write(b"\x89PNG not really")
  rows.insert(3, {"id": "corrupt", "image": "broken.png", "conversations": rows[0]
                  ["conversations"]})
  rows.append({"id": "odd", "conversations": [{"from": "gpt", "value": "hi"}]})
  rows.append({"id": "nofield"})
  bad = write_json(f"{tmp_path}/bad.json", rows)
  out = str(tmp_path / "out")
  with pytest.raises(records.BadRow, match=r"bad.json row 1: missing image: .*missing.png"
                     r" does not exist.*--skip_bad"):
    import_source("llava", [bad], img, out)
  assert not os.path.exists(os.path.join(out, "llava", "dataset_info.json"))  # nothing written
  report = import_source("llava", [bad], img, out, skip_bad=True)
  assert report.written == 4
  assert report.skipped == {records.MISSING_IMAGE: 1, records.UNDECODABLE_IMAGE: 1,
                            records.MALFORMED_ROW: 2}
  assert "bad.json row 3: undecodable image" in report.first[records.UNDECODABLE_IMAGE]
  assert "bad.json row 6: malformed row" in report.first[records.MALFORMED_ROW]
  summary = report.summary()
  assert summary.startswith("llava [train]: 4 written, 4 skipped")
  assert "skipped 1: missing image (first: " in summary


def test_malformed_json_lines_and_files_name_the_place(tmp_path):
  coco = str(tmp_path / "coco")
  draw(f"{coco}/train2017/{7:012d}.jpg")
  path = tmp_path / "vsr.jsonl"
  path.write_text(
      json.dumps({"image_link": "x/train2017/000000000007.jpg", "caption": "A is on B.",
                  "label": 1}) + "\n{not json\n"
      + json.dumps({"image_link": "x/train2017/000000000007.jpg", "caption": "No verb here.",
                    "label": 1}) + "\n")
  with pytest.raises(records.BadRow, match=r"vsr.jsonl line 2: malformed row: not JSON"):
    import_source("vsr", [str(path)], coco, str(tmp_path / "out"))
  report = import_source("vsr", [str(path)], coco, str(tmp_path / "out"), skip_bad=True)
  assert report.written == 1 and report.skipped == {records.MALFORMED_ROW: 2}
  (tmp_path / "gqa.json").write_text("{oops")
  with pytest.raises(ValueError, match=r"gqa.json is not valid JSON"):
    import_source("gqa", [str(tmp_path / "gqa.json")], coco, str(tmp_path / "out"))
  q = write_json(f"{tmp_path}/q.json", {"questions": []})  # no data_subtype: not VQAv2's layout
  with pytest.raises(ValueError, match=r"vqav2: .*q.json.* do not have the layout .*"
                     r"'data_subtype'.*sources.vqav2"):
    import_source("vqav2", [q], coco, str(tmp_path / "out"))


def test_cli_prints_the_report_and_fails_on_a_bad_row(tmp_path, capsys):
  path, img = llava_fixture(tmp_path)
  out = str(tmp_path / "out")
  assert cli.main(["llava", "--input", path, "--images", img, "--out", out, "--limit", "2"]) == 0
  assert "llava [train]: 2 written, 0 skipped" in capsys.readouterr().out
  assert len(imported(out, "llava")) == 2
  assert cli.main(["llava", "--input", path, "--images", str(tmp_path), "--out", out]) == 2
  err = capsys.readouterr().err
  assert "Import failed" in err and "llava.json row 0: missing image" in err
  assert len(imported(out, "llava")) == 2  # the earlier import is untouched


def test_bbox_text_and_vsr_question():
  assert sources.bbox_text(0, 0, 10, 5, 20, 10) == "<bbox>[0.000, 0.000][0.500, 0.500]</bbox>"
  assert sources.bbox_text(1, 1, 1, 1, 3, 3) == "<bbox>[0.333, 0.333][0.667, 0.667]</bbox>"
  with pytest.raises(ValueError, match="bad box"):
    sources.bbox_text(0, 0, 1, 1, 0, 10)
  assert sources.vsr_question("The dog is under the bed.") == "Is the dog under the bed?"
  assert sources.vsr_question("Two cats are near a car.") == "Are two cats near a car?"
