//! SQL expressions: parsed with `sqlparser`, type-checked against a schema, and compiled once
//! into typed closures over a row (`&[Value]`). Evaluating a compiled expression walks no AST.
//!
//! NULL follows SQL: comparisons and arithmetic with NULL give NULL, `AND`/`OR` use three-valued
//! logic, a filter keeps a row only when its condition is TRUE. Errors that SQL would raise at run
//! time (division by zero, integer overflow, a bad cast) give NULL instead of failing the job.

use std::borrow::Cow;
use std::collections::HashSet;

use compact_str::CompactString;
use sqlparser::ast::{
    BinaryOperator, CastKind, DuplicateTreatment, Expr as Ast, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget, Spanned,
    UnaryOperator, Value as Lit,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::schema::Schema;
use crate::time;
use crate::value::{DataType, Value};

type BoolFn = Box<dyn Fn(&[Value]) -> Option<bool> + Send + Sync>;
type IntFn = Box<dyn Fn(&[Value]) -> Option<i64> + Send + Sync>;
type FloatFn = Box<dyn Fn(&[Value]) -> Option<f64> + Send + Sync>;
type StrFn = Box<dyn for<'a> Fn(&'a [Value]) -> Option<Cow<'a, str>> + Send + Sync>;
type ValueFn = Box<dyn Fn(&[Value]) -> Value + Send + Sync>;

/// A typed compiled function. Timestamps and intervals are `Int` microseconds at run time.
enum Code {
    Bool(BoolFn),
    Int(IntFn),
    Float(FloatFn),
    Str(StrFn),
}

/// A compiled expression: its static type and its code.
pub struct CompiledExpr {
    pub ty: DataType,
    code: Code,
    /// The literal value, when the expression is a constant (used for function options).
    literal: Option<Value>,
}

/// An error in an expression, positioned within the expression text (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub message: String,
    pub line: u64,
    pub column: u64,
}

impl std::fmt::Display for ExprError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl CompiledExpr {
    /// Evaluates to a value.
    #[inline]
    pub fn eval(&self, row: &[Value]) -> Value {
        match &self.code {
            Code::Bool(f) => f(row).map_or(Value::Null, Value::Bool),
            Code::Int(f) => match f(row) {
                None => Value::Null,
                Some(v) => match self.ty {
                    DataType::Timestamp => Value::Ts(v),
                    DataType::Interval => Value::Interval(v),
                    _ => Value::Int(v),
                },
            },
            Code::Float(f) => f(row).map_or(Value::Null, Value::Float),
            Code::Str(f) => f(row).map_or(Value::Null, |s| Value::Str(CompactString::new(s))),
        }
    }

    /// Evaluates a condition: only TRUE passes (NULL and FALSE do not).
    #[inline]
    pub fn eval_bool(&self, row: &[Value]) -> bool {
        match &self.code {
            Code::Bool(f) => f(row) == Some(true),
            _ => false,
        }
    }

    /// Evaluates an int/timestamp/interval expression without building a `Value`.
    #[inline]
    pub fn eval_i64(&self, row: &[Value]) -> Option<i64> {
        match &self.code {
            Code::Int(f) => f(row),
            Code::Float(f) => f(row).map(|v| v as i64),
            _ => None,
        }
    }

    /// Evaluates a numeric expression as a float.
    #[inline]
    pub fn eval_f64(&self, row: &[Value]) -> Option<f64> {
        match &self.code {
            Code::Int(f) => f(row).map(|v| v as f64),
            Code::Float(f) => f(row),
            _ => None,
        }
    }

    pub fn literal(&self) -> Option<&Value> {
        self.literal.as_ref()
    }
}

/// Parses an expression without type checking.
pub fn parse(text: &str) -> Result<Ast, ExprError> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(text).map_err(parse_error)?;
    let expr = parser.parse_expr().map_err(parse_error)?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(ExprError {
            message: format!("unexpected `{}` after the end of the expression", next.token),
            line: next.span.start.line.max(1),
            column: next.span.start.column.max(1),
        });
    }
    Ok(expr)
}

fn parse_error(e: sqlparser::parser::ParserError) -> ExprError {
    let text = e.to_string();
    // sqlparser appends " at Line: L, Column: C" to its messages.
    let (mut line, mut column) = (1, 1);
    let mut message = text.clone();
    if let Some(pos) = text.rfind(" at Line: ") {
        message = text[..pos].to_string();
        let loc = &text[pos + 10..];
        let mut parts = loc.split(", Column: ");
        line = parts.next().and_then(|l| l.trim().parse().ok()).unwrap_or(1);
        column = parts.next().and_then(|c| c.trim().parse().ok()).unwrap_or(1);
    }
    let message = message.trim_start_matches("sql parser error: ").to_string();
    ExprError { message: format!("invalid SQL expression: {message}"), line, column }
}

/// Parses, type-checks and compiles an expression against `schema`.
pub fn compile(text: &str, schema: &Schema) -> Result<CompiledExpr, ExprError> {
    let ast = parse(text)?;
    compile_ast(&ast, schema)
}

/// Type-checks and compiles a parsed expression.
pub fn compile_ast(ast: &Ast, schema: &Schema) -> Result<CompiledExpr, ExprError> {
    Compiler { schema }.compile(ast)
}

/// Names of aggregate functions, which are valid only in a window step's `aggregates`.
pub const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "count_distinct",
    "approx_count_distinct",
    "approx_percentile",
    "p50",
    "p95",
    "p99",
    "first",
    "last",
    "top_k",
    "list",
];

pub fn err_at(node: &impl Spanned, message: impl Into<String>) -> ExprError {
    let start = node.span().start;
    ExprError { message: message.into(), line: start.line.max(1), column: start.column.max(1) }
}

struct Compiler<'s> {
    schema: &'s Schema,
}

fn null_of(ty: DataType) -> CompiledExpr {
    let code = match ty {
        DataType::Bool => Code::Bool(Box::new(|_| None)),
        DataType::Float => Code::Float(Box::new(|_| None)),
        DataType::String => Code::Str(Box::new(|_| None)),
        _ => Code::Int(Box::new(|_| None)),
    };
    CompiledExpr { ty, code, literal: Some(Value::Null) }
}

fn constant(v: Value) -> CompiledExpr {
    let (ty, code) = match v.clone() {
        Value::Null => return null_of(DataType::Null),
        Value::Bool(b) => (DataType::Bool, Code::Bool(Box::new(move |_| Some(b)))),
        Value::Int(i) => (DataType::Int, Code::Int(Box::new(move |_| Some(i)))),
        Value::Ts(i) => (DataType::Timestamp, Code::Int(Box::new(move |_| Some(i)))),
        Value::Interval(i) => (DataType::Interval, Code::Int(Box::new(move |_| Some(i)))),
        Value::Float(f) => (DataType::Float, Code::Float(Box::new(move |_| Some(f)))),
        Value::Str(s) => {
            let s: String = s.into();
            (DataType::String, Code::Str(Box::new(move |_| Some(Cow::Owned(s.clone())))))
        }
    };
    CompiledExpr { ty, code, literal: Some(v) }
}

