//! Execution traces of the tile engine: what every worker thread did in every phase of a batch,
//! like the IPU's execution-trace view (compute red, exchange blue, sync yellow).
//!
//! Recording costs nothing when tracing is off: the engine holds an `Option` of `TraceBuffers`
//! and passes each worker an `Option<Recorder>`; with `None` a phase does exactly what it
//! did before plus one branch. With tracing on, each thread appends raw `Span`s (phase id, time
//! step, work units, two [`Instant`]s) to its own `Vec`, whose capacity is reserved before the
//! batch: no allocation, no lock and no formatting inside the batch. Spans of one thread are
//! contiguous (a phase starts at the instant the previous one ended), so a thread's phases add up
//! to its whole time in the batch.
//!
//! [`ExecTrace::to_chrome_json`] writes the Chrome trace-event format (`{"traceEvents": [...]}`),
//! which Perfetto (ui.perfetto.dev) and `chrome://tracing` open: one complete event (`"ph": "X"`,
//! `ts`/`dur` in microseconds) per phase per superstep per thread, `pid` 1, `tid` = worker index,
//! names `compute`, `exchange`, `sync` (the barrier wait), `loss`, `update`; `cat` = `forward`,
//! `backward` or `update`; `args`: `t` (time step; the forward phases, which run layer by layer
//! over all steps, carry `layer` instead), `step` (optimizer step), `units` (work units
//! this thread ran), `phase_units` (units of the phase over all threads), `layers`, `tiles`.
//! [`TraceSummary`] reads such a file back and totals it per phase.

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// What a span is (its event name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum PhaseKind {
    /// Local computation of tiles.
    Compute,
    /// Moving spikes or gradients between tiles.
    Exchange,
    /// Waiting at the barrier.
    Sync,
    /// The loss on the output counts (thread 0).
    Loss,
    /// The optimizer step of every tile.
    Update,
}

impl PhaseKind {
    /// Every kind, in display order.
    pub const ALL: [PhaseKind; 5] = [
        PhaseKind::Compute,
        PhaseKind::Exchange,
        PhaseKind::Sync,
        PhaseKind::Loss,
        PhaseKind::Update,
    ];

    /// The event name.
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Compute => "compute",
            PhaseKind::Exchange => "exchange",
            PhaseKind::Sync => "sync",
            PhaseKind::Loss => "loss",
            PhaseKind::Update => "update",
        }
    }

    /// The kind of an event name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Which pass a span belongs to (its event category).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Pass {
    /// Forward time steps and the loss.
    Forward,
    /// Backward time steps.
    Backward,
    /// The weight update.
    Update,
}

impl Pass {
    /// Every pass, in order.
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::Backward, Pass::Update];

    /// The event category.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
            Pass::Update => "update",
        }
    }

    /// The pass of a category.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// `t` of spans that belong to no time step (loss, update).
pub(crate) const NO_STEP: u32 = u32::MAX;

/// `t` of spans of one layer's whole forward pass: `LAYER | l` (the forward runs layer by layer).
pub(crate) const LAYER: u32 = 1 << 31;

/// One raw span as recorded in the batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    start: Instant,
    end: Instant,
    t: u32,
    step: u32,
    units: u32,
    phase_units: u32,
    kind: PhaseKind,
    pass: Pass,
}

/// A worker's view of its buffer during one batch.
pub(crate) struct Recorder<'a> {
    buf: &'a mut Vec<Span>,
    last: Instant,
    step: u32,
}

impl Recorder<'_> {
    /// Starts the thread's timeline at `now` (when the worker begins its schedule).
    #[inline]
    pub fn restart(&mut self, now: Instant) {
        self.last = now;
    }

    /// Appends a span from the end of the previous one to `end` (capacity was reserved).
    #[inline]
    pub fn push(
        &mut self,
        kind: PhaseKind,
        pass: Pass,
        t: u32,
        units: u32,
        phase_units: u32,
        end: Instant,
    ) {
        self.buf.push(Span {
            start: self.last,
            end,
            t,
            step: self.step,
            units,
            phase_units,
            kind,
            pass,
        });
        self.last = end;
    }
}

