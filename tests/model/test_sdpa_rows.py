"""Attention over more rows than one CUDA SDPA call may take (`layers.SDPA_MAX_ROWS`) is cut into
calls under the limit and gives the same outputs and gradients. On the CPU the limit is lowered,
so every path that reaches `scaled_dot_product_attention` is split here as a GPU would split it."""

import pytest
import torch
import torch.nn.functional as F

import megabyte
from megabyte.model import layers
from tests.model.configs import MAX, MODEL_CONFIGS

ROWS = 4
"""The lowered limit: with 2 heads, 2 rows per call."""


def _calls(monkeypatch) -> list[int]:
    """Record the rows of every SDPA call (through the real function)."""
    sizes: list[int] = []
    real = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        sizes.append(q.shape[0])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    return sizes


def _outputs_and_grads(fn, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    out = fn()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return out.detach(), torch.autograd.grad(out, inputs, g)


def _assert_chunked_equal(monkeypatch, fn, inputs: list[torch.Tensor], rows: int) -> None:
    whole = _outputs_and_grads(fn, inputs)
    sizes = _calls(monkeypatch)
    monkeypatch.setattr(layers, "SDPA_MAX_ROWS", ROWS)
    cut = _outputs_and_grads(fn, inputs)
    assert sizes and max(sizes) <= ROWS // 2 and sum(sizes) % rows == 0, sizes  # split, every row once
    torch.testing.assert_close(cut[0], whole[0], rtol=0, atol=1e-6)
    for a, b in zip(cut[1], whole[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_causal_rows_are_split_exactly(monkeypatch):
    attn = layers.Attention(32, 2).double()
    x = torch.randn(5, layers.SHORT_ROWS + 8, 32, dtype=torch.float64, requires_grad=True)  # SDPA, not the short path
    _assert_chunked_equal(monkeypatch, lambda: attn(x), [x, *attn.parameters()], rows=5)


def test_cross_patch_mask_is_split_with_its_rows(monkeypatch):
    attn = layers.Attention(32, 2, cross_patch=2).double()
    x = torch.randn(2 * 3, 8, 32, dtype=torch.float64, requires_grad=True)  # 2 sequences of 3 patches
    _assert_chunked_equal(monkeypatch, lambda: attn(x, groups=3), [x, *attn.parameters()], rows=6)


def test_windowed_and_causal_cached_calls_are_split_exactly(monkeypatch):
    attn = layers.Attention(32, 2).double()
    N, L = 5, 6
    x = torch.randn(N, L, 32, dtype=torch.float64, requires_grad=True)
    lo = torch.randint(0, 3, (N, L)) + torch.arange(L) - 2  # per-row windows: a per-row (N, 1, L, S) mask
    window = layers.Window(lo=lo.clamp(min=0), width=4)

    def cached(window):
        cache = layers.KVCache(N, 2, 2 * L, 16, device="cpu", dtype=torch.float64)
        if window is None:  # a prefix, then the rest against it
            attn(x[:, :2], cache=cache)
            return attn(x[:, 2:], cache=cache)
        attn(x[:, :2], cache=cache, window=layers.Window(lo=window.lo[:, :2], width=window.width))
        return attn(x[:, 2:], cache=cache, window=layers.Window(lo=window.lo[:, 2:], width=window.width, start=2))

    _assert_chunked_equal(monkeypatch, lambda: cached(None), [x, *attn.parameters()], rows=N)
    monkeypatch.undo()
    _assert_chunked_equal(monkeypatch, lambda: cached(window), [x, *attn.parameters()], rows=N)


def test_row_cache_mask_is_split_with_its_rows(monkeypatch):
    attn = layers.Attention(32, 2).double()
    N = 5
    x = torch.randn(N, 1, 32, dtype=torch.float64, requires_grad=True)

    def step():
        cache = layers.RowKVCache(N, 2, 4, 16, device="cpu", dtype=torch.float64)
        cache.fill(torch.randn(N, 2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)),
                   torch.randn(N, 2, 3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
                   torch.tensor([0, 1, 3, 2, 1]))
        return attn(x, cache=cache)  # (N, 1, 1, S) mask: each row sees its own entries

    _assert_chunked_equal(monkeypatch, step, [x, *attn.parameters()], rows=N)


@pytest.mark.parametrize("name", ["megabyte-3stage", "megabyte-cross-patch"])
def test_megabyte_forward_and_backward_are_unchanged_by_the_split(monkeypatch, name):
    # SHORT_ROWS = 0: the CPU's short-row path off, so the local stages reach SDPA as on a GPU.
    monkeypatch.setattr(layers, "SHORT_ROWS", 0)
    model = megabyte.build_model(MODEL_CONFIGS[name]).double().eval()
    x = torch.randint(0, 256, (2, MAX))
    params = list(model.parameters())
    sizes = _calls(monkeypatch)
    whole = _outputs_and_grads(lambda: model(x), params)
    assert max(sizes) > ROWS  # the local stages' rows (one head each): over the lowered limit
    sizes.clear()
    monkeypatch.setattr(layers, "SDPA_MAX_ROWS", ROWS)
    cut = _outputs_and_grads(lambda: model(x), params)
    assert max(sizes) <= ROWS
    torch.testing.assert_close(cut[0], whole[0], rtol=0, atol=1e-6)
    for a, b in zip(cut[1], whole[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_one_call_below_the_limit(monkeypatch):
    sizes = _calls(monkeypatch)
    q = torch.randn(3, 2, 70, 16)
    layers._sdpa(q, q, q, causal=True)
    assert sizes == [3]
