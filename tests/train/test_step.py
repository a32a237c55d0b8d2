"""The train step's loss and what it spends: the chunked loss equals the whole one, remat
policies change memory and nothing else, and flops / the memory estimate follow the config."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mma_jax import config as config_lib
from mma_jax import sharding
from mma_jax.models import configs, flops, vlm
from mma_jax.train import memory, optimizer
from mma_jax.train import step as step_lib
from tests.layouts import model_batch, tiny_vlm_config

# Two examples with an image each and answers: 37 tokens, so chunks of 8 leave a ragged end.
LAYOUT = "P" + "I" * 4 + "PPP" + "A" * 8 + "P" + "I" * 4 + "PP" + "A" * 14 + "..."
VOCAB = 512


def _batch():
  b = model_batch(LAYOUT, num_images=3)
  b["tokens"] = np.random.default_rng(0).integers(5, VOCAB, b["tokens"].shape).astype(np.int32)
  b["targets"] = np.roll(b["tokens"], -1, axis=1)
  b["loss_mask"] = b["role"] == 2
  b["image_valid"] = np.array([[True, True, False]])
  second = dict(b, targets=b["targets"][:, ::-1].copy())
  return {k: np.concatenate([b[k], second[k]]) for k in b}


def _model(**llm):
  return vlm.VLM(tiny_vlm_config(vocab_size=VOCAB, **llm))


def _loss_and_grads(model, params, batch):
  f = lambda p: step_lib.model_loss(model, p, batch, "mma")
  return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


def _assert_same(a, b, rtol):
  (s1, n1), g1 = a
  (s2, n2), g2 = b
  assert float(n1) == float(n2) > 0
  np.testing.assert_allclose(float(s1), float(s2), rtol=rtol)
  for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def params():
  return jax.jit(_model().init, static_argnums=2)(jax.random.key(0), _batch(), "mma")["params"]


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_loss_equals_the_whole_logits_loss(tie):
  model = _model(tie_embeddings=tie)
  batch = _batch()
  p = jax.jit(model.init, static_argnums=2)(jax.random.key(1), batch, "mma")["params"]
  whole = _model(tie_embeddings=tie, loss_chunk=-1)
  assert whole.cfg.llm.loss_chunk_for(37) == 0
  for chunk in (8, 16):  # ragged and not
    chunked = _model(tie_embeddings=tie, loss_chunk=chunk)
    assert chunked.cfg.llm.loss_chunk_for(37) == chunk
    _assert_same(_loss_and_grads(whole, p, batch), _loss_and_grads(chunked, p, batch), 1e-5)


def test_auto_chunks_only_rows_whose_logits_pass_4_gib():
  assert configs.LLMConfig(vocab_size=256).loss_chunk_for(4096) == 0
  assert configs.LLMConfig(vocab_size=32768).loss_chunk_for(4096) == 0
  # 4096 x 128,256 f32 logits are 2.1 GB: whole (chunks cost step time, measured on an H200)
  assert configs.LLMConfig(vocab_size=128256).loss_chunk_for(4096) == 0
  assert configs.LLMConfig(vocab_size=128256).loss_chunk_for(16384) == 2048  # 8.4 GB: chunked
  assert configs.LLMConfig(vocab_size=32768).loss_chunk_for(65536) == 8192
  assert configs.LLMConfig(vocab_size=128256, loss_chunk=-1).loss_chunk_for(4096) == 0


def test_chunked_loss_holds_less_in_memory():
  model_cfg = dataclasses.replace(tiny_vlm_config(), llm=configs.LLMConfig(
      vocab_size=8192, hidden=64, layers=1, heads=2, kv_heads=1, head_dim=32, mlp_dim=128))
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  optim = config_lib.base_config().optim

  def temp(chunk):
    cfg = dataclasses.replace(model_cfg, llm=dataclasses.replace(model_cfg.llm,
                                                                 loss_chunk=chunk))
    return memory.compiled(cfg, mesh, sharding.make_rules(), optim, 2, 512,
                           2).temp_size_in_bytes

  logits = 2 * 512 * 8192 * 4  # one f32 copy of the whole logits: 32 MiB
  whole, chunked = temp(-1), temp(64)
  assert whole - chunked > logits and chunked < whole / 2


@pytest.mark.parametrize("policy", configs.REMAT_POLICIES)
def test_each_remat_policy_compiles_and_gives_the_same_loss(params, policy):
  batch = _batch()
  _assert_same(_loss_and_grads(_model(), params, batch),
               _loss_and_grads(_model(remat=policy), params, batch), 1e-5)


def test_memory_estimate_follows_remat_chunks_and_image_passes():
  cfg = configs.VLMConfig(
      vision=configs.ViTConfig(image_size=32, hidden=64, layers=2, heads=2, mlp_dim=128),
      llm=configs.LLMConfig(vocab_size=32768, hidden=128, layers=4, heads=4, kv_heads=2,
                            head_dim=32, mlp_dim=512, loss_chunk=-1))
  mesh, rules = sharding.abstract_mesh((1, 1, 1), 1), sharding.make_rules()
  trainable = {"vision": False, "connector": True, "llm": True}

  def acts(model_cfg, **llm):
    model_cfg = dataclasses.replace(model_cfg, llm=dataclasses.replace(model_cfg.llm, **llm))
    return memory.activations(model_cfg, mesh, rules, 2, 2048, 8, trainable, "cpu")

  # Saving less for the backward pass: none > dots > dots_no_batch > full.
  by_policy = [acts(cfg, remat=p) for p in ("none", "dots", "dots_no_batch", "full")]
  assert by_policy == sorted(by_policy, reverse=True) and len(set(by_policy)) == 4
  # One chunk's logits instead of the row's: three f32 copies of (2048 - 512) x 32768 per row.
  assert acts(cfg) - acts(cfg, loss_chunk=512) == 2 * (2048 - 512) * 32768 * 4 * 3
  # A frozen tower works on one pass of images_per_row: less than on every slot.
  one_pass = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, images_per_row=2))
  assert acts(one_pass) < acts(cfg)


def test_flops_count_the_encoded_or_the_real_images():
  cfg = tiny_vlm_config()
  trainable = {"vision": False, "connector": True, "llm": True}
  budget = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, images_per_row=1.5))
  every = flops.train_step(cfg, 4, 64, 8, trainable)
  one_pass = flops.train_step(budget, 4, 64, 8, trainable)
  useful = flops.train_step(cfg, 4, 64, 8, trainable, real_images=1.5)
  per_image = flops.vision(cfg.vision).total + 3 * flops.connector(cfg).total  # connector trains
  assert every - one_pass == pytest.approx(4 * (8 - 1.5) * per_image)
  assert useful == pytest.approx(one_pass)
  assert flops.train_step(cfg, 4, 64, 8, trainable, real_images=None) == every


def test_flops_count_attention_over_whole_rows_or_the_allowed_pairs():
  cfg = tiny_vlm_config()
  trainable = {"vision": False, "connector": True, "llm": True}
  whole = flops.train_step(cfg, 4, 64, 8, trainable)
  assert flops.train_step(cfg, 4, 64, 8, trainable, pairs=64 * 64) == pytest.approx(whole)
  # The LLM trains: its attention costs forward + 2x backward, 4·H·D per pair forward.
  llm = cfg.llm
  per_pair = 3 * llm.layers * 4 * llm.heads * llm.head_dim
  useful = flops.train_step(cfg, 4, 64, 8, trainable, pairs=1000)
  assert whole - useful == pytest.approx(4 * (64 * 64 - 1000) * per_pair)


def test_train_step_reports_the_images_it_holds(params):
  model, batch = _model(), _batch()
  opt = optimizer.make(config_lib.base_config().optim, 10, params)[0]
  trainable = optimizer.trainable_mask(params, ("vision/.*",))
  step = jax.jit(step_lib.make_train_step(model, opt, "mma", 1, trainable))
  _, metrics = step(step_lib.TrainState(jnp.int32(0), params, opt.init(params)), batch)
  assert int(metrics["images"]) == 4  # two rows of two images; the third slots are empty


def _sorts(jaxpr, in_loop=False, counts=None):
  """{False: sorts outside any loop, True: sorts inside scan / while bodies} of a jaxpr."""
  counts = {False: 0, True: 0} if counts is None else counts
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "sort":
      counts[in_loop] += 1
    looped = in_loop or eqn.primitive.name in ("scan", "while")
    for sub in _subjaxprs(eqn):
      _sorts(sub, looped, counts)
  return counts


def _subjaxprs(eqn):
  """The jaxprs in an equation's params (scan, while, cond, pjit, custom_vjp, remat...)."""
  for v in eqn.params.values():
    for x in v if isinstance(v, (tuple, list)) else (v,):
      x = getattr(x, "jaxpr", x)  # a closed jaxpr's open one
      if hasattr(x, "eqns"):
        yield x


