"""Device JPEG decoding (issue 16, Part A): the same code runs on the CPU here (torchvision's
libjpeg decode, batched torch resize) and on CUDA in scripts/gpu_check.sh (nvjpeg), marked gpu."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_fast_pipeline import CaptureBackend

from clipfuse.bench.images import synthetic_jpegs
from clipfuse.embedding.gpu_decode import DeviceJpegEmbedder, device_decodable, jpeg_header
from clipfuse.embedding.openclip import OpenClipEmbedder
from clipfuse.errors import ConfigurationError
from clipfuse.images import ImageLimits, ImageLoader
from clipfuse.ingest.pipeline import Indexer
from clipfuse.settings import Settings

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work and are what nvjpeg runs under
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Product-like JPEGs of the sizes a catalog has (800x600, 600x800, 1000x1000, 640x480), plus
    one smaller than the model input on one side (upsampled) and a very wide one."""
    blobs = synthetic_jpegs(5, seed=3)
    base = Image.open(io.BytesIO(blobs[0])).convert("RGB")
    return [*blobs, _encode(base.resize((120, 90)), "JPEG", quality=90), _encode(base.resize((1400, 300)), "JPEG")]


@pytest.fixture(scope="module")
def odd_images(photos: list[bytes]) -> dict[str, bytes]:
    """What the device decoder must hand to the CPU: every one is a valid image."""
    base = Image.open(io.BytesIO(photos[0])).convert("RGB")
    return {
        "progressive": _encode(base, "JPEG", progressive=True, quality=85),
        "cmyk": _encode(base.convert("CMYK"), "JPEG", quality=90),
        "png": _encode(base.resize((300, 200)), "PNG"),
        "webp": _encode(base.resize((300, 200)), "WEBP", quality=80),
        "grey": _encode(base.convert("L"), "JPEG", quality=90),  # 1 component: the device takes it
    }


def _reference(embedder: OpenClipEmbedder, blobs: list[bytes]) -> np.ndarray:
    """open_clip's own transform on PIL's full decode, then the image tower."""
    loader = ImageLoader()
    pixels = torch.stack([embedder.preprocess(loader.decode(b)) for b in blobs])
    return embedder.embed_pixels(pixels)


def _in_order(batch: Any) -> np.ndarray:
    return batch.vectors[np.argsort(batch.rows)]


def test_header_parser_and_routing(photos: list[bytes], odd_images: dict[str, bytes]) -> None:
    header = jpeg_header(photos[0])
    assert header is not None and (header.marker, header.width, header.height, header.components) == (
        0xC0,
        800,
        600,
        3,
    )
    assert all(device_decodable(b) for b in photos)
    assert device_decodable(odd_images["grey"])
    for name in ("progressive", "cmyk", "png", "webp"):
        assert not device_decodable(odd_images[name]), name
    assert not device_decodable(photos[0], max_pixels=800 * 600 - 1)
    assert jpeg_header(b"\xff\xd8\xff") is None and jpeg_header(b"not a jpeg") is None


def test_pixels_match_open_clips_transform_at_224(photos: list[bytes]) -> None:
    """The batched device preprocessing against open_clip's Resize(224, bicubic) + CenterCrop on
    PIL's full decode, pixel for pixel (ViT-B-32's transform; no forward needed)."""
    embedder = OpenClipEmbedder("ViT-B-32", pretrained=None, device="cpu")
    decoder = DeviceJpegEmbedder(embedder)
    batch = decoder.prepare(photos)
    assert batch.on_device == len(photos) and batch.on_cpu == 0 and not batch.failed
    ours = batch.pixels[np.argsort(batch.rows)]
    loader = ImageLoader()
    theirs = torch.stack([embedder.preprocess(loader.decode(b)) for b in photos])
    assert ours.shape == theirs.shape == (len(photos), 3, 224, 224)
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(1), theirs.flatten(1))
    assert cosine.min() >= 0.999, cosine
    assert (ours - theirs).abs().mean() < 0.02  # normalised units: ~0.5 of a grey level


def test_vectors_match_open_clip_per_image(demo_embedder: Any, photos: list[bytes]) -> None:
    decoder = DeviceJpegEmbedder(demo_embedder)
    batch = decoder.embed(photos)
    cosine = (_in_order(batch) * _reference(demo_embedder, photos)).sum(-1)
    assert cosine.min() >= 0.99, cosine
    assert batch.on_device == len(photos)


