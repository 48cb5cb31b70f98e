"""FLOPs that PyTorch's FLOP counter sees, for the models without a formula here.

Our models' FLOPs are counted analytically (`megabyte.model.flops.training_flops`, the one count
of the project); the other implementations' (megabyte-pytorch, mblm) are counted by running a
training step under `torch.utils.flop_counter`, with fused attention counted by the same
convention (all L x L pairs, backward = 2 x forward; `attention_scale=0.5` for causal).
The tests check that the two agree on our models.
"""

from __future__ import annotations


def _sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # The model-FLOPs convention: backward = 2 x forward (torch's own formula adds the
    # recomputation of the scores, an implementation cost rather than a model FLOP).
    return 2 * _sdpa_forward(query, key, value)


def _attention_ops() -> dict:
    import torch

    aten = torch.ops.aten
    forward = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    mapping = {}
    for name in forward:
        for op, formula in ((name, _sdpa_forward), (name + "_backward", _sdpa_backward)):
            if hasattr(aten, op):
                mapping[getattr(aten, op)] = formula
    return mapping


def counted_flops(step, *, attention_scale: float = 1.0) -> float:
    """FLOPs that `torch.utils.flop_counter` sees while `step()` runs (forward and backward).

    For models without a formula here (the other implementations), and to check the formulas.
    Fused attention kernels are counted like the formulas count them (all L*L pairs, backward
    = 2 x forward); their attention is causal, so `attention_scale=0.5` gives the causal
    convention (up to the diagonal). Attention written as plain matrix products is counted in
    full whatever the scale.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = _attention_ops()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    names = {str(op).split(".")[-1] for op in mapping} | {str(op) for op in mapping}
    total = 0.0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        total += flops * (attention_scale if str(op).split(".")[-1] in names else 1.0)
    return total
