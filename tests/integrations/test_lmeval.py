"""The lm-evaluation-harness adapter against the model's own numbers, on local task files
(offline): rolling bits per byte = `megabyte eval`'s, multiple-choice log-likelihoods = the
model's summed log-probabilities, greedy generation = `megabyte.generate` cut at the stop."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

import megabyte
from megabyte.cli import main

pytest.importorskip("lm_eval")

CTX = 64


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """Offline, with the harness's caches in a temporary folder."""
    root = tmp_path_factory.mktemp("hf")
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(root))
    from megabyte.integrations.lmeval import MegabyteLM

    yield MegabyteLM
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny MEGABYTE checkpoint, a dataset of one real text file, and local task YAMLs."""
    root = tmp_path_factory.mktemp("lmeval")
    torch.manual_seed(0)
    model = megabyte.Megabyte(megabyte.MegabyteConfig(patch_sizes=(4,), dims=(32, 16), depths=(1, 1), max_seq_len=CTX))
    model.save_pretrained(root / "ckpt")
    src = root / "src.txt"
    src.write_bytes(open(json.__file__, "rb").read()[:2400])
    assert main(["prepare", "text", str(src), "--out", str(root / "data"), "--val-fraction", "0.4"]) == 0
    val = (root / "data" / "val.bin").read_bytes()
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "doc.jsonl").write_text(json.dumps({"text": val.decode("utf-8")}) + "\n")
    mc = [{"q": "def loads(", "choices": ["s):", "%%"], "label": 0},
          {"q": "", "choices": ["import", "\u00e9t\u00e9"], "label": 0}]
    gen = [{"prompt": "def main(", "answer": "x"}, {"prompt": "class J", "answer": "S"},
           {"prompt": "import o", "answer": "s"}]
    (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in mc))
    (tasks / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen))
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    (tasks / "bpb.yaml").write_text(
        f"task: local_bpb\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'doc.jsonl'}\n{common}"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n")
    (tasks / "mc.yaml").write_text(
        f"task: local_mc\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'mc.jsonl'}\n{common}"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{label}}'\n"
        "doc_to_choice: '{{choices}}'\nmetric_list:\n  - metric: acc\n")
    (tasks / "gen.yaml").write_text(
        f"task: local_gen\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'gen.jsonl'}\n{common}"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: [')', 'a']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return SimpleNamespace(root=root, ckpt=root / "ckpt", data=root / "data", tasks=tasks, val=val,
                           model=megabyte.load(root / "ckpt"))


def summed_logprob(model, context: bytes, continuation: bytes) -> float:
    x = torch.tensor([list(context + continuation)])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).double(), -1)[0]
    return sum(float(logp[len(context) + i, b]) for i, b in enumerate(continuation))


def test_rolling_bits_per_byte_equals_megabyte_eval(harness, setup, capsys, tmp_path):
    assert len(setup.val) > 4 * CTX  # a document longer than the context, scored in full
    assert main(["eval", str(setup.ckpt), "--data", str(setup.data), "--sliding-window", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert ours["bytes"] == len(setup.val)
    assert main(["lm-eval", str(setup.ckpt), "--tasks", "local_bpb", "--include-path", str(setup.tasks),
                 "--output-path", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "local_bpb" in printed and "bits_per_byte" in printed
    written = json.loads(next((tmp_path / "out").glob("results_*.json")).read_text())
    theirs = written["results"]["local_bpb"]["bits_per_byte,none"]
    assert math.isclose(theirs, ours["bpb"], rel_tol=1e-6)


def test_a_short_document_is_the_model_s_summed_loss(harness, setup):
    lm = harness(pretrained=str(setup.ckpt), device="cpu")
    text = "x = {'a': 1}"
    (got,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    with torch.no_grad():
        want = -float(setup.model.loss(torch.tensor([list(text.encode())])).nats)
    assert math.isclose(got, want, rel_tol=1e-6)


def test_loglikelihoods_are_summed_log_probabilities_of_the_exact_bytes(harness, setup):
    lm = harness(pretrained=str(setup.ckpt), device="cpu", batch_size=2)
    pairs = [("def loads(", "s):"), ("", "\u00e9t\u00e9"), ("import", " json"), ("a" * 50, "b" * 40)]  # last: > CTX
    got = lm.loglikelihood([SimpleNamespace(args=p) for p in pairs])
    for (context, continuation), (logp, greedy) in zip(pairs[:3], got):
        c, x = context.encode(), continuation.encode()
        assert math.isclose(logp, summed_logprob(setup.model, c, x), rel_tol=1e-5)
        assert greedy == all(b == g for b, g in zip(x, greedy_bytes(setup.model, c, x)))
    # longer than the context: the continuation in chunks, each with as much context as fits
    seq = b"a" * 50 + b"b" * 40
    # windows of 64 ending at the last byte they score, stepping by at most half the limit
    want = summed_logprob(setup.model, seq[18:50], seq[50:82]) + summed_logprob(setup.model, seq[26:82], seq[82:90])
    assert math.isclose(got[3][0], want, rel_tol=1e-5)
    # a continuation that is the model's own greedy choice is greedy
    context = next(c for c in ("def", "import", "x = ", "class", "return", "a", "b", "c")
                   if greedy_bytes(setup.model, c.encode(), b"?")[0] < 0x80)
    choice = chr(greedy_bytes(setup.model, context.encode(), b"?")[0])
    assert lm.loglikelihood([SimpleNamespace(args=(context, choice))])[0][1] is True


def greedy_bytes(model, context: bytes, continuation: bytes) -> list[int]:
    """The model's most likely byte at each continuation position (given the true bytes before)."""
    x = torch.tensor([list(context + continuation)])
    with torch.no_grad():
        return model(x)[0, len(context):].argmax(-1).tolist()


