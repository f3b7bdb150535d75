//! Aggregate accumulators. Every accumulator is mergeable, which is what makes two-phase
//! aggregation work: workers pre-aggregate before the exchange and merge after it.

use std::collections::{HashMap, HashSet};

use cardinality_estimator::CardinalityEstimator;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use tenantflow_core::expr::CompiledExpr;
use tenantflow_core::plan::{AggFunc, AggPlan};
use tenantflow_core::{DataType, Schema, Value};

type FastSet<T> = HashSet<T, foldhash::fast::FixedState>;
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// The running state of one aggregate for one window and key.
#[derive(Clone, Serialize, Deserialize)]
pub enum Acc {
    Count(i64),
    SumInt(i64),
    SumFloat(ExactSum),
    Min(Value),
    Max(Value),
    Avg {
        sum: ExactSum,
        count: i64,
    },
    /// `avg` of an int argument: the exact sum (no int is rounded to a float on the way).
    AvgInt {
        sum: i128,
        count: i64,
    },
    Distinct(FastSet<Value>),
    Hll(Box<CardinalityEstimator<Value>>),
    Sketch(Box<DDSketch>),
    /// (event time, value); ties broken by value so results do not depend on arrival order.
    First(i64, Value),
    Last(i64, Value),
    TopK(FastMap<Value, u64>),
    /// (event time, value) of every row.
    List(Vec<(i64, Value)>),
}

/// An aggregate's argument: a plain field is read directly, anything else through its compiled
/// expression (a bare column is by far the common case, and skips a closure call per row).
enum Arg {
    Column(usize),
    Expr(CompiledExpr),
}

impl Arg {
    #[inline]
    fn eval(&self, row: &[Value]) -> Value {
        match self {
            Arg::Column(p) => row[*p].clone(),
            Arg::Expr(e) => e.eval(row),
        }
    }

    #[inline]
    fn eval_i64(&self, row: &[Value]) -> Option<i64> {
        match self {
            Arg::Column(p) => row[*p].as_i64(),
            Arg::Expr(e) => e.eval_i64(row),
        }
    }

    #[inline]
    fn eval_f64(&self, row: &[Value]) -> Option<f64> {
        match self {
            Arg::Column(p) => row[*p].as_f64(),
            Arg::Expr(e) => e.eval_f64(row),
        }
    }
}

/// Compiled aggregates of one window step.
pub struct Aggregates {
    /// (function, output type, argument, whether the argument is an int).
    specs: Vec<(AggFunc, DataType, Option<Arg>, bool)>,
}

