//! SMART on FHIR scopes (v2 `system/Observation.rs`, and v1
//! `system/Observation.read`), and what each interaction needs of them.

use std::fmt;

use super::audit::AUDIT_EVENT;

/// One of the SMART v2 permissions: create, read, update, delete, search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn bit(self) -> u8 {
        match self {
            Perm::Create => 1,
            Perm::Read => 2,
            Perm::Update => 4,
            Perm::Delete => 8,
            Perm::Search => 16,
        }
    }

    fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `user` or `system`
    context: String,
    /// A resource type, or `*`.
    resource_type: String,
    perms: u8,
}

/// The scopes granted to a caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    rules: Vec<Rule>,
    /// Scopes that are not about resources (`openid`, `launch`…), kept as given.
    others: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a SMART scope this server understands (e.g. system/Patient.rs, system/*.cruds)")]
pub struct ScopeError(pub String);

fn parse_perms(s: &str) -> Option<u8> {
    match s {
        // SMART v1
        "read" => return Some(Perm::Read.bit() | Perm::Search.bit()),
        "write" => return Some(Perm::Create.bit() | Perm::Update.bit() | Perm::Delete.bit()),
        "*" => return Some(31),
        _ => {}
    }
    // SMART v2: letters in the order c r u d s, each at most once.
    let order = ['c', 'r', 'u', 'd', 's'];
    let mut bits = 0u8;
    let mut last = None;
    for ch in s.chars() {
        let i = order.iter().position(|o| *o == ch)?;
        if last.is_some_and(|l| i <= l) {
            return None;
        }
        last = Some(i);
        bits |= 1 << i;
    }
    (bits != 0).then_some(bits)
}

impl Scopes {
    /// Parses a space-separated scope string.
    pub fn parse(s: &str) -> Result<Scopes, ScopeError> {
        let mut scopes = Scopes::default();
        for item in s.split_whitespace() {
            let Some((context, rest)) = item.split_once('/') else {
                scopes.others.push(item.to_string());
                continue;
            };
            if !matches!(context, "system" | "user" | "patient") {
                return Err(ScopeError(item.to_string()));
            }
            // Query restrictions (`?category=…`) would narrow the scope in a way
            // this server does not enforce: refuse rather than over-grant.
            let (rtype, perms) = rest.split_once('.').ok_or_else(|| ScopeError(item.to_string()))?;
            if perms.contains('?') {
                return Err(ScopeError(item.to_string()));
            }
            let valid_type = rtype == "*" || crate::fhir::search::registry::Registry::r4().is_resource_type(rtype);
            let perms = parse_perms(perms)
                .filter(|_| valid_type)
                .ok_or_else(|| ScopeError(item.to_string()))?;
            scopes.rules.push(Rule {
                context: context.to_string(),
                resource_type: rtype.to_string(),
                perms,
            });
        }
        Ok(scopes)
    }

    /// Every permission on every type (the gateway's own tasks).
    pub fn all() -> Scopes {
        Scopes {
            rules: vec![Rule {
                context: "system".into(),
                resource_type: "*".into(),
                perms: 31,
            }],
            others: vec![super::compartment::OPERATOR_SCOPE.to_string()],
        }
    }

    /// A wildcard (`system/*.rs`) does not cover the audit trail: reading
    /// it takes a scope that names AuditEvent.
    pub fn allows(&self, resource_type: &str, perm: Perm) -> bool {
        self.rules.iter().any(|r| {
            let covers = r.resource_type == resource_type || (r.resource_type == "*" && resource_type != AUDIT_EVENT);
            covers && r.perms & perm.bit() != 0
        })
    }

    /// Does every type carry this permission (system-level search, history)?
    pub fn allows_all_types(&self, perm: Perm) -> bool {
        self.rules
            .iter()
            .any(|r| r.resource_type == "*" && r.perms & perm.bit() != 0)
    }

    pub fn has(&self, other: &str) -> bool {
        self.others.iter().any(|o| o == other)
    }

    /// What of `requested` these (registered) scopes cover: for each pair of
    /// a requested and a registered rule on the same type (or `*`), the
    /// narrower type with the permissions both carry.
    pub fn grant(&self, requested: &Scopes) -> Scopes {
        let mut out = Scopes::default();
        for r in &requested.rules {
            for g in &self.rules {
                let rtype = match (r.resource_type.as_str(), g.resource_type.as_str()) {
                    // A registration must name the audit trail to grant it.
                    (AUDIT_EVENT, "*") => continue,
                    ("*", t) | (t, "*") => t,
                    (a, b) if a == b => a,
                    _ => continue,
                };
                let perms = r.perms & g.perms;
                if perms != 0 {
                    out.rules.push(Rule {
                        context: r.context.clone(),
                        resource_type: rtype.to_string(),
                        perms,
                    });
                }
            }
        }
        out.others = requested.others.iter().filter(|o| self.has(o)).cloned().collect();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.others.is_empty()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for r in &self.rules {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}/{}.", r.context, r.resource_type)?;
            for p in [Perm::Create, Perm::Read, Perm::Update, Perm::Delete, Perm::Search] {
                if r.perms & p.bit() != 0 {
                    write!(f, "{}", p.letter())?;
                }
            }
        }
        for o in &self.others {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(o)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let s = Scopes::parse("system/ServiceRequest.cruds system/Patient.rs system/Observation.read").unwrap();
        assert!(s.allows("ServiceRequest", Perm::Delete));
        assert!(s.allows("Patient", Perm::Search) && !s.allows("Patient", Perm::Update));
        assert!(s.allows("Observation", Perm::Read) && !s.allows("Observation", Perm::Create));
        assert!(!s.allows("Task", Perm::Read));
        let all = Scopes::parse("system/*.rs").unwrap();
        assert!(all.allows("Task", Perm::Read) && all.allows_all_types(Perm::Search));
        assert!(!all.allows("AuditEvent", Perm::Read) && !all.allows("AuditEvent", Perm::Search));
        let audit = Scopes::parse("system/AuditEvent.rs").unwrap();
        assert!(audit.allows("AuditEvent", Perm::Search) && !audit.allows("Patient", Perm::Read));
        assert_eq!(
            s.to_string(),
            "system/ServiceRequest.cruds system/Patient.rs system/Observation.rs"
        );
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for bad in [
            "system/Patient.x",
            "system/Patient.rc",
            "system/Nope.r",
            "other/Patient.r",
            "system/Patient.rs?category=x",
        ] {
            assert!(Scopes::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_grant_never_exceeds_the_registration() {
        let registered = Scopes::parse("system/Patient.rs system/Task.cruds").unwrap();
        let asked = Scopes::parse("system/*.cruds").unwrap();
        assert_eq!(
            registered.grant(&asked).to_string(),
            "system/Patient.rs system/Task.cruds"
        );
        let asked = Scopes::parse("system/Patient.cruds system/Observation.rs").unwrap();
        let g = registered.grant(&asked);
        assert_eq!(g.to_string(), "system/Patient.rs");
        let everything = Scopes::parse("system/*.cruds").unwrap();
        assert!(
            everything
                .grant(&Scopes::parse("system/AuditEvent.rs").unwrap())
                .is_empty()
        );
    }
}
