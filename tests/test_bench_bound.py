"""bench/extract_bound.py: its decode-alone side decodes every image through extract's own decoders."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import extract_bound  # noqa: E402


def test_decode_alone_decodes_every_image_with_extracts_defaults(image_tree):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "extract_bound.py"), "--child", "decode",
                           str(image_tree)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    from cnncodes.extract import runner
    from cnncodes.extract.recipe import RunOptions

    settings = runner.Settings.of(RunOptions(progress=False))
    assert result["images"] == len(list(image_tree.rglob("*.png"))) == 12
    assert (result["workers"], result["batch"]) == (settings.workers, settings.batch_size)
    assert {"seconds", "cpu"} <= set(result)  # figures, not asserted: a 12-image decode may take under a clock tick


def test_bound_adds_the_time_an_image_spends_in_each_stage():
    assert extract_bound.bound(300.0, 600.0) == 200.0  # 1/300 + 1/600 s an image


def test_model_alone_counts_the_images_of_each_forward_pass():
    """Model alone feeds batches of extract's decoded size and counts what comes back, a forward pass at a time
    (fp32 runs them 2 at a time): the images timed are those run after its warm passes, not batches x passes."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "extract_bound.py"), "--child", "model", "fp32", "16"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    from cnncodes.extract import runner
    from cnncodes.extract.recipe import RunOptions

    settings = runner.Settings.of(RunOptions(device="cpu", precision="fp32", progress=False))
    fed, warm_passes = (4 + 16 // settings.batch_size) * settings.batch_size, 4  # 4 warm batches, then 16 images
    assert result["images"] == fed - warm_passes * settings.forward_batch == 24
    assert "in passes of 2" in result["settings"]
