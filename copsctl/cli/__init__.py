"""The ``copsctl`` command line: one Typer app, one module per command.

Each command parses its options and calls one library function; the library never
imports the CLI.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make torch on a busy machine many times slower:
# one pre-training step (2 threads, another 2-thread job beside it on 2 cores) took 25 s
# with the default spin-waiting and 1.9 s with passive waiting. Set before torch loads
# OpenMP (the commands import torch lazily); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._app import app  # noqa: E402  (after the OpenMP setting)


def _register() -> None:
    # One line per command; each module holds one command's options.
    from . import make_synthetic  # noqa: F401  (make-synthetic)
    from . import solve  # noqa: F401  (solve)
    from . import make_costs  # noqa: F401  (make-costs)
    from . import demo  # noqa: F401  (demo)
    from . import evaluate  # noqa: F401  (evaluate)
    from . import recipe  # noqa: F401  (recipe)
    from . import pretrain  # noqa: F401  (pretrain)
    from . import dump_costs  # noqa: F401  (dump-costs)
    from . import finetune  # noqa: F401  (finetune)
    from . import calibrate  # noqa: F401  (calibrate)
    from . import visualize  # noqa: F401  (visualize image | run | pipeline)
    from . import predict  # noqa: F401  (predict)
    from . import export  # noqa: F401  (export)
    from . import check_data  # noqa: F401  (check-data)


_register()


def main() -> None:
    app()
