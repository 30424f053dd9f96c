"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) on kornia's differentiable ops.

The semantics and ranges are those of the DSA code every matching method uses:

==========  ===============================================================================
color       brightness x + (u - 0.5); saturation (x - m_c)(2u) + m_c with m_c the channel mean
            per pixel; contrast (x - m)(u + 0.5) + m with m the per-image mean
crop        integer translation in [-s, s], s = int(0.125 H + 0.5), zero fill
cutout      a zeroed square of side int(0.5 H + 0.5), centre uniform over the image
flip        horizontal flip with p = 0.5
scale       independent x/y scaling, factor in [1/1.2, 1.2]
rotate      rotation in [-15, 15] degrees
rrc         random resized crop (torchvision's RandomResizedCrop, as SRe2L-style soft-label protocols
            use it): a box of area fraction in [0.08, 1] and aspect ratio in [3/4, 4/3] (clipped to the
            image) resized back to the full image, bilinear
==========  ===============================================================================

In the standard mode ("single") one family is drawn per call; mode "all" applies every family
in sequence; mode "idc" is the variant of IDC/NCFM's DiffAug: flip and color always, then one of
the geometric families (crop, scale, rotate), then cutout always. Randomness is explicit: ``params = aug.sample(batch, generator)`` draws a parameter
object, ``aug(x, params)`` applies it, so one draw transforms a real and a synthetic batch
identically. Parameters are drawn per sample (``per_sample=True``) or once for the whole batch,
which is how class-wise matching pairs a real batch with a synthetic batch of another size.
Gradients reach the pixels; the parameters are constants. The global RNG is never touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from kornia.geometry.transform import rotate, scale, translate
from torch import Tensor

from condense.errors import CondenseError

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate", "rrc")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class AugParams:
    """One draw of augmentation parameters.

    ops: the operations to apply in order, each `(name, {param: tensor})`; every tensor has
    length B (per sample) or 1 (shared by the whole batch, broadcast to any batch size).
    """

    ops: tuple[tuple[str, dict[str, Tensor]], ...]
    batch: int = 1

    @property
    def per_sample(self) -> bool:
        return self.batch > 1


