//! French national identifiers (NIR/INS, RPPS, ADELI, idNatPs, SIREN, SIRET,
//! FINESS, idNatSt) as types that can only hold a value whose format and check
//! key were verified, the FR Core identifier systems, the rule that an INS
//! travels only with a qualified identity, and a checker that turns the
//! identifiers of a Patient / Practitioner / Organization into
//! OperationOutcome issues with FHIRPath locations.
//!
//! Error messages never repeat the expected key: a client told "the key should
//! be 82" would fix the key instead of the mistyped digit, and the wrong number
//! would then pass every later check.

use std::fmt;

use serde_json::Value;

use crate::fhir::error::{Issue, Severity};

/// Identifier systems and FR Core URLs (checked against the FR Core FSH
/// sources: `FRCorePatientINSProfile`, `FRCorePractitionerProfile`,
/// `FRCoreOrganizationProfile`, `FRCorePatientIdentityReliabilityExtension`).
pub mod system {
    /// INS built on a NIR (real patients).
    pub const INS_NIR: &str = "urn:oid:1.2.250.1.213.1.4.8";
    /// INS built on a NIA (numéro identifiant d'attente), `use` = temp.
    pub const INS_NIA: &str = "urn:oid:1.2.250.1.213.1.4.9";
    /// INS of fictitious test patients.
    pub const INS_NIR_TEST: &str = "urn:oid:1.2.250.1.213.1.4.10";
    /// INS of fictitious demonstration patients.
    pub const INS_NIR_DEMO: &str = "urn:oid:1.2.250.1.213.1.4.11";
    pub const ID_NAT_PS: &str = "urn:oid:1.2.250.1.71.4.2.1";
    pub const RPPS: &str = "https://rpps.esante.gouv.fr";
    pub const ID_NAT_ST: &str = "urn:oid:1.2.250.1.71.4.2.2";
    /// SIREN and SIRET share this system; the type (or the length) tells them apart.
    pub const SIRENE: &str = "https://sirene.fr";
    /// Spelling used by FR Core before 2.0 and still by the ROR.
    pub const SIRENE_LEGACY: &str = "http://sirene.fr";
    pub const FINESS: &str = "https://finess.esante.gouv.fr";
    /// Spelling used by FR Core before 2.0.
    pub const FINESS_LEGACY: &str = "http://finess.sante.gouv.fr";
    pub const ADELI_RANG: &str = "https://adelirang.esante.gouv.fr";
    pub const RPPS_RANG: &str = "https://rppsrang.esante.gouv.fr";
    /// CodeSystem of `Identifier.type` codes (SIREN, SIRET, FINEJ, FINEG, RPPS, IDNPS, IDNST, INS-NIR…).
    pub const IDENTIFIER_TYPE: &str = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203";
    pub const IDENTITY_RELIABILITY: &str =
        "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability";
    /// CodeSystems whose `QUAL` means "identité qualifiée": the current FR Core
    /// one and the v2-0445-based one of earlier FR Core releases.
    pub const IDENTITY_STATUS: [&str; 2] = [
        "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-identity-status",
        "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
    ];
}

/// Which identifier an error is about (the wording of the messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Nir,
    Rpps,
    Adeli,
    IdNatPs,
    Siren,
    Siret,
    Finess,
    IdNatSt,
    AdeliRang,
    RppsRang,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Nir => "NIR (INS)",
            IdKind::Rpps => "RPPS number",
            IdKind::Adeli => "ADELI number",
            IdKind::IdNatPs => "idNatPs",
            IdKind::Siren => "SIREN",
            IdKind::Siret => "SIRET",
            IdKind::Finess => "FINESS number",
            IdKind::IdNatSt => "idNatSt",
            IdKind::AdeliRang => "ADELI rang",
            IdKind::RppsRang => "RPPS rang",
        })
    }
}

/// What is wrong with an identifier value, precise enough to be quoted in an
/// OperationOutcome. Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: IdKind },
    #[error("{kind} must have {expected} characters, not {found}")]
    Length {
        kind: IdKind,
        expected: &'static str,
        found: usize,
    },
    #[error("{kind}: character {position} ('{found}') must be a digit")]
    NotDigit { kind: IdKind, position: usize, found: char },
    #[error("NIR (INS): the first character gives the sex and must be 1, 2, 3, 4, 7 or 8, not '{found}'")]
    NirSex { found: char },
    #[error("{kind}: characters {position}–{} ('{found}') must be a département number or 2A/2B (Corsica, upper case)", position + 1)]
    Departement {
        kind: IdKind,
        position: usize,
        found: String,
    },
    #[error("{kind}: the key (last two digits) must be between 01 and 97, not {found}")]
    NirKeyRange { kind: IdKind, found: String },
    #[error("{kind}: the {rule} check fails: a digit or the key was mistyped")]
    Key { kind: IdKind, rule: &'static str },
    #[error("{kind}: unknown prefix '{found}' (expected {expected})")]
    Prefix {
        kind: IdKind,
        found: String,
        expected: &'static str,
    },
    #[error("{kind} with prefix {prefix} must be the structure identifier, '/', then the local registration number")]
    MissingLocalPart { kind: IdKind, prefix: char },
    #[error("{kind}: after prefix {prefix}, {source}")]
    Inner {
        kind: IdKind,
        prefix: char,
        source: Box<IdError>,
    },
}

impl IdError {
    /// The OperationOutcome issue for this error at `expression`.
    pub fn to_issue(&self, expression: impl Into<String>) -> Issue {
        value_issue(Severity::Error, self.to_string(), expression.into())
    }

    /// The check key (not the format) is what failed: callers may tolerate
    /// this for identifiers whose key rule is not normative (RPPS).
    pub fn is_key_mismatch(&self) -> bool {
        match self {
            IdError::Key { .. } => true,
            IdError::Inner { source, .. } => source.is_key_mismatch(),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Shared checks

fn expect_len(kind: IdKind, s: &str, expected: usize, label: &'static str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let found = s.chars().count();
    if found != expected {
        return Err(IdError::Length {
            kind,
            expected: label,
            found,
        });
    }
    Ok(())
}

/// Every character from `from` (0-based) on is an ASCII digit.
fn expect_digits(kind: IdKind, s: &str, from: usize) -> Result<(), IdError> {
    match s.chars().enumerate().skip(from).find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, c)) => Err(IdError::NotDigit {
            kind,
            position: i + 1,
            found: c,
        }),
        None => Ok(()),
    }
}

