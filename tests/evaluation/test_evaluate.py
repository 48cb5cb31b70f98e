"""evaluate(): every byte scored once by every method, each method equal to a naive reference,
8.0 bpb for a uniform model, ranks that add up, images scored on their own."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import megabyte
from megabyte.errors import MegabyteError
from megabyte.evaluation import EvalResult, evaluate, plan_windows, rank_batches, reduce_result, sample_segments
from megabyte.model.base import byte_loss
from tests.evaluation.helpers import Uniform, real_text, tiny_megabyte

METHODS = {
    "basic": {},
    "sliding-window": {"sliding_window": True},
    "strided": {"strided": True},
    "strided+sliding-window": {"strided": True, "sliding_window": True},
}


# --------------------------------------------------------------------------- naive references
def reference_windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first): windows every `stride` bytes, each scoring [first, end)."""
    out, begin, reached = [], 0, 0
    while reached < n:
        end = min(begin + seq_len, n)
        out.append((begin, end, reached))
        reached, begin = end, begin + stride
    return out


def nll(logits: torch.Tensor, target: int) -> float:
    return -float(F.log_softmax(logits.double(), dim=-1)[target])


def reference_nats(model, data: np.ndarray, seq_len: int, stride: int, patch: int | None) -> float:
    """Byte by byte: from its window (pass A), or, for strided inference when the byte sits in
    the second half of its patch, from the *full* window shifted by P // 2 (pass B)."""
    x = torch.from_numpy(data.astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for begin, end, first in reference_windows(len(data), seq_len, stride):
            pass_a = model(x[None, begin:end])[0]
            if patch:
                h = patch // 2
                pass_b = model(x[None, begin + h : min(begin + h + seq_len, len(data))])[0]
            for a in range(first, end):
                if patch and (a - begin) % patch >= h:
                    total += nll(pass_b[a - begin - h], int(x[a]))
                else:
                    total += nll(pass_a[a - begin], int(x[a]))
    return total


# ------------------------------------------------------------------------------- every byte once
def test_the_plan_scores_every_byte_exactly_once():
    cases = itertools.product([1, 7, 64, 101], [1, 8, 12, 64], [None, 1, 3, 8], [None, 2, 3, 4, 8], [None, 7])
    for n, seq_len, stride, patch, item_len in cases:
        if (stride is not None and stride > seq_len) or (item_len and n % item_len):
            continue
        jobs = plan_windows(n, seq_len, stride=stride, patch=patch, item_len=item_len)
        times = np.zeros(n, dtype=int)
        for job in jobs:
            assert job.length <= seq_len and 0 <= job.start and job.start + job.length <= n
            if item_len:  # no window crosses an image boundary
                assert job.start // item_len == (job.start + job.length - 1) // item_len
            mask = job.mask()
            assert mask.sum() == job.count() > 0
            times[job.start : job.start + job.length] += mask
        assert (times == 1).all(), (n, seq_len, stride, patch, item_len)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_scores_every_byte_of_the_data(method):
    model = tiny_megabyte()
    data = real_text(203)  # not a multiple of the window, the stride or the patch
    result = evaluate(model, data, batch_size=3, **METHODS[method])
    assert result.bytes == len(data)
    assert result.method == method
    assert 7.0 < result.bpb < 9.0
    expected_cost = {"basic": 1.0, "sliding-window": 2.0, "strided": 2.0, "strided+sliding-window": 4.0}[method]
    assert result.cost == pytest.approx(expected_cost, rel=0.15)


# ----------------------------------------------------------------------------- against references
def test_basic_equals_a_hand_computed_loop_over_windows():
    model = tiny_megabyte()
    data = real_text(150)
    x = torch.from_numpy(data.astype(np.int64))
    nats, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), 32):
            window = x[None, start : start + 32]
            loss = byte_loss(model(window), window)
            nats, count = nats + float(loss.nats), count + loss.bytes
    result = evaluate(model, data, seq_len=32, batch_size=4)
    assert result.bytes == count == 150
    assert result.nats == pytest.approx(nats, rel=1e-5)
    assert result.bpb == pytest.approx(nats / (math.log(2) * count), rel=1e-5)
    assert result.cost == 1.0


def test_sliding_window_with_stride_equal_to_seq_len_is_basic():
    model = tiny_megabyte()
    data = real_text(150)
    basic = evaluate(model, data, seq_len=24)
    sliding = evaluate(model, data, seq_len=24, sliding_window=True, window_stride=24)
    assert (sliding.bytes, sliding.forward_bytes) == (basic.bytes, basic.forward_bytes)
    assert sliding.nats == pytest.approx(basic.nats, rel=1e-6)


