#!/usr/bin/env python3
"""Writes the APA implementation guide (profiles/) as FHIR R4 JSON.

The JSON files are the product; this script is their source, so that the
many Observation profiles, which differ only by code and unit, stay
consistent. Run it, then scripts/check-profiles.py:

    python3 scripts/build-profiles.py && python3 scripts/check-profiles.py

Every fact it encodes (canonical URLs, codes, cardinalities) is sourced in
profiles/README.md.
"""
import json
import os
import shutil

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "profiles")

BASE = "https://apa-gateway.fr/fhir"
VERSION = "0.1.0"
DATE = "2026-11-23"
PUBLISHER = "apa-gateway"

# External canonicals (checked in README).
R4 = "http://hl7.org/fhir/StructureDefinition/"
FRC = "https://hl7.fr/ig/fhir/core/StructureDefinition/"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
PA_TEMP = "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes"
SDOHCC_TEMP = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
FRC_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
IDENTITY_RELIABILITY = FRC + "fr-core-identity-reliability"
# The RNIV statuses in the current FR Core (2.2.0-ballot line); our invariants test the code only.
IDENTITY_STATUS = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-identity-status"
WORKFLOW_EOC = R4 + "workflow-episodeOfCare"
COMMUNE = "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune"
COMMUNE_OM = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"
DEPARTEMENT = "https://mos.esante.gouv.fr/NOS/TRE_G09-DepartementOM/FHIR/TRE-G09-DepartementOM"
INS_SYSTEMS = [
    "urn:oid:1.2.250.1.213.1.4.8",
    "urn:oid:1.2.250.1.213.1.4.9",
    "urn:oid:1.2.250.1.213.1.4.10",
    "urn:oid:1.2.250.1.213.1.4.11",
]


def cs_url(i):
    return f"{BASE}/CodeSystem/{i}"


def vs_url(i):
    return f"{BASE}/ValueSet/{i}"


def sd_url(i):
    return f"{BASE}/StructureDefinition/{i}"


CS_SPORT = cs_url("sport-sante")
CS_RK = cs_url("recipient-kind")
CS_FLIM = cs_url("functional-limitation")
CS_STAFF = cs_url("staff-kind")

resources = []


def meta(rt, i, name, title, description):
    return {
        "resourceType": rt,
        "id": i,
        "url": f"{BASE}/{rt}/{i}",
        "version": VERSION,
        "name": name,
        "title": title,
        "status": "draft",
        "experimental": False,
        "date": DATE,
        "publisher": PUBLISHER,
        "jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "FR"}]}],
        "description": description,
    }


def pascal(i):
    return "".join(p[:1].upper() + p[1:] for p in i.replace("_", "-").split("-"))


# --------------------------------------------------------------------------
# CodeSystems and ValueSets

def codesystem(i, title, description, concepts, properties=None):
    cs = meta("CodeSystem", i, pascal(i), title, description)
    cs["caseSensitive"] = True
    cs["content"] = "complete"
    if properties:
        cs["property"] = properties
    cs["count"] = len(concepts)
    cs["concept"] = concepts
    resources.append(cs)
    return cs


def c(code, display, definition=None, **props):
    out = {"code": code, "display": display}
    if definition:
        out["definition"] = definition
    if props:
        out["property"] = [
            {"code": k.replace("_", "-"), ("valueBoolean" if isinstance(v, bool) else "valueString"): v}
            for k, v in props.items()
        ]
    return out


def valueset(i, title, description, includes):
    vs = meta("ValueSet", i, pascal(i), title, description)
    vs["compose"] = {"include": includes}
    resources.append(vs)
    return vs


def whole(cs):
    return {"system": cs}


def some(system, *codes):
    return {"system": system, "concept": [{"code": k} if isinstance(k, str) else {"code": k[0], "display": k[1]} for k in codes]}


codesystem(
    "recipient-kind",
    "Kinds of recipient of a patient's data",
    "Who would receive a patient's data: the kind an Organization declares in `Organization.type`, "
    "and the kind a Consent provision names in `actor.role` (the gateway's consent decision reads these codes).",
    [
        c("DMP", "Dossier médical partagé (Mon espace santé)", "The national shared medical record."),
        c("CPTS", "Communauté professionnelle territoriale de santé", "A territorial community of health professionals."),
        c("MSS", "Maison Sport-Santé", "A Maison Sport-Santé (sport-health house) and the programmes it runs."),
    ],
)

codesystem(
    "functional-limitation",
    "Niveau de limitation fonctionnelle",
    "Functional-limitation level qualified by the prescriber (CSP D.1172-3 and annex 11-7-2 for 'sévère'); "
    "it decides which intervenants may deliver the programme.",
    [
        c("aucune", "Aucune limitation fonctionnelle"),
        c("minime", "Limitation fonctionnelle minime"),
        c("moderee", "Limitation fonctionnelle modérée"),
        c("severe", "Limitation fonctionnelle sévère",
          "Severe limitation per CSP annex 11-7-2 (e.g. walking distance < 150 m); only health professionals "
          "of D.1172-2 1° may deliver the programme (D.1172-3)."),
    ],
)

codesystem(
    "staff-kind",
    "Catégories d'intervenants en APA",
    "Categories of intervenants listed in CSP D.1172-2. Property health-professional marks those of 1° "
    "(the only ones allowed for severe limitations, D.1172-3).",
    [
        c("MK", "Masseur-kinésithérapeute", health_professional=True, tre_g15="70"),
        c("ERGO", "Ergothérapeute", health_professional=True, tre_g15="94"),
        c("PSYMOT", "Psychomotricien", health_professional=True, tre_g15="96"),
        c("EAPA", "Enseignant en activité physique adaptée (diplôme APA, L.613-1 Code de l'éducation)",
          health_professional=False, tre_r85="361"),
        c("EDUC-SPORT", "Éducateur sportif (titre R.212-2 Code du sport / RNCP) ou fonctionnaire du sport",
          health_professional=False),
        c("FED-CERT", "Titulaire d'une certification fédérale (annexe 11-7-1)", health_professional=False),
    ],
    properties=[
        {"code": "health-professional", "type": "boolean", "description": "Health professional of CSP D.1172-2 1°"},
        {"code": "tre-g15", "type": "string",
         "description": "Profession code in TRE_G15-ProfessionSante (https://mos.esante.gouv.fr/NOS/TRE_G15-"
                        "ProfessionSante/FHIR/TRE-G15-ProfessionSante), to recognise the staff kind of a "
                        "Practitioner or PractitionerRole"},
        {"code": "tre-r85", "type": "string",
         "description": "Role code in TRE_R85-RolePriseCharge (https://mos.esante.gouv.fr/NOS/TRE_R85-"
                        "RolePriseCharge/FHIR/TRE-R85-RolePriseCharge) for staff outside the RPPS"},
    ],
)

codesystem(
    "intensity",
    "Intensité de l'activité physique",
    "Intensity level prescribed for the activity (HAS 2022 guide vocabulary).",
    [c("faible", "Intensité faible"), c("moderee", "Intensité modérée"), c("elevee", "Intensité élevée")],
)

codesystem(
    "activity-type",
    "Type d'activité physique",
    "Kind of physical activity recommended in a prescription or planned in a programme.",
    [
        c("endurance", "Endurance (capacité cardio-respiratoire)"),
        c("renforcement", "Renforcement musculaire"),
        c("equilibre", "Équilibre"),
        c("souplesse", "Souplesse"),
        c("combine", "Programme combiné (plusieurs composantes)"),
    ],
)

codesystem(
    "orientation",
    "Orientation en fin de parcours",
    "Where the beneficiary goes at the end of the APA pathway.",
    [
        c("CLUB-SS", "Club sport-santé / association labellisée"),
        c("CLUB-ORD", "Club ordinaire"),
        c("AUTONOMIE", "Pratique autonome"),
        c("APA-RENEW", "Renouvellement du parcours APA"),
        c("REORIENT-MED", "Réorientation médicale"),
        c("ABANDON", "Arrêt / perdu de vue"),
    ],
)

codesystem(
    "session-kind",
    "Type de rencontre du parcours APA",
    "Kinds of Encounter in an APA programme.",
    [
        c("seance", "Séance d'activité physique adaptée"),
        c("bilan-initial", "Bilan initial (condition physique et motivationnel)"),
        c("bilan-intermediaire", "Bilan intermédiaire"),
        c("bilan-final", "Bilan final"),
        c("suivi-6m", "Suivi à 6 mois après la fin du parcours"),
    ],
)

codesystem(
    "condition-group",
    "Groupes de pathologies et situations prises en charge",
    "Conditions a programme accepts (HealthcareService.eligibility) and that a prescription may carry as an "
    "additional reasonCode coding, so that routing can match them (L.1172-1, D.1172-1-1; HAS 2022 sheets).",
    [
        c("obesite", "Surpoids / obésité"),
        c("diabete-t2", "Diabète de type 2"),
        c("hta", "Hypertension artérielle"),
        c("bpco", "BPCO"),
        c("coronaropathie", "Maladie coronarienne stable"),
        c("avc", "Accident vasculaire cérébral"),
        c("cancer", "Cancer"),
        c("sante-mentale", "Troubles psychiques"),
        c("perte-autonomie", "Perte d'autonomie / fragilité liée à l'âge"),
        c("autre-ald", "Autre affection de longue durée"),
        c("autre-chronique", "Autre maladie chronique"),
        c("facteur-risque", "Autre facteur de risque (sédentarité, dyslipidémie, conduites addictives…)"),
    ],
)

codesystem(
    "motivational-stage",
    "Stade motivationnel (Prochaska et DiClemente)",
    "Stage of change recorded in the motivational assessment.",
    [
        c("precontemplation", "Pré-contemplation"),
        c("contemplation", "Contemplation"),
        c("preparation", "Préparation"),
        c("action", "Action"),
        c("maintien", "Maintien"),
    ],
)

