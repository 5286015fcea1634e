"""Loading images safely: local paths, http(s) URLs, inline base64.

Every load is bounded: bytes read, pixels decoded (checked from the header,
before decoding, so a 50k x 50k PNG costs nothing), time spent fetching. URLs are
fetched over http(s) only; hosts that resolve to private, loopback, link-local or
reserved addresses are refused unless the operator allows them (SSRF guard;
redirects are followed by hand and checked at each hop). Failures raise
:class:`InvalidDocument` with a ``code`` and a reason a person can act on.

Reduced-size decoding: given ``draft_size`` (the model's input side), a JPEG whose shorter
side is at least twice that is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (DCT scaling,
``Image.draft``), never below ``draft_size`` on either side: 2-4x less decoding work, and the
model sees the same picture (cosine >= 0.99 to the full decode, ``tests/test_fast_pipeline.py``).
The pixel limit is checked on the full size, before any decoding.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from clipfuse.errors import InvalidDocument
from clipfuse.schemas import ImageSource
from clipfuse.schemas import limits as L

__all__ = ["ImageLimits", "ImageLoader"]

_MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = L.DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = L.DEFAULT_MAX_IMAGE_PIXELS
    fetch_timeout_s: float = L.DEFAULT_FETCH_TIMEOUT_S
    allow_private_urls: bool = False


class ImageLoader:
    """Turns an :class:`ImageSource` into a decoded RGB PIL image, or a clear error.

    ``base_dir`` resolves relative paths (the folder of a JSONL catalog).
    ``path_roots``, when given, confines local paths to those folders.
    """

    def __init__(
        self,
        limits: ImageLimits | None = None,
        *,
        base_dir: Path | None = None,
        path_roots: tuple[Path, ...] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.limits = limits or ImageLimits()
        self.base_dir = base_dir
        self.path_roots = tuple(p.resolve() for p in path_roots) if path_roots else None
        self._http = http_client

    # -- reading bytes -------------------------------------------------------------
    def read_bytes(self, source: ImageSource) -> bytes:
        if source.path is not None:
            return self._read_path(source.path)
        if source.url is not None:
            return self._fetch(source.url)
        assert source.data is not None
        if len(source.data) * 3 // 4 > self.limits.max_bytes:
            raise InvalidDocument(self._too_many_bytes(len(source.data) * 3 // 4), code="image_too_large")
        return base64.b64decode(source.data)

    def _too_many_bytes(self, size: int) -> str:
        return (
            f"image of {size:,} bytes is over the limit of {self.limits.max_bytes:,} bytes (CLIPFUSE_IMAGES__MAX_BYTES)"
        )

    def _read_path(self, raw: str) -> bytes:
        path = Path(raw).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        if self.path_roots is not None:
            resolved = path.resolve()
            if not any(resolved.is_relative_to(root) for root in self.path_roots):
                raise InvalidDocument(
                    f"image path {raw!r} is outside the allowed folders {[str(r) for r in self.path_roots]}",
                    code="image_path_forbidden",
                )
        try:
            size = path.stat().st_size
            if size > self.limits.max_bytes:
                raise InvalidDocument(self._too_many_bytes(size), code="image_too_large")
            with path.open("rb") as fh:
                return fh.read(self.limits.max_bytes + 1)
        except FileNotFoundError:
            raise InvalidDocument(f"image file not found: {path}", code="image_not_found") from None
        except IsADirectoryError:
            raise InvalidDocument(f"image path is a folder, not a file: {path}", code="image_not_found") from None
        except PermissionError:
            raise InvalidDocument(f"no permission to read image file {path}", code="image_not_found") from None

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidDocument(f"image url must be http(s), got {parts.scheme!r}", code="image_url_forbidden")
        host = parts.hostname
        if not host:
            raise InvalidDocument(f"image url has no host: {url[:200]}", code="image_url_forbidden")
        if self.limits.allow_private_urls:
            return
        try:
            infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
        except socket.gaierror as e:
            raise InvalidDocument(
                f"image url host {host!r} cannot be resolved: {e}", code="image_unreachable"
            ) from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if (
                address.is_private
                or address.is_loopback
                or address.is_link_local
                or address.is_reserved
                or address.is_multicast
                or address.is_unspecified
            ):
                raise InvalidDocument(
                    f"image url host {host!r} resolves to the non-public address {address}; refused "
                    "(set CLIPFUSE_IMAGES__ALLOW_PRIVATE_URLS=true to allow internal image hosts)",
                    code="image_url_forbidden",
                )

    def _fetch(self, url: str) -> bytes:
        client = self._http or httpx.Client(timeout=self.limits.fetch_timeout_s, follow_redirects=False)
        deadline = time.monotonic() + self.limits.fetch_timeout_s
        try:
            current = url
            for _ in range(_MAX_REDIRECTS + 1):
                self._check_host(current)
                try:
                    with client.stream("GET", current, timeout=self.limits.fetch_timeout_s) as response:
                        if response.is_redirect:
                            location = response.headers.get("location")
                            if not location:
                                raise InvalidDocument(
                                    f"redirect without location from {current}", code="image_unreachable"
                                )
                            current = urljoin(current, location)
                            continue
                        if response.status_code != 200:
                            raise InvalidDocument(
                                f"image url answered HTTP {response.status_code}: {current[:200]}",
                                code="image_unreachable",
                            )
                        declared = response.headers.get("content-length")
                        if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
                            raise InvalidDocument(self._too_many_bytes(int(declared)), code="image_too_large")
                        buffer = bytearray()
                        for chunk in response.iter_bytes():
                            buffer.extend(chunk)
                            if len(buffer) > self.limits.max_bytes:
                                raise InvalidDocument(self._too_many_bytes(len(buffer)), code="image_too_large")
                            if time.monotonic() > deadline:  # httpx's timeout is per read: bound the whole body
                                raise httpx.ReadTimeout("body not received in time")
                        return bytes(buffer)
                except httpx.TimeoutException:
                    raise InvalidDocument(
                        f"image url timed out after {self.limits.fetch_timeout_s:g}s: {current[:200]} "
                        "(CLIPFUSE_IMAGES__FETCH_TIMEOUT_S)",
                        code="image_unreachable",
                    ) from None
                except httpx.HTTPError as e:
                    raise InvalidDocument(
                        f"image url unreachable: {current[:200]}: {e}", code="image_unreachable"
                    ) from None
            raise InvalidDocument(f"too many redirects (>{_MAX_REDIRECTS}) from {url[:200]}", code="image_unreachable")
        finally:
            if self._http is None:
                client.close()

    # -- decoding ------------------------------------------------------------------
    def decode(self, data: bytes, *, draft_size: int | None = None) -> Image.Image:
        """Decode to RGB; ``draft_size``: allow a JPEG to be decoded at reduced size (see the module doc)."""
        if len(data) > self.limits.max_bytes:
            raise InvalidDocument(self._too_many_bytes(len(data)), code="image_too_large")
        if not data:
            raise InvalidDocument("image is empty (0 bytes)", code="image_unreadable")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.limits.max_pixels:
                    raise InvalidDocument(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{self.limits.max_pixels:,} (CLIPFUSE_IMAGES__MAX_PIXELS)",
                        code="image_too_large",
                    )
                if draft_size and image.format == "JPEG" and min(width, height) >= 2 * draft_size:
                    image.draft("RGB", (draft_size, draft_size))  # keeps both sides >= draft_size
                image.load()  # truncated files raise (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        except InvalidDocument:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow's own guard (PIL.Image.MAX_IMAGE_PIXELS) fires inside Image.open, before the check above
            raise InvalidDocument(
                f"image refused as a decompression bomb: {e} (clipfuse's limit is {self.limits.max_pixels:,} "
                "pixels, CLIPFUSE_IMAGES__MAX_PIXELS)",
                code="image_too_large",
            ) from None
        except UnidentifiedImageError:
            raise InvalidDocument("not an image (unknown or unsupported format)", code="image_unreadable") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InvalidDocument(f"image is corrupt or truncated: {e}", code="image_unreadable") from None
        return _to_rgb(image)

    def load(self, source: ImageSource, *, draft_size: int | None = None) -> Image.Image:
        """Read and decode one image; raises :class:`InvalidDocument` on any failure."""
        return self.decode(self.read_bytes(source), draft_size=draft_size)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas on white (product cut-outs are usually on white)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):  # 16-bit grey: convert("RGB") would clip every value over 255 to white
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
