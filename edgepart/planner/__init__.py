"""Cost models and solvers.

    cluster.py      devices (profile x speed, memory) and links; built from a ClusterSpec
    costmodel.py    per-op linear cost models, device profiles (JSON), fitting (SOLVERS.md §2 A.1)
    evaluate.py     the reference evaluator: latency, throughput, per-stage breakdown, memory (A.3, C.0)
    segments.py     O(1) costs of row strips for the searches (separable B.1 maps x affine A.1 models)
    problem.py      what every search shares: units, split options, B.3 balancing
    fused_dp.py     HotEdge/AOFL's search over single / layer-wise / fused segments (C.1)
    pipeline_dp.py  PipeEdge's bottleneck DP (C.2)
    brute_force.py  exhaustive search, the tests' oracle
    builders.py     single, layer-wise and ftp-grid plans without a cost model
    registry.py     `solve(graph, model, cluster, objective, solver, **options)` and `SOLVERS`
"""
