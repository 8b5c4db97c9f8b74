"""``python -m shards.cli``: the ``shards`` command."""

import sys

from shards.cli.parser import main

sys.exit(main())