SPORT_CONCEPTS = [
    # §4.3 assessment tests without a verified LOINC code
    c("STS30", "Test de lever de chaise 30 s – nombre de levers", "Number of chair stands in 30 seconds."),
    c("STS5", "5 levers de chaise – durée", "Time to perform five chair stands."),
    c("TUG", "Timed Up and Go – durée", "Time to rise, walk 3 m, turn, walk back and sit."),
    c("UNIPODAL", "Appui unipodal – durée", "Time standing on one leg (components: side, eyes closed)."),
    c("LATERALITE", "Côté testé", "Component of a test done on one side (value: SNOMED CT left/right)."),
    c("YEUX-FERMES", "Yeux fermés", "Component: true when the test was done with eyes closed."),
    c("SITREACH", "Sit-and-reach – distance", "Signed distance reached beyond (positive) or before (negative) the feet."),
    c("GRIP-R", "Force de préhension main droite (dynamomètre)", "Maximal grip strength, right hand."),
    c("GRIP-L", "Force de préhension main gauche (dynamomètre)", "Maximal grip strength, left hand."),
    c("RICCI", "Score Ricci et Gagnon", "Self-questionnaire of physical activity (9 items)."),
    c("GPAQ-MVPA", "GPAQ – activité physique modérée à vigoureuse (MET-min/semaine)"),
    c("ONAPS-PAQ", "Score ONAPS-PAQ"),
    c("BORG-RPE", "Perception de l'effort (échelle de Borg 6–20)"),
    c("EPICES", "Score EPICES", "Precarity score, 0–100."),
    c("QAAP-POS", "Q-AAP+ : au moins une réponse positive", "True when at least one answer is positive (calls for medical advice)."),
    c("MOTIV-STAGE", "Stade motivationnel"),
    # §5 outcomes
    c("ATTEND-RATE", "Taux d'assiduité au programme",
      "Attended sessions (Encounter finished) divided by planned sessions over the programme period, in percent."),
    c("ADHERENCE-6M", "Maintien d'une activité physique régulière à 6 mois",
      "True when, six months after the end of the programme, the beneficiary keeps a regular physical activity."),
    c("ORIENTATION", "Orientation en fin de parcours"),
    # pathway
    c("PROG-APA", "Programme d'activité physique adaptée", "Type of the EpisodeOfCare of an APA programme."),
    c("BILAN-INITIAL", "Bilan initial APA"),
    c("BILAN-INTERMEDIAIRE", "Bilan intermédiaire APA"),
    c("BILAN-FINAL", "Bilan de fin de parcours APA",
      "Comparative end-of-pathway assessment with the motivational assessment and proposals for continuation."),
    # prescription and consent notions (the extensions carry them)
    c("FLIM", "Niveau de limitation fonctionnelle"),
    c("NO-MK-RENEWAL", "Renouvellement par le masseur-kinésithérapeute non autorisé",
      "The prescriber forbids the renewal of this prescription by a physiotherapist (L.4321-1 CSP)."),
    c("DMP-FEED", "Alimentation du DMP"),
]
codesystem(
    "sport-sante",
    "Codes sport-santé",
    "Local codes for the APA pathway where no verified LOINC or SNOMED CT code exists (domain brief §4.3).",
    SPORT_CONCEPTS,
)

valueset("recipient-kind", "Recipient kinds", "All recipient kinds.", [whole(CS_RK)])
valueset("functional-limitation", "Niveaux de limitation fonctionnelle", "All levels.", [whole(CS_FLIM)])
valueset("staff-kind", "Catégories d'intervenants", "All staff kinds.", [whole(CS_STAFF)])
valueset("intensity", "Intensités", "All intensity levels.", [whole(cs_url("intensity"))])
valueset("activity-type", "Types d'activité", "All activity types.", [whole(cs_url("activity-type"))])
valueset("orientation", "Orientations de fin de parcours", "All orientations.", [whole(cs_url("orientation"))])
valueset("session-kind", "Types de rencontre", "All kinds of APA encounters.", [whole(cs_url("session-kind"))])
valueset("condition-group", "Groupes de pathologies", "All condition groups.", [whole(cs_url("condition-group"))])
valueset("motivational-stage", "Stades motivationnels", "All stages.", [whole(cs_url("motivational-stage"))])
valueset(
    "territory",
    "Territoires (communes INSEE, départements)",
    "A territory an MSS or CPTS covers: an INSEE commune code (TRE_R13, as in FR Core address INSEE examples; "
    "the overseas-inclusive TRE_R13-CommuneOM is accepted too) or a département code (TRE_G09-DepartementOM).",
    [whole(COMMUNE), whole(COMMUNE_OM), whole(DEPARTEMENT)],
)
valueset(
    "servicerequest-code",
    "APA prescription codes",
    "Kinds of APA order, taken from the HL7 Physical Activity IG value set pa-servicerequest-code.",
    [some(SCT, ("390893007", "Referral to physical activity program"),
          ("229065009", "Exercise therapy"),
          ("229095001", "Exercise class"),
          ("819961005", "PA guidance"))],
)
valueset(
    "servicerequest-status",
    "APA prescription statuses",
    "As PA IG pa-servicerequest-status: request-status without 'unknown'.",
    [some("http://hl7.org/fhir/request-status", "draft", "active", "on-hold", "revoked", "completed", "entered-in-error")],
)
valueset(
    "servicerequest-intent",
    "APA prescription intents",
    "As PA IG pa-servicerequest-intent.",
    [some("http://hl7.org/fhir/request-intent", "original-order", "order", "filler-order")],
)
valueset(
    "task-status",
    "Referral Task statuses",
    "As PA IG pa-task-status: task-status without 'received' and 'ready'.",
    [some("http://hl7.org/fhir/task-status", "draft", "requested", "accepted", "rejected", "cancelled",
          "in-progress", "on-hold", "failed", "completed", "entered-in-error")],
)
valueset(
    "observation-status",
    "Observation statuses",
    "As PA IG pa-observation-status: results only.",
    [some("http://hl7.org/fhir/observation-status", "final", "amended", "corrected", "entered-in-error")],
)
valueset(
    "encounter-status",
    "Session statuses",
    "A session is planned, under way, attended (finished) or not attended (cancelled).",
    [some("http://hl7.org/fhir/encounter-status", "planned", "in-progress", "finished", "cancelled", "entered-in-error")],
)
valueset(
    "report-status",
    "Report statuses",
    "As PA IG pa-diagnosticreport-status.",
    [some("http://hl7.org/fhir/diagnostic-report-status", "partial", "preliminary", "final", "amended",
          "corrected", "appended", "entered-in-error")],
)
valueset("grip-code", "Grip strength codes", "Right and left hand.", [some(CS_SPORT, "GRIP-R", "GRIP-L")])
valueset(
    "ipaq-code",
    "IPAQ activity codes",
    "LOINC codes of the IPAQ items used by the PA IG activity measures.",
    [some(LOINC, ("77592-4", "Moderate physical activity [IPAQ]"), ("77593-2", "Vigorous physical activity [IPAQ]"))],
)
valueset(
    "laterality",
    "Côté",
    "Left or right (SNOMED CT qualifier values).",
    [some(SCT, ("7771000", "Left"), ("24028007", "Right"))],
)
valueset(
    "report-code",
    "APA report codes",
    "Codes of APA assessment reports; LOINC 11488-4 Consult note may be added for document sharing.",
    [some(CS_SPORT, "BILAN-INITIAL", "BILAN-INTERMEDIAIRE", "BILAN-FINAL"), some(LOINC, ("11488-4", "Consult Note"))],
)


# --------------------------------------------------------------------------
# StructureDefinitions

def structure(i, rtype, base, title, description, elements, kind="resource", context=None):
    sd = meta("StructureDefinition", i, pascal(i), title, description)
    sd["fhirVersion"] = "4.0.1"
    sd["kind"] = kind
    sd["abstract"] = False
    if context:
        sd["context"] = [{"type": "element", "expression": e} for e in context]
    sd["type"] = rtype
    sd["baseDefinition"] = base
    sd["derivation"] = "constraint"
    sd["differential"] = {"element": elements}
    resources.append(sd)
    return sd


def e(eid, **kw):
    """An ElementDefinition; id 'Type.path:slice.child', path derived."""
    parts = []
    slice_name = None
    for seg in eid.split("."):
        name, _, sl = seg.partition(":")
        parts.append(name)
    last = eid.split(".")[-1]
    if ":" in last:
        slice_name = last.split(":", 1)[1]
    out = {"id": eid, "path": ".".join(parts)}
    if slice_name:
        out["sliceName"] = slice_name
    for k, v in kw.items():
        if k == "card":
            lo, hi = v.split("..")
            out["min"] = int(lo)
            out["max"] = hi
        elif k == "types":
            out["type"] = v
        elif k == "binding":
            strength, vs = v
            out["binding"] = {"strength": strength, "valueSet": vs}
        else:
            out[k] = v
    return out


def ref(*targets):
    return [{"code": "Reference", "targetProfile": list(targets)}]


def inv(key, human, expression, severity="error"):
    return {"key": key, "severity": severity, "human": human, "expression": expression}


def slicing(*disc, rules="open", ordered=None):
    s = {"discriminator": [{"type": t, "path": p} for t, p in disc], "rules": rules}
    if ordered is not None:
        s["ordered"] = ordered
    return s


def cc(system, code, display=None):
    """A CodeableConcept pattern: system and code only (a display in a pattern
    would oblige instances to repeat it verbatim); display is documentation."""
    return {"coding": [{"system": system, "code": code}]}


PATIENT_TARGETS = [sd_url("apa-patient"), sd_url("apa-patient-ins")]
PA_CATEGORY = cc(PA_TEMP, "PhysicalActivity")


