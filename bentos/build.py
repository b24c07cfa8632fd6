"""Build the bento for a device: ``python -m bentos.build [--device cpu|cuda]`` (``make bento``).

Everything comes from ``pyproject.toml``: the ``[tool.bentoml.build]`` table and the project's
dependencies, exactly what a plain ``bentoml build`` reads, which is the CPU bento. For ``cuda``
the one difference is that torch comes from PyPI, whose Linux wheels are the CUDA build and
bring their CUDA libraries with them: the image runs on a GPU node with the NVIDIA container
runtime, no CUDA base image needed.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import bentoml

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def options(device: str, pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The keyword arguments of :func:`bentoml.bentos.build` for ``device``."""
    project = tomllib.loads(pyproject.read_text())
    config: dict[str, Any] = dict(project["tool"]["bentoml"]["build"])
    python = dict(config.pop("python", {}))
    python["packages"] = [*python.get("packages", []), *project["project"]["dependencies"]]
    if device == "cuda":
        indexes = [url for url in python.get("extra_index_url", []) if url != CPU_INDEX]
        python["extra_index_url"] = indexes or None
    return {"name": project["project"]["name"], **config, "python": python}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    config = options(args.device)
    bento = bentoml.bentos.build(
        labels={"device": args.device},
        build_ctx=str(PYPROJECT.parent),
        **config,
    )
    print(f"built {bento.tag} ({args.device}); containerize: bentoml containerize {bento.tag}")


if __name__ == "__main__":
    main()
