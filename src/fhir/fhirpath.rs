//! The part of FHIRPath that search-parameter expressions use, evaluated
//! over `serde_json::Value` without copying it.
//!
//! Supported: paths (a leading type name filters the root: `Patient.name` is
//! empty on an Observation), choice elements (`Observation.value` finds
//! `valueQuantity`, typed "Quantity"), indexers, unions, `is` / `as`,
//! equality, equivalence, comparison, `in` / `contains`, `and` / `or` /
//! `xor` / `implies`, string, number, boolean and date literals, `$this`,
//! `%resource` / `%context` / `%rootResource` / `%ucum` / `%sct` / `%loinc`,
//! and the functions `where`, `select`, `exists`, `all`, `empty`, `not`,
//! `first`, `last`, `tail`, `skip`, `take`, `count`, `distinct`, `hasValue`,
//! `children`, `resolve`, `is`, `as`, `ofType`, `extension`, `startsWith`,
//! `endsWith`, `contains`, `matches`, `iif`, `trace`. Arithmetic and quantity literals
//! are refused at parse time, so an expression either parses and means what
//! it says, or does not parse.
//!
//! There is no type model: a node's type comes from its JSON key when that
//! key names it (choice elements), from `resourceType`, or from its JSON
//! kind. A node of unknown type passes `is` / `as` when its shape fits the
//! type (a string for a primitive type, an object for a complex one).

use std::cmp::Ordering;

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum FhirPathError {
    #[error("FHIRPath syntax error at offset {pos} of `{src}`: {msg}")]
    Syntax { src: String, pos: usize, msg: String },
    #[error("FHIRPath {what} is not supported (in `{src}`)")]
    Unsupported { src: String, what: String },
}

/// A parsed expression. Immutable; parse once, evaluate on many resources.
#[derive(Debug, Clone)]
pub struct Expr {
    ast: Ast,
}

/// One result of an evaluation: an element of the resource and, when its
/// JSON key told it (`valueQuantity`, `onsetDateTime`, `effectivePeriod`),
/// its FHIR type (`Quantity`, `dateTime`, `Period`). Boolean results of
/// operators (`Patient.deceased.exists() and …`) are JSON booleans typed
/// `boolean`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub type_hint: Option<&'static str>,
}

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

impl Expr {
    pub fn parse(src: &str) -> Result<Expr, FhirPathError> {
        let toks = lex(src)?;
        let mut p = Parser {
            src,
            toks,
            i: 0,
            depth: 0,
        };
        let ast = p.expr(0)?;
        if let Some(&(ref t, pos)) = p.toks.get(p.i) {
            return Err(p.syntax(pos, format!("unexpected {t:?}")));
        }
        Ok(Expr { ast })
    }

    /// The part of this expression that can yield something on a resource
    /// of type `resource_type`: branches of a top-level union rooted at
    /// another type are dropped (`AllergyIntolerance.patient | …
    /// | Observation.subject.where(…)` becomes its Observation branch).
    /// `None` when no branch applies. Evaluation gives the same result,
    /// only faster.
    pub fn for_resource_type(&self, resource_type: &str) -> Option<Expr> {
        let applies = |a: &Ast| root_type(a).is_none_or(|t| type_name_matches_resource(t, resource_type));
        match &self.ast {
            Ast::Union(branches) => {
                let mut kept: Vec<Ast> = branches.iter().filter(|b| applies(b)).cloned().collect();
                match kept.len() {
                    0 => None,
                    1 => kept.pop().map(|ast| Expr { ast }),
                    _ => Some(Expr { ast: Ast::Union(kept) }),
                }
            }
            a if applies(a) => Some(self.clone()),
            _ => None,
        }
    }

    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        self.evaluate_into(resource, &mut out);
        out
    }

    /// Like [`Expr::evaluate`], appending to `out` (to reuse its buffer).
    /// Results that are not elements of the resource (literals, counts,
    /// references `resolve()` could not load) are left out, except
    /// booleans.
    pub fn evaluate_into<'a>(&self, resource: &'a Value, out: &mut Vec<Node<'a>>) {
        let root = Item::Json {
            value: resource,
            hint: None,
            ext: None,
        };
        let mut items = Vec::new();
        eval(&self.ast, resource, &[root], &mut items);
        out.extend(items.into_iter().filter_map(|i| match i {
            Item::Json { value, hint, .. } => Some(Node { value, type_hint: hint }),
            Item::Bool(b) => Some(Node {
                value: if b { &TRUE } else { &FALSE },
                type_hint: Some("boolean"),
            }),
            Item::Lit(_) | Item::Int(_) | Item::Resolved(_) => None,
        }));
    }
}

impl Expr {
    /// The expression as an invariant on an element: evaluated with
    /// `context` as its input and `resource` as `%resource`, the result as
    /// a boolean (`None` when it is empty or not a single item: unknown).
    pub fn evaluate_bool_at(&self, resource: &Value, context: &Value) -> Option<bool> {
        let focus = [Item::Json {
            value: context,
            hint: None,
            ext: None,
        }];
        eval_bool(&self.ast, resource, &focus)
    }
}

/// The type a Reference points at: from its `reference` (`Patient/1`,
/// `https://host/fhir/Patient/1`, `Patient/1/_history/2`), else its `type`.
/// Not for contained (`#id`) references.
pub fn reference_type(reference: &Value) -> Option<&str> {
    if let Some(t) = reference
        .get("reference")
        .and_then(Value::as_str)
        .and_then(literal_reference_type)
    {
        return Some(t);
    }
    reference.get("type").and_then(Value::as_str)
}

/// `Type` of `[base/]Type/id[/_history/vid]`, when it looks like a type name.
fn literal_reference_type(r: &str) -> Option<&str> {
    let path = r.split(['?', '#']).next().unwrap_or_default();
    // From the end: id (or version), then type (or `_history`, id, type).
    let mut segs = path.rsplit('/').skip(1);
    let mut t = segs.next()?;
    if t == "_history" {
        t = segs.nth(1)?;
    }
    let looks_like_type =
        t.starts_with(|c: char| c.is_ascii_uppercase()) && t.bytes().all(|b| b.is_ascii_alphanumeric());
    looks_like_type.then_some(t)
}

// ---------------------------------------------------------------------------
// Syntax tree

#[derive(Debug, Clone)]
enum Ast {
    /// `{}`
    Empty,
    Lit(Lit),
    Path {
        head: Head,
        steps: Vec<Step>,
    },
    Union(Vec<Ast>),
    Logic(LogicOp, Box<Ast>, Box<Ast>),
    /// `=` / `!=` (`negate`), or `~` / `!~` when `equiv`.
    Equality {
        negate: bool,
        equiv: bool,
        l: Box<Ast>,
        r: Box<Ast>,
    },
    Compare(CmpOp, Box<Ast>, Box<Ast>),
    /// `l in r`, or `l contains r` (stored swapped: `r in l`).
    In(Box<Ast>, Box<Ast>),
    Is(Box<Ast>, TypeSpec),
    As(Box<Ast>, TypeSpec),
}

#[derive(Debug, Clone)]
enum Head {
    /// The input: the resource at the top, `$this` inside `where(…)`.
    Focus,
    /// `%resource`, `%context`, `%rootResource`.
    Root,
    Expr(Box<Ast>),
}

#[derive(Debug, Clone)]
enum Step {
    Child(Name),
    Index(Box<Ast>),
    Call(Func),
}

#[derive(Debug, Clone)]
struct Name {
    name: Box<str>,
    /// Starts with an upper-case letter: a type name (`Patient.name`), which
    /// selects the input when it is a resource of that type.
    type_like: bool,
}

