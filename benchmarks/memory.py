"""Per-device memory and step FLOPs of a preset on a mesh, without allocating anything.

  python benchmarks/memory.py --devices=16 --hbm_gib=16 --mesh=1,16,1 --mesh=2,8,1
  python benchmarks/memory.py --preset=aki-4b --mesh=1,8,2 --batch=64 --length=4096
  python benchmarks/memory.py --preset=llama3.2-1b --mesh=1,16,1 --xla   # + XLA's view (slow)
  python benchmarks/memory.py --devices=1 --hbm_gib=80 --batch=8 --lora_rank=16  # LoRA vs full

Shapes come from jax.eval_shape and shardings from the logical rules on a device-free
AbstractMesh (mma_jax.train.memory): parameters and optimizer state exactly, activations as an
estimate under each preset's remat policy and the attention kernel of --backend. --xla also
compiles the real train step for fake CPU devices of that mesh (inputs are abstract: still
nothing allocated) and prints the compiler's per-device arguments and temporaries; XLA:CPU
schedules differently and runs CPU attention (dense scores up to 512 keys, blockwise beyond),
so compare it with --backend=cpu: a cross-check of the estimate, not a TPU measurement.
FLOPs: model FLOPs of one step (mma_jax.models.flops) and the step time at 100% of --peak_tflops.
"""
import argparse
import os
import sys

_DEFAULT_PRESETS = ("llama3.2-1b", "llama3.2-3b-siglip", "qwen2.5-7b-siglip",
                    "phi3.5-mini-siglip", "aki-4b")


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", action="append", help=f"repeatable; default {_DEFAULT_PRESETS}")
  p.add_argument("--mesh", action="append", help="data,fsdp,tensor (one may be -1); "
                 "repeatable; default 1,-1,1 (pure FSDP)")
  p.add_argument("--devices", type=int, default=16, help="devices of the cluster")
  p.add_argument("--hbm_gib", type=float, default=16.0, help="memory per device (v5e: 16)")
  p.add_argument("--peak_tflops", type=float, default=197.0, help="bf16 peak per device "
                 "(v5e: 197)")
  p.add_argument("--backend", default="tpu", choices=("tpu", "gpu", "cpu"),
                 help="the cluster's platform: picks the attention implementation of 'auto'")
  p.add_argument("--batch", type=int, default=32, help="global batch (rows)")
  p.add_argument("--length", type=int, default=2048, help="tokens per row")
  p.add_argument("--images", type=int, default=1, help="image slots per row")
  p.add_argument("--grad_accum", type=int, default=1)
  p.add_argument("--freeze", default="vision/.*", help="comma-separated regexes; '' = none")
  p.add_argument("--remat", default="", help="override the presets' remat policy (LLM + ViT)")
  p.add_argument("--xla", action="store_true", help="also compile for fake CPU devices")
  p.add_argument("--lora_rank", type=int, default=0, help="also a row per preset with LoRA "
                 "adapters of this rank on the LLM's q k v o gate up down, base in bfloat16")
  return p.parse_args(argv)


def main(argv=None):
  args = parse(argv)
  # Before jax is imported: --xla compiles for that many fake CPU devices.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  from mma_jax import config as config_lib
  from mma_jax import sharding
  import dataclasses
  from mma_jax.models import configs, presets

  optim_cfg = config_lib.base_config().optim
  optim_cfg.freeze = tuple(r for r in args.freeze.split(",") if r)
  rules = sharding.make_rules()
  meshes = [tuple(int(s) for s in m.split(",")) for m in (args.mesh or ["1,-1,1"])]
  print(f"{args.devices} devices x {args.hbm_gib:g} GiB, batch {args.batch} x {args.length} "
        f"tokens, {args.images} image(s)/row, grad_accum {args.grad_accum}, frozen "
        f"{optim_cfg.freeze or 'nothing'}; GiB per device (params f32 + AdamW f32 + grads f32 "
        "+ activations estimate)")
  head = (f"{'preset':<30} {'mesh d,f,t':<11} {'params':>7} {'optim':>7} {'grads':>7} "
          f"{'activ':>7} {'total':>7} {'fits':>5} {'PFLOP/step':>10} {'s@peak':>7}")
  if args.xla:
    head += f" {'xla args':>8} {'xla temp':>8}"
  print(head)
  for name in args.preset or _DEFAULT_PRESETS:
    model = presets.model(name)
    if args.remat:
      model.llm.remat = model.vision.remat = args.remat
    full = configs.vlm_config_from_dict(model.to_dict())
    runs = [(name, full, optim_cfg)]
    if args.lora_rank:  # adapters train, the frozen base is kept in bfloat16
      targets = tuple(config_lib.base_config().lora.llm_targets)
      lora = configs.LoRAConfig(args.lora_rank, 16.0, targets)
      optim_lora = config_lib.base_config().optim
      optim_lora.frozen_dtype = "bfloat16"
      runs.append((f"{name} lora r={args.lora_rank}",
                   dataclasses.replace(full, llm=dataclasses.replace(full.llm, lora=lora)),
                   optim_lora))
    for label, cfg, optim in runs:
      _rows(args, label, cfg, optim, meshes, rules)


def _rows(args, name, cfg, optim_cfg, meshes, rules):
  """One line per mesh: GiB per device of each item, FLOPs, XLA's view with --xla."""
  from mma_jax import sharding
  from mma_jax.models import build, flops
  from mma_jax.train import memory
  trainable = memory.trainable_components(sharding.unbox(build.abstract_params(cfg)),
                                          optim_cfg.freeze)
  step_flops = flops.train_step(cfg, args.batch, args.length, args.images, trainable)
  for shape in meshes:
    mesh = sharding.abstract_mesh(shape, args.devices)
    u = memory.estimate(cfg, mesh, rules, optim_cfg, args.batch, args.length, args.images,
                        args.grad_accum, args.backend)
    r = u.row()
    fits = "yes" if u.total <= args.hbm_gib * memory.GiB else "NO"
    line = (f"{name:<30} {','.join(map(str, mesh.axis_sizes)):<11} {r['params']:7.2f} "
            f"{r['optimizer']:7.2f} {r['gradients']:7.2f} {r['activations']:7.2f} "
            f"{r['total']:7.2f} {fits:>5} {step_flops / 1e15:10.3f} "
            f"{step_flops / (args.devices * args.peak_tflops * 1e12):7.2f}")
    if args.xla:  # the same step compiled for fake CPU devices of this mesh
      stats = memory.compiled(cfg, sharding.make_mesh(shape), rules, optim_cfg, args.batch,
                              args.length, args.images, args.grad_accum)
      line += (f" {stats.argument_size_in_bytes / memory.GiB:8.2f}"
               f" {stats.temp_size_in_bytes / memory.GiB:8.2f}")
    print(line, flush=True)


if __name__ == "__main__":
  sys.exit(main())
