"""Cluster glue: launcher configs, KubeRay manifests, the local multi-node launcher."""
