"""The one compiled part: scipy's gaussian passes, bit for bit and faster
(tasks/_correlate.c). Optional: without a C compiler the install goes on and the ops use
scipy itself, with the same results. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tasks._correlate",
            ["tasks/_correlate.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],  # no fused multiply-add
            optional=True,
        )
    ]
)
