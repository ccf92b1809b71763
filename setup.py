"""The C parts (components/anomaly_mlops/model/_forest_walk.c, the forest walk, and
_window_stats.c, the window columns); everything else is in pyproject.toml. Optional: without a
C compiler the install still succeeds and model/fastforest.py and model/features.py compute with
numpy (the same figures, bit for bit, slower)."""

from setuptools import Extension, setup

# No fused multiply-adds: each product and sum is rounded as numpy rounds it. -O3 vectorizes the
# window sums' eight accumulators (the order of the additions stays numpy's).
FLAGS = {"_forest_walk": ["-O2"], "_window_stats": ["-O3", "-ffp-contract=off"]}

setup(
    ext_modules=[
        Extension(
            f"anomaly_mlops.model.{name}",
            sources=[f"components/anomaly_mlops/model/{name}.c"],
            extra_compile_args=flags,
            optional=True,
        )
        for name, flags in FLAGS.items()
    ]
)