impl Aggregates {
    pub fn compile(aggs: &[AggPlan], schema: &Schema) -> Aggregates {
        let arg = |a: &AggPlan| -> Option<Arg> {
            let text = a.arg.as_deref()?;
            match schema.lookup(text.trim()) {
                Some((pos, _)) => Some(Arg::Column(pos)),
                None => a.compile_arg(schema).map(Arg::Expr),
            }
        };
        Aggregates { specs: aggs.iter().map(|a| (a.func, a.out_type, arg(a), a.arg_type == DataType::Int)).collect() }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Fresh accumulators for a new window.
    pub fn init(&self) -> Vec<Acc> {
        self.specs
            .iter()
            .map(|(f, out, _, int_arg)| match f {
                AggFunc::CountAll | AggFunc::Count => Acc::Count(0),
                AggFunc::Sum if *out == DataType::Float => Acc::SumFloat(ExactSum::default()),
                AggFunc::Sum => Acc::SumInt(0),
                AggFunc::Min => Acc::Min(Value::Null),
                AggFunc::Max => Acc::Max(Value::Null),
                // Ints are summed exactly: converting each to a float first would round.
                AggFunc::Avg if *int_arg => Acc::AvgInt { sum: 0, count: 0 },
                AggFunc::Avg => Acc::Avg { sum: ExactSum::default(), count: 0 },
                AggFunc::CountDistinct => Acc::Distinct(FastSet::default()),
                AggFunc::ApproxCountDistinct => Acc::Hll(Box::default()),
                AggFunc::Percentile(_) => Acc::Sketch(Box::new(DDSketch::new(SketchConfig::defaults()))),
                AggFunc::First => Acc::First(i64::MAX, Value::Null),
                AggFunc::Last => Acc::Last(i64::MIN, Value::Null),
                AggFunc::TopK(_) => Acc::TopK(FastMap::default()),
                AggFunc::List => Acc::List(Vec::new()),
            })
            .collect()
    }

    /// Adds one row (with event time `ts`) to the accumulators.
    #[inline]
    pub fn update(&self, accs: &mut [Acc], row: &[Value], ts: i64) {
        for (acc, (_, _, arg, _)) in accs.iter_mut().zip(&self.specs) {
            let Some(arg) = arg else {
                // count(*)
                if let Acc::Count(n) = acc {
                    *n += 1;
                }
                continue;
            };
            match acc {
                Acc::Count(n) => {
                    if !arg.eval(row).is_null() {
                        *n += 1
                    }
                }
                Acc::SumInt(s) => {
                    if let Some(v) = arg.eval_i64(row) {
                        *s = s.wrapping_add(v)
                    }
                }
                Acc::SumFloat(s) => {
                    if let Some(v) = arg.eval_f64(row) {
                        s.add(v)
                    }
                }
                Acc::Avg { sum, count } => {
                    if let Some(v) = arg.eval_f64(row) {
                        sum.add(v);
                        *count += 1;
                    }
                }
                Acc::AvgInt { sum, count } => {
                    if let Some(v) = arg.eval_i64(row) {
                        *sum += i128::from(v);
                        *count += 1;
                    }
                }
                Acc::Min(m) => {
                    let v = arg.eval(row);
                    if !v.is_null() && (m.is_null() || v < *m) {
                        *m = v
                    }
                }
                Acc::Max(m) => {
                    let v = arg.eval(row);
                    if !v.is_null() && (m.is_null() || v > *m) {
                        *m = v
                    }
                }
                Acc::Distinct(set) => {
                    let v = arg.eval(row);
                    if !v.is_null() {
                        set.insert(v);
                    }
                }
                Acc::Hll(h) => {
                    let v = arg.eval(row);
                    if !v.is_null() {
                        h.insert(&v);
                    }
                }
                Acc::Sketch(s) => {
                    if let Some(v) = arg.eval_f64(row) {
                        s.add(v)
                    }
                }
                Acc::First(t, v) => {
                    let x = arg.eval(row);
                    if !x.is_null() && (ts, &x) < (*t, &*v) {
                        *t = ts;
                        *v = x;
                    }
                }
                Acc::Last(t, v) => {
                    let x = arg.eval(row);
                    if !x.is_null() && (ts, &x) > (*t, &*v) {
                        *t = ts;
                        *v = x;
                    }
                }
                Acc::TopK(m) => {
                    let v = arg.eval(row);
                    if !v.is_null() {
                        *m.entry(v).or_insert(0) += 1;
                    }
                }
                Acc::List(l) => {
                    let v = arg.eval(row);
                    if !v.is_null() {
                        l.push((ts, v));
                    }
                }
            }
        }
    }

    /// Writes the final values of `accs` to `out`.
    pub fn finish(&self, accs: &[Acc], out: &mut Vec<Value>) {
        for (acc, (func, out_ty, _, _)) in accs.iter().zip(&self.specs) {
            out.push(match acc {
                Acc::Count(n) => Value::Int(*n),
                Acc::SumInt(s) => Value::Int(*s),
                Acc::SumFloat(s) => Value::Float(s.value()),
                Acc::Avg { sum, count } => {
                    if *count == 0 {
                        Value::Null
                    } else {
                        Value::Float(sum.value() / *count as f64)
                    }
                }
                Acc::AvgInt { sum, count } => {
                    if *count == 0 {
                        Value::Null
                    } else {
                        Value::Float(exact_ratio(*sum, *count as u128))
                    }
                }
                Acc::Min(v) | Acc::Max(v) | Acc::First(_, v) | Acc::Last(_, v) => retype(v.clone(), *out_ty),
                Acc::Distinct(s) => Value::Int(s.len() as i64),
                Acc::Hll(h) => Value::Int(h.estimate() as i64),
                Acc::Sketch(s) => match func {
                    AggFunc::Percentile(q) => s.quantile(*q).ok().flatten().map_or(Value::Null, Value::Float),
                    _ => Value::Null,
                },
                Acc::List(l) => {
                    // Sorted by value within a time too, so the order does not depend on arrival.
                    let mut l = l.clone();
                    l.sort();
                    let json: Vec<serde_json::Value> = l.iter().map(|(_, v)| v.to_json()).collect();
                    Value::Str(CompactString::new(serde_json::Value::Array(json).to_string()))
                }
                Acc::TopK(m) => {
                    let k = if let AggFunc::TopK(k) = func { *k } else { 10 };
                    let mut items: Vec<(&Value, &u64)> = m.iter().collect();
                    items.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                    let json: Vec<serde_json::Value> =
                        items.into_iter().take(k).map(|(v, c)| serde_json::json!({"value": v.to_json(), "count": c})).collect();
                    Value::Str(CompactString::new(serde_json::Value::Array(json).to_string()))
                }
            });
        }
    }
}

/// Min/max over an int column compared with a float literal may hold a float; keep the declared type.
fn retype(v: Value, ty: DataType) -> Value {
    match (v, ty) {
        (Value::Float(f), DataType::Int) => Value::Int(f as i64),
        (Value::Int(i), DataType::Float) => Value::Float(i as f64),
        (v, _) => v,
    }
}

/// Merges `from` into `into` (same aggregates, same order).
pub fn merge(into: &mut [Acc], from: Vec<Acc>) {
    for (a, b) in into.iter_mut().zip(from) {
        match (a, b) {
            (Acc::Count(x), Acc::Count(y)) => *x += y,
            (Acc::SumInt(x), Acc::SumInt(y)) => *x = x.wrapping_add(y),
            (Acc::SumFloat(x), Acc::SumFloat(y)) => x.merge(&y),
            (Acc::Avg { sum, count }, Acc::Avg { sum: s2, count: c2 }) => {
                sum.merge(&s2);
                *count += c2;
            }
            (Acc::AvgInt { sum, count }, Acc::AvgInt { sum: s2, count: c2 }) => {
                *sum += s2;
                *count += c2;
            }
            (Acc::Min(x), Acc::Min(y)) if !y.is_null() && (x.is_null() || y < *x) => *x = y,
            (Acc::Max(x), Acc::Max(y)) if !y.is_null() && (x.is_null() || y > *x) => *x = y,
            (Acc::Distinct(x), Acc::Distinct(y)) => {
                if x.len() < y.len() {
                    let small = std::mem::replace(x, y);
                    x.extend(small);
                } else {
                    x.extend(y)
                }
            }
            (Acc::Hll(x), Acc::Hll(y)) => x.merge(&y),
            (Acc::Sketch(x), Acc::Sketch(y)) => {
                // Both sketches use the default configuration, so merging cannot fail.
                let _ = x.merge(&y);
            }
            (Acc::First(t, v), Acc::First(t2, v2)) if !v2.is_null() && (t2, &v2) < (*t, &*v) => {
                *t = t2;
                *v = v2;
            }
            (Acc::Last(t, v), Acc::Last(t2, v2)) if !v2.is_null() && (t2, &v2) > (*t, &*v) => {
                *t = t2;
                *v = v2;
            }
            (Acc::List(x), Acc::List(y)) => x.extend(y),
            (Acc::TopK(x), Acc::TopK(y)) => {
                for (k, c) in y {
                    *x.entry(k).or_insert(0) += c;
                }
            }
            // Mismatched pairs cannot happen (same aggregates); a guard that fails keeps `a`.
            _ => {}
        }
    }
}

/// `sum / count` rounded once, to the nearest float (ties to even): the quotient is computed
/// in integers with at least two bits beyond a float's 53, the remainder decides ties.
pub fn exact_ratio(sum: i128, count: u128) -> f64 {
    if sum == 0 || count == 0 {
        return 0.0;
    }
    let s = sum.unsigned_abs();
    let bits = |x: u128| 128 - x.leading_zeros() as i32;
    // Scale the dividend so the quotient has 55 or 56 bits (s < 2^127 and count < 2^64 keep
    // the shifted dividend below 2^120).
    let k = (55 + bits(count) - bits(s)).max(0);
    let n = s << k;
    let (q, r) = (n / count, n % count);
    let shift = bits(q) - 53;
    let (mut m, rest) = if shift > 0 { (q >> shift, q & ((1u128 << shift) - 1)) } else { (q, 0) };
    if shift > 0 {
        let half = 1u128 << (shift - 1);
        if rest > half || (rest == half && (r != 0 || m & 1 == 1)) {
            m += 1;
        }
    }
    let v = m as f64 * 2f64.powi(shift - k);
    if sum < 0 {
        -v
    } else {
        v
    }
}

/// An exactly rounded float sum (Shewchuk's algorithm, as in Python's `math.fsum`): the result
/// does not depend on the order of additions or merges, so float sums and averages are the same
/// for any number of workers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExactSum {
    /// Non-overlapping partial sums, increasing in magnitude.
    partials: Vec<f64>,
    /// Sum of infinities and NaNs, kept apart so they do not poison the partials.
    special: f64,
}