@dataclass
class DSA:
    """Differentiable Siamese augmentation with the DSA defaults.

    >>> aug = DSA("color_crop_cutout_flip_scale_rotate")
    >>> g = torch.Generator().manual_seed(0)
    >>> p = aug.sample(8, g, size=32)
    >>> real, syn = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    >>> a, b = aug(real, p), aug(syn, p)     # the same transform on both batches
    """

    strategy: str = DEFAULT_STRATEGY
    mode: str = "single"  # single: one family per call (DSA's 'S') | all: every family | idc: see above
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    flip_p: float = 0.5
    scale_ratio: float = 1.2
    rotate_deg: float = 15.0
    rrc_min_area: float = 0.08  # torchvision's RandomResizedCrop default scale (0.08, 1)
    align_corners: bool = False  # DC/DSA's grid_sample default (MTT's copy uses True)
    families: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(f for f in self.strategy.lower().split("_") if f and f != "none")
        bad = [f for f in names if f not in FAMILIES]
        if bad:
            raise CondenseError(f"Unknown augmentation famil{'ies' if len(bad) > 1 else 'y'} {bad} in strategy "
                                f"'{self.strategy}'. Use names from {', '.join(FAMILIES)} joined by '_'.")
        if self.mode not in ("single", "all", "idc"):
            raise CondenseError(f"Augmentation mode must be 'single', 'all' or 'idc', not '{self.mode}'.")
        self.families = names

    def without(self, family: str) -> "DSA":
        """The same augmentation minus one family (e.g. no flip for digits)."""
        kept = "_".join(f for f in self.families if f != family) or "none"  # keeps the mode below
        return DSA(kept, self.mode, self.brightness, self.saturation, self.contrast, self.crop_ratio,
                   self.cutout_ratio, self.flip_p, self.scale_ratio, self.rotate_deg, self.rrc_min_area,
                   self.align_corners)

    # ---- sampling -------------------------------------------------------------------------

    def sample(self, batch: int, generator: torch.Generator, size: int, per_sample: bool = True,
               tensors: torch.Generator | None = None) -> AugParams:
        """Draw parameters for `batch` images of `size` x `size` (one shared draw if not per_sample).

        generator: the host's stream (which family to apply). tensors: the stream the parameter
        tensors are drawn from, on its own device (default: `generator`); a device generator
        puts them where the images are, with no copy per step."""
        if not self.families:
            return AugParams((), batch if per_sample else 1)
        n = batch if per_sample else 1
        if self.mode == "single":
            chosen = [self.families[int(torch.randint(len(self.families), (1,), generator=generator))]]
        elif self.mode == "idc":
            always = [f for f in ("flip", "color") if f in self.families]
            rest = [f for f in self.families if f not in ("flip", "color", "cutout")]
            one = [rest[int(torch.randint(len(rest), (1,), generator=generator))]] if rest else []
            chosen = always + one + (["cutout"] if "cutout" in self.families else [])
        else:
            chosen = list(self.families)
        ops: list[tuple[str, dict[str, Tensor]]] = []
        for fam in chosen:
            ops += self._sample_family(fam, n, tensors or generator, size)
        return AugParams(tuple(ops), n)

    def _sample_family(self, fam: str, n: int, g: torch.Generator, size: int) -> list[tuple[str, dict[str, Tensor]]]:
        dev = g.device
        u = lambda *shape: torch.rand(*(shape or (n,)), generator=g, device=dev)  # noqa: E731
        if fam == "color":
            return [("brightness", {"u": u()}), ("saturation", {"u": u()}), ("contrast", {"u": u()})]
        if fam == "crop":
            s = int(size * self.crop_ratio + 0.5)
            return [("crop", {"shift": torch.randint(-s, s + 1, (n, 2), generator=g, device=dev).float()})]
        if fam == "cutout":
            side = int(size * self.cutout_ratio + 0.5)
            centre = torch.randint(0, size + (1 - side % 2), (n, 2), generator=g, device=dev)
            return [("cutout", {"centre": centre, "side": torch.full((n,), side, device=dev)})]
        if fam == "flip":
            return [("flip", {"flip": u() < self.flip_p})]
        if fam == "scale":
            r = self.scale_ratio
            return [("scale", {"factor": u(n, 2) * (r - 1 / r) + 1 / r})]
        if fam == "rotate":
            return [("rotate", {"degrees": (u() - 0.5) * 2 * self.rotate_deg})]
        if fam == "rrc":
            area = u() * (1 - self.rrc_min_area) + self.rrc_min_area
            ratio = torch.exp((u() * 2 - 1) * math.log(4 / 3))
            wh = torch.stack([(area * ratio).sqrt(), (area / ratio).sqrt()], 1).clamp(max=1.0)  # box side fractions
            centre = (u(n, 2) * 2 - 1) * (1 - wh)  # in [-1, 1] coordinates
            return [("rrc", {"wh": wh, "centre": centre})]
        raise AssertionError(fam)

    # ---- application ----------------------------------------------------------------------

    def __call__(self, x: Tensor, params: AugParams) -> Tensor:
        """x: [B, C, H, W] -> augmented [B, C, H, W]; differentiable in x."""
        if params.per_sample and params.batch != x.shape[0]:
            raise ValueError(f"augmentation parameters were drawn for {params.batch} images, got {x.shape[0]}")
        for name, p in params.ops:
            p = {k: v if v.device == x.device else v.to(x.device, non_blocking=True) for k, v in p.items()}
            x = getattr(self, "_" + name)(x, p)
        return x

    def apply_random(self, x: Tensor, generator: torch.Generator, tensors: torch.Generator | None = None) -> Tensor:
        """Independent per-sample augmentation (the evaluation and inner-loop setting)."""
        return self(x, self.sample(x.shape[0], generator, x.shape[-1], per_sample=True, tensors=tensors))

    @staticmethod
    def _per(v: Tensor, b: int) -> Tensor:
        return v.expand(b, *v.shape[1:]) if v.shape[0] == 1 else v

    def _brightness(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return x + ((p["u"] - 0.5) * self.brightness).view(-1, 1, 1, 1)

    def _saturation(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        m = x.mean(dim=1, keepdim=True)
        return (x - m) * (p["u"] * self.saturation).view(-1, 1, 1, 1) + m

    def _contrast(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (p["u"] + self.contrast).view(-1, 1, 1, 1) + m

    def _crop(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return translate(x, self._per(p["shift"], x.shape[0]), padding_mode="zeros",
                         align_corners=self.align_corners)

    def _cutout(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        h, w = x.shape[-2:]
        side = p["side"].view(-1, 1)
        lo = p["centre"] - side // 2  # [n, 2] top-left corner (may lie outside; clipped by the range test)
        rows = torch.arange(h, device=x.device).view(1, -1)
        cols = torch.arange(w, device=x.device).view(1, -1)
        in_r = (rows >= lo[:, :1]) & (rows < lo[:, :1] + side)
        in_c = (cols >= lo[:, 1:]) & (cols < lo[:, 1:] + side)
        keep = ~(in_r[:, :, None] & in_c[:, None, :])  # [n, H, W]
        return x * keep[:, None].to(x.dtype)

    def _flip(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(3), x)

    def _scale(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        # DSA samples the output->input factor s; the content is therefore zoomed by 1/s.
        return scale(x, 1.0 / self._per(p["factor"], x.shape[0]), padding_mode="zeros",
                     align_corners=self.align_corners)

    def _rrc(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        wh, centre = self._per(p["wh"], x.shape[0]), self._per(p["centre"], x.shape[0])
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 1, 1] = wh[:, 0], wh[:, 1]
        theta[:, :, 2] = centre
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        # border: sample points between the last pixel centre and the box edge (a box reaching the image edge)
        # take the edge pixel, as cropping whole pixels and resizing does
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _rotate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return rotate(x, self._per(p["degrees"], x.shape[0]), padding_mode="zeros",
                      align_corners=self.align_corners)


def make_dsa(strategy: str, allow_flip: bool = True, mode: str = "single") -> DSA | None:
    """DSA for a strategy string, or None for 'none'; drops flip where the data forbids it."""
    aug = DSA(strategy, mode)
    if not allow_flip:
        aug = aug.without("flip")
    return aug if aug.families else None