/// Converts an expression to the requested type (used after unification; never fails for the
/// pairs unification allows).
fn coerce(e: CompiledExpr, to: DataType) -> CompiledExpr {
    if e.ty == to {
        return e;
    }
    if e.ty == DataType::Null {
        return null_of(to);
    }
    let literal = e.literal.clone();
    match (e.code, to) {
        (Code::Int(f), DataType::Float) => CompiledExpr { ty: to, code: Code::Float(Box::new(move |r| f(r).map(|v| v as f64))), literal },
        (Code::Int(f), DataType::Int | DataType::Timestamp | DataType::Interval) => CompiledExpr { ty: to, code: Code::Int(f), literal },
        (code, _) => CompiledExpr { ty: e.ty, code, literal },
    }
}

/// The common type of two expressions, if they can be compared or combined.
fn unify(a: DataType, b: DataType) -> Option<DataType> {
    use DataType::*;
    Some(match (a, b) {
        (x, y) if x == y => x,
        (Null, x) | (x, Null) => x,
        (Int, Float) | (Float, Int) => Float,
        _ => return None,
    })
}

impl Compiler<'_> {
    fn compile(&self, e: &Ast) -> Result<CompiledExpr, ExprError> {
        match e {
            Ast::Identifier(id) => self.column(&id.value, e),
            Ast::CompoundIdentifier(parts) => {
                let name = parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".");
                self.column(&name, e)
            }
            Ast::Nested(inner) => self.compile(inner),
            Ast::Value(v) => self.literal(&v.value, e),
            Ast::TypedString(ts) => {
                let ty = ts.data_type.to_string().to_ascii_lowercase();
                let text = match &ts.value.value {
                    Lit::SingleQuotedString(s) => s.clone(),
                    other => other.to_string(),
                };
                if ty.starts_with("timestamp") || ty == "date" || ty == "datetime" {
                    time::parse_timestamp(&text)
                        .map(|t| constant(Value::Ts(t)))
                        .ok_or_else(|| err_at(e, format!("invalid timestamp literal '{text}' (expected YYYY-MM-DD HH:MM:SS[.ffffff][Z])")))
                } else {
                    Err(err_at(e, format!("unsupported typed literal {ty}")))
                }
            }
            Ast::Interval(iv) => {
                let text = match iv.value.as_ref() {
                    Ast::Value(v) => match &v.value {
                        Lit::SingleQuotedString(s) => s.clone(),
                        Lit::Number(n, _) => n.clone(),
                        _ => return Err(err_at(e, "INTERVAL expects a quoted amount, e.g. INTERVAL '5' MINUTE")),
                    },
                    _ => return Err(err_at(e, "INTERVAL expects a constant amount")),
                };
                let spec = match &iv.leading_field {
                    Some(unit) => format!("{text} {}", unit.to_string().to_ascii_lowercase()),
                    None => text,
                };
                parse_interval(&spec).map(|us| constant(Value::Interval(us))).ok_or_else(|| {
                    err_at(e, format!("invalid interval '{spec}' (expected e.g. INTERVAL '5' MINUTE or INTERVAL '90 seconds')"))
                })
            }
            Ast::UnaryOp { op, expr } => self.unary(*op, expr, e),
            Ast::BinaryOp { left, op, right } => self.binary(left, op, right, e),
            Ast::IsNull(inner) | Ast::IsNotNull(inner) => {
                let x = self.compile(inner)?;
                let want_null = matches!(e, Ast::IsNull(_));
                let code: BoolFn = match x.code {
                    Code::Bool(f) => Box::new(move |r| Some(f(r).is_none() == want_null)),
                    Code::Int(f) => Box::new(move |r| Some(f(r).is_none() == want_null)),
                    Code::Float(f) => Box::new(move |r| Some(f(r).is_none() == want_null)),
                    Code::Str(f) => Box::new(move |r| Some(f(r).is_none() == want_null)),
                };
                Ok(CompiledExpr { ty: DataType::Bool, code: Code::Bool(code), literal: None })
            }
            Ast::Between { expr, negated, low, high } => {
                let ge = self.compare(expr, &BinaryOperator::GtEq, low, e)?;
                let le = self.compare(expr, &BinaryOperator::LtEq, high, e)?;
                let both = logic(ge, le, true);
                Ok(if *negated { not(both) } else { both })
            }
            Ast::In { expr, target, negated, .. } => {
                let InTarget::List(list) = target else {
                    return Err(err_at(e, "only IN (value, ...) lists are supported"));
                };
                self.in_list(expr, list, *negated, e)
            }
            Ast::Like { negated, expr, pattern, escape_char, .. } => self.like(expr, pattern, escape_char.is_some(), *negated, false, e),
            Ast::ILike { negated, expr, pattern, escape_char, .. } => self.like(expr, pattern, escape_char.is_some(), *negated, true, e),
            Ast::Case { operand, conditions, else_result, .. } => self.case(operand.as_deref(), conditions, else_result.as_deref(), e),
            Ast::Cast { kind, expr, data_type, .. } => {
                if !matches!(kind, CastKind::Cast | CastKind::TryCast | CastKind::DoubleColon) {
                    return Err(err_at(e, "unsupported cast syntax"));
                }
                let name = data_type.to_string().to_ascii_lowercase();
                let base = name.split('(').next().unwrap_or("").trim().to_string();
                let to = DataType::parse(&base)
                    .ok_or_else(|| err_at(e, format!("cannot cast to `{name}` (expected one of {})", DataType::NAMES)))?;
                let x = self.compile(expr)?;
                Ok(cast(x, to))
            }
            Ast::Extract { field, expr, .. } => {
                let x = self.compile(expr)?;
                let unit = field.to_string().to_ascii_lowercase();
                self.extract(&unit, x, e)
            }
            Ast::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.compile(expr)?];
                if let Some(f) = substring_from {
                    args.push(self.compile(f)?);
                }
                if let Some(f) = substring_for {
                    args.push(self.compile(f)?);
                }
                self.function("substring", args, e)
            }
            Ast::Trim { expr, trim_where, trim_what, trim_characters } => {
                if trim_where.is_some() || trim_what.is_some() || trim_characters.is_some() {
                    return Err(err_at(e, "only TRIM(expr) is supported"));
                }
                let x = self.compile(expr)?;
                self.function("trim", vec![x], e)
            }
            Ast::Floor { expr, .. } => {
                let x = self.compile(expr)?;
                self.function("floor", vec![x], e)
            }
            Ast::Ceil { expr, .. } => {
                let x = self.compile(expr)?;
                self.function("ceil", vec![x], e)
            }
            Ast::Function(f) => {
                let name = f.name.to_string().to_ascii_lowercase();
                // Bare keywords such as `user` parse as functions; a field of that name wins.
                if matches!(f.args, FunctionArguments::None) && self.schema.lookup(&f.name.to_string()).is_some() {
                    return self.column(&f.name.to_string(), e);
                }
                // A call the schema carries as a field of its own (a pattern condition's
                // `sum(a.amount)`, an alert condition's `prev(field)`), computed by the caller.
                let text = e.to_string();
                if self.schema.lookup(&text).is_some() {
                    return self.column(&text, e);
                }
                // `prev(field)` in alert conditions: the schema carries it as a field of that name.
                if name == "prev" {
                    if let FunctionArguments::List(l) = &f.args {
                        if let [FunctionArg::Unnamed(FunctionArgExpr::Expr(Ast::Identifier(id)))] = l.args.as_slice() {
                            let field = format!("prev({})", id.value);
                            if self.schema.lookup(&field).is_some() {
                                return self.column(&field, e);
                            }
                        }
                    }
                    return Err(err_at(e, "prev(field) is only valid in alert conditions, with a field of the job's output"));
                }
                if AGGREGATES.contains(&name.as_str()) {
                    return Err(err_at(e, format!("aggregate function `{name}` is only allowed in a window step's `aggregates`")));
                }
                let list = match &f.args {
                    FunctionArguments::None => Vec::new(),
                    FunctionArguments::List(l) => {
                        if l.duplicate_treatment == Some(DuplicateTreatment::Distinct) {
                            return Err(err_at(e, format!("DISTINCT is not valid in `{name}`")));
                        }
                        l.args.iter().collect()
                    }
                    FunctionArguments::Subquery(_) => return Err(err_at(e, "subqueries are not supported")),
                };
                let mut args = Vec::with_capacity(list.len());
                for a in list {
                    match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => args.push(self.compile(x)?),
                        _ => return Err(err_at(e, format!("unsupported argument in `{name}`"))),
                    }
                }
                self.function(&name, args, e)
            }
            other => Err(err_at(other, format!("unsupported expression `{other}`"))),
        }
    }

    fn column(&self, name: &str, node: &Ast) -> Result<CompiledExpr, ExprError> {
        let Some((i, ty)) = self.schema.lookup(name) else {
            return Err(err_at(node, format!("unknown field `{name}` (expected one of: {})", self.schema.names().join(", "))));
        };
        let code = match ty {
            DataType::Bool => Code::Bool(Box::new(move |r| r[i].as_bool())),
            DataType::Float => Code::Float(Box::new(move |r| r[i].as_f64())),
            DataType::String => Code::Str(Box::new(move |r| r[i].as_str().map(Cow::Borrowed))),
            _ => Code::Int(Box::new(move |r| r[i].as_i64())),
        };
        Ok(CompiledExpr { ty, code, literal: None })
    }

    fn literal(&self, v: &Lit, node: &Ast) -> Result<CompiledExpr, ExprError> {
        Ok(match v {
            Lit::Number(n, _) => match n.parse::<i64>() {
                Ok(i) => constant(Value::Int(i)),
                Err(_) => constant(Value::Float(n.parse().map_err(|_| err_at(node, format!("invalid number {n}")))?)),
            },
            Lit::SingleQuotedString(s) => constant(Value::Str(CompactString::new(s))),
            Lit::Boolean(b) => constant(Value::Bool(*b)),
            Lit::Null => null_of(DataType::Null),
            other => return Err(err_at(node, format!("unsupported literal {other}"))),
        })
    }

    fn unary(&self, op: UnaryOperator, inner: &Ast, node: &Ast) -> Result<CompiledExpr, ExprError> {
        let x = self.compile(inner)?;
        match op {
            UnaryOperator::Not => {
                if !matches!(x.ty, DataType::Bool | DataType::Null) {
                    return Err(err_at(node, format!("NOT expects a bool, found {}", x.ty)));
                }
                Ok(not(coerce(x, DataType::Bool)))
            }
            UnaryOperator::Plus => Ok(x),
            UnaryOperator::Minus => match x.code {
                Code::Int(f) if matches!(x.ty, DataType::Int | DataType::Interval) => Ok(CompiledExpr {
                    ty: x.ty,
                    code: Code::Int(Box::new(move |r| f(r).and_then(i64::checked_neg))),
                    literal: x.literal.and_then(|l| l.as_i64()).map(|i| {
                        if x.ty == DataType::Int {
                            Value::Int(-i)
                        } else {
                            Value::Interval(-i)
                        }
                    }),
                }),
                Code::Float(f) => Ok(CompiledExpr {
                    ty: x.ty,
                    code: Code::Float(Box::new(move |r| f(r).map(|v| -v))),
                    literal: x.literal.and_then(|l| l.as_f64()).map(|v| Value::Float(-v)),
                }),
                _ => Err(err_at(node, format!("unary minus expects a number, found {}", x.ty))),
            },
            other => Err(err_at(node, format!("unsupported operator {other}"))),
        }
    }

    fn binary(&self, left: &Ast, op: &BinaryOperator, right: &Ast, node: &Ast) -> Result<CompiledExpr, ExprError> {
        use BinaryOperator::*;
        match op {
            And | Or => {
                let (a, b) = (self.compile(left)?, self.compile(right)?);
                for (side, x) in [(left, &a), (right, &b)] {
                    if !matches!(x.ty, DataType::Bool | DataType::Null) {
                        return Err(err_at(side, format!("{op} expects bool operands, found {}", x.ty)));
                    }
                }
                Ok(logic(coerce(a, DataType::Bool), coerce(b, DataType::Bool), *op == And))
            }
            Eq | NotEq | Lt | LtEq | Gt | GtEq => self.compare(left, op, right, node),
            Plus | Minus | Multiply | Divide | Modulo => {
                let (a, b) = (self.compile(left)?, self.compile(right)?);
                arithmetic(a, op, b)
                    .ok_or_else(|| err_at(node, "type error: operands do not fit the operator".to_string()))
                    .and_then(|r| r.map_err(|(ta, tb)| err_at(node, format!("type error: cannot apply `{op}` to {ta} and {tb}"))))
            }
            StringConcat => {
                let (a, b) = (self.compile(left)?, self.compile(right)?);
                self.function("concat", vec![a, b], node)
            }
            other => Err(err_at(node, format!("unsupported operator {other}"))),
        }
    }

    fn compare(&self, left: &Ast, op: &BinaryOperator, right: &Ast, node: &Ast) -> Result<CompiledExpr, ExprError> {
        let (mut a, mut b) = (self.compile(left)?, self.compile(right)?);
        // `ts >= '2026-01-01'` compares with a timestamp literal, as in most SQL engines.
        let as_ts = |x: &mut CompiledExpr, other: DataType| -> Result<(), ExprError> {
            if other == DataType::Timestamp && x.ty == DataType::String {
                if let Some(Value::Str(s)) = &x.literal {
                    match time::parse_timestamp(s) {
                        Some(t) => *x = constant(Value::Ts(t)),
                        None => return Err(err_at(node, format!("'{s}' is not a timestamp (expected YYYY-MM-DD HH:MM:SS)"))),
                    }
                }
            }
            Ok(())
        };
        let (ta, tb) = (a.ty, b.ty);
        as_ts(&mut a, tb)?;
        as_ts(&mut b, ta)?;
        let Some(ty) = unify(a.ty, b.ty) else {
            return Err(err_at(node, format!("type error: cannot compare {} with {}", a.ty, b.ty)));
        };
        let (a, b) = (coerce(a, ty), coerce(b, ty));
        let test: fn(std::cmp::Ordering) -> bool = match op {
            BinaryOperator::Eq => |o| o.is_eq(),
            BinaryOperator::NotEq => |o| o.is_ne(),
            BinaryOperator::Lt => |o| o.is_lt(),
            BinaryOperator::LtEq => |o| o.is_le(),
            BinaryOperator::Gt => |o| o.is_gt(),
            _ => |o| o.is_ge(),
        };
        let code: BoolFn = match (a.code, b.code) {
            (Code::Int(f), Code::Int(g)) => match b.literal.as_ref().and_then(Value::as_i64) {
                // Column-versus-constant is the common case: one call instead of two.
                Some(k) => Box::new(move |r| f(r).map(|x| test(x.cmp(&k)))),
                None => Box::new(move |r| Some(test(f(r)?.cmp(&g(r)?)))),
            },
            (Code::Float(f), Code::Float(g)) => Box::new(move |r| Some(test(f(r)?.total_cmp(&g(r)?)))),
            (Code::Bool(f), Code::Bool(g)) => Box::new(move |r| Some(test(f(r)?.cmp(&g(r)?)))),
            (Code::Str(f), Code::Str(g)) => match b.literal.as_ref().and_then(|v| v.as_str().map(str::to_owned)) {
                Some(k) => Box::new(move |r| f(r).map(|x| test(x.as_ref().cmp(k.as_str())))),
                None => Box::new(move |r| Some(test(f(r)?.cmp(&g(r)?)))),
            },
            _ => null_bool(),
        };
        Ok(CompiledExpr { ty: DataType::Bool, code: Code::Bool(code), literal: None })
    }

    fn in_list(&self, expr: &Ast, list: &[Ast], negated: bool, node: &Ast) -> Result<CompiledExpr, ExprError> {
        let x = self.compile(expr)?;
        let mut items = Vec::with_capacity(list.len());
        let mut ty = x.ty;
        for item in list {
            let c = self.compile(item)?;
            ty = unify(ty, c.ty).ok_or_else(|| err_at(item, format!("type error: IN list item is {}, expected {}", c.ty, x.ty)))?;
            items.push(c);
        }
        // A constant list with a NULL item never yields FALSE (SQL), so keep it on the general path.
        let all_const = items.iter().all(|c| c.literal.as_ref().is_some_and(|l| !l.is_null()));
        let code: BoolFn = if all_const {
            // A constant list becomes a set lookup.
            match coerce(x, ty).code {
                Code::Str(f) => {
                    let set: HashSet<String, foldhash::fast::RandomState> =
                        items.iter().filter_map(|c| c.literal.as_ref()?.as_str().map(str::to_owned)).collect();
                    Box::new(move |r| f(r).map(|s| set.contains(s.as_ref()) != negated))
                }
                Code::Int(f) => {
                    let set: HashSet<i64, foldhash::fast::RandomState> =
                        items.iter().filter_map(|c| c.literal.as_ref()?.as_i64()).collect();
                    Box::new(move |r| f(r).map(|v| set.contains(&v) != negated))
                }
                Code::Float(f) => {
                    let set: Vec<f64> = items.iter().filter_map(|c| c.literal.as_ref()?.as_f64()).collect();
                    Box::new(move |r| f(r).map(|v| set.contains(&v) != negated))
                }
                Code::Bool(f) => {
                    let set: Vec<bool> = items.iter().filter_map(|c| c.literal.as_ref()?.as_bool()).collect();
                    Box::new(move |r| f(r).map(|v| set.contains(&v) != negated))
                }
            }
        } else {
            let x = coerce(x, ty);
            let items: Vec<CompiledExpr> = items.into_iter().map(|c| coerce(c, ty)).collect();
            Box::new(move |r| {
                let v = x.eval(r);
                if v.is_null() {
                    return None;
                }
                let mut saw_null = false;
                for c in &items {
                    let w = c.eval(r);
                    if w.is_null() {
                        saw_null = true;
                    } else if w == v {
                        return Some(!negated);
                    }
                }
                if saw_null {
                    None
                } else {
                    Some(negated)
                }
            })
        };
        let _ = node;
        Ok(CompiledExpr { ty: DataType::Bool, code: Code::Bool(code), literal: None })
    }

    fn like(&self, expr: &Ast, pattern: &Ast, escape: bool, negated: bool, ci: bool, node: &Ast) -> Result<CompiledExpr, ExprError> {
        if escape {
            return Err(err_at(node, "LIKE ... ESCAPE is not supported"));
        }
        let x = self.compile(expr)?;
        let p = self.compile(pattern)?;
        let (Code::Str(f), Code::Str(g)) = (x.code, p.code) else {
            return Err(err_at(node, format!("type error: LIKE expects strings, found {} and {}", x.ty, p.ty)));
        };
        let code: BoolFn = match p.literal.as_ref().and_then(Value::as_str) {
            Some(pat) => {
                let pat = if ci { pat.to_lowercase() } else { pat.to_string() };
                Box::new(move |r| {
                    f(r).map(|s| {
                        let m = if ci { like_match(&s.to_lowercase(), &pat) } else { like_match(&s, &pat) };
                        m != negated
                    })
                })
            }
            None => Box::new(move |r| {
                let (s, pat) = (f(r)?, g(r)?);
                let m = if ci { like_match(&s.to_lowercase(), &pat.to_lowercase()) } else { like_match(&s, &pat) };
                Some(m != negated)
            }),
        };
        Ok(CompiledExpr { ty: DataType::Bool, code: Code::Bool(code), literal: None })
    }

    fn case(
        &self,
        operand: Option<&Ast>,
        conditions: &[sqlparser::ast::CaseWhen],
        else_result: Option<&Ast>,
        node: &Ast,
    ) -> Result<CompiledExpr, ExprError> {
        let mut whens = Vec::new();
        let mut ty = DataType::Null;
        let mut results = Vec::new();
        for cw in conditions {
            let cond = match operand {
                Some(op) => self.compare(op, &BinaryOperator::Eq, &cw.condition, &cw.condition)?,
                None => self.compile(&cw.condition)?,
            };
            if !matches!(cond.ty, DataType::Bool | DataType::Null) {
                return Err(err_at(&cw.condition, format!("type error: WHEN expects a bool condition, found {}", cond.ty)));
            }
            let res = self.compile(&cw.result)?;
            ty = unify(ty, res.ty).ok_or_else(|| err_at(&cw.result, format!("type error: CASE branches mix {ty} and {}", res.ty)))?;
            whens.push(coerce(cond, DataType::Bool));
            results.push(res);
        }
        let other = match else_result {
            Some(e) => {
                let c = self.compile(e)?;
                ty = unify(ty, c.ty).ok_or_else(|| err_at(e, format!("type error: CASE branches mix {ty} and {}", c.ty)))?;
                Some(c)
            }
            None => None,
        };
        let _ = node;
        let results: Vec<CompiledExpr> = results.into_iter().map(|c| coerce(c, ty)).collect();
        let other = other.map(|c| coerce(c, ty));
        let pick = move |r: &[Value]| -> Option<usize> { whens.iter().position(|w| w.eval_bool(r)) };
        // Each branch returns the typed result of the chosen arm.
        let code = match ty {
            DataType::Bool => {
                let (res, oth): (Vec<BoolFn>, Option<BoolFn>) = split_codes(results, other, |c| match c {
                    Code::Bool(f) => Some(f),
                    _ => None,
                });
                Code::Bool(Box::new(move |r| match pick(r) {
                    Some(i) => res[i](r),
                    None => oth.as_ref().and_then(|f| f(r)),
                }))
            }
            DataType::Float => {
                let (res, oth): (Vec<FloatFn>, Option<FloatFn>) = split_codes(results, other, |c| match c {
                    Code::Float(f) => Some(f),
                    _ => None,
                });
                Code::Float(Box::new(move |r| match pick(r) {
                    Some(i) => res[i](r),
                    None => oth.as_ref().and_then(|f| f(r)),
                }))
            }
            DataType::String => {
                let (res, oth): (Vec<StrFn>, Option<StrFn>) = split_codes(results, other, |c| match c {
                    Code::Str(f) => Some(f),
                    _ => None,
                });
                Code::Str(Box::new(move |r| match pick(r) {
                    Some(i) => res[i](r),
                    None => oth.as_ref().and_then(|f| f(r)),
                }))
            }
            _ => {
                let (res, oth): (Vec<IntFn>, Option<IntFn>) = split_codes(results, other, |c| match c {
                    Code::Int(f) => Some(f),
                    _ => None,
                });
                Code::Int(Box::new(move |r| match pick(r) {
                    Some(i) => res[i](r),
                    None => oth.as_ref().and_then(|f| f(r)),
                }))
            }
        };
        Ok(CompiledExpr { ty, code, literal: None })
    }

    fn extract(&self, unit: &str, x: CompiledExpr, node: &Ast) -> Result<CompiledExpr, ExprError> {
        if x.ty != DataType::Timestamp {
            return Err(err_at(node, format!("type error: EXTRACT expects a timestamp, found {}", x.ty)));
        }
        let Code::Int(f) = x.code else { unreachable_code() };
        let part: fn(i64) -> i64 = match unit {
            "year" | "years" => |t| time::to_civil(t).0,
            "month" | "months" => |t| time::to_civil(t).1,
            "day" | "days" => |t| time::to_civil(t).2,
            "hour" | "hours" => |t| time::to_civil(t).3,
            "minute" | "minutes" => |t| time::to_civil(t).4,
            "second" | "seconds" => |t| time::to_civil(t).5,
            "millisecond" | "milliseconds" => |t| t.rem_euclid(time::MICROS_PER_SEC) / 1000,
            "microsecond" | "microseconds" => |t| t.rem_euclid(time::MICROS_PER_SEC),
            // 0 = Sunday, as in PostgreSQL; 1970-01-01 was a Thursday.
            "dow" | "dayofweek" => |t| (t.div_euclid(86_400 * time::MICROS_PER_SEC) + 4).rem_euclid(7),
            "epoch" => |t| t.div_euclid(time::MICROS_PER_SEC),
            _ => return Err(err_at(node, format!("unsupported EXTRACT unit `{unit}` (expected year, month, day, hour, minute, second, millisecond, microsecond, dow or epoch)"))),
        };
        Ok(CompiledExpr { ty: DataType::Int, code: Code::Int(Box::new(move |r| f(r).map(part))), literal: None })
    }

    fn function(&self, name: &str, mut args: Vec<CompiledExpr>, node: &Ast) -> Result<CompiledExpr, ExprError> {
        let arity = |lo: usize, hi: usize| -> Result<(), ExprError> {
            if args.len() < lo || args.len() > hi {
                let expected = if lo == hi {
                    format!("{lo}")
                } else if hi == usize::MAX {
                    format!("at least {lo}")
                } else {
                    format!("{lo} to {hi}")
                };
                return Err(err_at(node, format!("`{name}` takes {expected} argument(s), found {}", args.len())));
            }
            Ok(())
        };
        let want = |args: &[CompiledExpr], i: usize, ok: &[DataType]| -> Result<(), ExprError> {
            let t = args[i].ty;
            if t == DataType::Null || ok.contains(&t) {
                Ok(())
            } else {
                let names: Vec<std::string::String> = ok.iter().map(|t| t.to_string()).collect();
                Err(err_at(node, format!("type error: argument {} of `{name}` is {t}, expected {}", i + 1, names.join(" or "))))
            }
        };
        use DataType::*;
        match name {
            "lower" | "upper" | "trim" | "ltrim" | "rtrim" => {
                arity(1, 1)?;
                want(&args, 0, &[String])?;
                let Code::Str(f) = coerce(args.remove(0), String).code else { return Ok(null_of(String)) };
                let op: fn(&str) -> Cow<'_, str> = match name {
                    "lower" => |s| if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() { Cow::Owned(s.to_lowercase()) } else { Cow::Borrowed(s) },
                    "upper" => |s| if s.bytes().any(|b| b.is_ascii_lowercase()) || !s.is_ascii() { Cow::Owned(s.to_uppercase()) } else { Cow::Borrowed(s) },
                    "trim" => |s| Cow::Borrowed(s.trim()),
                    "ltrim" => |s| Cow::Borrowed(s.trim_start()),
                    _ => |s| Cow::Borrowed(s.trim_end()),
                };
                Ok(str_expr(Box::new(move |r| f(r).map(|s| match s {
                    Cow::Borrowed(b) => op(b),
                    Cow::Owned(o) => Cow::Owned(op(&o).into_owned()),
                }))))
            }
            "length" | "char_length" => {
                arity(1, 1)?;
                want(&args, 0, &[String])?;
                let Code::Str(f) = coerce(args.remove(0), String).code else { return Ok(null_of(Int)) };
                Ok(int_expr(Int, Box::new(move |r| f(r).map(|s| s.chars().count() as i64))))
            }
            "concat" => {
                arity(1, usize::MAX)?;
                let parts: Vec<CompiledExpr> = args;
                Ok(str_expr(Box::new(move |r| {
                    let mut out = std::string::String::new();
                    for p in &parts {
                        match p.eval(r) {
                            Value::Null => return None,
                            Value::Str(s) => out.push_str(&s),
                            v => out.push_str(&v.to_string()),
                        }
                    }
                    Some(Cow::Owned(out))
                })))
            }
            "substring" | "substr" => {
                arity(2, 3)?;
                want(&args, 0, &[String])?;
                want(&args, 1, &[Int])?;
                if args.len() == 3 {
                    want(&args, 2, &[Int])?;
                }
                let len = if args.len() == 3 { Some(args.pop().map(|a| coerce(a, Int))) } else { None }.flatten();
                let from = coerce(args.pop().unwrap_or_else(|| null_of(Int)), Int);
                let Code::Str(f) = coerce(args.remove(0), String).code else { return Ok(null_of(String)) };
                Ok(str_expr(Box::new(move |r| {
                    let s = f(r)?;
                    let start = from.eval_i64(r)?;
                    let count = match &len {
                        Some(l) => l.eval_i64(r)?.max(0) as usize,
                        None => usize::MAX,
                    };
                    // SQL positions are 1-based; positions before 1 shorten the result.
                    let skip = (start - 1).max(0) as usize;
                    let count = if start < 1 { count.saturating_sub((1 - start) as usize) } else { count };
                    Some(Cow::Owned(s.chars().skip(skip).take(count).collect()))
                })))
            }
            "replace" => {
                arity(3, 3)?;
                for i in 0..3 {
                    want(&args, i, &[String])?;
                }
                let mut it = args.into_iter().map(|a| coerce(a, String));
                let (s, from, to) = (it.next(), it.next(), it.next());
                let (Some(s), Some(from), Some(to)) = (s, from, to) else { return Ok(null_of(String)) };
                Ok(str_expr(Box::new(move |r| {
                    let (Value::Str(a), Value::Str(b), Value::Str(c)) = (s.eval(r), from.eval(r), to.eval(r)) else { return None };
                    Some(Cow::Owned(a.replace(b.as_str(), c.as_str())))
                })))
            }
            "coalesce" | "ifnull" | "nullif" | "greatest" | "least" => {
                if name == "nullif" || name == "ifnull" {
                    arity(2, 2)?;
                } else {
                    arity(1, usize::MAX)?;
                }
                let mut ty = Null;
                for (i, a) in args.iter().enumerate() {
                    ty = unify(ty, a.ty).ok_or_else(|| err_at(node, format!("type error: argument {} of `{name}` is {}, expected {ty}", i + 1, a.ty)))?;
                }
                let parts: Vec<CompiledExpr> = args.into_iter().map(|a| coerce(a, ty)).collect();
                let kind = name.to_string();
                let pick: ValueFn = match kind.as_str() {
                    "coalesce" | "ifnull" => Box::new(move |r| parts.iter().map(|p| p.eval(r)).find(|v| !v.is_null()).unwrap_or(Value::Null)),
                    "nullif" => Box::new(move |r| {
                        let a = parts[0].eval(r);
                        if a == parts[1].eval(r) { Value::Null } else { a }
                    }),
                    "greatest" => Box::new(move |r| {
                        let vals: Option<Vec<Value>> = parts.iter().map(|p| Some(p.eval(r)).filter(|v| !v.is_null())).collect();
                        vals.and_then(|v| v.into_iter().max()).unwrap_or(Value::Null)
                    }),
                    _ => Box::new(move |r| {
                        let vals: Option<Vec<Value>> = parts.iter().map(|p| Some(p.eval(r)).filter(|v| !v.is_null())).collect();
                        vals.and_then(|v| v.into_iter().min()).unwrap_or(Value::Null)
                    }),
                };
                Ok(from_value_fn(ty, pick))
            }
            "if" => {
                arity(3, 3)?;
                want(&args, 0, &[Bool])?;
                let ty = unify(args[1].ty, args[2].ty).ok_or_else(|| err_at(node, format!("type error: `if` branches mix {} and {}", args[1].ty, args[2].ty)))?;
                let c = args.remove(0);
                let (a, b) = (coerce(args.remove(0), ty), coerce(args.remove(0), ty));
                Ok(from_value_fn(ty, Box::new(move |r| if c.eval_bool(r) { a.eval(r) } else { b.eval(r) })))
            }
            "abs" | "floor" | "ceil" | "ceiling" | "sqrt" | "ln" | "exp" | "round" => {
                if name == "round" {
                    arity(1, 2)?;
                } else {
                    arity(1, 1)?;
                }
                want(&args, 0, &[Int, Float])?;
                let digits = if args.len() == 2 {
                    want(&args, 1, &[Int])?;
                    match args[1].literal.as_ref().and_then(Value::as_i64) {
                        Some(d) => d,
                        None => return Err(err_at(node, "the second argument of `round` must be a constant")),
                    }
                } else {
                    0
                };
                let x = args.remove(0);
                if x.ty == Int && matches!(name, "abs" | "floor" | "ceil" | "ceiling") || (x.ty == Int && name == "round" && digits >= 0) {
                    let Code::Int(f) = x.code else { unreachable_code() };
                    let g: IntFn = if name == "abs" { Box::new(move |r| f(r).and_then(i64::checked_abs)) } else { f };
                    return Ok(int_expr(Int, g));
                }
                let x = coerce(x, Float);
                let Code::Float(f) = x.code else { return Ok(null_of(Float)) };
                let scale = 10f64.powi(digits as i32);
                let op: Box<dyn Fn(f64) -> f64 + Send + Sync> = match name {
                    "abs" => Box::new(f64::abs),
                    "floor" => Box::new(f64::floor),
                    "ceil" | "ceiling" => Box::new(f64::ceil),
                    "sqrt" => Box::new(f64::sqrt),
                    "ln" => Box::new(f64::ln),
                    "exp" => Box::new(f64::exp),
                    _ => Box::new(move |v| (v * scale).round() / scale),
                };
                Ok(CompiledExpr { ty: Float, code: Code::Float(Box::new(move |r| f(r).map(&op).filter(|v| v.is_finite()))), literal: None })
            }
            "power" | "pow" => {
                arity(2, 2)?;
                want(&args, 0, &[Int, Float])?;
                want(&args, 1, &[Int, Float])?;
                let (a, b) = (coerce(args.remove(0), Float), coerce(args.remove(0), Float));
                Ok(CompiledExpr {
                    ty: Float,
                    code: Code::Float(Box::new(move |r| Some(a.eval_f64(r)?.powf(b.eval_f64(r)?)).filter(|v| v.is_finite()))),
                    literal: None,
                })
            }
            "date_trunc" => {
                arity(2, 2)?;
                want(&args, 0, &[String])?;
                want(&args, 1, &[Timestamp])?;
                let Some(unit) = args[0].literal.as_ref().and_then(Value::as_str).map(str::to_ascii_lowercase) else {
                    return Err(err_at(node, "the first argument of `date_trunc` must be a constant unit such as 'hour'"));
                };
                let Code::Int(f) = coerce(args.remove(1), Timestamp).code else { return Ok(null_of(Timestamp)) };
                let step = match unit.as_str() {
                    "second" => time::MICROS_PER_SEC,
                    "minute" => 60 * time::MICROS_PER_SEC,
                    "hour" => 3_600 * time::MICROS_PER_SEC,
                    "day" => 86_400 * time::MICROS_PER_SEC,
                    "week" => 7 * 86_400 * time::MICROS_PER_SEC,
                    "month" | "year" => 0,
                    _ => return Err(err_at(node, format!("unsupported date_trunc unit '{unit}' (expected second, minute, hour, day, week, month or year)"))),
                };
                let by_month = unit == "month";
                let g: IntFn = match step {
                    0 => Box::new(move |r| {
                        let (y, m, ..) = time::to_civil(f(r)?);
                        Some(time::from_civil(y, if by_month { m } else { 1 }, 1, 0, 0, 0, 0))
                    }),
                    // Weeks start on Monday (ISO); the epoch was a Thursday.
                    s if unit == "week" => Box::new(move |r| Some((f(r)? - 4 * 86_400 * time::MICROS_PER_SEC).div_euclid(s) * s + 4 * 86_400 * time::MICROS_PER_SEC)),
                    s => Box::new(move |r| Some(f(r)?.div_euclid(s) * s)),
                };
                Ok(int_expr(Timestamp, g))
            }
            "year" | "month" | "day" | "hour" | "minute" | "second" => {
                arity(1, 1)?;
                let x = args.remove(0);
                self.extract(name, x, node)
            }
            "epoch_ms" | "to_epoch_ms" => {
                arity(1, 1)?;
                want(&args, 0, &[Timestamp])?;
                let Code::Int(f) = coerce(args.remove(0), Timestamp).code else { return Ok(null_of(Int)) };
                Ok(int_expr(Int, Box::new(move |r| f(r).map(|t| t.div_euclid(time::MICROS_PER_MS)))))
            }
            "from_epoch_ms" | "to_timestamp_ms" => {
                arity(1, 1)?;
                want(&args, 0, &[Int])?;
                let Code::Int(f) = coerce(args.remove(0), Int).code else { return Ok(null_of(Timestamp)) };
                Ok(int_expr(Timestamp, Box::new(move |r| f(r)?.checked_mul(time::MICROS_PER_MS))))
            }
            _ => Err(err_at(
                node,
                format!("unknown function `{name}` (expected a scalar function such as lower, upper, length, trim, concat, substring, replace, coalesce, nullif, greatest, least, if, abs, round, floor, ceil, sqrt, power, date_trunc, extract, hour, epoch_ms)"),
            )),
        }
    }
}

