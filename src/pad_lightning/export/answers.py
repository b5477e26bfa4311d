"""Benchmark answer files: question formats (AlpacaEval 2, MT-Bench, Arena-Hard v2.0), loading a
trained student (a folder or an MLflow run's), answering turn by turn, and checking the written
file. The command is `python -m pad_lightning.generate` (see its module docstring)."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.loading import (
    TOKENIZER_FILES,
    load_model,
    load_tokenizer,
    resolve_source,
    role_options,
)
from pad_lightning.runtime.errors import ConfigError, ExportError
from pad_lightning.runtime.files import write_atomic
from pad_lightning.tracking.mlflow_run import sqlite_path


@dataclass(frozen=True)
class Format:
    """A benchmark's question file: the id field, the required fields, the user turns."""

    name: str
    id_field: str | None  # None: records are matched by position (AlpacaEval)
    required: tuple[str, ...]
    turns_field: str
    n_turns: int | None  # exact number of user turns in `turns_field` (a list); None: one string


FORMATS = {
    "alpaca_eval": Format("alpaca_eval", None, ("instruction",), "instruction", None),
    "mt_bench": Format("mt_bench", "question_id", ("question_id", "category", "turns"), "turns", 2),
    "arena_hard": Format("arena_hard", "uid", ("uid", "category", "prompt"), "prompt", None),
}


@dataclass
class Question:
    """One benchmark question: its record, its user turns and where it was read (file:line)."""

    record: dict
    turns: list[str]
    where: str

    def id(self, fmt: Format):
        return self.record[fmt.id_field] if fmt.id_field else self.record[fmt.turns_field]


# ---------------------------------------------------------------------------------------------
# Reading JSON / JSONL records


