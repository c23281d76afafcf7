//! The referral Task's state machine (HL7 PA IG `pa-task-for-referral-
//! management`, domain.md §1.6; our profile `apa-referral-task`). Every
//! Task the gateway stores is a referral and follows it.

use serde_json::Value;

use crate::fhir::error::FhirError;
use crate::store::{Method, Write, WriteTx};

use super::episode::Follow;
use super::{Acting, Target, body_of, organisations_of, refuse};

/// The statuses of `profiles/ValueSet-task-status.json` (PA IG
/// pa-task-status: FHIR task-status without `received` and `ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Draft,
    Requested,
    Accepted,
    Rejected,
    Cancelled,
    InProgress,
    OnHold,
    Failed,
    Completed,
    EnteredInError,
}

use TaskStatus::*;

impl TaskStatus {
    pub fn parse(code: &str) -> Option<TaskStatus> {
        Some(match code {
            "draft" => Draft,
            "requested" => Requested,
            "accepted" => Accepted,
            "rejected" => Rejected,
            "cancelled" => Cancelled,
            "in-progress" => InProgress,
            "on-hold" => OnHold,
            "failed" => Failed,
            "completed" => Completed,
            "entered-in-error" => EnteredInError,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            Draft => "draft",
            Requested => "requested",
            Accepted => "accepted",
            Rejected => "rejected",
            Cancelled => "cancelled",
            InProgress => "in-progress",
            OnHold => "on-hold",
            Failed => "failed",
            Completed => "completed",
            EnteredInError => "entered-in-error",
        }
    }

    /// No status follows these (PA IG: rejected, cancelled, failed are
    /// "final"; completed and entered-in-error end a FHIR Task too).
    pub fn is_final(self) -> bool {
        matches!(self, Rejected | Cancelled | Failed | Completed | EnteredInError)
    }

    /// A referral is issued as `requested` (PA IG: "initial status SHALL
    /// be requested"), or prepared as `draft`, which providers ignore.
    pub fn is_initial(self) -> bool {
        matches!(self, Draft | Requested)
    }

    /// PA IG invariant pa-taskrm-1 (our apa-task-1): a reason is given for
    /// these statuses, and only for them.
    pub fn needs_reason(self) -> bool {
        matches!(self, Rejected | OnHold | Cancelled | Failed)
    }
}

/// Who may make a move: the Task's owner (the provider, PA IG "Service
/// Provider"), its requester (the prescriber, "Care Manager"), or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Owner,
    Requester,
    Either,
}

impl Who {
    fn describe(self) -> &'static str {
        match self {
            Who::Owner => "the referral's owner (the provider it is addressed to)",
            Who::Requester => "the referral's requester (the prescriber's organisation)",
            Who::Either => "the referral's owner or requester",
        }
    }
}

/// Every allowed change of status, and who makes it (domain.md §1.6
/// steps 2–9). What is not here is refused; nothing leaves a final status.
pub const TRANSITIONS: &[(TaskStatus, TaskStatus, Who)] = &[
    // A prepared referral is issued, or abandoned.
    (Draft, Requested, Who::Requester),
    (Draft, Cancelled, Who::Requester),
    (Draft, EnteredInError, Who::Requester),
    // 3a/3b: the provider answers.
    (Requested, Accepted, Who::Owner),
    (Requested, Rejected, Who::Owner),
    // 4: the patient attended the first session (optional tracking, so an
    // accepted referral may also end directly).
    (Accepted, InProgress, Who::Owner),
    (Accepted, OnHold, Who::Owner),
    (Accepted, Completed, Who::Owner),
    (Accepted, Failed, Who::Owner),
    // 5, 7, 8: pause and resume, end.
    (InProgress, OnHold, Who::Owner),
    (InProgress, Completed, Who::Owner),
    (InProgress, Failed, Who::Owner),
    (OnHold, InProgress, Who::Owner),
    // "An on-hold Task that will not resume SHALL go to failed."
    (OnHold, Failed, Who::Owner),
    // 6, 9: the prescriber stops the referral, or withdraws one made in
    // error, at any point before it ends.
    (Requested, Cancelled, Who::Requester),
    (Accepted, Cancelled, Who::Requester),
    (InProgress, Cancelled, Who::Requester),
    (OnHold, Cancelled, Who::Requester),
    (Requested, EnteredInError, Who::Requester),
    (Accepted, EnteredInError, Who::Requester),
    (InProgress, EnteredInError, Who::Requester),
    (OnHold, EnteredInError, Who::Requester),
];

