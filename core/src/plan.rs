//! Validation of a [`JobSpec`] into a [`Plan`]: field names resolved to row positions, every
//! expression type-checked, aggregates recognised. Workers compile the plan's expressions into
//! closures with [`Plan::compile_steps`] and [`AggPlan::compile_arg`].

use sqlparser::ast::{DuplicateTreatment, Expr as Ast, FunctionArg, FunctionArgExpr, FunctionArguments};

use crate::expr::{self, CompiledExpr, ExprError};
use crate::job::{self, JobError, JobErrors, JobSpec, Located, Step, TimeMode, WindowKind};
use crate::pattern::{MeasurePlan, PatternPlan};
use crate::schema::Schema;
use crate::template::Template;
use crate::value::{DataType, Value};

/// A validated job, ready to be turned into a dataflow.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: JobSpec,
    /// The declared event fields, at row positions 0..n.
    pub input: Schema,
    pub tenant_pos: usize,
    pub tenant_type: DataType,
    /// Row position of the event-time field (event-time jobs).
    pub time_pos: Option<usize>,
    /// Physical width of an input row: declared fields plus fields derived before the window.
    pub row_width: usize,
    /// Stateless steps before the window (or all steps when there is none).
    pub pre: Vec<PlannedStep>,
    /// What the window (or the sink, without a window) sees.
    pub pre_schema: Schema,
    pub window: Option<WindowPlan>,
    /// The pattern step (a job has a window or a pattern, not both).
    pub pattern: Option<PatternPlan>,
    /// Stateless steps on the window's (or pattern's) output rows.
    pub post: Vec<PlannedStep>,
    /// Physical width of an output row.
    pub out_width: usize,
    /// The rows the sinks receive: names, types and positions in the output row.
    pub output: Schema,
}

/// A stateless step with the schema it was checked against.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub schema: Schema,
    pub kind: PlannedKind,
}

#[derive(Debug, Clone)]
pub enum PlannedKind {
    Filter(String),
    /// (row position, expression)
    Derive(Vec<(usize, String)>),
    /// Runs a model (the engine resolves it in the model registry).
    Score(Box<ScorePlan>),
    /// Scores each value of a series against its own baseline.
    Anomaly(Box<AnomalyPlan>),
    /// Audio features of a clip.
    Audio(Box<AudioPlan>),
}

/// An audio step: where the clip is and where its features go.
#[derive(Debug, Clone)]
pub struct AudioPlan {
    pub spec: job::AudioSpec,
    pub field_pos: usize,
    /// Position of the first output; the others follow in [`audio_fields`] order.
    pub first_out: usize,
}

/// The fields an audio step adds, in order: duration, error, the frame means of RMS,
/// zero-crossing rate, spectral centroid and rolloff, MFCC 0..19 and chroma 0..11 (C to B).
pub fn audio_fields(prefix: &str) -> Vec<(String, DataType)> {
    let mut f = vec![(format!("{prefix}_seconds"), DataType::Float), (format!("{prefix}_error"), DataType::String)];
    for name in ["rms", "zcr", "centroid", "rolloff"] {
        f.push((format!("{prefix}_{name}"), DataType::Float));
    }
    f.extend((0..job::AUDIO_MFCC).map(|i| (format!("{prefix}_mfcc_{i}"), DataType::Float)));
    f.extend((0..job::AUDIO_CHROMA).map(|i| (format!("{prefix}_chroma_{i}"), DataType::Float)));
    f
}

/// An anomaly step after a window: where the series key, time and value are, and its outputs.
#[derive(Debug, Clone)]
pub struct AnomalyPlan {
    pub spec: job::AnomalySpec,
    /// Tenant and key fields' positions.
    pub key_pos: Vec<usize>,
    pub time_pos: usize,
    /// Row positions of `<as>_score`, `<as>_baseline`, `<as>_is_anomaly`.
    pub score_pos: usize,
    pub baseline_pos: usize,
    pub flag_pos: usize,
}