def ext_slices(root, slices):
    """Extension slicing by url plus one slice per (name, card, profile)."""
    out = [e(f"{root}.extension", slicing=slicing(("value", "url")))]
    for name, card, prof in slices:
        out.append(e(f"{root}.extension:{name}", card=card, types=[{"code": "Extension", "profile": [prof]}]))
    return out


def category_pa(root, extra=None, vital_signs=False):
    """Category slicing with the PA IG PhysicalActivity slice (and optionally another fixed category).
    The R4 vital-signs profiles already slice category by value on coding.code and coding.system: a derived
    profile must keep that discriminator."""
    disc = (("value", "coding.code"), ("value", "coding.system")) if vital_signs else (("pattern", "$this"),)
    out = [
        e(f"{root}.category", card="1..*", slicing=slicing(*disc)),
        e(f"{root}.category:physicalActivity", card="1..1", patternCodeableConcept=PA_CATEGORY,
          short="PhysicalActivity (HL7 Physical Activity IG temporary code)"),
    ]
    if extra:
        name, value = extra
        out.append(e(f"{root}.category:{name}", card="1..1", patternCodeableConcept=value))
    return out


# ---- extensions

def extension(i, title, description, contexts, value_type, binding=None, constraint=None):
    els = [
        e("Extension", short=title, definition=description, **({"constraint": constraint} if constraint else {})),
        e("Extension.extension", card="0..0"),
        e("Extension.url", fixedUri=sd_url(i)),
        e("Extension.value[x]", card="1..1", types=[{"code": value_type}],
          **({"binding": binding} if binding else {})),
    ]
    structure(i, "Extension", R4 + "Extension", title, description, els, kind="complex-type", context=contexts)


extension(
    "apa-functional-limitation",
    "Niveau de limitation fonctionnelle",
    "Functional-limitation level qualified by the prescriber; decides which intervenants may deliver the programme "
    "(D.1172-3: severe → health professionals only).",
    ["ServiceRequest"],
    "CodeableConcept",
    binding=("required", vs_url("functional-limitation")),
)
extension(
    "apa-no-physio-renewal",
    "Renouvellement par le kinésithérapeute interdit",
    "True when the prescriber forbids the renewal of the prescription by a physiotherapist "
    "(L.4321-1: the physiotherapist may renew once 'sauf indication contraire du médecin'). Absent means allowed.",
    ["ServiceRequest"],
    "boolean",
)
extension(
    "apa-intensity",
    "Intensité",
    "Prescribed or planned intensity of the physical activity.",
    ["ServiceRequest", "CarePlan.activity.detail"],
    "CodeableConcept",
    binding=("required", vs_url("intensity")),
)
extension(
    "apa-territory",
    "Territoire couvert",
    "A territory an MSS or CPTS covers: INSEE commune code (TRE_R13) or département code (TRE_G09). "
    "Repeat the extension for each commune or département.",
    ["Organization"],
    "Coding",
    binding=("required", vs_url("territory")),
    constraint=[inv(
        "apa-ter-1",
        "A commune is a 5-character INSEE code (2A/2B for Corsica), a département a 2- or 3-character code",
        f"value.where((system = '{COMMUNE}' or system = '{COMMUNE_OM}') and code.matches('^([0-9]{{2}}|2A|2B)[0-9]{{3}}$')).exists() "
        f"or value.where(system = '{DEPARTEMENT}' and code.matches('^([0-9]{{2}}|2A|2B|97[1-6])$')).exists()",
    )],
)

# ---- Patient

INS_SYSTEM_WHERE = " or ".join(f"system = '{s}'" for s in INS_SYSTEMS)
# FR Core's NSS slice (billing NIR, type v2-0203#NH) shares the INS-NIR system: it is not an INS.
INS_WHERE = f"({INS_SYSTEM_WHERE}) and type.coding.where(code = 'NH').empty()"
NIR_FORMAT = "^[0-9]{5}([0-9]{2}|2A|2B)[0-9]{8}$"
QUAL = (f"extension('{IDENTITY_RELIABILITY}').extension('identityStatus').value.where(code = 'QUAL').exists()")
PATIENT_INVS = [
    inv("apa-pat-1", "An INS (NIR, NIA, test or demo NIR) is only carried when the identity status is QUAL (RNIV)",
        f"identifier.where({INS_WHERE}).exists() implies {QUAL}"),
    inv("apa-pat-2", "An INS or NIR is 15 characters: 13-character NIR (2A/2B for Corsica) and a 2-digit key",
        f"identifier.where(({INS_SYSTEM_WHERE}) and value.matches('{NIR_FORMAT}').not()).empty()"),
]

structure(
    "apa-patient",
    "Patient",
    FRC + "fr-core-patient",
    "APA Patient",
    "A beneficiary of the APA pathway, whatever the status of their identity. The INS may only be carried "
    "with a qualified identity (QUAL); apa-patient-ins is the profile of those.",
    [
        e("Patient", constraint=PATIENT_INVS),
        e("Patient.identifier", card="1..*"),
        e("Patient.name", card="1..*"),
        e("Patient.gender", card="1..1"),
        e("Patient.birthDate", card="1..1"),
    ],
)
structure(
    "apa-patient-ins",
    "Patient",
    FRC + "fr-core-patient-ins",
    "APA Patient INS",
    "A beneficiary with a qualified identity (RNIV status QUAL) carrying the INS, FR Core Patient INS profile.",
    [
        e("Patient", constraint=PATIENT_INVS + [
            inv("apa-ins-1", "A Patient claiming this profile has a qualified identity (QUAL) and an INS",
                f"{QUAL} and identifier.where({INS_WHERE}).exists()"),
        ]),
        e("Patient.extension", slicing=slicing(("value", "url"))),
        e("Patient.extension:identityReliability", card="1..*",
          types=[{"code": "Extension", "profile": [IDENTITY_RELIABILITY]}]),
    ],
)

# ---- Practitioner

structure(
    "apa-practitioner",
    "Practitioner",
    FRC + "fr-core-practitioner",
    "APA Practitioner",
    "A prescriber or intervenant. Physicians and physiotherapists carry their RPPS (slice rpps, restated from FR "
    "Core); APA teachers and sport educators are not in the RPPS and carry a local identifier.",
    [
        e("Practitioner", constraint=[
            inv("apa-prac-1", "An RPPS number is 11 digits",
                "identifier.where(system = 'https://rpps.esante.gouv.fr' and value.matches('^[0-9]{11}$').not()).empty()"),
            inv("apa-prac-2", "An idNatPs built on the RPPS is '8' followed by the 11-digit RPPS",
                "identifier.where(system = 'urn:oid:1.2.250.1.71.4.2.1' and value.matches('^8') and "
                "value.matches('^8[0-9]{11}$').not()).empty()"),
        ]),
        e("Practitioner.identifier", card="1..*", slicing=slicing(("value", "system"))),
        e("Practitioner.identifier:rpps", card="0..1", short="Numéro RPPS (11 chiffres)"),
        e("Practitioner.identifier:rpps.type", card="1..1", patternCodeableConcept=cc(FRC_0203, "RPPS")),
        e("Practitioner.identifier:rpps.system", card="1..1", fixedUri="https://rpps.esante.gouv.fr"),
        e("Practitioner.identifier:rpps.value", card="1..1"),
        e("Practitioner.identifier:idNatPs", card="0..1"),
        e("Practitioner.identifier:idNatPs.type", card="1..1", patternCodeableConcept=cc(FRC_0203, "IDNPS")),
        e("Practitioner.identifier:idNatPs.system", card="1..1", fixedUri="urn:oid:1.2.250.1.71.4.2.1"),
        e("Practitioner.identifier:idNatPs.value", card="1..1"),
        e("Practitioner.name", card="1..*"),
    ],
)

# ---- Organization

ORG_TERRITORY = sd_url("apa-territory")
structure(
    "apa-organization",
    "Organization",
    FRC + "fr-core-organization",
    "APA Organization",
    "An MSS, a CPTS, a medical practice… identified by SIRET, SIREN, FINESS or idNatSt (slices restated from "
    "FR Core), declaring its kind of recipient (recipient-kind) and, for MSS and CPTS, the territory it covers.",
    [
        e("Organization", constraint=[
            inv("apa-org-1", "An Organization is identified by SIRET, SIREN, FINESS or idNatSt",
                "identifier.where(system = 'https://sirene.fr' or system = 'https://finess.esante.gouv.fr' "
                "or system = 'urn:oid:1.2.250.1.71.4.2.2').exists()"),
            inv("apa-org-2", "A SIRET is 14 digits, a SIREN 9 digits",
                "identifier.where(system = 'https://sirene.fr' and value.matches('^([0-9]{9}|[0-9]{14})$').not()).empty()"),
            inv("apa-org-3", "A FINESS number is 9 characters, the first two the département (2A/2B for Corsica)",
                "identifier.where(system = 'https://finess.esante.gouv.fr' and "
                "value.matches('^([0-9]{2}|2A|2B)[0-9]{7}$').not()).empty()"),
            inv("apa-org-4", "Only an MSS or a CPTS declares a territory",
                f"extension('{ORG_TERRITORY}').exists() implies type.coding.where(system = '{CS_RK}' and "
                f"(code = 'MSS' or code = 'CPTS')).exists()"),
            inv("apa-org-5", "An MSS or a CPTS declares the territory it covers",
                f"type.coding.where(system = '{CS_RK}' and (code = 'MSS' or code = 'CPTS')).exists() implies "
                f"extension('{ORG_TERRITORY}').exists()"),
        ]),
        *ext_slices("Organization", [("territory", "0..*", ORG_TERRITORY)]),
        e("Organization.identifier", card="1..*", slicing=slicing(("pattern", "system"), ("pattern", "type"))),
        e("Organization.identifier:siret", card="0..*", short="SIRET (14 chiffres)"),
        e("Organization.identifier:siret.type", card="1..1", patternCodeableConcept=cc(FRC_0203, "SIRET")),
        e("Organization.identifier:siret.system", card="1..1", patternUri="https://sirene.fr"),
        e("Organization.identifier:siren", card="0..*", short="SIREN (9 chiffres)"),
        e("Organization.identifier:siren.type", card="1..1", patternCodeableConcept=cc(FRC_0203, "SIREN")),
        e("Organization.identifier:siren.system", card="1..1", patternUri="https://sirene.fr"),
        e("Organization.identifier:finess", card="0..*", short="FINESS (FINEJ ou FINEG)"),
        e("Organization.identifier:finess.system", card="1..1", patternUri="https://finess.esante.gouv.fr"),
        e("Organization.identifier:idNatSt", card="0..1", short="idNatSt : 1+FINESS, 2+SIREN, 3+SIRET…"),
        e("Organization.identifier:idNatSt.system", card="1..1", patternUri="urn:oid:1.2.250.1.71.4.2.2"),
        e("Organization.type", slicing=slicing(("pattern", "$this"))),
        e("Organization.type:recipientKind", card="0..1", patternCodeableConcept={"coding": [{"system": CS_RK}]},
          binding=("required", vs_url("recipient-kind")), short="DMP | CPTS | MSS"),
        e("Organization.name", card="1..1"),
    ],
)

