"""A training method defined only in the tests, exercising every hook the loop offers.

Two optimisers (AdamW on the backbone, SGD on the decoder), manual backward through
``ctx.backward``, an EMA copy of the model updated after every step, a per-step counter, and a
callback every ``RELABEL_EVERY`` steps that relabels the training data with the EMA model's
predictions (files in the state folder) and writes a note into the output folder. Its state
goes into the trainer's checkpoint.

Run as a script, it registers the method and runs train_seg with the given arguments, so that
``torchrun ... tests/plugin_method.py --method plugin_test ...`` trains it under DDP.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from stages.data.images import load_rgb
from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.tensors import to_tensor
from stages.data.transforms import AugmentConfig
from stages.io.label_png import write_label
from stages.methods.base import Method, TrainInputs
from stages.methods.ce import masked_cross_entropy
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import barrier
from stages.runtime.hooks import Optimization, StepContext
from stages.runtime.optim import poly_schedule
from stages.runtime.settings import TrainSettings

RELABEL_EVERY = 3


@dataclass
class PluginMethod(Method):
    ema_decay: float = 0.9

    name: ClassVar[str] = "plugin_test"
    needs: ClassVar[frozenset[str]] = frozenset({"pseudo_labels"})
    manual_optimization: ClassVar[bool] = True
    every_n_steps: ClassVar[int] = RELABEL_EVERY

    steps_seen: int = field(default=0, init=False)
    relabels: int = field(default=0, init=False)
    ema: nn.Module | None = field(default=None, init=False, repr=False)
    inputs: TrainInputs | None = field(default=None, init=False, repr=False)
    aug: AugmentConfig | None = field(default=None, init=False, repr=False)
    seed: int = field(default=0, init=False)

    def build_model(self, spec: SegmenterSpec, inputs: TrainInputs | None) -> nn.Module:
        model = Segmenter(spec)
        self.ema = copy.deepcopy(model).requires_grad_(False)
        return model

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset:
        self.inputs, self.aug, self.seed = inputs, aug, seed
        ids = inputs.index.ids(inputs.split)
        return SegmentationDataset(inputs.index, inputs.split, label_dir_source(inputs.pseudo_labels, ids), aug, seed)

    def configure_optimizers(self, model: nn.Module, settings: TrainSettings) -> list[Optimization]:
        backbone = torch.optim.AdamW(model.backbone.parameters(), lr=settings.lr * 0.1)
        decoder = torch.optim.SGD(model.decoder.parameters(), lr=settings.lr, momentum=0.9)
        return [Optimization(o, poly_schedule(o, settings.steps)) for o in (backbone, decoder)]

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        for o in ctx.optimizers:
            o.optimizer.zero_grad(set_to_none=True)
        loss = masked_cross_entropy(net(batch["image"]), batch["label"])
        ctx.backward(loss)
        for o in ctx.optimizers:
            o.optimizer.step()
        return {"loss": loss, "relabels": torch.tensor(float(self.relabels))}

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        self.steps_seen += 1
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), model.parameters()):
                e.mul_(self.ema_decay).add_(p.detach(), alpha=1 - self.ema_decay)

    def labels_dir(self, state_dir: Path, k: int) -> Path:
        return state_dir / f"labels{k}"

    def on_every_n_steps(self, model: nn.Module, ctx: StepContext) -> None:
        self.relabels += 1
        folder = self.labels_dir(ctx.state_dir, self.relabels)
        if ctx.dist.is_main:
            self.ema.eval()
            index, split = self.inputs.index, self.inputs.split
            with torch.no_grad():
                for image_id in index.ids(split):
                    image = to_tensor(load_rgb(index.image_path(image_id)))[None]
                    label = self.ema(image).argmax(1)[0].to(torch.uint8).numpy()
                    write_label(folder / f"{image_id}.png", label)
            (ctx.output_dir / f"relabel{self.relabels}.txt").write_text(
                f"step {ctx.step + 1}: {len(index.ids(split))} label maps in {folder.name}\n")
        barrier(ctx.dist)

    def dataset(self, base: Dataset, ctx: StepContext) -> Dataset:
        if self.relabels == 0:
            return base
        ids = self.inputs.index.ids(self.inputs.split)
        folder = self.labels_dir(ctx.state_dir, self.relabels)
        return SegmentationDataset(self.inputs.index, self.inputs.split, label_dir_source(folder, ids),
                                   self.aug, self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "steps_seen": self.steps_seen, "relabels": self.relabels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        self.steps_seen, self.relabels = state["steps_seen"], state["relabels"]


if __name__ == "__main__":
    from stages import train_seg
    from stages.methods.registry import METHODS

    METHODS[PluginMethod.name] = PluginMethod
    train_seg.main(sys.argv[1:])
