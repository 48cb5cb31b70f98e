"""MEGABYTE with data-dependent patches (`patching="space"`): the rule, the layout, causality
across boundaries, cached decoding against the full pass, the cap, and the fixed model unchanged.

The generic model tests (causality, decoding, save/load, learning, generation, the FLOP counter)
also run the space-patched configs of `tests.model.configs` on random bytes; these use real text,
whose patches are word-sized.
"""

import json
from pathlib import Path

import pytest
import torch

import megabyte
from megabyte.errors import MegabyteError
from megabyte.model.layers import Window, _windowed_attention
from megabyte.model.patching import PatchLayout, patch_starts, spacelike, starts_next

TEXT = (b"Patches end where words do: def main(argv):\n    return run(argv[1:])  # 3 args, see\n"
        b"SpaceByte -- 2024 ... r\xc3\xa9sum\xc3\xa9 caf\xc3\xa9, aaaaaaaaaaaaaaaaaaaaaaaa!!  ok")


def text_rows(n: int = 2, length: int = 90) -> torch.Tensor:
    rows = [TEXT[i * 7 : i * 7 + length] for i in range(n)]
    return torch.tensor([list(r) for r in rows])


def space_model(**fields) -> megabyte.Megabyte:
    torch.manual_seed(0)
    cfg = megabyte.MegabyteConfig(**{"patch_sizes": (8,), "dims": (64, 32), "depths": (2, 2), "max_seq_len": 96,
                                     "patching": "space", **fields})
    return megabyte.build_model(cfg).eval()


def test_spacelike_is_not_letter_digit_or_continuation():
    for b in range(256):
        expected = not (chr(b).isascii() and chr(b).isalnum()) and not 0x80 <= b < 0xC0
        assert bool(spacelike(torch.tensor(b))) == expected, b


def test_a_patch_begins_after_a_run_of_spacelike_bytes_and_every_p_max_bytes():
    text = b"Hi, you  there" + b"x" * 19
    starts = patch_starts(torch.tensor([list(text)]), "space", max_len=8)[0]
    # the first spacelike byte after a word closes its patch: "Hi," | " you " | " there" + 2 x (8, the
    # longest) | 8 x | 8 x | x
    assert torch.nonzero(starts).flatten().tolist() == [0, 3, 8, 16, 24, 32]
    lay = PatchLayout.of(starts[None])
    assert lay.lengths().tolist() == [3, 5, 8, 8, 8, 1]
    assert lay.offset[0, :10].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]


def test_decoding_decides_each_boundary_as_the_full_pass_does():
    x = text_rows(3)
    full = patch_starts(x, "space", max_len=6)
    start = torch.zeros(3, dtype=torch.long)
    for t in range(x.shape[1]):
        new = starts_next(x, t, start, "space", 6)
        assert torch.equal(new, full[:, t]), t
        start = torch.where(new, torch.full_like(start, t), start)


