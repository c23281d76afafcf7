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
- .index.json lists exactly the resources there are;
- the examples in profiles/example/ are valid against the profiles they claim
  (our differentials; invariants too when fhirpathpy is installed), and each
  invariant gives the expected result on its test vectors.

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
            # Codes an invariant tests must exist in the local systems it names.
            named = [u for u in re.findall(r"system = '([^']+)'", expr) if u in local]
            if named:
                for code in re.findall(r"code = '([^']+)'", expr):
                    if not any(code in local[u] for u in named):
                        problem(where, f"invariant {key} tests code {code!r}, defined in none of {named}")
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


# Test vectors for the invariants: (key, resource, expected). Run through
# fhirpathpy when it is installed (pip install fhirpathpy), skipped otherwise;
# the Rust validator can reuse them. Extension invariants are evaluated on
# each extension of the resource ('extension.select(...)').
_RK = "https://apa-gateway.fr/fhir/CodeSystem/recipient-kind"
_UCUM = "http://unitsofmeasure.org"
_IR = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
_TER = "https://apa-gateway.fr/fhir/StructureDefinition/apa-territory"
_COMMUNE = "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune"
_DEP = "https://mos.esante.gouv.fr/NOS/TRE_G09-DepartementOM/FHIR/TRE-G09-DepartementOM"
_FL = "https://apa-gateway.fr/fhir/CodeSystem/functional-limitation"
_ST = "https://apa-gateway.fr/fhir/CodeSystem/staff-kind"


def _sr(months=4, reason=True):
    r = {"resourceType": "ServiceRequest", "status": "active", "intent": "original-order",
         "occurrenceTiming": {"repeat": {"boundsDuration": {"value": months, "system": _UCUM, "code": "mo"},
                                         "duration": 60, "durationUnit": "min",
                                         "frequency": 2, "period": 1, "periodUnit": "wk"}}}
    if reason:
        r["reasonCode"] = [{"text": "diabète de type 2"}]
    return r


def _patient(status="QUAL", nir="189127512501282"):
    return {"resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": nir}],
            "extension": [{"url": _IR, "extension": [{"url": "identityStatus", "valueCoding": {"code": status}}]}]}


def _org(kind="MSS", territory=("2A004", _COMMUNE), siret="12345678901234"):
    r = {"resourceType": "Organization", "identifier": [{"system": "https://sirene.fr", "value": siret}],
         "type": [{"coding": [{"system": _RK, "code": kind}]}] if kind else []}
    if territory:
        r["extension"] = [{"url": _TER, "valueCoding": {"system": territory[1], "code": territory[0]}}]
    return r


def _task(status, reason):
    r = {"resourceType": "Task", "status": status}
    if reason:
        r["statusReason"] = {"text": "programme complet"}
    return r


def _consent(*refs):
    return {"resourceType": "Consent", "provision": {"type": "deny", "actor": [
        {"role": {"coding": [{"system": _RK, "code": "CPTS"}]}, "reference": ref} for ref in refs]}}


def _qty(v, code="{score}"):
    return {"resourceType": "Observation", "valueQuantity": {"value": v, "system": _UCUM, "code": code}}


