"""`python -m sa3ckpt` runs the same CLI as the `sa3ckpt` console script."""

from sa3ckpt.cli import main

raise SystemExit(main())
