//! The patient's say on who receives their data: one decision function,
//! [`decide`], for every cross-organisation read (through the grants of
//! `compartment`) and every outbound path (the DMP).
//!
//! A Consent states it with provisions whose actors name a kind of
//! recipient — `actor.role` coded in [`RECIPIENT_KIND`] (`DMP`, `CPTS`,
//! `MSS`) — and, to aim at one organisation only, `actor.reference` to it
//! (a reference with just a `display` stands for every recipient of the
//! kind). Nested provisions are exceptions to their parent, the deepest
//! matching one decides; across the patient's active Consents a denial
//! wins. Without any statement, sharing within the care pathway is
//! permitted (the patient's opposition has to be expressed, as for DMP
//! feeding, L.1111-15 CSP).

use serde_json::Value;

use crate::fhir::resource::codes;
use crate::fhir::search::values::date_range;

/// The CodeSystem of recipient kinds (`actor.role` of a Consent provision,
/// `type` of an Organization).
pub const RECIPIENT_KIND: &str = "https://apa-gateway.fr/fhir/CodeSystem/recipient-kind";

/// Who would receive a patient's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The national shared medical record (Mon espace santé).
    Dmp,
    /// A territorial community of health professionals.
    Cpts,
    /// A Maison Sport-Santé.
    Mss,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Dmp => "DMP",
            Kind::Cpts => "CPTS",
            Kind::Mss => "MSS",
        }
    }

    pub fn from_code(code: &str) -> Option<Kind> {
        match code {
            "DMP" => Some(Kind::Dmp),
            "CPTS" => Some(Kind::Cpts),
            "MSS" => Some(Kind::Mss),
            _ => None,
        }
    }

    /// The kind an Organization declares in `type`, if any.
    pub fn of_organization(org: &Value) -> Option<Kind> {
        codes(org.get("type"), RECIPIENT_KIND).find_map(Kind::from_code)
    }
}

/// A recipient: a kind, and the organisation itself when known
/// (`Organization/<id>`).
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub kind: Option<Kind>,
    pub organization: Option<&'a str>,
}

impl Recipient<'_> {
    pub const DMP: Recipient<'static> = Recipient {
        kind: Some(Kind::Dmp),
        organization: None,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Permit,
    Deny,
}

/// May data of the patient whose Consents these are go to `recipient`, at
/// `now` (µs since the epoch)? Consents of other patients must not be
/// passed in.
pub fn decide(consents: &[Value], recipient: Recipient<'_>, now: i64) -> Decision {
    let denied = consents
        .iter()
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("active"))
        .filter_map(|c| c.get("provision"))
        .any(|p| provision(p, recipient, now, None) == Some(Decision::Deny));
    if denied { Decision::Deny } else { Decision::Permit }
}

/// What a provision (and its exceptions) says of `recipient`, `None` when
/// it says nothing. `inherited` is the type of the enclosing provision.
fn provision(p: &Value, recipient: Recipient<'_>, now: i64, inherited: Option<Decision>) -> Option<Decision> {
    if !in_period(p.get("period"), now) {
        return None;
    }
    let own = match p.get("type").and_then(Value::as_str) {
        Some("deny") => Some(Decision::Deny),
        Some("permit") => Some(Decision::Permit),
        _ => inherited,
    };
    let applies = match p.get("actor").and_then(Value::as_array) {
        None => true,
        Some(actors) => actors.iter().any(|a| actor_matches(a, recipient)),
    };
    if !applies {
        return None;
    }
    let exception = p
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|child| provision(child, recipient, now, own))
        .reduce(|a, b| {
            if a == Decision::Deny || b == Decision::Deny {
                Decision::Deny
            } else {
                a
            }
        });
    exception.or(own)
}

fn actor_matches(actor: &Value, recipient: Recipient<'_>) -> bool {
    let kind_matches = codes(actor.get("role"), RECIPIENT_KIND)
        .filter_map(Kind::from_code)
        .any(|k| Some(k) == recipient.kind);
    if !kind_matches {
        return false;
    }
    match actor
        .get("reference")
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
    {
        // Every recipient of the kind.
        None => true,
        Some(r) => recipient
            .organization
            .is_some_and(|org| r == org || r.ends_with(&format!("/{org}"))),
    }
}

