"""GPU code paths re-enacted on the CPU: each test fails on the code before its fix.

- DataParallel's worker threads re-enter autocast with ``enabled=`` only: the model must pin
  its own autocast dtype (item 1).
- Resume across AMP modes: a disabled scaler's ``{}`` state into an fp16 run (item 3).
- An fp16 checkpoint folder loads as float32 master weights (item 4).
- Arch names with suffixes in the GPU check (item 5).
- The lr scheduler does not advance when the GradScaler skipped the step (item 7).
- Atomic writes: normal file mode, fsync before the rename (item 9).

On the CPU, fp16 + GradScaler is forced by patching ``vit_train.amp_dtype`` (CPU autocast and
GradScaler("cpu") both exist in torch >= 2.3), so the T4's code path runs here.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import ViTConfig, ViTModel

import emovit.vit_train as vt
from emovit import files as efiles
from emovit.config import make_config, replace
from emovit.deam import discover
from emovit.features import extract_features
from emovit.files import atomic_write_text, load_checkpoint
from emovit.report import write_zip
from emovit.runtime import check_gpu, gpu_compatibility_problem, load_scaler_state, parse_arch, scaler_step
from emovit.split import Standardizer, ids_of, split_songs
from emovit.vit import DevicePreprocessor, ViTRegressor, build_model, find_pretrained, for_devices

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=224,
    patch_size=16,
    num_channels=3,
)


def _tiny_regressor() -> ViTRegressor:
    torch.manual_seed(0)
    return ViTRegressor(ViTModel(ViTConfig(**TINY), add_pooling_layer=False), dropout=0.0)


def _dataparallel_worker(module, x: torch.Tensor) -> torch.Tensor:
    """What ``torch.nn.parallel.parallel_apply`` does per replica (torch 2.13): a new thread
    that re-enters autocast with the caller's ``enabled`` flag only, not its dtype."""
    enabled = torch.is_autocast_enabled(x.device.type)
    out = {}

    def worker():
        try:
            with torch.amp.autocast(x.device.type, enabled=enabled):
                out["y"] = module(x)
        except Exception as err:  # noqa: BLE001 -- re-raised in the caller, as DataParallel does
            out["error"] = err

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["y"]


def test_replica_threads_run_in_the_callers_autocast_dtype():
    """The caller asks for fp16 (CPU's thread default is bf16, as CUDA's default is fp16 while
    an L4 run asks for bf16): the replica thread must compute in fp16 too."""
    model = _tiny_regressor().eval()
    x = torch.randn(2, 3, 224, 224)
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16  # the thread default the bug falls back to
    net = for_devices(model, "cpu", torch.float16)
    assert net is model and model.autocast_dtype == torch.float16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        replica = _dataparallel_worker(net, x)
        same_thread = net(x)
    assert same_thread.dtype == torch.float16
    assert replica.dtype == torch.float16  # before the fix: bfloat16
    torch.testing.assert_close(replica, same_thread)
    assert for_devices(model, "cpu", None).autocast_dtype is None
    with torch.no_grad():
        assert model(x).dtype == torch.float32  # no autocast asked: full precision


def test_scaler_state_across_amp_modes():
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    enabled = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    assert disabled.state_dict() == {}
    assert not load_scaler_state(enabled, disabled.state_dict())  # fresh scaler instead of RuntimeError
    assert enabled.get_scale() == 1024.0
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0).state_dict()
    assert load_scaler_state(enabled, saved) and enabled.get_scale() == 8.0
    assert not load_scaler_state(disabled, saved)  # an fp16 state into a bf16/CPU run: ignored


@pytest.fixture
def vit_setup(small_demo, tmp_path):
    cfg = tiny_config(
        data_dir=str(small_demo), output_dir=str(tmp_path / "out"), clip_seconds=2.0, clip_offset=0.0, vit_epochs=2
    )
    songs, _ = discover(cfg.data_dir)
    store = extract_features(songs, cfg)
    split = split_songs(store.songs.song_id, 0.25, 0.25, seed=0)
    std = Standardizer.fit(store.mels, store.songs.set_index("song_id").loc[ids_of(split, "train"), "row"])
    train, val, _ = vt.make_datasets(store, split, None, cfg)
    return cfg, std, train, val


