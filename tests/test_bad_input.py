"""Bad input gets one clear error naming the problem and the fix, and loads nothing."""

from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest

import fiddler_nb as fnb
from fiddler_nb.runtime.errors import UnsupportedModelError
from fiddler_nb.runtime.errors import BudgetError
from fiddler_nb.runtime.errors import CheckpointError


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        fnb.load(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        fnb.load(tmp_path)


def test_config_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        fnb.load(tmp_path)


def test_dense_model_names_supported_architectures(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="no MoE layer.*mixtral"):
        fnb.load(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_shard_is_named(tmp_path, mixtral_path, damage):
    broken = tmp_path / "ckpt"
    shutil.copytree(mixtral_path, broken)
    shard = broken / "model.safetensors"
    if damage == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    else:
        shard.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        fnb.load(broken)


def test_missing_indexed_shard(tmp_path, mixtral_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(mixtral_path, broken)
    shard = broken / "model.safetensors"
    shard.rename(broken / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors.*missing"):
        fnb.load(broken)


@pytest.mark.parametrize("kwargs,match", [
    (dict(placement="hottest"), "unknown placement policy 'hottest'; known: .*popularity"),
    (dict(execution="gpu"), "unknown execution policy 'gpu'; known: auto, cpu, transfer"),
    (dict(dtype="int3"), "unknown dtype"),
    (dict(gpu_memory="lots"), "cannot read memory size"),
])
def test_bad_options(mixtral_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fnb.load(mixtral_path, **kwargs)


@pytest.mark.parametrize("budget", [-1, 33, 1.5])
def test_budget_out_of_range(mixtral_path, budget):
    with pytest.raises(BudgetError, match=r"out of range.*pass 0\.\.32"):
        fnb.load(mixtral_path, expert_budget=budget)


def test_failed_rebudget_keeps_old_placement(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=5, placement="first-layers")
    before = engine.placement
    with pytest.raises(BudgetError):
        engine.set_expert_budget(1000)
    with pytest.raises(ValueError, match="unknown placement"):
        engine.set_placement("nope")
    assert engine.placement == before and engine.config.expert_budget == 5
    assert engine.generate("ok", max_new_tokens=2).token_ids.shape == (1, 2)


def test_failed_load_leaves_nothing_behind(mixtral_path, monkeypatch):
    """A budget error after the weights were read must not keep the model alive."""
    import transformers

    from fiddler_nb.runtime.engine.experts import ExpertStore

    # out of range is refused before loading; "does not fit the device" only after
    monkeypatch.setattr(ExpertStore, "max_resident_experts", lambda self: 3)
    refs = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    transformers.AutoModelForCausalLM.from_pretrained = spy
    try:
        with pytest.raises(BudgetError):
            fnb.load(mixtral_path, expert_budget=4)
    finally:
        transformers.AutoModelForCausalLM.from_pretrained = original
    gc.collect()
    assert refs and refs[0]() is None, "the half-loaded model is still referenced"


def test_text_prompt_without_tokenizer(tmp_path, mixtral_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(f"{mixtral_path}/{name}", bare / name)
    engine = fnb.load(bare, expert_budget=0)
    with pytest.raises(ValueError, match="no tokenizer; pass token ids"):
        engine.generate("text")


def test_budget_above_device_memory_says_how_many_fit(mixtral_path, monkeypatch):
    from fiddler_nb.runtime.engine.experts import ExpertStore

    monkeypatch.setattr(ExpertStore, "max_resident_experts", lambda self: 3)
    with pytest.raises(BudgetError, match=r"only 3 experts fit.*expert_budget<=3"):
        fnb.load(mixtral_path, expert_budget=4)


@pytest.mark.parametrize("prompt", ["", [], ["ok", ""]])
def test_empty_prompt(mixtral_path, prompt):
    engine = fnb.load(mixtral_path, expert_budget=2)
    with pytest.raises(fnb.InputError, match="empty"):
        engine.generate(prompt)


def test_bad_generation_length_and_slots(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=2)
    with pytest.raises(fnb.OptionError, match="max_new_tokens must be >= 1, got 0"):
        engine.generate("x", max_new_tokens=0)
    with pytest.raises(ValueError, match="scratch_slots must be >= 1"):
        fnb.load(mixtral_path, scratch_slots=0)


def test_causal_lm_without_experts_interface_is_named(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'bert' has no MoE layer"):
        fnb.load(tmp_path)