/// Who may move a referral from `from` to `to`, if anyone may.
pub fn transition(from: TaskStatus, to: TaskStatus) -> Option<Who> {
    TRANSITIONS
        .iter()
        .find(|(f, t, _)| *f == from && *t == to)
        .map(|(_, _, who)| *who)
}

/// A referral Task as the workflow reads it, parsed once.
#[derive(Debug, Clone)]
pub struct Referral {
    pub status: TaskStatus,
    /// A `statusReason` that says something (a text or a code).
    pub has_reason: bool,
    pub owner: Option<Target>,
    pub requester: Option<Target>,
    pub patient: Option<Target>,
    pub focus: Option<Target>,
}

impl Referral {
    pub fn parse(json: &Value) -> Result<Referral, FhirError> {
        let code = json.get("status").and_then(Value::as_str).unwrap_or("");
        let status = TaskStatus::parse(code).ok_or_else(|| {
            refuse(
                422,
                "code-invalid",
                "apa-wf-task-status",
                format!(
                    "'{code}' is not a status of the referral workflow (draft, requested, accepted, rejected, \
                     cancelled, in-progress, on-hold, failed, completed, entered-in-error)"
                ),
                "Task.status",
            )
        })?;
        Ok(Referral {
            status,
            has_reason: says_something(json.get("statusReason")),
            owner: Target::of(json.get("owner")),
            requester: Target::of(json.get("requester")),
            patient: Target::of(json.get("for")),
            focus: Target::of(json.get("focus")),
        })
    }
}

/// Does a CodeableConcept carry a text or a code?
fn says_something(concept: Option<&Value>) -> bool {
    let Some(c) = concept else {
        return false;
    };
    let text = c
        .get("text")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.trim().is_empty());
    let coded = c
        .get("coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|x| x.get("code").and_then(Value::as_str).is_some_and(|t| !t.is_empty()));
    text || coded
}

/// The reason rule (pa-taskrm-1), whatever the profile the Task claims.
pub fn check_reason(r: &Referral, present: bool) -> Result<(), FhirError> {
    let code = r.status.code();
    if r.status.needs_reason() && !r.has_reason {
        return Err(refuse(
            422,
            "required",
            "apa-wf-task-reason",
            format!("a referral moved to '{code}' says why: give Task.statusReason (its text)"),
            "Task.statusReason",
        ));
    }
    if !r.status.needs_reason() && present {
        return Err(refuse(
            422,
            "business-rule",
            "apa-wf-task-reason",
            format!(
                "Task.statusReason is only for rejected, on-hold, cancelled and failed referrals, not '{code}'; remove it"
            ),
            "Task.statusReason",
        ));
    }
    Ok(())
}

/// The parties of a stored referral, resolved on demand.
struct Parties<'a> {
    acting: &'a Acting,
    owner: Option<Vec<String>>,
    requester: Option<Vec<String>>,
}

impl<'a> Parties<'a> {
    fn new(acting: &'a Acting) -> Self {
        Parties {
            acting,
            owner: None,
            requester: None,
        }
    }