/// A score step: the model, its features and where its outputs go in the row.
#[derive(Debug, Clone)]
pub struct ScorePlan {
    pub spec: job::ScoreSpec,
    /// Row positions of `<as>_label`, `<as>_class`, `<as>_probability`, `<as>_score`,
    /// `<as>_drift`.
    pub label_pos: usize,
    pub class_pos: usize,
    pub probability_pos: usize,
    pub score_pos: usize,
    pub drift_pos: usize,
    /// Where the step is in the job file, for errors found when the model is resolved (the
    /// message is filled in then).
    pub origin: JobError,
    /// Which outputs (label, class, probability, score, drift) anything reads; the others stay
    /// NULL.
    pub used: [bool; 5],
    /// The tenant field's row position, unless a `select` removed it (a model that a tenant
    /// owns scores only that tenant's rows).
    pub tenant_pos: Option<usize>,
}

impl ScorePlan {
    pub fn error(&self, message: impl Into<String>) -> JobError {
        JobError { message: message.into(), ..self.origin.clone() }
    }
}

/// The fields a score step adds, in order, for a prefix.
pub fn score_fields(prefix: &str) -> [(String, DataType); 5] {
    [
        (format!("{prefix}_label"), DataType::Int),
        (format!("{prefix}_class"), DataType::String),
        (format!("{prefix}_probability"), DataType::Float),
        (format!("{prefix}_score"), DataType::Float),
        (format!("{prefix}_drift"), DataType::Float),
    ]
}

/// Checks a feature expression: it must compile against `schema` and give a number.
pub fn check_feature(text: &str, schema: &Schema) -> Result<CompiledExpr, ExprError> {
    let c = expr::compile(text, schema)?;
    match c.ty {
        DataType::Int | DataType::Float | DataType::Bool | DataType::Null => Ok(c),
        t => Err(ExprError {
            line: 1,
            column: 1,
            message: format!("type error: a feature must be a number (int, float or bool), found {t}"),
        }),
    }
}

impl PlannedStep {
    /// Compiles a filter or derive step (`None` for score and anomaly steps, which the engine runs).
    pub fn compile(&self) -> Option<CompiledStep> {
        match &self.kind {
            PlannedKind::Filter(text) => expr::compile(text, &self.schema).ok().map(CompiledStep::Filter),
            PlannedKind::Derive(fields) => Some(CompiledStep::Derive(
                fields.iter().filter_map(|(pos, text)| expr::compile(text, &self.schema).ok().map(|e| (*pos, e))).collect(),
            )),
            PlannedKind::Score(_) | PlannedKind::Anomaly(_) | PlannedKind::Audio(_) => None,
        }
    }
}

/// A compiled stateless step.
pub enum CompiledStep {
    Filter(CompiledExpr),
    Derive(Vec<(usize, CompiledExpr)>),
}

