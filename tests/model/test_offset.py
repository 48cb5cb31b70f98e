"""The design brief's worked example, P = 4, bytes x0..x7, checked on the model's own tensors."""

import torch

import megabyte


def test_worked_offset_example_two_stages():
    cfg = megabyte.MegabyteConfig(patch_sizes=(4,), dims=(32, 16), depths=(1, 1), max_seq_len=8)
    model = megabyte.Megabyte(cfg).eval()
    glob, local = model.stages
    x = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])  # x0..x7
    seen = {}
    glob.transformer.register_forward_hook(lambda m, a, o: seen.update(g_in=a[0], g_out=o))
    local.transformer.register_forward_hook(lambda m, a, o: seen.update(l_in=a[0]))
    with torch.no_grad():
        model(x)
        # Global inputs: [pad, (x0 x1 x2 x3)], each byte embedding plus its position embedding.
        h = glob.byte_embed(x[0, :4]) + glob.byte_pos.weight[:4]  # (4, D_G = 8)
        torch.testing.assert_close(seen["g_in"][0, 0], glob.pad)
        torch.testing.assert_close(seen["g_in"][0, 1], h.reshape(-1))
        # Local inputs of patch 1: g1[p] projected + e(x_{3+p}) + local position p.
        g1 = seen["g_out"][0, 1].view(4, 8)  # global output 1 as P slices of width D_G
        expected = local.from_parent(g1) + local.byte_embed(x[0, 3:7]) + local.pos.weight
        torch.testing.assert_close(seen["l_in"][1], expected)
        # Patch 0: the first byte has only the pad before it.
        g0 = seen["g_out"][0, 0].view(4, 8)
        first = torch.cat([local.pad.view(1, -1), local.byte_embed(x[0, 0:3])])
        torch.testing.assert_close(seen["l_in"][0], local.from_parent(g0) + first + local.pos.weight)
