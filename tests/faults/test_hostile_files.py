"""Hostile files: a pickle payload renamed to look like any checkpoint file never runs (it would create
a file), and no config.json can make the program import or run anything."""

from __future__ import annotations

import io
import json
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import megabyte
from megabyte import MegabyteError
from megabyte.model.io import config_from_dict
from tests.faults.helpers import cli

STEP = "checkpoints/step-00000004"


class Payload:
    """Unpickling this creates `marker`: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def payloads(marker: Path) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)  # the zip format of torch.save, data.pkl inside
    return {"pickle": pickle.dumps(Payload(marker)), "pickle-0": pickle.dumps(Payload(marker), protocol=0),
            "torch.save": buffer.getvalue()}


ENTRIES = {
    "model.safetensors": ("train", "eval", "sample", "load"),
    "config.json": ("train", "eval", "sample", "load"),
    "optimizer.safetensors": ("train",),
    "trainer_state.json": ("train",),
    "data_meta.json": ("train", "sample"),
}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_a_pickle_payload_in_place_of_a_checkpoint_file_never_runs(name, run_copy, text_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    for kind, payload in payloads(marker).items():
        (run_copy / STEP / name).write_bytes(payload)
        for entry in ENTRIES[name]:
            capsys.readouterr()
            if entry == "load":
                with pytest.raises(MegabyteError, match=re.escape(name)):
                    megabyte.load(run_copy)
            else:
                args = {"train": ["train", "--out", str(run_copy), "--resume", "--max-steps", "6", "--no-progress"],
                        "eval": ["eval", str(run_copy), "--data", str(text_data), "--max-bytes", "256"],
                        "sample": ["sample", str(run_copy), "--max-bytes", "4", "--seed", "0"]}[entry]
                assert cli(*args) == 2, (kind, entry)
                assert name in capsys.readouterr().err, (kind, entry)
            assert not marker.exists(), f"{kind} payload as {name} ran through {entry}"


HOSTILE_CONFIGS = [
    {"model_type": "os.system"},
    {"model_type": "subprocess.Popen", "args": ["touch", "pwned"]},
    {"model_type": "__import__('os').system('touch pwned')"},
    {"model_type": ["megabyte"]},
    {"model_type": {"__reduce__": "os.system"}},
    {"model_type": "megabyte", "__class__": "os.system"},
    {"model_type": "megabyte", "__init__": "exec"},
    {"model_type": "megabyte", "dims": "__import__('os')"},
    {"model_type": "megabyte", "py/object": "os.system"},
]


def test_no_config_json_imports_or_runs_anything(run_copy, tmp_path):
    config = run_copy / STEP / "config.json"
    megabyte.load(run_copy)  # every module loading needs is imported now
    before = set(sys.modules)
    for hostile in HOSTILE_CONFIGS:
        config.write_text(json.dumps(hostile))
        with pytest.raises(MegabyteError, match="config.json"):
            megabyte.load(run_copy)
    assert set(sys.modules) == before  # nothing new was imported
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
FIELDS = ["model_type", "patch_sizes", "dims", "depths", "heads", "dim", "depth", "num_latents", "max_seq_len",
          "dropout", "cross_patch", "mlp_ratio", "embed_dims", "conv_kernels", "tie_embeddings", "vocab_size"]


@given(kind=st.sampled_from(["megabyte", "transformer", "perceiver-ar"]),
       fields=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), json_values, max_size=5))
def test_any_json_config_is_a_config_or_a_clear_error(kind, fields):
    try:
        config = config_from_dict({"model_type": kind, **fields})
    except MegabyteError:
        return
    assert config.model_type == kind


def test_the_package_never_unpickles():
    """No loader anywhere in megabyte/ can unpickle: no torch.load, pickle or eval, numpy without pickles."""
    forbidden = re.compile(r"torch\.load\(|\bpickle\b|(?<![.\w])(eval|exec)\(|__import__"
                           r"|allow_pickle=True|weights_only")
    package = Path(megabyte.__file__).parent
    for path in package.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            assert not forbidden.search(code), f"{path}:{number}: {line.strip()}"
            if "np.load(" in code:
                assert "allow_pickle=False" in code, f"{path}:{number}: {line.strip()}"
