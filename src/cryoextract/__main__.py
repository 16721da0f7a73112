"""``python -m cryoextract``."""

from cryoextract.cli.app import main

main()
