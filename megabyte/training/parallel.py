"""Data parallelism for the training loop, kept out of the model: DDP replicas, FSDP2 shards,
and loading a checkpoint's state into the shards.

    compile_blocks(model)                            # train.compile: each block its own graphs
    network = apply_ddp(model, device)               # a replica per process, gradients averaged
    model = apply_fsdp(model, device, world_size, param_dtype=torch.bfloat16)  # in place: blocks, then root
    reshard(model)                                   # before a save: the shards are the parameters again
    load_sharded_state(model, optimizer, checkpoint, meta)  # a sharded checkpoint, N ranks -> these M
    scatter_state(model, optimizer, weights, optim)  # rank 0's full state (a single-file checkpoint), sharded

FSDP2 (`fully_shard`) gives every transformer block its own group: a block's weights are
all-gathered just before it runs and freed after it, and its gradients reduce-scattered as soon
as its backward is done. The root group (embeddings, stage links, final norms, the output head
and any tied weights) is sharded last. A sharded forward is a collective: every rank must run
the same number of them (the trainer's evaluation pads its batches for this).

Under bf16 autocast the blocks' weights are all-gathered in bf16 (half the traffic and the
memory of an unsharded block) and their gradients reduce-scattered in fp32 (sums of bf16
gradients over many ranks lose bits); the master weights and the optimizer stay fp32. fp32 runs
gather and reduce in fp32.

Under FSDP2 nothing is gathered to save: every rank writes its own shards of the weights and of
the optimizer state (`torch.distributed.checkpoint`, safetensors shards, nothing pickled: see
`megabyte.training.checkpoint`), and on resume every rank reads the slices its new shards need,
so a run saved by N processes resumes on M, with FSDP2 or without it. A single-file checkpoint
(one process, DDP) resumes under FSDP2 through `scatter_state`: rank 0 reads it, every rank gets
its shards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every block of every transformer stack: each MEGABYTE stage's, the Transformer's,
    PerceiverAR's cross-attention and latent stacks'."""
    from megabyte.model.layers import TransformerStack

    return [block for module in model.modules() if isinstance(module, TransformerStack) for block in module.blocks]


def compile_blocks(model: nn.Module) -> None:
    """Compile every transformer block in place (`Module.compile`: the parameter names, and so
    the checkpoints, stay as they are); the rest (embeddings, stage links, norms, heads) runs
    eager. Compiling the whole module before DDP wraps it makes its backward one graph, so DDP's
    gradient buckets are all-reduced only once the whole backward is done; per block, each
    block's gradients are ready (and their all-reduce on its way) while the blocks below it are
    still differentiating. FSDP2 sees the same boundaries: its gather and reduce-scatter hooks
    run between the compiled blocks (Dynamo skips FSDP's hooks). The blocks of a stack share
    one graph: the parameters are its inputs, not constants."""
    for block in transformer_blocks(model):
        block.compile()


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (rank 0's weights are broadcast to all)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def apply_fsdp(model: nn.Module, device: torch.device, world_size: int, *,
               param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard `model` (built on the CPU) in place with FSDP2 over all `world_size` processes: each
    transformer block, then the root. `fully_shard` moves a group to `device` as it shards it, so
    the device holds one block in full at most. Returns `model` (its parameters are now DTensors:
    build the optimizer after this).

    `param_dtype` is the run's autocast dtype (None: fp32). With bf16, each block gets
    `MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`: without it FSDP2 gathers
    fp32 weights only for autocast to cast them again, and reduces in fp32 anyway. On CUDA the
    block's inputs are left as they come (`cast_forward_inputs=False`), so the residual stream
    stays fp32 as under autocast on one process: CUDA autocast runs layer_norm in fp32 whatever
    its weight's dtype. CPU autocast leaves layer_norm alone, and its kernel refuses an fp32 input
    with a bf16 weight, so on the CPU (test runs) the block's inputs are cast to bf16. The root
    (embedding tables, final norms, heads: a small share of the weights) keeps fp32: autocast
    does not cast an embedding lookup, and a bf16 table would change what one process computes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    blocks = {}
    if param_dtype is not None:
        blocks["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                                   cast_forward_inputs=device.type != "cuda")
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, **blocks)
    fully_shard(model, mesh=mesh)
    return model


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 group of `model` back in its sharded state, its DTensor shards registered as
    the parameters. A forward under no_grad (validation) leaves the root group unsharded, as no
    backward follows to reshard it: its parameters are then full tensors, not the optimizer's."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Any, meta: dict) -> None:
    """Load a sharded checkpoint (written by any number of ranks) into the FSDP2-sharded `model`
    and its `optimizer`: every rank reads the slices of its own shards, nothing passes through
    rank 0. `meta`: the non-tensor optimizer state (trainer_state.json). A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    from megabyte.training import checkpoint as ckpt

    ckpt.load_shards(checkpoint, ckpt.MODEL_SHARDS, ckpt.model_tensors(model), collective=True)
    index = ckpt.read_shard_index(checkpoint, ckpt.OPTIMIZER_SHARDS)
    if not index:  # saved before the first step: the optimizer has no state yet
        return
    # This rank's shards of every moment, as DTensors to read into (a fresh optimizer's state is
    # first made by a step at lr 0 over zero gradients, which leaves the weights as they are).
    tensors, _ = ckpt.split_optimizer_state(get_optimizer_state_dict(model, optimizer))
    source = str(checkpoint / ckpt.OPTIMIZER_SHARDS)
    ckpt.load_shards(checkpoint, ckpt.OPTIMIZER_SHARDS, tensors, collective=True, index=index)
    set_optimizer_state_dict(model, optimizer, ckpt.named_optimizer_state(optimizer, tensors, meta, source))


def scatter_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Any],
                  optim: dict[str, Any]) -> None:
    """Load full state dicts given on rank 0 (the other ranks pass empty dicts) into the sharded
    `model` and `optimizer` of every rank. A collective: call it on every rank."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=options)
