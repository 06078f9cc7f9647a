"""[setup] read from the live objects: optimizer, loader, loss module, targets.

Only keys and values that `trainlint schema` accepts are emitted; anything trainlint cannot express is
either refused (an ExportError that says what to pass instead) or reported as a warning.
"""
from __future__ import annotations

import warnings

import torch

from ._errors import ExportError, ExportWarning

# trainlint's `setup.loss` values, by loss module type and by torch.nn.functional name.
LOSS_MODULES = {
    "MSELoss": "mse",
    "L1Loss": "l1",
    "SmoothL1Loss": "smooth_l1",
    "BCELoss": "bce",
    "BCEWithLogitsLoss": "bce_with_logits",
    "CrossEntropyLoss": "cross_entropy",
    "NLLLoss": "nll",
}
LOSS_FUNCTIONS = {
    "mse_loss": "mse",
    "l1_loss": "l1",
    "smooth_l1_loss": "smooth_l1",
    "binary_cross_entropy": "bce",
    "binary_cross_entropy_with_logits": "bce_with_logits",
    "cross_entropy": "cross_entropy",
    "nll_loss": "nll",
}
LOSS_NAMES = sorted(set(LOSS_MODULES.values()))
OPTIMIZERS = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
TASKS = ("image-to-image", "classification", "regression")


def _warn(message: str) -> None:
    warnings.warn(message, ExportWarning, stacklevel=5)


def loss_name(loss_fn) -> str | None:
    """trainlint's name for a loss module, a torch.nn.functional loss, or a name given as a string."""
    if loss_fn is None:
        return None
    if isinstance(loss_fn, str):
        if loss_fn not in LOSS_NAMES:
            raise ExportError(f"loss_fn={loss_fn!r} is not a loss trainlint knows; use one of {', '.join(LOSS_NAMES)}")
        return loss_fn
    kind = type(loss_fn).__name__
    if isinstance(loss_fn, torch.nn.Module):
        name = next((LOSS_MODULES[c.__name__] for c in type(loss_fn).__mro__ if c.__name__ in LOSS_MODULES), None)
        if name is None:
            raise ExportError(
                f"loss_fn is a {kind}, which trainlint cannot model; pass the name of the closest loss it knows "
                f"(loss_fn=\"mse\", one of {', '.join(LOSS_NAMES)}) or loss_fn=None to let trainlint pick one by task"
            )
        _loss_caveats(loss_fn, name)
        return name
    fname = getattr(loss_fn, "__name__", None)
    if callable(loss_fn) and fname in LOSS_FUNCTIONS:
        return LOSS_FUNCTIONS[fname]
    raise ExportError(
        f"loss_fn {fname or kind!r} is not a loss trainlint knows; pass a torch.nn loss module, a "
        f"torch.nn.functional loss, or a name: {', '.join(LOSS_NAMES)}"
    )


def _loss_caveats(loss_fn: torch.nn.Module, name: str) -> None:
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction != "mean":
        # trainlint's probes average the loss over the batch; a summed loss takes steps `batch` times
        # larger at the same lr, so the probe would understate the lr the training really uses.
        _warn(
            f"{type(loss_fn).__name__}(reduction={reduction!r}): trainlint trains its probes with the batch mean, so its "
            f"learning-rate probe sees smaller steps than your training takes; the audit still runs"
        )
    ignored = []
    if getattr(loss_fn, "weight", None) is not None:
        ignored.append("weight")
    if getattr(loss_fn, "pos_weight", None) is not None:
        ignored.append("pos_weight")
    if getattr(loss_fn, "label_smoothing", 0.0):
        ignored.append(f"label_smoothing={loss_fn.label_smoothing}")
    if name == "smooth_l1" and getattr(loss_fn, "beta", 1.0) != 1.0:
        ignored.append(f"beta={loss_fn.beta}")
    if ignored:
        _warn(f"{type(loss_fn).__name__}: trainlint models {name} without {', '.join(ignored)}")


