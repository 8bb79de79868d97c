"""``python -m ood_bench`` is the ``ood-bench`` command."""

import sys

from ood_bench.cli.main import main

sys.exit(main())
