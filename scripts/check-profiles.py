#!/usr/bin/env python3
"""Checks that profiles/ is a consistent FHIR package.

    python3 scripts/check-profiles.py [profiles-dir]

- every file parses, is one of the resource types a package of ours holds,
  and is named <resourceType>-<id>.json;
- ids, urls, names and versions agree with package.json and its canonical base;
- StructureDefinitions: constraint derivations with a differential whose
  element ids and paths agree, a known base, known profiles and target
  profiles, bindings to a ValueSet of the package or a known external one,
  invariants with key, severity, human and an expression in the FHIRPath
  subset the gateway's validator runs;
- every local code in a fixed or pattern value, a ValueSet or a
  SearchParameter is defined in its CodeSystem;
- .index.json lists exactly the resources there are.

Exits 1 and lists every problem when there is one.
"""
import json
import os
import re
import sys

DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "profiles")
TYPES = {"StructureDefinition", "CodeSystem", "ValueSet", "SearchParameter"}

R4 = "http://hl7.org/fhir/StructureDefinition/"
FRC = "https://hl7.fr/ig/fhir/core/StructureDefinition/"
# Definitions outside the package a validator is expected to know (R4 core)
# or to treat as a base it does not expand (FR Core: see README).
KNOWN_STRUCTURES = {
    R4 + t for t in (
        "Patient Practitioner PractitionerRole Organization HealthcareService ServiceRequest Task Encounter "
        "EpisodeOfCare CarePlan DiagnosticReport Consent Observation Condition Resource Extension "
        "workflow-episodeOfCare"
    ).split()
} | {
    FRC + t for t in (
        "fr-core-patient fr-core-patient-ins fr-core-practitioner fr-core-practitioner-role fr-core-organization "
        "fr-core-healthcare-service fr-core-encounter fr-core-observation-body-weight "
        "fr-core-observation-body-height fr-core-observation-bmi fr-core-observation-bp "
        "fr-core-observation-heartrate fr-core-identity-reliability"
    ).split()
}
KNOWN_VALUESETS = set()  # every binding of ours points into the package
KNOWN_SYSTEMS = {
    "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org",
    "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes",
    "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes",
    "http://hl7.org/fhir/CodeSystem/task-code",
    "http://terminology.hl7.org/CodeSystem/observation-category",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "http://terminology.hl7.org/CodeSystem/consentscope",
    "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
    "http://hl7.org/fhir/request-status", "http://hl7.org/fhir/request-intent", "http://hl7.org/fhir/task-status",
    "http://hl7.org/fhir/observation-status", "http://hl7.org/fhir/encounter-status",
    "http://hl7.org/fhir/diagnostic-report-status",
    "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune",
    "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM",
    "https://mos.esante.gouv.fr/NOS/TRE_G09-DepartementOM/FHIR/TRE-G09-DepartementOM",
}
# FHIRPath the validator runs: these functions, '=', '!=', comparisons, and,
# or, implies, paths (choice elements by their name without [x]).
FHIRPATH_FUNCTIONS = {"exists", "empty", "not", "count", "where", "matches", "extension"}
BINDING_STRENGTHS = {"required", "extensible", "preferred", "example"}
SEVERITIES = {"error", "warning"}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def load():
    pkg_path = os.path.join(DIR, "package.json")
    try:
        pkg = json.load(open(pkg_path, encoding="utf-8"))
    except (OSError, ValueError) as err:
        problem("package.json", f"unreadable: {err}")
        return None, {}
    resources = {}
    for fn in sorted(os.listdir(DIR)):
        if not fn.endswith(".json") or fn in ("package.json", ".index.json"):
            continue
        try:
            r = json.load(open(os.path.join(DIR, fn), encoding="utf-8"))
        except ValueError as err:
            problem(fn, f"does not parse: {err}")
            continue
        resources[fn] = r
    return pkg, resources


