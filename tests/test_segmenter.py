"""The Segmenter's contract as a shared object: safe from several threads at once, options checked
when a call is made, the model's form settled when it is loaded (a synthetic R-18 PSPNet on the CPU,
served from a loopback mirror)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import psegzoo
from psegzoo.models import FastPaths
from tests.support.media import NAME, image, served  # noqa: F401
from tests.support.precision import assert_labels_agree_beyond_ties

# (seed, h, w, options): whole and slide mode, test-time augmentation, sizes that resize differently
JOBS = [
    (1, 40, 60, {}), (2, 33, 47, {}), (3, 64, 48, {"flip": True}), (4, 70, 50, {"mode": "slide", "crop_size": (32, 32),
                                                                            "stride": (24, 24)}),
    (5, 20, 90, {"scales": [0.75, 1.0]}), (6, 50, 50, {}), (7, 40, 60, {"keep_scores": False}), (8, 90, 30, {}),
]


@pytest.fixture(scope="module")
def seg(served):  # noqa: F811
    return psegzoo.load(NAME, device="cpu", download=psegzoo.DownloadOptions(mirrors=[served.mirror], progress=False))


def _run(seg, job):
    seed, h, w, options = job
    return seg.predict(image(seed, h, w), **options)


def test_one_segmenter_from_four_threads_gives_the_serial_labels(seg):
    serial = [_run(seg, job) for job in JOBS]
    start = threading.Barrier(4)

    def worker(k: int):
        start.wait(timeout=60)  # all four at once
        return [_run(seg, JOBS[(k + i) % len(JOBS)]) for i in range(len(JOBS))]  # each thread its own order

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(worker, range(4)))
    for k, run in enumerate(runs):
        for i, got in enumerate(run):
            want = serial[(k + i) % len(JOBS)]
            assert got.labels.shape == want.labels.shape
            if want.scores is None:  # labels only: compare with the labels of the run that kept scores
                ref = seg.predict(image(*JOBS[(k + i) % len(JOBS)][:3]))
                assert_labels_agree_beyond_ties(got.labels, ref.labels, torch.from_numpy(ref.scores))
            else:
                # Same float32 computation; threads may change only how torch blocks it, so labels are judged
                # by the margin rule: every clear decision equal, near-ties free.
                assert_labels_agree_beyond_ties(got.labels, want.labels, torch.from_numpy(want.scores))
                np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-4)


def test_predict_many_from_threads_while_another_changes_the_fast_paths(seg):
    """A change of the model's form waits for the forwards running, and they for it: no prediction
    sees a half-switched model."""
    images = [image(10 + i, 40, 60) for i in range(6)]
    want = [p.labels for p in seg.predict_many(images)]
    scores = [torch.from_numpy(p.scores) for p in seg.predict_many(images)]
    chosen = seg.fast_paths
    stop = threading.Event()

    def switch():
        while not stop.is_set():
            seg.use_fast_paths(False)
            seg.use_fast_paths(chosen)

    switcher = threading.Thread(target=switch)
    switcher.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            runs = list(pool.map(lambda _: [p.labels for p in seg.predict_many(images, batch_size=2)], range(3)))
    finally:
        stop.set()
        switcher.join(timeout=60)
    seg.use_fast_paths(chosen)
    for run in runs:
        for got, ref, ref_scores in zip(run, want, scores):
            assert_labels_agree_beyond_ties(got, ref, ref_scores)  # fast paths are exact up to float rounding


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 0}, "batch_size must be a positive integer or None, got 0"),
    ({"batch_size": True}, "batch_size must be a positive integer or None, got True"),
    ({"workers": -1}, r"workers must be a number of threads \(0 or more\) or None, got -1"),
    ({"mode": "sideways"}, "mode"),
    ({"amp_dtype": "float8"}, "amp_dtype"),
    ({"colour": True}, "unknown option"),
])
def test_predict_many_checks_its_options_when_called(seg, kwargs, match):
    """The error comes from the call itself, before any result is asked for (it is not a generator)."""
    with pytest.raises(psegzoo.PredictionError, match=match):
        seg.predict_many([image(1, 40, 60)], **kwargs)


def test_the_model_form_is_settled_at_load_and_kept_by_predictions(seg):
    settled = seg.fast_paths
    classes = [type(m) for m in seg.model.modules()]
    seg.predict(image(1, 400, 600))  # a large prediction changes nothing
    list(seg.predict_many([image(2, 300, 500)] * 2, batch_size=2))
    assert seg.fast_paths == settled and [type(m) for m in seg.model.modules()] == classes
    assert seg.use_fast_paths(FastPaths.none()).fast_paths == FastPaths.none()  # only an explicit call changes it
    seg.use_fast_paths(settled)
