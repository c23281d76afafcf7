//! Who acts. Every interaction receives the `Caller`; the security issue
//! (#3) fills it from verified tokens and adds the access rules that use it.

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The registered client (or user) the request comes from.
    pub client_id: String,
    /// The Organization the caller acts for, when known.
    pub organization: Option<String>,
}

impl Caller {
    /// The gateway itself (start-up tasks, tests of the core).
    pub fn system() -> Caller {
        Caller {
            client_id: "apa-gateway".into(),
            organization: None,
        }
    }
}
