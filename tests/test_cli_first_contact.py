"""What a new user meets first: mistakes refused before torch is imported, status lines while a model
loads, output paths on stdout in a terminal, and flags (never Python keywords) in error lines.

Mistakes are run as real processes with a ``torch`` package that refuses to import standing first on
``sys.path``: a command that imported torch before refusing the mistake would fail with "torch refused".
Terminal behaviour is run on pseudo-terminals (stdout and stderr each on its own).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

import psegzoo
from psegzoo.errors import PredictionError, flag, param, setting
from tests.support.cli import cli, run_script
from tests.support.media import image as scene
from tests.support.terminal import run_in_terminal
from tests.test_predictor_api import TINY, tiny  # noqa: F401  (the tiny model's fixture)

STYLE = re.compile(r"\x1b\[[0-9;]*m")  # colours: dropped
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")  # cursor movement and erasing: a line break in the text read


def screen(text: str) -> str:
    return ANSI.sub("\n", STYLE.sub("", text))


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """The environment of a process in which ``import torch`` fails."""
    root = tmp_path_factory.mktemp("no_torch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text('raise ImportError("torch refused")\n')
    return {"PYTHONPATH": str(root)}


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "street.png"
    Image.fromarray(scene(1, 40, 60)).save(path)
    return path


def _refused(proc, *words: str) -> str:
    assert "torch refused" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(("error:", "Error:", "Usage:", "Try ")) for line in lines), proc.stderr
    text = " ".join(lines)
    for word in words:
        assert word in text, proc.stderr
    return text


@pytest.mark.parametrize("mistake, code, words", [
    (["predict", "-m", TINY, "{missing}", "-o", "{out}"], 1, ["missing.png", "not found"]),
    (["predict", "-m", TINY, "{photo}", "--device", "bogus", "-o", "{out}"], 1, ["unknown device 'bogus'", "cuda:N"]),
    (["predict", "-m", TINY, "{photo}", "--device", "mps:1", "-o", "{out}"], 1, ["mps:1"]),
    (["predict", "-m", TINY, "{photo}", "-o", "{photo}"], 1, ["is a file", "-o/--output"]),
    (["predict", "-m", TINY, "{photo}", "-o", "{photo}/sub"], 1, ["cannot be created", "is a file"]),
    (["predict", "-m", "pspnet_nonexistent", "{photo}", "-o", "{out}"], 1, ["unknown model 'pspnet_nonexistent'"]),
    (["predict", "{photo}", "-o", "{out}"], 2, ["--model NAME"]),
    (["eval", "-m", "pspnet_nonexistent", "--data", "{tmp}"], 1, ["unknown model 'pspnet_nonexistent'"]),
    (["eval", "-m", TINY, "--data", "{tmp}", "--device", "bogus"], 1, ["unknown device 'bogus'"]),
    (["export", "pspnet_nonexistent"], 1, ["unknown model"]),
    (["convert", "pspnet_nonexistent"], 1, ["unknown model"]),
    (["download", "pspnet_nonexistent"], 1, ["unknown model"]),
])
def test_mistakes_are_refused_before_torch_is_imported(tiny, no_torch, photo, tmp_path, mistake, code, words):  # noqa: F811
    fill = {"missing": tmp_path / "missing.png", "out": tmp_path / "out", "photo": photo, "tmp": tmp_path}
    args = [a.format(**fill) for a in mistake]
    proc = run_script(*args, code=code, extra_env=no_torch, timeout=60)
    _refused(proc, *words)
    assert not (tmp_path / "out").exists()


def test_list_and_info_never_import_torch(tiny, no_torch):  # noqa: F811
    assert TINY in run_script("list", "tiny", extra_env=no_torch, timeout=60).stdout
    assert TINY in run_script("info", TINY, extra_env=no_torch, timeout=60).stdout


def test_device_names_parse_without_torch():
    assert str(psegzoo.parse_device("CUDA:3")) == "cuda:3" and psegzoo.parse_device(None).kind == "auto"
    for bad in ("bogus", "cuda:", "cuda:x", "cpu:1", "gpu"):
        with pytest.raises(PredictionError, match="use auto, cpu, cuda, cuda:N or mps"):
            psegzoo.parse_device(bad)


def test_paths_are_on_stdout_while_the_bar_draws_and_status_lines_on_stderr(tiny, tmp_path):  # noqa: F811
    images = []
    for i in range(3):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(scene(i, 40, 60)).save(images[-1])
    out = tmp_path / "out"
    run = run_in_terminal("-v", "predict", "-m", TINY, "--weights", tiny, *images, "-o", out, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    listed = [line.strip() for line in screen(run.stdout).splitlines() if line.strip()]
    assert listed == [str(out / f"img{i}.png") for i in range(3)]  # stdout is data, in a terminal too
    shown = screen(run.stderr)
    assert "importing PyTorch ..." in shown and f"building {TINY} on cpu ..." in shown
    assert "3 image(s) written to" in shown
    # a log record printed while a status line shows starts a line of its own
    assert any(line.startswith("info: fast paths on this CPU: ") for line in shown.splitlines()), shown
    assert "\x1b[2K" in run.stderr  # the status line is erased, not left behind

    quiet = run_in_terminal("predict", "-m", TINY, "--weights", tiny, *images, "-o", tmp_path / "q", "--device", "cpu",
                            "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert len([line for line in quiet.stdout.splitlines() if line.strip()]) == 3


def test_no_status_lines_when_stderr_is_not_a_terminal(tiny, photo, tmp_path):  # noqa: F811
    run = run_in_terminal("predict", "-m", TINY, "--weights", tiny, photo, "-o", tmp_path / "out", "--device", "cpu",
                          stderr_tty=False)
    assert run.returncode == 0, run.stderr
    assert "..." not in run.stderr and "\x1b" not in run.stderr
    assert screen(run.stdout).strip() == str(tmp_path / "out" / "street.png")


def test_errors_name_flags_on_the_command_line(tiny, photo, tmp_path):  # noqa: F811
    result = cli("predict", "-m", TINY, "--weights", tiny, photo, "--crop-size", "32", "-o", tmp_path / "out", code=1)
    assert "--crop-size and --stride apply to slide mode only; also pass --mode slide" in result.stderr
    assert "mode=" not in result.stderr and "crop_size" not in result.stderr
    result = cli("predict", "-m", TINY, "--weights", tiny, photo, "--mode", "slide", "--crop-size", "32",
                 "--stride", "48", "-o", tmp_path / "out", code=1)
    assert "--stride 48x48 is larger than --crop-size 32x32" in result.stderr
    with pytest.raises(PredictionError, match=r"crop_size and stride apply to slide mode only; also pass mode='slide'"):
        psegzoo.inference_settings(TINY, crop_size=32)


def test_a_keyword_renders_as_its_flag():
    assert flag("crop_size") == "--crop-size" and flag("amp_dtype") == "--half/--bf16" and flag("name") == "--model"
    exc = PredictionError(f"use {setting('mode', 'slide')} with {param('batch_windows')} and {setting('ms_flip', True)}")
    assert str(exc) == "use mode='slide' with batch_windows and ms_flip=True"
    assert exc.cli_message() == "use --mode slide with --batch-windows and --ms-flip"
