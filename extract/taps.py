"""Tap named layers of a backbone in one forward pass and turn them into ReLU'd code vectors."""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from .backbones import Backbone
from .errors import UsageError
from .options import MAX_UNPOOLED_DIM, check_options
from .recipe import Tap  # noqa: F401  (torch-free, with the recipe; re-exported)


class TapModel(nn.Module):
    """Backbone truncated after the deepest tap; returns {tap name: [B, dim] ReLU'd codes}."""

    def __init__(self, model: nn.Module, taps: list[Tap]):
        super().__init__()
        self.taps = taps
        nodes = list(dict.fromkeys(t.node for t in taps))
        self.body = create_feature_extractor(model, return_nodes={n: n for n in nodes})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        return {t.name: _pool(torch.relu(feats[t.node]), t.pool) for t in self.taps}


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    if x.ndim == 2:
        return x
    if pool == "avg":
        return x.mean(dim=tuple(range(2, x.ndim)))
    if pool == "max":
        return x.amax(dim=tuple(range(2, x.ndim)))
    return x.flatten(1)


def graph_nodes(model: nn.Module) -> list[str]:
    """Tappable node names of ``model`` in eval mode, in execution order."""
    return [n for n in get_graph_node_names(model)[1] if n != "x"]


def probe_shapes(model: nn.Module, nodes: list[str], crop: int) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each node for one ``crop`` x ``crop`` image."""
    body = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    with torch.inference_mode():
        out = body(torch.zeros(1, 3, crop, crop))
    return {n: tuple(out[n].shape[1:]) for n in nodes}


def resolve_taps(backbone: Backbone, model: nn.Module, layers: list[str], pool: str, crop: int,
                 max_unpooled_dim: int = MAX_UNPOOLED_DIM) -> list[Tap]:
    """Turn ``--layer`` values (aliases or node names) into Taps with their code dimensions."""
    check_options({"pool": pool})
    if not layers:
        raise UsageError("at least one --layer is needed")
    known = graph_nodes(model)
    resolved = []
    for name, node in (backbone.resolve_layer(layer) for layer in dict.fromkeys(layers)):
        canonical = _canonical_node(node, known)
        if canonical is None:
            raise UsageError(
                f"{backbone.name} has no layer {name!r}. Aliases: {', '.join(backbone.aliases)}; "
                f"node names: run `cnncodes layers {backbone.name} --all`"
            )
        if canonical == known[-1]:
            raise UsageError(
                f"{name!r} is {backbone.name}'s output layer (the ImageNet logits, which go negative): a ReLU would "
                f"cut them, so it is not a CNN code. Tap a non-negative layer (`cnncodes layers {backbone.name}`), "
                "e.g. penultimate")
        resolved.append((name, canonical))
    shapes = probe_shapes(model, list(dict.fromkeys(n for _, n in resolved)), crop)
    taps = [_make_tap(name, node, pool, shapes[node]) for name, node in resolved]
    for tap in taps:
        if tap.pool == "none" and tap.dim > max_unpooled_dim:
            raise UsageError(
                f"--pool none on {tap.name} keeps the whole {'x'.join(map(str, tap.shape))} map: {tap.dim:,} floats "
                f"({tap.dim * 4 / 2**10:,.0f} KiB) per image, {tap.dim * 4 * 10000 / 2**30:,.1f} GiB per 10,000 images. "
                f"That is over the {max_unpooled_dim:,} limit; pool with --pool avg|max, tap a smaller layer, "
                f"or raise the limit with --max-dim."
            )
    return taps


def _canonical_node(node: str, known: list[str]) -> str | None:
    """A graph node, or for a module name (``layer1``) the last node inside it, as create_feature_extractor does."""
    if node in known:
        return node
    inside = [k for k in known if k.startswith(node + ".")]
    return inside[-1] if inside else None


def _make_tap(name: str, node: str, pool: str, shape: tuple[int, ...]) -> Tap:
    spatial = len(shape) > 1
    dim = shape[0] if spatial and pool != "none" else math.prod(shape)
    return Tap(name, node, pool if spatial else "none", dim, shape)


def describe_layers(backbone: Backbone, model: nn.Module, crop: int, show_all: bool = False) -> list[dict]:
    """Rows for `cnncodes layers`: node, aliases, output shape, pooled dim and whether it is non-negative."""
    nodes = graph_nodes(model)
    body = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    with torch.inference_mode(), torch.random.fork_rng():
        torch.manual_seed(0)
        out = body(torch.randn(2, 3, crop, crop))
    aliases: dict[str, list[str]] = {}
    for alias, node in backbone.aliases.items():  # a module name (layer4) lists at its last node, as it is tapped
        aliases.setdefault(_canonical_node(node, nodes) or node, []).append(alias)
    rows = []
    for node in nodes:
        value = out[node]
        if not isinstance(value, torch.Tensor) or value.ndim < 2:
            continue
        nonneg = bool((value >= 0).all())
        if not (show_all or nonneg or node in aliases):
            continue
        shape = tuple(value.shape[1:])
        rows.append({"node": node, "aliases": aliases.get(node, []), "shape": shape,
                     "dim": shape[0], "relu": nonneg})  # pooled code size
    return rows
