"""The Kubernetes control plane: a kopf operator for the DNNDeployment resource.

Layers, top to bottom (the upper may import the lower, never the reverse):

- ``handlers``: kopf handlers, thin; they gather what the cluster holds, call
  ``reconcile`` and hand its answer to ``apply``.
- ``apply``: the only module that talks to the Kubernetes API server.
- ``reconcile``: pure; ``reconcile(spec, nodes, profiles) -> DesiredState``.
- ``render``: pure; jinja2 (StrictUndefined) templates of every object.
- ``planning``, ``nodes``, ``profiles``, ``status``, ``crd``, ``names``: pure helpers.

The operator never executes a model, and never imports one a DNNDeployment
names: it plans from the LayerGraph (zoo models traced here on the ``meta``
device, no weights; any other model traced by a Job and handed back as JSON,
``graphs``) and from the device profiles.
"""
