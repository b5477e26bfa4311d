"""Loading real HF model folders (pad_lightning.lm.loading): options, start-up refusals, safety,
cross-tokenizer student/teacher pairs, padding, LoRA and saving the student."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tiny_models import make_tiny_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from pad_lightning.app import models as app_models
from pad_lightning.app.models import load_pair
from pad_lightning.lm import loading as models
from pad_lightning.lm.chat import encode_pairs, encode_prompt, pad_id
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.loading import role_options, save_student
from pad_lightning.lm.scoring import pad_pairs, score_pairs, sequence_rewards
from pad_lightning.runtime.errors import ConfigError
from pad_lightning.training.evaluation import EvalConfig
from pad_lightning.training.module import LossConfig, OptimConfig, PADModule
from pad_lightning.training.rollout import CalibrationConfig, collect

CONF = Path(__file__).resolve().parents[3] / "conf"
PROMPTS = ["rev abc", "sort 3 1 2", "Which option is better? A or B"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "bytelevel": make_tiny_lm(root / "bytelevel", "bytelevel", seed=0),
        "metaspace": make_tiny_lm(root / "metaspace", "metaspace", seed=1),
        "no_template": make_tiny_lm(root / "no_template", "metaspace", chat_template=False),
        "sharp": make_tiny_lm(root / "sharp", "metaspace", seed=2, scale=20.0),
    }


def model_cfg(student, teacher, **student_opts):
    """A `model` config node like conf/model/hf.yaml with the given paths and student options."""
    return OmegaConf.create(
        {"student": {"path": str(student), **student_opts}, "teacher": {"path": str(teacher)}}
    )


def one_line_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["toy", "hf"])
def test_yaml_defaults_are_the_code_defaults(group):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = [f"model={group}", "model.student.path=a/b", "model.teacher.path=c/d"]
        cfg = compose("config", overrides=overrides)
    for role in ("student", "teacher"):
        opts = role_options(role, cfg.model[role])
        assert opts.path == {"student": "a/b", "teacher": "c/d"}[role]
        expected = models.RoleOptions(role, path=opts.path, zoo=opts.zoo)
        assert opts == expected
    served = {"backend", "server"}  # the teacher's alone (model.teacher.backend=server)
    assert set(cfg.model.student) - {"zoo"} == set(models.ROLE_KEYS) - {"zoo"} - served
    assert set(cfg.model.teacher) - {"zoo"} == set(models.ROLE_KEYS) - {"zoo", "lora"}
    assert set(cfg.model.student.lora) == set(models.LORA_KEYS)


@pytest.mark.parametrize(
    ("role", "options", "message"),
    [
        ("student", {"dtype": "float8"}, "model.student.dtype='float8': valid: float32, "
         "bfloat16, float16, auto"),
        ("teacher", {"attn_implementation": "fast"}, "model.teacher.attn_implementation='fast': "
         "valid: null (transformers' default), eager, sdpa, flash_attention_2, "
         "flash_attention_3, flex_attention"),
        ("student", {"trust_remote_code": "yes"}, "model.student.trust_remote_code='yes': "
         "valid: true, false"),
        ("teacher", {"gradient_checkpointing": True}, "model.teacher.gradient_checkpointing="
         "true: the teacher is frozen and never backpropagated; set it on model.student only"),
        ("teacher", {"lora": {"r": 8}}, "model.teacher.lora.r=8: the teacher is frozen; LoRA "
         "applies to model.student only"),
        ("student", {"lora": {"r": -1}}, "model.student.lora.r=-1: must be an integer >= 0 "
         "(0 = LoRA off)"),
        ("student", {"lora": {"save": "full"}}, "model.student.lora.save='full': valid: "
         "merged, adapter"),
        ("student", {"lora": {"rank": 8}}, "model.student.lora.rank: unknown key; valid: r, "
         "alpha, dropout, target_modules, save"),
        ("student", {"dytpe": "float32"}, "model.student.dytpe: unknown key; valid: path, zoo, "
         "dtype, attn_implementation, gradient_checkpointing, chat_template, "
         "trust_remote_code, lora, backend, server"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_errors(role, options, message):
    assert one_line_error(role_options, role, {"path": "x/y", **options}) == message


def test_missing_path_in_hf_group():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=hf", "model.teacher.path=c/d"])
    assert one_line_error(load_pair, cfg.model) == (
        "model.student.path: missing; set model.student.path=<hub id or local folder>"
    )


def test_lora_without_peft(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    assert one_line_error(role_options, "student", {"path": "x/y", "lora": {"r": 8}}) == (
        "model.student.lora.r=8: LoRA needs peft, which is not installed; "
        "run: pip install 'pad-lightning[lora]'"
    )


# -- sources ----------------------------------------------------------------------------------


def test_paths_that_are_neither_folder_nor_cached_hub_id(tmp_path, monkeypatch, folders):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    teacher = folders["metaspace"]
    missing = tmp_path / "missing"
    assert one_line_error(load_pair, model_cfg(missing, teacher)) == (
        f"model.student.path='{missing}': no such folder, and not a hub id like 'org/name'"
    )
    file = teacher / "config.json"
    assert one_line_error(load_pair, model_cfg(teacher, file)) == (
        f"model.teacher.path='{file}': is a file; expected a model folder or a hub id"
    )
    assert one_line_error(load_pair, model_cfg("tiny-org/not-cached", teacher)) == (
        "model.student.path='tiny-org/not-cached': not a local folder and not in the Hugging "
        "Face cache, and HF_HUB_OFFLINE=1; run with HF_HUB_OFFLINE=0 to download it, or pass a "
        "local folder"
    )


def test_cached_hub_id_loads_offline(tmp_path, monkeypatch, folders):
    """A hub id found in the HF cache (the layout hf_hub_download writes) loads with no network."""
    repo = tmp_path / "hub" / "models--tiny-org--tiny-lm"
    shutil.copytree(folders["bytelevel"], repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    student, tok_s, _, _ = load_pair(model_cfg("tiny-org/tiny-lm", folders["metaspace"]))
    reference = AutoModelForCausalLM.from_pretrained(folders["bytelevel"])
    ids = encode_prompt(tok_s, "rev abc")
    torch.testing.assert_close(logits(student, ids), logits(reference, ids))


def test_zoo_entries_still_load(tmp_path, monkeypatch, folders):
    """The toy group: roles without a path load `<zoo root>/<zoo entry>` after the zoo is built."""
    shutil.copytree(folders["bytelevel"], tmp_path / "student")
    shutil.copytree(folders["metaspace"], tmp_path / "teacher")
    monkeypatch.setattr(app_models, "ensure_zoo", lambda cfg: tmp_path)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
    student, tok_s, teacher, tok_t = load_pair(cfg.model)
    assert type(student).__name__ == "Qwen2ForCausalLM" and tok_s.pad_token == "<|endoftext|>"
    assert type(teacher).__name__ == "LlamaForCausalLM" and tok_t.bos_token == "<|begin_of_text|>"
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())


# -- chat templates ---------------------------------------------------------------------------


def test_no_chat_template_refused_before_any_weights_load(monkeypatch, folders):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the chat template check")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", no_weights)
    bad = folders["no_template"]
    for cfg, role in [
        (model_cfg(bad, folders["metaspace"]), "student"),
        (model_cfg(folders["bytelevel"], bad), "teacher"),
    ]:
        assert one_line_error(load_pair, cfg) == (
            f"model.{role}.path='{bad}': its tokenizer has no chat template; set "
            f"model.{role}.chat_template to a Jinja template string or a .jinja file"
        )


def test_chat_template_override_string_and_file(tmp_path, folders):
    from tiny_models import LLAMA3_TEMPLATE

    bad, teacher = folders["no_template"], folders["bytelevel"]
    _, tok, _, _ = load_pair(model_cfg(bad, teacher, chat_template=LLAMA3_TEMPLATE))
    assert tok.chat_template == LLAMA3_TEMPLATE
    file = tmp_path / "llama3.jinja"
    file.write_text(LLAMA3_TEMPLATE)
    _, tok, _, _ = load_pair(model_cfg(bad, teacher, chat_template=str(file)))
    assert tok.chat_template == LLAMA3_TEMPLATE
    assert tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    ).startswith("<|begin_of_text|><|start_header_id|>user")

    missing = str(tmp_path / "missing.jinja")
    assert one_line_error(load_pair, model_cfg(bad, teacher, chat_template=missing)) == (
        f"model.student.chat_template='{missing}': neither a Jinja template (no '{{{{' or "
        "'{%') nor an existing .jinja file"
    )
    broken = "{% for m in messages %}{{ m['content'] }}"  # unclosed for
    message = one_line_error(load_pair, model_cfg(bad, teacher, chat_template=broken))
    assert message.startswith(
        f"model.student.chat_template: the template of '{bad}' fails on a user/assistant exchange: "
    )
    no_extend = "{% for m in messages %}{{ m['role'] }}{% endfor %}|"  # '|' only at the end
    assert one_line_error(load_pair, model_cfg(bad, teacher, chat_template=no_extend)) == (
        f"model.student.chat_template: the template of '{bad}' renders the assistant turn so "
        "that it does not extend the generation prompt; override it"
    )


def test_template_without_end_of_turn_marker_refused(folders):
    """An empty assistant turn must render to something (the marker): else an empty response
    would have no scored token and the best reward."""
    from tiny_models import CHATML_TEMPLATE

    no_marker = CHATML_TEMPLATE.replace(
        "{{ m['content'] }}<|im_end|>\n",
        "{{ m['content'] }}{% if m['role'] != 'assistant' %}<|im_end|>\n{% endif %}",
    )
    assert no_marker != CHATML_TEMPLATE
    bad, teacher = folders["bytelevel"], folders["metaspace"]
    message = one_line_error(load_pair, model_cfg(bad, teacher, chat_template=no_marker))
    assert message == (
        f"chat template of '{bad}' adds no end-of-turn marker after an empty assistant turn, "
        "so an empty response would have nothing to score; set model.student.chat_template to "
        "a template that closes the assistant turn (e.g. with the EOS token)"
    )
    refuses_empty = CHATML_TEMPLATE.replace(
        "{% for m in messages %}",
        "{% for m in messages %}{% if not m['content'] %}{{ raise_exception('empty') }}{% endif %}",
    )
    message = one_line_error(load_pair, model_cfg(bad, teacher, chat_template=refuses_empty))
    assert message.startswith(
        f"model.student.chat_template: the template of '{bad}' fails on an empty assistant turn: "
    )


def test_bos_in_the_template_text_is_not_doubled(folders):
    """The Llama-3-like template writes BOS itself and the tokenizer would add another one."""
    _, _, _, tok = load_pair(model_cfg(folders["bytelevel"], folders["metaspace"]))
    bos = tok.bos_token_id
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "rev abc"}], tokenize=False, add_generation_prompt=True
    )
    assert tok(rendered)["input_ids"][:2] == [bos, bos]  # what add_special_tokens=True would do
    prompt_ids = encode_prompt(tok, "rev abc")
    assert prompt_ids[0] == bos and prompt_ids.count(bos) == 1
    for pair in encode_pairs(tok, ["rev abc"], [["cba", "x y"]]):
        assert pair.ids[0] == bos and pair.ids.count(bos) == 1
        assert pair.ids[-1] == tok.convert_tokens_to_ids("<|eot_id|>")


def test_tokenizer_without_pad_token(folders):
    """Manual left padding (generation) and right padding (scoring) need no pad token."""
    _, _, teacher, tok = load_pair(model_cfg(folders["bytelevel"], folders["sharp"]))
    assert tok.pad_token is None and pad_id(tok) == 0
    prompts = ["rev abcdefgh ijk", "sort 3 1 2", "1+1="]  # three prompt lengths
    sampling = SamplingConfig(max_new_tokens=8)
    batched = generate(teacher, tok, prompts, 1, sampling, greedy=True).texts
    alone = [generate(teacher, tok, [p], 1, sampling, greedy=True).texts[0] for p in prompts]
    assert batched == alone
    assert len({g[0] for g in batched}) == len(prompts)  # outputs depend on the prompt
    pairs = encode_pairs(tok, prompts, [["cba"], ["1 2 3"], ["2 and more text"]])
    together = score_pairs(teacher, pairs, pad_id(tok))
    single = torch.stack([sequence_rewards(teacher, pad_pairs([p], 0))[0] for p in pairs])
    torch.testing.assert_close(together, single)


# -- corrupt files ----------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_copy(src: Path, dst: Path, file: str, corrupt) -> Path:
    shutil.copytree(src, dst)
    corrupt(dst / file)
    return dst


def _corrupt_message(role: str, folder: Path, file: str, reason: str) -> str:
    return (
        f"model.{role}.path='{folder}': {folder / file} is corrupt or truncated ({reason}); "
        "re-save or re-download the model"
    )


@pytest.mark.parametrize(
    ("file", "corrupt", "reason"),
    [
        ("model.safetensors", _truncate, "SafetensorError: Error while deserializing header: "
         "incomplete metadata, file not fully covered"),
        ("model.safetensors", lambda p: p.write_bytes(b"\xff" * 4096), "SafetensorError: Error "
         "while deserializing header: header too large"),
        ("config.json", lambda p: p.write_text('{"model_type": "qwen2",'), "JSONDecodeError: "
         "Expecting property name enclosed in double quotes: line 1 column 24 (char 23)"),
        ("config.json", lambda p: p.write_text("[]"), "a JSON list, not an object"),
        ("tokenizer.json", lambda p: p.write_text('{"version": "1.0", "model": {'),
         "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 30 "
         "(char 29)"),
        ("tokenizer.json", lambda p: p.write_bytes(b"\xff" * 64), "UnicodeDecodeError: 'utf-8' "
         "codec can't decode byte 0xff in position 0: invalid start byte"),
        ("tokenizer.json", lambda p: p.write_text("{}"), "Exception: Model missing. at line 1 "
         "column 2"),  # valid JSON that the tokenizers library refuses
        ("tokenizer_config.json", _truncate, None),
        ("generation_config.json", lambda p: p.write_text("{"), "JSONDecodeError: Expecting "
         "property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("chat_template.jinja", lambda p: p.write_bytes(b"\xff"), "UnicodeDecodeError: 'utf-8' "
         "codec can't decode byte 0xff in position 0: invalid start byte"),
    ],
)  # fmt: skip
def test_corrupt_files_are_one_line_errors_naming_the_file(
    tmp_path, monkeypatch, folders, file, corrupt, reason
):
    """Refused for either role at start-up, before any weights load, with the file named."""

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the files were checked")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", no_weights)
    bad = _corrupt_copy(folders["bytelevel"], tmp_path / "bad", file, corrupt)
    message = one_line_error(load_pair, model_cfg(folders["metaspace"], bad))
    if reason is None:  # a truncated JSON file: the parser's position depends on the content
        head = (
            f"model.teacher.path='{bad}': {bad / file} is corrupt or truncated (JSONDecodeError: "
        )
        assert message.startswith(head)
        assert message.endswith("); re-save or re-download the model")
    else:
        assert message == _corrupt_message("teacher", bad, file, reason)


def test_tokenizer_json_the_tokenizers_library_refuses(tmp_path, folders):
    """Valid JSON but not a tokenizer: the error from transformers is traced to tokenizer.json."""

    def bad_model(path: Path) -> None:
        path.write_text(json.dumps({**json.loads(path.read_text()), "model": {"vocab": 5}}))

    bad = _corrupt_copy(folders["bytelevel"], tmp_path / "bad", "tokenizer.json", bad_model)
    message = one_line_error(load_pair, model_cfg(bad, folders["metaspace"]))
    prefix = f"model.student.path='{bad}': {bad / 'tokenizer.json'} is corrupt or truncated ("
    assert message.startswith(prefix + "Exception: ")
    assert message.endswith("); re-save or re-download the model")


def test_load_model_and_load_tokenizer_name_the_corrupt_file(tmp_path, monkeypatch, folders):
    weights = _corrupt_copy(folders["metaspace"], tmp_path / "w", "model.safetensors", _truncate)
    opts = role_options("student", {"path": str(weights)})
    assert one_line_error(models.load_model, opts, str(weights)) == _corrupt_message(
        "student",
        weights,
        "model.safetensors",
        "SafetensorError: Error while deserializing header: incomplete metadata, file not "
        "fully covered",
    )
    tok = _corrupt_copy(folders["metaspace"], tmp_path / "t", "tokenizer.json", _truncate)
    opts = role_options("teacher", {"path": str(tok)})
    assert one_line_error(models.load_tokenizer, opts, str(tok)).startswith(
        f"model.teacher.path='{tok}': {tok / 'tokenizer.json'} is corrupt or truncated "
        "(JSONDecodeError: "
    )

    # A file the start-up check cannot see (a hub download): transformers' error, one line.
    monkeypatch.setattr(models, "local_folder", lambda source: None)
    message = one_line_error(models.load_model, role_options("student", {"path": "x/y"}), weights)
    assert message == (
        "model.student.path='x/y': a safetensors weights file is corrupt or truncated "
        "(SafetensorError: Error while deserializing header: incomplete metadata, file not "
        "fully covered); re-save or re-download the model"
    )


def test_corrupt_bin_weights_and_missing_shards(tmp_path, folders):
    reference = AutoModelForCausalLM.from_pretrained(folders["metaspace"])
    teacher = folders["bytelevel"]

    def bin_weights(name: str, corrupt) -> Path:
        folder = shutil.copytree(folders["metaspace"], tmp_path / name)
        (folder / "model.safetensors").unlink()
        torch.save(reference.state_dict(), folder / "pytorch_model.bin")
        corrupt(folder / "pytorch_model.bin")
        return folder

    truncated = bin_weights("truncated", _truncate)
    assert one_line_error(load_pair, model_cfg(truncated, teacher)) == _corrupt_message(
        "student", truncated, "pytorch_model.bin", "BadZipFile: File is not a zip file"
    )
    garbage = bin_weights("garbage", lambda p: p.write_bytes(b"\xff" * 4096))
    assert one_line_error(load_pair, model_cfg(garbage, teacher)) == _corrupt_message(
        "student", garbage, "pytorch_model.bin", "not a torch checkpoint"
    )

    sharded = shutil.copytree(folders["metaspace"], tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    reference.save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 2
    load_pair(model_cfg(sharded, teacher))  # intact shards load
    _truncate(shards[1])
    assert one_line_error(load_pair, model_cfg(sharded, teacher)) == _corrupt_message(
        "student",
        sharded,
        shards[1].name,
        "SafetensorError: Error while deserializing header: incomplete metadata, file not "
        "fully covered",
    )
    shards[1].unlink()
    assert one_line_error(load_pair, model_cfg(sharded, teacher)) == (
        f"model.student.path='{sharded}': {shards[1]} is missing (listed in "
        f"{sharded / 'model.safetensors.index.json'}); re-save or re-download the model"
    )


def test_corrupt_zoo_entry_names_the_entry(tmp_path, monkeypatch, folders):
    """Roles from the zoo: the remedy is to delete the entry (the next run rebuilds it)."""
    shutil.copytree(folders["bytelevel"], tmp_path / "student")
    shutil.copytree(folders["metaspace"], tmp_path / "teacher")
    _truncate(tmp_path / "teacher" / "model.safetensors")
    monkeypatch.setattr(app_models, "ensure_zoo", lambda cfg: tmp_path)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
    assert one_line_error(load_pair, cfg.model) == (
        f"model.teacher.path='{tmp_path / 'teacher'}': "
        f"{tmp_path / 'teacher' / 'model.safetensors'} is corrupt or truncated (SafetensorError: "
        "Error while deserializing header: incomplete metadata, file not fully covered); "
        f"delete the zoo entry {tmp_path} to rebuild it"
    )


# -- loading safety and options ---------------------------------------------------------------


class _RunsCode:
    """A pickle payload that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_bin_weights_load_with_weights_only(tmp_path, folders):
    good = shutil.copytree(folders["metaspace"], tmp_path / "good")
    (good / "model.safetensors").unlink()
    reference = AutoModelForCausalLM.from_pretrained(folders["metaspace"])
    torch.save(reference.state_dict(), good / "pytorch_model.bin")
    student, tok, _, _ = load_pair(model_cfg(good, folders["bytelevel"]))
    ids = encode_prompt(tok, "rev abc")
    torch.testing.assert_close(logits(student, ids), logits(reference, ids))

    evil = shutil.copytree(good, tmp_path / "evil")
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": _RunsCode(marker)}, evil / "pytorch_model.bin")
    assert one_line_error(load_pair, model_cfg(evil, folders["bytelevel"])) == (
        f"model.student.path='{evil}': refused its .bin weights: they hold more than tensors, "
        "and loading them would run pickled code (torch weights_only loading); use "
        "safetensors weights"
    )
    assert not marker.exists()