/// Luhn (mod 10) over ASCII digits, the last one being the check digit.
fn luhn_ok(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn luhn(kind: IdKind, digits: &str) -> Result<(), IdError> {
    if luhn_ok(digits) {
        Ok(())
    } else {
        Err(IdError::Key { kind, rule: "Luhn" })
    }
}

/// Two characters at `at` (0-based) are digits or the Corsican 2A/2B.
fn departement(kind: IdKind, s: &str, at: usize) -> Result<bool, IdError> {
    let pair: String = s.chars().skip(at).take(2).collect();
    if pair == "2A" || pair == "2B" {
        return Ok(true);
    }
    if pair.chars().all(|c| c.is_ascii_digit()) {
        return Ok(false);
    }
    Err(IdError::Departement {
        kind,
        position: at + 1,
        found: pair,
    })
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

/// Removes the separators people type or print inside numbers (spaces,
/// non-breaking spaces, dots, hyphens). For the flat API and CSV import only:
/// a FHIR `Identifier.value` is checked as sent.
pub fn compact(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '\u{a0}' | '\u{202f}' | '.' | '-'))
        .collect()
}

// ---------------------------------------------------------------------------
// NIR / INS

/// A NIR (or NIA, which is built the same way), 13 characters and a 2-digit
/// key: sex (1/2, 3/4 and 7/8 for special and provisional registrations), year,
/// month, département (2A/2B for Corsica), commune, order number, key =
/// 97 − (number mod 97) with 2A read as 19 and 2B as 18.
///
/// The month and the département are not checked against calendars or
/// geography: civil records use months 20–42 and 50+ for incomplete dates,
/// people born abroad have 99, overseas départements use 3 digits, and those
/// born in Corsica before 1976 have 20.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nir(String);
string_newtype!(Nir);

impl Nir {
    pub fn parse(s: &str) -> Result<Nir, IdError> {
        let kind = IdKind::Nir;
        expect_len(kind, s, 15, "15 (13 and a 2-digit key)")?;
        let first = s.chars().next().unwrap_or('?');
        if !first.is_ascii_digit() {
            return Err(IdError::NotDigit {
                kind,
                position: 1,
                found: first,
            });
        }
        if !matches!(first, '1' | '2' | '3' | '4' | '7' | '8') {
            return Err(IdError::NirSex { found: first });
        }
        // Characters 2–5 and 8–15 are digits; 6–7 the département.
        if let Some((i, c)) = s
            .chars()
            .enumerate()
            .find(|&(i, c)| !(5..7).contains(&i) && !c.is_ascii_digit())
        {
            return Err(IdError::NotDigit {
                kind,
                position: i + 1,
                found: c,
            });
        }
        departement(kind, s, 5)?;
        // All ASCII from here on: byte slicing is safe.
        let key: u64 = s[13..].parse().map_err(|_| IdError::NirKeyRange {
            kind,
            found: s[13..].to_string(),
        })?;
        if !(1..=97).contains(&key) {
            return Err(IdError::NirKeyRange {
                kind,
                found: s[13..].to_string(),
            });
        }
        if u64::from(nir_key(&s[..13])?) != key {
            return Err(IdError::Key {
                kind,
                rule: "97 − (NIR mod 97)",
            });
        }
        Ok(Nir(s.to_string()))
    }

    /// The sex digit (1, 2, 3, 4, 7 or 8).
    pub fn sex_digit(&self) -> char {
        self.0.chars().next().unwrap_or('?')
    }

    /// Born in Corsica after 1976 (département 2A or 2B).
    pub fn is_corsican(&self) -> bool {
        matches!(&self.0[5..7], "2A" | "2B")
    }
}

/// The key of the 13 first characters of a NIR: 97 − (n mod 97), where the
/// Corsican 2A counts as 19 and 2B as 18 (python-stdnum `fr.nir`, comptavoo,
/// and the worked example 1891275125012 → 82 agree).
pub fn nir_key(first13: &str) -> Result<u8, IdError> {
    let kind = IdKind::Nir;
    expect_len(kind, first13, 13, "13")?;
    if let Some((i, c)) = first13
        .chars()
        .enumerate()
        .find(|&(i, c)| !(5..7).contains(&i) && !c.is_ascii_digit())
    {
        return Err(IdError::NotDigit {
            kind,
            position: i + 1,
            found: c,
        });
    }
    // After this, every character is ASCII: byte slicing is safe.
    let corsica = departement(kind, first13, 5)?;
    let numeric: String = if corsica {
        let replacement = if &first13[5..7] == "2A" { "19" } else { "18" };
        format!("{}{}{}", &first13[..5], replacement, &first13[7..])
    } else {
        first13.to_string()
    };
    let n: u64 = numeric.parse().map_err(|_| IdError::NotDigit {
        kind,
        position: 1,
        found: '?',
    })?;
    // 97 − r is in 1..=97 and fits a u8.
    Ok((97 - n % 97) as u8)
}

/// The four INS identifier slices of `fr-core-patient-ins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InsKind {
    Nir,
    Nia,
    Test,
    Demo,
}

impl InsKind {
    pub const ALL: [InsKind; 4] = [InsKind::Nir, InsKind::Nia, InsKind::Test, InsKind::Demo];

    pub fn system(self) -> &'static str {
        match self {
            InsKind::Nir => system::INS_NIR,
            InsKind::Nia => system::INS_NIA,
            InsKind::Test => system::INS_NIR_TEST,
            InsKind::Demo => system::INS_NIR_DEMO,
        }
    }

    pub fn from_system(system: &str) -> Option<InsKind> {
        InsKind::ALL.into_iter().find(|k| k.system() == system)
    }

    /// The FR Core slice name, also the `Identifier.type` code.
    pub fn slice(self) -> &'static str {
        match self {
            InsKind::Nir => "INS-NIR",
            InsKind::Nia => "INS-NIA",
            InsKind::Test => "INS-NIR-TEST",
            InsKind::Demo => "INS-NIR-DEMO",
        }
    }
}

/// An INS matricule: the identifier system it belongs to and its number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ins {
    kind: InsKind,
    number: Nir,
}

impl Ins {
    pub fn new(kind: InsKind, value: &str) -> Result<Ins, IdError> {
        Ok(Ins {
            kind,
            number: Nir::parse(value)?,
        })
    }
    pub fn kind(&self) -> InsKind {
        self.kind
    }
    pub fn number(&self) -> &Nir {
        &self.number
    }
    pub fn system(&self) -> &'static str {
        self.kind.system()
    }
}

// ---------------------------------------------------------------------------
// Professionals

/// An RPPS number: 11 digits, the last a Luhn check digit. ANS publishes no
/// normative text for the key; Luhn holds for every RPPS we could find
/// (including the ANS test card 99700218896), hence `IdentityPolicy` lets
/// the deployment downgrade a key mismatch to a warning.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rpps(String);
string_newtype!(Rpps);

impl Rpps {
    pub fn parse(s: &str) -> Result<Rpps, IdError> {
        let kind = IdKind::Rpps;
        expect_len(kind, s, 11, "11")?;
        expect_digits(kind, s, 0)?;
        luhn(kind, s)?;
        Ok(Rpps(s.to_string()))
    }
}

/// An ADELI number: 9 characters, the département first (2A/2B allowed).
/// Decommissioned for new registrations; no public key rule, so only the
/// format is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Adeli(String);
string_newtype!(Adeli);