# ---- HealthcareService (programme)

structure(
    "apa-programme",
    "HealthcareService",
    FRC + "fr-core-healthcare-service",
    "APA programme",
    "A programme an MSS (or CPTS) runs: conditions accepted (eligibility), functional-limitation levels accepted "
    "and staff kinds (characteristic slices). Routing picks a programme accepting the prescription's level "
    "and, for a severe limitation, only one run by health professionals.",
    [
        e("HealthcareService", constraint=[
            inv("apa-prog-1",
                "A programme accepting severe limitations is run by health professionals (MK, ERGO or PSYMOT; CSP D.1172-3)",
                f"characteristic.coding.where(system = '{CS_FLIM}' and code = 'severe').exists() implies "
                f"characteristic.coding.where(system = '{CS_STAFF}' and (code = 'MK' or code = 'ERGO' or code = 'PSYMOT')).exists()"),
        ]),
        e("HealthcareService.active", card="1..1"),
        e("HealthcareService.providedBy", card="1..1", types=ref(sd_url("apa-organization"))),
        e("HealthcareService.type", card="1..*", slicing=slicing(("pattern", "$this"))),
        e("HealthcareService.type:programme", card="1..1", patternCodeableConcept=cc(CS_SPORT, "PROG-APA")),
        e("HealthcareService.name", card="1..1"),
        e("HealthcareService.eligibility.code", card="1..1", binding=("extensible", vs_url("condition-group")),
          short="Pathologie ou situation acceptée"),
        e("HealthcareService.characteristic", card="2..*", slicing=slicing(("pattern", "$this"))),
        e("HealthcareService.characteristic:limitationLevel", card="1..*",
          patternCodeableConcept={"coding": [{"system": CS_FLIM}]},
          binding=("required", vs_url("functional-limitation")),
          short="Niveau de limitation fonctionnelle accepté (un par niveau)"),
        e("HealthcareService.characteristic:staffKind", card="1..*",
          patternCodeableConcept={"coding": [{"system": CS_STAFF}]},
          binding=("required", vs_url("staff-kind")),
          short="Catégorie d'intervenant de l'équipe (une par catégorie)"),
    ],
)

# ---- ServiceRequest (prescription)

structure(
    "apa-prescription",
    "ServiceRequest",
    R4 + "ServiceRequest",
    "APA prescription",
    "Prescription of adapted physical activity (CSP L.1172-1, D.1172-2): reason, physician requester, 3 to 6 "
    "months, functional-limitation level, activity type, frequency, session length, intensity. Re-profiles the "
    "HL7 Physical Activity IG pa-servicerequest (invariant pa-sr-1, PhysicalActivity category, statuses, intents).",
    [
        e("ServiceRequest", constraint=[
            inv("apa-sr-1", "At least one of reasonCode or reasonReference must be provided (PA IG pa-sr-1)",
                "reasonCode.exists() or reasonReference.exists()"),
            inv("apa-sr-2", "The programme lasts 3 to 6 months (D.1172-2): occurrenceTiming.repeat.boundsDuration in months",
                f"occurrence.repeat.bounds.where(system = '{UCUM}' and code = 'mo' and value >= 3 and value <= 6).exists()"),
            inv("apa-sr-3", "A prescription renews at most one prescription", "replaces.count() <= 1"),
        ]),
        *ext_slices("ServiceRequest", [
            ("functionalLimitation", "1..1", sd_url("apa-functional-limitation")),
            ("intensity", "1..1", sd_url("apa-intensity")),
            ("noPhysioRenewal", "0..1", sd_url("apa-no-physio-renewal")),
        ]),
        e("ServiceRequest.replaces", types=ref(sd_url("apa-prescription")),
          short="The prescription this one renews (a physiotherapist's renewal)"),
        e("ServiceRequest.status", binding=("required", vs_url("servicerequest-status"))),
        e("ServiceRequest.intent", binding=("required", vs_url("servicerequest-intent"))),
        *category_pa("ServiceRequest"),
        e("ServiceRequest.doNotPerform", card="0..0"),
        e("ServiceRequest.code", card="1..1", binding=("extensible", vs_url("servicerequest-code"))),
        e("ServiceRequest.orderDetail", card="1..*", binding=("extensible", vs_url("activity-type")),
          short="Type(s) d'activité physique recommandé(s)"),
        e("ServiceRequest.subject", card="1..1", types=ref(*PATIENT_TARGETS)),
        e("ServiceRequest.occurrence[x]", card="1..1", types=[{"code": "Timing"}],
          short="Durée du programme, fréquence et durée des séances"),
        e("ServiceRequest.occurrenceTiming.repeat", card="1..1"),
        e("ServiceRequest.occurrenceTiming.repeat.bounds[x]", card="1..1", types=[{"code": "Duration"}],
          short="Durée du programme : 3 à 6 mois"),
        e("ServiceRequest.occurrenceTiming.repeat.boundsDuration.value", card="1..1"),
        e("ServiceRequest.occurrenceTiming.repeat.boundsDuration.system", card="1..1", fixedUri=UCUM),
        e("ServiceRequest.occurrenceTiming.repeat.boundsDuration.code", card="1..1", fixedCode="mo"),
        e("ServiceRequest.occurrenceTiming.repeat.duration", card="1..1", short="Durée d'une séance"),
        e("ServiceRequest.occurrenceTiming.repeat.durationUnit", card="1..1", short="min | h"),
        e("ServiceRequest.occurrenceTiming.repeat.frequency", card="1..1", short="Nombre de séances par période"),
        e("ServiceRequest.occurrenceTiming.repeat.period", card="1..1"),
        e("ServiceRequest.occurrenceTiming.repeat.periodUnit", card="1..1", short="d | wk | mo"),
        e("ServiceRequest.authoredOn", card="1..1"),
        e("ServiceRequest.requester", card="1..1",
          types=ref(sd_url("apa-practitioner"), FRC + "fr-core-practitioner-role"),
          short="Un médecin (un kinésithérapeute pour un renouvellement)"),
        e("ServiceRequest.performer",
          types=ref(sd_url("apa-organization"), sd_url("apa-programme"), sd_url("apa-practitioner"),
                    FRC + "fr-core-practitioner-role")),
        e("ServiceRequest.reasonReference", types=ref(R4 + "Condition", R4 + "Observation")),
        e("ServiceRequest.specimen", card="0..0"),
    ],
)

# ---- Task (referral)

RESULTING = cc(SDOHCC_TEMP, "resulting-activity")
structure(
    "apa-referral-task",
    "Task",
    R4 + "Task",
    "APA referral Task",
    "The referral of an APA prescription to an MSS or an intervenant, following the HL7 Physical Activity IG "
    "pa-task-for-referral-management: requested → accepted | rejected → in-progress ⇄ on-hold → completed | "
    "failed | cancelled; entered-in-error.",
    [
        e("Task", constraint=[
            inv("apa-task-1",
                "Task.statusReason is required if Task.status is 'rejected', 'on-hold', 'cancelled', or 'failed' and is "
                "not permitted otherwise (PA IG pa-taskrm-1)",
                "statusReason.exists() = (status = 'rejected' or status = 'on-hold' or status = 'cancelled' or status = 'failed')"),
        ]),
        e("Task.status", binding=("required", vs_url("task-status"))),
        e("Task.statusReason", condition=["apa-task-1"]),
        e("Task.statusReason.text", card="1..1"),
        e("Task.intent", fixedCode="order"),
        e("Task.code", card="1..1", patternCodeableConcept=cc("http://hl7.org/fhir/CodeSystem/task-code", "fulfill")),
        e("Task.focus", card="1..1", types=ref(sd_url("apa-prescription"))),
        e("Task.for", card="1..1", types=ref(*PATIENT_TARGETS)),
        e("Task.authoredOn", card="1..1"),
        e("Task.requester", card="1..1",
          types=ref(sd_url("apa-practitioner"), FRC + "fr-core-practitioner-role", sd_url("apa-organization"))),
        e("Task.owner", card="1..1",
          types=ref(sd_url("apa-practitioner"), FRC + "fr-core-practitioner-role", sd_url("apa-organization"))),
        e("Task.output", slicing=slicing(("pattern", "type"), ("type", "value"))),
        e("Task.output:performedActivityType", card="0..*"),
        e("Task.output:performedActivityType.type", patternCodeableConcept=RESULTING),
        e("Task.output:performedActivityType.value[x]", types=[{"code": "CodeableConcept"}]),
        e("Task.output:performedActivityType.valueCodeableConcept.text", card="1..1"),
        e("Task.output:performedActivityReference", card="0..*"),
        e("Task.output:performedActivityReference.type", patternCodeableConcept=RESULTING),
        e("Task.output:performedActivityReference.value[x]",
          types=ref(sd_url("apa-end-of-pathway-report"), R4 + "Resource")),
    ],
)

