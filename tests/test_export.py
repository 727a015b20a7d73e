"""ONNX export and prediction with onnxruntime, on real models, files and onnxruntime on the CPU.

One checkpoint architecture per method is exported with synthetic weights in mmseg's format
(tests/support/synth.py): PSPNet R-18 and DeepLabV3 R-18 (align_corners=True, through the CLI, as
an entry the built-in manifest does not have), UPerNet R-50 and PSANet R-50 (fixed size). Each file
is made once per module and shared; onnxruntime's logits are compared with ``seg.model(x)`` at sizes
that no pool scale divides.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import psegzoo
from psegzoo.api import Segmenter
from psegzoo.errors import ExportError, PredictionError
from psegzoo.export import ExportResult, OnnxSegmenter, export_onnx, load_onnx
from psegzoo.export import export as export_module
from psegzoo.export.engine import providers_for
from psegzoo.manifest import get_dataset
from psegzoo.models.layers import resize
from psegzoo.models.pooling import adaptive_avg_pool2d, adaptive_avg_pool2d_windows, averaging_matrix
from psegzoo.models.psa_mask import psa_mask, psa_mask_by_reshape
from tests.support.cli import REPO, cli
from tests.support.hub import scrub_environment
from tests.support.media import image as scene
from tests.support.precision import assert_same_prediction, clear_pixels
from tests.support.served import builtin_entry, mmseg_spec, write_index
from tests.support.synth import write_mmseg_checkpoint

PSP = "pspnet_r18-d8_512x1024_80k_cityscapes"
UPER = "upernet_r50_512x1024_40k_cityscapes"
PSA = "psanet_r50-d8_512x1024_40k_cityscapes"
DLV3_BASE = "deeplabv3_r18-d8_769x769_80k_cityscapes"
DLV3 = "deeplabv3_r18-d8_769x769_exporttest_cityscapes"  # the 769 entry, whole mode, low-res logits resized directly
SIZES = ((1, 64, 96), (2, 72, 88))  # (batch, h, w): 64x96, then sizes no pool scale (1, 2, 3, 6) divides
PSA_SIZE = (64, 96)
REL_TOL = 1e-4
SMALL_SCALE = ("128x64", (128, 64))  # a 40x60 image becomes 64x96


@dataclass
class Exported:
    seg: Segmenter
    path: Path
    session: ort.InferenceSession
    weights: Path
    result: ExportResult | None = None  # None when made through the CLI

    def run(self, x: torch.Tensor, output: str = "logits") -> np.ndarray:
        return self.session.run([output], {"input": x.numpy()})[0]


def normalized(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def torch_logits(seg: Segmenter, x: torch.Tensor, lowres: bool = False) -> np.ndarray:
    with torch.inference_mode():
        return (seg.model.forward_lowres(x) if lowres else seg.model(x)).numpy()


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def make_image(seed: int, h: int = 40, w: int = 60) -> np.ndarray:
    return scene(seed, h, w)


def read_labels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def graph_dims(path: Path) -> tuple[list, list]:
    model = onnx.load(str(path), load_external_data=False)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return [dims(v) for v in model.graph.input], [dims(v) for v in model.graph.output]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No PSEGZOO_* settings from the outside; a cache of the module's own."""
    mp = pytest.MonkeyPatch()
    scrub_environment(mp)
    mp.setenv("PSEGZOO_HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()


def export_entry(tmp: Path, name: str, **kwargs) -> Exported:
    weights = write_mmseg_checkpoint(mmseg_spec(name), tmp / f"{name}.pth")
    seg = psegzoo.load(name, weights=weights, device="cpu")
    result = export_onnx(seg, tmp / f"{name}.onnx", **kwargs)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    return Exported(seg, result.path, session, weights, result)


@pytest.fixture(scope="module")
def pspnet(env, tmp_path_factory) -> Exported:
    return export_entry(tmp_path_factory.mktemp("psp"), PSP)


@pytest.fixture(scope="module")
def upernet(env, tmp_path_factory) -> Exported:
    return export_entry(tmp_path_factory.mktemp("uper"), UPER)


@pytest.fixture(scope="module")
def psanet(env, tmp_path_factory) -> Exported:
    return export_entry(tmp_path_factory.mktemp("psa"), PSA, input_size=PSA_SIZE)


@pytest.fixture(scope="module")
def deeplab(env, tmp_path_factory) -> Exported:
    """DeepLabV3 R-18 769x769 (align_corners=True) as an extra-manifest entry whose pipeline resizes the
    head's logits directly, exported with the CLI; the extra manifest is not used afterwards."""
    tmp = tmp_path_factory.mktemp("dlv3")
    obj = builtin_entry(DLV3_BASE)
    obj["name"] = DLV3
    obj["test"].update(scale=[128, 64], mode="whole", crop_size=None, stride=None, resize_logits="direct")
    weights = write_mmseg_checkpoint(mmseg_spec(DLV3_BASE), tmp / "dlv3.pth")
    out = tmp / "dlv3.onnx"
    mp = pytest.MonkeyPatch()
    mp.setenv("PSEGZOO_INDEX", str(write_index(tmp / "index.json", [obj])))
    try:
        result = cli("export", DLV3, "--weights", weights, "-o", out)
        seg = psegzoo.load(DLV3, weights=weights, device="cpu")
    finally:
        mp.undo()
    assert result.stdout.splitlines() == [str(out)]
    assert "onnxruntime matches torch" in result.stderr
    return Exported(seg, out, ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), weights)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "street.png"
    Image.fromarray(make_image(3)).save(path)
    return path


