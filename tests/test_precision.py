"""Precision: which arithmetic a stage computes in, and what bf16 changes (dtype, memory layout)."""
from __future__ import annotations

import pytest
import torch

from stages.errors import InputError
from stages.runtime.distributed import DistContext, autocast, inference_copy, init_distributed, native_bf16, use_bf16
from stages.runtime.hooks import TrainHooks
from stages.runtime.settings import TrainSettings
from stages.runtime.trainer import train_loop

CPU = torch.device("cpu")


def test_requested_precision_wins_and_auto_follows_the_hardware() -> None:
    assert use_bf16(CPU, "bf16") and not use_bf16(CPU, "fp32")
    assert use_bf16(CPU, "auto") == native_bf16(CPU)
    assert use_bf16(torch.device("cuda", 0), "auto")  # every CUDA GPU: no probe needed
    with pytest.raises(InputError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        use_bf16(CPU, "fp16")


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False)])
def test_a_cpu_is_native_bf16_with_amx_or_avx512_bf16(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert native_bf16(CPU) == (amx or avx512_bf16)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the probe
    assert native_bf16(CPU) == amx


@pytest.mark.parametrize("bf16", [False, True])
def test_autocast_computes_convolutions_in_the_context_precision(bf16: bool) -> None:
    ctx = DistContext(0, 1, 0, CPU, bf16=bf16)
    conv = torch.nn.Conv2d(3, 4, 3)
    with autocast(ctx):
        out = conv(torch.randn(1, 3, 8, 8))
    assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert ctx.channels_last == bf16  # on CPU, only bf16 (oneDNN's kernels) goes channels-last


@pytest.mark.parametrize("bf16", [False, True])
def test_inference_copy_casts_once_and_leaves_the_model_alone(bf16: bool) -> None:
    ctx = DistContext(0, 1, 0, CPU, bf16=bf16)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    net.to(memory_format=torch.channels_last)
    frozen = inference_copy(net, ctx)
    assert (frozen is not net) == bf16
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the training's weights stay fp32
    weight = frozen[0].weight
    assert weight.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), autocast(ctx):
        expected = net(x).float()
    got = frozen(x.to(weight.dtype)).float()
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)


class ConvStep(TrainHooks):
    """Regression of a fixed target through one convolution; records the layout it was given."""

    def __init__(self) -> None:
        self.layouts: list[bool] = []

    def training_step(self, model, batch, ctx):
        x = batch["x"]
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        with autocast(ctx.dist):
            out = model(x)
        return {"loss": (out.float() - 1.0).pow(2).mean()}


class Conv(torch.nn.Conv2d):
    def param_groups(self, head_lr_mult: float) -> list[dict]:
        return [{"params": list(self.parameters())}]


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.full((3, 6, 6), 0.25 * i)}


def test_bf16_training_keeps_fp32_weights_and_learns(tmp_path) -> None:
    """Autocast computes in bf16, the optimiser updates fp32 master weights; the loss falls."""
    torch.manual_seed(0)
    model, hooks = Conv(3, 2, 3), ConvStep()
    settings = TrainSettings(crop_size=6, batch_size=2, steps=20, lr=0.01, optimizer="sgd", checkpoint_every=100)
    rows = train_loop(model, hooks, Images(), settings, DistContext(0, 1, 0, CPU, bf16=True),
                      tmp_path / "ckpt.pt", tmp_path / "metrics.csv", {})
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.weight.is_contiguous(memory_format=torch.channels_last) and all(hooks.layouts)
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]



def _heap() -> tuple[int, int]:
    """The process's [heap] mapping (start, end), from /proc/self/maps."""
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(v, 16) for v in line.split()[0].split("-"))
            return start, end
    raise AssertionError("no [heap] mapping")


def test_freed_memory_stays_in_the_heap_for_the_next_step() -> None:
    """Blocks of activation size come from the heap, and freeing them does not shrink it: the next
    step finds its memory mapped already (no new page faults)."""
    from stages.runtime.allocator import keep_freed_memory

    assert keep_freed_memory()  # the test machines run glibc
    blocks = [torch.empty(5 * 2 ** 20) for _ in range(5)]  # 20 MB each: glibc's default would mmap them
    start, end = _heap()
    assert all(start <= b.data_ptr() < end for b in blocks)
    del blocks
    assert _heap()[1] == end  # 100 MB freed, none of it handed back


def test_channels_last_in_fp32_on_a_cpu_only_when_asked_and_training_learns_so(tmp_path) -> None:
    """``--channels-last``: weights and batches go channels-last in fp32 (Lite's depthwise
    convolutions run faster so on oneDNN); without it an fp32 CPU run keeps the default layout."""
    assert not init_distributed("cpu", "fp32").channels_last
    ctx = init_distributed("cpu", "fp32", channels_last=True)
    assert ctx.channels_last and not ctx.bf16
    torch.manual_seed(0)
    model, hooks = Conv(3, 2, 3), ConvStep()
    settings = TrainSettings(crop_size=6, batch_size=2, steps=20, lr=0.01, optimizer="sgd", checkpoint_every=100)
    rows = train_loop(model, hooks, Images(), settings, ctx, tmp_path / "ckpt.pt", tmp_path / "metrics.csv", {})
    assert model.weight.dtype == torch.float32 and model.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(hooks.layouts) and rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    frozen = inference_copy(model, ctx)
    assert frozen is not model and frozen.weight.dtype == torch.float32