# ---- Encounter (session), EpisodeOfCare, CarePlan

structure(
    "apa-session",
    "Encounter",
    FRC + "fr-core-encounter",
    "APA session",
    "A session or an assessment of an APA programme. Attended: status finished; not attended: cancelled. "
    "FR Core requires an identifier (e.g. the MSS software's session id) and a period.",
    [
        e("Encounter", constraint=[
            inv("apa-enc-1", "An attended session has ended", "status = 'finished' implies period.end.exists()"),
        ]),
        e("Encounter.status", binding=("required", vs_url("encounter-status"))),
        e("Encounter.class", patternCoding={"system": ACT_CODE, "code": "AMB"}),
        e("Encounter.type", card="1..1", binding=("required", vs_url("session-kind"))),
        e("Encounter.subject", card="1..1", types=ref(*PATIENT_TARGETS)),
        e("Encounter.episodeOfCare", card="1..1", types=ref(sd_url("apa-programme-episode"))),
        e("Encounter.basedOn", types=ref(sd_url("apa-prescription"))),
        e("Encounter.period.start", card="1..1"),
        e("Encounter.serviceProvider", card="1..1", types=ref(sd_url("apa-organization"))),
    ],
)

structure(
    "apa-programme-episode",
    "EpisodeOfCare",
    R4 + "EpisodeOfCare",
    "APA programme enrolment",
    "The period an MSS is responsible for a beneficiary's programme: planned at the referral's acceptance, "
    "active at the first attended session, finished at the end of the pathway.",
    [
        e("EpisodeOfCare", constraint=[
            inv("apa-eoc-1", "An active, on-hold or finished programme has started",
                "(status = 'active' or status = 'onhold' or status = 'finished') implies period.start.exists()"),
            inv("apa-eoc-2", "A finished programme has an end date", "status = 'finished' implies period.end.exists()"),
        ]),
        e("EpisodeOfCare.type", card="1..*", slicing=slicing(("pattern", "$this"))),
        e("EpisodeOfCare.type:programme", card="1..1", patternCodeableConcept=cc(CS_SPORT, "PROG-APA")),
        e("EpisodeOfCare.patient", types=ref(*PATIENT_TARGETS)),
        e("EpisodeOfCare.managingOrganization", card="1..1", types=ref(sd_url("apa-organization"))),
        e("EpisodeOfCare.period", card="1..1"),
        e("EpisodeOfCare.referralRequest", card="1..*", types=ref(sd_url("apa-prescription"))),
    ],
)

structure(
    "apa-careplan",
    "CarePlan",
    R4 + "CarePlan",
    "APA programme plan",
    "The programme an MSS plans after the initial assessment: activities with their frequency, session length, "
    "intensity and number of planned sessions (denominator of the attendance rate). Re-profiles PA IG pa-careplan.",
    [
        *ext_slices("CarePlan", [("episodeOfCare", "1..1", WORKFLOW_EOC)]),
        e("CarePlan.intent", fixedCode="plan"),
        *category_pa("CarePlan"),
        e("CarePlan.subject", types=ref(*PATIENT_TARGETS)),
        e("CarePlan.period", card="1..1"),
        e("CarePlan.period.start", card="1..1"),
        # R4 CarePlan.basedOn is Reference(CarePlan) only: the prescription
        # the plan carries out is supporting information.
        e("CarePlan.supportingInfo", card="1..*", types=ref(sd_url("apa-prescription")),
          short="La prescription d'APA que le plan met en oeuvre"),
        e("CarePlan.activity", card="1..*"),
        e("CarePlan.activity.detail", card="1..1"),
        *ext_slices("CarePlan.activity.detail", [("intensity", "0..1", sd_url("apa-intensity"))]),
        e("CarePlan.activity.detail.code", card="1..1", binding=("extensible", vs_url("activity-type"))),
        e("CarePlan.activity.detail.scheduled[x]", card="1..1", types=[{"code": "Timing"}]),
        e("CarePlan.activity.detail.scheduledTiming.repeat", card="1..1"),
        e("CarePlan.activity.detail.scheduledTiming.repeat.count", short="Nombre de séances prévues"),
        e("CarePlan.activity.detail.scheduledTiming.repeat.duration", card="1..1"),
        e("CarePlan.activity.detail.scheduledTiming.repeat.durationUnit", card="1..1"),
        e("CarePlan.activity.detail.scheduledTiming.repeat.frequency", card="1..1"),
        e("CarePlan.activity.detail.scheduledTiming.repeat.period", card="1..1"),
        e("CarePlan.activity.detail.scheduledTiming.repeat.periodUnit", card="1..1"),
    ],
)

# ---- DiagnosticReport

structure(
    "apa-end-of-pathway-report",
    "DiagnosticReport",
    R4 + "DiagnosticReport",
    "APA end-of-pathway report",
    "The comparative end-of-pathway assessment sent to the prescriber (and the DMP when the patient does not "
    "oppose): results of the final assessment, orientation, proposals. Re-profiles PA IG pa-diagnosticreport.",
    [
        *ext_slices("DiagnosticReport", [("episodeOfCare", "0..1", WORKFLOW_EOC)]),
        e("DiagnosticReport.basedOn", card="1..*", types=ref(sd_url("apa-prescription"))),
        e("DiagnosticReport.status", binding=("required", vs_url("report-status"))),
        *category_pa("DiagnosticReport"),
        e("DiagnosticReport.code", patternCodeableConcept=cc(CS_SPORT, "BILAN-FINAL"),
          short="BILAN-FINAL; LOINC 11488-4 Consult note may be added for document sharing"),
        e("DiagnosticReport.subject", card="1..1", types=ref(*PATIENT_TARGETS)),
        e("DiagnosticReport.effective[x]", card="1..1", types=[{"code": "Period"}], short="Période du programme"),
        e("DiagnosticReport.issued", card="1..1"),
        e("DiagnosticReport.performer", card="1..*"),
        e("DiagnosticReport.presentedForm", constraint=[
            inv("apa-dr-1", "At least one of data and url must be present (PA IG pa-dr-1)", "data.exists() or url.exists()"),
        ]),
    ],
)

# ---- Consent

structure(
    "apa-consent-opposition",
    "Consent",
    R4 + "Consent",
    "Opposition to a kind of recipient",
    "The patient's opposition to the sharing of their data with a kind of recipient — the DMP feeding (L.1111-15 "
    "CSP), a CPTS, an MSS: a provision deny whose actors have a role coded in recipient-kind and a reference to "
    "one organisation, or only a display for every recipient of that kind. Nested provisions are exceptions.",
    [
        e("Consent", constraint=[
            inv("apa-cons-1", "An actor aims at one Organization (reference) or at every recipient of its kind (display only)",
                "provision.actor.reference.where(reference.exists() and "
                "reference.matches('^(https?://.+/)?Organization/[A-Za-z0-9.-]{1,64}$').not()).empty() and "
                "provision.actor.reference.where(reference.empty() and display.empty()).empty()"),
        ]),
        e("Consent.scope", patternCodeableConcept=cc("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy")),
        e("Consent.patient", card="1..1", types=ref(*PATIENT_TARGETS)),
        e("Consent.policyRule", card="1..1", patternCodeableConcept=cc(ACT_CODE, "OPTOUT"),
          short="OPTOUT (R4 invariant ppc-1 wants a policy or a policyRule)"),
        e("Consent.provision", card="1..1"),
        e("Consent.provision.type", card="1..1", fixedCode="deny"),
        e("Consent.provision.actor", card="1..*"),
        e("Consent.provision.actor.role", binding=("required", vs_url("recipient-kind")),
          patternCodeableConcept={"coding": [{"system": CS_RK}]}),
    ],
)

# ---- Observations

def obs(i, title, description, code, unit=None, value="Quantity", base=R4 + "Observation", category=("activity", None),
        effective="dateTime", extra=None, constraints=None, binding=None, episode=False, encounter=True):
    els = []
    root_constraints = list(constraints or [])
    els.append(e("Observation", **({"constraint": root_constraints} if root_constraints else {})))
    if episode:
        els.extend(ext_slices("Observation", [("episodeOfCare", "1..1", WORKFLOW_EOC)]))
    els.append(e("Observation.status", binding=("required", vs_url("observation-status"))))
    cat_extra = None
    if category[0]:
        cat_extra = ("observationCategory", cc(OBS_CAT, category[0]))
    els.extend(category_pa("Observation", cat_extra, vital_signs=base.startswith(FRC)))
    if code is not None:
        els.append(e("Observation.code", patternCodeableConcept=code))
    if binding:
        els.append(e("Observation.code", binding=("required", binding)))
    els.append(e("Observation.subject", card="1..1", types=ref(*PATIENT_TARGETS)))
    if encounter:
        els.append(e("Observation.encounter", types=ref(sd_url("apa-session"))))
    if effective:
        els.append(e("Observation.effective[x]", card="1..1", types=[{"code": effective}]))
    if value == "Quantity":
        els += [
            e("Observation.value[x]", card="1..1", types=[{"code": "Quantity"}]),
            e("Observation.valueQuantity.value", card="1..1"),
            e("Observation.valueQuantity.system", card="1..1", fixedUri=UCUM),
            e("Observation.valueQuantity.code", card="1..1", fixedCode=unit),
        ]
    elif value:
        els.append(e("Observation.value[x]", card="1..1", types=[{"code": value}]))
    els += extra or []
    # merge duplicate ids (code pattern + binding)
    merged = {}
    order = []
    for el in els:
        if el["id"] in merged:
            merged[el["id"]].update({k: v for k, v in el.items() if k not in ("id", "path")})
        else:
            merged[el["id"]] = el
            order.append(el["id"])
    structure(i, "Observation", base, title, description, [merged[k] for k in order])


