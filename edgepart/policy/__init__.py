"""Runtime policies: decisions made while requests flow, not fixed in a plan.

Each decision has exactly one implementation here (pure: no web, Kubernetes or
process code), called both by the simulator (`edgepart.sim`) and by the data
plane (`edgepart.partition_service`), so what the simulator predicts is what
the runtime does.
"""