def read_records(path: Path, what: str = "--questions") -> list[tuple[str, dict]]:
    """(location, record) pairs of a JSON list or a JSONL file; location is `file:line` (JSONL)
    or `file[index]` (JSON list). Raises ExportError naming the file (and line) on bad input."""
    if Path(path).is_dir():
        raise ExportError(f"{what} {path}: is a folder; give a JSON or JSONL file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ExportError(f"{what} {path}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ExportError(f"{what} {path}: cannot read ({err})") from err
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ExportError(f"{what} {path}:{err.lineno}: malformed JSON ({err.msg})") from err
        pairs = [(f"{path}[{i}]", record) for i, record in enumerate(data)]
    else:
        pairs = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                pairs.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ExportError(
                    f"{what} {path}:{number}: malformed JSONL line ({err.msg}); "
                    "expected one JSON object per line"
                ) from err
    for where, record in pairs:
        if not isinstance(record, dict):
            raise ExportError(
                f"{what} {where}: expected a JSON object, got {type(record).__name__}"
            )
    if not pairs:
        raise ExportError(f"{what} {path}: no records")
    return pairs


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ExportError(f"--format {name!r}: unknown format; valid: {', '.join(FORMATS)}")
    return FORMATS[name]


def _is_id(value) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and value != ""


def load_questions(path: Path, fmt_name: str, limit: int | None = None) -> list[Question]:
    """The benchmark questions of `path` (first `limit` of them), checked field by field."""
    fmt = get_format(fmt_name)
    questions: list[Question] = []
    seen: dict = {}
    for where, record in read_records(path):
        for field in fmt.required:
            if field not in record:
                raise ExportError(
                    f"--questions {where}: missing field {field!r} "
                    f"({fmt.name} records need {', '.join(fmt.required)})"
                )
        raw = record[fmt.turns_field]
        if fmt.n_turns is None:
            turns = [raw]
        else:
            if not isinstance(raw, list) or len(raw) != fmt.n_turns:
                got = f"{len(raw)} turn(s)" if isinstance(raw, list) else type(raw).__name__
                raise ExportError(
                    f"--questions {where}: field {fmt.turns_field!r} has {got}; "
                    f"{fmt.name} questions have exactly {fmt.n_turns} user turns (a list)"
                )
            turns = raw
        if not all(isinstance(t, str) and t.strip() for t in turns):
            raise ExportError(
                f"--questions {where}: field {fmt.turns_field!r} must hold non-empty strings"
            )
        if fmt.id_field:
            qid = record[fmt.id_field]
            if not _is_id(qid):
                raise ExportError(
                    f"--questions {where}: field {fmt.id_field!r}={qid!r} must be a "
                    "non-empty string or an integer"
                )
            if qid in seen:
                raise ExportError(
                    f"--questions {where}: duplicate {fmt.id_field} {qid!r} (first at {seen[qid]})"
                )
            seen[qid] = where
        questions.append(Question(record, list(turns), where))
    return questions[:limit] if limit else questions


# ---------------------------------------------------------------------------------------------
# Finding and loading the student

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def model_folder_problem(path: Path, chat_template_given: bool = False) -> str | None:
    """Why `path` is not a usable student folder (None if it is)."""
    if not path.is_dir():
        return "not a directory"
    if not (path / "config.json").is_file():
        return "no config.json (not a Hugging Face model folder)"
    if not any((path / f).is_file() for f in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        return "no weights (model.safetensors, or pytorch_model.bin, or their index files)"
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return f"no tokenizer ({', '.join(TOKENIZER_FILES)})"
    if not chat_template_given and not _has_chat_template(path):
        return (
            "no chat template (chat_template.jinja or tokenizer_config.json 'chat_template'); "
            "pass --chat-template FILE"
        )
    return None


def _check_tracking_uri(uri: str) -> None:
    """A sqlite tracking URI must name an existing database (MLflow would create an empty one)."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ExportError(f"--tracking-uri {uri}: no such MLflow database file {db}")


def resolve_run_student(run_id: str, tracking_uri: str, download_dir: Path) -> Path:
    """The student folder of an MLflow run written by `pad_lightning.run`.

    The run's local `<run_dir>/student` (run_dir from its `summary.json` artifact, else the
    `output_dir` param) when it is still there, else its `student` artifact downloaded into
    `download_dir`.
    """
    _check_tracking_uri(tracking_uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ExportError(f"--run {run_id}: no such MLflow run in {tracking_uri}") from err
    run_dirs = []
    try:
        summary = client.download_artifacts(run_id, "summary.json", str(download_dir))
        run_dirs.append(json.loads(Path(summary).read_text(encoding="utf-8")).get("run_dir"))
    except (MlflowException, OSError, ValueError, AttributeError):
        pass  # a run stopped before its end has no summary.json
    run_dirs.append(run.data.params.get("output_dir"))
    looked = []
    for run_dir in filter(None, run_dirs):
        student = Path(run_dir) / "student"
        if model_folder_problem(student) is None:
            return student
        looked.append(str(student))
    model = _logged_student(client, run, tracking_uri, download_dir)
    if model is not None:
        return model
    try:
        logged = client.list_artifacts(run_id, "student")
    except (MlflowException, OSError):
        logged = []
    if logged:  # a LoRA adapter folder (or a run from before students were MLflow models)
        return Path(client.download_artifacts(run_id, "student", str(download_dir)))
    where = f"no usable {' or '.join(looked)}" if looked else "no run_dir or output_dir"
    raise ExportError(
        f"--run {run_id}: no student: {where}, and the run has no 'student' model or artifact "
        "(was it stopped early, or run with logger.log_student=false?)"
    )


def _logged_student(client, run, tracking_uri: str, download_dir: Path) -> Path | None:
    """The run's MLflow model `student` (transformers flavour) as an HF folder, or None."""
    import mlflow

    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'student'",
    )
    if not models:
        return None
    mlflow.set_tracking_uri(tracking_uri)
    parts = mlflow.transformers.load_model(
        f"models:/{models[0].model_id}", return_type="components"
    )
    folder = Path(download_dir) / "student"
    parts["model"].save_pretrained(folder)
    parts["tokenizer"].save_pretrained(folder)
    return folder


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda: CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def load_student(
    path: Path,
    dtype: str,
    device: torch.device,
    chat_template: str | Path | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The student and its tokenizer, checked for weights, tokenizer and a usable chat template
    (`chat_template`: a Jinja string or .jinja file replacing the folder's template). Custom
    model code shipped with the folder runs only with `trust_remote_code`
    (`--trust-remote-code`)."""
    problem = model_folder_problem(path, chat_template_given=chat_template is not None)
    if problem:
        raise ExportError(f"--model {path}: {problem}")
    raw = {"path": str(path), "dtype": dtype, "trust_remote_code": bool(trust_remote_code)}
    if chat_template is not None:
        raw["chat_template"] = str(chat_template)
    try:
        opts = role_options("student", raw)
        source = resolve_source(opts)
        tokenizer = load_tokenizer(opts, source)
        model = load_model(opts, source)
    except ConfigError as err:
        if "model.student.trust_remote_code" in str(err):  # run's key; generate has a flag
            raise ExportError(
                f"--model {path}: ships custom model code; pass --trust-remote-code to run it "
                "(only for sources you trust)"
            ) from err
        flag = "--chat-template" if "chat_template" in str(err) else f"--model {path}"
        raise ExportError(f"{flag}: {err}") from err
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------------------------------------
# Answering


def count_batches(turns: list[list[str]], batch_size: int) -> int:
    """Generation calls needed to answer every turn of every question."""
    depth = max((len(t) for t in turns), default=0)
    return sum(math.ceil(sum(len(t) > k for t in turns) / batch_size) for k in range(depth))


def answer_turns(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    turns: list[list[str]],
    sampling: SamplingConfig,
    greedy: bool,
    on_batch: Callable[[], None] | None = None,
) -> tuple[list[list[str]], int]:
    """Answers to every user turn, and how many answers hit `max_new_tokens`.

    Turn k of a question is generated from the conversation [user 1, answer 1, ..., user k] in
    the model's own chat template, in batches of `sampling.batch_size` questions (batches of the
    same prompts as one `rollout.generate` call over all of them, so greedy answers are equal).
    """
    answers: list[list[str]] = [[] for _ in turns]
    truncated = 0
    for k in range(max((len(t) for t in turns), default=0)):
        active = [i for i, t in enumerate(turns) if len(t) > k]
        for start in range(0, len(active), sampling.batch_size):
            batch = active[start : start + sampling.batch_size]
            prompts = [_conversation(turns[i][: k + 1], answers[i]) for i in batch]
            gens = generate(model, tokenizer, prompts, 1, sampling, greedy=greedy)
            for i, texts in zip(batch, gens.texts, strict=True):
                answers[i].append(texts[0])
            truncated += int(gens.truncated.sum())
            if on_batch:
                on_batch()
    return answers, truncated


def _conversation(user_turns: list[str], answers: list[str]) -> list[dict]:
    messages = []
    for k, user in enumerate(user_turns):
        messages.append({"role": "user", "content": user})
        if k < len(answers):
            messages.append({"role": "assistant", "content": answers[k]})
    return messages


# ---------------------------------------------------------------------------------------------
# Answer records

_CODE_BLOCK = re.compile(r"```[^`]*```")


def markdown_counts(text: str) -> dict[str, dict[str, int]]:
    """Header, list and bold counts outside code blocks (arena-hard-auto's style features)."""
    text = _CODE_BLOCK.sub("", text)
    return {
        "header_count": {
            f"h{level}": len(re.findall(rf"^#{{{level}}}\s", text, re.MULTILINE))
            for level in range(1, 7)
        },
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE)),
        },
        "bold_count": {
            "**": len(re.findall(r"\*\*[^*\n]+\*\*", text)),
            "__": len(re.findall(r"__[^_\n]+__", text)),
        },
    }


