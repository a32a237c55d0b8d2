"""HF <-> mma_jax conversion: logit parity per family, exact round trips, AKI layout, key diffs."""
import json
import os

import numpy as np
import pytest
torch = pytest.importorskip(  # absent on the Python 3.12 CI leg
    "torch", reason="PyTorch parity: torch is installed on the Python 3.11 CI leg only")
import transformers

from mma_jax.convert import __main__ as cli
from mma_jax.convert import hf, parity, tensors
from tests.convert import hf_models


def _tensors(directory):
  return tensors.read_tensors(str(directory))


@pytest.mark.parametrize("name", sorted(hf_models.LLMS))
def test_llm_logits_match_transformers_and_round_trip_is_exact(name, tmp_path, capsys):
  src, conv, back = tmp_path / "hf", tmp_path / "ours", tmp_path / "back"
  original = hf_models.save_llm(name, src)
  # The CLI check: converts, runs both, prints the line, exits 0 within tolerance.
  assert cli.main(["check", "--hf", str(src), "--seq_len", "24"]) == 0
  line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("max_abs_logit_diff")]
  assert float(line[0].split(":")[1]) < 1e-4
  if name == "phi3_longrope":  # within the original 16 positions: the short factors
    assert parity.check(str(src), seq_len=12)["max_abs_diff"] < 1e-4

  assert cli.main(["--llm", str(src), "--out", str(conv)]) == 0
  assert cli.main(["export", "--from", str(conv), "--hf_out", str(back)]) == 0
  a, b = _tensors(src), _tensors(back)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The exported directory loads in transformers and computes the same logits.
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(back), dtype=torch.float32)
  ids = torch.randint(0, 96, (2, 20))
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(input_ids=ids).logits.numpy(),
                               original(input_ids=ids).logits.numpy(), atol=1e-6)


def test_sharded_checkpoint_reads_like_a_single_file(tmp_path):
  hf_models.save_llm("llama_untied", tmp_path / "one")
  hf_models.save_llm("llama_untied", tmp_path / "many", max_shard_size="20KB")
  assert os.path.exists(tmp_path / "many" / tensors.INDEX)
  one, many = _tensors(tmp_path / "one"), _tensors(tmp_path / "many")
  assert sorted(one) == sorted(many)
  assert parity.check(str(tmp_path / "many"), seq_len=8)["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("layout", ["transformers5", "transformers4"])
def test_siglip_vision_parity_and_round_trip(layout, tmp_path):
  """transformers 5 saves a SiglipVisionModel without the vision_model. prefix, 4.x with it
  (most released vision-only directories); both import, and exports use the prefixed layout,
  which both versions load."""
  original = hf_models.save_siglip(tmp_path / "vit", use_head=False)
  if layout == "transformers4":
    t = {f"vision_model.{k}": v for k, v in _tensors(tmp_path / "vit").items()}
    tensors.write_tensors(str(tmp_path / "vit"), t, tensors.read_config(str(tmp_path / "vit")))
  result = parity.check(str(tmp_path / "vit"))
  assert result["kind"] == "vision" and result["max_abs_diff"] < 1e-4
  assert result["shape"] == [2, 16, 32]  # 30 px / patch 7 floors to 4 x 4 patches
  cli.main(["--vision", str(tmp_path / "vit"), "--out", str(tmp_path / "ours")])
  cli.main(["export", "--from", str(tmp_path / "ours"), "--hf_out", str(tmp_path / "back"),
            "--part", "vision"])
  a, b = _tensors(tmp_path / "vit"), _tensors(tmp_path / "back")
  assert all(k.startswith("vision_model.") for k in b)
  a = {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in a.items()}
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  reloaded = transformers.SiglipVisionModel.from_pretrained(str(tmp_path / "back")).eval()
  x = torch.randn(1, 3, 30, 30)
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(pixel_values=x).last_hidden_state.numpy(),
                               original(pixel_values=x).last_hidden_state.numpy(), atol=1e-6)


def test_full_siglip_model_uses_only_its_vision_tower(tmp_path):
  hf_models.save_siglip_full(tmp_path / "siglip")
  conv = hf.import_vision(str(tmp_path / "siglip"))
  assert conv.components == ["vision"]
  assert parity.check(str(tmp_path / "siglip"))["max_abs_diff"] < 1e-4


def test_vision_plus_llm_makes_a_fresh_vlm_that_runs(tmp_path):
  from mma_jax.models import configs, vlm
  from tests.layouts import model_batch
  hf_models.save_siglip(tmp_path / "vit")
  hf_models.save_llm("qwen2_tied", tmp_path / "llm")
  cli.main(["--vision", str(tmp_path / "vit"), "--llm", str(tmp_path / "llm"),
            "--num_latents", "3", "--out", str(tmp_path / "vlm")])
  meta, params = hf.load(str(tmp_path / "vlm"))
  assert meta["components"] == ["vision", "connector", "llm"] and meta["template"] == "qwen2.5"
  cfg = configs.vlm_config_from_dict(meta["model"])
  batch = model_batch("PPIIIPPA", tokens_per_image=3, image_size=30)
  logits, _ = vlm.VLM(cfg).apply({"params": params}, batch, "mma")
  assert logits.shape == (1, 8, 96) and np.isfinite(np.asarray(logits)).all()
  # The LLM inside is exactly the converted one.
  llm_only = hf.import_llm(str(tmp_path / "llm"))
  for k, v in llm_only.params.items():
    np.testing.assert_array_equal(hf.flat(params)[k], v)


