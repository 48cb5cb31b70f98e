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

Under FSDP2 nothing is gathered: every rank writes its own shards with
`torch.distributed.checkpoint` (DCP), into the same temporary directory, which rank 0 then
completes and renames as above. Weights and optimizer tensors go to `model/` and `optimizer/`
instead of the two safetensors files (config.json, data_meta.json, trainer_state.json as above):

        model/shard-00001-model-00001-of-00001.safetensors      rank 0's slice of every weight
        model/shard-00002-model-00001-of-00001.safetensors      rank 1's, ...
        optimizer/shard-0000R-model-00001-of-00001.safetensors  rank R-1's slice of every moment
        shards.json          every shard file and its length in bytes, the model kind, the world size

Each shard is a plain safetensors file (DCP's `HuggingFaceStorageWriter`) whose header says
where its slices lie in the full tensors (`DCP_SHARDING_INFO`, JSON in the safetensors metadata).
DCP's default format is not used: its `.metadata` is pickled (`_FileSystemWriter.finish` pickles
it, `FileSystemReader.read_metadata` unpickles it). Reading a sharded checkpoint never unpickles
anything: `shards.json` is JSON; every shard must be listed there at its exact length (no file
missing, none added, none truncated); its header is parsed by the safetensors library (JSON of
bounded size, checked against the file's length) and its sharding table by `json.loads`; the
slices of every tensor must tile it exactly once, and the tensors must be the model's, before
any tensor is read. Then DCP's `HuggingFaceStorageReader` reads the slices each process needs:
its `read_metadata` builds DCP's metadata from those same headers (never `.metadata`), and its
`read_data` copies tensor slices (`safe_open(...).get_slice`), never calling `torch.load` or the
planner's `load_bytes` (the only unpickling step of DCP's loader, an unrestricted `torch.load`,
reached only for non-tensor entries, which these state dicts never hold). (Between the ranks of a
run, DCP passes its save and load plans with torch.distributed's object collectives, pickled
objects that the ranks build themselves, never a file's contents.) So a sharded checkpoint
resumes on any number of processes, FSDP2 or not (DCP reshards: each rank reads the slices that
overlap its new shards), and `megabyte.load` reads it on one process without a process group.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from megabyte.atomic import ASIDE_SUFFIX, atomic_write_bytes, fsync_dir, fsync_file, replace_dir
from megabyte.errors import MegabyteError
from megabyte.model.io import CONFIG, build_model, meta_model, read_config
from megabyte.model.io import load as load_model_dir
from megabyte.model.weights import write_config
from megabyte.training.faults import inject

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"
DATA_META = "data_meta.json"
STATE_FORMAT = "megabyte-trainer-state"
STATE_VERSION = 1
LATEST = "latest"
"""In a run directory: the relative path of the newest complete checkpoint."""
SHARDS = "shards.json"
"""In a sharded (FSDP2) checkpoint: the list of its shard files (see the module docstring)."""
SHARDS_FORMAT = "megabyte-sharded-checkpoint"
SHARDS_VERSION = 1
MODEL_SHARDS = "model"
OPTIMIZER_SHARDS = "optimizer"
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
    """`megabyte.load`: the model of a model directory, or of a run directory's latest checkpoint
    (single-file or sharded: the shards are read into one full model, no process group needed)."""
    directory = resolve_checkpoint(path)
    if not is_sharded(directory):
        return load_model_dir(directory, device=device)
    config = read_config(directory)
    index = check_model_shards(config, directory)
    model = build_model(config)
    load_shards(directory, MODEL_SHARDS, model_tensors(model), index=index)
    return model.to(device).eval()


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
    trainer_state: dict[str, Any] | None,
    optimizer_tensors: dict[str, torch.Tensor],
    data_meta: dict[str, Any] | None,
    keep_last: int,
    shards: Any = None,
) -> Path | None:
    """Write checkpoint `step` atomically, point RUN/latest at it, prune old ones; returns its path.

    `shards`: the `Runtime` of an FSDP2 run, to write a sharded checkpoint; call it on every rank
    then, with `model` (sharded in place) and `optimizer_tensors` holding this rank's shards
    (DTensors). Every rank writes its shards into the temporary directory rank 0 made; rank 0 the
    rest (`trainer_state` and `data_meta` are only read there). None on the other ranks."""
    from safetensors.torch import save_file

    root = Path(run_dir) / CHECKPOINTS
    name = checkpoint_name(step)
    main = shards is None or shards.is_main
    tmp = _temporary_checkpoint(root, name, shards)
    try:
        inject("checkpoint.start", step)
        if shards is not None:
            save_shards(tmp, model, optimizer_tensors, distributed=shards.distributed)
            if not main:
                return None
            write_config(model.config, tmp)
            write_shard_list(tmp, model.config.model_type, shards.world_size)
        else:
            model.save_pretrained(tmp)
        write_json(tmp / DATA_META, data_meta)
        inject("checkpoint.model", step)
        write_json(tmp / TRAINER_STATE, trainer_state)
        inject("checkpoint.trainer_state", step)
        if shards is None:
            save_file({k: v.detach().contiguous().cpu() for k, v in optimizer_tensors.items()}, str(tmp / OPTIMIZER))
            fsync_file(tmp / OPTIMIZER)
        fsync_dir(tmp)
        inject("checkpoint.optimizer", step)
        replace_dir(tmp, root / name)  # fsyncs `root` too
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    inject("checkpoint.renamed", step)
    atomic_write_bytes(Path(run_dir) / LATEST, f"{CHECKPOINTS}/{name}\n".encode())
    fsync_dir(Path(run_dir))
    inject("checkpoint.latest", step)
    prune_checkpoints(run_dir, keep_last)
    return root / name