def _fresh(cfg, std):
    found = find_pretrained(cfg)
    return build_model(cfg, found), DevicePreprocessor(std.mean, std.std, found.image_mean, found.image_std)


def _paths(cfg):
    return {
        "best_path": os.path.join(cfg.output_dir, "best_vit_model.pth"),
        "last_path": os.path.join(cfg.output_dir, "last_vit_model.pth"),
    }


def test_resume_from_a_full_precision_run_into_an_fp16_run(vit_setup, monkeypatch):
    """Epoch 1 on the CPU in fp32 (disabled scaler, saves {}), epoch 2 resumed as on a T4."""
    cfg, std, train, val = vit_setup
    with pytest.raises(KeyboardInterrupt):
        vt.train_vit(*_fresh(cfg, std), train, val, cfg, "cpu", key="amp", interrupt_after_epoch=1, **_paths(cfg))
    assert load_checkpoint(_paths(cfg)["last_path"])["scaler"] == {}
    monkeypatch.setattr(vt, "amp_dtype", lambda device: torch.float16)  # the T4 path: fp16 + GradScaler
    with pytest.raises(KeyboardInterrupt):  # stopped after its last epoch: before the resume state is dropped
        vt.train_vit(*_fresh(cfg, std), train, val, cfg, "cpu", key="amp", interrupt_after_epoch=2, **_paths(cfg))
    state = load_checkpoint(_paths(cfg)["last_path"])
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert state["scaler"]["scale"] > 0  # the fp16 run's scaler saved


def test_mixed_precision_is_part_of_the_run_key():
    cfg = make_config("demo")
    assert {"mixed_precision", "vit_max_steps"} <= set(vt.training_settings(cfg))
    assert vt.run_key(cfg, "d", "w") != vt.run_key(replace(cfg, mixed_precision=False), "d", "w")


def test_scheduler_waits_when_the_scaler_skips_the_step(vit_setup, monkeypatch):
    """fp16 path with an inf gradient on the first 2 steps: the scaler skips those optimizer
    steps, and the scheduler must advance only for the steps that happened."""
    cfg, std, train, val = vit_setup
    cfg = replace(cfg, vit_epochs=1)
    monkeypatch.setattr(vt, "amp_dtype", lambda device: torch.float16)
    model, pre = _fresh(cfg, std)
    calls = {"n": 0}

    def inf_twice(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] <= 2 else grad

    model.head[1].weight.register_hook(inf_twice)
    with pytest.raises(KeyboardInterrupt):  # stopped after its only epoch, before the resume state is dropped
        vt.train_vit(model, pre, train, val, cfg, "cpu", key="inf", interrupt_after_epoch=1, **_paths(cfg))
    steps = -(-len(train) // cfg.vit_batch_size)
    state = load_checkpoint(_paths(cfg)["last_path"])
    assert calls["n"] == steps
    assert state["scheduler"]["last_epoch"] == steps - 2  # before the fix: steps
    assert state["scaler"]["scale"] == 65536.0 * 0.5**2  # the scaler backed off twice


def test_scaler_step_reports_a_skipped_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)

    def step(slope: torch.Tensor, scaler) -> bool:
        opt.zero_grad()
        scaler.scale((p * slope).sum()).backward()
        return scaler_step(scaler, opt)

    assert not step(torch.tensor([1.0, float("inf"), 1.0]), scaler) and torch.equal(p.detach(), torch.ones(3))
    assert step(torch.ones(3), scaler) and not torch.equal(p.detach(), torch.ones(3))
    assert step(torch.ones(3), torch.amp.GradScaler("cpu", enabled=False))


