"""CV-DD's distil-and-evaluate priors: how good each committee member is as a distiller.

The paper weighs its committee by each member's score when it distils and labels a set alone (the
official code hard-codes these numbers per dataset; its issue #1 says how they were made). Here they
are measured: for every member, CV-DD at IPC 1 with that member only (`members = i`, its preset
otherwise), then one student under the set's own protocol (kd-replay: the member's replayed labels);
the prior is that student's test accuracy in percent. The result is cached with the committee
(`condense.committee.priors_path`) and read by `--set prior=distill`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from condense.artifacts import Artifacts
from condense.committee import Committee, save_distill_priors
from condense.data import RealData
from condense.errors import CondenseError
from condense.progress import Reporter
from condense.synthetic import load
from evaluators.evaluate import make_settings
from evaluators.retrain import EvalSettings, evaluate_set


def measure_priors(real: RealData, committee: Committee, store: Artifacts, distil: Callable[[int, Path], None],
                   settings: EvalSettings, reporter: Reporter, how: dict) -> list[float]:
    """Distil with each member alone (`distil(i, path)`), evaluate, cache and return the priors (%)."""
    priors = []
    with tempfile.TemporaryDirectory(prefix="condense-priors-") as tmp:
        for i, member in enumerate(committee.records):
            path = Path(tmp) / f"member{i}.h5"
            distil(i, path)
            res = evaluate_set(load(path), real, settings, reporter, label=f"member {i} ({member['arch']})")[0]
            priors.append(round(100 * sum(res.accs) / len(res.accs), 2))
            reporter.log(f"prior of member {i} ({member['arch']}): {priors[-1]:.2f}")
    path = save_distill_priors(store, real.info.name, committee, priors,
                               {**how, "protocol": settings.protocol.name, "runs": settings.runs})
    reporter.log(f"cached the priors in {path}")
    return priors


def measure_with(real: RealData, committee: Committee, store: Artifacts, preset: str | None, overrides: dict,
                 reporter: Reporter, distil: Callable[[int, Path, dict], None]) -> list[float]:
    """`condense teachers --committee NAME --priors`: CV-DD at IPC 1 with one member at a time
    (`distil(i, path, settings)` runs the CLI's distillation), evaluated under kd-replay, 1 run."""
    if not committee.spec.name:
        raise CondenseError("--priors measures the priors of a named committee; pass --committee NAME.")
    epochs = int(overrides["relabel_epochs"]) if "relabel_epochs" in overrides else None
    settings = make_settings("kd-replay", epochs, None, 1, 0, False)
    fixed = {"committee": committee.spec.name, "prior": "equal"}
    return measure_priors(real, committee, store, lambda i, path: distil(i, path, {**overrides, **fixed,
                                                                                   "members": str(i)}),
                          settings, reporter, {"ipc": 1, "preset": preset, "settings": overrides})
