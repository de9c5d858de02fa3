"""``python -m metagen ...``: the ``metagen`` command, also as ``torchrun ... -m metagen meta-train ...``."""

from metagen_cli.app import main

main()
