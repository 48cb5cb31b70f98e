"""The rows of the benchmark: our three models and the two other open MEGABYTE implementations.

Each row builds a model for one sequence length and gives the benchmark three things: a training
step (forward + backward + AdamW), a generation call (new bytes after a prompt, the way the
row's users would generate), and the model FLOPs of a training step.

Reference sizes (issue 6): MEGABYTE global 512 x 6, local 256 x 4, P = 8 (about 25M parameters);
the Transformer and PerceiverAR 512 x 8. `megabyte-pytorch` (lucidrains, 0.3.6) and `mblm` (IBM,
0.4.2) are configured to the same global/local widths, depths and patch size, 8 heads of 64, MLP
ratio 4, their flash-attention switch on as in their READMEs; they run as their users run them
(fp32 with PyTorch's defaults, so no TF32 in matrix products; eager; their own loss and
`generate`) unless `--external-dtype bf16` or a row option says otherwise. A table that compares
implementations should hold every row twice, as its users run it and in bf16 (`/bf16`), so that
the ratios measure the implementation and not the dtype; the table's `setting` column says
which a row is (`RowSpec.setting`). Generation runs in fp32 for every row (see `Row.generate`).
They are imported only here, lazily: without them their rows say "not installed".

A row name may carry options after slashes: `megabyte/fp32/eager` is our MEGABYTE in fp32
without `torch.compile`, whatever `--dtype` and `--compile` say for the other rows; `tf32` lets
fp32 matrix products run in TF32 on CUDA (`megabyte.training.runtime.float32_products`).
`heap` / `malloc` switch the allocator setting that every `megabyte` command applies on the
CPU (`megabyte.allocator`): our rows have it, the other implementations do not, as their users
run them; `megabyte-pytorch/heap` shows what it would give them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

import megabyte
from megabyte.bench.flops import counted_flops
from megabyte.model.flops import training_flops
from megabyte.model.registry import get_kind, kind_names

EXTERNAL = {"megabyte-pytorch": "MEGABYTE_pytorch", "mblm": "mblm"}


def ours() -> tuple[str, ...]:
    """Our rows: every registered byte model kind with bench shapes (`ModelKind.sized`)."""
    return tuple(name for name in kind_names(units="bytes") if get_kind(name).sized is not None)


def all_rows() -> tuple[str, ...]:
    return (*ours(), *EXTERNAL)

OPTIONS = ("fp32", "bf16", "eager", "compile", "tf32", "heap", "malloc")


def users_setting(name: str) -> tuple[str, bool]:
    """(dtype, tf32) that a row's users get when they follow its README on a GPU: ours bf16
    autocast (`megabyte train`'s precision auto), the other implementations fp32 with PyTorch's
    defaults (TF32 off for matrix products)."""
    return ("bf16", False) if name in ours() else ("fp32", False)


class NotInstalled(Exception):
    """The row's package is not installed (the optional `bench` extra)."""


@dataclass
class RowSpec:
    """A row name with its options resolved against the command line's defaults."""

    name: str
    label: str
    dtype: str
    compile: bool
    heap: bool = False
    """Whether the row's process keeps large blocks in the heap (`megabyte.allocator.tune`), as
    every `megabyte` command does on the CPU: on for our rows, off for the other implementations."""
    tf32: bool = False
    """fp32 matrix products in TF32 on CUDA (nothing changes on the CPU)."""

    @classmethod
    def parse(cls, text: str, *, dtype: str, compile: bool, external_dtype: str) -> RowSpec:
        name, *opts = text.strip().split("/")
        if name not in all_rows():
            raise ValueError(f"unknown row {name!r} (known: {', '.join(all_rows())})")
        for opt in opts:
            if opt not in OPTIONS:
                raise ValueError(f"unknown row option {opt!r} in {text!r} (known: {', '.join(OPTIONS)})")
        mine = name in ours()
        row_dtype = dtype if mine else external_dtype
        row_compile = compile and mine
        heap, tf32 = mine, False
        for opt in opts:
            if opt in ("fp32", "bf16"):
                row_dtype = opt
            elif opt in ("heap", "malloc"):
                heap = opt == "heap"
            elif opt == "tf32":
                tf32 = True
            else:
                row_compile = opt == "compile"
        return cls(name=name, label=text.strip(), dtype=row_dtype, compile=row_compile, heap=heap, tf32=tf32)

    @property
    def setting(self) -> str:
        """Which comparison the row stands in: `as its users run it` (`users_setting`), `bf16`
        (every row can be run so: the like-for-like one), or `other`."""
        if (self.dtype, self.tf32) == users_setting(self.name):
            return "as its users run it"
        return "bf16" if self.dtype == "bf16" else "other"


@dataclass
class Sizes:
    """Model sizes: the issue's reference configuration, or tiny ones for `--quick` and tests."""

    global_dim: int = 512
    global_depth: int = 6
    local_dim: int = 256
    local_depth: int = 4
    patch: int = 8
    flat_dim: int = 512
    flat_depth: int = 8
    heads: int = 8
    local_heads: int = 4
    latents: int = 1024

    @classmethod
    def named(cls, name: str) -> Sizes:
        """`reference` (issue 6, ~25M), `paper` (the paper's text model), or `quick` (tiny)."""
        if name == "quick":
            return cls(global_dim=64, global_depth=2, local_dim=32, local_depth=2, patch=8, flat_dim=64,
                       flat_depth=2, heads=2, local_heads=2, latents=64)
        if name == "paper":  # arXiv/code runs: global 2048 x 14, local 1024 x 18, P = 8 (758M + 262M)
            return cls(global_dim=2048, global_depth=14, local_dim=1024, local_depth=18, patch=8, flat_dim=2048,
                       flat_depth=16, heads=16, local_heads=8, latents=1024)
        if name == "reference":
            return cls()
        raise ValueError(f"unknown sizes {name!r} (reference, paper or quick)")


def our_config(name: str, sizes: Sizes, max_seq_len: int):
    """The config of our row `name` at `sizes` (the kind's `sized` in the registry)."""
    return get_kind(name).sized(sizes, max_seq_len)


def autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adamw(params, *, fused: bool) -> torch.optim.Optimizer:
    if fused:
        try:
            return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1)


