"""``python -m trainers``: the same CLI as the ``trainers`` command."""

from trainers.cli import main

main()
