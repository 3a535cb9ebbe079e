//! Shared parts of the benchmark programs (`bench`, `bench_curves`,
//! `bench_open_loop`, `bench_table`): Redis INFO snapshots and their
//! deltas, the zero-work handler, one closed-loop load run over the real
//! Client and Worker, percentiles, markdown and a hand-written SVG line plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use rtq_core::{
    async_trait, Client, Handler, HandlerError, TaskContext, TaskRequest, Worker, WorkerConfig,
};
use serde_json::{json, Value};

/// Calls and microseconds of one Redis command (from `INFO commandstats`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommandStat {
    /// Number of calls.
    pub calls: u64,
    /// Total time spent in the command, in microseconds.
    pub usec: u64,
}

/// What Redis reports about its own work at one instant.
#[derive(Clone, Debug, Default)]
pub struct RedisSnapshot {
    /// Per command (`fcall`, `hset`, `client|setinfo`, ...).
    pub commands: BTreeMap<String, CommandStat>,
    /// `used_cpu_sys + used_cpu_user` in seconds.
    pub cpu_s: f64,
    /// `connected_clients`.
    pub connected_clients: u64,
    /// `used_memory` in bytes.
    pub used_memory: u64,
}

/// Parses `INFO commandstats` text into per-command calls and usec.
pub fn parse_commandstats(text: &str) -> BTreeMap<String, CommandStat> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let mut stat = CommandStat::default();
        for f in fields.split(',') {
            match f.split_once('=') {
                Some(("calls", v)) => stat.calls = v.parse().unwrap_or(0),
                Some(("usec", v)) => stat.usec = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(name.to_string(), stat);
    }
    out
}

/// A numeric field of an INFO section (`used_cpu_sys`, ...), if present.
pub fn info_field(text: &str, field: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

impl RedisSnapshot {
    /// Reads commandstats, cpu, clients and memory in one round trip.
    ///
    /// # Errors
    /// Redis errors (a server without INFO, e.g. behind an ACL).
    pub async fn take(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Self> {
        let (stats, cpu, clients, memory): (String, String, String, String) = redis::pipe()
            .cmd("INFO")
            .arg("commandstats")
            .cmd("INFO")
            .arg("cpu")
            .cmd("INFO")
            .arg("clients")
            .cmd("INFO")
            .arg("memory")
            .query_async(conn)
            .await
            .context("INFO (the benchmarks read Redis's own counters)")?;
        Ok(Self {
            commands: parse_commandstats(&stats),
            cpu_s: info_field(&cpu, "used_cpu_sys").unwrap_or(0.0)
                + info_field(&cpu, "used_cpu_user").unwrap_or(0.0),
            connected_clients: info_field(&clients, "connected_clients").unwrap_or(0.0) as u64,
            used_memory: info_field(&memory, "used_memory").unwrap_or(0.0) as u64,
        })
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Self) -> RedisDelta {
        let mut commands = BTreeMap::new();
        for (name, now) in &self.commands {
            let was = before.commands.get(name).copied().unwrap_or_default();
            let d = CommandStat {
                calls: now.calls.saturating_sub(was.calls),
                usec: now.usec.saturating_sub(was.usec),
            };
            if d.calls > 0 {
                commands.insert(name.clone(), d);
            }
        }
        RedisDelta {
            commands,
            cpu_s: (self.cpu_s - before.cpu_s).max(0.0),
        }
    }
}

/// Redis work between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct RedisDelta {
    /// Per command calls and usec in the interval.
    pub commands: BTreeMap<String, CommandStat>,
    /// Redis process CPU seconds (user + sys) in the interval.
    pub cpu_s: f64,
}

impl RedisDelta {
    /// All command calls (commands run inside scripts and functions
    /// included, as Redis 7 counts them).
    pub fn calls(&self) -> u64 {
        self.commands.values().map(|c| c.calls).sum()
    }

    /// Per-command breakdown as a markdown table: calls per unit and usec
    /// per unit (`per` units, e.g. tasks), most expensive first. The usec of
    /// `fcall`/`evalsha` include the commands they run, which also have
    /// their own rows.
    pub fn breakdown(&self, per: f64, unit: &str) -> String {
        let mut rows: Vec<(&String, &CommandStat)> = self.commands.iter().collect();
        rows.sort_by(|a, b| b.1.usec.cmp(&a.1.usec).then(a.0.cmp(b.0)));
        let mut out = format!(
            "| command | calls/{unit} | usec/{unit} | usec/call |\n| --- | --- | --- | --- |\n"
        );
        for (name, c) in rows {
            let _ = writeln!(
                out,
                "| {name} | {:.2} | {:.2} | {:.2} |",
                c.calls as f64 / per,
                c.usec as f64 / per,
                c.usec as f64 / c.calls.max(1) as f64
            );
        }
        let _ = writeln!(
            out,
            "| (Redis process CPU, INFO cpu) | | {:.2} | |",
            self.cpu_s * 1e6 / per
        );
        out.push_str(
            "\nThe usec of `fcall` and `evalsha` include the commands they run, which also have rows of their own.\n",
        );
        out
    }
}

/// A multiplexed connection for INFO snapshots.
///
/// # Errors
/// Bad URL, Redis unreachable.
pub async fn info_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)
        .with_context(|| format!("bad Redis URL {}", rtq_core::redact_url(url)))?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot reach Redis at {}", rtq_core::redact_url(url)))
}

