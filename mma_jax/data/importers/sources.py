"""The paper's SFT sources from their released file layouts -> normalized records.

Prompt templates are AKI's (sony/aki sft_data_utils/templates), each wrapped later in the chat
template by chat.encode; the image tag leads the first human turn. Image paths are relative to
--images; the layout each source expects there is in its function's docstring. Options of
multiple-choice sources are shuffled once, at import, seeded by the question id (AKI shuffles
them again each epoch).

--input may name several files (e.g. train and val question files): sources with one kind of
file import the rows of every file; ids made from row positions (VSR) or per-file ids (MDETR's
RefCOCO image ids) then carry the file name, so ids stay unique. VQAv2 and Visual Genome take
their two files in pairs.
"""
from __future__ import annotations

import os
import random
import re
from typing import Iterator

from mma_jax.data.importers.common import (OTHER_SPLIT, Example, LeftOut, examples, guard,
                                           load_json, rows)
from mma_jax.data.records import MALFORMED_ROW, BadRow

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
REGION = "Provide a short description for this region."
YES_NO = "Please answer yes or no."


def qa_record(source: str, task_type: str, rid, images: list[str], prompt: str,
              answer: str) -> dict:
  """A single-turn record; one <image> tag per image before the prompt."""
  if not isinstance(prompt, str) or not isinstance(answer, str) or not answer.strip():
    raise ValueError(f"prompt and answer must be non-empty strings, got {prompt!r} -> {answer!r}")
  tags = "<image>\n" * len(images)
  return {"id": f"{source}-{rid}", "image": images, "source": source, "task_type": task_type,
          "conversations": [{"from": "human", "value": tags + prompt},
                            {"from": "gpt", "value": answer}]}


def options(choices: list[str], answer: int, seed) -> tuple[str, str]:
  """('A. x\\nB. y', 'B'): the choices shuffled by `seed`, lettered, and the answer's letter."""
  if not isinstance(choices, list) or not 0 <= answer < len(choices) or len(choices) > 26:
    raise ValueError(f"answer index {answer!r} does not fit choices {choices!r}")
  order = list(range(len(choices)))
  random.Random(str(seed)).shuffle(order)
  text = "\n".join(f"{chr(65 + k)}. {choices[i]}" for k, i in enumerate(order))
  return text, chr(65 + order.index(answer))


def bbox_text(x: float, y: float, w: float, h: float, width: float, height: float) -> str:
  """A COCO xywh pixel box -> AKI's '<bbox>[x1, y1][x2, y2]</bbox>', in [0, 1], 3 decimals."""
  if not (width > 0 and height > 0 and w >= 0 and h >= 0):
    raise ValueError(f"bad box {[x, y, w, h]} for a {width}x{height} image")
  clip = lambda v: min(max(v, 0.0), 1.0)
  x1, y1, x2, y2 = (clip(x / width), clip(y / height), clip((x + w) / width),
                    clip((y + h) / height))
  return f"<bbox>[{x1:.3f}, {y1:.3f}][{x2:.3f}, {y2:.3f}]</bbox>"


def _file_tags(inputs: list[str]) -> list[str]:
  """Per --input file, the id prefix that keeps per-file ids unique across files: '' for one
  file (the ids a single import gives), else the file name without extension ('train-random-'),
  or the file's position where names repeat."""
  if len(inputs) == 1:
    return [""]
  stems = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
  if len(set(stems)) < len(stems):
    stems = [str(k) for k in range(len(inputs))]
  return [f"{s}-" for s in stems]


def _pairs(inputs: list[str], source: str, first: str, second: str) -> list[tuple[str, str | None]]:
  """(first, second) file pairs: one file (second None: the caller finds its partner beside
  it) or FIRST SECOND [FIRST SECOND ...]."""
  if len(inputs) == 1:
    return [(inputs[0], None)]
  if len(inputs) % 2:
    raise ValueError(f"{source}: --input got {len(inputs)} files; pass {first} alone (its "
                     f"{second} beside it) or pairs '{first} {second}' in that order, one pair "
                     f"per split: {inputs}.")
  return list(zip(inputs[::2], inputs[1::2]))


def _coco_path(file_name: str) -> str:
  """COCO_train2014_000000000009.jpg -> train2014/COCO_train2014_000000000009.jpg."""
  m = re.match(r"COCO_([a-z]+\d{4})_", file_name)
  return f"{m.group(1)}/{file_name}" if m else file_name