def test_generate_until_is_greedy_generation_cut_at_the_stop(harness, setup, capsys):
    lm = harness(pretrained=str(setup.ckpt), device="cpu")
    prompts = ["def main(", "class J", "import o"]
    kwargs = {"until": [")", "a"], "max_gen_toks": 12, "do_sample": False}
    got = lm.generate_until([SimpleNamespace(args=(p, dict(kwargs))) for p in prompts])
    for p, g in zip(prompts, got):
        full = megabyte.generate(setup.model, p.encode(), 12, temperature=0)
        cut = min([i for i in (full.find(b")"), full.find(b"a")) if i >= 0], default=len(full))
        assert g == full[:cut].decode("utf-8", errors="replace")
    assert main(["lm-eval", str(setup.ckpt), "--tasks", "local_mc,local_gen", "--include-path",
                 str(setup.tasks)]) == 0
    out = capsys.readouterr().out
    assert "local_mc" in out and "local_gen" in out


def test_errors_are_one_line(harness, setup, capsys, tmp_path):
    assert main(["lm-eval", str(setup.ckpt), "--tasks", "local_bpb", "--include-path", str(tmp_path / "none")]) == 2
    assert main(["lm-eval", str(tmp_path), "--tasks", "local_bpb", "--include-path", str(setup.tasks)]) == 2
    bad_device = "cuda" if not torch.cuda.is_available() else "nonesuch"  # resolved as everywhere else
    assert main(["lm-eval", str(setup.ckpt), "--tasks", "local_bpb", "--include-path", str(setup.tasks),
                 "--device", bad_device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("megabyte lm-eval: error:") for e in err)
    assert "device" in err[2]


def test_the_subword_baseline_is_scored_over_its_tokens_per_byte(harness, tmp_path):
    """A token model's run directory (config, weights, tokenizer.json): the rolling log-likelihood
    is its summed loss over the document's tokens, a pair's is over the continuation's tokens."""
    from megabyte.compare.subword import BPE, evaluate_tokens, generate_tokens

    text = open(json.__file__, "rb").read()
    bpe = BPE.train(text, 300)
    torch.manual_seed(0)
    model = megabyte.Transformer(megabyte.TransformerConfig(dim=32, depth=1, max_seq_len=32, vocab_size=bpe.vocab_size))
    model.save_pretrained(tmp_path / "run")
    bpe.save(tmp_path / "run" / "tokenizer.json")
    lm = harness(pretrained=str(tmp_path / "run"), device="cpu")
    doc = text[:1500].decode()
    (got,) = lm.loglikelihood_rolling([SimpleNamespace(args=(doc,))])
    ids = bpe.encode(doc.encode())
    assert len(ids) > 32  # longer than the context: sliding windows
    want = evaluate_tokens(model.eval(), ids, len(doc.encode()), sliding_window=True)["nats"]
    assert math.isclose(got, -want, rel_tol=1e-6)
    (logp, _), = lm.loglikelihood([SimpleNamespace(args=("import ", "json"))])
    c, x = [int(i) for i in bpe.encode(b"import ")], [int(i) for i in bpe.encode(b"json")]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([c + x])).double(), -1)[0]
    assert math.isclose(logp, sum(float(lp[len(c) + i, t]) for i, t in enumerate(x)), rel_tol=1e-5)
    (g,) = lm.generate_until([SimpleNamespace(args=("def ", {"until": ["\n"], "max_gen_toks": 10}))])
    full, _ = generate_tokens(model, bpe, b"def ", 10, temperature=0, stops=[b"\n"])
    assert g == full[:10].split(b"\n")[0].decode("utf-8", errors="replace")