fn unreachable_code() -> ! {
    // Only reached if a typed expression's code disagrees with its type, which `coerce` rules out.
    panic!("internal error: expression code does not match its type")
}

fn split_codes<F>(results: Vec<CompiledExpr>, other: Option<CompiledExpr>, get: impl Fn(Code) -> Option<F>) -> (Vec<F>, Option<F>) {
    let res = results.into_iter().filter_map(|c| get(c.code)).collect();
    (res, other.and_then(|c| get(c.code)))
}

fn null_bool() -> BoolFn {
    Box::new(|_| None)
}

fn str_expr(f: StrFn) -> CompiledExpr {
    CompiledExpr { ty: DataType::String, code: Code::Str(f), literal: None }
}

fn int_expr(ty: DataType, f: IntFn) -> CompiledExpr {
    CompiledExpr { ty, code: Code::Int(f), literal: None }
}

/// Wraps a `Value`-returning function as typed code (for rarely hot functions such as coalesce).
fn from_value_fn(ty: DataType, f: ValueFn) -> CompiledExpr {
    let code = match ty {
        DataType::Bool => Code::Bool(Box::new(move |r| f(r).as_bool())),
        DataType::Float => Code::Float(Box::new(move |r| f(r).as_f64())),
        DataType::String => Code::Str(Box::new(move |r| match f(r) {
            Value::Str(s) => Some(Cow::Owned(s.into())),
            _ => None,
        })),
        _ => Code::Int(Box::new(move |r| f(r).as_i64())),
    };
    CompiledExpr { ty, code, literal: None }
}

