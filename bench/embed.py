"""Benchmark of bulk face embedding (`ml.faces.embed.embed_dataset`) against its baselines.

    python bench/embed.py [--quick] [--json PATH] [--orl DIR] [--device cpu|cuda]

Images: the ORL faces (s1..s30, 300 PGM files) resized to 250x250 RGB JPEGs, cycled (mirrored on the
second pass, shifted on the third) up to 1,000 images (100 with --quick), written to a temporary folder.
Network: facenet-pytorch's InceptionResnetV1 with random weights (speed does not depend on them),
MTCNN with its default settings, no flip TTA (the plain loop has none).

Figures, each in images per second:
- plain: facenet-pytorch's own loop, one image at a time: PIL open, `MTCNN(...)(img)` (detect and
  crop), `InceptionResnetV1(crop)`;
- stage ceiling: 1 / (best batched detection time + best batched embedding time) per image, each
  stage measured alone on the same images (detection on decoded images already on the device, over
  a few batch sizes; embedding on aligned 160x160 crops), best of the repeats;
- pipeline: `embed_dataset` end to end (decoding, detection, alignment, embedding, checkpoints).
`speedup` = pipeline / plain and `ceiling_fraction` = pipeline / stage ceiling. Uses CUDA when
available. Prints a table and writes every figure to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import add_device_arg, device_from, device_name, sync  # noqa: E402
from ml.core.callbacks import LocalCallbacks  # noqa: E402
from ml.faces.align import align_faces  # noqa: E402
from ml.faces.decode import DecodeLimits, decode_file, list_files  # noqa: E402
from ml.faces.detect import DetectorSettings, FaceDetector  # noqa: E402
from ml.faces.embed import EmbedSettings, embed_dataset  # noqa: E402
from ml.faces.models import load_facenet  # noqa: E402


def default_orl() -> Path:
    try:
        from jobs.settings import get_settings

        return Path(get_settings().data_dir) / "orl"
    except Exception:  # the bench also runs where only `ml` and its packages are installed
        return ROOT.parent / "shared" / "data" / "orl"


def make_images(orl: Path, out: Path, n: int) -> list[Path]:
    """`n` 250x250 RGB JPEGs from the ORL faces, in one folder per person."""
    sources = sorted(orl.glob("s*/*.pgm"))
    if not sources:
        raise SystemExit(f"no ORL images under {orl}; pass --orl")
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        img = Image.open(src).convert("RGB").resize((250, 250), Image.BILINEAR)
        rnd = i // len(sources)
        if rnd % 3 == 1:
            img = ImageOps.mirror(img)
        elif rnd % 3 == 2:
            img = ImageOps.expand(img, border=12, fill=(0, 0, 0)).resize((250, 250), Image.BILINEAR)
        path = out / src.parent.name / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=95)
        paths.append(path)
    return paths


def plain_loop(paths: list[Path], device: torch.device) -> tuple[float, int]:
    """facenet-pytorch's documented usage, one image at a time: (seconds, faces)."""
    from facenet_pytorch import MTCNN, InceptionResnetV1

    mtcnn = MTCNN(image_size=160, device=device)
    resnet = InceptionResnetV1(pretrained=None).eval().to(device)
    faces = 0
    with torch.no_grad():
        for path in paths[:3]:  # warm-up
            crop = mtcnn(Image.open(path).convert("RGB"))
            if crop is not None:
                resnet(crop.unsqueeze(0).to(device))
        sync(device)
        start = time.perf_counter()
        for path in paths:
            crop = mtcnn(Image.open(path).convert("RGB"))
            if crop is not None:
                resnet(crop.unsqueeze(0).to(device)).cpu()
                faces += 1
        sync(device)
    return time.perf_counter() - start, faces


def detection_stage(
    paths: list[Path], device: torch.device, batch_sizes: list[int], repeats: int
) -> tuple[float, int, list]:
    """Best seconds per image of batched MTCNN alone, the best batch size, and the faces' landmarks."""
    limits = DecodeLimits()
    decoded = [decode_file(p.name, p, limits) for p in paths]
    best, best_bs, found = float("inf"), batch_sizes[0], []
    for bs in batch_sizes:
        detector = FaceDetector(DetectorSettings(batch_size=bs), device)
        preps = [detector.prepare(img) for img in decoded]  # on the device, at detection size
        detector.detect(preps[:bs])  # warm-up
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            found = []
            for i in range(0, len(preps), bs):
                found.extend(detector.detect(preps[i : i + bs]))
            sync(device)
            per = (time.perf_counter() - start) / len(preps)
            if per < best:
                best, best_bs = per, bs
    crops_from = [(p, f[0].landmarks) for p, f in zip(preps, found, strict=True) if f]
    return best, best_bs, crops_from