#[derive(Debug, Clone)]
enum Func {
    Where(Box<Ast>),
    Select(Box<Ast>),
    Exists(Option<Box<Ast>>),
    All(Box<Ast>),
    Empty,
    Not,
    First,
    Last,
    Tail,
    Skip(Box<Ast>),
    Take(Box<Ast>),
    Count,
    Distinct,
    HasValue,
    Children,
    Resolve,
    Is(TypeSpec),
    /// `as(T)` and `ofType(T)`: keep the items of that type.
    OfType(TypeSpec),
    Extension(Box<Ast>),
    StartsWith(Box<Ast>),
    EndsWith(Box<Ast>),
    Contains(Box<Ast>),
    /// `matches(regex)`: the regex is found in the string (anchors make it
    /// a whole-string match, as the profiles' invariants write it).
    /// The regex is compiled once when it is a literal (as in every
    /// invariant), not on each evaluation.
    Matches(Box<Ast>, Option<Box<regex::Regex>>),
    Iif(Box<Ast>, Box<Ast>, Option<Box<Ast>>),
    Trace,
}

#[derive(Debug, Clone, Copy)]
enum LogicOp {
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, Copy)]
enum CmpOp {
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone)]
enum Lit {
    Str(Box<str>),
    /// `@2024-03-05`: compared as text.
    Date(Box<str>),
    Num {
        value: f64,
        integer: bool,
    },
    Bool(bool),
}

#[derive(Debug, Clone)]
struct TypeSpec {
    name: Box<str>,
    /// `System.String`, or an unqualified `String`, `DateTime`, … (no FHIR
    /// type is spelled so).
    system: bool,
}

/// The resource type a branch is rooted at (`Observation` in
/// `Observation.subject.where(…)`), when it has one.
fn root_type(ast: &Ast) -> Option<&str> {
    match rooting(ast) {
        Rooting::Type(t) => Some(t),
        Rooting::Free | Rooting::Unrooted => None,
    }
}

enum Rooting<'e> {
    /// Every path starts with this type name.
    Type(&'e str),
    /// No path at all (literals).
    Free,
    /// Some path starts elsewhere (`name | alias`, `%resource.x`).
    Unrooted,
}

fn rooting(ast: &Ast) -> Rooting<'_> {
    match ast {
        Ast::Empty | Ast::Lit(_) => Rooting::Free,
        Ast::Path {
            head: Head::Focus,
            steps,
        } => match steps.first() {
            Some(Step::Child(n)) if n.type_like => Rooting::Type(&n.name),
            _ => Rooting::Unrooted,
        },
        Ast::Path {
            head: Head::Expr(e), ..
        }
        | Ast::Is(e, _)
        | Ast::As(e, _) => rooting(e),
        Ast::Path { head: Head::Root, .. } | Ast::Union(_) => Rooting::Unrooted,
        Ast::Logic(_, l, r) | Ast::Compare(_, l, r) | Ast::In(l, r) | Ast::Equality { l, r, .. } => {
            match (rooting(l), rooting(r)) {
                (Rooting::Free, x) | (x, Rooting::Free) => x,
                (Rooting::Type(a), Rooting::Type(b)) if a == b => Rooting::Type(a),
                _ => Rooting::Unrooted,
            }
        }
    }
}

fn type_name_matches_resource(name: &str, resource_type: &str) -> bool {
    name == resource_type
        || name == "Resource"
        || (name == "DomainResource" && !matches!(resource_type, "Bundle" | "Binary" | "Parameters"))
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `` `name` ``: an identifier that is never a keyword.
    Delimited(String),
    Str(String),
    Num(String),
    Date(String),
    /// `%name`
    Const(String),
    /// `$name`
    Dollar(String),
    Sym(&'static str),
}

const SYMBOLS: [&str; 21] = [
    "!=", "!~", "<=", ">=", "=", "~", "<", ">", "|", ".", "(", ")", "[", "]", "{", "}", ",", "+", "-", "*", "/",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, FhirPathError> {
    let err = |pos: usize, msg: &str| FhirPathError::Syntax {
        src: src.to_string(),
        pos,
        msg: msg.to_string(),
    };
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    let ident_end = |from: usize| {
        let mut j = from;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map_or(b.len(), |n| i + n);
            continue;
        }
        if src[i..].starts_with("/*") {
            i = src[i + 2..]
                .find("*/")
                .map(|n| i + 2 + n + 2)
                .ok_or_else(|| err(i, "unclosed comment"))?;
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            i = ident_end(i);
            Tok::Ident(src[start..i].to_string())
        } else if c.is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            Tok::Num(src[start..i].to_string())
        } else if c == b'\'' || c == b'`' {
            let (text, end) = quoted(src, i).ok_or_else(|| err(i, "unclosed quote"))?;
            i = end;
            if c == b'\'' {
                Tok::Str(text)
            } else {
                Tok::Delimited(text)
            }
        } else if c == b'@' {
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'-' | b':' | b'.' | b'+')) {
                i += 1;
            }
            Tok::Date(src[start + 1..i].to_string())
        } else if c == b'%' || c == b'$' {
            i += 1;
            let name = match b.get(i) {
                Some(b'\'' | b'`') => {
                    let (text, end) = quoted(src, i).ok_or_else(|| err(i, "unclosed quote"))?;
                    i = end;
                    text
                }
                _ => {
                    let end = ident_end(i);
                    let name = src[i..end].to_string();
                    i = end;
                    name
                }
            };
            if name.is_empty() {
                return Err(err(start, "a name must follow % or $"));
            }
            if c == b'%' { Tok::Const(name) } else { Tok::Dollar(name) }
        } else if let Some(s) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            i += s.len();
            Tok::Sym(s)
        } else if c == b'&' {
            i += 1;
            Tok::Sym("&")
        } else {
            return Err(err(i, "unexpected character"));
        };
        toks.push((tok, start));
    }
    Ok(toks)
}