fn not(x: CompiledExpr) -> CompiledExpr {
    let Code::Bool(f) = x.code else { return null_of(DataType::Bool) };
    CompiledExpr { ty: DataType::Bool, code: Code::Bool(Box::new(move |r| f(r).map(|b| !b))), literal: None }
}

fn logic(a: CompiledExpr, b: CompiledExpr, and: bool) -> CompiledExpr {
    let (Code::Bool(f), Code::Bool(g)) = (a.code, b.code) else { return null_of(DataType::Bool) };
    let code: BoolFn = if and {
        Box::new(move |r| match f(r) {
            Some(false) => Some(false),
            x => match g(r) {
                Some(false) => Some(false),
                y => x.and(y).map(|_| true),
            },
        })
    } else {
        Box::new(move |r| match f(r) {
            Some(true) => Some(true),
            x => match g(r) {
                Some(true) => Some(true),
                y => x.and(y).map(|_| false),
            },
        })
    };
    CompiledExpr { ty: DataType::Bool, code: Code::Bool(code), literal: None }
}

type ArithResult = Option<Result<CompiledExpr, (DataType, DataType)>>;

fn arithmetic(a: CompiledExpr, op: &BinaryOperator, b: CompiledExpr) -> ArithResult {
    use DataType::*;
    let (ta, tb) = (a.ty, b.ty);
    let result_ty = match (ta, op, tb) {
        (Null, _, _) | (_, _, Null) => {
            let t = if ta == Null { tb } else { ta };
            return Some(Ok(null_of(if t == Null { Int } else { t })));
        }
        (Int, _, Int) => Int,
        (Int | Float, _, Int | Float) => Float,
        (Timestamp, BinaryOperator::Minus, Timestamp) => Interval,
        (Timestamp, BinaryOperator::Plus | BinaryOperator::Minus, Interval) => Timestamp,
        (Interval, BinaryOperator::Plus, Timestamp) => Timestamp,
        (Interval, BinaryOperator::Plus | BinaryOperator::Minus, Interval) => Interval,
        (Interval, BinaryOperator::Multiply | BinaryOperator::Divide, Int) => Interval,
        (Int, BinaryOperator::Multiply, Interval) => Interval,
        _ => return Some(Err((ta, tb))),
    };
    if result_ty == Float {
        let (Code::Float(f), Code::Float(g)) = (coerce(a, Float).code, coerce(b, Float).code) else { return None };
        let op: fn(f64, f64) -> f64 = match op {
            BinaryOperator::Plus => |x, y| x + y,
            BinaryOperator::Minus => |x, y| x - y,
            BinaryOperator::Multiply => |x, y| x * y,
            BinaryOperator::Divide => |x, y| x / y,
            _ => |x, y| x % y,
        };
        return Some(Ok(CompiledExpr {
            ty: Float,
            code: Code::Float(Box::new(move |r| Some(op(f(r)?, g(r)?)).filter(|v| v.is_finite()))),
            literal: None,
        }));
    }
    let (Code::Int(f), Code::Int(g)) = (a.code, b.code) else { return None };
    let op: fn(i64, i64) -> Option<i64> = match op {
        BinaryOperator::Plus => i64::checked_add,
        BinaryOperator::Minus => i64::checked_sub,
        BinaryOperator::Multiply => i64::checked_mul,
        BinaryOperator::Divide => i64::checked_div,
        _ => i64::checked_rem,
    };
    Some(Ok(int_expr(result_ty, Box::new(move |r| op(f(r)?, g(r)?)))))
}

