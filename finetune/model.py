"""The network to fine-tune: a torchvision backbone with a new linear head, partly frozen.

The backbone is cut into units in the model's own block order (each child of a top-level
Sequential, e.g. MobileNetV2's ``features.0`` ... ``features.18`` or ResNet's ``layer1.0``; other
top-level modules whole). ``--freeze F`` freezes the first round(F x units) of them, counted from
the input; ``--freeze-until LAYER`` freezes every unit up to the one holding LAYER. The head is the
model's last Linear layer, replaced by one with an output per class.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from cnncodes.extract.backbones import Backbone
from cnncodes.extract.errors import UsageError
from cnncodes.extract.fusion import conv_bn_pairs


@dataclass
class Network:
    """The model, its head's module name, its backbone units and how many of them are frozen."""

    model: nn.Module
    head: str
    units: list[str]
    n_frozen: int
    imagenet_head: dict  # the replaced head's own weights, put back into backbone.pth

    @property
    def frozen_units(self) -> list[str]:
        return self.units[:self.n_frozen]


def head_name(model: nn.Module) -> str:
    """Qualified name of the last Linear layer (``classifier.1``, ``classifier.6``, ``fc``)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer to replace with a new head")
    return linears[-1]


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every block in the model's own order (each child of a top-level Sequential, other top-level
    modules whole), parameterless ones (ReLU, pooling, dropout) included."""
    out = []
    for name, child in model.named_children():
        parts = list(child.named_children()) if isinstance(child, nn.Sequential) else [("", child)]
        out += [(f"{name}.{sub}" if sub else name, module) for sub, module in parts]
    return out


def backbone_units(model: nn.Module, head: str) -> list[str]:
    """Parameterized units in block order, the head excluded."""
    return [unit for unit, module in blocks(model) if unit != head and any(True for _ in module.parameters())]


def frozen_count(units: list[str], freeze: float | None, freeze_until: str | None, backbone: Backbone) -> int:
    """How many leading units to freeze, from a fraction or a layer name (alias or module/node name)."""
    if freeze_until is None:
        return int(round((freeze or 0.0) * len(units)))
    _, node = backbone.resolve_layer(freeze_until)
    hits = [i for i, u in enumerate(units) if node == u or node.startswith(u + ".") or u.startswith(node + ".")]
    if not hits:  # a top-level module without parameters (EfficientNet-Lite's stem ReLU6): the units before it
        hits = _units_before(units, node.split(".")[0], backbone)
    if not hits:
        raise UsageError(f"--freeze-until {freeze_until}: {backbone.name} has no layer {node!r}. Aliases: "
                         f"{', '.join(backbone.aliases)}; units: {', '.join(units)}; node names: "
                         f"`cnncodes layers {backbone.name} --all`")
    return max(hits) + 1


def _units_before(units: list[str], child: str, backbone: Backbone) -> list[int]:
    """Positions of the units in the model's top-level children before ``child`` ([] if it is none of them)."""
    with torch.device("meta"):  # the architecture only
        order = [name for name, _ in backbone.build().named_children()]
    if child not in order:
        return []
    return [i for i, u in enumerate(units) if order.index(u.split(".")[0]) < order.index(child)]


