#!/usr/bin/env python3
"""Checks fixture Bundles against the APA implementation guide (profiles/).

    python3 scripts/check-fixtures.py [bundle.json ...]   # default: fixtures/demo/*.json

Each entry's resource is validated against the profiles it claims, with the
same reading of our differentials as scripts/check-profiles.py applies to
profiles/example/ (cardinalities per slice, fixed and pattern values, choice
types, reference targets, required bindings; the invariants too when
fhirpathpy is installed). Besides:
- every resource claims a profile: one of the package, or one of FR Core
  the package refers to (PractitionerRole: the package has no profile of its
  own; FR Core is not shipped, so such a resource is only checked for the rest);
- every entry is `PUT Type/id` with the resource's type and id (fixed ids,
  so that documentation can name them);
- every literal reference points to an entry of the same Bundle.

Exits 1 and lists every problem when there is one.
"""
import glob
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")

spec = importlib.util.spec_from_file_location("check_profiles", os.path.join(HERE, "check-profiles.py"))
cp = importlib.util.module_from_spec(spec)
files = sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "fixtures", "demo", "*.json")))
# check-profiles reads its package folder from argv[1]: give it ours.
sys.argv = sys.argv[:1]
spec.loader.exec_module(cp)


def references(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.append(v)
            else:
                references(v, out)
    elif isinstance(node, list):
        for v in node:
            references(v, out)


def main():
    pkg, resources = cp.load()
    if pkg is None:
        return cp.report()
    structures = {r["url"]: r for r in resources.values() if r.get("resourceType") == "StructureDefinition"}
    by_url = {r["url"]: r for r in resources.values() if "url" in r}
    referred = {
        p for sd in structures.values() for el in sd["differential"]["element"]
        for t in el.get("type", []) for p in t.get("targetProfile", []) + t.get("profile", [])
    }
    n = 0
    for path in files:
        name = os.path.relpath(path, ROOT)
        try:
            bundle = json.load(open(path, encoding="utf-8"))
        except ValueError as err:
            cp.problem(name, f"does not parse: {err}")
            continue
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            cp.problem(name, "is not a transaction Bundle")
            continue
        ids = set()
        for i, e in enumerate(bundle.get("entry", [])):
            res = e.get("resource", {})
            key = f"{res.get('resourceType')}/{res.get('id')}"
            where = f"{name} entry[{i}] {key}"
            req = e.get("request", {})
            if req.get("method") != "PUT" or req.get("url") != key:
                cp.problem(where, f"request should be PUT {key}, not {req.get('method')} {req.get('url')}")
            if key in ids:
                cp.problem(where, "appears twice")
            ids.add(key)
            claimed = res.get("meta", {}).get("profile", [])
            if any(p in structures for p in claimed):
                cp.validate_example(where, res, structures, by_url)
            elif not any(p in referred and p in cp.KNOWN_STRUCTURES for p in claimed):
                cp.problem(where, "claims no profile of the package nor an FR Core profile it refers to")
            n += 1
        for i, e in enumerate(bundle.get("entry", [])):
            refs = []
            references(e.get("resource", {}), refs)
            for r in refs:
                if r not in ids:
                    cp.problem(f"{name} entry[{i}]", f"reference {r} is not an entry of the Bundle")
    if cp.problems:
        return cp.report()
    print(f"fixtures valid: {n} resources in {len(files)} Bundle(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