impl CompiledStep {
    /// Applies the step to a row in place; returns false when the row is filtered out.
    #[inline]
    pub fn apply(&self, row: &mut [Value]) -> bool {
        match self {
            CompiledStep::Filter(e) => e.eval_bool(row),
            CompiledStep::Derive(fields) => {
                for (pos, e) in fields {
                    let v = e.eval(row);
                    row[*pos] = v;
                }
                true
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct WindowPlan {
    pub kind: WindowKind,
    /// Row positions of the key fields (not including the tenant).
    pub key_pos: Vec<usize>,
    pub aggs: Vec<AggPlan>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggFunc {
    /// `count(*)`
    CountAll,
    /// `count(x)`: rows where x is not NULL.
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
    ApproxCountDistinct,
    /// Quantile in 0..=1.
    Percentile(f64),
    First,
    Last,
    TopK(usize),
    /// The values as a JSON array, in event-time order.
    List,
}

#[derive(Debug, Clone)]
pub struct AggPlan {
    pub name: String,
    pub func: AggFunc,
    /// The argument expression (absent for `count(*)`), checked against the window's input.
    pub arg: Option<String>,
    pub arg_type: DataType,
    pub out_type: DataType,
}

impl AggPlan {
    pub fn compile_arg(&self, schema: &Schema) -> Option<CompiledExpr> {
        // Validation compiled the same text against the same schema, so this cannot fail.
        self.arg.as_ref().and_then(|a| expr::compile(a, schema).ok())
    }
}

impl Plan {
    pub fn compile_steps(steps: &[PlannedStep]) -> Vec<CompiledStep> {
        steps.iter().filter_map(|s| s.compile()).collect()
    }

    /// The key fields of the window or pattern step (not the tenant).
    pub fn key_names(&self) -> Vec<&str> {
        self.spec
            .steps
            .iter()
            .flat_map(|s| match s {
                Step::Window(w) => w.key_by.as_slice(),
                Step::Pattern(p) => p.key_by.as_slice(),
                _ => &[],
            })
            .map(|k| k.value.as_str())
            .collect()
    }

    pub fn event_time(&self) -> bool {
        self.spec.time.mode == TimeMode::Event
    }

    /// What alert conditions and annotations see: the output fields, then `prev(f)` for each,
    /// the field's value in the previous row of the same series (NULL for the first).
    pub fn alert_schema(&self) -> Schema {
        alert_schema(&self.output)
    }
}

/// Alert rules per job, at most: a series keeps which of them fire in one 64-bit word.
pub const MAX_ALERT_RULES: usize = 64;

fn alert_schema(output: &Schema) -> Schema {
    let fields = output.fields();
    let prev = fields.iter().map(|(n, t)| (format!("prev({n})"), *t));
    Schema::new(fields.iter().cloned().chain(prev).collect())
}

/// Reads and validates a job file.
pub fn load(file: &str, text: &str, overrides: &[String]) -> Result<Plan, JobErrors> {
    let spec = job::parse_job(file, text, overrides)?;
    validate(file, text, spec)
}

pub(crate) struct V<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
    pub(crate) errors: Vec<JobError>,
    /// After a window: the series key (tenant and window key fields), which anomaly steps follow.
    pub(crate) series: Option<Vec<String>>,
    /// The schema's tenant field (score steps find it in the rows they score).
    pub(crate) tenant: String,
}

impl V<'_> {
    pub(crate) fn at(&mut self, loc: &Located<String>, message: String) {
        self.errors.push(job::value_error(self.file, self.text, loc, 1, 1, message));
    }

    pub(crate) fn expr_err(&mut self, loc: &Located<String>, e: ExprError) {
        self.errors.push(job::value_error(self.file, self.text, loc, e.line, e.column, e.message));
    }

    pub(crate) fn field(&mut self, schema: &Schema, loc: &Located<String>) -> Option<(usize, DataType)> {
        let found = schema.lookup(&loc.value);
        if found.is_none() {
            self.at(loc, format!("unknown field `{}` (expected one of: {})", loc.value, schema.names().join(", ")));
        }
        found
    }

    fn template(&mut self, loc: &Located<String>, schema: &Schema) -> Option<Template> {
        let checked = Template::parse(&loc.value).and_then(|t| t.check(schema).map(|()| t));
        checked.map_err(|e| self.at(loc, e)).ok()
    }

    /// Redis sinks: templates name output fields, keys are namespaced by the tenant, values
    /// are numbers.
    fn redis_sink(&mut self, r: &job::RedisSinkSpec, output: &Schema, tenant: &str, late_policy: job::LatePolicy) {
        if let Some(key) = self.template(&r.key, output) {
            if !key.fields().any(|f| f == tenant) {
                self.at(
                    &r.key,
                    format!("the key must contain the tenant field, e.g. \"tf:{{{tenant}}}:...\", so tenants never share keys"),
                );
            }
        }
        for t in [&r.hash_field, &r.member].into_iter().flatten() {
            self.template(t, output);
        }
        let adds = r.mode == job::RedisMode::Counter || (r.mode == job::RedisMode::Leaderboard && r.increment);
        if let (true, Some(value), job::LatePolicy::Update) = (adds, &r.value, late_policy) {
            self.at(value, "late_policy = \"update\" sends a window's result again when late events change it; adding it again would count it twice: use mode = \"hash\" or update = \"set\"".into());
        }
        if let Some(value) = &r.value {
            match self.field(output, value) {
                Some((_, DataType::Int | DataType::Float)) | None => {}
                Some((_, t)) => self.at(value, format!("type error: `value` must be an int or float field, found {t}")),
            }
        }
        for f in r.fields.iter().flatten() {
            self.field(output, f);
        }
    }

    /// Checks the stateless steps in `steps`, updating `schema` and `width`.
    fn stateless(&mut self, steps: &[&Step], schema: &mut Schema, width: &mut usize) -> Vec<PlannedStep> {
        let mut out = Vec::new();
        for step in steps {
            match step {
                Step::Filter(cond) => match expr::compile(&cond.value, schema) {
                    Ok(c) if matches!(c.ty, DataType::Bool | DataType::Null) => {
                        out.push(PlannedStep { schema: schema.clone(), kind: PlannedKind::Filter(cond.value.clone()) })
                    }
                    Ok(c) => self.at(cond, format!("type error: a filter must be a bool condition, found {}", c.ty)),
                    Err(e) => self.expr_err(cond, e),
                },
                Step::Derive(fields) => {
                    let before = schema.clone();
                    let mut planned = Vec::new();
                    for (name, text) in fields {
                        match expr::compile(&text.value, &before) {
                            Ok(c) => {
                                let ty = if c.ty == DataType::Null { DataType::String } else { c.ty };
                                if ty == DataType::Interval {
                                    self.at(
                                        text,
                                        "type error: a derived field cannot be an interval; use e.g. epoch_ms(a) - epoch_ms(b)".into(),
                                    );
                                    continue;
                                }
                                schema.push_at(name.clone(), ty, *width);
                                planned.push((*width, text.value.clone()));
                                *width += 1;
                            }
                            Err(e) => self.expr_err(text, e),
                        }
                    }
                    out.push(PlannedStep { schema: before, kind: PlannedKind::Derive(planned) });
                }
                Step::Select(names) => {
                    let mut narrowed = Schema::default();
                    for n in names {
                        if let Some((pos, ty)) = self.field(schema, n) {
                            narrowed.push_at(n.value.clone(), ty, pos);
                        }
                    }
                    *schema = narrowed;
                }
                Step::Score(spec) => {
                    let before = schema.clone();
                    for f in &spec.features {
                        if let Err(e) = check_feature(&f.value, &before) {
                            self.expr_err(f, e);
                        }
                    }
                    let [label_pos, class_pos, probability_pos, score_pos, drift_pos] = score_fields(&spec.prefix).map(|(name, ty)| {
                        schema.push_at(name, ty, *width);
                        *width += 1;
                        *width - 1
                    });
                    let origin = job::value_error(self.file, self.text, &spec.model, 1, 1, String::new());
                    let plan = ScorePlan {
                        spec: (**spec).clone(),
                        label_pos,
                        class_pos,
                        probability_pos,
                        score_pos,
                        drift_pos,
                        origin,
                        used: [true; 5],
                        tenant_pos: before.lookup(&self.tenant).map(|(pos, _)| pos),
                    };
                    out.push(PlannedStep { schema: before, kind: PlannedKind::Score(Box::new(plan)) });
                }
                Step::Anomaly(spec) => {
                    let Some(series) = self.series.clone() else {
                        self.at(&spec.value, "an anomaly step scores a series of window results: put it after a `window` step".into());
                        continue;
                    };
                    let before = schema.clone();
                    if let Err(e) = check_feature(&spec.value.value, &before) {
                        self.expr_err(&spec.value, e);
                    }
                    let mut key_pos = vec![0];
                    match &spec.key_by {
                        Some(keys) => key_pos.extend(keys.iter().filter_map(|k| self.field(&before, k)).map(|(p, _)| p)),
                        None => key_pos.extend(series.iter().skip(1).filter_map(|k| before.lookup(k)).map(|(p, _)| p)),
                    }
                    let time = spec.time.clone().unwrap_or(Located {
                        value: "window_start".into(),
                        key: spec.key.clone(),
                        span: spec.value.span.clone(),
                    });
                    let time_pos = match self.field(&before, &time) {
                        Some((p, DataType::Timestamp)) => p,
                        Some((_, t)) => {
                            self.at(&time, format!("type error: `time` must be a timestamp field, found {t}"));
                            0
                        }
                        None => 0,
                    };
                    let mut push = |name: String, ty| {
                        schema.push_at(name, ty, *width);
                        *width += 1;
                        *width - 1
                    };
                    let p = &spec.prefix;
                    let (score_pos, baseline_pos, flag_pos) = (
                        push(format!("{p}_score"), DataType::Float),
                        push(format!("{p}_baseline"), DataType::Float),
                        push(format!("{p}_is_anomaly"), DataType::Bool),
                    );
                    let plan = AnomalyPlan { spec: (**spec).clone(), key_pos, time_pos, score_pos, baseline_pos, flag_pos };
                    out.push(PlannedStep { schema: before, kind: PlannedKind::Anomaly(Box::new(plan)) });
                }
                Step::Audio(spec) => {
                    let before = schema.clone();
                    let field_pos = match self.field(&before, &spec.field) {
                        Some((p, DataType::String)) => p,
                        Some((_, t)) => {
                            self.at(&spec.field, format!("type error: the audio field must be a string (a path or base64), found {t}"));
                            continue;
                        }
                        None => continue,
                    };
                    let first_out = *width;
                    for (name, ty) in audio_fields(&spec.prefix) {
                        schema.push_at(name, ty, *width);
                        *width += 1;
                    }
                    out.push(PlannedStep {
                        schema: before,
                        kind: PlannedKind::Audio(Box::new(AudioPlan { spec: (**spec).clone(), field_pos, first_out })),
                    });
                }
                Step::Window(_) | Step::Pattern(_) => {}
            }
        }
        out
    }

    pub(crate) fn aggregate(&mut self, name: &str, loc: &Located<String>, schema: &Schema) -> Option<AggPlan> {
        let ast = match expr::parse(&loc.value) {
            Ok(a) => a,
            Err(e) => {
                self.expr_err(loc, e);
                return None;
            }
        };
        let Ast::Function(f) = &ast else {
            self.at(
                loc,
                "expected an aggregate such as count(*), sum(x), avg(x), count_distinct(x), approx_percentile(x, 0.95), top_k(x, 10)"
                    .into(),
            );
            return None;
        };
        let fname = f.name.to_string().to_ascii_lowercase();
        let (args, distinct) = match &f.args {
            FunctionArguments::List(l) => (l.args.iter().collect::<Vec<_>>(), l.duplicate_treatment == Some(DuplicateTreatment::Distinct)),
            _ => (Vec::new(), false),
        };
        let mut exprs: Vec<&Ast> = Vec::new();
        let mut star = false;
        for a in &args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => exprs.push(e),
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => star = true,
                _ => {
                    self.at(loc, format!("unsupported argument in `{fname}`"));
                    return None;
                }
            }
        }
        let err = |v: &mut Self, e: ExprError| {
            v.expr_err(loc, e);
            None
        };
        let usage = |v: &mut Self, u: &str| -> Option<AggPlan> {
            v.at(loc, format!("`{fname}` expects {u}"));
            None
        };
        let constant = |e: &Ast| -> Option<Value> { expr::compile_ast(e, &Schema::default()).ok()?.literal().cloned() };
        if distinct && fname != "count" {
            self.at(loc, format!("DISTINCT is only supported in count(DISTINCT x); use count_distinct(x), not {fname}(DISTINCT ...)"));
            return None;
        }
        let func = match (fname.as_str(), star, exprs.len()) {
            ("count", true, 0) => AggFunc::CountAll,
            ("count", false, 1) if distinct => AggFunc::CountDistinct,
            ("count", false, 1) => AggFunc::Count,
            ("count", ..) => return usage(self, "`*` or one expression"),
            ("sum", false, 1) => AggFunc::Sum,
            ("min", false, 1) => AggFunc::Min,
            ("max", false, 1) => AggFunc::Max,
            ("avg", false, 1) => AggFunc::Avg,
            ("count_distinct", false, 1) => AggFunc::CountDistinct,
            ("approx_count_distinct", false, 1) => AggFunc::ApproxCountDistinct,
            ("first", false, 1) => AggFunc::First,
            ("list", false, 1) => AggFunc::List,
            ("last", false, 1) => AggFunc::Last,
            ("p50", false, 1) => AggFunc::Percentile(0.5),
            ("p95", false, 1) => AggFunc::Percentile(0.95),
            ("p99", false, 1) => AggFunc::Percentile(0.99),
            ("approx_percentile", false, 2) => match constant(exprs[1]).and_then(|v| v.as_f64()) {
                Some(q) if (0.0..=1.0).contains(&q) => AggFunc::Percentile(q),
                _ => {
                    return usage(
                        self,
                        "a constant quantile between 0 and 1 as its second argument, e.g. approx_percentile(duration_ms, 0.95)",
                    )
                }
            },
            ("top_k", false, 2) => match constant(exprs[1]).and_then(|v| v.as_i64()) {
                Some(k) if (1..=10_000).contains(&k) => AggFunc::TopK(k as usize),
                _ => return usage(self, "a constant k between 1 and 10000 as its second argument, e.g. top_k(track_id, 10)"),
            },
            (n, ..) if expr::AGGREGATES.contains(&n) => {
                return usage(
                    self,
                    match n {
                        "approx_percentile" => "(expression, quantile)",
                        "top_k" => "(expression, k)",
                        _ => "one expression argument",
                    },
                )
            }
            (n, ..) => {
                self.at(loc, format!("unknown aggregate `{n}` (expected one of: {})", expr::AGGREGATES.join(", ")));
                return None;
            }
        };
        let (arg, arg_type) = match exprs.first() {
            Some(e) => match expr::compile_ast(e, schema) {
                Ok(c) => (Some(e.to_string()), c.ty),
                Err(x) => return err(self, x),
            },
            None => (None, DataType::Int),
        };
        let numeric = matches!(arg_type, DataType::Int | DataType::Float | DataType::Null);
        let out_type = match func {
            AggFunc::CountAll | AggFunc::Count | AggFunc::CountDistinct | AggFunc::ApproxCountDistinct => DataType::Int,
            AggFunc::Sum if numeric => {
                if arg_type == DataType::Float {
                    DataType::Float
                } else {
                    DataType::Int
                }
            }
            AggFunc::Avg | AggFunc::Percentile(_) if numeric => DataType::Float,
            AggFunc::Sum | AggFunc::Avg | AggFunc::Percentile(_) => {
                self.at(loc, format!("type error: `{fname}` needs a numeric argument, found {arg_type}"));
                return None;
            }
            AggFunc::Min | AggFunc::Max | AggFunc::First | AggFunc::Last => arg_type,
            AggFunc::TopK(_) | AggFunc::List => DataType::String,
        };
        Some(AggPlan { name: name.to_string(), func, arg, arg_type, out_type })
    }
}

/// Checks a parsed job against its own schema.
pub fn validate(file: &str, text: &str, spec: JobSpec) -> Result<Plan, JobErrors> {
    let mut v = V { file, text, errors: Vec::new(), series: None, tenant: spec.schema.tenant.value.clone() };
    let input = Schema::new(spec.schema.fields.iter().map(|(n, t)| (n.value.clone(), *t)).collect());
    if input.is_empty() {
        v.at(&spec.schema.tenant, "the schema declares no fields (add a [schema.fields] table)".into());
    }
    let (tenant_pos, tenant_type) = match v.field(&input, &spec.schema.tenant) {
        Some((p, t)) if matches!(t, DataType::String | DataType::Int) => (p, t),
        Some((_, t)) => {
            v.at(&spec.schema.tenant, format!("type error: the tenant field must be a string or int, found {t}"));
            (0, DataType::String)
        }
        None => (0, DataType::String),
    };
    if let job::SourceSpec::Generator(g) = &spec.source {
        let produced = g.profile.fields();
        for (name, ty) in &spec.schema.fields {
            match produced.iter().find(|(n, _)| *n == name.value) {
                Some((_, t)) if t == ty => {}
                Some((_, t)) => v.at(name, format!("type error: the generator produces `{}` as {t}, not {ty}", name.value)),
                None => {
                    let names: Vec<&str> = produced.iter().map(|(n, _)| *n).collect();
                    v.at(
                        name,
                        format!(
                            "the generator (profile \"{}\") produces no field `{}` (it produces: {})",
                            g.profile.name(),
                            name.value,
                            names.join(", ")
                        ),
                    );
                }
            }
        }
    }
    let mut time_pos = None;
    if let Some(f) = &spec.time.field {
        match v.field(&input, f) {
            Some((p, DataType::Timestamp)) => time_pos = Some(p),
            Some((_, t)) => v.at(f, format!("type error: the event-time field must be a timestamp, found {t}")),
            None => {}
        }
    }

    let window_at = spec.steps.iter().position(|s| matches!(s, Step::Window(_) | Step::Pattern(_)));
    let windows: Vec<&job::WindowSpec> = spec.steps.iter().filter_map(|s| if let Step::Window(w) = s { Some(w) } else { None }).collect();
    let patterns: Vec<&job::PatternSpec> =
        spec.steps.iter().filter_map(|s| if let Step::Pattern(p) = s { Some(&**p) } else { None }).collect();
    let keyed: Vec<(String, std::ops::Range<usize>, &str)> = spec
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Window(w) => Some((w.key.clone(), w.span.clone(), "a window")),
            Step::Pattern(p) => Some((p.key.clone(), p.span.clone(), "a pattern")),
            _ => None,
        })
        .collect();
    if let Some((key, span, _)) = keyed.get(1) {
        let loc = Located { value: String::new(), key: key.clone(), span: span.clone() };
        v.at(&loc, "a job has at most one window or pattern step (chain a second job on the first one's output instead)".into());
    }
    if let Some((key, span, what)) = keyed.first() {
        // Without a [time] table a job runs on processing time; a window must say which time it
        // means, since silently windowing by arrival time is rarely what was wanted.
        if spec.time.key_span == (0..0) {
            let loc = Located { value: String::new(), key: key.clone(), span: span.clone() };
            v.at(&loc, format!("{what} needs a time field: add [time] with field = \"<timestamp field>\" (or mode = \"processing\")"));
        }
    }
    if let (Some(p), job::LatePolicy::Update) = (patterns.first(), spec.time.late_policy) {
        let loc = Located { value: String::new(), key: p.key.clone(), span: p.span.clone() };
        v.at(
            &loc,
            "late_policy = \"update\" re-fires windows; a pattern takes events in time order once: use \"drop\" or \"side_output\"".into(),
        );
    }

    let split = window_at.unwrap_or(spec.steps.len());
    let before: Vec<&Step> = spec.steps[..split].iter().collect();
    let after: Vec<&Step> = spec.steps.get(split + 1..).unwrap_or(&[]).iter().collect();
    let mut schema = input.clone();
    let mut width = input.len();
    let pre = v.stateless(&before, &mut schema, &mut width);
    let pre_schema = schema.clone();

    let mut pattern = None;
    let (window, post, output, out_width) = match (windows.first(), patterns.first()) {
        (None, Some(p)) => {
            let tenant_name = spec.schema.tenant.value.clone();
            let mut out = Schema::default();
            out.push_at(tenant_name.clone(), tenant_type, 0);
            for k in &p.key_by {
                if k.value == tenant_name {
                    v.at(k, "the tenant field is always part of the key; leave it out of key_by".into());
                } else if let Some((_, ty)) = pre_schema.lookup(&k.value) {
                    out.push_at(k.value.clone(), ty, out.len());
                }
            }
            out.push_at("match_start".into(), DataType::Timestamp, out.len());
            out.push_at("match_end".into(), DataType::Timestamp, out.len());
            if p.timeouts {
                out.push_at("timed_out".into(), DataType::Bool, out.len());
            }
            if let Some(mut planned) = v.pattern(p, &pre_schema, width, time_pos) {
                if planned.measures.is_empty() && p.measures.is_empty() {
                    planned.measures = default_measures(&planned, &pre_schema, &tenant_name, &out);
                }
                for m in &planned.measures {
                    if out.lookup(&m.agg.name).is_some() {
                        let loc = p.measures.iter().find(|(n, _)| *n == m.agg.name).map(|(_, l)| l.clone());
                        let loc = loc.unwrap_or(Located { value: String::new(), key: p.key.clone(), span: p.span.clone() });
                        v.at(&loc, format!("the measure name `{}` is already an output field; choose another", m.agg.name));
                    }
                    out.push_at(m.agg.name.clone(), m.agg.out_type, out.len());
                }
                pattern = Some(planned);
            }
            let mut width = out.len();
            let mut schema = out;
            let post = v.stateless(&after, &mut schema, &mut width);
            (None, post, schema, width)
        }
        (Some(w), _) => {
            let mut key_pos = Vec::new();
            let mut out = Schema::default();
            let tenant_name = spec.schema.tenant.value.clone();
            out.push_at(tenant_name.clone(), tenant_type, 0);
            if pre_schema.lookup(&tenant_name).is_none() && input.lookup(&tenant_name).is_some() {
                let loc = &spec.schema.tenant;
                v.at(loc, format!("the tenant field `{tenant_name}` was removed by a `select` before the window; keep it"));
            }
            for k in &w.key_by {
                if let Some((pos, ty)) = v.field(&pre_schema, k) {
                    if k.value == tenant_name {
                        v.at(k, "the tenant field is always part of the key; leave it out of key_by".into());
                        continue;
                    }
                    key_pos.push(pos);
                    out.push_at(k.value.clone(), ty, out.len());
                }
            }
            out.push_at("window_start".into(), DataType::Timestamp, out.len());
            out.push_at("window_end".into(), DataType::Timestamp, out.len());
            let mut aggs = Vec::new();
            for (name, text) in &w.aggregates {
                if out.lookup(name).is_some() {
                    v.at(text, format!("the aggregate name `{name}` is already an output field; choose another"));
                    continue;
                }
                if let Some(a) = v.aggregate(name, text, &pre_schema) {
                    out.push_at(name.clone(), a.out_type, out.len());
                    aggs.push(a);
                }
            }
            let mut width = out.len();
            let mut schema = out;
            v.series = Some(std::iter::once(tenant_name.clone()).chain(w.key_by.iter().map(|k| k.value.clone())).collect());
            if spec.time.late_policy == job::LatePolicy::Update {
                for s in &after {
                    if let Step::Anomaly(a) = s {
                        v.at(&a.value, "an anomaly step learns from each window result once; late_policy = \"update\" sends results again: use \"drop\" or \"side_output\"".into());
                    }
                }
            }
            let post = v.stateless(&after, &mut schema, &mut width);
            v.series = None;
            (Some(WindowPlan { kind: w.kind, key_pos, aggs }), post, schema, width)
        }
        (None, None) => (None, Vec::new(), pre_schema.clone(), width),
    };

    for sink in &spec.sinks {
        if let job::SinkKind::Redis(r) = &sink.kind {
            v.redis_sink(r, &output, &spec.schema.tenant.value, spec.time.late_policy);
        }
    }
    let alert_fields = alert_schema(&output);
    if let Some(extra) = spec.alerts.get(MAX_ALERT_RULES) {
        v.at(&extra.condition, format!("a job has at most {MAX_ALERT_RULES} alert rules"));
    }
    for rule in &spec.alerts {
        match expr::compile(&rule.condition.value, &alert_fields) {
            Ok(c) if c.ty == DataType::Bool => {}
            Ok(c) => v.at(&rule.condition, format!("type error: an alert condition must be a boolean, found {}", c.ty)),
            Err(e) => v.expr_err(&rule.condition, e),
        }
        for (_, text) in &rule.annotations {
            v.template(text, &alert_fields);
        }
    }

    if !v.errors.is_empty() {
        return Err(JobErrors(v.errors));
    }
    let (mut pre, mut post) = (pre, post);
    for step in pre.iter_mut().chain(post.iter_mut()) {
        if let PlannedKind::Score(sp) = &mut step.kind {
            mark_used_outputs(sp, text, &output);
        }
    }
    Ok(Plan { spec, input, tenant_pos, tenant_type, time_pos, row_width: width, pre, pre_schema, window, pattern, post, out_width, output })
}

