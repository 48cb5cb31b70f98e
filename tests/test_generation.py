"""Generation: cached equals uncached, sampling filters hold, seeds repeat, stops and limits work."""

import warnings

import pytest
import torch

import megabyte
from megabyte.errors import MegabyteError
from megabyte.generation import filter_logits, sample_next
from tests.model.configs import MODEL_CONFIGS, make


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
@pytest.mark.parametrize("prompt", [b"", b"a", b"hello, world"])
def test_greedy_cached_equals_greedy_uncached(name, prompt):
    model = make(name)
    cached = megabyte.generate(model, prompt, 30, temperature=0)
    uncached = megabyte.generate(model, prompt, 30, temperature=0, use_cache=False)
    assert len(cached) == 30 and cached == uncached


def test_a_seed_repeats_and_different_seeds_differ():
    model = make("megabyte-2stage")
    a = megabyte.generate(model, b"abc", 40, seed=7)
    assert a == megabyte.generate(model, b"abc", 40, seed=7)
    assert a != megabyte.generate(model, b"abc", 40, seed=8)


def test_stream_yields_what_generate_returns():
    model = make("megabyte-3stage")
    chunks = list(megabyte.stream(model, b"xyz", 25, seed=3))
    assert all(len(c) == 1 for c in chunks)
    assert b"".join(chunks) == megabyte.generate(model, b"xyz", 25, seed=3)


def test_batched_prompts_of_different_lengths_match_one_by_one():
    model = make("megabyte-cross-patch")
    prompts = [b"", b"one", b"three", b"two", b"a longer prompt than patch"]
    together = megabyte.generate(model, prompts, 20, temperature=0)
    assert together == [megabyte.generate(model, p, 20, temperature=0) for p in prompts]


def test_top_k_and_top_p_never_leave_the_allowed_set():
    torch.manual_seed(0)
    logits = torch.randn(4, 256) * 3
    g = torch.Generator().manual_seed(0)
    top5 = torch.topk(logits, 5, dim=-1).indices
    for _ in range(200):
        pick = sample_next(logits, temperature=1.0, top_k=5, top_p=None, generator=g)
        assert all(int(p) in top5[r].tolist() for r, p in enumerate(pick))
    # Nucleus: probabilities 0.5, 0.3, 0.15, 0.05 -> top_p=0.8 keeps exactly the first two.
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05] + [0.0] * 252])
    kept = filter_logits(probs.log(), top_p=0.8).isfinite()[0].nonzero().flatten().tolist()
    assert kept == [0, 1]
    for _ in range(200):
        assert int(sample_next(probs.log(), temperature=1.0, top_k=None, top_p=0.8, generator=g)) in (0, 1)
    # The most likely byte always survives, however small top_p is.
    assert filter_logits(probs.log(), top_p=1e-6).isfinite().sum() == 1


def test_top_k_1_is_greedy():
    model = make("transformer")
    assert megabyte.generate(model, b"q", 20, top_k=1, seed=0) == megabyte.generate(model, b"q", 20, temperature=0)


def test_stop_sequence_ends_generation_and_is_kept():
    model = make("megabyte-2stage")
    free = megabyte.generate(model, b"s", 40, temperature=0)
    stop = free[5:7]
    cut = free.index(stop) + len(stop)
    assert megabyte.generate(model, b"s", 40, temperature=0, stop=stop) == free[:cut]
    assert b"".join(megabyte.stream(model, b"s", 40, temperature=0, stop=[b"\xff\xfe\xfd", stop])) == free[:cut]


def test_reaching_max_seq_len_slides_or_stops_with_a_message():
    model = make("megabyte-2stage")  # max_seq_len 96
    with pytest.warns(UserWarning, match="continuing from the last 48 bytes"):
        assert len(megabyte.generate(model, b"x" * 90, 30, seed=0)) == 30
    with pytest.warns(UserWarning, match="generation ended"):
        assert len(megabyte.generate(model, b"x" * 90, 30, seed=0, on_max_len="stop")) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(megabyte.generate(model, b"x" * 10, 30, seed=0)) == 30


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(stop=b""), "stop"),
        (dict(on_max_len="wrap"), "on_max_len"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(MegabyteError, match=message):
        megabyte.generate(make("transformer"), b"a", 5, **kwargs)


def test_text_prompt_must_be_encoded():
    with pytest.raises(MegabyteError, match="encode text first"):
        megabyte.generate(make("transformer"), "text", 5)


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_caches_hold_the_dtype_attention_computes_in(name):
    """fp32 caches for an fp32 forward; bf16 ones under bf16 autocast (no conversion per layer
    and byte); decoding under autocast still equals the uncached pass, to bf16's precision."""
    model = make(name).eval()
    prompt = torch.tensor([list(b"hello, world")])

    def cache_dtypes(state) -> set:
        found, todo = set(), [vars(state)]
        while todo:
            for value in todo.pop().values():
                if isinstance(value, (list, tuple)):
                    todo.append(dict(enumerate(value)))
                elif hasattr(value, "k") and isinstance(value.k, torch.Tensor):
                    found.add(value.k.dtype)
                elif hasattr(value, "__dict__") and not isinstance(value, torch.Tensor):
                    todo.append(vars(value))
        return found

    assert cache_dtypes(model.start_decoding(prompt)[1]) == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = model.start_decoding(prompt)
        assert cache_dtypes(state) == {torch.bfloat16}
        cached = megabyte.generate(model, b"hello, world", 12, temperature=0)
        logits = model.continue_decoding(state, torch.tensor([ord("!")]))
        full = model(torch.tensor([list(b"hello, world!") + [0]]))[:, -1]
    assert len(cached) == 12
    torch.testing.assert_close(logits.float(), full.float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name", ["megabyte-2stage", "transformer"])
def test_generate_reads_the_bytes_back_once(monkeypatch, name):
    """Without stop sequences the sampled bytes stay on the device: one copy to the host at the
    end, no host sync per byte (on a GPU each one stalls the queue of kernels)."""
    model = make(name)
    want = megabyte.generate(model, b"abc", 40, seed=1)
    reads = []
    for method in ("tolist", "item", "__int__", "__bool__", "__float__", "__index__"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method,
                            lambda self, *a, _m=method, _o=original: reads.append(_m) or _o(self, *a))
    got = megabyte.generate(model, b"abc", 40, seed=1)
    monkeypatch.undo()
    assert got == want and reads == ["tolist"]