def _temporary_checkpoint(root: Path, name: str, shards: Any) -> Path:
    """A new temporary directory for checkpoint `name` in `root`, made by the main process; with
    `shards` (a collective then), its path is sent to every rank, which all write into it."""
    path, error = None, None
    if shards is None or shards.is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            path = root / f"{_TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}"
            path.mkdir()
        except OSError as exc:
            if shards is None:
                raise
            path, error = None, exc
    if shards is not None:
        agreed = shards.gather_objects(None if path is None else str(path))[0]
        if error is not None:
            raise error
        if agreed is None:
            raise MegabyteError(f"the main process could not create a checkpoint directory in {root}")
        path = Path(agreed)
    return path


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


# ------------------------------------------------------------------------------ sharded checkpoints (FSDP2)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
"""The safetensors dtypes a shard may hold."""
_SHARDING_INFO = "DCP_SHARDING_INFO"
"""The safetensors metadata entry where DCP's `HuggingFaceStorageWriter` puts each slice's
offsets in its full tensor: JSON, {name: {"saved_offsets": [...]}} (torch.distributed.checkpoint._hf_utils)."""


def is_sharded(checkpoint: Path) -> bool:
    """Whether `checkpoint` was written in shards (FSDP2) rather than as single files."""
    return (Path(checkpoint) / SHARDS).is_file()


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every tied parameter once, under its first name: what the model
    shards hold (safetensors keeps no two names of one tensor). The values share the parameters'
    memory, so reading into them loads the model; under FSDP2 they are this rank's DTensor shards."""
    state = model.state_dict()  # first: under FSDP2 it puts the sharded parameters back in place
    first: dict[int, str] = {}
    aliases = {name for name, p in model.named_parameters(remove_duplicate=False)
               if first.setdefault(id(p), name) != name}
    return {key: value for key, value in state.items() if key not in aliases}


def save_shards(directory: Path, model: nn.Module, optimizer_tensors: dict[str, torch.Tensor], *,
                distributed: bool = True) -> None:
    """This rank's slices of `model`'s weights and of `optimizer_tensors` into DIRECTORY/model and
    DIRECTORY/optimizer, one safetensors file per rank each (DCP's `HuggingFaceStorageWriter`:
    no pickled `.metadata`; a tensor replicated on every rank, such as a step count, is written
    once). A collective when `distributed`. A failed write, on any rank, is raised on every rank
    as that rank's exception (an OSError stays one)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    for part, tensors in ((MODEL_SHARDS, model_tensors(model)), (OPTIMIZER_SHARDS, dict(optimizer_tensors))):
        writer = HuggingFaceStorageWriter(str(Path(directory) / part), save_distributed=True)
        with _dcp_call(None):
            dcp.save(tensors, storage_writer=writer, no_dist=not distributed)


def write_shard_list(directory: Path, model_type: str, world_size: int) -> None:
    """DIRECTORY/shards.json, once every rank's shards are written: each file and its length."""
    files: dict[str, int] = {}
    for part in (MODEL_SHARDS, OPTIMIZER_SHARDS):
        folder = Path(directory) / part
        folder.mkdir(exist_ok=True)  # no optimizer state yet (a save before the first step): no file
        for path in sorted(folder.glob("*.safetensors")):
            files[f"{part}/{path.name}"] = path.stat().st_size
        fsync_dir(folder)
    write_json(Path(directory) / SHARDS, {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "model_type": model_type,
                                         "world_size": world_size, "files": files})


