//! The `pattern` step's language (docs/cep.md): the sequence text (`"a b+? -> !c -> d{2,3}"`),
//! its conditions in SQL, contiguity, the after-match skip strategy and the measures, checked
//! into a [`PatternPlan`] that `operators::cep` runs.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{visit_expressions, Expr as Ast, FunctionArg, FunctionArgExpr, FunctionArguments, Value as Lit};

use crate::expr::{self, CompiledExpr};
use crate::job::{Located, PatternSpec};
use crate::plan::{AggPlan, V};
use crate::schema::Schema;
use crate::value::DataType;

/// How the events of a match may be spread over the key's stream (Flink CEP's contiguity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contiguity {
    /// The next event of the key (`a b`, Flink's `next`).
    Strict,
    /// The next event that matches, skipping others (`a -> b`, Flink's `followedBy`).
    Relaxed,
    /// Any later event that matches, each one a separate match (`a ->> b`, `followedByAny`).
    Any,
}

/// What happens to other partial matches once a match is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipStrategy {
    NoSkip,
    /// Drop partial matches that started with the match's first event.
    ToNext,
    /// Drop partial matches that started at or before the match's last event.
    PastLastEvent,
    /// Drop partial matches that started before the first event of the step.
    ToFirst(usize),
    /// Drop partial matches that started before the last event of the step.
    ToLast(usize),
}

/// Unbounded repetition.
pub const MANY: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct PatternStep {
    pub name: String,
    /// `!name`: the partial match dies on an event matching the condition (strict: the next
    /// event; relaxed: any event before the next step's).
    pub negated: bool,
    pub min: u32,
    pub max: u32,
    /// A loop (a range of counts above one) that takes as many events as it can, as in
    /// MATCH_RECOGNIZE: the next step never takes or skips an event this step's condition
    /// accepts, whatever its count (Flink's `greedy()`). Reluctant loops (`+?`) and `?` try
    /// every count instead.
    pub greedy: bool,
    /// How this step's first event follows the previous step's last.
    pub outer: Contiguity,
    /// How this step's events follow each other (looping steps).
    pub inner: Contiguity,
    pub cond: Option<CondPlan>,
    pub until: Option<CondPlan>,
}

/// A condition with the values it needs besides the current event: each [`CondRef`] fills one
/// slot after the event's fields in the row the expression reads.
#[derive(Debug, Clone)]
pub struct CondPlan {
    pub text: String,
    pub schema: Schema,
    pub refs: Vec<CondRef>,
}

