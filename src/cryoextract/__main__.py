"""``python -m cryoextract``."""

from cryoextract.cli.launch import main

main()