    /// Does the acting party play `who` on the referral `r`?
    async fn plays(&mut self, tx: &mut WriteTx, writes: &[Write], r: &Referral, who: Who) -> Result<bool, FhirError> {
        if *self.acting == Acting::Operator {
            return Ok(true);
        }
        if matches!(who, Who::Owner | Who::Either) {
            let owner = match self.owner.take() {
                Some(o) => o,
                None => resolve(tx, writes, r.owner.as_ref()).await?,
            };
            let found = self.acting.is_among(&owner);
            self.owner = Some(owner);
            if found {
                return Ok(true);
            }
        }
        if matches!(who, Who::Requester | Who::Either) {
            let requester = match self.requester.take() {
                Some(o) => o,
                None => resolve(tx, writes, r.requester.as_ref()).await?,
            };
            let found = self.acting.is_among(&requester);
            self.requester = Some(requester);
            return Ok(found);
        }
        Ok(false)
    }
}

async fn resolve(tx: &mut WriteTx, writes: &[Write], t: Option<&Target>) -> Result<Vec<String>, FhirError> {
    match t {
        Some(t) => organisations_of(tx, writes, t).await,
        None => Ok(Vec::new()),
    }
}

/// Checks the write `writes[i]` of a Task, and notes the programme to
/// finish when the referral ends.
pub async fn check(
    tx: &mut WriteTx,
    writes: &[Write],
    i: usize,
    acting: &Acting,
    follow: &mut Follow,
) -> Result<(), FhirError> {
    let w = &writes[i];
    let stored = match w.method {
        Method::Create => None,
        Method::Update | Method::Delete => match tx.read("Task", &w.id).await? {
            Some(v) if !v.deleted() => v.body.and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
            _ => None,
        },
    };
    let old = stored
        .as_ref()
        .map(|json| {
            Referral::parse(json).map_err(|_| {
                let code = json.get("status").and_then(Value::as_str).unwrap_or("");
                refuse(
                    409,
                    "business-rule",
                    "apa-wf-task-status",
                    format!(
                        "the stored referral is in '{code}', which the referral workflow does not know \
                         (stored before it applied); it cannot move from there"
                    ),
                    "Task.status",
                )
            })
        })
        .transpose()?;
    let mut parties = Parties::new(acting);
    let Some(json) = body_of(w)? else {
        // Deleting a referral is the prescriber's withdrawal; a provider
        // ends it with a status, which stays in the record.
        if let Some(old) = &old
            && !parties.plays(tx, writes, old, Who::Requester).await?
        {
            return Err(refuse(
                403,
                "forbidden",
                "apa-wf-task-party",
                "only the referral's requester deletes it; the provider moves it to a final status instead",
                "Task",
            ));
        }
        return Ok(());
    };
    let new = Referral::parse(&json)?;
    let has_reason_element = json.get("statusReason").is_some();
    let Some(old) = old else {
        check_issue(tx, writes, &new, &mut parties).await?;
        return check_reason(&new, has_reason_element);
    };
    for (before, after, element) in [
        (&old.patient, &new.patient, "Task.for"),
        (&old.focus, &new.focus, "Task.focus"),
        (&old.requester, &new.requester, "Task.requester"),
    ] {
        if before != after {
            return Err(refuse(
                422,
                "business-rule",
                "apa-wf-task-fixed",
                format!("{element} does not change once the referral is issued; issue a new referral instead"),
                element,
            ));
        }
    }
    let (from, to) = (old.status, new.status);
    if old.owner != new.owner {
        // A hand-over to another provider: by the owner that cannot take
        // the patient in, or the prescriber; the new owner answers again.
        if from.is_final() {
            return Err(refuse(
                409,
                "business-rule",
                "apa-wf-task-handover",
                format!("a referral in the final status '{}' is not handed over", from.code()),
                "Task.owner",
            ));
        }
        if to != from && to != Requested {
            return Err(refuse(
                409,
                "business-rule",
                "apa-wf-task-handover",
                format!(
                    "a referral handed over keeps its status '{}' or returns to 'requested', not '{}'",
                    from.code(),
                    to.code()
                ),
                "Task.status",
            ));
        }
        if !parties.plays(tx, writes, &old, Who::Either).await? {
            return Err(refuse(
                403,
                "forbidden",
                "apa-wf-task-party",
                format!("only {} hands it over", Who::Either.describe()),
                "Task.owner",
            ));
        }
    } else if from != to {
        let Some(who) = transition(from, to) else {
            let (rule, why) = if from.is_final() {
                ("apa-wf-task-final", format!("'{}' is a final status", from.code()))
            } else {
                (
                    "apa-wf-task-transition",
                    "the referral workflow has no such step".to_string(),
                )
            };
            return Err(refuse(
                409,
                "business-rule",
                rule,
                format!("a referral in '{}' cannot move to '{}': {why}", from.code(), to.code()),
                "Task.status",
            ));
        };
        if !parties.plays(tx, writes, &old, who).await? {
            return Err(refuse(
                403,
                "forbidden",
                "apa-wf-task-party",
                format!(
                    "only {} moves a referral from '{}' to '{}'",
                    who.describe(),
                    from.code(),
                    to.code()
                ),
                "Task.status",
            ));
        }
    } else if !parties.plays(tx, writes, &old, Who::Either).await? {
        // Notes, outputs (the report), business status: the two parties'.
        return Err(refuse(
            403,
            "forbidden",
            "apa-wf-task-party",
            format!("only {} changes it", Who::Either.describe()),
            "Task",
        ));
    }
    // After the move itself: "cannot leave a final status" says more than
    // "remove the reason".
    check_reason(&new, has_reason_element)?;
    if from != to && matches!(to, Completed | Failed) {
        let owner = match parties.owner.take() {
            Some(o) => o,
            None => resolve(tx, writes, new.owner.as_ref()).await?,
        };
        let end = json
            .get("executionPeriod")
            .and_then(|p| p.get("end"))
            .or_else(|| json.get("lastModified"))
            .and_then(Value::as_str)
            .map(str::to_string);
        follow.note_end(new.patient.clone(), new.focus.clone(), owner, end);
    }
    Ok(())
}

