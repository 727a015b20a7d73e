"""Large jobs: ``torchrun --standalone --nproc-per-node 2 -m psegzoo predict`` with gloo on the CPU.

Real torchrun jobs (``python -m torch.distributed.run`` of this interpreter) against a synthetic
R-18 PSPNet whose published host is unreachable and whose loopback mirror is given with
``--mirror``; the one-process run they are compared with goes through the same command in-process.
The building blocks (sharding, launch variables, devices, task completeness) are tested directly.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import psegzoo
from psegzoo.devices import usable_cores
from psegzoo.distributed import Job, Launch, PredictTask, Wanted, all_reduce_sum, predict_tasks, split
from psegzoo.distributed.launch import rank_device
from psegzoo.distributed.sharding import digest
from psegzoo.video import FRAMES_RECORD
from tests.support.cli import cli, run_script
from tests.support.media import (  # noqa: F401
    MISSING_NAME,
    NAME,
    image_folder,
    leftovers,
    read_video,
    served,
    write_video,
)
from tests.support.precision import clear_pixels
from tests.support.torchrun import OUR_TRACEBACK, error_lines, run_job, start_job, wait_for, worker_pid

WORKER = Path(__file__).parent / "support" / "dist_worker.py"


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def decisive(served, folder: Path) -> dict[tuple[int, int], np.ndarray]:  # noqa: F811
    """Each input's pixels whose label no rounding can flip (tests/support/precision.py), by its size (every
    input of the folder has another): runs with other thread counts or batches add in another order."""
    seg = psegzoo.load(NAME, device="cpu", mirrors=served.mirror, progress=False)
    masks = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        scores = seg.predict(path).scores
        masks[scores.shape[1:]] = clear_pixels(scores)
    assert len(masks) == 6
    return masks


def assert_same_outputs(got: dict[str, bytes], reference: dict[str, bytes],
                        clear: dict[tuple[int, int], np.ndarray]) -> None:
    """The same files; label maps and overlays equal wherever the decision is clear."""
    assert sorted(got) == sorted(reference)
    for name, data in reference.items():
        want, have = (np.asarray(Image.open(io.BytesIO(b))) for b in (data, got[name]))
        assert have.shape == want.shape, name
        mask = clear[want.shape[:2]]
        assert np.array_equal(have[mask], want[mask]), name


def assert_clean(stderr: str) -> None:
    """No traceback from psegzoo or a worker (torchrun's own report of a failed job is allowed)."""
    assert not OUR_TRACEBACK.search(stderr), stderr


@pytest.fixture(scope="module")
def folder(served) -> Path:  # noqa: F811
    image_folder(served.tmp / "images")
    return served.tmp / "images"


@pytest.fixture(scope="module")
def reference(served, folder) -> dict[str, bytes]:  # noqa: F811
    """The outputs of the one-process run."""
    out = served.tmp / "reference"
    cli("predict", "-m", NAME, folder, "-o", out, "--overlay", "-q", "--mirror", served.mirror)
    return files(out)


@pytest.fixture(scope="module")
def clear(served, folder) -> dict[tuple[int, int], np.ndarray]:  # noqa: F811
    return decisive(served, folder)


@pytest.fixture(scope="module")
def two_processes(served, folder):  # noqa: F811
    """One torchrun job of two processes over the folder, with an empty cache."""
    out = served.tmp / "two"
    home = served.tmp / "home-two"
    before = served.gets()
    proc = run_job("-m", "psegzoo", "predict", "-m", NAME, folder, "-o", out, "--overlay", "--mirror", served.mirror,
                   extra_env={"PSEGZOO_HOME": str(home)})
    return proc, out, served.gets() - before, home


# --------------------------------------------------------------------------------------------
# torchrun jobs
# --------------------------------------------------------------------------------------------


def test_two_processes_write_each_output_once_as_one_process_does(two_processes, reference, clear):
    proc, out, _, _ = two_processes
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc.stderr)
    assert len(reference) == 12  # 6 label maps and 6 overlays, names as in the one-process run
    assert "img0_2.png" in reference and "sub/img4.png" in reference
    assert_same_outputs(files(out), reference, clear)  # nothing else written
    # Rank 0 lists every output of the job, each once, though half of them were written by rank 1.
    listed = Counter(proc.stdout.split())
    assert set(listed) == {str(out / name) for name in reference if not name.endswith("_overlay.png")}
    assert set(listed.values()) == {1}
    summary = [line for line in proc.stderr.splitlines() if "image(s) written" in line]
    assert summary == [f"6 image(s) written to {out}"]  # one view of the job, printed once


