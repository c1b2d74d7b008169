"""Model variants: one model at several accuracy/cost points, with accuracy measured or declared.

The shipped `digits` family is trained and evaluated by this project on
scikit-learn's bundled digits (`python -m edgepart.variants retrain`);
`imagenet_declared()` lists zoo classifiers with their published top-1.
"""

from edgepart.variants.family import (
    FamilyError,
    FamilyManifest,
    SplitRecord,
    family_graphs,
    imagenet_declared,
    load_manifest,
    model_ref,
    retrain_family,
    shipped_family,
    shipped_manifest_path,
)

__all__ = ["FamilyError", "FamilyManifest", "SplitRecord", "family_graphs", "imagenet_declared", "load_manifest",
           "model_ref", "retrain_family", "shipped_family", "shipped_manifest_path"]
