"""SFT with MMA starts from a converted checkpoint: configs/from_hf.py:DIR."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from mma_jax import checkpoint
from mma_jax.convert import __main__ as convert_cli
from mma_jax.convert import hf, parity
from mma_jax.models import lora
from mma_jax.train.loop import train_and_evaluate
from tests.convert import hf_models  # skips this module where torch is absent


def _from_hf_config(directory):
  spec = importlib.util.spec_from_file_location(
      "from_hf", os.path.join(os.path.dirname(__file__), "..", "..", "configs", "from_hf.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(str(directory))


def test_sft_starts_from_the_converted_weights(tmp_path):
  vlm_dir = hf_models.converted_vlm(tmp_path)
  c = _from_hf_config(vlm_dir)
  assert c.data.template == "qwen2.5" and c.model.vision.image_size == 30
  c.data.dir = str(tmp_path / "data")
  c.data.train_size, c.data.validation_size, c.data.test_size = 40, 4, 8
  c.data.pack_length, c.data.max_images = 384, 2
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 1, 2, 1, 1
  c.eval.batch_size, c.eval.prompt_length, c.eval.max_new_tokens = 8, 320, 2
  c.optim.lr = 1e-9  # one step barely moves the weights: they must still be the converted ones
  metrics = train_and_evaluate(c, str(tmp_path / "run"))
  assert "accuracy/all" in metrics
  _, converted = hf.load(str(vlm_dir))
  template = jax.tree_util.tree_map(jnp.asarray, converted)
  trained, step = checkpoint.load_params(str(tmp_path / "run"), template)
  assert step == 1
  for key, value in hf.flat(converted).items():
    np.testing.assert_allclose(hf.flat(trained)[key], value, atol=1e-6, err_msg=key)


def test_lora_export_merges_the_adapters_into_the_kernels(tmp_path):
  """SFT with LoRA from a converted model, export with --lora_run: transformers' logits of the
  exported LLM equal our adapted model's (base + adapters), and the adapters mattered."""
  vlm_dir = hf_models.converted_vlm(tmp_path)
  c = _from_hf_config(vlm_dir)
  c.data.dir = str(tmp_path / "data")
  c.data.train_size, c.data.validation_size, c.data.test_size = 40, 4, 8
  c.data.pack_length, c.data.max_images = 384, 2
  c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.log_every = 2, 2, 2, 1
  c.eval.batch_size, c.eval.prompt_length, c.eval.max_new_tokens = 8, 320, 2
  c.optim.lr, c.optim.warmup_steps = 1e-2, 1
  c.lora.rank, c.lora.alpha = 4, 8.0
  run = str(tmp_path / "run")
  train_and_evaluate(c, run)
  out = str(tmp_path / "hf_llm")
  convert_cli.main(["export", "--from", str(vlm_dir), "--hf_out", out, "--part", "llm",
                    "--lora_run", run])
  meta, base = hf.load(str(vlm_dir))
  adapters, _ = checkpoint.load_saved_params(run)
  model = dict(meta["model"], llm=dict(meta["model"]["llm"], lora={
      "rank": 4, "alpha": 8.0, "targets": tuple(c.lora.llm_targets)}))
  tokens = np.random.default_rng(0).integers(0, meta["model"]["llm"]["vocab_size"], (2, 12))
  ours = parity.llm_logits(model, lora.combine(base, adapters), tokens)
  torch, transformers = parity._torch()  # pylint: disable=protected-access
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = hf_model(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  assert np.abs(ours - parity.llm_logits(meta["model"], base, tokens)).max() > 1e-4