def test_the_local_window_equals_dense_masked_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 29, 8) for _ in range(3))
    x = text_rows(2, 29)
    lay = PatchLayout.of(patch_starts(x, "space", max_len=5))
    lo = (lay.start - 2).clamp(min=0)
    got = _windowed_attention(q, k, v, Window(lo, 5 + 2), 0.0)
    pos = torch.arange(29)
    see = (pos[None, None, :] >= lo[:, :, None]) & (pos[None, None, :] <= pos[None, :, None])  # (N, L, S)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=see[:, None])
    torch.testing.assert_close(got, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fields", [{}, {"cross_patch": 4, "conv_kernels": (3, 5)}, {"max_patches": 6}])
def test_changing_a_byte_changes_no_earlier_prediction_across_boundaries(fields):
    model = space_model(**fields)
    x = text_rows()
    with torch.no_grad():
        ref = model(x)
        for t in (0, 3, 9, 10, 26, 27, 60, 89):
            for new in (ord(" "), ord("z"), 0xC3):  # a boundary appears, disappears, or a continuation
                y = x.clone()
                y[:, t] = new
                torch.testing.assert_close(model(y)[:, : t + 1], ref[:, : t + 1], atol=1e-5, rtol=0, msg=f"t={t}")


def _prompt_lengths(row: torch.Tensor) -> list[int]:
    """Prompts that end just before a patch begins, at its first byte, and inside a patch."""
    starts = torch.nonzero(patch_starts(row[None], "space", 8)[0]).flatten().tolist()
    s = [p for p in starts if p >= 12][0]
    return [s - 1, s, s + 2]


@pytest.mark.parametrize("fields", [{}, {"cross_patch": 4, "conv_kernels": (3,)}, {"max_patches": 7},
                                    {"embed_dims": (4, 16), "tie_embeddings": False}])
def test_cached_steps_equal_the_full_pass_for_prompts_at_before_and_inside_a_patch(fields):
    model = space_model(**fields)
    x = text_rows(3)  # three rows whose patches sit at different bytes
    with torch.no_grad():
        full = model(x)
        for L in [0, 1, *_prompt_lengths(x[0])]:
            logits, state = model.start_decoding(x[:, :L])
            for t in range(L, x.shape[1]):
                torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5, msg=f"prompt {L}, byte {t}")
                logits = model.continue_decoding(state, x[:, t])


def test_greedy_cached_equals_uncached_for_batched_prompts_and_past_max_seq_len():
    model = space_model(cross_patch=2)
    prompts = [TEXT[:13], TEXT[20:33], TEXT[40:53]]  # same length, rows in different patches
    with pytest.warns(UserWarning, match="max_seq_len"):
        cached = megabyte.generate(model, prompts, 150, temperature=0)  # past max_seq_len 96: slides
    with pytest.warns(UserWarning, match="max_seq_len"):
        uncached = megabyte.generate(model, prompts, 150, temperature=0, use_cache=False)
    assert cached == uncached and all(len(c) == 150 for c in cached)


def test_patches_past_the_cap_get_no_global_slice():
    """With max_patches = 4 the bytes of patch 5 on are predicted from the local stage alone: a
    change in patch 4 still changes them (through local attention), but only within reach."""
    capped, free = space_model(max_patches=4), space_model()
    x = text_rows(1)
    lay = PatchLayout.of(patch_starts(x, "space", 8))
    first_uncapped = int((lay.patch[0] == 4).nonzero()[0])
    with torch.no_grad():
        a, b = capped(x), free(x)
    torch.testing.assert_close(a[:, :first_uncapped], b[:, :first_uncapped])
    assert not torch.allclose(a[:, first_uncapped:], b[:, first_uncapped:])


def test_strided_inference_is_refused_with_a_reason():
    from megabyte.evaluation import evaluate

    model = space_model()
    data = torch.tensor(list(TEXT)).numpy().astype("uint8")
    with pytest.raises(MegabyteError, match="fixed patch grid"):
        evaluate(model, data, seq_len=64, strided=True)


def test_dynamic_patching_needs_two_stages():
    with pytest.raises(megabyte.ConfigError, match="two stages"):
        megabyte.MegabyteConfig(patch_sizes=(4, 2), dims=(64, 32, 16), depths=(1, 1, 1), patching="space")
    with pytest.raises(megabyte.ConfigError, match="patching"):
        megabyte.MegabyteConfig(patching="spaces")


def test_the_fixed_model_gives_main_s_logits():
    """Logits of a seeded fixed-patch model, recorded before dynamic patching existed."""
    ref = json.loads((Path(__file__).parent / "data" / "fixed_megabyte_logits.json").read_text())
    torch.manual_seed(ref["seed"])
    model = megabyte.build_model(megabyte.MegabyteConfig.from_dict(ref["config"])).eval()
    x = torch.tensor([list(ref["text"].encode())])
    with torch.no_grad():
        got = model(x)[0, ::6, ::32]
    torch.testing.assert_close(got, torch.tensor(ref["logits_every_6th_position_every_32nd_byte"]), atol=2e-6, rtol=0)