def build_network(model: nn.Module, backbone: Backbone, n_classes: int, freeze: float | None,
                  freeze_until: str | None) -> Network:
    """Replace the head of ``model`` (an ImageNet torchvision model) and freeze its leading units."""
    head = head_name(model)
    units = backbone_units(model, head)
    n_frozen = frozen_count(units, freeze, freeze_until, backbone)
    old = model.get_submodule(head)
    imagenet_head = {k: v.detach().clone() for k, v in old.state_dict().items()}
    _set_submodule(model, head, nn.Linear(old.in_features, n_classes))
    net = Network(model, head, units, n_frozen, imagenet_head)
    set_trainable(net, backbone_too=True)
    return net


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in channels-last layout, the layout oneDNN's CPU convolutions are fastest in
    (training steps 2x faster than NCHW on the CPU: bench/RESULTS.md); ``normalize`` makes inputs match."""
    return model.to(device, memory_format=torch.channels_last)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def unit_of(net: Network, param_name: str) -> str | None:
    """The unit a parameter or buffer belongs to (None for the head)."""
    return next((u for u in net.units if param_name.startswith(u + ".")), None)


def set_trainable(net: Network, backbone_too: bool) -> None:
    """requires_grad for the head always, for unfrozen backbone units only when ``backbone_too``
    (False during the linear-probe epochs of LP-FT)."""
    frozen = set(net.frozen_units)
    for name, p in net.model.named_parameters():
        unit = unit_of(net, name)
        p.requires_grad_(unit is None or (backbone_too and unit not in frozen))


def frozen_span(net: Network, backbone_too: bool = True) -> list[str]:
    """The blocks before the first trained one: frozen units and the parameterless blocks among and
    after them (AlexNet's and VGG's classifier dropout, MobileNetV2's ``classifier.0``). Their output
    is what the trained part sees, so in eval mode it is the codes ``extract`` computes."""
    trained = set(net.units[net.n_frozen:] if backbone_too else []) | {net.head}
    order = [name for name, _ in blocks(net.model)]
    first = next((i for i, b in enumerate(order) if b in trained or net.head.startswith(b + ".")), len(order))
    return order[:first]


def train_mode(net: Network, train_bn: bool, backbone_too: bool = True) -> None:
    """Training mode, except: the frozen span (the whole backbone in a linear-probe phase) stays in
    eval mode, dropout included, and so does every BatchNorm unless ``train_bn`` (its ImageNet
    statistics are kept). Called at the start of every epoch."""
    net.model.train()
    for block in frozen_span(net, backbone_too):
        net.model.get_submodule(block).eval()
    if not train_bn:
        for module in net.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@contextmanager
def fused_forward(net: Network, backbone_too: bool = True) -> Iterator[None]:
    """Training steps' forward: the frozen span (eval mode, learns nothing: ``train_mode``) runs under
    ``torch.no_grad``, and every eval-mode BatchNorm is folded into its convolution (``folded_batchnorm``).
    The same loss and gradients but for rounding, with less autograd bookkeeping and fewer passes over
    the activations (bench/RESULTS.md). Call it after ``train_mode``."""
    blocks = [net.model.get_submodule(name) for name in frozen_span(net, backbone_too)]
    for block in blocks:
        block.forward = _without_grad(type(block).forward.__get__(block))
    try:
        with folded_batchnorm(net.model):
            yield
    finally:
        for block in blocks:
            del block.forward  # the class's own forward again


@contextmanager
def folded_batchnorm(model: nn.Module) -> Iterator[None]:
    """While in effect, each convolution followed by a BatchNorm in eval mode (``extract.fusion.conv_bn_pairs``)
    runs as one convolution whose weight and bias are computed from both at every call, and the BatchNorm
    passes its input through: the same function of the same parameters, gradients included (the fold is
    differentiable, so trained BatchNorm weights still learn), with an activation pass fewer forward and
    backward. Modules, hooks and state dict are untouched; BatchNorm in training mode is left as it is."""
    pairs = [(getattr(parent, c), getattr(parent, b)) for parent, c, b in conv_bn_pairs(model)
             if not getattr(parent, b).training]
    for conv, bn in pairs:
        conv._conv_forward = _folded_conv(conv, bn)  # the convolution's own forward (padding etc.) still runs
        bn.forward = _identity
    try:
        yield
    finally:
        for conv, bn in pairs:
            del conv._conv_forward, bn.forward


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    conv_forward = type(conv)._conv_forward.__get__(conv)

    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = -bn.running_mean * scale if bias is None else (bias - bn.running_mean) * scale
        if bn.bias is not None:
            bias = bias + bn.bias
        return conv_forward(x, weight * scale.reshape(-1, 1, 1, 1), bias)
    return forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _without_grad(forward):
    def run(*args, **kwargs):
        with torch.no_grad():
            return forward(*args, **kwargs)
    return run


def param_groups(net: Network, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """Head at ``lr``, trainable backbone units at ``lr x backbone_lr_mult``; no weight decay on
    biases and normalization weights (1-D tensors). Frozen units are left out."""
    frozen = set(net.frozen_units)
    groups: dict[tuple[str, bool], list] = {}
    for name, p in net.model.named_parameters():
        unit = unit_of(net, name)
        if unit in frozen:
            continue
        key = ("head" if unit is None else "backbone", p.ndim > 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append({"name": f"{part}{'' if decay else '_no_decay'}", "params": params,
                    "lr": lr if part == "head" else lr * backbone_lr_mult,
                    "weight_decay": weight_decay if decay else 0.0, "part": part})
    return out


def backbone_state(net: Network) -> dict[str, torch.Tensor]:
    """The fine-tuned weights in torchvision's own key naming, with the replaced ImageNet head put
    back, so the file loads strictly into the stock architecture (``extract --weights``)."""
    state = {k: v.detach().cpu().clone() for k, v in net.model.state_dict().items()
             if not k.startswith(net.head + ".")}
    state.update({f"{net.head}.{k}": v for k, v in net.imagenet_head.items()})
    return state
