"""CV-DD (Dataset Distillation via Committee Voting, 2025): SRe2L's recover loop voted on by a
prior-weighted committee of BatchNorm teachers, with replayable committee soft labels.

Each synthetic image starts as a 2x2 mosaic of real crops of its class (RDED-style "patches": the
crops the committee is most confident about) and is optimized, one IPC slot at a time for a batch of
classes, against 2 voters drawn from the committee, their losses weighted by softmax(prior / T):

    L = sum_{i in voters} w_i [ CE(f_i(aug(x)), y) + r_bn * sum_l g_l (||mu_l - mu_l*|| + ||var_l - var_l*||) ]

with aug = one random resized crop (area 0.08-1) and flip for the whole batch, then a random shift
(the shared recover loop, `condense.recover`), Adam (0.5, 0.9) at lr 0.25 with cosine decay, the
pixels clipped to the valid range after every step. Voters: at IPC 1 the two members with the
highest priors; up to as many slots as there are pairs, pair j of all pairs in a fixed order (CV-DD's
IPC 10 setting; slots cycle through them); beyond that a seeded random pair per slot (the official
draws are unseeded).

Labels (relabel, `condense.relabel`): for every epoch of the student, every batch's crops, flips and
CutMix are recorded with the whole committee's logits weighted by softmax(prior / T'), T' = 10, with
the teachers' BatchNorm on batch statistics (BSSL) and their running statistics left untouched. The
record is the set's side file; `condense eval synth.h5` replays it (protocol kd-replay), and
`--protocol kd-sre2l` evaluates the same images with the weighted committee online (mode M).

Priors (`prior`): each member's validation accuracy in percent (cheap, the default; the committee
holds its validation images out), `distill` (the paper's: the accuracy of a student trained on an
IPC 1 set that the member alone distilled and labelled, under kd-replay; measured once per committee
by `condense teachers --committee NAME --priors distill` and cached with it) or `equal`.
`members = "best"` is the single-teacher variant (SRe2L-style): the member with the highest prior
does everything; `members = "0,2"` keeps those members only.

Not as the official code: the patch generator is ours (the official repository ships the patches
only); at IPC 1 the voters are the two best priors for every dataset (the official code hard-codes
other pairs for CIFAR-10, CIFAR-100 and ImageNette); voter pairs beyond the cycle are seeded; labels
of mixed batches are computed on the mixed images (MixUp is not offered); BSSL normalizes over the
student's whole batch (the official code feeds the teachers halves of 8 images) and restores the
teachers' running statistics.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from algorithms.base import ALGORITHMS, AlgoConfig, Algorithm
from condense.augment import make_dsa
from condense.committee import inversion_spec, load_committee, load_distill_priors
from condense.errors import CondenseError
from condense.recover import Recover, RecoverConfig, hook_teachers, shift_and_flip
from condense.relabel import ReplayConfig, ensemble_logits, relabel
from condense.runtime import derive_seed, make_generator
from condense.synthetic import SyntheticSet


@dataclass
class CVDDConfig(AlgoConfig):
    iters: int = 0  # derived: IPC x class batches x recover_iters (0 = that; other values are refused)
    committee: str = ""  # teacher committee (assets/committees/<dataset>.toml); "" = the dataset's only one
    members: str = "all"  # all | best: the single-teacher variant (highest prior) | indices, e.g. "0" or "0,2"
    prior: str = "val"  # val: members' validation accuracy (%) | distill: the paper's score (cached, see below) | equal
    voters: int = 2  # committee members voting on each IPC slot (official: 2)
    prior_temperature: float = 5.0  # voters' weights softmax(prior / T) in the recover loop (official: 5)
    label_temperature: float = 10.0  # relabel weights softmax(prior / T') over the whole committee (official: 10)
    recover_iters: int = 4000  # Adam steps per IPC slot and class batch (official: 4000)
    lr: float = 0.25  # Adam learning rate, cosine to 0 (official)
    r_bn: float = 0.01  # weight of the BatchNorm-statistics term (official)
    first_bn_multiplier: float = 10.0  # the first BatchNorm layer's extra weight (official)
    jitter: int = 4  # random shift of up to this many pixels after the crop (official: 4 at 32 and 64 px)
    rrc_min: float = 0.08  # the recover loop's random resized crop: smallest area fraction (official 0.08; 1 = off)
    classes_per_batch: int = 0  # classes optimized together (official: 10 on CIFAR-10, 100 otherwise); 0 = all
    init: str = "patches"  # patches: 2x2 mosaics of confident real crops | noise: Gaussian
    patch_pool: int = 50  # real images per class whose crops compete for the mosaics (at least 4 x IPC are used)
    patch_crops: int = 5  # random crops per pooled image; the most confident one represents the image
    patch_min_area: float = 0.5  # the crops' smallest area fraction (ours; RDED-style crops of the object)
    relabel: bool = True  # record replayable labels (side file); False: evaluate under mode M only
    relabel_epochs: int = 300  # the student's epochs the record covers (protocol kd-replay: 300)
    relabel_batch: int = 128  # the student's batch (kd-replay: 128)
    relabel_augment: str = "rrc_flip"  # the student's augmentation (kd-replay: random resized crop + flip)
    relabel_cutmix: float = 1.0  # CutMix probability per batch (kd-replay: every batch)
    bssl: bool = True  # teachers label with batch statistics (CV-DD's relabel default), running stats kept

    def problems(self) -> list[str]:
        out = super().problems()
        indices = all(v.strip().isdigit() for v in self.members.split(","))
        if not (self.members in ("all", "best") or indices) or self.prior not in ("val", "distill", "equal") or \
                self.init not in ("patches", "noise"):
            out.append(f"members must be all, best or member indices (0,2), prior val, distill or equal, init "
                       f"patches or noise (got {self.members}, {self.prior}, {self.init})")
        if self.recover_iters < 1 or self.voters < 1 or self.patch_pool < 1 or self.patch_crops < 1:
            out.append("recover_iters, voters, patch_pool and patch_crops must be at least 1")
        if self.lr <= 0 or self.r_bn < 0 or self.jitter < 0 or min(self.prior_temperature, self.label_temperature) <= 0:
            out.append("lr and the temperatures must be positive, r_bn and jitter not negative")
        if not (0 < self.rrc_min <= 1 and 0 < self.patch_min_area <= 1):
            out.append("rrc_min and patch_min_area must be area fractions in (0, 1]")
        out += self.replay().problems()
        return out

    def replay(self) -> ReplayConfig:
        return ReplayConfig(self.relabel_epochs, self.relabel_batch, self.relabel_augment, self.relabel_cutmix)


def voter_sets(ipc: int, priors: list[float], voters: int, generator: torch.Generator) -> list[tuple[int, ...]]:
    """The voters of every IPC slot: at IPC 1 the `voters` members with the highest priors; up to IPC 10
    (CV-DD's IPC 10 setting) slot j takes combination j of all combinations, in a fixed order, cycling;
    beyond, a seeded random draw per slot."""
    m = len(priors)
    k = min(voters, m)
    if ipc == 1:
        return [tuple(sorted(sorted(range(m), key=lambda i: -priors[i])[:k]))]
    if ipc <= 10:
        pairs = list(itertools.combinations(range(m), k))
        return [pairs[j % len(pairs)] for j in range(ipc)]
    return [tuple(sorted(torch.randperm(m, generator=generator)[:k].tolist())) for _ in range(ipc)]


def weights(priors: list[float], temperature: float) -> list[float]:
    """softmax(prior / T): the committee's trust in each member."""
    return torch.softmax(torch.tensor(priors, dtype=torch.float64) / temperature, 0).tolist()


@ALGORITHMS.register("cvdd")
class CVDD(Algorithm[CVDDConfig]):
    name = "cvdd"
    Config = CVDDConfig
    protocol = "kd-replay"

    def __init__(self, cfg: CVDDConfig, real, ctx) -> None:
        super().__init__(cfg, real, ctx)
        self.spec = inversion_spec(real, cfg.committee, "CV-DD")
        c = real.info.num_classes
        self.per_batch = c if cfg.classes_per_batch <= 0 else min(cfg.classes_per_batch, c)
        self.chunks = math.ceil(c / self.per_batch)
        total = cfg.ipc * self.chunks * cfg.recover_iters
        if cfg.iters not in (0, total):
            raise CondenseError(f"CV-DD runs IPC x class batches x recover_iters = {cfg.ipc} x {self.chunks} x "
                                f"{cfg.recover_iters} = {total} steps; --iters {cfg.iters} does not match. Set "
                                f"recover_iters instead.")
        cfg.iters = total
        self.protocol = "kd-replay" if cfg.relabel else "kd-sre2l"  # what `condense eval synth.h5` uses
        self.recover_cfg = RecoverConfig(cfg.recover_iters, cfg.lr, cfg.r_bn, cfg.first_bn_multiplier, cfg.jitter,
                                         flip=False)

    # ---- setup -------------------------------------------------------------------------------

    def init(self) -> None:
        info, dev = self.real.info, self.ctx.device
        committee = load_committee(self.ctx.artifacts, self.real, self.spec)
        self.committee = committee
        priors = self.priors(committee)
        keep = list(range(len(priors)))
        if self.cfg.members == "best":
            keep = [max(keep, key=lambda i: priors[i])]
        elif self.cfg.members != "all":
            keep = sorted({int(v) for v in self.cfg.members.split(",")})
            if keep[-1] >= len(priors):
                raise CondenseError(f"--set members={self.cfg.members} names member {keep[-1]}, but committee "
                                    f"{self.spec.name} has {len(priors)} (0 to {len(priors) - 1}).")
        self.keep = keep
        self.priors_kept = [priors[i] for i in keep]
        self.teachers = [committee.nets[i].to(dev).eval() for i in keep]
        self.stats = hook_teachers(self.teachers, [self.spec.members[i][0] for i in keep], "CV-DD")
        self.voters = voter_sets(self.cfg.ipc, self.priors_kept, self.cfg.voters,
                                 make_generator(derive_seed(self.ctx.seed, "cvdd-voters")))
        self.aug = make_dsa("rrc_flip", info.allow_flip, "all")
        if self.aug is not None:
            self.aug.rrc_min_area = self.cfg.rrc_min
        self.synth = self.initial_images()  # [IPC, C, ch, H, W], model-input space
        self.current: Recover | None = None
        self.slot = -1

    def priors(self, committee: Any) -> list[float]:
        """Each member's prior in percent (so that the official temperatures apply unchanged)."""
        records = committee.records
        if self.cfg.prior == "equal":
            return [0.0] * len(records)
        if self.cfg.prior == "distill":
            return load_distill_priors(self.ctx.artifacts, self.real.info.name, committee)
        if any(r["val_accuracy"] is None for r in records):
            raise CondenseError(f"prior=val needs the members' validation accuracies, and committee "
                                f"{self.spec.name or '(ad hoc)'} holds out no validation images (val_per_class = 0). "
                                f"Use --set prior=equal, or a committee with val_per_class > 0.")
        return [100.0 * float(r["val_accuracy"]) for r in records]

    @torch.no_grad()
    def initial_images(self) -> torch.Tensor:
        info, g = self.real.info, self.ctx.device_generator
        shape = (self.cfg.ipc, info.num_classes, info.channels, info.size, info.size)
        if self.cfg.init == "noise":
            return torch.randn(shape, generator=g, device=self.ctx.device)
        return torch.stack([self.patches(c) for c in range(info.num_classes)], 1)

    @torch.no_grad()
    def patches(self, cls: int) -> torch.Tensor:
        """[IPC, ch, H, W]: 2x2 mosaics of class `cls`'s crops the committee is most confident about
        (lowest cross-entropy of the prior-weighted committee). Each pooled image offers
        `patch_crops` random crops and keeps its best; the best 4 x IPC images fill the mosaics."""
        cfg, size, g = self.cfg, self.real.info.size, self.ctx.device_generator
        need = 4 * cfg.ipc
        pool = self.real.images_of(cls, max(cfg.patch_pool, need), g)
        n = pool.shape[0]
        crop = make_dsa("rrc", False, "all")
        crop.rrc_min_area = cfg.patch_min_area  # type: ignore[union-attr]
        views = pool.repeat(cfg.patch_crops, 1, 1, 1)  # [crops * n, ...]: crop r of image i at r * n + i
        views = crop.apply_random(views, self.ctx.generator, tensors=g)  # type: ignore[union-attr]
        w = weights(self.priors_kept, cfg.label_temperature)
        logits = torch.cat([ensemble_logits(self.teachers, b, w) for b in views.split(512)])
        half = size // 2
        small = F.interpolate(views, size=(half, half), mode="bilinear", antialias=True, align_corners=False)
        ce = F.cross_entropy(logits, torch.full((len(logits),), cls, device=logits.device), reduction="none")
        ce = ce.view(cfg.patch_crops, n)
        best_crop = ce.argmin(0)  # per image
        best_ce = ce.gather(0, best_crop[None])[0]
        chosen = best_ce.argsort()[:need]  # the most confident images, best first
        tiles = small.view(cfg.patch_crops, n, *small.shape[1:])[best_crop[chosen], chosen]  # [4 IPC, ch, h/2, w/2]
        tiles = tiles.view(cfg.ipc, 2, 2, *tiles.shape[1:])
        mosaic = torch.cat([torch.cat([tiles[:, r, 0], tiles[:, r, 1]], 3) for r in range(2)], 2)
        if mosaic.shape[-1] != size:  # odd sizes
            mosaic = F.interpolate(mosaic, size=(size, size), mode="bilinear", align_corners=False)
        return mosaic

    # ---- one iteration: one Adam step of one (IPC slot, class batch) ---------------------------

    def slot_of(self, s: int) -> tuple[int, slice]:
        j, chunk = divmod(s, self.chunks)
        return j, slice(chunk * self.per_batch, min((chunk + 1) * self.per_batch, self.real.info.num_classes))

    def step(self, it: int) -> dict[str, float | torch.Tensor]:
        s = it // self.cfg.recover_iters
        j, classes = self.slot_of(s)
        if s != self.slot:
            self.slot, self.current = s, Recover(self.synth[j, classes], self.recover_cfg)
        voters = self.voters[j]
        w = weights([self.priors_kept[i] for i in voters], self.cfg.prior_temperature)
        targets = torch.arange(classes.start, classes.stop, device=self.ctx.device)
        pre = self.real.pre

        def objective(x: torch.Tensor) -> torch.Tensor:
            if self.aug is not None:  # one crop and flip for the whole batch, as torchvision on a batch tensor
                x = self.aug(x, self.aug.sample(x.shape[0], self.ctx.generator, x.shape[-1], per_sample=False))
            x = shift_and_flip(x, self.cfg.jitter, False, self.ctx.generator)
            loss = None
            for wi, i in zip(w, voters):
                term = F.cross_entropy(self.teachers[i](x), targets) + \
                    self.cfg.r_bn * self.stats[i].loss(self.cfg.first_bn_multiplier)
                loss = wi * term if loss is None else loss + wi * term
            return loss  # type: ignore[return-value]

        loss = self.current.step(objective)
        with torch.no_grad():  # the official code clips the optimized pixels to the valid range every step
            self.current.param.copy_(pre(pre.to_pixels(self.current.param)))
        if self.current.finished:
            with torch.no_grad():
                self.synth[j, classes] = self.current.param
        return {"loss": loss, "slot": float(s + 1)}

    # ---- results -----------------------------------------------------------------------------

    def synthetic(self) -> SyntheticSet:
        c = self.real.info.num_classes
        x = self.synth.transpose(0, 1).flatten(0, 1)  # class-major: class c's images at c*IPC .. (c+1)*IPC
        labels = torch.arange(c, device=x.device).repeat_interleave(self.cfg.ipc)
        s = self.make_set(x, labels)
        label_w = weights(self.priors_kept, self.cfg.label_temperature)
        done = self.slot == self.cfg.iters // self.cfg.recover_iters - 1 and self.current is not None \
            and self.current.finished
        if self.cfg.relabel and done:  # not for the driver's interim evaluations (hard labels)
            record = relabel(s.images.to(self.ctx.device), lambda b: ensemble_logits(self.teachers, b, label_w,
                                                                                      self.cfg.bssl),
                             self.cfg.replay(), make_generator(derive_seed(self.ctx.seed, "relabel")),
                             self.real.info.allow_flip)
            record.set_digest = s.replay_digest()
            record.source = (f"committee {self.spec.name} members {self.keep}, weights softmax(prior/"
                             f"{self.cfg.label_temperature:g}), BSSL {'on' if self.cfg.bssl else 'off'}")
            s.replay = record
        s.meta.teacher = json.dumps({"committee": self.spec.name, "members": self.keep,
                                     "weights": [round(v, 6) for v in label_w], "bssl": self.cfg.bssl})
        s.meta.config = {**s.meta.config, "committee_members": self.committee.records, "priors": self.priors_kept,
                         "voters": [list(v) for v in self.voters]}
        return s

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "synth": self.synth.cpu(), "slot": self.slot,
                "current": None if self.current is None else self.current.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.init()
        super().load_state_dict(state)
        self.synth = state["synth"].to(self.ctx.device)
        self.slot = state["slot"]
        if state["current"] is not None:
            j, classes = self.slot_of(self.slot)
            self.current = Recover(self.synth[j, classes], self.recover_cfg)
            self.current.load_state_dict(state["current"])