def vqav2(inputs, images, split, source) -> Iterator[Example | BadRow]:
  """VQAv2: --input v2_OpenEnded_mscoco_train2014_questions.json [v2_mscoco_train2014_
  annotations.json (default: beside it)], or several such QUESTIONS ANNOTATIONS pairs (e.g.
  train2014 and val2014); --images: the COCO root ({subtype}/COCO_{subtype}_{image_id:012}.jpg).
  Answer: multiple_choice_answer."""
  del images, split
  for q_path, ann_path in _pairs(inputs, source, "QUESTIONS.json", "ANNOTATIONS.json"):
    questions = load_json(q_path)
    sub = questions["data_subtype"]
    ann_path = ann_path or os.path.join(os.path.dirname(q_path),
                                        f"v2_mscoco_{sub}_annotations.json")
    annotations = load_json(ann_path)
    if not isinstance(annotations, dict) or "annotations" not in annotations:
      raise ValueError(f"{source}: {ann_path} is not a VQAv2 annotations file (no "
                       "'annotations'); --input takes QUESTIONS.json ANNOTATIONS.json pairs, "
                       "in that order.")
    answers = {a["question_id"]: a["multiple_choice_answer"]
               for a in annotations["annotations"]}

    def make(_, q, sub=sub, answers=answers, ann_path=ann_path):
      if q["question_id"] not in answers:
        raise KeyError(f"question_id {q['question_id']} has no annotation in {ann_path}")
      return [qa_record(source, "vqa", q["question_id"],
                        [f"{sub}/COCO_{sub}_{int(q['image_id']):012d}.jpg"],
                        f"{SHORT_ANSWER} {q['question']}", answers[q["question_id"]])]
    yield from examples(q_path, make, questions["questions"], "questions")


def gqa(inputs, images, split, source):
  """GQA: --input train_balanced_questions.json ... (qid -> {imageId, question, answer}; qids
  are unique across GQA's files); --images: GQA/images ({imageId}.jpg)."""
  del images, split
  for path in inputs:
    yield from examples(path, lambda qid, q: [qa_record(
        source, "vqa", qid, [f"{q['imageId']}.jpg"], f"{SHORT_ANSWER} {q['question']}",
        q["answer"])])


def vsr_question(caption: str) -> str:
  """'The cat is on the table.' -> 'Is the cat on the table?' (AKI's interrogative form)."""
  m = re.search(r"\b(is|are)\b", caption)
  if m is None:
    raise ValueError(f"caption {caption!r} has no 'is'/'are' to make a question of")
  rest = (caption[:m.start()] + caption[m.end():]).strip().rstrip(".").lower()
  return f"{m.group(1).capitalize()} {' '.join(rest.split())}?"


def vsr(inputs, images, split, source):
  """VSR: --input train-random.jsonl ... ({image_link, caption, label}); --images: the COCO
  root (train2017/, val2017/: the last two parts of image_link). Ids are line numbers, with
  the file name in front when several files are given (vsr-train-random-3)."""
  del images, split

  def make(tag, n, row):
    link = row.get("image_link") or row["image"]
    path = "/".join(link.split("/")[-2:]) if "/" in link else link
    label = row["label"]
    if label not in (0, 1, True, False):
      raise ValueError(f"label must be 0 or 1, got {label!r}")
    return [qa_record(source, "vqa", f"{tag}{n}", [path],
                      f"{SHORT_ANSWER} {vsr_question(row['caption'])} {YES_NO}",
                      "yes" if label else "no")]
  for path, tag in zip(inputs, _file_tags(inputs)):
    yield from examples(path, lambda n, row, tag=tag: make(tag, n, row))


_OCRVQA_SPLITS = {"train": 1, "validation": 2, "val": 2, "test": 3}


def ocrvqa(inputs, images, split, source):
  """OCR-VQA: --input dataset.json ... (key -> {imageURL, questions, answers, split: 1 train,
  2 val, 3 test}; only rows of --split are kept, the others counted as 'other split');
  --images: the folder of {key}{ext of imageURL}. One record per question."""
  del images
  if split not in _OCRVQA_SPLITS:
    raise ValueError(f"{source}: --split={split!r} is not an OCR-VQA split; use one of "
                     f"{sorted(_OCRVQA_SPLITS)} (dataset.json's split 1 = train, 2 = "
                     "validation/val, 3 = test).")
  want = _OCRVQA_SPLITS[split]

  def make(key, row):
    if row["split"] != want:
      return LeftOut(OTHER_SPLIT, f"split {row['split']!r}, importing --split={split} "
                     f"({want})")
    qs, ans = row["questions"], row["answers"]
    if len(qs) != len(ans):
      raise ValueError(f"{len(qs)} questions but {len(ans)} answers")
    ext = os.path.splitext(row["imageURL"])[1] or ".jpg"
    return [qa_record(source, "vqa", f"{key}-{j}", [f"{key}{ext}"], f"{SHORT_ANSWER} {q}", a)
            for j, (q, a) in enumerate(zip(qs, ans))]
  for path in inputs:
    yield from examples(path, make)


