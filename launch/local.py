"""``python launch/local.py ...`` in a checkout: ``python -m neo_jax.launch.local ...``
(the launcher ships with the package; see ``neo_jax/launch/local.py``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from neo_jax.launch.local import main  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
  sys.exit(main())