fn in_period(period: Option<&Value>, now: i64) -> bool {
    let Some(period) = period else { return true };
    let starts = period
        .get("start")
        .and_then(Value::as_str)
        .and_then(date_range)
        .is_none_or(|r| r.lo <= now);
    let ends = period
        .get("end")
        .and_then(Value::as_str)
        .and_then(date_range)
        .is_none_or(|r| now <= r.hi);
    starts && ends
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_790_000_000_000_000; // 2026-09

    fn role(kind: &str) -> Value {
        json!({"coding": [{"system": RECIPIENT_KIND, "code": kind}]})
    }

    fn consent(provision: Value) -> Value {
        json!({"resourceType": "Consent", "status": "active", "patient": {"reference": "Patient/p1"},
               "provision": provision})
    }

    fn cpts(org: &str) -> Recipient<'_> {
        Recipient {
            kind: Some(Kind::Cpts),
            organization: Some(org),
        }
    }

    #[test]
    fn without_a_statement_sharing_is_permitted() {
        assert_eq!(decide(&[], Recipient::DMP, NOW), Decision::Permit);
    }

    #[test]
    fn an_opposition_to_dmp_feeding_blocks_the_dmp_only() {
        let c = consent(json!({"type": "deny", "actor": [{"role": role("DMP"), "reference": {"display": "DMP"}}]}));
        assert_eq!(decide(std::slice::from_ref(&c), Recipient::DMP, NOW), Decision::Deny);
        assert_eq!(decide(&[c], cpts("Organization/cpts-1"), NOW), Decision::Permit);
    }

    #[test]
    fn a_denial_to_every_cpts_but_one() {
        let c = consent(
            json!({"type": "deny", "actor": [{"role": role("CPTS"), "reference": {"display": "toute CPTS"}}],
            "provision": [{"type": "permit",
                           "actor": [{"role": role("CPTS"), "reference": {"reference": "Organization/cpts-ouest"}}]}]}),
        );
        let cs = [c];
        assert_eq!(decide(&cs, cpts("Organization/cpts-est"), NOW), Decision::Deny);
        assert_eq!(decide(&cs, cpts("Organization/cpts-ouest"), NOW), Decision::Permit);
    }

    #[test]
    fn a_withdrawn_or_expired_consent_says_nothing() {
        let deny = json!({"type": "deny", "actor": [{"role": role("MSS"), "reference": {"display": "toute MSS"}}]});
        let mss = Recipient {
            kind: Some(Kind::Mss),
            organization: Some("Organization/mss-b"),
        };
        let mut inactive = consent(deny.clone());
        inactive["status"] = json!("inactive");
        assert_eq!(decide(&[inactive], mss, NOW), Decision::Permit);
        let mut expired = deny;
        expired["period"] = json!({"start": "2024-01-01", "end": "2025-12-31"});
        assert_eq!(decide(&[consent(expired)], mss, NOW), Decision::Permit);
    }

    #[test]
    fn a_denial_aimed_at_one_organisation_spares_the_others() {
        let c = consent(json!({"type": "deny",
            "actor": [{"role": role("MSS"), "reference": {"reference": "Organization/mss-b"}}]}));
        let to = |org| Recipient {
            kind: Some(Kind::Mss),
            organization: Some(org),
        };
        let cs = [c];
        assert_eq!(decide(&cs, to("Organization/mss-b"), NOW), Decision::Deny);
        assert_eq!(decide(&cs, to("Organization/mss-a"), NOW), Decision::Permit);
    }

    #[test]
    fn the_kind_of_an_organisation() {
        let org = json!({"resourceType": "Organization", "type": [role("CPTS")]});
        assert_eq!(Kind::of_organization(&org), Some(Kind::Cpts));
        assert_eq!(Kind::of_organization(&json!({"resourceType": "Organization"})), None);
    }
}
