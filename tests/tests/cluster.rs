//! A supervised 2-process cluster driven through its CLI and HTTP API: jobs submitted while it
//! runs give the same results as `tenantflow run`; a process killed with SIGKILL is restarted
//! and the running job continues from its checkpoint with exact results; cancel (with and
//! without a savepoint) and API errors behave as documented in docs/api.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenantflow_tests::tenantflow_bin;

/// A bounded generator job, windowed, to a file; `extra` adds settings (rate, checkpoints).
fn job(name: &str, out: &Path, events: u64, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
[source]
type = "generator"
profile = "music"
events = {events}
tenants = 5
{extra}

[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "5s"

[[steps]]
window = {{ type = "tumbling", size = "1m" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)", users = "count_distinct(user_id)" }}

[[sinks]]
type = "file"
path = "{}"
"#,
        out.display()
    )
}

struct Cluster {
    supervisor: Child,
    api: String,
    data: PathBuf,
}

impl Cluster {
    fn start(dir: &Path, offset: u16) -> Cluster {
        Cluster::start_with(dir, offset, 2, false, &[])
    }

    /// `processes` processes; with `loopbacks`, process i listens on 127.0.0.(i+1), as if on
    /// hosts of their own (via a hostfile).
    fn start_with(dir: &Path, offset: u16, processes: usize, loopbacks: bool, extra: &[&str]) -> Cluster {
        // Ports below Linux's ephemeral range, apart per test process and per test.
        let base = 13_000 + (std::process::id() % 160) as u16 * 48 + offset * 8;
        let api = format!("127.0.0.1:{}", base + 3);
        let data = dir.join("data");
        let mut cmd = Command::new(tenantflow_bin());
        // Every process logs JSON lines to one file (they inherit the supervisor's stderr).
        let log = std::fs::File::create(dir.join("cluster.log")).expect("log file");
        cmd.args(["--log-format", "json", "cluster", "start", "--processes", &processes.to_string(), "--workers", "1", "--api", &api])
            .args(["--port-base", &base.to_string(), "--metrics-port-base", &(base + 4).to_string()]);
        if loopbacks {
            let hosts: String = (0..processes).map(|i| format!("127.0.0.{}:{}\n", i + 1, base as usize + i)).collect();
            std::fs::write(dir.join("hosts"), hosts).expect("hostfile");
            cmd.arg("--hostfile").arg(dir.join("hosts"));
        }
        let supervisor = cmd.args(extra).arg("--data-dir").arg(&data).stdout(Stdio::null()).stderr(log).spawn().expect("start the cluster");
        let cluster = Cluster { supervisor, api, data };
        cluster.wait_for(Duration::from_secs(30), "the cluster to be ready", || {
            cluster.http("GET", "/readyz").is_some_and(|(status, _)| status == 200)
        });
        cluster
    }

    /// Runs `tenantflow ARGS --api ... --output json` and parses its output.
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(tenantflow_bin()).args(args).args(["--api", &self.api, "--output", "json"]).output().expect("run the CLI");
        assert!(out.status.success(), "tenantflow {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("tenantflow {args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A raw HTTP call: status and JSON body.
    fn http(&self, method: &str, path: &str) -> Option<(u16, Value)> {
        self.http_body(method, path, None)
    }

    fn http_body(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("http://{}{path}", self.api);
        let mut response = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            (_, Some(b)) => agent.post(&url).send(b),
            (_, None) => agent.post(&url).send_empty(),
        }
        .ok()?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// The processes' metrics addresses, from the supervisor's file_sd file for Prometheus.
    fn metrics_targets(&self) -> Vec<String> {
        let sd: Value =
            serde_json::from_slice(&std::fs::read(self.data.join("metrics-targets.json")).expect("metrics targets")).expect("JSON");
        sd[0]["targets"].as_array().expect("targets").iter().filter_map(|t| t.as_str().map(String::from)).collect()
    }

    /// Waits for the supervisor to exit.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.supervisor.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < limit, "the supervisor did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state(&self, id: &str) -> String {
        self.cli(&["job", "describe", id])["state"].as_str().unwrap_or("?").to_string()
    }

    fn wait_for(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_state(&self, id: &str, state: &str, limit: Duration) {
        self.wait_for(limit, &format!("job {id} to be {state}"), || self.state(id) == state);
    }

    /// The pid of cluster process `index`, found by its command line.
    fn process_pid(&self, index: usize) -> i32 {
        let data = self.data.display().to_string();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let is_worker = args.iter().any(|a| a == "worker") && args.contains(&data);
            if is_worker && args.windows(2).any(|w| w[0] == "--process" && w[1] == index.to_string()) {
                return pid;
            }
        }
        panic!("cluster process {index} not found");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.supervisor.try_wait() {
            return;
        }
        // SAFETY: signalling our own child; the supervisor stops its processes.
        unsafe { libc::kill(self.supervisor.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.supervisor.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.supervisor.kill();
    }
}

/// The output of the same job run by `tenantflow run` in one process, sorted.
fn reference(dir: &Path, text: &str) -> Vec<String> {
    let file = dir.join("reference.toml");
    std::fs::write(&file, text).expect("write job");
    let out = Command::new(tenantflow_bin()).args(["run", "--quiet", "--workers", "2"]).arg(&file).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sorted(&dir.join("reference.jsonl"))
}

fn sorted(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect();
    lines.sort();
    lines
}

#[test]
fn submitted_jobs_match_a_single_process_run_and_survive_a_killed_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cluster = Cluster::start(d, 0);
    let status = cluster.cli(&["cluster", "status"]);
    assert_eq!(status["processes"], 2);
    assert_eq!(status["restarts"], 0);

    // A bounded job, submitted while the cluster runs.
    let text = job("plays", &d.join("plays.jsonl"), 100_000, "");
    std::fs::write(d.join("plays.toml"), &text).expect("write job");
    let submitted = cluster.cli(&["job", "submit", &d.join("plays.toml").display().to_string()]);
    let id = submitted["id"].as_str().expect("job id").to_string();
    cluster.wait_state(&id, "finished", Duration::from_secs(60));
    // Counters are summed over both processes (the API fetches the other's).
    cluster.wait_for(Duration::from_secs(5), "counters of both processes", || {
        cluster.cli(&["job", "describe", &id])["events_in"].as_u64() == Some(100_000)
    });
    // Each process exports its share in the Prometheus format.
    let mut scraped = 0;
    for target in cluster.metrics_targets() {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let text = agent.get(format!("http://{target}/metrics")).call().expect("scrape").body_mut().read_to_string().expect("body");
        assert!(text.contains("# TYPE tenantflow_events_in_total counter"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("tenantflow_events_in_total{") && l.contains(&format!("job_id=\"{id}\""))) {
            scraped += line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    assert_eq!(scraped, 100_000, "events_in_total over both processes' /metrics");
    let expected = reference(d, &job("plays", &d.join("reference.jsonl"), 100_000, ""));
    assert!(expected.len() > 20, "too little output to compare");
    assert_eq!(sorted(&d.join("plays.jsonl")), expected);

    // A slower job with checkpoints; process 1 is killed while it runs.
    let extra = format!("rate = 40000\n\n[checkpoint]\ndir = \"{}\"\ninterval = \"300ms\"", d.join("ck").display());
    let text = job("slow", &d.join("slow.jsonl"), 240_000, &extra);
    std::fs::write(d.join("slow.toml"), &text).expect("write job");
    let id = cluster.cli(&["job", "submit", &d.join("slow.toml").display().to_string()])["id"].as_str().expect("id").to_string();
    cluster.wait_for(Duration::from_secs(30), "a checkpoint", || {
        cluster.cli(&["job", "describe", &id])["last_checkpoint"]["epoch"].as_u64().is_some_and(|e| e >= 2)
    });
    // SAFETY: killing a process of our own cluster.
    unsafe { libc::kill(cluster.process_pid(1), libc::SIGKILL) };
    cluster.wait_for(Duration::from_secs(30), "the restart", || {
        cluster.http("GET", "/api/v1/cluster").is_some_and(|(_, v)| v["restarts"] == 1 && v["ready"] == true)
    });
    cluster.wait_state(&id, "finished", Duration::from_secs(90));
    let expected = reference(d, &job("slow", &d.join("reference.jsonl"), 240_000, "rate = 40000"));
    assert_eq!(sorted(&d.join("slow.jsonl")), expected, "results after the restart differ from a crash-free run");
    // The finished first job is not run again by the restarted cluster.
    assert_eq!(cluster.state(submitted["id"].as_str().unwrap_or_default()), "finished");
}

#[test]
fn cancel_and_api_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut cluster = Cluster::start(d, 1);

    // Invalid job: 422 with each problem's line, column and key.
    let (status, body) = cluster.http_body("POST", "/api/v1/jobs?file=bad.toml", Some("[source]\ntype = \"nope\"\n")).expect("API");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_job");
    let problem = &body["error"]["problems"][0];
    assert_eq!(problem["file"], "bad.toml");
    assert_eq!(problem["line"], 2, "{body}");
    assert!(problem["key"].as_str().is_some_and(|k| k.contains("type")), "{body}");
    // Unknown job and endpoint: 404 with a JSON error.
    let (status, body) = cluster.http("GET", "/api/v1/jobs/nope-1").expect("API");
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = cluster.http("GET", "/api/v1/nothing").expect("API");
    assert_eq!(status, 404);

    // An unbounded-for-the-test job (slow rate), cancelled at once.
    let slow = |name: &str, ck: &str| job(name, &d.join(format!("{name}.jsonl")), 10_000_000, &format!("rate = 20000\n{ck}"));
    std::fs::write(d.join("a.toml"), slow("a", "")).expect("write job");
    let a = cluster.cli(&["job", "submit", &d.join("a.toml").display().to_string()])["id"].as_str().expect("id").to_string();
    cluster.wait_state(&a, "running", Duration::from_secs(30));
    cluster.cli(&["job", "cancel", &a]);
    cluster.wait_state(&a, "cancelled", Duration::from_secs(30));
    let (status, body) = cluster.http("DELETE", &format!("/api/v1/jobs/{a}")).expect("API");
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_ended")));

    // With checkpoints, cancelled with a savepoint, then continued from it.
    let ck = format!("\n[checkpoint]\ndir = \"{}\"\ninterval = \"1h\"", d.join("ck").display());
    std::fs::write(d.join("b.toml"), slow("b", &ck)).expect("write job");
    let b = cluster.cli(&["job", "submit", &d.join("b.toml").display().to_string()])["id"].as_str().expect("id").to_string();
    cluster.wait_for(Duration::from_secs(30), "events", || cluster.cli(&["job", "describe", &b])["events_in"].as_u64().unwrap_or(0) > 0);
    cluster.cli(&["job", "cancel", &b, "--savepoint"]);
    cluster.wait_state(&b, "savepointed", Duration::from_secs(30));
    let before = cluster.cli(&["job", "describe", &b])["last_checkpoint"]["epoch"].as_u64().expect("savepoint epoch");
    let b2 = cluster.cli(&["job", "submit", &d.join("b.toml").display().to_string(), "--restore"])["id"].as_str().expect("id").to_string();
    cluster.wait_state(&b2, "running", Duration::from_secs(30));
    let listed = cluster.cli(&["job", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    assert!(before >= 1);

    // One JSON log line per lifecycle event. The API may report a state a moment before the
    // worker logs it: look again until every line is there (or 10 s have passed).
    let expected = [
        ("job submitted", a.as_str()),
        ("job running", a.as_str()),
        ("job cancelled", a.as_str()),
        ("checkpointed", "b"),
        ("job ended", b.as_str()),
        ("restored", "b"),
        ("job running", b2.as_str()),
    ];
    let read_log = || {
        let log = std::fs::read_to_string(d.join("cluster.log")).expect("log");
        let events: Vec<(String, String)> = log
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
            .map(|v| (v["fields"]["message"].as_str().unwrap_or("").to_string(), v["fields"]["job"].as_str().unwrap_or("").to_string()))
            .collect();
        (log, events)
    };
    let start = Instant::now();
    let (log, events) = loop {
        let (log, events) = read_log();
        let complete = expected.iter().all(|(m, j)| events.iter().any(|(em, ej)| em == m && ej == j));
        if complete || start.elapsed() > Duration::from_secs(10) {
            break (log, events);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let has = |message: &str, job: &str| events.iter().any(|(m, j)| m == message && j == job);
    for (message, job) in expected {
        assert!(has(message, job), "no `{message}` line for job {job} in the log:\n{log}");
    }

    // Every operation of docs/openapi.json is served and answers with a documented status.
    let spec: Value =
        serde_json::from_slice(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")).expect("openapi.json"))
            .expect("openapi.json is JSON");
    let mut operations = 0;
    for (path, ops) in spec["paths"].as_object().expect("paths") {
        for method in ["get", "post", "delete"] {
            let Some(op) = ops.get(method) else { continue };
            if path == "/api/v1/cluster/stop" {
                continue; // last, below
            }
            let body = (method == "post").then_some("[source]\ntype = \"nope\"\n");
            let url = path.replace("{id}", &a);
            let (status, answer) = cluster.http_body(&method.to_uppercase(), &url, body).expect("API");
            assert_ne!(answer["error"]["message"], "no such endpoint", "{method} {path} is not served");
            assert!(op["responses"].get(status.to_string()).is_some(), "{method} {path} answered {status}, not documented: {answer}");
            operations += 1;
        }
    }
    assert!(operations >= 7, "only {operations} operations checked");
    // `cluster stop` stops every process, and the supervisor exits cleanly.
    cluster.cli(&["cluster", "stop"]);
    let status = cluster.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the supervisor exited with {status}");
}

/// Three processes with distinct addresses (127.0.0.1, .2, .3, each with its Timely port and
/// metrics server there) give the results of one process.
#[test]
fn three_processes_on_distinct_addresses_match_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cluster = Cluster::start_with(d, 2, 3, true, &[]);
    assert_eq!(cluster.cli(&["cluster", "status"])["workers"], 3);
    let hosts: Vec<String> = cluster.metrics_targets().iter().map(|t| t.split(':').next().unwrap_or("").to_string()).collect();
    assert_eq!(hosts, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    std::fs::write(d.join("plays.toml"), job("plays", &d.join("plays.jsonl"), 150_000, "")).expect("write job");
    let id = cluster.cli(&["job", "submit", &d.join("plays.toml").display().to_string()])["id"].as_str().expect("id").to_string();
    cluster.wait_state(&id, "finished", Duration::from_secs(60));
    let expected = reference(d, &job("plays", &d.join("reference.jsonl"), 150_000, ""));
    assert!(expected.len() > 20, "too little output to compare");
    assert_eq!(sorted(&d.join("plays.jsonl")), expected);
}

/// Every PromQL expression of the Grafana dashboards (deploy/grafana/dashboards), evaluated by a
/// real Prometheus scraping a running cluster, returns data. The cluster runs a generator ->
/// Kafka job, a Kafka -> window job with checkpoints (dev-kafka, in the test) and a pattern job.
#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let prometheus = "prometheus";
    assert!(
        Command::new(prometheus).arg("--version").output().is_ok_and(|o| o.status.success()),
        "prometheus is missing: scripts/setup.sh installs it (apt-get install prometheus)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_kafka, _) = tenantflow_tests::dev_kafka(d, &["events"]);
    let bootstrap = d.join("bootstrap");
    let cluster = Cluster::start(d, 3);
    // The consuming job's alerts go here, so the alert panels have data.
    let hook = tenantflow_tests::Webhook::start();
    let schema = "[schema]\ntenant = \"tenant_id\"\n[schema.fields]\ntenant_id = \"string\"\nuser_id = \"string\"\nevent_type = \"string\"\nts = \"timestamp\"\n";
    let producer = format!(
        "name = \"produce\"\n[source]\ntype = \"generator\"\nprofile = \"music\"\nevents = 100000000\nrate = 2000\ntenants = 4\n\n{schema}\n[[sinks]]\ntype = \"kafka\"\nbootstrap_file = \"{}\"\ntopic = \"events\"\n",
        bootstrap.display()
    );
    let consumer = format!(
        "name = \"consume\"\n[source]\ntype = \"kafka\"\nbootstrap_file = \"{}\"\ntopic = \"events\"\ngroup_id = \"dashboards\"\n\n{schema}\n[time]\nfield = \"ts\"\nmax_out_of_orderness = \"1s\"\n\n[[steps]]\nwindow = {{ type = \"tumbling\", size = \"1s\" }}\nkey_by = [\"event_type\"]\naggregates = {{ n = \"count(*)\" }}\n\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n\n[checkpoint]\ndir = \"{}\"\ninterval = \"1s\"\n\n[[alerts]]\nname = \"Busy\"\ncondition = \"n >= 1\"\n\n[alerting]\nstate_dir = \"{}\"\n[alerting.route]\nreceiver = \"hook\"\ngroup_by = [\"tenant\"]\ngroup_wait = \"0s\"\ngroup_interval = \"1s\"\n[[alerting.receivers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        bootstrap.display(),
        d.join("consume.jsonl").display(),
        d.join("ck").display(),
        d.join("alerts").display(),
        hook.url
    );
    // A pattern job beside them, so the pattern panel shows matches and partial matches.
    let pattern = format!(
        "name = \"pattern\"\n[source]\ntype = \"generator\"\nprofile = \"music\"\nevents = 100000000\nrate = 2000\ntenants = 4\nusers = 50\n\n{schema}\n[time]\nfield = \"ts\"\n\n[[steps]]\npattern = \"play -> skip\"\nkey_by = [\"user_id\"]\nwithin = \"5s\"\ndefine = {{ play = \"event_type = 'play'\", skip = \"event_type = 'skip'\" }}\nmeasures = {{ n = \"count(*)\" }}\n\n[[sinks]]\ntype = \"discard\"\n"
    );
    for (name, text) in [("produce", producer), ("consume", consumer), ("pattern", pattern)] {
        let file = d.join(format!("{name}.toml"));
        std::fs::write(&file, text).expect("write job");
        let id = cluster.cli(&["job", "submit", &file.display().to_string()])["id"].as_str().expect("id").to_string();
        cluster.wait_state(&id, "running", Duration::from_secs(30));
    }

    // Prometheus scrapes the processes listed by the supervisor, every second.
    let port = 13_000 + (std::process::id() % 160) as u16 * 48 + 3 * 8 + 7;
    let config = d.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tenantflow\n    file_sd_configs:\n      - files: [\"{}\"]\n",
            cluster.data.join("metrics-targets.json").display()
        ),
    )
    .expect("prometheus config");
    let _prometheus = tenantflow_tests::Guard(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let query = |expr: &str| -> Value {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        agent.get(&url).query("query", expr).call().ok().and_then(|mut r| r.body_mut().read_json::<Value>().ok()).unwrap_or(Value::Null)
    };
    // Enough scrapes for rates over 30 s, and a checkpoint and some Kafka lag to show.
    cluster.wait_for(Duration::from_secs(60), "Prometheus to have scraped both processes for a while", || {
        query("count_over_time(up{job=\"tenantflow\"}[1m])")["data"]["result"].as_array().is_some_and(|r| {
            r.len() == 2 && r.iter().all(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) >= 6.0)
        })
    });

    // The pattern job submitted to the cluster finds matches.
    cluster.wait_for(Duration::from_secs(30), "the pattern job's matches in Prometheus", || {
        query("sum(tenantflow_pattern_matches_total)")["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n > 0.0)
    });

    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut checked = 0;
    let mut empty = Vec::new();
    for entry in std::fs::read_dir(&dashboards).expect("dashboards").flatten() {
        let dashboard: Value = serde_json::from_slice(&std::fs::read(entry.path()).expect("read")).expect("dashboard JSON");
        let mut exprs: Vec<String> = Vec::new();
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            exprs.extend(panel["targets"].as_array().into_iter().flatten().filter_map(|t| t["expr"].as_str().map(String::from)));
        }
        // Template variables: label_values(METRIC, LABEL) as the PromQL it stands for.
        for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            let q = var["query"]["query"].as_str().unwrap_or_default();
            if let Some(inner) = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')) {
                if let Some((metric, label)) = inner.rsplit_once(", ") {
                    exprs.push(format!("count by ({label}) ({metric})"));
                }
            }
        }
        for expr in exprs {
            let promql = expr.replace("$__rate_interval", "30s").replace("$job", ".+").replace("$tenant", ".+");
            let answer = query(&promql);
            assert_eq!(answer["status"], "success", "{}: {promql}: {answer}", entry.path().display());
            if answer["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                empty.push(format!("{}: {promql}", entry.file_name().to_string_lossy()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} expressions found");
    assert!(empty.is_empty(), "queries without data:\n{}", empty.join("\n"));
}

/// The supervision test with Kafka: a Kafka -> window -> file job with checkpoints runs on the
/// cluster (slowed by a second, slow sink); process 1 is SIGKILLed; after the restart the job
/// continues from its checkpoint (Kafka offsets included) and its output equals a crash-free
/// run's.
#[test]
fn a_kafka_job_survives_a_killed_process_with_exact_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_kafka, address) = tenantflow_tests::dev_kafka(d, &["events"]);
    let bootstrap = d.join("bootstrap");
    let schema = "[schema]\ntenant = \"tenant_id\"\n[schema.fields]\ntenant_id = \"string\"\nuser_id = \"string\"\nevent_type = \"string\"\nts = \"timestamp\"\n";
    // 60k events over a minute of event time, in time order, keyed by tenant (kcat hashes the
    // key to a partition), so every partition is in order and no event is ever late: the
    // results do not depend on how reads interleave, which a restart changes.
    let lines: String = (0..60_000u64)
        .map(|i| {
            let (tenant, kind) = (i % 3, ["play", "skip", "like", "play"][(i / 3 % 4) as usize]);
            format!(
                "tenant-{tenant}:{{\"tenant_id\":\"tenant-{tenant}\",\"user_id\":\"u{}\",\"event_type\":\"{kind}\",\"ts\":{}}}\n",
                i % 997,
                1_767_225_600_000 + i
            )
        })
        .collect();
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", address.as_str(), "-t", "events", "-K:"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat (scripts/setup.sh installs it)");
    std::io::Write::write_all(&mut kcat.stdin.take().expect("stdin"), lines.as_bytes()).expect("write to kcat");
    assert!(kcat.wait().expect("kcat").success(), "kcat failed");

    let consumer = |name: &str, out: &Path, extra: &str| {
        format!(
            "name = \"{name}\"\n[source]\ntype = \"kafka\"\nbootstrap_file = \"{}\"\ntopic = \"events\"\ngroup_id = \"{name}\"\nbounded = true\n\n{schema}\n[time]\nfield = \"ts\"\nmax_out_of_orderness = \"1s\"\n\n[[steps]]\nwindow = {{ type = \"tumbling\", size = \"1s\" }}\nkey_by = [\"event_type\"]\naggregates = {{ n = \"count(*)\", users = \"count_distinct(user_id)\" }}\n\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n{extra}",
            bootstrap.display(),
            out.display()
        )
    };
    let reference_text = consumer("reference", &d.join("reference.jsonl"), "");
    std::fs::write(d.join("reference.toml"), reference_text).expect("write job");
    let out =
        Command::new(tenantflow_bin()).args(["run", "--quiet", "--workers", "2"]).arg(d.join("reference.toml")).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = sorted(&d.join("reference.jsonl"));
    assert!(expected.len() > 100, "too little output to compare: {}", expected.len());

    let cluster = Cluster::start(d, 1);
    // A slow second sink stretches the run over several seconds (backpressure holds the source).
    let extra = format!(
        "\n[[sinks]]\ntype = \"discard\"\ndelay_per_row = \"5ms\"\n\n[checkpoint]\ndir = \"{}\"\ninterval = \"200ms\"\n",
        d.join("ck").display()
    );
    std::fs::write(d.join("consume.toml"), consumer("consume", &d.join("consume.jsonl"), &extra)).expect("write job");
    let id = cluster.cli(&["job", "submit", &d.join("consume.toml").display().to_string()])["id"].as_str().expect("id").to_string();
    cluster.wait_for(Duration::from_secs(30), "a checkpoint", || {
        cluster.cli(&["job", "describe", &id])["last_checkpoint"]["epoch"].as_u64().is_some_and(|e| e >= 2)
    });
    assert_eq!(cluster.state(&id), "running", "the job ended before the kill: make it slower");
    // The source is still reading (held back by the slow sink): the restore seeks Kafka back.
    let read = cluster.cli(&["job", "describe", &id])["events_in"].as_u64().unwrap_or(0);
    assert!(read < 60_000, "the source had read everything ({read}) before the kill");
    // SAFETY: killing a process of our own cluster.
    unsafe { libc::kill(cluster.process_pid(1), libc::SIGKILL) };
    cluster.wait_for(Duration::from_secs(30), "the restart", || {
        cluster.http("GET", "/api/v1/cluster").is_some_and(|(_, v)| v["restarts"] == 1 && v["ready"] == true)
    });
    cluster.wait_state(&id, "finished", Duration::from_secs(120));
    assert_same(&sorted(&d.join("consume.jsonl")), &expected);
}

/// Equal line sets, or a short account of the difference.
fn assert_same(got: &[String], expected: &[String]) {
    if got == expected {
        return;
    }
    let missing: Vec<_> = expected.iter().filter(|l| !got.contains(l)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|l| !expected.contains(l)).take(5).collect();
    panic!(
        "results after the restart differ from a crash-free run: {} lines, expected {}\nmissing (first 5): {missing:#?}\nextra (first 5): {extra:#?}",
        got.len(),
        expected.len()
    );
}

/// A crash loop: with `--max-restarts 1`, the second death within the window stops the
/// supervisor with status 3 and a clear message in cluster-status.json.
#[test]
fn a_crash_loop_stops_the_supervisor_with_a_clear_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut cluster = Cluster::start_with(d, 4, 2, false, &["--max-restarts", "1", "--crash-window", "60s"]);
    for round in 0..2 {
        cluster.wait_for(Duration::from_secs(30), "the cluster to be ready", || {
            cluster.http("GET", "/api/v1/cluster").is_some_and(|(_, v)| v["ready"] == true && v["restarts"] == round)
        });
        // SAFETY: killing a process of our own cluster.
        unsafe { libc::kill(cluster.process_pid(1), libc::SIGKILL) };
    }
    let status = cluster.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "the supervisor should give up with status 3");
    let report: Value =
        serde_json::from_slice(&std::fs::read(cluster.data.join("cluster-status.json")).expect("status file")).expect("JSON");
    assert_eq!(report["state"], "crash_loop");
    assert!(report["message"].as_str().is_some_and(|m| m.contains("2 restarts within")), "{report}");
}

/// Silences created and expired with `tenantflow silence`: a job's alerts for the silenced
/// tenant are muted (and counted as such in the metrics), the others are notified.
#[test]
fn silences_from_the_cli_mute_a_jobs_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cluster = Cluster::start(d, 5);
    let hook = tenantflow_tests::Webhook::start();

    let silence =
        cluster.cli(&["silence", "add", "tenant=\"tenant-00\"", "alertname=~\"Busy.*\"", "--duration", "1h", "--comment", "load test"]);
    let id = silence["id"].as_str().expect("silence id").to_string();
    assert_eq!(silence["state"], "active", "{silence}");
    let listed = cluster.cli(&["silence", "list"]);
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|s| s["id"] == id.as_str() && s["comment"] == "load test")), "{listed}");
    let (status, body) = cluster.http_body("POST", "/api/v1/silences", Some(r#"{"matchers": ["=x"], "duration": "1h"}"#)).expect("API");
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_silence")), "{body}");

    let alerting = format!(
        r#"
[[alerts]]
name = "BusyWindow"
condition = "n >= 1"

[alerting]
state_dir = "{}"
[alerting.route]
receiver = "hook"
group_by = ["tenant"]
group_wait = "1h"

[[alerting.receivers]]
name = "hook"
type = "webhook"
url = "{}"
"#,
        d.join("alerts").display(),
        hook.url
    );
    let text = job("alerting", &d.join("out.jsonl"), 20_000, "") + &alerting;
    std::fs::write(d.join("alerting.toml"), text).expect("write job");
    let job_id = cluster.cli(&["job", "submit", &d.join("alerting.toml").display().to_string()])["id"].as_str().expect("id").to_string();
    cluster.wait_state(&job_id, "finished", Duration::from_secs(60));
    cluster.wait_for(Duration::from_secs(10), "notifications", || hook.received().len() >= 4);
    let tenants: std::collections::BTreeSet<String> =
        hook.firing().iter().map(|a| a["labels"]["tenant"].as_str().unwrap_or_default().to_string()).collect();
    let expected: std::collections::BTreeSet<String> = (1..5).map(|i| format!("tenant-{i:02}")).collect();
    assert_eq!(tenants, expected, "only the silenced tenant's alerts are muted");
    let metrics = ureq::get(&format!("http://{}/metrics", cluster.metrics_targets()[0]))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("body");
    let muted = metrics.lines().find(|l| l.starts_with("tenantflow_alerts_muted{") && l.contains("silenced") && l.contains(&job_id));
    assert!(muted.is_some_and(|l| !l.ends_with(" 0")), "no silenced alerts in the metrics:\n{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("tenantflow_alert_notifications_total{") && l.contains("sent") && !l.ends_with(" 0")));

    let expired = cluster.cli(&["silence", "expire", &id]);
    assert_eq!(expired["state"], "expired", "{expired}");
    let again = Command::new(tenantflow_bin()).args(["silence", "expire", &id, "--api", &cluster.api]).output().expect("CLI");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already expired"));
}

#[test]
fn models_uploaded_to_the_cluster_are_promoted_shadowed_and_rolled_back_under_a_running_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cluster = Cluster::start(d, 6);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert_eq!(cluster.cli(&["model", "list"]), serde_json::json!([]));
    let features =
        ["duration_ms % 40", "duration_ms % 9", "duration_ms % 5", "if(event_type = 'payment_failed', 1, 0)", "duration_ms / 3000.0"];
    let meta = serde_json::json!({"features": features, "description": "churn test", "class_names": ["stays", "churns"]});
    std::fs::write(d.join("meta.json"), meta.to_string()).expect("meta");
    for v in [1, 2] {
        let file = repo.join(format!("jobs/models/churn-risk/{v}/model.onnx")).display().to_string();
        let up = cluster.cli(&["model", "upload", "churn-risk", &file, "--meta", &d.join("meta.json").display().to_string()]);
        assert_eq!((up["version"].as_u64(), up["task"].as_str()), (Some(v), Some("classifier")), "{up}");
    }
    let listed = cluster.cli(&["model", "list"]);
    assert_eq!((listed[0]["live"].as_u64(), listed[0]["versions"].clone()), (Some(1), serde_json::json!([1, 2])), "{listed}");
    assert_eq!(cluster.cli(&["model", "describe", "churn-risk"])["version"], 1);
    assert_eq!(cluster.cli(&["model", "describe", "churn-risk", "--version", "2"])["features"][4], "duration_ms / 3000.0");
    // Errors are JSON with fitting statuses.
    for (method, path, body, status, code) in [
        ("GET", "/api/v1/models/nope", None, 404, "not_found"),
        ("GET", "/api/v1/models/churn-risk/versions/9", None, 404, "not_found"),
        ("POST", "/api/v1/models/churn-risk/promote", Some(r#"{"version": 9}"#), 404, "not_found"),
        ("POST", "/api/v1/models/churn-risk/promote", Some(r#"{"v": 2}"#), 422, "invalid_model"),
        ("POST", "/api/v1/models/x/versions", Some(r#"{"meta": {"features": []}, "onnx_base64": "bm90IG9ubng="}"#), 422, "invalid_model"),
        ("POST", "/api/v1/models/x/versions", Some(r#"{"meta": {"features": []}, "onnx_base64": "%%%"}"#), 422, "invalid_model"),
        ("POST", "/api/v1/models/churn-risk/rollback", None, 422, "invalid_model"),
    ] {
        let (got, answer) = cluster.http_body(method, path, body).expect("API");
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{method} {path}: {answer}");
    }

    let text = format!(
        r#"
name = "scored"
[source]
type = "generator"
profile = "music"
events = 100000000
rate = 2000
tenants = 3
[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
duration_ms = "int"
ts = "timestamp"
[time]
field = "ts"
[[steps]]
score = "churn-risk"
as = "churn"
[[sinks]]
type = "file"
path = "{}"
[checkpoint]
dir = "{}"
interval = "300ms"
"#,
        d.join("scored.jsonl").display(),
        d.join("ck").display()
    );
    std::fs::write(d.join("scored.toml"), text).expect("job");
    let id = cluster.cli(&["job", "submit", &d.join("scored.toml").display().to_string()])["id"].as_str().expect("id").to_string();
    let model = |key: &str| cluster.cli(&["job", "describe", &id])["models"][0][key].clone();
    cluster.wait_for(Duration::from_secs(30), "rows scored", || model("rows").as_u64().is_some_and(|n| n > 0));
    assert_eq!(model("version"), 1);
    cluster.cli(&["model", "shadow", "churn-risk", "2"]);
    cluster.wait_for(Duration::from_secs(30), "shadow rows on version 2", || {
        model("shadow_version") == 2 && model("shadow_rows").as_u64().is_some_and(|n| n > 0)
    });
    let promoted = cluster.cli(&["model", "promote", "churn-risk", "2"]);
    assert_eq!((promoted["live"].as_u64(), promoted["shadow"].is_null()), (Some(2), true), "{promoted}");
    cluster.wait_for(Duration::from_secs(30), "version 2 in use", || model("version") == 2);
    // Each process reads the registry at a barrier on its own: process 1 may switch a
    // checkpoint later than process 0.
    let metrics = || {
        ureq::get(&format!("http://{}/metrics", cluster.metrics_targets()[1]))
            .call()
            .expect("metrics")
            .body_mut()
            .read_to_string()
            .expect("body")
    };
    let line = |text: &str, name: &str| text.lines().find(|l| l.starts_with(name) && l.contains(&id)).map(String::from);
    cluster.wait_for(Duration::from_secs(30), "process 1 on version 2", || {
        line(&metrics(), "tenantflow_model_version{").is_some_and(|l| l.ends_with(" 2"))
    });
    let text = metrics();
    assert!(line(&text, "tenantflow_model_predictions_total{").is_some_and(|l| !l.ends_with(" 0")), "{text}");
    assert!(line(&text, "tenantflow_model_swaps_total{").is_some_and(|l| l.ends_with(" 1")), "{text}");
    cluster.cli(&["model", "rollback", "churn-risk"]);
    cluster.wait_for(Duration::from_secs(30), "version 1 again", || model("version") == 1);
    assert_eq!(cluster.cli(&["job", "describe", &id])["state"], "running");
    cluster.cli(&["job", "cancel", &id]);
}