/// A new referral: issued as requested (or draft), by its requester.
async fn check_issue(
    tx: &mut WriteTx,
    writes: &[Write],
    new: &Referral,
    parties: &mut Parties<'_>,
) -> Result<(), FhirError> {
    if !new.status.is_initial() {
        return Err(refuse(
            422,
            "business-rule",
            "apa-wf-task-start",
            format!(
                "a referral is issued as 'requested' (or prepared as 'draft'), not '{}'",
                new.status.code()
            ),
            "Task.status",
        ));
    }
    // A Task without requester is refused by its profile; the party rule
    // needs one to apply.
    if new.requester.is_some() && !parties.plays(tx, writes, new, Who::Requester).await? {
        return Err(refuse(
            403,
            "forbidden",
            "apa-wf-task-party",
            "a referral is issued by its requester's organisation (the prescriber's)",
            "Task.requester",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ALL: [TaskStatus; 10] = [
        Draft,
        Requested,
        Accepted,
        Rejected,
        Cancelled,
        InProgress,
        OnHold,
        Failed,
        Completed,
        EnteredInError,
    ];

    #[test]
    fn codes_round_trip_and_received_is_not_a_referral_status() {
        for s in ALL {
            assert_eq!(TaskStatus::parse(s.code()), Some(s));
        }
        assert_eq!(TaskStatus::parse("received"), None);
        assert_eq!(TaskStatus::parse("ready"), None);
        assert_eq!(TaskStatus::parse("Accepted"), None);
    }

    #[test]
    fn nothing_leaves_a_final_status() {
        for from in ALL.into_iter().filter(|s| s.is_final()) {
            for to in ALL {
                assert_eq!(transition(from, to), None, "{from:?} -> {to:?}");
            }
        }
        assert_eq!(transition(Completed, InProgress), None);
    }

    #[test]
    fn the_provider_answers_and_the_prescriber_stops() {
        assert_eq!(transition(Requested, Accepted), Some(Who::Owner));
        assert_eq!(transition(Requested, Rejected), Some(Who::Owner));
        assert_eq!(transition(InProgress, Completed), Some(Who::Owner));
        assert_eq!(transition(OnHold, Failed), Some(Who::Owner));
        assert_eq!(transition(Requested, Cancelled), Some(Who::Requester));
        assert_eq!(transition(InProgress, EnteredInError), Some(Who::Requester));
        assert_eq!(transition(Draft, Requested), Some(Who::Requester));
    }

    #[test]
    fn no_step_is_skipped_or_undone() {
        assert_eq!(transition(Requested, Completed), None);
        assert_eq!(transition(Requested, InProgress), None);
        assert_eq!(transition(Accepted, Requested), None);
        assert_eq!(transition(OnHold, Completed), None);
        assert_eq!(transition(Draft, Accepted), None);
        // Nothing goes back to draft.
        assert!(TRANSITIONS.iter().all(|(_, to, _)| *to != Draft));
    }

    #[test]
    fn the_table_has_no_duplicate_and_every_status_is_reachable() {
        for (k, (f, t, _)) in TRANSITIONS.iter().enumerate() {
            assert_ne!(f, t);
            assert!(
                !TRANSITIONS[k + 1..].iter().any(|(f2, t2, _)| f2 == f && t2 == t),
                "{f:?} -> {t:?} twice"
            );
        }
        for s in ALL.into_iter().filter(|s| !s.is_initial()) {
            assert!(TRANSITIONS.iter().any(|(_, t, _)| *t == s), "{s:?}");
        }
    }

    fn referral(status: &str, reason: Option<Value>) -> Value {
        let mut t = json!({"resourceType": "Task", "status": status,
            "owner": {"reference": "Organization/mss"}, "requester": {"reference": "PractitionerRole/dr"}});
        if let Some(r) = reason {
            t["statusReason"] = r;
        }
        t
    }

    fn reason_check(status: &str, reason: Option<Value>) -> Result<(), FhirError> {
        let json = referral(status, reason);
        let r = Referral::parse(&json)?;
        check_reason(&r, json.get("statusReason").is_some())
    }

    #[test]
    fn a_rejection_says_why() {
        let e = reason_check("rejected", None).unwrap_err();
        assert_eq!(e.status, 422);
        assert_eq!(e.issues[0].expression, vec!["Task.statusReason"]);
        assert!(e.issues[0].diagnostics.starts_with("[apa-wf-task-reason]"));
        assert!(reason_check("rejected", Some(json!({"text": "  "}))).is_err());
        assert!(reason_check("rejected", Some(json!({"text": "Programme complet"}))).is_ok());
        assert!(reason_check("on-hold", Some(json!({"coding": [{"code": "vacances"}]}))).is_ok());
        for s in ["cancelled", "failed", "on-hold"] {
            assert!(reason_check(s, None).is_err(), "{s}");
        }
        // Only those four carry one (pa-taskrm-1).
        assert!(reason_check("in-progress", Some(json!({"text": "reprise"}))).is_err());
        assert!(reason_check("accepted", None).is_ok());
    }

    #[test]
    fn an_unknown_status_is_named() {
        let e = Referral::parse(&referral("received", None)).unwrap_err();
        assert_eq!(e.status, 422);
        assert_eq!(e.issues[0].expression, vec!["Task.status"]);
        assert!(Referral::parse(&json!({"resourceType": "Task"})).is_err());
    }

    #[test]
    fn references_are_read_as_targets() {
        let r = Referral::parse(&referral("requested", None)).unwrap();
        assert_eq!(r.owner.map(|t| t.to_string()).as_deref(), Some("Organization/mss"));
        assert_eq!(
            r.requester.map(|t| t.to_string()).as_deref(),
            Some("PractitionerRole/dr")
        );
        assert!(r.patient.is_none());
    }
}