# --------------------------------------------------------------------------------------------
# The export forms of adaptive pooling and PSANet's mask op, in PyTorch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(64, 96), (65, 97), (7, 5), (13, 1), (2, 37), (97, 129)])
@pytest.mark.parametrize("scale", [1, 2, 3, 6, (2, 3)])
def test_window_pooling_equals_adaptive_avg_pool2d(hw, scale):
    """Same windows as PyTorch's kernel: equal in float64 to rounding, at sizes no scale divides."""
    x = torch.randn(2, 4, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(hw[0] * 7 + hw[1]))
    expected = F.adaptive_avg_pool2d(x, scale)
    got = adaptive_avg_pool2d_windows(x, scale)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # eager calls keep PyTorch's kernel
    assert torch.equal(adaptive_avg_pool2d(x, scale), expected)


def test_averaging_matrix_windows_overlap_like_pytorch():
    """7 -> 3: windows [0, 3), [2, 5), [4, 7) (floor/ceil bounds overlap); a wrong bound would change them."""
    m = averaging_matrix(7, 3, dtype=torch.float64)
    expected = torch.zeros(3, 7, dtype=torch.float64)
    expected[0, 0:3] = 1 / 3
    expected[1, 2:5] = 1 / 3
    expected[2, 4:7] = 1 / 3
    assert torch.equal(m, expected)
    assert not torch.equal(averaging_matrix(8, 3, dtype=torch.float64)[:, :7], expected)


@pytest.mark.parametrize("shape", [(4, 6, 97, 97), (7, 5, 3, 3), (8, 9, 4, 6), (13, 11, 5, 2), (3, 3, 9, 9), (1, 1, 1, 1)])
@pytest.mark.parametrize("kind", ["collect", "distribute"])
def test_psa_mask_by_reshape_equals_the_gather(shape, kind):
    h, w, hm, wm = shape
    x = torch.randn(2, hm * wm, h, w, generator=torch.Generator().manual_seed(h * w))
    expected = psa_mask(x, kind, (hm, wm))
    assert torch.equal(psa_mask_by_reshape(x, kind, (hm, wm)), expected)
    if h * w > 1:  # the other type lays the masks out differently
        other = "distribute" if kind == "collect" else "collect"
        assert not torch.equal(psa_mask_by_reshape(x, other, (hm, wm)), expected)


# --------------------------------------------------------------------------------------------
# The same forms through onnxruntime, with symbolic sizes
# --------------------------------------------------------------------------------------------


