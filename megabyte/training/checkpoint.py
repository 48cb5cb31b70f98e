"""Training checkpoints: a directory per save, written aside and renamed into place.

    RUN/checkpoints/step-00000100/
        model.safetensors    weights            } exactly `model.save_pretrained`, so
        config.json          model config       } `megabyte.load(RUN)` gives the latest model
        data_meta.json       the dataset's meta.json (modality, item length, ...)
        trainer_state.json   step, bytes seen, elapsed time, schedule, sampler position, RNG states,
                             train config, and the non-tensor part of the optimizer state
        optimizer.safetensors  the optimizer's tensors (AdamW moments), keyed by parameter name
    RUN/latest               "checkpoints/step-00000100": the newest complete checkpoint

Nothing is pickled: tensors go to safetensors, everything else to JSON. A save builds the
directory under a temporary name inside RUN/checkpoints, fsyncs it, renames it, and only then
rewrites RUN/latest (atomically), so a run killed at any instant leaves `latest` naming a
complete checkpoint.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from megabyte.atomic import ASIDE_SUFFIX, atomic_write_bytes, fsync_dir, fsync_file, replace_dir
from megabyte.errors import MegabyteError
from megabyte.model.io import CONFIG
from megabyte.model.io import load as load_model_dir
from megabyte.training.faults import inject

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"
DATA_META = "data_meta.json"
STATE_FORMAT = "megabyte-trainer-state"
STATE_VERSION = 1
LATEST = "latest"
"""In a run directory: the relative path of the newest complete checkpoint."""
_TMP_PREFIX = ".tmp-"


def resolve_checkpoint(path) -> Path:
    """A model directory (config.json + model.safetensors), or a run directory whose `latest`
    file names its newest complete checkpoint, e.g. `checkpoints/step-00001000`."""
    path = Path(path)
    if not path.is_dir():
        raise MegabyteError(f"{path}: no such model directory")
    pointer = path / LATEST
    if not (path / CONFIG).exists() and pointer.is_file():
        return resolve_pointer(pointer)
    return path


def resolve_pointer(pointer: Path) -> Path:
    """The checkpoint directory a run's `latest` file names; MegabyteError unless it lies inside the run."""
    run, target = pointer.parent, ""
    try:
        with open(pointer, "rb") as f:
            target = f.read(4096).decode("utf-8", errors="replace").strip()  # a few dozen bytes when genuine
        resolved = (run / target).resolve()
        inside = bool(target) and run.resolve() in resolved.parents and resolved.is_dir()
    except (OSError, ValueError):  # unreadable, or a name no file system accepts (a NUL byte)
        inside = False
    if not inside:
        raise MegabyteError(f"{pointer}: does not name a checkpoint directory inside the run ({target!r:.80})")
    return resolved


def load(path, *, device: str | torch.device = "cpu") -> nn.Module:
    """`megabyte.load`: the model of a model directory, or of a run directory's latest checkpoint."""
    return load_model_dir(resolve_checkpoint(path), device=device)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MegabyteError(f"{path}: missing") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise MegabyteError(f"{path}: unreadable or corrupt ({exc!s:.200})") from None


# ------------------------------------------------------------------------------ saving
def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    trainer_state: dict[str, Any],
    optimizer_tensors: dict[str, torch.Tensor],
    data_meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically, point RUN/latest at it, prune old ones; returns its path."""
    from safetensors.torch import save_file

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        inject("checkpoint.start", step)
        model.save_pretrained(tmp)
        write_json(tmp / DATA_META, data_meta)
        inject("checkpoint.model", step)
        write_json(tmp / TRAINER_STATE, trainer_state)
        inject("checkpoint.trainer_state", step)
        save_file({k: v.detach().contiguous().cpu() for k, v in optimizer_tensors.items()}, str(tmp / OPTIMIZER))
        fsync_file(tmp / OPTIMIZER)
        fsync_dir(tmp)
        inject("checkpoint.optimizer", step)
        replace_dir(tmp, root / name)  # fsyncs `root` too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    inject("checkpoint.renamed", step)
    atomic_write_bytes(Path(run_dir) / LATEST, f"{CHECKPOINTS}/{name}\n".encode())
    fsync_dir(Path(run_dir))
    inject("checkpoint.latest", step)
    prune_checkpoints(run_dir, keep_last)
    return root / name


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (never the one RUN/latest names)."""
    if keep_last <= 0:
        return
    latest = latest_checkpoint(run_dir)
    for path in list_checkpoints(run_dir)[:-keep_last]:
        if latest is None or path.resolve() != latest.resolve():
            # Renamed first, so that a run killed while deleting leaves no half-deleted
            # checkpoint, only an .*.old directory for the next run to clear away.
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}{ASIDE_SUFFIX}")
            try:
                os.replace(path, old)
            except OSError:  # like a failed delete, not worth stopping the run: a later prune retries
                continue
            inject("checkpoint.prune")
            shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete what a run killed while writing leaves behind: half-written or half-deleted
    checkpoints, and the temporary files of atomic writes (RUN/.latest.*.tmp, ...)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_TMP_PREFIX) or (path.name.startswith(".") and path.name.endswith(ASIDE_SUFFIX)):
                shutil.rmtree(path, ignore_errors=True)
    if Path(run_dir).is_dir():
        for path in Path(run_dir).iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file():
                path.unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint RUN/latest names, or None when the run has none yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    return resolve_pointer(pointer)