def check_package(pkg):
    for field in ("name", "version", "canonical", "fhirVersions"):
        if field not in pkg:
            problem("package.json", f"{field} missing")
    if pkg.get("fhirVersions") != ["4.0.1"]:
        problem("package.json", "fhirVersions must be [\"4.0.1\"]")
    if not re.fullmatch(r"[a-z][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+", pkg.get("name", "")):
        problem("package.json", "name is not a FHIR package name")
    if not re.fullmatch(r"\d+\.\d+\.\d+(-[A-Za-z0-9.-]+)?", pkg.get("version", "")):
        problem("package.json", "version is not semver")


def check_common(fn, r, pkg, names, urls):
    rt, rid = r.get("resourceType"), r.get("id")
    if rt not in TYPES:
        problem(fn, f"resourceType {rt!r} is not one of {sorted(TYPES)}")
        return False
    if not rid or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", rid):
        problem(fn, f"id {rid!r} is not a FHIR id")
    if fn != f"{rt}-{rid}.json":
        problem(fn, f"should be named {rt}-{rid}.json")
    expected = f"{pkg['canonical']}/{rt}/{rid}"
    if r.get("url") != expected:
        problem(fn, f"url {r.get('url')!r}, expected {expected!r}")
    if r.get("version") != pkg["version"]:
        problem(fn, f"version {r.get('version')!r} differs from the package's {pkg['version']!r}")
    name = r.get("name", "")
    if rt != "SearchParameter" and not re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,254}", name):
        problem(fn, f"name {name!r} is not a computable name")
    if (rt, name) in names:
        problem(fn, f"name {name} also used by {names[(rt, name)]}")
    names[(rt, name)] = fn
    if r.get("url") in urls:
        problem(fn, f"url also used by {urls[r['url']]}")
    urls[r.get("url")] = fn
    if r.get("status") not in ("draft", "active", "retired", "unknown"):
        problem(fn, "status missing or invalid")
    return True


def codes_of(cs):
    out = set()

    def walk(concepts):
        for cpt in concepts or []:
            if cpt.get("code") in out:
                problem(f"CodeSystem-{cs['id']}.json", f"code {cpt.get('code')} defined twice")
            out.add(cpt.get("code"))
            walk(cpt.get("concept"))

    walk(cs.get("concept"))
    return out


def check_codesystem(fn, cs):
    codes = codes_of(cs)
    if cs.get("content") != "complete":
        problem(fn, "content should be complete")
    if cs.get("count") is not None and cs["count"] != len(codes):
        problem(fn, f"count {cs['count']} but {len(codes)} concepts")
    props = {p["code"] for p in cs.get("property", [])}
    for cpt in cs.get("concept", []):
        if not cpt.get("display"):
            problem(fn, f"code {cpt.get('code')} has no display")
        for p in cpt.get("property", []):
            if p.get("code") not in props:
                problem(fn, f"code {cpt.get('code')} uses undeclared property {p.get('code')}")


def check_code(where, system, code, local):
    if system is None or code is None:
        return
    if system in local:
        if code not in local[system]:
            problem(where, f"code {code!r} is not defined in {system}")
    elif system not in KNOWN_SYSTEMS:
        problem(where, f"unknown code system {system}")


def check_valueset(fn, vs, local, valuesets):
    for inc in vs.get("compose", {}).get("include", []):
        system = inc.get("system")
        for v in inc.get("valueSet", []):
            if v not in valuesets and v not in KNOWN_VALUESETS:
                problem(fn, f"includes unknown ValueSet {v}")
        if system and system not in local and system not in KNOWN_SYSTEMS:
            problem(fn, f"includes unknown code system {system}")
        for cpt in inc.get("concept", []):
            check_code(fn, system, cpt.get("code"), local)


def codings_in(value):
    """(system, code) pairs of every Coding inside a fixed/pattern value."""
    if isinstance(value, dict):
        if "system" in value and "code" in value:
            yield value["system"], value["code"]
        for v in value.values():
            yield from codings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from codings_in(v)


