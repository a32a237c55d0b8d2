"""Test-session setup: one JAX compilation cache shared by every test and subprocess.

Many tests compile the same tiny programs (the train step, the decoder, the evaluator), in this
process, in pytest-xdist workers and in the `python -m mma_jax.main` subprocesses they start.
The persistent cache lets the second compile of a program load the first one's executable. It
lives in a fresh directory per session, so no state leaks between runs. XLA's backend
optimisations are off by default in tests: compiles take a fraction of the time and the tiny
programs compute the same values (a test that sets its own XLA_FLAGS keeps them). The variables
are set before anything imports JAX, and subprocesses and xdist workers inherit them.
"""
import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="mma_jax_test_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