def test_unknown_missing_and_misshaped_keys_stop_with_a_readable_diff(tmp_path):
  src = tmp_path / "hf"
  hf_models.save_llm("llama_untied", src)
  t = _tensors(src)
  t["model.layers.0.self_attn.extra.weight"] = np.zeros((2, 2), np.float32)
  del t["model.layers.1.mlp.up_proj.weight"]
  t["model.norm.weight"] = np.zeros((31,), np.float32)
  tensors.write_tensors(str(tmp_path / "bad"), t, tensors.read_config(str(src)))
  with pytest.raises(tensors.KeyMismatch) as e:
    hf.import_llm(str(tmp_path / "bad"))
  msg = str(e.value)
  assert "- missing   model.layers.1.mlp.up_proj.weight (64, 32)" in msg
  assert "+ unknown   model.layers.0.self_attn.extra.weight (2, 2)" in msg
  assert "~ shape     model.norm.weight: checkpoint (31,), model needs (32,)" in msg
  assert not os.path.exists(tmp_path / "out")


def test_pickle_only_directory_is_refused(tmp_path):
  hf_models.save_llm("llama_untied", tmp_path / "hf")
  os.remove(tmp_path / "hf" / "model.safetensors")
  (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="pickle files .*pytorch_model.bin.*never read"):
    hf.import_llm(str(tmp_path / "hf"))


def test_check_exits_nonzero_above_tolerance(tmp_path):
  hf_models.save_llm("llama_untied", tmp_path / "hf")
  # A negative tolerance no difference can meet: the exit code must say so.
  assert cli.main(["check", "--hf", str(tmp_path / "hf"), "--tolerance", "-1"]) == 1


@pytest.mark.parametrize("spare_rows", [0, 5])
def test_added_image_tokens_get_the_mean_of_the_trained_rows(spare_rows, tmp_path):
  """Phi-3.5 and Qwen2.5 tables have spare rows past their tokenizer: <image> lands there, and
  its row must still be the mean of the tokenizer's own rows, not an untrained one."""
  from tests.data.test_templates import tiny_tokenizer
  tok = tiny_tokenizer("qwen2.5", add_image=False)
  trained = tok.get_vocab_size()
  hf_models.save_llm("qwen2_untied", tmp_path / "llm", vocab_size=trained + spare_rows)
  tok.save(str(tmp_path / "llm" / "tokenizer.json"))
  conv = hf.import_llm(str(tmp_path / "llm"))
  before = {k: v.copy() for k, v in conv.params.items()}
  added = hf.add_image_tokens(conv, str(tmp_path / "llm"), str(tmp_path / "out"))
  assert added == ["<image>", "<|endofchunk|>"]
  assert conv.model["llm"]["vocab_size"] == trained + max(spare_rows, 2)
  emb, head = before["llm/embedder/embedding"], before["llm/lm_head/kernel"]
  new_emb, new_head = conv.params["llm/embedder/embedding"], conv.params["llm/lm_head/kernel"]
  for i in (trained, trained + 1):  # the ids the tokenizer gave the two tokens
    np.testing.assert_allclose(new_emb[i], emb[:trained].mean(0), atol=1e-7)
    np.testing.assert_allclose(new_head[:, i], head[:, :trained].mean(1), atol=1e-7)
  np.testing.assert_array_equal(new_emb[:trained], emb[:trained])
  np.testing.assert_array_equal(new_emb[trained + 2:], emb[trained + 2:])  # other spare rows


def test_llama_31_and_32_get_their_dated_system_template(tmp_path):
  hf_models.save_llm("llama_untied", tmp_path / "l30")
  hf_models.save_llm("llama3_scaled_tied", tmp_path / "l31")
  assert hf.import_llm(str(tmp_path / "l30")).template == "llama3"   # no llama3 rope scaling
  assert hf.import_llm(str(tmp_path / "l31")).template == "llama3.1"
  # The tokenizer's own jinja decides when it is there.
  for name, jinja, want in (("l30", "...Cutting Knowledge Date: December 2023...", "llama3.1"),
                            ("l31", "{{ bos_token }}...<|start_header_id|>...", "llama3")):
    with open(tmp_path / name / "tokenizer_config.json", "w") as f:
      json.dump({"chat_template": jinja}, f)
    assert hf.import_llm(str(tmp_path / name)).template == want
