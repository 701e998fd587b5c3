"""The package build compiles etcd's API (``shared/etcd_api/*.proto``) first: the generated
modules are never committed, so a wheel, an sdist install or the image gets them here
(``scripts/gen_etcd_api.py``; grpcio-tools is a build requirement in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithEtcdApi(build_py):
    def run(self) -> None:
        script = Path(__file__).resolve().parent / "scripts" / "gen_etcd_api.py"
        subprocess.run([sys.executable, str(script)], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithEtcdApi})
