//! The patient of a GP's prescription, when the GP software sends the
//! qualified identity: an `apa-patient-ins` Patient, registered if the
//! gateway does not hold the INS yet, identified otherwise (the gateway
//! compares the traits, `apa::traits`). Without the identity, the
//! prescription can only name a patient the practice already sees.

use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{Faults, PatientRef, Problem, When, need};
use crate::apa::identity::{Ins, system};
use crate::apa::routing::Commune;

const INSEE_COMMUNE: &str = "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune";
const INSEE_EXTENSION: &str = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code";

/// `patient` of `POST /apa/v1/prescriptions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientInput {
    pub ins: Option<String>,
    /// `NIR` (default), `NIA`, `TEST`, `DEMO`.
    pub ins_kind: Option<String>,
    /// The qualified identity, to register the patient or identify them.
    pub identity: Option<IdentityInput>,
    /// The home address; its INSEE commune code routes the referral.
    pub address: Option<AddressInput>,
}

/// The INS traits, as the INSi service returned them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    /// `QUAL`: the identity was qualified (INSi call and identity document
    /// checked). The INS may be sent for no other status.
    pub status: Option<String>,
    pub birth_name: Option<String>,
    /// The birth certificate's list of first names, in order.
    pub first_names: Option<String>,
    /// The first name used (defaults to the first of `first_names`).
    pub first_name: Option<String>,
    pub birth_date: Option<String>,
    /// `F` or `M`.
    pub sex: Option<String>,
    /// INSEE code of the birth commune (99xxx: the country, for a birth abroad).
    pub birth_place: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    pub lines: Option<Vec<String>>,
    pub postal_code: Option<String>,
    pub city: Option<String>,
    /// INSEE code of the commune.
    pub insee: Option<String>,
}

impl PatientInput {
    pub fn reference(&self) -> PatientRef {
        PatientRef {
            ins: self.ins.clone(),
            ins_kind: self.ins_kind.clone(),
        }
    }
}

fn commune(code: &str, at: &str, birth: bool) -> Result<String, Problem> {
    let c = code.trim().to_ascii_uppercase();
    // A birth abroad is coded 99 + the INSEE country code.
    let abroad = birth && c.len() == 5 && c.starts_with("99") && c.bytes().all(|b| b.is_ascii_digit());
    if abroad || Commune::parse(&c).is_some() {
        Ok(c)
    } else {
        Err(Problem::new(
            at,
            "value",
            format!("'{code}' is not an INSEE commune code (5 characters: 35238, 2A004…)"),
        ))
    }
}

fn insee(code: &str) -> Value {
    json!({"url": INSEE_EXTENSION, "valueCoding": {"system": INSEE_COMMUNE, "code": code}})
}

/// The Patient to register or identify, when `input` carries an identity.
pub fn resource(input: &PatientInput, ins: Option<&Ins>, f: &mut Faults) -> Option<Value> {
    let id = input.identity.as_ref()?;
    let at = "$.patient.identity";
    let status = need(&id.status, &format!("{at}.status"), "the identity status (QUAL)").and_then(|s| {
        if s.eq_ignore_ascii_case("QUAL") {
            Ok(())
        } else {
            Err(Problem::new(
                format!("{at}.status"),
                "business-rule",
                format!(
                    "an INS may only be sent for a qualified identity (QUAL), not '{s}': qualify the identity \
                     (INSi and identity document) first"
                ),
            ))
        }
    });
    let status = f.take(status);
    let birth_name = f.take(need(&id.birth_name, &format!("{at}.birth_name"), "the birth name"));
    let first_names = f.take(need(
        &id.first_names,
        &format!("{at}.first_names"),
        "the first names of the birth certificate",
    ));
    let birth_date = f.take(
        need(&id.birth_date, &format!("{at}.birth_date"), "the birth date").and_then(|d| {
            match When::parse(d, &format!("{at}.birth_date"))? {
                When::Date(d) => Ok(When::Date(d).fhir()),
                When::DateTime(_) => Err(Problem::new(
                    format!("{at}.birth_date"),
                    "value",
                    "the birth date is a date, without time",
                )),
            }
        }),
    );
    let sex = f.take(need(&id.sex, &format!("{at}.sex"), "the sex (F or M)").and_then(|s| {
        match s.to_ascii_uppercase().as_str() {
            "F" => Ok("female"),
            "M" => Ok("male"),
            _ => Err(Problem::new(
                format!("{at}.sex"),
                "code-invalid",
                format!("'{s}' is not a sex of the INS traits (F or M)"),
            )),
        }
    }));
    let birth_place = f.take(
        need(
            &id.birth_place,
            &format!("{at}.birth_place"),
            "the INSEE code of the birth place",
        )
        .and_then(|c| commune(c, &format!("{at}.birth_place"), true)),
    );
    let address = match &input.address {
        None => Some(None),
        Some(a) => match a.insee.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            None => Some(Some((a, None))),
            Some(c) => f
                .take(commune(c, "$.patient.address.insee", false))
                .map(|c| Some((a, Some(c)))),
        },
    };
    let (ins, (), birth_name, first_names, birth_date, sex, birth_place, address) = (
        ins?,
        status?,
        birth_name?,
        first_names?,
        birth_date?,
        sex?,
        birth_place?,
        address?,
    );
    let first_name = id
        .first_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .or_else(|| first_names.split_whitespace().next())
        .unwrap_or(first_names);
    let mut patient = json!({
        "resourceType": "Patient",
        "meta": {"profile": [super::common::profile("apa-patient-ins")]},
        "extension": [
            {
                "url": system::IDENTITY_RELIABILITY,
                "extension": [{"url": "identityStatus", "valueCoding": {"system": system::IDENTITY_STATUS[0], "code": "QUAL"}}],
            },
            {
                "url": crate::apa::traits::BIRTH_PLACE,
                "valueAddress": {"extension": [insee(&birth_place)]},
            },
        ],
        "identifier": [{
            "use": if ins.kind() == crate::apa::identity::InsKind::Nia { "temp" } else { "official" },
            "type": {"coding": [{"system": system::IDENTIFIER_TYPE, "code": ins.kind().slice()}]},
            "system": ins.system(),
            "value": ins.number().as_str(),
        }],
        "name": [{
            "extension": [{
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-birth-list-given-name",
                "valueString": first_names,
            }],
            "use": "official",
            "family": birth_name,
            "given": [first_name],
        }],
        "gender": sex,
        "birthDate": birth_date,
    });
    if let Some((a, code)) = address {
        let mut addr = json!({"use": "home", "country": "FRA"});
        if let Some(code) = code {
            addr["extension"] = json!([insee(&code)]);
        }
        let lines: Vec<&str> = a
            .lines
            .iter()
            .flatten()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        if !lines.is_empty() {
            addr["line"] = json!(lines);
        }
        for (key, v) in [("postalCode", &a.postal_code), ("city", &a.city)] {
            if let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                addr[key] = json!(v);
            }
        }
        patient["address"] = json!([addr]);
    }
    Some(patient)
}
