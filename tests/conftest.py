"""Shared fixtures: traced zoo models are built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import fx

from edgepart.executor import EXACT_MKL_CBWR, Executor
from edgepart.graph.layer_graph import LayerGraph
from edgepart.graph.loader import ModelRef, load_model, trace_ref

# MKL reads this at its first call: every test that picks exact kernels later gets them bit-exact
os.environ.setdefault("MKL_CBWR", EXACT_MKL_CBWR)

_CACHE: dict[str, tuple[fx.GraphModule, LayerGraph, Executor]] = {}


def traced(name: str) -> tuple[fx.GraphModule, LayerGraph, Executor]:
    if name not in _CACHE:
        ref = ModelRef(name)
        gm, graph = trace_ref(ref, load_model(ref))
        _CACHE[name] = (gm, graph, Executor(gm, graph))
    return _CACHE[name]


@pytest.fixture(scope="session")
def zoo_traced() -> Callable[[str], tuple[fx.GraphModule, LayerGraph, Executor]]:
    return traced


@pytest.fixture(autouse=True)
def _keep_kernel_choice() -> Iterator[None]:
    """A test that picks exact kernels (use_exact_kernels) leaves the next test the default."""
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.set_flags(enabled)  # type: ignore[no-untyped-call]
