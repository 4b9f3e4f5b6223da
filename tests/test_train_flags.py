"""``unimri train --channels-last`` and ``--compile``: parsed into the config, wired into the
trainer, and the models (with the opaque unimri ops) compile with no graph break."""
from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from unimri.models import create_model
from unimri.train.engine import memory_format_for


def _phantom_flags(out: str) -> list[str]:
    data = json.dumps({"num_cases": 4, "size": 32, "fg_fraction": [0.08, 0.15]})
    return ["train", "--model", "unet", "--attention", "sas", "--features", "4", "--dataset", "phantom",
            "--dataset-kwargs", data, "--stages", "32", "--batch-size", "2", "--epochs", "1",
            "--folds", "2", "--fold", "0", "--device", "cpu", "--no-progress", "--out", out]


def test_flags_reach_the_config_and_default_off():
    from unimri.cli import _config_from_args, build_parser

    parser = build_parser()
    cfg = _config_from_args(parser.parse_args(["train", "--channels-last", "--compile", "--out", "x"]))
    assert cfg.channels_last is True and cfg.compile is True
    cfg = _config_from_args(parser.parse_args(["train", "--out", "x"]))
    assert cfg.channels_last is False and cfg.compile is False


def test_config_rejects_non_bool_flags():
    from unimri.train import TrainConfig

    with pytest.raises(TypeError, match="channels_last"):
        TrainConfig(channels_last="yes").validate()
    with pytest.raises(TypeError, match="compile"):
        TrainConfig(compile=1).validate()


def test_train_with_channels_last_and_compile(tmp_path, monkeypatch):
    """The trainer compiles the model once (aot_eager here: inductor is slow to build on a
    test machine), feeds it channels-last batches, and writes finite weights."""
    from unimri.cli import main
    from unimri.train.checkpoint import load_checkpoint

    seen: dict[str, object] = {"formats": set()}
    real_compile = torch.compile

    def compile_spy(model, **kwargs):
        seen["counter"] = counter = CompileCounterWithBackend("aot_eager")
        seen["model"] = model
        return real_compile(model, backend=counter)

    monkeypatch.setattr(torch, "compile", compile_spy)
    import unimri.models.unet as unet_module

    forward = unet_module.UNet.forward_padded

    def spy_forward(self, x):
        seen["formats"].add(x.is_contiguous(memory_format=torch.channels_last))
        return forward(self, x)

    monkeypatch.setattr(unet_module.UNet, "forward_padded", spy_forward)
    out = str(tmp_path / "run")
    assert main(_phantom_flags(out) + ["--channels-last", "--compile"]) == 0
    assert seen["counter"].frame_count >= 1
    assert seen["formats"] == {True}
    conv = next(m for m in seen["model"].modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    state = load_checkpoint(f"{out}/fold0/model.pt")
    assert state["config"]["channels_last"] is True and state["config"]["compile"] is True
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("name", ["unet", "deeplabv3"])
def test_backbones_with_sas_compile_fullgraph_channels_last(name):
    """fullgraph=True: zero graph breaks through forward and backward (one frame), with
    channels-last inputs and weights, and the same outputs and gradients as eager (every
    backbone compiles with SAS in contiguous format in test_models.py; SAS sits on skip
    connections in UNet and inside ASPP in DeepLabV3)."""
    torch.manual_seed(0)
    # float64: compiled and eager runs may round differently (MKL's products depend on buffer
    # alignment); in float32 an activation within rounding of 0 then passes a ReLU in one run
    # and not the other, moving some gradient entries by far more than rounding
    model = create_model(name, spatial_dims=2, features=4, attention="sas").double()
    model = model.to(memory_format=memory_format_for(2))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0  # FCN and DeepLabV3 drop out: compiled and eager would draw differently
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    out = compiled(x)
    out.float().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert counter.frame_count == 1
    model.zero_grad()
    want = model(x)
    want.float().sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-8, atol=1e-10)
    for got, ref in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)


def test_bench_runs_with_amp_channels_last_and_compile(capsys, monkeypatch):
    """``unimri bench`` takes the train flags: the model it times is channels-last, its
    forward runs under bf16 autocast, and --compile wraps it in torch.compile."""
    from unimri.cli import main
    from unimri.runtime import registry

    built, dtypes, compiled = [], [], []
    create = registry.create_model

    def spy_create(spec):
        net = create(spec)
        net.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        built.append(net)
        return net

    real_compile = torch.compile
    monkeypatch.setattr(registry, "create_model", spy_create)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or real_compile(m, backend="eager"))
    assert main(["bench", "--model", "unet", "--size", "32", "--batch-size", "2", "--features", "4",
                 "--steps", "1", "--device", "cpu", "--backends", "auto", "--amp", "bf16",
                 "--channels-last", "--compile"]) == 0
    out = capsys.readouterr().out
    assert "amp bf16" in out and "channels-last on" in out and "compile on" in out
    assert len(built) == 1 and compiled == built
    conv = next(m for m in built[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)


def test_bench_refuses_an_unknown_amp_mode():
    from unimri.studies.throughput import measure_training_throughput

    with pytest.raises(ValueError, match="amp"):
        measure_training_throughput(size=16, batch_size=1, features=4, steps=1, device="cpu", amp="int8")
