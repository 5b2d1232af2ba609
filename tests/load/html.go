package main

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// writeHTML writes the report as one self-contained HTML file: inline CSS
// and inline SVG charts, no script and nothing fetched.
func writeHTML(w io.Writer, r *Results) error {
	var t, dps, p50, p99 []float64
	for _, s := range r.Timeline {
		t = append(t, s.T)
		dps = append(dps, s.Deliveries)
		p50 = append(p50, s.P50Ms)
		p99 = append(p99, s.P99Ms)
	}
	var table strings.Builder
	printTable(&table, r)
	data := struct {
		R          *Results
		Table      string
		Throughput template.HTML
		Latency    template.HTML
		Dist       template.HTML
	}{
		R:          r,
		Table:      table.String(),
		Throughput: lineChart("Deliveries per second", "s since the first publish", t, []series{{"deliveries/s", "#1f77b4", dps}}),
		Latency:    lineChart("Latency per second (ms)", "s since the first publish", t, []series{{"p50", "#2ca02c", p50}, {"p99", "#d62728", p99}}),
		Dist:       distChart(r.Distribution),
	}
	return reportPage.Execute(w, data)
}

var reportPage = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>edgesync load: {{.R.Scenario.Target}} over {{.R.Scenario.Backplane}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
svg{display:block;margin:1em 0;background:#fff;border:1px solid #ddd}
svg text{font:11px system-ui,sans-serif;fill:#444}
</style></head><body>
<h1>edgesync load run</h1>
<p>Started {{.R.Started.Format "2006-01-02 15:04:05 UTC"}}. {{.R.Delivered}} deliveries, {{printf "%.0f" .R.DeliveriesPerSecond}} per second;
latency p50 {{printf "%.3f" .R.Latency.P50}} ms, p99 {{printf "%.3f" .R.Latency.P99}} ms, p99.9 {{printf "%.3f" .R.Latency.P999}} ms, max {{printf "%.3f" .R.Latency.Max}} ms;
{{.R.Lost}} lost, {{.R.Duplicated}} duplicated.</p>
<h2>Throughput over time</h2>
{{.Throughput}}
<h2>Latency over time</h2>
{{.Latency}}
<h2>Latency distribution</h2>
{{.Dist}}
<h2>Figures</h2>
<pre>{{.Table}}</pre>
</body></html>
`))

type series struct {
	name, color string
	ys          []float64
}

// Chart geometry.
const (
	chartW, chartH = 960, 300
	padL, padR     = 70, 20
	padT, padB     = 30, 40
)

// lineChart draws series over xs as an SVG line chart from zero up.
func lineChart(title, xlabel string, xs []float64, ss []series) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-weight="bold">%s</text>`, padL, template.HTMLEscapeString(title))
	if len(xs) == 0 {
		b.WriteString(`<text x="70" y="150">no samples: the run was shorter than a second</text></svg>`)
		return template.HTML(b.String())
	}
	xmax := xs[len(xs)-1]
	ymax := 0.0
	for _, s := range ss {
		for _, y := range s.ys {
			ymax = max(ymax, y)
		}
	}
	ymax = niceCeil(ymax)
	xmax = max(xmax, 1)
	px := func(x float64) float64 { return padL + x/xmax*(chartW-padL-padR) }
	py := func(y float64) float64 { return chartH - padB - y/ymax*(chartH-padT-padB) }
	axes(&b, xlabel)
	for i := 0; i <= 4; i++ {
		y := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`,
			padL, chartW-padR, py(y), py(y), padL-6, py(y)+4, axisName(y))
	}
	for i := 0; i <= 5; i++ {
		x := xmax * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>`, px(x), chartH-padB+16, x)
	}
	for k, s := range ss {
		var pts []string
		for i, y := range s.ys {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(xs[i]), py(y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, s.color, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">■ %s</text>`, chartW-padR-200+k*90, 18, s.color, template.HTMLEscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// distChart draws the latency histogram as bars on a logarithmic
// millisecond axis, with the cumulative share as a line.
func distChart(buckets []Bucket) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-weight="bold">Deliveries by latency (bars, left) and the share at most that latency (line, right)</text>`, padL)
	if len(buckets) == 0 {
		b.WriteString(`<text x="70" y="150">no deliveries</text></svg>`)
		return template.HTML(b.String())
	}
	lo := math.Floor(math.Log10(max(buckets[0].UpperMs, 1e-3)))
	hi := math.Ceil(math.Log10(max(buckets[len(buckets)-1].UpperMs, 1e-3)))
	if hi <= lo {
		hi = lo + 1
	}
	const bins = 100
	var counts [bins]int64
	var total, cmax int64
	for _, k := range buckets {
		i := int((math.Log10(max(k.UpperMs, 1e-3)) - lo) / (hi - lo) * bins)
		i = min(max(i, 0), bins-1)
		counts[i] += k.Count
		total += k.Count
	}
	for _, c := range counts {
		cmax = max(cmax, c)
	}
	axes(&b, "latency, ms (log scale)")
	bw := float64(chartW-padL-padR) / bins
	var cum int64
	var pts []string
	for i, c := range counts {
		x := padL + float64(i)*bw
		h := float64(c) / float64(cmax) * (chartH - padT - padB)
		if c > 0 {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#1f77b4" opacity="0.7"/>`, x, chartH-padB-h, bw-0.5, h)
		}
		cum += c
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x+bw, chartH-padB-float64(cum)/float64(total)*(chartH-padT-padB)))
	}
	fmt.Fprintf(&b, `<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="%s"/>`, strings.Join(pts, " "))
	for e := lo; e <= hi; e++ {
		x := padL + (e-lo)/(hi-lo)*(chartW-padL-padR)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#eee"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`,
			x, x, padT, chartH-padB, x, chartH-padB+16, axisName(math.Pow(10, e)))
	}
	for i := 0; i <= 4; i++ {
		y := chartH - padB - float64(i)/4*(chartH-padT-padB)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f">%d%%</text><text x="%d" y="%.1f" text-anchor="end">%s</text>`,
			chartW-padR+2-18, y+4, i*25, padL-6, y+4, axisName(float64(cmax)*float64(i)/4))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func axes(b *strings.Builder, xlabel string) {
	fmt.Fprintf(b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#888"/><line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#888"/>`,
		padL, chartW-padR, chartH-padB, chartH-padB, padL, padL, padT, chartH-padB)
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`, (padL+chartW-padR)/2, chartH-6, template.HTMLEscapeString(xlabel))
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func axisName(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e5)/10)
	case v >= 1e3:
		return fmt.Sprintf("%gk", math.Round(v/1e2)/10)
	case v >= 1:
		return fmt.Sprintf("%g", math.Round(v*10)/10)
	}
	return fmt.Sprintf("%g", v)
}
