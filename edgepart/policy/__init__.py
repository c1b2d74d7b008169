"""Runtime policies: decisions made while requests flow, not fixed in a plan.

Each decision has exactly one implementation here (pure: no web, Kubernetes or
process code), called both by the simulator (`edgepart.sim`) and by the data
plane (`edgepart.partition_service`), so what the simulator predicts is what
the runtime does.

Accuracy-aware data partitioning (SOLVERS.md §8):
- `throughput`: θ per (node, variant) from the cost model, refined by measurement (EWMA);
- `dse`: configurations, the exact Pareto front over throughput, accuracy and power, image counts,
  completion time with links;
- `select`: the accuracy-aware policy and the baselines it is compared with;
- `manager`: the resource-manager finite-state machine.
"""
