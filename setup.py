"""The forest walk in C (components/anomaly_mlops/model/_forest_walk.c); everything else is in
pyproject.toml. Optional: without a C compiler the install still succeeds and
model/fastforest.py walks with numpy (the same scores, slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "anomaly_mlops.model._forest_walk",
            sources=["components/anomaly_mlops/model/_forest_walk.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
