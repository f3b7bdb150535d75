//! The synthetic event generator: deterministic for a seed, whatever the number of workers.
//!
//! Event `g` (0, 1, 2, ...) is a pure function of (seed, g); worker `w` of `n` generates the
//! events with `g % n == w`. Event time is `start_time + g * event_interval`, minus a delay for
//! the configured out-of-order and late fractions.

use std::time::Instant;

use compact_str::{format_compact, CompactString};
use tenantflow_core::job::{GeneratorProfile, GeneratorSpec};
use tenantflow_core::{Schema, Value};

use crate::source::{Batch, Poll, Source};

const EVENT_TYPES: &[(&str, u32)] = &[
    ("play", 550),
    ("skip", 200),
    ("like", 80),
    ("search", 70),
    ("playlist_add", 50),
    ("subscribe", 20),
    ("cancel", 15),
    ("payment_failed", 15),
];
const COUNTRIES: &[(&str, u32)] = &[
    ("US", 30),
    ("BR", 12),
    ("DE", 8),
    ("GB", 8),
    ("MX", 6),
    ("FR", 6),
    ("SE", 5),
    ("JP", 5),
    ("IN", 5),
    ("ES", 4),
    ("CA", 4),
    ("AU", 3),
    ("NL", 2),
    ("PL", 2),
];
const DEVICES: &[(&str, u32)] = &[("mobile", 55), ("desktop", 20), ("web", 10), ("tv", 6), ("speaker", 5), ("car", 4)];
const PRICES: &[f64] = &[9.99, 14.99, 4.99];

#[inline]
fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A weighted choice table: cumulative weights, values.
struct Choice {
    cumulative: Vec<f64>,
    values: Vec<Value>,
}

impl Choice {
    fn new(items: &[(&str, u32)]) -> Choice {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut acc = 0.0;
        let cumulative = items
            .iter()
            .map(|(_, w)| {
                acc += *w as f64 / total as f64;
                acc
            })
            .collect();
        Choice { cumulative, values: items.iter().map(|(v, _)| Value::from(*v)).collect() }
    }

    fn zipf(names: Vec<CompactString>, s: f64) -> Choice {
        let weights: Vec<f64> = (1..=names.len()).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Choice { cumulative, values: names.into_iter().map(Value::Str).collect() }
    }

    #[inline]
    fn index(&self, u: f64) -> usize {
        self.cumulative.partition_point(|&c| c < u).min(self.values.len() - 1)
    }

    #[inline]
    fn pick(&self, u: f64) -> &Value {
        &self.values[self.index(u)]
    }
}

pub struct Generator {
    spec: GeneratorSpec,
    next: u64,
    step: u64,
    /// (g % tenants, g % users, g % 1000) for the sequence profile's next event.
    counters: [u64; 3],
    /// How much each counter advances per event (the worker stride, reduced).
    strides: [u64; 3],
    produced: u64,
    started: Option<Instant>,
    per_worker_rate: Option<f64>,
    /// Row position of each of the profile's fields, if the job declares it.
    pos: Vec<Option<usize>>,
    /// The job declares exactly the profile's fields, in order.
    identity: bool,
    tenants: Choice,
    event_types: Choice,
    countries: Choice,
    devices: Choice,
    users: Vec<Value>,
    tracks: Vec<Value>,
    artists: Vec<Value>,
}

impl Generator {
    pub fn new(spec: &GeneratorSpec, schema: &Schema, worker: usize, workers: usize) -> Generator {
        let pos: Vec<Option<usize>> = spec.profile.fields().iter().map(|(n, _)| schema.lookup(n).map(|(p, _)| p)).collect();
        let music = spec.profile == GeneratorProfile::Music;
        let table = |n: u64, prefix: &str| -> Vec<Value> {
            if music {
                (0..n).map(|i| Value::Str(format_compact!("{prefix}{i}"))).collect()
            } else {
                Vec::new()
            }
        };
        let tenant_names = (0..spec.tenants).map(|i| format_compact!("tenant-{:02}", i)).collect();
        Generator {
            spec: spec.clone(),
            next: worker as u64,
            step: workers as u64,
            counters: [worker as u64 % spec.tenants, worker as u64 % spec.users, worker as u64 % 1000],
            strides: [workers as u64 % spec.tenants, workers as u64 % spec.users, workers as u64 % 1000],
            produced: 0,
            started: None,
            per_worker_rate: spec.rate.map(|r| r / workers as f64),
            identity: pos.iter().enumerate().all(|(i, p)| *p == Some(i)),
            pos,
            tenants: Choice::zipf(tenant_names, 1.1),
            event_types: Choice::new(EVENT_TYPES),
            countries: Choice::new(COUNTRIES),
            devices: Choice::new(DEVICES),
            users: table(spec.users, "u"),
            tracks: table(spec.tracks, "t"),
            artists: table((spec.tracks / 10).max(1), "a"),
        }
    }

