"""The command line: ``cropcore backends``, ``crop`` and ``demo``, end to end.

Most tests call :func:`cropcore.cli.main` in-process (fast); a few run ``python -m cropcore`` (and
the installed ``cropcore`` script) in a subprocess to check what a user's shell sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import cropcore
from cropcore import BackendInfo, hookimpl
from cropcore.cli import crop as crop_command
from cropcore.cli import main
from cropcore.cli.files import InputFileError, pixel_to_normalized, read_boxes
from cropcore.registry import registry

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("rich")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """``python -m cropcore ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "cropcore", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def expected_uint8(crops: np.ndarray) -> np.ndarray:
    """What the CLI promises to write: clip to [0, 255], round half up (exactly, in float64)."""
    return np.floor(np.clip(crops.astype(np.float64), 0, 255) + 0.5).astype(np.uint8)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        array = np.asarray(im)
    return array[:, :, None] if array.ndim == 2 else array


def save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 7 x 9 RGB PNG of random pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    return save(pixels, tmp_path / "photo.png")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A 2 x 2 grey PNG: [[0, 101], [200, 255]]."""
    return save(np.array([[0, 101], [200, 255]], np.uint8), tmp_path / "tiny.png")


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------------------------------
# --version, --help, entry points


def test_python_m_cropcore_prints_the_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cropcore {cropcore.__version__}"


def test_installed_console_script_runs():
    script = Path(sys.executable).with_name("cropcore")
    if not script.exists():
        pytest.skip("the cropcore console script is not installed next to this Python")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert cropcore.__version__ in result.stdout


def test_help_lists_every_command_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("backends", "crop", "demo", "examples:"):
        assert command in out


@pytest.mark.parametrize("command", ["backends", "crop", "demo"])
def test_each_command_help_has_examples(capsys, command):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"cropcore {command}" in out


def test_crop_help_documents_uint8_rounding_and_box_format(capsys):
    main(["crop", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "clipped to [0, 255] and rounded" in out
    assert "image,y1,x1,y2,x2" in out
    assert "y/(H-1)" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# cropcore backends


def test_backends_table_shows_numpy_available(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out
    assert "available" in out


def test_backends_table_prints_install_hints_verbatim(register_backend, capsys, monkeypatch):
    # rich would read "[extra]" as markup and drop it; the hint must survive as written.
    monkeypatch.setenv("COLUMNS", "250")
    register_backend(
        "fakeneeds", requires=("no_such_module_xyz",), install_hint='pip install "fakeneeds[gpu]"'
    )
    assert main(["backends"]) == 0
    assert 'pip install "fakeneeds[gpu]"' in capsys.readouterr().out


@pytest.mark.parametrize("columns", [80, 100, 160, 50])
def test_backends_table_fits_the_terminal_and_never_breaks_a_word(
    register_backend, capsys, monkeypatch, columns
):
    # Issue 18: at 80 columns the table broke "unavailabl|e" and '"cropcore[cu|py]"'.
    monkeypatch.setenv("COLUMNS", str(columns))
    register_backend(
        "fakeneeds", requires=("no_such_module_xyz",), install_hint='pip install "fakeneeds[gpu]"'
    )
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    hint = 'install fakeneeds: pip install "fakeneeds[gpu]"'
    assert hint in lines  # whole, on its own line, to be copied
    assert all(len(line) <= columns for line in lines if line != hint)
    words = {w.strip("│┃ ,:;") for line in lines for w in line.split()}
    assert "unavailable" in words
    assert "no_such_module_xyz" in words
    assert not any("…" in line for line in lines)


def test_backends_json_is_machine_readable():
    result = run_cli("backends", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["cropcore"] == cropcore.__version__
    numpy_backend = next(b for b in payload["backends"] if b["name"] == "numpy")
    assert numpy_backend["status"] == "available"
    assert numpy_backend["devices"] == ["cpu"]
    assert {"aliases", "version", "reason", "array_library", "ops"} <= set(numpy_backend)


@pytest.fixture
def broken_plugin_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess in which a backend plugin fails to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_cli_plugin.py").write_text("raise ImportError('needs libfoo.so.3')\n")
    info = site / "broken_cli_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-cli-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cropcore.backends]\nbroken = broken_cli_plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_backends_json_reports_a_broken_plugin_with_its_error(broken_plugin_env):
    result = run_cli("backends", "--json", env=broken_plugin_env)
    assert result.returncode == 0
    broken = next(b for b in json.loads(result.stdout)["backends"] if b["name"] == "broken")
    assert broken["status"] == "broken"
    assert "needs libfoo.so.3" in broken["reason"]


def test_backends_table_reports_a_broken_plugin_once(broken_plugin_env):
    result = run_cli("backends", env={**broken_plugin_env, "COLUMNS": "200"})
    assert result.returncode == 0
    assert "broken" in result.stdout
    assert "ImportError: needs libfoo.so.3" in result.stdout
    assert "libfoo" not in result.stderr  # the table says it; no warning besides


def test_crop_warns_about_a_broken_plugin_in_one_line(broken_plugin_env, tmp_path, tiny):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    result = run_cli(
        "crop", str(tiny), "--boxes", str(boxes), "-q", env=broken_plugin_env, cwd=tmp_path
    )
    assert result.returncode == 0
    warning = next(line for line in result.stderr.splitlines() if "libfoo" in line)
    assert warning.startswith("cropcore crop: warning: ")
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------
# cropcore crop: results


def crop(*args: object) -> int:
    """``main(["crop", *args])``, with paths and numbers as strings."""
    return main(["crop", *map(str, args)])


HEADER = "image,y1,x1,y2,x2\n"
HAND_DERIVED = [[0, 51, 101], [100, 139, 178], [200, 228, 255]]


def test_full_box_on_a_2x2_image_gives_the_hand_derived_crop(tmp_path, tiny):
    boxes = write_text(tmp_path / "boxes.csv", "image,y1,x1,y2,x2\ntiny.png,0,0,1,1\n")
    assert crop(tiny, "--boxes", boxes, "--size", 3, 3, "--out", tmp_path / "out") == 0
    # Bilinear between the four pixels; 50.5, 177.5 and 227.5 round half up.
    assert read(tmp_path / "out" / "tiny_0.png")[:, :, 0].tolist() == HAND_DERIVED


def test_pixel_box_on_a_2x2_image_is_the_full_box(tmp_path, tiny):
    entries = [{"image": "tiny.png", "y1": 0, "x1": 0, "y2": 1, "x2": 1}]
    boxes = write_text(tmp_path / "boxes.json", json.dumps(entries))
    out = tmp_path / "out"
    assert crop(tiny, "--boxes", boxes, "--coords", "pixels", "--size", 3, 3, "--out", out) == 0
    assert read(out / "tiny_0.png")[:, :, 0].tolist() == HAND_DERIVED


def test_csv_normalized_boxes_write_crop_and_resize_results(tmp_path, photo):
    rows = [
        (0.1, 0.2, 0.6, 0.8, "face"),
        (1.0, 1.0, 0.0, 0.0, "flipped"),
        (-0.5, -0.25, 0.5, 1.25, "outside"),
    ]
    lines = "".join(f"photo.png,{a},{b},{c},{d},{e}\n" for a, b, c, d, e in rows)
    boxes = write_text(tmp_path / "boxes.csv", "image,y1,x1,y2,x2,label\n" + lines)
    out = tmp_path / "out"
    options = ("--size", 5, 6, "--extrapolation-value", 17, "--out", out, "-q")
    assert crop(photo, "--boxes", boxes, *options) == 0

    boxes_array = [row[:4] for row in rows]
    crops = cropcore.crop_and_resize(
        read(photo)[None], boxes_array, [0, 0, 0], (5, 6), "bilinear", 17.0
    )
    for i, (*_, label) in enumerate(rows):
        np.testing.assert_array_equal(
            read(out / f"photo_{i}_{label}.png"), expected_uint8(crops[i])
        )


def test_json_pixel_boxes_on_two_images_of_different_sizes(tmp_path, photo):
    other_pixels = np.random.default_rng(1).integers(0, 256, (4, 11, 3), dtype=np.uint8)
    other = save(other_pixels, tmp_path / "other.png")
    entries = [
        {"image": "photo.png", "y1": 1, "x1": 2, "y2": 5, "x2": 8},
        {"image": 1, "y1": 3, "x1": 10, "y2": 0, "x2": 0, "label": "flip"},
        {"image": str(photo), "y1": -2, "x1": 0, "y2": 6, "x2": 8.5},
    ]
    boxes = write_text(tmp_path / "boxes.json", json.dumps({"boxes": entries}))
    out = tmp_path / "out"
    options = ("--coords", "pixels", "--size", 4, 4, "--method", "nearest", "--out", out, "-q")
    assert crop(photo, other, "--boxes", boxes, *options) == 0

    def expected(image: Path, e: dict) -> np.ndarray:
        pixels = read(image)
        h, w = pixels.shape[0] - 1, pixels.shape[1] - 1
        box = [e["y1"] / h, e["x1"] / w, e["y2"] / h, e["x2"] / w]
        crops = cropcore.crop_and_resize(pixels[None], [box], [0], (4, 4), "nearest")
        return expected_uint8(crops[0])

    np.testing.assert_array_equal(read(out / "photo_0.png"), expected(photo, entries[0]))
    np.testing.assert_array_equal(read(out / "other_1_flip.png"), expected(other, entries[1]))
    np.testing.assert_array_equal(read(out / "photo_2.png"), expected(photo, entries[2]))


def test_a_bad_box_file_is_a_library_error_not_the_command_lines(tmp_path):
    boxes = write_text(tmp_path / "b.csv", HEADER + "photo.png,0,x,1,1\n")
    with pytest.raises(InputFileError, match=r"b\.csv: line 2: x1 must be a number, got 'x'$"):
        read_boxes(boxes, ["photo.png"])
    assert issubclass(InputFileError, ValueError)


def test_pixel_coordinates_divide_by_size_minus_one():
    assert pixel_to_normalized((3, 4, 6, 8), 7, 9) == (0.5, 0.5, 1.0, 1.0)


def test_pixel_coordinates_on_a_single_row_image_pass_y_through():
    assert pixel_to_normalized((0, 4, 2, 8), 1, 9) == (0.0, 0.5, 2.0, 1.0)


def test_many_boxes_are_cropped_in_batches_with_the_same_results(tmp_path, photo, monkeypatch):
    monkeypatch.setattr(crop_command, "BOXES_PER_CALL", 2)
    rng = np.random.default_rng(4)
    boxes_array = rng.uniform(-0.2, 1.2, (5, 4))
    lines = "".join("photo.png," + ",".join(map(repr, box)) + "\n" for box in boxes_array.tolist())
    boxes = write_text(tmp_path / "boxes.csv", HEADER + lines)
    assert crop(photo, "--boxes", boxes, "--size", 3, 4, "--out", tmp_path / "o", "-q") == 0
    crops = cropcore.crop_and_resize(read(photo)[None], boxes_array, [0] * 5, (3, 4))
    for i in range(5):
        np.testing.assert_array_equal(
            read(tmp_path / "o" / f"photo_{i}.png"), expected_uint8(crops[i])
        )


def test_image_column_may_be_left_out_with_one_image(tmp_path, photo):
    boxes = write_text(tmp_path / "boxes.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, "--boxes", boxes, "--size", 2, 2, "--out", tmp_path / "o", "-q") == 0
    assert (tmp_path / "o" / "photo_0.png").exists()


def test_header_is_case_insensitive_and_extra_columns_are_ignored(tmp_path, photo):
    text = "Score\tX2\tY2\tX1\tY1\tImage\n0.9\t1\t1\t0\t0\tphoto.png\n"
    boxes = write_text(tmp_path / "boxes.tsv", text)
    assert crop(photo, "--boxes", boxes, "--size", 2, 2, "--out", tmp_path / "o", "-q") == 0
    assert (tmp_path / "o" / "photo_0.png").exists()


def test_output_names_are_numbered_zero_padded_with_safe_labels(tmp_path, photo):
    lines = "photo.png,0,0,1,1,\n" * 10 + "photo.png,0,0,1,1,a dog/cat?\n"
    boxes = write_text(tmp_path / "boxes.csv", "image,y1,x1,y2,x2,label\n" + lines)
    out = tmp_path / "out"
    assert crop(photo, "--boxes", boxes, "--size", 2, 2, "--out", out, "--format", "jpg", "-q") == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 11
    assert names[:2] == ["photo_00.jpg", "photo_01.jpg"]
    assert names[-1] == "photo_10_a_dog_cat.jpg"


@pytest.mark.parametrize(
    ("source_mode", "mode", "written_mode"),
    [
        ("L", "L", "L"),
        ("RGBA", "RGBA", "RGBA"),
        ("RGBA", "LA", "RGBA"),
        ("RGB", "P", "RGB"),
        ("RGB", "CMYK", "RGB"),
        ("L", "1", "L"),
    ],
)
def test_image_modes_become_l_rgb_or_rgba(tmp_path, source_mode, mode, written_mode):
    rgba = np.random.default_rng(2).integers(0, 256, (5, 5, 4), dtype=np.uint8)
    source = Image.fromarray(rgba).convert(source_mode).convert(mode)
    source.save(tmp_path / "in.tif")
    boxes = write_text(tmp_path / "boxes.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(tmp_path / "in.tif", "--boxes", boxes, "--size", 5, 5, "--out", tmp_path, "-q") == 0
    with Image.open(tmp_path / "in_0.png") as written:
        assert written.mode == written_mode
        # A full box at the image's own size reproduces it exactly.
        assert np.array_equal(np.asarray(written), np.asarray(source.convert(written_mode)))


def test_sixteen_bit_grey_is_scaled_to_eight_bits(tmp_path):
    save(np.array([[0, 65535], [257, 32896]], np.uint16), tmp_path / "deep.png")
    boxes = write_text(tmp_path / "boxes.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert (
        crop(tmp_path / "deep.png", "--boxes", boxes, "--size", 2, 2, "--out", tmp_path, "-q") == 0
    )
    assert read(tmp_path / "deep_0.png")[:, :, 0].tolist() == [[0, 255], [1, 128]]


# --------------------------------------------------------------------------------------------------
# cropcore crop: progress and quiet


def crop_two_images(tmp_path: Path, photo: Path, tiny: Path, *extra: str) -> int:
    boxes = write_text(tmp_path / "boxes.csv", "image,y1,x1,y2,x2\n0,0,0,1,1\n1,0,0,1,1\n")
    return crop(photo, tiny, "--boxes", boxes, "--size", 2, 2, "--out", tmp_path / "o", *extra)


def test_progress_bar_is_drawn_on_a_terminal(tmp_path, photo, tiny, capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    assert crop_two_images(tmp_path, photo, tiny) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err
    assert "cropped 2 image(s)" in captured.err
    assert "wrote 2 crop(s)" in captured.out


def test_no_progress_bar_when_not_a_terminal(tmp_path, photo, tiny, capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert crop_two_images(tmp_path, photo, tiny) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "wrote 2 crop(s) of 2x2 from 2 image(s)" in captured.out


def test_quiet_prints_nothing_even_on_a_terminal(tmp_path, photo, tiny, capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    assert crop_two_images(tmp_path, photo, tiny, "--quiet") == 0
    assert capsys.readouterr() == ("", "")
    assert len(list((tmp_path / "o").iterdir())) == 2


def test_image_without_boxes_gets_a_note(tmp_path, photo, tiny, capsys):
    boxes = write_text(tmp_path / "boxes.csv", "image,y1,x1,y2,x2\ntiny.png,0,0,1,1\n")
    assert crop(photo, tiny, "--boxes", boxes, "--size", 2, 2, "--out", tmp_path / "o") == 0
    assert f"note: no boxes for {photo}" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# cropcore crop: clear errors (exit status 2, one line naming the file and row, no traceback)

BAD_BOX_FILES = {
    "missing column": ("b.csv", "image,y1,x1,y2\nphoto.png,0,0,1\n", ["line 1", "column(s) x2"]),
    "no header": ("b.csv", "photo.png,0,0,1,1\n", ["line 1", "must be a header"]),
    "duplicate column": (
        "b.csv",
        "y1,x1,y2,x2,x2\n0,0,1,1,1\n",
        ["line 1", "x2", "more than once"],
    ),
    "non-numeric": ("b.csv", HEADER + "0,0,0,1,1\n0,0,abc,1,1\n", ["line 3", "x1", "'abc'"]),
    "empty value": ("b.csv", HEADER + "photo.png,0,,1,1\n", ["line 2", "x1"]),
    "too few fields": ("b.csv", HEADER + "photo.png,0,0,1\n", ["line 2", "4 fields"]),
    "unknown image": ("b.csv", HEADER + "dog.png,0,0,1,1\n", ["line 2", "dog.png"]),
    "index out of range": ("b.csv", HEADER + "3,0,0,1,1\n", ["line 2", "index 3", "[0, 1)"]),
    "nan": ("b.csv", HEADER + "photo.png,nan,0,1,1\n", ["line 2", "y1", "finite"]),
    "infinity": ("b.csv", HEADER + "photo.png,0,0,-inf,1\n", ["line 2", "y2", "finite"]),
    "float32 overflow": ("b.csv", HEADER + "photo.png,0,0,1,1e39\n", ["line 2", "x2", "float32"]),
    "empty file": ("b.csv", "", ["empty"]),
    "header only": ("b.csv", HEADER, ["no boxes"]),
    "bad json": ("b.json", '[{"y1": 0,}]', ["not valid JSON", "line 1, column 11"]),
    "json object without boxes": ("b.json", '{"y1": 0}', ['"boxes"']),
    "json entry not an object": ("b.json", "[[0, 0, 1, 1]]", ["boxes[0]", "object"]),
    "json missing key": ("b.json", '[{"y1": 0, "x1": 0, "y2": 1}]', ["boxes[0]", "x2"]),
    "json string": ("b.json", '[{"y1": "zero", "x1": 0, "y2": 1, "x2": 1}]', ["boxes[0]", "y1"]),
    "json bool": ("b.json", '[{"y1": 0, "x1": true, "y2": 1, "x2": 1}]', ["boxes[0]", "x1"]),
    "json NaN": (
        "b.json",
        '{"boxes": [{"y1": 0, "x1": NaN, "y2": 1, "x2": 1}]}',
        ["boxes[0]", "x1"],
    ),
    "json float image": (
        "b.json",
        '[{"image": 0.5, "y1": 0, "x1": 0, "y2": 1, "x2": 1}]',
        ["image"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_BOX_FILES))
def test_malformed_box_file_is_a_clear_error(tmp_path, photo, capsys, case):
    name, text, expected = BAD_BOX_FILES[case]
    boxes = write_text(tmp_path / name, text)
    assert crop(photo, "--boxes", boxes, "--out", tmp_path / "o") == 2
    err = one_line_error(capsys)
    assert err.startswith(f"cropcore crop: error: {boxes}: ")
    for part in expected:
        assert part in err
    assert not (tmp_path / "o").exists()  # nothing is written before the inputs are checked


def test_box_without_image_among_several_images_is_an_error(tmp_path, photo, tiny, capsys):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, tiny, "--boxes", boxes) == 2
    assert "b.csv: line 2: no image given" in one_line_error(capsys)


def test_ambiguous_image_name_is_an_error(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        save(np.zeros((2, 2), np.uint8), tmp_path / folder / "x.png")
    boxes = write_text(tmp_path / "b.csv", HEADER + "x.png,0,0,1,1\n")
    assert crop(tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--boxes", boxes) == 2
    assert "b.csv: line 2: image 'x.png' is ambiguous" in one_line_error(capsys)


def test_missing_image_file_is_a_clear_error(tmp_path, capsys):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(tmp_path / "nope.png", "--boxes", boxes) == 2
    assert "nope.png: image file not found" in one_line_error(capsys)


def test_file_that_is_not_an_image_is_a_clear_error(tmp_path, capsys):
    notes = write_text(tmp_path / "notes.png", "hello")
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(notes, "--boxes", boxes) == 2
    assert "notes.png: not an image file" in one_line_error(capsys)


def test_truncated_image_is_a_clear_error(tmp_path, capsys):
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(noise, tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(tmp_path / "cut.png", "--boxes", boxes, "--out", tmp_path / "o") == 2
    assert "cut.png: cannot read the image" in one_line_error(capsys)


def test_missing_box_file_is_a_clear_error(tmp_path, photo, capsys):
    assert crop(photo, "--boxes", tmp_path / "none.csv") == 2
    assert "none.csv: box file not found" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (["0", "3"], "must be a positive integer, got '0'"),
        (["3", "-2"], "must be a positive integer, got '-2'"),
        (["2.5", "3"], "must be a positive integer, got '2.5'"),
        (["3"], "expected 2 arguments"),
    ],
)
def test_bad_size_is_a_clear_error(tmp_path, photo, capsys, size, message):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, "--boxes", boxes, "--size", *size) == 2
    err = one_line_error(capsys)
    assert "--size" in err
    assert message in err


def test_unknown_backend_is_a_clear_error(tmp_path, photo, capsys):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, "--boxes", boxes, "--backend", "tpu", "--out", tmp_path / "o") == 2
    err = one_line_error(capsys)
    assert "backend='tpu'" in err
    assert "numpy" in err  # what is installed
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "value"), [("--method", "bicubic"), ("--format", "gif"), ("--coords", "inches")]
)
def test_unknown_choice_is_a_usage_error(tmp_path, photo, capsys, option, value):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, "--boxes", boxes, option, value) == 2
    assert f"invalid choice: '{value}'" in one_line_error(capsys)


def test_non_numeric_extrapolation_value_is_a_usage_error(tmp_path, photo, capsys):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, "--boxes", boxes, "--extrapolation-value", "white") == 2
    assert "must be a number, got 'white'" in one_line_error(capsys)


def test_result_too_large_is_refused_by_cropcore_validation(tmp_path, photo, capsys, cropcore_env):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", "1000")
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, "--boxes", boxes, "--size", 100, 100, "--out", tmp_path / "o") == 2
    err = one_line_error(capsys)
    assert f"{photo}: crop_and_resize's result would have shape (1, 100, 100, 3)" in err


def test_error_in_a_subprocess_is_one_line_without_traceback(tmp_path, photo):
    boxes = write_text(tmp_path / "b.csv", HEADER + "photo.png,0,x,1,1\n")
    result = run_cli("crop", str(photo), "--boxes", str(boxes), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"cropcore crop: error: {boxes}: line 2: x1 must be a number, got 'x'\n"
    assert not (tmp_path / "crops").exists()


@pytest.mark.parametrize("module", ["PIL.Image", "rich"])
def test_missing_cli_extra_says_how_to_install_it(tmp_path, photo, capsys, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    assert crop(photo, "--boxes", boxes) == 1
    assert 'pip install "cropcore[cli]"' in one_line_error(capsys)


def test_backends_json_needs_neither_rich_nor_pillow(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert main(["backends", "--json"]) == 0
    assert "numpy" in [b["name"] for b in json.loads(capsys.readouterr().out)["backends"]]


# --------------------------------------------------------------------------------------------------
# cropcore demo


def numpy_delegating_backend(
    name: str, *, array_library: str = "numpy", offset: float = 0.0, fails: bool = False
):
    """A plugin that crops through the numpy reference (plus ``offset``, a planted bug)."""
    module = types.ModuleType(f"cli_test_backend_{name}")
    module.image_types = []

    @hookimpl
    def cropcore_backend_info():
        return BackendInfo(name=name, array_library=array_library, version="0.0")

    @hookimpl
    def cropcore_crop_and_resize(call):
        module.image_types.append(type(call.image))
        if fails:
            raise RuntimeError("kernel launch failed")
        if array_library == "torch":
            import torch

            crops = cropcore.crop_and_resize(
                call.image.numpy(),
                call.boxes.numpy(),
                call.box_indices.numpy(),
                call.crop_size,
                call.method,
                call.extrapolation_value,
                backend="numpy",
            )
            return torch.from_numpy(crops + np.float32(offset))
        crops = cropcore.crop_and_resize(
            call.image,
            call.boxes,
            call.box_indices,
            call.crop_size,
            call.method,
            call.extrapolation_value,
            backend="numpy",
        )
        return crops + np.float32(offset)

    module.cropcore_backend_info = cropcore_backend_info
    module.cropcore_crop_and_resize = cropcore_crop_and_resize
    return module


@pytest.fixture
def extra_backend():
    """Register a backend for one test."""
    added = []

    def add(module: types.ModuleType) -> types.ModuleType:
        registry.register(module)
        added.append(module.cropcore_backend_info().name)
        return module

    yield add
    for name in added:
        registry.unregister(name)


def test_demo_writes_contact_sheet_crops_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--backend", "numpy"]) == 0
    stdout = capsys.readouterr().out
    printed = [Path(line) for line in stdout.splitlines() if line.startswith(str(out))]
    assert all(p.is_absolute() and p.is_file() for p in printed)
    assert out / "contact_sheet.png" in printed
    assert out / "demo.json" in printed
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width > 0
        assert sheet.height > 0
    summary = json.loads((out / "demo.json").read_text())
    assert summary["all_agree"] is True
    numpy_results = [r for r in summary["results"] if r["backend"] == "numpy"]
    assert {r["method"] for r in numpy_results} == {"bilinear", "nearest"}
    crop_files = [Path(f) for r in numpy_results for f in r["files"]]
    assert len(crop_files) == 2 * len(summary["boxes"])
    assert set(crop_files) <= set(printed)
    assert "agree with the numpy reference" in stdout


def test_demo_runs_each_backend_on_its_own_arrays_and_reports_agreement(
    tmp_path, capsys, extra_backend
):
    torch = pytest.importorskip("torch")
    plugin = extra_backend(numpy_delegating_backend("torchlike", array_library="torch"))
    assert main(["demo", "--out", str(tmp_path), "--backend", "torchlike"]) == 0
    assert plugin.image_types
    assert all(t is torch.Tensor for t in plugin.image_types)
    summary = json.loads((tmp_path / "demo.json").read_text())
    mine = [r for r in summary["results"] if r["backend"] == "torchlike"]
    assert [r["verdict"] for r in mine] == ["agrees", "agrees"]
    assert all(r["bit_identical"] and r["max_abs_difference"] == 0 for r in mine)
    assert "torchlike" in capsys.readouterr().out


def test_demo_exits_1_when_a_backend_disagrees(tmp_path, capsys, extra_backend):
    extra_backend(numpy_delegating_backend("offbyone", offset=1.0))
    assert main(["demo", "--out", str(tmp_path), "--backend", "offbyone"]) == 1
    stdout = capsys.readouterr().out
    assert "DIFFERS" in stdout
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["all_agree"] is False
    mine = [r for r in summary["results"] if r["backend"] == "offbyone"]
    assert [r["max_abs_difference"] for r in mine] == [pytest.approx(1.0, abs=1e-4)] * 2


def test_demo_exits_1_when_a_backend_fails_and_says_why(tmp_path, capsys, extra_backend):
    extra_backend(numpy_delegating_backend("crashy", fails=True))
    assert main(["demo", "--out", str(tmp_path), "--backend", "crashy"]) == 1
    stdout = " ".join(capsys.readouterr().out.split())
    assert "crashy (cpu) bilinear failed: RuntimeError: kernel launch failed" in stdout
    results = json.loads((tmp_path / "demo.json").read_text())["results"]
    assert {r["verdict"] for r in results if r["backend"] == "crashy"} == {"failed"}


def test_demo_tolerates_float_rounding_differences(tmp_path, extra_backend):
    extra_backend(numpy_delegating_backend("fma", offset=0.01))
    assert main(["demo", "--out", str(tmp_path), "--backend", "fma"]) == 0
    verdicts = {
        r["verdict"]
        for r in json.loads((tmp_path / "demo.json").read_text())["results"]
        if r["backend"] == "fma"
    }
    assert verdicts == {"agrees"}


def test_demo_skips_a_backend_whose_arrays_cannot_be_made(tmp_path, capsys, extra_backend):
    extra_backend(numpy_delegating_backend("alien", array_library="no_such_array_library"))
    assert main(["demo", "--out", str(tmp_path), "--backend", "alien"]) == 0
    out = capsys.readouterr().out
    assert "note: skipped alien (cpu): cannot make a no_such_array_library array" in out


def test_demo_runs_only_the_backends_asked_for_and_the_reference(tmp_path, extra_backend):
    extra_backend(numpy_delegating_backend("wanted"))
    extra_backend(numpy_delegating_backend("unwanted"))
    assert main(["demo", "--out", str(tmp_path), "--backend", "wanted"]) == 0
    results = json.loads((tmp_path / "demo.json").read_text())["results"]
    assert {r["backend"] for r in results} == {"numpy", "wanted"}


def test_demo_with_an_unknown_backend_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--backend", "tpu"]) == 2
    assert "--backend 'tpu' is not an installed backend" in one_line_error(capsys)


def test_python_m_cropcore_demo_in_a_subprocess_runs_every_backend(tmp_path):
    """What `make demo` runs: every available backend must agree with the reference."""
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "cropcore-demo" / "contact_sheet.png").is_file()
    assert str(tmp_path / "cropcore-demo" / "demo.json") in result.stdout
    # every backend that is available here and crops ran, on its own arrays (none skipped)
    available = {
        b.name
        for b in cropcore.backends(probe=True)
        if b.status == "available" and b.hook("crop_and_resize") is not None
    }
    summary = json.loads((tmp_path / "cropcore-demo" / "demo.json").read_text())
    assert {r["backend"] for r in summary["results"]} == available
    assert "cannot make a" not in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# cropcore crop: what a new user hits first (issue 18)


def test_a_failure_on_a_later_image_leaves_no_crops_behind(tmp_path, photo, capsys):
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(noise, tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    boxes = write_text(tmp_path / "b.csv", "image,y1,x1,y2,x2\n0,0,0,1,1\n1,0,0,1,1\n")
    out = tmp_path / "o"
    assert crop(photo, tmp_path / "cut.png", "--boxes", boxes, "--out", out) == 2
    assert "cut.png: cannot read the image" in one_line_error(capsys)
    assert not out.exists()  # made by the command, removed again


def test_a_failure_leaves_an_existing_output_folder_as_it_was(tmp_path, photo, capsys):
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(noise, tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    boxes = write_text(tmp_path / "b.csv", "image,y1,x1,y2,x2\n0,0,0,1,1\n1,0,0,1,1\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / "photo_0.png").write_bytes(b"an older crop")
    assert crop(photo, tmp_path / "cut.png", "--boxes", boxes, "--out", out) == 2
    assert sorted(p.name for p in out.iterdir()) == ["photo_0.png"]
    assert (out / "photo_0.png").read_bytes() == b"an older crop"


def test_crops_are_moved_in_and_the_staging_folder_removed(tmp_path, photo):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n0,0,0.5,0.5\n")
    out = tmp_path / "o"
    assert crop(photo, "--boxes", boxes, "--size", 3, 3, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo_0.png", "photo_1.png"]


def test_pixel_boxes_given_as_normalized_are_refused_with_a_hint(tmp_path, photo, capsys):
    # The help's JSON example uses pixel values; read as normalised, every sample of these boxes
    # lies below and right of the 7 x 9 image, and every crop would be blank.
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n2,3,5,7\n3,1,6,8\n")
    out = tmp_path / "o"
    assert crop(photo, "--boxes", boxes, "--size", 4, 4, "--out", out) == 2
    err = one_line_error(capsys)
    assert "no sample of any box falls inside its image" in err
    assert "--coords pixels" in err
    assert not out.exists()
    assert crop(photo, "--boxes", boxes, "--coords", "pixels", "--size", 4, 4, "--out", out) == 0


def test_one_box_outside_its_image_is_warned_about_and_cropped(tmp_path, photo, capsys):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n1.5,1.5,2.5,2.5\n")
    out = tmp_path / "o"
    assert crop(photo, "--boxes", boxes, "--size", 4, 4, "--out", out) == 0
    err = capsys.readouterr().err
    assert "warning:" in err
    assert "line 3: no sample of the box falls inside" in err
    assert "--coords pixels" in err
    assert (read(out / "photo_1.png") == 0).all()


def test_a_box_reaching_into_the_image_is_not_warned_about(tmp_path, photo, capsys):
    # Only the first sample (at the box's top-left corner, 0.99 of the way) is inside.
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0.99,0.99,3,3\n")
    assert crop(photo, "--boxes", boxes, "--size", 4, 4, "--out", tmp_path / "o") == 0
    assert "warning" not in capsys.readouterr().err


def test_the_whole_job_is_held_to_the_memory_limit(tmp_path, photo, capsys, cropcore_env):
    # The float32 result (12 MB) fits the 20 MB limit, and the call's own peak is too small to be
    # checked by the library; the job (8-bit crops, conversion, encoding) does not fit.
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", "20000000")
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    out = tmp_path / "o"
    assert crop(photo, "--boxes", boxes, "--size", 1000, 1000, "--out", out) == 2
    err = one_line_error(capsys)
    assert f"{photo}: cropping it to 1000x1000 needs about" in err
    assert "more than the 20.0 MB of CROPCORE_MAX_OUTPUT_BYTES" in err
    assert not out.exists()


def test_boxes_per_call_shrink_to_fit_the_memory_limit(tmp_path, photo, cropcore_env, monkeypatch):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", "2000000")
    calls = []
    real = cropcore.crop_and_resize

    def counting(image, boxes, *args, **kwargs):
        calls.append(len(boxes))
        return real(image, boxes, *args, **kwargs)

    monkeypatch.setattr(crop_command.cropcore, "crop_and_resize", counting)
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n" + "0,0,1,1\n" * 8)
    assert crop(photo, "--boxes", boxes, "--size", 100, 100, "--out", tmp_path / "o") == 0
    assert len(calls) > 1
    assert sum(calls) == 8
    assert len(list((tmp_path / "o").iterdir())) == 8


def test_to_uint8_converts_block_by_block_with_the_same_result(monkeypatch):
    from cropcore.cli import files

    values = np.random.default_rng(5).uniform(-20, 280, (3, 5, 7, 2)).astype(np.float32)
    values[0, 0, 0, 0] = np.nan
    values[1, 1, 1, 1] = 0.49999997
    monkeypatch.setattr(files, "TO_UINT8_BLOCK", 11)
    expected = expected_uint8(np.nan_to_num(values, nan=0.0))
    assert np.array_equal(files.to_uint8(values), expected)


@pytest.mark.parametrize("value", ["300", "-1", "nan", "inf"])
def test_extrapolation_value_outside_0_to_255_is_a_usage_error(tmp_path, photo, capsys, value):
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    out = tmp_path / "o"
    assert crop(photo, "--boxes", boxes, "--extrapolation-value", value, "--out", out) == 2
    err = one_line_error(capsys)
    assert f"must be a number from 0 to 255 (an 8-bit pixel value), got '{value}'" in err


def test_jpeg_output_of_an_rgba_image_notes_the_dropped_alpha(tmp_path, capsys):
    pixels = np.random.default_rng(4).integers(0, 256, (6, 6, 4), dtype=np.uint8)
    rgba = save(pixels, tmp_path / "rgba.png")
    boxes = write_text(tmp_path / "b.csv", "y1,x1,y2,x2\n0,0,1,1\n")
    out = tmp_path / "o"
    assert crop(rgba, "--boxes", boxes, "--format", "jpg", "--size", 3, 3, "--out", out) == 0
    assert f"note: {rgba} has an alpha channel, which JPEG cannot hold" in capsys.readouterr().err
    assert crop(rgba, "--boxes", boxes, "--format", "png", "--size", 3, 3, "--out", out) == 0
    assert "alpha" not in capsys.readouterr().err


def test_progress_bar_counts_crops_and_shows_the_time_left(
    tmp_path, photo, tiny, capsys, monkeypatch
):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    boxes = write_text(tmp_path / "b.csv", "image,y1,x1,y2,x2\n0,0,0,1,1\n0,0,0,1,1\n1,0,0,1,1\n")
    assert crop(photo, tiny, "--boxes", boxes, "--size", 2, 2, "--out", tmp_path / "o") == 0
    err = capsys.readouterr().err
    assert "3/3" in err
    assert "crops" in err
    assert "ETA" in err
