"""Packages: ``gateway`` and the repository's ``plugins/`` folder, installed as ``gateway_plugins``
(a top-level ``plugins`` in site-packages would collide with any other distribution's). The rest of
the metadata is in setup.cfg."""

from setuptools import find_packages, setup

plugins = [
    "gateway_plugins",
    *(f"gateway_plugins.{p}" for p in find_packages("plugins", exclude=["examples", "examples.*"])),
]
setup(packages=[*find_packages(include=["gateway", "gateway.*"]), *plugins], package_dir={"gateway_plugins": "plugins"})