impl CondPlan {
    pub fn compile(&self) -> Option<CompiledExpr> {
        expr::compile(&self.text, &self.schema).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefFunc {
    /// The n-th last event's field (0 = the last).
    Last(usize),
    /// The n-th event's field from the first (0 = the first).
    First(usize),
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// A value taken from the events a partial match holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CondRef {
    /// The step whose events count; `None` for all events of the match.
    pub step: Option<usize>,
    /// Row position of the field (`None` for `count(*)`).
    pub pos: Option<usize>,
    pub func: RefFunc,
    /// The event being tested counts too (MATCH_RECOGNIZE: a step's own aggregates include
    /// the row being tested for it).
    pub with_current: bool,
}

/// A measure: an aggregate over the match's events, or over one step's.
#[derive(Debug, Clone)]
pub struct MeasurePlan {
    pub step: Option<usize>,
    pub agg: AggPlan,
}

#[derive(Debug, Clone)]
pub struct PatternPlan {
    pub steps: Vec<PatternStep>,
    /// Row positions of the key fields (not the tenant).
    pub key_pos: Vec<usize>,
    pub within: Option<i64>,
    pub skip: SkipStrategy,
    pub timeouts: bool,
    pub max_partials: usize,
    pub measures: Vec<MeasurePlan>,
    /// What measure arguments are compiled against.
    pub measure_schema: Schema,
    /// Physical width of an event row.
    pub width: usize,
    pub time_pos: usize,
}

/// A step as written in the sequence, before its conditions are known.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedStep {
    pub name: String,
    pub negated: bool,
    pub min: u32,
    pub max: u32,
    pub reluctant: bool,
    /// How it is joined to the previous step (the first step: `Strict`, unused).
    pub join: Contiguity,
    /// Character column (1-based) in the sequence text.
    pub column: usize,
}

/// Parses the sequence text; errors carry the 1-based column.
pub fn parse_sequence(text: &str) -> Result<Vec<ParsedStep>, (usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut steps: Vec<ParsedStep> = Vec::new();
    let number = |i: &mut usize| -> Option<u32> {
        let start = *i;
        while *i < chars.len() && chars[*i].is_ascii_digit() {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>().parse().ok()
    };
    loop {
        let before = i;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i == chars.len() {
            break;
        }
        let join = if steps.is_empty() {
            Contiguity::Strict
        } else if chars[i..].starts_with(&['-', '>', '>']) {
            i += 3;
            Contiguity::Any
        } else if chars[i..].starts_with(&['-', '>']) {
            i += 2;
            Contiguity::Relaxed
        } else if i > before {
            Contiguity::Strict
        } else {
            return Err((i + 1, format!("unexpected `{}`: expected `->`, `->>` or a space before the next step", chars[i])));
        };
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let column = i + 1;
        let negated = chars.get(i) == Some(&'!');
        if negated {
            i += 1;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            let found = chars.get(i).map_or("the end".to_string(), |c| format!("`{c}`"));
            return Err((i + 1, format!("expected a step name (letters, digits, _), found {found}")));
        }
        let (min, max, quantified) = match chars.get(i) {
            Some('*') => (0, MANY, true),
            Some('+') => (1, MANY, true),
            Some('?') => (0, 1, true),
            Some('{') => {
                let open = i;
                i += 1;
                let lo = number(&mut i);
                let (lo, hi) = if chars.get(i) == Some(&',') {
                    i += 1;
                    (lo.unwrap_or(0), number(&mut i).unwrap_or(MANY))
                } else {
                    let n = lo.ok_or((i + 1, "expected a count, e.g. {3}, {2,4}, {2,} or {,4}".to_string()))?;
                    (n, n)
                };
                if chars.get(i) != Some(&'}') {
                    return Err((i + 1, "expected `}` closing the quantifier".into()));
                }
                if hi == 0 || lo > hi {
                    return Err((open + 1, format!("invalid quantifier {{{lo},{hi}}}: expected at least one event and min <= max")));
                }
                (lo, hi, true)
            }
            _ => (1, 1, false),
        };
        if quantified {
            i += 1;
        }
        let reluctant = quantified && chars.get(i) == Some(&'?');
        if reluctant {
            i += 1;
        }
        steps.push(ParsedStep { name, negated, min, max, reluctant, join, column });
    }
    if steps.is_empty() {
        return Err((1, "expected at least one step, e.g. \"a -> b\"".into()));
    }
    Ok(steps)
}

const REF_FUNCS: &[&str] = &["count", "sum", "avg", "min", "max", "first", "last"];

impl V<'_> {
    fn seq_err(&mut self, loc: &Located<String>, column: usize, message: String) {
        self.errors.push(crate::job::value_error(self.file, self.text, loc, 1, column as u64, message));
    }

    /// Checks a `pattern` step against the schema it sees; returns the plan and its output
    /// fields after the tenant and keys (`match_start`, `match_end`, `timed_out`, measures).
    pub(crate) fn pattern(&mut self, p: &PatternSpec, schema: &Schema, width: usize, time_pos: Option<usize>) -> Option<PatternPlan> {
        let parsed = match parse_sequence(&p.pattern.value) {
            Ok(s) => s,
            Err((col, msg)) => {
                self.seq_err(&p.pattern, col, msg);
                return None;
            }
        };
        let names: Vec<&str> = parsed.iter().map(|s| s.name.as_str()).collect();
        let errors_before = self.errors.len();
        for (i, s) in parsed.iter().enumerate() {
            if names[..i].contains(&s.name.as_str()) {
                self.seq_err(&p.pattern, s.column, format!("step `{}` appears twice; give each step its own name", s.name));
            }
            if s.negated {
                let problem = if i == 0 {
                    Some("a pattern cannot start with a negation".to_string())
                } else if s.min != 1 || s.max != 1 {
                    Some("a negated step cannot have a quantifier".into())
                } else if s.join == Contiguity::Any {
                    Some("a negation is joined by a space (not next) or `->` (not followed by), not `->>`".into())
                } else if parsed[i - 1].min == 0 {
                    Some(format!("a negation cannot follow the optional step `{}` (as in Flink CEP)", parsed[i - 1].name))
                } else if i == parsed.len() - 1 && s.join == Contiguity::Strict {
                    Some("a pattern cannot end with a strict negation; use `-> !step` with `within`".into())
                } else if i == parsed.len() - 1 && p.within.is_none() {
                    Some("a pattern that ends with `-> !step` needs `within`: the match is emitted once that time has passed without the step".into())
                } else {
                    None
                };
                if let Some(m) = problem {
                    self.seq_err(&p.pattern, s.column, m);
                }
            }
        }
        if parsed.iter().all(|s| s.negated || s.min == 0) {
            self.seq_err(&p.pattern, 1, "the pattern must require at least one event (every step is optional)".into());
        }
        for w in parsed.windows(2) {
            if is_greedy(&w[0]) && !w[1].negated && w[1].min == 0 {
                self.seq_err(
                    &p.pattern,
                    w[1].column,
                    format!(
                        "an optional step cannot follow the greedy loop `{}{}` (as in Flink CEP); make the loop reluctant (`{}{}?`) or the step required",
                        w[0].name,
                        quant_text(&w[0]),
                        w[0].name,
                        quant_text(&w[0])
                    ),
                );
            }
        }
        if let Some(last) = parsed.last().filter(|s| !s.negated && is_greedy(s)) {
            self.seq_err(
                &p.pattern,
                last.column,
                format!(
                    "a greedy quantifier cannot end the pattern (there is no next step to stop it); make it reluctant (`{}{}?`) or add a step after it",
                    last.name,
                    quant_text(last)
                ),
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        let step_of = |this: &mut Self, name: &str, loc: &Located<String>| -> Option<usize> {
            let found = names.iter().position(|n| *n == name);
            if found.is_none() {
                this.at(loc, format!("no step `{name}` in the pattern (its steps: {})", names.join(", ")));
            }
            found
        };
        let mut conds: Vec<Option<CondPlan>> = vec![None; parsed.len()];
        let mut untils: Vec<Option<CondPlan>> = vec![None; parsed.len()];
        let mut inner: Vec<Contiguity> = vec![Contiguity::Relaxed; parsed.len()];
        for (name, text) in &p.define {
            if let Some(i) = step_of(self, name, text) {
                conds[i] = self.condition(text, i, &names, schema, width);
            }
        }
        for (name, text) in &p.until {
            if let Some(i) = step_of(self, name, text) {
                if parsed[i].max <= 1 || parsed[i].negated {
                    self.at(
                        text,
                        format!("`until` applies to looping steps (with a quantifier such as + or {{2,5}}); `{name}` takes one event"),
                    );
                }
                untils[i] = self.condition(text, i, &names, schema, width);
            }
        }
        for (name, text) in &p.contiguity {
            if let Some(i) = step_of(self, name, text) {
                if parsed[i].max <= 1 || parsed[i].negated {
                    self.at(text, format!("`contiguity` applies to looping steps; `{name}` takes one event"));
                }
                inner[i] = match text.value.as_str() {
                    "strict" => Contiguity::Strict,
                    "relaxed" => Contiguity::Relaxed,
                    "any" => Contiguity::Any,
                    other => {
                        self.at(text, format!("unknown contiguity \"{other}\" (expected one of: strict, relaxed, any)"));
                        Contiguity::Relaxed
                    }
                };
            }
        }
        for (i, s) in parsed.iter().enumerate() {
            if s.negated && conds[i].is_none() {
                let loc = Located { value: String::new(), key: p.key.clone(), span: p.span.clone() };
                self.at(&loc, format!("the negated step `{}` needs a condition in `define`", s.name));
            }
        }
        let after = &p.after_match;
        let skip = match after.value.split_once(':') {
            None => match after.value.as_str() {
                "no_skip" => Some(SkipStrategy::NoSkip),
                "skip_to_next" => Some(SkipStrategy::ToNext),
                "skip_past_last_event" => Some(SkipStrategy::PastLastEvent),
                _ => None,
            },
            Some(("skip_to_first", step)) => step_of(self, step.trim(), after).map(SkipStrategy::ToFirst),
            Some(("skip_to_last", step)) => step_of(self, step.trim(), after).map(SkipStrategy::ToLast),
            Some(_) => None,
        };
        let Some(skip) = skip else {
            if self.errors.last().is_none_or(|e| !e.message.starts_with("no step")) {
                self.at(
                    after,
                    format!(
                        "unknown after_match \"{}\" (expected one of: no_skip, skip_to_next, skip_past_last_event, skip_to_first:<step>, skip_to_last:<step>)",
                        after.value
                    ),
                );
            }
            return None;
        };
        if p.timeouts && p.within.is_none() {
            let loc = Located { value: String::new(), key: p.key.clone(), span: p.span.clone() };
            self.at(&loc, "`timeouts = true` needs `within` (a partial match times out that long after its first event)".into());
        }
        let mut key_pos = Vec::new();
        for k in &p.key_by {
            if let Some((pos, _)) = self.field(schema, k) {
                key_pos.push(pos);
            }
        }
        // Measures see `step.field` for every step, at the field's own position.
        let mut measure_schema = schema.clone();
        for n in &names {
            for (f, ty) in schema.fields() {
                if let Some((pos, _)) = schema.lookup(f) {
                    measure_schema.push_at(format!("{n}.{f}"), *ty, pos);
                }
            }
        }
        let mut measures = Vec::new();
        for (name, text) in &p.measures {
            if let Some(m) = self.measure(name, text, &names, &measure_schema) {
                measures.push(m);
            }
        }
        let steps = parsed
            .iter()
            .enumerate()
            .map(|(i, s)| PatternStep {
                name: s.name.clone(),
                negated: s.negated,
                min: s.min,
                max: s.max,
                greedy: is_greedy(s),
                outer: s.join,
                inner: inner[i],
                cond: conds[i].take(),
                until: untils[i].take(),
            })
            .collect();
        Some(PatternPlan {
            steps,
            key_pos,
            within: p.within,
            skip,
            timeouts: p.timeouts,
            max_partials: p.max_partial_matches,
            measures,
            measure_schema,
            width,
            time_pos: time_pos.unwrap_or(0),
        })
    }

    /// A step's condition (or stop condition), for step `me` of `names`.
    fn condition(&mut self, text: &Located<String>, me: usize, names: &[&str], schema: &Schema, width: usize) -> Option<CondPlan> {
        let ast = match expr::parse(&text.value) {
            Ok(a) => a,
            Err(e) => {
                self.expr_err(text, e);
                return None;
            }
        };
        let step = |n: &str| names.iter().position(|m| m.eq_ignore_ascii_case(n));
        let mut cond_schema = schema.clone();
        // The step's own name refers to the event being tested (MATCH_RECOGNIZE).
        for (f, ty) in schema.fields() {
            if let Some((pos, _)) = schema.lookup(f) {
                cond_schema.push_at(format!("{}.{f}", names[me]), *ty, pos);
            }
        }
        let mut refs: Vec<CondRef> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let mut seen = BTreeSet::new();
        let _ = visit_expressions(&ast, |e: &Ast| {
            let found = match e {
                Ast::CompoundIdentifier(parts) if parts.len() == 2 => match (step(&parts[0].value), schema.lookup(&parts[1].value)) {
                    (Some(s), Some((pos, ty))) if s != me => {
                        Some((e.to_string(), ty, CondRef { step: Some(s), pos: Some(pos), func: RefFunc::Last(0), with_current: false }))
                    }
                    _ => None,
                },
                Ast::Function(f) if REF_FUNCS.contains(&f.name.to_string().to_ascii_lowercase().as_str()) => {
                    match reference(f, &step, schema, me) {
                        Ok(r) => Some((e.to_string(), r.1, r.0)),
                        Err(m) => {
                            problems.push(m);
                            None
                        }
                    }
                }
                _ => None,
            };
            if let Some((name, ty, r)) = found {
                if seen.insert(name.clone()) {
                    cond_schema.push_at(name, ty, width + refs.len());
                    refs.push(r);
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(m) = problems.into_iter().next() {
            self.at(text, m);
            return None;
        }
        match expr::compile_ast(&ast, &cond_schema) {
            Ok(c) if matches!(c.ty, DataType::Bool | DataType::Null) => {
                Some(CondPlan { text: text.value.clone(), schema: cond_schema, refs })
            }
            Ok(c) => {
                self.at(text, format!("type error: a step condition must be a bool, found {}", c.ty));
                None
            }
            Err(e) => {
                self.expr_err(text, e);
                None
            }
        }
    }

    fn measure(&mut self, name: &str, text: &Located<String>, names: &[&str], schema: &Schema) -> Option<MeasurePlan> {
        let ast = match expr::parse(&text.value) {
            Ok(a) => a,
            Err(e) => {
                self.expr_err(text, e);
                return None;
            }
        };
        // `count(step.*)`: the events of one step.
        if let Ast::Function(f) = &ast {
            if let FunctionArguments::List(l) = &f.args {
                if let [FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(obj))] = l.args.as_slice() {
                    let step_name = obj.to_string();
                    let Some(step) = names.iter().position(|n| n.eq_ignore_ascii_case(&step_name)) else {
                        self.at(text, format!("no step `{step_name}` in the pattern (its steps: {})", names.join(", ")));
                        return None;
                    };
                    if !f.name.to_string().eq_ignore_ascii_case("count") {
                        self.at(text, "`step.*` is only valid in count(step.*)".into());
                        return None;
                    }
                    let star = Located { value: "count(*)".into(), ..text.clone() };
                    return self.aggregate(name, &star, schema).map(|agg| MeasurePlan { step: Some(step), agg });
                }
            }
        }
        let mut steps = BTreeSet::new();
        let _ = visit_expressions(&ast, |e: &Ast| {
            if let Ast::CompoundIdentifier(parts) = e {
                if let Some(s) = parts.first().and_then(|p| names.iter().position(|n| n.eq_ignore_ascii_case(&p.value))) {
                    steps.insert(s);
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if steps.len() > 1 {
            self.at(text, "a measure aggregates the events of one step (or of the whole match), not of several".into());
            return None;
        }
        let agg = self.aggregate(name, text, schema)?;
        Some(MeasurePlan { step: steps.into_iter().next(), agg })
    }
}

/// Reads `count(*)`, `count(b.*)`, `sum(b.amount)`, `last(b.amount, 1)`, `first(amount)`...
fn reference(
    f: &sqlparser::ast::Function,
    step: &dyn Fn(&str) -> Option<usize>,
    schema: &Schema,
    me: usize,
) -> Result<(CondRef, DataType), String> {
    let fname = f.name.to_string().to_ascii_lowercase();
    let usage = || {
        format!(
            "`{fname}` in a condition takes a field of a step, e.g. {fname}(b.amount){}",
            if fname == "first" || fname == "last" { " or last(b.amount, 1)" } else { "" }
        )
    };
    let FunctionArguments::List(l) = &f.args else { return Err(usage()) };
    let args: Vec<&FunctionArgExpr> = l
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(x) => Ok(x),
            _ => Err(usage()),
        })
        .collect::<Result<_, _>>()?;
    let offset = match args.get(1) {
        None => 0,
        Some(FunctionArgExpr::Expr(Ast::Value(v))) if matches!(fname.as_str(), "first" | "last") => match &v.value {
            Lit::Number(n, _) => n.parse::<usize>().map_err(|_| usage())?,
            _ => return Err(usage()),
        },
        Some(_) => return Err(usage()),
    };
    let (st, pos, ty) = match args.first() {
        Some(FunctionArgExpr::Wildcard) if fname == "count" => (None, None, DataType::Int),
        Some(FunctionArgExpr::QualifiedWildcard(obj)) if fname == "count" => {
            let s = step(&obj.to_string()).ok_or_else(|| format!("no step `{obj}` in the pattern"))?;
            (Some(s), None, DataType::Int)
        }
        Some(FunctionArgExpr::Expr(Ast::Identifier(id))) => {
            let (pos, ty) = schema.lookup(&id.value).ok_or_else(|| format!("unknown field `{}`", id.value))?;
            (None, Some(pos), ty)
        }
        Some(FunctionArgExpr::Expr(Ast::CompoundIdentifier(parts))) if parts.len() == 2 => {
            let s = step(&parts[0].value).ok_or_else(|| format!("no step `{}` in the pattern", parts[0].value))?;
            let (pos, ty) = schema.lookup(&parts[1].value).ok_or_else(|| format!("unknown field `{}`", parts[1].value))?;
            (Some(s), Some(pos), ty)
        }
        _ => return Err(usage()),
    };
    if args.len() > 1 + usize::from(matches!(fname.as_str(), "first" | "last")) {
        return Err(usage());
    }
    let numeric = matches!(ty, DataType::Int | DataType::Float);
    let (func, out) = match fname.as_str() {
        "count" => (RefFunc::Count, DataType::Int),
        "sum" if numeric => (RefFunc::Sum, ty),
        "avg" if numeric => (RefFunc::Avg, DataType::Float),
        "min" => (RefFunc::Min, ty),
        "max" => (RefFunc::Max, ty),
        "first" => (RefFunc::First(offset), ty),
        "last" => (RefFunc::Last(offset), ty),
        _ => return Err(format!("type error: `{fname}` needs a numeric field, found {ty}")),
    };
    // A step's own aggregates include the event being tested; its `last`/`first` look at the
    // events it already took (so `last(b.amount)` in b's condition is the previous b).
    let with_current =
        matches!(func, RefFunc::Count | RefFunc::Sum | RefFunc::Avg | RefFunc::Min | RefFunc::Max) && st.is_none_or(|s| s == me);
    Ok((CondRef { step: st, pos, func, with_current }, out))
}

/// A loop that takes as many events as it can: a range of counts above one, not reluctant.
/// `?` (`{0,1}`) is not a loop: like Flink SQL's `B?` (Flink CEP's `optional()` without
/// `greedy()`), it tries both skipping and taking the step, and `??` means the same.
fn is_greedy(s: &ParsedStep) -> bool {
    s.min != s.max && s.max > 1 && !s.reluctant
}

fn quant_text(s: &ParsedStep) -> String {
    match (s.min, s.max) {
        (0, MANY) => "*".into(),
        (1, MANY) => "+".into(),
        (0, 1) => "?".into(),
        (n, MANY) => format!("{{{n},}}"),
        (n, m) => format!("{{{n},{m}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_parse() {
        let s = parse_sequence("a b+? -> !c ->> d{2,4} e* f{,3}? g{2,}").unwrap();
        let q: Vec<(&str, bool, u32, u32, bool, Contiguity)> =
            s.iter().map(|s| (s.name.as_str(), s.negated, s.min, s.max, s.reluctant, s.join)).collect();
        assert_eq!(
            q,
            vec![
                ("a", false, 1, 1, false, Contiguity::Strict),
                ("b", false, 1, MANY, true, Contiguity::Strict),
                ("c", true, 1, 1, false, Contiguity::Relaxed),
                ("d", false, 2, 4, false, Contiguity::Any),
                ("e", false, 0, MANY, false, Contiguity::Strict),
                ("f", false, 0, 3, true, Contiguity::Strict),
                ("g", false, 2, MANY, false, Contiguity::Strict),
            ]
        );
        assert_eq!(parse_sequence("a{3}").unwrap()[0].max, 3);
        assert!(parse_sequence("a{0}").is_err());
        assert!(parse_sequence("a{3,2}").is_err());
        assert_eq!(parse_sequence("a -> ").unwrap_err().0, 6);
        assert_eq!(parse_sequence("a,b").unwrap_err().0, 2);
        assert!(parse_sequence("").is_err());
    }
}
