"""Build of etl's one C extension (``etl._scan``); all other metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("etl._scan", ["etl/_scan.c"],
                             extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"])])
