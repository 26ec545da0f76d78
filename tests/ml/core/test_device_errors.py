"""A device fault inside bulk embedding is never recorded as a data failure (a `no_face` row)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml.faces.decode import list_files
from ml.faces.detect import Detection, FaceDetector, Prepared
from ml.faces.embed import EmbedSettings, embed_dataset
from tests.support.faces import ORL_DETECTOR, tiny_model


class FaultyDetector(FaceDetector):
    """MTCNN that fails its batch call, then raises `fault` on the third image it sees alone.

    The batch call failing sends the pipeline to its image-by-image fallback, the path where an
    image's error used to become that image's `no_face` row whatever the error was.
    """

    def __init__(self, fault: BaseException) -> None:
        super().__init__(ORL_DETECTOR, "cpu")
        self.fault = fault
        self.single_calls = 0

    def detect(self, batch: list[Prepared]) -> list[list[Detection]]:
        if len(batch) > 1:
            raise RuntimeError("a batch MTCNN refuses")
        self.single_calls += 1
        if self.single_calls == 3:
            raise self.fault
        return super().detect(batch)


def _files(orl_dir: Path) -> list[tuple[str, Path]]:
    return [(k, p) for k, p in list_files(orl_dir) if k.startswith("s1/")][:5]


@pytest.mark.parametrize(
    "fault",
    [
        torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("CUDA error: device-side assert triggered"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
    ids=["accelerator_error", "legacy_cuda_runtime_error", "out_of_memory"],
)
def test_a_device_fault_propagates_out_of_the_pipeline(orl_dir: Path, fault: BaseException) -> None:
    settings = EmbedSettings(detector=ORL_DETECTOR, chunk_size=5, num_workers=1)
    detector = FaultyDetector(fault)
    with pytest.raises(type(fault)) as info:
        embed_dataset(_files(orl_dir), tiny_model(), settings, detector=detector)
    assert info.value is fault
    assert detector.single_calls == 3


def test_an_image_the_detector_fails_on_is_still_a_no_face_row(orl_dir: Path) -> None:
    settings = EmbedSettings(detector=ORL_DETECTOR, chunk_size=5, num_workers=1)
    files = _files(orl_dir)
    detector = FaultyDetector(RuntimeError("index 3 is out of bounds for this pyramid"))
    result = embed_dataset(files, tiny_model(), settings, detector=detector)
    assert [(f.key, f.reason, f.detail) for f in result.failures] == [
        (files[2][0], "no_face", "the detector failed on this image: index 3 is out of bounds for this pyramid")
    ]
    assert [r["key"] for r in result.index] == [k for k, _ in files[:2] + files[3:]]
    assert detector.single_calls == 5
