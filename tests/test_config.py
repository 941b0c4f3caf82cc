"""Config: round trip, presets, overrides, and every kind of bad input."""

from __future__ import annotations

import pytest
import yaml

from avbert.config import Config, ConfigError, dump_yaml, load_config


def write(tmp_path, text: str):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_paper_model():
    cfg = load_config()
    assert cfg.model.transformer.width == 768 and cfg.model.sharing.modalities == "lowrank"
    assert cfg.model.fusion == "mid"


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "model: {preset: tiny, fusion: late}\ntrain: {steps: 7}\n"),
                      ["objective.sampler=current_sequence", "data.short_side=[10, 20]"])
    out = tmp_path / "resolved.yaml"
    dump_yaml(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert dump_yaml(again) == out.read_text()


def test_preset_then_yaml_then_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "model: {preset: tiny, fusion: late}\n"), ["model.sharing.rank=4"])
    assert cfg.model.transformer.width == 64  # from the tiny preset
    assert cfg.model.fusion == "late"  # from the file
    assert cfg.model.sharing.rank == 4  # from the command line


def test_override_wins_over_file(tmp_path):
    cfg = load_config(write(tmp_path, "train: {steps: 5}\n"), ["train.steps=9"])
    assert cfg.train.steps == 9


def test_setting_one_loss_weight_keeps_the_others(tmp_path):
    cfg = load_config(write(tmp_path, "objective: {weights: {cpp: 2.0}}\n"), ["objective.weights.mep_audio=0"])
    assert cfg.objective.weights == {"mep_visual": 1.0, "mep_audio": 0.0, "mep_multimodal": 1.0, "cpp": 2.0}


def test_unknown_key_names_file_path_and_closest(tmp_path):
    path = write(tmp_path, "model:\n  sharing:\n    modalites: all\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "model.sharing.modalites" in msg and "did you mean 'modalities'" in msg


def test_unknown_top_level_key_lists_valid_keys_when_nothing_is_close(tmp_path):
    with pytest.raises(ConfigError, match=r"zzzz: unknown key; valid keys: .*model"):
        load_config(write(tmp_path, "zzzz: 1\n"))


def test_wrong_enum_lists_allowed_values(tmp_path):
    path = write(tmp_path, "objective: {sampler: hardest}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "objective.sampler" in msg and "'cans_similar'" in msg and "'current_sequence'" in msg


@pytest.mark.parametrize(
    "text,key,fragment",
    [
        ("train: {steps: many}\n", "train.steps", "expected an integer"),
        ("optim: {lr: fast}\n", "optim.lr", "expected a number"),
        ("train: {compile: 1}\n", "train.compile", "expected true or false"),
        ("model: {transformer: {width: 10, heads: 3}}\n", "model.transformer", "not divisible"),
        ("data: {short_side: [1, 2, 3]}\n", "data.short_side", "expected 2 items"),
        ("model: 3\n", "model", "expected a mapping"),
        ("model: {preset: huge}\n", "model.preset", "allowed values"),
        ("train: {zero_stage: 4}\n", "train.zero_stage", "allowed values: 0, 1, 2, 3"),
        ("objective: {weights: {mep_video: 1.0}}\n", "objective", "unknown loss weight"),
        ("objective: {cpp_input: unmasked}\n", "objective.cpp_input", "allowed values"),
        ("data: {synthetic: {num_classes: 9}}\n", "data", "synthetic.num_classes must be in [1, synthetic.num_events = 8]"),
        ("data: {n_fft: 1}\n", "data", "n_fft must be >= 2 samples"),
        ("model: {transformer: {init_std: 0}}\n", "model.transformer", "init_std must be > 0"),
    ],
)
def test_wrong_types_and_values(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and key in str(err.value) and fragment in str(err.value)


def test_bad_override_is_attributed_to_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: model.fusion: invalid value 'lat'"):
        load_config(write(tmp_path, "{}\n"), ["model.fusion=lat"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["model.fusion"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_resolved_yaml_is_plain_data():
    data = yaml.safe_load(dump_yaml(Config()))
    assert data["model"]["sharing"] == {"layers": "cross_layer", "modalities": "lowrank", "rank": 128}


def test_synthetic_event_types_reach_the_generated_set():
    from avbert.data.build import synthetic_spec
    from avbert.data.synthetic import generate_video

    cfg = load_config(overrides=["data.preset=tiny", "data.synthetic.num_events=24", "data.synthetic.num_classes=4"])
    spec = synthetic_spec(cfg.data)
    assert spec.num_events == 24
    seen = {int(e) for i in range(64) for e in generate_video(spec, i).events}
    assert max(seen) >= 8 and seen <= set(range(24))  # types beyond the default 8 occur


def test_fft_size_defaults_to_twice_the_hop_and_can_be_set():
    from avbert.data.clips import ClipSpec

    default = ClipSpec.from_config(load_config().data)
    assert (default.hop_length, default.n_fft) == (736, 1472)  # 16.69 ms at 44.1 kHz (the released hop)
    assert ClipSpec.from_config(load_config(overrides=["data.n_fft=400"]).data).n_fft == 400


def test_downstream_feature_is_checked_against_the_model():
    assert load_config(None, ["downstream.feature=v_cnn", "model.fusion=early"]).downstream.feature == "v_cnn"
    with pytest.raises(ConfigError, match="downstream.feature 'v_bert'.*early"):
        load_config(None, ["downstream.feature=v_bert", "model.fusion=early"])
    with pytest.raises(ConfigError, match="m_bert"):  # the allowed names are listed
        load_config(None, ["downstream.feature=multimodal"])
    with pytest.raises(ConfigError, match="single-label"):
        load_config(None, ["downstream.task=charades", "downstream.loss=multi_margin"])


def test_an_override_whose_value_is_not_yaml_names_the_command_line():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.steps=,"])
    assert err.value.source == "command line" and err.value.key == "train.steps" and "not valid YAML" in str(err.value)