def _with_custom_code(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["model_type"] = "tinycustom"
    config["auto_map"] = {
        "AutoConfig": "configuration_tiny.TinyConfig",
        "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM",
    }
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\n"
        "class TinyConfig(LlamaConfig):\n    model_type = 'tinycustom'\n"
    )
    (dst / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyConfig"
        "\n\n\nclass TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n"
    )
    return dst


def test_trust_remote_code(tmp_path, monkeypatch, folders):
    import transformers.dynamic_module_utils as dynamic

    custom = _with_custom_code(folders["metaspace"], tmp_path / "custom")
    assert one_line_error(load_pair, model_cfg(folders["bytelevel"], custom)) == (
        f"model.teacher.path='{custom}': ships custom model code; set "
        "model.teacher.trust_remote_code=true to run it (only for sources you trust)"
    )
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    cfg = model_cfg(folders["bytelevel"], custom)
    cfg.teacher.trust_remote_code = True
    _, _, teacher, _ = load_pair(cfg)
    assert type(teacher).__name__ == "TinyForCausalLM"


def test_dtype_and_attention_options(folders):
    student, tok, _, _ = load_pair(
        model_cfg(folders["metaspace"], folders["bytelevel"], attn_implementation="eager")
    )
    sdpa, _, _, _ = load_pair(
        model_cfg(folders["metaspace"], folders["bytelevel"], attn_implementation="sdpa")
    )
    assert student.config._attn_implementation == "eager"
    assert sdpa.config._attn_implementation == "sdpa"
    ids = encode_prompt(tok, "rev abc")
    torch.testing.assert_close(logits(student, ids), logits(sdpa, ids), atol=1e-5, rtol=1e-4)
    half, _, _, _ = load_pair(
        model_cfg(folders["metaspace"], folders["bytelevel"], dtype="bfloat16")
    )
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="installed")
def test_unavailable_attention_is_a_config_error(folders):
    cfg = model_cfg(
        folders["metaspace"], folders["bytelevel"], attn_implementation="flash_attention_2"
    )
    message = one_line_error(load_pair, cfg)  # the rest is transformers' own first line
    assert message.startswith("model.student.attn_implementation='flash_attention_2': ")
    assert "FlashAttention2" in message


