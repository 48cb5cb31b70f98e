"""The performance paths compute the same functions as the plain ones they replace."""

import pytest
import torch
import torch.nn.functional as F

from megabyte.model import layers


@pytest.mark.parametrize("L", [1, 3, 8, 64])
def test_short_row_attention_equals_sdpa(L):
    q, k, v = (torch.randn(5, 2, L, 16, dtype=torch.float64) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(layers._short_causal_attention(q, k, v, 0.0), expected)


def test_short_row_attention_gradients_equal_sdpa():
    qkv = [torch.randn(4, 2, 8, 16, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    g = torch.randn(4, 2, 8, 16, dtype=torch.float64)
    grads = []
    for fn in (lambda *t: F.scaled_dot_product_attention(*t, is_causal=True),
               lambda *t: layers._short_causal_attention(*t, 0.0)):
        grads.append(torch.autograd.grad(fn(*qkv), qkv, g))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_attention_layer_uses_sdpa_for_long_rows_and_agrees_for_short_ones(monkeypatch):
    attn = layers.Attention(32, 2).double()
    for L in (8, layers.SHORT_ROWS + 8):
        x = torch.randn(3, L, 32, dtype=torch.float64)
        fast = attn(x)
        monkeypatch.setattr(layers, "SHORT_ROWS", 0)
        torch.testing.assert_close(attn(x), fast)
        monkeypatch.undo()