impl ExactSum {
    pub fn add(&mut self, mut x: f64) {
        if !x.is_finite() {
            self.special += x;
            return;
        }
        let mut i = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        self.partials.truncate(i);
        self.partials.push(x);
    }

    pub fn merge(&mut self, other: &ExactSum) {
        for &p in &other.partials {
            self.add(p);
        }
        self.special += other.special;
    }

    /// The correctly rounded sum.
    pub fn value(&self) -> f64 {
        if self.special != 0.0 || self.special.is_nan() {
            return self.special;
        }
        let p = &self.partials;
        let Some(mut n) = p.len().checked_sub(1) else { return 0.0 };
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // Round half to even across the remaining partials, as fsum does.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::{exact_ratio, ExactSum};

    fn sum(xs: &[f64]) -> f64 {
        let mut s = ExactSum::default();
        xs.iter().for_each(|&x| s.add(x));
        s.value()
    }

    #[test]
    fn exact_sum_is_order_independent() {
        assert_eq!(sum(&[0.1, 0.2, 0.3]), 0.6);
        assert_eq!(sum(&[0.3, 0.2, 0.1]), 0.6);
        assert_eq!(sum(&[1e100, 1.0, -1e100]), 1.0);
        let (mut a, mut b) = (ExactSum::default(), ExactSum::default());
        a.add(0.1);
        b.add(0.2);
        b.add(0.3);
        a.merge(&b);
        assert_eq!(a.value(), 0.6);
        assert_eq!(sum(&[]), 0.0);
        assert!(sum(&[1.0, f64::INFINITY]).is_infinite());
    }

    #[test]
    fn int_averages_are_rounded_once() {
        // The example of issue 17: each value converted to a float first gave 0.
        assert_eq!(exact_ratio(9_007_199_254_740_993 - 9_007_199_254_740_992, 2), 0.5);
        let two54 = 1i128 << 54;
        // Floats near 2^54 are 4 apart: ties go to the even neighbour, a remainder breaks them.
        assert_eq!(exact_ratio(two54 + 1, 1), 2f64.powi(54));
        assert_eq!(exact_ratio(two54 + 2, 1), 2f64.powi(54));
        assert_eq!(exact_ratio(two54 + 6, 1), 2f64.powi(54) + 8.0);
        assert_eq!(exact_ratio((two54 + 2) * 3 + 1, 3), 2f64.powi(54) + 4.0);
        assert_eq!(exact_ratio(-(two54 + 6) * 7, 7), -(2f64.powi(54) + 8.0));
        assert_eq!(exact_ratio(i128::from(i64::MAX) * i128::from(i64::MAX), i64::MAX as u128), i64::MAX as f64);
        assert_eq!(exact_ratio(1, 3), 1.0 / 3.0);
        assert_eq!(exact_ratio(-2, 3), -2.0 / 3.0);
        assert_eq!(exact_ratio(1, i64::MAX as u128), 1.0 / i64::MAX as f64);
        // Below 2^53 both operands are exact floats and IEEE division rounds once: the reference.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = (x >> 11) as i128 - (1 << 52);
            let c = ((x >> 3) % (1 << 40)) as u128 + 1;
            assert_eq!(exact_ratio(s, c), s as f64 / c as f64, "{s} / {c}");
        }
    }
}
