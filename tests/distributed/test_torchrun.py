"""`megabyte train` under torchrun on the CPU (gloo over the loopback interface).

Two processes follow the loss trajectory of one process with the same global batch, under DDP
and FSDP2; a checkpoint written by 2 processes resumes on 1 and the reverse, continuing the
uninterrupted trajectory; a rank that fails or hangs ends the job with its error, in bounded time.
fp32, dropout 0 (the tiny preset): runs differ only by float summation order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_fsdp_on_two_then_resume_on_one(reference, text_data, tmp_path):
    run = tmp_path / "run"
    done, _ = torchrun("train", *OVERRIDES, "--data", str(text_data), "--out", str(run), *COMMON, "--max-steps", str(K),
                       "--parallel", "fsdp", script=CLEAN_EXIT)
    assert done.returncode == 0, done.stdout
    # FSDP2's DTensor caches (torch 2.13) keep the group alive past `close`: the command then
    # leaves through os._exit (after flushing) instead of returning, so no rank reaches the
    # interpreter's teardown and none reports; a rank that does return must report no thread.
    reports = [line for line in done.stdout.splitlines() if "group threads left:" in line]
    assert all(line.endswith(": none") for line in reports), done.stdout
    assert "terminate called" not in done.stdout, done.stdout
    assert_follows(run, reference, K)
    state = json.loads((run / f"checkpoints/step-{K:08d}/trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert main(["train", "--out", str(run), "--resume", "--max-steps", str(2 * K), "--no-progress"]) == 0
    assert_follows(run, reference, 2 * K)


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
