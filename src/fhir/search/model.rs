//! The search vocabulary shared by extraction (what a resource is indexed
//! under), query parsing (what a client asks for) and the store (which turns
//! both into rows and SQL). Plain data: no JSON, no SQL.

/// The type of a search parameter, as in `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "number" => Self::Number,
            "date" => Self::Date,
            "string" => Self::String,
            "token" => Self::Token,
            "reference" => Self::Reference,
            "composite" => Self::Composite,
            "quantity" => Self::Quantity,
            "uri" => Self::Uri,
            "special" => Self::Special,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Date => "date",
            Self::String => "string",
            Self::Token => "token",
            Self::Reference => "reference",
            Self::Composite => "composite",
            Self::Quantity => "quantity",
            Self::Uri => "uri",
            Self::Special => "special",
        }
    }
}

/// A closed interval of instants in microseconds since the Unix epoch (UTC):
/// a FHIR date, dateTime, instant or Period, widened to its stated precision
/// (`2024-03` is every microsecond of March 2024). `hi` is inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub lo: i64,
    pub hi: i64,
}

impl DateRange {
    /// Open bounds, for a Period with a missing start or end.
    pub const MIN: i64 = i64::MIN;
    pub const MAX: i64 = i64::MAX;
}

/// One value a resource is indexed under, for one search parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// Coding, CodeableConcept (one per coding), Identifier, ContactPoint
    /// (value, with its system as `system`), code, boolean, id, string used as token.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// The string as written; the store normalises it for matching.
    String(String),
    Date(DateRange),
    /// The decimal as written, parsed; `f64` is enough to compare.
    Number(f64),
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// A reference to another resource. `rtype` + `id` for a literal
    /// reference (`Patient/123`, or an absolute URL on this server);
    /// `rtype: None` and `id` = the URL for anything else (a canonical, an
    /// external URL). `identifier` carries `Reference.identifier` for the
    /// `:identifier` modifier.
    Reference {
        rtype: Option<String>,
        id: Option<String>,
        identifier: Option<(Option<String>, String)>,
    },
    Uri(String),
}

/// A search prefix (FHIR R4 §3.1.1.4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefix {
    #[default]
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A search modifier (the part after `:` in `name:modifier`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    Exact,
    Contains,
    Missing,
    Not,
    Identifier,
    Above,
    Below,
    Text,
    /// `subject:Patient` — a type restriction on a reference parameter.
    Type(String),
}

/// One value of a search parameter in a query, already typed by the
/// parameter's type. A comma in the query gives several (OR).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `system|code`, `code`, `|code` (system = Some("")), `system|` (code = None).
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    String(String),
    Date {
        prefix: Prefix,
        range: DateRange,
    },
    /// `lo`..=`hi` is the range implied by the written precision
    /// (`100` → [99.5, 100.5]).
    Number {
        prefix: Prefix,
        value: f64,
        lo: f64,
        hi: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        lo: f64,
        hi: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// `Patient/123`, `123` (type from the modifier or the parameter's only
    /// target), or an absolute URL (`rtype: None`, `id` = URL).
    Reference {
        rtype: Option<String>,
        id: String,
        version: Option<String>,
    },
    Uri(String),
    /// `:missing=true|false`
    Missing(bool),
}

/// Names a search parameter of one resource type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParamRef {
    pub resource_type: String,
    pub code: String,
    pub kind: ParamType,
}

/// One AND-ed condition of a search.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `name[:modifier]=v1,v2`: matches when any of the values matches.
    /// `_id` and `_lastUpdated` arrive here too (resource type `Resource`).
    Values {
        param: ParamRef,
        modifier: Option<Modifier>,
        values: Vec<SearchValue>,
    },
    /// `subject:Patient.name=x`: `param` references a `target_type`
    /// resource that matches `inner`.
    Chain {
        param: ParamRef,
        target_type: String,
        inner: Box<Filter>,
    },
    /// `_has:Observation:patient:code=x`: some `source_type` resource whose
    /// reference parameter `param` points at the candidate matches `inner`.
    Has {
        source_type: String,
        param: ParamRef,
        inner: Box<Filter>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKey {
    Id,
    LastUpdated,
    Param(ParamRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

/// `_include` / `_revinclude`. For `_include`, `source_type` is the type of
/// the matched resources and `target_type` restricts what is pulled in; for
/// `_revinclude`, `source_type` is the type of the resources pulled in.
/// `param: None` means `*` (every reference parameter of `source_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    pub param: Option<ParamRef>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    #[default]
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

/// Where a page starts: after a resource (keyset paging on the default
/// order) or at an offset (explicit `_sort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageStart {
    #[default]
    First,
    After(i64),
    Offset(u64),
}

/// A parsed search: what the store executes and what the search-set Bundle's
/// links are built from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchRequest {
    /// `None` for a system-level search (`GET /fhir?…`).
    pub resource_type: Option<String>,
    pub filters: Vec<Filter>,
    pub sort: Vec<Sort>,
    pub count: usize,
    pub page: PageStart,
    pub include: Vec<Include>,
    pub revinclude: Vec<Include>,
    pub total: Total,
    pub summary: Option<Summary>,
    pub elements: Vec<String>,
    /// The parameters that were understood and applied, in the client's
    /// order and spelling: the `self` link is built from them.
    pub applied: Vec<(String, String)>,
    /// Parameters the server did not understand and ignored (lenient mode).
    pub ignored: Vec<String>,
}