def optimizer_setup(optimizer, scheduler=None, total_steps=None) -> tuple[dict, str | None]:
    """optimizer, lr, momentum, weight_decay from `optimizer.param_groups`, and a note for the config
    when the lr written is not the optimizer's lr at this moment (the peak of a warmup schedule)."""
    if optimizer is None:
        return {}, None
    inner = optimizer
    # Lightning's LightningOptimizer and Accelerate's AcceleratedOptimizer wrap the real one.
    for _ in range(4):
        if any(c in OPTIMIZERS for c in type(inner).__mro__):
            break
        wrapped = getattr(inner, "optimizer", None) or getattr(inner, "_optimizer", None)
        if wrapped is None or wrapped is inner:
            break
        inner = wrapped
    if not isinstance(inner, torch.optim.Optimizer):
        raise ExportError(f"optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    name = next((OPTIMIZERS[c] for c in type(inner).__mro__ if c in OPTIMIZERS), None)
    if name is None:
        raise ExportError(
            f"optimizer {type(inner).__name__} is not one trainlint can probe (it trains with SGD, Adam or AdamW); "
            f"pass optimizer=None and set [setup] optimizer and lr by hand to the closest one"
        )
    groups = inner.param_groups
    if not groups:
        raise ExportError("the optimizer has no param_groups")
    # Several groups (e.g. no weight decay on biases): trainlint has one lr and one weight decay, so
    # take the group that holds the most parameters and say what was dropped.
    index = max(range(len(groups)), key=lambda i: sum(p.numel() for p in groups[i]["params"]))
    main = groups[index]
    lr, note = peak_lr(main, index, scheduler, total_steps)
    differing = sorted(
        {k for g in groups for k in ("lr", "momentum", "weight_decay") if k in g and _num(g[k]) != _num(main[k])}
    )
    if differing:
        _warn(
            f"the optimizer's {len(groups)} param groups differ in {', '.join(differing)}; trainlint uses the largest "
            f"group's values (lr {lr:g})"
        )
    setup = {"optimizer": name, "lr": lr, "weight_decay": _num(main.get("weight_decay", 0.0))}
    if name == "sgd":
        setup["momentum"] = _num(main.get("momentum", 0.0))
        if main.get("nesterov"):
            _warn("SGD(nesterov=True): trainlint probes plain momentum SGD")
    elif main.get("amsgrad"):
        _warn(f"{type(inner).__name__}(amsgrad=True): trainlint probes plain {name}")
    if setup["lr"] <= 0:
        raise ExportError(
            f"the optimizer's lr is {setup['lr']} and no schedule gives a larger one; trainlint needs lr > 0 "
            f"(pass scheduler= to export, or set [setup] lr by hand)"
        )
    return setup, note


# Evaluating a LambdaLR's functions over more steps than this is no longer cheap.
SCHEDULE_STEPS = 100_000


def peak_lr(group: dict, index: int, scheduler=None, total_steps=None) -> tuple[float, str | None]:
    """The lr trainlint's probe should train with: the peak of the schedule, not the lr at this moment
    (a warmup starts at 0 or at a fraction of it). Read from the param group's `max_lr` (OneCycleLR) and
    `initial_lr` (every torch scheduler sets it), the scheduler's `max_lrs` (CyclicLR) and `base_lrs`, and for a LambdaLR its
    functions' values over the run when `total_steps` is known. Returns the lr and a note that says which lr was taken and why, when it is not the current."""
    current = _num(group["lr"])
    found = []  # (lr, where it was read)
    if "max_lr" in group:
        found.append((_num(group["max_lr"]), "OneCycleLR's max_lr"))
    if "initial_lr" in group:
        found.append((_num(group["initial_lr"]), "the param group's initial_lr, the schedule's base lr"))
    max_lrs = getattr(scheduler, "max_lrs", None)  # CyclicLR keeps its peaks on the scheduler
    if isinstance(max_lrs, (list, tuple)) and index < len(max_lrs):
        found.append((_num(max_lrs[index]), f"{type(scheduler).__name__}'s max_lr"))
    base_lrs = getattr(scheduler, "base_lrs", None)
    if isinstance(base_lrs, (list, tuple)) and index < len(base_lrs):
        found.append((_num(base_lrs[index]), f"{type(scheduler).__name__}'s base lr"))
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and lambdas and index < len(lambdas):
            steps = total_steps if isinstance(total_steps, int) and 0 < total_steps <= SCHEDULE_STEPS else None
            if steps:
                try:
                    top = max(float(lambdas[index](s)) for s in range(steps))
                    found.append((_num(base_lrs[index]) * top, f"the largest lr of the LambdaLR over {steps} steps"))
                except Exception:  # noqa: BLE001 - the user's function; the other readings stand
                    pass
    lr, where = current, None
    for value, source in found:
        if value > lr and value > 0:
            lr, where = value, source
    if where is None:
        return current, None
    from ._export import short_float  # noqa: PLC0415 - one formatting rule for the whole config

    state = "0 (a warmup's start)" if current == 0 else f"{short_float(current)}, lower while the schedule warms up or decays"
    return lr, (
        f"lr = {short_float(lr)}: the peak of the lr schedule ({where}); trainlint's lr probe trains at it. "
        f"At export the optimizer's lr was {state}"
    )


def _num(value) -> float:
    # lr can be a tensor (capturable / fused optimizers, LR schedulers that set one).
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def loader_setup(loader, shuffle: bool | None) -> dict:
    """batch_size from the loader, shuffle from its sampler's type."""
    setup = {}
    batch_size = getattr(loader, "batch_size", None)
    if batch_size is None:
        batch_size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if batch_size is not None:
        setup["batch_size"] = int(batch_size)
    if shuffle is None:
        shuffle = sampler_shuffles(loader)
    setup["shuffle"] = bool(shuffle)
    return setup


def sampler_shuffles(loader) -> bool:
    from torch.utils.data import (
        RandomSampler,
        SequentialSampler,
        SubsetRandomSampler,
        WeightedRandomSampler,
    )
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(loader, torch.utils.data.DataLoader) and isinstance(loader.dataset, torch.utils.data.IterableDataset):
        raise ExportError(
            "the loader reads an IterableDataset, whose order the loader does not control; "
            "say whether the stream is shuffled with export(..., shuffle=True/False)"
        )
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        return bool(sampler.shuffle)
    if isinstance(sampler, (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)):
        return True
    if isinstance(sampler, SequentialSampler):
        return False
    # Accelerate and Lightning wrap samplers; look one level in.
    for attr in ("sampler", "base_sampler", "_sampler"):
        inner = getattr(sampler, attr, None)
        if inner is not None and inner is not sampler:
            try:
                return sampler_shuffles(_Holder(inner))
            except ExportError:
                break
    raise ExportError(
        f"cannot tell whether the loader shuffles: its sampler is a {type(sampler).__name__}; "
        f"pass export(..., shuffle=True) or shuffle=False"
    )


class _Holder:
    def __init__(self, sampler):
        self.sampler = sampler
        self.batch_sampler = None


# How far the class probabilities of one sample may sum from 1: trainlint's PROBABILITY_SUM_TOLERANCE.
PROBABILITY_SUM_TOLERANCE = 1e-3


def probability_problem(targets) -> str | None:
    """Why float targets [N, K, ...] are not class probabilities along dim 1, or None when they are (the
    rule of trainlint's `Dataset::targets_are_probabilities`: finite, in [0, 1], each sample's K values
    summing to 1 within PROBABILITY_SUM_TOLERANCE): one-hot, label-smoothed, mixup / cutmix or
    distillation targets, which CrossEntropyLoss reads as probabilities."""
    if targets.dim() < 2:
        return f"they have shape {list(targets.shape)}, without a class dim"
    if targets.shape[1] < 2:
        return f"they have {targets.shape[1]} class along dim 1"
    t = targets.double()
    if not torch.isfinite(t).all():
        return "they hold NaN or Inf"
    if (t < 0).any() or (t > 1).any():
        return f"they span [{t.min().item():.3g}, {t.max().item():.3g}], outside [0, 1]"
    sums = t.sum(dim=1)
    off = (sums - 1).abs()
    if (off > PROBABILITY_SUM_TOLERANCE).any():
        i = int(off.flatten().argmax())
        return f"a sample's probabilities sum to {sums.flatten()[i].item():.4g}"
    return None


def task_of(inputs, targets, loss: str | None = None) -> str:
    """The rule of trainlint's `task = "auto"`, written out so the folder says what it means: integer
    targets are class indices; float targets with a class-index loss (cross_entropy, nll), or rows of
    class probabilities with no loss named, are classification (soft targets); then image-to-image for
    equal shapes, else regression."""
    if not (targets.dtype.is_floating_point or targets.dtype == torch.bool):
        return "classification"
    if targets.dtype.is_floating_point:
        if loss in ("cross_entropy", "nll"):
            problem = probability_problem(targets)
            if problem is not None and targets.dim() >= 2:
                _warn(
                    f"{loss} with float targets of shape {list(targets.shape)}: trainlint reads float targets with a "
                    f"class dim as class probabilities, but {problem}; the checks that compute the loss will be "
                    f"skipped (give class indices as integers, or rows that sum to 1)"
                )
            return "classification"
        if loss is None and probability_problem(targets) is None:
            return "classification"
    if tuple(inputs.shape) == tuple(targets.shape):
        return "image-to-image"
    return "regression"
