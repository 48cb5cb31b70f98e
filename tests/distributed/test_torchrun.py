"""`megabyte train` under torchrun on the CPU (gloo over the loopback interface).

Two processes follow the loss trajectory of one process with the same global batch, under DDP
and FSDP2; a checkpoint written by 2 processes resumes on 1 and the reverse, continuing the
uninterrupted trajectory; under FSDP2 every rank writes its own shards, which resume on another
number of processes (FSDP2 or not) and load on one without a process group, and damaged or
hostile shard files are refused, never unpickled; a rank that fails or hangs ends the job with
its error, in bounded time. fp32, dropout 0 (the tiny preset): runs differ only by float
summation order.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import megabyte
from megabyte.cli import main
from tests.distributed.helpers import losses, torchrun

K = 6  # steps before a stop; runs go to 2K
# A global batch of 2 x 4 sequences: 4 micro-batches of 2 on one process, 2 on each of two (so
# gradient accumulation and its skipped synchronisation are exercised too).
COMMON = ["--preset", "tiny", "--batch-size", "2", "--eval-every", "3", "--save-every", "3", "--no-progress"]
# A fixed decay horizon, so that stopping at K with --max-steps keeps the schedule of the 2K run.
# (Overrides come together: argparse takes the positional SECTION.FIELD=VALUE arguments in one run.)
OVERRIDES = [f"train.decay_steps={2 * K}", "train.grad_accum=4"]
FAILING = str(Path(__file__).with_name("failing_rank.py"))
CLEAN_EXIT = str(Path(__file__).with_name("clean_exit.py"))
COMPILED = str(Path(__file__).with_name("compiled.py"))
SHARDED_LOGITS = str(Path(__file__).with_name("sharded_logits.py"))
STEP_K = f"checkpoints/step-{K:08d}"


def assert_clean_exit(done, ranks=(0, 1)) -> None:
    """`ranks` ended with no thread of the process group left: a thread alive at interpreter
    exit is what aborted two-process runs ("terminate called without an active exception")."""
    for rank in ranks:
        assert f"rank {rank}: group threads left: none" in done.stdout, done.stdout
    assert "terminate called" not in done.stdout, done.stdout


def train(*args: str) -> int:
    return main(["train", *OVERRIDES, *args, *COMMON])


@pytest.fixture(scope="module")
def reference(text_data, tmp_path_factory) -> list:
    """One process, 2K steps: the trajectory every distributed run must follow."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert train("--data", str(text_data), "--out", str(run), "--max-steps", str(2 * K)) == 0
    return losses(run)


def assert_follows(run: Path, reference: list, steps: int) -> None:
    """`run` logged steps 1..steps once each (rank 0 alone writes), with the reference's losses."""
    got = losses(run)
    assert [s for s, _, _ in got] == list(range(1, steps + 1))
    want = {s: (t, v) for s, t, v in reference}
    for step, train_bpb, val_bpb in got:
        assert train_bpb == pytest.approx(want[step][0], rel=1e-5, abs=1e-5), step
        if want[step][1] is not None:
            assert val_bpb == pytest.approx(want[step][1], rel=1e-5, abs=1e-5), step


def test_ddp_two_processes_follow_one(reference, text_data, tmp_path):
    run = tmp_path / "run"
    done, _ = torchrun("train", *OVERRIDES, "--data", str(text_data), "--out", str(run), *COMMON,
                       "--max-steps", str(2 * K), script=CLEAN_EXIT)
    assert done.returncode == 0, done.stdout
    assert_clean_exit(done)
    assert done.stdout.count("2 processes (ddp), each 2 x 2 x 64 bytes per step") == 1  # rank 0 speaks
    assert_follows(run, reference, 2 * K)


