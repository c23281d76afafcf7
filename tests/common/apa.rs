//! Valid APA resources for tests: what the gateway's validation requires of
//! a prescription, a referral and an identified patient (profiles/), so that
//! tests about something else send data a real client would.

use serde_json::{Value, json};

/// INS of fictitious test patients.
pub const INS_TEST: &str = "urn:oid:1.2.250.1.213.1.4.10";
const IDENTITY_RELIABILITY: &str = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability";
const IDENTITY_STATUS: &str = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-identity-status";
const SD: &str = "https://apa-gateway.fr/fhir/StructureDefinition";
const CS: &str = "https://apa-gateway.fr/fhir/CodeSystem";
const PA: &str = "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes";

/// FR Core's identity-reliability extension with `status` (QUAL: a
/// qualified identity, the only one an INS may travel with).
pub fn identity_status(status: &str) -> Value {
    json!({"url": IDENTITY_RELIABILITY,
           "extension": [{"url": "identityStatus", "valueCoding": {"system": IDENTITY_STATUS, "code": status}}]})
}

pub fn qualified_identity() -> Value {
    identity_status("QUAL")
}

/// A patient with a test INS (15 characters, key included) and a qualified
/// identity: all its traits (official name, first name, birth date, sex,
/// birth place) come with the INS, as the INSi service returns them.
pub fn patient_with_ins(ins: &str, family: &str) -> Value {
    json!({"resourceType": "Patient",
           "extension": [qualified_identity(),
                         {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                          "valueAddress": {"extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                                                          "valueCoding": {"code": "35238"}}]}}],
           "identifier": [{"system": INS_TEST, "value": ins}],
           "name": [{"use": "official", "family": family, "given": ["Anne"]}],
           "gender": "female", "birthDate": "1958-02-03"})
}

/// An APA prescription (apa-prescription): 3 months, twice a week, one
/// hour, moderate limitation and intensity, for type 2 diabetes.
pub fn prescription(subject: &str, requester: &str) -> Value {
    json!({"resourceType": "ServiceRequest",
        "extension": [
            {"url": format!("{SD}/apa-functional-limitation"),
             "valueCodeableConcept": {"coding": [{"system": format!("{CS}/functional-limitation"), "code": "moderee"}]}},
            {"url": format!("{SD}/apa-intensity"),
             "valueCodeableConcept": {"coding": [{"system": format!("{CS}/intensity"), "code": "moderee"}]}}],
        "status": "active", "intent": "original-order",
        "category": [{"coding": [{"system": PA, "code": "PhysicalActivity"}]}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "390893007"}]},
        "orderDetail": [{"coding": [{"system": format!("{CS}/activity-type"), "code": "endurance"}]}],
        "subject": {"reference": subject},
        "occurrenceTiming": {"repeat": {
            "boundsDuration": {"value": 3, "unit": "mois", "system": "http://unitsofmeasure.org", "code": "mo"},
            "duration": 60, "durationUnit": "min", "frequency": 2, "period": 1, "periodUnit": "wk"}},
        "authoredOn": "2026-11-02",
        "requester": {"reference": requester},
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11"}]}]})
}

/// A referral (apa-referral-task) of `focus` for `patient`, from
/// `requester` to `owner`.
pub fn referral(focus: &str, patient: &str, requester: &str, owner: &str) -> Value {
    json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": focus},
        "for": {"reference": patient},
        "authoredOn": "2026-11-02T10:30:00+01:00",
        "requester": {"reference": requester},
        "owner": {"reference": owner}})
}

/// A body weight of the assessment (apa-obs-body-weight).
pub fn body_weight(patient: &str, kg: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": PA, "code": "PhysicalActivity"}]},
                     {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2026-11-12T10:00:00+01:00",
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
}
