"""Regenerate the golden plans in this folder: ``python plans/regenerate.py``.

For each dataset it runs ``autoseg plan`` (8 GB budget) and keeps ``fingerprint.json`` and
``plans.json`` under ``plans/<name>/`` (with ``3d_fullres_resenc``, planned by default), and
``plans_resenc.json``: the plan with the ResEnc M and L presets added (``autoseg plan --preset
resenc_m resenc_l``, each at its own GPU size). The tests re-plan from each stored fingerprint and
compare with the stored plan, so a planner change shows up as a reviewed diff of these files.
Datasets from ``../shared/data`` are skipped with a message when that folder is absent.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from autoseg.io.samples import DATA_DIR, make_single_case_dataset, sample_dataset_dir
from autoseg.pipeline import plan
from autoseg.planning import make_plan
from autoseg.workspace import Workspace

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
log = logging.getLogger("regenerate")
#: The presets of ``plans_resenc.json``.
GOLDEN_PRESETS = ("resenc_m", "resenc_l")


def _ct_dataset(tmp: Path) -> Path:
    ct = DATA_DIR / "fixtures" / "ct_sample"
    return make_single_case_dataset(ct / "example_ct_sm.nii.gz", ct / "example_seg.nii.gz", tmp / "ct_sample")


def main() -> None:
    """Plan every golden dataset and store its fingerprint and plan."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        sources = {
            "hippocampus_sample": sample_dataset_dir(),
            "ct_sample": _ct_dataset(tmp),
            "hippocampus": SHARED / "hippocampus",
            "brats2015_sample": SHARED / "brats2015_sample",
        }
        ws = Workspace(tmp / "work")
        for name, folder in sources.items():
            if not folder.is_dir():
                log.warning("skipping %s: %s not found", name, folder)
                continue
            fp, the_plan = plan(folder, ws, gpu_memory_gb=8.0, workers=2)
            out = HERE / name
            out.mkdir(exist_ok=True)
            for f in ("fingerprint.json", "plans.json"):
                shutil.copy(ws.dataset_dir(fp.dataset_name) / f, out / f)
            make_plan(fp, gpu_memory_gb=8.0, presets=GOLDEN_PRESETS).save(out / "plans_resenc.json")
            log.info("%s: %s", name, ", ".join(the_plan.configurations))


if __name__ == "__main__":
    main()