class _PoolAndResize(torch.nn.Module):
    """Pyramid pooling back to the input size, both resize conventions, as the heads do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for scale in (1, 2, 3, 6):
            pooled = adaptive_avg_pool2d(x, scale)
            outs += [resize(pooled, x.shape[-2:], align_corners=False), resize(pooled, x.shape[-2:], align_corners=True)]
        half = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        outs += [resize(half, x.shape[-2:], align_corners=True), resize(half, x.shape[-2:], align_corners=False)]
        return torch.cat(outs, dim=1)


def test_pooling_and_resizes_export_with_symbolic_sizes(tmp_path):
    from torch.export import Dim

    path = tmp_path / "pool.onnx"
    example = torch.randn(2, 3, 40, 60)
    dims = {0: Dim("n", min=1, max=64), 2: Dim("h", min=8, max=4096), 3: Dim("w", min=8, max=4096)}
    with export_module._quiet_exporter():
        program = torch.export.export(_PoolAndResize(), (example,), dynamic_shapes=(dims,), strict=False)
        torch.onnx.export(program, (example,), str(path), dynamo=True, input_names=["x"], verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n, h, w in [(1, 64, 96), (2, 65, 97), (1, 13, 29), (3, 31, 17)]:
        x = normalized(n, h, w, seed=h)
        ref = _PoolAndResize()(x).numpy()
        out = session.run(None, {"x": x.numpy()})[0]
        assert relative_error(out, ref) < 1e-5
    # the graph is not a constant: another input gives another output
    assert relative_error(session.run(None, {"x": normalized(1, 64, 96, seed=9).numpy()})[0],
                          _PoolAndResize()(normalized(1, 64, 96)).numpy()) > 0.1


# --------------------------------------------------------------------------------------------
# Every method, against seg.model(x)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pspnet", "upernet", "deeplab"])
def test_dynamic_export_matches_torch_at_two_sizes(request, which):
    exported: Exported = request.getfixturevalue(which)
    inputs, outputs = graph_dims(exported.path)
    assert inputs == [["batch", 3, "height", "width"]]
    assert outputs[0] == ["batch", exported.seg.entry.num_classes, "height", "width"]
    for n, h, w in SIZES:
        x = normalized(n, h, w, seed=h)
        ref = torch_logits(exported.seg, x)
        assert relative_error(exported.run(x), ref) <= REL_TOL
    # negative control: the tolerance separates this input's logits from another's
    x = normalized(1, 64, 96, seed=1)
    assert relative_error(exported.run(normalized(1, 64, 96, seed=2)), torch_logits(exported.seg, x)) > 100 * REL_TOL


def test_export_result_reports_its_check(pspnet, upernet):
    for exported in (pspnet, upernet):
        r = exported.result
        assert r.input_size is None and r.precision == "float32" and r.outputs == ("logits",)
        assert r.checked_size == export_module.CHECK_SIZE and r.max_error is not None and 0 < r.max_error <= REL_TOL
        assert r.size_bytes == r.path.stat().st_size and r.opset >= 18
        assert str(r.path) in r.describe() and "dynamic height and width" in r.describe()
        assert not list(r.path.parent.glob("*.partial"))


def test_lowres_output_is_the_heads_own(deeplab):
    """Entries that resize the head's logits directly get them as a second output."""
    _, outputs = graph_dims(deeplab.path)
    assert [o.name for o in deeplab.session.get_outputs()] == ["logits", "logits_lowres"]
    assert outputs[1][:2] == ["batch", 19] and outputs[1][2:] != ["height", "width"]
    x = normalized(2, 72, 88, seed=5)
    low = deeplab.run(x, "logits_lowres")
    assert low.shape == (2, 19, 9, 11)
    assert relative_error(low, torch_logits(deeplab.seg, x, lowres=True)) <= REL_TOL