def test_only_the_first_process_downloads(two_processes, served):  # noqa: F811
    proc, _, gets, home = two_processes
    assert proc.returncode == 0
    assert gets == 1
    assert len(list((home / "converted").glob("*.safetensors"))) == 1  # converted once, then loaded by both


def test_a_failed_download_is_tried_once_and_reported_once(served, folder, tmp_path):  # noqa: F811
    proc = run_job("-m", "psegzoo", "predict", "-m", MISSING_NAME, folder, "-o", tmp_path / "out",
                   extra_env={"PSEGZOO_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0
    assert_clean(proc.stderr)
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "404" in errors[0], proc.stderr
    assert len(served.server.gets(served.missing)) == 1  # rank 1 never tried: it waited for rank 0
    assert not (tmp_path / "out").exists()


def test_job_api_under_torchrun(tmp_path):
    proc = run_job(WORKER, "ok", tmp_path)
    assert proc.returncode == 0, proc.stderr
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["is_main"], r1["is_main"]) == (True, False)
    assert (r0["rank_fn"], r1["rank_fn"], r0["world_fn"], r0["nodes"]) == (0, 1, 2, 1)
    assert r0["sum"] == r1["sum"] == [3, 20]
    # Disjoint shards covering every task that is not done, balanced by weight.
    shard0, shard1 = r0["plan"]["tasks"], r1["plan"]["tasks"]
    assert sorted(shard0 + shard1) == [f"task-{i}" for i in range(6)] and not set(shard0) & set(shard1)
    assert r0["plan"]["total"] == 6 and r0["plan"]["skipped"] == 1
    assert r0["plan"]["shard_pixels"] == r1["plan"]["shard_pixels"] == [15, 13]
    # The loader runs with network access on the first process only.
    assert (r0["loads"], r1["loads"]) == ([True], [False])
    # Rank 0 saw every task's event once, with the rank that ran it; the others show nothing.
    shown = {task: (value, error, rank) for task, value, error, rank in r0["shown"]}
    assert len(r0["shown"]) == 6 and r1["shown"] == []
    for task in shard0 + shard1:
        rank = 0 if task in shard0 else 1
        expect = (None, f"{task}: corrupt", rank) if task == "task-3" else (task.upper(), None, rank)
        assert shown[task] == expect
    assert r0["totals"] == r1["totals"] == [5, 1]
    assert r0["job_sum"] == r1["job_sum"] == [3, 10]
    assert sorted(r0["reports"], key=str) == sorted(([r, {"from": r, "k": k}] for r in (0, 1) for k in range(3)), key=str)
    assert [v["k"] for r, v in r0["reports"] if r == 1] == [0, 1, 2] and r1["reports"] == []  # in order, on rank 0 only
    # torchrun's OMP_NUM_THREADS=1 counts as unset: the node's cores are shared out.
    assert r0["threads"] == r1["threads"] == max(1, usable_cores() // 2)


@pytest.mark.parametrize("mode, message", [
    ("fail-rank-1", r"error: process 1 of 2 failed on task-\d: RuntimeError: boom"),
    ("fail-rank-0", r"error: process 0 of 2 failed on task-\d: RuntimeError: boom"),
    ("fail-follower-load", r"error: process 1 of 2 failed while loading the model: model-x is not in the cache"),
])
def test_a_failing_process_stops_the_job_with_one_line_from_rank_0(tmp_path, mode, message):
    proc = run_job(WORKER, mode, tmp_path)
    assert proc.returncode != 0
    assert_clean(proc.stderr)
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and re.fullmatch(message, errors[0]), proc.stderr
    assert list(tmp_path.iterdir()) == []  # nobody reached the end


@pytest.fixture(scope="module")
def videos(served):  # noqa: F811
    """Two equal videos long enough to stop a job in the middle (rank 0 gets the first, rank 1 the second)."""
    paths = [served.tmp / "vid_a.mkv", served.tmp / "vid_b.mkv"]
    for i, path in enumerate(paths):
        write_video(path, frames=40, size=(48, 64), seed=10 * i)
    return paths


def complete_outputs(out: Path) -> set[str]:
    """Label outputs whose requested files are all present (each checked whole), as ``stdout`` lists them."""
    done = set()
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if any(part.startswith(".") for part in rel.parts) or (rel.parts[0].startswith("vid") and len(rel.parts) > 1):
            continue
        if p.is_dir() and p.name.startswith("vid"):  # put in place last: it must be whole, with its video
            assert [f.name for f in sorted(p.iterdir())] == [FRAMES_RECORD, *(f"{i:06d}.png" for i in range(40))]
            assert len(read_video(out / f"{p.name}_overlay.mp4")[0]) == 40
            done.add(rel.as_posix())
        elif p.suffix == ".png" and not p.name.endswith("_overlay.png"):
            with Image.open(p) as im:
                im.verify()
            if p.with_name(p.stem + "_overlay.png").is_file():
                done.add(rel.as_posix())
    return done


def stop_rank_1_mid_video(served, folder, videos, out, sig):  # noqa: F811
    job = start_job("-m", "psegzoo", "predict", "-m", NAME, *videos, folder, "-o", out, "--overlay",
                    "--mirror", served.mirror)
    try:
        wait_for(lambda: any(p.is_dir() and any(p.iterdir()) for p in out.glob(".vid_b.*")), job,
                 "rank 1 started its video")
        os.kill(worker_pid(job, rank=1), sig)
        stdout, stderr = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    return job.returncode, stdout, stderr


def test_sigterm_to_one_process_stops_the_job_cleanly(served, folder, videos, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    code, _, stderr = stop_rank_1_mid_video(served, folder, videos, out, signal.SIGTERM)
    assert code != 0
    assert_clean(stderr)
    errors = error_lines(stderr)
    assert errors == [f"error: process 1 of 2 was stopped by SIGTERM on {videos[1]}"], stderr
    assert leftovers(out) == []  # the stopped process removed its temporary frames and video
    assert "vid_b" not in complete_outputs(out)


def test_killed_process_leaves_complete_outputs_and_skip_existing_resumes(served, folder, videos, reference, clear,  # noqa: F811
                                                                          tmp_path):
    out = tmp_path / "out"
    code, _, stderr = stop_rank_1_mid_video(served, folder, videos, out, signal.SIGKILL)
    assert code != 0
    assert_clean(stderr)
    errors = error_lines(stderr)
    assert len(errors) == 1 and errors[0].startswith("error: stopped by SIGTERM: torchrun stops every process"), stderr
    assert "--skip-existing" in errors[0]
    before = complete_outputs(out)
    assert "vid_b" not in before and len(before) < 8
    # Only the killed process's unfinished work may remain, hidden and never under an output's name.
    assert all(p.relative_to(out).parts[0].startswith(".vid_b") for p in leftovers(out))

    proc = run_job("-m", "psegzoo", "predict", "-m", NAME, *videos, folder, "-o", out, "--overlay",
                   "--mirror", served.mirror, "--skip-existing")
    assert proc.returncode == 0, proc.stderr
    redone = [Path(line).relative_to(out).as_posix() for line in proc.stdout.split()]
    labels = {name for name in reference if not name.endswith("_overlay.png")} | {"vid_a", "vid_b"}
    assert sorted(redone) == sorted(labels - before)  # each missing output once, nothing complete again
    assert complete_outputs(out) == labels
    assert_same_outputs({k: v for k, v in files(out).items() if k in reference}, reference, clear)


def test_sigterm_in_one_process_removes_temporary_files(served, videos, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-m", "psegzoo", "predict", "-m", NAME, videos[0], "-o", out, "--overlay",
                            "--mirror", served.mirror], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(p.is_dir() and any(p.iterdir()) for p in out.glob(".vid_a.*")), job, "the video started")
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; the outputs written so far are complete")
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# --skip-existing in one process
# --------------------------------------------------------------------------------------------


def test_skip_existing_redoes_only_incomplete_outputs(served, folder, reference, clear, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    cli("predict", "-m", NAME, folder, "-o", out, "--overlay", "-q")
    (out / "img1_overlay.png").unlink()  # a requested output is missing
    (out / "img2.png").write_bytes((out / "img2.png").read_bytes()[:60])  # a damaged label map
    result = cli("predict", "-m", NAME, folder, "-o", out, "--overlay", "--skip-existing")
    assert sorted(result.stdout.split()) == [str(out / "img1.png"), str(out / "img2.png")]
    assert "2 image(s) written" in result.stderr and "4 skipped" in result.stderr
    assert_same_outputs(files(out), reference, clear)
    # Asking for one more output makes every input incomplete again.
    result = cli("predict", "-m", NAME, folder, "-o", out, "--overlay", "--color", "--skip-existing", "-q")
    assert len(list(out.rglob("*_color.png"))) == 6


def test_nothing_to_do_loads_nothing(served, folder, reference, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    for name, data in reference.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    empty = {"PSEGZOO_HOME": str(tmp_path / "empty-home"), "PSEGZOO_OFFLINE": "1"}
    proc = run_script("predict", "-m", NAME, folder, "-o", out, "--overlay", "--skip-existing", extra_env=empty)
    assert proc.stderr.strip().splitlines()[-1] == f"nothing to do: the outputs of all 6 input(s) exist in {out}"
    # The negative control: without --skip-existing the same command must load the model, and cannot.
    proc = run_script("predict", "-m", NAME, folder, "-o", out, "--overlay", extra_env=empty, code=1)
    assert "offline" in proc.stderr.lower()


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def test_a_traceback_is_ours_by_the_package_s_location_not_by_a_name_in_its_path(tmp_path):
    """A clone folder named ``psegzoo`` with its venv inside: torchrun's frames there are not psegzoo's."""
    clone = tmp_path / "psegzoo"
    torch_frame = clone / ".venv" / "lib" / "python3.12" / "site-packages" / "torch" / "distributed" / "run.py"
    theirs = f'Traceback (most recent call last):\n  File "{torch_frame}", line 905, in main\n    run(args)\n'
    assert not OUR_TRACEBACK.search(theirs)
    assert not OUR_TRACEBACK.search(f'  File "{clone}/tools/psegzoo_helper.py", line 3, in <module>\n')
    package = Path(psegzoo.__file__).parent
    assert OUR_TRACEBACK.search(f'  File "{package / "cli" / "predict.py"}", line 12, in main\n')
    assert OUR_TRACEBACK.search(f'  File "{WORKER}", line 40, in <module>\n')


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_split_is_disjoint_complete_balanced_and_deterministic(parts):
    rng = np.random.default_rng(parts)
    weights = [int(w) for w in rng.integers(1, 10_000, 40)]
    shards = split(weights, parts)
    assert sorted(i for s in shards for i in s) == list(range(40))
    loads = [sum(weights[i] for i in s) for s in shards]
    assert max(loads) - sum(weights) / parts <= max(weights)
    assert shards == split(list(weights), parts)
    assert all(s == sorted(s) for s in shards)


def test_split_balances_pixels_not_counts():
    shards = split([100, 1, 1, 1, 1, 1], 2)
    assert shards == [[0], [1, 2, 3, 4, 5]]
    assert split([], 3) == [[], [], []]
    with pytest.raises(ValueError):
        split([1], 0)


def test_digest_depends_on_order_and_content():
    assert digest(["a", "b"]) == digest(["a", "b"])
    assert len({digest(["a", "b"]), digest(["b", "a"]), digest(["ab"]), digest(["a", "b", ""])}) == 4
    assert 0 <= digest(["x"]) < 2**63


def test_launch_reads_torchrun_variables_once():
    assert Launch.from_environ({}) == Launch()
    assert not Launch().distributed and Launch().is_main
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "1"}
    launch = Launch.from_environ(env)
    assert launch == Launch(rank=3, world_size=4, local_rank=1, local_world_size=2, restart=1)
    assert launch.distributed and not launch.is_main and not launch.is_node_leader
    with pytest.raises(psegzoo.DistributedError, match=r"LOCAL_RANK='x' is not a number; start psegzoo with torchrun"):
        Launch.from_environ({**env, "LOCAL_RANK": "x"})
    with pytest.raises(psegzoo.DistributedError, match="inconsistent launch variables RANK=4 WORLD_SIZE=4"):
        Launch.from_environ({**env, "RANK": "4"})


def test_threads_per_process_share_the_node_s_cores():
    two = Launch(rank=1, world_size=4, local_rank=1, local_world_size=2)
    assert two.cpu_threads(16) == 8 and two.cpu_threads(2) == 1 and two.cpu_threads(1) == 1
    assert Launch.from_environ({"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"}).cpu_threads(8) == 2
    # torchrun's own OMP_NUM_THREADS=1 is a default, not a choice; a larger value is the user's and is kept.
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    assert Launch.from_environ({**env, "OMP_NUM_THREADS": "1"}).cpu_threads(16) == 8
    assert Launch.from_environ({**env, "OMP_NUM_THREADS": "3"}).cpu_threads(16) == 3
    assert Launch.from_environ({**env, "OMP_NUM_THREADS": "lots"}).cpu_threads(16) == 8


def test_rank_devices():
    one = Launch()
    two = Launch(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert rank_device("cuda:3", one) == "cuda:3"  # outside a job: as requested
    assert rank_device("cpu", two) == "cpu" and rank_device("mps", two) == "mps"
    with pytest.raises(psegzoo.DistributedError) as exc:
        rank_device("cuda:0", two)
    assert "would put them all on one GPU; pass --device cuda" in exc.value.cli_message()
    assert "pass device='cuda'" in str(exc.value)
    if not __import__("torch").cuda.is_available():
        assert rank_device("auto", two) == "auto"
        with pytest.raises(psegzoo.DistributedError, match="CUDA is not available"):
            rank_device("cuda", two)


def test_helpers_without_a_process_group():
    assert psegzoo.distributed.is_main() and psegzoo.distributed.rank() == 0 and psegzoo.distributed.world_size() == 1
    counts = np.array([[1, 2], [3, 4]], dtype=np.int32)
    summed = all_reduce_sum(counts)
    assert summed.dtype == np.int64 and summed.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(TypeError, match="integer counts"):
        all_reduce_sum(np.ones(2))
    psegzoo.distributed.barrier()


def test_a_job_of_one_runs_locally():
    with Job.start(Launch()) as job:
        plan = job.plan(["a", "b", "c"], weigh=len, skip=lambda t: t == "b")
        assert plan.tasks == ("a", "c") and plan.total == 2 and plan.skipped == 1
        assert job.main_first(lambda first: first) is True
        shown = []

        def work(task):
            if task == "c":
                raise psegzoo.ImageError("c: bad")
            return task * 2

        totals = job.run(plan.tasks, work, show=shown.append, failed=(psegzoo.ImageError,))
        sent = []
        reports = job.reports(sent.append)
        reports.send("half way")
        reports.close()
        assert job.sum([2, 3]).tolist() == [2, 3]
        job.barrier()
    assert [(e.task, e.value, e.rank) for e in sent] == [(None, "half way", 0)]
    assert (totals.done, totals.failed) == (1, 1)
    assert [(e.task, e.value, e.ok) for e in shown] == [("a", "aa", True), ("c", None, False)]
    with pytest.raises(RuntimeError, match="boom"), Job.start(Launch()) as job:
        job.run(["x"], lambda t: (_ for _ in ()).throw(RuntimeError("boom")), failed=(psegzoo.ImageError,))


def test_task_pixels_and_completeness(served, tmp_path):  # noqa: F811
    img = tmp_path / "in" / "x.png"
    img.parent.mkdir()
    Image.fromarray(np.zeros((30, 70, 3), np.uint8)).save(img)
    clip = tmp_path / "in" / "clip.mkv"
    write_video(clip, frames=5, size=(10, 20))
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    image_task, video_task, broken_task = predict_tasks(
        [type("F", (), {"path": p, "relative": p.stem})() for p in (img, clip, broken)], ["x", "clip", "broken"])
    assert (image_task.is_video, video_task.is_video) == (False, True)
    assert image_task.pixels() == 30 * 70 and broken_task.pixels() == 1
    assert video_task.pixels() == 200 * 5 and video_task.pixels(every=2) == 200 * 3

    out = tmp_path / "out"
    wanted = Wanted(overlay=True, json=True)
    assert not image_task.complete(out, wanted)
    out.mkdir()
    Image.fromarray(np.zeros((30, 70), np.uint8), mode="L").convert("P").save(out / "x.png")
    (out / "x_overlay.png").write_bytes(b"")
    (out / "x.json").write_text(json.dumps({"width": 70, "height": 30}))
    assert not image_task.complete(out, wanted)  # an empty overlay
    Image.new("RGB", (70, 30)).save(out / "x_overlay.png")
    (out / "x.json").write_text("{}")
    assert not image_task.complete(out, wanted)  # a JSON without the image's size
    (out / "x.json").write_text(json.dumps({"width": 70, "height": 30}))
    assert image_task.complete(out, wanted) and not image_task.complete(out, Wanted(probs="npy"))
    good = (out / "x.png").read_bytes()
    (out / "x.png").write_bytes(good[:-20])
    assert not image_task.complete(out, wanted)  # a truncated label map
    Image.new("P", (1, 1)).save(out / "x.png")
    assert not image_task.complete(out, wanted)  # a label map of another size
    (out / "x.png").write_bytes(good)
    assert image_task.complete(out, wanted)

    (out / "clip").mkdir()
    assert not video_task.complete(out, Wanted())
    frame = out / "clip" / "000000.png"
    Image.new("P", (20, 10)).save(frame)
    assert not video_task.complete(out, Wanted())  # a frame psegzoo did not record as its own
    import hashlib

    (out / "clip" / FRAMES_RECORD).write_text(json.dumps({"files": {frame.name: hashlib.sha256(frame.read_bytes()).hexdigest()}}))
    assert video_task.complete(out, Wanted()) and not video_task.complete(out, Wanted(overlay=True))
    Image.new("P", (21, 10)).save(frame)
    assert not video_task.complete(out, Wanted())  # changed since it was written
    assert str(PredictTask(img, "x")) == str(img)
