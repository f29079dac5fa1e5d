"""Fine-tuning sized by time: epochs from a step budget, and the measured cost of one optimizer step.

A fixed epoch count gives a set of 300 images too few optimizer steps and a set of 20,000 more than a
time budget allows; ``step_sized_epochs`` asks for at least ``MIN_STEPS`` steps (or ``DEFAULT_EPOCHS``
epochs, whichever is more): ``finetune``'s default epochs. ``epochs_for`` (auto) gives as many of those as
the time allows, no more.
"""
from __future__ import annotations

import math
import time

MIN_STEPS = 300  # optimizer steps a fine-tune should get where time allows
DEFAULT_EPOCHS = 6  # finetune's own default: large sets get at least these where time allows
TIMED_STEPS = 2  # steps timed by step_seconds, after one untimed warm-up step


def step_sized_epochs(n_train: int, batch_size: int, min_steps: int = MIN_STEPS,
                      default_epochs: int = DEFAULT_EPOCHS) -> int:
    """Whole epochs giving ``n_train`` images in batches of ``batch_size`` at least ``min_steps`` optimizer
    steps and at least ``default_epochs`` epochs: few images get more passes, many images no fewer."""
    if n_train < 1 or batch_size < 1:
        raise ValueError("step_sized_epochs needs n_train >= 1 and batch_size >= 1")
    steps_per_epoch = math.ceil(n_train / batch_size)
    return max(default_epochs, math.ceil(min_steps / steps_per_epoch))


def epochs_for(n_train: int, batch_size: int, budget_s: float, seconds_per_step: float,
               min_steps: int = MIN_STEPS, default_epochs: int = DEFAULT_EPOCHS) -> int:
    """Epochs to train ``n_train`` images in batches of ``batch_size`` within ``budget_s`` seconds.

    Wants ``step_sized_epochs``; fewer when ``budget_s / seconds_per_step`` steps do not reach that; 0 when
    not even one epoch fits.
    """
    if n_train < 1 or batch_size < 1 or seconds_per_step <= 0:
        raise ValueError("epochs_for needs n_train >= 1, batch_size >= 1 and seconds_per_step > 0")
    steps_per_epoch = math.ceil(n_train / batch_size)
    wanted = step_sized_epochs(n_train, batch_size, min_steps, default_epochs)
    affordable = int(max(budget_s, 0.0) / (seconds_per_step * steps_per_epoch))
    return min(wanted, affordable)


def step_seconds(backbone: str, weights: str | None, freeze: float, n_classes: int, batch_size: int, crop: int,
                 device: str = "auto") -> float:
    """Seconds one training step takes at ``freeze`` (forward, backward, SGD update of the trained units)
    on random ``crop`` x ``crop`` batches: the mean of TIMED_STEPS steps after a warm-up step."""
    import torch

    from cnncodes.extract.backbones import get_backbone
    from cnncodes.extract.device import pick_device
    from cnncodes.extract.weights import build_model, locate_weights

    from .model import build_network, fused_forward, place, train_mode

    bb = get_backbone(backbone)
    dev = pick_device(device)
    net = build_network(build_model(bb, locate_weights(bb, weights)), bb, n_classes, freeze, None)
    place(net.model, dev)
    train_mode(net, False, backbone_too=True)
    optimizer = torch.optim.SGD([p for p in net.model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    x = torch.randn(batch_size, 3, crop, crop, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_classes, (batch_size,), device=dev)
    with fused_forward(net):  # the step as the trainer runs it
        for k in range(TIMED_STEPS + 1):
            if k == 1:
                _sync(dev)
                started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net.model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    _sync(dev)
    return (time.perf_counter() - started) / TIMED_STEPS


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