# -- cross-tokenizer pairs ----------------------------------------------------------------------


def direct_teacher_reward(teacher, tok, prompt: str, text: str, finished: bool) -> float:
    """The teacher's length-normalised log-likelihood of `text`, computed from the text alone with
    the teacher's own template and tokenizer, one unpadded sequence at a time."""
    messages = [{"role": "user", "content": prompt}]
    prefix = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def turn(content: str) -> str:
        full = tok.apply_chat_template(
            [*messages, {"role": "assistant", "content": content}], tokenize=False
        )
        return full[len(prefix) :].rstrip()

    def span(suffix: str) -> list[int]:
        joint = tok(prefix + suffix, add_special_tokens=False)["input_ids"]  # the documented rule:
        if joint[: len(p)] == p:  # the conversation as one text, unless that changes prompt ids
            return joint[len(p) :]
        return tok(suffix, add_special_tokens=False)["input_ids"]

    suffix, closing = turn(text), turn("")
    assert closing  # the end-of-turn marker: an empty response is scored on it
    p = tok(prefix, add_special_tokens=False)["input_ids"]
    s = span(suffix)
    if not finished and suffix.endswith(closing):  # cut: no marker, unless nothing is left
        s = span(suffix[: len(suffix) - len(closing)]) or s
    assert s
    ids = torch.tensor([p + s])
    with torch.no_grad():
        logp = teacher(input_ids=ids).logits[0, len(p) - 1 : -1].log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(s)[:, None]).mean())