def build_records(
    fmt_name: str,
    questions: list[Question],
    answers: list[list[str]],
    model_id: str,
    tokenizer: PreTrainedTokenizerBase,
) -> list[dict]:
    """The answer records the official judge of `fmt_name` reads, in question order."""
    records = []
    for q, turns in zip(questions, answers, strict=True):
        now = time.time()
        if fmt_name == "alpaca_eval":
            record = {"instruction": q.record["instruction"], "output": turns[0]}
            record["generator"] = model_id
            if "dataset" in q.record:
                record["dataset"] = q.record["dataset"]
        elif fmt_name == "mt_bench":
            record = {
                "question_id": q.record["question_id"],
                "answer_id": uuid.uuid4().hex,
                "model_id": model_id,
                "choices": [{"index": 0, "turns": turns}],
                "tstamp": now,
            }
        else:
            answer = turns[0]
            tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
            record = {
                "uid": q.record["uid"],
                "ans_id": uuid.uuid4().hex,
                "model": model_id,
                "messages": [
                    {"role": "user", "content": q.record["prompt"]},
                    {"role": "assistant", "content": {"answer": answer}},
                ],
                "tstamp": now,
                "metadata": {"token_len": tokens, **markdown_counts(answer)},
            }
        records.append(record)
    return records


