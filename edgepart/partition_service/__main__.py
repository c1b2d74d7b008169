"""`python -m edgepart.partition_service partition|gateway|ring|dispatcher|worker` (config from EDGEPART_CONFIG)."""

from __future__ import annotations

import sys

from edgepart.partition_service.server import Role, main

if __name__ == "__main__":
    roles: tuple[Role, ...] = ("partition", "gateway", "dispatcher", "worker")
    if len(sys.argv) != 2 or sys.argv[1] not in (*roles, "ring"):
        print("usage: python -m edgepart.partition_service partition|gateway|ring|dispatcher|worker  "
              "(config in EDGEPART_CONFIG)", file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "ring":
        from edgepart.partition_service.ring import serve_main

        sys.exit(serve_main())
    sys.exit(main(next(r for r in roles if r == sys.argv[1])))