fn cast(x: CompiledExpr, to: DataType) -> CompiledExpr {
    use DataType::*;
    if x.ty == to || x.ty == Null {
        return coerce(x, to);
    }
    match (x.ty, to) {
        (Int, Float) => coerce(x, Float),
        (Timestamp, Int) | (Int, Timestamp) => CompiledExpr { ty: to, ..x },
        _ => from_value_fn(
            to,
            Box::new(move |r| {
                let v = x.eval(r);
                match (v, to) {
                    (Value::Null, _) => Value::Null,
                    (Value::Float(f), Int) => Value::Int(f.trunc() as i64),
                    (Value::Bool(b), Int) => Value::Int(b as i64),
                    (Value::Str(s), Int) => s.trim().parse().map(Value::Int).unwrap_or(Value::Null),
                    (Value::Str(s), Float) => s.trim().parse().map(Value::Float).unwrap_or(Value::Null),
                    (Value::Str(s), Bool) => match s.trim().to_ascii_lowercase().as_str() {
                        "true" | "t" | "1" | "yes" => Value::Bool(true),
                        "false" | "f" | "0" | "no" => Value::Bool(false),
                        _ => Value::Null,
                    },
                    (Value::Str(s), Timestamp) => time::parse_timestamp(&s).map(Value::Ts).unwrap_or(Value::Null),
                    (Value::Int(i), Bool) => Value::Bool(i != 0),
                    (v, String) => Value::Str(CompactString::new(v.to_string())),
                    _ => Value::Null,
                }
            }),
        ),
    }
}