def range_inv(key, what, lo, hi):
    return inv(key, f"{what} is between {lo} and {hi}",
               f"value.value.empty() or (value.value >= {lo} and value.value <= {hi})")


# §4.1 anthropometry and vitals: FR Core vital-sign profiles where they exist
obs("apa-obs-body-weight", "Poids", "Body weight (LOINC 29463-7), kg; FR Core body weight.",
    None, "kg", base=FRC + "fr-core-observation-body-weight", category=(None, None))
obs("apa-obs-body-height", "Taille", "Body height (LOINC 8302-2), cm; FR Core body height.",
    None, "cm", base=FRC + "fr-core-observation-body-height", category=(None, None))
obs("apa-obs-bmi", "IMC", "Body mass index (LOINC 39156-5), kg/m2, derived from weight and height; FR Core BMI.",
    None, "kg/m2", base=FRC + "fr-core-observation-bmi", category=(None, None),
    extra=[e("Observation.derivedFrom", card="2..*", short="The weight and height it is computed from")])
obs("apa-obs-resting-heart-rate", "Fréquence cardiaque de repos",
    "Resting heart rate: LOINC 8867-4 (FR Core heart rate) and 40443-4 Heart rate --resting (PA IG), /min.",
    cc(LOINC, "40443-4", "Heart rate --resting"), "/min", base=FRC + "fr-core-observation-heartrate", category=(None, None))
obs("apa-obs-blood-pressure", "Pression artérielle",
    "Blood pressure panel (LOINC 85354-9, systolic 8480-6, diastolic 8462-4 in mm[Hg]); FR Core blood pressure.",
    None, None, value=None, base=FRC + "fr-core-observation-bp", category=(None, None))
obs("apa-obs-waist-circumference", "Tour de taille", "Waist circumference (LOINC 8280-0, as ANS Mesures de santé), cm.",
    cc(LOINC, "8280-0"), "cm", category=("vital-signs", None))
obs("apa-obs-steps-per-day", "Nombre de pas par jour",
    "Steps in 24 hours (LOINC 41950-7), canonical unit /d as the PA IG (ANS Mesures de santé writes 1/(24.h), "
    "the same quantity: convert on ingest).",
    cc(LOINC, "41950-7", "Number of steps in 24 hour Measured"), "/d")
obs("apa-obs-mvpa-minutes-per-week", "Minutes d'AP modérée à vigoureuse par semaine",
    "Exercise vital sign, LOINC 82290-8, min/wk (PA IG pa-observation-evs-min-per-week).",
    cc(LOINC, "82290-8", "Frequency of moderate to vigorous aerobic physical activity"), "min/wk")
obs("apa-obs-mvpa-days-per-week", "Jours d'AP modérée à vigoureuse par semaine",
    "Exercise vital sign, LOINC 89555-7, d/wk (PA IG pa-observation-evs-days-per-week).",
    cc(LOINC, "89555-7"), "d/wk")
obs("apa-obs-mvpa-minutes-per-day", "Minutes d'AP par jour actif",
    "Exercise vital sign, LOINC 68516-4, min/d (PA IG pa-observation-evs-min-per-day).",
    cc(LOINC, "68516-4"), "min/d")
obs("apa-obs-strength-days-per-week", "Jours de renforcement musculaire par semaine",
    "LOINC 82291-6, d/wk (PA IG pa-observation-strength-days-per-week).",
    cc(LOINC, "82291-6"), "d/wk")

# §4.2 functional tests and questionnaires
obs("apa-obs-six-minute-walk", "Test de marche de 6 minutes",
    "Distance walked in 6 minutes: LOINC 64098-7; SNOMED CT 165263003 Walking distance may be added; m.",
    cc(LOINC, "64098-7", "Walking distance 6 minutes"), "m")
obs("apa-obs-chair-stand-30s", "Lever de chaise 30 s",
    "Number of chair stands in 30 s: local STS30; SNOMED CT 450738001 (Thirty second chair stand test score) may be added; {#}.",
    cc(CS_SPORT, "STS30"), "{#}")
obs("apa-obs-five-sit-to-stand", "5 levers de chaise", "Time for five chair stands: local STS5, s.",
    cc(CS_SPORT, "STS5"), "s")
obs("apa-obs-timed-up-and-go", "Timed Up and Go", "Timed Up and Go: local TUG (no verified LOINC), s.",
    cc(CS_SPORT, "TUG"), "s")
obs("apa-obs-unipodal-stance", "Appui unipodal",
    "One-leg stance time: local UNIPODAL, s; components side (SNOMED CT left/right) and eyes closed (boolean).",
    cc(CS_SPORT, "UNIPODAL"), "s",
    extra=[
        e("Observation.component", slicing=slicing(("pattern", "code"))),
        e("Observation.component:side", card="1..1"),
        e("Observation.component:side.code", patternCodeableConcept=cc(CS_SPORT, "LATERALITE")),
        e("Observation.component:side.value[x]", card="1..1", types=[{"code": "CodeableConcept"}],
          binding=("required", vs_url("laterality"))),
        e("Observation.component:eyesClosed", card="0..1"),
        e("Observation.component:eyesClosed.code", patternCodeableConcept=cc(CS_SPORT, "YEUX-FERMES")),
        e("Observation.component:eyesClosed.value[x]", card="1..1", types=[{"code": "boolean"}]),
    ])
obs("apa-obs-sit-and-reach", "Sit-and-reach",
    "Sit-and-reach distance: local SITREACH, cm, signed (negative when the fingers stop before the feet).",
    cc(CS_SPORT, "SITREACH"), "cm")
obs("apa-obs-grip-strength", "Force de préhension",
    "Maximal grip strength with a dynamometer: local GRIP-R / GRIP-L (LOINC use unresolved, see README), kg.",
    None, "kg", binding=vs_url("grip-code"))
obs("apa-obs-ipaq", "IPAQ – activité modérée / vigoureuse",
    "IPAQ moderate (77592-4) or vigorous (77593-2) physical activity, min (as the PA IG measure table).",
    None, "min", binding=vs_url("ipaq-code"), category=("survey", None))
obs("apa-obs-gpaq", "GPAQ", "GPAQ moderate-to-vigorous activity: local GPAQ-MVPA, {MET}.min/wk.",
    cc(CS_SPORT, "GPAQ-MVPA"), "{MET}.min/wk", category=("survey", None))
obs("apa-obs-onaps-paq", "ONAPS-PAQ", "ONAPS-PAQ score: local ONAPS-PAQ, {score}.",
    cc(CS_SPORT, "ONAPS-PAQ"), "{score}", category=("survey", None))
obs("apa-obs-ricci-gagnon", "Ricci et Gagnon", "Ricci & Gagnon self-questionnaire score: local RICCI, {score}.",
    cc(CS_SPORT, "RICCI"), "{score}", category=("survey", None))
obs("apa-obs-borg-rpe", "Borg RPE", "Rating of perceived exertion (Borg 6–20): local BORG-RPE, {score}.",
    cc(CS_SPORT, "BORG-RPE"), "{score}", category=("survey", None),
    constraints=[range_inv("apa-borg-1", "The Borg rating", 6, 20)])
obs("apa-obs-epices", "Score EPICES", "EPICES precarity score: local EPICES, {score}, 0–100 (precarity ≥ 30.17).",
    cc(CS_SPORT, "EPICES"), "{score}", category=("survey", None),
    constraints=[range_inv("apa-epices-1", "The EPICES score", 0, 100)])
obs("apa-obs-qaap", "Q-AAP+", "Q-AAP+ (PAR-Q+ FR): true when at least one answer is positive; local QAAP-POS.",
    cc(CS_SPORT, "QAAP-POS"), value="boolean", category=("survey", None))
obs("apa-obs-motivational-stage", "Stade motivationnel", "Stage of change (Prochaska): local MOTIV-STAGE.",
    cc(CS_SPORT, "MOTIV-STAGE"), value="CodeableConcept", category=("survey", None),
    extra=[e("Observation.valueCodeableConcept", binding=("required", vs_url("motivational-stage")))])

# §5 outcomes
obs("apa-obs-attendance-rate", "Taux d'assiduité",
    "Attended ÷ planned sessions over the programme period, %; effectivePeriod = programme period.",
    cc(CS_SPORT, "ATTEND-RATE"), "%", category=(None, None), effective="Period", episode=True, encounter=False,
    constraints=[range_inv("apa-att-1", "The attendance rate", 0, 100)])
obs("apa-obs-orientation", "Orientation en fin de parcours",
    "Where the beneficiary goes at the end of the pathway; effective = exit date.",
    cc(CS_SPORT, "ORIENTATION"), value="CodeableConcept", category=(None, None), episode=True, encounter=False,
    extra=[e("Observation.valueCodeableConcept", binding=("required", vs_url("orientation")))])
obs("apa-obs-maintenance-6m", "Maintien à 6 mois",
    "Regular physical activity kept 6 months after the end of the programme (follow-up call or questionnaire).",
    cc(CS_SPORT, "ADHERENCE-6M"), value="boolean", category=(None, None), episode=True, encounter=False,
    extra=[e("Observation.method", short="Téléphone, questionnaire…")])

# --------------------------------------------------------------------------
# SearchParameters (routing and directory)

def searchparam(i, code, base, typ, expression, description, target=None):
    sp = meta("SearchParameter", i, pascal(i), None, description)
    del sp["title"]
    sp["code"] = code
    sp["base"] = [base]
    sp["type"] = typ
    sp["expression"] = expression
    if target:
        sp["target"] = target
    resources.append(sp)


searchparam("organization-territory", "territory", "Organization", "token",
            f"Organization.extension('{ORG_TERRITORY}').value",
            "Organizations covering a commune or département (INSEE code).")
