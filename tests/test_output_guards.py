"""Nothing a user owns is written over or deleted, and no limit or claim is taken on trust.

Real files, real CLI runs, the synthetic R-18 PSPNet served from a loopback mirror
(tests/support/media.py), videos made with PyAV, ONNX graphs built with ``onnx.helper``. Cases
about permissions run in a child process without root's privileges (:func:`unprivileged`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import psegzoo
from psegzoo import files, video
from tests.support.cli import REPO, cli
from tests.support.media import NAME, image, leftovers, served, write_video  # noqa: F401
from tests.support.served import mmseg_spec
from tests.support.synth import write_mmseg_checkpoint


def predict(*args, code=0):
    return cli("predict", "-m", NAME, *args, "-q", code=code)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def only_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def cached(served):  # noqa: F811
    """The served model in the module's cache, so the commands below need no --mirror."""
    psegzoo.convert_checkpoint(NAME, download=psegzoo.DownloadOptions(mirrors=[served.mirror], progress=False))


@pytest.fixture(scope="module")
def checkpoint(served):  # noqa: F811
    """A local copy of the served synthetic checkpoint (what --weights and convert read)."""
    return write_mmseg_checkpoint(mmseg_spec(), served.tmp / "local.pth")


@pytest.fixture(scope="module")
def clip(served):  # noqa: F811
    path = served.tmp / "clip.mkv"
    write_video(path, frames=3, size=(48, 64), fps=10)
    return path


# --------------------------------------------------------------------------------------------
# The one input guard
# --------------------------------------------------------------------------------------------


def test_the_input_guard_knows_a_file_by_its_inode_and_a_folder_by_its_real_path(tmp_path):
    src = tmp_path / "model.pth"
    src.write_bytes(b"weights")
    os.link(src, tmp_path / "hard.pth")
    (tmp_path / "soft.pth").symlink_to(src)
    (tmp_path / "other.pth").write_bytes(b"weights")  # equal bytes, another file
    for target in (src, tmp_path / "hard.pth", tmp_path / "soft.pth", tmp_path / "sub" / ".." / "model.pth"):
        assert files.overwrites_input(target, [src]) == src, target
    assert files.overwrites_input(tmp_path / "other.pth", [src]) is None
    assert files.overwrites_input(tmp_path / "new.pth", [src]) is None
    assert files.overwrites_input(src, [tmp_path / "missing.pth"]) is None
    labels = tmp_path / "labels"
    (labels / "a").mkdir(parents=True)
    (tmp_path / "via").symlink_to(labels, target_is_directory=True)
    guard = files.InputGuard([labels, src])
    for target in (labels, labels / "a" / "x.png", tmp_path / "via" / "new.png"):
        assert guard.overwritten_by(target) == labels, target
    assert guard.overwritten_by(tmp_path / "labels2" / "x.png") is None


def test_predict_never_replaces_a_hard_link_of_an_input(served, tmp_path):  # noqa: F811
    photo = tmp_path / "in" / "a.png"
    photo.parent.mkdir()
    Image.fromarray(image(1, 30, 40)).save(photo)
    out = tmp_path / "out"
    out.mkdir()
    os.link(photo, out / "a.png")  # the same file under the output's name
    before = photo.read_bytes()
    predict(photo, "-o", out)
    assert photo.read_bytes() == before and (out / "a.png").read_bytes() == before
    assert os.path.samefile(photo, out / "a.png")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_2.png"]


# --------------------------------------------------------------------------------------------
# convert and export never replace their source
# --------------------------------------------------------------------------------------------


def _links_of(source: Path, tmp_path: Path) -> list[Path]:
    hard, soft = tmp_path / "hard.pth", tmp_path / "soft.pth"
    os.link(source, hard)
    soft.symlink_to(source)
    return [source, hard, soft]


def test_convert_refuses_an_output_that_is_its_source(served, checkpoint, tmp_path):  # noqa: F811
    source = tmp_path / "model.pth"
    shutil.copyfile(checkpoint, source)
    before = source.read_bytes()
    for out in _links_of(source, tmp_path):
        line = only_error(cli("convert", source, "-o", out, "--model", NAME, code=1).stderr)
        assert str(out) in line and str(source) in line and "another name" in line
    assert source.read_bytes() == before and os.path.islink(tmp_path / "soft.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.pth", "model.pth", "soft.pth"]
    # Through the library too, and the default output of a .safetensors source is that source.
    with pytest.raises(psegzoo.OutputError, match="symbolic link to the source"):
        psegzoo.convert_checkpoint(source, tmp_path / "soft.pth", name=NAME)
    converted = psegzoo.convert_checkpoint(source, tmp_path / "model.safetensors", name=NAME)
    kept = converted.read_bytes()
    with pytest.raises(psegzoo.OutputError, match="is the source"):
        psegzoo.convert_checkpoint(converted, name=NAME)
    assert converted.read_bytes() == kept


