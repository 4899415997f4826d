#!/usr/bin/env python3
"""Checks the Kubernetes manifests beside this file without a cluster.

Every file must parse as YAML with apiVersion and kind. The objects must
also agree with each other: the Deployment's selector matches its pod labels, the
Service and the PodDisruptionBudget select those pods, the Service's target
port is a named container port, the autoscaler scales this Deployment, the
probes ask for /healthz and /readyz, every ConfigMap key the Deployment reads
exists, and every Secret is referenced rather than defined here.

Usage: python3 deploy/k8s/validate.py   (needs PyYAML: Debian python3-yaml)
Exits non-zero and names the file and field of the first failed check.
"""

import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent


def fail(message):
    print(f"deploy/k8s: {message}", file=sys.stderr)
    sys.exit(1)


def load():
    objects = {}
    for path in sorted(HERE.glob("*.yaml")):
        try:
            documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        except yaml.YAMLError as error:
            fail(f"{path.name} is not valid YAML: {error}")
        if not documents:
            fail(f"{path.name} contains no document")
        for doc in documents:
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                fail(f"{path.name}: every document needs apiVersion and kind")
            if doc["kind"] in objects:
                fail(f"{path.name}: a second {doc['kind']}")
            objects[doc["kind"]] = (path.name, doc)
    return objects


def require(objects, kind):
    if kind not in objects:
        fail(f"no {kind} in deploy/k8s")
    return objects[kind]


def main():
    objects = load()
    _, kustomization = require(objects, "Kustomization")
    listed = set(kustomization.get("resources", []))
    present = {name for name, _ in objects.values()} - {"kustomization.yaml"}
    if listed != present:
        fail(f"kustomization.yaml lists {sorted(listed)} but the folder has {sorted(present)}")
    if any(kind == "Secret" for kind in objects):
        fail("a Secret is defined in the manifests; secrets must be created outside the repository")

    name, deployment = require(objects, "Deployment")
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    if any(pod_labels.get(key) != value for key, value in selector.items()):
        fail(f"{name}: spec.selector.matchLabels {selector} does not match the pod labels {pod_labels}")
    containers = spec["template"]["spec"]["containers"]
    ports = {port["name"] for container in containers for port in container.get("ports", [])}

    for container in containers:
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            actual = container.get(probe, {}).get("httpGet", {}).get("path")
            if actual != path:
                fail(f"{name}: container {container['name']} {probe} asks for {actual}, expected {path}")

    _, configmap = require(objects, "ConfigMap")
    config_keys = set(configmap.get("data", {}))
    for container in containers:
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("configMapKeyRef")
            if reference and (reference["name"] != configmap["metadata"]["name"] or reference["key"] not in config_keys):
                fail(f"{name}: env {variable['name']} reads ConfigMap key {reference}, which does not exist")
    for volume in spec["template"]["spec"].get("volumes", []):
        if "configMap" in volume and volume["configMap"]["name"] != configmap["metadata"]["name"]:
            fail(f"{name}: volume {volume['name']} mounts an unknown ConfigMap")

    for kind in ["Service", "PodDisruptionBudget"]:
        file, obj = require(objects, kind)
        chosen = obj["spec"]["selector"]
        chosen = chosen.get("matchLabels", chosen)
        if any(pod_labels.get(key) != value for key, value in chosen.items()):
            fail(f"{file}: selector {chosen} does not select the gateway pods")
    file, service = require(objects, "Service")
    for port in service["spec"]["ports"]:
        if port["targetPort"] not in ports:
            fail(f"{file}: targetPort {port['targetPort']} is not a named container port {sorted(ports)}")

    file, hpa = require(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    if target["kind"] != "Deployment" or target["name"] != deployment["metadata"]["name"]:
        fail(f"{file}: scaleTargetRef {target} is not the gateway Deployment")
    if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
        fail(f"{file}: minReplicas is above maxReplicas")

    print(f"deploy/k8s: {len(objects)} manifests valid")


if __name__ == "__main__":
    main()