def write_records(fmt_name: str, records: list[dict], out: Path) -> None:
    """JSON list (AlpacaEval) or JSONL (MT-Bench, Arena-Hard), written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt_name == "alpaca_eval":
        text = json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_atomic(out, text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Checking an answer file against its questions


def _answer_texts(fmt_name: str, record: dict, where: str) -> list:
    """The answer turns of a record, checking the nested structure on the way."""
    if fmt_name == "alpaca_eval":
        return [record["output"]]
    if fmt_name == "mt_bench":
        choices = record["choices"]
        if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
            raise ExportError(f"{where}: 'choices' must be a non-empty list of objects")
        if not isinstance(choices[0].get("turns"), list):
            raise ExportError(f"{where}: 'choices[0].turns' must be a list")
        return choices[0]["turns"]
    messages = record["messages"]
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not (isinstance(last, dict) and last.get("role") == "assistant"):
        raise ExportError(f"{where}: 'messages' must end with the assistant message")
    if not (isinstance(last.get("content"), dict) and "answer" in last["content"]):
        raise ExportError(f"{where}: the assistant message content must be {{'answer': text}}")
    if not (isinstance(record["metadata"], dict) and "token_len" in record["metadata"]):
        raise ExportError(f"{where}: 'metadata' must hold 'token_len'")
    return [last["content"]["answer"]]


OUTPUT_FIELDS = {
    "alpaca_eval": (("instruction", "output", "generator"), "generator"),
    "mt_bench": (("question_id", "answer_id", "model_id", "choices", "tstamp"), "model_id"),
    "arena_hard": (("uid", "ans_id", "model", "messages", "tstamp", "metadata"), "model"),
}


def check_export(fmt_name: str, questions: list[Question], out: Path) -> int:
    """Check an answer file against its questions: same ids in the same order, no duplicates,
    every required field, a non-empty model id, one answer per user turn. Returns the count."""
    fmt = get_format(fmt_name)
    fields, model_field = OUTPUT_FIELDS[fmt_name]
    records = read_records(out, what="--out")
    if fmt_name == "alpaca_eval" and not out.read_text(encoding="utf-8").lstrip().startswith("["):
        raise ExportError(f"--out {out}: AlpacaEval outputs must be one JSON list")
    key = fmt.id_field or "instruction"
    seen: dict = {}
    for (where, record), q in zip(records, questions, strict=False):
        where = f"--out {where}"
        for field in fields:
            if field not in record:
                raise ExportError(f"{where}: missing field {field!r}")
        model_id = record[model_field]
        if not (isinstance(model_id, str) and model_id.strip()):
            raise ExportError(f"{where}: {model_field!r} must be a non-empty model id")
        rid = record[key]
        if fmt.id_field and rid in seen:
            raise ExportError(f"{where}: duplicate {key} {rid!r} (first at {seen[rid]})")
        seen[rid] = where
        if rid != q.id(fmt):
            raise ExportError(
                f"{where}: {key} {rid!r} does not match question {q.id(fmt)!r} at {q.where}"
            )
        texts = _answer_texts(fmt_name, record, where)
        if len(texts) != len(q.turns) or not all(isinstance(t, str) for t in texts):
            raise ExportError(f"{where}: expected {len(q.turns)} answer text(s), got {texts!r}")
    if len(records) != len(questions):
        missing = len(records) < len(questions)
        raise ExportError(
            f"--out {out}: {len(records)} answers for {len(questions)} questions"
            + (f"; first unanswered: {questions[len(records)].where}" if missing else "")
        )
    return len(records)


# ---------------------------------------------------------------------------------------------
# Command line
