"""Inside a multi-device mesh a kernel runs per shard (shard_map over batch and heads) and
gives the unsharded result. Run in a subprocess: the host device count is fixed at start-up."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import flax.linen as nn, jax, numpy as np
    from mma_jax import attention, sharding
    from tests.layouts import vectors
    v = {n: np.repeat(x, 4, 0) for n, x in
         vectors("PIIPPAPIIIPPAA..PIPPA..", seg="11111122222222000333300").items()}
    ids = attention.token_ids(v["segment_ids"], v["modality"], v["role"], v["turn"], "mma")
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (4, 23, 4, 8))
    k, val = jax.random.normal(kk, (4, 23, 2, 8)), jax.random.normal(kv, (4, 23, 2, 8))
    w = jax.random.normal(jax.random.key(1), q.shape)
    def loss(impl):  # gradients flow back through the shard_map too
      return lambda q, k, v: (attention.attention(q, k, v, *ids, implementation=impl) * w).sum()
    want = attention.attention(q, k, val, *ids, implementation="xla")
    want_grads = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, val)
    for mesh_shape in ((2, 1, 2), (1, 1, 4)):  # (1, 1, 4): 2 kv heads, heads left unsharded
      with jax.set_mesh(sharding.make_mesh(mesh_shape)), nn.logical_axis_rules(
          sharding.DEFAULT_RULES):
        for impl in ("pallas_gpu", "blockwise"):
          f = jax.jit(lambda *a: attention.attention(*a, implementation=impl))
          assert "shard_map" in str(jax.make_jaxpr(f)(q, k, val, *ids))
          np.testing.assert_allclose(f(q, k, val, *ids), want, atol=1e-5)
          grads = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2)))(q, k, val)
          for g, g_want in zip(grads, want_grads):
            np.testing.assert_allclose(g, g_want, atol=1e-4)
    print("OK")
""")


def test_kernel_runs_per_shard_inside_a_mesh():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=root)
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