searchparam("healthcareservice-limitation-level", "limitation-level", "HealthcareService", "token",
            f"HealthcareService.characteristic.where(coding.system = '{CS_FLIM}')",
            "Programmes accepting a functional-limitation level.")
searchparam("healthcareservice-staff-kind", "staff-kind", "HealthcareService", "token",
            f"HealthcareService.characteristic.where(coding.system = '{CS_STAFF}')",
            "Programmes run by a kind of intervenant.")
searchparam("healthcareservice-condition", "condition", "HealthcareService", "token",
            "HealthcareService.eligibility.code",
            "Programmes accepting a condition.")
searchparam("servicerequest-functional-limitation", "functional-limitation", "ServiceRequest", "token",
            f"ServiceRequest.extension('{sd_url('apa-functional-limitation')}').value",
            "Prescriptions by functional-limitation level.")


# --------------------------------------------------------------------------
# Examples (profiles/example/): one pathway, each resource claiming its
# profile. check-profiles.py validates them against our differentials, so
# every profile is shown to be satisfiable.

def luhn(digits):
    """digits + the Luhn check digit."""
    for d in "0123456789":
        total = 0
        for i, ch in enumerate(reversed(digits + d)):
            n = int(ch) * (2 if i % 2 else 1)
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return digits + d
    raise ValueError(digits)


def nir_key(nir13):
    return f"{97 - int(nir13.replace('2A', '19').replace('2B', '18')) % 97:02d}"


def siret(siren8, nic4):
    return luhn(luhn(siren8) + nic4)


def prof(i):
    return {"profile": [sd_url(i)]}


def coding(system, code, display=None):
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system, code, display=None):
    return {"coding": [coding(system, code, display)]}


def qty(value, unit, code):
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


NIR13 = "2770763220829"
RPPS = "99700218896"  # ANS test RPPS (passes Luhn)
PA_CAT = concept(PA_TEMP, "PhysicalActivity", "Physical Activity")
PATIENT = {"reference": "Patient/patient-ins-demo"}
PRESC = {"reference": "ServiceRequest/prescription-1"}
EPISODE = {"reference": "EpisodeOfCare/programme-1"}
MSS = {"reference": "Organization/mss-brest"}
FRC_BIRTH_LIST = FRC + "fr-core-patient-birth-list-given-name"


def organization(i, name, kind, siret_value, territory=None):
    r = {"resourceType": "Organization", "id": i, "meta": prof("apa-organization"),
         "identifier": [{"type": concept(FRC_0203, "SIRET"), "system": "https://sirene.fr", "value": siret_value}],
         "name": name}
    if kind:
        r["type"] = [concept(CS_RK, kind)]
    if territory:
        r["extension"] = [{"url": ORG_TERRITORY, "valueCoding": coding(*t)} for t in territory]
        r = {"resourceType": r["resourceType"], "id": r["id"], "meta": r["meta"], "extension": r.pop("extension"), **r}
    return r


def observation(i, profile, code, value, category="activity", effective="2026-03-02T10:00:00+01:00", **more):
    cats = [PA_CAT] + ([concept(OBS_CAT, category)] if category else [])
    r = {"resourceType": "Observation", "id": i, "meta": prof(profile), "status": "final", "category": cats,
         "code": code, "subject": PATIENT}
    r.update(more.pop("before_effective", {}))
    if isinstance(effective, dict):
        r["effectivePeriod"] = effective
    else:
        r["effectiveDateTime"] = effective
    r.update(value)
    r.update(more)
    return r


EXAMPLES = [
    organization("mss-brest", "Maison Sport-Santé du Pays de Brest", "MSS", siret("12345678", "0001"),
                 [(COMMUNE, "29019"), (COMMUNE, "29075")]),
    organization("cpts-brest", "CPTS Brest Métropole", "CPTS", siret("73282932", "0007"), [(DEPARTEMENT, "29")]),
    organization("cabinet-kerouan", "Cabinet médical de Kérouan", None, siret("55443322", "0012")),
    {"resourceType": "Practitioner", "id": "dr-le-gall", "meta": prof("apa-practitioner"),
     "identifier": [
         {"type": concept(FRC_0203, "IDNPS"), "system": "urn:oid:1.2.250.1.71.4.2.1", "value": "8" + RPPS},
         {"type": concept(FRC_0203, "RPPS"), "system": "https://rpps.esante.gouv.fr", "value": RPPS}],
     "name": [{"family": "Le Gall", "given": ["Anne"]}],
     "qualification": [{"code": concept("https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante",
                                        "10", "Médecin")}]},
    {"resourceType": "Practitioner", "id": "eapa-morvan", "meta": prof("apa-practitioner"),
     "identifier": [{"system": "https://mss-brest.example/intervenants", "value": "E-012"}],
     "name": [{"family": "Morvan", "given": ["Yann"]}]},
    {"resourceType": "Patient", "id": "patient-ins-demo", "meta": prof("apa-patient-ins"),
     "extension": [
         {"url": IDENTITY_RELIABILITY, "extension": [
             {"url": "identityStatus", "valueCoding": coding(IDENTITY_STATUS, "QUAL")}]},
         {"url": R4 + "patient-birthPlace", "valueAddress": {
             "extension": [{"url": FRC + "fr-core-address-insee-code", "valueCoding": coding(COMMUNE, "63113")}],
             "city": "Clermont-Ferrand"}}],
     "identifier": [{"use": "official", "type": concept(FRC_0203, "INS-NIR-TEST"),
                     "system": "urn:oid:1.2.250.1.213.1.4.10", "value": NIR13 + nir_key(NIR13)}],
     "name": [{"extension": [{"url": FRC_BIRTH_LIST, "valueString": "Marie Louise"}],
               "use": "official", "family": "Kerbrat", "given": ["Marie"]}],
     "gender": "female", "birthDate": "1977-07-14",
     "address": [{"extension": [{"url": FRC + "fr-core-address-insee-code", "valueCoding": coding(COMMUNE, "29019")}],
                  "city": "Brest", "postalCode": "29200"}]},
    {"resourceType": "Patient", "id": "patient-prov-demo", "meta": prof("apa-patient"),
     "extension": [{"url": IDENTITY_RELIABILITY, "extension": [{"url": "identityStatus", "valueCoding": coding(IDENTITY_STATUS, "PROV")}]}],
     "identifier": [{"use": "usual", "type": concept(V2_0203, "PI"), "system": "https://mss-brest.example/beneficiaires",
                     "value": "B-2026-0042"}],
     "name": [{"use": "official", "family": "Guivarc'h", "given": ["Paul"]}],
     "gender": "male", "birthDate": "1958-11-02"},
    {"resourceType": "HealthcareService", "id": "programme-brest-apa", "meta": prof("apa-programme"),
     "active": True, "providedBy": MSS, "type": [concept(CS_SPORT, "PROG-APA")], "name": "Bouger pour ma santé",
     "eligibility": [{"code": concept(cs_url("condition-group"), "diabete-t2")},
                     {"code": concept(cs_url("condition-group"), "obesite")}],
     "characteristic": [concept(CS_FLIM, "aucune"), concept(CS_FLIM, "minime"), concept(CS_FLIM, "moderee"),
                        concept(CS_STAFF, "EAPA"), concept(CS_STAFF, "EDUC-SPORT")]},
    {"resourceType": "ServiceRequest", "id": "prescription-1", "meta": prof("apa-prescription"),
     "extension": [
         {"url": sd_url("apa-functional-limitation"), "valueCodeableConcept": concept(CS_FLIM, "moderee")},
         {"url": sd_url("apa-intensity"), "valueCodeableConcept": concept(cs_url("intensity"), "moderee")}],
     "status": "active", "intent": "original-order", "category": [PA_CAT],
     "code": concept(SCT, "390893007", "Referral to physical activity program"),
     "orderDetail": [concept(cs_url("activity-type"), "endurance"), concept(cs_url("activity-type"), "renforcement")],
     "subject": PATIENT,
     "occurrenceTiming": {"repeat": {"boundsDuration": qty(3, "mois", "mo"), "duration": 60, "durationUnit": "min",
                                     "frequency": 2, "period": 1, "periodUnit": "wk"}},
     "authoredOn": "2026-02-10", "requester": {"reference": "Practitioner/dr-le-gall"},
     "reasonCode": [{"coding": [coding("http://hl7.org/fhir/sid/icd-10", "E11"),
                                coding(cs_url("condition-group"), "diabete-t2")], "text": "Diabète de type 2"}]},
    {"resourceType": "Task", "id": "referral-1", "meta": prof("apa-referral-task"),
     "status": "accepted", "intent": "order", "code": concept("http://hl7.org/fhir/CodeSystem/task-code", "fulfill"),
     "focus": PRESC, "for": PATIENT, "authoredOn": "2026-02-10T11:00:00+01:00",
     "requester": {"reference": "Practitioner/dr-le-gall"}, "owner": MSS},
    {"resourceType": "EpisodeOfCare", "id": "programme-1", "meta": prof("apa-programme-episode"),
     "status": "active", "type": [concept(CS_SPORT, "PROG-APA")], "patient": PATIENT, "managingOrganization": MSS,
     "period": {"start": "2026-03-02"}, "referralRequest": [PRESC]},
    {"resourceType": "CarePlan", "id": "plan-1", "meta": prof("apa-careplan"),
     "extension": [{"url": WORKFLOW_EOC, "valueReference": EPISODE}],
     "status": "active", "intent": "plan", "category": [PA_CAT], "subject": PATIENT,
     "period": {"start": "2026-03-02", "end": "2026-05-29"}, "supportingInfo": [PRESC],
     "activity": [{"detail": {
         "extension": [{"url": sd_url("apa-intensity"), "valueCodeableConcept": concept(cs_url("intensity"), "moderee")}],
         "code": concept(cs_url("activity-type"), "combine"), "status": "in-progress",
         "scheduledTiming": {"repeat": {"count": 24, "duration": 60, "durationUnit": "min",
                                        "frequency": 2, "period": 1, "periodUnit": "wk"}}}}]},
    {"resourceType": "Encounter", "id": "bilan-initial-1", "meta": prof("apa-session"),
     "identifier": [{"type": concept(V2_0203, "VN"), "system": "https://mss-brest.example/seances", "value": "S-0001"}],
     "status": "finished", "class": coding(ACT_CODE, "AMB"), "type": [concept(cs_url("session-kind"), "bilan-initial")],
     "subject": PATIENT, "episodeOfCare": [EPISODE], "basedOn": [PRESC],
     "period": {"start": "2026-03-02T10:00:00+01:00", "end": "2026-03-02T11:30:00+01:00"}, "serviceProvider": MSS},
    observation("six-minute-walk-1", "apa-obs-six-minute-walk", concept(LOINC, "64098-7", "Walking distance 6 minutes"),
                {"valueQuantity": qty(412, "m", "m")}, before_effective={"encounter": {"reference": "Encounter/bilan-initial-1"}}),
    observation("chair-stand-1", "apa-obs-chair-stand-30s",
                {"coding": [coding(CS_SPORT, "STS30"), coding(SCT, "450738001")]},
                {"valueQuantity": qty(11, "levers", "{#}")}),
    observation("unipodal-1", "apa-obs-unipodal-stance", concept(CS_SPORT, "UNIPODAL"),
                {"valueQuantity": qty(8.5, "s", "s")},
                component=[{"code": concept(CS_SPORT, "LATERALITE"), "valueCodeableConcept": concept(SCT, "24028007", "Right")},
                           {"code": concept(CS_SPORT, "YEUX-FERMES"), "valueBoolean": False}]),
    observation("weight-1", "apa-obs-body-weight", concept(LOINC, "29463-7"), {"valueQuantity": qty(92.4, "kg", "kg")},
                category="vital-signs"),
    observation("attendance-1", "apa-obs-attendance-rate", concept(CS_SPORT, "ATTEND-RATE"),
                {"valueQuantity": qty(83, "%", "%")}, category=None,
                effective={"start": "2026-03-02", "end": "2026-05-29"},
                **{"extension": [{"url": WORKFLOW_EOC, "valueReference": EPISODE}]}),
    observation("orientation-1", "apa-obs-orientation", concept(CS_SPORT, "ORIENTATION"),
                {"valueCodeableConcept": concept(cs_url("orientation"), "CLUB-SS")}, category=None,
                effective="2026-05-29", **{"extension": [{"url": WORKFLOW_EOC, "valueReference": EPISODE}]}),
    {"resourceType": "DiagnosticReport", "id": "end-of-pathway-1", "meta": prof("apa-end-of-pathway-report"),
     "basedOn": [PRESC], "status": "final", "category": [PA_CAT],
     "code": {"coding": [coding(CS_SPORT, "BILAN-FINAL"), coding(LOINC, "11488-4", "Consult Note")]},
     "subject": PATIENT, "effectivePeriod": {"start": "2026-03-02", "end": "2026-05-29"},
     "issued": "2026-05-29T16:00:00+02:00", "performer": [{"reference": "Practitioner/eapa-morvan"}],
     "result": [{"reference": "Observation/six-minute-walk-1"}, {"reference": "Observation/orientation-1"}],
     "conclusion": "Progression de 60 m au test de marche ; orientation vers un club sport-santé."},
    {"resourceType": "Consent", "id": "opposition-dmp-1", "meta": prof("apa-consent-opposition"),
     "status": "active", "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
     "category": [concept(LOINC, "59284-0")], "patient": PATIENT, "dateTime": "2026-02-10",
     "policyRule": concept(ACT_CODE, "OPTOUT"),
     "provision": {"type": "deny", "actor": [{"role": concept(CS_RK, "DMP"), "reference": {"display": "DMP"}}]}},
]


