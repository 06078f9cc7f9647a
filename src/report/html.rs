//! `--report FILE`: one self-contained HTML page (no network, inline SVG and CSS) with the summary and,
//! per check, its findings and the pictures that explain them.
use trainlint_checks::finding::num;
use trainlint_checks::{Curve, Severity};

use super::junit::xml_escape as esc;
use super::Report;
use crate::run::Status;

const WIDTH: f64 = 680.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 34.0;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header .inputs{color:#b8c0cf;font-size:13px}main{padding:20px 28px;max-width:1100px}
.cards{display:flex;gap:12px;margin:0 0 18px}.card{background:#fff;border-radius:8px;padding:10px 16px;
box-shadow:0 1px 2px #0002;min-width:90px}.card b{display:block;font-size:24px}.err b{color:#c62828}
.warn b{color:#b26a00}.ok b{color:#2e7d32}table{border-collapse:collapse;background:#fff;width:100%;
box-shadow:0 1px 2px #0002;border-radius:8px;overflow:hidden}th,td{text-align:left;padding:7px 12px;
border-bottom:1px solid #eceef2}th{background:#eef0f4;font-weight:600}.status-passed{color:#2e7d32}
.status-findings{color:#c62828}.status-skipped{color:#68707f}.status-failed{color:#c62828;font-weight:700}
section.check{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002;padding:14px 18px;margin:18px 0}
section.check h2{margin:0 0 8px;font-size:17px}.finding{border-left:4px solid #c62828;padding:6px 10px;
margin:8px 0;background:#fdf3f3}.finding.warning{border-color:#b26a00;background:#fff8ec}
.finding .loc{color:#3b5bdb;font-family:ui-monospace,monospace;font-size:12.5px}.finding .help{color:#355}
.reason{color:#68707f}svg{display:block;margin:10px 0;background:#fff}svg text{font:11px system-ui,sans-serif;
fill:#505868}.axis{stroke:#9aa1ae}.grid{stroke:#eceef2}.line{fill:none;stroke:#1f6feb;stroke-width:1.8}
.target{stroke:#2e7d32;stroke-dasharray:5 4}.window{fill:#c62828;opacity:.10}.band{fill:#2e7d32;opacity:.13}
.dot{fill:#1f6feb}.dot.out{fill:#c62828}.bar{fill:#1f6feb}.title{font-weight:600;fill:#1d2330}
section.graph{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002;padding:14px 18px;margin:18px 0}
section.graph h2{margin:0 0 8px;font-size:17px}.graph-view{overflow:auto;max-height:900px;border:1px solid #eceef2}
.graph-view svg{margin:0}.graph-view svg text{font:12px system-ui,sans-serif;fill:#1d2330}
.graph g.node{cursor:pointer}.graph g.node.hl rect,.graph g.node.hl ellipse{stroke:#ff6d00;stroke-width:5}
.graph .legend span{display:inline-block;padding:1px 8px;margin:0 6px 4px 0;border-radius:4px;border:1px solid #9aa1ae}
.finding[data-modules]{cursor:pointer}.finding.hl{outline:2px solid #ff6d00}
";

/// Maps data values to pixels on one axis, linearly or in log10.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    from: f64,
    to: f64,
}

impl Scale {
    fn new(values: impl Iterator<Item = f64>, log: bool, from: f64, to: f64) -> Self {
        let t = |v: f64| if log { v.log10() } else { v };
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
            lo = lo.min(t(v));
            hi = hi.max(t(v));
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - pad, hi + pad);
        } else {
            let pad = (hi - lo) * 0.05;
            (lo, hi) = (lo - pad, hi + pad);
        }
        Scale {
            lo,
            hi,
            log,
            from,
            to,
        }
    }
    fn px(&self, v: f64) -> f64 {
        let t = if self.log { v.max(1e-300).log10() } else { v };
        self.from + (t - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }
    fn label(&self, frac: f64) -> String {
        let t = self.lo + frac * (self.hi - self.lo);
        num(if self.log { 10f64.powf(t) } else { t })
    }
}

const COLORS: [&str; 5] = ["#1f6feb", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c"];

/// A chart of one curve: a line (or dots for per-layer / per-channel values), its target line, its
/// flagged window shaded, and its expected band.
pub fn chart(c: &Curve) -> String {
    chart_series(&c.name, &[c])
}

/// Several curves on one shared axis (the loss terms of a multi-term loss, on a log scale), with a
/// legend; the first curve's target, window and band apply.
fn chart_series(title: &str, series: &[&Curve]) -> String {
    let c = series[0];
    if c.y.is_empty() {
        return String::new();
    }
    if c.y.len() == 1 && series.len() == 1 {
        return single_value(c);
    }
    let categorical = !c.labels.is_empty();
    let xs: Vec<f64> = if c.x.len() == c.y.len() {
        c.x.clone()
    } else {
        (0..c.y.len()).map(|i| i as f64).collect()
    };
    let log = c.log_scale && c.y.iter().any(|v| *v > 0.0);
    let mut y_values: Vec<f64> = series.iter().flat_map(|s| s.y.iter().copied()).collect();
    y_values.extend(c.target);
    y_values.extend(c.lower.iter().chain(&c.upper));
    let ys = Scale::new(y_values.into_iter(), log, HEIGHT - BOTTOM, TOP);
    let (x_lo, x_hi) = (xs[0], xs[xs.len() - 1]);
    let xscale = Scale {
        lo: x_lo - if categorical { 0.5 } else { 0.0 },
        hi: x_hi + if categorical { 0.5 } else { 0.0 },
        log: false,
        from: LEFT,
        to: WIDTH - RIGHT,
    };
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\">",
        esc(title)
    );
    s.push_str(&format!(
        "<text class=\"title\" x=\"{LEFT}\" y=\"16\">{}{}</text>",
        esc(title),
        if log { " (log scale)" } else { "" }
    ));
    if series.len() > 1 {
        let mut x = WIDTH - RIGHT;
        for (k, curve) in series.iter().enumerate().rev() {
            let label = esc(&curve.name);
            x -= 7.0 * curve.name.chars().count() as f64 + 24.0;
            s.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"7\" width=\"12\" height=\"4\" fill=\"{}\"/><text x=\"{:.1}\" y=\"14\">{label}</text>",
                COLORS[k % COLORS.len()],
                x + 16.0
            ));
        }
    }
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let y = TOP + (1.0 - f) * (HEIGHT - BOTTOM - TOP);
        s.push_str(&format!(
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            ys.label(f)
        ));
    }
    if let Some((a, b)) = c.window {
        let (xa, xb) = (xscale.px(a), xscale.px(b).max(xscale.px(a) + 2.0));
        s.push_str(&format!(
            "<rect class=\"window\" x=\"{xa:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\"><title>flagged window {}..{}</title></rect>",
            xb - xa,
            HEIGHT - BOTTOM - TOP,
            num(a),
            num(b)
        ));
    }
    if c.lower.len() == c.y.len() && c.upper.len() == c.y.len() {
        for (i, x) in xs.iter().enumerate() {
            let (x0, x1) = (xscale.px(x - 0.35), xscale.px(x + 0.35));
            let (y0, y1) = (ys.px(c.upper[i]), ys.px(c.lower[i]));
            s.push_str(&format!(
                "<rect class=\"band\" x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>expected {}..{}</title></rect>",
                x1 - x0,
                (y1 - y0).max(1.0),
                num(c.lower[i]),
                num(c.upper[i])
            ));
        }
    }
    if let Some(t) = c.target {
        let y = ys.px(t);
        s.push_str(&format!(
            "<line class=\"target\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">target {}</text>",
            WIDTH - RIGHT,
            WIDTH - RIGHT,
            y - 4.0,
            num(t)
        ));
    }
    if categorical {
        for (i, (x, y)) in xs.iter().zip(&c.y).enumerate() {
            let out = (c.lower.len() == c.y.len() && (*y < c.lower[i] || *y > c.upper[i]))
                || c.target.is_some_and(|t| *y > t);
            s.push_str(&format!(
                "<circle class=\"dot{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\"><title>{}: {}</title></circle>",
                if out { " out" } else { "" },
                xscale.px(*x),
                ys.px(*y),
                esc(&c.labels[i.min(c.labels.len() - 1)]),
                num(*y)
            ));
        }
        let step = (c.labels.len() / 12).max(1);
        for (i, label) in c.labels.iter().enumerate().step_by(step) {
            let short: String = label.chars().take(14).collect();
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                xscale.px(xs[i]),
                HEIGHT - BOTTOM + 16.0,
                esc(&short)
            ));
        }
    } else {
        for (k, curve) in series.iter().enumerate() {
            let mut d = String::new();
            let mut pen_down = false;
            for (x, y) in xs.iter().zip(&curve.y) {
                if !y.is_finite() || (log && *y <= 0.0) {
                    pen_down = false;
                    continue;
                }
                d.push_str(&format!(
                    "{}{:.1},{:.1} ",
                    if pen_down { "L" } else { "M" },
                    xscale.px(*x),
                    ys.px(*y)
                ));
                pen_down = true;
            }
            s.push_str(&format!(
                "<path class=\"line\" style=\"stroke:{}\" d=\"{}\"/>",
                COLORS[k % COLORS.len()],
                d.trim_end()
            ));
        }
        for f in [0.0, 0.5, 1.0] {
            let x = x_lo + f * (x_hi - x_lo);
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                xscale.px(x),
                HEIGHT - BOTTOM + 16.0,
                num(x)
            ));
        }
    }
    s.push_str(&format!(
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\"/><line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/></svg>",
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    ));
    s
}

/// One value against its reference (e.g. the adjacency ratio against 1 for i.i.d. order).
fn single_value(c: &Curve) -> String {
    let v = c.y[0];
    let reference = c.target.unwrap_or(v).max(v).max(1e-12);
    let width = WIDTH - LEFT - RIGHT;
    let bar = (v / reference).clamp(0.0, 1.0) * width;
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{}\" width=\"{WIDTH}\" height=\"70\" viewBox=\"0 0 {WIDTH} 70\"><text class=\"title\" x=\"{LEFT}\" y=\"16\">{}</text>",
        esc(&c.name),
        esc(&c.name)
    );
    s.push_str(&format!(
        "<rect class=\"bar\" x=\"{LEFT}\" y=\"26\" width=\"{bar:.1}\" height=\"18\"/><text x=\"{:.1}\" y=\"40\">{}</text>",
        LEFT + bar + 6.0,
        num(v)
    ));
    if let Some(t) = c.target {
        let x = LEFT + (t / reference).clamp(0.0, 1.0) * width;
        s.push_str(&format!(
            "<line class=\"target\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"22\" y2=\"50\"/><text x=\"{x:.1}\" y=\"64\" text-anchor=\"end\">reference {}</text>",
            num(t)
        ));
    }
    s.push_str("</svg>");
    s
}

/// The model graph section: the collapsed view, the full one (hidden until a collapsed block or a
/// finding inside one is clicked), a legend, and the script that links findings to nodes.
fn graph_section(graph: &super::graph::ReportGraph) -> String {
    use super::graph::ReportGraph;
    let mut out = String::from("<section class=\"graph\" id=\"graph\"><h2>Model graph</h2>");
    let graph = match graph {
        ReportGraph::Drawn(drawn) => drawn,
        ReportGraph::TimedOut(limit) => {
            out.push_str(&format!(
                "<p class=\"reason\">Not drawn: timed out after {} s (--timeout).</p></section>",
                trainlint_checks::finding::num(limit.as_secs_f64())
            ));
            return out;
        }
    };
    out.push_str(
        "<p class=\"legend\"><span style=\"background:#ffd6d6\">error</span><span style=\"background:#fff0c2\">warning / shared BatchNorm</span>\
<span style=\"background:#e6e6e6;border-style:dashed\">never called</span><span style=\"background:#d8ecff\">final activation</span>\
<span>double border: repeated blocks, click to expand</span><span>red dashed edge: .detach()</span>\
<span style=\"background:#f4f4f4;border-style:dashed\">modules past the drawing limit</span> Click a finding to find its node.</p>",
    );
    // Inline SVG in HTML needs neither the XML prolog nor the namespace (no address in the page).
    let inline = |svg: String| -> String {
        let svg = match svg.find("<svg") {
            Some(i) => svg[i..].to_string(),
            None => svg,
        };
        svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
    };
    out.push_str(&format!(
        "<div class=\"graph-view\" id=\"graph-collapsed\">{}</div>",
        inline(graph.collapsed_svg.clone())
    ));
    if let Some(full) = &graph.full_svg {
        let svg = inline(full.clone())
            .replace("startarrow", "startarrowF")
            .replace("endarrow", "endarrowF")
            .replace("id=\"node-", "id=\"full-node-");
        out.push_str(&format!(
            "<p id=\"graph-toggle-line\" hidden><button id=\"graph-toggle\" type=\"button\">collapse repeated blocks</button></p>\
<div class=\"graph-view\" id=\"graph-full\" hidden>{svg}</div>"
        ));
    }
    out.push_str(GRAPH_SCRIPT);
    out.push_str("</section>");
    out
}

/// Click a collapsed block: show the full graph. Click a finding: highlight the nodes it names (in the
/// full graph when the collapsed one shows them only inside collapsed blocks). `data-highlighted` counts the highlighted nodes. The
/// page address can click for a test: `#graph-click=N` (the Nth finding with nodes), `#graph-expand`,
/// `#graph-highlight=PATH,…` (as a finding naming those paths).
const GRAPH_SCRIPT: &str = "<script>(function(){\
var col=document.getElementById('graph-collapsed'),full=document.getElementById('graph-full'),line=document.getElementById('graph-toggle-line');\
function show(expanded){if(!full)return;full.hidden=!expanded;col.hidden=expanded;line.hidden=!expanded;}\
function names(n,p){var m=n.getAttribute('data-module')||'';var list=(n.getAttribute('data-collapsed')||'').split(' ').filter(Boolean);if(!list.length)list=[m];\
return list.some(function(x){return x&&(x===p||p.indexOf(x+'.')===0||x.indexOf(p+'.')===0);});}\
function highlight(paths,expand){var views=expand&&full?[full]:[col];if(full&&!expand)views.push(full);var hit=[];\
document.querySelectorAll('.graph g.node.hl').forEach(function(g){g.classList.remove('hl');});\
for(var v=0;v<views.length&&!hit.length;v++){views[v].querySelectorAll('g.node').forEach(function(g){if(paths.some(function(p){return names(g,p);}))hit.push(g);});\
if(views[v]===col&&full&&hit.length&&hit.every(function(g){return g.hasAttribute('data-collapsed');}))hit=[];\
if(hit.length)show(views[v]===full);}\
hit.forEach(function(g){g.classList.add('hl');});document.body.dataset.highlighted=hit.length;\
if(hit.length&&hit[0].scrollIntoView)hit[0].scrollIntoView({block:'center'});return hit.length;}\
col.querySelectorAll('g.node[data-collapsed]').forEach(function(g){g.addEventListener('click',function(){highlight(g.getAttribute('data-collapsed').split(' '),true);});});\
var t=document.getElementById('graph-toggle');if(t)t.addEventListener('click',function(){show(false);});\
document.querySelectorAll('.finding[data-modules]').forEach(function(f){f.addEventListener('click',function(){\
document.querySelectorAll('.finding.hl').forEach(function(x){x.classList.remove('hl');});f.classList.add('hl');\
highlight(f.getAttribute('data-modules').split(' '));});});\
window.trainlintHighlight=highlight;\
var h=location.hash;if(h.indexOf('#graph-click=')===0){var f=document.querySelectorAll('.finding[data-modules]')[+h.slice(13)];if(f)f.click();}\
if(h.indexOf('#graph-highlight=')===0)highlight(decodeURIComponent(h.slice(17)).split(','));\
if(h==='#graph-expand'){var g=col.querySelector('g.node[data-collapsed]');if(g)g.dispatchEvent(new MouseEvent('click'));}})();</script>";

/// The report, with the model graph (findings painted on it) when there is one.
pub fn render_with_graph(report: &Report, graph: Option<&super::graph::ReportGraph>) -> String {
    let s = &report.summary;
    let i = &report.inputs;
    let mut inputs: Vec<String> = i
        .labeled()
        .into_iter()
        .map(|(label, v)| format!("{label} <code>{}</code>", esc(v)))
        .collect();
    if let Some(device) = &i.device {
        inputs.push(format!("device {}", esc(device)));
    }
    inputs.push(format!("seed {}", report.seed));
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str(&format!(
        "<title>trainlint report: {} errors, {} warnings</title>",
        s.errors, s.warnings
    ));
    out.push_str(&format!("<style>{STYLE}</style>"));
    // Records script errors on the page itself, so a headless browser test can read them from the DOM.
    out.push_str(
        "<script>window.addEventListener('error',function(e){var b=document.body;if(b){b.dataset.errors=(b.dataset.errors||'')+e.message+';';}});\
document.addEventListener('DOMContentLoaded',function(){document.body.dataset.charts=document.querySelectorAll('svg').length-document.querySelectorAll('.graph-view svg').length;\
document.body.dataset.ready='1';});</script>",
    );
    out.push_str("</head><body>");
    out.push_str(&format!(
        "<header><h1>trainlint {}</h1><div class=\"inputs\">{}</div></header><main>",
        esc(report.tool.version),
        inputs.join(" · ")
    ));
    out.push_str(&format!(
        "<div class=\"cards\"><div class=\"card err\"><b>{}</b>errors</div><div class=\"card warn\"><b>{}</b>warnings</div>\
<div class=\"card ok\"><b>{}</b>passed</div><div class=\"card\"><b>{}</b>skipped</div><div class=\"card\"><b>{}</b>failed</div>\
<div class=\"card\"><b>{}</b>total time</div></div>",
        s.errors,
        s.warnings,
        s.passed,
        s.skipped,
        s.failed,
        esc(&super::text::format_duration(s.duration_ms))
    ));
    out.push_str("<table><thead><tr><th>check</th><th>group</th><th>status</th><th>findings</th><th>time</th></tr></thead><tbody>");
    for c in &report.checks {
        let status = match c.status {
            Status::Passed => match &c.note {
                Some(note) => format!("passed · {note}"),
                None => "passed".to_string(),
            },
            Status::Findings => match &c.note {
                Some(note) => format!("findings · {note}"),
                None => "findings".to_string(),
            },
            Status::Skipped => format!("skipped: {}", c.reason.as_deref().unwrap_or("")),
            Status::Failed => "failed".to_string(),
        };
        let class = format!("{:?}", c.status).to_lowercase();
        out.push_str(&format!(
            "<tr><td><a href=\"#{id}\">{id}</a></td><td>{}</td><td class=\"status-{class}\">{}</td><td>{}</td><td>{}</td></tr>",
            c.group.as_str(),
            esc(&status),
            c.findings.len(),
            esc(&super::text::format_duration(c.duration_ms)),
            id = c.id
        ));
    }
    out.push_str("</tbody></table>");
    let graph_html = graph.map(graph_section);
    for c in &report.checks {
        if c.status == Status::Skipped && c.curves.is_empty() {
            continue;
        }
        out.push_str(&format!("<section class=\"check\" id=\"{}\"><h2>{} <small class=\"status-{}\">{:?}</small></h2>", c.id, c.id, format!("{:?}", c.status).to_lowercase(), c.status));
        if c.findings.is_empty() {
            out.push_str("<p class=\"reason\">No findings.</p>");
        }
        for f in &c.findings {
            let class = if f.severity == Severity::Warning {
                "finding warning"
            } else {
                "finding"
            };
            let drawn = matches!(graph, Some(super::graph::ReportGraph::Drawn(_)));
            let modules = if drawn {
                super::graph::finding_paths(f).join(" ")
            } else {
                String::new()
            };
            let modules = if modules.is_empty() {
                String::new()
            } else {
                format!(" data-modules=\"{}\"", esc(&modules))
            };
            out.push_str(&format!(
                "<div class=\"{class}\"{modules}><div><b>{}[{}]</b> {}</div>",
                f.severity.as_str(),
                esc(f.kind),
                esc(&f.message)
            ));
            if !f.location.is_empty() {
                out.push_str(&format!(
                    "<div class=\"loc\">--&gt; {}</div>",
                    esc(&f.location.to_string())
                ));
            }
            if !f.help.is_empty() {
                out.push_str(&format!("<div class=\"help\">help: {}</div>", esc(&f.help)));
            }
            out.push_str("</div>");
        }
        // Curves over the same steps (loss terms) share one axis, so their magnitudes compare at a glance.
        let shared_x = c.curves.len() > 1
            && c.curves
                .iter()
                .all(|k| k.labels.is_empty() && k.x == c.curves[0].x && k.y.len() > 1);
        if shared_x {
            let refs: Vec<&Curve> = c.curves.iter().collect();
            out.push_str(&chart_series("loss terms", &refs));
        } else {
            for curve in &c.curves {
                out.push_str(&chart(curve));
            }
        }
        out.push_str("</section>");
    }
    if let Some(g) = graph_html {
        out.push_str(&g);
    }
    out.push_str("</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_mark_targets_windows_bands_and_out_of_band_points() {
        let mut c = Curve::new("loss", vec![4.0, 2.0, 1.0, 0.5]);
        c.target = Some(0.5);
        c.window = Some((1.0, 3.0));
        c.log_scale = true;
        let svg = chart(&c);
        assert!(
            svg.contains("class=\"target\"")
                && svg.contains("class=\"window\"")
                && svg.contains("(log scale)")
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        let mut layers = Curve::new("std", vec![0.1, 5.0]);
        layers.labels = vec!["a.weight".into(), "b.weight".into()];
        layers.lower = vec![0.01, 0.01];
        layers.upper = vec![1.0, 1.0];
        let svg = chart(&layers);
        assert_eq!(svg.matches("class=\"band\"").count(), 2);
        assert_eq!(
            svg.matches("class=\"dot out\"").count(),
            1,
            "5.0 lies outside its band"
        );
    }

    #[test]
    fn text_is_escaped() {
        let c = Curve::new("<script>", vec![1.0, 2.0]);
        assert!(!chart(&c).contains("<script>"));
    }
}