/// A handler that does no work: streams `chunks` chunks of `chunk_size`
/// bytes, then returns `{"text": "y" * result_size}` (fields of the input;
/// defaults 0, 100 and 1000).
pub struct ZeroWork;

#[async_trait]
impl Handler for ZeroWork {
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        let field = |name: &str, default: u64| {
            task.input()
                .and_then(|i| i[name].as_u64())
                .unwrap_or(default) as usize
        };
        let (chunks, size, result) = (
            field("chunks", 0),
            field("chunk_size", 100),
            field("result_size", 1000),
        );
        for _ in 0..chunks {
            task.send("x".repeat(size)).await?;
        }
        Ok(json!({ "text": "y".repeat(result) }))
    }
}

/// The input of one benchmark task: a prompt of `payload` characters and
/// what [`ZeroWork`] should send back.
pub fn task_input(payload: usize, chunks: usize, result_size: usize) -> Value {
    json!({ "prompt": "p".repeat(payload), "chunks": chunks, "chunk_size": 100, "result_size": result_size })
}

/// One closed-loop load: `clients` loops each sending `tasks / clients`
/// tasks one after another, served by one Worker with `slots` slots.
#[derive(Clone, Debug)]
pub struct Load {
    /// Concurrent request loops (tasks in flight).
    pub clients: usize,
    /// Worker slots.
    pub slots: usize,
    /// Tasks in total (rounded down to a multiple of `clients`).
    pub tasks: usize,
    /// Chunks streamed per task (0: request/response with `run`).
    pub chunks: usize,
    /// Input prompt characters.
    pub payload: usize,
    /// Result characters.
    pub result_size: usize,
    /// Tasks run one at a time before measuring.
    pub warmup: usize,
    /// Run on a stream queue (protocol v3, one band) instead of a v2 queue.
    pub stream_queue: bool,
}

impl Load {
    /// The issue-11 shape: 1000-char input and result, 100 warm-up tasks.
    pub fn new(clients: usize, slots: usize, tasks: usize, chunks: usize) -> Self {
        Self {
            clients: clients.max(1),
            slots: slots.max(1),
            tasks,
            chunks,
            payload: 1000,
            result_size: 1000,
            warmup: 100,
            stream_queue: false,
        }
    }
}

/// What one load run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Tasks measured.
    pub tasks: usize,
    /// Wall time of the measured part.
    pub secs: f64,
    /// Latencies in ms, sorted.
    pub lat_ms: Vec<f64>,
    /// Redis work during the measured part.
    pub redis: RedisDelta,
    /// CPU (user and system) of this process, the clients and the worker,
    /// during the measured part, in seconds.
    pub load_cpu_s: f64,
}

impl LoadResult {
    /// Tasks per second.
    pub fn rate(&self) -> f64 {
        self.tasks as f64 / self.secs.max(1e-9)
    }
    /// Latency percentile in ms (`p` in 0..=1).
    pub fn pct(&self, p: f64) -> f64 {
        percentile(&self.lat_ms, p)
    }
    /// Redis commands per task.
    pub fn cmds_per_task(&self) -> f64 {
        self.redis.calls() as f64 / self.tasks.max(1) as f64
    }
    /// Redis CPU microseconds per task.
    pub fn cpu_us_per_task(&self) -> f64 {
        self.redis.cpu_s * 1e6 / self.tasks.max(1) as f64
    }
    /// CPU microseconds per task of the load process (clients and worker).
    pub fn load_cpu_us_per_task(&self) -> f64 {
        self.load_cpu_s * 1e6 / self.tasks.max(1) as f64
    }
}

/// Runs `load` on queue `queue` with the real Client and Worker.
///
/// # Errors
/// Redis unreachable, any task failing.
pub async fn run_load(url: &str, queue: &str, load: &Load) -> anyhow::Result<LoadResult> {
    if load.stream_queue {
        let client = Client::connect(url)
            .await
            .context("connecting to create the stream queue")?;
        client
            .queue(queue)?
            .create_stream(1, 0)
            .await
            .context("creating the stream queue")?;
    }
    let worker = Worker::connect(url, WorkerConfig::new(queue).slots(load.slots))
        .await
        .context("starting the worker")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let wh = tokio::spawn(worker.run(Arc::new(ZeroWork), async {
        let _ = stop_rx.await;
    }));
    let result = drive(url, queue, load).await;
    let _ = stop_tx.send(());
    let _ = wh.await;
    result
}