def aokvqa(inputs, images, split, source):
  """A-OKVQA: --input aokvqa_v1p0_train.json ... (list of {question_id, image_id, question,
  choices, correct_choice_idx, split}); --images: the COCO root ({split}2017/{image_id:012}.jpg).
  """
  del images, split

  def make(_, row):
    opts, letter = options(row["choices"], row["correct_choice_idx"], row["question_id"])
    path = f"{row.get('split', 'train')}2017/{int(row['image_id']):012d}.jpg"
    return [qa_record(source, "mcq", row["question_id"], [path],
                      f"{LETTER} {row['question']}\nOptions:\n{opts}\n", letter)]
  for path in inputs:
    yield from examples(path, make)


def scienceqa(inputs, images, split, source):
  """ScienceQA: --input problems.json ... (pid -> {question, choices, answer, hint, image,
  split}; only rows of --split are kept, 'validation' = 'val', the others counted as 'other
  split'); --images: ScienceQA/images ({split}/{pid}/image.png). Rows without an image stay
  text-only."""
  del images
  want = {"validation": "val"}.get(split, split)

  def make(pid, row):
    if row["split"] != want:
      return LeftOut(OTHER_SPLIT, f"split {row['split']!r}, importing --split={split}")
    opts, letter = options(row["choices"], row["answer"], pid)
    context = row.get("hint") or "N/A"
    path = [f"{row['split']}/{pid}/{row['image']}"] if row.get("image") else []
    return [qa_record(source, "mcq", pid, path,
                      f"{LETTER} {row['question']}\nContext: {context}\nOptions:\n{opts}\n",
                      letter)]
  for path in inputs:
    yield from examples(path, make)


def refcoco(inputs, images, split, source):
  """RefCOCO / RefCOCO+ / RefCOCOg, MDETR's finetune_refcoco*_train.json ... (images[{id,
  file_name, width, height, caption}] paired with annotations[{image_id, bbox xywh}]);
  --images: the COCO root (train2014/COCO_train2014_*.jpg). Grounded captioning: the region's
  box -> its referring expression. MDETR's ids are per file: with several files the file name
  leads the id (refcoco-finetune_refcoco_val-11)."""
  del images, split
  for path, tag in zip(inputs, _file_tags(inputs)):
    data = load_json(path)
    boxes = {a["image_id"]: a["bbox"] for a in data["annotations"]}

    def make(_, img, boxes=boxes, tag=tag):
      if img["id"] not in boxes:
        raise KeyError(f"image id {img['id']} has no annotation")
      box = bbox_text(*boxes[img["id"]], img["width"], img["height"])
      return [qa_record(source, "region", f"{tag}{img['id']}", [_coco_path(img["file_name"])],
                        f"{REGION} {box}", img["caption"])]
    yield from examples(path, make, data["images"], "images")


def vg(inputs, images, split, source):
  """Visual Genome regions: --input region_descriptions.json [image_data.json (default:
  beside it)], or several REGIONS IMAGE_DATA pairs; --images: the VG root (the last two parts
  of image_data's url, e.g. VG_100K/1.jpg; {image_id}.jpg where there is no url). One record
  per region (region ids are unique across VG)."""
  del images, split
  for regions, meta_path in _pairs(inputs, source, "region_descriptions.json", "image_data.json"):
    meta_path = meta_path or os.path.join(os.path.dirname(regions), "image_data.json")
    yield from _vg_file(regions, meta_path, source)


def _vg_file(regions_path: str, meta_path: str, source: str):
  meta = {}
  for m in load_json(meta_path):
    if not isinstance(m, dict) or "regions" in m:
      raise ValueError(f"{source}: {meta_path} is not VG's image_data.json (rows of {{image_id, "
                       "width, height, url}}); --input takes region_descriptions.json "
                       "image_data.json pairs, in that order.")
    meta[m.get("image_id", m.get("id"))] = m
  for where, _, entry in rows(regions_path):
    image_id = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
    info = meta.get(image_id)
    if info is None:
      yield BadRow(where, MALFORMED_ROW, f"image {image_id!r} is not in {meta_path}")
      continue
    url = info.get("url") or ""
    path = "/".join(url.split("/")[-2:]) if url else f"{image_id}.jpg"

    def region_record(r):
      box = bbox_text(r["x"], r["y"], r["width"], r["height"], info["width"], info["height"])
      return [qa_record(source, "region", r["region_id"], [path], f"{REGION} {box}",
                        r["phrase"].strip())]
    for j, region in enumerate(entry.get("regions") or []):
      yield from guard(f"{where} regions[{j}]", lambda: region_record(region))