def test_psanet_exports_at_its_fixed_size(psanet):
    inputs, outputs = graph_dims(psanet.path)
    assert inputs == [["batch", 3, *PSA_SIZE]] and outputs == [["batch", 19, *PSA_SIZE]]
    assert psanet.result.input_size == PSA_SIZE and psanet.result.checked_size == PSA_SIZE
    assert any("64x96 inputs only" in note and "slide" in note for note in psanet.result.notes)
    x = normalized(2, *PSA_SIZE, seed=3)
    ref = torch_logits(psanet.seg, x)
    assert relative_error(psanet.run(x), ref) <= REL_TOL
    assert relative_error(psanet.run(normalized(2, *PSA_SIZE, seed=4)), ref) > 100 * REL_TOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        psanet.run(normalized(1, 72, 88))
    # the mask op is exported as pads and reshapes: no (H*W)^2-sized index gathers
    ops = {node.op_type for node in onnx.load(str(psanet.path), load_external_data=False).graph.node}
    assert "Softmax" in ops and not ops & {"GatherND", "GatherElements", "ScatterND"}


def test_psanet_refuses_dynamic_sizes(psanet):
    with pytest.raises(ExportError, match="fixed input size only.*static=True"):
        export_onnx(psanet.seg, psanet.path.with_name("x.onnx"), static=False)
    assert not psanet.path.with_name("x.onnx").exists()


def test_half_export_keeps_float32_io(pspnet, tmp_path):
    result = export_onnx(pspnet.seg, tmp_path / "half.onnx", half=True)
    assert result.precision == "float16" and result.max_error is not None
    assert 0 < result.max_error <= export_module.TOLERANCE["float16"]
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for n, h, w in SIZES:
        x = normalized(n, h, w, seed=h)
        ref = torch_logits(pspnet.seg, x)
        err = relative_error(session.run(["logits"], {"input": x.numpy()})[0], ref)
        assert 0 < err <= 1e-2
    assert load_onnx(result.path).info.precision == "float16"


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def test_metadata_says_what_the_graph_expects(pspnet):
    props = {p.key: p.value for p in onnx.load(str(pspnet.path), load_external_data=False).metadata_props}
    entry = pspnet.seg.entry
    cityscapes = get_dataset("cityscapes")
    assert props["name"] == PSP and props["dataset"] == "cityscapes"
    assert json.loads(props["classes"]) == list(cityscapes.classes)
    assert json.loads(props["palette"]) == [list(c) for c in cityscapes.palette]
    assert json.loads(props["mean"]) == list(entry.test.mean) and json.loads(props["std"]) == list(entry.test.std)
    test = json.loads(props["test"])
    assert test["scale"] == [2048, 1024] and test["mode"] == "whole" and test["align_corners"] is False
    assert json.loads(props["input"])["height_width"] == "dynamic"
    assert props["psegzoo_version"] == psegzoo.__version__ and props["precision"] == "float32"
    assert "dynamo=True" in props["exporter"]
    loaded = load_onnx(pspnet.path)
    # the file's own description of its entry, less origins: a manifest other than the built-in one never declares them
    assert entry.weights.origins and not loaded.entry.weights.origins
    assert loaded.entry == dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, origins=()))
    assert loaded.dataset == cityscapes and loaded.info.min_side == 9


def test_an_exported_file_runs_where_the_manifest_lacks_its_entry(deeplab):
    with pytest.raises(psegzoo.UnknownModelError):
        psegzoo.get_entry(DLV3)
    loaded = load_onnx(deeplab.path)
    assert loaded.entry.name == DLV3 and loaded.entry.test.resize_logits == "direct"
    assert loaded.entry.architecture.align_corners is True


# --------------------------------------------------------------------------------------------
# The test pipeline with onnxruntime as the engine
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    dict(scale=SMALL_SCALE[1]),
    dict(scale=SMALL_SCALE[1], flip=True, scales=(0.75, 1.0)),
    dict(scale=SMALL_SCALE[1], mode="slide", crop_size=(40, 56), stride=(24, 40)),
])
def test_onnx_predict_equals_torch_predict(pspnet, options):
    image = make_image(1, 50, 70)
    loaded = load_onnx(pspnet.path, device="cpu")
    assert isinstance(loaded, OnnxSegmenter)
    expected = pspnet.seg.predict(image, **options)
    got = loaded.predict(image, **options)
    # onnxruntime's kernels add in another order than torch's: near-ties may flip.
    assert_same_prediction(got.labels, expected)
    assert len(np.unique(got.labels)) > 1
    assert got.is_probs == expected.is_probs
    np.testing.assert_allclose(got.log_scores(), expected.log_scores(), atol=REL_TOL * np.abs(expected.log_scores()).max())


