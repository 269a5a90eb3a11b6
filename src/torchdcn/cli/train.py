"""``torchdcn train``: how a run starts (fresh, resumed, or from another run's weights with
``--init-from``), the preset's model and data, the :class:`~torchdcn.engine.Trainer`, and the
summary (``results.json``, :mod:`.train_results`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .option import UsageError
from .presets import get_preset, legacy_backbone_config
from .schedule_options import resumed_milestones
from .train_results import accuracy_lines, write_results


def check_train_start(s: dict[str, Any]) -> None:
    """``--resume``, ``--overwrite`` and ``--init-from`` say how a run starts: one at a time."""
    if s["resume"] is not None and s["overwrite"]:
        raise UsageError(
            f"--resume {s['resume']} continues a run, --overwrite starts one over: give one of "
            "them, not both"
        )
    if s["init_from"] is not None and s["resume"] is not None:
        raise UsageError(
            f"--init-from {s['init_from']} starts a new run from those weights, --resume "
            f"{s['resume']} continues a run with its own: give one of them, not both"
        )
    if s["init_from"] is None and not s["init_strict"]:
        raise UsageError("--no-init-strict applies to --init-from, which is not given")
    if s["init_from"] is not None and not Path(s["init_from"]).is_file():
        from ..engine.checkpoint import CheckpointError

        raise CheckpointError(f"--init-from {s['init_from']}: no such file")


def run_train(s: dict[str, Any], dist: Any) -> None:
    """Train as the settings ``s`` say; ``dist``: this process's
    :class:`~torchdcn.engine.DistInfo` (the process group is joined and left by the caller)."""
    from .. import engine
    from ..data.distorted_mnist import distorted_mnist
    from ..engine import distributed

    preset = get_preset(s["model"])
    out = Path(s["output_dir"])
    ckpt = out / engine.trainer.CHECKPOINT_NAME
    resume: bool | str = False
    if s["resume"] is not None:
        resume = True if s["resume"] == "auto" else s["resume"]
    elif ckpt.exists() and not s["overwrite"]:
        raise UsageError(
            f"{ckpt} exists: pass --resume auto to continue that run, or --overwrite to start "
            "over in the same folder"
        )
    elif s["overwrite"] and dist.is_main:
        for name in (engine.trainer.CHECKPOINT_NAME, "metrics.jsonl", "results.json"):
            (out / name).unlink(missing_ok=True)
    distributed.barrier()
    detection = preset.task == "detection"
    segmentation = preset.task == "segmentation"
    # detection evaluates a few images per process at a time, the classifier 250 digits
    few = detection or segmentation
    eval_batch = max(1, s["batch_size"] // dist.world_size) if few else 250
    if resume:
        kept = resumed_milestones(s, ckpt if resume is True else resume)
        s = s if kept is None else {**s, "milestones": kept}  # a run from before scaling
    config = train_config(s, out, eval_batch)
    engine.seed_everything(s["seed"])
    model_config, build_kwargs, extra = preset.model_config(s), {}, {}
    if detection:
        from .detection import coco_evaluator, training_data

        train, val, data_info = training_data(s)
        model_config = preset.model_config({**s, "num_classes": train.num_classes})
        tests, extra["evaluator"] = {"val": val}, coco_evaluator(val)
        if s["pretrained_backbone"]:
            build_kwargs["pretrained_backbone"] = s["pretrained_backbone"]
    elif segmentation:
        from .segmentation import miou_evaluator
        from .segmentation import training_data as segmentation_data

        train, val, data_info = segmentation_data(s)
        model_config = preset.model_config({**s, "num_classes": train.num_classes})
        tests, extra["evaluator"] = {"val": val}, miou_evaluator(data_info["class_names"])
        if s["pretrained_backbone"]:
            build_kwargs["pretrained_backbone"] = s["pretrained_backbone"]
    else:
        train, tests = distorted_mnist(
            s["data_root"], s["seed"], limit_train=s["limit_train"], limit_test=s["limit_test"]
        )
        data_info = {"protocol": "distorted_mnist", "limit_train": s["limit_train"]}
    legacy: dict = {}
    if resume and preset.task != "classification":
        resumed = ckpt if resume is True else Path(resume)
        model_config, legacy = legacy_backbone_config(model_config, resumed, s)
    model = preset.build(**model_config, **build_kwargs, **legacy)
    init = init_from(model, s)
    run_info = {"model": s["model"], "model_config": model_config, "data": data_info}
    if build_kwargs:
        run_info["pretrained_backbone"] = str(Path(s["pretrained_backbone"]).resolve())
    try:
        trainer = engine.Trainer(
            model,
            train,
            config,
            eval_sets=tests,
            eval_every=s["eval_every"],
            run_info=run_info,
            name=f"train {s['deform'] or 'plain'}",
            **preset.trainer_kwargs(),
            **extra,
        )
    except ValueError as err:  # batch vs processes or data size, device
        raise UsageError(str(err)) from err
    if init is not None:
        trainer.logger.log("init_from", step=0, path=init.path, skipped=init.describe())
    try:
        result = trainer.fit(resume=resume)
    except engine.CheckpointMismatchError as err:
        raise suggest_init_from(err, ckpt if resume is True else Path(resume)) from err
    if dist.is_main:
        details: dict[str, Any] = {}
        if detection:
            from .detection import metrics_table

            details = {"losses": result.losses, "metrics": result.metrics}
            print(metrics_table(result.metrics["val"]))
        elif segmentation:
            from .segmentation import miou_lines

            details = {"losses": result.losses, "metrics": result.metrics}
            print(miou_lines(result.metrics["val"]))
        else:
            print(accuracy_lines(result.accuracy))
        write_results(out, result, **details)
        print(f"checkpoint: {result.checkpoint}")


def init_from(model: Any, s: dict[str, Any]) -> Any:
    """Load ``--init-from`` into ``model`` (an :class:`~torchdcn.engine.InitReport`, or ``None``
    without it); a non-strict load that skipped tensors says which."""
    if s["init_from"] is None:
        return None
    from ..engine import CheckpointError, distributed, load_model_weights

    try:
        report = load_model_weights(model, s["init_from"], strict=s["init_strict"])
    except CheckpointError as err:
        message = str(err).replace("strict=False loads", "--no-init-strict loads")
        raise CheckpointError(f"--init-from: {message}") from err
    if distributed.info().is_main:
        if not report.complete:
            warnings.warn(
                f"--init-from {s['init_from']}: {report.loaded} tensors loaded; {report.describe()}"
                " (these keep their initialisation)",
                UserWarning,
                stacklevel=2,
            )
        print(f"initialised from {s['init_from']} ({report.loaded} tensors)")
    return report


def suggest_init_from(err: Exception, checkpoint: Path) -> Exception:
    """``err`` with the advice to start a new run from the checkpoint's weights when the
    resumed run differs in its epochs (a longer or shorter run is another run)."""
    if not any(d.startswith("train.epochs:") for d in getattr(err, "differences", [])):
        return err
    return type(err)(
        f"{err}. To train the weights of {checkpoint} for another number of epochs, start a new "
        f"run from them: --init-from {checkpoint} (without --resume; its optimizer state and "
        "schedule start afresh)",
        err.differences,  # type: ignore[attr-defined]
    )


def train_config(s: dict[str, Any], out: Path, eval_batch_size: int = 250):
    """The :class:`~torchdcn.engine.TrainConfig` of the settings (UsageError if rejected)."""
    from ..engine import OptimConfig, ScheduleConfig, TrainConfig

    try:
        return TrainConfig(
            epochs=s["epochs"],
            batch_size=s["batch_size"],
            seed=s["seed"],
            optim=OptimConfig(s["optimizer"], s["lr"], s["weight_decay"], momentum=s["momentum"]),
            schedule=ScheduleConfig(
                s["schedule"],
                s["warmup_steps"],
                s["warmup_factor"],
                tuple(s["milestones"]),
                s["gamma"],
                s["min_lr_factor"],
            ),
            amp=s["amp"],
            sync_bn=s["sync_bn"],
            clip_grad_norm=s["clip_grad_norm"],
            output_dir=str(out),
            checkpoint_every=s["checkpoint_every"],
            log_every=s["log_every"],
            progress=s["progress"],
            tensorboard=s["tensorboard"],
            device=s["device"],
            num_workers=s["num_workers"],
            eval_batch_size=eval_batch_size,
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