@pytest.fixture(scope="module")
def fsdp_run(reference, text_data, tmp_path_factory) -> Path:
    """Two processes under FSDP2, K steps, sharded checkpoints at K/2 and K, with the FSDP2
    model's logits on a fixed batch beside each (sharded_logits.py). Do not modify: copy it."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    done, _ = torchrun("train", *OVERRIDES, "--data", str(text_data), "--out", str(run), *COMMON, "--max-steps", str(K),
                       "--parallel", "fsdp", script=SHARDED_LOGITS)
    assert done.returncode == 0, done.stdout
    # FSDP2's DTensor caches (torch 2.13) keep the group alive past `close`: the command then
    # leaves through os._exit (after flushing) instead of returning, so no rank reaches the
    # interpreter's teardown and none reports; a rank that does return must report no thread.
    reports = [line for line in done.stdout.splitlines() if "group threads left:" in line]
    assert all(line.endswith(": none") for line in reports), done.stdout
    assert "terminate called" not in done.stdout, done.stdout
    assert_follows(run, reference, K)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_fsdp_on_two_then_resume_on_one(fsdp_run, reference, tmp_path):
    run = copy_of(fsdp_run, tmp_path)
    state = json.loads((run / STEP_K / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert main(["train", "--out", str(run), "--resume", "--max-steps", str(2 * K), "--no-progress"]) == 0
    assert_follows(run, reference, 2 * K)
    assert (run / "checkpoints" / f"step-{2 * K:08d}" / "model.safetensors").is_file()  # one process: one file


def test_under_fsdp_every_rank_writes_only_its_own_shards(fsdp_run):
    """No gather: rank r's files hold rank r's rows of every tensor (FSDP2 splits dimension 0 in
    chunks of ceil(n / 2)), and the two files together hold every value once."""
    from safetensors import safe_open

    checkpoint = fsdp_run / STEP_K
    assert not (checkpoint / "model.safetensors").exists() and not (checkpoint / "optimizer.safetensors").exists()
    listed = json.loads((checkpoint / "shards.json").read_text())
    assert listed["world_size"] == 2
    full = megabyte.load(fsdp_run).state_dict()
    for part in ("model", "optimizer"):
        names = sorted(p.name for p in (checkpoint / part).iterdir())
        assert names == [f"shard-0000{r + 1}-model-00001-of-00001.safetensors" for r in (0, 1)]
        assert all(listed["files"][f"{part}/{name}"] == (checkpoint / part / name).stat().st_size for name in names)
        held: dict[str, int] = {}
        for rank, name in enumerate(names):
            with safe_open(str(checkpoint / part / name), framework="pt") as f:
                offsets = json.loads(f.metadata()["DCP_SHARDING_INFO"])
                for key in f.keys():
                    shape = f.get_slice(key).get_shape()
                    held[key] = held.get(key, 0) + math.prod(shape)
                    if key.endswith("/step"):
                        continue  # a step count, the same on every rank: written once, by one of them
                    rows = full[key.rpartition("/")[0] if part == "optimizer" else key].shape[0]
                    chunk = math.ceil(rows / 2)
                    assert offsets[key]["saved_offsets"][0] == rank * chunk, (part, key)
                    assert shape[0] == min(chunk, rows - rank * chunk), (part, key)
        for key, count in held.items():
            name = key.rpartition("/")[0] if part == "optimizer" else key
            assert count == (1 if key.endswith("/step") else full[name].numel()), (part, key)


def test_a_sharded_checkpoint_loads_on_one_process_with_the_model_s_logits(fsdp_run, text_data, capsys):
    from safetensors.torch import load_file

    for step in (K // 2, K):
        saved = load_file(str(fsdp_run / f"logits-step-{step:08d}.safetensors"))
        model = megabyte.load(fsdp_run / f"checkpoints/step-{step:08d}")
        with torch.no_grad():
            torch.testing.assert_close(model(saved["x"]), saved["logits"], rtol=1e-6, atol=1e-6)
    assert main(["eval", str(fsdp_run), "--data", str(text_data), "--max-bytes", "256", "--json"]) == 0
    assert main(["sample", str(fsdp_run), "--max-bytes", "4", "--seed", "0"]) == 0


def test_sharded_checkpoints_reshard_between_fsdp_world_sizes(fsdp_run, reference, tmp_path):
    """Written by 2 ranks, resumed under FSDP2 on 1 (DCP reads each rank's slices), which writes
    1-rank shards, resumed on 2: the uninterrupted trajectory, optimizer state included."""
    run = copy_of(fsdp_run, tmp_path)
    done, _ = torchrun("train", "--out", str(run), "--resume", "--max-steps", str(K + K // 2), "--parallel", "fsdp",
                       "--no-progress", nproc=1)
    assert done.returncode == 0, done.stdout
    step = run / f"checkpoints/step-{K + K // 2:08d}"
    assert json.loads((step / "shards.json").read_text())["world_size"] == 1
    assert sorted(p.name for p in (step / "model").iterdir()) == ["shard-00001-model-00001-of-00001.safetensors"]
    done, _ = torchrun("train", "--out", str(run), "--resume", "--max-steps", str(2 * K), "--parallel", "fsdp",
                       "--no-progress")
    assert done.returncode == 0, done.stdout
    assert "2 processes (fsdp)" in done.stdout
    assert_follows(run, reference, 2 * K)


def _refused(run: Path, name: str) -> None:
    """Loading and resuming `run` fail with one line naming `name`."""
    with pytest.raises(megabyte.MegabyteError, match=name) as error:
        megabyte.load(run)
    assert "\n" not in str(error.value)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", str(2 * K), "--no-progress"]) == 2


def test_damaged_or_hostile_shards_are_refused_and_never_unpickled(fsdp_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from tests.faults.test_hostile_files import payloads

    marker = tmp_path / "pwned"
    run = copy_of(fsdp_run, tmp_path)
    checkpoint, shard = run / STEP_K, run / STEP_K / "model" / "shard-00002-model-00001-of-00001.safetensors"
    pristine = {path: path.read_bytes() for path in (checkpoint / "shards.json", shard)}
    listed = json.loads(pristine[checkpoint / "shards.json"])

    def relist(length: int) -> None:  # shards.json, with the length of the damaged shard updated
        files = {**listed["files"], f"model/{shard.name}": length}
        (checkpoint / "shards.json").write_text(json.dumps({**listed, "files": files}))

    for kind, payload in payloads(marker).items():
        (checkpoint / "shards.json").write_bytes(payload)  # where the JSON metadata should be
        _refused(run, "shards.json")
        (checkpoint / "shards.json").write_bytes(pristine[checkpoint / "shards.json"])
        (checkpoint / "model" / ".metadata").write_bytes(payload)  # DCP's own metadata: never opened
        megabyte.load(run)
        shard.write_bytes(payload)  # a pickle as a shard
        _refused(run, shard.name)
        relist(len(payload))
        _refused(run, shard.name)
        shard.write_bytes(pristine[shard])
        (checkpoint / "shards.json").write_bytes(pristine[checkpoint / "shards.json"])
        assert not marker.exists(), kind
    shard.write_bytes(pristine[shard][:-100])  # truncated
    _refused(run, "truncated")
    relist(len(pristine[shard]) - 100)  # ... and listed so
    _refused(run, shard.name)
    first = checkpoint / "model" / "shard-00001-model-00001-of-00001.safetensors"
    shutil.copy(first, checkpoint / "model" / "extra.safetensors")
    relist(len(pristine[shard]))
    shard.write_bytes(pristine[shard])
    _refused(run, "unlisted extra.safetensors")
    (checkpoint / "model" / "extra.safetensors").unlink()
    tensors = load_file(str(shard))  # rank 1's rows, claimed to be rank 0's: two slices overlap, rows go missing
    save_file(tensors, str(shard), metadata={"DCP_SHARDING_INFO": json.dumps(
        {key: {"saved_offsets": [0] * value.dim()} for key, value in tensors.items()}), "format": "pt"})
    relist(shard.stat().st_size)
    _refused(run, "do not cover")
    assert not marker.exists()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_compiled_blocks_on_two_follow_one_eager(reference, text_data, tmp_path, parallel):
    """train.compile under DDP and FSDP2 (blocks compiled one by one, AOTAutograd without
    Inductor: see compiled.py): every rank runs compiled graphs, the losses are eager's."""
    run = tmp_path / "run"
    done, _ = torchrun("train", *OVERRIDES, "--data", str(text_data), "--out", str(run), *COMMON, "--max-steps", str(K),
                       "--compile", "--parallel", parallel, script=COMPILED)
    assert done.returncode == 0, done.stdout
    assert "(fp32, compiled)" in done.stdout
    assert "rank 0: compiled graph 1 ran" in done.stdout and "rank 1: compiled graph 1 ran" in done.stdout
    assert_follows(run, reference, K)


def test_bf16_fsdp_on_two_follows_one(text_data, tmp_path):
    """bf16 autocast under FSDP2 (blocks gathered in bf16, gradients reduced in fp32) follows a
    single bf16 process to bf16's precision, not to summation order."""
    bf16 = ["train.precision=bf16", "--data", str(text_data), "--max-steps", "3"]
    assert train(*bf16, "--out", str(tmp_path / "one")) == 0
    done, _ = torchrun("train", *OVERRIDES, *bf16, "--out", str(tmp_path / "two"), *COMMON, "--parallel", "fsdp")
    assert done.returncode == 0, done.stdout
    assert "(bf16 autocast)" in done.stdout
    reference = losses(tmp_path / "one")
    assert reference[-1][2] is not None
    got = losses(tmp_path / "two")
    assert [s for s, _, _ in got] == [s for s, _, _ in reference]
    for (_, train_bpb, val_bpb), (_, want_train, want_val) in zip(got, reference):
        assert train_bpb == pytest.approx(want_train, rel=1e-3)
        if want_val is not None:
            assert val_bpb == pytest.approx(want_val, rel=1e-3)


def test_one_then_resume_on_two_with_fsdp(reference, text_data, tmp_path):
    run = tmp_path / "run"
    assert train("--data", str(text_data), "--out", str(run), "--max-steps", str(K)) == 0
    done, _ = torchrun("train", "--out", str(run), "--resume", "--max-steps", str(2 * K), "--parallel", "fsdp",
                       "--no-progress")
    assert done.returncode == 0, done.stdout
    assert "2 processes (fsdp)" in done.stdout
    assert_follows(run, reference, 2 * K)


def test_a_failing_rank_ends_the_job_with_its_error(text_data, tmp_path):
    run = tmp_path / "run"
    done, seconds = torchrun("train", *OVERRIDES, "--data", str(text_data), "--out", str(run), *COMMON,
                             "--max-steps", "20", script=FAILING, env={"FAIL_RANK": "1", "FAIL_STEP": "3"}, timeout=120)
    assert done.returncode != 0
    assert "RuntimeError: rank 1 failed on purpose at step 3" in done.stdout
    assert seconds < 60, done.stdout
    assert not (run / "latest").exists()  # rank 0 never finished step 3, its first save


@pytest.mark.slow
def test_a_hanging_rank_ends_the_job_at_the_timeout(text_data, tmp_path):
    run = tmp_path / "run"
    done, seconds = torchrun("train", *OVERRIDES, "train.dist_timeout=3", "--data", str(text_data), "--out", str(run),
                             *COMMON, "--max-steps", "20", script=FAILING,
                             env={"FAIL_RANK": "1", "FAIL_STEP": "3", "FAIL_HOW": "hang"}, timeout=120)
    assert done.returncode != 0
    assert "Timed out" in done.stdout  # rank 0's collective gave up after train.dist_timeout
    assert seconds < 60, done.stdout


@pytest.mark.slow
def test_a_stop_requested_on_one_rank_stops_all_at_the_same_step(text_data, tmp_path):
    """A signal reaches the ranks at different times: they agree to stop after the same step."""
    run = tmp_path / "run"
    done, seconds = torchrun("train", *OVERRIDES, "train.dist_timeout=60", "--data", str(text_data), "--out", str(run),
                             *COMMON, "--max-steps", "20", script=FAILING,
                             env={"FAIL_RANK": "1", "FAIL_STEP": "4", "FAIL_HOW": "stop"}, timeout=120)
    assert "Timed out" not in done.stdout and seconds < 60, done.stdout
    # Rank 1 leaves on its own; torchrun then sends SIGTERM to rank 0, which may arrive after
    # its training returned (and end it by default there), so only rank 1 must report.
    assert_clean_exit(done, ranks=(1,))
    assert (run / "latest").read_text().strip() == "checkpoints/step-00000004"
    assert [s for s, _, _ in losses(run)] == [1, 2, 3, 4]