/// Parses an interval text such as `5 minute`, `90 seconds` or `1h30m` into microseconds.
fn parse_interval(spec: &str) -> Option<i64> {
    time::parse_duration(spec).or_else(|| {
        let mut parts = spec.split_whitespace();
        let n: f64 = parts.next()?.parse().ok()?;
        let unit = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let unit = unit.trim_end_matches('s');
        let unit = if unit == "second" { "s" } else { unit };
        time::parse_duration(&format!("{n}{unit}"))
    })
}

/// SQL LIKE: `%` matches any run of characters, `_` exactly one.
pub fn like_match(s: &str, pattern: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut si, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            ("event_type".into(), DataType::String),
            ("duration_ms".into(), DataType::Int),
            ("country".into(), DataType::String),
            ("price".into(), DataType::Float),
            ("ts".into(), DataType::Timestamp),
            ("premium".into(), DataType::Bool),
        ])
    }

    fn row() -> Vec<Value> {
        vec![
            Value::from("play"),
            Value::Int(45_000),
            Value::from("SE"),
            Value::Float(9.99),
            Value::Ts(time::parse_timestamp("2026-11-25T10:30:00Z").unwrap()),
            Value::Null,
        ]
    }

    fn eval(text: &str) -> Value {
        compile(text, &schema()).unwrap_or_else(|e| panic!("{text}: {e:?}")).eval(&row())
    }

    #[test]
    fn evaluates_sql() {
        assert_eq!(eval("event_type = 'play' AND duration_ms >= 30000"), Value::Bool(true));
        assert_eq!(eval("lower(country)"), Value::from("se"));
        assert_eq!(eval("coalesce(premium, false)"), Value::Bool(false));
        assert_eq!(eval("premium AND true"), Value::Null);
        assert_eq!(eval("premium OR true"), Value::Bool(true));
        assert_eq!(eval("country IN ('SE', 'NO')"), Value::Bool(true));
        assert_eq!(eval("country NOT IN ('SE', 'NO')"), Value::Bool(false));
        assert_eq!(eval("event_type LIKE 'pl%'"), Value::Bool(true));
        assert_eq!(eval("event_type LIKE '_lay'"), Value::Bool(true));
        assert_eq!(eval("event_type ILIKE 'PLAY'"), Value::Bool(true));
        assert_eq!(eval("duration_ms / 1000"), Value::Int(45));
        assert_eq!(eval("duration_ms / 60000.0"), Value::Float(0.75));
        assert_eq!(eval("duration_ms / 0"), Value::Null);
        assert_eq!(
            eval("CASE WHEN duration_ms > 60000 THEN 'long' WHEN duration_ms > 30000 THEN 'mid' ELSE 'short' END"),
            Value::from("mid")
        );
        assert_eq!(eval("CASE country WHEN 'SE' THEN 1 ELSE 2.5 END"), Value::Float(1.0));
        assert_eq!(eval("hour(ts)"), Value::Int(10));
        assert_eq!(eval("EXTRACT(MINUTE FROM ts)"), Value::Int(30));
        assert_eq!(eval("ts + INTERVAL '30' MINUTE = TIMESTAMP '2026-11-25 11:00:00'"), Value::Bool(true));
        assert_eq!(eval("ts - INTERVAL '1 hour' < ts"), Value::Bool(true));
        assert_eq!(eval("ts >= '2026-11-25'"), Value::Bool(true));
        assert_eq!(eval("date_trunc('hour', ts) = TIMESTAMP '2026-11-25 10:00:00'"), Value::Bool(true));
        assert_eq!(eval("duration_ms BETWEEN 1 AND 50000"), Value::Bool(true));
        assert_eq!(eval("CAST(duration_ms AS VARCHAR) || '!'"), Value::from("45000!"));
        assert_eq!(eval("CAST('12' AS INT) + 1"), Value::Int(13));
        assert_eq!(eval("round(price, 1)"), Value::Float(10.0));
        assert_eq!(eval("substring(event_type, 2, 2)"), Value::from("la"));
        assert_eq!(eval("premium IS NULL"), Value::Bool(true));
        assert_eq!(eval("-duration_ms"), Value::Int(-45_000));
        assert_eq!(eval("greatest(1, duration_ms, 3)"), Value::Int(45_000));
        assert_eq!(eval("'b' NOT IN ('a', NULL)"), Value::Null);
        assert_eq!(eval("'a' IN ('a', NULL)"), Value::Bool(true));
        assert_eq!(eval("round(1234, -2)"), Value::Float(1200.0));
        assert_eq!(eval("round(duration_ms)"), Value::Int(45_000));
    }

    #[test]
    fn reports_errors_with_positions() {
        let e = compile("event_type = 'play' AND durations_ms > 1", &schema()).err().unwrap();
        assert!(e.message.starts_with("unknown field `durations_ms`"), "{}", e.message);
        assert_eq!((e.line, e.column), (1, 25));
        let e = compile("duration_ms + 'x'", &schema()).err().unwrap();
        assert!(e.message.contains("cannot apply `+` to int and string"), "{}", e.message);
        let e = compile("country = 1", &schema()).err().unwrap();
        assert!(e.message.contains("cannot compare string with int"), "{}", e.message);
        let e = compile("sum(duration_ms)", &schema()).err().unwrap();
        assert!(e.message.contains("only allowed in a window step"), "{}", e.message);
        let e = compile("duration_ms >", &schema()).err().unwrap();
        assert!(e.message.starts_with("invalid SQL expression"), "{}", e.message);
        let e = compile("a b", &schema()).err().unwrap();
        assert!(e.message.contains("after the end"), "{}", e.message);
    }

    #[test]
    fn like_patterns() {
        assert!(like_match("abc", "a%c"));
        assert!(like_match("abc", "%"));
        assert!(!like_match("abc", "a_"));
        assert!(like_match("aXbYc", "a%b%c"));
        assert!(!like_match("ab", "a%b%c"));
    }
}
