// Flink CEP (the DataStream API) side of scripts/flink/cep_differential.py: the cases Flink SQL
// cannot express (relaxed and non-deterministic contiguity, negation, until, no_skip).
//
//   java -cp "classes:$PYFLINK/lib/*" CepDifferential CASES.json EVENTS.jsonl OUT_DIR
//
// CASES.json: {"cases": [{"name", "skip", "within_ms", "steps": [{"name", "join", "min", "max"
// (-1: no bound), "greedy", "inner", "cond", "until"}]}]}; a condition is a list of clauses
// [field, op, value] that must all hold (field "event_type" with "=" or "in", or "price" with a
// comparison). Writes OUT_DIR/<case>.flinkcep.jsonl: one match a line, {"tenant_id", "user_id",
// "steps": {name: [event ids]}}; or OUT_DIR/<case>.flinkcep.error with the error.

import java.io.BufferedReader;
import java.io.FileReader;
import java.io.PrintWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.cep.CEP;
import org.apache.flink.cep.functions.PatternProcessFunction;
import org.apache.flink.cep.nfa.aftermatch.AfterMatchSkipStrategy;
import org.apache.flink.cep.pattern.Pattern;
import org.apache.flink.cep.pattern.conditions.SimpleCondition;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.Collector;

public class CepDifferential {
    /** One event (a Flink POJO). */
    public static class Ev {
        public long id;
        public String tenant;
        public String user;
        public String type;
        public double price;
        public long t;

        public Ev() {}

        public String key() {
            return tenant + "/" + user;
        }
    }

    /** All clauses must hold. */
    public static class Cond extends SimpleCondition<Ev> {
        private final List<String[]> clauses = new ArrayList<>();

        Cond(JsonNode node) {
            for (JsonNode c : node) {
                String field = c.get(0).asText(), op = c.get(1).asText();
                StringBuilder values = new StringBuilder();
                if (c.get(2).isArray()) {
                    for (JsonNode v : c.get(2)) values.append(v.asText()).append('\u0001');
                } else {
                    values.append(c.get(2).asText());
                }
                clauses.add(new String[] {field, op, values.toString()});
            }
        }

        @Override
        public boolean filter(Ev e) {
            for (String[] c : clauses) {
                boolean ok;
                if (c[0].equals("event_type")) {
                    ok = c[1].equals("in") ? ("\u0001" + c[2]).contains("\u0001" + e.type + "\u0001") : e.type.equals(c[2]);
                    if (c[1].equals("<>")) ok = !e.type.equals(c[2]);
                } else {
                    double v = Double.parseDouble(c[2]);
                    switch (c[1]) {
                        case "<": ok = e.price < v; break;
                        case "<=": ok = e.price <= v; break;
                        case ">": ok = e.price > v; break;
                        case ">=": ok = e.price >= v; break;
                        default: ok = e.price == v;
                    }
                }
                if (!ok) return false;
            }
            return true;
        }
    }

    static AfterMatchSkipStrategy skip(String s) {
        if (s.equals("no_skip")) return AfterMatchSkipStrategy.noSkip();
        if (s.equals("skip_to_next")) return AfterMatchSkipStrategy.skipToNext();
        if (s.equals("skip_past_last_event")) return AfterMatchSkipStrategy.skipPastLastEvent();
        if (s.startsWith("skip_to_first:")) return AfterMatchSkipStrategy.skipToFirst(s.substring(14));
        if (s.startsWith("skip_to_last:")) return AfterMatchSkipStrategy.skipToLast(s.substring(13));
        throw new IllegalArgumentException("skip " + s);
    }