class Row:
    """A model of one row, built for sequences of up to `max_seq_len` bytes on `device`."""

    model: torch.nn.Module

    def __init__(self, spec: RowSpec, sizes: Sizes, max_seq_len: int, device: torch.device) -> None:
        self.spec, self.sizes, self.max_seq_len, self.device = spec, sizes, max_seq_len, device

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The mean next-byte loss of a batch, the row's own way."""
        raise NotImplementedError

    def optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def train_step_fn(self, batch: int, seq_len: int) -> Callable[[], float]:
        """One training step on random bytes: loss (in the row's dtype, compiled if asked),
        backward, optimizer step."""
        self.model.train()
        device, dtype = self.device, self.spec.dtype
        opt = self.optimizer()
        x = self.inputs(batch, seq_len)

        def loss_of(x):
            with autocast(device, dtype):
                return self.loss(x)

        if self.spec.compile:
            loss_of = torch.compile(loss_of)

        def step():
            loss = loss_of(x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        return step

    def inputs(self, batch: int, seq_len: int) -> torch.Tensor:
        """The bytes every training step of the row runs on: random (the same for every row), or
        for a dynamically patched model real text (Python's stdlib), whose patches it is made for."""
        cached = getattr(self, "_inputs", None)
        if cached is not None and cached.shape == (batch, seq_len):
            return cached  # flops, bytes_per_patch and the step read the same bytes once
        self._inputs = self._make_inputs(batch, seq_len)
        return self._inputs

    def _make_inputs(self, batch: int, seq_len: int) -> torch.Tensor:
        if not getattr(getattr(self, "config", None), "dynamic", False):
            return torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(self.device)
        from megabyte.data.text import stdlib_text

        text = stdlib_text(batch * seq_len)
        rows = [list(text[i * seq_len : (i + 1) * seq_len]) for i in range(batch)]
        return torch.tensor(rows, device=self.device)

    def bytes_per_patch(self, batch: int, seq_len: int) -> float | None:
        """Bytes per global position on the row's inputs (None: not a MEGABYTE of ours)."""
        return None

    def generate(self, prompt: bytes, new_bytes: int, seed: int) -> int:
        """Generate `new_bytes` after `prompt`; return how many bytes came out.

        Generation runs in fp32 for every row, whatever the row's training dtype: it is how each
        implementation's `generate` runs by default, and on the CPU bf16 autocast makes
        byte-at-a-time decoding slower (per-step casts), not faster."""
        raise NotImplementedError

    def flops(self, batch: int, seq_len: int) -> float:
        raise NotImplementedError


class OurRow(Row):
    def __init__(self, spec, sizes, max_seq_len, device) -> None:
        super().__init__(spec, sizes, max_seq_len, device)
        self.config = our_config(spec.name, sizes, max_seq_len)
        with device:  # built and initialised where it runs (fast for the paper-size model on a GPU)
            self.model = megabyte.build_model(self.config)

    def loss(self, x):
        return self.model.loss(x).mean

    def optimizer(self):
        return adamw(self.model.parameters(), fused=True)

    def generate(self, prompt: bytes, new_bytes: int, seed: int) -> int:
        self.model.eval()
        out = megabyte.generate(self.model, prompt, new_bytes, seed=seed, on_max_len="stop")
        return len(out)

    def flops(self, batch: int, seq_len: int) -> float:
        return batch * training_flops(self.config, seq_len, data=self.inputs(batch, seq_len).cpu()).total

    def bytes_per_patch(self, batch: int, seq_len: int) -> float | None:
        if getattr(self.config, "dynamic", False):
            from megabyte.model.dynamic import patch_stats

            return patch_stats(self.config, self.inputs(batch, seq_len).cpu())["mean_bytes"]
        sizes = getattr(self.config, "sub_sizes", None)
        return float(sizes[0]) if sizes else None


class ExternalRow(Row):
    """megabyte-pytorch or mblm: their loss, their generate, AdamW with PyTorch's defaults."""

    def __init__(self, spec, sizes, max_seq_len, device) -> None:
        super().__init__(spec, sizes, max_seq_len, device)
        s, P = sizes, sizes.patch
        patches = -(-max_seq_len // P)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if spec.name == "megabyte-pytorch":
                    from MEGABYTE_pytorch import MEGABYTE
                else:
                    from mblm import MBLM, MBLMModelConfig, TransformerBlock
            except ImportError as exc:
                raise NotInstalled(f"{spec.name} is not installed (pip install 'megabyte-lm[bench]')") from exc
        dim_head = s.global_dim // s.heads
        if spec.name == "megabyte-pytorch":
            self.model = MEGABYTE(
                num_tokens=256, dim=(s.global_dim, s.local_dim), depth=(s.global_depth, s.local_depth),
                max_seq_len=(patches, P), dim_head=dim_head, heads=s.heads, flash_attn=True,
            )
        else:
            def block():
                return TransformerBlock(attn_head_dims=dim_head, attn_num_heads=s.heads, attn_use_rot_embs=True,
                                        use_flash_attn=True, pos_emb_type="fixed", ff_multiplier=4)

            # As in mblm's README: 256 byte values plus a padding id that the loss ignores.
            self.model = MBLM(MBLMModelConfig(
                num_tokens=257, pad_token_id=256, hidden_dims=[s.global_dim, s.local_dim], seq_lens=[patches, P],
                num_layers=[s.global_depth, s.local_depth], train_checkpoint_chunks=None, block=[block(), block()],
            ))
        self.model.to(device)

    def loss(self, x):
        if self.spec.name == "megabyte-pytorch":
            return self.model(x, return_loss=True)
        from mblm import MBLMReturnType

        return self.model(x, return_type=MBLMReturnType.LOSS)

    def optimizer(self):
        return adamw(self.model.parameters(), fused=False)  # PyTorch's default AdamW

    def generate(self, prompt: bytes, new_bytes: int, seed: int) -> int:
        model = self.model.eval()
        torch.manual_seed(seed)
        prime = torch.tensor(list(prompt), dtype=torch.long, device=self.device)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if self.spec.name == "megabyte-pytorch":
                # Its generate always fills the model's whole length: the row is built for prompt + new.
                total = model.max_seq_len[0] * model.max_seq_len[1]
                if total != len(prompt) + new_bytes:
                    raise ValueError(f"megabyte-pytorch generates up to {total} bytes, not {len(prompt) + new_bytes}")
                out = _quiet(lambda: model.generate(prime[None]))
                return out.numel() - len(prompt)
            out = model.generate(prime, num_tokens_to_generate=new_bytes, enable_progress=False)
            return out.numel() - len(prompt)

    def flops(self, batch: int, seq_len: int) -> float:
        step = self.train_step_fn(batch, seq_len)
        return counted_flops(step, attention_scale=0.5)


def _quiet(fn):
    """Run `fn` with its tqdm progress bar silenced."""
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        return fn()


def build_row(spec: RowSpec, sizes: Sizes, max_seq_len: int, device: torch.device) -> Row:
    cls = OurRow if spec.name in ours() else ExternalRow
    return cls(spec, sizes, max_seq_len, device)
