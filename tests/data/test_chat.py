"""Records -> tokens: spans, roles, turns, orders and bad records."""
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import masks
from mma_jax.data import chat, vocab
from mma_jax.data.shapes import generate

TOK = vocab.shapes_tokenizer()


def _text(ids):
  return TOK.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def test_two_turn_roles_turns_and_loss_spans():
  r = generate.make_example(0, "train", 5)  # two_turn
  assert r["question_type"] == "two_turn"
  ex = chat.encode(r, TOK, tokens_per_image=3)
  responses = [(t, _text(ex["tokens"][(ex["role"] == 2) & (ex["turn"] == t)])) for t in (0, 1)]
  assert responses == [(0, r["conversations"][1]["value"] + " <|end|>"),
                       (1, r["conversations"][3]["value"] + " <|end|>")]
  assert np.sum(ex["modality"] == 1) == 3 and (ex["tokens"][ex["modality"] == 1] == TOK.image_id).all()
  # Turn 1 starts at its <|user|>; everything before the first response is turn-0 prompt.
  first_user_1 = np.flatnonzero(ex["tokens"] == TOK.token_id("<|user|>"))[1]
  assert (ex["turn"][:first_user_1] == 0).all() and (ex["turn"][first_user_1:] == 1).all()
  assert _text(ex["tokens"][ex["role"] == 1][-2:]) == "<|end|> <|assistant|>"
  np.testing.assert_array_equal(ex["positions"], np.arange(len(ex["tokens"])))


def test_orders_and_eval_prompt():
  r = generate.make_example(0, "train", 0)  # count, one image
  it = chat.encode(r, TOK, tokens_per_image=2, order="I&T")
  ti = chat.encode(r, TOK, tokens_per_image=2, order="T&I")
  user = lambda ex: _text(ex["tokens"][np.flatnonzero(ex["tokens"] == TOK.token_id("<|user|>"))[0]:])
  assert user(it).startswith("<|user|> <image> <image> how many")
  assert user(ti).startswith("<|user|> how many shapes are there ? <image> <image> <|end|>")
  assert sorted(it["tokens"]) == sorted(ti["tokens"])
  prompt = chat.encode(r, TOK, tokens_per_image=2, drop_last_answer=True)
  assert _text(prompt["tokens"][-1:]) == "<|assistant|>" and (prompt["role"] == 1).all()


def test_pt_layout():
  r = generate.make_example(0, "train", 1)
  ex = chat.encode(r, TOK, tokens_per_image=2, stage="pt")
  assert _text(ex["tokens"][:3]) == "<s> <image> <image>"
  assert _text(ex["tokens"][ex["role"] == 2]) == r["caption"] + " <|endofchunk|>"


def test_pt_prompt_is_prompt_text_the_images_see_under_mma():
  r = generate.make_example(0, "train", 1)
  ex = chat.encode(r, TOK, tokens_per_image=2, stage="pt", pt_prompt="what is there ?")
  assert _text(ex["tokens"][:7]) == "<s> <image> <image> what is there ?"
  assert (ex["role"][:7] == 1).all()
  assert _text(ex["tokens"][ex["role"] == 2]) == r["caption"] + " <|endofchunk|>"
  ids = [jnp.asarray(ex[k])[None] for k in ("modality", "role", "turn")]
  seg = jnp.ones_like(ids[0])
  mma = np.asarray(masks.dense_mask(seg, *ids, "mma"))[0]
  causal = np.asarray(masks.dense_mask(seg, *ids, "causal"))[0]
  assert mma[1, 3:7].all() and not causal[1, 3:7].any()  # image rows read the instruction
  assert not mma[1, 7:].any()  # and never the caption (the response)
  no_prompt = chat.encode(r, TOK, tokens_per_image=2, stage="pt")
  ids = [jnp.asarray(no_prompt[k])[None] for k in ("modality", "role", "turn")]
  seg = jnp.ones_like(ids[0])
  np.testing.assert_array_equal(masks.dense_mask(seg, *ids, "mma"),
                                masks.dense_mask(seg, *ids, "causal"))  # PT as in the paper


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.update(images=[]), "1 <image> placeholders but 0 images"),
    (lambda r: r.update(images=[np.zeros((4, 4), np.uint8)]), "image 0 is missing or corrupt"),
    (lambda r: r.update(images=[None]), "image 0 is missing or corrupt"),
    (lambda r: r["conversations"].reverse(), "expected 'human'"),
])
def test_bad_records_name_the_record(mutate, match):
  r = generate.make_example(0, "train", 0)
  mutate(r)
  with pytest.raises(chat.BadRecord, match=match) as e:
    chat.encode(r, TOK, tokens_per_image=2)
  assert "shapes-train-0" in str(e.value)
