"""Benchmark answer exports: `python -m pad_lightning.generate`.

Loads a trained student (a local HF folder, or the student of an MLflow run), answers the
questions of a judge-based benchmark with the student's own chat template, and writes the answer
file the official judge reads: AlpacaEval 2 (`alpaca_eval`), MT-Bench (`mt_bench`, FastChat
llm_judge) or Arena-Hard v2.0 (`arena_hard`, arena-hard-auto). Multi-turn questions are answered
turn by turn, each turn conditioned on the conversation so far (earlier answers included).

    python -m pad_lightning.generate --model outputs/2026-11-27/01-56-15/student \\
        --format mt_bench --questions question.jsonl --out model_answer/pad-student.jsonl

Bad input stops it with one line, `generate error: <flag> <value>: <problem>`, before any model
loads where possible: a missing or malformed question file, an existing --out (pass
--overwrite to replace it), --out naming the question file itself (refused even with
--overwrite), a model folder without weights, tokenizer or chat template, an unknown run id.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from pad_lightning.export.answers import (
    FORMATS,
    answer_turns,
    build_records,
    check_export,
    count_batches,
    load_questions,
    load_student,
    pick_device,
    resolve_run_student,
    write_records,
)
from pad_lightning.lm.generation import SamplingConfig  # noqa: E402
from pad_lightning.lm.loading import (  # noqa: E402
    DTYPES,
)
from pad_lightning.runtime.errors import ExportError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str):
        sys.exit(f"generate error: {message}")


def _positive(name: str, minimum: float = 1, kind=int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be >= {minimum}")
        return value

    parse.__name__ = name
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m pad_lightning.generate",
        description="Write benchmark answer files (AlpacaEval 2, MT-Bench, Arena-Hard v2.0) "
        "with a trained student.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", type=Path, help="local HF folder, e.g. outputs/<date>/<time>/student"
    )
    src.add_argument("--run", help="MLflow run id of a pad_lightning.run")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    p.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt")
    p.add_argument("--questions", required=True, type=Path, help="question file (JSON or JSONL)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="answer file to write (an existing file only with --overwrite; never --questions)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (default: refuse)"
    )
    p.add_argument("--model-id", help="model name written into the file (default: folder name)")
    p.add_argument("--max-new-tokens", type=_positive("int"), default=1024)
    p.add_argument("--batch-size", type=_positive("int"), default=16, help="questions per call")
    p.add_argument(
        "--temperature",
        type=_positive("float", 0.0, float),
        default=0.0,
        help="0 = greedy (default); > 0 samples",
    )
    p.add_argument("--seed", type=int, default=0, help="torch seed (sampling only)")
    p.add_argument("--dtype", choices=list(DTYPES), default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--limit", type=_positive("int"), help="answer only the first k questions")
    p.add_argument("--chat-template", type=Path, help="Jinja chat template file to use instead")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run custom model code shipped with the model folder (only for sources you trust)",
    )
    return p


def default_model_id(path: Path, run_id: str | None) -> str:
    """`pad-<run id prefix>` for --run; else the folder name (`<parent>-student` for `student`)."""
    if run_id:
        return f"pad-{run_id[:8]}"
    path = path.resolve()
    return f"{path.parent.name}-student" if path.name == "student" else path.name


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links included); by resolved path if one is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _check_out(out: Path, questions: Path | None = None, overwrite: bool = False) -> None:
    """Refuse an --out that is the question file, an existing file (unless `overwrite`), a
    folder, or not writable. Runs before any model loads."""
    if questions is not None and _same_file(out, questions):
        raise ExportError(
            f"--out {out}: is the question file (--questions {questions}); "
            "write the answers to another file"
        )
    if out.exists() and not out.is_dir() and not overwrite:
        raise ExportError(
            f"--out {out}: already exists; pass --overwrite to replace it, or choose another --out"
        )
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"--out {out}: cannot create its folder ({err.strerror})") from err
    if out.is_dir() or not os.access(parent, os.W_OK):
        raise ExportError(f"--out {out}: not a writable file path")


def export(args: argparse.Namespace) -> str:
    """Run one export; returns the summary line. Raises ExportError on bad input."""
    questions = load_questions(args.questions, args.fmt, args.limit)
    _check_out(args.out, args.questions, args.overwrite)
    model_id = args.model_id
    if model_id is not None and not model_id.strip():
        raise ExportError("--model-id: must be a non-empty name")
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="pad-generate-") as download_dir:
        path = (
            resolve_run_student(args.run, args.tracking_uri, Path(download_dir))
            if args.run
            else args.model
        )
        model_id = model_id or default_model_id(path, args.run)
        model, tokenizer = load_student(
            path, args.dtype, device, args.chat_template, args.trust_remote_code
        )
    greedy = args.temperature == 0
    sampling = SamplingConfig(
        temperature=args.temperature or 1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    torch.manual_seed(args.seed)
    turns = [q.turns for q in questions]
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task(
            f"{args.fmt}: batches", total=count_batches(turns, args.batch_size)
        )
        answers, truncated = answer_turns(
            model, tokenizer, turns, sampling, greedy, lambda: progress.advance(task)
        )
    write_records(
        args.fmt, build_records(args.fmt, questions, answers, model_id, tokenizer), args.out
    )
    count = check_export(args.fmt, questions, args.out)
    n_turns = sum(len(t) for t in turns)
    empty = sum(not a.strip() for group in answers for a in group)
    if args.fmt != "alpaca_eval" and args.out.stem != model_id:
        print(
            f"note: the {args.fmt} judge names the model after the file; "
            f"rename {args.out.name} to {model_id}.jsonl in its model_answer folder",
            file=sys.stderr,
        )
    return (
        f"wrote {count} {args.fmt} answers ({n_turns} turns, {truncated} cut at "
        f"--max-new-tokens={args.max_new_tokens}, {empty} empty) of model {model_id!r} "
        f"to {args.out}"
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        print(export(args))
    except ExportError as err:
        sys.exit(f"generate error: {err}")


if __name__ == "__main__":
    main()
