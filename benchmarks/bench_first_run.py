"""How long the README's main command takes on this machine's CPU, first run and later runs.

    python benchmarks/bench_first_run.py [--repeat 3]

The command runs as written (`psegzoo predict --model pspnet_r18-d8_512x1024_cityscapes --sample
--overlay`), with the checkpoint served from a loopback mirror (`--mirror`): a synthetic file in
mmseg's exact layout and size, so that only the network is left out. The entry keeps its
published test settings (whole image at 2048x1024); only its hash is that of the synthetic file.
The first run downloads, verifies, converts and predicts; later runs find the converted weights
in the cache. The baseline is `python -c "import torch"` in the same session.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.http_server import FileServer  # noqa: E402
from tests.support.served import builtin_entry, mmseg_spec, sha256_hex, write_index  # noqa: E402
from tests.support.synth import write_mmseg_checkpoint  # noqa: E402

MAIN_COMMAND = "psegzoo predict --model pspnet_r18-d8_512x1024_cityscapes --sample --overlay"
CANONICAL = "pspnet_r18-d8_512x1024_80k_cityscapes"


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child): CPU time says what a busy machine's wall time hides."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="psegzoo-first-run-"))
    data = write_mmseg_checkpoint(mmseg_spec(CANONICAL), tmp / "ckpt.pth").read_bytes()
    entry = builtin_entry(CANONICAL)
    path = urlparse(entry["weights"]["url"]).path
    entry["weights"]["sha256_prefix"] = sha256_hex(data)[:8]
    index = write_index(tmp / "index.json", [entry])
    py = sys.executable
    argv = [py, "-m", "psegzoo", *shlex.split(MAIN_COMMAND)[1:]]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PSEGZOO_")}
    base_env["PYTHONPATH"] = str(ROOT)
    torch_import = [timed([py, "-c", "import torch"], base_env, tmp) for _ in range(args.repeat)]
    first, later = [], []
    with FileServer({path: data}) as server:
        for i in range(args.repeat):
            env = {**base_env, "PSEGZOO_INDEX": str(index), "PSEGZOO_HOME": str(tmp / f"home{i}")}
            work = tmp / f"work{i}"
            work.mkdir()
            first.append(timed([*argv, "--mirror", server.base], env, work))
            later.append(timed(argv, env, work))
    print(f"checkpoint {len(data) / 1e6:.1f} MB over loopback; {os.cpu_count()} CPU cores; "
          f"load average {os.getloadavg()[0]:.1f}")
    base = statistics.median(w for w, _ in torch_import)
    print(f"{'run':48s} {'wall s':>7s} {'cpu s':>7s} {'x import torch':>15s}")
    for label, values in (("python -c 'import torch' (baseline)", torch_import),
                          ("first run: download, verify, convert, predict", first),
                          ("later runs: cached, predict", later)):
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{label:48s} {wall:7.2f} {cpu:7.2f} {wall / base:15.1f}")


if __name__ == "__main__":
    main()
