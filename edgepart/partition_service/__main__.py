"""`python -m edgepart.partition_service partition|gateway` (config from EDGEPART_CONFIG)."""

from __future__ import annotations

import sys

from edgepart.partition_service.server import main

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("partition", "gateway"):
        print("usage: python -m edgepart.partition_service partition|gateway  (config in EDGEPART_CONFIG)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main("partition" if sys.argv[1] == "partition" else "gateway"))