def read_shard_list(checkpoint: Path) -> dict[str, Any]:
    """shards.json, checked: its format, and every entry a shard file name with a length."""
    path = Path(checkpoint) / SHARDS
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != SHARDS_FORMAT:
        raise MegabyteError(f"{path}: not a megabyte shard list")
    if data.get("version") != SHARDS_VERSION:
        raise MegabyteError(f"{path}: unsupported version {data.get('version')!r}")
    files = data.get("files")
    if not isinstance(files, dict):
        raise MegabyteError(f"{path}: field 'files' is missing or invalid")
    for key, length in files.items():
        part, _, name = key.partition("/")
        if (part not in (MODEL_SHARDS, OPTIMIZER_SHARDS) or name != Path(name).name or name.startswith(".")
                or not name.endswith(".safetensors") or type(length) is not int or length < 0):
            raise MegabyteError(f"{path}: invalid entry {key!r:.80}: {length!r:.40}")
    return data


def read_shard_index(checkpoint: Path, part: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The full shape and dtype of every tensor in `part`'s shards (MODEL_SHARDS, OPTIMIZER_SHARDS),
    from their headers, once checked as the module docstring says (every shard listed in
    shards.json at its exact length, none added; readable headers; slices tiling each tensor
    exactly once). Reads no tensor data; MegabyteError naming the file at fault."""
    checkpoint = Path(checkpoint)
    listed = {key.partition("/")[2]: length for key, length in read_shard_list(checkpoint)["files"].items()
              if key.partition("/")[0] == part}
    directory = checkpoint / part
    try:
        found = directory.iterdir() if directory.is_dir() else ()
        present = {p.name for p in found if p.name.endswith(".safetensors")}
        if set(listed) != present:
            missing, added = sorted(set(listed) - present), sorted(present - set(listed))
            raise MegabyteError(f"{directory}: its shard files are not those {SHARDS} lists ("
                                + "; ".join(([f"missing {', '.join(missing[:3])}"] if missing else [])
                                            + ([f"unlisted {', '.join(added[:3])}"] if added else [])) + ")")
        pieces: dict[str, list[tuple[tuple[int, ...], tuple[int, ...], str]]] = {}
        for name, length in sorted(listed.items()):
            size = (directory / name).stat().st_size
            if size != length:
                raise MegabyteError(f"{directory / name}: {size:,} bytes, but {SHARDS} lists {length:,} "
                                    "(truncated or altered)")
            _read_shard_header(directory / name, pieces)
    except OSError as exc:
        raise MegabyteError(f"{directory}: unreadable shards ({exc})") from None
    return {key: _tiled(key, slices, directory) for key, slices in pieces.items()}


def _read_shard_header(path: Path, pieces: dict[str, list]) -> None:
    """Add each slice in shard `path` to `pieces` ({name: [(offsets, shape, dtype), ...]}): the
    safetensors header (parsed by the safetensors library) and its DCP sharding table (JSON)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            table = json.loads((f.metadata() or {}).get(_SHARDING_INFO, "null"))
            if not isinstance(table, dict):
                raise ValueError(f"no {_SHARDING_INFO} table")
            for key in f.keys():
                piece = f.get_slice(key)
                shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
                entry = table.get(key)
                offsets = entry.get("saved_offsets") if isinstance(entry, dict) else None
                if (not isinstance(offsets, list) or len(offsets) != len(shape)
                        or not all(type(o) is int and o >= 0 for o in offsets)):
                    raise ValueError(f"{key}: no valid offsets in {_SHARDING_INFO}")
                if dtype not in _DTYPES:
                    raise ValueError(f"{key}: unsupported dtype {dtype}")
                pieces.setdefault(key, []).append((tuple(offsets), shape, dtype))
    except (SafetensorError, ValueError, RecursionError) as exc:  # ValueError: bad JSON too
        raise MegabyteError(f"{path}: not a readable shard ({exc!s:.200})") from None


def _tiled(key: str, pieces: list[tuple[tuple[int, ...], tuple[int, ...], str]],
           directory: Path) -> tuple[tuple[int, ...], torch.dtype]:
    """The full shape and dtype of tensor `key` whose slices are `pieces`; MegabyteError unless
    they agree on rank and dtype and cover the full tensor exactly once (no gap, no overlap)."""
    if len({len(shape) for _, shape, _ in pieces}) != 1 or len({dtype for *_, dtype in pieces}) != 1:
        raise MegabyteError(f"{directory}: the slices of {key} disagree on rank or dtype")
    ndim = len(pieces[0][1])
    size = tuple(max(offsets[i] + shape[i] for offsets, shape, _ in pieces) for i in range(ndim))
    if sum(math.prod(shape) for _, shape, _ in pieces) != math.prod(size) or _overlapping(pieces):
        raise MegabyteError(f"{directory}: the slices of {key} do not cover its shape {size} exactly once")
    return size, _DTYPES[pieces[0][2]]


def _overlapping(pieces: list[tuple[tuple[int, ...], tuple[int, ...], str]]) -> bool:
    """Whether two non-empty slices overlap: swept along the first dimension, so that FSDP2's
    slices (disjoint rows) cost a sort, not a comparison of every pair."""
    boxes = sorted((offsets, shape) for offsets, shape, _ in pieces if math.prod(shape))
    if boxes and not boxes[0][1]:  # scalars: any two overlap
        return len(boxes) > 1
    active: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for offsets, shape in boxes:
        active = [(o, s) for o, s in active if o[0] + s[0] > offsets[0]]
        if any(all(o[i] < offsets[i] + shape[i] and offsets[i] < o[i] + s[i] for i in range(len(shape)))
               for o, s in active):
            return True
        active.append((offsets, shape))
    return False


def check_shard_shapes(index: dict[str, tuple[tuple[int, ...], torch.dtype]], shapes: dict[str, Any],
                       source: str) -> None:
    """MegabyteError unless the shards of `index` hold exactly the tensors named in `shapes`, each
    of its shape: DCP would leave a missing one as it is, and `shapes` allocates nothing."""
    missing, added = sorted(set(shapes) - set(index)), sorted(set(index) - set(shapes))
    problems = ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
        [f"unexpected {', '.join(added[:5])}"] if added else [])
    problems += [f"{key} has shape {index[key][0]}, expected {tuple(shapes[key])}"
                 for key in sorted(set(shapes) & set(index)) if tuple(index[key][0]) != tuple(shapes[key])][:3]
    if problems:
        raise MegabyteError(f"{source}: the shards do not match the model ({'; '.join(problems)})")


