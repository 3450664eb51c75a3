"""The training guide's example runs as written, so it cannot rot.

The guide (docs/guides/training-mlx.md) starts from audio: its `sa3ckpt encode` command is run
on the bundled clips, then its python block is executed unchanged on the latents it wrote, in
a scratch folder that looks like the repository root (its `fixtures` is the repository's), so
the files land in the scratch folder. Then what it claims is checked: the batch is the
encoded clips, finite losses, the saved adapter passes `sa3ckpt validate --strict`, the base
weights were not touched, and the reloaded adapter on a fresh base is the trained one (to its
fp16 file precision).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlx.utils import tree_flatten

from sa3ckpt.adapters.injection import adapter_modules, trainable_parameters
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guides" / "training-mlx.md"


def training_section(page: Path = GUIDE) -> str:
    """The guide's text (the whole page is the training section)."""
    return page.read_text(encoding="utf-8")


def training_example(page: Path = GUIDE) -> str:
    """The first python code block of the training guide."""
    found = re.search(r"^```python\n(.*?)^```$", training_section(page), flags=re.S | re.M)
    assert found, "the training guide has no python block"
    return found.group(1)


def encode_command(page: Path = GUIDE) -> list[str]:
    """The arguments of the section's `$ sa3ckpt encode ...` line (the example's first step)."""
    found = re.search(r"^\$ sa3ckpt (encode .*)$", training_section(page), flags=re.M)
    assert found, "the training guide does not start from audio (no encode line)"
    return shlex.split(found.group(1))


@pytest.fixture
def ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The example's namespace after running it in a scratch repository root."""
    pytest.importorskip("soundfile")  # the audio extra: `sa3ckpt encode` reads the clips
    pytest.importorskip("soxr")
    (tmp_path / "fixtures").symlink_to(ROOT / "fixtures", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    encoded = subprocess.run(
        [sys.executable, "-m", "sa3ckpt", *encode_command()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert encoded.returncode == 0, encoded.stdout + encoded.stderr
    namespace: dict[str, Any] = {"__name__": "docs_training"}
    exec(
        compile(training_example(), "docs/guides/training-mlx.md (training example)", "exec"),
        namespace,
    )
    return namespace


def test_example_uses_the_real_loader_on_the_bundled_base() -> None:
    code = training_example()
    assert "load_dit(BASE)" in code and "build_dit" not in code
    base = re.search(r'^BASE = "(.+)"$', code, flags=re.M)
    assert base and (ROOT / base.group(1)).is_file(), "the example's base file is missing"


def test_docs_training_example_runs_as_written(ran: dict[str, Any], tmp_path: Path) -> None:
    batch = ran["batch"]  # the bundled clips, encoded by the guide's command
    assert [Path(p).name for p in batch.paths] == [
        "chirp-mono.safetensors",
        "tone-48k.safetensors",
        "tone-stereo.safetensors",
    ]
    assert np.array(batch.mask.sum(axis=1)).tolist() == [11, 9, 11]
    assert np.array(batch.seconds).tolist() == [1.0, 0.75, 1.0]
    losses = ran["losses"]
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    dit, fresh = ran["dit"], ran["fresh"]
    assert set(ran["ckpt"].tensors) == set(adapter_modules(dit))

    saved = tmp_path / "my-adapter.safetensors"
    result = run_cli("validate", "--strict", "--model", "tiny-medium", str(saved))
    assert result.returncode == 0, result.stdout + result.stderr

    trained, reloaded = trainable_parameters(dit), trainable_parameters(fresh)
    assert set(trained) == set(reloaded)
    for key, value in trained.items():  # the fp16 file holds the trained values, rounded once
        want = np.array(value).astype(np.float16).astype(np.float32)
        assert np.array_equal(np.array(reloaded[key]).astype(np.float32), want), key
    assert any(np.any(np.array(v)) for k, v in trained.items() if k.endswith("lora_B"))

    base = {k: v for k, v in tree_flatten(fresh.parameters()) if k not in reloaded}
    now = dict(tree_flatten(dit.parameters()))
    for key, value in base.items():  # training touched no base weight
        assert np.array_equal(np.array(now[key]), np.array(value)), key
