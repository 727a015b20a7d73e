"""A wheel built from this tree, installed (not editable) into a fresh venv, finds its manifest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_wheel_install_into_fresh_venv(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    wheels = list(wheel_dir.glob("psegzoo-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheels[0])], check=True)
    # The fresh venv gets the runtime dependencies (not psegzoo) from this interpreter's site-packages.
    deps = tmp_path / "deps"
    deps.mkdir()
    for name in ("click", "rich", "markdown_it", "mdurl", "pygments", "requests", "urllib3", "idna", "certifi", "charset_normalizer"):
        spec = __import__("importlib.util").util.find_spec(name)
        if spec is not None and spec.origin:
            src = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
            (deps / src.name).symlink_to(src)
    (target / "zz_deps.pth").write_text(str(deps) + "\n")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PSEGZOO_INDEX")}
    out = subprocess.run(
        [str(py), "-c", "import psegzoo, json; print(json.dumps([psegzoo.__file__, len(psegzoo.list_models())]))"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=clean_env,
    )
    where, count = json.loads(out.stdout)
    assert Path(where).resolve().is_relative_to(target.resolve())
    assert count == 123
    installed_index = target / "psegzoo" / "model_index.json"
    assert installed_index.is_file() and not installed_index.is_symlink()
    assert json.loads(installed_index.read_text()) == json.loads((ROOT / "model_index.json").read_text())
    sample = target / "psegzoo" / "data" / "street.png"
    assert sample.read_bytes() == (ROOT / "psegzoo" / "data" / "street.png").read_bytes()
    listing = subprocess.run(
        [str(py), "-m", "psegzoo", "list", "--dataset", "voc", "--json"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=clean_env,
    )
    names = [m["name"] for m in json.loads(listing.stdout)]
    assert names and "pspnet_r50-d8_512x512_20k_voc12aug" in names