/// The text of a `'…'` or `` `…` `` token starting at `start`, unescaped,
/// and the offset after it.
fn quoted(src: &str, start: usize) -> Option<(String, usize)> {
    let quote = src[start..].chars().next()?;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((j, c)) = chars.next() {
        if c == quote {
            return Some((out, start + 1 + j + 1));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next()?;
        out.push(match e {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'f' => '\u{c}',
            'u' => {
                let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            other => other,
        });
    }
    None
}

// ---------------------------------------------------------------------------
// Parser (precedence climbing, FHIRPath N1 §"Operator precedence")

struct Parser<'s> {
    src: &'s str,
    toks: Vec<(Tok, usize)>,
    i: usize,
    /// Nesting, bounded so that a hostile custom expression cannot
    /// exhaust the stack here or in evaluation.
    depth: u32,
}

const MAX_DEPTH: u32 = 64;

#[derive(Clone, Copy)]
enum BinOp {
    Logic(LogicOp),
    In,
    Contains,
    Eq { negate: bool, equiv: bool },
    Cmp(CmpOp),
    Union,
}

#[derive(Clone, Copy)]
enum Infix {
    Bin(BinOp),
    /// `is` (true) or `as` (false): a type, not an expression, follows.
    Type(bool),
}

impl Parser<'_> {
    fn syntax(&self, pos: usize, msg: impl Into<String>) -> FhirPathError {
        FhirPathError::Syntax {
            src: self.src.to_string(),
            pos,
            msg: msg.into(),
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> FhirPathError {
        FhirPathError::Unsupported {
            src: self.src.to_string(),
            what: what.into(),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(t, _)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.src.len(), |(_, p)| *p)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.i).map(|(t, _)| t.clone());
        self.i += 1;
        t
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), FhirPathError> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(self.syntax(self.pos(), format!("expected `{sym}`")))
        }
    }

    /// The binary operator at the cursor and its precedence (higher binds
    /// tighter).
    fn peek_binop(&self) -> Result<Option<(Infix, u8)>, FhirPathError> {
        let op = match self.peek() {
            Some(Tok::Ident(w)) => match w.as_str() {
                "implies" => (BinOp::Logic(LogicOp::Implies), 1),
                "or" => (BinOp::Logic(LogicOp::Or), 2),
                "xor" => (BinOp::Logic(LogicOp::Xor), 2),
                "and" => (BinOp::Logic(LogicOp::And), 3),
                "in" => (BinOp::In, 4),
                "contains" => (BinOp::Contains, 4),
                "is" => return Ok(Some((Infix::Type(true), 8))),
                "as" => return Ok(Some((Infix::Type(false), 8))),
                "div" | "mod" => return Err(self.unsupported(format!("operator `{w}`"))),
                _ => return Ok(None),
            },
            Some(Tok::Sym(s)) => match *s {
                "=" => (
                    BinOp::Eq {
                        negate: false,
                        equiv: false,
                    },
                    5,
                ),
                "!=" => (
                    BinOp::Eq {
                        negate: true,
                        equiv: false,
                    },
                    5,
                ),
                "~" => (
                    BinOp::Eq {
                        negate: false,
                        equiv: true,
                    },
                    5,
                ),
                "!~" => (
                    BinOp::Eq {
                        negate: true,
                        equiv: true,
                    },
                    5,
                ),
                "<" => (BinOp::Cmp(CmpOp::Lt), 6),
                ">" => (BinOp::Cmp(CmpOp::Gt), 6),
                "<=" => (BinOp::Cmp(CmpOp::Le), 6),
                ">=" => (BinOp::Cmp(CmpOp::Ge), 6),
                "|" => (BinOp::Union, 7),
                "+" | "-" | "*" | "/" | "&" => return Err(self.unsupported(format!("arithmetic operator `{s}`"))),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some((Infix::Bin(op.0), op.1)))
    }

    fn expr(&mut self, min_prec: u8) -> Result<Ast, FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.unsupported(format!("nesting deeper than {MAX_DEPTH}")));
        }
        let ast = self.binary(min_prec);
        self.depth -= 1;
        ast
    }

    fn binary(&mut self, min_prec: u8) -> Result<Ast, FhirPathError> {
        let mut lhs = self.unary()?;
        while let Some((op, prec)) = self.peek_binop()? {
            if prec < min_prec {
                break;
            }
            self.i += 1;
            let op = match op {
                Infix::Type(is) => {
                    let t = self.type_spec()?;
                    lhs = if is {
                        Ast::Is(Box::new(lhs), t)
                    } else {
                        Ast::As(Box::new(lhs), t)
                    };
                    continue;
                }
                Infix::Bin(op) => op,
            };
            // Left-associative: the right side binds tighter.
            let rhs = self.expr(prec + 1)?;
            let (l, r) = (Box::new(lhs), Box::new(rhs));
            lhs = match op {
                BinOp::Logic(o) => Ast::Logic(o, l, r),
                BinOp::In => Ast::In(l, r),
                BinOp::Contains => Ast::In(r, l),
                BinOp::Eq { negate, equiv } => Ast::Equality { negate, equiv, l, r },
                BinOp::Cmp(o) => Ast::Compare(o, l, r),
                BinOp::Union => match *l {
                    Ast::Union(mut v) => {
                        v.push(*r);
                        Ast::Union(v)
                    }
                    l => Ast::Union(vec![l, *r]),
                },
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Ast, FhirPathError> {
        if self.eat("-") {
            // Only a negative number literal: there is no arithmetic.
            return match self.next() {
                Some(Tok::Num(n)) => self.number(&format!("-{n}")).map(Ast::Lit),
                _ => Err(self.unsupported("unary minus")),
            };
        }
        self.eat("+");
        self.postfix()
    }

    fn number(&self, text: &str) -> Result<Lit, FhirPathError> {
        let value: f64 = text.parse().map_err(|_| self.syntax(self.pos(), "bad number"))?;
        Ok(Lit::Num {
            value,
            integer: !text.contains('.'),
        })
    }

    fn postfix(&mut self) -> Result<Ast, FhirPathError> {
        let pos = self.pos();
        let (head, mut steps) = match self.next() {
            Some(Tok::Num(n)) => {
                if matches!(self.peek(), Some(Tok::Str(_) | Tok::Ident(_))) && !matches!(self.peek_binop(), Ok(Some(_)))
                {
                    return Err(self.unsupported("quantity literals"));
                }
                (Head::Expr(Box::new(Ast::Lit(self.number(&n)?))), Vec::new())
            }
            Some(Tok::Str(s)) => (Head::Expr(Box::new(Ast::Lit(Lit::Str(s.into())))), Vec::new()),
            Some(Tok::Date(d)) => (Head::Expr(Box::new(Ast::Lit(Lit::Date(d.into())))), Vec::new()),
            Some(Tok::Ident(w)) if (w == "true" || w == "false") && !matches!(self.peek(), Some(Tok::Sym("("))) => {
                (Head::Expr(Box::new(Ast::Lit(Lit::Bool(w == "true")))), Vec::new())
            }
            Some(Tok::Ident(w) | Tok::Delimited(w)) => {
                let step = self.member(w)?;
                (Head::Focus, vec![step])
            }
            Some(Tok::Const(c)) => match c.as_str() {
                "resource" | "context" | "rootResource" => (Head::Root, Vec::new()),
                "ucum" => (Head::Expr(Box::new(str_lit("http://unitsofmeasure.org"))), Vec::new()),
                "sct" => (Head::Expr(Box::new(str_lit("http://snomed.info/sct"))), Vec::new()),
                "loinc" => (Head::Expr(Box::new(str_lit("http://loinc.org"))), Vec::new()),
                _ => return Err(self.unsupported(format!("environment variable %{c}"))),
            },
            Some(Tok::Dollar(d)) if d == "this" => (Head::Focus, Vec::new()),
            Some(Tok::Dollar(d)) => return Err(self.unsupported(format!("${d}"))),
            Some(Tok::Sym("(")) => {
                let inner = self.expr(0)?;
                self.expect(")")?;
                (Head::Expr(Box::new(inner)), Vec::new())
            }
            Some(Tok::Sym("{")) => {
                self.expect("}")?;
                (Head::Expr(Box::new(Ast::Empty)), Vec::new())
            }
            Some(t) => return Err(self.syntax(pos, format!("unexpected {t:?}"))),
            None => return Err(self.syntax(pos, "unexpected end")),
        };
        loop {
            if self.eat(".") {
                let w = match self.next() {
                    Some(Tok::Ident(w) | Tok::Delimited(w)) => w,
                    _ => return Err(self.syntax(self.pos(), "expected a name after `.`")),
                };
                steps.push(self.member(w)?);
            } else if self.eat("[") {
                let index = self.expr(0)?;
                self.expect("]")?;
                steps.push(Step::Index(Box::new(index)));
            } else {
                break;
            }
        }
        Ok(match head {
            // `(expr)` alone, or a literal: no path around it.
            Head::Expr(inner) if steps.is_empty() => *inner,
            Head::Focus | Head::Root | Head::Expr(_) => Ast::Path { head, steps },
        })
    }

    /// A name after `.` or at the start of a term: a function call when
    /// `(` follows, else an element (or type) name.
    fn member(&mut self, name: String) -> Result<Step, FhirPathError> {
        if !self.eat("(") {
            let type_like = name.starts_with(|c: char| c.is_ascii_uppercase());
            return Ok(Step::Child(Name {
                name: name.into(),
                type_like,
            }));
        }
        let func = match name.as_str() {
            "is" | "as" | "ofType" => {
                let t = self.type_spec()?;
                if name == "is" { Func::Is(t) } else { Func::OfType(t) }
            }
            _ => {
                let mut args = Vec::new();
                if !matches!(self.peek(), Some(Tok::Sym(")"))) {
                    loop {
                        args.push(self.expr(0)?);
                        if !self.eat(",") {
                            break;
                        }
                    }
                }
                self.function(&name, args)?
            }
        };
        self.expect(")")?;
        Ok(Step::Call(func))
    }

    fn function(&self, name: &str, args: Vec<Ast>) -> Result<Func, FhirPathError> {
        let arity = args.len();
        let mut args = args.into_iter();
        let mut one = || args.next().map(Box::new);
        let bad_arity = || self.syntax(self.pos(), format!("wrong number of arguments to {name}()"));
        let f = match (name, arity) {
            ("where", 1) => Func::Where(one().ok_or_else(bad_arity)?),
            ("select", 1) => Func::Select(one().ok_or_else(bad_arity)?),
            ("exists", 0 | 1) => Func::Exists(one()),
            ("all", 1) => Func::All(one().ok_or_else(bad_arity)?),
            ("empty", 0) => Func::Empty,
            ("not", 0) => Func::Not,
            ("first", 0) => Func::First,
            ("last", 0) => Func::Last,
            ("tail", 0) => Func::Tail,
            ("skip", 1) => Func::Skip(one().ok_or_else(bad_arity)?),
            ("take", 1) => Func::Take(one().ok_or_else(bad_arity)?),
            ("count", 0) => Func::Count,
            ("distinct", 0) => Func::Distinct,
            ("hasValue", 0) => Func::HasValue,
            ("children", 0) => Func::Children,
            ("resolve", 0) => Func::Resolve,
            ("extension", 1) => Func::Extension(one().ok_or_else(bad_arity)?),
            ("startsWith", 1) => Func::StartsWith(one().ok_or_else(bad_arity)?),
            ("endsWith", 1) => Func::EndsWith(one().ok_or_else(bad_arity)?),
            ("contains", 1) => Func::Contains(one().ok_or_else(bad_arity)?),
            ("matches", 1) => {
                let a = one().ok_or_else(bad_arity)?;
                let re = match &*a {
                    Ast::Lit(Lit::Str(p)) => matches_regex(p).map(Box::new),
                    _ => None,
                };
                Func::Matches(a, re)
            }
            ("iif", 2 | 3) => {
                let c = one().ok_or_else(bad_arity)?;
                let t = one().ok_or_else(bad_arity)?;
                Func::Iif(c, t, one())
            }
            ("trace", 1 | 2) => Func::Trace,
            (
                "where" | "select" | "exists" | "all" | "empty" | "not" | "first" | "last" | "tail" | "skip" | "take"
                | "count" | "distinct" | "hasValue" | "children" | "resolve" | "extension" | "startsWith" | "endsWith"
                | "contains" | "matches" | "iif" | "trace",
                _,
            ) => return Err(bad_arity()),
            _ => return Err(self.unsupported(format!("function {name}()"))),
        };
        Ok(f)
    }

    /// `Type`, `FHIR.Type` or `System.Type`.
    fn type_spec(&mut self) -> Result<TypeSpec, FhirPathError> {
        let pos = self.pos();
        let Some(Tok::Ident(first) | Tok::Delimited(first)) = self.next() else {
            return Err(self.syntax(pos, "expected a type name"));
        };
        let qualified = first == "FHIR" || first == "System";
        let name = if qualified && self.eat(".") {
            match self.next() {
                Some(Tok::Ident(n) | Tok::Delimited(n)) => n,
                _ => return Err(self.syntax(self.pos(), "expected a type name")),
            }
        } else {
            return Ok(TypeSpec {
                system: SYSTEM_TYPES.contains(&first.as_str()),
                name: first.into(),
            });
        };
        Ok(TypeSpec {
            system: first == "System",
            name: name.into(),
        })
    }
}

fn str_lit(s: &str) -> Ast {
    Ast::Lit(Lit::Str(s.into()))
}

/// FHIRPath's own types. Spelled so, unqualified, they can only mean these:
/// FHIR's primitive types are lower-case.
const SYSTEM_TYPES: [&str; 7] = ["Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time"];

// ---------------------------------------------------------------------------
// Evaluation

/// An item of a collection during evaluation. `'a` is the resource, `'e`
/// the expression (literals).
#[derive(Debug, Clone, Copy)]
enum Item<'a, 'e> {
    Json {
        value: &'a Value,
        hint: Option<&'static str>,
        /// A primitive's `_element` (id, extensions).
        ext: Option<&'a Value>,
    },
    Lit(&'e Lit),
    Bool(bool),
    Int(i64),
    /// What `resolve()` gives for a reference it cannot load: a resource of
    /// this type (if known), with no content.
    Resolved(Option<&'a str>),
}

fn eval<'a, 'e>(ast: &'e Ast, root: &'a Value, focus: &[Item<'a, 'e>], out: &mut Vec<Item<'a, 'e>>) {
    match ast {
        Ast::Empty => {}
        Ast::Lit(l) => out.push(Item::Lit(l)),
        Ast::Path { head, steps } => {
            let mut cur: Vec<Item<'a, 'e>> = Vec::new();
            let mut steps = &steps[..];
            match head {
                Head::Focus => match steps.split_first() {
                    // Start from the input without copying it: a path that
                    // finds nothing then allocates nothing.
                    Some((first, rest)) => {
                        apply(first, root, focus, &mut cur);
                        steps = rest;
                    }
                    None => cur.extend_from_slice(focus),
                },
                Head::Root => cur.push(Item::Json {
                    value: root,
                    hint: None,
                    ext: None,
                }),
                Head::Expr(e) => eval(e, root, focus, &mut cur),
            }
            let mut next = Vec::new();
            for step in steps {
                // Navigating from nothing gives nothing; functions still run
                // (`exists()`, `empty()` and `count()` have an answer).
                if cur.is_empty() && !matches!(step, Step::Call(_)) {
                    continue;
                }
                next.clear();
                apply(step, root, &cur, &mut next);
                std::mem::swap(&mut cur, &mut next);
            }
            out.append(&mut cur);
        }
        Ast::Union(branches) => {
            let start = out.len();
            let mut tmp = Vec::new();
            for b in branches {
                tmp.clear();
                eval(b, root, focus, &mut tmp);
                for item in tmp.drain(..) {
                    // A union has no duplicates.
                    if !out[start..].iter().any(|o| items_equal(o, &item)) {
                        out.push(item);
                    }
                }
            }
        }
        Ast::Logic(op, l, r) => {
            let lv = eval_bool(l, root, focus);
            // Short-circuit where the right side cannot change the result.
            let r_needed = match op {
                LogicOp::And => lv != Some(false),
                LogicOp::Or => lv != Some(true),
                LogicOp::Implies => lv != Some(false),
                LogicOp::Xor => lv.is_some(),
            };
            let rv = if r_needed { eval_bool(r, root, focus) } else { None };
            let res = match op {
                LogicOp::And => match (lv, rv) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                LogicOp::Or => match (lv, rv) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                LogicOp::Xor => match (lv, rv) {
                    (Some(a), Some(b)) => Some(a != b),
                    _ => None,
                },
                LogicOp::Implies => match (lv, rv) {
                    (Some(false), _) | (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                },
            };
            out.extend(res.map(Item::Bool));
        }
        Ast::Equality { negate, equiv, l, r } => {
            let (lv, rv) = (collect(l, root, focus), collect(r, root, focus));
            let eq = if *equiv {
                // Equivalence: empty ~ empty, order-free, case-free strings.
                Some(lv.len() == rv.len() && lv.iter().all(|a| rv.iter().any(|b| items_equivalent(a, b))))
            } else if lv.is_empty() || rv.is_empty() {
                None
            } else {
                Some(lv.len() == rv.len() && lv.iter().zip(&rv).all(|(a, b)| items_equal(a, b)))
            };
            out.extend(eq.map(|e| Item::Bool(e != *negate)));
        }
        Ast::Compare(op, l, r) => {
            let (lv, rv) = (collect(l, root, focus), collect(r, root, focus));
            if let ([a], [b]) = (&lv[..], &rv[..])
                && let Some(ord) = compare(a, b)
            {
                out.push(Item::Bool(match op {
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Le => ord != Ordering::Greater,
                    CmpOp::Ge => ord != Ordering::Less,
                }));
            }
        }
        Ast::In(l, r) => {
            let lv = collect(l, root, focus);
            if let [x] = &lv[..] {
                let rv = collect(r, root, focus);
                out.push(Item::Bool(rv.iter().any(|y| items_equal(x, y))));
            }
        }
        Ast::Is(e, t) => {
            if let [x] = &collect(e, root, focus)[..] {
                out.push(Item::Bool(item_is(x, t)));
            }
        }
        Ast::As(e, t) => {
            let mut v = collect(e, root, focus);
            v.retain(|x| item_is(x, t));
            out.append(&mut v);
        }
    }
}

fn matches_regex(pattern: &str) -> Option<regex::Regex> {
    regex::RegexBuilder::new(pattern).size_limit(1 << 20).build().ok()
}

fn collect<'a, 'e>(ast: &'e Ast, root: &'a Value, focus: &[Item<'a, 'e>]) -> Vec<Item<'a, 'e>> {
    let mut v = Vec::new();
    eval(ast, root, focus, &mut v);
    v
}

fn eval_bool<'a, 'e>(ast: &'e Ast, root: &'a Value, focus: &[Item<'a, 'e>]) -> Option<bool> {
    to_bool(&collect(ast, root, focus))
}

/// A collection as a boolean: empty is unknown, a single boolean is itself,
/// any other single item is true; more than one is an error (unknown).
fn to_bool(items: &[Item<'_, '_>]) -> Option<bool> {
    match items {
        [Item::Bool(b)]
        | [
            Item::Json {
                value: Value::Bool(b), ..
            },
        ]
        | [Item::Lit(Lit::Bool(b))] => Some(*b),
        [_] => Some(true),
        _ => None,
    }
}

/// An integer argument (`skip(2)`, `[0]`).
fn int_arg<'a, 'e>(ast: &'e Ast, root: &'a Value, focus: &[Item<'a, 'e>]) -> Option<usize> {
    let n = match collect(ast, root, focus)[..] {
        [Item::Lit(Lit::Num { value, .. })] => *value,
        [Item::Int(i)] => i as f64,
        [Item::Json { value, .. }] => value.as_f64()?,
        _ => return None,
    };
    (n >= 0.0 && n.fract() == 0.0).then_some(n as usize)
}

/// A string argument (`extension('http://…')`), from the expression or the
/// resource.
fn str_arg<'a, 'e>(ast: &'e Ast, root: &'a Value, focus: &[Item<'a, 'e>]) -> Option<StrRef<'a, 'e>> {
    match collect(ast, root, focus)[..] {
        [Item::Lit(Lit::Str(s))] => Some(StrRef::E(s)),
        [
            Item::Json {
                value: Value::String(s),
                ..
            },
        ] => Some(StrRef::A(s)),
        _ => None,
    }
}

enum StrRef<'a, 'e> {
    A(&'a str),
    E(&'e str),
}

impl StrRef<'_, '_> {
    fn as_str(&self) -> &str {
        match self {
            StrRef::A(s) => s,
            StrRef::E(s) => s,
        }
    }
}

fn single_str<'x>(items: &[Item<'x, 'x>]) -> Option<&'x str> {
    match items {
        [
            Item::Json {
                value: Value::String(s),
                ..
            },
        ] => Some(s),
        [Item::Lit(Lit::Str(s))] => Some(s),
        _ => None,
    }
}

fn apply<'a, 'e>(step: &'e Step, root: &'a Value, cur: &[Item<'a, 'e>], out: &mut Vec<Item<'a, 'e>>) {
    match step {
        Step::Child(name) => {
            for item in cur {
                if let Item::Json {
                    value: Value::Object(map),
                    ..
                } = item
                {
                    child(map, name, item, out);
                }
            }
        }
        Step::Index(ix) => {
            if let Some(i) = int_arg(ix, root, cur)
                && let Some(item) = cur.get(i)
            {
                out.push(*item);
            }
        }
        Step::Call(f) => call(f, root, cur, out),
    }
}

/// `name` of one object: the element, the choice element `name[x]`, or the
/// object itself when `name` is its resource type.
fn child<'a, 'e>(map: &'a Map<String, Value>, name: &Name, item: &Item<'a, 'e>, out: &mut Vec<Item<'a, 'e>>) {
    if name.type_like {
        // `resourceType` comes first in almost every resource: no hashing.
        let rt = match map.iter().next() {
            Some((k, v)) if k == "resourceType" => v.as_str(),
            _ => map.get("resourceType").and_then(Value::as_str),
        };
        if rt.is_some_and(|rt| type_name_matches_resource(&name.name, rt)) {
            out.push(*item);
        }
        // Element names are lower-case: nothing else to find.
        return;
    }
    // One pass over the (small) object finds the element, its `_element`
    // and choice elements, cheaper than hashing the name for each.
    let n = name.name.as_bytes();
    let (mut found, mut ext) = (None, None);
    for (k, v) in map {
        let kb = k.as_bytes();
        if kb.first() == n.first() && kb.starts_with(n) {
            if kb.len() == n.len() {
                found = Some(v);
            } else if let Some(t) = choice_type(&k[n.len()..]) {
                push_flat(v, Some(t), choice_ext(map, k, v), out);
            }
        } else if kb.first() == Some(&b'_') && &kb[1..] == n {
            ext = Some(v);
        }
    }
    if let Some(v) = found {
        push_flat(v, None, ext, out);
    }
}

/// The `_valueString` of a primitive choice element `valueString`.
fn choice_ext<'a>(map: &'a Map<String, Value>, key: &str, v: &Value) -> Option<&'a Value> {
    let complex = match v {
        Value::Object(_) => true,
        Value::Array(a) => a.iter().any(Value::is_object),
        _ => false,
    };
    if complex {
        return None;
    }
    map.iter()
        .find(|(k, _)| k.strip_prefix('_') == Some(key))
        .map(|(_, e)| e)
}

/// Pushes a value, or each item of an array (FHIRPath collections are
/// flat), paired with its primitive extension.
fn push_flat<'a, 'e>(v: &'a Value, hint: Option<&'static str>, ext: Option<&'a Value>, out: &mut Vec<Item<'a, 'e>>) {
    match v {
        Value::Array(items) => {
            let exts = ext.and_then(Value::as_array);
            for (i, value) in items.iter().enumerate() {
                if !value.is_null() {
                    out.push(Item::Json {
                        value,
                        hint,
                        ext: exts.and_then(|e| e.get(i)).filter(|e| e.is_object()),
                    });
                }
            }
        }
        Value::Null => {}
        value => out.push(Item::Json {
            value,
            hint,
            ext: ext.filter(|e| e.is_object()),
        }),
    }
}

fn call<'a, 'e>(f: &'e Func, root: &'a Value, cur: &[Item<'a, 'e>], out: &mut Vec<Item<'a, 'e>>) {
    let holds = |c: &'e Ast, item: &Item<'a, 'e>| eval_bool(c, root, std::slice::from_ref(item)) == Some(true);
    match f {
        Func::Where(c) => out.extend(cur.iter().filter(|i| holds(c, i))),
        Func::Select(p) => {
            for item in cur {
                eval(p, root, std::slice::from_ref(item), out);
            }
        }
        Func::Exists(None) => out.push(Item::Bool(!cur.is_empty())),
        Func::Exists(Some(c)) => out.push(Item::Bool(cur.iter().any(|i| holds(c, i)))),
        Func::All(c) => out.push(Item::Bool(cur.iter().all(|i| holds(c, i)))),
        Func::Empty => out.push(Item::Bool(cur.is_empty())),
        Func::Not => out.extend(to_bool(cur).map(|b| Item::Bool(!b))),
        Func::First => out.extend(cur.first()),
        Func::Last => out.extend(cur.last()),
        Func::Tail => out.extend(cur.iter().skip(1)),
        Func::Skip(n) => out.extend(cur.iter().skip(int_arg(n, root, cur).unwrap_or(0))),
        Func::Take(n) => out.extend(cur.iter().take(int_arg(n, root, cur).unwrap_or(0))),
        Func::Count => out.push(Item::Int(cur.len() as i64)),
        Func::Distinct => {
            let start = out.len();
            for item in cur {
                if !out[start..].iter().any(|o| items_equal(o, item)) {
                    out.push(*item);
                }
            }
        }
        Func::HasValue => out.push(Item::Bool(matches!(
            cur,
            [Item::Json {
                value: Value::String(_) | Value::Number(_) | Value::Bool(_),
                ..
            }]
        ))),
        Func::Children => {
            for item in cur {
                if let Item::Json {
                    value: Value::Object(map),
                    ..
                } = item
                {
                    for (k, v) in map {
                        if k != "resourceType" && !k.starts_with('_') {
                            push_flat(v, None, None, out);
                        }
                    }
                }
            }
        }
        Func::Resolve => {
            for item in cur {
                if let Item::Json { value, .. } = item {
                    resolve(value, root, out);
                }
            }
        }
        Func::Is(t) => {
            if let [x] = cur {
                out.push(Item::Bool(item_is(x, t)));
            }
        }
        Func::OfType(t) => out.extend(cur.iter().filter(|x| item_is(x, t))),
        Func::Extension(url) => {
            let Some(url) = str_arg(url, root, cur) else { return };
            for item in cur {
                let Item::Json { value, ext, .. } = item else { continue };
                let holder = if value.is_object() { Some(*value) } else { *ext };
                let Some(exts) = holder.and_then(|h| h.get("extension")).and_then(Value::as_array) else {
                    continue;
                };
                for e in exts {
                    if e.get("url").and_then(Value::as_str) == Some(url.as_str()) {
                        out.push(Item::Json {
                            value: e,
                            hint: Some("Extension"),
                            ext: None,
                        });
                    }
                }
            }
        }
        Func::StartsWith(a) | Func::EndsWith(a) | Func::Contains(a) => {
            let Some(s) = single_str(cur) else { return };
            let Some(arg) = str_arg(a, root, cur) else { return };
            let arg = arg.as_str();
            out.push(Item::Bool(match f {
                Func::StartsWith(_) => s.starts_with(arg),
                Func::EndsWith(_) => s.ends_with(arg),
                _ => s.contains(arg),
            }));
        }
        Func::Matches(_, Some(re)) => {
            let Some(s) = single_str(cur) else { return };
            out.push(Item::Bool(re.is_match(s)));
        }
        Func::Matches(a, None) => {
            let Some(s) = single_str(cur) else { return };
            let Some(pattern) = str_arg(a, root, cur) else { return };
            // An invalid (or oversized) pattern gives no result, as an
            // unknown value does: the invariant then is not satisfied.
            let Some(re) = matches_regex(pattern.as_str()) else {
                return;
            };
            out.push(Item::Bool(re.is_match(s)));
        }
        Func::Iif(c, t, e) => {
            if eval_bool(c, root, cur) == Some(true) {
                eval(t, root, cur, out);
            } else if let Some(e) = e {
                eval(e, root, cur, out);
            }
        }
        Func::Trace => out.extend_from_slice(cur),
    }
}

/// `resolve()` without a store: a contained resource is found; any other
/// reference becomes an empty resource of the type its reference (or
/// `type`) names, enough for `resolve() is Patient`.
fn resolve<'a, 'e>(v: &'a Value, root: &'a Value, out: &mut Vec<Item<'a, 'e>>) {
    let reference = match v {
        Value::String(s) => Some(s.as_str()),
        Value::Object(m) => m.get("reference").and_then(Value::as_str),
        _ => return,
    };
    if let Some(id) = reference.and_then(|r| r.strip_prefix('#')) {
        let contained = root.get("contained").and_then(Value::as_array).into_iter().flatten();
        out.extend(
            contained
                .filter(|c| c.get("id").and_then(Value::as_str) == Some(id))
                .map(|value| Item::Json {
                    value,
                    hint: None,
                    ext: None,
                }),
        );
        return;
    }
    let t = reference
        .and_then(literal_reference_type)
        .or_else(|| v.get("type").and_then(Value::as_str));
    if t.is_some() || reference.is_some() {
        out.push(Item::Resolved(t));
    }
}

// ---------------------------------------------------------------------------
// Values and types

enum Prim<'x> {
    Str(&'x str),
    Num(f64),
    Bool(bool),
    Complex(&'x Value),
    None,
}

fn prim<'x>(item: &Item<'x, 'x>) -> Prim<'x> {
    match *item {
        Item::Json { value, .. } => match value {
            Value::String(s) => Prim::Str(s),
            Value::Number(n) => n.as_f64().map_or(Prim::None, Prim::Num),
            Value::Bool(b) => Prim::Bool(*b),
            v => Prim::Complex(v),
        },
        Item::Lit(Lit::Str(s) | Lit::Date(s)) => Prim::Str(s),
        Item::Lit(Lit::Num { value, .. }) => Prim::Num(*value),
        Item::Lit(Lit::Bool(b)) => Prim::Bool(*b),
        Item::Bool(b) => Prim::Bool(b),
        Item::Int(i) => Prim::Num(i as f64),
        Item::Resolved(_) => Prim::None,
    }
}

fn items_equal(a: &Item<'_, '_>, b: &Item<'_, '_>) -> bool {
    match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => x == y,
        (Prim::Num(x), Prim::Num(y)) => x == y,
        (Prim::Bool(x), Prim::Bool(y)) => x == y,
        (Prim::Complex(x), Prim::Complex(y)) => std::ptr::eq(x, y) || x == y,
        _ => false,
    }
}

fn items_equivalent(a: &Item<'_, '_>, b: &Item<'_, '_>) -> bool {
    match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => x
            .split_whitespace()
            .map(str::to_lowercase)
            .eq(y.split_whitespace().map(str::to_lowercase)),
        _ => items_equal(a, b),
    }
}

fn compare(a: &Item<'_, '_>, b: &Item<'_, '_>) -> Option<Ordering> {
    match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => Some(x.cmp(y)),
        (Prim::Num(x), Prim::Num(y)) => x.partial_cmp(&y),
        _ => None,
    }
}

/// The FHIR type of an item, when known.
fn item_type<'a>(item: &Item<'a, '_>) -> Option<&'a str> {
    match *item {
        Item::Json { hint: Some(h), .. } => Some(h),
        Item::Json { value, .. } => match value {
            Value::Object(m) => m.get("resourceType").and_then(Value::as_str),
            Value::Bool(_) => Some("boolean"),
            Value::Number(n) if n.is_f64() => Some("decimal"),
            Value::Number(_) => Some("integer"),
            // A string may be any primitive type.
            _ => None,
        },
        Item::Lit(Lit::Str(_)) => Some("string"),
        Item::Lit(Lit::Date(_)) => Some("dateTime"),
        Item::Lit(Lit::Num { integer: true, .. }) | Item::Int(_) => Some("integer"),
        Item::Lit(Lit::Num { integer: false, .. }) => Some("decimal"),
        Item::Lit(Lit::Bool(_)) | Item::Bool(_) => Some("boolean"),
        Item::Resolved(t) => t,
    }
}

fn item_is(item: &Item<'_, '_>, t: &TypeSpec) -> bool {
    let is_resource = matches!(item, Item::Resolved(Some(_)))
        || matches!(item, Item::Json { value: Value::Object(m), hint: None, .. } if m.contains_key("resourceType"));
    if !t.system && (&*t.name == "Resource" || &*t.name == "DomainResource") {
        return is_resource && item_type(item).is_some_and(|rt| type_name_matches_resource(&t.name, rt));
    }
    match item_type(item) {
        Some(actual) if t.system => system_type(actual) == Some(&*t.name),
        Some(actual) => actual == &*t.name || supertype(actual) == Some(&*t.name),
        // Unknown type: accept what has the right shape.
        None => match item {
            Item::Json {
                value: Value::String(_),
                ..
            } => {
                if t.system {
                    matches!(&*t.name, "String" | "Date" | "DateTime" | "Time")
                } else {
                    STRING_TYPES.contains(&&*t.name)
                }
            }
            Item::Json {
                value: Value::Object(_),
                ..
            } => !t.system && t.name.starts_with(|c: char| c.is_ascii_uppercase()),
            _ => false,
        },
    }
}

/// FHIR primitive types written as JSON strings.
const STRING_TYPES: [&str; 15] = [
    "string",
    "code",
    "id",
    "markdown",
    "uri",
    "url",
    "canonical",
    "oid",
    "uuid",
    "base64Binary",
    "date",
    "dateTime",
    "instant",
    "time",
    "xhtml",
];

/// The FHIR type a type derives from, where `is` / `as` should see through.
fn supertype(t: &str) -> Option<&'static str> {
    Some(match t {
        "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity" => "Quantity",
        "code" | "id" | "markdown" => "string",
        "url" | "canonical" | "oid" | "uuid" => "uri",
        "positiveInt" | "unsignedInt" => "integer",
        _ => return None,
    })
}

/// The FHIRPath (System) type a FHIR type maps to.
fn system_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "boolean" => "Boolean",
        "integer" | "positiveInt" | "unsignedInt" => "Integer",
        "decimal" => "Decimal",
        "date" => "Date",
        "dateTime" | "instant" => "DateTime",
        "time" => "Time",
        "Quantity" | "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity" => "Quantity",
        t if STRING_TYPES.contains(&t) => "String",
        _ => return None,
    })
}

