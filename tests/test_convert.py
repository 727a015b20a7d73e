"""Safe checkpoint reading, key mapping for every reference spec, safetensors cache files."""
from __future__ import annotations

import ast
import dataclasses
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from psegzoo import convert
from psegzoo.convert import (
    check_classes,
    convert_state_dict,
    load_converted,
    load_into,
    read_checkpoint,
    save_converted,
)
from psegzoo.errors import CheckpointError, OutputError, VerificationError
from psegzoo.models import build_segmentor, state_shapes
from tests.support.archs import mmseg_architecture, ssseg_architecture
from tests.support.synth import (
    load_specs,
    meta_state_dict,
    ssseg_legacy_key,
    synth_state_dict,
    write_mmseg_checkpoint,
    write_ssseg_checkpoint,
)
from tests.support.zoo import (
    builtin_manifest,
    entry_for_file,
    mmseg_arch,
    mmseg_spec_files,
    ssseg_arch,
    ssseg_spec_configs,
)

SPECS = load_specs()
R18B = "pspnet_r18b-d8_512x1024_80k_cityscapes_20201226_063116-26928a60.pth"
R18B_SPEC = SPECS.mmseg[SPECS.mmseg_index[R18B]]


def _meta_model(arch):
    with torch.device("meta"):
        return build_segmentor(arch)


def _used_mmseg(key: str) -> bool:
    return not (key.startswith("auxiliary_head.") or key.endswith(".num_batches_tracked"))


def _used_ssseg(key: str) -> bool:
    return not (key.startswith("auxiliary_decoder.") or key.endswith(".num_batches_tracked"))


def _load_strictly(arch, sd, fmt):
    """Convert ``sd`` and load it strictly (tensors assigned, no copies) into a fresh model of ``arch``."""
    model = _meta_model(arch)
    converted = convert_state_dict(sd, arch, state_shapes(model), fmt)
    load_into(model, converted, assign=True)
    return model, converted


# ---------------------------------------------------------------------------------------------
# Every reference spec, written in its published format, converts and loads strictly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec_id", sorted(SPECS.mmseg))
def test_every_mmseg_spec_loads_strictly(spec_id, tmp_path):
    file_name = mmseg_spec_files()[spec_id]
    arch = mmseg_arch(file_name)
    path = write_mmseg_checkpoint(SPECS.mmseg[spec_id], tmp_path / file_name)
    sd, meta, fmt = read_checkpoint(path)
    assert fmt == "mmseg"
    check_classes(meta, arch.num_classes)
    model, converted = _load_strictly(arch, sd, fmt)
    # every used tensor went to exactly one model key, unchanged; nothing else was taken
    used = {id(v) for k, v in sd.items() if _used_mmseg(k)}
    assert {id(v) for v in converted.values()} == used and len(converted) == len(used)
    assert all(p.device.type == "cpu" for p in model.state_dict().values())


@pytest.mark.parametrize("legacy", [False, True], ids=["bottleneck", "fuse_layer"])
@pytest.mark.parametrize("spec_id", sorted(SPECS.ssseg))
def test_every_ssseg_spec_loads_strictly(spec_id, legacy, tmp_path):
    config = ssseg_spec_configs()[spec_id]
    arch = ssseg_arch(config)
    path = write_ssseg_checkpoint(SPECS.ssseg[spec_id], tmp_path / f"{config}.pth", legacy=legacy)
    sd, meta, fmt = read_checkpoint(path)
    assert fmt == "ssseg" and meta == {"epoch": 60}
    if legacy:  # the renamed file has exactly the 2020 layout
        legacy_spec = SPECS.ssseg_legacy[spec_id]
        assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(s) for k, s, _ in legacy_spec}
    _, converted = _load_strictly(arch, sd, fmt)
    used = {id(v) for k, v in sd.items() if _used_ssseg(k)}
    assert {id(v) for v in converted.values()} == used


