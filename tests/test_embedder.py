"""The OpenCLIP embedder: golden vectors of the shipped model, loading paths, errors.

Golden vectors: ``tests/data/golden.png`` and ``GOLDEN_TEXT`` must embed to the
values stored in ``tests/data/golden_vectors.json`` (atol 1e-3, as fastembed's
canonical-vector tests). A change to preprocessing, normalisation or the shipped
weights breaks this test on purpose. After an *intended* change, regenerate with
``python tests/test_embedder.py --regenerate`` and say why in the commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipfuse.demo import demo_model_dir
from clipfuse.errors import ConfigurationError

DATA = Path(__file__).parent / "data"
GOLDEN_IMAGE = DATA / "golden.png"
GOLDEN_FILE = DATA / "golden_vectors.json"
GOLDEN_TEXT = "A red t-shirt with white stripes"


def _golden_inputs() -> tuple[Any, str]:
    from PIL import Image

    return Image.open(GOLDEN_IMAGE).convert("RGB"), GOLDEN_TEXT


def test_golden_vectors(demo_embedder: Any) -> None:
    golden = json.loads(GOLDEN_FILE.read_text())
    image, text = _golden_inputs()
    image_vec = demo_embedder.embed_images([image])[0]
    text_vec = demo_embedder.embed_texts([text])[0]
    assert np.allclose(image_vec, golden["image"], atol=1e-3)
    assert np.allclose(text_vec, golden["text"], atol=1e-3)


def test_outputs_are_normalised_float32(demo_embedder: Any) -> None:
    image, text = _golden_inputs()
    images = demo_embedder.embed_images([image, image.rotate(90)])
    texts = demo_embedder.embed_texts([text, "blue scarf", ""])
    for matrix, rows in ((images, 2), (texts, 3)):
        assert matrix.dtype == np.float32 and matrix.shape == (rows, demo_embedder.dim)
        assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert demo_embedder.embed_images([]).shape == (0, demo_embedder.dim)
    assert demo_embedder.embed_texts([]).shape == (0, demo_embedder.dim)


def test_batching_does_not_change_results(demo_embedder: Any) -> None:
    from clipfuse.embedding.openclip import OpenClipEmbedder

    small = OpenClipEmbedder("clipfuse-demo", device="cpu", batch_size=2)
    texts = [f"{c} dress" for c in ("red", "blue", "green", "black", "white")]
    assert np.allclose(small.embed_texts(texts), demo_embedder.embed_texts(texts), atol=1e-5)


def test_construction_does_no_io() -> None:
    from clipfuse.embedding.openclip import OpenClipEmbedder

    embedder = OpenClipEmbedder("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert not embedder.loaded
    assert embedder.model_id == "ViT-B-32/laion2b_s34b_b79k"


@pytest.mark.parametrize(
    ("name", "pretrained"),
    [
        ("ViT-B-32", "laion2b_s34b_b79k"),
        ("ViT-B-32", "/abs/path/to/epoch_5.pt"),  # a checkpoint file: the id is ViT-B-32//abs/path/...
        ("ViT-B-32", "relative/ckpt.pt"),
        ("ViT-B-32", None),  # random-init
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None),
        ("local-dir:/models/my-finetune", None),
    ],
)
def test_a_recorded_model_id_gives_back_its_model(name: str, pretrained: str | None) -> None:
    """What clipfuse search / index read back from an index is the model that wrote it, checkpoint paths
    included (the id splits at its first '/', not its last)."""
    from clipfuse.embedding import split_model_id
    from clipfuse.embedding.openclip import OpenClipEmbedder
    from clipfuse.factory import model_settings_for_index
    from clipfuse.settings import Settings

    model_id = OpenClipEmbedder(name, pretrained=pretrained).model_id
    assert split_model_id(model_id) == (name, pretrained)
    chosen = model_settings_for_index(Settings(), model_id, explicit=False)
    assert (chosen.name, chosen.pretrained) == (name, pretrained)
    assert OpenClipEmbedder(chosen.name, pretrained=chosen.pretrained).model_id == model_id


def test_local_checkpoint_file_with_a_registered_config(tmp_path: Path, demo_embedder: Any) -> None:
    """The real-weights path: an open_clip model name plus a local checkpoint file."""
    import open_clip

    config = json.loads((demo_model_dir() / "open_clip_config.json").read_text())
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "clipfuse-test-arch.json").write_text(json.dumps(config["model_cfg"]))
    open_clip.add_model_config(configs)
    weights = next(demo_model_dir().glob("*.safetensors"))

    from clipfuse.embedding.openclip import OpenClipEmbedder

    embedder = OpenClipEmbedder("clipfuse-test-arch", pretrained=str(weights), device="cpu")
    embedder.load()
    _, text = _golden_inputs()
    assert np.allclose(embedder.embed_texts([text]), demo_embedder.embed_texts([text]), atol=1e-5)


def test_unobtainable_weights_say_how_to_point_at_local_files() -> None:
    code = (
        "from clipfuse.embedding.openclip import OpenClipEmbedder\n"
        "from clipfuse.errors import ConfigurationError\n"
        "try:\n"
        "    OpenClipEmbedder('ViT-B-32', pretrained='laion2b_s34b_b79k', device='cpu').load()\n"
        "except ConfigurationError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "could not load weights" in out
    assert "CLIPFUSE_MODEL__PRETRAINED=/path/to/" in out and "local-dir:" in out


def test_unknown_model_and_bad_settings() -> None:
    from clipfuse.embedding.openclip import OpenClipEmbedder

    with pytest.raises(ConfigurationError, match="unknown model"):
        OpenClipEmbedder("No-Such-Model", pretrained=None, device="cpu").load()
    with pytest.raises(ConfigurationError, match="precision"):
        OpenClipEmbedder("clipfuse-demo", precision="int3")
    with pytest.raises(ConfigurationError, match="fp16 is not supported on the CPU"):
        OpenClipEmbedder("clipfuse-demo", precision="fp16", device="cpu").load()
    with pytest.raises(ConfigurationError, match=r"no open_clip_config\.json"):
        OpenClipEmbedder("local-dir:/tmp", device="cpu").load()


def _regenerate() -> None:  # pragma: no cover - maintenance
    from clipfuse.demo.catalog import generate_products, render_image
    from clipfuse.embedding.openclip import OpenClipEmbedder

    DATA.mkdir(exist_ok=True)
    if not GOLDEN_IMAGE.exists():
        product = next(p for p in generate_products(200, seed=5) if p.color == "red" and p.pattern == "striped")
        render_image(product, size=128).save(GOLDEN_IMAGE)
    embedder = OpenClipEmbedder("clipfuse-demo", device="cpu")
    image, text = _golden_inputs()
    GOLDEN_FILE.write_text(
        json.dumps(
            {
                "model": "clipfuse-demo",
                "image": [round(float(x), 6) for x in embedder.embed_images([image])[0]],
                "text": [round(float(x), 6) for x in embedder.embed_texts([text])[0]],
            }
        )
    )
    print(f"wrote {GOLDEN_FILE}")


if __name__ == "__main__":  # pragma: no cover
    if "--regenerate" in sys.argv:
        _regenerate()
