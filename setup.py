"""The compiled parts: scipy's gaussian passes (tasks/_correlate.c), median filter
(tasks/_median.c) and connected components (tasks/_label.c) and numpy's float histogram
(tasks/_histogram.c), the same results, faster. Optional: without a C compiler the install
goes on and the ops use scipy and numpy themselves. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            f"tasks._{name}",
            [f"tasks/_{name}.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],  # no fused multiply-add
            optional=True,
        )
        for name in ("correlate", "histogram", "label", "median")
    ]
)
