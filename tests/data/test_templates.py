"""Chat templates give the ids of each family's own template (transformers' apply_chat_template
with the family's jinja) for the same multi-turn conversation, on a tiny byte-level BPE."""
import numpy as np
import pytest
import tokenizers
import transformers

from mma_jax.data import chat, templates, vocab

# The families' chat templates as their tokenizer_config.json files ship them (tool-use branches
# of Qwen2.5's left out: no tools here).
JINJA = {
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
        "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
        "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    # Llama 3.1's (3.2's is the same but for strftime_now's date; date_string pins it).
    "llama3.1": (
        "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\""
        " %}{%- endif %}{%- if messages[0]['role'] == 'system' %}{%- set system_message = "
        "messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set "
        "system_message = \"\" %}{%- endif %}{{- \"<|start_header_id|>system<|end_header_id|>\n\n\" }}"
        "{{- \"Cutting Knowledge Date: December 2023\n\" }}{{- \"Today Date: \" + date_string + "
        "\"\n\n\" }}{{- system_message }}{{- \"<|eot_id|>\" }}{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
        "| trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
        "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"),
    "qwen2.5": (
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content']"
        " + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba "
        "Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}{%- for message in messages %}"
        "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
        "(message.role == \"assistant\") %}{{- '<|im_start|>' + message.role + '\n' + "
        "message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}{%- if "
        "add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"),
    "phi3.5": (
        "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"),
}
SPECIALS = {
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "llama3.1": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                 "<|eom_id|>"],
    "qwen2.5": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
    "phi3.5": ["<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"],
    "aki": ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"],
}
BOS_EOS = {"llama3": ("<|begin_of_text|>", "<|eot_id|>"),
           "llama3.1": ("<|begin_of_text|>", "<|eot_id|>"), "qwen2.5": (None, "<|im_end|>"),
           "phi3.5": ("<s>", "<|endoftext|>"), "aki": ("<s>", "</s>")}
CORPUS = ["What is in the image? A red circle and a small blue square.",
          "And how large is it?\nLarge.", "You are Qwen, created by Alibaba Cloud.",
          "A chat between a curious user and an artificial intelligence assistant."] * 3
RECORD = {"id": "two-turns", "images": [np.zeros((4, 4, 3), np.uint8)],
          "conversations": [
              {"from": "human", "value": "<image>\nWhat is in the image?"},
              {"from": "gpt", "value": "A red circle."},
              {"from": "human", "value": "And how large is it?"},
              {"from": "gpt", "value": "Large."}]}
MESSAGES = [{"role": "user", "content": "<image>\nWhat is in the image?"},
            {"role": "assistant", "content": "A red circle."},
            {"role": "user", "content": "And how large is it?"},
            {"role": "assistant", "content": "Large."}]


def tiny_tokenizer(family, add_image=True):
  """A byte-level BPE with the family's special tokens (and the template's image tokens)."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS[family],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  if add_image:
    added = vocab.add_image_tokens(tok, templates.get(family))
    assert added[0] == "<image>" and tok.token_to_id("<image>") == tok.get_vocab_size() - len(added)
  return tok


def _ids(out):
  return list(out["input_ids"] if not isinstance(out, list) else out)


@pytest.mark.parametrize("system", ["", "Answer briefly."])
@pytest.mark.parametrize("family", sorted(JINJA))
def test_ids_equal_the_family_template(family, system):
  raw = tiny_tokenizer(family)
  bos, eos = BOS_EOS[family]
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token=eos)
  hf.chat_template = JINJA[family]
  tok = vocab.Tokenizer(raw, family)
  record = dict(RECORD, system=system) if system else RECORD
  messages = ([{"role": "system", "content": system}] if system else []) + MESSAGES
  ex = chat.encode(record, tok, tokens_per_image=1)
  assert ex["tokens"].tolist() == _ids(hf.apply_chat_template(messages, tokenize=True))
  prompt = chat.encode(record, tok, tokens_per_image=1, drop_last_answer=True)
  assert prompt["tokens"].tolist() == _ids(hf.apply_chat_template(
      messages[:-1], tokenize=True, add_generation_prompt=True))
  # Loss spans: exactly the answers and what ends them, per turn.
  t = templates.get(family)
  for turn, answer in ((0, "A red circle."), (1, "Large.")):
    ids = ex["tokens"][(ex["role"] == 2) & (ex["turn"] == turn)]
    end = t.assistant_end + (t.conversation_end if turn == 1 else "")
    assert raw.decode(ids.tolist(), skip_special_tokens=False) == answer + end
  assert (ex["modality"] == 1).sum() == 1 and ex["tokens"][ex["modality"] == 1] == tok.image_id


def test_aki_template_matches_its_documented_prompt():
  raw = tiny_tokenizer("aki")
  tok = vocab.Tokenizer(raw, "aki")
  record = {"id": "aki", "images": [np.zeros((4, 4, 3), np.uint8)],
            "conversations": RECORD["conversations"][:2]}
  text = ("<s> <|system|>\n" + templates.AKI_SYSTEM + "<|end|>\n<|user|>\n<image>\n"
          "What is in the image?<|end|>\n<|assistant|>\nA red circle.</s>")
  ex = chat.encode(record, tok, tokens_per_image=3)
  want = raw.encode(text, add_special_tokens=False).ids
  image = tok.image_id
  want = [i for w in want for i in ([w] * 3 if w == image else [w])]  # 3 slots per image
  assert ex["tokens"].tolist() == want
  assert tok.eos_id == raw.token_to_id("</s>")
  # AKI trained with add_eos_token: Phi-3.5's eos (and <|end|>) also end a generated answer.
  assert tok.stop_ids == tuple(raw.token_to_id(t) for t in ("</s>", "<|endoftext|>", "<|end|>"))


def test_tokenizer_without_the_image_token_is_a_clear_error():
  raw = tiny_tokenizer("llama3", add_image=False)
  with pytest.raises(ValueError, match="no '<image>' token, which chat template 'llama3' needs"):
    vocab.Tokenizer(raw, "llama3")
  with pytest.raises(ValueError, match="no '<\\|im_start\\|>' token, which chat template 'qwen2.5'"):
    vocab.Tokenizer(raw, "qwen2.5")
