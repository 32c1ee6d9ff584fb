"""regtally's stages over Arrow, for Python and Apache Spark.

The Rust library does the work; this package hands it Arrow record batches and takes batches
back. `regtally.spark` runs a whole `regtally run` on Spark: ``python -m regtally.spark run
INPUT... -o OUT``.
"""

from . import _native
from ._native import UsageError

__all__ = ["UsageError", "_native"]
__version__ = "0.4.0"
