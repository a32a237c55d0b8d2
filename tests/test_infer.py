"""Inference with a converted checkpoint: SigLIP + Qwen2 + fresh connector, image token added."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from mma_jax import infer
from mma_jax.data import images
from tests.convert import hf_models  # skips this module where torch is absent
from tests.data.test_templates import tiny_tokenizer


def test_converted_vlm_answers_a_batch_of_questions(tmp_path):
  hf_models.converted_vlm(tmp_path)
  assert tiny_tokenizer("qwen2.5", add_image=False).token_to_id("<image>") is None
  meta = json.load(open(tmp_path / "vlm" / "model.json"))
  model, params, tok, _ = infer.load(str(tmp_path / "vlm"))
  # <image> and <|endofchunk|> were added as tokens and as embedding rows.
  assert meta["model"]["llm"]["vocab_size"] == tok.vocab_size == tok.image_id + 2

  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(
      tmp_path / "img.png")
  image = images.load(str(tmp_path / "img.png"), 30)
  questions = ["What is in the image?", "And how large is it?"]
  batched = infer.answer(model, params, tok, image, questions, kind="mma", max_new_tokens=4)
  single = [infer.answer(model, params, tok, image, [q], kind="mma", max_new_tokens=4)[0]
            for q in questions]
  assert batched == single and all(isinstance(a, str) for a in batched)

  out = subprocess.run([sys.executable, "-m", "mma_jax.infer", f"--model={tmp_path / 'vlm'}",
                        f"--image={tmp_path / 'img.png'}", "--question=What is in the image?",
                        "--question=And how large is it?", "--max_new_tokens=4", "--mask=mma"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.count("Q: ") == 2 and f"A: {batched[1]}" in out.stdout