async fn drive(url: &str, queue: &str, load: &Load) -> anyhow::Result<LoadResult> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = Client::connect(url)
        .await
        .context("connecting the client")?;
    let q = client.queue(queue)?;
    let input = task_input(load.payload, load.chunks, load.result_size);
    let chunks = load.chunks;
    for _ in 0..load.warmup {
        one_task(&q, &input, chunks).await?;
    }
    let mut conn = info_conn(url).await?;
    let before = RedisSnapshot::take(&mut conn).await?;
    let per_client = (load.tasks / load.clients).max(1);
    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..load.clients {
        let q = q.clone();
        let input = input.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                one_task(&q, &input, chunks).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat_ms = Vec::new();
    for h in handles {
        lat_ms.extend(h.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let load_cpu_s = process_cpu_s() - cpu_before;
    let after = RedisSnapshot::take(&mut conn).await?;
    lat_ms.sort_by(f64::total_cmp);
    Ok(LoadResult {
        tasks: lat_ms.len(),
        secs,
        lat_ms,
        redis: after.since(&before),
        load_cpu_s,
    })
}

/// Runs one task to its end: `run` without chunks, else `stream` read to
/// the end.
///
/// # Errors
/// The task's error.
pub async fn one_task(q: &rtq_core::Queue, input: &Value, chunks: usize) -> anyhow::Result<()> {
    if chunks == 0 {
        q.run(TaskRequest::json(input.clone())).await?;
    } else {
        let mut s = q.stream(TaskRequest::json(input.clone())).await?;
        while let Some(item) = s.next().await {
            item?;
        }
    }
    Ok(())
}

/// The `p` percentile (0..=1) of sorted values (nearest rank); 0 if empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (upper middle for an even count); 0 if empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// CPU time (user and system) this process has used so far, in seconds
/// (0 if the kernel does not say).
pub fn process_cpu_s() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6
        })
        .unwrap_or(0.0)
}

/// Resident set size of this process in kB (Linux /proc).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One line of a plot: a name and its (x, y) points.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
}

/// A small SVG line plot (no dependencies): x on a log10 axis when `log_x`,
/// y linear from 0, one polyline per series, ticks at the data's x values.
pub fn svg_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[Series],
) -> String {
    const W: f64 = 560.0;
    const H: f64 = 320.0;
    const L: f64 = 70.0;
    const R: f64 = 150.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let fx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let (x0, x1) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| {
        (a.min(fx(x)), b.max(fx(x)))
    });
    let (x0, x1) = if x0 >= x1 {
        (x0 - 1.0, x0 + 1.0)
    } else {
        (x0, x1)
    };
    let y1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let px = |x: f64| L + (fx(x) - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - y / y1 * (H - T - B);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">{}</text>\n",
        (W - R + L) / 2.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>",
        H - B,
        W - R,
        H - B,
        H - B
    );
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"black\"/><text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>",
            px(x),
            H - B,
            H - B + 4.0,
            H - B + 16.0,
            short(x)
        );
    }
    for i in 0..=4 {
        let y = y1 / 1.1 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{L}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>",
            py(y),
            W - R,
            L - 4.0,
            py(y) + 4.0,
            short(y)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (W - R + L) / 2.0,
        H - 12.0,
        esc(x_label),
        (H - B + T) / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for &(x, y) in &se.points {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(x),
                py(y)
            );
        }
        let ly = T + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{3}\" y=\"{4}\">{5}</text>",
            W - R + 10.0,
            ly,
            W - R + 30.0,
            W - R + 35.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A short axis label: 1.2k, 64k, 1M, 0.5, 12.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed_per_command() {
        let text = "# Commandstats\r\ncmdstat_fcall:calls=10,usec=500,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\ncmdstat_client|setinfo:calls=2,usec=3,usec_per_call=1.5\r\n";
        let stats = parse_commandstats(text);
        assert_eq!(
            stats["fcall"],
            CommandStat {
                calls: 10,
                usec: 500
            }
        );
        assert_eq!(stats["client|setinfo"].calls, 2);
        assert_eq!(
            info_field(
                "used_cpu_sys:1.50\r\nused_cpu_user:2.25\r\n",
                "used_cpu_user"
            ),
            Some(2.25)
        );
        assert_eq!(
            info_field("used_cpu_sys_children:9\r\n", "used_cpu_sys"),
            None
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.999), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn the_plot_is_well_formed_svg() {
        let svg = svg_plot(
            "a < b",
            "x",
            "y",
            true,
            &[Series {
                name: "s".into(),
                points: vec![(1.0, 2.0), (1000.0, 5.0)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt; b") && svg.contains("<polyline"));
        assert!(!svg.contains("NaN"));
    }
}
