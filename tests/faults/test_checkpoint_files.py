"""Corrupt, truncated and foreign checkpoint files, a checkpoint of another model kind, a config with
unknown or invalid fields: `megabyte train --resume`, `megabyte eval`, `megabyte sample` and
`megabyte.load` each stop with a MegabyteError that names the file and the problem, never a
traceback from deep inside."""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

import megabyte
from megabyte import MegabyteError
from tests.faults.helpers import cli

STEP = "checkpoints/step-00000004"  # RUN/latest of the `finished_run` fixture


def attempt(entry: str, run: Path, data: Path, capsys) -> str:
    """Run `entry` on RUN; it must fail cleanly. Returns its error message."""
    capsys.readouterr()
    if entry == "load":
        with pytest.raises(MegabyteError) as info:
            megabyte.load(run)
        return str(info.value)
    args = {
        "train": ["train", "--out", str(run), "--resume", "--max-steps", "6"],
        "eval": ["eval", str(run), "--data", str(data), "--max-bytes", "256", "--device", "cpu"],
        "sample": ["sample", str(run), "--max-bytes", "4", "--seed", "0", "--device", "cpu"],
    }[entry]
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"megabyte {args[0]}: error: ") and "Traceback" not in err
    return err


# ------------------------------------------------------------------------------- damages
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def lying_safetensors_header(path: Path) -> None:
    """A safetensors header declaring a 40 GB tensor, with no data behind it."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())


def edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return damage


def transformer_files(name: str) -> Callable[[Path], None]:
    """Replace the file with the same file of a Transformer checkpoint (another model kind)."""
    def damage(path: Path) -> None:
        other = path.parent / "other"
        megabyte.Transformer(megabyte.TransformerConfig(dim=64, depth=2, max_seq_len=64)).save_pretrained(other)
        os.replace(other / name, path)
        for leftover in other.iterdir():
            leftover.unlink()
        other.rmdir()
    return damage


def both_of_another_kind(path: Path) -> None:
    """config.json and model.safetensors of a Transformer, in a MEGABYTE run's checkpoint."""
    transformer_files("config.json")(path)
    transformer_files("model.safetensors")(path.with_name("model.safetensors"))


def foreign_optimizer(path: Path) -> None:
    """The optimizer state of another model: tensor names that are not this model's parameters."""
    import torch
    from safetensors.torch import save_file

    save_file({"stages.9.weight/exp_avg": torch.zeros(3), "stages.9.weight/step": torch.zeros(())}, str(path))


def reshaped_optimizer(path: Path) -> None:
    """This model's optimizer tensor names, with every moment flattened to the wrong shape."""
    from safetensors.torch import load_file, save_file

    save_file({k: v.reshape(-1) if v.dim() > 1 else v for k, v in load_file(str(path)).items()}, str(path))


def deep_json(path: Path) -> None:
    path.write_text("[" * 100_000)


def del_key(key: str):
    return lambda data: data.pop(key)


def set_key(key: str, value):
    return lambda data: data.__setitem__(key, value)


def set_rng(data):
    data["rng"]["torch"] = "AAAA"


def other_stream(data):
    data["sampler"]["seed"] = 99