@pytest.mark.parametrize(
    "patch_sizes, dims",
    [((4,), (64, 32)), ((3,), (48, 32)), ((4, 2), (64, 32, 16))],  # P = 4, odd P = 3, three stages (P = 8)
)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_matches_the_naive_per_byte_reference(method, patch_sizes, dims):
    model = tiny_megabyte(patch_sizes=patch_sizes, dims=dims, depths=(1,) * len(dims))
    data = real_text(157, skip=500)
    kwargs = METHODS[method]
    stride = 10 if kwargs.get("sliding_window") else 32
    patch = model.config.sub_sizes[0] if kwargs.get("strided") else None
    result = evaluate(model, data, seq_len=32, batch_size=3, window_stride=stride if stride != 32 else None,
                      **kwargs)
    assert result.bytes == len(data)
    assert result.nats == pytest.approx(reference_nats(model, data, 32, stride, patch), rel=1e-5)


def test_a_uniform_model_scores_exactly_8_bits_per_byte_with_every_method():
    data = np.random.default_rng(0).integers(0, 256, 301).astype(np.uint8)
    for kwargs in METHODS.values():
        result = evaluate(Uniform(max_seq_len=16, patch=4), data, batch_size=5, **kwargs)
        assert result.bytes == 301
        assert result.bpb == pytest.approx(8.0, rel=1e-8)  # ln 256 rounded to float32 once; summed in float64


