"""torchrun + FSDP2: one code path from a single CPU process to many GPUs.

Without torchrun (no RANK in the environment) everything runs in one process, no process group.
Under `torchrun --nproc_per_node N`, each process joins a group (NCCL on GPUs, gloo on CPU) and
models are sharded with FSDP2: `fully_shard` on every decoder block, then on the root, with bf16
parameters and fp32 gradient reduction on GPU (PyTorch's FSDP2 `fully_shard` and
`MixedPrecisionPolicy`; torchtitan applies it the same way). Rank 0 alone writes files.

Gradients are SUMMED over ranks (FSDP's division by the world size is turned off, as torchtitan
does), so a trainer writes its loss as it means it: each rank's share of the sum, divided by the
count over the GLOBAL batch (examples or tokens, all-reduced). Then one process and N processes
take the same step, with no world-size factor anywhere.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Join torchrun's process group if launched by torchrun; pick this process's device."""
    if "RANK" not in os.environ:
        return Dist(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu"))


def shard(model: torch.nn.Module, blocks, d: Dist, mixed_precision: bool = True) -> torch.nn.Module:
    """FSDP2: fully_shard each decoder block, then the root. On GPU with mixed_precision, compute in
    bf16 with fp32 master weights and fp32 gradient reduction. Gradients are summed over ranks, not
    averaged (the loss is divided by the global count instead). A no-op for one process."""
    if not d.enabled:
        return model
    mesh = init_device_mesh(d.device.type, (d.world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if mixed_precision and d.device.type == "cuda" else MixedPrecisionPolicy())
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():  # reduce-scatter with SUM and no division (gloo has no PREMUL_SUM)
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Clip the gradients' global L2 norm to max_norm; returns the norm before clipping as a plain
    tensor on every rank (under FSDP, torch computes it over all shards as a DTensor)."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state_dict(model: torch.nn.Module, d: Dist) -> dict:
    """The unsharded state dict on CPU (on rank 0; other ranks get {} but must call it too)."""
    if not d.enabled:
        return model.state_dict()
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def all_reduce_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return value


def all_reduce_max(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def reduce_sums(d: Dist, device, named: dict) -> dict[str, float]:
    """Sum each named number over all ranks (one all-reduce), as Python floats."""
    values = torch.stack([torch.as_tensor(v, device=device).double() for v in named.values()])
    return dict(zip(named, all_reduce_sum(values, d).tolist()))


def reduce_max(d: Dist, device, named: dict) -> dict[str, float]:
    """The largest value of each named number over all ranks (one all-reduce), as Python floats."""
    values = torch.stack([torch.as_tensor(v, device=device).double() for v in named.values()])
    return dict(zip(named, all_reduce_max(values, d).tolist()))


CPU_BF16_HELP = ("bf16 autocast on CPU too (fp32 master weights, as on one GPU): about 2.4x faster steps on CPUs "
                 "with AVX512-BF16 or AMX; the numbers then differ from fp32 as a GPU run's do")


def autocast(d: Dist, cpu_bf16: bool = False):
    """bf16 compute over fp32 master weights on one GPU (under torchrun FSDP's mixed-precision policy
    does it: see shard). On CPU only when asked (--cpu-bf16): fp32 stays the CPU default, the exact
    path the tests pin; CPUs with AVX512-BF16 or AMX run a training step about 2.4x faster in bf16
    (SmolLM2-135M, bench/cpu_bf16.py)."""
    if d.device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=d.device.type == "cuda" and not d.enabled)


def replicated_copy(model: torch.nn.Module, d: Dist, replica: torch.nn.Module | None, dtype=None) -> torch.nn.Module:
    """A plain (unsharded) replica of a model's current weights on every rank, in `dtype`, e.g. for
    generation: under FSDP the weights are gathered ONCE per call instead of every layer for every
    generated token, and on one GPU the replica is a bf16 copy of fp32 master weights. Built on first
    use, refreshed in place after; tensors are gathered and cast one at a time, so the extra memory
    is one full tensor, not a second copy of the model. Without sharding and in the model's own
    dtype: the model itself."""
    params = model.state_dict()
    dtype = dtype or next(model.parameters()).dtype
    if not d.enabled and dtype == next(model.parameters()).dtype:
        return model
    if replica is None:
        with torch.device("meta"):
            replica = type(model)(model.config).to(dtype)
        replica.to_empty(device=d.device).init_buffers()
        replica.requires_grad_(False).eval()
    target = replica.state_dict()
    with torch.no_grad():
        for name, tensor in params.items():  # same order on every rank: the all-gathers pair up
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            target[name].copy_(full)
    return replica


def gather_lists(items: list, d: Dist) -> list:
    """Concatenate each rank's list on every rank (rank order)."""
    if not d.enabled:
        return items
    out = [None] * d.world_size
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def barrier(d: Dist):
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist):
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