/// The type a choice element's suffix names (`valueDateTime` → `dateTime`),
/// or `None` when the suffix is not a FHIR type (`classHistory` is not
/// `class[x]`).
fn choice_type(suffix: &str) -> Option<&'static str> {
    Some(match suffix {
        "Base64Binary" => "base64Binary",
        "Boolean" => "boolean",
        "Canonical" => "canonical",
        "Code" => "code",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Decimal" => "decimal",
        "Id" => "id",
        "Instant" => "instant",
        "Integer" => "integer",
        "Markdown" => "markdown",
        "Oid" => "oid",
        "PositiveInt" => "positiveInt",
        "String" => "string",
        "Time" => "time",
        "UnsignedInt" => "unsignedInt",
        "Uri" => "uri",
        "Url" => "url",
        "Uuid" => "uuid",
        "Address" => "Address",
        "Age" => "Age",
        "Annotation" => "Annotation",
        "Attachment" => "Attachment",
        "CodeableConcept" => "CodeableConcept",
        "Coding" => "Coding",
        "ContactDetail" => "ContactDetail",
        "ContactPoint" => "ContactPoint",
        "Contributor" => "Contributor",
        "Count" => "Count",
        "DataRequirement" => "DataRequirement",
        "Distance" => "Distance",
        "Dosage" => "Dosage",
        "Duration" => "Duration",
        "Expression" => "Expression",
        "HumanName" => "HumanName",
        "Identifier" => "Identifier",
        "Meta" => "Meta",
        "Money" => "Money",
        "ParameterDefinition" => "ParameterDefinition",
        "Period" => "Period",
        "Quantity" => "Quantity",
        "Range" => "Range",
        "Ratio" => "Ratio",
        "Reference" => "Reference",
        "RelatedArtifact" => "RelatedArtifact",
        "SampledData" => "SampledData",
        "Signature" => "Signature",
        "Timing" => "Timing",
        "TriggerDefinition" => "TriggerDefinition",
        "UsageContext" => "UsageContext",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval_on<'a>(src: &str, r: &'a Value) -> Vec<Node<'a>> {
        Expr::parse(src).unwrap_or_else(|e| panic!("{e}")).evaluate(r)
    }

    fn values<'a>(src: &str, r: &'a Value) -> Vec<&'a Value> {
        eval_on(src, r).into_iter().map(|n| n.value).collect()
    }

    #[test]
    fn every_r4_search_expression_parses() {
        let defs: Vec<Value> = serde_json::from_str(include_str!("definitions/search-parameters.json")).unwrap();
        let mut failed = Vec::new();
        let mut count = 0;
        for d in &defs {
            let exprs = d["expression"].as_str().into_iter().chain(
                d["component"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["expression"].as_str()),
            );
            for e in exprs {
                count += 1;
                if let Err(err) = Expr::parse(e) {
                    failed.push(format!("{}: {err}", d["url"]));
                }
            }
        }
        assert!(count > 1400, "{count}");
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn expressions_are_shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Expr>();
    }

    #[test]
    fn a_leading_type_name_filters_the_root() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/1"}});
        assert!(eval_on("Patient.name", &obs).is_empty());
        assert_eq!(eval_on("Observation.subject", &obs).len(), 1);
        assert_eq!(eval_on("Resource.subject", &obs).len(), 1);
        assert_eq!(eval_on("subject", &obs).len(), 1);
    }

    #[test]
    fn choice_elements_are_typed_by_their_key() {
        let obs = json!({"resourceType": "Observation",
            "valueQuantity": {"value": 72, "unit": "kg"},
            "effectivePeriod": {"start": "2024"},
            "component": [{"valueQuantity": {"value": 1}}, {"valueString": "x"}, {"valueCodeableConcept": {"text": "y"}}]});
        let v = eval_on("Observation.value", &obs);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].type_hint, Some("Quantity"));
        assert_eq!(eval_on("Observation.effective", &obs)[0].type_hint, Some("Period"));
        assert_eq!(eval_on("(Observation.component.value as Quantity)", &obs).len(), 1);
        assert_eq!(
            eval_on("Observation.component.value.as(string)", &obs)[0].type_hint,
            Some("string")
        );
        assert_eq!(
            eval_on("Observation.component.value.ofType(CodeableConcept)", &obs).len(),
            1
        );
        assert_eq!(eval_on("Observation.component.value", &obs).len(), 3);
        assert!(eval_on("Observation.value.as(Period)", &obs).is_empty());
        assert_eq!(eval_on("(Observation.value as Quantity).unit", &obs)[0].value, "kg");
        // `System.Quantity` and subtypes: an Age is a Quantity.
        let c = json!({"resourceType": "Condition", "onsetAge": {"value": 3}, "onsetString": "childhood"});
        assert_eq!(eval_on("Condition.onset.as(Quantity)", &c).len(), 1);
        assert_eq!(eval_on("Condition.onset.as(System.String)", &c).len(), 1);
        assert_eq!(eval_on("Condition.onset.as(DateTime)", &c).len(), 0);
        // `classHistory` is not a choice of `class`.
        let e = json!({"resourceType": "Encounter", "classHistory": [{"class": {"code": "AMB"}}]});
        assert!(eval_on("Encounter.class", &e).is_empty());
    }

    #[test]
    fn unions_where_and_resolve() {
        let src = "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) \
                   | Observation.subject.where(resolve() is Patient)";
        let to = |r: Value| json!({"resourceType": "Observation", "subject": r});
        for (r, n) in [
            (json!({"reference": "Patient/1"}), 1),
            (json!({"reference": "https://x.org/fhir/Patient/1/_history/3"}), 1),
            (json!({"reference": "Group/1"}), 0),
            (
                json!({"reference": "urn:uuid:9d1b5b0e-2b5a-4b3e-9b55-0f5f0a5c2f1a", "type": "Patient"}),
                1,
            ),
            (json!({"identifier": {"value": "x"}, "type": "Patient"}), 1),
            (json!({"identifier": {"value": "x"}}), 0),
            (json!({"reference": "#p1"}), 1),
        ] {
            let mut o = to(r.clone());
            o["contained"] = json!([{"resourceType": "Patient", "id": "p1"}]);
            assert_eq!(eval_on(src, &o).len(), n, "{r}");
        }
        let e = Expr::parse(src).unwrap();
        assert!(e.for_resource_type("Patient").is_none());
        let specialised = e.for_resource_type("Observation").unwrap();
        assert!(matches!(specialised.ast, Ast::Path { .. }));

        let p = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
        assert_eq!(
            values("Patient.telecom.where(system='email').value", &p),
            [&json!("a@b")]
        );
        assert_eq!(
            values("Patient.telecom.where(system!='email').value", &p),
            [&json!("1")]
        );
        assert_eq!(
            values("Patient.telecom.where(system='email' or value='1').value", &p).len(),
            2
        );
        assert_eq!(
            values("Patient.telecom.value | Patient.telecom.value", &p).len(),
            2,
            "no duplicates"
        );
        assert_eq!(values("Patient.telecom.first().value", &p), [&json!("1")]);
        assert_eq!(values("Patient.telecom[1].value", &p), [&json!("a@b")]);
        assert_eq!(values("Patient.telecom.exists()", &p), [&json!(true)]);
        assert_eq!(values("Patient.name.empty()", &p), [&json!(true)]);
        assert_eq!(values("Patient.name.exists().not()", &p), [&json!(true)]);
        assert_eq!(
            values("Patient.telecom.where(value.startsWith('a')).system", &p),
            [&json!("email")]
        );
        assert_eq!(values("Patient.telecom.select(system)", &p).len(), 2);
        assert_eq!(values("Patient.telecom.count() > 1", &p), [&json!(true)]);
        assert_eq!(values("'email' in Patient.telecom.system", &p), [&json!(true)]);
        assert_eq!(values("Patient.telecom.system contains 'fax'", &p), [&json!(false)]);
        assert_eq!(values("Patient is Patient", &p), [&json!(true)]);
        assert_eq!(values("Patient.telecom.all(value.exists())", &p), [&json!(true)]);
        // matches(): found anywhere, anchors for a whole-string match; an
        // invalid pattern gives nothing rather than an answer.
        assert_eq!(
            values("Patient.telecom[0].value.matches('^[0-9]+$')", &p),
            [&json!(true)]
        );
        assert_eq!(
            values("Patient.telecom[1].value.matches('^[0-9]+$')", &p),
            [&json!(false)]
        );
        assert_eq!(values("Patient.telecom[1].value.matches('@')", &p), [&json!(true)]);
        assert!(values("Patient.telecom[1].value.matches('(')", &p).is_empty());
    }

    #[test]
    fn deceased_is_a_boolean_expression() {
        let e = Expr::parse("Patient.deceased.exists() and Patient.deceased != false").unwrap();
        for (p, want) in [
            (
                json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}),
                true,
            ),
            (json!({"resourceType": "Patient", "deceasedBoolean": true}), true),
            (json!({"resourceType": "Patient", "deceasedBoolean": false}), false),
            (json!({"resourceType": "Patient"}), false),
        ] {
            let v = e.evaluate(&p);
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].value, &Value::Bool(want), "{p}");
            assert_eq!(v[0].type_hint, Some("boolean"));
        }
        // FHIRPath says `false` on another type; extraction never asks.
        assert_eq!(
            e.evaluate(&json!({"resourceType": "Person"}))[0].value,
            &Value::Bool(false)
        );
        assert!(e.for_resource_type("Person").is_none());
    }

    #[test]
    fn primitive_extensions_do_not_get_in_the_way() {
        let p = json!({"resourceType": "Patient", "birthDate": "1960-01-01",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1960-01-01T08:00:00+01:00"}]},
            "name": [{"given": ["A", "B"], "_given": [null, {"extension": [{"url": "u", "valueString": "x"}]}]}],
            "extension": [{"url": "http://x/a", "valueCode": "c"}, {"url": "http://x/b", "valueBoolean": true}]});
        assert_eq!(values("Patient.birthDate", &p), [&json!("1960-01-01")]);
        assert_eq!(
            values(
                "Patient.birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime').value",
                &p
            ),
            [&json!("1960-01-01T08:00:00+01:00")]
        );
        assert_eq!(values("Patient.name.given", &p).len(), 2);
        assert_eq!(values("Patient.name.given.extension('u').value", &p), [&json!("x")]);
        assert_eq!(values("Patient.extension('http://x/a').value", &p), [&json!("c")]);
        assert_eq!(
            values("Patient.extension.where(url = 'http://x/b').exists()", &p),
            [&json!(true)]
        );
        assert_eq!(values("Patient.birthDate.hasValue()", &p), [&json!(true)]);
    }

    #[test]
    fn syntax_and_unsupported_features_are_reported() {
        for bad in [
            "Patient.",
            "Patient.name.where(",
            "Patient..name",
            "(Patient.name",
            "'x",
            "Patient.name +",
        ] {
            assert!(
                matches!(
                    Expr::parse(bad),
                    Err(FhirPathError::Syntax { .. } | FhirPathError::Unsupported { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Expr::parse("Patient.name.replaceMatches('x', 'y')"),
            Err(FhirPathError::Unsupported { .. })
        ));
        assert!(matches!(
            Expr::parse("Observation.value + 1"),
            Err(FhirPathError::Unsupported { .. })
        ));
        assert!(matches!(Expr::parse("%vs-foo"), Err(FhirPathError::Unsupported { .. })));
        let deep = format!("{}Patient{}", "(".repeat(500), ")".repeat(500));
        assert!(matches!(Expr::parse(&deep), Err(FhirPathError::Unsupported { .. })));
        assert!(Expr::parse(&format!("{}Patient{}", "(".repeat(20), ")".repeat(20))).is_ok());
    }

    #[test]
    fn literals_and_comparisons() {
        let o = json!({"resourceType": "Observation", "valueInteger": 5, "issued": "2024-03-05T10:00:00Z"});
        assert_eq!(values("Observation.value > 4", &o), [&json!(true)]);
        assert_eq!(values("Observation.value = 5.0", &o), [&json!(true)]);
        assert_eq!(values("Observation.value <= -1", &o), [&json!(false)]);
        assert_eq!(values("Observation.issued = @2024-03-05T10:00:00Z", &o), [&json!(true)]);
        assert_eq!(values("Observation.value.is(Integer)", &o), [&json!(true)]);
        assert_eq!(
            values("iif(Observation.value > 4, Observation.issued, {})", &o).len(),
            1
        );
        assert_eq!(values("{} | Observation.issued", &o).len(), 1);
        assert_eq!(values("`Observation`.`value` ~ 5", &o), [&json!(true)]);
    }
}