# --------------------------------------------------------------------------------- trained model
@pytest.fixture(scope="module")
def trained():
    """A tiny MEGABYTE trained for 100 steps on real text (about a second), and held-out text."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = megabyte.MegabyteConfig(patch_sizes=(4,), dims=(64, 32), depths=(2, 2), max_seq_len=64)
    model = megabyte.Megabyte(config)
    train = torch.from_numpy(real_text(24_000).astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        starts = torch.randint(0, len(train) - 64, (8,), generator=generator)
        x = torch.stack([train[s : s + 64] for s in starts])  # (8, 64)
        optimizer.zero_grad()
        model.loss(x).mean.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval(), real_text(3_000, skip=24_000)


def test_basic_strided_and_sliding_give_valid_and_different_numbers(trained):
    model, val = trained
    results = {name: evaluate(model, val, **kwargs) for name, kwargs in METHODS.items()}
    for result in results.values():
        assert result.bytes == len(val)
        assert math.isfinite(result.bpb) and 1.0 < result.bpb < 7.0  # learned something, still valid
    values = sorted(r.bpb for r in results.values())
    assert all(b - a > 1e-4 for a, b in zip(values, values[1:])), results
    assert results["strided+sliding-window"].cost > results["strided"].cost > results["basic"].cost == 1.0


def test_evaluation_leaves_the_model_in_its_mode(trained):
    model, val = trained
    model.train()
    try:
        evaluate(model, val[:100])
        assert model.training
    finally:
        model.eval()


# ------------------------------------------------------------------------------------ distributed
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("method", ["basic", "strided+sliding-window"])
def test_sums_over_ranks_equal_the_single_process_result(world_size, method):
    model = tiny_megabyte()
    data = real_text(211)
    kwargs = {**METHODS[method], "seq_len": 32, "batch_size": 2}
    whole = evaluate(model, data, **kwargs)
    parts = [evaluate(model, data, rank=r, world_size=world_size, **kwargs) for r in range(world_size)]
    assert sum(p.bytes for p in parts) == whole.bytes == len(data)
    assert sum(p.forward_bytes for p in parts) == whole.forward_bytes
    assert sum(p.nats for p in parts) == pytest.approx(whole.nats, rel=1e-6)


def test_every_rank_runs_the_same_number_of_forward_passes():
    # A sharded (FSDP) model's forward is a collective: ranks must call it equally often.
    data = np.zeros(100, dtype=np.uint8)
    for world_size in (2, 3, 7):
        calls = []
        for rank in range(world_size):
            model = Uniform(max_seq_len=16)
            evaluate(model, data, batch_size=3, strided=True, rank=rank, world_size=world_size)
            calls.append(model.calls)
        assert len(set(calls)) == 1
        jobs = plan_windows(100, 16, patch=4)
        assert len(rank_batches(jobs, 3, 0, world_size)) == calls[0]


def test_reduce_result_sums_over_a_process_group(tmp_path):
    import torch.distributed as dist

    result = EvalResult(nats=3.5, bytes=7, forward_bytes=14, method="strided", seq_len=8, offset=2, windows=2)
    assert reduce_result(result) is result  # no process group: unchanged
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduced = reduce_result(result)
    finally:
        dist.destroy_process_group()
    assert (reduced.nats, reduced.bytes, reduced.forward_bytes, reduced.windows) == (3.5, 7, 14, 2)
    assert reduced.bpb == result.bpb


# ----------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("item_len, seq_len", [(16, 32), (16, 16), (48, 32)])
@pytest.mark.parametrize("method", ["basic", "strided+sliding-window"])
def test_each_image_is_scored_on_its_own_from_its_first_byte(item_len, seq_len, method):
    model = tiny_megabyte()
    data = real_text(item_len * 5, skip=1000)
    kwargs = {**METHODS[method], "seq_len": seq_len, "batch_size": 4}
    together = evaluate(model, data, item_len=item_len, **kwargs)
    alone = [evaluate(model, data[k : k + item_len], **kwargs) for k in range(0, len(data), item_len)]
    assert together.bytes == len(data)
    assert together.nats == pytest.approx(sum(r.nats for r in alone), rel=1e-5)


# ----------------------------------------------------------------------------- limits and errors
def test_max_bytes_scores_a_prefix():
    model = tiny_megabyte()
    data = real_text(200)
    assert evaluate(model, data, max_bytes=70).nats == pytest.approx(evaluate(model, data[:70]).nats, rel=1e-6)
    assert evaluate(model, data, max_bytes=70, item_len=20).bytes == 60  # whole images only


def test_sample_segments_are_spread_whole_and_apart():
    assert sample_segments(1000, 100, 300) == [(0, 100), (450, 550), (900, 1000)]
    assert sample_segments(1000, 100, 30) == [(0, 100)]  # at least one window
    assert sample_segments(1000, 100, 1000) is None  # the whole data: score it all
    segments = sample_segments(12 * 48, 48, 6 * 48, unit=48)  # whole images only
    assert len(segments) == 6 and all(b % 48 == 0 and e - b == 48 for b, e in segments)
    segments = sample_segments(10_001, 64, 2048, unit=2)  # audio: windows start on a sample
    assert len(segments) == 32 and all(b % 2 == 0 for b, _ in segments)
    assert all(e1 <= b2 for (_, e1), (b2, _) in zip(segments, segments[1:]))


def test_a_sample_scores_its_windows_each_from_its_first_byte():
    model = tiny_megabyte()
    data = real_text(400)
    sample = evaluate(model, data, seq_len=32, sample_bytes=96)
    alone = [evaluate(model, data[b:e], seq_len=32) for b, e in sample_segments(400, 32, 96)]
    assert sample.bytes == 96 == sum(r.bytes for r in alone)
    assert sample.nats == pytest.approx(sum(r.nats for r in alone), rel=1e-5)
    assert evaluate(model, data, seq_len=32, sample_bytes=400).nats == pytest.approx(
        evaluate(model, data, seq_len=32).nats, rel=1e-6)  # a sample of everything is everything
    with pytest.raises(MegabyteError, match="sample_bytes"):
        evaluate(model, data, sample_bytes=96, max_bytes=100)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 33}, "max_seq_len"),
        ({"seq_len": 0}, "max_seq_len"),
        ({"window_stride": 4}, "sliding-window"),
        ({"sliding_window": True, "window_stride": 40}, "stride"),
        ({"item_len": 7}, "whole number"),
        ({"max_bytes": 5, "item_len": 10}, "less than one image"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(MegabyteError, match=message):
        evaluate(tiny_megabyte(), real_text(100), **kwargs)


def test_empty_data_is_an_error():
    with pytest.raises(MegabyteError, match="empty"):
        evaluate(tiny_megabyte(), np.zeros(0, dtype=np.uint8))


@pytest.mark.parametrize(
    "config",
    [megabyte.TransformerConfig(dim=32, depth=1, max_seq_len=32),
     megabyte.PerceiverARConfig(dim=32, depth=1, max_seq_len=32, num_latents=8)],
)
def test_strided_inference_needs_a_model_with_patches(config):
    model = megabyte.build_model(config).eval()
    data = real_text(100)
    assert evaluate(model, data, sliding_window=True).bytes == 100  # the other methods work
    with pytest.raises(MegabyteError, match="needs a MEGABYTE model"):
        evaluate(model, data, strided=True)