INVARIANT_CASES = [
    ("apa-sr-1", _sr(), True), ("apa-sr-1", _sr(reason=False), False),
    ("apa-sr-2", _sr(3), True), ("apa-sr-2", _sr(6), True), ("apa-sr-2", _sr(9), False), ("apa-sr-2", _sr(2), False),
    ("apa-sr-3", _sr(), True),
    ("apa-task-1", _task("rejected", False), False), ("apa-task-1", _task("rejected", True), True),
    ("apa-task-1", _task("on-hold", True), True), ("apa-task-1", _task("accepted", True), False),
    ("apa-task-1", _task("completed", False), True),
    ("apa-pat-1", _patient(), True), ("apa-pat-1", _patient("VALI"), False),
    ("apa-pat-1", {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]}, True),
    ("apa-pat-1", {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "189127512501282",
                   "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NH"}]}}]}, True),
    ("apa-pat-2", _patient(), True), ("apa-pat-2", _patient(nir="189122A12501282"), True),
    ("apa-pat-2", _patient(nir="18912751250128"), False),
    ("apa-ins-1", _patient(), True), ("apa-ins-1", _patient("PROV"), False),
    ("apa-prac-1", {"resourceType": "Practitioner", "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10101010101"}]}, True),
    ("apa-prac-1", {"resourceType": "Practitioner", "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "1010101010"}]}, False),
    ("apa-prac-2", {"resourceType": "Practitioner", "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810101010101"}]}, True),
    ("apa-prac-2", {"resourceType": "Practitioner", "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "8101"}]}, False),
    ("apa-org-1", _org(), True), ("apa-org-2", _org(), True), ("apa-org-2", _org(siret="1234"), False),
    ("apa-org-3", {"resourceType": "Organization", "identifier": [{"system": "https://finess.esante.gouv.fr", "value": "2A0000123"}]}, True),
    ("apa-org-3", {"resourceType": "Organization", "identifier": [{"system": "https://finess.esante.gouv.fr", "value": "2C0000123"}]}, False),
    ("apa-org-4", _org(kind=None), False), ("apa-org-4", _org(kind="CPTS"), True),
    ("apa-org-5", _org(territory=None), False), ("apa-org-5", _org(kind="DMP", territory=None), True),
    ("apa-ter-1", _org(), True), ("apa-ter-1", _org(territory=("974", _DEP)), True),
    ("apa-ter-1", _org(territory=("2C", _DEP)), False), ("apa-ter-1", _org(territory=("7510", _COMMUNE)), False),
    ("apa-prog-1", {"resourceType": "HealthcareService", "characteristic": [
        {"coding": [{"system": _FL, "code": "severe"}]}, {"coding": [{"system": _ST, "code": "EAPA"}]}]}, False),
    ("apa-prog-1", {"resourceType": "HealthcareService", "characteristic": [
        {"coding": [{"system": _FL, "code": "severe"}]}, {"coding": [{"system": _ST, "code": "MK"}]}]}, True),
    ("apa-eoc-1", {"resourceType": "EpisodeOfCare", "status": "active"}, False),
    ("apa-eoc-2", {"resourceType": "EpisodeOfCare", "status": "finished", "period": {"start": "2026-01-05"}}, False),
    ("apa-enc-1", {"resourceType": "Encounter", "status": "finished", "period": {"start": "2026-01-05T10:00:00+01:00"}}, False),
    ("apa-borg-1", _qty(13), True), ("apa-borg-1", _qty(21), False),
    ("apa-epices-1", _qty(30.17), True), ("apa-att-1", _qty(120, "%"), False),
    ("apa-cons-1", _consent({"display": "toute CPTS"}), True),
    ("apa-cons-1", _consent({"reference": "Organization/cpts-est"}), True),
    ("apa-cons-1", _consent({"reference": "Patient/p1"}), False),
    ("apa-cons-1", _consent({"identifier": {"value": "x"}}), False),
    ("apa-dr-1", {"resourceType": "DiagnosticReport", "presentedForm": [{"contentType": "application/pdf"}]}, False),
]


def check_invariant_cases(resources):
    try:
        from fhirpathpy import evaluate
        from fhirpathpy.models import models
    except ImportError:
        print("(fhirpathpy not installed: invariant test vectors skipped)")
        return 0
    found = {}
    for r in resources.values():
        if r.get("resourceType") != "StructureDefinition":
            continue
        for el in r.get("differential", {}).get("element", []):
            for con in el.get("constraint", []):
                found[con["key"]] = (r["type"], el["path"], con["expression"])
    untested = set(found) - {k for k, _, _ in INVARIANT_CASES}
    for key in sorted(untested):
        problem("invariants", f"{key} has no test vector")
    for key, res, expected in INVARIANT_CASES:
        if key not in found:
            problem("invariants", f"test vector for unknown invariant {key}")
            continue
        rtype, path, expr = found[key]
        if rtype == "Extension":
            expr = f"extension.select({expr})"
        elif path.count(".") == 1:
            expr = f"{path.split('.', 1)[1]}.select({expr})"
        try:
            got = evaluate(res, expr, {}, models["r4"])
        except Exception as err:  # noqa: BLE001 - report any engine failure
            problem("invariants", f"{key}: evaluation failed: {err}")
            continue
        if got != [expected]:
            problem("invariants", f"{key}: got {got} on {json.dumps(res)}, expected {expected}")
    return len(INVARIANT_CASES)


# --------------------------------------------------------------------------
# The examples (profiles/example/) against our differentials: a small
# reading of the rules the Rust validator will apply (cardinality per slice,
# fixed / pattern, choice types, reference targets, required bindings to our
# value sets, invariants when fhirpathpy is there). FR Core and R4 base
# constraints are not checked here.

R4_TYPES_OF_FRC = {
    "fr-core-patient": "Patient", "fr-core-patient-ins": "Patient", "fr-core-practitioner": "Practitioner",
    "fr-core-practitioner-role": "PractitionerRole", "fr-core-organization": "Organization",
    "fr-core-healthcare-service": "HealthcareService", "fr-core-encounter": "Encounter",
}


def _items(v):
    return v if isinstance(v, list) else ([] if v is None else [v])


def _children(node, name):
    if not isinstance(node, dict):
        return []
    if name.endswith("[x]"):
        prefix = name[:-3]
        out = []
        for k, v in node.items():
            if k.startswith(prefix) and k[len(prefix):len(prefix) + 1].isupper():
                out.extend(_items(v))
        return out
    return _items(node.get(name))


def _contains(node, pattern):
    if isinstance(pattern, dict):
        return isinstance(node, dict) and all(
            k in node and _contains(node[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        items = _items(node)
        return all(any(_contains(i, p) for i in items) for p in pattern)
    return node == pattern


def _fixed_or_pattern(el):
    for k, v in el.items():
        if k.startswith("fixed") or k.startswith("pattern"):
            return k.startswith("fixed"), v
    return None


class Differential:
    def __init__(self, sd):
        self.sd = sd
        self.by_id = {el["id"]: el for el in sd["differential"]["element"]}

    def in_slice(self, node, sliced_id, slice_name):
        slicing = self.by_id.get(sliced_id, {}).get("slicing")
        slice_el = self.by_id.get(f"{sliced_id}:{slice_name}", {})
        if not slicing:
            return False
        for d in slicing["discriminator"]:
            path, typ = d["path"], d["type"]
            if path == "url" and typ == "value":
                urls = [pr for t in slice_el.get("type", []) for pr in t.get("profile", [])]
                if not isinstance(node, dict) or node.get("url") not in urls:
                    return False
            elif typ == "type":
                want = [t["code"] for t in self.by_id.get(f"{sliced_id}:{slice_name}.{path}[x]", {}).get("type", [])]
                if want and not any(k == path + w[0].upper() + w[1:] for k in node for w in want):
                    return False
            else:
                target = slice_el if path == "$this" else self.by_id.get(f"{sliced_id}:{slice_name}.{path}")
                fp = _fixed_or_pattern(target or {})
                if fp is None:
                    # a value discriminator on coding.code / coding.system: read them from the slice pattern
                    fp = _fixed_or_pattern(slice_el)
                    if fp is None:
                        return False
                    value = fp[1]
                    for part in path.split("."):
                        value = [x for v in _items(value) for x in _items(v.get(part) if isinstance(v, dict) else None)]
                    if not all(w in _walk(node, path) for w in value):
                        return False
                    continue
                node_at = node if path == "$this" else _walk(node, path)
                if path == "$this":
                    if not _contains(node_at, fp[1]):
                        return False
                elif not any(_contains(n, fp[1]) for n in node_at):
                    return False
        return True

    def nodes(self, resource, eid):
        """The instance nodes of an element id, slices applied."""
        segs = eid.split(".")
        current = [resource]
        prefix = segs[0]
        for seg in segs[1:]:
            name, _, slice_name = seg.partition(":")
            nxt = [c for n in current for c in _children(n, name)]
            prefix = f"{prefix}.{name}"
            if slice_name:
                nxt = [c for c in nxt if self.in_slice(c, prefix, slice_name)]
                prefix = f"{prefix}:{slice_name}"
            current = nxt
        return current


def _walk(node, path):
    current = [node]
    for part in path.split("."):
        current = [c for n in current for c in _children(n, part)]
    return current


def _expand(vs, resources_by_url):
    """(system, code or None) pairs a local value set allows (None: the whole external system)."""
    allowed = set()
    for inc in vs.get("compose", {}).get("include", []):
        system = inc.get("system")
        if inc.get("concept"):
            allowed |= {(system, c["code"]) for c in inc["concept"]}
        elif system in resources_by_url:
            allowed |= {(system, c) for c in codes_of(resources_by_url[system])}
        else:
            allowed.add((system, None))
    return allowed


def _coded(node):
    if isinstance(node, str):
        return [(None, node)]
    if isinstance(node, dict) and "coding" in node:
        return [(c.get("system"), c.get("code")) for c in node["coding"]]
    if isinstance(node, dict):
        return [(node.get("system"), node.get("code"))]
    return []


def _target_types(profiles, structures_by_url):
    out = set()
    for pr in profiles:
        if pr in structures_by_url:
            out.add(structures_by_url[pr]["type"])
        elif pr.startswith(FRC):
            out.add(R4_TYPES_OF_FRC.get(pr[len(FRC):], pr))
        else:
            out.add(pr.rsplit("/", 1)[1])
    return out


def validate_example(fn, res, structures_by_url, resources_by_url):
    claimed = [p for p in res.get("meta", {}).get("profile", []) if p in structures_by_url]
    if not claimed:
        problem(fn, "claims no profile of the package")
    try:
        from fhirpathpy import evaluate
        from fhirpathpy.models import models
    except ImportError:
        evaluate = None
    for url in claimed:
        sd = structures_by_url[url]
        diff = Differential(sd)
        for el in sd["differential"]["element"]:
            eid = el["id"]
            where = f"{fn} [{sd['id']}] {eid}"
            nodes = diff.nodes(res, eid)
            if "." in eid and ("min" in el or "max" in el):
                parent_id = eid.rsplit(".", 1)[0]
                last = eid.rsplit(".", 1)[1]
                name, _, slice_name = last.partition(":")
                for par in diff.nodes(res, parent_id):
                    kids = _children(par, name)
                    if slice_name:
                        kids = [k for k in kids if diff.in_slice(k, f"{parent_id}.{name}", slice_name)]
                    if len(kids) < el.get("min", 0):
                        problem(where, f"{len(kids)} found, min {el['min']}")
                    if el.get("max", "*") != "*" and len(kids) > int(el["max"]):
                        problem(where, f"{len(kids)} found, max {el['max']}")
            fp = _fixed_or_pattern(el)
            if fp:
                for n in nodes:
                    if (n != fp[1]) if fp[0] else not _contains(n, fp[1]):
                        problem(where, f"does not match {'fixed' if fp[0] else 'pattern'} {json.dumps(fp[1])}")
            if eid.endswith("[x]") and el.get("type"):
                name = eid.rsplit(".", 1)[1].split(":")[0][:-3]
                allowed = {name + t["code"][0].upper() + t["code"][1:] for t in el["type"]}
                for par in diff.nodes(res, eid.rsplit(".", 1)[0]):
                    for k in par if isinstance(par, dict) else []:
                        if k.startswith(name) and k[len(name):len(name) + 1].isupper() and k not in allowed:
                            problem(where, f"{k} is not an allowed type")
            for t in el.get("type", []):
                if t.get("code") == "Reference" and t.get("targetProfile"):
                    want = _target_types(t["targetProfile"], structures_by_url)
                    for n in nodes:
                        ref = n.get("reference") if isinstance(n, dict) else None
                        if ref and ref.split("/")[-2] not in want and "Resource" not in want:
                            problem(where, f"reference {ref} is not to {sorted(want)}")
            b = el.get("binding")
            if b and b["strength"] == "required" and b["valueSet"] in resources_by_url:
                allowed = _expand(resources_by_url[b["valueSet"]], resources_by_url)
                for n in nodes:
                    codes = _coded(n)
                    if not any((s, c) in allowed or (s, None) in allowed or (s is None and any(c == a for _, a in allowed))
                               for s, c in codes):
                        problem(where, f"{codes} not in {b['valueSet']}")
            if evaluate:
                for con in el.get("constraint", []):
                    targets = [res] if eid == sd["type"] else nodes
                    for t in targets:
                        got = evaluate(t, con["expression"], {}, models["r4"])
                        if got != [True]:
                            problem(where, f"invariant {con['key']} fails ({got})")


def check_examples(resources):
    ex_dir = os.path.join(DIR, "example")
    if not os.path.isdir(ex_dir):
        return 0
    structures_by_url = {r["url"]: r for r in resources.values() if r.get("resourceType") == "StructureDefinition"}
    resources_by_url = {r["url"]: r for r in resources.values() if "url" in r}
    claimed = set()
    n = 0
    for fn in sorted(os.listdir(ex_dir)):
        if not fn.endswith(".json"):
            continue
        try:
            res = json.load(open(os.path.join(ex_dir, fn), encoding="utf-8"))
        except ValueError as err:
            problem(f"example/{fn}", f"does not parse: {err}")
            continue
        if fn != f"{res.get('resourceType')}-{res.get('id')}.json":
            problem(f"example/{fn}", "should be named <resourceType>-<id>.json")
        validate_example(f"example/{fn}", res, structures_by_url, resources_by_url)
        claimed.update(res.get("meta", {}).get("profile", []))
        n += 1
    for url, sd in sorted(structures_by_url.items()):
        if sd["type"] != "Extension" and url not in claimed:
            problem(sd["id"], "no example claims this profile")
    return n


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
    n = check_invariant_cases(ok)
    counts = {"invariant test vectors": n} if n else {}
    counts["examples valid"] = check_examples(ok)
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
