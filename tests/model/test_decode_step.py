"""The decode step (`TransformerStack.step`): static caches with a length mask equal the sliced
caches, the compiled step gives eager's bytes, static caches are reused, the sampler draws
`torch.multinomial`'s bytes, and dynamic patches decode without host reads where those stall."""

import shutil

import pytest
import torch

import megabyte
from megabyte.errors import MegabyteError
from megabyte.generation import sample_next
from megabyte.model import layers
from tests.model.configs import MODEL_CONFIGS, make

STATIC = sorted(n for n, c in MODEL_CONFIGS.items() if getattr(c, "patching", "fixed") == "fixed")
DYNAMIC = sorted(n for n, c in MODEL_CONFIGS.items() if getattr(c, "patching", "fixed") != "fixed")


def test_step_with_static_caches_equals_step_with_sliced_caches():
    """A stack stepped position by position, restarts included: reading the whole capacity
    under the mask `slots <= pos` gives what reading the slice of `length` entries gives."""
    stack = layers.TransformerStack(32, 3, 2).eval()
    x = torch.randn(2, 20, 32)
    sliced = stack.new_caches(2, 8)
    static = stack.new_caches(2, 8, cls=layers.StaticKVCache)
    with torch.no_grad():
        for t in range(x.shape[1]):
            if t % 6 == 0:
                for cache in [*sliced, *static]:
                    cache.restart(keep=2)
            want = stack.step(x[:, t : t + 1], sliced)
            got = stack.step(x[:, t : t + 1], static)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
            assert [c.length for c in static] == [c.length for c in sliced]
            assert int(static[0].pos) == sliced[0].length


@pytest.mark.parametrize("name", STATIC)
def test_static_decoding_equals_the_full_forward(monkeypatch, name):
    """`start_decoding(compile=True)` with the step run eagerly (`static_step`, what the compiler
    captures): every step's logits are the full pass's, for every prompt length."""
    monkeypatch.setattr(layers, "compiled_step", lambda device: layers.static_step)
    model = make(name)
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = model(x)
        for prompt_len in (0, 5, 8, 13):
            logits, state = model.start_decoding(x[:, :prompt_len], compile=True)
            for t in range(prompt_len, x.shape[1]):
                torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5, msg=f"position {t}")
                logits = model.continue_decoding(state, x[:, t])
    want = megabyte.generate(model, b"hello, world", 60, temperature=0)  # slides past max_seq_len 96
    with pytest.warns(UserWarning, match="continuing from the last"):
        assert megabyte.generate(model, b"hello, world" * 7, 30, temperature=0, compile=True) == \
            megabyte.generate(model, b"hello, world" * 7, 30, temperature=0)
    assert megabyte.generate(model, b"hello, world", 60, temperature=0, compile=True) == want


def test_static_caches_are_reused_emptied(monkeypatch):
    monkeypatch.setattr(layers, "compiled_step", lambda device: layers.static_step)
    model = make("megabyte-2stage")
    _, first = model.start_decoding(torch.tensor([list(b"abcdef")]), compile=True)
    buffers = [c.kv for caches in first.caches for c in caches]
    _, second = model.start_decoding(torch.tensor([list(b"xy")]), compile=True)
    assert [c.kv for caches in second.caches for c in caches] == buffers  # the same tensors
    assert [c.length for c in second.caches[0]] == [1] * len(second.caches[0])  # the new prompt's
    lengths = [c.length for caches in second.caches for c in caches]
    for _ in range(8):  # through a patch boundary (restarts) too
        with pytest.raises(MegabyteError, match="taken by a newer session"):
            model.continue_decoding(first, torch.tensor([1]))  # it would write into the second's caches
    assert [c.length for caches in second.caches for c in caches] == lengths
    model.continue_decoding(second, torch.tensor([1]))


@pytest.mark.parametrize("name", ["transformer", "perceiver-ar"])
def test_a_superseded_compiled_session_of_a_baseline_is_refused(monkeypatch, name):
    monkeypatch.setattr(layers, "compiled_step", lambda device: layers.static_step)
    model = make(name)
    _, first = model.start_decoding(torch.tensor([list(b"abc")]), compile=True)
    _, second = model.start_decoding(torch.tensor([list(b"xy")]), compile=True)
    with pytest.raises(MegabyteError, match="taken by a newer session"):
        model.continue_decoding(first, torch.tensor([1]))
    model.continue_decoding(second, torch.tensor([1]))


def test_sampler_draws_what_multinomial_draws():
    """The same bytes for a seed as `torch.multinomial(softmax(logits), 1)`, without its reads."""
    logits = torch.randn(3, 256) * 2
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(100):
        want = torch.multinomial(torch.softmax(logits / 0.7, -1), 1, generator=g1).squeeze(-1)
        assert torch.equal(sample_next(logits, temperature=0.7, top_k=None, top_p=None, generator=g2), want)


def decode_without_host_reads(model, x: torch.Tensor, monkeypatch, prompt_len: int = 7) -> None:
    """As on an accelerator (`host_reads_are_free` false): the global stage runs at every byte
    for every row (kept only where a patch closes) and attention reads the whole global cache.
    The logits stay the full pass's, and no decode step reads a value back to the host."""
    monkeypatch.setattr(layers, "host_reads_are_free", lambda device: False)
    reads = []

    def count_reads():
        for method in ("tolist", "item", "__int__", "__bool__", "__float__", "__index__"):
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method,
                                lambda self, *a, _m=method, _o=original: reads.append(_m) or _o(self, *a))

    with torch.no_grad():
        full = model(x)
        logits, state = model.start_decoding(x[:, :prompt_len])
        count_reads()
        for t in range(prompt_len, x.shape[1]):
            assert torch.allclose(logits, full[:, t], atol=1e-5, rtol=1e-5), f"position {t}"
            logits = model.continue_decoding(state, x[:, t])
    assert reads == []


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_decoding_without_host_reads_equals_the_full_forward(monkeypatch, name):
    x = torch.randint(0, 256, (2, 50))
    x[0, ::3] = ord(" ")  # row 0 closes patches often, row 1 rarely: the rows differ
    decode_without_host_reads(make(name), x, monkeypatch)


def test_row_gelu_is_gelu_and_leaves_onednn_as_it_was():
    x = torch.randn(3, 1024) * 4
    enabled = torch._C._get_mkldnn_enabled()
    torch.testing.assert_close(layers._row_gelu(x), torch.nn.functional.gelu(x), atol=1e-6, rtol=1e-6)
    assert torch._C._get_mkldnn_enabled() == enabled


def test_compile_needs_the_cache_and_fixed_patches():
    with pytest.raises(MegabyteError, match="use_cache"):
        megabyte.generate(make("transformer"), b"a", 5, use_cache=False, compile=True)
    with pytest.raises(MegabyteError, match="fixed patches"):
        megabyte.generate(make("megabyte-space"), b"a", 5, compile=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_step_gives_the_bytes_of_eager():
    """One real `torch.compile` (inductor, C++ on the CPU; about a minute): the compiled steps
    give eager's bytes, greedy and sampled."""
    model = make("megabyte-2stage")
    assert megabyte.generate(model, b"hello", 40, temperature=0, compile=True) == \
        megabyte.generate(model, b"hello", 40, temperature=0)
    assert megabyte.generate(model, b"hi", 40, seed=3, compile=True) == megabyte.generate(model, b"hi", 40, seed=3)
