"""The Pallas kernels lower for their hardware (Triton for GPU, Mosaic for TPU) on a CPU-only
machine, at real tile sizes and dtypes, forward and backward; interpret mode cannot catch a
construct the real lowering rejects."""
import contextlib

import jax
import jax.numpy as jnp
import pytest

from mma_jax import attention
from mma_jax.kernels import pallas_gpu, pallas_tpu
from tests.layouts import vectors


def target(platform: str):
  """The device the lowering targets. JAX 0.12's Triton lowering asks which GPU (it reads the
  compute capability off the device): an abstract H100 on a one-device abstract mesh; 0.10
  and 0.11 lower without one."""
  if platform != "cuda" or not hasattr(jax.sharding, "AbstractDevice"):
    return contextlib.nullcontext()
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None,
                                       platform="cuda")
  mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  return jax.sharding.use_abstract_mesh(mesh)


@pytest.mark.parametrize("kernel, platform, head_dim, marker", [
    (pallas_gpu, "cuda", 96, "custom_call @__gpu$xla.gpu.triton"),  # head_dim padded to 128
    (pallas_tpu, "tpu", 128, "custom_call @tpu_custom_call"),
], ids=["gpu", "tpu"])
def test_forward_and_backward_lower_for_the_device(kernel, platform, head_dim, marker):
  layout = ("P" + "I" * 60 + "P" * 20 + "A" * 19) * 3  # 300 tokens, 3 examples
  v = {n: jnp.repeat(x, 2, axis=0) for n, x in vectors(layout, seg="1" * 100 + "2" * 100 +
                                                         "3" * 100).items()}
  q_ids, k_ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
  q = jnp.zeros((2, 300, 8, head_dim), jnp.bfloat16)
  kv = jnp.zeros((2, 300, 2, head_dim), jnp.bfloat16)

  def loss(q, k, v):
    return kernel.attention(q, k, v, q_ids, k_ids, interpret=False).astype(jnp.float32).sum()

  with target(platform):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(
        lowering_platforms=(platform,))
  assert lowered.as_text().count(marker) == 3  # forward, dq and dk/dv kernels