def strip_slices(eid):
    return ".".join(seg.split(":", 1)[0] for seg in eid.split("."))


def fhirpath_functions(expr):
    # Function names are identifiers followed by '(' (ignore string literals).
    no_strings = re.sub(r"'(?:[^'\\]|\\.)*'", "''", expr)
    return set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", no_strings)) - {"and", "or", "implies", "xor"}


def check_structure(fn, sd, local, valuesets, structures, inv_keys):
    if sd.get("fhirVersion") != "4.0.1":
        problem(fn, "fhirVersion must be 4.0.1")
    if sd.get("derivation") != "constraint":
        problem(fn, "derivation must be constraint")
    base = sd.get("baseDefinition")
    if base not in structures and base not in KNOWN_STRUCTURES:
        problem(fn, f"unknown baseDefinition {base}")
    if "snapshot" in sd:
        problem(fn, "carries a snapshot (the package ships differentials only)")
    elements = sd.get("differential", {}).get("element", [])
    if not elements:
        problem(fn, "empty differential")
    seen = set()
    slices = set()
    rtype = sd.get("type")
    if sd.get("kind") == "complex-type" and rtype == "Extension":
        url_el = [el for el in elements if el.get("id") == "Extension.url"]
        if not url_el or url_el[0].get("fixedUri") != sd.get("url"):
            problem(fn, "Extension.url must be fixed to the extension's url")
        if not sd.get("context"):
            problem(fn, "an extension needs a context")
    for el in elements:
        eid, path = el.get("id", ""), el.get("path", "")
        where = f"{fn} {eid}"
        if eid in seen:
            problem(where, "element id repeated")
        seen.add(eid)
        if not eid.split(".")[0] == rtype:
            problem(where, f"does not start with the type {rtype}")
        if strip_slices(eid) != path:
            problem(where, f"path {path!r} does not match the id")
        last = eid.split(".")[-1]
        if ":" in last:
            if el.get("sliceName") != last.split(":", 1)[1]:
                problem(where, "sliceName does not match the id")
            parent = eid.rsplit(":", 1)[0]
            slices.add(parent)
        if "min" in el and "max" in el and el["max"] != "*" and int(el["max"]) < el["min"]:
            problem(where, "max < min")
        for t in el.get("type", []):
            for p in t.get("profile", []) + t.get("targetProfile", []):
                if p not in structures and p not in KNOWN_STRUCTURES:
                    problem(where, f"unknown profile {p}")
        b = el.get("binding")
        if b:
            if b.get("strength") not in BINDING_STRENGTHS:
                problem(where, f"binding strength {b.get('strength')!r}")
            if b.get("valueSet") not in valuesets and b.get("valueSet") not in KNOWN_VALUESETS:
                problem(where, f"binding to unknown ValueSet {b.get('valueSet')}")
        for k, v in el.items():
            if k.startswith("fixed") or k.startswith("pattern"):
                for system, code in codings_in(v):
                    check_code(where, system, code, local)
                if k in ("fixedCode",) and not isinstance(v, str):
                    problem(where, "fixedCode must be a string")
        for con in el.get("constraint", []):
            key = con.get("key")
            if not key or not re.fullmatch(r"apa-[a-z0-9]+-[0-9]+", key):
                problem(where, f"invariant key {key!r} should be apa-<name>-<n>")
            # The same rule may be stated by two profiles, under one key.
            if key in inv_keys and inv_keys[key][1] != con.get("expression"):
                problem(where, f"invariant key {key} also defined, differently, in {inv_keys[key][0]}")
            inv_keys.setdefault(key, (fn, con.get("expression")))
            if con.get("severity") not in SEVERITIES:
                problem(where, f"invariant {key} severity {con.get('severity')!r}")
            if not con.get("human"):
                problem(where, f"invariant {key} has no human text")
            expr = con.get("expression", "")
            if not expr:
                problem(where, f"invariant {key} has no expression")
            extra = fhirpath_functions(expr) - FHIRPATH_FUNCTIONS
            if extra:
                problem(where, f"invariant {key} uses FHIRPath functions outside the subset: {sorted(extra)}")
            if expr.count("(") != expr.count(")"):
                problem(where, f"invariant {key} has unbalanced parentheses")
            for url in re.findall(r"'(https://apa-gateway\.fr/fhir/[^']+)'", expr):
                if url not in structures and url not in local:
                    problem(where, f"invariant {key} names unknown {url}")
            for system, code in re.findall(r"system = '([^']+)' and code = '([^']+)'", expr):
                check_code(where, system, code, local)
        for cond in el.get("condition", []):
            if not any(cond == c.get("key") for e2 in elements for c in e2.get("constraint", [])):
                problem(where, f"condition {cond} names no invariant of this profile")
    for parent in slices:
        # A validator without the FR Core package must still find the
        # discriminator: every slicing we use is restated here.
        if parent not in seen or not any(el.get("id") == parent and el.get("slicing") for el in elements):
            problem(f"{fn} {parent}", "slices without a slicing in this differential")


