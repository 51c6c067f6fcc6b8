"""Presets are data files (gen_align/preset_configs/*.json): each parses, bad files are refused key by key, and a
user's own file is one add_preset_config away from from_pretrained."""

from __future__ import annotations

import json

import pytest

from gen_align.errors import ConfigError
from gen_align.presets import (
    MINI_DECODER,
    MINI_SPACE,
    PRESET_CONFIGS,
    PRESETS,
    _builtin_presets,
    add_preset_config,
    list_presets,
)

HUB_PRESET = {
    "name": "my-preset",
    "description": "a test preset",
    "embedding_dim": 1024,
    "decoder": "stabilityai/stable-diffusion-2-1-unclip",
    "towers": {"audio": {"kind": "beats", "source": "beats/BEATs_iter3_plus_AS2M.pt", "window_seconds": 10.0}},
}


def test_every_builtin_preset_is_a_file_and_the_shipped_one_comes_first():
    files = sorted(p.stem for p in PRESET_CONFIGS.glob("*.json"))
    assert (
        files == sorted(PRESETS) == ["imagebind-h", "kandinsky-2.2", "mini", "stable-unclip-h", "stable-unclip-h-beats"]
    )
    assert sorted(list_presets()) == sorted(PRESETS)
    # other tests reorder PRESETS; a baseline (imagebind-h: towers used untrained) after the main presets of its size
    assert list(_builtin_presets()) == [
        "mini",
        "stable-unclip-h",
        "stable-unclip-h-beats",
        "imagebind-h",
        "kandinsky-2.2",
    ]
    assert PRESETS["mini"].checkpoint == str(MINI_SPACE) and PRESETS["mini"].decoder == str(MINI_DECODER)
    raw = json.loads((PRESET_CONFIGS / "stable-unclip-h.json").read_text())
    assert PRESETS["stable-unclip-h"].towers == raw["towers"] and raw["decoder"] == PRESETS["stable-unclip-h"].decoder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embeding_dim": 3}, r"unknown preset key\(s\) \['embeding_dim'\]"),
        ({"embedding_dim": "1024"}, "embedding_dim in .* must be a positive integer, got '1024'"),
        ({"embedding_dim": True}, "embedding_dim in .* must be a positive integer"),
        ({"decoder": ""}, "decoder in .* must be a non-empty string"),
        ({"checkpoint": "space"}, "exactly one of 'towers'"),
        ({"towers": {"audio": {"kind": "wav2vec"}}}, r"towers.audio.kind in .* is 'wav2vec'"),
        ({"towers": {"audio": {"kind": "beats", "source": "x", "window_seconds": "ten"}}}, "window_seconds"),
    ],
)
def test_a_bad_preset_file_is_refused_naming_the_key(tmp_path, change, message):
    (tmp_path / "bad.json").write_text(json.dumps({**HUB_PRESET, **change}))
    with pytest.raises(ConfigError, match=message):
        add_preset_config(tmp_path / "bad.json")
    assert "my-preset" not in PRESETS


def test_unreadable_files_and_taken_names_are_refused(tmp_path):
    (tmp_path / "cut.json").write_text('{"name": ')
    with pytest.raises(ConfigError, match="cannot read the preset file"):
        add_preset_config(tmp_path / "cut.json")
    (tmp_path / "mini.json").write_text(json.dumps({**HUB_PRESET, "name": "mini"}))
    with pytest.raises(ConfigError, match=r"\['mini'\] .* are built-in presets; rename them"):
        add_preset_config(tmp_path / "mini.json")
    with pytest.raises(ConfigError, match="no preset file or folder at"):
        add_preset_config(tmp_path / "not-there")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no preset files"):
        add_preset_config(tmp_path / "empty")


def test_a_user_preset_loads_through_from_pretrained(tmp_path):
    from gen_align import GenAlignPipeline

    preset = {
        "name": "my-mini",
        "description": "the shipped mini space under another name",
        "embedding_dim": 64,
        "checkpoint": str(MINI_SPACE),
        "decoder": str(MINI_DECODER),
    }
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "my-mini.json").write_text(json.dumps(preset))
    try:
        assert add_preset_config(tmp_path / "presets") == ["my-mini"]
        pipe = GenAlignPipeline.from_pretrained("my-mini", progress=False)
        assert pipe.embed(text="a small red star")["text"].shape == (1, 64)
    finally:
        PRESETS.pop("my-mini", None)
