"""Input complexity (Serrà et al., ICLR 2020; spec §10): model bits/dim minus compressed bits/dim.

``S(x) = bpd_M(x) - L_c(x)`` with ``bpd_M = -log p_M(x) / (D ln 2)`` the model's negative log-likelihood
(the IWAE bound with ``iwae_samples`` samples, or the single-sample ELBO for 1: the estimates the
``likelihood`` detector memoises, so each is computed once per example) and
``L_c(x) = 8 |C(x)| / D`` the length in bits/dim of the lossless encoding ``C(x)`` of exactly the object the
model codes, ``D = C·H·W``. Higher = more OOD.

* A 256-level backbone (``dlm``, ``categorical``) codes the uint8 image: the compressor sees the uint8 image.
* A Bernoulli backbone codes its fixed binarisation, one bit per sub-pixel: the compressor sees that **1-bit**
  image. Compressing it as 0/255 grey (as this detector did before version 2) measures 8-bit code lengths
  against a model of at most ~1 bit/pixel; uniform noise then scored AUROC 0.00 (spec §0a).

Compressors: ``png`` (Pillow, ``optimize=True``, ``compress_level=9``; a binarised image is written as a PNG of
bit depth 1, eight pixels a byte before filtering and deflate, the standard lossless binary format Pillow
writes) and ``jp2`` (lossless JPEG 2000 through Pillow's OpenJPEG: reversible 5/3 wavelet, raw codestream; a
binarised image is written as 8-bit grey holding 0/1, whose seven empty upper bit-planes EBCOT skips per
code-block, so one bit-plane is coded: OpenJPEG through Pillow cannot write a 1-bit component). Every
encoding is decoded again and checked equal to the input, so a lossy setting can never slip in.

``units``: ``bits_per_dim`` (default) puts both terms in bits/dim. ``reference_mix`` reproduces the
Likelihood-Regret reference code's ``test_inputcomplexity.py`` (the IC numbers of seed 003): the model's
negative log-likelihood in **nats** minus the compressed length in **bits**, both per image; it is reported
divided by D (a constant, so rankings are the reference's). It re-weights the two terms by ln 2, which is what
makes IC(png) fail on noise in seed 003 (docs/reproduction.md). **Header bytes are included**, as a
real compressor writes them: PNG's signature and IHDR/IEND chunks (~57 bytes) and the J2K main header
(~80-100 bytes). On a 28×28×1 image that is a constant of about 0.6-1 bit/dim, which is why a constant
image does not reach 0; it shifts every example of one resolution alike (harmless within a suite) but makes
``L_c`` incomparable across resolutions.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import torch
from PIL import Image, features

from ood_bench.detectors import estimators
from ood_bench.detectors.base import Batch, Detector
from ood_bench.errors import UserError
from ood_bench.numerics import LN2, bits_per_dim
from ood_bench.params import PositiveInt, checked

COMPRESSORS = ("png", "jp2")


def _to_pil(image: np.ndarray, compressor: str) -> Image.Image:
    """uint8 (C, H, W) with C in (1, 3), or bool (1, H, W) -> a Pillow image (L, RGB, or 1 for png)."""
    if image.dtype == np.bool_ and image.ndim == 3 and image.shape[0] == 1:
        return Image.fromarray(image[0]) if compressor == "png" else Image.fromarray(image[0].astype(np.uint8))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError("expected a uint8 (C, H, W) image with C in (1, 3) or a bool (1, H, W) image, got "
                         f"{image.dtype} {image.shape}")
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
    """``8 · bytes / (C·H·W)`` of the lossless encoding of one uint8 (C, H, W) image, or of one bool (1, H, W)
    image coded at one bit per pixel, headers included.

    The encoding is decoded again and must equal ``image`` exactly (lossless round trip).
    """
    if compressor == "jp2" and not features.check("jpg_2000"):
        raise UserError("The input_complexity detector needs Pillow's JPEG 2000 codec (OpenJPEG), which this "
                        "Pillow build lacks (PIL.features.check('jpg_2000') is False). Install a Pillow wheel "
                        "built with OpenJPEG (the PyPI wheels are), or drop 'jp2' from the detector's "
                        "'compressors' parameter.")
    pil = _to_pil(image, compressor)
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
    units:
        ``bits_per_dim`` (both terms in bits/dim) or ``reference_mix`` (nats minus bits, the reference code's).
    """

    name = "input_complexity"
    version = "2"

    @checked
    def __init__(self, iwae_samples: PositiveInt = 16,
                 compressors: list[Literal["png", "jp2"]] | tuple[Literal["png", "jp2"], ...] = COMPRESSORS,
                 units: Literal["bits_per_dim", "reference_mix"] = "bits_per_dim"):
        self.units = units
        self.iwae_samples = iwae_samples
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
        model_term = bits_per_dim(estimators.log_likelihood(model, batch, x, self.iwae_samples), dims)
        if self.units == "reference_mix":
            model_term = model_term * LN2  # nats per dim
        seen = seen_images(model, x, batch.images)
        return {f"ic_{c}": model_term - np.array([compressed_bits_per_dim(im, c) for im in seen], dtype=np.float64)
                for c in self.compressors}


def seen_images(model: torch.nn.Module, x: torch.Tensor, images: torch.Tensor) -> np.ndarray:
    """The images the backbone actually models: the fixed binarisation as bool (one bit per sub-pixel) for a
    Bernoulli likelihood, the raw uint8 pixels otherwise (8-bit heads model the 256 levels)."""
    if getattr(model, "likelihood", None) == "bernoulli":
        return x.detach().cpu().numpy() > 0.5
    return images.cpu().numpy()
