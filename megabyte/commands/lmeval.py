"""`megabyte lm-eval`: run lm-evaluation-harness tasks on a checkpoint.

    megabyte lm-eval runs/mb --tasks my_text_bpb --include-path tasks/ --output-path results/
    megabyte lm-eval runs/mb --tasks wikitext,hellaswag --limit 100 --device cuda

Needs the optional extra: pip install -e ".[eval]". The model is scored as exact UTF-8 bytes
(`megabyte.integrations.lmeval`): bits per byte of rolling tasks with the window plan of
`megabyte eval --sliding-window`, multiple-choice log-likelihoods, and cached generation.
Tasks over local files run offline (a task YAML with `dataset_path: json` and
`dataset_kwargs: {data_files: ...}` in --include-path); tasks from the Hugging Face hub need
their data downloaded first. One process, one device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megabyte.errors import MegabyteError


def register(subparsers) -> None:
    p = subparsers.add_parser("lm-eval", help="run lm-evaluation-harness tasks on a checkpoint", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="training run directory (its latest checkpoint) or checkpoint")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--include-path", type=Path, help="a folder of task YAMLs (local tasks)")
    p.add_argument("--limit", type=float, help="examples per task (a fraction if below 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--max-length", type=int, help="context limit in bytes (default the model's)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-path", type=Path, help="write the harness's results JSON into this folder")
    p.set_defaults(func=run)


def _harness():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table

        from megabyte.integrations.lmeval import MegabyteLM
    except ImportError:
        raise MegabyteError('lm-evaluation-harness is not installed: pip install -e ".[eval]"') from None
    return lm_eval, TaskManager, make_table, MegabyteLM


def task_manager(TaskManager, tasks: list[str], include_path: Path | None):
    """The harness's task index: only the local folder when it holds every task asked for
    (indexing the harness's thousands of built-in tasks takes half a minute), else both."""
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=str(include_path) if include_path else None)


def run(args) -> int:
    lm_eval, TaskManager, make_table, MegabyteLM = _harness()
    if args.include_path is not None and not args.include_path.is_dir():
        raise MegabyteError(f"--include-path {args.include_path}: not a folder")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    manager = task_manager(TaskManager, tasks, args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise MegabyteError(f"unknown task(s) {', '.join(unknown)} (not in lm-eval's tasks"
                            f"{' or ' + str(args.include_path) if args.include_path else ''})")
    model = MegabyteLM(pretrained=args.run, device=args.device, batch_size=args.batch_size, dtype=args.dtype,
                       max_length=args.max_length)
    results = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=args.limit,
                                      num_fewshot=args.num_fewshot, random_seed=args.seed,
                                      numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                      fewshot_random_seed=args.seed)
    if results is None:
        return 0
    print(make_table(results))
    if args.output_path is not None:
        write_results(results, args.output_path)
    return 0


def write_results(results: dict, folder: Path) -> Path:
    """The results JSON (as the harness writes it: everything but the samples), atomically."""
    from datetime import datetime

    from lm_eval.utils import handle_non_serializable

    from megabyte.atomic import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"results_{datetime.now().strftime('%Y-%m-%dT%H-%M-%S')}.json"
    data = {k: v for k, v in results.items() if k != "samples"}
    atomic_write_bytes(path, json.dumps(data, indent=2, default=handle_non_serializable,
                                        ensure_ascii=False).encode("utf-8"))
    print(f"wrote {path}")
    return path