def test_half_precision_checkpoint_trains_in_float32(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "vit-fp16"
    ViTModel(ViTConfig(**TINY)).half().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    saved = json.loads((folder / "config.json").read_text())
    assert saved.get("torch_dtype", saved.get("dtype")) == "float16"
    cfg = make_config("kaggle", vit_local_dir=str(folder), pretrained_search_dir="", vit_model_name="")
    model = build_model(cfg, find_pretrained(cfg))
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32}, dtypes  # before the fix: fp16 backbone (transformers 5)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    scaler.scale(model(torch.randn(2, 3, 224, 224)).square().mean()).backward()
    opt = torch.optim.AdamW(model.parameters())
    scaler.unscale_(opt)  # raises "Attempting to unscale FP16 gradients" on fp16 parameters


@pytest.mark.parametrize(
    "name,parsed",
    [
        ("sm_90a", ("sm", 90, "a")),
        ("sm_120f", ("sm", 120, "f")),
        ("compute_120a", ("compute", 120, "a")),
        ("sm_75", ("sm", 75, "")),
        ("compute_90", ("compute", 90, "")),
        ("gfx90a", None),
    ],
)
def test_parse_arch(name, parsed):
    assert parse_arch(name) == parsed


@pytest.mark.parametrize(
    "capability,arch,ok",
    [
        ((9, 0), ["sm_80", "sm_90", "sm_90a", "sm_100", "sm_120f", "compute_120a"], True),  # H100
        ((7, 5), ["sm_75", "sm_80", "sm_90a", "sm_120f", "compute_120a"], True),  # T4
        (
            (6, 0),
            ["sm_75", "sm_80", "sm_90a", "sm_120f", "compute_120a"],
            False,
        ),  # P100: the message, not int() raising
        ((12, 0), ["sm_90a", "sm_100a", "compute_100a"], False),  # arch-specific PTX does not JIT forward
        ((12, 1), ["sm_90", "sm_120f"], True),  # family-specific SASS runs within the family
    ],
)
def test_gpu_check_with_suffixed_arch_names(capability, arch, ok):
    problem = gpu_compatibility_problem(capability, arch, "gpu")
    assert (problem is None) == ok, problem


def _expected_mode() -> int:
    return 0o666 & ~efiles.current_umask()


def test_atomic_writes_get_the_normal_file_mode_and_zip_members_keep_it(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        atomic_write_text(str(out / "a.json"), "{}\n")
        efiles.atomic_write_json(str(out / "sub" / "b.json"), {"x": 1})
        for path in (out / "a.json", out / "sub" / "b.json"):
            assert path.stat().st_mode & 0o777 == _expected_mode() == 0o644  # before the fix: 0o600
        torch.save({"state_dict": {"w": torch.zeros(2)}}, out / "best_vit_model.pth")
        zip_path, members = write_zip(str(out), str(tmp_path), "run", {})
        assert Path(zip_path).stat().st_mode & 0o777 == 0o644
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                assert (info.external_attr >> 16) & 0o777 == 0o644, info.filename
    finally:
        os.umask(old)


def test_atomic_write_fsyncs_the_file_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        efiles.os,
        "fsync",
        lambda fd: (
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)),
            real_fsync(fd),
        )[1],
    )
    monkeypatch.setattr(efiles.os, "replace", lambda a, b: (events.append(("replace", a)), real_replace(a, b))[1])
    target = tmp_path / "ckpt.pth"
    with efiles.atomic_path(str(target)) as tmp:
        torch.save({"w": torch.ones(2)}, tmp)
    kinds = [kind for kind, _ in events]
    assert "fsync" in kinds and kinds.index("fsync") < kinds.index("replace")  # data on disk before the name
    assert events[kinds.index("replace")][1] == events[kinds.index("fsync")][1]  # the same (temporary) file
    assert load_checkpoint(str(target))["w"].sum() == 2


def test_no_visible_gpu_stops_only_a_run_that_requires_one(monkeypatch):
    """The kaggle preset requires a GPU and the demo preset does not; ``check_gpu`` stops a run that
    requires one when none is visible, with where to switch it on, and lets every other run through."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert make_config("kaggle").require_gpu and not make_config("demo").require_gpu
    with pytest.raises(RuntimeError, match="No GPU is visible.*Accelerator.*require_gpu"):
        check_gpu(require=True)
    assert check_gpu(require=False) is None