def check_searchparameter(fn, sp, local, structures):
    for field in ("code", "base", "type", "expression", "description"):
        if not sp.get(field):
            problem(fn, f"{field} missing")
    if sp.get("type") not in ("number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"):
        problem(fn, f"type {sp.get('type')!r}")
    expr = sp.get("expression", "")
    for base in sp.get("base", []):
        if not expr.startswith(base + "."):
            problem(fn, f"expression does not start with {base}")
    for url in re.findall(r"'(https://apa-gateway\.fr/fhir/[^']+)'", expr):
        if url not in structures and url not in local:
            problem(fn, f"expression names unknown {url}")


def check_index(resources):
    path = os.path.join(DIR, ".index.json")
    try:
        index = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as err:
        problem(".index.json", f"unreadable: {err}")
        return
    if index.get("index-version") != 1:
        problem(".index.json", "index-version must be 1")
    listed = {f.get("filename"): f for f in index.get("files", [])}
    for fn, r in resources.items():
        f = listed.pop(fn, None)
        if f is None:
            problem(".index.json", f"{fn} not listed")
            continue
        for field in ("resourceType", "id", "url", "version"):
            if f.get(field) != r.get(field):
                problem(".index.json", f"{fn}: {field} {f.get(field)!r} differs from the file's {r.get(field)!r}")
        if r.get("resourceType") == "StructureDefinition":
            for field in ("kind", "type"):
                if f.get(field) != r.get(field):
                    problem(".index.json", f"{fn}: {field} differs")
    for fn in listed:
        problem(".index.json", f"lists {fn}, which does not exist")


def main():
    pkg, resources = load()
    if pkg is None:
        return report()
    check_package(pkg)
    names, urls = {}, {}
    ok = {fn: r for fn, r in resources.items() if check_common(fn, r, pkg, names, urls)}
    local = {r["url"]: codes_of(r) for r in ok.values() if r["resourceType"] == "CodeSystem"}
    valuesets = {r["url"] for r in ok.values() if r["resourceType"] == "ValueSet"}
    structures = {r["url"] for r in ok.values() if r["resourceType"] == "StructureDefinition"}
    inv_keys = {}
    for fn, r in ok.items():
        rt = r["resourceType"]
        if rt == "CodeSystem":
            check_codesystem(fn, r)
        elif rt == "ValueSet":
            check_valueset(fn, r, local, valuesets)
        elif rt == "StructureDefinition":
            check_structure(fn, r, local, valuesets, structures, inv_keys)
        elif rt == "SearchParameter":
            check_searchparameter(fn, r, local, structures)
    check_index(resources)
    counts = {}
    for r in ok.values():
        counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
    return report(counts)


def report(counts=None):
    if problems:
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s)")
        return 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted((counts or {}).items()))
    print(f"profiles/ consistent: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
