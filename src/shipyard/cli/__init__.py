"""The ``shipyard`` command (Typer), one module per command family.

- ``build``: build, optimize
- ``package``: one model file made a package, without a recipe
- ``verbs``: export and the one-off pass verbs (prune, finetune, quantize, convert)
- ``compare``: validate, compare, bench
- ``serve``: serve, inspect, report (``engine``: its Ray engine options)
- ``predict``: batch inference over a data file; ``deploy``: Kubernetes manifests
- ``sign``: sign, verify
- ``render``: every table the commands print; ``options``: options they share.
"""

from shipyard.cli import build, compare, deploy, package, predict, serve, sign, verbs
from shipyard.cli.app import app, main

__all__ = [
    "app", "build", "compare", "deploy", "main", "package", "predict", "serve", "sign", "verbs",
]  # fmt: skip