/// The engine's trace state: how many batches are still to trace, and the per-thread buffers.
#[derive(Debug)]
pub(crate) struct TraceBuffers {
    remaining: usize,
    epoch: Option<Instant>,
    threads: Vec<Vec<Span>>,
    steps: Vec<u32>,
    meta: TraceMeta,
}

impl TraceBuffers {
    /// Traces the next `batches` training batches of a model described by `meta`.
    pub fn new(batches: usize, meta: TraceMeta) -> Self {
        TraceBuffers {
            remaining: batches,
            epoch: None,
            threads: Vec::new(),
            steps: Vec::new(),
            meta,
        }
    }

    /// Whether the next training batch is traced.
    pub fn active(&self) -> bool {
        self.remaining > 0
    }

    /// Before a traced batch: reserves `spans` more spans for each of `threads` threads.
    pub fn begin(&mut self, threads: usize, spans: usize, step: u32) -> Instant {
        if self.threads.len() < threads {
            self.threads.resize_with(threads, Vec::new);
        }
        for b in &mut self.threads[..threads] {
            b.reserve(spans);
        }
        self.remaining -= 1;
        self.steps.push(step);
        self.meta.threads = self.meta.threads.max(threads);
        let now = Instant::now();
        *self.epoch.get_or_insert(now)
    }

    /// One recorder per thread for the batch of optimizer step `step`, all starting at `start`.
    pub fn recorders(&mut self, threads: usize, step: u32, start: Instant) -> Vec<Recorder<'_>> {
        self.threads[..threads].iter_mut().map(|buf| Recorder { buf, last: start, step }).collect()
    }

    /// The finished trace.
    pub fn finish(&self) -> ExecTrace {
        let epoch = self.epoch.unwrap_or_else(Instant::now);
        let us = |i: Instant| i.saturating_duration_since(epoch).as_nanos() as f64 / 1000.0;
        let mut events = Vec::new();
        for (tid, buf) in self.threads.iter().enumerate() {
            for s in buf {
                events.push(TraceEvent {
                    kind: s.kind,
                    pass: s.pass,
                    tid,
                    ts_us: us(s.start),
                    dur_us: us(s.end) - us(s.start),
                    t: (s.t & LAYER == 0).then_some(s.t),
                    layer: (s.t != NO_STEP && s.t & LAYER != 0).then_some(s.t & !LAYER),
                    step: s.step,
                    units: s.units,
                    phase_units: s.phase_units,
                });
            }
        }
        let mut meta = self.meta.clone();
        meta.steps = self.steps.clone();
        ExecTrace { meta, events }
    }
}

/// What the trace is of (the `otherData` of the file).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceMeta {
    /// Layers with weights (hidden and output).
    pub layers: usize,
    /// Tiles in the plan.
    pub tiles: usize,
    /// Worker threads.
    pub threads: usize,
    /// Time steps per sample.
    pub time_steps: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// The optimizer steps traced.
    pub steps: Vec<u32>,
}

/// One finished span.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    /// Phase.
    pub kind: PhaseKind,
    /// Pass.
    pub pass: Pass,
    /// Worker thread.
    pub tid: usize,
    /// Start, microseconds since the first traced batch started.
    pub ts_us: f64,
    /// Duration in microseconds.
    pub dur_us: f64,
    /// Time step, for phases of one.
    pub t: Option<u32>,
    /// Layer, for the forward phases of one layer over all time steps.
    pub layer: Option<u32>,
    /// Optimizer step (1-based: the step this batch takes).
    pub step: u32,
    /// Work units this thread ran.
    pub units: u32,
    /// Work units of the phase over all threads.
    pub phase_units: u32,
}

/// A finished trace, ready to write.
#[derive(Clone, Debug, Default)]
pub struct ExecTrace {
    /// What it is of.
    pub meta: TraceMeta,
    /// Spans of every thread.
    pub events: Vec<TraceEvent>,
}