impl Adeli {
    pub fn parse(s: &str) -> Result<Adeli, IdError> {
        let kind = IdKind::Adeli;
        expect_len(kind, s, 9, "9")?;
        departement(kind, s, 0)?;
        expect_digits(kind, s, 2)?;
        Ok(Adeli(s.to_string()))
    }
}

/// What an idNatPs designates (TRE_G08-TypeIdentifiantPersonne prefixes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PsHolder {
    /// `8` + RPPS.
    Rpps(Rpps),
    /// `0` + ADELI.
    Adeli(Adeli),
    /// Staff registered by their structure: `1` ADELI cabinet, `3` FINESS,
    /// `4` SIREN, `5` SIRET, `6` RPPS cabinet, then `/` and a local number.
    Staff { prefix: char },
}

/// The national identifier of a professional (`urn:oid:1.2.250.1.71.4.2.1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdNatPs {
    value: String,
    holder: PsHolder,
}

/// The one-character prefix of a national identifier, and the rest.
fn split_prefix(kind: IdKind, s: &str) -> Result<(char, &str), IdError> {
    let mut chars = s.chars();
    let prefix = chars.next().ok_or(IdError::Empty { kind })?;
    Ok((prefix, chars.as_str()))
}

/// An error in the part after the prefix, reported as such.
fn inner_error(kind: IdKind, prefix: char, source: IdError) -> IdError {
    IdError::Inner {
        kind,
        prefix,
        source: Box::new(source),
    }
}

impl IdNatPs {
    pub fn parse(s: &str) -> Result<IdNatPs, IdError> {
        let kind = IdKind::IdNatPs;
        let (prefix, rest) = split_prefix(kind, s)?;
        let inner = |source| inner_error(kind, prefix, source);
        let holder = match prefix {
            '8' => PsHolder::Rpps(Rpps::parse(rest).map_err(inner)?),
            '0' => PsHolder::Adeli(Adeli::parse(rest).map_err(inner)?),
            '1' | '3' | '4' | '5' | '6' => {
                let (structure, _local) = rest
                    .split_once('/')
                    .filter(|(_, local)| !local.is_empty() && !local.chars().any(char::is_whitespace))
                    .ok_or(IdError::MissingLocalPart { kind, prefix })?;
                match prefix {
                    '1' => Adeli::parse(structure).map(drop),
                    '3' => Finess::parse(structure).map(drop),
                    '4' => Siren::parse(structure).map(drop),
                    '5' => Siret::parse(structure).map(drop),
                    _ => structure_technical_id(IdKind::RppsRang, structure),
                }
                .map_err(inner)?;
                PsHolder::Staff { prefix }
            }
            _ => {
                return Err(IdError::Prefix {
                    kind,
                    found: prefix.to_string(),
                    expected: "8 (RPPS), 0 (ADELI), or 1, 3, 4, 5, 6 (staff of a structure)",
                });
            }
        };
        Ok(IdNatPs {
            value: s.to_string(),
            holder,
        })
    }

    /// `8` + the RPPS number: what Pro Santé Connect and the CPS card carry.
    pub fn from_rpps(rpps: &Rpps) -> IdNatPs {
        IdNatPs {
            value: format!("8{rpps}"),
            holder: PsHolder::Rpps(rpps.clone()),
        }
    }

    pub fn holder(&self) -> &PsHolder {
        &self.holder
    }

    pub fn rpps(&self) -> Option<&Rpps> {
        match &self.holder {
            PsHolder::Rpps(r) => Some(r),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for IdNatPs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// A cabinet or technical structure identifier whose key rule is unknown:
/// non-empty ASCII digits.
fn structure_technical_id(kind: IdKind, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    expect_digits(kind, s, 0)
}

// ---------------------------------------------------------------------------
// Structures

/// A SIREN: 9 digits, Luhn.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Siren(String);
string_newtype!(Siren);

impl Siren {
    pub fn parse(s: &str) -> Result<Siren, IdError> {
        let kind = IdKind::Siren;
        expect_len(kind, s, 9, "9")?;
        expect_digits(kind, s, 0)?;
        luhn(kind, s)?;
        Ok(Siren(s.to_string()))
    }
}

/// La Poste: all its establishments share one SIREN and their SIRETs use a
/// digit sum divisible by 5 instead of Luhn, except the head office.
const LA_POSTE_SIREN: &str = "356000000";
const LA_POSTE_HEAD_OFFICE: &str = "35600000000048";

/// A SIRET: the SIREN (9 digits, Luhn) and a 5-digit NIC; Luhn over the 14
/// digits, except La Poste (SIREN 356000000, head office aside) whose digit
/// sum must be a multiple of 5 (INSEE rule, as implemented by python-stdnum
/// and INSEE's own `validinsee`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Siret(String);
string_newtype!(Siret);

impl Siret {
    pub fn parse(s: &str) -> Result<Siret, IdError> {
        let kind = IdKind::Siret;
        expect_len(kind, s, 14, "14")?;
        expect_digits(kind, s, 0)?;
        if s.starts_with(LA_POSTE_SIREN) && s != LA_POSTE_HEAD_OFFICE {
            let sum: u32 = s.bytes().map(|b| u32::from(b - b'0')).sum();
            if !sum.is_multiple_of(5) {
                return Err(IdError::Key {
                    kind,
                    rule: "La Poste (digit sum multiple of 5)",
                });
            }
        } else {
            luhn(kind, s)?;
        }
        Siren::parse(&s[..9]).map_err(|source| match source {
            IdError::Key { .. } => IdError::Key {
                kind,
                rule: "Luhn (on its first 9 digits, the SIREN)",
            },
            other => other,
        })?;
        Ok(Siret(s.to_string()))
    }

    pub fn siren(&self) -> Siren {
        Siren(self.0[..9].to_string())
    }
}

/// A FINESS number (EJ or EG): 9 characters, the département first. With a
/// numeric département the last digit is a Luhn key (every real FINESS we
/// tried passes: AP-HP 750712184, HCL 690781810, CHU de Bordeaux 330781196,
/// La Réunion 970421038…). Corsican numbers start with 2A/2B and no source
/// says how the letter enters the key, so theirs is not checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finess(String);
string_newtype!(Finess);

impl Finess {
    pub fn parse(s: &str) -> Result<Finess, IdError> {
        let kind = IdKind::Finess;
        expect_len(kind, s, 9, "9")?;
        let corsica = departement(kind, s, 0)?;
        expect_digits(kind, s, 2)?;
        if !corsica {
            luhn(kind, s)?;
        }
        Ok(Finess(s.to_string()))
    }

    /// False for Corsican numbers, whose key is not verified.
    pub fn key_verified(&self) -> bool {
        !matches!(&self.0[..2], "2A" | "2B")
    }
}

/// What an idNatSt designates (TRE_G07-TypeIdentifiantStructure prefixes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StructureId {
    /// `0` + ADELI cabinet / rang.
    AdeliCabinet(String),
    /// `1` + FINESS.
    Finess(Finess),
    /// `2` + SIREN.
    Siren(Siren),
    /// `3` + SIRET (the usual case for a Maison Sport-Santé association).
    Siret(Siret),
    /// `4` + RPPS cabinet / rang or technical identifier.
    RppsCabinet(String),
}

/// The national identifier of a structure (`urn:oid:1.2.250.1.71.4.2.2`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdNatSt {
    value: String,
    structure: StructureId,
}

impl IdNatSt {
    pub fn parse(s: &str) -> Result<IdNatSt, IdError> {
        let kind = IdKind::IdNatSt;
        let (prefix, rest) = split_prefix(kind, s)?;
        let inner = |source| inner_error(kind, prefix, source);
        let structure = match prefix {
            '0' => {
                structure_technical_id(IdKind::AdeliRang, rest).map_err(inner)?;
                StructureId::AdeliCabinet(rest.to_string())
            }
            '1' => StructureId::Finess(Finess::parse(rest).map_err(inner)?),
            '2' => StructureId::Siren(Siren::parse(rest).map_err(inner)?),
            '3' => StructureId::Siret(Siret::parse(rest).map_err(inner)?),
            '4' => {
                structure_technical_id(IdKind::RppsRang, rest).map_err(inner)?;
                StructureId::RppsCabinet(rest.to_string())
            }
            _ => {
                return Err(IdError::Prefix {
                    kind,
                    found: prefix.to_string(),
                    expected: "0 (ADELI cabinet), 1 (FINESS), 2 (SIREN), 3 (SIRET) or 4 (RPPS cabinet)",
                });
            }
        };
        Ok(IdNatSt {
            value: s.to_string(),
            structure,
        })
    }

