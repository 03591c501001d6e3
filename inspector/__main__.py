"""Allow ``python -m inspector`` as an alias of the ``ggml-inspector`` console script."""

from inspector.cli import main

main()