# ------------------------------------------------------------------------------ loading
_STATE_FIELDS = {"step": int, "bytes_seen": int, "elapsed": (int, float), "train_config": dict, "sampler": dict,
                 "rng": dict, "optimizer": dict}
"""Fields of trainer_state.json that resuming needs, and their JSON types (numbers >= 0)."""


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAINER_STATE
    state = read_json(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise MegabyteError(f"{path}: not a megabyte trainer state")
    if state.get("version") != STATE_VERSION:
        raise MegabyteError(f"{path}: unsupported version {state.get('version')!r}")
    for key, kind in _STATE_FIELDS.items():
        value = state.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(value, kind) or isinstance(value, bool) or (number and not value >= 0):
            raise MegabyteError(f"{path}: field {key!r} is missing or invalid ({value!r:.80})")
    return state


def read_optimizer_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = checkpoint / OPTIMIZER
    if not path.is_file():
        raise MegabyteError(f"{path}: missing")
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise MegabyteError(f"{path}: not a readable safetensors file ({exc})") from None


def check_optimizer_tensors(tensors: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """MegabyteError unless every moment tensor has its parameter's shape and every step count is
    one number: PyTorch loads any shape, and would only fail deep inside the next step."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    for key, value in tensors.items():
        name, _, field = key.rpartition("/")
        problem = None
        if not value.is_floating_point():
            problem = f"holds {value.dtype} values, expected floating point"
        elif field == "step" and value.numel() != 1:
            problem = f"holds {value.numel()} values, expected one step count"
        elif field != "step" and name in shapes and value.shape != shapes[name]:
            problem = f"has shape {tuple(value.shape)}, expected {tuple(shapes[name])}"
        if problem:
            raise MegabyteError(f"{source}: {key} {problem} (the optimizer state of another model?)")


# ------------------------------------------------------------------------------ optimizer state
def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """Split the optimizer state into tensors keyed "PARAM_NAME/KEY" and a JSON-safe rest.

    Keys are parameter names, not positions, so the state stays readable whatever the order.
    """
    names = _param_names(optimizer, model)
    sd = optimizer.state_dict()
    return split_optimizer_state({
        "state": {names[index]: entry for index, entry in sd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]],
    })


def split_optimizer_state(named: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict keyed by parameter name (`{"state": {NAME: {KEY: value}},
    "param_groups": [{..., "params": [NAME, ...]}]}`, as `optimizer_state` builds it and as
    `torch.distributed.checkpoint.state_dict` gathers it from shards) -> tensors + JSON-safe rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, entry in named["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{**{k: _jsonable(v) for k, v in g.items() if k != "params"}, "params": list(g["params"])}
              for g in named["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def named_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                          source: str) -> dict[str, Any]:
    """Inverse of `split_optimizer_state`, for `optimizer` (whose implementation flags are kept)."""
    try:
        saved_groups = meta["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in optimizer.param_groups]:
            raise KeyError("param_groups")
        groups = []
        for saved, current in zip(saved_groups, optimizer.param_groups):
            group = {**saved, "params": list(saved["params"])}
            for key in ("fused", "foreach", "capturable", "differentiable"):  # how, not what: keep ours
                if key in current:
                    group[key] = current[key]
            groups.append(group)
        state: dict[str, dict[str, Any]] = {}
        for key, value in tensors.items():
            name, _, field = key.rpartition("/")
            state.setdefault(name, {})[field] = value
        for name, values in meta.get("scalars", {}).items():
            state.setdefault(name, {}).update(values)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MegabyteError(f"{source}: optimizer state does not match the model ({exc!r})") from None
    return {"state": state, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict[str, torch.Tensor],
                         meta: dict, source: str) -> None:
    """Inverse of `optimizer_state`; MegabyteError if it belongs to different parameters."""
    check_optimizer_tensors(tensors, model, source)
    named = named_optimizer_state(optimizer, tensors, meta, source)
    index = {name: i for i, name in enumerate(_param_names(optimizer, model))}
    try:
        # load_state_dict pairs saved and current parameters by position: list them in our order.
        groups = [{**g, "params": sorted(index[n] for n in g["params"])} for g in named["param_groups"]]
        state = {index[name]: entry for name, entry in named["state"].items()}
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise MegabyteError(f"{source}: optimizer state does not match the model ({exc!r})") from None


def _param_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """Name of every optimizer parameter, in the optimizer's own (state_dict) order."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


# ------------------------------------------------------------------------------ RNG states
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """Every random generator's state (torch CPU and CUDA, Python, NumPy) as JSON-safe data."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": _b64(torch.get_rng_state()),
        "python": _jsonable_deep(random.getstate()),
        "numpy": {**np_state, "state": {k: np.asarray(v).tolist() for k, v in np_state["state"].items()}},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {k: np.asarray(v, dtype=np.uint32) if isinstance(v, list) else v
                         for k, v in np_state["state"].items()}
    np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        saved = [_unb64(s) for s in state["cuda"]]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)


def _jsonable_deep(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable_deep(v) for v in value]
    return value