    pub fn from_siret(siret: &Siret) -> IdNatSt {
        IdNatSt {
            value: format!("3{siret}"),
            structure: StructureId::Siret(siret.clone()),
        }
    }

    pub fn from_finess(finess: &Finess) -> IdNatSt {
        IdNatSt {
            value: format!("1{finess}"),
            structure: StructureId::Finess(finess.clone()),
        }
    }

    pub fn structure(&self) -> &StructureId {
        &self.structure
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for IdNatSt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

fn fixed_digits(kind: IdKind, s: &str, len: usize, label: &'static str) -> Result<(), IdError> {
    expect_len(kind, s, len, label)?;
    expect_digits(kind, s, 0)
}

// ---------------------------------------------------------------------------
// INS transmission: only for a qualified identity

/// Whether a Patient's INS identifiers may be sent or stored. The RNIV lets
/// an INS circulate only when the identity status is QUAL (INSi call and
/// identity document checked). FR Core's invariant fr-core-1 tests VALI
/// instead; we follow the RNIV.
#[derive(Debug, Clone, Default)]
pub struct InsGate {
    /// Positions in `Patient.identifier` of the INS identifiers.
    pub ins_identifiers: Vec<usize>,
    faults: Vec<Issue>,
}

impl InsGate {
    pub fn has_ins(&self) -> bool {
        !self.ins_identifiers.is_empty()
    }
    /// True when there is no INS, or the identity is qualified.
    pub fn allowed(&self) -> bool {
        self.faults.is_empty()
    }
    pub fn issues(&self) -> &[Issue] {
        &self.faults
    }
    pub fn into_issues(self) -> Vec<Issue> {
        self.faults
    }
}

fn business_rule(diagnostics: String, expression: Vec<String>) -> Issue {
    Issue {
        severity: Severity::Error,
        code: "business-rule",
        diagnostics,
        expression,
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn array_at<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Finds the INS identifiers of a Patient and decides whether they may
/// travel, pointing at the INS identifiers and the status that forbid it.
pub fn ins_gate(patient: &Value) -> InsGate {
    let ins_identifiers: Vec<usize> = array_at(patient, "identifier")
        .iter()
        .enumerate()
        .filter(|(_, id)| str_at(id, "system").and_then(InsKind::from_system).is_some())
        .map(|(i, _)| i)
        .collect();
    if ins_identifiers.is_empty() {
        return InsGate::default();
    }
    let ins_paths: Vec<String> = ins_identifiers
        .iter()
        .map(|i| format!("Patient.identifier[{i}]"))
        .collect();

    // (FHIRPath of the status coding, system, code)
    let mut statuses: Vec<(String, Option<&str>, Option<&str>)> = Vec::new();
    let mut doubtful: Vec<String> = Vec::new();
    for (k, ext) in array_at(patient, "extension").iter().enumerate() {
        if str_at(ext, "url") != Some(system::IDENTITY_RELIABILITY) {
            continue;
        }
        for (j, sub) in array_at(ext, "extension").iter().enumerate() {
            let path = format!("Patient.extension[{k}].extension[{j}]");
            match str_at(sub, "url") {
                Some("identityStatus") => {
                    let coding = sub.get("valueCoding");
                    statuses.push((
                        format!("{path}.valueCoding"),
                        coding.and_then(|c| str_at(c, "system")),
                        coding.and_then(|c| str_at(c, "code")),
                    ));
                }
                Some("comment") => {
                    // CodeableConcept in current FR Core, Coding in earlier releases.
                    let codes = sub
                        .get("valueCodeableConcept")
                        .map(|cc| {
                            array_at(cc, "coding")
                                .iter()
                                .filter_map(|c| str_at(c, "code"))
                                .collect()
                        })
                        .or_else(|| sub.get("valueCoding").and_then(|c| str_at(c, "code")).map(|c| vec![c]))
                        .unwrap_or_default();
                    if codes.iter().any(|c| matches!(*c, "DOUT" | "FICT")) {
                        doubtful.push(path);
                    }
                }
                _ => {}
            }
        }
    }

    let mut faults = Vec::new();
    if statuses.is_empty() {
        faults.push(business_rule(
            "an INS may only be sent for a qualified identity, and this Patient has no identity status \
             (extension fr-core-identity-reliability, identityStatus QUAL)"
                .into(),
            ins_paths.clone(),
        ));
    }
    for (path, system, code) in &statuses {
        let qualified = *code == Some("QUAL") && system.is_some_and(|s| system::IDENTITY_STATUS.contains(&s));
        if qualified {
            continue;
        }
        let diagnostics = match (system, code) {
            (_, Some("QUAL")) => format!(
                "identity status QUAL must use the FR Core identity status CodeSystem ({})",
                system::IDENTITY_STATUS[0]
            ),
            (_, Some(code)) => format!(
                "an INS may only be sent for a qualified identity (status QUAL), not {code}: send the Patient \
                 without its INS identifiers"
            ),
            (_, None) => {
                "the identity status has no code: an INS may only be sent for a qualified identity (QUAL)".to_string()
            }
        };
        let mut expression = vec![path.clone()];
        expression.extend(ins_paths.iter().cloned());
        faults.push(business_rule(diagnostics, expression));
    }
    if !doubtful.is_empty() && faults.is_empty() {
        let mut expression = doubtful;
        expression.extend(ins_paths.iter().cloned());
        faults.push(business_rule(
            "a doubtful or fictitious identity (comment DOUT or FICT) cannot be qualified: its INS may not be sent"
                .into(),
            expression,
        ));
    }
    InsGate {
        ins_identifiers,
        faults,
    }
}

// ---------------------------------------------------------------------------
// Identifier checks of a resource

/// How strictly keys whose algorithm is not normative are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyCheck {
    /// A mismatch is an error: the resource is refused.
    #[default]
    Reject,
    /// A mismatch is a warning: the resource is accepted.
    Warn,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// RPPS Luhn key (also inside an idNatPs `8`+RPPS).
    pub rpps_key: KeyCheck,
}

fn value_issue(severity: Severity, diagnostics: String, expression: String) -> Issue {
    Issue {
        severity,
        code: "value",
        diagnostics,
        expression: vec![expression],
    }
}

/// The `Identifier.type` code from the FR Core identifier-type CodeSystem, if any.
fn fr_type_code(identifier: &Value) -> Option<&str> {
    identifier
        .get("type")
        .map(|t| array_at(t, "coding"))
        .unwrap_or(&[])
        .iter()
        .find(|c| str_at(c, "system") == Some(system::IDENTIFIER_TYPE))
        .and_then(|c| str_at(c, "code"))
}

/// Checks the national identifiers of a Patient, Practitioner or
/// Organization (the other resource types have none of ours and yield
/// nothing): format and key of each value by its system, agreement between
/// idNatPs and RPPS, and for a Patient the INS gate. Identifiers with other
/// systems are left to the profile validation.
pub fn check_identifiers(resource: &Value, policy: IdentityPolicy) -> Vec<Issue> {
    let Some(rt) = str_at(resource, "resourceType") else {
        return Vec::new();
    };
    if !matches!(rt, "Patient" | "Practitioner" | "Organization") {
        return Vec::new();
    }
    let mut issues = Vec::new();
    let mut rpps_values: Vec<(String, String)> = Vec::new(); // (value, path)
    let mut id_nat_ps_rpps: Vec<(String, String)> = Vec::new();
    for (i, identifier) in array_at(resource, "identifier").iter().enumerate() {
        let Some(sys) = str_at(identifier, "system") else {
            continue;
        };
        let path = format!("{rt}.identifier[{i}].value");
        let checked: Option<Result<(), IdError>> = match (rt, sys) {
            ("Patient", s) if InsKind::from_system(s).is_some() => {
                Some(with_value(identifier, |v| Nir::parse(v).map(drop)))
            }
            ("Practitioner", system::RPPS) => Some(with_value(identifier, |v| {
                let r = Rpps::parse(v);
                if r.is_ok() || r.as_ref().is_err_and(IdError::is_key_mismatch) {
                    rpps_values.push((v.to_string(), path.clone()));
                }
                r.map(drop)
            })),
            ("Practitioner", system::ID_NAT_PS) => Some(with_value(identifier, |v| {
                let r = IdNatPs::parse(v);
                if v.starts_with('8') && (r.is_ok() || r.as_ref().is_err_and(IdError::is_key_mismatch)) {
                    id_nat_ps_rpps.push((v[1..].to_string(), path.clone()));
                }
                r.map(drop)
            })),
            ("Organization", system::ID_NAT_ST) => Some(with_value(identifier, |v| IdNatSt::parse(v).map(drop))),
            ("Organization", system::SIRENE | system::SIRENE_LEGACY) => {
                Some(with_value(identifier, |v| sirene(fr_type_code(identifier), v)))
            }
            ("Organization", system::FINESS | system::FINESS_LEGACY) => {
                Some(with_value(identifier, |v| Finess::parse(v).map(drop)))
            }
            ("Organization", system::ADELI_RANG) => Some(with_value(identifier, |v| {
                fixed_digits(IdKind::AdeliRang, v, 11, "11 (9 ADELI and 2 rang)")
            })),
            ("Organization", system::RPPS_RANG) => Some(with_value(identifier, |v| {
                fixed_digits(IdKind::RppsRang, v, 13, "13 (11 RPPS and 2 rang)")
            })),
            _ => None,
        };
        if let Some(Err(e)) = checked {
            let rpps_key = e.is_key_mismatch() && matches!(sys, system::RPPS | system::ID_NAT_PS);
            let severity = if rpps_key && policy.rpps_key == KeyCheck::Warn {
                Severity::Warning
            } else {
                Severity::Error
            };
            issues.push(value_issue(severity, e.to_string(), path));
        }
    }
    for (from_id_nat, id_path) in &id_nat_ps_rpps {
        for (rpps, rpps_path) in &rpps_values {
            if from_id_nat != rpps {
                issues.push(Issue {
                    severity: Severity::Error,
                    code: "business-rule",
                    diagnostics: "the idNatPs (8 + RPPS) and the RPPS identifier name different professionals".into(),
                    expression: vec![id_path.clone(), rpps_path.clone()],
                });
            }
        }
    }
    if rt == "Patient" {
        issues.extend(ins_gate(resource).into_issues());
    }
    issues
}

/// Runs `check` on `Identifier.value`, or reports its absence.
fn with_value(identifier: &Value, check: impl FnOnce(&str) -> Result<(), IdError>) -> Result<(), IdError> {
    match identifier.get("value") {
        Some(Value::String(v)) => check(v),
        // A missing or non-string value is a base/profile validation matter;
        // report it here too so that an identifier is never silently unchecked.
        _ => Err(IdError::Empty {
            kind: kind_for_missing(identifier),
        }),
    }
}

fn kind_for_missing(identifier: &Value) -> IdKind {
    match str_at(identifier, "system") {
        Some(system::RPPS) => IdKind::Rpps,
        Some(system::ID_NAT_PS) => IdKind::IdNatPs,
        Some(system::ID_NAT_ST) => IdKind::IdNatSt,
        Some(system::SIRENE | system::SIRENE_LEGACY) => IdKind::Siret,
        Some(system::FINESS | system::FINESS_LEGACY) => IdKind::Finess,
        Some(system::ADELI_RANG) => IdKind::AdeliRang,
        Some(system::RPPS_RANG) => IdKind::RppsRang,
        _ => IdKind::Nir,
    }
}

/// SIREN or SIRET under the shared sirene.fr system: by type code when
/// there is one, else by length.
fn sirene(type_code: Option<&str>, v: &str) -> Result<(), IdError> {
    match type_code {
        Some("SIREN") => Siren::parse(v).map(drop),
        Some("SIRET") => Siret::parse(v).map(drop),
        _ => match v.chars().count() {
            14 => Siret::parse(v).map(drop),
            9 => Siren::parse(v).map(drop),
            found => Err(IdError::Length {
                kind: IdKind::Siret,
                expected: "9 (SIREN) or 14 (SIRET)",
                found,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    // Keys computed with 97 − (n mod 97) in Python and again with bc;
    // 189127512501282 is mathweb.fr's worked example, the 2A/2B and
    // 295109912611193 ones are python-stdnum's doctests.

    #[test]
    fn nir_with_its_key_is_accepted() {
        for nir in [
            "189127512501282",
            "295109912611193",
            "284057505612387",
            "790019912345677", // provisional registration (7)
            "806049911122232", // provisional registration (8)
            "185077512307697", // key 97 (n divisible by 97)
            "285077512302501", // key 01
        ] {
            let parsed = Nir::parse(nir).unwrap_or_else(|e| panic!("{nir}: {e}"));
            assert_eq!(parsed.as_str(), nir);
        }
    }

    #[test]
    fn corsican_nir_reads_2a_as_19_and_2b_as_18() {
        assert_eq!(nir_key("177122A004015"), Ok(86));
        assert_eq!(nir_key("177122B004015"), Ok(16));
        assert!(Nir::parse("177122A00401586").is_ok());
        assert!(Nir::parse("177122B00401516").is_ok());
        assert!(Nir::parse("253072B07300470").is_ok());
        assert!(Nir::parse("253072A07300443").is_ok());
        assert!(Nir::parse("253072A07300443").is_ok_and(|n| n.is_corsican()));
        // The 2B key does not fit 2A and the other way round.
        assert!(Nir::parse("177122A00401516").is_err_and(|e| e.is_key_mismatch()));
        assert!(Nir::parse("177122B00401586").is_err_and(|e| e.is_key_mismatch()));
        // Born in Corsica before 1976: département 20, an ordinary number.
        assert_eq!(nir_key("2690520123456"), Ok(61));
    }

    #[test]
    fn nir_with_a_wrong_key_names_the_rule_but_not_the_right_key() {
        let e = Nir::parse("189127512501283").unwrap_err();
        assert_eq!(
            e,
            IdError::Key {
                kind: IdKind::Nir,
                rule: "97 − (NIR mod 97)"
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("mistyped"), "{msg}");
        assert!(!msg.contains("82"), "the expected key must not leak: {msg}");
        // One mistyped digit in the body.
        assert!(Nir::parse("189127512601282").is_err_and(|e| e.is_key_mismatch()));
    }

    #[test]
    fn nir_format_errors_say_where() {
        assert_eq!(Nir::parse(""), Err(IdError::Empty { kind: IdKind::Nir }));
        assert_eq!(
            Nir::parse("1891275125012"),
            Err(IdError::Length {
                kind: IdKind::Nir,
                expected: "15 (13 and a 2-digit key)",
                found: 13
            })
        );
        assert!(matches!(
            Nir::parse("1891275125012820"),
            Err(IdError::Length { found: 16, .. })
        ));
        assert_eq!(
            Nir::parse("18912751X501282"),
            Err(IdError::NotDigit {
                kind: IdKind::Nir,
                position: 9,
                found: 'X'
            })
        );
        assert_eq!(Nir::parse("589127512501282"), Err(IdError::NirSex { found: '5' }));
        assert_eq!(Nir::parse("089127512501282"), Err(IdError::NirSex { found: '0' }));
        assert_eq!(
            Nir::parse("177122a00401586"),
            Err(IdError::Departement {
                kind: IdKind::Nir,
                position: 6,
                found: "2a".into()
            })
        );
        assert!(matches!(
            Nir::parse("177122C00401586"),
            Err(IdError::Departement { .. })
        ));
        assert!(matches!(
            Nir::parse("189127512501200"),
            Err(IdError::NirKeyRange { .. })
        ));
        assert!(matches!(
            Nir::parse("189127512501298"),
            Err(IdError::NirKeyRange { .. })
        ));
        // Spaces are the flat API's business (compact), not FHIR's.
        assert!(matches!(
            Nir::parse("1 89 12 75 125 012 82"),
            Err(IdError::Length { .. })
        ));
        assert!(Nir::parse(&compact("1 89 12 75 125 012 82")).is_ok());
        // Non-ASCII input does not panic and is located by character.
        assert!(matches!(
            Nir::parse("1891275125012é2"),
            Err(IdError::NotDigit { position: 14, .. })
        ));
        assert!(nir_key("1é91275125012").is_err());
    }

    #[test]
    fn the_fr_core_ins_example_number_has_a_wrong_key() {
        // FRCorePatientINSExample uses 123456789012244: 97 − (1234567890122 mod 97) is 12.
        assert_eq!(nir_key("1234567890122"), Ok(12));
        assert!(Nir::parse("123456789012244").is_err_and(|e| e.is_key_mismatch()));
    }

    #[test]
    fn ins_kinds_map_to_the_fr_core_systems() {
        assert_eq!(InsKind::from_system("urn:oid:1.2.250.1.213.1.4.8"), Some(InsKind::Nir));
        assert_eq!(InsKind::from_system("urn:oid:1.2.250.1.213.1.4.9"), Some(InsKind::Nia));
        assert_eq!(
            InsKind::from_system("urn:oid:1.2.250.1.213.1.4.10"),
            Some(InsKind::Test)
        );
        assert_eq!(
            InsKind::from_system("urn:oid:1.2.250.1.213.1.4.11"),
            Some(InsKind::Demo)
        );
        assert_eq!(InsKind::from_system("urn:oid:1.2.250.1.213.1.4.2"), None); // INS-C, retired
        let ins = Ins::new(InsKind::Test, "284057505612387").unwrap();
        assert_eq!(ins.system(), "urn:oid:1.2.250.1.213.1.4.10");
        assert_eq!(ins.number().sex_digit(), '2');
        assert_eq!(InsKind::Nia.slice(), "INS-NIA");
    }

    #[test]
    fn rpps_uses_a_luhn_key() {
        assert!(Rpps::parse("99700218896").is_ok()); // ANS test card
        assert!(Rpps::parse("10001234565").is_ok());
        assert_eq!(
            Rpps::parse("99700218897"),
            Err(IdError::Key {
                kind: IdKind::Rpps,
                rule: "Luhn"
            })
        );
        assert!(matches!(
            Rpps::parse("9970021889"),
            Err(IdError::Length { found: 10, .. })
        ));
        assert!(matches!(
            Rpps::parse("9970021889A"),
            Err(IdError::NotDigit { position: 11, .. })
        ));
    }

    #[test]
    fn id_nat_ps_is_a_prefix_and_an_identifier() {
        let ps = IdNatPs::parse("899700218896").unwrap();
        assert_eq!(ps.rpps().map(Rpps::as_str), Some("99700218896"));
        assert_eq!(IdNatPs::from_rpps(&Rpps::parse("99700218896").unwrap()), ps);
        assert!(matches!(
            IdNatPs::parse("0751234567").unwrap().holder(),
            PsHolder::Adeli(_)
        ));
        // EAPA employed by a Maison Sport-Santé: 5 + SIRET + / + local number.
        assert!(matches!(
            IdNatPs::parse("544321098400011/EAPA-07").unwrap().holder(),
            PsHolder::Staff { prefix: '5' }
        ));
        assert!(IdNatPs::parse("3750712184/0042").is_ok());

        let e = IdNatPs::parse("899700218897").unwrap_err();
        assert!(e.is_key_mismatch());
        assert_eq!(
            e.to_string(),
            "idNatPs: after prefix 8, RPPS number: the Luhn check fails: a digit or the key was mistyped"
        );
        assert!(matches!(
            IdNatPs::parse("89970021889"),
            Err(IdError::Inner { prefix: '8', .. })
        ));
        assert!(matches!(
            IdNatPs::parse("544321098400011"),
            Err(IdError::MissingLocalPart { prefix: '5', .. })
        ));
        assert!(matches!(
            IdNatPs::parse("544321098400011/"),
            Err(IdError::MissingLocalPart { .. })
        ));
        assert!(matches!(
            IdNatPs::parse("544321098400012/7"),
            Err(IdError::Inner { prefix: '5', .. })
        ));
        assert!(matches!(IdNatPs::parse("999700218896"), Err(IdError::Prefix { .. })));
        assert_eq!(IdNatPs::parse(""), Err(IdError::Empty { kind: IdKind::IdNatPs }));
    }

    #[test]
    fn siren_and_siret_use_luhn() {
        // INSEE's validinsee examples and python-stdnum's.
        assert!(Siren::parse("200034528").is_ok());
        assert!(Siren::parse("200034582").is_err_and(|e| e.is_key_mismatch()));
        assert!(Siret::parse("20003452800014").is_ok());
        assert!(Siret::parse("20003452800041").is_err_and(|e| e.is_key_mismatch()));
        assert!(Siret::parse("73282932000074").is_ok());
        assert!(Siret::parse("73282932000079").is_err());
        assert_eq!(Siret::parse("44321098400011").unwrap().siren().as_str(), "443210984");
        assert!(matches!(
            Siren::parse("20003452"),
            Err(IdError::Length { found: 8, .. })
        ));
        assert!(matches!(
            Siret::parse("2000345280001O"),
            Err(IdError::NotDigit {
                position: 14,
                found: 'O',
                ..
            })
        ));
    }

    #[test]
    fn siret_whose_siren_part_fails_luhn_is_refused() {
        // SIREN 123456789 fails Luhn; pick the NIC key that makes the 14 digits pass.
        let candidates = (0..10)
            .map(|d| format!("1234567890001{d}"))
            .find(|s| luhn_ok(s))
            .unwrap();
        assert!(!luhn_ok("123456789"));
        let e = Siret::parse(&candidates).unwrap_err();
        assert_eq!(
            e,
            IdError::Key {
                kind: IdKind::Siret,
                rule: "Luhn (on its first 9 digits, the SIREN)"
            }
        );
    }

    #[test]
    fn la_poste_sirets_use_a_digit_sum_multiple_of_5() {
        // Head office: Luhn (its digit sum, 26, is not a multiple of 5).
        assert!(Siret::parse("35600000000048").is_ok());
        // Digit sum 30, fails Luhn: valid for La Poste only.
        assert!(!luhn_ok("35600000012346"));
        assert!(Siret::parse("35600000012346").is_ok());
        // Passes Luhn but digit sum 24: refused.
        assert!(luhn_ok("35600000012340"));
        assert_eq!(
            Siret::parse("35600000012340"),
            Err(IdError::Key {
                kind: IdKind::Siret,
                rule: "La Poste (digit sum multiple of 5)"
            })
        );
        assert!(Siren::parse("356000000").is_ok());
    }

    #[test]
    fn finess_uses_luhn_except_corsica() {
        for f in [
            "750712184",
            "690781810",
            "330781196",
            "970421038",
            "010003820",
            "750000028",
        ] {
            assert!(Finess::parse(f).is_ok_and(|f| f.key_verified()), "{f}");
        }
        assert!(Finess::parse("750712185").is_err_and(|e| e.is_key_mismatch()));
        let corsica = Finess::parse("2A0000123").unwrap();
        assert!(!corsica.key_verified());
        assert!(Finess::parse("2B0000017").is_ok());
        assert!(matches!(
            Finess::parse("2C0000123"),
            Err(IdError::Departement { position: 1, .. })
        ));
        assert!(matches!(
            Finess::parse("2A000012X"),
            Err(IdError::NotDigit { position: 9, .. })
        ));
        assert!(matches!(Finess::parse("75071218"), Err(IdError::Length { .. })));
    }

    #[test]
    fn id_nat_st_prefixes() {
        assert!(matches!(
            IdNatSt::parse("344321098400011").unwrap().structure(),
            StructureId::Siret(_)
        ));
        assert!(matches!(
            IdNatSt::parse("1750712184").unwrap().structure(),
            StructureId::Finess(_)
        ));
        assert!(matches!(
            IdNatSt::parse("2443210984").unwrap().structure(),
            StructureId::Siren(_)
        ));
        assert!(matches!(
            IdNatSt::parse("012345678901").unwrap().structure(),
            StructureId::AdeliCabinet(_)
        ));
        assert!(matches!(
            IdNatSt::parse("41000123456501").unwrap().structure(),
            StructureId::RppsCabinet(_)
        ));
        let siret = Siret::parse("44321098400011").unwrap();
        assert_eq!(IdNatSt::from_siret(&siret).as_str(), "344321098400011");
        assert_eq!(
            IdNatSt::from_finess(&Finess::parse("750712184").unwrap()).as_str(),
            "1750712184"
        );
        assert!(IdNatSt::parse("344321098400012").is_err_and(|e| e.is_key_mismatch()));
        assert!(matches!(IdNatSt::parse("5443210984"), Err(IdError::Prefix { .. })));
        assert!(matches!(IdNatSt::parse("4"), Err(IdError::Inner { prefix: '4', .. })));
    }

    fn qualified_patient(status: &str) -> Value {
        json!({
            "resourceType": "Patient",
            "extension": [
                {"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-birth-place"},
                {
                    "url": system::IDENTITY_RELIABILITY,
                    "extension": [
                        {"url": "methodCollection", "valueCoding": {"code": "INSI"}},
                        {"url": "identityStatus", "valueCoding": {
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-identity-status",
                            "code": status
                        }}
                    ]
                }
            ],
            "identifier": [
                {"system": "http://mss.example/ipp", "value": "IPP-1"},
                {"use": "official", "system": system::INS_NIR_TEST, "value": "284057505612387"}
            ]
        })
    }

    #[test]
    fn ins_travels_with_a_qualified_identity() {
        let patient = qualified_patient("QUAL");
        let gate = ins_gate(&patient);
        assert!(gate.has_ins());
        assert!(gate.allowed());
        assert_eq!(gate.ins_identifiers, vec![1]);
        assert!(check_identifiers(&patient, IdentityPolicy::default()).is_empty());
    }

    #[test]
    fn ins_is_refused_for_an_identity_that_is_only_validated() {
        for status in ["VALI", "PROV", "RECUP"] {
            let gate = ins_gate(&qualified_patient(status));
            assert!(!gate.allowed(), "{status}");
            let issue = &gate.issues()[0];
            assert_eq!(issue.code, "business-rule");
            assert!(issue.diagnostics.contains(status), "{}", issue.diagnostics);
            assert_eq!(
                issue.expression,
                vec![
                    "Patient.extension[1].extension[1].valueCoding".to_string(),
                    "Patient.identifier[1]".to_string()
                ]
            );
        }
    }

    #[test]
    fn ins_without_identity_status_is_refused() {
        let mut patient = qualified_patient("QUAL");
        patient["extension"] = json!([]);
        let gate = ins_gate(&patient);
        assert!(!gate.allowed());
        assert_eq!(gate.issues()[0].expression, vec!["Patient.identifier[1]".to_string()]);
        assert!(gate.issues()[0].diagnostics.contains("no identity status"));
    }

    #[test]
    fn qual_from_an_unknown_code_system_does_not_count() {
        let mut patient = qualified_patient("QUAL");
        patient["extension"][1]["extension"][1]["valueCoding"]["system"] = json!("http://example.org/status");
        assert!(!ins_gate(&patient).allowed());
        patient["extension"][1]["extension"][1]["valueCoding"]["system"] =
            json!("https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445");
        assert!(ins_gate(&patient).allowed());
    }

    #[test]
    fn a_doubtful_identity_cannot_carry_an_ins() {
        let mut patient = qualified_patient("QUAL");
        patient["extension"][1]["extension"]
            .as_array_mut()
            .unwrap()
            .push(json!({"url": "comment", "valueCodeableConcept": {"coding": [{"code": "DOUT"}]}}));
        let gate = ins_gate(&patient);
        assert!(!gate.allowed());
        assert_eq!(gate.issues()[0].expression[0], "Patient.extension[1].extension[2]");
    }

    #[test]
    fn a_patient_without_ins_needs_no_status() {
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "http://mss.example/ipp", "value": "IPP-1"}]
        });
        let gate = ins_gate(&patient);
        assert!(!gate.has_ins());
        assert!(gate.allowed());
        assert!(check_identifiers(&patient, IdentityPolicy::default()).is_empty());
    }

    #[test]
    fn a_wrong_ins_key_is_located_on_the_identifier_value() {
        let mut patient = qualified_patient("QUAL");
        patient["identifier"][1]["value"] = json!("284057505612388");
        let issues = check_identifiers(&patient, IdentityPolicy::default());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].severity, Severity::Error);
        assert_eq!(issues[0].code, "value");
        assert_eq!(issues[0].expression, vec!["Patient.identifier[1].value".to_string()]);
        assert!(
            issues[0]
                .diagnostics
                .starts_with("NIR (INS): the 97 − (NIR mod 97) check fails")
        );
    }

    #[test]
    fn an_ins_identifier_without_value_is_reported() {
        let mut patient = qualified_patient("QUAL");
        patient["identifier"][1].as_object_mut().unwrap().remove("value");
        let issues = check_identifiers(&patient, IdentityPolicy::default());
        assert_eq!(issues[0].expression, vec!["Patient.identifier[1].value".to_string()]);
        assert_eq!(issues[0].diagnostics, "NIR (INS) is empty");
    }

    fn practitioner(id_nat_ps: &str, rpps: &str) -> Value {
        json!({
            "resourceType": "Practitioner",
            "identifier": [
                {"system": system::ID_NAT_PS, "value": id_nat_ps},
                {"system": system::RPPS, "value": rpps}
            ]
        })
    }

    #[test]
    fn practitioner_identifiers_are_checked() {
        let ok = practitioner("899700218896", "99700218896");
        assert!(check_identifiers(&ok, IdentityPolicy::default()).is_empty());

        let issues = check_identifiers(&practitioner("899700218896", "99700218897"), IdentityPolicy::default());
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert_eq!(
            issues[0].expression,
            vec!["Practitioner.identifier[1].value".to_string()]
        );
        assert_eq!(issues[0].severity, Severity::Error);
        assert_eq!(issues[1].code, "business-rule");
    }

    #[test]
    fn rpps_key_mismatch_can_be_downgraded_to_a_warning() {
        let policy = IdentityPolicy {
            rpps_key: KeyCheck::Warn,
        };
        let issues = check_identifiers(&practitioner("899700218897", "99700218897"), policy);
        assert_eq!(issues.len(), 2);
        assert!(issues.iter().all(|i| i.severity == Severity::Warning));
        // Format errors stay errors.
        let issues = check_identifiers(&practitioner("89970021889", "9970021889"), policy);
        assert!(issues.iter().all(|i| i.severity == Severity::Error));
    }

    #[test]
    fn organization_identifiers_are_checked_by_system_and_type() {
        let org = json!({
            "resourceType": "Organization",
            "identifier": [
                {"system": system::ID_NAT_ST, "value": "344321098400011"},
                {"system": system::SIRENE, "type": {"coding": [{"system": system::IDENTIFIER_TYPE, "code": "SIRET"}]},
                 "value": "44321098400011"},
                {"system": system::SIRENE, "value": "443210984"},
                {"system": system::FINESS, "value": "750712184"},
                {"system": "http://finess.sante.gouv.fr", "value": "750712185"},
                {"system": system::SIRENE, "type": {"coding": [{"system": system::IDENTIFIER_TYPE, "code": "SIREN"}]},
                 "value": "44321098400011"},
                {"system": system::SIRENE, "value": "4432109840"},
                {"system": system::RPPS_RANG, "value": "1000123456501"},
                {"system": "http://other.example", "value": "anything"}
            ]
        });
        let issues = check_identifiers(&org, IdentityPolicy::default());
        let located: Vec<(&str, &str)> = issues
            .iter()
            .map(|i| (i.expression[0].as_str(), i.diagnostics.as_str()))
            .collect();
        assert_eq!(
            located,
            vec![
                (
                    "Organization.identifier[4].value",
                    "FINESS number: the Luhn check fails: a digit or the key was mistyped"
                ),
                (
                    "Organization.identifier[5].value",
                    "SIREN must have 9 characters, not 14"
                ),
                (
                    "Organization.identifier[6].value",
                    "SIRET must have 9 (SIREN) or 14 (SIRET) characters, not 10"
                ),
            ]
        );
    }

    #[test]
    fn other_resource_types_are_not_our_business() {
        let obs = json!({"resourceType": "Observation", "identifier": [{"system": system::RPPS, "value": "1"}]});
        assert!(check_identifiers(&obs, IdentityPolicy::default()).is_empty());
        assert!(check_identifiers(&json!({}), IdentityPolicy::default()).is_empty());
    }
}
