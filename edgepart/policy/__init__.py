"""Runtime policies: decisions made while requests flow, not fixed in a plan.

Each decision has exactly one implementation here (pure: no web, Kubernetes or
process code), called both by the simulator (`edgepart.sim`) and by the data
plane (`edgepart.partition_service`), so what the simulator predicts is what
the runtime does.

Several data sources on a ring (seed 001, SOLVERS.md §7):

- `allocation`: AR-MDI, which worker runs which units of one source's images
  (`UnitTable.of(graph)`, `ar_mdi_allocation(table, gamma, ring, source)`);
- `gamma`: `GammaEstimator`, the per-parameter compute delay as an EWMA that
  the worker feeds with measured compute times;
- `scheduling`: `make_policy("ms-mdi" | "ar-mdi" | "local")`, where an arrival
  goes (`route`) and what an idle worker serves (`pick`), from a view of
  queue lengths (its own exact, others' as last reported).

Accuracy-aware data partitioning (SOLVERS.md §8):
- `throughput`: θ per (node, variant) from the cost model, refined by measurement (EWMA);
- `dse`: configurations, the exact Pareto front over throughput, accuracy and power, image counts,
  completion time with links;
- `select`: the accuracy-aware policy and the baselines it is compared with;
- `manager`: the resource-manager finite-state machine.
"""