def test_export_refuses_an_output_that_is_its_weights(served, checkpoint, tmp_path):  # noqa: F811
    pytest.importorskip("onnxscript")
    source = tmp_path / "model.pth"
    shutil.copyfile(checkpoint, source)
    before = source.read_bytes()
    for out in _links_of(source, tmp_path):
        line = only_error(cli("export", NAME, "--weights", source, "-o", out, "--no-check", code=1).stderr)
        assert str(out) in line and str(source) in line
    assert source.read_bytes() == before and os.path.islink(tmp_path / "soft.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.pth", "model.pth", "soft.pth"]


# --------------------------------------------------------------------------------------------
# A video's frame folder holds psegzoo's files only
# --------------------------------------------------------------------------------------------


def test_a_frame_folder_with_the_users_files_is_refused_untouched(served, clip, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    folder = out / "clip"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "000001.png").write_bytes(b"my own picture, named like a frame")
    (folder / "000009.png").write_bytes(b"another")
    before = tree(out)
    result = predict(clip, "-o", out, "--overlay", code=1)
    (line,) = error_lines(result.stderr)
    assert str(folder) in line and "000001.png" in line and "notes.txt" in line and "did not write" in line
    assert tree(out) == before and leftovers(out) == []  # no frame, video or temporary file


def test_only_recorded_unchanged_frames_are_replaced_or_removed(served, clip, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    predict(clip, "-o", out)
    folder = out / "clip"
    record = json.loads((folder / video.FRAMES_RECORD).read_text())
    assert sorted(record["files"]) == ["000000.png", "000001.png", "000002.png"]
    predict(clip, "-o", out, "--every", "2")  # its own frames: 000001 goes, the others are replaced
    assert sorted(p.name for p in folder.iterdir() if p.name != video.FRAMES_RECORD) == ["000000.png", "000002.png"]
    # A frame edited by the user is theirs now: the folder is refused and nothing changes.
    edited = folder / "000002.png"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(edited)
    before = tree(out)
    line = only_error(predict(clip, "-o", out, code=1).stderr)
    assert "000002.png" in line and "did not write" in line
    assert tree(out) == before
    # A folder of frames without a record (another program's, or an older psegzoo's) is refused too.
    (folder / video.FRAMES_RECORD).unlink()
    edited.unlink()
    assert "000000.png" in only_error(predict(clip, "-o", out, code=1).stderr)
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png"]


def test_a_file_where_the_frame_folder_goes_is_refused(served, clip, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip").write_text("a file of the user's")
    line = only_error(predict(clip, "-o", out, code=1).stderr)
    assert str(out / "clip") in line and "not a folder" in line
    assert (out / "clip").read_text() == "a file of the user's"


# --------------------------------------------------------------------------------------------
# The pixel limit holds for video frames
# --------------------------------------------------------------------------------------------


def test_max_pixels_refuses_a_video_before_decoding(served, clip, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    line = only_error(predict(clip, "-o", out, "--overlay", "--max-pixels", "3000", code=1).stderr)
    assert str(clip) in line and "64x48 = 3072 pixels" in line and "3000" in line and "--max-pixels" in line
    monkeypatch.setenv("PSEGZOO_MAX_PIXELS", "3071")
    line = only_error(predict(clip, "-o", out, code=1).stderr)
    assert "3072 pixels" in line and "3071" in line
    assert not out.exists() or list(out.iterdir()) == []
    predict(clip, "-o", out, "--max-pixels", "3072")  # at the limit: accepted
    assert (out / "clip" / "000002.png").is_file()


def test_every_decoded_frame_is_held_to_the_limit(tmp_path):
    """A raw H.264 stream whose header declares small frames and whose second part is larger:
    the header passes, the larger frames are refused as they are decoded, before conversion."""
    pytest.importorskip("av")
    small, large = tmp_path / "small.h264", tmp_path / "large.h264"
    write_video(small, frames=2, size=(16, 16), codec="libx264")
    write_video(large, frames=2, size=(64, 64), codec="libx264")
    mixed = tmp_path / "mixed.h264"
    mixed.write_bytes(small.read_bytes() + large.read_bytes())
    assert (video.probe(mixed).width, video.probe(mixed).height) == (16, 16)
    sizes = [f.rgb.shape[:2] for f in video.read_frames(mixed)]
    assert (64, 64) in sizes  # the decoder really changes size within the stream
    frames = video.read_frames(mixed, max_pixels=1000)
    with pytest.raises(psegzoo.VideoError, match=r"frame \d+ of 64x64 = 4096 pixels exceed the limit of 1000"):
        for _ in frames:
            pass


def test_a_bad_pixel_limit_is_one_error_before_any_download(served, tmp_path, monkeypatch):  # noqa: F811
    img = tmp_path / "a.png"
    Image.fromarray(image(0, 20, 30)).save(img)
    Image.fromarray(image(1, 20, 30)).save(tmp_path / "b.png")
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "home"))
    before = served.gets()
    for value in ("lots", "0", "-5"):
        monkeypatch.setenv("PSEGZOO_MAX_PIXELS", value)
        line = only_error(cli("predict", "-m", NAME, img, tmp_path / "b.png", "-o", tmp_path / "out", code=1).stderr)
        assert "PSEGZOO_MAX_PIXELS" in line and value in line
    assert served.gets() == before and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# --skip-existing redoes outputs that do not decode or have another size
# --------------------------------------------------------------------------------------------


def test_skip_existing_redoes_truncated_or_wrong_sized_outputs(served, clip, tmp_path):  # noqa: F811
    photo = tmp_path / "a.png"
    Image.fromarray(image(2, 30, 40)).save(photo)
    out = tmp_path / "out"
    args = (photo, clip, "-o", out, "--overlay", "--json")
    predict(*args)
    good = tree(out)
    assert "nothing to do" in cli("predict", "-m", NAME, *args, "--skip-existing").stderr
    damage = {
        "a_overlay.png": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        "a.png": lambda p: Image.new("P", (1, 1)).save(p),
        "a.json": lambda p: p.write_text(json.dumps({"width": 1, "height": 1})),
        "clip/000001.png": lambda p: Image.new("P", (1, 1)).save(p),
        "clip_overlay.mp4": lambda p: p.write_bytes(p.read_bytes()[:100]),
    }
    for name, spoil in damage.items():
        spoil(out / name)
        if name.startswith("clip/"):  # an edited frame is the user's: the folder is then refused, not redone
            line = only_error(cli("predict", "-m", NAME, *args, "--skip-existing", "-q", code=1).stderr)
            assert "000001.png" in line
            (out / name).write_bytes(good[name])
            continue
        result = cli("predict", "-m", NAME, *args, "--skip-existing", "--json")
        redone = [json.loads(x)["input"] for x in result.stdout.splitlines()]
        assert redone == [str(clip if name.startswith("clip") else photo)], name
        if name.endswith(".png"):  # the same model on the same input in this process: the same labels
            assert (out / name).read_bytes() == good[name], name
        elif name.endswith(".json"):
            assert (json.loads((out / name).read_text())["width"], json.loads(good[name])["width"]) == (40, 40)
        else:
            assert video.probe(out / name).frames == 3


# --------------------------------------------------------------------------------------------
# ONNX files: metadata is checked against the graph, and cannot crash the reader
# --------------------------------------------------------------------------------------------


def tiny_onnx(path: Path, channels: int, **replace: str) -> Path:
    """A 1x1 convolution graph (input -> logits with ``channels`` channels) carrying psegzoo
    metadata for the served cityscapes model (19 classes), with ``replace`` overriding entries."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from psegzoo.export import metadata

    entry = psegzoo.get_entry(NAME)
    info = metadata.OnnxInfo(entry=entry, dataset=psegzoo.get_dataset(entry.dataset), input_size=None, min_side=8,
                             precision="float32", lowres_output=False, opset=18, psegzoo_version="0",
                             exporter="onnx.helper")
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(channels, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", channels, "height", "width"])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    props = {**metadata.build(info), **replace}
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_an_onnx_graph_must_have_the_classes_its_metadata_claims(served, tmp_path):  # noqa: F811
    good = psegzoo.load_onnx(tiny_onnx(tmp_path / "good.onnx", 19), device="cpu")
    assert good.entry.name == NAME
    forged = tiny_onnx(tmp_path / "forged.onnx", 5)
    with pytest.raises(psegzoo.ExportError, match=r"claims to be .* 19 classes.*\[.*5.*\]"):
        psegzoo.load_onnx(forged, device="cpu")
    img = tmp_path / "a.png"
    Image.fromarray(image(0, 20, 30)).save(img)
    line = only_error(cli("predict", "--onnx", forged, img, "-o", tmp_path / "out", code=1).stderr)
    assert "forged.onnx" in line and "19 classes" in line
    assert not (tmp_path / "out").exists()


def test_deeply_nested_onnx_metadata_is_one_clean_error(served, tmp_path):  # noqa: F811
    deep = "[" * 200_000 + "]" * 200_000
    path = tiny_onnx(tmp_path / "deep.onnx", 19, manifest=deep)
    with pytest.raises(psegzoo.ExportError, match="nested too deeply"):
        psegzoo.load_onnx(path, device="cpu")
    img = tmp_path / "a.png"
    Image.fromarray(image(0, 20, 30)).save(img)
    line = only_error(cli("predict", "--onnx", path, img, "-o", tmp_path / "out", code=1).stderr)
    assert "deep.onnx" in line and "nested too deeply" in line


# --------------------------------------------------------------------------------------------
# Permissions: one clean line, as a user without root's privileges
# --------------------------------------------------------------------------------------------


def unprivileged() -> list[str]:
    """The command prefix that runs a child without the privileges that ignore permission bits.

    As root: ``setpriv --reuid=nobody ...`` where that user can run this interpreter, else root
    without any capability (``setpriv --bounding-set=-all``: permission bits, sticky folders and
    immutable files then apply as for any user). As any other user: nothing.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.fail("tests run as root need setpriv (util-linux) to drop privileges")
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*nobody, sys.executable, "-c", "import psegzoo"], capture_output=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), cwd="/", timeout=60)
    return nobody if probe.returncode == 0 else ["setpriv", "--bounding-set=-all"]


