"""Prometheus metrics of one data-plane process (its own registry, no globals).

Every series carries the labels deployment, stage and partition (the gateway
uses stage="gateway", partition="gateway"); errors also carry a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_LABELS = ("deployment", "stage", "partition")
# 0.5 ms .. ~60 s: a tile on a fast core up to a whole model on a 0.2-CPU device
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class _Bound:
    queue: Histogram
    assemble: Histogram
    compute: Histogram
    send: Histogram
    request: Histogram
    bytes_in: Counter
    bytes_out: Counter
    inflight: Gauge
    payload: Gauge
    errors: Counter


class ServiceMetrics:
    """The metrics of one partition or gateway, bound to its labels."""

    def __init__(self, deployment: str, stage: str, partition: str):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._labels = {"deployment": deployment, "stage": stage, "partition": partition}
        self._children: dict[tuple[Counter, str], Counter] = {}
        self._errors = Counter("edgepart_errors", "Errors by reason.", [*_LABELS, "reason"], registry=r)
        self._dropped = Counter("edgepart_dropped", "Requests dropped because their deadline passed, by where "
                                "they waited (admission, assembly, compute_queue, send).", [*_LABELS, "reason"],
                                registry=r)
        self._cancelled = Counter("edgepart_requests_cancelled", "Requests the gateway gave up (on the gateway: "
                                  "cancels it sent; on a partition: requests whose work it dropped for a cancel), "
                                  "by the gateway's reason (timeout, peer_unreachable, abandoned, ...).",
                                  [*_LABELS, "reason"], registry=r)
        self._admission = Counter("edgepart_admission", "Gateway admission decisions (admitted, rejected).",
                                  [*_LABELS, "decision"], registry=r)
        self.admission_bound = Gauge("edgepart_admission_bound", "Requests the gateway admits at once now "
                                     "(measured from the service time and the timeout).", _LABELS,
                                     registry=r).labels(**self._labels)
        self.admission_inflight = Gauge("edgepart_admission_inflight", "Requests admitted at the gateway and "
                                        "not answered.", _LABELS, registry=r).labels(**self._labels)
        self.m = _Bound(
            queue=Histogram("edgepart_queue_seconds", "Time a request waits for admission or for the compute "
                            "worker.", _LABELS, buckets=_BUCKETS, registry=r),
            assemble=Histogram("edgepart_assemble_seconds", "Time from the first to the last piece of a "
                               "request's input.", _LABELS, buckets=_BUCKETS, registry=r),
            compute=Histogram("edgepart_compute_seconds", "Time to compute the slice.", _LABELS,
                              buckets=_BUCKETS, registry=r),
            send=Histogram("edgepart_send_seconds", "Time to send one piece to a peer (emulated latency "
                           "included).", _LABELS, buckets=_BUCKETS, registry=r),
            request=Histogram("edgepart_request_seconds", "End-to-end time of a request in this process "
                              "(gateway: client's request in to answer out).", _LABELS, buckets=_BUCKETS,
                              registry=r),
            bytes_in=Counter("edgepart_received_bytes", "Tensor frame bytes received.", _LABELS, registry=r),
            bytes_out=Counter("edgepart_sent_bytes", "Tensor frame bytes sent.", _LABELS, registry=r),
            inflight=Gauge("edgepart_inflight_requests", "Requests admitted and not finished.", _LABELS,
                           registry=r),
            payload=Gauge("edgepart_payload_bytes_in_flight", "Payload bytes received and not yet handed on "
                          "(capped per process).", _LABELS, registry=r),
            errors=self._errors,
        )
        self.queue = self.m.queue.labels(**self._labels)
        self.assemble = self.m.assemble.labels(**self._labels)
        self.compute = self.m.compute.labels(**self._labels)
        self.send = self.m.send.labels(**self._labels)
        self.request = self.m.request.labels(**self._labels)
        self.bytes_in = self.m.bytes_in.labels(**self._labels)
        self.bytes_out = self.m.bytes_out.labels(**self._labels)
        self.inflight = self.m.inflight.labels(**self._labels)
        self.payload = self.m.payload.labels(**self._labels)

    def _child(self, family: Counter, key: str, value: str) -> Counter:
        # labels() takes a lock and builds a key on every call: each labelled child is looked up once
        child = self._children.get((family, value))
        if child is None:
            child = self._children[(family, value)] = family.labels(**self._labels, **{key: value})
        return child

    def error(self, reason: str) -> None:
        self._child(self._errors, "reason", reason).inc()

    def dropped(self, reason: str) -> None:
        self._child(self._dropped, "reason", reason).inc()

    def cancelled(self, reason: str) -> None:
        self._cancelled.labels(**self._labels, reason=reason).inc()

    def admission(self, decision: str) -> None:
        self._child(self._admission, "decision", decision).inc()

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