def test_what_the_device_cannot_decode_goes_the_cpu_way_in_the_same_batch(
    demo_embedder: Any, photos: list[bytes], odd_images: dict[str, bytes]
) -> None:
    truncated = photos[1][: len(photos[1]) // 2]
    blobs = [photos[0], odd_images["progressive"], b"not an image", odd_images["cmyk"], photos[2]]
    blobs += [odd_images["png"], truncated, odd_images["webp"], odd_images["grey"], photos[3]]
    batch = DeviceJpegEmbedder(demo_embedder).embed(blobs)
    assert sorted(batch.failed) == [2, 6], batch.failed  # reported by index, never raised
    assert "not an image" in batch.failed[2] and "truncated" in batch.failed[6]
    assert sorted(batch.rows) == [0, 1, 3, 4, 5, 7, 8, 9]
    assert batch.on_cpu == 4 and batch.on_device == 4  # progressive, CMYK, PNG, WebP on the CPU
    good = [blobs[i] for i in sorted(batch.rows)]
    cosine = (_in_order(batch) * _reference(demo_embedder, good)).sum(-1)
    assert cosine.min() >= 0.99, cosine


def test_limits_apply_before_any_decoding(demo_embedder: Any, photos: list[bytes]) -> None:
    loader = ImageLoader(ImageLimits(max_pixels=700 * 700, max_bytes=10 * 1024 * 1024))
    batch = DeviceJpegEmbedder(demo_embedder, loader=loader).embed(photos[:4])  # 1000x1000 is photos[3]
    assert list(batch.failed) == [3] and "pixels" in batch.failed[3]
    small = ImageLoader(ImageLimits(max_bytes=1024))
    assert len(DeviceJpegEmbedder(demo_embedder, loader=small).embed(photos[:2]).failed) == 2


def test_overlapped_batches_equal_one_by_one(demo_embedder: Any, photos: list[bytes]) -> None:
    decoder = DeviceJpegEmbedder(demo_embedder)
    chunks = [photos[:3], photos[3:5], [], photos[5:]]
    streamed = list(decoder.embed_batches(chunks))
    assert len(streamed) == len(chunks)
    for chunk, got in zip(chunks, streamed, strict=True):
        if not chunk:
            assert got.vectors.shape == (0, demo_embedder.dim)
            continue
        np.testing.assert_allclose(got.vectors, decoder.embed(chunk).vectors, atol=1e-5)
    assert list(decoder.embed_batches([])) == []


def test_bf16_autocast_stays_close(demo_embedder: Any, photos: list[bytes]) -> None:
    fp32 = DeviceJpegEmbedder(demo_embedder, autocast=False).embed(photos)
    bf16 = DeviceJpegEmbedder(demo_embedder, autocast=True).embed(photos)
    cosine = (_in_order(fp32) * _in_order(bf16)).sum(-1)
    assert cosine.min() >= 0.99, cosine


def test_cpu_only_mode_is_the_reference_path(demo_embedder: Any, photos: list[bytes]) -> None:
    batch = DeviceJpegEmbedder(demo_embedder, device_decode=False).embed(photos[:3])
    assert batch.on_cpu == 3 and batch.on_device == 0
    cosine = (_in_order(batch) * _reference(demo_embedder, photos[:3])).sum(-1)
    assert cosine.min() >= 0.999


@pytest.mark.gpu
def test_on_cuda_matches_the_cpu(demo_embedder: Any, photos: list[bytes], odd_images: dict[str, bytes]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (scripts/gpu_check.sh runs this on a GPU machine)")
    gpu = OpenClipEmbedder("clipfuse-demo", device="cuda")
    blobs = [*photos, *odd_images.values()]
    on_gpu = DeviceJpegEmbedder(gpu, autocast=False).embed(blobs)
    assert not on_gpu.failed and on_gpu.on_device == len(photos) + 1  # + the grey JPEG
    cosine = (_in_order(on_gpu) * _reference(demo_embedder, blobs)).sum(-1)
    assert cosine.min() >= 0.99, cosine
    streamed = list(DeviceJpegEmbedder(gpu).embed_batches([blobs[:4], blobs[4:]]))
    assert [len(b.rows) for b in streamed] == [4, len(blobs) - 4]
    truncated = photos[1][: len(photos[1]) // 2]
    assert DeviceJpegEmbedder(gpu).embed([photos[0], truncated]).rows[:1] == [0]


# --------------------------------------------------------------------------- the ingest path
def _index(
    embedder: Any, docs: list[dict[str, Any]], *, device_decode: bool | None
) -> tuple[CaptureBackend, Any, Indexer]:
    backend = CaptureBackend()
    indexer = Indexer(embedder, backend, batch_size=16, load_workers=2, device_decode=device_decode)  # type: ignore[arg-type]
    try:
        return backend, indexer.index(docs), indexer
    finally:
        indexer.close()


def test_the_indexer_decodes_on_the_device_with_the_pil_paths_vectors(
    demo_embedder: Any, demo_documents: list[dict[str, Any]]
) -> None:
    """device_decode=True on the CPU runs the ingest's device path (torchvision's libjpeg, one batched
    resize / crop / normalise per image size) end to end: the vectors of the PIL path (reduced
    decoding, open_clip's resize in the loader's threads) within cosine 0.99, on the demo catalog."""
    pil, pil_report, pil_indexer = _index(demo_embedder, demo_documents, device_decode=False)
    dev, dev_report, dev_indexer = _index(demo_embedder, demo_documents, device_decode=True)
    assert pil_report.indexed == dev_report.indexed == len(demo_documents) and not dev_report.rejected
    assert pil_indexer._device_decoder() is None  # off: the loader's threads decode with PIL
    assert dev_indexer.decoded == {"device": len(demo_documents), "cpu": 0}
    cosine = [float(pil.docs[d].image_vector @ dev.docs[d].image_vector) for d in pil.docs]  # type: ignore[operator]
    assert min(cosine) >= 0.99, sorted(cosine)[:5]
    assert max(cosine) < 1.0 - 1e-7 or min(cosine) < 1.0 - 1e-7  # two decoders, not the same path twice
    for d in pil.docs:  # only the image path differs
        np.testing.assert_array_equal(pil.docs[d].text_vector, dev.docs[d].text_vector)  # type: ignore[arg-type]


def test_the_indexer_sends_what_the_device_cannot_decode_the_cpu_way_in_the_same_batch(
    demo_embedder: Any, photos: list[bytes], odd_images: dict[str, bytes]
) -> None:
    """One batch: sequential JPEGs on the device; progressive, CMYK, PNG and WebP the CPU way (in the
    loader's threads); a truncated JPEG (the device decoder takes its header, then fails) goes the
    CPU way too, which cannot read it either: its document alone is rejected, as on the PIL path."""
    truncated = photos[1][: len(photos[1]) // 2]
    blobs = {"a": photos[0], "b": odd_images["progressive"], "c": odd_images["cmyk"], "d": truncated}
    blobs |= {"e": odd_images["png"], "f": odd_images["webp"], "g": photos[2], "h": odd_images["grey"]}
    docs = [
        {"id": key, "title": f"product {key}", "images": [{"data": base64.b64encode(data).decode()}]}
        for key, data in blobs.items()
    ]
    docs.append({"id": "two", "title": "two images", "images": [{"data": base64.b64encode(photos[3]).decode()}] * 2})
    pil, pil_report, _ = _index(demo_embedder, docs, device_decode=False)
    dev, dev_report, indexer = _index(demo_embedder, docs, device_decode=True)
    assert [(r.id, r.stage, r.code) for r in dev_report.rejected] == [("d", "load", "image_unreadable")]
    assert [(r.id, r.stage) for r in pil_report.rejected] == [("d", "load")]
    assert "image 1 of 1" in dev_report.rejected[0].reason
    assert sorted(dev.docs) == sorted(pil.docs) == ["a", "b", "c", "e", "f", "g", "h", "two"]
    # a, g, h and both images of 'two' decoded on the device; b, c, e, f the CPU way (the truncated d: neither)
    assert indexer.decoded == {"device": 5, "cpu": 4}
    for d in dev.docs:
        assert float(pil.docs[d].image_vector @ dev.docs[d].image_vector) >= 0.99, d  # type: ignore[operator]


def test_device_decoding_defaults_to_the_models_device(demo_embedder: Any) -> None:
    """Default (None): on only where an OpenCLIP model runs on CUDA; True for another embedder is refused."""
    on_cpu = Indexer(demo_embedder, CaptureBackend())  # type: ignore[arg-type]
    assert (on_cpu._device_decoder() is not None) == (demo_embedder.device.type == "cuda")

    class _PlainEmbedder:
        dim, model_id, batch_size = 4, "plain", 8

    with pytest.raises(ConfigurationError, match="needs an OpenCLIP embedder"):
        Indexer(_PlainEmbedder(), CaptureBackend(), device_decode=True)._device_decoder()  # type: ignore[arg-type]
    assert Indexer(_PlainEmbedder(), CaptureBackend())._device_decoder() is None  # type: ignore[arg-type]
    assert Settings().images.device_decode is None