impl ExecTrace {
    /// The Chrome trace-event JSON of the trace.
    pub fn to_chrome_json(&self) -> String {
        let mut s = String::with_capacity(256 + 200 * self.events.len());
        s.push_str("{\"traceEvents\":[\n");
        s.push_str(
            "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,\"args\":{\"name\":\"spiketile tiled engine\"}}",
        );
        for tid in 0..self.meta.threads {
            let _ = write!(
                s,
                ",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":\"worker {tid}\"}}}}"
            );
            let _ = write!(
                s,
                ",\n{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"sort_index\":{tid}}}}}"
            );
        }
        let (layers, tiles) = (self.meta.layers, self.meta.tiles);
        for e in &self.events {
            let _ = write!(
                s,
                ",\n{{\"name\":\"{}\",\"cat\":\"{}\",\"ph\":\"X\",\"pid\":1,\"tid\":{},\"ts\":{:.3},\"dur\":{:.3},\"args\":{{",
                e.kind.name(),
                e.pass.name(),
                e.tid,
                e.ts_us,
                e.dur_us
            );
            if let Some(t) = e.t {
                let _ = write!(s, "\"t\":{t},");
            }
            if let Some(l) = e.layer {
                let _ = write!(s, "\"layer\":{l},");
            }
            let _ = write!(
                s,
                "\"step\":{},\"units\":{},\"phase_units\":{},\"layers\":{layers},\"tiles\":{tiles}}}}}",
                e.step, e.units, e.phase_units
            );
        }
        s.push_str("\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":");
        s.push_str(&serde_json::to_string(&self.meta).unwrap_or_else(|_| "{}".into()));
        s.push_str("}\n");
        s
    }

    /// Writes the Chrome trace-event JSON to `path` (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::atomic::write_atomic(path, self.to_chrome_json().as_bytes())
            .with_context(|| format!("writing trace {}", path.display()))
    }
}

/// Totals of one phase (or pass) of a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Time summed over threads, microseconds.
    pub us: f64,
    /// Spans.
    pub count: usize,
}

/// A trace file in numbers: per phase and pass, total time and share of the thread time.
#[derive(Clone, Debug, Default)]
pub struct TraceSummary {
    /// Worker threads seen.
    pub threads: usize,
    /// Optimizer steps (batches) traced.
    pub steps: usize,
    /// `otherData.layers` and `.tiles`, if present.
    pub layers: Option<u64>,
    /// Tiles of the plan, if given.
    pub tiles: Option<u64>,
    /// Wall time: per batch, first span start to last span end, summed over batches (µs).
    pub wall_us: f64,
    /// Thread time: per batch and thread, its first span start to its last span end, summed (µs).
    pub thread_us: f64,
    /// Per `(phase, pass)`.
    pub by_phase: BTreeMap<(PhaseKind, Pass), Totals>,
    /// Per pass.
    pub by_pass: BTreeMap<Pass, Totals>,
}