def pad_step(student, tok_s, teacher, tok_t, roll, n: int) -> torch.Tensor:
    """One PADModule training step plus optimizer step on a rollout; returns the loss."""
    module = PADModule(
        student,
        teacher,
        tok_s,
        tok_t,
        LossConfig("ppd"),
        OptimConfig(lr=5e-2, warmup_steps=0),
        EvalConfig(n, SamplingConfig(), CalibrationConfig("none")),
        total_steps=1,
        inference_dtype="float32",
    )
    batch = module.batch(roll, list(range(3)))
    module.train()
    optimizers = module.configure_optimizers()  # its scheduler holds the optimizer weakly
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizers["optimizer"].step()
    return loss.detach()


def rollout(student, tok_s, teacher, tok_t, n: int, calibration: CalibrationConfig | None = None):
    """n sampled responses per prompt of PROMPTS, scored by the teacher (no calibration)."""
    calibration = calibration or CalibrationConfig("none")
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10)
    # a random model rarely stops: favour its end-of-turn token so both kinds of response occur
    student.generation_config.sequence_bias = {(tok_s.eos_token_id,): 4.0}
    torch.manual_seed(0)
    return collect(student, tok_s, teacher, tok_t, PROMPTS, n, sampling, calibration)


@pytest.mark.parametrize(
    ("student_flavour", "teacher_flavour"),
    [("bytelevel", "metaspace"), ("metaspace", "bytelevel")],
)
def test_cross_tokenizer_rollout_and_training_step(folders, student_flavour, teacher_flavour):
    student, tok_s, teacher, tok_t = load_pair(
        model_cfg(folders[student_flavour], folders[teacher_flavour])
    )
    assert len(tok_s) != len(tok_t)
    n = 3
    # MCQ calibration too: its questions are also rendered in the teacher's template
    roll = rollout(student, tok_s, teacher, tok_t, n, CalibrationConfig("mcq", alpha=0.5))

    texts = [t for group in roll.texts for t in group]
    assert sum(map(bool, texts)) >= 3  # responses with content: the comparison means something
    assert roll.truncated.any() and (~roll.truncated).any()
    if len(tok_s) > len(tok_t):  # student ids the teacher's embedding could not even look up
        assert any(max(pair.ids) >= len(tok_t) for pair in roll.student_pairs)
    finished = (~roll.truncated).tolist()
    direct = torch.tensor(
        [
            [
                direct_teacher_reward(teacher, tok_t, PROMPTS[i], roll.texts[i][j], finished[i][j])
                for j in range(n)
            ]
            for i in range(len(PROMPTS))
        ]
    )
    torch.testing.assert_close(roll.teacher_rewards, direct, atol=1e-5, rtol=1e-4)
    assert roll.log_p_sel is not None and (roll.log_p_sel <= 0).all()
    torch.testing.assert_close(
        roll.teacher_scores, 0.5 * roll.teacher_rewards + 0.5 * roll.log_p_sel
    )

    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert torch.isfinite(pad_step(student, tok_s, teacher, tok_t, roll, n))
    assert any(not torch.equal(before_s[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize(
    ("student_flavour", "teacher_flavour"),
    [("bytelevel", "metaspace"), ("metaspace", "bytelevel")],
)
def test_special_token_student_is_scored_on_its_tokens(folders, student_flavour, teacher_flavour):
    """A student that generates only one special token of its own vocabulary: the text keeps it
    (so it is scored, by the student as that token and by the teacher as plain text), and the
    rewards are real log-likelihoods, not the 0.0 of an empty scored span."""
    student, tok_s, teacher, tok_t = load_pair(
        model_cfg(folders[student_flavour], folders[teacher_flavour])
    )
    special = {"bytelevel": "<|im_start|>", "metaspace": "<|start_header_id|>"}[student_flavour]
    special_id = tok_s.convert_tokens_to_ids(special)
    student.generation_config.suppress_tokens = [i for i in range(len(tok_s)) if i != special_id]
    n, k = 2, 3
    torch.manual_seed(0)
    roll = collect(
        student,
        tok_s,
        teacher,
        tok_t,
        PROMPTS,
        n,
        SamplingConfig(max_new_tokens=k),
        CalibrationConfig("none"),
    )
    assert roll.truncated.all()
    assert all(t == special * k for group in roll.texts for t in group)
    assert all(p.ids[p.prompt_len :] == [special_id] * k for p in roll.student_pairs)
    assert torch.isfinite(roll.teacher_rewards).all() and (roll.teacher_rewards < 0).all()
    direct = direct_teacher_reward(teacher, tok_t, PROMPTS[0], roll.texts[0][0], False)
    torch.testing.assert_close(float(roll.teacher_rewards[0, 0]), direct, atol=1e-5, rtol=1e-4)
    student_rewards = score_pairs(student, roll.student_pairs, pad_id(tok_s))
    assert torch.isfinite(student_rewards).all() and (student_rewards < 0).all()


# -- LoRA ---------------------------------------------------------------------------------------

LORA = {"r": 4, "alpha": 8, "target_modules": "all-linear"}


def lora_step(student, tok_s, teacher, tok_t) -> None:
    """A rollout and one PAD step of `student`."""
    pad_step(student, tok_s, teacher, tok_t, rollout(student, tok_s, teacher, tok_t, 2), 2)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_only_adapters(folders, checkpointing):
    student, tok_s, teacher, tok_t = load_pair(
        model_cfg(
            folders["metaspace"],
            folders["bytelevel"],
            lora=LORA,
            gradient_checkpointing=checkpointing,
        )
    )
    trainable = {k for k, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in k or ".lora_B." in k for k in trainable)
    assert student.get_base_model().is_activation_checkpointing == checkpointing

    roll = rollout(student, tok_s, teacher, tok_t, 2)
    calls = []
    activation = student.get_base_model().model.layers[0].mlp.act_fn
    activation.register_forward_hook(lambda *args: calls.append(1))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    pad_step(student, tok_s, teacher, tok_t, roll, 2)
    assert len(calls) == (2 if checkpointing else 1)  # recomputed in backward
    changed = {k for k, v in student.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(".lora_" in k for k in changed)
    # B starts at 0 (so A gets no gradient in this first step); every B changed, the first
    # layer's included, so gradients crossed the checkpointed blocks from the frozen embedding
    assert {k for k in changed if ".lora_B." in k} == {k for k in trainable if ".lora_B." in k}


@pytest.mark.parametrize("flavour", ["bytelevel", "metaspace"])  # tied and untied embeddings
def test_lora_save_merged_and_adapter(tmp_path, folders, flavour):
    from peft import PeftModel

    other = "metaspace" if flavour == "bytelevel" else "bytelevel"
    cfg = model_cfg(folders[flavour], folders[other], lora=LORA)
    student, tok_s, teacher, tok_t = load_pair(cfg)
    lora_step(student, tok_s, teacher, tok_t)
    student.eval()
    ids = encode_prompt(tok_s, "rev abc")
    trained = logits(student, ids)
    base_only = logits(AutoModelForCausalLM.from_pretrained(folders[flavour]), ids)
    assert not torch.allclose(trained, base_only)  # the adapters matter

    merged_dir = save_student(student, tok_s, tmp_path / "merged", cfg.student)
    assert not (merged_dir / "adapter_config.json").exists()
    plain, info = AutoModelForCausalLM.from_pretrained(merged_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any("lora" in k for k in plain.state_dict())
    torch.testing.assert_close(logits(plain, ids), trained, atol=1e-5, rtol=1e-4)
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template == tok_s.chat_template
    assert isinstance(student, PeftModel)  # saving merged left the trained student as it was
    torch.testing.assert_close(logits(student, ids), trained)

    cfg.student.lora.save = "adapter"
    adapter_dir = save_student(student, tok_s, tmp_path / "adapter", cfg.student)
    assert (adapter_dir / "adapter_config.json").exists()
    assert not (adapter_dir / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(folders[flavour])
    reloaded = PeftModel.from_pretrained(base, adapter_dir).eval()
    torch.testing.assert_close(logits(reloaded, ids), trained, atol=1e-5, rtol=1e-4)


def test_save_full_student(tmp_path, folders):
    cfg = model_cfg(folders["bytelevel"], folders["metaspace"])
    student, tok_s, _, _ = load_pair(cfg)
    out = save_student(student, tok_s, tmp_path / "student", cfg.student)
    ids = encode_prompt(tok_s, "rev abc")
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(out), ids), logits(student, ids)
    )


def test_lora_checkpoint_holds_adapters_only_and_restores_them(folders):
    def module_for(student, teacher, tok_s, tok_t):
        return PADModule(
            student,
            teacher,
            tok_s,
            tok_t,
            LossConfig("ppd"),
            OptimConfig(),
            EvalConfig(2, SamplingConfig(), CalibrationConfig("none")),
            total_steps=1,
            inference_dtype="float32",
        )

    cfg = model_cfg(folders["metaspace"], folders["bytelevel"], lora=LORA)
    student, tok_s, teacher, tok_t = load_pair(cfg)
    roll = rollout(student, tok_s, teacher, tok_t, 2)
    pad_step(student, tok_s, teacher, tok_t, roll, 2)  # adapters move away from their init
    checkpoint = {"state_dict": module_for(student, teacher, tok_s, tok_t).state_dict()}
    module_for(student, teacher, tok_s, tok_t).on_save_checkpoint(checkpoint)
    saved = checkpoint["state_dict"]
    trainable = {f"student.{k}" for k, p in student.named_parameters() if p.requires_grad}
    assert set(saved) == trainable  # no frozen base weights, no teacher

    fresh, tok_s2, teacher2, tok_t2 = load_pair(cfg)  # resume: base reloaded from its path
    resumed = module_for(fresh, teacher2, tok_s2, tok_t2)
    resumed.on_load_checkpoint(checkpoint)  # accepted: nothing trainable is missing
    resumed.load_state_dict(saved, strict=False)
    for name, value in student.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    with pytest.raises(ValueError, match="student weights"):
        resumed.on_load_checkpoint({"state_dict": {}})