# One example for each Observation profile the pathway above does not show,
# built from the profile itself (code pattern or first code of the bound
# value set, fixed unit, value type), so that each profile is exercised.
VITAL_CODES = {
    "apa-obs-body-height": ({"coding": [coding(LOINC, "8302-2")]}, {"valueQuantity": qty(168, "cm", "cm")}),
    "apa-obs-bmi": ({"coding": [coding(LOINC, "39156-5")]}, {"valueQuantity": qty(32.7, "kg/m2", "kg/m2")}),
    "apa-obs-resting-heart-rate": ({"coding": [coding(LOINC, "8867-4"), coding(LOINC, "40443-4")]},
                                   {"valueQuantity": qty(72, "/min", "/min")}),
    "apa-obs-blood-pressure": ({"coding": [coding(LOINC, "85354-9")]}, {"component": [
        {"code": concept(LOINC, "8480-6"), "valueQuantity": qty(138, "mm[Hg]", "mm[Hg]")},
        {"code": concept(LOINC, "8462-4"), "valueQuantity": qty(86, "mm[Hg]", "mm[Hg]")}]}),
}
SAMPLE_VALUES = {"m": 412, "s": 9.2, "cm": 4, "kg": 27, "min": 120, "{score}": 14, "%": 80}


def auto_examples():
    shown = {p for r in EXAMPLES for p in r.get("meta", {}).get("profile", [])}
    vs_by_url = {r["url"]: r for r in resources if r["resourceType"] == "ValueSet"}
    out = []
    for sd in resources:
        if sd["resourceType"] != "StructureDefinition" or sd["type"] != "Observation" or sd["url"] in shown:
            continue
        els = {el["id"]: el for el in sd["differential"]["element"]}
        code_el = els.get("Observation.code", {})
        value = {}
        if sd["id"] in VITAL_CODES:
            code, value = VITAL_CODES[sd["id"]]
        elif "patternCodeableConcept" in code_el:
            code = code_el["patternCodeableConcept"]
        else:
            inc = vs_by_url[code_el["binding"]["valueSet"]]["compose"]["include"][0]
            code = concept(inc["system"], inc["concept"][0]["code"])
        types = [t["code"] for t in els.get("Observation.value[x]", {}).get("type", [])]
        if types == ["Quantity"] and not value:
            unit = els["Observation.valueQuantity.code"]["fixedCode"]
            value = {"valueQuantity": qty(SAMPLE_VALUES.get(unit, 3), unit, unit)}
        elif types == ["boolean"]:
            value = {"valueBoolean": True}
        elif types == ["CodeableConcept"]:
            vs = vs_by_url[els["Observation.valueCodeableConcept"]["binding"]["valueSet"]]
            system = vs["compose"]["include"][0]["system"]
            first = next(r for r in resources if r.get("url") == system)["concept"][0]["code"]
            value = {"valueCodeableConcept": concept(system, first)}
        cat = els.get("Observation.category:observationCategory", {}).get("patternCodeableConcept")
        category = cat["coding"][0]["code"] if cat else ("vital-signs" if sd["baseDefinition"].startswith(FRC) else None)
        more = {}
        if "Observation.extension:episodeOfCare" in els:
            more["extension"] = [{"url": WORKFLOW_EOC, "valueReference": EPISODE}]
        if "Observation.derivedFrom" in els:
            more["derivedFrom"] = [{"reference": "Observation/weight-1"}, {"reference": "Observation/height-1"}]
        i = sd["id"].replace("apa-obs-", "") + "-1"
        if sd["id"] == "apa-obs-body-height":
            i = "height-1"
        out.append(observation(i, sd["id"], code, value, category=category, **more))
    return out


# --------------------------------------------------------------------------
# Write the package

def main():
    for name in os.listdir(OUT) if os.path.isdir(OUT) else []:
        if name.endswith(".json") and name != "package.json":
            os.remove(os.path.join(OUT, name))
    os.makedirs(OUT, exist_ok=True)
    index = []
    for r in sorted(resources, key=lambda r: (r["resourceType"], r["id"])):
        fn = f"{r['resourceType']}-{r['id']}.json"
        with open(os.path.join(OUT, fn), "w", encoding="utf-8") as f:
            json.dump(r, f, ensure_ascii=False, indent=2)
            f.write("\n")
        entry = {"filename": fn, "resourceType": r["resourceType"], "id": r["id"], "url": r["url"],
                 "version": r["version"]}
        if r["resourceType"] == "StructureDefinition":
            entry["kind"] = r["kind"]
            entry["type"] = r["type"]
        elif r["resourceType"] == "SearchParameter":
            entry["type"] = r["type"]
        index.append(entry)
    ex_dir = os.path.join(OUT, "example")
    shutil.rmtree(ex_dir, ignore_errors=True)
    os.makedirs(ex_dir)
    for r in EXAMPLES + auto_examples():
        with open(os.path.join(ex_dir, f"{r['resourceType']}-{r['id']}.json"), "w", encoding="utf-8") as f:
            json.dump(r, f, ensure_ascii=False, indent=2)
            f.write("\n")
    with open(os.path.join(OUT, ".index.json"), "w", encoding="utf-8") as f:
        json.dump({"index-version": 1, "files": index}, f, ensure_ascii=False, indent=2)
        f.write("\n")
    package = {
        "name": "apa-gateway.fhir.apa",
        "version": VERSION,
        "title": "APA gateway implementation guide",
        "description": "Profiles, extensions, code systems and value sets of the APA (activité physique adaptée) "
                       "pathway in France: prescription, referral, assessments, sessions, outcomes.",
        "canonical": BASE,
        "url": BASE,
        "fhirVersions": ["4.0.1"],
        "jurisdiction": "urn:iso:std:iso:3166#FR",
        "type": "IG",
        "license": "CC0-1.0",
        "author": PUBLISHER,
        "dependencies": {"hl7.fhir.r4.core": "4.0.1", "hl7.fhir.fr.core": "2.1.0"},
    }
    with open(os.path.join(OUT, "package.json"), "w", encoding="utf-8") as f:
        json.dump(package, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"{len(resources)} resources written to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