def test_onnx_predict_with_direct_lowres_resize(deeplab):
    image = make_image(2)
    expected = deeplab.seg.predict(image)
    got = load_onnx(deeplab.path).predict(image)
    assert_same_prediction(got.labels, expected)
    assert len(np.unique(got.labels)) > 1


def test_psanet_predicts_in_slide_mode_with_its_size(psanet):
    image = make_image(4, 60, 120)  # resized to 64x128: two 64x96 windows
    loaded = load_onnx(psanet.path)
    with pytest.raises(PredictionError, match=r"64x96 inputs only.*mode='slide', crop_size=\(64, 96\)"):
        loaded.predict(image, scale=(128, 64))
    expected = psanet.seg.predict(image, scale=(128, 64), mode="slide", crop_size=PSA_SIZE)
    got = loaded.predict(image, scale=(128, 64), mode="slide", crop_size=PSA_SIZE)
    assert_same_prediction(got.labels, expected)
    with pytest.raises(PredictionError, match="64x96 inputs only and got 32x64"):
        loaded.predict(image, scale=(64, 32), mode="slide", crop_size=PSA_SIZE)  # an image smaller than the crop


def test_onnx_segmenter_refuses_what_it_cannot_do(pspnet):
    loaded = load_onnx(pspnet.path)
    with pytest.raises(PredictionError, match="precision it was exported with"):
        loaded.predict(make_image(0), amp_dtype=torch.float16)
    with pytest.raises(ExportError, match="compile"):
        loaded.compile()
    with pytest.raises(PredictionError, match="at least 9 pixels, got 8x12"):
        loaded.predict(make_image(0), scale=(16, 8))
    with pytest.raises(ExportError, match="already an ONNX file"):
        export_onnx(loaded, pspnet.path.with_name("again.onnx"))
    with pytest.raises(ExportError, match="threads must be a positive integer"):
        load_onnx(pspnet.path, threads=0)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ExportError, match="no CUDA provider.*onnxruntime-gpu.*device='cpu'"):
            load_onnx(pspnet.path, device="cuda")
    assert load_onnx(pspnet.path, device="cpu", threads=1).engine.providers == ["CPUExecutionProvider"]
    with pytest.raises(ExportError, match="fast paths are for psegzoo.load"):
        loaded.use_fast_paths(True)


def test_cuda_index_reaches_onnxruntime_as_its_device_id():
    """Each torchrun process runs its file on its own GPU: cuda:N is the CUDA provider's device_id."""
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda:3", both) == [("CUDAExecutionProvider", {"device_id": 3}), "CPUExecutionProvider"]
    assert providers_for("CUDA:0", both) == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert providers_for("cuda", both) == both and providers_for("auto", both) == both
    assert providers_for(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ExportError, match="no CUDA provider"):
        providers_for("cuda:1", ["CPUExecutionProvider"])
    for bad in ("cuda:x", "mps:1", "tpu"):
        with pytest.raises(ExportError, match="not supported for ONNX files"):
            providers_for(bad, both)


