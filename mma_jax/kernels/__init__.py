"""Attention kernels that read the compact mask form (mma_jax.attention.TokenIds).

block_mask  the mask per element and per block, and which key blocks each query block visits
flash       online-softmax block math shared by the blockwise and GPU kernels
blockwise   memory-efficient XLA path (any backend; the CPU default for long sequences)
pallas_gpu  Pallas Triton kernel, forward and backward (GPU)
mosaic_gpu  Pallas Mosaic GPU kernel (wgmma, TMA), forward and backward (Hopper GPU)
pallas_tpu  Splash-style Pallas Mosaic kernel, forward and backward (TPU)
tokamax_gpu tokamax's Mosaic GPU flash attention (optional), through one key order
"""

# The attention implementations (config key model.llm.attention; mma_jax.attention runs them).
# Here so that configs can check a name without loading any kernel: this file imports nothing.
IMPLEMENTATIONS = ("auto", "xla", "blockwise", "pallas_gpu", "mosaic_gpu", "pallas_tpu",
                   "tokamax")