impl TraceSummary {
    /// Reads and totals a Chrome trace file written by spiketile.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading trace {}", path.display()))?;
        Self::from_json(&text)
            .with_context(|| format!("{} is not a spiketile trace", path.display()))
    }

    /// Totals a Chrome trace JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("invalid JSON")?;
        let events =
            v.get("traceEvents").and_then(Value::as_array).context("no \"traceEvents\" array")?;
        let mut sum = TraceSummary::default();
        // (step, tid) -> (first start, last end); step -> (first start, last end).
        let mut per_thread: BTreeMap<(u64, u64), (f64, f64)> = BTreeMap::new();
        let mut per_step: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            if e.get("ph").and_then(Value::as_str) != Some("X") {
                continue;
            }
            let field = |k: &str| e.get(k).with_context(|| format!("event {i} has no {k:?}"));
            let name = field("name")?.as_str().with_context(|| format!("event {i}: name"))?;
            let kind = PhaseKind::from_name(name)
                .with_context(|| format!("event {i}: unknown phase {name:?}"))?;
            let cat = field("cat")?.as_str().with_context(|| format!("event {i}: cat"))?;
            let pass = Pass::from_name(cat)
                .with_context(|| format!("event {i}: unknown category {cat:?}"))?;
            let ts = field("ts")?.as_f64().with_context(|| format!("event {i}: ts"))?;
            let dur = field("dur")?.as_f64().with_context(|| format!("event {i}: dur"))?;
            ensure!(dur >= 0.0 && ts.is_finite() && dur.is_finite(), "event {i}: bad ts/dur");
            let tid = field("tid")?.as_u64().with_context(|| format!("event {i}: tid"))?;
            let step = e.pointer("/args/step").and_then(Value::as_u64).unwrap_or(0);
            let tot = sum.by_phase.entry((kind, pass)).or_default();
            tot.us += dur;
            tot.count += 1;
            let tot = sum.by_pass.entry(pass).or_default();
            tot.us += dur;
            tot.count += 1;
            for r in [
                per_thread.entry((step, tid)).or_insert((ts, ts + dur)),
                per_step.entry(step).or_insert((ts, ts + dur)),
            ] {
                r.0 = r.0.min(ts);
                r.1 = r.1.max(ts + dur);
            }
            sum.threads = sum.threads.max(tid as usize + 1);
        }
        if per_step.is_empty() {
            bail!("no phase spans (\"ph\": \"X\" events) in the trace");
        }
        sum.steps = per_step.len();
        sum.wall_us = per_step.values().map(|(a, b)| b - a).sum();
        sum.thread_us = per_thread.values().map(|(a, b)| b - a).sum();
        sum.layers = v.pointer("/otherData/layers").and_then(Value::as_u64);
        sum.tiles = v.pointer("/otherData/tiles").and_then(Value::as_u64);
        Ok(sum)
    }

    /// Sum of every phase's time (µs, over threads).
    pub fn phase_total_us(&self) -> f64 {
        self.by_phase.values().map(|t| t.us).sum()
    }

    /// The summary as a table.
    pub fn format(&self) -> String {
        let mut s = String::new();
        let ms = |us: f64| us / 1000.0;
        let share = |us: f64| 100.0 * us / self.thread_us.max(1e-9);
        let _ = writeln!(
            s,
            "trace: {} step{}, {} thread{}{}{}",
            self.steps,
            if self.steps == 1 { "" } else { "s" },
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.layers.map_or(String::new(), |l| format!(", {l} layers")),
            self.tiles.map_or(String::new(), |t| format!(", {t} tiles")),
        );
        let _ = writeln!(
            s,
            "wall time {:.3} ms ({:.3} ms per step); thread time {:.3} ms (shares below are of it)",
            ms(self.wall_us),
            ms(self.wall_us) / self.steps.max(1) as f64,
            ms(self.thread_us),
        );
        let _ = writeln!(
            s,
            "\n{:<10} {:<9} {:>12} {:>14} {:>7} {:>7}",
            "phase", "pass", "total ms", "per thread ms", "share", "count"
        );
        let threads = self.threads.max(1) as f64;
        let row = |s: &mut String, a: &str, b: &str, t: &Totals| {
            let _ = writeln!(
                s,
                "{:<10} {:<9} {:>12.3} {:>14.3} {:>6.1}% {:>7}",
                a,
                b,
                ms(t.us),
                ms(t.us) / threads,
                share(t.us),
                t.count
            );
        };
        for pass in Pass::ALL {
            for kind in PhaseKind::ALL {
                if let Some(t) = self.by_phase.get(&(kind, pass)) {
                    row(&mut s, kind.name(), pass.name(), t);
                }
            }
        }
        let _ = writeln!(s);
        for pass in Pass::ALL {
            if let Some(t) = self.by_pass.get(&pass) {
                row(&mut s, "all", pass.name(), t);
            }
        }
        for kind in PhaseKind::ALL {
            let mut t = Totals::default();
            for ((k, _), x) in &self.by_phase {
                if *k == kind {
                    t.us += x.us;
                    t.count += x.count;
                }
            }
            if t.count > 0 {
                row(&mut s, kind.name(), "all", &t);
            }
        }
        let all = Totals {
            us: self.phase_total_us(),
            count: self.by_phase.values().map(|t| t.count).sum(),
        };
        row(&mut s, "total", "", &all);
        let outside = self.wall_us * threads - self.thread_us;
        let _ = writeln!(
            s,
            "\noutside any phase (threads starting and ending at different instants): {:.3} ms, {:.1}% of wall time x threads",
            ms(outside.max(0.0)),
            100.0 * outside.max(0.0) / (self.wall_us * threads).max(1e-9)
        );
        s
    }
}
