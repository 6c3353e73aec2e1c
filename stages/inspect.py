"""Look at intermediate results: list an HDF5 file, or render per-image panels.

``python -m stages.inspect cams.h5`` prints the file's attributes and entries (links shown, never
followed); a CAM file the stages would refuse (a bad entry: a link, a group, a wrong type or shape)
is then refused, naming the entry, with exit code 2.
``python -m stages.inspect --index IDX --cams cams.h5 [--labels DIR] --ids ID ... --out-dir DIR``
writes <id>.png: the image, one CAM heatmap per present class (with a colour bar), the pseudo
label and the mask (with a legend of the classes they show).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import h5py
import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Patch

from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.errors import InputError, run_stage
from stages.io.cam_store import GROUP, CamReader
from stages.io.ids import check_id
from stages.io.label_png import IGNORE, colorize, read_label
from stages.reporting.figures import new_figure, save_png

HEAT_ALPHA = 0.5  # share of the CAM colour in a heatmap tile, the rest is the image


def _format_attr(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return "[" + ", ".join(_format_attr(v) for v in value.tolist()) + "]"
    return str(value)


def _link_text(link: object) -> str:
    if isinstance(link, h5py.ExternalLink):
        return f"-> external link to {link.path!r} in {link.filename!r} (not followed)"
    if isinstance(link, h5py.SoftLink):
        return f"-> soft link to {link.path!r} (not followed)"
    return f"-> {type(link).__name__} (not followed)"


def describe_hdf5(path: str | os.PathLike, limit: int = 20, max_depth: int = 8) -> str:
    """Attributes of the file and of up to ``limit`` datasets per group, as text. Only what the
    file itself holds is listed: a soft or external link is shown as such, never followed, and a
    group met twice (hard links can make cycles) or deeper than ``max_depth`` is not entered."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file (corrupt or truncated?): {exc}") from exc
    lines = [f"{path}"]
    seen: set[h5py.h5g.GroupID] = set()
    with f:
        def describe(group: h5py.Group, depth: int) -> None:
            seen.add(group.id)
            pad = "  " * depth
            names = list(group.keys())
            for name in names[:limit]:
                link = group.get(name, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    lines.append(f"{pad}{name}  {_link_text(link)}")
                    continue
                obj = group[name]
                if isinstance(obj, h5py.Group):
                    lines.append(f"{pad}{name}/  ({len(obj)} entries)")
                    if obj.id in seen or depth >= max_depth:
                        lines.append(f"{pad}  ... not listed (listed above, or deeper than {max_depth})")
                    else:
                        describe(obj, depth + 1)
                    continue
                if not isinstance(obj, h5py.Dataset):
                    lines.append(f"{pad}{name}  {type(obj).__name__}")
                    continue
                comp = f", {obj.compression}" if obj.compression else ""
                attrs = " ".join(f"{k}={_format_attr(v)}" for k, v in obj.attrs.items())
                lines.append(f"{pad}{name}  {obj.dtype} {obj.shape} chunks={obj.chunks}{comp}  {attrs}")
            if len(names) > limit:
                lines.append(f"{pad}... {len(names) - limit} more")

        try:
            lines += [f"  @{k} = {_format_attr(v)}" for k, v in f.attrs.items()]
            describe(f, 1)
        except (OSError, KeyError, RuntimeError, UnicodeDecodeError) as exc:  # a damaged file, by call
            raise InputError(f"{path}: damaged HDF5 file, cannot be listed (corrupt or truncated?): {exc}") from exc
    # h5py leaves names and strings that are not UTF-8 as lone surrogates, which print() cannot encode
    return "\n".join(lines).encode("utf-8", "backslashreplace").decode("utf-8")


def is_cam_file(path: str | os.PathLike) -> bool:
    """Whether the file claims to be a CAM file (a CAM format version, or a ``cams`` member)."""
    with h5py.File(path, "r") as f:
        return "format_version" in f.attrs or f.get(GROUP, getlink=True) is not None


def check_cam_file(path: str | os.PathLike) -> None:
    """Refuse a CAM file the stages would refuse, checking every entry's metadata as a read does
    (no value is read): the first bad entry is named, with how many more there are."""
    with CamReader(path) as reader:
        problems = []
        for image_id in reader.ids():
            try:
                reader.check_entry(image_id)
            except InputError as exc:
                problems.append(str(exc))
    if problems:
        more = f"; {len(problems) - 1} more entries are bad as well" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)


