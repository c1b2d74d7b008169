"""Model → LayerGraph (torch.fx + shape propagation), and the model zoo."""

from edgepart.graph.layer_graph import INPUT, GraphError, Layer, LayerGraph, Unit, trace
from edgepart.graph.ops import OpKind, Spatial, UnsupportedLayerError

__all__ = ["INPUT", "GraphError", "Layer", "LayerGraph", "OpKind", "Spatial", "Unit", "UnsupportedLayerError",
           "trace"]
