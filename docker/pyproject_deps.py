#!/usr/bin/env python3
"""Print the [project].dependencies of a pyproject.toml, one per line (a requirements file).

Used by docker/Dockerfile to install the heavy dependencies (torch, ray, ...) in their own layer,
before the package source is copied, so that editing platform/ does not reinstall them.
Works on Python 3.10 (no tomllib) through pip's vendored tomli.
"""

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, e.g. an Ubuntu 22.04 CUDA base image
    from pip._vendor import tomli as tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