def run_unprivileged(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    index = cwd / "index.json"  # the served model's manifest where the child may read it
    if not index.exists():
        shutil.copyfile(os.environ["PSEGZOO_INDEX"], index)
        index.chmod(0o644)
    env = dict(os.environ, PYTHONPATH=str(REPO), PSEGZOO_INDEX=str(index), PSEGZOO_HOME=str(cwd / "home"))
    return subprocess.run([*unprivileged(), sys.executable, "-m", "psegzoo", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture
def shared(tmp_path_factory):
    """A folder every user may enter (pytest's own temporary folders are private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="psegzoo-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        for p in [path, *path.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(path)


def test_an_unreachable_or_unwritable_output_is_one_clean_line(served, checkpoint, shared):  # noqa: F811
    img = shared / "a.png"
    Image.fromarray(image(0, 20, 30)).save(img)
    img.chmod(0o644)
    weights = shared / "m.pth"
    shutil.copyfile(checkpoint, weights)
    weights.chmod(0o644)
    locked = shared / "locked"
    (locked / "out").mkdir(parents=True)
    locked.chmod(0)
    common = ("predict", "-m", NAME, "--weights", weights, img, "--device", "cpu", "-q")
    proc = run_unprivileged(*common, "-o", locked / "out", cwd=shared)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = only_error(proc.stderr)
    assert str(locked / "out") in line and "cannot be reached" in line and "--output" in line
    locked.chmod(0o755)

    # An existing output the user may not replace: immutable, or another user's in a sticky folder.
    sticky = shared / "sticky"
    sticky.mkdir()
    (sticky / "a.png").write_bytes(b"not yours")
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("nobody").pw_uid if unprivileged()[1] != "--reuid=nobody" else 0
        os.chown(sticky, owner, -1)
        os.chown(sticky / "a.png", owner, -1)
        sticky.chmod(0o1777)
        frozen = shared / "frozen"
        frozen.mkdir()
        frozen.chmod(0o777)
        (frozen / "a.png").write_bytes(b"immutable")
        immutable = subprocess.run(["chattr", "+i", str(frozen / "a.png")], capture_output=True).returncode == 0
        targets = [sticky] + ([frozen] if immutable else [])
    else:
        sticky.chmod(0o555)  # without root: a read-only folder
        targets = [sticky]
    for out in targets:
        before = (out / "a.png").read_bytes()
        proc = run_unprivileged(*common, "-o", out, cwd=shared)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = error_lines(proc.stderr)
        assert str(out / "a.png") in line and "cannot write" in line
        assert (out / "a.png").read_bytes() == before
        assert [p.name for p in out.iterdir()] == ["a.png"]  # no temporary file left behind