/// Which of a score step's outputs anything may read: those in the job's output, and those
/// named anywhere in the file after the step (later steps, alert rules). Conservative: a name in
/// a comment counts too. The scorer skips writing the others (a string class per row costs).
fn mark_used_outputs(sp: &mut ScorePlan, text: &str, output: &Schema) {
    let after = text.get(sp.spec.model.span.start.min(text.len())..).unwrap_or("");
    let names = score_fields(&sp.spec.prefix);
    for (used, (name, _)) in sp.used.iter_mut().zip(&names) {
        *used = output.lookup(name).is_some() || after.contains(name.as_str());
    }
}

/// Without `measures`, a match row carries each step's event count and its last event's
/// fields: `<step>_events`, `<step>_<field>`.
fn default_measures(p: &PatternPlan, schema: &Schema, tenant: &str, out: &Schema) -> Vec<MeasurePlan> {
    let mut m = Vec::new();
    for (i, s) in p.steps.iter().enumerate().filter(|(_, s)| !s.negated) {
        let count = AggPlan {
            name: format!("{}_events", s.name),
            func: AggFunc::CountAll,
            arg: None,
            arg_type: DataType::Int,
            out_type: DataType::Int,
        };
        m.push(MeasurePlan { step: Some(i), agg: count });
        for (f, ty) in schema.fields() {
            if f == tenant || out.lookup(f).is_some() {
                continue;
            }
            let arg = format!("\"{}\".\"{f}\"", s.name);
            m.push(MeasurePlan {
                step: Some(i),
                agg: AggPlan { name: format!("{}_{f}", s.name), func: AggFunc::Last, arg: Some(arg), arg_type: *ty, out_type: *ty },
            });
        }
    }
    m
}
