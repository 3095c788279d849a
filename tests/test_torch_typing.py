"""Type checkers see real signatures for cropcore_torch's public names (issue 16): mypy, run on
tests/typing/torch_example.py, finds no error there and reports a misspelt keyword or a wrong
argument count in a copy. (``cropcore_torch`` loads its torch modules lazily, through a module
``__getattr__``, which type checkers would otherwise read as ``Any``.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "typing" / "torch_example.py"
# torch itself is not checked (slow, and not ours): its names are Any to mypy here.
CONFIG = """\
[mypy]
follow_imports = silent
[mypy-torch.*]
follow_imports = skip
"""


def _mypy(tmp_path: Path, source: str) -> tuple[int, str]:
    program = tmp_path / "program.py"
    program.write_text(source)
    config = tmp_path / "mypy.ini"
    config.write_text(CONFIG)
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends" / "torch")]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            str(program),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def test_the_typed_example_is_clean(tmp_path):
    code, output = _mypy(tmp_path, EXAMPLE.read_text())
    assert code == 0, output
    assert "Success: no issues found" in output


NAMES = ["crop_and_resize", "crop_and_resize_grad_image", "crop_and_resize_grad_boxes", "crop2d"]


@pytest.mark.parametrize("name", [*NAMES, "CropAndResize", "Cropping2D"])
def test_each_public_name_has_a_real_type(tmp_path, name):
    _, output = _mypy(tmp_path, f"import cropcore_torch\nreveal_type(cropcore_torch.{name})\n")
    revealed = re.search(r'Revealed type is "(.*)"', output)
    assert revealed is not None, output
    assert revealed.group(1) != "Any"
    assert revealed.group(1).startswith("def ("), revealed.group(1)


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        (
            'cropcore_torch.crop_and_resize(image, boxes, box_indices, 7, data_fromat="nchw")',
            'Unexpected keyword argument "data_fromat" for "crop_and_resize"',
        ),
        (
            "cropcore_torch.CropAndResize((7, 7), box=boxes)",
            'Unexpected keyword argument "box" for "CropAndResize"',
        ),
        (
            "cropcore_torch.crop2d(image, 1, 'channels_first', 'extra')",
            'Too many arguments for "crop2d"',
        ),
        (
            "cropcore.crop_and_resize(image, boxes, box_indices, 7, validate=False)",
            'Unexpected keyword argument "validate" for "crop_and_resize"',
        ),
    ],
)
def test_mypy_reports_mistakes(tmp_path, mistake, message):
    code, output = _mypy(tmp_path, EXAMPLE.read_text() + mistake + "\n")
    assert code == 1, output
    assert message in output