def _heatmap(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return (1 - HEAT_ALPHA) * image / 255.0 + HEAT_ALPHA * heat


def class_legend(classes: list[str], label_maps: list[np.ndarray]) -> list[Patch]:
    """A swatch per class value shown in the label maps (and for 255, the ignored pixels)."""
    shown = sorted(set().union(*(np.unique(m).tolist() for m in label_maps)))
    handles = []
    for value in shown:
        colour = colorize(np.array([[value]], dtype=np.uint8))[0, 0] / 255.0
        name = "ignored" if value == IGNORE else classes[value] if value < len(classes) else "?"
        handles.append(Patch(facecolor=colour, edgecolor="black", linewidth=0.5, label=f"{value} {name}"))
    return handles


def render_panel(index: DatasetIndex, reader: CamReader, image_id: str, out_path: Path,
                 labels_dir: Path | None = None) -> None:
    """One row: image, a heatmap per present class, pseudo label (if given), mask (if any)."""
    image = load_rgb(index.image_path(image_id))
    entry = reader.read(image_id)
    if image.shape[:2] != entry.size:
        raise InputError(f"{reader.path}: CAMs of {image_id!r} are {entry.size}, the image is "
                         f"{image.shape[:2]}")
    cams = [(f"CAM {index.classes[c]}", _heatmap(image, cam)) for c, cam in zip(entry.class_indices, entry.cams)]
    label_maps = []
    if labels_dir is not None:
        label_maps.append(("pseudo label", read_label(labels_dir / f"{image_id}.png")))
    mask_path = index.mask_path(image_id, reader.meta.split)
    if mask_path.is_file():
        label_maps.append(("ground truth", read_label(mask_path)))
    tiles = [("image", image), *cams, *((title, colorize(m)) for title, m in label_maps)]
    fig = new_figure(figsize=(3 * len(tiles) + 1.5, 2.8), layout="constrained")
    axes = fig.subplots(1, len(tiles), squeeze=False)[0]
    for ax, (title, tile) in zip(axes, tiles):
        ax.imshow(tile)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if cams:
        # beside the last CAM tile, as tall as it: a bar under some tiles only would shift those
        cax = axes[len(cams)].inset_axes([1.03, 0.0, 0.05, 1.0])
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps["jet"]), cax=cax)
        bar.set_label(f"CAM (1 = class max),\n{HEAT_ALPHA:.0%} over the image", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if label_maps:
        handles = class_legend(index.classes, [m for _, m in label_maps])
        fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False,
                   title="label colours", title_fontsize=8)
    fig.suptitle(image_id, fontsize=10)
    save_png(fig, out_path, bbox_inches="tight")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", help="HDF5 file to list")
    p.add_argument("--limit", type=int, default=20, help="entries listed per group")
    p.add_argument("--index", help="data set index JSON (panels)")
    p.add_argument("--cams", help="CAM file (panels)")
    p.add_argument("--labels", help="pseudo-label directory (panels, optional)")
    p.add_argument("--ids", nargs="+", help="image ids to render")
    p.add_argument("--out-dir", help="where <id>.png panels go")
    args = p.parse_args(argv)
    panel_args = (args.index, args.cams, args.ids, args.out_dir)
    if args.file is None and not all(panel_args):
        p.error("give an HDF5 file to list, or --index, --cams, --ids and --out-dir for panels")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.file is not None:
        print(describe_hdf5(args.file, args.limit))
        if is_cam_file(args.file):
            check_cam_file(args.file)
    if args.cams is None:
        return
    index = DatasetIndex.load(args.index)
    labels_dir = Path(args.labels) if args.labels else None
    with CamReader(args.cams) as reader:
        reader.check_matches(index, args.ids)
        for image_id in args.ids:
            out = Path(args.out_dir) / f"{check_id(image_id, '--ids')}.png"
            render_panel(index, reader, image_id, out, labels_dir)
            print(out)


if __name__ == "__main__":
    run_stage(main)