def test_an_onnx_prediction_never_touches_torch_tuning(pspnet, tmp_path):
    """Loading and predicting with an ONNX file imports no CPU tuning code and leaves no tuning record."""
    home = tmp_path / "home"
    code = ("import sys, numpy as np, psegzoo\n"
            f"seg = psegzoo.load_onnx({str(pspnet.path)!r}, device='cpu')\n"
            "seg.predict(np.full((40, 60, 3), 90, np.uint8))\n"
            "list(seg.predict_many([np.full((30, 50, 3), 20, np.uint8)] * 2, batch_size=2))\n"
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('psegzoo.models.fast'))))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSEGZOO_")}
    env.update(PYTHONPATH=str(REPO), PSEGZOO_HOME=str(home))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "psegzoo.models.fast.tuning" not in loaded and loaded  # the fast-path classes load with the models
    assert not (home / "fast_paths.json").exists()


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_cli_predict_onnx_labels_equal_predict(pspnet, image_file, tmp_path):
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    cli("predict", "--model", PSP, "--weights", pspnet.weights, image_file, "-o", torch_out, "--scale", SMALL_SCALE[0],
        "--device", "cpu", "-q")
    result = cli("predict", "--onnx", pspnet.path, image_file, "-o", onnx_out, "--scale", SMALL_SCALE[0],
                 "--device", "cpu", "--logits")
    assert result.stdout.splitlines() == [str(onnx_out / "street.png")]
    labels = read_labels(onnx_out / "street.png")
    # onnxruntime and torch add in another order: compare where the written logits (float16) decide clearly.
    clear = clear_pixels(np.load(onnx_out / "street_logits.npy"), margin=1e-2)
    assert np.array_equal(labels[clear], read_labels(torch_out / "street.png")[clear]) and len(np.unique(labels)) > 1
    assert np.load(onnx_out / "street_logits.npy").shape == (19, 40, 60)


def test_cli_errors_are_one_line(pspnet, psanet, image_file, tmp_path):
    def error(*args, code: int = 1) -> str:
        lines = [line for line in cli(*args, code=code).output.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        return lines[0]

    assert "--mode slide --crop-size 64x96" in error("predict", "--onnx", psanet.path, image_file, "-o", tmp_path)
    assert "does not exist" in error("predict", "--onnx", tmp_path / "missing.onnx", image_file, "-o", tmp_path)
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"not a protobuf")
    assert "not an ONNX model" in error("predict", "--onnx", not_onnx, image_file, "-o", tmp_path)
    assert "--opset N" in error("export", PSP, "--weights", pspnet.weights, "--opset", "7", "-o", tmp_path / "x.onnx")
    assert "--static" in error("export", PSP, "--weights", pspnet.weights, "--input-size", "64x96", "-o", tmp_path / "x.onnx")
    assert "Invalid value for --input-size" in cli("export", PSP, "--input-size", "64x", "-o", tmp_path / "x.onnx", code=2).output
    assert not (tmp_path / "x.onnx").exists()
    assert "do not apply to --onnx" in cli("predict", "--onnx", pspnet.path, "--half", image_file, code=2).output
    assert "--model NAME" in cli("predict", image_file, code=2).output


def test_a_file_without_psegzoo_metadata_is_refused(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["input"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ExportError, match="no psegzoo metadata"):
        load_onnx(path)


def test_a_failed_check_writes_nothing(pspnet, tmp_path, monkeypatch):
    monkeypatch.setitem(export_module.TOLERANCE, "float32", 0.0)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier file")
    with pytest.raises(ExportError, match="differs from the torch model.*nothing written"):
        export_onnx(pspnet.seg, out, static=True, input_size=(64, 96))  # a fixed size exports faster
    assert out.read_bytes() == b"an earlier file" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# --------------------------------------------------------------------------------------------
# Without the optional packages
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("missing", "args", "expected"), [
    ("onnxruntime", ["predict", "--onnx", "model.onnx", "street.png"], "running an ONNX file needs onnxruntime"),
    ("onnxscript", ["export", PSP, "-o", "model.onnx"], "exporting to ONNX needs onnx, onnxscript and onnxruntime (onnxscript missing)"),
])
def test_missing_packages_give_one_line_saying_how_to_install(tmp_path, missing, args, expected):
    (tmp_path / "model.onnx").write_bytes(b"x")
    Image.fromarray(make_image(0)).save(tmp_path / "street.png")
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            f"from psegzoo.cli import main\nmain({args!r}, prog_name='psegzoo')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSEGZOO_")}
    env["PYTHONPATH"] = str(REPO)
    env["PSEGZOO_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and "pip install 'psegzoo[onnx]'" in lines[0]
    assert not (tmp_path / "home").exists()
