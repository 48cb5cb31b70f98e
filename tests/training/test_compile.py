"""train.compile: every transformer block is compiled, the model around them is not; training
steps run the compiled graphs, evaluation never does (no graph of eval mode, no_grad or the
short last batch is compiled), and the losses are eager's.

The compiler is a recording backend that runs the graphs Dynamo captures as they are (no
Inductor: seconds, not minutes, on a CPU), so the numbers are eager's up to summation order."""

from __future__ import annotations

import pytest
import torch

from megabyte.training import TrainConfig, get_preset
from megabyte.training.loop import Trainer
from megabyte.training.parallel import transformer_blocks
from megabyte.training.run import resolve_lengths
from megabyte.training.runtime import Runtime


class Recorder:
    """A torch.compile backend that counts the graphs it compiles and the times they run."""

    def __init__(self) -> None:
        self.graphs, self.runs = 0, 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.graphs += 1

        def run(*args):
            self.runs += 1
            return graph.forward(*args)

        return run


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    """Every `Module.compile` (what train.compile calls) compiles with a `Recorder`."""
    recorder, compile = Recorder(), torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile(self, **{**kw, "backend": recorder}))
    torch._dynamo.reset()
    yield recorder
    torch._dynamo.reset()


def _trainer(text_data, tmp_path, *, compile: bool) -> Trainer:
    preset = get_preset("tiny")
    # 9 windows of 64 bytes in batches of 4: the last validation batch is short.
    cfg = TrainConfig(**{**preset.train, "eval_bytes": 64 * 9, "compile": compile, "max_steps": 3})
    cfg, model_cfg = resolve_lengths(cfg, preset.model_config("megabyte"), text_data)
    runtime = Runtime(device=torch.device("cpu"), precision="fp32")
    return Trainer(cfg, model_cfg, text_data, tmp_path / ("compiled" if compile else "eager"), runtime,
                   progress=False)


def test_each_block_is_compiled_and_the_model_around_them_is_not(recorder, text_data, tmp_path):
    trainer = _trainer(text_data, tmp_path, compile=True)
    blocks = transformer_blocks(trainer.model)
    assert len(blocks) == 4 and all(block._compiled_call_impl is not None for block in blocks)
    others = [m for m in trainer.model.modules() if not any(m is b or _within(m, b) for b in blocks)]
    assert trainer.model in others and all(m._compiled_call_impl is None for m in others)
    assert list(trainer.model.state_dict()) == list(_trainer(text_data, tmp_path, compile=False).model.state_dict())
    trainer.train_step()
    # One graph per stack (the blocks of a stack share it, their weights are its inputs), run
    # by every block: a fall back to eager (the recompile limit) would run fewer.
    assert (recorder.graphs, recorder.runs) == (2, len(blocks) * trainer.micro_steps)


def _within(module: torch.nn.Module, block: torch.nn.Module) -> bool:
    return any(module is inner for inner in block.modules())


def test_evaluation_runs_no_compiled_graph_and_scores_as_eager(recorder, text_data, tmp_path):
    compiled = _trainer(text_data, tmp_path, compile=True)
    for _ in range(2):
        compiled.train_step()
    assert recorder.graphs and recorder.runs  # training went through the compiled graphs
    graphs, runs = recorder.graphs, recorder.runs
    val = compiled.evaluate()
    assert (recorder.graphs, recorder.runs) == (graphs, runs)  # nothing compiled, nothing compiled ran
    compiled.train_step()  # and training goes on with its graphs: no recompile after evaluating
    assert recorder.graphs == graphs and recorder.runs > runs

    eager = _trainer(text_data, tmp_path, compile=False)
    for _ in range(2):
        eager.train_step()
    assert val == pytest.approx(eager.evaluate(), rel=1e-6)
    assert [float(n) for n, _ in compiled._steps[:2]] == pytest.approx([float(n) for n, _ in eager._steps], rel=1e-6)
