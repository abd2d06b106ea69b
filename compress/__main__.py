"""`python -m compress ...` is `python -m compress.run ...`."""
from archs.errors import run_cli

from .run import main

run_cli(main, prog="python -m compress")
