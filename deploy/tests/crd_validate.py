"""Validates custom resources against the CRD schemas of a fixture, strictly: a field a schema
does not name is an error (as kubectl's strict field validation), unless the schema preserves
unknown fields. Usage: crd_validate.py CRDS.yaml OBJECT.yaml...; prints one line per object."""
import sys

import jsonschema
import yaml


def closed(schema):
    """The schema with additionalProperties: false wherever it lists properties."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


crds = yaml.safe_load(open(sys.argv[1]))["items"]
schemas = {}
for crd in crds:
    for version in crd["spec"]["versions"]:
        key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
        schemas[key] = closed(version["schema"]["openAPIV3Schema"])
failed = False
for path in sys.argv[2:]:
    for obj in yaml.safe_load_all(open(path)):
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key not in schemas:
            print(f"FAIL {path}: no CRD for {key}")
            failed = True
            continue
        errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(obj), key=str)
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path)
            print(f"FAIL {path}: {key[1]} {obj['metadata']['name']}: {where}: {error.message}")
        failed |= bool(errors)
        if not errors:
            print(f"PASS {path}: {key[1]} {obj['metadata']['name']}")
sys.exit(1 if failed else 0)