    static Pattern<Ev, Ev> pattern(JsonNode c) {
        Pattern<Ev, Ev> p = null;
        for (JsonNode s : c.get("steps")) {
            String name = s.get("name").asText();
            String join = s.get("join").asText();
            if (p == null) {
                p = Pattern.<Ev>begin(name, skip(c.get("skip").asText()));
            } else if (join.equals("next")) {
                p = p.next(name);
            } else if (join.equals("followedBy")) {
                p = p.followedBy(name);
            } else if (join.equals("followedByAny")) {
                p = p.followedByAny(name);
            } else if (join.equals("notNext")) {
                p = p.notNext(name);
            } else if (join.equals("notFollowedBy")) {
                p = p.notFollowedBy(name);
            }
            p = p.where(new Cond(s.get("cond")));
            int min = s.get("min").asInt(), max = s.get("max").asInt();
            boolean loop = max == -1 || max > 1;
            if (max == -1) {
                if (min <= 1) {
                    p = p.oneOrMore();
                } else {
                    p = p.timesOrMore(min);
                }
                if (min == 0) p = p.optional();
            } else if (max > 1) {
                p = min == max ? p.times(min) : p.times(Math.max(min, 1), max);
                if (min == 0) p = p.optional();
            } else if (min == 0) {
                p = p.optional();
            }
            if (loop) {
                String inner = s.get("inner").asText();
                if (inner.equals("consecutive")) p = p.consecutive();
                if (inner.equals("combinations")) p = p.allowCombinations();
                if (s.get("greedy").asBoolean()) p = p.greedy();
                if (s.hasNonNull("until")) p = p.until(new Cond(s.get("until")));
            }
        }
        if (c.hasNonNull("within_ms")) p = p.within(Duration.ofMillis(c.get("within_ms").asLong()));
        return p;
    }

    public static void main(String[] args) throws Exception {
        ObjectMapper json = new ObjectMapper();
        JsonNode cases = json.readTree(new java.io.File(args[0])).get("cases");
        List<Ev> events = new ArrayList<>();
        try (BufferedReader r = new BufferedReader(new FileReader(args[1]))) {
            String line;
            while ((line = r.readLine()) != null) {
                JsonNode n = json.readTree(line);
                Ev e = new Ev();
                e.id = n.get("id").asLong();
                e.tenant = n.get("tenant_id").asText();
                e.user = n.get("user_id").asText();
                e.type = n.get("event_type").asText();
                e.price = n.get("price").asDouble();
                e.t = n.get("t").asLong();
                events.add(e);
            }
        }
        for (JsonNode c : cases) {
            String name = c.get("name").asText();
            long started = System.currentTimeMillis();
            try {
                StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
                env.setParallelism(1);
                DataStream<Ev> in = env.fromData(events)
                        .assignTimestampsAndWatermarks(
                                WatermarkStrategy.<Ev>forMonotonousTimestamps().withTimestampAssigner((e, ts) -> e.t));
                DataStream<String> out = CEP.pattern(in.keyBy(Ev::key), pattern(c))
                        .inEventTime()
                        .process(new PatternProcessFunction<Ev, String>() {
                            @Override
                            public void processMatch(Map<String, List<Ev>> match, Context ctx, Collector<String> o) {
                                Map<String, Object> row = new LinkedHashMap<>();
                                Ev any = match.values().iterator().next().get(0);
                                row.put("tenant_id", any.tenant);
                                row.put("user_id", any.user);
                                Map<String, List<Long>> steps = new LinkedHashMap<>();
                                for (Map.Entry<String, List<Ev>> m : match.entrySet()) {
                                    List<Long> ids = new ArrayList<>();
                                    for (Ev e : m.getValue()) ids.add(e.id);
                                    steps.put(m.getKey(), ids);
                                }
                                row.put("steps", steps);
                                try {
                                    o.collect(new ObjectMapper().writeValueAsString(row));
                                } catch (Exception ex) {
                                    throw new RuntimeException(ex);
                                }
                            }
                        });
                int n = 0;
                try (PrintWriter w = new PrintWriter(args[2] + "/" + name + ".flinkcep.jsonl");
                        org.apache.flink.util.CloseableIterator<String> it = out.executeAndCollect()) {
                    while (it.hasNext()) {
                        w.println(it.next());
                        n++;
                    }
                }
                System.err.printf("  flink cep %s: %d matches, %.1fs%n", name, n, (System.currentTimeMillis() - started) / 1000.0);
            } catch (Exception e) {
                Throwable root = e;
                StringBuilder msg = new StringBuilder();
                while (root != null) {
                    msg.append(root.getClass().getName()).append(": ").append(root.getMessage()).append(" | ");
                    root = root.getCause();
                }
                try (PrintWriter w = new PrintWriter(args[2] + "/" + name + ".flinkcep.error")) {
                    w.println(msg);
                }
                System.err.printf("  flink cep %s: error %s%n", name, msg);
            }
        }
    }
}