# Not mosaic_gpu: its GPU interpret mode does not trace inside flax's nn.scan on the CPU
# (flax: "broadcasted variable has a data dependency on the scan body"; it runs in the model
# on a GPU); tests/kernels/test_mosaic_gpu.py checks its prepared path. tokamax needs a GPU.
@pytest.mark.parametrize("impl", ["blockwise", "pallas_gpu", "pallas_tpu"])
def test_the_attention_plan_is_sorted_once_per_call_not_per_layer(impl):
  """The plan's sorts (argsort of the live blocks) sit outside the layers' scan, in the
  forward (eval, prefill) and in the train step with rematerialised layers: as many as one
  attention.prepare has. Before (each layer planning for itself, blockwise, 3 layers, remat
  full), both had 2 sorts inside the scan bodies, run once per layer."""
  from mma_jax import attention, tokens
  if attention.unavailable(impl, "cpu"):  # a JAX without Pallas's Triton backend
    pytest.skip(attention.unavailable(impl, "cpu"))
  batch = _batch()
  model = _model(attention=impl, layers=3, remat="full")
  params = jax.eval_shape(lambda key: model.init(key, batch, "mma"), jax.random.key(0))["params"]
  ids = attention.token_ids(*(jnp.asarray(batch[k]) for k in
                              ("segment_ids", "modality", "role", "turn")), "mma")
  one_prepare = _sorts(jax.make_jaxpr(lambda: attention.prepare(*ids, 16, impl))().jaxpr)[False]
  assert one_prepare >= 1
  forward = lambda p: model.apply({"params": p}, tokens.model_inputs(batch), "mma")[0]
  train = jax.value_and_grad(lambda p: step_lib.model_loss(model, p, batch, "mma"), has_aux=True)
  for fn in (forward, train):
    assert _sorts(jax.make_jaxpr(fn)(params).jaxpr) == {False: one_prepare, True: 0}


def test_unrolled_layers_give_the_same_loss_and_gradients(params):
  """unroll=0 (no layer loop, the tiny preset's) against a loop of one layer per iteration."""
  batch = _batch()
  looped = _loss_and_grads(_model(unroll=1), params, batch)
  for unroll in (0, 2):
    _assert_same(looped, _loss_and_grads(_model(unroll=unroll), params, batch), 1e-6)
