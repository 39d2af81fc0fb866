import dataclasses
import json

import pytest

from emovit.config import PRESETS, Config, field_docs, make_config


def test_presets_and_overrides(tmp_path):
    cfg = make_config("kaggle")
    assert cfg.output_dir == "/kaggle/working/vit_augmented"
    assert cfg.num_frames == 1292  # 30 s at 22,050 Hz, hop 512
    demo = make_config("demo", seed=7, output_dir=str(tmp_path))
    assert demo.preset == "demo" and demo.seed == 7 and demo.num_frames < 1292
    assert set(PRESETS) == {"kaggle", "demo"}


def test_unknown_field_and_preset_raise():
    with pytest.raises(ValueError, match="Unknown Config field"):
        make_config("kaggle", not_a_field=1)
    with pytest.raises(ValueError, match="Unknown preset"):
        make_config("nope")


def test_save_load_roundtrip(tmp_path):
    cfg = make_config("demo", output_dir=str(tmp_path), seed=3)
    path = cfg.save()
    assert json.loads(open(path).read())["seed"] == 3
    assert Config.load(path) == cfg


def test_every_field_has_a_comment():
    rows = field_docs()
    assert [r[0] for r in rows] == [f.name for f in dataclasses.fields(Config)]
    missing = [name for name, _, _, comment in rows if not comment]
    assert not missing, f"Config fields without a comment: {missing}"