def test_ssseg_matches_mmseg_pspnet_mapping():
    """SSSeg weights renamed as documented equal mmseg PSPNet weights after conversion."""
    spec = SPECS.ssseg["ssseg_pspnet_r50_c19"]
    arch = ssseg_architecture("pspnet_resnet50os8_cityscapes")
    expected = state_shapes(_meta_model(arch))
    sd = synth_state_dict(spec)
    ours = convert_state_dict(sd, arch, expected, "ssseg")
    assert torch.equal(ours["head.bottleneck.conv.weight"], sd["ppm_net.bottleneck.0.weight"])
    assert torch.equal(ours["head.pyramid.3.bn.running_var"], sd["ppm_net.branches.3.2.running_var"])
    assert torch.equal(ours["head.classifier.bias"], sd["decoder.1.bias"])
    assert torch.equal(ours["backbone.stem.bn3.weight"], sd["backbone_net.stem.7.weight"])
    assert torch.equal(ours["backbone.layer2.0.shortcut.bn.bias"], sd["backbone_net.layer2.0.downsample.1.bias"])


# ---------------------------------------------------------------------------------------------
# The manifest: all 111 mmseg entries and the 12 SSSegmentation ones fit their specs
# ---------------------------------------------------------------------------------------------

def _structure(arch) -> dict:
    """The fields that decide the network, normalised (single ints vs 1-tuples)."""
    b, h = arch.backbone, arch.decode_head

    def tup(v):
        return None if v is None else (tuple(v) if isinstance(v, (tuple, list)) else (v,))

    return {
        "num_classes": arch.num_classes,
        "align_corners": arch.align_corners,
        "backbone": (b.type, b.depth, tuple(b.strides), tuple(b.dilations), tup(b.multi_grid), b.contract_dilation,
                     b.stem_channels, b.base_channels),
        "head": (h.type, tup(h.in_channels), tup(h.in_index), h.channels, tup(h.pool_scales), tup(h.dilations),
                 tup(h.mask_size), h.psa_type, h.compact, h.shrink_factor, h.normalization_factor, h.psa_softmax),
    }


def test_all_mmseg_entries_map_to_their_spec():
    manifest = builtin_manifest()
    files = {e.weights.file: e for e in manifest.models if e.source == "mmsegmentation" and e.weights}
    assert len(files) == 111 and set(files) == set(SPECS.mmseg_index)
    for file_name, spec_id in sorted(SPECS.mmseg_index.items()):
        entry = entry_for_file(manifest, file_name)
        arch = entry.architecture
        assert _structure(arch) == _structure(mmseg_architecture(file_name)), entry.name
        expected = state_shapes(_meta_model(arch))
        converted = convert_state_dict(meta_state_dict(SPECS.mmseg[spec_id]), arch, expected, "mmseg",
                                       path=file_name)
        assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(s) for k, s in expected.items()}


def test_all_ssseg_entries_map_to_their_spec_in_both_layouts():
    manifest = builtin_manifest()
    names = {e.name for e in manifest.models if e.source == "sssegmentation"}
    assert names == set(SPECS.ssseg_index)
    for config, spec_id in sorted(SPECS.ssseg_index.items()):
        arch = manifest.by_name()[config].architecture
        assert _structure(arch) == _structure(ssseg_architecture(config)), config
        expected = state_shapes(_meta_model(arch))
        for spec in (SPECS.ssseg[spec_id], SPECS.ssseg_legacy[spec_id]):
            converted = convert_state_dict(meta_state_dict(spec), arch, expected, "ssseg", path=config)
            assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(s) for k, s in expected.items()}


# ---------------------------------------------------------------------------------------------
# Reading checkpoints safely
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r18b_sd():
    return synth_state_dict(R18B_SPEC)


def _check_r18b(sd, fmt="mmseg"):
    arch = mmseg_architecture(R18B)
    _load_strictly(arch, sd, fmt)


def test_reads_legacy_serialization(tmp_path):
    path = write_mmseg_checkpoint(R18B_SPEC, tmp_path / "legacy.pth", legacy_format=True)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # not a zip file
    sd, meta, fmt = read_checkpoint(path)
    assert fmt == "mmseg" and len(meta["CLASSES"]) == 19
    _check_r18b(sd)


