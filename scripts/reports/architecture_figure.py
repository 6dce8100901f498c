"""
Model-card figure of the CoTr architecture, drawn with matplotlib from the network itself: the blocks come
from walking a :class:`scripts.networks.CoTr`, and their channels and sizes from forward hooks.

Usage::

    python -m scripts.reports.architecture_figure --output_png docs/architecture.png
    python -m scripts.reports.architecture_figure --output_png /tmp/star.png --blocks "[1,1,1]"
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from scripts.networks import CoTr  # noqa: E402
from scripts.reports.overlays import save_figure_atomic  # noqa: E402

__all__ = ["ARCHITECTURE_FIGSIZE", "ARCHITECTURE_DPI", "Block", "trace_shapes", "describe", "draw_architecture"]

#: size (inches) and resolution of the figure: 1400 x 800 pixels
ARCHITECTURE_FIGSIZE: tuple[float, float] = (14.0, 8.0)
ARCHITECTURE_DPI = 100

_COLOURS = {
    "io": "#e8e8e8",
    "encoder": "#cfe2f3",
    "detrans": "#fce5cd",
    "decoder": "#d9ead3",
    "head": "#e4d7f0",
}


@dataclass
class Block:
    """One box of the figure: a part of the network, its description and output shape (C, X, Y, Z)."""

    name: str
    text: str
    shape: tuple[int, ...]
    kind: str


def _shape_of(output: Any) -> list[tuple[int, ...]]:
    tensors = output if isinstance(output, (list, tuple)) else [output]
    return [tuple(int(s) for s in t.shape[1:]) for t in tensors]


def _module_paths(net: CoTr) -> dict[str, str]:
    """Figure key -> module path in ``net`` of every block whose output shape the figure shows."""
    paths = {"stem": "encoder.stem"}
    # the encoder runs a stage's blocks one by one: a stage's output is its last block's
    paths.update({f"stage{i + 1}": f"encoder.stages.{i}.{len(s) - 1}" for i, s in enumerate(net.encoder.stages)})
    if net.detrans is not None:
        paths["detrans"] = "detrans"
    for name in ("upsamples", "blocks", "heads"):
        paths.update({f"{name}{i}": f"decoder.{name}.{i}" for i in range(len(getattr(net.decoder, name)))})
    paths.update({"final_upsample": "decoder.final_upsample", "final_head": "decoder.final_head"})
    return paths


def _hooked_run(net: CoTr, input_size: Sequence[int], device: str | torch.device) -> dict[str, list[tuple[int, ...]]]:
    """Run ``net`` (in training mode with deep supervision, so that the heads run) with shape-recording hooks."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    modules = dict(net.named_modules())
    hooks = [
        modules[path].register_forward_hook(lambda _m, _i, out, key=key: shapes.__setitem__(key, _shape_of(out)))
        for key, path in _module_paths(net).items()
    ]
    net.train()
    net.deep_supervision = True
    try:
        with torch.no_grad():
            net(torch.zeros((1, net.encoder.stem.conv.in_channels, *input_size), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def trace_shapes(net: CoTr, input_size: Sequence[int]) -> dict[str, list[tuple[int, ...]]]:
    """
    Output shapes (C, X, Y, Z) of the encoder stem and stages, the DeTrans (one per level), every decoder
    upsampling, block and deep-supervision head, the final upsampling and head, for one
    (1, in_channels, *input_size) input. ``net`` itself is not changed (a copy runs).

    A copy on the meta device runs the full size without computing anything. Where an operation has no meta
    kernel, a CPU copy with random weights runs a small input (twice the total stride) and the sizes are
    scaled, exactly: every size is the input size divided by a cumulative stride.
    """
    try:
        return _hooked_run(copy.deepcopy(net).to("meta"), input_size, "meta")
    except (NotImplementedError, RuntimeError):
        cpu = copy.deepcopy(net).to_empty(device="cpu")
        with torch.no_grad():
            for tensor in itertools.chain(cpu.parameters(), cpu.buffers()):
                tensor.normal_(0.0, 0.02) if tensor.is_floating_point() else tensor.zero_()
        small = [2 * d for d in net.size_divisor]
        shapes = _hooked_run(cpu, small, "cpu")
        return {
            key: [(s[0], *(v * n // t for v, n, t in zip(s[1:], input_size, small))) for s in value]
            for key, value in shapes.items()
        }


def _size(shape: Sequence[int]) -> str:
    return f"{shape[0]} × " + "×".join(str(s) for s in shape[1:])


def _stride(stride: Sequence[int]) -> str:
    return "/" + (str(stride[0]) if len(set(stride)) == 1 else "(" + ",".join(str(s) for s in stride) + ")")


def describe(net: CoTr, input_size: Sequence[int]) -> dict[str, Any]:
    """
    The figure's content, read from ``net``: encoder blocks (input first), the DeTrans description, decoder
    blocks (one per encoder map but the deepest, then the output) and deep-supervision heads, each a
    :class:`Block`, plus parameter counts per part.
    """
    shapes = trace_shapes(net, input_size)
    encoder = net.encoder
    in_channels = encoder.stem.conv.in_channels
    stem_conv = encoder.stem.conv
    blocks = [Block("input", "input CT patch", (in_channels, *input_size), "io")]
    blocks.append(
        Block(
            "stem",
            f"stem: conv {stem_conv.kernel_size[0]}³ {_stride(stem_conv.stride)}, norm, act",
            shapes["stem"][0],
            "encoder",
        )
    )
    for i, stage in enumerate(encoder.stages):
        first = stage[0].conv.conv
        blocks.append(
            Block(
                f"stage{i + 1}",
                f"stage {i + 1}: {len(stage)} × res. block (conv 3³), {_stride(first.stride)}",
                shapes[f"stage{i + 1}"][0],
                "encoder",
            )
        )
    detrans = None
    if net.detrans is not None:
        layer = net.detrans.layers[0]
        attention = layer.self_attn
        level_shapes = shapes["detrans"]
        tokens = sum(s[1] * s[2] * s[3] for s in level_shapes)
        detrans = {
            "num_levels": net.detrans.num_levels,
            "lines": [
                f"{len(net.detrans.layers)} layers: MS-DMSA + FFN {layer.mlp[0].out_features}",
                f"{attention.num_heads} heads × {attention.num_levels} level{'s' if attention.num_levels > 1 else ''}"
                f" × {attention.num_points} points",
                f"d_model {net.detrans.d_model}, 3D sine + level embedding",
                " + ".join("·".join(str(v) for v in s[1:]) for s in level_shapes) + f" = {tokens} tokens",
            ],
            "shapes": level_shapes,
        }
    decoder = []
    for i in range(len(net.decoder.upsamples)):
        kernel = net.decoder.upsamples[i].kernel_size
        kernel_text = str(kernel[0]) if len(set(kernel)) == 1 else "(" + ",".join(str(k) for k in kernel) + ")"
        decoder.append(
            Block(
                f"decoder{i}",
                f"transp. conv {kernel_text} ↑, + skip, res. block",
                shapes[f"blocks{i}"][0],
                "decoder",
            )
        )
    scale = net.decoder.final_upsample.scale_factor
    factors = ",".join(f"{s:g}" for s in scale) if len(set(scale)) > 1 else f"{scale[0]:g}"
    decoder.append(Block("output", f"conv 1³, trilinear ×({factors}) → logits", shapes["final_upsample"][0], "io"))
    heads = []
    for i, head in enumerate(net.decoder.heads):
        shape = shapes.get(f"heads{i}", [(head.out_channels, *shapes[f"blocks{i}"][0][1:])])[0]
        fraction = round(input_size[0] / shape[1])
        heads.append(Block(f"head{i}", f"DS head 1³, 1/{fraction}", shape, "head"))

    def count(*parts: nn.Module) -> int:
        return sum(p.numel() for part in parts for p in part.parameters())

    params = {
        "total": count(net),
        "CNN encoder": count(net.encoder),
        "DeTrans": count(net.detrans) if net.detrans is not None else 0,
        "decoder": count(net.decoder.upsamples, net.decoder.blocks, net.decoder.final_head),
        "DS heads": count(net.decoder.heads),
    }
    return {"encoder": blocks, "detrans": detrans, "decoder": decoder, "heads": heads, "params": params}


def _count(number: int) -> str:
    return f"{number / 1e6:.1f}M" if number >= 1e6 else f"{number / 1e3:.1f}k"


def _box(ax: plt.Axes, x: float, y: float, w: float, h: float, kind: str, lines: Sequence[str], bold: int = 1) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=_COLOURS[kind],
            edgecolor="0.35",
            linewidth=1.0,
        )
    )
    step = 0.21
    top = y + step * (len(lines) - 1) / 2
    for i, line in enumerate(lines):
        weight = "bold" if i < bold else "normal"
        ax.text(x, top - i * step, line, ha="center", va="center", fontsize=9, fontweight=weight)


def _arrow(
    ax: plt.Axes, points: Sequence[tuple[float, float]], colour: str = "0.2", style: str = "-|>", dashed: bool = False
) -> None:
    """Poly-line arrow through ``points``; the head sits on the last segment."""
    for (x0, y0), (x1, y1) in zip(points[:-2], points[1:-1]):
        ax.plot([x0, x1], [y0, y1], color=colour, linewidth=1.3, linestyle="--" if dashed else "-", zorder=1)
    ax.add_patch(
        FancyArrowPatch(
            points[-2],
            points[-1],
            arrowstyle=style,
            mutation_scale=13,
            color=colour,
            linewidth=1.3,
            linestyle="--" if dashed else "-",
            shrinkA=0,
            shrinkB=0,
            zorder=1,
        )
    )


def draw_architecture(output_png: str, input_size: Sequence[int] = (192, 192, 48), **cotr_kwargs: Any) -> str:
    """
    Draw the CoTr architecture: the encoder column (input, stem, stages), the DeTrans block over its deepest
    ``num_levels`` maps, the decoder column (upsampling + skip steps, output), the skip connections and the
    deep-supervision heads, each box with its output shape ``C × X×Y×Z`` for an input of ``input_size``.

    The figure is ``ARCHITECTURE_FIGSIZE`` at ``ARCHITECTURE_DPI`` (1400 x 800 pixels), written atomically.

    Args:
        output_png: PNG to write, e.g. ``docs/architecture.png``.
        input_size: spatial input size (X, Y, Z); the default is the bundle's patch size.
        cotr_kwargs: arguments of :class:`scripts.networks.CoTr` (default: the bundle's network).

    Returns:
        ``output_png``.
    """
    with torch.device("meta"):  # the structure only: no weights are initialised
        net = CoTr(**cotr_kwargs)
    net.check_input_size(input_size)
    content = describe(net, input_size)
    encoder, decoder, heads, detrans = content["encoder"], content["decoder"], content["heads"], content["detrans"]
    rows = len(encoder)  # input, stem, stages; row 0 at the top
    top, bottom = 6.75, 1.15
    y = [top - r * (top - bottom) / (rows - 1) for r in range(rows)]
    x_enc, x_det, x_dec, x_head = 2.0, 6.6, 10.25, 12.95
    w_enc, w_det, w_dec, w_head, h = 3.3, 3.3, 3.1, 1.6, 0.62

    fig = plt.figure(figsize=ARCHITECTURE_FIGSIZE)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, ARCHITECTURE_FIGSIZE[0])
    ax.set_ylim(0, ARCHITECTURE_FIGSIZE[1])
    ax.axis("off")

    for r, block in enumerate(encoder):
        _box(ax, x_enc, y[r], w_enc, h, block.kind, [block.text, _size(block.shape)])
        if r:
            _arrow(ax, [(x_enc, y[r - 1] - h / 2), (x_enc, y[r] + h / 2)])
    # decoder row r (0: output, r >= 1: the step whose output matches encoder map r) and its source
    num_levels = detrans["num_levels"] if detrans else 0
    first_detrans_row = rows - num_levels
    if detrans:
        y_top, y_bottom = y[first_detrans_row] + h / 2 + 0.1, y[rows - 1] - h / 2 - 0.1
        height = max(y_top - y_bottom, 0.21 * len(detrans["lines"]) + 0.5)
        centre = max((y_top + y_bottom) / 2, 0.55 + height / 2)  # clear of the legend
        _box(ax, x_det, centre, w_det, height, "detrans", ["DeTrans encoder", *detrans["lines"]])
    det_left, det_right = x_det - w_det / 2, x_det + w_det / 2

    def source_point(r: int) -> tuple[float, float]:
        """Where encoder map ``r`` leaves for the decoder: the DeTrans' right edge or the encoder box."""
        return (det_right, y[r]) if r >= first_detrans_row else (x_enc + w_enc / 2, y[r])

    for r in range(first_detrans_row, rows):
        _arrow(ax, [(x_enc + w_enc / 2, y[r]), (det_left, y[r])])
    step_rows = list(range(rows - 2, 0, -1))  # decoder steps from the deepest skip up to the stem
    for i, r in enumerate(step_rows):
        block = decoder[i]
        _box(ax, x_dec, y[r], w_dec, h, block.kind, [block.text, _size(block.shape)])
        # skip connection into the step
        sx, sy = source_point(r)
        _arrow(ax, [(sx, sy), (x_dec - w_dec / 2, y[r])], colour="#1f5fa8", dashed=True)
        # upsampled input from below
        if i == 0:
            dx, dy = source_point(rows - 1)
            _arrow(ax, [(dx, dy), (x_dec, dy), (x_dec, y[r] - h / 2)])
        else:
            _arrow(ax, [(x_dec, y[r + 1] + h / 2), (x_dec, y[r] - h / 2)])
        head = heads[i] if i < len(heads) else None
        if head is not None:
            _box(ax, x_head, y[r], w_head, h, "head", [head.text, _size(head.shape)])
            _arrow(ax, [(x_dec + w_dec / 2, y[r]), (x_head - w_head / 2, y[r])], colour="#7d4fa8", dashed=True)
    output = decoder[-1]
    _box(ax, x_dec, y[0], w_dec, h, output.kind, [output.text, _size(output.shape)])
    _arrow(ax, [(x_dec, y[1] + h / 2), (x_dec, y[0] - h / 2)])

    params = content["params"]
    parts = ", ".join(f"{k} {_count(v)}" for k, v in params.items() if k != "total" and v)
    size = "×".join(str(s) for s in input_size)
    heading = f"CoTr: {_count(params['total'])} parameters ({parts})"
    ax.text(0.25, 7.72, heading, fontsize=13, fontweight="bold", va="center")
    ax.text(
        0.25,
        7.35,
        f"Output shapes C × X×Y×Z from forward hooks for a {size} input "
        "(MONAI axis order); deep-supervision heads are used in training only.",
        fontsize=10,
        va="center",
        color="0.25",
    )
    legend = [("encoder", "CNN encoder"), ("detrans", "deformable Transformer"), ("decoder", "CNN decoder")]
    legend = [entry for entry in legend if detrans or entry[0] != "detrans"] + [("head", "deep supervision")]
    for i, (kind, text) in enumerate(legend):
        swatch = FancyBboxPatch(
            (0.25 + 2.6 * i, 0.2), 0.3, 0.22, boxstyle="round,pad=0.01", facecolor=_COLOURS[kind], edgecolor="0.35"
        )
        ax.add_patch(swatch)
        ax.text(0.65 + 2.6 * i, 0.31, text, fontsize=9.5, va="center")
    ax.plot([10.75, 11.25], [0.31, 0.31], color="#1f5fa8", linewidth=1.3, linestyle="--")
    ax.text(11.35, 0.31, "skip (added)", fontsize=9.5, va="center")
    return save_figure_atomic(fig, output_png, ARCHITECTURE_DPI)


if __name__ == "__main__":
    import fire

    fire.Fire(draw_architecture)