def check_model_shards(config: Any, checkpoint: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The model shards' index, once checked to hold exactly the weights of a `config` model (a
    meta-device model: nothing allocated, so a config.json claiming a huge model costs nothing)."""
    checkpoint = Path(checkpoint)
    kind = read_shard_list(checkpoint).get("model_type")
    if kind != config.model_type:
        raise MegabyteError(f"{checkpoint / SHARDS}: lists the shards of a {kind!r:.40} model, but {CONFIG} "
                            f"describes a {config.model_type} model")
    index = read_shard_index(checkpoint, MODEL_SHARDS)
    shapes = {key: value.shape for key, value in model_tensors(meta_model(config)).items()}
    check_shard_shapes(index, shapes, str(checkpoint / MODEL_SHARDS))
    return index


def load_shards(checkpoint: Path, part: str, into: dict[str, torch.Tensor], *, collective: bool = False,
                index: dict | None = None) -> None:
    """Read `part`'s shards into the tensors of `into`, in place: full tensors on one process
    (`collective=False`: no process group needed, none used), or, on every rank of an FSDP2 run
    (`collective=True`), this rank's DTensor shards, whatever the world size that wrote them (DCP
    reads the slices overlapping each rank's shard). Checked first (`read_shard_index`,
    `check_shard_shapes`), read by DCP's `HuggingFaceStorageReader` (nothing unpickled: module docstring)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    directory = Path(checkpoint) / part
    index = read_shard_index(checkpoint, part) if index is None else index
    check_shard_shapes(index, {key: value.shape for key, value in into.items()}, str(directory))
    if not into:
        return
    with _dcp_call(str(directory)):
        dcp.load(into, storage_reader=HuggingFaceStorageReader(str(directory)), no_dist=not collective)


def read_sharded_tensors(checkpoint: Path, part: str) -> dict[str, torch.Tensor]:
    """Every tensor of `part`'s shards in full, on the CPU (one process: the optimizer state of a
    sharded checkpoint, resumed without FSDP2). Allocates no more than the shards hold."""
    index = read_shard_index(checkpoint, part)
    tensors = {key: torch.empty(shape, dtype=dtype) for key, (shape, dtype) in index.items()}
    load_shards(checkpoint, part, tensors, index=index)
    return tensors


@contextlib.contextmanager
def _dcp_call(source: str | None):
    """Around a DCP save (`source` None) or load of `source`: DCP's warning that it runs on one
    process silenced; a failure on any rank (DCP gathers them into a CheckpointException, on every
    rank) raised as that rank's own exception (save), or as a one-line MegabyteError (load)."""
    from torch.distributed.checkpoint import CheckpointException

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is .*")
            yield
    except CheckpointException as exc:
        first = next(iter(exc.failures.values()), (exc, None))[0]
        if source is None:
            raise first from None
        raise MegabyteError(f"{source}: cannot read the shards ({_first_line(first)})") from None
    except (RuntimeError, ValueError, KeyError, AssertionError, OSError) as exc:
        if source is None:
            raise
        raise MegabyteError(f"{source}: cannot read the shards ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


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