def test_reads_zip_serialization_and_numpy_meta(tmp_path, r18b_sd):
    path = tmp_path / "zip.pth"
    meta = {"CLASSES": tuple("abcdefghijklmnopqrs"), "best_score": np.float64(0.5), "seed": np.int64(7)}
    torch.save({"meta": meta, "state_dict": r18b_sd}, path)
    sd, got, fmt = read_checkpoint(path)
    assert fmt == "mmseg" and got["best_score"] == 0.5 and got["seed"] == 7
    assert all(torch.equal(sd[k], r18b_sd[k]) for k in r18b_sd)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_reads_numpy_meta_pickled_by_numpy_1(tmp_path):
    """Files from 2020 name numpy's scalar rebuilder numpy.core.multiarray.scalar (numpy 2: numpy._core)."""
    path = tmp_path / "old.pth"
    torch.save({"meta": {"best": np.float64(0.25), "hist": np.arange(3)}, "state_dict": {"a": torch.ones(2)}},
               path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    old_names = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert old_names != data and b"numpy._core" not in old_names
    path.write_bytes(old_names)
    sd, meta, _ = read_checkpoint(path)
    assert meta["best"] == 0.25 and list(meta["hist"]) == [0, 1, 2] and torch.equal(sd["a"], torch.ones(2))


def test_reads_module_prefix_and_bare_state_dict(tmp_path, r18b_sd):
    path = tmp_path / "module.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in r18b_sd.items()}}, path)
    sd, meta, fmt = read_checkpoint(path)
    assert set(sd) == set(r18b_sd) and meta == {} and fmt == "mmseg"
    bare = tmp_path / "bare.pth"
    torch.save(r18b_sd, bare)
    sd, meta, fmt = read_checkpoint(bare)
    assert set(sd) == set(r18b_sd) and fmt == "mmseg"
    _check_r18b(sd)


def test_detects_ssseg_from_content_in_newer_layout(tmp_path):
    """1.2.0+ files hold cur_epoch/cur_iter; the file name says nothing about the format."""
    spec = SPECS.ssseg["ssseg_pspnet_r50_c21"]
    path = tmp_path / "pspnet_r50-d8_512x512_20k_voc12aug.pth"
    torch.save({"cur_epoch": 60, "cur_iter": 1000, "optimizer": {"state": {}, "param_groups": []},
                "model": synth_state_dict(spec)}, path)
    sd, meta, fmt = read_checkpoint(path)
    assert fmt == "ssseg" and meta == {"cur_epoch": 60, "cur_iter": 1000}
    _load_strictly(ssseg_architecture("pspnet_resnet50os16_voc"), sd, fmt)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch_zip", "torch_legacy", "pickle_protocol_2", "pickle_protocol_5"])
def test_refuses_pickle_that_runs_code(tmp_path, how):
    marker = tmp_path / "pwned"
    payload = {"meta": {"x": _RunsCode(marker)}, "state_dict": {"a": torch.zeros(1)}}
    path = tmp_path / "evil.pth"
    if how.startswith("pickle"):
        path.write_bytes(pickle.dumps({"meta": {"x": _RunsCode(marker)}}, protocol=int(how[-1])))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=(how == "torch_zip"))
    # protocol 5 framing is refused before the call is even reached
    match = "not a PyTorch checkpoint" if how == "pickle_protocol_5" else r"refused.*import \w+\.system"
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)
    assert not marker.exists()
    # the same payload really runs code when unpickled without restriction
    if how == "pickle_protocol_2":
        pickle.loads(path.read_bytes())
        assert marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"this is a README, not weights\n" * 20, "not a PyTorch checkpoint|cannot be read"),
        (bytes(range(256)) * 8, "not a PyTorch checkpoint|cannot be read"),
        (b"", "cannot be read|not a PyTorch checkpoint"),
    ],
    ids=["text", "binary", "empty"],
)
def test_refuses_files_that_are_not_checkpoints(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_refuses_truncated_file(tmp_path, legacy):
    path = write_mmseg_checkpoint(R18B_SPEC, tmp_path / "cut.pth", legacy_format=legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|not a PyTorch checkpoint") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_refuses_missing_path_and_foreign_dicts(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="does not exist or is not a file"):
        read_checkpoint(tmp_path)
    foreign = tmp_path / "detectron.pth"
    torch.save({"model": {"roi_heads.box.weight": torch.zeros(2)}, "iteration": 5}, foreign)
    with pytest.raises(CheckpointError, match="backbone_net"):
        read_checkpoint(foreign)
    odd = tmp_path / "odd.pth"
    torch.save({"weights": [1, 2, 3]}, odd)
    with pytest.raises(CheckpointError, match="no 'state_dict' or 'model'"):
        read_checkpoint(odd)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        read_checkpoint(listed)


def test_refuses_old_torch(monkeypatch, tmp_path):
    path = write_mmseg_checkpoint(R18B_SPEC, tmp_path / "ok.pth")
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(CheckpointError, match=r"torch 2\.5\.1.*>= 2\.6"):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Conversion errors
# ---------------------------------------------------------------------------------------------


def _convert_r18b(sd):
    arch = mmseg_architecture(R18B)
    return convert_state_dict(sd, arch, state_shapes(_meta_model(arch)), "mmseg", path="r18b.pth")


def test_missing_key_is_named(r18b_sd):
    sd = dict(r18b_sd)
    del sd["backbone.layer2.0.downsample.1.running_var"]
    with pytest.raises(CheckpointError, match=r"r18b\.pth.*1 model keys with no weights.*backbone\.layer2\.0\.shortcut\.bn\.running_var"):
        _convert_r18b(sd)


def test_unknown_key_is_named(r18b_sd):
    sd = dict(r18b_sd, **{"decode_head.extra_conv.weight": torch.zeros(1), "neck.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"2 keys .* no place for: decode_head\.extra_conv\.weight, neck\.weight"):
        _convert_r18b(sd)


def test_shape_mismatch_is_named(r18b_sd):
    sd = dict(r18b_sd)
    sd["decode_head.conv_seg.weight"] = torch.zeros(21, 128, 1, 1)
    with pytest.raises(CheckpointError, match=r"decode_head\.conv_seg\.weight \(21, 128, 1, 1\) vs model \(19, 128, 1, 1\)"):
        _convert_r18b(sd)


def test_many_problems_listed_with_count(r18b_sd):
    sd = {k: v for k, v in r18b_sd.items() if not k.startswith("backbone.layer4.")}
    with pytest.raises(CheckpointError, match=r"25 model keys with no weights in the file: .*\(25 in all\)"):
        _convert_r18b(sd)


def test_wrong_stem_kind_is_refused(r18b_sd):
    """A 7x7-stem checkpoint does not load into the deep-stem model of the same depth."""
    arch = mmseg_architecture(R18B.replace("r18b", "r18"))
    with pytest.raises(CheckpointError, match=r"backbone\.conv1\.weight"):
        convert_state_dict(r18b_sd, arch, state_shapes(_meta_model(arch)), "mmseg")


def test_auxiliary_and_counters_are_dropped_but_nothing_else(r18b_sd):
    converted = _convert_r18b(r18b_sd)
    assert not any("aux" in k or "num_batches" in k for k in converted)
    assert "head.classifier.weight" in converted


def test_half_precision_weights_come_back_as_float32(r18b_sd):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in r18b_sd.items()}
    converted = _convert_r18b(sd)
    assert all(v.dtype == torch.float32 for v in converted.values())
    assert torch.equal(converted["head.classifier.weight"], sd["decode_head.conv_seg.weight"].float())


def test_ssseg_needs_exactly_one_fusion_layer_name():
    spec = SPECS.ssseg["ssseg_pspnet_r50_c21"]
    arch = ssseg_architecture("pspnet_resnet50os8_voc")
    expected = state_shapes(_meta_model(arch))
    sd = meta_state_dict(spec)
    both = dict(sd, **{ssseg_legacy_key(k): v for k, v in sd.items() if k.startswith("ppm_net.bottleneck.")})
    with pytest.raises(CheckpointError, match="both 'ppm_net.bottleneck.\\*' and 'ppm_net.fuse_layer.\\*'"):
        convert_state_dict(both, arch, expected, "ssseg")
    neither = {k: v for k, v in sd.items() if not k.startswith("ppm_net.bottleneck.")}
    with pytest.raises(CheckpointError, match="no PPM fusion layer"):
        convert_state_dict(neither, arch, expected, "ssseg")


def test_psa_single_branch_mapping():
    """mmseg's first PSA branch belongs to whichever single type the head has."""
    spec = SPECS.mmseg["psanet_r50-d8_c19"]
    single = {k: v for k, v in meta_state_dict(spec).items() if "_p." not in k}
    single["decode_head.proj.conv.weight"] = torch.empty(2048, 512, 1, 1, device="meta")  # one branch in
    base = mmseg_architecture("psanet_r50-d8_512x1024_40k_cityscapes_20200606_103117-99fac37c.pth")
    for kind in ("collect", "distribute"):
        arch = dataclasses.replace(base, decode_head=dataclasses.replace(base.decode_head, psa_type=kind))
        converted = convert_state_dict(single, arch, state_shapes(_meta_model(arch)), "mmseg")
        assert f"head.{kind}.mask.weight" in converted
    with pytest.raises(CheckpointError, match="head.distribute"):
        convert_state_dict(single, base, state_shapes(_meta_model(base)), "mmseg")


def test_check_classes():
    check_classes({"CLASSES": tuple("x" * 19)}, 19)
    check_classes({}, 19)
    check_classes(None, 19)
    with pytest.raises(CheckpointError, match="21 classes.*has 19"):
        check_classes({"CLASSES": ["c"] * 21}, 19, path="voc.pth")
    with pytest.raises(CheckpointError, match="150 classes"):
        check_classes({"dataset_meta": {"classes": ["c"] * 150}}, 19)


def test_classes_mismatch_from_a_real_file(tmp_path):
    path = write_mmseg_checkpoint(R18B_SPEC, tmp_path / "x.pth", classes=[f"c{i}" for i in range(21)])
    _, meta, _ = read_checkpoint(path)
    with pytest.raises(CheckpointError, match="21 classes"):
        check_classes(meta, 19, path=path)


# ---------------------------------------------------------------------------------------------
# Converted weights in safetensors
# ---------------------------------------------------------------------------------------------


def test_safetensors_round_trip_is_atomic(tmp_path, r18b_sd):
    converted = _convert_r18b(r18b_sd)
    target = tmp_path / "cache" / "pspnet_r18b.safetensors"
    metadata = {"source_file": R18B, "source_sha256": "ab" * 32, "manifest_name": "pspnet_r18b-d8", "psegzoo_version": "0.1"}
    save_converted(converted, target, metadata)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    with open(target, "rb") as f:
        assert f.read(1) != b"\x80"  # not a pickle
    sd, meta = load_converted(target)
    assert meta == metadata
    assert set(sd) == set(converted) and all(torch.equal(sd[k], converted[k]) for k in sd)
    arch = mmseg_architecture(R18B)
    load_into(build_segmentor(arch), sd)
    # overwriting keeps a single file too
    save_converted(converted, target, metadata)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert.converted, "serialize", broken)
    with pytest.raises(OutputError, match=f"cannot write {target}: No space left on device"):
        save_converted({"a": torch.zeros(2)}, target, {"k": "v"})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="metadata"):
        save_converted({"a": torch.zeros(2)}, target, {"k": 1})
    assert list(tmp_path.iterdir()) == []


def test_load_converted_refuses_other_files(tmp_path):
    with pytest.raises(CheckpointError, match="do not exist"):
        load_converted(tmp_path / "none.safetensors")
    pth = tmp_path / "w.safetensors"
    torch.save({"a": torch.zeros(1)}, pth)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_converted(pth)
    cut = tmp_path / "cut.safetensors"
    save_converted({"a": torch.zeros(1000)}, cut, {})
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_converted(cut)


def test_file_too_large_while_saving_is_an_error_naming_the_file(tmp_path):
    """A real kernel error (EFBIG from a file size limit) through safetensors' writer, in a child process."""
    code = (
        "import resource, signal, sys, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from psegzoo.convert import save_converted\n"
        "from psegzoo.errors import OutputError\n"
        "try:\n"
        "    save_converted({'w': torch.zeros(100000)}, sys.argv[1], {})\n"
        "except OutputError as exc:\n"
        "    print(exc)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.safetensors")], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"cannot write {tmp_path / 'w.safetensors'}: ") and "too large" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_converted_files_get_the_umask_mode(tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        save_converted({"a": torch.zeros(2)}, tmp_path / "w.safetensors", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------
# Weights that cannot be right
# ---------------------------------------------------------------------------------------------


def test_non_finite_weights_and_negative_variances_are_refused_with_the_key_named(r18b_sd):
    nan = dict(r18b_sd)
    nan["decode_head.conv_seg.weight"] = r18b_sd["decode_head.conv_seg.weight"].clone()
    nan["decode_head.conv_seg.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in decode_head\.conv_seg\.weight"):
        _convert_r18b(nan)
    inf = dict(r18b_sd, **{"backbone.conv1.weight": r18b_sd["backbone.conv1.weight"] * float("inf")})
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in backbone\.conv1\.weight"):
        _convert_r18b(inf)
    key = "backbone.layer1.0.bn1.running_var"
    negative = dict(r18b_sd, **{key: -r18b_sd[key].abs() - 1})
    with pytest.raises(CheckpointError, match=rf"negative running variances in {key.replace('.', '[.]')}"):
        _convert_r18b(negative)
    _convert_r18b(r18b_sd)  # the untouched weights pass


def test_a_sparse_tensor_in_a_checkpoint_is_refused(tmp_path, r18b_sd):
    sd = dict(r18b_sd)
    dense = sd["decode_head.conv_seg.weight"]
    sd["decode_head.conv_seg.weight"] = dense.reshape(dense.shape[0], -1).to_sparse()
    path = tmp_path / "sparse.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"not dense \(decode_head\.conv_seg\.weight \(torch\.sparse_coo\)\)"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not dense floating-point tensors: decode_head.conv_seg.weight"):
        _convert_r18b(sd)


def test_reading_a_verified_file_hashes_it_in_the_same_read(tmp_path):
    import hashlib

    path = write_mmseg_checkpoint(R18B_SPEC, tmp_path / "x.pth")
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_checkpoint(path, sha256=good)[2] == "mmseg"
    with pytest.raises(VerificationError, match=f"changed since it was verified: its SHA-256 is {good}"):
        read_checkpoint(path, sha256="0" * 64)


def test_converted_weights_must_be_float32_of_the_model_shape(tmp_path, r18b_sd):
    from psegzoo.convert import check_converted

    arch = mmseg_architecture(R18B)
    shapes = state_shapes(_meta_model(arch))
    converted = _convert_r18b(r18b_sd)
    check_converted(converted, shapes)
    key = "head.classifier.weight"
    for bad, what in ((converted[key].half(), "float16"), (converted[key].int(), "int32"),
                      (torch.zeros(3, 3), "float32, (3, 3)")):
        with pytest.raises(CheckpointError, match=re.escape(f"not float32 of the model's shape: {key} ({what}")):
            check_converted(dict(converted, **{key: bad}), shapes, path="w.safetensors")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        check_converted(dict(converted, **{key: converted[key] * float("nan")}), shapes)


def test_convert_does_not_import_models():
    """convert sits left of models in the layering: it gets expected keys as an argument."""
    files = sorted(Path(convert.__file__).parent.glob("*.py"))
    assert len(files) > 1  # the package's modules, not only its __init__
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert imported and not any("models" in name for name in imported), imported
