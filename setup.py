"""Packages: ``gateway`` (with the repository's ``config/`` files as ``gateway/data/``) and the
repository's ``plugins/`` folder, installed as ``gateway_plugins`` (a top-level ``plugins`` in
site-packages would collide with any other distribution's). The rest of the metadata is in setup.cfg."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithConfig(build_py):
    """Also ship the repository's ``config/gateway.yaml`` and ``config/examples/*.yaml`` inside the
    package, as ``gateway/data/`` (``gateway.loading`` reads them there). ``config/`` stays their one
    source; an editable install reads it in place."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib, "gateway", "data")
        for source in [Path("config/gateway.yaml"), *sorted(Path("config/examples").glob("*.yaml"))]:
            dest = target / source.relative_to("config")
            self.mkpath(str(dest.parent))
            self.copy_file(str(source), str(dest))


plugins = [
    "gateway_plugins",
    *(f"gateway_plugins.{p}" for p in find_packages("plugins", exclude=["examples", "examples.*"])),
]
setup(
    packages=[*find_packages(include=["gateway", "gateway.*"]), *plugins],
    package_dir={"gateway_plugins": "plugins"},
    cmdclass={"build_py": BuildWithConfig},
)
