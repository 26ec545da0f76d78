"""The `train_embedding` and `evaluate` kinds: ArcFace training and verification (`ml.arcface.train`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.errors import JobInputError, TransientError
from jobs.params.embedding import EvaluateParams, TrainEmbeddingParams
from workers.runners import Preempted, ml_config, params_as

if TYPE_CHECKING:
    from workers.context import JobContext

RANK_TIMEOUT_S = 120.0  # a collective waiting longer than this on a dead rank fails

# Result keys copied from metrics into the job row (the full set is in metrics.json).
SUMMARY_KEYS = (
    "auc",
    "accuracy",
    "accuracy_std",
    "threshold",
    "tar_at_far_1e-2",
    "tar_at_far_1e-3",
    "identification_accuracy",
    "num_pairs",
    "num_identities",
    "num_images",
)


def default_image_size(ref: str) -> int:
    """Input side when the params leave it unset: 32 for the digit sets, 112 (ArcFace crops) for faces."""
    return 32 if ref.startswith("builtin:") else 112


def _dataset_folder(ctx: JobContext, ref: str) -> Path | None:
    """The local folder of `ref` (builtin:digits needs none)."""
    return None if ref == "builtin:digits" else Path(ctx.open_dataset(ref))


def _recordio(ctx: JobContext, ref: str) -> Any:
    """A RecordIOReader over ranged store reads when dataset `ref` is one .rec + .idx, else None."""
    if not ref.startswith("dataset:"):
        return None
    from jobs.store import join_key
    from ml.data.recordio import RecordIOReader

    prefix, listed = ctx.dataset_objects(ref)
    keys = set(listed)
    recs = [k for k in keys if k.endswith(".rec") and k[:-4] + ".idx" in keys]
    if len(recs) != 1:
        return None
    rec_key = join_key(prefix, recs[0])
    idx = ctx.store.get_bytes(join_key(prefix, recs[0][:-4] + ".idx")).decode("utf-8", errors="replace")
    return RecordIOReader(lambda offset, n: ctx.store.get_range(rec_key, offset, n), idx, recs[0])


def _shards(ctx: JobContext, ref: str) -> tuple[list[str], Any] | None:
    """(shard names, ShardCache over store downloads) when dataset `ref` holds `*-NNNNNN.tar` shards."""
    import re

    from jobs.store import join_key
    from ml.data.cache import ShardCache

    if not ref.startswith("dataset:"):
        return None
    ds_id = ref.removeprefix("dataset:")
    prefix, keys = ctx.dataset_objects(ref)
    names = sorted(k for k in keys if re.fullmatch(r"[^/]+-\d{6}\.tar", k))
    if not names:
        return None
    root = ctx.settings.home.resolve() / "cache" / "shards" / ds_id

    def fetch(name: str, dest: Path) -> None:
        ctx.store.download(join_key(prefix, name), dest)

    return names, ShardCache(root, ctx.settings.shard_cache_bytes, fetch, lambda n: ctx.store.size(join_key(prefix, n)))


def _load_shards(found: tuple[list[str], Any], ref: str, size: tuple[int, int], channels: int | None) -> Any:
    """Every sample of the shards, streamed through the bounded cache (shard order: by name)."""
    import torch

    from ml.data import ImageDataset
    from ml.data.protocols import load_images
    from ml.data.shards import ShardSampler, ShardStream

    names, cache = found
    stream = ShardStream(names, cache, ShardSampler(len(names), shuffle=False))
    samples = sorted(((label, n, img) for n, (_, img, label) in enumerate(stream.epoch())), key=lambda t: t[:2])
    ids = sorted({lab for lab, _, _ in samples})
    remap = {lab: k for k, lab in enumerate(ids)}
    images = load_images([img for _, _, img in samples], size, channels)
    labels = torch.tensor([remap[lab] for lab, _, _ in samples])
    return ImageDataset(images, labels, [str(i) for i in ids], ref)


def _load(ctx: JobContext, ref: str, image_size: Any, channels: str | None) -> Any:
    from ml.data import DatasetError, load_dataset

    try:
        reader = _recordio(ctx, ref)
        if reader is not None:  # records read by offset from the store, never downloaded whole
            from ml.data.recordio import load_recordio

            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            c = {"grey": 1, "rgb": 3, None: None}[channels]
            return load_recordio(reader, size, c, source=ref)
        shards = _shards(ctx, ref)
        if shards is not None:  # fetched shard by shard into a bounded cache, never the whole set
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            return _load_shards(shards, ref, size, {"grey": 1, "rgb": 3, None: None}[channels])
        # download=True: where MNIST's files are missing, torchvision's downloader is tried (online only).
        folder = _dataset_folder(ctx, ref)
        return load_dataset(ref, folder, image_size=image_size, channels=channels, download=True)  # type: ignore[arg-type]
    except DatasetError as exc:
        raise JobInputError(f"dataset {ref}: {exc}") from exc


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def _put_plots(ctx: JobContext, plots: dict[str, bytes]) -> None:
    for name, png in plots.items():
        ctx.put_artifact(name, png, "image/png")


def _train_ranks(ctx: JobContext, dataset: Any, config: Any, gpus: int) -> Any:
    """`gpus` ranks in this job (`ml.arcface.ddp`): this process hosts them and talks to the context.

    A rank that dies fails this attempt as a `TransientError`: the job is requeued and its next
    attempt restarts every rank from the last checkpoint.
    """
    import torch

    from ml.arcface.ddp import DistributedOptions, RankFailed, train_embedding_ddp

    device = torch.device(ctx.device)
    if device.type == "cuda" and torch.cuda.device_count() < gpus:
        raise JobInputError(
            f"gpus={gpus} but this worker sees {torch.cuda.device_count()} GPUs: send it to queue gpu-{gpus}"
        )
    ctx.log(f"training on {gpus} ranks ({'NCCL, one GPU each' if device.type == 'cuda' else 'gloo on the CPU'})")
    options = DistributedOptions(world_size=gpus, device_type=device.type, timeout_s=RANK_TIMEOUT_S)
    try:
        return train_embedding_ddp(dataset, config, callbacks=ctx, options=options)
    except RankFailed as exc:
        raise TransientError(f"a training rank failed: {exc}") from exc


def run_train_embedding(ctx: JobContext) -> dict[str, Any]:
    """Train, evaluate on the held-out split, and store backbone.pt, arcface.pt, config.json,
    metrics.json, roc.png, distances.png, loss.png and pca.png."""
    from ml.arcface.model import save_trained
    from ml.arcface.train import TrainConfig, TrainConfigError, train_embedding, validate_config
    from ml.core.errors import Stopped
    from ml.data import DatasetError, check_trainable
    from ml.metrics.plots import evaluation_plots

    p = params_as(ctx, TrainEmbeddingParams)
    image_size = p.image_size or default_image_size(p.dataset)
    kwargs: dict[str, Any] = {"base_width": p.base_width}
    if p.backbone == "se_resnet18":
        kwargs["use_se"] = p.use_se
    if p.dropout is not None:
        kwargs["dropout"] = p.dropout
    config = ml_config(
        TrainConfig,
        p,
        backbone_kwargs=kwargs,
        image_size=image_size,
        in_channels=None if p.grey is None else (1 if p.grey else 3),
    )
    try:
        validate_config(config)  # before the data is fetched: bad params fail in a second
    except TrainConfigError as exc:
        raise JobInputError(str(exc)) from exc
    channels = None if p.grey is None else ("grey" if p.grey else "rgb")
    dataset = _load(ctx, p.dataset, image_size, channels)
    try:
        check_trainable(dataset)  # one identity: refused before any model is built
    except DatasetError as exc:
        raise JobInputError(f"dataset {p.dataset}: {exc}") from exc
    ctx.log(f"{p.dataset}: {len(dataset)} images of {dataset.num_classes} identities, {dataset.image_size}")
    try:
        if p.gpus > 1:
            result = _train_ranks(ctx, dataset, config, p.gpus)
        else:
            result = train_embedding(dataset, config, callbacks=ctx, device=ctx.device)
    except Stopped as exc:
        raise Preempted(str(exc)) from exc
    except (TrainConfigError, DatasetError) as exc:
        raise JobInputError(str(exc)) from exc

    out = Path(ctx.workdir) / "model"
    paths = save_trained(out, result.backbone, result.arcface_weight, result.config, result.class_names)
    ctx.put_artifact("backbone.pt", paths["backbone.pt"], "application/octet-stream")
    ctx.put_artifact("arcface.pt", paths["arcface.pt"], "application/octet-stream")
    ctx.put_artifact("config.json", paths["config.json"], "application/json")
    ctx.put_artifact("metrics.json", _json_bytes({**result.metrics, "history": result.history}), "application/json")
    test_classes = [dataset.class_names[i] for i in range(dataset.num_classes)]
    _put_plots(
        ctx, evaluation_plots(result.report, result.test_embeddings, result.test_labels, test_classes, result.history)
    )
    summary = {k: result.metrics[k] for k in SUMMARY_KEYS if k in result.metrics}
    return {
        **summary,
        "epochs": len(result.history),
        "final_train_loss": result.history[-1]["loss"],
        "train_seconds": round(result.seconds, 1),
        "split_by": result.split.by,
        "gpus": p.gpus,
    }


def run_evaluate(ctx: JobContext) -> dict[str, Any]:
    """Evaluate a trained model (`job:<id>`) on a labelled dataset: metrics.json and plots."""
    import numpy as np

    from ml.arcface.model import TrainedModelError, evaluate_model
    from ml.arcface.train import load_trained
    from ml.data import DatasetError, make_split
    from ml.metrics.plots import evaluation_plots
    from ml.metrics.verification import VerificationError

    p = params_as(ctx, EvaluateParams)
    if p.model.startswith("model:") and ctx.model_info(p.model)["kind"] == "onnx":  # its declared input
        from workers.runners.embed import load_onnx

        onnx_model = load_onnx(ctx, p.model)
        backbone = onnx_model.module
        config = {
            "image_size": list(onnx_model.input_size),
            "in_channels": onnx_model.in_channels,
            "normalize": onnx_model.normalize.to_json(),
            "warp": onnx_model.warp,
        }
    else:
        try:
            backbone, _, config = load_trained(ctx.open_model(p.model), device=ctx.device)
        except TrainedModelError as exc:
            raise JobInputError(f"model {p.model}: {exc}") from exc
    if p.protocol != "random":
        return _evaluate_protocol(ctx, p, backbone, config)
    channels = "grey" if int(config["in_channels"]) == 1 else "rgb"
    dataset = _load(ctx, p.dataset, tuple(config["image_size"]), channels)
    note = "all images"
    if p.use_split == "held_out" and config.get("dataset") == p.dataset:
        split_cfg = config.get("split") or {}
        if config.get("dataset_size") != len(dataset):
            raise JobInputError(
                f"{p.dataset} has {len(dataset)} images but the model was trained on {config.get('dataset_size')}: "
                "its held-out split cannot be rebuilt; use use_split='all' on data the model never saw"
            )
        try:
            split = make_split(dataset.labels, split_cfg["by"], split_cfg["test_fraction"], split_cfg["seed"])
        except DatasetError as exc:
            raise JobInputError(str(exc)) from exc
        dataset = dataset.subset(split.test)
        note = f"the model's held-out split (by {split.by})"
    if p.max_samples is not None and len(dataset) > p.max_samples:
        keep = np.sort(np.random.default_rng(p.seed).choice(len(dataset), p.max_samples, replace=False))
        dataset = dataset.subset(keep.tolist())
    ctx.log(f"evaluating {p.model} on {len(dataset)} images of {p.dataset} ({note})")
    ctx.progress(0, 1)
    try:
        report, emb = evaluate_model(
            backbone,
            dataset.images,
            dataset.labels,
            config,
            flip_tta=p.flip_tta,
            folds=p.folds,
            max_pairs=p.max_pairs,
            gallery_fraction=p.gallery_fraction,
            seed=p.seed,
            device=ctx.device,
        )
    except VerificationError as exc:
        raise JobInputError(f"evaluate: {exc}") from exc
    ctx.progress(1, 1, auc=float(report.metrics["auc"] or 0.0), accuracy=float(report.metrics["accuracy"] or 0.0))
    metrics = {**report.metrics, "model": p.model, "dataset": p.dataset, "evaluated_on": note, "flip_tta": p.flip_tta}
    ctx.put_artifact("metrics.json", _json_bytes(metrics), "application/json")
    _put_plots(ctx, evaluation_plots(report, emb, dataset.labels, dataset.class_names))
    return {k: report.metrics[k] for k in SUMMARY_KEYS if k in report.metrics} | {"evaluated_on": note}


def _protocol_file(ctx: JobContext, p: EvaluateParams) -> tuple[str, Path, Path]:
    """(kind, dataset folder, protocol file) of "pairs:<path>" / "bin:<path>", the file inside the dataset."""
    kind, rel = p.protocol.split(":", 1)
    if not p.dataset.startswith("dataset:"):
        raise JobInputError(f"protocol {p.protocol}: the protocol file must be in a dataset:<id>, not {p.dataset}")
    folder = Path(ctx.open_dataset(p.dataset)).resolve()
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise JobInputError(f"protocol {p.protocol}: {rel!r} is not a file of {p.dataset}")
    return kind, folder, path


def _evaluate_protocol(ctx: JobContext, p: EvaluateParams, backbone: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Verification on a fixed protocol (pairs.txt or .bin): metrics.json and roc.png."""
    import numpy as np

    from ml.arcface.model import Normalization, preprocess
    from ml.data.protocols import (
        ProtocolError,
        bin_folds,
        load_bin,
        load_images,
        parse_pairs,
        protocol_metrics,
        resolve_pairs,
    )
    from ml.metrics.plots import roc_png
    from ml.metrics.verification import embed_images, pair_scores, roc_curve

    kind, folder, path = _protocol_file(ctx, p)
    size, channels = (int(config["image_size"][0]), int(config["image_size"][1])), int(config["in_channels"])
    try:
        if kind == "pairs":
            try:
                pairs = parse_pairs(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"pairs file is not UTF-8 text: {exc}") from exc
            files, a, b = resolve_pairs(pairs, folder)
            images = load_images(files, size, channels)
            same, fold = np.array([q.same for q in pairs]), np.array([q.fold for q in pairs])
        else:
            bins, same = load_bin(path.read_bytes())
            images = load_images(bins, size, channels)
            a = np.arange(0, len(bins), 2)
            b, fold = a + 1, bin_folds(same.size)
    except ProtocolError as exc:
        raise JobInputError(f"protocol {p.protocol}: {exc}") from exc
    ctx.log(f"evaluating {p.model} on {same.size} pairs of {p.protocol} ({images.shape[0]} images)")
    ctx.progress(0, 1)
    norm = Normalization.from_json(config["normalize"])
    x = preprocess(images, size, channels, norm, config.get("warp") or "none")
    emb = embed_images(backbone, x, flip_tta=p.flip_tta, device=ctx.device)
    scores = pair_scores(emb, a, b)
    metrics = protocol_metrics(scores, same, fold)
    ctx.progress(1, 1, auc=float(metrics["auc"]), accuracy=float(metrics["accuracy"]))
    fpr, tpr, _ = roc_curve(scores, same)
    info = {"model": p.model, "dataset": p.dataset, "protocol": p.protocol, "flip_tta": p.flip_tta}
    ctx.put_artifact("metrics.json", _json_bytes(metrics | info), "application/json")
    ctx.put_artifact("roc.png", roc_png(fpr, tpr, float(metrics["auc"])), "image/png")
    summary = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    return summary | {"num_images": int(images.shape[0]), "protocol": p.protocol, "evaluated_on": p.protocol}