    /// Event time of event `g`, with its out-of-order or late delay.
    fn event_time(&self, g: u64, r: u64) -> i64 {
        let base = self.spec.start_time + g as i64 * self.spec.event_interval;
        if self.spec.out_of_order_fraction == 0.0 && self.spec.late_fraction == 0.0 {
            return base;
        }
        let u = unit(mix(r ^ 0x0d0d));
        if u < self.spec.late_fraction {
            base - self.spec.late_delay
        } else if u < self.spec.late_fraction + self.spec.out_of_order_fraction {
            base - (unit(mix(r ^ 0x0e0e)) * self.spec.max_delay as f64) as i64
        } else {
            base
        }
    }

    fn set(row: &mut [Value], pos: Option<usize>, v: Value) {
        if let Some(p) = pos {
            row[p] = v;
        }
    }

    /// A `malformed_fraction` of events lack their tenant; the engine dead-letters them.
    fn music(&self, g: u64, row: &mut [Value]) {
        let r = mix(self.spec.seed ^ g.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let p = &self.pos;
        let malformed = self.spec.malformed_fraction > 0.0 && unit(mix(r ^ 0x0f0f)) < self.spec.malformed_fraction;
        if !malformed {
            Self::set(row, p[0], self.tenants.pick(unit(r)).clone());
        }
        let u_user = mix(r ^ 1);
        Self::set(row, p[1], self.users[(u_user % self.spec.users) as usize].clone());
        // Track popularity is skewed: u^3 favours low track numbers.
        let t = (unit(mix(r ^ 2)).powi(3) * self.spec.tracks as f64) as usize % self.tracks.len();
        Self::set(row, p[2], self.tracks[t].clone());
        Self::set(row, p[3], self.artists[t % self.artists.len()].clone());
        Self::set(row, p[4], self.countries.pick(unit(mix(r ^ 3))).clone());
        Self::set(row, p[5], self.devices.pick(unit(mix(r ^ 4))).clone());
        let et = self.event_types.index(unit(mix(r ^ 5)));
        Self::set(row, p[6], self.event_types.values[et].clone());
        let u = unit(mix(r ^ 6));
        let duration = match EVENT_TYPES[et].0 {
            "play" => 30_000 + (u * 240_000.0) as i64,
            "skip" => 1_000 + (u * 29_000.0) as i64,
            _ => 0,
        };
        Self::set(row, p[7], Value::Int(duration));
        let amount = match EVENT_TYPES[et].0 {
            "subscribe" | "payment_failed" => Value::Float(PRICES[(mix(r ^ 7) % PRICES.len() as u64) as usize]),
            _ => Value::Null,
        };
        Self::set(row, p[8], amount);
        Self::set(row, p[9], Value::Ts(self.event_time(g, r)));
    }

    /// The sequence profile, `n` events: a tight loop, since this source feeds the benchmarks.
    fn sequence(&mut self, n: u64, batch: &mut Batch, origin: u32) {
        let width = batch.width;
        batch.values.reserve(n as usize * width);
        batch.positions.reserve(n as usize);
        let [mut tenant, mut user, mut value] = self.counters;
        let [dt, du, dv] = self.strides;
        let (mt, mu) = (self.spec.tenants, self.spec.users);
        let jitter = self.spec.out_of_order_fraction > 0.0 || self.spec.late_fraction > 0.0;
        let mut g = self.next;
        for _ in 0..n {
            let ts = if jitter {
                self.event_time(g, mix(self.spec.seed ^ g))
            } else {
                self.spec.start_time + g as i64 * self.spec.event_interval
            };
            let values = [Value::Int(tenant as i64), Value::Int(user as i64), Value::Ts(ts), Value::Int(value as i64)];
            if self.identity {
                let [a, b, c, d] = values;
                batch.values.push(a);
                batch.values.push(b);
                batch.values.push(c);
                batch.values.push(d);
                for _ in 4..width {
                    batch.values.push(Value::Null);
                }
                batch.positions.push((origin, g + 1));
            } else {
                let row = batch.push_row(origin, g + 1);
                for (v, p) in values.into_iter().zip(&self.pos) {
                    Self::set(row, *p, v);
                }
            }
            // g % m without a division per event: advance each counter by the worker stride.
            g += self.step;
            tenant += dt;
            if tenant >= mt {
                tenant -= mt;
            }
            user += du;
            if user >= mu {
                user -= mu;
            }
            value += dv;
            if value >= 1000 {
                value -= 1000;
            }
        }
        self.counters = [tenant, user, value];
        self.next = g;
    }
}

impl Source for Generator {
    fn checkpoint(&self) -> Option<Vec<u8>> {
        crate::source::encode(&(self.next, self.counters))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        (self.next, self.counters) = crate::source::decode(state)?;
        // The rate limit restarts from the restore.
        self.produced = 0;
        self.started = None;
        Ok(())
    }

