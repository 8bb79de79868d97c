"""Input complexity (Serrà et al., ICLR 2020; spec §10): model bits/dim minus compressed bits/dim.

``S(x) = bpd_M(x) - L_c(x)`` with ``bpd_M = -log p_M(x) / (D ln 2)`` the model's negative log-likelihood
(the IWAE bound with ``iwae_samples`` samples, or the single-sample ELBO for 1: the estimates the
``likelihood`` detector memoises, so each is computed once per example) and
``L_c(x) = 8 |C(x)| / D`` the length in bits/dim of the lossless encoding ``C(x)`` of the uint8 image the
model sees (for a Bernoulli backbone: its fixed binarisation, as 0/255), ``D = C·H·W``. Higher = more OOD.
Both terms are in bits/dim, unlike the Likelihood-Regret reference code, which subtracts PNG bits from
nats (spec §10 pitfalls); that mix is deliberately not reproduced.

Compressors: ``png`` (Pillow, ``optimize=True``, ``compress_level=9``) and ``jp2`` (lossless JPEG 2000
through Pillow's OpenJPEG: reversible 5/3 wavelet, raw codestream). Every encoding is decoded again and
checked equal to the input, so a lossy setting can never slip in. **Header bytes are included**, as a
real compressor writes them: PNG's signature and IHDR/IEND chunks (~57 bytes) and the J2K main header
(~80-100 bytes). On a 28×28×1 image that is a constant of about 0.6-1 bit/dim, which is why a constant
image does not reach 0; it shifts every example of one resolution alike (harmless within a suite) but makes
``L_c`` incomparable across resolutions.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, features

from ood_bench.detectors import estimators
from ood_bench.detectors.base import Batch, Detector, whole_number
from ood_bench.errors import UserError
from ood_bench.numerics import bits_per_dim

COMPRESSORS = ("png", "jp2")


def _to_pil(image: np.ndarray) -> Image.Image:
    """uint8 (C, H, W) with C in (1, 3) -> a Pillow image (L or RGB)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 (C, H, W) image with C in (1, 3), got {image.dtype} {image.shape}")
    return Image.fromarray(image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0)))


def _encode(pil: Image.Image, compressor: str) -> bytes:
    buffer = io.BytesIO()
    if compressor == "png":
        pil.save(buffer, format="PNG", optimize=True, compress_level=9)
    elif compressor == "jp2":
        pil.save(buffer, format="JPEG2000", irreversible=False, no_jp2=True)
    else:
        raise ValueError(f"unknown compressor {compressor!r}; allowed: {', '.join(COMPRESSORS)}")
    return buffer.getvalue()


def compressed_bits_per_dim(image: np.ndarray, compressor: str) -> float:
    """``8 · bytes / (C·H·W)`` of the lossless encoding of one uint8 (C, H, W) image, headers included.

    The encoding is decoded again and must equal ``image`` exactly (lossless round trip).
    """
    if compressor == "jp2" and not features.check("jpg_2000"):
        raise UserError("The input_complexity detector needs Pillow's JPEG 2000 codec (OpenJPEG), which this "
                        "Pillow build lacks (PIL.features.check('jpg_2000') is False). Install a Pillow wheel "
                        "built with OpenJPEG (the PyPI wheels are), or drop 'jp2' from the detector's "
                        "'compressors' parameter.")
    pil = _to_pil(image)
    data = _encode(pil, compressor)
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    if not np.array_equal(decoded, np.asarray(pil)):
        raise RuntimeError(f"{compressor} encoding is not lossless for an image of shape {image.shape}")
    return 8.0 * len(data) / image.size


class InputComplexity(Detector):
    """IC score ``bpd_M(x) - L_c(x)`` for each lossless compressor, outputs ``ic_<compressor>``.

    Parameters
    ----------
    iwae_samples:
        S of the IWAE bound used for ``bpd_M``; 1 means the single-sample ELBO (the ``likelihood``
        detector's ``elbo_bpd``, shared with it).
    compressors:
        Which compressors to report: any of ``png``, ``jp2``.
    """

    name = "input_complexity"
    version = "1"

    def __init__(self, iwae_samples: int = 16, compressors: tuple[str, ...] | list[str] = COMPRESSORS):
        self.iwae_samples = whole_number(iwae_samples, "iwae_samples")
        compressors = tuple(compressors)
        bad = [c for c in compressors if c not in COMPRESSORS]
        if bad or not compressors or len(set(compressors)) != len(compressors):
            raise ValueError(f"compressors must be distinct values among {', '.join(COMPRESSORS)}, got {compressors!r}")
        self.compressors = list(compressors)

    def outputs(self) -> list[str]:
        return [f"ic_{c}" for c in self.compressors]

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        model = self.backbone_
        x = self._model_input(batch)
        dims = math.prod(model.input_shape)
        bpd = bits_per_dim(estimators.log_likelihood(model, batch, x, self.iwae_samples), dims)
        seen = seen_images(model, x, batch.images)
        return {f"ic_{c}": bpd - np.array([compressed_bits_per_dim(im, c) for im in seen], dtype=np.float64)
                for c in self.compressors}


def seen_images(model: torch.nn.Module, x: torch.Tensor, images: torch.Tensor) -> np.ndarray:
    """The uint8 images the backbone actually models: binarised ones (0/255) for a Bernoulli likelihood,
    the raw pixels otherwise (categorical / discretised-logistic heads model the 8-bit values)."""
    if getattr(model, "likelihood", None) == "bernoulli":
        return (x.detach().cpu().numpy() > 0.5).astype(np.uint8) * 255
    return images.cpu().numpy()