def embedding_stage(crops: torch.Tensor, model, batch_sizes: list[int], repeats: int) -> tuple[float, int]:
    """Best seconds per face of batched InceptionResnetV1 alone, and the best batch size."""
    best, best_bs = float("inf"), batch_sizes[0]
    for bs in batch_sizes:
        model.embed(crops[:bs])  # warm-up
        for _ in range(repeats):
            sync(crops.device)
            start = time.perf_counter()
            for i in range(0, crops.shape[0], bs):
                model.embed(crops[i : i + bs]).cpu()
            sync(crops.device)
            per = (time.perf_counter() - start) / crops.shape[0]
            if per < best:
                best, best_bs = per, bs
    return best, best_bs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 images (30 in the plain loop), one repeat")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--orl", type=Path, default=None, help="ORL folder (default: the shared data folder)")
    add_device_arg(parser)
    parser.add_argument("--images", type=int, default=None, help="number of images (default 1000, quick 100)")
    parser.add_argument(
        "--plain-images", type=int, default=None, help="images for the plain loop (default all; quick 30)"
    )
    args = parser.parse_args()
    device = device_from(args.device)
    n = args.images or (100 if args.quick else 1000)
    n_plain = args.plain_images or (30 if args.quick else n)
    repeats = 1 if args.quick else 2
    det_sizes = [32] if args.quick else [16, 32, 64]
    emb_sizes = [64] if args.quick and device.type == "cpu" else [64, 256]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(args.orl or default_orl(), Path(tmp), n)
        model = load_facenet(None, device=device)

        det_s, det_bs, located = detection_stage(paths, device, det_sizes, repeats)
        crops = torch.cat([align_faces(p.image, torch.from_numpy(lm[None]), 160) for p, lm in located])
        emb_s, emb_bs = embedding_stage(crops, model, emb_sizes, repeats)
        del crops, located
        ceiling = 1.0 / (det_s + emb_s)

        settings = EmbedSettings(
            detector=DetectorSettings(batch_size=det_bs),
            flip_tta=False,
            embed_batch_size=emb_bs,
            chunk_size=max(50, n // 4),
        )
        files = list_files(tmp)
        detector = FaceDetector(settings.detector, device)
        warm = files[: min(len(files), 2 * det_bs)]
        embed_dataset(warm, model, settings, LocalCallbacks(), device, detector)
        sync(device)
        start = time.perf_counter()
        result = embed_dataset(files, model, settings, LocalCallbacks(), device, detector)
        sync(device)
        pipe_s = time.perf_counter() - start
        pipeline = n / pipe_s

        plain_paths = paths[:n_plain]
        plain_s, plain_faces = plain_loop(plain_paths, device)
        plain = len(plain_paths) / plain_s

    figures = {
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "images": n,
        "image_size": [250, 250],
        "faces": len(result.index),
        "failures": len(result.failures),
        "plain_images": len(plain_paths),
        "plain_faces": plain_faces,
        "plain_images_per_s": plain,
        "detect_ms_per_image": det_s * 1000,
        "detect_batch_size": det_bs,
        "embed_ms_per_face": emb_s * 1000,
        "embed_batch_size": emb_bs,
        "ceiling_images_per_s": ceiling,
        "pipeline_seconds": pipe_s,
        "pipeline_images_per_s": pipeline,
        "speedup": pipeline / plain,
        "speedup_vs_plain": pipeline / plain,  # the name other tooling reads (issue 12)
        "ceiling_fraction": pipeline / ceiling,
        "quick": args.quick,
        "torch": torch.__version__,
    }
    rows = [
        (
            "plain facenet-pytorch loop",
            f"{plain:.2f} img/s",
            f"{len(plain_paths)} images, {plain_faces} faces",
        ),
        ("batched detection alone", f"{det_s * 1000:.2f} ms/img", f"batch {det_bs}"),
        ("batched embedding alone", f"{emb_s * 1000:.2f} ms/face", f"batch {emb_bs}"),
        ("stage ceiling", f"{ceiling:.2f} img/s", "1 / (detect + embed)"),
        ("embed pipeline", f"{pipeline:.2f} img/s", f"{n} images, {len(result.index)} faces"),
        ("speedup over plain", f"{pipeline / plain:.2f}x", ""),
        ("fraction of ceiling", f"{pipeline / ceiling:.3f}", ""),
    ]
    print(f"bench/embed.py on {figures['device']} ({figures['device_name']}), {n} images 250x250")
    for name, value, note in rows:
        print(f"  {name:<28} {value:>14}   {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