ALL = ("train", "eval", "sample", "load")
UNREADABLE_WEIGHTS = "model.safetensors: not a readable safetensors file"
# (file, damage, entries, expected message)
CASES = {
    "model-truncated": ("model.safetensors", truncate, ALL, UNREADABLE_WEIGHTS),
    "model-empty": ("model.safetensors", empty, ALL, UNREADABLE_WEIGHTS),
    "model-garbage": ("model.safetensors", garbage, ALL, UNREADABLE_WEIGHTS),
    "model-header-lies": ("model.safetensors", lying_safetensors_header, ALL, UNREADABLE_WEIGHTS),
    "model-of-another-kind": ("model.safetensors", transformer_files("model.safetensors"), ALL,
                              "model.safetensors: holds the weights of a transformer model, but config.json "
                              "describes a megabyte model"),
    "config-truncated": ("config.json", truncate, ALL, "config.json: not valid JSON"),
    "config-nested-100000-deep": ("config.json", deep_json, ALL, "config.json: not valid JSON"),
    "config-unknown-field": ("config.json", edit_json(set_key("dims_typo", [1])), ALL, "config.json: unknown field"),
    "config-invalid-field": ("config.json", edit_json(set_key("dims", [0, 32])), ALL, "config.json: dims: every value"),
    "config-wrong-type": ("config.json", edit_json(set_key("depths", "deep")), ALL, "config.json: .*depths"),
    "config-huge-model": ("config.json", edit_json(set_key("dims", [8192, 4096])), ALL,
                          r"model.safetensors: weights do not match the config \(config.json describes [\d,]+ values"),
    "config-of-another-kind": ("config.json", transformer_files("config.json"), ALL,
                               "model.safetensors: holds the weights of a megabyte model, but config.json "
                               "describes a transformer model"),
    "model-and-config-of-another-kind": ("config.json", both_of_another_kind, ("train",),
                                         "config.json describes a transformer model but trainer_state.json "
                                         "belongs to a 'megabyte' run"),
    "optimizer-truncated": ("optimizer.safetensors", truncate, ("train",),
                            "optimizer.safetensors: not a readable safetensors file"),
    "optimizer-of-another-model": ("optimizer.safetensors", foreign_optimizer, ("train",),
                                   "optimizer.safetensors: optimizer state does not match the model"),
    "optimizer-wrong-shapes": ("optimizer.safetensors", reshaped_optimizer, ("train",),
                               r"optimizer.safetensors: .*/exp_avg\S* has shape"),
    "state-truncated": ("trainer_state.json", truncate, ("train",), "trainer_state.json: unreadable or corrupt"),
    "state-foreign": ("trainer_state.json", lambda p: p.write_text('{"hello": "world"}'), ("train",),
                      "trainer_state.json: not a megabyte trainer state"),
    "state-missing-field": ("trainer_state.json", edit_json(del_key("sampler")), ("train",),
                            "trainer_state.json: field 'sampler' is missing or invalid"),
    "state-negative-step": ("trainer_state.json", edit_json(set_key("step", -3)), ("train",),
                            "trainer_state.json: field 'step' is missing or invalid"),
    "state-bad-rng": ("trainer_state.json", edit_json(set_rng), ("train",),
                      "trainer_state.json: invalid data-stream or RNG state"),
    "state-other-data-stream": ("trainer_state.json", edit_json(other_stream), ("train",),
                                "trainer_state.json: cannot resume the data stream: saved seed=99"),
    "state-unknown-train-field": ("trainer_state.json",
                                  edit_json(lambda d: d["train_config"].__setitem__("lr_typo", 1)), ("train",),
                                  "trainer_state.json: invalid train config .*unknown train field.*lr_typo"),
    "data-meta-truncated": ("data_meta.json", truncate, ("train",), "data_meta.json: unreadable or corrupt"),
    "data-meta-not-an-object": ("data_meta.json", lambda p: p.write_text("[1, 2]"), ("train", "sample"),
                                "data_meta.json: (not a dataset description|no valid 'modality' field)"),
    "latest-garbage": ("../../latest", garbage, ALL, "latest: does not name a checkpoint directory"),
    "latest-outside-the-run": ("../../latest", lambda p: p.write_text("../../../etc\n"), ALL,
                               "latest: does not name a checkpoint directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_checkpoint_is_a_clear_error_everywhere(case, run_copy, text_data, capsys):
    name, damage, entries, message = CASES[case]
    path = run_copy / STEP / name
    damage(path)
    for entry in entries:
        error = attempt(entry, run_copy, text_data, capsys)
        assert Path(name).name in error, (entry, error)
        assert re.search(message, error), (entry, error)
