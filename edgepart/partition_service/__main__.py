"""`python -m edgepart.partition_service partition|gateway|ring` (config from EDGEPART_CONFIG)."""

from __future__ import annotations

import sys

from edgepart.partition_service.server import main

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("partition", "gateway", "ring"):
        print("usage: python -m edgepart.partition_service partition|gateway|ring  (config in EDGEPART_CONFIG)",
              file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "ring":
        from edgepart.partition_service.ring import serve_main

        sys.exit(serve_main())
    sys.exit(main("partition" if sys.argv[1] == "partition" else "gateway"))
