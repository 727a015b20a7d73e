"""The optional packages the service needs (``pip install 'psegzoo[serve]'``), checked on demand."""
from __future__ import annotations

import importlib

from ..errors import ServeError

INSTALL = "pip install 'psegzoo[serve]'"
PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def require() -> None:
    """Raise one line naming the missing packages and the install to run, if any is missing."""
    missing = []
    for module, package in PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ServeError(f"psegzoo serve needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         f"not installed; install them with: {INSTALL}")