    fn poll(&mut self, batch: &mut Batch, max: usize) -> Poll {
        let mut budget = max as u64;
        if let Some(rate) = self.per_worker_rate {
            let started = *self.started.get_or_insert_with(Instant::now);
            let allowed = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
            budget = budget.min(allowed.saturating_sub(self.produced));
            if budget == 0 {
                return Poll::Pending;
            }
        }
        let limit = self.spec.events.unwrap_or(u64::MAX);
        let origin = batch.origin("generator");
        let remaining = limit.saturating_sub(self.next).div_ceil(self.step);
        let n = budget.min(remaining);
        self.produced += n;
        match self.spec.profile {
            GeneratorProfile::Sequence => self.sequence(n, batch, origin),
            GeneratorProfile::Music => {
                for _ in 0..n {
                    let g = self.next;
                    self.next += self.step;
                    let row = batch.push_row(origin, g + 1);
                    self.music(g, row);
                }
            }
        }
        if self.next >= limit {
            Poll::Done
        } else {
            Poll::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenantflow_core::job::{GeneratorProfile, GeneratorSpec};
    use tenantflow_core::DataType;

    fn spec(seed: u64) -> GeneratorSpec {
        GeneratorSpec {
            profile: GeneratorProfile::Music,
            events: Some(20_000),
            rate: None,
            seed,
            tenants: 10,
            users: 500,
            tracks: 300,
            start_time: 0,
            event_interval: 1_000,
            out_of_order_fraction: 0.1,
            max_delay: 1_000_000,
            late_fraction: 0.01,
            late_delay: 60_000_000,
            malformed_fraction: 0.0,
        }
    }

    fn schema() -> Schema {
        Schema::new(GeneratorProfile::Music.fields().iter().map(|(n, t)| (n.to_string(), *t)).collect())
    }

    /// All events of a run with `workers` workers, sorted by sequence number.
    fn events(seed: u64, workers: usize) -> Vec<Vec<Value>> {
        let schema = schema();
        let mut all = Vec::new();
        for w in 0..workers {
            let mut generator = Generator::new(&spec(seed), &schema, w, workers);
            let mut batch = Batch::new(schema.len());
            while !matches!(generator.poll(&mut batch, 1000), Poll::Done) {}
            for (i, row) in batch.values.chunks(schema.len()).enumerate() {
                all.push((batch.positions[i].1, row.to_vec()));
            }
        }
        all.sort_by_key(|(g, _)| *g);
        all.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn deterministic_for_a_seed_whatever_the_split() {
        let one = events(7, 1);
        assert_eq!(one.len(), 20_000);
        assert_eq!(one, events(7, 3));
        assert_ne!(one, events(8, 1));
    }

    #[test]
    fn plausible_music_events() {
        let rows = events(7, 1);
        let count = |pos: usize, v: &str| rows.iter().filter(|r| r[pos].as_str() == Some(v)).count();
        // Tenants are Zipf-skewed: the first is the largest, several times the tenth.
        assert!(count(0, "tenant-00") > 4 * count(0, "tenant-09"), "{} vs {}", count(0, "tenant-00"), count(0, "tenant-09"));
        let plays = count(6, "play") as f64 / rows.len() as f64;
        assert!((0.5..0.6).contains(&plays), "play share {plays}");
        for r in &rows {
            let ms = r[7].as_i64().unwrap_or(-1);
            match r[6].as_str() {
                Some("play") => assert!((30_000..=270_000).contains(&ms)),
                Some("skip") => assert!((1_000..30_000).contains(&ms)),
                _ => assert_eq!(ms, 0),
            }
        }
        // Out-of-order and late events: some event times go backwards, by at most the late delay.
        let ts: Vec<i64> = rows.iter().filter_map(|r| r[9].as_i64()).collect();
        let backwards = ts.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(backwards > 1000, "{backwards} events out of order");
        assert!(ts.iter().enumerate().all(|(g, &t)| t <= g as i64 * 1_000 && t >= g as i64 * 1_000 - 60_000_000));
        assert_eq!(schema().lookup("amount").map(|(_, t)| t), Some(DataType::Float));
    }
}
